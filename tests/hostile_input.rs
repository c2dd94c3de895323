//! What the gateway does with clients that attack the connection rather than the application:
//! slow heads (slowloris) and unfinished TLS handshakes, oversized heads, ambiguous message
//! framing (request smuggling), malformed request lines, garbage, oversized bodies, more
//! connections than allowed, and thousands of random request heads. Every test talks raw bytes
//! over a real socket with bounded waits; the gateway must answer with a 4xx or close, never
//! forward an ambiguous request to Exchange, and keep serving afterwards.

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use rustls::pki_types::ServerName;
use support::{full, wait_until, FakeExchange, GatewayProcess, IssuedCert, TestGateway, TestPki};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

const HOST: &str = "mail.contoso.com";
/// Longest wait for any single answer from the gateway.
const IO_LIMIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Gateways

struct Limits<'a> {
    cert: Option<&'a IssuedCert>,
    header_read_timeout: &'a str,
    max_connections: u32,
}

impl Default for Limits<'_> {
    fn default() -> Self {
        Limits {
            cert: None,
            header_read_timeout: "1s",
            max_connections: 1000,
        }
    }
}

fn gateway_toml(limits: &Limits<'_>, exchange: &FakeExchange, listen: &str) -> String {
    let mut toml = String::from("[server]\n");
    if limits.cert.is_some() {
        toml.push_str(&format!("https_listen = \"{listen}\"\n"));
    } else {
        toml.push_str(&format!("http_listen = \"{listen}\"\n"));
    }
    toml.push_str(&format!(
        "header_read_timeout = \"{}\"\nmax_header_bytes = 16384\nmax_connections = {}\n",
        limits.header_read_timeout, limits.max_connections
    ));
    if let Some(cert) = limits.cert {
        toml.push_str(&format!(
            "\n[[tls.certificates]]\ncert = \"{}\"\nkey = \"{}\"\n",
            cert.cert.display(),
            cert.key.display()
        ));
    }
    toml.push_str(&format!(
        "\n[upstreams.exchange]\nservers = [\"{}\"]\nmax_request_body = 1024\n\n\
         [[routes]]\nhost = \"{HOST}\"\npath = \"/owa\"\nupstream = \"exchange\"\naccess = \"public\"\n",
        exchange.url()
    ));
    toml
}

async fn plain_gateway(exchange: &FakeExchange, limits: Limits<'_>) -> (TestGateway, SocketAddr) {
    let gateway = TestGateway::start(&gateway_toml(&limits, exchange, "127.0.0.1:0")).await;
    let addr = gateway.http.expect("http listener");
    (gateway, addr)
}

/// A gateway serving HTTPS with `cert` and the defaults of [`Limits`] otherwise.
async fn https_gateway(exchange: &FakeExchange, cert: &IssuedCert) -> (TestGateway, SocketAddr) {
    let limits = Limits {
        cert: Some(cert),
        ..Limits::default()
    };
    let gateway = TestGateway::start(&gateway_toml(&limits, exchange, "127.0.0.1:0")).await;
    let addr = gateway.https.expect("https listener");
    (gateway, addr)
}

/// The body Exchange received for each request, or why it did not receive it whole.
type Bodies = Arc<Mutex<Vec<Result<usize, String>>>>;

/// An Exchange that reads every request body to the end and remembers how much arrived.
async fn body_reading_exchange() -> (FakeExchange, Bodies) {
    let bodies: Bodies = Arc::default();
    let recorded = bodies.clone();
    let exchange = FakeExchange::builder("ex01")
        .handler(move |req: Request<Incoming>| {
            let recorded = recorded.clone();
            async move {
                let outcome = match req.into_body().collect().await {
                    Ok(collected) => Ok(collected.to_bytes().len()),
                    Err(e) => Err(e.to_string()),
                };
                let text = format!("{outcome:?}");
                recorded.lock().expect("bodies").push(outcome);
                Response::builder().body(full(text)).expect("response")
            }
        })
        .start()
        .await;
    (exchange, bodies)
}

// ---------------------------------------------------------------------------------------------
// Raw connections

/// Writes `request` (while reading, so a gateway that answers early cannot stall the write)
/// and returns everything the gateway sent until it closed or `IO_LIMIT` passed.
async fn exchange_bytes<S>(stream: S, request: Vec<u8>, half_close: bool) -> Vec<u8>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut reader, mut writer) = tokio::io::split(stream);
    let writing = tokio::spawn(async move {
        let _ = writer.write_all(&request).await;
        if half_close {
            let _ = writer.shutdown().await;
        }
        writer
    });
    let mut answer = Vec::new();
    let mut chunk = [0u8; 8192];
    let deadline = Instant::now() + IO_LIMIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, reader.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => {
                answer.extend_from_slice(&chunk[..n]);
                // A complete response to a request that asked to close: stop early.
                if response_complete(&answer) {
                    break;
                }
            }
        }
    }
    writing.abort();
    answer
}

