//! The running gateway: listeners, the configuration snapshot every request reads, reload and
//! drain.
//!
//! Configuration is shared through an atomically swapped [`Snapshot`]: a request takes the
//! snapshot current when it arrives and keeps it to the end, so a reload never changes the rules
//! under a request in flight. Each worker keeps its own handle on the current snapshot,
//! refreshed when a reload bumps the generation counter: a request writes no reference count
//! that another core writes too.
//!
//! The binary serves on `[server] workers` threads, each with a single-threaded tokio runtime of
//! its own that accepts and serves its connections from accept to close ([`Gateway::start_workers`]);
//! the library's [`Gateway::start`] serves on the caller's runtime.

mod admin;
mod listener;
pub mod tls;
mod workers;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use ipnet::IpNet;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::activity::BackgroundRequests;
use crate::auth::{RoutePolicy, SignIn, SignInError};
use crate::clock::Clock;
use crate::config::{Access, Config, KerberosConfig, ServerConfig, Sso};
use crate::observe::metrics::{Counters, Metrics, RouteMetrics, RouteSlot};
use crate::proxy::{PoolError, UpstreamPool};
use crate::routing::Router;
use crate::sso::adfs::issuer::{AdfsIssuer, TokenSigningError};
use crate::sso::kerberos::KerberosSso;
use crate::worker::PerWorker;
use listener::Serve;
use tls::{CertError, CertSet, CertStore};
use workers::{spawn_worker, worker_listeners};

/// Why a configuration could not be put into service (at start or on reload): every problem
/// found, displayed one per line, so an administrator fixes them all in one pass.
#[derive(Debug, thiserror::Error)]
#[error("{}", one_per_line(.0))]
pub struct StartError(pub Vec<StartProblem>);

impl StartError {
    pub fn iter(&self) -> std::slice::Iter<'_, StartProblem> {
        self.0.iter()
    }
}

impl From<StartProblem> for StartError {
    fn from(problem: StartProblem) -> StartError {
        StartError(vec![problem])
    }
}

