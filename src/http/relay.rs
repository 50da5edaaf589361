//! The response body of a committed proxied request: upstream bytes relayed as they arrive,
//! with the timeouts, keep-alive comments and explicit error ending of SPEC §2.
//!
//! Dropping a `RelayBody` (the client went away) drops the upstream response with it; awc then
//! closes that TCP connection instead of returning it to the pool, so the backend sees the close
//! and stops generating.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use awc::error::PayloadError;
use bytes::Bytes;
use futures_util::Stream;
use switchboard_actors::routing::InFlightGuard;
use switchboard_actors::silence::SilenceTimer;
use switchboard_actors::usage::UsageWatch;
use tokio::sync::futures::OwnedNotified;
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};

use crate::errors::ApiError;
use crate::metrics::GatewayMetrics;

/// An SSE comment that keeps idle proxies (60 s timeouts) from closing a silent stream.
pub const KEEPALIVE_COMMENT: &[u8] = b": keepalive\n\n";

/// Fired when the shutdown drain times out: every committed SSE relay still running ends with
/// an explicit `shutdown` error event instead of being cut off (SPEC §2: never a silent end).
#[derive(Debug, Default)]
pub struct DrainSignal {
    fired: AtomicBool,
    notify: Arc<Notify>,
}

impl DrainSignal {
    /// Ends every waiting relay (and any polled later).
    pub fn fire(&self) {
        self.fired.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    fn is_fired(&self) -> bool {
        self.fired.load(Ordering::Acquire)
    }
}

/// A relay's registration with the [`DrainSignal`].
struct DrainWatch {
    signal: Arc<DrainSignal>,
    /// Registers the relay's waker with the `Notify`. Kept alive (dropping it unregisters)
    /// but polled once only: a waiting `Notified` takes the `Notify`'s lock on every poll,
    /// and the relay's task never changes its waker.
    notified: Pin<Box<OwnedNotified>>,
    registered: bool,
}

impl DrainWatch {
    fn new(signal: Arc<DrainSignal>) -> Self {
        let notified = Box::pin(Arc::clone(&signal.notify).notified_owned());
        Self {
            signal,
            notified,
            registered: false,
        }
    }

    fn poll_fired(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.registered {
            self.registered = true;
            // Register first, then look at the flag: a fire in between is seen.
            if self.notified.as_mut().poll(cx).is_ready() {
                return true;
            }
        }
        self.signal.is_fired()
    }
}

/// The upstream body, boxed so relay does not name awc's decoder types.
pub type UpstreamBody = Pin<Box<dyn Stream<Item = Result<Bytes, PayloadError>>>>;

/// Timers of one relay, from configuration.
#[derive(Debug, Clone, Copy)]
pub struct RelayTimers {
    /// Silence allowed before the first byte (after commit) and between chunks.
    pub idle: Duration,
    /// Whole-request deadline, measured from when the request arrived.
    pub deadline: Instant,
    /// Silence after which an SSE stream gets a keep-alive comment.
    pub keepalive: Duration,
}

/// What arrived from the backend at commit time.
pub struct UpstreamSide {
    pub body: UpstreamBody,
    /// The chunk that committed the response, if one did.
    pub first: Option<Bytes>,
    /// `text/event-stream` (keep-alives and error events apply).
    pub is_sse: bool,
    /// The declared `Content-Length`, if any.
    pub expected_len: Option<u64>,
}

/// Who the relay answers to: the request's id, its backend slot, the counters.
pub struct RequestSide {
    pub guard: InFlightGuard,
    /// Size of the request body: the prompt-token estimate when the backend reports no usage.
    pub request_bytes: usize,
    pub request_id: String,
    pub metrics: Arc<GatewayMetrics>,
    pub drain: Arc<DrainSignal>,
}

/// See the module docs.
pub struct RelayBody {
    upstream: UpstreamBody,
    /// The chunk that committed the response, sent first.
    first: Option<Bytes>,
    /// Whether the body is `text/event-stream` (keep-alives and error events are SSE-only).
    is_sse: bool,
    /// Silence of the upstream (the idle timeout).
    idle: SilenceTimer,
    /// Silence towards the client (the keep-alive comment).
    keepalive: SilenceTimer,
    deadline: Pin<Box<Sleep>>,
    timers: RelayTimers,
    /// Ended: the upstream finished, or a failure was reported and its error sent.
    done: bool,
    /// The end-of-stream marker of an OpenAI stream was relayed. awc reports a chunked body
    /// cut off by a closed socket as a clean end, so an SSE stream that ends without it is
    /// treated as broken.
    done_marker: DoneMarker,
    /// Declared `Content-Length` and the bytes relayed so far (a short body is broken too).
    expected_len: Option<u64>,
    relayed: u64,
    /// Counts the request in the backend's `in_flight` until the body is dropped.
    guard: InFlightGuard,
    /// The backend's reported usage, found as the bytes pass (`switchboard_tokens_total`).
    usage: UsageWatch,
    request_bytes: usize,
    request_id: String,
    /// Counts a client that leaves before the end.
    metrics: Arc<GatewayMetrics>,
    /// SSE relays only: ends the stream with an error event when the shutdown drain times out.
    drain: Option<DrainWatch>,
}

impl Drop for RelayBody {
    fn drop(&mut self) {
        if !self.done {
            // The client went away first; dropping `upstream` closes that connection.
            self.metrics.client_disconnected();
            log::info!(
                "request_id={} client disconnected; upstream closed",
                self.request_id
            );
        }
    }
}

impl RelayBody {
    /// Wraps an upstream body whose first chunk (if any) already arrived.
    pub fn new(upstream: UpstreamSide, timers: RelayTimers, request: RequestSide) -> Self {
        let UpstreamSide {
            body: upstream,
            first,
            is_sse,
            expected_len,
        } = upstream;
        let RequestSide {
            guard,
            request_bytes,
            request_id,
            metrics,
            drain,
        } = request;
        Self {
            drain: is_sse.then(|| DrainWatch::new(drain)),
            metrics,
            done_marker: DoneMarker::default(),
            expected_len,
            relayed: 0,
            upstream,
            first,
            is_sse,
            idle: SilenceTimer::new(timers.idle, None),
            keepalive: SilenceTimer::new(timers.keepalive, None),
            deadline: Box::pin(tokio::time::sleep_until(timers.deadline)),
            timers,
            done: false,
            guard,
            usage: UsageWatch::default(),
            request_bytes,
            request_id,
        }
    }

