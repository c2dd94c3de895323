//! `[redis]`: the state several gateways share — revocations (sign-out, front-channel logout)
//! and the single use of login states — so that what happens on one gateway holds on all.

use std::path::PathBuf;

use toml::Spanned;

use super::raw::RawRedis;
use super::secret::Secrets;
use super::validate::Checker;

/// `key_prefix` when left out.
pub const DEFAULT_REDIS_KEY_PREFIX: &str = "mfagw:";

/// How the gateway finds Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisMode {
    /// One server, named by the one URL.
    Standalone,
    /// The URLs are Sentinels; they name the current master of `sentinel_master`, asked again
    /// after every lost connection (a failover).
    Sentinel,
    /// A Redis Cluster (not supported yet: refused by validation).
    Cluster,
}

/// What happens while Redis cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnUnavailable {
    /// New sign-ins and sessions fail closed: a 503 page, an audit event. A revocation made on
    /// another gateway meanwhile cannot be missed.
    Refuse,
    /// Sessions are served from their cookies and sign-ins go on with this gateway's own
    /// records; logged loudly. A revocation made elsewhere meanwhile reaches this gateway when
    /// Redis is back.
    Allow,
}

/// One Redis address from `urls`, without credentials (those come from `password`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisAddress {
    /// `rediss://`: TLS.
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// The ACL user name (`rediss://mfagw@host`), if any.
    pub username: Option<String>,
    /// The database number (`/2`), standalone only; default 0.
    pub db: i64,
}

/// `[redis]`, validated.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisConfig {
    pub urls: Vec<RedisAddress>,
    pub mode: RedisMode,
    /// `sentinel_master`: the master's name Sentinel knows (required with `mode = "sentinel"`).
    pub sentinel_master: Option<String>,
    /// `password`, read from its secret source.
    pub password: Option<String>,
    /// `ca_file`: CA certificates (PEM) for `rediss://`; default: the system's roots.
    pub ca_file: Option<PathBuf>,
    /// `key_prefix`: every key and channel the gateway uses starts with it.
    pub key_prefix: String,
    pub on_unavailable: OnUnavailable,
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("urls", &self.urls)
            .field("mode", &self.mode)
            .field("sentinel_master", &self.sentinel_master)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("ca_file", &self.ca_file)
            .field("key_prefix", &self.key_prefix)
            .field("on_unavailable", &self.on_unavailable)
            .finish()
    }
}

impl RedisConfig {
    pub fn uses_tls(&self) -> bool {
        self.urls.iter().any(|u| u.tls)
    }
}

