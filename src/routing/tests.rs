//! The router and the path normalisation, judged together: what IIS would serve is what the
//! gateway routes.

use std::borrow::Cow;

use super::normalize::resolve_segments;
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
