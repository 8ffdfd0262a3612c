//! recur's own executor for the graphs recurrent models usually are: recurrent layers with
//! constant weights, the shape glue around them and a dense head. It runs such a graph
//! directly on recur's kernels, without tract's per-run machinery, which dominates when a
//! run is one streamed step (a few microseconds of arithmetic).
//!
//! A graph with any op or attribute outside the small set below is not compiled (the tract
//! backend then runs it); the fixtures test checks both executors against ONNX Runtime.

use std::collections::HashMap;
use std::sync::Arc;

use ndarray::{concatenate, Array2, ArrayD, ArrayView2, Axis, Dimension, Ix2, Ix3, IxDyn, Slice};
use tract_onnx::pb::{GraphProto, NodeProto, TensorProto};

use crate::ir::{ActivationKind, LayerKind, Layout, RecurrentLayer, RecurrentModel};
use crate::kernels::{run_layer, run_layer_batch_first, LayerSpec, LayerWeights};
use crate::onnx::{constant_f32, constant_i64, NodeAttrs};
use crate::tensor::{CheckedInputs, HostTensor};

mod device;
mod step;

pub use device::{plan_placements, DevicePlan, Placement};

/// A value flowing through the graph.
#[derive(Debug, Clone)]
enum Value {
    F32(ArrayD<f32>),
    I64(ArrayD<i64>),
}

impl Value {
    /// A graph input as the executor holds it (int32 widened to int64).
    fn from_host(tensor: &HostTensor) -> Value {
        match tensor {
            HostTensor::F32(a) => Value::F32(a.clone()),
            HostTensor::I64(a) => Value::I64(a.clone()),
            HostTensor::I32(a) => Value::I64(a.mapv(i64::from)),
        }
    }

    /// The value's shape, read where it lies.
    fn shape(&self) -> &[usize] {
        match self {
            Value::F32(a) => a.shape(),
            Value::I64(a) => a.shape(),
        }
    }

    /// A graph output as it leaves, in standard layout (a Transpose inside only sets
    /// strides).
    fn into_host(self) -> HostTensor {
        match self {
            Value::F32(a) => HostTensor::F32(standard_layout(a)),
            Value::I64(a) => HostTensor::I64(standard_layout(a)),
        }
    }
}

/// One step of the compiled graph.
#[derive(Debug)]
enum Op {
    Recurrent {
        /// Index of the node in the graph (and of its layer in the IR).
        node: usize,
        spec: LayerSpec,
        weights: Arc<LayerWeights>,
        batch_first: bool,
        /// Value slots of X, sequence_lens, initial_h, initial_c.
        x: usize,
        lens: Option<usize>,
        h0: Option<usize>,
        c0: Option<usize>,
        /// Output slots of Y, Y_h, Y_c.
        outs: [Option<usize>; 3],
    },
    Dense {
        x: usize,
        /// `[in, out]`.
        w: Array2<f32>,
        /// The same, packed for one-row products (a streamed step).
        packed: crate::kernels::linalg::Packed,
        bias: Option<ArrayD<f32>>,
        out: usize,
    },
    Binary {
        kind: char,
        a: usize,
        b: usize,
        out: usize,
    },
    Unary {
        kind: ActivationKind,
        x: usize,
        out: usize,
    },
    Softmax {
        axis: i64,
        x: usize,
        out: usize,
    },
    Reshape {
        x: usize,
        /// ONNX Reshape target (0 copies, -1 infers), or None for Squeeze/Unsqueeze/Flatten
        /// computed from `rule`.
        rule: ShapeRule,
        out: usize,
    },
    Transpose {
        x: usize,
        perm: Vec<usize>,
        out: usize,
    },
    Slice {
        x: usize,
        /// (axis, start, end, step) with ONNX's negative and clamped values.
        ranges: Vec<(i64, i64, i64, i64)>,
        out: usize,
    },
    Gather {
        data: usize,
        indices: usize,
        axis: i64,
        out: usize,
    },
    Concat {
        inputs: Vec<usize>,
        axis: i64,
        out: usize,
    },
    Shape {
        x: usize,
        out: usize,
    },
    ConstantOfShape {
        shape: usize,
        value: Value,
        out: usize,
    },
}

#[derive(Debug)]
enum ShapeRule {
    Reshape(Vec<i64>),
    Squeeze(Option<Vec<i64>>),
    Unsqueeze(Vec<i64>),
    Flatten(i64),
}

/// A graph compiled for recur's executor.
#[derive(Debug)]
pub struct NativePlan {
    /// Initial contents of the value slots (constants), cloned per run.
    constants: Vec<(usize, Value)>,
    slots: usize,
    inputs: Vec<(String, usize)>,
    outputs: Vec<(String, usize)>,
    ops: Vec<Op>,
    /// For each op, the slots it is the last to read (graph outputs excepted): the general
    /// executor lets the op take those values instead of copying them, and drops the rest
    /// once the op has run.
    last_reads: Vec<Vec<usize>>,
    /// The step path's program for the last step-shaped inputs it was built for. A run on
    /// other shapes (a whole sequence between steps, say) leaves it in place.
    step: Option<step::StepProgram>,
    /// Input shapes the step path was refused for, most recent last (at most
    /// [`REFUSED_SHAPES_KEPT`]), so that they go straight to the general executor.
    refused: Vec<Vec<Vec<usize>>>,
    /// Runs that took the step path.
    step_runs: usize,
    /// Step programs built.
    step_builds: usize,
}

/// How many refused input shapes a plan remembers.
const REFUSED_SHAPES_KEPT: usize = 8;

/// Why a graph is left to tract (for logs).
type Why = String;

struct Compiler<'a> {
    slots: HashMap<&'a str, usize>,
    constants: Vec<(usize, Value)>,
    const_values: HashMap<&'a str, &'a TensorProto>,
}

impl<'a> Compiler<'a> {
    fn slot(&mut self, name: &'a str) -> usize {
        let n = self.slots.len();
        *self.slots.entry(name).or_insert(n)
    }

    fn existing(&self, name: &str) -> Result<usize, Why> {
        self.slots
            .get(name)
            .copied()
            .ok_or_else(|| format!("value '{name}' is not computed before use"))
    }

    fn const_f32(&self, name: &str) -> Option<ArrayD<f32>> {
        self.const_values.get(name).and_then(|t| constant_f32(t))
    }

    fn const_ints(&self, name: &str) -> Option<Vec<i64>> {
        self.const_values
            .get(name)
            .and_then(|t| constant_i64(t))
            .map(|a| a.iter().copied().collect())
    }
}

