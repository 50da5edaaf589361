//! Routing decisions (SPEC §2.1): which backend of a model takes a request, and the model's
//! FIFO queue when every routable backend is at its `max_concurrency`.
//!
//! One decision ([`RoutingTable::route`]) for `/v1` and session turns alike:
//! 1. Capacity: a backend at its limit takes nothing; slots are taken with a compare-and-swap
//!    ([`BackendHandle::try_acquire`]) so concurrent decisions never overshoot a limit.
//! 2. Affinity (policy `full`): a thread key (`prompt_cache_key`, or session id + model) sticks
//!    to the backend that served it last; without a key, the backend whose prefix index holds
//!    the longest prefix of the prompt ([`crate::prefix`]). The affine backend is used unless it
//!    is at its limit or has more than `affinity_slack` requests in flight beyond the
//!    least-loaded candidate.
//! 3. Otherwise the least-loaded backend (in-flight ÷ limit, or in-flight when unlimited), ties
//!    broken round-robin.
//!
//! Waiting is a [`Ticket`] in the model's [`ModelQueue`]: only the first ticket retries (when a
//! slot frees, a backend comes back, or membership changes), so the queue is FIFO; dropping a
//! ticket (the client left, the wait timed out) removes it at once and passes the turn on.
//! Nothing is sent upstream while a request waits: the caller gets its slot guard first.

use std::collections::VecDeque;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;
use uuid::Uuid;

use crate::metrics::{label, Histogram};
use crate::prefix::{HashKeyed, PromptSig};
use crate::routing::{BackendHandle, InFlightGuard, ModelRoute, RouteError, RoutingTable};

/// Threads remembered for affinity (≈ 48 bytes each with the eviction queue: ~3 MiB).
pub const AFFINITY_CAPACITY: usize = 65_536;
/// A prefix match shorter than this (bytes of prompt) is not worth a preference.
pub const MIN_PREFIX_MATCH_BYTES: u32 = 64;
/// `Retry-After` of `all_backends_busy`: slots of model servers free within seconds.
pub const BUSY_RETRY_AFTER_S: u64 = 1;
/// Buckets of the prefix-match length histogram, in bytes of prompt.
const PREFIX_BUCKETS: &[u64] = &[512, 2048, 8192, 32_768, 131_072];
/// Buckets of the queue-wait histogram, in ms.
const WAIT_BUCKETS_MS: &[u64] = &[1, 5, 10, 50, 100, 500, 1000, 5000, 10_000, 30_000];

/// `SWITCHBOARD_ROUTING`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RoutingPolicy {
    /// Plain rotation over routable backends with a free slot (the pre-§2.1 behaviour).
    RoundRobin,
    /// Least-loaded only, no affinity (for comparison in the bench).
    LeastLoaded,
    /// Capacity, thread and prefix affinity, least-loaded (the default).
    #[default]
    Full,
}

impl RoutingPolicy {
    /// Parses the configuration value.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "round-robin" => Some(Self::RoundRobin),
            "least-loaded" => Some(Self::LeastLoaded),
            "full" => Some(Self::Full),
            _ => None,
        }
    }
}

/// The routing configuration.
#[derive(Debug, Clone, Copy)]
pub struct RouterSettings {
    /// `SWITCHBOARD_ROUTING`.
    pub policy: RoutingPolicy,
    /// Requests waiting per model at most (`SWITCHBOARD_QUEUE_MAX`).
    pub queue_max: usize,
    /// Longest wait in the queue (`SWITCHBOARD_QUEUE_TIMEOUT_S`).
    pub queue_timeout: Duration,
    /// In-flight requests an affine backend may have beyond the least-loaded one
    /// (`SWITCHBOARD_AFFINITY_SLACK`).
    pub affinity_slack: u64,
}

impl Default for RouterSettings {
    fn default() -> Self {
        Self {
            policy: RoutingPolicy::Full,
            queue_max: 256,
            queue_timeout: Duration::from_secs(30),
            affinity_slack: 2,
        }
    }
}

/// Why a backend was chosen (`X-Switchboard-Route`, the session `start` event's `route`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteKind {
    /// The thread's backend (`prompt_cache_key`, session id + model).
    Affinity,
    /// The backend holding the longest prefix of the prompt.
    Prefix,
    /// Nothing affine (or the affine backend was full or past the slack).
    LeastLoaded,
    /// A retry after a failed attempt on another backend.
    Failover,
    /// `SWITCHBOARD_ROUTING=round-robin`.
    RoundRobin,
}

