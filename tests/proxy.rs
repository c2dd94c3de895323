//! What Exchange receives through the gateway and what the browser gets back: hop-by-hop
//! headers removed both ways, `X-Forwarded-*` believed only from trusted proxies, Host, path
//! and query passed byte for byte, OWA's cookies untouched, closed virtual directories
//! unreachable (also through crafted paths), denied routes, error pages without internals,
//! WebSocket upgrades, and a 502 page when Exchange is gone.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::header::{CONNECTION, SET_COOKIE, UPGRADE};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use support::{client, full, FakeExchange, IssuedCert, Recorded, TestGateway, TestPki};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

const HOST: &str = "mail.contoso.com";
const IO_LIMIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Configuration

struct Setup<'a> {
    cert: Option<&'a IssuedCert>,
    trusted_proxies: &'a [&'a str],
    /// `(path, access)` on mail.contoso.com.
    routes: &'a [(&'a str, &'a str)],
}

impl Setup<'_> {
    fn toml(&self, exchange: &FakeExchange) -> String {
        let mut toml = String::from("[server]\n");
        match self.cert {
            Some(_) => toml.push_str("https_listen = \"127.0.0.1:0\"\n"),
            None => toml.push_str("http_listen = \"127.0.0.1:0\"\n"),
        }
        let trusted: Vec<String> = self
            .trusted_proxies
            .iter()
            .map(|p| format!("\"{p}\""))
            .collect();
        toml.push_str(&format!("trusted_proxies = [{}]\n", trusted.join(", ")));
        if let Some(cert) = self.cert {
            toml.push_str(&format!(
                "\n[[tls.certificates]]\ncert = \"{}\"\nkey = \"{}\"\n",
                cert.cert.display(),
                cert.key.display()
            ));
        }
        toml.push_str(&format!(
            "\n[upstreams.exchange]\nservers = [\"{}\"]\n",
            exchange.url()
        ));
        for (path, access) in self.routes {
            toml.push_str(&format!(
                "\n[[routes]]\nhost = \"{HOST}\"\npath = \"{path}\"\nupstream = \"exchange\"\naccess = \"{access}\"\n"
            ));
        }
        toml
    }
}

const OWA_ONLY: &[(&str, &str)] = &[("/owa", "public")];

/// An HTTPS gateway publishing `routes` from `exchange`.
async fn https_gateway(
    pki: &TestPki,
    exchange: &FakeExchange,
    routes: &[(&str, &str)],
) -> TestGateway {
    let cert = pki.issue(&[HOST]);
    TestGateway::start(
        &Setup {
            cert: Some(&cert),
            trusted_proxies: &[],
            routes,
        }
        .toml(exchange),
    )
    .await
}

/// A plain-HTTP gateway (TLS terminated by a load balancer in front).
async fn plain_gateway(
    exchange: &FakeExchange,
    trusted_proxies: &[&str],
    routes: &[(&str, &str)],
) -> TestGateway {
    TestGateway::start(
        &Setup {
            cert: None,
            trusted_proxies,
            routes,
        }
        .toml(exchange),
    )
    .await
}

// ---------------------------------------------------------------------------------------------
// Raw HTTP/1.1, for requests a well-behaved client library would not send

#[derive(Debug)]
struct RawResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl RawResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

async fn read_exact_or_eof<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut Vec<u8>, want: usize) {
    let mut chunk = [0u8; 8192];
    while buf.len() < want {
        match tokio::time::timeout(IO_LIMIT, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => panic!("no data from the gateway within {IO_LIMIT:?}"),
        }
    }
}