impl NativePlan {
    /// Compiles the model's graph, or says why recur's executor does not take it.
    pub fn compile(graph: &GraphProto, ir: &RecurrentModel, opset: i64) -> Result<Self, Why> {
        let mut c = Compiler {
            slots: HashMap::new(),
            constants: vec![],
            const_values: HashMap::new(),
        };
        for t in &graph.initializer {
            c.const_values.insert(t.name.as_str(), t);
        }
        for n in &graph.node {
            if n.op_type == "Constant" {
                let t = n
                    .attribute
                    .iter()
                    .find(|a| a.name == "value")
                    .and_then(|a| a.t.as_ref())
                    .ok_or("Constant without a tensor value")?;
                c.const_values.insert(n.output[0].as_str(), t);
            }
        }
        let mut inputs = vec![];
        for i in &ir.inputs {
            let s = c.slot(i.name.as_str());
            inputs.push((i.name.clone(), s));
        }
        if ir.layers.len() != graph.node.len() {
            return Err("the IR does not list every node".into());
        }
        let recurrent: Vec<Option<&RecurrentLayer>> = ir
            .layers
            .iter()
            .map(|l| match &l.kind {
                LayerKind::Recurrent(r) if r.keras_loop.is_none() => Some(r.as_ref()),
                _ => None,
            })
            .collect();
        // Only the nodes the outputs depend on (a streamable rewrite, say, leaves the nodes
        // that built the zero initial states without consumers).
        let mut needed: std::collections::HashSet<&str> =
            graph.output.iter().map(|o| o.name.as_str()).collect();
        let mut live = vec![false; graph.node.len()];
        for (index, n) in graph.node.iter().enumerate().rev() {
            if n.output.iter().any(|o| needed.contains(o.as_str())) {
                live[index] = true;
                needed.extend(n.input.iter().map(String::as_str));
            }
        }
        let mut ops = vec![];
        for (index, n) in graph.node.iter().enumerate() {
            if n.op_type == "Constant" || !live[index] {
                continue;
            }
            let display = crate::onnx::node_display_name(n, index);
            let op = compile_node(&mut c, n, index, &display, opset, recurrent[index])
                .map_err(|why| format!("node '{display}' ({}): {why}", n.op_type))?;
            ops.push(op);
        }
        let mut outputs = vec![];
        for o in &graph.output {
            outputs.push((o.name.clone(), c.existing(&o.name)?));
        }
        let last_reads = last_reads(&ops, &outputs);
        Ok(NativePlan {
            slots: c.slots.len(),
            constants: c.constants,
            inputs,
            outputs,
            ops,
            last_reads,
            step: None,
            refused: Vec::new(),
            step_runs: 0,
            step_builds: 0,
        })
    }

    /// Runs the graph on checked inputs: on the step path when they are one streamed step
    /// within its reach (the `step` module), else on the general executor.
    pub fn run(&mut self, given: &CheckedInputs) -> Result<Vec<(String, HostTensor)>, String> {
        let ordered: Vec<(&str, &HostTensor)> =
            given.tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
        let mut ran = self.execute(&ordered)?;
        let outputs = (0..self.outputs.len())
            .map(|k| {
                (
                    self.outputs[k].0.clone(),
                    self.output(&mut ran, k).into_tensor(),
                )
            })
            .collect();
        Ok(outputs)
    }

    /// Runs one chunk of a stream with its carried state held by the caller (see
    /// [`super::Carried`]): the state is read where it lies and the new state written over
    /// it, so a streamed step copies a few hundred floats and allocates only the outputs it
    /// returns. On an error the state is left as it was.
    pub fn run_carried(
        &mut self,
        user: &CheckedInputs,
        carried: super::Carried<'_>,
    ) -> Result<Vec<(String, HostTensor)>, String> {
        let super::Carried {
            wires,
            values,
            user_outputs,
        } = carried;
        let fed = !values.is_empty();
        if fed && values.len() != wires.len() {
            return Err(format!(
                "{} carried values for {} pieces of state",
                values.len(),
                wires.len()
            ));
        }
        // A carry model declares the user's inputs first, then the state in wire order: each
        // input is looked for where it should be, then by name.
        let n_user = user.tensors.len();
        let state_in = |w: usize| {
            let wire = wires.get(w).filter(|_| fed)?;
            Some((wire.input.as_str(), &values[w]))
        };
        let at = |k: usize| match k.checked_sub(n_user) {
            None => user.tensors.get(k).map(as_pair),
            Some(w) => state_in(w),
        };
        let mut ordered = Vec::with_capacity(self.inputs.len());
        for (k, (name, _)) in self.inputs.iter().enumerate() {
            let found = at(k)
                .filter(|(n, _)| n == name)
                .or_else(|| {
                    (0..n_user + wires.len())
                        .filter_map(at)
                        .find(|(n, _)| n == name)
                })
                .ok_or_else(|| format!("graph input '{name}' is neither given nor carried"))?;
            ordered.push(found);
        }
        let mut ran = self.execute(&ordered)?;
        // Graph outputs: the user's first, then the state in wire order (an output that is
        // both appears once); each is looked for where it should be, then anywhere.
        let index_of = |guess: usize, name: &str| {
            match self.outputs.get(guess) {
                Some((n, _)) if n == name => Some(guess),
                _ => self.outputs.iter().position(|(n, _)| n == name),
            }
            .ok_or_else(|| format!("streaming: output '{name}' missing"))
        };
        let mut user_out = Vec::with_capacity(user_outputs.len());
        for (k, name) in user_outputs.iter().enumerate() {
            let output = self.output(&mut ran, index_of(k, name)?);
            // An output that is also state is read again below.
            let tensor = if wires.iter().any(|w| w.output == *name) {
                output.to_tensor()
            } else {
                output.into_tensor()
            };
            user_out.push((name.clone(), tensor));
        }
        let mut state_out = Vec::with_capacity(wires.len());
        for (k, wire) in wires.iter().enumerate() {
            state_out.push(index_of(user_outputs.len() + k, &wire.output)?);
        }
        if fed {
            for (value, k) in values.iter_mut().zip(state_out) {
                self.output(&mut ran, k).store(value);
            }
        } else {
            *values = state_out
                .into_iter()
                .map(|k| self.output(&mut ran, k).into_tensor())
                .collect();
        }
        Ok(user_out)
    }

