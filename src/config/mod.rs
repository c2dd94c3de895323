//! Configuration: one TOML file, parsed with unknown keys refused, then validated into the typed
//! [`Config`] the rest of the gateway reads. Every problem is reported with the key path it
//! concerns (and the line in the file where one is known), all at once, so `check-config` shows
//! an administrator everything to fix in one run.
//!
//! The key names are the contract of DESIGN.md section 3: extend, never rename.
//!
//! How the module reads, in the order a file goes through it:
//! - `raw`: the file as written, section by section, with unknown keys refused and each value's
//!   position kept for error messages.
//! - `validate`: the driver that runs every section's rules and collects all errors.
//! - one file per section, holding its typed form, its rules and their tests: `server`, `tls`,
//!   `upstreams`, `routes`, `oidc` (with `oidc/issuer` and `oidc/client_auth`), `mfa`,
//!   `session`, `sso` (with `kerberos`), `redis`; and `sign_in` for the rules that join `[oidc]`, `[mfa]`, `[session]` and the
//!   policy keys of `access = "mfa"` routes.
//! - `defaults`: the value of every key the file may leave out; `error`: what `check-config`
//!   prints; `secret`: where secrets are read from.

mod admission;
mod defaults;
mod error;
mod kerberos;
mod mfa;
mod oidc;
mod raw;
mod redis;
mod routes;
mod secret;
mod server;
mod session;
mod sign_in;
mod sso;
mod tls;
mod upstreams;
mod validate;

#[cfg(test)]
mod test_support;

pub use error::{ConfigError, ConfigErrors};
pub use kerberos::{KerberosConfig, KerberosUser};
pub use mfa::MfaConfig;
pub use oidc::{ClientAuth, OidcConfig, ResponseMode, TokenVersion};
pub use redis::{OnUnavailable, RedisAddress, RedisConfig, RedisMode, DEFAULT_REDIS_KEY_PREFIX};
pub use routes::{Access, RouteConfig};
pub use secret::{MapSecrets, SecretError, SecretSource, Secrets, SystemSecrets};
pub use server::ServerConfig;
pub use session::SessionConfig;
pub use sso::{AdfsConfig, Sso, SsoConfig};
pub use tls::{CertificateConfig, TlsConfig};
pub use upstreams::{
    HealthCheckConfig, UpstreamConfig, UpstreamId, UpstreamScheme, UpstreamServer,
};

/// The validated configuration. Built only by [`Config::from_toml`] / [`Config::load`], so
/// everything in it has passed every rule: addresses are parsed, ids are GUIDs, a route's
/// upstream exists.
#[derive(Debug, Clone)]
pub struct Config {
    /// `[server]`: listeners and connection limits.
    pub server: ServerConfig,
    /// `[[tls.certificates]]`: what the HTTPS listener presents.
    pub tls: TlsConfig,
    /// `[upstreams.<name>]`, in the order of their names (the TOML table keys); a route's
    /// [`RouteConfig::upstream`] is an index into this list.
    pub upstreams: Vec<UpstreamConfig>,
    /// `[[routes]]`, in file order.
    pub routes: Vec<RouteConfig>,
    /// `[oidc]`: sign-in through Entra ID. Present when any route has `access = "mfa"`.
    pub oidc: Option<OidcConfig>,
    /// `[mfa]`: what counts as multifactor authentication (defaults apply when the section is
    /// absent).
    pub mfa: MfaConfig,
    /// `[session]`: the sealed session cookie. Present together with `[oidc]`.
    pub session: Option<SessionConfig>,
    /// `[sso]`: how Exchange signs in the users the gateway admitted, per route's `sso` key.
    pub sso: SsoConfig,
    /// `[redis]`: state shared by several gateways (revocations, single-use login states).
    pub redis: Option<RedisConfig>,
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

    /// The warnings for a configuration text: settings that are accepted but probably not what
    /// the administrator meant (an upstream no route uses). Empty when the text does not parse.
    /// [`Config::from_toml`] logs them with `tracing::warn!`; `check-config` can print these.
    pub fn warnings(text: &str) -> Vec<ConfigError> {
        match raw::parse(text) {
            Ok(raw) => validate::check(raw, text, &SystemSecrets).1,
            Err(_) => Vec::new(),
        }
    }

    pub fn upstream(&self, name: &str) -> Option<&UpstreamConfig> {
        self.upstreams.iter().find(|u| u.name == name)
    }
}
