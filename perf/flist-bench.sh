#!/usr/bin/env bash
# flist mount against the local filesystem, same machine, same run, same files:
#   fio sequential 1 MiB reads and random 4 KiB reads, 1 and 4 jobs, on
#   - the local filesystem (the source folder), page cache warm;
#   - the FUSE mount, cold: empty chunk cache, kernel caches dropped, chunks from a local zdb;
#   - the same mount, warm: the file read once, which has the mount make its checked
#     plaintext copy in the chunk cache (the script waits for it); later opens are FUSE
#     passthrough to that copy, whose pages the kernel caches as the local run has them;
#   - a mount with --no-passthrough, warm: the kernel's page cache of the FUSE file itself
#     (4 KiB folios on this kernel), what every read got before passthrough;
#   - the same --no-passthrough mount with the kernel's pages dropped before the run
#     (fio's default invalidate=1): every read goes to the mount process, which answers
#     from its memory cache. This is the FUSE round trip itself.
# Warm runs are time based, alternate local and mount ROUNDS times, and report the median,
# so that a burst of load on the machine hits both sides. fio's `invalidate=0` keeps it
# from dropping the page cache at the start of a run (its default drops it, which makes a
# "warm" local run read the disk).
# Plus mount time for flists of 1,000 and 50,000 entries and `find -exec stat` over the
# 50,000-entry tree, mounted and local. Writes perf/results/flist-<date>.md and prints it.
#
# usage: perf/flist-bench.sh [FILE_MIB (256)] [SECONDS per run (3)] [ROUNDS (3)] [CHUNK_BYTES]
# Needs root (FUSE mount, drop_caches) and fio; installs fio and redis-tools when missing;
# builds zos and zdb in release mode (or uses ZOS_BIN and ZDB_BIN when both are set). Runs
# itself at nice -10 (zdb, the mount and fio alike) so that other work disturbs it less.
set -euo pipefail
file_mib=${1:-256}
seconds=${2:-3}
rounds=${3:-3}
chunk_bytes=${4:-}
project=$(cd "$(dirname "$0")/.." && pwd)
cd "$project"
[ "$(id -u)" -eq 0 ] || { echo "run as root (mount, drop_caches)"; exit 1; }
renice -n -10 $$ >/dev/null
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
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
median() { python3 -c 'import statistics,sys; print(round(statistics.median(float(x) for x in sys.argv[1:])))' "$@"; }
median_ms() { python3 -c 'import statistics,sys; print(f"{statistics.median(float(x) for x in sys.argv[1:]):.1f}")' "$@"; }

