//! Header rules toward Exchange and back. Hop-by-hop headers belong to one connection and are
//! never forwarded (RFC 9110 section 7.6.1), including any header the sender names in
//! `Connection` — otherwise a client could make the gateway drop or keep headers at will.
//! `X-Forwarded-*` from the browser is believed only from `trusted_proxies`: anyone else could
//! claim any address.

use std::net::IpAddr;

use http::header::{HeaderName, HeaderValue, CONNECTION, FORWARDED};
use http::HeaderMap;
use ipnet::IpNet;

pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// Hop-by-hop headers (RFC 9110 section 7.6.1, plus the non-standard `Keep-Alive` and
/// `Proxy-Connection`): they describe one connection and are never forwarded.
fn is_hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

/// Headers that Exchange, IIS modules or other software behind the gateway could take for an
/// identity asserted by a proxy, and the gateway's own `x-mfagw-` prefix. A browser never has a
/// reason to send them: they are removed from every request, so nobody can claim to be someone
/// by setting one.
fn is_identity_header(name: &str) -> bool {
    matches!(
        name,
        "remote-user"
            | "x-remote-user"
            | "x-user"
            | "x-forwarded-user"
            | "x-forwarded-email"
            | "x-forwarded-preferred-username"
            | "x-auth-request-user"
            | "x-auth-request-email"
            | "x-auth-request-preferred-username"
            | "x-ms-client-principal"
            | "x-ms-client-principal-name"
            | "x-ms-client-principal-id"
            | "x-ms-token-aad-id-token"
            | "x-ms-token-aad-access-token"
    ) || name.starts_with("x-mfagw-")
}

/// Removes every header whose name `doomed` picks, in one pass over the names. Usually none
/// is picked, and then nothing is allocated or looked up again.
fn remove_where(headers: &mut HeaderMap, doomed: impl Fn(&HeaderName) -> bool) {
    let mut found: Vec<HeaderName> = Vec::new();
    for name in headers.keys() {
        if doomed(name) {
            found.push(name.clone());
        }
    }
    for name in found {
        headers.remove(name);
    }
}

/// Removes client-sent identity headers (and any `x-mfagw-*` header, the gateway's own prefix).
pub fn strip_identity_headers(headers: &mut HeaderMap) {
    remove_where(headers, |name| is_identity_header(name.as_str()));
}

/// Removes hop-by-hop headers and every header listed in `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let mut named: Vec<HeaderName> = Vec::new();
    for value in headers.get_all(CONNECTION) {
        let Ok(value) = value.to_str() else { continue };
        for token in value.split(',') {
            // The usual tokens (`keep-alive`, `upgrade`) name hop-by-hop headers anyway.
            match HeaderName::from_bytes(token.trim().as_bytes()) {
                Ok(name) if !is_hop_by_hop(name.as_str()) => named.push(name),
                _ => {}
            }
        }
    }
    remove_where(headers, |name| {
        is_hop_by_hop(name.as_str()) || named.contains(name)
    });
}

pub fn is_trusted(peer: IpAddr, trusted: &[IpNet]) -> bool {
    !trusted.is_empty() && trusted.iter().any(|net| net.contains(&peer))
}

