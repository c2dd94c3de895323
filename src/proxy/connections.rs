//! The gateway's own connections to Exchange: opened by [`Connector`] (TCP, then TLS for
//! `https://` servers, then HTTP/1.1 over `hyper::client::conn::http1`) and kept between
//! requests in [`IdleConnections`], one set per worker — the worker model of nginx and Envoy:
//! a connection is opened, used and put back by the worker that serves the request, so no
//! core ever waits for or writes to another core's pool.
//!
//! A connection may belong to an owner (a user whose identity the connection itself carries,
//! such as a Kerberos-authenticated connection to IIS): it is only ever handed again to the
//! same owner. A request without an owner never gets an owned connection, and an owned one
//! never gets a connection opened without an owner.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::client::conn::TrySendError;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::body::RequestBody;

/// How long a connection may wait idle for its next request before it is closed. IIS closes
/// idle connections after 120 s (its `connectionTimeout`): closing first means the gateway
/// rarely sends a request into a connection the server is closing at that very moment.
pub(crate) const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Idle connections kept per worker and server (owned ones included); more are closed.
pub(crate) const MAX_IDLE_PER_SERVER: usize = 1024;

/// TCP keep-alive probes after this long without traffic: a firewall between the gateway and
/// Exchange that silently drops idle flows is noticed before the connection is reused.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

/// Why a connection to an Exchange server could not be opened. All of these take the server
/// out of rotation for a while: the next request tries another one.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    #[error("dns error: {0}")]
    Resolve(std::io::Error),
    #[error("dns error: the name resolves to no address")]
    NoAddress,
    #[error("tcp connect error: {0}")]
    Tcp(std::io::Error),
    #[error("no connection within connect_timeout ({0:?})")]
    Timeout(Duration),
    #[error("{0:?} is not a name a TLS certificate can be checked against")]
    ServerName(String),
    #[error("tls handshake: {0}")]
    Tls(std::io::Error),
    #[error("http/1.1 handshake: {0}")]
    Handshake(hyper::Error),
}

/// Where one Exchange server is reached: its host and port and, for `https://`, the name its
/// certificate must carry.
pub(crate) struct Target {
    /// The host without the brackets of an IPv6 literal.
    host: Box<str>,
    port: u16,
    /// `Some` for `https://` servers; `Err` keeps a host that makes no TLS name for the error.
    tls_name: Option<Result<ServerName<'static>, String>>,
    /// The certificate the server presented last (DER), shared by all its connections: a
    /// server presents the same one on every connection until it is renewed.
    certificate: Mutex<Option<ServerCertificate>>,
}

/// The DER of the certificate an Exchange server presented on a connection (the first of its
/// chain): what Extended Protection's channel binding (`tls-server-end-point`) is the hash of.
pub type ServerCertificate = Arc<[u8]>;

impl Target {
    /// `der`, as the one shared copy when the server presented the same certificate before.
    fn remember_certificate(&self, der: &[u8]) -> ServerCertificate {
        let mut last = self
            .certificate
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match &*last {
            Some(known) if **known == *der => known.clone(),
            _ => {
                let fresh: ServerCertificate = Arc::from(der);
                *last = Some(fresh.clone());
                fresh
            }
        }
    }
}

impl Target {
    pub(crate) fn new(
        authority: &http::uri::Authority,
        https: bool,
        tls_server_name: Option<&ServerName<'static>>,
    ) -> Target {
        let host = authority.host();
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tls_name = https.then(|| match tls_server_name {
            Some(name) => Ok(name.clone()),
            None => ServerName::try_from(host.to_owned()).map_err(|_| host.to_owned()),
        });
        Target {
            host: host.into(),
            port,
            tls_name,
            certificate: Mutex::new(None),
        }
    }
}

/// Opens connections to Exchange servers: TCP with `connect_timeout`, `TCP_NODELAY` and
/// keep-alive, then TLS (rustls, ring) for `https://` servers, then HTTP/1.1. The
/// connection's own task is spawned on the current runtime: on a worker, the same thread.
pub(crate) struct Connector {
    /// `None` when no server of the upstream is `https://`.
    tls: Option<TlsConnector>,
    connect_timeout: Duration,
    http1: http1::Builder,
}