impl Checker {
    pub(super) fn redis(
        &mut self,
        section: &Spanned<RawRedis>,
        secrets: &dyn Secrets,
    ) -> RedisConfig {
        let redis = section.get_ref();
        let mode = match redis.mode.as_ref() {
            None => RedisMode::Standalone,
            Some(mode) => match mode.get_ref().as_str() {
                "standalone" => RedisMode::Standalone,
                "sentinel" => RedisMode::Sentinel,
                "cluster" => {
                    self.error(
                        "redis.mode",
                        mode,
                        "\"cluster\" is not supported by this version yet; use \"standalone\" or \"sentinel\"",
                    );
                    RedisMode::Cluster
                }
                other => {
                    self.error(
                        "redis.mode",
                        mode,
                        format!("{other:?} is not a mode; expected \"standalone\", \"sentinel\" or \"cluster\""),
                    );
                    RedisMode::Standalone
                }
            },
        };

        let mut urls = Vec::new();
        for (i, url) in redis.urls.get_ref().iter().enumerate() {
            match parse_redis_url(url.get_ref()) {
                Ok(address) => urls.push(address),
                Err(message) => self.error(format!("redis.urls[{i}]"), url, message),
            }
        }
        match (mode, redis.urls.get_ref().len()) {
            (_, 0) => self.error(
                "redis.urls",
                &redis.urls,
                "at least one URL is required, such as \"rediss://mfagw@redis01.corp.contoso.com:6380\"",
            ),
            (RedisMode::Standalone, n) if n > 1 => self.error(
                "redis.urls",
                &redis.urls,
                format!("mode = \"standalone\" takes one URL, not {n}; for several servers use mode = \"sentinel\" with the Sentinels' URLs"),
            ),
            _ => {}
        }
        if urls.iter().any(|u| u.tls) && urls.iter().any(|u| !u.tls) {
            self.error(
                "redis.urls",
                &redis.urls,
                "mixes redis:// and rediss://; use rediss:// (TLS) for all",
            );
        }
        if mode == RedisMode::Sentinel && urls.iter().any(|u| u.db != 0) {
            self.error(
                "redis.urls",
                &redis.urls,
                "with mode = \"sentinel\" the URLs are the Sentinels': no database number",
            );
        }

        let sentinel_master = match (&redis.sentinel_master, mode) {
            (Some(name), RedisMode::Sentinel) => {
                if name.get_ref().trim().is_empty() {
                    self.error(
                        "redis.sentinel_master",
                        name,
                        "must name the master as the Sentinels know it, such as \"mymaster\"",
                    );
                }
                Some(name.get_ref().clone())
            }
            (Some(name), _) => {
                self.error(
                    "redis.sentinel_master",
                    name,
                    "applies to mode = \"sentinel\" only",
                );
                None
            }
            (None, RedisMode::Sentinel) => {
                self.error(
                    "redis.sentinel_master",
                    section,
                    "is required with mode = \"sentinel\": the name of the master the Sentinels watch",
                );
                None
            }
            (None, _) => None,
        };

        let password = redis
            .password
            .as_ref()
            .and_then(|source| self.secret("redis.password", source, secrets));
        if password.as_deref().is_some_and(str::is_empty) {
            if let Some(source) = &redis.password {
                self.error("redis.password", source, "is empty");
            }
        }

        let ca_file = redis.ca_file.as_ref().map(|ca_file| {
            if ca_file.get_ref().trim().is_empty() {
                self.error(
                    "redis.ca_file",
                    ca_file,
                    "must be the path of a PEM file, not empty; leave ca_file out to use the system roots",
                );
            } else if !urls.is_empty() && !urls.iter().any(|u| u.tls) {
                self.error(
                    "redis.ca_file",
                    ca_file,
                    "applies to rediss:// (TLS) only, and every URL is redis://",
                );
            }
            PathBuf::from(ca_file.get_ref())
        });

        let key_prefix = match &redis.key_prefix {
            None => DEFAULT_REDIS_KEY_PREFIX.to_owned(),
            Some(prefix) => {
                let text = prefix.get_ref();
                let fine = !text.is_empty()
                    && text.len() <= 64
                    && text.bytes().all(|b| {
                        b.is_ascii_graphic()
                            && b != b'*'
                            && b != b'?'
                            && b != b'['
                            && b != b']'
                            && b != b'\\'
                    });
                if !fine {
                    self.error(
                        "redis.key_prefix",
                        prefix,
                        "must be 1 to 64 visible ASCII characters without spaces or the pattern characters * ? [ ] \\, such as \"mfagw:\"",
                    );
                }
                text.clone()
            }
        };

        let on_unavailable = match redis.on_unavailable.as_ref() {
            None => OnUnavailable::Refuse,
            Some(value) => match value.get_ref().as_str() {
                "refuse" => OnUnavailable::Refuse,
                "allow" => OnUnavailable::Allow,
                other => {
                    self.error(
                        "redis.on_unavailable",
                        value,
                        format!("{other:?} is not a choice; expected \"refuse\" (new sign-ins and sessions fail closed while Redis is unreachable) or \"allow\" (sessions are served from their cookies, logged loudly)"),
                    );
                    OnUnavailable::Refuse
                }
            },
        };
        if on_unavailable == OnUnavailable::Allow {
            if let Some(value) = &redis.on_unavailable {
                self.warning(
                    "redis.on_unavailable",
                    value,
                    "\"allow\": while Redis is unreachable a session signed out on another gateway is still served here",
                );
            }
        }

        RedisConfig {
            urls,
            mode,
            sentinel_master,
            password,
            ca_file,
            key_prefix,
            on_unavailable,
        }
    }
}

/// `redis://[user@]host[:port][/db]` or `rediss://…`. A password in the URL is refused: it
/// belongs in `password = { file = … }`, not in a file that is copied around.
fn parse_redis_url(text: &str) -> Result<RedisAddress, String> {
    // The text is not echoed: a mistyped URL may still hold a password.
    let url = url::Url::parse(text)
        .map_err(|e| format!("is not a URL ({e}); write it as \"rediss://user@host:6380\""))?;
    let tls = match url.scheme() {
        "redis" => false,
        "rediss" => true,
        other => {
            return Err(format!(
                "scheme {other:?} is not redis:// or rediss:// (TLS)"
            ))
        }
    };
    if url.password().is_some() {
        return Err(
            "holds a password: put it in redis.password = { file = \"…\" } instead".to_owned(),
        );
    }
    let host = match url.host() {
        Some(url::Host::Domain(name)) if !name.is_empty() => name.to_owned(),
        Some(url::Host::Ipv4(ip)) => ip.to_string(),
        Some(url::Host::Ipv6(ip)) => ip.to_string(),
        _ => return Err("names no host".to_owned()),
    };
    if url.query().is_some() || url.fragment().is_some() {
        return Err("takes no query or fragment".to_owned());
    }
    let db = match url.path().trim_start_matches('/') {
        "" => 0,
        number => number
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 0)
            .ok_or_else(|| format!("path {:?} is not a database number", url.path()))?,
    };
    let username = (!url.username().is_empty()).then(|| {
        percent_encoding::percent_decode_str(url.username())
            .decode_utf8_lossy()
            .into_owned()
    });
    Ok(RedisAddress {
        tls,
        host,
        port: url.port().unwrap_or(6379),
        username,
        db,
    })
}

