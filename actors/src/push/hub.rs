//! [`PushHub`]: the process-wide token → connection registry. Sends queue on a connection's
//! outbound queue under a byte budget; every way a connection ends goes through `report`,
//! which sends the disconnect callback exactly once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};

use super::callbacks::{
    callback_target, dispatcher, percent_encode, strip_query, CallbackResult, Dispatch, Job,
};
use super::counters::{bump, Counters};
use super::{
    DisconnectCounts, DisconnectReason, Frame, OpenError, PushConnection, PushQueue, PushSettings,
    PushStats, SendError,
};
use crate::outbound::{Admit, Pushed};

/// Disconnect callbacks are tried this many times (transport errors and 5xx answers retry).
const DISCONNECT_ATTEMPTS: u32 = 3;
/// `shutdown()` waits at most this long for the `shutdown` disconnect callbacks.
pub const SHUTDOWN_CALLBACK_TIMEOUT: Duration = Duration::from_secs(5);

/// A registered connection.
pub(super) struct Entry {
    /// The token's queue, drained by the connection's response body.
    pub(super) queue: Arc<PushQueue>,
    pub(super) request: Arc<Value>,
    /// The connect callback answered 2xx (counts as open).
    pub(super) accepted: bool,
    /// A `close: true` is queued: later sends are refused.
    pub(super) closing: bool,
}

impl Drop for Entry {
    fn drop(&mut self) {
        // However the hub let go of the connection (slow consumer, shutdown, the body gone),
        // the body writes what is queued and ends.
        self.queue.finish();
    }
}

/// Process-wide push gateway state, shared by every HTTP worker.
pub struct PushHub {
    pub(super) conns: Mutex<HashMap<String, Entry>>,
    jobs: mpsc::UnboundedSender<Job>,
    pub(super) counters: Arc<Counters>,
    secret: String,
    queue_limit: usize,
    shutting_down: AtomicBool,
}

impl PushHub {
    /// Starts the callback thread and returns the hub. Fails only if the thread or its runtime
    /// cannot be created.
    pub fn start(settings: PushSettings) -> std::io::Result<Arc<PushHub>> {
        let (jobs, rx) = mpsc::unbounded_channel();
        let counters = Arc::new(Counters::default());
        let dispatch = Dispatch {
            target: callback_target(&settings.callback_url, &settings.secret),
            log_url: strip_query(&settings.callback_url).to_string(),
            secret_forms: [settings.secret.clone(), percent_encode(&settings.secret)],
            timeout: settings.callback_timeout,
            counters: Arc::clone(&counters),
        };
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("push-callbacks".into())
            .spawn(move || dispatcher(rx, dispatch, ready_tx))?;
        ready_rx
            .recv()
            .map_err(|_| std::io::Error::other("push callback thread died at start"))??;
        Ok(Arc::new(PushHub {
            conns: Mutex::new(HashMap::new()),
            jobs,
            counters,
            secret: settings.secret,
            queue_limit: settings.queue_limit,
            shutting_down: AtomicBool::new(false),
        }))
    }

    /// The shared secret, for the transport's constant-time check of `/internal/send`. Never
    /// log it.
    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// Whether `shutdown()` has begun (new connections are refused).
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    /// Registers a new client under a fresh token (uuid). `request` is `{"url","headers"}`,
    /// sent with every callback about it. Sends to the token are queued from now on, so an
    /// application may push while it is still answering the connect callback.
    pub fn open(self: &Arc<Self>, request: Value) -> Result<PushConnection, OpenError> {
        let token = uuid::Uuid::new_v4().to_string();
        let queue = Arc::new(PushQueue::new(self.queue_limit, Admit::WithinLimit));
        let request = Arc::new(request);
        {
            // The flag is read under the lock `shutdown()` drains with, so no entry can slip
            // in after the drain and miss its `shutdown` callback.
            let mut conns = self.conns.lock();
            if self.is_shutting_down() {
                return Err(OpenError::ShuttingDown);
            }
            conns.insert(
                token.clone(),
                Entry {
                    queue: Arc::clone(&queue),
                    request: Arc::clone(&request),
                    accepted: false,
                    closing: false,
                },
            );
        }
        Ok(PushConnection {
            hub: Arc::clone(self),
            token,
            request,
            queue,
            reason: DisconnectReason::ClientClosed,
        })
    }

