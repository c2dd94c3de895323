//! The driver of validation: each section's rules (in the section's own file, beside its typed
//! form) run over the parsed file, and every problem goes into one list, so `check-config` shows
//! everything to fix at once. [`Checker`] holds that list and the helpers every section uses:
//! the line of a value, durations, secrets.

use std::time::Duration;

use toml::Spanned;

use super::error::{ConfigError, ConfigErrors, Lines};
use super::raw::{RawConfig, Text};
use super::secret::{SecretSource, Secrets};
use super::sign_in::SignInSections;
use super::{Config, UpstreamConfig};

const INLINE_SECRET_WARNING: &str = "the secret is written in this configuration file, which is copied, backed up and shown around; keep it in a file ({ file = \"…\" }, chmod 600) or an environment variable ({ env = \"NAME\" })";

/// Checks every rule; warnings (valid but probably unintended settings) are logged.
pub(super) fn validate(
    raw: RawConfig,
    text: &str,
    secrets: &dyn Secrets,
) -> Result<Config, ConfigErrors> {
    let (config, warnings) = check(raw, text, secrets);
    for warning in &warnings {
        tracing::warn!("configuration: {warning}");
    }
    config
}

/// The configuration, or every error in it; and the warnings either way.
pub(super) fn check(
    mut raw: RawConfig,
    text: &str,
    secrets: &dyn Secrets,
) -> (Result<Config, ConfigErrors>, Vec<ConfigError>) {
    let mut checker = Checker {
        lines: Lines::new(text),
        errors: Vec::new(),
        warnings: Vec::new(),
    };
    let server = checker.server(raw.server.take(), &raw.tls.certificates);
    let tls = checker.tls(&raw.tls.certificates);
    let upstreams: Vec<UpstreamConfig> = raw
        .upstreams
        .iter()
        .map(|(name, upstream)| checker.upstream(name, upstream))
        .collect();
    let mfa = checker.mfa(raw.mfa.as_ref());
    let oidc = raw.oidc.as_ref().map(|oidc| checker.oidc(oidc, secrets));
    let session = raw
        .session
        .as_ref()
        .map(|session| checker.session(session, secrets));
    let sign_in = SignInSections {
        oidc: raw.oidc.is_some(),
        session: raw.session.is_some(),
        mfa: &mfa,
    };
    let account_name_claim = oidc
        .as_ref()
        .is_some_and(|oidc| oidc.account_name_claim.is_some());
    let sso = checker.sso(raw.sso.as_ref(), account_name_claim, secrets);
    let routes = checker.routes(
        raw.routes.as_deref(),
        &raw.upstreams,
        &upstreams,
        &sign_in,
        &sso,
    );
    let modes: Vec<_> = routes.iter().map(|route| route.sso).collect();
    checker.unused_sso(raw.sso.as_ref(), &modes);
    checker.sign_in_together(&raw, oidc.as_ref(), &mfa);
    let redis = raw
        .redis
        .as_ref()
        .map(|redis| checker.redis(redis, secrets));
    if let (Some(section), None) = (&raw.redis, &raw.oidc) {
        checker.warning(
            "redis",
            section,
            "has no effect without [oidc]: Redis holds the state of sign-ins and sessions",
        );
    }

    let Checker {
        mut errors,
        warnings,
        ..
    } = checker;
    if errors.is_empty() {
        let config = Config {
            server,
            tls,
            upstreams,
            routes,
            oidc,
            mfa,
            session,
            sso,
            redis,
        };
        (Ok(config), warnings)
    } else {
        errors.sort_by_key(|e| e.line.unwrap_or(0));
        (Err(ConfigErrors(errors)), warnings)
    }
}

/// The errors and warnings found so far, and the text they point into.
pub(super) struct Checker {
    pub(super) lines: Lines,
    pub(super) errors: Vec<ConfigError>,
    pub(super) warnings: Vec<ConfigError>,
}