#[cfg(test)]
mod tests {
    use crate::config::test_support::*;
    use crate::config::{Config, MapSecrets, OnUnavailable, RedisMode};

    fn with_redis(body: &str) -> String {
        valid_with(&format!("\n[redis]\n{body}\n"))
    }

    fn secrets() -> MapSecrets {
        MapSecrets::new().with_file("/etc/mfa-gateway/redis-password", "s3cret\n")
    }

    fn errors(body: &str) -> Vec<String> {
        match Config::from_toml(&with_redis(body), &secrets()) {
            Ok(_) => Vec::new(),
            Err(errors) => errors.0.iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn redis_settings_are_read() {
        let text = with_redis(
            "urls = [\"rediss://mfagw@redis01.corp.contoso.com:6380\"]\nmode = \"standalone\"\npassword = { file = \"/etc/mfa-gateway/redis-password\" }\nca_file = \"/etc/mfa-gateway/corp-root.pem\"\nkey_prefix = \"gw1:\"\non_unavailable = \"allow\"",
        );
        let redis = Config::from_toml(&text, &secrets()).unwrap().redis.unwrap();
        assert_eq!(redis.urls.len(), 1);
        let url = &redis.urls[0];
        assert!(url.tls);
        assert_eq!(url.host, "redis01.corp.contoso.com");
        assert_eq!(url.port, 6380);
        assert_eq!(url.username.as_deref(), Some("mfagw"));
        assert_eq!(redis.mode, RedisMode::Standalone);
        assert_eq!(redis.password.as_deref(), Some("s3cret"));
        assert_eq!(redis.key_prefix, "gw1:");
        assert_eq!(redis.on_unavailable, OnUnavailable::Allow);
        assert!(!format!("{redis:?}").contains("s3cret"));
    }

    #[test]
    fn redis_defaults_are_standalone_refuse_and_the_mfagw_prefix() {
        let text = with_redis("urls = [\"redis://127.0.0.1\"]");
        let redis = Config::from_toml(&text, &secrets()).unwrap().redis.unwrap();
        assert_eq!(redis.mode, RedisMode::Standalone);
        assert_eq!(redis.on_unavailable, OnUnavailable::Refuse);
        assert_eq!(redis.key_prefix, "mfagw:");
        assert_eq!(redis.urls[0].port, 6379);
        assert!(redis.password.is_none());
    }

    #[test]
    fn sentinel_mode_needs_the_master_name() {
        let errors = errors(
            "urls = [\"redis://10.0.0.1:26379\", \"redis://10.0.0.2:26379\"]\nmode = \"sentinel\"",
        );
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("redis.sentinel_master") && e.contains("required")),
            "{errors:?}"
        );
        let text = with_redis("urls = [\"redis://10.0.0.1:26379\", \"redis://10.0.0.2:26379\"]\nmode = \"sentinel\"\nsentinel_master = \"mymaster\"");
        let redis = Config::from_toml(&text, &secrets()).unwrap().redis.unwrap();
        assert_eq!(redis.mode, RedisMode::Sentinel);
        assert_eq!(redis.sentinel_master.as_deref(), Some("mymaster"));
    }

    #[test]
    fn bad_redis_values_are_refused_by_key_path() {
        let cases: &[(&str, &str)] = &[
            ("urls = []", "redis.urls"),
            ("urls = [\"http://redis01\"]", "redis.urls[0]"),
            ("urls = [\"redis://:pw@redis01\"]", "redis.urls[0]"),
            ("urls = [\"redis://a\", \"redis://b\"]", "redis.urls"),
            ("urls = [\"redis://a\"]\nmode = \"ring\"", "redis.mode"),
            ("urls = [\"redis://a\"]\nmode = \"cluster\"", "redis.mode"),
            (
                "urls = [\"redis://a\"]\nsentinel_master = \"m\"",
                "redis.sentinel_master",
            ),
            (
                "urls = [\"redis://a\"]\nca_file = \"/etc/ca.pem\"",
                "redis.ca_file",
            ),
            (
                "urls = [\"redis://a\"]\nkey_prefix = \"\"",
                "redis.key_prefix",
            ),
            (
                "urls = [\"redis://a\"]\nkey_prefix = \"gw *\"",
                "redis.key_prefix",
            ),
            (
                "urls = [\"redis://a\"]\non_unavailable = \"maybe\"",
                "redis.on_unavailable",
            ),
            (
                "urls = [\"redis://a\"]\npassword = { file = \"/missing\" }",
                "redis.password",
            ),
            ("urls = [\"redis://a\"]\nwhat = 1", "redis.what"),
        ];
        for (body, path) in cases {
            let errors = errors(body);
            assert!(
                errors.iter().any(|e| e.starts_with(path)),
                "{body:?} should be refused at {path}: {errors:?}"
            );
        }
        // The password never appears in an error.
        let errors = errors("urls = [\"redis://:hunter2@redis01\"]");
        assert!(errors.iter().all(|e| !e.contains("hunter2")), "{errors:?}");
    }
}
