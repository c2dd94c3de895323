//! The access decision of an `access = "mfa"` route, as a pure function: the route's policy,
//! what the request's session cookie opened to, and the time in; a [`Verdict`] out. No I/O, no
//! clock, no shared state — the caller looks up revocation and opens the cookie — so every
//! rule is tested here with fixed times, and a new rule has one place to go.
//!
//! The order matters and is part of the contract: a session that is not live (missing,
//! unreadable, expired, revoked, of a tenant no longer allowed) signs in again before anything
//! else; then the route's freshness (`max_auth_age`) and authentication context (`acrs`) ask
//! for a step-up sign-in; only a fresh, strong enough session is judged by group membership,
//! which no new sign-in can change, so it is refused outright.

use std::fmt;
use std::time::Duration;

use http::StatusCode;

use crate::activity::BackgroundRequests;
use crate::session::{EntraId, Guid, Session, SessionExpired};

/// What a route requires of a session, beyond the global `[mfa]` rules.
#[derive(Debug, Clone)]
pub struct RoutePolicy {
    /// `host/path` of the route, for audit events and metrics.
    pub name: String,
    pub max_auth_age: Duration,
    pub acrs_any_of: Vec<String>,
    /// Entra group object ids; the session must carry one of them.
    pub groups_any_of: Vec<Guid>,
    /// The answer to a script (not a page load) without a usable session: 401, or 440 on OWA.
    pub unauthenticated_status: StatusCode,
    /// Requests that do not move the idle timeout: Exchange's list and the route's
    /// `background_requests`.
    pub background_requests: BackgroundRequests,
}

/// How a request without a usable session continues at Entra.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepUp {
    /// Ask Entra for a fresh authentication (`prompt=login`, `max_age`).
    pub max_age: Option<Duration>,
    /// Ask Entra for a fresh authentication without an age limit (`prompt=login`): after a
    /// sign-in was refused, so Entra does not answer at once from the same session.
    pub prompt_login: bool,
    /// Ask for this Conditional Access authentication context.
    pub acrs: Option<String>,
}

/// What the request's session cookie gave.
#[derive(Debug, Clone, Copy)]
pub enum SessionState<'a> {
    /// No session cookie.
    Missing,
    /// A cookie that does not open with the gateway's keys: tampered, foreign, truncated.
    Unreadable,
    /// A session, and whether a sign-out or front-channel logout revoked it.
    Opened { session: &'a Session, revoked: bool },
}

/// The rules every session follows, from `[session]` and `[oidc]`.
#[derive(Debug, Clone, Copy)]
pub struct SessionRules<'a> {
    pub idle_timeout: Duration,
    pub allowed_tenants: &'a [EntraId],
}

/// The decision for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Let the request through; `touch`: re-seal the cookie to move the idle timer.
    Allow { touch: bool },
    /// Sign in (again, or with a step-up) first.
    SignIn { step_up: StepUp, why: SignInReason },
    /// Signed in, but the route's policy refuses this user.
    Deny(DenialReason),
}

/// Why a request must sign in first. [`SignInReason::as_str`] is the label in logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignInReason {
    NoSession,
    SessionUnreadable,
    Expired(SessionExpired),
    Revoked,
    TenantNoLongerAllowed,
    /// The route's `max_auth_age` is shorter than the sign-in's age.
    AuthTooOldForRoute,
    /// The route's `acrs_any_of` names a context the session does not carry.
    AuthContextMissing,
}

impl SignInReason {
    pub fn as_str(self) -> &'static str {
        match self {
            SignInReason::NoSession => "no_session",
            SignInReason::SessionUnreadable => "session_unreadable",
            SignInReason::Expired(expired) => expired.as_str(),
            SignInReason::Revoked => "session_revoked",
            SignInReason::TenantNoLongerAllowed => "tenant_no_longer_allowed",
            SignInReason::AuthTooOldForRoute => "auth_too_old_for_route",
            SignInReason::AuthContextMissing => "auth_context_missing",
        }
    }
}

impl fmt::Display for SignInReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a signed-in user is refused by a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenialReason {
    /// Not a member of any group the route names.
    NotInGroup,
    /// Entra did not list the groups (more than fit in a token): membership cannot be judged.
    GroupsOverage,
}

impl DenialReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DenialReason::NotInGroup => "not_in_group",
            DenialReason::GroupsOverage => "groups_overage",
        }
    }
}

