//! `/_gateway/callback`: the end of a sign-in. The pending login is matched by `state`, the
//! code exchanged (PKCE), the ID token verified ([`super::id_token`]), and the session sealed
//! into its cookie — or a page that says what went wrong, and an audit event.

use std::collections::HashMap;

use bytes::Bytes;
use http::header::SET_COOKIE;
use http::{Method, Response, StatusCode};
use serde::Deserialize;

use super::authorize::fresh_sign_in_link;
use super::id_token::{self, Expectations, Refusal};
use super::{redirect, RequestContext, SignIn, DEFAULT_RETURN, MAX_PENDING_LOGINS};
use crate::body::ResponseBody;
use crate::pages::Page;
use crate::session::{
    clear_cookie_header, cookies, EntraId, Guid, MfaEvidence, Session, SessionSeal,
};

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
    /// already read (small, within a deadline) by the caller.
    pub async fn callback(
        &self,
        request: http::request::Parts,
        body: Bytes,
        ctx: &RequestContext<'_>,
    ) -> Response<ResponseBody> {
        let Some((params, login_cookies)) = callback_params(&request, &body, &self.seal) else {
            return Page::new(
                "Bad request",
                "This address accepts only the sign-in answer.",
            )
            .response(StatusCode::METHOD_NOT_ALLOWED);
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
        // Held until the code is exchanged: kept as used only if the identity provider accepts
        // it, so made-up codes leave nothing behind.
        let reservation = self
            .used_states
            .reserve(state, now)
            .ok_or_else(|| Failure::state("state_replayed").with_return(&login.return_path))?;
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
        // Anything but a JSON object with these fields reads as "no ID token", "no error".
        let token: TokenResponse = serde_json::from_slice(&body).unwrap_or_default();
        if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
            tracing::warn!(status = status.as_u16(), "token endpoint failed");
            self.provider.report_unreachable();
            return Err(Failure::unavailable(&login.return_path));
        }
        if !status.is_success() {
            let error = token.error.as_deref().unwrap_or("unknown");
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
        reservation.keep(now.saturating_add(self.oidc.login_timeout.as_secs()));
        let id_token = token
            .id_token
            .as_deref()
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
        let cookie = self
            .session_cookie(&session)
            .map_err(|_| Failure::unavailable(&login.return_path))?;
        crate::audit::sign_in_succeeded(&identity, ctx.client, ctx.host);
        let mut response = redirect(&login.return_path);
        response.headers_mut().append(SET_COOKIE, cookie);
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
            },
        )
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
