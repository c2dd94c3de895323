//! `/_gateway/callback`: the end of a sign-in. The pending login is matched by `state`, the
//! code exchanged (PKCE), the ID token verified ([`super::id_token`]), and the session sealed
//! into its cookie — or a page that says what went wrong, and an audit event.

use std::collections::HashMap;

use bytes::Bytes;
use http::header::{HeaderValue, SET_COOKIE};
use http::{Method, Response, StatusCode};
use serde::Deserialize;

use super::id_token::{self, Expectations, Refusal};
use super::{redirect, RequestContext, SignIn, MAX_PENDING_LOGINS};
use crate::body::ResponseBody;
use crate::config::OnUnavailable;
use crate::error::{GatewayError, StateProblem};
use crate::session::{
    clear_cookie_header, cookies, EntraId, Guid, MfaEvidence, Session, SessionSeal, SharedStore,
};
use std::sync::Arc;

/// A login state claimed in Redis for one code exchange: released unless Entra accepted the
/// code, so made-up codes leave nothing behind there either.
struct SharedClaim<'a> {
    store: Arc<SharedStore>,
    state: &'a str,
    kept: bool,
}

impl Drop for SharedClaim<'_> {
    fn drop(&mut self) {
        if !self.kept {
            self.store.release_state(self.state);
        }
    }
}

/// The token endpoint's answer (RFC 6749 section 5.1 and 5.2): the parts the gateway reads.
/// The access and refresh tokens Entra also returns are never read or kept.
#[derive(Debug, Default, Deserialize)]
struct TokenResponse {
    id_token: Option<String>,
    /// On a refusal: `invalid_grant` and the like, for the log.
    error: Option<String>,
}

impl SignIn {
    /// `/_gateway/callback`: finishes a sign-in. `body` is the form of a `form_post` answer,
    /// already read (small, within a deadline) by the caller. A refusal is audited here, with
    /// what could be read of the token.
    pub async fn callback(
        &self,
        request: http::request::Parts,
        body: Bytes,
        ctx: &RequestContext<'_>,
    ) -> CallbackAnswer {
        let Some((params, login_cookies)) = callback_params(&request, &body, &self.seal) else {
            return CallbackAnswer {
                outcome: Err(GatewayError::MethodNotAllowed),
                clear_login: None,
            };
        };
        let outcome = match self
            .finish(&params, &login_cookies, &request.headers, ctx)
            .await
        {
            Ok(response) => Ok(response),
            Err(Refused { error, facts }) => {
                crate::observe::audit::sign_in_refused(
                    error.reason(),
                    &facts,
                    ctx.client,
                    ctx.host,
                );
                Err(error)
            }
        };
        // The pending login is over, whatever the outcome: its cookie goes.
        let clear_login = params
            .get("state")
            .map(|state| clear_cookie_header(&self.seal.login_cookie_name(state)));
        CallbackAnswer {
            outcome,
            clear_login,
        }
    }

