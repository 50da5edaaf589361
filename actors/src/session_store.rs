//! Sessions that survive a restart (SPEC §4.4): a session's state (id, creation time, per-model
//! history, last event id, last activity, and its last turn) in sled beside the registry.
//!
//! When it is written: when a turn starts (so a turn cut by a crash is known and shown as
//! `interrupted`), when it ends, on `clear`, and at shutdown; it is deleted when the session
//! expires, is evicted or is ended by `DELETE`. Never per token. A write is one `insert` on
//! the session's thread (serialisation + a sled insert, tens of microseconds); the flush to
//! the file follows on the blocking pool, coalesced, so a burst of turn ends costs one flush
//! and no session waits on disk.
//!
//! Two trees: `sessions` (id → JSON state) and `session_activity` (id → last activity, unix
//! ms, 8 bytes), so the TTL / cap sweep reads a few bytes per session instead of whole
//! histories.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::events::ModelMetrics;
use crate::history::History;
use crate::record::now_ms;
use crate::registry::{Registry, RegistryError};

const SESSIONS_TREE: &str = "sessions";
const ACTIVITY_TREE: &str = "session_activity";

/// One model's part of a stored turn.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StoredRun {
    /// The text streamed (empty for a turn stored at its start).
    pub content: String,
    /// `streaming|done|error|cancelled|interrupted`.
    pub state: String,
    /// Backend, timings, usage, tool calls: what the resync snapshot shows.
    pub metrics: ModelMetrics,
}

/// The session's last turn (finished, or in flight when it was written).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StoredTurn {
    /// The client's id of the turn (the resync's `request_id`).
    pub request_id: String,
    /// What was asked.
    pub prompt: String,
    /// The models of the turn, in the client's order.
    pub models: Vec<String>,
    /// Unix ms when it started.
    pub started_ms: u64,
    /// Each model's part.
    pub runs: BTreeMap<String, StoredRun>,
}

/// Everything a session needs to resume after a restart.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StoredSession {
    /// The session id clients resume with.
    pub id: String,
    /// Unix ms of creation (kept across restarts).
    pub created_at: u64,
    /// The last event id issued when this was written; new ids continue after it.
    pub last_event_id: u64,
    /// Unix ms of the last activity (TTL is measured from here).
    pub last_active_ms: u64,
    /// Per-model history: what the next turn sends upstream.
    pub history: History,
    /// The last turn, for the resync after a restart.
    pub turn: Option<StoredTurn>,
}

/// Handle to the stored sessions; cheap to clone.
#[derive(Clone)]
pub struct SessionStore {
    db: sled::Db,
    sessions: sled::Tree,
    activity: sled::Tree,
    /// A flush is queued on the blocking pool; further writes ride on it.
    flush_queued: Arc<AtomicBool>,
}