impl Connector {
    pub(crate) fn new(tls: Option<rustls::ClientConfig>, connect_timeout: Duration) -> Connector {
        Connector {
            tls: tls.map(|config| TlsConnector::from(Arc::new(config))),
            connect_timeout,
            http1: http1::Builder::new(),
        }
    }

    /// A new connection to `target`, ready for a request, and the certificate the server
    /// presented on it (`https://` servers). TCP and TLS together get `connect_timeout`.
    pub(crate) async fn open(&self, target: &Target) -> Result<Opened, ConnectError> {
        tokio::time::timeout(self.connect_timeout, self.open_untimed(target))
            .await
            .map_err(|_| ConnectError::Timeout(self.connect_timeout))?
    }

    async fn open_untimed(&self, target: &Target) -> Result<Opened, ConnectError> {
        let tcp = tcp_connect(&target.host, target.port).await?;
        match &target.tls_name {
            None => Ok((self.http1_over(tcp).await?, None)),
            Some(name) => {
                let name = name.clone().map_err(ConnectError::ServerName)?;
                // Without a TLS configuration no server is https: not reached.
                let Some(tls) = &self.tls else {
                    return Err(ConnectError::ServerName(target.host.to_string()));
                };
                let stream = tls.connect(name, tcp).await.map_err(ConnectError::Tls)?;
                let certificate = stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|chain| chain.first())
                    .map(|der| target.remember_certificate(der));
                Ok((self.http1_over(stream).await?, certificate))
            }
        }
    }

    async fn http1_over<T>(&self, io: T) -> Result<SendRequest<RequestBody>, ConnectError>
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, connection) = self
            .http1
            .handshake(TokioIo::new(io))
            .await
            .map_err(ConnectError::Handshake)?;
        // With upgrades: a WebSocket's 101 hands the connection to the relay.
        tokio::spawn(async move {
            if let Err(e) = connection.with_upgrades().await {
                tracing::debug!(error = %e, "connection to Exchange ended with an error");
            }
        });
        Ok(sender)
    }
}

async fn tcp_connect(host: &str, port: u16) -> Result<TcpStream, ConnectError> {
    let stream = match host.parse::<IpAddr>() {
        Ok(ip) => TcpStream::connect(SocketAddr::new(ip, port))
            .await
            .map_err(ConnectError::Tcp)?,
        Err(_) => {
            let addresses = tokio::net::lookup_host((host, port))
                .await
                .map_err(ConnectError::Resolve)?;
            let mut last_error = None;
            let mut connected = None;
            for address in addresses {
                match TcpStream::connect(address).await {
                    Ok(stream) => {
                        connected = Some(stream);
                        break;
                    }
                    Err(e) => last_error = Some(e),
                }
            }
            match (connected, last_error) {
                (Some(stream), _) => stream,
                (None, Some(e)) => return Err(ConnectError::Tcp(e)),
                (None, None) => return Err(ConnectError::NoAddress),
            }
        }
    };
    stream.set_nodelay(true).map_err(ConnectError::Tcp)?;
    let keepalive = socket2::TcpKeepalive::new().with_time(TCP_KEEPALIVE);
    if let Err(e) = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive) {
        tracing::debug!(error = %e, "cannot set TCP keep-alive on a connection to Exchange");
    }
    Ok(stream)
}

/// A new connection and the certificate its server presented.
pub(crate) type Opened = (SendRequest<RequestBody>, Option<ServerCertificate>);

/// Who a connection belongs to: `None` for connections any request may use.
pub type Owner = Option<Arc<str>>;

struct Idle {
    sender: SendRequest<RequestBody>,
    certificate: Option<ServerCertificate>,
    since: Instant,
}

/// One server's idle connections on one worker, oldest first.
#[derive(Default)]
struct ServerIdle {
    shared: VecDeque<Idle>,
    owned: HashMap<Arc<str>, VecDeque<Idle>>,
    /// Connections in `shared` and `owned` together.
    count: usize,
}

