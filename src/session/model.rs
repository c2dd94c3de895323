//! What a signed-in browser carries: only what access decisions, logs and single sign-on need
//! (DESIGN.md section 4). Everything else from the ID token stays out, because every byte here
//! travels on every request and a cookie over 4 KB breaks sign-in outright.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The idle timeout is measured from `last_seen`, but re-sealing the cookie on every request
/// would cost a `Set-Cookie` per request; once a minute is precise enough for timeouts counted
/// in minutes or hours.
pub const TOUCH_INTERVAL: u64 = 60;

/// A GUID as 16 bytes, in the order its text is written (not Microsoft's mixed-endian layout:
/// only the round trip text → bytes → text matters here). Entra object ids, tenant ids and
/// group ids are GUIDs; 16 bytes instead of 36 characters is what keeps twenty groups in a
/// small cookie.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Guid(pub [u8; 16]);

impl Guid {
    /// Parses `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, any letter case, optionally in braces.
    pub fn parse(text: &str) -> Option<Guid> {
        let text = text
            .strip_prefix('{')
            .and_then(|t| t.strip_suffix('}'))
            .unwrap_or(text);
        let bytes = text.as_bytes();
        if bytes.len() != 36 {
            return None;
        }
        let mut out = [0u8; 16];
        let mut digits = 0usize;
        for (index, &byte) in bytes.iter().enumerate() {
            if matches!(index, 8 | 13 | 18 | 23) {
                if byte != b'-' {
                    return None;
                }
                continue;
            }
            let nibble = match byte {
                b'0'..=b'9' => byte - b'0',
                b'a'..=b'f' => byte - b'a' + 10,
                b'A'..=b'F' => byte - b'A' + 10,
                _ => return None,
            };
            let slot = out.get_mut(digits / 2)?;
            *slot = (*slot << 4) | nibble;
            digits += 1;
        }
        Some(Guid(out))
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, byte) in self.0.iter().enumerate() {
            if matches!(index, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// An Entra identifier (`oid`, `tid`): a GUID in practice, kept as text when it is not one so
/// that an unexpected token shape degrades to a larger cookie rather than a refused sign-in.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EntraId {
    Guid(Guid),
    Text(String),
}

impl EntraId {
    pub fn parse(text: &str) -> EntraId {
        match Guid::parse(text) {
            Some(guid) => EntraId::Guid(guid),
            None => EntraId::Text(text.to_owned()),
        }
    }

    /// Compares with an identifier as written in a token or the configuration: GUIDs in any
    /// letter case are equal.
    pub fn matches(&self, text: &str) -> bool {
        match self {
            EntraId::Guid(guid) => Guid::parse(text) == Some(*guid),
            EntraId::Text(own) => own == text,
        }
    }
}

impl fmt::Display for EntraId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EntraId::Guid(guid) => fmt::Display::fmt(guid, f),
            EntraId::Text(text) => f.write_str(text),
        }
    }
}

impl fmt::Debug for EntraId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

/// 128 random bits naming one sign-in: what logs, audit events and the revocation list refer
/// to. Knowing it grants nothing; the cookie cannot be forged without the keys.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SessionId(pub [u8; 16]);

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({self})")
    }
}

/// How the sign-in proved multifactor authentication: the `amr` values (v1.0 tokens) and the
/// Conditional Access authentication contexts (`acrs`) that satisfied the configured policy.
/// Kept so a route with a stricter rule can be judged without signing in again.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MfaEvidence {
    pub amr: Vec<String>,
    pub acrs: Vec<String>,
}

