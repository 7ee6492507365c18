#!/usr/bin/env bash
# `make bench`: builds the release binaries (the Lambda release profile: LTO, one codegen
# unit, stripped, panic=abort) and prints the per-function table of bench-functions.
# Release builds of the AWS SDK take ~10 minutes on 2 cores the first time.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/rust-toolchain.sh
export BANK_REGISTRY_PATH="${BANK_REGISTRY_PATH:-$PWD/infra/banks.json}"
cargo build --release --bins --workspace --exclude runtime-fixture --exclude integration-tests
./target/release/bench-functions target/release
