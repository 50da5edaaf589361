//! The outbound side of one WebSocket connection, kept outside its actor (see `ws.rs`):
//! session events wait in the connection's [`WsQueue`] (the shared
//! [`switchboard_actors::outbound::Outbound`] queue, framed as text frames by [`WsText`]) and
//! the response body ([`Metered`]) writes every event queued since its last turn in one chunk,
//! without waking the actor.
//!
//! The queue also counts the actor's own frames, because while a slow client's socket is full
//! the dispatcher stops polling the body and the actor cannot run: the count is what bounds
//! memory (over the limit, events are refused and the connection is closed with 4009 once it
//! can write again).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::Stream;
use switchboard_actors::events::Encoded;
use switchboard_actors::outbound::{Framing, Outbound};

/// Session events as unmasked WebSocket text frames; an event costs its frame's bytes.
pub struct WsText;

impl Framing for WsText {
    type Item = Arc<Encoded>;

    fn cost(event: &Arc<Encoded>) -> usize {
        frame_len(event.json.len())
    }

    fn encode(event: &Arc<Encoded>, out: &mut BytesMut) {
        put_text_frame(out, event.json.as_bytes());
    }
}

/// One WebSocket connection's outbound queue, shared by the session-side sink, the actor and
/// the body wrapper.
pub type WsQueue = Outbound<WsText>;

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
    out.reserve(frame_len(payload.len()));
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

/// The WebSocket response body: the actor's frames and the queue's events, alternating when
/// both have something, with the bytes taken released from the queue's count.
pub struct Metered<S> {
    inner: Pin<Box<S>>,
    queue: Arc<WsQueue>,
    /// The queue was served last time: give the actor's frames (pongs, closes) their turn.
    inner_first: bool,
}

impl<S> Metered<S>
where
    S: Stream<Item = Result<Bytes, actix_web::Error>>,
{
    /// Wraps the actor's body (`WebsocketContext`) with the connection's queue.
    pub fn new(inner: S, queue: Arc<WsQueue>) -> Self {
        Self {
            inner: Box::pin(inner),
            queue,
            inner_first: false,
        }
    }

    fn poll_inner(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, actix_web::Error>>> {
        let polled = self.inner.as_mut().poll_next(cx);
        if let Poll::Ready(Some(Ok(chunk))) = &polled {
            self.queue.taken(chunk.len());
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
        if std::mem::take(&mut this.inner_first) {
            if let ready @ Poll::Ready(_) = this.poll_inner(cx) {
                return ready;
            }
        }
        // Registers this task with the queue before looking, so an event pushed in between
        // still wakes us. The queue's end (shut, over the limit) only means "nothing from
        // it": the actor's stream decides when the body ends.
        if let Poll::Ready(Some(batch)) = this.queue.poll_batch(cx) {
            this.inner_first = true;
            return Poll::Ready(Some(Ok(batch.bytes)));
        }
        this.poll_inner(cx)
    }
}

impl<S> Drop for Metered<S> {
    fn drop(&mut self) {
        // The connection is gone: the session's next delivery detaches it.
        drop(self.queue.close());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Waker;
    use switchboard_actors::events::EventBody;
    use switchboard_actors::outbound::{Admit, Pushed};

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

    fn take_frames(queue: &WsQueue) -> Option<Bytes> {
        let mut cx = Context::from_waker(Waker::noop());
        match queue.poll_batch(&mut cx) {
            Poll::Ready(Some(batch)) => Some(batch.bytes),
            _ => None,
        }
    }

    #[test]
    fn the_limit_refuses_and_closing_keeps_the_rest_for_the_actor() {
        let frame = frame_len(event().json.len());
        let queue = WsQueue::new(frame * 2, Admit::UntilOver);
        assert!(matches!(queue.push(event()), Pushed::Queued));
        assert!(matches!(queue.push(event()), Pushed::Queued));
        assert!(matches!(queue.push(event()), Pushed::Queued));
        assert!(matches!(queue.push(event()), Pushed::OverLimit));
        assert!(matches!(queue.push(event()), Pushed::Refused));
        let frames = take_frames(&queue).expect("three frames");
        assert_eq!(frames.len(), 3 * frame);

        let queue = WsQueue::new(1 << 20, Admit::UntilOver);
        assert!(matches!(queue.push(event()), Pushed::Queued));
        assert_eq!(queue.close().len(), 1, "the queued event goes to the actor");
        assert!(matches!(queue.push(event()), Pushed::Refused));
        assert!(
            take_frames(&queue).is_none(),
            "nothing after the close frame"
        );
    }
}
