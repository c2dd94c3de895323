//! Sessions ended before their cookie expires: by sign-out (the session id) or by Entra's
//! front-channel logout (Entra's `sid`, the only thing it sends). Kept on this gateway; each
//! entry expires with the longest session it can name.
//!
//! Front-channel logout is unauthenticated by design — Entra calls it in a hidden frame with
//! only `sid`, often without cookies — so anyone can send it with made-up sids, as many as they
//! like. A single capped list would let such a flood push a genuine revocation out and revive
//! the revoked cookie. So the gateway remembers the sids of the sessions it has issued or
//! served (only a real MFA sign-in produces one), and keeps two stores:
//!
//! - protected: sign-outs of real sessions and front-channel logouts of sids this gateway has
//!   seen. Only real sign-ins can add to it (at most one entry per session and per seen sid),
//!   so it needs no cap and nothing evicts it; entries leave when the sessions they name expire.
//! - unseen sids: front-channel logouts of sids this gateway has not seen — a session issued by
//!   another gateway may still show up with one. Best effort: capped, the entry closest to
//!   expiry dropped first, and it never touches the protected store. A session that shows up
//!   with such a sid moves its entry into the protected store.
//!
//! Every protected request asks; while nothing is revoked that costs one atomic load. Every
//! write is O(log n): expired entries are forgotten through a time index, never by a scan.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::expiring::ExpiringMap;
use super::{Session, SessionId};

/// Most front-channel logouts of sids this gateway has not seen that are kept. They wait for a
/// session issued by another gateway to show up here, and a flood of made-up sids can push them
/// out: that is why no sign-in seen here depends on this list. About 1.5 MB when full of
/// Entra's GUID sids, 4 MB at most (front-channel logout takes sids of up to 256 bytes).
pub const MAX_UNSEEN_SID_REVOCATIONS: usize = 10_000;

/// Most sids of sessions issued or served here that are remembered (about 15 MB when full of
/// Entra's GUID sids): more sign-ins than that within one session lifetime push out the sids
/// closest to expiry, whose front-channel logout then counts as an unseen sid's.
pub const MAX_SEEN_SIDS: usize = 100_000;

/// Longest sid remembered; front-channel logout refuses longer ones.
const MAX_SID_LEN: usize = 256;

/// Expired entries forgotten per write, at most: bounded work under the lock.
const FORGET_PER_WRITE: usize = 16;

/// Sessions of an Entra sign-in revoked at a time: sessions of that sign-in issued up to then
/// are refused; a later sign-in that happens to reuse the sid is not.
type RevokedAt = u64;

#[derive(Default)]
struct Store {
    /// Sids of sessions this gateway issued or served, until the last of them expires.
    seen_sids: ExpiringMap<Arc<str>, ()>,
    /// Signed-out sessions.
    sessions: ExpiringMap<SessionId, ()>,
    /// Front-channel logouts of seen sids.
    sids: ExpiringMap<Arc<str>, RevokedAt>,
    /// Front-channel logouts of unseen sids (best effort, capped).
    unseen_sids: ExpiringMap<Arc<str>, RevokedAt>,
}

impl Store {
    fn forget_expired(&mut self, now: u64) {
        self.seen_sids.forget_expired(now, FORGET_PER_WRITE);
        self.sessions.forget_expired(now, FORGET_PER_WRITE);
        self.sids.forget_expired(now, FORGET_PER_WRITE);
        self.unseen_sids.forget_expired(now, FORGET_PER_WRITE);
    }

    fn any(&self) -> bool {
        !(self.sessions.is_empty() && self.sids.is_empty() && self.unseen_sids.is_empty())
    }
}

/// How many entries each part holds, for the metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RevocationCounts {
    /// Signed-out sessions and front-channel logouts of seen sids.
    pub protected: usize,
    /// Front-channel logouts of unseen sids.
    pub unseen_sids: usize,
    /// Sids of sessions issued or served here.
    pub seen_sids: usize,
}

#[derive(Default)]
pub struct Revocations {
    store: RwLock<Store>,
    /// False while nothing is revoked: the common case costs one load.
    any: AtomicBool,
    /// Unseen-sid revocations dropped because the store was full.
    dropped: AtomicU64,
}

impl Revocations {
    pub fn new() -> Arc<Revocations> {
        Arc::new(Revocations::default())
    }