impl fmt::Display for DenialReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Judges one request's session against a route at `now` (unix seconds).
pub fn decide(
    route: &RoutePolicy,
    state: SessionState<'_>,
    rules: SessionRules<'_>,
    now: u64,
) -> Verdict {
    let session = match state {
        SessionState::Missing => return sign_in(SignInReason::NoSession),
        SessionState::Unreadable => return sign_in(SignInReason::SessionUnreadable),
        SessionState::Opened { session, revoked } => {
            if let Err(expired) = session.check(now, rules.idle_timeout) {
                return sign_in(SignInReason::Expired(expired));
            }
            if revoked {
                return sign_in(SignInReason::Revoked);
            }
            session
        }
    };
    if !rules.allowed_tenants.contains(&session.tid) {
        return sign_in(SignInReason::TenantNoLongerAllowed);
    }
    let age = now.saturating_sub(session.auth_time);
    if age > route.max_auth_age.as_secs() {
        return Verdict::SignIn {
            step_up: StepUp {
                max_age: Some(route.max_auth_age),
                acrs: route.acrs_any_of.first().cloned(),
                prompt_login: true,
            },
            why: SignInReason::AuthTooOldForRoute,
        };
    }
    if !route.acrs_any_of.is_empty()
        && !session
            .mfa
            .acrs
            .iter()
            .any(|have| route.acrs_any_of.contains(have))
    {
        return Verdict::SignIn {
            step_up: StepUp {
                max_age: None,
                acrs: route.acrs_any_of.first().cloned(),
                prompt_login: false,
            },
            why: SignInReason::AuthContextMissing,
        };
    }
    if !route.groups_any_of.is_empty()
        && !route
            .groups_any_of
            .iter()
            .any(|g| session.groups.contains(g))
    {
        // With the overage marker Entra did not list the groups: refuse and say why rather
        // than guess.
        return Verdict::Deny(if session.groups_overage {
            DenialReason::GroupsOverage
        } else {
            DenialReason::NotInGroup
        });
    }
    Verdict::Allow {
        touch: session.needs_touch(now),
    }
}

