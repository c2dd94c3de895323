//! Which route a request belongs to: `(Host, path)` → the value configured for the longest
//! matching path prefix on that host.
//!
//! The gateway only protects what it judges correctly. Exchange runs on IIS, which does not serve
//! the path as it arrives on the wire: http.sys percent-decodes it, turns `\` into `/`, resolves
//! `.` and `..`, and Windows ignores trailing dots and spaces in file names. If the gateway matched
//! the raw path, `/owa/..%5cews/Exchange.asmx` would be judged as part of `/owa` (open, behind
//! MFA, or even a public health check) while Exchange serves EWS, which should be closed. So every
//! request path is first normalised the way IIS will read it ([`normalize_path`]) and only then
//! compared with the routes; anything IIS could read in more than one way (double escaping,
//! `%u` escapes, malformed escapes, invalid UTF-8, control characters, climbing above the root)
//! is refused as [`RouteMatch::BadPath`] rather than guessed at.
//!
//! Paths are compared case-insensitively for ASCII, as IIS does, at segment boundaries: `/owa`
//! covers `/owa`, `/OWA/` and `/owa/x`, never `/owax`. Matching is on the hot path of every
//! request: a path that needs no rewriting is judged in place, without allocating.

use std::borrow::Cow;
use std::fmt;

/// Routes of every published host, built once per configuration snapshot and then shared
/// read-only (behind an `Arc`) by all connections.
#[derive(Debug)]
pub struct Router<T> {
    hosts: Vec<VirtualHost<T>>,
}

#[derive(Debug)]
struct VirtualHost<T> {
    /// Lower-case, without port, brackets or trailing dot.
    name: String,
    /// Longest path first, so the first match is the most specific one.
    routes: Vec<PrefixRoute<T>>,
}

#[derive(Debug)]
struct PrefixRoute<T> {
    /// The configured path without its trailing `/`; the root route `/` is stored as `""`.
    path: String,
    value: T,
}

/// The outcome of [`Router::lookup`].
#[derive(Debug, PartialEq, Eq)]
pub enum RouteMatch<'a, T> {
    Found(&'a T),
    /// Unknown host, or no route covers the path: the request never reaches Exchange.
    NotFound,
    /// The path is refused by [`normalize_path`] (on a known host).
    BadPath,
}

/// A request path that cannot be judged safely (see [`normalize_path`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadPath;

impl fmt::Display for BadPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("request path is malformed or ambiguously encoded")
    }
}

impl std::error::Error for BadPath {}

/// Two routes with the same host and path (compared as lookups compare them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DuplicateRoute {
    pub host: String,
    pub path: String,
}

impl fmt::Display for DuplicateRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "more than one route for host {:?} and path {:?}",
            self.host, self.path
        )
    }
}

impl std::error::Error for DuplicateRoute {}

impl<T> Default for Router<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Router<T> {
    pub fn new() -> Self {
        Router { hosts: Vec::new() }
    }

    /// Adds a route. `host` is a DNS name in any case (a port, trailing dot or IPv6 brackets are
    /// ignored); `path` is a literal prefix beginning with `/`, e.g. `/owa`, `/owa/healthcheck.htm`
    /// or `/`, compared case-insensitively; a trailing `/` is ignored.
    ///
    /// `path` is compared with *normalised* request paths, so it should itself be in normal form
    /// (`normalize_path(path) == Ok(path)`, which configuration validation is expected to check):
    /// a path such as `/ecp.`, `/owa//x` or `/a%2e` is stored as written and can never match.
    pub fn insert(&mut self, host: &str, path: &str, value: T) -> Result<(), DuplicateRoute> {
        let name = host_key(host).to_ascii_lowercase();
        let path_key = path.strip_suffix('/').unwrap_or(path);
        let index = match self.hosts.iter().position(|h| h.name == name) {
            Some(index) => index,
            None => {
                self.hosts.push(VirtualHost {
                    name,
                    routes: Vec::new(),
                });
                self.hosts.len() - 1
            }
        };
        // In bounds: `index` was found or pushed just above.
        let virtual_host = &mut self.hosts[index];
        if virtual_host
            .routes
            .iter()
            .any(|r| r.path.eq_ignore_ascii_case(path_key))
        {
            return Err(DuplicateRoute {
                host: virtual_host.name.clone(),
                path: path.to_owned(),
            });
        }
        let at = virtual_host
            .routes
            .partition_point(|r| r.path.len() >= path_key.len());
        virtual_host.routes.insert(
            at,
            PrefixRoute {
                path: path_key.to_owned(),
                value,
            },
        );
        Ok(())
    }

