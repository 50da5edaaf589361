//! The SSE transport of thread sessions (SPEC §5): the same sessions as `/ws`, for networks
//! that block WebSockets. Commands are POSTs; events stream from `GET .../events` with `id:`,
//! `event:` and `data:` lines, and resume from `Last-Event-ID`.

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use actix::Addr;
use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use serde::Deserialize;
use serde_json::json;
use switchboard_actors::events::{CancelFields, Command, Encoded, EventBody, SendTurn};
use switchboard_actors::model_stream::StopReason;
use switchboard_actors::outbound::{Admit, Framing, Outbound, Pushed};
use switchboard_actors::routing::RoutingTable;
use switchboard_actors::session::{
    Attach, CloseReason, ConnectionSink, Detach, End, GetState, Session,
};
use switchboard_actors::sessions::{ConnectionSlot, SessionsError};
use tokio::time::{interval_at, Instant, Interval, MissedTickBehavior};

use crate::errors::ApiError;
use crate::http::request::read_body;
use crate::state::AppState;

/// Routes of the session REST + SSE API.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/api/sessions", web::post().to(create))
        .route("/api/sessions/{id}", web::get().to(get_state))
        .route("/api/sessions/{id}", web::delete().to(end))
        .route("/api/sessions/{id}/events", web::get().to(events))
        .route("/api/sessions/{id}/messages", web::post().to(send))
        .route("/api/sessions/{id}/cancel", web::post().to(cancel))
        .route("/api/sessions/{id}/clear", web::post().to(clear));
}

/// Models with an active backend, for the `session` event.
pub fn models_available(table: &RoutingTable) -> Vec<String> {
    let mut v: Vec<String> = table
        .snapshot()
        .iter()
        .filter(|(_, r)| r.backends.iter().any(|b| b.is_active()))
        .map(|(m, _)| m.clone())
        .collect();
    v.sort();
    v
}

fn guard(req: &HttpRequest, state: &AppState) -> Result<(), ApiError> {
    crate::auth::require_ui(req, state, crate::credentials::Surface::Sessions)
}

