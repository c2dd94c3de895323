//! The admin listener: `/healthz` (the process is alive), `/readyz` (JSON: ready or not, why,
//! each Exchange server's state, draining) and `/metrics` (Prometheus). Keep it off the DMZ
//! interface: it tells which Exchange servers exist.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::Shared;
use crate::observe::metrics::{self, Scrape, ServerHealth, SignInMemory, UpstreamConnections};

pub(super) async fn serve(listener: TcpListener, shared: Arc<Shared>, drain: CancellationToken) {
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = drain.cancelled() => return,
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, std::convert::Infallible>(respond(&req, &shared)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn respond(request: &Request<Incoming>, shared: &Shared) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match request.uri().path() {
        "/healthz" => (
            StatusCode::OK,
            "text/plain; charset=utf-8",
            "alive\n".to_owned(),
        ),
        "/readyz" => readiness(shared),
        "/metrics" => (
            StatusCode::OK,
            metrics::CONTENT_TYPE,
            shared.metrics.render(scrape(shared)),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found\n".to_owned(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// What the metrics show of the current configuration: its Exchange servers, what its sign-in
/// keeps in memory, and whether the gateway is draining.
fn scrape(shared: &Shared) -> Scrape {
    let snapshot = shared.snapshot.load();
    let servers = snapshot
        .pools
        .iter()
        .flat_map(|pool| {
            pool.servers().into_iter().map(|server| ServerHealth {
                upstream: pool.name().to_owned(),
                url: server.url,
                up: server.healthy,
            })
        })
        .collect();
    let upstream_connections = snapshot
        .pools
        .iter()
        .map(|pool| {
            let counts = pool.connection_counts();
            UpstreamConnections {
                upstream: pool.name().to_owned(),
                opened: counts.opened,
                reused: counts.reused,
                idle: counts.idle,
            }
        })
        .collect();
    let sign_in = snapshot.sign_in.as_deref().map(|sign_in| {
        let revocations = sign_in.revocation_counts();
        SignInMemory {
            used_login_states: sign_in.remembered_states(),
            protected_revocations: revocations.protected,
            unseen_sid_revocations: revocations.unseen_sids,
            seen_sids: revocations.seen_sids,
            redis: sign_in.shared_status(),
        }
    });
    Scrape {
        servers,
        upstream_connections,
        sign_in,
        kerberos: snapshot.kerberos.as_ref().map(|engine| engine.counters()),
        draining: shared.draining.load(Ordering::Relaxed),
    }
}

fn readiness(shared: &Shared) -> (StatusCode, &'static str, String) {
    let snapshot = shared.snapshot.load();
    let draining = shared.draining.load(Ordering::Relaxed);
    let ready = !draining && snapshot.ready();
    let sign_in = snapshot.sign_in.as_ref().map(|s| {
        serde_json::json!({
            "metadata_and_keys_loaded": s.is_ready(),
            "provider_reachable": s.provider().is_reachable(),
            "redis": s.shared_status().map(|r| serde_json::json!({
                "available": r.available,
                "pending_revocations": r.pending,
            })),
        })
    });
    let upstreams: Vec<serde_json::Value> = snapshot
        .pools
        .iter()
        .map(|pool| {
            let servers: Vec<serde_json::Value> = pool
                .servers()
                .into_iter()
                .map(|s| serde_json::json!({ "url": s.url, "healthy": s.healthy }))
                .collect();
            serde_json::json!({
                "name": pool.name(),
                "healthy_servers": pool.healthy_count(),
                "servers": servers,
            })
        })
        .collect();
    let body = serde_json::json!({
        "ready": ready,
        "draining": draining,
        "sign_in": sign_in,
        "upstreams": upstreams,
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, "application/json", format!("{body}\n"))
}
