//! The OpenAI-compatible gateway (`/v1/*`): routing, failover before commit, streaming relay.
//!
//! A request is tried on up to `1 + max_retries` healthy backends of its model, round-robin.
//! An attempt is *committed* (its status and headers go to the client) when the first upstream
//! body chunk arrives, or after the commit timeout without one. Before that, a connect error,
//! timeout, 5xx or a stream that dies marks the backend unhealthy and the next one is tried.

use std::sync::Arc;

use actix_web::body::{BodyStream, SizedStream};
use actix_web::http::header::{self, HeaderMap, HeaderName};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};
use serde::Deserialize;
use serde_json::json;
use switchboard_actors::attempt::{self, Failover, UpstreamFailure, UpstreamRequest};
use switchboard_actors::events::Usage;
use switchboard_actors::prefix::PromptSig;
use switchboard_actors::router::thread_key;
use switchboard_actors::routing::{BackendHandle, InFlightGuard, RouteError};
use switchboard_actors::routing_policy::{RouteKind, RoutingPolicy};
use switchboard_actors::upstream::{self, REQUEST_ID_HEADER};
use tokio::time::Instant;

use crate::auth;
use crate::credentials;
use crate::errors::{route_error, ApiError};
use crate::http::relay::{RelayBody, RelayTimers, RequestSide, UpstreamBody, UpstreamSide};
use crate::http::request::{check_rate, read_body};
use crate::state::AppState;

/// Response header naming the backend that served a proxied request.
pub const BACKEND_HEADER: &str = "x-switchboard-backend";
/// Response header saying why that backend was chosen (SPEC §2.1).
pub const ROUTE_HEADER: &str = "x-switchboard-route";

/// Routes under `/v1`.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/models", web::get().to(list_models))
        .route("/v1/models/{model:.+}", web::get().to(get_model))
        .route("/v1/chat/completions", proxied(Endpoint::Chat))
        .route("/v1/completions", proxied(Endpoint::Completions))
        .route("/v1/embeddings", proxied(Endpoint::Embeddings));
}

/// A POST route proxying to `endpoint`.
fn proxied(endpoint: Endpoint) -> actix_web::Route {
    web::post().to(
        move |req: HttpRequest, body: web::Payload, state: web::Data<AppState>| {
            proxy(req, body, state, endpoint)
        },
    )
}

/// The proxied endpoints: the engine's one list (its upstream URLs are built there).
pub use switchboard_actors::endpoint::Endpoint;

/// The fields the gateway itself needs; everything else is passed through untouched.
#[derive(Deserialize)]
struct RequestHead<'a> {
    model: Option<serde_json::Value>,
    stream: Option<serde_json::Value>,
    /// Each message's JSON text as sent (borrowed, not copied): the prefix index hashes it.
    #[serde(borrow)]
    messages: Option<Vec<&'a serde_json::value::RawValue>>,
    /// Completions' prompt, likewise.
    #[serde(borrow)]
    prompt: Option<&'a serde_json::value::RawValue>,
    /// OpenAI's thread key: requests carrying the same one stick to one backend.
    prompt_cache_key: Option<serde_json::Value>,
}

/// What routing reads from a request body beyond the model (SPEC §2.1).
#[derive(Debug, Default)]
pub struct RouteHints {
    /// [`thread_key`] of `prompt_cache_key`.
    pub thread: Option<u64>,
    /// The prompt's points (only under the `full` policy, the one that reads them).
    pub prompt: Option<PromptSig>,
}

/// Validates the body enough to route it: a JSON object with a string `model`, a boolean
/// `stream` if present and (for chat) an array `messages`. Returns the model name.
#[cfg(test)]
pub fn parse_request(body: &[u8], endpoint: Endpoint) -> Result<String, ApiError> {
    parse_request_hints(body, endpoint, false).map(|(model, _)| model)
}

