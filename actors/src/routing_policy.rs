//! What a routing decision is configured with and what it reports (SPEC §2.1): the policy
//! (`SWITCHBOARD_ROUTING`), the queue and affinity settings, the kinds of decision (the
//! `X-Switchboard-Route` header) and their counters. Shared by the routing table (which holds
//! them) and [`crate::router`] (which decides), so neither imports the other for them.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Buckets of the prefix-match length histogram, in bytes of prompt.
const PREFIX_BUCKETS: &[u64] = &[512, 2048, 8192, 32_768, 131_072];
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
    /// A decision preferred a backend for a prefix match of `bytes` of prompt.
    pub fn observe_prefix(&self, bytes: u32) {
        let b = u64::from(bytes);
        let i = PREFIX_BUCKETS
            .iter()
            .position(|x| b <= *x)
            .unwrap_or(PREFIX_BUCKETS.len());
        self.prefix_buckets[i].fetch_add(1, Ordering::Relaxed);
        self.prefix_sum.fetch_add(b, Ordering::Relaxed);
    }

    /// One decision of `kind` was made.
    pub fn count_decision(&self, kind: RouteKind) {
        self.decisions[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Decisions of `kind` so far.
    pub fn decisions(&self, kind: RouteKind) -> u64 {
        self.decisions[kind as usize].load(Ordering::Relaxed)
    }

    /// Appends the decision counters and the prefix-match histogram (Prometheus text).
    pub fn render(&self, out: &mut String) {
        let m = self;
        let _ = writeln!(out, "# HELP switchboard_route_decisions_total Routing decisions by kind (affinity, prefix, least-loaded, failover, round-robin).\n# TYPE switchboard_route_decisions_total counter");
        for kind in RouteKind::ALL {
            let n = m.decisions(kind);
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
    }
}
