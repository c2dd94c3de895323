//! What several gateways share through Redis (`[redis]`): revocations and the single use of
//! login states. Sealed cookies let any gateway serve any request; what they cannot do alone is
//! end a session everywhere — Entra's front-channel logout reaches *one* gateway, a sign-out
//! reaches the one the load balancer picked — or refuse a login state replayed on another
//! gateway.
//!
//! - A revocation is applied to this gateway's own [`Revocations`] at once, then written to
//!   Redis twice: a key that expires when the last session it names would have
//!   (`{prefix}revoked:…`, for gateways that start or reconnect later), and a message on
//!   `{prefix}revocations` that every connected gateway applies within milliseconds. A
//!   revocation that cannot be written waits in a bounded queue and is written when Redis is
//!   back.
//! - Each gateway subscribes first, then reads every `{prefix}revoked:*` key (catch-up), and
//!   only then counts Redis as available: nothing published meanwhile is missed.
//! - A login state is claimed with `SET NX` and an expiry of `oidc.login_timeout`: the second
//!   claim, on any gateway, is a replay.
//! - Redis unreachable: [`SharedStore::available`] is false until the next catch-up, and
//!   `on_unavailable` decides (`refuse`: sessions and sign-ins fail closed; `allow`: served from
//!   cookies), loudly.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ::redis::aio::{MultiplexedConnection, PubSub};
use ::redis::{AsyncConnectionConfig, Client, RedisError, RedisResult};
use arc_swap::ArcSwapOption;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use futures_util::StreamExt;
use tokio::sync::Notify;

use super::{Revocations, SessionId};
use crate::clock::Clock;
use crate::config::{OnUnavailable, RedisConfig, RedisMode};

/// Each command, and each connection attempt, gives up after this long: a request never waits
/// longer on Redis.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(1);
/// The connection is checked this often, so a Redis that stops answering without closing the
/// connection is noticed within about two seconds.
const PING_INTERVAL: Duration = Duration::from_secs(1);
const FIRST_RETRY: Duration = Duration::from_millis(250);
const MAX_RETRY: Duration = Duration::from_secs(2);
/// With Sentinel, how long a revocation's write waits for a replica to acknowledge it.
const REPLICA_WAIT_MS: u64 = 250;
/// Revocations kept for writing while Redis is unreachable; beyond that the oldest are dropped
/// (they still hold on this gateway).
const MAX_PENDING: usize = 10_000;

/// One revocation as it travels between gateways.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SharedRevocation {
    /// A signed-out session, until it would have expired.
    Session { id: SessionId, until: u64 },
    /// Every session of an Entra sign-in issued up to `revoked_at` (front-channel logout).
    Sid {
        sid: String,
        revoked_at: u64,
        until: u64,
    },
}

impl SharedRevocation {
    fn until(&self) -> u64 {
        match self {
            SharedRevocation::Session { until, .. } | SharedRevocation::Sid { until, .. } => *until,
        }
    }

    /// The key's name after the prefix, and its value.
    fn key_and_value(&self) -> (String, String) {
        match self {
            SharedRevocation::Session { id, until } => {
                (format!("revoked:s:{id}"), until.to_string())
            }
            SharedRevocation::Sid {
                sid,
                revoked_at,
                until,
            } => (
                format!("revoked:f:{}", URL_SAFE_NO_PAD.encode(sid.as_bytes())),
                format!("{revoked_at} {until}"),
            ),
        }
    }

    /// The message published: the key's name after the prefix, a space, its value.
    fn message(&self) -> String {
        let (key, value) = self.key_and_value();
        format!("{key} {value}")
    }

    /// Reads a key (after the prefix) and its value, or a message. Anything else is `None`:
    /// Redis is shared infrastructure, and what is in it is not trusted to be well formed.
    fn parse(key: &str, value: &str) -> Option<SharedRevocation> {
        if let Some(hex) = key.strip_prefix("revoked:s:") {
            let id = parse_session_id(hex)?;
            let until = value.trim().parse().ok()?;
            return Some(SharedRevocation::Session { id, until });
        }
        let encoded = key.strip_prefix("revoked:f:")?;
        let sid = String::from_utf8(URL_SAFE_NO_PAD.decode(encoded).ok()?).ok()?;
        if sid.is_empty() || sid.len() > 256 {
            return None;
        }
        let (revoked_at, until) = value.trim().split_once(' ')?;
        Some(SharedRevocation::Sid {
            sid,
            revoked_at: revoked_at.parse().ok()?,
            until: until.parse().ok()?,
        })
    }