mount_flist() { # mount_flist FLIST MOUNTPOINT CACHE [OPTION] -> prints milliseconds until mounted
  # Spawned and polled from one python process, so the figure is the mount's, not the
  # shell's process start-up.
  python3 - "$zos" "$1" "$2" "$3" "$scratch/mount.log" ${4:+"$4"} <<'PY'
import subprocess, sys, time
zos, flist, mountpoint, cache, log = sys.argv[1:6]
def mounted():
    return any(line.split(" ")[4] == mountpoint for line in open("/proc/self/mountinfo"))
start = time.monotonic()
process = subprocess.Popen([zos, "flist", "mount", flist, mountpoint, "--cache", cache] + sys.argv[6:],
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
wait_for_copy() { # wait_for_copy CACHE: until the mount's plaintext copy of the file is in place
  for _ in $(seq 600); do
    [ -n "$(ls -A "$1/files" 2>/dev/null)" ] && return 0
    sleep 0.1
  done
  echo "no plaintext copy after 60 s (see $scratch/mount.log)" >&2; exit 1
}

# fio_mbps FILE RW BS JOBS INVALIDATE TIMED -> MB/s (TIMED=1: run $seconds, looping the file)
fio_mbps() {
  local extra=""
  [ "$6" = 1 ] && extra="--time_based --runtime=$seconds"
  fio --name=bench --filename="$1" --rw="$2" --bs="$3" --numjobs="$4" --ioengine=psync \
    --size="${file_mib}M" --invalidate="$5" --group_reporting --output-format=json $extra 2>/dev/null |
    python3 -c 'import json,sys; j=json.load(sys.stdin)["jobs"][0]["read"]; print("%.0f" % (j["bw_bytes"]/1e6))'
}

echo "preparing: ${file_mib} MiB file, zdb store, trees of 1,000 and 50,000 entries" >&2
mkdir -p "$scratch/local" "$scratch/zdb" "$scratch/mnt" "$scratch/cache" "$scratch/tree1k" "$scratch/tree50k" "$scratch/dirstore"
head -c "$((file_mib * 1048576))" /dev/urandom >"$scratch/local/data.bin"
port=$(free_port)
"$zdb" --listen 127.0.0.1 --port "$port" --data "$scratch/zdb/data" --index "$scratch/zdb/index" >"$scratch/zdb.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do [ "$(redis-cli -p "$port" PING 2>/dev/null)" = PONG ] && break; sleep 0.1; done
chunk_option=()
[ -n "$chunk_bytes" ] && chunk_option=(--chunk-size "$chunk_bytes")
"$zos" flist pack "$scratch/local" -o "$scratch/data.fl" --store "zdb://127.0.0.1:$port/default" "${chunk_option[@]}" >"$scratch/pack.log" 2>&1
pack_summary=$(tail -1 "$scratch/pack.log" | sed "s|$scratch/||g")
chunk_used=$("$zos" flist inspect "$scratch/data.fl" | sed -n 's/^chunk size: *\([0-9]*\).*/\1/p')
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

rows=(); cold_all=()
for job in "read 1M" "randread 4k"; do
  set -- $job
  for jobs in 1 4; do
    echo "fio $1 $2, $jobs job(s)" >&2
    # Cold: a fresh mount on an empty chunk cache, kernel caches dropped, one pass (the
    # random run for $seconds); $rounds times, the median is shown.
    cold_runs=()
    for round in $(seq "$rounds"); do
      [ "$round" = 1 ] || unmount "$scratch/mnt"
      rm -rf "$scratch/cache"; mkdir -p "$scratch/cache"; drop_caches
      mount_flist "$scratch/data.fl" "$scratch/mnt" "$scratch/cache" >/dev/null
      if [ "$1" = read ]; then cold_runs+=("$(fio_mbps "$scratch/mnt/data.bin" "$1" "$2" "$jobs" 1 0)")
      else cold_runs+=("$(fio_mbps "$scratch/mnt/data.bin" "$1" "$2" "$jobs" 1 1)"); fi
    done
    cold=$(median "${cold_runs[@]}")
    cold_all+=("$1 $2 x$jobs: ${cold_runs[*]};")
    # Warm: both files read whole once (the mount then makes its plaintext copy), then
    # alternate.
    cat "$scratch/local/data.bin" "$scratch/mnt/data.bin" >/dev/null
    wait_for_copy "$scratch/cache"
    local_runs=(); warm_runs=()
    for _ in $(seq "$rounds"); do
      local_runs+=("$(fio_mbps "$scratch/local/data.bin" "$1" "$2" "$jobs" 0 1)")
      warm_runs+=("$(fio_mbps "$scratch/mnt/data.bin" "$1" "$2" "$jobs" 0 1)")
    done
    local_mbps=$(median "${local_runs[@]}"); warm_mbps=$(median "${warm_runs[@]}")
    unmount "$scratch/mnt"
    # The mount process's own path: no passthrough, the FUSE file's page cache, then none.
    mount_flist "$scratch/data.fl" "$scratch/mnt" "$scratch/cache" --no-passthrough >/dev/null
    cat "$scratch/mnt/data.bin" >/dev/null
    fuse_cache_mbps=$(fio_mbps "$scratch/mnt/data.bin" "$1" "$2" "$jobs" 0 1)
    daemon_mbps=$(fio_mbps "$scratch/mnt/data.bin" "$1" "$2" "$jobs" 1 1)
    unmount "$scratch/mnt"
    ratio=$(python3 -c "print(f'{100 * $warm_mbps / $local_mbps:.0f}%')")
    rows+=("| $1 $2, $jobs job(s) | $local_mbps | $cold | $warm_mbps | **$ratio** | $fuse_cache_mbps | $daemon_mbps |")
  done
done

# The store path alone, no FUSE: the same chunks from the same zdb through `zos flist cat`
# (fetch, verify, decrypt, read-ahead; no chunk cache).
cat_runs=()
for _ in $(seq "$rounds"); do
  drop_caches
  cat_start=$(now); "$zos" flist cat "$scratch/data.fl" /data.bin >/dev/null
  cat_runs+=("$(python3 -c "import time; print(round($file_mib * 1048576 / 1e6 / (time.monotonic() - $cat_start)))")")
done
cat_mbps=$(median "${cat_runs[@]}")

mount_runs=()
for _ in 1 2 3; do mount_runs+=("$(mount_flist "$scratch/tree1k.fl" "$scratch/mnt" "$scratch/cache")"); unmount "$scratch/mnt"; done
mount_1k=$(median_ms "${mount_runs[@]}")
mount_runs=()
for _ in 1 2 3; do mount_runs+=("$(mount_flist "$scratch/tree50k.fl" "$scratch/mnt" "$scratch/cache")"); unmount "$scratch/mnt"; done
mount_50k=$(median_ms "${mount_runs[@]}")
mount_flist "$scratch/tree50k.fl" "$scratch/mnt" "$scratch/cache" >/dev/null
drop_caches
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
  echo "Command: \`perf/flist-bench.sh $file_mib $seconds $rounds $chunk_bytes\`; machine: $(nproc) cores, $(uname -r),"
  echo "load average at the start $load_start, at the end $(cut -d' ' -f1-3 /proc/loadavg) (other work was running)."
  echo "One ${file_mib} MiB file of random bytes, chunks of $chunk_used bytes in a local zdb; fio psync; MB/s."
  echo "Pack: $pack_summary."
  echo
  echo "- local: the file on the local filesystem, page cache warm (fio invalidate=0), ${seconds} s runs."
  echo "- cold: fresh mount, empty chunk cache, kernel caches dropped; sequential: one pass; random: ${seconds} s;"
  echo "  median of $rounds runs (cold runs: ${cold_all[*]})."
  echo "- warm: the same mount after one whole read, which made the file's checked plaintext copy in"
  echo "  the chunk cache: opens are FUSE passthrough to it, and the kernel's page cache of the copy"
  echo "  answers (fio invalidate=0), ${seconds} s runs. Local and warm alternate $rounds times; the median is shown."
  echo "- warm, no passthrough: a \`--no-passthrough\` mount after one whole read: the page cache of the FUSE"
  echo "  file itself answers (4 KiB folios on this kernel, where the local file gets large ones); one ${seconds} s run."
  echo "- warm, mount process: the same \`--no-passthrough\` mount, fio drops the file's pages first"
  echo "  (invalidate=1), so every read is a FUSE request answered from the mount's memory cache."
  echo
  echo "| fio | local filesystem | flist mount, cold | flist mount, warm | warm / local | warm, no passthrough | warm, mount process |"
  echo "|---|---|---|---|---|---|---|"
  for row in "${rows[@]}"; do echo "$row"; done
  echo
  echo "Cold sequential read of the same file without FUSE (\`zos flist cat\`, same zdb, kernel caches"
  echo "dropped): ${cat_mbps} MB/s (median of $rounds: ${cat_runs[*]})."
  echo
  echo "| metadata | flist mount | local filesystem |"
  echo "|---|---|---|"
  echo "| mount time, 1,000 entries (median of 3) | ${mount_1k} ms | - |"
  echo "| mount time, 50,000 entries (median of 3) | ${mount_50k} ms | - |"
  echo "| find -exec stat, 50,000 entries (cold) | ${stat_mounted} s | ${stat_local} s |"
} >"$out"
cat "$out"
