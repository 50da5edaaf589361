//! [`PushConnection`]: one client's side of the hub, owned by the transport's response body;
//! runs the connect callback and reports the disconnect when dropped.

use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::oneshot;

use super::callbacks::{CallbackError, Job};
use super::counters::bump;
#[cfg(test)]
use super::Frame;
use super::{
    encode_event, Accepted, ConnectError, DisconnectReason, PushEvent, PushHub, PushQueue,
};
use crate::outbound::Batch;

/// One client's side of the hub, owned by its response body. Dropping it reports the
/// disconnect (reason [`DisconnectReason::ClientClosed`] unless set otherwise) and forgets the
/// token, whichever way the connection ended.
pub struct PushConnection {
    pub(super) hub: Arc<PushHub>,
    pub(super) token: String,
    pub(super) request: Arc<Value>,
    /// The token's queue, shared with the hub's entry.
    pub(super) queue: Arc<PushQueue>,
    pub(super) reason: DisconnectReason,
}

impl PushConnection {
    /// The connection's token (what the application pushes to).
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Runs the connect callback. On 2xx the connection is open and the answer's optional
    /// event is returned; otherwise the token is forgotten without a disconnect callback.
    pub async fn connect(&mut self) -> Result<Accepted, ConnectError> {
        let hub = Arc::clone(&self.hub);
        let body = json!({"action": "connect", "token": &self.token, "request": &*self.request});
        let (tx, rx) = oneshot::channel();
        hub.dispatch(Job {
            body: Bytes::from(body.to_string()),
            attempts: 1,
            action: "connect",
            token: self.token.clone(),
            reply: Some(tx),
        });
        let result = rx.await.unwrap_or_else(|_| {
            Err(CallbackError::Unreachable(
                "the callback thread is gone".into(),
            ))
        });
        let reply = match result {
            Ok(reply) if (200..300).contains(&reply.status) => reply,
            Ok(reply) => {
                hub.forget(&self.token);
                bump(&hub.counters.rejected);
                return Err(ConnectError::Rejected(reply.status));
            }
            Err(e) => {
                hub.forget(&self.token);
                bump(&hub.counters.connect_errors);
                return Err(match e {
                    CallbackError::Timeout => ConnectError::Timeout,
                    CallbackError::Unreachable(m) => ConnectError::Unreachable(m),
                });
            }
        };
        {
            let mut conns = hub.conns.lock();
            let Some(entry) = conns.get_mut(&self.token) else {
                return Err(ConnectError::Gone);
            };
            entry.accepted = true;
        }
        bump(&hub.counters.open);
        bump(&hub.counters.total);
        Ok(parse_connect_answer(&self.token, &reply.body))
    }

    /// Polls for the queued frames, batched into one write; `last` once a `close: true` frame
    /// was taken (nothing follows it). `None` once the hub dropped the connection (shutdown,
    /// slow consumer) and everything queued was taken.
    pub fn poll_batch(&mut self, cx: &mut Context<'_>) -> Poll<Option<Batch>> {
        self.queue.poll_batch(cx)
    }

    /// The next queued frame on its own (the unit tests check order frame by frame).
    #[cfg(test)]
    pub(super) fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Frame>> {
        self.queue.poll_item(cx)
    }

    /// The stream ended because the application asked (`close: true`).
    pub fn mark_server_closed(&mut self) {
        self.reason = DisconnectReason::ServerClosed;
    }
}

impl Drop for PushConnection {
    fn drop(&mut self) {
        // Nothing is written any more: sends from now on are refused (unknown token).
        self.queue.close();
        self.hub.finish(&self.token, self.reason);
    }
}

/// The optional `{"event":{"name","data"},"close":bool}` of a 2xx connect answer. Anything
/// else (empty, not JSON, a bad event) is logged and ignored: the connect still succeeds.
fn parse_connect_answer(token: &str, body: &[u8]) -> Accepted {
    #[derive(Deserialize)]
    struct Answer {
        event: Option<PushEvent>,
        #[serde(default)]
        close: bool,
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Accepted::default();
    }
    let answer: Answer = match serde_json::from_slice(body) {
        Ok(a) => a,
        Err(e) => {
            log::warn!("push token={token}: ignoring the connect answer's body ({e})");
            return Accepted::default();
        }
    };
    let event = answer.event.as_ref().and_then(|ev| match encode_event(ev) {
        Ok(b) => Some(b),
        Err(e) => {
            log::warn!("push token={token}: ignoring the connect answer's event ({e})");
            None
        }
    });
    Accepted {
        event,
        close: answer.close,
    }
}
