//! What the gateway knows of the identity provider: its endpoints (from discovery) and its
//! signing keys (JWKS). Fetched at start — retried with backoff while Entra is unreachable, with
//! the gateway not ready meanwhile — and refreshed hourly. A token signed with a key id the
//! cached set lacks triggers one refetch, at most every five minutes, so key rotation works
//! without letting a stream of forged key ids hammer Entra.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use openidconnect::core::CoreJsonWebKeySet;
use serde::Deserialize;
use tokio::sync::{Mutex, Notify};

use super::backchannel::{BackChannel, BackChannelError};
use crate::clock::Clock;
use crate::config::OidcConfig;

const REFRESH_INTERVAL: Duration = Duration::from_secs(3600);
const PROBE_INTERVAL: Duration = Duration::from_secs(30);
const UNKNOWN_KID_MIN_INTERVAL: Duration = Duration::from_secs(300);
const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(60);
/// Sign-in attempts while Entra is marked unreachable ask it again at most this often: the
/// first attempt after Entra is back goes through, and a crowd of users pressing reload during
/// an outage costs Entra one request every two seconds, not one per reload.
pub const RECHECK_MIN_INTERVAL: Duration = Duration::from_secs(2);
/// How long a sign-in attempt waits for that re-check before it gets the 503 page.
const RECHECK_WAIT: Duration = Duration::from_secs(3);

/// Why the provider's metadata or keys could not be read. Until they are, the gateway is not
/// ready; once read, a failure keeps the cached ones and only pauses new sign-ins.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// No usable answer from the discovery or keys URL (refused, timed out, an error status).
    #[error(transparent)]
    Unreachable(#[from] BackChannelError),
    /// The discovery document is not the OpenID metadata the gateway needs.
    #[error("discovery document at {url}: {error}")]
    BadMetadata {
        url: String,
        error: serde_json::Error,
    },
    /// The discovery document is for another issuer (another tenant, or `common`).
    #[error(
        "discovery document at {url} names issuer {found:?}, but oidc.issuer is {configured:?}"
    )]
    IssuerMismatch {
        url: String,
        found: String,
        configured: String,
    },
    /// The key set at `jwks_uri` is not a JSON Web Key Set.
    #[error("signing keys at {url}: {error}")]
    BadKeys {
        url: String,
        error: serde_json::Error,
    },
}

impl ProviderError {
    /// A stable label for logs: what an operator should look at.
    pub fn reason(&self) -> &'static str {
        match self {
            ProviderError::Unreachable(_) => "unreachable",
            ProviderError::BadMetadata { .. } => "bad_metadata",
            ProviderError::IssuerMismatch { .. } => "issuer_mismatch",
            ProviderError::BadKeys { .. } => "bad_keys",
        }
    }
}

/// The endpoints the gateway uses, from the discovery document.
#[derive(Debug, Clone, Deserialize)]
pub struct Endpoints {
    pub issuer: String,
    pub authorization_endpoint: String,
    pub token_endpoint: String,
    pub jwks_uri: String,
    #[serde(default)]
    pub end_session_endpoint: Option<String>,
}

/// One consistent view of the provider.
pub struct ProviderState {
    pub endpoints: Endpoints,
    pub keys: CoreJsonWebKeySet,
}

pub struct IdentityProvider {
    config: OidcConfig,
    channel: BackChannel,
    state: ArcSwapOption<ProviderState>,
    /// Unix seconds of the last refetch for an unknown key id (by the gateway's clock, so tests
    /// can move past the five-minute limit).
    last_unknown_kid_refetch: Mutex<Option<u64>>,
    clock: Clock,
    /// False after a failed call to the provider, until a refresh succeeds: new sign-ins then
    /// get a clear 503 page instead of a redirect to a provider that does not answer.
    reachable: AtomicBool,
    /// Wakes the refresh task early after a failed call.
    retry_now: Arc<Notify>,
    /// When a sign-in attempt last re-checked an unreachable provider. The lock makes the
    /// re-check single-flight: attempts arriving meanwhile wait for its outcome.
    last_recheck: Mutex<Option<tokio::time::Instant>>,
}

