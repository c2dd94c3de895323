//! A pool of Exchange servers behind one upstream name: round robin over the healthy ones,
//! active health checks against Exchange's own probe page (`/owa/healthcheck.htm`), and passive
//! marking when a server refuses connections, so the next request skips it at once instead of
//! waiting for the next probe. Connections to the servers are the gateway's own (see
//! [`super::connections`]): opened by one connector, kept idle per worker.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use http::{Request, Uri};
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, ServerName};

use super::connections::{
    ConnectError, ConnectionCounts, Connector, IdleConnections, Lease, Target, POOL_IDLE_TIMEOUT,
};
use crate::body::RequestBody;
use crate::config::{HealthCheckConfig, UpstreamConfig, UpstreamScheme, UpstreamServer};

/// How long a server that refused a connection is skipped when no active health check is
/// configured to bring it back.
const PASSIVE_COOLDOWN: Duration = Duration::from_secs(10);

pub(crate) struct ServerState {
    pub server: UpstreamServer,
    pub(crate) label: Arc<str>,
    target: Target,
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
    connector: Connector,
    /// Idle connections and round-robin positions, per worker.
    connections: IdleConnections,
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
    /// `health_check.path` does not make a request target.
    #[error("bad probe URI: {0}")]
    BadUri(http::uri::InvalidUri),
    /// The probe request cannot be built (a `tls_server_name` that is no Host value).
    #[error("{0}")]
    BadRequest(http::Error),
    /// No answer within `health_check.timeout`.
    #[error("timed out")]
    Timeout,
    /// Connection refused or the TLS handshake failed.
    #[error("{0}")]
    Unreachable(ConnectError),
    /// The connection broke before an answer.
    #[error("{0}")]
    Broken(hyper::Error),
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
            ProbeError::Unreachable(_) | ProbeError::Broken(_) => "unreachable",
            ProbeError::Status(_) => "status",
        }
    }
}

impl UpstreamPool {
    /// Builds the pool and its TLS client, with idle connections kept for each core the
    /// process may use. Reads `ca_file`, so it fails on a missing or unreadable CA bundle.
    pub fn new(config: UpstreamConfig) -> Result<Arc<UpstreamPool>, PoolError> {
        UpstreamPool::with_workers(config, crate::worker::available_cores())
    }

