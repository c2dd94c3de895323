//! What an attacker without an account can try against the gateway's own endpoints and its
//! connection handling: bodies announced and never sent, HTTP/2 connections kept idle, slow
//! uploads, request heads just over the limit, protocol upgrades that would turn into an
//! unchecked tunnel, Exchange's sign-out hidden behind path variants, gateway endpoints under a
//! made-up Host, a sign-out forged from another site, and request targets with raw multi-byte
//! UTF-8. Every test talks over a real socket with bounded waits.

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::{
    start_provider, Browser, FakeExchange, SignInConfig, TestClock, TestGateway, MAIL_HOST,
    SESSION_COOKIE, XHR,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Longest wait for any single answer from the gateway.
const IO_LIMIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Fixtures

/// A gateway with sign-in (test provider, fake Exchange) whose `[server]` section also holds
/// `server_extra`.
struct SignedWorld {
    provider: mfa_gateway::demo::TestProvider,
    _exchange: FakeExchange,
    gateway: TestGateway,
    addr: SocketAddr,
}

async fn signed_world(server_extra: &str) -> SignedWorld {
    let provider = start_provider().await;
    let exchange = FakeExchange::builder("ex01").start().await;
    let toml = SignInConfig::new(&provider, &exchange).toml().replacen(
        "http_listen = \"127.0.0.1:0\"\n",
        &format!("http_listen = \"127.0.0.1:0\"\n{server_extra}\n"),
        1,
    );
    let gateway = TestGateway::start_with_clock(&toml, TestClock::new().clock()).await;
    gateway.wait_ready().await;
    let addr = gateway.http.expect("http listener");
    SignedWorld {
        provider,
        _exchange: exchange,
        gateway,
        addr,
    }
}

/// A gateway publishing `/owa` publicly (and `/ws` with WebSocket upgrades allowed) to
/// `upstream`, with `server_extra` in `[server]`.
async fn public_gateway(upstream: &str, server_extra: &str) -> (TestGateway, SocketAddr) {
    let toml = format!(
        "[server]\nhttp_listen = \"127.0.0.1:0\"\n{server_extra}\n\n\
         [upstreams.exchange]\nservers = [\"{upstream}\"]\n\n\
         [[routes]]\nhost = \"{MAIL_HOST}\"\npath = \"/owa\"\nupstream = \"exchange\"\naccess = \"public\"\n\n\
         [[routes]]\nhost = \"{MAIL_HOST}\"\npath = \"/ws\"\nupstream = \"exchange\"\naccess = \"public\"\nwebsocket = true\n"
    );
    let gateway = TestGateway::start(&toml).await;
    let addr = gateway.http.expect("http listener");
    (gateway, addr)
}

/// Sends `request` and returns what the gateway sent until it closed, a complete response
/// arrived, or `IO_LIMIT` passed — and how long that took.
async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> (Vec<u8>, Duration) {
    let start = Instant::now();
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("write");
    let answer = read_answer(&mut stream).await;
    (answer, start.elapsed())
}

async fn read_answer(stream: &mut TcpStream) -> Vec<u8> {
    let mut answer = Vec::new();
    let mut chunk = [0u8; 8192];
    let deadline = Instant::now() + IO_LIMIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => {
                answer.extend_from_slice(&chunk[..n]);
                if response_complete(&answer) {
                    break;
                }
            }
        }
    }
    answer
}

fn response_complete(answer: &[u8]) -> bool {
    let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&answer[..end]).to_ascii_lowercase();
    if head.starts_with("http/1.1 101") {
        return true;
    }
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok());
    length.is_some_and(|length| answer.len() >= end + 4 + length)
}

fn status_of(answer: &[u8]) -> Option<u16> {
    let text = String::from_utf8_lossy(answer);
    let line = text.lines().next()?;
    line.strip_prefix("HTTP/1.1 ")
        .or_else(|| line.strip_prefix("HTTP/1.0 "))?
        .get(..3)?
        .parse()
        .ok()
}

fn show(answer: &[u8]) -> String {
    String::from_utf8_lossy(&answer[..answer.len().min(400)]).into_owned()
}

