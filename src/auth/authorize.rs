//! The start of a sign-in: a pending-login cookie and the redirect to Entra's authorization
//! endpoint — for top-level page loads only; scripts get 401/440.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use http::header::SET_COOKIE;
use http::{HeaderMap, Method, Response};
use openidconnect::PkceCodeChallenge;
use ring::rand::SecureRandom;

use super::{redirect, RequestContext, SignIn, StepUp, DEFAULT_RETURN, MAX_PENDING_LOGINS};
use crate::body::ResponseBody;
use crate::config::ResponseMode;
use crate::error::GatewayError;
use crate::session::{clear_cookie_header, cookies, set_cookie_header, LoginTransaction, SameSite};

impl SignIn {
    /// Starts a sign-in for a top-level navigation: a pending-login cookie and a redirect to
    /// Entra's authorization endpoint.
    pub fn start(
        &self,
        method: &Method,
        uri: &http::Uri,
        headers: &HeaderMap,
        step_up: &StepUp,
        ctx: &RequestContext<'_>,
    ) -> Result<Response<ResponseBody>, GatewayError> {
        self.refuse_without_shared_state(headers, "sign_in", ctx)?;
        let Some(state) = self
            .provider
            .state()
            .filter(|_| self.provider.is_reachable())
        else {
            return Err(GatewayError::IdentityProviderUnavailable { return_path: None });
        };
        let return_path = if uri.path().eq_ignore_ascii_case("/_gateway/sign-in") {
            sign_in_return_path(uri)
        } else if *method == Method::GET || *method == Method::HEAD {
            safe_return_path(uri.path_and_query().map(|pq| pq.as_str()))
        } else {
            DEFAULT_RETURN.to_owned()
        };
        let (Ok(login_state), Ok(nonce)) = (self.random_token(), self.random_token()) else {
            return Err(GatewayError::Internal("random numbers for a sign-in"));
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
            return Err(GatewayError::Internal("sealing a pending sign-in"));
        };

        let mut url = match url::Url::parse(&state.endpoints.authorization_endpoint) {
            Ok(url) => url,
            Err(_) => return Err(GatewayError::IdentityProviderUnavailable { return_path: None }),
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
        Ok(response)
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

    fn random_token(&self) -> Result<String, ()> {
        let mut bytes = [0u8; 24];
        self.rng.fill(&mut bytes).map_err(|_| ())?;
        Ok(URL_SAFE_NO_PAD.encode(bytes))
    }
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

/// The return path named by `/_gateway/sign-in?return=…`, checked like any return path.
pub fn sign_in_return_path(uri: &http::Uri) -> String {
    let requested = uri.query().and_then(|q| {
        url::form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "return")
            .map(|(_, v)| v.into_owned())
    });
    safe_return_path(requested.as_deref())
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
    use http::header::{HeaderName, HeaderValue, ACCEPT};

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        map
    }

    #[test]
    fn return_path_must_be_a_relative_path_on_this_host() {
        for good in ["/owa/", "/owa/?path=/mail/inbox", "/ecp/?rfr=owa"] {
            assert_eq!(safe_return_path(Some(good)), good);
        }
        for bad in [
            "//evil.example/owa/",
            "/\\evil.example",
            "https://evil.example/",
            "owa/",
            "/owa/\r\nSet-Cookie: x=y",
            "/owa/\\..\\ews",
            "",
        ] {
            assert_eq!(safe_return_path(Some(bad)), DEFAULT_RETURN, "{bad:?}");
        }
        assert_eq!(safe_return_path(None), DEFAULT_RETURN);
        let long = format!("/owa/{}", "a".repeat(2100));
        assert_eq!(safe_return_path(Some(&long)), DEFAULT_RETURN);
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
            assert_eq!(
                safe_return_path(Some(hostile)),
                DEFAULT_RETURN,
                "{hostile:?}"
            );
        }
        assert_eq!(safe_return_path(Some("/owa/ééé/日本")), "/owa/ééé/日本");
        let uri: http::Uri = "/_gateway/sign-in?return=/owa/%C2%85".parse().unwrap();
        assert_eq!(sign_in_return_path(&uri), DEFAULT_RETURN);
    }

    #[test]
    fn sign_in_link_returns_only_to_a_safe_path() {
        let uri: http::Uri = "/_gateway/sign-in?return=%2Fecp%2F%3Frfr%3Dowa"
            .parse()
            .unwrap();
        assert_eq!(sign_in_return_path(&uri), "/ecp/?rfr=owa");
        let uri: http::Uri = "/_gateway/sign-in?return=%2F%2Fevil.example"
            .parse()
            .unwrap();
        assert_eq!(sign_in_return_path(&uri), DEFAULT_RETURN);
        let uri: http::Uri = "/_gateway/sign-in".parse().unwrap();
        assert_eq!(sign_in_return_path(&uri), DEFAULT_RETURN);
        // The link the refusal pages offer comes back through the same check.
        let link = crate::pages::sign_in_again_link("/owa/?a=1&b=2");
        let uri: http::Uri = link.parse().unwrap();
        assert_eq!(sign_in_return_path(&uri), "/owa/?a=1&b=2");
    }

    #[test]
    fn only_top_level_page_loads_are_navigations() {
        let navigate = headers(&[("sec-fetch-mode", "navigate")]);
        assert!(is_navigation(&Method::GET, &navigate));
        assert!(!is_navigation(&Method::POST, &navigate));
        let xhr = headers(&[
            ("sec-fetch-mode", "navigate"),
            ("x-requested-with", "XMLHttpRequest"),
        ]);
        assert!(!is_navigation(&Method::GET, &xhr));
        let fetch = headers(&[("sec-fetch-mode", "cors")]);
        assert!(!is_navigation(&Method::GET, &fetch));
        // Browsers without Fetch Metadata: judged by Accept.
        let mut old = HeaderMap::new();
        old.insert(ACCEPT, HeaderValue::from_static("text/html,*/*"));
        assert!(is_navigation(&Method::GET, &old));
        old.insert(ACCEPT, HeaderValue::from_static("application/json"));
        assert!(!is_navigation(&Method::GET, &old));
    }
}
