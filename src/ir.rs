//! The model IR: one typed description of a model's recurrent layers, their weights and
//! attributes, and the layers around them.
//!
//! Every path reads the same `RecurrentModel`: `inspect` reports from it, the tract guard
//! decides from it, and later the f32 kernels, the quantizer and the MCU blob writer are fed
//! from it. Attributes are normalised once here (defaults filled in, activations resolved per
//! direction), so no consumer re-reads ONNX attributes.

use std::collections::BTreeMap;

use ndarray::ArrayD;
use serde::Serialize;

/// A whole model as recur understands it.
#[derive(Debug, Clone, Serialize)]
pub struct RecurrentModel {
    /// The default-domain opset the model was exported with.
    pub opset: i64,
    /// ONNX IR version of the file.
    pub ir_version: i64,
    /// `producer_name producer_version` from the file, e.g. "pytorch 2.9".
    pub producer: String,
    /// Inputs fed at run time (graph inputs that are not initializers).
    pub inputs: Vec<ValueInfo>,
    /// Graph outputs.
    pub outputs: Vec<ValueInfo>,
    /// Every node of the main graph, in file order, classified.
    pub layers: Vec<Layer>,
    /// How many nodes of each op type the main graph holds (Loop bodies counted separately).
    pub op_histogram: BTreeMap<String, usize>,
    /// Number of scalar parameters held in initializers.
    pub parameter_count: usize,
}

impl RecurrentModel {
    /// The recurrent layers only, with the node they came from.
    pub fn recurrent_layers(&self) -> impl Iterator<Item = (&Layer, &RecurrentLayer)> {
        self.layers.iter().filter_map(|l| match &l.kind {
            LayerKind::Recurrent(r) => Some((l, r.as_ref())),
            _ => None,
        })
    }

    /// The declared input with this name.
    pub fn input(&self, name: &str) -> Option<&ValueInfo> {
        self.inputs.iter().find(|i| i.name == name)
    }
}

/// Name, element type and dimensions of a graph input or output.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ValueInfo {
    /// Tensor name in the graph.
    pub name: String,
    /// Element type.
    pub elem_type: ElemType,
    /// Dimensions; `None` when the file declares no shape at all.
    pub dims: Option<Vec<Dim>>,
    /// For a graph input that indexes a constant table (a token embedding's Gather reads it
    /// as indices, directly or through Casts): the ids that table has rows for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index_limit: Option<IndexLimit>,
}

/// The ids a graph input may hold because an embedding looks them up: ONNX's Gather takes
/// `-rows..rows` (a negative id counts from the end), and any other id has no row, which the
/// engines report as a crash or an out-of-bounds error deep inside the run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IndexLimit {
    /// Rows of the table (the smallest, if the input indexes several).
    pub rows: usize,
    /// The Gather node that looks the ids up.
    pub node: String,
}

/// One dimension of a declared shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Dim {
    /// A fixed size.
    Fixed(usize),
    /// A named symbolic size such as `batch` or `sequence`.
    Symbolic(String),
    /// A dimension with neither a value nor a name.
    Unknown,
}

impl std::fmt::Display for Dim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dim::Fixed(n) => write!(f, "{n}"),
            Dim::Symbolic(s) => write!(f, "{s}"),
            Dim::Unknown => write!(f, "?"),
        }
    }
}

