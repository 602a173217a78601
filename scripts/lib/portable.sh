# Helpers the scripts share so they run on Linux and on macOS (bash 3.2, BSD tools, no
# `setsid`). Sourced, not run.

# Runs a command in a session of its own (so stopping it stops its children too), in the
# background; $! is its pid, which is also its process group. `setsid` is Linux-only;
# elsewhere Python (always here: scripts/setup.sh makes .venv, and macOS has python3) does
# the same.
in_new_session() {
  if command -v setsid >/dev/null 2>&1; then
    setsid "$@" &
  else
    python3 -c 'import os, sys; os.setsid(); os.execvp(sys.argv[1], sys.argv[1:])' "$@" &
  fi
}

# Stops a process group and waits (up to 10 s) until its leader has exited, then kills
# what is left, so a port is free when this returns.
stop_group() { # pid
  local pid=$1 waited=0
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || return 0
  while kill -0 "$pid" 2>/dev/null; do
    if [ "$waited" -ge 100 ]; then
      kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
      break
    fi
    sleep 0.1
    waited=$((waited + 1))
  done
}

# The upper-case form of a word (bash 3.2 has no ${var^^}).
upper() { printf '%s' "$1" | tr '[:lower:]' '[:upper:]'; }
