//! `bench`: the same loopback load against the mock backend directly, through
//! switchboard and through nginx, in one run; see README.md.
//!
//! - [`client`]: the hand-written HTTP/1.1 client (keep-alive, chunked, SSE scan).
//! - [`load`]: closed-loop load runs and the cancel probe.
//! - [`scale`]: open-loop load (fixed rate, latency from the schedule) and crowds of
//!   streams (a burst of stream starts, thousands of slow streams) with proxy RSS.
//! - [`targets`]: child processes (switchboard, nginx) and their temp dirs.
//! - this file: flags, the measurement plan, the table and the JSON line.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod client;
mod load;
mod scale;
mod sessions;
mod targets;
mod ws;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use mockllm::{MockHandle, MockServer};
use serde_json::{json, Value};

use crate::client::build_request;
use crate::load::{CancelOutcome, Outcome, Spec};
use crate::targets::{Nginx, Switchboard, SwitchboardOpts};

const ALL_TARGETS: [&str; 3] = ["direct", "switchboard", "nginx"];
/// Phases of the gateway bench, in run order (`--phases`).
const ALL_PHASES: [&str; 6] = ["closed", "stream", "cancel", "open", "burst", "slow"];

/// Loopback benchmark: mock backend direct vs through switchboard vs through nginx.
#[derive(Debug, Parser)]
#[command(name = "bench", about, long_about = None)]
struct Args {
    /// Without a subcommand: the gateway bench (direct vs switchboard vs nginx).
    #[command(subcommand)]
    command: Option<Mode>,
    /// Small counts for a smoke run (< 30 s in total).
    #[arg(long)]
    quick: bool,
    /// Comma-separated targets, in run order.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "direct,switchboard,nginx"
    )]
    targets: Vec<String>,
    /// switchboard binary [default: <workspace>/target/release/switchboard, else next to this binary].
    #[arg(long)]
    switchboard: Option<PathBuf>,
    /// nginx binary [default: from PATH or /usr/sbin].
    #[arg(long)]
    nginx: Option<PathBuf>,
    /// Skip the nginx target.
    #[arg(long)]
    no_nginx: bool,
    /// Requests of the high-concurrency run [default: 20000, quick 2000].
    #[arg(long)]
    requests: Option<u64>,
    /// Make the high-concurrency run timed: this many seconds instead of --requests.
    #[arg(long)]
    duration: Option<f64>,
    /// Requests of the concurrency-1 run [default: 2000, quick 300].
    #[arg(long)]
    requests_c1: Option<u64>,
    /// Streams of the streaming run [default: 2000, quick 300].
    #[arg(long)]
    streams: Option<u64>,
    /// Cancel probes per target [default: 50, quick 10].
    #[arg(long)]
    cancel_tries: Option<u32>,
    /// Warm-up requests per target before measuring [default: 500, quick 200].
    #[arg(long)]
    warmup: Option<u64>,
    /// Concurrency of the high-concurrency run.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Concurrency of the streaming run.
    #[arg(long, default_value_t = 16)]
    stream_concurrency: usize,
    /// Worker threads/processes of switchboard and nginx.
    #[arg(long, default_value_t = 2)]
    proxy_workers: usize,
    /// Worker threads of the in-process mock backend.
    #[arg(long, default_value_t = 2)]
    mock_workers: usize,
    /// Threads of the load generator (1 = a single-threaded runtime).
    #[arg(long, default_value_t = 1)]
    client_threads: usize,
    /// Model of the non-streaming runs (a plain name: short reply, no delay).
    #[arg(long, default_value = "bench")]
    model: String,
    /// Model of the streaming run.
    #[arg(long, default_value = "d1")]
    stream_model: String,
    /// Model of the cancel probe (must stream slowly for a while).
    #[arg(long, default_value = "d50-w400")]
    cancel_model: String,
    /// Phases to run after the warm-up: closed (c=1 and c=N), stream, cancel, open, burst, slow.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "closed,stream,cancel,open,burst,slow"
    )]
    phases: Vec<String>,
    /// Open loop: offered requests per second (latency from the scheduled send time).
    #[arg(long, default_value_t = 10_000.0)]
    rate: f64,
    /// Open loop: keep-alive connections the rate is spread over.
    #[arg(long, default_value_t = 64)]
    open_connections: usize,
    /// Open loop: seconds of offered load [default: 5, quick 2].
    #[arg(long)]
    open_duration: Option<f64>,
    /// Burst: streams started at the same instant [default: 1000, quick 200].
    #[arg(long)]
    burst: Option<usize>,
    /// Slow streams: concurrent streams [default: 10000, quick 1000].
    #[arg(long)]
    slow_streams: Option<usize>,
    /// Slow streams: starts spread evenly over this many ms (all are open at once after it).
    #[arg(long, default_value_t = 1000)]
    slow_spread_ms: u64,
    /// Model of the burst and slow-stream phases (`dN-wM`: M tokens, N ms apart).
    #[arg(long, default_value = "d50-w64")]
    scale_model: String,
}

/// Other benchmarks.
#[derive(Debug, clap::Subcommand)]
enum Mode {
    /// WebSocket thread sessions: idle memory, fan-out latency, cancel, replay.
    Sessions(sessions::SessionsArgs),
}

/// Counts and limits derived from the flags.
#[derive(Debug, Clone)]
struct Plan {
    warmup: u64,
    c1_requests: u64,
    load_requests: u64,
    load_duration: Option<Duration>,
    load_c: usize,
    streams: u64,
    stream_c: usize,
    cancel_tries: u32,
    cancel_wait: Duration,
    time_limit: Duration,
    request_timeout: Duration,
    model: String,
    stream_model: String,
    cancel_model: String,
    phases: Vec<String>,
    rate: f64,
    open_connections: usize,
    open_duration: Duration,
    burst: usize,
    slow_streams: usize,
    slow_spread: Duration,
    scale_model: String,
}

