#!/usr/bin/env bash
# `make bench-aggregation` (and the second half of `make bench`): the aggregation API's
# figures from the issue "Multi-bank aggregation", in one table:
#   - cold and warm GET /v1/balances and GET /v1/transactions through HTTP, 3 banks x 3
#     accounts, with the sandbox bank's latency fault at 100 ms per call;
#   - categorisation throughput over 1,000,000 transactions (bench-categorise).
# Release builds of the functions (as `make bench` builds them) and of the bench binary.
# Settings: BENCH_LATENCY_MS, BENCH_COLD_RUNS, BENCH_WARM_RUNS, BENCH_LARGE_PAGE_SIZE
# (see tests/src/bin/bench-aggregation.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/rust-toolchain.sh
TARGET="${CARGO_TARGET_DIR:-$PWD/target}"

# A private moto_server for the run (port BENCH_AWS_PORT, default 4577), stopped at the
# end: a shared one that other tests keep busy would make the figures those tests' figures.
# BENCH_AWS_ENDPOINT_URL uses an endpoint of yours instead.
if [ -n "${BENCH_AWS_ENDPOINT_URL:-}" ]; then
  export AWS_ENDPOINT_URL="$BENCH_AWS_ENDPOINT_URL"
else
  PORT="${BENCH_AWS_PORT:-4577}"
  if curl -s -o /dev/null --max-time 2 "http://127.0.0.1:$PORT/"; then
    echo "bench-aggregation: something already listens on 127.0.0.1:$PORT (set BENCH_AWS_PORT)" >&2
    exit 1
  fi
  [ -x .venv/bin/moto_server ] || bash scripts/python-env.sh
  mkdir -p .local
  .venv/bin/moto_server -H 127.0.0.1 -p "$PORT" >.local/bench-moto.log 2>&1 </dev/null &
  moto_pid=$!
  trap 'kill "$moto_pid" 2>/dev/null || true' EXIT
  for _ in $(seq 1 100); do
    curl -s -o /dev/null --max-time 2 "http://127.0.0.1:$PORT/moto-api/" && break
    sleep 0.2
  done
  export AWS_ENDPOINT_URL="http://127.0.0.1:$PORT"
fi
export AWS_REGION="${AWS_REGION:-eu-central-1}"
export AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:-test}"
export AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:-test}"

# The functions exactly as `make bench` builds them (a no-op right after it), then the
# bench binary; it runs the functions and bench-categorise from its own directory.
cargo build --release --bins --workspace --exclude runtime-fixture --exclude integration-tests
cargo build --release -p integration-tests --bin bench-aggregation
"$TARGET/release/bench-aggregation"
