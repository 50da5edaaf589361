//! Open-loop load and crowds of streams (issue 14).
//!
//! - [`open_loop`]: a fixed offered rate over N keep-alive connections. A pacer
//!   thread (`std::thread::sleep`, microsecond timers, unlike tokio's 1 ms wheel)
//!   hands every request its *scheduled* send time; latency runs from that time to
//!   the last byte, so a request that waits behind a slow one on its connection is
//!   charged the wait (no coordinated omission, as in wrk2).
//! - [`crowd`]: N streams on N connections opened beforehand, started at once
//!   (burst, spread 0) or spread over a window (slow streams), with the proxy's
//!   RSS sampled before and at peak and its CPU time over the run.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch, Semaphore};
use tokio::time::timeout;

use crate::client::{Conn, Error};
use crate::load::{exchange, nanos};
use crate::targets;

/// One open-loop run.
#[derive(Debug, Clone)]
pub struct OpenSpec {
    /// Target address.
    pub addr: SocketAddr,
    /// The complete request bytes (non-streaming).
    pub request: Arc<Vec<u8>>,
    /// Offered requests per second, over all connections.
    pub rate: f64,
    /// Keep-alive connections; request k goes to connection k mod N.
    pub connections: usize,
    /// How long requests are offered.
    pub duration: Duration,
    /// Per request, from its scheduled time.
    pub request_timeout: Duration,
}

/// What an open-loop run observed.
#[derive(Debug, Default)]
pub struct OpenOutcome {
    /// Scheduled send → last byte, ns, of good responses.
    pub latencies_ns: Vec<u64>,
    /// Load generator lateness, ns: actual write − max(scheduled time, previous response
    /// on the connection done). Waiting for a busy connection is the target's doing and
    /// is not in here; a large value means the client (its thread, the box) lagged.
    pub send_lag_ns: Vec<u64>,
    /// Requests the pacer scheduled.
    pub scheduled: u64,
    /// 200 responses.
    pub ok: u64,
    /// Socket errors and timeouts.
    pub errors: u64,
    /// Non-200 statuses.
    pub statuses: BTreeMap<u16, u64>,
    /// First scheduled send → last response.
    pub elapsed: Duration,
    /// First few problems.
    pub problems: Vec<String>,
}

impl OpenOutcome {
    fn note(&mut self, problem: String) {
        if self.problems.len() < 3 && !self.problems.contains(&problem) {
            self.problems.push(problem);
        }
    }

    fn merge(&mut self, o: OpenOutcome) {
        self.latencies_ns.extend(o.latencies_ns);
        self.send_lag_ns.extend(o.send_lag_ns);
        self.ok += o.ok;
        self.errors += o.errors;
        for (s, n) in o.statuses {
            *self.statuses.entry(s).or_default() += n;
        }
        for p in o.problems {
            self.note(p);
        }
    }

