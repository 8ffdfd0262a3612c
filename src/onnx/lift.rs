//! Lifting an ONNX graph into the IR: each node classified, each recurrent node's attributes
//! and optional inputs resolved against the ONNX specification (defaults filled in, invalid
//! values refused with the node named).

use std::collections::{BTreeMap, HashMap, HashSet};

use tract_onnx::pb::{GraphProto, ModelProto, NodeProto, TensorProto, ValueInfoProto};

use super::attrs::NodeAttrs;
use super::constants::{constant_f32, constant_i64, scalar_count};
use super::node_display_name;
use crate::error::Result;
use crate::ir::*;

/// Attributes the ONNX specification defines for LSTM, GRU and RNN.
const RECURRENT_ATTRIBUTES: &[&str] = &[
    "activation_alpha",
    "activation_beta",
    "activations",
    "clip",
    "direction",
    "hidden_size",
    "input_forget",
    "layout",
    "linear_before_reset",
];

/// What the graph knows about a tensor name.
struct GraphIndex<'a> {
    constants: HashMap<&'a str, &'a TensorProto>,
    graph_inputs: HashSet<&'a str>,
    consumed: HashSet<&'a str>,
    graph_outputs: HashSet<&'a str>,
}

impl<'a> GraphIndex<'a> {
    fn new(graph: &'a GraphProto) -> Self {
        let mut constants: HashMap<&str, &TensorProto> = graph
            .initializer
            .iter()
            .map(|t| (t.name.as_str(), t))
            .collect();
        for node in &graph.node {
            if node.op_type == "Constant" {
                if let (Some(out), Some(t)) = (
                    node.output.first(),
                    node.attribute
                        .iter()
                        .find(|a| a.name == "value")
                        .and_then(|a| a.t.as_ref()),
                ) {
                    constants.insert(out.as_str(), t);
                }
            }
        }
        let graph_inputs = graph
            .input
            .iter()
            .map(|i| i.name.as_str())
            .filter(|n| !constants.contains_key(n))
            .collect();
        let consumed = graph
            .node
            .iter()
            .flat_map(|n| n.input.iter().map(String::as_str))
            .collect();
        let graph_outputs = graph.output.iter().map(|o| o.name.as_str()).collect();
        GraphIndex {
            constants,
            graph_inputs,
            consumed,
            graph_outputs,
        }
    }

    fn source(&self, name: Option<&String>) -> Source {
        match name.map(String::as_str) {
            None | Some("") => Source::Absent,
            Some(n) if self.constants.contains_key(n) => Source::Constant,
            Some(n) if self.graph_inputs.contains(n) => Source::GraphInput(n.into()),
            Some(n) => Source::Computed(n.into()),
        }
    }

    fn constant(&self, name: Option<&String>) -> Option<&'a TensorProto> {
        name.and_then(|n| self.constants.get(n.as_str()).copied())
    }

    fn is_used(&self, name: Option<&String>) -> bool {
        match name.map(String::as_str) {
            None | Some("") => false,
            Some(n) => self.consumed.contains(n) || self.graph_outputs.contains(n),
        }
    }
}

/// Lifts a decoded model into the IR.
pub fn lift(proto: &ModelProto) -> Result<RecurrentModel> {
    let graph = proto
        .graph
        .as_ref()
        .expect("decode_proto checked the graph");
    let index = GraphIndex::new(graph);
    let opset = proto
        .opset_import
        .iter()
        .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map(|o| o.version)
        .unwrap_or(0);

    let mut layers = Vec::with_capacity(graph.node.len());
    for (i, node) in graph.node.iter().enumerate() {
        let display = node_display_name(node, i);
        let kind = classify(node, &display, &index)?;
        layers.push(Layer {
            node: display,
            op: node.op_type.clone(),
            kind,
        });
    }

    let parameter_count = index.constants.values().map(|t| scalar_count(t)).sum();
    Ok(RecurrentModel {
        opset,
        ir_version: proto.ir_version,
        producer: format!("{} {}", proto.producer_name, proto.producer_version)
            .trim()
            .to_string(),
        inputs: graph
            .input
            .iter()
            .filter(|i| index.graph_inputs.contains(i.name.as_str()))
            .map(|i| ValueInfo {
                index_limit: index_limit(graph, &index, &i.name),
                ..value_info(i)
            })
            .collect(),
        outputs: graph.output.iter().map(value_info).collect(),
        layers,
        op_histogram: op_histogram(graph, false),
        parameter_count,
    })
}

