//! The rules a parsed configuration must follow before the gateway starts with it. Every rule
//! adds to one list of errors, so `check-config` shows everything to fix at once.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::{alphabet, Engine as _};
use ipnet::IpNet;
use rustls_pki_types::ServerName;
use toml::Spanned;

use super::raw::{
    self, key_path, RawConfig, RawHealthCheck, RawMfa, RawOidc, RawRoute, RawSession, RawSize,
    RawUpstream, Text,
};
use super::secret::{SecretSource, Secrets, SystemSecrets};
use super::{
    Access, CertificateConfig, ClientAuth, Config, HealthCheckConfig, MfaConfig, OidcConfig,
    ResponseMode, RouteConfig, ServerConfig, SessionConfig, TlsConfig, TokenVersion,
    UpstreamConfig, UpstreamScheme, UpstreamServer,
};

/// One problem in the configuration, at a key path such as `routes[1].upstream`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Key path, e.g. `upstreams.exchange.servers[0]`; empty when the problem is the whole file.
    pub path: String,
    /// 1-based line in the file, when known.
    pub line: Option<usize>,
    pub message: String,
}

impl ConfigError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            path: path.into(),
            line: None,
            message: message.into(),
        }
    }

    pub fn with_line(mut self, line: Option<usize>) -> ConfigError {
        self.line = line;
        self
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.path.is_empty(), self.line) {
            (false, Some(line)) => write!(f, "{} (line {line}): {}", self.path, self.message),
            (false, None) => write!(f, "{}: {}", self.path, self.message),
            (true, Some(line)) => write!(f, "line {line}: {}", self.message),
            (true, None) => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

/// Every problem found in a configuration; displayed one per line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    pub fn single(error: ConfigError) -> ConfigErrors {
        ConfigErrors(vec![error])
    }

    pub fn iter(&self) -> std::slice::Iter<'_, ConfigError> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// The HTTP/1 parser's smallest read buffer: a lower limit could not be enforced.
const MIN_HEADER_BYTES: usize = 8192;
const MAX_HEADER_BYTES: usize = 1_048_576;

/// 1-based line of byte `offset` in `text`.
pub(crate) fn line_at(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Checks every rule; warnings (valid but probably unintended settings) are logged.
pub(crate) fn validate(
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

impl Config {
    /// The warnings for a configuration text: settings that are accepted but probably not what
    /// the administrator meant (an upstream no route uses). Empty when the text does not parse.
    /// [`Config::from_toml`] logs them with `tracing::warn!`; `check-config` can print these.
    pub fn warnings(text: &str) -> Vec<ConfigError> {
        match raw::parse(text) {
            Ok(raw) => check(raw, text, &SystemSecrets).1,
            Err(_) => Vec::new(),
        }
    }
}

fn check(
    mut raw: RawConfig,
    text: &str,
    secrets: &dyn Secrets,
) -> (Result<Config, ConfigErrors>, Vec<ConfigError>) {
    let mut checker = Checker {
        text,
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
    let sign_in = SignIn {
        oidc: raw.oidc.is_some(),
        session: raw.session.is_some(),
        mfa: &mfa,
    };
    let routes = checker.routes(raw.routes.as_deref(), &raw.upstreams, &sign_in);
    checker.sign_in_together(&raw, oidc.as_ref(), &mfa);

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
        };
        (Ok(config), warnings)
    } else {
        errors.sort_by_key(|e| e.line.unwrap_or(0));
        (Err(ConfigErrors(errors)), warnings)
    }
}

/// What the routes need to know about the sign-in sections.
struct SignIn<'a> {
    oidc: bool,
    session: bool,
    mfa: &'a MfaConfig,
}

struct Checker<'t> {
    text: &'t str,
    errors: Vec<ConfigError>,
    warnings: Vec<ConfigError>,
}

impl Checker<'_> {
    fn line<T>(&self, at: &Spanned<T>) -> Option<usize> {
        Some(line_at(self.text, at.span().start))
    }

    fn error<T>(&mut self, path: impl Into<String>, at: &Spanned<T>, message: impl Into<String>) {
        let line = self.line(at);
        self.errors
            .push(ConfigError::new(path, message).with_line(line));
    }

    fn warning<T>(&mut self, path: impl Into<String>, at: &Spanned<T>, message: impl Into<String>) {
        let line = self.line(at);
        self.warnings
            .push(ConfigError::new(path, message).with_line(line));
    }

    fn server(
        &mut self,
        server: Option<Spanned<raw::RawServer>>,
        certificates: &[Spanned<raw::RawCertificate>],
    ) -> ServerConfig {
        let server_line = server.as_ref().and_then(|s| self.line(s));
        let server = server.map(Spanned::into_inner).unwrap_or_default();

        let https_listen = self.socket_addr("server.https_listen", server.https_listen.as_ref());
        let http_listen = self.socket_addr("server.http_listen", server.http_listen.as_ref());
        let admin_listen = self.socket_addr("server.admin_listen", server.admin_listen.as_ref());
        if server.https_listen.is_none() && server.http_listen.is_none() {
            self.errors.push(
                ConfigError::new(
                    "server",
                    "at least one of https_listen or http_listen is required",
                )
                .with_line(server_line),
            );
        }
        self.listeners_apart(
            (&server.https_listen, https_listen),
            (&server.http_listen, http_listen),
            (&server.admin_listen, admin_listen),
        );

        match (&server.https_listen, certificates.first()) {
            (Some(https), None) => self.error(
                "server.https_listen",
                https,
                "needs at least one [[tls.certificates]] entry with the certificate and key of the published host names",
            ),
            (None, Some(first)) => self.error(
                "tls.certificates[0]",
                first,
                "certificates are configured but server.https_listen is not set; add https_listen or remove [[tls.certificates]]",
            ),
            _ => {}
        }

        let mut trusted_proxies = Vec::new();
        for (i, entry) in server.trusted_proxies.iter().enumerate() {
            let text = entry.get_ref().trim();
            if let Ok(net) = text.parse::<IpNet>() {
                trusted_proxies.push(net.trunc());
            } else if let Ok(addr) = text.parse::<IpAddr>() {
                trusted_proxies.push(IpNet::from(addr));
            } else {
                self.error(
                    format!("server.trusted_proxies[{i}]"),
                    entry,
                    format!(
                        "{:?} is neither an IP network such as \"10.0.0.0/24\" nor an IP address such as \"10.0.0.5\"",
                        entry.get_ref()
                    ),
                );
            }
        }

        let shutdown_grace = self.duration(
            "server.shutdown_grace",
            server.shutdown_grace.as_ref(),
            raw::DEFAULT_SHUTDOWN_GRACE,
            true,
        );
        let header_read_timeout = self.duration(
            "server.header_read_timeout",
            server.header_read_timeout.as_ref(),
            raw::DEFAULT_HEADER_READ_TIMEOUT,
            false,
        );
        let request_body_timeout = self.duration(
            "server.request_body_timeout",
            server.request_body_timeout.as_ref(),
            raw::DEFAULT_REQUEST_BODY_TIMEOUT,
            false,
        );
        let max_connections = match &server.max_connections {
            None => raw::DEFAULT_MAX_CONNECTIONS as usize,
            Some(n) => match usize::try_from(*n.get_ref()) {
                Ok(n) if n >= 1 => n,
                _ => {
                    self.error("server.max_connections", n, "must be at least 1");
                    1
                }
            },
        };
        let max_header_bytes = match &server.max_header_bytes {
            None => raw::DEFAULT_MAX_HEADER_BYTES as usize,
            Some(n) => match usize::try_from(*n.get_ref()) {
                Ok(n) if (MIN_HEADER_BYTES..=MAX_HEADER_BYTES).contains(&n) => n,
                _ => {
                    self.error(
                        "server.max_header_bytes",
                        n,
                        format!("must be between {MIN_HEADER_BYTES} and {MAX_HEADER_BYTES} bytes"),
                    );
                    MIN_HEADER_BYTES
                }
            },
        };

        ServerConfig {
            https_listen,
            http_listen,
            admin_listen,
            trusted_proxies,
            shutdown_grace,
            max_connections,
            header_read_timeout,
            max_header_bytes,
            request_body_timeout,
        }
    }

    fn socket_addr(&mut self, path: &str, value: Option<&Text>) -> Option<SocketAddr> {
        let value = value?;
        match value.get_ref().parse::<SocketAddr>() {
            Ok(addr) => Some(addr),
            Err(_) => {
                self.error(
                    path,
                    value,
                    format!(
                        "{:?} is not an IP address and port; write it like \"0.0.0.0:443\", \"127.0.0.1:9100\" or \"[::]:443\"",
                        value.get_ref()
                    ),
                );
                None
            }
        }
    }

    /// Two listeners on one address cannot both bind; the admin listener in particular must not
    /// end up on the public port, where `/metrics` would be open to the internet.
    fn listeners_apart(
        &mut self,
        https: (&Option<Text>, Option<SocketAddr>),
        http: (&Option<Text>, Option<SocketAddr>),
        admin: (&Option<Text>, Option<SocketAddr>),
    ) {
        let named = [
            ("https_listen", https),
            ("http_listen", http),
            ("admin_listen", admin),
        ];
        for (i, (later_name, (later_raw, later))) in named.iter().enumerate() {
            for (earlier_name, (_, earlier)) in &named[..i] {
                if let (Some(raw), Some(a), Some(b)) = (later_raw, later, earlier) {
                    if clash(*a, *b) {
                        self.error(
                            format!("server.{later_name}"),
                            raw,
                            format!("must differ from server.{earlier_name} ({b}): both cannot listen on the same address and port"),
                        );
                    }
                }
            }
        }
    }

    fn tls(&mut self, certificates: &[Spanned<raw::RawCertificate>]) -> TlsConfig {
        let mut out = Vec::new();
        for (i, certificate) in certificates.iter().enumerate() {
            let certificate = certificate.get_ref();
            for (key, value) in [("cert", &certificate.cert), ("key", &certificate.key)] {
                if value.get_ref().trim().is_empty() {
                    self.error(
                        format!("tls.certificates[{i}].{key}"),
                        value,
                        "must be the path of a PEM file, not empty",
                    );
                }
            }
            out.push(CertificateConfig {
                cert: PathBuf::from(certificate.cert.get_ref()),
                key: PathBuf::from(certificate.key.get_ref()),
            });
        }
        TlsConfig { certificates: out }
    }

    fn upstream(&mut self, name: &Text, upstream: &Spanned<RawUpstream>) -> UpstreamConfig {
        let path = key_path("upstreams", name.get_ref());
        let upstream = upstream.get_ref();

        if upstream.servers.get_ref().is_empty() {
            self.error(
                format!("{path}.servers"),
                &upstream.servers,
                "at least one server is required, such as \"https://ex01.corp.contoso.com\"",
            );
        }
        if upstream.servers.get_ref().len() > MAX_UPSTREAM_SERVERS {
            self.error(
                format!("{path}.servers"),
                &upstream.servers,
                format!("at most {MAX_UPSTREAM_SERVERS} servers per upstream; split the servers into several upstreams"),
            );
        }
        let mut servers: Vec<UpstreamServer> = Vec::new();
        let mut seen: HashMap<(bool, String), usize> = HashMap::new();
        for (i, url) in upstream.servers.get_ref().iter().enumerate() {
            let server_path = format!("{path}.servers[{i}]");
            match parse_server(url.get_ref()) {
                Ok(server) => {
                    let identity = (
                        server.scheme == UpstreamScheme::Https,
                        server.authority.as_str().to_ascii_lowercase(),
                    );
                    if let Some(first) = seen.get(&identity) {
                        self.error(
                            server_path,
                            url,
                            format!(
                                "{:?} is listed twice (also servers[{first}])",
                                url.get_ref()
                            ),
                        );
                    } else {
                        seen.insert(identity, i);
                        servers.push(server);
                    }
                }
                Err(message) => self.error(server_path, url, message),
            }
        }

        // ca_file and tls_server_name only mean something for TLS to the server; on plain HTTP
        // they would suggest a protection that is not there.
        let only_http =
            !servers.is_empty() && servers.iter().all(|s| s.scheme == UpstreamScheme::Http);
        let ca_file = upstream.ca_file.as_ref().map(|ca_file| {
            if ca_file.get_ref().trim().is_empty() {
                self.error(
                    format!("{path}.ca_file"),
                    ca_file,
                    "must be the path of a PEM file, not empty; leave ca_file out to use the system roots",
                );
            } else if only_http {
                self.error(
                    format!("{path}.ca_file"),
                    ca_file,
                    "applies to https:// servers only, and every server of this upstream is http://",
                );
            }
            PathBuf::from(ca_file.get_ref())
        });
        let tls_server_name = upstream.tls_server_name.as_ref().map(|name| {
            if ServerName::try_from(name.get_ref().as_str()).is_err() {
                self.error(
                    format!("{path}.tls_server_name"),
                    name,
                    format!("{:?} is not a DNS name or IP address", name.get_ref()),
                );
            } else if only_http {
                self.error(
                    format!("{path}.tls_server_name"),
                    name,
                    "applies to https:// servers only, and every server of this upstream is http://",
                );
            }
            name.get_ref().to_ascii_lowercase()
        });

        let health_check = upstream
            .health_check
            .as_ref()
            .map(|h| self.health_check(&format!("{path}.health_check"), h));
        let connect_timeout = self.duration(
            &format!("{path}.connect_timeout"),
            upstream.connect_timeout.as_ref(),
            raw::DEFAULT_CONNECT_TIMEOUT,
            false,
        );
        let idle_timeout = self.duration(
            &format!("{path}.idle_timeout"),
            upstream.idle_timeout.as_ref(),
            raw::DEFAULT_IDLE_TIMEOUT,
            false,
        );
        let max_request_body = match &upstream.max_request_body {
            None => raw::DEFAULT_MAX_REQUEST_BODY,
            Some(size) => parse_size(size.get_ref()).unwrap_or_else(|message| {
                self.error(format!("{path}.max_request_body"), size, message);
                raw::DEFAULT_MAX_REQUEST_BODY
            }),
        };

        UpstreamConfig {
            name: name.get_ref().clone(),
            servers,
            ca_file,
            tls_server_name,
            health_check,
            connect_timeout,
            idle_timeout,
            max_request_body,
        }
    }

    fn health_check(&mut self, path: &str, check: &Spanned<RawHealthCheck>) -> HealthCheckConfig {
        let check = check.get_ref();
        if !check.path.get_ref().starts_with('/') {
            self.error(
                format!("{path}.path"),
                &check.path,
                format!(
                    "{:?} must start with \"/\", such as \"/owa/healthcheck.htm\"",
                    check.path.get_ref()
                ),
            );
        }
        let interval = self.duration(
            &format!("{path}.interval"),
            check.interval.as_ref(),
            raw::DEFAULT_HEALTH_INTERVAL,
            false,
        );
        let timeout = self.duration(
            &format!("{path}.timeout"),
            check.timeout.as_ref(),
            raw::DEFAULT_HEALTH_TIMEOUT,
            false,
        );
        if timeout >= interval {
            let message = format!(
                "timeout ({}) must be shorter than interval ({})",
                humantime::format_duration(timeout),
                humantime::format_duration(interval)
            );
            let at = match (&check.timeout, &check.interval) {
                (Some(t), _) => Some(("timeout", t)),
                (None, Some(i)) => Some(("interval", i)),
                (None, None) => None,
            };
            if let Some((key, at)) = at {
                self.error(format!("{path}.{key}"), at, message);
            }
        }
        let unhealthy_threshold = self.threshold(
            &format!("{path}.unhealthy_threshold"),
            check.unhealthy_threshold.as_ref(),
            raw::DEFAULT_UNHEALTHY_THRESHOLD,
        );
        let healthy_threshold = self.threshold(
            &format!("{path}.healthy_threshold"),
            check.healthy_threshold.as_ref(),
            raw::DEFAULT_HEALTHY_THRESHOLD,
        );
        HealthCheckConfig {
            path: check.path.get_ref().clone(),
            interval,
            timeout,
            unhealthy_threshold,
            healthy_threshold,
        }
    }

    fn threshold(&mut self, path: &str, value: Option<&Spanned<i64>>, default: i64) -> u32 {
        let Some(value) = value else {
            return u32::try_from(default).unwrap_or(1);
        };
        match u32::try_from(*value.get_ref()) {
            Ok(n) if n >= 1 => n,
            _ => {
                self.error(path, value, "must be a whole number of at least 1");
                1
            }
        }
    }

    /// A duration such as `"90s"`; zero is refused unless `zero_allowed`. A bad value is
    /// recorded as an error and replaced by the default so checking can go on.
    fn duration(
        &mut self,
        path: &str,
        value: Option<&Text>,
        default: &str,
        zero_allowed: bool,
    ) -> Duration {
        let fallback = humantime::parse_duration(default).unwrap_or_default();
        value
            .and_then(|value| self.duration_value(path, value, zero_allowed))
            .unwrap_or(fallback)
    }

    /// A duration that is written; `None` (with the error recorded) when it is not valid.
    fn duration_value(&mut self, path: &str, value: &Text, zero_allowed: bool) -> Option<Duration> {
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

    fn routes(
        &mut self,
        routes: Option<&[Spanned<RawRoute>]>,
        upstreams: &[(Text, Spanned<RawUpstream>)],
        sign_in: &SignIn<'_>,
    ) -> Vec<RouteConfig> {
        let routes = routes.unwrap_or_default();
        if routes.is_empty() {
            self.errors.push(ConfigError::new(
                "routes",
                "at least one [[routes]] entry is required; without routes every request gets 404",
            ));
        }
        let names: Vec<&str> = upstreams
            .iter()
            .map(|(n, _)| n.get_ref().as_str())
            .collect();
        let mut used: BTreeSet<&str> = BTreeSet::new();
        let mut seen: HashMap<(String, String), usize> = HashMap::new();
        let mut out = Vec::new();

        for (i, route) in routes.iter().enumerate() {
            let path = format!("routes[{i}]");
            let route = route.get_ref();

            let host = check_route_host(route.host.get_ref())
                .map_err(|message| self.error(format!("{path}.host"), &route.host, message))
                .ok();
            let prefix = check_route_path(route.path.get_ref())
                .map_err(|message| self.error(format!("{path}.path"), &route.path, message))
                .ok();

            let upstream = route.upstream.get_ref();
            if let Some(known) = names.iter().find(|n| **n == upstream.as_str()) {
                used.insert(*known);
            } else {
                let known = if names.is_empty() {
                    "no [upstreams.<name>] is defined".to_owned()
                } else {
                    format!("known upstreams: {}", names.join(", "))
                };
                self.error(
                    format!("{path}.upstream"),
                    &route.upstream,
                    format!("no upstream named {upstream:?}; {known}"),
                );
            }

            let access = match route.access.get_ref().as_str() {
                "public" => Some(Access::Public),
                "deny" => Some(Access::Deny),
                "mfa" => {
                    // Refused rather than downgraded: a route the administrator meant to
                    // protect must never be published without sign-in.
                    let missing: Vec<&str> =
                        [("[oidc]", sign_in.oidc), ("[session]", sign_in.session)]
                            .into_iter()
                            .filter(|(_, present)| !present)
                            .map(|(name, _)| name)
                            .collect();
                    if !missing.is_empty() {
                        self.error(
                            format!("{path}.access"),
                            &route.access,
                            format!(
                                "access = \"mfa\" needs sign-in through Entra ID, configured in [oidc] and [session]; this file has no {}",
                                missing.join(" and no ")
                            ),
                        );
                    }
                    Some(Access::Mfa)
                }
                other => {
                    self.error(
                        format!("{path}.access"),
                        &route.access,
                        format!("access = {other:?} is not one of \"mfa\", \"public\" or \"deny\""),
                    );
                    None
                }
            };

            if let (Some(host), Some(prefix)) = (&host, &prefix) {
                let key = (host.clone(), prefix.to_lowercase());
                if let Some(first) = seen.get(&key) {
                    self.error(
                        format!("{path}.path"),
                        &route.path,
                        format!(
                            "routes[{first}] already publishes host {host:?} and path {prefix:?} (paths are compared without regard to case)"
                        ),
                    );
                } else {
                    seen.insert(key, i);
                }
            }

            let policy = self.route_policy(&path, route, access, sign_in.mfa);

            if let (Some(host), Some(path), Some(access)) = (host, prefix, access) {
                out.push(RouteConfig {
                    host,
                    path,
                    upstream: upstream.clone(),
                    access,
                    unauthenticated_status: policy.unauthenticated_status,
                    max_auth_age: policy.max_auth_age,
                    acrs_any_of: policy.acrs_any_of,
                    groups_any_of: policy.groups_any_of,
                    websocket: route.websocket.as_ref().is_some_and(|w| *w.get_ref()),
                });
            }
        }

        for (name, _) in upstreams {
            if !used.contains(name.get_ref().as_str()) {
                let line = self.line(name);
                self.warnings.push(
                    ConfigError::new(
                        key_path("upstreams", name.get_ref()),
                        "no route uses this upstream; no request will reach it",
                    )
                    .with_line(line),
                );
            }
        }
        out
    }
}