impl Plan {
    fn has(&self, phase: &str) -> bool {
        self.phases.iter().any(|p| p == phase)
    }

    fn from_args(a: &Args) -> Result<Plan, String> {
        let q = a.quick;
        let load_duration = match a.duration {
            Some(s) if s.is_finite() && s > 0.0 && s <= 600.0 => Some(Duration::from_secs_f64(s)),
            Some(s) => return Err(format!("--duration must be in (0, 600] seconds, got {s}")),
            None => None,
        };
        if a.concurrency == 0 || a.concurrency > 4096 {
            return Err("--concurrency must be 1..=4096".into());
        }
        if a.stream_concurrency == 0 || a.stream_concurrency > 4096 {
            return Err("--stream-concurrency must be 1..=4096".into());
        }
        let mut phases = Vec::new();
        for p in &a.phases {
            let p = p.trim().to_ascii_lowercase();
            if !ALL_PHASES.contains(&p.as_str()) {
                return Err(format!(
                    "unknown phase {p:?}; expected some of {}",
                    ALL_PHASES.join(",")
                ));
            }
            phases.push(p);
        }
        if !(a.rate.is_finite() && a.rate > 0.0 && a.rate <= 1e6) {
            return Err("--rate must be in (0, 1000000]".into());
        }
        if a.open_connections == 0 || a.open_connections > 4096 {
            return Err("--open-connections must be 1..=4096".into());
        }
        let open_s = a.open_duration.unwrap_or(if q { 2.0 } else { 5.0 });
        if !(open_s.is_finite() && open_s > 0.0 && open_s <= 120.0) {
            return Err("--open-duration must be in (0, 120] seconds".into());
        }
        Ok(Plan {
            phases,
            rate: a.rate,
            open_connections: a.open_connections,
            open_duration: Duration::from_secs_f64(open_s),
            burst: a
                .burst
                .unwrap_or(if q { 200 } else { 1000 })
                .clamp(1, 50_000),
            slow_streams: a
                .slow_streams
                .unwrap_or(if q { 1000 } else { 10_000 })
                .clamp(1, 50_000),
            slow_spread: Duration::from_millis(a.slow_spread_ms.min(60_000)),
            scale_model: a.scale_model.clone(),
            warmup: a.warmup.unwrap_or(if q { 200 } else { 500 }),
            c1_requests: a.requests_c1.unwrap_or(if q { 300 } else { 2000 }),
            load_requests: a.requests.unwrap_or(if q { 2000 } else { 20_000 }),
            load_duration,
            load_c: a.concurrency,
            streams: a.streams.unwrap_or(if q { 300 } else { 2000 }),
            stream_c: a.stream_concurrency,
            cancel_tries: a
                .cancel_tries
                .unwrap_or(if q { 10 } else { 50 })
                .min(10_000),
            cancel_wait: Duration::from_secs(if q { 2 } else { 3 }),
            time_limit: Duration::from_secs(if q { 20 } else { 300 }),
            request_timeout: Duration::from_secs(if q { 10 } else { 30 }),
            model: a.model.clone(),
            stream_model: a.stream_model.clone(),
            cancel_model: a.cancel_model.clone(),
        })
    }
}

fn main() -> ExitCode {
    let mut args = Args::parse();
    if let Some(Mode::Sessions(s)) = args.command.take() {
        return sessions_main(s);
    }
    // The crowd phases hold one client fd per stream, and the in-process mock one more
    // per proxied stream; the proxies inherit the limit.
    let crowd = args
        .slow_streams
        .unwrap_or(if args.quick { 1000 } else { 10_000 })
        .max(args.burst.unwrap_or(1000));
    let (nofile, note) = targets::ensure_nofile(2 * crowd as u64 + 1000);
    let runtime = if args.client_threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.client_threads)
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bench: cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Ctrl-C drops `run` (and with it every child-process guard) instead of
    // leaving switchboard and nginx behind.
    let result = runtime.block_on(async {
        tokio::select! {
            r = run(args, nofile, note.into_iter().collect()) => r,
            _ = tokio::signal::ctrl_c() => Err("interrupted; child processes stopped".to_string()),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn sessions_main(args: sessions::SessionsArgs) -> ExitCode {
    let idle = args.idle.unwrap_or(if args.quick { 500 } else { 10_000 });
    let (nofile, note) = targets::ensure_nofile(idle as u64 + 500);
    let runtime = if args.client_threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.client_threads)
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bench: cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let notes: Vec<String> = note.into_iter().collect();
    let result = runtime.block_on(async {
        tokio::select! {
            r = sessions::run(args, nofile, notes) => r,
            _ = tokio::signal::ctrl_c() => Err("interrupted; child processes stopped".to_string()),
        }
    });
    // Connection tasks may still hold sockets; do not wait for them.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Per-target measurements.
#[derive(Debug, Default)]
struct TargetResult {
    metrics: BTreeMap<&'static str, f64>,
    errors: u64,
    statuses: BTreeMap<u16, u64>,
    incomplete: u64,
    server_closes: u64,
    connects: u64,
    truncated: Vec<&'static str>,
    cancel_missed: u32,
    cancel_errors: u32,
    problems: Vec<String>,
}

impl TargetResult {
    fn absorb(&mut self, phase: &'static str, o: &Outcome, timed: bool) {
        self.errors += o.errors;
        for (s, n) in &o.statuses {
            *self.statuses.entry(*s).or_default() += n;
        }
        self.incomplete += o.incomplete;
        self.server_closes += o.server_closes;
        self.connects += o.connects;
        if o.truncated && !timed {
            self.truncated.push(phase);
        }
        for p in &o.problems {
            if self.problems.len() < 8 {
                self.problems.push(format!("{phase}: {p}"));
            }
        }
    }

    fn absorb_cancel(&mut self, c: &CancelOutcome) {
        self.cancel_missed += c.missed;
        self.cancel_errors += c.errors;
        for p in &c.problems {
            if self.problems.len() < 8 {
                self.problems.push(format!("cancel: {p}"));
            }
        }
    }
}

/// Nearest-rank percentile of nanosecond samples, in ms.
fn pct_ms(sorted: &[u64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let n = sorted.len();
    let rank = ((p / 100.0) * n as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, n) - 1] as f64 / 1e6)
}

fn pct_f(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let n = sorted.len();
    let rank = ((p / 100.0) * n as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, n) - 1])
}

