//! Phase 4: resume a session whose event buffer is full, from its oldest event.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::time::timeout;

use crate::targets::Switchboard;
use crate::ws::WsConn;

use super::{get_json, micros, next_text, note, open_session, parse_ev, send_msg, EVENT_WAIT};

#[derive(Debug, Default)]
pub(super) struct ReplayOutcome {
    /// Turns run to fill the buffer, and the session's last id after them.
    pub(super) turns: u32,
    pub(super) last_id: u64,
    /// Events the session reported buffered.
    pub(super) buffered: u64,
    /// Events each resume replayed.
    pub(super) replayed: Vec<u64>,
    /// hello sent → last replayed event received, µs.
    pub(super) times_us: Vec<u64>,
    pub(super) bytes: Vec<u64>,
    pub(super) failures: u32,
    pub(super) problems: Vec<String>,
}

async fn run_turn(ws: &mut WsConn, request_id: &str, models: &[String]) -> Result<u64, String> {
    ws.send_text(&send_msg(request_id, models))
        .await
        .map_err(|e| format!("send: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let (data, _) = next_text(ws, EVENT_WAIT).await?;
        let ev = parse_ev(&data)?;
        match ev.kind.as_ref() {
            "complete" if ev.request_id.as_deref() == Some(request_id) => {
                return ev.id.ok_or_else(|| "`complete` without an id".to_string())
            }
            "error" => {
                return Err(format!(
                    "error event: {}",
                    ev.message.as_deref().unwrap_or("")
                ))
            }
            _ => {}
        }
    }
    Err("turn did not complete within 60 s".into())
}

async fn replay_once(
    addr: SocketAddr,
    session_id: &str,
    from: u64,
    last_id: u64,
) -> Result<(u64, u64, u64), String> {
    let mut ws = WsConn::connect(addr, "/ws")
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let hello =
        json!({"type": "hello", "session_id": session_id, "last_event_id": from}).to_string();
    let t0 = Instant::now();
    ws.send_text(&hello)
        .await
        .map_err(|e| format!("hello: {e}"))?;
    let mut count = 0;
    let mut bytes = 0;
    let mut expect = from + 1;
    let mut saw_session = false;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if Instant::now() >= deadline {
            return Err(format!("replay incomplete after 30 s ({count} events)"));
        }
        let (data, _) = next_text(&mut ws, Duration::from_secs(10)).await?;
        let at = Instant::now();
        bytes += data.len() as u64;
        let ev = parse_ev(&data)?;
        match (ev.kind.as_ref(), ev.id) {
            ("session", _) => {
                saw_session = true;
                if ev.resumed != Some(true) {
                    return Err("`session` with resumed=false".into());
                }
            }
            ("resync", _) => return Err(format!("got `resync` for last_event_id {from}")),
            (_, Some(id)) => {
                if !saw_session {
                    return Err("replayed event before `session`".into());
                }
                if id != expect {
                    return Err(format!("replay: id {id}, expected {expect}"));
                }
                expect += 1;
                count += 1;
                if id == last_id {
                    let _ = ws.send_close(1000).await;
                    return Ok((micros(at - t0), count, bytes));
                }
            }
            _ => {}
        }
    }
}

pub(super) async fn phase_replay(
    sb: &Switchboard,
    models: &[String],
    buffer: u64,
    repeats: u32,
) -> ReplayOutcome {
    let mut out = ReplayOutcome::default();
    let (mut ws, info) = match open_session(sb.addr, r#"{"type":"hello"}"#).await {
        Ok(x) => x,
        Err(e) => {
            out.failures += 1;
            note(&mut out.problems, format!("open: {e}"));
            return out;
        }
    };
    // Fill the buffer, and overflow it a little so the oldest events were evicted.
    while out.last_id < buffer + 100 && out.turns < 50 {
        match run_turn(&mut ws, &format!("fill-{}", out.turns), models).await {
            Ok(id) => out.last_id = id,
            Err(e) => {
                out.failures += 1;
                note(&mut out.problems, format!("fill turn: {e}"));
                return out;
            }
        }
        out.turns += 1;
    }
    let _ = ws.send_close(1000).await;
    drop(ws);
    let state = get_json(sb, &format!("/api/sessions/{}", info.session_id)).await;
    out.buffered = state
        .as_ref()
        .and_then(|s| s.get("buffered_events"))
        .and_then(Value::as_u64)
        .unwrap_or(buffer.min(out.last_id));
    if let Some(last) = state
        .as_ref()
        .and_then(|s| s.get("last_event_id"))
        .and_then(Value::as_u64)
    {
        if last != out.last_id {
            note(
                &mut out.problems,
                format!(
                    "state says last_event_id {last}, the last `complete` had {}",
                    out.last_id
                ),
            );
        }
    }
    // Resume from just before the oldest buffered event: the whole buffer is replayed.
    let from = out.last_id - out.buffered.min(out.last_id);
    for _ in 0..repeats {
        match timeout(
            Duration::from_secs(40),
            replay_once(sb.addr, &info.session_id, from, out.last_id),
        )
        .await
        {
            Ok(Ok((us, n, bytes))) => {
                out.times_us.push(us);
                out.replayed.push(n);
                out.bytes.push(bytes);
            }
            Ok(Err(e)) => {
                out.failures += 1;
                note(&mut out.problems, e);
            }
            Err(_) => {
                out.failures += 1;
                note(&mut out.problems, "replay timed out".into());
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    out
}