/// The keys of a route that refine `access = "mfa"`.
struct RoutePolicy {
    unauthenticated_status: u16,
    max_auth_age: Option<Duration>,
    acrs_any_of: Vec<String>,
    groups_any_of: Vec<String>,
}

/// The pool remembers which servers a request has tried in one 64-bit mask.
pub(crate) const MAX_UPSTREAM_SERVERS: usize = 64;

/// AES-256 needs 256 bits of key material; fewer random bytes would weaken every session.
const MIN_SESSION_KEY_BYTES: usize = 32;

const SESSION_KEY_HINT: &str =
    "make one with `openssl rand -base64 32 > /etc/mfa-gateway/session.key` and `chmod 600` it";

const INLINE_SECRET_WARNING: &str = "the secret is written in this configuration file, which is copied, backed up and shown around; keep it in a file ({ file = \"…\" }, chmod 600) or an environment variable ({ env = \"NAME\" })";

/// `amr` values that name a single factor: accepting one of them as MFA would let every
/// password sign-in through.
const SINGLE_FACTOR_AMR: [&str; 2] = ["pwd", "wia"];

/// Base64 as `openssl rand -base64` writes it, or URL-safe; padding optional.
const ANY_PADDING: GeneralPurposeConfig = GeneralPurposeConfig::new()
    .with_encode_padding(false)
    .with_decode_padding_mode(DecodePaddingMode::Indifferent);
const STANDARD_ANY_PADDING: GeneralPurpose = GeneralPurpose::new(&alphabet::STANDARD, ANY_PADDING);
const URL_SAFE_ANY_PADDING: GeneralPurpose = GeneralPurpose::new(&alphabet::URL_SAFE, ANY_PADDING);