/// [`parse_request`] plus the routing hints; `with_prompt` computes the prompt's points.
pub fn parse_request_hints(
    body: &[u8],
    endpoint: Endpoint,
    with_prompt: bool,
) -> Result<(String, RouteHints), ApiError> {
    let head: RequestHead =
        switchboard_actors::json::from_slice(body).map_err(|e| match e.field.as_deref() {
            Some("messages") => ApiError::invalid_param("messages", "`messages` must be an array"),
            Some(_) => ApiError::from(e),
            None if e.syntax => ApiError::from(e),
            None => ApiError::invalid(format!("request body must be a JSON object: {e}")),
        })?;
    let model = match head.model {
        Some(serde_json::Value::String(m)) if m.chars().any(char::is_control) => {
            // Model names reach logs and headers: a newline would forge a log line.
            return Err(ApiError::invalid_param(
                "model",
                "`model` must not contain control characters",
            ));
        }
        Some(serde_json::Value::String(m)) if !m.trim().is_empty() => m,
        Some(serde_json::Value::String(_)) | None => {
            return Err(ApiError::invalid_param("model", "`model` is required"))
        }
        Some(_) => return Err(ApiError::invalid_param("model", "`model` must be a string")),
    };
    if let Some(stream) = &head.stream {
        if !stream.is_boolean() && !stream.is_null() {
            return Err(ApiError::invalid_param(
                "stream",
                "`stream` must be a boolean",
            ));
        }
    }
    if endpoint == Endpoint::Chat && head.messages.is_none() {
        return Err(ApiError::invalid_param(
            "messages",
            "`messages` is required",
        ));
    }
    let thread = match &head.prompt_cache_key {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(k)) => Some(thread_key(&model, k)),
        Some(_) => {
            return Err(ApiError::invalid_param(
                "prompt_cache_key",
                "`prompt_cache_key` must be a string",
            ))
        }
    };
    let prompt = with_prompt.then(|| match (&head.messages, head.prompt) {
        (Some(messages), _) => PromptSig::from_parts(messages.iter().map(|m| m.get().as_bytes())),
        (None, Some(prompt)) => PromptSig::from_parts([prompt.get().as_bytes()]),
        (None, None) => PromptSig::default(),
    });
    Ok((model, RouteHints { thread, prompt }))
}

thread_local! {
    /// xorshift128+ state for request ids, seeded once per thread from the OS.
    static ID_STATE: std::cell::Cell<(u64, u64)> = std::cell::Cell::new(uuid::Uuid::new_v4().as_u64_pair());
}

/// A random-looking v4 uuid without a `getrandom` syscall per request. Request ids only
/// correlate logs; they are not secrets (session ids and push tokens use the OS generator).
fn new_request_id() -> String {
    ID_STATE.with(|cell| {
        let (mut s1, s0) = cell.get();
        let mut next = || {
            let out = s0.wrapping_add(s1);
            s1 ^= s1 << 23;
            let mixed = s1 ^ s0 ^ (s1 >> 17) ^ (s0 >> 26);
            (out, mixed)
        };
        let (a, s1_next) = next();
        let b = a.rotate_left(29) ^ s1_next.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        cell.set((s0, s1_next));
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&a.to_le_bytes());
        bytes[8..].copy_from_slice(&b.to_le_bytes());
        uuid::Builder::from_random_bytes(bytes)
            .into_uuid()
            .to_string()
    })
}

/// The client's request id when it sent a usable one (at most 128 visible ASCII characters),
/// else a new uuid. One with a control character (or any byte outside printable ASCII) is
/// refused with 400: request ids reach logs and headers, where such text could forge a line.
pub fn request_id(headers: &HeaderMap) -> Result<String, ApiError> {
    let Some(value) = headers.get(REQUEST_ID_HEADER) else {
        return Ok(new_request_id());
    };
    if value
        .as_bytes()
        .iter()
        .any(|b| b.is_ascii_control() || !b.is_ascii())
    {
        return Err(ApiError::invalid_param(
            "X-Request-Id",
            "the X-Request-Id header must be printable ASCII (no control characters)",
        ));
    }
    Ok(value
        .to_str()
        .ok()
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(new_request_id, str::to_string))
}

/// What a finished request is counted as in `/metrics`, and the id it is known by.
struct Outcome {
    model: String,
    backend: String,
    request_id: String,
}

