//! `bench routing`: the same workloads through `SWITCHBOARD_ROUTING=round-robin`, least-loaded
//! only and the full policy, in one run, over three mock backends that behave like real model
//! servers (slots, an internal queue, a prefix cache, prefill cost per uncached token).
//!
//! - **multi-turn**: `users` concurrent users, `turns` turns each, a shared system prompt of
//!   `system_tokens` tokens and a growing history (each user turn pastes `user_tokens` tokens);
//! - **no shared prefix**: the same number of independent single-turn prompts.
//!
//! Backends: 2, 2 and 4 slots, registered with `max_concurrency` = slots. Printed per policy:
//! mean / p50 / p99 TTFT, the prefix-cache hit ratio the backends report, throughput, the most
//! requests each backend ran at once (never above its slots) and the broker's queue waits.
//! `--llama URL,URL,URL` runs the multi-turn workload against real llama.cpp servers instead
//! (their `timings.cache_n` / `prompt_n` give the hit ratio); see `bench/llama/run.sh`.
//! Also prints the cost of one routing decision with 10 000 indexed prompts.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mockllm::capacity::ServerModel;
use mockllm::{MockHandle, MockServer};
use serde_json::{json, Value};

use crate::client::{build_request, Conn, Flow};
use crate::targets::{one_shot, Switchboard, SwitchboardOpts};

/// Flags of `bench routing`.
#[derive(Debug, Clone, clap::Args)]
pub struct RoutingArgs {
    /// switchboard binary [default: <workspace>/target/release/switchboard].
    #[arg(long)]
    pub switchboard: Option<PathBuf>,
    /// Concurrent users of the multi-turn workload.
    #[arg(long, default_value_t = 48)]
    pub users: usize,
    /// Turns per user.
    #[arg(long, default_value_t = 8)]
    pub turns: usize,
    /// Tokens (words) of the shared system prompt.
    #[arg(long, default_value_t = 1500)]
    pub system_tokens: usize,
    /// Tokens (words) each user turn pastes.
    #[arg(long, default_value_t = 120)]
    pub user_tokens: usize,
    /// Tokens each answer has (`max_tokens`).
    #[arg(long, default_value_t = 16)]
    pub answer_tokens: usize,
    /// Mock prefill cost per uncached prompt token, µs.
    #[arg(long, default_value_t = 250)]
    pub prefill_us: u64,
    /// Mock delay between generated tokens, ms.
    #[arg(long, default_value_t = 2)]
    pub token_ms: u64,
    /// Mock prefix-cache size per slot, tokens.
    #[arg(long, default_value_t = 6144)]
    pub cache_per_slot: usize,
    /// Policies to run, in order.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "round-robin,least-loaded,full"
    )]
    pub policies: Vec<String>,
    /// Real OpenAI-compatible servers (e.g. three `llama-server --parallel 2`) instead of the
    /// mocks; runs the multi-turn workload only.
    #[arg(long, value_delimiter = ',')]
    pub llama: Vec<String>,
    /// Model name to send to the real servers.
    #[arg(long, default_value = "tiny")]
    pub llama_model: String,
    /// Slots (`max_concurrency`) of each real server.
    #[arg(long, default_value_t = 2)]
    pub llama_slots: u32,
    /// `max_concurrency` = slots × this (0 = register without a limit: the servers queue
    /// internally, as behind SGLang's or llm-d's routers).
    #[arg(long, default_value_t = 1)]
    pub limit_factor: u32,
    /// Multi-turn: mean pause between an answer and the user's next turn, ms (each pause is
    /// 0.5–1.5× this; 0 = closed loop, the next turn at once).
    #[arg(long, default_value_t = 0)]
    pub think_ms: u64,
    /// Workloads to run, in order.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "multi-turn,no-shared-prefix"
    )]
    pub workloads: Vec<String>,
}

/// One request's outcome.
#[derive(Debug, Clone, Default)]
struct Shot {
    ttft: Option<Duration>,
    ok: bool,
    reply: String,
    /// From `timings` (llama.cpp) when present: (prompt_n, cache_n).
    timings: Option<(u64, u64)>,
    /// Why a failed request failed (status and the start of its body), for the report.
    error: String,
    /// From `usage` (uncached, `cached_tokens`), when a server sends no `timings`.
    usage: Option<(u64, u64)>,
}

