//! The route's access rule for one request: first the route's source networks (`allow_from`),
//! then `public` passes, `deny` is refused, `mfa` needs a session that satisfies the route's
//! policy — or, on Exchange's own sign-out pages, only a live session, so that signing out
//! never asks the user to sign in first.

use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

use http::header::HeaderValue;
use http::{Request, Response};
use hyper::body::Incoming;

use crate::auth::{self, Admission, DenialReason, RequestContext, RoutePolicy, SignIn};
use crate::body::ResponseBody;
use crate::config::Access;
use crate::error::{GatewayError, Side};
use crate::observe::access::AccessRecord;
use crate::server::{RouteEntry, Snapshot};
use crate::session::{strip_cookies, Session};

/// What the access rule decided.
pub(super) enum Decision {
    /// Forward to Exchange.
    Forward(Admitted),
    /// Answer without Exchange: a redirect to sign in, a 401/440 for a script.
    Answer(Box<Response<ResponseBody>>),
}

/// How a forwarded request was let in.
pub(super) enum Admitted {
    /// A public route (`session` is `None`), or a session that satisfies the route; `reseal`
    /// refreshes the session's idle timer.
    Session {
        reseal: Option<HeaderValue>,
        session: Option<Arc<Session>>,
    },
    /// Exchange's sign-out page with a live session: forwarded (Exchange clears its cookies),
    /// then the gateway and Entra sessions end too.
    SigningOut {
        sign_in: Arc<SignIn>,
        session: Box<Session>,
    },
}

pub(super) fn decide(
    request: &Request<Incoming>,
    entry: &RouteEntry,
    snapshot: &Snapshot,
    ctx: &RequestContext<'_>,
    record: &mut AccessRecord,
) -> Result<Decision, GatewayError> {
    // Before anything else, sign-in included: a client outside the route's networks is never
    // sent to Entra (nor told that the route signs users in), and Exchange never sees it.
    if let Some(networks) = &entry.allow_from {
        if !source_allowed(networks, ctx.client) {
            crate::observe::audit::source_refused(&entry.metrics.name, ctx.client, ctx.host);
            return Err(GatewayError::SourceNotAllowed);
        }
    }
    let (policy, sign_in) = match (entry.access, &entry.policy, &snapshot.sign_in) {
        (Access::Public, _, _) => {
            return Ok(Decision::Forward(Admitted::Session {
                reseal: None,
                session: None,
            }))
        }
        (Access::Deny, _, _) => return Err(GatewayError::Denied),
        (Access::Mfa, Some(policy), Some(sign_in)) => (policy, sign_in),
        // An mfa route without sign-in configured cannot be judged: closed.
        (Access::Mfa, _, _) => return Err(GatewayError::Denied),
    };
    if is_sign_out(request.uri().path()) {
        // Signing out needs only a live session: not the route's freshness or group rules,
        // which would send the user to sign in again instead of out.
        return Ok(match sign_in.live_session(request.headers()) {
            Some(session) => Decision::Forward(Admitted::SigningOut {
                sign_in: sign_in.clone(),
                session,
            }),
            None => Decision::Answer(Box::new(sign_in.end_session(
                None,
                request.headers(),
                ctx,
                "owa_logoff",
            ))),
        });
    }
    // With Redis unreachable and `on_unavailable = "refuse"`, a session cannot be checked
    // against revocations made on other gateways: closed, with a page that says so.
    sign_in.refuse_without_shared_state(request.headers(), "session", ctx)?;
    let navigation = auth::is_navigation(request.method(), request.headers());
    // A page load is always the user's doing; anything else may be OWA's background traffic.
    let activity = navigation
        || !policy
            .background_requests
            .is_background(request.uri().path(), request.uri().query());
    match sign_in.admit(request.headers(), policy, activity) {
        Admission::Allowed { reseal, session } => Ok(Decision::Forward(Admitted::Session {
            reseal,
            session: Some(session),
        })),
        Admission::SignInRequired { step_up, why } => {
            if !navigation && !session_ended(why) {
                // A script's request: a redirect to Entra would only break it. (Returned as the
                // error itself, so the HMA relay can still recognise Entra's cross-site POST.)
                return Err(GatewayError::SignInRequired {
                    status: policy.unauthenticated_status,
                    why,
                });
            }
            let mut response = if navigation {
                record.set_failure(Side::Downstream, format!("sign-in required: {why}"));
                sign_in.start(
                    request.method(),
                    request.uri(),
                    request.headers(),
                    &step_up,
                    ctx,
                )?
            } else {
                // A script's request: a redirect to Entra would only break it.
                let error = GatewayError::SignInRequired {
                    status: policy.unauthenticated_status,
                    why,
                };
                record.set_failure(error.side(), error.to_string());
                error.response()
            };
            if session_ended(why) {
                // The session is over: so is the Exchange session that was opened under it.
                for cookie in sign_in.session_ended_cookies(request.headers()) {
                    response
                        .headers_mut()
                        .append(http::header::SET_COOKIE, cookie);
                }
            }
            Ok(Decision::Answer(Box::new(response)))
        }
        Admission::Denied { session, why } => Err(denied(policy, &session, why, ctx)),
    }
}

