# Sourced by the bench scripts: a private moto_server for the run (port BENCH_AWS_PORT,
# default 4577), stopped when the sourcing script exits; a shared one that other tests keep
# busy would make the figures those tests' figures. BENCH_AWS_ENDPOINT_URL uses an
# endpoint of yours instead. Exports AWS_ENDPOINT_URL, AWS_REGION and dummy credentials.
if [ -n "${BENCH_AWS_ENDPOINT_URL:-}" ]; then
  export AWS_ENDPOINT_URL="$BENCH_AWS_ENDPOINT_URL"
else
  BENCH_PORT="${BENCH_AWS_PORT:-4577}"
  if curl -s -o /dev/null --max-time 2 "http://127.0.0.1:$BENCH_PORT/"; then
    echo "bench: something already listens on 127.0.0.1:$BENCH_PORT (set BENCH_AWS_PORT)" >&2
    exit 1
  fi
  [ -x .venv/bin/moto_server ] || bash scripts/python-env.sh
  mkdir -p .local
  .venv/bin/python scripts/moto_server.py -H 127.0.0.1 -p "$BENCH_PORT" >.local/bench-moto.log 2>&1 </dev/null &
  bench_moto_pid=$!
  trap 'kill "$bench_moto_pid" 2>/dev/null || true' EXIT
  for _ in $(seq 1 100); do
    curl -s -o /dev/null --max-time 2 "http://127.0.0.1:$BENCH_PORT/moto-api/" && break
    sleep 0.2
  done
  export AWS_ENDPOINT_URL="http://127.0.0.1:$BENCH_PORT"
fi
export AWS_REGION="${AWS_REGION:-eu-central-1}"
export AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:-test}"
export AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:-test}"
