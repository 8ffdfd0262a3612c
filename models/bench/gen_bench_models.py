"""Benchmark models for benches/cpu.rs and docs/PERFORMANCE.md (random weights, fixed seed):

- lstm2x64_seq.onnx: X [100, 1, 8] -> LSTM(64) -> LSTM(64) -> last hidden state -> Gemm(64->4)
- lstm2x64_step.onnx: the same network for one step, with both layers' h and c as inputs and
  outputs, so a caller streams a sequence by feeding the state back.
- bigru64_seq.onnx: X [100, 1, 8] -> bidirectional GRU(64) -> both final states -> Gemm(128->4)

    .venv/bin/python models/bench/gen_bench_models.py   (requirements: models/requirements-fixtures.txt)
"""
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

HERE = Path(__file__).resolve().parent
rng = np.random.default_rng(7)
F = onnx.TensorProto.FLOAT


def t(name, *shape, scale=0.2):
    return numpy_helper.from_array(rng.uniform(-scale, scale, shape).astype(np.float32), name)


def save(nodes, inputs, outputs, inits, name):
    g = helper.make_graph(nodes, name, inputs, outputs, inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], producer_name="recur-bench")
    m.ir_version = 8
    onnx.save(m, HERE / name)


def lstm2(step):
    T = 1 if step else 100
    inits = [t("W1", 1, 256, 8), t("R1", 1, 256, 64), t("B1", 1, 512), t("W2", 1, 256, 64), t("R2", 1, 256, 64),
             t("B2", 1, 512), t("Wd", 4, 64), t("Bd", 4), numpy_helper.from_array(np.array([1], np.int64), "ax1"),
             numpy_helper.from_array(np.array([0], np.int64), "ax0")]
    s1 = ["", "h1", "c1"] if step else []
    s2 = ["", "h2", "c2"] if step else []
    nodes = [
        helper.make_node("LSTM", ["X", "W1", "R1", "B1"] + s1, ["Y1", "h1_out", "c1_out"] if step else ["Y1"], hidden_size=64, name="lstm1"),
        helper.make_node("Squeeze", ["Y1", "ax1"], ["X2"], name="squeeze1"),
        helper.make_node("LSTM", ["X2", "W2", "R2", "B2"] + s2, ["", "h2_out", "c2_out"] if step else ["", "Yh2"], hidden_size=64, name="lstm2"),
        helper.make_node("Squeeze", ["h2_out" if step else "Yh2", "ax0"], ["last"], name="squeeze2"),
        helper.make_node("Gemm", ["last", "Wd", "Bd"], ["logits"], transB=1, name="head"),
    ]
    inputs = [helper.make_tensor_value_info("X", F, [T, 1, 8])]
    outputs = [helper.make_tensor_value_info("logits", F, [1, 4])]
    if step:
        for s in ("h1", "c1", "h2", "c2"):
            inputs.append(helper.make_tensor_value_info(s, F, [1, 1, 64]))
            outputs.append(helper.make_tensor_value_info(s + "_out", F, [1, 1, 64]))
    save(nodes, inputs, outputs, inits, "lstm2x64_step.onnx" if step else "lstm2x64_seq.onnx")
    x = rng.normal(0, 1, (100, 1, 8)).astype(np.float32)
    np.save(HERE / "x_100x1x8.npy", x)


def bigru():
    inits = [t("W", 2, 192, 8), t("R", 2, 192, 64), t("B", 2, 384), t("Wd", 4, 128), t("Bd", 4),
             numpy_helper.from_array(np.array([1, 128], np.int64), "shape")]
    nodes = [
        helper.make_node("GRU", ["X", "W", "R", "B"], ["", "Yh"], hidden_size=64, direction="bidirectional",
                         linear_before_reset=1, name="bigru"),
        helper.make_node("Transpose", ["Yh"], ["Yh_t"], perm=[1, 0, 2], name="batch_first"),
        helper.make_node("Reshape", ["Yh_t", "shape"], ["last"], name="flatten"),
        helper.make_node("Gemm", ["last", "Wd", "Bd"], ["logits"], transB=1, name="head"),
    ]
    save(nodes, [helper.make_tensor_value_info("X", F, [100, 1, 8])], [helper.make_tensor_value_info("logits", F, [1, 4])],
         inits, "bigru64_seq.onnx")


lstm2(False)
lstm2(True)
bigru()
