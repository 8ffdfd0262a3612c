"""PyTorch real-model fixtures for recur (legacy TorchScript ONNX exporter, opset 17).

Run from the repository root with the torch venv:
    .venv-export-torch/bin/python models/real/scripts/export_torch.py [case ...]
"""
import os
import sys

import numpy as np
import onnx
import onnxruntime
import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)
OPSET = 17
VERSIONS = {"torch": torch.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__, "numpy": np.__version__}
EXPORTER = f"torch {torch.__version__} legacy TorchScript exporter (dynamo=False), opset {OPSET}"


def export(model, args, input_names, output_names, dynamic_axes):
    import io
    model.eval()
    buf = io.BytesIO()
    torch.onnx.export(model, args, buf, input_names=input_names, output_names=output_names,
                      dynamic_axes=dynamic_axes, opset_version=OPSET, dynamo=False,
                      do_constant_folding=True)
    return onnx.load_from_string(buf.getvalue())


def seed(s):
    torch.manual_seed(s)
    np.random.seed(s)


def train_classifier(model, xtr, ytr, epochs, lr, batch=16, wd=0.0, log_every=50, xte=None, yte=None):
    """Plain Adam training on log-probabilities (the model outputs softmax probabilities)."""
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=wd)
    g = torch.Generator().manual_seed(1234)
    xtr_t, ytr_t = torch.from_numpy(xtr), torch.from_numpy(ytr)
    n = len(xtr)
    for ep in range(epochs):
        model.train()
        perm = torch.randperm(n, generator=g)
        tot = 0.0
        for i in range(0, n, batch):
            idx = perm[i:i + batch]
            opt.zero_grad()
            p = model(xtr_t[idx])
            loss = nn.functional.nll_loss(torch.log(p + 1e-8), ytr_t[idx])
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            tot += loss.item() * len(idx)
        if (ep + 1) % log_every == 0:
            msg = f"  epoch {ep + 1} loss {tot / n:.4f} train acc {accuracy(model, xtr, ytr):.3f}"
            if xte is not None:
                msg += f" test acc {accuracy(model, xte, yte):.3f}"
            print(msg, flush=True)
    model.eval()
    return model


def accuracy(model, x, y):
    model.eval()
    with torch.no_grad():
        p = model(torch.from_numpy(x)).numpy()
    return float((p.argmax(1) == y).mean())


# ---------------------------------------------------------------- BasicMotions LSTM / GRU
class SeqClassifier(nn.Module):
    def __init__(self, cell, n_in, hidden, n_cls, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.from_numpy(mean).reshape(1, 1, -1))
        self.register_buffer("std", torch.from_numpy(std).reshape(1, 1, -1))
        self.rnn = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[cell](
            n_in, hidden, batch_first=True)
        self.fc = nn.Linear(hidden, n_cls)

    def forward(self, x):  # x: [N, T, C] raw values
        x = (x - self.mean) / self.std
        y, _ = self.rnn(x)
        return torch.softmax(self.fc(y[:, -1]), dim=-1)


def basicmotions(cell):
    case = f"basicmotions_{cell}"
    seed(0 if cell == "lstm" else 1)
    xtr, ytr, xte, yte, classes = common.load_basicmotions()
    mean = xtr.reshape(-1, 6).mean(0).astype(np.float32)
    std = xtr.reshape(-1, 6).std(0).astype(np.float32)
    hidden = 32
    model = SeqClassifier(cell, 6, hidden, len(classes), mean, std)
    train_classifier(model, xtr, ytr, epochs=150, lr=3e-3, batch=8, xte=xte, yte=yte)
    acc = {"train": accuracy(model, xtr, ytr), "test": accuracy(model, xte, yte)}
    with torch.no_grad():
        ref = model(torch.from_numpy(xte)).numpy()
    m = export(model, (torch.from_numpy(xte[:2]),), ["x"], ["probs"],
               {"x": {0: "N"}, "probs": {0: "N"}})
    Cell = cell.upper()
    common.write_case(
        case, m, [xte],
        description=f"BasicMotions smart-watch activity classifier: raw accel+gyro [N,100,6] -> "
                    f"baked normalisation -> batch_first {Cell}({hidden}) -> last step -> Linear(4) -> softmax",
        architecture=f"(x-mean)/std -> nn.{Cell}(6,{hidden},batch_first=True) -> y[:,-1] -> "
                     f"Linear({hidden},4) -> softmax",
        exporter=EXPORTER, versions=VERSIONS, framework_outputs=[ref], rtol=1e-4,
        extra={"accuracy": acc, "classes": classes,
               "dataset": "BasicMotions (UEA), 40 train / 40 test, from the aeon 1.6.0 wheel",
               "training": "Adam lr 3e-3, batch 8, 150 epochs, grad clip 1.0, seed "
                           f"{0 if cell == 'lstm' else 1}"},
        extra_files={"labels.npy": yte, "classes.txt": "\n".join(classes) + "\n"})