fn one_per_line(problems: &[StartProblem]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// One reason a configuration cannot be served, found while building what it describes
/// (files it names, clients it needs) rather than while validating the file.
#[derive(Debug, thiserror::Error)]
pub enum StartProblem {
    #[error(transparent)]
    Certificate(#[from] CertError),
    #[error(transparent)]
    Upstream(#[from] PoolError),
    #[error(transparent)]
    SignIn(#[from] SignInError),
    /// A `[sso.adfs].token_signing` certificate or key that cannot be used.
    #[error(transparent)]
    TokenSigning(#[from] TokenSigningError),
    /// Two routes for the same host and path (validation normally refuses this first).
    #[error("routes[{index}]: {host}{path} is published twice")]
    PublishedTwice {
        index: usize,
        host: String,
        path: String,
    },
    #[error("server.https_listen needs at least one [[tls.certificates]]")]
    HttpsWithoutCertificates,
    /// The Kerberos library's environment is set at start only, before any thread runs.
    #[error("sso.kerberos was added but the gateway started without it; restart to enable it")]
    KerberosAddedOnReload,
    /// The HTTPS listener is bound at start only.
    #[error(
        "TLS certificates were added but the gateway started without HTTPS; restart to enable it"
    )]
    HttpsAddedOnReload,
    /// Serving HTTPS without any certificate would fail every handshake.
    #[error(
        "tls.certificates: the HTTPS listener needs at least one certificate; keeping the running ones"
    )]
    CertificatesRemovedOnReload,
    /// A worker's listener socket or runtime could not be made.
    #[error("server.workers: cannot start worker {index}: {error}")]
    Worker { index: usize, error: std::io::Error },
}

/// What a request knows of the browser connection it came on.
pub struct Connection {
    pub(crate) peer: SocketAddr,
    /// The peer's address as `X-Forwarded-For` and the access log write it, formatted once.
    pub(crate) peer_text: http::HeaderValue,
    pub(crate) tls: bool,
    /// Slots for bodies the gateway reads itself (the sign-in callback's form).
    pub(crate) gateway_bodies: Arc<Semaphore>,
}

/// What a route resolves to at request time.
pub struct RouteEntry {
    /// The route's `path` as configured (`/owa`): Exchange's reply URL for hybrid modern
    /// authentication is this path with a slash.
    pub path: String,
    pub access: Access,
    /// WebSocket upgrades are forwarded on this route.
    pub websocket: bool,
    pub pool: Arc<UpstreamPool>,
    pub metrics: Arc<RouteMetrics>,
    /// Where the route's requests are counted in the snapshot's [`Counters`].
    pub slot: RouteSlot,
    /// For `access = "mfa"`: what a session must satisfy here.
    pub policy: Option<RoutePolicy>,
    /// How Exchange signs the user in behind this route.
    pub sso: Sso,
    /// The source networks this route answers; `None`: every address.
    pub allow_from: Option<Vec<IpNet>>,
    /// Exchange's forms logon is forwarded only for the signed-in user: the route's own
    /// `<path>/auth.owa`, lower-cased, when `bind_forms_logon` is on.
    pub forms_logon_path: Option<String>,
}

/// One immutable generation of configuration, with everything built from it.
pub struct Snapshot {
    pub config: Config,
    pub router: Router<RouteEntry>,
    /// One per entry of `config.upstreams`, in the same order.
    pub pools: Vec<Arc<UpstreamPool>>,
    /// Connection settings for new browser connections.
    pub(crate) http: Arc<HttpBuilders>,
    /// Sign-in through Entra ID, when `[oidc]` is configured.
    pub sign_in: Option<Arc<SignIn>>,
    /// The WS-Federation issuer for routes with `sso = "adfs"`, when `[sso.adfs]` is configured.
    pub adfs: Option<Arc<AdfsIssuer>>,
    /// The Kerberos engine for routes with `sso = "kerberos"`, when `[sso.kerberos]` is
    /// configured. Kept across reloads that leave `[sso.kerberos]` as it was, with its tickets
    /// and counters.
    pub kerberos: Option<KerberosSso>,
    /// The counters of `none`, `gateway` and each route; each worker copies the table.
    pub counters: Counters,
}

impl Snapshot {
    /// Builds everything a configuration describes except the listeners. Reads the certificate
    /// and CA files, so this is where a missing or mismatched file is found.
    pub fn build(
        config: Config,
        metrics: &Arc<Metrics>,
        previous: Option<&Snapshot>,
        clock: Clock,
    ) -> Result<(Snapshot, CertSet), StartError> {
        // Every unreadable file is reported, not just the first.
        let mut problems = Vec::new();
        let certs = CertSet::load(&config.tls.certificates).unwrap_or_else(|errors| {
            problems.extend(errors.into_iter().map(StartProblem::Certificate));
            CertSet::empty()
        });
        let mut pools = Vec::with_capacity(config.upstreams.len());
        for upstream in &config.upstreams {
            match UpstreamPool::with_workers(upstream.clone(), config.server.workers) {
                Ok(pool) => pools.push(pool),
                Err(e) => problems.push(StartProblem::Upstream(e)),
            }
        }
        let previous_sign_in = previous.and_then(|p| p.sign_in.as_deref());
        let sign_in = SignIn::build(&config, previous_sign_in, clock).unwrap_or_else(|e| {
            problems.push(StartProblem::SignIn(e));
            None
        });
        let adfs = match &config.sso.adfs {
            Some(adfs) => match AdfsIssuer::load(adfs) {
                Ok(issuer) => Some(Arc::new(issuer)),
                Err(errors) => {
                    problems.extend(errors.into_iter().map(StartProblem::TokenSigning));
                    None
                }
            },
            None => None,
        };
        let kerberos = match (&config.sso.kerberos, previous) {
            (None, _) => None,
            (Some(wanted), None) => Some(KerberosSso::new(wanted)),
            (Some(wanted), Some(previous)) => match &previous.kerberos {
                Some(engine) => Some(kerberos_after_reload(engine, wanted)),
                None => {
                    problems.push(StartProblem::KerberosAddedOnReload);
                    None
                }
            },
        };
        if !problems.is_empty() {
            return Err(StartError(problems));
        }
        let mut router = Router::new();
        let mut route_metrics = Vec::with_capacity(config.routes.len());
        for (i, route) in config.routes.iter().enumerate() {
            // One pool per entry of `config.upstreams`, in its order: validation made
            // `route.upstream` an index into both.
            let pool = pools[route.upstream.index()].clone();
            let name = format!("{}{}", route.host, route.path);
            let policy = match (&sign_in, route.access) {
                (Some(sign_in), Access::Mfa) => Some(RoutePolicy {
                    max_auth_age: route
                        .max_auth_age
                        .unwrap_or_else(|| sign_in.default_max_auth_age()),
                    acrs_any_of: route.acrs_any_of.clone(),
                    groups_any_of: route.groups_any_of.clone(),
                    unauthenticated_status: route.unauthenticated_status,
                    background_requests: BackgroundRequests::with_exchange_defaults(
                        &route.background_requests,
                    ),
                    name: name.clone(),
                }),
                // Validation refuses mfa routes without [oidc]; closed is the only safe answer.
                _ => None,
            };
            let counted = metrics.route(&name);
            route_metrics.push(counted.clone());
            let entry = RouteEntry {
                path: route.path.clone(),
                access: route.access,
                websocket: route.websocket,
                pool,
                metrics: counted,
                slot: RouteSlot::route(i),
                policy,
                sso: route.sso,
                allow_from: route.allow_from.clone(),
                forms_logon_path: route.bind_forms_logon.then(|| {
                    let base = route.path.trim_end_matches('/');
                    format!("{base}/auth.owa").to_ascii_lowercase()
                }),
            };
            router
                .insert(&route.host, &route.path, entry)
                .map_err(|_| StartProblem::PublishedTwice {
                    index: i,
                    host: route.host.clone(),
                    path: route.path.clone(),
                })?;
        }
        let http = Arc::new(HttpBuilders::new(&config.server));
        Ok((
            Snapshot {
                config,
                router,
                pools,
                http,
                sign_in,
                adfs,
                kerberos,
                counters: Counters::new(metrics, route_metrics),
            },
            certs,
        ))
    }

    /// Ready when sign-in (if configured) has the provider's metadata and keys, and every
    /// upstream that a route forwards to has at least one server in rotation.
    pub fn ready(&self) -> bool {
        self.sign_in.as_ref().is_none_or(|s| s.is_ready()) && self.upstreams_ready()
    }

    pub fn upstreams_ready(&self) -> bool {
        self.pools.iter().enumerate().all(|(i, p)| {
            let used = self
                .config
                .routes
                .iter()
                .any(|r| r.upstream.index() == i && r.access != Access::Deny);
            !used || p.healthy_count() > 0
        })
    }
}

/// The Kerberos engine after a reload: the running one, with its cached tickets, when
/// `[sso.kerberos]` is unchanged; else a new one. `realm`, `kdc` and `keytab` stay those of the
/// start: the Kerberos library read them from the process environment, set before any thread.
fn kerberos_after_reload(running: &KerberosSso, wanted: &KerberosConfig) -> KerberosSso {
    let started = running.config();
    let effective = KerberosConfig {
        realm: started.realm.clone(),
        kdc: started.kdc.clone(),
        keytab: started.keytab.clone(),
        ..wanted.clone()
    };
    if effective != *wanted {
        tracing::warn!(
            "sso.kerberos: realm, kdc and keytab take effect at the next restart; the running values are kept"
        );
    }
    if effective == *started {
        running.clone()
    } else {
        KerberosSso::new(&effective)
    }
}

/// hyper's connection settings, from `[server]`.
pub(crate) struct HttpBuilders {
    /// Plain HTTP: HTTP/1.1, or HTTP/2 with prior knowledge, told apart by the first bytes.
    pub(crate) auto: auto::Builder<TokioExecutor>,
    /// TLS connections, whose protocol ALPN has settled: no bytes are read ahead to guess it
    /// (that first short read would double hyper's read buffer on every idle connection).
    pub(crate) http1: hyper::server::conn::http1::Builder,
    pub(crate) http2: hyper::server::conn::http2::Builder<TokioExecutor>,
}

/// The HTTP/1.1 settings, applied to hyper's builder and to the automatic one alike.
macro_rules! http1_settings {
    ($builder:expr, $server:expr) => {
        $builder
            .timer(TokioTimer::new())
            .header_read_timeout($server.header_read_timeout)
            // Room for a head a little over the limit, so the request handler can count it
            // and answer 431 at exactly `max_header_bytes`.
            .max_buf_size($server.max_header_bytes.max(8192) + 16 * 1024)
            .keep_alive(true)
    };
}

/// The HTTP/2 settings, applied to hyper's builder and to the automatic one alike.
macro_rules! http2_settings {
    ($builder:expr, $server:expr) => {
        $builder
            .timer(TokioTimer::new())
            // HPACK counts 32 bytes more per field than the request handler's exact count, which
            // is the one that decides (431 at `max_header_bytes`); this bounds decoding only.
            .max_header_list_size(
                u32::try_from($server.max_header_bytes.saturating_mul(6)).unwrap_or(u32::MAX),
            )
            .max_concurrent_streams(250)
            // Rapid reset (CVE-2023-44487): a client that opens and cancels streams faster
            // than they are served gets GOAWAY after this many; h2's default, stated here so a
            // dependency upgrade cannot silently loosen it (tests/protocol_abuse.rs guards it).
            .max_pending_accept_reset_streams(Some(20))
            .initial_stream_window_size(1 << 20)
            .initial_connection_window_size(4 << 20)
            .keep_alive_interval(Some(std::time::Duration::from_secs(60)))
            .keep_alive_timeout(std::time::Duration::from_secs(20))
    };
}

impl HttpBuilders {
    fn new(server: &ServerConfig) -> HttpBuilders {
        let mut auto = auto::Builder::new(TokioExecutor::new());
        http1_settings!(auto.http1(), server);
        http2_settings!(auto.http2(), server);
        let mut http1 = hyper::server::conn::http1::Builder::new();
        http1_settings!(http1, server);
        let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        http2_settings!(http2, server);
        HttpBuilders { auto, http1, http2 }
    }
}

/// State shared by every connection of the gateway.
pub struct Shared {
    pub(crate) snapshot: ArcSwap<Snapshot>,
    /// Bumped by every reload once the new snapshot is stored; written by nothing else.
    generation: AtomicU64,
    /// Each worker's handle on the current snapshot and its own copy of the counter table.
    local: PerWorker<Mutex<LocalSnapshot>>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) draining: AtomicBool,
    pub(crate) certs: Option<Arc<CertStore>>,
    /// Tells the health-check tasks of replaced pools and of shutdown to stop.
    health_stop: watch::Sender<bool>,
    /// The HTTPS listener's port, for redirects from the HTTP listener.
    pub(crate) https_port: Option<u16>,
    pub(crate) clock: Clock,
}

