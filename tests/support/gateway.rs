//! The gateway started in this test process from a TOML text, on listeners bound to
//! 127.0.0.1:0 before it starts (no port is ever chosen and then released), with the clock the
//! test gives it, and its audit events at hand.

use std::net::SocketAddr;
use std::time::Duration;

use mfa_gateway::clock::Clock;
use mfa_gateway::config::{Config, SystemSecrets};
use mfa_gateway::{Gateway, Listeners};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use super::logging::{audit_events_since, audit_mark, init, AuditEvent};
use super::wait::wait_until;

/// The gateway running in this test process on 127.0.0.1:0 listeners.
pub struct TestGateway {
    pub gateway: Option<Gateway>,
    pub https: Option<SocketAddr>,
    pub http: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    /// Where this gateway's audit events begin in the process-wide capture.
    audit_from: usize,
}

impl TestGateway {
    /// Starts the gateway from TOML. The `[server]` listen addresses in the text are ignored:
    /// listeners are bound to 127.0.0.1:0 — HTTPS when the config has certificates, HTTP when
    /// it sets `http_listen`, admin when it sets `admin_listen`.
    pub async fn start(toml: &str) -> TestGateway {
        TestGateway::launch(toml, None).await
    }

    /// [`TestGateway::start`] with the gateway reading time from `clock`.
    pub async fn start_with_clock(toml: &str, clock: Clock) -> TestGateway {
        TestGateway::launch(toml, Some(clock)).await
    }

    async fn launch(toml: &str, clock: Option<Clock>) -> TestGateway {
        init();
        let config = Config::from_toml(toml, &SystemSecrets)
            .unwrap_or_else(|e| panic!("test configuration is invalid:\n{e}"));
        let loopback = |wanted: bool| async move {
            if wanted {
                Some(TcpListener::bind("127.0.0.1:0").await.unwrap())
            } else {
                None
            }
        };
        let listeners = Listeners {
            https: loopback(config.server.https_listen.is_some()).await,
            http: loopback(config.server.http_listen.is_some()).await,
            admin: loopback(config.server.admin_listen.is_some()).await,
        };
        let audit_from = audit_mark();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let shutdown = async move {
            let _ = stop_rx.await;
        };
        let started = match clock {
            Some(clock) => Gateway::start_with_clock(config, listeners, shutdown, clock).await,
            None => Gateway::start(config, listeners, shutdown).await,
        };
        let gateway = started.unwrap_or_else(|e| panic!("gateway did not start: {e}"));
        TestGateway {
            https: gateway.https_addr,
            http: gateway.http_addr,
            admin: gateway.admin_addr,
            gateway: Some(gateway),
            stop: Some(stop_tx),
            audit_from,
        }
    }

    pub fn gateway(&self) -> &Gateway {
        self.gateway.as_ref().unwrap()
    }

    /// Waits (up to 20 s) until the gateway reports ready: provider metadata and keys
    /// loaded, Exchange healthy.
    pub async fn wait_ready(&self) {
        assert!(
            wait_until(Duration::from_secs(20), || async {
                self.gateway().is_ready()
            })
            .await,
            "the gateway did not become ready within 20 s"
        );
    }

    /// The audit events of sign-ins through this gateway, oldest first: the events whose
    /// `host` names one of its listeners (the Host a browser sends carries the port). Every
    /// sign-in success and refusal has one; an event is recorded before the answer that
    /// follows it is sent, so it is here once the browser has that answer.
    pub fn audit_events(&self) -> Vec<AuditEvent> {
        let ports: Vec<u16> = [self.https, self.http]
            .into_iter()
            .flatten()
            .map(|addr| addr.port())
            .collect();
        audit_events_since(self.audit_from)
            .into_iter()
            .filter(|event| event.host_port().is_some_and(|port| ports.contains(&port)))
            .collect()
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
