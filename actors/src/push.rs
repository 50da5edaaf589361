//! The push gateway's engine (SPEC §6): switchboard holds an application's SSE clients, tells
//! the application who connected and who left (callbacks), and delivers the events it pushes by
//! connection token.
//!
//! [`PushHub`] is the token → connection registry. Each connection has one unbounded channel
//! (with a byte budget) drained by the transport's response body, so events for one token go
//! out in the order `/internal/send` accepted them. The transport owns a [`PushConnection`]
//! guard per client; dropping it (however the connection ends) reports the disconnect and
//! forgets the token, so tokens never leak.
//!
//! Callbacks run on one dedicated thread with its own HTTP client: a disconnect reported from a
//! `Drop` (or during shutdown, while the HTTP workers are being torn down) still goes out, and
//! the callback URL — configured by the operator, usually the application next door on
//! loopback or a private network — is not subject to the backend SSRF policy.
//!
//! No HTTP-framework types here: the transport (`src/http/push.rs`) maps outcomes to responses.

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};

/// One callback attempt may take this long (connect, answer and body) before it counts as
/// timed out: the client waiting on a connect callback gets 504 after it.
pub const CALLBACK_TIMEOUT: Duration = Duration::from_secs(5);
/// Disconnect callbacks are tried this many times (transport errors and 5xx answers retry).
const DISCONNECT_ATTEMPTS: u32 = 3;
/// Backoff before retry n is n × this.
const RETRY_BACKOFF: Duration = Duration::from_millis(250);
/// `shutdown()` waits at most this long for the `shutdown` disconnect callbacks.
pub const SHUTDOWN_CALLBACK_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections kept to the callback application at most (callbacks past it wait their turn).
const CALLBACK_POOL_LIMIT: usize = 64;
/// Largest callback answer read (a connect answer carries at most one event).
const CALLBACK_BODY_LIMIT: usize = 1024 * 1024;

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

#[derive(Default)]
struct Counters {
    open: AtomicU64,
    total: AtomicU64,
    rejected: AtomicU64,
    connect_errors: AtomicU64,
    callbacks_ok: AtomicU64,
    callbacks_failed: AtomicU64,
    retries: AtomicU64,
    sends_ok: AtomicU64,
    sends_not_found: AtomicU64,
    disconnects: [AtomicU64; 4],
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// A registered connection.
struct Entry {
    tx: mpsc::UnboundedSender<Frame>,
    queued: Arc<AtomicUsize>,
    request: Arc<Value>,
    /// The connect callback answered 2xx (counts as open).
    accepted: bool,
    /// A `close: true` is queued: later sends are refused.
    closing: bool,
}

/// What a callback got back.
#[derive(Debug)]
struct Reply {
    status: u16,
    body: Bytes,
}

#[derive(Debug)]
enum CallbackError {
    Timeout,
    Unreachable(String),
}

impl std::fmt::Display for CallbackError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Timeout => f.write_str("timed out"),
            Self::Unreachable(e) => f.write_str(e),
        }
    }
}

type CallbackResult = Result<Reply, CallbackError>;

/// A callback for the dispatcher thread.
struct Job {
    body: Bytes,
    attempts: u32,
    action: &'static str,
    token: String,
    reply: Option<oneshot::Sender<CallbackResult>>,
}

