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
        GatewayProcess::spawn_with_args(dir, toml, probe, &[]).await
    }

    /// [`GatewayProcess::spawn`] with more arguments after `run --config FILE`.
    pub async fn spawn_with_args(
        dir: &Path,
        toml: &str,
        probe: &str,
        args: &[&str],
    ) -> GatewayProcess {
        let config_path = dir.join("gateway.toml");
        std::fs::write(&config_path, toml).unwrap();
        let log_path = dir.join("gateway.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_mfa-gateway"))
            .arg("run")
            .arg("--config")
            .arg(&config_path)
            .args(args)
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

// ---------------------------------------------------------------------------------------------
// Sign-in: a controllable clock, a configuration builder, and a browser that walks the
// redirect to the test OpenID provider, its sign-in form, and the callback back to the gateway.

#[allow(unused_imports)]
pub use sign_in_support::*;

mod sign_in_support {
    use std::collections::BTreeMap;
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use base64::engine::general_purpose::STANDARD;
    use base64::Engine;
    use http::header::{HeaderMap, LOCATION, SET_COOKIE};
    use http::{Method, StatusCode};
    use mfa_gateway::clock::Clock;
    use mfa_gateway::config::{Config, SystemSecrets};
    use mfa_gateway::demo::{
        parse_form_post, sign_in_form, ClientCredential, ProviderOptions, TestProvider,
    };
    use mfa_gateway::{Gateway, Listeners};
    use rand::RngCore;
    use tokio::net::TcpListener;
    use tokio::sync::oneshot;

    use super::{FakeExchange, TestGateway};

    /// The host name the gateway publishes in the sign-in tests.
    pub const MAIL_HOST: &str = "mail.contoso.com";
    /// The gateway's default session cookie name.
    pub const SESSION_COOKIE: &str = "__Host-mfagw";
    /// The application (client) id registered at the test provider.
    pub const CLIENT_ID: &str = "0c1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f";
    pub const CLIENT_SECRET: &str = "tEst~s3cret.value_with-odd+chars/=";

    /// The gateway's clock: the system time plus an offset the test moves forward.
    #[derive(Clone, Default)]
    pub struct TestClock {
        offset: Arc<AtomicU64>,
    }

    impl TestClock {
        pub fn new() -> TestClock {
            TestClock::default()
        }

        pub fn clock(&self) -> Clock {
            let offset = self.offset.clone();
            Clock::from_fn(move || system_now() + offset.load(Ordering::SeqCst))
        }

        pub fn advance(&self, by: Duration) {
            self.offset.fetch_add(by.as_secs(), Ordering::SeqCst);
        }

        /// What the gateway believes the time is.
        pub fn now(&self) -> u64 {
            system_now() + self.offset.load(Ordering::SeqCst)
        }
    }

    pub fn system_now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    /// Base64 of 32 fresh random bytes: a session key as `openssl rand -base64 32` makes one.
    pub fn random_session_key() -> String {
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        STANDARD.encode(bytes)
    }

    /// A test provider with the gateway's client registered with [`CLIENT_SECRET`].
    pub async fn start_provider() -> TestProvider {
        let provider = TestProvider::start(ProviderOptions::default())
            .await
            .expect("test provider starts");
        provider.register_client(CLIENT_ID, ClientCredential::Secret(CLIENT_SECRET.into()));
        provider
    }

    /// A gateway configuration publishing `/owa` (mfa, 440 for scripts), `/ecp` (mfa) and
    /// `/owa/healthcheck.htm` (public) on [`MAIL_HOST`] over plain HTTP. The `*_extra` fields are
    /// TOML lines appended to their section.
    #[derive(Clone)]
    pub struct SignInConfig {
        pub issuer: String,
        pub exchange_url: String,
        /// `client_secret = …` or `client_certificate = …`, and related lines.
        pub client_auth: String,
        pub oidc_extra: String,
        /// The whole `[mfa]` section, or empty for the defaults.
        pub mfa: String,
        pub session_keys: Vec<String>,
        pub session_extra: String,
        pub owa_extra: String,
        pub ecp_extra: String,
    }

