//! Cookie headers: setting and clearing the gateway's cookies (`Set-Cookie`, written by the
//! `cookie` crate), finding one in a request, and removing them from what goes to Exchange.
//!
//! Browsers send `Cookie: a=1; b=2`, over HTTP/2 often as several `Cookie` fields (RFC 9113
//! section 8.2.3), which must be read together. Exchange's own cookies (`X-OWA-CANARY`, which
//! OWA's script reads and echoes, `cadata`, `ClientId`, …) are passed through exactly as the
//! browser sent them: the gateway only takes its own out.

use std::borrow::Cow;
use std::time::Duration;

use cookie::{Cookie, CookieBuilder};
use http::header::{HeaderValue, COOKIE};
use http::HeaderMap;

/// The `SameSite` attribute of a cookie the gateway sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SameSite {
    /// The session: sent on top-level navigations from other sites (a link in a mail), not on
    /// cross-site subrequests or POSTs.
    Lax,
    /// The pending login with `response_mode=form_post`: Entra's callback is a cross-site
    /// POST, which a `Lax` cookie would not accompany.
    None,
}

/// Whether `name` is a cookie name as RFC 6265 allows (an HTTP token). The configured
/// `session.cookie_name` must pass this; [`super::SessionSeal::new`] refuses one that does not.
pub fn is_valid_cookie_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(is_token_byte)
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'!' | b'#'
                | b'$'
                | b'%'
                | b'&'
                | b'\''
                | b'*'
                | b'+'
                | b'-'
                | b'.'
                | b'^'
                | b'_'
                | b'`'
                | b'|'
                | b'~'
        )
}

/// `text` with only the bytes `keep` allows; borrowed when nothing had to go.
fn only(text: &str, keep: impl Fn(u8) -> bool) -> Cow<'_, str> {
    if text.bytes().all(&keep) {
        Cow::Borrowed(text)
    } else {
        Cow::Owned(text.bytes().filter(|&b| keep(b)).map(char::from).collect())
    }
}

fn is_cookie_octet(b: u8) -> bool {
    matches!(b, 0x21 | 0x23..=0x2B | 0x2D..=0x3A | 0x3C..=0x5B | 0x5D..=0x7E)
}

/// One of the gateway's cookies: `HttpOnly` (no script reads it), `Secure`, `Path=/` and no
/// `Domain`, which is also exactly what a `__Host-` prefixed name requires (the prefix stops a
/// sibling subdomain from planting a cookie of the same name). The name keeps only token bytes
/// and the value only cookie octets, so neither can split the header or add an attribute.
fn gateway_cookie<'c>(name: &'c str, value: &'c str, same_site: SameSite) -> CookieBuilder<'c> {
    Cookie::build((only(name, is_token_byte), only(value, is_cookie_octet)))
        .http_only(true)
        .secure(true)
        .path("/")
        .same_site(match same_site {
            SameSite::Lax => cookie::SameSite::Lax,
            SameSite::None => cookie::SameSite::None,
        })
}

/// `Set-Cookie` for one of the gateway's cookies (see [`gateway_cookie`]) that the browser
/// keeps for `max_age`.
///
/// `name` must satisfy [`is_valid_cookie_name`] and `value` be cookie octets, as sealed values
/// (base64url) are; any other character is dropped rather than let split the header.
pub fn set_cookie_header(
    name: &str,
    value: &str,
    max_age: Duration,
    same_site: SameSite,
) -> HeaderValue {
    let max_age = i64::try_from(max_age.as_secs()).unwrap_or(i64::MAX);
    header(
        gateway_cookie(name, value, same_site)
            .max_age(cookie::time::Duration::seconds(max_age))
            .to_string(),
    )
}

