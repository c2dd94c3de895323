//! A map whose entries each carry the unix second after which they can be forgotten, indexed
//! by that time. The gateway's in-memory records (revocations, the sids it has seen, used
//! login states) are written by requests from the internet, so no write may scan the whole
//! map: forgetting expired entries and dropping the one closest to expiry are O(log n).

use std::borrow::Borrow;
use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;

struct Entry<V> {
    value: V,
    forget_after: u64,
    /// Tells apart entries with the same `forget_after` in the time index.
    seq: u64,
}

pub(crate) struct ExpiringMap<K, V> {
    entries: HashMap<K, Entry<V>>,
    by_expiry: BTreeMap<(u64, u64), K>,
    next_seq: u64,
}

impl<K, V> Default for ExpiringMap<K, V> {
    fn default() -> Self {
        ExpiringMap {
            entries: HashMap::new(),
            by_expiry: BTreeMap::new(),
            next_seq: 0,
        }
    }
}

impl<K: Hash + Eq + Clone, V> ExpiringMap<K, V> {
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub(crate) fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.entries.get(key).map(|e| &e.value)
    }

    pub(crate) fn contains<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.entries.contains_key(key)
    }

    /// When the entry for `key` may be forgotten.
    pub(crate) fn forget_after<Q>(&self, key: &Q) -> Option<u64>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.entries.get(key).map(|e| e.forget_after)
    }

    /// Inserts or replaces the entry for `key`.
    pub(crate) fn insert(&mut self, key: K, value: V, forget_after: u64) {
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        if let Some(old) = self.entries.insert(
            key.clone(),
            Entry {
                value,
                forget_after,
                seq,
            },
        ) {
            self.by_expiry.remove(&(old.forget_after, old.seq));
        }
        self.by_expiry.insert((forget_after, seq), key);
    }

    pub(crate) fn remove<Q>(&mut self, key: &Q) -> Option<(V, u64)>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let entry = self.entries.remove(key)?;
        self.by_expiry.remove(&(entry.forget_after, entry.seq));
        Some((entry.value, entry.forget_after))
    }

    /// Forgets up to `at_most` entries whose time has passed, soonest first. Bounded so that
    /// one write never pays for a large backlog: every write calls it, and each entry is
    /// forgotten once, so the cost per write stays O(log n) on average.
    pub(crate) fn forget_expired(&mut self, now: u64, at_most: usize) {
        for _ in 0..at_most {
            let Some(entry) = self.by_expiry.first_entry() else {
                return;
            };
            if entry.key().0 > now {
                return;
            }
            let key = entry.remove();
            self.entries.remove(&key);
        }
    }

    /// Drops the entry that would be forgotten soonest; returns its key.
    pub(crate) fn drop_soonest(&mut self) -> Option<K> {
        let ((_, _), key) = self.by_expiry.pop_first()?;
        self.entries.remove(&key);
        Some(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expired_entries_are_forgotten_soonest_first_and_in_bounded_batches() {
        let mut map: ExpiringMap<u32, ()> = ExpiringMap::default();
        for i in 0..10 {
            map.insert(i, (), 100 + u64::from(i));
        }
        map.forget_expired(104, 3);
        assert_eq!(map.len(), 7);
        assert!(!map.contains(&0) && !map.contains(&2) && map.contains(&3));
        map.forget_expired(104, 100);
        assert_eq!(map.len(), 5);
        assert!(map.contains(&5));
        map.forget_expired(1000, usize::MAX);
        assert!(map.is_empty());
    }

    #[test]
    fn replacing_an_entry_moves_it_in_the_time_index() {
        let mut map: ExpiringMap<&str, u8> = ExpiringMap::default();
        map.insert("a", 1, 100);
        map.insert("b", 2, 200);
        map.insert("a", 3, 300);
        assert_eq!(map.len(), 2);
        assert_eq!(map.get("a"), Some(&3));
        assert_eq!(map.forget_after("a"), Some(300));
        map.forget_expired(250, usize::MAX);
        assert_eq!(map.get("a"), Some(&3));
        assert!(!map.contains("b"));
        assert_eq!(map.drop_soonest(), Some("a"));
        assert!(map.is_empty());
        assert_eq!(map.drop_soonest(), None);
    }

    #[test]
    fn removed_entries_leave_nothing_behind_in_the_time_index() {
        let mut map: ExpiringMap<u32, ()> = ExpiringMap::default();
        map.insert(1, (), 100);
        map.insert(2, (), 100);
        assert_eq!(map.remove(&1), Some(((), 100)));
        assert_eq!(map.remove(&1), None);
        assert_eq!(map.drop_soonest(), Some(2));
        assert_eq!(map.drop_soonest(), None);
    }
}
