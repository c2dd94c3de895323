//! Accepting browser connections: a connection cap shared by the public listeners, a deadline
//! on the TLS handshake, HTTP/1.1 and HTTP/2 served by hyper, and a drain signal that lets each
//! connection finish its request in flight before closing.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{request, Shared};

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
    let builder = snapshot.http.clone();
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
            serve_http(TokioIo::new(stream), peer, true, shared, builder, drain).await;
        }
        None => serve_http(TokioIo::new(stream), peer, false, shared, builder, drain).await,
    }
}

async fn serve_http<I>(
    io: I,
    peer: SocketAddr,
    tls: bool,
    shared: Arc<Shared>,
    builder: Arc<hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>>,
    drain: CancellationToken,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = service_fn(move |req| {
        let shared = shared.clone();
        async move { Ok::<_, std::convert::Infallible>(request::handle(req, peer, tls, &shared).await) }
    });
    let connection = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        _ = drain.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

struct ClosedGuard(Arc<Shared>);

impl Drop for ClosedGuard {
    fn drop(&mut self) {
        self.0.metrics.connection_closed();
    }
}
