//! The gateway bench's report: the table (one column per target), the "added vs
//! direct" block, the switchboard / nginx ratios with the issue-14 targets, the notes
//! and the `BENCH_JSON` line.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use serde_json::{json, Value};

use crate::phases::TargetResult;
use crate::targets::Switchboard;
use crate::{Args, Plan};

/// Everything the report reads from one finished run.
pub(crate) struct Run<'a> {
    /// The flags.
    pub(crate) args: &'a Args,
    /// Counts and limits derived from them.
    pub(crate) plan: &'a Plan,
    /// Targets measured, in run order.
    pub(crate) results: &'a [(String, TargetResult)],
    /// Targets skipped, and why.
    pub(crate) skipped: &'a [(String, String)],
    /// Notes gathered before the phases (build profile, fd limit).
    pub(crate) notes: Vec<String>,
    /// The broker, for its warn/error log lines.
    pub(crate) switchboard: Option<&'a Switchboard>,
    /// Its binary, and whether that is a release build.
    pub(crate) sb_path: &'a Path,
    /// `Some(true)` for a release build (from the path).
    pub(crate) sb_release: Option<bool>,
    /// Cores of the machine.
    pub(crate) cores: usize,
    /// Start of the whole bench.
    pub(crate) started: Instant,
}

/// Prints the table, the notes and the `BENCH_JSON` line.
pub(crate) fn print(run: &Run<'_>) {
    let Run {
        args,
        plan,
        results,
        skipped,
        switchboard,
        sb_path,
        sb_release,
        cores,
        started,
        ..
    } = *run;
    let notes = run.notes.clone();
    let rows: Vec<Row> = rows(plan)
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
        "runs per target: warm-up {} req; c=1 {} req; c={} {}; {} streams of `{}` at c={}; {} cancels of `{}`\n",
        plan.warmup, plan.c1_requests, plan.load_c, load_desc, plan.streams, plan.stream_model,
        plan.stream_c, plan.cancel_tries, plan.cancel_model
    ));
    out.push_str(&format!(
        "phases: {}; open loop {:.0} req/s over {} connections for {:.1} s; burst {} and slow {} (spread {} ms) streams of `{}`\n\n",
        plan.phases.join(","),
        plan.rate,
        plan.open_connections,
        plan.open_duration.as_secs_f64(),
        plan.burst,
        plan.slow_streams,
        plan.slow_spread.as_millis(),
        plan.scale_model
    ));
    header(&mut out, "metric");
    for row in &rows {
        out.push_str(&format!("{:<label_w$}", row.label));
        for (_, r) in results {
            out.push_str(&format!(
                "{:>col_w$}",
                fmt(r.metrics.get(row.key).copied(), row.kind)
            ));
        }
        out.push('\n');
    }
    out.push_str(&format!("{:<label_w$}", "errors/non-200/incomplete"));
    for (_, r) in results {
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
    for (_, r) in results {
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
            for (name, r) in results {
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
    let ratios = nginx_ratios(results, &mut out);
    print!("{out}");

    // Notes: anything that went wrong or looked odd.
    let mut report_notes = notes;
    for (t, why) in skipped {
        report_notes.push(format!("{t} skipped: {why}"));
    }
    for (name, r) in results {
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
    for (name, r) in results {
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
            "phases": plan.phases,
            "rate": plan.rate,
            "open_connections": plan.open_connections,
            "open_duration_s": plan.open_duration.as_secs_f64(),
            "burst": plan.burst,
            "slow_streams": plan.slow_streams,
            "slow_spread_ms": plan.slow_spread.as_millis() as u64,
            "scale_model": plan.scale_model,
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
                    format!("open p99 added vs direct: {name}"),
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