/// Formats a shape as `[batch, 100, 6]`.
pub fn format_dims(dims: &Option<Vec<Dim>>) -> String {
    match dims {
        None => "[?]".into(),
        Some(d) => format!(
            "[{}]",
            d.iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// ONNX element types recur distinguishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ElemType {
    /// 32-bit float.
    F32,
    /// 16-bit float.
    F16,
    /// 64-bit float.
    F64,
    /// 64-bit signed integer.
    I64,
    /// 32-bit signed integer.
    I32,
    /// 8-bit signed integer.
    I8,
    /// 8-bit unsigned integer.
    U8,
    /// Boolean.
    Bool,
    /// Any other ONNX data type, by its enum number.
    Other(i32),
}

impl ElemType {
    /// Maps an ONNX `TensorProto.DataType` number.
    pub fn from_onnx(code: i32) -> Self {
        match code {
            1 => ElemType::F32,
            10 => ElemType::F16,
            11 => ElemType::F64,
            7 => ElemType::I64,
            6 => ElemType::I32,
            3 => ElemType::I8,
            2 => ElemType::U8,
            9 => ElemType::Bool,
            n => ElemType::Other(n),
        }
    }

    /// The numpy spelling, as users see it in `.npy` files.
    pub fn numpy_name(self) -> String {
        match self {
            ElemType::F32 => "float32".into(),
            ElemType::F16 => "float16".into(),
            ElemType::F64 => "float64".into(),
            ElemType::I64 => "int64".into(),
            ElemType::I32 => "int32".into(),
            ElemType::I8 => "int8".into(),
            ElemType::U8 => "uint8".into(),
            ElemType::Bool => "bool".into(),
            ElemType::Other(n) => format!("onnx-type-{n}"),
        }
    }
}

/// One node of the main graph.
#[derive(Debug, Clone, Serialize)]
pub struct Layer {
    /// Node name (or `<op>#<index>` when the file leaves it empty), as errors name it.
    pub node: String,
    /// ONNX op type.
    pub op: String,
    /// What recur made of it.
    pub kind: LayerKind,
}

/// The role a node plays in a recurrent model.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LayerKind {
    /// An LSTM, GRU or RNN op.
    Recurrent(Box<RecurrentLayer>),
    /// A Gather on a 2-D constant table: a token embedding.
    Embedding {
        /// Number of rows (vocabulary size).
        vocab: usize,
        /// Width of each row.
        dim: usize,
    },
    /// Gemm, or MatMul by a constant 2-D matrix: a dense layer.
    Dense {
        /// Input features.
        in_features: usize,
        /// Output features.
        out_features: usize,
        /// Whether the op itself adds a bias (Gemm's C).
        bias: bool,
    },
    /// An element-wise or softmax activation.
    Activation,
    /// Shape glue: Transpose, Squeeze, Unsqueeze, Slice, Reshape, Concat, Add, ...
    Glue,
    /// An ONNX `Loop` whose body is not a recurrence recur recognises (recognised Keras loops
    /// are lifted to [`LayerKind::Recurrent`]).
    Loop {
        /// Op histogram of the loop body (nested subgraphs included).
        body_ops: BTreeMap<String, usize>,
        /// Why the body is not recognised.
        why: String,
    },
    /// Anything else.
    Other,
}

/// Which recurrent cell a layer is, with the cell-specific options.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "cell", rename_all = "lowercase")]
pub enum Cell {
    /// Long short-term memory.
    Lstm {
        /// `input_forget`: couple the input and forget gates.
        input_forget: bool,
        /// Whether peephole weights `P` are given.
        peepholes: bool,
    },
    /// Gated recurrent unit.
    Gru {
        /// `linear_before_reset`: apply the reset gate after the recurrent product.
        linear_before_reset: bool,
    },
    /// Simple (Elman) recurrent layer.
    Rnn,
}

impl Cell {
    /// The ONNX op name.
    pub fn op_name(&self) -> &'static str {
        match self {
            Cell::Lstm { .. } => "LSTM",
            Cell::Gru { .. } => "GRU",
            Cell::Rnn => "RNN",
        }
    }

    /// Number of gates stacked in W and R (4 for LSTM, 3 for GRU, 1 for RNN).
    pub fn gates(&self) -> usize {
        match self {
            Cell::Lstm { .. } => 4,
            Cell::Gru { .. } => 3,
            Cell::Rnn => 1,
        }
    }

    /// How many activation functions one direction takes.
    pub fn activations_per_direction(&self) -> usize {
        match self {
            Cell::Lstm { .. } => 3,
            Cell::Gru { .. } => 2,
            Cell::Rnn => 1,
        }
    }

    /// The ONNX default activations of one direction.
    pub fn default_activations(&self) -> Vec<Activation> {
        let names: &[ActivationKind] = match self {
            Cell::Lstm { .. } => &[
                ActivationKind::Sigmoid,
                ActivationKind::Tanh,
                ActivationKind::Tanh,
            ],
            Cell::Gru { .. } => &[ActivationKind::Sigmoid, ActivationKind::Tanh],
            Cell::Rnn => &[ActivationKind::Tanh],
        };
        names.iter().map(|k| Activation::plain(*k)).collect()
    }
}

