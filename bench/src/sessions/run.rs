//! `bench sessions`: the fd limit, the phases in order, the table and `BENCH_JSON`.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::targets::{Switchboard, SwitchboardOpts};

use super::cancel::phase_cancel;
use super::fanout::{phase_fanout, report_fanout, FanoutOutcome};
use super::idle::phase_idle;
use super::replay::phase_replay;
use super::{fmt_opt, mb, pct, us_to_ms, SessionsArgs, PHASES};

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
    let mut extra_env = vec![
        ("SWITCHBOARD_MAX_CONNECTIONS_PER_IP", "0".to_string()),
        ("SWITCHBOARD_MAX_SESSIONS", "20000".to_string()),
        ("SWITCHBOARD_EVENT_BUFFER", args.event_buffer.to_string()),
    ];
    if let Some(ttl) = args.expire_ttl_s {
        extra_env.push(("SWITCHBOARD_SESSION_TTL_S", ttl.to_string()));
    }
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
                let o = phase_idle(
                    &sb,
                    idle_n,
                    args.connect_concurrency,
                    hold,
                    rounds,
                    args.expire_ttl_s,
                )
                .await;
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
            "target ≤ 10 (incl. its session)",
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
        if let Some(ttl) = o.expire_ttl_s {
            let back = match (o.rss_expired_kb, o.rss_before_kb) {
                (Some(a), Some(b)) if b > 0 => {
                    let change = (a as f64 - b as f64) * 100.0 / b as f64;
                    format!("({change:+.0} % of before the connections; target ≤ +20 %)")
                }
                _ => String::new(),
            };
            row(
                &mut out,
                &format!("RSS, all sessions expired (TTL {ttl} s) (MB)"),
                fmt_opt(mb(o.rss_expired_kb)),
                &back,
            );
            row(
                &mut out,
                "expired: seconds until no session was left",
                fmt_opt(o.expired_after_s),
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
                "expire_ttl_s": o.expire_ttl_s,
                "rss_expired_kb": o.rss_expired_kb,
                "expired_after_s": o.expired_after_s,
                "debug_memory_expired": o.memory_expired,
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
