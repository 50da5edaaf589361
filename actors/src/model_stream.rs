//! The `ModelStream` actor: one model's answer for one turn of a session.
//!
//! It routes the request (with failover until the first token), streams the upstream SSE body
//! through the parser and the chunk interpreter, and reports typed events to its session.
//! Cancellation is this actor stopping: the streaming future is owned by the actor's context,
//! so stopping drops it, and with it the upstream response, whose connection awc then closes
//! (never pooled) so the backend stops generating.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::{json, Map, Value};
use tokio::time::Instant;

use crate::attempt::{self, Failover, UpstreamFailure, UpstreamRequest};
use crate::endpoint::Endpoint;
use crate::events::{EventBody, Usage};
use crate::history::{estimate_tokens, Message};
use crate::openai_stream::{ChunkInterpreter, Output};
use crate::prefix::PromptSig;
use crate::record::now_ms;
use crate::router::thread_key;
use crate::routing::{RouteError, RoutingTable};
use crate::routing_policy::RoutingPolicy;
use crate::silence::SilenceTimer;
use crate::sse_parser::SseParser;
use crate::upstream;
use crate::usage::TokenCounts;
use awc::http::header;

/// After `[DONE]`, read at most this much more to reach the end of the body (see
/// [`drain_to_end`]).
const DRAIN_BYTES: usize = 64 * 1024;
/// ...and for at most this long.
const DRAIN_TIME: Duration = Duration::from_millis(500);

/// Why a stream (or a session) stopped; logged once, where the stop is decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    Completed,
    Cancelled,
    ClientGone,
    UpstreamError,
    UpstreamTimeout,
    SessionExpired,
    Shutdown,
}

/// Timeouts and retries of model streams, from configuration.
#[derive(Debug, Clone, Copy)]
pub struct StreamSettings {
    pub first_byte: Duration,
    pub idle: Duration,
    pub total: Duration,
    pub max_retries: usize,
}

/// Everything one stream needs to run.
pub struct StreamSpec {
    pub request_id: Arc<str>,
    pub model: Arc<str>,
    pub messages: Vec<Message>,
    pub params: Map<String, Value>,
    /// When the turn started: `ttft` and `total_ms` are measured from here.
    pub turn_started: Instant,
    pub table: Arc<RoutingTable>,
    pub settings: StreamSettings,
    /// The thread this turn belongs to (the session id): its turns stick to one backend.
    pub thread: Option<Arc<str>>,
}

/// An event of one model, for the session to number, buffer and fan out.
#[derive(Message)]
#[rtype(result = "()")]
pub struct StreamEvent {
    pub model: Arc<str>,
    pub body: EventBody,
}

/// Stop this stream (cancel, grace expiry, session end, shutdown).
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopStream(pub StopReason);

/// See the module docs. Started by its session, on the session's arbiter.
pub struct ModelStream {
    /// Taken by `started`, which moves it into the streaming future.
    spec: Option<StreamSpec>,
    label: String,
    /// Where events go: the owning session.
    session: Recipient<StreamEvent>,
}

impl ModelStream {
    /// A stream for `spec` reporting to `session`.
    pub fn new(spec: StreamSpec, session: Recipient<StreamEvent>) -> Self {
        let label = format!("request_id={} model={}", spec.request_id, spec.model);
        Self {
            spec: Some(spec),
            label,
            session,
        }
    }
}

impl Actor for ModelStream {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let Some(spec) = self.spec.take() else {
            ctx.stop();
            return;
        };
        let session = self.session.clone();
        ctx.spawn(run(spec, session).into_actor(self).map(|reason, act, ctx| {
            log::info!("{} stream stopped: {reason:?}", act.label);
            ctx.stop();
        }));
    }
}

impl Handler<StopStream> for ModelStream {
    type Result = ();

    fn handle(&mut self, StopStream(reason): StopStream, ctx: &mut Self::Context) {
        log::info!("{} stream stopped: {reason:?}", self.label);
        ctx.stop();
    }
}

/// Emits events for one model of one turn.
struct Emitter {
    request_id: Arc<str>,
    model: Arc<str>,
    session: Recipient<StreamEvent>,
}

impl Emitter {
    fn send(&self, body: EventBody) {
        self.session.do_send(StreamEvent {
            model: self.model.clone(),
            body,
        });
    }

    fn error(&self, code: &str, message: String, retryable: bool) {
        self.send(EventBody::Error {
            request_id: Some(self.request_id.to_string()),
            model: Some(self.model.to_string()),
            code: code.to_string(),
            message,
            retryable,
        });
    }
}

/// How one attempt ended.
enum BodyOutcome {
    /// The stream finished (done event sent) or failed after output (error sent).
    Finished(StopReason),
    /// Failed before any output: try the next backend.
    Retry(String),
}

