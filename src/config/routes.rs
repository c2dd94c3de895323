//! `[[routes]]`: which (host, path prefix) is published, to which upstream, under which access
//! rule. Anything no route matches gets 404 and never reaches Exchange.

use std::collections::{BTreeSet, HashMap};
use std::net::Ipv6Addr;
use std::time::Duration;

use http::StatusCode;
use ipnet::IpNet;
use rustls_pki_types::ServerName;
use toml::Spanned;

use super::error::ConfigError;
use super::raw::{key_path, RawRoute, RawUpstream, Text};
use super::sign_in::SignInSections;
use super::sso::{Sso, SsoConfig};
use super::upstreams::{UpstreamConfig, UpstreamId};
use super::validate::Checker;
use crate::activity::BackgroundRequest;
use crate::session::Guid;

/// One `[[routes]]` entry. Requests match on host (without port, any case) and the longest
/// path prefix at a segment boundary, after IIS-like normalisation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteConfig {
    /// `host`, lower-cased, without port or trailing dot.
    pub host: String,
    /// `path`: the prefix as written, starting with `/`, without a trailing `/` (except the root
    /// `/`), already in the form requests are normalised to.
    pub path: String,
    /// `upstream`: the entry of [`Config::upstreams`](super::Config::upstreams) requests go to.
    pub upstream: UpstreamId,
    /// `access`: `mfa`, `public` or `deny`.
    pub access: Access,
    /// Extension `unauthenticated_status`, `access = "mfa"` only: the status for a request
    /// without a session that is not a top-level navigation (XHR, `fetch`, non-GET): 401 by
    /// default; OWA's script treats 440 as "session expired".
    pub unauthenticated_status: StatusCode,
    /// `max_auth_age`, `access = "mfa"` only: stricter than `[mfa].max_auth_age` for this route
    /// (step-up by signing in again).
    pub max_auth_age: Option<Duration>,
    /// `acrs_any_of`, `access = "mfa"` only: stricter MFA for this route, an `acrs`
    /// authentication context to request and require.
    pub acrs_any_of: Vec<String>,
    /// `groups_any_of`, `access = "mfa"` only: Entra group object ids; the session must carry
    /// one of them.
    pub groups_any_of: Vec<Guid>,
    /// Extension `background_requests`, `access = "mfa"` only: requests that do not move the
    /// idle timeout, in addition to Exchange's list ([`crate::activity`]).
    pub background_requests: Vec<BackgroundRequest>,
    /// Extension `websocket`: forward WebSocket upgrades (`Upgrade: websocket`) on this route.
    /// Off by default: any other upgrade (`h2c`) is never forwarded, and neither is this one
    /// elsewhere.
    pub websocket: bool,
    /// Extension `sso`: how Exchange signs the user in behind this route; `adfs` and
    /// `kerberos` only on `access = "mfa"` routes, with their `[sso.*]` section present
    /// (`kerberos` also only to `https://` upstreams).
    pub sso: Sso,
    /// Extension `allow_from`: the source networks this route answers, judged on the client
    /// address after `server.trusted_proxies`; `None` (the key absent) answers every address.
    /// Others get 403 before anything else is decided, sign-in included.
    pub allow_from: Option<Vec<IpNet>>,
    /// Extension `bind_forms_logon`: Exchange's forms logon (a POST to `auth.owa`) is forwarded
    /// only when its `username` names the signed-in user. On by default for `access = "mfa"`
    /// routes with `sso = "none"`.
    pub bind_forms_logon: bool,
}

/// `routes[].access`: what a request must have to pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// `"mfa"`: a session from a sign-in at Entra ID with multifactor authentication.
    Mfa,
    /// `"public"`: nothing (Exchange's own health checks, hybrid endpoints).
    Public,
    /// `"deny"`: 403, always.
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

impl Checker {
    pub(super) fn routes(
        &mut self,
        routes: Option<&[Spanned<RawRoute>]>,
        upstreams: &[(Text, Spanned<RawUpstream>)],
        parsed: &[UpstreamConfig],
        sign_in: &SignInSections<'_>,
        sso: &SsoConfig,
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
        let mut used: BTreeSet<usize> = BTreeSet::new();
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

            // `upstreams` is in the order of `Config::upstreams`, so a position here is the
            // route's `UpstreamId`.
            let name = route.upstream.get_ref();
            let upstream = names.iter().position(|n| *n == name.as_str());
            if let Some(index) = upstream {
                used.insert(index);
            } else {
                let known = if names.is_empty() {
                    "no [upstreams.<name>] is defined".to_owned()
                } else {
                    format!("known upstreams: {}", names.join(", "))
                };
                self.error(
                    format!("{path}.upstream"),
                    &route.upstream,
                    format!("no upstream named {name:?}; {known}"),
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
            let route_sso = self.route_sso(
                &path,
                route,
                access,
                sso,
                upstream.and_then(|index| parsed.get(index)),
            );
            let allow_from = self.route_allow_from(&path, route);
            let bind_forms_logon = self.route_bind_forms_logon(&path, route, access, route_sso);

            if let (Some(host), Some(path), Some(upstream), Some(access)) =
                (host, prefix, upstream, access)
            {
                out.push(RouteConfig {
                    host,
                    path,
                    upstream: UpstreamId::new(upstream),
                    access,
                    unauthenticated_status: policy.unauthenticated_status,
                    max_auth_age: policy.max_auth_age,
                    acrs_any_of: policy.acrs_any_of,
                    groups_any_of: policy.groups_any_of,
                    background_requests: policy.background_requests,
                    websocket: route.websocket.as_ref().is_some_and(|w| *w.get_ref()),
                    sso: route_sso,
                    allow_from,
                    bind_forms_logon,
                });
            }
        }

        for (index, (name, _)) in upstreams.iter().enumerate() {
            if !used.contains(&index) {
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

#[cfg(test)]
mod tests {
    use crate::config::test_support::*;
    use crate::config::{Access, Config};

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
    fn route_leads_to_the_upstream_it_names_whatever_the_order_of_the_upstreams() {
        let text = format!(
            "[server]\nhttp_listen = \"127.0.0.1:8080\"\n[upstreams.zeta]\nservers = [\"http://z\"]\n[upstreams.alpha]\nservers = [\"http://a\"]\n{}{}",
            ROUTE.replace("exchange", "zeta"),
            ROUTE.replace("exchange", "alpha").replace("/owa", "/ecp"),
        );
        let config = load(&text).unwrap();
        let upstream_of = |route: usize| {
            let index = config.routes[route].upstream.index();
            config.upstreams[index].name.as_str()
        };
        assert_eq!((upstream_of(0), upstream_of(1)), ("zeta", "alpha"));
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
}
