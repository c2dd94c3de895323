//! The WS-Federation passive requests Exchange's AD FS mode sends to its issuer
//! (`/_gateway/wsfed/`), and the page that carries the token back.
//!
//! Exchange redirects a browser without its own session cookie to
//! `<AdfsIssuer>?wa=wsignin1.0&wtrealm=https://<host>/owa/&wctx=…`, and sends sign-outs to
//! `<AdfsIssuer>?wa=wsignout1.0`. The answer to a sign-in is a form the browser posts to the
//! realm — never to an address the request names: `wreply`, when present, must be the realm
//! itself.

use http::Response;

use crate::body::ResponseBody;
use crate::pages::AutoPost;

/// What a request to the issuer endpoint asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsFedAction {
    /// `wa=wsignin1.0`: a token for the realm.
    SignIn(SignInRequest),
    /// `wa=wsignout1.0`: Exchange's sign-out.
    SignOut,
    /// `wa=wsignoutcleanup1.0`: end the session here, as a sign-out does.
    SignOutCleanup,
}

impl WsFedAction {
    /// The `wa` value, for logs.
    pub fn as_str(&self) -> &'static str {
        match self {
            WsFedAction::SignIn(_) => "wsignin1.0",
            WsFedAction::SignOut => "wsignout1.0",
            WsFedAction::SignOutCleanup => "wsignoutcleanup1.0",
        }
    }
}

/// `wa=wsignin1.0` with its parameters, as received (decoded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignInRequest {
    /// `wtrealm`: the relying party, `https://<host><vdir>/`.
    pub realm: String,
    /// `wctx`: Exchange's context, echoed unchanged in the answer.
    pub context: Option<String>,
}

/// Why a request to the issuer endpoint gets no token. The label is the audit reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WsFedRefusal {
    /// No `wa`, or one this endpoint does not serve.
    UnknownAction,
    /// `wa=wsignin1.0` without `wtrealm`.
    RealmMissing,
    /// A parameter given twice: which one counts would depend on the reader.
    RepeatedParameter,
    /// A parameter longer than this endpoint accepts.
    ParameterTooLong,
    /// `wtrealm` is not `https://<this host><path>/` of a route with `sso = "adfs"`.
    RealmNotPublished,
    /// `wreply` names another address than the realm.
    ReplyNotRealm,
    /// The session has no on-premises SID (`onprem_sid`), which Exchange needs.
    OnPremSidMissing,
    /// The session has no UPN, which Exchange requires.
    UpnMissing,
    /// The token could not be signed.
    SigningFailed,
}

impl WsFedRefusal {
    pub fn as_str(self) -> &'static str {
        match self {
            WsFedRefusal::UnknownAction => "wsfed_unknown_action",
            WsFedRefusal::RealmMissing => "wsfed_realm_missing",
            WsFedRefusal::RepeatedParameter => "wsfed_repeated_parameter",
            WsFedRefusal::ParameterTooLong => "wsfed_parameter_too_long",
            WsFedRefusal::RealmNotPublished => "wsfed_realm_not_published",
            WsFedRefusal::ReplyNotRealm => "wsfed_reply_not_realm",
            WsFedRefusal::OnPremSidMissing => "onprem_sid_missing",
            WsFedRefusal::UpnMissing => "upn_missing",
            WsFedRefusal::SigningFailed => "signing_failed",
        }
    }
}

/// Longest parameter value accepted. Exchange's `wctx` carries the address to return to, which
/// the browser had to send in a request line anyway; a realm is a short URL.
pub const MAX_PARAMETER: usize = 4096;

/// Reads the query of a request to the issuer endpoint.
pub fn parse(query: Option<&str>) -> Result<WsFedAction, WsFedRefusal> {
    let mut wa = None;
    let mut realm = None;
    let mut context = None;
    let mut reply = None;
    for (key, value) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        let slot = match &*key {
            "wa" => &mut wa,
            "wtrealm" => &mut realm,
            "wctx" => &mut context,
            "wreply" => &mut reply,
            // wct, wfresh, whr, …: nothing this endpoint acts on.
            _ => continue,
        };
        if slot.is_some() {
            return Err(WsFedRefusal::RepeatedParameter);
        }
        if value.len() > MAX_PARAMETER {
            return Err(WsFedRefusal::ParameterTooLong);
        }
        *slot = Some(value.into_owned());
    }
    match wa.as_deref() {
        Some("wsignin1.0") => {
            let realm = realm.ok_or(WsFedRefusal::RealmMissing)?;
            if reply.as_ref().is_some_and(|reply| *reply != realm) {
                return Err(WsFedRefusal::ReplyNotRealm);
            }
            Ok(WsFedAction::SignIn(SignInRequest { realm, context }))
        }
        Some("wsignout1.0") => Ok(WsFedAction::SignOut),
        Some("wsignoutcleanup1.0") => Ok(WsFedAction::SignOutCleanup),
        _ => Err(WsFedRefusal::UnknownAction),
    }
}

