//! A sample Exchange server for the demo: OWA-like pages, the `healthcheck.htm` probe page, and
//! a view of the headers the gateway forwarded, so an administrator can see what Exchange
//! receives.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use super::adfs::AdfsMode;
use crate::pages::escape;

pub struct SampleExchange {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl SampleExchange {
    pub async fn start(addr: SocketAddr) -> std::io::Result<SampleExchange> {
        SampleExchange::start_in(addr, None).await
    }

    /// The sample in AD FS claims authentication mode (`demo --sso adfs`).
    pub(super) async fn start_in(
        addr: SocketAddr,
        adfs: Option<Arc<AdfsMode>>,
    ) -> std::io::Result<SampleExchange> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let adfs = adfs.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let adfs = adfs.clone();
                        async move {
                            let response = match &adfs {
                                Some(mode) => super::adfs::respond(req, mode).await,
                                None => respond(&req),
                            };
                            Ok::<_, std::convert::Infallible>(response)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(SampleExchange { addr, task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for SampleExchange {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn respond(request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let path = request.uri().path().to_ascii_lowercase();
    let (status, body) = if path.ends_with("/healthcheck.htm") {
        (
            StatusCode::OK,
            "<html><body><h1>200 OK</h1></body></html>".to_owned(),
        )
    } else if path.starts_with("/owa") {
        (StatusCode::OK, owa_page(request))
    } else {
        (
            StatusCode::NOT_FOUND,
            "<html><body>404</body></html>".to_owned(),
        )
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    response
}

fn owa_page(request: &Request<Incoming>) -> String {
    let mut rows = String::new();
    for (name, value) in request.headers() {
        let value = value.to_str().unwrap_or("(binary)");
        rows.push_str(&format!(
            "<tr><td>{}</td><td>{}</td></tr>",
            escape(name.as_str()),
            escape(value)
        ));
    }
    format!(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Outlook</title>\
<style>body{{font-family:'Segoe UI',system-ui,sans-serif;margin:0}}header{{background:#0f6cbd;color:#fff;\
padding:.8rem 1.5rem;font-size:1.2rem}}main{{padding:1.5rem}}td{{padding:.2rem .8rem;border-bottom:1px solid #ddd;\
font-family:monospace}}</style></head><body><header>Outlook (sample Exchange server)</header><main>\
<h2>Inbox</h2><p>This page comes from the sample Exchange server behind mfa-gateway. \
It received <code>{} {}</code> with these headers:</p><table>{rows}</table></main></body></html>",
        escape(request.method().as_str()),
        escape(request.uri().path()),
    )
}
