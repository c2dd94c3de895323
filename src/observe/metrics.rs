//! Prometheus metrics. What a request bumps is a plain atomic — its route's counter for the
//! status code, a latency bucket — so counting takes no lock and no lookup; the values are read
//! when `/metrics` is scraped and written by `prometheus-client`'s text encoder. Counters live
//! in a registry that outlives configuration reloads: a route keeps its counts when the file is
//! reloaded, as long as its host and path stay the same.
//!
//! Every counter a request or a connection writes is kept once per worker ([`PerWorker`]): a
//! worker writes only its own cache lines, and a scrape sums the shards. A request reaches its
//! counters through [`Counters`], a handle the worker serving it owns, so taking it per request
//! writes no reference count another core writes too.
//!
//! What the gateway is at the moment of a scrape (which Exchange servers are in rotation,
//! what sign-in keeps in memory, draining) is handed in as plain data, a [`Scrape`].

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::sso::kerberos::KerberosCounters;
use crate::worker::PerWorker;

/// The `Content-Type` of what [`Metrics::render`] writes: the Prometheus text format 0.0.4.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Upper bounds of the latency histogram, in seconds.
const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0,
];

/// Counters of one route (or of the pseudo-routes `none` for unrouted requests and `gateway`
/// for the gateway's own endpoints), indexed by status code, one set per worker.
pub struct RouteMetrics {
    pub name: Arc<str>,
    by_status: PerWorker<StatusCounts>,
}

/// A count per status code 100–599.
struct StatusCounts([AtomicU64; 500]);

impl Default for StatusCounts {
    fn default() -> StatusCounts {
        StatusCounts(std::array::from_fn(|_| AtomicU64::new(0)))
    }
}

impl RouteMetrics {
    fn new(name: &str, workers: usize) -> RouteMetrics {
        RouteMetrics {
            name: Arc::from(name),
            by_status: PerWorker::new(workers, StatusCounts::default),
        }
    }

    pub fn count(&self, status: u16) {
        let index = usize::from(status.clamp(100, 599) - 100);
        if let Some(counter) = self.by_status.local().0.get(index) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The count of `status`, summed over the workers.
    fn total(&self, index: usize) -> u64 {
        self.by_status
            .iter()
            .map(|shard| shard.0[index].load(Ordering::Relaxed))
            .sum()
    }
}

/// Request durations: a count per bucket (not cumulative), the count and the sum of all.
#[derive(Default)]
struct Latency {
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

/// What connections write: one per worker.
#[derive(Default)]
struct ConnectionCounts {
    /// Opened minus closed on this worker (a connection opens and closes on the same worker,
    /// but the sum is what is meaningful).
    open: std::sync::atomic::AtomicI64,
    accepted: AtomicU64,
    tls_handshake_failures: AtomicU64,
}

pub struct Metrics {
    /// How many shards each per-worker counter has.
    workers: usize,
    routes: Mutex<HashMap<String, Arc<RouteMetrics>>>,
    latency: Arc<PerWorker<Latency>>,
    connections: PerWorker<ConnectionCounts>,
    reloads: Counter,
    reload_failures: Counter,
    /// Tokens for Exchange by single sign-on mode and result (`issued`, `refused`).
    sso_tokens: Family<[(&'static str, &'static str); 2], Counter>,
    /// Entra answers to Exchange's own sign-in relayed as a same-site POST.
    hma_relays: Counter,
}

impl Default for Metrics {
    /// One shard per core the process may use.
    fn default() -> Self {
        Metrics::new(crate::worker::available_cores())
    }
}

impl Metrics {
    /// Metrics whose per-worker counters have `workers` shards (at least one).
    pub fn new(workers: usize) -> Metrics {
        let workers = workers.max(1);
        Metrics {
            workers,
            routes: Mutex::new(HashMap::new()),
            latency: Arc::new(PerWorker::new(workers, Latency::default)),
            connections: PerWorker::new(workers, ConnectionCounts::default),
            reloads: Counter::default(),
            reload_failures: Counter::default(),
            sso_tokens: Family::default(),
            hma_relays: Counter::default(),
        }
    }
}

/// One Exchange server as a scrape sees it.
#[derive(Clone, Debug)]
pub struct ServerHealth {
    /// The `[upstreams.NAME]` it belongs to.
    pub upstream: String,
    pub url: String,
    /// In rotation.
    pub up: bool,
}

/// The gateway's connections to one upstream's Exchange servers, summed over the workers.
#[derive(Clone, Debug)]
pub struct UpstreamConnections {
    /// The `[upstreams.NAME]`.
    pub upstream: String,
    /// Connections opened since the upstream was configured (or last reloaded).
    pub opened: u64,
    /// Requests sent on a connection kept alive from an earlier one.
    pub reused: u64,
    /// Connections waiting idle for a request now.
    pub idle: u64,
}

/// What sign-in keeps in memory, each part capped: an operator sees a flood fill it.
#[derive(Clone, Copy, Debug, Default)]
pub struct SignInMemory {
    /// Login states whose code was accepted, kept so a callback cannot be replayed.
    pub used_login_states: usize,
    /// Revoked sessions: sign-outs, and front-channel logouts of sids seen here.
    pub protected_revocations: usize,
    /// Front-channel logouts of sids never seen here (capped).
    pub unseen_sid_revocations: usize,
    /// Sids of sessions issued or served here.
    pub seen_sids: usize,
    /// With `[redis]`: its state.
    pub redis: Option<crate::session::SharedStoreStatus>,
}

/// The gateway's state at the moment of a scrape, gathered by the admin listener.
#[derive(Clone, Debug, Default)]
pub struct Scrape {
    pub servers: Vec<ServerHealth>,
    pub upstream_connections: Vec<UpstreamConnections>,
    /// `None` when no route signs users in.
    pub sign_in: Option<SignInMemory>,
    /// The Kerberos engine's counters; `None` without `[sso.kerberos]`.
    pub kerberos: Option<KerberosCounters>,
    pub draining: bool,
}

impl Metrics {
    /// The counters of a route by name, created on first use. Called when a configuration
    /// snapshot is built, never per request.
    pub fn route(&self, name: &str) -> Arc<RouteMetrics> {
        let mut routes = match self.routes.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        routes
            .entry(name.to_owned())
            .or_insert_with(|| Arc::new(RouteMetrics::new(name, self.workers)))
            .clone()
    }

