//! One upstream attempt, and the failover between attempts: the path both the `/v1` gateway
//! and session model streams take to a backend, so routing, headers, the `upstream_model`
//! rewrite, reconnects and failure reporting are written once.
//!
//! A caller holds a [`Failover`], asks it for the next backend ([`Failover::next`]: a routing
//! decision, waiting in the model's queue if every backend is at its limit), sends with
//! [`send`], and tells the failover when an attempt failed ([`Failover::failed`]: passive
//! health and `last_error` see the typed [`UpstreamFailure`]). What counts as "committed"
//! differs (the gateway commits at the first body byte, a model stream at its first output),
//! so reading the body stays with the caller.

use std::fmt;
use std::time::Duration;

use awc::http::header::{self, HeaderName, HeaderValue};
use bytes::Bytes;
use uuid::Uuid;

use crate::endpoint::Endpoint;
use crate::prefix::PromptSig;
use crate::router::{RouteRequest, Routed};
use crate::routing::{BackendHandle, RouteError, RoutingTable};
use crate::upstream::REQUEST_ID_HEADER;

/// Why one attempt on one backend failed. Its `Display` is what passive health records and the
/// admin sees as `last_error`, and what the final "every backend attempt failed" error quotes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamFailure {
    /// The backend's URL cannot be made into a request (a record the policy no longer allows).
    Url(String),
    /// The body could not be rewritten to the backend's `upstream_model`.
    Rewrite(String),
    /// Connecting or sending failed (DNS, refused, reset, the address policy).
    Connect(String),
    /// No response head within the first-byte timeout.
    Timeout,
    /// The backend answered 5xx.
    Status(u16),
    /// The body failed, ended or went silent before anything was relayed.
    BeforeOutput(String),
    /// The stream failed after output had reached the client (no failover then).
    AfterOutput,
}

impl fmt::Display for UpstreamFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Url(e) => write!(f, "{e}"),
            Self::Rewrite(e) => write!(f, "cannot rewrite model: {e}"),
            Self::Connect(e) => write!(f, "request failed: {e}"),
            Self::Timeout => f.write_str("timed out waiting for response headers"),
            Self::Status(code) => write!(f, "backend answered HTTP {code}"),
            Self::BeforeOutput(e) => write!(f, "{e}"),
            Self::AfterOutput => f.write_str("stream failed after output"),
        }
    }
}

/// What to send: the same for every backend a request fails over to.
pub struct UpstreamRequest<'a> {
    /// The OpenAI route.
    pub endpoint: Endpoint,
    /// Sent as [`REQUEST_ID_HEADER`], to correlate broker and backend logs.
    pub request_id: &'a str,
    /// The JSON body as the client (or the session) made it; its `model` is rewritten for a
    /// backend with an `upstream_model`, otherwise these very bytes are sent.
    pub body: &'a Bytes,
    /// Headers besides content type, request id and the backend's key (`Accept`, …).
    pub headers: &'a [(HeaderName, HeaderValue)],
    /// Overrides the client's first-byte timeout.
    pub first_byte_timeout: Option<Duration>,
}

/// How many times a request is sent again after its connection closed before the response head.
const RECONNECTS: usize = 2;

/// Sends `req` to `backend`. A 5xx answer is a failure (the next backend may do better); any
/// other status is the caller's to relay or refuse.
///
/// A pooled keep-alive connection the server had dropped (awc's `ConnectError::Disconnected`,
/// before the response head) is retried on a fresh connection, at most [`RECONNECTS`] times:
/// that says nothing about the backend's health, so it is neither a failure nor a failover.
/// llama.cpp's server drops idle connections when its few HTTP threads are busy; found against
/// three real llama-servers, where it had cascaded into every backend "unhealthy".
pub async fn send(
    client: &awc::Client,
    backend: &BackendHandle,
    req: &UpstreamRequest<'_>,
) -> Result<awc::ClientResponse, UpstreamFailure> {
    let uri = backend.uri(req.endpoint).map_err(UpstreamFailure::Url)?;
    let body = match &backend.upstream_model {
        Some(id) => with_model(req.body, id).map_err(UpstreamFailure::Rewrite)?,
        None => req.body.clone(), // zero-copy
    };
    let build = || {
        let mut upstream = client
            .post(uri.clone())
            .insert_header((header::CONTENT_TYPE, "application/json"))
            .insert_header((REQUEST_ID_HEADER, req.request_id));
        if let Some(timeout) = req.first_byte_timeout {
            upstream = upstream.timeout(timeout);
        }
        for (name, value) in req.headers {
            upstream = upstream.insert_header((name.clone(), value.clone()));
        }
        if let Some(auth) = &backend.auth_header {
            upstream = upstream.insert_header((header::AUTHORIZATION, auth.as_str()));
        }
        upstream
    };
    let mut reconnects = 0;
    let resp = loop {
        use awc::error::{ConnectError, SendRequestError};
        match build().send_body(body.clone()).await {
            Ok(resp) => break resp,
            Err(SendRequestError::Connect(ConnectError::Disconnected))
                if reconnects < RECONNECTS =>
            {
                reconnects += 1;
                log::debug!(
                    "request_id={} upstream connection closed before the response head; sending again ({reconnects})",
                    req.request_id
                );
            }
            Err(SendRequestError::Timeout) => return Err(UpstreamFailure::Timeout),
            Err(e) => return Err(UpstreamFailure::Connect(e.to_string())),
        }
    };
    if resp.status().is_server_error() {
        return Err(UpstreamFailure::Status(resp.status().as_u16()));
    }
    Ok(resp)
}

