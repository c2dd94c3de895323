//! One browser request, top to bottom: sanity checks → gateway endpoints → HTTPS redirect →
//! router → access decision → proxy. Every outcome, forwarded or refused, leaves one access log
//! line and one metric sample.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_LENGTH, HOST, LOCATION, SET_COOKIE, TRANSFER_ENCODING};
use http::{Method, Request, Response, StatusCode, Version};
use hyper::body::Incoming;

use super::{Connection, Shared};
use crate::access::AccessRecord;
use crate::auth::{self, Admission, RequestContext};
use crate::body::ResponseBody;
use crate::config::Access;
use crate::error::GatewayError;
use crate::error::Side;
use crate::proxy::{self, headers, Downstream};
use crate::routing::{host_without_port, RouteMatch};
use crate::session::strip_cookies;

const HSTS: HeaderValue = HeaderValue::from_static("max-age=31536000");

pub(super) async fn handle(
    request: Request<Incoming>,
    connection: &Connection,
    shared: &Arc<Shared>,
) -> Response<ResponseBody> {
    let (peer, peer_text, tls) = (connection.peer, &connection.peer_text, connection.tls);
    let start = Instant::now();
    let snapshot = shared.snapshot.load();
    let trusted = &snapshot.config.server.trusted_proxies;
    let peer_trusted = headers::is_trusted(peer.ip(), trusted);
    let client = headers::client_address(request.headers(), peer.ip(), trusted);
    let client_text = if client == peer.ip() {
        peer_text.clone()
    } else {
        headers::address_text(client)
    };
    let mut record = AccessRecord::new(
        start,
        shared.metrics.clone(),
        shared.unrouted_metrics.clone(),
        request.method().clone(),
        request.uri().clone(),
        request.version(),
        client_text,
    );

    let outcome: Result<Response<ResponseBody>, GatewayError> = 'outcome: {
        if let Err(e) = check_framing(&request) {
            break 'outcome Err(e);
        }
        if let Err(e) = check_head_size(&request, snapshot.config.server.max_header_bytes) {
            break 'outcome Err(e);
        }
        let endpoint = GatewayEndpoint::of(request.uri().path());
        // The load balancer's probe may come without a Host header (HTTP/1.0): health is
        // answered for any host.
        if endpoint == Some(GatewayEndpoint::Health) {
            record.set_route(shared.gateway_metrics.clone());
            break 'outcome Ok(health(shared));
        }
        let host = match request_host(&request) {
            Ok(host) => host,
            Err(e) => break 'outcome Err(e),
        };
        let Ok(host_text) = host.to_str() else {
            break 'outcome Err(GatewayError::BadRequest("Host is not text"));
        };
        let host_name = host_without_port(host_text);
        let path = request.uri().path();

        let scheme = browser_scheme(tls, peer_trusted, request.headers());
        let ctx = RequestContext {
            host: host_text,
            scheme,
            client,
        };
        if let Some(endpoint) = endpoint {
            record.set_route(shared.gateway_metrics.clone());
            // Sign-in and sign-out build Entra URLs from the Host header: answered only for
            // hosts this gateway publishes, never for whatever Host a client makes up.
            let (Some(sign_in), true) = (&snapshot.sign_in, snapshot.router.serves_host(host_text))
            else {
                break 'outcome Err(GatewayError::NoRoute);
            };
            break 'outcome match endpoint {
                GatewayEndpoint::Callback => {
                    let (parts, body) = request.into_parts();
                    match read_gateway_body(&parts, body, connection, &snapshot.config.server).await
                    {
                        Ok(body) => Ok(sign_in.callback(parts, body, &ctx).await),
                        Err(e) => Err(e),
                    }
                }
                GatewayEndpoint::Logout => Ok(logout(&request, sign_in, &ctx)),
                GatewayEndpoint::FrontChannelLogout => {
                    Ok(sign_in.frontchannel_logout(request.uri(), request.headers(), client))
                }
                GatewayEndpoint::SignIn => {
                    let step_up = auth::StepUp {
                        prompt_login: true,
                        ..Default::default()
                    };
                    Ok(sign_in.start(
                        request.method(),
                        request.uri(),
                        request.headers(),
                        &step_up,
                        &ctx,
                    ))
                }
                GatewayEndpoint::SignedOut => Ok(auth::signed_out_page()),
                GatewayEndpoint::Health => Ok(health(shared)),
                GatewayEndpoint::Unknown => Err(GatewayError::NoRoute),
            };
        }

        if !tls && shared.certs.is_some() {
            // Plain HTTP with TLS configured: send the browser to HTTPS, but only for a host
            // this gateway publishes — never an open redirect to whatever Host was sent.
            if !snapshot.router.serves_host(host_text) {
                break 'outcome Err(GatewayError::NoRoute);
            }
            break 'outcome Ok(redirect_to_https(&request, host_name, shared.https_port));
        }

        let entry = match snapshot.router.lookup(host_text, path) {
            RouteMatch::Found(entry) => entry,
            RouteMatch::NotFound => break 'outcome Err(GatewayError::NoRoute),
            RouteMatch::BadPath => break 'outcome Err(GatewayError::BadPath),
        };
        record.set_route(entry.metrics.clone());
        let mut reseal = None;
        let mut signing_out = None;
        match (entry.access, &entry.policy, &snapshot.sign_in) {
            (Access::Public, _, _) => {}
            (Access::Deny, _, _) => break 'outcome Err(GatewayError::Denied),
            (Access::Mfa, Some(policy), Some(sign_in)) if is_sign_out(path) => {
                // Signing out needs only a live session: not the route's freshness or group
                // rules, which would send the user to sign in again instead of out.
                match sign_in.live_session(request.headers()) {
                    Some(session) => signing_out = Some((sign_in.clone(), session)),
                    None => break 'outcome Ok(sign_in.end_session(None, &ctx, "owa_logoff")),
                }
            }
            (Access::Mfa, Some(policy), Some(sign_in)) => {
                match sign_in.admit(request.headers(), policy) {
                    Admission::Allowed { reseal: cookie, .. } => reseal = cookie,
                    Admission::SignInRequired { step_up, why } => {
                        record.set_failure(Side::Gateway, format!("sign-in required: {why}"));
                        let response = if auth::is_navigation(request.method(), request.headers()) {
                            sign_in.start(
                                request.method(),
                                request.uri(),
                                request.headers(),
                                &step_up,
                                &ctx,
                            )
                        } else {
                            sign_in.unauthenticated(policy)
                        };
                        break 'outcome Ok(response);
                    }
                    Admission::Denied { session, why } => {
                        crate::audit::policy_denied(
                            why,
                            &session.oid.to_string(),
                            session.upn.as_deref(),
                            &policy.name,
                            client,
                        );
                        break 'outcome Err(GatewayError::PolicyDenied(why));
                    }
                }
            }
            // An mfa route without sign-in configured cannot be judged: closed.
            (Access::Mfa, _, _) => break 'outcome Err(GatewayError::Denied),
        }

        let mut request = request;
        if let Some(sign_in) = &snapshot.sign_in {
            // Exchange never sees the gateway's own cookies.
            strip_cookies(request.headers_mut(), |name| {
                sign_in.is_gateway_cookie(name)
            });
        }
        let downstream = Downstream {
            peer: peer_text.clone(),
            peer_trusted,
            scheme,
            websocket: entry.websocket,
            body_timeout: snapshot.config.server.request_body_timeout,
        };
        match proxy::forward(request, host.clone(), &entry.pool, &downstream).await {
            Ok(mut forwarded) => {
                record.set_upstream(forwarded.server);
                if let Some((sign_in, session)) = signing_out {
                    // Exchange has cleared its own cookies; keep those Set-Cookie headers and
                    // end the gateway session and the Entra session too.
                    let mut response = sign_in.end_session(Some(&session), &ctx, "owa_logoff");
                    for cookie in forwarded.response.headers().get_all(SET_COOKIE) {
                        response.headers_mut().append(SET_COOKIE, cookie.clone());
                    }
                    break 'outcome Ok(response);
                }
                if let Some(cookie) = reseal {
                    forwarded.response.headers_mut().append(SET_COOKIE, cookie);
                }
                Ok(forwarded.response)
            }
            Err(failure) => {
                if let Some(server) = failure.server {
                    record.set_upstream(server);
                }
                if let Some((sign_in, session)) = signing_out {
                    // Exchange could not be reached: the user still signs out of the gateway
                    // and Entra — on a shared computer the mailbox must not stay open.
                    record.set_failure(failure.error.side(), failure.error.to_string());
                    break 'outcome Ok(sign_in.end_session(Some(&session), &ctx, "owa_logoff"));
                }
                Err(failure.error)
            }
        }
    };

    let mut response = match outcome {
        Ok(response) => response,
        Err(error) => {
            record.set_failure(error.side(), error.to_string());
            if error.side() == Side::Upstream {
                tracing::warn!(reason = error.reason(), error = %error, "request to Exchange failed");
            }
            error.page().response(error.status())
        }
    };
    if tls {
        response
            .headers_mut()
            .insert(http::header::STRICT_TRANSPORT_SECURITY, HSTS);
    }
    record.set_status(response.status().as_u16());
    response.body_mut().set_record(record);
    response
}

