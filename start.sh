#!/usr/bin/env bash
# The main job on an embedded default: builds zdb and serves on 0.0.0.0:9900 with its data in
# ./zdb-data and ./zdb-index under the current folder, until Ctrl-C. Extra arguments go to zdb
# (see `zdb --help`). Installs redis-cli (redis-tools) so you can talk to it right away.
set -euo pipefail
project=$(cd "$(dirname "$0")" && pwd)
if ! command -v redis-cli >/dev/null 2>&1; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends redis-tools >/dev/null
fi
cargo build --release --locked --manifest-path "$project/Cargo.toml" --bin zdb
target=$(cargo metadata --format-version 1 --no-deps --manifest-path "$project/Cargo.toml" | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
echo "zdb: serving on port 9900, data in $(pwd)/zdb-data; try: redis-cli -p 9900 SET hello world"
exec "$target/release/zdb" "$@"
