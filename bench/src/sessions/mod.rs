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
//!
//! # Layout
//!
//! - `mod.rs`: flags, the event and statistics helpers every phase shares;
//! - `idle.rs`: phase 1, idle connections, RSS per connection, reconnect rounds;
//! - `fanout.rs`: phase 2 / 2b, fan-out and paced fan-out, direct vs switchboard, and their table block;
//! - `cancel.rs`: phase 3, `cancel` → `cancelled` and → upstream close;
//! - `replay.rs`: phase 4, resume a full buffer;
//! - `run.rs`: the fd limit, the phase order, the table and `BENCH_JSON`.

mod cancel;
mod fanout;
mod idle;
mod replay;
mod run;

pub use run::run;

use std::borrow::Cow;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};
use tokio::time::timeout;

use crate::client::build_request;
use crate::targets::{self, Switchboard};
use crate::ws::{Msg, WsConn};

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
    /// Memory-comes-back check: the broker runs with `SWITCHBOARD_SESSION_TTL_S` = this, and
    /// after the reconnect rounds the idle phase waits until every session has expired, then
    /// reads RSS again (compare with RSS before the connections came). Off by default (TTL 1800 s).
    #[arg(long)]
    pub expire_ttl_s: Option<u64>,
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

/// `GET path` with the admin key; the JSON body on 200.
async fn get_json(sb: &Switchboard, path: &str) -> Option<Value> {
    let req = build_request("GET", sb.addr, path, &[("X-API-Key", &sb.admin_key)], None);
    match targets::one_shot(sb.addr, &req).await {
        Ok((200, body)) => serde_json::from_str(&body).ok(),
        _ => None,
    }
}

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

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}
