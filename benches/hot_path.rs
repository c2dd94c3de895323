//! The per-request work in front of Exchange besides the session cookie (benches/session.rs):
//! judging the route, the header rules toward Exchange and back, and the response body with the
//! request's access record. Every OWA request pays for all of it before and after Exchange
//! answers.
//!
//! Inputs are what a browser on Outlook on the web sends, judged by the shipped example
//! configuration. Each benchmark first checks once that the operation did its job (the route is
//! OWA, the identity header is gone, …), so it cannot quietly measure a no-op.

use std::borrow::Cow;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use http::header::{HeaderName, HeaderValue, CONNECTION, COOKIE, HOST, TRANSFER_ENCODING};
use http::{HeaderMap, Method, Uri, Version};
use http_body::Body;
use ipnet::IpNet;
use mfa_gateway::body::{ObservedBody, ResponseBody};
use mfa_gateway::config::{Access, Config, MapSecrets, RouteConfig};
use mfa_gateway::observe::access::AccessRecord;
use mfa_gateway::observe::metrics::{Counters, Metrics, RouteSlot, Scrape};
use mfa_gateway::proxy::headers;
use mfa_gateway::routing::{normalize_path, RouteMatch, Router};
use mfa_gateway::session::{strip_cookies, SessionKey, SessionSeal};

const PUBLIC_HOST: &str = "mail.contoso.com";

/// A browser on the internet: not one of the example's `trusted_proxies`.
const BROWSER: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 23));

mod common;

use common::realistic_session;

/// The secret files the example configuration names.
const CLIENT_SECRET_FILE: &str = "/etc/mfa-gateway/client-secret";
const SESSION_KEY_FILE: &str = "/etc/mfa-gateway/session.key";
const SESSION_KEY: &str = "q83vEjRWeJCrze8SNFZ4kKvN7xI0VniQq83vEjRWeJA=";

/// What a deployment adds to the shipped example: Exchange's other virtual directories closed
/// explicitly rather than left unrouted, and the autodiscover host. With the example's four
/// routes: eleven routes on two hosts.
const CLOSED_ROUTES: &str = r#"
[[routes]]
host = "mail.contoso.com"
path = "/ews"
upstream = "exchange"
access = "deny"

[[routes]]
host = "mail.contoso.com"
path = "/mapi"
upstream = "exchange"
access = "deny"

[[routes]]
host = "mail.contoso.com"
path = "/Microsoft-Server-ActiveSync"
upstream = "exchange"
access = "deny"

[[routes]]
host = "mail.contoso.com"
path = "/rpc"
upstream = "exchange"
access = "deny"

[[routes]]
host = "mail.contoso.com"
path = "/oab"
upstream = "exchange"
access = "deny"

[[routes]]
host = "mail.contoso.com"
path = "/powershell"
upstream = "exchange"
access = "deny"

[[routes]]
host = "autodiscover.contoso.com"
path = "/autodiscover"
upstream = "exchange"
access = "deny"
"#;

fn example_config() -> Config {
    let text = format!(
        "{}{CLOSED_ROUTES}",
        include_str!("../config/gateway.example.toml")
    );
    let secrets = MapSecrets::new()
        .with_file(CLIENT_SECRET_FILE, "client-secret-from-file\n")
        .with_file(SESSION_KEY_FILE, format!("{SESSION_KEY}\n"));
    match Config::from_toml(&text, &secrets) {
        Ok(config) => config,
        Err(errors) => panic!("benchmark configuration refused:\n{errors}"),
    }
}

/// The routes inserted as `Snapshot::build` inserts them. The gateway's own router holds a
/// `RouteEntry` (pool, metrics, policy) per route, which needs certificate and CA files to
/// build; the lookup does not depend on what the router holds.
fn router(config: &Config) -> Router<&RouteConfig> {
    let mut router = Router::new();
    for route in &config.routes {
        if let Err(duplicate) = router.insert(&route.host, &route.path, route) {
            panic!("{duplicate}");
        }
    }
    router
}

/// The configured path and access of the route `raw_path` is judged to belong to.
fn judged<'a>(router: &Router<&'a RouteConfig>, raw_path: &str) -> Option<(&'a str, Access)> {
    match router.lookup(PUBLIC_HOST, raw_path) {
        RouteMatch::Found(route) => Some((route.path.as_str(), route.access)),
        RouteMatch::NotFound | RouteMatch::BadPath => None,
    }
}

