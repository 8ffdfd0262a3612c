"""PyTorch's cuDNN LSTM at the sizes of recur's GPU latency table, next to recur's numbers.

Runs on the GPU machine after `gpu_check` (scripts/gpu-check.sh runs both): times a 2-layer
torch.nn.LSTM on CUDA for each (input, hidden, steps, batch) of issue 4, reads what recur
measured from .gpu/latency/recur.json (ONNX Runtime CUDA and CPU) and recur-cudnn.json (recur's
cuDNN backend and its CPU path), whichever exist, and prints one table with the ratio recur /
cuDNN of each (goal: at most 1.5 at every size). Input and output stay on the
device, as with recur's IO binding; the time is the median of --iters runs, each ended by
torch.cuda.synchronize(). TF32 follows --tf32 (default: PyTorch's own default for cuDNN,
which is on; ONNX Runtime's CUDA provider also uses TF32 on Hopper by default).

    python3 scripts/gpu_cudnn_lstm.py [--iters 50] [--tf32 0|1]
"""
import argparse
import json
import statistics
import time
from pathlib import Path

import torch

SIZES = [(8, 64, 100, 1), (8, 64, 100, 256), (32, 256, 200, 1024)]


def cudnn_ms(i, h, t, b, iters):
    lstm = torch.nn.LSTM(i, h, num_layers=2).cuda().eval()
    x = torch.randn(t, b, i, device="cuda")
    with torch.no_grad():
        for _ in range(5):
            lstm(x)
        torch.cuda.synchronize()
        times = []
        for _ in range(iters):
            start = time.perf_counter()
            lstm(x)
            torch.cuda.synchronize()
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--tf32", type=int, choices=[0, 1], default=None)
    args = ap.parse_args()
    if args.tf32 is not None:
        torch.backends.cudnn.allow_tf32 = bool(args.tf32)
    runs = []
    for label, name in [("recur_ort_cuda", "recur.json"), ("recur_cudnn", "recur-cudnn.json")]:
        path = Path(".gpu/latency") / name
        if path.exists():
            runs.append((label, json.loads(path.read_text())["sizes"]))
    print(
        f"\nPyTorch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}, "
        f"{torch.cuda.get_device_name(0)}, cudnn.allow_tf32={torch.backends.cudnn.allow_tf32}"
    )
    header = f"{'2-layer LSTM (I, H, T, B)':<28} {'cuDNN_ms':>10}"
    for label, _ in runs:
        header += f" {label + '_ms':>18} {'cpu_ms':>10} {'ratio':>7} {'<=1.5':>6}"
    print(header)
    worst = {label: 0.0 for label, _ in runs}
    # The sizes gpu_check measured (its --sizes), else issue 4's.
    measured = {tuple(int(v) for v in k.split(",")) for _, sizes in runs for k in sizes}
    for i, h, t, b in sorted(measured) or SIZES:
        key = f"{i}, {h}, {t}, {b}"
        c = cudnn_ms(i, h, t, b, args.iters)
        line = f"{key:<28} {c:>10.3f}"
        for label, sizes in runs:
            r = sizes.get(key)
            if r:
                ratio = r["device_ms"] / c
                worst[label] = max(worst[label], ratio)
                line += (f" {r['device_ms']:>18.3f} {r['cpu_ms']:>10.3f} {ratio:>7.2f}"
                         f" {'yes' if ratio <= 1.5 else 'NO':>6}")
            else:
                line += f" {'(not measured)':>18} {'':>10} {'':>7} {'':>6}"
        print(line)
    for label, w in worst.items():
        if w:
            print(f"worst {label}/cuDNN ratio: {w:.2f} (goal 1.5)")


if __name__ == "__main__":
    main()
