//! The rules a parsed configuration must follow before the gateway starts with it. Every rule
//! adds to one list of errors, so `check-config` shows everything to fix at once.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use rustls_pki_types::ServerName;
use toml::Spanned;

use super::raw::{self, key_path, RawConfig, RawHealthCheck, RawRoute, RawSize, RawUpstream, Text};
use super::secret::{Secrets, SystemSecrets};
use super::{
    Access, CertificateConfig, Config, HealthCheckConfig, MfaConfig, RouteConfig, ServerConfig,
    TlsConfig, UpstreamConfig, UpstreamScheme, UpstreamServer,
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
    raw: RawConfig,
    text: &str,
    _secrets: &dyn Secrets,
) -> (Result<Config, ConfigErrors>, Vec<ConfigError>) {
    let mut checker = Checker {
        text,
        errors: Vec::new(),
        warnings: Vec::new(),
    };
    for (section, table) in [
        ("oidc", &raw.oidc),
        ("mfa", &raw.mfa),
        ("session", &raw.session),
    ] {
        if let Some(table) = table {
            checker.error(
                section,
                table,
                format!(
                    "sign-in through Entra ID is not available in this version; remove [{section}]"
                ),
            );
        }
    }
    let server = checker.server(raw.server, &raw.tls.certificates);
    let tls = checker.tls(&raw.tls.certificates);
    let upstreams: Vec<UpstreamConfig> = raw
        .upstreams
        .iter()
        .map(|(name, upstream)| checker.upstream(name, upstream))
        .collect();
    let routes = checker.routes(raw.routes.as_deref(), &raw.upstreams);

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
            oidc: None,
            mfa: MfaConfig::default(),
            session: None,
        };
        (Ok(config), warnings)
    } else {
        errors.sort_by_key(|e| e.line.unwrap_or(0));
        (Err(ConfigErrors(errors)), warnings)
    }
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
        let Some(value) = value else {
            return fallback;
        };
        match humantime::parse_duration(value.get_ref()) {
            Ok(d) if d.is_zero() && !zero_allowed => {
                self.error(path, value, "must be greater than 0");
                fallback
            }
            Ok(d) => d,
            Err(_) => {
                self.error(
                    path,
                    value,
                    format!(
                        "{:?} is not a duration; write a number and a unit, such as \"500ms\", \"30s\", \"10m\" or \"8h\"",
                        value.get_ref()
                    ),
                );
                fallback
            }
        }
    }

    fn routes(
        &mut self,
        routes: Option<&[Spanned<RawRoute>]>,
        upstreams: &[(Text, Spanned<RawUpstream>)],
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
                // Refused rather than downgraded: a route the administrator meant to protect
                // must never be published without sign-in.
                "mfa" => {
                    self.error(
                        format!("{path}.access"),
                        &route.access,
                        "access = \"mfa\" needs sign-in through Entra ID, which this version does not have yet; use \"public\" or \"deny\" until then",
                    );
                    None
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

            if let (Some(host), Some(path), Some(access)) = (host, prefix, access) {
                out.push(RouteConfig {
                    host,
                    path,
                    upstream: upstream.clone(),
                    access,
                    unauthenticated_status: 401,
                    max_auth_age: None,
                    acrs_any_of: Vec::new(),
                    groups_any_of: Vec::new(),
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

    fn load(text: &str) -> Result<Config, Vec<String>> {
        Config::from_toml(text, &MapSecrets::new())
            .map_err(|e| e.iter().map(ToString::to_string).collect())
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

    #[test]
    fn shipped_example_configuration_is_valid() {
        let text = include_str!("../../config/gateway.example.toml");
        let config = load(text).unwrap_or_else(|e| panic!("{e:#?}"));
        assert!(config.server.https_listen.is_some());
        assert_eq!(config.upstreams[0].servers.len(), 2);
        assert!(config.routes.iter().all(|r| r.access != Access::Mfa));
        assert!(
            Config::warnings(text).is_empty(),
            "{:?}",
            Config::warnings(text)
        );
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
    fn mfa_route_is_refused_until_sign_in_exists() {
        let errors = errors(&route_with("localhost", "/owa", "exchange", "mfa"));
        assert_eq!(
            errors,
            ["routes[0].access (line 11): access = \"mfa\" needs sign-in through Entra ID, which this version does not have yet; use \"public\" or \"deny\" until then"]
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
    fn sign_in_sections_are_refused_in_this_version() {
        let text = valid_with(
            "[oidc]\nissuer = \"https://sts.windows.net/x/\"\n[mfa]\namr_any_of = [\"mfa\"]\n[session]\nlifetime = \"10h\"\n",
        );
        let errors = errors(&text);
        assert_eq!(errors.len(), 3, "{errors:#?}");
        assert_eq!(
            errors[0],
            "oidc (line 12): sign-in through Entra ID is not available in this version; remove [oidc]"
        );
        assert!(errors[1].starts_with("mfa (line 14)"), "{errors:#?}");
        assert!(errors[2].ends_with("remove [session]"), "{errors:#?}");
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
}
