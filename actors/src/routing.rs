//! The routing table: a shared snapshot that request handlers read without messaging any actor.
//!
//! Membership (which backends serve which model) changes rarely and is rebuilt by the
//! supervisor under a short write lock. Health flips often and lives in atomics on each
//! [`BackendHandle`], so marking a backend unhealthy never rebuilds or blocks the table.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use uuid::Uuid;

use crate::affinity::AffinityMap;
use crate::endpoint::{self, Endpoint};
use crate::model_queue::ModelQueue;
use crate::prefix::PrefixIndex;
use crate::routing_policy::{RouterSettings, RoutingMetrics};

/// Receives passive failure reports from the hot path. Implemented by the backend actor's
/// address wrapper; a trait keeps this module free of actor types and easy to unit test.
pub trait FailureSink: Send + Sync {
    /// A request to this backend failed; mark it and schedule a re-check.
    fn report(&self, reason: String);
    /// A passive-health backend served a request after its re-check delay: healthy again.
    fn recovered(&self) {}
}

/// What a request handler needs to reach one backend, plus the live counters the dashboard
/// shows. Shared between the routing table, in-flight requests and the backend actor.
pub struct BackendHandle {
    pub id: Uuid,
    /// `id` as text (response header, logs, metrics labels), formatted once.
    pub id_text: Arc<str>,
    pub model: String,
    /// The registration's URL without a trailing `/` or `/v1`: the backend's identity in logs
    /// and listings. Upstream URLs are not built from it but from [`endpoint::openai_base`].
    pub base_url: String,
    pub api_key: Option<String>,
    /// Precomputed `Bearer <key>` header value, so the hot path does not format per request.
    pub auth_header: Option<String>,
    /// The registration's owner (`owned_by` in `/v1/models`).
    pub owner: Option<String>,
    /// When it was first registered, unix ms (`created` in `/v1/models`).
    pub registered_at_ms: u64,
    /// Upstream URLs of the OpenAI routes, parsed once per backend instead of per request.
    uris: Vec<(Endpoint, awc::http::Uri)>,
    healthy: AtomicBool,
    active: AtomicBool,
    /// Shared with the handle this one replaced (an update), so requests still running on the
    /// old handle keep counting against the limit.
    in_flight: Arc<AtomicU64>,
    requests_routed: AtomicU64,
    failures: RwLock<Option<Arc<dyn FailureSink>>>,
    /// `max_concurrency` of the registration; `None` = unlimited.
    pub(crate) limit: Option<u32>,
    /// What was routed here recently (prefix affinity); cleared when the backend leaves the
    /// rotation.
    pub(crate) prefix: Mutex<PrefixIndex>,
    /// The queue of this backend's model, set by [`RoutingTable::rebuild`]; a freed slot wakes
    /// its first waiter.
    pub(crate) queue: RwLock<Option<Arc<ModelQueue>>>,
    /// The model id this backend is sent in place of the public name (`upstream_model`,
    /// SPEC §3.1); `None` forwards the client's body untouched (zero-copy).
    pub upstream_model: Option<Arc<str>>,
    /// `health_check: "passive"`: never probed; a request failure takes it out of the rotation
    /// and, after the re-check delay, the next request that succeeds restores it.
    pub passive_health: bool,
    /// Set while a passive-health backend waits for a successful request to count as healthy
    /// again; the hot path reports that success once (see [`BackendHandle::report_success`]).
    awaiting_success: AtomicBool,
    /// Tokens this backend served (`switchboard_tokens_total`, SPEC §8).
    pub tokens: crate::usage::TokenCounts,
}

impl BackendHandle {
    /// A handle for a backend at `endpoint_url`, an OpenAI base URL (SPEC §3.1 rule in
    /// [`endpoint::openai_base`]).
    pub fn new(id: Uuid, model: String, endpoint_url: &str, api_key: Option<String>) -> Self {
        let openai = endpoint::openai_base(endpoint_url);
        let uris = Endpoint::ALL
            .iter()
            .filter_map(|e| Some((*e, endpoint::upstream_url(&openai, *e).parse().ok()?)))
            .collect();
        let base = endpoint_url.trim_end_matches('/');
        let base = base.strip_suffix("/v1").unwrap_or(base).to_string();
        Self {
            id,
            id_text: id.to_string().into(),
            uris,
            model,
            base_url: base,
            auth_header: api_key.as_ref().map(|k| format!("Bearer {k}")),
            api_key,
            owner: None,
            registered_at_ms: 0,
            healthy: AtomicBool::new(true),
            active: AtomicBool::new(true),
            in_flight: Arc::new(AtomicU64::new(0)),
            requests_routed: AtomicU64::new(0),
            failures: RwLock::new(None),
            limit: None,
            prefix: Mutex::new(PrefixIndex::default()),
            queue: RwLock::new(None),
            upstream_model: None,
            passive_health: false,
            awaiting_success: AtomicBool::new(false),
            tokens: crate::usage::TokenCounts::default(),
        }
    }

