#!/usr/bin/env bash
# The demo web app's end-to-end browser test (web/e2e/demo.e2e.mjs): Debian's Chromium,
# headless, driven by playwright-core through the whole product, against a bundle started
# here on free ports: local AWS (moto_server, unless AWS_ENDPOINT_URL points at one), the
# sandbox bank and the local runtime serving web/app. Everything started here is stopped
# on exit. Screenshots and logs go to web/e2e/artifacts/.
#
#   bash scripts/test-web.sh                      # what `make test` runs last
#   UPDATE_SCREENSHOT=1 bash scripts/test-web.sh  # also copy the dashboard to docs/screenshots/
#
# Needs: Node.js >= 20 with npm, the workspace's debug binaries (built here; cheap when
# `cargo build --workspace --bins` already ran), .venv (scripts/python-env.sh) for moto.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

log() { echo "test-web: $*" >&2; }
die() {
  log "FAILED: $*"
  exit 1
}

ARTIFACTS="$ROOT/web/e2e/artifacts"
rm -rf "$ARTIFACTS"
mkdir -p "$ARTIFACTS"

# --- Chromium (Debian's; playwright downloads no browser) -----------------------------
CHROMIUM="${CHROMIUM_PATH:-/usr/bin/chromium}"
if [ ! -x "$CHROMIUM" ]; then
  command -v apt-get >/dev/null 2>&1 || die "$CHROMIUM is missing and apt-get is not available: install Chromium and set CHROMIUM_PATH"
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  log "installing chromium and chromium-driver with apt-get"
  if ! $sudo apt-get install -y -qq chromium chromium-driver >"$ARTIFACTS/apt.log" 2>&1; then
    log "apt-get install failed; running apt-get update first"
    $sudo apt-get update -qq >>"$ARTIFACTS/apt.log" 2>&1 || true
    $sudo apt-get install -y -qq chromium chromium-driver >>"$ARTIFACTS/apt.log" 2>&1 ||
      die "could not install chromium (see $ARTIFACTS/apt.log)"
  fi
  [ -x "$CHROMIUM" ] || die "chromium was installed but $CHROMIUM is missing"
fi
log "browser: $("$CHROMIUM" --version 2>/dev/null | head -n 1)"

# --- Node.js and playwright-core ------------------------------------------------------
command -v node >/dev/null 2>&1 || die "node is missing: install Node.js >= 20 (with npm)"
command -v npm >/dev/null 2>&1 || die "npm is missing: install npm"
node_major="$(node -p 'process.versions.node.split(".")[0]')"
[ "$node_major" -ge 20 ] || die "Node.js >= 20 is needed (playwright-core), found $(node --version)"
log "npm ci in web/"
(cd web && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error >"$ARTIFACTS/npm.log" 2>&1) ||
  die "npm ci failed (see $ARTIFACTS/npm.log)"

# --- Binaries -------------------------------------------------------------------------
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
if [ "${TEST_WEB_SKIP_BUILD:-0}" != 1 ]; then
  log "cargo build --workspace --bins"
  cargo build -q --workspace --bins || die "cargo build failed"
fi
BIN="$TARGET/debug"
for b in sandbox-bank local-runtime; do
  [ -x "$BIN/$b" ] || die "$BIN/$b is not built"
done

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

pids=()
names=()
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do
    for _ in $(seq 1 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  if [ "$rc" -ne 0 ]; then
    log "logs of the processes started here: $ARTIFACTS/*.log"
    for name in "${names[@]}"; do
      [ "$name" = moto ] && continue
      echo "----- last lines of $name.log -----" >&2
      tail -n 15 "$ARTIFACTS/$name.log" >&2 2>/dev/null || true
    done
  fi
  exit "$rc"
}
trap cleanup EXIT INT TERM

start() {
  local name="$1"
  shift
  "$@" >"$ARTIFACTS/$name.log" 2>&1 &
  pids+=($!)
  names+=("$name")
}

