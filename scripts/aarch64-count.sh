#!/usr/bin/env bash
# Instructions per run of the CPU path on aarch64 (the Jetson's CPU), counted exactly in
# qemu-user by recur's QEMU plugin: no aarch64 hardware is needed, and the counts repeat
# run to run. A count is not a time (it ignores cache misses, latencies and the core's
# width), so it compares two builds' work, not their speed.
#
#   bash scripts/aarch64-count.sh [BIN]
#
# BIN: an aarch64 recur (default: the release cross build, `bash scripts/cross-aarch64.sh
# --release`). Each line: the instructions of one whole run (or one streamed step), from
# `recur bench` run twice with different --iters, the difference divided by the extra runs.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-${CARGO_TARGET_DIR:-target}/aarch64-unknown-linux-gnu/release/recur}
[ -x "$bin" ] || { echo "error: $bin: no aarch64 recur (bash scripts/cross-aarch64.sh --release)" >&2; exit 2; }
plugin=firmware/qemu-plugin/libinsn_marker.so
[ -e $plugin ] || make -s -C firmware/qemu-plugin
counts=$(mktemp)
trap 'rm -f "$counts"' EXIT

# Total instructions of `recur bench ARGS --iters N`.
total() {
    local iters=$1
    shift
    # step/section at address 0x10 never execute: only the total at exit is written.
    qemu-aarch64 -L /usr/aarch64-linux-gnu -plugin "$plugin,step=0x10,section=0x10,out=$counts" \
        "$bin" bench "$@" --iters "$iters" >/dev/null
    awk '$1 == "T" { print $2 }' "$counts"
}

# One line: NAME, instructions per run (ITERS_A vs ITERS_B runs).
count() {
    local name=$1 a=$2 b=$3
    shift 3
    local ta tb
    ta=$(total "$a" "$@")
    tb=$(total "$b" "$@")
    printf '%-58s %12d\n' "$name" $(((tb - ta) / (b - a)))
}

x=models/bench/x_100x1x8.npy
printf '%-58s %12s\n' "aarch64, $(basename "$bin")" "instructions"
count "2-layer LSTM(64), input 8, 100 steps, batch 1" 5 15 models/bench/lstm2x64_seq.onnx --input $x
count "same, one step through a streaming session" 100 600 models/bench/lstm2x64_seq.onnx --input $x --stream
count "bidirectional GRU(64), input 8, 100 steps, batch 1" 5 15 models/bench/bigru64_seq.onnx --input $x
count "BasicMotions LSTM(32) classifier, 100 steps, batch 40" 2 6 \
    models/real/basicmotions_lstm/model.onnx --input models/real/basicmotions_lstm/in_0.npy
count "BasicMotions GRU(32) classifier, 100 steps, batch 40" 2 6 \
    models/real/basicmotions_gru/model.onnx --input models/real/basicmotions_gru/in_0.npy
