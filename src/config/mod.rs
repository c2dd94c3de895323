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
    /// Sign-in through Entra ID. Required when any route has `access = "mfa"`.
    pub oidc: Option<OidcConfig>,
    /// What counts as multifactor authentication (defaults apply when the section is absent).
    pub mfa: MfaConfig,
    /// The sealed session cookie. Required together with `[oidc]`.
    pub session: Option<SessionConfig>,
}

/// `[oidc]`: the relying party registered in Entra ID.
#[derive(Clone)]
pub struct OidcConfig {
    /// The tenant-specific issuer, exactly as tokens carry it, e.g.
    /// `https://sts.windows.net/<tid>/` (v1.0) or `https://login.microsoftonline.com/<tid>/v2.0`.
    pub issuer: String,
    /// Which Entra token version the issuer implies; decides whether `amr` can be relied on.
    pub token_version: TokenVersion,
    /// Extension: where the provider's metadata is read. Default: for a v1.0 issuer
    /// `https://login.microsoftonline.com/<tid>/.well-known/openid-configuration`, otherwise
    /// `<issuer>/.well-known/openid-configuration`.
    pub discovery_url: String,
    pub client_id: String,
    pub client_auth: ClientAuth,
    /// Always contains `openid`.
    pub scopes: Vec<String>,
    /// Tenant ids (`tid`) accepted; default: the tenant in the issuer.
    pub allowed_tenants: Vec<String>,
    pub clock_skew: std::time::Duration,
    /// Extension: `form_post` (default, recommended by Microsoft for web apps) or `query`.
    pub response_mode: ResponseMode,
    /// Extension: how long a pending sign-in (the login-transaction cookie) stays valid.
    /// Default "10m".
    pub login_timeout: std::time::Duration,
}

impl std::fmt::Debug for OidcConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcConfig")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field("client_auth", &self.client_auth)
            .field("scopes", &self.scopes)
            .field("allowed_tenants", &self.allowed_tenants)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenVersion {
    /// `https://sts.windows.net/<tid>/`: ID tokens carry `amr`.
    EntraV1,
    /// `https://login.microsoftonline.com/<tid>/v2.0`: no `amr`; MFA only through `acrs`.
    EntraV2,
    /// Any other issuer (a test provider on loopback, another OpenID provider).
    Other,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseMode {
    FormPost,
    Query,
}

/// How the gateway authenticates itself at the token endpoint.
#[derive(Clone)]
pub enum ClientAuth {
    /// `client_secret = { file | env | value }`; sent in the form body (`client_secret_post`)
    /// or as HTTP Basic (`client_secret_basic`, extension key `client_secret_method = "basic"`).
    Secret { secret: String, basic: bool },
    /// `client_certificate = { cert = "…", key = "…" }`: `private_key_jwt` signed with the key;
    /// the certificate's thumbprints go into the assertion header.
    Certificate { cert: PathBuf, key: PathBuf },
}

impl std::fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientAuth::Secret { basic, .. } => f
                .debug_struct("Secret")
                .field("secret", &"<redacted>")
                .field("basic", basic)
                .finish(),
            ClientAuth::Certificate { cert, key } => f
                .debug_struct("Certificate")
                .field("cert", cert)
                .field("key", key)
                .finish(),
        }
    }
}

/// `[mfa]`: the evidence an ID token must carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MfaConfig {
    /// `amr` must contain one of these (default `["mfa", "ngcmfa"]`) …
    pub amr_any_of: Vec<String>,
    /// … or `acrs` one of these Conditional Access authentication-context ids (default none).
    pub acrs_any_of: Vec<String>,
    /// Sign-ins older than this must sign in again (default "12h").
    pub max_auth_age: std::time::Duration,
}

/// `[session]`: the sealed cookie.
#[derive(Clone)]
pub struct SessionConfig {
    /// Default `__Host-mfagw`.
    pub cookie_name: String,
    /// Decoded key material, each at least 32 bytes; the first seals, all open.
    pub keys: Vec<Vec<u8>>,
    /// Default "10h".
    pub lifetime: std::time::Duration,
    /// Default "1h".
    pub idle_timeout: std::time::Duration,
}

impl std::fmt::Debug for SessionConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionConfig")
            .field("cookie_name", &self.cookie_name)
            .field("keys", &format_args!("<{} redacted>", self.keys.len()))
            .field("lifetime", &self.lifetime)
            .field("idle_timeout", &self.idle_timeout)
            .finish()
    }
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
    /// Extension: longest pause within a request body the browser sends (to Exchange or to the
    /// gateway itself). A client that stops sending mid-body gives its slot back after this,
    /// not after the upstream's much longer `idle_timeout`.
    pub request_body_timeout: Duration,
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
    /// Extension: status for a request without a session that is not a top-level navigation
    /// (XHR, `fetch`, non-GET): 401 by default; OWA's script treats 440 as "session expired".
    pub unauthenticated_status: u16,
    /// Stricter than `[mfa].max_auth_age` for this route (step-up by signing in again).
    pub max_auth_age: Option<std::time::Duration>,
    /// Stricter MFA for this route: an `acrs` authentication context to request and require.
    pub acrs_any_of: Vec<String>,
    /// Entra group object ids; the session must carry one of them.
    pub groups_any_of: Vec<String>,
    /// Extension: forward WebSocket upgrades (`Upgrade: websocket`) on this route. Off by
    /// default: any other upgrade (`h2c`) is never forwarded, and neither is this one elsewhere.
    pub websocket: bool,
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

impl Default for MfaConfig {
    fn default() -> Self {
        MfaConfig {
            amr_any_of: vec!["mfa".to_owned(), "ngcmfa".to_owned()],
            acrs_any_of: Vec::new(),
            max_auth_age: std::time::Duration::from_secs(12 * 3600),
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
