//! Forwarding one request to Exchange: pick a healthy server, rewrite headers, stream the body
//! there and the response back. HTTP/2 from the browser becomes HTTP/1.1 toward Exchange, which
//! is what IIS serves OWA and ECP with.

mod connections;
pub mod headers;
mod pool;
mod websocket;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::header::{
    HeaderValue, AUTHORIZATION, CONNECTION, CONTENT_LENGTH, HOST, UPGRADE, WWW_AUTHENTICATE,
};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

pub use connections::{ConnectionCounts, Lease, Owner, ServerCertificate};
pub use pool::{PoolError, ServerStatus, UpstreamPool};

use crate::body::{BodyError, RequestBody, ResponseBody};
use crate::error::GatewayError;
use crate::sso::kerberos::{
    ChannelBinding, KerberosError, KerberosReason, KerberosSso, NegotiateToken,
};

/// What the proxy needs to know about the browser's connection.
pub struct Downstream {
    /// The connection's address, as [`headers::address_text`] wrote it.
    pub peer: HeaderValue,
    pub peer_trusted: bool,
    /// `https` or `http` as the browser sees the gateway (a trusted load balancer that
    /// terminates TLS reports it in `X-Forwarded-Proto`).
    pub scheme: &'static str,
    /// The route forwards WebSocket upgrades.
    pub websocket: bool,
    /// `server.request_body_timeout`: longest pause within the browser's body.
    pub body_timeout: Duration,
    /// Whose identity the connection to Exchange carries, for connections authenticated as
    /// one user: such a connection only ever carries that user's requests. `None`: any
    /// connection without an owner. With [`Downstream::kerberos`] the owner is its user,
    /// whatever this says.
    pub owner: Owner,
    /// `sso = "kerberos"`: every request is signed in to Exchange as this user.
    pub kerberos: Option<KerberosSignIn>,
}

/// Signing each request in to Exchange as one user with a Kerberos ticket obtained by
/// constrained delegation (`sso = "kerberos"`): the browser's own `Authorization` is dropped,
/// each try of the request gets a token bound to the TLS connection it goes over, Exchange's
/// answer must prove it holds the SPN's key, and the request travels only over connections
/// owned by the user — IIS keeps a Kerberos-authenticated connection signed in as its first
/// user (`authPersistNonNTLM`), so a connection that carried one user's ticket must never carry
/// another user's request.
pub struct KerberosSignIn {
    pub engine: KerberosSso,
    /// The name the engine impersonates (UPN or sAMAccountName, as the engine's `user_kind`
    /// says); also the owner of the connections.
    pub user: Arc<str>,
}

/// The browser's request body as the proxy gets it: still arriving, or read whole by the
/// gateway already (Exchange's forms logon, which is judged before it is forwarded).
pub enum BrowserBody {
    Streaming(Incoming),
    Read(bytes::Bytes),
}

impl BrowserBody {
    fn is_end_stream(&self) -> bool {
        match self {
            BrowserBody::Streaming(body) => http_body::Body::is_end_stream(body),
            BrowserBody::Read(bytes) => bytes.is_empty(),
        }
    }
}

/// The outcome of forwarding: the response, and which server answered (for the access log).
pub struct Forwarded {
    pub response: Response<ResponseBody>,
    pub server: Arc<str>,
}

pub struct ForwardError {
    pub error: GatewayError,
    pub server: Option<Arc<str>>,
}

impl From<GatewayError> for ForwardError {
    fn from(error: GatewayError) -> Self {
        ForwardError {
            error,
            server: None,
        }
    }
}

