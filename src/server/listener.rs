//! Accepting browser connections: a connection cap shared by the public listeners, a deadline
//! on the TLS handshake, HTTP/1.1 and HTTP/2 served by hyper, and a drain signal that lets each
//! connection finish its request in flight before closing.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Connection, HttpBuilders, Shared};
use crate::pipeline;

/// What every accept loop and connection of a gateway shares.
#[derive(Clone)]
pub(super) struct Serve {
    pub(super) shared: Arc<Shared>,
    /// `max_connections`, over every public listener and worker: a slot per connection.
    pub(super) limit: Arc<Semaphore>,
    pub(super) drain: CancellationToken,
    pub(super) connections: TaskTracker,
    pub(super) acceptors: TaskTracker,
}

impl Serve {
    /// Accepts on `listener` from a task on the current runtime until the drain.
    pub(super) fn accept(&self, listener: TcpListener, tls: Option<TlsAcceptor>) {
        self.acceptors
            .spawn(accept_loop(listener, tls, self.clone()));
    }
}

async fn accept_loop(listener: TcpListener, tls: Option<TlsAcceptor>, serve: Serve) {
    let Serve {
        shared,
        limit,
        drain,
        connections,
        ..
    } = serve;
    loop {
        // Wait for a free slot before accepting: over the limit, new connections queue in the
        // kernel's backlog instead of costing the gateway memory.
        let permit = tokio::select! {
            permit = limit.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
            _ = drain.cancelled() => return,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = drain.cancelled() => return,
        };
        let _ = stream.set_nodelay(true);
        connections.spawn(serve_connection(
            stream,
            peer,
            tls.clone(),
            shared.clone(),
            drain.clone(),
            permit,
        ));
    }
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    shared: Arc<Shared>,
    drain: CancellationToken,
    _permit: OwnedSemaphorePermit,
) {
    shared.metrics.connection_opened();
    let _closed = ClosedGuard(shared.clone());
    let (snapshot, _) = shared.current();
    let builders = snapshot.http.clone();
    let handshake_deadline = snapshot.config.server.header_read_timeout;
    drop(snapshot);

    match tls {
        Some(acceptor) => {
            let stream =
                match tokio::time::timeout(handshake_deadline, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(e)) => {
                        shared.metrics.tls_handshake_failed();
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        shared.metrics.tls_handshake_failed();
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                };
            let protocol = match stream.get_ref().1.alpn_protocol() {
                Some(b"h2") => Protocol::Http2,
                _ => Protocol::Http1,
            };
            serve_http(
                TokioIo::new(stream),
                peer,
                protocol,
                handshake_deadline,
                shared,
                builders,
                drain,
            )
            .await;
        }
        None => {
            serve_http(
                TokioIo::new(stream),
                peer,
                Protocol::Sniffed,
                handshake_deadline,
                shared,
                builders,
                drain,
            )
            .await
        }
    }
}

/// What a connection's requests share.
struct ConnectionContext {
    connection: Connection,
    shared: Arc<Shared>,
}

/// How a connection's HTTP version is known.
#[derive(Clone, Copy)]
enum Protocol {
    /// TLS with ALPN `h2`.
    Http2,
    /// TLS with ALPN `http/1.1`, or none.
    Http1,
    /// Plain HTTP: from the first bytes (HTTP/2 prior knowledge or HTTP/1.1).
    Sniffed,
}

/// The connection served by hyper until it ends, as a boxed future sized for its protocol.
///
/// Boxed, and made outside any `async fn` that holds `io`: unboxed, the connection's task
/// would be as large as the largest of the three protocols (an HTTP/2 connection, and the
/// automatic one holding both) plus the TLS handshake, about 16 KB for every connection, idle or
/// not (docs/performance.md, "Idle connections").
fn serve_http<I>(
    io: I,
    peer: SocketAddr,
    protocol: Protocol,
    idle_timeout: Duration,
    shared: Arc<Shared>,
    builders: Arc<HttpBuilders>,
    drain: CancellationToken,
) -> Pin<Box<dyn Future<Output = ()> + Send>>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::new());
    // One reference-counted context per connection: a request clones it, and that count is
    // written only by the worker serving this connection (never `Arc<Shared>` per request).
    let context = Arc::new(ConnectionContext {
        connection: Connection {
            peer,
            peer_text: crate::proxy::headers::address_text(peer.ip()),
            tls: !matches!(protocol, Protocol::Sniffed),
            gateway_bodies: Arc::new(Semaphore::new(pipeline::MAX_GATEWAY_BODIES_PER_CONNECTION)),
        },
        shared,
    });
    let watch = Watch {
        activity: activity.clone(),
        idle_timeout,
        drain,
        peer,
    };
    let service = service_fn(move |req| {
        let in_flight = activity.begin();
        let context = context.clone();
        // Boxed: hyper keeps room for the service's future in every connection for as long as
        // it lives; a box takes that memory only while a request is in flight.
        Box::pin(async move {
            let mut response = pipeline::handle(req, &context.connection, &context.shared).await;
            // The request counts as in flight until its response body is done or dropped.
            response.body_mut().hold(in_flight);
            // Boxed too: an HTTP/1.1 connection keeps a slot for its response body (over 400
            // bytes with the access record) from its first request to its close; a box takes
            // that memory only while a response is being sent.
            Ok::<_, std::convert::Infallible>(response.map(Box::pin))
        })
    });
    match protocol {
        Protocol::Http1 => {
            let connection = builders.http1.serve_connection(io, service).with_upgrades();
            Box::pin(watch.drive(connection, |c| c.graceful_shutdown()))
        }
        Protocol::Http2 => {
            let connection = builders.http2.serve_connection(io, service);
            Box::pin(watch.drive(connection, |c| c.graceful_shutdown()))
        }
        // The automatic connection borrows its builder: the box holds both.
        Protocol::Sniffed => Box::pin(async move {
            let connection = builders.auto.serve_connection_with_upgrades(io, service);
            watch.drive(connection, |c| c.graceful_shutdown()).await;
        }),
    }
}

