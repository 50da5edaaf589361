//! The per-session resume buffer: the most recent events, bounded in count and in bytes.
//!
//! Ids are consecutive, so "everything after `last_event_id`" is a suffix found by arithmetic.
//! When the client's position has already been evicted the answer is [`Replay::TooOld`] and
//! the session sends a `resync` snapshot instead.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::events::Encoded;

/// Upper bound on buffered bytes per session (SPEC §4.2).
pub const MAX_BUFFER_BYTES: usize = 1024 * 1024;

/// See the module docs.
pub struct EventBuffer {
    events: VecDeque<Arc<Encoded>>,
    bytes: usize,
    max_events: usize,
    max_bytes: usize,
}

/// What a resuming client gets.
#[derive(Debug)]
pub enum Replay {
    /// Every buffered event after the client's position (possibly none).
    Events(Vec<Arc<Encoded>>),
    /// The position is older than the oldest buffered event.
    TooOld,
}

impl EventBuffer {
    /// A buffer of at most `max_events` events and `max_bytes` bytes.
    pub fn new(max_events: usize, max_bytes: usize) -> Self {
        Self {
            events: VecDeque::new(),
            bytes: 0,
            max_events: max_events.max(1),
            max_bytes,
        }
    }

    /// Appends an event (ids must increase by one), evicting the oldest past either bound.
    pub fn push(&mut self, event: Arc<Encoded>) {
        self.bytes += event.cost();
        self.events.push_back(event);
        while self.events.len() > self.max_events
            || (self.bytes > self.max_bytes && self.events.len() > 1)
        {
            if let Some(old) = self.events.pop_front() {
                self.bytes -= old.cost();
            }
        }
    }

    /// Events after `last_event_id`; `last_event_id` may be the newest id (nothing missed).
    pub fn since(&self, last_event_id: u64) -> Replay {
        let Some(first) = self.events.front().and_then(|e| e.id) else {
            return Replay::Events(Vec::new());
        };
        if last_event_id + 1 < first {
            return Replay::TooOld;
        }
        let skip = (last_event_id + 1 - first) as usize;
        Replay::Events(self.events.iter().skip(skip).cloned().collect())
    }

    /// The newest buffered event.
    pub fn last(&self) -> Option<&Arc<Encoded>> {
        self.events.back()
    }

    /// Number of buffered events.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// Whether nothing is buffered.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Buffered bytes (for `/debug/memory`).
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::EventBody;

    fn ev(id: u64) -> Arc<Encoded> {
        Encoded::new(
            Some(id),
            &EventBody::Complete {
                request_id: "r".into(),
            },
        )
    }

    fn ids(r: Replay) -> Vec<u64> {
        match r {
            Replay::Events(v) => v.iter().filter_map(|e| e.id).collect(),
            Replay::TooOld => vec![u64::MAX],
        }
    }

    #[test]
    fn replays_exactly_the_missed_suffix() {
        let mut b = EventBuffer::new(10, MAX_BUFFER_BYTES);
        for id in 1..=5 {
            b.push(ev(id));
        }
        assert_eq!(ids(b.since(0)), [1, 2, 3, 4, 5]);
        assert_eq!(ids(b.since(3)), [4, 5]);
        assert_eq!(ids(b.since(5)), Vec::<u64>::new());
        assert_eq!(ids(b.since(9)), Vec::<u64>::new());
    }

    #[test]
    fn bounded_by_count_then_too_old() {
        let mut b = EventBuffer::new(3, MAX_BUFFER_BYTES);
        for id in 1..=10 {
            b.push(ev(id));
        }
        assert_eq!(b.len(), 3);
        assert_eq!(ids(b.since(7)), [8, 9, 10]);
        assert!(matches!(b.since(6), Replay::TooOld));
    }

    #[test]
    fn bounded_by_bytes() {
        let one = ev(10).cost(); // ids 10..=20 encode to the same size
        let mut b = EventBuffer::new(1000, one * 4);
        for id in 10..=20 {
            b.push(ev(id));
        }
        assert!(b.bytes() <= one * 4);
        assert_eq!(b.len(), 4);
        assert!(matches!(b.since(15), Replay::TooOld));
        assert_eq!(ids(b.since(16)), [17, 18, 19, 20]);
    }

    #[test]
    fn empty_buffer_replays_nothing() {
        let b = EventBuffer::new(3, MAX_BUFFER_BYTES);
        assert!(b.is_empty());
        assert_eq!(ids(b.since(0)), Vec::<u64>::new());
    }
}
