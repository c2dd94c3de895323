//! Exchange's identity cookies on a forwarded request of a session: they reach Exchange only
//! when they were set under this session ([`crate::auth::SignIn::exchange_cookies_bound_to`]);
//! otherwise they are taken out of the request and expired by its response. When Exchange
//! sets identity cookies under a session that has no binding yet, the response binds them.

use http::header::{HeaderValue, SET_COOKIE};
use http::{HeaderMap, Request, Response};
use hyper::body::Incoming;

use crate::auth::SignIn;
use crate::body::ResponseBody;
use crate::session::exchange::{
    carries_exchange_identity_cookie, is_exchange_identity_cookie, sets_exchange_identity_cookie,
};
use crate::session::{strip_cookies, Session};

/// What the request said about the binding, for its response.
pub(super) struct ExchangeCookies {
    /// The binding names this session.
    bound: bool,
    /// Identity cookies of another session (or none) were presented and taken out: their
    /// expiries, to go before Exchange's own `Set-Cookie` headers.
    expire: Vec<HeaderValue>,
}

impl ExchangeCookies {
    /// Judges the request's Exchange identity cookies against `session`, taking them out of
    /// the request when they were not set under it.
    pub(super) fn check(
        request: &mut Request<Incoming>,
        sign_in: &SignIn,
        session: &Session,
    ) -> ExchangeCookies {
        let bound = sign_in.exchange_cookies_bound_to(request.headers(), session);
        let mut expire = Vec::new();
        if !bound && carries_exchange_identity_cookie(request.headers()) {
            expire = sign_in.expire_exchange_cookies(request.headers());
            strip_cookies(request.headers_mut(), is_exchange_identity_cookie);
        }
        ExchangeCookies { bound, expire }
    }

    /// Adds to Exchange's response: the expiries of cookies taken out of the request (before
    /// Exchange's own `Set-Cookie` headers, so a cookie Exchange sets anew wins), and the
    /// binding when Exchange set identity cookies under a session not yet bound.
    pub(super) fn answer(
        self,
        response: &mut Response<ResponseBody>,
        sign_in: &SignIn,
        session: &Session,
    ) {
        let headers = response.headers_mut();
        let sets_identity = headers
            .get_all(SET_COOKIE)
            .iter()
            .any(sets_exchange_identity_cookie);
        if !self.expire.is_empty() {
            put_first(headers, self.expire);
        }
        if sets_identity && !self.bound {
            if let Some(binding) = sign_in.exchange_binding_cookie(session) {
                headers.append(SET_COOKIE, binding);
            }
        }
    }
}

/// `first`, then the `Set-Cookie` headers already there, in their order.
fn put_first(headers: &mut HeaderMap, first: Vec<HeaderValue>) {
    let existing: Vec<HeaderValue> = headers.get_all(SET_COOKIE).iter().cloned().collect();
    headers.remove(SET_COOKIE);
    for value in first.into_iter().chain(existing) {
        headers.append(SET_COOKIE, value);
    }
}
