//! What an attacker sees who abuses HTTP/2 and the connection itself rather than the
//! application: streams opened and reset by the thousand (rapid reset, CVE-2023-44487), a header
//! block continued for ever (CONTINUATION flood), a few bytes of HPACK that decode to megabytes
//! (HPACK bomb), a large download left unread, ten times more connections than allowed, and raw
//! non-ASCII bytes in header names and values.
//!
//! Every test runs the real binary — its log shows a panic, /proc its memory, its admin listener
//! its open connections — speaks raw frames and bytes on loopback, bounded in count and time, and
//! checks that another client is served meanwhile.

mod support;

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::{full, wait_for, wait_until, FakeExchange, GatewayProcess, ProcessPorts, TestBody};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

const HOST: &str = "mail.contoso.com";
/// Longest wait for any single answer from the gateway.
const IO_LIMIT: Duration = Duration::from_secs(10);
/// The growth of the gateway's resident memory allowed under any of these attacks: 16 MiB.
const GROWTH_LIMIT_KIB: u64 = 16 * 1024;
/// `server.max_header_bytes` of these gateways.
const MAX_HEADER_BYTES: usize = 16384;

// ---------------------------------------------------------------------------------------------
// The gateway

struct Limits {
    header_read_timeout: &'static str,
    max_connections: u32,
    /// More `[server]` lines.
    server_extra: &'static str,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout: "2s",
            max_connections: 1000,
            server_extra: "",
        }
    }
}

/// The real binary publishing `/owa` publicly on plain HTTP (HTTP/1.1, or HTTP/2 with prior
/// knowledge), with its admin listener.
struct Gateway {
    process: GatewayProcess,
    addr: SocketAddr,
    admin: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Gateway {
    async fn start(exchange: &FakeExchange, limits: Limits) -> Gateway {
        support::init();
        let dir = tempfile::tempdir().expect("temp dir");
        let toml = |ports: ProcessPorts| {
            format!(
                "[server]\nhttp_listen = \"127.0.0.1:{http}\"\nadmin_listen = \"127.0.0.1:{admin}\"\n\
                 header_read_timeout = \"{timeout}\"\nmax_header_bytes = {MAX_HEADER_BYTES}\n\
                 max_connections = {max}\n{extra}\n\n\
                 [upstreams.exchange]\nservers = [\"{exchange}\"]\n\n\
                 [[routes]]\nhost = \"{HOST}\"\npath = \"/owa\"\nupstream = \"exchange\"\naccess = \"public\"\n",
                http = ports.http,
                admin = ports.admin,
                timeout = limits.header_read_timeout,
                max = limits.max_connections,
                extra = limits.server_extra,
                exchange = exchange.url(),
            )
        };
        let (process, ports) = GatewayProcess::start(dir.path(), &[], toml).await;
        Gateway {
            process,
            addr: SocketAddr::from(([127, 0, 0, 1], ports.http)),
            admin: SocketAddr::from(([127, 0, 0, 1], ports.admin)),
            _dir: dir,
        }
    }

    /// The gateway is still running and never panicked.
    fn assert_unharmed(&mut self) {
        assert!(
            self.process
                .child
                .try_wait()
                .expect("process state")
                .is_none(),
            "the gateway exited; log:\n{}",
            self.process.log()
        );
        let log = self.process.log();
        let panics: Vec<&str> = log.lines().filter(|l| l.contains("panicked")).collect();
        assert!(
            panics.is_empty(),
            "the gateway panicked:\n{}",
            panics.join("\n")
        );
    }

    /// A counter or gauge of the admin listener's `/metrics`.
    async fn metric(&self, name: &str) -> i64 {
        let text = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("client")
            .get(format!("http://{}/metrics", self.admin))
            .timeout(IO_LIMIT)
            .send()
            .await
            .expect("metrics answer")
            .text()
            .await
            .expect("metrics body");
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} not in /metrics:\n{text}"))
    }

    /// The resident set once it has settled: the same in three samples in a row.
    async fn settled_rss(&self) -> u64 {
        let mut samples = Vec::new();
        wait_for(Duration::from_secs(10), || {
            samples.push(self.process.rss_kib());
            let last = samples[samples.len() - 1];
            let settled =
                samples.len() >= 3 && samples[samples.len() - 3..].iter().all(|s| *s == last);
            async move { settled.then_some(last) }
        })
        .await
        .unwrap_or_else(|| panic!("the gateway's memory did not settle: {samples:?}"))
    }