    /// Runs the graph on the plan's inputs, in order: on the step path when they are one
    /// streamed step within its reach, else on the general executor. The outputs are then
    /// read with [`Self::output`].
    fn execute(&mut self, given: &[(&str, &HostTensor)]) -> Result<Ran, String> {
        if given.len() != self.inputs.len() {
            return Err(format!(
                "{} inputs given, the graph has {}",
                given.len(),
                self.inputs.len()
            ));
        }
        // The step path keeps float buffers only: other inputs never fit a program, so none
        // is built (or rebuilt on every call) for them.
        let floats = given.iter().all(|(_, t)| matches!(t, HostTensor::F32(_)));
        if !floats {
            return self.run_general(given).map(Ran::General);
        }
        let fits = self.step.as_ref().is_some_and(|p| p.fits(given));
        if !fits && !self.refused.iter().any(|key| same_shapes(key, given)) {
            let key: Vec<Vec<usize>> = given.iter().map(|(_, t)| t.shape().to_vec()).collect();
            match step::StepProgram::build(self, key.clone()) {
                Ok(program) => {
                    self.step_builds += 1;
                    self.step = Some(program);
                }
                Err(why) => {
                    tracing::debug!("no step path for input shapes {key:?}: {why}");
                    self.refuse(key);
                }
            }
        }
        if let Some(program) = &mut self.step {
            if fits || program.fits(given) {
                match program.execute(&self.ops, given) {
                    Ok(()) => {
                        self.step_runs += 1;
                        return Ok(Ran::Step);
                    }
                    Err(why) => {
                        tracing::debug!("the step path gives way to the general executor: {why}");
                        let key = program.key().to_vec();
                        self.step = None;
                        self.refuse(key);
                    }
                }
            }
        }
        self.run_general(given).map(Ran::General)
    }

    /// Graph output `k` (graph order) of the run that gave `ran`: a step program's buffer,
    /// or the general executor's value.
    fn output<'a>(&'a self, ran: &'a mut Ran, k: usize) -> Produced<'a> {
        match ran {
            Ran::Step => {
                let program = self.step.as_ref().expect("a step run keeps its program");
                let (data, shape) = program.output(k);
                Produced::Buffer { data, shape }
            }
            Ran::General(values) => Produced::Owned(&mut values[k]),
        }
    }

    /// Remembers input shapes the step path cannot take, forgetting the oldest past
    /// [`REFUSED_SHAPES_KEPT`].
    fn refuse(&mut self, key: Vec<Vec<usize>>) {
        if self.refused.len() == REFUSED_SHAPES_KEPT {
            self.refused.remove(0);
        }
        self.refused.push(key);
    }

    /// How many runs took the step path (for tests and logs).
    pub fn step_runs(&self) -> usize {
        self.step_runs
    }

    /// How many step programs were built (for tests: a run on other shapes between steps
    /// must not cost a rebuild).
    pub fn step_builds(&self) -> usize {
        self.step_builds
    }

    /// Runs the graph on the general executor (every op, any shapes).
    /// Outputs come in graph order; one that is also another output is copied.
    fn run_general(&self, given: &[(&str, &HostTensor)]) -> Result<Vec<HostTensor>, String> {
        let mut values: Vec<Option<Value>> = vec![None; self.slots];
        for (slot, v) in &self.constants {
            values[*slot] = Some(v.clone());
        }
        for ((name, slot), (given_name, tensor)) in self.inputs.iter().zip(given) {
            debug_assert_eq!(name, given_name);
            values[*slot] = Some(Value::from_host(tensor));
        }
        for (op, dying) in self.ops.iter().zip(&self.last_reads) {
            eval(op, &mut values, dying)?;
            for &slot in dying {
                values[slot] = None;
            }
        }
        self.outputs
            .iter()
            .enumerate()
            .map(|(k, _)| {
                let v = take_output(&mut values, &self.outputs, k).ok_or("output not computed")?;
                Ok(v.into_host())
            })
            .collect()
    }
}

/// For each of `ops` (in order), the slots it reads for the last time that are not graph
/// outputs.
fn last_reads(ops: &[Op], outputs: &[(String, usize)]) -> Vec<Vec<usize>> {
    let mut last_reader = std::collections::HashMap::new();
    for (k, op) in ops.iter().enumerate() {
        for slot in reads(op) {
            last_reader.insert(slot, k);
        }
    }
    let mut dying = vec![Vec::new(); ops.len()];
    for (slot, k) in last_reader {
        if !outputs.iter().any(|(_, s)| *s == slot) {
            dying[k].push(slot);
        }
    }
    dying.iter_mut().for_each(|slots| slots.sort_unstable());
    dying
}

/// Graph output `k`'s value, taken from `values`, or copied when a later output is the same
/// value.
fn take_output(
    values: &mut [Option<Value>],
    outputs: &[(String, usize)],
    k: usize,
) -> Option<Value> {
    let slot = outputs[k].1;
    if outputs[k + 1..].iter().any(|(_, s)| *s == slot) {
        values[slot].clone()
    } else {
        values[slot].take()
    }
}

/// The element function of a Relu, Sigmoid or Tanh node (the general executor and the step
/// path both apply this one).
pub(super) fn unary_fn(kind: ActivationKind) -> fn(f32) -> f32 {
    match kind {
        ActivationKind::Relu => |x| x.max(0.0),
        ActivationKind::Sigmoid => |x| 1.0 / (1.0 + (-x).exp()),
        _ => f32::tanh,
    }
}

/// `a` in standard layout, copied only when it is not.
fn standard_layout<T: Clone>(a: ArrayD<T>) -> ArrayD<T> {
    if a.is_standard_layout() {
        a
    } else {
        a.as_standard_layout().into_owned()
    }
}

/// A named tensor, borrowed.
fn as_pair((name, tensor): &(String, HostTensor)) -> (&str, &HostTensor) {
    (name, tensor)
}

/// Whether `given` has exactly these shapes.
pub(super) fn same_shapes(shapes: &[Vec<usize>], given: &[(&str, &HostTensor)]) -> bool {
    shapes.len() == given.len()
        && shapes
            .iter()
            .zip(given)
            .all(|(s, (_, t))| s.as_slice() == t.shape())
}

/// Where a run's outputs are read from.
enum Ran {
    /// The step program's buffers.
    Step,
    /// The general executor's values, one per graph output.
    General(Vec<HostTensor>),
}

/// One output of a run, as the run holds it.
enum Produced<'a> {
    /// A step program's buffer (float) and the output's shape.
    Buffer { data: &'a [f32], shape: &'a IxDyn },
    /// A value the general executor made, moved out when read last.
    Owned(&'a mut HostTensor),
}

impl Produced<'_> {
    /// The output as a tensor of its own; a general executor's value is moved out (its last
    /// reading).
    fn into_tensor(self) -> HostTensor {
        match self {
            Produced::Owned(t) => t.take(),
            copied => copied.to_tensor(),
        }
    }

    /// A copy of the output, leaving it in place (an output both returned and carried is
    /// read twice).
    fn to_tensor(&self) -> HostTensor {
        match self {
            Produced::Buffer { data, shape } => HostTensor::F32(
                ArrayD::from_shape_vec((*shape).clone(), data.to_vec())
                    .expect("a step buffer has its shape's size"),
            ),
            Produced::Owned(t) => (*t).clone(),
        }
    }

    /// Writes the output over `into`: in place when `into` is a float tensor of its shape.
    fn store(self, into: &mut HostTensor) {
        if let (Produced::Buffer { data, shape }, HostTensor::F32(a)) = (&self, &mut *into) {
            if a.shape() == shape.slice() {
                if let Some(slot) = a.as_slice_mut() {
                    slot.copy_from_slice(data);
                    return;
                }
            }
        }
        *into = self.into_tensor();
    }
}

