//! Exchange's hybrid modern authentication (HMA) behind the gateway.
//!
//! With HMA, OWA and ECP sign the browser in at Entra themselves, as a second OpenID client
//! (the "Office 365 Exchange Online" application): Entra answers with `response_mode=form_post`,
//! a page on Entra's site that posts `code`, `id_token`, `state` and `session_state` to the
//! reply URL `https://<host>/owa/` (or `/ecp/`). That POST is cross-site, so the browser leaves
//! out the gateway's `SameSite=Lax` session cookie, and the gateway would answer it as a
//! request without a session (401/440) — the sign-in could never finish.
//!
//! This module recognises exactly that POST and answers it with a page of this site that posts
//! the same fields to the same address. The second POST is same-site: the session cookie comes
//! with it, and the ordinary admission (session, MFA, the route's policy) decides whether
//! Exchange sees it. The relay forwards nothing itself and lets nothing past admission; it only
//! gives Entra's answer a second chance to arrive with the cookie it could not carry.
//!
//! Relayed only when every one of these holds (anything else keeps the ordinary answer):
//! - the ordinary admission answered "sign-in required" (so `allow_from`, `deny` and every
//!   other rule has already passed), and the request carries no session cookie at all;
//! - `POST` to the root of an `access = "mfa"` route (`/owa/`, `/ecp/`, as Exchange registers
//!   its reply URLs), without a query string;
//! - `Sec-Fetch-Site`, when the browser sends it, is `cross-site`;
//! - `Origin` is the origin of the provider's authorization endpoint (from its metadata):
//!   a browser sets `Origin` itself, so no other site's page can pass this;
//! - `Content-Type: application/x-www-form-urlencoded`, a body of at most [`MAX_RELAY_BODY`]
//!   bytes that arrives within `header_read_timeout`;
//! - the form holds only OpenID authorization-response fields ([`RELAYED_FIELDS`]), each at
//!   most once, with `state` and a `code`, `id_token` or `error`, in printable ASCII.

use http::header::{HeaderMap, CONTENT_TYPE, ORIGIN};
use http::{Method, Request, Response};
use hyper::body::Incoming;

use crate::auth::{RequestContext, SignIn};
use crate::body::ResponseBody;
use crate::config::Access;
use crate::error::GatewayError;
use crate::pages::AutoPost;
use crate::server::{Connection, RouteEntry, Shared, Snapshot};

/// Largest form relayed: an Entra ID token with a code is a few kilobytes; 64 KiB leaves room
/// for large tokens and still bounds what one request makes the gateway hold.
pub(super) const MAX_RELAY_BODY: usize = 64 * 1024;

/// The fields of an OpenID Connect authorization response (OpenID Connect Core 3.3.2.5 and
/// 3.1.2.6, RFC 9207's `iss`) and the error details Entra adds. Nothing else is relayed.
pub(super) const RELAYED_FIELDS: &[&str] = &[
    "code",
    "id_token",
    "state",
    "session_state",
    "iss",
    "error",
    "error_description",
    "error_uri",
    "error_codes",
    "timestamp",
    "trace_id",
    "correlation_id",
];

/// Answers a request the ordinary admission refused with `refusal` (sign-in required): the
/// relay page when the request is Entra's answer to Exchange's sign-in, otherwise `refusal`.
pub(super) async fn relay_or(
    refusal: GatewayError,
    request: Request<Incoming>,
    entry: &RouteEntry,
    snapshot: &Snapshot,
    ctx: &RequestContext<'_>,
    connection: &Connection,
    shared: &Shared,
) -> Result<Response<ResponseBody>, GatewayError> {
    let Some(sign_in) = &snapshot.sign_in else {
        return Err(refusal);
    };
    if !is_relay_candidate(&request, entry, sign_in) {
        return Err(refusal);
    }
    let (parts, body) = request.into_parts();
    let body = match super::endpoints::read_gateway_body(
        &parts,
        body,
        connection,
        &snapshot.config.server,
        MAX_RELAY_BODY,
    )
    .await
    {
        Ok(body) => body,
        // A body too large, too slow or cut short is no Entra answer: the ordinary answer.
        Err(_) => return Err(refusal),
    };
    let Some(fields) = authorization_response(&body) else {
        return Err(refusal);
    };
    let action = parts.uri.path();
    let pairs: Vec<(&str, &str)> = fields
        .iter()
        .map(|(name, value)| (*name, value.as_str()))
        .collect();
    let names: Vec<&str> = pairs.iter().map(|(name, _)| *name).collect();
    let route = entry.policy.as_ref().map_or("-", |p| p.name.as_str());
    crate::observe::audit::hma_relayed(route, &names.join(","), ctx.client, ctx.host);
    shared.metrics.hma_relayed();
    Ok(AutoPost {
        title: "Signing in",
        message: "Signing in to Exchange. If the next page does not open by itself, continue here.",
        action,
        fields: &pairs,
    }
    .response())
}

/// Everything about the request but its body.
fn is_relay_candidate(request: &Request<Incoming>, entry: &RouteEntry, sign_in: &SignIn) -> bool {
    let headers = request.headers();
    *request.method() == Method::POST
        && entry.access == Access::Mfa
        && request.uri().query().is_none()
        && is_route_root(request.uri().path(), &entry.path)
        && !sign_in.has_session_cookie(headers)
        && is_cross_site_or_unknown(headers)
        && is_form(headers)
        && sign_in
            .authorization_origin()
            .is_some_and(|origin| origin_is(headers, &origin))
}

