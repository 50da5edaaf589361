//! Phase 2 / 2b: fan-out and paced fan-out through sessions vs the same streams direct.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mockllm::MockHandle;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::Barrier;
use tokio::time::timeout;

use crate::client::{build_request, Conn, Flow};
use crate::ws::unix_micros;

use super::{
    cpu_snapshot, fmt_opt, next_text, note, open_session, parse_ev, pct, send_msg, us_to_ms,
    CLK_TCK, EVENT_WAIT, PROMPT,
};

/// Stamp latencies and completeness of one fan-out run.
#[derive(Debug, Default)]
pub(super) struct FanoutOutcome {
    /// mock write → client receive, µs, one per token.
    pub(super) lat_us: Vec<u64>,
    pub(super) tokens: u64,
    pub(super) expected_tokens: u64,
    /// Streams (session × model, or HTTP streams) with fewer/more tokens than expected.
    pub(super) short_streams: u64,
    /// Events with an id (switchboard) / SSE data lines (direct).
    pub(super) events: u64,
    pub(super) elapsed_s: f64,
    /// Sessions/streams that failed (socket, close, error event, timeout).
    pub(super) failures: u64,
    /// Gaps or repeats in a session's id sequence.
    pub(super) id_anomalies: u64,
    /// Token contents that were not stamps.
    pub(super) non_stamp: u64,
    /// CPU time (user + system, ms) during the run: broker process, mock
    /// threads, the bench's client thread.
    pub(super) cpu_ms: [Option<f64>; 3],
    /// Connections the mock accepted during the run (after the common start).
    pub(super) mock_connections: u64,
    /// Streams of the run (sessions × models).
    pub(super) streams: u64,
    pub(super) problems: Vec<String>,
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
pub(super) async fn phase_fanout(
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

/// One fan-out block of the table and its JSON (`key`).
#[allow(clippy::too_many_arguments)]
pub(super) fn report_fanout(
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