fn compile_node<'a>(
    c: &mut Compiler<'a>,
    n: &'a NodeProto,
    index: usize,
    display: &str,
    opset: i64,
    recurrent: Option<&RecurrentLayer>,
) -> Result<Op, Why> {
    let attrs = NodeAttrs::new(n, display);
    let present = |i: usize| n.input.get(i).filter(|s| !s.is_empty()).map(String::as_str);
    // An operand: a computed value, or a constant placed in a slot.
    let operand = |c: &mut Compiler<'a>, name: &'a str| -> Result<usize, Why> {
        if let Some(s) = c.slots.get(name) {
            return Ok(*s);
        }
        let t = c
            .const_values
            .get(name)
            .copied()
            .ok_or_else(|| format!("input '{name}' is neither computed nor constant"))?;
        let v = match constant_f32(t) {
            Some(a) => Value::F32(a),
            None => Value::I64(constant_i64(t).ok_or("a constant of an unsupported type")?),
        };
        let s = c.slot(name);
        c.constants.push((s, v));
        Ok(s)
    };
    let one_out = |c: &mut Compiler<'a>| -> Result<usize, Why> {
        if n.output.len() != 1 {
            return Err("expected one output".into());
        }
        Ok(c.slot(n.output[0].as_str()))
    };
    Ok(match n.op_type.as_str() {
        "LSTM" | "GRU" | "RNN" => {
            let r = recurrent.ok_or("not lifted")?;
            let w = r.weights.as_ref().ok_or("weights are not constant")?;
            let spec = LayerSpec::of(r);
            let weights = LayerWeights::from_ir(&spec, w)?;
            let x = operand(c, present(0).ok_or("no X")?)?;
            let lens = present(4).map(|s| operand(c, s)).transpose()?;
            let h0 = present(5).map(|s| operand(c, s)).transpose()?;
            let c0 = present(6).map(|s| operand(c, s)).transpose()?;
            let mut outs = [None; 3];
            for (k, o) in n.output.iter().enumerate().take(3) {
                if !o.is_empty() {
                    outs[k] = Some(c.slot(o.as_str()));
                }
            }
            Op::Recurrent {
                node: index,
                spec,
                weights: Arc::new(weights),
                batch_first: r.layout == Layout::BatchFirst,
                x,
                lens,
                h0,
                c0,
                outs,
            }
        }
        "Gemm" => {
            let (alpha, beta) = (
                attrs.float("alpha").unwrap_or(1.0),
                attrs.float("beta").unwrap_or(1.0),
            );
            if attrs.int("transA").unwrap_or(0) != 0 || alpha != 1.0 || beta != 1.0 {
                return Err("transA, alpha or beta other than the defaults".into());
            }
            let w = c
                .const_f32(present(1).ok_or("no B")?)
                .ok_or("B is not constant")?;
            let w = w.into_dimensionality::<Ix2>().map_err(|e| e.to_string())?;
            let w = if attrs.int("transB").unwrap_or(0) == 1 {
                w.t().to_owned()
            } else {
                w
            };
            let bias = present(2)
                .map(|b| c.const_f32(b).ok_or("C is not constant"))
                .transpose()?;
            let x = operand(c, present(0).ok_or("no A")?)?;
            Op::Dense {
                x,
                packed: crate::kernels::linalg::Packed::new(w.view()),
                w,
                bias,
                out: one_out(c)?,
            }
        }
        "MatMul" => {
            let w = c
                .const_f32(present(1).ok_or("no B")?)
                .ok_or("B is not constant")?;
            let w = w
                .into_dimensionality::<Ix2>()
                .map_err(|_| "B is not a matrix")?;
            let x = operand(c, present(0).ok_or("no A")?)?;
            Op::Dense {
                x,
                packed: crate::kernels::linalg::Packed::new(w.view()),
                w,
                bias: None,
                out: one_out(c)?,
            }
        }
        "Add" | "Sub" | "Mul" | "Div" => {
            let a = operand(c, present(0).ok_or("no A")?)?;
            let b = operand(c, present(1).ok_or("no B")?)?;
            let kind = match n.op_type.as_str() {
                "Add" => '+',
                "Sub" => '-',
                "Mul" => '*',
                _ => '/',
            };
            Op::Binary {
                kind,
                a,
                b,
                out: one_out(c)?,
            }
        }
        "Relu" | "Sigmoid" | "Tanh" => {
            let kind = ActivationKind::parse(&n.op_type).expect("known names");
            let x = operand(c, present(0).ok_or("no input")?)?;
            Op::Unary {
                kind,
                x,
                out: one_out(c)?,
            }
        }
        "Softmax" => {
            let axis = attrs
                .int("axis")
                .unwrap_or(if opset >= 13 { -1 } else { 1 });
            if opset < 13 {
                return Err("Softmax before opset 13 flattens its input".into());
            }
            let x = operand(c, present(0).ok_or("no input")?)?;
            Op::Softmax {
                axis,
                x,
                out: one_out(c)?,
            }
        }
        "Identity" | "Dropout" => {
            let x = operand(c, present(0).ok_or("no input")?)?;
            Op::Reshape {
                x,
                rule: ShapeRule::Squeeze(Some(vec![])),
                out: one_out(c)?,
            }
        }
        "Reshape" => {
            let shape = c
                .const_ints(present(1).ok_or("no shape")?)
                .ok_or("shape is not constant")?;
            if attrs.int("allowzero").unwrap_or(0) != 0 {
                return Err("allowzero".into());
            }
            let x = operand(c, present(0).ok_or("no input")?)?;
            Op::Reshape {
                x,
                rule: ShapeRule::Reshape(shape),
                out: one_out(c)?,
            }
        }
        "Squeeze" | "Unsqueeze" => {
            let axes = match present(1) {
                Some(a) => Some(c.const_ints(a).ok_or("axes are not constant")?),
                None => attrs.ints("axes").map(<[i64]>::to_vec),
            };
            let x = operand(c, present(0).ok_or("no input")?)?;
            let rule = if n.op_type == "Squeeze" {
                ShapeRule::Squeeze(axes)
            } else {
                ShapeRule::Unsqueeze(axes.ok_or("Unsqueeze without axes")?)
            };
            Op::Reshape {
                x,
                rule,
                out: one_out(c)?,
            }
        }
        "Flatten" => {
            let x = operand(c, present(0).ok_or("no input")?)?;
            Op::Reshape {
                x,
                rule: ShapeRule::Flatten(attrs.int("axis").unwrap_or(1)),
                out: one_out(c)?,
            }
        }
        "Transpose" => {
            let perm = attrs.ints("perm").ok_or("Transpose without perm")?;
            let perm = perm
                .iter()
                .map(|&p| usize::try_from(p).map_err(|_| "negative perm".to_string()))
                .collect::<Result<_, _>>()?;
            let x = operand(c, present(0).ok_or("no input")?)?;
            Op::Transpose {
                x,
                perm,
                out: one_out(c)?,
            }
        }
        "Slice" => {
            let starts = c
                .const_ints(present(1).ok_or("no starts")?)
                .ok_or("starts not constant")?;
            let ends = c
                .const_ints(present(2).ok_or("no ends")?)
                .ok_or("ends not constant")?;
            let axes = match present(3) {
                Some(a) => c.const_ints(a).ok_or("axes not constant")?,
                None => (0..starts.len() as i64).collect(),
            };
            let steps = match present(4) {
                Some(a) => c.const_ints(a).ok_or("steps not constant")?,
                None => vec![1; starts.len()],
            };
            if steps.iter().any(|&s| s != 1) {
                return Err("steps other than 1".into());
            }
            let ranges = (0..starts.len())
                .map(|i| (axes[i], starts[i], ends[i], steps[i]))
                .collect();
            let x = operand(c, present(0).ok_or("no input")?)?;
            Op::Slice {
                x,
                ranges,
                out: one_out(c)?,
            }
        }
        "Gather" => {
            let data = operand(c, present(0).ok_or("no data")?)?;
            let indices = operand(c, present(1).ok_or("no indices")?)?;
            Op::Gather {
                data,
                indices,
                axis: attrs.int("axis").unwrap_or(0),
                out: one_out(c)?,
            }
        }
        "Concat" => {
            let mut inputs = vec![];
            for i in n.input.iter().filter(|s| !s.is_empty()) {
                inputs.push(operand(c, i.as_str())?);
            }
            Op::Concat {
                inputs,
                axis: attrs.int("axis").unwrap_or(0),
                out: one_out(c)?,
            }
        }
        "Shape" => {
            if attrs.int("start").is_some() || attrs.int("end").is_some() {
                return Err("Shape with start/end".into());
            }
            let x = operand(c, present(0).ok_or("no input")?)?;
            Op::Shape {
                x,
                out: one_out(c)?,
            }
        }
        "ConstantOfShape" => {
            let value = match n
                .attribute
                .iter()
                .find(|a| a.name == "value")
                .and_then(|a| a.t.as_ref())
            {
                None => Value::F32(ArrayD::zeros(IxDyn(&[1]))),
                Some(t) => match (constant_f32(t), constant_i64(t)) {
                    (Some(f), _) => Value::F32(f),
                    (_, Some(i)) => Value::I64(i),
                    _ => return Err("value of an unsupported type".into()),
                },
            };
            let shape = operand(c, present(0).ok_or("no shape")?)?;
            Op::ConstantOfShape {
                shape,
                value,
                out: one_out(c)?,
            }
        }
        other => return Err(format!("op {other} is not in recur's executor")),
    })
}