/// The scheme the browser used: the connection's own, or — behind a trusted load balancer
/// that terminates TLS — what it reports in `X-Forwarded-Proto`.
fn browser_scheme(tls: bool, peer_trusted: bool, headers: &http::HeaderMap) -> &'static str {
    if tls {
        return "https";
    }
    let forwarded_https = peer_trusted
        && headers
            .get(headers::X_FORWARDED_PROTO)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"));
    if forwarded_https {
        "https"
    } else {
        "http"
    }
}

/// Refuses requests whose framing two parsers could read differently (request smuggling):
/// `Transfer-Encoding` together with `Content-Length`, or several `Content-Length` values.
fn check_framing(request: &Request<Incoming>) -> Result<(), GatewayError> {
    let headers = request.headers();
    if headers.contains_key(TRANSFER_ENCODING) && headers.contains_key(CONTENT_LENGTH) {
        return Err(GatewayError::BadRequest(
            "both Transfer-Encoding and Content-Length",
        ));
    }
    let mut lengths = headers.get_all(CONTENT_LENGTH).iter();
    if lengths.next().is_some() && lengths.next().is_some() {
        return Err(GatewayError::BadRequest("several Content-Length headers"));
    }
    // HTTP/1.1 hands us Transfer-Encoding only when it ends in chunked. Anything but a single
    // plain `chunked` (`gzip, chunked`, `chunked, chunked`, two header lines) would be decoded
    // here and re-framed toward Exchange with a meaning the sender did not intend: refuse it.
    // HTTP/2 has no Transfer-Encoding at all.
    let mut codings = headers.get_all(TRANSFER_ENCODING).iter();
    if let Some(first) = codings.next() {
        let plain_chunked = request.version() == Version::HTTP_11
            && codings.next().is_none()
            && first
                .as_bytes()
                .trim_ascii()
                .eq_ignore_ascii_case(b"chunked");
        if !plain_chunked {
            return Err(GatewayError::BadRequest(
                "Transfer-Encoding other than chunked",
            ));
        }
    }
    Ok(())
}

