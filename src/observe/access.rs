//! The access log: one line per request, written when the response body is finished (or the
//! browser went away), with route, status, Exchange server, duration and bytes. The query string
//! is never logged: OWA puts its canary and other tokens there. The [`AccessRecord`] rides on
//! the response body as its [`BodyObserver`] and is written when the body is done; a request
//! given up before it had a response (the browser went away while Exchange was being asked)
//! is written when its record is dropped.
//!
//! The binary installs a [`Sink`]: lines are then formatted here, straight into one buffer, and
//! handed to the background log writer — the generic event formatter costs several times more
//! per request. Without a sink (the library in tests) each line is a `tracing` event of target
//! `access`. Either way the `access` target of `MFA_GATEWAY_LOG` decides what is written.

use std::cell::RefCell;
use std::io::Write as _;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::{HeaderValue, Method, Uri, Version};
use tracing::Level;

use super::metrics::{Counters, RouteSlot};
use crate::body::{BodyError, BodyObserver};
use crate::error::Side;

/// How access lines look: like the rest of the log, text or one JSON object per line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

/// Writes one formatted line.
type WriteLine = dyn Fn(&[u8]) + Send + Sync;

/// Where formatted access lines go (the binary's background log writer).
pub struct Sink {
    format: Format,
    write: Box<WriteLine>,
}

static SINK: OnceLock<Sink> = OnceLock::new();

/// Sends access lines, formatted in `format`, to `write` from now on. Only the first call takes
/// effect (the binary calls it once, beside installing the log subscriber).
pub fn install(format: Format, write: impl Fn(&[u8]) + Send + Sync + 'static) {
    let _ = SINK.set(Sink {
        format,
        write: Box::new(write),
    });
}

pub struct AccessRecord {
    start: Instant,
    /// The serving worker's counters, and which route's this request counts in.
    counters: Counters,
    route: RouteSlot,
    method: Method,
    uri: Uri,
    version: Version,
    /// The browser's address as text (formatted once per connection when it is the peer).
    client: HeaderValue,
    status: u16,
    upstream: Option<Arc<str>>,
    bytes: u64,
    failure: Option<(Side, String)>,
    /// Counted and logged: once per request, whichever of the body's end or the record's drop
    /// comes first.
    written: bool,
}

impl AccessRecord {
    /// The record of a request counted as unrouted until [`AccessRecord::set_route`] says
    /// otherwise.
    pub fn new(
        start: Instant,
        counters: Counters,
        method: Method,
        uri: Uri,
        version: Version,
        client: HeaderValue,
    ) -> AccessRecord {
        AccessRecord {
            start,
            counters,
            route: RouteSlot::UNROUTED,
            method,
            uri,
            version,
            client,
            status: 0,
            upstream: None,
            bytes: 0,
            failure: None,
            written: false,
        }
    }

    pub fn set_route(&mut self, route: RouteSlot) {
        self.route = route;
    }

    pub fn set_status(&mut self, status: u16) {
        self.status = status;
    }

    pub fn set_upstream(&mut self, server: Arc<str>) {
        self.upstream = Some(server);
    }

    pub fn set_failure(&mut self, side: Side, detail: String) {
        self.failure = Some((side, detail));
    }
}

impl BodyObserver for AccessRecord {
    fn sent(&mut self, bytes: u64) {
        self.bytes += bytes;
    }

    fn failed(&mut self, error: &BodyError) {
        let side = match error {
            BodyError::TooLarge | BodyError::Downstream(_) | BodyError::Stalled => Side::Downstream,
            BodyError::Upstream(_) => Side::Upstream,
        };
        self.failure = Some((side, error.to_string()));
    }

    fn done(&mut self) {
        self.finish();
    }
}

impl Drop for AccessRecord {
    fn drop(&mut self) {
        self.finish();
    }
}