/// A worker's view of the current configuration.
struct LocalSnapshot {
    /// The generation `current` was taken at.
    generation: u64,
    current: Current,
    counters: Counters,
}

impl LocalSnapshot {
    fn new(generation: u64, snapshot: Arc<Snapshot>) -> LocalSnapshot {
        LocalSnapshot {
            generation,
            counters: snapshot.counters.for_worker(),
            current: Current(Arc::new(snapshot)),
        }
    }
}

/// A request's snapshot. The outer `Arc` is one worker's: cloning it per request writes a
/// reference count that only that worker writes; the snapshot's own count moves once per
/// worker and reload.
#[derive(Clone)]
// The second allocation is the point: a reference count of this worker's own.
#[allow(clippy::redundant_allocation)]
pub(crate) struct Current(Arc<Arc<Snapshot>>);

impl std::ops::Deref for Current {
    type Target = Snapshot;

    fn deref(&self) -> &Snapshot {
        &self.0
    }
}

impl Shared {
    pub fn is_ready(&self) -> bool {
        !self.draining.load(Ordering::Relaxed) && self.snapshot.load().ready()
    }

    /// The current snapshot and the counters to count a request in, through this worker's
    /// handles: refreshed when a reload has bumped the generation since this worker last
    /// looked.
    pub(crate) fn current(&self) -> (Current, Counters) {
        let generation = self.generation.load(Ordering::Acquire);
        let mut local = match self.local.local().lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if local.generation != generation {
            *local = LocalSnapshot::new(generation, self.snapshot.load_full());
        }
        (local.current.clone(), local.counters.clone())
    }
}

