#!/usr/bin/env bash
# Creates (idempotently) the repo's Python virtualenv at .venv/ and installs
# scripts/requirements.txt into it (moto_server for local AWS, cfn-lint).
# The pip install is skipped when .venv/.requirements.sha256 records the same
# requirements hash. Safe to run repeatedly; quiet unless something fails.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
REQS="$ROOT/scripts/requirements.txt"
STAMP="$VENV/.requirements.sha256"
PYTHON="${PYTHON:-python3}"

log() { echo "python-env: $*" >&2; }

hash_reqs() {
  # Hash the requirements together with the interpreter version: a new Python means a new venv.
  { cat "$REQS"; "$PYTHON" -c 'import sys; print(sys.version)'; } | sha256sum | cut -d' ' -f1
}

create_venv() {
  rm -rf "$VENV"
  if ! "$PYTHON" -m venv "$VENV" >/dev/null 2>&1; then
    # Debian/Ubuntu ship venv (ensurepip) separately.
    log "python3 -m venv failed; installing python3-venv with apt-get"
    rm -rf "$VENV"
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq >/dev/null
    local ver
    ver="$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
    $sudo apt-get install -y -qq python3-venv >/dev/null 2>&1 ||
      $sudo apt-get install -y -qq "python${ver}-venv" >/dev/null
    "$PYTHON" -m venv "$VENV"
  fi
}

if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import pip' >/dev/null 2>&1; then
  create_venv
fi

want="$(hash_reqs)"
have="$(cat "$STAMP" 2>/dev/null || true)"
if [ "$want" = "$have" ]; then
  exit 0
fi

log "installing $(basename "$REQS") into .venv/"
export PIP_DISABLE_PIP_VERSION_CHECK=1
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet -r "$REQS"
echo "$want" >"$STAMP"
log "ready ($("$VENV/bin/python" -m pip --version | cut -d' ' -f1-2), moto $("$VENV/bin/python" -c 'import moto; print(moto.__version__)'))"
