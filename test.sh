#!/usr/bin/env bash
# The whole test suite, as CI runs it, on a fresh Debian machine with Rust installed:
# installs the Debian packages the tests use, checks formatting and lints, runs every test
# (unit, integration, and end-to-end tests that drive real zdb servers, FUSE mounts and QEMU
# guests), and reports how long it took.
set -euo pipefail
cd "$(dirname "$0")"
started=$(date +%s)

# Debian packages the tests drive: redis-cli (redis-tools), fio, FUSE (fuse3), QEMU and the
# guest-image tools (qemu-system-x86, cpio), Go for the zstor Go client.
packages=(redis-tools fio fuse3 cpio qemu-system-x86 golang-go)
missing=()
for package in "${packages[@]}"; do
  dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
if [ "${#missing[@]}" -gt 0 ]; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "test.sh: installing ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

echo "test.sh: cargo fmt --check"
cargo fmt --all -- --check
echo "test.sh: cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "test.sh: cargo test"
cargo test --workspace --locked

elapsed=$(( $(date +%s) - started ))
echo "test.sh: all tests passed in $((elapsed / 60)) min $((elapsed % 60)) s"
