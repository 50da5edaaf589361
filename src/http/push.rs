//! The push gateway's HTTP side (SPEC §6): `GET /push/<any path>` holds an application's SSE
//! client, `POST /internal/send` lets the application push to it by token. The registry,
//! ordering and callbacks live in `switchboard_actors::push`; this module maps them to HTTP.
//!
//! Off (every route 404) unless `SWITCHBOARD_PUSH_CALLBACK_URL` is set.

use std::collections::HashMap;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use actix_web::http::header::{self, HeaderMap};
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::Bytes;
use futures_util::Stream;
use serde::Deserialize;
use serde_json::{json, Value};
use switchboard_actors::push::{
    encode_event, ConnectError, PushConnection, PushEvent, PushHub, SendError,
};
use switchboard_actors::sessions::ConnectionSlot;
use tokio::time::{interval_at, Instant, Interval};

use crate::auth::{self, Denied};
use crate::credentials::{self, bearer, Reason, Surface, UiCredentials};
use crate::errors::ApiError;
use crate::http::request::read_body;
use crate::state::AppState;

/// Routes of the push gateway (registered always; they answer 404 while it is off).
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/push/{tail:.*}", web::get().to(connect))
        .route("/internal/send", web::post().to(send));
}

fn hub<'a>(state: &'a AppState, req: &HttpRequest) -> Result<&'a Arc<PushHub>, ApiError> {
    state.push.as_ref().ok_or_else(|| {
        ApiError::not_found(format!(
            "no route for {} {} (the push gateway is off: set SWITCHBOARD_PUSH_CALLBACK_URL)",
            req.method(),
            req.path()
        ))
    })
}

/// The client's request headers as one JSON object (lowercase names; repeated headers joined
/// with `, `, cookies with `; `). The application's own `Authorization` and `Cookie` are passed
/// on (it needs them to decide who connected), but never the broker's own credentials: an
/// `Authorization` that is the UI's Basic login (a browser that logged in to the dashboard
/// sends it to every path of the origin) is left out, and so is an `X-API-Key`.
fn headers_json(headers: &HeaderMap, ui: &UiCredentials) -> Value {
    let mut map = serde_json::Map::new();
    for name in headers.keys() {
        if name == "x-api-key" {
            continue;
        }
        let sep = if name == header::COOKIE { "; " } else { ", " };
        let joined = headers
            .get_all(name)
            .filter(|v| {
                !(name == header::AUTHORIZATION && credentials::is_ui_login(v.as_bytes(), ui))
            })
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect::<Vec<_>>();
        if joined.is_empty() {
            continue;
        }
        map.insert(name.as_str().to_string(), Value::String(joined.join(sep)));
    }
    Value::Object(map)
}

async fn connect(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let hub = hub(&state, &req)?;
    if state.sessions.is_draining() || hub.is_shutting_down() {
        return Err(ApiError::unavailable("server is draining; reconnect later"));
    }
    // Each connect costs the application a callback: it counts against the per-IP rate.
    crate::http::request::check_rate(&req, &state)?;
    let ip = crate::http::client_ip(&req, state.trust_proxy);
    let slot = state.sessions.claim_connection(ip).ok_or_else(|| {
        auth::rate_limited(&req, &state, Surface::Push, 5);
        ApiError::rate_limited("too many streaming connections from this address", 5)
    })?;
    let url = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.path().to_string(), |pq| pq.as_str().to_string());
    let request =
        json!({"url": url, "headers": headers_json(req.headers(), &state.ui_credentials)});
    let mut conn = hub
        .open(request)
        .map_err(|_| ApiError::unavailable("server is draining; reconnect later"))?;
    // Logged without the query: it may carry the client's own credentials.
    let path = req.path();
    match conn.connect().await {
        Ok(accepted) => {
            log::info!("push token={} ip={ip} path={path} connected", conn.token());
            let body = PushBody {
                conn,
                first: accepted.event,
                close_after_first: accepted.close,
                finished: false,
                // `: heartbeat` comments keep proxies from timing idle streams out.
                heartbeat: interval_at(
                    Instant::now() + state.liveness.push_heartbeat,
                    state.liveness.push_heartbeat,
                ),
                _slot: slot,
                ip,
            };
            Ok(crate::http::sse::event_stream(body))
        }
        Err(e) => {
            match &e {
                ConnectError::Rejected(status) => log::info!(
                    "push ip={ip} path={path} rejected by the application (HTTP {status})"
                ),
                ConnectError::Timeout => {
                    log::warn!("push ip={ip} path={path}: the connect callback timed out; 504")
                }
                ConnectError::Unreachable(e) => {
                    log::warn!("push ip={ip} path={path}: the connect callback failed ({e}); 502")
                }
                ConnectError::Gone => {}
            }
            Err(e.into())
        }
    }
}

/// The `/internal/send` body. Unknown fields are refused (a typo such as `"clsoe"` must not
/// pass silently).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SendBody {
    token: String,
    event: Option<PushEvent>,
    #[serde(default)]
    close: bool,
}