    /// Sets the registration's `max_concurrency` (`None` = unlimited).
    pub fn with_max_concurrency(mut self, limit: Option<u32>) -> Self {
        self.limit = limit;
        self
    }

    /// Continues counting the in-flight requests of `prev` (the handle this one replaces).
    pub fn inherit_load(mut self, prev: &BackendHandle) -> Self {
        self.in_flight = Arc::clone(&prev.in_flight);
        self
    }

    /// The registration's `max_concurrency`.
    pub fn max_concurrency(&self) -> Option<u32> {
        self.limit
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Takes a slot if the backend is below its limit (atomically: concurrent callers never
    /// push it past the limit together).
    pub fn try_acquire(self: &Arc<Self>) -> Option<InFlightGuard> {
        let limit = u64::from(self.limit.unwrap_or(u32::MAX));
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()?;
        self.requests_routed.fetch_add(1, Ordering::Relaxed);
        Some(InFlightGuard(Arc::clone(self)))
    }

    /// Whether the backend is at its `max_concurrency`.
    pub fn at_limit(&self) -> bool {
        self.limit.is_some_and(|l| self.in_flight() >= u64::from(l))
    }

    fn wake_queue(&self) {
        if let Some(q) = self.queue.read().as_ref() {
            q.wake_front();
        }
    }

    /// Sets the registration's `upstream_model` and health-check mode on a new handle.
    pub fn with_cloud_options(mut self, upstream_model: Option<&str>, passive: bool) -> Self {
        self.upstream_model = upstream_model.map(Arc::from);
        self.passive_health = passive;
        self
    }

    /// A passive-health backend that was failing is routable again (re-check delay over);
    /// the next successful request marks it healthy.
    pub fn await_success(&self) {
        self.awaiting_success.store(true, Ordering::Release);
        self.healthy.store(true, Ordering::Release);
    }

    /// A request to this backend succeeded (its response was committed). Costs one atomic load
    /// unless a passive-health backend is waiting for exactly this; then its actor is told once.
    pub fn report_success(&self) {
        if self.awaiting_success.load(Ordering::Relaxed)
            && self.awaiting_success.swap(false, Ordering::AcqRel)
        {
            if let Some(sink) = self.failures.read().as_ref() {
                sink.recovered();
            }
        }
    }

    /// The upstream URL of `endpoint` on this backend (`{base}/chat/completions`).
    pub fn uri(&self, endpoint: Endpoint) -> Result<awc::http::Uri, String> {
        self.uris
            .iter()
            .find(|(e, _)| *e == endpoint)
            .map(|(_, uri)| uri.clone())
            .ok_or_else(|| format!("bad upstream URL for {}", endpoint.suffix()))
    }

    /// Connects the handle to whoever handles passive failures (the backend actor).
    pub fn set_failure_sink(&self, sink: Arc<dyn FailureSink>) {
        *self.failures.write() = Some(sink);
    }

    /// In the rotation: active and not known to be failing.
    pub fn is_routable(&self) -> bool {
        self.active.load(Ordering::Acquire) && self.healthy.load(Ordering::Acquire)
    }

    /// Whether the backend is active (not deactivated after repeated failures).
    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::Acquire)
    }

    /// Whether the backend counts as healthy right now.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    /// Published by the backend actor after every state change.
    pub fn publish(&self, healthy: bool, active: bool) {
        let was = self.is_routable();
        self.healthy.store(healthy, Ordering::Release);
        self.active.store(active, Ordering::Release);
        match (was, healthy && active) {
            (false, true) => self.wake_queue(),
            (true, false) => self.prefix.lock().clear(),
            _ => {}
        }
    }

    /// Passive check: takes the backend out of the rotation at once, then tells its actor.
    pub fn report_failure(&self, reason: String) {
        self.awaiting_success.store(false, Ordering::Release);
        if self.healthy.swap(false, Ordering::AcqRel) {
            self.prefix.lock().clear();
        }
        if let Some(sink) = self.failures.read().as_ref() {
            sink.report(reason);
        }
    }

    /// Counts a request for the lifetime of the returned guard.
    pub fn start_request(self: &Arc<Self>) -> InFlightGuard {
        self.requests_routed.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlightGuard(Arc::clone(self))
    }