/// Reads one response. The head is read byte by byte so nothing after it (an upgraded
/// stream) is consumed.
async fn read_response<S: AsyncRead + Unpin>(stream: &mut S) -> RawResponse {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match tokio::time::timeout(IO_LIMIT, stream.read(&mut byte)).await {
            Ok(Ok(0)) | Ok(Err(_)) => panic!(
                "connection closed before a complete response head: {:?}",
                String::from_utf8_lossy(&head)
            ),
            Ok(Ok(_)) => head.push(byte[0]),
            Err(_) => panic!("no response head within {IO_LIMIT:?}"),
        }
        assert!(head.len() < 1 << 20, "response head too large");
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let mut lines = text.trim_end().split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP status line: {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut response = RawResponse {
        status,
        headers,
        body: Vec::new(),
    };
    if (100..200).contains(&status) || status == 204 || status == 304 {
        return response;
    }
    if let Some(length) = response.header("content-length") {
        let length: usize = length.parse().expect("numeric Content-Length");
        read_exact_or_eof(stream, &mut response.body, length).await;
    } else if response
        .header("transfer-encoding")
        .is_some_and(|te| te.eq_ignore_ascii_case("chunked"))
    {
        let mut raw = Vec::new();
        loop {
            let before = raw.len();
            read_exact_or_eof(stream, &mut raw, before + 1).await;
            if raw.ends_with(b"0\r\n\r\n") || raw.len() == before {
                break;
            }
        }
        response.body = dechunk(&raw);
    } else {
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(IO_LIMIT, stream.read_to_end(&mut rest)).await;
        response.body = rest;
    }
    response
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(end) = raw.windows(2).position(|w| w == b"\r\n") {
        let size_text = String::from_utf8_lossy(&raw[..end]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("0").trim(), 16)
            .unwrap_or(0);
        raw = &raw[end + 2..];
        if size == 0 || raw.len() < size {
            break;
        }
        out.extend_from_slice(&raw[..size]);
        raw = raw.get(size + 2..).unwrap_or_default();
    }
    out
}

async fn send<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, request: &[u8]) -> RawResponse {
    stream.write_all(request).await.expect("send request");
    read_response(stream).await
}

async fn tls_connect(
    pki: &TestPki,
    addr: SocketAddr,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let config = pki.rustls_client_config(&[b"http/1.1"]);
    TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from(HOST).expect("name"), tcp)
        .await
        .expect("TLS handshake")
}

/// One raw request over a new TLS connection.
async fn https_raw(pki: &TestPki, addr: SocketAddr, request: &str) -> RawResponse {
    let mut stream = tls_connect(pki, addr).await;
    send(&mut stream, request.as_bytes()).await
}

/// One raw request over a new plain TCP connection.
async fn http_raw(addr: SocketAddr, request: &[u8]) -> RawResponse {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    send(&mut stream, request).await
}

fn only_request(exchange: &FakeExchange) -> Recorded {
    let mut seen = exchange.user_requests();
    assert_eq!(
        seen.len(),
        1,
        "Exchange should have seen one request: {seen:#?}"
    );
    seen.remove(0)
}

