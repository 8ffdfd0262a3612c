"""Keras 3 (TensorFlow backend) real-model fixtures for recur, exported with
`model.export(path, format="onnx")` (Keras -> tf2onnx.convert.from_function, opset 15).

Run from the repository root with the TensorFlow venv:
    .venv-export-tf/bin/python models/real/scripts/export_keras.py [case ...]
"""
import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime  # noqa: E402
import tensorflow as tf  # noqa: E402
import keras  # noqa: E402
import tf2onnx  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

tf.config.threading.set_intra_op_parallelism_threads(1)
tf.config.threading.set_inter_op_parallelism_threads(1)
tf.config.experimental.enable_op_determinism()
OPSET = 15
VERSIONS = {"tensorflow": tf.__version__, "keras": keras.__version__, "tf2onnx": tf2onnx.__version__,
            "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__, "numpy": np.__version__}
EXPORTER = (f"keras {keras.__version__} model.export(format='onnx') -> tf2onnx {tf2onnx.__version__} "
            f"from_function, opset {OPSET}")


def seed(s):
    keras.utils.set_random_seed(s)


def export(model, out_names):
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "m.onnx")
        model.export(p, format="onnx", opset_version=OPSET, verbose=False)
        m = onnx.load(p)
    mapping = {o.name: n for o, n in zip(m.graph.output, out_names)}
    return common.rename_io(m, mapping)


def predict(model, x):
    return model.predict(x, batch_size=256, verbose=0)


# ---------------------------------------------------------------- embedded Reber grammar
REBER = {0: [("B", 1)], 1: [("T", 2), ("P", 3)], 2: [("S", 2), ("X", 4)], 3: [("T", 3), ("V", 5)],
         4: [("X", 3), ("S", 6)], 5: [("P", 4), ("V", 6)], 6: [("E", None)]}
SYMS = "BTPSXVE"
REBER_LEN = 32


def gen_reber(rng):
    s, st = "", 0
    while st is not None:
        c, st = REBER[st][rng.integers(len(REBER[st]))]
        s += c
    return s


def is_reber(s):
    st = 0
    for c in s:
        if st is None:
            return False
        nxt = dict(REBER[st]).get(c, -1)
        if nxt == -1:
            return False
        st = nxt
    return st is None


def is_embedded_reber(s):
    return (len(s) >= 4 and s[0] == "B" and s[1] in "TP" and s[-1] == "E" and s[-2] == s[1]
            and is_reber(s[2:-2]))


def gen_embedded(rng):
    c = "TP"[rng.integers(2)]
    return "B" + c + gen_reber(rng) + c + "E"


def corrupt(s, rng):
    while True:
        i = rng.integers(len(s))
        t = s[:i] + SYMS[rng.integers(len(SYMS))] + s[i + 1:]
        if not is_embedded_reber(t):
            return t


def reber_data(n, rng):
    xs, ys = [], []
    while len(xs) < n:
        s = gen_embedded(rng)
        if len(s) > REBER_LEN:
            continue
        y = int(rng.integers(2))
        if y == 0:
            s = corrupt(s, rng)
        ids = [SYMS.index(c) + 1 for c in s]
        xs.append([0] * (REBER_LEN - len(ids)) + ids)  # pre-padding with 0
        ys.append(y)
    return np.array(xs, np.int64), np.array(ys, np.float32)