impl RouteKind {
    const ALL: [RouteKind; 5] = [
        Self::Affinity,
        Self::Prefix,
        Self::LeastLoaded,
        Self::Failover,
        Self::RoundRobin,
    ];

    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Affinity => "affinity",
            Self::Prefix => "prefix",
            Self::LeastLoaded => "least-loaded",
            Self::Failover => "failover",
            Self::RoundRobin => "round-robin",
        }
    }
}

/// What one decision is asked.
#[derive(Debug, Clone, Copy, Default)]
pub struct RouteRequest<'a> {
    /// The requested model (its backends and its queue).
    pub model: &'a str,
    /// [`thread_key`] of `prompt_cache_key` or session id + model.
    pub thread: Option<u64>,
    /// The prompt's points, for prefix affinity.
    pub prompt: Option<&'a PromptSig>,
    /// Backends already tried by this request (failover); non-empty means `failover`.
    pub exclude: &'a [Uuid],
}

/// A decision: the slot (released when the guard drops) and why.
pub struct Routed {
    /// The slot on the chosen backend: hold it for the upstream attempt; its drop frees the
    /// slot and wakes the model's first waiter.
    pub guard: InFlightGuard,
    /// Why this backend (the route header, `start.route`, the decision metric).
    pub kind: RouteKind,
    /// How long the request waited in the queue, if it did.
    pub waited: Option<Duration>,
}

/// The affinity key of a thread of `model` named `key`.
pub fn thread_key(model: &str, key: &str) -> u64 {
    PromptSig::from_parts([model.as_bytes(), key.as_bytes()])
        .points
        .last()
        .map_or(0, |p| p.0)
}

// === impl RoutingTable (decisions) ===

enum Pick {
    Got(InFlightGuard, RouteKind),
    Full,
    NoneRoutable,
}

impl RoutingTable {
    /// Routes one request: a slot on a backend now, or after waiting in the model's queue.
    pub async fn route(&self, req: &RouteRequest<'_>) -> Result<Routed, RouteError> {
        let route = self
            .snapshot()
            .get(req.model)
            .cloned()
            .ok_or(RouteError::UnknownModel)?;
        let queue = &route.queue;
        if queue.is_empty() {
            match self.pick(&route, req) {
                Pick::Got(guard, kind) => {
                    return Ok(Routed {
                        guard,
                        kind,
                        waited: None,
                    })
                }
                Pick::NoneRoutable => return Err(RouteError::NoHealthyBackend),
                Pick::Full => {}
            }
        }
        let started = Instant::now();
        let busy = |timed_out| RouteError::Busy {
            retry_after_s: BUSY_RETRY_AFTER_S,
            timed_out,
        };
        let Some(ticket) = queue.enter(self.settings.queue_max) else {
            queue.rejected_full.fetch_add(1, Ordering::Relaxed);
            return Err(busy(false));
        };
        let deadline = started + self.settings.queue_timeout;
        loop {
            if ticket.is_first() {
                match self.pick(&route, req) {
                    Pick::Got(guard, kind) => {
                        let waited = started.elapsed();
                        queue.wait.observe_ms(waited.as_millis() as u64);
                        return Ok(Routed {
                            guard,
                            kind,
                            waited: Some(waited),
                        });
                    }
                    Pick::NoneRoutable => return Err(RouteError::NoHealthyBackend),
                    Pick::Full => {}
                }
            }
            if tokio::time::timeout_at(deadline, ticket.notify.notified())
                .await
                .is_err()
            {
                queue.timed_out.fetch_add(1, Ordering::Relaxed);
                queue.wait.observe_ms(started.elapsed().as_millis() as u64);
                return Err(busy(true));
            }
        }
    }

    /// One decision without waiting: `Ok(None)` when every routable backend is at its limit.
    /// The bench times this (the cost of routing, without the queue).
    pub fn try_route(&self, req: &RouteRequest<'_>) -> Result<Option<Routed>, RouteError> {
        let route = self
            .snapshot()
            .get(req.model)
            .cloned()
            .ok_or(RouteError::UnknownModel)?;
        match self.pick(&route, req) {
            Pick::Got(guard, kind) => Ok(Some(Routed {
                guard,
                kind,
                waited: None,
            })),
            Pick::Full => Ok(None),
            Pick::NoneRoutable => Err(RouteError::NoHealthyBackend),
        }
    }