    /// `(requests_routed, in_flight)`.
    pub fn counters(&self) -> (u64, u64) {
        (
            self.requests_routed.load(Ordering::Relaxed),
            self.in_flight.load(Ordering::Relaxed),
        )
    }
}

/// Decrements the backend's in-flight count when the request ends, however it ends.
pub struct InFlightGuard(Arc<BackendHandle>);

impl InFlightGuard {
    /// The backend this request went to.
    pub fn backend(&self) -> &Arc<BackendHandle> {
        &self.0
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.0.wake_queue();
    }
}

/// The backends of one model and its round-robin cursor.
pub struct ModelRoute {
    pub backends: Vec<Arc<BackendHandle>>,
    pub(crate) cursor: AtomicUsize,
    /// The model's FIFO of requests waiting for a slot; kept across rebuilds.
    pub(crate) queue: Arc<ModelQueue>,
}

/// Why no backend can take a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteError {
    /// No backend is registered for the model (HTTP 404).
    UnknownModel,
    /// Backends exist, none is healthy and active (HTTP 503).
    NoHealthyBackend,
    /// Every routable backend is at its `max_concurrency` and the model's queue is full, or the
    /// wait in it passed the queue timeout (HTTP 503 `all_backends_busy` with `Retry-After`).
    Busy { retry_after_s: u64, timed_out: bool },
}

impl RouteError {
    /// The error code, the same on `/v1` (`error.code`) and in a session's `error` event.
    pub fn code(&self) -> &'static str {
        match self {
            Self::UnknownModel => "model_not_found",
            Self::NoHealthyBackend => "no_healthy_backend",
            Self::Busy { .. } => "all_backends_busy",
        }
    }

    /// What the client is told about `model`, the same on `/v1` and in sessions.
    pub fn message(&self, model: &str) -> String {
        match self {
            Self::UnknownModel => {
                format!("The model `{model}` does not exist: no backend is registered for it")
            }
            Self::NoHealthyBackend => format!("no healthy backend is available for model `{model}`"),
            Self::Busy {
                retry_after_s,
                timed_out,
            } => format!(
                "every backend of model `{model}` is at its max_concurrency and {}; retry in {retry_after_s} s",
                if *timed_out {
                    "the wait in its queue timed out"
                } else {
                    "its queue is full"
                }
            ),
        }
    }

    /// Whether trying again later can succeed (an unknown model stays unknown).
    pub fn retryable(&self) -> bool {
        !matches!(self, Self::UnknownModel)
    }
}

/// The shared table. Readers clone an `Arc` under a read lock held for nanoseconds.
#[derive(Default)]
pub struct RoutingTable {
    models: RwLock<Arc<HashMap<String, Arc<ModelRoute>>>>,
    /// Policy, queue bounds, affinity slack (from configuration).
    pub(crate) settings: RouterSettings,
    /// Thread affinity: thread key → the backend that served it last.
    pub(crate) affinity: Mutex<AffinityMap>,
    /// Routing decisions, prefix-match lengths (queue figures live on each model's queue).
    pub(crate) metrics: RoutingMetrics,
}

impl RoutingTable {
    /// A table routing with `settings`.
    pub fn new(settings: RouterSettings) -> Self {
        Self {
            settings,
            ..Self::default()
        }
    }

    /// The handle currently routed for registration `id` (an update carries its load over).
    pub fn find(&self, id: Uuid) -> Option<Arc<BackendHandle>> {
        self.snapshot()
            .values()
            .flat_map(|r| r.backends.iter())
            .find(|b| b.id == id)
            .cloned()
    }

    /// Replaces the membership with `backends`, keeping round-robin cursors and queues of known
    /// models.
    pub fn rebuild(&self, backends: Vec<Arc<BackendHandle>>) {
        let old = self.snapshot();
        let mut grouped: HashMap<String, Vec<Arc<BackendHandle>>> = HashMap::new();
        for b in backends {
            grouped.entry(b.model.clone()).or_default().push(b);
        }
        let next = grouped
            .into_iter()
            .map(|(model, backends)| {
                let cursor = old
                    .get(&model)
                    .map(|r| r.cursor.load(Ordering::Relaxed))
                    .unwrap_or(0);
                let queue = old
                    .get(&model)
                    .map(|r| Arc::clone(&r.queue))
                    .unwrap_or_default();
                for b in &backends {
                    *b.queue.write() = Some(Arc::clone(&queue));
                }
                let route = ModelRoute {
                    backends,
                    cursor: AtomicUsize::new(cursor),
                    queue,
                };
                (model, Arc::new(route))
            })
            .collect::<HashMap<_, _>>();
        *self.models.write() = Arc::new(next);
        // Membership or limits changed: waiters may fit now (or must learn the model is gone).
        for route in old.values() {
            route.queue.wake_front();
        }
    }