/// The host the browser asked for: `:authority` (HTTP/2) or an absolute-form target, else the
/// single `Host` header.
fn request_host(request: &Request<Incoming>) -> Result<HeaderValue, GatewayError> {
    let mut hosts = request.headers().get_all(HOST).iter();
    let header = hosts.next();
    if hosts.next().is_some() {
        return Err(GatewayError::BadRequest("several Host headers"));
    }
    if let Some(authority) = request.uri().authority() {
        return HeaderValue::from_str(authority.as_str())
            .map_err(|_| GatewayError::BadRequest("bad authority"));
    }
    match header {
        Some(host) if !host.is_empty() => Ok(host.clone()),
        _ => Err(GatewayError::BadRequest("no Host header")),
    }
}

/// The gateway's own endpoints, under `/_gateway/` on every published host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GatewayEndpoint {
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
    /// Any other name under `/_gateway/`: 404, never forwarded (even under a route for `/`).
    Unknown,
}

impl GatewayEndpoint {
    /// The endpoint a request path names; `None` outside `/_gateway/`. Names are matched
    /// without regard to case. Bytes
    /// are compared, never a `str` sliced: the path may hold multi-byte UTF-8 anywhere.
    fn of(path: &str) -> Option<GatewayEndpoint> {
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
        ]
        .into_iter()
        .find(|(known, _)| name.eq_ignore_ascii_case(known))
        .map_or(Some(GatewayEndpoint::Unknown), |(_, endpoint)| {
            Some(endpoint)
        })
    }
}

/// Exchange's own sign-out pages, judged on the path as IIS resolves it: `/owa//logoff.owa`,
/// `/owa/%6cogoff.owa` and `/owa/logoff.owa.` all sign out of Exchange, so they must end the
/// gateway session too.
fn is_sign_out(raw_path: &str) -> bool {
    crate::routing::normalize_path(raw_path).is_ok_and(|path| auth::is_sign_out_path(&path))
}

