//! Configuration: one TOML file, parsed with unknown keys refused, then validated into the typed
//! [`Config`] the rest of the gateway reads. Every problem is reported with the key path it
//! concerns (and the line in the file where one is known), all at once, so `check-config` shows
//! an administrator everything to fix in one run.
//!
//! The key names are the contract of DESIGN.md section 3: extend, never rename.

mod raw;
mod secret;
mod validate;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

pub use secret::{MapSecrets, SecretSource, Secrets, SystemSecrets};
pub use validate::{ConfigError, ConfigErrors};

/// The validated configuration. Built only by [`Config::from_toml`] / [`Config::load`].
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub tls: TlsConfig,
    /// Upstreams in the order of their names (the TOML table keys).
    pub upstreams: Vec<UpstreamConfig>,
    /// Routes in file order.
    pub routes: Vec<RouteConfig>,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub https_listen: Option<SocketAddr>,
    pub http_listen: Option<SocketAddr>,
    pub admin_listen: Option<SocketAddr>,
    pub trusted_proxies: Vec<IpNet>,
    pub shutdown_grace: Duration,
    /// Extension: open connections accepted at once on the public listeners together.
    pub max_connections: usize,
    /// Extension: time a client has to complete its TLS handshake and each request head. It
    /// also bounds how long an idle HTTP/1.1 keep-alive connection waits for its next request
    /// (slowloris protection and idle cleanup are the same timer).
    pub header_read_timeout: Duration,
    /// Extension: largest request head (request line + headers) accepted; larger gets 431.
    /// At least 8192 (the HTTP/1 parser's smallest buffer).
    pub max_header_bytes: usize,
}

#[derive(Debug, Clone, Default)]
pub struct TlsConfig {
    pub certificates: Vec<CertificateConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// The table key: `[upstreams.exchange]` → `exchange`.
    pub name: String,
    pub servers: Vec<UpstreamServer>,
    pub ca_file: Option<PathBuf>,
    pub tls_server_name: Option<String>,
    pub health_check: Option<HealthCheckConfig>,
    /// Extension: TCP + TLS connect timeout to one server.
    pub connect_timeout: Duration,
    /// Extension: longest silence while waiting for or streaming a response. No total timeout:
    /// OWA holds long polls open for minutes.
    pub idle_timeout: Duration,
    /// Extension: largest request body forwarded; larger gets 413.
    pub max_request_body: u64,
}

/// One Exchange server of an upstream, from a URL such as `https://ex01.corp.contoso.com:443`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamServer {
    /// The URL as written, for logs and `/readyz`.
    pub url: String,
    pub scheme: UpstreamScheme,
    /// Host and port as they go into the request URI, e.g. `ex01.corp.contoso.com:443`.
    pub authority: http::uri::Authority,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamScheme {
    Http,
    Https,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheckConfig {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    /// Extension: consecutive failures before a server is taken out of rotation.
    pub unhealthy_threshold: u32,
    /// Extension: consecutive successes before it is put back.
    pub healthy_threshold: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteConfig {
    /// Lower-cased host name, without port.
    pub host: String,
    /// Path prefix as written, starting with `/`, without a trailing `/` (except the root `/`).
    pub path: String,
    /// Name of an entry of [`Config::upstreams`].
    pub upstream: String,
    pub access: Access,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Mfa,
    Public,
    Deny,
}

impl Access {
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Mfa => "mfa",
            Access::Public => "public",
            Access::Deny => "deny",
        }
    }
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &std::path::Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors::single(ConfigError::new(
                "",
                format!("cannot read {}: {e}", path.display()),
            ))
        })?;
        Config::from_toml(&text, &SystemSecrets)
    }

    /// Parses and validates configuration text. Secrets are resolved through `secrets`, so
    /// tests can supply them without touching the process environment.
    pub fn from_toml(text: &str, secrets: &dyn Secrets) -> Result<Config, ConfigErrors> {
        let raw = raw::parse(text)?;
        validate::validate(raw, text, secrets)
    }

    pub fn upstream(&self, name: &str) -> Option<&UpstreamConfig> {
        self.upstreams.iter().find(|u| u.name == name)
    }
}