/// The table rows the graph input `input` may index: the Gathers on a constant table that
/// read it as indices, directly or through Casts (tf2onnx casts Keras's int64 tokens to
/// int32 first), the one with the fewest rows along its axis.
fn index_limit(graph: &GraphProto, index: &GraphIndex, input: &str) -> Option<IndexLimit> {
    let mut names = vec![input];
    let mut limit: Option<IndexLimit> = None;
    let mut next = 0;
    while let Some(&name) = names.get(next) {
        next += 1;
        for (i, node) in graph.node.iter().enumerate() {
            let reads = |k: usize| node.input.get(k).is_some_and(|n| n == name);
            match node.op_type.as_str() {
                "Cast" if reads(0) => names.extend(node.output.first().map(String::as_str)),
                "Gather" if reads(1) => {
                    if let Some(found) = gathered_rows(node, i, index) {
                        if limit.as_ref().is_none_or(|l| found.rows < l.rows) {
                            limit = Some(found);
                        }
                    }
                }
                _ => {}
            }
        }
    }
    limit
}

/// For a Gather on a constant table (node `i` of the graph): the table's size along the
/// Gather's axis, and the node.
fn gathered_rows(node: &NodeProto, i: usize, index: &GraphIndex) -> Option<IndexLimit> {
    let table = index.constant(node.input.first())?;
    let display = node_display_name(node, i);
    let rank = table.dims.len() as i64;
    let axis = NodeAttrs::new(node, &display).int("axis").unwrap_or(0);
    let axis = usize::try_from(if axis < 0 { axis + rank } else { axis }).ok()?;
    let rows = (*table.dims.get(axis)?).max(0) as usize;
    Some(IndexLimit {
        rows,
        node: display,
    })
}

fn value_info(v: &ValueInfoProto) -> ValueInfo {
    use tract_onnx::pb::tensor_shape_proto::dimension::Value;
    use tract_onnx::pb::type_proto::Value as TypeValue;
    let tensor = v.r#type.as_ref().and_then(|t| match &t.value {
        Some(TypeValue::TensorType(tt)) => Some(tt),
        _ => None,
    });
    ValueInfo {
        name: v.name.clone(),
        elem_type: ElemType::from_onnx(tensor.map(|t| t.elem_type).unwrap_or(0)),
        dims: tensor.and_then(|t| t.shape.as_ref()).map(|s| {
            s.dim
                .iter()
                .map(|d| match &d.value {
                    Some(Value::DimValue(n)) if *n >= 0 => Dim::Fixed(*n as usize),
                    Some(Value::DimParam(p)) if !p.is_empty() => Dim::Symbolic(p.clone()),
                    _ => Dim::Unknown,
                })
                .collect()
        }),
        index_limit: None,
    }
}

/// Op histogram of a graph; with `nested`, ops inside subgraphs (Loop bodies) count too.
fn op_histogram(graph: &GraphProto, nested: bool) -> BTreeMap<String, usize> {
    let mut histogram = BTreeMap::new();
    fn walk(graph: &GraphProto, nested: bool, histogram: &mut BTreeMap<String, usize>) {
        for node in &graph.node {
            *histogram.entry(node.op_type.clone()).or_default() += 1;
            if nested {
                for a in &node.attribute {
                    for g in a.g.iter().chain(a.graphs.iter()) {
                        walk(g, nested, histogram);
                    }
                }
            }
        }
    }
    walk(graph, nested, &mut histogram);
    histogram
}

