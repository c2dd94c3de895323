//! Prometheus metrics, kept in plain atomics so that counting a request takes no lock. Counters
//! live in a registry that outlives configuration reloads: a route keeps its counts when the
//! file is reloaded, as long as its host and path stay the same.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::auth::SignIn;
use crate::proxy::UpstreamPool;

/// Upper bounds of the latency histogram, in seconds.
const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0,
];

/// Counters of one route (or of the pseudo-routes `none` for unrouted requests and `gateway`
/// for the gateway's own endpoints), indexed by status code.
pub struct RouteMetrics {
    pub name: Arc<str>,
    by_status: Box<[AtomicU64]>,
}

impl RouteMetrics {
    fn new(name: &str) -> RouteMetrics {
        RouteMetrics {
            name: Arc::from(name),
            by_status: (100..600).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    pub fn count(&self, status: u16) {
        let index = usize::from(status.clamp(100, 599) - 100);
        if let Some(counter) = self.by_status.get(index) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }
}

struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

pub struct Metrics {
    routes: Mutex<HashMap<String, Arc<RouteMetrics>>>,
    latency: Histogram,
    open_connections: AtomicI64,
    connections_total: AtomicU64,
    tls_handshake_failures: AtomicU64,
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            routes: Mutex::new(HashMap::new()),
            latency: Histogram {
                buckets: std::array::from_fn(|_| AtomicU64::new(0)),
                count: AtomicU64::new(0),
                sum_micros: AtomicU64::new(0),
            },
            open_connections: AtomicI64::new(0),
            connections_total: AtomicU64::new(0),
            tls_handshake_failures: AtomicU64::new(0),
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
        }
    }
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
            .or_insert_with(|| Arc::new(RouteMetrics::new(name)))
            .clone()
    }

    pub fn observe_latency(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        if let Some(i) = LATENCY_BUCKETS.iter().position(|&bound| secs <= bound) {
            self.latency.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.latency.count.fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.latency.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    pub fn connection_opened(&self) {
        self.open_connections.fetch_add(1, Ordering::Relaxed);
        self.connections_total.fetch_add(1, Ordering::Relaxed);
    }

    pub fn connection_closed(&self) {
        self.open_connections.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn tls_handshake_failed(&self) {
        self.tls_handshake_failures.fetch_add(1, Ordering::Relaxed);
    }

    pub fn reloaded(&self, ok: bool) {
        let counter = if ok {
            &self.reloads_ok
        } else {
            &self.reloads_failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition format.
    pub fn render(
        &self,
        pools: &[Arc<UpstreamPool>],
        sign_in: Option<&SignIn>,
        draining: bool,
    ) -> String {
        let mut out = String::with_capacity(4096);
        out.push_str("# HELP mfagw_requests_total Requests answered, by route and status code.\n");
        out.push_str("# TYPE mfagw_requests_total counter\n");
        let routes: Vec<Arc<RouteMetrics>> = match self.routes.lock() {
            Ok(guard) => guard.values().cloned().collect(),
            Err(poisoned) => poisoned.into_inner().values().cloned().collect(),
        };
        let mut routes = routes;
        routes.sort_by(|a, b| a.name.cmp(&b.name));
        for route in &routes {
            for (i, counter) in route.by_status.iter().enumerate() {
                let n = counter.load(Ordering::Relaxed);
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "mfagw_requests_total{{route=\"{}\",status=\"{}\"}} {n}",
                        escape_label(&route.name),
                        i + 100
                    );
                }
            }
        }

        out.push_str("# HELP mfagw_request_duration_seconds Time from request head to the end of the response body.\n");
        out.push_str("# TYPE mfagw_request_duration_seconds histogram\n");
        let mut cumulative = 0;
        for (bound, bucket) in LATENCY_BUCKETS.iter().zip(&self.latency.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "mfagw_request_duration_seconds_bucket{{le=\"{bound}\"}} {cumulative}"
            );
        }
        let count = self.latency.count.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "mfagw_request_duration_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let sum = self.latency.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "mfagw_request_duration_seconds_sum {sum}");
        let _ = writeln!(out, "mfagw_request_duration_seconds_count {count}");

        out.push_str(
            "# HELP mfagw_upstream_server_up 1 when the Exchange server is in rotation.\n",
        );
        out.push_str("# TYPE mfagw_upstream_server_up gauge\n");
        for pool in pools {
            for server in pool.servers() {
                let _ = writeln!(
                    out,
                    "mfagw_upstream_server_up{{upstream=\"{}\",server=\"{}\"}} {}",
                    escape_label(pool.name()),
                    escape_label(&server.url),
                    u8::from(server.healthy)
                );
            }
        }

        let gauges: [(&str, &str, &str, i64); 6] = [
            (
                "mfagw_open_connections",
                "gauge",
                "Browser connections open now.",
                self.open_connections.load(Ordering::Relaxed),
            ),
            (
                "mfagw_connections_total",
                "counter",
                "Browser connections accepted.",
                self.connections_total.load(Ordering::Relaxed) as i64,
            ),
            (
                "mfagw_tls_handshake_failures_total",
                "counter",
                "TLS handshakes that failed or timed out.",
                self.tls_handshake_failures.load(Ordering::Relaxed) as i64,
            ),
            (
                "mfagw_config_reloads_total",
                "counter",
                "Configuration reloads applied.",
                self.reloads_ok.load(Ordering::Relaxed) as i64,
            ),
            (
                "mfagw_config_reload_failures_total",
                "counter",
                "Configuration reloads refused (the running configuration was kept).",
                self.reloads_failed.load(Ordering::Relaxed) as i64,
            ),
            (
                "mfagw_draining",
                "gauge",
                "1 while the gateway is shutting down.",
                i64::from(draining),
            ),
        ];
        for (name, kind, help, value) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
        if let Some(sign_in) = sign_in {
            render_sign_in_memory(&mut out, sign_in);
        }
        out
    }
}

/// What sign-in keeps in memory, each part capped: an operator sees a flood fill it.
fn render_sign_in_memory(out: &mut String, sign_in: &SignIn) {
    let revocations = sign_in.revocation_counts();
    let _ = writeln!(
        out,
        "# HELP mfagw_used_login_states Login states remembered as used (their code was accepted), so a callback cannot be replayed.\n\
         # TYPE mfagw_used_login_states gauge\n\
         mfagw_used_login_states {}",
        sign_in.remembered_states()
    );
    let _ = writeln!(
        out,
        "# HELP mfagw_revocations Revoked sessions remembered: protected (sign-outs, front-channel logouts of sids seen here) and unseen_sid (front-channel logouts of other sids, capped).\n\
         # TYPE mfagw_revocations gauge\n\
         mfagw_revocations{{store=\"protected\"}} {}\n\
         mfagw_revocations{{store=\"unseen_sid\"}} {}",
        revocations.protected, revocations.unseen_sids
    );
    let _ = writeln!(
        out,
        "# HELP mfagw_seen_sids Entra sids of sessions issued or served here, remembered so their front-channel logout is protected.\n\
         # TYPE mfagw_seen_sids gauge\n\
         mfagw_seen_sids {}",
        revocations.seen_sids
    );
}

fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