/// Already-bound sockets, so tests can bind `127.0.0.1:0` and read the port back.
#[derive(Default)]
pub struct Listeners {
    pub https: Option<TcpListener>,
    pub http: Option<TcpListener>,
    pub admin: Option<TcpListener>,
}

impl Listeners {
    /// Binds the addresses of `[server]`. The public listeners are bound with `SO_REUSEPORT`,
    /// so that each worker can bind a socket of its own to the same address and the kernel
    /// spreads new connections over them.
    pub async fn bind(server: &ServerConfig) -> std::io::Result<Listeners> {
        fn bind(
            addr: Option<SocketAddr>,
            what: &str,
            reuse_port: bool,
        ) -> std::io::Result<Option<TcpListener>> {
            let Some(addr) = addr else {
                return Ok(None);
            };
            bind_socket(addr, reuse_port)
                .and_then(TcpListener::from_std)
                .map(Some)
                .map_err(|e| {
                    std::io::Error::new(
                        e.kind(),
                        format!("server.{what}: cannot listen on {addr}: {e}"),
                    )
                })
        }
        Ok(Listeners {
            https: bind(server.https_listen, "https_listen", true)?,
            http: bind(server.http_listen, "http_listen", true)?,
            admin: bind(server.admin_listen, "admin_listen", false)?,
        })
    }
}

