//! Request paths and hosts as they arrive on the wire, against a router publishing OWA, ECP,
//! their health checks and EWS's hybrid endpoint.
//!
//! Input: `host\npath`, or just `path` for the published host.
//!
//! What must hold for any path IIS could be sent:
//! - a normalised path starts with `/`, has no `.`/`..` segment, no `\`, no `//`, no control
//!   character, no segment ending in a dot or a space, and no escape left to decode;
//! - normalising it again changes nothing (when it still contains a `%`, which only a decoded
//!   `%25` can leave, the second reading is refused instead: never a different path);
//! - the route found is the longest configured prefix of the normalised path at a segment
//!   boundary, so `/owa/..%5cews/` is judged as `/ews/`, never as `/owa`;
//! - the host is matched without case, port or trailing dot.

#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use mfa_gateway::routing::{host_without_port, normalize_path, RouteMatch, Router};

const HOST: &str = "mail.contoso.com";

/// The published prefixes, as configuration writes them.
const ROUTES: [&str; 6] = [
    "/owa",
    "/owa/healthcheck.htm",
    "/ecp",
    "/ecp/healthcheck.htm",
    "/ews/exchange.asmx/wssecurity",
    "/Microsoft-Server-ActiveSync",
];

static ROUTER: LazyLock<Router<usize>> = LazyLock::new(|| {
    let mut router = Router::new();
    for (index, path) in ROUTES.iter().enumerate() {
        router.insert(HOST, path, index).expect("distinct routes");
    }
    router
        .insert("autodiscover.contoso.com", "/", ROUTES.len())
        .expect("distinct routes");
    router
});

fn is_segment_prefix(route: &str, path: &str) -> bool {
    let (route, path) = (route.as_bytes(), path.as_bytes());
    path.len() >= route.len()
        && path[..route.len()].eq_ignore_ascii_case(route)
        && matches!(path.get(route.len()), None | Some(b'/'))
}

/// The longest route of `HOST` covering `path`, computed independently of the router.
fn expected_route(path: &str) -> Option<usize> {
    ROUTES
        .iter()
        .enumerate()
        .filter(|(_, route)| is_segment_prefix(route, path))
        .max_by_key(|(_, route)| route.len())
        .map(|(index, _)| index)
}

fn check_normal_form(raw: &str, normal: &str) {
    assert!(normal.starts_with('/'), "{raw:?} -> {normal:?}");
    assert!(!normal.contains('\\'), "{raw:?} -> {normal:?}");
    assert!(!normal.contains("//"), "{raw:?} -> {normal:?}");
    assert!(
        !normal.chars().any(char::is_control),
        "control character left: {raw:?} -> {normal:?}"
    );
    let bytes = normal.as_bytes();
    for (i, _) in normal.match_indices('%') {
        let escape = match (bytes.get(i + 1), bytes.get(i + 2)) {
            (Some(b'u' | b'U'), _) => true,
            (Some(high), Some(low)) => high.is_ascii_hexdigit() && low.is_ascii_hexdigit(),
            _ => false,
        };
        assert!(
            !escape,
            "a second decoding would change {normal:?} (from {raw:?})"
        );
    }
    let segments = normal[1..].split('/');
    let count = normal[1..].split('/').count();
    for (i, segment) in segments.enumerate() {
        assert!(
            segment != "." && segment != "..",
            "dot segment left: {raw:?} -> {normal:?}"
        );
        assert!(
            !segment.ends_with(['.', ' ']),
            "IIS would read this segment otherwise: {raw:?} -> {normal:?}"
        );
        assert!(
            !segment.is_empty() || i + 1 == count,
            "empty segment: {raw:?} -> {normal:?}"
        );
    }
    match normalize_path(normal) {
        Ok(again) => assert_eq!(again, normal, "normalising twice moved {raw:?}"),
        Err(_) => assert!(
            normal.contains('%'),
            "normal form {normal:?} of {raw:?} refused on a second reading"
        ),
    }
}

fn check(host: &str, raw: &str) {
    let normal = normalize_path(raw);
    if let Ok(normal) = &normal {
        check_normal_form(raw, normal);
    }

    let found = ROUTER.lookup(host, raw);
    let key = host_without_port(host);
    let key = key
        .strip_prefix('[')
        .and_then(|k| k.strip_suffix(']'))
        .unwrap_or(key);
    let key = key.strip_suffix('.').unwrap_or(key);
    if key.eq_ignore_ascii_case(HOST) {
        match &normal {
            Err(_) => assert_eq!(found, RouteMatch::BadPath, "{raw:?}"),
            Ok(normal) => {
                let expected = expected_route(normal);
                assert_eq!(
                    found,
                    expected
                        .as_ref()
                        .map_or(RouteMatch::NotFound, RouteMatch::Found),
                    "{raw:?} judged as {normal:?}"
                );
            }
        }
        // The same request under another spelling of the host.
        let upper = format!("{}:443", HOST.to_ascii_uppercase());
        assert_eq!(ROUTER.lookup(&upper, raw), found, "{raw:?} on {upper}");
    } else if key.eq_ignore_ascii_case("autodiscover.contoso.com") {
        let expected = if normal.is_ok() {
            RouteMatch::Found(&ROUTES.len())
        } else {
            RouteMatch::BadPath
        };
        assert_eq!(found, expected, "{raw:?}");
    } else {
        assert_eq!(found, RouteMatch::NotFound, "unknown host {host:?} routed");
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match text.split_once('\n') {
        Some((host, path)) => {
            check(host, path);
            check(HOST, path);
        }
        None => check(HOST, &text),
    }
});