impl IdentityProvider {
    pub fn new(config: OidcConfig, channel: BackChannel, clock: Clock) -> Arc<IdentityProvider> {
        Arc::new(IdentityProvider {
            config,
            channel,
            state: ArcSwapOption::empty(),
            last_unknown_kid_refetch: Mutex::new(None),
            clock,
            reachable: AtomicBool::new(false),
            retry_now: Arc::new(Notify::new()),
            last_recheck: Mutex::new(None),
        })
    }

    pub fn config(&self) -> &OidcConfig {
        &self.config
    }

    pub fn channel(&self) -> &BackChannel {
        &self.channel
    }

    /// The endpoints and keys, once fetched.
    pub fn state(&self) -> Option<Arc<ProviderState>> {
        self.state.load_full()
    }

    pub fn is_ready(&self) -> bool {
        self.state.load().is_some()
    }

    /// Whether the last call to the provider succeeded.
    pub fn is_reachable(&self) -> bool {
        self.reachable.load(Ordering::Relaxed)
    }

    /// A call to the provider failed (token endpoint unreachable): refuse new sign-ins until
    /// the refresh task reaches it again, and make that task retry soon.
    pub fn report_unreachable(&self) {
        self.reachable.store(false, Ordering::Relaxed);
        self.retry_now.notify_one();
    }

    /// A sign-in is about to be refused because the provider is marked unreachable (or its
    /// metadata was never loaded): ask it again now rather than leave users on the 503 page
    /// until the background retry, which may be up to a minute away. Single-flight, at most one
    /// re-check per [`RECHECK_MIN_INTERVAL`], and waits at most [`RECHECK_WAIT`]. Returns
    /// whether the provider is usable now.
    pub async fn recheck_if_unreachable(&self) -> bool {
        if self.is_reachable() && self.is_ready() {
            return true;
        }
        let Ok(mut last) = tokio::time::timeout(RECHECK_WAIT, self.last_recheck.lock()).await
        else {
            return false;
        };
        // Another attempt may have re-checked while this one waited for the lock.
        if self.is_reachable() && self.is_ready() {
            return true;
        }
        if last.is_some_and(|at| at.elapsed() < RECHECK_MIN_INTERVAL) {
            return false;
        }
        *last = Some(tokio::time::Instant::now());
        match tokio::time::timeout(RECHECK_WAIT, self.refresh()).await {
            Ok(Ok(())) => {
                tracing::info!(issuer = %self.config.issuer, "identity provider answered a sign-in's re-check: sign-ins resume");
                true
            }
            Ok(Err(e)) => {
                tracing::debug!(reason = e.reason(), error = %e, "identity provider still unreachable");
                false
            }
            Err(_) => false,
        }
    }