async fn run(spec: StreamSpec, session: Recipient<StreamEvent>) -> StopReason {
    let out = Emitter {
        request_id: spec.request_id.clone(),
        model: spec.model.clone(),
        session,
    };
    let body = Bytes::from(request_body(&spec).to_string());
    let sig = (spec.table.policy() == RoutingPolicy::Full).then(|| prompt_sig(&spec.messages));
    let thread = spec.thread.as_deref().map(|t| thread_key(&spec.model, t));
    let client = upstream::thread_client();
    let deadline = spec.turn_started + spec.settings.total;
    let accept = [(
        header::ACCEPT,
        header::HeaderValue::from_static("text/event-stream"),
    )];
    let request = UpstreamRequest {
        endpoint: Endpoint::Chat,
        request_id: &spec.request_id,
        body: &body,
        headers: &accept,
        first_byte_timeout: Some(spec.settings.first_byte),
    };
    let mut failover = Failover::new(
        &spec.table,
        &spec.model,
        thread,
        sig.as_ref(),
        spec.settings.max_retries,
    );
    loop {
        // Waits in the model's queue when every backend is at its limit; a cancel stops this
        // actor, which drops the wait (and its place in the queue) at once.
        let routed = match failover.next().await {
            Ok(Some(routed)) => routed,
            Ok(None) => break,
            Err(e) => {
                route_failed(&out, &spec.model, e);
                return StopReason::UpstreamError;
            }
        };
        let route = routed.kind.as_str();
        // Holds the slot until this attempt ends (success, failure or the actor stopping).
        let guard = routed.guard;
        let backend = Arc::clone(guard.backend());
        let resp = match attempt::send(&client, &backend, &request).await {
            Ok(resp) => resp,
            Err(failure) => {
                failover.failed(&backend, failure);
                continue;
            }
        };
        let status = resp.status();
        if !status.is_success() {
            out.error(
                "upstream_rejected",
                format!("backend answered HTTP {}", status.as_u16()),
                false,
            );
            return StopReason::UpstreamError;
        }
        backend.report_success();
        out.send(EventBody::Start {
            request_id: spec.request_id.clone(),
            model: spec.model.clone(),
            backend: backend.id.to_string(),
            route,
        });
        match stream_body(resp, &spec, &out, deadline, &backend.tokens).await {
            BodyOutcome::Finished(reason) => {
                if reason == StopReason::UpstreamError || reason == StopReason::UpstreamTimeout {
                    backend.report_failure(UpstreamFailure::AfterOutput.to_string());
                }
                return reason;
            }
            BodyOutcome::Retry(reason) => {
                failover.failed(&backend, UpstreamFailure::BeforeOutput(reason));
            }
        }
    }
    out.error(
        "upstream_failed",
        format!(
            "every backend attempt failed; last error: {}",
            failover.last_error()
        ),
        true,
    );
    StopReason::UpstreamError
}

/// Tells the session why no backend took the turn (the words `/v1` uses too).
fn route_failed(out: &Emitter, model: &str, e: RouteError) {
    out.error(e.code(), e.message(model), e.retryable());
}

/// The points of a turn's prompt for prefix affinity: each message as it is sent upstream.
fn prompt_sig(messages: &[Message]) -> PromptSig {
    let parts: Vec<Vec<u8>> = messages
        .iter()
        .map(|m| serde_json::to_vec(m).unwrap_or_default())
        .collect();
    PromptSig::from_parts(parts.iter().map(Vec::as_slice))
}

/// The upstream request: the model's messages, the turn's parameters, streaming with usage.
/// (A backend's `upstream_model` is put in by [`attempt::send`].)
fn request_body(spec: &StreamSpec) -> Value {
    let mut body = Map::new();
    for (k, v) in &spec.params {
        if !matches!(
            k.as_str(),
            "model" | "messages" | "stream" | "stream_options"
        ) {
            body.insert(k.clone(), v.clone());
        }
    }
    body.insert("model".into(), json!(&*spec.model));
    body.insert("messages".into(), json!(spec.messages));
    body.insert("stream".into(), json!(true));
    body.insert("stream_options".into(), json!({"include_usage": true}));
    Value::Object(body)
}

