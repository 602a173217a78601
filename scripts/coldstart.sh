#!/usr/bin/env bash
# The cold-start benchmark (docs/PERFORMANCE.md): builds every function and the hello-world
# floor with the release profile, starts the local services on their own ports, and prints
# init time, first-invocation time and peak RSS per function (medians of RUNS processes)
# as ratios to the floor. No AWS account is needed: resources live in moto.
#
#   scripts/coldstart.sh [--runs N] [--only a,b] [--json FILE]
set -euo pipefail
cd "$(dirname "$0")/.."

export HERALD_MOTO_PORT=${HERALD_COLDSTART_MOTO_PORT:-4666}
export HERALD_MONGO_PORT=${HERALD_COLDSTART_MONGO_PORT:-27118}
export HERALD_STATE_DIR=.local/coldstart-services

scripts/setup.sh >/dev/null
cargo build --release --locked -p herald-functions -p herald-bench --bins
rm -rf "$HERALD_STATE_DIR" && mkdir -p "$HERALD_STATE_DIR"
scripts/services.sh start
trap 'scripts/services.sh stop' EXIT
eval "$(scripts/services.sh env)"
target/release/herald-coldstart --bin-dir target/release "$@"
