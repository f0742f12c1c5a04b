#!/usr/bin/env bash
# The main job on an embedded default, with no configuration: builds zos and runs
# `zos flist demo`, which packs the sample tree fixtures/trees/sample into an flist whose
# chunks go to a local store, mounts it with FUSE (mounting needs root: sudo is used when
# you are not), shows what is in it, and keeps it mounted until Ctrl-C. Extra arguments go to
# `zos flist demo` (see `zos flist demo --help`).
set -euo pipefail
project=$(cd "$(dirname "$0")" && pwd)
cd "$project"
sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
if [ ! -e /dev/fuse ]; then
  $sudo modprobe fuse 2>/dev/null || { echo "start.sh: /dev/fuse is missing (FUSE is not available here)" >&2; exit 1; }
fi
cargo build --release --locked -p control --bin zos -p dataplane --bin zdb
target=$(cargo metadata --format-version 1 --no-deps --locked | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
exec $sudo "$target/release/zos" flist demo "$@"
