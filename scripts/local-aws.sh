#!/usr/bin/env bash
# Local AWS for development and tests: moto_server on 127.0.0.1:4566 (LocalStack's port and
# protocol), no Docker needed.
#
#   scripts/local-aws.sh start    start moto_server in the background (idempotent)
#   scripts/local-aws.sh stop     stop it
#   scripts/local-aws.sh status   report whether it answers
#
# When AWS_ENDPOINT_URL is set (LocalStack, or a real endpoint) nothing is started or
# stopped: the script only reports that endpoint.
# pid and log live under .local/ at the repo root. Needs .venv/ (scripts/python-env.sh).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="$ROOT/.local"
PIDFILE="$STATE/moto_server.pid"
LOGFILE="$STATE/moto_server.log"
HOST="127.0.0.1"
PORT="${LOCAL_AWS_PORT:-4566}"
URL="http://$HOST:$PORT"
MOTO="$ROOT/.venv/bin/moto_server"

log() { echo "local-aws: $*" >&2; }

answers() {
  # moto_server answers GET /moto-api/ with 200; any HTTP answer at all means something listens.
  if command -v curl >/dev/null 2>&1; then
    curl -s -o /dev/null --max-time 2 "$URL/moto-api/"
  else
    python3 - "$URL/moto-api/" <<'PY' >/dev/null 2>&1
import sys, urllib.request, urllib.error
try:
    urllib.request.urlopen(sys.argv[1], timeout=2)
except urllib.error.HTTPError:
    pass
PY
  fi
}

our_pid() {
  # Prints the pid recorded in .local/ if that process is still alive.
  local pid
  pid="$(cat "$PIDFILE" 2>/dev/null || true)"
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then echo "$pid"; fi
}

external_endpoint() {
  if [ -n "${AWS_ENDPOINT_URL:-}" ]; then
    log "AWS_ENDPOINT_URL=$AWS_ENDPOINT_URL is set: using it, moto_server is not managed"
    return 0
  fi
  return 1
}

start() {
  external_endpoint && return 0
  local pid
  pid="$(our_pid)"
  if answers; then
    log "already running at $URL${pid:+ (pid $pid)}"
    return 0
  fi
  if [ ! -x "$MOTO" ]; then
    log "$MOTO missing: run scripts/python-env.sh first"
    exit 1
  fi
  mkdir -p "$STATE"
  # setsid: the server outlives the shell (and CI step) that started it.
  # moto through scripts/moto_server.py: its Query reads the asked partition only.
  setsid "$ROOT/.venv/bin/python" "$ROOT/scripts/moto_server.py" -H "$HOST" -p "$PORT" >"$LOGFILE" 2>&1 </dev/null &
  echo $! >"$PIDFILE"
  for _ in $(seq 1 100); do
    if answers; then
      log "moto_server running at $URL (pid $(cat "$PIDFILE"), log .local/moto_server.log)"
      return 0
    fi
    if [ -z "$(our_pid)" ]; then
      log "moto_server exited; last log lines:"
      tail -n 20 "$LOGFILE" >&2 || true
      rm -f "$PIDFILE"
      exit 1
    fi
    sleep 0.2
  done
  log "moto_server did not answer at $URL within 20 s; log: $LOGFILE"
  exit 1
}

stop() {
  external_endpoint && return 0
  local pid
  pid="$(our_pid)"
  if [ -z "$pid" ]; then
    rm -f "$PIDFILE"
    if answers; then
      log "something answers at $URL but was not started by this script; left alone"
    else
      log "not running"
    fi
    return 0
  fi
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 50); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$PIDFILE"
  log "stopped (pid $pid)"
}

status() {
  external_endpoint && return 0
  local pid
  pid="$(our_pid)"
  if answers; then
    log "running at $URL${pid:+ (pid $pid)}"
  else
    log "not running${pid:+ (pid $pid alive but not answering)}"
    return 1
  fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *)
    echo "usage: $0 start|stop|status" >&2
    exit 2
    ;;
esac
