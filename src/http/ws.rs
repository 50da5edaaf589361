//! `GET /ws`: the WebSocket transport of thread sessions (SPEC §4). One `WsConnection` actor
//! per socket adapts frames to session commands and session events to frames.
//!
//! This is the only file that uses `actix-web-actors` (deprecated upstream in favour of
//! `actix-ws`), so a later switch stays local.
//!
//! Session events skip the actor: the session-side sink puts them in the connection's
//! outbound queue ([`WsQueue`], the shared `switchboard_actors::outbound` queue) and wakes the
//! response body, whose wrapper ([`Metered`]) writes them as text frames (see `ws_body.rs`).
//! That is one task hop and one mailbox message less per token than routing events through the
//! actor. The actor handles what the client sends, pings, heartbeats and closes; every close
//! (by the session, the client or a limit) first moves the events still in the queue into the
//! actor's own buffer and shuts the queue, so the close frame is the last frame (RFC 6455
//! §5.5.1).
//!
//! Flow control: the actor lives inside the response body, so while a slow client's socket is
//! full the dispatcher stops polling it and the actor cannot run. The bytes waiting are
//! therefore counted in the queue: past the outbound limit (1 MiB) the sink refuses further
//! events (the session detaches the connection, so memory stays bounded) and the connection is
//! closed with 4009 as soon as it can write again: the client reconnects and resumes from its
//! last id. Queued events are not merged: a resume from the session's buffer is the recovery
//! path.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_web::{web, HttpRequest, HttpResponse};
use actix_web_actors::ws::{self, CloseCode, CloseReason, ProtocolError, WebsocketContext};
use switchboard_actors::events::{
    parse_client_message, ByteString, ClientMessage, Encoded, EventBody,
};
use switchboard_actors::outbound::{Admit, Pushed};
use switchboard_actors::session::{
    Attach, CloseReason as EngineClose, ConnectionSink, Detach, Session,
};
use switchboard_actors::sessions::{ConnectionSlot, Sessions, SessionsError};

use crate::errors::ApiError;
use crate::http::conn::CloseOnEnd;
use crate::http::sse::models_available;
use crate::http::ws_body::{frame_len, Metered, WsQueue};
use crate::http::ws_guard::{FrameGuard, Refusal, Verdict};
use crate::state::AppState;

/// How long a new connection has to send `hello` (close 4400 after).
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a connection still waiting for its `hello` looks for a drain.
const HELLO_CHECK: Duration = Duration::from_millis(250);
/// Largest frame accepted from a client (close 1009 above).
const MAX_FRAME: usize = 1024 * 1024;

/// Close codes of SPEC §4.3.
pub mod close {
    pub const UNKNOWN_SESSION: u16 = 4001;
    pub const SLOW_CONSUMER: u16 = 4009;
    pub const TOO_MANY_CONNECTIONS: u16 = 4029;
    pub const BAD_HELLO: u16 = 4400;
    pub const UNAVAILABLE: u16 = 4503;
    pub const UNAUTHORIZED: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const GOING_AWAY: u16 = 1001;

    /// The code for an end the engine decided (SPEC §4.3).
    pub fn code(reason: super::EngineClose) -> u16 {
        match reason {
            super::EngineClose::SessionEnded => UNKNOWN_SESSION,
            super::EngineClose::ShuttingDown => GOING_AWAY,
        }
    }
}

/// The words of a 4503 close.
fn unavailable(e: SessionsError) -> &'static str {
    match e {
        SessionsError::AtCapacity => "at capacity; reconnect later",
        SessionsError::Draining => "server draining; reconnect later",
    }
}

/// Routes of the WebSocket transport.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/ws", web::get().to(upgrade));
}

async fn upgrade(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let ip = crate::http::client_ip(&req, state.trust_proxy);
    let conn_id = state.sessions.next_connection_id();
    // Limits are enforced after the upgrade, so a browser can see the close code.
    let slot = state.sessions.claim_connection(ip);
    // A throttled client (too many failed logins) gets 429 before the upgrade; a refused
    // login is closed with 1008 after it. Both are counted and logged (auth::gate).
    let logged_in = crate::auth::ws_login(&req, &state)?;
    let preclose = if !logged_in {
        Some((close::UNAUTHORIZED, "unauthorized"))
    } else if state.sessions.is_draining() {
        Some((close::UNAVAILABLE, unavailable(SessionsError::Draining)))
    } else if slot.is_none() {
        Some((
            close::TOO_MANY_CONNECTIONS,
            "too many connections from this address",
        ))
    } else {
        None
    };
    let queue = Arc::new(WsQueue::new(state.outbound_limit, Admit::UntilOver));
    // Frame headers are judged before the codec buffers a payload (ws_guard.rs).
    let (payload, refusal) = FrameGuard::new(payload, MAX_FRAME);
    let actor = WsConnection {
        conn_id,
        ip,
        sessions: Arc::clone(&state.sessions),
        state: state.clone(),
        slot,
        preclose,
        session: None,
        session_id: None,
        last_heard: Instant::now(),
        queue: Arc::clone(&queue),
        refusal,
        fragments: None,
    };
    let mut resp = ws::handshake(&req)
        .map_err(|e| ApiError::invalid(format!("not a WebSocket upgrade: {e}")))?;
    let codec = actix_http::ws::Codec::new().max_size(MAX_FRAME);
    let body = WebsocketContext::with_codec(actor, payload, codec);
    // After the close frame the connection ends at once (RFC 6455 §7.1.1), not after
    // actix-http's linger.
    let body = CloseOnEnd::new(Metered::new(body, queue), crate::http::conn::of(&req));
    Ok(resp.streaming(body))
}

