#!/usr/bin/env bash
# Chooses the flist chunk size by measurement: for each size, same run, same data:
#   - pack throughput of a file of random bytes into a local zdb, and of a tree of real
#     files (taken from /usr) into a dir store;
#   - dedup between two versions of that tree (v2: every 8th file of 64 KiB or more has 100
#     bytes inserted in its middle, every 8th other one 4 KiB appended): the bytes a pack
#     of v2 uploads after v1 is in the store (less is better);
#   - reads through the mount from the local zdb with fio psync, 1 job: cold sequential
#     1 MiB (empty cache, one pass), cold random 4 KiB, and warm sequential answered by the
#     mount process (fio drops the kernel's pages first); warm reads from the kernel's page
#     cache do not depend on the chunk size and are in perf/flist-bench.sh.
# Appends to perf/results/flist-chunk-sweep-<date>.md and prints it.
#
# usage: perf/flist-chunk-sweep.sh [FILE_MIB (256)] [TREE_MIB (200)] [SECONDS (3)] [SIZES...]
# Needs root (FUSE, drop_caches), fio and redis-cli (installed when missing); runs at nice -10;
# builds zos and zdb in release mode (or uses ZOS_BIN and ZDB_BIN when both are set).
set -euo pipefail
file_mib=${1:-256}
tree_mib=${2:-200}
seconds=${3:-3}
shift $(( $# < 3 ? $# : 3 ))
sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(524288 786432 1048576)
project=$(cd "$(dirname "$0")/.." && pwd)
cd "$project"
[ "$(id -u)" -eq 0 ] || { echo "run as root (mount, drop_caches)"; exit 1; }
renice -n -10 $$ >/dev/null
command -v fio >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fio >/dev/null; }
command -v redis-cli >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-tools >/dev/null; }
if [ -n "${ZOS_BIN:-}" ] && [ -n "${ZDB_BIN:-}" ]; then
  zos=$ZOS_BIN; zdb=$ZDB_BIN  # binaries already built (release)
else
  cargo build --release -p control -p dataplane --bins >/dev/null
  target=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
  zos="$target/release/zos"; zdb="$target/release/zdb"
