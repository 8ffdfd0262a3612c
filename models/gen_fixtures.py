"""Generates the synthetic fixtures: models/node/ (the ONNX backend node tests for LSTM, GRU
and RNN, regenerated from the onnx package's case code) and models/matrix/ (an attribute
matrix built with onnx.helper). Reference outputs come from ONNX Runtime 1.31.1 on the CPU;
where ONNX Runtime refuses layout=1, from the same model rewritten to layout 0 (the "layout-0
twin"). See models/CASE-FORMAT.md for the files each case holds.

    python3 -m venv .venv && .venv/bin/pip install -r models/requirements-fixtures.txt
    .venv/bin/python models/gen_fixtures.py          # rewrites models/node and models/matrix

Deterministic: fixed seeds; re-running rewrites the same cases.
"""

import copy
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

ROOT = Path(__file__).resolve().parent
OPSET = 17
IR_VERSION = 8
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
REFERENCE = f"onnxruntime {ort.__version__} CPU"


# ---------------------------------------------------------------- running and twins

def run_ort(model, feeds):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, dict(feeds))))


def layout0_twin(model):
    """The same model with every layout=1 recurrent node rewritten to layout 0 between
    Transposes, so ONNX Runtime (which refuses layout=1) can compute the reference."""
    twin = copy.deepcopy(model)
    graph = twin.graph
    new_nodes = []
    for node in graph.node:
        attrs = {a.name: a for a in node.attribute}
        if node.op_type not in GATES or "layout" not in attrs or helper.get_attribute_value(attrs["layout"]) != 1:
            new_nodes.append(node)
            continue
        attrs["layout"].i = 0
        tag = node.name or node.op_type
        inputs = list(node.input)
        for idx in (0, 5, 6):  # X, initial_h, initial_c
            if idx < len(inputs) and inputs[idx]:
                t = f"{tag}_l0_in{idx}"
                new_nodes.append(helper.make_node("Transpose", [inputs[idx]], [t], perm=[1, 0, 2]))
                inputs[idx] = t
        del node.input[:]
        node.input.extend(inputs)
        outputs = list(node.output)
        post = []
        for idx, out in enumerate(outputs):
            if not out:
                continue
            t = f"{tag}_l0_out{idx}"
            perm = [2, 0, 1, 3] if idx == 0 else [1, 0, 2]
            post.append(helper.make_node("Transpose", [t], [out], perm=perm))
            outputs[idx] = t
        del node.output[:]
        node.output.extend(outputs)
        new_nodes.append(node)
        new_nodes.extend(post)
    del graph.node[:]
    graph.node.extend(new_nodes)
    return twin


def has_layout1(model):
    return any(
        a.name == "layout" and a.i == 1 for n in model.graph.node if n.op_type in GATES for a in n.attribute
    )


def reference(model, feeds):
    if has_layout1(model):
        return run_ort(layout0_twin(model), feeds), REFERENCE + ", layout-0 twin"
    return run_ort(model, feeds), REFERENCE


# ---------------------------------------------------------------- writing cases

def recurrent_info(model, feeds):
    inits = {i.name for i in model.graph.initializer}
    fed = {n for n, _ in feeds}
    info = []
    for node in model.graph.node:
        if node.op_type not in GATES:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        attrs = {k: (v.decode() if isinstance(v, bytes) else [x.decode() if isinstance(x, bytes) else x for x in v] if isinstance(v, list) else v) for k, v in attrs.items()}
        slots = ["X", "W", "R", "B", "sequence_lens", "initial_h", "initial_c", "P"]
        optional = {}
        for slot, name in zip(slots, node.input):
            if slot in ("X", "W", "R") or not name:
                continue
            optional[slot] = "initializer" if name in inits else "graph input" if name in fed else "computed"
        info.append({"node": node.name, "op": node.op_type, "attributes": attrs, "optional_inputs": optional})
    return info