impl AccessRecord {
    /// Counts the request and writes its access line, the first time only.
    fn finish(&mut self) {
        if std::mem::replace(&mut self.written, true) {
            return;
        }
        let elapsed = self.start.elapsed();
        self.counters.count(self.route, self.status, elapsed);
        let level = if self.failure.is_some() {
            Level::WARN
        } else {
            Level::INFO
        };
        let enabled = if level == Level::WARN {
            tracing::enabled!(target: "access", Level::WARN)
        } else {
            tracing::enabled!(target: "access", Level::INFO)
        };
        if !enabled {
            return;
        }
        let Some(sink) = SINK.get() else {
            self.emit_event(elapsed);
            return;
        };
        let now = SystemTime::now();
        // A worker's own buffer: lines go to the log writer in batches, with no write to
        // memory another core writes per line.
        let buffered = PENDING
            .try_with(|pending| match pending.try_borrow_mut() {
                Ok(mut pending) => match pending.as_mut() {
                    Some(batch) => {
                        let first = batch.is_empty();
                        self.write_line(batch, sink.format, level, now, elapsed);
                        if batch.len() >= BATCH_BYTES {
                            (sink.write)(batch);
                            batch.clear();
                        } else if first {
                            schedule_flush();
                        }
                        true
                    }
                    None => false,
                },
                Err(_) => false,
            })
            .unwrap_or(false);
        if buffered {
            return;
        }
        let write = |line: &mut Vec<u8>| {
            line.clear();
            self.write_line(line, sink.format, level, now, elapsed);
            (sink.write)(line);
        };
        // The reused buffer, unless this thread is shutting down (or, which nothing does
        // today, an access line is being written while another is formatted): then a new one.
        let written = LINE
            .try_with(|line| match line.try_borrow_mut() {
                Ok(mut line) => {
                    write(&mut line);
                    true
                }
                Err(_) => false,
            })
            .unwrap_or(false);
        if !written {
            write(&mut Vec::with_capacity(512));
        }
    }
}

/// A worker hands its buffered access lines to the log writer once they reach this size...
const BATCH_BYTES: usize = 32 * 1024;
/// ...or at the latest this long after the first of them was written.
const FLUSH_AFTER: Duration = Duration::from_millis(50);

/// Keeps the access lines written on this thread in a buffer of its own, handed to the log
/// writer in batches ([`BATCH_BYTES`], or [`FLUSH_AFTER`] after the first line of a batch).
/// For a worker thread whose tokio runtime is single-threaded: the flush is a task spawned on
/// it. The worker calls [`flush_this_thread`] when its runtime has stopped.
pub fn buffer_on_this_thread() {
    let _ = PENDING.try_with(|pending| {
        if let Ok(mut pending) = pending.try_borrow_mut() {
            pending.get_or_insert_with(|| Vec::with_capacity(BATCH_BYTES));
        }
    });
}

/// Hands this thread's buffered access lines to the log writer.
pub fn flush_this_thread() {
    let Some(sink) = SINK.get() else {
        return;
    };
    let _ = PENDING.try_with(|pending| {
        if let Ok(mut pending) = pending.try_borrow_mut() {
            if let Some(batch) = pending.as_mut().filter(|batch| !batch.is_empty()) {
                (sink.write)(batch);
                batch.clear();
            }
        }
    });
}

/// Flushes this thread's batch after [`FLUSH_AFTER`], from a task on this thread's runtime
/// (at once when there is none).
fn schedule_flush() {
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            runtime.spawn(async {
                tokio::time::sleep(FLUSH_AFTER).await;
                flush_this_thread();
            });
        }
        Err(_) => flush_this_thread(),
    }
}

thread_local! {
    /// A worker's batch of access lines (see [`buffer_on_this_thread`]); `None` elsewhere.
    static PENDING: RefCell<Option<Vec<u8>>> = const { RefCell::new(None) };
    /// The line being formatted, reused: no allocation per request once it has grown.
    static LINE: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(512));
    /// The date and time to the second, formatted once per second per thread.
    static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

