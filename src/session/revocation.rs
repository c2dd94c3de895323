//! Sessions ended before their cookie expires: by sign-out (the session id) or by Entra's
//! front-channel logout (Entra's `sid`, the only thing it sends). Kept on this gateway; each
//! entry expires with the longest session it can name, so the list stays small.
//!
//! Every protected request asks; while nothing is revoked that costs one atomic load. Writes
//! are O(1). Front-channel logout is unauthenticated by design (Entra sends only `sid`), so the
//! list is capped: past the cap the entries closest to expiry are dropped first.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use super::{Session, SessionId};

/// Most entries kept (sessions and sids together).
const MAX_ENTRIES: usize = 100_000;

#[derive(Default)]
struct RevokedSet {
    /// Session id → unix second after which the entry can be forgotten.
    sessions: HashMap<SessionId, u64>,
    /// Entra `sid` → (revoked at, forget after): sessions of that sign-in issued before the
    /// revocation are refused; a later sign-in that happens to reuse the sid is not.
    sids: HashMap<String, (u64, u64)>,
}

#[derive(Default)]
pub struct Revocations {
    set: RwLock<RevokedSet>,
    any: AtomicBool,
    writes: AtomicU64,
}

/// Expired entries are swept every this many writes (and whenever the list is full).
const SWEEP_EVERY: u64 = 256;

impl Revocations {
    pub fn new() -> Arc<Revocations> {
        Arc::new(Revocations::default())
    }

    /// Ends one session (sign-out); the entry lives until the session would have expired.
    pub fn revoke_session(&self, session: &Session, now: u64) {
        let (id, until) = (session.id, session.expires_at);
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
        if !self.any.load(Ordering::Acquire) {
            return false;
        }
        let set = match self.set.read() {
            Ok(set) => set,
            Err(poisoned) => poisoned.into_inner(),
        };
        if set.sessions.contains_key(&session.id) {
            return true;
        }
        session.sid.as_ref().is_some_and(|sid| {
            set.sids
                .get(sid)
                .is_some_and(|(revoked_at, _)| session.issued_at <= *revoked_at)
        })
    }

    pub fn len(&self) -> usize {
        let set = match self.set.read() {
            Ok(set) => set,
            Err(poisoned) => poisoned.into_inner(),
        };
        set.sessions.len() + set.sids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn update(&self, now: u64, change: impl FnOnce(&mut RevokedSet)) {
        let mut set = match self.set.write() {
            Ok(set) => set,
            Err(poisoned) => poisoned.into_inner(),
        };
        let sweep = self.writes.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1;
        if sweep || set.sessions.len() + set.sids.len() >= MAX_ENTRIES {
            set.sessions.retain(|_, until| *until > now);
            set.sids.retain(|_, (_, until)| *until > now);
        }
        if set.sessions.len() + set.sids.len() >= MAX_ENTRIES {
            // Still full of live entries: drop the sid entry closest to expiry.
            let oldest = set
                .sids
                .iter()
                .min_by_key(|(_, (_, until))| *until)
                .map(|(sid, _)| sid.clone());
            match oldest {
                Some(sid) => {
                    set.sids.remove(&sid);
                }
                None => {
                    let oldest = set
                        .sessions
                        .iter()
                        .min_by_key(|(_, until)| **until)
                        .map(|(id, _)| *id);
                    if let Some(id) = oldest {
                        set.sessions.remove(&id);
                    }
                }
            }
            tracing::warn!("revocation list full; the entry closest to expiry was dropped");
        }
        change(&mut set);
        self.any.store(true, Ordering::Release);
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
    fn a_session_and_its_sign_in_can_both_be_revoked() {
        let revocations = Revocations::new();
        let alice = session(1, "sid-a", 1000);
        revocations.revoke_session(&alice, 1100);
        revocations.revoke_sid("sid-a", 1100, 3600);
        assert_eq!(revocations.len(), 2);
        assert!(revocations.is_revoked(&alice));
    }

    #[test]
    fn entries_are_forgotten_once_the_sessions_they_name_have_expired() {
        let revocations = Revocations::new();
        let alice = session(1, "sid-a", 1000);
        revocations.revoke_session(&alice, 1100);
        // Alice's session ended at 4600; later sign-outs sweep her entry away.
        for i in 0..SWEEP_EVERY {
            let other = session(2, &format!("sid-{i}"), 9000);
            revocations.revoke_sid(other.sid.as_deref().unwrap_or_default(), 9000, 3600);
        }
        assert!(!revocations.is_revoked(&alice));
        assert_eq!(revocations.len(), SWEEP_EVERY as usize);
    }
}
