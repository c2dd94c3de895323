//! What a browser sends to `/_gateway/wsfed/`: the WS-Federation query (`wa`, `wtrealm`,
//! `wctx`, `wreply`) and the Host it came with.
//!
//! What must hold:
//! - a sign-in names a realm; a `wreply` other than the realm never passes;
//! - a realm is accepted only as `https://<the request's host><path>/`, and the path handed to
//!   the router starts with `/`, has no empty, `.` or `..` segment, no escape, query, fragment,
//!   backslash or control character — nothing that routing would read differently;
//! - the page that carries a token escapes every value: whatever the realm, token and context
//!   hold, the page has exactly one script and one form.

#![no_main]

use libfuzzer_sys::fuzz_target;
use mfa_gateway::sso::adfs::wsfed::{parse, realm_path, WsFedAction, WsFedRefusal};

fuzz_target!(|input: (&str, &str)| {
    let (query, host) = input;
    match parse(Some(query)) {
        Ok(WsFedAction::SignIn(request)) => {
            let wreply = url::form_urlencoded::parse(query.as_bytes())
                .find(|(k, _)| k == "wreply")
                .map(|(_, v)| v.into_owned());
            if let Some(wreply) = wreply {
                assert_eq!(wreply, request.realm, "a wreply other than the realm passed");
            }
            if let Some(path) = realm_path(&request.realm, "https", host) {
                assert!(path.starts_with('/') && path.len() > 1, "{path:?}");
                assert!(!path.ends_with('/'), "{path:?}");
                assert!(
                    !path.chars().any(|c| matches!(c, '%' | '?' | '#' | '\\') || c.is_control()),
                    "{path:?}"
                );
                for segment in path[1..].split('/') {
                    assert!(
                        !segment.is_empty() && segment != "." && segment != "..",
                        "{path:?}"
                    );
                }
                let expected = format!("https://{host}{path}/");
                assert!(
                    request.realm.eq_ignore_ascii_case(&expected),
                    "realm {:?} is not https://<host><path>/ for host {host:?}",
                    request.realm
                );
            }
            let page = mfa_gateway::sso::adfs::wsfed::post_page_html(
                &request.realm,
                query,
                request.context.as_deref(),
            );
            assert_eq!(page.matches("<script").count(), 1, "{page}");
            assert_eq!(page.matches("<form").count(), 1, "{page}");
        }
        Ok(WsFedAction::SignOut | WsFedAction::SignOutCleanup) => {}
        Err(refusal) => {
            assert!(!refusal.as_str().is_empty());
            let _: WsFedRefusal = refusal;
        }
    }
});
