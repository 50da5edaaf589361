//! Closed-loop load: N workers, one keep-alive connection each, sending the
//! same request back to back; plus the cancel probe.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mockllm::{MockHandle, Stats};
use tokio::time::timeout;

use crate::client::{Conn, Error, Flow, SseScan};

/// One closed-loop run.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Target address.
    pub addr: SocketAddr,
    /// The complete request bytes.
    pub request: Arc<Vec<u8>>,
    /// Workers (= connections).
    pub concurrency: usize,
    /// Requests to send in total (across workers).
    pub max_requests: u64,
    /// Hard stop for the whole run.
    pub time_limit: Duration,
    /// Per request (connect, or send + full response).
    pub request_timeout: Duration,
    /// Scan the body as SSE (time to first token, `[DONE]`).
    pub stream: bool,
}

/// What a run observed.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Full-response latency of good responses, ns.
    pub latencies_ns: Vec<u64>,
    /// Time to first token of good streams, ns.
    pub ttft_ns: Vec<u64>,
    /// Largest gap between consecutive tokens of each good stream, ns.
    pub max_gap_ns: Vec<u64>,
    /// 200 with a complete body (and, for streams, a token and `[DONE]`).
    pub ok: u64,
    /// Connect / socket / parse errors and timeouts.
    pub errors: u64,
    /// Non-200 statuses.
    pub statuses: BTreeMap<u16, u64>,
    /// 200 streams without a token or without `[DONE]`.
    pub incomplete: u64,
    /// Connections opened.
    pub connects: u64,
    /// Responses that asked to close the connection.
    pub server_closes: u64,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// The time limit stopped the run before all requests were sent.
    pub truncated: bool,
    /// First few problems, for the report.
    pub problems: Vec<String>,
}

impl Outcome {
    fn note(&mut self, problem: String) {
        if self.problems.len() < 3 && !self.problems.contains(&problem) {
            self.problems.push(problem);
        }
    }

    fn merge(&mut self, other: Outcome) {
        self.latencies_ns.extend(other.latencies_ns);
        self.ttft_ns.extend(other.ttft_ns);
        self.max_gap_ns.extend(other.max_gap_ns);
        self.ok += other.ok;
        self.errors += other.errors;
        for (status, n) in other.statuses {
            *self.statuses.entry(status).or_default() += n;
        }
        self.incomplete += other.incomplete;
        self.connects += other.connects;
        self.server_closes += other.server_closes;
        self.truncated |= other.truncated;
        for p in other.problems {
            self.note(p);
        }
    }