    /// Whether some route publishes `host` (the `Host` header or `:authority` as received).
    pub fn serves_host(&self, host: &str) -> bool {
        let host = host_key(host);
        self.hosts.iter().any(|h| h.name.eq_ignore_ascii_case(host))
    }

    /// Finds the route for a request. `host` is the `Host` header or `:authority` as received;
    /// `raw_path` is the request-target path as received (no query string), still
    /// percent-encoded. An unknown host is `NotFound` whatever the path.
    pub fn lookup(&self, host: &str, raw_path: &str) -> RouteMatch<'_, T> {
        let host = host_key(host);
        let Some(virtual_host) = self
            .hosts
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(host))
        else {
            return RouteMatch::NotFound;
        };
        let Ok(path) = normalize_path(raw_path) else {
            return RouteMatch::BadPath;
        };
        virtual_host
            .routes
            .iter()
            .find(|r| is_segment_prefix(&r.path, &path))
            .map_or(RouteMatch::NotFound, |r| RouteMatch::Found(&r.value))
    }
}

/// Whether `route` (no trailing `/`, `""` for the root) covers `path` (normalised) at a segment
/// boundary, ignoring ASCII case.
fn is_segment_prefix(route: &str, path: &str) -> bool {
    let (route, path) = (route.as_bytes(), path.as_bytes());
    match path.get(..route.len()) {
        Some(head) if head.eq_ignore_ascii_case(route) => {
            matches!(path.get(route.len()), None | Some(b'/'))
        }
        _ => false,
    }
}

/// The host with its port removed: `mail.contoso.com:443` → `mail.contoso.com`,
/// `[::1]:443` → `[::1]`. Case, brackets and a trailing dot are kept. A port that is not all
/// digits is not a port: such a host is returned unchanged and so matches no published name.
pub fn host_without_port(host: &str) -> &str {
    if host.starts_with('[') {
        // IPv6 literal: the port, if any, follows the closing bracket.
        return match host.find(']') {
            Some(end) => {
                let (literal, after) = host.split_at(end + 1);
                match after.strip_prefix(':') {
                    Some(port) if port.bytes().all(|b| b.is_ascii_digit()) => literal,
                    None if after.is_empty() => literal,
                    _ => host,
                }
            }
            None => host,
        };
    }
    match host.split_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

/// The form hosts are compared in: no port, no IPv6 brackets, no trailing dot (still any case).
fn host_key(host: &str) -> &str {
    let host = host_without_port(host);
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    host.strip_suffix('.').unwrap_or(host)
}

/// The path as IIS will resolve it: percent-decoded once (as UTF-8), `\` read as `/`, repeated
/// slashes collapsed, `.` segments dropped, `..` applied, trailing dots and spaces of each segment
/// removed (Windows ignores them: `/ecp.` is the ecp directory). A trailing `/` is kept.
///
/// Refused: a path not starting with `/`; a `%` not followed by two hex digits (this includes
/// IIS's `%u002e` form); invalid UTF-8 once decoded; control characters; an escape still present
/// after decoding (`%252e`, double escaping, which IIS refuses by default); `..` above the root
/// (browsers never send it: it is a probe, not a request to clamp); a segment made only of dots
/// and spaces other than `.` and `..`.
///
/// A path that needs none of this is returned borrowed, without allocating.
pub fn normalize_path(raw_path: &str) -> Result<Cow<'_, str>, BadPath> {
    let Some(after_root) = raw_path.strip_prefix('/') else {
        return Err(BadPath);
    };
    refuse_control_characters(raw_path)?;
    if is_already_normal(after_root) {
        return Ok(Cow::Borrowed(raw_path));
    }
    if raw_path.contains('%') {
        let decoded = percent_decode_once(raw_path)?;
        refuse_control_characters(&decoded)?;
        if has_escape_left(&decoded) {
            return Err(BadPath);
        }
        resolve_segments(&decoded).map(Cow::Owned)
    } else {
        resolve_segments(raw_path).map(Cow::Owned)
    }
}

