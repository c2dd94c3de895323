//! Sessions ended before their cookie expires: by sign-out (the session id) or by Entra's
//! front-channel logout (Entra's `sid`, the only thing it sends). Kept on this gateway; each
//! entry expires with the longest session it can name, so the list stays small.
//!
//! Reads happen on every protected request and take no lock (an atomically swapped snapshot);
//! writes — sign-outs — copy the small map.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;

use super::{Session, SessionId};

#[derive(Default, Clone)]
struct RevokedSet {
    /// Session id → unix second after which the entry can be forgotten.
    sessions: HashMap<SessionId, u64>,
    /// Entra `sid` → (revoked at, forget after): sessions of that sign-in issued before the
    /// revocation are refused; a later sign-in that happens to reuse the sid is not.
    sids: HashMap<String, (u64, u64)>,
}

#[derive(Default)]
pub struct Revocations {
    set: ArcSwap<RevokedSet>,
}

impl Revocations {
    pub fn new() -> Arc<Revocations> {
        Arc::new(Revocations::default())
    }

    /// Ends one session (sign-out); the entry lives until the session would have expired.
    pub fn revoke_session(&self, session: &Session, now: u64) {
        let id = session.id;
        let until = session.expires_at;
        self.update(now, |set| {
            set.sessions.insert(id, until);
        });
    }

    /// Ends every session of an Entra sign-in (front-channel logout) issued up to `now`;
    /// `lifetime` bounds how long such a session can live.
    pub fn revoke_sid(&self, sid: &str, now: u64, lifetime: u64) {
        self.update(now, |set| {
            set.sids
                .insert(sid.to_owned(), (now, now.saturating_add(lifetime)));
        });
    }

    pub fn is_revoked(&self, session: &Session) -> bool {
        let set = self.set.load();
        if set.sessions.is_empty() && set.sids.is_empty() {
            return false;
        }
        if set.sessions.contains_key(&session.id) {
            return true;
        }
        match (&session.sid, set.sids.is_empty()) {
            (Some(sid), false) => set
                .sids
                .get(sid)
                .is_some_and(|(revoked_at, _)| session.issued_at <= *revoked_at),
            _ => false,
        }
    }

    pub fn len(&self) -> usize {
        let set = self.set.load();
        set.sessions.len() + set.sids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn update(&self, now: u64, change: impl Fn(&mut RevokedSet)) {
        self.set.rcu(|current| {
            let mut next = RevokedSet::clone(current);
            next.sessions.retain(|_, until| *until > now);
            next.sids.retain(|_, (_, until)| *until > now);
            change(&mut next);
            next
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::EntraId;
    use std::time::Duration;

    fn session(id: u8, sid: &str, issued_at: u64) -> Session {
        let mut s = Session::new(
            SessionId([id; 16]),
            EntraId::parse("6e9f4c2a-8d1b-4f3e-a5c7-1b2d3e4f5a60"),
            EntraId::parse("3f6a8e2c-5b1d-4c7e-9a0f-2d4b6c8e1a35"),
            issued_at,
            issued_at,
            Duration::from_secs(3600),
        );
        s.sid = Some(sid.to_owned());
        s
    }

    #[test]
    fn signed_out_session_is_refused_and_others_are_not() {
        let revocations = Revocations::new();
        let alice = session(1, "sid-a", 1000);
        let bob = session(2, "sid-b", 1000);
        revocations.revoke_session(&alice, 1100);
        assert!(revocations.is_revoked(&alice));
        assert!(!revocations.is_revoked(&bob));
    }

    #[test]
    fn front_channel_logout_by_sid_refuses_earlier_sessions_of_that_sign_in_only() {
        let revocations = Revocations::new();
        let before = session(1, "sid-a", 1000);
        let after = session(2, "sid-a", 1200);
        revocations.revoke_sid("sid-a", 1100, 3600);
        assert!(revocations.is_revoked(&before));
        assert!(!revocations.is_revoked(&after));
    }

    #[test]
    fn entries_are_forgotten_once_the_sessions_they_name_have_expired() {
        let revocations = Revocations::new();
        let alice = session(1, "sid-a", 1000);
        revocations.revoke_session(&alice, 1100);
        revocations.revoke_sid("sid-a", 1100, 3600);
        assert_eq!(revocations.len(), 2);
        // A later write prunes what has expired (alice's session ends at 4600).
        let bob = session(2, "sid-b", 9000);
        revocations.revoke_session(&bob, 9000);
        assert_eq!(revocations.len(), 1);
    }
}