// Sign-in: [oidc], [mfa], [session], the route policy keys and how they fit together.
impl Checker<'_> {
    fn oidc(&mut self, section: &Spanned<RawOidc>, secrets: &dyn Secrets) -> OidcConfig {
        let oidc = section.get_ref();
        let issuer = match parse_issuer(oidc.issuer.get_ref()) {
            Ok(issuer) => {
                if let Some(warning) = &issuer.warning {
                    self.warning("oidc.issuer", &oidc.issuer, warning.clone());
                }
                Some(issuer)
            }
            Err(message) => {
                self.error("oidc.issuer", &oidc.issuer, message);
                None
            }
        };
        let token_version = issuer.as_ref().map_or(TokenVersion::Other, |i| i.version);
        let entra = token_version != TokenVersion::Other;

        let discovery_url = match &oidc.discovery_url {
            Some(url) => {
                if let Err(message) = check_provider_url(url.get_ref(), true) {
                    self.error("oidc.discovery_url", url, message);
                }
                url.get_ref().clone()
            }
            None => issuer
                .as_ref()
                .map(Issuer::discovery_url)
                .unwrap_or_default(),
        };

        let client_id = oidc.client_id.get_ref().trim();
        if client_id.is_empty() {
            self.error(
                "oidc.client_id",
                &oidc.client_id,
                "must be the Application (client) ID of the app registration, not empty",
            );
        } else if entra && !is_guid(client_id) {
            self.error(
                "oidc.client_id",
                &oidc.client_id,
                format!("{client_id:?} is not an Application (client) ID: Entra identifies each app registration by a GUID (Entra admin center → App registrations → the application → Overview)"),
            );
        }

        let client_auth = self.client_auth(section, secrets);
        let scopes = self.scopes(oidc.scopes.as_ref());
        let allowed_tenants = self.allowed_tenants(section, issuer.as_ref(), entra);
        let clock_skew = self.duration(
            "oidc.clock_skew",
            oidc.clock_skew.as_ref(),
            raw::DEFAULT_CLOCK_SKEW,
            true,
        );
        let response_mode = match &oidc.response_mode {
            None => ResponseMode::FormPost,
            Some(mode) => {
                match mode.get_ref().as_str() {
                    "form_post" => ResponseMode::FormPost,
                    "query" => ResponseMode::Query,
                    other => {
                        self.error(
                        "oidc.response_mode",
                        mode,
                        format!("response_mode = {other:?} is not one of \"form_post\" or \"query\""),
                    );
                        ResponseMode::FormPost
                    }
                }
            }
        };
        let login_timeout = self.duration(
            "oidc.login_timeout",
            oidc.login_timeout.as_ref(),
            raw::DEFAULT_LOGIN_TIMEOUT,
            false,
        );

        OidcConfig {
            issuer: issuer
                .map(|i| i.issuer)
                .unwrap_or_else(|| oidc.issuer.get_ref().clone()),
            token_version,
            discovery_url,
            // Entra writes the application id in lower case in `aud`, which must match it.
            client_id: if entra {
                client_id.to_ascii_lowercase()
            } else {
                client_id.to_owned()
            },
            client_auth,
            scopes,
            allowed_tenants,
            clock_skew,
            response_mode,
            login_timeout,
        }
    }

    fn client_auth(&mut self, section: &Spanned<RawOidc>, secrets: &dyn Secrets) -> ClientAuth {
        let oidc = section.get_ref();
        let basic = match &oidc.client_secret_method {
            None => false,
            Some(method) => match method.get_ref().as_str() {
                "post" => false,
                "basic" => true,
                other => {
                    self.error(
                        "oidc.client_secret_method",
                        method,
                        format!(
                            "client_secret_method = {other:?} is not one of \"post\" or \"basic\""
                        ),
                    );
                    false
                }
            },
        };
        let unusable = ClientAuth::Secret {
            secret: String::new(),
            basic,
        };
        match (&oidc.client_secret, &oidc.client_certificate) {
            (Some(secret), None) => {
                let secret = self
                    .secret("oidc.client_secret", secret, secrets)
                    .unwrap_or_default();
                ClientAuth::Secret { secret, basic }
            }
            (None, Some(certificate)) => {
                if let Some(method) = &oidc.client_secret_method {
                    self.error(
                        "oidc.client_secret_method",
                        method,
                        "applies to client_secret only; with client_certificate the gateway signs an assertion (private_key_jwt) instead",
                    );
                }
                let certificate = certificate.get_ref();
                for (key, value) in [("cert", &certificate.cert), ("key", &certificate.key)] {
                    if value.get_ref().trim().is_empty() {
                        self.error(
                            format!("oidc.client_certificate.{key}"),
                            value,
                            "must be the path of a PEM file, not empty",
                        );
                    }
                }
                ClientAuth::Certificate {
                    cert: PathBuf::from(certificate.cert.get_ref()),
                    key: PathBuf::from(certificate.key.get_ref()),
                }
            }
            (Some(_), Some(certificate)) => {
                self.error(
                    "oidc.client_certificate",
                    certificate,
                    "give client_secret or client_certificate, not both: the gateway authenticates to Entra's token endpoint in one way",
                );
                unusable
            }
            (None, None) => {
                self.error(
                    "oidc",
                    section,
                    "needs the credential the gateway presents at Entra's token endpoint: client_secret = { file = \"…\" } or client_certificate = { cert = \"…\", key = \"…\" }",
                );
                unusable
            }
        }
    }

    /// Resolves a secret; an inline `{ value = … }` is accepted with a warning.
    fn secret(
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
            Err(message) => {
                self.error(path, source, message);
                None
            }
        }
    }

    fn scopes(&mut self, scopes: Option<&Spanned<Vec<Text>>>) -> Vec<String> {
        let mut out: Vec<String> = match scopes {
            None => raw::DEFAULT_SCOPES.map(str::to_owned).to_vec(),
            Some(list) => {
                let mut out: Vec<String> = Vec::new();
                for (i, scope) in list.get_ref().iter().enumerate() {
                    let text = scope.get_ref();
                    if text.is_empty() || !text.bytes().all(is_scope_byte) {
                        self.error(
                            format!("oidc.scopes[{i}]"),
                            scope,
                            format!("{text:?} is not a scope: a scope is one word without spaces, quotes or backslashes, such as \"email\""),
                        );
                    } else if !out.contains(text) {
                        out.push(text.clone());
                    }
                }
                out
            }
        };
        // Without `openid` the provider answers with plain OAuth 2.0 and no ID token: there
        // would be nothing to verify MFA in.
        if !out.iter().any(|s| s == "openid") {
            out.insert(0, "openid".to_owned());
        }
        out
    }

    fn allowed_tenants(
        &mut self,
        section: &Spanned<RawOidc>,
        issuer: Option<&Issuer>,
        entra: bool,
    ) -> Vec<String> {
        let issuer_tenant = issuer.and_then(|i| i.tenant.clone());
        let Some(list) = &section.get_ref().allowed_tenants else {
            if issuer.is_some() && issuer_tenant.is_none() {
                self.error(
                    "oidc",
                    section,
                    "needs allowed_tenants: the issuer has no tenant id in its path, so list the tenant ids (the tid claim) whose users may sign in",
                );
            }
            return issuer_tenant.into_iter().collect();
        };
        if list.get_ref().is_empty() {
            self.error(
                "oidc.allowed_tenants",
                list,
                "must list at least one tenant id; leave allowed_tenants out to accept the issuer's own tenant",
            );
        }
        let mut out: Vec<String> = Vec::new();
        for (i, tenant) in list.get_ref().iter().enumerate() {
            let text = tenant.get_ref().trim();
            if text.is_empty() {
                self.error(
                    format!("oidc.allowed_tenants[{i}]"),
                    tenant,
                    "must be a tenant id, not empty",
                );
                continue;
            }
            if entra && !is_guid(text) {
                self.error(
                    format!("oidc.allowed_tenants[{i}]"),
                    tenant,
                    format!("{text:?} is not a tenant id: the tid claim of Entra tokens is the tenant's GUID (Entra admin center → Overview → Tenant ID), never a domain name"),
                );
                continue;
            }
            // Entra writes GUIDs in lower case; compare in that form.
            let text = if is_guid(text) {
                text.to_ascii_lowercase()
            } else {
                text.to_owned()
            };
            if !out.contains(&text) {
                out.push(text);
            }
        }
        if let (true, Some(tid)) = (entra, &issuer_tenant) {
            if !out.is_empty() && !out.contains(tid) {
                self.error(
                    "oidc.allowed_tenants",
                    list,
                    format!("does not contain {tid}, the tenant of the issuer: every ID token from a tenant-specific Entra issuer carries that tenant's tid, so no sign-in would be accepted"),
                );
            }
        }
        out
    }

    fn mfa(&mut self, section: Option<&Spanned<RawMfa>>) -> MfaConfig {
        let Some(section) = section else {
            return MfaConfig::default();
        };
        let mfa = section.get_ref();
        let amr_any_of = match &mfa.amr_any_of {
            None => raw::DEFAULT_AMR_ANY_OF.map(str::to_owned).to_vec(),
            Some(list) => {
                let mut out = Vec::new();
                for (i, amr) in list.get_ref().iter().enumerate() {
                    let text = amr.get_ref().trim();
                    let path = format!("mfa.amr_any_of[{i}]");
                    if text.is_empty() {
                        self.error(path, amr, "must be an amr value such as \"mfa\", not empty");
                    } else if SINGLE_FACTOR_AMR.contains(&text) {
                        self.error(
                            path,
                            amr,
                            format!("{text:?} names a single factor, so every sign-in with it alone would count as multifactor authentication; Entra adds \"mfa\" to amr when a second factor was used"),
                        );
                    } else {
                        out.push(text.to_owned());
                    }
                }
                out
            }
        };
        let acrs_any_of = match &mfa.acrs_any_of {
            None => Vec::new(),
            Some(list) => self.auth_contexts("mfa.acrs_any_of", list),
        };
        let amr_empty = mfa
            .amr_any_of
            .as_ref()
            .is_some_and(|l| l.get_ref().is_empty());
        let acrs_empty = mfa
            .acrs_any_of
            .as_ref()
            .is_none_or(|l| l.get_ref().is_empty());
        if amr_empty && acrs_empty {
            self.error(
                "mfa",
                section,
                "amr_any_of and acrs_any_of are both empty, so nothing would count as multifactor authentication; keep the default amr_any_of = [\"mfa\", \"ngcmfa\"] or name an authentication context in acrs_any_of",
            );
        }
        let max_auth_age = self.duration(
            "mfa.max_auth_age",
            mfa.max_auth_age.as_ref(),
            raw::DEFAULT_MAX_AUTH_AGE,
            false,
        );
        MfaConfig {
            amr_any_of,
            acrs_any_of,
            max_auth_age,
        }
    }

    /// Conditional Access authentication-context ids, `c1` … `c99`.
    fn auth_contexts(&mut self, path: &str, list: &Spanned<Vec<Text>>) -> Vec<String> {
        let mut out = Vec::new();
        for (i, id) in list.get_ref().iter().enumerate() {
            let text = id.get_ref();
            if is_auth_context(text) {
                if !out.contains(text) {
                    out.push(text.clone());
                }
            } else {
                self.error(
                    format!("{path}[{i}]"),
                    id,
                    format!("{text:?} is not an authentication context id: Entra authentication contexts are c1 to c99 (Entra admin center → Conditional Access → Authentication contexts shows each one's ID)"),
                );
            }
        }
        out
    }

    fn session(&mut self, section: &Spanned<RawSession>, secrets: &dyn Secrets) -> SessionConfig {
        let session = section.get_ref();
        let cookie_name = match &session.cookie_name {
            None => raw::DEFAULT_COOKIE_NAME.to_owned(),
            Some(name) => {
                if !is_cookie_name(name.get_ref()) {
                    self.error(
                        "session.cookie_name",
                        name,
                        format!("{:?} is not a valid cookie name: use letters, digits, \"-\", \"_\" and \".\", without spaces, \"=\", \";\" or quotes, such as \"__Host-mfagw\"", name.get_ref()),
                    );
                }
                name.get_ref().clone()
            }
        };

        if session.keys.get_ref().is_empty() {
            self.error(
                "session.keys",
                &session.keys,
                format!("at least one key is required; {SESSION_KEY_HINT}"),
            );
        }
        let mut keys = Vec::new();
        for (i, key) in session.keys.get_ref().iter().enumerate() {
            let path = format!("session.keys[{i}]");
            let Some(text) = self.secret(&path, key, secrets) else {
                continue;
            };
            let origin = key.get_ref().describe();
            match decode_session_key(&text) {
                Some(bytes) if bytes.len() >= MIN_SESSION_KEY_BYTES => keys.push(bytes),
                Some(bytes) => self.error(
                    path,
                    key,
                    format!(
                        "{origin} holds {} bytes once decoded; a session key needs at least {MIN_SESSION_KEY_BYTES} random bytes: {SESSION_KEY_HINT}",
                        bytes.len()
                    ),
                ),
                None => self.error(
                    path,
                    key,
                    format!("{origin} is not base64 (standard or URL-safe alphabet); {SESSION_KEY_HINT}"),
                ),
            }
        }

        let lifetime = session
            .lifetime
            .as_ref()
            .map_or(Some(duration_default(raw::DEFAULT_SESSION_LIFETIME)), |v| {
                self.duration_value("session.lifetime", v, false)
            });
        let idle_timeout = session.idle_timeout.as_ref().map_or(
            Some(duration_default(raw::DEFAULT_SESSION_IDLE_TIMEOUT)),
            |v| self.duration_value("session.idle_timeout", v, false),
        );
        if let (Some(lifetime), Some(idle_timeout)) = (lifetime, idle_timeout) {
            if idle_timeout > lifetime {
                let message = format!(
                    "idle_timeout ({}) must not exceed lifetime ({}): a session ends at its lifetime however active it is",
                    humantime::format_duration(idle_timeout),
                    humantime::format_duration(lifetime)
                );
                match (&session.idle_timeout, &session.lifetime) {
                    (Some(at), _) => self.error("session.idle_timeout", at, message),
                    (None, Some(at)) => self.error("session.lifetime", at, message),
                    (None, None) => {}
                }
            }
        }

        SessionConfig {
            cookie_name,
            keys,
            lifetime: lifetime.unwrap_or_else(|| duration_default(raw::DEFAULT_SESSION_LIFETIME)),
            idle_timeout: idle_timeout
                .unwrap_or_else(|| duration_default(raw::DEFAULT_SESSION_IDLE_TIMEOUT)),
        }
    }

    /// The policy keys of one route. They refine `access = "mfa"` and mean nothing on a
    /// `public` or `deny` route, where leaving them would suggest a protection that is not there.
    fn route_policy(
        &mut self,
        path: &str,
        route: &RawRoute,
        access: Option<Access>,
        mfa: &MfaConfig,
    ) -> RoutePolicy {
        let mut policy = RoutePolicy {
            unauthenticated_status: raw::DEFAULT_UNAUTHENTICATED_STATUS,
            max_auth_age: None,
            acrs_any_of: Vec::new(),
            groups_any_of: Vec::new(),
        };
        if let Some(access @ (Access::Public | Access::Deny)) = access {
            let message = format!(
                "only applies to access = \"mfa\"; this route has access = {:?}",
                access.as_str()
            );
            let present = [
                (
                    "unauthenticated_status",
                    route.unauthenticated_status.as_ref().map(|v| self.line(v)),
                ),
                (
                    "max_auth_age",
                    route.max_auth_age.as_ref().map(|v| self.line(v)),
                ),
                (
                    "acrs_any_of",
                    route.acrs_any_of.as_ref().map(|v| self.line(v)),
                ),
                (
                    "groups_any_of",
                    route.groups_any_of.as_ref().map(|v| self.line(v)),
                ),
            ];
            for (key, line) in present {
                if let Some(line) = line {
                    self.errors.push(
                        ConfigError::new(format!("{path}.{key}"), message.clone()).with_line(line),
                    );
                }
            }
            return policy;
        }

        if let Some(status) = &route.unauthenticated_status {
            match *status.get_ref() {
                401 => policy.unauthenticated_status = 401,
                440 => policy.unauthenticated_status = 440,
                other => self.error(
                    format!("{path}.unauthenticated_status"),
                    status,
                    format!("unauthenticated_status = {other} is not 401 or 440: 401 is the standard answer; 440 is what the script of Outlook on the web reads as \"session expired\" and reloads the page"),
                ),
            }
        }
        if let Some(age) = &route.max_auth_age {
            let key = format!("{path}.max_auth_age");
            policy.max_auth_age = self.duration_value(&key, age, false);
            if let Some(d) = policy.max_auth_age {
                if d > mfa.max_auth_age {
                    self.warning(
                        key,
                        age,
                        format!(
                            "{} is longer than [mfa].max_auth_age ({}), which applies to every route, so it changes nothing; a route's max_auth_age can only be stricter",
                            humantime::format_duration(d),
                            humantime::format_duration(mfa.max_auth_age)
                        ),
                    );
                }
            }
        }
        if let Some(list) = &route.acrs_any_of {
            policy.acrs_any_of = self.auth_contexts(&format!("{path}.acrs_any_of"), list);
        }
        if let Some(list) = &route.groups_any_of {
            for (i, group) in list.get_ref().iter().enumerate() {
                let text = group.get_ref().trim();
                if is_guid(text) {
                    let id = text.to_ascii_lowercase();
                    if !policy.groups_any_of.contains(&id) {
                        policy.groups_any_of.push(id);
                    }
                } else {
                    self.error(
                        format!("{path}.groups_any_of[{i}]"),
                        group,
                        format!("{text:?} is not a group object id: tokens carry group ids, not names; write the group's Object ID (a GUID) from the Entra admin center"),
                    );
                }
            }
        }
        policy
    }

    /// Rules that join the sign-in sections and the routes.
    fn sign_in_together(&mut self, raw: &RawConfig, oidc: Option<&OidcConfig>, mfa: &MfaConfig) {
        let routes = raw.routes.as_deref().unwrap_or_default();
        let mfa_routes: Vec<(usize, &RawRoute)> = routes
            .iter()
            .map(Spanned::get_ref)
            .enumerate()
            .filter(|(_, r)| r.access.get_ref() == "mfa")
            .collect();

        // With an mfa route, the route's own error already names the missing section.
        if mfa_routes.is_empty() {
            match (&raw.oidc, &raw.session) {
                (Some(oidc), None) => self.error(
                    "oidc",
                    oidc,
                    "needs [session] too: the sealed session cookie is what remembers a sign-in",
                ),
                (None, Some(session)) => self.error(
                    "session",
                    session,
                    "needs [oidc] too: sessions are made by signing in through Entra ID",
                ),
                _ => {}
            }
            if let Some(oidc) = &raw.oidc {
                self.warning(
                    "oidc",
                    oidc,
                    "no route has access = \"mfa\", so nobody is asked to sign in",
                );
            } else if let Some(section) = &raw.mfa {
                self.warning(
                    "mfa",
                    section,
                    "has no effect: there is no [oidc] and no route has access = \"mfa\"",
                );
            }
        }

        // Entra v2.0 ID tokens never carry `amr`: only an `acrs` authentication context can
        // prove MFA, so a route with neither would refuse every sign-in.
        let (Some(oidc), Some(raw_oidc)) = (oidc, &raw.oidc) else {
            return;
        };
        if oidc.token_version != TokenVersion::EntraV2 || !mfa.acrs_any_of.is_empty() {
            return;
        }
        let tid = parse_issuer(&oidc.issuer)
            .ok()
            .and_then(|i| i.tenant)
            .unwrap_or_else(|| "<tenant-id>".to_owned());
        let sets_acrs = |r: &RawRoute| {
            r.acrs_any_of
                .as_ref()
                .is_some_and(|l| !l.get_ref().is_empty())
        };
        if !routes.iter().any(|r| sets_acrs(r.get_ref())) {
            self.error(
                "oidc.issuer",
                &raw_oidc.get_ref().issuer,
                format!("Entra v2.0 ID tokens carry no amr claim, so MFA could not be verified: use the v1.0 issuer https://sts.windows.net/{tid}/ or set mfa.acrs_any_of to an authentication context"),
            );
            return;
        }
        for (i, route) in mfa_routes {
            if !sets_acrs(route) {
                self.error(
                    format!("routes[{i}].access"),
                    &route.access,
                    format!("with the Entra v2.0 issuer, which puts no amr claim in ID tokens, this route has no way to verify MFA: set acrs_any_of on it or in [mfa], or use the v1.0 issuer https://sts.windows.net/{tid}/"),
                );
            }
        }
    }
}