/// Sends `request` to one server of `pool`. `host` is the host the browser asked for; Exchange
/// needs it unchanged (it builds OWA's URLs from it).
pub async fn forward(
    mut request: Request<BrowserBody>,
    host: HeaderValue,
    pool: &UpstreamPool,
    downstream: &Downstream,
) -> Result<Forwarded, ForwardError> {
    let limits = pool.config();
    if let Some(length) = content_length(&request) {
        if length > limits.max_request_body {
            return Err(GatewayError::BodyTooLarge.into());
        }
    }

    // Upgrades only where the route allows them, and only to WebSocket (never h2c, which
    // would hand the upstream connection to whatever the browser sends next).
    let websocket_key = match request.version() {
        Version::HTTP_11 if downstream.websocket && request.method() == Method::GET => {
            websocket::requested(request.headers())
        }
        _ => None,
    };
    let downstream_upgrade = websocket_key
        .as_ref()
        .map(|_| hyper::upgrade::on(&mut request));

    let (parts, body) = request.into_parts();
    let bodiless = body.is_end_stream();
    let retryable = bodiless && is_idempotent(&parts.method);
    // The request target goes to Exchange exactly as the browser sent it (IIS normalises it
    // the same way the router judged it); shared, not copied.
    let path_and_query = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));

    let mut headers = parts.headers;
    headers::strip_hop_by_hop(&mut headers);
    headers::strip_identity_headers(&mut headers);
    let kerberos = downstream.kerberos.as_ref();
    if kerberos.is_some() {
        // Only the gateway's ticket signs the user in: whatever the browser sent (its own
        // Negotiate or NTLM attempt, a Basic password) never reaches Exchange.
        headers.remove(AUTHORIZATION);
    }
    let proto = downstream.scheme;
    headers::set_forwarded(
        &mut headers,
        &downstream.peer,
        downstream.peer_trusted,
        proto,
        &host,
    );
    let public_host = host.clone();
    headers.insert(HOST, host);
    if websocket_key.is_some() {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    }

    // Sent again after Exchange refused a ticket (401 Negotiate): a request without a body, or
    // whose body the gateway read whole before forwarding it. A streamed body is gone once
    // sent.
    let kerberos_replay: Option<Option<bytes::Bytes>> = match (&body, kerberos) {
        (_, None) => None,
        (_, Some(_)) if bodiless => Some(None),
        (BrowserBody::Read(bytes), Some(_)) => Some(Some(bytes.clone())),
        (BrowserBody::Streaming(_), Some(_)) => None,
    };
    let progress = (!bodiless).then(|| Arc::new(AtomicU64::new(0)));
    let body = match (body, &progress) {
        (BrowserBody::Streaming(body), Some(progress)) => RequestBody::new(
            body,
            limits.max_request_body,
            progress.clone(),
            downstream.body_timeout,
        ),
        (BrowserBody::Read(bytes), Some(_)) => RequestBody::read(bytes),
        (_, None) => RequestBody::empty(),
    };
    // Exchange gets the request in origin form (path and query) with the browser's Host.
    let target = Uri::from(path_and_query);
    // Kept to send the request again after a failure that lost it: only an idempotent,
    // bodiless request is ever sent twice.
    let spare_headers = (retryable || kerberos_replay.is_some()).then(|| headers.clone());
    let build = |headers: http::HeaderMap, body: RequestBody| {
        let mut request = Request::new(body);
        *request.method_mut() = parts.method.clone();
        *request.uri_mut() = target.clone();
        *request.version_mut() = Version::HTTP_11;
        *request.headers_mut() = headers;
        request
    };
    let mut pending = Some(build(headers, body));
    let owner = match kerberos {
        Some(sign_in) => Some(&sign_in.user),
        None => downstream.owner.as_ref(),
    };
    // A fresh ticket after a refused one, once per request.
    let mut renewed = false;
    let mut tried: u64 = 0;
    let mut last_error = GatewayError::NoHealthyServer;
    let mut last_server = None;
    let attempts = pool.len().min(64);
    'servers: for _ in 0..attempts.max(1) {
        let Some(index) = pool.pick(tried) else { break };
        tried |= 1 << index;
        let Some(server) = pool.server(index) else {
            break;
        };
        let label = server.label.clone();
        let spn = kerberos.map(|_| limits.kerberos_spn_for(&server.server));
        let signer = kerberos.zip(spn.as_deref());
        // After a reused connection failed: a new one to the same server, once.
        let mut fresh = false;
        loop {
            let request = match pending.take() {
                Some(request) => request,
                None => match &spare_headers {
                    Some(headers) => build(headers.clone(), RequestBody::empty()),
                    None => break 'servers,
                },
            };
            let sent = until_idle(
                attempt(pool, index, owner, fresh, signer, request),
                limits.idle_timeout,
                progress.as_deref(),
            )
            .await;
            let Ok(sent) = sent else {
                return Err(ForwardError {
                    error: GatewayError::UpstreamTimeout,
                    server: Some(label),
                });
            };
            match sent {
                Attempt::ConnectFailed { error, request } => {
                    // Nothing was sent: the request goes to the next server as it is.
                    pool.mark_unreachable(index);
                    last_error = GatewayError::UpstreamConnect(error_chain(&error));
                    last_server = Some(label);
                    pending = Some(request);
                    continue 'servers;
                }
                Attempt::Failed {
                    error,
                    unsent,
                    reused,
                } => {
                    // A reused keep-alive connection that the server closed while it was idle
                    // is the common cause: the same server on a new connection, once.
                    let again = reused && !fresh;
                    match unsent {
                        // Never written: safe to send anywhere, whatever the method.
                        Some(request) => {
                            pending = Some(request);
                            if again {
                                fresh = true;
                                continue;
                            }
                        }
                        // A request that got no response head may be sent again only when it
                        // is idempotent and bodiless (RFC 9110 section 9.2.2). Anything else
                        // might have been acted on and is answered with the error.
                        None if !retryable => {
                            return Err(ForwardError {
                                error: classify_send_error(&error),
                                server: Some(label),
                            });
                        }
                        None if again => {
                            fresh = true;
                            continue;
                        }
                        None => {}
                    }
                    last_error = classify_send_error(&error);
                    last_server = Some(label);
                    continue 'servers;
                }
                Attempt::NoTicket(error) => {
                    // Never sent without a ticket: Exchange would answer 401, or, on a
                    // connection another request of this user signed in, serve it unchecked.
                    return Err(ForwardError {
                        error: GatewayError::Kerberos(error),
                        server: Some(label),
                    });
                }
                Attempt::Answered {
                    mut response,
                    lease,
                    token,
                } => {
                    if let (Some(sign_in), Some(token)) = (kerberos, token) {
                        if response.status() == StatusCode::UNAUTHORIZED
                            && !refuses_ticket(&response)
                        {
                            // Not a Kerberos refusal: Windows authentication is off on this
                            // virtual directory (Basic or forms only). A new ticket changes
                            // nothing, and Exchange's own challenge is not for the browser.
                            sign_in.engine.count_failure(KerberosReason::TicketRefused);
                            return Err(ForwardError {
                                error: GatewayError::Kerberos(KerberosError::new(
                                    KerberosReason::TicketRefused,
                                    "Exchange answered 401 without offering Negotiate: Windows authentication is not enabled on this virtual directory".to_owned(),
                                )),
                                server: Some(label),
                            });
                        }
                        if refuses_ticket(&response) {
                            // The ticket expired or was revoked on Exchange's side: the user's
                            // cached credential goes, and the request is sent once more, on a
                            // new connection, with a ticket fresh from the KDC.
                            drop((response, lease));
                            sign_in.engine.forget(&sign_in.user).await;
                            match (&kerberos_replay, &spare_headers) {
                                (Some(body), Some(headers)) if !renewed => {
                                    renewed = true;
                                    fresh = true;
                                    let body = match body {
                                        Some(bytes) => RequestBody::read(bytes.clone()),
                                        None => RequestBody::empty(),
                                    };
                                    pending = Some(build(headers.clone(), body));
                                    continue;
                                }
                                _ => {
                                    let detail = if renewed {
                                        "Exchange answered 401 Negotiate to a token, and again to one from a fresh ticket"
                                    } else {
                                        "Exchange answered 401 Negotiate to a token, and the request's streamed body cannot be sent again"
                                    };
                                    sign_in.engine.count_failure(KerberosReason::TicketRefused);
                                    return Err(ForwardError {
                                        error: GatewayError::Kerberos(KerberosError::new(
                                            KerberosReason::TicketRefused,
                                            detail.to_owned(),
                                        )),
                                        server: Some(label),
                                    });
                                }
                            }
                        }
                        if let Err(error) =
                            mutual_authentication(&sign_in.engine, token, &mut response).await
                        {
                            // The lease goes with the response: that connection is closed.
                            return Err(ForwardError {
                                error: GatewayError::Kerberos(error),
                                server: Some(label),
                            });
                        }
                    }
                    return answered(
                        response,
                        lease,
                        label,
                        pool,
                        proto,
                        &public_host,
                        &websocket_key,
                        downstream_upgrade,
                        limits.idle_timeout,
                    );
                }
            }
        }
    }
    Err(ForwardError {
        error: last_error,
        server: last_server,
    })
}

