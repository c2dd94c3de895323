//! One browser request, top to bottom: sanity checks → gateway endpoints → HTTPS redirect →
//! router → access decision → proxy. Every outcome, forwarded or refused, leaves one access log
//! line and one metric sample.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_LENGTH, HOST, LOCATION, SET_COOKIE, TRANSFER_ENCODING};
use http::{Method, Request, Response, StatusCode, Version};
use hyper::body::Incoming;

use super::Shared;
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
    peer: SocketAddr,
    peer_text: &HeaderValue,
    tls: bool,
    shared: &Arc<Shared>,
) -> Response<ResponseBody> {
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
        // The load balancer's probe may come without a Host header (HTTP/1.0): health is
        // answered for any host.
        if request
            .uri()
            .path()
            .eq_ignore_ascii_case("/_gateway/health")
        {
            record.set_route(shared.gateway_metrics.clone());
            break 'outcome gateway_endpoint("health", shared);
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
        if path.len() >= 10 && path[..10].eq_ignore_ascii_case("/_gateway/") {
            record.set_route(shared.gateway_metrics.clone());
            let endpoint = path[10..].to_ascii_lowercase();
            if endpoint == "callback" {
                let Some(sign_in) = &snapshot.sign_in else {
                    break 'outcome Err(GatewayError::NoRoute);
                };
                break 'outcome Ok(sign_in.callback(request, &ctx).await);
            }
            if let (Some(sign_in), "logout" | "frontchannel-logout" | "signed-out" | "sign-in") =
                (&snapshot.sign_in, endpoint.as_str())
            {
                break 'outcome Ok(match endpoint.as_str() {
                    "logout" => {
                        let session = sign_in.session_of(request.headers());
                        sign_in.end_session(session.as_ref(), &ctx, "gateway_logout")
                    }
                    "frontchannel-logout" => {
                        sign_in.frontchannel_logout(request.uri(), request.headers(), client)
                    }
                    "sign-in" => {
                        let step_up = auth::StepUp {
                            prompt_login: true,
                            ..Default::default()
                        };
                        sign_in.start(
                            request.method(),
                            request.uri(),
                            request.headers(),
                            &step_up,
                            &ctx,
                        )
                    }
                    _ => auth::signed_out_page(),
                });
            }
            break 'outcome gateway_endpoint(&endpoint, shared);
        }

        if !tls && shared.certs.is_some() {
            // Plain HTTP with TLS configured: send the browser to HTTPS, but only for a host
            // this gateway publishes — never an open redirect to whatever Host was sent.
            if !snapshot
                .hosts
                .iter()
                .any(|h| h.eq_ignore_ascii_case(host_name.trim_end_matches('.')))
            {
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
            (Access::Mfa, Some(policy), Some(sign_in)) if auth::is_sign_out_path(path) => {
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

fn gateway_endpoint(
    endpoint: &str,
    shared: &Shared,
) -> Result<Response<ResponseBody>, GatewayError> {
    if endpoint.eq_ignore_ascii_case("health") {
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
        return Ok(response);
    }
    Err(GatewayError::NoRoute)
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
