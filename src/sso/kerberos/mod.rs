//! Kerberos constrained delegation (`sso = "kerberos"`): signing the user in to Exchange on
//! Windows authentication, as Web Application Proxy and Entra application proxy do.
//!
//! The gateway is not joined to the domain. It holds a keytab for its own service account and,
//! once a user has passed MFA:
//! 1. asks the KDC for a ticket to itself in the user's name, without the user's password
//!    (S4U2Self, "protocol transition"): the impersonated credential, cached per user;
//! 2. exchanges it for a ticket to Exchange's SPN (S4U2Proxy, allowed by the service account's
//!    `msDS-AllowedToDelegateTo`) and builds the SPNEGO token of `Authorization: Negotiate`,
//!    bound to the TLS connection to Exchange ([`ChannelBinding`], Extended Protection);
//! 3. checks Exchange's answer token (mutual authentication).
//!
//! Every GSSAPI call may wait on a KDC, so all of them run on tokio's blocking pool; no async
//! worker ever waits on a domain controller. Concurrent first requests of one user wait for one
//! S4U2Self and one S4U2Proxy exchange (a per-user lock around the cache entry).
//!
//! MIT GSSAPI reads its configuration from the process environment: the binary sets it up at
//! start ([`environment::prepare`]). Code that uses [`KerberosSso`] in another process (tests)
//! must set `KRB5_CONFIG`, `KRB5_CLIENT_KTNAME` and `KRB5CCNAME` the same way, before it starts
//! any thread.

mod channel_binding;
pub mod environment;
mod error;
mod gss;
pub mod keytab;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use libgssapi::context::ClientCtx;
use libgssapi::credential::Cred;

pub use channel_binding::ChannelBinding;
pub use error::{KerberosError, KerberosReason};

use crate::config::{KerberosConfig, KerberosUser};
use gss::UserNameKind;

/// An impersonated credential is not used in its last minute: a ticket that expires between
/// the gateway's check and Exchange's would be refused.
const EXPIRY_MARGIN: Duration = Duration::from_secs(60);

/// Above this many users in the cache, expired entries are swept out when one is added.
const SWEEP_ABOVE: usize = 4096;

/// The Kerberos engine: per-user impersonated credentials and the tokens made from them.
/// Cheap to clone; clones share the cache and counters.
#[derive(Clone)]
pub struct KerberosSso {
    shared: Arc<Shared>,
}

struct Shared {
    /// The configuration the engine was made from.
    config: KerberosConfig,
    realm: String,
    principal: String,
    user: KerberosUser,
    ticket_lifetime: Duration,
    /// The gateway's own credential, acquired on first use.
    gateway: Mutex<Option<Cred>>,
    users: Mutex<HashMap<String, Arc<UserSlot>>>,
    counters: Counters,
}

/// One user's cache entry. The async lock is held across the S4U2Self exchange, so a second
/// request of the same user waits for the first one's result instead of asking again.
#[derive(Default)]
struct UserSlot {
    cred: tokio::sync::Mutex<Option<CachedCred>>,
}

struct CachedCred {
    cred: Cred,
    until: Instant,
    /// The SPNs (`HTTP/host@REALM`) a token was made for with this credential: MIT holds
    /// their service tickets.
    services: HashSet<String>,
}

#[derive(Default)]
struct Counters {
    s4u2self: AtomicU64,
    s4u2proxy: AtomicU64,
    tokens: AtomicU64,
    cache_hits: AtomicU64,
    failures: [AtomicU64; KerberosReason::ALL.len()],
}

/// The engine's counters at one moment, for `/metrics`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KerberosCounters {
    /// S4U2Self exchanges with the KDC (one per user per ticket lifetime when all goes well).
    pub s4u2self_requests: u64,
    /// S4U2Proxy exchanges with the KDC: the first token of a user's credential for an SPN
    /// (MIT keeps the service ticket with the credential), and every attempt after a refusal.
    pub s4u2proxy_requests: u64,
    /// Tokens made (successful `token_for` calls).
    pub tokens: u64,
    /// `token_for` calls served with a cached credential, without S4U2Self.
    pub cache_hits: u64,
    /// Failures by reason, every reason listed.
    pub failures: Vec<(KerberosReason, u64)>,
}

impl KerberosCounters {
    /// Exchanges with the KDC for users' tickets (S4U2Self and S4U2Proxy; the gateway's own
    /// ticket-granting ticket is not counted).
    pub fn kdc_requests(&self) -> u64 {
        self.s4u2self_requests + self.s4u2proxy_requests
    }
}

/// The `Authorization: Negotiate` token for one request, and the security context that checks
/// Exchange's answer to it.
pub struct NegotiateToken {
    token: Vec<u8>,
    context: ClientCtx,
    channel_binding: Option<ChannelBinding>,
}