/// What became of one try of a request on one connection.
enum Attempt {
    /// No connection could be made (TCP or TLS); the request is untouched.
    ConnectFailed {
        error: connections::ConnectError,
        request: Request<RequestBody>,
    },
    /// The connection failed before a response head. `unsent`: the request was never
    /// written, and comes back.
    Failed {
        error: hyper::Error,
        unsent: Option<Request<RequestBody>>,
        reused: bool,
    },
    /// No Kerberos ticket for the user: nothing was sent.
    NoTicket(KerberosError),
    Answered {
        response: Response<Incoming>,
        lease: Lease,
        /// The Kerberos token the request carried, to check Exchange's answer with.
        token: Option<NegotiateToken>,
    },
}

async fn attempt(
    pool: &UpstreamPool,
    index: usize,
    owner: Option<&Arc<str>>,
    fresh: bool,
    kerberos: Option<(&KerberosSignIn, &str)>,
    mut request: Request<RequestBody>,
) -> Attempt {
    let mut lease = match pool.checkout(index, owner, fresh).await {
        Ok(lease) => lease,
        Err(error) => return Attempt::ConnectFailed { error, request },
    };
    let token = match kerberos {
        None => None,
        Some((sign_in, spn)) => match sign_token(sign_in, spn, &lease).await {
            Ok(token) => {
                request
                    .headers_mut()
                    .insert(AUTHORIZATION, token.authorization());
                Some(token)
            }
            Err(error) => return Attempt::NoTicket(error),
        },
    };
    match lease.send(request).await {
        Ok(response) => Attempt::Answered {
            response,
            lease,
            token,
        },
        Err(mut failure) => Attempt::Failed {
            unsent: failure.take_message(),
            error: failure.into_error(),
            reused: lease.reused(),
        },
    }
}

