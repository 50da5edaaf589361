//! The push gateway's counters (for `/metrics` and the dashboard), shared by the hub, its
//! connections and the callback thread; a module of their own so none of those imports another
//! for them.

use std::sync::atomic::{AtomicU64, Ordering};

/// The hub's counters, shared with its connections and the callback thread.
#[derive(Default)]
pub(super) struct Counters {
    pub(super) open: AtomicU64,
    pub(super) total: AtomicU64,
    pub(super) rejected: AtomicU64,
    pub(super) connect_errors: AtomicU64,
    pub(super) callbacks_ok: AtomicU64,
    pub(super) callbacks_failed: AtomicU64,
    pub(super) retries: AtomicU64,
    pub(super) sends_ok: AtomicU64,
    pub(super) sends_not_found: AtomicU64,
    pub(super) disconnects: [AtomicU64; 4],
}

/// Counts one.
pub(super) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}