    impl SignInConfig {
        pub fn new(provider: &TestProvider, exchange: &FakeExchange) -> SignInConfig {
            SignInConfig {
                issuer: provider.issuer().to_owned(),
                exchange_url: exchange.url(),
                client_auth: format!("client_secret = {{ value = \"{CLIENT_SECRET}\" }}\n"),
                oidc_extra: String::new(),
                mfa: String::new(),
                session_keys: vec![random_session_key()],
                session_extra: String::new(),
                owa_extra: String::new(),
                ecp_extra: String::new(),
            }
        }

        pub fn toml(&self) -> String {
            let keys: Vec<String> = self
                .session_keys
                .iter()
                .map(|k| format!("{{ value = \"{k}\" }}"))
                .collect();
            format!(
                r#"
[server]
http_listen = "127.0.0.1:0"

[oidc]
issuer = "{issuer}"
client_id = "{CLIENT_ID}"
{client_auth}{oidc_extra}
{mfa}

[session]
keys = [{keys}]
{session_extra}

[upstreams.exchange]
servers = ["{exchange}"]
health_check = {{ path = "/owa/healthcheck.htm", interval = "2s", timeout = "1s" }}

[[routes]]
host = "{MAIL_HOST}"
path = "/owa"
upstream = "exchange"
access = "mfa"
unauthenticated_status = 440
{owa_extra}

[[routes]]
host = "{MAIL_HOST}"
path = "/ecp"
upstream = "exchange"
access = "mfa"
{ecp_extra}

[[routes]]
host = "{MAIL_HOST}"
path = "/owa/healthcheck.htm"
upstream = "exchange"
access = "public"
"#,
                issuer = self.issuer,
                client_auth = self.client_auth,
                oidc_extra = self.oidc_extra,
                mfa = self.mfa,
                keys = keys.join(", "),
                session_extra = self.session_extra,
                exchange = self.exchange_url,
                owa_extra = self.owa_extra,
                ecp_extra = self.ecp_extra,
            )
        }
    }

    impl TestGateway {
        /// [`TestGateway::start`] with the gateway reading time from `clock`.
        pub async fn start_with_clock(toml: &str, clock: Clock) -> TestGateway {
            super::init();
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
            let gateway = Gateway::start_with_clock(
                config,
                listeners,
                async move {
                    let _ = stop_rx.await;
                },
                clock,
            )
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

        /// Waits (up to 20 s) until the gateway reports ready: provider metadata and keys
        /// loaded, Exchange healthy.
        pub async fn wait_ready(&self) {
            for _ in 0..400 {
                if self.gateway().is_ready() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!("the gateway did not become ready within 20 s");
        }
    }

    /// One `Set-Cookie` the gateway sent.
    #[derive(Clone, Debug)]
    pub struct SetCookie {
        pub raw: String,
        pub name: String,
        pub value: String,
        attributes: Vec<(String, Option<String>)>,
    }

    impl SetCookie {
        pub fn parse(raw: &str) -> Option<SetCookie> {
            let mut parts = raw.split(';');
            let (name, value) = parts.next()?.split_once('=')?;
            let attributes = parts
                .map(|p| match p.trim().split_once('=') {
                    Some((k, v)) => (k.trim().to_ascii_lowercase(), Some(v.trim().to_owned())),
                    None => (p.trim().to_ascii_lowercase(), None),
                })
                .collect();
            Some(SetCookie {
                raw: raw.to_owned(),
                name: name.trim().to_owned(),
                value: value.trim().to_owned(),
                attributes,
            })
        }

        /// Whether the attribute (any letter case) is present.
        pub fn has(&self, attribute: &str) -> bool {
            let attribute = attribute.to_ascii_lowercase();
            self.attributes.iter().any(|(k, _)| *k == attribute)
        }

        pub fn attribute(&self, attribute: &str) -> Option<&str> {
            let attribute = attribute.to_ascii_lowercase();
            self.attributes
                .iter()
                .find(|(k, _)| *k == attribute)
                .and_then(|(_, v)| v.as_deref())
        }

        pub fn max_age(&self) -> Option<i64> {
            self.attribute("max-age").and_then(|v| v.parse().ok())
        }

        /// A cookie the browser drops at once.
        pub fn is_removal(&self) -> bool {
            self.max_age().is_some_and(|age| age <= 0)
        }
    }

    /// A gateway (or provider) answer, read to the end.
    #[derive(Debug)]
    pub struct Reply {
        pub status: StatusCode,
        pub headers: HeaderMap,
        pub body: String,
    }

    impl Reply {
        pub fn location(&self) -> Option<&str> {
            self.headers.get(LOCATION).and_then(|v| v.to_str().ok())
        }

        pub fn set_cookies(&self) -> Vec<SetCookie> {
            self.headers
                .get_all(SET_COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .filter_map(SetCookie::parse)
                .collect()
        }

        /// The `Set-Cookie` for `name`, if one was sent.
        pub fn set_cookie(&self, name: &str) -> Option<SetCookie> {
            self.set_cookies().into_iter().find(|c| c.name == name)
        }

        /// The session cookie set (not cleared) by this answer.
        pub fn new_session_cookie(&self) -> Option<SetCookie> {
            self.set_cookie(SESSION_COOKIE).filter(|c| !c.is_removal())
        }

        /// The href of the page's button ("Sign in again", "Try again"), HTML-unescaped.
        pub fn page_link(&self) -> Option<String> {
            let (_, rest) = self.body.split_once("<a class=\"button\" href=\"")?;
            let (href, _) = rest.split_once('"')?;
            Some(
                href.replace("&quot;", "\"")
                    .replace("&#39;", "'")
                    .replace("&lt;", "<")
                    .replace("&gt;", ">")
                    .replace("&amp;", "&"),
            )
        }

        pub fn describe(&self) -> String {
            format!(
                "{} location={:?} set-cookie={:?}\n{}",
                self.status,
                self.location(),
                self.headers.get_all(SET_COOKIE).iter().collect::<Vec<_>>(),
                self.body
            )
        }
    }

    /// What the provider sends the browser back to the gateway with.
    #[derive(Clone, Debug)]
    pub enum Callback {
        /// `response_mode=form_post`: an auto-submitting form, posted cross-site.
        FormPost {
            url: String,
            fields: Vec<(String, String)>,
        },
        /// `response_mode=query`: a redirect to the callback URL.
        Query { url: String },
    }

    impl Callback {
        pub fn param(&self, name: &str) -> Option<String> {
            match self {
                Callback::FormPost { fields, .. } => fields
                    .iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.clone()),
                Callback::Query { url } => url::Url::parse(url)
                    .ok()?
                    .query_pairs()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.into_owned()),
            }
        }
    }

