//! Prefix affinity: an approximate, bounded, per-backend index of the prompts the broker routed
//! there, built from routing history only (the broker never asks a server what it cached).
//!
//! A prompt is cut into *points*: the end of every message, and every [`CHUNK_BYTES`] inside a
//! long message (a 1 500-token system prompt shared by all users then matches chunk by chunk up
//! to where two prompts differ). Each point's hash chains every byte before it, so a point is
//! present in a backend's index only if that backend recently saw the whole prefix up to it.
//! A lookup binary-searches the request's points for the longest one a backend holds.
//!
//! Bounds: at most [`PREFIX_ENTRIES_PER_BACKEND`] points per backend (about 2.5 MiB: a map entry
//! and an eviction-queue entry per point), oldest evicted first; at most [`MAX_POINTS`] per prompt.

use crate::recent::Recent;

/// A long message contributes a point every this many bytes (~128 tokens of English).
pub const CHUNK_BYTES: usize = 512;
/// Points kept per prompt; a prompt past `MAX_POINTS × CHUNK_BYTES` is indexed up to there.
pub const MAX_POINTS: usize = 1024;
/// Points one backend's index holds before the oldest are evicted (65 536 ≈ 1 000 conversations
/// of 60 points, or 10 000 short prompts per backend).
pub const PREFIX_ENTRIES_PER_BACKEND: usize = 65_536;

/// A prompt's points: `(chained hash, bytes of prompt up to here)`, shortest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PromptSig {
    /// Shortest first; the last one covers the whole prompt (or the first [`MAX_POINTS`]).
    pub points: Vec<(u64, u32)>,
}

const K: u64 = 0x9e37_79b9_7f4a_7c15;

/// One multiply-rotate round; fast (8 bytes a step) and good enough for an approximate index.
#[inline]
fn mix(h: u64, w: u64) -> u64 {
    (h ^ w).wrapping_mul(K).rotate_left(29)
}

#[inline]
fn word(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

/// Four independent lanes over 32-byte blocks (a multiply's latency is then hidden), folded
/// together, then the tail 8 bytes at a time.
fn hash_bytes(h: u64, bytes: &[u8]) -> u64 {
    let mut lanes = [
        h,
        h ^ 0x243f_6a88_85a3_08d3,
        h ^ 0x1319_8a2e_0370_7344,
        h ^ 0xa409_3822_299f_31d0,
    ];
    let mut blocks = bytes.chunks_exact(32);
    for b in &mut blocks {
        for (i, lane) in lanes.iter_mut().enumerate() {
            *lane = mix(*lane, word(&b[i * 8..]));
        }
    }
    let mut h = mix(mix(mix(lanes[0], lanes[1]), lanes[2]), lanes[3]);
    let mut words = blocks.remainder().chunks_exact(8);
    for w in &mut words {
        h = mix(h, word(w));
    }
    let rest = words.remainder();
    let mut a = [0u8; 8];
    a[..rest.len()].copy_from_slice(rest);
    mix(mix(h, u64::from_le_bytes(a)), rest.len() as u64)
}

impl PromptSig {
    /// The points of a prompt made of `parts` (one per message, e.g. each message's JSON).
    pub fn from_parts<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> Self {
        let mut points = Vec::new();
        let mut h = K;
        let mut len = 0usize;
        'parts: for part in parts {
            for chunk in part.chunks(CHUNK_BYTES) {
                h = hash_bytes(h, chunk);
                len += chunk.len();
                if points.len() == MAX_POINTS {
                    break 'parts;
                }
                points.push((h, len.min(u32::MAX as usize) as u32));
            }
            // The message boundary is a point of its own (a message of exactly `CHUNK_BYTES`
            // must not look like the first chunk of a longer one).
            h = mix(h, 0x4d53_4721);
            if let Some(last) = points.last_mut() {
                last.0 = h;
            }
        }
        Self { points }
    }

    /// Whether the prompt has nothing to match.
    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }
}