/// A token for one try of a request, bound to the TLS connection it goes over (Extended
/// Protection: the hash of the certificate the server presented on it). A new token each try:
/// Exchange refuses an authenticator it has seen.
async fn sign_token(
    sign_in: &KerberosSignIn,
    spn: &str,
    lease: &Lease,
) -> Result<NegotiateToken, KerberosError> {
    // Validation allows sso = "kerberos" only towards https:// servers; without a certificate
    // there is nothing to bind to, and no token goes out.
    let Some(certificate) = lease.server_certificate() else {
        return Err(KerberosError::new(
            KerberosReason::Internal,
            "the connection to Exchange has no TLS server certificate to bind the token to"
                .to_owned(),
        ));
    };
    let binding = ChannelBinding::tls_server_end_point(certificate)
        .map_err(|e| KerberosError::new(KerberosReason::Internal, e))?;
    sign_in
        .engine
        .token_for(&sign_in.user, spn, Some(&binding))
        .await
}

/// Whether Exchange refused the request's token: `401` offering Negotiate again.
fn refuses_ticket<B>(response: &Response<B>) -> bool {
    response.status() == StatusCode::UNAUTHORIZED
        && response
            .headers()
            .get_all(WWW_AUTHENTICATE)
            .iter()
            .any(|value| is_negotiate(value.as_bytes()))
}

fn is_negotiate(value: &[u8]) -> bool {
    value.len() >= 9
        && value[..9].eq_ignore_ascii_case(b"negotiate")
        && value.get(9).is_none_or(|b| *b == b' ')
}

