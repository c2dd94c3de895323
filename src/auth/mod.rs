//! Sign-in through Entra ID (OpenID Connect, authorization code flow with PKCE) and the access
//! decision for `access = "mfa"` routes.
//!
//! - [`SignIn::admit`]: does the request carry a session that satisfies the route? (No I/O:
//!   opening the sealed cookie and comparing a few fields.)
//! - [`SignIn::start`]: no usable session on a top-level navigation: a pending-login cookie
//!   and a redirect to Entra. XHR and non-GET requests get 401/440 instead — a redirect to
//!   Entra would only break OWA's script.
//! - [`SignIn::callback`]: `/_gateway/callback`: state, code exchange, ID token verification
//!   ([`id_token`]), the session cookie, and back to the page the user asked for.
//! - [`SignIn::end_session`], [`SignIn::frontchannel_logout`]: signing out of the gateway and
//!   of Entra, and Entra's front-channel logout by `sid`.
//!
//! Files: `authorize` (the redirect to Entra), `callback` (the answer), `logout`; this file
//! holds the engine's state and the per-request session check, whose rules are in
//! [`crate::policy`].

mod authorize;
pub mod backchannel;
mod callback;
pub mod client_auth;
pub mod id_token;
mod logout;
pub mod provider;
mod session_cookies;

pub use authorize::{is_navigation, safe_return_path, sign_in_return_path};
pub use logout::{is_sign_out_path, signed_out_page};

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderValue, CACHE_CONTROL, LOCATION};
use http::{HeaderMap, Response, StatusCode};
use ring::rand::SystemRandom;

use crate::body::ResponseBody;
use crate::clock::Clock;
use crate::config::{Config, MfaConfig, OidcConfig, SessionConfig};
use crate::session::{
    find_cookie, set_cookie_header, Guid, KeyError, OpenedSessions, RevocationCounts, Revocations,
    SameSite, Session, SessionKey, SessionSeal, SharedStore, SharedStoreStatus, UsedStates,
};
use backchannel::{BackChannel, BackChannelError};
use client_auth::{ClientAuthError, ClientAuthenticator};
use provider::IdentityProvider;

use crate::policy::{self, SessionRules, SessionState, Verdict};

/// Pending sign-ins kept per browser; older ones are dropped (many tabs must not pile up
/// cookies until headers are too large).
const MAX_PENDING_LOGINS: usize = 4;
use crate::pages::DEFAULT_RETURN;
const BACKCHANNEL_TIMEOUT: Duration = Duration::from_secs(10);

pub use crate::policy::{DenialReason, RoutePolicy, SignInReason, StepUp};

/// The access decision for one request, with the session it was made on.
pub enum Admission {
    /// Let the request through; `reseal` is a Set-Cookie refreshing the idle timer.
    Allowed {
        session: Arc<Session>,
        reseal: Option<HeaderValue>,
    },
    /// No usable session (none, tampered, expired) or not fresh/strong enough for this route.
    SignInRequired { step_up: StepUp, why: SignInReason },
    /// Signed in, but this route's policy refuses the user.
    Denied {
        session: Arc<Session>,
        why: DenialReason,
    },
}

/// What the request handler knows of the request, for redirect URIs and the audit log.
pub struct RequestContext<'a> {
    /// Host as the browser sent it (with port).
    pub host: &'a str,
    /// `https` or `http`, as the browser sees the gateway.
    pub scheme: &'static str,
    pub client: IpAddr,
}

impl RequestContext<'_> {
    fn redirect_uri(&self) -> String {
        format!("{}://{}/_gateway/callback", self.scheme, self.host)
    }
}

