//! `Sessions`: the directory of live sessions, their idle/LRU bookkeeping, and the per-IP
//! connection counts. Shared (`Arc`) by every worker; lookups take a read lock for the time of
//! a hash probe, so attaching never waits on an actor.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use actix::prelude::*;
use parking_lot::{Mutex, RwLock};

use crate::memory_release::MEMORY_RELEASE;
use crate::metrics::{Histogram, LATENCY_BUCKETS_US};
use crate::model_stream::StopReason;
use crate::record::now_ms;
use crate::routing::RoutingTable;
use crate::session::{CloseConnections, CloseReason, End, Session, SessionSettings};
use crate::session_store::SessionStore;

/// Why a session could not be created or joined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionsError {
    /// At `MAX_SESSIONS` with no detached session to evict (WS close 4503, HTTP 503).
    AtCapacity,
    /// Shutting down (WS close 4503 / 1001, HTTP 503).
    Draining,
}

struct Entry {
    addr: Addr<Session>,
    last_active_ms: AtomicU64,
    connections: AtomicUsize,
}

/// Counters for `/metrics` and `/admin/stats`.
pub struct SessionCounters {
    pub resumes: AtomicU64,
    pub replayed_events: AtomicU64,
    pub connections: AtomicU64,
    /// Model streams stopped by a cancel, a `clear`, grace expiry or a session end.
    pub cancellations: AtomicU64,
    /// Turns started.
    pub turns: AtomicU64,
    /// Turns not yet complete (shutdown waits for them).
    pub turns_in_flight: AtomicU64,
    /// Time to first token of session model streams.
    pub ttft: Histogram,
}

impl Default for SessionCounters {
    fn default() -> Self {
        Self {
            resumes: AtomicU64::new(0),
            replayed_events: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            cancellations: AtomicU64::new(0),
            turns: AtomicU64::new(0),
            turns_in_flight: AtomicU64::new(0),
            ttft: Histogram::new(LATENCY_BUCKETS_US),
        }
    }
}

/// See the module docs.
pub struct Sessions {
    map: RwLock<HashMap<String, Entry>>,
    per_ip: Mutex<HashMap<IpAddr, u32>>,
    table: Arc<RoutingTable>,
    settings: SessionSettings,
    max_sessions: usize,
    max_connections_per_ip: u32,
    draining: AtomicBool,
    next_conn: AtomicU64,
    pub counters: SessionCounters,
    /// Where sessions are stored to survive a restart; unset in tests that need no disk.
    store: OnceLock<SessionStore>,
    /// Unix ms of the last sweep of stored sessions (TTL and cap).
    last_sweep_ms: AtomicU64,
}

impl Sessions {
    /// An empty directory.
    pub fn new(
        table: Arc<RoutingTable>,
        settings: SessionSettings,
        max_sessions: usize,
        max_connections_per_ip: u32,
    ) -> Arc<Self> {
        Arc::new(Self {
            map: RwLock::new(HashMap::new()),
            per_ip: Mutex::new(HashMap::new()),
            table,
            settings,
            max_sessions: max_sessions.max(1),
            max_connections_per_ip,
            draining: AtomicBool::new(false),
            next_conn: AtomicU64::new(1),
            counters: SessionCounters::default(),
            store: OnceLock::new(),
            last_sweep_ms: AtomicU64::new(0),
        })
    }

    /// Creates a session on the calling thread's arbiter, evicting the least recently used
    /// detached session when at the cap.
    pub fn create(self: &Arc<Self>) -> Result<(String, Addr<Session>), SessionsError> {
        if self.is_draining() {
            return Err(SessionsError::Draining);
        }
        if self.map.read().len() >= self.max_sessions {
            self.evict_one()?;
        }
        self.maybe_sweep();
        let id = uuid::Uuid::new_v4().simple().to_string();
        let addr = Session::new(id.clone(), Arc::clone(self), self.settings).start();
        self.map.write().insert(
            id.clone(),
            Entry {
                addr: addr.clone(),
                last_active_ms: AtomicU64::new(now_ms()),
                connections: AtomicUsize::new(0),
            },
        );
        log::info!("session_id={id} created");
        Ok((id, addr))
    }

