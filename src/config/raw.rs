//! The configuration file as written: serde types with unknown keys refused, values kept with
//! their position ([`Spanned`]) so that validation can name the line of a bad value.
//!
//! Each section, each upstream and each route is deserialised on its own, so that one run of
//! `check-config` lists every structural problem (syntax, unknown key, wrong type, missing key)
//! in the file, not only the first one serde meets.

use std::fmt;

use serde::de::{self, DeserializeOwned, Deserializer, Visitor};
use serde::Deserialize;
use toml::de::{DeTable, DeValue, ValueDeserializer};
use toml::Spanned;

use super::error::{ConfigError, ConfigErrors, Lines};
use super::secret::SecretSource;

pub(crate) type Text = Spanned<String>;

/// The whole file. Built by [`parse`], section by section.
#[derive(Debug, Default)]
pub(crate) struct RawConfig {
    pub server: Option<Spanned<RawServer>>,
    pub tls: RawTls,
    /// `[upstreams.<name>]`, with the name as written (and where).
    pub upstreams: Vec<(Text, Spanned<RawUpstream>)>,
    /// `None` when the file has no `[[routes]]` at all.
    pub routes: Option<Vec<Spanned<RawRoute>>>,
    pub oidc: Option<Spanned<RawOidc>>,
    pub mfa: Option<Spanned<RawMfa>>,
    pub session: Option<Spanned<RawSession>>,
    pub sso: Option<Spanned<RawSso>>,
    pub redis: Option<Spanned<RawRedis>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawServer {
    pub https_listen: Option<Text>,
    pub http_listen: Option<Text>,
    pub admin_listen: Option<Text>,
    #[serde(default)]
    pub trusted_proxies: Vec<Text>,
    pub shutdown_grace: Option<Text>,
    pub max_connections: Option<Spanned<i64>>,
    pub header_read_timeout: Option<Text>,
    pub max_header_bytes: Option<Spanned<i64>>,
    pub request_body_timeout: Option<Text>,
    pub workers: Option<Spanned<i64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTls {
    #[serde(default)]
    pub certificates: Vec<Spanned<RawCertificate>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCertificate {
    pub cert: Text,
    pub key: Text,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawUpstream {
    pub servers: Spanned<Vec<Text>>,
    pub ca_file: Option<Text>,
    pub tls_server_name: Option<Text>,
    pub health_check: Option<Spanned<RawHealthCheck>>,
    pub connect_timeout: Option<Text>,
    pub idle_timeout: Option<Text>,
    pub max_request_body: Option<Spanned<RawSize>>,
    /// The service principal name Exchange's Windows authentication answers to, for
    /// `sso = "kerberos"` routes.
    pub kerberos_spn: Option<Text>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHealthCheck {
    pub path: Text,
    pub interval: Option<Text>,
    pub timeout: Option<Text>,
    pub unhealthy_threshold: Option<Spanned<i64>>,
    pub healthy_threshold: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRoute {
    pub host: Text,
    pub path: Text,
    pub upstream: Text,
    /// Kept as text so validation can list the accepted values.
    pub access: Text,
    /// The keys below apply to `access = "mfa"` only; validation refuses them elsewhere.
    pub unauthenticated_status: Option<Spanned<i64>>,
    pub max_auth_age: Option<Text>,
    pub acrs_any_of: Option<Spanned<Vec<Text>>>,
    pub groups_any_of: Option<Spanned<Vec<Text>>>,
    /// Requests that do not count as activity for the idle timeout, beyond Exchange's list.
    pub background_requests: Option<Spanned<Vec<Text>>>,
    /// WebSocket upgrades forwarded on this route; off unless the route says so.
    pub websocket: Option<Spanned<bool>>,
    /// How Exchange signs the user in after MFA; kept as text so validation can list the
    /// accepted values.
    pub sso: Option<Text>,
    /// Source networks (after `trusted_proxies`) this route answers; absent: every address.
    pub allow_from: Option<Spanned<Vec<Text>>>,
    /// Exchange's forms logon (`auth.owa`) only for the signed-in user; on by default where
    /// it applies.
    pub bind_forms_logon: Option<Spanned<bool>>,
}

/// `[oidc]`. Choices (`response_mode`, `client_secret_method`) are kept as text so validation
/// can list the accepted values.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawOidc {
    pub issuer: Text,
    pub client_id: Text,
    pub client_secret: Option<Spanned<SecretSource>>,
    pub client_certificate: Option<Spanned<RawCertificate>>,
    pub client_secret_method: Option<Text>,
    pub scopes: Option<Spanned<Vec<Text>>>,
    pub allowed_tenants: Option<Spanned<Vec<Text>>>,
    pub clock_skew: Option<Text>,
    pub discovery_url: Option<Text>,
    pub response_mode: Option<Text>,
    pub login_timeout: Option<Text>,
    /// The ID-token claim carrying the on-premises account name (sAMAccountName).
    pub account_name_claim: Option<Text>,
    /// Domain names accepted in `DOMAIN\name` form in Exchange's forms logon.
    pub account_domains: Option<Spanned<Vec<Text>>>,
}

/// `[mfa]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMfa {
    pub amr_any_of: Option<Spanned<Vec<Text>>>,
    pub acrs_any_of: Option<Spanned<Vec<Text>>>,
    pub max_auth_age: Option<Text>,
}

/// `[session]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSession {
    pub cookie_name: Option<Text>,
    pub keys: Spanned<Vec<Spanned<SecretSource>>>,
    pub lifetime: Option<Text>,
    pub idle_timeout: Option<Text>,
}

/// `[redis]`. Choices are kept as text so validation can list the accepted values.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRedis {
    pub urls: Spanned<Vec<Text>>,
    pub mode: Option<Text>,
    pub sentinel_master: Option<Text>,
    pub password: Option<Spanned<SecretSource>>,
    pub ca_file: Option<Text>,
    pub key_prefix: Option<Text>,
    pub on_unavailable: Option<Text>,
}

/// `[sso]`: single sign-on into Exchange, one table per mode.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSso {
    pub adfs: Option<Spanned<RawAdfs>>,
    pub kerberos: Option<Spanned<RawKerberos>>,
}

/// `[sso.kerberos]`. `user` is kept as text so validation can list the accepted values.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawKerberos {
    pub realm: Text,
    pub kdc: Option<Spanned<Vec<Text>>>,
    pub principal: Text,
    pub keytab: Spanned<SecretSource>,
    pub user: Option<Text>,
    pub ticket_lifetime: Option<Text>,
}

