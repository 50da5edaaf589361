//! The `Session` actor: one conversation thread.
//!
//! It owns the per-model history, the in-flight turn (one `ModelStream` per model), the resume
//! buffer and the attached connections. It is the only place event ids are assigned: every turn
//! event is numbered, buffered and fanned out here, in one order, so every connection and every
//! resume sees the same sequence.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use serde::Serialize;
use tokio::time::Instant;

use crate::buffer::{EventBuffer, Replay, MAX_BUFFER_BYTES};
use crate::events::{Command, CommandError, Encoded, EventBody, ModelSnapshot, Refusal, SendTurn};
use crate::history::History;
use crate::model_stream::{ModelStream, StopReason, StopStream, StreamEvent, StreamSpec};
use crate::record::now_ms;
use crate::sessions::Sessions;
use crate::timeline::Mark;

mod persist;
mod turn;

use turn::{ModelRun, RunState, Turn};

/// Most models one turn may address (SPEC §4.1).
pub const MAX_MODELS_PER_TURN: usize = 8;
/// Longest prompt accepted, in bytes.
pub const MAX_PROMPT_BYTES: usize = 512 * 1024;

/// A client connection as the session sees it. Implemented by each transport (WebSocket actor,
/// SSE stream), so the session knows nothing of HTTP.
pub trait ConnectionSink: Send {
    /// Queues an event for the client; `false` means the connection is gone (detach it).
    fn deliver(&self, event: Arc<Encoded>) -> bool;
    /// Ends the connection: a close frame (WebSocket) or the end of the stream (SSE).
    fn close(&self, reason: CloseReason);
}

/// Why the engine ends a client connection. Only the transports know how that is said:
/// WebSocket close codes are chosen in `src/http/ws.rs` alone; an SSE stream just ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The session ended (`DELETE`, TTL, eviction): the client starts a new one.
    SessionEnded,
    /// The server is shutting down: the client reconnects and resumes.
    ShuttingDown,
}

impl CloseReason {
    /// The words sent with the close, for a person reading a log or a devtools pane.
    pub fn message(self) -> &'static str {
        match self {
            Self::SessionEnded => "session ended",
            Self::ShuttingDown => "server shutting down; reconnect",
        }
    }
}

/// Session settings, from configuration.
#[derive(Debug, Clone, Copy)]
pub struct SessionSettings {
    pub event_buffer: usize,
    pub disconnect_grace: Duration,
    pub ttl: Duration,
    pub streams: crate::model_stream::StreamSettings,
}

/// See the module docs. Created by [`Sessions`], on the arbiter of the request that made it.
pub struct Session {
    id: String,
    /// The session directory ([`Sessions`]: id → address, counters, the routing table and the
    /// session store) — not the backend `Registry`. The session removes itself in `stopping()`.
    directory: Arc<Sessions>,
    settings: SessionSettings,
    buffer: EventBuffer,
    /// The id the next turn event gets; ids start at 1.
    next_id: u64,
    /// The highest id the stored copy on disk accounts for: an event is issued only below it, so
    /// a restart after a crash never issues an id twice (see `persist.rs`).
    ids_stored_through: u64,
    connections: HashMap<u64, Box<dyn ConnectionSink>>,
    history: History,
    turn: Option<Turn>,
    /// The last finished turn, for `resync` snapshots and the state route.
    last_turn: Option<Turn>,
    /// Running while a turn continues with no connection attached; its expiry cancels the turn.
    grace: Option<SpawnHandle>,
    last_active: Instant,
    created_at: u64,
    /// Rebuilt from its stored copy after a restart: the buffer holds nothing from before, so
    /// a client that has seen no event since gets a `resync` (see `persist.rs`).
    restored: bool,
    /// The first id issued after a restore; clients behind it are resynced.
    first_live_id: Option<u64>,
    /// Why the session stopped (`End`, or `SessionExpired` from the TTL tick); `Shutdown` or
    /// none keeps its stored copy, anything else deletes it.
    end_reason: Option<StopReason>,
}

