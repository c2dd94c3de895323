//! mfa-gateway: a reverse proxy that publishes on-premises Exchange 2019 (Outlook on the web,
//! the Exchange Control Panel) to the internet, in place of Web Application Proxy.
//!
//! A request's path through the crate, top to bottom:
//!
//! - [`server`]: listeners, TLS with SNI ([`server::tls`]), connection limits, drain and
//!   reload. [`Gateway::start`] takes a [`config::Config`], already-bound [`Listeners`] and a
//!   shutdown future.
//! - [`routing`]: (host, path) → route, after the path normalisation IIS applies, so what the
//!   gateway judges is what Exchange serves.
//! - the access decision of the route (`public`, `deny`; `mfa` with sign-in).
//! - [`proxy`]: header rules, the pool of Exchange servers with health checks, streaming.
//!
//! Around it: [`config`] (the TOML contract and its validation), [`error`] (one error type,
//! labelled by the side that failed, mapped to status, page and log in one place), [`pages`],
//! [`access`] (the access log), [`metrics`].

#![forbid(unsafe_code)]
// Input from the network, the browser and the identity provider is hostile: no panics on it.
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod access;
pub mod audit;
pub mod auth;
pub mod body;
pub mod clock;
pub mod config;
pub mod demo;
pub mod error;
pub mod metrics;
pub mod pages;
pub mod proxy;
pub mod routing;
pub mod server;
pub mod session;

pub use server::{Gateway, Listeners};

/// Makes ring the process-wide rustls provider. Every TLS configuration of the gateway names
/// ring explicitly; this covers libraries that ask for the default.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
