//! A pool of Exchange servers behind one upstream name: round robin over the healthy ones,
//! active health checks against Exchange's own probe page (`/owa/healthcheck.htm`), and passive
//! marking when a server refuses connections, so the next request skips it at once instead of
//! waiting for the next probe.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use http::{Request, Uri};
use hyper_rustls::{FixedServerNameResolver, HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, ServerName};

use crate::body::RequestBody;
use crate::config::{HealthCheckConfig, UpstreamConfig, UpstreamScheme, UpstreamServer};

pub(super) type UpstreamClient = Client<HttpsConnector<HttpConnector>, RequestBody>;

/// How long a server that refused a connection is skipped when no active health check is
/// configured to bring it back.
const PASSIVE_COOLDOWN: Duration = Duration::from_secs(10);

pub(crate) struct ServerState {
    pub server: UpstreamServer,
    pub(crate) scheme: http::uri::Scheme,
    pub(crate) label: Arc<str>,
    healthy: AtomicBool,
    /// Milliseconds since the pool's epoch before which the server is skipped after a refused
    /// connection.
    skip_until_ms: AtomicU64,
    failures: AtomicU32,
    successes: AtomicU32,
}

/// A server as shown in `/readyz` and `/metrics`.
#[derive(Debug, Clone)]
pub struct ServerStatus {
    pub url: String,
    pub healthy: bool,
}

pub struct UpstreamPool {
    config: UpstreamConfig,
    servers: Vec<ServerState>,
    next: AtomicUsize,
    client: UpstreamClient,
    epoch: Instant,
}

/// Why an upstream's TLS client cannot be built, naming the configuration key and the file.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("upstreams.{upstream}.ca_file: cannot read {}: {error}", .path.display())]
    CaFileUnreadable {
        upstream: String,
        path: PathBuf,
        error: pem::Error,
    },
    /// A PEM block that does not decode.
    #[error("upstreams.{upstream}.ca_file: {}: {error}", .path.display())]
    CaFileNotPem {
        upstream: String,
        path: PathBuf,
        error: pem::Error,
    },
    /// rustls refused a certificate of the bundle as a trust anchor.
    #[error("upstreams.{upstream}.ca_file: {}: {error}", .path.display())]
    CaRejected {
        upstream: String,
        path: PathBuf,
        error: rustls::Error,
    },
    #[error("upstreams.{upstream}.ca_file: {} holds no certificate", .path.display())]
    CaFileEmpty { upstream: String, path: PathBuf },
    #[error("upstreams.{upstream}.tls_server_name: {error}")]
    BadServerName {
        upstream: String,
        error: rustls_pki_types::InvalidDnsNameError,
    },
    /// rustls refused TLS 1.2 and 1.3 (the ring provider has both: not expected).
    #[error("{0}")]
    Protocols(rustls::Error),
}

/// Why one health probe of an Exchange server failed.
#[derive(Debug, thiserror::Error)]
pub(super) enum ProbeError {
    /// `health_check.path` does not make a URI with the server's address.
    #[error("bad probe URI: {0}")]
    BadUri(http::Error),
    /// The probe request cannot be built (a `tls_server_name` that is no Host value).
    #[error("{0}")]
    BadRequest(http::Error),
    /// No answer within `health_check.timeout`.
    #[error("timed out")]
    Timeout,
    /// Connection refused, TLS handshake failed, or the connection broke.
    #[error("{0}")]
    Unreachable(hyper_util::client::legacy::Error),
    /// Exchange answered, but not with success (`healthcheck.htm` answers 200 when the
    /// virtual directory's application pool works).
    #[error("status {}", .0.as_u16())]
    Status(http::StatusCode),
}

impl ProbeError {
    /// A stable label for logs.
    pub(super) fn reason(&self) -> &'static str {
        match self {
            ProbeError::BadUri(_) => "bad_uri",
            ProbeError::BadRequest(_) => "bad_request",
            ProbeError::Timeout => "timeout",
            ProbeError::Unreachable(_) => "unreachable",
            ProbeError::Status(_) => "status",
        }
    }
}