fn route_lookup(c: &mut Criterion) {
    let config = example_config();
    let router = router(&config);
    let targets = [
        (
            "owa service.svc GetItem",
            "/owa/service.svc?action=GetItem&ID=-1&AC=1",
            ("/owa", Access::Mfa),
        ),
        (
            "ecp DDIService GetList",
            "/ecp/DDI/DDIService.svc/GetList?schema=MailboxCalendarConfiguration\
             &msExchEcpCanary=k3Jm0pQxW0aT9vYc2Lr8hN5eF1uB7sDg4iZ6oA",
            ("/ecp", Access::Mfa),
        ),
        (
            "owa published calendar, percent-escaped",
            "/owa/calendar/4f1c2a7e9b3d4e8fa1c23d4e5f6a7b8c%40contoso.com\
             /d5c7e9f0a1b24c3d8e6f7a8b9c0d1e2f6612345678901234567/calendar.html",
            ("/owa", Access::Mfa),
        ),
        // What internet scanners send to every Exchange they find.
        (
            "encoded traversal from owa to ews",
            "/owa/..%5cews/Exchange.asmx",
            ("/ews", Access::Deny),
        ),
    ];

    let mut group = c.benchmark_group("route");
    for (name, target, expected) in targets {
        let uri: Uri = match target.parse() {
            Ok(uri) => uri,
            Err(error) => panic!("{target}: {error}"),
        };
        assert_eq!(judged(&router, uri.path()), Some(expected), "{target}");
        group.bench_function(name, |b| {
            b.iter(|| router.lookup(black_box(PUBLIC_HOST), black_box(&uri).path()))
        });
    }

    let escaped = "/owa/calendar/4f1c2a7e9b3d4e8fa1c23d4e5f6a7b8c%40contoso.com\
                   /d5c7e9f0a1b24c3d8e6f7a8b9c0d1e2f6612345678901234567/calendar.html";
    let resolved = "/owa/calendar/4f1c2a7e9b3d4e8fa1c23d4e5f6a7b8c@contoso.com\
                    /d5c7e9f0a1b24c3d8e6f7a8b9c0d1e2f6612345678901234567/calendar.html";
    assert_eq!(normalize_path(escaped), Ok(Cow::Owned(resolved.to_owned())));
    group.bench_function("normalize_path percent-escaped calendar link", |b| {
        b.iter(|| normalize_path(black_box(escaped)))
    });
    group.finish();
}

/// A signed-in user: what the session cookie of the example configuration carries. The example
/// restricts no route to a group, so the session carries none.
fn sealed_session(config: &Config) -> (SessionSeal, String) {
    let Some(session_config) = &config.session else {
        panic!("the example configuration has a [session]");
    };
    let keys = session_config
        .keys
        .iter()
        .map(|key| match SessionKey::from_bytes(key) {
            Ok(key) => key,
            Err(error) => panic!("{error}"),
        })
        .collect();
    let seal = match SessionSeal::new(&session_config.cookie_name, keys) {
        Ok(seal) => seal,
        Err(error) => panic!("{error}"),
    };
    let session = realistic_session("3f2a9b1c-5d4e-4f60-8a7b-1c2d3e4f5a6b", 0);
    let cookie = match seal.seal(&session) {
        Ok(cookie) => cookie,
        Err(error) => panic!("{error}"),
    };
    (seal, cookie)
}

/// Exchange's cookies around the gateway's: the browser sends the longer-path `/owa` cookie
/// first, then the `/` cookies in the order they were set.
const EXCHANGE_COOKIES_BEFORE: &str = "X-BackEndCookie=S-1-5-21-3623811015-3361044348-30300820-\
    1013=u56Lnp2ejJqBzMnMz8rGnsvSy5zOzdLLzJ7N0p3Gy8nSy53IzcrGzsuazJ7Jq8/Fz8/Fz8/J; \
    ClientId=8E0A5B6C7D8E4F019C3D4E5F6A7B8C9D";
const EXCHANGE_COOKIES_AFTER: &str = "X-OWA-CANARY=mR3xQk7vT0G8yW2pN5hJ4cLzB1fD6sA9eKuI0oVj\
    YtXnHgEqPwCr8M7lZ3bU.; PrivateComputer=true; PBack=0; \
    cadata=\"1AbCz0y9XwVu8tSr7QpOn6MlKj5IhGf4EdCb3Aa2zYx1WvUt0SrQpOnMlKjIhGf==\"; \
    cadataTTL=\"NfkG0Y4ZcK3h9nT2q1wA5Q==\"; cadataKey=\"M2Jp0Ks9Xq4ZrT8vN6yL1wB5cH7dF3gJ\"; \
    cadataIV=\"aZ9xQ2mK7vT4nB1cW6pL8jH5dF3gS0rE\"; cadataSig=\"tV5kN2qW8xM1zB7cJ4pL9hF6dG3sA0rE\"; \
    UC=4d2b6f1c8a9e4b7d9c0a1e2f3b4c5d6e; AppcacheVer=15.2.1544.4:en-usbase";