    fn pick(&self, route: &ModelRoute, req: &RouteRequest<'_>) -> Pick {
        let policy = self.settings.policy;
        // A lost compare-and-swap (another request took the last slot) decides again.
        for _ in 0..4 {
            let cands: Vec<&Arc<BackendHandle>> = route
                .backends
                .iter()
                .filter(|b| b.is_routable() && !req.exclude.contains(&b.id))
                .collect();
            if cands.is_empty() {
                return Pick::NoneRoutable;
            }
            let start = route.cursor.fetch_add(1, Ordering::Relaxed) % cands.len();
            let chosen = match policy {
                RoutingPolicy::RoundRobin => (0..cands.len())
                    .map(|i| cands[(start + i) % cands.len()])
                    .find(|b| !b.at_limit())
                    .map(|b| (b, RouteKind::RoundRobin)),
                RoutingPolicy::LeastLoaded | RoutingPolicy::Full => least_loaded(&cands, start)
                    .map(|best| {
                        let affine = (policy == RoutingPolicy::Full && req.exclude.is_empty())
                            .then(|| self.affine(&cands, req, best))
                            .flatten();
                        affine.unwrap_or((best, RouteKind::LeastLoaded))
                    }),
            };
            let Some((backend, mut kind)) = chosen else {
                return Pick::Full;
            };
            if !req.exclude.is_empty() {
                kind = RouteKind::Failover;
            }
            if let Some(guard) = backend.try_acquire() {
                self.remember(req, backend, kind);
                return Pick::Got(guard, kind);
            }
        }
        Pick::Full
    }

    /// The affine backend, when there is one and the load rule lets it take the request.
    fn affine<'b>(
        &self,
        cands: &[&'b Arc<BackendHandle>],
        req: &RouteRequest<'_>,
        best: &'b Arc<BackendHandle>,
    ) -> Option<(&'b Arc<BackendHandle>, RouteKind)> {
        let usable = |b: &BackendHandle| {
            !b.at_limit() && b.in_flight() <= best.in_flight() + self.settings.affinity_slack
        };
        if let Some(key) = req.thread {
            let mut threads = self.affinity.lock();
            if let Some(id) = threads.get(key) {
                match cands.iter().find(|b| b.id == id) {
                    Some(b) if usable(b) => return Some((b, RouteKind::Affinity)),
                    // Loaded past the slack: spill to the least-loaded backend.
                    Some(_) => return None,
                    // Its backend left the rotation (unhealthy, deleted, deactivated): the
                    // thread is released and routed afresh.
                    None => threads.remove(key),
                }
            }
        }
        let sig = req.prompt.filter(|s| !s.is_empty())?;
        let mut found: Option<(&'b Arc<BackendHandle>, u32)> = None;
        for b in cands {
            let m = b.prefix.lock().longest_match(sig);
            let better = match found {
                None => m > 0,
                Some((f, fm)) => m > fm || (m == fm && load(b) < load(f)),
            };
            if better {
                found = Some((b, m));
            }
        }
        let (b, m) = found.filter(|(_, m)| *m >= MIN_PREFIX_MATCH_BYTES)?;
        self.metrics.observe_prefix(m);
        usable(b).then_some((b, RouteKind::Prefix))
    }

    /// After a decision: the thread sticks to `backend`, the prompt is indexed there.
    fn remember(&self, req: &RouteRequest<'_>, backend: &BackendHandle, kind: RouteKind) {
        self.metrics.decisions[kind as usize].fetch_add(1, Ordering::Relaxed);
        if self.settings.policy != RoutingPolicy::Full {
            return;
        }
        if let Some(key) = req.thread {
            self.affinity.lock().set(key, backend.id);
        }
        if let Some(sig) = req.prompt.filter(|s| !s.is_empty()) {
            backend.prefix.lock().insert(sig);
        }
    }

    /// Depth of each model's queue (`GET /admin/stats` `queues`).
    pub fn queue_depths(&self) -> Vec<(String, usize)> {
        let mut out: Vec<_> = self
            .snapshot()
            .iter()
            .map(|(m, r)| (m.clone(), r.queue.len()))
            .collect();
        out.sort();
        out
    }

    /// The routing policy in force.
    pub fn policy(&self) -> RoutingPolicy {
        self.settings.policy
    }

    /// Appends the routing metrics (Prometheus text).
    pub fn render_metrics(&self, out: &mut String) {
        let m = &self.metrics;
        let _ = writeln!(out, "# HELP switchboard_route_decisions_total Routing decisions by kind (SPEC 2.1).\n# TYPE switchboard_route_decisions_total counter");
        for kind in RouteKind::ALL {
            let n = m.decisions[kind as usize].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "switchboard_route_decisions_total{{kind=\"{}\"}} {n}",
                kind.as_str()
            );
        }
        let _ = writeln!(out, "# HELP switchboard_route_prefix_match_bytes Length of the prefix a prefix-affinity decision matched.\n# TYPE switchboard_route_prefix_match_bytes histogram");
        let mut cumulative = 0;
        for (i, bound) in PREFIX_BUCKETS.iter().enumerate() {
            cumulative += m.prefix_buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "switchboard_route_prefix_match_bytes_bucket{{le=\"{bound}\"}} {cumulative}"
            );
        }
        cumulative += m.prefix_buckets[PREFIX_BUCKETS.len()].load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "switchboard_route_prefix_match_bytes_bucket{{le=\"+Inf\"}} {cumulative}\nswitchboard_route_prefix_match_bytes_sum {}\nswitchboard_route_prefix_match_bytes_count {cumulative}",
            m.prefix_sum.load(Ordering::Relaxed)
        );
        let snapshot = self.snapshot();
        let mut models: Vec<_> = snapshot.iter().collect();
        models.sort_by(|a, b| a.0.cmp(b.0));
        let _ = writeln!(out, "# HELP switchboard_route_queue_depth Requests waiting for a slot, per model.\n# TYPE switchboard_route_queue_depth gauge");
        for (model, r) in &models {
            let _ = writeln!(
                out,
                "switchboard_route_queue_depth{{model=\"{}\"}} {}",
                label(model),
                r.queue.len()
            );
        }
        let _ = writeln!(out, "# HELP switchboard_route_queue_rejected_total Requests answered all_backends_busy, per model and reason.\n# TYPE switchboard_route_queue_rejected_total counter");
        for (model, r) in &models {
            for (reason, n) in [
                ("full", &r.queue.rejected_full),
                ("timeout", &r.queue.timed_out),
            ] {
                let _ = writeln!(
                    out,
                    "switchboard_route_queue_rejected_total{{model=\"{}\",reason=\"{reason}\"}} {}",
                    label(model),
                    n.load(Ordering::Relaxed)
                );
            }
        }
        let _ = writeln!(out, "# HELP switchboard_route_queue_wait_seconds Time requests waited in a model's queue.\n# TYPE switchboard_route_queue_wait_seconds histogram");
        for (model, r) in &models {
            let labels = format!("model=\"{}\"", label(model));
            r.queue
                .wait
                .render(out, "switchboard_route_queue_wait_seconds", &labels);
        }
    }
}