/// `/owa/` (or `/owa`) for the route `/owa`, in any letter case — Exchange's reply URL.
fn is_route_root(path: &str, route_path: &str) -> bool {
    let path = path.strip_suffix('/').unwrap_or(path);
    !route_path.is_empty() && route_path != "/" && path.eq_ignore_ascii_case(route_path)
}

/// `Sec-Fetch-Site: cross-site`, or no Fetch Metadata at all (an older browser). A same-site
/// or same-origin POST would have carried the session cookie: nothing to relay.
fn is_cross_site_or_unknown(headers: &HeaderMap) -> bool {
    headers
        .get("sec-fetch-site")
        .is_none_or(|site| site.as_bytes().eq_ignore_ascii_case(b"cross-site"))
}

fn is_form(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| {
            v.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        })
}

/// Exactly one `Origin`, equal to `origin` (scheme and host without regard to case).
fn origin_is(headers: &HeaderMap, origin: &str) -> bool {
    let mut values = headers.get_all(ORIGIN).iter();
    match (values.next(), values.next()) {
        (Some(value), None) => value.as_bytes().eq_ignore_ascii_case(origin.as_bytes()),
        _ => false,
    }
}

/// The form, when it is an OpenID authorization response and nothing else: known field names,
/// each once, `state` and one of `code`, `id_token`, `error`, values of printable ASCII (what
/// Entra sends; a control character could not survive the re-post unchanged).
fn authorization_response(body: &[u8]) -> Option<Vec<(&'static str, String)>> {
    if body.is_empty() || !body.iter().all(|b| b.is_ascii_graphic()) {
        return None;
    }
    let mut fields: Vec<(&'static str, String)> = Vec::new();
    for (name, value) in url::form_urlencoded::parse(body) {
        let known = RELAYED_FIELDS.iter().find(|known| **known == name)?;
        if fields.iter().any(|(seen, _)| seen == known)
            || !value.chars().all(|c| c == ' ' || c.is_ascii_graphic())
        {
            return None;
        }
        fields.push((known, value.into_owned()));
    }
    let has = |name: &str| fields.iter().any(|(seen, _)| *seen == name);
    (has("state") && (has("code") || has("id_token") || has("error"))).then_some(fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_route_root_is_exchanges_reply_url() {
        assert!(is_route_root("/owa/", "/owa"));
        assert!(is_route_root("/OWA/", "/owa"));
        assert!(is_route_root("/owa", "/owa"));
        assert!(is_route_root("/ecp/", "/ecp"));
        assert!(!is_route_root("/owa/auth.owa", "/owa"));
        assert!(!is_route_root("/owa//", "/owa"));
        assert!(!is_route_root("/owa/x/", "/owa"));
        assert!(!is_route_root("/", "/"));
        assert!(!is_route_root("/owax/", "/owa"));
    }

    #[test]
    fn an_entra_answer_is_read_field_by_field() {
        let fields = authorization_response(
            b"code=0.AX&id_token=eyJ.eyJ.sig&state=OpenIdConnect.Auth%3Dx&session_state=5f-1",
        )
        .unwrap();
        assert_eq!(
            fields,
            vec![
                ("code", "0.AX".to_owned()),
                ("id_token", "eyJ.eyJ.sig".to_owned()),
                ("state", "OpenIdConnect.Auth=x".to_owned()),
                ("session_state", "5f-1".to_owned()),
            ]
        );
        let error = authorization_response(
            b"error=access_denied&error_description=AADSTS50105%3A+The+user+cancelled.&state=s",
        )
        .unwrap();
        assert_eq!(
            error[1],
            (
                "error_description",
                "AADSTS50105: The user cancelled.".to_owned()
            )
        );
    }

    #[test]
    fn anything_but_an_authorization_response_is_not_relayed() {
        for body in [
            &b""[..],
            b"state=s",
            b"code=c",
            b"code=c&state=s&username=alice",
            b"code=c&state=s&state=t",
            b"code=c&state=s&destination=https%3A%2F%2Fevil.example%2F",
            b"code=c%0d%0a&state=s",
            b"code=c&state=s%00",
            b"code=\xc3\xa9&state=s",
            b"code=c&state=s&wa=wsignin1.0",
        ] {
            assert!(
                authorization_response(body).is_none(),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn origin_must_be_the_providers_and_only_it() {
        let origin = "https://login.microsoftonline.com";
        let mut headers = HeaderMap::new();
        assert!(!origin_is(&headers, origin));
        headers.insert(ORIGIN, origin.parse().unwrap());
        assert!(origin_is(&headers, origin));
        headers.insert(ORIGIN, "https://LOGIN.microsoftonline.com".parse().unwrap());
        assert!(origin_is(&headers, origin));
        for other in [
            "null",
            "https://login.microsoftonline.com.evil.example",
            "http://login.microsoftonline.com",
            "https://login.microsoftonline.com:8443",
            "https://evil.example",
        ] {
            headers.insert(ORIGIN, other.parse().unwrap());
            assert!(!origin_is(&headers, origin), "{other}");
        }
        headers.insert(ORIGIN, origin.parse().unwrap());
        headers.append(ORIGIN, "https://evil.example".parse().unwrap());
        assert!(!origin_is(&headers, origin));
    }

    #[test]
    fn fetch_metadata_must_say_cross_site_when_present() {
        let mut headers = HeaderMap::new();
        assert!(is_cross_site_or_unknown(&headers));
        headers.insert("sec-fetch-site", "cross-site".parse().unwrap());
        assert!(is_cross_site_or_unknown(&headers));
        for site in ["same-origin", "same-site", "none"] {
            headers.insert("sec-fetch-site", site.parse().unwrap());
            assert!(!is_cross_site_or_unknown(&headers), "{site}");
        }
    }
}
