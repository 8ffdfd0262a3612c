//! From an ONNX graph to the MCU layer chain: follows the one data path from the graph input
//! to the graph output and turns every node on it into a stage the fixed-point kernel has, or
//! refuses the model naming the node.
//!
//! The path is followed axis by axis: each axis of the current tensor carries a role (batch,
//! time, direction, feature, or a size-1 axis), so Transpose/Squeeze/Unsqueeze/Reshape/Gather
//! glue is checked to mean what the kernel does (e.g. `Gather(Y, -1, axis=time)` is "last
//! step") rather than assumed. Element-wise constants before the first weighted layer fold
//! into the input quantisation; an Add after a Dense folds into its bias. Nodes that only
//! read the input's shape (to build zero initial states) are off the path and ignored; the
//! states they build must be zeros.

use std::collections::HashMap;

use ndarray::{Array1, Array2, ArrayD, Ix2};
use tract_onnx::pb::{GraphProto, NodeProto, TensorProto};

use crate::error::{RecurError, Result};
use crate::ir::{ActivationKind, Cell, LayerKind, RecurrentLayer, SequenceLens, Source};
use crate::model::Model;
use crate::onnx::{constant_f32, constant_i64, node_display_name, NodeAttrs};

/// What a recurrent stage passes on (mirrors `recur_kernel::Reduce`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reduce {
    /// Every step (`Y`).
    Sequence,
    /// The last time step of `Y`.
    Last,
    /// Each direction's final state (`Y_h`).
    Final,
}

/// The function on the model's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputAct {
    /// None.
    None,
    /// Softmax over the features.
    Softmax,
    /// Logistic sigmoid.
    Sigmoid,
}

/// One stage of the chain, with f32 parameters.
#[derive(Debug, Clone)]
pub enum Stage {
    /// Token embedding: `table` is `[vocab, dim]`.
    Embedding {
        /// Node name.
        node: String,
        /// The table.
        table: Array2<f32>,
    },
    /// An LSTM, GRU or RNN node.
    Recurrent {
        /// Node name.
        node: String,
        /// The lifted layer (weights present).
        layer: Box<RecurrentLayer>,
        /// What it passes on.
        reduce: Reduce,
    },
    /// A dense layer `y = W x + b`.
    Dense {
        /// Node name.
        node: String,
        /// `[out, in]`.
        w: Array2<f32>,
        /// `[out]`.
        b: Array1<f32>,
    },
}

impl Stage {
    /// The node the stage came from.
    pub fn node(&self) -> &str {
        match self {
            Stage::Embedding { node, .. }
            | Stage::Recurrent { node, .. }
            | Stage::Dense { node, .. } => node,
        }
    }
}

/// Role of one axis of a tensor on the data path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// First axis of the graph input, before a recurrent layer says what it is.
    In0,
    /// Second axis of the graph input, likewise.
    In1,
    /// Batch.
    Batch,
    /// Time.
    Time,
    /// Direction axis of a recurrent output (its size).
    Dir(usize),
    /// Features (their count).
    Feat(usize),
    /// A size-1 axis.
    One,
}

/// A model as the MCU kernel will compute it.
#[derive(Debug, Clone)]
pub struct Chain {
    /// Graph input name.
    pub input_name: String,
    /// Graph output name.
    pub output_name: String,
    /// Whether the input is token ids.
    pub tokens: bool,
    /// Features per step (1 for tokens).
    pub input_dim: usize,
    /// Input pre-processing folded from the graph: x' = x*a + b per feature.
    pub affine: Vec<(f32, f32)>,
    /// Whether the graph input is `[time, batch, ...]` (the simulator's input is batch-first).
    pub input_time_first: bool,
    /// The stages.
    pub stages: Vec<Stage>,
    /// Output function.
    pub output_act: OutputAct,
    /// Roles of the graph output's axes (to bring references to `[N, (T,) O]`).
    pub output_roles: Vec<Role>,
}

impl Chain {
    /// Whether the output has a time axis.
    pub fn per_step_output(&self) -> bool {
        self.output_roles.contains(&Role::Time)
    }

    /// Output width.
    pub fn output_dim(&self) -> usize {
        self.output_roles
            .iter()
            .find_map(|r| match r {
                Role::Feat(n) => Some(*n),
                _ => None,
            })
            .unwrap_or(1)
    }

