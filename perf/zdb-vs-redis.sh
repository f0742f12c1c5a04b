#!/usr/bin/env bash
# zdb against redis-server, same machine, same run, matched durability:
#   zdb (default: fdatasync every second)  vs  redis-server appendonly yes, appendfsync everysec
#   zdb --sync (reply after fdatasync)      vs  redis-server appendonly yes, appendfsync always
# redis-benchmark -c 50, SET and GET, values of 64 B and 4 KiB, pipelines of 1 and 16. SETs use
# random keys over 100M so that they are new writes; GETs read keys written just before.
# Each figure is the best of RUNS runs, ours and the peer's interleaved, with the client's CPU
# share in that run (near 100%: the single-threaded client set the pace, not the server). Writes
# a markdown table to perf/results/zdb-vs-redis-<date>.md and prints it.
#
# usage: perf/zdb-vs-redis.sh [RUNS (default 5)] [REQUESTS per run (default 200000)]
# (with 3 runs the -P 1 rows were a coin toss: on 2 cores both servers run in two modes, some
# 60% apart, depending on where the scheduler puts the client and the server)
# Installs redis-server and redis-tools when missing; builds zdb in release mode.
set -euo pipefail
runs=${1:-5}
requests=${2:-200000}
project=$(cd "$(dirname "$0")/.." && pwd)
cd "$project"
for tool in redis-server:redis-server redis-benchmark:redis-tools; do
  command -v "${tool%%:*}" >/dev/null 2>&1 || {
    sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${tool#*:}" >/dev/null
  }
done
cargo build --release --locked -p dataplane --bin zdb >/dev/null
target=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
zdb="$target/release/zdb"
scratch=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]:-}"; do kill "$p" 2>/dev/null || true; done; sleep 0.3; rm -rf "$scratch"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_ping() { for _ in $(seq 100); do [ "$(redis-cli -p "$1" PING 2>/dev/null)" = PONG ] && return 0; sleep 0.1; done; return 1; }

start_pair() { # start_pair zdb-flags redis-appendfsync
  zport=$(free_port); rport=$(free_port)
  rm -rf "$scratch/z" "$scratch/r"; mkdir -p "$scratch/z" "$scratch/r"
  "$zdb" --listen 127.0.0.1 --port "$zport" --data "$scratch/z/data" --index "$scratch/z/index" $1 >"$scratch/z.log" 2>&1 &
  zpid=$!; pids+=("$zpid")
  redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly yes --appendfsync "$2" \
    --dir "$scratch/r" --daemonize no >"$scratch/r.log" 2>&1 &
  rpid=$!; pids+=("$rpid")
  wait_ping "$zport" && wait_ping "$rport"
}
stop_pair() { kill "$zpid" "$rpid" 2>/dev/null || true; wait "$zpid" "$rpid" 2>/dev/null || true; }

once() { # once PORT TEST SIZE PIPELINE KEYSPACE -> "OPS/S CLIENT-CPU-%"
  # The figure line only (a failed run prints the header alone: that counts as 0). The client's
  # CPU share over the run (user + system over wall time, from bash's `time`) says who set the
  # pace: near 100%, redis-benchmark's one thread was the bottleneck, whatever the server.
  local TIMEFORMAT='%R %U %S' ops wall user sys
  { time redis-benchmark -p "$1" -t "$2" -n "$requests" -c 50 -P "$4" -d "$3" -r "$5" --csv \
      >"$scratch/run.csv" 2>/dev/null || true; } 2>"$scratch/run.time"
  ops=$(grep -v '^"test"' "$scratch/run.csv" | tail -1 | cut -d, -f2 | tr -d '"' | cut -d. -f1)
  read -r wall user sys <"$scratch/run.time"
  echo "${ops:-0} $(python3 -c "print(round(100 * ($user + $sys) / $wall) if $wall > 0 else 0)")"
}
best() { # best "OPS CPU" "OPS CPU" -> the run with more ops/s
  local a b
  read -r a _ <<<"$1"; read -r b _ <<<"$2"
  [ "${a:-0}" -gt "${b:-0}" ] && echo "$1" || echo "$2"
}
ops() { echo "${1%% *}"; }
cpu() { echo "${1##* }%"; }