/// One policy × workload.
#[derive(Debug, Clone)]
struct Row {
    policy: String,
    ttfts_ms: Vec<f64>,
    failed: usize,
    wall: Duration,
    hit_ratio: Option<f64>,
    /// Real servers: the totals of their own `timings.prompt_n` (prefilled) and `cache_n`.
    server_tokens: Option<(u64, u64)>,
    max_active: Vec<String>,
    queue_wait_mean_ms: f64,
    queued: u64,
}

/// Runs the bench (see the module docs).
pub async fn run(args: RoutingArgs) -> Result<(), String> {
    let binary = crate::resolve_switchboard(args.switchboard.as_ref());
    if !binary.exists() {
        return Err(format!(
            "{} not found: build it with `cargo build --release` or pass --switchboard",
            binary.display()
        ));
    }
    decision_cost();
    let workloads: Vec<&str> = if args.llama.is_empty() {
        // `--workloads none` prints the decision cost only.
        args.workloads
            .iter()
            .map(String::as_str)
            .filter(|w| matches!(*w, "multi-turn" | "no-shared-prefix"))
            .collect()
    } else {
        vec!["multi-turn"]
    };
    for workload in workloads {
        let mut rows = Vec::new();
        for policy in &args.policies {
            rows.push(run_one(&args, &binary, policy, workload).await?);
        }
        print_table(workload, &args, &rows);
    }
    Ok(())
}

/// The cost of one decision (full policy, 3 backends, 10 000 indexed prompts).
fn decision_cost() {
    use switchboard_actors::prefix::PromptSig;
    use switchboard_actors::router::RouteRequest;
    use switchboard_actors::routing::{BackendHandle, RoutingTable};
    use switchboard_actors::routing_policy::{RouterSettings, RoutingPolicy};
    let table = RoutingTable::new(RouterSettings {
        policy: RoutingPolicy::Full,
        ..RouterSettings::default()
    });
    let backends: Vec<_> = (0..3)
        .map(|i| {
            Arc::new(
                BackendHandle::new(uuid_like(i), "m".into(), &format!("http://b{i}"), None)
                    .with_max_concurrency(Some(4)),
            )
        })
        .collect();
    table.rebuild(backends);
    let system = "Shared system prompt text. ".repeat(230);
    let prompts: Vec<Vec<String>> = (0..10_000)
        .map(|i| {
            let mut parts = vec![json!({"role": "system", "content": system}).to_string()];
            for turn in 0..(i % 8) {
                parts.push(json!({"role": "user", "content": format!("user {} turn {turn}: a question", i / 8)}).to_string());
                parts.push(json!({"role": "assistant", "content": format!("reply {turn}")}).to_string());
            }
            parts.push(json!({"role": "user", "content": format!("user {} asks", i / 8)}).to_string());
            parts
        })
        .collect();
    let sig = |p: &Vec<String>| PromptSig::from_parts(p.iter().map(|s| s.as_bytes()));
    for p in &prompts {
        let s = sig(p);
        let r = table.try_route(&RouteRequest {
            model: "m",
            prompt: Some(&s),
            ..Default::default()
        });
        drop(r);
    }
    let started = Instant::now();
    for (i, p) in prompts.iter().enumerate() {
        let s = sig(p);
        let r = table.try_route(&RouteRequest {
            model: "m",
            thread: Some(i as u64 % 500),
            prompt: Some(&s),
            exclude: &[],
        });
        drop(r);
    }
    let with_sig = started.elapsed() / prompts.len() as u32;
    let sigs: Vec<PromptSig> = prompts.iter().map(sig).collect();
    let started = Instant::now();
    for (i, s) in sigs.iter().enumerate() {
        let r = table.try_route(&RouteRequest {
            model: "m",
            thread: Some(i as u64 % 500),
            prompt: Some(s),
            exclude: &[],
        });
        drop(r);
    }
    let decision = started.elapsed() / sigs.len() as u32;
    println!(
        "routing decision (full policy, 3 backends, 10 000 indexed prompts of ~6.3 KB): {:.2} µs per request; {:.2} µs with hashing the prompt",
        decision.as_secs_f64() * 1e6,
        with_sig.as_secs_f64() * 1e6
    );
}

fn uuid_like(i: u128) -> uuid::Uuid {
    uuid::Uuid::from_u128(i + 1)
}