fn classify(node: &NodeProto, display: &str, index: &GraphIndex) -> Result<LayerKind> {
    let constant_2d = |i: usize| {
        index
            .constant(node.input.get(i))
            .filter(|t| t.dims.len() == 2)
            .map(|t| (t.dims[0].max(0) as usize, t.dims[1].max(0) as usize))
    };
    Ok(match node.op_type.as_str() {
        "LSTM" | "GRU" | "RNN" => {
            LayerKind::Recurrent(Box::new(lift_recurrent(node, display, index)?))
        }
        "Gather" if constant_2d(0).is_some() => {
            let (vocab, dim) = constant_2d(0).expect("checked");
            LayerKind::Embedding { vocab, dim }
        }
        "Gemm" if constant_2d(1).is_some() => {
            let (rows, cols) = constant_2d(1).expect("checked");
            let trans_b = NodeAttrs::new(node, display).int("transB").unwrap_or(0) == 1;
            let (in_features, out_features) = if trans_b { (cols, rows) } else { (rows, cols) };
            LayerKind::Dense {
                in_features,
                out_features,
                bias: node.input.get(2).is_some_and(|c| !c.is_empty()),
            }
        }
        "MatMul" if constant_2d(1).is_some() => {
            let (in_features, out_features) = constant_2d(1).expect("checked");
            LayerKind::Dense {
                in_features,
                out_features,
                bias: false,
            }
        }
        "Relu" | "Sigmoid" | "Tanh" | "Softmax" | "LogSoftmax" | "LeakyRelu" | "Elu"
        | "HardSigmoid" | "Softsign" | "Softplus" => LayerKind::Activation,
        "Transpose" | "Squeeze" | "Unsqueeze" | "Slice" | "Reshape" | "Concat" | "Shape"
        | "Gather" | "Add" | "Sub" | "Mul" | "Div" | "Cast" | "Identity" | "Flatten"
        | "Constant" | "ConstantOfShape" | "Expand" | "Split" | "Where" | "Equal" | "Not"
        | "ReduceSum" | "ReduceMax" | "Less" | "Greater" | "Range" | "Dropout" => LayerKind::Glue,
        "Loop" => {
            let outer = |name: &str| index.constants.get(name).map(|t| (*t).clone());
            match super::keras_loop::recognise(node, &outer) {
                Ok(k) => LayerKind::Recurrent(Box::new(recurrent_from_loop(node, &k, index))),
                Err(why) => LayerKind::Loop {
                    body_ops: node
                        .attribute
                        .iter()
                        .filter_map(|a| a.g.as_ref())
                        .map(|g| op_histogram(g, true))
                        .fold(BTreeMap::new(), |mut acc, h| {
                            for (k, v) in h {
                                *acc.entry(k).or_default() += v;
                            }
                            acc
                        }),
                    why,
                },
            }
        }
        _ => LayerKind::Other,
    })
}

/// A recurrent node's attributes, resolved and checked against the ONNX specification.
#[derive(Debug, Clone)]
pub struct RecurrentAttributes {
    /// Cell and cell options (peepholes: whether the node has a P input).
    pub cell: Cell,
    /// Direction.
    pub direction: Direction,
    /// Layout.
    pub layout: Layout,
    /// `hidden_size`, when the attribute is set.
    pub hidden_size: Option<usize>,
    /// Activations per direction, defaults filled in.
    pub activations: Vec<Vec<Activation>>,
    /// Whether they differ from the defaults.
    pub custom_activations: bool,
    /// `clip`.
    pub clip: Option<f32>,
}

/// Reads and checks an LSTM, GRU or RNN node's attributes; `display` names it in errors.
pub fn recurrent_attributes(node: &NodeProto, display: &str) -> Result<RecurrentAttributes> {
    let attrs = NodeAttrs::new(node, display);

    if let Some(unknown) = attrs.names().find(|n| !RECURRENT_ATTRIBUTES.contains(n)) {
        return Err(attrs.invalid(unknown, "not an attribute of the ONNX recurrent ops"));
    }

    let direction = match attrs.string("direction")?.as_deref() {
        None | Some("forward") => Direction::Forward,
        Some("reverse") => Direction::Reverse,
        Some("bidirectional") => Direction::Bidirectional,
        Some(other) => {
            return Err(attrs.invalid(
                "direction",
                format!("'{other}' is none of forward, reverse, bidirectional"),
            ))
        }
    };
    let directions = direction.count();

    let cell = match node.op_type.as_str() {
        "LSTM" => Cell::Lstm {
            input_forget: match attrs.int("input_forget").unwrap_or(0) {
                0 => false,
                1 => true,
                v => return Err(attrs.invalid("input_forget", format!("{v} is neither 0 nor 1"))),
            },
            peepholes: node.input.get(7).is_some_and(|p| !p.is_empty()),
        },
        "GRU" => Cell::Gru {
            linear_before_reset: match attrs.int("linear_before_reset").unwrap_or(0) {
                0 => false,
                1 => true,
                v => {
                    return Err(
                        attrs.invalid("linear_before_reset", format!("{v} is neither 0 nor 1"))
                    )
                }
            },
        },
        _ => Cell::Rnn,
    };
    if !matches!(cell, Cell::Lstm { .. }) && attrs.int("input_forget").is_some() {
        return Err(attrs.invalid("input_forget", "only LSTM has it"));
    }
    if !matches!(cell, Cell::Gru { .. }) && attrs.int("linear_before_reset").is_some() {
        return Err(attrs.invalid("linear_before_reset", "only GRU has it"));
    }

    let layout = match attrs.int("layout").unwrap_or(0) {
        0 => Layout::SequenceFirst,
        1 => Layout::BatchFirst,
        v => return Err(attrs.invalid("layout", format!("{v} is neither 0 nor 1"))),
    };
    let hidden_size = match attrs.int("hidden_size") {
        Some(h) if h > 0 => Some(h as usize),
        Some(h) => return Err(attrs.invalid("hidden_size", format!("{h} is not positive"))),
        None => None,
    };
    let clip = match attrs.float("clip") {
        Some(c) if c.is_nan() || c <= 0.0 => {
            return Err(attrs.invalid("clip", format!("{c} is not a positive threshold")))
        }
        c => c,
    };
    let activations = resolve_activations(&attrs, &cell, directions)?;
    let defaults = cell.default_activations();
    let custom_activations = activations
        .iter()
        .any(|per_dir| per_dir.iter().zip(&defaults).any(|(a, d)| a.kind != d.kind));
    Ok(RecurrentAttributes {
        cell,
        direction,
        layout,
        hidden_size,
        activations,
        custom_activations,
        clip,
    })
}

