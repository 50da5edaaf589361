//! Operations routes: `/health` (no auth; Railway's health check).

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;

use crate::credentials;
use crate::errors::ApiError;
use crate::state::AppState;

/// Routes for operators and platforms.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/health", crate::http::get_or_head().to(health))
        .route("/metrics", web::get().to(metrics))
        .route("/debug/memory", web::get().to(memory))
        .route(
            "/api/limitations",
            crate::http::get_or_head().to(limitations),
        );
}

/// Prometheus text; admin key required (it names backends and models).
async fn metrics(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    credentials::require_admin(req.headers(), &state.admin_key)?;
    let mut text = crate::metrics::render(
        &state.metrics,
        &state.sessions,
        &state.table,
        state.started.elapsed().as_secs(),
    );
    if let Some(push) = &state.push {
        crate::metrics::render_push(&mut text, &push.stats());
    }
    crate::process::ProcessStats::read().render(&mut text);
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(text))
}

/// Resident memory in MiB (one decimal), for spotting leaks from outside.
fn rss_mb() -> Option<f64> {
    let bytes = crate::process::ProcessStats::read().resident_bytes?;
    Some((bytes as f64 / (1024.0 * 1024.0) * 10.0).round() / 10.0)
}

async fn memory(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    credentials::require_admin(req.headers(), &state.admin_key)?;
    let in_flight: u64 = state
        .table
        .snapshot()
        .values()
        .flat_map(|r| r.backends.iter().map(|b| b.counters().1))
        .sum();
    Ok(HttpResponse::Ok().json(json!({
        "rss_mb": rss_mb(),
        "session_count": state.sessions.count(),
        "connections": state.sessions.open_connections(),
        "streams_in_flight": in_flight,
        "memory_releases": switchboard_actors::memory_release::MEMORY_RELEASE.releases(),
    })))
}

/// What this deployment cannot do, and what to do about it (SPEC §8).
async fn limitations(state: web::Data<AppState>) -> HttpResponse {
    let items = json!([
        {"limitation": "Single node: sessions, their resume buffers and rate-limit buckets live in this process's memory.",
         "workaround": "Run one replica (Railway's default). Sessions are stored in sled at each turn start and end, so a restart keeps them: a resume gets a resync from the stored history (a turn cut by the restart shows `interrupted`); registrations persist in sled too."},
        {"limitation": "Resume covers the last SWITCHBOARD_EVENT_BUFFER events (and at most 1 MiB) of a session.",
         "workaround": "An older position gets a `resync` snapshot of the current turn instead of a replay; raise the buffer for very long turns.",
         "docs": "/docs/protocol.md#ids-resume-and-resync"},
        {"limitation": "History per model keeps the last 10 turns and about 8K tokens (estimated at 4 characters a token).",
         "workaround": "Use `clear` to start over; send long documents through /v1 directly."},
        {"limitation": "Streams that outlive their connections are cancelled after SWITCHBOARD_DISCONNECT_GRACE_S.",
         "workaround": "Reconnect within the grace (the compare page does, with backoff); raise the grace for flaky networks.",
         "docs": "/docs/protocol.md#ids-resume-and-resync"},
        {"limitation": "Usage is estimated (4 characters a token) when a backend reports none.",
         "workaround": "Events mark it with `estimated: true`; prefer backends that honour stream_options.include_usage."},
        {"limitation": "One turn at a time per session; at most 8 models per turn.",
         "workaround": "Open another session for parallel conversations.",
         "docs": "/docs/protocol.md#limits"},
        {"limitation": "The broker relays tool calls but never runs tools.",
         "workaround": "Run tools in your client and send the results in the next turn."},
        {"limitation": "Rate limits and connection limits are per client IP; behind a proxy every client shares the proxy's IP unless SWITCHBOARD_TRUST_PROXY is set.",
         "workaround": "Set SWITCHBOARD_TRUST_PROXY=1 on Railway (its proxy sets X-Forwarded-For)."}
    ]);
    HttpResponse::Ok().json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "max_sessions": state.max_sessions,
        "limitations": items,
        // Every session limit with its close code or error, in one place.
        "protocol": "/docs/protocol.md",
    }))
}

/// Liveness plus a glance at the fleet; answered from the routing snapshot, never an actor,
/// so it stays fast while the broker is busy.
async fn health(state: web::Data<AppState>) -> HttpResponse {
    let snapshot = state.table.snapshot();
    let (mut total, mut healthy) = (0usize, 0usize);
    for route in snapshot.values() {
        total += route.backends.len();
        healthy += route.backends.iter().filter(|b| b.is_routable()).count();
    }
    HttpResponse::Ok().json(json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_s": state.started.elapsed().as_secs(),
        "backends": {"total": total, "healthy": healthy},
        "sessions": state.sessions.count(),
    }))
}