/// True once `answer` holds a head and a body of the announced Content-Length.
fn response_complete(answer: &[u8]) -> bool {
    let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&answer[..end]).to_ascii_lowercase();
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok());
    match length {
        Some(length) => answer.len() >= end + 4 + length,
        None => false,
    }
}

async fn plain_bytes(addr: SocketAddr, request: impl Into<Vec<u8>>) -> Vec<u8> {
    let stream = TcpStream::connect(addr).await.expect("connect");
    exchange_bytes(stream, request.into(), false).await
}

/// The status code of the first response in `answer`, if there is one.
fn status_of(answer: &[u8]) -> Option<u16> {
    let text = String::from_utf8_lossy(answer);
    let line = text.lines().next()?;
    let rest = line
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| line.strip_prefix("HTTP/1.0 "))?;
    rest.get(..3)?.parse().ok()
}

fn show(answer: &[u8]) -> String {
    String::from_utf8_lossy(&answer[..answer.len().min(400)]).into_owned()
}

async fn tls_connect(
    pki: &TestPki,
    addr: SocketAddr,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    TlsConnector::from(Arc::new(pki.rustls_client_config(&[b"http/1.1"])))
        .connect(ServerName::try_from(HOST).expect("name"), tcp)
        .await
        .expect("TLS handshake")
}

/// A normal request still gets served: the gateway survived whatever came before.
async fn assert_still_serving(addr: SocketAddr) {
    let answer = plain_bytes(
        addr,
        "GET /owa/ HTTP/1.1\r\nHost: mail.contoso.com\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(
        status_of(&answer),
        Some(200),
        "gateway no longer serves: {}",
        show(&answer)
    );
}

/// How the gateway ended a slow client.
#[derive(Debug)]
enum Ended {
    /// Closed (EOF or reset) after this long, having sent these bytes first.
    Closed(Duration, Vec<u8>),
    /// Still open when the test gave up.
    StillOpen,
}

/// Sends `head`, then one more byte every second, until the gateway closes the connection
/// (or `give_up` passes).
async fn trickle<S>(stream: S, head: &[u8], give_up: Duration) -> Ended
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let start = Instant::now();
    let (mut reader, mut writer) = tokio::io::split(stream);
    if writer.write_all(head).await.is_err() {
        return Ended::Closed(start.elapsed(), Vec::new());
    }
    let _ = writer.flush().await;
    let mut received = Vec::new();
    let mut chunk = [0u8; 1024];
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    loop {
        let left = give_up.saturating_sub(start.elapsed());
        if left.is_zero() {
            return Ended::StillOpen;
        }
        tokio::select! {
            read = reader.read(&mut chunk) => match read {
                Ok(0) | Err(_) => return Ended::Closed(start.elapsed(), received),
                Ok(n) => received.extend_from_slice(&chunk[..n]),
            },
            _ = tick.tick() => {
                // Ignore failures: a closed connection shows up on the read side.
                let _ = writer.write_all(b"x").await;
                let _ = writer.flush().await;
            }
            _ = tokio::time::sleep(left) => return Ended::StillOpen,
        }
    }
}

/// A slow client must be cut off within a few seconds of `header_read_timeout` (1s), with at
/// most a 408 before the close.
fn assert_cut_off(ended: Ended, what: &str) {
    match ended {
        Ended::Closed(after, received) => {
            assert!(
                after < Duration::from_secs(5),
                "{what}: closed only after {after:?}"
            );
            assert!(
                received.is_empty() || status_of(&received) == Some(408),
                "{what}: unexpected answer {}",
                show(&received)
            );
        }
        Ended::StillOpen => panic!("{what}: still open after 10s with header_read_timeout = 1s"),
    }
}

// ---------------------------------------------------------------------------------------------
// Slow clients

#[tokio::test]
async fn slowloris_trickling_a_request_head_is_cut_off_by_the_header_timeout() {
    let exchange = FakeExchange::builder("ex01").start().await;
    let (_gateway, addr) = plain_gateway(&exchange, Limits::default()).await;

    let stream = TcpStream::connect(addr).await.expect("connect");
    let ended = trickle(
        stream,
        b"GET /owa/ HTTP/1.1\r\nHost: mail.contoso.com\r\nX-Slow: ",
        Duration::from_secs(10),
    )
    .await;
    assert_cut_off(ended, "plain HTTP slowloris");
    assert!(exchange.user_requests().is_empty());
    assert_still_serving(addr).await;
}