/// One signed-in browser. Times are unix seconds.
///
/// The field order and types are the cookie's wire format (postcard is not self-describing):
/// any change here must bump [`super::FORMAT_VERSION`] and say in the seal how a cookie of
/// the previous version is read (or, failing that, every browser is signed out once instead of
/// having its cookie misread). Fields are only ever added at the end.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub id: SessionId,
    /// Entra's session id, the only thing front-channel logout sends (`?sid=`).
    pub sid: Option<String>,
    /// Users are keyed by `oid` + `tid`; `preferred_username` can change.
    pub oid: EntraId,
    pub tid: EntraId,
    /// For logs and audit, and for the one decision the UPN is made for: Exchange's forms logon
    /// must name this account (`bind_forms_logon`). Never a key for the user (`oid` is).
    pub upn: Option<String>,
    pub name: Option<String>,
    /// The on-premises SID, for single sign-on modes that present it to Exchange.
    pub onprem_sid: Option<String>,
    /// Only the groups that some route's policy names, never the token's full list.
    pub groups: Vec<Guid>,
    pub mfa: MfaEvidence,
    /// When the user last authenticated at Entra (`auth_time`), for `max_auth_age`.
    pub auth_time: u64,
    pub issued_at: u64,
    /// End of the session's lifetime, whatever the activity.
    pub expires_at: u64,
    /// Last request seen, rounded to [`TOUCH_INTERVAL`], for the idle timeout.
    pub last_seen: u64,
    /// Entra sent the groups overage marker instead of the groups (more than 200): group rules
    /// cannot be judged for this session.
    pub groups_overage: bool,
    /// The on-premises account name (sAMAccountName) from the claim `oidc.account_name_claim`
    /// names, for Exchange's forms logon in `DOMAIN\name` or bare `name` form. Added in format
    /// version 2; cookies of version 1 open with `None`.
    pub account_name: Option<String>,
}

/// Why a session no longer admits the browser; both mean "signed out, sign in again".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionExpired {
    /// `lifetime` has passed since sign-in.
    Lifetime,
    /// No request for `idle_timeout`.
    Idle,
}

impl SessionExpired {
    /// Label for audit events and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionExpired::Lifetime => "session_lifetime",
            SessionExpired::Idle => "session_idle",
        }
    }
}

impl fmt::Display for SessionExpired {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SessionExpired::Lifetime => "the session reached the end of its lifetime",
            SessionExpired::Idle => "the session was idle for longer than the idle timeout",
        })
    }
}

impl std::error::Error for SessionExpired {}

impl Session {
    /// A session for a sign-in that just completed at `now`, living for `lifetime`. The
    /// optional details (`sid`, `upn`, groups, MFA evidence, …) are set on the fields.
    pub fn new(
        id: SessionId,
        oid: EntraId,
        tid: EntraId,
        auth_time: u64,
        now: u64,
        lifetime: Duration,
    ) -> Session {
        Session {
            id,
            sid: None,
            oid,
            tid,
            upn: None,
            name: None,
            onprem_sid: None,
            groups: Vec::new(),
            mfa: MfaEvidence::default(),
            auth_time,
            issued_at: now,
            expires_at: now.saturating_add(lifetime.as_secs()),
            last_seen: now,
            groups_overage: false,
            account_name: None,
        }
    }

    /// Whether the session still admits the browser at `now`. The lifetime is absolute; the
    /// idle timeout counts from the last re-seal, so it is enforced to within a minute.
    pub fn check(&self, now: u64, idle_timeout: Duration) -> Result<(), SessionExpired> {
        if now >= self.expires_at {
            return Err(SessionExpired::Lifetime);
        }
        if now >= self.last_seen.saturating_add(idle_timeout.as_secs()) {
            return Err(SessionExpired::Idle);
        }
        Ok(())
    }

    /// Whether this request should re-seal the cookie with a fresh `last_seen`: at most once
    /// per [`TOUCH_INTERVAL`]. A `last_seen` ahead of `now` (another gateway's clock) waits.
    pub fn needs_touch(&self, now: u64) -> bool {
        now.saturating_sub(self.last_seen) >= TOUCH_INTERVAL
    }

    /// Records activity at `now`; the caller re-seals the cookie afterwards.
    pub fn touch(&mut self, now: u64) {
        self.last_seen = self.last_seen.max(now);
    }

    /// Whether the session belongs to the group with this object id (any letter case).
    pub fn in_group(&self, group: &str) -> bool {
        Guid::parse(group).is_some_and(|group| self.groups.contains(&group))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);
    const T0: u64 = 1_800_000_000;