/// An HTTP/2 connection (prior knowledge) to the gateway's plain listener; the task driving it
/// is returned so a test can see when the gateway closes it.
async fn http2_connection(
    addr: SocketAddr,
) -> (
    hyper::client::conn::http2::SendRequest<
        http_body_util::combinators::BoxBody<Bytes, std::io::Error>,
    >,
    tokio::task::JoinHandle<Result<(), hyper::Error>>,
) {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (send, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(hyper_util::rt::TokioTimer::new())
        .handshake(TokioIo::new(stream))
        .await
        .expect("HTTP/2 handshake");
    (send, tokio::spawn(connection))
}

fn empty_body() -> http_body_util::combinators::BoxBody<Bytes, std::io::Error> {
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed()
}

// ---------------------------------------------------------------------------------------------
// 1. Bodies the gateway reads itself

#[tokio::test]
async fn callback_bodies_that_never_arrive_cannot_hold_the_connection_slots() {
    let w = signed_world("header_read_timeout = \"1s\"\nmax_connections = 20").await;
    // Twenty connections fill the gateway, each announcing a form_post answer it never sends.
    let head = format!(
        "POST /_gateway/callback HTTP/1.1\r\nHost: {MAIL_HOST}\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 8000\r\n\r\ncode="
    );
    let mut stalled = Vec::new();
    for _ in 0..20 {
        let addr = w.addr;
        let head = head.clone();
        stalled.push(tokio::spawn(async move {
            raw_exchange(addr, head.as_bytes()).await
        }));
    }
    for task in stalled {
        let (answer, took) = task.await.expect("task");
        assert_eq!(
            status_of(&answer),
            Some(408),
            "a body that does not arrive within header_read_timeout gets 408: {}",
            show(&answer)
        );
        assert!(
            took < Duration::from_secs(5),
            "answered only after {took:?}"
        );
    }
    // The slots are free again: the load balancer's probe is answered.
    let (answer, _) = raw_exchange(
        w.addr,
        format!("GET /_gateway/health HTTP/1.1\r\nHost: {MAIL_HOST}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await;
    assert_eq!(status_of(&answer), Some(200), "{}", show(&answer));
}

#[tokio::test]
async fn callback_body_announced_larger_than_a_sign_in_answer_is_refused_unread() {
    let w = signed_world("").await;
    let (answer, _) = raw_exchange(
        w.addr,
        format!(
            "POST /_gateway/callback HTTP/1.1\r\nHost: {MAIL_HOST}\r\n\
             Content-Length: 65536\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(status_of(&answer), Some(413), "{}", show(&answer));
}

#[tokio::test]
async fn one_http2_connection_cannot_make_the_gateway_buffer_hundreds_of_callback_bodies() {
    let w = signed_world("header_read_timeout = \"1s\"").await;
    let (mut send, _connection) = http2_connection(w.addr).await;
    // Each stream sends 8 KiB of form and then nothing, never ending its body.
    let mut senders = Vec::new();
    let mut answers = Vec::new();
    for _ in 0..40 {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(2);
        tx.send(Ok(Frame::data(Bytes::from(vec![b'a'; 8 * 1024]))))
            .await
            .expect("queued");
        senders.push(tx);
        let body = StreamBody::new(tokio_stream_from(rx)).boxed();
        let request = Request::post(format!("http://{MAIL_HOST}/_gateway/callback"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .expect("request");
        send.ready().await.expect("connection usable");
        answers.push(send.send_request(request));
    }
    let start = Instant::now();
    let mut busy = 0;
    let mut timed_out = 0;
    for answer in answers {
        let response = tokio::time::timeout(IO_LIMIT, answer)
            .await
            .expect("every stream is answered in time")
            .expect("response");
        match response.status() {
            StatusCode::TOO_MANY_REQUESTS => busy += 1,
            StatusCode::REQUEST_TIMEOUT => timed_out += 1,
            other => panic!("unexpected status {other}"),
        }
    }
    assert!(start.elapsed() < Duration::from_secs(5));
    // At most four bodies are read at once per connection; the rest are refused at once.
    assert!(timed_out <= 4, "{timed_out} bodies were read concurrently");
    assert_eq!(busy + timed_out, 40);
    drop(senders);
}

/// The receiving half of a channel as a stream of body frames.
fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, std::io::Error>>,
) -> impl futures_util::Stream<Item = Result<Frame<Bytes>, std::io::Error>> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

// ---------------------------------------------------------------------------------------------
// 2. Idle HTTP/2 connections and slow uploads

#[tokio::test]
async fn http2_connection_left_idle_after_a_request_is_closed_with_goaway() {
    let exchange = FakeExchange::builder("ex01").start().await;
    let (_gateway, addr) = public_gateway(&exchange.url(), "header_read_timeout = \"1s\"").await;
    let (mut send, connection) = http2_connection(addr).await;
    let request = Request::get(format!("http://{MAIL_HOST}/owa/"))
        .body(empty_body())
        .expect("request");
    let response = send.send_request(request).await.expect("response");
    assert_eq!(response.status(), StatusCode::OK);
    let _ = response.into_body().collect().await;
    // The client keeps the connection and would answer pings for ever; the gateway must close
    // it after header_read_timeout without a request.
    let closed = tokio::time::timeout(Duration::from_secs(6), connection).await;
    assert!(
        closed.is_ok(),
        "an idle HTTP/2 connection is still open 6 s after its last request with header_read_timeout = 1s"
    );
}

#[tokio::test]
async fn upload_that_stalls_is_cut_off_after_request_body_timeout_not_exchanges_idle_timeout() {
    let received: Arc<Mutex<Vec<String>>> = Arc::default();
    let recorded = received.clone();
    let exchange = FakeExchange::builder("ex01")
        .handler(move |req: Request<hyper::body::Incoming>| {
            let recorded = recorded.clone();
            async move {
                let outcome = match req.into_body().collect().await {
                    Ok(body) => format!("whole {}", body.to_bytes().len()),
                    Err(e) => format!("cut: {e}"),
                };
                recorded.lock().expect("lock").push(outcome);
                http::Response::new(support::full("done"))
            }
        })
        .start()
        .await;
    let (_gateway, addr) = public_gateway(&exchange.url(), "request_body_timeout = \"1s\"").await;
    let (answer, took) = raw_exchange(
        addr,
        format!(
            "POST /owa/upload HTTP/1.1\r\nHost: {MAIL_HOST}\r\nContent-Length: 100000\r\n\r\nfirst bytes"
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(status_of(&answer), Some(408), "{}", show(&answer));
    assert!(took < Duration::from_secs(5), "cut off only after {took:?}");
    let deadline = Instant::now() + IO_LIMIT;
    while received.lock().expect("lock").is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seen = received.lock().expect("lock").clone();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(
        seen[0].starts_with("cut"),
        "Exchange saw a whole body: {seen:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// 5. max_header_bytes, exactly

/// A request head of exactly `size` bytes as the gateway counts it (request line and header
/// lines as HTTP/1.1 writes them), padded with one `x-pad` header.
fn head_of_size(size: usize) -> String {
    let start = format!("GET /owa/ HTTP/1.1\r\nhost: {MAIL_HOST}\r\nx-pad: ");
    let end = "\r\n\r\n";
    let pad = size - start.len() - end.len();
    format!("{start}{}{end}", "a".repeat(pad))
}

#[tokio::test]
async fn request_head_of_max_header_bytes_passes_and_one_byte_more_gets_431_over_http1() {
    let exchange = FakeExchange::builder("ex01").start().await;
    // The default max_header_bytes, 65,536.
    let (_gateway, addr) = public_gateway(&exchange.url(), "").await;
    let (answer, _) = raw_exchange(addr, head_of_size(65_536).as_bytes()).await;
    assert_eq!(status_of(&answer), Some(200), "{}", show(&answer));
    for size in [65_537, 80_000, 105_000] {
        // Sent in two parts, the first just under the limit: a parser that checks its buffer
        // only while the head is incomplete would take the whole head in the second read.
        let head = head_of_size(size);
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream
            .write_all(&head.as_bytes()[..60_000])
            .await
            .expect("write");
        stream.flush().await.expect("flush");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let _ = stream.write_all(&head.as_bytes()[60_000..]).await;
        let answer = read_answer(&mut stream).await;
        assert_eq!(
            status_of(&answer),
            Some(431),
            "{size} bytes: {}",
            show(&answer)
        );
    }
    assert_eq!(
        exchange.user_requests().len(),
        1,
        "only the head within the limit is forwarded"
    );
}

#[tokio::test]
async fn request_head_over_max_header_bytes_gets_431_over_tls_records_too() {
    // Over TLS a head arrives in records of at most 16 KiB: the limit must hold however the
    // head is cut.
    let pki = support::TestPki::new();
    let cert = pki.issue(&[MAIL_HOST]);
    let exchange = FakeExchange::builder("ex01").start().await;
    let toml = format!(
        "[server]\nhttps_listen = \"127.0.0.1:0\"\n\n\
         [[tls.certificates]]\ncert = \"{}\"\nkey = \"{}\"\n\n\
         [upstreams.exchange]\nservers = [\"{}\"]\n\n\
         [[routes]]\nhost = \"{MAIL_HOST}\"\npath = \"/owa\"\nupstream = \"exchange\"\naccess = \"public\"\n",
        cert.cert.display(),
        cert.key.display(),
        exchange.url()
    );
    let gateway = TestGateway::start(&toml).await;
    let addr = gateway.https.expect("https listener");
    for (size, expected) in [
        (65_536, Some(200)),
        (66_000, Some(431)),
        (80_000, Some(431)),
        (105_000, Some(431)),
    ] {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let mut tls =
            tokio_rustls::TlsConnector::from(Arc::new(pki.rustls_client_config(&[b"http/1.1"])))
                .connect(
                    rustls::pki_types::ServerName::try_from(MAIL_HOST).expect("name"),
                    tcp,
                )
                .await
                .expect("TLS handshake");
        let head = head_of_size(size);
        for part in head.as_bytes().chunks(16 * 1024) {
            if tls.write_all(part).await.is_err() {
                break;
            }
            let _ = tls.flush().await;
        }
        let mut answer = Vec::new();
        let mut chunk = [0u8; 8192];
        let deadline = Instant::now() + IO_LIMIT;
        while !response_complete(&answer) {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, tls.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => answer.extend_from_slice(&chunk[..n]),
                _ => break,
            }
        }
        assert_eq!(
            status_of(&answer),
            expected,
            "{size} bytes: {}",
            show(&answer)
        );
    }
    assert_eq!(
        exchange.user_requests().len(),
        1,
        "only the head within the limit is forwarded"
    );
}

#[tokio::test]
async fn request_head_over_max_header_bytes_gets_431_over_http2_too() {
    let exchange = FakeExchange::builder("ex01").start().await;
    let (_gateway, addr) = public_gateway(&exchange.url(), "max_header_bytes = 16384").await;
    let (mut send, _connection) = http2_connection(addr).await;
    // The same count as HTTP/1.1: "GET /owa/ HTTP/1.1\r\n" + "host: …\r\n" + "x-pad: …\r\n" + "\r\n".
    let fixed = "GET /owa/ HTTP/1.1\r\n".len() + format!("host: {MAIL_HOST}\r\n").len() + 9 + 2;
    for (size, expected) in [
        (16384, StatusCode::OK),
        (16385, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE),
    ] {
        let request = Request::get(format!("http://{MAIL_HOST}/owa/"))
            .header("x-pad", "a".repeat(size - fixed))
            .body(empty_body())
            .expect("request");
        send.ready().await.expect("usable");
        let response = send.send_request(request).await.expect("response");
        assert_eq!(response.status(), expected, "{size} bytes");
    }
}

// ---------------------------------------------------------------------------------------------
// 6. Upgrades

/// What the raw upstream saw: the request head, then every byte after it.
#[derive(Default, Clone)]
struct UpstreamLog {
    heads: Arc<Mutex<Vec<String>>>,
    after: Arc<Mutex<Vec<u8>>>,
}

/// An upstream that answers every request with `101 Switching Protocols` (with a correct
/// WebSocket accept when `honest`, a wrong one otherwise), then records what comes through the
/// tunnel and, seeing an HTTP request there, serves it — what an attacker hopes for.
async fn switching_upstream(honest: bool) -> (String, UpstreamLog) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let log = UpstreamLog::default();
    let seen = log.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match stream.read(&mut byte).await {
                        Ok(1) => head.push(byte[0]),
                        _ => return,
                    }
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                let key = head
                    .lines()
                    .find_map(|l| {
                        let (name, value) = l.split_once(':')?;
                        name.eq_ignore_ascii_case("sec-websocket-key")
                            .then(|| value.trim().to_owned())
                    })
                    .unwrap_or_default();
                seen.heads.lock().expect("lock").push(head);
                let accept = if honest {
                    accept_for(&key)
                } else {
                    "d3JvbmcgYWNjZXB0".to_owned()
                };
                let answer = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
                );
                if stream.write_all(answer.as_bytes()).await.is_err() {
                    return;
                }
                let mut chunk = [0u8; 4096];
                loop {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            seen.after
                                .lock()
                                .expect("lock")
                                .extend_from_slice(&chunk[..n]);
                            if chunk[..n].starts_with(b"GET ") {
                                let _ = stream
                                    .write_all(
                                        b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nmailbox",
                                    )
                                    .await;
                            }
                        }
                    }
                }
            });
        }
    });
    (format!("http://{addr}"), log)
}

