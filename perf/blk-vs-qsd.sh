#!/usr/bin/env bash
# In-guest fio on our vhost-user-blk (`zos vm disk serve`) against qemu-storage-daemon's
# vhost-user-blk export of an identical raw file at its fastest settings (aio=io_uring,
# cache.direct=on): same guest image, same run, interleaved, best of RUNS each.
#
#   perf/blk-vs-qsd.sh [RUNS]        (default 3; ZOS_GUEST_ACCEL=auto|kvm|tcg, default auto)
#
# Jobs: 4 KiB random read and write at iodepth 32, 1 MiB sequential read and write at
# iodepth 8, libaio + O_DIRECT in the guest, 6 s each over 48 MiB of a 64 MiB disk.
# Writes the table to perf/results/blk-vs-qsd.md (blk-vs-qsd-direct.md when ZOS_SERVE_ARGS is
# set, e.g. ZOS_SERVE_ARGS=--direct for O_DIRECT on our side too) and prints it.
# Needs: qemu-system-x86 (7.2: qemu-storage-daemon is in qemu-system-common), cpio, fio.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
accel=${ZOS_GUEST_ACCEL:-auto}
for tool in qemu-storage-daemon qemu-system-x86_64 fio cpio; do
  command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install qemu-system-x86 fio cpio" >&2; exit 1; }
done
cargo build --release -q -p control --bin zos -p fixtures --bin zos-guest
target=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
zos=$target/release/zos
zos_guest=$target/release/zos-guest

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

truncate -s 64M "$work/peer.img"
# A fresh qemu-storage-daemon per peer run, on the same file (it costs the peer nothing).
# An earlier note blamed qemu-storage-daemon 7.2 for hanging the second VMM on one export;
# that did not reproduce: one daemon served 3 to 6 guests in a row in every probe run, and
# the acceptance check's two guests on one daemon pass. Runs that die here are TCG guests
# that fail under host overload (seen: "IO-APIC + timer doesn't work" panics at boot).
start_qsd() {
  rm -f "$work/peer.sock"
  qemu-storage-daemon \
    --blockdev driver=file,node-name=f0,filename="$work/peer.img",aio=io_uring,cache.direct=on \
    --export type=vhost-user-blk,id=e0,node-name=f0,addr.type=unix,addr.path="$work/peer.sock",writable=on \
    >>"$work/qsd.log" 2>&1 &
  qsd_pid=$!
  pids+=("$qsd_pid")
  for _ in $(seq 100); do [ -S "$work/peer.sock" ] && return 0; sleep 0.1; done
  echo "qemu-storage-daemon did not bind its socket: $(tail -3 "$work/qsd.log")" >&2
  exit 1
}
stop_qsd() { kill "$qsd_pid" 2>/dev/null || true; wait "$qsd_pid" 2>/dev/null || true; }
"$zos" vm disk create "$work/vol" --size 64M >/dev/null
# ZOS_SERVE_ARGS: extra flags for our side, e.g. --direct.
"$zos" vm disk serve "$work/vol" --socket "$work/ours.sock" ${ZOS_SERVE_ARGS:-} >"$work/zos.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do [ -S "$work/ours.sock" ] && break; sleep 0.1; done
[ -S "$work/ours.sock" ] || { echo "zos did not bind its socket: $(tail -3 "$work/zos.log")" >&2; exit 1; }

cat >"$work/fio.sh" <<'T'
F="fio --name=j --filename=/dev/vda --direct=1 --ioengine=libaio --size=48M --runtime=6 --time_based --output-format=terse --terse-version=3"
$F --rw=randread --bs=4k --iodepth=32 | awk -F';' '{ print "FIO_randread=" $8 }'
$F --rw=randwrite --bs=4k --iodepth=32 | awk -F';' '{ print "FIO_randwrite=" $49 }'
$F --rw=read --bs=1M --iodepth=8 | awk -F';' '{ print "FIO_read=" $7 }'
$F --rw=write --bs=1M --iodepth=8 | awk -F';' '{ print "FIO_write=" $48 }'
T