#[tokio::test]
async fn slowloris_over_tls_is_cut_off_by_the_header_timeout() {
    let pki = TestPki::new();
    let cert = pki.issue(&[HOST]);
    let exchange = FakeExchange::builder("ex01").start().await;
    let (_gateway, addr) = https_gateway(&exchange, &cert).await;

    let stream = tls_connect(&pki, addr).await;
    let ended = trickle(
        stream,
        b"GET /owa/ HTTP/1.1\r\nHost: mail.contoso.com\r\nCookie: ",
        Duration::from_secs(10),
    )
    .await;
    assert_cut_off(ended, "HTTPS slowloris");
    assert!(exchange.user_requests().is_empty());
}

#[tokio::test]
async fn tls_handshake_that_never_completes_is_closed() {
    let pki = TestPki::new();
    let cert = pki.issue(&[HOST]);
    let exchange = FakeExchange::builder("ex01").start().await;
    let (_gateway, addr) = https_gateway(&exchange, &cert).await;

    // Silent after connecting.
    let silent = TcpStream::connect(addr).await.expect("connect");
    // A ClientHello record announced as 512 bytes, of which one arrives, then a byte a second.
    let partial = TcpStream::connect(addr).await.expect("connect");
    let (silent, partial) = tokio::join!(
        trickle(silent, b"", Duration::from_secs(10)),
        trickle(
            partial,
            &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01],
            Duration::from_secs(10)
        ),
    );
    assert_cut_off(silent, "silent TLS client");
    assert_cut_off(partial, "unfinished ClientHello");

    // Meanwhile and afterwards, real browsers get through.
    let mut stream = tls_connect(&pki, addr).await;
    stream
        .write_all(b"GET /owa/ HTTP/1.1\r\nHost: mail.contoso.com\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(IO_LIMIT, stream.read_to_end(&mut answer)).await;
    assert_eq!(status_of(&answer), Some(200), "{}", show(&answer));
}

#[tokio::test]
async fn idle_connection_that_never_sends_a_request_is_closed() {
    let exchange = FakeExchange::builder("ex01").start().await;
    let (_gateway, addr) = plain_gateway(&exchange, Limits::default()).await;

    let silent = TcpStream::connect(addr).await.expect("connect");
    assert_cut_off(
        trickle(silent, b"", Duration::from_secs(10)).await,
        "connection without a request",
    );

    // After one request on a keep-alive connection, waiting silently for the next one is
    // bounded by the same timer.
    let mut kept = TcpStream::connect(addr).await.expect("connect");
    kept.write_all(b"GET /owa/ HTTP/1.1\r\nHost: mail.contoso.com\r\n\r\n")
        .await
        .expect("write");
    let start = Instant::now();
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match tokio::time::timeout(IO_LIMIT, kept.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => answer.extend_from_slice(&chunk[..n]),
            Err(_) => panic!("idle keep-alive connection still open after {IO_LIMIT:?}"),
        }
    }
    assert_eq!(status_of(&answer), Some(200), "{}", show(&answer));
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "idle keep-alive connection closed only after {:?}",
        start.elapsed()
    );
}

// ---------------------------------------------------------------------------------------------
// Oversized heads

#[tokio::test]
async fn request_head_over_max_header_bytes_gets_431() {
    let exchange = FakeExchange::builder("ex01").start().await;
    let (_gateway, addr) = plain_gateway(&exchange, Limits::default()).await;

    // One 100 KB header.
    let big = format!(
        "GET /owa/ HTTP/1.1\r\nHost: mail.contoso.com\r\nX-Big: {}\r\n\r\n",
        "a".repeat(100 * 1024)
    );
    let answer = plain_bytes(addr, big).await;
    assert_eq!(status_of(&answer), Some(431), "{}", show(&answer));

    // Many ordinary headers adding up to more than the limit.
    let mut many = String::from("GET /owa/ HTTP/1.1\r\nHost: mail.contoso.com\r\n");
    for i in 0..90 {
        many.push_str(&format!("X-Filler-{i}: {}\r\n", "b".repeat(200)));
    }
    many.push_str("\r\n");
    assert!(many.len() > 16384);
    let answer = plain_bytes(addr, many).await;
    assert_eq!(status_of(&answer), Some(431), "{}", show(&answer));

    assert!(exchange.user_requests().is_empty());

    // A large but allowed head (OWA's cookies grow) still passes.
    let allowed = format!(
        "GET /owa/ HTTP/1.1\r\nHost: mail.contoso.com\r\nCookie: X-BackEndCookie={}\r\nConnection: close\r\n\r\n",
        "c".repeat(10 * 1024)
    );
    let answer = plain_bytes(addr, allowed).await;
    assert_eq!(status_of(&answer), Some(200), "{}", show(&answer));
}

