#!/usr/bin/env bash
# flist mount against the local filesystem, same machine, same run, same files:
#   fio sequential 1 MiB reads and random 4 KiB reads, 1 and 4 jobs, on
#   - the local filesystem (the source folder; page cache warm, as a mount's warm run is),
#   - the FUSE mount, cold: empty chunk cache, kernel caches dropped, chunks from a local zdb,
#   - the same mount, warm (second pass).
# plus mount time for flists of 1,000 and 50,000 entries and `find -exec stat` over the
# 50,000-entry tree, mounted and local. Writes a markdown table to
# perf/results/flist-<date>.md and prints it.
#
# usage: perf/flist-bench.sh [FILE_MIB (default 512)] [RANDOM_SECONDS (default 5)]
# Needs root (FUSE mount, drop_caches) and fio; installs fio when missing; builds zos and
# zdb in release mode.
set -euo pipefail
file_mib=${1:-512}
random_seconds=${2:-5}
project=$(cd "$(dirname "$0")/.." && pwd)
cd "$project"
[ "$(id -u)" -eq 0 ] || { echo "run as root (mount, drop_caches)"; exit 1; }
command -v fio >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fio >/dev/null; }
command -v redis-cli >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-tools >/dev/null; }
cargo build --release -p control -p dataplane --bins >/dev/null
target=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
zos="$target/release/zos"; zdb="$target/release/zdb"
scratch=$(mktemp -d)
pids=(); mounts=()
cleanup() {
  umount "$scratch/mnt" 2>/dev/null || true
  for m in "${mounts[@]:-}"; do [ -n "$m" ] && umount "$m" 2>/dev/null || true; done
  for p in "${pids[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  sleep 0.3; rm -rf "$scratch"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now() { python3 -c 'import time; print(time.monotonic())'; }
drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches; }

mount_flist() { # mount_flist FLIST MOUNTPOINT CACHE -> prints milliseconds until mounted
  # Spawned and polled from one python process, so the figure is the mount's, not the
  # shell's process start-up.
  python3 - "$zos" "$1" "$2" "$3" "$scratch/mount.log" <<'PY'
import subprocess, sys, time
zos, flist, mountpoint, cache, log = sys.argv[1:]
def mounted():
    return any(line.split(" ")[4] == mountpoint for line in open("/proc/self/mountinfo"))
start = time.monotonic()
process = subprocess.Popen([zos, "flist", "mount", flist, mountpoint, "--cache", cache],
                           stdout=subprocess.DEVNULL, stderr=open(log, "a"), start_new_session=True)
while not mounted():
    if process.poll() is not None or time.monotonic() - start > 10:
        sys.exit(f"mount of {flist} failed")
    time.sleep(0.0005)
print(f"{(time.monotonic() - start) * 1000:.1f}")
PY
  mounts+=("$2")
}
unmount() { "$zos" flist umount "$1"; sleep 0.3; }

fio_mbps() { # fio_mbps FILE RW BS JOBS -> MB/s
  local extra=""
  [ "$2" = randread ] && extra="--time_based --runtime=$random_seconds"
  fio --name=bench --filename="$1" --rw="$2" --bs="$3" --numjobs="$4" --ioengine=psync --size="${file_mib}M" \
    --group_reporting --output-format=json $extra 2>/dev/null |
    python3 -c 'import json,sys; j=json.load(sys.stdin)["jobs"][0]["read"]; print("%.0f MB/s, %.0f IOPS" % (j["bw_bytes"]/1e6, j["iops"]))'
}