/// `Set-Cookie` that makes the browser drop one of the gateway's cookies. It repeats `Secure`
/// and `Path=/`: a browser ignores a `__Host-` cookie update without them. `Expires` in the
/// past as well as `Max-Age=0`, for clients that know only the older attribute.
pub fn clear_cookie_header(name: &str) -> HeaderValue {
    header(
        gateway_cookie(name, "", SameSite::Lax)
            .max_age(cookie::time::Duration::ZERO)
            .expires(cookie::time::OffsetDateTime::UNIX_EPOCH)
            .to_string(),
    )
}

fn header(text: String) -> HeaderValue {
    // Token bytes, cookie octets and the fixed attributes: always a valid value.
    HeaderValue::try_from(text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Every `name=value` pair of every `Cookie` header, in order, borrowed from the headers.
/// Pairs without `=`, or not UTF-8, are skipped (they cannot be the gateway's).
pub fn cookies(headers: &HeaderMap) -> impl Iterator<Item = (&str, &str)> {
    pieces(headers).filter_map(|piece| {
        let (name, value) = split_raw(piece)?;
        Some((std::str::from_utf8(name).ok()?, value_str(value)?))
    })
}

/// The value of the cookie `name`, without allocating. When a browser sends the name twice
/// (a cookie planted for a longer path, or a parent domain), this is the first; use
/// [`cookie_values`] to try each.
pub fn find_cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    cookie_values(headers, name).next()
}

/// Every value sent for the cookie `name`, in the order the browser sent them. Only the
/// values of that name are decoded.
pub fn cookie_values<'a, 'n>(
    headers: &'a HeaderMap,
    name: &'n str,
) -> impl Iterator<Item = &'a str> + use<'a, 'n> {
    pieces(headers).filter_map(move |piece| {
        let (n, value) = split_raw(piece)?;
        if n == name.as_bytes() {
            value_str(value)
        } else {
            None
        }
    })
}

/// Removes the gateway's own cookies from a request going to Exchange. Every other cookie is
/// kept byte for byte, in order, in a single `Cookie` header (what HTTP/1.1 servers expect);
/// the header is removed when nothing is left.
pub fn strip_cookies(headers: &mut HeaderMap, is_gateway_cookie: impl Fn(&str) -> bool) {
    let is_ours = |piece: &[u8]| {
        split_raw(piece)
            .and_then(|(name, _)| std::str::from_utf8(name).ok())
            .is_some_and(&is_gateway_cookie)
    };
    let mut fields = 0;
    let mut ours = false;
    for value in headers.get_all(COOKIE) {
        fields += 1;
        ours = ours || Pieces(Some(value.as_bytes())).any(is_ours);
    }
    if fields == 0 || (fields == 1 && !ours) {
        return;
    }
    let mut kept: Vec<u8> = Vec::new();
    for piece in pieces(headers) {
        let piece = trim_ows(piece);
        if piece.is_empty() || is_ours(piece) {
            continue;
        }
        if !kept.is_empty() {
            kept.extend_from_slice(b"; ");
        }
        kept.extend_from_slice(piece);
    }
    headers.remove(COOKIE);
    if kept.is_empty() {
        return;
    }
    // The kept bytes all come from valid header values, joined by "; ": always valid.
    if let Ok(mut merged) = HeaderValue::from_maybe_shared(bytes::Bytes::from(kept)) {
        merged.set_sensitive(true);
        headers.insert(COOKIE, merged);
    }
}

/// The `;`-separated pieces of every `Cookie` field, in order.
fn pieces(headers: &HeaderMap) -> impl Iterator<Item = &[u8]> {
    headers
        .get_all(COOKIE)
        .iter()
        .flat_map(|value| Pieces(Some(value.as_bytes())))
}

/// The `;`-separated pieces of one field. A session cookie is hundreds of bytes, and every
/// request looks through the field two or three times: `memchr` finds the separators.
struct Pieces<'a>(Option<&'a [u8]>);

impl<'a> Iterator for Pieces<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let rest = self.0?;
        match memchr::memchr(b';', rest) {
            Some(at) => {
                self.0 = rest.get(at + 1..);
                rest.get(..at)
            }
            None => {
                self.0 = None;
                Some(rest)
            }
        }
    }
}

