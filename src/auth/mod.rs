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

pub mod backchannel;
pub mod client_auth;
pub mod id_token;
pub mod provider;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use http::header::{HeaderValue, CACHE_CONTROL, LOCATION, SET_COOKIE};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use openidconnect::PkceCodeChallenge;
use ring::rand::{SecureRandom, SystemRandom};

use crate::body::ResponseBody;
use crate::clock::Clock;
use crate::config::{Config, MfaConfig, OidcConfig, ResponseMode, SessionConfig};
use crate::pages::Page;
use crate::session::{
    clear_cookie_header, cookies, find_cookie, set_cookie_header, EntraId, Guid, LoginTransaction,
    MfaEvidence, OpenedSessions, Revocations, SameSite, Session, SessionKey, SessionSeal,
};
use backchannel::BackChannel;
use client_auth::ClientAuthenticator;
use id_token::{Expectations, Refusal};
use provider::IdentityProvider;

/// Pending sign-ins kept per browser; older ones are dropped (many tabs must not pile up
/// cookies until headers are too large).
const MAX_PENDING_LOGINS: usize = 4;
/// Where a sign-in returns when the original address cannot be used.
const DEFAULT_RETURN: &str = "/owa/";
/// Largest form_post callback body accepted.
const MAX_CALLBACK_BODY: usize = 64 * 1024;
const BACKCHANNEL_TIMEOUT: Duration = Duration::from_secs(10);

/// What a route requires of a session, beyond the global `[mfa]` rules.
#[derive(Debug, Clone)]
pub struct RoutePolicy {
    pub name: String,
    pub max_auth_age: Duration,
    pub acrs_any_of: Vec<String>,
    pub groups_any_of: Vec<String>,
    pub unauthenticated_status: StatusCode,
}

/// How a request without a usable session continues.
#[derive(Debug, Clone, Default)]
pub struct StepUp {
    /// Ask Entra for a fresh authentication (`prompt=login`, `max_age`).
    pub max_age: Option<Duration>,
    /// Ask Entra for a fresh authentication without an age limit (`prompt=login`): after a
    /// sign-in was refused, so Entra does not answer at once from the same session.
    pub prompt_login: bool,
    /// Ask for this Conditional Access authentication context.
    pub acrs: Option<String>,
}

