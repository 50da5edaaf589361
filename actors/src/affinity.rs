//! Thread affinity (SPEC §2.1): which backend a thread (`prompt_cache_key`, or session id +
//! model) was last routed to, so its next request finds the server's prompt cache warm. Bounded,
//! least recently routed evicted first. Held by the routing table; read by [`crate::router`].

use std::collections::VecDeque;

use uuid::Uuid;

use crate::prefix::HashKeyed;

/// Threads remembered for affinity (≈ 48 bytes each with the eviction queue: ~3 MiB).
pub const AFFINITY_CAPACITY: usize = 65_536;
/// Thread key → backend, bounded by [`AFFINITY_CAPACITY`], least recently routed evicted first.
pub struct AffinityMap {
    map: HashKeyed<(Uuid, u64)>,
    order: VecDeque<(u64, u64)>,
    stamp: u64,
    cap: usize,
}

impl Default for AffinityMap {
    fn default() -> Self {
        Self::with_capacity(AFFINITY_CAPACITY)
    }
}

impl AffinityMap {
    /// A map of at most `cap` threads.
    pub fn with_capacity(cap: usize) -> Self {
        Self {
            map: HashKeyed::default(),
            order: VecDeque::new(),
            stamp: 0,
            cap: cap.max(1),
        }
    }

    /// The backend `key` sticks to.
    pub fn get(&self, key: u64) -> Option<Uuid> {
        self.map.get(&key).map(|(id, _)| *id)
    }

    /// `key` now sticks to `id` (and counts as recently used).
    pub fn set(&mut self, key: u64, id: Uuid) {
        self.stamp += 1;
        self.map.insert(key, (id, self.stamp));
        self.order.push_back((key, self.stamp));
        while self.map.len() > self.cap || self.order.len() > 2 * self.cap {
            let Some((k, s)) = self.order.pop_front() else {
                break;
            };
            if self.map.get(&k).is_some_and(|(_, cur)| *cur == s) {
                self.map.remove(&k);
            }
        }
    }

    /// Forgets `key` (its backend left the rotation).
    pub fn remove(&mut self, key: u64) {
        self.map.remove(&key);
    }

    /// Threads remembered.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether no thread is remembered.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}