async fn proxy(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    endpoint: Endpoint,
) -> Result<HttpResponse, ApiError> {
    let arrived = Instant::now();
    let (request_id, bad_id) = match request_id(req.headers()) {
        Ok(id) => (id, None),
        Err(e) => (new_request_id(), Some(e)),
    };
    let mut outcome = Outcome {
        model: "-".into(),
        backend: "-".into(),
        request_id,
    };
    let result = match bad_id {
        Some(e) => Err(e),
        None => {
            proxy_attempts(
                &req,
                payload,
                &state,
                &upstream::thread_client(),
                endpoint,
                arrived,
                &mut outcome,
            )
            .await
        }
    };
    let status = match &result {
        Ok(resp) => resp.status().as_u16(),
        Err(e) => e.status.as_u16(),
    };
    let us = arrived.elapsed().as_micros() as u64;
    state.metrics.record(
        endpoint.path(),
        &outcome.model,
        &outcome.backend,
        status,
        us,
    );
    // Refusals carry the request id too, so a client can quote it when asking why.
    result.or_else(|e| {
        let mut resp = actix_web::ResponseError::error_response(&e);
        if let Ok(v) = header::HeaderValue::from_str(&outcome.request_id) {
            resp.headers_mut()
                .insert(HeaderName::from_static(REQUEST_ID_HEADER), v);
        }
        Ok(resp)
    })
}

async fn proxy_attempts(
    req: &HttpRequest,
    payload: web::Payload,
    state: &web::Data<AppState>,
    client: &awc::Client,
    endpoint: Endpoint,
    arrived: Instant,
    outcome: &mut Outcome,
) -> Result<HttpResponse, ApiError> {
    auth::require_client(req, state)?;
    check_rate(req, state)?;
    let body = read_body(req, payload, state.proxy.max_body_bytes).await?;
    let full = state.table.policy() == RoutingPolicy::Full;
    let (model, hints) = parse_request_hints(&body, endpoint, full)?;
    // Metric labels carry registered model names only (SPEC §8): anything else is "unknown".
    outcome.model = crate::metrics::UNKNOWN_MODEL.into();
    let request_id = outcome.request_id.clone();

    let passed_through: Vec<_> = [header::ACCEPT, header::ACCEPT_ENCODING]
        .into_iter()
        .filter_map(|name| Some((name.clone(), req.headers().get(&name)?.clone())))
        .collect();
    let upstream = UpstreamRequest {
        endpoint,
        request_id: &request_id,
        body: &body,
        headers: &passed_through,
        first_byte_timeout: None, // the client's, from configuration
    };
    let mut failover = Failover::new(
        &state.table,
        &model,
        hints.thread,
        hints.prompt.as_ref(),
        state.proxy.max_retries,
    );
    loop {
        // May wait in the model's queue (SPEC §2.1); a client that disconnects meanwhile drops
        // this future and with it its place in the queue. Nothing goes upstream before a slot.
        let routed = match failover.next().await {
            Ok(Some(routed)) => routed,
            Ok(None) => break,
            Err(e) => {
                if e != RouteError::UnknownModel {
                    outcome.model.clone_from(&model);
                }
                return Err(route_error(e, &model));
            }
        };
        outcome.model.clone_from(&model);
        let attempt = failover.attempt();
        let (guard, kind) = (routed.guard, routed.kind);
        let backend = Arc::clone(guard.backend());
        match try_backend(client, &backend, &upstream, state).await {
            Ok(committed) if committed.status.is_redirection() => {
                // A redirect is never relayed: its Location would reveal the backend's
                // address, and following it would bypass the URL policy (SPEC §8).
                log::warn!(
                    "request_id={request_id} model={model} backend={} answered a redirect (HTTP {}); 502",
                    backend.id,
                    committed.status.as_u16()
                );
                outcome.backend = backend.id_text.to_string();
                return Err(ApiError::bad_gateway(format!(
                    "the backend answered a redirect (HTTP {}), which is not relayed; check its \
                     endpoint_url",
                    committed.status.as_u16()
                )));
            }
            Ok(committed) => {
                backend.report_success();
                let commit_ms = arrived.elapsed().as_millis() as u64;
                log::info!(
                    "request_id={request_id} model={model} backend={} status={} attempt={attempt} commit_ms={commit_ms}",
                    backend.id,
                    committed.status.as_u16(),
                );
                state
                    .metrics
                    .observe_ttfb(arrived.elapsed().as_micros() as u64);
                outcome.backend = backend.id_text.to_string();
                let sent = Sent {
                    arrived,
                    request_id: &request_id,
                    request_bytes: body.len(),
                };
                return Ok(respond(committed, guard, kind, sent, state));
            }
            Err(failure) => {
                log::warn!(
                    "request_id={request_id} model={model} backend={} attempt={attempt} failed: {failure}",
                    backend.id,
                );
                failover.failed(&backend, failure);
            }
        }
    }
    Err(ApiError::upstream_failed(format!(
        "every backend attempt for model `{model}` failed; last error: {}",
        failover.last_error()
    )))
}

