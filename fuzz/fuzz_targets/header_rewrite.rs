//! Request headers as a browser or a proxy in front of the gateway sends them, rewritten for
//! Exchange.
//!
//! Input: the first line is the connection's peer address (a default when it does not parse),
//! every further line a header `name: value`, raw bytes; lines `http` refuses are skipped.
//!
//! What must hold:
//! - no hop-by-hop header, and no header the client named in `Connection`, reaches Exchange;
//! - no identity header a proxy could be trusted for (`X-Remote-User`, `X-MS-CLIENT-PRINCIPAL-*`,
//!   `X-Mfagw-*`, …) reaches Exchange; the headers Exchange needs are untouched;
//! - the gateway's cookies are gone and every other cookie is kept, in order, byte for byte;
//! - `find_cookie` finds what a plain walk over the `Cookie` fields finds;
//! - the client address is the peer unless the peer is a trusted proxy, and otherwise an
//!   address from `X-Forwarded-For`; `X-Forwarded-For` ends with the peer, and from an untrusted
//!   peer is exactly the peer, with `Forwarded`/`X-Real-IP` removed.

#![no_main]

use std::net::IpAddr;
use std::sync::LazyLock;

use http::header::{HeaderName, HeaderValue, CONNECTION, COOKIE, FORWARDED, HOST};
use http::{HeaderMap, Method};
use ipnet::IpNet;
use libfuzzer_sys::fuzz_target;
use mfa_gateway::auth::is_navigation;
use mfa_gateway::proxy::headers::{
    address_text, client_address, is_trusted, set_forwarded, strip_hop_by_hop,
    strip_identity_headers, X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PROTO, X_REAL_IP,
};
use mfa_gateway::session::{cookies, find_cookie, strip_cookies, SessionKey, SessionSeal};

const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Identity headers that must never reach Exchange from a browser (a subset of the gateway's
/// list: the ones Exchange-side software is known to believe).
const IDENTITY: [&str; 6] = [
    "remote-user",
    "x-remote-user",
    "x-forwarded-user",
    "x-ms-client-principal",
    "x-ms-client-principal-name",
    "x-ms-token-aad-id-token",
];

static SEAL: LazyLock<SessionSeal> = LazyLock::new(|| {
    let key = SessionKey::from_bytes(&[0x11; 32]).expect("fixed key");
    SessionSeal::new("__Host-mfagw", vec![key]).expect("fixed ring")
});

static TRUSTED: LazyLock<Vec<IpNet>> = LazyLock::new(|| {
    ["10.0.0.0/8", "192.168.0.0/16", "fd00::/8"]
        .iter()
        .map(|net| net.parse().expect("fixed network"))
        .collect()
});

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |i| i + 1);
    &bytes[start..end]
}

fn parse(data: &[u8]) -> (IpAddr, HeaderMap) {
    let mut lines = data.split(|&b| b == b'\n');
    let peer = lines
        .next()
        .and_then(|line| std::str::from_utf8(trim(line)).ok())
        .and_then(|text| text.parse().ok())
        .unwrap_or(IpAddr::from([203, 0, 113, 7]));
    let mut headers = HeaderMap::new();
    for line in lines {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = line.split_at(colon);
        let value = &value[1..];
        let value = &value[value.iter().position(|&b| b != b' ').unwrap_or(value.len())..];
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(trim(name)),
            HeaderValue::from_bytes(value),
        ) {
            headers.append(name, value);
        }
    }
    (peer, headers)
}

/// Every header as (name, values), for comparing what was kept.
fn values<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Vec<&'a [u8]> {
    headers
        .get_all(name)
        .iter()
        .map(HeaderValue::as_bytes)
        .collect()
}

