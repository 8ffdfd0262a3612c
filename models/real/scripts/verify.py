"""Re-check every models/real/<case>/ against models/CASE-FORMAT.md and re-run ONNX Runtime.

    .venv-export-torch/bin/python models/real/scripts/verify.py
"""
import json
import os
import sys

import numpy as np
import onnx
import onnxruntime as ort

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

ok = True
for case in sorted(os.listdir(common.REAL_DIR)):
    d = os.path.join(common.REAL_DIR, case)
    if not os.path.exists(os.path.join(d, "case.json")):
        continue
    info = json.load(open(os.path.join(d, "case.json")))
    m = onnx.load(os.path.join(d, "model.onnx"))
    problems = []
    if info["name"] != case or info["group"] != "real":
        problems.append("name/group")
    if m.ir_version > 10:
        problems.append(f"ir_version {m.ir_version}")
    if m.metadata_props or any(getattr(n, "metadata_props", None) for n in common.iter_nodes(m.graph)):
        problems.append("metadata_props present")
    blob = open(os.path.join(d, "model.onnx"), "rb").read()
    for bad in (b"/work/", b"/home/", b"/tmp/", b"/root/"):
        if bad in blob:
            problems.append(f"path {bad!r} in model")
    if len(blob) > 1_100_000:
        problems.append(f"model {len(blob)} bytes")
    inits = {i.name for i in m.graph.initializer}
    gin = [i for i in m.graph.input if i.name not in inits]
    if [i.name for i in gin] != [e["name"] for e in info["inputs"]]:
        problems.append("input names/order")
    if [o.name for o in m.graph.output] != [e["name"] for e in info["outputs"]]:
        problems.append("output names/order")
    feeds = {}
    for gi, e in zip(gin, info["inputs"]):
        a = np.load(os.path.join(d, e["file"]))
        want = onnx.helper.tensor_dtype_to_np_dtype(gi.type.tensor_type.elem_type)
        if a.dtype != want:
            problems.append(f"{e['file']} dtype {a.dtype} != {want}")
        feeds[gi.name] = a
    sess = ort.InferenceSession(os.path.join(d, "model.onnx"), providers=["CPUExecutionProvider"])
    res = sess.run([e["name"] for e in info["outputs"]], feeds)
    worst = 0.0
    for r, e in zip(res, info["outputs"]):
        ref = np.load(os.path.join(d, e["file"]))
        if ref.dtype != np.float32 or ref.shape != r.shape:
            problems.append(f"{e['file']} dtype/shape")
            continue
        worst = max(worst, float(np.max(np.abs(r - ref) / (info["atol"] + info["rtol"] * np.abs(ref)))))
    if worst > 1.0:
        problems.append(f"ORT rerun exceeds tolerance ({worst:.3g} x)")
    if info["onnx_ops"] != common.op_histogram(m):
        problems.append("onnx_ops mismatch")
    fe = info.get("framework_max_abs_err")
    if fe is None or fe > info["atol"]:
        problems.append(f"framework_max_abs_err {fe}")
    ok &= not problems
    print(f"{'OK  ' if not problems else 'FAIL'} {case:26s} rerun/tol {worst:.2g} {problems or ''}")
sys.exit(0 if ok else 1)
