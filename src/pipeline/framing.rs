//! The request as it arrived: framing two parsers could read differently, the head's size,
//! the host the browser asked for, and the scheme it used.

use http::header::{HeaderValue, CONTENT_LENGTH, HOST, LOCATION, TRANSFER_ENCODING};
use http::{Method, Request, Response, StatusCode, Version};
use hyper::body::Incoming;

use crate::body::ResponseBody;
use crate::error::GatewayError;
use crate::proxy::headers;

/// The scheme the browser used: the connection's own, or — behind a trusted load balancer
/// that terminates TLS — what it reports in `X-Forwarded-Proto`.
pub(super) fn browser_scheme(
    tls: bool,
    peer_trusted: bool,
    headers: &http::HeaderMap,
) -> &'static str {
    if tls {
        return "https";
    }
    let forwarded_https = peer_trusted
        && headers
            .get(headers::X_FORWARDED_PROTO)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"));
    if forwarded_https {
        "https"
    } else {
        "http"
    }
}

/// Refuses requests whose framing two parsers could read differently (request smuggling):
/// `Transfer-Encoding` together with `Content-Length`, or several `Content-Length` values.
pub(super) fn check_framing(request: &Request<Incoming>) -> Result<(), GatewayError> {
    let headers = request.headers();
    if headers.contains_key(TRANSFER_ENCODING) && headers.contains_key(CONTENT_LENGTH) {
        return Err(GatewayError::BadRequest(
            "both Transfer-Encoding and Content-Length",
        ));
    }
    let mut lengths = headers.get_all(CONTENT_LENGTH).iter();
    if lengths.next().is_some() && lengths.next().is_some() {
        return Err(GatewayError::BadRequest("several Content-Length headers"));
    }
    // HTTP/1.1 hands us Transfer-Encoding only when it ends in chunked. Anything but a single
    // plain `chunked` (`gzip, chunked`, `chunked, chunked`, two header lines) would be decoded
    // here and re-framed toward Exchange with a meaning the sender did not intend: refuse it.
    // HTTP/2 has no Transfer-Encoding at all.
    let mut codings = headers.get_all(TRANSFER_ENCODING).iter();
    if let Some(first) = codings.next() {
        let plain_chunked = request.version() == Version::HTTP_11
            && codings.next().is_none()
            && first
                .as_bytes()
                .trim_ascii()
                .eq_ignore_ascii_case(b"chunked");
        if !plain_chunked {
            return Err(GatewayError::BadRequest(
                "Transfer-Encoding other than chunked",
            ));
        }
    }
    Ok(())
}

/// A request head larger than `max_header_bytes`, counted the same way on both protocols: the
/// request line and every header line as HTTP/1.1 writes them. hyper's own limits are looser
/// (a read buffer, an HPACK table size), so this is where the configured number holds exactly.
pub(super) fn check_head_size<B>(request: &Request<B>, max: usize) -> Result<(), GatewayError> {
    // "GET " + target + " HTTP/1.1\r\n" … "\r\n"
    let target = request
        .uri()
        .path_and_query()
        .map_or(1, |pq| pq.as_str().len());
    let mut size = request.method().as_str().len() + 1 + target + 11 + 2;
    if !request.headers().contains_key(HOST) {
        // HTTP/2's `:authority` stands for the Host line.
        if let Some(authority) = request.uri().authority() {
            size += 6 + authority.as_str().len() + 2;
        }
    }
    for (name, value) in request.headers() {
        size += name.as_str().len() + 2 + value.len() + 2;
        if size > max {
            return Err(GatewayError::HeadersTooLarge);
        }
    }
    if size > max {
        return Err(GatewayError::HeadersTooLarge);
    }
    Ok(())
}

/// The host the browser asked for: `:authority` (HTTP/2) or an absolute-form target, else the
/// single `Host` header.
pub(super) fn request_host(request: &Request<Incoming>) -> Result<HeaderValue, GatewayError> {
    let mut hosts = request.headers().get_all(HOST).iter();
    let header = hosts.next();
    if hosts.next().is_some() {
        return Err(GatewayError::BadRequest("several Host headers"));
    }
    if let Some(authority) = request.uri().authority() {
        return HeaderValue::from_str(authority.as_str())
            .map_err(|_| GatewayError::BadRequest("bad authority"));
    }
    match header {
        Some(host) if !host.is_empty() => Ok(host.clone()),
        _ => Err(GatewayError::BadRequest("no Host header")),
    }
}

pub(super) fn redirect_to_https(
    request: &Request<Incoming>,
    host: &str,
    https_port: Option<u16>,
) -> Response<ResponseBody> {
    let path_and_query = request.uri().path_and_query().map_or("/", |pq| pq.as_str());
    let location = match https_port {
        Some(443) | None => format!("https://{host}{path_and_query}"),
        Some(port) => format!("https://{host}:{port}{path_and_query}"),
    };
    // GET and HEAD may become GET after a 301; anything with a body needs 308 to keep it.
    let status = if matches!(*request.method(), Method::GET | Method::HEAD) {
        StatusCode::MOVED_PERMANENTLY
    } else {
        StatusCode::PERMANENT_REDIRECT
    };
    let mut response = Response::new(ResponseBody::empty());
    *response.status_mut() = status;
    match HeaderValue::try_from(location) {
        Ok(value) => {
            response.headers_mut().insert(LOCATION, value);
        }
        Err(_) => *response.status_mut() = StatusCode::BAD_REQUEST,
    }
    response
}