    /// Good responses per second from the first scheduled send to the last response.
    pub fn achieved_rps(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// One connection of the open loop: sends each scheduled request when it arrives
/// (or at once, when the previous response came late) and records latency from
/// the schedule.
async fn open_worker(
    spec: Arc<OpenSpec>,
    mut conn: Option<Conn>,
    mut due: mpsc::UnboundedReceiver<Instant>,
    last_done: Arc<AtomicU64>,
    base: Instant,
) -> OpenOutcome {
    let mut out = OpenOutcome::default();
    let mut free_since = base;
    while let Some(sched) = due.recv().await {
        if sched.elapsed() > spec.request_timeout {
            out.errors += 1;
            out.note("request not sent within the timeout of its schedule".into());
            continue;
        }
        if conn.is_none() {
            match timeout(spec.request_timeout, Conn::connect(spec.addr)).await {
                Ok(Ok(c)) => conn = Some(c),
                Ok(Err(e)) => {
                    out.errors += 1;
                    out.note(format!("connect: {e}"));
                    continue;
                }
                Err(_) => {
                    out.errors += 1;
                    out.note("connect timed out".into());
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        out.send_lag_ns.push(nanos(free_since.max(sched).elapsed()));
        let left = spec.request_timeout.saturating_sub(sched.elapsed());
        match timeout(left, exchange(c, &spec.request, sched, false)).await {
            Ok(Ok(x)) => {
                let done = Instant::now();
                free_since = done;
                last_done.fetch_max(nanos(done - base), Ordering::Relaxed);
                if x.close || !x.complete {
                    conn = None;
                }
                if x.status == 200 {
                    out.ok += 1;
                    out.latencies_ns.push(nanos(done - sched));
                } else {
                    *out.statuses.entry(x.status).or_default() += 1;
                }
            }
            Ok(Err(e)) => {
                out.errors += 1;
                out.note(e.to_string());
                conn = None;
                free_since = Instant::now();
            }
            Err(_) => {
                out.errors += 1;
                free_since = Instant::now();
                out.note(format!(
                    "no response within {:?} of the schedule",
                    spec.request_timeout
                ));
                conn = None;
            }
        }
    }
    out
}

/// Offers `spec.rate` requests per second for `spec.duration`; see the module doc.
pub async fn open_loop(spec: OpenSpec) -> OpenOutcome {
    let spec = Arc::new(spec);
    let n = spec.connections.max(1);
    let mut total = OpenOutcome::default();
    // Connect first, so the schedule does not start with n handshakes.
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        match timeout(spec.request_timeout, Conn::connect(spec.addr)).await {
            Ok(Ok(c)) => conns.push(Some(c)),
            Ok(Err(e)) => {
                total.note(format!("connect: {e}"));
                conns.push(None);
            }
            Err(_) => {
                total.note("connect timed out".into());
                conns.push(None);
            }
        }
    }
    let base = Instant::now();
    let last_done = Arc::new(AtomicU64::new(0));
    let mut senders = Vec::with_capacity(n);
    let mut handles = Vec::with_capacity(n);
    for conn in conns {
        let (tx, rx) = mpsc::unbounded_channel();
        senders.push(tx);
        handles.push(tokio::spawn(open_worker(
            Arc::clone(&spec),
            conn,
            rx,
            Arc::clone(&last_done),
            base,
        )));
    }
    let count = (spec.rate * spec.duration.as_secs_f64()).round() as u64;
    let interval = Duration::from_secs_f64(1.0 / spec.rate.max(1e-3));
    let start = Instant::now() + Duration::from_millis(20);
    let first_offset = nanos(start - base);
    // The pacer: a plain thread sleeping to each due time, so the schedule does not
    // inherit the 1 ms granularity of tokio's timer. It ends (and drops the senders,
    // which ends the workers) after the last request.
    let pacer = std::thread::Builder::new()
        .name("bench-pacer".into())
        .spawn(move || {
            for k in 0..count {
                let due = start + interval.mul_f64(k as f64);
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
                let idx = usize::try_from(k % n as u64).unwrap_or(0);
                let _ = senders[idx].send(due);
            }
        });
    if let Err(e) = pacer {
        total.note(format!("cannot start the pacer thread: {e}"));
        return total;
    }
    total.scheduled = count;
    for h in handles {
        match h.await {
            Ok(o) => total.merge(o),
            Err(e) => {
                total.errors += 1;
                total.note(format!("worker task failed: {e}"));
            }
        }
    }
    let last = last_done.load(Ordering::Relaxed);
    total.elapsed = Duration::from_nanos(last.saturating_sub(first_offset));
    total.latencies_ns.sort_unstable();
    total.send_lag_ns.sort_unstable();
    total
}

/// N streams on N connections; see the module doc.
#[derive(Debug, Clone)]
pub struct CrowdSpec {
    /// Target address.
    pub addr: SocketAddr,
    /// The complete streaming request.
    pub request: Arc<Vec<u8>>,
    /// Streams (= connections).
    pub streams: usize,
    /// Stream i starts at `start + spread * i / streams`; zero = all at once.
    pub spread: Duration,
    /// Connections being opened at once beforehand.
    pub connect_concurrency: usize,
    /// The proxy whose RSS and CPU are measured (None for direct).
    pub proxy_pid: Option<u32>,
    /// Per stream, from its scheduled start.
    pub stream_timeout: Duration,
}

/// What a crowd of streams observed.
#[derive(Debug, Default)]
pub struct CrowdOutcome {
    /// Scheduled start → first content token, ns, of complete streams.
    pub ttft_ns: Vec<u64>,
    /// Scheduled start → end of the body, ns, of complete streams.
    pub total_ns: Vec<u64>,
    /// Streams that got a token and `[DONE]`.
    pub completed: u64,
    /// Connections that could not be opened beforehand.
    pub connect_failed: u64,
    /// Socket errors, timeouts and non-200 answers.
    pub errors: u64,
    /// 200 streams without a token or `[DONE]`.
    pub incomplete: u64,
    /// Proxy RSS (process and children) with no bench connection open, KiB.
    pub rss_before_kb: Option<u64>,
    /// Largest proxy RSS sampled (every 10 ms) while the streams ran, KiB.
    pub rss_peak_kb: Option<u64>,
    /// Proxy CPU time while the streams ran.
    pub cpu: Option<Duration>,
    /// Streams whose request was sent (complete or not): the CPU's denominator.
    pub started: u64,
    /// First start → last stream ended.
    pub elapsed: Duration,
    /// First few problems.
    pub problems: Vec<String>,
}

impl CrowdOutcome {
    fn note(&mut self, problem: String) {
        if self.problems.len() < 3 && !self.problems.contains(&problem) {
            self.problems.push(problem);
        }
    }

    /// RSS growth per stream, KiB.
    pub fn rss_per_stream_kb(&self, streams: usize) -> Option<f64> {
        let (b, p) = (self.rss_before_kb?, self.rss_peak_kb?);
        (streams > 0).then(|| p.saturating_sub(b) as f64 / streams as f64)
    }
}

/// How one stream of a crowd ended.
enum StreamEnd {
    Done { ttft: Duration, total: Duration },
    Incomplete(String),
    Failed(String),
}

async fn crowd_stream(
    spec: &CrowdSpec,
    conn: &mut Conn,
    sched: Instant,
) -> Result<StreamEnd, Error> {
    let x = exchange(conn, &spec.request, sched, true).await?;
    if x.status != 200 {
        return Ok(StreamEnd::Failed(format!("HTTP {}", x.status)));
    }
    match (x.ttft, x.done && x.complete) {
        (Some(ttft), true) => Ok(StreamEnd::Done {
            ttft,
            total: sched.elapsed(),
        }),
        (None, _) => Ok(StreamEnd::Incomplete("stream without a token".into())),
        (Some(_), false) => Ok(StreamEnd::Incomplete("stream without [DONE]".into())),
    }
}

/// Sums `VmRSS` of `pids`, KiB.
fn rss_of(pids: &[u32]) -> Option<u64> {
    let mut sum = None;
    for p in pids {
        if let Some(kb) = targets::vm_rss_kb(*p) {
            *sum.get_or_insert(0) += kb;
        }
    }
    sum
}

/// Runs the crowd: connect all, read RSS, start the streams, sample RSS to the end.
pub async fn crowd(spec: CrowdSpec) -> CrowdOutcome {
    let spec = Arc::new(spec);
    let mut out = CrowdOutcome::default();
    let pids = spec.proxy_pid.map(targets::process_tree_pids);
    out.rss_before_kb = pids.as_deref().and_then(rss_of);
    let (start_tx, start_rx) = watch::channel::<Option<Instant>>(None);
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel::<bool>();
    let gate = Arc::new(Semaphore::new(spec.connect_concurrency.max(1)));
    let n = spec.streams;
    let mut handles = Vec::with_capacity(n);
    for i in 0..n {
        let spec = Arc::clone(&spec);
        let gate = Arc::clone(&gate);
        let ready = ready_tx.clone();
        let mut start = start_rx.clone();
        handles.push(tokio::spawn(async move {
            let conn = {
                let _permit = gate.acquire().await;
                timeout(Duration::from_secs(10), Conn::connect(spec.addr)).await
            };
            let mut conn = match conn {
                Ok(Ok(c)) => {
                    let _ = ready.send(true);
                    c
                }
                Ok(Err(e)) => {
                    let _ = ready.send(false);
                    return Some((StreamEnd::Failed(format!("connect: {e}")), true));
                }
                Err(_) => {
                    let _ = ready.send(false);
                    return Some((StreamEnd::Failed("connect timed out".into()), true));
                }
            };
            drop(ready);
            let t0 = loop {
                if let Some(t) = *start.borrow_and_update() {
                    break t;
                }
                if start.changed().await.is_err() {
                    return None;
                }
            };
            let offset = spec.spread.mul_f64(i as f64 / n.max(1) as f64);
            let sched = t0 + offset;
            tokio::time::sleep_until(sched.into()).await;
            let end = match timeout(spec.stream_timeout, crowd_stream(&spec, &mut conn, sched))
                .await
            {
                Ok(Ok(end)) => end,
                Ok(Err(e)) => StreamEnd::Failed(e.to_string()),
                Err(_) => {
                    StreamEnd::Failed(format!("stream not done within {:?}", spec.stream_timeout))
                }
            };
            Some((end, false))
        }));
    }
    drop(ready_tx);
    // Wait until every connection is open (or failed).
    let connect_deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = 0;
    while seen < n {
        match tokio::time::timeout_at(connect_deadline.into(), ready_rx.recv()).await {
            Ok(Some(ok)) => {
                seen += 1;
                out.connect_failed += u64::from(!ok);
            }
            Ok(None) => break,
            Err(_) => {
                out.note(format!("only {seen} of {n} connections opened within 60 s"));
                break;
            }
        }
    }
    let cpu_before = spec.proxy_pid.map(targets::process_tree_cpu);
    let t0 = Instant::now();
    let _ = start_tx.send(Some(t0));
    // RSS sampler: every 10 ms until the streams are done.
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let sampler = pids.clone().map(|pids| {
        tokio::spawn(async move {
            let mut peak = rss_of(&pids);
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(10)) => {}
                    _ = stop_rx.changed() => break,
                }
                if let Some(kb) = rss_of(&pids) {
                    peak = Some(peak.map_or(kb, |p: u64| p.max(kb)));
                }
            }
            peak
        })
    });
    for h in handles {
        match h.await {
            Ok(Some((StreamEnd::Done { ttft, total }, _))) => {
                out.started += 1;
                out.completed += 1;
                out.ttft_ns.push(nanos(ttft));
                out.total_ns.push(nanos(total));
            }
            Ok(Some((StreamEnd::Incomplete(p), _))) => {
                out.started += 1;
                out.incomplete += 1;
                out.note(p);
            }
            Ok(Some((StreamEnd::Failed(p), connect))) => {
                if !connect {
                    out.started += 1;
                    out.errors += 1;
                }
                out.note(p);
            }
            Ok(None) => {}
            Err(e) => {
                out.errors += 1;
                out.note(format!("stream task failed: {e}"));
            }
        }
    }
    out.elapsed = t0.elapsed();
    if let (Some(pid), Some(before)) = (spec.proxy_pid, cpu_before) {
        out.cpu = Some(targets::process_tree_cpu(pid).saturating_sub(before));
    }
    let _ = stop_tx.send(true);
    if let Some(s) = sampler {
        out.rss_peak_kb = s.await.ok().flatten();
    }
    out.ttft_ns.sort_unstable();
    out.total_ns.sort_unstable();
    out
}

/// The ideal duration of a stream of model `dN-wM` (M tokens, N ms apart, the first at
/// once): (M − 1) × N ms; None when the name has no `dN` and `wN`.
pub fn ideal_stream_ms(model: &str) -> Option<f64> {
    let num = |prefix: char| {
        model
            .split(['-', '_', ':', '/', '.', ' '])
            .find_map(|t| t.strip_prefix(prefix)?.parse::<u64>().ok())
    };
    let (d, w) = (num('d')?, num('w')?);
    Some(w.saturating_sub(1) as f64 * d as f64)
}