/// A signed-in user the route's policy refuses: the audit event, and the error for its page.
pub(super) fn denied(
    policy: &RoutePolicy,
    session: &Session,
    why: DenialReason,
    ctx: &RequestContext<'_>,
) -> GatewayError {
    crate::observe::audit::policy_denied(
        why.as_str(),
        &session.oid.to_string(),
        session.upn.as_deref(),
        &policy.name,
        ctx.client,
    );
    GatewayError::PolicyDenied(why)
}

/// Whether `client` is inside one of `networks`. An IPv4 client reaching a dual-stack socket
/// appears as `::ffff:a.b.c.d`: it is judged as the IPv4 address it is, and as written.
fn source_allowed(networks: &[IpNet], client: IpAddr) -> bool {
    let canonical = client.to_canonical();
    networks
        .iter()
        .any(|net| net.contains(&canonical) || net.contains(&client))
}

/// Whether the request's session has ended (as opposed to never existing, or needing a
/// fresher sign-in): its Exchange cookies must go with it.
fn session_ended(why: auth::SignInReason) -> bool {
    matches!(
        why,
        auth::SignInReason::Expired(_)
            | auth::SignInReason::Revoked
            | auth::SignInReason::TenantNoLongerAllowed
    )
}

/// Exchange never sees the gateway's own cookies.
pub(super) fn strip_gateway_cookies<B>(request: &mut Request<B>, snapshot: &Snapshot) {
    if let Some(sign_in) = &snapshot.sign_in {
        strip_cookies(request.headers_mut(), |name| {
            sign_in.is_gateway_cookie(name)
        });
    }
}

/// Exchange's own sign-out pages, judged on the path as IIS resolves it: `/owa//logoff.owa`,
/// `/owa/%6cogoff.owa` and `/owa/logoff.owa.` all sign out of Exchange, so they must end the
/// gateway session too.
fn is_sign_out(raw_path: &str) -> bool {
    crate::routing::normalize_path(raw_path).is_ok_and(|path| auth::is_sign_out_path(&path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().expect("a network")).collect()
    }

    #[test]
    fn a_client_is_judged_against_every_listed_network() {
        let networks = nets(&["10.0.0.0/8", "2001:db8::/32", "192.0.2.7/32"]);
        for inside in ["10.20.30.40", "2001:db8::1", "192.0.2.7"] {
            assert!(
                source_allowed(&networks, inside.parse().unwrap()),
                "{inside}"
            );
        }
        for outside in ["11.0.0.1", "192.0.2.8", "2001:db9::1", "127.0.0.1"] {
            assert!(
                !source_allowed(&networks, outside.parse().unwrap()),
                "{outside}"
            );
        }
    }

    #[test]
    fn an_ipv4_client_on_a_dual_stack_socket_is_judged_as_ipv4() {
        let networks = nets(&["10.0.0.0/8"]);
        assert!(source_allowed(
            &networks,
            "::ffff:10.1.2.3".parse().unwrap()
        ));
        assert!(!source_allowed(
            &networks,
            "::ffff:11.1.2.3".parse().unwrap()
        ));
    }
}
