//! [`Outbound`]: the one byte-budgeted, batching queue between whatever produces a streaming
//! client's output (a session, the push hub) and the response body that writes it.
//!
//! Every streaming transport has the same problem: while a slow client's socket is full the
//! HTTP dispatcher stops polling the body, so the queue in front of it is what bounds memory.
//! The queue therefore counts the bytes it holds where the producer can see them; past the
//! limit it refuses the item, stops accepting more and lets the caller deal with the slow
//! consumer (WebSocket: close with 4009; SSE sessions: end the stream; push: disconnect with
//! reason `error`). The body takes everything waiting, framed, in one write of at most about
//! [`BATCH_LIMIT`] bytes (one write for a burst of tokens, without letting one busy client
//! hog a worker).
//!
//! Only the framing differs between transports (a WebSocket text frame, an SSE `data:` frame,
//! push's pre-encoded SSE bytes); the caller supplies it as a [`Framing`]. No HTTP-framework
//! types here, so the push gateway (this crate) and the session transports (`src/http`) share
//! it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use futures_util::task::AtomicWaker;
use parking_lot::Mutex;

/// Bytes one batch may grow to before it is written (the item that crosses it is included):
/// large enough that a burst of tokens is one write, small enough that one busy client cannot
/// hog a worker.
pub const BATCH_LIMIT: usize = 64 * 1024;

/// How one transport frames and counts its queued items; implemented by a zero-sized type per
/// transport so the queue itself stays the same for all of them.
pub trait Framing {
    /// What the producer queues.
    type Item;

    /// Bytes `item` counts against the queue limit while it waits.
    fn cost(item: &Self::Item) -> usize;

    /// Appends `item`'s wire bytes to `out`.
    fn encode(item: &Self::Item, out: &mut BytesMut);

    /// Whether nothing may follow `item` (push's `close: true`): the batch ends with it and the
    /// queue is shut. Most transports never end a stream from an item.
    fn ends_stream(_item: &Self::Item) -> bool {
        false
    }
}

/// When an item is over the limit; the transports differ and their behaviour is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Refused if the bytes queued with it would pass the limit (SSE sessions, push).
    WithinLimit,
    /// Refused only once the bytes already queued pass the limit, so an item is always
    /// accepted while the queue is under it (WebSocket: a large event, such as a `resync`,
    /// still reaches a client that is keeping up).
    UntilOver,
}

/// What became of an item handed to [`Outbound::push`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// It waits for the body.
    Queued,
    /// The queue is finished, shut or already over its limit.
    Refused,
    /// This item passed the limit: it was refused, the queue accepts nothing more and the
    /// client is a slow consumer.
    OverLimit,
}

/// One write's worth of framed items, from [`Outbound::poll_batch`].
#[derive(Debug)]
pub struct Batch {
    /// The framed items (empty only when `last` came from an item framed as nothing).
    pub bytes: Bytes,
    /// An item that ends the stream was taken (see [`Framing::ends_stream`]): nothing follows.
    pub last: bool,
}

/// What is guarded by the queue's lock: the items and whether more may come.
struct Inner<T> {
    items: VecDeque<T>,
    /// Pushes are accepted (cleared by `finish`, the limit, `close`).
    open: bool,
    /// Nothing more is written, not even what is queued (`close`, a last item, the body gone).
    shut: bool,
}

/// See the module docs. Shared (in an `Arc`) by the producer side and the response body.
pub struct Outbound<F: Framing> {
    inner: Mutex<Inner<F::Item>>,
    /// The response body's task, woken when an item arrives or the queue ends.
    waker: AtomicWaker,
    /// Bytes queued and not yet taken by the body (plus what `count` added).
    queued: AtomicUsize,
    /// Queued bytes allowed before the client counts as a slow consumer.
    limit: usize,
    admit: Admit,
}

impl<F: Framing> Outbound<F> {
    /// An empty queue allowing `limit` queued bytes, judged by `admit`.
    pub fn new(limit: usize, admit: Admit) -> Self {
        Self {
            inner: Mutex::new(Inner {
                items: VecDeque::new(),
                open: true,
                shut: false,
            }),
            waker: AtomicWaker::new(),
            queued: AtomicUsize::new(0),
            limit,
            admit,
        }
    }