    /// Remembers the sid of a session issued here or opened from its cookie, until the session
    /// expires, so a front-channel logout of it is protected. A revocation of that sid already
    /// kept as best effort becomes protected.
    pub fn note_session(&self, session: &Session, now: u64) {
        let Some(sid) = session.sid.as_deref() else {
            return;
        };
        if session.expires_at <= now || sid.is_empty() || sid.len() > MAX_SID_LEN {
            return;
        }
        {
            let store = self.read();
            let known = store
                .seen_sids
                .forget_after(sid)
                .is_some_and(|until| until >= session.expires_at);
            if known && !store.unseen_sids.contains(sid) {
                return;
            }
        }
        let mut store = self.write();
        store.forget_expired(now);
        let until = store
            .seen_sids
            .forget_after(sid)
            .map_or(session.expires_at, |until| until.max(session.expires_at));
        if !store.seen_sids.contains(sid) && store.seen_sids.len() >= MAX_SEEN_SIDS {
            store.seen_sids.drop_soonest();
        }
        let sid: Arc<str> = Arc::from(sid);
        store.seen_sids.insert(sid.clone(), (), until);
        if let Some((revoked_at, until)) = store.unseen_sids.remove(&*sid) {
            store.sids.insert(sid, revoked_at, until);
        }
    }

    /// Ends one session (sign-out); the entry lives until the session would have expired.
    pub fn revoke_session(&self, session: &Session, now: u64) {
        self.revoke_session_id(session.id, session.expires_at, now);
    }

    /// Ends the session with this id (signed out here or, through Redis, on another gateway)
    /// until `until`, when it would have expired.
    pub fn revoke_session_id(&self, id: SessionId, until: u64, now: u64) {
        let mut store = self.write();
        store.forget_expired(now);
        if until > now {
            store.sessions.insert(id, (), until);
        }
    }

    /// Ends every session of an Entra sign-in (front-channel logout) issued up to `now`;
    /// `lifetime` bounds how long such a session can live.
    pub fn revoke_sid(&self, sid: &str, now: u64, lifetime: u64) {
        self.revoke_sid_until(sid, now, now.saturating_add(lifetime), now);
    }

    /// Ends every session of an Entra sign-in issued up to `revoked_at`, remembered until
    /// `until` (a front-channel logout here or, through Redis, on another gateway).
    pub fn revoke_sid_until(&self, sid: &str, revoked_at: u64, until: u64, now: u64) {
        if until <= now || sid.is_empty() || sid.len() > MAX_SID_LEN {
            return;
        }
        let mut store = self.write();
        store.forget_expired(now);
        let sid: Arc<str> = Arc::from(sid);
        if store.seen_sids.contains(&*sid) {
            store.unseen_sids.remove(&*sid);
            let revoked_at = store
                .sids
                .get(&*sid)
                .map_or(revoked_at, |at| (*at).max(revoked_at));
            store.sids.insert(sid, revoked_at, until);
        } else {
            if !store.unseen_sids.contains(&*sid)
                && store.unseen_sids.len() >= MAX_UNSEEN_SID_REVOCATIONS
            {
                store.unseen_sids.drop_soonest();
                let dropped = self.dropped.fetch_add(1, Ordering::Relaxed);
                if dropped.is_multiple_of(MAX_UNSEEN_SID_REVOCATIONS as u64) {
                    tracing::warn!(
                        dropped = dropped + 1,
                        "front-channel logouts of sids never seen here fill their list; the oldest are dropped (revocations of sessions seen here are kept)"
                    );
                }
            }
            let revoked_at = store
                .unseen_sids
                .get(&*sid)
                .map_or(revoked_at, |at| (*at).max(revoked_at));
            store.unseen_sids.insert(sid, revoked_at, until);
        }
    }

    pub fn is_revoked(&self, session: &Session) -> bool {
        if !self.any.load(Ordering::Acquire) {
            return false;
        }
        let store = self.read();
        if store.sessions.contains(&session.id) {
            return true;
        }
        session.sid.as_deref().is_some_and(|sid| {
            store
                .sids
                .get(sid)
                .or_else(|| store.unseen_sids.get(sid))
                .is_some_and(|revoked_at| session.issued_at <= *revoked_at)
        })
    }

    pub fn counts(&self) -> RevocationCounts {
        let store = self.read();
        RevocationCounts {
            protected: store.sessions.len() + store.sids.len(),
            unseen_sids: store.unseen_sids.len(),
            seen_sids: store.seen_sids.len(),
        }
    }

