//! `[server]`: where the gateway listens, and the limits every browser connection meets.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;
use toml::Spanned;

use super::defaults::{
    default_workers, DEFAULT_HEADER_READ_TIMEOUT, DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_HEADER_BYTES, DEFAULT_REQUEST_BODY_TIMEOUT, DEFAULT_SHUTDOWN_GRACE,
};
use super::error::ConfigError;
use super::raw::{RawCertificate, RawServer, Text};
use super::validate::Checker;

/// `[server]`: the listeners and the limits of browser connections. One of `https_listen` and
/// `http_listen` is always set.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// `server.https_listen`: the TLS listener, with the certificates of `[[tls.certificates]]`.
    pub https_listen: Option<SocketAddr>,
    /// `server.http_listen`: plain HTTP; redirects to HTTPS, or serves routes when there is no
    /// TLS listener.
    pub http_listen: Option<SocketAddr>,
    /// `server.admin_listen`: `/healthz`, `/readyz` and `/metrics`, kept off the public port.
    pub admin_listen: Option<SocketAddr>,
    /// `server.trusted_proxies`: peers whose `X-Forwarded-For` is believed; a single address is
    /// a network of one host.
    pub trusted_proxies: Vec<IpNet>,
    /// `server.shutdown_grace`: how long in-flight requests may finish after SIGTERM; zero
    /// stops at once.
    pub shutdown_grace: Duration,
    /// Extension `server.max_connections`: open connections accepted at once on the public
    /// listeners together.
    pub max_connections: usize,
    /// Extension `server.header_read_timeout`: time a client has to complete its TLS handshake
    /// and each request head. It also bounds how long an idle HTTP/1.1 keep-alive connection
    /// waits for its next request (slowloris protection and idle cleanup are the same timer).
    pub header_read_timeout: Duration,
    /// Extension `server.max_header_bytes`: largest request head (request line + headers)
    /// accepted; larger gets 431. At least 8192 (the HTTP/1 parser's smallest buffer).
    pub max_header_bytes: usize,
    /// Extension `server.request_body_timeout`: longest pause within a request body the browser
    /// sends (to Exchange or to the gateway itself). A client that stops sending mid-body gives
    /// its slot back after this, not after the upstream's much longer `idle_timeout`.
    pub request_body_timeout: Duration,
    /// Extension `server.workers`: threads that serve connections (today the worker threads of
    /// the one multi-threaded runtime). Read once at start; a reload does not change it.
    pub workers: usize,
}

/// The HTTP/1 parser's smallest read buffer: a lower limit could not be enforced.
const MIN_HEADER_BYTES: usize = 8192;
const MAX_HEADER_BYTES: usize = 1_048_576;
/// More threads than this is a typo, not a machine: each costs a stack and a scheduler slot.
const MAX_WORKERS: usize = 1024;

impl Checker {
    pub(super) fn server(
        &mut self,
        server: Option<Spanned<RawServer>>,
        certificates: &[Spanned<RawCertificate>],
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
            DEFAULT_SHUTDOWN_GRACE,
            true,
        );
        let header_read_timeout = self.duration(
            "server.header_read_timeout",
            server.header_read_timeout.as_ref(),
            DEFAULT_HEADER_READ_TIMEOUT,
            false,
        );
        let request_body_timeout = self.duration(
            "server.request_body_timeout",
            server.request_body_timeout.as_ref(),
            DEFAULT_REQUEST_BODY_TIMEOUT,
            false,
        );
        let max_connections = match &server.max_connections {
            None => DEFAULT_MAX_CONNECTIONS,
            Some(n) => match usize::try_from(*n.get_ref()) {
                Ok(n) if n >= 1 => n,
                _ => {
                    self.error("server.max_connections", n, "must be at least 1");
                    1
                }
            },
        };
        let max_header_bytes = match &server.max_header_bytes {
            None => DEFAULT_MAX_HEADER_BYTES,
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
        let workers = match &server.workers {
            None => default_workers(),
            Some(n) => match usize::try_from(*n.get_ref()) {
                Ok(n) if (1..=MAX_WORKERS).contains(&n) => n,
                _ => {
                    self.error(
                        "server.workers",
                        n,
                        format!("must be between 1 and {MAX_WORKERS}"),
                    );
                    1
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
            workers,
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
}

/// Whether two listen addresses would compete for the same socket. Port 0 (any free port, used
/// by tests) never clashes.
fn clash(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::config::test_support::*;

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
    fn max_connections_below_one_is_refused() {
        refused(
            &with_server("http_listen = \"127.0.0.1:8080\"\nmax_connections = 0", ""),
            &["server.max_connections (line 3): must be at least 1"],
        );
    }

    #[test]
    fn workers_outside_1_to_1024_is_refused() {
        for value in ["0", "-2", "1025"] {
            refused(
                &with_server(
                    &format!("http_listen = \"127.0.0.1:8080\"\nworkers = {value}"),
                    "",
                ),
                &["server.workers (line 3): must be between 1 and 1024"],
            );
        }
        let config = load(&with_server(
            "http_listen = \"127.0.0.1:8080\"\nworkers = 3",
            "",
        ))
        .unwrap();
        assert_eq!(config.server.workers, 3);
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
}