impl AccessRecord {
    /// One access line, ending in a newline, in the same shape as the rest of the log.
    fn write_line(
        &self,
        out: &mut Vec<u8>,
        format: Format,
        level: Level,
        now: SystemTime,
        elapsed: Duration,
    ) {
        let micros = elapsed.as_micros();
        let duration_ms = format_args!("{}.{:03}", micros / 1000, micros % 1000);
        let upstream = self.upstream.as_deref().unwrap_or("-");
        let level = if level == Level::WARN { "WARN" } else { "INFO" };
        match format {
            Format::Text => {
                write_timestamp(out, now);
                let _ = write!(out, "  {level} access: client=");
                // An address as the gateway formatted it; escaped all the same, like any value.
                let client = self.client.to_str().unwrap_or("-");
                if is_plain(client) && !client.contains(' ') {
                    out.extend_from_slice(client.as_bytes());
                } else {
                    text_string(out, client);
                }
                let _ = write!(out, " method={} path=", self.method);
                text_string(out, self.uri.path());
                let _ = write!(out, " version={:?} route=", self.version);
                text_string(out, self.counters.name(self.route));
                let _ = write!(out, " status={} upstream=", self.status);
                text_string(out, upstream);
                let _ = write!(out, " duration_ms={duration_ms} bytes={}", self.bytes);
                if let Some((side, detail)) = &self.failure {
                    let _ = write!(out, " failed={} error=", side.as_str());
                    text_string(out, detail);
                }
            }
            Format::Json => {
                out.extend_from_slice(b"{\"timestamp\":\"");
                write_timestamp(out, now);
                let _ = write!(
                    out,
                    "\",\"level\":\"{level}\",\"target\":\"access\",\"client\":"
                );
                json_string(out, self.client.to_str().unwrap_or("-"));
                out.extend_from_slice(b",\"method\":");
                json_string(out, self.method.as_str());
                out.extend_from_slice(b",\"path\":");
                json_string(out, self.uri.path());
                let _ = write!(out, ",\"version\":\"{:?}\",\"route\":", self.version);
                json_string(out, self.counters.name(self.route));
                let _ = write!(out, ",\"status\":{},\"upstream\":", self.status);
                json_string(out, upstream);
                let _ = write!(
                    out,
                    ",\"duration_ms\":{duration_ms},\"bytes\":{}",
                    self.bytes
                );
                if let Some((side, detail)) = &self.failure {
                    let _ = write!(out, ",\"failed\":\"{}\",\"error\":", side.as_str());
                    json_string(out, detail);
                }
                out.push(b'}');
            }
        }
        out.push(b'\n');
    }

    fn emit_event(&self, elapsed: Duration) {
        let duration_ms = elapsed.as_secs_f64() * 1000.0;
        let upstream = self.upstream.as_deref().unwrap_or("-");
        match &self.failure {
            None => tracing::info!(
                target: "access",
                client = self.client.to_str().unwrap_or("-"),
                method = %self.method,
                path = self.uri.path(),
                version = ?self.version,
                route = self.counters.name(self.route),
                status = self.status,
                upstream,
                duration_ms,
                bytes = self.bytes,
            ),
            Some((side, detail)) => tracing::warn!(
                target: "access",
                client = self.client.to_str().unwrap_or("-"),
                method = %self.method,
                path = self.uri.path(),
                version = ?self.version,
                route = self.counters.name(self.route),
                status = self.status,
                upstream,
                duration_ms,
                bytes = self.bytes,
                failed = side.as_str(),
                error = %detail,
            ),
        }
    }
}