    pub fn len(&self) -> usize {
        let counts = self.counts();
        counts.protected + counts.unseen_sids
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn read(&self) -> RwLockReadGuard<'_, Store> {
        match self.store.read() {
            Ok(store) => store,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn write(&self) -> RevocationWrite<'_> {
        let store = match self.store.write() {
            Ok(store) => store,
            Err(poisoned) => poisoned.into_inner(),
        };
        RevocationWrite {
            store,
            any: &self.any,
        }
    }
}

/// The store under its write lock. When the write ends, the one-load flag follows what is
/// left: once every entry has expired, requests stop taking the lock.
struct RevocationWrite<'a> {
    store: RwLockWriteGuard<'a, Store>,
    any: &'a AtomicBool,
}

impl std::ops::Deref for RevocationWrite<'_> {
    type Target = Store;
    fn deref(&self) -> &Store {
        &self.store
    }
}

impl std::ops::DerefMut for RevocationWrite<'_> {
    fn deref_mut(&mut self) -> &mut Store {
        &mut self.store
    }
}

impl Drop for RevocationWrite<'_> {
    fn drop(&mut self) {
        self.any.store(self.store.any(), Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::EntraId;
    use std::time::Duration;

    const HOUR: u64 = 3600;

    fn session(id: u8, sid: &str, issued_at: u64) -> Session {
        let mut s = Session::new(
            SessionId([id; 16]),
            EntraId::parse("6e9f4c2a-8d1b-4f3e-a5c7-1b2d3e4f5a60"),
            EntraId::parse("3f6a8e2c-5b1d-4c7e-9a0f-2d4b6c8e1a35"),
            issued_at,
            issued_at,
            Duration::from_secs(HOUR),
        );
        s.sid = Some(sid.to_owned());
        s
    }

    /// Front-channel logouts an attacker makes up: never a sid of a real sign-in.
    fn flood(revocations: &Revocations, count: usize, now: u64) {
        for i in 0..count {
            revocations.revoke_sid(&format!("made-up-{i}"), now, HOUR);
        }
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
        for seen in [false, true] {
            let revocations = Revocations::new();
            let before = session(1, "sid-a", 1000);
            let after = session(2, "sid-a", 1200);
            if seen {
                revocations.note_session(&before, 1000);
            }
            revocations.revoke_sid("sid-a", 1100, HOUR);
            assert!(revocations.is_revoked(&before), "seen: {seen}");
            assert!(!revocations.is_revoked(&after), "seen: {seen}");
        }
    }

    #[test]
    fn revocations_from_other_gateways_apply_and_an_older_one_never_narrows_a_newer() {
        for seen in [false, true] {
            let revocations = Revocations::new();
            let early = session(1, "sid-a", 1000);
            let later = session(2, "sid-a", 1150);
            if seen {
                revocations.note_session(&early, 1000);
            }
            // A logout at 1200 arrives, then (catch-up, reordered) one at 1100 for the same sid.
            revocations.revoke_sid_until("sid-a", 1200, 1200 + HOUR, 1210);
            revocations.revoke_sid_until("sid-a", 1100, 1100 + HOUR, 1210);
            assert!(revocations.is_revoked(&early), "seen: {seen}");
            assert!(revocations.is_revoked(&later), "seen: {seen}");
        }
        // A signed-out session named by id only, as Redis carries it.
        let revocations = Revocations::new();
        let alice = session(3, "sid-c", 1000);
        revocations.revoke_session_id(alice.id, alice.expires_at, 1100);
        assert!(revocations.is_revoked(&alice));
        // Already expired: nothing to remember.
        let bob = session(4, "sid-d", 1000);
        revocations.revoke_session_id(bob.id, 1050, 1100);
        assert!(!revocations.is_revoked(&bob));
    }

    #[test]
    fn a_session_and_its_sign_in_can_both_be_revoked() {
        let revocations = Revocations::new();
        let alice = session(1, "sid-a", 1000);
        revocations.note_session(&alice, 1000);
        revocations.revoke_session(&alice, 1100);
        revocations.revoke_sid("sid-a", 1100, HOUR);
        assert_eq!(revocations.counts().protected, 2);
        assert!(revocations.is_revoked(&alice));
    }

    #[test]
    fn a_flood_of_made_up_sids_never_undoes_the_logout_of_a_seen_sign_in() {
        let revocations = Revocations::new();
        let alice = session(1, "sid-alice", 1000);
        revocations.note_session(&alice, 1000);
        revocations.revoke_sid("sid-alice", 1100, HOUR);
        flood(&revocations, 3 * MAX_UNSEEN_SID_REVOCATIONS, 1200);
        assert!(revocations.is_revoked(&alice));
        let counts = revocations.counts();
        assert_eq!(counts.protected, 1);
        assert_eq!(counts.unseen_sids, MAX_UNSEEN_SID_REVOCATIONS);
    }

    #[test]
    fn a_flood_of_made_up_sids_never_undoes_a_sign_out() {
        let revocations = Revocations::new();
        let alice = session(1, "sid-alice", 1000);
        revocations.revoke_session(&alice, 1100);
        flood(&revocations, 2 * MAX_UNSEEN_SID_REVOCATIONS, 1200);
        assert!(revocations.is_revoked(&alice));
    }

    #[test]
    fn unseen_sid_logouts_are_capped_and_the_oldest_go_first() {
        let revocations = Revocations::new();
        let early = session(1, "sid-from-another-gateway", 1000);
        revocations.revoke_sid("sid-from-another-gateway", 1100, HOUR);
        assert!(revocations.is_revoked(&early));
        flood(&revocations, MAX_UNSEEN_SID_REVOCATIONS, 1200);
        // Best effort: a session never seen here is not protected from the flood.
        assert!(!revocations.is_revoked(&early));
        assert_eq!(revocations.counts().unseen_sids, MAX_UNSEEN_SID_REVOCATIONS);
    }

    #[test]
    fn a_session_that_shows_up_after_its_logout_makes_the_logout_protected() {
        let revocations = Revocations::new();
        let from_elsewhere = session(1, "sid-b", 1000);
        revocations.revoke_sid("sid-b", 1100, HOUR);
        // The session issued by another gateway comes here with its cookie.
        revocations.note_session(&from_elsewhere, 1150);
        assert_eq!(revocations.counts().protected, 1);
        assert_eq!(revocations.counts().unseen_sids, 0);
        flood(&revocations, 2 * MAX_UNSEEN_SID_REVOCATIONS, 1200);
        assert!(revocations.is_revoked(&from_elsewhere));
    }

    #[test]
    fn seen_sids_are_capped_and_the_soonest_to_expire_go_first() {
        let revocations = Revocations::new();
        for i in 0..MAX_SEEN_SIDS + 5 {
            let mut s = session(1, &format!("sid-{i}"), 1000);
            s.expires_at = 10_000 + i as u64;
            revocations.note_session(&s, 1000);
        }
        assert_eq!(revocations.counts().seen_sids, MAX_SEEN_SIDS);
        // sid-0 was dropped: its logout is best effort; the newest is still protected.
        revocations.revoke_sid("sid-0", 1100, HOUR);
        revocations.revoke_sid(&format!("sid-{}", MAX_SEEN_SIDS + 4), 1100, HOUR);
        let counts = revocations.counts();
        assert_eq!((counts.protected, counts.unseen_sids), (1, 1));
    }

    #[test]
    fn entries_are_forgotten_once_the_sessions_they_name_have_expired() {
        let revocations = Revocations::new();
        let alice = session(1, "sid-a", 1000);
        let bob = session(2, "sid-b", 1000);
        revocations.note_session(&alice, 1000);
        revocations.revoke_session(&alice, 1100);
        revocations.revoke_sid("sid-a", 1100, HOUR);
        revocations.revoke_sid("sid-b", 1100, HOUR);
        assert!(revocations.is_revoked(&bob));
        assert_eq!(revocations.len(), 3);
        // Every session these entries name ended by 4700; the next writes forget them.
        let carol = session(3, "sid-c", 9000);
        revocations.revoke_sid("sid-c", 9000, HOUR);
        assert_eq!(revocations.len(), 1);
        assert_eq!(revocations.counts().seen_sids, 0);
        revocations.note_session(&carol, 9000);
        assert!(revocations.is_revoked(&carol));
    }

    #[test]
    fn once_every_entry_has_expired_requests_stop_taking_the_lock() {
        let revocations = Revocations::new();
        let alice = session(1, "sid-a", 1000);
        revocations.revoke_session(&alice, 1100);
        assert!(revocations.any.load(Ordering::Acquire));
        // A sign-out of an already-ended session adds nothing but sweeps.
        revocations.revoke_session(&session(2, "sid-b", 1000), 9000);
        assert!(revocations.is_empty());
        assert!(!revocations.any.load(Ordering::Acquire));
    }

    #[test]
    fn sids_of_ended_or_sidless_sessions_are_not_remembered() {
        let revocations = Revocations::new();
        revocations.note_session(&session(1, "sid-a", 1000), 1000 + HOUR);
        let mut without = session(2, "x", 1000);
        without.sid = None;
        revocations.note_session(&without, 1000);
        revocations.note_session(&session(3, &"s".repeat(MAX_SID_LEN + 1), 1000), 1000);
        assert_eq!(revocations.counts().seen_sids, 0);
    }
}
