#!/usr/bin/env bash
# zstor's chunk pipeline, stage by stage, beside its limits and alternatives, in one run:
# memcpy, blake3, crc32, zstd -3, AES-256-GCM (aes-gcm crate and ring, which zstor uses),
# Reed-Solomon encode/reconstruct at 4+2, 8+4, 16+4 with reed-solomon-erasure (SIMD and
# plain) and reed-solomon-simd, the whole chunk encode/decode (criterion, one core, 4 MiB
# chunks of incompressible bytes); the whole put pipeline (`Zstor::put` of 64 MiB over stores
# that drop the shards, every core) beside AES-256-GCM alone on one core and on every core;
# then end-to-end `zos stor` put/get of one object against 6 local zdb servers (4+2), and the
# peak RSS of a streamed put of STREAM_MIB from /dev/urandom through a pipe.
# Writes perf/results/erasure.md and prints it.
#
# usage: perf/erasure-bench.sh [OBJECT_MIB (default 256)] [STREAM_MIB (default 2048)]
set -euo pipefail
object_mib=${1:-256}
stream_mib=${2:-2048}
project=$(cd "$(dirname "$0")/.." && pwd)
cd "$project"
command -v redis-cli >/dev/null 2>&1 || {
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq redis-tools >/dev/null
}
scratch=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]:-}"; do kill "$p" 2>/dev/null || true; done; sleep 0.3; rm -rf "$scratch"; }
trap cleanup EXIT

cargo bench -p perf --bench erasure -- --output-format bencher 2>/dev/null | grep '^test ' >"$scratch/criterion.txt"

cargo build --release -p dataplane --bin zdb -p control --bin zos >/dev/null
target=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
backends=()
for i in 1 2 3 4 5 6; do
  port=$(free_port)
  "$target/release/zdb" --listen 127.0.0.1 --port "$port" --data "$scratch/z$i/data" --index "$scratch/z$i/index" >"$scratch/z$i.log" 2>&1 &
  pids+=("$!")
  for _ in $(seq 100); do [ "$(redis-cli -p "$port" PING 2>/dev/null)" = PONG ] && break; sleep 0.1; done
  redis-cli -p "$port" NSNEW zstor >/dev/null
  backends+=(--backend "zdb://127.0.0.1:$port/zstor")
done
"$target/release/zos" stor init --data-shards 4 --parity-shards 2 "${backends[@]}" --config "$scratch/stor.toml" >/dev/null
head -c "${object_mib}M" /dev/urandom >"$scratch/object"
t0=$(date +%s.%N)
"$target/release/zos" stor put "$scratch/object" --key bench --config "$scratch/stor.toml" >/dev/null
t1=$(date +%s.%N)
"$target/release/zos" stor get bench -o "$scratch/back" --config "$scratch/stor.toml"
t2=$(date +%s.%N)
cmp -s "$scratch/object" "$scratch/back" || { echo "object read back differs" >&2; exit 1; }
rm -f "$scratch/back"
# A streamed put of STREAM_MIB: memory must stay at a few chunks, whatever the size.
t3=$(date +%s.%N)
head -c "${stream_mib}M" /dev/urandom | /usr/bin/time -f '%M' -o "$scratch/rss" \
  "$target/release/zos" stor put - --key stream --config "$scratch/stor.toml" >/dev/null
t4=$(date +%s.%N)
rss_kib=$(tail -1 "$scratch/rss")

mkdir -p perf/results
python3 - "$scratch/criterion.txt" "$object_mib" "$t0" "$t1" "$t2" "$(nproc)" \
  "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)" "$stream_mib" "$t3" "$t4" "$rss_kib" \
  "$(cut -d' ' -f1-3 /proc/loadavg)" >perf/results/erasure.md <<'PY'
import re, sys, datetime
path, mib, t0, t1, t2, cores, cpu, stream_mib, t3, t4, rss_kib, load = sys.argv[1:13]
chunk = 4 * 1024 * 1024
# Bytes per iteration of benches that do not process one 4 MiB chunk.
work = {"put-4+2/whole-put": 64 * 1024 * 1024, "aes-256-gcm-ring/all-cores": int(cores) * chunk}
rates = {}
for line in open(path):
    m = re.match(r"test (\S+)\s+\.\.\. bench:\s+([\d,]+) ns/iter", line)
    if m:
        name = m.group(1)
        bytes_per_iter = next((v for k, v in work.items() if name.startswith(k)), chunk)
        rates[name] = bytes_per_iter / int(m.group(2).replace(",", ""))  # bytes/ns = GB/s
