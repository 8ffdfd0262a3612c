#!/usr/bin/env bash
# recur firmware: build the Cortex-M4F firmware and the QEMU instruction-counting plugin,
# then (default) print instructions per LSTM time step, or (`test`) run the host-side
# QEMU tests. Idempotent: installs qemu-system-arm (and gcc/make/binutils) when missing.
#
#   bash scripts/firmware.sh          # build + instruction table
#   bash scripts/firmware.sh build    # build only
#   bash scripts/firmware.sh test     # build + firmware/qemu-tests (QEMU vs host f32 LSTM)
# The bench also counts recur-kernel's steps on the bundled BasicMotions models through
# `recur bench OUT.rcm --qemu` (int16 and int8 weights).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BOARD=$ROOT/firmware/board
PLUGIN=$ROOT/firmware/qemu-plugin/libinsn_marker.so
TIMEOUT=${RECUR_QEMU_TIMEOUT:-120}
export CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-2}

need=()
command -v qemu-system-arm >/dev/null || need+=(qemu-system-arm)
command -v cc >/dev/null || need+=(gcc libc6-dev)
command -v make >/dev/null || need+=(make)
command -v nm >/dev/null || need+=(binutils)
if ((${#need[@]})); then
  echo "== installing ${need[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
rustup target add thumbv7em-none-eabihf >/dev/null 2>&1 || true

echo "== building the QEMU plugin and the firmware ($(qemu-system-arm --version | head -1))"
make -s -C firmware/qemu-plugin
(cd "$BOARD" && env -u CARGO_TARGET_DIR cargo build --release --quiet)
ELF_DIR=$BOARD/target/thumbv7em-none-eabihf/release

case "${1:-bench}" in
build) exit 0 ;;
test)
  for c in sensors lstm-ref qemu-tests board; do
    echo "== firmware/$c: fmt, clippy"
    (cd "firmware/$c" && cargo fmt -- --check && cargo clippy --quiet --all-targets -- -D warnings)
  done
  for f in stm32f411 nrf52840; do
    echo "== firmware/board links for $f"
    (cd "$BOARD" && cargo build --release --quiet --features "$f" --target-dir target/"$f")
  done
  echo "== firmware host tests (recur-sensors, recur-lstm-ref) and QEMU tests"
  (cd firmware/sensors && cargo test --quiet)
  (cd firmware/lstm-ref && cargo test --quiet -- --show-output)
  (cd firmware/qemu-tests && cargo test --quiet -- --show-output)
  exit 0
  ;;
bench) ;;
*) echo "usage: $0 [bench|build|test]" >&2; exit 2 ;;
esac

ELF=$ELF_DIR/bench
addr() { nm "$ELF" | awk -v s="$1" '$3==s {print "0x"$1}'; }
STEP=$(addr recur_mark_step)
SECTION=$(addr recur_mark_section)
[ -n "$STEP" ] && [ -n "$SECTION" ] || { echo "marker symbols missing in $ELF" >&2; exit 1; }
COUNTS=$(mktemp)
LOG=$(mktemp)
trap 'rm -f "$COUNTS" "$LOG"' EXIT
RECUR_QEMU_TIMEOUT=$TIMEOUT \
RECUR_QEMU_EXTRA="-plugin $PLUGIN,step=$STEP,section=$SECTION,out=$COUNTS" \
  "$BOARD/qemu-run.sh" "$ELF" >"$LOG"
# Firmware prints "section NAME" lines; the plugin writes "S n" at each section start and
# "M n" after each step. Per-step cost = difference of consecutive M snapshots in a section.
echo
echo "Instructions per LSTM time step (QEMU mps2-an386, Cortex-M4F, batch 1, release build)"
printf '%-28s %10s %8s %8s %6s\n' kernel mean min max steps
awk '
  FNR==NR { if ($1=="section") { names[++ns]=$2" "$3" "$4 } next }
  $1=="S" { flush(); sec++; prev=-1; n=0; sum=0; min=-1; max=0; next }
  $1=="M" { if (prev>=0) { d=$2-prev; n++; sum+=d; if (min<0||d<min) min=d; if (d>max) max=d } prev=$2; next }
  END { flush() }
  function flush() { if (sec>0 && n>0) printf "%-28s %10.0f %8d %8d %6d\n", names[sec], sum/n, min, max, n }
' "$LOG" "$COUNTS"

echo
echo "Instructions per time step of recur-firmware (recur-kernel, fixed point) on the bundled"
echo "BasicMotions LSTM and GRU and the digits SimpleRNN (recur convert --target mcu, then"
echo "recur bench OUT.rcm --qemu over all test samples)"
BLOBS=$(mktemp -d)
trap 'rm -rf "$COUNTS" "$LOG" "$BLOBS"' EXIT
for m in basicmotions_lstm basicmotions_gru digits_rnn; do
  for w in int16 int8; do
    D=models/real/$m
    cargo run --quiet -- convert "$D/model.onnx" --target mcu --weights "$w" --calib "$D/in_0.npy" \
      -o "$BLOBS/$m-$w.rcm" >/dev/null
    printf '%-28s ' "$m $w"
    # The LSTM's steps also by function (where the instructions go).
    PROFILE=()
    [ "$m" = basicmotions_lstm ] && PROFILE=(--profile)
    cargo run --quiet -- bench "$BLOBS/$m-$w.rcm" --qemu --input "$D/in_0.npy" "${PROFILE[@]}" \
      --firmware "$ELF_DIR/recur-firmware" 2>/dev/null | sed 's/.*(Cortex-M4F), //'
  done
done