fn lift_recurrent(node: &NodeProto, display: &str, index: &GraphIndex) -> Result<RecurrentLayer> {
    let attrs = NodeAttrs::new(node, display);
    let RecurrentAttributes {
        cell,
        direction,
        layout,
        hidden_size,
        activations,
        custom_activations,
        clip,
    } = recurrent_attributes(node, display)?;
    let directions = direction.count();

    let w = index.constant(node.input.get(1)).and_then(constant_f32);
    let r = index.constant(node.input.get(2)).and_then(constant_f32);
    let gates = cell.gates();
    let hidden_size = match hidden_size {
        Some(h) => h,
        None => match &r {
            Some(r) if r.ndim() == 3 => r.shape()[2],
            _ => {
                return Err(attrs.invalid(
                    "hidden_size",
                    "missing, and R is not a constant to read it from",
                ))
            }
        },
    };

    let check_shape = |what: &str, a: &ndarray::ArrayD<f32>, expected: &[Option<usize>]| {
        let ok = a.ndim() == expected.len()
            && a.shape()
                .iter()
                .zip(expected)
                .all(|(&got, want)| want.is_none_or(|w| w == got));
        if ok {
            Ok(())
        } else {
            Err(attrs.invalid(
                "hidden_size",
                format!(
                    "{what} has shape {:?}, which does not fit {} direction(s), {gates} gate(s) and hidden_size {hidden_size}",
                    a.shape(),
                    directions
                ),
            ))
        }
    };
    if let Some(w) = &w {
        check_shape("W", w, &[Some(directions), Some(gates * hidden_size), None])?;
    }
    if let Some(r) = &r {
        check_shape(
            "R",
            r,
            &[
                Some(directions),
                Some(gates * hidden_size),
                Some(hidden_size),
            ],
        )?;
    }
    let b = index.constant(node.input.get(3)).and_then(constant_f32);
    if let Some(b) = &b {
        check_shape("B", b, &[Some(directions), Some(2 * gates * hidden_size)])?;
    }
    let p = index.constant(node.input.get(7)).and_then(constant_f32);
    if let Some(p) = &p {
        check_shape("P", p, &[Some(directions), Some(3 * hidden_size)])?;
    }

    let sequence_lens = match index.source(node.input.get(4)) {
        Source::Absent => SequenceLens::Absent,
        Source::Constant => {
            let values: Vec<i64> = index
                .constant(node.input.get(4))
                .and_then(constant_i64)
                .map(|a| a.iter().copied().collect())
                .ok_or_else(|| attrs.invalid("sequence_lens", "constant is not int32/int64"))?;
            let uniform = values.windows(2).all(|w| w[0] == w[1]);
            SequenceLens::Constant { values, uniform }
        }
        Source::GraphInput(name) => SequenceLens::GraphInput { name },
        Source::Computed(name) => SequenceLens::Computed { name },
    };

    let weights = match (w, r) {
        (Some(w), Some(r)) => Some(RecurrentWeights { w, r, b, p }),
        _ => None,
    };

    Ok(RecurrentLayer {
        input_size: weights.as_ref().map(|w| w.w.shape()[2]),
        direction,
        hidden_size,
        activations,
        custom_activations,
        clip,
        layout,
        bias: index.source(node.input.get(3)),
        sequence_lens,
        initial_h: index.source(node.input.get(5)),
        initial_c: if matches!(cell, Cell::Lstm { .. }) {
            index.source(node.input.get(6))
        } else {
            Source::Absent
        },
        outputs: RecurrentOutputs {
            y: index.is_used(node.output.first()),
            y_h: index.is_used(node.output.get(1)),
            y_c: index.is_used(node.output.get(2)),
        },
        weights,
        input_names: node.input.clone(),
        cell,
        keras_loop: None,
    })
}