/// An upstream response that is ready to be sent to the client.
struct Committed {
    status: StatusCode,
    /// The upstream headers that are forwarded (hop-by-hop ones already left out).
    headers: Vec<(HeaderName, header::HeaderValue)>,
    first: Option<Bytes>,
    rest: UpstreamBody,
    content_length: Option<u64>,
    is_sse: bool,
}

/// Headers that describe one hop's connection, never forwarded.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "content-length"
    )
}

/// One attempt: send, then wait for the first chunk. `Err` means "try the next backend" and
/// says why this one failed.
async fn try_backend(
    client: &awc::Client,
    backend: &BackendHandle,
    upstream: &UpstreamRequest<'_>,
    state: &AppState,
) -> Result<Committed, UpstreamFailure> {
    let resp = attempt::send(client, backend, upstream).await?;
    let status = resp.status();
    let upstream_headers = resp.headers();
    let content_length = upstream_headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let is_sse = upstream_headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let headers = upstream_headers
        .iter()
        .filter(|(name, _)| !is_hop_by_hop(name))
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect();
    let mut rest: UpstreamBody = Box::pin(resp);
    let first = match tokio::time::timeout(state.proxy.commit_timeout, rest.next()).await {
        Ok(Some(Ok(chunk))) => Some(chunk),
        Ok(Some(Err(e))) => {
            return Err(UpstreamFailure::BeforeOutput(format!(
                "stream failed before the first byte: {e}"
            )))
        }
        // The body ended before its first byte. A success answer is only whole when it said
        // it would be empty; an SSE stream, a declared length or a chunked body cut off by a
        // closed socket (awc reports that as a clean end) died before commit: next backend.
        Ok(None)
            if status.is_success()
                && content_length != Some(0)
                && !matches!(status, StatusCode::NO_CONTENT | StatusCode::RESET_CONTENT) =>
        {
            return Err(UpstreamFailure::BeforeOutput(
                "body ended before the first byte".into(),
            ))
        }
        Ok(None) => None,
        Err(_) => None, // commit anyway; the relay keeps waiting up to the idle timeout
    };
    Ok(Committed {
        status,
        headers,
        first,
        rest,
        content_length,
        is_sse,
    })
}

/// What [`respond`] needs to know about the request it answers.
struct Sent<'a> {
    arrived: Instant,
    request_id: &'a str,
    /// Size of the request body (the prompt-token estimate when the backend reports no usage).
    request_bytes: usize,
}