// ---------------------------------------------------------------------------------------------
// Ambiguous framing (request smuggling)

/// Sends each request on its own connection; collects every one that was not refused with one
/// of `refusals`, then checks that none reached Exchange.
async fn assert_all_refused(
    addr: SocketAddr,
    exchange: &FakeExchange,
    cases: &[(&str, String)],
    refusals: &[u16],
) {
    let mut accepted = Vec::new();
    for (name, request) in cases {
        let answer = plain_bytes(addr, request.as_bytes().to_vec()).await;
        let status = status_of(&answer);
        if !status.is_some_and(|s| refusals.contains(&s)) {
            accepted.push(format!("{name}: answered {status:?}: {}", show(&answer)));
        }
    }
    let reached: Vec<String> = exchange
        .user_requests()
        .into_iter()
        .map(|r| format!("{} {} {:?}", r.method, r.uri, r.headers))
        .collect();
    assert!(
        accepted.is_empty() && reached.is_empty(),
        "expected every request refused with one of {refusals:?} and none forwarded.\n\
         not refused:\n  {}\nreached Exchange:\n  {}",
        accepted.join("\n  "),
        reached.join("\n  ")
    );
}

/// hyper, the HTTP/1 parser, drops `Content-Length` when `Transfer-Encoding` is present before
/// the gateway sees the request, so a 400 cannot be given. What RFC 9112 section 6.3 requires of
/// an intermediary is checked instead: the message is framed by `Transfer-Encoding` alone,
/// Exchange never receives the conflicting `Content-Length`, the connection is closed after the
/// response, and the request smuggled in the body never reaches Exchange.
#[tokio::test]
async fn content_length_together_with_chunked_cannot_smuggle_a_request_to_exchange() {
    let exchange = FakeExchange::builder("ex01").start().await;
    let (_gateway, addr) = plain_gateway(&exchange, Limits::default()).await;

    let smuggled = "0\r\n\r\nGET /ews/exchange.asmx HTTP/1.1\r\nHost: mail.contoso.com\r\n\r\n";
    let cases = [
        (
            "Content-Length then Transfer-Encoding",
            format!(
                "POST /owa/service.svc HTTP/1.1\r\nHost: mail.contoso.com\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n{smuggled}",
                smuggled.len()
            ),
        ),
        (
            "Transfer-Encoding then Content-Length",
            format!(
                "POST /owa/service.svc HTTP/1.1\r\nHost: mail.contoso.com\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n{smuggled}"
            ),
        ),
    ];
    for (name, request) in &cases {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream.write_all(request.as_bytes()).await.expect("write");
        // Read until the gateway closes: a keep-alive connection here would let the smuggled
        // request be read as the next one.
        let mut answer = Vec::new();
        let closed = tokio::time::timeout(IO_LIMIT, stream.read_to_end(&mut answer)).await;
        assert!(
            closed.is_ok(),
            "{name}: the gateway kept the connection open after a message with both framings"
        );
        let responses = answer.windows(9).filter(|w| w == b"HTTP/1.1 ").count();
        assert_eq!(
            responses,
            1,
            "{name}: expected exactly one response, got:\n{}",
            show(&answer)
        );
    }
    let reached = exchange.user_requests();
    assert!(
        reached
            .iter()
            .all(|r| !r.uri.to_ascii_lowercase().contains("/ews")),
        "the smuggled request reached Exchange: {reached:?}"
    );
    for request in &reached {
        assert!(
            !request.headers.contains_key("content-length"),
            "Exchange received the conflicting Content-Length: {request:?}"
        );
    }
    assert_still_serving(addr).await;
}

#[tokio::test]
async fn differing_content_lengths_are_refused_with_400() {
    let exchange = FakeExchange::builder("ex01").start().await;
    let (_gateway, addr) = plain_gateway(&exchange, Limits::default()).await;

    let post = |lengths: &str| {
        format!("POST /owa/service.svc HTTP/1.1\r\nHost: mail.contoso.com\r\n{lengths}\r\n12345678")
    };
    let cases = [
        (
            "two headers",
            post("Content-Length: 4\r\nContent-Length: 8\r\n"),
        ),
        ("a list", post("Content-Length: 4, 8\r\n")),
        ("a signed length", post("Content-Length: +8\r\n")),
        ("a hexadecimal length", post("Content-Length: 0x8\r\n")),
        ("a negative length", post("Content-Length: -1\r\n")),
    ];
    assert_all_refused(addr, &exchange, &cases, &[400]).await;
    assert_still_serving(addr).await;
}

