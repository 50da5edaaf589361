//! What every request passes first (SPEC §8): the body deadline and the drain answer.
//!
//! - **Body deadline.** A request's body must arrive within `SWITCHBOARD_REQUEST_TIMEOUT_S`
//!   (the head is held to the same limit by actix-http's `client_request_timeout`). The request
//!   payload is wrapped in [`Deadline`]; when it fires the handler's read fails, and whatever the
//!   handler answered is replaced by 408 in the error shape, after which the connection is
//!   closed at once (`conn.rs`): a client dribbling a chunked body no longer holds a socket.
//! - **Draining.** After SIGTERM the listener keeps accepting until exit so that probes and
//!   clients learn at once: `/health` → 503 `{"status":"draining"}`, other new work → 503 in the
//!   error shape. WebSocket upgrades pass: the socket is accepted and closed with 4503 (`ws.rs`).

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::body::{BoxBody, MessageBody, SizedStream};
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::http::{header, StatusCode};
use actix_web::middleware::Next;
use actix_web::{web, HttpMessage, HttpResponse, ResponseError};
use bytes::Bytes;
use futures_util::Stream;

use crate::errors::ApiError;
use crate::http::conn::{self, CloseOnEnd};
use crate::state::AppState;

/// The gate's settings (from `Config`).
#[derive(Clone, Copy, Debug)]
pub struct GateSettings {
    /// How long a request's body may take to arrive.
    pub request_timeout: Duration,
}

/// The middleware (`middleware::from_fn`): see the module docs.
pub async fn gate(
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
    settings: GateSettings,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let upgrade = is_websocket(&req);
    let draining = req
        .app_data::<web::Data<AppState>>()
        .is_some_and(|s| s.sessions.is_draining());
    if draining && !upgrade {
        let resp = if req.path() == "/health" {
            HttpResponse::ServiceUnavailable().json(serde_json::json!({"status": "draining"}))
        } else {
            ApiError::draining().error_response()
        };
        return Ok(req.into_response(resp));
    }
    let fired = Rc::new(Cell::new(false));
    if has_body(&req) && !upgrade {
        let payload = Deadline {
            inner: req.take_payload(),
            timer: Box::pin(tokio::time::sleep(settings.request_timeout)),
            fired: Rc::clone(&fired),
        };
        req.set_payload(Payload::from(
            Box::pin(payload) as actix_http::BoxedPayloadStream
        ));
    }
    let conn = conn::of(req.request());
    let res = next.call(req).await?;
    if !fired.get() {
        return Ok(res.map_into_boxed_body());
    }
    log::info!(
        "{} {}: request body not complete within {} s; 408 and close",
        res.request().method(),
        res.request().path(),
        settings.request_timeout.as_secs_f64()
    );
    let err = ApiError::with_status(
        StatusCode::REQUEST_TIMEOUT,
        "request_timeout",
        format!(
            "the request body did not arrive within {} s",
            settings.request_timeout.as_secs_f64()
        ),
    );
    let json = Bytes::from(err.body().to_string());
    let body = SizedStream::new(
        json.len() as u64,
        CloseOnEnd::new(
            futures_util::stream::once(async move { Ok::<_, actix_web::Error>(json) }),
            conn,
        ),
    );
    let resp = HttpResponse::build(StatusCode::REQUEST_TIMEOUT)
        .insert_header((header::CONNECTION, "close"))
        .content_type("application/json")
        .body(body);
    Ok(res.into_response(resp))
}

fn is_websocket(req: &ServiceRequest) -> bool {
    req.headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

fn has_body(req: &ServiceRequest) -> bool {
    let length = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    length.is_some_and(|n| n > 0) || req.headers().contains_key(header::TRANSFER_ENCODING)
}

/// A request payload that fails with a timeout once its deadline passes.
struct Deadline {
    inner: Payload,
    timer: Pin<Box<tokio::time::Sleep>>,
    /// Set when the deadline cut the body off; the gate then answers 408.
    fired: Rc<Cell<bool>>,
}

impl Stream for Deadline {
    type Item = Result<Bytes, actix_web::error::PayloadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let ready @ Poll::Ready(_) = Pin::new(&mut self.inner).poll_next(cx) {
            return ready;
        }
        if self.fired.get() || self.timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        self.fired.set(true);
        Poll::Ready(Some(Err(actix_web::error::PayloadError::Io(
            std::io::Error::new(std::io::ErrorKind::TimedOut, "request body timeout"),
        ))))
    }
}
