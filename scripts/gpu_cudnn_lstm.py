"""PyTorch's cuDNN LSTM at the sizes of recur's GPU latency table, next to recur's numbers.

Runs on the GPU machine after `gpu_check` (scripts/gpu-check.sh runs both): times a 2-layer
torch.nn.LSTM on CUDA for each (input, hidden, steps, batch) of issue 4, reads what recur
measured on ONNX Runtime CUDA and CPU from .gpu/latency/recur.json, and prints one table with
the ratio recur / cuDNN (goal: at most 1.5 at every size). Input and output stay on the
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
    recur_json = Path(".gpu/latency/recur.json")
    recur = json.loads(recur_json.read_text()) if recur_json.exists() else {"sizes": {}}
    print(
        f"\nPyTorch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}, "
        f"{torch.cuda.get_device_name(0)}, cudnn.allow_tf32={torch.backends.cudnn.allow_tf32}"
    )
    print(f"{'2-layer LSTM (I, H, T, B)':<28} {'cuDNN_ms':>10} {'recur_ort_cuda_ms':>18} "
          f"{'ort_cpu_ms':>11} {'recur/cuDNN':>12} {'<=1.5':>6}")
    worst = 0.0
    for i, h, t, b in SIZES:
        label = f"{i}, {h}, {t}, {b}"
        c = cudnn_ms(i, h, t, b, args.iters)
        r = recur["sizes"].get(label)
        if r:
            ratio = r["device_ms"] / c
            worst = max(worst, ratio)
            print(f"{label:<28} {c:>10.3f} {r['device_ms']:>18.3f} {r['cpu_ms']:>11.3f} "
                  f"{ratio:>12.2f} {'yes' if ratio <= 1.5 else 'NO':>6}")
        else:
            print(f"{label:<28} {c:>10.3f} {'(run gpu_check first)':>18}")
    if worst:
        print(f"worst recur/cuDNN ratio: {worst:.2f} (goal 1.5)")


if __name__ == "__main__":
    main()