#[tokio::test]
async fn transfer_encodings_other_than_plain_chunked_are_refused() {
    let exchange = FakeExchange::builder("ex01").start().await;
    let (_gateway, addr) = plain_gateway(&exchange, Limits::default()).await;

    let post = |encoding: &str| {
        format!("POST /owa/service.svc HTTP/1.1\r\nHost: mail.contoso.com\r\n{encoding}\r\n5\r\nhello\r\n0\r\n\r\n")
    };
    let cases = [
        ("gzip, chunked", post("Transfer-Encoding: gzip, chunked\r\n")),
        ("chunked, chunked", post("Transfer-Encoding: chunked, chunked\r\n")),
        ("identity, chunked", post("Transfer-Encoding: identity, chunked\r\n")),
        (
            "gzip and chunked on two lines",
            post("Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n"),
        ),
        ("xchunked", post("Transfer-Encoding: xchunked\r\n")),
        ("chunked then identity", post("Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n")),
        (
            "Transfer-Encoding in HTTP/1.0",
            "POST /owa/service.svc HTTP/1.0\r\nHost: mail.contoso.com\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".to_owned(),
        ),
    ];
    // 400, or 501 (RFC 9112: a transfer coding the server does not implement).
    assert_all_refused(addr, &exchange, &cases, &[400, 501]).await;
    assert_still_serving(addr).await;
}

#[tokio::test]
async fn obsolete_line_folding_is_refused_with_400() {
    let exchange = FakeExchange::builder("ex01").start().await;
    let (_gateway, addr) = plain_gateway(&exchange, Limits::default()).await;

    let cases = [
        (
            "folded custom header",
            "GET /owa/ HTTP/1.1\r\nHost: mail.contoso.com\r\nX-Folded: first\r\n second\r\n\r\n".to_owned(),
        ),
        (
            "folded Transfer-Encoding",
            "POST /owa/ HTTP/1.1\r\nHost: mail.contoso.com\r\nContent-Length: 5\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n".to_owned(),
        ),
        (
            "tab-folded Host",
            "GET /owa/ HTTP/1.1\r\nHost: mail.contoso.com\r\n\tevil.example\r\n\r\n".to_owned(),
        ),
    ];
    assert_all_refused(addr, &exchange, &cases, &[400]).await;
    assert_still_serving(addr).await;
}

#[tokio::test]
async fn malformed_request_lines_get_400() {
    let exchange = FakeExchange::builder("ex01").start().await;
    let (_gateway, addr) = plain_gateway(&exchange, Limits::default()).await;

    let with_host = |line: &str| format!("{line}\r\nHost: mail.contoso.com\r\n\r\n");
    let cases = [
        ("extra field", with_host("GET /owa/ HTTP/1.1 extra")),
        ("space in method", with_host("G ET /owa/ HTTP/1.1")),
        ("no target", with_host("GET HTTP/1.1")),
        ("not HTTP", with_host("GET /owa/ HTCPCP/1.0")),
        ("NUL in the target", with_host("GET /owa/\0 HTTP/1.1")),
        (
            "raw space in the target",
            with_host("GET /owa/a b HTTP/1.1"),
        ),
        ("DEL in the target", with_host("GET /owa/\x7f HTTP/1.1")),
        (
            "header without a colon",
            with_host("GET /owa/ HTTP/1.1\r\nNoColonHere"),
        ),
        (
            "space before the colon",
            with_host("GET /owa/ HTTP/1.1\r\nHost : evil.example"),
        ),
        ("no Host", "GET /owa/ HTTP/1.1\r\n\r\n".to_owned()),
        (
            "two Hosts",
            "GET /owa/ HTTP/1.1\r\nHost: mail.contoso.com\r\nHost: evil.example\r\n\r\n".to_owned(),
        ),
        ("target without a slash", with_host("GET owa/ HTTP/1.1")),
    ];
    assert_all_refused(addr, &exchange, &cases, &[400]).await;
    assert_still_serving(addr).await;
}

#[tokio::test]
async fn garbage_bytes_get_400_or_a_closed_connection_and_the_gateway_keeps_serving() {
    let exchange = FakeExchange::builder("ex01").start().await;
    let (_gateway, addr) = plain_gateway(&exchange, Limits::default()).await;

    let mut random = Prng(0x5eed_1234_abcd_0001);
    let mut garbage: Vec<Vec<u8>> = vec![
        vec![0u8; 4096],
        vec![0xff; 4096],
        b"\r\n\r\n\r\n\r\n".to_vec(),
        // A TLS ClientHello on the plain port.
        vec![
            0x16, 0x03, 0x01, 0x00, 0x05, 0x01, 0x00, 0x00, 0x01, 0x00, b'\r', b'\n', b'\r', b'\n',
        ],
    ];
    for _ in 0..5 {
        garbage.push(random.bytes(4096));
    }
    for bytes in garbage {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let answer = exchange_bytes(stream, bytes.clone(), true).await;
        let status = status_of(&answer);
        assert!(
            answer.is_empty() || matches!(status, Some(400..=499)),
            "garbage {:02x?}… answered {}",
            &bytes[..16.min(bytes.len())],
            show(&answer)
        );
    }
    assert!(exchange.user_requests().is_empty());
    assert_still_serving(addr).await;
}