/// `[sso.adfs]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAdfs {
    pub token_signing: Spanned<RawSigningList>,
    pub token_lifetime: Option<Text>,
    pub issuer_name: Option<Text>,
}

/// `token_signing`: one `{ cert, key }`, or a list of them for a certificate rollover (the
/// first signs).
#[derive(Debug)]
pub(crate) enum RawSigningList {
    One(RawCertificate),
    Many(Vec<Spanned<RawCertificate>>),
}

impl<'de> Deserialize<'de> for RawSigningList {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ListVisitor;
        impl<'de> Visitor<'de> for ListVisitor {
            type Value = RawSigningList;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("{ cert = \"…\", key = \"…\" }, or a list of them")
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<RawSigningList, A::Error> {
                RawCertificate::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(RawSigningList::One)
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, seq: A) -> Result<RawSigningList, A::Error> {
                Vec::deserialize(de::value::SeqAccessDeserializer::new(seq))
                    .map(RawSigningList::Many)
            }
        }
        deserializer.deserialize_any(ListVisitor)
    }
}

/// A size: an integer number of bytes, or text such as `"128MiB"` (checked by validation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RawSize {
    Bytes(i64),
    Text(String),
}

impl<'de> Deserialize<'de> for RawSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SizeVisitor;
        impl Visitor<'_> for SizeVisitor {
            type Value = RawSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number of bytes or a size such as \"128MiB\"")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawSize, E> {
                Ok(RawSize::Bytes(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawSize, E> {
                i64::try_from(v)
                    .map(RawSize::Bytes)
                    .map_err(|_| E::custom("size is too large"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawSize, E> {
                Ok(RawSize::Text(v.to_owned()))
            }
        }
        deserializer.deserialize_any(SizeVisitor)
    }
}

const SECTIONS: &str = "server, tls, upstreams, routes, oidc, mfa, session, sso, redis";

/// Parses the text into [`RawConfig`], or returns every structural error found.
pub(crate) fn parse(text: &str) -> Result<RawConfig, ConfigErrors> {
    let (doc, syntax_errors) = DeTable::parse_recoverable(text);
    let lines = Lines::new(text);
    if !syntax_errors.is_empty() {
        let errors = syntax_errors
            .iter()
            .map(|e| {
                let line = e.span().map(|s| lines.at(s.start));
                ConfigError::new("", e.message().trim_end().to_owned()).with_line(line)
            })
            .collect();
        return Err(ConfigErrors(errors));
    }
    let doc = doc.into_inner();

    let mut parser = SectionParser {
        lines: &lines,
        doc: &doc,
        errors: Vec::new(),
    };
    let mut raw = RawConfig::default();
    for (key, value) in doc.iter() {
        let name: &str = key.get_ref();
        match name {
            "server" => raw.server = parser.table_item(value, "server"),
            "tls" => {
                raw.tls = parser
                    .table_item(value, "tls")
                    .map(Spanned::into_inner)
                    .unwrap_or_default()
            }
            "oidc" => raw.oidc = parser.table_item(value, "oidc"),
            "mfa" => raw.mfa = parser.table_item(value, "mfa"),
            "session" => raw.session = parser.table_item(value, "session"),
            "sso" => raw.sso = parser.table_item(value, "sso"),
            "redis" => raw.redis = parser.table_item(value, "redis"),
            "upstreams" => raw.upstreams = parser.upstreams(value),
            "routes" => raw.routes = Some(parser.routes(value)),
            other => parser.errors.push(
                ConfigError::new(
                    key_path("", other),
                    format!("unknown section; expected one of {SECTIONS}"),
                )
                .with_line(Some(lines.at(key.span().start))),
            ),
        }
    }
    raw.upstreams
        .sort_by(|a, b| a.0.get_ref().cmp(b.0.get_ref()));

    if parser.errors.is_empty() {
        Ok(raw)
    } else {
        let mut errors = parser.errors;
        errors.sort_by_key(|e| e.line.unwrap_or(0));
        Err(ConfigErrors(errors))
    }
}

struct SectionParser<'t, 'd> {
    lines: &'d Lines,
    doc: &'d DeTable<'t>,
    errors: Vec<ConfigError>,
}

impl SectionParser<'_, '_> {
    fn upstreams(&mut self, value: &Spanned<DeValue<'_>>) -> Vec<(Text, Spanned<RawUpstream>)> {
        let DeValue::Table(table) = value.get_ref() else {
            self.refuse(
                value,
                "upstreams",
                "write each upstream as a table [upstreams.<name>]",
            );
            return Vec::new();
        };
        let mut upstreams = Vec::new();
        for (name, upstream) in table.iter() {
            let path = key_path("upstreams", name.get_ref());
            if let Some(parsed) = self.table_item(upstream, &path) {
                let name = Spanned::new(name.span(), name.get_ref().to_string());
                upstreams.push((name, parsed));
            }
        }
        upstreams
    }

    fn routes(&mut self, value: &Spanned<DeValue<'_>>) -> Vec<Spanned<RawRoute>> {
        let DeValue::Array(items) = value.get_ref() else {
            self.refuse(value, "routes", "write each route as a table [[routes]]");
            return Vec::new();
        };
        let mut routes = Vec::new();
        for (i, item) in items.iter().enumerate() {
            if let Some(route) = self.table_item(item, &format!("routes[{i}]")) {
                routes.push(route);
            }
        }
        routes
    }

    /// Deserialises one table of the document, recording any error with its key path and line.
    fn table_item<T: DeserializeOwned>(
        &mut self,
        value: &Spanned<DeValue<'_>>,
        path: &str,
    ) -> Option<Spanned<T>> {
        if !matches!(value.get_ref(), DeValue::Table(_)) {
            self.refuse(value, path, "must be a table");
            return None;
        }
        let span = value.span();
        match T::deserialize(ValueDeserializer::from(value.clone())) {
            Ok(parsed) => Some(Spanned::new(span, parsed)),
            Err(e) => {
                self.errors.push(self.error_from_toml(&e, path));
                None
            }
        }
    }

    fn refuse(&mut self, value: &Spanned<DeValue<'_>>, path: &str, message: &str) {
        let line = self.lines.at(value.span().start);
        self.errors
            .push(ConfigError::new(path, message).with_line(Some(line)));
    }

    /// Turns a serde error into one that names the key path and line, in the words of this file
    /// ("key", not "field").
    fn error_from_toml(&self, e: &toml::de::Error, fallback_path: &str) -> ConfigError {
        let offset = e.span().map(|s| s.start);
        let mut path = offset
            .and_then(|o| locate_in_table(self.doc, o, ""))
            .filter(|p| p.starts_with(fallback_path))
            .unwrap_or_else(|| fallback_path.to_owned());
        let message = e.message().trim_end();
        let message = if let Some(rest) = message.strip_prefix("missing field `") {
            let key = rest.trim_end_matches('`');
            path = key_path(&path, key);
            "is required but missing".to_owned()
        } else if let Some(rest) = message.strip_prefix("unknown field ") {
            format!(
                "unknown key {}",
                rest.replacen(", expected", "; expected", 1)
            )
        } else {
            message.to_owned()
        };
        ConfigError::new(path, message).with_line(offset.map(|o| self.lines.at(o)))
    }
}

/// `prefix.key`, quoting keys that are not bare TOML keys.
pub(crate) fn key_path(prefix: &str, key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    let key = if bare {
        key.to_owned()
    } else {
        format!("{key:?}")
    };
    if prefix.is_empty() {
        key
    } else {
        format!("{prefix}.{key}")
    }
}

/// The deepest key path whose key or value covers byte `offset` of the document.
fn locate_in_table(table: &DeTable<'_>, offset: usize, prefix: &str) -> Option<String> {
    for (key, value) in table.iter() {
        let path = key_path(prefix, key.get_ref());
        if let Some(found) = locate_value(value, offset, &path) {
            return Some(found);
        }
        if covers(key.span(), offset) {
            return Some(path);
        }
    }
    None
}

fn locate_value(value: &Spanned<DeValue<'_>>, offset: usize, path: &str) -> Option<String> {
    match value.get_ref() {
        DeValue::Table(table) => {
            if let Some(found) = locate_in_table(table, offset, path) {
                return Some(found);
            }
        }
        DeValue::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                if let Some(found) = locate_value(item, offset, &format!("{path}[{i}]")) {
                    return Some(found);
                }
            }
        }
        _ => {}
    }
    covers(value.span(), offset).then(|| path.to_owned())
}

fn covers(span: std::ops::Range<usize>, offset: usize) -> bool {
    span.contains(&offset) || (span.is_empty() && span.start == offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<String> {
        match parse(text) {
            Ok(_) => Vec::new(),
            Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn unknown_key_is_refused_with_its_path_and_line() {
        let text = "[server]\nhttp_listen = \"127.0.0.1:8080\"\nhttp_listn = \"x\"\n";
        let errors = errors(text);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].starts_with("server.http_listn (line 3): unknown key `http_listn`"),
            "{errors:?}"
        );
    }

    #[test]
    fn unknown_section_is_refused() {
        let errors = errors("[servers]\nhttp_listen = \"127.0.0.1:8080\"\n");
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].starts_with("servers (line 1): unknown section"),
            "{errors:?}"
        );
    }

    #[test]
    fn value_of_the_wrong_type_is_refused_with_its_path_and_line() {
        let text = "[server]\nhttp_listen = \"127.0.0.1:8080\"\nmax_connections = \"many\"\n";
        let errors = errors(text);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].starts_with("server.max_connections (line 3): invalid type"),
            "{errors:?}"
        );
    }

    #[test]
    fn workers_that_is_not_an_integer_is_refused_with_its_path_and_line() {
        let errors = errors("[server]\nhttp_listen = \"127.0.0.1:8080\"\nworkers = \"auto\"\n");
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].starts_with("server.workers (line 3): invalid type"),
            "{errors:?}"
        );
    }

    #[test]
    fn syntax_error_is_reported_with_its_line() {
        let errors = errors("[server]\nhttp_listen = \"127.0.0.1:8080\n");
        assert!(!errors.is_empty());
        assert!(errors[0].starts_with("line 2: "), "{errors:?}");
    }

    #[test]
    fn missing_route_key_is_reported_under_the_route() {
        let text = "[[routes]]\nhost = \"a\"\npath = \"/\"\nupstream = \"u\"\naccess = \"public\"\n\n[[routes]]\nhost = \"a\"\npath = \"/owa\"\nupstream = \"u\"\n";
        let errors = errors(text);
        assert_eq!(
            errors,
            vec!["routes[1].access (line 7): is required but missing".to_owned()]
        );
    }

    #[test]
    fn structural_errors_in_several_places_are_all_reported() {
        let text = r#"
[server]
http_listen = "127.0.0.1:8080"
colour = "blue"

[upstreams.exchange]
servers = ["http://127.0.0.1:8081"]
health_check = { path = "/owa/healthcheck.htm", intreval = "5s" }

[[routes]]
host = "localhost"
path = "/owa"
upstream = "exchange"
access = "public"
acess = "public"
"#;
        let errors = errors(text);
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(
            errors[0].starts_with("server.colour (line 4)"),
            "{errors:?}"
        );
        assert!(
            errors[1].starts_with("upstreams.exchange.health_check.intreval (line 8)"),
            "{errors:?}"
        );
        assert!(
            errors[2].starts_with("routes[0].acess (line 15)"),
            "{errors:?}"
        );
    }

    #[test]
    fn size_is_accepted_as_a_number_or_as_text() {
        let text = r#"
[upstreams.a]
servers = ["http://a"]
max_request_body = 1024
[upstreams.b]
servers = ["http://b"]
max_request_body = "64MB"
"#;
        let raw = parse(text).unwrap();
        let sizes: Vec<_> = raw
            .upstreams
            .iter()
            .map(|(_, u)| {
                u.get_ref()
                    .max_request_body
                    .as_ref()
                    .unwrap()
                    .get_ref()
                    .clone()
            })
            .collect();
        assert_eq!(
            sizes,
            vec![RawSize::Bytes(1024), RawSize::Text("64MB".into())]
        );
    }

    #[test]
    fn routes_written_as_a_single_table_are_refused() {
        let errors = errors("[routes]\nhost = \"a\"\n");
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].contains("[[routes]]"), "{errors:?}");
    }

    #[test]
    fn misspelt_key_in_a_sign_in_section_is_refused_with_its_path() {
        let text = "[oidc]\nissuer = \"https://sts.windows.net/t/\"\ncliend_id = \"x\"\n\n[session]\nkeys = []\nidle = \"1h\"\n\n[mfa]\namr = [\"mfa\"]\n";
        let errors = errors(text);
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(
            errors[0].starts_with("oidc.cliend_id (line 3): unknown key `cliend_id`"),
            "{errors:?}"
        );
        assert!(errors[1].starts_with("session.idle (line 7)"), "{errors:?}");
        assert!(errors[2].starts_with("mfa.amr (line 10)"), "{errors:?}");
    }

    #[test]
    fn client_secret_written_as_a_plain_string_is_refused_without_echoing_it() {
        let text = "[oidc]\nissuer = \"https://sts.windows.net/t/\"\nclient_id = \"x\"\nclient_secret = \"hunter2\"\n";
        let errors = errors(text);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].starts_with("oidc.client_secret (line 4)"),
            "{errors:?}"
        );
        assert!(errors[0].contains("not a plain string"), "{errors:?}");
        assert!(!errors[0].contains("hunter2"), "{errors:?}");
    }

    #[test]
    fn route_policy_value_of_the_wrong_type_is_refused() {
        let text = "[[routes]]\nhost = \"a\"\npath = \"/\"\nupstream = \"u\"\naccess = \"mfa\"\nunauthenticated_status = \"440\"\n";
        let errors = errors(text);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].starts_with("routes[0].unauthenticated_status (line 6): invalid type"),
            "{errors:?}"
        );
    }
}
