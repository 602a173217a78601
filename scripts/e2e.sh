#!/usr/bin/env bash
# Browser end-to-end test of the admin page (e2e/): uses a Chrome or Chromium already on the
# machine (CHROME_PATH, the macOS applications, PATH; installs Debian's Chromium only as root
# on Debian, else says what to install and fails), installs the pinned Node driver, starts
# the local bundle on a free port against the services that are already running, runs
# `node --test` in e2e/, and stops the bundle again. Works with macOS's bash 3.2.
#
# Needs the services' environment first (scripts/test.sh does this):
#   scripts/services.sh start && eval "$(scripts/services.sh env)" && scripts/e2e.sh
set -euo pipefail
cd "$(dirname "$0")/.."

: "${AWS_ENDPOINT_URL:?start the services and run: eval \"\$(scripts/services.sh env)\"}"

. scripts/lib/portable.sh

# Installs Debian packages, only where that is possible (Debian or Ubuntu, as root);
# anywhere else it says what to install and fails: the test never skips.
apt_updated=
apt_install() { # what-it-is package...
  local what=$1; shift
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    if [ -z "$apt_updated" ]; then apt-get update; apt_updated=1; fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y "$@"
  else
    echo "scripts/e2e.sh needs $what. Install it (macOS: 'brew install --cask google-chrome' or" >&2
    echo "'brew install node'; Debian/Ubuntu: 'sudo apt-get install $*') or point CHROME_PATH at" >&2
    echo "a Chrome/Chromium binary, then run again." >&2
    exit 1
  fi
}

# A Chrome or Chromium already on the machine: CHROME_PATH, the macOS application bundles,
# then PATH. Playwright's own browser downloads are not used (no network for them here).
find_browser() {
  local candidate
  for candidate in "${CHROME_PATH:-}" \
    "/Applications/Google Chrome.app/Contents/MacOS/Google Chrome" \
    "/Applications/Chromium.app/Contents/MacOS/Chromium" \
    "$HOME/Applications/Google Chrome.app/Contents/MacOS/Google Chrome" \
    "$(command -v chromium 2>/dev/null || true)" \
    "$(command -v chromium-browser 2>/dev/null || true)" \
    "$(command -v google-chrome 2>/dev/null || true)" \
    "$(command -v google-chrome-stable 2>/dev/null || true)"; do
    if [ -n "$candidate" ] && [ -x "$candidate" ]; then printf '%s\n' "$candidate"; return 0; fi
  done
  return 1
}
if ! browser=$(find_browser); then
  apt_install "Chrome or Chromium" chromium >&2
  browser=$(find_browser)
fi
# `scripts/e2e.sh --browser`: find (or install) the browser, print its path and stop.
if [ "${1:-}" = "--browser" ]; then printf '%s\n' "$browser"; exit 0; fi
echo "browser: $browser"
command -v npm >/dev/null || apt_install "Node.js with npm" nodejs npm

# The pinned driver from e2e/package-lock.json; skipped when that exact install is there.
if ! cmp -s e2e/package-lock.json e2e/node_modules/.herald-lock 2>/dev/null; then
  (cd e2e && npm ci --no-audit --no-fund --loglevel=error)
  cp e2e/package-lock.json e2e/node_modules/.herald-lock
fi

# Build in the foreground, so a compile error shows here rather than as "did not start".
cargo build -q -p herald-local

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
# Its own resource names, so the run neither sees nor disturbs another bundle's tables.
prefix="e2e-$(head -c 4 /dev/urandom | od -An -tx1 | tr -d ' \n')"
log=$(mktemp "${TMPDIR:-/tmp}/herald-e2e-bundle.XXXXXX")

# Its own session, so stopping it stops cargo and the bundle together.
in_new_session cargo run -q -p herald-local -- serve --port "$port" --prefix "$prefix" >"$log" 2>&1
bundle=$!
stop_bundle() {
  stop_group "$bundle"
  wait "$bundle" 2>/dev/null || true
  rm -f "$log"
}
trap stop_bundle EXIT

url="http://127.0.0.1:$port"
for _ in $(seq 1 300); do
  if curl -fsS -o /dev/null "$url/admin" 2>/dev/null; then break; fi
  if ! kill -0 "$bundle" 2>/dev/null; then
    echo "the local bundle exited; its log:" >&2; cat "$log" >&2; exit 1
  fi
  sleep 0.2
done
if ! curl -fsS -o /dev/null "$url/admin"; then
  echo "the local bundle did not answer on $url in 60 s; its log:" >&2; cat "$log" >&2; exit 1
fi

echo "admin page under test: $url/admin (screenshot: e2e/screenshots/admin.png)"
status=0
(cd e2e && HERALD_URL=$url CHROMIUM=$browser node --test) || status=$?
if [ "$status" -ne 0 ]; then
  echo "the bundle's log (last 40 lines):" >&2; tail -n 40 "$log" >&2
fi
exit "$status"