/// The secret from `Authorization: Bearer` or `?secret=`, compared in constant time, counted
/// and throttled like every credential. 401 is answered here and nowhere else in the push
/// gateway.
fn authorize(req: &HttpRequest, state: &AppState, hub: &PushHub) -> Result<(), ApiError> {
    let from_query = || {
        web::Query::<HashMap<String, String>>::from_query(req.query_string())
            .ok()
            .and_then(|q| q.get("secret").cloned())
    };
    let given = bearer(req.headers())
        .map(str::to_string)
        .or_else(from_query);
    let verdict = auth::gate(req, state, Surface::Push, || {
        credentials::secret_verdict(given.as_deref(), hub.secret())
    });
    match verdict {
        Ok(()) => Ok(()),
        Err(Denied::Throttled(e)) => Err(e),
        Err(Denied::Refused(Reason::Missing)) => Err(ApiError::unauthorized(
            "push secret required: send Authorization: Bearer <secret> or ?secret=<secret>",
        )
        .with_code("invalid_push_secret")),
        Err(Denied::Refused(_)) => {
            Err(ApiError::unauthorized("invalid push secret").with_code("invalid_push_secret"))
        }
    }
}

async fn send(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let hub = hub(&state, &req)?;
    authorize(&req, &state, hub)?;
    let body = read_body(&req, payload, state.proxy.max_body_bytes).await?;
    let b: SendBody = switchboard_actors::json::from_slice(&body)?;
    if b.event.is_none() && !b.close {
        return Err(ApiError::invalid_param(
            "event",
            "`event` is required (unless `close` is true)",
        ));
    }
    let event = b
        .event
        .as_ref()
        .map(encode_event)
        .transpose()
        .map_err(|e| ApiError::invalid_param("event", e))?;
    match hub.send(&b.token, event, b.close) {
        Ok(()) => Ok(HttpResponse::Ok().json(json!({"ok": true}))),
        Err(SendError::UnknownToken) => Err(ApiError::not_found(
            "no open push connection has this token",
        )
        .with_code("unknown_token")),
        Err(SendError::SlowConsumer) => Err(ApiError::not_found(
            "the connection was closed: its client could not keep up (reason `error`)",
        )
        .with_code("unknown_token")),
    }
}

/// The `text/event-stream` body of one push client: the connect answer's event first, then the
/// token's queue in order, batched (`switchboard_actors::outbound`). Dropping it (client gone, stream ended, server stopping) reports the
/// disconnect through the `PushConnection` guard and frees the connection slot.
struct PushBody {
    conn: PushConnection,
    first: Option<Bytes>,
    close_after_first: bool,
    finished: bool,
    heartbeat: Interval,
    _slot: ConnectionSlot,
    ip: IpAddr,
}

impl PushBody {
    fn finish_by_server(&mut self) {
        self.finished = true;
        self.conn.mark_server_closed();
    }
}

impl Stream for PushBody {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.finished {
            return Poll::Ready(None);
        }
        let first = this.first.take();
        if this.close_after_first {
            this.finish_by_server();
        }
        let mut queued = None;
        if !this.finished {
            match this.conn.poll_batch(cx) {
                Poll::Ready(Some(batch)) => {
                    if batch.last {
                        // A `close: true` frame: nothing follows it.
                        this.finish_by_server();
                    }
                    queued = Some(batch.bytes);
                }
                // The hub dropped the connection (shutdown, slow consumer): it has reported it.
                Poll::Ready(None) => this.finished = true,
                Poll::Pending => {}
            }
        }
        let batch = match (first, queued) {
            (Some(first), Some(queued)) => [first, queued].concat().into(),
            (first, queued) => first.or(queued).unwrap_or_default(),
        };
        if !batch.is_empty() {
            this.heartbeat.reset();
            return Poll::Ready(Some(Ok(batch)));
        }
        if this.finished {
            return Poll::Ready(None);
        }
        if this.heartbeat.poll_tick(cx).is_ready() {
            return Poll::Ready(Some(Ok(Bytes::from_static(b": heartbeat\n\n"))));
        }
        Poll::Pending
    }
}

impl Drop for PushBody {
    fn drop(&mut self) {
        log::debug!(
            "push token={} ip={} stream closed",
            self.conn.token(),
            self.ip
        );
    }
}

/// Starts the push gateway when `SWITCHBOARD_PUSH_CALLBACK_URL` is set (`None` otherwise).
/// A callback URL without `SWITCHBOARD_PUSH_SECRET` is refused: `/internal/send` would be
/// open to anyone who can reach the broker. `queue_limit` bounds each client's queued bytes.
pub fn start(
    callback_url: Option<&str>,
    secret: Option<&str>,
    queue_limit: usize,
) -> Result<Option<Arc<PushHub>>, String> {
    let Some(url) = callback_url.map(str::trim).filter(|u| !u.is_empty()) else {
        return Ok(None);
    };
    let Some(secret) = secret.filter(|s| !s.is_empty()) else {
        return Err(
            "SWITCHBOARD_PUSH_SECRET: must be set when SWITCHBOARD_PUSH_CALLBACK_URL is".into(),
        );
    };
    let hub = PushHub::start(switchboard_actors::push::PushSettings {
        callback_url: url.to_string(),
        secret: secret.to_string(),
        callback_timeout: switchboard_actors::push::CALLBACK_TIMEOUT,
        queue_limit,
    })
    .map_err(|e| format!("cannot start the push gateway: {e}"))?;
    log::info!(
        "push gateway on: callbacks to {}",
        switchboard_actors::push::strip_query(url)
    );
    Ok(Some(hub))
}
