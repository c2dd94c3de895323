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

/// A call to the identity provider that failed, or the client for it that could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BackChannelError {
    /// rustls refused the protocol versions (the ring provider has both: not expected).
    #[error("{0}")]
    Tls(rustls::Error),
    /// The URL (from the configuration or the discovery document) does not make a request.
    #[error("bad URL {url}: {error}")]
    BadUrl { url: String, error: http::Error },
    /// No answer: connection refused, DNS, TLS handshake, or the connection broke.
    #[error("{url}: {error}")]
    Unreachable {
        url: String,
        error: hyper_util::client::legacy::Error,
    },
    #[error("{url} answered a redirect, which is never followed")]
    Redirected { url: String },
    /// The answer's body broke off or was larger than accepted.
    #[error("{url}: {error}")]
    Body {
        url: String,
        error: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{url} did not answer within {timeout:?}")]
    Timeout { url: String, timeout: Duration },
    /// A GET answered with something other than success.
    #[error("{url} answered {status}")]
    Status { url: String, status: StatusCode },
}

#[derive(Clone)]
pub struct BackChannel {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    timeout: Duration,
}

impl BackChannel {
    pub fn new(timeout: Duration) -> Result<BackChannel, BackChannelError> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(cert);
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(BackChannelError::Tls)?
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
            .map_err(|error| BackChannelError::BadUrl {
                url: url.to_owned(),
                error,
            })?;
        let (status, body) = self.send(request).await?;
        if !status.is_success() {
            return Err(BackChannelError::Status {
                url: url.to_owned(),
                status,
            });
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
            .map_err(|error| BackChannelError::BadUrl {
                url: url.to_owned(),
                error,
            })?;
        self.send(request).await
    }

    async fn send(
        &self,
        request: Request<Full<Bytes>>,
    ) -> Result<(StatusCode, Bytes), BackChannelError> {
        let uri = request.uri().clone();
        let exchange = async {
            let response = self.client.request(request).await.map_err(|error| {
                BackChannelError::Unreachable {
                    url: uri.to_string(),
                    error,
                }
            })?;
            let status = response.status();
            if status.is_redirection() {
                return Err(BackChannelError::Redirected {
                    url: uri.to_string(),
                });
            }
            let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map_err(|error| BackChannelError::Body {
                    url: uri.to_string(),
                    error,
                })?
                .to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| BackChannelError::Timeout {
                url: uri.to_string(),
                timeout: self.timeout,
            })?
    }
}