fn values(request: &Recorded, name: &str) -> Vec<String> {
    request
        .headers
        .get_all(name)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Headers

#[tokio::test]
async fn hop_by_hop_request_headers_never_reach_exchange() {
    let pki = TestPki::new();
    let exchange = FakeExchange::builder("ex01").start().await;
    let gateway = https_gateway(&pki, &exchange, OWA_ONLY).await;
    let addr = gateway.https.expect("https");

    let response = https_raw(
        &pki,
        addr,
        "GET /owa/ HTTP/1.1\r\n\
         Host: mail.contoso.com\r\n\
         Connection: keep-alive, X-Internal-Secret\r\n\
         Connection: X-Second-Listed\r\n\
         Keep-Alive: timeout=5, max=100\r\n\
         TE: trailers, deflate\r\n\
         Upgrade: websocket\r\n\
         Proxy-Authorization: Basic YWRtaW46aHVudGVyMg==\r\n\
         Proxy-Connection: keep-alive\r\n\
         X-Internal-Secret: do-not-forward\r\n\
         X-Second-Listed: do-not-forward-either\r\n\
         X-OWA-UrlPostData: kept\r\n\
         Cookie: X-OWA-CANARY=abc; ClientId=xyz\r\n\
         \r\n",
    )
    .await;
    assert_eq!(response.status, 200, "{}", response.body_text());

    let seen = only_request(&exchange);
    for name in [
        "connection",
        "keep-alive",
        "te",
        "upgrade",
        "proxy-authorization",
        "proxy-connection",
        "x-internal-secret",
        "x-second-listed",
    ] {
        assert!(
            values(&seen, name).is_empty(),
            "{name} reached Exchange: {:?}",
            values(&seen, name)
        );
    }
    // End-to-end headers are untouched.
    assert_eq!(values(&seen, "x-owa-urlpostdata"), vec!["kept"]);
    assert_eq!(
        values(&seen, "cookie"),
        vec!["X-OWA-CANARY=abc; ClientId=xyz"]
    );
}

#[tokio::test]
async fn hop_by_hop_response_headers_from_exchange_never_reach_the_browser() {
    let pki = TestPki::new();
    let exchange = FakeExchange::builder("ex01")
        .handler(|_req: Request<Incoming>| async move {
            Response::builder()
                .header(CONNECTION, "X-Backend-Server")
                .header("keep-alive", "timeout=120")
                .header("x-backend-server", "EX01.corp.contoso.com")
                .header("proxy-authenticate", "Negotiate")
                .header("trailer", "Expires")
                .header(UPGRADE, "h2c")
                .header("x-feserver", "kept")
                .body(full("inbox"))
                .expect("response")
        })
        .start()
        .await;
    let gateway = https_gateway(&pki, &exchange, OWA_ONLY).await;
    let addr = gateway.https.expect("https");

    for http2 in [false, true] {
        let response = client(&pki, &[HOST], addr, http2)
            .get(format!("https://{HOST}:{}/owa/", addr.port()))
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 200);
        let headers = response.headers();
        for name in [
            "keep-alive",
            "x-backend-server",
            "proxy-authenticate",
            "trailer",
            "upgrade",
        ] {
            assert!(
                !headers.contains_key(name),
                "{name} reached the browser (http2: {http2}): {headers:?}"
            );
        }
        for value in headers.get_all(CONNECTION) {
            let value = value.to_str().unwrap_or_default().to_ascii_lowercase();
            assert!(
                !value.contains("x-backend-server"),
                "Exchange's Connection header reached the browser: {value}"
            );
        }
        assert_eq!(headers["x-feserver"], "kept");
        assert_eq!(response.text().await.expect("body"), "inbox");
    }
}

#[tokio::test]
async fn forwarded_headers_from_an_untrusted_browser_are_replaced_not_believed() {
    let pki = TestPki::new();
    let exchange = FakeExchange::builder("ex01").start().await;
    let gateway = https_gateway(&pki, &exchange, OWA_ONLY).await;
    let addr = gateway.https.expect("https");
    let host = format!("{HOST}:{}", addr.port());

    let response = https_raw(
        &pki,
        addr,
        &format!(
            "GET /owa/ HTTP/1.1\r\n\
             Host: {host}\r\n\
             X-Forwarded-For: 10.0.0.1\r\n\
             X-Forwarded-For: 203.0.113.9, 198.51.100.2\r\n\
             X-Forwarded-Proto: http\r\n\
             X-Forwarded-Host: evil.example\r\n\
             Forwarded: for=203.0.113.9;proto=http;host=evil.example\r\n\
             X-Real-IP: 203.0.113.9\r\n\
             Connection: close\r\n\
             \r\n"
        ),
    )
    .await;
    assert_eq!(response.status, 200);

    let seen = only_request(&exchange);
    assert_eq!(values(&seen, "x-forwarded-for"), vec!["127.0.0.1"]);
    assert_eq!(values(&seen, "x-forwarded-proto"), vec!["https"]);
    assert_eq!(values(&seen, "x-forwarded-host"), vec![host.clone()]);
    assert!(values(&seen, "forwarded").is_empty(), "{seen:#?}");
    assert!(values(&seen, "x-real-ip").is_empty(), "{seen:#?}");
}

