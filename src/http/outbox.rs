//! The outbound side of one WebSocket connection, kept outside its actor (see `ws.rs`):
//! session events wait in an [`Outbox`] and the response body ([`Metered`]) writes them as text
//! frames, every event queued since its last turn in one chunk, without waking the actor.
//!
//! The outbox also keeps the byte count of everything queued for the client, because while a
//! slow client's socket is full the dispatcher stops polling the body and the actor cannot run:
//! the count is what bounds memory (over the limit, events are refused and the connection is
//! closed with 4009 once it can write again).

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::task::AtomicWaker;
use futures_util::Stream;
use switchboard_actors::events::Encoded;

/// See the module docs. Shared by the session-side sink, the actor and the body wrapper.
pub struct Outbox {
    /// Events handed over by the session and not yet written into a chunk.
    events: parking_lot::Mutex<VecDeque<Arc<Encoded>>>,
    /// The response body's task, woken when an event arrives.
    waker: AtomicWaker,
    /// The connection is closing (its close frame is written or about to be) or its body was
    /// dropped: nothing more is queued, and nothing queued is written after the close.
    shut: AtomicBool,
    /// Frame bytes handed to the connection and not yet taken by the dispatcher.
    queued: AtomicUsize,
    /// The limit was passed: refuse events, close with 4009 when possible.
    over: AtomicBool,
    /// Queued bytes allowed before the client counts as a slow consumer.
    limit: usize,
}

/// What became of an event handed to [`Outbox::push`].
pub enum Pushed {
    Queued,
    /// The connection is closing or gone.
    Refused,
    /// This event passed the queue limit: it was refused and the client is a slow consumer.
    OverLimit,
}

impl Outbox {
    /// An empty outbox allowing `limit` queued bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            events: parking_lot::Mutex::new(VecDeque::new()),
            waker: AtomicWaker::new(),
            shut: AtomicBool::new(false),
            queued: AtomicUsize::new(0),
            over: AtomicBool::new(false),
            limit,
        }
    }

    /// Queues a session event and wakes the body, unless the connection is closing, gone or
    /// over its limit.
    pub fn push(&self, event: Arc<Encoded>) -> Pushed {
        if self.shut.load(Ordering::Acquire) || self.over.load(Ordering::Acquire) {
            return Pushed::Refused;
        }
        let before = self
            .queued
            .fetch_add(frame_len(event.json.len()), Ordering::AcqRel);
        if before > self.limit {
            self.over.store(true, Ordering::Release);
            return Pushed::OverLimit;
        }
        self.events.lock().push_back(event);
        self.waker.wake();
        Pushed::Queued
    }

    /// Counts a frame of `payload` bytes the actor writes itself (heartbeats, replies).
    pub fn count(&self, payload: usize) {
        self.queued.fetch_add(frame_len(payload), Ordering::AcqRel);
    }

    /// Shuts the outbox and returns what is still queued, for the actor to write before its
    /// close frame.
    pub fn close(&self) -> VecDeque<Arc<Encoded>> {
        self.shut.store(true, Ordering::Release);
        std::mem::take(&mut *self.events.lock())
    }

    /// Every waiting event as text frames, in one buffer (one write for a burst of tokens).
    fn take_frames(&self) -> Option<Bytes> {
        if self.shut.load(Ordering::Acquire) {
            return None;
        }
        let events = std::mem::take(&mut *self.events.lock());
        if events.is_empty() {
            return None;
        }
        let size = events.iter().map(|e| frame_len(e.json.len())).sum();
        let mut out = BytesMut::with_capacity(size);
        for event in &events {
            put_text_frame(&mut out, event.json.as_bytes());
        }
        Some(out.freeze())
    }

    /// The dispatcher took `bytes`. Saturating: pings, pongs and close frames are taken
    /// without having been counted (a few bytes each).
    fn taken(&self, bytes: usize) {
        let _ = self
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                Some(q.saturating_sub(bytes))
            });
    }
}

/// Size of an unmasked server frame carrying `payload` bytes.
pub fn frame_len(payload: usize) -> usize {
    let header = match payload {
        0..=125 => 2,
        126..=65535 => 4,
        _ => 10,
    };
    payload + header
}