/// Process-wide push gateway state, shared by every HTTP worker.
pub struct PushHub {
    conns: Mutex<HashMap<String, Entry>>,
    jobs: mpsc::UnboundedSender<Job>,
    counters: Arc<Counters>,
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
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
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
                    tx,
                    queued: Arc::clone(&queued),
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
            rx,
            queued,
            reason: DisconnectReason::ClientClosed,
        })
    }

    /// Queues `event` (an encoded frame, see [`encode_event`]) for `token`; with `close` the
    /// client's stream ends after it. Events for one token go out in the order of the calls.
    pub fn send(&self, token: &str, event: Option<Bytes>, close: bool) -> Result<(), SendError> {
        let bytes = event.unwrap_or_default();
        let cost = bytes.len();
        let mut conns = self.conns.lock();
        let Some(entry) = conns.get_mut(token).filter(|e| !e.closing) else {
            drop(conns);
            bump(&self.counters.sends_not_found);
            return Err(SendError::UnknownToken);
        };
        let queued = entry.queued.load(Ordering::Acquire);
        if queued.saturating_add(cost) > self.queue_limit {
            let entry = conns.remove(token);
            drop(conns);
            if let Some(entry) = entry {
                log::warn!("push token={token} too slow ({queued} bytes queued); disconnecting it");
                self.report(token, entry, DisconnectReason::Error, None);
            }
            return Err(SendError::SlowConsumer);
        }
        entry.queued.fetch_add(cost, Ordering::AcqRel);
        if entry.tx.send(Frame { bytes, close }).is_err() {
            // The body is gone and its guard is about to forget the token.
            entry.queued.fetch_sub(cost, Ordering::AcqRel);
            drop(conns);
            bump(&self.counters.sends_not_found);
            return Err(SendError::UnknownToken);
        }
        entry.closing |= close;
        drop(conns);
        bump(&self.counters.sends_ok);
        Ok(())
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
            // Dropping the entry drops its sender: the body sends what is queued, then ends.
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
    fn dispatch(&self, job: Job) {
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
    fn finish(&self, token: &str, reason: DisconnectReason) {
        let entry = self.conns.lock().remove(token);
        if let Some(entry) = entry {
            self.report(token, entry, reason, None);
        }
    }

    /// Removes `token` without a callback (a rejected or failed connect: the application
    /// never accepted it).
    fn forget(&self, token: &str) {
        self.conns.lock().remove(token);
    }
}

/// One client's side of the hub, owned by its response body. Dropping it reports the
/// disconnect (reason [`DisconnectReason::ClientClosed`] unless set otherwise) and forgets the
/// token, whichever way the connection ended.
pub struct PushConnection {
    hub: Arc<PushHub>,
    token: String,
    request: Arc<Value>,
    rx: mpsc::UnboundedReceiver<Frame>,
    queued: Arc<AtomicUsize>,
    reason: DisconnectReason,
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

    /// Polls for the next queued frame; `None` once the hub dropped the connection (shutdown,
    /// slow consumer) and everything queued was taken.
    pub fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Frame>> {
        let polled = self.rx.poll_recv(cx);
        if let Poll::Ready(Some(frame)) = &polled {
            self.queued.fetch_sub(frame.bytes.len(), Ordering::AcqRel);
        }
        polled
    }

    /// The stream ended because the application asked (`close: true`).
    pub fn mark_server_closed(&mut self) {
        self.reason = DisconnectReason::ServerClosed;
    }
}

impl Drop for PushConnection {
    fn drop(&mut self) {
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

/// What the dispatcher thread needs.
struct Dispatch {
    /// The callback URL with `secret=`; never logged.
    target: String,
    /// The callback URL without its query, for logs.
    log_url: String,
    /// The secret as given and as encoded, scrubbed from error messages.
    secret_forms: [String; 2],
    timeout: Duration,
    counters: Arc<Counters>,
}

impl Dispatch {
    fn scrub(&self, mut message: String) -> String {
        for s in &self.secret_forms {
            if !s.is_empty() {
                message = message.replace(s.as_str(), "[redacted]");
            }
        }
        message
    }
}

/// The callback thread: one single-threaded runtime, one HTTP client (keep-alive pool), every
/// callback a task on it.
fn dispatcher(
    mut rx: mpsc::UnboundedReceiver<Job>,
    dispatch: Dispatch,
    ready: std::sync::mpsc::Sender<std::io::Result<()>>,
) {
    let rt = match actix_rt::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let _ = ready.send(Ok(()));
    rt.block_on(async move {
        // The operator chose this URL (the application usually runs next door): no backend
        // SSRF policy. A bounded pool: a burst of connects queues for a connection instead of
        // opening one socket (and its buffers) per callback.
        let connector = awc::Connector::new()
            .timeout(dispatch.timeout)
            .limit(CALLBACK_POOL_LIMIT);
        let client = awc::Client::builder()
            .connector(connector)
            .timeout(dispatch.timeout)
            .disable_redirects()
            .no_default_headers()
            .finish();
        let dispatch = Rc::new(dispatch);
        while let Some(job) = rx.recv().await {
            actix_rt::spawn(run_job(client.clone(), Rc::clone(&dispatch), job));
        }
    });
}

async fn run_job(client: awc::Client, d: Rc<Dispatch>, job: Job) {
    let mut attempt = 0;
    let result = loop {
        attempt += 1;
        let result = post_once(&client, &d, job.body.clone()).await;
        let failed = match &result {
            Ok(reply) => reply.status >= 500,
            Err(_) => true,
        };
        if !failed || attempt >= job.attempts {
            break result;
        }
        bump(&d.counters.retries);
        log::warn!(
            "push {} callback for token={} to {} failed ({}); retrying",
            job.action,
            job.token,
            d.log_url,
            describe(&result)
        );
        actix_rt::time::sleep(RETRY_BACKOFF * attempt).await;
    };
    match &result {
        Ok(reply) if reply.status < 500 => bump(&d.counters.callbacks_ok),
        _ => {
            bump(&d.counters.callbacks_failed);
            log::warn!(
                "push {} callback for token={} to {} failed after {attempt} attempt(s): {}",
                job.action,
                job.token,
                d.log_url,
                describe(&result)
            );
        }
    }
    if let Some(reply) = job.reply {
        let _ = reply.send(result);
    }
}

fn describe(result: &CallbackResult) -> String {
    match result {
        Ok(reply) => format!("HTTP {}", reply.status),
        Err(e) => e.to_string(),
    }
}

async fn post_once(client: &awc::Client, d: &Dispatch, body: Bytes) -> CallbackResult {
    let attempt = async {
        let mut resp = client
            .post(d.target.as_str())
            .timeout(d.timeout)
            .insert_header(("content-type", "application/json"))
            .insert_header(("user-agent", "switchboard-push"))
            .send_body(body)
            .await
            .map_err(|e| match e {
                awc::error::SendRequestError::Timeout => CallbackError::Timeout,
                other => CallbackError::Unreachable(d.scrub(other.to_string())),
            })?;
        let status = resp.status().as_u16();
        let body = resp.body().limit(CALLBACK_BODY_LIMIT).await.map_err(|e| {
            CallbackError::Unreachable(d.scrub(format!("reading the answer failed: {e}")))
        })?;
        Ok(Reply { status, body })
    };
    tokio::time::timeout(d.timeout, attempt)
        .await
        .unwrap_or(Err(CallbackError::Timeout))
}

/// `url` without its query and fragment: the form that may be logged.
pub fn strip_query(url: &str) -> &str {
    url.split(['?', '#']).next().unwrap_or(url)
}

/// The URL callbacks go to: `url` plus `secret=<secret>` (percent-encoded), joined with `?` or
/// `&` depending on whether `url` already has a query.
pub fn callback_target(url: &str, secret: &str) -> String {
    // A fragment is never sent to a server.
    let base = url.split('#').next().unwrap_or(url);
    let sep = if !base.contains('?') {
        "?"
    } else if base.ends_with('?') || base.ends_with('&') {
        ""
    } else {
        "&"
    };
    format!("{base}{sep}secret={}", percent_encode(secret))
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn encodes_events() {
        let ev = |name: Option<&str>, data: Option<Value>| PushEvent {
            name: name.map(str::to_string),
            data,
        };
        assert_eq!(
            encode_event(&ev(Some("msg"), Some(json!("hi")))).unwrap(),
            "event: msg\ndata: hi\n\n"
        );
        assert_eq!(
            encode_event(&ev(None, Some(json!("a\nb\r\nc")))).unwrap(),
            "data: a\ndata: b\ndata: c\n\n"
        );
        assert_eq!(
            encode_event(&ev(Some("x"), Some(json!({"n": 1})))).unwrap(),
            "event: x\ndata: {\"n\":1}\n\n"
        );
        assert_eq!(encode_event(&ev(None, None)).unwrap(), "data: \n\n");
        assert!(encode_event(&ev(Some("a\nb"), None)).is_err());
    }

    #[test]
    fn callback_target_appends_the_secret() {
        assert_eq!(
            callback_target("http://a/cb", "s e/c"),
            "http://a/cb?secret=s%20e%2Fc"
        );
        assert_eq!(
            callback_target("http://a/cb?x=1", "k"),
            "http://a/cb?x=1&secret=k"
        );
        assert_eq!(callback_target("http://a/cb?", "k"), "http://a/cb?secret=k");
        assert_eq!(
            callback_target("http://a/cb#f", "k"),
            "http://a/cb?secret=k"
        );
        assert_eq!(strip_query("http://a/cb?secret=k"), "http://a/cb");
    }

    #[test]
    fn settings_debug_hides_the_secret() {
        let s = PushSettings {
            callback_url: "http://a/cb?token=zzz".into(),
            secret: "hunter2".into(),
            callback_timeout: CALLBACK_TIMEOUT,
            queue_limit: 10,
        };
        let text = format!("{s:?}");
        assert!(!text.contains("hunter2") && !text.contains("zzz"), "{text}");
    }

    /// A tiny HTTP server answering every request with `status`; returns the URL and the bodies
    /// it received.
    async fn callback_app(status: u16) -> (String, Arc<Mutex<Vec<Value>>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/cb", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let log = Arc::clone(&log);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        let n = sock.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        let text = String::from_utf8_lossy(&buf).to_string();
                        let Some(end) = text.find("\r\n\r\n") else {
                            continue;
                        };
                        let len = text[..end]
                            .lines()
                            .find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.eq_ignore_ascii_case("content-length")
                                    .then(|| v.trim().parse::<usize>().ok())?
                            })
                            .unwrap_or(0);
                        if buf.len() < end + 4 + len {
                            continue;
                        }
                        let body: Value =
                            serde_json::from_slice(&buf[end + 4..end + 4 + len]).unwrap();
                        log.lock().push(body);
                        buf.drain(..end + 4 + len);
                        let resp = format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\n\r\n");
                        let _ = sock.write_all(resp.as_bytes()).await;
                    }
                });
            }
        });
        (url, seen)
    }

    fn hub(url: &str) -> Arc<PushHub> {
        PushHub::start(PushSettings {
            callback_url: url.to_string(),
            secret: "s".into(),
            callback_timeout: Duration::from_secs(2),
            queue_limit: 64,
        })
        .unwrap()
    }

    #[actix_rt::test]
    async fn lifecycle_ordering_and_shutdown() {
        let (url, seen) = callback_app(200).await;
        let hub = hub(&url);
        let mut a = hub.open(json!({"url": "/push/a", "headers": {}})).unwrap();
        a.connect().await.unwrap();
        let token = a.token().to_string();
        for i in 0..5 {
            let ev = encode_event(&PushEvent {
                name: None,
                data: Some(json!(i.to_string())),
            })
            .unwrap();
            hub.send(&token, Some(ev), false).unwrap();
        }
        for i in 0..5 {
            let f = poll_fn(|cx| a.poll_frame(cx)).await.unwrap();
            assert_eq!(f.bytes, format!("data: {i}\n\n"));
        }
        assert_eq!(hub.send("nope", None, true), Err(SendError::UnknownToken));
        // Over the 64-byte budget: disconnected with `error`.
        let big = Bytes::from(vec![b'x'; 100]);
        assert_eq!(
            hub.send(&token, Some(big), false),
            Err(SendError::SlowConsumer)
        );
        assert!(poll_fn(|cx| a.poll_frame(cx)).await.is_none());
        drop(a); // already reported: no second callback

        let mut b = hub.open(json!({"url": "/push/b", "headers": {}})).unwrap();
        b.connect().await.unwrap();
        let mut c = hub.open(json!({"url": "/push/c", "headers": {}})).unwrap();
        c.connect().await.unwrap();
        assert_eq!(hub.stats().connections_open, 2);
        assert_eq!(hub.shutdown().await, 2);
        assert!(poll_fn(|cx| b.poll_frame(cx)).await.is_none());
        assert!(hub.open(json!({})).is_err());
        drop((b, c));
        let seen = seen.lock().clone();
        let reasons: Vec<&str> = seen
            .iter()
            .filter(|v| v["action"] == "disconnect")
            .map(|v| v["reason"].as_str().unwrap())
            .collect();
        assert_eq!(reasons, ["error", "shutdown", "shutdown"]);
        assert_eq!(hub.registered(), 0);
        let stats = hub.stats();
        assert_eq!(stats.connections_open, 0);
        assert_eq!(stats.connections_total, 3);
        assert_eq!(stats.disconnects.shutdown, 2);
    }

    #[actix_rt::test]
    async fn rejected_connects_keep_no_token_and_send_no_disconnect() {
        let (url, seen) = callback_app(403).await;
        let hub = hub(&url);
        let mut a = hub.open(json!({"url": "/push/a", "headers": {}})).unwrap();
        assert_eq!(a.connect().await.unwrap_err(), ConnectError::Rejected(403));
        let token = a.token().to_string();
        drop(a);
        assert_eq!(hub.registered(), 0);
        assert_eq!(hub.send(&token, None, true), Err(SendError::UnknownToken));
        actix_rt::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(seen.lock().len(), 1, "only the connect callback");
    }

    #[actix_rt::test]
    async fn unreachable_callback_is_an_error_not_a_rejection() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/cb", listener.local_addr().unwrap());
        drop(listener);
        let hub = hub(&url);
        let mut a = hub.open(json!({})).unwrap();
        assert!(matches!(
            a.connect().await,
            Err(ConnectError::Unreachable(_))
        ));
        assert_eq!(hub.registered(), 0);
    }
}