def gbs(name): return f"{rates[name]:.2f}" if name in rates else "n/a"
out = []
out.append("# zstor pipeline benchmarks\n")
out.append(f"Command: `perf/erasure-bench.sh {mib} {stream_mib}`; {datetime.date.today()}; {cores} cores, {cpu}; "
           f"load average at the end {load} (the machine is shared: absolute numbers are noisy, ratios of one run less so).")
out.append("Criterion, one core, 4 MiB chunks of incompressible bytes; GB/s of chunk (data) bytes.\n")
out.append("## Stages and their limits\n")
out.append("| stage | GB/s |\n|---|---|")
for name in ["stage/memcpy", "stage/blake3", "stage/crc32", "stage/zstd-3", "stage/aes-256-gcm", "stage/aes-256-gcm-ring"]:
    out.append(f"| {name.split('/')[1]} | {gbs(name)} |")
out.append("\n## Reed-Solomon (GB/s of data)\n")
libs = ["reed-solomon-erasure-simd", "reed-solomon-erasure-plain", "reed-solomon-simd"]
out.append("| operation | geometry | " + " | ".join(libs) + " |\n|---|---|" + "---|" * len(libs))
for op in ["encode", "reconstruct"]:
    for geometry in ["4+2", "8+4", "16+4"]:
        out.append(f"| {op} | {geometry} | " + " | ".join(gbs(f"rs-{op}-{geometry}/{lib}") for lib in libs) + " |")
out.append("\n## Whole chunk pipeline, 4+2, one core (GB/s)\n")
out.append("| codec | encode (hash+zstd+seal+RS+frames) | decode with 2 data shards lost |\n|---|---|---|")
for codec in ["reed-solomon-erasure", "reed-solomon-simd"]:
    out.append(f"| {codec} | {gbs('pipeline-4+2/encode/' + codec)} | {gbs('pipeline-4+2/decode-2-lost/' + codec)} |")
stages = {k: rates.get(k) for k in ["stage/blake3", "stage/crc32", "stage/aes-256-gcm-ring", "rs-encode-4+2/reed-solomon-erasure-simd"]}
known = {k: v for k, v in stages.items() if v}
put_name = next((k for k in rates if k.startswith("put-4+2/whole-put")), None)
all_aes = next((k for k in rates if k.startswith("aes-256-gcm-ring/all-cores")), None)
out.append(f"\n## Whole put pipeline, 4+2, {cores} cores (GB/s of object bytes)\n")
out.append("`Zstor::put` of a 64 MiB incompressible object over six stores that drop the shards: read, chunk "
           "and object hash (blake3 tree, one pass), zstd sampling, AES-256-GCM in place, Reed-Solomon, crc32, "
           "frames, metadata; chunks encoded on all cores.\n")
out.append("| whole put | AES-256-GCM alone, one core | AES-256-GCM alone, all cores |\n|---|---|---|")
out.append(f"| {gbs(put_name) if put_name else 'n/a'} | {gbs('stage/aes-256-gcm-ring')} | {gbs(all_aes) if all_aes else 'n/a'} |")
if known and put_name:
    slowest = min(known, key=known.get)
    ratio = rates[put_name] / known[slowest]
    line = (f"\nSlowest necessary stage alone: {slowest} at {known[slowest]:.2f} GB/s on one core; the whole put "
            f"on {cores} cores reaches {ratio*100:.0f}% of it (target 85%)")
    if all_aes:
        line += f", {rates[put_name] / rates[all_aes] * 100:.0f}% of AES-256-GCM alone on all {cores} cores"
    out.append(line + ".")
rs42 = rates.get("rs-encode-4+2/reed-solomon-erasure-simd")
if rs42:
    out.append(f"Reed-Solomon 4+2 encode: {rs42:.2f} GB/s per core (target 4 GB/s).")
put = float(mib) / (float(t1) - float(t0)); get = float(mib) / (float(t2) - float(t1))
out.append("\n## End to end: `zos stor` against 6 local zdb servers, 4+2, default config\n")
out.append(f"| object | put MiB/s | get MiB/s |\n|---|---|---|\n| {mib} MiB random | {put:.0f} | {get:.0f} |")
stream = float(stream_mib) / (float(t4) - float(t3))
out.append(f"\nStreamed put of {stream_mib} MiB from /dev/urandom through a pipe (`zos stor put -`): "
           f"{stream:.0f} MiB/s (urandom included), peak RSS {int(rss_kib) / 1024:.0f} MiB.")
print("\n".join(out))
PY
cat perf/results/erasure.md