pub enum Admission {
    /// Let the request through; `reseal` is a Set-Cookie refreshing the idle timer.
    Allowed {
        session: Arc<Session>,
        reseal: Option<HeaderValue>,
    },
    /// No usable session (none, tampered, expired) or not fresh/strong enough for this route.
    SignInRequired { step_up: StepUp, why: &'static str },
    /// Signed in, but this route's policy refuses the user.
    Denied {
        session: Arc<Session>,
        why: &'static str,
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
    /// States already used on this gateway (single use), with when they were used.
    used_states: Mutex<HashMap<String, u64>>,
    /// Sessions ended by sign-out or front-channel logout; kept across reloads.
    revocations: Arc<Revocations>,
    /// What recent session cookies opened to (with these keys): not opened again per request.
    opened: OpenedSessions,
    /// `oidc.allowed_tenants`, parsed once: a session's tenant is checked on every request.
    allowed_tenants: Vec<EntraId>,
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
    ) -> Result<Option<Arc<SignIn>>, String> {
        let (Some(oidc), Some(session)) = (&config.oidc, &config.session) else {
            return Ok(None);
        };
        let client = ClientAuthenticator::load(&oidc.client_id, &oidc.client_auth)?;
        let keys = session
            .keys
            .iter()
            .enumerate()
            .map(|(i, key)| {
                SessionKey::from_bytes(key).map_err(|e| format!("session.keys[{i}]: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let seal =
            SessionSeal::new(&session.cookie_name, keys).map_err(|e| format!("session: {e}"))?;
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
        let mut named_groups: Vec<Guid> = config
            .routes
            .iter()
            .flat_map(|r| r.groups_any_of.iter())
            .filter_map(|g| Guid::parse(g))
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
            used_states: Mutex::new(HashMap::new()),
            revocations,
            opened: OpenedSessions::default(),
            allowed_tenants: oidc
                .allowed_tenants
                .iter()
                .map(|t| EntraId::parse(t))
                .collect(),
            rng: SystemRandom::new(),
        })))
    }

    pub fn provider(&self) -> &Arc<IdentityProvider> {
        &self.provider
    }

    /// Ready when the provider's metadata and keys are loaded: before that no sign-in can
    /// complete.
    pub fn is_ready(&self) -> bool {
        self.provider.is_ready()
    }

    /// The gateway's own cookies, never forwarded to Exchange.
    pub fn is_gateway_cookie(&self, name: &str) -> bool {
        self.seal.is_gateway_cookie(name)
    }

    /// The route policy for a route's configuration.
    pub fn default_max_auth_age(&self) -> Duration {
        self.mfa.max_auth_age
    }

    /// Judges the request's session against the route.
    pub fn admit(&self, headers: &HeaderMap, route: &RoutePolicy) -> Admission {
        let now = self.clock.now();
        let Some(value) = find_cookie(headers, self.seal.cookie_name()) else {
            return sign_in("no_session");
        };
        let Some(session) = self.open_session(value) else {
            return sign_in("session_unreadable");
        };
        if let Err(expired) = session.check(now, self.session.idle_timeout) {
            return sign_in(expired.as_str());
        }
        if self.revocations.is_revoked(&session) {
            return sign_in("session_revoked");
        }
        if !self.allowed_tenants.contains(&session.tid) {
            return sign_in("tenant_no_longer_allowed");
        }
        let age = now.saturating_sub(session.auth_time);
        if age > route.max_auth_age.as_secs() {
            return Admission::SignInRequired {
                step_up: StepUp {
                    max_age: Some(route.max_auth_age),
                    acrs: route.acrs_any_of.first().cloned(),
                    prompt_login: true,
                },
                why: "auth_too_old_for_route",
            };
        }
        if !route.acrs_any_of.is_empty()
            && !session
                .mfa
                .acrs
                .iter()
                .any(|have| route.acrs_any_of.contains(have))
        {
            return Admission::SignInRequired {
                step_up: StepUp {
                    max_age: None,
                    acrs: route.acrs_any_of.first().cloned(),
                    prompt_login: false,
                },
                why: "auth_context_missing",
            };
        }
        if !route.groups_any_of.is_empty()
            && !route.groups_any_of.iter().any(|g| session.in_group(g))
        {
            // With the overage marker Entra did not list the groups: refuse and say why
            // rather than guess.
            let why = if session.groups_overage {
                "groups_overage"
            } else {
                "not_in_group"
            };
            return Admission::Denied { session, why };
        }
        let reseal = if session.needs_touch(now) {
            let mut touched = Session::clone(&session);
            touched.touch(now);
            self.session_cookie(&touched).ok()
        } else {
            None
        };
        Admission::Allowed { session, reseal }
    }

    /// The session in a session cookie's value: remembered from an earlier request with the
    /// same value, or opened now.
    fn open_session(&self, value: &str) -> Option<Arc<Session>> {
        if let Some(session) = self.opened.get(value) {
            return Some(session);
        }
        let session = Arc::new(self.seal.open(value)?);
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

    /// Starts a sign-in for a top-level navigation: a pending-login cookie and a redirect to
    /// Entra's authorization endpoint.
    pub fn start(
        &self,
        method: &Method,
        uri: &http::Uri,
        headers: &HeaderMap,
        step_up: &StepUp,
        ctx: &RequestContext<'_>,
    ) -> Response<ResponseBody> {
        let Some(state) = self
            .provider
            .state()
            .filter(|_| self.provider.is_reachable())
        else {
            return provider_unavailable();
        };
        let return_path = if uri.path().eq_ignore_ascii_case("/_gateway/sign-in") {
            sign_in_return_path(uri)
        } else if *method == Method::GET || *method == Method::HEAD {
            safe_return_path(uri.path_and_query().map(|pq| pq.as_str()))
        } else {
            DEFAULT_RETURN.to_owned()
        };
        let (Ok(login_state), Ok(nonce)) = (self.random_token(), self.random_token()) else {
            return internal_error();
        };
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let login = LoginTransaction {
            state: login_state.clone(),
            nonce: nonce.clone(),
            pkce_verifier: verifier.secret().clone(),
            return_path,
            created_at: self.clock.now(),
        };
        let Ok(sealed) = self.seal.seal_login(&login) else {
            return internal_error();
        };

        let mut url = match url::Url::parse(&state.endpoints.authorization_endpoint) {
            Ok(url) => url,
            Err(_) => return provider_unavailable(),
        };
        {
            let mut query = url.query_pairs_mut();
            query
                .append_pair("client_id", &self.oidc.client_id)
                .append_pair("response_type", "code")
                .append_pair("redirect_uri", &ctx.redirect_uri())
                .append_pair(
                    "response_mode",
                    match self.oidc.response_mode {
                        ResponseMode::FormPost => "form_post",
                        ResponseMode::Query => "query",
                    },
                )
                .append_pair("scope", &self.oidc.scopes.join(" "))
                .append_pair("state", &login_state)
                .append_pair("nonce", &nonce)
                .append_pair("code_challenge", challenge.as_str())
                .append_pair("code_challenge_method", "S256");
            if let Some(max_age) = step_up.max_age {
                query
                    .append_pair("prompt", "login")
                    .append_pair("max_age", &max_age.as_secs().to_string());
            } else if step_up.prompt_login {
                query.append_pair("prompt", "login");
            }
            // An authentication context is asked for whenever `[mfa]` accepts one: Entra adds
            // `acrs` to the token only when the claims request names it.
            let acrs = step_up
                .acrs
                .clone()
                .or_else(|| self.mfa.acrs_any_of.first().cloned());
            if let Some(acrs) = acrs {
                let claims = serde_json::json!({
                    "id_token": { "acrs": { "essential": true, "value": acrs } }
                });
                query.append_pair("claims", &claims.to_string());
            }
        }

        let mut response = redirect(url.as_str());
        let same_site = match self.oidc.response_mode {
            // Entra's form_post is a cross-site POST: only SameSite=None cookies come with it.
            ResponseMode::FormPost => SameSite::None,
            ResponseMode::Query => SameSite::Lax,
        };
        let response_headers = response.headers_mut();
        response_headers.append(
            SET_COOKIE,
            set_cookie_header(
                &self.seal.login_cookie_name(&login_state),
                &sealed,
                self.oidc.login_timeout,
                same_site,
            ),
        );
        for name in self.logins_to_drop(headers) {
            response_headers.append(SET_COOKIE, clear_cookie_header(&name));
        }
        response
    }

    /// Names of pending-login cookies to clear so that, with the new one, at most
    /// `MAX_PENDING_LOGINS` remain: unreadable or expired ones first, then the oldest.
    fn logins_to_drop(&self, headers: &HeaderMap) -> Vec<String> {
        let now = self.clock.now();
        let mut pending: Vec<(u64, String)> = cookies(headers)
            .filter(|(name, _)| self.seal.is_login_cookie(name))
            .map(|(name, value)| {
                let age_key = self
                    .seal
                    .open_login_cookie(name, value)
                    .filter(|login| !login.is_expired(now, self.oidc.login_timeout))
                    .map_or(0, |login| login.created_at);
                (age_key, name.to_owned())
            })
            .collect();
        pending.sort();
        pending.dedup_by(|a, b| a.1 == b.1);
        let excess = (pending.len() + 1).saturating_sub(MAX_PENDING_LOGINS);
        pending
            .into_iter()
            .take(excess)
            .map(|(_, name)| name)
            .collect()
    }

    /// `/_gateway/callback`: finishes a sign-in.
    pub async fn callback(
        &self,
        request: Request<Incoming>,
        ctx: &RequestContext<'_>,
    ) -> Response<ResponseBody> {
        let (params, login_cookies) = match callback_params(request, &self.seal).await {
            Ok(found) => found,
            Err(page) => return page,
        };
        let outcome = self.finish(&params, &login_cookies, ctx).await;
        let mut response = match outcome {
            Ok(response) => response,
            Err(failure) => {
                crate::audit::sign_in_refused(failure.reason, &failure.facts, ctx.client, ctx.host);
                failure.page.response(failure.status)
            }
        };
        // The pending login is over, whatever the outcome: its cookie goes.
        if let Some(state) = params.get("state") {
            response.headers_mut().append(
                SET_COOKIE,
                clear_cookie_header(&self.seal.login_cookie_name(state)),
            );
        }
        response
    }

    async fn finish(
        &self,
        params: &HashMap<String, String>,
        login_cookies: &[(String, String)],
        ctx: &RequestContext<'_>,
    ) -> Result<Response<ResponseBody>, Failure> {
        let now = self.clock.now();
        let state = params
            .get("state")
            .ok_or_else(|| Failure::state("state_missing"))?;
        let cookie_name = self.seal.login_cookie_name(state);
        let login = login_cookies
            .iter()
            .filter(|(name, _)| *name == cookie_name)
            .find_map(|(_, value)| self.seal.open_login(state, value))
            .ok_or_else(|| Failure::state("state_unknown"))?;
        if login.is_expired(now, self.oidc.login_timeout) {
            return Err(Failure::state("state_expired").with_return(&login.return_path));
        }
        if !self.consume_state(state, now) {
            return Err(Failure::state("state_replayed").with_return(&login.return_path));
        }
        if let Some(error) = params.get("error") {
            let description = params
                .get("error_description")
                .map(|d| d.lines().next().unwrap_or_default().to_owned())
                .unwrap_or_default();
            let message =
                format!("Microsoft Entra ID did not complete the sign-in ({error}). {description}");
            return Err(Failure {
                reason: "idp_error",
                status: StatusCode::FORBIDDEN,
                page: Page::owned("Sign-in was not completed", message)
                    .with_link("Sign in again", fresh_sign_in_link(&login.return_path)),
                facts: Default::default(),
            });
        }
        let code = params
            .get("code")
            .ok_or_else(|| Failure::state("code_missing").with_return(&login.return_path))?;
        let provider_state = self
            .provider
            .state()
            .ok_or_else(|| Failure::unavailable(&login.return_path))?;

        let credentials = self
            .client
            .credentials(&provider_state.endpoints.token_endpoint)
            .map_err(|e| {
                tracing::error!(error = %e, "cannot build client credentials");
                Failure::unavailable(&login.return_path)
            })?;
        let redirect_uri = ctx.redirect_uri();
        let mut form: Vec<(&str, &str)> = vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", &redirect_uri),
            ("code_verifier", &login.pkce_verifier),
        ];
        for (k, v) in &credentials.form {
            form.push((k, v));
        }
        let (status, body) = self
            .provider
            .channel()
            .post_form(
                &provider_state.endpoints.token_endpoint,
                &form,
                credentials.authorization,
            )
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "token endpoint unreachable");
                self.provider.report_unreachable();
                Failure::unavailable(&login.return_path)
            })?;
        let token: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
            tracing::warn!(status = status.as_u16(), "token endpoint failed");
            self.provider.report_unreachable();
            return Err(Failure::unavailable(&login.return_path));
        }
        if !status.is_success() {
            let error = token
                .get("error")
                .and_then(|e| e.as_str())
                .unwrap_or("unknown");
            tracing::warn!(
                status = status.as_u16(),
                error,
                "token endpoint refused the code exchange"
            );
            return Err(Failure {
                reason: "code_exchange_refused",
                status: StatusCode::BAD_GATEWAY,
                page: Page::new(
                    "Sign-in could not be completed",
                    "Microsoft Entra ID refused to complete this sign-in. Sign in again; if it keeps happening, contact your help desk.",
                )
                .with_link("Sign in again", fresh_sign_in_link(&login.return_path)),
                facts: Default::default(),
            });
        }
        let id_token = token
            .get("id_token")
            .and_then(|t| t.as_str())
            .ok_or_else(|| Failure::refused(Refusal::Malformed, &login.return_path))?;

        let mut verification = self.verify(id_token, &provider_state.keys, &login.nonce, now);
        if matches!(verification.result, Err(Refusal::UnknownKey)) {
            if let Some(fresh) = self.provider.refetch_keys_for_unknown_kid().await {
                verification = self.verify(id_token, &fresh.keys, &login.nonce, now);
            }
        }
        let identity = match verification.result {
            Ok(identity) => identity,
            Err(refusal) => {
                let mut failure = Failure::refused(refusal, &login.return_path);
                failure.facts = verification.facts;
                return Err(failure);
            }
        };

        let session_id = self
            .seal
            .new_session_id()
            .map_err(|_| Failure::unavailable(&login.return_path))?;
        let mut session = Session::new(
            session_id,
            EntraId::parse(&identity.oid),
            EntraId::parse(&identity.tid),
            identity.auth_time,
            now,
            self.session.lifetime,
        );
        session.sid = identity.entra_sid.clone();
        session.upn = identity.upn.clone();
        session.name = identity.name.clone();
        session.onprem_sid = identity.onprem_sid.clone();
        session.groups = identity
            .groups
            .iter()
            .filter_map(|g| Guid::parse(g))
            .filter(|g| self.named_groups.contains(g))
            .collect();
        session.groups_overage = identity.groups_overage;
        session.mfa = MfaEvidence {
            amr: identity.amr.clone(),
            acrs: identity
                .all_acrs
                .iter()
                .filter(|value| self.named_acrs.contains(value))
                .cloned()
                .collect(),
        };
        let cookie = self
            .session_cookie(&session)
            .map_err(|_| Failure::unavailable(&login.return_path))?;
        crate::audit::sign_in_succeeded(&identity, ctx.client, ctx.host);
        let mut response = redirect(&login.return_path);
        response.headers_mut().append(SET_COOKIE, cookie);
        Ok(response)
    }

    /// The session in the request when it is live (opens, not expired, not revoked), whatever
    /// any route's policy says: enough to sign out.
    pub fn live_session(&self, headers: &HeaderMap) -> Option<Box<Session>> {
        let session = self.session_of(headers)?;
        let live = session
            .check(self.clock.now(), self.session.idle_timeout)
            .is_ok()
            && !self.revocations.is_revoked(&session);
        live.then(|| Box::new(session))
    }

    /// The session in the request, if it opens, whatever its state.
    pub fn session_of(&self, headers: &HeaderMap) -> Option<Session> {
        find_cookie(headers, self.seal.cookie_name()).and_then(|value| self.seal.open(value))
    }

    /// Ends the gateway session of this request (if any) and sends the browser to Entra's
    /// end-session endpoint, which returns it to `/_gateway/signed-out`. Used after OWA's and
    /// ECP's own sign-out pages and by `/_gateway/logout`.
    pub fn end_session(
        &self,
        session: Option<&Session>,
        ctx: &RequestContext<'_>,
        how: &'static str,
    ) -> Response<ResponseBody> {
        if let Some(session) = session {
            self.revocations.revoke_session(session, self.clock.now());
            crate::audit::signed_out(
                how,
                &session.oid.to_string(),
                session.upn.as_deref(),
                ctx.client,
            );
        }
        let signed_out = format!("{}://{}/_gateway/signed-out", ctx.scheme, ctx.host);
        let location = self
            .provider
            .state()
            .and_then(|state| state.endpoints.end_session_endpoint.clone())
            .and_then(|endpoint| url::Url::parse(&endpoint).ok())
            .map(|mut url| {
                url.query_pairs_mut()
                    .append_pair("post_logout_redirect_uri", &signed_out)
                    .append_pair("client_id", &self.oidc.client_id);
                url.to_string()
            })
            .unwrap_or(signed_out);
        let mut response = redirect(&location);
        response
            .headers_mut()
            .append(SET_COOKIE, clear_cookie_header(self.seal.cookie_name()));
        response
    }

    /// `/_gateway/frontchannel-logout?sid=…`: Entra ends its session and calls this in a hidden
    /// frame, with only `sid` and possibly without cookies (third-party cookie blocking): every
    /// session of that sign-in is revoked on this gateway.
    pub fn frontchannel_logout(
        &self,
        uri: &http::Uri,
        headers: &HeaderMap,
        client: IpAddr,
    ) -> Response<ResponseBody> {
        let sid = uri.query().and_then(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .find(|(k, _)| k == "sid")
                .map(|(_, v)| v.into_owned())
        });
        let Some(sid) = sid.filter(|s| !s.is_empty() && s.len() <= 256) else {
            return Page::new(
                "Bad request",
                "A front-channel logout names the session to end.",
            )
            .response(StatusCode::BAD_REQUEST);
        };
        self.revocations
            .revoke_sid(&sid, self.clock.now(), self.session.lifetime.as_secs());
        let session = self.session_of(headers);
        crate::audit::front_channel_logout(
            session.as_ref().map(|s| s.oid.to_string()).as_deref(),
            client,
        );
        let mut response =
            Page::new("Signed out", "You have been signed out.").response(StatusCode::OK);
        if session.is_some() {
            response
                .headers_mut()
                .append(SET_COOKIE, clear_cookie_header(self.seal.cookie_name()));
        }
        response
    }

    fn verify(
        &self,
        token: &str,
        keys: &openidconnect::core::CoreJsonWebKeySet,
        nonce: &str,
        now: u64,
    ) -> id_token::Verification {
        id_token::verify(
            token,
            keys,
            &Expectations {
                issuer: &self.oidc.issuer,
                client_id: &self.oidc.client_id,
                nonce,
                allowed_tenants: &self.oidc.allowed_tenants,
                clock_skew: self.oidc.clock_skew,
                amr_any_of: &self.mfa.amr_any_of,
                acrs_any_of: &self.mfa.acrs_any_of,
                max_auth_age: self.mfa.max_auth_age,
                now,
            },
        )
    }

    /// Marks `state` used; false when it was used before on this gateway.
    fn consume_state(&self, state: &str, now: u64) -> bool {
        let mut used = match self.used_states.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        let horizon = self.oidc.login_timeout.as_secs();
        if used.len() > 10_000 {
            used.retain(|_, at| now.saturating_sub(*at) <= horizon);
        }
        used.insert(state.to_owned(), now).is_none()
    }

    fn random_token(&self) -> Result<String, ()> {
        let mut bytes = [0u8; 24];
        self.rng.fill(&mut bytes).map_err(|_| ())?;
        Ok(URL_SAFE_NO_PAD.encode(bytes))
    }

    /// The response to a request without a usable session that is not a top-level
    /// navigation: 401 (or 440 for OWA) with no redirect.
    pub fn unauthenticated(&self, route: &RoutePolicy) -> Response<ResponseBody> {
        let mut response = Page::new(
            "Sign-in required",
            "Your session has ended. Reload the page to sign in again.",
        )
        .response(route.unauthenticated_status);
        if route.unauthenticated_status.as_u16() == 440 {
            // 440 has no standard reason phrase; IIS calls it "Login Time-out".
            response
                .extensions_mut()
                .insert(hyper::ext::ReasonPhrase::from_static(b"Login Time-out"));
        }
        response
    }
}

