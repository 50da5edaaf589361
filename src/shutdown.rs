//! Graceful shutdown on SIGTERM / Ctrl-C (SPEC §8): stop taking new work, tell session
//! clients `1001`, let in-flight streams finish up to the drain timeout, cancel what is left,
//! flush sled, exit 0. The listener keeps accepting until exit, so a probe or a client learns
//! at once: new requests get 503 (`/health` `{"status":"draining"}`, http/gate.rs), new
//! WebSockets close with 4503 (http/ws.rs).

use std::time::Duration;

use actix_web::dev::ServerHandle;
use switchboard_actors::model_stream::StopReason;

use crate::state::AppState;

/// How often the drain loop looks at the in-flight count.
const DRAIN_POLL: Duration = Duration::from_millis(50);
/// Time the HTTP workers get to finish after the drain (streams past it are dropped); the
/// gateway streams cancelled by the drain signal write their error event within it.
pub const WORKER_GRACE: Duration = Duration::from_secs(1);

/// Resolves on the first SIGTERM or SIGINT, naming it.
pub async fn signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            log::error!("cannot install signal handlers; Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
            return "SIGINT";
        };
        tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "SIGINT"
    }
}

/// Work in flight: upstream requests (gateway and session streams, from the routing snapshot)
/// plus session turns not yet complete.
fn in_flight(state: &AppState) -> u64 {
    let turns = state
        .sessions
        .counters
        .turns_in_flight
        .load(std::sync::atomic::Ordering::Relaxed);
    turns
        + state
            .table
            .snapshot()
            .values()
            .flat_map(|r| r.backends.iter().map(|b| b.counters().1))
            .sum::<u64>()
}

/// Runs the shutdown sequence; the caller flushes sled afterwards.
pub async fn drain(state: &AppState, server: &ServerHandle, drain_timeout: Duration) {
    state.sessions.start_draining();
    state
        .sessions
        .close_all_connections(switchboard_actors::session::CloseReason::ShuttingDown);
    if let Some(push) = &state.push {
        push.shutdown().await;
    }
    let started = tokio::time::Instant::now();
    let mut left = in_flight(state);
    log::info!(
        "shutdown: draining (new work gets 503); waiting up to {} s for {left} streams",
        drain_timeout.as_secs()
    );
    while left > 0 && started.elapsed() < drain_timeout {
        tokio::time::sleep(DRAIN_POLL).await;
        left = in_flight(state);
    }
    if left > 0 {
        log::warn!("shutdown: drain timeout; cancelling {left} streams");
        state.drain.fire();
    }
    state.sessions.end_all(StopReason::Shutdown);
    server.stop(true).await;
}
