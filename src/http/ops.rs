//! Operations routes: `/health` (no auth; Railway's health check).

use actix_web::{web, HttpResponse};
use serde_json::json;

use crate::state::AppState;

/// Routes for operators and platforms.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/health", web::get().to(health));
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
