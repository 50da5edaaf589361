//! `bench sessions`: the WebSocket thread sessions of switchboard (SPEC §4)
//! under load, on loopback; see README.md.
//!
//! Four phases against one release broker (started with unlimited per-IP
//! connections and 20 000 sessions) and the in-process mock:
//!
//! 1. idle: N connections each `hello` → `session`, broker RSS before/after;
//! 2. fan-out: S sessions × 4 `stamp` models at once; per-token latency
//!    mock write → client receive, compared with the same load sent to the
//!    mock directly (HTTP/SSE);
//! 3. cancel: `cancel` after the 3rd token → `cancelled` event, and → the
//!    mock seeing its upstream connection close;
//! 4. replay: resume a session whose buffer is full, from its oldest event.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mockllm::{MockHandle, Stats};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch, Barrier, Semaphore};
use tokio::time::timeout;

use crate::client::{build_request, Conn, Flow};
use crate::targets::{self, Switchboard, SwitchboardOpts};
use crate::ws::{unix_micros, Msg, WsConn};

/// Flags of `bench sessions`.
#[derive(Debug, Clone, clap::Args)]
pub struct SessionsArgs {
    /// Small counts for a smoke run (< 60 s).
    #[arg(long)]
    pub quick: bool,
    /// switchboard binary [default: <workspace>/target/release/switchboard, else next to this binary].
    #[arg(long)]
    pub switchboard: Option<PathBuf>,
    /// Phases to run, in this order.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "idle,fanout,paced,cancel,replay"
    )]
    pub phases: Vec<String>,
    /// Idle WebSocket connections [default: 10000, quick 500].
    #[arg(long)]
    pub idle: Option<usize>,
    /// Connections being opened at once in the idle phase.
    #[arg(long, default_value_t = 200)]
    pub connect_concurrency: usize,
    /// Concurrent sessions of the fan-out phase [default: 100, quick 20].
    #[arg(long)]
    pub fanout_sessions: Option<usize>,
    /// Models of each fan-out turn (must contain `stamp`; one mock serves them all).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "m1-stamp-d2-w300,m2-stamp-d2-w300,m3-stamp-d2-w300,m4-stamp-d2-w300"
    )]
    pub fanout_models: Vec<String>,
    /// Models of the paced fan-out (the same sessions at a rate the box can carry).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "m1-stamp-d10-w200,m2-stamp-d10-w200,m3-stamp-d10-w200,m4-stamp-d10-w200"
    )]
    pub paced_models: Vec<String>,
    /// Spread the paced sessions' turn starts evenly over this many ms [default: one token
    /// interval, the `dN` of the first paced model]. 0 starts every turn at once, so every
    /// stream's tokens arrive in the same instant (a burst the size of all streams).
    #[arg(long)]
    pub paced_spread_ms: Option<u64>,
    /// Seconds to hold the idle connections open (one heartbeat round is 15 s) [default: 16, quick 0].
    #[arg(long)]
    pub idle_hold_s: Option<u64>,
    /// Times every idle session is resumed on a new connection afterwards (leak check) [default: 3, quick 1].
    #[arg(long)]
    pub reconnect_rounds: Option<u32>,
    /// Cancel probes [default: 50, quick 10].
    #[arg(long)]
    pub cancel_tries: Option<u32>,
    /// Model of the cancel probe (must stream slowly).
    #[arg(long, default_value = "spaced-w200")]
    pub cancel_model: String,
    /// Resumes of the full buffer [default: 5, quick 3].
    #[arg(long)]
    pub replay_repeats: Option<u32>,
    /// Models of the turns that fill the buffer (fast, many tokens).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "r1-w500,r2-w500,r3-w500,r4-w500"
    )]
    pub replay_models: Vec<String>,
    /// `SWITCHBOARD_EVENT_BUFFER` of the broker (the replay phase fills it).
    #[arg(long, default_value_t = 4096)]
    pub event_buffer: u64,
    /// `SWITCHBOARD_WORKERS` of the broker.
    #[arg(long, default_value_t = 2)]
    pub proxy_workers: usize,
    /// Worker threads of the in-process mock backend.
    #[arg(long, default_value_t = 2)]
    pub mock_workers: usize,
    /// Threads of the load generator (1 = a single-threaded runtime).
    #[arg(long, default_value_t = 1)]
    pub client_threads: usize,
}

const PHASES: [&str; 5] = ["idle", "fanout", "paced", "cancel", "replay"];
/// Wait for any single WebSocket event before calling it lost.
const EVENT_WAIT: Duration = Duration::from_secs(30);
/// Prompt of every turn (the mock's reply length depends on it).
const PROMPT: &str = "go";

// ---------------------------------------------------------------- events

/// The fields of a session event the bench looks at (others are skipped).
#[derive(Debug, Deserialize)]
struct Ev<'a> {
    #[serde(default)]
    id: Option<u64>,
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    request_id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    model: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    content: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    code: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    message: Option<Cow<'a, str>>,
    #[serde(default)]
    session_id: Option<String>,
    #[serde(default)]
    resumed: Option<bool>,
}

fn parse_ev(data: &[u8]) -> Result<Ev<'_>, String> {
    serde_json::from_slice(data).map_err(|e| {
        format!(
            "unparseable event {e}: {}",
            String::from_utf8_lossy(&data[..data.len().min(200)])
        )
    })
}

/// The next event, or why there is none (close code, error, timeout).
async fn next_text(ws: &mut WsConn, wait: Duration) -> Result<(Vec<u8>, u64), String> {
    match timeout(wait, ws.next()).await {
        Ok(Ok(Msg::Text(data, at))) => Ok((data, at)),
        Ok(Ok(Msg::Close(code, reason))) => Err(format!(
            "server closed with {} {reason:?}",
            code.map_or("no code".into(), |c| c.to_string())
        )),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no event within {wait:?}")),
    }
}

/// The `session` reply to a `hello`.
#[derive(Debug, Clone)]
struct SessionInfo {
    session_id: String,
}