    #[derive(Clone, Debug)]
    struct JarCookie {
        value: String,
        same_site_none: bool,
    }

    /// A browser talking to one gateway on [`MAIL_HOST`] and to the test provider. It keeps
    /// the gateway's cookies itself (the gateway marks them `Secure` even over plain HTTP) and
    /// sends them as a browser would: all of them on navigations and same-site requests, only
    /// `SameSite=None` ones on the provider's cross-site form POST.
    pub struct Browser {
        client: reqwest::Client,
        origin: String,
        jar: BTreeMap<String, JarCookie>,
        /// Every `Set-Cookie` received, in order.
        pub cookie_log: Vec<SetCookie>,
    }

    impl Browser {
        pub fn new(gateway: SocketAddr) -> Browser {
            Browser {
                client: browser_client(gateway),
                origin: format!("http://{MAIL_HOST}:{}", gateway.port()),
                jar: BTreeMap::new(),
                cookie_log: Vec::new(),
            }
        }

        /// From now on talks to another gateway behind the same name (the load balancer
        /// picked another one), keeping its cookies: cookies are not port-specific.
        pub fn switch_gateway(&mut self, gateway: SocketAddr) {
            self.client = browser_client(gateway);
            self.origin = format!("http://{MAIL_HOST}:{}", gateway.port());
        }

        pub fn origin(&self) -> &str {
            &self.origin
        }

        pub fn cookie(&self, name: &str) -> Option<&str> {
            self.jar.get(name).map(|c| c.value.as_str())
        }

        /// Plants a cookie. It goes with every request, cross-site POSTs included: an
        /// attacker's client sends whatever it likes.
        pub fn set_cookie(&mut self, name: &str, value: &str) {
            self.jar.insert(
                name.to_owned(),
                JarCookie {
                    value: value.to_owned(),
                    same_site_none: true,
                },
            );
        }

        pub fn remove_cookie(&mut self, name: &str) {
            self.jar.remove(name);
        }

