#!/usr/bin/env bash
# Contract fuzzing: runs schemathesis against the whole bundle served by the local runner,
# with docs/openapi.yaml as the contract. Every generated request must get a documented
# status (no 5xx), a documented content type and a body matching the documented schema;
# every error is a problem+json document; and every operation behind the authorizer refuses a
# request without the token (ignored_auth).
#
# Services (moto, MongoDB) run on HERALD_MOTO_PORT / HERALD_MONGO_PORT (started here unless
# already running in HERALD_STATE_DIR, and then left running); the runner gets a free port
# and its own resource prefix, so it can share services with other bundles.
#   HERALD_CONTRACT_MAX_EXAMPLES  cases per operation (default 50)
#   HERALD_CONTRACT_SEED          fixed hypothesis seed, to reproduce a run
#   HERALD_SCHEMATHESIS           the schemathesis executable (default .venv/bin/schemathesis)
# Extra arguments go to `schemathesis run` (e.g. --include-path-regex templates).
# One worker: concurrent workers trip a CPython 3.11 AST race inside hypothesis.
set -euo pipefail
cd "$(dirname "$0")/.."

export HERALD_MOTO_PORT=${HERALD_MOTO_PORT:-4766}
export HERALD_MONGO_PORT=${HERALD_MONGO_PORT:-27218}
export HERALD_STATE_DIR=${HERALD_STATE_DIR:-.local/contract-services}
SCHEMATHESIS=${HERALD_SCHEMATHESIS:-.venv/bin/schemathesis}
MAX_EXAMPLES=${HERALD_CONTRACT_MAX_EXAMPLES:-50}

runner_pid=""
started_services=false
cleanup() {
  if [ -n "$runner_pid" ]; then kill "$runner_pid" 2>/dev/null || true; wait "$runner_pid" 2>/dev/null || true; fi
  if $started_services; then scripts/services.sh stop; fi
}
trap cleanup EXIT

status=$(scripts/services.sh status)
if [[ $status != *"moto: running"* || $status != *"mongo: running"* ]]; then
  started_services=true # set first: a partial start is stopped too
  scripts/services.sh start
fi
eval "$(scripts/services.sh env)"

cargo build --quiet --locked -p herald-local
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
base="http://127.0.0.1:$port"
log="$HERALD_STATE_DIR/contract-runner.log"
mkdir -p "$HERALD_STATE_DIR"
target/debug/herald-local serve --port "$port" --prefix "herald-contract-$$" >"$log" 2>&1 &
runner_pid=$!
for _ in $(seq 1 120); do
  if curl -sf "$base/local/token" >/dev/null 2>&1; then break; fi
  if ! kill -0 "$runner_pid" 2>/dev/null; then echo "the local runner exited; its log:" >&2; cat "$log" >&2; exit 1; fi
  sleep 0.5
done
# An admin of an organization of its own, so the run sees only what it made.
token=$(curl -sf "$base/local/token?org=contract-$$&role=admin")

seed=()
if [ -n "${HERALD_CONTRACT_SEED:-}" ]; then seed=(--seed "$HERALD_CONTRACT_SEED"); fi
"$SCHEMATHESIS" run docs/openapi.yaml \
  --url "$base" \
  -H "Authorization: Bearer $token" \
  --checks not_a_server_error,response_schema_conformance,content_type_conformance,status_code_conformance,ignored_auth \
  --max-examples "$MAX_EXAMPLES" \
  --workers 1 \
  --request-timeout 30 \
  --no-color \
  "${seed[@]}" "$@"
