#!/usr/bin/env bash
# Fetches ONNX Runtime's CPU library for the ort backend: the onnxruntime 1.31.1 wheel from
# PyPI (manylinux_2_28 x86_64, sha256 pinned below), of which only
# onnxruntime/capi/libonnxruntime.so.1.31.1 is kept, in the git-ignored folder .ort/.
# Idempotent: does nothing when .ort/ already holds the library. Needs curl and unzip
# (or python3 with pip, used when curl is missing).
#
#   bash scripts/fetch-ort.sh      # from anywhere; prints the library's path
#
# recur finds the library there by itself (see README.md, "ONNX Runtime"); ORT_DYLIB_PATH or
# --ort-lib point it elsewhere (e.g. at the CUDA build on a Jetson or GPU machine).
set -euo pipefail
VER=1.31.1
WHEEL=onnxruntime-$VER-cp312-cp312-manylinux_2_28_x86_64.whl
URL=https://files.pythonhosted.org/packages/eb/27/c6a823bac55b2977bea2027c3ec9393a2c1002cb9a09eb40354563e02730/$WHEEL
SHA256=1f3dea47f2f0e5117c2404cea7d21fd253ae7836a3bf167a501cdfbb2600d536

root=$(cd "$(dirname "$0")/.." && pwd)
dest=$root/.ort
lib=$dest/libonnxruntime.so.$VER
if [ -f "$lib" ]; then
  echo "$lib"
  exit 0
fi
if [ "$(uname -s)-$(uname -m)" != "Linux-x86_64" ]; then
  echo "fetch-ort.sh: only Linux x86_64 is fetched automatically; set ORT_DYLIB_PATH to an ONNX Runtime $VER library" >&2
  exit 1
fi
mkdir -p "$dest"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if command -v curl >/dev/null; then
  curl -fsSL --retry 3 -o "$tmp/$WHEEL" "$URL"
else
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 -d "$tmp" "onnxruntime==$VER"
fi
got=$(sha256sum "$tmp/$WHEEL" | cut -d' ' -f1)
if [ "$got" != "$SHA256" ]; then
  echo "fetch-ort.sh: $WHEEL has sha256 $got, expected $SHA256; refusing it" >&2
  exit 1
fi
unzip -q -j -o "$tmp/$WHEEL" "onnxruntime/capi/libonnxruntime.so.$VER" -d "$tmp/x"
mv "$tmp/x/libonnxruntime.so.$VER" "$lib"
echo "$lib"