/// The path of a realm that belongs to the host the browser asked (`Host` as received, with
/// its port): `https://<host><path>/` with nothing else — no user, query, fragment, escape or
/// control character. `http://` is accepted only from a browser that itself came over plain
/// HTTP (`browser_scheme`), as on the demo's loopback listener. Returns the path without its
/// final `/` (`/owa`), for the caller to find the route it names.
pub fn realm_path<'r>(realm: &'r str, browser_scheme: &str, request_host: &str) -> Option<&'r str> {
    let rest = ["https", browser_scheme].into_iter().find_map(|scheme| {
        let name = realm.get(..scheme.len())?;
        let rest = realm.get(scheme.len()..)?.strip_prefix("://")?;
        name.eq_ignore_ascii_case(scheme).then_some(rest)
    })?;
    let slash = rest.find('/')?;
    let (authority, path) = rest.split_at(slash);
    if !authority.eq_ignore_ascii_case(request_host) {
        return None;
    }
    let clean = path.len() > 1
        && path.ends_with('/')
        && !path.contains("//")
        && !path
            .chars()
            .any(|c| matches!(c, '?' | '#' | '%' | '\\' | '@') || c.is_control());
    if !clean {
        return None;
    }
    let trimmed = path.trim_end_matches('/');
    let normal = trimmed
        .split('/')
        .skip(1)
        .all(|segment| !segment.is_empty() && segment != "." && segment != "..");
    normal.then_some(trimmed)
}

/// The page that carries the token to Exchange: a form posted to the realm, submitted by script
/// at once, or by its button when scripts are off. Never cached; the browser sends this page's
/// full address as `Referer` (Exchange requires it to start with `AdfsIssuer`), and no address
/// at all to any other site.
pub fn post_page(realm: &str, wresult: &str, context: Option<&str>) -> Response<ResponseBody> {
    let fields = post_fields(wresult, context);
    auto_post(realm, &fields).response()
}

/// The HTML of [`post_page`].
pub fn post_page_html(realm: &str, wresult: &str, context: Option<&str>) -> String {
    let fields = post_fields(wresult, context);
    auto_post(realm, &fields).render()
}

fn post_fields<'a>(wresult: &'a str, context: Option<&'a str>) -> Vec<(&'a str, &'a str)> {
    let mut fields = vec![("wa", "wsignin1.0"), ("wresult", wresult)];
    if let Some(context) = context {
        fields.push(("wctx", context));
    }
    fields
}