/// Connects, sends `hello` and waits for the `session` event.
async fn open_session(addr: SocketAddr, hello: &str) -> Result<(WsConn, SessionInfo), String> {
    let mut ws = WsConn::connect(addr, "/ws")
        .await
        .map_err(|e| format!("connect: {e}"))?;
    ws.send_text(hello)
        .await
        .map_err(|e| format!("hello: {e}"))?;
    for _ in 0..16 {
        let (data, _) = next_text(&mut ws, EVENT_WAIT).await?;
        let ev = parse_ev(&data)?;
        if ev.kind == "session" {
            return Ok((
                ws,
                SessionInfo {
                    session_id: ev.session_id.unwrap_or_default(),
                },
            ));
        }
    }
    Err("no `session` event among the first 16 events".into())
}

fn send_msg(request_id: &str, models: &[String]) -> String {
    json!({"type": "send", "request_id": request_id, "content": PROMPT, "models": models})
        .to_string()
}

fn note(list: &mut Vec<String>, problem: String) {
    if list.len() < 4 && !list.contains(&problem) {
        list.push(problem);
    }
}

// ---------------------------------------------------------------- stats helpers

/// Nearest-rank percentile.
fn pct(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let n = sorted.len();
    let rank = ((p / 100.0) * n as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, n) - 1])
}

fn us_to_ms(v: Option<u64>) -> Option<f64> {
    v.map(|u| u as f64 / 1000.0)
}

fn vm_rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// `GET path` with the admin key; the JSON body on 200.
async fn get_json(sb: &Switchboard, path: &str) -> Option<Value> {
    let req = build_request("GET", sb.addr, path, &[("X-API-Key", &sb.admin_key)], None);
    match targets::one_shot(sb.addr, &req).await {
        Ok((200, body)) => serde_json::from_str(&body).ok(),
        _ => None,
    }
}

// ---------------------------------------------------------------- 1. idle

#[derive(Debug, Default)]
struct IdleOutcome {
    wanted: usize,
    established: usize,
    failed: usize,
    connect_s: f64,
    rss_before_kb: Option<u64>,
    rss_idle_kb: Option<u64>,
    rss_closed_kb: Option<u64>,
    /// After holding the connections `hold_s` seconds (heartbeats, pings).
    rss_held_kb: Option<u64>,
    hold_s: u64,
    /// Broker CPU (ms) while the connections were held idle.
    hold_cpu_ms: Option<f64>,
    /// Second round: every session resumed on a new connection (no new sessions).
    reconnected: Vec<usize>,
    reconnect_failed: usize,
    /// RSS with each reconnect round's connections open.
    rss_reconnected_kb: Vec<Option<u64>>,
    rss_closed_again_kb: Option<u64>,
    memory_idle: Option<Value>,
    memory_closed: Option<Value>,
    /// Connections the server ended while they were idle (code/reason → count).
    server_closes: BTreeMap<String, u64>,
    heartbeats: u64,
    other_events: u64,
    problems: Vec<String>,
}

#[derive(Debug, Default)]
struct IdleEnd {
    session_id: Option<String>,
    heartbeats: u64,
    other_events: u64,
    closed_by_server: Option<String>,
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

async fn phase_idle(
    sb: &Switchboard,
    n: usize,
    concurrency: usize,
    hold_s: u64,
    rounds: u32,
) -> IdleOutcome {
    let mut out = IdleOutcome {
        wanted: n,
        hold_s,
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
    out
}

// ---------------------------------------------------------------- 2. fan-out

/// Stamp latencies and completeness of one fan-out run.
#[derive(Debug, Default)]
struct FanoutOutcome {
    /// mock write → client receive, µs, one per token.
    lat_us: Vec<u64>,
    tokens: u64,
    expected_tokens: u64,
    /// Streams (session × model, or HTTP streams) with fewer/more tokens than expected.
    short_streams: u64,
    /// Events with an id (switchboard) / SSE data lines (direct).
    events: u64,
    elapsed_s: f64,
    /// Sessions/streams that failed (socket, close, error event, timeout).
    failures: u64,
    /// Gaps or repeats in a session's id sequence.
    id_anomalies: u64,
    /// Token contents that were not stamps.
    non_stamp: u64,
    /// CPU time (user + system, ms) during the run: broker process, mock
    /// threads, the bench's client thread.
    cpu_ms: [Option<f64>; 3],
    /// Connections the mock accepted during the run (after the common start).
    mock_connections: u64,
    /// Streams of the run (sessions × models).
    streams: u64,
    problems: Vec<String>,
}

impl FanoutOutcome {
    fn merge(&mut self, o: FanoutOutcome) {
        self.lat_us.extend(o.lat_us);
        self.tokens += o.tokens;
        self.expected_tokens += o.expected_tokens;
        self.short_streams += o.short_streams;
        self.events += o.events;
        self.failures += o.failures;
        self.id_anomalies += o.id_anomalies;
        self.non_stamp += o.non_stamp;
        for p in o.problems {
            note(&mut self.problems, p);
        }
    }
}

fn expected_tokens(model: &str) -> u64 {
    mockllm::scenario::word_count(&mockllm::reply_text(model, PROMPT))
}

fn take_stamps(content: &str, recv_us: u64, out: &mut FanoutOutcome) -> u64 {
    let mut n = 0;
    for word in content.split_ascii_whitespace() {
        match word.parse::<u64>() {
            Ok(stamp) => {
                out.lat_us.push(recv_us.saturating_sub(stamp));
                n += 1;
            }
            Err(_) => out.non_stamp += 1,
        }
    }
    n
}

/// One session: one turn to every model, read to `complete`.
async fn fanout_session(
    addr: SocketAddr,
    i: usize,
    models: Arc<Vec<String>>,
    barrier: Arc<Barrier>,
    start_delay: Duration,
) -> (FanoutOutcome, Option<Instant>) {
    let mut out = FanoutOutcome::default();
    let opened = timeout(
        Duration::from_secs(20),
        open_session(addr, r#"{"type":"hello"}"#),
    )
    .await;
    barrier.wait().await;
    tokio::time::sleep(start_delay).await;
    let mut ws = match opened {
        Ok(Ok((ws, _))) => ws,
        Ok(Err(e)) => {
            out.failures += 1;
            note(&mut out.problems, format!("open: {e}"));
            return (out, None);
        }
        Err(_) => {
            out.failures += 1;
            note(&mut out.problems, "open: timed out".into());
            return (out, None);
        }
    };
    let request_id = format!("fan-{i}");
    let mut per_model: HashMap<String, u64> = models.iter().map(|m| (m.clone(), 0)).collect();
    out.expected_tokens = models.iter().map(|m| expected_tokens(m)).sum();
    if let Err(e) = ws.send_text(&send_msg(&request_id, &models)).await {
        out.failures += 1;
        note(&mut out.problems, format!("send: {e}"));
        return (out, None);
    }
    let mut last_id: Option<u64> = None;
    let mut finished = None;
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        let (data, recv_us) = match next_text(&mut ws, EVENT_WAIT).await {
            Ok(x) => x,
            Err(e) => {
                out.failures += 1;
                note(&mut out.problems, e);
                break;
            }
        };
        let ev = match parse_ev(&data) {
            Ok(ev) => ev,
            Err(e) => {
                out.failures += 1;
                note(&mut out.problems, e);
                break;
            }
        };
        if let Some(id) = ev.id {
            out.events += 1;
            if last_id.is_some_and(|l| id != l + 1) {
                out.id_anomalies += 1;
                note(
                    &mut out.problems,
                    format!("id {id} after {}", last_id.unwrap_or(0)),
                );
            }
            last_id = Some(id);
        }
        match ev.kind.as_ref() {
            "token" => {
                let n = take_stamps(ev.content.as_deref().unwrap_or(""), recv_us, &mut out);
                out.tokens += n;
                if let Some(c) = ev.model.as_deref().and_then(|m| per_model.get_mut(m)) {
                    *c += n;
                }
            }
            "error" => {
                out.failures += 1;
                note(
                    &mut out.problems,
                    format!(
                        "error event {}: {}",
                        ev.code.as_deref().unwrap_or("-"),
                        ev.message.as_deref().unwrap_or("")
                    ),
                );
            }
            "complete" if ev.request_id.as_deref() == Some(request_id.as_str()) => {
                finished = Some(Instant::now());
                break;
            }
            _ => {}
        }
    }
    for m in models.iter() {
        if per_model.get(m).copied() != Some(expected_tokens(m)) {
            out.short_streams += 1;
            note(
                &mut out.problems,
                format!(
                    "{m}: {} of {} tokens",
                    per_model.get(m).copied().unwrap_or(0),
                    expected_tokens(m)
                ),
            );
        }
    }
    let _ = ws.send_close(1000).await;
    (out, finished)
}

#[derive(Debug, Deserialize)]
struct Chunk<'a> {
    #[serde(default, borrow)]
    choices: Vec<Choice<'a>>,
}

#[derive(Debug, Deserialize)]
struct Choice<'a> {
    #[serde(default, borrow)]
    delta: Option<Delta<'a>>,
}