fn sign_in(why: &'static str) -> Admission {
    Admission::SignInRequired {
        step_up: StepUp::default(),
        why,
    }
}

/// A refusal on the callback: the page, the status and the audit reason.
struct Failure {
    reason: &'static str,
    status: StatusCode,
    page: Page,
    facts: id_token::UnverifiedFacts,
}

impl Failure {
    /// Unknown, expired or replayed state: never a redirect loop, a page with a fresh link.
    fn state(reason: &'static str) -> Failure {
        Failure {
            reason,
            status: StatusCode::BAD_REQUEST,
            page: Page::new(
                "This sign-in link has expired",
                "The sign-in could not be matched to this browser: it may have taken too long, been used already, or been started in another browser. Start again.",
            )
            .with_link("Sign in again", fresh_sign_in_link(DEFAULT_RETURN)),
            facts: Default::default(),
        }
    }

    fn with_return(mut self, return_path: &str) -> Failure {
        if let Some((_, href)) = &mut self.page.link {
            *href = fresh_sign_in_link(return_path);
        }
        self
    }

    fn unavailable(return_path: &str) -> Failure {
        Failure {
            reason: "idp_unavailable",
            status: StatusCode::SERVICE_UNAVAILABLE,
            page: Page::new(
                "Sign-in is unavailable",
                "Microsoft Entra ID cannot be reached right now, so new sign-ins cannot complete. Try again in a few minutes.",
            )
            .with_link("Try again", return_path.to_owned()),
            facts: Default::default(),
        }
    }

