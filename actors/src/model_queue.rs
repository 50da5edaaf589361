//! One model's FIFO of requests waiting for a backend slot (SPEC §2.1): only the first
//! [`Ticket`] retries when a slot frees, so the queue is fair; dropping a ticket (served, timed
//! out, or the client left) removes it at once and hands the turn on. Held by each
//! [`crate::routing::ModelRoute`]; the decision that uses it is in [`crate::router`].

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::metrics::Histogram;

/// Buckets of the queue-wait histogram, in ms.
const WAIT_BUCKETS_MS: &[u64] = &[1, 5, 10, 50, 100, 500, 1000, 5000, 10_000, 30_000];

/// One model's FIFO of requests waiting for a slot.
pub struct ModelQueue {
    waiters: Mutex<VecDeque<(u64, Arc<Notify>)>>,
    len: AtomicUsize,
    next_id: AtomicU64,
    /// Wait time of requests that left the queue (served or timed out).
    wait: Histogram,
    rejected_full: AtomicU64,
    timed_out: AtomicU64,
}

impl Default for ModelQueue {
    fn default() -> Self {
        Self {
            waiters: Mutex::new(VecDeque::new()),
            len: AtomicUsize::new(0),
            next_id: AtomicU64::new(0),
            wait: Histogram::new(WAIT_BUCKETS_MS),
            rejected_full: AtomicU64::new(0),
            timed_out: AtomicU64::new(0),
        }
    }
}

impl ModelQueue {
    /// Requests waiting.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    /// Whether nobody waits (new requests may then take a free slot directly).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Joins the back of the queue, unless `max` are already waiting.
    pub fn enter(self: &Arc<Self>, max: usize) -> Option<Ticket> {
        let mut w = self.waiters.lock();
        if w.len() >= max {
            return None;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let notify = Arc::new(Notify::new());
        w.push_back((id, Arc::clone(&notify)));
        self.len.store(w.len(), Ordering::Release);
        Some(Ticket {
            queue: Arc::clone(self),
            id,
            notify,
        })
    }

    /// A request left the queue (served or timed out) after waiting `ms`.
    pub fn observe_wait_ms(&self, ms: u64) {
        self.wait.observe_ms(ms);
    }

    /// A request was refused because `queue_max` were already waiting.
    pub fn count_rejected_full(&self) {
        self.rejected_full.fetch_add(1, Ordering::Relaxed);
    }

    /// A request waited `queue_timeout` without a slot.
    pub fn count_timed_out(&self) {
        self.timed_out.fetch_add(1, Ordering::Relaxed);
    }

    /// Refused (`full`) and timed-out (`timeout`) requests so far, for `/metrics`.
    pub fn rejections(&self) -> [(&'static str, u64); 2] {
        [
            ("full", self.rejected_full.load(Ordering::Relaxed)),
            ("timeout", self.timed_out.load(Ordering::Relaxed)),
        ]
    }

    /// Wait times of requests that left the queue.
    pub fn wait_histogram(&self) -> &Histogram {
        &self.wait
    }

    /// A slot may have freed: the first waiter tries again. (`Notify` keeps the permit when
    /// the waiter is not parked yet, so a wake between its attempt and its wait is not lost.)
    pub fn wake_front(&self) {
        if self.is_empty() {
            return;
        }
        if let Some((_, n)) = self.waiters.lock().front() {
            n.notify_one();
        }
    }
}

/// A place in a [`ModelQueue`]. Dropping it (served, timed out, or the client went away and
/// its request future was dropped) removes it at once and hands the turn to the next waiter.
pub struct Ticket {
    queue: Arc<ModelQueue>,
    id: u64,
    notify: Arc<Notify>,
}

impl Ticket {
    /// Resolves when a slot may have freed for this ticket (or it became first in line).
    pub async fn woken(&self) {
        self.notify.notified().await;
    }

    /// Whether this ticket is first in line (only the first one takes a freed slot).
    pub fn is_first(&self) -> bool {
        self.queue
            .waiters
            .lock()
            .front()
            .is_some_and(|(id, _)| *id == self.id)
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut w = self.queue.waiters.lock();
        if let Some(pos) = w.iter().position(|(id, _)| *id == self.id) {
            w.remove(pos);
            if pos == 0 {
                if let Some((_, next)) = w.front() {
                    next.notify_one();
                }
            }
        }
        self.queue.len.store(w.len(), Ordering::Release);
    }
}