/// A browser's XHR from OWA's mail view: HTTP/1.1 with a keep-alive `Connection` header, a
/// spoofed `X-Forwarded-For` and a planted identity header, both of which Exchange must never
/// see.
fn owa_request(gateway_cookie: &str) -> HeaderMap {
    let cookie = format!("{EXCHANGE_COOKIES_BEFORE}; {gateway_cookie}; {EXCHANGE_COOKIES_AFTER}");
    header_map(&[
        ("host", PUBLIC_HOST),
        ("connection", "keep-alive"),
        (
            "user-agent",
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) \
             Chrome/126.0.0.0 Safari/537.36 Edg/126.0.0.0",
        ),
        ("accept", "*/*"),
        ("accept-language", "de-DE,de;q=0.9,en-US;q=0.8,en;q=0.7"),
        ("accept-encoding", "gzip, deflate, br, zstd"),
        ("content-type", "application/json; charset=utf-8"),
        ("action", "GetItem"),
        (
            "x-owa-canary",
            "mR3xQk7vT0G8yW2pN5hJ4cLzB1fD6sA9eKuI0oVjYtXnHgEqPwCr8M7lZ3bU.",
        ),
        (
            "x-owa-correlationid",
            "6b1e0f2a-9c3d-4e8f-a1c2-3d4e5f6a7b8c",
        ),
        ("x-requested-with", "XMLHttpRequest"),
        ("origin", "https://mail.contoso.com"),
        ("referer", "https://mail.contoso.com/owa/"),
        ("sec-fetch-site", "same-origin"),
        ("sec-fetch-mode", "cors"),
        ("sec-fetch-dest", "empty"),
        ("x-forwarded-for", "10.0.0.9"),
        ("x-remote-user", "CONTOSO\\Administrator"),
        ("cookie", &cookie),
    ])
}

/// An OWA `service.svc` answer as IIS sends it over a keep-alive HTTP/1.1 connection.
fn exchange_response() -> HeaderMap {
    header_map(&[
        ("cache-control", "no-cache, no-store"),
        ("pragma", "no-cache"),
        ("content-type", "application/json; charset=utf-8"),
        ("content-encoding", "gzip"),
        ("vary", "Accept-Encoding"),
        ("server", "Microsoft-IIS/10.0"),
        ("request-id", "0e4b7c9d-2f1a-4c3b-8d5e-6f7a8b9c0d1e"),
        ("x-calculatedbetarget", "ex01.corp.contoso.com"),
        ("x-backendhttpstatus", "200"),
        ("x-owa-version", "15.2.1544.4"),
        ("x-owa-diagnosticsinfo", "3;0;0"),
        ("x-diaginfo", "EX01"),
        ("x-beserver", "EX01"),
        ("x-aspnet-version", "4.0.30319"),
        ("x-powered-by", "ASP.NET"),
        ("x-feserver", "EX02"),
        ("date", "Fri, 15 Jan 2027 08:00:00 GMT"),
        ("connection", "keep-alive"),
        ("transfer-encoding", "chunked"),
    ])
}

fn header_map(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::with_capacity(pairs.len());
    for &(name, value) in pairs {
        match HeaderValue::from_str(value) {
            Ok(value) => map.append(HeaderName::from_static(name), value),
            Err(error) => panic!("{name}: {error}"),
        };
    }
    map
}

/// What `server::request::handle` and then `proxy::forward` do to a request's headers before
/// it leaves for Exchange, in their order: judge the peer, take the gateway's cookies out,
/// drop hop-by-hop and identity headers, set the forwarding headers and `Host`. `peer_text` is
/// the browser's address as its connection formatted it once, before its first request.
fn rewrite_request(
    request: &mut HeaderMap,
    peer_text: &HeaderValue,
    trusted: &[IpNet],
    seal: &SessionSeal,
    host: &HeaderValue,
) -> IpAddr {
    let peer_trusted = headers::is_trusted(BROWSER, trusted);
    let client = headers::client_address(request, BROWSER, trusted);
    strip_cookies(request, |name| seal.is_gateway_cookie(name));
    headers::strip_hop_by_hop(request);
    headers::strip_identity_headers(request);
    headers::set_forwarded(request, peer_text, peer_trusted, "https", host);
    request.insert(HOST, host.clone());
    client
}