/// One WebSocket client. Stopped by a close, a protocol error, silence, or its session ending.
pub struct WsConnection {
    conn_id: u64,
    ip: IpAddr,
    sessions: Arc<Sessions>,
    state: web::Data<AppState>,
    /// This IP's connection slot; released when the actor is dropped.
    slot: Option<ConnectionSlot>,
    /// A limit hit at upgrade time: close with this code as soon as the socket is open.
    preclose: Option<(u16, &'static str)>,
    /// The attached session; `None` until a valid `hello`. Told on stop (`Detach`).
    session: Option<(String, Addr<Session>)>,
    /// The session this connection said hello to, kept for log lines after it detached.
    session_id: Option<String>,
    last_heard: Instant,
    /// This connection's outbound queue and its byte count, shared with its sink and body
    /// wrapper.
    queue: Arc<WsQueue>,
    /// Set by the frame guard when it stopped reading the client (close 1009 / 1002).
    refusal: Verdict,
    /// A fragmented message being reassembled (RFC 6455 §5.4): whether it is text, and its
    /// bytes so far (at most [`MAX_FRAME`] in all, like a single frame).
    fragments: Option<(bool, bytes::BytesMut)>,
}

impl WsConnection {
    fn label(&self) -> String {
        let session = self.session_id.as_deref().unwrap_or("-");
        format!(
            "connection_id={} session_id={session} ip={}",
            self.conn_id, self.ip
        )
    }

    /// Drops the connection once it has been silent (no frame, no pong) for the configured
    /// limit: checked when the silence could first reach it, then re-armed for the rest (one
    /// timer per connection).
    fn watch_silence(ctx: &mut WebsocketContext<Self>, after: Duration) {
        ctx.run_later(after, |act, ctx| {
            let limit = act.state.liveness.ws_silence_timeout;
            let silent = act.last_heard.elapsed();
            if silent >= limit {
                log::info!(
                    "{} silent for {} s; dropping",
                    act.label(),
                    silent.as_secs()
                );
                ctx.stop();
            } else {
                Self::watch_silence(ctx, limit - silent);
            }
        });
    }

    /// Until `hello` arrives: close with 4400 when `left` runs out, and with 1001 as soon as
    /// the server starts draining (the session directory closes only attached connections).
    /// A few checks in the first seconds of a connection, none after its `hello`.
    fn await_hello(ctx: &mut WebsocketContext<Self>, left: Duration) {
        let step = HELLO_CHECK.min(left);
        ctx.run_later(step, move |act, ctx| {
            if act.session.is_some() {
                return;
            }
            if act.state.sessions.is_draining() {
                let reason = EngineClose::ShuttingDown;
                act.close_with(ctx, close::code(reason), reason.message());
            } else if left <= step {
                act.close_with(ctx, close::BAD_HELLO, "no hello within 5 s");
            } else {
                Self::await_hello(ctx, left - step);
            }
        });
    }

    /// 4503 for a session the directory cannot give now (at capacity, or draining).
    fn close_unavailable(&mut self, ctx: &mut WebsocketContext<Self>, e: SessionsError) {
        self.close_with(ctx, close::UNAVAILABLE, unavailable(e));
    }

    fn close_with(&mut self, ctx: &mut WebsocketContext<Self>, code: u16, reason: &str) {
        log::info!("{} closing with {code}: {reason}", self.label());
        self.close_frame(
            ctx,
            Some(CloseReason {
                code: CloseCode::Other(code),
                description: Some(reason.to_string()),
            }),
        );
    }

    /// Sends the close frame last: events still in the queue go into the actor's buffer
    /// before it, and the queue is shut so nothing follows it (RFC 6455 §5.5.1).
    fn close_frame(&mut self, ctx: &mut WebsocketContext<Self>, reason: Option<CloseReason>) {
        for event in self.queue.close() {
            self.send_now(ctx, &event.json);
        }
        ctx.close(reason);
        ctx.stop();
    }

