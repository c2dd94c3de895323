//! One browser request, top to bottom:
//!
//! 1. [`framing`]: refuse what two parsers could read differently, and heads over the limit.
//! 2. [`endpoints`]: the gateway's own `/_gateway/*` endpoints (an enum), on published hosts;
//!    [`wsfed`], the WS-Federation issuer of routes with `sso = "adfs"`.
//! 3. plain HTTP with TLS configured: redirect to HTTPS.
//! 4. the router: (host, path) → route, after IIS's path normalisation.
//! 5. [`admission`]: the route's source networks (`allow_from`), then its access rule —
//!    `public`, `deny`, or `mfa` with the session and the route's policy; [`hma`]: Entra's
//!    cross-site answer to Exchange's own sign-in, which cannot carry the session cookie,
//!    relayed once as a same-site POST that can; and [`forms_logon`]: Exchange's logon form
//!    only for the signed-in user.
//! 6. [`kerberos`], on routes with `sso = "kerberos"`: the user Exchange is signed in as.
//! 7. the proxy: forward to a healthy Exchange server and stream the answer back.
//!
//! Every outcome, forwarded or refused, leaves one access log line and one metric sample: the
//! [`AccessRecord`] rides on the response body and is written when the body is done.

mod admission;
mod endpoints;
mod exchange_cookies;
mod forms_logon;
mod framing;
mod hma;
mod kerberos;
mod wsfed;

use std::time::Instant;

use http::header::{HeaderValue, SET_COOKIE};
use http::{Request, Response};
use hyper::body::Incoming;

use crate::auth::RequestContext;
use crate::body::{ObservedBody, ResponseBody};
use crate::config::Sso;
use crate::error::{GatewayError, Side};
use crate::observe::access::AccessRecord;
use crate::observe::metrics::RouteSlot;
use crate::proxy::{self, headers, BrowserBody, Downstream};
use crate::routing::{host_without_port, RouteMatch};
use crate::server::{Connection, Shared, Snapshot};
use crate::session::exchange::sets_exchange_identity_cookie;
use admission::Admitted;
use endpoints::GatewayEndpoint;
use exchange_cookies::ExchangeCookies;

pub(crate) use endpoints::MAX_GATEWAY_BODIES_PER_CONNECTION;

const HSTS: HeaderValue = HeaderValue::from_static("max-age=31536000");

/// Serves one request. Never fails: every error becomes the gateway's page for it.
pub(crate) async fn handle(
    request: Request<Incoming>,
    connection: &Connection,
    shared: &Shared,
) -> Response<ObservedBody<AccessRecord>> {
    let start = Instant::now();
    let (snapshot, counters) = shared.current();
    let trusted = &snapshot.config.server.trusted_proxies;
    let peer_trusted = headers::is_trusted(connection.peer.ip(), trusted);
    let client = headers::client_address(request.headers(), connection.peer.ip(), trusted);
    let client_text = if client == connection.peer.ip() {
        connection.peer_text.clone()
    } else {
        headers::address_text(client)
    };
    let mut record = AccessRecord::new(
        start,
        counters,
        request.method().clone(),
        request.uri().clone(),
        request.version(),
        client_text,
    );
    let request = Arrival {
        request,
        connection,
        peer_trusted,
        client,
    };
    let outcome = serve(request, shared, &snapshot, &mut record).await;

    let mut response = match outcome {
        Ok(response) => response,
        Err(error) => {
            record.set_failure(error.side(), error.to_string());
            if error.side() == Side::Upstream {
                tracing::warn!(reason = error.reason(), error = %error, "request to Exchange failed");
            }
            error.response()
        }
    };
    if connection.tls {
        response
            .headers_mut()
            .insert(http::header::STRICT_TRANSPORT_SECURITY, HSTS);
    }
    record.set_status(response.status().as_u16());
    response.map(|body| ObservedBody::new(body, record))
}

/// A request with what its connection says about the browser.
struct Arrival<'c> {
    request: Request<Incoming>,
    connection: &'c Connection,
    /// The peer is one of `trusted_proxies` (its `X-Forwarded-*` is believed).
    peer_trusted: bool,
    /// The browser's address: the peer's, or the one a trusted proxy reports.
    client: std::net::IpAddr,
}