fn request_headers(c: &mut Criterion) {
    let config = example_config();
    let trusted = config.server.trusted_proxies.as_slice();
    let (seal, sealed) = sealed_session(&config);
    let gateway_cookie = format!("{}={sealed}", seal.cookie_name());
    let request = owa_request(&gateway_cookie);
    let host = HeaderValue::from_static(PUBLIC_HOST);
    let peer_text = headers::address_text(BROWSER);
    let exchange_cookies = format!("{EXCHANGE_COOKIES_BEFORE}; {EXCHANGE_COOKIES_AFTER}");

    let mut forwarded = request.clone();
    let client = rewrite_request(&mut forwarded, &peer_text, trusted, &seal, &host);
    assert_eq!(client, BROWSER, "a spoofed X-Forwarded-For is not believed");
    assert!(!forwarded.contains_key("x-remote-user"));
    assert!(!forwarded.contains_key(CONNECTION));
    assert_eq!(forwarded["x-forwarded-for"], "198.51.100.23");
    assert_eq!(forwarded["x-forwarded-proto"], "https");
    assert_eq!(forwarded["x-forwarded-host"], PUBLIC_HOST);
    assert_eq!(forwarded[HOST], PUBLIC_HOST);
    assert_eq!(forwarded[COOKIE], exchange_cookies.as_str());
    // Connection and X-Remote-User out, X-Forwarded-Proto and -Host in.
    assert_eq!(forwarded.len(), request.len());

    let mut stripped = request.clone();
    strip_cookies(&mut stripped, |name| seal.is_gateway_cookie(name));
    assert_eq!(stripped[COOKIE], exchange_cookies.as_str());

    let mut group = c.benchmark_group("request headers");
    group.bench_function("owa xhr from an untrusted browser", |b| {
        b.iter_batched(
            || request.clone(),
            |mut request| {
                let client =
                    rewrite_request(&mut request, &peer_text, trusted, &seal, black_box(&host));
                (request, client)
            },
            BatchSize::SmallInput,
        )
    });
    group.bench_function("strip gateway cookie", |b| {
        b.iter_batched(
            || request.clone(),
            |mut request| {
                strip_cookies(&mut request, |name| seal.is_gateway_cookie(name));
                request
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn response_headers(c: &mut Criterion) {
    let response = exchange_response();

    let mut passed = response.clone();
    headers::strip_hop_by_hop(&mut passed);
    assert!(!passed.contains_key(CONNECTION));
    assert!(!passed.contains_key(TRANSFER_ENCODING));
    assert_eq!(passed.len(), response.len() - 2);

    let mut group = c.benchmark_group("response headers");
    group.bench_function("strip hop-by-hop from an owa answer", |b| {
        b.iter_batched(
            || response.clone(),
            |mut response| {
                headers::strip_hop_by_hop(&mut response);
                response
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

/// An answer of a few KiB, as OWA's service calls return.
static OWA_ANSWER: [u8; 4096] = [b' '; 4096];

/// Every answer, Exchange's or the gateway's own, goes out as an `ObservedBody` carrying the
/// request's access record: polled to its end and dropped, which counts the request and times it. No log
/// subscriber is installed, so the line itself is not formatted.
fn response_body(c: &mut Criterion) {
    let metrics = Arc::new(Metrics::default());
    let counters = Counters::new(&metrics, [metrics.route("mail.contoso.com/owa")]).for_worker();
    let uri: Uri = "/owa/service.svc?action=GetItem".parse().unwrap();
    let client = headers::address_text(BROWSER);
    let mut cx = Context::from_waker(Waker::noop());
    let mut answer = || {
        let mut record = AccessRecord::new(
            Instant::now(),
            counters.clone(),
            Method::POST,
            uri.clone(),
            Version::HTTP_11,
            client.clone(),
        );
        record.set_route(RouteSlot::route(0));
        record.set_status(200);
        let body = ObservedBody::new(ResponseBody::full(Bytes::from_static(&OWA_ANSWER)), record);
        let mut body = pin!(black_box(body));
        let mut sent = 0;
        while let Poll::Ready(Some(Ok(frame))) = body.as_mut().poll_frame(&mut cx) {
            sent += frame.data_ref().map_or(0, Bytes::len);
        }
        sent
    };

    assert_eq!(answer(), OWA_ANSWER.len());
    let page = metrics.render(Scrape::default());
    assert!(
        page.contains("mfagw_requests_total{route=\"mail.contoso.com/owa\",status=\"200\"} 1\n"),
        "{page}"
    );

    let mut group = c.benchmark_group("response body");
    group.bench_function("owa answer with its access record", |b| b.iter(&mut answer));
    group.finish();
}

criterion_group!(
    benches,
    route_lookup,
    request_headers,
    response_headers,
    response_body
);
criterion_main!(benches);
