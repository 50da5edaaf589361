#!/usr/bin/env bash
# The multi-turn routing workload, scaled down, against three real llama.cpp servers
# (`llama-server --parallel 2`), through round-robin, least-loaded and the full policy.
#
# Needs llama-server and tiny.gguf as built by ../shared/tools/llama-tiny/build.sh (this script
# never builds them: that takes minutes of both cores). Looks in $LLAMA_DIR (default
# target/llama-tiny): $LLAMA_DIR/bin/llama-server and $LLAMA_DIR/tiny.gguf.
#
# Exit codes: 0 ran, 77 skipped because the binary or model is absent (tests treat 77 as "skip"),
# anything else failed.
#
#   bash bench/llama/run.sh                 # defaults: 12 users x 4 turns, 600-token system prompt
#   USERS=6 TURNS=3 bash bench/llama/run.sh
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
LLAMA_DIR="${LLAMA_DIR:-$ROOT/target/llama-tiny}"
SERVER="${LLAMA_SERVER:-$LLAMA_DIR/bin/llama-server}"
MODEL="${LLAMA_MODEL:-$LLAMA_DIR/tiny.gguf}"
USERS="${USERS:-12}"
TURNS="${TURNS:-4}"
SYSTEM_TOKENS="${SYSTEM_TOKENS:-600}"
USER_TOKENS="${USER_TOKENS:-60}"
BASE_PORT="${BASE_PORT:-18200}"

if [[ ! -x "$SERVER" ]]; then
    echo "SKIP: llama-server not found at $SERVER"
    echo "      build it with: bash ../shared/tools/llama-tiny/build.sh (≈ 6 min), or set LLAMA_SERVER"
    exit 77
fi
if [[ ! -f "$MODEL" ]]; then
    echo "SKIP: model not found at $MODEL (build.sh writes tiny.gguf next to bin/)"
    exit 77
fi

BENCH="$ROOT/target/release/bench"
if [[ ! -x "$BENCH" || ! -x "$ROOT/target/release/switchboard" ]]; then
    (cd "$ROOT" && cargo build --release -p switchboard -p bench)
fi

PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

URLS=()
for i in 0 1 2; do
    port=$((BASE_PORT + i))
    "$SERVER" -m "$MODEL" --host 127.0.0.1 --port "$port" --parallel 2 -c 8192 -t 1 \
        >"/tmp/llama-route-$port.log" 2>&1 &
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

IFS=,
"$BENCH" routing --llama "${URLS[*]}" --llama-slots 2 \
    --users "$USERS" --turns "$TURNS" --system-tokens "$SYSTEM_TOKENS" --user-tokens "$USER_TOKENS"