    fn send_now(&mut self, ctx: &mut WebsocketContext<Self>, json: &ByteString) {
        ctx.text(json.clone());
    }

    /// An event outside the session sequence (pong, invalid message, busy, heartbeat).
    fn reply(&mut self, ctx: &mut WebsocketContext<Self>, body: &EventBody) {
        let event = Encoded::new(None, body);
        self.queue.count(frame_len(event.json.len()));
        self.send_now(ctx, &event.json);
    }

    /// Reassembles a fragmented message: a text message is handled whole when its last
    /// fragment arrives; over 1 MiB in all it is refused with 1009 like one big frame.
    fn on_fragment(&mut self, item: actix_http::ws::Item, ctx: &mut WebsocketContext<Self>) {
        let (first, last, bytes) = match item {
            actix_http::ws::Item::FirstText(b) => (Some(true), false, b),
            actix_http::ws::Item::FirstBinary(b) => (Some(false), false, b),
            actix_http::ws::Item::Continue(b) => (None, false, b),
            actix_http::ws::Item::Last(b) => (None, true, b),
        };
        match (first, self.fragments.as_mut()) {
            (Some(is_text), None) => {
                self.fragments = Some((is_text, bytes::BytesMut::from(&bytes[..])));
            }
            (None, Some((_, buf))) => buf.extend_from_slice(&bytes),
            // A new message before the last one ended, or a continuation of nothing.
            _ => {
                self.fragments = None;
                return self.close_with(
                    ctx,
                    close::PROTOCOL_ERROR,
                    "protocol error: unexpected continuation frame",
                );
            }
        }
        if self
            .fragments
            .as_ref()
            .is_some_and(|(_, buf)| buf.len() > MAX_FRAME)
        {
            self.fragments = None;
            return self.close_with(ctx, close::TOO_BIG, "message larger than 1 MiB");
        }
        if !last {
            return;
        }
        let Some((is_text, buf)) = self.fragments.take() else {
            return;
        };
        match (is_text, std::str::from_utf8(&buf)) {
            (true, Ok(text)) => self.on_text(text, ctx),
            (true, Err(_)) => self.close_with(
                ctx,
                close::PROTOCOL_ERROR,
                "protocol error: a text message that is not UTF-8",
            ),
            (false, _) => StreamHandler::handle(self, Ok(ws::Message::Binary(buf.freeze())), ctx),
        }
    }

    fn on_text(&mut self, text: &str, ctx: &mut WebsocketContext<Self>) {
        let parsed = parse_client_message(text);
        let Some((_, addr)) = self.session.clone() else {
            match parsed {
                Ok(ClientMessage::Hello {
                    session_id,
                    last_event_id,
                }) => self.hello(session_id, last_event_id, ctx),
                _ => self.close_with(
                    ctx,
                    close::BAD_HELLO,
                    "the first message must be a valid hello",
                ),
            }
            return;
        };
        let command = match parsed {
            Err(message) => {
                self.reply(
                    ctx,
                    &EventBody::client_error(None, "invalid_message", message),
                );
                return;
            }
            Ok(ClientMessage::Ping {}) => {
                self.reply(ctx, &EventBody::Pong {});
                return;
            }
            Ok(ClientMessage::Hello { .. }) => {
                self.reply(
                    ctx,
                    &EventBody::client_error(
                        None,
                        "invalid_message",
                        "already attached; hello is only the first message",
                    ),
                );
                return;
            }
            Ok(ClientMessage::Command(command)) => command,
        };
        let request_id = command.request_id().map(str::to_string);
        let label = self.label();
        addr.send(command)
            .into_actor(self)
            .map(move |result, act, ctx| match result {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    log::info!(
                        "{label} request_id={} refused: {}",
                        request_id.as_deref().unwrap_or("-"),
                        e.message
                    );
                    act.reply(
                        ctx,
                        &EventBody::client_error(request_id, e.refusal.code(), e.message),
                    );
                }
                Err(_) => act.close_with(ctx, close::UNKNOWN_SESSION, "session ended"),
            })
            .wait(ctx);
    }