fn respond(
    c: Committed,
    guard: InFlightGuard,
    kind: RouteKind,
    sent: Sent<'_>,
    state: &AppState,
) -> HttpResponse {
    let Sent {
        arrived,
        request_id,
        request_bytes,
    } = sent;
    let whole = complete_body(&c);
    let mut resp = HttpResponse::build(c.status);
    for header in c.headers {
        resp.append_header(header);
    }
    resp.insert_header((BACKEND_HEADER, &*guard.backend().id_text))
        .insert_header((ROUTE_HEADER, kind.as_str()))
        .insert_header((REQUEST_ID_HEADER, request_id.to_string()));
    if c.is_sse {
        resp.insert_header(("x-accel-buffering", "no"));
    }
    if let Some(whole) = whole {
        // The usual non-streaming answer: it all came with the commit. One write, no relay
        // timers; the upstream read to its end first, so awc pools the connection.
        let mut rest = c.rest;
        let _ = rest.next().now_or_never();
        if let Some((prompt, completion)) = switchboard_actors::usage::find_usage(&whole) {
            guard.backend().tokens.add(&Usage {
                prompt_tokens: prompt,
                completion_tokens: completion,
                total_tokens: prompt + completion,
                estimated: false,
            });
        }
        return resp.body(whole);
    }
    let timers = RelayTimers {
        idle: state.proxy.idle_timeout,
        deadline: arrived + state.proxy.total_timeout,
        keepalive: state.proxy.keepalive,
    };
    let upstream = UpstreamSide {
        body: c.rest,
        first: c.first,
        is_sse: c.is_sse,
        expected_len: c.content_length,
    };
    let request = RequestSide {
        guard,
        request_bytes,
        request_id: request_id.to_string(),
        metrics: Arc::clone(&state.metrics),
        drain: Arc::clone(&state.drain),
    };
    let relay = RelayBody::new(upstream, timers, request);
    match c.content_length {
        Some(len) if !c.is_sse => resp.body(SizedStream::new(len, relay)),
        _ => resp.body(BodyStream::new(relay)),
    }
}

/// The whole body, when the commit chunk already holds every byte a non-SSE answer declared.
fn complete_body(c: &Committed) -> Option<Bytes> {
    match (&c.first, c.content_length) {
        (Some(first), Some(len)) if !c.is_sse && first.len() as u64 == len => Some(first.clone()),
        (None, Some(0)) if !c.is_sse => Some(Bytes::new()),
        _ => None,
    }
}

/// `GET /v1/models`: one entry per model name with an active backend.
async fn list_models(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    require_lister(&req, &state)?;
    check_rate(&req, &state)?;
    let snapshot = state.table.snapshot();
    let mut models: Vec<_> = snapshot
        .iter()
        .filter_map(|(name, route)| model_entry(name, &route.backends))
        .collect();
    models.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    Ok(HttpResponse::Ok().json(json!({"object": "list", "data": models})))
}

/// `GET /v1/models/{model}`: one entry of the list (the openai SDK's `models.retrieve`).
async fn get_model(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    require_lister(&req, &state)?;
    check_rate(&req, &state)?;
    let snapshot = state.table.snapshot();
    snapshot
        .get(path.as_str())
        .and_then(|route| model_entry(&path, &route.backends))
        .map(|entry| HttpResponse::Ok().json(entry))
        .ok_or_else(|| ApiError::model_not_found(&path))
}

/// Who may list models: a client key, or the UI's Basic login (the compare page fills its
/// picker from `/v1/models` and has no API key). Completions always need a key.
fn require_lister(req: &HttpRequest, state: &AppState) -> Result<(), ApiError> {
    if credentials::ui_login_given(req.headers(), &state.ui_credentials) {
        return Ok(());
    }
    auth::require_client(req, state)
}

/// A model's `/v1/models` entry, when it has an active backend: `created` is its first
/// registration (unix seconds), `owned_by` the owners of its registrations, comma-joined
/// ("switchboard" when none has one).
fn model_entry(name: &str, backends: &[Arc<BackendHandle>]) -> Option<serde_json::Value> {
    let active = backends.iter().filter(|b| b.is_active()).count();
    let healthy = backends.iter().filter(|b| b.is_routable()).count();
    (active > 0).then(|| {
        let created = backends
            .iter()
            .map(|b| b.registered_at_ms / 1000)
            .min()
            .unwrap_or(0);
        let mut owners: Vec<&str> = backends
            .iter()
            .filter_map(|b| b.owner.as_deref())
            .map(str::trim)
            .filter(|o| !o.is_empty())
            .collect();
        owners.sort_unstable();
        owners.dedup();
        let owned_by = if owners.is_empty() {
            "switchboard".to_string()
        } else {
            owners.join(",")
        };
        json!({"id": name, "object": "model", "created": created,
               "owned_by": owned_by, "backends": active, "healthy_backends": healthy})
    })
}

#[cfg(test)]
#[path = "openai_tests.rs"]
mod tests;