/// Mocks with 2, 2 and 4 slots, or the real servers.
struct Backends {
    mocks: Vec<MockHandle>,
    urls: Vec<String>,
    slots: Vec<u32>,
}

fn start_backends(args: &RoutingArgs) -> Result<Backends, String> {
    if !args.llama.is_empty() {
        return Ok(Backends {
            mocks: Vec::new(),
            urls: args.llama.clone(),
            slots: vec![args.llama_slots; args.llama.len()],
        });
    }
    let mut mocks = Vec::new();
    for slots in [2usize, 2, 4] {
        let m = MockServer::builder()
            .worker_threads(1)
            .token_delay(Duration::from_millis(args.token_ms))
            .server_model(ServerModel {
                slots,
                prefill_per_token: Duration::from_micros(args.prefill_us),
                cache_tokens: slots * args.cache_per_slot,
            })
            .spawn()
            .map_err(|e| format!("mock: {e}"))?;
        mocks.push(m);
    }
    Ok(Backends {
        urls: mocks.iter().map(MockHandle::url).collect(),
        mocks,
        slots: vec![2, 2, 4],
    })
}

async fn run_one(
    args: &RoutingArgs,
    binary: &std::path::Path,
    policy: &str,
    workload: &str,
) -> Result<Row, String> {
    let backends = start_backends(args)?;
    let env = [
        ("SWITCHBOARD_ROUTING", policy.to_string()),
        ("SWITCHBOARD_QUEUE_TIMEOUT_S", "120".to_string()),
        ("SWITCHBOARD_QUEUE_MAX", "1024".to_string()),
    ];
    let sb = Switchboard::start(&SwitchboardOpts {
        binary,
        workers: 1,
        extra_env: &env,
    })?;
    let model = if args.llama.is_empty() {
        "bench-route".to_string()
    } else {
        args.llama_model.clone()
    };
    for (url, slots) in backends.urls.iter().zip(&backends.slots) {
        let limit = (args.limit_factor > 0).then_some(*slots * args.limit_factor);
        register(&sb, &model, url, limit).await?;
    }
    let started = Instant::now();
    let shots = match workload {
        "multi-turn" => multi_turn(args, sb.addr, &model).await,
        _ => independent(args, sb.addr, &model).await,
    };
    let wall = started.elapsed();
    if let Some(bad) = shots.iter().find(|s| !s.ok) {
        eprintln!("{policy}: first failed request: {}", bad.error);
        if let Some(first) = sb.log().lines().find(|l| l.contains("-> unhealthy")) {
            eprintln!("{policy}: first backend failure in the broker's log: {first}");
        }
    }
    let (wait_sum, wait_count) = queue_waits(&sb, &model).await;
    let mut row = Row {
        policy: policy.to_string(),
        ttfts_ms: shots
            .iter()
            .filter_map(|s| s.ttft.map(|t| t.as_secs_f64() * 1000.0))
            .collect(),
        failed: shots.iter().filter(|s| !s.ok).count(),
        wall,
        hit_ratio: None,
        server_tokens: None,
        max_active: Vec::new(),
        queue_wait_mean_ms: if wait_count > 0 {
            wait_sum * 1000.0 / wait_count as f64
        } else {
            0.0
        },
        queued: wait_count,
    };
    if backends.mocks.is_empty() {
        let (pn, cn) = shots
            .iter()
            .filter_map(|s| s.timings.or(s.usage))
            .fold((0, 0), |(p, c), (pn, cn)| (p + pn, c + cn));
        row.hit_ratio = (pn + cn > 0).then(|| cn as f64 / (pn + cn) as f64);
        row.server_tokens = Some((pn, cn));
        row.max_active = backends.slots.iter().map(|s| format!("?/{s}")).collect();
    } else {
        let stats: Vec<_> = backends
            .mocks
            .iter()
            .filter_map(MockHandle::server_stats)
            .collect();
        let (p, c) = stats.iter().fold((0, 0), |(p, c), s| {
            (p + s.prompt_tokens, c + s.cached_tokens)
        });
        row.hit_ratio = (p > 0).then(|| c as f64 / p as f64);
        row.max_active = stats
            .iter()
            .map(|s| format!("{}/{}+{}q", s.max_active, s.slots, s.max_queued))
            .collect();
        for s in &stats {
            if s.max_active > s.slots as u64 {
                return Err(format!(
                    "a backend ran {} at once with {} slots",
                    s.max_active, s.slots
                ));
            }
        }
    }
    Ok(row)
}