fn chat_body(model: &str, stream: bool) -> Vec<u8> {
    let mut body = json!({
        "model": model,
        "messages": [{"role": "user", "content": "hi"}],
    });
    if stream {
        body["stream"] = Value::Bool(true);
    }
    body.to_string().into_bytes()
}

fn chat_request(addr: SocketAddr, model: &str, stream: bool) -> Arc<Vec<u8>> {
    Arc::new(build_request(
        "POST",
        addr,
        "/v1/chat/completions",
        &[],
        Some(&chat_body(model, stream)),
    ))
}

fn progress(target: &str, phase: &str, o: &Outcome) {
    eprintln!(
        "  [{target}] {phase}: {} ok, {} errors, {} non-200, {} incomplete in {:.2} s",
        o.ok,
        o.errors,
        o.non_200(),
        o.incomplete,
        o.elapsed.as_secs_f64()
    );
}

/// Waits until a plain chat request through `addr` answers 200 (up to 10 s).
async fn sanity(addr: SocketAddr, plan: &Plan) -> Result<(), String> {
    let req = chat_request(addr, &plan.model, false);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = String::new();
    while Instant::now() < deadline {
        match targets::one_shot(addr, &req).await {
            Ok((200, _)) => return Ok(()),
            Ok((s, body)) => last = format!("HTTP {s}: {}", body.trim()),
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!(
        "no 200 from a plain chat request within 10 s; last: {last}"
    ))
}

async fn bench_target(
    name: &str,
    addr: SocketAddr,
    proxy_pid: Option<u32>,
    plan: &Plan,
    mock: &MockHandle,
) -> Result<TargetResult, String> {
    sanity(addr, plan).await?;
    let mut r = TargetResult::default();
    let chat = chat_request(addr, &plan.model, false);
    let stream = chat_request(addr, &plan.stream_model, true);
    let cancel = chat_request(addr, &plan.cancel_model, true);
    let spec = |request: &Arc<Vec<u8>>, concurrency: usize, n: u64, stream: bool| Spec {
        addr,
        request: Arc::clone(request),
        concurrency,
        max_requests: n,
        time_limit: plan.time_limit,
        request_timeout: plan.request_timeout,
        stream,
    };
    let settle = || tokio::time::sleep(Duration::from_millis(200));

    // Warm-up: fill connection pools at the load concurrency, plus some streams.
    let w = load::run(spec(&chat, plan.load_c, plan.warmup, false)).await;
    progress(name, "warm-up", &w);
    r.absorb("warm-up", &w, false);
    let ws = load::run(spec(
        &stream,
        plan.stream_c,
        (plan.warmup / 10).max(16),
        true,
    ))
    .await;
    r.absorb("warm-up streams", &ws, false);
    settle().await;

    if plan.has("closed") {
        closed_loop(
            name,
            proxy_pid,
            plan,
            &mut r,
            &spec(&chat, 1, plan.c1_requests, false),
            spec(&chat, plan.load_c, plan.load_requests, false),
        )
        .await;
    }
    if plan.has("stream") {
        let cpu_before = proxy_pid.map(targets::process_tree_cpu);
        let st = load::run(spec(&stream, plan.stream_c, plan.streams, true)).await;
        per_unit_cpu(&mut r, "stream_cpu_us", proxy_pid, cpu_before, st.ok);
        stream_phase(name, plan, &mut r, &st);
        settle().await;
    }
    if plan.has("cancel") {
        cancel_phase(name, addr, plan, mock, &mut r, &cancel).await;
        settle().await;
    }
    if plan.has("open") {
        open_phase(name, addr, proxy_pid, plan, &mut r, &chat).await;
        settle().await;
    }
    let scale = chat_request(addr, &plan.scale_model, true);
    for phase in ["burst", "slow"] {
        if plan.has(phase) {
            crowd_phase(name, phase, addr, proxy_pid, plan, &mut r, &scale).await;
            settle().await;
        }
    }
    Ok(r)
}

/// Proxy CPU per unit of work (µs), when the proxy is a process of its own.
fn per_unit_cpu(
    r: &mut TargetResult,
    key: &'static str,
    pid: Option<u32>,
    before: Option<Duration>,
    units: u64,
) {
    if let (Some(pid), Some(before)) = (pid, before) {
        let used = targets::process_tree_cpu(pid).saturating_sub(before);
        put(
            r,
            key,
            (units > 0).then(|| used.as_secs_f64() * 1e6 / units as f64),
        );
    }
}

/// Chat at c=1, then closed loop at c=N with proxy CPU per request.
async fn closed_loop(
    name: &str,
    proxy_pid: Option<u32>,
    plan: &Plan,
    r: &mut TargetResult,
    c1_spec: &Spec,
    mut load_spec: Spec,
) {
    let settle = || tokio::time::sleep(Duration::from_millis(200));
    let c1 = load::run(c1_spec.clone()).await;
    progress(name, "chat c=1", &c1);
    r.absorb("chat c=1", &c1, false);
    let mut lat = c1.latencies_ns.clone();
    lat.sort_unstable();
    put(r, "chat_c1_p50_ms", pct_ms(&lat, 50.0));
    put(r, "chat_c1_p99_ms", pct_ms(&lat, 99.0));
    settle().await;

    if let Some(d) = plan.load_duration {
        load_spec.max_requests = 1_000_000_000;
        load_spec.time_limit = d;
    }
    let cpu_before = proxy_pid.map(targets::process_tree_cpu);
    let cn = load::run(load_spec).await;
    per_unit_cpu(
        r,
        "chat_load_cpu_us",
        proxy_pid,
        cpu_before,
        cn.ok + cn.non_200(),
    );
    progress(name, &format!("chat c={}", plan.load_c), &cn);
    r.absorb("chat load", &cn, plan.load_duration.is_some());
    let mut lat = cn.latencies_ns.clone();
    lat.sort_unstable();
    put(r, "chat_load_p50_ms", pct_ms(&lat, 50.0));
    put(r, "chat_load_p99_ms", pct_ms(&lat, 99.0));
    put(r, "chat_load_max_ms", lat.last().map(|&n| n as f64 / 1e6));
    put(r, "chat_load_rps", (cn.ok > 0).then(|| cn.rps()));
    settle().await;
}

/// The stream c=N figures of a finished run.
fn stream_phase(name: &str, plan: &Plan, r: &mut TargetResult, st: &Outcome) {
    progress(name, &format!("stream c={}", plan.stream_c), st);
    r.absorb("stream", st, false);
    let mut ttft = st.ttft_ns.clone();
    ttft.sort_unstable();
    let mut total = st.latencies_ns.clone();
    total.sort_unstable();
    put(r, "ttft_p50_ms", pct_ms(&ttft, 50.0));
    put(r, "ttft_p99_ms", pct_ms(&ttft, 99.0));
    put(r, "stream_total_p50_ms", pct_ms(&total, 50.0));
    let mut gaps = st.max_gap_ns.clone();
    gaps.sort_unstable();
    put(r, "stream_max_gap_p50_ms", pct_ms(&gaps, 50.0));
    put(r, "stream_max_gap_p99_ms", pct_ms(&gaps, 99.0));
}

/// Cancel → upstream close, sequential tries.
async fn cancel_phase(
    name: &str,
    addr: SocketAddr,
    plan: &Plan,
    mock: &MockHandle,
    r: &mut TargetResult,
    cancel: &[u8],
) {
    let c = load::cancel_probe(
        addr,
        cancel,
        mock,
        &plan.cancel_model,
        plan.cancel_tries,
        plan.cancel_wait,
        plan.time_limit,
    )
    .await;
    eprintln!(
        "  [{name}] cancel: {} measured, {} missed, {} errors",
        c.delays_ms.len(),
        c.missed,
        c.errors
    );
    r.absorb_cancel(&c);
    let mut d = c.delays_ms.clone();
    d.sort_by(f64::total_cmp);
    put(r, "cancel_p50_ms", pct_f(&d, 50.0));
    put(r, "cancel_p99_ms", pct_f(&d, 99.0));
    put(r, "cancel_max_ms", d.last().copied());
    let mut d = c.at_ms_delays_ms.clone();
    d.sort_by(f64::total_cmp);
    put(r, "cancel_at_ms_p50_ms", pct_f(&d, 50.0));
    put(r, "cancel_at_ms_p99_ms", pct_f(&d, 99.0));
}

/// Open loop at `--rate` over `--open-connections`, latency from the schedule.
async fn open_phase(
    name: &str,
    addr: SocketAddr,
    proxy_pid: Option<u32>,
    plan: &Plan,
    r: &mut TargetResult,
    chat: &Arc<Vec<u8>>,
) {
    let cpu_before = proxy_pid.map(targets::process_tree_cpu);
    let o = scale::open_loop(scale::OpenSpec {
        addr,
        request: Arc::clone(chat),
        rate: plan.rate,
        connections: plan.open_connections,
        duration: plan.open_duration,
        request_timeout: plan.request_timeout,
    })
    .await;
    per_unit_cpu(r, "open_cpu_us", proxy_pid, cpu_before, o.ok);
    eprintln!(
        "  [{name}] open loop {:.0}/s: {} scheduled, {} ok, {} errors, {} non-200, {:.0} req/s achieved",
        plan.rate,
        o.scheduled,
        o.ok,
        o.errors,
        o.statuses.values().sum::<u64>(),
        o.achieved_rps()
    );
    r.errors += o.errors;
    for (s, n) in &o.statuses {
        *r.statuses.entry(*s).or_default() += n;
    }
    for p in &o.problems {
        r.problems.push(format!("open loop: {p}"));
    }
    put(r, "open_p50_ms", pct_ms(&o.latencies_ns, 50.0));
    put(r, "open_p99_ms", pct_ms(&o.latencies_ns, 99.0));
    put(r, "open_p999_ms", pct_ms(&o.latencies_ns, 99.9));
    put(r, "open_rps", (o.ok > 0).then(|| o.achieved_rps()));
    put(r, "open_lag_p99_ms", pct_ms(&o.send_lag_ns, 99.0));
    if o.ok > 0 && o.achieved_rps() < 0.95 * plan.rate {
        r.problems.push(format!(
            "open loop saturated: {:.0} of {:.0} req/s offered; its latency is queueing, not the proxy's cost",
            o.achieved_rps(),
            plan.rate
        ));
    }
}

/// A crowd of streams of `--scale-model`: `burst` (all at once) or `slow` (spread).
async fn crowd_phase(
    name: &str,
    phase: &'static str,
    addr: SocketAddr,
    proxy_pid: Option<u32>,
    plan: &Plan,
    r: &mut TargetResult,
    request: &Arc<Vec<u8>>,
) {
    let (streams, spread) = if phase == "burst" {
        (plan.burst, Duration::ZERO)
    } else {
        (plan.slow_streams, plan.slow_spread)
    };
    let o = scale::crowd(scale::CrowdSpec {
        addr,
        request: Arc::clone(request),
        streams,
        spread,
        connect_concurrency: 200,
        proxy_pid,
        stream_timeout: plan.request_timeout,
    })
    .await;
    eprintln!(
        "  [{name}] {phase}: {streams} streams, {} complete, {} connect failures, {} errors, {} incomplete in {:.2} s",
        o.completed,
        o.connect_failed,
        o.errors,
        o.incomplete,
        o.elapsed.as_secs_f64()
    );
    r.errors += o.errors + o.connect_failed;
    r.incomplete += o.incomplete;
    for p in &o.problems {
        r.problems.push(format!("{phase}: {p}"));
    }
    let key = |k: &str| -> &'static str {
        match (phase, k) {
            ("burst", "ttft50") => "burst_ttft_p50_ms",
            ("burst", "ttft99") => "burst_ttft_p99_ms",
            ("burst", "total50") => "burst_total_p50_ms",
            ("burst", "total99") => "burst_total_p99_ms",
            ("burst", "done") => "burst_completed",
            ("burst", "rss") => "burst_rss_kb_per_stream",
            ("burst", _) => "burst_cpu_us",
            (_, "ttft50") => "slow_ttft_p50_ms",
            (_, "ttft99") => "slow_ttft_p99_ms",
            (_, "total50") => "slow_total_p50_ms",
            (_, "total99") => "slow_total_p99_ms",
            (_, "done") => "slow_completed",
            (_, "rss") => "slow_rss_kb_per_stream",
            _ => "slow_cpu_us",
        }
    };
    put(r, key("ttft50"), pct_ms(&o.ttft_ns, 50.0));
    put(r, key("ttft99"), pct_ms(&o.ttft_ns, 99.0));
    put(r, key("total50"), pct_ms(&o.total_ns, 50.0));
    put(r, key("total99"), pct_ms(&o.total_ns, 99.0));
    put(r, key("done"), Some(o.completed as f64));
    put(r, key("rss"), o.rss_per_stream_kb(streams));
    put(
        r,
        key("cpu"),
        o.cpu
            .filter(|_| o.completed > 0)
            .map(|c| c.as_secs_f64() * 1e6 / o.completed as f64),
    );
    if phase == "slow" {
        let ideal = scale::ideal_stream_ms(&plan.scale_model);
        let p99 = pct_ms(&o.total_ns, 99.0);
        put(r, "slow_ideal_ms", ideal);
        put(
            r,
            "slow_total_p99_over_ideal_pct",
            ideal
                .zip(p99)
                .filter(|(i, _)| *i > 0.0)
                .map(|(i, p)| (p / i - 1.0) * 100.0),
        );
    }
    if let (Some(b), Some(p)) = (o.rss_before_kb, o.rss_peak_kb) {
        r.problems.push(format!(
            "{phase}: proxy RSS {:.1} MiB before, {:.1} MiB at peak",
            b as f64 / 1024.0,
            p as f64 / 1024.0
        ));
    }
}