    fn parse_message(message: &str) -> Option<SharedRevocation> {
        let (key, value) = message.split_once(' ')?;
        SharedRevocation::parse(key, value)
    }

    fn apply(&self, revocations: &Revocations, now: u64) {
        match self {
            SharedRevocation::Session { id, until } => {
                revocations.revoke_session_id(*id, *until, now)
            }
            SharedRevocation::Sid {
                sid,
                revoked_at,
                until,
            } => revocations.revoke_sid_until(sid, *revoked_at, *until, now),
        }
    }
}

fn parse_session_id(hex: &str) -> Option<SessionId> {
    if hex.len() != 32 {
        return None;
    }
    let mut bytes = [0u8; 16];
    for (i, byte) in bytes.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(SessionId(bytes))
}

/// Redis could not answer in time (down, unreachable, refused the command).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedStoreUnavailable;

/// What the metrics and `/readyz` show of Redis.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SharedStoreStatus {
    /// Subscribed and caught up.
    pub available: bool,
    /// Revocations written to Redis, received from it, and waiting to be written.
    pub published: u64,
    pub received: u64,
    pub pending: usize,
    /// Times the connection was lost or could not be made.
    pub connection_failures: u64,
}

pub struct SharedStore {
    config: RedisConfig,
    revocations: Arc<Revocations>,
    clock: Clock,
    connection: ArcSwapOption<MultiplexedConnection>,
    available: AtomicBool,
    /// Caught up at least once since start: until then, with `refuse`, the gateway is not
    /// ready.
    caught_up_once: AtomicBool,
    spawned: AtomicBool,
    pending: Mutex<Vec<SharedRevocation>>,
    /// Wakes the connection task: a command failed, reconnect now.
    reconnect: Notify,
    published: AtomicU64,
    received: AtomicU64,
    failures: AtomicU64,
}

impl SharedStore {
    pub fn new(config: RedisConfig, revocations: Arc<Revocations>, clock: Clock) -> Arc<Self> {
        Arc::new(SharedStore {
            config,
            revocations,
            clock,
            connection: ArcSwapOption::empty(),
            available: AtomicBool::new(false),
            caught_up_once: AtomicBool::new(false),
            spawned: AtomicBool::new(false),
            pending: Mutex::new(Vec::new()),
            reconnect: Notify::new(),
            published: AtomicU64::new(0),
            received: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        })
    }

    pub fn config(&self) -> &RedisConfig {
        &self.config
    }

    /// Subscribed and caught up: revocations made anywhere reach this gateway.
    pub fn available(&self) -> bool {
        self.available.load(Ordering::Acquire)
    }

    /// Whether the gateway may report ready: with `refuse`, not before the first catch-up.
    pub fn ready(&self) -> bool {
        self.config.on_unavailable == OnUnavailable::Allow
            || self.caught_up_once.load(Ordering::Acquire)
    }

    /// Whether requests must be refused now: Redis is unavailable and `on_unavailable =
    /// "refuse"`.
    pub fn refuses(&self) -> bool {
        self.config.on_unavailable == OnUnavailable::Refuse && !self.available()
    }

    pub fn status(&self) -> SharedStoreStatus {
        SharedStoreStatus {
            available: self.available(),
            published: self.published.load(Ordering::Relaxed),
            received: self.received.load(Ordering::Relaxed),
            pending: self.lock_pending().len(),
            connection_failures: self.failures.load(Ordering::Relaxed),
        }
    }

    fn channel(&self) -> String {
        format!("{}revocations", self.config.key_prefix)
    }