/// `2026-11-25T13:14:16.571282Z` (UTC, microseconds), as the rest of the log writes it.
fn write_timestamp(out: &mut Vec<u8>, now: SystemTime) {
    let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since_epoch.as_secs();
    let format = |secs: u64| {
        i64::try_from(secs)
            .ok()
            .and_then(|s| chrono::DateTime::from_timestamp(s, 0))
            .map(|t| t.format("%Y-%m-%dT%H:%M:%S").to_string())
            .unwrap_or_default()
    };
    let cached = SECOND.try_with(|second| {
        let Ok(mut second) = second.try_borrow_mut() else {
            return false;
        };
        if second.0 != secs {
            *second = (secs, format(secs));
        }
        out.extend_from_slice(second.1.as_bytes());
        true
    });
    if cached != Ok(true) {
        out.extend_from_slice(format(secs).as_bytes());
    }
    let _ = write!(out, ".{:06}Z", since_epoch.subsec_micros());
}

/// Plain printable ASCII without quotes or backslashes: written as it is inside quotes.
fn is_plain(text: &str) -> bool {
    text.bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
}

/// A string value in the text format: quoted, escaped like Rust's `{:?}` when needed, so a
/// path cannot forge fields or lines.
fn text_string(out: &mut Vec<u8>, text: &str) {
    quoted(out, text, |out, text| {
        let _ = write!(out, "{text:?}");
    });
}

/// A JSON string, escaped when needed.
fn json_string(out: &mut Vec<u8>, text: &str) {
    quoted(out, text, |out, text| {
        let _ = serde_json::to_writer(&mut *out, text);
    });
}

/// `text` in double quotes as it is when it is plain, else as `escape` writes it (quotes
/// included).
fn quoted(out: &mut Vec<u8>, text: &str, escape: impl FnOnce(&mut Vec<u8>, &str)) {
    if is_plain(text) {
        out.push(b'"');
        out.extend_from_slice(text.as_bytes());
        out.push(b'"');
    } else {
        escape(out, text);
    }
}

#[cfg(test)]
mod tests {
    use super::super::metrics::Metrics;
    use super::*;

    fn record(path: &str) -> AccessRecord {
        let metrics = Arc::new(Metrics::default());
        let counters = Counters::new(&metrics, [metrics.route("mail.contoso.com/owa")]);
        let mut record = AccessRecord::new(
            Instant::now(),
            counters,
            Method::GET,
            path.parse().unwrap(),
            Version::HTTP_11,
            HeaderValue::from_static("203.0.113.7"),
        );
        record.set_route(RouteSlot::route(0));
        record.set_status(200);
        record.set_upstream(Arc::from("https://ex01.corp.contoso.com"));
        record.sent(857);
        record
    }

    fn line(record: &AccessRecord, format: Format) -> String {
        let mut out = Vec::new();
        let level = if record.failure.is_some() {
            Level::WARN
        } else {
            Level::INFO
        };
        let now = UNIX_EPOCH + Duration::from_micros(1_795_616_056_571_282);
        record.write_line(&mut out, format, level, now, Duration::from_micros(720));
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn text_line_has_every_field_and_no_query() {
        let record = record("/owa/service.svc?action=GetItem&canary=SECRET");
        assert_eq!(
            line(&record, Format::Text),
            "2026-11-25T14:14:16.571282Z  INFO access: client=203.0.113.7 method=GET \
             path=\"/owa/service.svc\" version=HTTP/1.1 route=\"mail.contoso.com/owa\" \
             status=200 upstream=\"https://ex01.corp.contoso.com\" duration_ms=0.720 \
             bytes=857\n"
        );
    }

    #[test]
    fn json_line_parses_with_typed_fields() {
        let mut record = record("/owa/?ae=Folder&canary=SECRET");
        record.set_failure(Side::Upstream, "connection \"reset\"\nby peer".to_owned());
        let text = line(&record, Format::Json);
        assert!(
            text.ends_with("}\n") && !text.trim_end().contains('\n'),
            "{text}"
        );
        assert!(!text.contains("SECRET"));
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["timestamp"], "2026-11-25T14:14:16.571282Z");
        assert_eq!(value["level"], "WARN");
        assert_eq!(value["target"], "access");
        assert_eq!(value["client"], "203.0.113.7");
        assert_eq!(value["method"], "GET");
        assert_eq!(value["path"], "/owa/");
        assert_eq!(value["version"], "HTTP/1.1");
        assert_eq!(value["route"], "mail.contoso.com/owa");
        assert_eq!(value["status"], 200);
        assert_eq!(value["upstream"], "https://ex01.corp.contoso.com");
        assert_eq!(value["duration_ms"], 0.72);
        assert_eq!(value["bytes"], 857);
        assert_eq!(value["failed"], "exchange");
        assert_eq!(value["error"], "connection \"reset\"\nby peer");
    }