impl std::fmt::Debug for NegotiateToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token: it is a ticket anyone could present to Exchange while it is valid.
        write!(f, "NegotiateToken({} bytes)", self.token.len())
    }
}

impl NegotiateToken {
    /// The SPNEGO token.
    pub fn token(&self) -> &[u8] {
        &self.token
    }

    /// `Negotiate <base64 token>`, the value of the `Authorization` header.
    pub fn authorization(&self) -> http::HeaderValue {
        let value = format!("Negotiate {}", BASE64.encode(&self.token));
        http::HeaderValue::from_str(&value).unwrap_or_else(|_| http::HeaderValue::from_static(""))
    }

    /// Mutual authentication: feeds the token of Exchange's answer
    /// (`WWW-Authenticate: Negotiate <token>`, on the response that accepted the request) into
    /// the context, which must complete. A missing or wrong answer is
    /// [`KerberosReason::MutualAuthFailed`]: the response did not come from the holder of the
    /// SPN's key.
    pub async fn verify_reply(
        self,
        www_authenticate: &http::HeaderValue,
    ) -> Result<(), KerberosError> {
        let Some(reply) = negotiate_token(www_authenticate.as_bytes()) else {
            return Err(KerberosError::new(
                KerberosReason::MutualAuthFailed,
                "the answer has no Negotiate token".to_owned(),
            ));
        };
        let NegotiateToken {
            mut context,
            channel_binding,
            ..
        } = self;
        blocking(move || {
            gss::finish(
                &mut context,
                &reply,
                channel_binding
                    .as_ref()
                    .map(ChannelBinding::application_data),
            )
        })
        .await
    }
}

/// The token of a `Negotiate <base64>` header value (`WWW-Authenticate` or `Authorization`).
pub fn negotiate_token(value: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(value).ok()?.trim();
    let (scheme, token) = text.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("Negotiate") {
        return None;
    }
    BASE64.decode(token.trim()).ok().filter(|t| !t.is_empty())
}

impl KerberosSso {
    /// The engine for `[sso.kerberos]`. Nothing is asked of the KDC until the first token.
    pub fn new(config: &KerberosConfig) -> KerberosSso {
        KerberosSso {
            shared: Arc::new(Shared {
                config: config.clone(),
                realm: config.realm.clone(),
                principal: config.principal.clone(),
                user: config.user,
                ticket_lifetime: config.ticket_lifetime,
                gateway: Mutex::new(None),
                users: Mutex::new(HashMap::new()),
                counters: Counters::default(),
            }),
        }
    }

    /// The configuration the engine was made from.
    pub fn config(&self) -> &KerberosConfig {
        &self.shared.config
    }

    /// Which session identity `user` in [`KerberosSso::token_for`] must be: the UPN, or the
    /// on-premises sAMAccountName.
    pub fn user_kind(&self) -> KerberosUser {
        self.shared.user
    }

    /// A token that signs `user` in to the service `spn` (`HTTP/mail.contoso.com`, see
    /// `UpstreamConfig::kerberos_spn_for`), bound to the TLS connection whose server
    /// certificate gave `channel_binding`. `user` is the UPN or the sAMAccountName, as
    /// [`KerberosSso::user_kind`] says. The token is for one request on one connection.
    pub async fn token_for(
        &self,
        user: &str,
        spn: &str,
        channel_binding: Option<&ChannelBinding>,
    ) -> Result<NegotiateToken, KerberosError> {
        let result = self.token(user, spn, channel_binding).await;
        let counters = &self.shared.counters;
        match &result {
            Ok(_) => {
                counters.tokens.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                counters.failures[e.reason.index()].fetch_add(1, Ordering::Relaxed);
            }
        }
        result
    }

    async fn token(
        &self,
        user: &str,
        spn: &str,
        channel_binding: Option<&ChannelBinding>,
    ) -> Result<NegotiateToken, KerberosError> {
        let (name, kind) = self.user_name(user)?;
        let target = format!("{spn}@{}", self.shared.realm);
        let slot = self.slot(&name);
        // Held until the token is made: a user's concurrent first requests wait for one
        // S4U2Self and one S4U2Proxy exchange, and then find both tickets cached. A cached
        // token costs a tenth of a millisecond, so one user's requests queue only briefly.
        let mut cached = slot.cred.lock().await;
        let from_cache = self.ensure_credential(&mut cached, &name, kind).await?;
        let result = self
            .initiate_cached(&mut cached, &target, channel_binding)
            .await;
        match result {
            Err(e) if from_cache && e.detail.contains("expired") => {
                // The KDC judged the cached ticket expired before the gateway did (clock
                // differences): once more with a fresh one.
                *cached = None;
                self.ensure_credential(&mut cached, &name, kind).await?;
                self.initiate_cached(&mut cached, &target, channel_binding)
                    .await
            }
            Err(e) if e.reason == KerberosReason::DelegationNotAllowed => {
                Err(self.refine_refusal(e, &mut cached).await)
            }
            other => other,
        }
    }