/// A recognised Keras loop as a recurrent layer of the IR.
fn recurrent_from_loop(
    node: &NodeProto,
    k: &super::keras_loop::KerasLoop,
    index: &GraphIndex,
) -> RecurrentLayer {
    use super::keras_loop::Carried;
    let carried_input = |role: Carried| {
        k.carried_index(role)
            .map_or(Source::Absent, |j| index.source(node.input.get(2 + j)))
    };
    let carried_used = |role: Carried| {
        k.carried_index(role)
            .is_some_and(|j| index.is_used(node.output.get(j)))
    };
    let scans_used =
        (0..k.scans.len()).any(|s| index.is_used(node.output.get(k.carried.len() + s)));
    RecurrentLayer {
        cell: k.cell.clone(),
        direction: Direction::Forward,
        hidden_size: k.hidden,
        input_size: Some(k.input_size),
        activations: vec![k.activations.clone()],
        custom_activations: k.activations != k.cell.default_activations(),
        clip: None,
        layout: Layout::SequenceFirst,
        bias: Source::Constant,
        sequence_lens: SequenceLens::Absent,
        initial_h: carried_input(Carried::Hidden),
        initial_c: carried_input(Carried::Cell),
        outputs: RecurrentOutputs {
            y: scans_used,
            y_h: carried_used(Carried::Hidden) || carried_used(Carried::LastOutput),
            y_c: carried_used(Carried::Cell),
        },
        weights: Some(k.weights.clone()),
        input_names: node.input.clone(),
        keras_loop: Some(KerasLoopSource {
            steps_from: k.x.clone(),
            mask: k.mask.clone(),
        }),
    }
}

/// Resolves `activations`, `activation_alpha` and `activation_beta` into one list per
/// direction. As in ONNX Runtime, alphas and betas are consumed in order by the functions that
/// take them; a function left without one gets the ONNX default. A bidirectional layer given
/// one direction's list uses it, parameters included, for both directions.
fn resolve_activations(
    attrs: &NodeAttrs,
    cell: &Cell,
    directions: usize,
) -> Result<Vec<Vec<Activation>>> {
    let per_direction = cell.activations_per_direction();
    let names = match attrs.strings("activations")? {
        None => return Ok(vec![cell.default_activations(); directions]),
        Some(names) => names,
    };
    let repeat_for_backward = directions == 2 && names.len() == per_direction;
    if names.len() != per_direction * directions && !repeat_for_backward {
        return Err(attrs.invalid(
            "activations",
            format!(
                "{} given, {} expected ({per_direction} per direction)",
                names.len(),
                per_direction * directions
            ),
        ));
    }
    let mut alphas = attrs.floats("activation_alpha").unwrap_or(&[]).iter();
    let mut betas = attrs.floats("activation_beta").unwrap_or(&[]).iter();
    let mut resolved = Vec::with_capacity(names.len());
    for name in &names {
        let kind = ActivationKind::parse(name).ok_or_else(|| {
            attrs.invalid("activations", format!("'{name}' is not an ONNX activation"))
        })?;
        let (default_alpha, default_beta) = kind.default_alpha_beta();
        resolved.push(Activation {
            kind,
            alpha: default_alpha.map(|d| alphas.next().copied().unwrap_or(d)),
            beta: default_beta.map(|d| betas.next().copied().unwrap_or(d)),
        });
    }
    let mut per_dir: Vec<Vec<Activation>> =
        resolved.chunks(per_direction).map(|c| c.to_vec()).collect();
    if repeat_for_backward {
        per_dir.push(per_dir[0].clone());
    }
    Ok(per_dir)
}
