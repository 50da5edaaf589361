//! Phase 1: idle WebSocket connections, broker RSS per connection, reconnect rounds.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::time::timeout;

use crate::targets::{vm_rss_kb, Switchboard};
use crate::ws::Msg;

use super::{cpu_snapshot, get_json, note, open_session, parse_ev, CLK_TCK};

#[derive(Debug, Default)]
pub(super) struct IdleOutcome {
    pub(super) wanted: usize,
    pub(super) established: usize,
    pub(super) failed: usize,
    pub(super) connect_s: f64,
    pub(super) rss_before_kb: Option<u64>,
    pub(super) rss_idle_kb: Option<u64>,
    pub(super) rss_closed_kb: Option<u64>,
    /// After holding the connections `hold_s` seconds (heartbeats, pings).
    pub(super) rss_held_kb: Option<u64>,
    pub(super) hold_s: u64,
    /// Broker CPU (ms) while the connections were held idle.
    pub(super) hold_cpu_ms: Option<f64>,
    /// Second round: every session resumed on a new connection (no new sessions).
    pub(super) reconnected: Vec<usize>,
    pub(super) reconnect_failed: usize,
    /// RSS with each reconnect round's connections open.
    pub(super) rss_reconnected_kb: Vec<Option<u64>>,
    pub(super) rss_closed_again_kb: Option<u64>,
    /// The session TTL of the expiry check, when it ran.
    pub(super) expire_ttl_s: Option<u64>,
    /// RSS once every session has expired (memory comes back?).
    pub(super) rss_expired_kb: Option<u64>,
    /// Seconds from the last close until `/debug/memory` showed no session.
    pub(super) expired_after_s: Option<f64>,
    pub(super) memory_expired: Option<Value>,
    pub(super) memory_idle: Option<Value>,
    pub(super) memory_closed: Option<Value>,
    /// Connections the server ended while they were idle (code/reason → count).
    pub(super) server_closes: BTreeMap<String, u64>,
    pub(super) heartbeats: u64,
    pub(super) other_events: u64,
    pub(super) problems: Vec<String>,
}

#[derive(Debug, Default)]
pub(super) struct IdleEnd {
    pub(super) session_id: Option<String>,
    pub(super) heartbeats: u64,
    pub(super) other_events: u64,
    pub(super) closed_by_server: Option<String>,
}

async fn idle_connection(
    addr: SocketAddr,
    hello: String,
    sem: Arc<Semaphore>,
    ready: mpsc::UnboundedSender<Result<(), String>>,
    mut stop: watch::Receiver<bool>,
) -> IdleEnd {
    let mut end = IdleEnd::default();
    let opened = {
        let _permit = sem.acquire_owned().await;
        timeout(Duration::from_secs(20), open_session(addr, &hello)).await
    };
    let mut ws = match opened {
        Ok(Ok((ws, info))) => {
            end.session_id = Some(info.session_id);
            let _ = ready.send(Ok(()));
            ws
        }
        Ok(Err(e)) => {
            let _ = ready.send(Err(e));
            return end;
        }
        Err(_) => {
            let _ = ready.send(Err("no `session` within 20 s".into()));
            return end;
        }
    };
    drop(ready);
    loop {
        tokio::select! {
            _ = stop.changed() => {
                let _ = ws.send_close(1000).await;
                break;
            }
            msg = ws.next() => match msg {
                Ok(Msg::Text(data, _)) => {
                    if parse_ev(&data).is_ok_and(|e| e.kind == "heartbeat") {
                        end.heartbeats += 1;
                    } else {
                        end.other_events += 1;
                    }
                }
                Ok(Msg::Close(code, reason)) => {
                    end.closed_by_server = Some(format!("{} {reason}", code.map_or("-".into(), |c| c.to_string())));
                    break;
                }
                Err(e) => {
                    end.closed_by_server = Some(e.to_string());
                    break;
                }
            },
        }
    }
    end
}

/// Connections of one idle round, open until [`IdleRound::close`].
struct IdleRound {
    stop: watch::Sender<bool>,
    handles: Vec<tokio::task::JoinHandle<IdleEnd>>,
    established: usize,
    failed: usize,
    open_s: f64,
}

