#!/usr/bin/env bash
# Runs Herald's whole test suite on a fresh machine: installs what is missing, starts the
# local services on their own ports (so a running local bundle is not disturbed), runs
# formatting and lint checks, the template checks, and every unit, handler and integration
# test, then stops the services.
set -euo pipefail
cd "$(dirname "$0")/.."

export HERALD_MOTO_PORT=${HERALD_TEST_MOTO_PORT:-4766}
export HERALD_MONGO_PORT=${HERALD_TEST_MONGO_PORT:-27218}
export HERALD_STATE_DIR=.local/test-services
export SAM_CLI_TELEMETRY=0
# A clean CI build is one-shot: incremental caches only cost disk (gigabytes), never time.
if [[ -n "${CI:-}" ]]; then export CARGO_INCREMENTAL=0; fi

step() { printf '\n==> %s\n' "$*"; }

step "setup"
scripts/setup.sh
rm -rf "$HERALD_STATE_DIR"
mkdir -p "$HERALD_STATE_DIR"

step "template checks (cfn-lint, sam validate --lint)"
.venv/bin/cfn-lint template.yaml
.venv/bin/sam validate --lint --region us-east-1 >/dev/null

step "cargo fmt --check"
cargo fmt --all --check

step "cargo deny (licenses, bans, sources)"
cargo deny --locked check licenses bans sources

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "start local services"
scripts/services.sh start
trap 'scripts/services.sh stop' EXIT
eval "$(scripts/services.sh env)"
# The integration tests refuse to run without these; they never skip.
export HERALD_TEST_AWS_ENDPOINT=$AWS_ENDPOINT_URL HERALD_TEST_MONGODB_URI=$MONGODB_URI

step "cargo test (unit, handler, integration)"
# The local runner records every AWS call each function makes (local/src/iam.rs) into this
# file, for the permissions check that follows.
iam_usage=$PWD/target/iam-usage.tsv
rm -f "$iam_usage"
HERALD_IAM_USAGE_FILE=$iam_usage cargo test --workspace --locked --no-fail-fast

step "permissions: each function's calls in that run = what template.yaml grants it"
HERALD_IAM_USAGE_FROM=$iam_usage cargo test --locked -p herald-tests --test api -- --ignored permissions::

step "contract fuzzing (schemathesis against docs/openapi.yaml)"
scripts/contract.sh

step "browser end-to-end (admin page)"
# Run the way a macOS or non-root user runs it: the browser given by CHROME_PATH and an
# apt-get that refuses, so the test proves it needs neither Debian nor root (issue 22). Only
# finding the browser may install one, where it can.
browser=$(scripts/e2e.sh --browser)
no_apt=$(mktemp -d)
printf '#!/bin/sh\necho "apt-get is not available here" >&2; exit 1\n' >"$no_apt/apt-get"
chmod +x "$no_apt/apt-get"
PATH="$no_apt:$PATH" CHROME_PATH="$browser" scripts/e2e.sh
rm -rf "$no_apt"