impl UpstreamPool {
    /// Builds the pool and its TLS client. Reads `ca_file`, so it fails on a missing or
    /// unreadable CA bundle.
    pub fn new(config: UpstreamConfig) -> Result<Arc<UpstreamPool>, PoolError> {
        let client = build_client(&config)?;
        let servers = config
            .servers
            .iter()
            .map(|server| ServerState {
                scheme: match server.scheme {
                    UpstreamScheme::Http => http::uri::Scheme::HTTP,
                    UpstreamScheme::Https => http::uri::Scheme::HTTPS,
                },
                label: Arc::from(server.url.as_str()),
                server: server.clone(),
                healthy: AtomicBool::new(true),
                skip_until_ms: AtomicU64::new(0),
                failures: AtomicU32::new(0),
                successes: AtomicU32::new(0),
            })
            .collect();
        Ok(Arc::new(UpstreamPool {
            config,
            servers,
            next: AtomicUsize::new(0),
            client,
            epoch: Instant::now(),
        }))
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    pub fn config(&self) -> &UpstreamConfig {
        &self.config
    }

    pub fn client(&self) -> &UpstreamClient {
        &self.client
    }

    pub(crate) fn server(&self, index: usize) -> Option<&ServerState> {
        self.servers.get(index)
    }

    pub fn servers(&self) -> Vec<ServerStatus> {
        let now = self.now_ms();
        self.servers
            .iter()
            .map(|s| ServerStatus {
                url: s.server.url.clone(),
                healthy: s.is_available(now),
            })
            .collect()
    }

    /// Whether `authority` (from an absolute URL with `scheme`) names one of this pool's
    /// servers, or the name their certificates carry (`tls_server_name`).
    pub fn is_server_authority(&self, authority: &http::uri::Authority, scheme: &str) -> bool {
        let default_port = if scheme.eq_ignore_ascii_case("https") {
            443
        } else {
            80
        };
        let port = authority.port_u16().unwrap_or(default_port);
        let host = authority.host();
        let by_server = self.servers.iter().any(|s| {
            s.server.authority.host().eq_ignore_ascii_case(host)
                && s.server.authority.port_u16().unwrap_or(default_port) == port
        });
        let by_tls_name = self
            .config
            .tls_server_name
            .as_deref()
            .is_some_and(|name| name.eq_ignore_ascii_case(host));
        by_server || by_tls_name
    }

    /// Number of servers configured, healthy or not.
    pub fn len(&self) -> usize {
        self.servers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.servers.is_empty()
    }

    pub fn healthy_count(&self) -> usize {
        let now = self.now_ms();
        self.servers.iter().filter(|s| s.is_available(now)).count()
    }

    /// The next server in round-robin order that is healthy and not in `tried` (a bit set of
    /// server indexes already attempted for this request).
    pub(crate) fn pick(&self, tried: u64) -> Option<usize> {
        let n = self.servers.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let now = self.now_ms();
        (0..n).map(|offset| (start + offset) % n).find(|&i| {
            let untried = i >= 64 || tried & (1 << i) == 0;
            untried && self.servers.get(i).is_some_and(|s| s.is_available(now))
        })
    }

    /// A connection to this server was refused or failed its TLS handshake: skip it until the
    /// health check (or, without one, a short cool-down) says otherwise.
    pub(crate) fn mark_unreachable(&self, index: usize) {
        let Some(server) = self.servers.get(index) else {
            return;
        };
        let until = self.now_ms() + PASSIVE_COOLDOWN.as_millis() as u64;
        server.skip_until_ms.store(until, Ordering::Relaxed);
        if self.config.health_check.is_some() {
            server.successes.store(0, Ordering::Relaxed);
            if server.healthy.swap(false, Ordering::Relaxed) {
                tracing::warn!(upstream = %self.config.name, server = %server.server.url, "Exchange server refused a connection; taken out of rotation");
            }
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Runs the active health checks until the pool is dropped (a reload replaced it) or
    /// `stop` fires.
    pub fn spawn_health_checks(self: &Arc<Self>, stop: tokio::sync::watch::Receiver<bool>) {
        let Some(check) = self.config.health_check.clone() else {
            return;
        };
        let weak = Arc::downgrade(self);
        tokio::spawn(health_loop(weak, check, stop));
    }

    fn record_probe(
        &self,
        server: &ServerState,
        outcome: Result<(), ProbeError>,
        check: &HealthCheckConfig,
    ) {
        match outcome {
            Ok(()) => {
                server.failures.store(0, Ordering::Relaxed);
                let successes = server.successes.fetch_add(1, Ordering::Relaxed) + 1;
                if successes >= check.healthy_threshold
                    && !server.healthy.swap(true, Ordering::Relaxed)
                {
                    server.skip_until_ms.store(0, Ordering::Relaxed);
                    tracing::info!(upstream = %self.config.name, server = %server.server.url, "Exchange server passed its health check; back in rotation");
                }
                if server.healthy.load(Ordering::Relaxed) {
                    server.skip_until_ms.store(0, Ordering::Relaxed);
                }
            }
            Err(failure) => {
                server.successes.store(0, Ordering::Relaxed);
                let failures = server.failures.fetch_add(1, Ordering::Relaxed) + 1;
                if failures >= check.unhealthy_threshold
                    && server.healthy.swap(false, Ordering::Relaxed)
                {
                    tracing::warn!(upstream = %self.config.name, server = %server.server.url, reason = failure.reason(), error = %failure, "Exchange server failed its health check; taken out of rotation");
                }
            }
        }
    }
}

impl ServerState {
    fn is_available(&self, now_ms: u64) -> bool {
        self.healthy.load(Ordering::Relaxed) && self.skip_until_ms.load(Ordering::Relaxed) <= now_ms
    }
}

async fn health_loop(
    pool: Weak<UpstreamPool>,
    check: HealthCheckConfig,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(check.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => return,
        }
        let Some(pool) = pool.upgrade() else { return };
        let probes = (0..pool.servers.len()).map(|i| {
            let pool = pool.clone();
            let check = check.clone();
            async move {
                let Some(server) = pool.servers.get(i) else {
                    return;
                };
                let outcome = probe(&pool, server, &check).await;
                pool.record_probe(server, outcome, &check);
            }
        });
        futures_util::future::join_all(probes).await;
    }
}

async fn probe(
    pool: &UpstreamPool,
    server: &ServerState,
    check: &HealthCheckConfig,
) -> Result<(), ProbeError> {
    let uri = Uri::builder()
        .scheme(server.scheme.clone())
        .authority(server.server.authority.clone())
        .path_and_query(check.path.as_str())
        .build()
        .map_err(ProbeError::BadUri)?;
    let host = pool
        .config
        .tls_server_name
        .clone()
        .unwrap_or_else(|| server.server.authority.host().to_owned());
    let request = Request::get(uri)
        .header(http::header::HOST, host)
        .header(http::header::USER_AGENT, "mfa-gateway-health-check")
        .body(RequestBody::empty())
        .map_err(ProbeError::BadRequest)?;
    let response = tokio::time::timeout(check.timeout, pool.client.request(request))
        .await
        .map_err(|_| ProbeError::Timeout)?
        .map_err(ProbeError::Unreachable)?;
    let status = response.status();
    // Drain the small probe page so the connection goes back to the pool.
    let _ = tokio::time::timeout(
        check.timeout,
        http_body_util::BodyExt::collect(http_body_util::Limited::new(
            response.into_body(),
            64 * 1024,
        )),
    )
    .await;
    if status.is_success() {
        Ok(())
    } else {
        Err(ProbeError::Status(status))
    }
}

fn build_client(config: &UpstreamConfig) -> Result<UpstreamClient, PoolError> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(config.connect_timeout));
    http.set_keepalive(Some(Duration::from_secs(60)));