    fn session() -> Session {
        Session::new(
            SessionId([7; 16]),
            EntraId::parse("00000000-0000-0000-0000-000000000001"),
            EntraId::parse("72f988bf-86f1-41af-91ab-2d7cd011db47"),
            T0,
            T0,
            10 * HOUR,
        )
    }

    #[test]
    fn fresh_session_admits_the_browser() {
        assert_eq!(session().check(T0, HOUR), Ok(()));
        assert_eq!(session().check(T0 + 3599, HOUR), Ok(()));
    }

    #[test]
    fn session_past_its_lifetime_is_expired() {
        let mut s = session();
        // Active all along: the lifetime still ends the session.
        s.touch(T0 + 10 * 3600 - 30);
        assert_eq!(s.check(T0 + 10 * 3600 - 1, HOUR), Ok(()));
        assert_eq!(s.check(T0 + 10 * 3600, HOUR), Err(SessionExpired::Lifetime));
        assert_eq!(s.check(u64::MAX, HOUR), Err(SessionExpired::Lifetime));
    }

    #[test]
    fn idle_session_is_expired_after_idle_timeout() {
        let mut s = session();
        assert_eq!(s.check(T0 + 3600, HOUR), Err(SessionExpired::Idle));
        s.touch(T0 + 1800);
        assert_eq!(s.check(T0 + 3600, HOUR), Ok(()));
        assert_eq!(s.check(T0 + 1800 + 3600, HOUR), Err(SessionExpired::Idle));
    }

    #[test]
    fn session_is_resealed_at_most_once_a_minute() {
        let mut s = session();
        assert!(!s.needs_touch(T0));
        assert!(!s.needs_touch(T0 + 59));
        assert!(s.needs_touch(T0 + 60));
        s.touch(T0 + 60);
        assert!(!s.needs_touch(T0 + 61));
        assert!(!s.needs_touch(T0 + 119));
        assert!(s.needs_touch(T0 + 120));
    }

    #[test]
    fn session_from_a_gateway_with_a_clock_ahead_is_not_resealed_backwards() {
        let mut s = session();
        s.touch(T0 + 600);
        assert!(!s.needs_touch(T0 + 300));
        s.touch(T0 + 300);
        assert_eq!(s.last_seen, T0 + 600);
    }

    #[test]
    fn guid_round_trips_and_ignores_letter_case() {
        let text = "72f988bf-86f1-41af-91ab-2d7cd011db47";
        let guid = Guid::parse(text).unwrap();
        assert_eq!(guid.to_string(), text);
        assert_eq!(Guid::parse(&text.to_uppercase()), Some(guid));
        assert_eq!(Guid::parse(&format!("{{{text}}}")), Some(guid));
        for bad in [
            "",
            "72f988bf86f141af91ab2d7cd011db47",
            "72f988bf-86f1-41af-91ab-2d7cd011db4g",
            "72f988bf-86f1-41af-91ab_2d7cd011db47",
            "72f988bf-86f1-41af-91ab-2d7cd011db47a",
            "72f988bf-86f1-41af-91ab-2d7cd011dé7",
        ] {
            assert_eq!(Guid::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn identifiers_that_are_not_guids_are_kept_as_text() {
        let id = EntraId::parse("not-a-guid");
        assert_eq!(id, EntraId::Text("not-a-guid".into()));
        assert!(id.matches("not-a-guid"));
        let tid = EntraId::parse("72F988BF-86F1-41AF-91AB-2D7CD011DB47");
        assert!(tid.matches("72f988bf-86f1-41af-91ab-2d7cd011db47"));
        assert!(!tid.matches("72f988bf-86f1-41af-91ab-2d7cd011db48"));
    }

    #[test]
    fn group_membership_is_judged_by_object_id() {
        let mut s = session();
        s.groups = vec![Guid::parse("11111111-2222-3333-4444-555555555555").unwrap()];
        assert!(s.in_group("11111111-2222-3333-4444-555555555555"));
        assert!(s.in_group(
            "11111111-2222-3333-4444-555555555555"
                .to_uppercase()
                .as_str()
        ));
        assert!(!s.in_group("11111111-2222-3333-4444-555555555556"));
        assert!(!s.in_group("Domain Admins"));
    }
}
