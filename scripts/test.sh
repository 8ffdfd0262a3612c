#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs what the tests need, then runs
# formatting, lints and every test. This is the command README.md shows and .ci/run calls.
set -euo pipefail
cd "$(dirname "$0")/.."
# A clean clone gains nothing from incremental state, and it costs ~0.7 GB of disk.
export CARGO_INCREMENTAL=0
df -h . | sed 's/^/disk: /'

echo "== toolchain components"
rustup component add rustfmt clippy
rustup target add thumbv7em-none-eabihf

echo "== ONNX Runtime 1.31.1 CPU library (PyPI wheel, sha256-pinned) into .ort/"
bash scripts/fetch-ort.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets -- -D warnings

echo "== cargo doc (the workspace's own crates; broken or private links are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --quiet

echo "== QEMU (qemu-system-arm), the instruction-counting plugin and the firmware"
# tests/flash.rs runs the firmware in QEMU, so QEMU must be there before cargo test.
bash scripts/firmware.sh build

echo "== aarch64 (Jetson) cross build; sshd, qemu-user for the deploy tests (installs if missing)"
bash scripts/cross-aarch64.sh

echo "== cargo clippy for aarch64 (the NEON kernels compile only there)"
cargo clippy --target aarch64-unknown-linux-gnu --lib --tests -- -D warnings

echo "== the CPU path on aarch64 under qemu-user: NEON kernel tests, property tests, every fixture"
# The Jetson's CPU path runs the NEON kernels; x86-64 never compiles them. The same unit
# tests (each SIMD tier against its reference), the proptest reference and every fixture
# against ONNX Runtime's outputs, run on the aarch64 build.
CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu" \
    cargo test --target aarch64-unknown-linux-gnu --lib --test kernels_reference --test fixtures \
    -- --show-output kernels:: kernels_equal every_fixture

df -h . | sed 's/^/disk: /'
echo "== cargo test"
# --show-output prints what passing tests report (fixture counts, refusals) after each binary.
cargo test --workspace --all-targets -- --show-output

echo "== recur-kernel for Cortex-M4F (no_std, thumbv7em-none-eabihf)"
cargo build -p recur-kernel --target thumbv7em-none-eabihf

echo "== firmware: Cortex-M4F in QEMU mps2-an386 (installs qemu-system-arm if missing)"
# Host tests of the firmware crates, the f32 reference firmware in QEMU against the host
# f32 LSTM, then the instruction counts per time step from the QEMU plugin (f32 reference
# and recur-kernel).
bash scripts/firmware.sh test
bash scripts/firmware.sh bench
