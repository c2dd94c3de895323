//! Clients for talking to the gateway: reqwest clients that trust the test CA or speak plain
//! HTTP, never following redirects, and an answer read to the end with its cookies parsed.

use std::net::SocketAddr;
use std::time::Duration;

use http::header::{HeaderMap, LOCATION, SET_COOKIE};
use http::StatusCode;

use super::config::SESSION_COOKIE;
use super::pki::TestPki;

/// A reqwest client trusting the test CA, resolving `hosts` to `addr`, never following
/// redirects. `http2` forces HTTP/2 (over TLS via ALPN); otherwise HTTP/1.1 only.
pub fn client(pki: &TestPki, hosts: &[&str], addr: SocketAddr, http2: bool) -> reqwest::Client {
    let tls = pki.rustls_client_config(if http2 { &[b"h2"] } else { &[b"http/1.1"] });
    let mut builder = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30));
    for host in hosts {
        builder = builder.resolve(host, addr);
    }
    builder = if http2 {
        builder.http2_prior_knowledge()
    } else {
        builder.http1_only()
    };
    builder.build().unwrap()
}

/// A plain-HTTP client (no TLS), never following redirects.
pub fn plain_client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// One `Set-Cookie` the gateway sent.
#[derive(Clone, Debug)]
pub struct SetCookie {
    pub raw: String,
    pub name: String,
    pub value: String,
    attributes: Vec<(String, Option<String>)>,
}

impl SetCookie {
    pub fn parse(raw: &str) -> Option<SetCookie> {
        let mut parts = raw.split(';');
        let (name, value) = parts.next()?.split_once('=')?;
        let attributes = parts
            .map(|p| match p.trim().split_once('=') {
                Some((k, v)) => (k.trim().to_ascii_lowercase(), Some(v.trim().to_owned())),
                None => (p.trim().to_ascii_lowercase(), None),
            })
            .collect();
        Some(SetCookie {
            raw: raw.to_owned(),
            name: name.trim().to_owned(),
            value: value.trim().to_owned(),
            attributes,
        })
    }

    /// Whether the attribute (any letter case) is present.
    pub fn has(&self, attribute: &str) -> bool {
        let attribute = attribute.to_ascii_lowercase();
        self.attributes.iter().any(|(k, _)| *k == attribute)
    }

    pub fn attribute(&self, attribute: &str) -> Option<&str> {
        let attribute = attribute.to_ascii_lowercase();
        self.attributes
            .iter()
            .find(|(k, _)| *k == attribute)
            .and_then(|(_, v)| v.as_deref())
    }

    pub fn max_age(&self) -> Option<i64> {
        self.attribute("max-age").and_then(|v| v.parse().ok())
    }

    /// A cookie the browser drops at once.
    pub fn is_removal(&self) -> bool {
        self.max_age().is_some_and(|age| age <= 0)
    }
}

/// A gateway (or provider) answer, read to the end.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Reply {
    pub fn location(&self) -> Option<&str> {
        self.headers.get(LOCATION).and_then(|v| v.to_str().ok())
    }

    pub fn set_cookies(&self) -> Vec<SetCookie> {
        self.headers
            .get_all(SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(SetCookie::parse)
            .collect()
    }

    /// The `Set-Cookie` for `name`, if one was sent.
    pub fn set_cookie(&self, name: &str) -> Option<SetCookie> {
        self.set_cookies().into_iter().find(|c| c.name == name)
    }

    /// The session cookie set (not cleared) by this answer.
    pub fn new_session_cookie(&self) -> Option<SetCookie> {
        self.set_cookie(SESSION_COOKIE).filter(|c| !c.is_removal())
    }

    /// The href of the page's button ("Sign in again", "Try again"), HTML-unescaped.
    pub fn page_link(&self) -> Option<String> {
        let (_, rest) = self.body.split_once("<a class=\"button\" href=\"")?;
        let (href, _) = rest.split_once('"')?;
        Some(
            href.replace("&quot;", "\"")
                .replace("&#39;", "'")
                .replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&amp;", "&"),
        )
    }

    pub fn describe(&self) -> String {
        format!(
            "{} location={:?} set-cookie={:?}\n{}",
            self.status,
            self.location(),
            self.headers.get_all(SET_COOKIE).iter().collect::<Vec<_>>(),
            self.body
        )
    }
}

pub async fn read_reply(response: reqwest::Response) -> Reply {
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.text().await.unwrap_or_default();
    Reply {
        status,
        headers,
        body,
    }
}