/// When a connection last had a request in flight: requests start in the service and end when
/// their response body is finished or dropped.
pub(crate) struct Activity {
    opened: Instant,
    /// Requests begun on this connection.
    begun: AtomicU64,
    in_flight: AtomicU64,
    /// Milliseconds after `opened` when the last request ended.
    last_end_ms: AtomicU64,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            opened: Instant::now(),
            begun: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            last_end_ms: AtomicU64::new(0),
        }
    }

    fn begin(self: &Arc<Activity>) -> InFlight {
        self.begun.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }

    fn unused(&self) -> bool {
        self.begun.load(Ordering::Relaxed) == 0
    }

    /// When the connection became idle; `None` while a request is in flight.
    fn idle_since(&self) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let ms = self.last_end_ms.load(Ordering::Relaxed);
        Some(self.opened + Duration::from_millis(ms))
    }
}

/// One request in flight on a connection; dropping it ends the request.
pub(crate) struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let ms = u64::try_from(self.0.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.0.last_end_ms.store(ms, Ordering::Relaxed);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What a connection is watched for besides its own protocol timers.
struct Watch {
    activity: Arc<Activity>,
    /// `server.header_read_timeout`: how long a connection may stay without a request in
    /// flight — before its first request, and between requests. hyper enforces it for
    /// HTTP/1.1 heads; an HTTP/2 client that never sends its preface, or that made one request
    /// and then only answers pings, would otherwise hold its slot for ever.
    idle_timeout: Duration,
    drain: CancellationToken,
    peer: SocketAddr,
}

impl Watch {
    /// Runs a connection to its end. On drain, a connection that has brought no request is
    /// closed at once; any other is asked to finish the request in flight and close. An idle
    /// connection is asked to close (HTTP/2: GOAWAY) once `idle_timeout` has passed.
    async fn drive<C, E>(self, connection: C, graceful_shutdown: impl Fn(Pin<&mut C>))
    where
        C: Future<Output = Result<(), E>>,
        E: std::fmt::Display,
    {
        tokio::pin!(connection);
        let idle = tokio::time::sleep(self.idle_timeout);
        tokio::pin!(idle);
        // Draining: the request in flight gets up to `shutdown_grace` (the caller's bound).
        // Closing for idleness: a peer that ignores GOAWAY gets one more idle period.
        let (mut draining, mut closing_idle) = (false, false);
        let result = loop {
            tokio::select! {
                result = connection.as_mut() => break result,
                _ = self.drain.cancelled(), if !draining => {
                    if self.activity.unused() {
                        return;
                    }
                    graceful_shutdown(connection.as_mut());
                    draining = true;
                }
                _ = idle.as_mut(), if !draining => {
                    if closing_idle {
                        return;
                    }
                    match self.activity.idle_since() {
                        Some(since) if since.elapsed() >= self.idle_timeout => {
                            if self.activity.unused() {
                                tracing::debug!(peer = %self.peer, "no request within header_read_timeout");
                                return;
                            }
                            tracing::debug!(peer = %self.peer, "idle connection closed");
                            graceful_shutdown(connection.as_mut());
                            closing_idle = true;
                            idle.as_mut().reset(Instant::now() + self.idle_timeout);
                        }
                        Some(since) => idle.as_mut().reset(since + self.idle_timeout),
                        None => idle.as_mut().reset(Instant::now() + self.idle_timeout),
                    }
                }
            }
        };
        if let Err(e) = result {
            tracing::debug!(peer = %self.peer, error = %e, "connection ended with an error");
        }
    }
}

struct ClosedGuard(Arc<Shared>);

impl Drop for ClosedGuard {
    fn drop(&mut self) {
        self.0.metrics.connection_closed();
    }
}
