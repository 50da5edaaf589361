//! Phase 3: `cancel` → `cancelled` event, and → the mock seeing its upstream close.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mockllm::{MockHandle, Stats};
use serde_json::json;

use crate::targets::Switchboard;
use crate::ws::WsConn;

use super::{micros, next_text, note, open_session, parse_ev, send_msg};

#[derive(Debug, Default)]
pub(super) struct CancelOutcome {
    /// `cancel` sent → `cancelled` event received, µs.
    pub(super) to_event_us: Vec<u64>,
    /// `cancel` sent → the mock recorded the abort, µs (polled every 50 µs).
    pub(super) to_upstream_us: Vec<u64>,
    /// No abort seen at the mock within 3 s.
    pub(super) upstream_missed: u32,
    /// Tries that failed (no 3rd token, no `cancelled`, socket error...).
    pub(super) failures: u32,
    /// Tokens of the cancelled model received after its `cancelled` event.
    pub(super) tokens_after_cancelled: u64,
    pub(super) problems: Vec<String>,
}

fn abort_count(stats: &Stats, model: &str) -> usize {
    stats
        .snapshot()
        .aborts
        .iter()
        .filter(|a| a.model == model)
        .count()
}

/// Polls the mock's abort log every 50 µs on its own thread until `model`
/// has more than `before` aborts (or `wait` passes); returns when it saw it.
fn spawn_abort_watch(
    stats: Arc<Stats>,
    model: String,
    before: usize,
    wait: Duration,
) -> std::thread::JoinHandle<Option<Instant>> {
    std::thread::spawn(move || {
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline {
            if abort_count(&stats, &model) > before {
                return Some(Instant::now());
            }
            std::thread::sleep(Duration::from_micros(50));
        }
        None
    })
}

async fn cancel_try(
    ws: &mut WsConn,
    i: u32,
    model: &str,
    stats: &Arc<Stats>,
    out: &mut CancelOutcome,
) -> Result<(), String> {
    let request_id = format!("cancel-{i}");
    let models = vec![model.to_string()];
    ws.send_text(&send_msg(&request_id, &models))
        .await
        .map_err(|e| format!("send: {e}"))?;
    let mut tokens = 0;
    while tokens < 3 {
        let (data, _) = next_text(ws, Duration::from_secs(10)).await?;
        let ev = parse_ev(&data)?;
        if ev.request_id.as_deref() != Some(request_id.as_str()) {
            continue;
        }
        match ev.kind.as_ref() {
            "token" => tokens += 1,
            "error" | "complete" | "done" | "cancelled" => {
                return Err(format!("`{}` before the 3rd token", ev.kind))
            }
            _ => {}
        }
    }
    let before = abort_count(stats, model);
    let watch = spawn_abort_watch(
        Arc::clone(stats),
        model.to_string(),
        before,
        Duration::from_secs(3),
    );
    let cancel = json!({"type": "cancel", "request_id": request_id}).to_string();
    let t0 = Instant::now();
    ws.send_text(&cancel)
        .await
        .map_err(|e| format!("cancel: {e}"))?;
    let mut cancelled_at = None;
    let mut result = Ok(());
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        if Instant::now() >= deadline {
            result = Err("no `complete` within 3 s of the cancel".into());
            break;
        }
        let (data, _) = match next_text(ws, Duration::from_secs(3)).await {
            Ok(x) => x,
            Err(e) => {
                result = Err(e);
                break;
            }
        };
        let now = Instant::now();
        let ev = parse_ev(&data)?;
        if ev.request_id.as_deref() != Some(request_id.as_str()) {
            continue;
        }
        match ev.kind.as_ref() {
            "cancelled" if cancelled_at.is_none() => {
                cancelled_at = Some(now);
                out.to_event_us.push(micros(now - t0));
            }
            "token" if cancelled_at.is_some() => out.tokens_after_cancelled += 1,
            "error" => {
                note(
                    &mut out.problems,
                    format!(
                        "error event after cancel: {}",
                        ev.message.as_deref().unwrap_or("")
                    ),
                );
            }
            "complete" => break,
            _ => {}
        }
    }
    if cancelled_at.is_none() && result.is_ok() {
        result = Err("`complete` without `cancelled`".into());
    }
    // The watcher gives up after 3 s by itself.
    let seen = tokio::task::spawn_blocking(move || watch.join().ok().flatten())
        .await
        .ok()
        .flatten();
    match seen {
        Some(at) => out
            .to_upstream_us
            .push(micros(at.saturating_duration_since(t0))),
        None => {
            out.upstream_missed += 1;
            note(
                &mut out.problems,
                "the mock saw no upstream close within 3 s of the cancel".into(),
            );
        }
    }
    result
}

pub(super) async fn phase_cancel(
    sb: &Switchboard,
    mock: &MockHandle,
    tries: u32,
    model: &str,
) -> CancelOutcome {
    let mut out = CancelOutcome::default();
    let stats = mock.shared_stats();
    let stop_at = Instant::now() + Duration::from_secs(180);
    let mut ws: Option<WsConn> = None;
    for i in 0..tries {
        if Instant::now() >= stop_at {
            note(&mut out.problems, format!("time limit after {i} tries"));
            break;
        }
        if out.failures >= 10 && out.to_event_us.is_empty() {
            note(&mut out.problems, "stopped after 10 failed tries".into());
            break;
        }
        if ws.is_none() {
            match open_session(sb.addr, r#"{"type":"hello"}"#).await {
                Ok((w, _)) => ws = Some(w),
                Err(e) => {
                    out.failures += 1;
                    note(&mut out.problems, format!("open: {e}"));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            }
        }
        let Some(w) = ws.as_mut() else { continue };
        if let Err(e) = cancel_try(w, i, model, &stats, &mut out).await {
            out.failures += 1;
            note(&mut out.problems, e);
            // Start over on a fresh session: this one may still be busy.
            ws = None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if let Some(mut w) = ws {
        let _ = w.send_close(1000).await;
    }
    out.to_event_us.sort_unstable();
    out.to_upstream_us.sort_unstable();
    out
}
