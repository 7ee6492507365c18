#!/usr/bin/env bash
# `make bench-bulk` (and part of `make bench`): the bulk payment figures from the issue
# "Bulk payments" in one table: acceptance time of 1,000 items, end-to-end initiation
# throughput towards one bank capped at 50/s with 100 ms bank latency, the busiest second,
# initiations per item, and the seed's one-at-a-time approach in the same run.
# Release builds of the functions (as `make bench` builds them) and of the bench binary;
# BENCH_PROFILE=debug uses debug builds instead (quicker to build, slower to run).
# Settings: BENCH_BULK_ITEMS, BENCH_BULK_CAP, BENCH_LATENCY_MS, BENCH_NAIVE_ITEMS
# (see tests/src/bin/bench-bulk.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/rust-toolchain.sh
TARGET="${CARGO_TARGET_DIR:-$PWD/target}"
source scripts/bench-moto.sh

if [ "${BENCH_PROFILE:-release}" = debug ]; then
  cargo build --bins --workspace --exclude runtime-fixture
  "$TARGET/debug/bench-bulk"
else
  cargo build --release --bins --workspace --exclude runtime-fixture
  "$TARGET/release/bench-bulk"
fi