    fn refused(refusal: Refusal, return_path: &str) -> Failure {
        let (title, message, status) = match refusal {
            Refusal::NoMfa => (
                "Multifactor authentication required",
                "This sign-in did not include multifactor authentication, which is required to reach your mailbox from outside the organisation. Sign in again and complete the multifactor step (for example the Authenticator app prompt).",
                StatusCode::FORBIDDEN,
            ),
            Refusal::AuthTooOld => (
                "Sign in again",
                "Your sign-in is too old for this page. Sign in again to continue.",
                StatusCode::FORBIDDEN,
            ),
            Refusal::WrongTenant => (
                "Account not allowed",
                "This account belongs to an organisation that may not use this site.",
                StatusCode::FORBIDDEN,
            ),
            _ => (
                "Sign-in could not be verified",
                "The answer from Microsoft Entra ID could not be verified, so you were not signed in. Sign in again; if it keeps happening, contact your help desk.",
                StatusCode::UNAUTHORIZED,
            ),
        };
        Failure {
            reason: refusal.reason(),
            status,
            page: Page::new(title, message)
                .with_link("Sign in again", fresh_sign_in_link(return_path)),
            facts: Default::default(),
        }
    }
}

/// The callback's parameters — the query string (`response_mode=query`) or the form body
/// (`form_post`) — and the pending-login cookies the browser sent.
type CallbackRequest = (HashMap<String, String>, Vec<(String, String)>);