    fn hello(
        &mut self,
        session_id: Option<String>,
        last_event_id: Option<u64>,
        ctx: &mut WebsocketContext<Self>,
    ) {
        let (id, addr, resumed) = match session_id {
            Some(id) => match self.sessions.get(&id) {
                Ok(Some(addr)) => (id, addr, true),
                Ok(None) => {
                    return self.close_with(
                        ctx,
                        close::UNKNOWN_SESSION,
                        "unknown or expired session_id; start a new session",
                    )
                }
                Err(e) => return self.close_unavailable(ctx, e),
            },
            // A new session counts against the per-IP rate limit, as `POST /api/sessions`
            // does: a flood of hellos must not push detached sessions out at the cap.
            None if self.state.rate_limiter.check(self.ip).is_err() => {
                return self.close_with(
                    ctx,
                    close::TOO_MANY_CONNECTIONS,
                    "rate limit: too many new sessions from this address; reconnect later",
                )
            }
            None => match self.sessions.create() {
                Ok((id, addr)) => (id, addr, false),
                Err(e) => return self.close_unavailable(ctx, e),
            },
        };
        self.session_id = Some(id.clone());
        self.session = Some((id, addr.clone()));
        addr.do_send(Attach {
            conn_id: self.conn_id,
            sink: Box::new(WsSink {
                addr: ctx.address(),
                queue: Arc::clone(&self.queue),
            }),
            last_event_id: if resumed { last_event_id } else { None },
            resumed,
            models_available: models_available(&self.state.table),
        });
    }
}

impl Actor for WsConnection {
    type Context = WebsocketContext<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if let Some((code, reason)) = self.preclose.take() {
            self.close_with(ctx, code, reason);
            return;
        }
        log::info!("{} connected", self.label());
        Self::await_hello(ctx, HELLO_TIMEOUT);
        let liveness = self.state.liveness;
        Self::watch_silence(ctx, liveness.ws_silence_timeout);
        ctx.run_interval(liveness.ws_heartbeat, |act, ctx| {
            ctx.ping(b"");
            if act.session.is_some() {
                act.reply(ctx, &EventBody::Heartbeat {});
            }
        });
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        if let Some((_, addr)) = self.session.take() {
            addr.do_send(Detach {
                conn_id: self.conn_id,
            });
        }
        self.slot = None;
        log::info!("{} closed", self.label());
    }
}

impl StreamHandler<Result<ws::Message, ProtocolError>> for WsConnection {
    fn handle(&mut self, msg: Result<ws::Message, ProtocolError>, ctx: &mut Self::Context) {
        self.last_heard = Instant::now();
        match msg {
            Ok(ws::Message::Text(text)) => self.on_text(&text, ctx),
            Ok(ws::Message::Binary(_)) => {
                if self.session.is_none() {
                    self.close_with(
                        ctx,
                        close::BAD_HELLO,
                        "the first message must be a valid hello",
                    );
                } else {
                    self.reply(
                        ctx,
                        &EventBody::client_error(
                            None,
                            "invalid_message",
                            "binary frames are not supported",
                        ),
                    );
                }
            }
            Ok(ws::Message::Ping(p)) => ctx.pong(&p),
            Ok(ws::Message::Continuation(item)) => self.on_fragment(item, ctx),
            Ok(ws::Message::Pong(_)) | Ok(ws::Message::Nop) => {}
            Ok(ws::Message::Close(reason)) => self.close_frame(ctx, reason),
            Err(ProtocolError::Overflow) => {
                self.close_with(ctx, close::TOO_BIG, "frame larger than 1 MiB")
            }
            Err(e) => {
                log::info!("{} protocol error: {e}", self.label());
                self.close_with(ctx, close::PROTOCOL_ERROR, "protocol error");
            }
        }
    }

    /// The client's input ended: it went away, or the frame guard refused a header.
    fn finished(&mut self, ctx: &mut Self::Context) {
        match self.refusal.take() {
            Some(Refusal::TooBig) => {
                self.close_with(ctx, close::TOO_BIG, "frame larger than 1 MiB")
            }
            Some(Refusal::Protocol(why)) => self.close_with(
                ctx,
                close::PROTOCOL_ERROR,
                &format!("protocol error: {why}"),
            ),
            None => ctx.stop(),
        }
    }
}

/// The session ends this connection.
#[derive(Message)]
#[rtype(result = "()")]
struct CloseConnection(u16, String);

impl Handler<CloseConnection> for WsConnection {
    type Result = ();

    fn handle(&mut self, CloseConnection(code, reason): CloseConnection, ctx: &mut Self::Context) {
        self.session = None; // the session already forgot us
        self.close_with(ctx, code, &reason);
    }
}

/// How the session reaches a WebSocket connection: its queue (events) and the actor's
/// address (closes); both work even while the actor cannot run.
struct WsSink {
    addr: Addr<WsConnection>,
    queue: Arc<WsQueue>,
}

impl ConnectionSink for WsSink {
    fn deliver(&self, event: Arc<Encoded>) -> bool {
        if !self.addr.connected() {
            return false;
        }
        match self.queue.push(event) {
            Pushed::Queued => true,
            Pushed::Refused => false,
            Pushed::OverLimit => {
                self.addr.do_send(CloseConnection(
                    close::SLOW_CONSUMER,
                    "slow consumer: reconnect and resume".into(),
                ));
                false
            }
        }
    }

    fn close(&self, reason: EngineClose) {
        self.addr.do_send(CloseConnection(
            close::code(reason),
            reason.message().into(),
        ));
    }
}
