//! The token service behind `/_gateway/wsfed/`: the signing certificates of `[sso.adfs]`, read
//! when the gateway starts or reloads, and the token for one session and realm.

use std::path::PathBuf;
use std::time::Duration;

use super::signing::{CredentialError, SigningCredential, Thumbprint};
use super::token::{issue, IssuedToken, TokenRequest};
use super::wsfed::WsFedRefusal;
use crate::config::AdfsConfig;
use crate::session::Session;

/// Exchange refuses a token whose `NotBefore` is 6 hours or more after its
/// `AuthenticationInstant` (its activity-based timeout, on by default) and starts a new sign-in,
/// which would come straight back here. A gateway session older than this signs in again at
/// Entra first, so the token carries a recent instant.
pub const EXCHANGE_MAX_AUTHENTICATION_AGE: Duration = Duration::from_secs(6 * 3600 - 10 * 60);

/// `[sso.adfs]`, with its certificates and keys read.
pub struct AdfsIssuer {
    /// The first signs; the others are listed for a rollover.
    credentials: Vec<SigningCredential>,
    lifetime: Duration,
    issuer_name: Option<String>,
}

/// A `token_signing` entry that cannot be used, with the key path it is configured at.
#[derive(Debug, thiserror::Error)]
#[error("{entry}: {problem}")]
pub struct TokenSigningError {
    /// `sso.adfs.token_signing` or `sso.adfs.token_signing[i]`.
    pub entry: String,
    pub problem: TokenSigningProblem,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenSigningProblem {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Credential(#[from] CredentialError),
}

impl AdfsIssuer {
    /// Reads every `token_signing` entry; every unusable one is reported.
    pub fn load(config: &AdfsConfig) -> Result<AdfsIssuer, Vec<TokenSigningError>> {
        let several = config.token_signing.len() > 1;
        let mut credentials = Vec::new();
        let mut problems = Vec::new();
        for (i, entry) in config.token_signing.iter().enumerate() {
            let name = if several {
                format!("sso.adfs.token_signing[{i}]")
            } else {
                "sso.adfs.token_signing".to_owned()
            };
            let read = |path: &PathBuf| {
                std::fs::read(path).map_err(|source| TokenSigningProblem::Read {
                    path: path.clone(),
                    source,
                })
            };
            let loaded = read(&entry.cert).and_then(|cert| {
                let key = read(&entry.key)?;
                Ok(SigningCredential::from_pem(&cert, &key)?)
            });
            match loaded {
                Ok(credential) => credentials.push(credential),
                Err(problem) => problems.push(TokenSigningError {
                    entry: name,
                    problem,
                }),
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(AdfsIssuer {
            credentials,
            lifetime: config.token_lifetime,
            issuer_name: config.issuer_name.clone(),
        })
    }

    /// The SHA-1 thumbprints Exchange lists in `AdfsSignCertificateThumbprints`, the signing
    /// certificate's first.
    pub fn thumbprints(&self) -> Vec<Thumbprint> {
        self.credentials.iter().map(|c| c.thumbprint()).collect()
    }

    /// The token for `session` and `realm` (already checked to be a route with `sso = "adfs"`
    /// on `host`, the Host the browser sent). The user is the session's: its UPN and its
    /// on-premises SID; the authentication instant is when the gateway session began, and the
    /// token ends with the session if that comes first.
    pub fn issue(
        &self,
        session: &Session,
        realm: &str,
        host: &str,
        now: u64,
    ) -> Result<IssuedToken, WsFedRefusal> {
        let upn = session.upn.as_deref().ok_or(WsFedRefusal::UpnMissing)?;
        let sid = session
            .onprem_sid
            .as_deref()
            .ok_or(WsFedRefusal::OnPremSidMissing)?;
        let credential = self
            .credentials
            .first()
            .ok_or(WsFedRefusal::SigningFailed)?;
        let default_issuer;
        let issuer = match &self.issuer_name {
            Some(name) => name.as_str(),
            None => {
                default_issuer = format!("https://{host}/_gateway/wsfed/");
                &default_issuer
            }
        };
        let not_on_or_after = now
            .saturating_add(self.lifetime.as_secs())
            .min(session.expires_at);
        let request = TokenRequest {
            issuer,
            realm,
            upn,
            primary_sid: sid,
            authenticated_at: session.issued_at,
            now,
            not_on_or_after,
        };
        issue(credential, &request).map_err(|_| WsFedRefusal::SigningFailed)
    }
}
