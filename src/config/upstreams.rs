//! `[upstreams.<name>]`: the Exchange servers behind the gateway, grouped by the name routes
//! refer to.

use std::collections::HashMap;
use std::net::Ipv6Addr;
use std::path::PathBuf;
use std::time::Duration;

use rustls_pki_types::ServerName;
use toml::Spanned;

use super::defaults::{
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_HEALTHY_THRESHOLD, DEFAULT_HEALTH_INTERVAL,
    DEFAULT_HEALTH_TIMEOUT, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_REQUEST_BODY,
    DEFAULT_UNHEALTHY_THRESHOLD,
};
use super::raw::{key_path, RawHealthCheck, RawSize, RawUpstream, Text};
use super::validate::Checker;

/// `[upstreams.<name>]`: servers that serve the same content, and how to reach them.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// The table key: `[upstreams.exchange]` → `exchange`.
    pub name: String,
    /// `servers`: at least one, at most 64, none listed twice.
    pub servers: Vec<UpstreamServer>,
    /// `ca_file`: CA certificates (PEM) the servers' certificates must chain to; the system's
    /// roots when absent. Only with `https://` servers.
    pub ca_file: Option<PathBuf>,
    /// `tls_server_name`, lower-cased: the name to verify in the servers' certificates when
    /// they are addressed otherwise. Only with `https://` servers.
    pub tls_server_name: Option<String>,
    /// `health_check = { path, interval, timeout, … }`: active probes of each server.
    pub health_check: Option<HealthCheckConfig>,
    /// Extension `connect_timeout`: TCP + TLS connect timeout to one server.
    pub connect_timeout: Duration,
    /// Extension `idle_timeout`: longest silence while waiting for or streaming a response. No
    /// total timeout: OWA holds long polls open for minutes.
    pub idle_timeout: Duration,
    /// Extension `max_request_body`: largest request body forwarded, in bytes; larger gets 413.
    pub max_request_body: u64,
    /// `kerberos_spn`: the service principal name Exchange's Windows authentication answers to
    /// (`sso = "kerberos"` routes); see [`UpstreamConfig::kerberos_spn_for`] for the default.
    pub kerberos_spn: Option<String>,
}

impl UpstreamConfig {
    /// The SPN the gateway asks a Kerberos ticket for when it sends a request to `server`:
    /// `kerberos_spn`, else `HTTP/<tls_server_name>`, else `HTTP/<the server's host>`, the
    /// name the client would have used, as browsers do on a domain-joined machine.
    pub fn kerberos_spn_for(&self, server: &UpstreamServer) -> String {
        if let Some(spn) = &self.kerberos_spn {
            return spn.clone();
        }
        let host = self
            .tls_server_name
            .as_deref()
            .unwrap_or_else(|| server.authority.host());
        format!(
            "HTTP/{}",
            host.trim_start_matches('[')
                .trim_end_matches(']')
                .to_ascii_lowercase()
        )
    }
}

/// A route's upstream (`upstream = "<name>"`): the position of its entry in
/// [`Config::upstreams`](super::Config::upstreams). Only validation makes one, once it has
/// found the name, so whatever is built per upstream in that order is found without a lookup
/// that could fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UpstreamId(usize);

impl UpstreamId {
    /// The index into [`Config::upstreams`](super::Config::upstreams).
    pub fn index(self) -> usize {
        self.0
    }

    pub(super) fn new(index: usize) -> UpstreamId {
        UpstreamId(index)
    }
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

/// How the gateway talks to an Exchange server: the scheme of its URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamScheme {
    Http,
    Https,
}

/// `upstreams.<name>.health_check`: the probe that takes servers out of rotation and puts them
/// back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheckConfig {
    /// `path`, such as `/owa/healthcheck.htm`, which Exchange answers without authentication.
    pub path: String,
    /// `interval` between probes of one server.
    pub interval: Duration,
    /// `timeout` of one probe; shorter than `interval`.
    pub timeout: Duration,
    /// Extension `unhealthy_threshold`: consecutive failures before a server is taken out of
    /// rotation.
    pub unhealthy_threshold: u32,
    /// Extension `healthy_threshold`: consecutive successes before it is put back.
    pub healthy_threshold: u32,
}

/// The pool remembers which servers a request has tried in one 64-bit mask.
pub(crate) const MAX_UPSTREAM_SERVERS: usize = 64;

impl Checker {
    pub(super) fn upstream(
        &mut self,
        name: &Text,
        upstream: &Spanned<RawUpstream>,
    ) -> UpstreamConfig {
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
            DEFAULT_CONNECT_TIMEOUT,
            false,
        );
        let idle_timeout = self.duration(
            &format!("{path}.idle_timeout"),
            upstream.idle_timeout.as_ref(),
            DEFAULT_IDLE_TIMEOUT,
            false,
        );
        let max_request_body = match &upstream.max_request_body {
            None => DEFAULT_MAX_REQUEST_BODY,
            Some(size) => parse_size(size.get_ref()).unwrap_or_else(|message| {
                self.error(format!("{path}.max_request_body"), size, message);
                DEFAULT_MAX_REQUEST_BODY
            }),
        };

        let kerberos_spn = upstream
            .kerberos_spn
            .as_ref()
            .and_then(|spn| self.kerberos_spn(&path, spn));

        UpstreamConfig {
            name: name.get_ref().clone(),
            servers,
            ca_file,
            tls_server_name,
            health_check,
            connect_timeout,
            idle_timeout,
            max_request_body,
            kerberos_spn,
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
            DEFAULT_HEALTH_INTERVAL,
            false,
        );
        let timeout = self.duration(
            &format!("{path}.timeout"),
            check.timeout.as_ref(),
            DEFAULT_HEALTH_TIMEOUT,
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
            DEFAULT_UNHEALTHY_THRESHOLD,
        );
        let healthy_threshold = self.threshold(
            &format!("{path}.healthy_threshold"),
            check.healthy_threshold.as_ref(),
            DEFAULT_HEALTHY_THRESHOLD,
        );
        HealthCheckConfig {
            path: check.path.get_ref().clone(),
            interval,
            timeout,
            unhealthy_threshold,
            healthy_threshold,
        }
    }

    fn threshold(&mut self, path: &str, value: Option<&Spanned<i64>>, default: u32) -> u32 {
        let Some(value) = value else {
            return default;
        };
        match u32::try_from(*value.get_ref()) {
            Ok(n) if n >= 1 => n,
            _ => {
                self.error(path, value, "must be a whole number of at least 1");
                1
            }
        }
    }
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
    use std::path::PathBuf;

    use crate::config::test_support::*;
    use crate::config::UpstreamScheme;

    #[test]
    fn upstream_without_servers_is_refused() {
        refused(
            &upstream_with("servers = []"),
            &["upstreams.exchange.servers (line 4): at least one server"],
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
}