async fn callback_params(
    request: Request<Incoming>,
    seal: &SessionSeal,
) -> Result<CallbackRequest, Response<ResponseBody>> {
    let (parts, body) = request.into_parts();
    let login_cookies: Vec<(String, String)> = cookies(&parts.headers)
        .filter(|(name, _)| seal.is_login_cookie(name))
        .take(MAX_PENDING_LOGINS * 4)
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect();
    let mut params: HashMap<String, String> = HashMap::new();
    let mut add = |bytes: &[u8]| {
        for (k, v) in url::form_urlencoded::parse(bytes) {
            params
                .entry(k.into_owned())
                .or_insert_with(|| v.into_owned());
        }
    };
    if let Some(query) = parts.uri.query() {
        add(query.as_bytes());
    }
    if parts.method == Method::POST {
        match Limited::new(body, MAX_CALLBACK_BODY).collect().await {
            Ok(collected) => add(&collected.to_bytes()),
            Err(_) => {
                return Err(Page::new(
                    "Bad request",
                    "The sign-in answer could not be read. Start again from Outlook on the web.",
                )
                .with_link("Sign in again", DEFAULT_RETURN.to_owned())
                .response(StatusCode::BAD_REQUEST))
            }
        }
    } else if parts.method != Method::GET {
        return Err(Page::new(
            "Bad request",
            "This address accepts only the sign-in answer.",
        )
        .response(StatusCode::METHOD_NOT_ALLOWED));
    }
    Ok((params, login_cookies))
}