    /// Shares a revocation already applied here: written in the background, queued while
    /// Redis is unreachable.
    pub fn publish(self: &Arc<Self>, revocation: SharedRevocation) {
        let store = self.clone();
        // Outside a runtime (unit tests of the engine) there is nothing to share with.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            if store.write(&revocation).await.is_err() {
                store.queue(revocation);
            }
        });
    }

    fn queue(&self, revocation: SharedRevocation) {
        let mut pending = self.lock_pending();
        if pending.len() >= MAX_PENDING {
            pending.remove(0);
        }
        pending.push(revocation);
    }

    async fn write(&self, revocation: &SharedRevocation) -> Result<(), SharedStoreUnavailable> {
        let now = self.clock.now();
        let until = revocation.until();
        if until <= now {
            return Ok(());
        }
        let (key, value) = revocation.key_and_value();
        let mut pipe = ::redis::pipe();
        pipe.cmd("SET")
            .arg(format!("{}{key}", self.config.key_prefix))
            .arg(value)
            .arg("EX")
            .arg(until - now)
            .ignore()
            .cmd("PUBLISH")
            .arg(self.channel())
            .arg(revocation.message())
            .ignore();
        if self.config.mode == RedisMode::Sentinel {
            // Replication is asynchronous: a failover right after the write could promote a
            // replica without it. Wait (briefly) for one replica to have it.
            pipe.cmd("WAIT").arg(1).arg(REPLICA_WAIT_MS).ignore();
        }
        self.run(|mut connection| async move { pipe.query_async::<()>(&mut connection).await })
            .await?;
        self.published.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Claims a login state for one sign-in across every gateway; `Ok(false)` when another
    /// callback (here or on another gateway) claimed it first.
    pub async fn claim_state(
        &self,
        state: &str,
        ttl: Duration,
    ) -> Result<bool, SharedStoreUnavailable> {
        if !self.available() {
            return Err(SharedStoreUnavailable);
        }
        let key = self.state_key(state);
        let ttl = ttl.as_secs().max(1);
        let set: Option<String> = self
            .run(|mut connection| async move {
                ::redis::cmd("SET")
                    .arg(key)
                    .arg("1")
                    .arg("NX")
                    .arg("EX")
                    .arg(ttl)
                    .query_async(&mut connection)
                    .await
            })
            .await?;
        Ok(set.is_some())
    }

    /// Releases a claim whose code was not accepted, so a made-up code leaves nothing behind.
    pub fn release_state(self: &Arc<Self>, state: &str) {
        let key = self.state_key(state);
        let store = self.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = store
                    .run(|mut connection| async move {
                        ::redis::cmd("DEL")
                            .arg(key)
                            .query_async::<()>(&mut connection)
                            .await
                    })
                    .await;
            });
        }
    }

    /// The state is not stored as such: its SHA-256.
    fn state_key(&self, state: &str) -> String {
        let digest = ring::digest::digest(&ring::digest::SHA256, state.as_bytes());
        format!(
            "{}state:{}",
            self.config.key_prefix,
            URL_SAFE_NO_PAD.encode(digest.as_ref())
        )
    }

    /// Runs one command on the current connection, within [`COMMAND_TIMEOUT`]. A failure
    /// marks Redis unavailable and wakes the connection task.
    async fn run<T, F, Fut>(&self, command: F) -> Result<T, SharedStoreUnavailable>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: std::future::Future<Output = RedisResult<T>>,
    {
        let Some(connection) = self.connection.load_full() else {
            return Err(SharedStoreUnavailable);
        };
        match tokio::time::timeout(
            COMMAND_TIMEOUT,
            command(MultiplexedConnection::clone(&connection)),
        )
        .await
        {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => {
                self.lost(&error.to_string());
                Err(SharedStoreUnavailable)
            }
            Err(_) => {
                self.lost("no answer within a second");
                Err(SharedStoreUnavailable)
            }
        }
    }

    fn lost(&self, why: &str) {
        if self.available.swap(false, Ordering::AcqRel) {
            self.failures.fetch_add(1, Ordering::Relaxed);
            self.unavailable_log(why);
        }
        self.reconnect.notify_one();
    }

    fn unavailable_log(&self, why: &str) {
        match self.config.on_unavailable {
            OnUnavailable::Refuse => tracing::error!(
                error = why,
                "Redis unreachable: new sign-ins and sessions are refused (redis.on_unavailable = \"refuse\") until it is back"
            ),
            OnUnavailable::Allow => tracing::error!(
                error = why,
                "Redis unreachable: sessions are served from their cookies without the shared revocations (redis.on_unavailable = \"allow\") until it is back"
            ),
        }
    }

    /// Connects, subscribes, catches up and keeps the connection, reconnecting (and asking
    /// Sentinel for the master again) whenever it is lost, until `stop` fires or the store is
    /// replaced.
    pub fn spawn(self: &Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        // A reload that keeps the same `[redis]` keeps the store and its task.
        if self.spawned.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut retry = FIRST_RETRY;
            let mut logged_failure = false;
            loop {
                let Some(store) = weak.upgrade() else {
                    return;
                };
                match store.connect_and_catch_up().await {
                    Ok(pubsub) => {
                        retry = FIRST_RETRY;
                        tokio::select! {
                            why = store.serve(pubsub) => {
                                store.lost(&why);
                                // Logged and counted once per outage, not again for each
                                // reconnection attempt that fails.
                                logged_failure = true;
                            }
                            _ = stop.changed() => {
                                store.connection.store(None);
                                return;
                            }
                            // A reload replaced the store (another `[redis]`): this task holds
                            // the last reference.
                            _ = retired(&store) => return,
                        }
                    }
                    Err(error) => {
                        store.connection.store(None);
                        store.available.store(false, Ordering::Release);
                        if !logged_failure {
                            store.failures.fetch_add(1, Ordering::Relaxed);
                            store.unavailable_log(&error.to_string());
                            logged_failure = true;
                        } else {
                            tracing::debug!(error = %error, "Redis still unreachable");
                        }
                    }
                }
                drop(store);
                tokio::select! {
                    _ = tokio::time::sleep(retry) => {}
                    _ = stop.changed() => return,
                }
                retry = (retry * 2).min(MAX_RETRY);
            }
        });
    }

    /// Subscribes, then writes what waited, then reads every stored revocation: only then is
    /// Redis available, with nothing missed in between.
    async fn connect_and_catch_up(&self) -> RedisResult<PubSub> {
        let client = self.client().await?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(COMMAND_TIMEOUT))
            .set_response_timeout(Some(COMMAND_TIMEOUT));
        let connection = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        let mut pubsub = within(client.get_async_pubsub()).await?;
        within(pubsub.subscribe(self.channel())).await?;
        self.connection.store(Some(Arc::new(connection.clone())));

        let waiting = std::mem::take(&mut *self.lock_pending());
        for (i, revocation) in waiting.iter().enumerate() {
            if self.write(revocation).await.is_err() {
                for revocation in &waiting[i..] {
                    self.queue(revocation.clone());
                }
                return Err(RedisError::from((
                    ::redis::ErrorKind::Io,
                    "writing queued revocations failed",
                )));
            }
        }

        let caught_up = self.catch_up(connection).await?;
        self.available.store(true, Ordering::Release);
        self.caught_up_once.store(true, Ordering::Release);
        tracing::info!(
            revocations = caught_up,
            "Redis reachable: subscribed to revocations and caught up"
        );
        Ok(pubsub)
    }

    async fn catch_up(&self, mut connection: MultiplexedConnection) -> RedisResult<usize> {
        let pattern = format!("{}revoked:*", self.config.key_prefix);
        let mut cursor: u64 = 0;
        let mut applied = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = within(
                ::redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(1000)
                    .query_async(&mut connection),
            )
            .await?;
            if !keys.is_empty() {
                let mut pipe = ::redis::pipe();
                for key in &keys {
                    pipe.cmd("GET").arg(key);
                }
                let values: Vec<Option<String>> = within(pipe.query_async(&mut connection)).await?;
                let now = self.clock.now();
                for (key, value) in keys.iter().zip(values) {
                    let parsed = value.as_deref().and_then(|value| {
                        SharedRevocation::parse(key.strip_prefix(&self.config.key_prefix)?, value)
                    });
                    if let Some(revocation) = parsed {
                        revocation.apply(&self.revocations, now);
                        applied += 1;
                    }
                }
            }
            if next == 0 {
                return Ok(applied);
            }
            cursor = next;
        }
    }

    /// Applies published revocations and checks the connection until it is lost; returns why.
    async fn serve(&self, mut pubsub: PubSub) -> String {
        let mut ping = tokio::time::interval(PING_INTERVAL);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut messages = pubsub.on_message();
        loop {
            tokio::select! {
                message = messages.next() => {
                    let Some(message) = message else {
                        return "the subscription's connection closed".to_owned();
                    };
                    let Ok(payload) = message.get_payload::<String>() else {
                        continue;
                    };
                    match SharedRevocation::parse_message(&payload) {
                        Some(revocation) => {
                            revocation.apply(&self.revocations, self.clock.now());
                            self.received.fetch_add(1, Ordering::Relaxed);
                        }
                        None => tracing::warn!("ignored a malformed message on the revocations channel"),
                    }
                }
                _ = ping.tick() => {
                    let ok = self
                        .run(|mut connection| async move {
                            ::redis::cmd("PING").query_async::<String>(&mut connection).await
                        })
                        .await;
                    if ok.is_err() {
                        return "PING failed".to_owned();
                    }
                }
                _ = self.reconnect.notified() => {
                    if !self.available() {
                        return "a command failed".to_owned();
                    }
                }
            }
        }
    }

    /// A client for the server to use now: the configured one, or the master Sentinel names.
    async fn client(&self) -> RedisResult<Client> {
        let certificates = self.certificates()?;
        match self.config.mode {
            RedisMode::Sentinel => {
                use ::redis::sentinel::{SentinelClientBuilder, SentinelServerType};
                let nodes = self.config.urls.iter().map(address);
                let master = self.config.sentinel_master.clone().unwrap_or_default();
                let mut builder =
                    SentinelClientBuilder::new(nodes, master, SentinelServerType::Master)?;
                if self.config.uses_tls() {
                    builder = builder
                        .set_client_to_redis_tls_mode(::redis::TlsMode::Secure)
                        .set_client_to_sentinel_tls_mode(::redis::TlsMode::Secure);
                    if let Some(certificates) = certificates {
                        builder = builder
                            .set_client_to_redis_certificates(certificates.clone())
                            .set_client_to_sentinel_certificates(certificates);
                    }
                }
                if let Some(user) = self.config.urls.first().and_then(|u| u.username.clone()) {
                    builder = builder.set_client_to_redis_username(user);
                }
                if let Some(password) = &self.config.password {
                    builder = builder.set_client_to_redis_password(password);
                }
                let mut sentinel = builder.build()?;
                within(sentinel.async_get_client()).await
            }
            RedisMode::Standalone | RedisMode::Cluster => {
                let url = self.config.urls.first().ok_or_else(|| {
                    RedisError::from((::redis::ErrorKind::Client, "redis.urls is empty"))
                })?;
                let addr = address(url);
                let mut redis = ::redis::RedisConnectionInfo::default().set_db(url.db);
                if let Some(user) = &url.username {
                    redis = redis.set_username(user);
                }
                if let Some(password) = &self.config.password {
                    redis = redis.set_password(password);
                }
                let info = ::redis::IntoConnectionInfo::into_connection_info(addr)?
                    .set_redis_settings(redis);
                match certificates {
                    Some(certificates) if url.tls => Client::build_with_tls(info, certificates),
                    _ => Client::open(info),
                }
            }
        }
    }

    /// The CA bundle of `ca_file`, read at each connection (so a renewed bundle is used after
    /// the next reconnect).
    fn certificates(&self) -> RedisResult<Option<::redis::TlsCertificates>> {
        let Some(path) = &self.config.ca_file else {
            return Ok(None);
        };
        let pem = std::fs::read(path).map_err(|e| {
            RedisError::from((
                ::redis::ErrorKind::Io,
                "cannot read redis.ca_file",
                format!("{}: {e}", path.display()),
            ))
        })?;
        Ok(Some(::redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(pem),
        }))
    }

    fn lock_pending(&self) -> MutexGuard<'_, Vec<SharedRevocation>> {
        match self.pending.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}