    /// Forgets `user`'s cached credential: the next token asks the KDC again. For a
    /// `401 WWW-Authenticate: Negotiate` from Exchange on a request that carried a token (the
    /// ticket expired or was revoked on Exchange's side).
    pub async fn forget(&self, user: &str) {
        let Ok((name, _)) = self.user_name(user) else {
            return;
        };
        let slot = self
            .shared
            .users
            .lock()
            .map(|users| users.get(&name.to_lowercase()).cloned())
            .unwrap_or(None);
        if let Some(slot) = slot {
            slot.cred.lock().await.take();
        }
    }

    /// Mutual authentication of Exchange's answer ([`NegotiateToken::verify_reply`]), its
    /// failure counted under [`KerberosReason::MutualAuthFailed`].
    pub async fn verify_reply(
        &self,
        token: NegotiateToken,
        www_authenticate: &http::HeaderValue,
    ) -> Result<(), KerberosError> {
        let result = token.verify_reply(www_authenticate).await;
        if let Err(e) = &result {
            self.count_failure(e.reason);
        }
        result
    }

    /// Counts a failure found outside the engine: Exchange refusing a token the KDC issued
    /// ([`KerberosReason::TicketRefused`]), an answer without mutual authentication.
    pub fn count_failure(&self, reason: KerberosReason) {
        self.shared.counters.failures[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// The counters since the engine was made.
    pub fn counters(&self) -> KerberosCounters {
        let c = &self.shared.counters;
        KerberosCounters {
            s4u2self_requests: c.s4u2self.load(Ordering::Relaxed),
            s4u2proxy_requests: c.s4u2proxy.load(Ordering::Relaxed),
            tokens: c.tokens.load(Ordering::Relaxed),
            cache_hits: c.cache_hits.load(Ordering::Relaxed),
            failures: KerberosReason::ALL
                .iter()
                .map(|reason| (*reason, c.failures[reason.index()].load(Ordering::Relaxed)))
                .collect(),
        }
    }

    /// The name the KDC is asked for, checked so that nothing but a user name reaches it.
    fn user_name(&self, user: &str) -> Result<(String, UserNameKind), KerberosError> {
        let refuse = |why: &str| {
            Err(KerberosError::new(
                KerberosReason::UserNotFound,
                format!("the session's {} {why}", self.shared.user.as_str()),
            ))
        };
        if user.is_empty() || user.len() > 256 || user.chars().any(|c| c.is_control() || c == '/') {
            return refuse("is not a user name");
        }
        match self.shared.user {
            KerberosUser::Upn => match user.split_once('@') {
                Some((name, suffix))
                    if !name.is_empty() && !suffix.is_empty() && !suffix.contains('@') =>
                {
                    Ok((user.to_owned(), UserNameKind::Enterprise))
                }
                _ => refuse("is not a UPN (name@suffix)"),
            },
            KerberosUser::OnpremSamAccountName => {
                if user.contains(['@', '\\']) {
                    return refuse("is not a bare sAMAccountName");
                }
                Ok((
                    format!("{user}@{}", self.shared.realm),
                    UserNameKind::Principal,
                ))
            }
        }
    }

    fn slot(&self, name: &str) -> Arc<UserSlot> {
        // Active Directory compares account names without regard to case.
        let key = name.to_lowercase();
        let Ok(mut users) = self.shared.users.lock() else {
            return Arc::new(UserSlot::default());
        };
        if let Some(slot) = users.get(&key) {
            return slot.clone();
        }
        if users.len() >= SWEEP_ABOVE {
            let now = Instant::now();
            users.retain(|_, slot| {
                Arc::strong_count(slot) > 1
                    || slot
                        .cred
                        .try_lock()
                        .map(|cred| cred.as_ref().is_some_and(|c| c.until > now))
                        .unwrap_or(true)
            });
        }
        let slot = Arc::new(UserSlot::default());
        users.insert(key, slot.clone());
        slot
    }

    /// Makes sure `cached` holds the user's impersonated credential: kept from before, or from
    /// one S4U2Self exchange. True when it was kept from before.
    async fn ensure_credential(
        &self,
        cached: &mut Option<CachedCred>,
        name: &str,
        kind: UserNameKind,
    ) -> Result<bool, KerberosError> {
        if cached
            .as_ref()
            .is_some_and(|entry| entry.until > Instant::now())
        {
            self.shared
                .counters
                .cache_hits
                .fetch_add(1, Ordering::Relaxed);
            return Ok(true);
        }
        *cached = None;
        self.shared
            .counters
            .s4u2self
            .fetch_add(1, Ordering::Relaxed);
        let shared = self.shared.clone();
        let name = name.to_owned();
        let (cred, remaining) = blocking(move || {
            let gateway = shared.gateway_cred()?;
            let cred = gss::impersonate(&gateway, &name, kind)?;
            let remaining = gss::remaining(&cred);
            Ok((cred, remaining))
        })
        .await?;
        let mut lifetime = self.shared.ticket_lifetime;
        if let Some(remaining) = remaining {
            // The KDC may grant less than asked (domain policy, the service account's TGT
            // ending sooner).
            let usable = if remaining > EXPIRY_MARGIN * 2 {
                remaining - EXPIRY_MARGIN
            } else {
                remaining / 2
            };
            lifetime = lifetime.min(usable);
        }
        *cached = Some(CachedCred {
            cred,
            until: Instant::now() + lifetime,
            services: HashSet::new(),
        });
        Ok(false)
    }

    /// A token from the cached credential. The first one for an SPN costs an S4U2Proxy
    /// exchange; MIT keeps that service ticket with the credential for the next ones.
    async fn initiate_cached(
        &self,
        cached: &mut Option<CachedCred>,
        target: &str,
        channel_binding: Option<&ChannelBinding>,
    ) -> Result<NegotiateToken, KerberosError> {
        let Some(entry) = cached.as_mut() else {
            return Err(KerberosError::new(
                KerberosReason::Internal,
                "no credential".to_owned(),
            ));
        };
        let first = entry.services.insert(target.to_owned());
        if first {
            self.shared
                .counters
                .s4u2proxy
                .fetch_add(1, Ordering::Relaxed);
        }
        let result = self
            .initiate(entry.cred.clone(), target, channel_binding)
            .await;
        if result.is_err() && first {
            // No ticket was kept: the next token asks the KDC again.
            entry.services.remove(target);
        }
        result
    }

    async fn initiate(
        &self,
        cred: Cred,
        target: &str,
        channel_binding: Option<&ChannelBinding>,
    ) -> Result<NegotiateToken, KerberosError> {
        let target = target.to_owned();
        let channel_binding = channel_binding.cloned();
        blocking(move || {
            let data = channel_binding
                .as_ref()
                .map(ChannelBinding::application_data);
            let (token, context) = gss::initiate(cred, &target, data)?;
            Ok(NegotiateToken {
                token,
                context,
                channel_binding,
            })
        })
        .await
    }

    /// The KDC answers "can't fulfill requested option" both when the SPN is not in the service
    /// account's delegation list and when the user's S4U2Self ticket is not forwardable (the
    /// account is sensitive). The credential cache tells which.
    async fn refine_refusal(
        &self,
        error: KerberosError,
        cached: &mut Option<CachedCred>,
    ) -> KerberosError {
        let Some(cred) = cached.as_ref().map(|entry| entry.cred.clone()) else {
            return error;
        };
        let principal = self.shared.principal.clone();
        match blocking(move || Ok(ccache::evidence_forwardable(&cred, &principal))).await {
            Ok(Some(false)) => {
                // The credential will never be delegated: once the administrator changes the
                // account, the next request must ask the KDC again, not wait for its expiry.
                *cached = None;
                KerberosError::new(
                    KerberosReason::AccountSensitive,
                    format!(
                        "{}; the user's S4U2Self ticket is not forwardable (account sensitive, in Protected Users, or the service account not trusted for any authentication protocol)",
                        error.detail
                    ),
                )
            }
            _ => error,
        }
    }
}

impl Shared {
    /// The gateway's own credential, acquired again when it nears its end (MIT renews the
    /// ticket-granting ticket from the keytab, but a credential handle may outlive that).
    fn gateway_cred(&self) -> Result<Cred, KerberosError> {
        let mut gateway = self.gateway.lock().map_err(|_| {
            KerberosError::new(KerberosReason::Internal, "lock poisoned".to_owned())
        })?;
        if let Some(cred) = gateway.as_ref() {
            if gss::remaining(cred).is_some_and(|left| left > EXPIRY_MARGIN * 5) {
                return Ok(cred.clone());
            }
        }
        let cred = gss::acquire_gateway(&self.principal)?;
        *gateway = Some(cred.clone());
        Ok(cred)
    }
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, KerberosError> + Send + 'static,
) -> Result<T, KerberosError> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result,
        Err(e) => Err(KerberosError::new(
            KerberosReason::Internal,
            format!("the Kerberos task failed: {e}"),
        )),
    }
}

mod ccache;