/// A tenant-specific issuer, understood.
struct Issuer {
    /// As tokens carry it (for Entra issuers, rewritten in the exact form Entra uses).
    issuer: String,
    version: TokenVersion,
    /// The tenant id (`tid`) in the issuer's path, in lower case.
    tenant: Option<String>,
    /// Accepted, but probably not what was meant.
    warning: Option<String>,
}

impl Issuer {
    fn discovery_url(&self) -> String {
        match (self.version, &self.tenant) {
            // The v1.0 metadata is served by login.microsoftonline.com, not by the issuer host.
            (TokenVersion::EntraV1, Some(tid)) => {
                format!("https://login.microsoftonline.com/{tid}/.well-known/openid-configuration")
            }
            _ => format!(
                "{}/.well-known/openid-configuration",
                self.issuer.trim_end_matches('/')
            ),
        }
    }
}

/// Entra's multi-tenant endpoints: they accept users of any tenant, so a token from any
/// organisation (including one an attacker creates for free) would pass.
const MULTI_TENANT_SEGMENTS: [&str; 3] = ["common", "organizations", "consumers"];

fn parse_issuer(issuer: &str) -> Result<Issuer, String> {
    let uri = check_provider_url(issuer, false)?;
    let host = uri.host().unwrap_or_default().to_ascii_lowercase();
    let path = uri.path();
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    if let Some(first) = segments.first() {
        if MULTI_TENANT_SEGMENTS.contains(&first.to_ascii_lowercase().as_str()) {
            return Err(format!(
                "{issuer:?} names Entra's multi-tenant endpoint {first:?}: users of any tenant could sign in, including tenants anyone can create; use your tenant-specific issuer https://sts.windows.net/<tenant-id>/ (Entra admin center → Overview → Tenant ID)"
            ));
        }
    }
    let version = if host == "sts.windows.net" {
        TokenVersion::EntraV1
    } else if host == "login.microsoftonline.com" && path.ends_with("/v2.0") {
        TokenVersion::EntraV2
    } else {
        TokenVersion::Other
    };
    let expected = match version {
        TokenVersion::EntraV1 => "https://sts.windows.net/<tenant-id>/",
        TokenVersion::EntraV2 => "https://login.microsoftonline.com/<tenant-id>/v2.0",
        TokenVersion::Other => {
            let tenant = segments
                .iter()
                .find(|s| is_guid(s))
                .map(|s| s.to_ascii_lowercase());
            let warning = (host == "login.microsoftonline.com").then(|| {
                "Entra tokens never carry this issuer: v1.0 tokens carry https://sts.windows.net/<tenant-id>/ and v2.0 tokens https://login.microsoftonline.com/<tenant-id>/v2.0; sign-in will fail unless the provider's metadata names exactly this issuer".to_owned()
            });
            return Ok(Issuer {
                issuer: issuer.to_owned(),
                version,
                tenant,
                warning,
            });
        }
    };
    let tid = segments.first().copied().unwrap_or_default();
    let shape = match version {
        TokenVersion::EntraV1 => format!("/{tid}/"),
        _ => format!("/{tid}/v2.0"),
    };
    if path != shape || uri.port().is_some() {
        return Err(format!(
            "{issuer:?} is not in the form Entra's tokens carry; write {expected}"
        ));
    }
    if !is_guid(tid) {
        return Err(format!(
            "{tid:?} is not a tenant id: Entra issuers name the tenant by its id, a GUID (Entra admin center → Overview → Tenant ID); write {expected}"
        ));
    }
    let tid = tid.to_ascii_lowercase();
    let issuer = match version {
        TokenVersion::EntraV1 => format!("https://sts.windows.net/{tid}/"),
        _ => format!("https://login.microsoftonline.com/{tid}/v2.0"),
    };
    Ok(Issuer {
        issuer,
        version,
        tenant: Some(tid),
        warning: None,
    })
}

/// The issuer or the metadata URL: `https://`, or `http://` on a loopback address only (tests
/// and `mfa-gateway demo`). Over plain HTTP anyone on the path could replace the signing keys.
fn check_provider_url(url: &str, query_allowed: bool) -> Result<http::Uri, String> {
    if url.contains('#') {
        return Err(format!("{url:?} must not have a fragment (#…)"));
    }
    let not_a_url =
        || format!("{url:?} is not a URL; write it like \"https://sts.windows.net/<tenant-id>/\"");
    let uri: http::Uri = url.parse().map_err(|_| not_a_url())?;
    let authority = uri.authority().ok_or_else(not_a_url)?;
    if authority.as_str().contains('@') {
        return Err(format!(
            "{url:?} must not contain a user name or password (…@)"
        ));
    }
    if !query_allowed && uri.query().is_some() {
        return Err(format!("{url:?}: an issuer has no query (?…)"));
    }
    match uri.scheme_str().map(str::to_ascii_lowercase).as_deref() {
        Some("https") => Ok(uri),
        Some("http") if is_loopback_host(authority.host()) => Ok(uri),
        _ => Err(format!(
            "{url:?} must start with https://; http:// is accepted only on loopback addresses (127.0.0.1, ::1, localhost), for tests and `mfa-gateway demo`"
        )),
    }
}