    pub fn observe_latency(&self, elapsed: Duration) {
        let latency = self.latency.local();
        let secs = elapsed.as_secs_f64();
        if let Some(i) = LATENCY_BUCKETS.iter().position(|&bound| secs <= bound) {
            latency.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        latency.count.fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        latency.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    pub fn connection_opened(&self) {
        let counts = self.connections.local();
        counts.open.fetch_add(1, Ordering::Relaxed);
        counts.accepted.fetch_add(1, Ordering::Relaxed);
    }

    pub fn connection_closed(&self) {
        self.connections
            .local()
            .open
            .fetch_sub(1, Ordering::Relaxed);
    }

    pub fn tls_handshake_failed(&self) {
        self.connections
            .local()
            .tls_handshake_failures
            .fetch_add(1, Ordering::Relaxed);
    }

    pub fn reloaded(&self, ok: bool) {
        let counter = if ok {
            &self.reloads
        } else {
            &self.reload_failures
        };
        counter.inc();
    }

    /// A token for Exchange issued (or refused) in single sign-on `mode` (`adfs`).
    pub fn sso_token(&self, mode: &'static str, issued: bool) {
        let result = if issued { "issued" } else { "refused" };
        self.sso_tokens
            .get_or_create(&[("mode", mode), ("result", result)])
            .inc();
    }

    /// Entra's `form_post` answer to Exchange's hybrid modern authentication was relayed.
    pub fn hma_relayed(&self) {
        self.hma_relays.inc();
    }

    /// The Prometheus text exposition (format 0.0.4, [`CONTENT_TYPE`]).
    pub fn render(&self, scrape: Scrape) -> String {
        let mut out = String::with_capacity(4096);
        // Writing to a String cannot fail, nor can encoding these values.
        if let Err(e) =
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry(scrape))
        {
            tracing::warn!(error = %e, "metrics could not be encoded");
        }
        out
    }

    /// Every metric in the order `docs/operations.md` lists them, reading the live counters.
    /// Built per scrape: the scrape's data is part of it. Help texts get their full stop from
    /// the registry.
    fn registry(&self, scrape: Scrape) -> Registry {
        let mut routes: Vec<Arc<RouteMetrics>> = match self.routes.lock() {
            Ok(guard) => guard.values().cloned().collect(),
            Err(poisoned) => poisoned.into_inner().values().cloned().collect(),
        };
        routes.sort_by(|a, b| a.name.cmp(&b.name));

        let mut registry = Registry::default();
        registry.register(
            "mfagw_requests",
            "Requests answered, by route and status code",
            RequestCounts(routes),
        );
        registry.register_with_unit(
            "mfagw_request_duration",
            "Time from request head to the end of the response body",
            Unit::Seconds,
            LatencyHistogram(self.latency.clone()),
        );
        registry.register(
            "mfagw_upstream_server_up",
            "1 when the Exchange server is in rotation",
            GaugeSamples(
                scrape
                    .servers
                    .into_iter()
                    .map(|s| {
                        let labels = [("upstream", s.upstream), ("server", s.url)];
                        (labels, i64::from(s.up))
                    })
                    .collect(),
            ),
        );
        let (mut open, mut accepted, mut tls_failures) = (0i64, 0u64, 0u64);
        for counts in self.connections.iter() {
            open += counts.open.load(Ordering::Relaxed);
            accepted += counts.accepted.load(Ordering::Relaxed);
            tls_failures += counts.tls_handshake_failures.load(Ordering::Relaxed);
        }
        let connections = scrape.upstream_connections;
        registry.register(
            "mfagw_upstream_connections_opened",
            "Connections opened to the upstream's Exchange servers",
            CounterSamples(
                connections
                    .iter()
                    .map(|c| ([("upstream", c.upstream.clone())], c.opened))
                    .collect(),
            ),
        );
        registry.register(
            "mfagw_upstream_connections_reused",
            "Requests sent to Exchange on a connection kept alive from an earlier request",
            CounterSamples(
                connections
                    .iter()
                    .map(|c| ([("upstream", c.upstream.clone())], c.reused))
                    .collect(),
            ),
        );
        registry.register(
            "mfagw_upstream_idle_connections",
            "Connections to Exchange kept alive, waiting for a request",
            GaugeSamples(
                connections
                    .iter()
                    .map(|c| {
                        (
                            [("upstream", c.upstream.clone())],
                            i64::try_from(c.idle).unwrap_or(i64::MAX),
                        )
                    })
                    .collect(),
            ),
        );
        registry.register(
            "mfagw_open_connections",
            "Browser connections open now",
            ConstGauge::new(open),
        );
        registry.register(
            "mfagw_connections",
            "Browser connections accepted",
            ConstCounter::new(accepted),
        );
        registry.register(
            "mfagw_tls_handshake_failures",
            "TLS handshakes that failed or timed out",
            ConstCounter::new(tls_failures),
        );
        registry.register(
            "mfagw_config_reloads",
            "Configuration reloads applied",
            self.reloads.clone(),
        );
        registry.register(
            "mfagw_config_reload_failures",
            "Configuration reloads refused (the running configuration was kept)",
            self.reload_failures.clone(),
        );
        registry.register(
            "mfagw_sso_tokens",
            "Tokens for Exchange's single sign-on, by mode and result (issued, refused)",
            self.sso_tokens.clone(),
        );
        registry.register(
            "mfagw_hma_relays",
            "Entra answers to Exchange's hybrid modern authentication relayed to the same address as a same-site POST",
            self.hma_relays.clone(),
        );
        registry.register(
            "mfagw_draining",
            "1 while the gateway is shutting down",
            ConstGauge::new(i64::from(scrape.draining)),
        );
        if let Some(memory) = scrape.sign_in {
            registry.register(
                "mfagw_used_login_states",
                "Login states remembered as used (their code was accepted), so a callback \
                 cannot be replayed",
                ConstGauge::new(gauge_value(memory.used_login_states)),
            );
            registry.register(
                "mfagw_revocations",
                "Revoked sessions remembered: protected (sign-outs, front-channel logouts of \
                 sids seen here) and unseen_sid (front-channel logouts of other sids, capped)",
                GaugeSamples(vec![
                    (
                        [("store", "protected")],
                        gauge_value(memory.protected_revocations),
                    ),
                    (
                        [("store", "unseen_sid")],
                        gauge_value(memory.unseen_sid_revocations),
                    ),
                ]),
            );
            registry.register(
                "mfagw_seen_sids",
                "Entra sids of sessions issued or served here, remembered so their \
                 front-channel logout is protected",
                ConstGauge::new(gauge_value(memory.seen_sids)),
            );
            if let Some(redis) = memory.redis {
                registry.register(
                    "mfagw_redis_available",
                    "1 while Redis is reachable, subscribed to revocations and caught up; 0 \
                     otherwise (redis.on_unavailable decides what happens meanwhile)",
                    ConstGauge::new(i64::from(redis.available)),
                );
                registry.register(
                    "mfagw_redis_revocations_published",
                    "Revocations (sign-outs, front-channel logouts) written to Redis by this \
                     gateway",
                    ConstCounter::new(redis.published),
                );
                registry.register(
                    "mfagw_redis_revocations_received",
                    "Revocations received from other gateways through Redis",
                    ConstCounter::new(redis.received),
                );
                registry.register(
                    "mfagw_redis_revocations_pending",
                    "Revocations waiting to be written to Redis while it is unreachable",
                    ConstGauge::new(gauge_value(redis.pending)),
                );
                registry.register(
                    "mfagw_redis_connection_failures",
                    "Times the connection to Redis was lost or could not be made",
                    ConstCounter::new(redis.connection_failures),
                );
            }
        }
        if let Some(kerberos) = scrape.kerberos {
            registry.register(
                "mfagw_kerberos_kdc_requests",
                "Exchanges with the domain controllers for users' tickets (sso = \"kerberos\"): \
                 s4u2self (a user's ticket to the gateway) and s4u2proxy (its ticket to \
                 Exchange's SPN)",
                CounterSamples(vec![
                    ([("exchange", "s4u2self")], kerberos.s4u2self_requests),
                    ([("exchange", "s4u2proxy")], kerberos.s4u2proxy_requests),
                ]),
            );
            registry.register(
                "mfagw_kerberos_ticket_cache_hits",
                "Kerberos tokens made from a user's cached ticket, without asking a domain \
                 controller",
                ConstCounter::new(kerberos.cache_hits),
            );
            registry.register(
                "mfagw_kerberos_tokens",
                "Kerberos tokens sent to Exchange",
                ConstCounter::new(kerberos.tokens),
            );
            registry.register(
                "mfagw_kerberos_failures",
                "Kerberos sign-ins to Exchange that failed, by audit reason",
                CounterSamples(
                    kerberos
                        .failures
                        .iter()
                        .map(|(reason, n)| ([("reason", reason.as_str())], *n))
                        .collect(),
                ),
            );
        }
        registry
    }
}

/// Where a request's counts go in a [`Counters`] table: the unrouted pseudo-route, the
/// gateway's own endpoints, or a configured route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteSlot(pub usize);

impl RouteSlot {
    /// `none`: requests that matched no route.
    pub const UNROUTED: RouteSlot = RouteSlot(0);
    /// `gateway`: the gateway's own endpoints.
    pub const GATEWAY: RouteSlot = RouteSlot(1);