# Waits until `url` answers 200, or the process `pid` exits, or `seconds` pass.
wait_ready() {
  local what="$1" url="$2" pid="$3" seconds="$4"
  local deadline=$((SECONDS + seconds))
  while [ "$SECONDS" -lt "$deadline" ]; do
    if curl -sf -o /dev/null --max-time 2 "$url"; then return 0; fi
    kill -0 "$pid" 2>/dev/null || die "$what exited before answering at $url (see $ARTIFACTS/$what.log)"
    sleep 0.2
  done
  die "$what did not answer at $url within $seconds s (see $ARTIFACTS/$what.log)"
}

# --- Local AWS ------------------------------------------------------------------------
if [ -n "${AWS_ENDPOINT_URL:-}" ]; then
  log "local AWS: $AWS_ENDPOINT_URL (already running, not managed here)"
else
  [ -x .venv/bin/moto_server ] || bash scripts/python-env.sh
  aws_port="$(free_port)"
  start moto .venv/bin/python scripts/moto_server.py -H 127.0.0.1 -p "$aws_port"
  export AWS_ENDPOINT_URL="http://127.0.0.1:$aws_port"
  wait_ready moto "$AWS_ENDPOINT_URL/moto-api/" "${pids[-1]}" 30
  log "local AWS: moto_server at $AWS_ENDPOINT_URL"
fi
export AWS_REGION="${AWS_REGION:-eu-central-1}"
export AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:-test}"
export AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:-test}"

# --- Sandbox bank ---------------------------------------------------------------------
sandbox_port="$(free_port)"
SANDBOX_URL="http://127.0.0.1:$sandbox_port"
# Payments settle quickly: ACTC → ACSP → ACSC, 300 ms apart.
start sandbox env SANDBOX_ADDR="127.0.0.1:$sandbox_port" SANDBOX_PAYMENT_STEP_MS=300 RUST_LOG=warn \
  "$BIN/sandbox-bank"
wait_ready sandbox "$SANDBOX_URL/healthz" "${pids[-1]}" 30

# --- Local runtime (serves web/app) ----------------------------------------------------
runtime_port="$(free_port)"
BASE_URL="http://127.0.0.1:$runtime_port"
# A fresh stack name: tables and queues of earlier runs are not reused.
# Batch items waiting for their SCA are polled every 2 s (template.yaml's poll schedule
# does the rest; our SCA callback starts a poll right away).
start runtime env PORT="$runtime_port" STACK_NAME="web-e2e-$$-$RANDOM" \
  SANDBOX_BANK_URL="$SANDBOX_URL" BANK_REGISTRY_PATH="$ROOT/infra/banks.json" \
  LOCAL_BIN_DIR="$BIN" WEB_ROOT="$ROOT/web/app" \
  PAYMENT_BATCH_SCA_WAIT_SECS=2 RUST_LOG="${RUST_LOG:-warn}" \
  "$BIN/local-runtime"
wait_ready runtime "$BASE_URL/healthz" "${pids[-1]}" 120
log "bundle up: app $BASE_URL/ · sandbox bank $SANDBOX_URL"

# --- The browser test -----------------------------------------------------------------
started=$SECONDS
BASE_URL="$BASE_URL" SANDBOX_URL="$SANDBOX_URL" CHROMIUM_PATH="$CHROMIUM" ARTIFACTS="$ARTIFACTS" \
  node web/e2e/demo.e2e.mjs || die "the browser test failed after $((SECONDS - started)) s (screenshots and logs: $ARTIFACTS)"
log "passed in $((SECONDS - started)) s; screenshots in $ARTIFACTS"
if [ "${UPDATE_SCREENSHOT:-0}" = 1 ]; then
  mkdir -p docs/screenshots
  cp "$ARTIFACTS/dashboard.png" docs/screenshots/dashboard.png
  log "docs/screenshots/dashboard.png updated"
fi
