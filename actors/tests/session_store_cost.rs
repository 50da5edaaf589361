//! What stored sessions cost (SPEC §4.4): the per-turn write and the RSS / disk of 10 000
//! stored sessions. Run with
//! `cargo test --release -p switchboard-actors --test session_store_cost -- --ignored --nocapture`.
#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::time::{Duration, Instant};

use switchboard_actors::events::{ModelMetrics, Usage};
use switchboard_actors::history::History;
use switchboard_actors::record::now_ms;
use switchboard_actors::registry::Registry;
use switchboard_actors::session_store::{SessionStore, StoredRun, StoredSession, StoredTurn};

/// A thread after `turns` turns with two models: 300-character prompts, 1 200-character
/// answers (~300 tokens each).
fn session(i: usize, turns: usize) -> StoredSession {
    let prompt = "p".repeat(300);
    let answer = "a".repeat(1200);
    let mut history = History::default();
    for _ in 0..turns {
        for m in ["model-a", "model-b"] {
            history.append(m, &prompt, &answer);
        }
    }
    let run = StoredRun {
        content: answer.clone(),
        state: "done".into(),
        metrics: ModelMetrics {
            backend: Some("7c0e3f4e-1b7a-4a43-9d55-2f8f0a1d2b3c".into()),
            ttft_ms: Some(120),
            total_ms: Some(2400),
            usage: Some(Usage {
                prompt_tokens: 400,
                completion_tokens: 300,
                total_tokens: 700,
                estimated: false,
            }),
            finish_reason: Some("stop".into()),
            ..Default::default()
        },
    };
    StoredSession {
        id: format!("{i:032x}"),
        created_at: now_ms(),
        last_event_id: 600 * turns as u64,
        last_active_ms: now_ms(),
        history,
        turn: Some(StoredTurn {
            request_id: format!("r{turns}"),
            prompt,
            models: vec!["model-a".into(), "model-b".into()],
            started_ms: now_ms(),
            runs: [
                ("model-a".to_string(), run.clone()),
                ("model-b".to_string(), run),
            ]
            .into_iter()
            .collect(),
        }),
    }
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let meta = entry.metadata().unwrap();
        total += if meta.is_dir() {
            dir_bytes(&entry.path())
        } else {
            meta.len()
        };
    }
    total
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p) as usize]
}

/// Set in the child process that measures a reopen (a fresh process, so the writer's heap
/// does not hide what a restarted broker pays).
const REOPEN_DIR: &str = "SESSION_STORE_COST_REOPEN";

#[test]
#[ignore = "measurement; run on demand (see the file header)"]
fn per_turn_write_latency_and_rss_and_disk_per_10k_sessions() {
    const N: usize = 10_000;
    if let Ok(dir) = std::env::var(REOPEN_DIR) {
        let rss0 = rss_kib();
        let t = Instant::now();
        let store =
            SessionStore::open(&Registry::open(std::path::Path::new(&dir)).unwrap()).unwrap();
        let swept = store.sweep(3_600_000, 1_000_000, |_| false);
        let took = t.elapsed();
        assert_eq!((swept, store.len()), (0, N));
        let one = store.load(&format!("{:032x}", N - 1)).unwrap();
        assert!(!one.history.summary().is_empty());
        println!(
            "REOPEN open + sweep of {N} stored sessions: {took:?}, RSS +{:.1} MiB",
            rss_kib().saturating_sub(rss0) as f64 / 1024.0
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = SessionStore::open(&Registry::open(dir.path()).unwrap()).unwrap();
    for turns in [1usize, 5] {
        let json = serde_json::to_vec(&session(0, turns)).unwrap().len();
        println!("a stored session after {turns} turn(s): {json} bytes of JSON");
    }

    // Per-turn write: what the session's thread pays at a turn end (encode + sled insert);
    // inside a runtime, as in the broker, so the coalesced flush runs on the blocking pool.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let samples: Vec<StoredSession> = (0..2000).map(|i| session(N + i, 5)).collect();
    let mut writes: Vec<Duration> = rt.block_on(async {
        let mut out = Vec::new();
        for s in &samples {
            let t = Instant::now();
            store.save(s);
            out.push(t.elapsed());
            tokio::task::yield_now().await;
        }
        out
    });
    writes.sort();
    let t = Instant::now();
    store.flush().unwrap();
    println!(
        "per-turn write (5-turn session, encode + insert): p50 {:?}, p99 {:?}, max {:?}; \
         one synchronous flush (fsync) {:?}",
        percentile(&writes, 0.5),
        percentile(&writes, 0.99),
        writes[writes.len() - 1],
        t.elapsed()
    );
    for s in &samples {
        store.delete(&s.id);
    }
    store.flush().unwrap();
    drop(store);

    for turns in [1usize, 5] {
        let sub = dir.path().join(format!("t{turns}"));
        std::fs::create_dir_all(&sub).unwrap();
        let rss0 = rss_kib();
        let store = SessionStore::open(&Registry::open(&sub).unwrap()).unwrap();
        let t = Instant::now();
        for i in 0..N {
            store.save(&session(i, turns));
        }
        store.flush().unwrap();
        let took = t.elapsed();
        let rss1 = rss_kib();
        drop(store);
        println!(
            "{N} sessions of {turns} turn(s): written in {took:?}; disk {:.1} MiB; RSS +{:.1} MiB \
             in the writing process (sled cache, capped at 64 MiB)",
            dir_bytes(&sub) as f64 / 1048576.0,
            rss1.saturating_sub(rss0) as f64 / 1024.0,
        );
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--ignored", "--nocapture", "--exact"])
            .arg("per_turn_write_latency_and_rss_and_disk_per_10k_sessions")
            .env(REOPEN_DIR, &sub)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text
            .lines()
            .find(|l| l.starts_with("REOPEN"))
            .unwrap_or("REOPEN failed");
        println!(
            "  after a restart ({turns} turn(s)): {}",
            line.trim_start_matches("REOPEN ")
        );
    }
}

#[test]
fn a_turn_end_write_is_far_below_a_millisecond_typically() {
    let dir = tempfile::tempdir().unwrap();
    let store = SessionStore::open(&Registry::open(dir.path()).unwrap()).unwrap();
    let mut writes: Vec<Duration> = (0..200)
        .map(|i| {
            let s = session(i, 5);
            let t = Instant::now();
            store.save(&s);
            t.elapsed()
        })
        .collect();
    writes.sort();
    // Generous (debug build, shared CI cores); the release figure is in the ignored test.
    assert!(
        percentile(&writes, 0.5) < Duration::from_millis(5),
        "{writes:?}"
    );
    assert_eq!(store.len(), 200);
}