    let mut roots = rustls::RootCertStore::empty();
    match &config.ca_file {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path).map_err(|error| {
                PoolError::CaFileUnreadable {
                    upstream: config.name.clone(),
                    path: path.clone(),
                    error,
                }
            })?;
            for cert in certs {
                let cert = cert.map_err(|error| PoolError::CaFileNotPem {
                    upstream: config.name.clone(),
                    path: path.clone(),
                    error,
                })?;
                roots.add(cert).map_err(|error| PoolError::CaRejected {
                    upstream: config.name.clone(),
                    path: path.clone(),
                    error,
                })?;
            }
            if roots.is_empty() {
                return Err(PoolError::CaFileEmpty {
                    upstream: config.name.clone(),
                    path: path.clone(),
                });
            }
        }
        None => {
            let loaded = rustls_native_certs::load_native_certs();
            for cert in loaded.certs {
                let _ = roots.add(cert);
            }
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
    .map_err(PoolError::Protocols)?
    .with_root_certificates(roots)
    .with_no_client_auth();

    let builder = HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http();
    let builder = match &config.tls_server_name {
        Some(name) => {
            let name =
                ServerName::try_from(name.clone()).map_err(|error| PoolError::BadServerName {
                    upstream: config.name.clone(),
                    error,
                })?;
            builder.with_server_name_resolver(FixedServerNameResolver::new(name))
        }
        None => builder,
    };
    let connector = builder.enable_http1().wrap_connector(http);

    Ok(Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(1024)
        .set_host(false)
        .build(connector))
}