fn check_cookies(headers: &HeaderMap) {
    let all: Vec<(&str, &str)> = cookies(headers).collect();
    for (name, _) in &all {
        let first = all.iter().find(|(n, _)| n == name).map(|(_, v)| *v);
        assert_eq!(find_cookie(headers, name), first, "cookie {name:?}");
    }
    assert_eq!(
        find_cookie(headers, SEAL.cookie_name()),
        all.iter()
            .find(|(n, _)| *n == SEAL.cookie_name())
            .map(|(_, v)| *v)
    );

    let mut stripped = headers.clone();
    strip_cookies(&mut stripped, |name| SEAL.is_gateway_cookie(name));
    let kept: Vec<(&str, &str)> = cookies(&stripped).collect();
    let expected: Vec<(&str, &str)> = all
        .iter()
        .copied()
        .filter(|(name, _)| !SEAL.is_gateway_cookie(name))
        .collect();
    assert_eq!(
        kept, expected,
        "cookies lost or reordered on the way to Exchange"
    );
    assert!(stripped.get_all(COOKIE).iter().count() <= headers.get_all(COOKIE).iter().count());
    for name in headers.keys().filter(|name| *name != COOKIE) {
        assert_eq!(
            values(&stripped, name),
            values(headers, name),
            "{name} changed"
        );
    }
}

fn check_hop_by_hop(headers: &HeaderMap) {
    let named: Vec<String> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|token| token.trim().to_ascii_lowercase())
        .collect();
    let mut stripped = headers.clone();
    strip_hop_by_hop(&mut stripped);
    for name in stripped.keys() {
        assert!(!HOP_BY_HOP.contains(&name.as_str()), "{name} forwarded");
        assert!(
            !named.iter().any(|n| n == name.as_str()),
            "{name} named in Connection"
        );
    }
    for name in headers.keys() {
        if !HOP_BY_HOP.contains(&name.as_str()) && !named.iter().any(|n| n == name.as_str()) {
            assert_eq!(
                values(&stripped, name),
                values(headers, name),
                "{name} changed"
            );
        }
    }
}

fn check_identity(headers: &HeaderMap) {
    let mut stripped = headers.clone();
    strip_identity_headers(&mut stripped);
    for name in stripped.keys() {
        assert!(!IDENTITY.contains(&name.as_str()), "{name} forwarded");
        assert!(!name.as_str().starts_with("x-mfagw-"), "{name} forwarded");
    }
    // Whatever the browser may legitimately send is never touched.
    for name in headers.keys() {
        if !name.as_str().starts_with("x-") && name.as_str() != "remote-user" {
            assert_eq!(
                values(&stripped, name),
                values(headers, name),
                "{name} changed"
            );
        }
    }
}

fn check_forwarding(peer: IpAddr, headers: &HeaderMap) {
    let trusted = is_trusted(peer, &TRUSTED);
    let client = client_address(headers, peer, &TRUSTED);
    if trusted {
        let hops: Vec<IpAddr> = headers
            .get_all(X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|hop| hop.trim().parse().ok())
            .collect();
        assert!(
            client == peer || hops.contains(&client),
            "{client} invented"
        );
    } else {
        assert_eq!(client, peer, "an untrusted peer chose its own address");
    }

    let peer_text = address_text(peer);
    let host = headers
        .get(HOST)
        .cloned()
        .unwrap_or(HeaderValue::from_static("mail.contoso.com"));
    let mut forwarded = headers.clone();
    set_forwarded(&mut forwarded, &peer_text, trusted, "https", &host);
    let chain: Vec<&[u8]> = values(&forwarded, &X_FORWARDED_FOR);
    assert_eq!(chain.len(), 1, "X-Forwarded-For not merged: {chain:?}");
    assert!(forwarded.contains_key(X_FORWARDED_PROTO));
    assert!(forwarded.contains_key(X_FORWARDED_HOST));
    if trusted {
        let ends_with_peer = chain[0] == peer_text.as_bytes()
            || chain[0].ends_with(format!(", {}", peer_text.to_str().unwrap_or("")).as_bytes());
        assert!(ends_with_peer, "peer not appended: {chain:?}");
    } else {
        assert_eq!(chain[0], peer_text.as_bytes());
        assert_eq!(forwarded[X_FORWARDED_PROTO], "https");
        assert_eq!(forwarded[X_FORWARDED_HOST], host);
        assert!(!forwarded.contains_key(FORWARDED) && !forwarded.contains_key(X_REAL_IP));
    }
}

fuzz_target!(|data: &[u8]| {
    let (peer, headers) = parse(data);
    check_cookies(&headers);
    check_hop_by_hop(&headers);
    check_identity(&headers);
    check_forwarding(peer, &headers);
    let _ = is_navigation(&Method::GET, &headers);
    let _ = is_navigation(&Method::POST, &headers);
});
