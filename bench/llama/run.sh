#!/usr/bin/env bash
# The multi-turn routing workload, scaled down, against three real llama.cpp servers
# (`llama-server --parallel 2`), through round-robin, least-loaded and the full policy.
#
# Needs a llama.cpp llama-server and a GGUF model (bench/README.md says what we use; this script
# never builds them: that takes minutes of both cores). Looks in $LLAMA_DIR (default
# target/llama-tiny): $LLAMA_DIR/bin/llama-server and $LLAMA_DIR/tiny.gguf.
#
# Exit codes: 0 ran, 77 skipped because the binary or model is absent, or, with NO_BUILD=1, the
# release builds of switchboard and bench are (bench/tests/llama.rs treats 77 as "skip"); anything
# else failed. The servers' logs go to target/llama-route-PORT.log.
#
# Sizes are in the bench's words; the tiny model's tokenizer (single characters and "▁x") makes
# ~6 llama tokens of each, so the defaults give a ~600-token system prompt, ~360-token user turns
# and at most ~2 200 prompt tokens at turn 4: within the 4 096 tokens a slot has (-c 8192 over
# 2 slots). Arguments after the script's name go to `bench routing` as they are.
#
#   bash bench/llama/run.sh                          # 12 users x 4 turns, max_concurrency = slots
#   bash bench/llama/run.sh --think-ms 1000          # users pause 0.5-1.5 s between turns
#   bash bench/llama/run.sh --limit-factor 0         # no max_concurrency: the servers queue inside
#   USERS=6 TURNS=3 bash bench/llama/run.sh
#   LLAMA_ARGS="--threads-http 32" bash bench/llama/run.sh   # extra llama-server flags
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
LLAMA_DIR="${LLAMA_DIR:-$ROOT/target/llama-tiny}"
SERVER="${LLAMA_SERVER:-$LLAMA_DIR/bin/llama-server}"
MODEL="${LLAMA_MODEL:-$LLAMA_DIR/tiny.gguf}"
USERS="${USERS:-12}"
TURNS="${TURNS:-4}"
SYSTEM_TOKENS="${SYSTEM_TOKENS:-100}"
USER_TOKENS="${USER_TOKENS:-60}"
BASE_PORT="${BASE_PORT:-18200}"

if [[ ! -x "$SERVER" ]]; then
    echo "SKIP: llama-server not found at $SERVER"
    echo "      set LLAMA_SERVER=/path/to/llama-server and LLAMA_MODEL=/path/to/model.gguf (see bench/README.md)"
    exit 77
fi
if [[ ! -f "$MODEL" ]]; then
    echo "SKIP: model not found at $MODEL (build.sh writes tiny.gguf next to bin/)"
    exit 77
fi

BENCH="$ROOT/target/release/bench"
if [[ ! -x "$BENCH" || ! -x "$ROOT/target/release/switchboard" ]]; then
    if [[ -n "${NO_BUILD:-}" ]]; then
        echo "SKIP: target/release/bench or target/release/switchboard absent and NO_BUILD is set"
        echo "      build them with: cargo build --release -p switchboard -p bench"
        exit 77
    fi
    (cd "$ROOT" && nice -n 10 cargo build --release -p switchboard -p bench)
fi

POLICIES="${POLICIES:-round-robin,least-loaded,full}"
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    PIDS=()
}
trap cleanup EXIT

# Fresh servers for every policy, so that no policy inherits the prompt caches (slots and the
# host-memory prompt cache, --cache-ram) of the one before.
first=1
IFS=, read -r -a POLICY_LIST <<<"$POLICIES"
for policy in "${POLICY_LIST[@]}"; do
    URLS=()
    for i in 0 1 2; do
        port=$((BASE_PORT + i))
        "$SERVER" -m "$MODEL" --host 127.0.0.1 --port "$port" --parallel 2 -c 8192 -t 1 \
            ${LLAMA_ARGS:-} >"$ROOT/target/llama-route-$port.log" 2>&1 &
        PIDS+=($!)
        URLS+=("http://127.0.0.1:$port")
    done
    for url in "${URLS[@]}"; do
        for _ in $(seq 1 100); do
            if curl -fsS "$url/health" >/dev/null 2>&1; then break; fi
            sleep 0.2
        done
        curl -fsS "$url/health" >/dev/null || { echo "FAIL: $url did not become healthy"; exit 1; }
    done
    urls="$(IFS=,; echo "${URLS[*]}")"
    out="$("$BENCH" routing --llama "$urls" --llama-slots 2 --policies "$policy" \
        --users "$USERS" --turns "$TURNS" --system-tokens "$SYSTEM_TOKENS" \
        --user-tokens "$USER_TOKENS" "$@")"
    if [[ $first == 1 ]]; then
        echo "$out" | grep -v "^| $policy |"
        first=0
    fi
    echo "$out" | grep "^| $policy |"
    cleanup
done
