//! The gateway's own endpoints under `/_gateway/`: the load balancer's probe, the end of a
//! sign-in, the sign-outs. Bodies these endpoints read are small and must arrive in time.

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_LENGTH, SET_COOKIE};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::auth::{self, RequestContext, SignIn};
use crate::body::ResponseBody;
use crate::error::GatewayError;
use crate::observe::access::AccessRecord;
use crate::pages::Page;
use crate::server::{Connection, Shared, Snapshot};

/// The gateway's own endpoints, under `/_gateway/` on every published host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum GatewayEndpoint {
    /// The load balancer's probe: 200 when ready, 503 otherwise.
    Health,
    /// Entra's answer to a sign-in (GET, or a form POST with `response_mode=form_post`).
    Callback,
    /// Sign out of the gateway and of Entra.
    Logout,
    /// Entra's front-channel logout, with only `sid`.
    FrontChannelLogout,
    /// Where Entra's sign-out returns the browser.
    SignedOut,
    /// A fresh sign-in (`prompt=login`), offered after a refused one.
    SignIn,
    /// The WS-Federation issuer of Exchange's AD FS mode (`wsfed/`, Exchange's `AdfsIssuer`).
    WsFed,
    /// Any other name under `/_gateway/`: 404, never forwarded (even under a route for `/`).
    Unknown,
}

impl GatewayEndpoint {
    /// The endpoint a request path names; `None` outside `/_gateway/`. Names are matched
    /// without regard to case. Bytes
    /// are compared, never a `str` sliced: the path may hold multi-byte UTF-8 anywhere.
    pub(super) fn of(path: &str) -> Option<GatewayEndpoint> {
        const PREFIX: &[u8] = b"/_gateway/";
        let bytes = path.as_bytes();
        let prefix = bytes.get(..PREFIX.len())?;
        if !prefix.eq_ignore_ascii_case(PREFIX) {
            return None;
        }
        let name = &bytes[PREFIX.len()..];
        [
            (&b"health"[..], GatewayEndpoint::Health),
            (b"callback", GatewayEndpoint::Callback),
            (b"logout", GatewayEndpoint::Logout),
            (b"frontchannel-logout", GatewayEndpoint::FrontChannelLogout),
            (b"signed-out", GatewayEndpoint::SignedOut),
            (b"sign-in", GatewayEndpoint::SignIn),
            (b"wsfed/", GatewayEndpoint::WsFed),
            (b"wsfed", GatewayEndpoint::WsFed),
        ]
        .into_iter()
        .find(|(known, _)| name.eq_ignore_ascii_case(known))
        .map_or(Some(GatewayEndpoint::Unknown), |(_, endpoint)| {
            Some(endpoint)
        })
    }
}

/// Answers a gateway endpoint on a published host (`/_gateway/health` is answered before the
/// host is known).
#[allow(clippy::too_many_arguments)]
pub(super) async fn serve(
    endpoint: GatewayEndpoint,
    request: Request<Incoming>,
    sign_in: &SignIn,
    ctx: &RequestContext<'_>,
    connection: &Connection,
    shared: &Shared,
    snapshot: &Snapshot,
    record: &mut AccessRecord,
) -> Result<Response<ResponseBody>, GatewayError> {
    let server = &snapshot.config.server;
    match endpoint {
        GatewayEndpoint::Callback => {
            let (parts, body) = request.into_parts();
            let body =
                read_gateway_body(&parts, body, connection, server, MAX_GATEWAY_BODY).await?;
            let answer = sign_in.callback(parts, body, ctx).await;
            let mut response = match answer.outcome {
                Ok(response) => response,
                Err(error) => {
                    record.set_failure(error.side(), error.to_string());
                    error.response()
                }
            };
            if let Some(clear) = answer.clear_login {
                response.headers_mut().append(SET_COOKIE, clear);
            }
            Ok(response)
        }
        GatewayEndpoint::Logout => logout(&request, sign_in, ctx),
        GatewayEndpoint::FrontChannelLogout => {
            sign_in.frontchannel_logout(request.uri(), request.headers(), ctx.client)
        }
        GatewayEndpoint::SignIn => {
            let step_up = auth::StepUp {
                prompt_login: true,
                ..Default::default()
            };
            let start = || {
                sign_in.start(
                    request.method(),
                    request.uri(),
                    request.headers(),
                    &step_up,
                    ctx,
                )
            };
            match start() {
                Err(GatewayError::IdentityProviderUnavailable { .. })
                    if sign_in.provider().recheck_if_unreachable().await =>
                {
                    start()
                }
                answer => answer,
            }
        }
        GatewayEndpoint::SignedOut => Ok(auth::signed_out_page()),
        GatewayEndpoint::WsFed => {
            match super::wsfed::serve(&request, sign_in, snapshot, shared, ctx) {
                Err(GatewayError::IdentityProviderUnavailable { .. })
                    if sign_in.provider().recheck_if_unreachable().await =>
                {
                    super::wsfed::serve(&request, sign_in, snapshot, shared, ctx)
                }
                answer => answer,
            }
        }
        GatewayEndpoint::Health => Ok(health(shared)),
        GatewayEndpoint::Unknown => Err(GatewayError::NoRoute),
    }
}

/// `/_gateway/logout`.
fn logout(
    request: &Request<Incoming>,
    sign_in: &SignIn,
    ctx: &RequestContext<'_>,
) -> Result<Response<ResponseBody>, GatewayError> {
    let method = request.method();
    if *method != Method::GET && *method != Method::HEAD && *method != Method::POST {
        return Err(GatewayError::MethodNotAllowed);
    }
    Ok(sign_out(request, sign_in, ctx, "gateway_logout"))
}