fi
scratch=$(mktemp -d)
pids=()
cleanup() {
  umount "$scratch/mnt" 2>/dev/null || true
  for p in "${pids[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  sleep 0.3; rm -rf "$scratch"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches; }
mount_flist() { # FLIST CACHE
  # --no-passthrough: this sweep measures the chunk path; with passthrough, a file read
  # whole would be read from its plaintext copy afterwards, whatever the chunk size.
  "$zos" flist mount "$1" "$scratch/mnt" --cache "$2" --no-passthrough >/dev/null 2>>"$scratch/mount.log" &
  for _ in $(seq 500); do grep -q " $scratch/mnt " /proc/self/mountinfo && return; sleep 0.02; done
  echo "mount failed" >&2; exit 1
}
unmount() { "$zos" flist umount "$scratch/mnt"; sleep 0.3; }
fio_mbps() { # FILE RW BS INVALIDATE TIMED
  local extra=""
  [ "$5" = 1 ] && extra="--time_based --runtime=$seconds"
  fio --name=sweep --filename="$1" --rw="$2" --bs="$3" --numjobs=1 --ioengine=psync \
    --size="${file_mib}M" --invalidate="$4" --output-format=json $extra 2>/dev/null |
    python3 -c 'import json,sys; j=json.load(sys.stdin)["jobs"][0]["read"]; print("%.0f" % (j["bw_bytes"]/1e6))'
}
summary_field() { # SUMMARY REGEX -> first group
  python3 -c 'import re,sys; m=re.search(sys.argv[2], sys.argv[1]); print(m.group(1) if m else "?")' "$1" "$2"
}

echo "preparing: ${file_mib} MiB random file, a ${tree_mib} MiB tree from /usr and its v2" >&2
mkdir -p "$scratch/random" "$scratch/mnt"
head -c "$((file_mib * 1048576))" /dev/urandom >"$scratch/random/data.bin"
python3 - /usr "$scratch/v1" "$scratch/v2" "$tree_mib" <<'PY'
import os, shutil, sys
source, v1, v2, budget = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]) << 20
taken, index = 0, 0
for directory, subdirectories, files in os.walk(source):
    subdirectories.sort()
    for name in sorted(files):
        path = os.path.join(directory, name)
        if os.path.islink(path) or not os.path.isfile(path):
            continue
        size = os.path.getsize(path)
        if taken + size > budget:
            continue
        relative = os.path.relpath(path, source)
        for root in (v1, v2):
            os.makedirs(os.path.join(root, os.path.dirname(relative)), exist_ok=True)
        try:
            data = open(path, "rb").read()
        except OSError:
            continue
        open(os.path.join(v1, relative), "wb").write(data)
        if index % 8 == 0 and size >= 65536:
            data = data[: size // 2] + b"v2" * 50 + data[size // 2 :]
        elif index % 8 == 4:
            data = data + bytes(range(256)) * 16
        open(os.path.join(v2, relative), "wb").write(data)
        taken += size
        index += 1
    if taken >= budget * 0.98:
        break
PY

rows=()
for size in "${sizes[@]}"; do
  echo "chunk size $size" >&2
  rm -rf "$scratch/zdb" "$scratch/dirstore" "$scratch/cache"; mkdir -p "$scratch/zdb" "$scratch/cache"
  port=$(free_port)
  "$zdb" --listen 127.0.0.1 --port "$port" --data "$scratch/zdb/data" --index "$scratch/zdb/index" >/dev/null 2>&1 &
  zdb_pid=$!; pids+=("$zdb_pid")
  for _ in $(seq 100); do [ "$(redis-cli -p "$port" PING 2>/dev/null)" = PONG ] && break; sleep 0.1; done
  pack_random=$("$zos" flist pack "$scratch/random" -o "$scratch/random.fl" --store "zdb://127.0.0.1:$port/default" --chunk-size "$size" 2>/dev/null | tail -1)
  pack_v1=$("$zos" flist pack "$scratch/v1" -o "$scratch/v1.fl" --store "dir://$scratch/dirstore" --chunk-size "$size" 2>/dev/null | tail -1)
  pack_v2=$("$zos" flist pack "$scratch/v2" -o "$scratch/v2.fl" --store "dir://$scratch/dirstore" --chunk-size "$size" 2>/dev/null | tail -1)
  random_seconds=$(summary_field "$pack_random" ' in ([0-9.]+) s;')
  v1_bytes=$(summary_field "$pack_v1" ' files, ([0-9]+) bytes\)')
  v1_seconds=$(summary_field "$pack_v1" ' in ([0-9.]+) s;')
  v1_stored=$(summary_field "$pack_v1" 'uploaded \(([0-9]+) bytes\)')
  v2_uploaded=$(summary_field "$pack_v2" 'uploaded \(([0-9]+) bytes\)')
  random_mbps=$(python3 -c "print(round($file_mib * 1048576 / 1e6 / $random_seconds))")
  tree_mbps=$(python3 -c "print(round($v1_bytes / 1e6 / $v1_seconds))")
  v2_share=$(python3 -c "print(f'{100 * $v2_uploaded / $v1_stored:.1f}%')")
  v2_mib=$(python3 -c "print(f'{$v2_uploaded / 1048576:.1f}')")

  rm -rf "$scratch/cache"; mkdir -p "$scratch/cache"; drop_caches
  mount_flist "$scratch/random.fl" "$scratch/cache"
  cold_seq=$(fio_mbps "$scratch/mnt/data.bin" read 1M 1 0)
  warm_process=$(fio_mbps "$scratch/mnt/data.bin" read 1M 1 1)
  unmount
  rm -rf "$scratch/cache"; mkdir -p "$scratch/cache"; drop_caches
  mount_flist "$scratch/random.fl" "$scratch/cache"
  cold_random=$(fio_mbps "$scratch/mnt/data.bin" randread 4k 1 1)
  unmount
  kill "$zdb_pid"; wait "$zdb_pid" 2>/dev/null || true
  rows+=("| $((size / 1024)) KiB | $random_mbps | $tree_mbps | $v2_mib MiB ($v2_share of v1's) | $cold_seq | $cold_random | $warm_process |")
done

date_tag=$(date -u +%Y-%m-%d)
out="perf/results/flist-chunk-sweep-$date_tag.md"
mkdir -p perf/results
# A second run the same day is appended, so runs in different orders sit side by side.
[ -e "$out" ] && echo >>"$out"
{
  echo "# flist chunk size sweep ($date_tag)"
  echo
  echo "Command: \`perf/flist-chunk-sweep.sh $file_mib $tree_mib $seconds ${sizes[*]}\`; machine: $(nproc) cores,"
  echo "$(uname -r); load average at the end $(cut -d' ' -f1-3 /proc/loadavg) (other work was running)."
  echo "Random file: ${file_mib} MiB of random bytes packed into a local zdb. Tree: ${tree_mib} MiB of"
  echo "real files from /usr packed into a dir store; v2 changes every 8th file (100 bytes inserted"
  echo "in the middle of files of 64 KiB or more, or 4 KiB appended). Reads: fio psync, 1 job, MB/s,"
  echo "through the mount from the local zdb; cold = empty chunk cache and dropped kernel caches;"
  echo "random reads run ${seconds} s; warm (mount process) = fio drops the kernel's pages, the mount"
  echo "answers from memory."
  echo
  echo "| chunk | pack random MB/s | pack tree MB/s | v2 uploads after v1 | cold seq 1M MB/s | cold rand 4k MB/s | warm seq 1M, mount process MB/s |"
  echo "|---|---|---|---|---|---|---|"
  for row in "${rows[@]}"; do echo "$row"; done
} >>"$out"
cat "$out"