    /// Fetches discovery and keys until it succeeds (backing off up to a minute), then
    /// refreshes them every hour and checks every 30 seconds that the provider still answers,
    /// so new sign-ins get the 503 page soon after Entra stops answering rather than a redirect
    /// to a provider that is down. Runs until `stop` fires or the provider is replaced.
    pub fn spawn_refresh(self: &Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let provider = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut retry = FIRST_RETRY;
            let mut last_refresh: Option<tokio::time::Instant> = None;
            loop {
                let Some(current) = provider.upgrade() else {
                    return;
                };
                let refresh_due = !current.is_reachable()
                    || last_refresh.is_none_or(|at| at.elapsed() >= REFRESH_INTERVAL);
                let outcome = if refresh_due {
                    current.refresh().await
                } else {
                    current.probe().await
                };
                let wait = match outcome {
                    Ok(()) => {
                        if refresh_due {
                            last_refresh = Some(tokio::time::Instant::now());
                        }
                        retry = FIRST_RETRY;
                        PROBE_INTERVAL
                    }
                    Err(e) => {
                        current.reachable.store(false, Ordering::Relaxed);
                        tracing::warn!(
                            issuer = %current.config.issuer,
                            reason = e.reason(),
                            error = %e,
                            retry_in = ?retry,
                            "cannot reach the identity provider; new sign-ins wait until it answers"
                        );
                        let wait = retry;
                        retry = (retry * 2).min(MAX_RETRY);
                        wait
                    }
                };
                let retry_now = current.retry_now.clone();
                drop(current);
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    // A failed call elsewhere (token endpoint) asks for an early retry. The
                    // pause keeps a stream of failed sign-ins from becoming a stream of
                    // requests to Entra: at most one refresh per FIRST_RETRY.
                    _ = retry_now.notified() => {
                        tokio::select! {
                            _ = tokio::time::sleep(FIRST_RETRY) => {}
                            _ = stop.changed() => return,
                        }
                    }
                    _ = stop.changed() => return,
                }
            }
        });
    }

    /// Whether the provider answers at all (its discovery document), without replacing what
    /// is cached.
    pub async fn probe(&self) -> Result<(), ProviderError> {
        self.channel.get(&self.config.discovery_url).await?;
        Ok(())
    }

    /// Reads discovery and keys now.
    pub async fn refresh(&self) -> Result<(), ProviderError> {
        let body = self.channel.get(&self.config.discovery_url).await?;
        let endpoints: Endpoints =
            serde_json::from_slice(&body).map_err(|error| ProviderError::BadMetadata {
                url: self.config.discovery_url.clone(),
                error,
            })?;
        // The issuer in the metadata must be exactly the configured one: a document for another
        // tenant (or `common`) would otherwise swap the rules under the gateway.
        if endpoints.issuer != self.config.issuer {
            return Err(ProviderError::IssuerMismatch {
                url: self.config.discovery_url.clone(),
                found: endpoints.issuer,
                configured: self.config.issuer.clone(),
            });
        }
        let keys = self.fetch_keys(&endpoints.jwks_uri).await?;
        let first = self.state.load().is_none();
        self.state
            .store(Some(Arc::new(ProviderState { endpoints, keys })));
        let was_reachable = self.reachable.swap(true, Ordering::Relaxed);
        if !was_reachable && !first {
            tracing::info!(issuer = %self.config.issuer, "identity provider reachable again");
        }
        if first {
            tracing::info!(issuer = %self.config.issuer, "identity provider metadata and signing keys loaded");
        }
        Ok(())
    }

    async fn fetch_keys(&self, jwks_uri: &str) -> Result<CoreJsonWebKeySet, ProviderError> {
        let body = self.channel.get(jwks_uri).await?;
        serde_json::from_slice(&body).map_err(|error| ProviderError::BadKeys {
            url: jwks_uri.to_owned(),
            error,
        })
    }

    /// A token named a key id not in the cached set: refetch the keys, unless that was done
    /// less than five minutes ago. Returns the new state when keys were refetched.
    pub async fn refetch_keys_for_unknown_kid(&self) -> Option<Arc<ProviderState>> {
        let mut last = self.last_unknown_kid_refetch.lock().await;
        let now = self.clock.now();
        if last.is_some_and(|at| now.saturating_sub(at) < UNKNOWN_KID_MIN_INTERVAL.as_secs()) {
            return None;
        }
        *last = Some(now);
        let current = self.state.load_full()?;
        match self.fetch_keys(&current.endpoints.jwks_uri).await {
            Ok(keys) => {
                let state = Arc::new(ProviderState {
                    endpoints: current.endpoints.clone(),
                    keys,
                });
                self.state.store(Some(state.clone()));
                tracing::info!(issuer = %self.config.issuer, "signing keys refetched for an unknown key id");
                Some(state)
            }
            Err(e) => {
                tracing::warn!(reason = e.reason(), error = %e, "refetching signing keys failed");
                None
            }
        }
    }
}