    /// The slot of `routes[index]` of the configuration.
    pub fn route(index: usize) -> RouteSlot {
        RouteSlot(index + 2)
    }
}

/// The counters a request writes: the latency histogram and its route's counters, by
/// [`RouteSlot`]. Each worker has its own table (see [`Counters::for_worker`]), so cloning the
/// handle per request writes a reference count only that worker writes.
#[derive(Clone)]
pub struct Counters(Arc<CounterTable>);

#[derive(Clone)]
struct CounterTable {
    metrics: Arc<Metrics>,
    /// `none`, `gateway`, then one per configured route.
    routes: Box<[Arc<RouteMetrics>]>,
}

impl Counters {
    /// A table whose slots are `none`, `gateway`, then `routes` in order.
    pub fn new(
        metrics: &Arc<Metrics>,
        routes: impl IntoIterator<Item = Arc<RouteMetrics>>,
    ) -> Counters {
        let fixed = [metrics.route("none"), metrics.route("gateway")];
        Counters(Arc::new(CounterTable {
            metrics: metrics.clone(),
            routes: fixed.into_iter().chain(routes).collect(),
        }))
    }

    /// A table of the same counters in an allocation of its own, for one worker.
    pub fn for_worker(&self) -> Counters {
        Counters(Arc::new((*self.0).clone()))
    }

