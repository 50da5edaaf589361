//! Shared application state handed to every handler.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::Addr;
use switchboard_actors::routing::RoutingTable;
use switchboard_actors::sessions::Sessions;
use switchboard_actors::supervisor::HealthSupervisor;

use crate::credentials::UiCredentials;

/// Process-wide state (`Send + Sync`), one `Arc` shared by all workers.
pub struct AppState {
    /// The routing snapshot the hot path reads without messaging any actor.
    pub table: Arc<RoutingTable>,
    /// Owner of the backend actors; admin mutations go through it.
    pub supervisor: Addr<HealthSupervisor>,
    /// Live thread sessions (shared by both session transports).
    pub sessions: Arc<Sessions>,
    /// The push gateway (SPEC §6); `None` when `SWITCHBOARD_PUSH_CALLBACK_URL` is unset.
    pub push: Option<Arc<switchboard_actors::push::PushHub>>,
    pub admin_key: String,
    pub ui_credentials: UiCredentials,
    /// Per-connection outbound queue bound (slow consumers are closed with 4009 past it).
    pub outbound_limit: usize,
    /// The proxy's counters for `/metrics`.
    pub metrics: Arc<crate::metrics::GatewayMetrics>,
    /// Per-IP token buckets of the API routes (swept by a timer).
    pub rate_limiter: Arc<crate::rate_limit::RateLimiter>,
    /// Failed credential checks per IP: the guessing throttle (swept by a timer).
    pub failures: Arc<crate::rate_limit::FailureThrottle>,
    /// Host, Origin and CORS rules (`http::guard`).
    pub browser: crate::http::browser_policy::BrowserPolicy,
    pub rate_limit_per_min: u32,
    pub max_sessions: usize,
    /// Take client IPs from `X-Forwarded-For` (behind a trusted proxy).
    pub trust_proxy: bool,
    pub client_keys: Vec<String>,
    pub proxy: ProxySettings,
    /// Heartbeats and the silence limit of session connections.
    pub liveness: Liveness,
    /// Fired when the shutdown drain times out; committed gateway streams end with an error.
    pub drain: Arc<crate::http::relay::DrainSignal>,
    pub started: Instant,
}

/// How session connections are kept alive and when a silent one is given up (SPEC §4.2, §5).
#[derive(Debug, Clone, Copy)]
pub struct Liveness {
    /// WebSocket `heartbeat` event + ping interval.
    pub ws_heartbeat: std::time::Duration,
    /// A WebSocket client silent this long is dropped.
    pub ws_silence_timeout: std::time::Duration,
    /// SSE `event: heartbeat` interval.
    pub sse_heartbeat: std::time::Duration,
    /// `: heartbeat` comment interval on idle push streams (SPEC §6).
    pub push_heartbeat: std::time::Duration,
}

/// Proxy timing and limits, from configuration.
#[derive(Debug, Clone)]
pub struct ProxySettings {
    pub max_body_bytes: usize,
    pub max_retries: usize,
    pub commit_timeout: Duration,
    pub idle_timeout: Duration,
    pub total_timeout: Duration,
    pub keepalive: Duration,
}