/// 400 naming the field when a client-chosen id carries a control character.
fn untrusted(checked: Result<(), (&'static str, String)>) -> Result<(), ApiError> {
    checked.map_err(|(field, message)| ApiError::invalid_param(field, message))
}

fn session(state: &AppState, id: &str) -> Result<Addr<Session>, ApiError> {
    untrusted(switchboard_actors::events::check_untrusted(
        "session_id",
        id,
    ))?;
    state.sessions.get(id)?.ok_or_else(|| {
        ApiError::not_found(format!("no session {id} (unknown or expired)"))
            .with_code("session_not_found")
    })
}

async fn create(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    guard(&req, &state)?;
    crate::http::request::check_rate(&req, &state)?;
    let (id, _) = state.sessions.create().map_err(ApiError::from)?;
    Ok(HttpResponse::Created().json(json!({"session_id": id})))
}

async fn get_state(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    guard(&req, &state)?;
    let addr = session(&state, &path)?;
    let s = addr
        .send(GetState)
        .await
        .map_err(|_| ApiError::not_found("session ended"))?;
    Ok(HttpResponse::Ok().json(s))
}

async fn end(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    guard(&req, &state)?;
    let addr = session(&state, &path)?;
    addr.do_send(End(StopReason::Cancelled));
    Ok(HttpResponse::NoContent().finish())
}

async fn run_command(state: &AppState, id: &str, cmd: Command) -> Result<(), ApiError> {
    let addr = session(state, id)?;
    addr.send(cmd)
        .await
        .map_err(|_| ApiError::not_found("session ended"))?
        .map_err(ApiError::from)
}

/// A command body this transport refuses: 400 with the code a WebSocket client gets for the
/// same mistake (`invalid_message`); the message and `param` still name what was wrong.
fn invalid_message(e: ApiError) -> ApiError {
    if e.status == actix_web::http::StatusCode::BAD_REQUEST && e.code.is_none() {
        e.with_code("invalid_message")
    } else {
        e
    }
}

fn parse<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, ApiError> {
    switchboard_actors::json::from_slice(body).map_err(|e| invalid_message(e.into()))
}

/// The `send` body: a [`SendTurn`] whose `type` may be present (the same JSON as over WS) or
/// not. Read as a map first (not `#[serde(flatten)]`, which would hide the failing field's
/// name from the error).
struct SendBody {
    kind: Option<serde_json::Value>,
    send: SendTurn,
}

fn parse_send(body: &[u8]) -> Result<SendBody, ApiError> {
    let mut map: serde_json::Map<String, serde_json::Value> = parse(body)?;
    let kind = map.remove("type");
    let send = switchboard_actors::json::from_value(serde_json::Value::Object(map))
        .map_err(|e| invalid_message(e.into()))?;
    Ok(SendBody { kind, send })
}

async fn send(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    guard(&req, &state)?;
    crate::http::request::check_rate(&req, &state)?;
    let body = read_body(&req, payload, state.proxy.max_body_bytes).await?;
    let b = parse_send(&body)?;
    if b.kind.is_some_and(|k| k != "send") {
        return Err(invalid_message(ApiError::invalid(
            "`type`, when given, must be \"send\"",
        )));
    }
    let request_id = b.send.request_id.clone();
    let command = Command::Send(b.send);
    untrusted(command.check_untrusted()).map_err(invalid_message)?;
    run_command(&state, &path, command).await?;
    Ok(HttpResponse::Accepted().json(json!({"request_id": request_id})))
}

async fn cancel(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    guard(&req, &state)?;
    let body = read_body(&req, payload, state.proxy.max_body_bytes).await?;
    let b: CancelFields = parse(&body)?;
    let request_id = b.request_id.clone();
    let command = Command::from(b);
    untrusted(command.check_untrusted()).map_err(invalid_message)?;
    run_command(&state, &path, command).await?;
    Ok(HttpResponse::Accepted().json(json!({"request_id": request_id})))
}

async fn clear(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    guard(&req, &state)?;
    run_command(&state, &path, Command::Clear).await?;
    Ok(HttpResponse::Accepted().json(json!({"cleared": true})))
}

#[derive(Deserialize)]
struct EventsQuery {
    last_event_id: Option<String>,
}

/// Where an SSE client resumes: the `Last-Event-ID` header, else `?last_event_id=`. A value
/// that is not an event id is refused, naming it, instead of silently starting over.
fn resume_position(req: &HttpRequest) -> Result<Option<u64>, ApiError> {
    let bad = |param: &str, value: &str| {
        let mut e = invalid_message(ApiError::invalid(format!(
            "{param} must be an event id (a whole number), not `{value}`"
        )));
        e.param = Some(param.into());
        e
    };
    if let Some(header) = req.headers().get("last-event-id") {
        let value = header.to_str().unwrap_or("").trim();
        if !value.is_empty() {
            return value
                .parse()
                .map(Some)
                .map_err(|_| bad("Last-Event-ID", value));
        }
    }
    let query = web::Query::<EventsQuery>::from_query(req.query_string())
        .map(|q| q.into_inner().last_event_id)
        .unwrap_or_default();
    match query.as_deref().map(str::trim) {
        Some(v) if !v.is_empty() => v.parse().map(Some).map_err(|_| bad("last_event_id", v)),
        _ => Ok(None),
    }
}

async fn events(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    guard(&req, &state)?;
    let addr = session(&state, &path)?;
    if state.sessions.is_draining() {
        return Err(SessionsError::Draining.into());
    }
    let ip = crate::http::client_ip(&req, state.trust_proxy);
    let slot = state.sessions.claim_connection(ip).ok_or_else(|| {
        crate::auth::rate_limited(&req, &state, crate::credentials::Surface::Sessions, 5);
        ApiError::rate_limited("too many session connections from this address", 5)
    })?;
    let last_event_id = resume_position(&req)?;

    let conn_id = state.sessions.next_connection_id();
    // Past `SWITCHBOARD_OUTBOUND_LIMIT_BYTES` queued, the client is a slow consumer: its
    // stream ends (it reconnects with `Last-Event-ID` and resumes).
    let queue = Arc::new(SseQueue::new(state.outbound_limit, Admit::WithinLimit));
    addr.do_send(Attach {
        conn_id,
        sink: Box::new(SseSink {
            queue: Arc::clone(&queue),
        }),
        last_event_id,
        resumed: last_event_id.is_some(),
        models_available: models_available(&state.table),
    });
    log::info!(
        "connection_id={conn_id} session_id={} ip={ip} SSE attached",
        path.as_str()
    );
    let mut heartbeat = interval_at(
        Instant::now() + state.liveness.sse_heartbeat,
        state.liveness.sse_heartbeat,
    );
    // A stream that was not polled for a while sends one heartbeat, not a burst of them.
    heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let body = SseBody {
        queue,
        heartbeat,
        detach: Some((addr, conn_id)),
        _slot: slot,
        ip,
    };
    Ok(event_stream(body))
}

/// Session events as SSE frames (`id:`, `event:`, `data:`); an event costs
/// [`Encoded::cost`].
struct SseEvents;

impl Framing for SseEvents {
    type Item = Arc<Encoded>;

    fn cost(event: &Arc<Encoded>) -> usize {
        event.cost()
    }

    fn encode(event: &Arc<Encoded>, out: &mut BytesMut) {
        out.extend_from_slice(event.sse_frame().as_bytes());
    }
}

/// One SSE client's outbound queue, shared by its sink and its body.
type SseQueue = Outbound<SseEvents>;

/// How a session reaches an SSE client: its outbound queue, with a byte budget.
struct SseSink {
    queue: Arc<SseQueue>,
}

impl ConnectionSink for SseSink {
    fn deliver(&self, event: Arc<Encoded>) -> bool {
        match self.queue.push(event) {
            Pushed::Queued => true,
            Pushed::Refused => false,
            Pushed::OverLimit => {
                // The queue accepts nothing more: the body writes what it holds and ends.
                log::info!(
                    "SSE client too slow ({} bytes queued); ending its stream",
                    self.queue.queued()
                );
                false
            }
        }
    }

    fn close(&self, _reason: CloseReason) {
        // The body writes what is queued, then ends.
        self.queue.finish();
    }
}

impl Drop for SseSink {
    fn drop(&mut self) {
        // The session let go of this client: the body writes what is queued, then ends.
        self.queue.finish();
    }
}

/// A `200 text/event-stream` answer streaming `body`, uncached and unbuffered by proxies
/// (`X-Accel-Buffering: no` for nginx): the one shape of every event stream the broker serves
/// (SSE sessions, push connections).
pub fn event_stream<S, E>(body: S) -> HttpResponse
where
    S: Stream<Item = Result<Bytes, E>> + 'static,
    E: Into<Box<dyn std::error::Error>> + 'static,
{
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header(("x-accel-buffering", "no"))
        .streaming(body)
}

/// The `text/event-stream` body of one SSE client. Dropped when the client goes away, which
/// detaches it from its session and frees its connection slot.
struct SseBody {
    queue: Arc<SseQueue>,
    heartbeat: Interval,
    detach: Option<(Addr<Session>, u64)>,
    _slot: ConnectionSlot,
    ip: IpAddr,
}

impl Stream for SseBody {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        // Whatever is queued, batched into one write; the end once the queue is finished
        // (closed by the session, over its limit) and drained.
        match this.queue.poll_batch(cx) {
            Poll::Ready(Some(batch)) => return Poll::Ready(Some(Ok(batch.bytes))),
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => {}
        }
        // Every interval, busy or not (SPEC §5 "every 10 s"), as on the WebSocket.
        if this.heartbeat.poll_tick(cx).is_ready() {
            let hb = Encoded::new(None, &EventBody::Heartbeat {});
            return Poll::Ready(Some(Ok(Bytes::from(hb.sse_frame()))));
        }
        Poll::Pending
    }
}

impl Drop for SseBody {
    fn drop(&mut self) {
        // The client is gone: the session's next delivery detaches it.
        drop(self.queue.close());
        if let Some((addr, conn_id)) = self.detach.take() {
            log::info!("connection_id={conn_id} ip={} SSE stream closed", self.ip);
            addr.do_send(Detach { conn_id });
        }
    }
}