/// True when [`resolve_segments`] would return the path unchanged: nothing to decode, no `\`,
/// no empty segment except a trailing `/`, no segment ending in `.` or ` ` (which covers `.`
/// and `..`).
fn is_already_normal(after_root: &str) -> bool {
    if after_root.bytes().any(|b| b == b'%' || b == b'\\') {
        return false;
    }
    let mut segments = after_root.split('/').peekable();
    while let Some(segment) = segments.next() {
        let is_last = segments.peek().is_none();
        if (segment.is_empty() && !is_last) || segment.ends_with(['.', ' ']) {
            return false;
        }
    }
    true
}

/// Applies the segment rules to a decoded path that starts with `/`.
fn resolve_segments(path: &str) -> Result<String, BadPath> {
    let mut out = String::with_capacity(path.len());
    let mut ends_with_separator = true;
    for piece in path.split(['/', '\\']) {
        match piece {
            "" | "." => ends_with_separator = true,
            ".." => {
                // Segments in `out` never contain '/', so the last '/' starts the last segment.
                let start = out.rfind('/').ok_or(BadPath)?;
                out.truncate(start);
                ends_with_separator = true;
            }
            _ => {
                let name = piece.trim_end_matches(['.', ' ']);
                if name.is_empty() {
                    // "...", ". ", " ": whether IIS reads these as "." / ".." or as a name is
                    // not worth guessing, and no client needs them.
                    return Err(BadPath);
                }
                out.push('/');
                out.push_str(name);
                ends_with_separator = false;
            }
        }
    }
    if ends_with_separator {
        out.push('/');
    }
    Ok(out)
}

fn percent_decode_once(raw: &str) -> Result<String, BadPath> {
    let mut out = Vec::with_capacity(raw.len());
    let mut bytes = raw.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let high = bytes.next().and_then(hex_value).ok_or(BadPath)?;
            let low = bytes.next().and_then(hex_value).ok_or(BadPath)?;
            out.push((high << 4) | low);
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out).map_err(|_| BadPath)
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// After one decode, a `%` followed by two hex digits or by `u` would be decoded again by
/// anything that double-decodes: refuse rather than judge one reading and serve the other.
fn has_escape_left(decoded: &str) -> bool {
    let bytes = decoded.as_bytes();
    bytes.iter().enumerate().any(|(i, &b)| {
        b == b'%'
            && match (bytes.get(i + 1), bytes.get(i + 2)) {
                (Some(b'u' | b'U'), _) => true,
                (Some(high), Some(low)) => high.is_ascii_hexdigit() && low.is_ascii_hexdigit(),
                _ => false,
            }
    })
}