impl Session {
    /// A new, empty session registered in `directory` under `id`.
    pub fn new(id: String, directory: Arc<Sessions>, settings: SessionSettings) -> Self {
        Self {
            id,
            directory,
            buffer: EventBuffer::new(settings.event_buffer, MAX_BUFFER_BYTES),
            settings,
            next_id: 1,
            ids_stored_through: 0,
            connections: HashMap::new(),
            history: History::default(),
            turn: None,
            last_turn: None,
            grace: None,
            last_active: Instant::now(),
            created_at: now_ms(),
            restored: false,
            first_live_id: None,
            end_reason: None,
        }
    }

    fn touch(&mut self) {
        self.last_active = Instant::now();
        self.directory.touch(&self.id, self.connections.len());
    }

    /// Numbers, buffers and fans out one turn event; returns its `ts`.
    fn emit(&mut self, body: EventBody) -> u64 {
        if self.next_id > self.ids_stored_through {
            self.reserve_ids();
        }
        let event = Encoded::new(Some(self.next_id), &body);
        if self.restored && self.first_live_id.is_none() {
            self.first_live_id = Some(self.next_id);
        }
        self.next_id += 1;
        self.buffer.push(Arc::clone(&event));
        self.broadcast(&event);
        event.ts
    }

    fn broadcast(&mut self, event: &Arc<Encoded>) {
        let gone: Vec<u64> = self
            .connections
            .iter()
            .filter(|(_, sink)| !sink.deliver(Arc::clone(event)))
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            self.connections.remove(&id);
        }
    }

    /// Records an emitted event's arrival on the running turn's timeline of `model`.
    fn mark_timeline(&mut self, model: &str, mark: Mark, ts: u64) {
        if let Some(run) = self.turn.as_mut().and_then(|t| t.runs.get_mut(model)) {
            run.timeline.apply(mark, ts);
        }
    }

    fn last_event_id(&self) -> u64 {
        self.next_id - 1
    }

    fn start_turn(&mut self, send: SendTurn, ctx: &mut Context<Self>) -> Result<(), CommandError> {
        if self.turn.is_some() {
            return Err(CommandError::new(
                Refusal::Busy,
                "a turn is already in flight; cancel it or wait for `complete`",
            ));
        }
        validate_send(&send)?;
        let mut models: Vec<String> = Vec::new();
        for m in &send.models {
            if !models.contains(m) {
                models.push(m.clone());
            }
        }
        let turn_started = Instant::now();
        let mut runs = HashMap::new();
        let acked_ts = self.emit(EventBody::Ack {
            request_id: send.request_id.as_str().into(),
            models: models.clone(),
            content: send.content.clone(),
        });
        for model in &models {
            let spec = StreamSpec {
                request_id: send.request_id.as_str().into(),
                model: model.as_str().into(),
                messages: self.history.messages_for(model, &send.content),
                params: send.params.clone().unwrap_or_default(),
                turn_started,
                table: self.directory.table(),
                settings: self.settings.streams,
                thread: Some(self.id.as_str().into()),
            };
            let stream = ModelStream::new(spec, ctx.address().recipient()).start();
            runs.insert(model.clone(), ModelRun::started(Some(stream), acked_ts));
        }
        self.directory
            .counters()
            .turns
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.directory
            .counters()
            .turns_in_flight
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        log::info!(
            "session_id={} request_id={} turn started: {}",
            self.id,
            send.request_id,
            models.join(", ")
        );
        self.turn = Some(Turn {
            request_id: send.request_id,
            prompt: send.content,
            models,
            runs,
            started_ms: now_ms(),
            restored: false,
        });
        self.persist(); // a crash mid-turn then shows it `interrupted`
        if self.connections.is_empty() {
            self.arm_grace(ctx);
        }
        Ok(())
    }

    /// Stops the named (or every) running model of the turn with a `cancelled` event each.
    fn cancel(&mut self, model: Option<&str>, reason: StopReason) {
        let Some(turn) = &mut self.turn else { return };
        let targets: Vec<String> = turn
            .running()
            .filter(|m| model.is_none_or(|x| x == m.as_str()))
            .cloned()
            .collect();
        let request_id = turn.request_id.clone();
        // A turn cut by the shutdown is `interrupted` after the restart, as one cut by a crash.
        let state = if reason == StopReason::Shutdown {
            RunState::Interrupted
        } else {
            RunState::Cancelled
        };
        for m in &targets {
            if let Some(run) = turn.runs.get_mut(m) {
                run.state = state;
                if let Some(stream) = run.stream.take() {
                    stream.do_send(StopStream(reason));
                }
            }
        }
        self.directory
            .counters()
            .cancellations
            .fetch_add(targets.len() as u64, std::sync::atomic::Ordering::Relaxed);
        for m in targets {
            let ts = self.emit(EventBody::Cancelled {
                request_id: request_id.as_str().into(),
                model: m.as_str().into(),
            });
            self.mark_timeline(&m, Mark::End, ts);
        }
        self.finish_if_complete();
    }

    /// When every model has ended: history appended, the turn retired and stored, `complete`.
    fn finish_if_complete(&mut self) {
        let Some(turn) = &self.turn else { return };
        if turn.running().next().is_some() {
            return;
        }
        let request_id = turn.request_id.clone();
        if let Some(turn) = self.turn.take() {
            self.directory
                .counters()
                .turns_in_flight
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            for m in &turn.models {
                if let Some(run) = turn.runs.get(m) {
                    // A failed model with no text adds nothing; a cancelled one keeps its part.
                    if run.state != RunState::Error || !run.content.is_empty() {
                        self.history.append(m, &turn.prompt, &run.content);
                    }
                }
            }
            log::info!(
                "session_id={} request_id={request_id} turn complete",
                self.id
            );
            self.last_turn = Some(turn);
        }
        self.touch();
        // On disk before `complete` goes out, its id included: a client that saw a turn end
        // finds it after a crash (SPEC §4.4).
        self.persist_durable_before(1);
        self.emit(EventBody::Complete {
            request_id: request_id.as_str().into(),
        });
    }

    fn arm_grace(&mut self, ctx: &mut Context<Self>) {
        if self.grace.is_some() || self.turn.is_none() {
            return;
        }
        if self.settings.disconnect_grace.is_zero() {
            log::info!(
                "session_id={} last connection gone; cancelling the turn at once",
                self.id
            );
            self.cancel(None, StopReason::ClientGone);
            return;
        }
        self.grace = Some(ctx.run_later(self.settings.disconnect_grace, |act, _| {
            act.grace = None;
            // While the server drains, its own closes are why nobody is attached: the drain
            // ends the turn (as `interrupted`), not the grace.
            if act.connections.is_empty() && act.turn.is_some() && !act.directory.is_draining() {
                log::info!(
                    "session_id={} disconnect grace expired; cancelling the turn",
                    act.id
                );
                act.cancel(None, StopReason::ClientGone);
            }
        }));
    }

    fn state(&self) -> SessionState {
        let turn = self.turn.as_ref().or(self.last_turn.as_ref());
        SessionState {
            session_id: self.id.clone(),
            created_at: self.created_at,
            last_event_id: self.last_event_id(),
            connections: self.connections.len(),
            busy: self.turn.is_some(),
            buffered_events: self.buffer.len(),
            history: self.history.summary().into_iter().collect(),
            turn: turn.map(|t| TurnState {
                request_id: t.request_id.clone(),
                prompt: t.prompt.clone(),
                models: t.models.clone(),
                started_at: t.started_ms,
                snapshot: t.snapshot(),
            }),
        }
    }
}