    fn slot(&self, slot: RouteSlot) -> &RouteMetrics {
        // Slots come from the snapshot that built this table; an unknown one counts as unrouted.
        self.0.routes.get(slot.0).unwrap_or(&self.0.routes[0])
    }

    /// Counts a request answered with `status` on `slot`, and its duration.
    pub fn count(&self, slot: RouteSlot, status: u16, elapsed: Duration) {
        self.slot(slot).count(status);
        self.0.metrics.observe_latency(elapsed);
    }

    /// The route's name as the metrics and the access log show it.
    pub fn name(&self, slot: RouteSlot) -> &str {
        &self.slot(slot).name
    }
}

fn gauge_value(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// `mfagw_requests_total{route, status}`, routes in name order, statuses never seen left out:
/// 500 possible codes per route would bury the real ones.
struct RequestCounts(Vec<Arc<RouteMetrics>>);

impl fmt::Debug for RequestCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestCounts")
            .field("routes", &self.0.len())
            .finish()
    }
}

impl EncodeMetric for RequestCounts {
    fn encode(&self, mut encoder: MetricEncoder) -> fmt::Result {
        for route in &self.0 {
            for (status, index) in (100u16..600).zip(0..) {
                let n = route.total(index);
                if n > 0 {
                    let labels = ([("route", &*route.name)], [("status", status)]);
                    encoder
                        .encode_family(&labels)?
                        .encode_counter::<NoLabelSet, _, u64>(&n, None)?;
                }
            }
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Counter
    }
}

/// `mfagw_request_duration_seconds`, the live buckets summed over the workers.
struct LatencyHistogram(Arc<PerWorker<Latency>>);

impl fmt::Debug for LatencyHistogram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LatencyHistogram").finish_non_exhaustive()
    }
}

impl EncodeMetric for LatencyHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> fmt::Result {
        let sum_of = |value: &dyn Fn(&Latency) -> &AtomicU64| -> u64 {
            self.0
                .iter()
                .map(|shard| value(shard).load(Ordering::Relaxed))
                .sum()
        };
        let buckets: Vec<(f64, u64)> = LATENCY_BUCKETS
            .iter()
            .enumerate()
            .map(|(i, &bound)| (bound, sum_of(&|l| &l.buckets[i])))
            .collect();
        let count = sum_of(&|l| &l.count);
        let sum = sum_of(&|l| &l.sum_micros) as f64 / 1e6;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// A gauge whose samples, one per label set, are known at scrape time.
#[derive(Debug)]
struct GaugeSamples<L>(Vec<(L, i64)>);

impl<L: EncodeLabelSet> EncodeMetric for GaugeSamples<L> {
    fn encode(&self, mut encoder: MetricEncoder) -> fmt::Result {
        for (labels, value) in &self.0 {
            encoder.encode_family(labels)?.encode_gauge(value)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Gauge
    }
}

/// A counter whose samples, one per label set, are known at scrape time.
#[derive(Debug)]
struct CounterSamples<L>(Vec<(L, u64)>);

impl<L: EncodeLabelSet> EncodeMetric for CounterSamples<L> {
    fn encode(&self, mut encoder: MetricEncoder) -> fmt::Result {
        for (labels, value) in &self.0 {
            encoder
                .encode_family(labels)?
                .encode_counter::<NoLabelSet, _, u64>(value, None)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Counter
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashSet};

    use super::*;

    /// A gateway after a few requests: OWA answered twice and redirected once, one request
    /// matched no route, one Exchange server of two is down.
    fn scraped_gateway() -> (Metrics, Scrape) {
        let metrics = Metrics::default();
        let owa = metrics.route("mail.contoso.com/owa");
        owa.count(200);
        owa.count(200);
        owa.count(302);
        metrics.route("none").count(404);
        metrics.route("mail.contoso.com/ecp");
        for micros in [400, 300_000, 70_000_000] {
            metrics.observe_latency(Duration::from_micros(micros));
        }
        metrics.connection_opened();
        metrics.connection_opened();
        metrics.connection_closed();
        metrics.tls_handshake_failed();
        metrics.reloaded(true);
        metrics.reloaded(false);
        metrics.reloaded(false);
        let server = |url: &str, up| ServerHealth {
            upstream: "exchange".to_owned(),
            url: url.to_owned(),
            up,
        };
        let scrape = Scrape {
            servers: vec![
                server("https://ex01.corp.contoso.com", true),
                server("https://ex02.corp.contoso.com", false),
            ],
            upstream_connections: vec![UpstreamConnections {
                upstream: "exchange".to_owned(),
                opened: 3,
                reused: 40,
                idle: 2,
            }],
            sign_in: Some(SignInMemory {
                used_login_states: 3,
                protected_revocations: 1,
                unseen_sid_revocations: 10_000,
                seen_sids: 7,
                redis: None,
            }),
            kerberos: None,
            draining: false,
        };
        (metrics, scrape)
    }

    #[test]
    fn redis_state_is_exposed_when_redis_is_configured() {
        let (metrics, mut scrape) = scraped_gateway();
        assert!(!metrics.render(scrape.clone()).contains("mfagw_redis"));
        if let Some(memory) = scrape.sign_in.as_mut() {
            memory.redis = Some(crate::session::SharedStoreStatus {
                available: false,
                published: 4,
                received: 9,
                pending: 2,
                connection_failures: 1,
            });
        }
        let text = metrics.render(scrape);
        for line in [
            "mfagw_redis_available 0",
            "mfagw_redis_revocations_published_total 4",
            "mfagw_redis_revocations_received_total 9",
            "mfagw_redis_revocations_pending 2",
            "mfagw_redis_connection_failures_total 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from:\n{text}"
            );
        }
    }

