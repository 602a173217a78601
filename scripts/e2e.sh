#!/usr/bin/env bash
# Browser end-to-end test of the admin page (e2e/): installs Debian's Chromium and the
# Node driver if missing, starts the local bundle on a free port against the services that
# are already running, runs `node --test` in e2e/, and stops the bundle again.
#
# Needs the services' environment first (scripts/test.sh does this):
#   scripts/services.sh start && eval "$(scripts/services.sh env)" && scripts/e2e.sh
set -euo pipefail
cd "$(dirname "$0")/.."

: "${AWS_ENDPOINT_URL:?start the services and run: eval \"\$(scripts/services.sh env)\"}"

apt_updated=
apt_install() {
  if [ -z "$apt_updated" ]; then apt-get update; apt_updated=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y "$@"
}
# Debian's browser: Playwright's own browser downloads cannot be used here.
[ -x /usr/bin/chromium ] || apt_install chromium
command -v npm >/dev/null || apt_install nodejs npm

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
log=$(mktemp -t herald-e2e-bundle.XXXXXX.log)

# Its own session, so stopping it stops cargo and the bundle together.
setsid cargo run -q -p herald-local -- serve --port "$port" --prefix "$prefix" >"$log" 2>&1 &
bundle=$!
stop_bundle() {
  kill -- "-$bundle" 2>/dev/null || true
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
(cd e2e && HERALD_URL=$url node --test) || status=$?
if [ "$status" -ne 0 ]; then
  echo "the bundle's log (last 40 lines):" >&2; tail -n 40 "$log" >&2
fi
exit "$status"