fn validate_send(send: &SendTurn) -> Result<(), CommandError> {
    let invalid = |m: &str| Err(CommandError::new(Refusal::Invalid, m));
    if send.request_id.trim().is_empty() || send.request_id.len() > 200 {
        return invalid("`request_id` must be a non-empty string of at most 200 characters");
    }
    if send.content.trim().is_empty() {
        return invalid("`content` must not be empty");
    }
    if send.content.len() > MAX_PROMPT_BYTES {
        return invalid("`content` is too long");
    }
    if send.models.is_empty() || send.models.len() > MAX_MODELS_PER_TURN {
        return invalid("`models` must name 1 to 8 models");
    }
    if send
        .models
        .iter()
        .any(|m| m.trim().is_empty() || m.len() > 256)
    {
        return invalid("every model must be a non-empty name");
    }
    send.check_params()
        .map_err(|m| CommandError::new(Refusal::Invalid, m))
}

impl Actor for Session {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let tick =
            (self.settings.ttl / 4).clamp(Duration::from_millis(100), Duration::from_secs(30));
        ctx.run_interval(tick, |act, ctx| {
            let idle = act.last_active.elapsed();
            if act.connections.is_empty() && act.turn.is_none() && idle >= act.settings.ttl {
                log::info!(
                    "session_id={} expired after {} s idle",
                    act.id,
                    idle.as_secs()
                );
                act.end_reason = Some(StopReason::SessionExpired);
                ctx.stop();
            }
        });
    }

    fn stopping(&mut self, _: &mut Self::Context) -> Running {
        if let Some(turn) = &mut self.turn {
            self.directory
                .counters()
                .turns_in_flight
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            for run in turn.runs.values_mut() {
                if let Some(stream) = run.stream.take() {
                    stream.do_send(StopStream(StopReason::SessionExpired));
                }
            }
        }
        for sink in self.connections.values() {
            sink.close(CloseReason::SessionEnded);
        }
        self.connections.clear();
        self.directory.remove(&self.id);
        match self.end_reason {
            // Shutdown, or stopped with its arbiter: a redeploy resumes it.
            Some(StopReason::Shutdown) | None => self.persist_final(),
            // Expired, evicted or ended: gone from disk too.
            Some(_) => self.forget(),
        }
        Running::Stop
    }
}