fn put(r: &mut TargetResult, key: &'static str, v: Option<f64>) {
    if let Some(v) = v {
        r.metrics.insert(key, v);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Ms,
    Rps,
    /// Microseconds of proxy CPU (user + system). Shown for proxies only: the `direct`
    /// column has none (the mock runs inside the bench), so there is no "added" cell.
    Us,
    /// A count (completed streams).
    Count,
    /// KiB of proxy RSS (proxies only, like `Us`).
    Kb,
    /// A percentage.
    Pct,
}

struct Row {
    key: &'static str,
    label: String,
    kind: Kind,
}

fn rows(plan: &Plan) -> Vec<Row> {
    let lc = plan.load_c;
    let sc = plan.stream_c;
    let ol = format!("{:.0}/s x{}", plan.rate, plan.open_connections);
    let b = plan.burst;
    let sl = plan.slow_streams;
    let ms = |key, label: String| Row {
        key,
        label,
        kind: Kind::Ms,
    };
    vec![
        ms("chat_c1_p50_ms", "chat c=1 p50 (ms)".into()),
        ms("chat_c1_p99_ms", "chat c=1 p99 (ms)".into()),
        ms("chat_load_p50_ms", format!("chat c={lc} p50 (ms)")),
        ms("chat_load_p99_ms", format!("chat c={lc} p99 (ms)")),
        ms("chat_load_max_ms", format!("chat c={lc} max (ms)")),
        Row {
            key: "chat_load_rps",
            label: format!("chat c={lc} requests/s"),
            kind: Kind::Rps,
        },
        Row {
            key: "chat_load_cpu_us",
            label: format!("chat c={lc} proxy CPU/request (us)"),
            kind: Kind::Us,
        },
        ms("ttft_p50_ms", format!("stream c={sc} TTFT p50 (ms)")),
        ms("ttft_p99_ms", format!("stream c={sc} TTFT p99 (ms)")),
        ms(
            "stream_total_p50_ms",
            format!("stream c={sc} full p50 (ms)"),
        ),
        ms(
            "stream_max_gap_p50_ms",
            format!("stream c={sc} max gap p50 (ms)"),
        ),
        ms(
            "stream_max_gap_p99_ms",
            format!("stream c={sc} max gap p99 (ms)"),
        ),
        ms("cancel_p50_ms", "cancel->upstream close p50 (ms)".into()),
        ms("cancel_p99_ms", "cancel->upstream close p99 (ms)".into()),
        ms("cancel_max_ms", "cancel->upstream close max (ms)".into()),
        Row {
            key: "stream_cpu_us",
            label: format!("stream c={sc} proxy CPU/stream (us)"),
            kind: Kind::Us,
        },
        ms("open_p50_ms", format!("open {ol} p50 (ms)")),
        ms("open_p99_ms", format!("open {ol} p99 (ms)")),
        ms("open_p999_ms", format!("open {ol} p99.9 (ms)")),
        Row {
            key: "open_rps",
            label: format!("open {ol} achieved req/s"),
            kind: Kind::Rps,
        },
        Row {
            key: "open_cpu_us",
            label: format!("open {ol} proxy CPU/req (us)"),
            kind: Kind::Us,
        },
        ms("open_lag_p99_ms", format!("open {ol} client send lag p99")),
        ms("burst_ttft_p50_ms", format!("burst {b}: TTFT p50 (ms)")),
        ms("burst_ttft_p99_ms", format!("burst {b}: TTFT p99 (ms)")),
        ms("burst_total_p99_ms", format!("burst {b}: total p99 (ms)")),
        Row {
            key: "burst_completed",
            label: format!("burst {b}: completed"),
            kind: Kind::Count,
        },
        Row {
            key: "burst_rss_kb_per_stream",
            label: format!("burst {b}: proxy RSS/stream (KiB)"),
            kind: Kind::Kb,
        },
        Row {
            key: "burst_cpu_us",
            label: format!("burst {b}: proxy CPU/stream (us)"),
            kind: Kind::Us,
        },
        Row {
            key: "slow_completed",
            label: format!("slow {sl}: completed"),
            kind: Kind::Count,
        },
        ms("slow_total_p50_ms", format!("slow {sl}: total p50 (ms)")),
        ms("slow_total_p99_ms", format!("slow {sl}: total p99 (ms)")),
        Row {
            key: "slow_total_p99_over_ideal_pct",
            label: format!("slow {sl}: p99 over ideal (%)"),
            kind: Kind::Pct,
        },
        ms("slow_ttft_p99_ms", format!("slow {sl}: TTFT p99 (ms)")),
        Row {
            key: "slow_rss_kb_per_stream",
            label: format!("slow {sl}: proxy RSS/stream (KiB)"),
            kind: Kind::Kb,
        },
        Row {
            key: "slow_cpu_us",
            label: format!("slow {sl}: proxy CPU/stream (us)"),
            kind: Kind::Us,
        },
    ]
}

/// The issue-14 figures as switchboard ÷ nginx (label, metric key, target ratio).
const NGINX_RATIOS: [(&str, &str, Option<f64>); 6] = [
    (
        "CPU per request (closed loop)",
        "chat_load_cpu_us",
        Some(1.3),
    ),
    ("CPU per request (open loop)", "open_cpu_us", Some(1.3)),
    ("CPU per stream (stream c=N)", "stream_cpu_us", Some(1.0)),
    ("TTFT p50 (stream c=N)", "ttft_p50_ms", None),
    ("TTFT p50 (burst)", "burst_ttft_p50_ms", Some(1.2)),
    ("RSS per stream (burst)", "burst_rss_kb_per_stream", None),
];

/// Appends the switchboard ÷ nginx block (and the open-loop added p99 of both) to the
/// table; returns the ratios for the JSON line.
fn nginx_ratios(results: &[(String, TargetResult)], out: &mut String) -> Value {
    let get = |t: &str| results.iter().find(|(n, _)| n == t).map(|(_, r)| r);
    let (Some(sb), Some(ng)) = (get("switchboard"), get("nginx")) else {
        return Value::Null;
    };
    let mut j = serde_json::Map::new();
    out.push_str(&format!(
        "\n{:<40}{:>13}{:>13}{:>13}\n",
        "switchboard / nginx (same run)", "ratio", "target", "met"
    ));
    for (label, key, target) in NGINX_RATIOS {
        let (Some(a), Some(b)) = (sb.metrics.get(key), ng.metrics.get(key)) else {
            continue;
        };
        if *b <= 0.0 {
            continue;
        }
        let ratio = a / b;
        let (t, met) = match target {
            Some(t) => (format!("<= {t:.1}"), if ratio <= t { "yes" } else { "no" }),
            None => ("-".into(), "-"),
        };
        out.push_str(&format!(
            "{label:<40}{:>13}{t:>13}{met:>13}\n",
            format!("{ratio:.2}x")
        ));
        j.insert(key.to_string(), json!(ratio));
    }
    if let Some(d) = get("direct").and_then(|d| d.metrics.get("open_p99_ms")) {
        for (name, r) in [("switchboard", sb), ("nginx", ng)] {
            if let Some(p) = r.metrics.get("open_p99_ms") {
                let added = p - d;
                out.push_str(&format!(
                    "{:<40}{:>13}{:>13}{:>13}\n",
                    format!("open loop p99 added over direct: {name}"),
                    format!("{added:+.3} ms"),
                    "<= 1 ms",
                    if added <= 1.0 { "yes" } else { "no" }
                ));
                j.insert(format!("open_p99_added_ms_{name}"), json!(added));
            }
        }
    }
    Value::Object(j)
}

fn fmt(v: Option<f64>, kind: Kind) -> String {
    match (v, kind) {
        (None, _) => "-".into(),
        (Some(v), Kind::Rps) => format!("{v:.0}"),
        (Some(v), Kind::Us | Kind::Kb) => format!("{v:.1}"),
        (Some(v), Kind::Count) => format!("{v:.0}"),
        (Some(v), Kind::Pct) => format!("{v:+.1}%"),
        (Some(v), Kind::Ms) if v.abs() >= 100.0 => format!("{v:.1}"),
        (Some(v), Kind::Ms) => format!("{v:.3}"),
    }
}

fn build_kind(path: &Path) -> Option<bool> {
    let parts: Vec<String> = path
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.iter().any(|p| p == "release") {
        Some(true)
    } else if parts.iter().any(|p| p == "debug") {
        Some(false)
    } else {
        None
    }
}

fn resolve_switchboard(flag: Option<&PathBuf>) -> PathBuf {
    if let Some(p) = flag {
        return p.clone();
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let default = workspace.join("target/release/switchboard");
    if default.is_file() {
        return default;
    }
    // Built together with this binary into the same target dir.
    if let Some(sibling) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("switchboard")))
        .filter(|p| p.is_file())
    {
        return sibling;
    }
    default
}