// ---------------------------------------------------------------------------------------------
// Bodies

#[tokio::test]
async fn body_larger_than_max_request_body_with_content_length_gets_413_and_exchange_sees_nothing()
{
    let (exchange, bodies) = body_reading_exchange().await;
    let (_gateway, addr) = plain_gateway(&exchange, Limits::default()).await;

    let mut request = b"POST /owa/service.svc?action=CreateAttachment HTTP/1.1\r\nHost: mail.contoso.com\r\nContent-Length: 4096\r\nConnection: close\r\n\r\n".to_vec();
    request.extend_from_slice(&[b'a'; 4096]);
    let answer = plain_bytes(addr, request).await;
    assert_eq!(status_of(&answer), Some(413), "{}", show(&answer));
    assert!(
        String::from_utf8_lossy(&answer).contains("Error 413"),
        "{}",
        show(&answer)
    );
    assert!(exchange.user_requests().is_empty());

    // Exactly the limit passes whole.
    let mut request = b"POST /owa/service.svc?action=CreateAttachment HTTP/1.1\r\nHost: mail.contoso.com\r\nContent-Length: 1024\r\nConnection: close\r\n\r\n".to_vec();
    request.extend_from_slice(&[b'a'; 1024]);
    let answer = plain_bytes(addr, request).await;
    assert_eq!(status_of(&answer), Some(200), "{}", show(&answer));
    assert_eq!(*bodies.lock().expect("bodies"), vec![Ok(1024)]);
}

#[tokio::test]
async fn chunked_body_over_max_request_body_never_fully_reaches_exchange() {
    let (exchange, bodies) = body_reading_exchange().await;
    let (_gateway, addr) = plain_gateway(&exchange, Limits::default()).await;

    let mut request = b"POST /owa/service.svc?action=CreateAttachment HTTP/1.1\r\nHost: mail.contoso.com\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
    for _ in 0..8 {
        request.extend_from_slice(b"200\r\n");
        request.extend_from_slice(&[b'a'; 512]);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    let answer = plain_bytes(addr, request).await;

    // Exchange finishes with whatever part of the request it got: the gateway ends or breaks
    // the upstream body, never leaves it hanging.
    assert!(
        wait_until(Duration::from_secs(5), || async {
            bodies.lock().expect("bodies").len() >= exchange.user_requests().len()
        })
        .await,
        "Exchange is still reading a body the gateway refused: {:?}",
        exchange.user_requests()
    );
    let received = bodies.lock().expect("bodies").clone();
    assert!(
        received.iter().all(|r| !matches!(r, Ok(n) if *n > 1024)),
        "Exchange received a body over max_request_body: {received:?}"
    );
    assert_eq!(
        status_of(&answer),
        Some(413),
        "the browser should learn its upload was too large, not see an Exchange failure: {}",
        show(&answer)
    );
    assert_still_serving(addr).await;
}

// ---------------------------------------------------------------------------------------------
// Connection limit

#[tokio::test]
async fn connection_over_max_connections_waits_until_another_closes() {
    let exchange = FakeExchange::builder("ex01").start().await;
    let (_gateway, addr) = plain_gateway(
        &exchange,
        Limits {
            // Long enough that the held connections are not closed as idle during the test.
            header_read_timeout: "30s",
            max_connections: 2,
            ..Limits::default()
        },
    )
    .await;
    let request = b"GET /owa/ HTTP/1.1\r\nHost: mail.contoso.com\r\n\r\n";

    async fn served(stream: &mut TcpStream, request: &[u8]) -> Vec<u8> {
        stream.write_all(request).await.expect("write");
        let mut answer = Vec::new();
        let mut chunk = [0u8; 4096];
        while !response_complete(&answer) {
            match tokio::time::timeout(IO_LIMIT, stream.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(n)) => answer.extend_from_slice(&chunk[..n]),
                Err(_) => panic!("no response within {IO_LIMIT:?}"),
            }
        }
        answer
    }

    // Two keep-alive connections, each served once and then held open.
    let mut first = TcpStream::connect(addr).await.expect("connect");
    let mut second = TcpStream::connect(addr).await.expect("connect");
    assert_eq!(status_of(&served(&mut first, request).await), Some(200));
    assert_eq!(status_of(&served(&mut second, request).await), Some(200));

    // The third is accepted by the kernel but not served while both slots are taken.
    let mut third = TcpStream::connect(addr).await.expect("connect");
    third.write_all(request).await.expect("write");
    let mut chunk = [0u8; 4096];
    let early = tokio::time::timeout(Duration::from_millis(1500), third.read(&mut chunk)).await;
    assert!(
        early.is_err(),
        "a third connection was served (or closed) while two were held: {early:?}"
    );

    // Closing one frees a slot: the waiting request is now answered.
    drop(first);
    let mut answer = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !response_complete(&answer) {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, third.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => answer.extend_from_slice(&chunk[..n]),
            Err(_) => panic!("the third connection was not served within 5s of a slot freeing"),
        }
    }
    assert_eq!(status_of(&answer), Some(200), "{}", show(&answer));

    // The second connection was never disturbed.
    assert_eq!(status_of(&served(&mut second, request).await), Some(200));
    assert_eq!(exchange.user_requests().len(), 4);
}