/// `/_gateway/logout`. A cross-site page must not be able to sign a user out (a forged GET in
/// an image tag, or a form on another site): the browser's own `Sec-Fetch-Site` — which no
/// page can set — says whether the request came from this site or from the user (address bar,
/// bookmark). Anything else gets a page with a button that posts from this site.
fn logout(
    request: &Request<Incoming>,
    sign_in: &auth::SignIn,
    ctx: &RequestContext<'_>,
) -> Response<ResponseBody> {
    let method = request.method();
    if *method != Method::GET && *method != Method::HEAD && *method != Method::POST {
        return crate::pages::Page::new("Bad request", "This address signs you out.")
            .response(StatusCode::METHOD_NOT_ALLOWED);
    }
    if is_same_origin(request.headers(), ctx) {
        let session = sign_in.session_of(request.headers());
        return sign_in.end_session(session.as_ref(), ctx, "gateway_logout");
    }
    let status = if *method == Method::POST {
        StatusCode::FORBIDDEN
    } else {
        StatusCode::OK
    };
    crate::pages::Page::new(
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

/// A request head larger than `max_header_bytes`, counted the same way on both protocols: the
/// request line and every header line as HTTP/1.1 writes them. hyper's own limits are looser
/// (a read buffer, an HPACK table size), so this is where the configured number holds exactly.
fn check_head_size<B>(request: &Request<B>, max: usize) -> Result<(), GatewayError> {
    // "GET " + target + " HTTP/1.1\r\n" … "\r\n"
    let target = request
        .uri()
        .path_and_query()
        .map_or(1, |pq| pq.as_str().len());
    let mut size = request.method().as_str().len() + 1 + target + 11 + 2;
    if !request.headers().contains_key(HOST) {
        // HTTP/2's `:authority` stands for the Host line.
        if let Some(authority) = request.uri().authority() {
            size += 6 + authority.as_str().len() + 2;
        }
    }
    for (name, value) in request.headers() {
        size += name.as_str().len() + 2 + value.len() + 2;
        if size > max {
            return Err(GatewayError::HeadersTooLarge);
        }
    }
    if size > max {
        return Err(GatewayError::HeadersTooLarge);
    }
    Ok(())
}

/// Reads a body the gateway consumes itself (the sign-in callback's form): small, whole, and
/// in time. Without a deadline a client that announces a body and never sends it would hold
/// its connection — and over HTTP/2 hundreds of streams each buffering — for ever; so the body
/// must arrive within `header_read_timeout`, be at most [`MAX_GATEWAY_BODY`] bytes, and only
/// [`MAX_GATEWAY_BODIES_PER_CONNECTION`] such bodies are read at once on one connection.
async fn read_gateway_body(
    parts: &http::request::Parts,
    body: Incoming,
    connection: &Connection,
    server: &crate::config::ServerConfig,
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
    if announced.is_some_and(|length| length > MAX_GATEWAY_BODY as u64) {
        return Err(GatewayError::BodyTooLarge);
    }
    let Ok(_permit) = connection.gateway_bodies.clone().try_acquire_owned() else {
        return Err(GatewayError::ConnectionBusy);
    };
    let collected = tokio::time::timeout(
        server.header_read_timeout,
        Limited::new(body, MAX_GATEWAY_BODY).collect(),
    )
    .await;
    match collected {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(GatewayError::BodyTooLarge),
        Ok(Err(e)) => Err(GatewayError::DownstreamAborted(e.to_string())),
        Err(_) => Err(GatewayError::BodyTimeout),
    }
}

/// Largest body the gateway reads itself: Entra's form_post answer (`code`, `state`,
/// `session_state`) is a few kilobytes.
pub(super) const MAX_GATEWAY_BODY: usize = 16 * 1024;
/// Gateway-read bodies in progress at once on one connection; more are refused at once, so an
/// HTTP/2 connection cannot make the gateway buffer hundreds of them.
pub(super) const MAX_GATEWAY_BODIES_PER_CONNECTION: usize = 4;

fn health(shared: &Shared) -> Response<ResponseBody> {
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

fn redirect_to_https(
    request: &Request<Incoming>,
    host: &str,
    https_port: Option<u16>,
) -> Response<ResponseBody> {
    let path_and_query = request.uri().path_and_query().map_or("/", |pq| pq.as_str());
    let location = match https_port {
        Some(443) | None => format!("https://{host}{path_and_query}"),
        Some(port) => format!("https://{host}:{port}{path_and_query}"),
    };
    // GET and HEAD may become GET after a 301; anything with a body needs 308 to keep it.
    let status = if matches!(*request.method(), Method::GET | Method::HEAD) {
        StatusCode::MOVED_PERMANENTLY
    } else {
        StatusCode::PERMANENT_REDIRECT
    };
    let mut response = Response::new(ResponseBody::empty());
    *response.status_mut() = status;
    match HeaderValue::try_from(location) {
        Ok(value) => {
            response.headers_mut().insert(LOCATION, value);
        }
        Err(_) => *response.status_mut() = StatusCode::BAD_REQUEST,
    }
    response
}