#[tokio::test]
async fn forwarded_chain_from_a_trusted_proxy_is_kept_and_the_peer_appended() {
    let exchange = FakeExchange::builder("ex01").start().await;
    let gateway = plain_gateway(&exchange, &["127.0.0.1/32"], OWA_ONLY).await;
    let addr = gateway.http.expect("http");

    // A load balancer that terminated TLS for a browser at 203.0.113.9.
    let response = http_raw(
        addr,
        b"GET /owa/ HTTP/1.1\r\n\
          Host: mail.contoso.com\r\n\
          X-Forwarded-For: 203.0.113.9, 198.51.100.2\r\n\
          X-Forwarded-Proto: https\r\n\
          X-Forwarded-Host: mail.contoso.com\r\n\
          Connection: close\r\n\
          \r\n",
    )
    .await;
    assert_eq!(response.status, 200);
    let seen = only_request(&exchange);
    assert_eq!(
        values(&seen, "x-forwarded-for"),
        vec!["203.0.113.9, 198.51.100.2, 127.0.0.1"]
    );
    assert_eq!(values(&seen, "x-forwarded-proto"), vec!["https"]);
    assert_eq!(values(&seen, "x-forwarded-host"), vec!["mail.contoso.com"]);

    // Without a chain, the trusted peer itself is the client and the gateway fills in the rest.
    let response = http_raw(
        addr,
        b"GET /owa/x HTTP/1.1\r\nHost: mail.contoso.com\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(response.status, 200);
    let seen = exchange.user_requests();
    let second = seen.last().expect("second request");
    assert_eq!(values(second, "x-forwarded-for"), vec!["127.0.0.1"]);
    assert_eq!(values(second, "x-forwarded-proto"), vec!["http"]);
    assert_eq!(values(second, "x-forwarded-host"), vec!["mail.contoso.com"]);
}

#[tokio::test]
async fn host_reaches_exchange_exactly_as_the_browser_sent_it() {
    let pki = TestPki::new();
    let exchange = FakeExchange::builder("ex01").start().await;
    let gateway = https_gateway(&pki, &exchange, OWA_ONLY).await;
    let addr = gateway.https.expect("https");

    for host in [
        "mail.contoso.com:8443",
        "MAIL.Contoso.com",
        "mail.contoso.com",
    ] {
        let response = https_raw(
            &pki,
            addr,
            &format!("GET /owa/ HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert_eq!(response.status, 200, "Host {host}");
    }
    let hosts: Vec<Vec<String>> = exchange
        .user_requests()
        .iter()
        .map(|r| values(r, "host"))
        .collect();
    assert_eq!(
        hosts,
        vec![
            vec!["mail.contoso.com:8443".to_owned()],
            vec!["MAIL.Contoso.com".to_owned()],
            vec!["mail.contoso.com".to_owned()],
        ]
    );
}

#[tokio::test]
async fn path_and_query_reach_exchange_byte_for_byte() {
    let pki = TestPki::new();
    let exchange = FakeExchange::builder("ex01").start().await;
    let gateway = https_gateway(&pki, &exchange, OWA_ONLY).await;
    let addr = gateway.https.expect("https");

    let targets = [
        "/owa/service.svc?action=GetItem&EP=1&ID=-24&AC=1&X-OWA-CANARY=dGhpcyBpcyBhIGNhbmFyeQ_-x.Y%3D%3D",
        "/owa/attachment.ashx?id=RgAAAAB%2bQ%2FXz&X-OWA-CANARY=Zx1_y-2.3&isImage=1&n=%E2%9C%93%20a+b&p=%2e%2e%2fews",
        "/owa/attachment/%7B3F2504E0-4F89-11D3-9A0C-0305E82C3301%7D/Quarterly%20Report%20%c3%a9t%C3%A9.pdf",
        "/owa/prem/15.2.1118.7/scripts/boot.worldwide.0.mouse.js?ver=15.2&a=1&a=2&empty=&flag",
        "/OWA/ev.owa2?ns=PendingRequest&ev=PendingNotificationRequest&UA=0&cid=abc%2Bdef%2F%3D",
    ];
    for target in targets {
        let response = https_raw(
            &pki,
            addr,
            &format!("GET {target} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert_eq!(response.status, 200, "{target}: {}", response.body_text());
    }
    let seen: Vec<String> = exchange
        .user_requests()
        .into_iter()
        .map(|r| r.uri)
        .collect();
    assert_eq!(seen, targets.to_vec());
}

#[tokio::test]
async fn exchange_cookies_including_the_script_readable_owa_canary_reach_the_browser_untouched() {
    const COOKIES: [&str; 4] = [
        "X-OWA-CANARY=k5lZ0d3k8U2mTqZ7bWcXYQAAAAAAAAAAAAAAAAAAAAAAAAAA.; path=/; secure",
        "X-BackEndCookie=S-1-5-21-3623811015-3361044348-30300820-1013=u56Lnp2ejJqByJ7JmsfGzsfSzMnOz9LLnM3O; expires=Sat, 01-Aug-2026 12:00:00 GMT; path=/owa; secure; HttpOnly",
        "ClientId=8A3F6E0C4B2D4C1E9F7A6B5C4D3E2F1A; expires=Fri, 31-Jul-2026 12:00:00 GMT; path=/; secure; HttpOnly",
        "UC=6b0f4c0e3d2a4f9b8a7e6d5c4b3a2f1e; path=/; secure; HttpOnly; SameSite=None",
    ];
    let pki = TestPki::new();
    let exchange = FakeExchange::builder("ex01")
        .handler(|_req: Request<Incoming>| async move {
            let mut response = Response::builder().header("x-owa-canary", "k5lZ0d3k8U2m");
            for cookie in COOKIES {
                response = response.header(SET_COOKIE, cookie);
            }
            response.body(full("<html>owa</html>")).expect("response")
        })
        .start()
        .await;
    let gateway = https_gateway(&pki, &exchange, OWA_ONLY).await;
    let addr = gateway.https.expect("https");

    for http2 in [false, true] {
        let response = client(&pki, &[HOST], addr, http2)
            .get(format!("https://{HOST}:{}/owa/", addr.port()))
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 200);
        let cookies: Vec<&str> = response
            .headers()
            .get_all(SET_COOKIE)
            .iter()
            .map(|v| v.to_str().expect("cookie is text"))
            .collect();
        assert_eq!(cookies, COOKIES.to_vec(), "http2: {http2}");
        assert_eq!(response.headers()["x-owa-canary"], "k5lZ0d3k8U2m");
    }
}

// ---------------------------------------------------------------------------------------------
// Routing

/// Rejects gateway pages that leak where Exchange is or what failed inside.
fn assert_no_internals(page: &str, exchange: &FakeExchange) {
    let port = exchange.addr.port().to_string();
    for secret in [
        "127.0.0.1",
        port.as_str(),
        exchange.url().as_str(),
        "ex01",
        "hyper",
        "refused",
        "tcp",
        "os error",
        "client error",
        "upstream",
        "Connect",
        "localhost",
    ] {
        assert!(
            !page.contains(secret),
            "error page reveals {secret:?}:\n{page}"
        );
    }
}

#[tokio::test]
async fn closed_exchange_services_get_the_404_page_and_exchange_sees_nothing() {
    let pki = TestPki::new();
    let exchange = FakeExchange::builder("ex01").start().await;
    let gateway = https_gateway(&pki, &exchange, &[("/owa", "public"), ("/ecp", "public")]).await;
    let addr = gateway.https.expect("https");

    let paths = [
        ("GET", "/ews/exchange.asmx"),
        ("POST", "/EWS/Exchange.asmx"),
        ("POST", "/mapi/emsmdb/?MailboxId=4c7f@contoso.com"),
        (
            "POST",
            "/Microsoft-Server-ActiveSync?Cmd=Sync&User=u&DeviceId=d&DeviceType=iPhone",
        ),
        ("GET", "/powershell"),
        ("GET", "/PowerShell/?serializationLevel=Full"),
        (
            "RPC_IN_DATA",
            "/rpc/rpcproxy.dll?ex01.corp.contoso.com:6001",
        ),
        ("GET", "/oab/"),
        ("GET", "/oab/b2a1c3d4/oab.xml"),
        ("GET", "/autodiscover/autodiscover.xml"),
        ("GET", "/"),
        ("GET", "/owax"),
    ];
    for http2 in [false, true] {
        let client = client(&pki, &[HOST], addr, http2);
        for (method, path) in paths {
            let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
            let response = client
                .request(
                    method.clone(),
                    format!("https://{HOST}:{}{path}", addr.port()),
                )
                .header("content-type", "text/xml")
                .body("<soap/>")
                .send()
                .await
                .expect("request");
            assert_eq!(response.status(), 404, "{method} {path} (http2: {http2})");
            assert_eq!(
                response.headers()["content-type"],
                "text/html; charset=utf-8"
            );
            let page = response.text().await.expect("page");
            assert!(page.contains("Error 404"), "{page}");
            assert_no_internals(&page, &exchange);
        }
    }
    assert!(
        exchange.user_requests().is_empty(),
        "{:#?}",
        exchange.user_requests()
    );
}

#[tokio::test]
async fn unpublished_host_gets_404_even_on_a_published_path() {
    let pki = TestPki::new();
    let exchange = FakeExchange::builder("ex01").start().await;
    let gateway = https_gateway(&pki, &exchange, OWA_ONLY).await;
    let addr = gateway.https.expect("https");

    for host in [
        "ex01.corp.contoso.com",
        "127.0.0.1",
        "contoso.com",
        "mail.contoso.com.evil",
    ] {
        let response = https_raw(
            &pki,
            addr,
            &format!("GET /owa/ HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert_eq!(response.status, 404, "Host {host}");
    }
    assert!(exchange.user_requests().is_empty());
}

#[tokio::test]
async fn owa_route_matches_without_regard_to_case_but_only_at_a_segment_boundary() {
    let pki = TestPki::new();
    let exchange = FakeExchange::builder("ex01").start().await;
    let gateway = https_gateway(&pki, &exchange, OWA_ONLY).await;
    let addr = gateway.https.expect("https");
    let client = client(&pki, &[HOST], addr, false);
    let url = |path: &str| format!("https://{HOST}:{}{path}", addr.port());

    for path in ["/OWA/", "/owa", "/Owa/auth/logon.aspx"] {
        let response = client.get(url(path)).send().await.expect("request");
        assert_eq!(response.status(), 200, "{path}");
    }
    for path in ["/owax", "/owa-admin/", "/ow"] {
        let response = client.get(url(path)).send().await.expect("request");
        assert_eq!(response.status(), 404, "{path}");
    }
    let seen: Vec<String> = exchange
        .user_requests()
        .into_iter()
        .map(|r| r.uri)
        .collect();
    assert_eq!(seen, vec!["/OWA/", "/owa", "/Owa/auth/logon.aspx"]);
}

#[tokio::test]
async fn crafted_paths_from_owa_cannot_reach_ews() {
    let pki = TestPki::new();
    let exchange = FakeExchange::builder("ex01").start().await;
    let gateway = https_gateway(&pki, &exchange, &[("/owa", "public"), ("/ecp", "deny")]).await;
    let addr = gateway.https.expect("https");

    let crafted = [
        "/owa/..%5cews/exchange.asmx",
        "/owa/..%5Cews/exchange.asmx",
        "/owa/%2e%2e/ews/",
        "/owa/%2E%2E/ews/Exchange.asmx",
        "/owa/.%2e/ews/exchange.asmx",
        "/owa/..%2fews/exchange.asmx",
        "/owa/..\\ews/",
        "/owa\\..\\ews\\exchange.asmx",
        "/OWA/../EWS/Exchange.asmx",
        "/owa/./../ews/",
        "/owa/%252e%252e/ews",
        "/owa/%252e%252e%255cews",
        "/owa/%u002e%u002e/ews",
        "/owa/..%c0%afews/",
        "/owa/%2e%2e%5c%2e%2e%5cews",
        "/owa/ews/../../ews/exchange.asmx",
        "/owa/..%5c..%5c..%5cews",
        "/owa/.. /ews",
        "/owa/..%20/ews",
        "/owa/...%5cews",
    ];
    for path in crafted {
        let response = https_raw(
            &pki,
            addr,
            &format!("GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert!(
            response.status == 400 || response.status == 404,
            "{path} answered {}: {}",
            response.status,
            response.body_text()
        );
    }
    // A climb from the open /owa into the closed /ecp is judged as /ecp.
    for path in ["/owa/..%5cecp/", "/owa/%2e%2e/ECP/default.aspx"] {
        let response = https_raw(
            &pki,
            addr,
            &format!("GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert!(
            matches!(response.status, 400 | 403 | 404),
            "{path} answered {}",
            response.status
        );
    }
    let seen = exchange.user_requests();
    assert!(
        seen.is_empty(),
        "crafted paths reached Exchange: {:?}",
        seen.iter().map(|r| &r.uri).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn denied_route_answers_403_with_the_gateway_page_and_exchange_sees_nothing() {
    let pki = TestPki::new();
    let exchange = FakeExchange::builder("ex01").start().await;
    let gateway = https_gateway(&pki, &exchange, &[("/owa", "public"), ("/ecp", "deny")]).await;
    let addr = gateway.https.expect("https");

    for http2 in [false, true] {
        let client = client(&pki, &[HOST], addr, http2);
        for (method, path) in [
            ("GET", "/ecp/"),
            ("GET", "/ECP/default.aspx?p=PersonalSettings/Password.aspx"),
            ("POST", "/ecp/DDI/DDIService.svc/GetList"),
        ] {
            let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
            let response = client
                .request(
                    method.clone(),
                    format!("https://{HOST}:{}{path}", addr.port()),
                )
                .body("{}")
                .send()
                .await
                .expect("request");
            assert_eq!(response.status(), 403, "{method} {path}");
            assert_eq!(
                response.headers()["content-type"],
                "text/html; charset=utf-8"
            );
            assert_eq!(response.headers()["cache-control"], "no-store");
            let page = response.text().await.expect("page");
            assert!(page.contains("Access denied"), "{page}");
            assert!(page.contains("Error 403"), "{page}");
            assert_no_internals(&page, &exchange);
        }
    }
    assert!(exchange.user_requests().is_empty());
}

#[tokio::test]
async fn error_pages_say_what_happened_without_internal_detail() {
    let pki = TestPki::new();
    let exchange = FakeExchange::builder("ex01").start().await;
    let gateway = https_gateway(&pki, &exchange, &[("/owa", "public"), ("/ecp", "deny")]).await;
    let addr = gateway.https.expect("https");

    for (path, status) in [
        (
            "/ews/exchange.asmx?q=%3Cscript%3Ealert(1)%3C/script%3E",
            404,
        ),
        ("/ecp/", 403),
        ("/owa/%252e%252e/ews", 400),
    ] {
        let response = https_raw(
            &pki,
            addr,
            &format!("GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert_eq!(response.status, status, "{path}");
        let page = response.body_text();
        assert!(page.contains(&format!("Error {status}")), "{page}");
        for reflected in ["script", "exchange.asmx", "%25", "%3C"] {
            assert!(!page.contains(reflected), "request reflected: {page}");
        }
        assert_no_internals(&page, &exchange);
    }
}

#[tokio::test]
async fn stopped_exchange_gives_a_502_page_without_internal_details() {
    let pki = TestPki::new();
    let mut exchange = FakeExchange::builder("ex01").start().await;
    let gateway = https_gateway(&pki, &exchange, OWA_ONLY).await;
    let addr = gateway.https.expect("https");
    exchange.kill().await;
    assert!(
        TcpStream::connect(exchange.addr).await.is_err(),
        "the stopped Exchange must refuse connections"
    );

    let client = client(&pki, &[HOST], addr, false);
    // First the refused connection itself, then the server already marked unreachable.
    for attempt in 0..2 {
        let response = client
            .get(format!("https://{HOST}:{}/owa/", addr.port()))
            .send()
            .await
            .expect("the gateway answers even when Exchange does not");
        assert_eq!(
            response.status(),
            StatusCode::BAD_GATEWAY,
            "attempt {attempt}"
        );
        assert_eq!(
            response.headers()["content-type"],
            "text/html; charset=utf-8"
        );
        let page = response.text().await.expect("page");
        assert!(page.contains("Error 502"), "{page}");
        assert_no_internals(&page, &exchange);
    }
}

// ---------------------------------------------------------------------------------------------
// WebSocket

/// An Exchange that accepts a WebSocket upgrade and echoes every byte back.
async fn echoing_exchange() -> FakeExchange {
    FakeExchange::builder("ex01")
        .handler(|mut req: Request<Incoming>| async move {
            let asks = req
                .headers()
                .get(UPGRADE)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
            if !asks {
                return Response::builder()
                    .status(StatusCode::BAD_REQUEST)
                    .body(full("not an upgrade"))
                    .expect("response");
            }
            let upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let Ok(upgraded) = upgrade.await else { return };
                let mut io = TokioIo::new(upgraded);
                let mut buf = [0u8; 4096];
                loop {
                    let n = match io.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    if io.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
            Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header(CONNECTION, "Upgrade")
                .header(UPGRADE, "websocket")
                .header("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
                .body(full(""))
                .expect("response")
        })
        .start()
        .await
}

async fn upgrade_and_echo<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S) {
    let response = send(
        stream,
        b"GET /owa/notifications HTTP/1.1\r\n\
          Host: mail.contoso.com\r\n\
          Connection: Upgrade\r\n\
          Upgrade: websocket\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
          Sec-WebSocket-Version: 13\r\n\
          \r\n",
    )
    .await;
    assert_eq!(response.status, 101, "{response:?}");
    assert_eq!(response.header("upgrade"), Some("websocket"));
    assert_eq!(
        response.header("sec-websocket-accept"),
        Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
    );

    // Client frames are masked (RFC 6455 section 5.3): a text frame and a binary frame.
    let mut text = vec![0x81, 0x80 | 25, 0x11, 0x22, 0x33, 0x44];
    text.extend(
        b"hello through the gateway"
            .iter()
            .zip([0x11u8, 0x22, 0x33, 0x44].iter().cycle())
            .map(|(b, m)| b ^ m),
    );
    for message in [&text[..], &[0x82, 0x85, 0, 0, 0, 0, 1, 2, 3, 4, 5][..]] {
        stream.write_all(message).await.expect("write upgraded");
        let mut echoed = Vec::new();
        read_exact_or_eof(stream, &mut echoed, message.len()).await;
        assert_eq!(echoed, message, "echo through the upgraded connection");
    }
}

/// A route that forwards WebSocket upgrades (`websocket = true` on the last route).
fn with_websocket(toml: String) -> String {
    format!("{toml}websocket = true\n")
}

#[tokio::test]
async fn websocket_upgrade_passes_through_and_frames_flow_both_ways() {
    let exchange = echoing_exchange().await;
    let gateway = TestGateway::start(&with_websocket(
        Setup {
            cert: None,
            trusted_proxies: &[],
            routes: OWA_ONLY,
        }
        .toml(&exchange),
    ))
    .await;
    let mut stream = TcpStream::connect(gateway.http.expect("http"))
        .await
        .expect("connect");
    upgrade_and_echo(&mut stream).await;

    let seen = only_request(&exchange);
    let connection = values(&seen, "connection").join(",").to_ascii_lowercase();
    assert!(connection.contains("upgrade"), "{seen:#?}");
    assert_eq!(values(&seen, "upgrade"), vec!["websocket"]);
    assert_eq!(
        values(&seen, "sec-websocket-key"),
        vec!["dGhlIHNhbXBsZSBub25jZQ=="]
    );
}

#[tokio::test]
async fn websocket_upgrade_passes_through_over_https() {
    let pki = TestPki::new();
    let exchange = echoing_exchange().await;
    let cert = pki.issue(&[HOST]);
    let gateway = TestGateway::start(&with_websocket(
        Setup {
            cert: Some(&cert),
            trusted_proxies: &[],
            routes: OWA_ONLY,
        }
        .toml(&exchange),
    ))
    .await;
    let mut stream = tls_connect(&pki, gateway.https.expect("https")).await;
    upgrade_and_echo(&mut stream).await;
    assert_eq!(exchange.user_requests().len(), 1);
}