    fn relay(&mut self, chunk: Bytes) -> Poll<Option<Result<Bytes, std::io::Error>>> {
        self.saw_traffic();
        self.relayed += chunk.len() as u64;
        if self.is_sse {
            self.done_marker.feed(&chunk);
        }
        self.usage.feed(&chunk);
        Poll::Ready(Some(Ok(chunk)))
    }

    /// The upstream body ended; decide whether it ended whole.
    fn finish(&mut self) -> Poll<Option<Result<Bytes, std::io::Error>>> {
        if let Some(len) = self.expected_len {
            if self.relayed < len {
                return self.fail(format!("body ended after {} of {len} bytes", self.relayed));
            }
        } else if self.is_sse && !self.done_marker.ended_cleanly() {
            return self.fail("stream ended without data: [DONE] (connection lost)".into());
        }
        if let Some(usage) = self.usage.usage(self.request_bytes, self.is_sse) {
            self.guard.backend().tokens.add(&usage);
        }
        self.done = true;
        Poll::Ready(None)
    }

    fn saw_traffic(&mut self) {
        self.idle.touch();
        self.keepalive.touch();
    }

    /// Ends the stream after a post-commit failure: the backend is marked (passive check) and
    /// the client gets an explicit error, never a silent clean end.
    fn fail(&mut self, reason: String) -> Poll<Option<Result<Bytes, std::io::Error>>> {
        self.done = true;
        let backend = self.guard.backend();
        log::warn!(
            "request_id={} backend={} stream failed after commit: {reason}",
            self.request_id,
            backend.id
        );
        backend.report_failure(reason.clone());
        if self.is_sse {
            let err = ApiError::upstream_failed(format!("upstream stream failed: {reason}"));
            Poll::Ready(Some(Ok(error_event(&err))))
        } else {
            Poll::Ready(Some(Err(std::io::Error::other(reason))))
        }
    }