fn axis(a: i64, rank: usize) -> Result<usize, String> {
    let r = rank as i64;
    let a = if a < 0 { a + r } else { a };
    if (0..r).contains(&a) {
        Ok(a as usize)
    } else {
        Err(format!("axis {a} out of range for rank {rank}"))
    }
}

/// Runs one op on the values computed so far. `dying` lists the slots this op is the last to
/// read: a Transpose or Reshape takes such an input rather than copying it.
fn eval(op: &Op, v: &mut [Option<Value>], dying: &[usize]) -> Result<(), String> {
    let get = |v: &[Option<Value>], s: usize| -> Result<Value, String> {
        v[s].clone().ok_or_else(|| "value not computed".to_string())
    };
    let getf =
        |v: &[Option<Value>], s: usize| -> Result<ArrayD<f32>, String> { fref(v, s).cloned() };
    match op {
        Op::Recurrent {
            spec,
            weights,
            batch_first,
            x,
            lens,
            h0,
            c0,
            outs,
            ..
        } => {
            let view3 = |s: usize| -> Result<ndarray::ArrayView3<f32>, String> {
                let a = fref(v, s)?
                    .view()
                    .into_dimensionality::<Ix3>()
                    .map_err(|e| e.to_string())?;
                Ok(if *batch_first {
                    a.permuted_axes([1, 0, 2])
                } else {
                    a
                })
            };
            let xv = view3(*x)?;
            let lengths: Option<Vec<usize>> = match lens {
                None => None,
                Some(s) => Some(match &v[*s] {
                    Some(Value::I64(a)) => a
                        .iter()
                        .map(|&l| usize::try_from(l).map_err(|_| "negative length".to_string()))
                        .collect::<Result<_, _>>()?,
                    _ => return Err("sequence_lens is not an integer tensor".into()),
                }),
            };
            let (t_len, batch, _) = xv.dim();
            if let Some(l) = &lengths {
                if l.len() != batch || l.iter().any(|&x| x > t_len) {
                    return Err(format!(
                        "sequence_lens {l:?} does not fit batch {batch} and {t_len} steps"
                    ));
                }
            }
            if xv.dim().2 != weights.input_size() {
                return Err(format!(
                    "X has {} features, W expects {}",
                    xv.dim().2,
                    weights.input_size()
                ));
            }
            let h0v = h0.map(view3).transpose()?;
            let c0v = c0.map(view3).transpose()?;
            let d = spec.direction.count();
            let h = spec.hidden;
            let out = if *batch_first {
                // X is [B, T, I] in memory: the kernels read it and write Y [B, T, D, H]
                // where they are, with no transposes.
                let x_bt = xv.permuted_axes([1, 0, 2]);
                run_layer_batch_first(spec, weights, x_bt, lengths.as_deref(), h0v, c0v)
            } else {
                run_layer(spec, weights, xv, lengths.as_deref(), h0v, c0v)
            };
            if let Some(s) = outs[0] {
                let shape = if *batch_first {
                    (batch, t_len, d, h)
                } else {
                    (t_len, d, batch, h)
                };
                let y = out
                    .y
                    .into_shape_with_order(shape)
                    .map_err(|e| e.to_string())?;
                v[s] = Some(Value::F32(y.into_dyn()));
            }
            for (k, a) in [(1, out.y_h), (2, out.y_c)] {
                if let Some(s) = outs[k] {
                    let a = if *batch_first {
                        a.permuted_axes([1, 0, 2]).as_standard_layout().into_owned()
                    } else {
                        a
                    };
                    v[s] = Some(Value::F32(a.into_dyn()));
                }
            }
        }
        Op::Dense {
            x,
            w,
            packed,
            bias,
            out,
        } => {
            let a = fref(v, *x)?;
            let k = w.nrows();
            if a.ndim() == 0 || a.shape()[a.ndim() - 1] != k {
                return Err(format!(
                    "input of shape {:?} does not fit a {}x{} matrix",
                    a.shape(),
                    k,
                    w.ncols()
                ));
            }
            let lead: Vec<usize> = a.shape()[..a.ndim() - 1].to_vec();
            let rows = lead.iter().product::<usize>();
            let a2 = a.as_standard_layout();
            let a2 = ArrayView2::from_shape((rows, k), a2.as_slice().expect("standard"))
                .map_err(|e| e.to_string())?;
            let mut y = if rows < 8 {
                let mut y = Array2::<f32>::zeros((rows, w.ncols()));
                for (mut y_row, a_row) in y.rows_mut().into_iter().zip(a2.rows()) {
                    crate::kernels::linalg::matvec_packed(
                        y_row.as_slice_mut().expect("standard"),
                        a_row.as_slice().expect("rows of a standard-layout matrix"),
                        packed,
                    );
                }
                y.into_dyn()
            } else {
                a2.dot(w).into_dyn()
            };
            if let Some(b) = bias {
                broadcast_shape(y.shape(), b.shape())?;
                y = &y + b;
            }
            let mut shape = lead;
            shape.push(w.ncols());
            if y.ndim() == 2 && shape.len() != 2 {
                y = y
                    .into_shape_with_order(IxDyn(&shape))
                    .map_err(|e| e.to_string())?;
            }
            v[*out] = Some(Value::F32(y));
        }
        Op::Binary { kind, a, b, out } => {
            let (a, b) = (fref(v, *a)?, fref(v, *b)?);
            broadcast_shape(a.shape(), b.shape())?;
            let r = match kind {
                '+' => binary(a, b, |x, y| x + y).unwrap_or_else(|| a + b),
                '-' => binary(a, b, |x, y| x - y).unwrap_or_else(|| a - b),
                '*' => binary(a, b, |x, y| x * y).unwrap_or_else(|| a * b),
                _ => binary(a, b, |x, y| x / y).unwrap_or_else(|| a / b),
            };
            v[*out] = Some(Value::F32(r));
        }
        Op::Unary { kind, x, out } => {
            let r = fref(v, *x)?.mapv(unary_fn(*kind));
            v[*out] = Some(Value::F32(r));
        }
        Op::Softmax { axis: ax, x, out } => {
            let mut a = getf(v, *x)?;
            let ax = axis(*ax, a.ndim())?;
            for mut lane in a.lanes_mut(Axis(ax)) {
                let m = lane.fold(f32::NEG_INFINITY, |m, &x| m.max(x));
                lane.mapv_inplace(|x| (x - m).exp());
                let s = lane.sum();
                lane.mapv_inplace(|x| x / s);
            }
            v[*out] = Some(Value::F32(a));
        }
        Op::Reshape { x, rule, out } => {
            let value = v[*x].as_ref().ok_or("value not computed")?;
            let target = IxDyn(&reshape_target(value.shape(), rule)?);
            let shaped = |e: ndarray::ShapeError| e.to_string();
            // A value nothing reads later is reshaped where it lies (copied only when it is
            // not in standard layout); any other takes one copy (a view when the data is
            // contiguous, then owned).
            let r = if dying.contains(x) {
                match v[*x].take().ok_or("value not computed")? {
                    Value::F32(a) => Value::F32(
                        standard_layout(a)
                            .into_shape_with_order(target)
                            .map_err(shaped)?,
                    ),
                    Value::I64(a) => Value::I64(
                        standard_layout(a)
                            .into_shape_with_order(target)
                            .map_err(shaped)?,
                    ),
                }
            } else {
                match value {
                    Value::F32(a) => Value::F32(a.to_shape(target).map_err(shaped)?.into_owned()),
                    Value::I64(a) => Value::I64(a.to_shape(target).map_err(shaped)?.into_owned()),
                }
            };
            v[*out] = Some(r);
        }
        Op::Transpose { x, perm, out } => {
            let a = fref(v, *x)?;
            if perm.len() != a.ndim() || (0..perm.len()).any(|i| !perm.contains(&i)) {
                return Err("perm does not fit the rank".into());
            }
            // Only the strides change (no copy when nothing reads the input later, else a
            // plain one, never a strided one): the ops after it take any layout, and the graph
            // outputs are laid out when they leave.
            let a = if dying.contains(x) {
                match v[*x].take() {
                    Some(Value::F32(a)) => a,
                    _ => unreachable!("checked to be a float tensor above"),
                }
            } else {
                a.clone()
            };
            let r = a.permuted_axes(IxDyn(perm));
            v[*out] = Some(Value::F32(r));
        }
        Op::Slice { x, ranges, out } => {
            let r = slice_view(fref(v, *x)?.view(), ranges)?.to_owned();
            v[*out] = Some(Value::F32(r));
        }
        Op::Gather {
            data,
            indices,
            axis: ax,
            out,
        } => {
            let idx = match &v[*indices] {
                Some(Value::I64(i)) => i,
                Some(Value::F32(_)) => return Err("float indices".into()),
                None => return Err("value not computed".into()),
            };
            let r = match &v[*data] {
                Some(Value::F32(d)) => Value::F32(gather(d, idx, *ax)?),
                Some(Value::I64(d)) => Value::I64(gather(d, idx, *ax)?),
                None => return Err("value not computed".into()),
            };
            v[*out] = Some(r);
        }
        Op::Concat {
            inputs,
            axis: ax,
            out,
        } => {
            let values: Vec<Value> = inputs
                .iter()
                .map(|&s| get(v, s))
                .collect::<Result<_, _>>()?;
            let floats: Option<Vec<&ArrayD<f32>>> = values
                .iter()
                .map(|x| match x {
                    Value::F32(a) => Some(a),
                    Value::I64(_) => None,
                })
                .collect();
            let ints: Option<Vec<&ArrayD<i64>>> = values
                .iter()
                .map(|x| match x {
                    Value::I64(a) => Some(a),
                    Value::F32(_) => None,
                })
                .collect();
            v[*out] = Some(match (floats, ints) {
                (Some(f), _) => Value::F32(concat(&f, *ax)?),
                (_, Some(i)) => Value::I64(concat(&i, *ax)?),
                _ => return Err("Concat of mixed element types".into()),
            });
        }
        Op::Shape { x, out } => {
            let value = v[*x].as_ref().ok_or("value not computed")?;
            let shape: Vec<i64> = value.shape().iter().map(|&d| d as i64).collect();
            v[*out] = Some(Value::I64(
                ArrayD::from_shape_vec(IxDyn(&[shape.len()]), shape).expect("1-D"),
            ));
        }
        Op::ConstantOfShape { shape, value, out } => {
            let dims = match get(v, *shape)? {
                Value::I64(a) => a
                    .iter()
                    .map(|&d| usize::try_from(d).map_err(|_| format!("negative dimension {d}")))
                    .collect::<Result<Vec<_>, _>>()?,
                Value::F32(_) => return Err("float shape".into()),
            };
            if dims.iter().product::<usize>() > 1 << 28 {
                return Err(format!("shape {dims:?} is too large"));
            }
            v[*out] = Some(match value {
                Value::F32(x) => Value::F32(ArrayD::from_elem(
                    IxDyn(&dims),
                    x.iter().next().copied().unwrap_or(0.0),
                )),
                Value::I64(x) => Value::I64(ArrayD::from_elem(
                    IxDyn(&dims),
                    x.iter().next().copied().unwrap_or(0),
                )),
            });
        }
    }
    Ok(())
}

