//! Accepting browser connections: a connection cap shared by the public listeners, a deadline
//! on the TLS handshake, HTTP/1.1 and HTTP/2 served by hyper, and a drain signal that lets each
//! connection finish its request in flight before closing.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{request, HttpBuilders, Shared};

pub(super) async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    shared: Arc<Shared>,
    limit: Arc<Semaphore>,
    drain: CancellationToken,
    connections: TaskTracker,
) {
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
    let snapshot = shared.snapshot.load_full();
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

async fn serve_http<I>(
    io: I,
    peer: SocketAddr,
    protocol: Protocol,
    first_request_timeout: Duration,
    shared: Arc<Shared>,
    builders: Arc<HttpBuilders>,
    drain: CancellationToken,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let tls = !matches!(protocol, Protocol::Sniffed);
    let peer_text = crate::proxy::headers::address_text(peer.ip());
    let used = Arc::new(AtomicBool::new(false));
    let watch = Watch {
        used: used.clone(),
        first_request_timeout,
        drain,
        peer,
    };
    let service = service_fn(move |req| {
        used.store(true, Ordering::Relaxed);
        let shared = shared.clone();
        let peer_text = peer_text.clone();
        // Boxed: hyper keeps room for the service's future in every connection for as long as
        // it lives; a box takes that memory only while a request is in flight.
        Box::pin(async move {
            Ok::<_, std::convert::Infallible>(
                request::handle(req, peer, &peer_text, tls, &shared).await,
            )
        })
    });
    match protocol {
        Protocol::Http1 => {
            let connection = builders.http1.serve_connection(io, service).with_upgrades();
            watch.drive(connection, |c| c.graceful_shutdown()).await;
        }
        Protocol::Http2 => {
            let connection = builders.http2.serve_connection(io, service);
            watch.drive(connection, |c| c.graceful_shutdown()).await;
        }
        Protocol::Sniffed => {
            let connection = builders.auto.serve_connection_with_upgrades(io, service);
            watch.drive(connection, |c| c.graceful_shutdown()).await;
        }
    }
}

/// What a connection is watched for besides its own protocol timers.
struct Watch {
    /// Set when the connection brings its first request.
    used: Arc<AtomicBool>,
    /// `server.header_read_timeout`: how long a connection may stay without any request.
    /// hyper enforces it for HTTP/1.1 heads; an HTTP/2 client that negotiated `h2` and then
    /// never sends its connection preface would otherwise hold its slot for ever.
    first_request_timeout: Duration,
    drain: CancellationToken,
    peer: SocketAddr,
}

impl Watch {
    /// Runs a connection to its end. On drain, a connection that has brought no request is
    /// closed at once; any other is asked to finish the request in flight and close.
    async fn drive<C, E>(self, connection: C, graceful_shutdown: impl FnOnce(Pin<&mut C>))
    where
        C: Future<Output = Result<(), E>>,
        E: std::fmt::Display,
    {
        tokio::pin!(connection);
        let first_request = tokio::time::sleep(self.first_request_timeout);
        tokio::pin!(first_request);
        let unused = || !self.used.load(Ordering::Relaxed);
        let result = loop {
            tokio::select! {
                result = connection.as_mut() => break result,
                _ = self.drain.cancelled() => {
                    if unused() {
                        return;
                    }
                    graceful_shutdown(connection.as_mut());
                    break connection.await;
                }
                _ = first_request.as_mut(), if unused() => {
                    // Checked again: a request may have come while the timer ran out.
                    if unused() {
                        tracing::debug!(peer = %self.peer, "no request within header_read_timeout");
                        return;
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
