//! Sessions recently opened from their cookie. A browser sends the same session cookie with
//! every request until the gateway re-seals it (at most once a minute), so the gateway keeps
//! what the cookie opened to, by the cookie's exact value, instead of decoding, decrypting and
//! deserialising it again for each request.
//!
//! Only the opening is remembered: expiry, idle timeout, revocation and the route's policy are
//! still judged on every request. A hit needs the whole value to be equal, byte for byte, so a
//! value that differs anywhere opens (and fails) on its own. The memory belongs to one
//! [`super::SessionSeal`]'s keys: a reload with other keys starts an empty one.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex};

use super::Session;

/// At most this many sessions are kept: about 2.5 MiB with typical cookies, 16 MiB at most with
/// the largest; when full, the memory starts over.
const CAPACITY: usize = 2048;

/// How many bytes of the value's end are hashed: the AES-GCM tag, different for every sealed
/// value. Equality still compares the whole value.
const HASHED_TAIL: usize = 24;

/// A cookie value and the session it opened to.
type Opened = (Box<str>, Arc<Session>);

pub struct OpenedSessions {
    /// Keyed by a hash of the value's tail (keyed per process, so nobody can aim collisions);
    /// the value itself is kept beside the session and compared in full.
    entries: Mutex<HashMap<u64, Opened>>,
    hasher: RandomState,
}

impl Default for OpenedSessions {
    fn default() -> Self {
        OpenedSessions {
            entries: Mutex::new(HashMap::new()),
            hasher: RandomState::new(),
        }
    }
}

impl OpenedSessions {
    /// The session `value` opened to before, if it is still remembered.
    pub fn get(&self, value: &str) -> Option<Arc<Session>> {
        let key = self.key(value);
        let entries = self.entries.lock().ok()?;
        let (kept, session) = entries.get(&key)?;
        (**kept == *value).then(|| session.clone())
    }

    /// Remembers what `value` opened to.
    pub fn insert(&self, value: &str, session: Arc<Session>) {
        let key = self.key(value);
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        if entries.len() >= CAPACITY && !entries.contains_key(&key) {
            entries.clear();
        }
        entries.insert(key, (Box::from(value), session));
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.lock().map_or(0, |entries| entries.len())
    }

    fn key(&self, value: &str) -> u64 {
        let bytes = value.as_bytes();
        let tail = bytes
            .get(bytes.len().saturating_sub(HASHED_TAIL)..)
            .unwrap_or(bytes);
        self.hasher.hash_one(tail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::tests::session;

    fn sample_session() -> Session {
        session(2)
    }

    #[test]
    fn a_hit_needs_the_whole_value() {
        let opened = OpenedSessions::default();
        let tail = "T".repeat(HASHED_TAIL);
        let value = format!("AAAA{tail}");
        let session = Arc::new(sample_session());
        opened.insert(&value, session.clone());
        assert!(Arc::ptr_eq(&opened.get(&value).unwrap(), &session));
        // Same tail, so the same hash: still not the same cookie.
        assert!(opened.get(&format!("AAAB{tail}")).is_none());
        assert!(opened.get(&tail).is_none());
        assert!(opened.get("").is_none());
    }

    #[test]
    fn memory_is_bounded() {
        let opened = OpenedSessions::default();
        let session = Arc::new(sample_session());
        for i in 0..CAPACITY + 10 {
            opened.insert(&format!("value-{i:08}"), session.clone());
        }
        assert!(opened.len() <= CAPACITY, "{}", opened.len());
        assert!(opened.get(&format!("value-{:08}", CAPACITY + 9)).is_some());
    }
}