    #[test]
    fn exposition_names_types_labels_and_help_are_the_documented_ones() {
        let (metrics, scrape) = scraped_gateway();
        let expected = "\
# HELP mfagw_requests_total Requests answered, by route and status code.
# TYPE mfagw_requests_total counter
mfagw_requests_total{route=\"mail.contoso.com/owa\",status=\"200\"} 2
mfagw_requests_total{route=\"mail.contoso.com/owa\",status=\"302\"} 1
mfagw_requests_total{route=\"none\",status=\"404\"} 1
# HELP mfagw_request_duration_seconds Time from request head to the end of the response body.
# TYPE mfagw_request_duration_seconds histogram
mfagw_request_duration_seconds_bucket{le=\"0.0005\"} 1
mfagw_request_duration_seconds_bucket{le=\"0.001\"} 1
mfagw_request_duration_seconds_bucket{le=\"0.0025\"} 1
mfagw_request_duration_seconds_bucket{le=\"0.005\"} 1
mfagw_request_duration_seconds_bucket{le=\"0.01\"} 1
mfagw_request_duration_seconds_bucket{le=\"0.025\"} 1
mfagw_request_duration_seconds_bucket{le=\"0.05\"} 1
mfagw_request_duration_seconds_bucket{le=\"0.1\"} 1
mfagw_request_duration_seconds_bucket{le=\"0.25\"} 1
mfagw_request_duration_seconds_bucket{le=\"0.5\"} 2
mfagw_request_duration_seconds_bucket{le=\"1\"} 2
mfagw_request_duration_seconds_bucket{le=\"2.5\"} 2
mfagw_request_duration_seconds_bucket{le=\"10\"} 2
mfagw_request_duration_seconds_bucket{le=\"60\"} 2
mfagw_request_duration_seconds_bucket{le=\"+Inf\"} 3
mfagw_request_duration_seconds_sum 70.3004
mfagw_request_duration_seconds_count 3
# HELP mfagw_upstream_server_up 1 when the Exchange server is in rotation.
# TYPE mfagw_upstream_server_up gauge
mfagw_upstream_server_up{upstream=\"exchange\",server=\"https://ex01.corp.contoso.com\"} 1
mfagw_upstream_server_up{upstream=\"exchange\",server=\"https://ex02.corp.contoso.com\"} 0
# HELP mfagw_upstream_connections_opened_total Connections opened to the upstream's Exchange servers.
# TYPE mfagw_upstream_connections_opened_total counter
mfagw_upstream_connections_opened_total{upstream=\"exchange\"} 3
# HELP mfagw_upstream_connections_reused_total Requests sent to Exchange on a connection kept alive from an earlier request.
# TYPE mfagw_upstream_connections_reused_total counter
mfagw_upstream_connections_reused_total{upstream=\"exchange\"} 40
# HELP mfagw_upstream_idle_connections Connections to Exchange kept alive, waiting for a request.
# TYPE mfagw_upstream_idle_connections gauge
mfagw_upstream_idle_connections{upstream=\"exchange\"} 2
# HELP mfagw_open_connections Browser connections open now.
# TYPE mfagw_open_connections gauge
mfagw_open_connections 1
# HELP mfagw_connections_total Browser connections accepted.
# TYPE mfagw_connections_total counter
mfagw_connections_total 2
# HELP mfagw_tls_handshake_failures_total TLS handshakes that failed or timed out.
# TYPE mfagw_tls_handshake_failures_total counter
mfagw_tls_handshake_failures_total 1
# HELP mfagw_config_reloads_total Configuration reloads applied.
# TYPE mfagw_config_reloads_total counter
mfagw_config_reloads_total 1
# HELP mfagw_config_reload_failures_total Configuration reloads refused (the running configuration was kept).
# TYPE mfagw_config_reload_failures_total counter
mfagw_config_reload_failures_total 2
# HELP mfagw_hma_relays_total Entra answers to Exchange's hybrid modern authentication relayed to the same address as a same-site POST.
# TYPE mfagw_hma_relays_total counter
mfagw_hma_relays_total 0
# HELP mfagw_draining 1 while the gateway is shutting down.
# TYPE mfagw_draining gauge
mfagw_draining 0
# HELP mfagw_used_login_states Login states remembered as used (their code was accepted), so a callback cannot be replayed.
# TYPE mfagw_used_login_states gauge
mfagw_used_login_states 3
# HELP mfagw_revocations Revoked sessions remembered: protected (sign-outs, front-channel logouts of sids seen here) and unseen_sid (front-channel logouts of other sids, capped).
# TYPE mfagw_revocations gauge
mfagw_revocations{store=\"protected\"} 1
mfagw_revocations{store=\"unseen_sid\"} 10000
# HELP mfagw_seen_sids Entra sids of sessions issued or served here, remembered so their front-channel logout is protected.
# TYPE mfagw_seen_sids gauge
mfagw_seen_sids 7
";
        assert_eq!(metrics.render(scrape), expected);
    }

    #[test]
    fn kerberos_counters_are_shown_only_with_sso_kerberos() {
        use crate::sso::kerberos::KerberosReason;
        let (metrics, mut scrape) = scraped_gateway();
        assert!(!metrics.render(scrape.clone()).contains("kerberos"));
        scrape.kerberos = Some(KerberosCounters {
            s4u2self_requests: 4,
            s4u2proxy_requests: 5,
            tokens: 30,
            cache_hits: 26,
            failures: KerberosReason::ALL
                .iter()
                .map(|r| (*r, u64::from(*r == KerberosReason::KdcUnreachable) * 2))
                .collect(),
        });
        let text = metrics.render(scrape);
        let samples = parse_exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let at = |name: &str| samples.get(name).copied();
        assert_eq!(
            at("mfagw_kerberos_kdc_requests_total{exchange=\"s4u2self\"}"),
            Some(4.0)
        );
        assert_eq!(
            at("mfagw_kerberos_kdc_requests_total{exchange=\"s4u2proxy\"}"),
            Some(5.0)
        );
        assert_eq!(at("mfagw_kerberos_ticket_cache_hits_total"), Some(26.0));
        assert_eq!(at("mfagw_kerberos_tokens_total"), Some(30.0));
        assert_eq!(
            at("mfagw_kerberos_failures_total{reason=\"kdc_unreachable\"}"),
            Some(2.0)
        );
        // Every reason is listed, at zero too, so a rate() never starts from nothing.
        for reason in KerberosReason::ALL {
            let key = format!("mfagw_kerberos_failures_total{{reason=\"{reason}\"}}");
            assert!(samples.contains_key(&key), "{key} missing:\n{text}");
        }
    }

    #[test]
    fn without_sign_in_there_are_no_sign_in_gauges() {
        let (metrics, mut scrape) = scraped_gateway();
        scrape.sign_in = None;
        scrape.draining = true;
        let text = metrics.render(scrape);
        let samples = parse_exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(samples.get("mfagw_draining"), Some(&1.0));
        for name in [
            "mfagw_used_login_states",
            "mfagw_revocations",
            "mfagw_seen_sids",
        ] {
            assert!(!text.contains(name), "{text}");
        }
    }

    #[test]
    fn exposition_parses_as_prometheus_text_with_hostile_label_values() {
        let (metrics, mut scrape) = scraped_gateway();
        // A route or server name with a quote, a backslash or a line break must not end the
        // label value early or start a forged sample.
        let hostile = "mail.contoso.com/o\"wa\\\n} 99\nmfagw_draining 1";
        metrics.route(hostile).count(503);
        scrape.servers.push(ServerHealth {
            upstream: "exchange".to_owned(),
            url: hostile.to_owned(),
            up: true,
        });
        let text = metrics.render(scrape);
        let samples = parse_exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));

        let escaped = "mail.contoso.com/o\\\"wa\\\\\\n} 99\\nmfagw_draining 1";
        let series = |s: &str| samples.get(s).copied();
        assert_eq!(
            series(&format!(
                "mfagw_requests_total{{route=\"{escaped}\",status=\"503\"}}"
            )),
            Some(1.0)
        );
        assert_eq!(
            series("mfagw_requests_total{route=\"mail.contoso.com/owa\",status=\"200\"}"),
            Some(2.0)
        );
        assert_eq!(
            series(&format!(
                "mfagw_upstream_server_up{{upstream=\"exchange\",server=\"{escaped}\"}}"
            )),
            Some(1.0)
        );
        assert_eq!(series("mfagw_draining"), Some(0.0));
        assert_eq!(
            series("mfagw_request_duration_seconds_bucket{le=\"+Inf\"}"),
            Some(3.0)
        );
        assert_eq!(series("mfagw_request_duration_seconds_sum"), Some(70.3004));
        assert_eq!(
            series("mfagw_revocations{store=\"unseen_sid\"}"),
            Some(10_000.0)
        );
    }

    #[test]
    fn a_route_that_answered_nothing_has_no_samples() {
        let metrics = Metrics::default();
        metrics.route("mail.contoso.com/ecp");
        let text = metrics.render(Scrape::default());
        let samples = parse_exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert!(
            text.contains("# TYPE mfagw_requests_total counter\n"),
            "{text}"
        );
        assert!(
            !samples
                .keys()
                .any(|s| s.starts_with("mfagw_requests_total")),
            "{text}"
        );
        assert_eq!(
            samples.get("mfagw_request_duration_seconds_count"),
            Some(&0.0)
        );
    }

    #[test]
    fn the_validator_refuses_what_prometheus_would_refuse() {
        for (bad, why) in [
            ("m 1\n", "a sample before its TYPE"),
            ("# TYPE m gauge\nm{a=\"x\"} 1\nm{a=\"x\"} 2\n", "a series twice"),
            ("# TYPE m gauge\nm{a=\"x\nm 1\"} 1\n", "a raw line break in a value"),
            ("# TYPE m gauge\nm{a=\"\\x\"} 1\n", "an unknown escape"),
            ("# TYPE m gauge\nm{1a=\"x\"} 1\n", "a bad label name"),
            ("# TYPE m gauge\nm one\n", "a value that is no number"),
            ("# TYPE m gauge\n# TYPE n gauge\nm 1\n", "a sample of another family"),
            (
                "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n",
                "buckets that are not cumulative",
            ),
            (
                "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n",
                "a histogram without +Inf",
            ),
            ("# TYPE m gauge\nm 1", "no final line break"),
        ] {
            assert!(parse_exposition(bad).is_err(), "accepted {why}: {bad:?}");
        }
        let good = "# HELP m A gauge.\n# TYPE m gauge\nm{a=\"x\\\"\\\\\\n\"} -1.5\n";
        assert_eq!(
            parse_exposition(good).map(|s| s.len()),
            Ok(1),
            "refused a valid gauge"
        );
    }

    /// Reads `text` as Prometheus reads the text format 0.0.4, and more strictly: every line a
    /// `# HELP`/`# TYPE` (each once per family, before its samples) or a sample of the family
    /// last typed; names and label names from the allowed alphabet; label values with only
    /// the `\\`, `\"` and `\n` escapes; values floats. A histogram's buckets rise in `le` and in
    /// count up to `+Inf`, which equals its `_count`. Returns each series (as written) and
    /// its value.
    fn parse_exposition(text: &str) -> Result<BTreeMap<String, f64>, String> {
        let body = text
            .strip_suffix('\n')
            .ok_or("the text does not end with a line break")?;
        let mut samples = BTreeMap::new();
        let mut helped = HashSet::new();
        let mut typed = HashSet::new();
        let mut family: Option<(String, String)> = None;
        let mut buckets: Vec<(f64, f64)> = Vec::new();
        for line in body.split('\n') {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, _help) = rest.split_once(' ').unwrap_or((rest, ""));
                check_name(name, false)?;
                if !helped.insert(name.to_owned()) {
                    return Err(format!("second HELP for {name}"));
                }
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').ok_or("TYPE without a type")?;
                check_name(name, false)?;
                if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                    return Err(format!("unknown type {kind}"));
                }
                if !typed.insert(name.to_owned()) {
                    return Err(format!("second TYPE for {name}"));
                }
                if let Some((name, kind)) = family.take() {
                    check_family_end(&name, &kind, &buckets, &samples)?;
                }
                buckets.clear();
                family = Some((name.to_owned(), kind.to_owned()));
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let Sample {
                series,
                name,
                labels,
                value,
            } = parse_sample(line)?;
            let (family_name, kind) = family
                .as_ref()
                .ok_or_else(|| format!("sample before any TYPE: {line}"))?;
            let suffix = name
                .strip_prefix(family_name.as_str())
                .ok_or_else(|| format!("{name} is not of the family {family_name}"))?;
            match (kind.as_str(), suffix) {
                ("histogram", "_bucket") => {
                    let le = labels
                        .iter()
                        .find(|(k, _)| k == "le")
                        .ok_or_else(|| format!("bucket without le: {line}"))?;
                    buckets.push((parse_value(&le.1)?, value));
                }
                ("histogram", "_sum" | "_count") => {}
                (_, "") if kind != "histogram" => {
                    if kind == "counter" && (value < 0.0 || value.is_nan()) {
                        return Err(format!("negative counter: {line}"));
                    }
                }
                _ => return Err(format!("{name} is not a {kind} sample of {family_name}")),
            }
            if samples.insert(series, value).is_some() {
                return Err(format!("series written twice: {line}"));
            }
        }
        if let Some((name, kind)) = family {
            check_family_end(&name, &kind, &buckets, &samples)?;
        }
        Ok(samples)
    }

    fn check_family_end(
        name: &str,
        kind: &str,
        buckets: &[(f64, f64)],
        samples: &BTreeMap<String, f64>,
    ) -> Result<(), String> {
        if kind != "histogram" {
            return Ok(());
        }
        let rising = buckets
            .windows(2)
            .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1);
        if !rising {
            return Err(format!("{name}: buckets do not rise: {buckets:?}"));
        }
        let inf = match buckets.last() {
            Some(&(le, n)) if le == f64::INFINITY => n,
            _ => return Err(format!("{name}: no +Inf bucket")),
        };
        let count = samples.get(&format!("{name}_count"));
        if count != Some(&inf) || !samples.contains_key(&format!("{name}_sum")) {
            return Err(format!(
                "{name}: _count {count:?} is not +Inf {inf}, or no _sum"
            ));
        }
        Ok(())
    }

    /// One sample line.
    struct Sample {
        /// The name and labels as written.
        series: String,
        name: String,
        /// Unescaped.
        labels: Vec<(String, String)>,
        value: f64,
    }

    fn parse_sample(line: &str) -> Result<Sample, String> {
        let name_end = line
            .find(['{', ' '])
            .ok_or_else(|| format!("no value: {line}"))?;
        let name = &line[..name_end];
        check_name(name, false)?;
        let mut rest = &line[name_end..];
        let mut labels = Vec::new();
        if let Some(inner) = rest.strip_prefix('{') {
            rest = inner;
            loop {
                if let Some(after) = rest.strip_prefix('}') {
                    rest = after;
                    break;
                }
                let (label, after) = rest
                    .split_once("=\"")
                    .ok_or_else(|| format!("bad label: {line}"))?;
                check_name(label, true)?;
                let mut value = String::new();
                let mut chars = after.char_indices();
                let end = loop {
                    match chars.next() {
                        Some((i, '"')) => break i,
                        Some((_, '\\')) => match chars.next() {
                            Some((_, '\\')) => value.push('\\'),
                            Some((_, '"')) => value.push('"'),
                            Some((_, 'n')) => value.push('\n'),
                            _ => return Err(format!("bad escape: {line}")),
                        },
                        Some((_, c)) => value.push(c),
                        None => return Err(format!("unterminated label value: {line}")),
                    }
                };
                labels.push((label.to_owned(), value));
                rest = &after[end + 1..];
                rest = rest.strip_prefix(',').unwrap_or(rest);
            }
        }
        let series = line[..line.len() - rest.len()].to_owned();
        let value = rest
            .strip_prefix(' ')
            .ok_or_else(|| format!("no space before the value: {line}"))?;
        // No timestamps: the gateway writes none.
        Ok(Sample {
            series,
            name: name.to_owned(),
            labels,
            value: parse_value(value)?,
        })
    }

    fn parse_value(text: &str) -> Result<f64, String> {
        match text {
            "+Inf" => Ok(f64::INFINITY),
            "-Inf" => Ok(f64::NEG_INFINITY),
            "NaN" => Ok(f64::NAN),
            _ if text
                .bytes()
                .all(|b| b.is_ascii_digit() || b"+-.eE".contains(&b)) =>
            {
                text.parse().map_err(|_| format!("not a number: {text:?}"))
            }
            _ => Err(format!("not a number: {text:?}")),
        }
    }

    /// Metric names `[a-zA-Z_:][a-zA-Z0-9_:]*`; label names the same without `:`.
    fn check_name(name: &str, label: bool) -> Result<(), String> {
        let allowed = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || (!label && b == b':');
        let valid =
            name.bytes().next().is_some_and(|b| !b.is_ascii_digit()) && name.bytes().all(allowed);
        if valid {
            Ok(())
        } else {
            Err(format!("bad name {name:?}"))
        }
    }
}