    #[test]
    fn hostile_path_cannot_forge_fields_or_lines() {
        // Quotes, backslashes and bytes beyond ASCII in a path are escaped in both formats.
        let record = record("/owa/%22%0A/\u{e9}\"x\\");
        let text = line(&record, Format::Text);
        assert_eq!(text.matches('\n').count(), 1, "{text}");
        let path = record.uri.path();
        assert!(path.contains('"') && path.contains('\\'), "{path}");
        assert!(text.contains(&format!(" path={path:?} ")), "{text}");
        let json = line(&record, Format::Json);
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["path"], record.uri.path());
    }

    #[test]
    fn a_client_value_cannot_forge_fields_either() {
        let mut record = record("/owa/");
        record.client = HeaderValue::from_static("203.0.113.7\", \"status\": 500, \"x\": \"");
        let json = line(&record, Format::Json);
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["client"], record.client.to_str().unwrap());
        assert_eq!(value["status"], 200);
        let text = line(&record, Format::Text);
        assert!(text.contains(" status=200 "), "{text}");
        assert!(
            text.contains(r#"client="203.0.113.7\", \"status\""#),
            "{text}"
        );
    }

    #[test]
    fn timestamp_formats_each_second_and_its_microseconds() {
        let mut out = Vec::new();
        write_timestamp(&mut out, UNIX_EPOCH + Duration::from_micros(5));
        out.push(b' ');
        write_timestamp(&mut out, UNIX_EPOCH + Duration::from_micros(86_400_999_999));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "1970-01-01T00:00:00.000005Z 1970-01-02T00:00:00.999999Z"
        );
    }

    #[test]
    fn a_request_is_counted_once_when_its_body_is_done_and_its_record_dropped() {
        let metrics = Arc::new(Metrics::default());
        let counters = Counters::new(&metrics, [metrics.route("mail.contoso.com/owa")]);
        let mut record = AccessRecord::new(
            Instant::now(),
            counters.for_worker(),
            Method::GET,
            "/owa/".parse().unwrap(),
            Version::HTTP_11,
            HeaderValue::from_static("203.0.113.7"),
        );
        record.set_route(RouteSlot::route(0));
        record.set_status(200);
        record.done();
        drop(record);
        let text = metrics.render(super::super::metrics::Scrape::default());
        assert!(
            text.contains(
                "mfagw_requests_total{route=\"mail.contoso.com/owa\",status=\"200\"} 1\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("mfagw_request_duration_seconds_count 1\n"),
            "{text}"
        );
    }

    #[test]
    fn a_body_that_exchange_cut_off_is_logged_as_failed_on_exchange_side() {
        let mut cut_off = record("/owa/attachment.ashx");
        cut_off.failed(&BodyError::Upstream(
            "no data from Exchange within idle_timeout".into(),
        ));
        let text = line(&cut_off, Format::Text);
        assert!(
            text.contains(" failed=exchange error=\"exchange side: no data from Exchange"),
            "{text}"
        );
        let mut gone = record("/owa/");
        gone.failed(&BodyError::Downstream("connection reset".into()));
        assert!(line(&gone, Format::Text).contains(" failed=browser "));
    }
}