#[derive(Debug, Deserialize)]
struct Delta<'a> {
    #[serde(default, borrow)]
    content: Option<Cow<'a, str>>,
}

/// One direct streaming request to the mock, read to `[DONE]`.
async fn fanout_direct(
    mock: SocketAddr,
    model: String,
    barrier: Arc<Barrier>,
    start_delay: Duration,
) -> (FanoutOutcome, Option<Instant>) {
    let mut out = FanoutOutcome {
        expected_tokens: expected_tokens(&model),
        ..FanoutOutcome::default()
    };
    let body = json!({
        "model": model,
        "stream": true,
        "messages": [{"role": "user", "content": PROMPT}],
    })
    .to_string();
    let req = build_request(
        "POST",
        mock,
        "/v1/chat/completions",
        &[],
        Some(body.as_bytes()),
    );
    let conn = timeout(Duration::from_secs(20), Conn::connect(mock)).await;
    barrier.wait().await;
    tokio::time::sleep(start_delay).await;
    let mut conn = match conn {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            out.failures += 1;
            note(&mut out.problems, format!("connect: {e}"));
            return (out, None);
        }
        Err(_) => {
            out.failures += 1;
            note(&mut out.problems, "connect timed out".into());
            return (out, None);
        }
    };
    let mut line: Vec<u8> = Vec::new();
    let mut done = false;
    let exchange = async {
        conn.send(&req).await?;
        let head = conn.read_head().await?;
        if head.status != 200 {
            return Err(crate::client::Error::Protocol(format!(
                "HTTP {}",
                head.status
            )));
        }
        conn.read_body(head.framing, |data| {
            let recv_us = unix_micros();
            for &b in data {
                if b != b'\n' {
                    line.push(b);
                    continue;
                }
                if let Some(payload) = line.strip_prefix(b"data: ") {
                    if payload == b"[DONE]" {
                        done = true;
                    } else {
                        out.events += 1;
                        if let Ok(chunk) = serde_json::from_slice::<Chunk<'_>>(payload) {
                            if let Some(c) = chunk
                                .choices
                                .first()
                                .and_then(|c| c.delta.as_ref())
                                .and_then(|d| d.content.as_deref())
                            {
                                let n = take_stamps(c, recv_us, &mut out);
                                out.tokens += n;
                            }
                        }
                    }
                }
                line.clear();
            }
            Flow::Continue
        })
        .await
    };
    let result = timeout(Duration::from_secs(120), exchange).await;
    let finished = Instant::now();
    match result {
        Ok(Ok(true)) if done => {}
        Ok(Ok(_)) => {
            out.failures += 1;
            note(&mut out.problems, "stream without [DONE]".into());
        }
        Ok(Err(e)) => {
            out.failures += 1;
            note(&mut out.problems, e.to_string());
        }
        Err(_) => {
            out.failures += 1;
            note(&mut out.problems, "stream timed out (120 s)".into());
        }
    }
    if out.tokens != out.expected_tokens {
        out.short_streams += 1;
        note(
            &mut out.problems,
            format!("{model}: {} of {} tokens", out.tokens, out.expected_tokens),
        );
    }
    (out, Some(finished))
}

