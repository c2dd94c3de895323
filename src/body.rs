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

use crate::access::AccessRecord;

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

pin_project! {
    /// The body of every response the gateway sends: either a page of its own or Exchange's
    /// response streamed through. Carries the request's access record, which is written to the
    /// log when the body is finished or abandoned, so the logged duration and byte count are the
    /// real ones.
    pub struct ResponseBody {
        #[pin]
        kind: ResponseKind,
        record: Option<AccessRecord>,
        // Kept until the body is finished or dropped: marks the request as in flight.
        held: Option<Box<dyn Send>>,
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
        },
    }
}

impl ResponseBody {
    pub fn full(data: Bytes) -> ResponseBody {
        ResponseBody {
            kind: ResponseKind::Full { data: Some(data) },
            record: None,
            held: None,
        }
    }

    pub fn empty() -> ResponseBody {
        ResponseBody {
            kind: ResponseKind::Full { data: None },
            record: None,
            held: None,
        }
    }

    /// Exchange's body, failing when no data arrives for `idle_timeout`: a silent server must
    /// not hold a browser connection forever, yet OWA long polls that trickle data stay open.
    pub fn upstream(body: Incoming, idle_timeout: Duration) -> ResponseBody {
        ResponseBody {
            kind: ResponseKind::Upstream {
                body,
                idle: tokio::time::sleep(idle_timeout),
                idle_timeout,
            },
            record: None,
            held: None,
        }
    }

    pub fn set_record(&mut self, record: AccessRecord) {
        self.record = Some(record);
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
        let this = self.project();
        let polled = match this.kind.project() {
            ResponseKindProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            ResponseKindProj::Upstream {
                body,
                mut idle,
                idle_timeout,
            } => match body.poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    idle.as_mut().reset(Instant::now() + *idle_timeout);
                    Poll::Ready(Some(Ok(frame)))
                }
                Poll::Ready(Some(Err(e))) => {
                    Poll::Ready(Some(Err(BodyError::Upstream(e.to_string()))))
                }
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => {
                    ready!(idle.poll(cx));
                    Poll::Ready(Some(Err(BodyError::Upstream(
                        "no data from Exchange within idle_timeout".into(),
                    ))))
                }
            },
        };
        if let Some(record) = this.record.as_mut() {
            match &polled {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        record.add_bytes(data.len() as u64);
                    }
                }
                Poll::Ready(Some(Err(e))) => record.set_body_error(e),
                _ => {}
            }
        }
        polled
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
            remaining: limit,
            progress: Some(progress),
            stall: Some(Box::pin(tokio::time::sleep(stall_timeout))),
            stall_timeout,
        }
    }

    pub fn empty() -> RequestBody {
        RequestBody {
            inner: None,
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
        self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), |b| b.size_hint())
    }
}