impl SessionStore {
    /// Opens the session trees in the registry's database.
    pub fn open(registry: &Registry) -> Result<Self, RegistryError> {
        let db = registry.db().clone();
        Ok(Self {
            sessions: db.open_tree(SESSIONS_TREE)?,
            activity: db.open_tree(ACTIVITY_TREE)?,
            db,
            flush_queued: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Writes a session's state; the flush to disk follows in the background.
    pub fn save(&self, session: &StoredSession) {
        let result = serde_json::to_vec(session)
            .map_err(RegistryError::from)
            .and_then(|json| {
                self.sessions.insert(session.id.as_bytes(), json)?;
                self.activity
                    .insert(session.id.as_bytes(), &session.last_active_ms.to_be_bytes())?;
                Ok(())
            });
        match result {
            Ok(()) => self.flush_soon(),
            Err(e) => log::error!("session_id={}: cannot store session: {e}", session.id),
        }
    }

    /// Writes a session's state and flushes it to disk before returning: for the points a client
    /// is told about (a turn's `complete`, `cleared`), so what it saw survives `kill -9`. One
    /// fsync per turn end, on the session's thread (a few milliseconds on an idle disk).
    pub fn save_durable(&self, session: &StoredSession) {
        self.save(session);
        if let Err(e) = self.db.flush() {
            log::error!(
                "session_id={}: cannot flush stored session: {e}",
                session.id
            );
        }
    }

    /// A stored session, if there is one that still decodes.
    pub fn load(&self, id: &str) -> Option<StoredSession> {
        let bytes = self.sessions.get(id.as_bytes()).ok()??;
        match serde_json::from_slice(&bytes) {
            Ok(s) => Some(s),
            Err(e) => {
                log::error!("session_id={id}: stored session does not decode ({e}); deleting");
                self.delete(id);
                None
            }
        }
    }

    /// Forgets a session (expired, evicted, ended).
    pub fn delete(&self, id: &str) {
        let removed = self
            .sessions
            .remove(id.as_bytes())
            .and_then(|_| self.activity.remove(id.as_bytes()));
        match removed {
            Ok(_) => self.flush_soon(),
            Err(e) => log::error!("session_id={id}: cannot delete stored session: {e}"),
        }
    }

    /// Stored sessions.
    pub fn len(&self) -> usize {
        self.activity.len()
    }

    /// Whether none is stored.
    pub fn is_empty(&self) -> bool {
        self.activity.is_empty()
    }

    /// Deletes stored sessions idle for `ttl_ms` or more, then the least recently active ones
    /// past `max` (sessions for which `keep` is true are never deleted here: they are live).
    /// Returns how many were deleted.
    pub fn sweep(&self, ttl_ms: u64, max: usize, keep: impl Fn(&str) -> bool) -> usize {
        let now = now_ms();
        let mut alive: Vec<(u64, String)> = Vec::new();
        let mut doomed: Vec<String> = Vec::new();
        for (key, value) in self.activity.iter().flatten() {
            let id = String::from_utf8_lossy(&key).into_owned();
            let mut at = [0u8; 8];
            if value.len() == 8 {
                at.copy_from_slice(&value);
            }
            let at = u64::from_be_bytes(at);
            if keep(&id) {
                continue;
            }
            if now.saturating_sub(at) >= ttl_ms {
                doomed.push(id);
            } else {
                alive.push((at, id));
            }
        }
        if alive.len() > max {
            alive.sort();
            let excess = alive.len() - max;
            doomed.extend(alive.into_iter().take(excess).map(|(_, id)| id));
        }
        for id in &doomed {
            let _ = self.sessions.remove(id.as_bytes());
            let _ = self.activity.remove(id.as_bytes());
        }
        if !doomed.is_empty() {
            self.flush_soon();
        }
        doomed.len()
    }

    /// Flushes sled on the blocking pool, unless a flush is already queued (it will carry
    /// this write too: sled flushes everything written before it starts).
    fn flush_soon(&self) {
        if self.flush_queued.swap(true, Ordering::AcqRel) {
            return;
        }
        let (db, queued) = (self.db.clone(), Arc::clone(&self.flush_queued));
        let flush = move || {
            queued.store(false, Ordering::Release);
            if let Err(e) = db.flush() {
                log::error!("cannot flush stored sessions: {e}");
            }
        };
        if tokio::runtime::Handle::try_current().is_ok() {
            drop(tokio::task::spawn_blocking(flush));
        } else {
            flush();
        }
    }

    /// Flushes now and waits (tests, benchmarks).
    pub fn flush(&self) -> Result<(), RegistryError> {
        self.db.flush()?;
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn stored(id: &str, last_active_ms: u64) -> StoredSession {
        let mut history = History::default();
        history.append("m", "q1", "a1");
        StoredSession {
            id: id.into(),
            created_at: 1,
            last_event_id: 7,
            last_active_ms,
            history,
            turn: None,
        }
    }

    #[test]
    fn sessions_round_trip_survive_reopen_and_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SessionStore::open(&Registry::open(dir.path()).unwrap()).unwrap();
            store.save(&stored("a", now_ms()));
            store.flush().unwrap();
        }
        let store = SessionStore::open(&Registry::open(dir.path()).unwrap()).unwrap();
        let back = store.load("a").unwrap();
        assert_eq!(back.last_event_id, 7);
        assert_eq!(back.history, stored("a", 0).history);
        store.delete("a");
        assert!(store.load("a").is_none());
        assert!(store.is_empty());
    }

    #[test]
    fn sweep_deletes_expired_then_the_oldest_past_the_cap_but_never_live_ones() {
        let dir = tempfile::tempdir().unwrap();
        let store = SessionStore::open(&Registry::open(dir.path()).unwrap()).unwrap();
        let now = now_ms();
        store.save(&stored("old", now - 10_000));
        store.save(&stored("live-old", now - 10_000));
        for (i, id) in ["s1", "s2", "s3"].iter().enumerate() {
            store.save(&stored(id, now - 1000 + i as u64));
        }
        let deleted = store.sweep(5_000, 2, |id| id == "live-old");
        assert_eq!(deleted, 2, "old (expired) and s1 (over the cap)");
        assert!(store.load("old").is_none() && store.load("s1").is_none());
        assert!(store.load("s2").is_some() && store.load("s3").is_some());
        assert!(store.load("live-old").is_some());
    }
}