// ---------------------------------------------------------------------------------------------
// Random request heads against the real binary

/// xorshift64*: deterministic, so a failure can be replayed.
struct Prng(u64);

impl Prng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

const SEED_REQUESTS: [&str; 4] = [
    "GET /owa/?ae=Folder&t=IPF.Note HTTP/1.1\r\nHost: mail.contoso.com\r\nCookie: X-OWA-CANARY=abc\r\nConnection: close\r\n\r\n",
    "POST /owa/service.svc?action=GetItem HTTP/1.1\r\nHost: mail.contoso.com\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "GET /owa/..%5cews/exchange.asmx HTTP/1.1\r\nHost: mail.contoso.com:443\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    "OPTIONS * HTTP/1.1\r\nHost: [::1]:443\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc",
];

/// A request head: fully random bytes, or a real request with bytes flipped, inserted,
/// deleted or lines duplicated.
fn hostile_head(random: &mut Prng) -> Vec<u8> {
    const NASTY: &[u8] = b"\r\n\0 :\t%/\\.\x7f\xff\xc0,;=\"";
    match random.below(4) {
        0 => {
            let len = random.below(2048);
            let mut bytes = random.bytes(len);
            if random.below(2) == 0 {
                bytes.extend_from_slice(b"\r\n\r\n");
            }
            bytes
        }
        _ => {
            let mut bytes = SEED_REQUESTS[random.below(SEED_REQUESTS.len())]
                .as_bytes()
                .to_vec();
            for _ in 0..1 + random.below(8) {
                let at = random.below(bytes.len() + 1);
                match random.below(5) {
                    0 if at < bytes.len() => bytes[at] = random.next() as u8,
                    1 => bytes.insert(at, NASTY[random.below(NASTY.len())]),
                    2 if at < bytes.len() => {
                        let end = (at + random.below(16)).min(bytes.len());
                        bytes.drain(at..end);
                    }
                    3 => {
                        let line = SEED_REQUESTS[random.below(SEED_REQUESTS.len())]
                            .split("\r\n")
                            .nth(1)
                            .unwrap_or_default();
                        let mut inserted = line.as_bytes().to_vec();
                        inserted.extend_from_slice(b"\r\n");
                        bytes.splice(at..at, inserted);
                    }
                    _ => {
                        let digits = format!("{}", random.next());
                        bytes.splice(at..at, digits.bytes());
                    }
                }
            }
            bytes
        }
    }
}