    fn evict_one(&self) -> Result<(), SessionsError> {
        let victim = {
            let map = self.map.read();
            map.iter()
                .filter(|(_, e)| e.connections.load(Ordering::Relaxed) == 0)
                .min_by_key(|(_, e)| e.last_active_ms.load(Ordering::Relaxed))
                .map(|(id, e)| (id.clone(), e.addr.clone()))
        };
        let Some((id, addr)) = victim else {
            return Err(SessionsError::AtCapacity);
        };
        log::info!("session_id={id} evicted (least recently used, at the session cap)");
        self.map.write().remove(&id);
        addr.do_send(End(StopReason::SessionExpired));
        Ok(())
    }

    /// A session by id: a live one, or one rebuilt from its stored copy (after a restart)
    /// on the calling thread's arbiter. `Ok(None)`: no such session (an expired stored copy is
    /// deleted). A stored session that exists but cannot come back now (the live sessions are
    /// at `MAX_SESSIONS` with none detached, or the server drains) is an error, so the client
    /// hears "later" (4503 / 503), not "gone" (4001 / 404).
    pub fn get(self: &Arc<Self>, id: &str) -> Result<Option<Addr<Session>>, SessionsError> {
        if let Some(addr) = self.map.read().get(id).map(|e| e.addr.clone()) {
            return Ok(Some(addr));
        }
        self.restore(id)
    }

    fn restore(self: &Arc<Self>, id: &str) -> Result<Option<Addr<Session>>, SessionsError> {
        let Some(store) = self.store.get() else {
            return Ok(None);
        };
        let Some(stored) = store.load(id) else {
            return Ok(None);
        };
        let idle_ms = now_ms().saturating_sub(stored.last_active_ms);
        if u128::from(idle_ms) >= self.settings.ttl.as_millis() {
            log::info!(
                "session_id={id} stored copy expired ({} s idle); deleted",
                idle_ms / 1000
            );
            store.delete(id);
            return Ok(None);
        }
        if self.is_draining() {
            return Err(SessionsError::Draining);
        }
        if self.map.read().len() >= self.max_sessions {
            self.evict_one()?;
        }
        let mut map = self.map.write();
        if let Some(e) = map.get(id) {
            return Ok(Some(e.addr.clone())); // another request restored it first
        }
        let last_event_id = stored.last_event_id;
        let addr = Session::restore(stored, Arc::clone(self), self.settings).start();
        map.insert(
            id.to_string(),
            Entry {
                addr: addr.clone(),
                last_active_ms: AtomicU64::new(now_ms()),
                connections: AtomicUsize::new(0),
            },
        );
        log::info!("session_id={id} restored from its stored copy (last id {last_event_id})");
        Ok(Some(addr))
    }

    /// Connects the store sessions are written to, and sweeps it (TTL and `MAX_SESSIONS`
    /// apply to stored sessions too). Called once at startup.
    pub fn set_store(&self, store: SessionStore) {
        if self.store.set(store).is_ok() {
            let swept = self.sweep_stored();
            log::info!(
                "stored sessions: {} kept, {swept} expired or over the cap deleted",
                self.store.get().map_or(0, SessionStore::len)
            );
        }
    }

    /// The session store, when sessions are persisted.
    pub(crate) fn store(&self) -> Option<&SessionStore> {
        self.store.get()
    }

    /// Deletes stored sessions past the TTL or the cap (live ones are kept).
    fn sweep_stored(&self) -> usize {
        let Some(store) = self.store.get() else {
            return 0;
        };
        self.last_sweep_ms.store(now_ms(), Ordering::Relaxed);
        let ttl_ms = u64::try_from(self.settings.ttl.as_millis()).unwrap_or(u64::MAX);
        let live = self.map.read();
        store.sweep(ttl_ms, self.max_sessions, |id| live.contains_key(id))
    }

