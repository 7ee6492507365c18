#!/usr/bin/env bash
# `make bench-aggregation` (and the second half of `make bench`): the aggregation API's
# figures from the issue "Multi-bank aggregation", in one table:
#   - cold and warm GET /v1/balances and GET /v1/transactions through HTTP, 3 banks x 3
#     accounts, with the sandbox bank's latency fault at 100 ms per call;
#   - categorisation throughput over 1,000,000 transactions (bench-categorise).
# Release builds of the functions (as `make bench` builds them) and of the bench binary.
# Settings: BENCH_LATENCY_MS, BENCH_COLD_RUNS, BENCH_WARM_RUNS, BENCH_PAGE_SIZE, BENCH_PAGED_SIZE
# (see tests/src/bin/bench-aggregation.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/rust-toolchain.sh
TARGET="${CARGO_TARGET_DIR:-$PWD/target}"

source scripts/bench-moto.sh

# The functions and the bench binaries exactly as `make bench` builds them (a no-op right
# after it); the bench runs the functions and bench-categorise from its own directory.
cargo build --release --bins --workspace --exclude runtime-fixture
"$TARGET/release/bench-aggregation"
