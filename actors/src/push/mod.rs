//! The push gateway's engine (SPEC §6): switchboard holds an application's SSE clients, tells
//! the application who connected and who left (callbacks), and delivers the events it pushes by
//! connection token.
//!
//! [`PushHub`] is the token → connection registry. Each connection has one outbound queue
//! ([`crate::outbound::Outbound`] of [`Frame`]s, with a byte budget) drained by the transport's
//! response body, so events for one token go out in the order `/internal/send` accepted them. The transport owns a [`PushConnection`]
//! guard per client; dropping it (however the connection ends) reports the disconnect and
//! forgets the token, so tokens never leak.
//!
//! Callbacks run on one dedicated thread with its own HTTP client: a disconnect reported from a
//! `Drop` (or during shutdown, while the HTTP workers are being torn down) still goes out, and
//! the callback URL — configured by the operator, usually the application next door on
//! loopback or a private network — is not subject to the backend SSRF policy.
//!
//! No HTTP-framework types here: the transport (`src/http/push.rs`) maps outcomes to responses.
//!
//! # Layout
//! - `hub`: [`PushHub`], the token → connection registry, sends and shutdown.
//! - `connection`: [`PushConnection`], one client's guard, and its connect callback.
//! - `callbacks`: the callback thread, its HTTP client, retries and the callback URL.
//! - this file: settings, the event encoding and the types the transport matches on.

use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::time::Duration;

use crate::outbound::{Framing, Outbound};

mod callbacks;
mod connection;
mod counters;
mod hub;

pub use callbacks::{callback_target, strip_query};
pub use connection::PushConnection;
pub use hub::{PushHub, SHUTDOWN_CALLBACK_TIMEOUT};

/// One callback attempt may take this long (connect, answer and body) before it counts as
/// timed out: the client waiting on a connect callback gets 504 after it.
pub const CALLBACK_TIMEOUT: Duration = Duration::from_secs(5);

/// What the push gateway is configured with (from `SWITCHBOARD_PUSH_*`).
#[derive(Clone)]
pub struct PushSettings {
    /// The application's callback URL, without the secret.
    pub callback_url: String,
    /// Shared secret: sent to the application as `?secret=`, required on `/internal/send`.
    pub secret: String,
    /// Per-attempt callback timeout.
    pub callback_timeout: Duration,
    /// Bytes queued for one client past which it is a slow consumer and is disconnected.
    pub queue_limit: usize,
}

impl std::fmt::Debug for PushSettings {
    // Hand-written so the secret can never end up in a log line via `{:?}`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushSettings")
            .field("callback_url", &strip_query(&self.callback_url))
            .field("secret", &"[redacted]")
            .field("callback_timeout", &self.callback_timeout)
            .field("queue_limit", &self.queue_limit)
            .finish()
    }
}

/// Why a push connection ended, as reported in the disconnect callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DisconnectReason {
    /// The client went away (or its socket failed: the transport cannot tell the two apart).
    ClientClosed,
    /// The application ended it with `close: true`.
    ServerClosed,
    /// The broker ended it: the client could not keep up with its events.
    Error,
    /// The broker is shutting down.
    Shutdown,
}

impl DisconnectReason {
    /// The wire name (`client_closed`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClientClosed => "client_closed",
            Self::ServerClosed => "server_closed",
            Self::Error => "error",
            Self::Shutdown => "shutdown",
        }
    }

    fn index(self) -> usize {
        match self {
            Self::ClientClosed => 0,
            Self::ServerClosed => 1,
            Self::Error => 2,
            Self::Shutdown => 3,
        }
    }
}

/// One event as the application gives it: `{"name","data"}`. `data` that is a string is sent
/// as it is (one `data:` line per line); anything else is sent JSON-encoded.
#[derive(Debug, Clone, Deserialize)]
pub struct PushEvent {
    /// The SSE `event:` name; omitted → the browser's default `message` event.
    pub name: Option<String>,
    /// The payload; omitted → an empty `data:` line.
    pub data: Option<Value>,
}