def write_case(group, name, model, feeds, description, rtol=0.0, extra=None):
    model.ir_version = IR_VERSION
    # No onnx.checker here: it wants shapes on outputs; ONNX Runtime validates the model instead.
    outs, ref = reference(model, feeds)
    case_dir = ROOT / group / name
    case_dir.mkdir(parents=True)
    onnx.save(model, case_dir / "model.onnx")
    inputs = []
    for k, (n, a) in enumerate(feeds):
        np.save(case_dir / f"in_{k}.npy", a)
        inputs.append({"name": n, "file": f"in_{k}.npy"})
    outputs = []
    for k, o in enumerate(model.graph.output):
        np.save(case_dir / f"out_{k}.npy", outs[o.name].astype(np.float32))
        outputs.append({"name": o.name, "file": f"out_{k}.npy"})
    case = {
        "name": name,
        "group": group,
        "description": description,
        "inputs": inputs,
        "outputs": outputs,
        "reference": ref,
        "atol": 1e-5,
        "rtol": rtol,
        "recurrent": recurrent_info(model, feeds),
    }
    case.update(extra or {})
    (case_dir / "case.json").write_text(json.dumps(case, indent=2) + "\n")
    return outs


# ---------------------------------------------------------------- ONNX node tests

def gen_node_tests():
    import onnx.backend.test.case.node.gru as gru_mod
    import onnx.backend.test.case.node.lstm as lstm_mod
    import onnx.backend.test.case.node.rnn as rnn_mod

    captured = []

    def capture(node, inputs, outputs, name, **_):
        captured.append((node, inputs, outputs, name))

    for mod, cls in ((lstm_mod, "LSTM"), (gru_mod, "GRU"), (rnn_mod, "RNN")):
        mod.expect = capture
        klass = getattr(mod, cls)
        for attr in sorted(dir(klass)):
            if attr.startswith("export"):
                getattr(klass, attr)()

    for node, inputs, outputs, name in captured:
        node = copy.deepcopy(node)
        node.name = node.name or f"{node.op_type.lower()}0"
        in_names = [n for n in node.input if n]
        graph_inputs = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape) for n, a in zip(in_names, inputs)]
        graph_outputs = [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in node.output if n]
        graph = helper.make_graph([node], name, graph_inputs, graph_outputs)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="onnx-node-tests")
        feeds = list(zip(in_names, inputs))
        outs = write_case("node", name.removeprefix("test_"), model, feeds,
                          f"ONNX backend node test {name} (onnx {onnx.__version__} case code)")
        err = max(float(np.max(np.abs(outs[o] - e))) for o, e in zip([n for n in node.output if n], outputs))
        case_json = ROOT / "node" / name.removeprefix("test_") / "case.json"
        case = json.loads(case_json.read_text())
        case["numpy_ref_max_abs_err"] = err
        case_json.write_text(json.dumps(case, indent=2) + "\n")
        print(f"node/{name.removeprefix('test_')}: ORT vs onnx numpy reference {err:.2e}")
    return len(captured)


# ---------------------------------------------------------------- attribute matrix

ACTIVATIONS = {
    "LSTM": (["HardSigmoid", "LeakyRelu", "ScaledTanh"], [0.3, 0.1, 1.2], [0.6, 0.8]),
    "GRU": (["HardSigmoid", "Softsign"], [0.25], [0.45]),
    "RNN": (["Relu"], [], []),
}


