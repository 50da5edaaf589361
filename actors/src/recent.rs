//! [`Recent`]: a bounded map from hash keys to values that forgets the least recently set key
//! first. The one eviction structure behind both kinds of routing affinity: thread → backend
//! ([`crate::affinity`]) and each backend's prefix index ([`crate::prefix`]).
//!
//! Eviction is by insertion stamp: every `set` pushes `(key, stamp)` on a queue; evicting pops
//! the oldest and removes the key only if that stamp is still its latest (a key set again since
//! is skipped). The queue is trimmed to twice the capacity so stale entries cannot grow it.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};

/// Keys are already hashes: hashing them again would only cost time.
#[derive(Default)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// A map keyed by a hash that is used as is.
pub type HashKeyed<V> = HashMap<u64, V, BuildHasherDefault<IdHasher>>;

/// See the module docs.
pub struct Recent<V> {
    /// key → (value, stamp of its latest set).
    map: HashKeyed<(V, u64)>,
    /// Set order, for oldest-first eviction; entries whose stamp is stale are skipped.
    order: VecDeque<(u64, u64)>,
    stamp: u64,
    cap: usize,
}

impl<V> Recent<V> {
    /// An empty map of at most `cap` keys.
    pub fn with_capacity(cap: usize) -> Self {
        Self {
            map: HashKeyed::default(),
            order: VecDeque::new(),
            stamp: 0,
            cap: cap.max(1),
        }
    }

    /// The value of `key`.
    pub fn get(&self, key: u64) -> Option<&V> {
        self.map.get(&key).map(|(v, _)| v)
    }

    /// Whether `key` is held.
    pub fn contains(&self, key: u64) -> bool {
        self.map.contains_key(&key)
    }

    /// `key` now maps to `value` and is the most recent key.
    pub fn set(&mut self, key: u64, value: V) {
        self.set_unless_fresh(key, value, 0);
    }

    /// Like [`Self::set`], but a key set within the last `fresh` sets is left as it is: a key
    /// refreshed on every request (a shared system prompt's points) then does not churn the
    /// eviction queue.
    pub fn set_unless_fresh(&mut self, key: u64, value: V, fresh: u64) {
        self.stamp += 1;
        let stamp = self.stamp;
        match self.map.get_mut(&key) {
            Some((_, s)) if stamp - *s < fresh => return,
            Some(entry) => *entry = (value, stamp),
            None => {
                self.map.insert(key, (value, stamp));
            }
        }
        self.order.push_back((key, stamp));
        while self.map.len() > self.cap || self.order.len() > 2 * self.cap {
            let Some((k, s)) = self.order.pop_front() else {
                break;
            };
            if self.map.get(&k).is_some_and(|(_, cur)| *cur == s) {
                self.map.remove(&k);
            }
        }
    }

    /// Forgets `key`.
    pub fn remove(&mut self, key: u64) {
        self.map.remove(&key);
    }

    /// Forgets everything.
    pub fn clear(&mut self) {
        self.map.clear();
        self.order.clear();
    }

    /// Keys held at most.
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Keys held.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_least_recently_set_key_goes_first() {
        let mut r = Recent::with_capacity(3);
        for k in 1..=3 {
            r.set(k, k * 10);
        }
        r.set(1, 11); // 1 is now the most recent
        r.set(4, 40);
        assert!(!r.contains(2), "2 was the least recently set");
        assert_eq!(
            (r.get(1), r.get(3), r.get(4)),
            (Some(&11), Some(&30), Some(&40))
        );
        assert_eq!(r.len(), 3);
    }

    #[test]
    fn a_fresh_key_is_left_alone_and_the_queue_stays_bounded() {
        let mut r = Recent::with_capacity(4);
        for _ in 0..1000 {
            r.set_unless_fresh(7, (), 2);
        }
        assert!(r.order.len() <= 8, "{} queued", r.order.len());
        for k in 0..1000 {
            r.set(k, ());
        }
        assert_eq!(r.len(), 4);
        assert!(r.order.len() <= 8);
    }
}
