//! `test-provider`: the test OpenID provider of `mfa-gateway demo` and the tests
//! ([`mfa_gateway::demo::TestProvider`]) as a standalone process, for the benchmark in
//! `bench/` (Apache mod_auth_openidc and scripted sign-ins with curl). **Never for
//! production**: it signs in whoever asks, with or without MFA as they choose. It uses none
//! of the provider's test kit, so `cargo build` leaves the kit out: it issues honest tokens.
//!
//! ```text
//! test-provider --listen 127.0.0.1:9400 --client-id ID --client-secret SECRET
//! ```
//!
//! Prints its issuer (`http://127.0.0.1:9400/<tenant-id>/`) on the first line of standard
//! output, then serves on loopback until killed. Discovery is at
//! `<issuer>.well-known/openid-configuration`.

use std::io::Write;
use std::net::SocketAddr;

use clap::Parser;
use mfa_gateway::demo::{ClientCredential, ProviderOptions, TestProvider};

#[derive(Parser)]
#[command(about = "Test OpenID provider on loopback (signs in anyone: tests and benchmarks only)")]
struct Args {
    /// Loopback address and port to listen on, e.g. 127.0.0.1:9400 (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Client id to register.
    #[arg(long)]
    client_id: String,
    /// Its client secret (client_secret_post or client_secret_basic).
    #[arg(long)]
    client_secret: String,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let provider = match TestProvider::start(ProviderOptions {
        addr: Some(args.listen),
        ..ProviderOptions::default()
    })
    .await
    {
        Ok(provider) => provider,
        Err(e) => {
            eprintln!("test-provider: cannot start on {}: {e}", args.listen);
            return std::process::ExitCode::FAILURE;
        }
    };
    provider.register_client(args.client_id, ClientCredential::Secret(args.client_secret));
    let mut out = std::io::stdout();
    let _ = writeln!(out, "{}", provider.issuer());
    let _ = out.flush();
    eprintln!(
        "test-provider: discovery at {} (users: alice, bob, carol)",
        provider.discovery_url()
    );
    // Until killed (SIGTERM/SIGINT end the process; the provider drops with it).
    std::future::pending::<()>().await;
    std::process::ExitCode::SUCCESS
}