/// A sign-out request (`/_gateway/logout`, WS-Federation's `wsignout1.0`), audited as `how`. A
/// cross-site page must not be able to sign a user out (a forged GET in an image tag, or a
/// form on another site): the browser's own `Sec-Fetch-Site` — which no page can set — says
/// whether the request came from this site or from the user (address bar, bookmark). Anything
/// else gets a page with a button that posts `/_gateway/logout` from this site.
pub(super) fn sign_out(
    request: &Request<Incoming>,
    sign_in: &SignIn,
    ctx: &RequestContext<'_>,
    how: &'static str,
) -> Response<ResponseBody> {
    if is_same_origin(request.headers(), ctx) {
        let session = sign_in.session_of(request.headers());
        return sign_in.end_session(session.as_ref(), request.headers(), ctx, how);
    }
    let status = if *request.method() == Method::POST {
        StatusCode::FORBIDDEN
    } else {
        StatusCode::OK
    };
    Page::new(
        "Sign out",
        "Sign out of Outlook on the web and of your Microsoft account on this browser?",
    )
    .with_form_button("Sign out", "/_gateway/logout")
    .response(status)
}

/// Whether the browser says the request was made by this site itself or by the user directly:
/// `Sec-Fetch-Site: same-origin` or `none`, or — from a browser without Fetch Metadata — a
/// POST whose `Origin` is this gateway's own.
fn is_same_origin(headers: &http::HeaderMap, ctx: &RequestContext<'_>) -> bool {
    if let Some(site) = headers.get("sec-fetch-site") {
        return site.as_bytes().eq_ignore_ascii_case(b"same-origin")
            || site.as_bytes().eq_ignore_ascii_case(b"none");
    }
    headers
        .get(http::header::ORIGIN)
        .and_then(|origin| origin.to_str().ok())
        .and_then(|origin| origin.split_once("://"))
        .is_some_and(|(scheme, host)| {
            scheme.eq_ignore_ascii_case(ctx.scheme) && host.eq_ignore_ascii_case(ctx.host)
        })
}

/// Reads a body the gateway consumes itself (the sign-in callback's form, Exchange's logon
/// form, Entra's answer to Exchange): small, whole, and
/// in time. Without a deadline a client that announces a body and never sends it would hold
/// its connection — and over HTTP/2 hundreds of streams each buffering — for ever; so the body
/// must arrive within `header_read_timeout`, be at most `limit` bytes ([`MAX_GATEWAY_BODY`] for
/// the callback), and only [`MAX_GATEWAY_BODIES_PER_CONNECTION`] such bodies are read at once
/// on one connection.
pub(super) async fn read_gateway_body(
    parts: &http::request::Parts,
    body: Incoming,
    connection: &Connection,
    server: &crate::config::ServerConfig,
    limit: usize,
) -> Result<Bytes, GatewayError> {
    use http_body_util::{BodyExt, Limited};
    if parts.method != Method::POST {
        return Ok(Bytes::new());
    }
    let announced = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if announced.is_some_and(|length| length > limit as u64) {
        return Err(GatewayError::BodyTooLarge);
    }
    let Ok(_permit) = connection.gateway_bodies.clone().try_acquire_owned() else {
        return Err(GatewayError::ConnectionBusy);
    };
    let collected = tokio::time::timeout(
        server.header_read_timeout,
        Limited::new(body, limit).collect(),
    )
    .await;
    match collected {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(GatewayError::BodyTooLarge),
        Ok(Err(e)) => Err(GatewayError::DownstreamAborted(e.to_string())),
        Err(_) => Err(GatewayError::BodyTimeout),
    }
}

pub(super) fn health(shared: &Shared) -> Response<ResponseBody> {
    let (status, text) = if shared.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "unavailable\n")
    };
    let mut response = Response::new(ResponseBody::full(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    response
}

/// Largest body the gateway reads itself unless told otherwise: Entra's form_post answer
/// (`code`, `state`, `session_state`) and Exchange's logon form are a few kilobytes.
pub(super) const MAX_GATEWAY_BODY: usize = 16 * 1024;
/// Gateway-read bodies in progress at once on one connection; more are refused at once, so an
/// HTTP/2 connection cannot make the gateway buffer hundreds of them.
pub(crate) const MAX_GATEWAY_BODIES_PER_CONNECTION: usize = 4;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_names_match_without_regard_to_case() {
        assert_eq!(
            GatewayEndpoint::of("/_gateway/health"),
            Some(GatewayEndpoint::Health)
        );
        assert_eq!(
            GatewayEndpoint::of("/_GATEWAY/Callback"),
            Some(GatewayEndpoint::Callback)
        );
        assert_eq!(
            GatewayEndpoint::of("/_gateway/frontchannel-logout"),
            Some(GatewayEndpoint::FrontChannelLogout)
        );
        assert_eq!(GatewayEndpoint::of("/owa/"), None);
        assert_eq!(GatewayEndpoint::of("/_gateway"), None);
        assert_eq!(
            GatewayEndpoint::of("/_gateway/"),
            Some(GatewayEndpoint::Unknown)
        );
    }

    #[test]
    fn multi_byte_utf8_anywhere_in_the_path_is_judged_without_panicking() {
        for path in [
            "/_gatewayé",
            "/_gateway/é",
            "/_gateway/héalth",
            "/owa/ééé",
            "/é",
            "é",
            "",
            "/_gateway/health\u{1F600}",
        ] {
            let endpoint = GatewayEndpoint::of(path);
            assert_ne!(endpoint, Some(GatewayEndpoint::Health), "{path}");
        }
        assert_eq!(
            GatewayEndpoint::of("/_gateway/é"),
            Some(GatewayEndpoint::Unknown)
        );
    }
}
