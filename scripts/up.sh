#!/usr/bin/env bash
# `make up`: the whole bundle on this machine. Installs what it needs into the repo,
# starts local AWS (unless AWS_ENDPOINT_URL points at one), builds, provisions from
# template.yaml, starts the sandbox bank and the local runtime, prints the URLs and a
# ready-to-paste curl. Ctrl-C stops everything it started.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

bash scripts/rust-toolchain.sh
bash scripts/python-env.sh

started_aws=0
if [ -z "${AWS_ENDPOINT_URL:-}" ] && ! bash scripts/local-aws.sh status >/dev/null 2>&1; then
  bash scripts/local-aws.sh start
  started_aws=1
fi
export AWS_ENDPOINT_URL="${AWS_ENDPOINT_URL:-http://127.0.0.1:4566}"
export AWS_REGION="${AWS_REGION:-eu-central-1}"
export AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:-test}"
export AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:-test}"
export SANDBOX_ADDR="${SANDBOX_ADDR:-127.0.0.1:8080}"
export SANDBOX_BANK_URL="${SANDBOX_BANK_URL:-http://$SANDBOX_ADDR}"
export PORT="${PORT:-3000}"
# Functions run in their binary's folder (as in Lambda); give them the registry by path.
export BANK_REGISTRY_PATH="${BANK_REGISTRY_PATH:-$ROOT/infra/banks.json}"

cargo build --workspace --bins

pids=()
cleanup() {
  trap - EXIT INT TERM
  echo "stopping..." >&2
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ "$started_aws" = 1 ]; then env -u AWS_ENDPOINT_URL bash scripts/local-aws.sh stop; fi
}
trap cleanup EXIT INT TERM

./target/debug/sandbox-bank &
pids+=($!)
./target/debug/local-runtime &
pids+=($!)

healthy=0
for _ in $(seq 1 150); do
  if curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1; then healthy=1; break; fi
  if ! kill -0 "${pids[1]}" 2>/dev/null; then echo "the local runtime exited" >&2; exit 1; fi
  sleep 0.2
done
if [ "$healthy" != 1 ]; then
  echo "GET /healthz did not answer 200 within 30 s; see the logs above" >&2
  exit 1
fi
TOKEN="$(./target/debug/local-token demo)"
cat <<MSG

  demo web app:         http://127.0.0.1:$PORT/   (open it in a browser)
  API (local runtime):  http://127.0.0.1:$PORT
  sandbox bank:         $SANDBOX_BANK_URL   (lt-alpha, lv-baltija, ee-pohja)
  local AWS:            $AWS_ENDPOINT_URL

  try:   curl -s http://127.0.0.1:$PORT/v1/banks
         curl -s -H "Authorization: Bearer $TOKEN" http://127.0.0.1:$PORT/v1/banks
  token for another user:  ./target/debug/local-token <user>

  Ctrl-C stops everything started here.
MSG
wait "${pids[@]}"