/// Direction of a recurrent layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// First step to last.
    Forward,
    /// Last step to first.
    Reverse,
    /// Both, outputs stacked on the direction axis.
    Bidirectional,
}

impl Direction {
    /// Number of directions (1 or 2).
    pub fn count(self) -> usize {
        if self == Direction::Bidirectional {
            2
        } else {
            1
        }
    }
}

/// Tensor layout of a recurrent op's inputs and outputs (`layout` attribute).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    /// layout=0: X is `[seq, batch, input]`.
    SequenceFirst,
    /// layout=1: X is `[batch, seq, input]`.
    BatchFirst,
}

/// The activation functions the ONNX recurrent ops accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ActivationKind {
    /// 1 / (1 + e^-x)
    Sigmoid,
    /// tanh(x)
    Tanh,
    /// max(0, x)
    Relu,
    /// alpha * x + beta
    Affine,
    /// x if x >= 0 else alpha * x
    LeakyRelu,
    /// x if x > alpha else 0
    ThresholdedRelu,
    /// alpha * tanh(beta * x)
    ScaledTanh,
    /// clamp(alpha * x + beta, 0, 1)
    HardSigmoid,
    /// x if x >= 0 else alpha * (e^x - 1)
    Elu,
    /// x / (1 + |x|)
    Softsign,
    /// ln(1 + e^x)
    Softplus,
}

impl ActivationKind {
    /// Parses an ONNX activation name (case-insensitive, as ONNX Runtime accepts them).
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name.to_ascii_lowercase().as_str() {
            "sigmoid" => Self::Sigmoid,
            "tanh" => Self::Tanh,
            "relu" => Self::Relu,
            "affine" => Self::Affine,
            "leakyrelu" => Self::LeakyRelu,
            "thresholdedrelu" => Self::ThresholdedRelu,
            "scaledtanh" => Self::ScaledTanh,
            "hardsigmoid" => Self::HardSigmoid,
            "elu" => Self::Elu,
            "softsign" => Self::Softsign,
            "softplus" => Self::Softplus,
            _ => return None,
        })
    }

    /// ONNX's default `(alpha, beta)` for the functions that take them.
    pub fn default_alpha_beta(self) -> (Option<f32>, Option<f32>) {
        match self {
            Self::LeakyRelu => (Some(0.01), None),
            Self::ThresholdedRelu => (Some(1.0), None),
            Self::ScaledTanh => (Some(1.0), Some(1.0)),
            Self::HardSigmoid => (Some(0.2), Some(0.5)),
            Self::Elu => (Some(1.0), None),
            Self::Affine => (Some(1.0), Some(0.0)),
            _ => (None, None),
        }
    }
}

/// One activation function with its parameters resolved.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Activation {
    /// Which function.
    pub kind: ActivationKind,
    /// `alpha`, for the functions that use it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alpha: Option<f32>,
    /// `beta`, for the functions that use it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub beta: Option<f32>,
}

impl Activation {
    /// The function with ONNX's default parameters.
    pub fn plain(kind: ActivationKind) -> Self {
        let (alpha, beta) = kind.default_alpha_beta();
        Activation { kind, alpha, beta }
    }

    /// Applies the function to one value, exactly as the ONNX specification defines it.
    pub fn apply(&self, x: f32) -> f32 {
        let a = self.alpha.unwrap_or(0.0);
        let b = self.beta.unwrap_or(0.0);
        match self.kind {
            ActivationKind::Sigmoid => 1.0 / (1.0 + (-x).exp()),
            ActivationKind::Tanh => x.tanh(),
            ActivationKind::Relu => x.max(0.0),
            ActivationKind::Affine => a * x + b,
            ActivationKind::LeakyRelu => {
                if x >= 0.0 {
                    x
                } else {
                    a * x
                }
            }
            ActivationKind::ThresholdedRelu => {
                if x > a {
                    x
                } else {
                    0.0
                }
            }
            ActivationKind::ScaledTanh => a * (b * x).tanh(),
            ActivationKind::HardSigmoid => (a * x + b).clamp(0.0, 1.0),
            ActivationKind::Elu => {
                if x >= 0.0 {
                    x
                } else {
                    a * (x.exp() - 1.0)
                }
            }
            ActivationKind::Softsign => x / (1.0 + x.abs()),
            ActivationKind::Softplus => (1.0 + x.exp()).ln(),
        }
    }
}