/// The least-loaded backend below its limit, ties to the first in rotation from `start`.
fn least_loaded<'b>(
    cands: &[&'b Arc<BackendHandle>],
    start: usize,
) -> Option<&'b Arc<BackendHandle>> {
    let mut best: Option<(&'b Arc<BackendHandle>, f64)> = None;
    for i in 0..cands.len() {
        let b = cands[(start + i) % cands.len()];
        if b.at_limit() {
            continue;
        }
        let l = load(b);
        if best.is_none_or(|(_, bl)| l < bl) {
            best = Some((b, l));
        }
    }
    best.map(|(b, _)| b)
}

/// In-flight ÷ `max_concurrency`, or in-flight when unlimited.
fn load(b: &BackendHandle) -> f64 {
    let n = b.in_flight() as f64;
    b.max_concurrency().map_or(n, |l| n / f64::from(l.max(1)))
}

// === impl ModelQueue ===

/// One model's FIFO of requests waiting for a slot.
pub struct ModelQueue {
    waiters: Mutex<VecDeque<(u64, Arc<Notify>)>>,
    len: AtomicUsize,
    next_id: AtomicU64,
    /// Wait time of requests that left the queue (served or timed out).
    wait: Histogram,
    rejected_full: AtomicU64,
    timed_out: AtomicU64,
}

impl Default for ModelQueue {
    fn default() -> Self {
        Self {
            waiters: Mutex::new(VecDeque::new()),
            len: AtomicUsize::new(0),
            next_id: AtomicU64::new(0),
            wait: Histogram::new(WAIT_BUCKETS_MS),
            rejected_full: AtomicU64::new(0),
            timed_out: AtomicU64::new(0),
        }
    }
}