/// One backend's index. Owned by its [`crate::routing::BackendHandle`] behind a mutex held for
/// one lookup or one insert.
pub struct PrefixIndex {
    /// Point hashes routed here, least recently routed evicted first.
    points: Recent<()>,
}

impl Default for PrefixIndex {
    fn default() -> Self {
        Self::with_capacity(PREFIX_ENTRIES_PER_BACKEND)
    }
}

impl PrefixIndex {
    /// An empty index holding at most `cap` points.
    pub fn with_capacity(cap: usize) -> Self {
        Self {
            points: Recent::with_capacity(cap),
        }
    }

    /// Points held.
    pub fn len(&self) -> usize {
        self.points.len()
    }

    /// Whether nothing is indexed.
    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    /// Forgets everything (the backend left the rotation: its cache may be gone).
    pub fn clear(&mut self) {
        self.points.clear();
    }

    /// Records that `sig` was routed here. Points are inserted longest first so that, evicted
    /// oldest first, a prompt's long prefixes go before its short ones and the index stays
    /// prefix-closed (what [`Self::longest_match`]'s binary search relies on).
    pub fn insert(&mut self, sig: &PromptSig) {
        // Recently refreshed points (a shared system prompt) skip the queue churn.
        let fresh = (self.points.capacity() / 4) as u64;
        for &(h, _) in sig.points.iter().rev() {
            self.points.set_unless_fresh(h, (), fresh);
        }
    }

    /// Bytes of `sig`'s longest prefix held here (0 when none).
    pub fn longest_match(&self, sig: &PromptSig) -> u32 {
        let points = &sig.points;
        // First index whose point is absent (the present ones form a prefix).
        let held = points.partition_point(|(h, _)| self.points.contains(*h));
        if held == 0 {
            0
        } else {
            points[held - 1].1
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sig(msgs: &[&str]) -> PromptSig {
        PromptSig::from_parts(msgs.iter().map(|m| m.as_bytes()))
    }

    #[test]
    fn a_longer_conversation_matches_its_earlier_turn() {
        let system = "s".repeat(2000);
        let mut idx = PrefixIndex::default();
        idx.insert(&sig(&[&system, "hello"]));
        let turn2 = sig(&[&system, "hello", "hi there", "and now?"]);
        assert_eq!(idx.longest_match(&turn2), 2005);
        // Another user with the same system prompt shares the system message.
        let other = sig(&[&system, "bye"]);
        assert_eq!(idx.longest_match(&other), 2000);
        // A system prompt edited near its end still shares its first full chunks.
        let edited = format!("{}t", &system[..1999]);
        assert_eq!(idx.longest_match(&sig(&[&edited])), 3 * CHUNK_BYTES as u32);
        assert_eq!(idx.longest_match(&sig(&["unrelated"])), 0);
    }

    #[test]
    fn a_message_boundary_differs_from_a_chunk_boundary() {
        let a = "a".repeat(CHUNK_BYTES);
        let mut idx = PrefixIndex::default();
        idx.insert(&sig(&[&a]));
        let longer = format!("{a}bbb");
        assert_eq!(idx.longest_match(&sig(&[&longer])), 0);
        assert_eq!(idx.longest_match(&sig(&[&a, "x"])), CHUNK_BYTES as u32);
    }

    #[test]
    fn the_index_is_bounded_and_evicts_the_oldest() {
        let mut idx = PrefixIndex::with_capacity(100);
        let first = sig(&["first prompt"]);
        idx.insert(&first);
        for i in 0..500 {
            idx.insert(&sig(&[&format!("prompt {i}"), "x"]));
            assert!(idx.len() <= 100);
        }
        assert_eq!(idx.longest_match(&first), 0);
        assert!(idx.longest_match(&sig(&["prompt 499", "x"])) > 0);
        // the eviction queue's own bound is tested with `Recent`
    }

    #[test]
    fn points_are_capped_per_prompt() {
        let huge = "z".repeat(CHUNK_BYTES * (MAX_POINTS + 10));
        assert_eq!(sig(&[&huge]).points.len(), MAX_POINTS);
    }
}