#[tokio::test]
async fn thousands_of_random_request_heads_never_crash_the_gateway() {
    let exchange = FakeExchange::builder("ex01").start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let limits = Limits {
        header_read_timeout: "2s",
        ..Limits::default()
    };
    let (mut process, ports) = GatewayProcess::start(dir.path(), &[], |ports| {
        gateway_toml(&limits, &exchange, &format!("127.0.0.1:{}", ports.http))
    })
    .await;
    let addr = SocketAddr::from(([127, 0, 0, 1], ports.http));

    const HEADS: usize = 3000;
    const PARALLEL: usize = 16;
    let mut random = Prng(0x0123_4567_89ab_cdef);
    let heads: Vec<Vec<u8>> = (0..HEADS).map(|_| hostile_head(&mut random)).collect();
    let heads = Arc::new(heads);
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..PARALLEL {
        let heads = heads.clone();
        workers.spawn(async move {
            let mut bad = Vec::new();
            for i in (worker..heads.len()).step_by(PARALLEL) {
                let Ok(stream) = TcpStream::connect(addr).await else {
                    bad.push(format!("#{i}: connection refused: the gateway is gone"));
                    break;
                };
                let answer = exchange_bytes(stream, heads[i].clone(), true).await;
                if answer.is_empty() {
                    continue;
                }
                match status_of(&answer) {
                    Some(status) if status != 500 => {}
                    _ => bad.push(format!(
                        "#{i} {:?} → {}",
                        String::from_utf8_lossy(&heads[i][..heads[i].len().min(120)]),
                        show(&answer)
                    )),
                }
            }
            bad
        });
    }
    let mut bad = Vec::new();
    while let Some(result) = workers.join_next().await {
        bad.extend(result.expect("worker"));
    }

    assert!(
        process.child.try_wait().expect("process state").is_none(),
        "the gateway exited; log:\n{}",
        process.log()
    );
    assert!(
        bad.is_empty(),
        "{} malformed or failed answers, first ones:\n{}",
        bad.len(),
        bad[..bad.len().min(10)].join("\n")
    );
    let log = process.log();
    assert!(
        !log.contains("panicked"),
        "the gateway panicked:\n{}",
        log.lines()
            .filter(|l| l.contains("panicked"))
            .take(5)
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_still_serving(addr).await;
    assert!(process.wait_exit(Duration::from_millis(10)).await.is_none());
}

#[tokio::test]
async fn load_balancer_probe_without_a_host_header_gets_the_health_answer() {
    let exchange = FakeExchange::builder("ex01").start().await;
    let (_gateway, addr) = plain_gateway(&exchange, Limits::default()).await;
    // HAProxy's plain `option httpchk` sends HTTP/1.0 with no Host header.
    let answer = plain_bytes(addr, b"GET /_gateway/health HTTP/1.0\r\n\r\n".to_vec()).await;
    assert_eq!(status_of(&answer), Some(200), "{}", show(&answer));
    assert!(String::from_utf8_lossy(&answer).ends_with("ready\n"));
    // Anything else without a Host header is still refused.
    let answer = plain_bytes(addr, b"GET /owa/ HTTP/1.0\r\n\r\n".to_vec()).await;
    assert_eq!(status_of(&answer), Some(400), "{}", show(&answer));
    assert!(exchange.user_requests().is_empty());
}

/// Opens TLS with ALPN `h2` and sends nothing, not even the HTTP/2 connection preface.
async fn silent_http2(
    pki: &TestPki,
    addr: SocketAddr,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let stream = TlsConnector::from(Arc::new(pki.rustls_client_config(&[b"h2"])))
        .connect(ServerName::try_from(HOST).expect("name"), tcp)
        .await
        .expect("TLS handshake");
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    stream
}

/// Reads (the server's SETTINGS frame may come) until the gateway closes the connection;
/// how long that took, or `None` if it was still open after `IO_LIMIT`.
async fn until_closed<S: AsyncRead + Unpin>(stream: &mut S) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 1024];
    tokio::time::timeout(IO_LIMIT, async {
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await
    .ok()
    .map(|()| start.elapsed())
}

#[tokio::test]
async fn http2_client_that_never_sends_its_preface_is_closed_after_the_header_timeout() {
    let pki = TestPki::new();
    let cert = pki.issue(&[HOST]);
    let exchange = FakeExchange::builder("ex01").start().await;
    let (_gateway, addr) = https_gateway(&exchange, &cert).await;

    let mut silent = silent_http2(&pki, addr).await;
    let after = until_closed(&mut silent)
        .await
        .expect("still open after 10 s with header_read_timeout = 1s");
    assert!(
        after < Duration::from_secs(5),
        "closed only after {after:?}"
    );
    assert!(exchange.user_requests().is_empty());
}

#[tokio::test]
async fn a_connection_that_brought_no_request_does_not_hold_up_shutdown() {
    let pki = TestPki::new();
    let cert = pki.issue(&[HOST]);
    let exchange = FakeExchange::builder("ex01").start().await;
    let limits = Limits {
        cert: Some(&cert),
        header_read_timeout: "30s",
        ..Limits::default()
    };
    let toml = gateway_toml(&limits, &exchange, "127.0.0.1:0")
        .replace("[server]\n", "[server]\nshutdown_grace = \"20s\"\n");
    let gateway = TestGateway::start(&toml).await;
    let addr = gateway.https.expect("https listener");

    let mut silent = silent_http2(&pki, addr).await;
    let start = Instant::now();
    gateway.shutdown().await;
    let drained = start.elapsed();
    assert!(
        drained < Duration::from_secs(3),
        "the drain waited {drained:?} for a connection without a request"
    );
    assert!(
        until_closed(&mut silent).await.is_some(),
        "the silent connection is still open after the drain"
    );
}