def reber_lstm():
    seed(10)
    rng = np.random.default_rng(10)
    xtr, ytr = reber_data(8000, rng)
    xte, yte = reber_data(256, rng)
    inp = keras.Input((REBER_LEN,), dtype="int64", name="tokens")
    h = keras.layers.Embedding(8, 8, name="embed")(inp)
    h = keras.layers.LSTM(64, name="lstm")(h)
    out = keras.layers.Dense(1, activation="sigmoid", name="valid")(h)
    model = keras.Model(inp, out)
    model.compile(keras.optimizers.Adam(3e-3), "binary_crossentropy", metrics=["accuracy"])
    model.fit(xtr, ytr, batch_size=64, epochs=12, validation_data=(xte, yte), verbose=2)
    ptr, pte = predict(model, xtr), predict(model, xte)
    acc = {"train": float(((ptr[:, 0] > 0.5) == ytr).mean()),
           "test": float(((pte[:, 0] > 0.5) == yte).mean())}
    m = export(model, ["p_valid"])
    common.write_case(
        "reber_lstm", m, [xte],
        description="embedded Reber grammar validity: int64 token ids (pre-padded with 0 to 32) -> "
                    "Embedding(8,8) -> LSTM(64) -> Dense(1, sigmoid)",
        architecture="keras Input(32,int64) -> Embedding(8,8) -> LSTM(64) -> Dense(1,sigmoid)",
        exporter=EXPORTER, versions=VERSIONS, framework_outputs=[pte],
        extra={"accuracy": acc, "vocabulary": ["<pad>"] + list(SYMS),
               "dataset": "generated embedded Reber strings (<= 32 symbols), half corrupted by one "
                          "symbol substitution; 8000 train / 256 test, seed 10",
               "training": "Adam 3e-3, batch 64, 12 epochs"},
        extra_files={"labels.npy": yte.astype(np.int64),
                     "strings.txt": "\n".join("".join(SYMS[i - 1] for i in r if i) for r in xte) + "\n"})


# ---------------------------------------------------------------- BiLSTM token classifier
def bilstm_data(n, rng, T=40, vocab=50):
    """Class k (0..3) is the marker token (k+1) that occurs most often; filler tokens 5..49;
    pre-padded with 0 to T."""
    xs, ys = np.zeros((n, T), np.int64), np.zeros(n, np.int64)
    for i in range(n):
        L = int(rng.integers(12, T + 1))
        seq = rng.integers(5, vocab, L)
        k = int(rng.integers(4))
        counts = rng.integers(0, 3, 4)
        counts[k] = counts.max() + 1
        pos = rng.permutation(L)[:counts.sum()]
        seq[pos] = np.repeat(np.arange(1, 5), counts)
        xs[i, T - L:] = seq
        ys[i] = k
    return xs, ys


