//! The real-server routing run (`bench/llama/run.sh`), scaled down to a smoke test: three
//! `llama-server --parallel 2` behind switchboard, every policy, no failed request, and the
//! full policy's servers report prefix-cache hits (`timings.cache_n`). Runs only where
//! llama-server and the release builds exist (see bench/README.md, "Real llama.cpp servers";
//! `cargo build --release -p switchboard -p bench`); elsewhere, CI included, it prints SKIP and
//! passes, because building llama.cpp takes minutes of both cores.

use std::path::Path;
use std::process::Command;

/// Exit code of run.sh when something it needs is absent.
const SKIPPED: i32 = 77;

#[test]
fn llama_routing_smoke_when_the_server_is_built() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new("bash")
        .arg(root.join("bench/llama/run.sh"))
        .arg("--policies")
        .arg("round-robin,least-loaded,full")
        .env("NO_BUILD", "1")
        .env("USERS", "3")
        .env("TURNS", "3")
        .env("SYSTEM_TOKENS", "40")
        .env("USER_TOKENS", "30")
        .env("BASE_PORT", "18260")
        .output()
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.code() == Some(SKIPPED) {
        eprintln!("SKIPPED llama_routing_smoke: {}", stdout.trim());
        return;
    }
    assert!(
        out.status.success(),
        "run.sh failed ({:?}):\n{stdout}\n{stderr}",
        out.status
    );
    for policy in ["round-robin", "least-loaded", "full"] {
        let row = stdout
            .lines()
            .find(|l| l.starts_with(&format!("| {policy} |")))
            .unwrap_or_else(|| panic!("no {policy} row in:\n{stdout}"));
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        assert_eq!(cells[2], "9", "3 users x 3 turns: {row}");
        assert_eq!(cells[3], "0", "no failed request: {row}");
        if policy == "full" {
            let cache_n: u64 = row
                .split("cache_n ")
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("no cache_n in {row}"));
            assert!(cache_n > 0, "turns 2 and 3 reuse the cached prefix: {row}");
        }
    }
}