/// One worker's idle connections and counters. Aligned to its own cache lines: only its worker
/// writes it (and, every [`POOL_IDLE_TIMEOUT`], the reaper).
#[repr(align(128))]
pub(crate) struct Shard {
    /// By server index. The lock is only ever taken by this worker (and the reaper): never
    /// contended, never held across an await.
    idle: Mutex<Box<[ServerIdle]>>,
    /// Round-robin position of this worker's requests.
    pub(crate) next: AtomicUsize,
    opened: AtomicU64,
    reused: AtomicU64,
}

impl Shard {
    pub(crate) fn new(servers: usize) -> Shard {
        Shard {
            idle: Mutex::new((0..servers).map(|_| ServerIdle::default()).collect()),
            next: AtomicUsize::new(0),
            opened: AtomicU64::new(0),
            reused: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Box<[ServerIdle]>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The most recently used idle connection of `server` for `owner` that is still open and
    /// has not waited longer than [`POOL_IDLE_TIMEOUT`].
    fn take(&self, server: usize, owner: Option<&Arc<str>>) -> Option<Idle> {
        let now = Instant::now();
        let mut stale = Vec::new();
        let found = {
            let mut idle = self.lock();
            let entry = idle.get_mut(server)?;
            let mut found = None;
            let mut emptied = false;
            let list = match owner {
                None => Some(&mut entry.shared),
                Some(owner) => entry.owned.get_mut(&**owner),
            };
            if let Some(list) = list {
                while let Some(candidate) = list.pop_back() {
                    if candidate.sender.is_closed()
                        || now.duration_since(candidate.since) > POOL_IDLE_TIMEOUT
                    {
                        stale.push(candidate);
                        continue;
                    }
                    found = Some(candidate);
                    break;
                }
                emptied = list.is_empty();
            }
            if let (Some(owner), true) = (owner, emptied) {
                entry.owned.remove(&**owner);
            }
            entry.count -= stale.len() + usize::from(found.is_some());
            found
        };
        // Closing connections outside the lock.
        drop(stale);
        found
    }

    /// Puts a connection whose last response was read to the end back for the next request
    /// of the same owner.
    fn put(
        &self,
        server: usize,
        owner: Owner,
        sender: SendRequest<RequestBody>,
        certificate: Option<ServerCertificate>,
    ) {
        if sender.is_closed() {
            return;
        }
        let now = Instant::now();
        let mut expired = Vec::new();
        let refused = {
            let mut idle = self.lock();
            let Some(entry) = idle.get_mut(server) else {
                return;
            };
            // An owner without room for its connection gets no (empty) list.
            if entry.count >= MAX_IDLE_PER_SERVER
                && owner
                    .as_ref()
                    .is_some_and(|o| !entry.owned.contains_key(&**o))
            {
                return;
            }
            let list = match owner {
                None => &mut entry.shared,
                Some(owner) => entry.owned.entry(owner).or_default(),
            };
            // The oldest connections first: those past the idle timeout go now.
            while list
                .front()
                .is_some_and(|oldest| now.duration_since(oldest.since) > POOL_IDLE_TIMEOUT)
            {
                expired.extend(list.pop_front());
            }
            entry.count -= expired.len();
            if entry.count >= MAX_IDLE_PER_SERVER {
                Some(sender)
            } else {
                list.push_back(Idle {
                    sender,
                    certificate,
                    since: now,
                });
                entry.count += 1;
                None
            }
        };
        drop((expired, refused));
    }

    /// Closes every connection idle longer than [`POOL_IDLE_TIMEOUT`] or closed by its server.
    fn reap(&self) {
        let now = Instant::now();
        let keep =
            |c: &Idle| !c.sender.is_closed() && now.duration_since(c.since) <= POOL_IDLE_TIMEOUT;
        let mut idle = self.lock();
        for entry in idle.iter_mut() {
            entry.shared.retain(keep);
            for list in entry.owned.values_mut() {
                list.retain(keep);
            }
            entry.owned.retain(|_, list| !list.is_empty());
            entry.count =
                entry.shared.len() + entry.owned.values().map(VecDeque::len).sum::<usize>();
        }
    }

    fn idle_count(&self) -> usize {
        self.lock().iter().map(|entry| entry.count).sum()
    }
}

/// The per-worker idle connections of one upstream, and how they are used.
pub(crate) struct IdleConnections {
    shards: crate::worker::PerWorker<Arc<Shard>>,
}

/// Connections opened and reused, summed over the workers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnectionCounts {
    pub opened: u64,
    pub reused: u64,
    pub idle: u64,
}

impl IdleConnections {
    pub(crate) fn new(workers: usize, servers: usize) -> IdleConnections {
        IdleConnections {
            shards: crate::worker::PerWorker::new(workers, || Arc::new(Shard::new(servers))),
        }
    }

