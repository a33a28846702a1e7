//! Caps on connections per client address (before they authenticate) and
//! per user (after).
//!
//! The global connection limit keeps a gateway alive; these keep one source
//! from taking all of it. Sockets that never authenticate are cut at the
//! auth timeout anyway, but one address could still hold thousands open at
//! a time; and one account could open hundreds of connections and take
//! every seat of a room.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

/// Open connections per key, each counted while its [`Entry`] lives.
#[derive(Debug)]
pub struct Counter<K: Eq + Hash> {
    /// At most this many per key; 0 means no cap.
    max: usize,
    open: Arc<Mutex<HashMap<K, usize>>>,
}

/// One counted connection; dropping it uncounts it.
#[derive(Debug)]
pub struct Entry<K: Eq + Hash> {
    key: K,
    open: Arc<Mutex<HashMap<K, usize>>>,
}

impl<K: Eq + Hash + Clone> Counter<K> {
    /// A counter allowing `max` per key (0: no cap).
    pub fn new(max: usize) -> Self {
        Self {
            max,
            open: Arc::default(),
        }
    }

    /// Counts one more connection for `key`, unless it has `max` already.
    pub fn try_enter(&self, key: K) -> Option<Entry<K>> {
        let mut open = self.open.lock().expect("counter lock poisoned");
        let count = open.entry(key.clone()).or_default();
        if self.max != 0 && *count >= self.max {
            return None;
        }
        *count += 1;
        Some(Entry {
            key,
            open: self.open.clone(),
        })
    }

    /// Keys with at least one connection; the map holds no others.
    pub fn keys(&self) -> usize {
        self.open.lock().expect("counter lock poisoned").len()
    }
}

impl<K: Eq + Hash> Drop for Entry<K> {
    fn drop(&mut self) {
        let mut open = self.open.lock().expect("counter lock poisoned");
        if let Some(count) = open.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_each_key_and_frees_on_drop() {
        let counter = Counter::new(2);
        let a1 = counter.try_enter("a").expect("first");
        let _a2 = counter.try_enter("a").expect("second");
        assert!(counter.try_enter("a").is_none(), "third is over the cap");
        let b = counter.try_enter("b").expect("another key");
        drop(a1);
        let _a3 = counter.try_enter("a").expect("a slot was freed");
        drop(b);
        assert_eq!(counter.keys(), 1, "keys without connections are dropped");
    }

    #[test]
    fn zero_means_no_cap() {
        let counter = Counter::new(0);
        let entries: Vec<_> = (0..1000).map(|_| counter.try_enter(1)).collect();
        assert!(entries.iter().all(Option::is_some));
    }
}