    /// Queues `item` and wakes the body, unless the queue is finished, shut or over its limit.
    pub fn push(&self, item: F::Item) -> Pushed {
        let cost = F::cost(&item);
        let mut inner = self.inner.lock();
        if !inner.open {
            return Pushed::Refused;
        }
        let before = self.queued.load(Ordering::Acquire);
        let over = match self.admit {
            Admit::WithinLimit => before.saturating_add(cost) > self.limit,
            Admit::UntilOver => before > self.limit,
        };
        if over {
            inner.open = false;
            drop(inner);
            // The body drains what is queued, then sees the end.
            self.waker.wake();
            return Pushed::OverLimit;
        }
        self.queued.fetch_add(cost, Ordering::AcqRel);
        inner.items.push_back(item);
        drop(inner);
        self.waker.wake();
        Pushed::Queued
    }

    /// Counts `bytes` the body writes that did not come through the queue (a WebSocket actor's
    /// own frames), so they weigh on the limit too; [`Outbound::taken`] releases them.
    pub fn count(&self, bytes: usize) {
        self.queued.fetch_add(bytes, Ordering::AcqRel);
    }

    /// Releases `bytes` the body wrote that were counted with [`Outbound::count`]. Saturating:
    /// small frames (pings, pongs, closes) are written without having been counted.
    pub fn taken(&self, bytes: usize) {
        let _ = self
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                Some(q.saturating_sub(bytes))
            });
    }

    /// Bytes queued now (for log lines about slow consumers).
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    /// No more items will come: the body writes what is queued, then sees the end. What a
    /// dropped channel sender used to mean.
    pub fn finish(&self) {
        self.inner.lock().open = false;
        self.waker.wake();
    }

    /// Shuts the queue at once and returns what is still queued (a WebSocket actor writes it
    /// itself before its close frame): nothing more is accepted or written.
    pub fn close(&self) -> VecDeque<F::Item> {
        let mut inner = self.inner.lock();
        inner.open = false;
        inner.shut = true;
        let rest = std::mem::take(&mut inner.items);
        drop(inner);
        self.waker.wake();
        rest
    }

    /// The waiting items framed into one batch of about [`BATCH_LIMIT`] bytes at most.
    /// `Pending` (with the task registered) while nothing waits; `Ready(None)` once the queue
    /// is shut, or finished and empty.
    pub fn poll_batch(&self, cx: &mut Context<'_>) -> Poll<Option<Batch>> {
        // Registered before looking, so an item pushed in between still wakes us.
        self.waker.register(cx.waker());
        let mut inner = self.inner.lock();
        let mut out = BytesMut::new();
        let mut cost = 0usize;
        let mut last = false;
        while !inner.shut && out.len() < BATCH_LIMIT {
            let Some(item) = inner.items.pop_front() else {
                break;
            };
            cost += F::cost(&item);
            F::encode(&item, &mut out);
            if F::ends_stream(&item) {
                inner.open = false;
                inner.shut = true;
                last = true;
            }
        }
        let ended = inner.shut || (!inner.open && inner.items.is_empty());
        drop(inner);
        self.taken(cost);
        if !out.is_empty() || last {
            Poll::Ready(Some(Batch {
                bytes: out.freeze(),
                last,
            }))
        } else if ended {
            Poll::Ready(None)
        } else {
            Poll::Pending
        }
    }

    /// The next waiting item, unframed, for a consumer that takes them one at a time.
    /// `Ready(None)` as for [`Outbound::poll_batch`].
    pub fn poll_item(&self, cx: &mut Context<'_>) -> Poll<Option<F::Item>> {
        self.waker.register(cx.waker());
        let mut inner = self.inner.lock();
        if inner.shut {
            return Poll::Ready(None);
        }
        match inner.items.pop_front() {
            Some(item) => {
                if F::ends_stream(&item) {
                    inner.open = false;
                    inner.shut = true;
                }
                drop(inner);
                self.taken(F::cost(&item));
                Poll::Ready(Some(item))
            }
            None if inner.open => Poll::Pending,
            None => Poll::Ready(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;
    use std::task::{Wake, Waker};

    /// Items are byte strings written as they are, each costing its length plus 2 (a frame
    /// header); an item starting with `!` ends the stream.
    struct Raw;

    impl Framing for Raw {
        type Item = &'static [u8];
        fn cost(item: &Self::Item) -> usize {
            item.len() + 2
        }
        fn encode(item: &Self::Item, out: &mut BytesMut) {
            out.extend_from_slice(item);
        }
        fn ends_stream(item: &Self::Item) -> bool {
            item.starts_with(b"!")
        }
    }

    /// Counts its wake-ups.
    #[derive(Default)]
    struct Counter(AtomicUsize);

    impl Wake for Counter {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn waker() -> (Arc<Counter>, Waker) {
        let counter = Arc::new(Counter::default());
        (Arc::clone(&counter), Waker::from(Arc::clone(&counter)))
    }

    fn batch(q: &Outbound<Raw>) -> Poll<Option<Batch>> {
        let (_, w) = waker();
        q.poll_batch(&mut Context::from_waker(&w))
    }

    fn bytes(polled: Poll<Option<Batch>>) -> Bytes {
        match polled {
            Poll::Ready(Some(b)) => b.bytes,
            other => panic!("expected a batch, got {other:?}"),
        }
    }

    #[test]
    fn until_over_lets_the_crossing_item_in_then_refuses() {
        // 10 + 2 bytes an item, 24 allowed: the third item crosses the limit and is still
        // queued; the fourth finds it passed (the WebSocket rule).
        let q = Outbound::<Raw>::new(24, Admit::UntilOver);
        for _ in 0..3 {
            assert_eq!(q.push(b"0123456789"), Pushed::Queued);
        }
        assert_eq!(q.push(b"0123456789"), Pushed::OverLimit);
        assert_eq!(q.push(b"x"), Pushed::Refused, "refused for good");
        assert_eq!(q.queued(), 36);
        assert_eq!(
            bytes(batch(&q)).len(),
            30,
            "what was queued is still written"
        );
        assert_eq!(q.queued(), 0);
        assert!(matches!(batch(&q), Poll::Ready(None)), "then the end");
    }

    #[test]
    fn within_limit_refuses_an_item_that_would_pass_it() {
        // The push and SSE rule: an item that does not fit is refused, even into an empty
        // queue.
        let q = Outbound::<Raw>::new(24, Admit::WithinLimit);
        assert_eq!(q.push(&[b'x'; 30]), Pushed::OverLimit);
        let q = Outbound::<Raw>::new(24, Admit::WithinLimit);
        assert_eq!(q.push(b"0123456789"), Pushed::Queued);
        assert_eq!(q.push(b"0123456789"), Pushed::Queued);
        assert_eq!(q.push(b"x"), Pushed::OverLimit, "24 + 3 > 24");
        assert_eq!(q.push(b""), Pushed::Refused);
        assert_eq!(q.queued(), 24, "the refused item is not counted");
    }

    #[test]
    fn taking_releases_the_budget() {
        let q = Outbound::<Raw>::new(24, Admit::WithinLimit);
        for _ in 0..2 {
            assert_eq!(q.push(b"0123456789"), Pushed::Queued);
        }
        assert_eq!(bytes(batch(&q)), "01234567890123456789");
        assert_eq!(q.push(b"0123456789"), Pushed::Queued, "room again");
        q.count(5);
        assert_eq!(q.queued(), 17);
        q.taken(100);
        assert_eq!(q.queued(), 0, "saturating");
    }

    #[test]
    fn close_returns_what_remains_and_nothing_is_written_after_it() {
        let q = Outbound::<Raw>::new(1 << 20, Admit::UntilOver);
        assert_eq!(q.push(b"a"), Pushed::Queued);
        assert_eq!(q.push(b"b"), Pushed::Queued);
        let rest: Vec<_> = q.close().into_iter().collect();
        assert_eq!(
            rest,
            [b"a", b"b"],
            "the queued items go to the caller, in order"
        );
        assert_eq!(q.push(b"c"), Pushed::Refused);
        assert!(
            matches!(batch(&q), Poll::Ready(None)),
            "nothing after the close"
        );
    }

    #[test]
    fn finish_drains_what_is_queued_then_ends() {
        let q = Outbound::<Raw>::new(1 << 20, Admit::WithinLimit);
        assert_eq!(q.push(b"a"), Pushed::Queued);
        q.finish();
        assert_eq!(q.push(b"b"), Pushed::Refused);
        assert_eq!(bytes(batch(&q)), "a");
        assert!(matches!(batch(&q), Poll::Ready(None)));
    }

    #[test]
    fn batching_respects_the_batch_limit() {
        static ITEM: [u8; 1000] = [b'x'; 1000];
        let q = Outbound::<Raw>::new(usize::MAX, Admit::WithinLimit);
        let n = 3 * BATCH_LIMIT / ITEM.len();
        for _ in 0..n {
            assert_eq!(q.push(&ITEM), Pushed::Queued);
        }
        let mut sizes = Vec::new();
        while let Poll::Ready(Some(b)) = batch(&q) {
            sizes.push(b.bytes.len());
        }
        assert!(sizes.len() >= 3, "{sizes:?}");
        // A batch stops at the first item that reaches the limit.
        assert!(
            sizes.iter().all(|&s| s < BATCH_LIMIT + ITEM.len()),
            "{sizes:?}"
        );
        assert!(sizes[0] >= BATCH_LIMIT, "{sizes:?}");
        assert_eq!(sizes.iter().sum::<usize>(), n * ITEM.len());
        assert!(matches!(batch(&q), Poll::Pending), "empty but open");
    }

    #[test]
    fn an_item_that_ends_the_stream_ends_the_batch() {
        let q = Outbound::<Raw>::new(1 << 20, Admit::WithinLimit);
        for item in [&b"a"[..], b"!bye", b"c"] {
            assert_eq!(q.push(item), Pushed::Queued);
        }
        match batch(&q) {
            Poll::Ready(Some(b)) => {
                assert_eq!(b.bytes, "a!bye");
                assert!(b.last);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(batch(&q), Poll::Ready(None)), "`c` never goes out");
        assert_eq!(q.push(b"d"), Pushed::Refused);

        // One at a time, the same.
        let q = Outbound::<Raw>::new(1 << 20, Admit::WithinLimit);
        q.push(b"!");
        q.push(b"c");
        let (_, w) = waker();
        let mut cx = Context::from_waker(&w);
        assert!(matches!(q.poll_item(&mut cx), Poll::Ready(Some(b"!"))));
        assert!(matches!(q.poll_item(&mut cx), Poll::Ready(None)));
    }

    #[test]
    fn the_body_is_woken_on_push_finish_and_the_limit() {
        let q = Outbound::<Raw>::new(10, Admit::WithinLimit);
        let (count, w) = waker();
        let mut cx = Context::from_waker(&w);
        assert!(matches!(q.poll_batch(&mut cx), Poll::Pending));
        assert_eq!(count.0.load(Ordering::SeqCst), 0);
        assert_eq!(q.push(b"a"), Pushed::Queued);
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "woken by the push");
        assert!(matches!(q.poll_item(&mut cx), Poll::Ready(Some(b"a"))));
        assert!(matches!(q.poll_item(&mut cx), Poll::Pending));
        assert_eq!(q.push(b"too long to fit"), Pushed::OverLimit);
        assert_eq!(count.0.load(Ordering::SeqCst), 2, "woken to see the end");
        assert!(matches!(q.poll_batch(&mut cx), Poll::Ready(None)));

        let q = Outbound::<Raw>::new(10, Admit::WithinLimit);
        assert!(matches!(q.poll_batch(&mut cx), Poll::Pending));
        q.finish();
        assert_eq!(count.0.load(Ordering::SeqCst), 3, "woken by finish");
    }
}