// === messages ===

/// Attach a connection. The session sends it `session`, then the replay (or `resync`), then
/// live events, in that order, through the sink.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Attach {
    pub conn_id: u64,
    pub sink: Box<dyn ConnectionSink>,
    /// `Some` when the client is resuming (hello with this session's id).
    pub last_event_id: Option<u64>,
    pub resumed: bool,
    pub models_available: Vec<String>,
}

impl Handler<Attach> for Session {
    type Result = ();

    fn handle(&mut self, msg: Attach, ctx: &mut Self::Context) {
        if let Some(h) = self.grace.take() {
            ctx.cancel_future(h);
        }
        self.continue_after(msg.last_event_id);
        let session = Encoded::new(
            None,
            &EventBody::Session {
                session_id: self.id.clone(),
                resumed: msg.resumed,
                last_event_id: self.last_event_id(),
                models_available: msg.models_available,
            },
        );
        if !msg.sink.deliver(session) {
            return;
        }
        let after = msg.last_event_id.unwrap_or(0);
        match self.replay_since(after) {
            Replay::Events(events) => {
                self.directory.count_replay(events.len());
                for e in events {
                    if !msg.sink.deliver(e) {
                        return;
                    }
                }
            }
            Replay::TooOld => {
                let turn = self.turn.as_ref().or(self.last_turn.as_ref());
                let resync = EventBody::Resync {
                    request_id: turn.map(|t| t.request_id.clone()),
                    snapshot: turn.map(Turn::snapshot).unwrap_or_default(),
                };
                if !msg.sink.deliver(Encoded::new(None, &resync)) {
                    return;
                }
                // A turn that ended while the client was away: the snapshot has its text, and
                // its buffered `complete` (same id, deduplicated by the client) says it ended,
                // as it would after a replay.
                // (`clear` forgets the last turn: then there is nothing to end.)
                let ended = self.buffer.last().filter(|e| {
                    self.turn.is_none() && self.last_turn.is_some() && e.kind == "complete"
                });
                if let Some(end) = ended {
                    if !msg.sink.deliver(Arc::clone(end)) {
                        return;
                    }
                }
            }
        }
        log::info!(
            "session_id={} connection_id={} attached (resumed={}, from id {after}, last id {})",
            self.id,
            msg.conn_id,
            msg.resumed,
            self.last_event_id()
        );
        self.connections.insert(msg.conn_id, msg.sink);
        self.touch();
    }
}

/// A connection went away.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Detach {
    pub conn_id: u64,
}

impl Handler<Detach> for Session {
    type Result = ();

    fn handle(&mut self, msg: Detach, ctx: &mut Self::Context) {
        if self.connections.remove(&msg.conn_id).is_some() {
            log::info!(
                "session_id={} connection_id={} detached",
                self.id,
                msg.conn_id
            );
        }
        self.touch();
        if self.connections.is_empty() {
            self.arm_grace(ctx);
        }
    }
}

/// The session handles the one command type of every transport ([`Command`], in `events`).
impl Message for Command {
    type Result = Result<(), CommandError>;
}

impl Handler<Command> for Session {
    type Result = Result<(), CommandError>;

