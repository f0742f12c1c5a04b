#!/usr/bin/env bash
# The whole test suite, as CI runs it, on a fresh Debian machine with Rust installed:
# installs the Debian packages the tests use, checks formatting and lints, runs every test
# (unit, integration, and end-to-end tests that drive real zdb servers, FUSE mounts and QEMU
# guests), and reports how long it took.
set -euo pipefail
cd "$(dirname "$0")"
started=$(date +%s)

# Debian packages the tests drive: redis-cli (redis-tools), fio, FUSE (fuse3), QEMU and the
# guest-image tools (qemu-system-x86, cpio), Go and pytest for the zstor clients, ssh for the
# login into a VM started by `zos vm start`.
packages=(redis-tools fio fuse3 cpio qemu-system-x86 golang-go python3-pytest openssh-client)
missing=()
for package in "${packages[@]}"; do
  dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
if [ "${#missing[@]}" -gt 0 ]; then
  echo "test.sh: installing ${missing[*]}"
  $sudo apt-get update -qq
  extra=()
  # Debian's qemu-system-x86 needs Debian's qemu-utils: where a newer one from backports is
  # installed (some images have it), take the release's own version instead.
  if [[ " ${missing[*]} " == *" qemu-system-x86 "* ]] &&
    dpkg-query -W -f '${Version}' qemu-utils 2>/dev/null | grep -q bpo; then
    codename=$(. /etc/os-release && echo "$VERSION_CODENAME")
    extra=(--allow-downgrades "qemu-utils/$codename")
  fi
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" "${extra[@]}" >/dev/null
fi
[ -e /dev/fuse ] || $sudo modprobe fuse || { echo "test.sh: /dev/fuse is missing: the FUSE tests need it" >&2; exit 1; }

# The guest kernel and initramfs the QEMU tests boot (built once, cached).
echo "test.sh: guest image"
export ZOS_GUEST_DIR="${ZOS_GUEST_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/zos-guest}"
fixtures/guest/build.sh "$ZOS_GUEST_DIR"

echo "test.sh: cargo fmt --check"
cargo fmt --all -- --check
echo "test.sh: cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "test.sh: cargo test"
# The binaries first: end-to-end tests of one crate drive the binaries of another (zos, zdb).
cargo build --workspace --locked --bins
cargo test --workspace --locked

# The zstor clients, against a real daemon and real zdb servers (the binaries just built).
target=$(cargo metadata --format-version 1 --no-deps --locked | /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
export ZDB_BIN="$target/debug/zdb" ZOS_BIN="$target/debug/zos"
echo "test.sh: python client (pytest)"
(cd erasure/clients/python && /usr/bin/python3 -m pytest -q tests)
echo "test.sh: go client (go test)"
(cd erasure/clients/go && GOPROXY=off go test ./...)

elapsed=$(( $(date +%s) - started ))
echo "test.sh: all tests passed in $((elapsed / 60)) min $((elapsed % 60)) s"