/// Where `url` is: plain TCP, or TLS with the server's name verified.
fn address(url: &crate::config::RedisAddress) -> ::redis::ConnectionAddr {
    if url.tls {
        ::redis::ConnectionAddr::TcpTls {
            host: url.host.clone(),
            port: url.port,
            insecure: false,
            tls_params: None,
        }
    } else {
        ::redis::ConnectionAddr::Tcp(url.host.clone(), url.port)
    }
}

async fn retired(store: &Arc<SharedStore>) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if Arc::strong_count(store) == 1 {
            return;
        }
    }
}

async fn within<T>(future: impl std::future::Future<Output = RedisResult<T>>) -> RedisResult<T> {
    tokio::time::timeout(COMMAND_TIMEOUT, future)
        .await
        .unwrap_or_else(|_| {
            Err(RedisError::from((
                ::redis::ErrorKind::Io,
                "no answer within a second",
            )))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revocations_travel_as_keys_and_messages_and_come_back_the_same() {
        let session = SharedRevocation::Session {
            id: SessionId([0xab; 16]),
            until: 1_700_036_000,
        };
        let sid = SharedRevocation::Sid {
            sid: "00a1b2c3-d4e5 f6/ä".to_owned(),
            revoked_at: 1_700_000_000,
            until: 1_700_036_000,
        };
        for revocation in [session, sid] {
            let (key, value) = revocation.key_and_value();
            assert_eq!(
                SharedRevocation::parse(&key, &value),
                Some(revocation.clone())
            );
            assert_eq!(
                SharedRevocation::parse_message(&revocation.message()),
                Some(revocation.clone())
            );
        }
    }

    #[test]
    fn malformed_entries_in_redis_are_ignored() {
        for (key, value) in [
            ("revoked:s:zz", "1"),
            ("revoked:s:abababababababababababababababab", "soon"),
            ("revoked:f:!!!", "1 2"),
            ("revoked:f:YQ", "1"),
            ("revoked:x:YQ", "1 2"),
            ("other", "1"),
        ] {
            assert_eq!(SharedRevocation::parse(key, value), None, "{key} {value}");
        }
        assert_eq!(SharedRevocation::parse_message("nothing"), None);
    }
}
