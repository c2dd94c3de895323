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

mod normalize;
#[cfg(test)]
mod tests;

use std::fmt;

pub use normalize::{normalize_path, BadPath};

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