    /// This worker's shard.
    pub(crate) fn local(&self) -> &Arc<Shard> {
        self.shards.local()
    }

    /// A connection to `server` for `owner`: an idle one of this worker when there is one
    /// (unless `fresh`), else a new one from `connector`.
    pub(crate) async fn checkout(
        &self,
        connector: &Connector,
        target: &Target,
        server: usize,
        owner: Option<&Arc<str>>,
        fresh: bool,
    ) -> Result<Lease, ConnectError> {
        let shard = self.shards.local();
        if !fresh {
            while let Some(mut idle) = shard.take(server, owner) {
                // Ready at once unless its last response is still being wound up; an error
                // means the server closed it meanwhile.
                if idle.sender.ready().await.is_ok() {
                    shard.reused.fetch_add(1, Ordering::Relaxed);
                    return Ok(Lease {
                        sender: idle.sender,
                        certificate: idle.certificate,
                        shard: shard.clone(),
                        server,
                        owner: owner.cloned(),
                        reused: true,
                    });
                }
            }
        }
        let (sender, certificate) = connector.open(target).await?;
        shard.opened.fetch_add(1, Ordering::Relaxed);
        Ok(Lease {
            sender,
            certificate,
            shard: shard.clone(),
            server,
            owner: owner.cloned(),
            reused: false,
        })
    }

    pub(crate) fn reap(&self) {
        for shard in self.shards.iter() {
            shard.reap();
        }
    }

    pub(crate) fn counts(&self) -> ConnectionCounts {
        self.shards
            .iter()
            .fold(ConnectionCounts::default(), |sum, shard| ConnectionCounts {
                opened: sum.opened + shard.opened.load(Ordering::Relaxed),
                reused: sum.reused + shard.reused.load(Ordering::Relaxed),
                idle: sum.idle + shard.idle_count() as u64,
            })
    }
}

/// A connection lent to one request. [`Lease::reuse`] gives it back once its response was read
/// to the end; dropped otherwise, it is closed: a connection with part of a response still
/// unread must never carry the next request.
pub struct Lease {
    sender: SendRequest<RequestBody>,
    certificate: Option<ServerCertificate>,
    shard: Arc<Shard>,
    server: usize,
    owner: Owner,
    reused: bool,
}

impl Lease {
    /// Whether the connection had served a request before (a failure before any answer may
    /// then be the server closing it while idle).
    pub(crate) fn reused(&self) -> bool {
        self.reused
    }

    /// The certificate the server presented on this connection (`https://` servers): the
    /// channel binding of a Kerberos token sent over it is made from it.
    pub fn server_certificate(&self) -> Option<&ServerCertificate> {
        self.certificate.as_ref()
    }

    pub(crate) fn send(
        &mut self,
        request: Request<RequestBody>,
    ) -> impl std::future::Future<Output = Result<Response<Incoming>, TrySendError<Request<RequestBody>>>>
    {
        self.sender.try_send_request(request)
    }

    /// The response was read to the end: the connection waits for the next request of the
    /// same owner on the worker that lent it.
    pub fn reuse(self) {
        let Lease {
            sender,
            certificate,
            shard,
            server,
            owner,
            ..
        } = self;
        shard.put(server, owner, sender, certificate);
    }
}
