#!/usr/bin/env bash
# `make package`: one bootstrap per function with cargo-lambda (installed into .venv from
# PyPI), ready for `sam deploy`. PACKAGE_ARCH=arm64 (default, as template.yaml) or x86-64.
# arm64 needs the aarch64-unknown-linux-gnu standard library: `rustup target add
# aarch64-unknown-linux-gnu` where rustup can download it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/python-env.sh
.venv/bin/pip install -q -r scripts/requirements-deploy.txt
arch="${PACKAGE_ARCH:-arm64}"
if [ "$arch" = arm64 ] && ! rustup target list --installed 2>/dev/null | grep -q '^aarch64-unknown-linux-gnu$'; then
  echo "package: the aarch64-unknown-linux-gnu target is not installed; run" >&2
  echo "  rustup target add aarch64-unknown-linux-gnu    (or PACKAGE_ARCH=x86-64 make package)" >&2
  exit 1
fi
export PATH="$PWD/.venv/bin:$PATH"
packages=()
for dir in functions/*/; do
  [ -f "$dir/Cargo.toml" ] && packages+=(-p "$(sed -n 's/^name *= *"\(.*\)"/\1/p' "$dir/Cargo.toml" | head -1)")
done
cargo-lambda lambda build --release "--$arch" "${packages[@]}"
ls -l target/lambda/*/bootstrap
