#!/usr/bin/env bash
# Property-based tests of /openapi.json against the live binary (schemathesis, pinned in
# tests/py/requirements.txt). Usage: tests/schemathesis.sh <switchboard binary>
# Two passes: every operation gets the schema checks; "no 5xx" applies everywhere except the
# routes whose contract IS a 5xx (503 failed registration check / no healthy backend, 504 every
# upstream attempt failed). Streaming and upgrade routes (/ws, /push, session events) are
# covered by the integration tests instead.
set -euo pipefail
bin="$1"
st="target/ci-venv/bin/schemathesis"
data=$(mktemp -d)
out=$(mktemp)
PORT=0 SWITCHBOARD_DATA_DIR="$data" SWITCHBOARD_ADMIN_KEY=st-admin SWITCHBOARD_RATE_LIMIT_PER_MIN=0 \
  RUST_LOG=warn "$bin" >"$out" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; rm -rf "$data" "$out"' EXIT
for _ in $(seq 1 100); do
  url=$(sed -n 's/^switchboard listening on //p' "$out" | head -n1)
  [ -n "$url" ] && break
  sleep 0.1
done
[ -n "$url" ] || { echo "broker did not start"; cat "$out"; exit 1; }
common=(--header "X-API-Key: st-admin" --phases examples,fuzzing --generation-deterministic
        --max-examples 25 --workers 2)
streaming='ws|push/|internal/|api/sessions/\{id\}/events'
contract_5xx='v1/|admin/register'
checks="status_code_conformance,content_type_conformance,response_schema_conformance"
"$st" run "$url/openapi.json" "${common[@]}" --checks "not_a_server_error,$checks" \
  --exclude-path-regex "^/($streaming|$contract_5xx)"
"$st" run "$url/openapi.json" "${common[@]}" --checks "$checks" \
  --include-path-regex "^/($contract_5xx)"
