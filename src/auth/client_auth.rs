//! How the gateway proves itself at the token endpoint: a client secret (in the form body or as
//! HTTP Basic), or a certificate (`private_key_jwt`): a short-lived JWT signed with the
//! certificate's private key, carrying the certificate's thumbprints (`x5t#S256`, `x5t`) so
//! Entra finds the registered certificate.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use http::HeaderValue;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{RsaKeyPair, RSA_PKCS1_SHA256};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::ClientAuth;

/// Lifetime of a client assertion; Entra accepts up to 10 minutes.
const ASSERTION_LIFETIME_SECS: u64 = 300;

pub enum ClientAuthenticator {
    Secret {
        client_id: String,
        secret: String,
        basic: bool,
    },
    Certificate {
        client_id: String,
        key: Box<RsaKeyPair>,
        x5t_s256: String,
        x5t: String,
    },
}

/// Why the client certificate cannot be loaded, or a token request's credentials built. Loading
/// errors name the configuration key and the file; none carries the secret or key material.
#[derive(Debug, thiserror::Error)]
pub enum ClientAuthError {
    #[error("oidc.client_certificate.cert: cannot read {}: {error}", .path.display())]
    CertUnreadable {
        path: PathBuf,
        error: rustls_pki_types::pem::Error,
    },
    #[error("oidc.client_certificate.key: cannot read {}: {error}", .path.display())]
    KeyUnreadable {
        path: PathBuf,
        error: rustls_pki_types::pem::Error,
    },
    /// An EC or other key: Entra's `private_key_jwt` certificates are RSA.
    #[error(
        "oidc.client_certificate.key: {} is not an RSA key; Entra client certificates for private_key_jwt are RSA",
        .path.display()
    )]
    KeyNotRsa { path: PathBuf },
    /// ring refused the RSA key (malformed, too small, …).
    #[error("oidc.client_certificate.key: {}: {error}", .path.display())]
    KeyRejected {
        path: PathBuf,
        error: ring::error::KeyRejected,
    },
    /// The client id or secret does not make an `Authorization` header value.
    #[error("{0}")]
    BasicHeader(http::header::InvalidHeaderValue),
    #[error("no randomness")]
    NoRandomness,
    /// The system clock is before 1970.
    #[error("{0}")]
    Clock(std::time::SystemTimeError),
    #[error("signing the client assertion failed")]
    Signing,
}

/// The parameters (and header) to add to a token request.
pub struct ClientCredentials {
    pub form: Vec<(&'static str, String)>,
    pub authorization: Option<HeaderValue>,
}

impl ClientAuthenticator {
    /// Loads the secret or reads and checks the certificate and key files.
    pub fn load(
        client_id: &str,
        auth: &ClientAuth,
    ) -> Result<ClientAuthenticator, ClientAuthError> {
        match auth {
            ClientAuth::Secret { secret, basic } => Ok(ClientAuthenticator::Secret {
                client_id: client_id.to_owned(),
                secret: secret.clone(),
                basic: *basic,
            }),
            ClientAuth::Certificate { cert, key } => {
                let cert_der = CertificateDer::from_pem_file(cert).map_err(|error| {
                    ClientAuthError::CertUnreadable {
                        path: cert.clone(),
                        error,
                    }
                })?;
                let key_der = PrivateKeyDer::from_pem_file(key).map_err(|error| {
                    ClientAuthError::KeyUnreadable {
                        path: key.clone(),
                        error,
                    }
                })?;
                let key_pair = match &key_der {
                    PrivateKeyDer::Pkcs8(der) => RsaKeyPair::from_pkcs8(der.secret_pkcs8_der()),
                    PrivateKeyDer::Pkcs1(der) => RsaKeyPair::from_der(der.secret_pkcs1_der()),
                    _ => return Err(ClientAuthError::KeyNotRsa { path: key.clone() }),
                }
                .map_err(|error| ClientAuthError::KeyRejected {
                    path: key.clone(),
                    error,
                })?;
                let s256 = ring::digest::digest(&ring::digest::SHA256, cert_der.as_ref());
                let s1 = ring::digest::digest(
                    &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
                    cert_der.as_ref(),
                );
                Ok(ClientAuthenticator::Certificate {
                    client_id: client_id.to_owned(),
                    key: Box::new(key_pair),
                    x5t_s256: URL_SAFE_NO_PAD.encode(s256.as_ref()),
                    x5t: URL_SAFE_NO_PAD.encode(s1.as_ref()),
                })
            }
        }
    }

    /// Credentials for one token request to `token_endpoint`.
    pub fn credentials(&self, token_endpoint: &str) -> Result<ClientCredentials, ClientAuthError> {
        match self {
            ClientAuthenticator::Secret {
                client_id,
                secret,
                basic: false,
            } => Ok(ClientCredentials {
                form: vec![
                    ("client_id", client_id.clone()),
                    ("client_secret", secret.clone()),
                ],
                authorization: None,
            }),
            ClientAuthenticator::Secret {
                client_id,
                secret,
                basic: true,
            } => {
                // RFC 6749 section 2.3.1: both parts form-urlencoded before Base64.
                let user: String =
                    url::form_urlencoded::byte_serialize(client_id.as_bytes()).collect();
                let pass: String =
                    url::form_urlencoded::byte_serialize(secret.as_bytes()).collect();
                let value = format!("Basic {}", STANDARD.encode(format!("{user}:{pass}")));
                let header = HeaderValue::from_str(&value).map_err(ClientAuthError::BasicHeader)?;
                Ok(ClientCredentials {
                    form: vec![("client_id", client_id.clone())],
                    authorization: Some(header),
                })
            }
            ClientAuthenticator::Certificate {
                client_id,
                key,
                x5t_s256,
                x5t,
            } => {
                let assertion = client_assertion(client_id, key, x5t_s256, x5t, token_endpoint)?;
                Ok(ClientCredentials {
                    form: vec![
                        ("client_id", client_id.clone()),
                        (
                            "client_assertion_type",
                            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".to_owned(),
                        ),
                        ("client_assertion", assertion),
                    ],
                    authorization: None,
                })
            }
        }
    }
}

fn client_assertion(
    client_id: &str,
    key: &RsaKeyPair,
    x5t_s256: &str,
    x5t: &str,
    token_endpoint: &str,
) -> Result<String, ClientAuthError> {
    let rng = SystemRandom::new();
    let mut jti = [0u8; 16];
    rng.fill(&mut jti)
        .map_err(|_| ClientAuthError::NoRandomness)?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(ClientAuthError::Clock)?
        .as_secs();
    let header = serde_json::json!({
        "alg": "RS256",
        "typ": "JWT",
        "x5t#S256": x5t_s256,
        "x5t": x5t,
    });
    let claims = serde_json::json!({
        "aud": token_endpoint,
        "iss": client_id,
        "sub": client_id,
        "jti": URL_SAFE_NO_PAD.encode(jti),
        "iat": now,
        "nbf": now,
        "exp": now + ASSERTION_LIFETIME_SECS,
    });
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let mut signature = vec![0u8; key.public().modulus_len()];
    key.sign(
        &RSA_PKCS1_SHA256,
        &rng,
        signing_input.as_bytes(),
        &mut signature,
    )
    .map_err(|_| ClientAuthError::Signing)?;
    Ok(format!(
        "{signing_input}.{}",
        URL_SAFE_NO_PAD.encode(signature)
    ))
}