fn accept_for(key: &str) -> String {
    use base64::Engine;
    let mut context = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    context.update(key.as_bytes());
    context.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(context.finish())
}

fn upgrade_request(path: &str, protocol: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {MAIL_HOST}\r\nConnection: Upgrade\r\nUpgrade: {protocol}\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

#[tokio::test]
async fn upgrade_on_a_route_that_does_not_allow_it_never_becomes_a_tunnel() {
    let (upstream, log) = switching_upstream(true).await;
    let (_gateway, addr) = public_gateway(&upstream, "").await;
    for protocol in ["websocket", "h2c"] {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream
            .write_all(upgrade_request("/owa/", protocol).as_bytes())
            .await
            .expect("write");
        let answer = read_answer(&mut stream).await;
        assert_eq!(
            status_of(&answer),
            Some(502),
            "{protocol}: {}",
            show(&answer)
        );
        // Whatever the upstream does, the request reached it without the upgrade.
        let heads = log.heads.lock().expect("lock").clone();
        let last = heads
            .last()
            .expect("the request reached the upstream")
            .to_ascii_lowercase();
        assert!(
            !last.contains("upgrade:"),
            "{protocol}: upgrade forwarded:\n{last}"
        );
        // Nothing sent afterwards goes through a tunnel.
        let _ = stream
            .write_all(
                format!("GET /ews/Exchange.asmx HTTP/1.1\r\nHost: {MAIL_HOST}\r\n\r\n").as_bytes(),
            )
            .await;
        let _ = read_answer(&mut stream).await;
    }
    let after = log.after.lock().expect("lock").clone();
    assert!(
        !String::from_utf8_lossy(&after).contains("/ews/"),
        "a request for another route went through a tunnel"
    );
}

#[tokio::test]
async fn websocket_route_relays_frames_but_not_http_requests_for_other_routes() {
    let (upstream, log) = switching_upstream(true).await;
    let (_gateway, addr) = public_gateway(&upstream, "").await;
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(upgrade_request("/ws/", "websocket").as_bytes())
        .await
        .expect("write");
    let answer = read_answer(&mut stream).await;
    assert_eq!(status_of(&answer), Some(101), "{}", show(&answer));

    // A masked text frame "hello" (mask 0): relayed as it is.
    let frame = [0x81u8, 0x85, 0, 0, 0, 0, b'h', b'e', b'l', b'l', b'o'];
    stream.write_all(&frame).await.expect("write frame");
    let deadline = Instant::now() + IO_LIMIT;
    while log.after.lock().expect("lock").len() < frame.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(log.after.lock().expect("lock").as_slice(), &frame[..]);

    // An HTTP request inside the tunnel ends it before reaching the upstream.
    let _ = stream
        .write_all(
            format!("GET /ews/Exchange.asmx HTTP/1.1\r\nHost: {MAIL_HOST}\r\n\r\n").as_bytes(),
        )
        .await;
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(IO_LIMIT, stream.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the tunnel stays open after a non-frame");
    assert!(!String::from_utf8_lossy(&rest).contains("mailbox"));
    assert_eq!(log.after.lock().expect("lock").as_slice(), &frame[..]);
}

#[tokio::test]
async fn websocket_handshake_with_a_wrong_accept_is_refused() {
    let (upstream, _log) = switching_upstream(false).await;
    let (_gateway, addr) = public_gateway(&upstream, "").await;
    let (answer, _) = raw_exchange(addr, upgrade_request("/ws/", "websocket").as_bytes()).await;
    assert_eq!(status_of(&answer), Some(502), "{}", show(&answer));
}

// ---------------------------------------------------------------------------------------------
// 7. Exchange's sign-out behind path variants

#[tokio::test]
async fn owa_sign_out_through_a_path_variant_ends_the_gateway_session() {
    let w = signed_world("").await;
    for variant in [
        "/owa//logoff.owa",
        "/owa/%6cogoff.owa",
        "/owa/logoff.owa.",
        "/OWA/LOGOFF.OWA",
    ] {
        let mut browser = Browser::new(w.addr);
        browser.sign_in_ok("/owa/", &w.provider, "alice").await;
        let session = browser.cookie(SESSION_COOKIE).expect("session").to_owned();
        assert_eq!(browser.xhr("/owa/").await.status, StatusCode::OK);

        let reply = browser.navigate(variant).await;
        assert_eq!(
            reply.status,
            StatusCode::FOUND,
            "{variant}: {}",
            reply.describe()
        );
        // The old cookie, replayed, no longer opens OWA.
        browser.set_cookie(SESSION_COOKIE, &session);
        let reply = browser.xhr("/owa/").await;
        assert_eq!(
            reply.status.as_u16(),
            440,
            "{variant}: the gateway session is still alive: {}",
            reply.describe()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 8. Gateway endpoints under a made-up Host; sign-out forged from another site

#[tokio::test]
async fn gateway_endpoints_answer_only_for_published_hosts() {
    let w = signed_world("").await;
    for path in [
        "/_gateway/sign-in?return=/owa/",
        "/_gateway/logout",
        "/_gateway/callback?state=x",
    ] {
        let (answer, _) = raw_exchange(
            w.addr,
            format!("GET {path} HTTP/1.1\r\nHost: evil.example\r\nSec-Fetch-Site: none\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await;
        assert_eq!(status_of(&answer), Some(404), "{path}: {}", show(&answer));
        assert!(
            !String::from_utf8_lossy(&answer).contains("evil.example"),
            "{path}: {}",
            show(&answer)
        );
    }
    // The published host still works, and the probe answers without any Host.
    let (answer, _) = raw_exchange(
        w.addr,
        format!("GET /_gateway/sign-in?return=/owa/ HTTP/1.1\r\nHost: {MAIL_HOST}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(status_of(&answer), Some(302), "{}", show(&answer));
    let (answer, _) = raw_exchange(w.addr, b"GET /_gateway/health HTTP/1.0\r\n\r\n").await;
    assert_eq!(status_of(&answer), Some(200), "{}", show(&answer));
}

#[tokio::test]
async fn sign_out_forged_by_another_site_does_not_end_the_session() {
    let w = signed_world("").await;
    let mut alice = Browser::new(w.addr);
    alice.sign_in_ok("/owa/", &w.provider, "alice").await;

    // An image tag or link on another site: a cross-site GET.
    let reply = alice
        .request(
            Method::GET,
            "/_gateway/logout",
            &[("sec-fetch-site", "cross-site")],
            None,
            false,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.describe());
    assert!(
        reply.body.contains("method=\"post\""),
        "a button to confirm: {}",
        reply.body
    );
    assert!(
        reply.set_cookies().is_empty(),
        "nothing cleared: {}",
        reply.describe()
    );
    // A form on another site posting here.
    let reply = alice
        .request(
            Method::POST,
            "/_gateway/logout",
            &[
                ("sec-fetch-site", "cross-site"),
                ("origin", "https://evil.example"),
            ],
            Some((String::new(), "application/x-www-form-urlencoded")),
            false,
        )
        .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.describe());
    // Browsers without Fetch Metadata: a POST from another origin.
    let reply = alice
        .request(
            Method::POST,
            "/_gateway/logout",
            &[("origin", "https://evil.example")],
            Some((String::new(), "application/x-www-form-urlencoded")),
            false,
        )
        .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.describe());
    assert_eq!(
        alice.xhr("/owa/").await.status,
        StatusCode::OK,
        "still signed in"
    );

    // The button on the gateway's own page: a same-origin POST signs out.
    let origin = alice.origin().to_owned();
    let reply = alice
        .request(
            Method::POST,
            "/_gateway/logout",
            &[
                ("sec-fetch-site", "same-origin"),
                ("origin", origin.as_str()),
            ],
            Some((String::new(), "application/x-www-form-urlencoded")),
            false,
        )
        .await;
    assert_eq!(reply.status, StatusCode::FOUND, "{}", reply.describe());
    assert_eq!(
        alice
            .request(Method::GET, "/owa/", XHR, None, false)
            .await
            .status
            .as_u16(),
        440
    );
}

#[tokio::test]
async fn sign_out_typed_in_the_address_bar_or_clicked_on_the_site_works_at_once() {
    let w = signed_world("").await;
    for site in ["none", "same-origin"] {
        let mut alice = Browser::new(w.addr);
        alice.sign_in_ok("/owa/", &w.provider, "alice").await;
        let reply = alice
            .request(
                Method::GET,
                "/_gateway/logout",
                &[("sec-fetch-site", site)],
                None,
                false,
            )
            .await;
        assert_eq!(
            reply.status,
            StatusCode::FOUND,
            "{site}: {}",
            reply.describe()
        );
        assert_eq!(alice.xhr("/owa/").await.status.as_u16(), 440, "{site}");
    }
}

// ---------------------------------------------------------------------------------------------
// Raw multi-byte UTF-8 in the request target

#[tokio::test]
async fn raw_multi_byte_utf8_in_the_target_is_answered_and_never_drops_the_connection() {
    let w = signed_world("").await;
    for target in [
        "/owa/ééé",
        "/_gatewayé",
        "/_gateway/é",
        "/_gateway/héalth",
        "/ééééééééé",
        "/owa/日本語/😀",
    ] {
        let mut request = b"GET ".to_vec();
        request.extend_from_slice(target.as_bytes());
        request.extend_from_slice(
            format!(" HTTP/1.1\r\nHost: {MAIL_HOST}\r\nConnection: close\r\n\r\n").as_bytes(),
        );
        let (answer, _) = raw_exchange(w.addr, &request).await;
        let status = status_of(&answer);
        assert!(
            matches!(status, Some(302 | 400 | 404 | 440)),
            "{target}: answered with {status:?}: {}",
            show(&answer)
        );
    }
    // Header values with raw non-ASCII bytes too.
    let mut request = format!("GET /owa/ HTTP/1.1\r\nHost: {MAIL_HOST}\r\nX-Name: ").into_bytes();
    request.extend_from_slice("é\u{ff}".as_bytes());
    request.extend_from_slice(&[0xff, 0xfe]);
    request.extend_from_slice(b"\r\nConnection: close\r\n\r\n");
    let (answer, _) = raw_exchange(w.addr, &request).await;
    assert!(status_of(&answer).is_some(), "no answer: {}", show(&answer));
    let (answer, _) = raw_exchange(w.addr, b"GET /_gateway/health HTTP/1.0\r\n\r\n").await;
    assert_eq!(status_of(&answer), Some(200));
    drop(w.gateway);
}