/// Only a same-host relative path may be returned to: anything else (`//evil`, `/\evil`,
/// absolute URLs, control characters) becomes `/owa/`. The C1 controls (U+0080–U+009F) count
/// too: a request target can carry them as raw UTF-8, and they would reach the `Location` header.
pub fn safe_return_path(path_and_query: Option<&str>) -> String {
    match path_and_query {
        Some(p)
            if p.starts_with('/')
                && !p.starts_with("//")
                && !p.starts_with("/\\")
                && !p.chars().any(|c| c.is_control() || c == '\\')
                && p.len() <= 2048 =>
        {
            p.to_owned()
        }
        _ => DEFAULT_RETURN.to_owned(),
    }
}

fn redirect(location: &str) -> Response<ResponseBody> {
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

fn provider_unavailable() -> Response<ResponseBody> {
    Page::new(
        "Sign-in is unavailable",
        "Microsoft Entra ID cannot be reached right now, so new sign-ins cannot start. Try again in a few minutes; if you are already signed in, your session keeps working.",
    )
    .response(StatusCode::SERVICE_UNAVAILABLE)
}

fn internal_error() -> Response<ResponseBody> {
    Page::new(
        "Something went wrong",
        "The sign-in could not be started. Try again.",
    )
    .response(StatusCode::INTERNAL_SERVER_ERROR)
}

/// A link that starts a new sign-in with `prompt=login` and returns to `return_path`: offered
/// after a refused sign-in, where a plain link would let Entra answer at once from the same
/// (password-only) session and show the refusal again.
fn fresh_sign_in_link(return_path: &str) -> String {
    let encoded: String = url::form_urlencoded::byte_serialize(return_path.as_bytes()).collect();
    format!("/_gateway/sign-in?return={encoded}")
}

/// The return path named by `/_gateway/sign-in?return=…`, checked like any return path.
pub fn sign_in_return_path(uri: &http::Uri) -> String {
    let requested = uri.query().and_then(|q| {
        url::form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "return")
            .map(|(_, v)| v.into_owned())
    });
    safe_return_path(requested.as_deref())
}