impl IdleRound {
    /// Opens one connection per hello (`concurrency` at a time) and waits until
    /// every one has its `session` or failed (240 s at most).
    async fn open(
        addr: SocketAddr,
        hellos: Vec<String>,
        concurrency: usize,
        label: &str,
        problems: &mut Vec<String>,
    ) -> IdleRound {
        let n = hellos.len();
        let sem = Arc::new(Semaphore::new(concurrency.max(1)));
        let (ready_tx, mut ready_rx) = mpsc::unbounded_channel();
        let (stop, stop_rx) = watch::channel(false);
        let started = Instant::now();
        let handles = hellos
            .into_iter()
            .map(|hello| {
                tokio::spawn(idle_connection(
                    addr,
                    hello,
                    Arc::clone(&sem),
                    ready_tx.clone(),
                    stop_rx.clone(),
                ))
            })
            .collect();
        drop(ready_tx);
        let mut round = IdleRound {
            stop,
            handles,
            established: 0,
            failed: 0,
            open_s: 0.0,
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(240);
        let mut next_report = 2000;
        while round.established + round.failed < n {
            match tokio::time::timeout_at(deadline, ready_rx.recv()).await {
                Ok(Some(Ok(()))) => round.established += 1,
                Ok(Some(Err(e))) => {
                    round.failed += 1;
                    note(problems, format!("{label}: {e}"));
                }
                Ok(None) => break,
                Err(_) => {
                    note(
                        problems,
                        format!("{label}: time limit (240 s) while opening"),
                    );
                    break;
                }
            }
            if round.established + round.failed >= next_report {
                eprintln!(
                    "  [{label}] {} open, {} failed after {:.1} s",
                    round.established,
                    round.failed,
                    started.elapsed().as_secs_f64()
                );
                next_report += 2000;
            }
        }
        round.open_s = started.elapsed().as_secs_f64();
        round
    }

    /// Closes every connection (client close frame) and collects what they saw.
    async fn close(self, out: &mut IdleOutcome) -> Vec<String> {
        let _ = self.stop.send(true);
        let mut sessions = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        for h in self.handles {
            match tokio::time::timeout_at(deadline, h).await {
                Ok(Ok(end)) => {
                    out.heartbeats += end.heartbeats;
                    out.other_events += end.other_events;
                    if let Some(c) = end.closed_by_server {
                        *out.server_closes.entry(c).or_default() += 1;
                    }
                    sessions.extend(end.session_id);
                }
                Ok(Err(e)) => note(&mut out.problems, format!("connection task failed: {e}")),
                Err(_) => {
                    note(
                        &mut out.problems,
                        "connections did not finish closing within 60 s".into(),
                    );
                    break;
                }
            }
        }
        sessions
    }
}

pub(super) async fn phase_idle(
    sb: &Switchboard,
    n: usize,
    concurrency: usize,
    hold_s: u64,
    rounds: u32,
    expire_ttl_s: Option<u64>,
) -> IdleOutcome {
    let mut out = IdleOutcome {
        wanted: n,
        hold_s,
        expire_ttl_s,
        ..IdleOutcome::default()
    };
    let pid = sb.pid();
    let settle = || tokio::time::sleep(Duration::from_secs(2));
    tokio::time::sleep(Duration::from_millis(500)).await;
    out.rss_before_kb = vm_rss_kb(pid);
    let hellos = vec![r#"{"type":"hello"}"#.to_string(); n];
    let round = IdleRound::open(sb.addr, hellos, concurrency, "idle", &mut out.problems).await;
    (out.established, out.failed, out.connect_s) = (round.established, round.failed, round.open_s);
    eprintln!(
        "  [idle] {} established, {} failed in {:.1} s",
        out.established, out.failed, out.connect_s
    );
    // Let the broker settle (allocator, deferred work), then measure.
    settle().await;
    out.rss_idle_kb = vm_rss_kb(pid);
    out.memory_idle = get_json(sb, "/debug/memory").await;
    if hold_s > 0 {
        eprintln!(
            "  [idle] holding {} connections for {hold_s} s",
            out.established
        );
        let before = cpu_snapshot(Some(pid))[0];
        tokio::time::sleep(Duration::from_secs(hold_s)).await;
        out.rss_held_kb = vm_rss_kb(pid);
        out.hold_cpu_ms = match (before, cpu_snapshot(Some(pid))[0]) {
            (Some(b), Some(a)) => Some(a.saturating_sub(b) as f64 * 1000.0 / CLK_TCK),
            _ => None,
        };
    }
    let sessions = round.close(&mut out).await;
    settle().await;
    out.rss_closed_kb = vm_rss_kb(pid);
    out.memory_closed = get_json(sb, "/debug/memory").await;

    // Leak check: the same sessions again, each resumed on a new connection,
    // `rounds` times. No session is created, so RSS should level off.
    let hellos: Vec<String> = sessions
        .iter()
        .map(|id| json!({"type": "hello", "session_id": id, "last_event_id": 0}).to_string())
        .collect();
    for r in 0..rounds {
        let label = format!("reconnect {}", r + 1);
        let round = IdleRound::open(
            sb.addr,
            hellos.clone(),
            concurrency,
            &label,
            &mut out.problems,
        )
        .await;
        out.reconnected.push(round.established);
        out.reconnect_failed += round.failed;
        eprintln!(
            "  [{label}] {} sessions resumed, {} failed in {:.1} s",
            round.established, round.failed, round.open_s
        );
        settle().await;
        out.rss_reconnected_kb.push(vm_rss_kb(pid));
        round.close(&mut out).await;
        settle().await;
    }
    out.rss_closed_again_kb = vm_rss_kb(pid);
    if let Some(ttl) = expire_ttl_s {
        wait_for_expiry(sb, ttl, &mut out).await;
    }
    out
}

/// Waits until the broker holds no session (each expires `ttl` seconds after its last
/// connection closed), lets it settle, and reads RSS.
async fn wait_for_expiry(sb: &Switchboard, ttl: u64, out: &mut IdleOutcome) {
    eprintln!("  [expire] waiting for every session to expire (TTL {ttl} s)");
    let started = Instant::now();
    let deadline = started + Duration::from_secs(ttl * 2 + 60);
    loop {
        let memory = get_json(sb, "/debug/memory").await;
        let left = memory
            .as_ref()
            .and_then(|m| m.get("session_count"))
            .and_then(Value::as_u64);
        if left == Some(0) {
            out.expired_after_s = Some(started.elapsed().as_secs_f64());
            break;
        }
        if Instant::now() >= deadline {
            note(
                &mut out.problems,
                format!("sessions left after {} s: {left:?}", ttl * 2 + 60),
            );
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    out.rss_expired_kb = vm_rss_kb(sb.pid());
    out.memory_expired = get_json(sb, "/debug/memory").await;
}