fn is_loopback_host(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.eq_ignore_ascii_case("localhost")
        || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` in hexadecimal, the form of Entra's tenant,
/// application and object ids.
fn is_guid(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.len() == 36
        && bytes.iter().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => *b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

/// `c1` … `c99`, as Entra writes authentication-context ids in the `acrs` claim (no leading 0).
fn is_auth_context(id: &str) -> bool {
    id.strip_prefix('c').is_some_and(|n| {
        (1..=2).contains(&n.len()) && !n.starts_with('0') && n.bytes().all(|b| b.is_ascii_digit())
    })
}

/// RFC 6749 `scope-token` characters.
fn is_scope_byte(b: u8) -> bool {
    matches!(b, 0x21 | 0x23..=0x5B | 0x5D..=0x7E)
}

/// An RFC 6265 cookie name: an HTTP token.
fn is_cookie_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Session key material: base64 in the standard or URL-safe alphabet, padding optional, line
/// breaks ignored (`openssl rand -base64 64` wraps its output).
fn decode_session_key(text: &str) -> Option<Vec<u8>> {
    let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    STANDARD_ANY_PADDING
        .decode(&compact)
        .or_else(|_| URL_SAFE_ANY_PADDING.decode(&compact))
        .ok()
}

fn duration_default(text: &str) -> Duration {
    humantime::parse_duration(text).unwrap_or_default()
}

/// Whether two listen addresses would compete for the same socket. Port 0 (any free port, used
/// by tests) never clashes.
fn clash(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// `https://host[:port]` or `http://host[:port]`, nothing else.
fn parse_server(url: &str) -> Result<UpstreamServer, String> {
    let lower = url.to_ascii_lowercase();
    let (scheme, rest) = if lower.starts_with("https://") {
        (UpstreamScheme::Https, &url["https://".len()..])
    } else if lower.starts_with("http://") {
        (UpstreamScheme::Http, &url["http://".len()..])
    } else {
        return Err(format!(
            "{url:?} must start with https:// or http://, such as \"https://ex01.corp.contoso.com\""
        ));
    };
    if rest.contains('#') {
        return Err(format!(
            "{url:?} must not have a fragment (#…); give only the scheme, host and port"
        ));
    }
    if rest.contains('?') {
        return Err(format!(
            "{url:?} must not have a query (?…); give only the scheme, host and port"
        ));
    }
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if authority.contains('@') {
        return Err(format!(
            "{url:?} must not contain a user name or password (…@); give only the scheme, host and port"
        ));
    }
    if !path.is_empty() && path != "/" {
        return Err(format!(
            "{url:?} has a path ({path}); give only the scheme, host and port, such as \"https://ex01.corp.contoso.com\": paths are matched by [[routes]] and forwarded to the server unchanged"
        ));
    }
    let invalid = || format!("{url:?} does not have a valid host and port");
    if authority.is_empty() {
        return Err(format!("{url:?} has no host"));
    }
    let parsed: http::uri::Authority = authority.parse().map_err(|_| invalid())?;
    let host = parsed.host();
    let bare_host = host.trim_start_matches('[').trim_end_matches(']');
    let host_ok = if host.starts_with('[') {
        bare_host.parse::<Ipv6Addr>().is_ok()
    } else {
        ServerName::try_from(host).is_ok()
    };
    if !host_ok {
        return Err(format!(
            "{url:?}: {host:?} is not a valid host name or IP address"
        ));
    }
    let port = match parsed.port_u16() {
        Some(0) => return Err(format!("{url:?}: port 0 is not a server port")),
        Some(port) => port,
        None if scheme == UpstreamScheme::Https => 443,
        None => 80,
    };
    let authority = format!("{}:{port}", host.to_ascii_lowercase())
        .parse()
        .map_err(|_| invalid())?;
    Ok(UpstreamServer {
        url: url.to_owned(),
        scheme,
        authority,
    })
}

/// A route host: a plain host name or IPv4 address, lower-cased. Browsers send the Host header
/// with a port on non-default ports; the router removes it, so a port here would never match.
fn check_route_host(host: &str) -> Result<String, String> {
    if host.is_empty() {
        return Err(
            "must not be empty; write the published host name, such as \"mail.contoso.com\""
                .to_owned(),
        );
    }
    if host.contains("://") {
        return Err(format!(
            "{host:?}: write only the host name, without a scheme, such as \"mail.contoso.com\""
        ));
    }
    if host.contains('*') {
        return Err(format!(
            "{host:?}: wildcards are not supported; write one route per published host name"
        ));
    }
    if host.contains('/') {
        return Err(format!(
            "{host:?}: write only the host name here; the path goes in path"
        ));
    }
    if host.starts_with('[') || host.parse::<Ipv6Addr>().is_ok() {
        return Err(format!(
            "{host:?}: IPv6 addresses are not supported as route hosts; publish a host name"
        ));
    }
    if host.contains(':') {
        return Err(format!(
            "{host:?}: write the host without a port; routes match the Host header with its port removed"
        ));
    }
    if ServerName::try_from(host).is_err() {
        return Err(format!("{host:?} is not a valid host name"));
    }
    // "mail.contoso.com." and "mail.contoso.com" are the same host to browsers and the router.
    let host = host.strip_suffix('.').unwrap_or(host);
    Ok(host.to_ascii_lowercase())
}

/// A route path prefix. Requests are matched after IIS-like normalisation (percent-decoding,
/// `\` → `/`, `.`/`..` resolved), so a prefix containing any of these could never match and
/// would give a false sense of what is published.
fn check_route_path(path: &str) -> Result<String, String> {
    if !path.starts_with('/') {
        return Err(format!("{path:?} must start with \"/\", such as \"/owa\""));
    }
    if path.contains('?') || path.contains('#') {
        return Err(format!(
            "{path:?}: a route path has no query or fragment (? or #)"
        ));
    }
    if path.contains('%') {
        return Err(format!(
            "{path:?}: write the path without percent-encoding; requests are decoded before they are matched"
        ));
    }
    if path.contains('\\') {
        return Err(format!(
            "{path:?}: write \"/\" instead of \"\\\"; requests have backslashes turned into \"/\" before they are matched"
        ));
    }
    if path.chars().any(char::is_control) {
        return Err(format!("{path:?} contains a control character"));
    }
    let trimmed = path.trim_end_matches('/');
    if trimmed.is_empty() {
        return Ok("/".to_owned());
    }
    for segment in trimmed[1..].split('/') {
        if segment.is_empty() {
            return Err(format!(
                "{path:?} contains an empty segment (\"//\"); write each segment once"
            ));
        }
        if segment == "." || segment == ".." {
            return Err(format!(
                "{path:?}: \".\" and \"..\" segments are not allowed; requests are normalised before they are matched, so this route would never match"
            ));
        }
        // Windows ignores trailing dots and spaces: a request for `/ecp.` is normalised to
        // `/ecp`, so a route written `/ecp.` would never match.
        if segment.ends_with(['.', ' ']) {
            return Err(format!(
                "{path:?}: a segment may not end with a dot or a space; requests are normalised the way IIS reads them (\"/ecp.\" is \"/ecp\"), so this route would never match"
            ));
        }
    }
    // The gateway answers everything under /_gateway/ itself, before routing.
    let first = trimmed[1..].split('/').next().unwrap_or_default();
    if first.eq_ignore_ascii_case("_gateway") {
        return Err(format!(
            "{path:?}: paths under /_gateway/ belong to the gateway's own endpoints (sign-in, health) and cannot be routed to an upstream"
        ));
    }
    // The router compares routes with normalised request paths: a route must be in that form.
    match crate::routing::normalize_path(trimmed) {
        Ok(normal) if normal == trimmed => Ok(trimmed.to_owned()),
        _ => Err(format!(
            "{path:?} is not in the form requests are matched in; write it decoded, with \"/\" between segments"
        )),
    }
}

/// A size: bytes as an integer, or text with a unit (`B`, `KB`/`MB`/`GB` in powers of 1000,
/// `KiB`/`MiB`/`GiB` in powers of 1024).
fn parse_size(size: &RawSize) -> Result<u64, String> {
    let bytes = match size {
        RawSize::Bytes(n) => u64::try_from(*n).ok(),
        RawSize::Text(text) => {
            let text = text.trim();
            let digits_end = text
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(text.len());
            let (number, unit) = text.split_at(digits_end);
            let multiplier: Option<u64> = match unit.trim().to_ascii_lowercase().as_str() {
                "" | "b" => Some(1),
                "kb" => Some(1000),
                "mb" => Some(1000 * 1000),
                "gb" => Some(1000 * 1000 * 1000),
                "kib" => Some(1024),
                "mib" => Some(1024 * 1024),
                "gib" => Some(1024 * 1024 * 1024),
                _ => None,
            };
            match (number.parse::<u64>(), multiplier) {
                (Ok(n), Some(m)) => Some(n.checked_mul(m).ok_or("size is too large")?),
                _ => {
                    return Err(format!(
                        "{text:?} is not a size; write a number of bytes or a size such as \"128MiB\", \"64MB\" or \"512KiB\""
                    ))
                }
            }
        }
    };
    match bytes {
        Some(n) if n > 0 => Ok(n),
        _ => Err("must be greater than 0".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::secret::MapSecrets;

    const UPSTREAM: &str = r#"
[upstreams.exchange]
servers = ["http://127.0.0.1:8081"]
"#;

    const ROUTE: &str = r#"
[[routes]]
host = "localhost"
path = "/owa"
upstream = "exchange"
access = "public"
"#;

    /// A valid plain-HTTP configuration with `server` as the body of `[server]` plus `rest`.
    fn with_server(server: &str, rest: &str) -> String {
        format!("[server]\n{server}\n{UPSTREAM}{ROUTE}{rest}")
    }

    fn valid_with(rest: &str) -> String {
        with_server("http_listen = \"127.0.0.1:8080\"", rest)
    }

    /// The files the sign-in tests name, as an administrator would have made them.
    fn secrets() -> MapSecrets {
        MapSecrets::new()
            .with_file(
                "/etc/mfa-gateway/client-secret",
                "client-secret-from-file\n",
            )
            .with_file("/etc/mfa-gateway/session.key", format!("{SESSION_KEY}\n"))
    }

    fn load(text: &str) -> Result<Config, Vec<String>> {
        Config::from_toml(text, &secrets()).map_err(|e| e.iter().map(ToString::to_string).collect())
    }

    /// The warnings for `text`, with the secrets of [`secrets`].
    fn warnings(text: &str) -> Vec<String> {
        let raw = raw::parse(text).unwrap_or_else(|e| panic!("{e}"));
        check(raw, text, &secrets())
            .1
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    fn errors(text: &str) -> Vec<String> {
        match load(text) {
            Ok(_) => panic!("configuration was accepted:\n{text}"),
            Err(errors) => errors,
        }
    }

    /// Asserts that exactly one error is reported and that it contains every fragment.
    fn refused(text: &str, fragments: &[&str]) {
        let errors = errors(text);
        assert_eq!(errors.len(), 1, "expected one error, got {errors:#?}");
        for fragment in fragments {
            assert!(
                errors[0].contains(fragment),
                "{:?} lacks {fragment:?}",
                errors[0]
            );
        }
    }

    fn upstream_with(body: &str) -> String {
        format!("[server]\nhttp_listen = \"127.0.0.1:8080\"\n[upstreams.exchange]\n{body}\n{ROUTE}")
    }

    fn route_with(host: &str, path: &str, upstream: &str, access: &str) -> String {
        format!(
            "[server]\nhttp_listen = \"127.0.0.1:8080\"\n{UPSTREAM}\n[[routes]]\nhost = {host:?}\npath = {path:?}\nupstream = {upstream:?}\naccess = {access:?}\n"
        )
    }

    const TENANT: &str = "3f2a9b1c-5d4e-4f60-8a7b-1c2d3e4f5a6b";
    const CLIENT: &str = "0c1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f";
    /// 32 bytes, base64 as `openssl rand -base64 32` writes it.
    const SESSION_KEY: &str = "q83vEjRWeJCrze8SNFZ4kKvN7xI0VniQq83vEjRWeJA=";

    /// The body of a valid `[oidc]`: the v1.0 issuer of [`TENANT`] and a client secret file.
    const OIDC: &str = r#"issuer = "https://sts.windows.net/3f2a9b1c-5d4e-4f60-8a7b-1c2d3e4f5a6b/"
client_id = "0c1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f"
client_secret = { file = "/etc/mfa-gateway/client-secret" }
"#;

    /// The body of a valid `[session]`.
    const SESSION: &str = "keys = [{ file = \"/etc/mfa-gateway/session.key\" }]\n";

    /// A configuration with one `access = "mfa"` route (line 7; `route` is added to its table
    /// from line 12), `[oidc]` with `oidc` as its body, then `rest`.
    fn signed_in(route: &str, oidc: &str, rest: &str) -> String {
        format!(
            "[server]\nhttp_listen = \"127.0.0.1:8080\"\n{UPSTREAM}\n[[routes]]\nhost = \"localhost\"\npath = \"/owa\"\nupstream = \"exchange\"\naccess = \"mfa\"\n{route}\n[oidc]\n{oidc}\n{rest}"
        )
    }

    /// A complete sign-in configuration whose `[oidc]` body is `oidc`.
    fn with_oidc(oidc: &str) -> String {
        signed_in("", oidc, &format!("[session]\n{SESSION}"))
    }

    /// A complete sign-in configuration with `mfa` as the body of `[mfa]`.
    fn with_mfa(mfa: &str) -> String {
        signed_in("", OIDC, &format!("[session]\n{SESSION}\n[mfa]\n{mfa}\n"))
    }

    /// A complete sign-in configuration whose `[session]` body is `session`.
    fn with_session(session: &str) -> String {
        signed_in("", OIDC, &format!("[session]\n{session}\n"))
    }

    /// A complete sign-in configuration with `keys` on the mfa route.
    fn with_route_policy(keys: &str) -> String {
        signed_in(keys, OIDC, &format!("[session]\n{SESSION}"))
    }

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
    fn defaults_apply_when_optional_keys_are_left_out() {
        let config = load(&valid_with("")).unwrap();
        let s = &config.server;
        assert_eq!(s.shutdown_grace, Duration::from_secs(30));
        assert_eq!(s.max_connections, 20_000);
        assert_eq!(s.header_read_timeout, Duration::from_secs(10));
        assert_eq!(s.max_header_bytes, 65_536);
        assert!(s.trusted_proxies.is_empty());
        let u = &config.upstreams[0];
        assert_eq!(u.connect_timeout, Duration::from_secs(5));
        assert_eq!(u.idle_timeout, Duration::from_secs(300));
        assert_eq!(u.max_request_body, 134_217_728);
        assert!(u.health_check.is_none());

        let config = load(&upstream_with(
            "servers = [\"http://127.0.0.1:8081\"]\nhealth_check = { path = \"/owa/healthcheck.htm\" }",
        ))
        .unwrap();
        let h = config.upstreams[0].health_check.clone().unwrap();
        assert_eq!(h.interval, Duration::from_secs(10));
        assert_eq!(h.timeout, Duration::from_secs(3));
        assert_eq!(h.unhealthy_threshold, 2);
        assert_eq!(h.healthy_threshold, 1);
    }

    #[test]
    fn error_names_key_path_and_line() {
        let error = ConfigError::new(
            "routes[1].upstream",
            "no upstream named \"exchnage\"; known upstreams: exchange",
        )
        .with_line(Some(23));
        assert_eq!(
            error.to_string(),
            "routes[1].upstream (line 23): no upstream named \"exchnage\"; known upstreams: exchange"
        );
        let errors = ConfigErrors(vec![
            ConfigError::new("a", "one"),
            ConfigError::new("", "two"),
        ]);
        assert_eq!(errors.to_string(), "a: one\ntwo");
    }

    // ── [server] ──────────────────────────────────────────────────────────────────────────

    #[test]
    fn gateway_without_https_or_http_listener_is_refused() {
        refused(
            &with_server("admin_listen = \"127.0.0.1:9100\"", ""),
            &["server (line 1): at least one of https_listen or http_listen is required"],
        );
        let text = format!("{UPSTREAM}{ROUTE}");
        refused(
            &text,
            &["server: at least one of https_listen or http_listen"],
        );
    }

    #[test]
    fn listen_address_that_is_not_an_ip_and_port_is_refused() {
        refused(
            &with_server("http_listen = \"localhost:8080\"", ""),
            &[
                "server.http_listen (line 2)",
                "\"localhost:8080\" is not an IP address and port",
            ],
        );
        refused(
            &with_server("http_listen = \"0.0.0.0\"", ""),
            &["server.http_listen"],
        );
    }

    #[test]
    fn admin_listener_on_a_public_address_is_refused() {
        refused(
            &with_server(
                "http_listen = \"0.0.0.0:8080\"\nadmin_listen = \"127.0.0.1:8080\"",
                "",
            ),
            &["server.admin_listen (line 3): must differ from server.http_listen"],
        );
        let fine = with_server(
            "http_listen = \"0.0.0.0:8080\"\nadmin_listen = \"127.0.0.1:9100\"",
            "",
        );
        assert!(load(&fine).is_ok());
    }

    #[test]
    fn https_listener_without_certificates_is_refused() {
        refused(
            &with_server("https_listen = \"0.0.0.0:443\"", ""),
            &["server.https_listen (line 2): needs at least one [[tls.certificates]]"],
        );
    }

    #[test]
    fn certificates_without_https_listener_are_refused() {
        refused(
            &valid_with("[[tls.certificates]]\ncert = \"/c.pem\"\nkey = \"/k.pem\"\n"),
            &["tls.certificates[0]", "https_listen is not set"],
        );
    }

    #[test]
    fn https_listener_with_a_certificate_is_accepted() {
        let text = with_server(
            "https_listen = \"0.0.0.0:443\"\nhttp_listen = \"0.0.0.0:80\"",
            "[[tls.certificates]]\ncert = \"/c.pem\"\nkey = \"/k.pem\"\n",
        );
        let config = load(&text).unwrap();
        assert_eq!(
            config.tls.certificates,
            vec![CertificateConfig {
                cert: "/c.pem".into(),
                key: "/k.pem".into()
            }]
        );
    }

    #[test]
    fn certificate_with_an_empty_path_is_refused() {
        let text = with_server(
            "https_listen = \"0.0.0.0:443\"",
            "[[tls.certificates]]\ncert = \"/c.pem\"\nkey = \"\"\n",
        );
        refused(&text, &["tls.certificates[0].key", "not empty"]);
    }

    #[test]
    fn trusted_proxy_that_is_not_an_address_or_network_is_refused() {
        refused(
            &with_server(
                "http_listen = \"127.0.0.1:8080\"\ntrusted_proxies = [\"10.0.0.0/24\", \"lb01\"]",
                "",
            ),
            &[
                "server.trusted_proxies[1] (line 3)",
                "\"lb01\" is neither an IP network",
            ],
        );
        refused(
            &with_server(
                "http_listen = \"127.0.0.1:8080\"\ntrusted_proxies = [\"10.0.0.0/33\"]",
                "",
            ),
            &["server.trusted_proxies[0]"],
        );
    }

    #[test]
    fn single_trusted_proxy_address_means_that_one_host() {
        let config = load(&with_server(
            "http_listen = \"127.0.0.1:8080\"\ntrusted_proxies = [\"10.0.0.5\", \"2001:db8::1\", \"10.1.0.0/16\"]",
            "",
        ))
        .unwrap();
        let nets: Vec<String> = config
            .server
            .trusted_proxies
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(nets, ["10.0.0.5/32", "2001:db8::1/128", "10.1.0.0/16"]);
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
    fn request_body_timeout_defaults_to_a_minute_and_must_be_positive() {
        let config = load(&with_server("http_listen = \"127.0.0.1:8080\"", "")).unwrap();
        assert_eq!(config.server.request_body_timeout, Duration::from_secs(60));
        refused(
            &with_server(
                "http_listen = \"127.0.0.1:8080\"\nrequest_body_timeout = \"0s\"",
                "",
            ),
            &["server.request_body_timeout", "must be greater than 0"],
        );
    }

    #[test]
    fn more_than_64_servers_in_one_upstream_are_refused() {
        let servers: Vec<String> = (0..65)
            .map(|i| format!("\"http://10.0.{}.{}\"", i / 200, i % 200 + 1))
            .collect();
        refused(
            &upstream_with(&format!("servers = [{}]", servers.join(", "))),
            &["upstreams.exchange.servers", "at most 64 servers"],
        );
        let sixty_four = &servers[..64];
        assert!(load(&upstream_with(&format!(
            "servers = [{}]",
            sixty_four.join(", ")
        )))
        .is_ok());
    }

    #[test]
    fn websocket_upgrades_are_off_unless_the_route_allows_them() {
        let config = load(&route_with("localhost", "/owa", "exchange", "public")).unwrap();
        assert!(!config.routes[0].websocket);
        let config = load(&format!(
            "{}websocket = true\n",
            route_with("localhost", "/owa", "exchange", "public")
        ))
        .unwrap();
        assert!(config.routes[0].websocket);
    }

    #[test]
    fn max_connections_below_one_is_refused() {
        refused(
            &with_server("http_listen = \"127.0.0.1:8080\"\nmax_connections = 0", ""),
            &["server.max_connections (line 3): must be at least 1"],
        );
    }

    #[test]
    fn max_header_bytes_outside_8192_to_1048576_is_refused() {
        for value in ["8191", "1048577", "-1"] {
            refused(
                &with_server(
                    &format!("http_listen = \"127.0.0.1:8080\"\nmax_header_bytes = {value}"),
                    "",
                ),
                &["server.max_header_bytes", "between 8192 and 1048576"],
            );
        }
        let config = load(&with_server(
            "http_listen = \"127.0.0.1:8080\"\nmax_header_bytes = 8192",
            "",
        ))
        .unwrap();
        assert_eq!(config.server.max_header_bytes, 8192);
    }

    // ── [upstreams.<name>] ────────────────────────────────────────────────────────────────

    #[test]
    fn upstream_without_servers_is_refused() {
        refused(
            &upstream_with("servers = []"),
            &["upstreams.exchange.servers (line 4): at least one server"],
        );
    }

    #[test]
    fn upstream_server_with_a_path_is_refused_because_routes_match_paths() {
        refused(
            &upstream_with("servers = [\"https://ex01/owa\"]"),
            &[
                "upstreams.exchange.servers[0] (line 4)",
                "has a path (/owa)",
                "paths are matched by [[routes]]",
            ],
        );
    }

    #[test]
    fn upstream_server_with_query_userinfo_or_fragment_is_refused() {
        for (url, what) in [
            ("https://ex01?x=1", "query"),
            ("https://admin:pw@ex01", "user name or password"),
            ("https://ex01#top", "fragment"),
        ] {
            refused(
                &upstream_with(&format!("servers = [{url:?}]")),
                &["servers[0]", what],
            );
        }
    }

    #[test]
    fn upstream_server_without_http_or_https_scheme_is_refused() {
        refused(
            &upstream_with("servers = [\"ex01.corp.contoso.com\"]"),
            &["must start with https:// or http://"],
        );
        refused(
            &upstream_with("servers = [\"ftp://ex01\"]"),
            &["must start with https://"],
        );
    }

    #[test]
    fn upstream_server_listed_twice_is_refused() {
        refused(
            &upstream_with("servers = [\"https://ex01\", \"https://EX01:443/\"]"),
            &[
                "upstreams.exchange.servers[1]",
                "listed twice (also servers[0])",
            ],
        );
    }

    #[test]
    fn upstream_server_gets_the_default_port_of_its_scheme() {
        let config = load(&upstream_with(
            "servers = [\"https://ex01.corp.contoso.com\", \"http://10.0.0.7\", \"https://[2001:db8::7]:8443\"]",
        ))
        .unwrap();
        let servers = &config.upstreams[0].servers;
        assert_eq!(servers[0].authority.as_str(), "ex01.corp.contoso.com:443");
        assert_eq!(servers[0].scheme, UpstreamScheme::Https);
        assert_eq!(servers[0].url, "https://ex01.corp.contoso.com");
        assert_eq!(servers[1].authority.as_str(), "10.0.0.7:80");
        assert_eq!(servers[1].scheme, UpstreamScheme::Http);
        assert_eq!(servers[2].authority.as_str(), "[2001:db8::7]:8443");
    }

    #[test]
    fn invalid_tls_server_name_is_refused() {
        refused(
            &upstream_with(
                "servers = [\"https://10.0.0.7\"]\ntls_server_name = \"mail contoso com\"",
            ),
            &[
                "upstreams.exchange.tls_server_name (line 5)",
                "not a DNS name or IP address",
            ],
        );
        let config = load(&upstream_with(
            "servers = [\"https://10.0.0.7\"]\ntls_server_name = \"Mail.Contoso.com\"\nca_file = \"/etc/ca.pem\"",
        ))
        .unwrap();
        assert_eq!(
            config.upstreams[0].tls_server_name.as_deref(),
            Some("mail.contoso.com")
        );
        assert_eq!(
            config.upstreams[0].ca_file,
            Some(PathBuf::from("/etc/ca.pem"))
        );
    }

    #[test]
    fn tls_settings_on_a_plain_http_upstream_are_refused() {
        let errors = errors(&upstream_with(
            "servers = [\"http://ex01\"]\nca_file = \"/etc/ca.pem\"\ntls_server_name = \"mail.contoso.com\"",
        ));
        assert_eq!(errors.len(), 2, "{errors:#?}");
        assert!(errors[0]
            .starts_with("upstreams.exchange.ca_file (line 5): applies to https:// servers only"));
        assert!(errors[1]
            .starts_with("upstreams.exchange.tls_server_name (line 6): applies to https://"));
    }

    #[test]
    fn health_check_path_without_leading_slash_is_refused() {
        refused(
            &upstream_with(
                "servers = [\"http://a\"]\nhealth_check = { path = \"owa/healthcheck.htm\" }",
            ),
            &[
                "upstreams.exchange.health_check.path (line 5)",
                "must start with \"/\"",
            ],
        );
    }

    #[test]
    fn health_check_timeout_not_shorter_than_interval_is_refused() {
        refused(
            &upstream_with(
                "servers = [\"http://a\"]\nhealth_check = { path = \"/h\", interval = \"5s\", timeout = \"5s\" }",
            ),
            &["upstreams.exchange.health_check.timeout", "timeout (5s) must be shorter than interval (5s)"],
        );
        refused(
            &upstream_with(
                "servers = [\"http://a\"]\nhealth_check = { path = \"/h\", interval = \"2s\" }",
            ),
            &[
                "upstreams.exchange.health_check.interval",
                "timeout (3s) must be shorter than interval (2s)",
            ],
        );
    }

    #[test]
    fn health_check_threshold_below_one_is_refused() {
        refused(
            &upstream_with("servers = [\"http://a\"]\nhealth_check = { path = \"/h\", unhealthy_threshold = 0 }"),
            &["upstreams.exchange.health_check.unhealthy_threshold", "at least 1"],
        );
        refused(
            &upstream_with("servers = [\"http://a\"]\nhealth_check = { path = \"/h\", healthy_threshold = -3 }"),
            &["upstreams.exchange.health_check.healthy_threshold", "at least 1"],
        );
    }

    #[test]
    fn max_request_body_accepts_bytes_and_units() {
        for (value, bytes) in [
            ("35000000", 35_000_000u64),
            ("\"128MiB\"", 134_217_728),
            ("\"64MB\"", 64_000_000),
            ("\"512KiB\"", 524_288),
            ("\"1 GiB\"", 1_073_741_824),
            ("\"100\"", 100),
        ] {
            let config = load(&upstream_with(&format!(
                "servers = [\"http://a\"]\nmax_request_body = {value}"
            )))
            .unwrap_or_else(|e| panic!("{value}: {e:?}"));
            assert_eq!(config.upstreams[0].max_request_body, bytes, "{value}");
        }
    }

    #[test]
    fn max_request_body_that_is_not_a_positive_size_is_refused() {
        for value in [
            "\"128 megs\"",
            "\"MiB\"",
            "0",
            "-5",
            "\"0KiB\"",
            "\"99999999999GiB\"",
        ] {
            refused(
                &upstream_with(&format!(
                    "servers = [\"http://a\"]\nmax_request_body = {value}"
                )),
                &["upstreams.exchange.max_request_body (line 5)"],
            );
        }
    }

    #[test]
    fn upstreams_are_listed_by_name() {
        let text = format!(
            "[server]\nhttp_listen = \"127.0.0.1:8080\"\n[upstreams.zeta]\nservers = [\"http://z\"]\n[upstreams.alpha]\nservers = [\"http://a\"]\n{}",
            ROUTE.replace("exchange", "zeta") + &ROUTE.replace("exchange", "alpha").replace("/owa", "/ecp")
        );
        let config = load(&text).unwrap();
        let names: Vec<_> = config.upstreams.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(names, ["alpha", "zeta"]);
        assert!(config.upstream("zeta").is_some());
    }

    // ── [[routes]] ────────────────────────────────────────────────────────────────────────

    #[test]
    fn configuration_without_routes_is_refused() {
        refused(
            &format!("[server]\nhttp_listen = \"127.0.0.1:8080\"\n{UPSTREAM}"),
            &["routes: at least one [[routes]] entry is required"],
        );
    }

    #[test]
    fn route_host_with_a_port_is_refused() {
        refused(
            &route_with("mail.contoso.com:443", "/owa", "exchange", "public"),
            &["routes[0].host (line 8)", "without a port"],
        );
    }

    #[test]
    fn route_host_that_is_empty_a_wildcard_or_a_url_is_refused() {
        for (host, what) in [
            ("", "must not be empty"),
            ("*.contoso.com", "wildcards are not supported"),
            ("https://mail.contoso.com", "without a scheme"),
            ("mail.contoso.com/owa", "the path goes in path"),
            ("[::1]", "IPv6"),
            ("mail contoso", "not a valid host name"),
        ] {
            refused(
                &route_with(host, "/owa", "exchange", "public"),
                &["routes[0].host", what],
            );
        }
    }

    #[test]
    fn route_host_is_matched_in_lower_case() {
        let config = load(&route_with(
            "Mail.Contoso.COM",
            "/owa",
            "exchange",
            "public",
        ))
        .unwrap();
        assert_eq!(config.routes[0].host, "mail.contoso.com");
        let config = load(&route_with(
            "mail.contoso.com.",
            "/owa",
            "exchange",
            "public",
        ))
        .unwrap();
        assert_eq!(config.routes[0].host, "mail.contoso.com");
    }

    #[test]
    fn route_path_loses_its_trailing_slash_except_the_root() {
        let config = load(&route_with("localhost", "/owa/", "exchange", "public")).unwrap();
        assert_eq!(config.routes[0].path, "/owa");
        let config = load(&route_with("localhost", "/", "exchange", "public")).unwrap();
        assert_eq!(config.routes[0].path, "/");
        let config = load(&route_with(
            "localhost",
            "/OWA/healthcheck.htm",
            "exchange",
            "public",
        ))
        .unwrap();
        assert_eq!(config.routes[0].path, "/OWA/healthcheck.htm");
    }

    #[test]
    fn route_path_without_leading_slash_is_refused() {
        refused(
            &route_with("localhost", "owa", "exchange", "public"),
            &["routes[0].path (line 9)", "must start with \"/\""],
        );
    }

    #[test]
    fn route_path_that_normalisation_would_change_is_refused() {
        for (path, what) in [
            ("/owa?x=1", "no query or fragment"),
            ("/owa#x", "no query or fragment"),
            ("/owa%2f", "without percent-encoding"),
            ("/owa\\ews", "backslashes"),
            ("/owa/../ews", "\"..\" segments"),
            ("/owa/./x", "\"..\" segments"),
            ("/owa//x", "empty segment"),
            ("/ecp.", "dot or a space"),
            ("/_Gateway/health", "gateway's own endpoints"),
            ("/owa /x", "dot or a space"),
        ] {
            refused(
                &route_with("localhost", path, "exchange", "public"),
                &["routes[0].path", what],
            );
        }
    }

    #[test]
    fn route_naming_an_unknown_upstream_is_refused() {
        let errors = errors(&route_with("localhost", "/owa", "exchnage", "public"));
        assert_eq!(
            errors,
            ["routes[0].upstream (line 10): no upstream named \"exchnage\"; known upstreams: exchange"]
        );
    }

    #[test]
    fn unknown_access_mode_is_refused_listing_the_three() {
        refused(
            &route_with("localhost", "/owa", "exchange", "open"),
            &["routes[0].access (line 11): access = \"open\" is not one of \"mfa\", \"public\" or \"deny\""],
        );
    }

    #[test]
    fn mfa_route_without_sign_in_sections_is_refused_naming_them() {
        let errors = errors(&route_with("localhost", "/owa", "exchange", "mfa"));
        assert_eq!(
            errors,
            ["routes[0].access (line 11): access = \"mfa\" needs sign-in through Entra ID, configured in [oidc] and [session]; this file has no [oidc] and no [session]"]
        );
        let without_session = signed_in("", OIDC, "");
        refused(
            &without_session,
            &["routes[0].access (line 11)", "this file has no [session]"],
        );
        let without_oidc = format!(
            "{}\n[session]\n{SESSION}",
            route_with("localhost", "/owa", "exchange", "mfa")
        );
        refused(
            &without_oidc,
            &["routes[0].access (line 11)", "this file has no [oidc]"],
        );
    }

    #[test]
    fn deny_route_is_accepted() {
        let config = load(&route_with("localhost", "/ecp", "exchange", "deny")).unwrap();
        assert_eq!(config.routes[0].access, Access::Deny);
    }

    #[test]
    fn duplicate_route_is_refused_even_when_path_case_differs() {
        let text = valid_with(
            &ROUTE
                .replace("localhost", "LOCALHOST")
                .replace("/owa", "/OWA/"),
        );
        refused(
            &text,
            &[
                "routes[1].path (line 15)",
                "routes[0] already publishes host \"localhost\" and path \"/OWA\"",
            ],
        );
    }

    #[test]
    fn upstream_used_by_no_route_is_only_a_warning() {
        let text = valid_with("[upstreams.spare]\nservers = [\"http://127.0.0.1:8082\"]\n");
        assert!(load(&text).is_ok());
        let warnings: Vec<String> = Config::warnings(&text)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].starts_with("upstreams.spare (line 12): no route uses this upstream"),
            "{warnings:?}"
        );
        assert!(Config::warnings(&valid_with("")).is_empty());
    }

    // ── sign-in sections and reporting ────────────────────────────────────────────────────

    #[test]
    fn oidc_without_session_or_session_without_oidc_is_refused() {
        let oidc_only = valid_with(&format!("[oidc]\n{OIDC}"));
        refused(
            &oidc_only,
            &["oidc (line 12): needs [session] too", "remembers a sign-in"],
        );
        let session_only = valid_with(&format!("[session]\n{SESSION}"));
        refused(&session_only, &["session (line 12): needs [oidc] too"]);
    }

    #[test]
    fn oidc_without_an_mfa_route_is_only_a_warning() {
        let text = valid_with(&format!("[oidc]\n{OIDC}\n[session]\n{SESSION}"));
        let config = load(&text).unwrap();
        assert!(config.oidc.is_some() && config.session.is_some());
        assert_eq!(
            warnings(&text),
            ["oidc (line 12): no route has access = \"mfa\", so nobody is asked to sign in"]
        );
    }

    #[test]
    fn mfa_section_without_sign_in_is_only_a_warning() {
        let text = valid_with("[mfa]\nmax_auth_age = \"8h\"\n");
        let config = load(&text).unwrap();
        assert_eq!(config.mfa.max_auth_age, Duration::from_secs(8 * 3600));
        assert_eq!(
            warnings(&text),
            ["mfa (line 12): has no effect: there is no [oidc] and no route has access = \"mfa\""]
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

    // ── [oidc] ────────────────────────────────────────────────────────────────────────────

    #[test]
    fn sign_in_configuration_is_accepted_with_its_defaults() {
        let config = load(&with_oidc(OIDC)).unwrap_or_else(|e| panic!("{e:#?}"));
        let oidc = config.oidc.unwrap();
        assert_eq!(oidc.issuer, format!("https://sts.windows.net/{TENANT}/"));
        assert_eq!(oidc.token_version, TokenVersion::EntraV1);
        assert_eq!(
            oidc.discovery_url,
            format!("https://login.microsoftonline.com/{TENANT}/.well-known/openid-configuration")
        );
        assert_eq!(oidc.client_id, CLIENT);
        match &oidc.client_auth {
            ClientAuth::Secret { secret, basic } => {
                assert_eq!(secret, "client-secret-from-file");
                assert!(!basic);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(oidc.scopes, ["openid", "profile", "email"]);
        assert_eq!(oidc.allowed_tenants, [TENANT]);
        assert_eq!(oidc.clock_skew, Duration::from_secs(120));
        assert_eq!(oidc.response_mode, ResponseMode::FormPost);
        assert_eq!(oidc.login_timeout, Duration::from_secs(600));

        assert_eq!(config.mfa, MfaConfig::default());
        assert_eq!(config.mfa.amr_any_of, ["mfa", "ngcmfa"]);
        assert!(config.mfa.acrs_any_of.is_empty());
        assert_eq!(config.mfa.max_auth_age, Duration::from_secs(12 * 3600));

        let session = config.session.unwrap();
        assert_eq!(session.cookie_name, "__Host-mfagw");
        assert_eq!(session.keys.len(), 1);
        assert_eq!(session.keys[0].len(), 32);
        assert_eq!(session.lifetime, Duration::from_secs(10 * 3600));
        assert_eq!(session.idle_timeout, Duration::from_secs(3600));

        let route = &config.routes[0];
        assert_eq!(route.access, Access::Mfa);
        assert_eq!(route.unauthenticated_status, 401);
        assert_eq!(route.max_auth_age, None);
        assert!(route.acrs_any_of.is_empty() && route.groups_any_of.is_empty());
        assert!(warnings(&with_oidc(OIDC)).is_empty());
    }

    /// `[oidc]` with the given issuer (and client id), a client secret and `extra` keys.
    fn oidc_issuer(issuer: &str, extra: &str) -> String {
        with_oidc(&format!(
            "issuer = {issuer:?}\nclient_id = \"{CLIENT}\"\nclient_secret = {{ file = \"/etc/mfa-gateway/client-secret\" }}\n{extra}"
        ))
    }

    #[test]
    fn issuer_over_plain_http_is_refused_except_on_loopback() {
        refused(
            &oidc_issuer(&format!("http://sts.windows.net/{TENANT}/"), ""),
            &[
                "oidc.issuer (line 14)",
                "must start with https://",
                "only on loopback addresses",
            ],
        );
        refused(
            &oidc_issuer("ftp://idp.contoso.com/", ""),
            &["oidc.issuer", "must start with https://"],
        );
        for issuer in [
            format!("http://127.0.0.1:9000/{TENANT}/"),
            format!("http://127.8.9.10/{TENANT}/v2.0"),
            format!("http://localhost:9000/{TENANT}/"),
            format!("http://[::1]:9000/{TENANT}/"),
        ] {
            let config = load(&oidc_issuer(&issuer, "")).unwrap_or_else(|e| panic!("{e:#?}"));
            let oidc = config.oidc.unwrap();
            assert_eq!(oidc.issuer, issuer);
            assert_eq!(oidc.token_version, TokenVersion::Other);
            assert_eq!(oidc.allowed_tenants, [TENANT], "{issuer}");
        }
    }

    #[test]
    fn multi_tenant_issuer_is_refused_with_the_reason() {
        for issuer in [
            "https://sts.windows.net/common/",
            "https://login.microsoftonline.com/organizations/v2.0",
            "https://login.microsoftonline.com/Consumers/v2.0",
        ] {
            refused(
                &oidc_issuer(issuer, ""),
                &[
                    "oidc.issuer (line 14)",
                    "multi-tenant endpoint",
                    "users of any tenant could sign in",
                    "tenant-specific issuer https://sts.windows.net/<tenant-id>/",
                ],
            );
        }
    }

    #[test]
    fn token_version_and_discovery_url_follow_the_issuer() {
        let v2 = format!("https://login.microsoftonline.com/{TENANT}/v2.0");
        let text =
            oidc_issuer(&v2, "").replace("[session]", "[mfa]\nacrs_any_of = [\"c1\"]\n[session]");
        let oidc = load(&text).unwrap().oidc.unwrap();
        assert_eq!(oidc.token_version, TokenVersion::EntraV2);
        assert_eq!(
            oidc.discovery_url,
            format!("{v2}/.well-known/openid-configuration")
        );

        let other = "https://idp.contoso.com/realms/staff/";
        let oidc = load(&oidc_issuer(other, "allowed_tenants = [\"staff\"]"))
            .unwrap()
            .oidc
            .unwrap();
        assert_eq!(oidc.token_version, TokenVersion::Other);
        assert_eq!(
            oidc.discovery_url,
            "https://idp.contoso.com/realms/staff/.well-known/openid-configuration"
        );
        assert_eq!(oidc.allowed_tenants, ["staff"]);
    }

    #[test]
    fn entra_issuer_is_kept_in_the_exact_form_its_tokens_carry() {
        let upper = TENANT.to_ascii_uppercase();
        let oidc = load(&oidc_issuer(
            &format!("https://STS.windows.net/{upper}/"),
            "",
        ))
        .unwrap()
        .oidc
        .unwrap();
        assert_eq!(oidc.issuer, format!("https://sts.windows.net/{TENANT}/"));
        assert_eq!(oidc.allowed_tenants, [TENANT]);
    }

    #[test]
    fn entra_issuer_not_in_the_form_of_its_tokens_is_refused() {
        for issuer in [
            format!("https://sts.windows.net/{TENANT}"),
            format!("https://sts.windows.net/{TENANT}/v2.0"),
            format!("https://sts.windows.net:443/{TENANT}/"),
            format!("https://login.microsoftonline.com/{TENANT}/oauth2/v2.0"),
        ] {
            refused(
                &oidc_issuer(&issuer, ""),
                &[
                    "oidc.issuer (line 14)",
                    "not in the form Entra's tokens carry",
                ],
            );
        }
    }

    #[test]
    fn entra_issuer_naming_its_tenant_by_domain_is_refused() {
        refused(
            &oidc_issuer("https://sts.windows.net/contoso.onmicrosoft.com/", ""),
            &[
                "oidc.issuer (line 14)",
                "\"contoso.onmicrosoft.com\" is not a tenant id",
                "GUID",
            ],
        );
        refused(
            &oidc_issuer("https://login.microsoftonline.com/contoso.com/v2.0", ""),
            &[
                "is not a tenant id",
                "https://login.microsoftonline.com/<tenant-id>/v2.0",
            ],
        );
    }

    #[test]
    fn issuer_with_a_query_fragment_or_password_is_refused() {
        for (issuer, what) in [
            (format!("https://sts.windows.net/{TENANT}/?x=1"), "no query"),
            (format!("https://sts.windows.net/{TENANT}/#x"), "fragment"),
            (
                format!("https://me:pw@sts.windows.net/{TENANT}/"),
                "user name or password",
            ),
            ("sts.windows.net".to_owned(), "https://"),
        ] {
            refused(&oidc_issuer(&issuer, ""), &["oidc.issuer", what]);
        }
    }

    #[test]
    fn login_microsoftonline_issuer_without_v2_is_accepted_with_a_warning() {
        let text = oidc_issuer(&format!("https://login.microsoftonline.com/{TENANT}/"), "");
        let oidc = load(&text).unwrap().oidc.unwrap();
        assert_eq!(oidc.token_version, TokenVersion::Other);
        let warnings = warnings(&text);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].starts_with("oidc.issuer (line 14): Entra tokens never carry this issuer"),
            "{warnings:?}"
        );
    }

    #[test]
    fn discovery_url_may_be_set_but_must_be_https() {
        let url = format!(
            "https://login.microsoftonline.com/{TENANT}/.well-known/openid-configuration?appid={CLIENT}"
        );
        let oidc = load(&with_oidc(&format!("{OIDC}discovery_url = {url:?}")))
            .unwrap()
            .oidc
            .unwrap();
        assert_eq!(oidc.discovery_url, url);
        refused(
            &with_oidc(&format!(
                "{OIDC}discovery_url = \"http://login.microsoftonline.com/{TENANT}/.well-known/openid-configuration\""
            )),
            &["oidc.discovery_url (line 17)", "must start with https://"],
        );
    }

    #[test]
    fn entra_v2_issuer_without_an_authentication_context_is_refused() {
        let v2 = format!("https://login.microsoftonline.com/{TENANT}/v2.0");
        assert_eq!(
            errors(&oidc_issuer(&v2, "")),
            [format!("oidc.issuer (line 14): Entra v2.0 ID tokens carry no amr claim, so MFA could not be verified: use the v1.0 issuer https://sts.windows.net/{TENANT}/ or set mfa.acrs_any_of to an authentication context")]
        );
        // An authentication context on the route itself is a way to verify MFA there …
        let text = signed_in(
            "acrs_any_of = [\"c2\"]",
            &format!(
                "issuer = {v2:?}\nclient_id = \"{CLIENT}\"\nclient_secret = {{ file = \"/etc/mfa-gateway/client-secret\" }}"
            ),
            &format!("[session]\n{SESSION}"),
        );
        assert!(load(&text).is_ok(), "{:?}", load(&text).err());
        // … but a second mfa route without one could never be entered.
        let text = format!(
            "{text}\n[[routes]]\nhost = \"localhost\"\npath = \"/ecp\"\nupstream = \"exchange\"\naccess = \"mfa\"\n"
        );
        let errors = errors(&text);
        assert_eq!(errors.len(), 1, "{errors:#?}");
        assert!(
            errors[0].starts_with("routes[1].access (line 24): with the Entra v2.0 issuer"),
            "{errors:#?}"
        );
    }

    #[test]
    fn client_secret_and_client_certificate_together_are_refused() {
        refused(
            &with_oidc(&format!(
                "{OIDC}client_certificate = {{ cert = \"/etc/c.pem\", key = \"/etc/k.pem\" }}"
            )),
            &[
                "oidc.client_certificate (line 17)",
                "client_secret or client_certificate, not both",
            ],
        );
    }

    #[test]
    fn oidc_without_client_secret_or_certificate_is_refused() {
        refused(
            &with_oidc(&format!(
                "issuer = \"https://sts.windows.net/{TENANT}/\"\nclient_id = \"{CLIENT}\""
            )),
            &[
                "oidc (line 13): needs the credential",
                "client_secret",
                "client_certificate",
            ],
        );
    }

    #[test]
    fn client_certificate_is_accepted_with_its_paths_and_refused_when_a_path_is_empty() {
        let base =
            format!("issuer = \"https://sts.windows.net/{TENANT}/\"\nclient_id = \"{CLIENT}\"\n");
        let config = load(&with_oidc(&format!(
            "{base}client_certificate = {{ cert = \"/etc/mfa-gateway/gw.pem\", key = \"/etc/mfa-gateway/gw.key\" }}"
        )))
        .unwrap();
        match config.oidc.unwrap().client_auth {
            ClientAuth::Certificate { cert, key } => {
                assert_eq!(cert, PathBuf::from("/etc/mfa-gateway/gw.pem"));
                assert_eq!(key, PathBuf::from("/etc/mfa-gateway/gw.key"));
            }
            other => panic!("{other:?}"),
        }
        refused(
            &with_oidc(&format!(
                "{base}client_certificate = {{ cert = \"/etc/mfa-gateway/gw.pem\", key = \"\" }}"
            )),
            &["oidc.client_certificate.key (line 16)", "not empty"],
        );
    }

    #[test]
    fn client_secret_method_basic_is_accepted_and_other_methods_refused() {
        let config = load(&with_oidc(&format!(
            "{OIDC}client_secret_method = \"basic\""
        )))
        .unwrap();
        assert!(matches!(
            config.oidc.unwrap().client_auth,
            ClientAuth::Secret { basic: true, .. }
        ));
        refused(
            &with_oidc(&format!("{OIDC}client_secret_method = \"jwt\"")),
            &[
                "oidc.client_secret_method (line 17)",
                "not one of \"post\" or \"basic\"",
            ],
        );
        refused(
            &with_oidc(&format!(
                "issuer = \"https://sts.windows.net/{TENANT}/\"\nclient_id = \"{CLIENT}\"\nclient_certificate = {{ cert = \"/c\", key = \"/k\" }}\nclient_secret_method = \"post\""
            )),
            &["oidc.client_secret_method", "applies to client_secret only"],
        );
    }

    #[test]
    fn entra_client_id_must_be_an_application_id_and_is_kept_in_lower_case() {
        let secret = "client_secret = { file = \"/etc/mfa-gateway/client-secret\" }";
        let issuer = format!("issuer = \"https://sts.windows.net/{TENANT}/\"");
        refused(
            &with_oidc(&format!("{issuer}\nclient_id = \" \"\n{secret}")),
            &["oidc.client_id (line 15)", "not empty"],
        );
        refused(
            &with_oidc(&format!("{issuer}\nclient_id = \"mfa-gateway\"\n{secret}")),
            &[
                "oidc.client_id (line 15)",
                "is not an Application (client) ID",
            ],
        );
        let upper = with_oidc(&format!(
            "{issuer}\nclient_id = \"{}\"\n{secret}",
            CLIENT.to_ascii_uppercase()
        ));
        assert_eq!(load(&upper).unwrap().oidc.unwrap().client_id, CLIENT);
        // Another provider's client ids are its own business.
        let text = oidc_issuer(&format!("http://127.0.0.1:9000/{TENANT}/"), "")
            .replace(CLIENT, "gateway-test");
        assert_eq!(load(&text).unwrap().oidc.unwrap().client_id, "gateway-test");
    }

    #[test]
    fn missing_client_secret_is_reported_by_file_or_variable_never_by_value() {
        let base =
            format!("issuer = \"https://sts.windows.net/{TENANT}/\"\nclient_id = \"{CLIENT}\"\n");
        refused(
            &with_oidc(&format!(
                "{base}client_secret = {{ file = \"/etc/mfa-gateway/absent\" }}"
            )),
            &[
                "oidc.client_secret (line 16)",
                "cannot read secret file /etc/mfa-gateway/absent",
            ],
        );
        refused(
            &with_oidc(&format!(
                "{base}client_secret = {{ env = \"MFA_GATEWAY_UNSET\" }}"
            )),
            &["oidc.client_secret (line 16): environment variable MFA_GATEWAY_UNSET is not set"],
        );
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

    #[test]
    fn scopes_always_include_openid() {
        let oidc = load(&with_oidc(&format!(
            "{OIDC}scopes = [\"email\", \"offline_access\", \"email\"]"
        )))
        .unwrap()
        .oidc
        .unwrap();
        assert_eq!(oidc.scopes, ["openid", "email", "offline_access"]);
        let oidc = load(&with_oidc(&format!(
            "{OIDC}scopes = [\"profile\", \"openid\"]"
        )))
        .unwrap()
        .oidc
        .unwrap();
        assert_eq!(oidc.scopes, ["profile", "openid"]);
    }

    #[test]
    fn scope_that_is_empty_or_has_a_space_is_refused() {
        for scope in ["", "openid profile", "a\"b"] {
            refused(
                &with_oidc(&format!("{OIDC}scopes = [\"email\", {scope:?}]")),
                &["oidc.scopes[1] (line 17)", "is not a scope"],
            );
        }
    }

    #[test]
    fn allowed_tenant_that_is_empty_or_not_a_tenant_id_is_refused() {
        refused(
            &with_oidc(&format!("{OIDC}allowed_tenants = [\"{TENANT}\", \"\"]")),
            &["oidc.allowed_tenants[1] (line 17)", "not empty"],
        );
        refused(
            &with_oidc(&format!(
                "{OIDC}allowed_tenants = [\"{TENANT}\", \"contoso.com\"]"
            )),
            &[
                "oidc.allowed_tenants[1] (line 17)",
                "\"contoso.com\" is not a tenant id",
            ],
        );
        refused(
            &with_oidc(&format!("{OIDC}allowed_tenants = []")),
            &["oidc.allowed_tenants (line 17)", "at least one tenant id"],
        );
    }

    #[test]
    fn allowed_tenants_without_the_tenant_of_the_entra_issuer_are_refused() {
        let other = "0a0b0c0d-1e1f-4a2b-8c3d-4e5f6a7b8c9d";
        refused(
            &with_oidc(&format!("{OIDC}allowed_tenants = [\"{other}\"]")),
            &[
                "oidc.allowed_tenants (line 17)",
                &format!("does not contain {TENANT}, the tenant of the issuer"),
            ],
        );
        let upper = TENANT.to_ascii_uppercase();
        let oidc = load(&with_oidc(&format!(
            "{OIDC}allowed_tenants = [\"{upper}\"]"
        )))
        .unwrap()
        .oidc
        .unwrap();
        assert_eq!(oidc.allowed_tenants, [TENANT]);
    }

    #[test]
    fn issuer_without_a_tenant_in_its_path_needs_allowed_tenants() {
        refused(
            &oidc_issuer("http://127.0.0.1:9000/", ""),
            &[
                "oidc (line 13): needs allowed_tenants",
                "no tenant id in its path",
            ],
        );
    }

    #[test]
    fn response_mode_query_is_accepted_and_unknown_modes_refused() {
        let oidc = load(&with_oidc(&format!("{OIDC}response_mode = \"query\"")))
            .unwrap()
            .oidc
            .unwrap();
        assert_eq!(oidc.response_mode, ResponseMode::Query);
        refused(
            &with_oidc(&format!("{OIDC}response_mode = \"fragment\"")),
            &[
                "oidc.response_mode (line 17)",
                "\"fragment\" is not one of \"form_post\" or \"query\"",
            ],
        );
    }

    #[test]
    fn clock_skew_and_login_timeout_are_durations() {
        let oidc = load(&with_oidc(&format!(
            "{OIDC}clock_skew = \"0s\"\nlogin_timeout = \"5m\""
        )))
        .unwrap()
        .oidc
        .unwrap();
        assert_eq!(oidc.clock_skew, Duration::ZERO);
        assert_eq!(oidc.login_timeout, Duration::from_secs(300));
        refused(
            &with_oidc(&format!("{OIDC}login_timeout = \"0s\"")),
            &["oidc.login_timeout (line 17)", "must be greater than 0"],
        );
        refused(
            &with_oidc(&format!("{OIDC}clock_skew = \"2\"")),
            &["oidc.clock_skew (line 17)", "is not a duration"],
        );
    }

    // ── [mfa] ─────────────────────────────────────────────────────────────────────────────

    #[test]
    fn mfa_settings_are_read() {
        let config = load(&with_mfa(
            "amr_any_of = [\"mfa\"]\nacrs_any_of = [\"c1\", \"c99\"]\nmax_auth_age = \"8h\"",
        ))
        .unwrap();
        assert_eq!(config.mfa.amr_any_of, ["mfa"]);
        assert_eq!(config.mfa.acrs_any_of, ["c1", "c99"]);
        assert_eq!(config.mfa.max_auth_age, Duration::from_secs(8 * 3600));
        let config = load(&with_mfa("amr_any_of = []\nacrs_any_of = [\"c3\"]")).unwrap();
        assert!(config.mfa.amr_any_of.is_empty());
    }

    #[test]
    fn mfa_with_both_lists_empty_is_refused_because_nothing_would_count() {
        for body in ["amr_any_of = []", "amr_any_of = []\nacrs_any_of = []"] {
            refused(
                &with_mfa(body),
                &[
                    "mfa (line 21)",
                    "both empty",
                    "nothing would count as multifactor authentication",
                ],
            );
        }
    }

    #[test]
    fn authentication_context_that_is_not_c1_to_c99_is_refused() {
        for id in ["c0", "c100", "C1", "c01", "ctx1", "1", ""] {
            refused(
                &with_mfa(&format!("acrs_any_of = [\"c1\", {id:?}]")),
                &[
                    "mfa.acrs_any_of[1] (line 22)",
                    "is not an authentication context id",
                    "c1 to c99",
                ],
            );
            refused(
                &with_route_policy(&format!("acrs_any_of = [{id:?}]")),
                &["routes[0].acrs_any_of[0] (line 12)", "c1 to c99"],
            );
        }
    }

    #[test]
    fn single_factor_amr_is_refused_because_it_proves_no_second_factor() {
        for amr in ["pwd", "wia"] {
            refused(
                &with_mfa(&format!("amr_any_of = [\"mfa\", {amr:?}]")),
                &["mfa.amr_any_of[1] (line 22)", "names a single factor"],
            );
        }
        refused(
            &with_mfa("amr_any_of = [\"\"]"),
            &["mfa.amr_any_of[0]", "not empty"],
        );
    }

    // ── [session] ─────────────────────────────────────────────────────────────────────────

    #[test]
    fn session_settings_are_read() {
        let text = with_session(
            "cookie_name = \"mfagw\"\nkeys = [{ env = \"NEW_KEY\" }, { file = \"/etc/mfa-gateway/session.key\" }]\nlifetime = \"8h\"\nidle_timeout = \"8h\"",
        );
        let secrets = secrets().with_env(
            "NEW_KEY",
            "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIj",
        );
        let session = Config::from_toml(&text, &secrets).unwrap().session.unwrap();
        assert_eq!(session.cookie_name, "mfagw");
        assert_eq!(session.keys.len(), 2);
        assert_eq!(session.keys[0], (0u8..36).collect::<Vec<u8>>());
        assert_eq!(session.keys[1].len(), 32);
        assert_eq!(session.lifetime, Duration::from_secs(8 * 3600));
        assert_eq!(session.idle_timeout, Duration::from_secs(8 * 3600));
    }

    #[test]
    fn session_key_is_read_in_standard_or_url_safe_base64_with_or_without_padding() {
        // 33 bytes chosen so that the two alphabets differ (+/ against -_).
        let bytes: Vec<u8> = (0u8..33)
            .map(|i| i.wrapping_mul(37).wrapping_add(0xf8))
            .collect();
        let standard = base64::engine::general_purpose::STANDARD.encode(&bytes);
        assert!(
            standard.contains('+') || standard.contains('/'),
            "{standard}"
        );
        let url_safe = base64::engine::general_purpose::URL_SAFE.encode(&bytes);
        let unpadded = base64::engine::general_purpose::STANDARD_NO_PAD.encode(&bytes);
        // `openssl rand -base64 48` and longer wrap their output at 64 characters.
        let wrapped = format!("{}\n{}\n", &standard[..20], &standard[20..]);
        for encoded in [&standard, &url_safe, &unpadded, &wrapped] {
            let secrets = MapSecrets::new()
                .with_file("/etc/mfa-gateway/client-secret", "s")
                .with_file("/etc/mfa-gateway/session.key", encoded.as_str());
            let session = Config::from_toml(&with_session(SESSION), &secrets)
                .unwrap_or_else(|e| panic!("{encoded:?}: {e}"))
                .session
                .unwrap();
            assert_eq!(session.keys, std::slice::from_ref(&bytes), "{encoded:?}");
        }
    }

    #[test]
    fn session_key_shorter_than_32_bytes_is_refused_with_the_openssl_hint() {
        let short = base64::engine::general_purpose::STANDARD.encode([7u8; 16]);
        refused(
            &with_session(&format!("keys = [{{ value = \"{short}\" }}]")),
            &[
                "session.keys[0] (line 19): inline secret value holds 16 bytes once decoded",
                "at least 32 random bytes",
                "openssl rand -base64 32",
            ],
        );
    }

    #[test]
    fn session_key_that_is_not_base64_is_refused_without_echoing_it() {
        let secrets = secrets().with_env("SESSION_KEY", "correct horse battery staple!!");
        let text = with_session("keys = [{ env = \"SESSION_KEY\" }]");
        let errors: Vec<String> = Config::from_toml(&text, &secrets)
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(errors.len(), 1, "{errors:#?}");
        assert!(
            errors[0].starts_with(
                "session.keys[0] (line 19): environment variable SESSION_KEY is not base64"
            ),
            "{errors:#?}"
        );
        assert!(errors[0].contains("openssl rand -base64 32"));
        assert!(!errors[0].contains("horse"), "{errors:#?}");
    }

    #[test]
    fn session_without_keys_is_refused() {
        refused(
            &with_session("keys = []"),
            &[
                "session.keys (line 19): at least one key is required",
                "openssl rand",
            ],
        );
        refused(
            &with_session("lifetime = \"10h\""),
            &["session.keys (line 18): is required but missing"],
        );
    }

    #[test]
    fn missing_session_key_file_is_reported_by_path() {
        refused(
            &with_session("keys = [{ file = \"/etc/mfa-gateway/old.key\" }]"),
            &["session.keys[0] (line 19): cannot read secret file /etc/mfa-gateway/old.key"],
        );
    }

    #[test]
    fn cookie_name_that_is_not_a_token_is_refused() {
        for name in ["", "mfa gw", "mfa=gw", "mfa;gw", "\"mfagw\"", "mfagw\u{e9}"] {
            refused(
                &with_session(&format!("{SESSION}cookie_name = {name:?}")),
                &[
                    "session.cookie_name (line 20)",
                    "is not a valid cookie name",
                ],
            );
        }
        for name in ["__Host-mfagw", "__Secure-mfagw", "mfagw.session"] {
            let text = with_session(&format!("{SESSION}cookie_name = {name:?}"));
            assert_eq!(load(&text).unwrap().session.unwrap().cookie_name, name);
        }
    }

    #[test]
    fn idle_timeout_longer_than_lifetime_is_refused() {
        refused(
            &with_session(&format!(
                "{SESSION}lifetime = \"2h\"\nidle_timeout = \"3h\""
            )),
            &[
                "session.idle_timeout (line 21)",
                "idle_timeout (3h) must not exceed lifetime (2h)",
            ],
        );
        refused(
            &with_session(&format!("{SESSION}lifetime = \"30m\"")),
            &[
                "session.lifetime (line 20)",
                "idle_timeout (1h) must not exceed lifetime (30m)",
            ],
        );
        refused(
            &with_session(&format!("{SESSION}lifetime = \"0s\"")),
            &["session.lifetime (line 20)", "must be greater than 0"],
        );
    }

    // ── route policy ──────────────────────────────────────────────────────────────────────

    #[test]
    fn route_policy_keys_are_read_on_an_mfa_route() {
        let group = "5E6F7A8B-9C0D-4E1F-A2B3-C4D5E6F7A8B9";
        let config = load(&with_route_policy(&format!(
            "unauthenticated_status = 440\nmax_auth_age = \"1h\"\nacrs_any_of = [\"c2\"]\ngroups_any_of = [\"{group}\"]"
        )))
        .unwrap();
        let route = &config.routes[0];
        assert_eq!(route.unauthenticated_status, 440);
        assert_eq!(route.max_auth_age, Some(Duration::from_secs(3600)));
        assert_eq!(route.acrs_any_of, ["c2"]);
        assert_eq!(route.groups_any_of, [group.to_ascii_lowercase()]);
    }

    #[test]
    fn unauthenticated_status_other_than_401_or_440_is_refused() {
        for status in ["302", "403", "0", "-401"] {
            refused(
                &with_route_policy(&format!("unauthenticated_status = {status}")),
                &[
                    "routes[0].unauthenticated_status (line 12)",
                    "is not 401 or 440",
                ],
            );
        }
    }

    #[test]
    fn route_policy_keys_on_a_public_or_deny_route_are_refused() {
        for access in ["public", "deny"] {
            let text = format!(
                "{}unauthenticated_status = 440\nmax_auth_age = \"1h\"\nacrs_any_of = [\"c1\"]\ngroups_any_of = []\n",
                route_with("localhost", "/owa", "exchange", access)
            );
            let errors = errors(&text);
            let expected: Vec<String> = [
                ("unauthenticated_status", 12),
                ("max_auth_age", 13),
                ("acrs_any_of", 14),
                ("groups_any_of", 15),
            ]
            .iter()
            .map(|(key, line)| {
                format!("routes[0].{key} (line {line}): only applies to access = \"mfa\"; this route has access = \"{access}\"")
            })
            .collect();
            assert_eq!(errors, expected);
        }
    }

    #[test]
    fn route_max_auth_age_longer_than_the_mfa_one_is_only_a_warning() {
        let text = with_route_policy("max_auth_age = \"24h\"");
        assert_eq!(
            load(&text).unwrap().routes[0].max_auth_age,
            Some(Duration::from_secs(24 * 3600))
        );
        assert_eq!(
            warnings(&text),
            ["routes[0].max_auth_age (line 12): 1day is longer than [mfa].max_auth_age (12h), which applies to every route, so it changes nothing; a route's max_auth_age can only be stricter"]
        );
        assert!(warnings(&with_route_policy("max_auth_age = \"12h\"")).is_empty());
        refused(
            &with_route_policy("max_auth_age = \"0s\""),
            &["routes[0].max_auth_age (line 12)", "must be greater than 0"],
        );
    }

    #[test]
    fn group_that_is_not_an_object_id_is_refused() {
        refused(
            &with_route_policy("groups_any_of = [\"Exchange Admins\"]"),
            &[
                "routes[0].groups_any_of[0] (line 12)",
                "\"Exchange Admins\" is not a group object id",
                "tokens carry group ids, not names",
            ],
        );
    }
}