def matrix_model(op, name, *, T=16, B=3, I=4, H=5, direction="forward", acts=False, clip=None,
                 input_forget=False, peepholes=False, layout=0, bias=True, seqlens=None, init=None,
                 lbr=None, outputs=("Y", "Y_h", "Y_c"), wscale=0.6, seed=0, acts_override=None):
    rng = np.random.default_rng(seed)
    D = 2 if direction == "bidirectional" else 1
    G = GATES[op]
    inits, feeds, node_inputs = [], [], ["X", "W", "R"]
    x_shape = (T, B, I) if layout == 0 else (B, T, I)
    feeds.append(("X", rng.normal(0, 1, x_shape).astype(np.float32)))
    inits.append(numpy_helper.from_array(rng.uniform(-wscale, wscale, (D, G * H, I)).astype(np.float32), "W"))
    inits.append(numpy_helper.from_array(rng.uniform(-wscale, wscale, (D, G * H, H)).astype(np.float32), "R"))
    opt = {}
    if bias:
        inits.append(numpy_helper.from_array(rng.uniform(-0.3, 0.3, (D, 2 * G * H)).astype(np.float32), "B"))
        opt[3] = "B"
    if seqlens:
        lens = np.full(B, T, np.int32) if seqlens == "full" else np.array([T, max(1, T - 5), 3] + [T - 1] * (B - 3), np.int32)[:B]
        if seqlens == "runtime":
            feeds.append(("sequence_lens", lens))
        else:
            inits.append(numpy_helper.from_array(lens, "sequence_lens"))
        opt[4] = "sequence_lens"
    if init:
        shape = (D, B, H) if layout == 0 else (B, D, H)
        states = ["initial_h"] + (["initial_c"] if op == "LSTM" else [])
        for k, s in zip((5, 6), states):
            v = rng.normal(0, 0.5, shape).astype(np.float32)
            if init == "input":
                feeds.append((s, v))
            else:
                inits.append(numpy_helper.from_array(v, s))
            opt[k] = s
    if peepholes:
        inits.append(numpy_helper.from_array(rng.uniform(-0.5, 0.5, (D, 3 * H)).astype(np.float32), "P"))
        opt[7] = "P"
    for k in range(3, 1 + max(opt) if opt else 3):
        node_inputs.append(opt.get(k, ""))
    attrs = {"hidden_size": H}
    if direction != "forward":
        attrs["direction"] = direction
    if acts:
        names, alphas, betas = acts_override or ACTIVATIONS[op]
        attrs["activations"] = names * D
        if alphas:
            attrs["activation_alpha"] = alphas * D
        if betas:
            attrs["activation_beta"] = betas * D
    if clip is not None:
        attrs["clip"] = clip
    if input_forget:
        attrs["input_forget"] = 1
    if layout:
        attrs["layout"] = 1
    if lbr is not None:
        attrs["linear_before_reset"] = lbr
    outs = [o for o in outputs if not (o == "Y_c" and op != "LSTM")]
    node_outputs = [o if o in outs else "" for o in ("Y", "Y_h", "Y_c")[: 3 if op == "LSTM" else 2]]
    while node_outputs and not node_outputs[-1]:
        node_outputs.pop()
    node = helper.make_node(op, node_inputs, node_outputs, name=f"{op.lower()}0", **attrs)
    x_dims = ["seq", "batch", I] if layout == 0 else ["batch", "seq", I]
    g_inputs = [helper.make_tensor_value_info("X", onnx.TensorProto.FLOAT, x_dims)]
    for n, a in feeds[1:]:
        g_inputs.append(helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), list(a.shape)))
    g_outputs = [helper.make_tensor_value_info(o, onnx.TensorProto.FLOAT, None) for o in node_outputs if o]
    graph = helper.make_graph([node], name, g_inputs, g_outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="recur-attribute-matrix")
    return model, feeds