/// The request body with `model` replaced (a backend's `upstream_model`); every other field
/// is kept as it was.
fn with_model(body: &Bytes, model: &str) -> Result<Bytes, String> {
    let mut value: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(body).map_err(|e| e.to_string())?;
    value.insert("model".into(), serde_json::Value::String(model.to_string()));
    serde_json::to_vec(&value)
        .map(Bytes::from)
        .map_err(|e| e.to_string())
}

/// One request's walk over a model's backends: each attempt a fresh routing decision that
/// leaves out the backends already tried, at most `1 + max_retries` attempts.
pub struct Failover<'a> {
    table: &'a RoutingTable,
    model: &'a str,
    thread: Option<u64>,
    prompt: Option<&'a PromptSig>,
    tried: Vec<Uuid>,
    attempts_left: usize,
    last_error: Option<UpstreamFailure>,
}

impl<'a> Failover<'a> {
    /// A walk for `model` (with its affinity hints) of at most `1 + max_retries` attempts.
    pub fn new(
        table: &'a RoutingTable,
        model: &'a str,
        thread: Option<u64>,
        prompt: Option<&'a PromptSig>,
        max_retries: usize,
    ) -> Self {
        Self {
            table,
            model,
            thread,
            prompt,
            tried: Vec::new(),
            attempts_left: max_retries + 1,
            last_error: None,
        }
    }

    /// The next backend's slot, after waiting in the model's queue if every backend is at its
    /// limit (dropping this future leaves the queue). `Ok(None)` when the attempts are used up
    /// or no untried healthy backend is left: [`Failover::last_error`] says why. `Err` when no
    /// decision can be made: unknown model, nothing healthy at the first attempt, busy.
    pub async fn next(&mut self) -> Result<Option<Routed>, RouteError> {
        if self.attempts_left == 0 {
            return Ok(None);
        }
        self.attempts_left -= 1;
        let request = RouteRequest {
            model: self.model,
            thread: self.thread,
            prompt: self.prompt,
            exclude: &self.tried,
        };
        match self.table.route(&request).await {
            Ok(routed) => {
                self.tried.push(routed.guard.backend().id);
                Ok(Some(routed))
            }
            Err(RouteError::NoHealthyBackend) if !self.tried.is_empty() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Which attempt the last [`Failover::next`] started (1 for the first).
    pub fn attempt(&self) -> usize {
        self.tried.len()
    }

    /// Records a failed attempt: against the backend (passive health, `last_error`) and as
    /// the reason the whole request fails if no other backend succeeds.
    pub fn failed(&mut self, backend: &BackendHandle, failure: UpstreamFailure) {
        backend.report_failure(failure.to_string());
        self.last_error = Some(failure);
    }

    /// Why the last failed attempt failed (empty before any).
    pub fn last_error(&self) -> String {
        self.last_error
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn failures_read_as_the_admin_sees_them() {
        assert_eq!(
            UpstreamFailure::Status(503).to_string(),
            "backend answered HTTP 503"
        );
        assert_eq!(
            UpstreamFailure::Timeout.to_string(),
            "timed out waiting for response headers"
        );
        assert_eq!(
            UpstreamFailure::Connect("connection refused".into()).to_string(),
            "request failed: connection refused"
        );
    }

    #[test]
    fn the_model_rewrite_keeps_every_other_field() {
        let body = Bytes::from_static(br#"{"model":"alias","messages":[],"temperature":0.5}"#);
        let out: serde_json::Value =
            serde_json::from_slice(&with_model(&body, "gpt-x").unwrap()).unwrap();
        assert_eq!(
            out,
            serde_json::json!({"model": "gpt-x", "messages": [], "temperature": 0.5})
        );
        assert!(with_model(&Bytes::from_static(b"[1]"), "m").is_err());
    }
}