fn auto_post<'a>(realm: &'a str, fields: &'a [(&'a str, &'a str)]) -> AutoPost<'a> {
    AutoPost {
        title: "Signing in",
        message: "You are signed in. If the next page does not open by itself, continue here.",
        action: realm,
        fields,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pages::{AUTO_SUBMIT, AUTO_SUBMIT_HASH};
    use base64::Engine;

    fn sign_in(query: &str) -> Result<WsFedAction, WsFedRefusal> {
        parse(Some(query))
    }

    #[test]
    fn exchange_sign_in_redirect_is_read_with_its_context() {
        let action = sign_in(
            "wa=wsignin1.0&wtrealm=https%3a%2f%2fmail.contoso.com%2fowa%2f&wctx=rm%3d0%26id%3dpassive%26ru%3d%252fowa%252f&wct=2023-10-07T15%3a24%3a26Z",
        )
        .unwrap();
        assert_eq!(
            action,
            WsFedAction::SignIn(SignInRequest {
                realm: "https://mail.contoso.com/owa/".into(),
                context: Some("rm=0&id=passive&ru=%2fowa%2f".into()),
            })
        );
    }

    #[test]
    fn sign_outs_are_recognised() {
        assert_eq!(sign_in("wa=wsignout1.0"), Ok(WsFedAction::SignOut));
        assert_eq!(
            sign_in("wa=wsignoutcleanup1.0"),
            Ok(WsFedAction::SignOutCleanup)
        );
    }

    #[test]
    fn malformed_requests_are_refused_with_their_reason() {
        assert_eq!(parse(None), Err(WsFedRefusal::UnknownAction));
        assert_eq!(sign_in("wa=wsignin2.0"), Err(WsFedRefusal::UnknownAction));
        assert_eq!(sign_in("wa=wsignin1.0"), Err(WsFedRefusal::RealmMissing));
        assert_eq!(
            sign_in("wa=wsignin1.0&wtrealm=https://a/owa/&wtrealm=https://b/owa/"),
            Err(WsFedRefusal::RepeatedParameter)
        );
        assert_eq!(
            sign_in("wa=wsignin1.0&wa=wsignout1.0"),
            Err(WsFedRefusal::RepeatedParameter)
        );
        let long = "x".repeat(MAX_PARAMETER + 1);
        assert_eq!(
            sign_in(&format!("wa=wsignin1.0&wtrealm=https://a/owa/&wctx={long}")),
            Err(WsFedRefusal::ParameterTooLong)
        );
    }

    #[test]
    fn a_reply_address_other_than_the_realm_is_refused() {
        assert_eq!(
            sign_in("wa=wsignin1.0&wtrealm=https://a/owa/&wreply=https://evil.example/"),
            Err(WsFedRefusal::ReplyNotRealm)
        );
        assert!(sign_in("wa=wsignin1.0&wtrealm=https://a/owa/&wreply=https://a/owa/").is_ok());
    }

    #[test]
    fn realm_paths_belong_to_the_requested_host_only() {
        let host = "mail.contoso.com";
        assert_eq!(
            realm_path("https://mail.contoso.com/owa/", "https", host),
            Some("/owa")
        );
        assert_eq!(
            realm_path("HTTPS://MAIL.contoso.com/ecp/", "https", host),
            Some("/ecp")
        );
        assert_eq!(
            realm_path("https://localhost:8443/owa/", "https", "localhost:8443"),
            Some("/owa")
        );
        for realm in [
            "http://mail.contoso.com/owa/",
            "https://evil.example/owa/",
            "https://mail.contoso.com.evil.example/owa/",
            "https://evil.example@mail.contoso.com/owa/",
            "https://mail.contoso.com:444/owa/",
            "https://mail.contoso.com/owa",
            "https://mail.contoso.com/",
            "https://mail.contoso.com/owa/?x=1/",
            "https://mail.contoso.com/owa/#/",
            "https://mail.contoso.com/%6fwa/",
            "https://mail.contoso.com/owa/../ecp/",
            "https://mail.contoso.com//owa/",
            "https://mail.contoso.com/o\\wa/",
            "https://mail.contoso.com/owa/\n/",
            "https://",
            "",
            "https://mail.contoso.comé/owa/",
        ] {
            assert_eq!(realm_path(realm, "https", host), None, "{realm}");
        }
    }

    #[test]
    fn plain_http_realms_only_for_a_browser_that_came_over_plain_http() {
        let host = "127.0.0.1:8080";
        assert_eq!(
            realm_path("http://127.0.0.1:8080/owa/", "http", host),
            Some("/owa")
        );
        assert_eq!(
            realm_path("https://127.0.0.1:8080/owa/", "http", host),
            Some("/owa")
        );
        assert_eq!(
            realm_path("http://127.0.0.1:8080/owa/", "https", host),
            None
        );
        for realm in [
            "http:/127.0.0.1:8080/owa/",
            "httpx://127.0.0.1:8080/owa/",
            "http:",
        ] {
            assert_eq!(realm_path(realm, "http", host), None, "{realm}");
        }
    }

    #[test]
    fn the_post_page_escapes_the_token_and_allows_only_its_own_script() {
        let response = post_page(
            "https://mail.contoso.com/owa/",
            "<t:RequestSecurityTokenResponse a=\"1\">&</t:RequestSecurityTokenResponse>",
            Some("rm=0&ru=\"/owa/\"><script>"),
        );
        let headers = response.headers();
        assert_eq!(headers["cache-control"], "no-store");
        assert_eq!(headers["referrer-policy"], "same-origin");
        let csp = headers["content-security-policy"].to_str().unwrap();
        assert!(csp.contains(&format!("script-src 'sha256-{}'", *AUTO_SUBMIT_HASH)));
        assert!(csp.contains("form-action 'self'"));
        let html = post_page_html(
            "https://mail.contoso.com/owa/",
            "<t:R a=\"1\">&</t:R>",
            Some("rm=0&ru=\"/owa/\"><script>"),
        );
        assert!(html
            .contains("name=\"wresult\" value=\"&lt;t:R a=&quot;1&quot;&gt;&amp;&lt;/t:R&gt;\""));
        assert!(html
            .contains("name=\"wctx\" value=\"rm=0&amp;ru=&quot;/owa/&quot;&gt;&lt;script&gt;\""));
        assert!(html.contains("action=\"https://mail.contoso.com/owa/\""));
        assert_eq!(html.matches("<script>").count(), 1);
        assert!(html.contains(&format!("<script>{AUTO_SUBMIT}</script>")));
        // The hash is of exactly the script on the page.
        assert_eq!(
            *AUTO_SUBMIT_HASH,
            base64::engine::general_purpose::STANDARD.encode(
                ring::digest::digest(&ring::digest::SHA256, b"document.forms[0].submit();")
                    .as_ref()
            )
        );
    }
}
