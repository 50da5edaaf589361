//! The callback side of the push gateway: one dedicated thread with its own runtime and HTTP
//! client posts `connect`/`disconnect` callbacks to the application, with retries for
//! disconnects, and scrubs the secret from every error it logs.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::counters::{bump, Counters};

/// Backoff before retry n is n × this.
const RETRY_BACKOFF: Duration = Duration::from_millis(250);
/// Connections kept to the callback application at most (callbacks past it wait their turn).
const CALLBACK_POOL_LIMIT: usize = 64;
/// Largest callback answer read (a connect answer carries at most one event).
const CALLBACK_BODY_LIMIT: usize = 1024 * 1024;

/// What a callback got back.
#[derive(Debug)]
pub(super) struct Reply {
    pub(super) status: u16,
    pub(super) body: Bytes,
}

#[derive(Debug)]
pub(super) enum CallbackError {
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

pub(super) type CallbackResult = Result<Reply, CallbackError>;

/// A callback for the dispatcher thread.
pub(super) struct Job {
    pub(super) body: Bytes,
    pub(super) attempts: u32,
    pub(super) action: &'static str,
    pub(super) token: String,
    pub(super) reply: Option<oneshot::Sender<CallbackResult>>,
}

/// What the dispatcher thread needs.
pub(super) struct Dispatch {
    /// The callback URL with `secret=`; never logged.
    pub(super) target: String,
    /// The callback URL without its query, for logs.
    pub(super) log_url: String,
    /// The secret as given and as encoded, scrubbed from error messages.
    pub(super) secret_forms: [String; 2],
    pub(super) timeout: Duration,
    pub(super) counters: Arc<Counters>,
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
pub(super) fn dispatcher(
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
pub(super) fn percent_encode(s: &str) -> String {
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