echo "preparing: ${file_mib} MiB file, zdb store, trees of 1,000 and 50,000 entries" >&2
mkdir -p "$scratch/local" "$scratch/zdb" "$scratch/mnt" "$scratch/cache" "$scratch/tree1k" "$scratch/tree50k" "$scratch/dirstore"
head -c "$((file_mib * 1048576))" /dev/urandom >"$scratch/local/data.bin"
port=$(free_port)
"$zdb" --listen 127.0.0.1 --port "$port" --data "$scratch/zdb/data" --index "$scratch/zdb/index" >"$scratch/zdb.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do [ "$(redis-cli -p "$port" PING 2>/dev/null)" = PONG ] && break; sleep 0.1; done
pack_start=$(now)
"$zos" flist pack "$scratch/local" -o "$scratch/data.fl" --store "zdb://127.0.0.1:$port/default" >"$scratch/pack.log" 2>&1
pack_seconds=$(python3 -c "import time; print(f'{time.monotonic() - $pack_start:.2f}')")
python3 - "$scratch/tree1k" 1000 "$scratch/tree50k" 50000 <<'PY'
import os, sys
for root, count in ((sys.argv[1], int(sys.argv[2])), (sys.argv[3], int(sys.argv[4]))):
    per_dir = 100
    for index in range(count):
        directory = os.path.join(root, f"d{index // per_dir:04d}")
        if index % per_dir == 0:
            os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, f"f{index:06d}"), "w") as f:
            f.write(str(index))
PY
"$zos" flist pack "$scratch/tree1k" -o "$scratch/tree1k.fl" --store "dir://$scratch/dirstore" >/dev/null 2>&1
"$zos" flist pack "$scratch/tree50k" -o "$scratch/tree50k.fl" --store "dir://$scratch/dirstore" >/dev/null 2>&1

rows=()
for job in "read 1M" "randread 4k"; do
  set -- $job
  for jobs in 1 4; do
    cat "$scratch/local/data.bin" >/dev/null  # local: page cache warm
    local_result=$(fio_mbps "$scratch/local/data.bin" "$1" "$2" "$jobs")
    rm -rf "$scratch/cache"; mkdir -p "$scratch/cache"; drop_caches
    mount_flist "$scratch/data.fl" "$scratch/mnt" "$scratch/cache" >/dev/null
    cold_result=$(fio_mbps "$scratch/mnt/data.bin" "$1" "$2" "$jobs")
    warm_result=$(fio_mbps "$scratch/mnt/data.bin" "$1" "$2" "$jobs")
    unmount "$scratch/mnt"
    rows+=("| $1 $2, $jobs job(s) | $local_result | $cold_result | $warm_result |")
  done
done

mount_1k=$(mount_flist "$scratch/tree1k.fl" "$scratch/mnt" "$scratch/cache"); unmount "$scratch/mnt"
mount_50k=$(mount_flist "$scratch/tree50k.fl" "$scratch/mnt" "$scratch/cache")
stat_start=$(now); find "$scratch/mnt" -exec stat {} + >/dev/null
stat_mounted=$(python3 -c "import time; print(f'{time.monotonic() - $stat_start:.2f}')")
unmount "$scratch/mnt"
drop_caches
stat_start=$(now); find "$scratch/tree50k" -exec stat {} + >/dev/null
stat_local=$(python3 -c "import time; print(f'{time.monotonic() - $stat_start:.2f}')")

date_tag=$(date -u +%Y-%m-%d)
out="perf/results/flist-$date_tag.md"
mkdir -p perf/results
{
  echo "# flist mount vs local filesystem ($date_tag)"
  echo
  echo "Command: \`perf/flist-bench.sh $file_mib $random_seconds\`; machine: $(nproc) cores, $(uname -r);"
  echo "one ${file_mib} MiB file of random bytes; fio psync; chunks of 1 MiB from a local zdb;"
  echo "cold = empty chunk cache and dropped kernel caches, warm = the next pass on the same mount;"
  echo "random reads run ${random_seconds} s each. Pack of the file into zdb took ${pack_seconds} s."
  echo
  echo "| fio | local filesystem | flist mount, cold | flist mount, warm |"
  echo "|---|---|---|---|"
  for row in "${rows[@]}"; do echo "$row"; done
  echo
  echo "| metadata | flist mount | local filesystem |"
  echo "|---|---|---|"
  echo "| mount time, 1,000 entries | ${mount_1k} ms | - |"
  echo "| mount time, 50,000 entries | ${mount_50k} ms | - |"
  echo "| find -exec stat, 50,000 entries (cold) | ${stat_mounted} s | ${stat_local} s |"
} >"$out"
cat "$out"