/// One turn to `models` in each of `sessions` sessions (or the same streams directly from the
/// mock); session `i` starts its turn `spread * i / sessions` after the common start.
async fn phase_fanout(
    sb: Option<(SocketAddr, u32)>,
    mock: &MockHandle,
    sessions: usize,
    models: &[String],
    spread: Duration,
) -> FanoutOutcome {
    let mock_stats = mock.shared_stats();
    let mock = mock.addr();
    let sb_addr = sb.map(|(a, _)| a);
    let broker_pid = sb.map(|(_, p)| p);
    let models = Arc::new(models.to_vec());
    let n = match sb_addr {
        Some(_) => sessions,
        None => sessions * models.len(),
    };
    let barrier = Arc::new(Barrier::new(n + 1));
    let start_delay = |session: usize| spread * session as u32 / sessions.max(1) as u32;
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let barrier = Arc::clone(&barrier);
            match sb_addr {
                Some(addr) => tokio::spawn(fanout_session(
                    addr,
                    i,
                    Arc::clone(&models),
                    barrier,
                    start_delay(i),
                )),
                None => tokio::spawn(fanout_direct(
                    mock,
                    models[i % models.len()].clone(),
                    barrier,
                    start_delay(i / models.len()),
                )),
            }
        })
        .collect();
    barrier.wait().await;
    let started = Instant::now();
    let cpu_before = cpu_snapshot(broker_pid);
    let conns_before = mock_stats.snapshot().connections_total;
    let mut total = FanoutOutcome {
        streams: (sessions * models.len()) as u64,
        ..FanoutOutcome::default()
    };
    let mut last = started;
    for h in handles {
        match h.await {
            Ok((o, finished)) => {
                if let Some(f) = finished {
                    last = last.max(f);
                }
                total.merge(o);
            }
            Err(e) => {
                total.failures += 1;
                note(&mut total.problems, format!("task failed: {e}"));
            }
        }
    }
    total.elapsed_s = (last - started).as_secs_f64();
    let cpu_after = cpu_snapshot(broker_pid);
    total.mock_connections = mock_stats
        .snapshot()
        .connections_total
        .saturating_sub(conns_before);
    for i in 0..3 {
        total.cpu_ms[i] = match (cpu_before[i], cpu_after[i]) {
            (Some(b), Some(a)) => Some(a.saturating_sub(b) as f64 * 1000.0 / CLK_TCK),
            _ => None,
        };
    }
    total.lat_us.sort_unstable();
    total
}

/// Ticks per second of `/proc/*/stat` times.
const CLK_TCK: f64 = targets::USER_HZ as f64;

/// CPU ticks so far: [broker process, mock threads of this process, this process's main thread].
fn cpu_snapshot(broker_pid: Option<u32>) -> [Option<u64>; 3] {
    let broker = broker_pid.and_then(|p| targets::stat_ticks(&format!("/proc/{p}/stat")));
    let me = std::process::id();
    let mut mock = None;
    if let Ok(dir) = std::fs::read_dir("/proc/self/task") {
        for entry in dir.flatten() {
            let path = entry.path();
            let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
            if comm.starts_with("mockllm") {
                if let Some(t) = targets::stat_ticks(&path.join("stat").to_string_lossy()) {
                    *mock.get_or_insert(0) += t;
                }
            }
        }
    }
    let client = targets::stat_ticks(&format!("/proc/self/task/{me}/stat"));
    [broker, mock, client]
}

// ---------------------------------------------------------------- 3. cancel

#[derive(Debug, Default)]
struct CancelOutcome {
    /// `cancel` sent → `cancelled` event received, µs.
    to_event_us: Vec<u64>,
    /// `cancel` sent → the mock recorded the abort, µs (polled every 50 µs).
    to_upstream_us: Vec<u64>,
    /// No abort seen at the mock within 3 s.
    upstream_missed: u32,
    /// Tries that failed (no 3rd token, no `cancelled`, socket error...).
    failures: u32,
    /// Tokens of the cancelled model received after its `cancelled` event.
    tokens_after_cancelled: u64,
    problems: Vec<String>,
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

async fn phase_cancel(
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

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

// ---------------------------------------------------------------- 4. replay

#[derive(Debug, Default)]
struct ReplayOutcome {
    /// Turns run to fill the buffer, and the session's last id after them.
    turns: u32,
    last_id: u64,
    /// Events the session reported buffered.
    buffered: u64,
    /// Events each resume replayed.
    replayed: Vec<u64>,
    /// hello sent → last replayed event received, µs.
    times_us: Vec<u64>,
    bytes: Vec<u64>,
    failures: u32,
    problems: Vec<String>,
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

async fn phase_replay(
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

// ---------------------------------------------------------------- run + report

fn fmt_opt(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(v) if v.abs() >= 100.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.3}"),
    }
}

fn mb(kb: Option<u64>) -> Option<f64> {
    kb.map(|k| k as f64 / 1024.0)
}

/// Raises the fd soft limit to the hard one by re-executing through `sh -c 'ulimit -n'`
/// (the bench has no libc binding); returns the limit in effect, and a note.
pub fn ensure_nofile(needed: u64) -> (Option<u64>, Option<String>) {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let parse = |v: Option<&str>| -> Option<u64> {
        match v? {
            "unlimited" => Some(u64::MAX),
            n => n.parse().ok(),
        }
    };
    let (soft, hard) = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .map(|l| {
            let mut parts = l["Max open files".len()..].split_whitespace();
            (parse(parts.next()), parse(parts.next()))
        })
        .unwrap_or((None, None));
    let (Some(soft), Some(hard)) = (soft, hard) else {
        return (
            None,
            Some("cannot read RLIMIT_NOFILE from /proc/self/limits".into()),
        );
    };
    if soft >= hard || (hard == u64::MAX && soft >= needed) {
        return (Some(soft), None);
    }
    if std::env::var_os("BENCH_NOFILE_REEXEC").is_some() {
        return (
            Some(soft),
            Some(format!(
                "could not raise the fd limit above {soft} (hard {hard})"
            )),
        );
    }
    let Ok(exe) = std::env::current_exe() else {
        return (Some(soft), None);
    };
    let target = if hard == u64::MAX {
        needed.max(65536).to_string()
    } else {
        hard.to_string()
    };
    eprintln!("raising the fd soft limit {soft} -> {target} (re-exec through sh)");
    use std::os::unix::process::CommandExt;
    let err = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -S -n {target} && exec \"$0\" \"$@\""))
        .arg(exe)
        .args(std::env::args_os().skip(1))
        .env("BENCH_NOFILE_REEXEC", "1")
        .exec();
    (
        Some(soft),
        Some(format!("re-exec to raise the fd limit failed: {err}")),
    )
}

