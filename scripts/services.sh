#!/usr/bin/env bash
# Starts or stops Herald's local services on loopback, without Docker:
#   moto (AWS: DynamoDB, SQS, S3, Secrets Manager, Scheduler)  port $HERALD_MOTO_PORT  (4566)
#   (moto runs through scripts/moto_server.py, which makes DynamoDB item writes atomic as the real service does)
#   SecantusDB (MongoDB wire protocol)                         port $HERALD_MONGO_PORT (27018)
# State (pids, logs, data) lives in $HERALD_STATE_DIR (.local/services).
#
#   scripts/services.sh start|stop|status|env
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/portable.sh

MOTO_PORT=${HERALD_MOTO_PORT:-4566}
MONGO_PORT=${HERALD_MONGO_PORT:-27018}
STATE=${HERALD_STATE_DIR:-.local/services}

wait_for_port() { # name port pidfile
  for _ in $(seq 1 150); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$2") 2>/dev/null; then return 0; fi
    if ! kill -0 "$(cat "$3")" 2>/dev/null; then
      echo "$1 exited; its log:" >&2; cat "$STATE/$1.log" >&2; return 1
    fi
    sleep 0.2
  done
  echo "$1 did not open port $2 in 30 s" >&2; return 1
}

start_one() { # name port command...
  local name=$1 port=$2; shift 2
  if [ -f "$STATE/$name.pid" ] && kill -0 "$(cat "$STATE/$name.pid")" 2>/dev/null; then return 0; fi
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "port $port is already taken; set HERALD_$(upper "$name")_PORT to another port" >&2; return 1
  fi
  # Its own session, so stopping it also stops any children it spawned.
  in_new_session nohup "$@" >"$STATE/$name.log" 2>&1
  echo $! >"$STATE/$name.pid"
  wait_for_port "$name" "$port" "$STATE/$name.pid"
}

# Returns once the process has exited (SecantusDB takes seconds on SIGTERM), so `stop`
# then `start` finds the port free.
stop_one() {
  local pidfile="$STATE/$1.pid"
  if [ -f "$pidfile" ]; then
    stop_group "$(cat "$pidfile")"
    rm -f "$pidfile"
  fi
}

case "${1:-}" in
  start)
    scripts/setup.sh
    mkdir -p "$STATE/mongo-data"
    start_one moto "$MOTO_PORT" .venv/bin/python scripts/moto_server.py -H 127.0.0.1 -p "$MOTO_PORT"
    start_one mongo "$MONGO_PORT" .venv/bin/secantusd-py --host 127.0.0.1 --port "$MONGO_PORT" --storage-path "$STATE/mongo-data"
    ;;
  stop)
    stop_one moto
    stop_one mongo
    ;;
  status)
    for name in moto mongo; do
      if [ -f "$STATE/$name.pid" ] && kill -0 "$(cat "$STATE/$name.pid")" 2>/dev/null; then echo "$name: running"; else echo "$name: stopped"; fi
    done
    ;;
  env)
    # The environment the bundle and the tests use to reach these services.
    echo "export AWS_ENDPOINT_URL=http://127.0.0.1:$MOTO_PORT"
    echo "export AWS_REGION=us-east-1 AWS_ACCESS_KEY_ID=local AWS_SECRET_ACCESS_KEY=local"
    echo "export MONGODB_URI=mongodb://127.0.0.1:$MONGO_PORT"
    ;;
  *)
    echo "usage: $0 start|stop|status|env" >&2; exit 2 ;;
esac
