#!/usr/bin/env bash
# Runs the whole Herald bundle locally: installs what is missing, starts moto and the
# MongoDB-compatible server, then serves the API on http://127.0.0.1:${HERALD_PORT:-3000}.
# Ctrl-C stops the bundle and the services.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/services.sh start
trap 'scripts/services.sh stop' EXIT
eval "$(scripts/services.sh env)"
cargo run --quiet -p herald-local -- serve "$@"
