//! Makes a model streamable: every recurrent node's state is exposed, so a sequence can be fed
//! chunk by chunk with the state carried between chunks.
//!
//! Two models come out of one:
//!
//! - the **first-chunk** model is the original graph plus, as extra graph outputs, the final
//!   state (`Y_h`, and `Y_c` for LSTM) of every recurrent node. It starts from whatever initial
//!   state the original computes (absent = zeros, a constant, a graph input such as `h0`, or a
//!   value computed from inputs), so the first chunk is exactly the original model's start.
//! - the **carry** model (what `recur convert --streamable` writes) has, in addition, every
//!   recurrent node's `initial_h` / `initial_c` as a graph input, fed with the previous
//!   chunk's state outputs. Graph inputs that only fed initial states are dropped from it.
//!
//! In both the sequence input's time dimension is left open (a fixed length would forbid
//! chunks), and declared output shapes are dropped (per-step outputs change length).
//!
//! Refused, naming the node: bidirectional and reverse layers and `sequence_lens` (their
//! outputs depend on steps not yet seen), `Loop` and `Scan` (their state is not a node input
//! recur can expose), and graphs where recur cannot tell which axis of which input is time.

use std::collections::{HashMap, HashSet};

use tract_onnx::pb::{
    tensor_shape_proto::{dimension, Dimension},
    type_proto, GraphProto, ModelProto, NodeProto, TensorShapeProto, TypeProto, ValueInfoProto,
};

use crate::error::{RecurError, Result};
use crate::ir::{Direction, LayerKind, Layout, RecurrentModel, SequenceLens};

/// One piece of recurrent state carried from chunk to chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateWire {
    /// The recurrent node it belongs to.
    pub node: String,
    /// `initial_h` or `initial_c`.
    pub which: &'static str,
    /// The carry model's graph input that takes it.
    pub input: String,
    /// The graph output (in both models) that gives it after a chunk.
    pub output: String,
}

/// The two models of a streaming session and how they are wired.
#[derive(Debug, Clone)]
pub struct Streamable {
    /// The original graph with the state outputs added: runs the first chunk.
    pub first: ModelProto,
    /// The graph with state inputs and outputs: runs every later chunk.
    pub carry: ModelProto,
    /// The state, in the order it is carried.
    pub states: Vec<StateWire>,
    /// The graph outputs of the original model, in order (state outputs come after them).
    pub user_outputs: Vec<String>,
    /// The graph input that holds the sequence.
    pub sequence_input: String,
    /// Its time axis.
    pub time_axis: usize,
}

fn refuse(node: &str, op: &str, reason: impl Into<String>) -> RecurError {
    RecurError::Unsupported {
        backend: "stream".into(),
        node: node.into(),
        op: op.into(),
        reason: reason.into(),
    }
}