    /// Brings a graph-output tensor to `[N, O]` or `[N, T, O]`.
    pub fn canonical_output(&self, y: &ArrayD<f32>) -> ArrayD<f32> {
        canonical(y, &self.output_roles)
    }
}

/// Reorders a tensor with the given axis roles to `[batch, (time,) features]`, dropping
/// size-1 axes.
pub fn canonical(y: &ArrayD<f32>, roles: &[Role]) -> ArrayD<f32> {
    let order = [Role::Batch, Role::Time];
    let mut perm: Vec<usize> = Vec::new();
    for want in order {
        if let Some(i) = roles.iter().position(|r| *r == want) {
            perm.push(i);
        }
    }
    if let Some(i) = roles.iter().position(|r| matches!(r, Role::Feat(_))) {
        perm.push(i);
    }
    let mut rest: Vec<usize> = (0..roles.len()).filter(|i| !perm.contains(i)).collect();
    let keep = perm.len();
    perm.append(&mut rest);
    let t = y.view().permuted_axes(perm);
    let shape: Vec<usize> = t.shape()[..keep].to_vec();
    t.as_standard_layout()
        .into_owned()
        .into_shape_with_order(shape)
        .expect("dropped axes have size 1")
}

fn refuse(node: &str, op: &str, reason: impl Into<String>) -> RecurError {
    RecurError::Unsupported {
        backend: "mcu".into(),
        node: node.into(),
        op: op.into(),
        reason: reason.into(),
    }
}

struct Graph<'a> {
    constants: HashMap<&'a str, &'a TensorProto>,
    producers: HashMap<&'a str, &'a NodeProto>,
    consumers: HashMap<&'a str, Vec<&'a NodeProto>>,
    outputs: Vec<&'a str>,
}

impl<'a> Graph<'a> {
    fn new(g: &'a GraphProto) -> Self {
        let mut constants: HashMap<&str, &TensorProto> =
            g.initializer.iter().map(|t| (t.name.as_str(), t)).collect();
        let mut producers = HashMap::new();
        let mut consumers: HashMap<&str, Vec<&NodeProto>> = HashMap::new();
        for n in &g.node {
            if n.op_type == "Constant" {
                if let (Some(o), Some(t)) = (
                    n.output.first(),
                    n.attribute
                        .iter()
                        .find(|a| a.name == "value")
                        .and_then(|a| a.t.as_ref()),
                ) {
                    constants.insert(o.as_str(), t);
                }
            }
            for o in &n.output {
                producers.insert(o.as_str(), n);
            }
            for i in &n.input {
                consumers.entry(i.as_str()).or_default().push(n);
            }
        }
        Graph {
            constants,
            producers,
            consumers,
            outputs: g.output.iter().map(|o| o.name.as_str()).collect(),
        }
    }

    fn f32(&self, name: &str) -> Option<ArrayD<f32>> {
        self.constants.get(name).and_then(|t| constant_f32(t))
    }

    fn i64(&self, name: &str) -> Option<ArrayD<i64>> {
        self.constants.get(name).and_then(|t| constant_i64(t))
    }

    /// Whether a tensor is used by something other than Shape (or is a graph output).
    fn data_used(&self, name: &str) -> bool {
        !name.is_empty()
            && (self.outputs.contains(&name)
                || self
                    .consumers
                    .get(name)
                    .is_some_and(|c| c.iter().any(|n| n.op_type != "Shape")))
    }

    /// Whether a tensor is known to be all zeros (constant zeros, ConstantOfShape of 0,
    /// Expand or a shape-only op of zeros).
    fn is_zeros(&self, name: &str) -> bool {
        if let Some(a) = self.f32(name) {
            return a.iter().all(|v| *v == 0.0);
        }
        match self.producers.get(name) {
            Some(n) if n.op_type == "ConstantOfShape" => {
                match n.attribute.iter().find(|a| a.name == "value") {
                    None => true,
                    Some(a) => {
                        a.t.as_ref()
                            .and_then(constant_f32)
                            .is_some_and(|t| t.iter().all(|v| *v == 0.0))
                    }
                }
            }
            Some(n)
                if matches!(
                    n.op_type.as_str(),
                    "Expand" | "Reshape" | "Unsqueeze" | "Squeeze" | "Cast" | "Identity"
                ) =>
            {
                n.input.first().is_some_and(|i| self.is_zeros(i))
            }
            _ => false,
        }
    }
}

