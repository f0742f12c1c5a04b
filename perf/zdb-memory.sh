#!/usr/bin/env bash
# Memory of zdb's in-memory index: loads 1,000,000 distinct 16-byte keys (1-byte values) with
# redis-cli --pipe, then reports the resident memory (now and peak) after loading, and again
# after a restart that reads the index snapshot. Target: under 100 MB.
# usage: perf/zdb-memory.sh   (writes perf/results/zdb-memory-<date>.md)
set -euo pipefail
project=$(cd "$(dirname "$0")/.." && pwd)
cd "$project"
command -v redis-cli >/dev/null 2>&1 || {
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq redis-tools >/dev/null
}
cargo build --release --locked -p dataplane --bin zdb >/dev/null
target=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
scratch=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$scratch"' EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
python3 - "$scratch/load.resp" <<'PY'
import sys
with open(sys.argv[1], "wb") as out:
    for i in range(1_000_000):
        key = b"k%015d" % i
        out.write(b"*3\r\n$3\r\nSET\r\n$16\r\n" + key + b"\r\n$1\r\nv\r\n")
PY
start() {
  "$target/release/zdb" --listen 127.0.0.1 --port "$port" --data "$scratch/data" --index "$scratch/index" >>"$scratch/zdb.log" 2>&1 &
  pid=$!
  for _ in $(seq 100); do [ "$(redis-cli -p "$port" PING 2>/dev/null)" = PONG ] && return; sleep 0.1; done
}
mem() { awk '/VmRSS|VmHWM/ {printf "%s %.1f MB  ", $1, $2/1024}' "/proc/$pid/status"; }
start
redis-cli -p "$port" --pipe <"$scratch/load.resp" >/dev/null
keys=$(redis-cli -p "$port" DBSIZE)
loaded=$(mem)
kill "$pid"; while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
start
restarted=$(mem)
out="perf/results/zdb-memory-$(date -u +%Y-%m-%d).md"
mkdir -p perf/results
{
  echo "# zdb index memory ($(date -u +%Y-%m-%d))"
  echo
  echo "Command: \`perf/zdb-memory.sh\`; $keys keys of 16 bytes, 1-byte values."
  echo
  echo "| moment | memory |"
  echo "|---|---|"
  echo "| after loading | $loaded |"
  echo "| after a restart (index snapshot read) | $restarted |"
} >"$out"
cat "$out"
