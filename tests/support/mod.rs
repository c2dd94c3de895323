//! Test fixtures shared by the integration tests: a private certificate authority, a fake
//! Exchange server that records every request it receives, the gateway started in-process on
//! 127.0.0.1:0 or as the real binary, and clients that trust the test CA.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mfa_gateway::config::{Config, SystemSecrets};
use mfa_gateway::{Gateway, Listeners};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

pub type TestBody = BoxBody<Bytes, std::io::Error>;
pub type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;
pub type Handler = Arc<dyn Fn(Request<Incoming>) -> BoxFuture<Response<TestBody>> + Send + Sync>;

pub fn init() {
    mfa_gateway::install_crypto_provider();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TEST_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

pub fn full(body: impl Into<Bytes>) -> TestBody {
    Full::new(body.into())
        .map_err(|never| match never {})
        .boxed()
}

// ---------------------------------------------------------------------------------------------
// Certificates

/// A private CA writing PEM files into its own temporary directory.
pub struct TestPki {
    dir: tempfile::TempDir,
    issuer: Issuer<'static, KeyPair>,
    ca_pem: String,
    counter: AtomicUsize,
}

/// Paths of an issued certificate and its key.
#[derive(Clone, Debug)]
pub struct IssuedCert {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub der: Vec<u8>,
}

impl TestPki {
    pub fn new() -> TestPki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "mfa-gateway test CA");
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let ca_pem = cert.pem();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), &ca_pem).unwrap();
        TestPki {
            dir,
            issuer: Issuer::new(params, key),
            ca_pem,
            counter: AtomicUsize::new(0),
        }
    }

    pub fn ca_path(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A server certificate for `names` (DNS names or IP addresses), signed by the CA.
    pub fn issue(&self, names: &[&str]) -> IssuedCert {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, names.first().copied().unwrap_or("test"));
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let cert_path = self.dir.path().join(format!("cert{n}.pem"));
        let key_path = self.dir.path().join(format!("cert{n}.key"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        IssuedCert {
            cert: cert_path,
            key: key_path,
            der: cert.der().to_vec(),
        }
    }

    pub fn rustls_client_config(&self, alpn: &[&[u8]]) -> rustls::ClientConfig {
        let mut roots = rustls::RootCertStore::empty();
        let der = rustls_pki_types::CertificateDer::from_pem_slice(self.ca_pem.as_bytes()).unwrap();
        roots.add(der).unwrap();
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        config
    }
}

use rustls_pki_types::pem::PemObject;

// ---------------------------------------------------------------------------------------------
// Fake Exchange

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
    /// port are refused.
    pub async fn kill(&mut self) {
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
        let listener = TcpListener::bind(self.addr.unwrap_or(([127, 0, 0, 1], 0).into()))
            .await
            .unwrap();
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
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The gateway

/// The gateway running in this test process on 127.0.0.1:0 listeners.
pub struct TestGateway {
    pub gateway: Option<Gateway>,
    pub https: Option<SocketAddr>,
    pub http: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
}

impl TestGateway {
    /// Starts the gateway from TOML. The `[server]` listen addresses in the text are ignored:
    /// listeners are bound to 127.0.0.1:0 — HTTPS when the config has certificates, HTTP when
    /// it sets `http_listen`, admin when it sets `admin_listen`.
    pub async fn start(toml: &str) -> TestGateway {
        init();
        let config = Config::from_toml(toml, &SystemSecrets)
            .unwrap_or_else(|e| panic!("test configuration is invalid:\n{e}"));
        let loopback = || async { Some(TcpListener::bind("127.0.0.1:0").await.unwrap()) };
        let listeners = Listeners {
            https: if config.server.https_listen.is_some() {
                loopback().await
            } else {
                None
            },
            http: if config.server.http_listen.is_some() {
                loopback().await
            } else {
                None
            },
            admin: if config.server.admin_listen.is_some() {
                loopback().await
            } else {
                None
            },
        };
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let gateway = Gateway::start(config, listeners, async move {
            let _ = stop_rx.await;
        })
        .await
        .unwrap_or_else(|e| panic!("gateway did not start: {e}"));
        TestGateway {
            https: gateway.https_addr,
            http: gateway.http_addr,
            admin: gateway.admin_addr,
            gateway: Some(gateway),
            stop: Some(stop_tx),
        }
    }

    pub fn gateway(&self) -> &Gateway {
        self.gateway.as_ref().unwrap()
    }

    /// Begins the drain and waits for it to finish.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(gateway) = self.gateway.take() {
            gateway.wait().await;
        }
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A TCP port free right now on 127.0.0.1 (for configurations given to the binary).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The real `mfa-gateway` binary started with a configuration file; killed on drop.
pub struct GatewayProcess {
    pub child: Child,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
}

impl GatewayProcess {
    /// Writes `toml` to `dir/gateway.toml`, starts `mfa-gateway run`, and waits until
    /// `GET http://{probe}` answers (any status).
    pub async fn spawn(dir: &Path, toml: &str, probe: &str) -> GatewayProcess {
        let config_path = dir.join("gateway.toml");
        std::fs::write(&config_path, toml).unwrap();
        let log_path = dir.join("gateway.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_mfa-gateway"))
            .arg("run")
            .arg("--config")
            .arg(&config_path)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let process = GatewayProcess {
            child,
            config_path,
            log_path,
        };
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        for _ in 0..200 {
            if client.get(format!("http://{probe}")).send().await.is_ok() {
                return process;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("gateway did not come up; log:\n{}", process.log());
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Sends a signal by name (`TERM`, `HUP`) with kill(1).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{name} failed");
    }

    /// Resident set size now, in KiB (VmRSS of /proc/PID/status).
    pub fn rss_kib(&self) -> u64 {
        proc_status_kib(self.pid(), "VmRSS:")
    }

    /// Peak resident set size so far, in KiB (VmHWM).
    pub fn peak_rss_kib(&self) -> u64 {
        proc_status_kib(self.pid(), "VmHWM:")
    }

    /// Waits up to `limit` for the process to exit and returns its status.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{field} not found for {pid}"))
}

// ---------------------------------------------------------------------------------------------
// Clients

/// A reqwest client trusting the test CA, resolving `hosts` to `addr`, never following
/// redirects. `http2` forces HTTP/2 (over TLS via ALPN); otherwise HTTP/1.1 only.
pub fn client(pki: &TestPki, hosts: &[&str], addr: SocketAddr, http2: bool) -> reqwest::Client {
    let tls = pki.rustls_client_config(if http2 { &[b"h2"] } else { &[b"http/1.1"] });
    let mut builder = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30));
    for host in hosts {
        builder = builder.resolve(host, addr);
    }
    builder = if http2 {
        builder.http2_prior_knowledge()
    } else {
        builder.http1_only()
    };
    builder.build().unwrap()
}

/// A plain-HTTP client (no TLS), never following redirects.
pub fn plain_client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}