/// `/_gateway/signed-out`: where Entra's sign-out returns the browser.
pub fn signed_out_page() -> Response<ResponseBody> {
    Page::new(
        "You have signed out",
        "You have signed out of Outlook on the web. Close the browser if you are on a shared computer.",
    )
    .with_link("Sign in again", DEFAULT_RETURN.to_owned())
    .response(StatusCode::OK)
}

/// Exchange's own sign-out pages: the request still goes to Exchange (to clear its Forms-auth
/// cookies), then the gateway session ends too.
pub fn is_sign_out_path(path: &str) -> bool {
    path.eq_ignore_ascii_case("/owa/logoff.owa") || path.eq_ignore_ascii_case("/ecp/logoff.aspx")
}

/// Whether a request is a top-level page load that may be redirected to Entra, as opposed to
/// a script request (XHR, fetch) or a form submission that a redirect would break.
pub fn is_navigation(method: &Method, headers: &HeaderMap) -> bool {
    if *method != Method::GET && *method != Method::HEAD {
        return false;
    }
    if headers.contains_key("x-requested-with") {
        return false;
    }
    match headers.get("sec-fetch-mode").and_then(|v| v.to_str().ok()) {
        Some(mode) => mode.eq_ignore_ascii_case("navigate"),
        // Browsers without Fetch Metadata: judge by what the request accepts.
        None => headers
            .get(http::header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|accept| accept.contains("text/html")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn return_path_to_another_host_becomes_owa() {
        for hostile in [
            "//evil.example/owa/",
            "/\\evil.example/owa/",
            "https://evil.example/",
            "owa/",
            "",
        ] {
            assert_eq!(safe_return_path(Some(hostile)), "/owa/", "{hostile:?}");
        }
        assert_eq!(safe_return_path(None), "/owa/");
        assert_eq!(
            safe_return_path(Some("/owa/#path=/mail/inbox")),
            "/owa/#path=/mail/inbox"
        );
        assert_eq!(safe_return_path(Some("/owa/ééé/日本")), "/owa/ééé/日本");
    }

    #[test]
    fn return_path_with_a_control_character_becomes_owa() {
        // C1 controls arrive as raw UTF-8 in a request target (`?\u{8b}`) or decoded from
        // `/_gateway/sign-in?return=%C2%85`: they would end up in the Location header.
        for hostile in [
            "/owa/\r\nSet-Cookie: x=1",
            "/owa/\t",
            "/owa/\u{7f}",
            "/owa/\u{85}",
            "/_gateway/sign-in??\u{8b}",
            "/owa/\u{9f}x",
        ] {
            assert_eq!(safe_return_path(Some(hostile)), "/owa/", "{hostile:?}");
        }
        let uri: http::Uri = "/_gateway/sign-in?return=/owa/%C2%85".parse().unwrap();
        assert_eq!(sign_in_return_path(&uri), "/owa/");
    }
}
