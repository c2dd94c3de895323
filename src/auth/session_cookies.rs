//! The cookies that start and end a gateway session, in one place, and the binding of
//! Exchange's identity cookies to the session they were set under.
//!
//! Exchange's own identity cookies (`cadata*`, `FedAuth*`, `UC`, the canaries, … — see
//! [`crate::session::exchange`]) live in the same browser and would outlive the gateway
//! session. So every response that starts a session (the callback) or ends one (sign-out,
//! front-channel logout, an expired or revoked session seen on a request) also expires them.
//! And because a browser can still come to hold such cookies that no request of this session
//! earned (a cookie planted from a sibling domain, a late response of an earlier session), the
//! gateway remembers, in its own cookie, under which session Exchange set them: a request of
//! any other session reaches Exchange without them, and its response expires them.

use std::time::Duration;

use http::header::HeaderValue;
use http::HeaderMap;

use super::SignIn;
use crate::session::exchange::expire_exchange_identity_cookies;
use crate::session::{clear_cookie_header, cookie_values, set_cookie_header, SameSite, Session};

impl SignIn {
    /// `Set-Cookie` values for a response that starts `session`: Exchange's identity cookies
    /// and any earlier binding expire first, then the session cookie.
    pub(super) fn session_started_cookies(
        &self,
        session: &Session,
        request: &HeaderMap,
    ) -> Result<Vec<HeaderValue>, ()> {
        let mut cookies = expire_exchange_identity_cookies(request);
        cookies.push(clear_cookie_header(self.seal.binding_cookie_name()));
        cookies.push(self.session_cookie(session)?);
        Ok(cookies)
    }

    /// `Set-Cookie` values for a response that ends the browser's session: the session cookie,
    /// the binding and Exchange's identity cookies all go.
    pub fn session_ended_cookies(&self, request: &HeaderMap) -> Vec<HeaderValue> {
        let mut cookies = expire_exchange_identity_cookies(request);
        cookies.push(clear_cookie_header(self.seal.binding_cookie_name()));
        cookies.push(clear_cookie_header(self.seal.cookie_name()));
        cookies
    }

    /// Whether the Exchange identity cookies of this request were set under `session`: the
    /// binding cookie opens, with the gateway's keys, to this session's id.
    pub fn exchange_cookies_bound_to(&self, request: &HeaderMap, session: &Session) -> bool {
        cookie_values(request, self.seal.binding_cookie_name())
            .take(4)
            .any(|value| self.seal.open_binding(value) == Some(session.id))
    }

    /// The binding cookie for `session`: sent with a response in which Exchange sets an
    /// identity cookie, living as long as the session.
    pub fn exchange_binding_cookie(&self, session: &Session) -> Option<HeaderValue> {
        let value = self.seal.seal_binding(&session.id).ok()?;
        let max_age = session.expires_at.saturating_sub(self.clock.now());
        Some(set_cookie_header(
            self.seal.binding_cookie_name(),
            &value,
            Duration::from_secs(max_age),
            SameSite::Lax,
        ))
    }

    /// `Set-Cookie` values expiring Exchange's identity cookies that `request` presented
    /// (and the ones Exchange sets with fixed names), without touching the gateway session.
    pub fn expire_exchange_cookies(&self, request: &HeaderMap) -> Vec<HeaderValue> {
        expire_exchange_identity_cookies(request)
    }
}
