//! The gateway bench's measurement plan for one target: warm-up, then the phases
//! (closed loop, streams, cancel, open loop, burst, slow streams), each turned into
//! named metrics of a [`TargetResult`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mockllm::MockHandle;
use serde_json::{json, Value};

use crate::client::build_request;
use crate::load::{self, CancelOutcome, Outcome, Spec};
use crate::{scale, targets, Plan};

/// Per-target measurements.
#[derive(Debug, Default)]
pub(crate) struct TargetResult {
    pub(crate) metrics: BTreeMap<&'static str, f64>,
    pub(crate) errors: u64,
    pub(crate) statuses: BTreeMap<u16, u64>,
    pub(crate) incomplete: u64,
    pub(crate) server_closes: u64,
    pub(crate) connects: u64,
    pub(crate) truncated: Vec<&'static str>,
    pub(crate) cancel_missed: u32,
    pub(crate) cancel_errors: u32,
    pub(crate) problems: Vec<String>,
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

pub(crate) async fn bench_target(
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
        // A stream of the scale model takes its ideal time plus whatever the box adds.
        stream_timeout: plan.request_timeout
            + Duration::from_secs_f64(
                scale::ideal_stream_ms(&plan.scale_model).unwrap_or(0.0) / 1e3,
            ),
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
            .filter(|_| o.started > 0)
            .map(|c| c.as_secs_f64() * 1e6 / o.started as f64),
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