async fn stream_body<S>(
    mut resp: S,
    spec: &StreamSpec,
    out: &Emitter,
    deadline: Instant,
    tokens: &TokenCounts,
) -> BodyOutcome
where
    S: futures_util::Stream<Item = Result<Bytes, awc::error::PayloadError>> + Unpin,
{
    let mut parser = SseParser::new();
    let mut interp = ChunkInterpreter::default();
    let (mut events, mut outputs) = (Vec::new(), Vec::new());
    let mut ttft_ms: Option<u64> = None;
    let mut produced = false;
    let mut silence = SilenceTimer::new(spec.settings.idle, Some(deadline));
    loop {
        let next = tokio::select! {
            biased;
            item = resp.next() => Ok(item),
            () = silence.elapsed() => Err(()),
        };
        if next.is_ok() {
            silence.touch();
        }
        let chunk = match next {
            Err(()) => {
                return fail(
                    out,
                    produced,
                    "timeout",
                    "the backend stopped sending (timeout)".into(),
                    StopReason::UpstreamTimeout,
                );
            }
            Ok(None) => {
                parser.finish(&mut events);
                if events.is_empty() {
                    return connection_lost(out, produced);
                }
                Bytes::new()
            }
            Ok(Some(Err(e))) => {
                return fail(
                    out,
                    produced,
                    "upstream_error",
                    format!("stream failed: {e}"),
                    StopReason::UpstreamError,
                )
            }
            Ok(Some(Ok(chunk))) => chunk,
        };
        if !chunk.is_empty() && parser.feed(&chunk, &mut events).is_err() {
            return fail(
                out,
                produced,
                "upstream_error",
                "malformed stream: line too long".into(),
                StopReason::UpstreamError,
            );
        }
        for ev in events.drain(..) {
            interp.feed(&ev.data, now_ms(), &mut outputs);
        }
        for o in outputs.drain(..) {
            match o {
                Output::Content(_) | Output::ToolStart { .. } if ttft_ms.is_none() => {
                    let ms = spec.turn_started.elapsed().as_millis() as u64;
                    ttft_ms = Some(ms);
                    out.send(EventBody::Ttft {
                        request_id: spec.request_id.clone(),
                        model: spec.model.clone(),
                        ms,
                    });
                    emit_output(o, spec, out);
                }
                Output::Done => {
                    let usage = interp
                        .usage
                        .unwrap_or_else(|| estimate_usage(spec, interp.deltas));
                    tokens.add(&usage);
                    out.send(EventBody::Done {
                        request_id: spec.request_id.clone(),
                        model: spec.model.clone(),
                        ttft_ms,
                        total_ms: spec.turn_started.elapsed().as_millis() as u64,
                        usage,
                        finish_reason: interp.finish_reason.clone(),
                    });
                    drain_to_end(&mut resp).await;
                    return BodyOutcome::Finished(StopReason::Completed);
                }
                Output::UpstreamError(message) => {
                    return fail(
                        out,
                        produced,
                        "upstream_error",
                        message,
                        StopReason::UpstreamError,
                    )
                }
                other => emit_output(other, spec, out),
            }
            produced = true;
        }
        if chunk.is_empty() {
            // The body ended after a final event without `[DONE]`.
            return connection_lost(out, produced);
        }
    }
}

/// Reads what follows `[DONE]` (the chunked-encoding end) so awc hands the connection back to
/// its keep-alive pool instead of closing it; bounded, so a backend that keeps talking after
/// `[DONE]` cannot hold the stream open.
async fn drain_to_end<S>(resp: &mut S)
where
    S: futures_util::Stream<Item = Result<Bytes, awc::error::PayloadError>> + Unpin,
{
    let mut budget = DRAIN_BYTES;
    let deadline = Instant::now() + DRAIN_TIME;
    while let Ok(Some(Ok(chunk))) = tokio::time::timeout_at(deadline, resp.next()).await {
        budget = budget.saturating_sub(chunk.len());
        if budget == 0 {
            break;
        }
    }
}

fn emit_output(o: Output, spec: &StreamSpec, out: &Emitter) {
    let (request_id, model) = (spec.request_id.clone(), spec.model.clone());
    let body = match o {
        Output::Content(content) => EventBody::Token {
            request_id,
            model,
            content,
        },
        Output::ToolStart { id, name } => EventBody::ToolStart {
            request_id,
            model,
            tool_call_id: id,
            name,
        },
        Output::ToolEnd {
            id,
            name,
            arguments,
            ms,
        } => EventBody::ToolEnd {
            request_id,
            model,
            tool_call_id: id,
            name,
            arguments,
            ms,
        },
        Output::Done | Output::UpstreamError(_) => return,
    };
    out.send(body);
}

/// Failure before any output is retried on the next backend; after output it ends the model.
/// The upstream body ended before `data: [DONE]`: the connection was lost mid-answer.
fn connection_lost(out: &Emitter, produced: bool) -> BodyOutcome {
    fail(
        out,
        produced,
        "upstream_error",
        "stream ended without data: [DONE] (connection lost)".into(),
        StopReason::UpstreamError,
    )
}

fn fail(
    out: &Emitter,
    produced: bool,
    code: &str,
    message: String,
    reason: StopReason,
) -> BodyOutcome {
    if produced {
        out.error(code, message, true);
        BodyOutcome::Finished(reason)
    } else {
        BodyOutcome::Retry(message)
    }
}

fn estimate_usage(spec: &StreamSpec, deltas: u64) -> Usage {
    let prompt: usize = spec
        .messages
        .iter()
        .map(|m| estimate_tokens(&m.content))
        .sum();
    Usage {
        prompt_tokens: prompt as u64,
        completion_tokens: deltas,
        total_tokens: prompt as u64 + deltas,
        estimated: true,
    }
}
