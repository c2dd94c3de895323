//! `application/x-www-form-urlencoded`, as query strings and POST bodies use it, and a small
//! ordered parameter list that refuses duplicates (RFC 6749 §3.1: a parameter sent twice is an
//! invalid request, and silently picking one is how parameter-pollution bugs start).

use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

/// Everything but the unreserved characters of RFC 3986 is escaped.
const FORM_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

pub(super) fn decode(text: &str) -> Vec<(String, String)> {
    text.split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (decode_component(name), decode_component(value))
        })
        .collect()
}

fn decode_component(text: &str) -> String {
    let spaced = text.replace('+', " ");
    percent_decode_str(&spaced).decode_utf8_lossy().into_owned()
}

pub(super) fn encode_component(text: &str) -> String {
    utf8_percent_encode(text, FORM_VALUE).to_string()
}

pub(super) fn encode<K: AsRef<str>, V: AsRef<str>>(pairs: &[(K, V)]) -> String {
    pairs
        .iter()
        .map(|(name, value)| {
            format!(
                "{}={}",
                encode_component(name.as_ref()),
                encode_component(value.as_ref())
            )
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// `uri` with `pairs` added to its query, before any fragment.
pub(super) fn append_query<K: AsRef<str>, V: AsRef<str>>(uri: &str, pairs: &[(K, V)]) -> String {
    let (base, fragment) = match uri.split_once('#') {
        Some((base, fragment)) => (base, Some(fragment)),
        None => (uri, None),
    };
    let separator = if !base.contains('?') {
        "?"
    } else if base.ends_with('?') || base.ends_with('&') {
        ""
    } else {
        "&"
    };
    let mut out = format!("{base}{separator}{}", encode(pairs));
    if let Some(fragment) = fragment {
        out.push('#');
        out.push_str(fragment);
    }
    out
}

/// The parameters of one request, in the order they came.
#[derive(Clone, Debug, Default)]
pub(super) struct Params(pub(super) Vec<(String, String)>);

impl Params {
    /// The value of `name`, if sent once; an error if sent more than once.
    pub(super) fn get(&self, name: &str) -> Result<Option<&str>, String> {
        let mut found = None;
        for (key, value) in &self.0 {
            if key == name {
                if found.is_some() {
                    return Err(format!("the parameter {name} was sent more than once"));
                }
                found = Some(value.as_str());
            }
        }
        Ok(found)
    }

    /// The value of `name`, which must be sent once and not be empty.
    pub(super) fn require(&self, name: &str) -> Result<&str, String> {
        match self.get(name)? {
            Some(value) if !value.is_empty() => Ok(value),
            _ => Err(format!("the parameter {name} is missing")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_round_trips_reserved_characters() {
        let pairs = [
            ("redirect_uri", "https://h/cb?x=1&y=2"),
            ("scope", "openid profile"),
        ];
        let text = encode(&pairs);
        assert_eq!(
            decode(&text),
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<Vec<_>>()
        );
        assert_eq!(
            decode("a=b+c&&d"),
            vec![("a".into(), "b c".into()), ("d".into(), "".into())]
        );
    }

    #[test]
    fn query_is_appended_before_the_fragment() {
        assert_eq!(
            append_query("http://h/cb", &[("a", "1")]),
            "http://h/cb?a=1"
        );
        assert_eq!(
            append_query("http://h/cb?x=1#f", &[("a", "1")]),
            "http://h/cb?x=1&a=1#f"
        );
    }

    #[test]
    fn a_parameter_sent_twice_is_refused() {
        let params = Params(decode("code=a&code=b"));
        assert!(params.get("code").is_err());
        assert!(params.require("state").is_err());
    }
}