async fn serve(
    arrival: Arrival<'_>,
    shared: &Shared,
    snapshot: &Snapshot,
    record: &mut AccessRecord,
) -> Result<Response<ResponseBody>, GatewayError> {
    let Arrival {
        request,
        connection,
        peer_trusted,
        client,
    } = arrival;
    let server = &snapshot.config.server;
    framing::check_framing(&request)?;
    framing::check_head_size(&request, server.max_header_bytes)?;

    let endpoint = GatewayEndpoint::of(request.uri().path());
    // The load balancer's probe may come without a Host header (HTTP/1.0): health is answered
    // for any host.
    if endpoint == Some(GatewayEndpoint::Health) {
        record.set_route(RouteSlot::GATEWAY);
        return Ok(endpoints::health(shared));
    }
    let host = framing::request_host(&request)?;
    let host_text = host
        .to_str()
        .map_err(|_| GatewayError::BadRequest("Host is not text"))?;
    let scheme = framing::browser_scheme(connection.tls, peer_trusted, request.headers());
    let ctx = RequestContext {
        host: host_text,
        scheme,
        client,
    };

    if let Some(endpoint) = endpoint {
        record.set_route(RouteSlot::GATEWAY);
        // Sign-in and sign-out build Entra URLs from the Host header: answered only for hosts
        // this gateway publishes, never for whatever Host a client makes up.
        let (Some(sign_in), true) = (&snapshot.sign_in, snapshot.router.serves_host(host_text))
        else {
            return Err(GatewayError::NoRoute);
        };
        return endpoints::serve(
            endpoint, request, sign_in, &ctx, connection, shared, snapshot, record,
        )
        .await;
    }

    if !connection.tls && shared.certs.is_some() {
        // Plain HTTP with TLS configured: send the browser to HTTPS, but only for a host this
        // gateway publishes — never an open redirect to whatever Host was sent.
        if !snapshot.router.serves_host(host_text) {
            return Err(GatewayError::NoRoute);
        }
        return Ok(framing::redirect_to_https(
            &request,
            host_without_port(host_text),
            shared.https_port,
        ));
    }

    let entry = match snapshot.router.lookup(host_text, request.uri().path()) {
        RouteMatch::Found(entry) => entry,
        RouteMatch::NotFound => return Err(GatewayError::NoRoute),
        RouteMatch::BadPath => return Err(GatewayError::BadPath),
    };
    record.set_route(entry.slot);
    let mut decision = admission::decide(&request, entry, snapshot, &ctx, record);
    if let (Err(GatewayError::IdentityProviderUnavailable { .. }), Some(sign_in)) =
        (&decision, &snapshot.sign_in)
    {
        // A sign-in refused because Entra was marked unreachable: ask Entra again now, and if
        // it answers, this very attempt goes through.
        if sign_in.provider().recheck_if_unreachable().await {
            decision = admission::decide(&request, entry, snapshot, &ctx, record);
        }
    }
    let admitted = match decision {
        Ok(admission::Decision::Forward(admitted)) => admitted,
        Ok(admission::Decision::Answer(response)) => return Ok(*response),
        Err(refusal @ GatewayError::SignInRequired { .. }) => {
            // Perhaps Entra's answer to Exchange's own sign-in, which came cross-site without
            // the session cookie: relayed as a same-site POST, judged again on arrival.
            return hma::relay_or(refusal, request, entry, snapshot, &ctx, connection, shared)
                .await;
        }
        Err(refusal) => return Err(refusal),
    };

    let mut request = request;
    // Signing out expires the Exchange cookies the request names.
    let request_headers = match admitted {
        Admitted::SigningOut { .. } => request.headers().clone(),
        Admitted::Session { .. } => http::HeaderMap::new(),
    };
    // Exchange's identity cookies go to Exchange only under the session they were set in.
    let exchange_cookies = match (&admitted, &snapshot.sign_in) {
        (
            Admitted::Session {
                session: Some(session),
                ..
            },
            Some(sign_in),
        ) => Some(ExchangeCookies::check(&mut request, sign_in, session)),
        (Admitted::SigningOut { session, .. }, Some(sign_in)) => {
            Some(ExchangeCookies::check(&mut request, sign_in, session))
        }
        _ => None,
    };
    let mut request = match &admitted {
        Admitted::Session {
            session: Some(session),
            ..
        } if forms_logon::is_bound_logon(&request, entry) => {
            forms_logon::bind(
                request,
                session,
                entry,
                snapshot.config.oidc.as_ref(),
                server,
                connection,
                &ctx,
            )
            .await?
        }
        _ => request.map(BrowserBody::Streaming),
    };
    admission::strip_gateway_cookies(&mut request, snapshot);
    let signed_in: Option<&crate::session::Session> = match &admitted {
        Admitted::Session {
            session: Some(session),
            ..
        } => Some(session),
        Admitted::SigningOut { session, .. } => Some(session),
        Admitted::Session { session: None, .. } => None,
    };
    let route_name = &entry.metrics.name;
    let kerberos = match (entry.sso, signed_in) {
        (Sso::Kerberos, Some(session)) => {
            match kerberos::sign_in_for(session, snapshot, route_name, client, host_text) {
                Ok(sign_in) => Some(sign_in),
                Err(error) => {
                    if let Admitted::SigningOut { sign_in, session } = &admitted {
                        // Exchange cannot be told, but the user still signs out here.
                        record.set_failure(error.side(), error.to_string());
                        return Ok(sign_in.end_session(
                            Some(session),
                            &request_headers,
                            &ctx,
                            "owa_logoff",
                        ));
                    }
                    return Err(error);
                }
            }
        }
        // Validation allows sso = "kerberos" only on mfa routes: never without a session.
        (Sso::Kerberos, None) => return Err(GatewayError::Denied),
        _ => None,
    };
    if kerberos.is_some() {
        request = kerberos::read_small_body(request, server.request_body_timeout).await?;
    }
    let kerberos_user = kerberos.as_ref().map(|k| k.user.clone());
    let downstream = Downstream {
        peer: connection.peer_text.clone(),
        peer_trusted,
        scheme,
        websocket: entry.websocket,
        body_timeout: server.request_body_timeout,
        owner: None,
        kerberos,
    };
    let forwarded = proxy::forward(request, host.clone(), &entry.pool, &downstream).await;
    match (forwarded, admitted) {
        (Ok(forwarded), Admitted::SigningOut { sign_in, session }) => {
            record.set_upstream(forwarded.server);
            // Exchange has cleared its own cookies; keep those Set-Cookie headers and end the
            // gateway session and the Entra session too. Whatever identity cookie Exchange
            // would set here is not kept: the session is over.
            let mut response =
                sign_in.end_session(Some(&session), &request_headers, &ctx, "owa_logoff");
            let mut ours: Vec<HeaderValue> = response
                .headers_mut()
                .get_all(SET_COOKIE)
                .iter()
                .cloned()
                .collect();
            response.headers_mut().remove(SET_COOKIE);
            let theirs = forwarded
                .response
                .headers()
                .get_all(SET_COOKIE)
                .iter()
                .filter(|cookie| !sets_exchange_identity_cookie(cookie))
                .cloned();
            // Exchange's first, then the gateway's expiries, which win for the same cookie.
            let mut all: Vec<HeaderValue> = theirs.collect();
            all.append(&mut ours);
            for cookie in all {
                response.headers_mut().append(SET_COOKIE, cookie);
            }
            Ok(response)
        }
        (Ok(mut forwarded), Admitted::Session { reseal, session }) => {
            record.set_upstream(forwarded.server);
            if let (Some(check), Some(session), Some(sign_in)) =
                (exchange_cookies, &session, &snapshot.sign_in)
            {
                check.answer(&mut forwarded.response, sign_in, session);
            }
            if let Some(cookie) = reseal {
                forwarded.response.headers_mut().append(SET_COOKIE, cookie);
            }
            Ok(forwarded.response)
        }
        (Err(failure), Admitted::SigningOut { sign_in, session }) => {
            if let Some(server) = failure.server {
                record.set_upstream(server);
            }
            // Exchange could not be reached: the user still signs out of the gateway and
            // Entra — on a shared computer the mailbox must not stay open.
            kerberos::audit_failure(
                &failure.error,
                &session,
                kerberos_user.as_deref(),
                route_name,
                client,
                host_text,
            );
            record.set_failure(failure.error.side(), failure.error.to_string());
            Ok(sign_in.end_session(Some(&session), &request_headers, &ctx, "owa_logoff"))
        }
        (Err(failure), Admitted::Session { session, .. }) => {
            if let Some(server) = failure.server {
                record.set_upstream(server);
            }
            if let Some(session) = &session {
                kerberos::audit_failure(
                    &failure.error,
                    session,
                    kerberos_user.as_deref(),
                    route_name,
                    client,
                    host_text,
                );
            }
            Err(failure.error)
        }
    }
}