def gen_matrix():
    cases = []

    def add(op, name, description, **kw):
        cases.append((op, name, description, kw))

    for op in ("LSTM", "GRU", "RNN"):
        p = op.lower()
        add(op, f"{p}_base", "forward, default activations, bias")
        add(op, f"{p}_nobias", "no bias input", bias=False)
        add(op, f"{p}_reverse", "direction=reverse", direction="reverse")
        add(op, f"{p}_bidirectional", "direction=bidirectional", direction="bidirectional")
        add(op, f"{p}_activations", f"activations {ACTIVATIONS[op][0]} with alpha/beta", acts=True)
        add(op, f"{p}_clip", "clip=0.5 (weights scaled so it bites)", clip=0.5, wscale=1.5)
        add(op, f"{p}_layout1", "layout=1 (batch-first)", layout=1)
        add(op, f"{p}_seqlens_full", "constant sequence_lens, all full length", seqlens="full")
        add(op, f"{p}_seqlens_ragged", "constant ragged sequence_lens", seqlens="ragged")
        add(op, f"{p}_seqlens_runtime", "ragged sequence_lens fed as a graph input", seqlens="runtime")
        add(op, f"{p}_initial_states", "initial states fed as graph inputs", init="input")
        add(op, f"{p}_initial_states_const", "constant initial states", init="const")
        add(op, f"{p}_only_y_h", "only Y_h wired", outputs=("Y_h",))
        if op == "LSTM":
            add(op, "lstm_input_forget", "input_forget=1", input_forget=True)
            add(op, "lstm_peepholes", "peephole weights P", peepholes=True)
        if op == "GRU":
            add(op, "gru_lbr0", "linear_before_reset=0 explicit", lbr=0)
            add(op, "gru_lbr1", "linear_before_reset=1", lbr=1)
            add(op, "gru_lbr1_input1", "linear_before_reset=1 with input size 1", lbr=1, I=1)
            add(op, "gru_lbr1_bidirectional", "linear_before_reset=1, bidirectional", lbr=1, direction="bidirectional")
        if op == "RNN":
            add(op, "rnn_leakyrelu", "activations [LeakyRelu(alpha=0.2)]", acts=True, acts_override=(["LeakyRelu"], [0.2], []))
        for d in ("reverse", "bidirectional"):
            add(op, f"{p}_{d}_seqlens_ragged", f"{d} with constant ragged sequence_lens", direction=d, seqlens="ragged")
            add(op, f"{p}_{d}_seqlens_runtime", f"{d} with sequence_lens fed at run time", direction=d, seqlens="runtime")
            add(op, f"{p}_{d}_seqlens_full", f"{d} with constant full-length sequence_lens", direction=d, seqlens="full")
            add(op, f"{p}_{d}_initial_states", f"{d} with initial states fed as graph inputs", direction=d, init="input")
            add(op, f"{p}_{d}_layout1", f"{d} with layout=1", direction=d, layout=1)
            add(op, f"{p}_{d}_clip", f"{d} with clip=0.5", direction=d, clip=0.5, wscale=1.5)
            add(op, f"{p}_{d}_activations", f"{d} with non-default activations", direction=d, acts=True)
            if op == "LSTM":
                add(op, f"lstm_{d}_peepholes", f"{d} with peepholes", direction=d, peepholes=True)
                add(op, f"lstm_{d}_input_forget", f"{d} with input_forget=1", direction=d, input_forget=True)
        add(op, f"{p}_long_forward", "100 steps, hidden 16", T=100, H=16, rtol=1e-4, wscale=0.3)
        add(op, f"{p}_long_bidirectional", "100 steps, hidden 16, bidirectional", T=100, H=16, direction="bidirectional", rtol=1e-4, wscale=0.3)
        add(op, f"{p}_kitchen_sink", "bidirectional, layout=1, activations, clip, ragged run-time lengths, initial states"
            + (", peepholes, input_forget" if op == "LSTM" else ""),
            direction="bidirectional", layout=1, acts=True, clip=0.8, seqlens="runtime", init="input",
            peepholes=op == "LSTM", input_forget=op == "LSTM", wscale=1.2)
        add(op, f"{p}_batch5_forward_initial_states", "batch 5, forward, constant initial states, full lengths", B=5, init="const", seqlens="full")

    for seed, (op, name, description, kw) in enumerate(cases):
        rtol = kw.pop("rtol", 0.0)
        model, feeds = matrix_model(op, name, seed=seed, **kw)
        outs = write_case("matrix", name, model, feeds, description, rtol=rtol)
        if "clip" in kw:
            unclipped = copy.deepcopy(model)
            for a in unclipped.graph.node[0].attribute:
                if a.name == "clip":
                    a.f = 1e9
            diff = max(float(np.max(np.abs(run_ort(layout0_twin(unclipped) if has_layout1(unclipped) else unclipped, feeds)[o] - outs[o]))) for o in outs)
            assert diff > 1e-3, f"{name}: clip does not change the output ({diff})"
    return len(cases)


def main():
    for group in ("node", "matrix"):
        shutil.rmtree(ROOT / group, ignore_errors=True)
    n_node = gen_node_tests()
    n_matrix = gen_matrix()
    print(f"wrote {n_node} node-test cases and {n_matrix} attribute-matrix cases")


if __name__ == "__main__":
    sys.exit(main())