/// A listening socket on `addr`, non-blocking, with `SO_REUSEADDR` (as std and tokio bind)
/// and, when asked, `SO_REUSEPORT`.
fn bind_socket(addr: SocketAddr, reuse_port: bool) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    // tokio's (mio's) backlog.
    socket.listen(1024)?;
    Ok(socket.into())
}

/// One worker's copy of a public listener: a socket of its own on the same address when the
/// listener was bound with `SO_REUSEPORT` (the kernel then spreads connections over the
/// workers' sockets), else the same socket shared (the workers then take turns at accepting).
fn listener_for_worker(listener: &std::net::TcpListener) -> std::io::Result<std::net::TcpListener> {
    if socket2::SockRef::from(listener).reuse_port()? {
        bind_socket(listener.local_addr()?, true)
    } else {
        listener.try_clone()
    }
}

/// A public listener, the TLS acceptor of its connections (`None`: plain HTTP).
type Public = (TcpListener, Option<tokio_rustls::TlsAcceptor>);

/// A started gateway. Dropping it does not stop it; the shutdown future given to
/// [`Gateway::start`] does.
pub struct Gateway {
    shared: Arc<Shared>,
    done: tokio::task::JoinHandle<()>,
    pub https_addr: Option<SocketAddr>,
    pub http_addr: Option<SocketAddr>,
    pub admin_addr: Option<SocketAddr>,
}

/// Where the public listeners' connections are served.
enum Serving {
    /// On the runtime that called [`Gateway::start`].
    CallerRuntime,
    /// On this many threads, each with a single-threaded runtime of its own.
    Workers(usize),
}

