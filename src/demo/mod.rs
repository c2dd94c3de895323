//! `mfa-gateway demo`: everything on loopback in one command — a sample OWA-like Exchange
//! stand-in and the gateway in front of it — so an administrator can see the gateway work
//! before pointing it at real servers.

pub mod provider;
mod upstream;

use std::net::SocketAddr;

pub use provider::{
    parse_form_post, sign_in_form, ClientAuthMethod, ClientCredential, Forgery, ProviderCall,
    ProviderEndpoint, ProviderOptions, Signing, TestProvider, TestUser,
};
pub use upstream::SampleExchange;

use crate::config::{Config, SystemSecrets};
use crate::{Gateway, Listeners};

/// Runs the demo until `shutdown` completes.
pub async fn run(
    listen: SocketAddr,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    let exchange = SampleExchange::start("127.0.0.1:0".parse().map_err(|_| "address")?)
        .await
        .map_err(|e| format!("cannot start the sample Exchange server: {e}"))?;
    let toml = demo_config(listen, exchange.addr());
    let config = Config::from_toml(&toml, &SystemSecrets).map_err(|e| e.to_string())?;
    let listeners = Listeners::bind(&config.server)
        .await
        .map_err(|e| e.to_string())?;
    let gateway = Gateway::start(config, listeners, shutdown).await?;
    let addr = gateway.http_addr.ok_or("no listener")?;
    println!();
    println!("  mfa-gateway demo is running.");
    println!("  Open http://localhost:{}/owa/ in a browser.", addr.port());
    println!(
        "  Health for the load balancer: http://localhost:{}/_gateway/health",
        addr.port()
    );
    println!(
        "  Closed by default (404): http://localhost:{}/ews/exchange.asmx",
        addr.port()
    );
    println!("  Press Ctrl+C to stop.");
    println!();
    gateway.wait().await;
    Ok(())
}

fn demo_config(listen: SocketAddr, exchange: SocketAddr) -> String {
    format!(
        r#"
[server]
http_listen = "{listen}"

[upstreams.exchange]
servers = ["http://{exchange}"]
health_check = {{ path = "/owa/healthcheck.htm", interval = "5s", timeout = "2s" }}

[[routes]]
host = "localhost"
path = "/owa"
upstream = "exchange"
access = "public"

[[routes]]
host = "localhost"
path = "/ecp"
upstream = "exchange"
access = "deny"
"#
    )
}
