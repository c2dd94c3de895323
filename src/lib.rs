//! mfa-gateway: a reverse proxy that publishes on-premises Exchange 2019 (Outlook on the web,
//! the Exchange Control Panel) to the internet, in place of Web Application Proxy and AD FS.
//!
//! A request's path through the crate, top to bottom (`docs/architecture.md` says more):
//!
//! - [`server`]: listeners, TLS with SNI ([`server::tls`]), connection limits and idle
//!   timeouts, drain and reload. [`Gateway::start`] takes a [`config::Config`], already-bound
//!   [`Listeners`] and a shutdown future.
//! - `pipeline`: one request, top-down — framing checks, the gateway's own `/_gateway/*`
//!   endpoints, the router, the route's access decision, the proxy.
//! - [`routing`]: (host, path) → route, after the path normalisation IIS applies, so what the
//!   gateway judges is what Exchange serves.
//! - [`auth`]: sign-in through Entra ID (OpenID Connect), the session check of `mfa` routes
//!   (with [`activity`]: which requests move the idle timeout), sign-out; [`session`]: the sealed session cookie, pending sign-ins, revocation.
//! - [`proxy`]: header rules, the pool of Exchange servers with health checks, streaming,
//!   WebSocket upgrades where a route allows them.
//! - [`sso`]: signing the user in to Exchange after the multifactor sign-in ([`sso::adfs`]:
//!   the WS-Federation token Exchange accepts in AD FS mode; [`sso::kerberos`]: a Kerberos
//!   ticket by constrained delegation, for Exchange on Windows authentication).
//!
//! Around it: [`config`] (the TOML contract and its validation), [`error`] (one error type,
//! labelled by the side that failed, mapped to status, page and log in one place), [`pages`],
//! [`observe`] ([`observe::access`], the access log; [`observe::audit`], events for the SIEM;
//! [`observe::metrics`], Prometheus), [`demo`] (the `mfa-gateway demo` command).

#![forbid(unsafe_code)]
// `pub` means part of the library's interface (the binary, the tests, the fuzz targets use it);
// anything else says how far it reaches.
#![warn(unreachable_pub)]
// Input from the network, the browser and the identity provider is hostile: no panics on it.
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod activity;
pub mod auth;
pub mod body;
pub mod clock;
pub mod config;
pub mod demo;
pub mod error;
pub mod observe;
pub mod pages;
pub(crate) mod pipeline;
pub mod policy;
pub mod proxy;
pub mod routing;
pub mod server;
pub mod session;
pub mod sso;
pub mod worker;

pub use server::{Gateway, Listeners, StartError};

/// Makes ring the process-wide rustls provider. Every TLS configuration of the gateway names
/// ring explicitly; this covers libraries that ask for the default.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
