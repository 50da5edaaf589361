//! Gateway metrics and the Prometheus text of `/metrics`. Session and backend numbers are read
//! from the engine (its counters and the routing snapshot) when rendering; only the proxy's
//! own counters live here.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use switchboard_actors::endpoint::Endpoint;
use switchboard_actors::metrics::{label, Histogram, LATENCY_BUCKETS_US};
use switchboard_actors::routing::RoutingTable;
use switchboard_actors::sessions::Sessions;

use crate::credentials::{Reason, Surface};

/// The `model` label of requests naming no registered model.
pub const UNKNOWN_MODEL: &str = "unknown";

/// Routes whose latency is tracked separately (others are "other").
const ROUTES: &[&str] = &[
    Endpoint::Chat.path(),
    Endpoint::Completions.path(),
    Endpoint::Embeddings.path(),
];

/// `switchboard_requests_total` by `(route, status)`, then model, then backend. Nested so the
/// hot path looks up borrowed `&str`s and allocates only the first time a label set is seen.
type RequestCounts = HashMap<(&'static str, u16), HashMap<String, HashMap<String, u64>>>;

/// The proxy's counters.
pub struct GatewayMetrics {
    /// Request counts by labels. A short lock per finished request.
    requests: Mutex<RequestCounts>,
    /// Time until response headers, per route of [`ROUTES`].
    latency: Vec<Histogram>,
    /// Time until the first upstream body byte (the commit point).
    ttfb: Histogram,
    /// Proxied responses whose client went away before the end (upstream closed with them).
    client_disconnects: AtomicU64,
    /// Refused credentials, Origins and Hosts, and 429s (SPEC §8 "Refusals are visible").
    pub refusals: Refusals,
}

/// `switchboard_auth_failures_total{surface,reason}` and
/// `switchboard_rate_limited_total{surface}`: fixed label sets, so a counter per cell.
pub struct Refusals {
    auth: [[AtomicU64; Reason::ALL.len()]; Surface::ALL.len()],
    rate: [AtomicU64; Surface::ALL.len()],
}

impl Default for Refusals {
    fn default() -> Self {
        Self {
            auth: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            rate: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl Refusals {
    fn index<T: PartialEq>(all: &[T], x: &T) -> usize {
        all.iter().position(|y| y == x).unwrap_or(0)
    }

    /// One refused credential (or Origin / Host) on `surface`.
    pub fn auth_failure(&self, surface: Surface, reason: Reason) {
        self.auth[Self::index(&Surface::ALL, &surface)][Self::index(&Reason::ALL, &reason)]
            .fetch_add(1, Ordering::Relaxed);
    }

    /// One 429 on `surface` (request rate, connection cap or the guessing throttle).
    pub fn rate_limited(&self, surface: Surface) {
        self.rate[Self::index(&Surface::ALL, &surface)].fetch_add(1, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP switchboard_auth_failures_total Refused credentials, Origins and Hosts by surface and reason.\n\
             # TYPE switchboard_auth_failures_total counter"
        );
        for (s, surface) in Surface::ALL.iter().enumerate() {
            for (r, reason) in Reason::ALL.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "switchboard_auth_failures_total{{surface=\"{}\",reason=\"{}\"}} {}",
                    surface.as_str(),
                    reason.as_str(),
                    self.auth[s][r].load(Ordering::Relaxed)
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP switchboard_rate_limited_total Requests answered 429 by surface.\n\
             # TYPE switchboard_rate_limited_total counter"
        );
        for (s, surface) in Surface::ALL.iter().enumerate() {
            let _ = writeln!(
                out,
                "switchboard_rate_limited_total{{surface=\"{}\"}} {}",
                surface.as_str(),
                self.rate[s].load(Ordering::Relaxed)
            );
        }
    }
}

impl Default for GatewayMetrics {
    fn default() -> Self {
        Self {
            requests: Mutex::new(HashMap::new()),
            latency: ROUTES
                .iter()
                .map(|_| Histogram::new(LATENCY_BUCKETS_US))
                .collect(),
            ttfb: Histogram::new(LATENCY_BUCKETS_US),
            client_disconnects: AtomicU64::new(0),
            refusals: Refusals::default(),
        }
    }
}

impl GatewayMetrics {
    /// Counts one finished request (committed or refused). `model` must be a registered
    /// model name or [`UNKNOWN_MODEL`]: labels never carry client text (SPEC §8).
    pub fn record(
        &self,
        route: &'static str,
        model: &str,
        backend: &str,
        status: u16,
        latency_us: u64,
    ) {
        let mut requests = self.requests.lock();
        let by_model = requests.entry((route, status)).or_default();
        let by_backend = match by_model.get_mut(model) {
            Some(m) => m,
            None => by_model.entry(model.to_string()).or_default(),
        };
        match by_backend.get_mut(backend) {
            Some(n) => *n += 1,
            None => {
                by_backend.insert(backend.to_string(), 1);
            }
        }
        if let Some(i) = ROUTES.iter().position(|r| *r == route) {
            self.latency[i].observe_us(latency_us);
        }
    }

    /// Time to the first upstream byte of a committed response.
    pub fn observe_ttfb(&self, us: u64) {
        self.ttfb.observe_us(us);
    }

    /// A client left before its proxied response ended.
    pub fn client_disconnected(&self) {
        self.client_disconnects.fetch_add(1, Ordering::Relaxed);
    }
}

/// Everything `/metrics` shows.
pub fn render(
    gw: &GatewayMetrics,
    sessions: &Sessions,
    table: &RoutingTable,
    uptime_s: u64,
) -> String {
    let mut out = String::with_capacity(8 * 1024);
    let head = |out: &mut String, name: &str, kind: &str, help: &str| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    };

    head(
        &mut out,
        "switchboard_requests_total",
        "counter",
        "Proxied /v1 requests by route, model, backend and status.",
    );
    // (route, model, backend, status, count), sorted for a stable output.
    let mut rows = Vec::new();
    for ((route, status), models) in gw.requests.lock().iter() {
        for (model, backends) in models {
            for (backend, n) in backends {
                rows.push((*route, model.clone(), backend.clone(), *status, *n));
            }
        }
    }
    rows.sort();
    for (route, model, backend, status, n) in rows {
        let _ = writeln!(
            out,
            "switchboard_requests_total{{route=\"{route}\",model=\"{}\",backend=\"{}\",status=\"{status}\"}} {n}",
            label(&model),
            label(&backend)
        );
    }
    head(
        &mut out,
        "switchboard_request_duration_seconds",
        "histogram",
        "Time until response headers of proxied requests.",
    );
    for (route, h) in ROUTES.iter().zip(&gw.latency) {
        h.render(
            &mut out,
            "switchboard_request_duration_seconds",
            &format!("route=\"{route}\""),
        );
    }
    head(
        &mut out,
        "switchboard_upstream_ttfb_seconds",
        "histogram",
        "Time until the first upstream body byte (gateway commit point).",
    );
    gw.ttfb
        .render(&mut out, "switchboard_upstream_ttfb_seconds", "");
    head(
        &mut out,
        "switchboard_ttft_seconds",
        "histogram",
        "Time to first token of session model streams.",
    );
    sessions
        .counters
        .ttft
        .render(&mut out, "switchboard_ttft_seconds", "");

    let snapshot = table.snapshot();
    let mut in_flight = 0;
    let mut backends = Vec::new();
    for (model, route) in snapshot.iter() {
        for b in &route.backends {
            let (routed, flying) = b.counters();
            in_flight += flying;
            backends.push(BackendRow {
                model: model.clone(),
                id: b.id_text.clone(),
                up: b.is_routable(),
                active: b.is_active(),
                routed,
                tokens: b.tokens.rows(),
            });
        }
    }
    backends.sort();
    let c = &sessions.counters;
    let gauges: [(&str, &str, &str, u64); 10] = [
        (
            "switchboard_streams_in_flight",
            "gauge",
            "Upstream requests in flight (gateway and sessions).",
            in_flight,
        ),
        (
            "switchboard_sessions",
            "gauge",
            "Live thread sessions.",
            sessions.count() as u64,
        ),
        (
            "switchboard_connections",
            "gauge",
            "Open session connections (WebSocket and SSE).",
            sessions.open_connections(),
        ),
        (
            "switchboard_session_turns_total",
            "counter",
            "Session turns started.",
            c.turns.load(Ordering::Relaxed),
        ),
        (
            "switchboard_cancellations_total",
            "counter",
            "Session model streams cancelled.",
            c.cancellations.load(Ordering::Relaxed),
        ),
        (
            "switchboard_client_disconnects_total",
            "counter",
            "Proxied responses whose client left before the end.",
            gw.client_disconnects.load(Ordering::Relaxed),
        ),
        (
            "switchboard_resumes_total",
            "counter",
            "Session attaches that replayed from a position.",
            c.resumes.load(Ordering::Relaxed),
        ),
        (
            "switchboard_replayed_events_total",
            "counter",
            "Events replayed to resuming clients.",
            c.replayed_events.load(Ordering::Relaxed),
        ),
        (
            "switchboard_backends",
            "gauge",
            "Registered backends (including demo).",
            backends.len() as u64,
        ),
        (
            "switchboard_uptime_seconds",
            "gauge",
            "Seconds since start.",
            uptime_s,
        ),
    ];
    for (name, kind, help, value) in gauges {
        head(&mut out, name, kind, help);
        let _ = writeln!(out, "{name} {value}");
    }
    // Per-backend series: (name, kind, help, the value of one backend).
    let per_backend: [BackendSeries; 3] = [
        (
            "switchboard_backend_up",
            "gauge",
            "1 when the backend is healthy and active (in the rotation).",
            |b| u64::from(b.up),
        ),
        (
            "switchboard_backend_active",
            "gauge",
            "0 when the backend was deactivated after repeated failures.",
            |b| u64::from(b.active),
        ),
        (
            "switchboard_backend_requests_total",
            "counter",
            "Requests routed to each backend.",
            |b| b.routed,
        ),
    ];
    for (name, kind, help, value) in per_backend {
        head(&mut out, name, kind, help);
        for b in &backends {
            let (model, id) = (label(&b.model), &b.id);
            let _ = writeln!(
                out,
                "{name}{{backend=\"{id}\",model=\"{model}\"}} {}",
                value(b)
            );
        }
    }
    head(
        &mut out,
        "switchboard_tokens_total",
        "counter",
        "Tokens served per model and backend, as the backend reported them or as the broker estimated them.",
    );
    for b in &backends {
        let (model, id) = (label(&b.model), &b.id);
        for (kind, estimated, n) in b.tokens {
            let _ = writeln!(
                out,
                "switchboard_tokens_total{{model=\"{model}\",backend=\"{id}\",kind=\"{kind}\",estimated=\"{estimated}\"}} {n}"
            );
        }
    }
    // Routing decisions, queues and prefix matches (SPEC §2.1).
    table.render_metrics(&mut out);
    gw.refusals.render(&mut out);
    out
}

/// The push gateway's counters (only when it is enabled).
pub fn render_push(out: &mut String, p: &switchboard_actors::push::PushStats) {
    let rows: [(&str, &str, &str, u64); 8] = [
        (
            "switchboard_push_connections_open",
            "gauge",
            "Open push gateway connections.",
            p.connections_open,
        ),
        (
            "switchboard_push_connections_total",
            "counter",
            "Push connections accepted.",
            p.connections_total,
        ),
        (
            "switchboard_push_connects_rejected_total",
            "counter",
            "Push connects the application rejected.",
            p.connects_rejected,
        ),
        (
            "switchboard_push_connect_errors_total",
            "counter",
            "Push connects whose callback failed or timed out.",
            p.connect_errors,
        ),
        (
            "switchboard_push_callbacks_ok_total",
            "counter",
            "Callbacks the application answered.",
            p.callbacks_ok,
        ),
        (
            "switchboard_push_callbacks_failed_total",
            "counter",
            "Callbacks that failed after retries.",
            p.callbacks_failed,
        ),
        (
            "switchboard_push_sends_total",
            "counter",
            "/internal/send calls delivered.",
            p.sends_ok,
        ),
        (
            "switchboard_push_sends_not_found_total",
            "counter",
            "/internal/send calls for unknown tokens.",
            p.sends_not_found,
        ),
    ];
    for (name, kind, help, value) in rows {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    }
    let d = &p.disconnects;
    let _ = writeln!(out, "# HELP switchboard_push_disconnects_total Push disconnects by reason.\n# TYPE switchboard_push_disconnects_total counter");
    for (reason, n) in [
        ("client_closed", d.client_closed),
        ("server_closed", d.server_closed),
        ("error", d.error),
        ("shutdown", d.shutdown),
    ] {
        let _ = writeln!(
            out,
            "switchboard_push_disconnects_total{{reason=\"{reason}\"}} {n}"
        );
    }
}

/// One backend's line in the per-backend series (sorted by model, then id).
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct BackendRow {
    model: String,
    id: std::sync::Arc<str>,
    up: bool,
    active: bool,
    routed: u64,
    /// `(kind, estimated, tokens)`, see [`switchboard_actors::usage::TokenCounts::rows`].
    tokens: [(&'static str, bool, u64); 4],
}

/// A per-backend series: name, kind, help and how to read its value from a backend.
type BackendSeries = (
    &'static str,
    &'static str,
    &'static str,
    fn(&BackendRow) -> u64,
);
