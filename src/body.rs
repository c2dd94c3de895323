//! Body types that stream: nothing here collects a body into memory. A 35 MB OWA attachment or
//! a 1 GiB download passes through frame by frame, so the gateway's memory does not grow with
//! the size of what it forwards.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

use crate::proxy::Lease;

/// Error of a body stream, with the side that failed.
#[derive(Debug)]
pub enum BodyError {
    /// The browser sent more than `max_request_body`.
    TooLarge,
    /// The browser's connection failed mid-body.
    Downstream(String),
    /// The browser stopped sending its body for longer than `request_body_timeout`.
    Stalled,
    /// Exchange's connection failed or fell silent for longer than `idle_timeout`.
    Upstream(String),
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyError::TooLarge => {
                f.write_str("browser side: request body larger than max_request_body")
            }
            BodyError::Downstream(e) => write!(f, "browser side: {e}"),
            BodyError::Stalled => {
                f.write_str("browser side: no request body data within request_body_timeout")
            }
            BodyError::Upstream(e) => write!(f, "exchange side: {e}"),
        }
    }
}

impl std::error::Error for BodyError {}

/// Told what becomes of a response body on its way to the browser: the request's record (the
/// access log line and the request metrics), carried by an [`ObservedBody`].
pub trait BodyObserver: Send {
    /// `bytes` more of the body were handed to the browser's connection.
    fn sent(&mut self, bytes: u64);

    /// The body failed (Exchange went away or fell silent, or the browser's side failed);
    /// nothing more will be sent.
    fn failed(&mut self, error: &BodyError);

    /// The body is finished, or abandoned because the browser went away: the request is over,
    /// and its real duration and byte count are known. Called once, when the body is dropped.
    fn done(&mut self);
}

pin_project! {
    /// The body of every response the gateway sends: either a page of its own or Exchange's
    /// response streamed through.
    pub struct ResponseBody {
        #[pin]
        kind: ResponseKind,
        // Kept until the body is finished or dropped: marks the request as in flight.
        held: Option<Box<dyn Send>>,
    }
}

pin_project! {
    /// A response body on its way to the browser with the request's record, which is told of
    /// every frame and is done when the body is dropped, so the logged duration and byte count
    /// are the real ones. Generic over the record, so that bodies depend on no particular log
    /// or metric; the record is kept inline, which costs a request no allocation.
    pub struct ObservedBody<O: BodyObserver> {
        #[pin]
        body: ResponseBody,
        observer: O,
    }

    impl<O: BodyObserver> PinnedDrop for ObservedBody<O> {
        fn drop(this: Pin<&mut Self>) {
            this.project().observer.done();
        }
    }
}

impl<O: BodyObserver> ObservedBody<O> {
    pub fn new(body: ResponseBody, observer: O) -> ObservedBody<O> {
        ObservedBody { body, observer }
    }

    /// Keeps `guard` alive until this body is finished or dropped.
    pub fn hold(&mut self, guard: impl Send + 'static) {
        self.body.hold(guard);
    }
}

impl<O: BodyObserver> Body for ObservedBody<O> {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.project();
        let polled = this.body.poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.observer.sent(data.len() as u64);
                }
            }
            Poll::Ready(Some(Err(e))) => this.observer.failed(e),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

pin_project! {
    #[project = ResponseKindProj]
    enum ResponseKind {
        Full { data: Option<Bytes> },
        Upstream {
            #[pin]
            body: Incoming,
            #[pin]
            idle: Sleep,
            idle_timeout: Duration,
            // The connection the body arrives on, given back for reuse once the body is read
            // to the end; closed with the body otherwise.
            lease: Option<Lease>,
        },
    }
}

impl ResponseBody {
    pub fn full(data: Bytes) -> ResponseBody {
        ResponseBody {
            kind: ResponseKind::Full { data: Some(data) },
            held: None,
        }
    }

    pub fn empty() -> ResponseBody {
        ResponseBody {
            kind: ResponseKind::Full { data: None },
            held: None,
        }
    }

    /// Exchange's body, failing when no data arrives for `idle_timeout`: a silent server must
    /// not hold a browser connection forever, yet OWA long polls that trickle data stay open.
    /// `lease`, the connection it arrives on, goes back for reuse when the body has been read
    /// to the end (at once for an empty body), and is closed if the body is dropped before.
    pub fn upstream(body: Incoming, idle_timeout: Duration, lease: Option<Lease>) -> ResponseBody {
        let lease = match lease {
            Some(lease) if body.is_end_stream() => {
                lease.reuse();
                None
            }
            lease => lease,
        };
        ResponseBody {
            kind: ResponseKind::Upstream {
                body,
                idle: tokio::time::sleep(idle_timeout),
                idle_timeout,
                lease,
            },
            held: None,
        }
    }

    /// Keeps `guard` alive until this body is finished or dropped.
    pub fn hold(&mut self, guard: impl Send + 'static) {
        self.held = Some(Box::new(guard));
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.project().kind.project() {
            ResponseKindProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            ResponseKindProj::Upstream {
                mut body,
                mut idle,
                idle_timeout,
                lease,
            } => match body.as_mut().poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    idle.as_mut().reset(Instant::now() + *idle_timeout);
                    // The browser's side stops polling once the body says it is complete
                    // (a Content-Length reached): that is the end too.
                    if body.is_end_stream() {
                        if let Some(lease) = lease.take() {
                            lease.reuse();
                        }
                    }
                    Poll::Ready(Some(Ok(frame)))
                }
                Poll::Ready(Some(Err(e))) => {
                    // Broken mid-body: never reused.
                    drop(lease.take());
                    Poll::Ready(Some(Err(BodyError::Upstream(e.to_string()))))
                }
                Poll::Ready(None) => {
                    if let Some(lease) = lease.take() {
                        lease.reuse();
                    }
                    Poll::Ready(None)
                }
                Poll::Pending => {
                    ready!(idle.poll(cx));
                    drop(lease.take());
                    Poll::Ready(Some(Err(BodyError::Upstream(
                        "no data from Exchange within idle_timeout".into(),
                    ))))
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            ResponseKind::Full { data } => data.is_none(),
            ResponseKind::Upstream { body, .. } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            ResponseKind::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            ResponseKind::Upstream { body, .. } => body.size_hint(),
        }
    }
}