# ---------------------------------------------------------------- explicit state I/O
class StateLSTM(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(8, 16, num_layers=2)

    def forward(self, x, h0, c0):
        y, (hn, cn) = self.lstm(x, (h0, c0))
        return y, hn, cn


def lstm_state_io():
    seed(2)
    model = StateLSTM().eval()
    rng = np.random.default_rng(2)
    x = rng.standard_normal((20, 2, 8)).astype(np.float32)
    h0 = (0.5 * rng.standard_normal((2, 2, 16))).astype(np.float32)
    c0 = (0.5 * rng.standard_normal((2, 2, 16))).astype(np.float32)
    with torch.no_grad():
        ref = [t.numpy() for t in model(torch.from_numpy(x), torch.from_numpy(h0),
                                        torch.from_numpy(c0))]
    m = export(model, tuple(torch.from_numpy(a) for a in (x, h0, c0)),
               ["x", "h0", "c0"], ["y", "hn", "cn"],
               {"x": {0: "T", 1: "N"}, "h0": {1: "N"}, "c0": {1: "N"},
                "y": {0: "T", 1: "N"}, "hn": {1: "N"}, "cn": {1: "N"}})
    common.write_case(
        "lstm_state_io", m, [x, h0, c0],
        description="2-layer seq-first LSTM(8->16) with explicit initial h/c inputs and final h/c "
                    "outputs (untrained, torch default init)",
        architecture="nn.LSTM(8,16,num_layers=2); forward(x,h0,c0)->(y,hn,cn); x [20,2,8], h0/c0 [2,2,16]",
        exporter=EXPORTER, versions=VERSIONS, framework_outputs=ref)


# ---------------------------------------------------------------- digits RNN
class DigitsRNN(nn.Module):
    def __init__(self, hidden=64):
        super().__init__()
        self.rnn = nn.RNN(8, hidden, batch_first=True, nonlinearity="tanh")
        self.fc = nn.Linear(hidden, 10)

    def forward(self, x):  # x: [N, 8 rows, 8 pixels], raw 0..16 values
        y, _ = self.rnn(x / 16.0)
        return torch.softmax(self.fc(y[:, -1]), dim=-1)


def digits_rnn():
    from sklearn.datasets import load_digits
    import sklearn
    seed(3)
    d = load_digits()
    x = d.images.astype(np.float32)  # [1797, 8, 8]
    y = d.target.astype(np.int64)
    perm = np.random.default_rng(3).permutation(len(x))
    te, tr = perm[:360], perm[360:]
    model = DigitsRNN()
    train_classifier(model, x[tr], y[tr], epochs=40, lr=3e-3, batch=32, log_every=10,
                     xte=x[te], yte=y[te])
    acc = {"train": accuracy(model, x[tr], y[tr]), "test": accuracy(model, x[te], y[te])}
    with torch.no_grad():
        ref = model(torch.from_numpy(x[te])).numpy()
    m = export(model, (torch.from_numpy(x[te][:2]),), ["x"], ["probs"],
               {"x": {0: "N"}, "probs": {0: "N"}})
    common.write_case(
        "digits_rnn", m, [x[te]],
        description="sklearn 8x8 digits read row by row (8 steps x 8 pixels) by a tanh RNN(64) "
                    "-> Linear(10) -> softmax",
        architecture="x/16 -> nn.RNN(8,64,tanh,batch_first=True) -> y[:,-1] -> Linear(64,10) -> softmax",
        exporter=EXPORTER, versions={**VERSIONS, "scikit-learn": sklearn.__version__},
        framework_outputs=[ref],
        extra={"accuracy": acc, "classes": [str(i) for i in range(10)],
               "dataset": "sklearn.datasets.load_digits, 1437 train / 360 test (permutation seed 3)",
               "training": "Adam lr 3e-3, batch 32, 40 epochs, grad clip 1.0, seed 3"},
        extra_files={"labels.npy": y[te], "classes.txt": "\n".join(str(i) for i in range(10)) + "\n"})


# ---------------------------------------------------------------- GRU forecaster
def sine_series(n, T, rng):
    """Sum of two random sines + noise; returns windows [n, T, 1] and next values [n, 1]."""
    t = np.arange(T + 1, dtype=np.float64)
    f1 = rng.uniform(0.05, 0.2, (n, 1))
    f2 = rng.uniform(0.2, 0.5, (n, 1))
    p1 = rng.uniform(0, 2 * np.pi, (n, 1))
    p2 = rng.uniform(0, 2 * np.pi, (n, 1))
    s = 0.5 * np.sin(2 * np.pi * f1 * t + p1) + 0.2 * np.sin(2 * np.pi * f2 * t + p2)
    s += 0.05 * rng.standard_normal(s.shape)
    s = s.astype(np.float32)
    return s[:, :T, None], s[:, T:]


class Forecaster(nn.Module):
    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(1, 32, batch_first=True)
        self.fc = nn.Linear(32, 1)

    def forward(self, x):
        y, _ = self.gru(x)
        return self.fc(y[:, -1])


def gru_forecaster():
    seed(4)
    rng = np.random.default_rng(4)
    xtr, ytr = sine_series(4000, 20, rng)
    xte, yte = sine_series(64, 20, rng)
    model = Forecaster()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(4)
    X, Y = torch.from_numpy(xtr), torch.from_numpy(ytr)
    for ep in range(15):
        perm = torch.randperm(len(X), generator=g)
        for i in range(0, len(X), 64):
            idx = perm[i:i + 64]
            opt.zero_grad()
            loss = nn.functional.mse_loss(model(X[idx]), Y[idx])
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        ref = model(torch.from_numpy(xte)).numpy()
        tr_mse = float(nn.functional.mse_loss(model(X), Y))
    te_mse = float(np.mean((ref - yte) ** 2))
    naive = float(np.mean((xte[:, -1] - yte) ** 2))
    print(f"  gru_forecaster train mse {tr_mse:.5f} test mse {te_mse:.5f} (last-value baseline {naive:.5f})")
    m = export(model, (torch.from_numpy(xte[:2]),), ["x"], ["y"], {"x": {0: "N"}, "y": {0: "N"}})
    common.write_case(
        "gru_forecaster", m, [xte],
        description="one-step-ahead forecaster: 20-step noisy two-sine series -> batch_first GRU(32) "
                    "-> last step -> Linear(1)",
        architecture="nn.GRU(1,32,batch_first=True) -> y[:,-1] -> Linear(32,1)",
        exporter=EXPORTER, versions=VERSIONS, framework_outputs=[ref],
        extra={"accuracy": {"train_mse": tr_mse, "test_mse": te_mse,
                            "test_mse_last_value_baseline": naive},
               "training": "Adam lr 3e-3, batch 64, 15 epochs on 4000 synthetic windows, seed 4"},
        extra_files={"targets.npy": yte})


CASES = {"basicmotions_lstm": lambda: basicmotions("lstm"),
         "basicmotions_gru": lambda: basicmotions("gru"),
         "lstm_state_io": lstm_state_io,
         "digits_rnn": digits_rnn,
         "gru_forecaster": gru_forecaster}

if __name__ == "__main__":
    for name in (sys.argv[1:] or CASES):
        print(f"== {name}", flush=True)
        CASES[name]()
