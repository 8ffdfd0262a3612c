"""Shared helpers for writing `models/real/<case>/` fixtures (see models/CASE-FORMAT.md).

Used by both export_torch.py and export_keras.py; needs numpy, onnx and onnxruntime==1.31.1.
"""
import collections
import json
import os

import numpy as np
import onnx
import onnxruntime as ort

REAL_DIR = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
RECURRENT_OPS = ("LSTM", "GRU", "RNN")
OPTIONAL_INPUTS = {
    "LSTM": ["X", "W", "R", "B", "sequence_lens", "initial_h", "initial_c", "P"],
    "GRU": ["X", "W", "R", "B", "sequence_lens", "initial_h"],
    "RNN": ["X", "W", "R", "B", "sequence_lens", "initial_h"],
}


def iter_nodes(graph):
    """All nodes of a graph, including those inside Loop/If/Scan bodies."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from iter_nodes(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from iter_nodes(g)


def op_histogram(model):
    hist = collections.Counter(n.op_type for n in iter_nodes(model.graph))
    return dict(sorted(hist.items()))


def recurrent_info(model):
    out = []
    for node in iter_nodes(model.graph):
        if node.op_type not in RECURRENT_OPS:
            continue
        attrs = {}
        for a in node.attribute:
            v = onnx.helper.get_attribute_value(a)
            if isinstance(v, bytes):
                v = v.decode()
            elif isinstance(v, list):
                v = [x.decode() if isinstance(x, bytes) else x for x in v]
            if isinstance(v, float):
                v = float(np.float32(v))
            attrs[a.name] = v
        names = OPTIONAL_INPUTS[node.op_type]
        present = [names[i] for i, x in enumerate(node.input) if x and i < len(names) and i >= 3]
        out.append({"node": node.name, "op": node.op_type, "attributes": attrs,
                    "optional_inputs": present})
    return out


def clean_model(model):
    """ir_version <= 10, no metadata_props anywhere (they may hold absolute paths)."""
    if model.ir_version > 10:
        model.ir_version = 10
    del model.metadata_props[:]
    if hasattr(model.graph, "metadata_props"):
        del model.graph.metadata_props[:]
    for node in iter_nodes(model.graph):
        if hasattr(node, "metadata_props"):
            del node.metadata_props[:]
    model.doc_string = ""
    return model


def write_case(case, model, inputs, description, architecture, exporter, versions,
               framework_outputs=None, rtol=0.0, extra=None, extra_files=None):
    """Clean + save `model`, run ORT on `inputs` (list in graph-input order), write everything.

    framework_outputs: list of arrays (same order as graph outputs, or a prefix) computed by the
    training framework itself; the max abs difference against ORT is recorded.
    """
    d = os.path.join(REAL_DIR, case)
    os.makedirs(d, exist_ok=True)
    for f in os.listdir(d):
        os.remove(os.path.join(d, f))
    model = clean_model(model)
    onnx.checker.check_model(model, full_check=True)
    path = os.path.join(d, "model.onnx")
    onnx.save(model, path)
    blob = open(path, "rb").read()
    assert REAL_DIR.encode() not in blob and b"/work/" not in blob and b"/home/" not in blob, \
        "absolute path left in model"

    init_names = {i.name for i in model.graph.initializer}
    graph_inputs = [i for i in model.graph.input if i.name not in init_names]
    assert len(graph_inputs) == len(inputs), (len(graph_inputs), len(inputs))
    elem = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.INT64: np.int64,
            onnx.TensorProto.INT32: np.int32}
    feeds = {}
    in_entries = []
    for k, (gi, arr) in enumerate(zip(graph_inputs, inputs)):
        dt = elem[gi.type.tensor_type.elem_type]
        arr = np.ascontiguousarray(arr)
        assert arr.dtype == dt, (gi.name, arr.dtype, dt)
        feeds[gi.name] = arr
        np.save(os.path.join(d, f"in_{k}.npy"), arr)
        in_entries.append({"name": gi.name, "file": f"in_{k}.npy"})

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    names = [o.name for o in model.graph.output]
    results = sess.run(names, feeds)
    out_entries = []
    for k, (name, r) in enumerate(zip(names, results)):
        np.save(os.path.join(d, f"out_{k}.npy"), np.asarray(r, dtype=np.float32))
        out_entries.append({"name": name, "file": f"out_{k}.npy"})

    err = None
    if framework_outputs is not None:
        err = max(float(np.max(np.abs(np.asarray(f, np.float32) - r)))
                  for f, r in zip(framework_outputs, results))

    info = {
        "name": case,
        "group": "real",
        "description": description,
        "inputs": in_entries,
        "outputs": out_entries,
        "reference": f"onnxruntime {ort.__version__} CPU",
        "atol": 1e-5,
        "rtol": rtol,
        "recurrent": recurrent_info(model),
        "exporter": exporter,
        "versions": versions,
        "architecture": architecture,
        "opset": max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
        "ir_version": model.ir_version,
        "onnx_ops": op_histogram(model),
        "framework_max_abs_err": err,
        "input_shapes": {e["name"]: list(feeds[e["name"]].shape) for e in in_entries},
        "output_shapes": {n: list(r.shape) for n, r in zip(names, results)},
        "model_bytes": len(blob),
    }
    if extra:
        info.update(extra)
    with open(os.path.join(d, "case.json"), "w") as f:
        json.dump(info, f, indent=2)
        f.write("\n")
    for name, content in (extra_files or {}).items():
        p = os.path.join(d, name)
        if isinstance(content, np.ndarray):
            np.save(p, content)
        else:
            with open(p, "w") as f:
                f.write(content)
    print(f"[{case}] ops={info['onnx_ops']} err={err} bytes={len(blob)} "
          f"acc={info.get('accuracy')}")
    return info, results


def load_basicmotions(cache_dir="/tmp/recur-basicmotions"):
    """BasicMotions from the aeon 1.6.0 wheel (PyPI). Returns X_train, y_train, X_test, y_test, classes.

    X: float32 [N, 100, 6] (channels: accel x,y,z, gyro x,y,z), y: int64 class indices.
    """
    import glob
    import subprocess
    import sys
    import zipfile
    base = os.path.join(cache_dir, "aeon/datasets/data/BasicMotions")
    if not os.path.exists(os.path.join(base, "BasicMotions_TEST.ts")):
        os.makedirs(cache_dir, exist_ok=True)
        if not glob.glob(os.path.join(cache_dir, "aeon-1.6.0-*.whl")):
            subprocess.check_call([sys.executable, "-m", "pip", "download", "--no-deps",
                                   "aeon==1.6.0", "-d", cache_dir, "-q"])
        whl = glob.glob(os.path.join(cache_dir, "aeon-1.6.0-*.whl"))[0]
        with zipfile.ZipFile(whl) as z:
            for n in z.namelist():
                if "BasicMotions/BasicMotions_" in n and n.endswith(".ts"):
                    z.extract(n, cache_dir)

    def parse(path):
        classes, xs, ys = None, [], []
        in_data = False
        for line in open(path):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if line.lower().startswith("@classlabel"):
                classes = line.split()[2:]
            elif line.lower() == "@data":
                in_data = True
            elif in_data:
                parts = line.split(":")
                dims = [[float(v) for v in p.split(",")] for p in parts[:-1]]
                xs.append(np.array(dims, dtype=np.float32).T)  # [100, 6]
                ys.append(classes.index(parts[-1]))
        return np.stack(xs).astype(np.float32), np.array(ys, dtype=np.int64), classes

    xtr, ytr, classes = parse(os.path.join(base, "BasicMotions_TRAIN.ts"))
    xte, yte, classes2 = parse(os.path.join(base, "BasicMotions_TEST.ts"))
    assert classes == classes2
    return xtr, ytr, xte, yte, classes


def rename_io(model, mapping):
    """Rename graph inputs/outputs (and every use of those names, including in subgraphs)."""
    def fix(graph):
        for node in graph.node:
            for i, n in enumerate(node.input):
                if n in mapping:
                    node.input[i] = mapping[n]
            for i, n in enumerate(node.output):
                if n in mapping:
                    node.output[i] = mapping[n]
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    fix(attr.g)
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    for g in attr.graphs:
                        fix(g)
        for vi in list(graph.input) + list(graph.output) + list(graph.value_info):
            if vi.name in mapping:
                vi.name = mapping[vi.name]
    fix(model.graph)
    return model