/// Axes given as an attribute (older opsets) or as a constant second input.
fn axes(node: &NodeProto, display: &str, g: &Graph, rank: usize) -> Result<Option<Vec<usize>>> {
    let raw: Option<Vec<i64>> = match NodeAttrs::new(node, display).ints("axes") {
        Some(a) => Some(a.to_vec()),
        None => match node.input.get(1).filter(|s| !s.is_empty()) {
            Some(name) => Some(
                g.i64(name)
                    .ok_or_else(|| refuse(display, &node.op_type, "axes are not a constant"))?
                    .iter()
                    .copied()
                    .collect(),
            ),
            None => None,
        },
    };
    Ok(raw.map(|v| {
        v.iter()
            .map(|&a| {
                if a < 0 {
                    (a + rank as i64) as usize
                } else {
                    a as usize
                }
            })
            .collect()
    }))
}

/// Traces the model's data path into a chain, or refuses naming the node.
pub fn trace(model: &Model) -> Result<Chain> {
    let graph = model.proto.graph.as_ref().expect("decode_proto checked");
    let g = Graph::new(graph);
    let ir = &model.ir;
    if ir.inputs.len() != 1 {
        let extra = ir.inputs.get(1).map(|i| i.name.clone()).unwrap_or_default();
        return Err(refuse(
            &extra,
            "graph input",
            format!(
                "the mcu path takes one input, the model has {} ({})",
                ir.inputs.len(),
                ir.inputs
                    .iter()
                    .map(|i| i.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    if ir.outputs.len() != 1 {
        return Err(refuse(
            &ir.outputs[1].name,
            "graph output",
            format!(
                "the mcu path gives one output, the model has {}",
                ir.outputs.len()
            ),
        ));
    }
    let input = &ir.inputs[0];
    let tokens = matches!(
        input.elem_type,
        crate::ir::ElemType::I64 | crate::ir::ElemType::I32
    );
    let dims = input.dims.clone().unwrap_or_default();
    let feat = match dims.last() {
        Some(crate::ir::Dim::Fixed(n)) if !tokens => *n,
        _ if tokens => 1,
        _ => {
            return Err(refuse(
                &input.name,
                "graph input",
                "the feature (last) dimension must be fixed",
            ))
        }
    };
    let mut roles: Vec<Role> = if tokens {
        if dims.len() != 2 {
            return Err(refuse(
                &input.name,
                "graph input",
                "token input must be [batch, time]",
            ));
        }
        vec![Role::In0, Role::In1]
    } else {
        if dims.len() != 3 {
            return Err(refuse(
                &input.name,
                "graph input",
                "feature input must be rank 3 ([batch, time, features] or [time, batch, features])",
            ));
        }
        vec![Role::In0, Role::In1, Role::Feat(feat)]
    };
    let mut chain = Chain {
        input_name: input.name.clone(),
        output_name: ir.outputs[0].name.clone(),
        tokens,
        input_dim: feat,
        affine: vec![(1.0, 0.0); feat],
        input_time_first: false,
        stages: vec![],
        output_act: OutputAct::None,
        output_roles: vec![],
    };
    let mut cur = input.name.clone();
    let mut resolved = false;
    let mut dense_fresh = false;
    let mut consumed_by: Option<String> = None;

    for (index, node) in graph.node.iter().enumerate() {
        let display = node_display_name(node, index);
        let op = node.op_type.as_str();
        let slots: Vec<usize> = (0..node.input.len())
            .filter(|&i| node.input[i] == cur)
            .collect();
        if slots.is_empty() || op == "Shape" {
            continue;
        }
        if let Some(prev) = &consumed_by {
            return Err(refuse(
                &display,
                op,
                format!("the data path branches ('{cur}' is also read by '{prev}')"),
            ));
        }
        consumed_by = Some(display.clone());
        if chain.output_act != OutputAct::None {
            return Err(refuse(
                &display,
                op,
                "nothing may follow the output softmax/sigmoid",
            ));
        }
        let bad = |reason: &str| refuse(&display, op, reason);
        let out0 = node.output.first().cloned().unwrap_or_default();
        let const_other = |slot: usize| -> Option<ArrayD<f32>> {
            let other = if slot == 0 { 1 } else { 0 };
            node.input.get(other).and_then(|n| g.f32(n))
        };
        let mut next = out0.clone();
        match op {
            "Identity" | "Dropout" => {}
            "Cast" => {
                if NodeAttrs::new(node, &display).int("to") != Some(1) && !tokens {
                    return Err(bad("only casts to float32 are pass-through"));
                }
            }
            "Sub" | "Add" | "Mul" | "Div" => {
                let slot = slots[0];
                let c = const_other(slot)
                    .ok_or_else(|| bad("element-wise op with a non-constant operand"))?;
                if chain.stages.is_empty() && !tokens {
                    if (op == "Sub" || op == "Div") && slot != 0 {
                        return Err(bad("constant on the left of Sub/Div"));
                    }
                    let per = per_feature(&c, feat).ok_or_else(|| {
                        bad("constant does not broadcast over the feature axis alone")
                    })?;
                    for (k, (a, b)) in chain.affine.iter_mut().enumerate() {
                        let v = per[k];
                        match op {
                            "Sub" => *b -= v,
                            "Add" => *b += v,
                            "Mul" => {
                                *a *= v;
                                *b *= v
                            }
                            _ => {
                                *a /= v;
                                *b /= v
                            }
                        }
                    }
                } else if op == "Add" && dense_fresh {
                    if let Some(Stage::Dense { b, .. }) = chain.stages.last_mut() {
                        let per = per_feature(&c, b.len())
                            .ok_or_else(|| bad("bias does not broadcast over the features"))?;
                        for (bj, v) in b.iter_mut().zip(per) {
                            *bj += v;
                        }
                    }
                } else {
                    return Err(bad(
                        "element-wise arithmetic inside the network is not an mcu layer",
                    ));
                }
            }
            "Transpose" => {
                let perm: Vec<usize> = match NodeAttrs::new(node, &display).ints("perm") {
                    Some(p) => p.iter().map(|&v| v as usize).collect(),
                    None => (0..roles.len()).rev().collect(),
                };
                if perm.len() != roles.len() {
                    return Err(bad("perm does not match the rank"));
                }
                roles = perm.iter().map(|&i| roles[i]).collect();
            }
            "Squeeze" => {
                let ax = axes(node, &display, &g, roles.len())?;
                let keep: Vec<Role> = match ax {
                    Some(ax) => {
                        for &a in &ax {
                            match roles.get(a) {
                                Some(Role::One) | Some(Role::Dir(1)) => {}
                                _ => return Err(bad("squeezes an axis that is not size 1")),
                            }
                        }
                        roles
                            .iter()
                            .enumerate()
                            .filter(|(i, _)| !ax.contains(i))
                            .map(|(_, r)| *r)
                            .collect()
                    }
                    None => roles
                        .iter()
                        .copied()
                        .filter(|r| !matches!(r, Role::One | Role::Dir(1)))
                        .collect(),
                };
                roles = keep;
            }
            "Unsqueeze" => {
                let rank = roles.len();
                let mut ax = axes(node, &display, &g, rank + 1)?
                    .ok_or_else(|| bad("Unsqueeze without axes"))?;
                ax.sort_unstable();
                for a in ax {
                    if a > roles.len() {
                        return Err(bad("axis out of range"));
                    }
                    roles.insert(a, Role::One);
                }
            }
            "Reshape" | "Flatten" => {
                roles = reshape(node, &display, &g, &roles)?;
            }
            "Gather" if slots[0] == 1 => {
                let table = node
                    .input
                    .first()
                    .and_then(|n| g.f32(n))
                    .and_then(|t| t.into_dimensionality::<Ix2>().ok())
                    .ok_or_else(|| bad("gathers from a non-constant table"))?;
                if !tokens || !chain.stages.is_empty() {
                    return Err(bad("an embedding must read the token input directly"));
                }
                let axis = NodeAttrs::new(node, &display).int("axis").unwrap_or(0);
                if axis != 0 {
                    return Err(bad("embedding gather must be on axis 0"));
                }
                roles.push(Role::Feat(table.ncols()));
                chain.stages.push(Stage::Embedding {
                    node: display.clone(),
                    table,
                });
            }
            "Gather" => {
                let axis = NodeAttrs::new(node, &display).int("axis").unwrap_or(0);
                let axis = if axis < 0 {
                    axis + roles.len() as i64
                } else {
                    axis
                } as usize;
                let idx = node
                    .input
                    .get(1)
                    .and_then(|n| g.i64(n))
                    .filter(|a| a.len() == 1 && a.ndim() == 0)
                    .map(|a| a.iter().copied().next().unwrap_or(0))
                    .ok_or_else(|| bad("index is not a constant scalar"))?;
                match (roles.get(axis), idx) {
                    (Some(Role::Time), -1) => {
                        match chain.stages.last_mut() {
                            Some(Stage::Recurrent { reduce, .. }) if *reduce == Reduce::Sequence => {
                                *reduce = Reduce::Last
                            }
                            _ => return Err(bad("takes the last step of something other than a recurrent layer's sequence")),
                        }
                        roles.remove(axis);
                    }
                    (Some(Role::One), 0) | (Some(Role::Dir(1)), 0) => {
                        roles.remove(axis);
                    }
                    _ => {
                        return Err(bad(
                            "only the last time step (index -1) or a size-1 axis can be gathered",
                        ))
                    }
                }
            }
            "LSTM" | "GRU" | "RNN" => {
                if slots != [0] {
                    return Err(bad("the data path enters a recurrent node other than as X"));
                }
                let layer = match &ir.layers[index].kind {
                    LayerKind::Recurrent(r) => r.as_ref().clone(),
                    _ => return Err(bad("not lifted as a recurrent layer")),
                };
                check_recurrent(&layer, &display, op, &g)?;
                // Input roles must be [time, batch, feat] (layout 0) or [batch, time, feat].
                let (t_ax, b_ax) = match layer.layout {
                    crate::ir::Layout::SequenceFirst => (0, 1),
                    crate::ir::Layout::BatchFirst => (1, 0),
                };
                if roles.len() != 3 || !matches!(roles[2], Role::Feat(_)) {
                    return Err(bad("input is not [time, batch, features]"));
                }
                if !resolved {
                    let (rt, rb) = (roles[t_ax], roles[b_ax]);
                    if !matches!((rt, rb), (Role::In0, Role::In1) | (Role::In1, Role::In0)) {
                        return Err(bad("cannot tell the time axis of the input"));
                    }
                    chain.input_time_first = rt == Role::In0;
                    resolved = true;
                } else if roles[t_ax] != Role::Time || roles[b_ax] != Role::Batch {
                    return Err(bad("input axes are not time and batch as the layout needs"));
                }
                if let Some(Stage::Recurrent { reduce, .. }) = chain.stages.last() {
                    if *reduce != Reduce::Sequence {
                        return Err(bad("follows a layer that already reduced the time axis"));
                    }
                }
                let d = layer.direction.count();
                let h = layer.hidden_size;
                let y_used = g.data_used(&node.output[0]);
                let yh_used = node.output.get(1).is_some_and(|n| g.data_used(n));
                let yc_used = node.output.get(2).is_some_and(|n| g.data_used(n));
                if yc_used {
                    return Err(bad("the cell state output Y_c is not an mcu output"));
                }
                let (reduce, out, new_roles) = match (y_used, yh_used) {
                    (true, false) => (
                        Reduce::Sequence,
                        node.output[0].clone(),
                        match layer.layout {
                            crate::ir::Layout::SequenceFirst => {
                                vec![Role::Time, Role::Dir(d), Role::Batch, Role::Feat(h)]
                            }
                            crate::ir::Layout::BatchFirst => {
                                vec![Role::Batch, Role::Time, Role::Dir(d), Role::Feat(h)]
                            }
                        },
                    ),
                    (false, true) => (
                        Reduce::Final,
                        node.output[1].clone(),
                        match layer.layout {
                            crate::ir::Layout::SequenceFirst => {
                                vec![Role::Dir(d), Role::Batch, Role::Feat(h)]
                            }
                            crate::ir::Layout::BatchFirst => {
                                vec![Role::Batch, Role::Dir(d), Role::Feat(h)]
                            }
                        },
                    ),
                    _ => {
                        return Err(bad(
                            "both Y and Y_h (or neither) feed the rest of the model",
                        ))
                    }
                };
                chain.stages.push(Stage::Recurrent {
                    node: display.clone(),
                    layer: Box::new(layer),
                    reduce,
                });
                roles = new_roles;
                next = out;
            }
            "Gemm" | "MatMul" => {
                if slots != [0] {
                    return Err(bad("the data must be the first operand"));
                }
                let last = roles.len().saturating_sub(1);
                let fin = match roles.get(last) {
                    Some(Role::Feat(n)) => *n,
                    _ => return Err(bad("the product is not over the feature axis")),
                };
                if roles[..last]
                    .iter()
                    .any(|r| !matches!(r, Role::Batch | Role::Time | Role::One))
                {
                    return Err(bad(
                        "features are not on their own axis (merge directions first)",
                    ));
                }
                let bmat = node
                    .input
                    .get(1)
                    .and_then(|n| g.f32(n))
                    .and_then(|t| t.into_dimensionality::<Ix2>().ok())
                    .ok_or_else(|| bad("weights are not a constant matrix"))?;
                let (w, b) = if op == "Gemm" {
                    let at = NodeAttrs::new(node, &display);
                    if at.int("transA").unwrap_or(0) != 0 {
                        return Err(bad("transA=1"));
                    }
                    let alpha = at.float("alpha").unwrap_or(1.0);
                    let beta = at.float("beta").unwrap_or(1.0);
                    let w = if at.int("transB").unwrap_or(0) == 1 {
                        bmat
                    } else {
                        bmat.t().to_owned()
                    } * alpha;
                    let mut b = Array1::<f32>::zeros(w.nrows());
                    if let Some(c) = node.input.get(2).filter(|s| !s.is_empty()) {
                        let c = g.f32(c).ok_or_else(|| bad("bias C is not a constant"))?;
                        let per = per_feature(&c, w.nrows())
                            .ok_or_else(|| bad("bias C does not broadcast over the outputs"))?;
                        b = Array1::from(per) * beta;
                    }
                    (w, b)
                } else {
                    let w = bmat.t().to_owned();
                    let n = w.nrows();
                    (w, Array1::zeros(n))
                };
                if w.ncols() != fin {
                    return Err(bad("weight rows do not match the feature count"));
                }
                roles[last] = Role::Feat(w.nrows());
                chain.stages.push(Stage::Dense {
                    node: display.clone(),
                    w,
                    b,
                });
            }
            "Softmax" | "Sigmoid" => {
                if op == "Softmax" {
                    let ax = NodeAttrs::new(node, &display).int("axis").unwrap_or(-1);
                    let ax = if ax < 0 { ax + roles.len() as i64 } else { ax } as usize;
                    let tail_ones = roles[ax + 1..].iter().all(|r| *r == Role::One);
                    if !matches!(roles.get(ax), Some(Role::Feat(_))) || !tail_ones {
                        return Err(bad("softmax is not over the features"));
                    }
                    chain.output_act = OutputAct::Softmax;
                } else {
                    chain.output_act = OutputAct::Sigmoid;
                }
            }
            _ => return Err(bad("this op on the data path has no mcu equivalent")),
        }
        dense_fresh = matches!(op, "Gemm" | "MatMul") || (dense_fresh && op == "Add");
        if next != cur {
            consumed_by = None;
        }
        cur = next;
    }
    if cur != chain.output_name {
        // tf2onnx's Loop bodies read the sequence from the outer scope, off the explicit path
        // (recognised Keras loops are lifted to recurrent layers; the chain does not follow
        // their outer step input yet).
        if let Some(l) = ir.layers.iter().find(|l| l.op == "Loop") {
            return Err(refuse(
                &l.node,
                &l.op,
                "a Keras layer exported as an ONNX Loop is not traced onto the mcu path yet",
            ));
        }
        return Err(refuse(
            &chain.output_name,
            "graph output",
            "the graph output is not the end of the input's data path",
        ));
    }
    if !chain
        .stages
        .iter()
        .any(|s| matches!(s, Stage::Recurrent { .. }))
    {
        return Err(refuse(
            &chain.output_name,
            "graph output",
            "no recurrent layer on the data path",
        ));
    }
    let ok = roles.iter().all(|r| {
        matches!(
            r,
            Role::Batch | Role::Time | Role::Feat(_) | Role::One | Role::Dir(1)
        )
    }) && roles.contains(&Role::Batch)
        && roles.iter().filter(|r| matches!(r, Role::Feat(_))).count() == 1;
    if !ok {
        return Err(refuse(
            &chain.output_name,
            "graph output",
            format!("output axes {roles:?} are not [batch, (time,) features]"),
        ));
    }
    chain.output_roles = roles
        .into_iter()
        .map(|r| if r == Role::Dir(1) { Role::One } else { r })
        .collect();
    Ok(chain)
}

/// A constant that broadcasts over the last axis only, as `n` values.
fn per_feature(c: &ArrayD<f32>, n: usize) -> Option<Vec<f32>> {
    if c.len() == 1 {
        return Some(vec![*c.iter().next()?; n]);
    }
    let last = *c.shape().last()?;
    if last != n || c.len() != n {
        return None;
    }
    Some(c.iter().copied().collect())
}

fn reshape(node: &NodeProto, display: &str, g: &Graph, roles: &[Role]) -> Result<Vec<Role>> {
    let bad = |r: &str| refuse(display, &node.op_type, r);
    let squeezed: Vec<Role> = roles
        .iter()
        .copied()
        .filter(|r| !matches!(r, Role::One | Role::Dir(1)))
        .collect();
    let mut merged: Vec<Role> = Vec::new();
    for r in &squeezed {
        match (merged.last().copied(), r) {
            (Some(Role::Dir(d)), Role::Feat(h)) => {
                merged.pop();
                merged.push(Role::Feat(d * h));
            }
            _ => merged.push(*r),
        }
    }
    if node.op_type == "Flatten" {
        return if merged.len() == 2 && merged[0] == Role::Batch {
            Ok(merged)
        } else {
            Err(bad("Flatten is only a pass-through for [batch, features]"))
        };
    }
    let shape: Vec<i64> = node
        .input
        .get(1)
        .and_then(|n| g.i64(n))
        .map(|a| a.iter().copied().collect())
        .ok_or_else(|| bad("target shape is not a constant"))?;
    for cand in [&squeezed, &merged] {
        if let Some(out) = match_shape(cand, &shape) {
            return Ok(out);
        }
    }
    Err(bad(
        "the reshape is not a squeeze or a merge of directions into features",
    ))
}

/// Lays `cand` over a constant target shape, size-1 entries of the target becoming `One`
/// axes; `None` when the shape does not keep every role.
fn match_shape(cand: &[Role], shape: &[i64]) -> Option<Vec<Role>> {
    let mut out = Vec::new();
    let mut k = 0;
    for &s in shape {
        if let Some(&role) = cand.get(k) {
            let compatible = match role {
                Role::Feat(n) => s == n as i64 || s == -1,
                _ => s != 1,
            };
            if compatible {
                out.push(role);
                k += 1;
                continue;
            }
        }
        if s != 1 {
            return None;
        }
        out.push(Role::One);
    }
    (k == cand.len()).then_some(out)
}

fn check_recurrent(l: &RecurrentLayer, node: &str, op: &str, g: &Graph) -> Result<()> {
    let bad = |r: String| refuse(node, op, r);
    if l.weights.is_none() {
        return Err(bad("W and R are not constants".into()));
    }
    if l.sequence_lens != SequenceLens::Absent {
        return Err(bad(
            "sequence_lens: the mcu path runs every sequence to its full length".into(),
        ));
    }
    for (what, src, slot) in [
        ("initial_h", &l.initial_h, 5),
        ("initial_c", &l.initial_c, 6),
    ] {
        match src {
            Source::Absent => {}
            _ => {
                let name = &l.input_names[slot];
                if !g.is_zeros(name) {
                    return Err(bad(format!(
                        "{what} is not known to be zero (the mcu path starts from a zero state)"
                    )));
                }
            }
        }
    }
    for acts in &l.activations {
        let kinds: Vec<ActivationKind> = acts.iter().map(|a| a.kind).collect();
        let ok = match l.cell {
            Cell::Lstm { .. } => {
                kinds
                    == [
                        ActivationKind::Sigmoid,
                        ActivationKind::Tanh,
                        ActivationKind::Tanh,
                    ]
            }
            Cell::Gru { .. } => kinds == [ActivationKind::Sigmoid, ActivationKind::Tanh],
            Cell::Rnn => kinds == [ActivationKind::Tanh] || kinds == [ActivationKind::Relu],
        };
        if !ok {
            return Err(bad(format!(
                "activations {:?}: the mcu kernel has sigmoid/tanh cells and tanh or relu RNNs",
                kinds
            )));
        }
    }
    if l.activations.len() == 2 && l.activations[0][0].kind != l.activations[1][0].kind {
        return Err(bad("directions with different activations".into()));
    }
    if l.input_size.unwrap_or(0) > 1024 || l.hidden_size > 1024 {
        return Err(bad("wider than 1024".into()));
    }
    Ok(())
}