impl Checker {
    pub(super) fn line<T>(&self, at: &Spanned<T>) -> Option<usize> {
        Some(self.lines.at(at.span().start))
    }

    pub(super) fn error<T>(
        &mut self,
        path: impl Into<String>,
        at: &Spanned<T>,
        message: impl Into<String>,
    ) {
        let line = self.line(at);
        self.errors
            .push(ConfigError::new(path, message).with_line(line));
    }

    pub(super) fn warning<T>(
        &mut self,
        path: impl Into<String>,
        at: &Spanned<T>,
        message: impl Into<String>,
    ) {
        let line = self.line(at);
        self.warnings
            .push(ConfigError::new(path, message).with_line(line));
    }

    /// A duration such as `"90s"`, or `default` when the key is left out; zero is refused
    /// unless `zero_allowed`. A bad value is recorded as an error and replaced by the default
    /// so checking can go on.
    pub(super) fn duration(
        &mut self,
        path: &str,
        value: Option<&Text>,
        default: Duration,
        zero_allowed: bool,
    ) -> Duration {
        value
            .and_then(|value| self.duration_value(path, value, zero_allowed))
            .unwrap_or(default)
    }

    /// A duration that is written; `None` (with the error recorded) when it is not valid.
    pub(super) fn duration_value(
        &mut self,
        path: &str,
        value: &Text,
        zero_allowed: bool,
    ) -> Option<Duration> {
        match humantime::parse_duration(value.get_ref()) {
            Ok(d) if d.is_zero() && !zero_allowed => {
                self.error(path, value, "must be greater than 0");
                None
            }
            Ok(d) => Some(d),
            Err(_) => {
                self.error(
                    path,
                    value,
                    format!(
                        "{:?} is not a duration; write a number and a unit, such as \"500ms\", \"30s\", \"10m\" or \"8h\"",
                        value.get_ref()
                    ),
                );
                None
            }
        }
    }

    /// Resolves a secret; an inline `{ value = … }` is accepted with a warning.
    pub(super) fn secret(
        &mut self,
        path: &str,
        source: &Spanned<SecretSource>,
        secrets: &dyn Secrets,
    ) -> Option<String> {
        if source.get_ref().is_inline() {
            self.warning(path, source, INLINE_SECRET_WARNING);
        }
        match source.get_ref().resolve(secrets) {
            Ok(secret) => Some(secret),
            Err(refusal) => {
                self.error(path, source, refusal.to_string());
                None
            }
        }
    }
}

