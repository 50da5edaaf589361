//! `bench`: the same loopback load against the mock backend directly, through
//! switchboard and through nginx, in one run; see README.md.
//!
//! - [`client`]: the hand-written HTTP/1.1 client (keep-alive, chunked, SSE scan).
//! - [`load`]: closed-loop load runs and the cancel probe.
//! - [`phases`]: the measurement plan for one target (warm-up, then each phase).
//! - [`report`]: the table, the switchboard / nginx ratios, notes and `BENCH_JSON`.
//! - [`scale`]: open-loop load (fixed rate, latency from the schedule) and crowds of
//!   streams (a burst of stream starts, thousands of slow streams) with proxy RSS.
//! - [`targets`]: child processes (switchboard, nginx) and their temp dirs.
//! - [`routing`]: `bench routing`, the routing policies over mocks that behave like servers.
//! - this file: flags, starting the targets, running the phases on each.

// A benchmark is a program that prints tables (stdout) and its progress (stderr), and stops at once
// on a broken setup: none of the broker's production lints apply to it.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout,
    clippy::print_stderr
)]

mod client;
mod load;
mod phases;
mod report;
mod routing;
mod scale;
mod sessions;
mod targets;
mod ws;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use mockllm::MockServer;

use crate::phases::{bench_target, TargetResult};
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
    /// Routing policies (round-robin, least-loaded, full) over servers with slots and caches.
    Routing(routing::RoutingArgs),
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
    match args.command.take() {
        Some(Mode::Sessions(s)) => return sessions_main(s),
        Some(Mode::Routing(r)) => return routing_main(r),
        None => {}
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

fn routing_main(args: routing::RoutingArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bench: cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        tokio::select! {
            r = routing::run(args) => r,
            _ = tokio::signal::ctrl_c() => Err("interrupted; child processes stopped".to_string()),
        }
    });
    runtime.shutdown_background();
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

    report::print(&report::Run {
        args: &args,
        plan: &plan,
        results: &results,
        skipped: &skipped,
        notes,
        switchboard: switchboard.as_ref(),
        sb_path: &sb_path,
        sb_release,
        cores,
        started,
    });

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