/// Exchange's answer to a request that carried a token must prove it comes from the holder of
/// the SPN's key (`WWW-Authenticate: Negotiate <token>`); the header is then removed, so the
/// browser is never offered a Windows sign-in of its own.
async fn mutual_authentication(
    engine: &KerberosSso,
    token: NegotiateToken,
    response: &mut Response<Incoming>,
) -> Result<(), KerberosError> {
    let reply = response
        .headers()
        .get_all(WWW_AUTHENTICATE)
        .iter()
        .find(|value| is_negotiate(value.as_bytes()) && value.len() > 10)
        .cloned();
    let verified = match reply {
        Some(reply) => engine.verify_reply(token, &reply).await,
        None => {
            engine.count_failure(KerberosReason::MutualAuthFailed);
            Err(KerberosError::new(
                KerberosReason::MutualAuthFailed,
                format!(
                    "Exchange answered {} without a Negotiate token",
                    response.status().as_u16()
                ),
            ))
        }
    };
    let others: Vec<HeaderValue> = response
        .headers()
        .get_all(WWW_AUTHENTICATE)
        .iter()
        .filter(|value| !is_negotiate(value.as_bytes()))
        .cloned()
        .collect();
    response.headers_mut().remove(WWW_AUTHENTICATE);
    for value in others {
        response.headers_mut().append(WWW_AUTHENTICATE, value);
    }
    verified
}

/// Exchange's response head arrived: a WebSocket switch, a refused switch, or a response whose
/// body streams to the browser on the lent connection.
#[allow(clippy::too_many_arguments)]
fn answered(
    response: Response<Incoming>,
    lease: Lease,
    label: Arc<str>,
    pool: &UpstreamPool,
    proto: &str,
    public_host: &HeaderValue,
    websocket_key: &Option<HeaderValue>,
    downstream_upgrade: Option<hyper::upgrade::OnUpgrade>,
    idle_timeout: Duration,
) -> Result<Forwarded, ForwardError> {
    let switched = response.status() == StatusCode::SWITCHING_PROTOCOLS;
    let response = match (downstream_upgrade, websocket_key) {
        (Some(client_side), Some(key)) if switched => {
            if !websocket::handshake_accepted(key, response.headers()) {
                return Err(ForwardError {
                    error: GatewayError::UpstreamProtocol(
                        "101 without a valid WebSocket handshake".into(),
                    ),
                    server: Some(label),
                });
            }
            bridge_upgrade(response, client_side, lease)
        }
        _ if switched => {
            // Never a tunnel nobody asked for: past a 101 the gateway would relay whatever the
            // browser sends, unrouted and unchecked.
            return Err(ForwardError {
                error: GatewayError::UpstreamProtocol(
                    "101 Switching Protocols without an allowed upgrade".into(),
                ),
                server: Some(label),
            });
        }
        _ => {
            let mut response = pass_response(response, lease, idle_timeout);
            rewrite_location(response.headers_mut(), pool, proto, public_host);
            response
        }
    };
    Ok(Forwarded {
        response,
        server: label,
    })
}

/// Waits for Exchange's response head, giving up after `idle` without progress: no response
/// and, while the browser's body is being uploaded, no upload bytes either. A 1 GiB upload that
/// keeps moving is never cut; a server that stopped answering is.
async fn until_idle<F: std::future::Future>(
    response: F,
    idle: Duration,
    upload_progress: Option<&AtomicU64>,
) -> Result<F::Output, ()> {
    tokio::pin!(response);
    let mut seen = upload_progress.map_or(0, |p| p.load(Ordering::Relaxed));
    loop {
        match tokio::time::timeout(idle, response.as_mut()).await {
            Ok(output) => return Ok(output),
            Err(_) => {
                let now = upload_progress.map_or(0, |p| p.load(Ordering::Relaxed));
                if now == seen {
                    return Err(());
                }
                seen = now;
            }
        }
    }
}