    async fn finish(
        &self,
        params: &HashMap<String, String>,
        login_cookies: &[(String, String)],
        request: &http::HeaderMap,
        ctx: &RequestContext<'_>,
    ) -> Result<Response<ResponseBody>, Refused> {
        let now = self.clock.now();
        let state = params
            .get("state")
            .ok_or_else(|| GatewayError::sign_in_state(StateProblem::Missing))?;
        let cookie_name = self.seal.login_cookie_name(state);
        let login = login_cookies
            .iter()
            .filter(|(name, _)| *name == cookie_name)
            .find_map(|(_, value)| self.seal.open_login(state, value))
            .ok_or_else(|| GatewayError::sign_in_state(StateProblem::Unknown))?;
        if login.is_expired(now, self.oidc.login_timeout) {
            return Err(state_problem(StateProblem::Expired, &login.return_path));
        }
        // Held until the code is exchanged: kept as used only if the identity provider accepts
        // it, so made-up codes leave nothing behind.
        let reservation = self
            .used_states
            .reserve(state, now)
            .ok_or_else(|| state_problem(StateProblem::Replayed, &login.return_path))?;
        // With `[redis]`, the state is single use across every gateway: a login cookie and
        // callback replayed on another gateway find it claimed.
        let shared_claim = match &self.shared {
            None => None,
            Some(shared) => match shared.claim_state(state, self.oidc.login_timeout).await {
                Ok(true) => Some(SharedClaim {
                    store: shared.clone(),
                    state,
                    kept: false,
                }),
                Ok(false) => return Err(state_problem(StateProblem::Replayed, &login.return_path)),
                Err(_) if shared.config().on_unavailable == OnUnavailable::Refuse => {
                    return Err(GatewayError::SharedStateUnavailable.into());
                }
                Err(_) => {
                    tracing::warn!("Redis unreachable: this login state's single use is checked on this gateway only (redis.on_unavailable = \"allow\")");
                    None
                }
            },
        };
        if let Some(error) = params.get("error") {
            let description = params
                .get("error_description")
                .map(|d| d.lines().next().unwrap_or_default().to_owned())
                .unwrap_or_default();
            return Err(GatewayError::SignInNotCompleted {
                code: error.clone(),
                description,
                return_path: login.return_path.clone(),
            }
            .into());
        }
        let code = params
            .get("code")
            .ok_or_else(|| state_problem(StateProblem::CodeMissing, &login.return_path))?;
        let provider_state = self
            .provider
            .state()
            .ok_or_else(|| unavailable(&login.return_path))?;

        let credentials = self
            .client
            .credentials(&provider_state.endpoints.token_endpoint)
            .map_err(|e| {
                tracing::error!(error = %e, "cannot build client credentials");
                unavailable(&login.return_path)
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
                unavailable(&login.return_path)
            })?;
        // Anything but a JSON object with these fields reads as "no ID token", "no error".
        let token: TokenResponse = serde_json::from_slice(&body).unwrap_or_default();
        if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
            tracing::warn!(status = status.as_u16(), "token endpoint failed");
            self.provider.report_unreachable();
            return Err(unavailable(&login.return_path));
        }
        if !status.is_success() {
            let error = token.error.as_deref().unwrap_or("unknown");
            tracing::warn!(
                status = status.as_u16(),
                error,
                "token endpoint refused the code exchange"
            );
            return Err(GatewayError::CodeExchangeRefused {
                return_path: login.return_path.clone(),
            }
            .into());
        }
        reservation.keep(now.saturating_add(self.oidc.login_timeout.as_secs()));
        if let Some(mut claim) = shared_claim {
            claim.kept = true;
        }
        let id_token = token
            .id_token
            .as_deref()
            .ok_or_else(|| token_refused(Refusal::Malformed, &login.return_path))?;

        let mut verification = self.verify(id_token, &provider_state.keys, &login.nonce, now);
        if matches!(verification.result, Err(Refusal::UnknownKey)) {
            if let Some(fresh) = self.provider.refetch_keys_for_unknown_kid().await {
                verification = self.verify(id_token, &fresh.keys, &login.nonce, now);
            }
        }
        let identity = match verification.result {
            Ok(identity) => identity,
            Err(refusal) => {
                return Err(Refused {
                    error: GatewayError::TokenRefused {
                        refusal,
                        return_path: login.return_path.clone(),
                    },
                    facts: verification.facts,
                });
            }
        };

        let session_id = self
            .seal
            .new_session_id()
            .map_err(|_| unavailable(&login.return_path))?;
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
        session.account_name = identity.account_name.clone();
        session.groups = identity
            .groups
            .iter()
            .filter_map(|g| Guid::parse(g))
            .filter(|g| self.named_groups.contains(g))
            .collect();
        session.groups_overage = identity.groups_overage;
        self.revocations.note_session(&session, now);
        session.mfa = MfaEvidence {
            amr: identity.amr.clone(),
            acrs: identity
                .all_acrs
                .iter()
                .filter(|value| self.named_acrs.contains(value))
                .cloned()
                .collect(),
        };
        // A new session starts with none of Exchange's identity cookies from before it.
        let cookies = self
            .session_started_cookies(&session, request)
            .map_err(|_| unavailable(&login.return_path))?;
        crate::observe::audit::sign_in_succeeded(&identity, ctx.client, ctx.host);
        let mut response = redirect(&login.return_path);
        for cookie in cookies {
            response.headers_mut().append(SET_COOKIE, cookie);
        }
        Ok(response)
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
                account_name_claim: self.oidc.account_name_claim.as_deref(),
            },
        )
    }
}

/// The end of a sign-in: the outcome, and the `Set-Cookie` that clears its pending-login
/// cookie, to be sent whatever the outcome.
pub struct CallbackAnswer {
    pub outcome: Result<Response<ResponseBody>, GatewayError>,
    pub clear_login: Option<HeaderValue>,
}

/// A refused sign-in with what could be read of the token, for the audit event.
struct Refused {
    error: GatewayError,
    facts: id_token::UnverifiedFacts,
}

