//! Signing out: of the gateway and of Entra (`/_gateway/logout`, OWA's and ECP's own sign-out
//! pages), and Entra's front-channel logout, which names only the sign-in's `sid`.

use std::net::IpAddr;

use http::header::SET_COOKIE;
use http::{HeaderMap, Response, StatusCode};

use super::{redirect, RequestContext, SignIn, DEFAULT_RETURN};
use crate::body::ResponseBody;
use crate::error::GatewayError;
use crate::pages::Page;
use crate::session::{find_cookie, Session, SharedRevocation};

impl SignIn {
    /// The session in the request when it is live (opens, not expired, not revoked), whatever
    /// any route's policy says: enough to sign out.
    pub fn live_session(&self, headers: &HeaderMap) -> Option<Box<Session>> {
        let session = self.session_of(headers)?;
        let now = self.clock.now();
        self.revocations.note_session(&session, now);
        let live = session.check(now, self.session.idle_timeout).is_ok()
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
        request: &HeaderMap,
        ctx: &RequestContext<'_>,
        how: &'static str,
    ) -> Response<ResponseBody> {
        if let Some(session) = session {
            self.revocations.revoke_session(session, self.clock.now());
            if let Some(shared) = &self.shared {
                shared.publish(SharedRevocation::Session {
                    id: session.id,
                    until: session.expires_at,
                });
            }
            crate::observe::audit::signed_out(
                how,
                &session.oid.to_string(),
                session.upn.as_deref(),
                ctx.client,
                ctx.host,
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
        for cookie in self.session_ended_cookies(request) {
            response.headers_mut().append(SET_COOKIE, cookie);
        }
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
    ) -> Result<Response<ResponseBody>, GatewayError> {
        let sid = uri.query().and_then(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .find(|(k, _)| k == "sid")
                .map(|(_, v)| v.into_owned())
        });
        let Some(sid) = sid.filter(|s| !s.is_empty() && s.len() <= 256) else {
            return Err(GatewayError::BadRequest(
                "front-channel logout without a sid",
            ));
        };
        let now = self.clock.now();
        self.revocations
            .revoke_sid(&sid, now, self.session.lifetime.as_secs());
        if let Some(shared) = &self.shared {
            shared.publish(SharedRevocation::Sid {
                until: now.saturating_add(self.session.lifetime.as_secs()),
                sid: sid.clone(),
                revoked_at: now,
            });
        }
        let session = self.session_of(headers);
        crate::observe::audit::front_channel_logout(
            session.as_ref().map(|s| s.oid.to_string()).as_deref(),
            client,
        );
        let mut response =
            Page::new("Signed out", "You have been signed out.").response(StatusCode::OK);
        // Entra calls this in a hidden frame: with third-party cookies blocked the browser may
        // ignore these, and the revocation above ends the session on its next request anyway.
        if session.is_some() {
            for cookie in self.session_ended_cookies(headers) {
                response.headers_mut().append(SET_COOKIE, cookie);
            }
        }
        Ok(response)
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exchange_sign_out_pages_are_recognised_in_any_case() {
        for path in ["/owa/logoff.owa", "/OWA/LogOff.owa", "/ecp/logoff.aspx"] {
            assert!(is_sign_out_path(path), "{path}");
        }
        for path in [
            "/owa/",
            "/owa/logoff.owa/x",
            "/ecp/logoff.owa",
            "/owa/logoff",
        ] {
            assert!(!is_sign_out_path(path), "{path}");
        }
    }
}
