//! The gateway's own HTTP client toward the identity provider (discovery, keys, token
//! endpoint). TLS through rustls with ring and the system's roots; no redirect is ever followed
//! (a redirected token request could hand the authorization code to someone else); answers are
//! size-limited and time-limited, since they come from the network.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

/// Largest answer accepted from the identity provider.
const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

#[derive(Debug)]
pub struct BackChannelError(pub String);

impl std::fmt::Display for BackChannelError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BackChannelError {}

#[derive(Clone)]
pub struct BackChannel {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    timeout: Duration,
}

impl BackChannel {
    pub fn new(timeout: Duration) -> Result<BackChannel, String> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(cert);
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(timeout));
        let connector = HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Ok(BackChannel { client, timeout })
    }

    pub async fn get(&self, url: &str) -> Result<Bytes, BackChannelError> {
        let request = Request::builder()
            .method(Method::GET)
            .uri(url)
            .header(ACCEPT, "application/json")
            .body(Full::new(Bytes::new()))
            .map_err(|e| BackChannelError(format!("bad URL {url}: {e}")))?;
        let (status, body) = self.send(request).await?;
        if !status.is_success() {
            return Err(BackChannelError(format!("{url} answered {status}")));
        }
        Ok(body)
    }

    /// POSTs a form; returns the status and body whatever the status (token errors are JSON
    /// with a 4xx status).
    pub async fn post_form(
        &self,
        url: &str,
        form: &[(&str, &str)],
        basic: Option<HeaderValue>,
    ) -> Result<(StatusCode, Bytes), BackChannelError> {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let mut builder = Request::builder()
            .method(Method::POST)
            .uri(url)
            .header(ACCEPT, "application/json")
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded");
        if let Some(basic) = basic {
            builder = builder.header(AUTHORIZATION, basic);
        }
        let request = builder
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| BackChannelError(format!("bad URL {url}: {e}")))?;
        self.send(request).await
    }

    async fn send(
        &self,
        request: Request<Full<Bytes>>,
    ) -> Result<(StatusCode, Bytes), BackChannelError> {
        let uri = request.uri().clone();
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| BackChannelError(format!("{uri}: {e}")))?;
            let status = response.status();
            if status.is_redirection() {
                return Err(BackChannelError(format!(
                    "{uri} answered a redirect, which is never followed"
                )));
            }
            let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map_err(|e| BackChannelError(format!("{uri}: {e}")))?
                .to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| {
                BackChannelError(format!("{uri} did not answer within {:?}", self.timeout))
            })?
    }
}