impl ModelQueue {
    /// Requests waiting.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    /// Whether nobody waits (new requests may then take a free slot directly).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Joins the back of the queue, unless `max` are already waiting.
    pub fn enter(self: &Arc<Self>, max: usize) -> Option<Ticket> {
        let mut w = self.waiters.lock();
        if w.len() >= max {
            return None;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let notify = Arc::new(Notify::new());
        w.push_back((id, Arc::clone(&notify)));
        self.len.store(w.len(), Ordering::Release);
        Some(Ticket {
            queue: Arc::clone(self),
            id,
            notify,
        })
    }

    /// A slot may have freed: the first waiter tries again. (`Notify` keeps the permit when
    /// the waiter is not parked yet, so a wake between its attempt and its wait is not lost.)
    pub fn wake_front(&self) {
        if self.is_empty() {
            return;
        }
        if let Some((_, n)) = self.waiters.lock().front() {
            n.notify_one();
        }
    }
}

/// A place in a [`ModelQueue`]. Dropping it (served, timed out, or the client went away and
/// its request future was dropped) removes it at once and hands the turn to the next waiter.
pub struct Ticket {
    queue: Arc<ModelQueue>,
    id: u64,
    notify: Arc<Notify>,
}

impl Ticket {
    /// Whether this ticket is first in line (only the first one takes a freed slot).
    pub fn is_first(&self) -> bool {
        self.queue
            .waiters
            .lock()
            .front()
            .is_some_and(|(id, _)| *id == self.id)
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut w = self.queue.waiters.lock();
        if let Some(pos) = w.iter().position(|(id, _)| *id == self.id) {
            w.remove(pos);
            if pos == 0 {
                if let Some((_, next)) = w.front() {
                    next.notify_one();
                }
            }
        }
        self.queue.len.store(w.len(), Ordering::Release);
    }
}

// === impl AffinityMap ===

/// Thread key → backend, bounded by [`AFFINITY_CAPACITY`], least recently routed evicted first.
pub struct AffinityMap {
    map: HashKeyed<(Uuid, u64)>,
    order: VecDeque<(u64, u64)>,
    stamp: u64,
    cap: usize,
}

impl Default for AffinityMap {
    fn default() -> Self {
        Self::with_capacity(AFFINITY_CAPACITY)
    }
}

impl AffinityMap {
    /// A map of at most `cap` threads.
    pub fn with_capacity(cap: usize) -> Self {
        Self {
            map: HashKeyed::default(),
            order: VecDeque::new(),
            stamp: 0,
            cap: cap.max(1),
        }
    }

    /// The backend `key` sticks to.
    pub fn get(&self, key: u64) -> Option<Uuid> {
        self.map.get(&key).map(|(id, _)| *id)
    }

    /// `key` now sticks to `id` (and counts as recently used).
    pub fn set(&mut self, key: u64, id: Uuid) {
        self.stamp += 1;
        self.map.insert(key, (id, self.stamp));
        self.order.push_back((key, self.stamp));
        while self.map.len() > self.cap || self.order.len() > 2 * self.cap {
            let Some((k, s)) = self.order.pop_front() else {
                break;
            };
            if self.map.get(&k).is_some_and(|(_, cur)| *cur == s) {
                self.map.remove(&k);
            }
        }
    }

    /// Forgets `key` (its backend left the rotation).
    pub fn remove(&mut self, key: u64) {
        self.map.remove(&key);
    }

    /// Threads remembered.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether no thread is remembered.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

// === impl RoutingMetrics ===

/// Counters of routing decisions, for `/metrics`.
pub struct RoutingMetrics {
    decisions: [AtomicU64; 5],
    prefix_buckets: Vec<AtomicU64>,
    prefix_sum: AtomicU64,
}

impl Default for RoutingMetrics {
    fn default() -> Self {
        Self {
            decisions: Default::default(),
            prefix_buckets: (0..=PREFIX_BUCKETS.len())
                .map(|_| AtomicU64::new(0))
                .collect(),
            prefix_sum: AtomicU64::new(0),
        }
    }
}

impl RoutingMetrics {
    fn observe_prefix(&self, bytes: u32) {
        let b = u64::from(bytes);
        let i = PREFIX_BUCKETS
            .iter()
            .position(|x| b <= *x)
            .unwrap_or(PREFIX_BUCKETS.len());
        self.prefix_buckets[i].fetch_add(1, Ordering::Relaxed);
        self.prefix_sum.fetch_add(b, Ordering::Relaxed);
    }

    /// Decisions of `kind` so far.
    pub fn decisions(&self, kind: RouteKind) -> u64 {
        self.decisions[kind as usize].load(Ordering::Relaxed)
    }
}

#[cfg(test)]
#[path = "router_tests.rs"]
mod tests;
