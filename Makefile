# The two commands a newcomer needs:
#   make up    run the bundle locally (local AWS + provisioning from template.yaml + sandbox bank)
#   make test  run every check and test (what CI runs)
SHELL := /bin/bash
.DEFAULT_GOAL := help

# Local AWS: moto_server on 127.0.0.1:4566 unless AWS_ENDPOINT_URL points elsewhere
# (e.g. LocalStack). Dummy credentials and a region for local endpoints only.
LOCAL_ENV := AWS_REGION=$${AWS_REGION:-eu-central-1} \
	AWS_ACCESS_KEY_ID=$${AWS_ACCESS_KEY_ID:-test} \
	AWS_SECRET_ACCESS_KEY=$${AWS_SECRET_ACCESS_KEY:-test} \
	AWS_ENDPOINT_URL=$${AWS_ENDPOINT_URL:-http://127.0.0.1:4566}

SANDBOX_ADDR ?= 127.0.0.1:8080
STACK_NAME ?= openbank-local

.PHONY: help setup aws-up aws-down provision sandbox up package bench bench-aggregation bench-bulk test-bulk chaos fuzz fuzz-short token test fmt-check clippy lint-template fmt

help:
	@echo "make up     run the bundle locally: local AWS, template.yaml resources, sandbox bank, local runtime on :3000"
	@echo "make test   fmt check, clippy -D warnings, cfn-lint, unit and integration tests"
	@echo "make aws-up / aws-down   start / stop moto_server (skipped when AWS_ENDPOINT_URL is set)"
	@echo "make token  print a local JWT (USER_NAME=alice make token)"
	@echo "make bench  the performance report: release build, every benchmark, one table (functions, aggregation, categorisation, bulk, bank calls, naive ratios)"
	@echo "make bench-aggregation  cold/warm aggregated reads at 100 ms bank latency + categorisation throughput"
	@echo "make bench-bulk  bulk acceptance time (1,000 items) and initiation throughput at 100 ms bank latency, cap 50/s"
	@echo "make test-bulk  the bulk payment e2e with 1,000 items, faults and duplicated messages"
	@echo "make chaos  the long fault run: process crashes, bank faults, duplicates; prints the invariants"
	@echo "make test-web   the demo web app in headless Chromium (installed with apt-get when missing)"
	@echo "make fuzz   schemathesis over docs/openapi.yaml against the local runtime: >= 5,000 requests, no 5xx"
	@echo "make fuzz-short  the same in a few hundred requests (part of make test)"
	@echo "make package  cargo-lambda build of every function (PACKAGE_ARCH=arm64|x86-64)"

setup:
	@bash scripts/rust-toolchain.sh
	@bash scripts/python-env.sh

aws-up: setup
	@bash scripts/local-aws.sh start

aws-down:
	@bash scripts/local-aws.sh stop

provision: aws-up
	@$(LOCAL_ENV) STACK_NAME=$(STACK_NAME) cargo run -q -p infra --bin provision

sandbox:
	SANDBOX_ADDR=$(SANDBOX_ADDR) cargo run -q -p infra --bin sandbox-bank

up:
	@bash scripts/up.sh

package:
	@bash scripts/package.sh

bench: setup
	@bash scripts/bench.sh

bench-aggregation: setup
	@bash scripts/bench-aggregation.sh

bench-bulk: setup
	@bash scripts/bench-bulk.sh

# The bulk payment e2e with the full 1,000-item payroll (make test runs 200 items).
test-bulk: aws-up
	cargo build --workspace --bins
	@$(LOCAL_ENV) BULK_E2E_ITEMS=1000 cargo test -p integration-tests --test bulk_e2e -- --nocapture

# The fault run in its long form (make test runs the short one): crashes, bank faults,
# duplicate deliveries, overlapping schedules; prints the invariants that held.
chaos: aws-up
	cargo build --workspace --bins
	@$(LOCAL_ENV) CHAOS_LONG=1 cargo test -p integration-tests --test chaos -- --nocapture

# Property-based fuzzing of the public API (schemathesis, from docs/openapi.yaml).
fuzz: setup
	@bash scripts/fuzz.sh

fuzz-short: setup
	@bash scripts/fuzz.sh --short

token:
	@cargo run -q -p infra --bin local-token -- $${USER_NAME:-demo}

fmt:
	cargo fmt --all

fmt-check:
	cargo fmt --all -- --check

clippy:
	cargo clippy --workspace --all-targets -- -D warnings

lint-template: setup
	.venv/bin/cfn-lint template.yaml

test: setup fmt-check lint-template clippy aws-up
	cargo build --workspace --bins
	@$(LOCAL_ENV) cargo test --workspace --all-targets
	@$(LOCAL_ENV) bash scripts/fuzz.sh --short
	@$(MAKE) --no-print-directory test-web

# The demo web app end to end in Debian's Chromium (playwright-core from web/package-lock.json);
# starts its own local AWS, sandbox bank and local runtime on free ports.
.PHONY: test-web
test-web: setup
	@bash scripts/test-web.sh