/// The address of the browser: the peer itself, or — when the peer is a trusted proxy — the
/// nearest address in `X-Forwarded-For` that is not itself a trusted proxy.
pub fn client_address(headers: &HeaderMap, peer: IpAddr, trusted: &[IpNet]) -> IpAddr {
    if !is_trusted(peer, trusted) {
        return peer;
    }
    let mut client = peer;
    let hops: Vec<&str> = headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect();
    for hop in hops.iter().rev() {
        match hop.trim().parse::<IpAddr>() {
            Ok(addr) => {
                client = addr;
                if !is_trusted(addr, trusted) {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    client
}

/// An address as header text, for `X-Forwarded-For` and the access log. The peer of a
/// connection is formatted once, when it connects, not for each of its requests.
pub fn address_text(addr: IpAddr) -> HeaderValue {
    HeaderValue::from_maybe_shared(bytes::Bytes::from(addr.to_string()))
        .unwrap_or_else(|_| HeaderValue::from_static("-"))
}

/// Sets `X-Forwarded-For/-Proto/-Host` for Exchange. From a trusted proxy the chain it sent is
/// kept and the peer appended; from anyone else every client-sent forwarding header is replaced.
/// `peer` is the connection's address as [`address_text`] wrote it.
pub fn set_forwarded(
    headers: &mut HeaderMap,
    peer: &HeaderValue,
    peer_trusted: bool,
    proto: &'static str,
    host: &HeaderValue,
) {
    if peer_trusted {
        let peer_text = peer.to_str().unwrap_or_default();
        let chain: Vec<&str> = headers
            .get_all(X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        if chain.is_empty() {
            headers.insert(X_FORWARDED_FOR, peer.clone());
        } else if let Ok(value) =
            HeaderValue::try_from(format!("{}, {peer_text}", chain.join(", ")))
        {
            headers.insert(X_FORWARDED_FOR, value);
        }
        if !headers.contains_key(X_FORWARDED_PROTO) {
            headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
        }
        if !headers.contains_key(X_FORWARDED_HOST) {
            headers.insert(X_FORWARDED_HOST, host.clone());
        }
    } else {
        headers.remove(FORWARDED);
        headers.remove(X_REAL_IP);
        headers.insert(X_FORWARDED_FOR, peer.clone());
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
        headers.insert(X_FORWARDED_HOST, host.clone());
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn identity_headers_sent_by_a_browser_never_reach_exchange() {
        let mut map = headers(&[
            ("x-remote-user", "admin"),
            ("x-ms-client-principal-name", "admin@contoso.com"),
            ("x-mfagw-user", "admin"),
            ("cookie", "a=b"),
        ]);
        strip_identity_headers(&mut map);
        assert_eq!(map.len(), 1);
        assert!(map.contains_key("cookie"));
    }

    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        map
    }

    #[test]
    fn headers_named_in_connection_are_not_forwarded() {
        let mut map = headers(&[
            ("connection", "keep-alive, x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("cookie", "a=b"),
        ]);
        strip_hop_by_hop(&mut map);
        assert_eq!(map.len(), 1);
        assert!(map.contains_key("cookie"));
    }

    #[test]
    fn spoofed_forwarded_for_from_an_untrusted_peer_is_replaced() {
        let mut map = headers(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-proto", "http"),
            ("x-real-ip", "1.2.3.4"),
            ("forwarded", "for=1.2.3.4"),
        ]);
        let peer = address_text("192.0.2.7".parse().unwrap());
        set_forwarded(
            &mut map,
            &peer,
            false,
            "https",
            &HeaderValue::from_static("mail.contoso.com"),
        );
        assert_eq!(map["x-forwarded-for"], "192.0.2.7");
        assert_eq!(map["x-forwarded-proto"], "https");
        assert_eq!(map["x-forwarded-host"], "mail.contoso.com");
        assert!(!map.contains_key("x-real-ip"));
        assert!(!map.contains_key("forwarded"));
    }

    #[test]
    fn trusted_proxy_chain_is_kept_and_the_peer_appended() {
        let mut map = headers(&[
            ("x-forwarded-for", "198.51.100.9"),
            ("x-forwarded-proto", "https"),
        ]);
        let peer = address_text("10.0.0.5".parse().unwrap());
        set_forwarded(
            &mut map,
            &peer,
            true,
            "http",
            &HeaderValue::from_static("mail.contoso.com"),
        );
        assert_eq!(map["x-forwarded-for"], "198.51.100.9, 10.0.0.5");
        assert_eq!(map["x-forwarded-proto"], "https");
    }

    #[test]
    fn client_address_skips_trusted_hops_but_not_untrusted_ones() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/24".parse().unwrap()];
        let map = headers(&[("x-forwarded-for", "203.0.113.1, 198.51.100.9, 10.0.0.4")]);
        let peer: IpAddr = "10.0.0.5".parse().unwrap();
        assert_eq!(
            client_address(&map, peer, &trusted),
            "198.51.100.9".parse::<IpAddr>().unwrap()
        );
        let outsider: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(client_address(&map, outsider, &trusted), outsider);
    }
}