/// An unmasked, unfragmented server text frame (RFC 6455 §5.2).
fn put_text_frame(out: &mut BytesMut, payload: &[u8]) {
    out.put_u8(0x81); // FIN + text
    match payload.len() {
        n @ 0..=125 => out.put_u8(n as u8),
        n @ 126..=65535 => {
            out.put_u8(126);
            out.put_u16(n as u16);
        }
        n => {
            out.put_u8(127);
            out.put_u64(n as u64);
        }
    }
    out.put_slice(payload);
}

/// The WebSocket response body: the actor's frames and the outbox's events, alternating when
/// both have something, with the bytes taken subtracted from the queue.
pub struct Metered<S> {
    inner: Pin<Box<S>>,
    outbox: Arc<Outbox>,
    /// The outbox was served last time: give the actor's frames (pongs, closes) their turn.
    inner_first: bool,
}

impl<S> Metered<S>
where
    S: Stream<Item = Result<Bytes, actix_web::Error>>,
{
    /// Wraps the actor's body (`WebsocketContext`) with the connection's outbox.
    pub fn new(inner: S, outbox: Arc<Outbox>) -> Self {
        Self {
            inner: Box::pin(inner),
            outbox,
            inner_first: false,
        }
    }

    fn poll_inner(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, actix_web::Error>>> {
        let polled = self.inner.as_mut().poll_next(cx);
        if let Poll::Ready(Some(Ok(chunk))) = &polled {
            self.outbox.taken(chunk.len());
        }
        polled
    }
}

impl<S> Stream for Metered<S>
where
    S: Stream<Item = Result<Bytes, actix_web::Error>>,
{
    type Item = Result<Bytes, actix_web::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        // Registered before looking, so an event pushed in between still wakes us.
        this.outbox.waker.register(cx.waker());
        if std::mem::take(&mut this.inner_first) {
            if let ready @ Poll::Ready(_) = this.poll_inner(cx) {
                return ready;
            }
        }
        if let Some(frames) = this.outbox.take_frames() {
            this.outbox.taken(frames.len());
            this.inner_first = true;
            return Poll::Ready(Some(Ok(frames)));
        }
        this.poll_inner(cx)
    }
}

impl<S> Drop for Metered<S> {
    fn drop(&mut self) {
        // The connection is gone: the session's next delivery detaches it.
        self.outbox.shut.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_actors::events::EventBody;

    #[test]
    fn text_frames_decode_with_actix_http_client_codec() {
        use actix_codec::Decoder;
        for n in [0, 5, 125, 126, 300, 65_535, 65_536, 70_000] {
            let payload = "x".repeat(n);
            let mut buf = BytesMut::new();
            put_text_frame(&mut buf, payload.as_bytes());
            assert_eq!(buf.len(), frame_len(n), "{n}");
            // The client side of the codec reads unmasked frames, as a browser does.
            let mut codec = actix_http::ws::Codec::new().client_mode().max_size(1 << 20);
            match codec.decode(&mut buf) {
                Ok(Some(actix_http::ws::Frame::Text(t))) => assert_eq!(t.len(), n),
                other => panic!("{n}: {other:?}"),
            }
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn frame_lengths() {
        assert_eq!(frame_len(10), 12);
        assert_eq!(frame_len(200), 204);
        assert_eq!(frame_len(70_000), 70_010);
    }

    fn event() -> Arc<Encoded> {
        Encoded::new(Some(1), &EventBody::Heartbeat {})
    }

    #[test]
    fn the_limit_refuses_and_closing_keeps_the_rest_for_the_actor() {
        let frame = frame_len(event().json.len());
        let outbox = Outbox::new(frame * 2);
        assert!(matches!(outbox.push(event()), Pushed::Queued));
        assert!(matches!(outbox.push(event()), Pushed::Queued));
        assert!(matches!(outbox.push(event()), Pushed::Queued));
        assert!(matches!(outbox.push(event()), Pushed::OverLimit));
        assert!(matches!(outbox.push(event()), Pushed::Refused));
        let frames = outbox.take_frames().expect("three frames");
        assert_eq!(frames.len(), 3 * frame);

        let outbox = Outbox::new(1 << 20);
        assert!(matches!(outbox.push(event()), Pushed::Queued));
        assert_eq!(
            outbox.close().len(),
            1,
            "the queued event goes to the actor"
        );
        assert!(matches!(outbox.push(event()), Pushed::Refused));
        assert!(
            outbox.take_frames().is_none(),
            "nothing after the close frame"
        );
    }
}