        pub fn cookie_names(&self) -> Vec<String> {
            self.jar.keys().cloned().collect()
        }

        /// Names of the pending-login cookies the browser holds now.
        pub fn login_cookies(&self) -> Vec<String> {
            let prefix = format!("{SESSION_COOKIE}-login-");
            self.jar
                .keys()
                .filter(|name| name.starts_with(&prefix))
                .cloned()
                .collect()
        }

        /// The `Cookie` header this browser sends to the gateway.
        pub fn cookie_header(&self, cross_site_post: bool) -> Option<String> {
            let pairs: Vec<String> = self
                .jar
                .iter()
                .filter(|(_, c)| !cross_site_post || c.same_site_none)
                .map(|(name, c)| format!("{name}={}", c.value))
                .collect();
            (!pairs.is_empty()).then(|| pairs.join("; "))
        }

        fn absorb(&mut self, reply: &Reply) {
            for cookie in reply.set_cookies() {
                if cookie.is_removal() {
                    self.jar.remove(&cookie.name);
                } else {
                    let same_site_none = cookie
                        .attribute("samesite")
                        .is_some_and(|v| v.eq_ignore_ascii_case("none"));
                    self.jar.insert(
                        cookie.name.clone(),
                        JarCookie {
                            value: cookie.value.clone(),
                            same_site_none,
                        },
                    );
                }
                self.cookie_log.push(cookie);
            }
        }

        fn url(&self, path_or_url: &str) -> String {
            if path_or_url.starts_with("http://") || path_or_url.starts_with("https://") {
                path_or_url.to_owned()
            } else {
                format!("{}{path_or_url}", self.origin)
            }
        }

        /// Sends one request to the gateway with this browser's cookies (and `headers`), and
        /// keeps the cookies the answer sets.
        pub async fn request(
            &mut self,
            method: Method,
            path: &str,
            headers: &[(&str, &str)],
            body: Option<(String, &str)>,
            cross_site_post: bool,
        ) -> Reply {
            let mut builder = self.client.request(method, self.url(path));
            for (name, value) in headers {
                builder = builder.header(*name, *value);
            }
            if let Some(cookie) = self.cookie_header(cross_site_post) {
                builder = builder.header("cookie", cookie);
            }
            if let Some((body, content_type)) = body {
                builder = builder.header("content-type", content_type).body(body);
            }
            let reply = read_reply(builder.send().await.expect("gateway answers")).await;
            self.absorb(&reply);
            reply
        }

        /// A top-level page load (typing the address, following a link).
        pub async fn navigate(&mut self, path: &str) -> Reply {
            self.request(Method::GET, path, NAVIGATION, None, false)
                .await
        }

        /// A script's `XMLHttpRequest` GET, as OWA sends them.
        pub async fn xhr(&mut self, path: &str) -> Reply {
            self.request(Method::GET, path, XHR, None, false).await
        }

        /// A `fetch()` from the page (Fetch Metadata only, no X-Requested-With).
        pub async fn fetch(&mut self, method: Method, path: &str) -> Reply {
            self.request(method, path, FETCH, None, false).await
        }

        /// Navigates to `path` and expects the gateway's redirect to the provider; returns the
        /// authorization URL.
        pub async fn start_sign_in(&mut self, path: &str, provider: &TestProvider) -> String {
            let reply = self.navigate(path).await;
            assert_eq!(
                reply.status,
                StatusCode::FOUND,
                "a page load without a session must be redirected to sign in; got {}",
                reply.describe()
            );
            let location = reply
                .location()
                .expect("redirect has a Location")
                .to_owned();
            assert!(
                location.starts_with(&provider.authorization_endpoint()),
                "redirect goes to the provider's authorization endpoint: {location}"
            );
            location
        }

        /// Signs in at the provider's page as `user`, saying whether MFA was done; returns
        /// what the provider sends the browser back to the gateway with.
        pub async fn sign_in_at_provider(
            &self,
            authorize_url: &str,
            user: &str,
            mfa: bool,
        ) -> Callback {
            let (url, form) = sign_in_form(authorize_url, user, mfa);
            self.submit_provider_form(&url, &form).await
        }

