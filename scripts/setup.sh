#!/usr/bin/env bash
# Installs everything Herald's local stack and test suite need, into the repository:
# a Python virtual environment (.venv) with moto, the MongoDB-compatible server and the
# template linters. Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.herald-requirements
if ! cmp -s scripts/requirements.txt "$stamp" 2>/dev/null; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -r scripts/requirements.txt
  cp scripts/requirements.txt "$stamp"
fi
# License, ban and source checks of the dependency graph (deny.toml). Installed outside the
# repository (~/.cargo/bin), so a machine builds it once.
CARGO_DENY_VERSION=0.20.2
if ! cargo deny --version 2>/dev/null | grep -q " $CARGO_DENY_VERSION\$"; then
  cargo install --quiet --locked cargo-deny --version "$CARGO_DENY_VERSION"
fi
