//! Thread affinity (SPEC §2.1): which backend a thread (`prompt_cache_key`, or session id +
//! model) was last routed to, so its next request finds the server's prompt cache warm. Bounded,
//! least recently routed evicted first ([`Recent`]). Held by the routing table; read by
//! [`crate::router`].

use uuid::Uuid;

use crate::recent::Recent;

/// Threads remembered for affinity (≈ 48 bytes each with the eviction queue: ~3 MiB).
pub const AFFINITY_CAPACITY: usize = 65_536;

/// Thread key → backend, bounded by [`AFFINITY_CAPACITY`], least recently routed evicted first.
pub type AffinityMap = Recent<Uuid>;

impl Default for AffinityMap {
    fn default() -> Self {
        Self::with_capacity(AFFINITY_CAPACITY)
    }
}
