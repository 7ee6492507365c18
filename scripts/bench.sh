#!/usr/bin/env bash
# `make bench`: the performance report. Builds the release binaries (the Lambda release
# profile: LTO, one codegen unit, stripped, panic=abort; ~10 minutes on 2 cores the first
# time), runs every benchmark in one go (each with a fresh private moto_server) and prints
# ONE table:
#   - bench-functions: per function bootstrap size, process start → first handled
#     invocation, warm latency, peak memory;
#   - bench-aggregation: bench-categorise (categorisation throughput and the seed's
#     substring loop), cold/warm GET /v1/balances and /v1/transactions at 100 ms bank
#     latency, bank calls per read, and the seed's refetch-on-every-read;
#   - bench-bulk: acceptance of 1,000 items, initiation throughput at a 50/s cap, the
#     seed's one-payment-at-a-time queue.
# Each benchmark's own table and notes go to .local/bench/<name>.md; the rows of all of
# them to .local/bench/report.jsonl, which bench-report turns into the table.
# The benchmarks' settings (BENCH_LATENCY_MS, BENCH_COLD_RUNS, ...) pass through.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/rust-toolchain.sh
TARGET="${CARGO_TARGET_DIR:-$PWD/target}"
export BANK_REGISTRY_PATH="${BANK_REGISTRY_PATH:-$PWD/infra/banks.json}"
cargo build --release --bins --workspace --exclude runtime-fixture
bin="$TARGET/release"
out=.local/bench
mkdir -p "$out"
export BENCH_REPORT="$PWD/$out/report.jsonl"
: >"$BENCH_REPORT"

failed=()
for bench in functions aggregation bulk; do
  echo "bench: bench-$bench (its table and notes: $out/$bench.md)" >&2
  started=$SECONDS
  # A fresh private moto_server for each benchmark (scripts/bench-moto.sh, stopped when
  # the subshell ends): moto's Query and SQS calls cost time in proportion to everything
  # stored, so one benchmark's leftovers would slow the next.
  if (source scripts/bench-moto.sh && "$bin/bench-$bench" >"$out/$bench.md"); then
    echo "bench: bench-$bench done in $((SECONDS - started)) s" >&2
  else
    echo "bench: bench-$bench FAILED after $((SECONDS - started)) s (see $out/$bench.md and the log above)" >&2
    failed+=("bench-$bench")
  fi
done

echo
echo "## Performance report ($(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, release binaries)"
echo
"$bin/bench-report" "$BENCH_REPORT"
echo
echo "Footnotes (set-up of each figure): $out/functions.md, $out/aggregation.md, $out/bulk.md."
if [ "${#failed[@]}" -gt 0 ]; then
  echo "failed: ${failed[*]}" >&2
  exit 1
fi