    /// Ends an SSE stream that the shutdown drain cancelled; the backend did nothing wrong.
    fn shut_down(&mut self) -> Poll<Option<Result<Bytes, std::io::Error>>> {
        self.done = true;
        log::warn!(
            "request_id={} stream cancelled: shutdown drain timed out",
            self.request_id
        );
        let err = ApiError::shutting_down();
        Poll::Ready(Some(Ok(error_event(&err))))
    }
}

/// `data: {"error":{...}}` and the blank line that ends the event.
fn error_event(err: &ApiError) -> Bytes {
    let mut line = b"data: ".to_vec();
    line.extend_from_slice(err.body().to_string().as_bytes());
    line.extend_from_slice(b"\n\n");
    Bytes::from(line)
}

impl Stream for RelayBody {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        if let Some(first) = this.first.take() {
            return this.relay(first);
        }
        match this.upstream.as_mut().poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => return this.relay(chunk),
            Poll::Ready(Some(Err(e))) => return this.fail(e.to_string()),
            Poll::Ready(None) => return this.finish(),
            Poll::Pending => {}
        }
        if this.drain.as_mut().is_some_and(|d| d.poll_fired(cx)) {
            return this.shut_down();
        }
        if this.deadline.as_mut().poll(cx).is_ready() {
            return this.fail("total request timeout reached".into());
        }
        if this.idle.poll_elapsed(cx).is_ready() {
            let secs = this.timers.idle.as_secs_f64();
            return this.fail(format!("upstream silent for {secs:.0} s"));
        }
        if this.is_sse && this.keepalive.poll_elapsed(cx).is_ready() {
            this.keepalive.touch();
            // Re-arms the timer (and registers the waker) before we hand out the comment.
            let _ = this.keepalive.poll_elapsed(cx);
            return Poll::Ready(Some(Ok(Bytes::from_static(KEEPALIVE_COMMENT))));
        }
        Poll::Pending
    }
}

/// Watches an SSE byte stream for its end marker: a line that is exactly `data: [DONE]`
/// (or `data:[DONE]`), also when it is split across chunks. The text `[DONE]` inside a model's
/// answer is not it: an answer that says "[DONE]" and is then cut off is a failure.
/// Allocation-free: it keeps only the start of the current line.
#[derive(Default)]
struct DoneMarker {
    /// The first bytes of the line being read.
    line: [u8; LINE_KEEP],
    line_len: usize,
    /// The line being read is longer than any marker line.
    line_long: bool,
    seen: bool,
}

/// Longer than any accepted marker line (`data: [DONE]\r`).
const LINE_KEEP: usize = 16;

impl DoneMarker {
    fn feed(&mut self, chunk: &[u8]) {
        for &b in chunk {
            if b == b'\n' {
                self.seen |= self.line_is_marker();
                self.line_len = 0;
                self.line_long = false;
            } else if self.line_len < LINE_KEEP {
                self.line[self.line_len] = b;
                self.line_len += 1;
            } else {
                self.line_long = true;
            }
        }
    }

    fn line_is_marker(&self) -> bool {
        let line = &self.line[..self.line_len];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        !self.line_long && (line == b"data: [DONE]" || line == b"data:[DONE]")
    }

    /// The marker line arrived (the last line may lack its newline).
    fn ended_cleanly(&self) -> bool {
        self.seen || self.line_is_marker()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn done_marker_is_found_whole_or_split() {
        let stream = b"data: {\"x\":1}\n\ndata: [DONE]\n\n";
        for split in 0..stream.len() {
            let mut m = DoneMarker::default();
            m.feed(&stream[..split]);
            m.feed(&stream[split..]);
            assert!(m.seen, "split at {split}");
        }
        let mut m = DoneMarker::default();
        for b in stream.iter() {
            m.feed(std::slice::from_ref(b));
        }
        assert!(m.seen);
        let mut none = DoneMarker::default();
        none.feed(b"data: {\"content\":\"[DONE\"}\n\n");
        assert!(!none.seen);
    }

    #[test]
    fn done_in_the_answer_text_then_a_cut_is_not_a_clean_end() {
        // The model says "[DONE]" (whole, and as its own data value inside JSON), then the
        // stream is cut: no marker line.
        let stream: &[u8] = b"data: {\"choices\":[{\"delta\":{\"content\":\"[DONE]\"}}]}\n\n\
            data: {\"choices\":[{\"delta\":{\"content\":\" data: [DONE]\"}}]}\n\n\
            : [DONE]\n\ndata: [DONE] not yet\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"[DO";
        for split in 0..stream.len() {
            let mut m = DoneMarker::default();
            m.feed(&stream[..split]);
            m.feed(&stream[split..]);
            assert!(!m.ended_cleanly(), "split at {split}");
        }
        // CRLF line ends, no space after the colon, and a last line without its newline count.
        for whole in [
            &b"data: {}\r\n\r\ndata: [DONE]\r\n\r\n"[..],
            b"data:[DONE]\n\n",
            b"data: [DONE]",
        ] {
            let mut m = DoneMarker::default();
            for b in whole {
                m.feed(std::slice::from_ref(b));
            }
            assert!(m.ended_cleanly(), "{}", String::from_utf8_lossy(whole));
        }
    }
}