/// Exchange redirecting to one of its own server names (`https://ex01.corp.contoso.com/owa/`)
/// would send the browser to an address it cannot reach: such a `Location` is rewritten to the
/// published host. Redirects to any other host — outlook.office.com for mailboxes already
/// moved to Exchange Online in a hybrid organisation — pass untouched.
fn rewrite_location(
    headers: &mut http::HeaderMap,
    pool: &UpstreamPool,
    proto: &str,
    public_host: &HeaderValue,
) {
    let Some(location) = headers
        .get(http::header::LOCATION)
        .and_then(|v| v.to_str().ok())
    else {
        return;
    };
    let Ok(uri) = location.parse::<Uri>() else {
        return;
    };
    let (Some(authority), Some(scheme)) = (uri.authority(), uri.scheme_str()) else {
        return; // relative: already on the published host
    };
    let Ok(public_host_text) = public_host.to_str() else {
        return;
    };
    let internal = pool.is_server_authority(authority, scheme);
    // IIS builds its own redirects (`/owa` → `/owa/`) from the Host header but with the scheme
    // it was reached by: behind TLS offload that is http, which would downgrade the browser.
    let downgrade = proto == "https"
        && scheme.eq_ignore_ascii_case("http")
        && authority
            .host()
            .eq_ignore_ascii_case(crate::routing::host_without_port(public_host_text));
    if !internal && !downgrade {
        return;
    }
    let rest = uri.path_and_query().map_or("/", |pq| pq.as_str());
    if let Ok(value) = HeaderValue::from_str(&format!("{proto}://{public_host_text}{rest}")) {
        headers.insert(http::header::LOCATION, value);
    }
}

fn pass_response(
    response: Response<Incoming>,
    lease: Lease,
    idle_timeout: std::time::Duration,
) -> Response<ResponseBody> {
    let (mut parts, body) = response.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers);
    Response::from_parts(
        parts,
        ResponseBody::upstream(body, idle_timeout, Some(lease)),
    )
}

/// Exchange agreed to switch to WebSocket: answer the browser with the same 101 and relay
/// frames between the two upgraded connections.
fn bridge_upgrade(
    mut response: Response<Incoming>,
    client_side: hyper::upgrade::OnUpgrade,
    lease: Lease,
) -> Response<ResponseBody> {
    let reserved_bits = websocket::allowed_reserved_bits(response.headers());
    let server_side = hyper::upgrade::on(&mut response);
    tokio::spawn(async move {
        let joined = tokio::try_join!(client_side, server_side);
        // The connection now belongs to the relay, never to the pool.
        drop(lease);
        let (client, server) = match joined {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(error = %e, "protocol upgrade did not complete");
                return;
            }
        };
        websocket::relay(TokioIo::new(client), TokioIo::new(server), reserved_bits).await;
    });
    let (parts, _) = response.into_parts();
    Response::from_parts(parts, ResponseBody::empty())
}

/// A failed exchange with Exchange after the connection was made. The browser's own body can
/// be the cause (too large, or its connection dropped mid-upload): that is the browser's side,
/// not Exchange's, and must be answered and logged as such.
fn classify_send_error(error: &hyper::Error) -> GatewayError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(error);
    while let Some(cause) = source {
        if let Some(body_error) = cause.downcast_ref::<BodyError>() {
            return match body_error {
                BodyError::TooLarge => GatewayError::BodyTooLarge,
                BodyError::Downstream(e) => GatewayError::DownstreamAborted(e.clone()),
                BodyError::Stalled => GatewayError::BodyTimeout,
                BodyError::Upstream(e) => GatewayError::UpstreamProtocol(e.clone()),
            };
        }
        source = cause.source();
    }
    GatewayError::UpstreamProtocol(error_chain(error))
}

fn content_length<B>(request: &Request<B>) -> Option<u64> {
    request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// The error and its causes on one line ("tcp connect error: Connection refused (os error
/// 111)"), for the log only: pages never show it.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, challenges: &[&'static str]) -> Response<()> {
        let mut response = Response::new(());
        *response.status_mut() = StatusCode::from_u16(status).expect("a status");
        for challenge in challenges {
            response
                .headers_mut()
                .append(WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
        }
        response
    }

    #[test]
    fn only_a_401_offering_negotiate_refuses_a_kerberos_ticket() {
        assert!(refuses_ticket(&answer(401, &["Negotiate"])));
        assert!(refuses_ticket(&answer(401, &["NTLM", "negotiate"])));
        assert!(refuses_ticket(&answer(
            401,
            &["Negotiate oYGfMIGcoAMKAQ=="]
        )));
        assert!(!refuses_ticket(&answer(401, &["Basic realm=\"mail\""])));
        assert!(!refuses_ticket(&answer(401, &["NegotiateX"])));
        assert!(!refuses_ticket(&answer(401, &[])));
        assert!(!refuses_ticket(&answer(
            200,
            &["Negotiate oYGfMIGcoAMKAQ=="]
        )));
    }
}