/// `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` in hexadecimal, the form of Entra's tenant,
/// application and object ids.
pub(super) fn is_guid(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.len() == 36
        && bytes.iter().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => *b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::config::test_support::*;
    use crate::config::{Access, ClientAuth, TokenVersion};

    #[test]
    fn shipped_example_configuration_is_valid() {
        let text = include_str!("../../config/gateway.example.toml");
        let config = load(text).unwrap_or_else(|e| panic!("{e:#?}"));
        assert!(config.server.https_listen.is_some());
        assert_eq!(config.upstreams[0].servers.len(), 2);
        let oidc = config.oidc.as_ref().unwrap();
        assert_eq!(oidc.token_version, TokenVersion::EntraV1);
        assert!(matches!(
            oidc.client_auth,
            ClientAuth::Secret { basic: false, .. }
        ));
        assert_eq!(config.session.as_ref().unwrap().keys.len(), 1);
        let owa = &config.routes[0];
        assert_eq!((owa.path.as_str(), owa.access), ("/owa", Access::Mfa));
        assert_eq!(owa.unauthenticated_status, 440);
        let ecp = &config.routes[1];
        assert_eq!((ecp.path.as_str(), ecp.access), ("/ecp", Access::Mfa));
        assert_eq!(ecp.max_auth_age, Some(Duration::from_secs(3600)));
        assert!(config.routes[2..]
            .iter()
            .all(|r| r.access == Access::Public));
        let warnings = warnings(text);
        assert!(warnings.is_empty(), "{warnings:?}");
    }

    #[test]
    fn shipped_local_configuration_is_valid() {
        let text = include_str!("../../config/local.toml");
        let config = load(text).unwrap_or_else(|e| panic!("{e:#?}"));
        assert_eq!(
            config.server.http_listen,
            Some("127.0.0.1:8080".parse().unwrap())
        );
        assert_eq!(
            config.server.admin_listen,
            Some("127.0.0.1:9100".parse().unwrap())
        );
        assert!(config.server.https_listen.is_none());
        assert!(config.tls.certificates.is_empty());
        let hosts: Vec<_> = config.routes.iter().map(|r| r.host.as_str()).collect();
        assert!(
            hosts.contains(&"localhost") && hosts.contains(&"127.0.0.1"),
            "{hosts:?}"
        );
    }

    #[test]
    fn every_error_in_the_file_is_reported_at_once() {
        let text = r#"[server]
http_listen = "127.0.0.1:8080"
admin_listen = "127.0.0.1:8080"
shutdown_grace = "soon"

[upstreams.exchange]
servers = ["https://ex01/owa"]

[[routes]]
host = "mail.contoso.com:443"
path = "owa"
upstream = "exchnage"
access = "mfa"
"#;
        let errors = errors(text);
        let paths: Vec<&str> = errors
            .iter()
            .map(|e| e.split(' ').next().unwrap_or(""))
            .collect();
        assert_eq!(
            paths,
            [
                "server.admin_listen",
                "server.shutdown_grace",
                "upstreams.exchange.servers[0]",
                "routes[0].host",
                "routes[0].path",
                "routes[0].upstream",
                "routes[0].access",
            ],
            "{errors:#?}"
        );
    }

    #[test]
    fn duration_without_a_unit_is_refused() {
        refused(
            &with_server(
                "http_listen = \"127.0.0.1:8080\"\nshutdown_grace = \"30\"",
                "",
            ),
            &["server.shutdown_grace (line 3)", "\"30\" is not a duration"],
        );
    }

    #[test]
    fn zero_duration_is_refused_except_for_shutdown_grace() {
        refused(
            &with_server(
                "http_listen = \"127.0.0.1:8080\"\nheader_read_timeout = \"0s\"",
                "",
            ),
            &["server.header_read_timeout", "must be greater than 0"],
        );
        refused(
            &upstream_with("servers = [\"http://a\"]\nidle_timeout = \"0s\""),
            &["upstreams.exchange.idle_timeout", "must be greater than 0"],
        );
        let config = load(&with_server(
            "http_listen = \"127.0.0.1:8080\"\nshutdown_grace = \"0s\"\nheader_read_timeout = \"90s\"",
            "",
        ))
        .unwrap();
        assert_eq!(config.server.shutdown_grace, Duration::ZERO);
        assert_eq!(config.server.header_read_timeout, Duration::from_secs(90));
    }

    #[test]
    fn inline_secrets_are_accepted_with_a_warning() {
        let text = signed_in(
            "",
            &format!(
                "issuer = \"https://sts.windows.net/{TENANT}/\"\nclient_id = \"{CLIENT}\"\nclient_secret = {{ value = \"hunter2\" }}"
            ),
            &format!("[session]\nkeys = [{{ value = \"{SESSION_KEY}\" }}]"),
        );
        let config = load(&text).unwrap();
        assert!(matches!(
            config.oidc.unwrap().client_auth,
            ClientAuth::Secret { ref secret, .. } if secret == "hunter2"
        ));
        let warnings = warnings(&text);
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings[0].starts_with(
            "oidc.client_secret (line 16): the secret is written in this configuration file"
        ));
        assert!(warnings[1].starts_with("session.keys[0] (line 18): the secret is written"));
        assert!(warnings
            .iter()
            .all(|w| !w.contains("hunter2") && !w.contains(SESSION_KEY)));
    }
}
