#!/usr/bin/env bash
# zstor's chunk pipeline, stage by stage, beside its limits and alternatives, in one run:
# memcpy, blake3, zstd -3, AES-256-GCM (aes-gcm crate and ring, which zstor uses), Reed-Solomon encode/reconstruct at 4+2, 8+4, 16+4 with
# reed-solomon-erasure (SIMD and plain) and reed-solomon-simd, the whole chunk encode/decode
# (criterion, one core, 4 MiB chunks of incompressible bytes); then end-to-end `zos stor`
# put/get of one object against 6 local zdb servers (4+2).
# Writes perf/results/erasure.md and prints it.
#
# usage: perf/erasure-bench.sh [OBJECT_MIB (default 256)]
set -euo pipefail
object_mib=${1:-256}
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

mkdir -p perf/results
python3 - "$scratch/criterion.txt" "$object_mib" "$t0" "$t1" "$t2" "$(nproc)" \
  "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)" >perf/results/erasure.md <<'PY'
import re, sys, datetime
path, mib, t0, t1, t2, cores, cpu = sys.argv[1:8]
chunk = 4 * 1024 * 1024
rates = {}
for line in open(path):
    m = re.match(r"test (\S+)\s+\.\.\. bench:\s+([\d,]+) ns/iter", line)
    if m:
        rates[m.group(1)] = chunk / int(m.group(2).replace(",", ""))  # bytes/ns = GB/s
def gbs(name): return f"{rates[name]:.2f}" if name in rates else "n/a"
out = []
out.append("# zstor pipeline benchmarks\n")
out.append(f"Command: `perf/erasure-bench.sh {mib}`; {datetime.date.today()}; {cores} cores, {cpu}.")
out.append("Criterion, one core, 4 MiB chunks of incompressible bytes; GB/s of chunk (data) bytes.\n")
out.append("## Stages and their limits\n")
out.append("| stage | GB/s |\n|---|---|")
for name in ["stage/memcpy", "stage/blake3", "stage/zstd-3", "stage/aes-256-gcm", "stage/aes-256-gcm-ring"]:
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
stages = {k: rates.get(k) for k in ["stage/blake3", "stage/zstd-3", "stage/aes-256-gcm-ring", "rs-encode-4+2/reed-solomon-erasure-simd"]}
known = {k: v for k, v in stages.items() if v}
if known and "pipeline-4+2/encode/reed-solomon-erasure" in rates:
    slowest = min(known, key=known.get)
    ratio = rates["pipeline-4+2/encode/reed-solomon-erasure"] / known[slowest]
    out.append(f"\nSlowest necessary stage alone: {slowest} at {known[slowest]:.2f} GB/s; the one-core pipeline "
               f"reaches {ratio*100:.0f}% of it (target 85%). Stages run one after another per chunk; "
               f"put runs 4 chunks at once on all cores.")
rs42 = rates.get("rs-encode-4+2/reed-solomon-erasure-simd")
if rs42:
    out.append(f"Reed-Solomon 4+2 encode: {rs42:.2f} GB/s per core (target 4 GB/s).")
put = float(mib) / (float(t1) - float(t0)); get = float(mib) / (float(t2) - float(t1))
out.append("\n## End to end: `zos stor` against 6 local zdb servers, 4+2, default config\n")
out.append(f"| object | put MiB/s | get MiB/s |\n|---|---|---|\n| {mib} MiB random | {put:.0f} | {get:.0f} |")
print("\n".join(out))
PY
cat perf/results/erasure.md
