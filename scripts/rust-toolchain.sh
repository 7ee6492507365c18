#!/usr/bin/env bash
# rust-toolchain.toml pins the machine's installed stable (1.95.0). Machines where rustup
# knows that release only as "stable" get a link, so nothing is downloaded.
set -euo pipefail
want="$(sed -n 's/^channel *= *"\(.*\)"/\1/p' "$(dirname "$0")/../rust-toolchain.toml")"
command -v rustup >/dev/null 2>&1 || exit 0
if ! rustup toolchain list | grep -q "^${want}-"; then
  stable_dir="$(rustup +stable which rustc 2>/dev/null | xargs -r dirname | xargs -r dirname)"
  if [ -n "$stable_dir" ] && "$stable_dir/bin/rustc" --version | grep -q " ${want} "; then
    rustup toolchain link "$want" "$stable_dir"
    echo "rust-toolchain: linked $want to the installed stable" >&2
  fi
fi