pin_project! {
    /// The browser's request body on its way to Exchange, cut off with an error once it exceeds
    /// the upstream's `max_request_body` (for chunked uploads whose size is not announced), or
    /// once the browser sends nothing for `request_body_timeout` (a client that announces a
    /// body and stalls must not hold a connection to Exchange for the upstream's idle timeout).
    pub struct RequestBody {
        #[pin]
        inner: Option<Incoming>,
        // A body the gateway read whole before forwarding it (Exchange's forms logon).
        read: Option<Bytes>,
        remaining: u64,
        progress: Option<Arc<AtomicU64>>,
        // Boxed: the upstream client needs an Unpin body.
        stall: Option<Pin<Box<Sleep>>>,
        stall_timeout: Duration,
    }
}

impl RequestBody {
    /// `progress` counts the bytes passed on, so the proxy can tell a slow upload that is
    /// still moving from an Exchange server that went silent.
    pub fn new(
        body: Incoming,
        limit: u64,
        progress: Arc<AtomicU64>,
        stall_timeout: Duration,
    ) -> RequestBody {
        RequestBody {
            inner: Some(body),
            read: None,
            remaining: limit,
            progress: Some(progress),
            stall: Some(Box::pin(tokio::time::sleep(stall_timeout))),
            stall_timeout,
        }
    }

    /// A body the gateway has read whole already, passed on as it came.
    pub fn read(bytes: Bytes) -> RequestBody {
        RequestBody {
            inner: None,
            read: (!bytes.is_empty()).then_some(bytes),
            remaining: 0,
            progress: None,
            stall: None,
            stall_timeout: Duration::ZERO,
        }
    }

    pub fn empty() -> RequestBody {
        RequestBody {
            inner: None,
            read: None,
            remaining: 0,
            progress: None,
            stall: None,
            stall_timeout: Duration::ZERO,
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.project();
        if let Some(read) = this.read.take() {
            return Poll::Ready(Some(Ok(Frame::data(read))));
        }
        let Some(inner) = this.inner.as_pin_mut() else {
            return Poll::Ready(None);
        };
        let stall = this.stall;
        let polled = inner.poll_frame(cx);
        if polled.is_pending() {
            if let Some(stall) = stall.as_mut() {
                ready!(stall.as_mut().poll(cx));
                return Poll::Ready(Some(Err(BodyError::Stalled)));
            }
            return Poll::Pending;
        }
        if let Some(stall) = stall.as_mut() {
            stall.as_mut().reset(Instant::now() + *this.stall_timeout);
        }
        match ready!(polled) {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    let len = data.len() as u64;
                    if len > *this.remaining {
                        return Poll::Ready(Some(Err(BodyError::TooLarge)));
                    }
                    *this.remaining -= len;
                    if let Some(progress) = this.progress {
                        progress.fetch_add(len, Ordering::Relaxed);
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => Poll::Ready(Some(Err(BodyError::Downstream(e.to_string())))),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.read.is_none() && self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        if let Some(read) = &self.read {
            return SizeHint::with_exact(read.len() as u64);
        }
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), |b| b.size_hint())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::task::Waker;

    use super::*;

    /// What a record was told.
    #[derive(Default)]
    struct Told {
        bytes: u64,
        failures: usize,
        done: usize,
    }

    struct Probe(Arc<Mutex<Told>>);

    impl BodyObserver for Probe {
        fn sent(&mut self, bytes: u64) {
            self.0.lock().unwrap().bytes += bytes;
        }

        fn failed(&mut self, _error: &BodyError) {
            self.0.lock().unwrap().failures += 1;
        }

        fn done(&mut self) {
            self.0.lock().unwrap().done += 1;
        }
    }

    const PAGE: &[u8] = b"<!doctype html><title>Signed out</title>";

    fn observed_page() -> (Pin<Box<ObservedBody<Probe>>>, Arc<Mutex<Told>>) {
        let told = Arc::new(Mutex::new(Told::default()));
        let body = ObservedBody::new(
            ResponseBody::full(Bytes::from_static(PAGE)),
            Probe(told.clone()),
        );
        (Box::pin(body), told)
    }

    #[test]
    fn the_record_hears_every_byte_and_ends_with_the_body() {
        let (mut body, told) = observed_page();
        let mut cx = Context::from_waker(Waker::noop());
        let mut frames = 0;
        while let Poll::Ready(Some(frame)) = body.as_mut().poll_frame(&mut cx) {
            assert!(frame.is_ok());
            frames += 1;
        }
        assert_eq!(frames, 1);
        assert_eq!(told.lock().unwrap().bytes, PAGE.len() as u64);
        assert_eq!(
            told.lock().unwrap().done,
            0,
            "the request is over only when the body is"
        );
        drop(body);
        let told = told.lock().unwrap();
        assert_eq!(told.done, 1);
        assert_eq!(told.failures, 0);
    }

    #[test]
    fn an_abandoned_body_still_ends_the_record_with_nothing_sent() {
        // The browser went away before the first frame: the access line must still be written.
        let (body, told) = observed_page();
        drop(body);
        let told = told.lock().unwrap();
        assert_eq!(told.done, 1);
        assert_eq!(told.bytes, 0);
    }
}