impl std::fmt::Display for Activation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.kind)?;
        match (self.alpha, self.beta) {
            (Some(a), Some(b)) => write!(f, "(alpha={a}, beta={b})"),
            (Some(a), None) => write!(f, "(alpha={a})"),
            (None, Some(b)) => write!(f, "(beta={b})"),
            (None, None) => Ok(()),
        }
    }
}

/// Where an optional input of a recurrent op comes from.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "source", content = "name", rename_all = "snake_case")]
pub enum Source {
    /// Not given.
    Absent,
    /// A constant (initializer or Constant node) folded at load time.
    Constant,
    /// A graph input, fed at run time.
    GraphInput(String),
    /// Computed by other nodes at run time.
    Computed(String),
}

impl Source {
    /// Whether the input is given at all.
    pub fn is_present(&self) -> bool {
        !matches!(self, Source::Absent)
    }
}

/// What is known of the `sequence_lens` input.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "source", rename_all = "snake_case")]
pub enum SequenceLens {
    /// Not given: every sequence has the full length.
    Absent,
    /// A constant: `uniform` says whether all entries are equal.
    Constant {
        /// The lengths, one per batch entry.
        values: Vec<i64>,
        /// All lengths equal.
        uniform: bool,
    },
    /// A graph input, fed at run time.
    GraphInput {
        /// Graph input name.
        name: String,
    },
    /// Computed by other nodes at run time (e.g. from a padding mask).
    Computed {
        /// Tensor name.
        name: String,
    },
}

/// One LSTM, GRU or RNN node with every attribute resolved.
#[derive(Debug, Clone, Serialize)]
pub struct RecurrentLayer {
    /// Cell type and cell-specific options.
    #[serde(flatten)]
    pub cell: Cell,
    /// Direction.
    pub direction: Direction,
    /// `hidden_size`.
    pub hidden_size: usize,
    /// Input feature size, from W's shape when W is constant.
    pub input_size: Option<usize>,
    /// Activations per direction (forward first), defaults filled in.
    pub activations: Vec<Vec<Activation>>,
    /// Whether the activations differ from the ONNX defaults.
    pub custom_activations: bool,
    /// `clip`, when set.
    pub clip: Option<f32>,
    /// `layout`.
    pub layout: Layout,
    /// Whether the bias `B` is given.
    pub bias: Source,
    /// `sequence_lens`.
    pub sequence_lens: SequenceLens,
    /// `initial_h`.
    pub initial_h: Source,
    /// `initial_c` (LSTM only).
    pub initial_c: Source,
    /// Which outputs (Y, Y_h, Y_c) the graph uses.
    pub outputs: RecurrentOutputs,
    /// Constant weights, when W and R (and B, P if present) are constants.
    #[serde(skip)]
    pub weights: Option<RecurrentWeights>,
    /// Tensor names of the node's inputs, in ONNX order ("" for absent optionals).
    pub input_names: Vec<String>,
    /// Set when the layer is a Keras layer tf2onnx wrote as a `Loop` (weights converted to
    /// ONNX layout and gate order).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keras_loop: Option<KerasLoopSource>,
}

/// Where a layer lifted from a Keras `Loop` reads its input and mask.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KerasLoopSource {
    /// The outer tensor `[T, B, I]` the body reads one step of per iteration.
    pub steps_from: String,
    /// Keras's mask (`mask_zero`), when the layer is masked: masked steps keep the state and
    /// repeat the last output.
    pub mask: Option<String>,
}

/// Which of a recurrent node's outputs are wired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RecurrentOutputs {
    /// The per-step output Y.
    pub y: bool,
    /// The last hidden state Y_h.
    pub y_h: bool,
    /// The last cell state Y_c.
    pub y_c: bool,
}

/// The constant parameters of a recurrent layer, in ONNX layout and gate order.
#[derive(Debug, Clone)]
pub struct RecurrentWeights {
    /// W: `[directions, gates*hidden, input]`.
    pub w: ArrayD<f32>,
    /// R: `[directions, gates*hidden, hidden]`.
    pub r: ArrayD<f32>,
    /// B: `[directions, 2*gates*hidden]`, when given.
    pub b: Option<ArrayD<f32>>,
    /// P: `[directions, 3*hidden]`, when given.
    pub p: Option<ArrayD<f32>>,
}