    /// The current membership, for listings.
    pub fn snapshot(&self) -> Arc<HashMap<String, Arc<ModelRoute>>> {
        Arc::clone(&self.models.read())
    }

    /// The failover order for one request: routable backends starting at the model's
    /// round-robin cursor, at most `max` of them.
    pub fn candidates(
        &self,
        model: &str,
        max: usize,
    ) -> Result<Vec<Arc<BackendHandle>>, RouteError> {
        let route = self
            .models
            .read()
            .get(model)
            .cloned()
            .ok_or(RouteError::UnknownModel)?;
        let healthy: Vec<&Arc<BackendHandle>> =
            route.backends.iter().filter(|b| b.is_routable()).collect();
        if healthy.is_empty() {
            return Err(RouteError::NoHealthyBackend);
        }
        let start = route.cursor.fetch_add(1, Ordering::Relaxed) % healthy.len();
        Ok(healthy
            .iter()
            .cycle()
            .skip(start)
            .take(healthy.len().min(max))
            .map(|b| Arc::clone(b))
            .collect())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn backend(model: &str, url: &str) -> Arc<BackendHandle> {
        Arc::new(BackendHandle::new(Uuid::new_v4(), model.into(), url, None))
    }

    #[test]
    fn upstream_urls_follow_the_base_url_rule_and_are_parsed_once() {
        for url in ["http://h:9/", "http://h:9/v1", "http://h:9/v1/"] {
            let b = backend("m", url);
            assert_eq!(
                b.uri(Endpoint::Chat).unwrap().to_string(),
                "http://h:9/v1/chat/completions",
                "{url}"
            );
            assert_eq!(b.uri(Endpoint::Models).unwrap().path(), "/v1/models");
        }
        let b = backend("m", "http://lab.example:8000/api");
        assert_eq!(
            b.uri(Endpoint::Embeddings).unwrap().to_string(),
            "http://lab.example:8000/api/v1/embeddings"
        );
        let b = backend("m", "http://h:9/v1beta/openai");
        assert_eq!(
            b.uri(Endpoint::Chat).unwrap().to_string(),
            "http://h:9/v1beta/openai/chat/completions"
        );
        assert_eq!(&*b.id_text, b.id.to_string().as_str());
    }

    #[test]
    fn round_robin_rotates_and_orders_failover() {
        let table = RoutingTable::default();
        let (a, b, c) = (
            backend("m", "http://a"),
            backend("m", "http://b"),
            backend("m", "http://c"),
        );
        table.rebuild(vec![a.clone(), b.clone(), c.clone()]);
        let firsts: Vec<String> = (0..6)
            .map(|_| table.candidates("m", 3).unwrap()[0].base_url.clone())
            .collect();
        assert_eq!(
            firsts,
            ["http://a", "http://b", "http://c", "http://a", "http://b", "http://c"]
        );
        let order: Vec<String> = table
            .candidates("m", 3)
            .unwrap()
            .iter()
            .map(|b| b.base_url.clone())
            .collect();
        assert_eq!(order, ["http://a", "http://b", "http://c"]);
    }

    #[test]
    fn unhealthy_backends_leave_the_rotation() {
        let table = RoutingTable::default();
        let (a, b) = (backend("m", "http://a"), backend("m", "http://b"));
        table.rebuild(vec![a.clone(), b.clone()]);
        a.report_failure("boom".into());
        for _ in 0..4 {
            let c = table.candidates("m", 3).unwrap();
            assert_eq!(c.len(), 1);
            assert_eq!(c[0].base_url, "http://b");
        }
        b.publish(true, false);
        assert_eq!(
            table.candidates("m", 3).err(),
            Some(RouteError::NoHealthyBackend)
        );
        assert_eq!(
            table.candidates("x", 3).err(),
            Some(RouteError::UnknownModel)
        );
    }

    #[test]
    fn candidates_are_capped_and_v1_suffix_is_folded() {
        let table = RoutingTable::default();
        table.rebuild(
            (0..5)
                .map(|i| backend("m", &format!("http://h{i}/v1/")))
                .collect(),
        );
        let c = table.candidates("m", 3).unwrap();
        assert_eq!(c.len(), 3);
        assert_eq!(c[0].base_url, "http://h0");
    }

    #[test]
    fn in_flight_guard_counts() {
        let a = backend("m", "http://a");
        {
            let _g = a.start_request();
            assert_eq!(a.counters(), (1, 1));
        }
        assert_eq!(a.counters(), (1, 0));
    }
}
