//! The small HTML pages the gateway itself answers with. They say what happened in words a
//! mailbox user understands and never show internals: no server names, no error strings from
//! Exchange, nothing the browser sent (so nothing can be reflected into the page).

use std::borrow::Cow;
use std::sync::LazyLock;

use base64::Engine;
use bytes::Bytes;
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use http::{Response, StatusCode};

use crate::body::ResponseBody;

/// Where a sign-in returns when the original address cannot be used: OWA's start page.
pub const DEFAULT_RETURN: &str = "/owa/";

/// A link that starts a new sign-in with `prompt=login` and returns to `return_path`: offered
/// after a refused sign-in, where a plain link would let Entra answer at once from the same
/// (password-only) session and show the refusal again.
pub fn sign_in_again_link(return_path: &str) -> String {
    let encoded: String = url::form_urlencoded::byte_serialize(return_path.as_bytes()).collect();
    format!("/_gateway/sign-in?return={encoded}")
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub title: Cow<'static, str>,
    pub message: Cow<'static, str>,
    /// A link to offer (label, same-site URL), e.g. "Sign in again".
    pub link: Option<(Cow<'static, str>, String)>,
    /// A button that POSTs an empty form to a same-site URL (label, action): for actions a
    /// cross-site link must not be able to trigger, such as signing out.
    pub form_button: Option<(&'static str, &'static str)>,
}

impl Page {
    pub const fn new(title: &'static str, message: &'static str) -> Page {
        Page {
            title: Cow::Borrowed(title),
            message: Cow::Borrowed(message),
            link: None,
            form_button: None,
        }
    }

    /// A page whose text is built at run time. Everything is HTML-escaped when rendered.
    pub fn owned(
        title: impl Into<Cow<'static, str>>,
        message: impl Into<Cow<'static, str>>,
    ) -> Page {
        Page {
            title: title.into(),
            message: message.into(),
            link: None,
            form_button: None,
        }
    }

    pub fn with_form_button(mut self, label: &'static str, action: &'static str) -> Page {
        self.form_button = Some((label, action));
        self
    }

    pub fn with_link(mut self, label: &'static str, href: String) -> Page {
        self.link = Some((Cow::Borrowed(label), href));
        self
    }

    pub fn render(&self, status: StatusCode) -> String {
        format!(
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>{title}</title><style>\
body{{font-family:\"Segoe UI\",system-ui,sans-serif;background:#f3f2f1;color:#201f1e;margin:0}}\
main{{max-width:34rem;margin:12vh auto;background:#fff;padding:2rem 2.5rem;border-radius:4px;\
box-shadow:0 1px 4px rgba(0,0,0,.15)}}h1{{font-size:1.5rem;font-weight:600;margin:0 0 1rem}}\
p{{line-height:1.5}}.code{{color:#605e5c;font-size:.85rem}}\
a.button,button.button{{display:inline-block;background:#0f6cbd;color:#fff;padding:.5rem 1.2rem;border-radius:4px;\
text-decoration:none;border:0;font:inherit;cursor:pointer}}</style></head>\
<body><main><h1>{title}</h1><p>{message}</p>{form}{link}<p class=\"code\">Error {code}</p></main></body></html>\n",
            title = escape(&self.title),
            message = escape(&self.message),
            link = self.link.as_ref().map_or_else(String::new, |(label, href)| format!(
                "<p><a class=\"button\" href=\"{}\">{}</a></p>",
                escape(href),
                escape(label)
            )),
            form = self.form_button.map_or_else(String::new, |(label, action)| format!(
                "<form method=\"post\" action=\"{}\"><button class=\"button\" type=\"submit\">{}</button></form>",
                escape(action),
                escape(label)
            )),
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

/// A page that posts a form to a same-site address at once: submitted by its script, or by its
/// button when scripts are off. It carries the WS-Federation token to Exchange (AD FS mode) and
/// relays Entra's answer to Exchange's own sign-in (hybrid modern authentication). Every name
/// and value is escaped; the Content-Security-Policy allows exactly the one script, by its
/// hash, and posting only to this site (`form-action 'self'`).
pub struct AutoPost<'a> {
    /// The `<h1>`, e.g. "Signing in".
    pub title: &'static str,
    /// The line above the button, for a browser that does not run the script.
    pub message: &'static str,
    /// Where the form goes: an address on this site.
    pub action: &'a str,
    /// The hidden fields, in order.
    pub fields: &'a [(&'a str, &'a str)],
}

/// The script that submits the form at once. The page's Content-Security-Policy allows exactly
/// this script, by its hash.
pub(crate) const AUTO_SUBMIT: &str = "document.forms[0].submit();";

pub(crate) static AUTO_SUBMIT_HASH: LazyLock<String> = LazyLock::new(|| {
    let digest = ring::digest::digest(&ring::digest::SHA256, AUTO_SUBMIT.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
});

impl AutoPost<'_> {
    pub fn render(&self) -> String {
        let inputs: String = self
            .fields
            .iter()
            .map(|(name, value)| {
                format!(
                    "<input type=\"hidden\" name=\"{}\" value=\"{}\">",
                    escape(name),
                    escape(value)
                )
            })
            .collect();
        format!(
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>{title}</title><style>\
body{{font-family:\"Segoe UI\",system-ui,sans-serif;background:#f3f2f1;color:#201f1e;margin:0}}\
main{{max-width:34rem;margin:12vh auto;background:#fff;padding:2rem 2.5rem;border-radius:4px;\
box-shadow:0 1px 4px rgba(0,0,0,.15)}}h1{{font-size:1.5rem;font-weight:600;margin:0 0 1rem}}\
button{{background:#0f6cbd;color:#fff;padding:.5rem 1.2rem;border-radius:4px;border:0;font:inherit;cursor:pointer}}\
</style></head><body><main><h1>{title}</h1>\
<form method=\"post\" action=\"{action}\">{inputs}\
<p>{message}</p>\
<p><button type=\"submit\">Continue</button></p></form></main>\
<script>{AUTO_SUBMIT}</script></body></html>\n",
            title = escape(self.title),
            message = escape(self.message),
            action = escape(self.action),
        )
    }

    /// The page as a complete `200 OK`: never cached, never framed, no address of this site
    /// sent to any other (`Referrer-Policy: same-origin`).
    pub fn response(&self) -> Response<ResponseBody> {
        let mut response = Response::new(ResponseBody::full(Bytes::from(self.render())));
        let headers = response.headers_mut();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        headers.insert("pragma", HeaderValue::from_static("no-cache"));
        headers.insert(
            "x-content-type-options",
            HeaderValue::from_static("nosniff"),
        );
        headers.insert("x-frame-options", HeaderValue::from_static("DENY"));
        headers.insert("referrer-policy", HeaderValue::from_static("same-origin"));
        let policy = format!(
            "default-src 'none'; style-src 'unsafe-inline'; script-src 'sha256-{}'; form-action 'self'; frame-ancestors 'none'",
            *AUTO_SUBMIT_HASH
        );
        if let Ok(policy) = HeaderValue::from_str(&policy) {
            headers.insert("content-security-policy", policy);
        }
        response
    }
}

/// Escapes text for HTML element content and double-quoted attributes.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
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

    #[test]
    fn text_from_the_identity_provider_cannot_inject_markup() {
        let page = Page::owned("Sign-in failed", "<script>alert(1)</script>")
            .with_link("Sign in again", "/owa/?a=\"><x".to_owned());
        let html = page.render(StatusCode::FORBIDDEN);
        assert!(!html.contains("<script>"));
        assert!(html.contains("&lt;script&gt;"));
        assert!(html.contains("href=\"/owa/?a=&quot;&gt;&lt;x\""));
    }
}