async fn run(args: Args, nofile: Option<u64>, mut notes: Vec<String>) -> Result<(), String> {
    let mut plan = Plan::from_args(&args)?;
    if let Some(limit) = nofile {
        let room = usize::try_from(limit.saturating_sub(1000) / 2).unwrap_or(usize::MAX);
        for (what, n) in [
            ("slow streams", &mut plan.slow_streams),
            ("burst", &mut plan.burst),
        ] {
            if *n > room {
                notes.push(format!(
                    "{what} capped at {room} (from {n}) by RLIMIT_NOFILE {limit}; run as root or raise `ulimit -Hn`"
                ));
                *n = room;
            }
        }
    }
    let mut wanted: Vec<String> = Vec::new();
    for t in &args.targets {
        let t = t.trim().to_ascii_lowercase();
        if !ALL_TARGETS.contains(&t.as_str()) {
            return Err(format!(
                "unknown target {t:?}; expected some of direct,switchboard,nginx"
            ));
        }
        if !wanted.contains(&t) {
            wanted.push(t);
        }
    }
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let started = Instant::now();
    if cfg!(debug_assertions) {
        notes
            .push("the bench itself is a debug build; use --release for meaningful numbers".into());
    }

    let mock = crate::start_mock(args.mock_workers)?;
    let mock_url = mock.url();

    // Start the proxies; a target that cannot start is reported and skipped.
    let sb_path = resolve_switchboard(args.switchboard.as_ref());
    let sb_release = build_kind(&sb_path);
    let mut switchboard: Option<Switchboard> = None;
    let mut nginx: Option<Nginx> = None;
    // (target, address, process whose tree is the proxy: its CPU is measured)
    let mut live: Vec<(String, SocketAddr, Option<u32>)> = Vec::new();
    let mut skipped: Vec<(String, String)> = Vec::new();
    for t in &wanted {
        match t.as_str() {
            "direct" => live.push((t.clone(), mock.addr(), None)),
            "switchboard" => {
                if !sb_path.is_file() {
                    skipped.push((
                        t.clone(),
                        format!(
                            "binary {} not found (cargo build --release -p switchboard, or --switchboard PATH)",
                            sb_path.display()
                        ),
                    ));
                    continue;
                }
                let started = Switchboard::start(&SwitchboardOpts {
                    binary: &sb_path,
                    workers: args.proxy_workers,
                    extra_env: &[("SWITCHBOARD_MAX_CONNECTIONS_PER_IP", "0".into())],
                });
                let sb = match started {
                    Ok(sb) => sb,
                    Err(e) => {
                        skipped.push((t.clone(), e));
                        continue;
                    }
                };
                let mut failed = None;
                for m in [
                    &plan.model,
                    &plan.stream_model,
                    &plan.cancel_model,
                    &plan.scale_model,
                ] {
                    if let Err(e) = sb.register(m, &mock_url).await {
                        failed = Some(e);
                        break;
                    }
                }
                if let Some(e) = failed {
                    skipped.push((t.clone(), e));
                    continue;
                }
                eprintln!("switchboard {} at http://{}", sb_path.display(), sb.addr);
                live.push((t.clone(), sb.addr, Some(sb.pid())));
                switchboard = Some(sb);
            }
            _ => {
                if args.no_nginx {
                    skipped.push((t.clone(), "--no-nginx".into()));
                    continue;
                }
                let Some(bin) = args.nginx.clone().or_else(targets::find_nginx) else {
                    skipped.push((
                        t.clone(),
                        "nginx is not installed (apt-get install -y nginx) or use --nginx PATH"
                            .into(),
                    ));
                    continue;
                };
                match Nginx::start(&bin, mock.addr(), args.proxy_workers) {
                    Ok(n) => {
                        eprintln!("nginx {} at http://{}", bin.display(), n.addr);
                        live.push((t.clone(), n.addr, Some(n.pid())));
                        nginx = Some(n);
                    }
                    Err(e) => skipped.push((t.clone(), e)),
                }
            }
        }
    }
    for (t, why) in &skipped {
        eprintln!("skipping {t}: {why}");
    }

    let mut results: Vec<(String, TargetResult)> = Vec::new();
    for (name, addr, pid) in &live {
        eprintln!("== {name} ==");
        match bench_target(name, *addr, *pid, &plan, &mock).await {
            Ok(r) => results.push((name.clone(), r)),
            Err(e) => {
                eprintln!("  [{name}] failed: {e}");
                skipped.push((name.clone(), e));
            }
        }
    }

    // ---- report ----
    let rows: Vec<Row> = rows(&plan)
        .into_iter()
        .filter(|row| results.iter().any(|(_, r)| r.metrics.contains_key(row.key)))
        .collect();
    let names: Vec<&str> = results.iter().map(|(n, _)| n.as_str()).collect();
    let direct = results.iter().find(|(n, _)| n == "direct").map(|(_, r)| r);
    let label_w = 40;
    let col_w = 13;
    let mut out = String::new();
    let header = |out: &mut String, title: &str| {
        out.push_str(&format!("{title:<label_w$}"));
        for n in &names {
            out.push_str(&format!("{n:>col_w$}"));
        }
        out.push('\n');
    };
    out.push_str(&format!(
        "\nswitchboard bench: {cores} cores, loopback; mock {} threads, proxies {} workers, client {} thread(s)\n",
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
    let load_desc = match plan.load_duration {
        Some(d) => format!("{:.0} s", d.as_secs_f64()),
        None => format!("{} req", plan.load_requests),
    };
    out.push_str(&format!(
        "runs per target: warm-up {} req; c=1 {} req; c={} {}; {} streams of `{}` at c={}; {} cancels of `{}`\n\n",
        plan.warmup, plan.c1_requests, plan.load_c, load_desc, plan.streams, plan.stream_model,
        plan.stream_c, plan.cancel_tries, plan.cancel_model
    ));
    header(&mut out, "metric");
    for row in &rows {
        out.push_str(&format!("{:<label_w$}", row.label));
        for (_, r) in &results {
            out.push_str(&format!(
                "{:>col_w$}",
                fmt(r.metrics.get(row.key).copied(), row.kind)
            ));
        }
        out.push('\n');
    }
    out.push_str(&format!("{:<label_w$}", "errors/non-200/incomplete"));
    for (_, r) in &results {
        let cell = format!(
            "{}/{}/{}",
            r.errors,
            r.statuses.values().sum::<u64>(),
            r.incomplete
        );
        out.push_str(&format!("{cell:>col_w$}"));
    }
    out.push('\n');
    out.push_str(&format!("{:<label_w$}", "cancel missed/failed"));
    for (_, r) in &results {
        let cell = format!("{}/{}", r.cancel_missed, r.cancel_errors);
        out.push_str(&format!("{cell:>col_w$}"));
    }
    out.push('\n');
    let mut added: BTreeMap<String, BTreeMap<&'static str, f64>> = BTreeMap::new();
    if let Some(d) = direct {
        out.push('\n');
        header(&mut out, "added vs direct (target - direct)");
        for row in &rows {
            out.push_str(&format!("{:<label_w$}", row.label));
            for (name, r) in &results {
                let cell = match (r.metrics.get(row.key), d.metrics.get(row.key)) {
                    _ if name == "direct" => "-".to_string(),
                    (Some(v), Some(base)) if !matches!(row.kind, Kind::Ms | Kind::Pct) => {
                        let pct = (v / base - 1.0) * 100.0;
                        added.entry(name.clone()).or_default().insert(row.key, pct);
                        format!("{pct:+.0}%")
                    }
                    (Some(v), Some(base)) => {
                        added
                            .entry(name.clone())
                            .or_default()
                            .insert(row.key, v - base);
                        let diff = v - base;
                        if diff.abs() >= 100.0 {
                            format!("{diff:+.1}")
                        } else {
                            format!("{diff:+.3}")
                        }
                    }
                    _ => "-".to_string(),
                };
                out.push_str(&format!("{cell:>col_w$}"));
            }
            out.push('\n');
        }
    }
    let ratios = nginx_ratios(&results, &mut out);
    print!("{out}");

    // Notes: anything that went wrong or looked odd.
    let mut report_notes = notes;
    for (t, why) in &skipped {
        report_notes.push(format!("{t} skipped: {why}"));
    }
    for (name, r) in &results {
        if !r.statuses.is_empty() {
            report_notes.push(format!("{name}: non-200 statuses {:?}", r.statuses));
        }
        if r.server_closes > 0 {
            report_notes.push(format!(
                "{name}: {} responses carried Connection: close ({} connections opened in total)",
                r.server_closes, r.connects
            ));
        }
        if !r.truncated.is_empty() {
            report_notes.push(format!("{name}: time limit cut short {:?}", r.truncated));
        }
        for p in &r.problems {
            report_notes.push(format!("{name}: {p}"));
        }
    }
    let mut sb_log = None;
    if let Some(sb) = &switchboard {
        let (n, samples) = sb.log_summary();
        if n > 0 {
            report_notes.push(format!(
                "switchboard logged {n} warn/error lines (RUST_LOG=warn), e.g.:"
            ));
            for s in &samples {
                report_notes.push(format!("    {s}"));
            }
        }
        sb_log = Some(json!({"lines": n, "samples": samples}));
    }
    if !report_notes.is_empty() {
        println!("\nnotes:");
        for n in &report_notes {
            println!("  {n}");
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!("\ntotal bench time {elapsed:.1} s");

    let mut per_target = serde_json::Map::new();
    for (name, r) in &results {
        let mut m: serde_json::Map<String, Value> = r
            .metrics
            .iter()
            .map(|(k, v)| ((*k).to_string(), json!(v)))
            .collect();
        m.insert("errors".into(), json!(r.errors));
        m.insert(
            "non_200".into(),
            json!(r
                .statuses
                .iter()
                .map(|(s, n)| (s.to_string(), *n))
                .collect::<BTreeMap<_, _>>()),
        );
        m.insert("incomplete_streams".into(), json!(r.incomplete));
        m.insert("cancel_missed".into(), json!(r.cancel_missed));
        m.insert("cancel_failed".into(), json!(r.cancel_errors));
        m.insert("connections_opened".into(), json!(r.connects));
        per_target.insert(name.clone(), Value::Object(m));
    }
    let report = json!({
        "cores": cores,
        "switchboard_binary": sb_path.display().to_string(),
        "switchboard_release": sb_release,
        "bench_release": !cfg!(debug_assertions),
        "quick": args.quick,
        "params": {
            "warmup": plan.warmup,
            "c1_requests": plan.c1_requests,
            "load_concurrency": plan.load_c,
            "load_requests": plan.load_requests,
            "load_duration_s": plan.load_duration.map(|d| d.as_secs_f64()),
            "streams": plan.streams,
            "stream_concurrency": plan.stream_c,
            "cancel_tries": plan.cancel_tries,
            "model": plan.model,
            "stream_model": plan.stream_model,
            "cancel_model": plan.cancel_model,
            "proxy_workers": args.proxy_workers,
            "mock_workers": args.mock_workers,
            "client_threads": args.client_threads,
        },
        "targets": per_target,
        "added_vs_direct": added,
        "switchboard_over_nginx": ratios,
        "skipped": skipped.iter().map(|(t, w)| json!({"target": t, "reason": w})).collect::<Vec<_>>(),
        "switchboard_log": sb_log,
        "notes": report_notes,
        "elapsed_s": elapsed,
    });
    println!("BENCH_JSON {report}");

    // Stop the proxies before the mock (explicit for clarity; guards do it anyway).
    drop(nginx);
    drop(switchboard);
    drop(mock);
    Ok(())
}

/// The in-process mock backend every target is measured against.
pub(crate) fn start_mock(workers: usize) -> Result<mockllm::MockHandle, String> {
    let mock = MockServer::builder()
        .worker_threads(workers)
        .spawn()
        .map_err(|e| format!("cannot start the mock backend: {e}"))?;
    eprintln!("mock backend at {} ({workers} worker threads)", mock.url());
    Ok(mock)
}
