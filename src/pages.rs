//! The small HTML pages the gateway itself answers with. They say what happened in words a
//! mailbox user understands and never show internals: no server names, no error strings from
//! Exchange, nothing the browser sent (so nothing can be reflected into the page).

use bytes::Bytes;
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use http::{Response, StatusCode};

use crate::body::ResponseBody;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    pub title: &'static str,
    pub message: &'static str,
}

impl Page {
    pub const fn new(title: &'static str, message: &'static str) -> Page {
        Page { title, message }
    }

    pub fn render(&self, status: StatusCode) -> String {
        format!(
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>{title}</title><style>\
body{{font-family:\"Segoe UI\",system-ui,sans-serif;background:#f3f2f1;color:#201f1e;margin:0}}\
main{{max-width:34rem;margin:12vh auto;background:#fff;padding:2rem 2.5rem;border-radius:4px;\
box-shadow:0 1px 4px rgba(0,0,0,.15)}}h1{{font-size:1.5rem;font-weight:600;margin:0 0 1rem}}\
p{{line-height:1.5}}.code{{color:#605e5c;font-size:.85rem}}</style></head>\
<body><main><h1>{title}</h1><p>{message}</p><p class=\"code\">Error {code}</p></main></body></html>\n",
            title = self.title,
            message = self.message,
            code = status.as_u16(),
        )
    }

    /// The page as a complete response: never cached, never sniffed, never framed.
    pub fn response(&self, status: StatusCode) -> Response<ResponseBody> {
        let mut response = Response::new(ResponseBody::full(Bytes::from(self.render(status))));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        headers.insert(
            "x-content-type-options",
            HeaderValue::from_static("nosniff"),
        );
        headers.insert("x-frame-options", HeaderValue::from_static("DENY"));
        headers.insert(
            "content-security-policy",
            HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'"),
        );
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_shows_title_message_and_status_code() {
        let html = Page::new("Access denied", "Not here.").render(StatusCode::FORBIDDEN);
        assert!(html.contains("<h1>Access denied</h1>"));
        assert!(html.contains("Not here."));
        assert!(html.contains("Error 403"));
    }
}