/// Builds the first-chunk and carry models for `proto` (whose IR is `ir`), or refuses naming
/// the node that makes streaming impossible.
pub fn make_streamable(proto: &ModelProto, ir: &RecurrentModel) -> Result<Streamable> {
    for layer in &ir.layers {
        if matches!(layer.kind, LayerKind::Loop { .. }) || layer.op == "Scan" {
            return Err(refuse(
                &layer.node,
                &layer.op,
                "its recurrent state lives inside the loop body, which recur cannot expose for streaming (export the layer as an LSTM/GRU/RNN op)",
            ));
        }
    }
    let mut recurrent = Vec::new();
    for (layer, r) in ir.recurrent_layers() {
        match r.direction {
            Direction::Forward => {}
            Direction::Reverse => {
                return Err(refuse(&layer.node, &layer.op, "direction=reverse reads the sequence from its end, which a stream has not reached: not causal"))
            }
            Direction::Bidirectional => {
                return Err(refuse(&layer.node, &layer.op, "direction=bidirectional reads the sequence from its end, which a stream has not reached: not causal"))
            }
        }
        if !matches!(r.sequence_lens, SequenceLens::Absent) {
            return Err(refuse(
                &layer.node,
                &layer.op,
                "sequence_lens masks steps relative to the whole sequence's length: cannot stream",
            ));
        }
        recurrent.push((layer.node.clone(), layer.op.clone()));
    }
    if recurrent.is_empty() {
        return Err(RecurError::Usage(
            "the model has no LSTM, GRU or RNN node: nothing to stream".into(),
        ));
    }
    let graph = proto
        .graph
        .as_ref()
        .ok_or_else(|| RecurError::Usage("the model holds no graph".into()))?;
    let (sequence_input, time_axis) = find_time_axis(graph, ir)?;

    let user_outputs: Vec<String> = graph.output.iter().map(|o| o.name.clone()).collect();
    let mut first = proto.clone();
    let mut carry = proto.clone();
    let mut states = Vec::new();
    {
        let g1 = first.graph.as_mut().expect("graph");
        let g2 = carry.graph.as_mut().expect("graph");
        let names = node_names(graph);
        for (node_name, op) in &recurrent {
            let index = names
                .iter()
                .position(|n| n == node_name)
                .ok_or_else(|| refuse(node_name, op, "node not found in the graph"))?;
            let slots: &[(usize, usize, &'static str)] = if op == "LSTM" {
                &[(5, 1, "initial_h"), (6, 2, "initial_c")]
            } else {
                &[(5, 1, "initial_h")]
            };
            let tag = sanitize(node_name);
            for &(in_slot, out_slot, which) in slots {
                // The state output: the node's own Y_h / Y_c name, or a new one.
                let existing = g1.node[index]
                    .output
                    .get(out_slot)
                    .filter(|n| !n.is_empty())
                    .cloned();
                let output = existing.unwrap_or_else(|| {
                    format!(
                        "recur_state.{tag}.{}",
                        if out_slot == 1 { "Y_h" } else { "Y_c" }
                    )
                });
                for g in [&mut *g1, &mut *g2] {
                    let node = &mut g.node[index];
                    while node.output.len() <= out_slot {
                        node.output.push(String::new());
                    }
                    node.output[out_slot] = output.clone();
                    if !g.output.iter().any(|o| o.name == output) {
                        g.output.push(float_value(&output, None));
                    }
                }
                let input = format!("recur_state.{tag}.{which}");
                let node = &mut g2.node[index];
                while node.input.len() <= in_slot {
                    node.input.push(String::new());
                }
                node.input[in_slot] = input.clone();
                g2.input.push(float_value(&input, Some(3)));
                states.push(StateWire {
                    node: node_name.clone(),
                    which,
                    input,
                    output,
                });
            }
        }
        for g in [&mut *g1, &mut *g2] {
            open_time_dim(g, &sequence_input, time_axis);
            g.value_info.clear();
            for o in g.output.iter_mut() {
                if let Some(type_proto::Value::TensorType(t)) =
                    o.r#type.as_mut().and_then(|t| t.value.as_mut())
                {
                    t.shape = None;
                }
            }
        }
        prune_unused_inputs(g2);
    }
    Ok(Streamable {
        first,
        carry,
        states,
        user_outputs,
        sequence_input,
        time_axis,
    })
}

fn node_names(graph: &GraphProto) -> Vec<String> {
    graph
        .node
        .iter()
        .enumerate()
        .map(|(i, n)| super::node_display_name(n, i))
        .collect()
}

fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// A float tensor value with `rank` unknown dimensions (or no shape at all).
fn float_value(name: &str, rank: Option<usize>) -> ValueInfoProto {
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: 1,
                shape: rank.map(|r| TensorShapeProto {
                    dim: vec![Dimension::default(); r],
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn open_time_dim(graph: &mut GraphProto, input: &str, axis: usize) {
    for v in graph.input.iter_mut().filter(|v| v.name == input) {
        if let Some(type_proto::Value::TensorType(t)) =
            v.r#type.as_mut().and_then(|t| t.value.as_mut())
        {
            if let Some(d) = t.shape.as_mut().and_then(|s| s.dim.get_mut(axis)) {
                if matches!(d.value, Some(dimension::Value::DimValue(_))) {
                    d.value = Some(dimension::Value::DimParam("recur_time".into()));
                }
            }
        }
    }
}

fn prune_unused_inputs(graph: &mut GraphProto) {
    let mut used: HashSet<String> = HashSet::new();
    fn collect(g: &GraphProto, used: &mut HashSet<String>) {
        for n in &g.node {
            used.extend(n.input.iter().cloned());
            for a in &n.attribute {
                if let Some(sub) = &a.g {
                    collect(sub, used);
                }
                for sub in &a.graphs {
                    collect(sub, used);
                }
            }
        }
    }
    collect(graph, &mut used);
    used.extend(graph.output.iter().map(|o| o.name.clone()));
    graph.input.retain(|i| used.contains(&i.name));
}

/// Finds the graph input that holds the sequence and its time axis, by following the first
/// recurrent node's `X` back through ops that keep or permute axes.
fn find_time_axis(graph: &GraphProto, ir: &RecurrentModel) -> Result<(String, usize)> {
    let producers: HashMap<&str, &NodeProto> = graph
        .node
        .iter()
        .flat_map(|n| n.output.iter().map(move |o| (o.as_str(), n)))
        .collect();
    let constants: HashSet<&str> = graph
        .initializer
        .iter()
        .map(|t| t.name.as_str())
        .chain(
            graph
                .node
                .iter()
                .filter(|n| n.op_type == "Constant")
                .flat_map(|n| n.output.iter().map(String::as_str)),
        )
        .collect();
    let inputs: HashSet<&str> = ir.inputs.iter().map(|i| i.name.as_str()).collect();
    let mut last_problem = None;
    for (layer, r) in ir.recurrent_layers() {
        let Some(x) = r.input_names.first() else {
            continue;
        };
        let axis = if r.layout == Layout::BatchFirst { 1 } else { 0 };
        match trace_back(x, axis, &producers, &constants, &inputs) {
            Ok(found) => return Ok(found),
            Err(why) => last_problem = Some((layer.node.clone(), layer.op.clone(), why)),
        }
    }
    let (node, op, why) =
        last_problem.unwrap_or_else(|| ("?".into(), "?".into(), "no recurrent input".into()));
    Err(refuse(
        &node,
        &op,
        format!("cannot tell which input axis is time: {why}"),
    ))
}

fn trace_back(
    tensor: &str,
    axis: usize,
    producers: &HashMap<&str, &NodeProto>,
    constants: &HashSet<&str>,
    inputs: &HashSet<&str>,
) -> std::result::Result<(String, usize), String> {
    trace(tensor, axis, producers, constants, inputs, 0)
}

/// Element-wise ops: an axis of the output is the same axis of each full-rank input.
const ELEMENTWISE: [&str; 26] = [
    "Cast",
    "Identity",
    "Dropout",
    "Relu",
    "Tanh",
    "Sigmoid",
    "Neg",
    "Abs",
    "Exp",
    "Log",
    "Sqrt",
    "Softsign",
    "Elu",
    "LeakyRelu",
    "Clip",
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Where",
    "Equal",
    "Not",
    "And",
    "Or",
    "Greater",
    "Less",
];

fn trace(
    tensor: &str,
    axis: usize,
    producers: &HashMap<&str, &NodeProto>,
    constants: &HashSet<&str>,
    inputs: &HashSet<&str>,
    depth: usize,
) -> std::result::Result<(String, usize), String> {
    if inputs.contains(tensor) {
        return Ok((tensor.to_string(), axis));
    }
    if depth > 64 {
        return Err("graph too deep".into());
    }
    let node = producers
        .get(tensor)
        .ok_or_else(|| format!("'{tensor}' is neither an input nor computed"))?;
    let ints = |name: &str| {
        node.attribute
            .iter()
            .find(|a| a.name == name)
            .map(|a| a.ints.clone())
    };
    let int = |name: &str| node.attribute.iter().find(|a| a.name == name).map(|a| a.i);
    let variable: Vec<&String> = node
        .input
        .iter()
        .filter(|i| !i.is_empty() && !constants.contains(i.as_str()))
        .collect();
    let next = |t: &str, a: usize| trace(t, a, producers, constants, inputs, depth + 1);
    match node.op_type.as_str() {
        "Transpose" => {
            let perm = ints("perm").ok_or("Transpose without perm")?;
            let a = *perm.get(axis).ok_or("bad perm")? as usize;
            next(&node.input[0], a)
        }
        "Gather" if int("axis").unwrap_or(0) == 0 && constants.contains(node.input[0].as_str()) => {
            // An embedding: the ids' axes come first in the output.
            next(&node.input[1], axis)
        }
        "MatMul" if variable.len() == 1 && *variable[0] == node.input[0] => {
            next(&node.input[0], axis)
        }
        op if ELEMENTWISE.contains(&op) && !variable.is_empty() => {
            let mut last = String::new();
            for v in variable {
                match next(v, axis) {
                    Ok(found) => return Ok(found),
                    Err(e) => last = e,
                }
            }
            Err(last)
        }
        op => Err(format!(
            "the sequence reaches the recurrent node through {op} node '{}'",
            node.name
        )),
    }
}