# run_fio SOCKET -> "randread_iops randwrite_iops read_MiBps write_MiBps"
run_fio() {
  "$zos_guest" --accel "$accel" --fio --script "$work/fio.sh" -- \
    -chardev socket,id=c1,path="$1" -device vhost-user-blk-pci,chardev=c1 2>>"$work/guest.err" \
    | tr -d '\r' | awk -F= '/^FIO_/ { v[$1]=$2 } END { printf "%d %d %.0f %.0f\n", v["FIO_randread"], v["FIO_randwrite"], v["FIO_read"]/1024, v["FIO_write"]/1024 }'
}
best() { python3 -c "import sys; a=sys.argv[1].split(); b=sys.argv[2].split() if sys.argv[2] else ['0']*4; print(' '.join(str(max(float(x),float(y))) for x,y in zip(a,b)))" "$1" "${2:-}"; }

ours=""; peer=""
for run in $(seq "$runs"); do
  start_qsd
  p=$(run_fio "$work/peer.sock") || { echo "peer guest run $run failed: $(tail -3 "$work/guest.err")" >&2; exit 1; }
  stop_qsd
  o=$(run_fio "$work/ours.sock") || { echo "zos guest run $run failed: $(tail -3 "$work/guest.err")" >&2; exit 1; }
  echo "run $run: qemu-storage-daemon [$p]  zos [$o]" >&2
  grep "zos-guest:" "$work/guest.err" | tail -2 >&2
  peer=$(best "$p" "$peer"); ours=$(best "$o" "$ours")
done

report=perf/results/blk-vs-qsd${ZOS_SERVE_ARGS:+-direct}.md
python3 - "$ours" "$peer" "$runs" "$accel" "$(date -u +%Y-%m-%d)" "$(nproc)" "$(qemu-system-x86_64 --version | head -1)" "${ZOS_SERVE_ARGS:-}" "${ZOS_BLK_POLL_US:-100} us" "$(cut -d' ' -f1-3 /proc/loadavg)" >"$report" <<'PY'
import sys
ours = [float(x) for x in sys.argv[1].split()]
peer = [float(x) for x in sys.argv[2].split()]
runs, accel, date, cores, qemu, serve_args, poll, load = sys.argv[3:11]
ours_mode = "O_DIRECT (--direct)" if "--direct" in serve_args else "page cache (default)"
names = ["4 KiB random read, QD32 (IOPS)", "4 KiB random write, QD32 (IOPS)",
         "1 MiB sequential read, QD8 (MiB/s)", "1 MiB sequential write, QD8 (MiB/s)"]
print("# vhost-user-blk: zos vs qemu-storage-daemon, fio in the same guest\n")
prefix = f"ZOS_SERVE_ARGS='{serve_args}' " if serve_args else ""
print(f"Command: `{prefix}perf/blk-vs-qsd.sh {runs}` ({date}, {cores} cores, guest accel {accel}, {qemu}).")
print("Same guest image, same run, interleaved, best of each. Peer: qemu-storage-daemon,")
print("aio=io_uring, cache.direct=on, a fresh daemon per run (7.2 can hang a later VMM).")
print(f"Ours: zos vm disk serve, io_uring, {ours_mode}, queue polling {poll}.")
print("fio in the guest: libaio, O_DIRECT, 48 MiB of a 64 MiB disk, 6 s per job.")
print(f"Host load average at the end (shared machine): {load}.\n")
print("| job | zos | qemu-storage-daemon | ratio |")
print("|---|---:|---:|---:|")
for name, o, p in zip(names, ours, peer):
    print(f"| {name} | {o:.0f} | {p:.0f} | {o / p if p else 0:.2f}x |")
PY
cat "$report"
