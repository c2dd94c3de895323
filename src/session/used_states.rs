//! The login `state`s this gateway has finished a sign-in with: each is single use.
//!
//! Anyone can start a sign-in (any page load without a session does) and post its callback
//! with a made-up code, as often as they like. So a state is only *reserved* while its code is
//! exchanged — a second callback with the same state meanwhile is a replay — and remembered as
//! used only when the identity provider accepted the code. A callback whose code was refused
//! leaves nothing behind. What is remembered is capped, the oldest dropped first, and every
//! operation is O(log n).

use std::collections::HashSet;
use std::sync::{Mutex, MutexGuard};

use super::expiring::ExpiringMap;

/// Most used states remembered: more sign-ins than that within `oidc.login_timeout` push out
/// the oldest, whose code the identity provider would refuse anyway (codes are single use).
/// About 6 MB when full.
pub const MAX_USED_STATES: usize = 50_000;

/// Expired states forgotten per callback, at most.
const FORGET_PER_WRITE: usize = 16;

#[derive(Default)]
struct Ledger {
    /// State → remembered until (unix seconds).
    used: ExpiringMap<Box<str>, ()>,
    /// States whose code is being exchanged now; at most one per callback in flight.
    exchanging: HashSet<Box<str>>,
}

#[derive(Default)]
pub struct UsedStates {
    ledger: Mutex<Ledger>,
}

impl UsedStates {
    /// Reserves `state` for one code exchange; `None` when it was used already or another
    /// callback is exchanging its code right now.
    pub fn reserve(&self, state: &str, now: u64) -> Option<StateReservation<'_>> {
        let mut ledger = self.lock();
        ledger.used.forget_expired(now, FORGET_PER_WRITE);
        if ledger.used.contains(state) || !ledger.exchanging.insert(Box::from(state)) {
            return None;
        }
        Some(StateReservation {
            states: self,
            state: Box::from(state),
            kept: false,
        })
    }

    /// Used states remembered now.
    pub fn len(&self) -> usize {
        self.lock().used.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reservations held now (code exchanges in flight).
    #[cfg(test)]
    fn exchanging(&self) -> usize {
        self.lock().exchanging.len()
    }

    fn lock(&self) -> MutexGuard<'_, Ledger> {
        match self.ledger.lock() {
            Ok(ledger) => ledger,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}

/// A state held while its code is exchanged. Dropped without [`StateReservation::keep`] (the
/// code was refused, the provider was unreachable, the callback was abandoned), the state is
/// released and nothing is remembered.
pub struct StateReservation<'a> {
    states: &'a UsedStates,
    state: Box<str>,
    kept: bool,
}

impl StateReservation<'_> {
    /// The identity provider accepted the code: the state stays used until `forget_after`.
    pub fn keep(mut self, forget_after: u64) {
        self.kept = true;
        let mut ledger = self.states.lock();
        ledger.exchanging.remove(&self.state);
        if !ledger.used.contains(&*self.state) && ledger.used.len() >= MAX_USED_STATES {
            ledger.used.drop_soonest();
        }
        ledger.used.insert(self.state.clone(), (), forget_after);
    }
}

impl Drop for StateReservation<'_> {
    fn drop(&mut self) {
        if !self.kept {
            self.states.lock().exchanging.remove(&self.state);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_state_is_refused_again_until_it_is_forgotten() {
        let states = UsedStates::default();
        let reservation = states.reserve("s1", 100).expect("fresh state");
        reservation.keep(700);
        assert!(states.reserve("s1", 200).is_none());
        assert_eq!(states.len(), 1);
        assert_eq!(states.exchanging(), 0);
        assert!(states.reserve("s1", 701).is_some());
        assert!(states.is_empty());
    }

    #[test]
    fn a_state_is_refused_while_its_code_is_being_exchanged() {
        let states = UsedStates::default();
        let first = states.reserve("s1", 100).expect("fresh state");
        assert!(states.reserve("s1", 100).is_none());
        first.keep(700);
        assert!(states.reserve("s1", 100).is_none());
    }

    #[test]
    fn a_refused_code_leaves_nothing_behind() {
        let states = UsedStates::default();
        for i in 0..1000 {
            let reservation = states.reserve(&format!("state-{i}"), 100);
            assert!(reservation.is_some());
        }
        assert!(states.is_empty());
        assert_eq!(states.exchanging(), 0);
        // Released, so the same state may be tried again (with another code).
        assert!(states.reserve("state-1", 100).is_some());
    }

    #[test]
    fn remembered_states_are_capped_and_the_oldest_go_first() {
        let states = UsedStates::default();
        for i in 0..MAX_USED_STATES + 3 {
            let now = 100 + i as u64;
            states
                .reserve(&format!("state-{i}"), now)
                .expect("fresh state")
                .keep(1_000_000 + now);
        }
        assert_eq!(states.len(), MAX_USED_STATES);
        assert!(states.reserve("state-0", 200).is_some());
        assert!(states
            .reserve(&format!("state-{}", MAX_USED_STATES + 2), 200)
            .is_none());
    }
}