impl Gateway {
    /// Starts serving on `listeners` with `config` until `shutdown` completes, then drains:
    /// readiness turns 503 at once, listeners stop accepting, requests in flight get up to
    /// `shutdown_grace` to finish. Connections are served on the caller's runtime (tests, an
    /// embedding program); the binary uses [`Gateway::start_workers`].
    pub async fn start(
        config: Config,
        listeners: Listeners,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<Gateway, StartError> {
        Gateway::start_with_clock(config, listeners, shutdown, Clock::system()).await
    }

    /// [`Gateway::start`] with a clock of the caller's choosing (tests use
    /// [`Clock::from_fn`] to move time forward).
    pub async fn start_with_clock(
        config: Config,
        listeners: Listeners,
        shutdown: impl Future<Output = ()> + Send + 'static,
        clock: Clock,
    ) -> Result<Gateway, StartError> {
        Gateway::launch(config, listeners, shutdown, clock, Serving::CallerRuntime).await
    }

    /// [`Gateway::start`] with the worker model: `[server] workers` threads, each with a
    /// single-threaded tokio runtime of its own (thread `mfagw-worker-<i>`), each accepting and
    /// serving its own connections from accept to close — on a socket of its own when the
    /// listener has `SO_REUSEPORT` (as [`Listeners::bind`] binds it), else on the shared one.
    /// The admin listener, health checks, the provider refresh and the drain stay on the
    /// caller's runtime.
    pub async fn start_workers(
        config: Config,
        listeners: Listeners,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<Gateway, StartError> {
        let workers = config.server.workers;
        Gateway::launch(
            config,
            listeners,
            shutdown,
            Clock::system(),
            Serving::Workers(workers),
        )
        .await
    }

    async fn launch(
        config: Config,
        listeners: Listeners,
        shutdown: impl Future<Output = ()> + Send + 'static,
        clock: Clock,
        serving: Serving,
    ) -> Result<Gateway, StartError> {
        let shards = match serving {
            Serving::CallerRuntime => 1,
            Serving::Workers(n) => n.max(1),
        };
        let metrics = Arc::new(Metrics::new(shards));
        let (snapshot, certs) = Snapshot::build(config, &metrics, None, clock.clone())?;
        if listeners.https.is_some() && certs.is_empty() {
            return Err(StartProblem::HttpsWithoutCertificates.into());
        }
        let cert_store = (!certs.is_empty()).then(|| CertStore::new(certs));
        let shutdown_grace = snapshot.config.server.shutdown_grace;
        let max_connections = snapshot.config.server.max_connections;
        let https_addr = listeners.https.as_ref().and_then(|l| l.local_addr().ok());
        let http_addr = listeners.http.as_ref().and_then(|l| l.local_addr().ok());
        let admin_addr = listeners.admin.as_ref().and_then(|l| l.local_addr().ok());

        let mut public: Vec<Public> = Vec::new();
        if let Some(listener) = listeners.https {
            let tls = match &cert_store {
                Some(store) => tls::server_config(store.clone()).map_err(StartProblem::from)?,
                None => return Err(StartProblem::HttpsWithoutCertificates.into()),
            };
            tracing::info!(address = %https_addr.map_or_else(String::new, |a| a.to_string()), "listening for HTTPS");
            public.push((listener, Some(tokio_rustls::TlsAcceptor::from(tls))));
        }
        if let Some(listener) = listeners.http {
            if cert_store.is_some() {
                tracing::info!(address = %http_addr.map_or_else(String::new, |a| a.to_string()), "listening for HTTP (redirects to HTTPS)");
            } else {
                tracing::warn!(address = %http_addr.map_or_else(String::new, |a| a.to_string()), "listening for plain HTTP with no TLS configured: the load balancer in front must terminate TLS");
            }
            public.push((listener, None));
        }
        // Each worker's listeners, made before anything starts: a failure is a start error.
        let (here, per_worker) = match serving {
            Serving::CallerRuntime => (public, None),
            Serving::Workers(n) => (Vec::new(), Some(worker_listeners(public, n.max(1))?)),
        };

        let (health_stop, _) = watch::channel(false);
        for pool in &snapshot.pools {
            pool.spawn_background(health_stop.subscribe());
        }
        if let Some(sign_in) = &snapshot.sign_in {
            sign_in.spawn_background(&health_stop);
        }
        let snapshot = Arc::new(snapshot);
        let shared = Arc::new(Shared {
            local: PerWorker::new(shards, || {
                Mutex::new(LocalSnapshot::new(0, snapshot.clone()))
            }),
            snapshot: ArcSwap::new(snapshot),
            generation: AtomicU64::new(0),
            metrics,
            draining: AtomicBool::new(false),
            certs: cert_store,
            health_stop,
            https_port: https_addr.map(|a| a.port()),
            clock,
        });

        let drain = CancellationToken::new();
        let serve = Serve {
            shared: shared.clone(),
            limit: Arc::new(Semaphore::new(max_connections)),
            drain: drain.clone(),
            connections: TaskTracker::new(),
            acceptors: TaskTracker::new(),
        };
        // Workers run until `stopped`: after the drain, once the connections are done or
        // shutdown_grace has passed.
        let stopped = CancellationToken::new();
        let mut worker_exits = Vec::new();
        match per_worker {
            None => {
                for (listener, tls) in here {
                    serve.accept(listener, tls);
                }
            }
            Some(per_worker) => {
                for (index, listeners) in per_worker.into_iter().enumerate() {
                    worker_exits.push(spawn_worker(index, listeners, &serve, stopped.clone())?);
                }
            }
        }
        let admin_stop = CancellationToken::new();
        let admin_task = listeners.admin.map(|listener| {
            tracing::info!(address = %admin_addr.map_or_else(String::new, |a| a.to_string()), "admin listener (healthz, readyz, metrics)");
            // The admin listener outlives the drain, so /readyz can be read while it happens.
            tokio::spawn(admin::serve(listener, shared.clone(), admin_stop.clone()))
        });

        let done = {
            let shared = shared.clone();
            tokio::spawn(async move {
                shutdown.await;
                shared.draining.store(true, Ordering::SeqCst);
                tracing::info!(grace = ?shutdown_grace, "shutting down: readiness is now 503, finishing requests in flight");
                drain.cancel();
                serve.acceptors.close();
                serve.acceptors.wait().await;
                serve.connections.close();
                if tokio::time::timeout(shutdown_grace, serve.connections.wait())
                    .await
                    .is_err()
                {
                    tracing::warn!(
                        "shutdown_grace elapsed with requests still in flight; closing them"
                    );
                }
                // Workers drop their runtimes, and with them any connection still open.
                stopped.cancel();
                for exited in worker_exits {
                    let _ = exited.await;
                }
                let _ = shared.health_stop.send(true);
                admin_stop.cancel();
                if let Some(task) = admin_task {
                    let _ = task.await;
                }
                tracing::info!("stopped");
            })
        };

        Ok(Gateway {
            shared,
            done,
            https_addr,
            http_addr,
            admin_addr,
        })
    }

    /// Applies a new configuration to new requests and new TLS handshakes. On error the running
    /// configuration stays in force. Listen addresses are bound at start: changing them needs a
    /// restart, and a reload that changes them (or `server.workers`) says so.
    pub fn reload(&self, config: Config) -> Result<(), StartError> {
        let result = self.try_reload(config);
        self.shared.metrics.reloaded(result.is_ok());
        result
    }

    fn try_reload(&self, config: Config) -> Result<(), StartError> {
        let current = self.shared.snapshot.load();
        let old = &current.config.server;
        let new = &config.server;
        if old.https_listen != new.https_listen
            || old.http_listen != new.http_listen
            || old.admin_listen != new.admin_listen
        {
            tracing::warn!(
                "listen addresses changed in the file; they take effect only after a restart"
            );
        }
        if old.workers != new.workers {
            tracing::warn!(
                running = old.workers,
                file = new.workers,
                "server.workers changed in the file; it takes effect only after a restart"
            );
        }
        if self.shared.certs.is_none() && !config.tls.certificates.is_empty() {
            return Err(StartProblem::HttpsAddedOnReload.into());
        }
        let (snapshot, certs) = Snapshot::build(
            config,
            &self.shared.metrics,
            Some(&current),
            self.shared.clock.clone(),
        )?;
        if let Some(store) = &self.shared.certs {
            if certs.is_empty() {
                return Err(StartProblem::CertificatesRemovedOnReload.into());
            }
            store.replace(certs);
        }
        for pool in &snapshot.pools {
            pool.spawn_background(self.shared.health_stop.subscribe());
        }
        if let Some(sign_in) = &snapshot.sign_in {
            let kept = current
                .sign_in
                .as_ref()
                .is_some_and(|old| Arc::ptr_eq(old.provider(), sign_in.provider()));
            if !kept {
                sign_in
                    .provider()
                    .spawn_refresh(self.shared.health_stop.subscribe());
            }
            // Started once per store: a reload that keeps `[redis]` keeps its connection.
            sign_in.spawn_shared(&self.shared.health_stop);
        }
        self.shared.snapshot.store(Arc::new(snapshot));
        // Workers see the new generation at their next request and take the new snapshot.
        self.shared.generation.fetch_add(1, Ordering::Release);
        Ok(())
    }

    /// Counts a reload refused before it reached [`Gateway::reload`] (the file did not parse).
    pub fn reload_failed(&self) {
        self.shared.metrics.reloaded(false);
    }

    pub fn is_ready(&self) -> bool {
        self.shared.is_ready()
    }

    /// Completes once the gateway has drained after its shutdown future fired.
    pub async fn wait(self) {
        let _ = self.done.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MapSecrets;
    use crate::proxy::PoolError;

    #[test]
    fn every_unreadable_file_is_reported_with_its_key_path_not_only_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str| dir.path().join(name).display().to_string();
        let toml = format!(
            r#"
[server]
https_listen = "127.0.0.1:0"

[[tls.certificates]]
cert = "{a_cert}"
key = "{a_key}"

[[tls.certificates]]
cert = "{b_cert}"
key = "{b_key}"

[upstreams.exchange]
servers = ["https://ex01.corp.contoso.com"]
ca_file = "{ca}"

[[routes]]
host = "mail.contoso.com"
path = "/owa"
upstream = "exchange"
access = "public"
"#,
            a_cert = file("a.pem"),
            a_key = file("a.key"),
            b_cert = file("b.pem"),
            b_key = file("b.key"),
            ca = file("corp-root.pem"),
        );
        let config = Config::from_toml(&toml, &MapSecrets::new()).unwrap();
        let metrics = Arc::new(Metrics::default());
        let Err(error) = Snapshot::build(config, &metrics, None, Clock::system()) else {
            panic!("a configuration naming absent files was put into service");
        };

        let problems: Vec<_> = error.iter().collect();
        assert!(
            matches!(
                problems[..],
                [
                    StartProblem::Certificate(CertError::CertUnreadable { index: 0, .. }),
                    StartProblem::Certificate(CertError::KeyUnreadable { index: 0, .. }),
                    StartProblem::Certificate(CertError::CertUnreadable { index: 1, .. }),
                    StartProblem::Certificate(CertError::KeyUnreadable { index: 1, .. }),
                    StartProblem::Upstream(PoolError::CaFileUnreadable { .. }),
                ]
            ),
            "{error:?}"
        );
        let printed = error.to_string();
        let lines: Vec<&str> = printed.lines().collect();
        let expected_starts = [
            format!("tls.certificates[0].cert: cannot read {}: ", file("a.pem")),
            format!(
                "tls.certificates[0].key: cannot read a private key from {}: ",
                file("a.key")
            ),
            format!("tls.certificates[1].cert: cannot read {}: ", file("b.pem")),
            format!(
                "tls.certificates[1].key: cannot read a private key from {}: ",
                file("b.key")
            ),
            format!(
                "upstreams.exchange.ca_file: cannot read {}: ",
                file("corp-root.pem")
            ),
        ];
        assert_eq!(lines.len(), expected_starts.len(), "{printed}");
        for (line, start) in lines.iter().zip(&expected_starts) {
            assert!(line.starts_with(start.as_str()), "{line:?} vs {start:?}");
        }
    }

    #[test]
    fn a_reload_keeps_the_kerberos_engine_and_its_tickets_unless_the_section_changed() {
        use crate::config::KerberosUser;
        use crate::sso::kerberos::KerberosReason;
        use std::time::Duration;
        let started = KerberosConfig {
            realm: "CORP.CONTOSO.COM".into(),
            kdc: vec!["dc01.corp.contoso.com:88".into()],
            principal: "svc-mfagw@CORP.CONTOSO.COM".into(),
            keytab: "/etc/mfa-gateway/svc-mfagw.keytab".into(),
            user: KerberosUser::Upn,
            ticket_lifetime: Duration::from_secs(36000),
        };
        let running = KerberosSso::new(&started);
        running.count_failure(KerberosReason::KdcUnreachable);
        let kdc_failures = |engine: &KerberosSso| {
            engine
                .counters()
                .failures
                .iter()
                .find(|(reason, _)| *reason == KerberosReason::KdcUnreachable)
                .map(|(_, n)| *n)
        };
        // Unchanged: the same engine (shared cache and counters).
        let kept = kerberos_after_reload(&running, &started);
        assert_eq!(kdc_failures(&kept), Some(1));

        // A new lifetime applies at once; a new realm only at the next restart.
        let mut changed = started.clone();
        changed.ticket_lifetime = Duration::from_secs(3600);
        changed.realm = "OTHER.CONTOSO.COM".into();
        let renewed = kerberos_after_reload(&running, &changed);
        assert_eq!(kdc_failures(&renewed), Some(0));
        assert_eq!(renewed.config().ticket_lifetime, Duration::from_secs(3600));
        assert_eq!(renewed.config().realm, "CORP.CONTOSO.COM");
    }
}