/// The ONNX Slice of `a` (step 1, negative and out-of-range bounds clamped as ONNX does).
fn slice_view<'a, T>(
    mut a: ndarray::ArrayViewD<'a, T>,
    ranges: &[(i64, i64, i64, i64)],
) -> Result<ndarray::ArrayViewD<'a, T>, String> {
    for &(ax, st, en, _) in ranges {
        let ax = axis(ax, a.ndim())?;
        let len = a.shape()[ax] as i64;
        let clampi = |x: i64| if x < 0 { (x + len).max(0) } else { x.min(len) };
        let (st, en) = (clampi(st) as usize, clampi(en) as usize);
        a.slice_axis_inplace(Axis(ax), Slice::from(st..en.max(st)));
    }
    Ok(a)
}

/// The input slots an op reads.
fn reads(op: &Op) -> Vec<usize> {
    match op {
        Op::Recurrent {
            x, lens, h0, c0, ..
        } => [Some(*x), *lens, *h0, *c0].into_iter().flatten().collect(),
        Op::Dense { x, .. }
        | Op::Unary { x, .. }
        | Op::Softmax { x, .. }
        | Op::Reshape { x, .. }
        | Op::Transpose { x, .. }
        | Op::Slice { x, .. }
        | Op::Shape { x, .. } => vec![*x],
        Op::Binary { a, b, .. } => vec![*a, *b],
        Op::Gather { data, indices, .. } => vec![*data, *indices],
        Op::Concat { inputs, .. } => inputs.clone(),
        Op::ConstantOfShape { shape, .. } => vec![*shape],
    }
}

