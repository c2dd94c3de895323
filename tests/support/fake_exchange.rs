//! A fake Exchange server, built like `FakeExchange::builder("ex01").tls(cert).handler(…)
//! .start()`: plain HTTP or TLS, HTTP/1.1 and HTTP/2, recording every request it receives,
//! answering the load balancer's `/owa/healthcheck.htm` probe while healthy, and killable and
//! restartable on the same address to stand for a server that crashes and comes back.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::pem::PemObject;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::oneshot;

use super::pki::IssuedCert;
use super::ports::ReservedPort;
use super::wait::wait_for;

pub type TestBody = BoxBody<Bytes, std::io::Error>;
pub type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;
pub type Handler = Arc<dyn Fn(Request<Incoming>) -> BoxFuture<Response<TestBody>> + Send + Sync>;

pub fn full(body: impl Into<Bytes>) -> TestBody {
    Full::new(body.into())
        .map_err(|never| match never {})
        .boxed()
}

/// What the fake Exchange saw of one request.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: Method,
    pub uri: String,
    pub version: http::Version,
    pub headers: HeaderMap,
}

/// An HTTP(S) server standing in for one Exchange server. It records every request, answers
/// `/owa/healthcheck.htm` with 200 while healthy (503 otherwise), and everything else with the
/// handler (by default 200 with body `"<name> <path>"` and header `x-served-by: <name>`).
pub struct FakeExchange {
    pub name: String,
    pub addr: SocketAddr,
    pub tls: bool,
    requests: Arc<Mutex<Vec<Recorded>>>,
    healthy: Arc<AtomicBool>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    /// Once killed: the port, kept from anyone else until a new server starts on it.
    reserved: Option<ReservedPort>,
}

pub struct FakeExchangeBuilder {
    name: String,
    tls: Option<IssuedCert>,
    handler: Option<Handler>,
    addr: Option<SocketAddr>,
}

impl FakeExchange {
    pub fn builder(name: &str) -> FakeExchangeBuilder {
        FakeExchangeBuilder {
            name: name.to_owned(),
            tls: None,
            handler: None,
            addr: None,
        }
    }

    /// `http://127.0.0.1:PORT` or `https://…`, for `servers = [...]`.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }

    /// Requests other than health probes.
    pub fn user_requests(&self) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| !r.uri.ends_with("/healthcheck.htm"))
            .collect()
    }

    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::SeqCst);
    }

    /// Stops accepting and closes every connection: the server is gone, connections to its
    /// port are refused. The port stays reserved for this server while it is kept (not
    /// dropped), so `FakeExchange::builder(…).addr(killed.addr)` brings it back there.
    pub async fn kill(&mut self) {
        if self.reserved.is_none() {
            // Taken beside the listener (both set SO_REUSEPORT) before it closes: the port is
            // never free in between.
            self.reserved = ReservedPort::hold(self.addr).ok();
        }
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for FakeExchange {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// A listener that shares its address with a port reservation (`SO_REUSEPORT`), so a killed
/// server can hold its port and a restarted one can take it back.
fn bind_listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

impl FakeExchangeBuilder {
    pub fn tls(mut self, cert: IssuedCert) -> Self {
        self.tls = Some(cert);
        self
    }

    /// Listen on this address (to bring a killed server back on the same port).
    pub fn addr(mut self, addr: SocketAddr) -> Self {
        self.addr = Some(addr);
        self
    }

    pub fn handler<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Response<TestBody>> + Send + 'static,
    {
        self.handler = Some(Arc::new(move |req| Box::pin(f(req))));
        self
    }

    pub async fn start(self) -> FakeExchange {
        let listener = match self.addr {
            None => bind_listener(([127, 0, 0, 1], 0).into()).unwrap(),
            // The address of a server that is gone: something outside this test may hold the
            // port for a moment (a connection still closing); try again until it is free.
            Some(addr) => {
                let mut last_error = None;
                wait_for(Duration::from_secs(5), || {
                    let bound = bind_listener(addr).map_err(|e| last_error = Some(e)).ok();
                    async move { bound }
                })
                .await
                .unwrap_or_else(|| panic!("cannot listen on {addr} again: {last_error:?}"))
            }
        };
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let healthy = Arc::new(AtomicBool::new(true));
        let name = self.name.clone();
        let handler: Handler = self.handler.unwrap_or_else(|| {
            let name = name.clone();
            Arc::new(move |req: Request<Incoming>| {
                let name = name.clone();
                Box::pin(async move {
                    let body = format!("{name} {}", req.uri().path());
                    Response::builder()
                        .header("x-served-by", name)
                        .body(full(body))
                        .unwrap()
                })
            })
        });
        let acceptor = self.tls.as_ref().map(|cert| {
            let chain = rustls_pki_types::CertificateDer::pem_file_iter(&cert.cert)
                .unwrap()
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key = rustls_pki_types::PrivateKeyDer::from_pem_file(&cert.key).unwrap();
            let config = rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
            tokio_rustls::TlsAcceptor::from(Arc::new(config))
        });
        let (stop_tx, mut stop_rx) = oneshot::channel::<()>();
        let task = {
            let requests = requests.clone();
            let healthy = healthy.clone();
            tokio::spawn(async move {
                let mut connections = tokio::task::JoinSet::new();
                loop {
                    let (stream, _) = tokio::select! {
                        accepted = listener.accept() => match accepted {
                            Ok(pair) => pair,
                            Err(_) => continue,
                        },
                        _ = &mut stop_rx => break,
                    };
                    let requests = requests.clone();
                    let healthy = healthy.clone();
                    let handler = handler.clone();
                    let acceptor = acceptor.clone();
                    connections.spawn(async move {
                        let service = service_fn(move |req: Request<Incoming>| {
                            let requests = requests.clone();
                            let healthy = healthy.clone();
                            let handler = handler.clone();
                            async move {
                                requests.lock().unwrap().push(Recorded {
                                    method: req.method().clone(),
                                    uri: req.uri().to_string(),
                                    version: req.version(),
                                    headers: req.headers().clone(),
                                });
                                if req.uri().path().ends_with("/healthcheck.htm") {
                                    let status = if healthy.load(Ordering::SeqCst) {
                                        StatusCode::OK
                                    } else {
                                        StatusCode::SERVICE_UNAVAILABLE
                                    };
                                    return Ok::<_, Infallible>(
                                        Response::builder()
                                            .status(status)
                                            .body(full("<html><body>200 OK</body></html>"))
                                            .unwrap(),
                                    );
                                }
                                Ok(handler(req).await)
                            }
                        });
                        let builder =
                            hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                        match acceptor {
                            Some(acceptor) => {
                                if let Ok(tls) = acceptor.accept(stream).await {
                                    let _ = builder
                                        .serve_connection_with_upgrades(TokioIo::new(tls), service)
                                        .await;
                                }
                            }
                            None => {
                                let _ = builder
                                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                                    .await;
                            }
                        }
                    });
                }
                // Dropping the listener and aborting connections: the server is gone.
                drop(listener);
                connections.shutdown().await;
            })
        };
        FakeExchange {
            name: self.name,
            addr,
            tls: self.tls.is_some(),
            requests,
            healthy,
            stop: Some(stop_tx),
            task: Some(task),
            reserved: None,
        }
    }
}