/// NUL, C0 controls, DEL and C1 controls (U+0080–U+009F, encoded as `C2 80`–`C2 9F`).
fn refuse_control_characters(path: &str) -> Result<(), BadPath> {
    let bytes = path.as_bytes();
    let found = bytes.iter().enumerate().any(|(i, &b)| {
        b.is_ascii_control() || (b == 0xC2 && matches!(bytes.get(i + 1), Some(0x80..=0x9F)))
    });
    if found {
        Err(BadPath)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: &str = "mail.contoso.com";

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Vdir {
        Owa,
        OwaHealthcheck,
        Ecp,
        Ews,
        Root,
    }

    fn routes(routes: &[(&str, Vdir)]) -> Router<Vdir> {
        let mut router = Router::new();
        for &(path, vdir) in routes {
            assert_eq!(router.insert(HOST, path, vdir), Ok(()));
        }
        router
    }

    fn owa_only() -> Router<Vdir> {
        routes(&[("/owa", Vdir::Owa)])
    }

    fn exchange() -> Router<Vdir> {
        routes(&[
            ("/owa", Vdir::Owa),
            ("/owa/healthcheck.htm", Vdir::OwaHealthcheck),
            ("/ecp", Vdir::Ecp),
        ])
    }

    fn at<'r>(router: &'r Router<Vdir>, path: &str) -> RouteMatch<'r, Vdir> {
        router.lookup(HOST, path)
    }

    fn normal(path: &str) -> Result<String, BadPath> {
        normalize_path(path).map(Cow::into_owned)
    }

    const TRAVERSALS_FROM_OWA_TO_EWS: [&str; 8] = [
        "/owa/..%5cews/",
        "/owa/%2e%2e/ews",
        "/owa/..\\ews",
        "/owa/.%2e/ews",
        "/OWA/../EWS/Exchange.asmx",
        "/owa/%2e%2e%5c%2e%2e%5cews",
        "/owa/%252e%252e/ews",
        "/owa/%u002e%u002e/ews",
    ];

    #[test]
    fn host_is_matched_case_insensitively_and_without_its_port() {
        let router = owa_only();
        for host in [
            "mail.contoso.com",
            "MAIL.Contoso.COM",
            "mail.contoso.com:443",
        ] {
            assert_eq!(router.lookup(host, "/owa/"), RouteMatch::Found(&Vdir::Owa));
        }
    }

    #[test]
    fn host_with_a_trailing_dot_reaches_the_same_routes() {
        let router = owa_only();
        assert_eq!(
            router.lookup("mail.contoso.com.", "/owa"),
            RouteMatch::Found(&Vdir::Owa)
        );
        assert_eq!(
            router.lookup("Mail.Contoso.Com.:8443", "/owa"),
            RouteMatch::Found(&Vdir::Owa)
        );
    }

    #[test]
    fn ipv6_literal_host_is_matched_with_or_without_port() {
        let mut router = Router::new();
        assert_eq!(router.insert("[::1]", "/owa", 1), Ok(()));
        assert_eq!(router.insert("FE80::A", "/owa", 2), Ok(()));
        assert_eq!(router.lookup("[::1]:443", "/owa"), RouteMatch::Found(&1));
        assert_eq!(router.lookup("[::1]", "/owa"), RouteMatch::Found(&1));
        assert_eq!(
            router.lookup("[fe80::a]:443", "/owa"),
            RouteMatch::Found(&2)
        );
        assert_eq!(router.lookup("[::2]:443", "/owa"), RouteMatch::NotFound);
    }

    #[test]
    fn host_without_port_removes_only_a_numeric_port() {
        assert_eq!(
            host_without_port("mail.contoso.com:443"),
            "mail.contoso.com"
        );
        assert_eq!(host_without_port("Mail.Contoso.com."), "Mail.Contoso.com.");
        assert_eq!(host_without_port("[::1]:443"), "[::1]");
        assert_eq!(host_without_port("[::1]"), "[::1]");
        assert_eq!(host_without_port("::1"), "::1");
        assert_eq!(host_without_port("mail:evil"), "mail:evil");
        assert_eq!(host_without_port("[::1]evil"), "[::1]evil");
        assert_eq!(host_without_port("[::1"), "[::1");
    }

    #[test]
    fn unknown_or_malformed_host_gets_not_found_even_for_a_published_path() {
        let router = owa_only();
        for host in [
            "",
            "evil.example",
            "mail.contoso.com:evil",
            "mail.contoso.com..",
        ] {
            assert_eq!(router.lookup(host, "/owa"), RouteMatch::NotFound, "{host}");
        }
        assert_eq!(router.lookup("evil.example", "/%00"), RouteMatch::NotFound);
    }

    #[test]
    fn owa_route_covers_owa_and_below_but_not_owax() {
        let router = owa_only();
        for path in [
            "/owa",
            "/owa/",
            "/owa/x",
            "/owa/service.svc/s/GetFileAttachment",
        ] {
            assert_eq!(at(&router, path), RouteMatch::Found(&Vdir::Owa), "{path}");
        }
        for path in ["/owax", "/ow", "/", "/ecp/owa"] {
            assert_eq!(at(&router, path), RouteMatch::NotFound, "{path}");
        }
    }

    #[test]
    fn public_healthcheck_route_beats_owa_only_for_that_exact_path() {
        let router = exchange();
        assert_eq!(
            at(&router, "/owa/healthcheck.htm"),
            RouteMatch::Found(&Vdir::OwaHealthcheck)
        );
        assert_eq!(
            at(&router, "/OWA/HealthCheck.HTM"),
            RouteMatch::Found(&Vdir::OwaHealthcheck)
        );
        assert_eq!(
            at(&router, "/owa/healthcheck.htmx"),
            RouteMatch::Found(&Vdir::Owa)
        );
        assert_eq!(at(&router, "/owa/"), RouteMatch::Found(&Vdir::Owa));
    }

    #[test]
    fn public_healthcheck_route_cannot_be_ridden_to_reach_ecp_or_owa() {
        let router = exchange();
        assert_eq!(
            at(&router, "/owa/healthcheck.htm/..%2f..%2fecp/"),
            RouteMatch::Found(&Vdir::Ecp)
        );
        assert_eq!(
            at(&router, "/owa/healthcheck.htm/../x"),
            RouteMatch::Found(&Vdir::Owa)
        );
    }

    #[test]
    fn root_route_catches_every_path_on_its_host() {
        let router = routes(&[("/", Vdir::Root), ("/owa", Vdir::Owa)]);
        for path in [
            "/",
            "/ews/Exchange.asmx",
            "/owax",
            "/Microsoft-Server-ActiveSync",
        ] {
            assert_eq!(at(&router, path), RouteMatch::Found(&Vdir::Root), "{path}");
        }
        assert_eq!(at(&router, "/owa/x"), RouteMatch::Found(&Vdir::Owa));
    }

    #[test]
    fn path_case_does_not_matter_as_on_iis() {
        let router = exchange();
        assert_eq!(at(&router, "/OWA/"), RouteMatch::Found(&Vdir::Owa));
        assert_eq!(at(&router, "/Ecp/"), RouteMatch::Found(&Vdir::Ecp));
        let mut upper = Router::new();
        assert_eq!(upper.insert(HOST, "/OWA", ()), Ok(()));
        assert_eq!(upper.lookup(HOST, "/owa/x"), RouteMatch::Found(&()));
    }

    #[test]
    fn closed_virtual_directory_is_not_found() {
        let router = exchange();
        for path in [
            "/ews/Exchange.asmx",
            "/mapi/emsmdb",
            "/rpc/rpcproxy.dll",
            "/",
        ] {
            assert_eq!(at(&router, path), RouteMatch::NotFound, "{path}");
        }
    }

    #[test]
    fn duplicate_route_is_refused_whatever_its_case_or_trailing_slash() {
        let mut router = owa_only();
        for (host, path) in [
            (HOST, "/owa"),
            ("MAIL.contoso.com", "/OWA"),
            ("mail.contoso.com.:443", "/owa/"),
        ] {
            assert_eq!(
                router.insert(host, path, Vdir::Ews),
                Err(DuplicateRoute {
                    host: HOST.to_owned(),
                    path: path.to_owned()
                })
            );
        }
        assert_eq!(at(&router, "/owa"), RouteMatch::Found(&Vdir::Owa));
    }

    #[test]
    fn same_path_on_two_hosts_is_not_a_duplicate() {
        let mut router = owa_only();
        assert_eq!(
            router.insert("autodiscover.contoso.com", "/owa", Vdir::Ews),
            Ok(())
        );
        assert_eq!(
            router.lookup("autodiscover.contoso.com", "/owa"),
            RouteMatch::Found(&Vdir::Ews)
        );
        assert_eq!(at(&router, "/owa"), RouteMatch::Found(&Vdir::Owa));
    }

    #[test]
    fn encoded_backslash_dot_dot_cannot_reach_ews_from_owa() {
        assert_eq!(at(&owa_only(), "/owa/..%5cews/"), RouteMatch::NotFound);
        assert_eq!(normal("/owa/..%5cews/"), Ok("/ews/".to_owned()));
    }

    #[test]
    fn encoded_dot_dot_cannot_reach_ews_from_owa() {
        for path in ["/owa/%2e%2e/ews", "/owa/.%2e/ews", "/owa/%2E./ews"] {
            assert_eq!(at(&owa_only(), path), RouteMatch::NotFound, "{path}");
            assert_eq!(normal(path), Ok("/ews".to_owned()), "{path}");
        }
    }

    #[test]
    fn raw_backslash_dot_dot_cannot_reach_ews_from_owa() {
        assert_eq!(at(&owa_only(), "/owa/..\\ews"), RouteMatch::NotFound);
        assert_eq!(normal("/owa\\..\\ews\\"), Ok("/ews/".to_owned()));
    }

    #[test]
    fn upper_case_dot_dot_cannot_reach_ews_from_owa() {
        assert_eq!(
            at(&owa_only(), "/OWA/../EWS/Exchange.asmx"),
            RouteMatch::NotFound
        );
    }

    #[test]
    fn no_traversal_example_reaches_ews_from_owa() {
        let router = owa_only();
        for path in TRAVERSALS_FROM_OWA_TO_EWS {
            assert!(
                matches!(
                    at(&router, path),
                    RouteMatch::NotFound | RouteMatch::BadPath
                ),
                "{path}"
            );
        }
        let with_ews = routes(&[("/owa", Vdir::Owa), ("/ews", Vdir::Ews)]);
        for path in TRAVERSALS_FROM_OWA_TO_EWS {
            assert_ne!(at(&with_ews, path), RouteMatch::Found(&Vdir::Owa), "{path}");
        }
    }

    #[test]
    fn encoded_slash_dot_dot_is_judged_as_ews() {
        assert_eq!(at(&owa_only(), "/owa/..%2fews"), RouteMatch::NotFound);
        let with_ews = routes(&[("/owa", Vdir::Owa), ("/ews", Vdir::Ews)]);
        assert_eq!(
            at(&with_ews, "/owa/..%2fews"),
            RouteMatch::Found(&Vdir::Ews)
        );
        assert_eq!(at(&with_ews, "/owa%2fx"), RouteMatch::Found(&Vdir::Owa));
    }

    #[test]
    fn traversal_climbing_above_the_root_is_refused() {
        for path in [
            "/..",
            "/../owa",
            "/owa/../..",
            "/owa/%2e%2e%5c%2e%2e%5cews",
            "/%2e%2e/",
        ] {
            assert_eq!(normal(path), Err(BadPath), "{path}");
        }
        assert_eq!(
            at(&owa_only(), "/owa/%2e%2e%5c%2e%2e%5cews"),
            RouteMatch::BadPath
        );
    }

    #[test]
    fn dot_dot_inside_a_route_stays_on_that_route() {
        assert_eq!(normal("/owa/x/../y"), Ok("/owa/y".to_owned()));
        assert_eq!(normal("/owa/x/.."), Ok("/owa/".to_owned()));
        assert_eq!(
            at(&owa_only(), "/owa/x/../y"),
            RouteMatch::Found(&Vdir::Owa)
        );
    }

    #[test]
    fn double_escaped_dot_dot_is_refused_as_iis_does() {
        for path in ["/owa/%252e%252e/ews", "/owa/%255c", "/owa/%25%32%65"] {
            assert_eq!(normal(path), Err(BadPath), "{path}");
        }
        assert_eq!(at(&owa_only(), "/owa/%252e%252e/ews"), RouteMatch::BadPath);
    }

    #[test]
    fn iis_percent_u_escape_is_refused() {
        for path in ["/owa/%u002e%u002e/ews", "/owa/%U002E", "/owa/%25u002e"] {
            assert_eq!(normal(path), Err(BadPath), "{path}");
        }
    }

    #[test]
    fn malformed_percent_escape_is_refused() {
        for path in ["/owa/%", "/owa/%2", "/owa/%zz", "/owa/%2g"] {
            assert_eq!(normal(path), Err(BadPath), "{path}");
        }
    }

    #[test]
    fn decoded_percent_sign_that_is_not_an_escape_is_kept() {
        assert_eq!(normal("/owa/100%25off"), Ok("/owa/100%off".to_owned()));
        assert_eq!(
            at(&owa_only(), "/owa/100%25off"),
            RouteMatch::Found(&Vdir::Owa)
        );
    }

    #[test]
    fn nul_and_control_characters_are_refused_raw_or_encoded() {
        for path in [
            "/owa/\0",
            "/owa/%00",
            "/owa/%0d%0a",
            "/owa/\t",
            "/owa/%7f",
            "/owa/%c2%85",
            "/owa/\u{85}",
        ] {
            assert_eq!(normal(path), Err(BadPath), "{path:?}");
        }
        assert_eq!(at(&owa_only(), "/owa%00/x"), RouteMatch::BadPath);
    }

    #[test]
    fn invalid_or_overlong_utf8_is_refused() {
        for path in [
            "/owa/%ff",
            "/owa/%c3",
            "/owa/%c0%ae%c0%ae/ews",
            "/owa/%ed%a0%80",
        ] {
            assert_eq!(normal(path), Err(BadPath), "{path}");
        }
    }

    #[test]
    fn path_not_starting_with_a_slash_is_refused() {
        for path in [
            "",
            "owa",
            "*",
            "%2fowa",
            "\\owa",
            "https://mail.contoso.com/owa",
        ] {
            assert_eq!(normal(path), Err(BadPath), "{path}");
        }
        assert_eq!(at(&owa_only(), "owa"), RouteMatch::BadPath);
    }

    #[test]
    fn single_dots_and_repeated_slashes_are_ignored() {
        assert_eq!(normal("//owa"), Ok("/owa".to_owned()));
        assert_eq!(normal("/./owa/./x"), Ok("/owa/x".to_owned()));
        assert_eq!(normal("/owa//x///"), Ok("/owa/x/".to_owned()));
        assert_eq!(normal("/."), Ok("/".to_owned()));
        assert_eq!(at(&owa_only(), "//owa//x"), RouteMatch::Found(&Vdir::Owa));
    }

    #[test]
    fn trailing_dot_or_space_reaches_the_ecp_directory() {
        let router = routes(&[("/", Vdir::Root), ("/ecp", Vdir::Ecp)]);
        for path in ["/ecp.", "/ecp./", "/ecp%20/", "/ecp. .%20/x", "/ECP%2e"] {
            assert_eq!(at(&router, path), RouteMatch::Found(&Vdir::Ecp), "{path}");
        }
        assert_eq!(
            normal("/owa/healthcheck.htm."),
            Ok("/owa/healthcheck.htm".to_owned())
        );
    }

    #[test]
    fn segment_made_only_of_dots_or_spaces_is_refused() {
        for path in [
            "/owa/.../ews",
            "/owa/.. /ews",
            "/owa/%20/x",
            "/owa/. ",
            "/owa/..%20",
        ] {
            assert_eq!(normal(path), Err(BadPath), "{path}");
        }
    }

    #[test]
    fn non_ascii_path_is_decoded_and_routed() {
        assert_eq!(normal("/owa/%C3%BC"), Ok("/owa/ü".to_owned()));
        assert_eq!(
            at(&owa_only(), "/owa/%C3%BC"),
            RouteMatch::Found(&Vdir::Owa)
        );
        assert_eq!(at(&owa_only(), "/owa/ü"), RouteMatch::Found(&Vdir::Owa));
        let mut router = Router::new();
        assert_eq!(router.insert(HOST, "/öffentlich", ()), Ok(()));
        assert_eq!(
            router.lookup(HOST, "/%C3%B6ffentlich/x"),
            RouteMatch::Found(&())
        );
        assert_eq!(router.lookup(HOST, "/ÖFFENTLICH"), RouteMatch::NotFound);
    }

    #[test]
    fn clean_path_is_judged_without_copying() {
        for path in [
            "/",
            "/owa",
            "/owa/",
            "/OWA/healthcheck.htm",
            "/owa/x.y/z",
            "/owa/ü",
        ] {
            assert!(
                matches!(normalize_path(path), Ok(Cow::Borrowed(p)) if p == path),
                "{path}"
            );
        }
    }

    /// xorshift64: deterministic, no dependency.
    struct Xorshift(u64);

    impl Xorshift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn pick<'a>(&mut self, from: &'a [u8]) -> &'a u8 {
            &from[(self.next() % from.len() as u64) as usize]
        }
    }

    #[test]
    fn random_bytes_never_panic_and_normalise_to_a_clean_path() {
        const PATH_BYTES: &[u8] =
            b"//\\\\..%%%2e5cCfF0u aAoOwW\0\x7f\xc2\x85\xc3\xbc\xff\xc0\xae\xed\xa0";
        const HOST_BYTES: &[u8] = b"[]::..1aAmM\xc3\xbc\0";
        let router = exchange();
        let mut rng = Xorshift(0x9E37_79B9_7F4A_7C15);
        for _ in 0..5000 {
            let len = rng.next() % 24;
            let mut raw: Vec<u8> = (0..len).map(|_| *rng.pick(PATH_BYTES)).collect();
            if rng.next() & 3 != 0 {
                raw.insert(0, b'/');
            }
            let path = String::from_utf8_lossy(&raw);
            let host: Vec<u8> = (0..rng.next() % 8).map(|_| *rng.pick(HOST_BYTES)).collect();
            let _ = router.lookup(&String::from_utf8_lossy(&host), &path);
            let _ = router.lookup(HOST, &path);

            let Ok(normalised) = normalize_path(&path) else {
                continue;
            };
            assert!(normalised.starts_with('/'), "{path:?} → {normalised:?}");
            assert!(!normalised.contains('\\'), "{path:?} → {normalised:?}");
            assert!(!normalised.chars().any(char::is_control), "{path:?}");
            let segments: Vec<&str> = normalised[1..].split('/').collect();
            for (i, segment) in segments.iter().enumerate() {
                let is_last = i + 1 == segments.len();
                assert!(!segment.is_empty() || is_last, "{path:?} → {normalised:?}");
                assert!(!segment.ends_with(['.', ' ']), "{path:?} → {normalised:?}");
            }
            if !normalised.contains('%') {
                // Normal form is a fixed point, and the no-copy path agrees with the full one.
                assert_eq!(normalize_path(&normalised), Ok(Cow::Borrowed(&*normalised)));
            }
            if !path.contains('%') {
                assert_eq!(resolve_segments(&path).as_deref(), Ok(&*normalised));
            }
        }
    }
}