/// A piece split at its first `=` into the trimmed name and the raw value; `None` without `=`.
fn split_raw(piece: &[u8]) -> Option<(&[u8], &[u8])> {
    let eq = memchr::memchr(b'=', piece)?;
    let (name, value) = piece.split_at(eq);
    Some((trim_ows(name), value.get(1..)?))
}

/// A cookie value as text: trimmed, without the double quotes RFC 6265 allows around it.
fn value_str(value: &[u8]) -> Option<&str> {
    let value = trim_ows(value);
    let value = value
        .strip_prefix(b"\"")
        .and_then(|v| v.strip_suffix(b"\""))
        .unwrap_or(value);
    std::str::from_utf8(value).ok()
}

fn trim_ows(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map_or(start, |i| i + 1);
    bytes.get(start..end).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn request(cookie_fields: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for field in cookie_fields {
            headers.append(COOKIE, HeaderValue::from_str(field).unwrap());
        }
        headers
    }

    fn cookie_fields(headers: &HeaderMap) -> Vec<&str> {
        headers
            .get_all(COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect()
    }

    /// A `Set-Cookie` value as its `name=value` pair and its attributes. Browsers read the
    /// attributes by name (RFC 6265 section 5.2), so their order carries nothing; each must be
    /// there once.
    fn set_cookie(value: &HeaderValue) -> (&str, BTreeSet<&str>) {
        let text = value.to_str().unwrap();
        let mut parts = text.split("; ");
        let pair = parts.next().unwrap();
        let attributes: Vec<&str> = parts.collect();
        let unique: BTreeSet<&str> = attributes.iter().copied().collect();
        assert_eq!(unique.len(), attributes.len(), "an attribute twice: {text}");
        (pair, unique)
    }

    fn attributes<const N: usize>(list: [&str; N]) -> BTreeSet<&str> {
        list.into_iter().collect()
    }

    #[test]
    fn session_cookie_is_http_only_secure_and_lax() {
        let value = set_cookie_header(
            "__Host-mfagw",
            "AbC-_9",
            Duration::from_secs(36000),
            SameSite::Lax,
        );
        assert_eq!(
            set_cookie(&value),
            (
                "__Host-mfagw=AbC-_9",
                attributes([
                    "Max-Age=36000",
                    "HttpOnly",
                    "Secure",
                    "Path=/",
                    "SameSite=Lax"
                ])
            )
        );
    }

    #[test]
    fn host_prefixed_cookie_has_root_path_and_no_domain() {
        for same_site in [SameSite::Lax, SameSite::None] {
            let value = set_cookie_header("__Host-x", "v", Duration::from_secs(60), same_site);
            let (_, attributes) = set_cookie(&value);
            assert!(attributes.contains("Path=/"), "{value:?}");
            assert!(attributes.contains("Secure"), "{value:?}");
            assert!(
                !attributes
                    .iter()
                    .any(|a| a.to_ascii_lowercase().starts_with("domain")),
                "{value:?}"
            );
        }
        let cleared = clear_cookie_header("__Host-x");
        assert_eq!(
            set_cookie(&cleared),
            (
                "__Host-x=",
                attributes([
                    "Max-Age=0",
                    "Expires=Thu, 01 Jan 1970 00:00:00 GMT",
                    "HttpOnly",
                    "Secure",
                    "Path=/",
                    "SameSite=Lax"
                ])
            )
        );
    }

    #[test]
    fn form_post_login_cookie_is_same_site_none() {
        let value = set_cookie_header(
            "__Host-mfagw-login-ab",
            "v",
            Duration::from_secs(600),
            SameSite::None,
        );
        assert_eq!(
            set_cookie(&value),
            (
                "__Host-mfagw-login-ab=v",
                attributes([
                    "Max-Age=600",
                    "HttpOnly",
                    "Secure",
                    "Path=/",
                    "SameSite=None"
                ])
            )
        );
    }

    #[test]
    fn characters_that_would_split_the_header_are_dropped() {
        let value = set_cookie_header("a;b c", "x; Domain=evil\r\n", Duration::ZERO, SameSite::Lax);
        assert_eq!(
            set_cookie(&value),
            (
                "abc=xDomain=evil",
                attributes(["Max-Age=0", "HttpOnly", "Secure", "Path=/", "SameSite=Lax"])
            )
        );
        let cleared = clear_cookie_header("a;b c\r\nDomain=evil");
        assert_eq!(set_cookie(&cleared).0, "abcDomainevil=");
    }

    #[test]
    fn cookie_is_found_across_several_http2_cookie_fields() {
        let headers = request(&["a=1; b=2", "__Host-mfagw=sealed; c=3", "d=\"quoted\""]);
        assert_eq!(find_cookie(&headers, "__Host-mfagw"), Some("sealed"));
        assert_eq!(find_cookie(&headers, "a"), Some("1"));
        assert_eq!(find_cookie(&headers, "c"), Some("3"));
        assert_eq!(find_cookie(&headers, "d"), Some("quoted"));
        assert_eq!(find_cookie(&headers, "__Host-mfagw-login"), None);
        assert_eq!(find_cookie(&HeaderMap::new(), "a"), None);
    }

    #[test]
    fn a_planted_duplicate_does_not_hide_the_real_cookie() {
        let headers = request(&["mfagw=planted; mfagw=real"]);
        let values: Vec<&str> = cookie_values(&headers, "mfagw").collect();
        assert_eq!(values, ["planted", "real"]);
    }

    #[test]
    fn gateway_cookies_stripped_and_exchange_cookies_untouched() {
        let mut headers = request(&[
            "X-OWA-CANARY=Zm9v_YmFy-1234.; __Host-mfagw=sealed",
            "cadata=\"1AbC/+==\"; __Host-mfagw-login-0123=tx;ClientId=ABC ",
            "PrivateComputer=true;  UC=ab%20c",
        ]);
        strip_cookies(&mut headers, |name| name.starts_with("__Host-mfagw"));
        assert_eq!(
            cookie_fields(&headers),
            ["X-OWA-CANARY=Zm9v_YmFy-1234.; cadata=\"1AbC/+==\"; ClientId=ABC; PrivateComputer=true; UC=ab%20c"]
        );
    }

    #[test]
    fn cookie_header_without_gateway_cookies_is_left_alone() {
        let original = "X-OWA-CANARY=abc;cadata=x  ; odd";
        let mut headers = request(&[original]);
        strip_cookies(&mut headers, |name| name == "__Host-mfagw");
        assert_eq!(cookie_fields(&headers), [original]);
    }

    #[test]
    fn several_cookie_fields_are_merged_into_one_for_exchange() {
        let mut headers = request(&["a=1", "b=2"]);
        strip_cookies(&mut headers, |name| name == "__Host-mfagw");
        assert_eq!(cookie_fields(&headers), ["a=1; b=2"]);
    }

    #[test]
    fn cookie_header_is_removed_when_only_gateway_cookies_were_sent() {
        let mut headers = request(&["__Host-mfagw=s", "__Host-mfagw-login-1=t; "]);
        headers.insert("x-other", HeaderValue::from_static("kept"));
        strip_cookies(&mut headers, |name| name.starts_with("__Host-mfagw"));
        assert!(!headers.contains_key(COOKIE));
        assert_eq!(headers["x-other"], "kept");
    }

    #[test]
    fn cookie_names_are_tokens() {
        assert!(is_valid_cookie_name("__Host-mfagw"));
        assert!(is_valid_cookie_name("mfagw.session"));
        for bad in ["", "a b", "a;b", "a=b", "é", "a\"b", "a,b"] {
            assert!(!is_valid_cookie_name(bad), "{bad}");
        }
    }
}