async fn register(
    sb: &Switchboard,
    model: &str,
    url: &str,
    limit: Option<u32>,
) -> Result<(), String> {
    let body =
        json!({"model_name": model, "endpoint_url": url, "max_concurrency": limit}).to_string();
    let req = build_request(
        "POST",
        sb.addr,
        "/admin/register",
        &[("X-API-Key", &sb.admin_key)],
        Some(body.as_bytes()),
    );
    let (status, text) = one_shot(sb.addr, &req).await?;
    if status != 201 {
        return Err(format!("register {url}: HTTP {status}: {text}"));
    }
    Ok(())
}

/// `(sum seconds, count)` of the broker's queue waits for `model`.
async fn queue_waits(sb: &Switchboard, model: &str) -> (f64, u64) {
    let req = build_request(
        "GET",
        sb.addr,
        "/metrics",
        &[("X-API-Key", &sb.admin_key)],
        None,
    );
    let Ok((_, text)) = one_shot(sb.addr, &req).await else {
        return (0.0, 0);
    };
    let find = |name: &str| {
        let prefix = format!("{name}{{model=\"{model}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (
        find("switchboard_route_queue_wait_seconds_sum"),
        find("switchboard_route_queue_wait_seconds_count") as u64,
    )
}

fn words(prefix: &str, n: usize, salt: usize) -> String {
    const VOCAB: [&str; 16] = [
        "model", "server", "cache", "token", "prefix", "route", "queue", "slot", "answer",
        "question", "thread", "system", "history", "prompt", "latency", "backend",
    ];
    let mut out = String::from(prefix);
    for i in 0..n {
        out.push(' ');
        out.push_str(VOCAB[(i * 7 + salt * 13 + i / 5) % VOCAB.len()]);
    }
    out
}

async fn multi_turn(args: &RoutingArgs, addr: SocketAddr, model: &str) -> Vec<Shot> {
    let system = Arc::new(words("You are the lab's assistant.", args.system_tokens, 0));
    let tasks: Vec<_> = (0..args.users)
        .map(|u| {
            let (system, model, args) = (Arc::clone(&system), model.to_string(), args.clone());
            tokio::spawn(async move {
                let mut messages = vec![json!({"role": "system", "content": *system})];
                let mut shots = Vec::new();
                for t in 0..args.turns {
                    let text = words(&format!("user {u} turn {t}:"), args.user_tokens, u * 31 + t);
                    messages.push(json!({"role": "user", "content": text}));
                    let body = json!({"model": model, "messages": messages, "stream": true,
                        "max_tokens": args.answer_tokens, "stream_options": {"include_usage": true}});
                    let shot = call(addr, &body).await;
                    messages.push(json!({"role": "assistant", "content": shot.reply}));
                    shots.push(shot);
                    if args.think_ms > 0 {
                        let spread = ((u * 131 + t * 17) % 101) as u64; // 0..=100, fixed per turn
                        let pause = args.think_ms / 2 + args.think_ms * spread / 100;
                        tokio::time::sleep(Duration::from_millis(pause)).await;
                    }
                }
                shots
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap_or_default());
    }
    all
}

async fn independent(args: &RoutingArgs, addr: SocketAddr, model: &str) -> Vec<Shot> {
    let tasks: Vec<_> = (0..args.users)
        .map(|u| {
            let (model, args) = (model.to_string(), args.clone());
            tokio::spawn(async move {
                let mut shots = Vec::new();
                for t in 0..args.turns {
                    let text = words(&format!("independent prompt {u}-{t}:"), args.system_tokens / 2, u * 97 + t);
                    let body = json!({"model": model, "stream": true, "max_tokens": args.answer_tokens,
                        "stream_options": {"include_usage": true},
                        "messages": [{"role": "user", "content": text}]});
                    shots.push(call(addr, &body).await);
                }
                shots
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap_or_default());
    }
    all
}

/// One streamed chat request: TTFT (first content token), the reply text, llama.cpp timings.
async fn call(addr: SocketAddr, body: &Value) -> Shot {
    let bytes = body.to_string();
    let req = build_request(
        "POST",
        addr,
        "/v1/chat/completions",
        &[],
        Some(bytes.as_bytes()),
    );
    let t0 = Instant::now();
    let fut = async {
        let mut conn = Conn::connect(addr).await.ok()?;
        conn.send(&req).await.ok()?;
        let head = conn.read_head().await.ok()?;
        let mut shot = Shot::default();
        let mut body = Vec::new();
        let mut line = Vec::new();
        conn.read_body(head.framing, |piece| {
            for &b in piece {
                if b == b'\n' {
                    on_line(&line, t0, &mut shot);
                    line.clear();
                } else {
                    line.push(b);
                }
            }
            body.extend_from_slice(piece);
            Flow::Continue
        })
        .await
        .ok()?;
        shot.ok = head.status == 200 && shot.ttft.is_some();
        if !shot.ok {
            let text = String::from_utf8_lossy(&body);
            shot.error = format!(
                "HTTP {}: {}",
                head.status,
                text.chars().take(300).collect::<String>()
            );
        }
        Some(shot)
    };
    tokio::time::timeout(Duration::from_secs(300), fut)
        .await
        .ok()
        .flatten()
        .unwrap_or_default()
}

fn on_line(line: &[u8], t0: Instant, shot: &mut Shot) {
    let Some(data) = line.strip_prefix(b"data: ") else {
        return;
    };
    let Ok(v) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    if let Some(c) = v
        .pointer("/choices/0/delta/content")
        .and_then(Value::as_str)
    {
        if !c.is_empty() {
            shot.ttft.get_or_insert_with(|| t0.elapsed());
            shot.reply.push_str(c);
        }
    }
    if let Some(t) = v.get("timings") {
        let n = |k: &str| t.get(k).and_then(Value::as_u64).unwrap_or(0);
        shot.timings = Some((n("prompt_n"), n("cache_n")));
    } else if shot.timings.is_none() {
        // Servers without llama.cpp's `timings` (vLLM, OpenAI) report the same in `usage`.
        if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
            let prompt = u.get("prompt_tokens").and_then(Value::as_u64).unwrap_or(0);
            let cached = u
                .pointer("/prompt_tokens_details/cached_tokens")
                .and_then(Value::as_u64)
                .unwrap_or(0);
            if prompt > 0 {
                shot.usage = Some((prompt.saturating_sub(cached), cached));
            }
        }
    }
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn print_table(workload: &str, args: &RoutingArgs, rows: &[Row]) {
    let backends = if args.llama.is_empty() {
        "3 mocks with 2/2/4 slots".to_string()
    } else {
        format!("{} real servers", args.llama.len())
    };
    let limits = match args.limit_factor {
        0 => "no max_concurrency (servers queue inside)".to_string(),
        1 => "max_concurrency = slots".to_string(),
        f => format!("max_concurrency = {f} × slots"),
    };
    let limits = if args.think_ms > 0 && workload == "multi-turn" {
        format!("{limits}, think time {} ms", args.think_ms)
    } else {
        limits
    };
    println!(
        "\n## {workload}: {} users × {} turns, system prompt {} tokens, user turns {} tokens, {backends}, {limits}",
        args.users, args.turns, args.system_tokens, args.user_tokens
    );
    println!(
        "| policy | requests | failed | TTFT mean ms | p50 ms | p99 ms | cache hit | req/s | max active/slots+queued inside, per backend | queued | queue wait mean ms |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        let mut t = r.ttfts_ms.clone();
        t.sort_by(f64::total_cmp);
        let mean = if t.is_empty() {
            0.0
        } else {
            t.iter().sum::<f64>() / t.len() as f64
        };
        let n = t.len() + r.failed;
        println!(
            "| {} | {n} | {} | {mean:.0} | {:.0} | {:.0} | {} | {:.1} | {} | {} | {:.0} |",
            r.policy,
            r.failed,
            pct(&t, 0.5),
            pct(&t, 0.99),
            match (r.hit_ratio, r.server_tokens) {
                (Some(h), Some((pn, cn))) =>
                    format!("{:.0} % (cache_n {cn} / prompt_n {pn})", h * 100.0),
                (Some(h), None) => format!("{:.0} %", h * 100.0),
                _ => "-".into(),
            },
            t.len() as f64 / r.wall.as_secs_f64(),
            r.max_active.join(" "),
            r.queued,
            r.queue_wait_mean_ms,
        );
    }
}
