//! What the browser brings back to the gateway around a sign-in: the return path of the page
//! it asked for, `/_gateway/sign-in?return=…`, and the callback's query string or form body.
//!
//! What must hold:
//! - a return path is always a same-host relative path: it starts with `/`, not with `//` or
//!   `/\` (which browsers read as another host), and holds no control character (which could
//!   split a header or hide the real target); a path that is already one is kept as is;
//! - the sign-in link offered after a refused sign-in returns to the very same path;
//! - the callback's parameters are read as the callback reads them (first value wins), and
//!   whatever `state` it brings names a valid pending-login cookie of this gateway, whose
//!   value never opens for another state.

#![no_main]

use std::collections::HashMap;
use std::sync::LazyLock;

use http::Uri;
use libfuzzer_sys::fuzz_target;
use mfa_gateway::auth::{safe_return_path, sign_in_return_path};
use mfa_gateway::session::{is_valid_cookie_name, SessionKey, SessionSeal};

const DEFAULT_RETURN: &str = "/owa/";

static SEAL: LazyLock<SessionSeal> = LazyLock::new(|| {
    let key = SessionKey::from_bytes(&[0x11; 32]).expect("fixed key");
    SessionSeal::new("__Host-mfagw", vec![key]).expect("fixed ring")
});

fn check_return_path(input: Option<&str>, path: &str) {
    assert!(path.starts_with('/'), "{input:?} -> {path:?}");
    assert!(
        !path.starts_with("//") && !path.starts_with("/\\"),
        "returns to another host: {input:?} -> {path:?}"
    );
    assert!(
        !path.chars().any(char::is_control),
        "control character in the return path: {input:?} -> {path:?}"
    );
    if let Some(input) = input {
        assert!(
            input == path || path == DEFAULT_RETURN,
            "return path rewritten: {input:?} -> {path:?}"
        );
    }
}

/// The link `/_gateway/sign-in?return=…` as the refusal page writes it.
fn fresh_sign_in_link(return_path: &str) -> String {
    let encoded: String = url::form_urlencoded::byte_serialize(return_path.as_bytes()).collect();
    format!("/_gateway/sign-in?return={encoded}")
}

fn check_callback(query: &[u8]) {
    // As the callback collects them: the first value of each name counts.
    let mut params: HashMap<String, String> = HashMap::new();
    for (name, value) in url::form_urlencoded::parse(query) {
        params
            .entry(name.into_owned())
            .or_insert_with(|| value.into_owned());
    }
    if let Some(state) = params.get("state") {
        let name = SEAL.login_cookie_name(state);
        assert!(is_valid_cookie_name(&name), "{name:?}");
        assert!(SEAL.is_login_cookie(&name) && SEAL.is_gateway_cookie(&name));
        if let Some(value) = params.get("code") {
            if let Some(login) = SEAL.open_login(state, value) {
                assert_eq!(&login.state, state);
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);

    let path = safe_return_path(Some(&text));
    check_return_path(Some(&text), &path);
    if path != DEFAULT_RETURN {
        // A path judged safe comes back unchanged from the refusal page's sign-in link.
        let link = fresh_sign_in_link(&path);
        let uri: Uri = link.parse().expect("a percent-encoded link is a valid URI");
        assert_eq!(sign_in_return_path(&uri), path, "{link}");
    }

    // The request target of `/_gateway/sign-in` as the browser sends it.
    for target in [
        Uri::try_from(data),
        Uri::try_from(format!("/_gateway/sign-in?{text}")),
        Uri::try_from(format!("/_gateway/sign-in?return={text}")),
    ]
    .into_iter()
    .flatten()
    {
        let path = sign_in_return_path(&target);
        check_return_path(None, &path);
        if let Some(pq) = target.path_and_query() {
            let path = safe_return_path(Some(pq.as_str()));
            check_return_path(Some(pq.as_str()), &path);
        }
    }

    check_callback(data);
});