/// Why sign-in cannot be set up from a configuration: the client certificate, a session key,
/// or the back channel to Entra.
#[derive(Debug, thiserror::Error)]
pub enum SignInError {
    #[error(transparent)]
    ClientAuth(#[from] ClientAuthError),
    #[error("session.keys[{index}]: {problem}")]
    SessionKey { index: usize, problem: KeyError },
    #[error("session: {0}")]
    KeyRing(KeyError),
    #[error(transparent)]
    BackChannel(#[from] BackChannelError),
    /// `redis.ca_file` cannot be read or holds no certificate.
    #[error("redis.ca_file: {path}: {problem}")]
    RedisCaFile { path: String, problem: String },
}

pub struct SignIn {
    provider: Arc<IdentityProvider>,
    client: ClientAuthenticator,
    seal: SessionSeal,
    oidc: OidcConfig,
    mfa: MfaConfig,
    session: SessionConfig,
    /// Groups named by some route: the only ones a session keeps.
    named_groups: Vec<Guid>,
    /// Authentication contexts that count: `[mfa]`'s and those routes require for step-up.
    named_acrs: Vec<String>,
    clock: Clock,
    /// States already used on this gateway (single use); kept across reloads.
    used_states: Arc<UsedStates>,
    /// Sessions ended by sign-out or front-channel logout; kept across reloads.
    revocations: Arc<Revocations>,
    /// With `[redis]`: revocations and used states shared with the other gateways; kept
    /// across reloads that do not change `[redis]`.
    shared: Option<Arc<SharedStore>>,
    /// What recent session cookies opened to (with these keys): not opened again per request.
    opened: OpenedSessions,
    rng: SystemRandom,
}

impl SignIn {
    /// Builds the sign-in engine for a configuration, or `None` when the configuration has no
    /// `[oidc]`. The provider's fetched metadata and keys are kept from `previous` when the
    /// issuer and client are unchanged, so a reload does not make the gateway unready.
    pub fn build(
        config: &Config,
        previous: Option<&SignIn>,
        clock: Clock,
    ) -> Result<Option<Arc<SignIn>>, SignInError> {
        let (Some(oidc), Some(session)) = (&config.oidc, &config.session) else {
            return Ok(None);
        };
        let client = ClientAuthenticator::load(&oidc.client_id, &oidc.client_auth)?;
        let keys = session
            .keys
            .iter()
            .enumerate()
            .map(|(index, key)| {
                SessionKey::from_bytes(key)
                    .map_err(|problem| SignInError::SessionKey { index, problem })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let seal = SessionSeal::new(&session.cookie_name, keys).map_err(SignInError::KeyRing)?;
        let provider = match previous {
            Some(previous)
                if previous.oidc.issuer == oidc.issuer
                    && previous.oidc.discovery_url == oidc.discovery_url =>
            {
                previous.provider.clone()
            }
            _ => IdentityProvider::new(
                oidc.clone(),
                BackChannel::new(BACKCHANNEL_TIMEOUT)?,
                clock.clone(),
            ),
        };
        let revocations = previous.map_or_else(Revocations::new, |p| p.revocations.clone());
        let used_states = previous.map_or_else(Default::default, |p| p.used_states.clone());
        if let Some(ca_file) = config.redis.as_ref().and_then(|r| r.ca_file.as_ref()) {
            check_ca_file(ca_file)?;
        }
        let shared =
            config
                .redis
                .as_ref()
                .map(|redis| match previous.and_then(|p| p.shared.as_ref()) {
                    Some(kept) if kept.config() == redis => kept.clone(),
                    _ => SharedStore::new(redis.clone(), revocations.clone(), clock.clone()),
                });
        let mut named_groups: Vec<Guid> = config
            .routes
            .iter()
            .flat_map(|r| r.groups_any_of.iter().copied())
            .collect();
        named_groups.sort_by_key(|g| g.0);
        named_groups.dedup();
        let mut named_acrs: Vec<String> = config
            .routes
            .iter()
            .flat_map(|r| r.acrs_any_of.iter())
            .chain(config.mfa.acrs_any_of.iter())
            .cloned()
            .collect();
        named_acrs.sort();
        named_acrs.dedup();
        Ok(Some(Arc::new(SignIn {
            provider,
            client,
            seal,
            oidc: oidc.clone(),
            mfa: config.mfa.clone(),
            session: session.clone(),
            named_groups,
            named_acrs,
            clock,
            used_states,
            revocations,
            shared,
            opened: OpenedSessions::default(),
            rng: SystemRandom::new(),
        })))
    }

    pub fn provider(&self) -> &Arc<IdentityProvider> {
        &self.provider
    }

    /// Login states remembered as used (for the metrics).
    pub fn remembered_states(&self) -> usize {
        self.used_states.len()
    }

    /// What the revocation list holds (for the metrics).
    pub fn revocation_counts(&self) -> RevocationCounts {
        self.revocations.counts()
    }

    /// Ready when the provider's metadata and keys are loaded: before that no sign-in can
    /// complete. With `[redis]` and `on_unavailable = "refuse"`, also not before the first
    /// catch-up of the shared revocations.
    pub fn is_ready(&self) -> bool {
        self.provider.is_ready() && self.shared.as_ref().is_none_or(|s| s.ready())
    }

    /// Starts the background work: the provider's refresh and, with `[redis]`, the shared
    /// store's connection (once, however many reloads keep it).
    pub fn spawn_background(&self, stop: &tokio::sync::watch::Sender<bool>) {
        self.provider.spawn_refresh(stop.subscribe());
        self.spawn_shared(stop);
    }

    /// Starts the shared store's connection, unless it is running already.
    pub fn spawn_shared(&self, stop: &tokio::sync::watch::Sender<bool>) {
        if let Some(shared) = &self.shared {
            shared.spawn(stop.subscribe());
        }
    }

    /// Redis's state, with `[redis]` (for `/readyz` and the metrics).
    pub fn shared_status(&self) -> Option<SharedStoreStatus> {
        self.shared.as_ref().map(|s| s.status())
    }

    /// With `[redis]`, `on_unavailable = "refuse"` and Redis unreachable: the request's
    /// session or sign-in is refused (a 503 page), audited as `what`.
    pub fn refuse_without_shared_state(
        &self,
        headers: &HeaderMap,
        what: &str,
        ctx: &RequestContext<'_>,
    ) -> Result<(), crate::error::GatewayError> {
        if !self.shared.as_ref().is_some_and(|s| s.refuses()) {
            return Ok(());
        }
        let oid = self.session_of(headers).map(|s| s.oid.to_string());
        crate::observe::audit::shared_state_refused(what, oid.as_deref(), ctx.client, ctx.host);
        Err(crate::error::GatewayError::SharedStateUnavailable)
    }

    /// The gateway's own cookies, never forwarded to Exchange.
    pub fn is_gateway_cookie(&self, name: &str) -> bool {
        self.seal.is_gateway_cookie(name)
    }

    /// Whether the request carries the gateway's session cookie at all (valid or not).
    pub fn has_session_cookie(&self, headers: &HeaderMap) -> bool {
        find_cookie(headers, self.seal.cookie_name()).is_some()
    }

    /// The origin (`scheme://host[:port]`) of the provider's authorization endpoint, from its
    /// loaded metadata: the site whose page posts a `form_post` answer, and so the `Origin` a
    /// browser sends with it. `None` until the metadata is loaded.
    pub fn authorization_origin(&self) -> Option<String> {
        let state = self.provider.state()?;
        let url = url::Url::parse(&state.endpoints.authorization_endpoint).ok()?;
        match url.origin() {
            origin @ url::Origin::Tuple(..) => Some(origin.ascii_serialization()),
            url::Origin::Opaque(_) => None,
        }
    }

    /// The route policy for a route's configuration.
    pub fn default_max_auth_age(&self) -> Duration {
        self.mfa.max_auth_age
    }

    /// Judges the request's session against the route ([`policy::decide`]). Only `activity`
    /// (not background traffic, see [`crate::activity`]) moves the idle timeout.
    pub fn admit(&self, headers: &HeaderMap, route: &RoutePolicy, activity: bool) -> Admission {
        let now = self.clock.now();
        let opened = find_cookie(headers, self.seal.cookie_name()).map(|v| self.open_session(v));
        let state = match &opened {
            None => SessionState::Missing,
            Some(None) => SessionState::Unreadable,
            Some(Some(session)) => SessionState::Opened {
                session,
                revoked: self.revocations.is_revoked(session),
            },
        };
        let rules = SessionRules {
            idle_timeout: self.session.idle_timeout,
            allowed_tenants: &self.oidc.allowed_tenants,
        };
        let verdict = policy::decide(route, state, rules, now);
        match (verdict, opened.flatten()) {
            (Verdict::Allow { touch }, Some(session)) => {
                let reseal = (touch && activity)
                    .then(|| {
                        let mut touched = Session::clone(&session);
                        touched.touch(now);
                        self.session_cookie(&touched).ok()
                    })
                    .flatten();
                Admission::Allowed { session, reseal }
            }
            (Verdict::Deny(why), Some(session)) => Admission::Denied { session, why },
            (Verdict::SignIn { step_up, why }, _) => Admission::SignInRequired { step_up, why },
            // The policy allows or denies only a session it was given.
            (Verdict::Allow { .. } | Verdict::Deny(_), None) => Admission::SignInRequired {
                step_up: StepUp::default(),
                why: SignInReason::NoSession,
            },
        }
    }

    /// The session in a session cookie's value: remembered from an earlier request with the
    /// same value, or opened now.
    fn open_session(&self, value: &str) -> Option<Arc<Session>> {
        if let Some(session) = self.opened.get(value) {
            return Some(session);
        }
        let session = Arc::new(self.seal.open(value)?);
        self.revocations.note_session(&session, self.clock.now());
        self.opened.insert(value, session.clone());
        Some(session)
    }

    fn session_cookie(&self, session: &Session) -> Result<HeaderValue, ()> {
        let value = self.seal.seal(session).map_err(|_| ())?;
        let max_age = session.expires_at.saturating_sub(self.clock.now());
        Ok(set_cookie_header(
            self.seal.cookie_name(),
            &value,
            Duration::from_secs(max_age),
            SameSite::Lax,
        ))
    }
}

/// `redis.ca_file` holds at least one PEM certificate (read again at each connection, so a
/// renewed bundle needs no restart; checked here so `check-config` and the start report it).
fn check_ca_file(path: &std::path::Path) -> Result<(), SignInError> {
    use rustls_pki_types::pem::PemObject;
    let problem = |problem: String| SignInError::RedisCaFile {
        path: path.display().to_string(),
        problem,
    };
    let pem = std::fs::read(path).map_err(|e| problem(format!("cannot read: {e}")))?;
    let certificates = rustls_pki_types::CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| problem(format!("not PEM certificates: {e}")))?;
    if certificates.is_empty() {
        return Err(problem("holds no certificate".to_owned()));
    }
    Ok(())
}

/// A `302 Found` to `location`, never cached.
pub(crate) fn redirect(location: &str) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::empty());
    *response.status_mut() = StatusCode::FOUND;
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers_mut().insert(LOCATION, value);
    }
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