    /// Queues `event` (an encoded frame, see [`encode_event`]) for `token`; with `close` the
    /// client's stream ends after it. Events for one token go out in the order of the calls.
    pub fn send(&self, token: &str, event: Option<Bytes>, close: bool) -> Result<(), SendError> {
        let bytes = event.unwrap_or_default();
        let mut conns = self.conns.lock();
        let Some(entry) = conns.get_mut(token).filter(|e| !e.closing) else {
            drop(conns);
            bump(&self.counters.sends_not_found);
            return Err(SendError::UnknownToken);
        };
        match entry.queue.push(Frame { bytes, close }) {
            Pushed::Queued => {
                entry.closing |= close;
                drop(conns);
                bump(&self.counters.sends_ok);
                Ok(())
            }
            Pushed::OverLimit => {
                let queued = entry.queue.queued();
                let entry = conns.remove(token);
                drop(conns);
                if let Some(entry) = entry {
                    log::warn!(
                        "push token={token} too slow ({queued} bytes queued); disconnecting it"
                    );
                    self.report(token, entry, DisconnectReason::Error, None);
                }
                Err(SendError::SlowConsumer)
            }
            Pushed::Refused => {
                // The body is gone and its guard is about to forget the token.
                drop(conns);
                bump(&self.counters.sends_not_found);
                Err(SendError::UnknownToken)
            }
        }
    }

    /// Ends every open push stream and sends their `shutdown` disconnect callbacks, waiting for
    /// them at most [`SHUTDOWN_CALLBACK_TIMEOUT`]. Call it while the runtime still runs, before
    /// the HTTP server stops. New connections are refused from now on. Returns how many
    /// connections were ended.
    pub async fn shutdown(&self) -> usize {
        let drained: Vec<(String, Entry)> = {
            let mut conns = self.conns.lock();
            self.shutting_down.store(true, Ordering::Release);
            conns.drain().collect()
        };
        let n = drained.len();
        let mut waits = Vec::with_capacity(n);
        for (token, entry) in drained {
            let (tx, rx) = oneshot::channel();
            // Dropping the entry finishes its queue: the body sends what is queued, then ends.
            self.report(&token, entry, DisconnectReason::Shutdown, Some(tx));
            waits.push(rx);
        }
        if n > 0 {
            log::info!("push gateway shutting down: ending {n} connections");
        }
        let all = futures_util::future::join_all(waits);
        if tokio::time::timeout(SHUTDOWN_CALLBACK_TIMEOUT, all)
            .await
            .is_err()
        {
            log::warn!(
                "push gateway: not every shutdown callback finished within {} s",
                SHUTDOWN_CALLBACK_TIMEOUT.as_secs()
            );
        }
        n
    }

    /// A snapshot of the counters (serializable, for `/metrics`).
    pub fn stats(&self) -> PushStats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        PushStats {
            connections_open: get(&c.open),
            connections_total: get(&c.total),
            connects_rejected: get(&c.rejected),
            connect_errors: get(&c.connect_errors),
            callbacks_ok: get(&c.callbacks_ok),
            callbacks_failed: get(&c.callbacks_failed),
            callback_retries: get(&c.retries),
            sends_ok: get(&c.sends_ok),
            sends_not_found: get(&c.sends_not_found),
            disconnects: DisconnectCounts {
                client_closed: get(&c.disconnects[0]),
                server_closed: get(&c.disconnects[1]),
                error: get(&c.disconnects[2]),
                shutdown: get(&c.disconnects[3]),
            },
        }
    }

    /// Registered tokens (accepted or still connecting); for tests and leak checks.
    pub fn registered(&self) -> usize {
        self.conns.lock().len()
    }

    /// Hands a callback to the dispatcher thread.
    pub(super) fn dispatch(&self, job: Job) {
        if let Err(mpsc::error::SendError(job)) = self.jobs.send(job) {
            log::error!(
                "push {} callback for token={} dropped: the callback thread is gone",
                job.action,
                job.token
            );
        }
    }

    /// Forgets nothing (the caller removed `entry`); sends its disconnect callback.
    fn report(
        &self,
        token: &str,
        entry: Entry,
        reason: DisconnectReason,
        reply: Option<oneshot::Sender<CallbackResult>>,
    ) {
        if entry.accepted {
            self.counters.open.fetch_sub(1, Ordering::Relaxed);
        }
        bump(&self.counters.disconnects[reason.index()]);
        log::info!("push token={token} disconnected ({})", reason.as_str());
        let body = json!({
            "action": "disconnect",
            "token": token,
            "reason": reason,
            "request": &*entry.request,
        });
        self.dispatch(Job {
            body: Bytes::from(body.to_string()),
            attempts: DISCONNECT_ATTEMPTS,
            action: "disconnect",
            token: token.to_string(),
            reply,
        });
    }

    /// Removes `token` and reports it with `reason`, unless someone already did.
    pub(super) fn finish(&self, token: &str, reason: DisconnectReason) {
        let entry = self.conns.lock().remove(token);
        if let Some(entry) = entry {
            self.report(token, entry, reason, None);
        }
    }

    /// Removes `token` without a callback (a rejected or failed connect: the application
    /// never accepted it).
    pub(super) fn forget(&self, token: &str) {
        self.conns.lock().remove(token);
    }
}
