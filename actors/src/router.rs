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

use std::fmt::Write;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use uuid::Uuid;

use crate::metrics::label;
use crate::prefix::PromptSig;
use crate::routing::{BackendHandle, InFlightGuard, ModelRoute, RouteError, RoutingTable};
use crate::routing_policy::{RouteKind, RoutingPolicy};

/// A prefix match shorter than this (bytes of prompt) is not worth a preference.
pub const MIN_PREFIX_MATCH_BYTES: u32 = 64;
/// `Retry-After` of `all_backends_busy`: slots of model servers free within seconds.
pub const BUSY_RETRY_AFTER_S: u64 = 1;
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
            queue.count_rejected_full();
            return Err(busy(false));
        };
        let deadline = started + self.settings.queue_timeout;
        loop {
            if ticket.is_first() {
                // Decide on the membership as it is now: an update or a registration rebuilds
                // the table (and wakes the queue) while this request waits. The queue itself
                // is kept across rebuilds, so the ticket stays in line.
                let Some(route) = self.snapshot().get(req.model).cloned() else {
                    return Err(RouteError::UnknownModel);
                };
                match self.pick(&route, req) {
                    Pick::Got(guard, kind) => {
                        let waited = started.elapsed();
                        queue.observe_wait_ms(waited.as_millis() as u64);
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
            if tokio::time::timeout_at(deadline, ticket.woken())
                .await
                .is_err()
            {
                queue.count_timed_out();
                queue.observe_wait_ms(started.elapsed().as_millis() as u64);
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
            if let Some(&id) = threads.get(key) {
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
        self.metrics.count_decision(kind);
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
        self.metrics.render(out);
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
            for (reason, n) in r.queue.rejections() {
                let _ = writeln!(
                    out,
                    "switchboard_route_queue_rejected_total{{model=\"{}\",reason=\"{reason}\"}} {n}",
                    label(model),
                );
            }
        }
        let _ = writeln!(out, "# HELP switchboard_route_queue_wait_seconds Time requests waited in a model's queue.\n# TYPE switchboard_route_queue_wait_seconds histogram");
        for (model, r) in &models {
            let labels = format!("model=\"{}\"", label(model));
            r.queue
                .wait_histogram()
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

#[cfg(test)]
#[path = "router_tests.rs"]
mod tests;