    /// Sweeps the store again when a quarter of the TTL (at least a second) has passed, so
    /// copies that nobody resumes do not outlive their TTL on disk.
    fn maybe_sweep(&self) {
        let every = (self.settings.ttl / 4).max(std::time::Duration::from_secs(1));
        let last = self.last_sweep_ms.load(Ordering::Relaxed);
        if u128::from(now_ms().saturating_sub(last)) >= every.as_millis() {
            self.sweep_stored();
        }
    }

    /// Called by a session whenever it is active (LRU order, attached count).
    pub(crate) fn touch(&self, id: &str, connections: usize) {
        if let Some(e) = self.map.read().get(id) {
            e.last_active_ms.store(now_ms(), Ordering::Relaxed);
            e.connections.store(connections, Ordering::Relaxed);
        }
    }

    /// Called by a session as it stops.
    pub(crate) fn remove(&self, id: &str) {
        self.map.write().remove(id);
        MEMORY_RELEASE.note_ended();
    }

    /// The shared counters (also updated by sessions).
    pub(crate) fn counters(&self) -> &SessionCounters {
        &self.counters
    }

    pub(crate) fn count_replay(&self, events: usize) {
        self.counters.resumes.fetch_add(1, Ordering::Relaxed);
        self.counters
            .replayed_events
            .fetch_add(events as u64, Ordering::Relaxed);
    }

    /// The routing table model streams pick backends from.
    pub fn table(&self) -> Arc<RoutingTable> {
        Arc::clone(&self.table)
    }

    /// Live sessions.
    pub fn count(&self) -> usize {
        self.map.read().len()
    }

    /// A fresh connection id (unique per process), for logs and detach.
    pub fn next_connection_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// Claims one session connection for `ip`; `None` past the per-IP limit (close 4029 /
    /// HTTP 429). The slot is released when the guard drops.
    pub fn claim_connection(self: &Arc<Self>, ip: IpAddr) -> Option<ConnectionSlot> {
        let mut per_ip = self.per_ip.lock();
        let n = per_ip.entry(ip).or_insert(0);
        if self.max_connections_per_ip > 0 && *n >= self.max_connections_per_ip {
            return None;
        }
        *n += 1;
        self.counters.connections.fetch_add(1, Ordering::Relaxed);
        Some(ConnectionSlot {
            sessions: Arc::clone(self),
            ip,
        })
    }

    /// Open session connections (all IPs).
    pub fn open_connections(&self) -> u64 {
        self.counters.connections.load(Ordering::Relaxed)
    }

    /// Stop taking new sessions and connections (shutdown).
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Whether shutdown has begun.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Closes every session connection for `reason` (shutdown); turns go on.
    pub fn close_all_connections(&self, reason: CloseReason) {
        let all: Vec<Addr<Session>> = self.map.read().values().map(|e| e.addr.clone()).collect();
        for addr in all {
            addr.do_send(CloseConnections(reason));
        }
    }

    /// Ends every session (shutdown): clients get `1001`, streams are cancelled.
    pub fn end_all(&self, reason: StopReason) {
        let all: Vec<Addr<Session>> = self.map.read().values().map(|e| e.addr.clone()).collect();
        for addr in all {
            addr.do_send(End(reason));
        }
    }
}

/// One counted session connection of an IP; dropping it frees the slot.
pub struct ConnectionSlot {
    sessions: Arc<Sessions>,
    ip: IpAddr,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut per_ip = self.sessions.per_ip.lock();
        if let Some(n) = per_ip.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                per_ip.remove(&self.ip);
            }
        }
        self.sessions
            .counters
            .connections
            .fetch_sub(1, Ordering::Relaxed);
        MEMORY_RELEASE.note_ended();
    }
}