        /// Presses Cancel on the provider's sign-in page.
        pub async fn cancel_at_provider(&self, authorize_url: &str) -> Callback {
            let (url, mut form) = sign_in_form(authorize_url, "alice", false);
            for (name, value) in &mut form {
                if name == "decision" {
                    *value = "cancel".into();
                }
            }
            self.submit_provider_form(&url, &form).await
        }

        async fn submit_provider_form(&self, url: &str, form: &[(String, String)]) -> Callback {
            let body = url::form_urlencoded::Serializer::new(String::new())
                .extend_pairs(form)
                .finish();
            let reply = read_reply(
                self.client
                    .post(url)
                    .header("content-type", "application/x-www-form-urlencoded")
                    .header("accept", "text/html")
                    .body(body)
                    .send()
                    .await
                    .expect("provider answers"),
            )
            .await;
            match reply.status {
                StatusCode::OK => {
                    let (url, fields) = parse_form_post(&reply.body)
                        .unwrap_or_else(|| panic!("not a form_post page: {}", reply.body));
                    Callback::FormPost { url, fields }
                }
                StatusCode::FOUND => Callback::Query {
                    url: reply.location().expect("Location").to_owned(),
                },
                _ => panic!("the provider refused the sign-in: {}", reply.describe()),
            }
        }

        /// Delivers the provider's answer to the gateway's callback as a browser does.
        pub async fn deliver(&mut self, callback: &Callback) -> Reply {
            match callback {
                Callback::FormPost { url, fields } => {
                    let body = url::form_urlencoded::Serializer::new(String::new())
                        .extend_pairs(fields)
                        .finish();
                    self.request(
                        Method::POST,
                        url,
                        &[
                            ("accept", "text/html"),
                            ("sec-fetch-mode", "navigate"),
                            ("sec-fetch-site", "cross-site"),
                        ],
                        Some((body, "application/x-www-form-urlencoded")),
                        true,
                    )
                    .await
                }
                Callback::Query { url } => {
                    let url = url.clone();
                    self.request(
                        Method::GET,
                        &url,
                        &[
                            ("accept", "text/html"),
                            ("sec-fetch-mode", "navigate"),
                            ("sec-fetch-site", "cross-site"),
                        ],
                        None,
                        false,
                    )
                    .await
                }
            }
        }

        /// The whole sign-in from a page load of `path`: redirect, provider form, callback.
        /// Returns the gateway's answer to the callback.
        pub async fn sign_in(
            &mut self,
            path: &str,
            provider: &TestProvider,
            user: &str,
            mfa: bool,
        ) -> Reply {
            let authorize = self.start_sign_in(path, provider).await;
            let callback = self.sign_in_at_provider(&authorize, user, mfa).await;
            self.deliver(&callback).await
        }

        /// [`Browser::sign_in`] that must succeed: the callback redirects to `path` and sets
        /// the session cookie.
        pub async fn sign_in_ok(&mut self, path: &str, provider: &TestProvider, user: &str) {
            let reply = self.sign_in(path, provider, user, true).await;
            assert_eq!(
                reply.status,
                StatusCode::FOUND,
                "sign-in with MFA must succeed: {}",
                reply.describe()
            );
            assert_eq!(reply.location(), Some(path), "{}", reply.describe());
            assert!(
                reply.new_session_cookie().is_some(),
                "sign-in sets the session cookie: {}",
                reply.describe()
            );
        }
    }

    pub const NAVIGATION: &[(&str, &str)] = &[
        (
            "accept",
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
        ),
        ("sec-fetch-mode", "navigate"),
        ("sec-fetch-dest", "document"),
    ];
    pub const XHR: &[(&str, &str)] = &[
        ("accept", "*/*"),
        ("x-requested-with", "XMLHttpRequest"),
        ("sec-fetch-mode", "cors"),
        ("sec-fetch-dest", "empty"),
    ];
    pub const FETCH: &[(&str, &str)] = &[
        ("accept", "application/json"),
        ("sec-fetch-mode", "cors"),
        ("sec-fetch-dest", "empty"),
    ];

    fn browser_client(gateway: SocketAddr) -> reqwest::Client {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(30))
            .resolve(MAIL_HOST, gateway)
            .http1_only()
            .build()
            .unwrap()
    }

    pub async fn read_reply(response: reqwest::Response) -> Reply {
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.text().await.unwrap_or_default();
        Reply {
            status,
            headers,
            body,
        }
    }
}