date_tag=$(date -u +%Y-%m-%d)
out="perf/results/zdb-vs-redis-$date_tag.md"
mkdir -p perf/results
{
  echo "# zdb vs redis-server ($date_tag)"
  echo
  echo "Command: \`perf/zdb-vs-redis.sh $runs $requests\`; machine: $(nproc) cores, $(uname -r);"
  echo "redis-benchmark -c 50 -n $requests, best of $runs interleaved runs each."
  echo
  echo "Client CPU: redis-benchmark's CPU share in the best run against each server (one"
  echo "thread: near 100% means the client, not the server, set the pace)."
  echo
  echo "| durability | test | value | pipeline | zdb ops/s | redis ops/s | zdb/redis | client CPU zdb / redis |"
  echo "|---|---|---|---|---|---|---|---|"
} >"$out"
for setting in "default:everysec" "--sync:always"; do
  zflags=${setting%%:*}; [ "$zflags" = default ] && zflags=""
  fsync=${setting#*:}
  label="zdb ${zflags:-default} / redis appendfsync $fsync"
  for size in 64 4096; do
    for pipeline in 1 16; do
      start_pair "$zflags" "$fsync"
      zs="0 0"; rs="0 0"; zg="0 0"; rg="0 0"
      for _ in $(seq "$runs"); do
        zs=$(best "$(once "$zport" set "$size" "$pipeline" 100000000)" "$zs")
        rs=$(best "$(once "$rport" set "$size" "$pipeline" 100000000)" "$rs")
      done
      # Fill a small key space so that every GET below hits.
      for p in "$zport" "$rport"; do
        redis-benchmark -p "$p" -t set -n 200000 -c 50 -P 16 -d "$size" -r 20000 -q >/dev/null 2>&1
      done
      for _ in $(seq "$runs"); do
        zg=$(best "$(once "$zport" get "$size" "$pipeline" 20000)" "$zg")
        rg=$(best "$(once "$rport" get "$size" "$pipeline" 20000)" "$rg")
      done
      stop_pair
      for row in "SET:$zs:$rs" "GET:$zg:$rg"; do
        IFS=: read -r test zrun rrun <<<"$row"
        z=$(ops "$zrun"); r=$(ops "$rrun")
        ratio=$(python3 -c "print(f'{$z/$r:.2f}' if $r else 'n/a')")
        echo "| $label | $test | $size B | $pipeline | $z | $r | $ratio | $(cpu "$zrun") / $(cpu "$rrun") |" >>"$out"
      done
    done
  done
done

# What the client itself can do: PING with a bulk reply asks nothing of either server, so its
# rate is the ceiling redis-benchmark reaches on this machine. A figure close to it means the
# benchmark client, not the server, sets the pace.
start_pair "" everysec
{
  echo
  echo "Client ceiling (PING_MBULK: the servers do no work), same run:"
  echo
  echo "| pipeline | zdb ops/s | redis ops/s | client CPU zdb / redis |"
  echo "|---|---|---|---|"
} >>"$out"
for pipeline in 1 16; do
  zp="0 0"; rp="0 0"
  for _ in $(seq "$runs"); do
    zp=$(best "$(once "$zport" ping_mbulk 3 "$pipeline" 1)" "$zp")
    rp=$(best "$(once "$rport" ping_mbulk 3 "$pipeline" 1)" "$rp")
  done
  echo "| $pipeline | $(ops "$zp") | $(ops "$rp") | $(cpu "$zp") / $(cpu "$rp") |" >>"$out"
done
stop_pair
cat "$out"