    fn handle(&mut self, cmd: Command, ctx: &mut Self::Context) -> Self::Result {
        self.touch();
        match cmd {
            Command::Send(send) => self.start_turn(send, ctx),
            Command::Cancel { request_id, model } => {
                let Some(turn) = self.turn.as_ref().filter(|t| t.request_id == request_id) else {
                    return Err(CommandError::new(
                        Refusal::NotFound,
                        format!("no turn `{request_id}` is in flight"),
                    ));
                };
                if let Some(m) = model
                    .as_deref()
                    .filter(|m| !turn.models.iter().any(|t| t == m))
                {
                    return Err(CommandError::new(
                        Refusal::NotFound,
                        format!("model `{m}` is not part of turn `{request_id}`"),
                    ));
                }
                log::info!(
                    "session_id={} request_id={request_id} cancel {}",
                    self.id,
                    model.as_deref().unwrap_or("all models")
                );
                self.cancel(model.as_deref(), StopReason::Cancelled);
                Ok(())
            }
            Command::Clear => {
                self.cancel(None, StopReason::Cancelled);
                self.history.clear();
                self.last_turn = None;
                self.persist_durable_before(1);
                self.emit(EventBody::Cleared {});
                log::info!("session_id={} cleared", self.id);
                Ok(())
            }
        }
    }
}

impl Handler<StreamEvent> for Session {
    type Result = ();

    fn handle(&mut self, ev: StreamEvent, _: &mut Self::Context) {
        let Some(turn) = &mut self.turn else { return };
        let Some(run) = turn.runs.get_mut(&*ev.model) else {
            return;
        };
        if run.state != RunState::Streaming {
            return; // a stream stopped by cancel may still have events in flight
        }
        if let EventBody::Ttft { ms, .. } = &ev.body {
            self.directory.counters().ttft.observe_ms(*ms);
        }
        let ended = run.apply(&ev.body);
        let mark = ev.body.timeline_mark();
        let ts = self.emit(ev.body);
        if let Some(mark) = mark {
            self.mark_timeline(&ev.model, mark, ts);
        }
        if ended {
            self.finish_if_complete();
        }
    }
}

/// The session's state (`GET /api/sessions/{id}`).
#[derive(Message)]
#[rtype(result = "SessionState")]
pub struct GetState;

/// What the state route shows.
#[derive(Debug, Clone, Serialize)]
pub struct SessionState {
    pub session_id: String,
    pub created_at: u64,
    pub last_event_id: u64,
    pub connections: usize,
    pub busy: bool,
    pub buffered_events: usize,
    /// Turns of history kept per model.
    pub history: BTreeMap<String, usize>,
    /// The current turn, or the last finished one.
    pub turn: Option<TurnState>,
}

/// A turn in the state route.
#[derive(Debug, Clone, Serialize)]
pub struct TurnState {
    pub request_id: String,
    /// The prompt of the turn.
    pub prompt: String,
    pub models: Vec<String>,
    pub started_at: u64,
    pub snapshot: BTreeMap<String, ModelSnapshot>,
}

impl Handler<GetState> for Session {
    type Result = MessageResult<GetState>;

    fn handle(&mut self, _: GetState, _: &mut Self::Context) -> Self::Result {
        MessageResult(self.state())
    }
}

/// End the session (`DELETE`, eviction, shutdown).
#[derive(Message)]
#[rtype(result = "()")]
pub struct End(pub StopReason);

impl Handler<End> for Session {
    type Result = ();

    fn handle(&mut self, End(reason): End, ctx: &mut Self::Context) {
        log::info!("session_id={} ended: {reason:?}", self.id);
        self.end_reason = Some(reason);
        if reason == StopReason::Shutdown {
            for sink in self.connections.values() {
                sink.close(CloseReason::ShuttingDown);
            }
            self.connections.clear();
        }
        self.cancel(None, reason);
        ctx.stop();
    }
}

/// Close every connection of the session (shutdown) while its turn may go on.
#[derive(Message)]
#[rtype(result = "()")]
pub struct CloseConnections(pub CloseReason);

impl Handler<CloseConnections> for Session {
    type Result = ();

    fn handle(&mut self, CloseConnections(reason): CloseConnections, ctx: &mut Self::Context) {
        for sink in self.connections.values() {
            sink.close(reason);
        }
        self.connections.clear();
        self.touch();
        self.arm_grace(ctx);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests;