/// Runs `bench sessions`.
pub async fn run(
    args: SessionsArgs,
    nofile: Option<u64>,
    mut notes: Vec<String>,
) -> Result<(), String> {
    let q = args.quick;
    let mut phases: Vec<String> = Vec::new();
    for p in &args.phases {
        let p = p.trim().to_ascii_lowercase();
        if !PHASES.contains(&p.as_str()) {
            return Err(format!(
                "unknown phase {p:?}; expected some of idle,fanout,paced,cancel,replay"
            ));
        }
        if !phases.contains(&p) {
            phases.push(p);
        }
    }
    let mut idle_n = args
        .idle
        .unwrap_or(if q { 500 } else { 10_000 })
        .min(60_000);
    if let Some(limit) = nofile {
        // The bench and the broker each hold one fd per connection, plus some.
        let room = usize::try_from(limit.saturating_sub(300)).unwrap_or(usize::MAX);
        if idle_n > room {
            notes.push(format!(
                "idle connections capped at {room} by RLIMIT_NOFILE {limit} (run `ulimit -n 65536` first)"
            ));
            idle_n = room;
        }
    }
    let fan_sessions = args
        .fanout_sessions
        .unwrap_or(if q { 20 } else { 100 })
        .clamp(1, 5000);
    let cancel_tries = args
        .cancel_tries
        .unwrap_or(if q { 10 } else { 50 })
        .min(10_000);
    let replay_repeats = args
        .replay_repeats
        .unwrap_or(if q { 3 } else { 5 })
        .clamp(1, 100);
    for (flag, list) in [
        ("--fanout-models", &args.fanout_models),
        ("--paced-models", &args.paced_models),
    ] {
        if list.is_empty() || list.len() > 8 {
            return Err(format!("{flag}: 1 to 8 models"));
        }
        if list
            .iter()
            .any(|m| !m.to_ascii_lowercase().contains("stamp"))
        {
            return Err(format!("{flag}: every model must contain `stamp`"));
        }
    }
    if args.replay_models.is_empty() || args.replay_models.len() > 8 {
        return Err("--replay-models: 1 to 8 models".into());
    }
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let started = Instant::now();
    if cfg!(debug_assertions) {
        notes
            .push("the bench itself is a debug build; use --release for meaningful numbers".into());
    }

    let mock = crate::start_mock(args.mock_workers)?;
    let mock_url = mock.url();

    let sb_path = crate::resolve_switchboard(args.switchboard.as_ref());
    let sb_release = crate::build_kind(&sb_path);
    if !sb_path.is_file() {
        return Err(format!(
            "switchboard binary {} not found (cargo build --release -p switchboard, or --switchboard PATH)",
            sb_path.display()
        ));
    }
    let extra_env = [
        ("SWITCHBOARD_MAX_CONNECTIONS_PER_IP", "0".to_string()),
        ("SWITCHBOARD_MAX_SESSIONS", "20000".to_string()),
        ("SWITCHBOARD_EVENT_BUFFER", args.event_buffer.to_string()),
    ];
    let mut sb = Switchboard::start(&SwitchboardOpts {
        binary: &sb_path,
        workers: args.proxy_workers,
        extra_env: &extra_env,
    })?;
    let mut models: Vec<&String> = args.fanout_models.iter().collect();
    models.extend(args.paced_models.iter());
    models.push(&args.cancel_model);
    models.extend(args.replay_models.iter());
    let mut seen: Vec<&String> = Vec::new();
    models.retain(|m| {
        let new = !seen.contains(m);
        seen.push(m);
        new
    });
    for m in models {
        sb.register(m, &mock_url).await?;
    }
    eprintln!(
        "switchboard {} at http://{} (pid {})",
        sb_path.display(),
        sb.addr,
        sb.pid()
    );

    let mut idle = None;
    let mut fanouts: Vec<(&str, Vec<String>, FanoutOutcome, FanoutOutcome)> = Vec::new();
    let mut cancel = None;
    let mut replay = None;
    for phase in &phases {
        if let Some(status) = sb.exit_status() {
            notes.push(format!(
                "switchboard exited ({status}) before phase {phase}"
            ));
            break;
        }
        match phase.as_str() {
            "idle" => {
                eprintln!("== idle: {idle_n} connections ==");
                let hold = args.idle_hold_s.unwrap_or(if q { 0 } else { 16 }).min(600);
                let rounds = args
                    .reconnect_rounds
                    .unwrap_or(if q { 1 } else { 3 })
                    .min(20);
                let o = phase_idle(&sb, idle_n, args.connect_concurrency, hold, rounds).await;
                idle = Some(o);
            }
            "fanout" | "paced" => {
                let (key, models, spread) = if phase == "fanout" {
                    ("fanout", &args.fanout_models, Duration::ZERO)
                } else {
                    let spread_ms = args.paced_spread_ms.unwrap_or_else(|| {
                        args.paced_models
                            .first()
                            .and_then(|m| mockllm::scenario::Scenario::parse(m).token_delay)
                            .map_or(0, |d| d.as_millis() as u64)
                    });
                    (
                        "fanout_paced",
                        &args.paced_models,
                        Duration::from_millis(spread_ms),
                    )
                };
                eprintln!(
                    "== {key}: {fan_sessions} x {} models, turn starts spread over {} ms ==",
                    models.len(),
                    spread.as_millis()
                );
                let d = phase_fanout(None, &mock, fan_sessions, models, spread).await;
                eprintln!(
                    "  [direct] {} tokens of {} in {:.2} s, {} failures",
                    d.tokens, d.expected_tokens, d.elapsed_s, d.failures
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
                let s = phase_fanout(
                    Some((sb.addr, sb.pid())),
                    &mock,
                    fan_sessions,
                    models,
                    spread,
                )
                .await;
                eprintln!(
                    "  [switchboard] {} tokens of {} in {:.2} s, {} failures",
                    s.tokens, s.expected_tokens, s.elapsed_s, s.failures
                );
                fanouts.push((key, models.clone(), d, s));
            }
            "cancel" => {
                eprintln!("== cancel: {cancel_tries} x {} ==", args.cancel_model);
                let c = phase_cancel(&sb, &mock, cancel_tries, &args.cancel_model).await;
                eprintln!(
                    "  [cancel] {} measured, {} failed, {} upstream missed",
                    c.to_event_us.len(),
                    c.failures,
                    c.upstream_missed
                );
                cancel = Some(c);
            }
            _ => {
                eprintln!("== replay: {replay_repeats} resumes of a full buffer ==");
                let r =
                    phase_replay(&sb, &args.replay_models, args.event_buffer, replay_repeats).await;
                eprintln!(
                    "  [replay] {} turns, last id {}, {} buffered, {} resumes, {} failed",
                    r.turns,
                    r.last_id,
                    r.buffered,
                    r.times_us.len(),
                    r.failures
                );
                replay = Some(r);
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    if let Some(status) = sb.exit_status() {
        notes.push(format!("switchboard exited during the run ({status})"));
    }

    // ---- report ----
    let mut out = String::new();
    let mut j = serde_json::Map::new();
    out.push_str(&format!(
        "\nswitchboard sessions bench: {cores} cores, loopback; mock {} threads, broker {} workers, client {} thread(s)\n",
        args.mock_workers, args.proxy_workers, args.client_threads
    ));
    out.push_str(&format!(
        "switchboard binary: {} ({})\n",
        sb_path.display(),
        match sb_release {
            Some(true) => "release build",
            Some(false) => "DEBUG build",
            None => "build profile unknown",
        }
    ));
    let row = |out: &mut String, label: &str, value: String, target: &str| {
        out.push_str(&format!("  {label:<42}{value:>18}  {target}\n"));
    };

    if let Some(o) = &idle {
        let per_conn = match (o.rss_before_kb, o.rss_idle_kb) {
            (Some(b), Some(a)) if o.established > 0 => {
                Some((a as f64 - b as f64) / o.established as f64)
            }
            _ => None,
        };
        out.push_str(&format!(
            "\n1. idle connections ({} wanted; hello -> session; {} opening at once)\n",
            o.wanted, args.connect_concurrency
        ));
        row(
            &mut out,
            "established / failed",
            format!("{}/{}", o.established, o.failed),
            "",
        );
        row(
            &mut out,
            "open rate (connections/s)",
            format!("{:.0}", o.established as f64 / o.connect_s.max(1e-9)),
            "",
        );
        row(
            &mut out,
            "broker RSS, 0 connections (MB)",
            fmt_opt(mb(o.rss_before_kb)),
            "",
        );
        row(
            &mut out,
            "broker RSS, all idle (MB)",
            fmt_opt(mb(o.rss_idle_kb)),
            "",
        );
        row(
            &mut out,
            "RSS added (MB)",
            fmt_opt(match (o.rss_before_kb, o.rss_idle_kb) {
                (Some(b), Some(a)) => Some((a as f64 - b as f64) / 1024.0),
                _ => None,
            }),
            "",
        );
        row(
            &mut out,
            "RSS per idle connection (KB)",
            fmt_opt(per_conn),
            "target < 20",
        );
        if o.hold_s > 0 {
            row(
                &mut out,
                &format!("broker RSS after {} s idle (MB)", o.hold_s),
                fmt_opt(mb(o.rss_held_kb)),
                "",
            );
            row(
                &mut out,
                &format!("broker CPU during the {} s (ms)", o.hold_s),
                fmt_opt(o.hold_cpu_ms),
                "",
            );
        }
        row(
            &mut out,
            "broker RSS after closing all (MB)",
            fmt_opt(mb(o.rss_closed_kb)),
            "(sessions stay until TTL)",
        );
        if !o.reconnected.is_empty() {
            let resumed: Vec<String> = o.reconnected.iter().map(ToString::to_string).collect();
            row(
                &mut out,
                "reconnect: sessions resumed per round",
                resumed.join(","),
                &format!("({} failed)", o.reconnect_failed),
            );
            let rss: Vec<String> = o
                .rss_reconnected_kb
                .iter()
                .map(|kb| mb(*kb).map_or("-".into(), |v| format!("{v:.1}")))
                .collect();
            row(
                &mut out,
                "reconnect: RSS all idle, per round (MB)",
                rss.join(","),
                "(should level off)",
            );
            row(
                &mut out,
                "reconnect: RSS after closing (MB)",
                fmt_opt(mb(o.rss_closed_again_kb)),
                "",
            );
        }
        let field = |v: &Option<Value>, k: &str| {
            v.as_ref()
                .and_then(|m| m.get(k))
                .map_or("-".into(), Value::to_string)
        };
        row(
            &mut out,
            "broker: connections / sessions (all idle)",
            format!(
                "{}/{}",
                field(&o.memory_idle, "connections"),
                field(&o.memory_idle, "session_count")
            ),
            "",
        );
        row(
            &mut out,
            "broker: connections / sessions (closed)",
            format!(
                "{}/{}",
                field(&o.memory_closed, "connections"),
                field(&o.memory_closed, "session_count")
            ),
            "",
        );
        row(
            &mut out,
            "heartbeats / other events while idle",
            format!("{}/{}", o.heartbeats, o.other_events),
            "",
        );
        j.insert(
            "idle".into(),
            json!({
                "wanted": o.wanted,
                "established": o.established,
                "failed": o.failed,
                "open_s": o.connect_s,
                "rss_before_kb": o.rss_before_kb,
                "rss_idle_kb": o.rss_idle_kb,
                "rss_closed_kb": o.rss_closed_kb,
                "rss_held_kb": o.rss_held_kb,
                "hold_s": o.hold_s,
                "hold_cpu_ms": o.hold_cpu_ms,
                "reconnected": o.reconnected,
                "reconnect_failed": o.reconnect_failed,
                "rss_reconnected_kb": o.rss_reconnected_kb,
                "rss_closed_again_kb": o.rss_closed_again_kb,
                "rss_per_connection_kb": per_conn,
                "debug_memory_idle": o.memory_idle,
                "debug_memory_closed": o.memory_closed,
                "server_closes": o.server_closes,
                "heartbeats": o.heartbeats,
                "other_events": o.other_events,
                "problems": o.problems,
            }),
        );
        for p in &o.problems {
            notes.push(format!("idle: {p}"));
        }
        for (c, n) in &o.server_closes {
            notes.push(format!(
                "idle: {n} connections closed by the server while idle: {c}"
            ));
        }
    }

    for (i, (key, models, d, s)) in fanouts.iter().enumerate() {
        let number = if i == 0 { "2." } else { "2b." };
        report_fanout(
            &mut out,
            &mut j,
            &mut notes,
            number,
            key,
            models,
            fan_sessions,
            d,
            s,
        );
    }

    if let Some(c) = &cancel {
        out.push_str(&format!(
            "\n3. cancel: {cancel_tries} turns of `{}`, `cancel` after the 3rd token (one at a time)\n",
            args.cancel_model
        ));
        let ms = |v: &[u64], p: f64| fmt_opt(us_to_ms(pct(v, p)));
        let maxv = |v: &[u64]| fmt_opt(us_to_ms(v.last().copied()));
        row(
            &mut out,
            "cancel -> `cancelled` event p50 (ms)",
            ms(&c.to_event_us, 50.0),
            "",
        );
        row(
            &mut out,
            "cancel -> `cancelled` event p99 (ms)",
            ms(&c.to_event_us, 99.0),
            "target < 50",
        );
        row(
            &mut out,
            "cancel -> `cancelled` event max (ms)",
            maxv(&c.to_event_us),
            "",
        );
        row(
            &mut out,
            "cancel -> upstream closed p50 (ms)",
            ms(&c.to_upstream_us, 50.0),
            "",
        );
        row(
            &mut out,
            "cancel -> upstream closed p99 (ms)",
            ms(&c.to_upstream_us, 99.0),
            "target < 50",
        );
        row(
            &mut out,
            "cancel -> upstream closed max (ms)",
            maxv(&c.to_upstream_us),
            "",
        );
        row(
            &mut out,
            "measured / failed / upstream missed",
            format!(
                "{}/{}/{}",
                c.to_event_us.len(),
                c.failures,
                c.upstream_missed
            ),
            "",
        );
        row(
            &mut out,
            "tokens after `cancelled`",
            c.tokens_after_cancelled.to_string(),
            "",
        );
        j.insert(
            "cancel".into(),
            json!({
                "tries": cancel_tries,
                "model": args.cancel_model,
                "to_event_p50_ms": us_to_ms(pct(&c.to_event_us, 50.0)),
                "to_event_p99_ms": us_to_ms(pct(&c.to_event_us, 99.0)),
                "to_event_max_ms": us_to_ms(c.to_event_us.last().copied()),
                "to_upstream_p50_ms": us_to_ms(pct(&c.to_upstream_us, 50.0)),
                "to_upstream_p99_ms": us_to_ms(pct(&c.to_upstream_us, 99.0)),
                "to_upstream_max_ms": us_to_ms(c.to_upstream_us.last().copied()),
                "measured": c.to_event_us.len(),
                "failed": c.failures,
                "upstream_missed": c.upstream_missed,
                "tokens_after_cancelled": c.tokens_after_cancelled,
                "problems": c.problems,
            }),
        );
        for p in &c.problems {
            notes.push(format!("cancel: {p}"));
        }
    }

    if let Some(r) = &replay {
        let mut times = r.times_us.clone();
        times.sort_unstable();
        let events = r.replayed.first().copied().unwrap_or(0);
        out.push_str(&format!(
            "\n4. replay: resume a full buffer ({} turns of {} models -> last id {}, {} buffered), {} times\n",
            r.turns,
            args.replay_models.len(),
            r.last_id,
            r.buffered,
            replay_repeats
        ));
        row(
            &mut out,
            "events replayed per resume",
            events.to_string(),
            "",
        );
        row(
            &mut out,
            "bytes replayed per resume (KB)",
            fmt_opt(r.bytes.first().map(|b| *b as f64 / 1024.0)),
            "",
        );
        row(
            &mut out,
            "hello -> last replayed event p50 (ms)",
            fmt_opt(us_to_ms(pct(&times, 50.0))),
            "",
        );
        row(
            &mut out,
            "hello -> last replayed event min (ms)",
            fmt_opt(us_to_ms(times.first().copied())),
            "",
        );
        row(
            &mut out,
            "hello -> last replayed event max (ms)",
            fmt_opt(us_to_ms(times.last().copied())),
            "",
        );
        let eps = pct(&times, 50.0).map(|us| events as f64 / (us as f64 / 1e6).max(1e-9));
        row(
            &mut out,
            "replayed events/s (at p50)",
            eps.map_or("-".into(), |v| format!("{v:.0}")),
            "",
        );
        row(
            &mut out,
            "resumes ok / failed",
            format!("{}/{}", r.times_us.len(), r.failures),
            "",
        );
        j.insert(
            "replay".into(),
            json!({
                "turns": r.turns,
                "last_id": r.last_id,
                "buffered": r.buffered,
                "replayed": r.replayed,
                "bytes": r.bytes,
                "times_ms": r.times_us.iter().map(|u| *u as f64 / 1000.0).collect::<Vec<_>>(),
                "p50_ms": us_to_ms(pct(&times, 50.0)),
                "events_per_s_p50": eps,
                "failed": r.failures,
                "problems": r.problems,
            }),
        );
        for p in &r.problems {
            notes.push(format!("replay: {p}"));
        }
    }
    print!("{out}");

    let (n, samples) = sb.log_summary();
    if n > 0 {
        notes.push(format!(
            "switchboard logged {n} warn/error lines (RUST_LOG=warn), e.g.:"
        ));
        for s in &samples {
            notes.push(format!("    {s}"));
        }
    }
    if !notes.is_empty() {
        println!("\nnotes:");
        for n in &notes {
            println!("  {n}");
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!("\ntotal bench time {elapsed:.1} s");
    let report = json!({
        "mode": "sessions",
        "cores": cores,
        "switchboard_binary": sb_path.display().to_string(),
        "switchboard_release": sb_release,
        "bench_release": !cfg!(debug_assertions),
        "quick": q,
        "nofile_limit": nofile,
        "params": {
            "phases": phases,
            "idle": idle_n,
            "connect_concurrency": args.connect_concurrency,
            "fanout_sessions": fan_sessions,
            "fanout_models": args.fanout_models,
            "cancel_tries": cancel_tries,
            "cancel_model": args.cancel_model,
            "replay_repeats": replay_repeats,
            "replay_models": args.replay_models,
            "event_buffer": args.event_buffer,
            "proxy_workers": args.proxy_workers,
            "mock_workers": args.mock_workers,
            "client_threads": args.client_threads,
        },
        "results": j,
        "switchboard_log": {"lines": n, "samples": samples},
        "notes": notes,
        "elapsed_s": elapsed,
    });
    println!("BENCH_JSON {report}");
    drop(sb);
    drop(mock);
    Ok(())
}

/// One fan-out block of the table and its JSON (`key`).
#[allow(clippy::too_many_arguments)]
fn report_fanout(
    out: &mut String,
    j: &mut serde_json::Map<String, Value>,
    notes: &mut Vec<String>,
    number: &str,
    key: &str,
    models: &[String],
    sessions: usize,
    d: &FanoutOutcome,
    s: &FanoutOutcome,
) {
    out.push_str(&format!(
        "\n{number} {key}: {sessions} sessions x {} models ({}), one turn each; direct = {} HTTP streams\n",
        models.len(),
        models.join(","),
        sessions * models.len()
    ));
    out.push_str(&format!(
        "  {:<44}{:>14}{:>14}{:>14}\n",
        "per-token latency, mock write -> client", "direct", "switchboard", "added"
    ));
    let line = |out: &mut String, label: &str, dv: Option<f64>, sv: Option<f64>, target: &str| {
        let added = match (dv, sv) {
            (Some(a), Some(b)) => fmt_opt(Some(b - a)),
            _ => "-".into(),
        };
        out.push_str(&format!(
            "  {label:<44}{:>14}{:>14}{:>14}  {target}\n",
            fmt_opt(dv),
            fmt_opt(sv),
            added
        ));
    };
    let lat = |o: &FanoutOutcome, p: f64| us_to_ms(pct(&o.lat_us, p));
    let max = |o: &FanoutOutcome| us_to_ms(o.lat_us.last().copied());
    line(out, "p50 (ms)", lat(d, 50.0), lat(s, 50.0), "");
    line(
        out,
        "p99 (ms)",
        lat(d, 99.0),
        lat(s, 99.0),
        "added target < 5",
    );
    line(out, "p99.9 (ms)", lat(d, 99.9), lat(s, 99.9), "");
    line(out, "max (ms)", max(d), max(s), "");
    let rate = |n: u64, o: &FanoutOutcome| n as f64 / o.elapsed_s.max(1e-9);
    let cell2 = |out: &mut String, label: &str, a: String, b: String| {
        out.push_str(&format!("  {label:<44}{a:>14}{b:>14}\n"));
    };
    cell2(
        out,
        "tokens/s",
        format!("{:.0}", rate(d.tokens, d)),
        format!("{:.0}", rate(s.tokens, s)),
    );
    cell2(
        out,
        "events/s (SSE chunks / WS events with id)",
        format!("{:.0}", rate(d.events, d)),
        format!("{:.0}", rate(s.events, s)),
    );
    cell2(
        out,
        "wall time (s)",
        format!("{:.2}", d.elapsed_s),
        format!("{:.2}", s.elapsed_s),
    );
    let per_token = |o: &FanoutOutcome, i: usize| {
        o.cpu_ms[i]
            .filter(|_| o.tokens > 0)
            .map(|ms| ms * 1000.0 / o.tokens as f64)
    };
    let us = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.1}"));
    cell2(
        out,
        "CPU per token: broker (us)",
        "-".into(),
        us(per_token(s, 0)),
    );
    cell2(
        out,
        "CPU per token: mock / bench client (us)",
        format!("{}/{}", us(per_token(d, 1)), us(per_token(d, 2))),
        format!("{}/{}", us(per_token(s, 1)), us(per_token(s, 2))),
    );
    cell2(
        out,
        "new mock connections / streams",
        format!("{}/{}", d.mock_connections, d.streams),
        format!("{}/{}", s.mock_connections, s.streams),
    );
    cell2(
        out,
        "tokens received / expected",
        format!("{}/{}", d.tokens, d.expected_tokens),
        format!("{}/{}", s.tokens, s.expected_tokens),
    );
    cell2(
        out,
        "short streams / failures / id gaps",
        format!("{}/{}/-", d.short_streams, d.failures),
        format!("{}/{}/{}", s.short_streams, s.failures, s.id_anomalies),
    );
    let fj = |o: &FanoutOutcome| {
        json!({
            "lat_p50_ms": lat(o, 50.0),
            "lat_p99_ms": lat(o, 99.0),
            "lat_p999_ms": lat(o, 99.9),
            "lat_max_ms": max(o),
            "tokens": o.tokens,
            "expected_tokens": o.expected_tokens,
            "events": o.events,
            "elapsed_s": o.elapsed_s,
            "tokens_per_s": rate(o.tokens, o),
            "events_per_s": rate(o.events, o),
            "cpu_ms": {"broker": o.cpu_ms[0], "mock": o.cpu_ms[1], "client": o.cpu_ms[2]},
            "cpu_us_per_token": {
                "broker": per_token(o, 0), "mock": per_token(o, 1), "client": per_token(o, 2)
            },
            "short_streams": o.short_streams,
            "streams": o.streams,
            "mock_connections": o.mock_connections,
            "failures": o.failures,
            "id_anomalies": o.id_anomalies,
            "non_stamp_tokens": o.non_stamp,
            "problems": o.problems,
        })
    };
    let added = |p: f64| match (lat(d, p), lat(s, p)) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    j.insert(
        key.into(),
        json!({
            "sessions": sessions,
            "models": models,
            "direct": fj(d),
            "switchboard": fj(s),
            "added_p50_ms": added(50.0),
            "added_p99_ms": added(99.0),
        }),
    );
    for p in &d.problems {
        notes.push(format!("{key} direct: {p}"));
    }
    for p in &s.problems {
        notes.push(format!("{key} switchboard: {p}"));
    }
}