impl From<GatewayError> for Refused {
    fn from(error: GatewayError) -> Refused {
        Refused {
            error,
            facts: Default::default(),
        }
    }
}

fn state_problem(problem: StateProblem, return_path: &str) -> Refused {
    GatewayError::SignInState {
        problem,
        return_path: return_path.to_owned(),
    }
    .into()
}

fn unavailable(return_path: &str) -> Refused {
    GatewayError::IdentityProviderUnavailable {
        return_path: Some(return_path.to_owned()),
    }
    .into()
}

fn token_refused(refusal: Refusal, return_path: &str) -> Refused {
    GatewayError::TokenRefused {
        refusal,
        return_path: return_path.to_owned(),
    }
    .into()
}

/// The callback's parameters — the query string (`response_mode=query`) or the form body
/// (`form_post`) — and the pending-login cookies the browser sent.
type CallbackRequest = (HashMap<String, String>, Vec<(String, String)>);

fn callback_params(
    parts: &http::request::Parts,
    body: &[u8],
    seal: &SessionSeal,
) -> Option<CallbackRequest> {
    if parts.method != Method::POST && parts.method != Method::GET {
        return None;
    }
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
        add(body);
    }
    Some((params, login_cookies))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::SessionKey;

    fn seal() -> SessionSeal {
        let key = SessionKey::from_bytes(&[9u8; 32]).expect("a 32-byte key");
        SessionSeal::new("__Host-mfagw", vec![key]).expect("a seal")
    }

    fn parts(method: Method, uri: &str, cookie: Option<&str>) -> http::request::Parts {
        let mut builder = http::Request::builder().method(method).uri(uri);
        if let Some(cookie) = cookie {
            builder = builder.header(http::header::COOKIE, cookie);
        }
        builder.body(()).expect("request").into_parts().0
    }

    #[test]
    fn form_post_answer_is_read_from_the_body_and_the_query_does_not_override_it() {
        let seal = seal();
        let login = seal.login_cookie_name("abc");
        let request = parts(
            Method::POST,
            "/_gateway/callback?state=from-query",
            Some(&format!("{login}=sealed; other=1")),
        );
        let (params, logins) =
            callback_params(&request, b"code=c0de&state=abc&session_state=s", &seal)
                .expect("a POST is read");
        assert_eq!(params.get("code").map(String::as_str), Some("c0de"));
        // The first value wins: the query string came first.
        assert_eq!(params.get("state").map(String::as_str), Some("from-query"));
        assert_eq!(logins, vec![(login, "sealed".to_owned())]);
    }

    #[test]
    fn only_get_and_post_are_accepted() {
        let seal = seal();
        assert!(callback_params(
            &parts(Method::GET, "/_gateway/callback?code=x", None),
            b"",
            &seal
        )
        .is_some());
        assert!(
            callback_params(&parts(Method::PUT, "/_gateway/callback", None), b"", &seal).is_none()
        );
    }

    #[test]
    fn pending_login_cookies_read_are_capped() {
        let seal = seal();
        let cookies: Vec<String> = (0..50)
            .map(|i| format!("{}=v", seal.login_cookie_name(&format!("s{i}"))))
            .collect();
        let request = parts(Method::GET, "/_gateway/callback", Some(&cookies.join("; ")));
        let (_, logins) = callback_params(&request, b"", &seal).expect("read");
        assert_eq!(logins.len(), MAX_PENDING_LOGINS * 4);
    }

    #[test]
    fn token_response_reads_the_id_token_or_the_error_and_nothing_else() {
        let ok: TokenResponse = serde_json::from_slice(
            br#"{"token_type":"Bearer","id_token":"e.y.j","access_token":"secret","refresh_token":"r"}"#,
        )
        .expect("parses");
        assert_eq!(ok.id_token.as_deref(), Some("e.y.j"));
        let refused: TokenResponse = serde_json::from_slice(
            br#"{"error":"invalid_grant","error_description":"AADSTS70008"}"#,
        )
        .expect("parses");
        assert_eq!(refused.error.as_deref(), Some("invalid_grant"));
        assert!(refused.id_token.is_none());
        // Not JSON, or JSON of the wrong shape: nothing.
        for body in [&b"<html>"[..], b"[1,2]", br#"{"id_token":5}"#] {
            let parsed: TokenResponse = serde_json::from_slice(body).unwrap_or_default();
            assert!(parsed.id_token.is_none() && parsed.error.is_none());
        }
    }
}