    /// Good responses per second of wall time.
    pub fn rps(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Non-200 responses.
    pub fn non_200(&self) -> u64 {
        self.statuses.values().sum()
    }
}

/// One request/response on a keep-alive connection, as [`exchange`] saw it.
pub(crate) struct Exchange {
    /// HTTP status.
    pub(crate) status: u16,
    /// The response asked to close the connection.
    pub(crate) close: bool,
    /// The body was read to its end.
    pub(crate) complete: bool,
    /// `t0` → first content token (streams).
    pub(crate) ttft: Option<Duration>,
    /// Largest gap between tokens (streams).
    pub(crate) max_gap: Duration,
    /// `[DONE]` was seen (streams).
    pub(crate) done: bool,
    /// Start of a non-200 body, for the notes.
    pub(crate) snippet: Vec<u8>,
}

/// Sends `request` on `conn` and reads the whole response, scanning SSE when `stream`.
pub(crate) async fn exchange(
    conn: &mut Conn,
    request: &[u8],
    t0: Instant,
    stream: bool,
) -> Result<Exchange, Error> {
    conn.send(request).await?;
    let head = conn.read_head().await?;
    let status = head.status;
    let mut scan = SseScan::new(t0);
    let mut snippet = Vec::new();
    let complete = conn
        .read_body(head.framing, |data| {
            if status != 200 {
                let room = 300usize.saturating_sub(snippet.len());
                snippet.extend_from_slice(&data[..data.len().min(room)]);
            } else if stream {
                scan.feed(data);
            }
            Flow::Continue
        })
        .await?;
    Ok(Exchange {
        status,
        close: head.close,
        complete,
        ttft: scan.ttft,
        max_gap: scan.max_gap,
        done: scan.done,
        snippet,
    })
}

async fn worker(spec: Arc<Spec>, next: Arc<AtomicU64>, stop_at: Instant) -> Outcome {
    let mut out = Outcome::default();
    let mut conn: Option<Conn> = None;
    loop {
        if Instant::now() >= stop_at {
            out.truncated = next.load(Ordering::Relaxed) < spec.max_requests;
            break;
        }
        if next.fetch_add(1, Ordering::Relaxed) >= spec.max_requests {
            break;
        }
        if conn.is_none() {
            match timeout(spec.request_timeout, Conn::connect(spec.addr)).await {
                Ok(Ok(c)) => {
                    out.connects += 1;
                    conn = Some(c);
                }
                Ok(Err(e)) => {
                    out.errors += 1;
                    out.note(format!("connect: {e}"));
                    tokio::time::sleep(Duration::from_millis(5)).await;
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
        let t0 = Instant::now();
        match timeout(
            spec.request_timeout,
            exchange(c, &spec.request, t0, spec.stream),
        )
        .await
        {
            Ok(Ok(x)) => {
                let elapsed = t0.elapsed();
                if x.close || !x.complete {
                    out.server_closes += u64::from(x.close);
                    conn = None;
                }
                if x.status != 200 {
                    *out.statuses.entry(x.status).or_default() += 1;
                    out.note(format!(
                        "HTTP {}: {}",
                        x.status,
                        String::from_utf8_lossy(&x.snippet).trim()
                    ));
                } else if spec.stream && (x.ttft.is_none() || !x.done) {
                    out.incomplete += 1;
                    out.note(format!(
                        "stream without {}",
                        if x.ttft.is_none() {
                            "a content token"
                        } else {
                            "[DONE]"
                        }
                    ));
                } else {
                    out.ok += 1;
                    out.latencies_ns.push(nanos(elapsed));
                    if let Some(t) = x.ttft {
                        out.ttft_ns.push(nanos(t));
                        out.max_gap_ns.push(nanos(x.max_gap));
                    }
                }
            }
            Ok(Err(e)) => {
                out.errors += 1;
                out.note(e.to_string());
                conn = None;
            }
            Err(_) => {
                out.errors += 1;
                out.note(format!(
                    "request timed out after {:?}",
                    spec.request_timeout
                ));
                conn = None;
            }
        }
    }
    out
}

/// Runs `spec` to completion (or its time limit).
pub async fn run(spec: Spec) -> Outcome {
    let spec = Arc::new(spec);
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let stop_at = start + spec.time_limit;
    let handles: Vec<_> = (0..spec.concurrency.max(1))
        .map(|_| tokio::spawn(worker(Arc::clone(&spec), Arc::clone(&next), stop_at)))
        .collect();
    let mut total = Outcome::default();
    for h in handles {
        match h.await {
            Ok(o) => total.merge(o),
            Err(e) => {
                total.errors += 1;
                total.note(format!("worker task failed: {e}"));
            }
        }
    }
    total.elapsed = start.elapsed();
    total
}

/// `d` in whole nanoseconds (saturating).
pub(crate) fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn unix_ms_f64() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

/// Result of the cancel-to-upstream-close probe.
#[derive(Debug, Default)]
pub struct CancelOutcome {
    /// ms from the client closing its socket to the bench seeing the mock's
    /// abort record (polled every 50 µs: an upper bound, ~0.1 ms resolution).
    pub delays_ms: Vec<f64>,
    /// Same, from the abort's own `at_ms` stamp (whole ms, so accurate to 1 ms).
    pub at_ms_delays_ms: Vec<f64>,
    /// Tries where the mock never saw an abort within the wait.
    pub missed: u32,
    /// Tries that failed before the first token.
    pub errors: u32,
    /// First few problems.
    pub problems: Vec<String>,
}

impl CancelOutcome {
    fn note(&mut self, problem: String) {
        if self.problems.len() < 3 && !self.problems.contains(&problem) {
            self.problems.push(problem);
        }
    }
}

fn aborts_for(stats: &Stats, model: &str) -> (usize, Option<u64>) {
    let snap = stats.snapshot();
    let mut n = 0;
    let mut last = None;
    for a in snap.aborts.iter().filter(|a| a.model == model) {
        n += 1;
        last = Some(a.at_ms);
    }
    (n, last)
}

/// Polls every 50 µs until `model` has more than `before` aborts; returns
/// when it saw it and the abort's `at_ms`.
///
/// This blocks the calling thread on purpose (bounded by `wait`): the probe
/// runs alone, and a blocking-pool handoff would add its own wake-up latency
/// to every sample. The mock runs on its own threads.
fn wait_for_abort(
    stats: &Stats,
    model: &str,
    before: usize,
    wait: Duration,
) -> Option<(Instant, u64)> {
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        if let (n, Some(at_ms)) = aborts_for(stats, model) {
            if n > before {
                return Some((Instant::now(), at_ms));
            }
        }
        std::thread::sleep(Duration::from_micros(50));
    }
    None
}

/// Opens a stream of `model`, reads the first token, closes the socket and
/// waits for the mock to record the abort; `tries` times, one at a time.
pub async fn cancel_probe(
    addr: SocketAddr,
    request: &[u8],
    mock: &MockHandle,
    model: &str,
    tries: u32,
    wait: Duration,
    time_limit: Duration,
) -> CancelOutcome {
    let mut out = CancelOutcome::default();
    let stats = mock.shared_stats();
    let stop_at = Instant::now() + time_limit;
    for i in 0..tries {
        if Instant::now() >= stop_at {
            out.note(format!("time limit reached after {i} tries"));
            break;
        }
        // Give up early when the target clearly never closes upstream.
        if i >= 5 && out.delays_ms.is_empty() && out.missed >= 5 {
            out.note(format!("stopped after {i} tries: no abort seen at all"));
            break;
        }
        let (before, _) = aborts_for(&stats, model);
        let first = timeout(wait, async {
            let mut conn = Conn::connect(addr).await?;
            let t0 = Instant::now();
            conn.send(request).await?;
            let head = conn.read_head().await?;
            if head.status != 200 {
                return Err(Error::Protocol(format!("HTTP {}", head.status)));
            }
            let mut scan = SseScan::new(t0);
            let complete = conn
                .read_body(head.framing, |data| {
                    if scan.feed(data) {
                        Flow::Stop
                    } else {
                        Flow::Continue
                    }
                })
                .await?;
            if complete {
                return Err(Error::Protocol("stream ended before a token".into()));
            }
            Ok(conn)
        })
        .await;
        let conn = match first {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => {
                out.errors += 1;
                out.note(format!("before first token: {e}"));
                continue;
            }
            Err(_) => {
                out.errors += 1;
                out.note("no first token in time".into());
                continue;
            }
        };
        let closed_ms = unix_ms_f64();
        let closed = Instant::now();
        drop(conn);
        match wait_for_abort(&stats, model, before, wait) {
            Some((seen, at_ms)) => {
                out.delays_ms.push((seen - closed).as_secs_f64() * 1000.0);
                out.at_ms_delays_ms
                    .push((at_ms as f64 - closed_ms).max(0.0));
            }
            None => {
                out.missed += 1;
                out.note(format!(
                    "upstream connection not closed within {wait:?} of the client closing"
                ));
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    out
}
