//! The access log: one line per request, written when the response body is finished (or the
//! browser went away), with route, status, Exchange server, duration and bytes. The query string
//! is never logged: OWA puts its canary and other tokens there.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{Method, Uri, Version};

use crate::body::BodyError;
use crate::error::Side;
use crate::metrics::{Metrics, RouteMetrics};

pub struct AccessRecord {
    start: Instant,
    metrics: Arc<Metrics>,
    route: Arc<RouteMetrics>,
    method: Method,
    uri: Uri,
    version: Version,
    client: IpAddr,
    status: u16,
    upstream: Option<Arc<str>>,
    bytes: u64,
    failure: Option<(Side, String)>,
}

impl AccessRecord {
    pub fn new(
        start: Instant,
        metrics: Arc<Metrics>,
        route: Arc<RouteMetrics>,
        method: Method,
        uri: Uri,
        version: Version,
        client: IpAddr,
    ) -> AccessRecord {
        AccessRecord {
            start,
            metrics,
            route,
            method,
            uri,
            version,
            client,
            status: 0,
            upstream: None,
            bytes: 0,
            failure: None,
        }
    }

    pub fn set_route(&mut self, route: Arc<RouteMetrics>) {
        self.route = route;
    }

    pub fn set_status(&mut self, status: u16) {
        self.status = status;
    }

    pub fn set_upstream(&mut self, server: Arc<str>) {
        self.upstream = Some(server);
    }

    pub fn set_failure(&mut self, side: Side, detail: String) {
        self.failure = Some((side, detail));
    }

    pub fn add_bytes(&mut self, n: u64) {
        self.bytes += n;
    }

    pub fn set_body_error(&mut self, error: &BodyError) {
        let side = match error {
            BodyError::TooLarge | BodyError::Downstream(_) => Side::Downstream,
            BodyError::Upstream(_) => Side::Upstream,
        };
        self.failure = Some((side, error.to_string()));
    }
}

impl Drop for AccessRecord {
    fn drop(&mut self) {
        let elapsed = self.start.elapsed();
        self.route.count(self.status);
        self.metrics.observe_latency(elapsed);
        let duration_ms = elapsed.as_secs_f64() * 1000.0;
        let upstream = self.upstream.as_deref().unwrap_or("-");
        match &self.failure {
            None => tracing::info!(
                target: "access",
                client = %self.client,
                method = %self.method,
                path = self.uri.path(),
                version = ?self.version,
                route = &*self.route.name,
                status = self.status,
                upstream,
                duration_ms,
                bytes = self.bytes,
            ),
            Some((side, detail)) => tracing::warn!(
                target: "access",
                client = %self.client,
                method = %self.method,
                path = self.uri.path(),
                version = ?self.version,
                route = &*self.route.name,
                status = self.status,
                upstream,
                duration_ms,
                bytes = self.bytes,
                failed = side.as_str(),
                error = %detail,
            ),
        }
    }
}