/// The slots an op writes.
fn outputs_of(op: &Op) -> Vec<usize> {
    match op {
        Op::Recurrent { outs, .. } => outs.iter().flatten().copied().collect(),
        Op::Dense { out, .. }
        | Op::Binary { out, .. }
        | Op::Unary { out, .. }
        | Op::Softmax { out, .. }
        | Op::Reshape { out, .. }
        | Op::Transpose { out, .. }
        | Op::Slice { out, .. }
        | Op::Gather { out, .. }
        | Op::Concat { out, .. }
        | Op::Shape { out, .. }
        | Op::ConstantOfShape { out, .. } => vec![*out],
    }
}

/// A float value by reference (no copy).
fn fref(v: &[Option<Value>], s: usize) -> Result<&ArrayD<f32>, String> {
    match &v[s] {
        Some(Value::F32(a)) => Ok(a),
        Some(Value::I64(_)) => Err("expected a float tensor".into()),
        None => Err("value not computed".into()),
    }
}

fn gather<T: Clone + Default>(
    d: &ArrayD<T>,
    idx: &ArrayD<i64>,
    ax: i64,
) -> Result<ArrayD<T>, String> {
    let ax = axis(ax, d.ndim())?;
    let n = d.shape()[ax] as i64;
    let mut parts = Vec::with_capacity(idx.len());
    for &i in idx.iter() {
        let i = if i < 0 { i + n } else { i };
        if !(0..n).contains(&i) {
            return Err(format!("index {i} out of range 0..{n}"));
        }
        parts.push(d.index_axis(Axis(ax), i as usize).insert_axis(Axis(ax)));
    }
    let mut shape: Vec<usize> = d.shape()[..ax].to_vec();
    shape.extend(idx.shape());
    shape.extend(&d.shape()[ax + 1..]);
    if parts.is_empty() {
        return Ok(ArrayD::from_elem(IxDyn(&shape), T::default()));
    }
    concatenate(Axis(ax), &parts)
        .map_err(|e| e.to_string())?
        .as_standard_layout()
        .into_owned()
        .into_shape_with_order(IxDyn(&shape))
        .map_err(|e| e.to_string())
}

fn concat<T: Clone>(arrays: &[&ArrayD<T>], ax: i64) -> Result<ArrayD<T>, String> {
    let rank = arrays.first().ok_or("Concat of nothing")?.ndim();
    let ax = axis(ax, rank)?;
    let views: Vec<_> = arrays.iter().map(|a| a.view()).collect();
    concatenate(Axis(ax), &views).map_err(|e| e.to_string())
}

/// `f(a, b)` element by element where `b` repeats along `a`'s leading axes (a per-channel
/// constant such as a baked normalisation's mean, a scalar, or `a`'s own shape), both in
/// standard layout: one pass over contiguous memory, where ndarray's general broadcasting
/// over dynamic dimensions costs several nanoseconds an element. The same operation on each
/// element, so the same bits. `None` for other shapes (the caller broadcasts in general).
fn binary(a: &ArrayD<f32>, b: &ArrayD<f32>, f: impl Fn(f32, f32) -> f32) -> Option<ArrayD<f32>> {
    let (a_data, b_data) = (a.as_slice()?, b.as_slice()?);
    let b_shape = &b.shape()[b.shape().iter().take_while(|&&d| d == 1).count()..];
    if b.ndim() > a.ndim() || !a.shape().ends_with(b_shape) || b_data.is_empty() {
        return None;
    }
    let mut out = Vec::with_capacity(a_data.len());
    for chunk in a_data.chunks_exact(b_data.len()) {
        out.extend(chunk.iter().zip(b_data).map(|(&x, &y)| f(x, y)));
    }
    ArrayD::from_shape_vec(a.raw_dim(), out).ok()
}

/// NumPy broadcasting of two shapes (ndarray panics on shapes that do not broadcast; recur
/// says so instead).
pub(super) fn broadcast_shape(a: &[usize], b: &[usize]) -> Result<Vec<usize>, String> {
    let rank = a.len().max(b.len());
    let dim = |s: &[usize], i: usize| (i + s.len()).checked_sub(rank).map(|j| s[j]).unwrap_or(1);
    (0..rank)
        .map(|i| match (dim(a, i), dim(b, i)) {
            (x, y) if x == y || y == 1 => Ok(x),
            (1, y) => Ok(y),
            _ => Err(format!("shapes {a:?} and {b:?} do not broadcast")),
        })
        .collect()
}