/// Encodes `event` as one SSE frame (`event: <name>\ndata: <line>\n...\n\n`). A name with a
/// line break would split the frame, so it is refused.
pub fn encode_event(event: &PushEvent) -> Result<Bytes, String> {
    let mut out = String::new();
    if let Some(name) = event.name.as_deref().filter(|n| !n.is_empty()) {
        if name.contains(['\r', '\n']) {
            return Err("event.name must not contain line breaks".into());
        }
        out.push_str("event: ");
        out.push_str(name);
        out.push('\n');
    }
    let data = match &event.data {
        None => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
    };
    let data = data.replace("\r\n", "\n").replace('\r', "\n");
    for line in data.split('\n') {
        out.push_str("data: ");
        out.push_str(line);
        out.push('\n');
    }
    out.push('\n');
    Ok(Bytes::from(out))
}

/// One queued delivery: an encoded SSE frame (possibly empty) and whether the stream ends
/// after it.
#[derive(Debug)]
pub struct Frame {
    /// The encoded event (empty for a bare `close`).
    pub bytes: Bytes,
    /// End the client's stream after this frame (`close: true`).
    pub close: bool,
}

/// How push frames go out: already SSE-encoded by [`encode_event`], so written as they are;
/// a `close` frame is the last one.
pub struct PushFraming;

impl Framing for PushFraming {
    type Item = Frame;

    fn cost(frame: &Frame) -> usize {
        frame.bytes.len()
    }

    fn encode(frame: &Frame, out: &mut BytesMut) {
        out.extend_from_slice(&frame.bytes);
    }

    fn ends_stream(frame: &Frame) -> bool {
        frame.close
    }
}

/// One push client's outbound queue.
pub type PushQueue = Outbound<PushFraming>;

/// Why `/internal/send` could not deliver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendError {
    /// No open connection has this token (never existed, rejected, closed or closing).
    UnknownToken,
    /// The client had too much queued; it was disconnected (reason `error`).
    SlowConsumer,
}

/// Why a connect was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectError {
    /// The application answered this non-2xx status.
    Rejected(u16),
    /// The callback did not answer within the timeout.
    Timeout,
    /// The callback could not be reached (connection refused, DNS, broken answer).
    Unreachable(String),
    /// The connection was ended while its callback ran (shutdown began).
    Gone,
}

/// Why the broker refuses a new connection outright.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenError {
    /// `shutdown()` has begun.
    ShuttingDown,
}

/// What an accepted connect answer asked for.
#[derive(Debug, Default)]
pub struct Accepted {
    /// The encoded event to send at once, if the answer had a valid one.
    pub event: Option<Bytes>,
    /// End the stream right after that event.
    pub close: bool,
}

/// Counters for `/metrics` and the dashboard.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct PushStats {
    /// Accepted connections open now.
    pub connections_open: u64,
    /// Connections ever accepted.
    pub connections_total: u64,
    /// Connects the application rejected (non-2xx).
    pub connects_rejected: u64,
    /// Connects that failed because the callback timed out or was unreachable.
    pub connect_errors: u64,
    /// Callbacks the application answered (status below 500).
    pub callbacks_ok: u64,
    /// Callbacks that failed for good (transport error, timeout or 5xx after the retries).
    pub callbacks_failed: u64,
    /// Disconnect callback attempts that were retried.
    pub callback_retries: u64,
    /// `/internal/send` calls delivered to a connection's queue.
    pub sends_ok: u64,
    /// `/internal/send` calls for an unknown (or closing) token.
    pub sends_not_found: u64,
    /// Disconnects by reason.
    pub disconnects: DisconnectCounts,
}

/// Disconnects by reason.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct DisconnectCounts {
    /// `client_closed`.
    pub client_closed: u64,
    /// `server_closed`.
    pub server_closed: u64,
    /// `error`.
    pub error: u64,
    /// `shutdown`.
    pub shutdown: u64,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