    /// Samples the resident set every 20 ms until `stop`; the highest value seen.
    fn sample_rss(&self, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<u64> {
        let pid = self.process.pid();
        tokio::spawn(async move {
            let mut peak = 0;
            while !stop.load(Ordering::SeqCst) {
                peak = peak.max(support::proc_status_kib(pid, "VmRSS:"));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            peak
        })
    }
}

/// Memory watched across an attack: the settled resident set before it, and the peak while it
/// ran.
struct MemoryWatch {
    baseline: u64,
    stop: Arc<AtomicBool>,
    sampler: tokio::task::JoinHandle<u64>,
}

impl MemoryWatch {
    /// Warms the gateway up with ordinary requests, then starts watching.
    async fn start(gateway: &Gateway) -> MemoryWatch {
        assert_another_client_is_served(gateway.addr).await;
        let baseline = gateway.settled_rss().await;
        let stop = Arc::new(AtomicBool::new(false));
        let sampler = gateway.sample_rss(stop.clone());
        MemoryWatch {
            baseline,
            stop,
            sampler,
        }
    }

    /// Stops watching and asserts the growth over the baseline stayed under the limit.
    async fn assert_bounded(self, gateway: &Gateway, what: &str) {
        self.stop.store(true, Ordering::SeqCst);
        let peak = self
            .sampler
            .await
            .expect("sampler")
            .max(gateway.process.rss_kib())
            .max(gateway.process.peak_rss_kib());
        let growth = peak.saturating_sub(self.baseline);
        println!(
            "{what}: gateway memory {} KiB before, peak {peak} KiB, growth {growth} KiB",
            self.baseline
        );
        assert!(
            growth < GROWTH_LIMIT_KIB,
            "{what}: the gateway's memory grew by {growth} KiB (limit {GROWTH_LIMIT_KIB} KiB)"
        );
    }
}

/// A client on another connection gets its page from Exchange, over HTTP/1.1 and over HTTP/2.
async fn assert_another_client_is_served(addr: SocketAddr) {
    for http2 in [false, true] {
        let builder = reqwest::Client::builder()
            .resolve(HOST, addr)
            .timeout(IO_LIMIT)
            .no_proxy();
        let client = if http2 {
            builder.http2_prior_knowledge()
        } else {
            builder.http1_only()
        }
        .build()
        .expect("client");
        let response = client
            .get(format!("http://{HOST}:{}/owa/", addr.port()))
            .send()
            .await
            .unwrap_or_else(|e| panic!("another client (HTTP/2: {http2}) was not served: {e}"));
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "another client (HTTP/2: {http2})"
        );
        let body = response.text().await.expect("body");
        assert_eq!(body, "ex01 /owa/", "another client (HTTP/2: {http2})");
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP/2 by hand

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PROTOCOL_ERROR: u32 = 0x1;
const CANCEL: u32 = 0x8;
/// The error code of a GOAWAY for a peer that generates excessive load.
const ENHANCE_YOUR_CALM: u32 = 0xb;
/// The largest frame payload a peer must accept without SETTINGS saying more.
const MAX_FRAME: usize = 16384;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("frame length");
    assert!(payload.len() <= MAX_FRAME, "frame of {len} bytes");
    let mut out = len.to_be_bytes()[1..].to_vec();
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// An HPACK integer with a `prefix`-bit prefix under the pattern bits `flags` (RFC 7541 5.1).
fn hpack_int(out: &mut Vec<u8>, flags: u8, prefix: u32, value: usize) {
    let max = (1usize << prefix) - 1;
    if value < max {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | max as u8);
    let mut rest = value - max;
    while rest >= 128 {
        out.push((rest % 128) as u8 | 0x80);
        rest /= 128;
    }
    out.push(rest as u8);
}

/// A string literal, not Huffman-coded.
fn hpack_string(out: &mut Vec<u8>, bytes: &[u8]) {
    hpack_int(out, 0x00, 7, bytes.len());
    out.extend_from_slice(bytes);
}

/// A literal field without indexing, named by a static-table index.
fn literal_indexed_name(out: &mut Vec<u8>, name_index: usize, value: &[u8]) {
    hpack_int(out, 0x00, 4, name_index);
    hpack_string(out, value);
}

/// A literal field with a new name; with `indexing`, the gateway's decoder adds it to its
/// dynamic table.
fn literal_new_name(out: &mut Vec<u8>, name: &[u8], value: &[u8], indexing: bool) {
    out.push(if indexing { 0x40 } else { 0x00 });
    hpack_string(out, name);
    hpack_string(out, value);
}

/// `GET http://mail.contoso.com{path}`: `:method GET` and `:scheme http` as static indexes 2
/// and 6, `:path` and `:authority` as literals on the names of indexes 4 and 1.
fn request_block(path: &[u8], authority: &[u8]) -> Vec<u8> {
    let mut block = vec![0x82, 0x86];
    literal_indexed_name(&mut block, 4, path);
    literal_indexed_name(&mut block, 1, authority);
    block
}

/// A frame from the gateway.
struct H2Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

/// Frames as the gateway sends them.
struct FrameReader {
    half: OwnedReadHalf,
    buffered: Vec<u8>,
}

impl FrameReader {
    /// The next frame; `None` once the gateway has closed (or reset) the connection.
    async fn next(&mut self) -> Option<H2Frame> {
        loop {
            if self.buffered.len() >= 9 {
                let len =
                    u32::from_be_bytes([0, self.buffered[0], self.buffered[1], self.buffered[2]])
                        as usize;
                if self.buffered.len() >= 9 + len {
                    let frame = H2Frame {
                        kind: self.buffered[3],
                        flags: self.buffered[4],
                        stream: u32::from_be_bytes([
                            self.buffered[5],
                            self.buffered[6],
                            self.buffered[7],
                            self.buffered[8],
                        ]) & 0x7fff_ffff,
                        payload: self.buffered[9..9 + len].to_vec(),
                    };
                    self.buffered.drain(..9 + len);
                    return Some(frame);
                }
            }
            let mut chunk = [0u8; 16384];
            match self.half.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buffered.extend_from_slice(&chunk[..n]),
            }
        }
    }
}

/// Opens an HTTP/2 connection with prior knowledge: the preface, SETTINGS with no dynamic table
/// for the gateway's answers (so a status is read without tracking one), and the
/// acknowledgement of the gateway's SETTINGS.
async fn open_http2(addr: SocketAddr) -> (FrameReader, OwnedWriteHalf) {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let _ = stream.set_nodelay(true);
    let (half, mut writer) = stream.into_split();
    let mut hello = PREFACE.to_vec();
    // SETTINGS_HEADER_TABLE_SIZE (1) = 0.
    hello.extend(frame(SETTINGS, 0, 0, &[0, 1, 0, 0, 0, 0]));
    writer.write_all(&hello).await.expect("preface");
    let mut reader = FrameReader {
        half,
        buffered: Vec::new(),
    };
    let settings = tokio::time::timeout(IO_LIMIT, async {
        while let Some(frame) = reader.next().await {
            if frame.kind == SETTINGS && frame.flags & ACK == 0 {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(settings, Ok(true), "no SETTINGS from the gateway");
    writer
        .write_all(&frame(SETTINGS, ACK, 0, &[]))
        .await
        .expect("SETTINGS ACK");
    (reader, writer)
}

/// The status of a response header block encoded without a dynamic table: an indexed static
/// entry, or a literal on the name `:status` (index 8), its digits raw or Huffman-coded.
fn response_status(block: &[u8]) -> Option<u16> {
    let mut at = 0;
    // Dynamic table size updates (001xxxxx) may open the block.
    while block.get(at)? & 0xe0 == 0x20 {
        at += 1;
        if block[at - 1] & 0x1f == 0x1f {
            while block.get(at)? & 0x80 != 0 {
                at += 1;
            }
            at += 1;
        }
    }
    let first = *block.get(at)?;
    if first & 0x80 != 0 {
        return match first & 0x7f {
            8 => Some(200),
            9 => Some(204),
            10 => Some(206),
            11 => Some(304),
            12 => Some(400),
            13 => Some(404),
            14 => Some(500),
            _ => None,
        };
    }
    let name_index = if first & 0xc0 == 0x40 {
        first & 0x3f
    } else {
        first & 0x0f
    };
    if name_index != 8 {
        return None;
    }
    let head = *block.get(at + 1)?;
    let value = block.get(at + 2..at + 2 + usize::from(head & 0x7f))?;
    let digits = if head & 0x80 != 0 {
        huffman_digits(value)?
    } else {
        String::from_utf8(value.to_vec()).ok()?
    };
    digits.parse().ok()
}

/// Decodes Huffman-coded decimal digits (RFC 7541 Appendix B: '0'–'2' are the 5-bit codes 0–2,
/// '3'–'9' the 6-bit codes 0x19–0x1f), followed by at most 7 bits of padding, all ones.
fn huffman_digits(bytes: &[u8]) -> Option<String> {
    let (mut bits, mut n, mut out) = (0u64, 0u32, String::new());
    for &byte in bytes {
        bits = bits << 8 | u64::from(byte);
        n += 8;
        loop {
            if n >= 5 && (bits >> (n - 5)) & 0x1f <= 2 {
                out.push(char::from(b'0' + ((bits >> (n - 5)) & 0x1f) as u8));
                n -= 5;
            } else if n >= 6 && (0x19..=0x1f).contains(&((bits >> (n - 6)) & 0x3f)) {
                out.push(char::from(b'0' + (((bits >> (n - 6)) & 0x3f) - 0x16) as u8));
                n -= 6;
            } else {
                break;
            }
        }
        bits &= (1 << n) - 1;
    }
    (n < 8 && bits == (1 << n) - 1).then_some(out)
}

/// What the gateway sent on a connection.
#[derive(Debug, Default)]
struct Seen {
    /// Response statuses by stream (`None`: a status this reader cannot decode).
    answers: Vec<(u32, Option<u16>)>,
    /// RST_STREAM: stream and error code.
    resets: Vec<(u32, u32)>,
    /// GOAWAY: the last stream the gateway processed, and the error code.
    goaway: Option<(u32, u32)>,
    /// The gateway closed (or reset) the connection.
    closed: bool,
}

impl Seen {
    fn status(&self, stream: u32) -> Option<u16> {
        self.answers
            .iter()
            .find(|(s, _)| *s == stream)
            .and_then(|(_, status)| *status)
    }

    fn reset(&self, stream: u32) -> Option<u32> {
        self.resets
            .iter()
            .find(|(s, _)| *s == stream)
            .map(|(_, code)| *code)
    }

    /// The stream got an answer or a reset, or the connection went away.
    fn settled(&self, stream: u32) -> bool {
        self.answers.iter().any(|(s, _)| *s == stream)
            || self.reset(stream).is_some()
            || self.goaway.is_some()
            || self.closed
    }
}

/// Reads what the gateway sends until `done` holds, the connection closes, or `limit` passes.
async fn watch(reader: &mut FrameReader, limit: Duration, done: impl Fn(&Seen) -> bool) -> Seen {
    let mut seen = Seen::default();
    let deadline = Instant::now() + limit;
    while !done(&seen) {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(next) = tokio::time::timeout(left, reader.next()).await else {
            break;
        };
        let Some(frame) = next else {
            seen.closed = true;
            break;
        };
        let word = |at: usize| {
            frame
                .payload
                .get(at..at + 4)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        };
        match frame.kind {
            HEADERS => seen
                .answers
                .push((frame.stream, response_status(&frame.payload))),
            RST_STREAM => seen
                .resets
                .push((frame.stream, word(0).unwrap_or(u32::MAX))),
            GOAWAY => {
                seen.goaway = Some((word(0).unwrap_or(0) & 0x7fff_ffff, word(4).unwrap_or(0)));
            }
            _ => {}
        }
    }
    seen
}

// ---------------------------------------------------------------------------------------------
// 1. Rapid reset

#[tokio::test]
async fn http2_rapid_reset_flood_gets_goaway_after_a_few_dozen_streams_and_exchange_sees_none_beyond(
) {
    const STREAMS: u32 = 10_000;
    const BATCH: u32 = 100;
    let exchange = FakeExchange::builder("ex01").start().await;
    let mut gateway = Gateway::start(&exchange, Limits::default()).await;
    let memory = MemoryWatch::start(&gateway).await;
    let before = exchange.user_requests().len();

    let (mut reader, mut writer) = open_http2(gateway.addr).await;
    let watching =
        tokio::spawn(async move { watch(&mut reader, IO_LIMIT * 2, |s| s.closed).await });
    // 10,000 streams, each opened with a GET and cancelled at once: 20,000 frames.
    let block = request_block(b"/owa/", HOST.as_bytes());
    let flood = async move {
        let mut opened = 0;
        while opened < STREAMS {
            let mut batch = Vec::new();
            for i in opened..opened + BATCH {
                let stream = 2 * i + 1;
                batch.extend(frame(HEADERS, END_STREAM | END_HEADERS, stream, &block));
                batch.extend(frame(RST_STREAM, 0, stream, &CANCEL.to_be_bytes()));
            }
            if writer.write_all(&batch).await.is_err() {
                break;
            }
            opened += BATCH;
        }
        (opened, writer)
    };
    let ((opened, _writer), ()) =
        tokio::join!(flood, assert_another_client_is_served(gateway.addr));
    let seen = watching.await.expect("watcher");
    // Less the other client's two requests.
    let forwarded = exchange.user_requests().len().saturating_sub(before + 2);

    println!(
        "rapid reset: {opened} streams written before the connection broke; GOAWAY {:?}; \
         {} answered; closed: {}; Exchange received {forwarded}",
        seen.goaway,
        seen.answers.len(),
        seen.closed
    );
    // The GOAWAY is read as it arrives, before the reset that follows it (the gateway closes
    // with the rest of the flood unread).
    let Some((last, code)) = seen.goaway else {
        panic!("no GOAWAY for {opened} streams opened and reset: {seen:?}");
    };
    assert_eq!(code, ENHANCE_YOUR_CALM, "GOAWAY error code");
    assert!(
        last < 200,
        "the gateway took streams up to {last} before its GOAWAY"
    );
    assert!(seen.closed, "the flooding connection is still open");
    assert!(
        forwarded <= (last as usize).div_ceil(2),
        "Exchange received {forwarded} requests, more than the gateway took streams ({last})"
    );
    assert_another_client_is_served(gateway.addr).await;
    memory.assert_bounded(&gateway, "rapid reset").await;
    gateway.assert_unharmed();
}

// ---------------------------------------------------------------------------------------------
// 2. CONTINUATION flood

#[tokio::test]
async fn http2_continuation_flood_is_cut_off_long_before_16_mib() {
    const FLOOD: usize = 16 * 1024 * 1024;
    let exchange = FakeExchange::builder("ex01").start().await;
    let mut gateway = Gateway::start(&exchange, Limits::default()).await;
    let memory = MemoryWatch::start(&gateway).await;
    let before = exchange.user_requests().len();

    let (mut reader, mut writer) = open_http2(gateway.addr).await;
    let watching = tokio::spawn(async move { watch(&mut reader, IO_LIMIT, |s| s.closed).await });
    // A header block that never ends: a HEADERS frame without END_HEADERS whose last field is a
    // value announced 16 MiB long, then CONTINUATION frames carrying more of it.
    let mut block = request_block(b"/owa/", HOST.as_bytes());
    block.push(0x00);
    hpack_string(&mut block, b"x-continued");
    hpack_int(&mut block, 0x00, 7, FLOOD);
    block.resize(MAX_FRAME, b'a');
    let piece = frame(CONTINUATION, 0, 1, &[b'a'; MAX_FRAME]);
    let flood = async move {
        let mut sent = 0;
        if writer
            .write_all(&frame(HEADERS, END_STREAM, 1, &block))
            .await
            .is_ok()
        {
            sent += MAX_FRAME;
            while sent < FLOOD && writer.write_all(&piece).await.is_ok() {
                sent += MAX_FRAME;
            }
        }
        (sent, writer)
    };
    let ((sent, _writer), ()) = tokio::join!(flood, assert_another_client_is_served(gateway.addr));
    let seen = watching.await.expect("watcher");

    println!(
        "CONTINUATION flood: {sent} bytes of header block written before the gateway closed; \
         GOAWAY {:?}; closed: {}",
        seen.goaway, seen.closed
    );
    assert_eq!(
        seen.goaway,
        Some((0, ENHANCE_YOUR_CALM)),
        "GOAWAY (last stream, error code)"
    );
    assert!(
        seen.closed,
        "the connection is still open after a header block of {sent} bytes"
    );
    assert!(
        sent < FLOOD,
        "the gateway took all {FLOOD} bytes of one header block"
    );
    assert_eq!(
        exchange.user_requests().len() - before,
        2,
        "only the other client's requests reach Exchange"
    );
    assert_another_client_is_served(gateway.addr).await;
    memory.assert_bounded(&gateway, "CONTINUATION flood").await;
    gateway.assert_unharmed();
}

// ---------------------------------------------------------------------------------------------
// 3. HPACK bomb

/// A request header block that adds `x-bomb: aaaa…` (4,000 bytes, nearly the whole 4 KiB
/// dynamic table) and then names that entry again `references` times, one byte each.
fn hpack_bomb(references: usize) -> Vec<u8> {
    let mut block = request_block(b"/owa/", HOST.as_bytes());
    literal_new_name(&mut block, b"x-bomb", &[b'a'; 4000], true);
    // The first dynamic-table entry is index 62.
    block.extend(std::iter::repeat_n(0x80 | 62, references));
    block
}

#[tokio::test]
async fn hpack_bomb_is_refused_without_being_expanded() {
    let exchange = FakeExchange::builder("ex01").start().await;
    let mut gateway = Gateway::start(&exchange, Limits::default()).await;
    let memory = MemoryWatch::start(&gateway).await;
    let before = exchange.user_requests().len();

    // 16 KiB on the wire that decode to about 48 MB of headers.
    let (mut reader, mut writer) = open_http2(gateway.addr).await;
    let references = MAX_FRAME - hpack_bomb(0).len();
    let block = hpack_bomb(references);
    let decoded = references * (b"x-bomb".len() + 4000);
    writer
        .write_all(&frame(HEADERS, END_STREAM | END_HEADERS, 1, &block))
        .await
        .expect("write");
    let seen = watch(&mut reader, IO_LIMIT, |s| s.settled(1)).await;
    println!(
        "HPACK bomb of {} bytes decoding to {decoded}: status {:?}, reset {:?}, GOAWAY {:?}, closed: {}",
        block.len(),
        seen.status(1),
        seen.reset(1),
        seen.goaway,
        seen.closed
    );
    // Refused: 431, the stream reset, or the connection ended with an error that leaves the
    // bomb's stream unprocessed.
    let refused = match (seen.answers.as_slice(), seen.reset(1), seen.goaway) {
        ([(1, Some(431))], _, _) => true,
        ([], Some(_), _) => true,
        ([], None, Some((0, code))) => code != 0,
        _ => false,
    };
    assert!(refused, "the bomb was not refused: {seen:?}");
    assert_eq!(
        exchange.user_requests().len(),
        before,
        "the bomb reached Exchange"
    );
    assert_another_client_is_served(gateway.addr).await;
    memory.assert_bounded(&gateway, "HPACK bomb").await;
    gateway.assert_unharmed();
}

#[tokio::test]
async fn hpack_references_beyond_max_header_bytes_get_431_and_the_connection_serves_on() {
    let exchange = FakeExchange::builder("ex01").start().await;
    let mut gateway = Gateway::start(&exchange, Limits::default()).await;
    let (mut reader, mut writer) = open_http2(gateway.addr).await;

    // 12 references, about 48 KB of headers from 4 KB on the wire: over max_header_bytes.
    let bomb = hpack_bomb(12);
    writer
        .write_all(&frame(HEADERS, END_STREAM | END_HEADERS, 1, &bomb))
        .await
        .expect("write");
    let seen = watch(&mut reader, IO_LIMIT, |s| s.settled(1)).await;
    assert_eq!(seen.status(1), Some(431), "{seen:?}");

    // The same connection, whose dynamic table still holds the entry, serves the next request.
    let block = request_block(b"/owa/", HOST.as_bytes());
    writer
        .write_all(&frame(HEADERS, END_STREAM | END_HEADERS, 3, &block))
        .await
        .expect("write");
    let seen = watch(&mut reader, IO_LIMIT, |s| s.settled(3)).await;
    assert_eq!(seen.status(3), Some(200), "{seen:?}");
    let forwarded = exchange.user_requests();
    assert_eq!(forwarded.len(), 1);
    assert!(!forwarded[0].headers.contains_key("x-bomb"));
    gateway.assert_unharmed();
}

// ---------------------------------------------------------------------------------------------
// 4. A download left unread

/// What Exchange has handed out of its downloads.
#[derive(Clone, Default)]
struct Downloads {
    /// Bytes given to the connection so far, all downloads together.
    produced: Arc<AtomicU64>,
    /// Downloads whose body is still held by the connection to the gateway.
    open: Arc<AtomicI64>,
}

/// A body of generated bytes, 64 KiB chunks sharing one buffer, counted as they are taken.
struct CountedBody {
    chunk: Bytes,
    remaining: u64,
    downloads: Downloads,
}

impl CountedBody {
    fn boxed(total: u64, downloads: &Downloads) -> TestBody {
        downloads.open.fetch_add(1, Ordering::SeqCst);
        CountedBody {
            chunk: Bytes::from(vec![b'x'; 64 * 1024]),
            remaining: total,
            downloads: downloads.clone(),
        }
        .boxed()
    }
}

impl Body for CountedBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let this = self.get_mut();
        if this.remaining == 0 {
            return Poll::Ready(None);
        }
        let n = this.remaining.min(this.chunk.len() as u64);
        this.remaining -= n;
        this.downloads.produced.fetch_add(n, Ordering::SeqCst);
        Poll::Ready(Some(Ok(Frame::data(this.chunk.slice(..n as usize)))))
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.remaining)
    }
}

impl Drop for CountedBody {
    fn drop(&mut self) {
        self.downloads.open.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Exchange serving `GET /owa/download?bytes=N` with N generated bytes, and the usual page
/// otherwise.
async fn downloading_exchange() -> (FakeExchange, Downloads) {
    let downloads = Downloads::default();
    let served = downloads.clone();
    let exchange = FakeExchange::builder("ex01")
        .handler(move |req: Request<Incoming>| {
            let downloads = served.clone();
            async move {
                let size = req
                    .uri()
                    .query()
                    .and_then(|q| q.strip_prefix("bytes="))
                    .and_then(|n| n.parse().ok());
                match size {
                    Some(size) => Response::builder()
                        .header("content-type", "application/octet-stream")
                        .body(CountedBody::boxed(size, &downloads))
                        .expect("response"),
                    None => Response::builder()
                        .body(full(format!("ex01 {}", req.uri().path())))
                        .expect("response"),
                }
            }
        })
        .start()
        .await;
    (exchange, downloads)
}

/// An HTTP/1.1 download of `size` bytes that reads the head and a few KB of the body, then
/// stops reading and keeps the connection open.
async fn stalled_http1_download(addr: SocketAddr, size: u64) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(
            format!("GET /owa/download?bytes={size} HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes(),
        )
        .await
        .expect("write");
    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    while received.len() < 8192 {
        match tokio::time::timeout(IO_LIMIT, stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => received.extend_from_slice(&chunk[..n]),
            other => panic!("the download did not start: {other:?}"),
        }
    }
    assert!(
        received.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&received[..64])
    );
    stream
}

/// An HTTP/2 download whose body is no longer read; dropping it closes the connection.
struct StalledDownload {
    _body: Incoming,
    connection: tokio::task::JoinHandle<Result<(), hyper::Error>>,
}

impl Drop for StalledDownload {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

/// The same over HTTP/2: the first DATA frames are read, then the body is left unpolled, so the
/// client's flow-control window closes.
async fn stalled_http2_download(addr: SocketAddr, size: u64) -> StalledDownload {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut send, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(stream))
        .await
        .expect("HTTP/2 handshake");
    let connection = tokio::spawn(connection);
    let request = Request::get(format!("http://{HOST}/owa/download?bytes={size}"))
        .body(Empty::<Bytes>::new())
        .expect("request");
    let response = tokio::time::timeout(IO_LIMIT, send.send_request(request))
        .await
        .expect("answered in time")
        .expect("response");
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let mut received = 0;
    while received < 8192 {
        let frame = tokio::time::timeout(IO_LIMIT, body.frame())
            .await
            .expect("the download did not start")
            .expect("body open")
            .expect("body frame");
        received += frame.data_ref().map_or(0, |d| d.len());
    }
    StalledDownload {
        _body: body,
        connection,
    }
}

#[tokio::test]
async fn download_left_unread_holds_exchange_back_instead_of_filling_the_gateways_memory() {
    const SIZE: u64 = 256 * 1024 * 1024;
    /// The bytes Exchange may hand out before it is held back: what the socket buffers on
    /// both sides of the gateway hold (the kernel grows them to several MiB each) and the
    /// gateway's own, a quarter of the 512 MiB asked for.
    const PRODUCED_LIMIT: u64 = 128 * 1024 * 1024;
    let (exchange, downloads) = downloading_exchange().await;
    let mut gateway = Gateway::start(&exchange, Limits::default()).await;
    // Warm-up: a whole download over each protocol.
    let client = reqwest::Client::builder()
        .resolve(HOST, gateway.addr)
        .timeout(IO_LIMIT)
        .no_proxy()
        .build()
        .expect("client");
    let warm = client
        .get(format!(
            "http://{HOST}:{}/owa/download?bytes=4194304",
            gateway.addr.port()
        ))
        .send()
        .await
        .expect("download")
        .bytes()
        .await
        .expect("body");
    assert_eq!(warm.len(), 4 * 1024 * 1024);
    let memory = MemoryWatch::start(&gateway).await;
    let warmed = downloads.produced.load(Ordering::SeqCst);

    let http1 = stalled_http1_download(gateway.addr, SIZE).await;
    let http2 = stalled_http2_download(gateway.addr, SIZE).await;
    // Exchange is held back once every buffer between it and the stalled readers is full.
    let mut last = (0, Instant::now());
    let held_back = wait_until(Duration::from_secs(20), || {
        let now = downloads.produced.load(Ordering::SeqCst);
        if now != last.0 {
            last = (now, Instant::now());
        }
        let still = last.1.elapsed() >= Duration::from_secs(1);
        async move { still }
    })
    .await;
    let produced = downloads.produced.load(Ordering::SeqCst) - warmed;
    assert!(
        held_back,
        "Exchange is never held back: {produced} bytes handed out so far"
    );

    // For a few seconds the readers stay stalled while others are served.
    let stalled_since = Instant::now();
    while stalled_since.elapsed() < Duration::from_secs(3) {
        assert_another_client_is_served(gateway.addr).await;
    }
    let produced_stalled = downloads.produced.load(Ordering::SeqCst) - warmed;
    println!(
        "stalled downloads: Exchange handed out {produced} bytes before it was held back, \
         {produced_stalled} after {:?} of stalling",
        stalled_since.elapsed()
    );
    assert!(
        produced_stalled < PRODUCED_LIMIT,
        "Exchange handed out {produced_stalled} bytes to two stalled readers"
    );
    assert_eq!(downloads.open.load(Ordering::SeqCst), 2);
    memory.assert_bounded(&gateway, "stalled downloads").await;

    // The readers give up: the gateway lets go of both downloads at Exchange.
    drop(http1);
    drop(http2);
    assert!(
        wait_until(IO_LIMIT, || async {
            downloads.open.load(Ordering::SeqCst) == 0
        })
        .await,
        "the gateway still holds {} downloads at Exchange after their readers left",
        downloads.open.load(Ordering::SeqCst)
    );
    assert!(
        wait_until(IO_LIMIT, || async {
            gateway.metric("mfagw_open_connections").await == 0
        })
        .await,
        "connections are still open after every client left"
    );
    gateway.assert_unharmed();
}

// ---------------------------------------------------------------------------------------------
// 5. Connection floods

/// How many connections a flood opens: ten times `max_connections`.
const FLOOD_CONNECTIONS: usize = 500;
const FLOOD_MAX_CONNECTIONS: u32 = 50;

/// `FLOOD_CONNECTIONS` connections opened at once, each sending the start of a request head and
/// then nothing. The gateway takes `max_connections` of them; the kernel queues more in the
/// listener's backlog; the handshakes of the rest are dropped and retried by the kernel.
struct Flood {
    /// Connections whose handshake has completed.
    connected: Arc<AtomicUsize>,
    /// One task per connection; each ends when the gateway closes its connection, with the
    /// time since the flood began (`None` if it never connected).
    held: tokio::task::JoinSet<Option<Duration>>,
}

impl Flood {
    fn start(addr: SocketAddr) -> Flood {
        let began = Instant::now();
        let connected = Arc::new(AtomicUsize::new(0));
        let mut held = tokio::task::JoinSet::new();
        for _ in 0..FLOOD_CONNECTIONS {
            let connected = connected.clone();
            held.spawn(async move {
                let mut stream = TcpStream::connect(addr).await.ok()?;
                connected.fetch_add(1, Ordering::SeqCst);
                let head = format!("GET /owa/ HTTP/1.1\r\nHost: {HOST}\r\n");
                if stream.write_all(head.as_bytes()).await.is_ok() {
                    let mut sink = [0u8; 1024];
                    while let Ok(n) = stream.read(&mut sink).await {
                        if n == 0 {
                            break;
                        }
                    }
                }
                Some(began.elapsed())
            });
        }
        Flood { connected, held }
    }
}

/// A complete request on a new connection; its status, once answered.
async fn request_on_new_connection(addr: SocketAddr) -> Option<u16> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    let request = format!("GET /owa/ HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.ok()?;
    std::str::from_utf8(answer.get(9..12)?).ok()?.parse().ok()
}

#[tokio::test]
async fn connection_flood_over_max_connections_is_served_again_as_soon_as_it_stops() {
    let exchange = FakeExchange::builder("ex01").start().await;
    let mut gateway = Gateway::start(
        &exchange,
        Limits {
            // Long enough that only the flood's end frees the slots during the test.
            header_read_timeout: "60s",
            max_connections: FLOOD_MAX_CONNECTIONS,
            ..Limits::default()
        },
    )
    .await;

    let flood = Flood::start(gateway.addr);
    // Every slot is taken, and not one more.
    assert!(
        wait_until(IO_LIMIT, || async {
            gateway.metric("mfagw_open_connections").await == i64::from(FLOOD_MAX_CONNECTIONS)
        })
        .await,
        "the flood does not fill the {FLOOD_MAX_CONNECTIONS} slots"
    );
    // A client arrives behind the flood.
    let client = tokio::spawn(request_on_new_connection(gateway.addr));
    assert_eq!(
        gateway.metric("mfagw_open_connections").await,
        i64::from(FLOOD_MAX_CONNECTIONS)
    );
    let connected = flood.connected.load(Ordering::SeqCst);

    // The flood stops: its connections close, its unfinished handshakes are abandoned. The
    // gateway works through what the backlog held and serves the client.
    let stopped = Instant::now();
    drop(flood);
    let status = tokio::time::timeout(IO_LIMIT, client)
        .await
        .expect("the client behind the flood is served within 10 s of the flood stopping")
        .expect("client task");
    println!(
        "connection flood: {connected} of {FLOOD_CONNECTIONS} connections established over \
         {FLOOD_MAX_CONNECTIONS} slots; the client behind them was answered {:?} after they closed",
        stopped.elapsed()
    );
    assert_eq!(status, Some(200));
    assert!(
        wait_until(IO_LIMIT, || async {
            gateway.metric("mfagw_open_connections").await == 0
        })
        .await,
        "{} connections still open after the flood stopped",
        gateway.metric("mfagw_open_connections").await
    );
    assert_another_client_is_served(gateway.addr).await;
    gateway.assert_unharmed();
}

#[tokio::test]
async fn connections_a_flood_holds_open_are_cut_off_in_turn_and_the_client_behind_is_served() {
    let exchange = FakeExchange::builder("ex01").start().await;
    let mut gateway = Gateway::start(
        &exchange,
        Limits {
            header_read_timeout: "1s",
            max_connections: FLOOD_MAX_CONNECTIONS,
            ..Limits::default()
        },
    )
    .await;
    let mut flood = Flood::start(gateway.addr);
    let client = tokio::spawn(request_on_new_connection(gateway.addr));

    // The flood never gives up its connections; the gateway closes each one a header timeout
    // after taking it, 50 at a time: 500 / 50 x 1 s, and the kernel's handshake retries, with
    // room to spare.
    const ALL_CLOSED: Duration = Duration::from_secs(45);
    let mut closed_after = Vec::new();
    let finished = tokio::time::timeout(ALL_CLOSED, async {
        while let Some(ended) = flood.held.join_next().await {
            closed_after.push(ended.expect("flood connection"));
        }
    })
    .await;
    let never_connected = closed_after.iter().filter(|c| c.is_none()).count();
    let last = closed_after.iter().flatten().max().copied();
    println!("held connection flood: {} connections closed by the gateway, the last {last:?} after the flood began", closed_after.len());
    assert!(
        finished.is_ok(),
        "{} of {FLOOD_CONNECTIONS} connections still open {ALL_CLOSED:?} after the flood began",
        FLOOD_CONNECTIONS - closed_after.len()
    );
    assert_eq!(never_connected, 0, "connections refused by the kernel");
    let status = tokio::time::timeout(IO_LIMIT, client)
        .await
        .expect("the client behind the flood was served")
        .expect("client task");
    assert_eq!(status, Some(200), "the client behind the flood");
    // The client's own connection closes as its task ends; the gauge follows a moment later.
    assert!(
        wait_until(IO_LIMIT, || async {
            gateway.metric("mfagw_open_connections").await == 0
        })
        .await,
        "{} connections still open after the flood ended",
        gateway.metric("mfagw_open_connections").await
    );
    gateway.assert_unharmed();
}

// ---------------------------------------------------------------------------------------------
// 6. Raw non-ASCII bytes in header names and values

/// A header value of obs-text: Latin-1 "Müller" and bytes no charset gives a meaning to.
const OBS_TEXT: &[u8] = b"M\xfcller \xe9\xff\x80\xc3";

/// What Exchange must receive of a header sent with raw bytes.
enum Received {
    AsSent,
    /// Nothing: the header belongs to the connection.
    Nothing,
    /// The gateway's own value.
    Ours(&'static [u8]),
}

/// Sends a raw HTTP/1.1 request on a new connection; the status of the answer, `None` when the
/// gateway closed without one.
async fn raw_http1(addr: SocketAddr, request: &[u8]) -> Option<u16> {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("write");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(IO_LIMIT, stream.read_to_end(&mut answer)).await;
    let status = answer
        .get(9..12)
        .and_then(|s| std::str::from_utf8(s).ok())?;
    status.parse().ok()
}

fn http1_request(extra_header: &[u8]) -> Vec<u8> {
    let mut request =
        format!("GET /owa/ HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n").into_bytes();
    request.extend_from_slice(extra_header);
    request.extend_from_slice(b"\r\n\r\n");
    request
}

#[tokio::test]
async fn obs_text_header_value_over_http1_reaches_exchange_byte_for_byte() {
    let exchange = FakeExchange::builder("ex01").start().await;
    let mut gateway = Gateway::start(&exchange, Limits::default()).await;
    let mut header = b"X-Display-Name: ".to_vec();
    header.extend_from_slice(OBS_TEXT);
    assert_eq!(
        raw_http1(gateway.addr, &http1_request(&header)).await,
        Some(200)
    );
    let forwarded = exchange.user_requests();
    assert_eq!(forwarded.len(), 1);
    assert_eq!(
        forwarded[0]
            .headers
            .get("x-display-name")
            .map(|v| v.as_bytes()),
        Some(OBS_TEXT),
        "Exchange received the value changed"
    );
    gateway.assert_unharmed();
}

#[tokio::test]
async fn non_ascii_header_name_over_http1_gets_400_and_never_reaches_exchange() {
    let exchange = FakeExchange::builder("ex01").start().await;
    let mut gateway = Gateway::start(&exchange, Limits::default()).await;
    for name in [
        &b"X-N\xe4me"[..],
        b"\xff\xfe",
        b"X-\xc3\xa9t\xc3\xa9",
        b"\x80",
    ] {
        let mut header = name.to_vec();
        header.extend_from_slice(b": value");
        let status = raw_http1(gateway.addr, &http1_request(&header)).await;
        assert_eq!(
            status,
            Some(400),
            "header name {:?}",
            String::from_utf8_lossy(name)
        );
    }
    assert!(exchange.user_requests().is_empty());
    assert_another_client_is_served(gateway.addr).await;
    gateway.assert_unharmed();
}

#[tokio::test]
async fn raw_non_ascii_bytes_in_headers_the_gateway_reads_are_passed_on_or_refused_never_misread() {
    let exchange = FakeExchange::builder("ex01").start().await;
    let mut gateway = Gateway::start(
        &exchange,
        Limits {
            // The forwarding headers of this peer are read and kept, not just replaced.
            server_extra: "trusted_proxies = [\"127.0.0.1\"]",
            ..Limits::default()
        },
    )
    .await;
    // Each header, and what Exchange must receive of it: the value as sent, nothing (it
    // belongs to the connection), or the gateway's own value.
    let cases: [(&str, &[u8], Received); 16] = [
        (
            "cookie",
            b"X-OWA-CANARY=\xc3; M\xfcller=\xff\xfe; a=\x80",
            Received::AsSent,
        ),
        (
            "x-forwarded-for",
            b"\xff1.2.3.4, 10.0.0.\xe9",
            Received::Ours(b"127.0.0.1"),
        ),
        ("x-forwarded-proto", b"http\xe9s", Received::AsSent),
        (
            "x-forwarded-host",
            b"mail.contoso.com\xff",
            Received::AsSent,
        ),
        ("forwarded", b"for=\xff;proto=https", Received::AsSent),
        ("authorization", b"Bearer \xff\xfe\x80", Received::AsSent),
        ("content-type", b"text/html; charset=\xe9", Received::AsSent),
        ("origin", b"https://mail.contoso.com\xff", Received::AsSent),
        (
            "referer",
            b"https://mail.contoso.com/owa/\xe9",
            Received::AsSent,
        ),
        ("sec-fetch-mode", b"navig\xe4te", Received::AsSent),
        ("accept", b"text/html\xff", Received::AsSent),
        ("accept-encoding", b"gz\xefp", Received::AsSent),
        ("expect", b"100-\xffcontinue", Received::AsSent),
        ("user-agent", b"Mozilla/5.0 (\xe9\xff)", Received::AsSent),
        ("connection", b"close\xff", Received::Nothing),
        ("upgrade", b"websocket\xff", Received::Nothing),
    ];
    for (name, value, replaced) in cases {
        let mut header = format!("{name}: ").into_bytes();
        header.extend_from_slice(value);
        let status = raw_http1(gateway.addr, &http1_request(&header)).await;
        assert_eq!(
            status,
            Some(200),
            "{name}: {:?}",
            String::from_utf8_lossy(value)
        );
        let forwarded = exchange.user_requests().pop().expect("forwarded");
        let received = forwarded.headers.get(name).map(|v| v.as_bytes());
        let expected = match replaced {
            Received::AsSent => Some(value),
            Received::Nothing => None,
            Received::Ours(ours) => Some(ours),
        };
        assert_eq!(received, expected, "{name}: what Exchange received");
    }
    // Raw bytes where they frame or route the request: refused, nothing forwarded.
    let forwarded = exchange.user_requests().len();
    for request in [
        &b"GET /owa/ HTTP/1.1\r\nHost: mail.contoso.com\xff\r\n\r\n"[..],
        b"GET /owa/ HTTP/1.1\r\nHost: m\xe4il.contoso.com\r\n\r\n",
        b"POST /owa/ HTTP/1.1\r\nHost: mail.contoso.com\r\nContent-Length: 1\xff\r\n\r\nx",
        b"POST /owa/ HTTP/1.1\r\nHost: mail.contoso.com\r\nTransfer-Encoding: chunked\xff\r\n\r\n0\r\n\r\n",
    ] {
        let status = raw_http1(gateway.addr, request).await;
        assert_eq!(status, Some(400), "{:?}", String::from_utf8_lossy(request));
    }
    assert_eq!(exchange.user_requests().len(), forwarded);
    assert_another_client_is_served(gateway.addr).await;
    gateway.assert_unharmed();
}

#[tokio::test]
async fn raw_bytes_in_other_cookies_never_carry_the_session_cookie_to_exchange() {
    let provider = support::start_provider().await;
    let exchange = FakeExchange::builder("ex01").start().await;
    let toml = support::SignInConfig::new(&provider, &exchange).toml();
    let gateway = support::TestGateway::start(&toml).await;
    gateway.wait_ready().await;
    let addr = gateway.http.expect("http listener");
    let mut alice = support::Browser::new(addr);
    alice.sign_in_ok("/owa/", &provider, "alice").await;
    let session = alice
        .cookie(support::SESSION_COOKIE)
        .expect("session cookie")
        .to_owned();

    // Latin-1 and stray bytes in Exchange's and the user's own cookies, around the session.
    let mut cookie = b"Cookie: X-OWA-CANARY=\xe9t\xe9; ".to_vec();
    cookie.extend_from_slice(format!("{}={session}; ", support::SESSION_COOKIE).as_bytes());
    cookie.extend_from_slice(b"M\xfcller=\xff\xfe");
    let others: &[u8] = b"X-OWA-CANARY=\xe9t\xe9; M\xfcller=\xff\xfe";
    // The signed-in page, and the public health check that takes no session at all.
    for path in ["/owa/", "/owa/healthcheck.htm"] {
        let mut request =
            format!("GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n").into_bytes();
        request.extend_from_slice(&cookie);
        request.extend_from_slice(b"\r\n\r\n");
        assert_eq!(raw_http1(addr, &request).await, Some(200), "{path}");
        let forwarded = exchange
            .requests()
            .into_iter()
            .rfind(|r| r.uri == path)
            .expect("forwarded");
        assert_eq!(
            forwarded.headers.get("cookie").map(|v| v.as_bytes()),
            Some(others),
            "{path}: the cookies Exchange received"
        );
    }
}

/// Stream 1 (or the whole connection, which HPACK decoding errors take down) was refused as
/// malformed, with no answer.
fn refused_as_malformed(seen: &Seen) -> bool {
    seen.answers.is_empty()
        && (seen.reset(1) == Some(PROTOCOL_ERROR) || seen.goaway == Some((0, PROTOCOL_ERROR)))
}

/// Sends one request header block on a new HTTP/2 connection; what came back for stream 1.
async fn http2_request(addr: SocketAddr, block: &[u8]) -> Seen {
    let (mut reader, mut writer) = open_http2(addr).await;
    writer
        .write_all(&frame(HEADERS, END_STREAM | END_HEADERS, 1, block))
        .await
        .expect("write");
    watch(&mut reader, IO_LIMIT, |s| s.settled(1)).await
}

#[tokio::test]
async fn raw_non_ascii_bytes_in_http2_header_blocks_are_forwarded_opaque_or_refused() {
    let exchange = FakeExchange::builder("ex01").start().await;
    let mut gateway = Gateway::start(&exchange, Limits::default()).await;

    // A value of obs-text reaches Exchange unchanged, as over HTTP/1.1.
    let mut block = request_block(b"/owa/", HOST.as_bytes());
    literal_new_name(&mut block, b"x-display-name", OBS_TEXT, false);
    let seen = http2_request(gateway.addr, &block).await;
    assert_eq!(seen.status(1), Some(200), "{seen:?}");
    let forwarded = exchange.user_requests();
    assert_eq!(forwarded.len(), 1);
    assert_eq!(
        forwarded[0]
            .headers
            .get("x-display-name")
            .map(|v| v.as_bytes()),
        Some(OBS_TEXT)
    );

    // A name with raw bytes is not a header name: the stream or the connection is refused.
    for name in [&b"x-n\xe4me"[..], b"\xff\xfe", b"\x80"] {
        let mut block = request_block(b"/owa/", HOST.as_bytes());
        literal_new_name(&mut block, name, b"value", false);
        let seen = http2_request(gateway.addr, &block).await;
        assert!(
            refused_as_malformed(&seen),
            "header name {:?}: {seen:?}",
            String::from_utf8_lossy(name)
        );
    }

    // Raw bytes in the pseudo-headers that route the request: refused likewise.
    for (path, authority) in [
        (&b"/owa/\xe9\xff"[..], HOST.as_bytes()),
        (b"/owa/", b"mail.contoso.com\xff"),
        (b"/owa/", b"m\xe4il.contoso.com"),
    ] {
        let seen = http2_request(gateway.addr, &request_block(path, authority)).await;
        assert!(
            refused_as_malformed(&seen),
            ":path {:?} :authority {:?}: {seen:?}",
            String::from_utf8_lossy(path),
            String::from_utf8_lossy(authority)
        );
    }
    assert_eq!(
        exchange.user_requests().len(),
        1,
        "only the obs-text value was forwarded"
    );
    assert_another_client_is_served(gateway.addr).await;
    gateway.assert_unharmed();
}