fn reshape_target(shape: &[usize], rule: &ShapeRule) -> Result<Vec<usize>, String> {
    let rank = shape.len();
    Ok(match rule {
        ShapeRule::Squeeze(None) => shape.iter().copied().filter(|&d| d != 1).collect(),
        ShapeRule::Squeeze(Some(axes)) => {
            let axes: Vec<usize> = axes
                .iter()
                .map(|&a| axis(a, rank))
                .collect::<Result<_, _>>()?;
            if axes.iter().any(|&a| shape[a] != 1) {
                return Err(format!("cannot squeeze axes {axes:?} of shape {shape:?}"));
            }
            shape
                .iter()
                .enumerate()
                .filter(|(i, _)| !axes.contains(i))
                .map(|(_, &d)| d)
                .collect()
        }
        ShapeRule::Unsqueeze(axes) => {
            let out_rank = rank + axes.len();
            let mut axes: Vec<usize> = axes
                .iter()
                .map(|&a| axis(a, out_rank))
                .collect::<Result<_, _>>()?;
            axes.sort_unstable();
            let mut out = shape.to_vec();
            for a in axes {
                out.insert(a, 1);
            }
            out
        }
        ShapeRule::Flatten(ax) => {
            let ax = if *ax < 0 {
                (*ax + rank as i64) as usize
            } else {
                *ax as usize
            };
            if ax > rank {
                return Err("Flatten axis out of range".into());
            }
            vec![shape[..ax].iter().product(), shape[ax..].iter().product()]
        }
        ShapeRule::Reshape(target) => {
            let total: usize = shape.iter().product();
            let mut out: Vec<usize> = Vec::with_capacity(target.len());
            let mut infer = None;
            for (i, &t) in target.iter().enumerate() {
                match t {
                    0 => out.push(*shape.get(i).ok_or("0 beyond the input rank")?),
                    -1 => {
                        infer = Some(i);
                        out.push(1);
                    }
                    t if t > 0 => out.push(t as usize),
                    _ => return Err("negative dimension".into()),
                }
            }
            let known: usize = out.iter().product();
            if let Some(i) = infer {
                if known == 0 || !total.is_multiple_of(known) {
                    return Err(format!("cannot reshape {shape:?} to {target:?}"));
                }
                out[i] = total / known;
            }
            out
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Dimension;

    /// A value is taken by the op that reads it last and copied by the ones before; graph
    /// outputs are never taken or dropped, even when an op reads them.
    #[test]
    fn ops_take_what_nothing_reads_later_and_copy_the_rest() {
        let ops = vec![
            Op::Transpose {
                x: 0,
                perm: vec![1, 0],
                out: 1,
            },
            Op::Binary {
                kind: '+',
                a: 0,
                b: 1,
                out: 2,
            },
            Op::Transpose {
                x: 2,
                perm: vec![1, 0],
                out: 3,
            },
            // Reads an output: copies it.
            Op::Reshape {
                x: 1,
                rule: ShapeRule::Reshape(vec![9]),
                out: 4,
            },
            Op::Binary {
                kind: '*',
                a: 1,
                b: 1,
                out: 5,
            },
            // The last to read a value in standard layout: reshapes it where it lies.
            Op::Reshape {
                x: 5,
                rule: ShapeRule::Reshape(vec![9]),
                out: 6,
            },
        ];
        let outputs = vec![
            ("y".to_string(), 3),
            ("t".to_string(), 1),
            ("r".to_string(), 4),
            ("m".to_string(), 6),
        ];
        assert_eq!(
            last_reads(&ops, &outputs),
            vec![vec![], vec![0], vec![2], vec![], vec![], vec![5]]
        );
        let plan = NativePlan {
            constants: vec![],
            slots: 7,
            inputs: vec![("x".to_string(), 0)],
            last_reads: last_reads(&ops, &outputs),
            outputs,
            ops,
            step: None,
            refused: vec![],
            step_runs: 0,
            step_builds: 0,
        };
        let x = ArrayD::from_shape_fn(IxDyn(&[3, 3]), |i| (i[0] * 3 + i[1]) as f32 * 0.5 - 1.0);
        let given = HostTensor::F32(x.clone());
        let out = plan.run_general(&[("x", &given)]).unwrap();
        let f32s = |t: &HostTensor| match t {
            HostTensor::F32(a) => a.clone(),
            _ => panic!("float output expected"),
        };
        let x2 = x.clone().into_dimensionality::<ndarray::Ix2>().unwrap();
        let sum = &x2 + &x2.t();
        assert_eq!(f32s(&out[0]), sum.t().into_dyn());
        assert_eq!(f32s(&out[1]), x2.t().into_dyn());
        let flat = |a: ndarray::ArrayView2<f32>| a.iter().copied().collect::<Vec<_>>();
        assert_eq!(f32s(&out[2]).into_raw_vec_and_offset().0, flat(x2.t()));
        let squares = x2.t().mapv(|v| v * v);
        assert_eq!(f32s(&out[3]).shape(), &[9]);
        assert_eq!(
            f32s(&out[3]).iter().copied().collect::<Vec<_>>(),
            flat(squares.view())
        );
    }

    /// The contiguous pass gives ndarray's broadcasting result bit for bit where it applies
    /// (per-channel constants, scalars, equal shapes) and declines the other shapes.
    #[test]
    fn binary_fast_pass_equals_ndarray_broadcasting() {
        let filled = |shape: &[usize], seed: f32| {
            ArrayD::from_shape_fn(IxDyn(shape), |i| {
                let k = i
                    .as_array_view()
                    .iter()
                    .fold(seed, |s, &d| s * 1.7 + d as f32);
                (k * 0.37).sin() * 3.0
            })
        };
        let a = filled(&[4, 5, 6], 0.3);
        let applies: [&[usize]; 6] = [&[6], &[1, 1, 6], &[5, 6], &[4, 5, 6], &[], &[1]];
        for shape in applies {
            let b = filled(shape, 1.1);
            for (fast, general) in [
                (binary(&a, &b, |x, y| x + y), &a + &b),
                (binary(&a, &b, |x, y| x - y), &a - &b),
                (binary(&a, &b, |x, y| x * y), &a * &b),
                (binary(&a, &b, |x, y| x / y), &a / &b),
            ] {
                assert_eq!(fast.as_ref(), Some(&general), "b {shape:?}");
            }
        }
        // b broadcast along a middle or the last axis, b larger than a, a transposed a: the
        // general path.
        let declines: [(&[usize], &[usize]); 3] = [
            (&[4, 5, 6], &[5, 1]),
            (&[4, 5, 6], &[4, 1, 1]),
            (&[6], &[1, 6]),
        ];
        for (a_shape, b_shape) in declines {
            let (a, b) = (filled(a_shape, 0.5), filled(b_shape, 0.9));
            assert!(
                binary(&a, &b, |x, y| x + y).is_none(),
                "{a_shape:?} {b_shape:?}"
            );
        }
        let transposed = a.clone().permuted_axes(IxDyn(&[2, 1, 0]));
        assert!(binary(&transposed, &filled(&[4], 0.1), |x, y| x + y).is_none());
    }
}