def bilstm_classifier():
    seed(11)
    rng = np.random.default_rng(11)
    xtr, ytr = bilstm_data(6000, rng)
    xte, yte = bilstm_data(128, rng)
    inp = keras.Input((40,), dtype="int64", name="tokens")
    h = keras.layers.Embedding(50, 16, name="embed")(inp)
    h = keras.layers.Bidirectional(keras.layers.LSTM(64, return_sequences=True), name="bilstm1")(h)
    h = keras.layers.Bidirectional(keras.layers.LSTM(64), name="bilstm2")(h)
    out = keras.layers.Dense(4, activation="softmax", name="probs")(h)
    model = keras.Model(inp, out)
    model.compile(keras.optimizers.Adam(2e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(xtr, ytr, batch_size=64, epochs=6, validation_data=(xte, yte), verbose=2)
    ptr, pte = predict(model, xtr), predict(model, xte)
    acc = {"train": float((ptr.argmax(1) == ytr).mean()), "test": float((pte.argmax(1) == yte).mean())}
    m = export(model, ["probs"])
    common.write_case(
        "bilstm_classifier", m, [xte],
        description="synthetic token classifier: int64 ids (pre-padded to 40) -> Embedding(50,16) -> "
                    "Bidirectional(LSTM(64), seq) -> Bidirectional(LSTM(64)) -> Dense(4, softmax)",
        architecture="keras Embedding(50,16) -> Bidirectional(LSTM(64,return_sequences)) -> "
                     "Bidirectional(LSTM(64)) -> Dense(4,softmax)",
        exporter=EXPORTER, versions=VERSIONS, framework_outputs=[pte],
        extra={"accuracy": acc,
               "dataset": "synthetic: class = the marker token 1..4 that occurs most often among "
                          "random filler tokens 5..49; lengths 12..40; 6000 train / 128 test, seed 11",
               "training": "Adam 2e-3, batch 64, 6 epochs"},
        extra_files={"labels.npy": yte})


# ---------------------------------------------------------------- SimpleRNN forecaster
def sine_series(n, T, rng):
    t = np.arange(T + 1, dtype=np.float64)
    f1 = rng.uniform(0.05, 0.2, (n, 1))
    f2 = rng.uniform(0.2, 0.5, (n, 1))
    p1 = rng.uniform(0, 2 * np.pi, (n, 1))
    p2 = rng.uniform(0, 2 * np.pi, (n, 1))
    s = 0.5 * np.sin(2 * np.pi * f1 * t + p1) + 0.2 * np.sin(2 * np.pi * f2 * t + p2)
    s += 0.05 * rng.standard_normal(s.shape)
    s = s.astype(np.float32)
    return s[:, :T, None], s[:, T:]


def simplernn_forecaster():
    seed(12)
    rng = np.random.default_rng(12)
    xtr, ytr = sine_series(4000, 20, rng)
    xte, yte = sine_series(64, 20, rng)
    inp = keras.Input((20, 1), name="series")
    h = keras.layers.SimpleRNN(20, return_sequences=True, name="rnn1")(inp)
    h = keras.layers.SimpleRNN(20, name="rnn2")(h)
    out = keras.layers.Dense(1, name="next")(h)
    model = keras.Model(inp, out)
    model.compile(keras.optimizers.Adam(3e-3), "mse")
    model.fit(xtr, ytr, batch_size=64, epochs=10, verbose=2)
    pte = predict(model, xte)
    mse = {"train_mse": float(np.mean((predict(model, xtr) - ytr) ** 2)),
           "test_mse": float(np.mean((pte - yte) ** 2)),
           "test_mse_last_value_baseline": float(np.mean((xte[:, -1] - yte) ** 2))}
    m = export(model, ["next"])
    common.write_case(
        "simplernn_forecaster", m, [xte],
        description="one-step forecaster: 20-step noisy two-sine series -> SimpleRNN(20, seq) -> "
                    "SimpleRNN(20) -> Dense(1); tf2onnx emits Loop ops (no RNN op)",
        architecture="keras SimpleRNN(20,return_sequences) -> SimpleRNN(20) -> Dense(1)",
        exporter=EXPORTER, versions=VERSIONS, framework_outputs=[pte],
        extra={"accuracy": mse, "training": "Adam 3e-3, batch 64, 10 epochs, 4000 windows, seed 12"},
        extra_files={"targets.npy": yte})


# ---------------------------------------------------------------- masked LSTM
def masked_lstm():
    seed(13)
    rng = np.random.default_rng(13)

    def data(n, T=12):
        x = np.zeros((n, T), np.int64)
        y = np.zeros((n, 1), np.float32)
        for i in range(n):
            L = int(rng.integers(1, T + 1))
            x[i, :L] = rng.integers(1, 20, L)  # post-padded; mask_zero hides the padding
            y[i, 0] = x[i, :L].mean() / 10.0
        return x, y

    xtr, ytr = data(5000)
    xte, yte = data(64)
    inp = keras.Input((12,), dtype="int64", name="tokens")
    h = keras.layers.Embedding(20, 8, mask_zero=True, name="embed")(inp)
    h = keras.layers.LSTM(16, name="lstm")(h)
    out = keras.layers.Dense(1, name="mean")(h)
    model = keras.Model(inp, out)
    model.compile(keras.optimizers.Adam(3e-3), "mse")
    model.fit(xtr, ytr, batch_size=64, epochs=8, verbose=2)
    pte = predict(model, xte)
    mse = {"train_mse": float(np.mean((predict(model, xtr) - ytr) ** 2)),
           "test_mse": float(np.mean((pte - yte) ** 2)),
           "test_mse_predict_mean_baseline": float(np.mean((ytr.mean() - yte) ** 2))}
    m = export(model, ["mean"])
    common.write_case(
        "masked_lstm", m, [xte],
        description="Embedding(mask_zero=True) over post-padded int64 ids (len 12) -> LSTM(16) -> "
                    "Dense(1) regressing the mean token id / 10; the mask makes tf2onnx emit a Loop",
        architecture="keras Embedding(20,8,mask_zero=True) -> LSTM(16) -> Dense(1)",
        exporter=EXPORTER, versions=VERSIONS, framework_outputs=[pte],
        extra={"accuracy": mse, "training": "Adam 3e-3, batch 64, 8 epochs, 5000 sequences, seed 13"},
        extra_files={"targets.npy": yte})


# ---------------------------------------------------------------- BasicMotions in Keras
class FixedStandardize(keras.layers.Layer):
    """(x - mean) / std with constant per-channel statistics stored as non-trainable weights."""

    def __init__(self, mean, std, **kw):
        super().__init__(**kw)
        self._m, self._s = np.asarray(mean, np.float32), np.asarray(std, np.float32)

    def build(self, input_shape):
        self.mean = self.add_weight(shape=self._m.shape, initializer=keras.initializers.Constant(self._m),
                                    trainable=False, name="mean")
        self.std = self.add_weight(shape=self._s.shape, initializer=keras.initializers.Constant(self._s),
                                   trainable=False, name="std")

    def call(self, x):
        return (x - self.mean) / self.std


def basicmotions_lstm_keras():
    seed(14)
    xtr, ytr, xte, yte, classes = common.load_basicmotions()
    # keras.layers.Normalization keeps its statistics as captured tensors (also after adapt()),
    # which tf2onnx turns into extra graph *inputs*; a layer holding them as (non-trainable)
    # weights exports them as initializers.
    mean = xtr.reshape(-1, 6).mean(0)
    std = xtr.reshape(-1, 6).std(0)
    inp = keras.Input((100, 6), name="x")
    h = FixedStandardize(mean, std, name="norm")(inp)
    h = keras.layers.LSTM(32, name="lstm")(h)
    out = keras.layers.Dense(len(classes), activation="softmax", name="probs")(h)
    model = keras.Model(inp, out)
    model.compile(keras.optimizers.Adam(3e-3, clipnorm=1.0), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(xtr, ytr, batch_size=8, epochs=150, verbose=0, shuffle=True)
    ptr, pte = predict(model, xtr), predict(model, xte)
    acc = {"train": float((ptr.argmax(1) == ytr).mean()), "test": float((pte.argmax(1) == yte).mean())}
    m = export(model, ["probs"])
    common.write_case(
        "basicmotions_lstm_keras", m, [xte],
        description="BasicMotions activity classifier in Keras: raw [N,100,6] -> baked (x-mean)/std -> "
                    "LSTM(32) -> Dense(4, softmax)",
        architecture="keras (x-mean)/std (constant weights) -> LSTM(32) -> Dense(4,softmax)",
        exporter=EXPORTER, versions=VERSIONS, framework_outputs=[pte], rtol=1e-4,
        extra={"accuracy": acc, "classes": classes,
               "dataset": "BasicMotions (UEA), 40 train / 40 test, from the aeon 1.6.0 wheel",
               "training": "Adam 3e-3 clipnorm 1, batch 8, 150 epochs, seed 14"},
        extra_files={"labels.npy": yte, "classes.txt": "\n".join(classes) + "\n"})


# ---------------------------------------------------------------- masked, pre-padded, stacked
def masked_rnn_lstm_prepadded():
    """Keras's default pad_sequences pads at the front, and real data has gaps: zeros before,
    inside and after the tokens, all hidden by mask_zero through two stacked masked layers."""
    seed(15)
    rng = np.random.default_rng(15)

    def data(n, T=16):
        x = np.zeros((n, T), np.int64)
        y = np.zeros((n, 1), np.float32)
        for i in range(n):
            L = int(rng.integers(1, T + 1))
            toks = rng.integers(1, 30, L)
            toks[rng.random(L) < 0.15] = 0  # gaps inside the sequence
            x[i, T - L:] = toks  # pre-padded
            real = toks[toks != 0]
            y[i, 0] = (real.max() if real.size else 0) / 30.0
        return x, y

    xtr, ytr = data(5000)
    xte, yte = data(64)
    inp = keras.Input((16,), dtype="int64", name="tokens")
    h = keras.layers.Embedding(30, 8, mask_zero=True, name="embed")(inp)
    h = keras.layers.SimpleRNN(12, activation="relu", return_sequences=True, name="rnn")(h)
    h = keras.layers.LSTM(16, name="lstm")(h)
    out = keras.layers.Dense(1, name="max")(h)
    model = keras.Model(inp, out)
    model.compile(keras.optimizers.Adam(3e-3), "mse")
    model.fit(xtr, ytr, batch_size=64, epochs=6, verbose=2)
    pte = predict(model, xte)
    mse = {"train_mse": float(np.mean((predict(model, xtr) - ytr) ** 2)),
           "test_mse": float(np.mean((pte - yte) ** 2)),
           "test_mse_predict_mean_baseline": float(np.mean((ytr.mean() - yte) ** 2))}
    m = export(model, ["max"])
    common.write_case(
        "masked_rnn_lstm_prepadded", m, [xte],
        description="Embedding(mask_zero=True) over pre-padded int64 ids with gaps (len 16) -> "
                    "SimpleRNN(12, relu, seq) -> LSTM(16) -> Dense(1) regressing the max id / 30; "
                    "two masked Loops",
        architecture="keras Embedding(30,8,mask_zero=True) -> SimpleRNN(12,relu,seq) -> LSTM(16) -> Dense(1)",
        exporter=EXPORTER, versions=VERSIONS, framework_outputs=[pte],
        extra={"accuracy": mse, "training": "Adam 3e-3, batch 64, 6 epochs, 5000 sequences, seed 15"},
        extra_files={"targets.npy": yte})


# ---------------------------------------------------------------- Keras 3 GRU
def keras_gru_forecaster():
    seed(16)
    rng = np.random.default_rng(16)
    xtr, ytr = sine_series(3000, 24, rng)
    xte, yte = sine_series(64, 24, rng)
    inp = keras.Input((24, 1), name="series")
    h = keras.layers.GRU(16, name="gru")(inp)
    out = keras.layers.Dense(1, name="next")(h)
    model = keras.Model(inp, out)
    model.compile(keras.optimizers.Adam(3e-3), "mse")
    model.fit(xtr, ytr, batch_size=64, epochs=6, verbose=2)
    pte = predict(model, xte)
    mse = {"train_mse": float(np.mean((predict(model, xtr) - ytr) ** 2)),
           "test_mse": float(np.mean((pte - yte) ** 2)),
           "test_mse_last_value_baseline": float(np.mean((xte[:, -1] - yte) ** 2))}
    m = export(model, ["next"])
    common.write_case(
        "keras_gru_forecaster", m, [xte],
        description="one-step forecaster: 24-step two-sine series -> Keras 3 GRU(16) -> Dense(1); "
                    "tf2onnx emits a Loop (no GRU op)",
        architecture="keras GRU(16, reset_after=True) -> Dense(1)",
        exporter=EXPORTER, versions=VERSIONS, framework_outputs=[pte],
        extra={"accuracy": mse, "training": "Adam 3e-3, batch 64, 6 epochs, 3000 windows, seed 16"},
        extra_files={"targets.npy": yte})


CASES = {"reber_lstm": reber_lstm, "bilstm_classifier": bilstm_classifier,
         "simplernn_forecaster": simplernn_forecaster, "masked_lstm": masked_lstm,
         "basicmotions_lstm_keras": basicmotions_lstm_keras,
         "masked_rnn_lstm_prepadded": masked_rnn_lstm_prepadded,
         "keras_gru_forecaster": keras_gru_forecaster}

if __name__ == "__main__":
    for name in (sys.argv[1:] or CASES):
        print(f"== {name}", flush=True)
        CASES[name]()