fn sign_in(why: SignInReason) -> Verdict {
    Verdict::SignIn {
        step_up: StepUp::default(),
        why,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::{MfaEvidence, SessionId, TOUCH_INTERVAL};

    const T0: u64 = 1_800_000_000;
    const HOUR: u64 = 3600;
    const TENANT: &str = "3f2a9b1c-5d4e-4f60-8a7b-1c2d3e4f5a6b";
    const OTHER_TENANT: &str = "9a8b7c6d-5e4f-4a3b-9c2d-1e0f9a8b7c6d";
    const ADMINS: &str = "a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d";

    fn route() -> RoutePolicy {
        RoutePolicy {
            name: "mail.contoso.com/owa".into(),
            max_auth_age: Duration::from_secs(12 * HOUR),
            acrs_any_of: Vec::new(),
            groups_any_of: Vec::new(),
            unauthenticated_status: StatusCode::UNAUTHORIZED,
            background_requests: BackgroundRequests::default(),
        }
    }

    /// A session signed in with MFA at `T0`, for ten hours, idle timeout one hour.
    fn session() -> Session {
        let mut session = Session::new(
            SessionId([7; 16]),
            EntraId::parse("6e9f4c2a-8d1b-4f3e-a5c7-1b2d3e4f5a60"),
            EntraId::parse(TENANT),
            T0,
            T0,
            Duration::from_secs(10 * HOUR),
        );
        session.mfa = MfaEvidence {
            amr: vec!["pwd".into(), "mfa".into()],
            acrs: Vec::new(),
        };
        session
    }

    fn judge(route: &RoutePolicy, session: &Session, revoked: bool, now: u64) -> Verdict {
        let tenants = [EntraId::parse(TENANT)];
        decide(
            route,
            SessionState::Opened { session, revoked },
            SessionRules {
                idle_timeout: Duration::from_secs(HOUR),
                allowed_tenants: &tenants,
            },
            now,
        )
    }

    fn reason(verdict: &Verdict) -> &'static str {
        match verdict {
            Verdict::Allow { .. } => "allowed",
            Verdict::SignIn { why, .. } => why.as_str(),
            Verdict::Deny(why) => why.as_str(),
        }
    }

    #[test]
    fn a_live_mfa_session_is_let_through() {
        assert_eq!(
            judge(&route(), &session(), false, T0 + 10),
            Verdict::Allow { touch: false }
        );
    }

    #[test]
    fn activity_after_the_touch_interval_re_seals_the_cookie() {
        assert_eq!(
            judge(&route(), &session(), false, T0 + TOUCH_INTERVAL),
            Verdict::Allow { touch: true }
        );
    }

    #[test]
    fn no_cookie_and_an_unreadable_cookie_sign_in_without_a_step_up() {
        let tenants = [EntraId::parse(TENANT)];
        let rules = SessionRules {
            idle_timeout: Duration::from_secs(HOUR),
            allowed_tenants: &tenants,
        };
        for (state, expected) in [
            (SessionState::Missing, "no_session"),
            (SessionState::Unreadable, "session_unreadable"),
        ] {
            let verdict = decide(&route(), state, rules, T0);
            assert_eq!(reason(&verdict), expected);
            assert!(
                matches!(verdict, Verdict::SignIn { step_up, .. } if step_up == StepUp::default())
            );
        }
    }

    #[test]
    fn expired_idle_revoked_and_foreign_tenant_sessions_sign_in_again() {
        let route = route();
        assert_eq!(
            reason(&judge(&route, &session(), false, T0 + 10 * HOUR)),
            "session_lifetime"
        );
        assert_eq!(
            reason(&judge(&route, &session(), false, T0 + HOUR)),
            "session_idle"
        );
        assert_eq!(
            reason(&judge(&route, &session(), true, T0 + 10)),
            "session_revoked"
        );
        let mut foreign = session();
        foreign.tid = EntraId::parse(OTHER_TENANT);
        assert_eq!(
            reason(&judge(&route, &foreign, false, T0 + 10)),
            "tenant_no_longer_allowed"
        );
    }

    #[test]
    fn expiry_is_judged_before_revocation() {
        // An expired session is reported as expired even when it was also revoked: the log
        // says what the user would see next time.
        assert_eq!(
            reason(&judge(&route(), &session(), true, T0 + 10 * HOUR)),
            "session_lifetime"
        );
    }

    #[test]
    fn a_sign_in_too_old_for_the_route_steps_up_with_prompt_login_and_max_age() {
        let mut ecp = route();
        ecp.max_auth_age = Duration::from_secs(HOUR);
        ecp.acrs_any_of = vec!["c2".into()];
        let mut fresh = session();
        fresh.mfa.acrs = vec!["c2".into()];
        // 59 minutes: fine (touched at 50 so the idle timer does not run out).
        fresh.touch(T0 + 50 * 60);
        assert!(matches!(
            judge(&ecp, &fresh, false, T0 + 59 * 60),
            Verdict::Allow { .. }
        ));
        let verdict = judge(&ecp, &fresh, false, T0 + 61 * 60);
        assert_eq!(
            verdict,
            Verdict::SignIn {
                step_up: StepUp {
                    max_age: Some(Duration::from_secs(HOUR)),
                    prompt_login: true,
                    acrs: Some("c2".into()),
                },
                why: SignInReason::AuthTooOldForRoute,
            }
        );
    }

    #[test]
    fn a_route_authentication_context_the_session_lacks_asks_for_it() {
        let mut route = route();
        route.acrs_any_of = vec!["c3".into(), "c4".into()];
        let verdict = judge(&route, &session(), false, T0 + 10);
        assert_eq!(
            verdict,
            Verdict::SignIn {
                step_up: StepUp {
                    max_age: None,
                    prompt_login: false,
                    acrs: Some("c3".into()),
                },
                why: SignInReason::AuthContextMissing,
            }
        );
        let mut stepped_up = session();
        stepped_up.mfa.acrs = vec!["c4".into()];
        assert!(matches!(
            judge(&route, &stepped_up, false, T0 + 10),
            Verdict::Allow { .. }
        ));
    }

    #[test]
    fn group_rules_refuse_non_members_and_say_when_entra_did_not_list_the_groups() {
        let mut route = route();
        route.groups_any_of = vec![Guid::parse(&ADMINS.to_uppercase()).expect("a GUID")];
        assert_eq!(
            judge(&route, &session(), false, T0 + 10),
            Verdict::Deny(DenialReason::NotInGroup)
        );
        let mut overage = session();
        overage.groups_overage = true;
        assert_eq!(
            judge(&route, &overage, false, T0 + 10),
            Verdict::Deny(DenialReason::GroupsOverage)
        );
        let mut member = session();
        member.groups = vec![Guid::parse(ADMINS).expect("a GUID")];
        assert!(matches!(
            judge(&route, &member, false, T0 + 10),
            Verdict::Allow { .. }
        ));
    }

    #[test]
    fn freshness_is_asked_for_before_group_membership_is_judged() {
        // A non-member whose sign-in is too old is sent to sign in, not refused: after a fresh
        // sign-in Entra may list new groups.
        let mut route = route();
        route.max_auth_age = Duration::from_secs(60);
        route.groups_any_of = vec![Guid::parse(ADMINS).expect("a GUID")];
        assert_eq!(
            reason(&judge(&route, &session(), false, T0 + 120)),
            "auth_too_old_for_route"
        );
    }
}