    /// [`UpstreamPool::new`] for a gateway running `workers` workers: each keeps its own idle
    /// connections and round-robin position.
    pub fn with_workers(
        config: UpstreamConfig,
        workers: usize,
    ) -> Result<Arc<UpstreamPool>, PoolError> {
        let tls_server_name = match &config.tls_server_name {
            Some(name) => Some(ServerName::try_from(name.clone()).map_err(|error| {
                PoolError::BadServerName {
                    upstream: config.name.clone(),
                    error,
                }
            })?),
            None => None,
        };
        let any_https = config
            .servers
            .iter()
            .any(|server| server.scheme == UpstreamScheme::Https);
        let tls = if any_https {
            Some(build_tls(&config)?)
        } else {
            None
        };
        let connector = Connector::new(tls, config.connect_timeout);
        let servers: Vec<ServerState> = config
            .servers
            .iter()
            .map(|server| ServerState {
                label: Arc::from(server.url.as_str()),
                target: Target::new(
                    &server.authority,
                    server.scheme == UpstreamScheme::Https,
                    tls_server_name.as_ref(),
                ),
                server: server.clone(),
                healthy: AtomicBool::new(true),
                skip_until_ms: AtomicU64::new(0),
                failures: AtomicU32::new(0),
                successes: AtomicU32::new(0),
            })
            .collect();
        let connections = IdleConnections::new(workers, servers.len());
        Ok(Arc::new(UpstreamPool {
            config,
            servers,
            connector,
            connections,
            epoch: Instant::now(),
        }))
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    pub fn config(&self) -> &UpstreamConfig {
        &self.config
    }

    /// A connection to server `index` for `owner`: an idle one of this worker's for the same
    /// owner when there is one (unless `fresh`), else a new one. Connect failures are the
    /// caller's to report ([`UpstreamPool::mark_unreachable`]).
    pub(crate) async fn checkout(
        &self,
        index: usize,
        owner: Option<&Arc<str>>,
        fresh: bool,
    ) -> Result<Lease, ConnectError> {
        let Some(server) = self.servers.get(index) else {
            return Err(ConnectError::NoAddress);
        };
        self.connections
            .checkout(&self.connector, &server.target, index, owner, fresh)
            .await
    }

    /// Connections opened and reused since the pool was built, and those idle now.
    pub fn connection_counts(&self) -> ConnectionCounts {
        self.connections.counts()
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
        let start = self
            .connections
            .local()
            .next
            .fetch_add(1, Ordering::Relaxed);
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

    /// Runs the active health checks, and the closing of connections idle for longer than
    /// the pool keeps them, until the pool is dropped (a reload replaced it) or `stop` fires.
    pub fn spawn_background(self: &Arc<Self>, stop: tokio::sync::watch::Receiver<bool>) {
        tokio::spawn(reap_loop(Arc::downgrade(self), stop.clone()));
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

/// Idle connections are also dropped when a request looks for one; this closes them when no
/// request comes, so a quiet gateway holds no connection open on Exchange for long.
async fn reap_loop(pool: Weak<UpstreamPool>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut ticker = tokio::time::interval(POOL_IDLE_TIMEOUT / 3);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => return,
        }
        let Some(pool) = pool.upgrade() else { return };
        pool.connections.reap();
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

/// One probe on a connection of its own, closed afterwards: a probe tests that a new
/// connection (TCP and TLS) can be made, and never takes a connection a request could use.
async fn probe(
    pool: &UpstreamPool,
    server: &ServerState,
    check: &HealthCheckConfig,
) -> Result<(), ProbeError> {
    let uri = Uri::try_from(check.path.as_str()).map_err(ProbeError::BadUri)?;
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
    let exchange = async {
        let (mut sender, _) = pool
            .connector
            .open(&server.target)
            .await
            .map_err(ProbeError::Unreachable)?;
        let response = sender
            .send_request(request)
            .await
            .map_err(ProbeError::Broken)?;
        let status = response.status();
        // Read the small probe page, so IIS logs a completed request, not an aborted one.
        let _ = http_body_util::BodyExt::collect(http_body_util::Limited::new(
            response.into_body(),
            64 * 1024,
        ))
        .await;
        Ok(status)
    };
    let status = tokio::time::timeout(check.timeout, exchange)
        .await
        .map_err(|_| ProbeError::Timeout)??;
    if status.is_success() {
        Ok(())
    } else {
        Err(ProbeError::Status(status))
    }
}

/// The TLS client configuration for the upstream's `https://` servers: TLS 1.3 and 1.2 with
/// ring, the roots of `ca_file` (or the system's), HTTP/1.1 by ALPN.
fn build_tls(config: &UpstreamConfig) -> Result<rustls::ClientConfig, PoolError> {
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
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
    .map_err(PoolError::Protocols)?
    .with_root_certificates(roots)
    .with_no_client_auth();

    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tls)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use bytes::Bytes;
    use http_body_util::BodyExt;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use tokio::net::TcpListener;

    use super::*;
    use crate::body::ResponseBody;
    use crate::config::UpstreamServer;
    use crate::proxy::Owner;

    /// A plain HTTP/1.1 server on loopback answering every request with the number of the
    /// connection it came on (1 for the first accepted), keeping connections alive.
    async fn numbered_connections_server() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let number = counter.fetch_add(1, Ordering::SeqCst) + 1;
                tokio::spawn(async move {
                    let service = service_fn(move |_request| async move {
                        Ok::<_, std::convert::Infallible>(http::Response::new(
                            http_body_util::Full::new(Bytes::from(format!("connection {number}"))),
                        ))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        (addr, accepted)
    }

    fn plain_pool(addr: std::net::SocketAddr) -> Arc<UpstreamPool> {
        let config = UpstreamConfig {
            name: "exchange".into(),
            servers: vec![UpstreamServer {
                url: format!("http://{addr}"),
                scheme: UpstreamScheme::Http,
                authority: addr.to_string().parse().unwrap(),
            }],
            ca_file: None,
            tls_server_name: None,
            health_check: None,
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(5),
            max_request_body: 1024,
            kerberos_spn: None,
        };
        UpstreamPool::with_workers(config, 1).unwrap()
    }

    /// One request for `owner`, its answer read to the end: which connection served it, and
    /// whether the pool had it idle.
    async fn served_by(pool: &UpstreamPool, owner: Option<&str>) -> (String, bool) {
        let owner: Owner = owner.map(Arc::from);
        let mut lease = pool.checkout(0, owner.as_ref(), false).await.unwrap();
        let reused = lease.reused();
        let request = Request::get("/owa/")
            .header(http::header::HOST, "mail.contoso.com")
            .body(RequestBody::empty())
            .unwrap();
        let response = lease
            .send(request)
            .await
            .map_err(|e| e.into_error())
            .unwrap();
        let body =
            ResponseBody::upstream(response.into_body(), Duration::from_secs(5), Some(lease));
        let text = body.collect().await.unwrap().to_bytes();
        (String::from_utf8(text.to_vec()).unwrap(), reused)
    }

    #[tokio::test]
    async fn a_connection_opened_for_one_owner_is_only_ever_reused_for_that_owner() {
        let (addr, accepted) = numbered_connections_server().await;
        let pool = plain_pool(addr);

        let alice = served_by(&pool, Some("alice@contoso.com")).await;
        assert_eq!(alice, ("connection 1".into(), false));
        // Back idle, alice's connection is hers again...
        let again = served_by(&pool, Some("alice@contoso.com")).await;
        assert_eq!(again, ("connection 1".into(), true));
        // ...but never bob's, nor a request without an owner, though it is the only idle one.
        let bob = served_by(&pool, Some("bob@contoso.com")).await;
        assert_eq!(bob, ("connection 2".into(), false));
        let anonymous = served_by(&pool, None).await;
        assert_eq!(anonymous, ("connection 3".into(), false));
        // And a connection opened without an owner is not handed to an owner.
        let carol = served_by(&pool, Some("carol@contoso.com")).await;
        assert_eq!(carol, ("connection 4".into(), false));

        // Each goes on being reused for its own owner.
        assert_eq!(served_by(&pool, None).await, ("connection 3".into(), true));
        assert_eq!(
            served_by(&pool, Some("bob@contoso.com")).await,
            ("connection 2".into(), true)
        );
        assert_eq!(
            served_by(&pool, Some("alice@contoso.com")).await,
            ("connection 1".into(), true)
        );
        assert_eq!(accepted.load(Ordering::SeqCst), 4);
        let counts = pool.connection_counts();
        assert_eq!((counts.opened, counts.reused, counts.idle), (4, 4, 4));
    }

    #[tokio::test]
    async fn a_lease_dropped_before_its_response_was_read_is_not_reused() {
        let (addr, accepted) = numbered_connections_server().await;
        let pool = plain_pool(addr);
        let mut lease = pool.checkout(0, None, false).await.unwrap();
        let request = Request::get("/owa/")
            .header(http::header::HOST, "mail.contoso.com")
            .body(RequestBody::empty())
            .unwrap();
        let response = lease
            .send(request)
            .await
            .map_err(|e| e.into_error())
            .unwrap();
        // The head arrived, the body was never read.
        drop(lease);
        drop(response);
        assert_eq!(served_by(&pool, None).await, ("connection 2".into(), false));
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }
}
