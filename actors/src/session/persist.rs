//! A session's stored copy (SPEC §4.4): what is written (see `session_store` for when and
//! how), and how a session is rebuilt from it after a restart.
//!
//! Ids: an id must never name two events, and nothing is written per token. So the stored last
//! id is a bound, not a count. At rest (a turn's end, `clear`, the session's end) it is exact,
//! and it is on disk before the event it includes (`complete`, `cleared`) goes out. When an
//! event would pass it (the `ack` of a new turn), the session first stores a bound
//! [`ID_RESERVE`] ids ahead, flushed, and issues ids under it. A restart after a crash
//! mid-turn therefore continues after that bound: the interrupted turn's ids were seen by
//! clients but never written, and they are skipped, not reissued. After a clean stop or a crash
//! between turns, ids continue exactly after the last one.
//!
//! Resuming a rebuilt session: its buffer holds nothing from before the restart, so a client
//! that has seen no event since gets a `resync` built from the stored last turn (a turn that
//! was in flight shows `interrupted`). If a resuming client's own last id is higher than the
//! stored bound (a store from before this scheme), ids continue after the client's.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::{ModelRun, RunState, Session, SessionSettings, Turn};
use crate::buffer::{EventBuffer, Replay, MAX_BUFFER_BYTES};
use crate::record::now_ms;
use crate::session_store::{StoredRun, StoredSession, StoredTurn};
use crate::sessions::Sessions;
use crate::timeline::TokenTimeline;

/// Ids a turn may use beyond the stored copy before it is stored again. A crash mid-turn skips
/// at most this many ids; a turn longer than this stores a new bound (one flush per this many
/// events).
pub const ID_RESERVE: u64 = 1 << 20;

impl RunState {
    fn parse(s: &str) -> Self {
        match s {
            "done" => Self::Done,
            "error" => Self::Error,
            "cancelled" => Self::Cancelled,
            // A run stored while streaming was cut by the restart.
            _ => Self::Interrupted,
        }
    }
}

impl Turn {
    fn stored(&self) -> StoredTurn {
        StoredTurn {
            request_id: self.request_id.clone(),
            prompt: self.prompt.clone(),
            models: self.models.clone(),
            started_ms: self.started_ms,
            runs: self
                .runs
                .iter()
                .map(|(m, r)| {
                    let run = StoredRun {
                        content: r.content.clone(),
                        state: r.state.as_str().to_string(),
                        metrics: r.metrics.clone(),
                    };
                    (m.clone(), run)
                })
                .collect(),
        }
    }

    fn from_stored(t: StoredTurn) -> Self {
        let runs: HashMap<String, ModelRun> = t
            .models
            .iter()
            .map(|m| {
                let stored = t.runs.get(m).cloned().unwrap_or_default();
                let run = ModelRun {
                    state: RunState::parse(&stored.state),
                    content: stored.content,
                    metrics: stored.metrics,
                    stream: None,
                    // Arrival times are not stored (nothing is written per token): a restored
                    // turn's timeline has no ticks.
                    timeline: TokenTimeline::new(t.started_ms),
                };
                (m.clone(), run)
            })
            .collect();
        Self {
            request_id: t.request_id,
            prompt: t.prompt,
            models: t.models,
            runs,
            started_ms: t.started_ms,
            restored: true,
        }
    }
}

impl Session {
    /// A session rebuilt from its stored copy; not busy, its last turn as it was stored (a
    /// turn in flight at the time is `interrupted`).
    pub(crate) fn restore(
        stored: StoredSession,
        directory: Arc<Sessions>,
        settings: SessionSettings,
    ) -> Self {
        let idle = Duration::from_millis(now_ms().saturating_sub(stored.last_active_ms));
        let now = Instant::now();
        Self {
            id: stored.id,
            directory,
            buffer: EventBuffer::new(settings.event_buffer, MAX_BUFFER_BYTES),
            settings,
            next_id: stored.last_event_id + 1,
            ids_stored_through: stored.last_event_id,
            connections: HashMap::new(),
            history: stored.history,
            turn: None,
            last_turn: stored.turn.map(Turn::from_stored),
            grace: None,
            last_active: now.checked_sub(idle).unwrap_or(now),
            created_at: stored.created_at,
            restored: true,
            first_live_id: None,
            end_reason: None,
        }
    }

    /// The stored copy of this session now.
    fn stored(&self) -> StoredSession {
        let turn = self.turn.as_ref().or(self.last_turn.as_ref());
        StoredSession {
            id: self.id.clone(),
            created_at: self.created_at,
            last_event_id: self.ids_stored_through.max(self.last_event_id()),
            last_active_ms: now_ms()
                .saturating_sub(u64::try_from(self.last_active.elapsed().as_millis()).unwrap_or(0)),
            history: self.history.clone(),
            turn: turn.map(Turn::stored),
        }
    }

    /// Writes the stored copy (turn start: the turn, so a crash shows it `interrupted`).
    pub(super) fn persist(&self) {
        if let Some(store) = self.directory.store() {
            store.save(&self.stored());
        }
    }

    /// Writes the stored copy when the session ends (shutdown, or its arbiter stopped): no id
    /// follows, so the bound is exact.
    pub(super) fn persist_final(&mut self) {
        self.ids_stored_through = self.last_event_id();
        self.persist();
    }

    /// Writes the stored copy, exact up to the `upcoming` events about to be issued, and flushes
    /// it before returning: for the points a client is told about (a turn's `complete`,
    /// `cleared`), so what it saw survives `kill -9`.
    pub(super) fn persist_durable_before(&mut self, upcoming: u64) {
        self.ids_stored_through = self.last_event_id() + upcoming;
        if let Some(store) = self.directory.store() {
            store.save_durable(&self.stored());
        }
    }

    /// Stores (flushed) a bound [`ID_RESERVE`] ids ahead, before an id past the stored one is
    /// issued: a new turn's `ack`, or a turn that used up its reserve.
    pub(super) fn reserve_ids(&mut self) {
        self.ids_stored_through = self.last_event_id() + ID_RESERVE;
        if let Some(store) = self.directory.store() {
            store.save_durable(&self.stored());
        }
    }

    /// Deletes the stored copy (expiry, eviction, `DELETE`).
    pub(super) fn forget(&self) {
        if let Some(store) = self.directory.store() {
            store.delete(&self.id);
        }
    }

    /// A rebuilt session never reissues an id a resuming client has seen.
    pub(super) fn continue_after(&mut self, client_last: Option<u64>) {
        if let Some(last) = client_last {
            if self.restored && self.first_live_id.is_none() && last >= self.next_id {
                log::info!(
                    "session_id={} ids continue after the client's {last} (stored {})",
                    self.id,
                    self.next_id - 1
                );
                self.next_id = last + 1;
            }
        }
    }

    /// What a client at `after` gets: the buffer's suffix, or a resync when it has seen
    /// nothing since a restore (the buffer cannot hold what came before it).
    pub(super) fn replay_since(&self, after: u64) -> Replay {
        if self.restored && self.first_live_id.is_none_or(|first| after < first) {
            return Replay::TooOld;
        }
        self.buffer.since(after)
    }
}
