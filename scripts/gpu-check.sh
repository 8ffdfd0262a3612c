#!/usr/bin/env bash
# The GPU check, on a machine with an NVIDIA GPU: every fixture under models/ on ONNX
# Runtime's CUDA provider against its CPU provider (max abs difference per fixture, tolerance
# 1e-4) and the median latency of each, printed as one table; streaming per step; then the
# latency table of issue 4 (2-layer LSTMs at three sizes: recur on ORT CUDA and CPU, and
# PyTorch's cuDNN LSTM from scripts/gpu_cudnn_lstm.py when torch is there). Then the same for
# recur's cuDNN backend (`gpu_check --backend cudnn`: every fixture against recur's CPU path,
# streaming, latency). Exit status 1 if any fixture disagrees or fails.
#
#   bash scripts/gpu-check.sh [--device cuda:N] [--iters N] [--filter SUBSTRING]
#   GPU_CHECK_BACKENDS=cudnn bash scripts/gpu-check.sh     # the cuDNN backend only (no ONNX Runtime)
#
# The cuDNN backend needs libcudart (CUDA 12 or 13) and libcudnn.so.9 on the loader path
# (.gpu/env.sh points at the GPU machine's PyTorch copies) or named by RECUR_CUDART_LIB and
# RECUR_CUDNN_LIB.
#
# ONNX Runtime's CUDA build (1.31.1, CUDA 13 + cuDNN 9) is taken from, in order:
#   1. ORT_DYLIB_PATH, if set (with LD_LIBRARY_PATH already holding CUDA and cuDNN);
#   2. $HOME/ortcuda/lib, as ../shared/gpu/stage-ort-cuda.sh stages it (its env.sh is sourced,
#      from .gpu/env.sh or ../shared/gpu/env.sh);
#   3. the onnxruntime-gpu 1.31.1 wheel from PyPI, unpacked into .gpu/ortgpu (needs network,
#      and CUDA 13 / cuDNN 9 libraries on the loader path).
# The checker binary is $GPU_CHECK_BIN, else .gpu/gpu_check, else it is built here with
# `cargo build --release --example gpu_check`.
#
# For a GPU machine without cargo or network (the project's lent H100/H200), from the
# development machine:
#   ../shared/gpu/stage-ort-cuda.sh                  # stages the CUDA build in .gpu/, prints the transfers
#   cargo build --example gpu_check && strip -o .gpu/gpu_check "$CARGO_TARGET_DIR"/debug/examples/gpu_check
#                                                    # ~28 MB stripped; ORT does the work, so the
#                                                    # dev profile (deps at opt-level 2) is fine
# then send .gpu/gpu_check with the last transfer and run there: . .gpu/env.sh; bash scripts/gpu-check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
VER=1.31.1
backends=${GPU_CHECK_BACKENDS:-ort cudnn}
for envsh in .gpu/env.sh ../shared/gpu/env.sh; do
  if [ -f "$envsh" ]; then . "$envsh"; break; fi
done

if [[ " $backends " == *" ort "* ]] && [ ! -f "${ORT_DYLIB_PATH:-/nonexistent}" ]; then
  if [ -f "$HOME/ortcuda/lib/libonnxruntime.so.$VER" ]; then
    export ORT_DYLIB_PATH=$HOME/ortcuda/lib/libonnxruntime.so.$VER
  else
    mkdir -p .gpu/ortgpu
    if [ ! -f ".gpu/ortgpu/libonnxruntime.so.$VER" ]; then
      python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 -d .gpu/wheel "onnxruntime-gpu==$VER"
      unzip -q -j -o .gpu/wheel/onnxruntime_gpu-"$VER"-*.whl 'onnxruntime/capi/libonnxruntime*' -d .gpu/ortgpu
    fi
    export ORT_DYLIB_PATH=$PWD/.gpu/ortgpu/libonnxruntime.so.$VER
    export LD_LIBRARY_PATH=$PWD/.gpu/ortgpu:${LD_LIBRARY_PATH:-}
  fi
fi
echo "ONNX Runtime: ${ORT_DYLIB_PATH:-(not used)}; backends: $backends"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader

bin=${GPU_CHECK_BIN:-}
if [ -z "$bin" ] && [ -x .gpu/gpu_check ]; then bin=.gpu/gpu_check; fi
if [ -z "$bin" ]; then
  cargo build --release --example gpu_check
  bin=${CARGO_TARGET_DIR:-target}/release/examples/gpu_check
fi
status=0
for backend in $backends; do
  "$bin" --backend "$backend" "$@" || status=$?
done
# PyTorch's cuDNN LSTM on the same shapes, next to recur's numbers (the GPU machine has torch).
if python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  # Compared like for like: PyTorch's TF32 as recur's (off unless --tf32 is given).
  tf32=0
  for a in "$@"; do if [ "$a" = --tf32 ]; then tf32=1; fi; done
  python3 scripts/gpu_cudnn_lstm.py --tf32 "$tf32" || status=$?
else
  echo "PyTorch with CUDA not found: the cuDNN column is missing (pip install torch there)"
fi
exit $status
