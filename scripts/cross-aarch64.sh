#!/usr/bin/env bash
# The Jetson (aarch64-unknown-linux-gnu) cross build of recur, and what the deploy tests need
# to stand in for a device: installs (when missing) Debian's aarch64 cross gcc and libc,
# qemu-user and OpenSSH's server, adds the rustup target, then builds recur for aarch64.
# Idempotent; scripts/test.sh runs it before the tests.
#
#   bash scripts/cross-aarch64.sh            debug build (what the tests use; faster to build)
#   bash scripts/cross-aarch64.sh --release  release build (what goes onto a Jetson)
#
# The binary: ${CARGO_TARGET_DIR:-target}/aarch64-unknown-linux-gnu/{debug,release}/recur.
# The `ort` crate loads ONNX Runtime at run time, so nothing native is linked: on the Jetson
# the unit's ORT_DYLIB_PATH names JetPack's onnxruntime-gpu.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v aarch64-linux-gnu-gcc >/dev/null || need+=(gcc-aarch64-linux-gnu)
[ -e /usr/aarch64-linux-gnu/lib/libc.so.6 ] || need+=(libc6-dev-arm64-cross)
command -v aarch64-linux-gnu-strip >/dev/null || need+=(binutils-aarch64-linux-gnu)
command -v qemu-aarch64 >/dev/null || need+=(qemu-user)
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v ssh >/dev/null || need+=(openssh-client)
if [ ${#need[@]} -gt 0 ]; then
    echo "== apt-get install ${need[*]}"
    sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}"
fi

rustup target add aarch64-unknown-linux-gnu

echo "== cargo build --target aarch64-unknown-linux-gnu $*"
start=$(date +%s)
cargo build --bin recur --target aarch64-unknown-linux-gnu "$@"
echo "== aarch64 build took $(($(date +%s) - start)) s"
