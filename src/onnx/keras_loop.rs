//! Recognising the ONNX `Loop` bodies tf2onnx writes for Keras recurrent layers (SimpleRNN,
//! LSTM, their masked forms), so recur can run them with its kernels instead of refusing.
//!
//! tf2onnx turns a Keras `while` into a `Loop` whose body reads the time-major input (and
//! the mask) from the outer graph with `Gather(·, t)`, carries the step counter, the states
//! and the weights as loop state, and writes each step's output as a scan output. The
//! recogniser does not trust op names: it follows the body's data flow from each loop-carried
//! output back to the body inputs and accepts the loop only when every value is exactly one
//! of the recurrences recur's kernels compute (Keras's masking included: a masked step
//! carries state and output over). Anything else is refused with the reason.

use std::collections::HashMap;

use ndarray::{concatenate, s, Array2, ArrayD, Axis, IxDyn, Slice};
use tract_onnx::pb::{GraphProto, NodeProto, TensorProto};

use super::constants::{constant_f32, constant_i64};
use crate::ir::{Activation, ActivationKind, Cell, RecurrentWeights};

/// What each loop-carried value is (Loop input `2 + k`, Loop output `k`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Carried {
    /// The step counter `t`, read by the body's Gathers and incremented by one.
    Time,
    /// The hidden state.
    Hidden,
    /// The LSTM cell state.
    Cell,
    /// Keras's "last output" of a masked layer: the previous step's output, kept at masked steps.
    LastOutput,
    /// Passed through unchanged (the weights tf2onnx carries as loop state).
    PassThrough,
}

/// A value the loop's continue condition compares with a constant.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Counter {
    /// The Loop's iteration number (body input 0).
    Iteration,
    /// The step counter after the increment.
    NextTime,
}

/// One `counter < bound` term of the body's continue condition (all terms must hold).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StopTerm {
    /// What is compared.
    pub counter: Counter,
    /// The constant it must stay below.
    pub bound: f64,
}

/// What a scan output stacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanOf {
    /// The hidden state after each step (carried over masked steps).
    Hidden,
    /// Keras's output after each step: the new state, or at masked steps the last output.
    LastOutput,
}

/// A recognised Keras recurrent loop, with its weights in ONNX layout.
#[derive(Debug, Clone)]
pub struct KerasLoop {
    /// The cell (SimpleRNN → RNN, LSTM → LSTM without peepholes).
    pub cell: Cell,
    /// Hidden size.
    pub hidden: usize,
    /// Input features per step.
    pub input_size: usize,
    /// Activations in ONNX order for the cell.
    pub activations: Vec<Activation>,
    /// Weights converted to ONNX layout and gate order (one direction).
    pub weights: RecurrentWeights,
    /// Outer tensor `[T, B, I]` the body reads step `t` of.
    pub x: String,
    /// Outer boolean tensor `[T, B, 1]` or `[T, B]`: Keras's mask, when the layer is masked.
    pub mask: Option<String>,
    /// Role of each loop-carried value.
    pub carried: Vec<Carried>,
    /// Role of each scan output.
    pub scans: Vec<ScanOf>,
    /// The continue condition, as a conjunction (empty: the condition passes through).
    pub stop: Vec<StopTerm>,
}

impl KerasLoop {
    /// Index among the carried values of the first with this role.
    pub fn carried_index(&self, role: Carried) -> Option<usize> {
        self.carried.iter().position(|c| *c == role)
    }
}

/// Where a body value comes from, Identity nodes seen through.
#[derive(Debug, Clone, Copy)]
enum Value<'a> {
    /// Body input `k` (0 iteration, 1 condition, 2.. carried).
    BodyInput(usize),
    /// A name from the enclosing graph.
    Outer(&'a str),
    /// A constant of the body.
    Const(&'a TensorProto),
    /// Output `usize` of a body node.
    Node(&'a NodeProto, usize),
}

/// A recognised GRU cell: the two pre-activation sums and, per ONNX gate (z, r, h), which
/// part of each it is.
struct GruMatch<'a> {
    x_sum: &'a str,
    h_sum: &'a str,
    x_order: Vec<usize>,
    h_order: Vec<usize>,
    activations: Vec<Activation>,
}

/// The mask and step counter the body's reads agree on.
#[derive(Default)]
struct Seen<'a> {
    mask: Option<&'a str>,
    time: Option<usize>,
}

impl<'a> Seen<'a> {
    fn time(&mut self, t: usize) -> Match<()> {
        match self.time {
            Some(prev) if prev != t => Err("steps are read with two different counters".into()),
            _ => {
                self.time = Some(t);
                Ok(())
            }
        }
    }

    /// `name` with Keras's mask select removed (`prev` is the carried value it keeps).
    fn strip(&mut self, body: &Body<'a>, name: &'a str, prev: usize) -> Match<&'a str> {
        match body.unmask(name, prev) {
            Some((m, t, new)) => {
                if self.mask.is_some_and(|seen| seen != m) {
                    return Err("two different masks".into());
                }
                self.mask = Some(m);
                self.time(t)?;
                Ok(new)
            }
            None => Ok(name),
        }
    }
}

/// The loop body with the indexes the matcher needs.
struct Body<'a> {
    inputs: Vec<&'a str>,
    outputs: Vec<&'a str>,
    producers: HashMap<&'a str, (&'a NodeProto, usize)>,
    constants: HashMap<&'a str, &'a TensorProto>,
    outer: &'a dyn Fn(&str) -> Option<TensorProto>,
    loop_inputs: &'a [String],
}

type Match<T> = Result<T, String>;

/// Recognises a `Loop` node; `outer_constant` looks up constants of the enclosing graph(s).
/// The error says why the body is not one of the supported recurrences.
pub fn recognise(
    node: &NodeProto,
    outer_constant: &dyn Fn(&str) -> Option<TensorProto>,
) -> Match<KerasLoop> {
    let graph: &GraphProto = node
        .attribute
        .iter()
        .find(|a| a.name == "body")
        .and_then(|a| a.g.as_ref())
        .ok_or("Loop without a body graph")?;
    let mut producers = HashMap::new();
    let mut constants: HashMap<&str, &TensorProto> = graph
        .initializer
        .iter()
        .map(|t| (t.name.as_str(), t))
        .collect();
    for n in &graph.node {
        if n.op_type == "Constant" {
            if let Some(t) = n
                .attribute
                .iter()
                .find(|a| a.name == "value")
                .and_then(|a| a.t.as_ref())
            {
                constants.insert(n.output[0].as_str(), t);
                continue;
            }
        }
        for (i, o) in n.output.iter().enumerate() {
            producers.insert(o.as_str(), (n, i));
        }
    }
    let body = Body {
        inputs: graph.input.iter().map(|i| i.name.as_str()).collect(),
        outputs: graph.output.iter().map(|o| o.name.as_str()).collect(),
        producers,
        constants,
        outer: outer_constant,
        loop_inputs: &node.input,
    };
    // The matcher indexes node inputs as well-formed ONNX has them; a malformed body (a
    // node short of inputs) is refused rather than allowed to panic.
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| body.recognise()))
        .unwrap_or_else(|_| Err("malformed loop body (a node lacks its inputs)".into()))
}

impl<'a> Body<'a> {
    fn value(&self, name: &'a str) -> Value<'a> {
        let mut name = name;
        loop {
            if let Some(k) = self.inputs.iter().position(|i| *i == name) {
                return Value::BodyInput(k);
            }
            if let Some(t) = self.constants.get(name) {
                return Value::Const(t);
            }
            match self.producers.get(name) {
                Some((n, 0)) if n.op_type == "Identity" => name = n.input[0].as_str(),
                Some((n, i)) => return Value::Node(n, *i),
                None => return Value::Outer(name),
            }
        }
    }

    /// The node producing `name` when it is an `op` node.
    fn node(&self, name: &'a str, op: &str) -> Option<&'a NodeProto> {
        match self.value(name) {
            Value::Node(n, 0) if n.op_type == op => Some(n),
            _ => None,
        }
    }

    fn same(&self, a: &'a str, b: &'a str) -> bool {
        match (self.value(a), self.value(b)) {
            (Value::Node(x, i), Value::Node(y, j)) => std::ptr::eq(x, y) && i == j,
            (Value::BodyInput(x), Value::BodyInput(y)) => x == y,
            (Value::Outer(x), Value::Outer(y)) => x == y,
            (Value::Const(x), Value::Const(y)) => std::ptr::eq(x, y),
            _ => false,
        }
    }

    /// The terms of a (nested) sum.
    fn terms(&self, name: &'a str) -> Vec<&'a str> {
        match self.node(name, "Add") {
            Some(n) => n.input.iter().flat_map(|i| self.terms(i)).collect(),
            None => vec![name],
        }
    }

    /// The two operands of a binary node, in both orders.
    fn operands(&self, name: &'a str, op: &str) -> Option<[(&'a str, &'a str); 2]> {
        let n = self.node(name, op)?;
        (n.input.len() == 2).then(|| {
            let (a, b) = (n.input[0].as_str(), n.input[1].as_str());
            [(a, b), (b, a)]
        })
    }

    /// The constant behind a name: a body constant, a pass-through loop-carried value whose
    /// Loop input is constant, an outer constant, or Squeeze / Split / Slice of one.
    fn weight(&self, name: &'a str) -> Match<ArrayD<f32>> {
        self.constant(name, 0)
            .ok_or_else(|| format!("weight '{name}' is not a float constant"))
    }

    fn constant(&self, name: &'a str, depth: usize) -> Option<ArrayD<f32>> {
        if depth > 8 {
            return None;
        }
        let ints = |n: Option<&'a String>| -> Option<Vec<i64>> {
            let n = n.filter(|n| !n.is_empty())?;
            let t = match self.value(n) {
                Value::Const(t) => t.clone(),
                Value::Outer(o) => (self.outer)(o)?,
                _ => return None,
            };
            constant_i64(&t).map(|a| a.iter().copied().collect())
        };
        let attr_ints = |n: &NodeProto, key: &str| -> Option<Vec<i64>> {
            n.attribute
                .iter()
                .find(|a| a.name == key)
                .map(|a| a.ints.clone())
        };
        let attr_int = |n: &NodeProto, key: &str| -> Option<i64> {
            n.attribute.iter().find(|a| a.name == key).map(|a| a.i)
        };
        let axis_of = |a: i64, rank: usize| -> Option<usize> {
            let a = if a < 0 { a + rank as i64 } else { a };
            (0..rank as i64).contains(&a).then_some(a as usize)
        };
        match self.value(name) {
            Value::Const(t) => constant_f32(t),
            Value::Outer(n) => (self.outer)(n).as_ref().and_then(constant_f32),
            Value::BodyInput(k) if k >= 2 && self.carried_role_is_pass_through(k - 2) => self
                .loop_inputs
                .get(k)
                .and_then(|n| (self.outer)(n))
                .as_ref()
                .and_then(constant_f32),
            Value::Node(n, out) => {
                let input = self.constant(&n.input[0], depth + 1)?;
                let rank = input.ndim();
                match n.op_type.as_str() {
                    "Squeeze" => {
                        let axes = ints(n.input.get(1)).or_else(|| attr_ints(n, "axes"));
                        let mut a = input;
                        let mut axes: Vec<usize> = match axes {
                            Some(axes) => axes
                                .iter()
                                .map(|&x| axis_of(x, rank))
                                .collect::<Option<_>>()?,
                            None => (0..rank).filter(|&i| a.shape()[i] == 1).collect(),
                        };
                        axes.sort_unstable();
                        for &ax in axes.iter().rev() {
                            if a.shape()[ax] != 1 {
                                return None;
                            }
                            a = a.index_axis_move(Axis(ax), 0);
                        }
                        Some(a)
                    }
                    "Split" => {
                        let ax = axis_of(attr_int(n, "axis").unwrap_or(0), rank)?;
                        let len = input.shape()[ax];
                        let sizes = ints(n.input.get(1)).or_else(|| attr_ints(n, "split"));
                        let sizes = match sizes {
                            Some(s) => s
                                .iter()
                                .map(|&v| usize::try_from(v).ok())
                                .collect::<Option<Vec<_>>>()?,
                            None if len % n.output.len() == 0 => {
                                vec![len / n.output.len(); n.output.len()]
                            }
                            None => return None,
                        };
                        if sizes.iter().sum::<usize>() != len || out >= sizes.len() {
                            return None;
                        }
                        let start: usize = sizes[..out].iter().sum();
                        Some(
                            input
                                .slice_axis(Axis(ax), Slice::from(start..start + sizes[out]))
                                .to_owned(),
                        )
                    }
                    "Slice" => {
                        let (starts, ends) = (ints(n.input.get(1))?, ints(n.input.get(2))?);
                        let axes = ints(n.input.get(3))
                            .unwrap_or_else(|| (0..starts.len() as i64).collect());
                        let steps = ints(n.input.get(4)).unwrap_or_else(|| vec![1; starts.len()]);
                        let mut a = input;
                        for (((&st, &en), &ax), &step) in
                            starts.iter().zip(&ends).zip(&axes).zip(&steps)
                        {
                            let ax = axis_of(ax, rank)?;
                            let len = a.shape()[ax] as i64;
                            let clampi = |v: i64| if v < 0 { (v + len).max(0) } else { v.min(len) };
                            if step != 1 {
                                return None;
                            }
                            let (st, en) = (clampi(st) as usize, clampi(en) as usize);
                            a = a
                                .slice_axis(Axis(ax), Slice::from(st..en.max(st)))
                                .to_owned();
                        }
                        Some(a)
                    }
                    _ => None,
                }
            }
            _ => None,
        }
        .map(|a: ArrayD<f32>| a.into_dimensionality::<IxDyn>().expect("dynamic"))
    }

    fn carried_role_is_pass_through(&self, j: usize) -> bool {
        self.outputs
            .get(1 + j)
            .is_some_and(|o| matches!(self.value(o), Value::BodyInput(k) if k == 2 + j))
    }

    /// `Gather(outer, t)` along axis 0: the outer name and the body input used as index.
    fn gathered(&self, name: &'a str) -> Option<(&'a str, usize)> {
        let mut name = name;
        if let Some(c) = self.node(name, "Cast") {
            name = c.input[0].as_str();
        }
        let g = self.node(name, "Gather")?;
        let axis = g
            .attribute
            .iter()
            .find(|a| a.name == "axis")
            .map_or(0, |a| a.i);
        match (axis, self.value(&g.input[0]), self.value(&g.input[1])) {
            (0, Value::Outer(x), Value::BodyInput(t)) => Some((x, t)),
            _ => None,
        }
    }

    /// `m·new + (1−m)·prev` as tf2onnx writes Keras's `where(mask, new, prev)`:
    /// `Cast(m)·new + Cast(Not(m))·prev`. Returns the mask's outer name and `new`.
    fn unmask(&self, name: &'a str, prev: usize) -> Option<(&'a str, usize, &'a str)> {
        for (a, b) in self.operands(name, "Add")? {
            for (m, new) in self.operands(a, "Mul")? {
                for (not_m, old) in self.operands(b, "Mul")? {
                    let Some(cast_not) = self.node(not_m, "Cast") else {
                        continue;
                    };
                    let Some(not) = self.node(&cast_not.input[0], "Not") else {
                        continue;
                    };
                    let Some(cast_m) = self.node(m, "Cast") else {
                        continue;
                    };
                    let (Some((mask, t1)), Some((mask2, t2))) = (
                        self.gathered(&cast_m.input[0]),
                        self.gathered(&not.input[0]),
                    ) else {
                        continue;
                    };
                    if mask == mask2
                        && t1 == t2
                        && matches!(self.value(old), Value::BodyInput(k) if k == prev)
                    {
                        return Some((mask, t1, new));
                    }
                }
            }
        }
        None
    }

    fn activation(&self, name: &'a str) -> Option<(Activation, &'a str)> {
        let kind = match self.value(name) {
            Value::Node(n, 0) => match n.op_type.as_str() {
                "Tanh" => ActivationKind::Tanh,
                "Sigmoid" => ActivationKind::Sigmoid,
                "Relu" => ActivationKind::Relu,
                "Softsign" => ActivationKind::Softsign,
                "Softplus" => ActivationKind::Softplus,
                _ => return None,
            },
            _ => return None,
        };
        let Value::Node(n, _) = self.value(name) else {
            unreachable!()
        };
        Some((Activation::plain(kind), n.input[0].as_str()))
    }

    fn recognise(&self) -> Match<KerasLoop> {
        let carried_count = self
            .inputs
            .len()
            .checked_sub(2)
            .ok_or("body has fewer than 2 inputs")?;
        if self.outputs.len() < 1 + carried_count {
            return Err("body has fewer outputs than loop-carried values".into());
        }
        let scan_outputs = &self.outputs[1 + carried_count..];

        // The recurrent product: the only MatMul of a carried body input by a weight.
        let mut recurrent = None;
        for (name, (n, _)) in &self.producers {
            if n.op_type == "MatMul" {
                if let Value::BodyInput(k) = self.value(&n.input[0]) {
                    if k >= 2 && !self.carried_role_is_pass_through(k - 2) {
                        if recurrent.is_some() {
                            return Err("more than one recurrent product in the body".into());
                        }
                        recurrent = Some((*name, k));
                    }
                }
            }
        }
        let (_, h_in) = recurrent.ok_or("no recurrent product (state · weights) in the body")?;
        let h_out = self.outputs[h_in - 1];

        let mut seen = Seen::default();
        let h_new = seen.strip(self, h_out, h_in)?;

        // The cell.
        let mut gru_sums = None;
        let (cell, activations, pre, gate_order, c_in) =
            if let Some((act, pre)) = self.activation(h_new) {
                (Cell::Rnn, vec![act], pre, vec![0usize], None)
            } else if let Some(gru) = self.gru(h_new, h_in)? {
                gru_sums = Some((gru.h_sum, gru.h_order));
                (
                    Cell::Gru {
                        linear_before_reset: true,
                    },
                    gru.activations,
                    gru.x_sum,
                    gru.x_order,
                    None,
                )
            } else {
                let (pre, order, acts, c_in, c_new_name) = self.lstm(h_new)?;
                let c_out = self.outputs[c_in - 1];
                let c_new = seen.strip(self, c_out, c_in)?;
                if !self.same(c_new, c_new_name) {
                    return Err("the carried cell state is not the LSTM's new cell state".into());
                }
                (
                    Cell::Lstm {
                        input_forget: false,
                        peepholes: false,
                    },
                    acts,
                    pre,
                    order,
                    Some(c_in),
                )
            };

        // pre = x_t · W + h · R (+ b); a GRU keeps h · R + b_R apart.
        let mut x_term = None;
        let mut h_term = None;
        let mut bias = None;
        let mut h_bias = None;
        let mut terms = self.terms(pre);
        if let Some((h_sum, _)) = &gru_sums {
            terms.extend(self.terms(h_sum));
        }
        for term in terms {
            if let Some(n) = self.node(term, "MatMul") {
                if let Some((x, t)) = self.gathered(&n.input[0]) {
                    if x_term.replace((x, t, n.input[1].as_str())).is_some() {
                        return Err("two input products".into());
                    }
                    continue;
                }
                if matches!(self.value(&n.input[0]), Value::BodyInput(k) if k == h_in) {
                    h_term = Some(n.input[1].as_str());
                    continue;
                }
                return Err(format!("unexpected product '{term}' in the pre-activation"));
            }
            let in_h_sum = gru_sums
                .as_ref()
                .is_some_and(|(h_sum, _)| self.terms(h_sum).contains(&term));
            let slot = if in_h_sum { &mut h_bias } else { &mut bias };
            if slot.replace(term).is_some() {
                return Err("more than one bias term in a pre-activation".into());
            }
        }
        let (x, t_x, w_name) = x_term.ok_or("no input product (x_t · W) in the body")?;
        let r_name = h_term.ok_or("no recurrent product in the pre-activation")?;
        seen.time(t_x)?;
        let time_in = seen.time.expect("noted");
        let mask = seen.mask;

        // Roles of the carried values.
        let mut carried = vec![Carried::PassThrough; carried_count];
        for (j, role) in carried.iter_mut().enumerate() {
            let k = j + 2;
            let out = self.outputs[1 + j];
            *role = if k == h_in {
                Carried::Hidden
            } else if Some(k) == c_in {
                Carried::Cell
            } else if k == time_in {
                self.increment_of(out, k)?;
                Carried::Time
            } else if self.carried_role_is_pass_through(j) {
                Carried::PassThrough
            } else if self.same(seen.strip(self, out, k)?, h_new) {
                Carried::LastOutput
            } else {
                return Err(format!(
                    "loop-carried value {j} ('{out}') is not a recognised state"
                ));
            };
        }
        if !carried.contains(&Carried::Time) {
            return Err("the step counter is not loop-carried".into());
        }
        let last_output = carried
            .iter()
            .position(|c| *c == Carried::LastOutput)
            .map(|j| self.outputs[1 + j]);
        let mut scans = Vec::new();
        for &scan in scan_outputs {
            scans.push(
                if self.same(scan, h_out) || (mask.is_none() && self.same(scan, h_new)) {
                    ScanOf::Hidden
                } else if last_output.is_some_and(|o| self.same(scan, o)) {
                    ScanOf::LastOutput
                } else {
                    return Err(format!("scan output '{scan}' is not the layer's output"));
                },
            );
        }

        let stop = self.stop_terms(self.outputs[0], time_in)?;
        let h_order = gru_sums.map_or(gate_order.clone(), |(_, o)| o);
        let weights = keras_weights(
            &cell,
            (&gate_order, &h_order),
            self.weight(w_name)?,
            self.weight(r_name)?,
            (
                bias.map(|b| self.weight(b)).transpose()?,
                h_bias.map(|b| self.weight(b)).transpose()?,
            ),
        )?;
        let hidden = weights.r.shape()[2];
        let input_size = weights.w.shape()[2];
        Ok(KerasLoop {
            cell,
            hidden,
            input_size,
            activations,
            weights,
            x: x.to_string(),
            mask: mask.map(str::to_string),
            carried,
            scans,
            stop,
        })
    }

    /// `h = o ⊙ act_h(c')`, `c' = f ⊙ c + i ⊙ act_g(g)` with i, f, g, o the four parts of one
    /// Split. Returns the pre-activation name, the Split output index of each ONNX gate
    /// (i, o, f, c), the activations (f, g, h), the cell state's body input and `c'`.
    #[allow(clippy::type_complexity)]
    fn lstm(
        &self,
        h_new: &'a str,
    ) -> Match<(&'a str, Vec<usize>, Vec<Activation>, usize, &'a str)> {
        let not_lstm =
            || "the new state is neither act(x·W + h·R + b) nor an LSTM cell".to_string();
        let split_part = |name: &'a str| -> Option<(&'a NodeProto, usize)> {
            match self.value(name) {
                Value::Node(n, i) if n.op_type == "Split" => Some((n, i)),
                _ => None,
            }
        };
        let gate = |name: &'a str| -> Option<(Activation, &'a NodeProto, usize)> {
            let (act, input) = self.activation(name)?;
            let (split, i) = split_part(input)?;
            Some((act, split, i))
        };
        for (o_name, hc_name) in self.operands(h_new, "Mul").ok_or_else(not_lstm)? {
            let (Some((act_f, split, o_idx)), Some((act_h, c_new))) =
                (gate(o_name), self.activation(hc_name))
            else {
                continue;
            };
            for (fc, ig) in self.operands(c_new, "Add").ok_or_else(not_lstm)? {
                for (f_name, c_prev) in self.operands(fc, "Mul").into_iter().flatten() {
                    let Value::BodyInput(c_in) = self.value(c_prev) else {
                        continue;
                    };
                    if c_in < 2 || c_in > self.outputs.len() {
                        continue;
                    }
                    let Some((act_f2, split_f, f_idx)) = gate(f_name) else {
                        continue;
                    };
                    for (i_name, g_name) in self.operands(ig, "Mul").into_iter().flatten() {
                        let (Some((act_i, split_i, i_idx)), Some((act_g, split_g, g_idx))) =
                            (gate(i_name), gate(g_name))
                        else {
                            continue;
                        };
                        let one_split = [split_f, split_i, split_g]
                            .iter()
                            .all(|s| std::ptr::eq(*s, split));
                        let mut parts = [i_idx, f_idx, g_idx, o_idx];
                        parts.sort_unstable();
                        // Keras's order is i, f, c, o; i and c are told apart by position.
                        if !one_split || parts != [0, 1, 2, 3] || i_idx > g_idx {
                            continue;
                        }
                        if act_f != act_f2 || act_f != act_i {
                            return Err("the LSTM's input, forget and output gates use different activations (ONNX has one for all three)".into());
                        }
                        self.check_split(split, 4)?;
                        return Ok((
                            split.input[0].as_str(),
                            vec![i_idx, o_idx, f_idx, g_idx],
                            vec![act_f, act_g, act_h],
                            c_in,
                            c_new,
                        ));
                    }
                }
            }
        }
        Err(not_lstm())
    }

    /// Keras 3's GRU (`reset_after=True`): `h = z ⊙ h₋₁ + (1 − z) ⊙ hh`,
    /// `hh = act_g(x_h + r ⊙ h_h)`, `z = act_f(x_z + h_z)`, `r = act_f(x_r + h_r)`, with the
    /// x parts one Split of `x·W + b_W` and the h parts column slices of `h₋₁·R + b_R`.
    /// `Ok(None)` when the new state does not have the GRU's outer shape.
    fn gru(&self, h_new: &'a str, h_in: usize) -> Match<Option<GruMatch<'a>>> {
        let Some(pairs) = self.operands(h_new, "Add") else {
            return Ok(None);
        };
        for (keep, update) in pairs {
            for (z, h_prev) in self.operands(keep, "Mul").into_iter().flatten() {
                if !matches!(self.value(h_prev), Value::BodyInput(k) if k == h_in) {
                    continue;
                }
                for (one_minus_z, hh) in self.operands(update, "Mul").into_iter().flatten() {
                    let Some(sub) = self.node(one_minus_z, "Sub") else {
                        continue;
                    };
                    if self.scalar(&sub.input[0]) != Some(1.0) || !self.same(&sub.input[1], z) {
                        continue;
                    }
                    return self.gru_gates(z, hh, h_in).map(Some);
                }
            }
        }
        Ok(None)
    }

    fn gru_gates(&self, z: &'a str, hh: &'a str, h_in: usize) -> Match<GruMatch<'a>> {
        let (act_z, z_x, z_h) = self
            .gru_gate(z)
            .ok_or("the GRU's update gate is not act(x_z + h_z)")?;
        let (act_g, inner) = self
            .activation(hh)
            .ok_or("the GRU's candidate is not act(...)")?;
        let mut candidate = None;
        for (x_h, reset_part) in self.operands(inner, "Add").into_iter().flatten() {
            for (r, h_h) in self.operands(reset_part, "Mul").into_iter().flatten() {
                if let (Some(gate), Some(_)) = (self.gru_gate(r), self.x_part(x_h)) {
                    candidate = Some((x_h, h_h, gate));
                }
            }
        }
        let (x_h, h_h, (act_r, r_x, r_h)) = candidate.ok_or(
            "the GRU's candidate is not act(x_h + r ⊙ (h·R_h + b)): only reset_after=True (Keras 3's default) is supported",
        )?;
        if act_z != act_r {
            return Err("the GRU's update and reset gates use different activations".into());
        }
        let x_parts = [z_x, r_x, x_h].map(|n| self.x_part(n));
        let [Some((split, xz)), Some((split_r, xr)), Some((split_h, xh))] = x_parts else {
            return Err("the GRU's input parts are not one Split".into());
        };
        if !(std::ptr::eq(split, split_r) && std::ptr::eq(split, split_h)) {
            return Err("the GRU's input parts come from different Splits".into());
        }
        let h_sum = self
            .h_base(z_h)
            .ok_or("the GRU's recurrent parts are not slices of h·R + b")?;
        let recurrent = self
            .terms(h_sum)
            .into_iter()
            .find_map(|t| {
                self.node(t, "MatMul")
                    .filter(|n| matches!(self.value(&n.input[0]), Value::BodyInput(k) if k == h_in))
            })
            .ok_or("the GRU's recurrent parts do not contain h·R")?;
        let hidden = self.weight(&recurrent.input[1])?.shape()[0];
        let mut h_order = Vec::new();
        for part in [z_h, r_h, h_h] {
            let (base, idx) = self
                .h_part(part, hidden)
                .ok_or("a GRU recurrent part is not a third of h·R + b")?;
            if !self.same(base, h_sum) {
                return Err("the GRU's recurrent parts come from different sums".into());
            }
            h_order.push(idx);
        }
        let x_order = vec![xz, xr, xh];
        for order in [&x_order, &h_order] {
            let mut sorted = order.clone();
            sorted.sort_unstable();
            if sorted != [0, 1, 2] {
                return Err("the GRU's gates do not use three distinct parts".into());
            }
        }
        Ok(GruMatch {
            x_sum: split.input[0].as_str(),
            h_sum,
            x_order,
            h_order,
            activations: vec![act_z, act_g],
        })
    }

    /// `act(a + b)` with one of a, b an input part and the other a recurrent part.
    fn gru_gate(&self, name: &'a str) -> Option<(Activation, &'a str, &'a str)> {
        let (act, sum) = self.activation(name)?;
        self.operands(sum, "Add")?
            .into_iter()
            .find(|(x, _)| self.x_part(x).is_some())
            .map(|(x, h)| (act, x, h))
    }

    /// Output `i` of a 3-way Split (last axis) of a sum holding the input product.
    fn x_part(&self, name: &'a str) -> Option<(&'a NodeProto, usize)> {
        match self.value(name) {
            Value::Node(n, i) if n.op_type == "Split" && n.output.len() == 3 => {
                let input_product = self.terms(&n.input[0]).iter().any(|t| {
                    self.node(t, "MatMul")
                        .is_some_and(|m| self.gathered(&m.input[0]).is_some())
                });
                (input_product && self.check_split(n, 3).is_ok()).then_some((n, i))
            }
            _ => None,
        }
    }

    /// The sum a recurrent part is cut from.
    fn h_base(&self, name: &'a str) -> Option<&'a str> {
        match self.value(name) {
            Value::Node(n, _) if n.op_type == "Slice" || n.op_type == "Split" => {
                Some(n.input[0].as_str())
            }
            _ => None,
        }
    }

    /// Which third (of `3·hidden` columns) of its base a recurrent part is.
    fn h_part(&self, name: &'a str, hidden: usize) -> Option<(&'a str, usize)> {
        let Value::Node(n, out) = self.value(name) else {
            return None;
        };
        match n.op_type.as_str() {
            "Split" => (n.output.len() == 3 && self.check_split(n, 3).is_ok())
                .then_some((n.input[0].as_str(), out)),
            "Slice" => {
                let consts = |i: usize| -> Option<Vec<i64>> {
                    let t = match self.value(n.input.get(i)?) {
                        Value::Const(t) => t.clone(),
                        Value::Outer(o) => (self.outer)(o)?,
                        _ => return None,
                    };
                    constant_i64(&t).map(|a| a.iter().copied().collect())
                };
                let (starts, ends) = (consts(1)?, consts(2)?);
                let axes = consts(3).unwrap_or_else(|| (0..starts.len() as i64).collect());
                if consts(4).is_some_and(|st| st.iter().any(|&v| v != 1)) {
                    return None;
                }
                let mut part = None;
                for ((&st, &en), &ax) in starts.iter().zip(&ends).zip(&axes) {
                    match ax {
                        0 | -2 if st == 0 && en >= i32::MAX as i64 => {}
                        1 | -1 => {
                            let (st, en) = (usize::try_from(st).ok()?, usize::try_from(en).ok()?);
                            let whole = en >= 3 * hidden && st == 2 * hidden;
                            if st % hidden != 0 || !(en == st + hidden || whole) {
                                return None;
                            }
                            part = Some(st / hidden);
                        }
                        _ => return None,
                    }
                }
                part.map(|p| (n.input[0].as_str(), p))
            }
            _ => None,
        }
    }

    /// The Split of the LSTM's pre-activation must cut the last axis into four equal parts.
    fn check_split(&self, split: &NodeProto, parts: usize) -> Match<()> {
        let axis = split
            .attribute
            .iter()
            .find(|a| a.name == "axis")
            .map_or(0, |a| a.i);
        if split.output.len() != parts || !(axis == 1 || axis == -1) {
            return Err(format!("the gates' Split is not {parts} parts of axis 1"));
        }
        let sizes = split
            .attribute
            .iter()
            .find(|a| a.name == "split")
            .map(|a| a.ints.clone())
            .or_else(|| {
                split
                    .input
                    .get(1)
                    .filter(|n| !n.is_empty())
                    .and_then(|n| match self.value(n) {
                        Value::Const(t) => constant_i64(t).map(|a| a.iter().copied().collect()),
                        _ => None,
                    })
            });
        match sizes {
            Some(s) if s.windows(2).any(|w| w[0] != w[1]) => {
                Err("the gates' Split has unequal parts".into())
            }
            _ => Ok(()),
        }
    }

    /// The carried output `out` is `t + 1` for body input `k`.
    fn increment_of(&self, out: &'a str, k: usize) -> Match<()> {
        for (a, b) in self
            .operands(out, "Add")
            .ok_or("the step counter is not t + 1")?
        {
            if matches!(self.value(a), Value::BodyInput(j) if j == k) && self.scalar(b) == Some(1.0)
            {
                return Ok(());
            }
        }
        Err("the step counter is not t + 1".into())
    }

    fn scalar(&self, name: &'a str) -> Option<f64> {
        let t = match self.value(name) {
            Value::Const(t) => t.clone(),
            Value::Outer(n) => (self.outer)(n)?,
            _ => return None,
        };
        let v: Vec<f64> = match constant_f32(&t) {
            Some(a) => a.iter().map(|&v| v as f64).collect(),
            None => constant_i64(&t)?.iter().map(|&v| v as f64).collect(),
        };
        (v.len() == 1).then(|| v[0])
    }

    /// The continue condition as `counter < bound` terms joined by And.
    fn stop_terms(&self, cond: &'a str, time_in: usize) -> Match<Vec<StopTerm>> {
        let unsupported =
            || format!("continue condition '{cond}' is not a conjunction of counter < constant");
        if matches!(self.value(cond), Value::BodyInput(1)) {
            return Ok(vec![]);
        }
        if let Some(n) = self.node(cond, "And") {
            let mut terms = Vec::new();
            for i in &n.input {
                terms.extend(self.stop_terms(i, time_in)?);
            }
            return Ok(terms);
        }
        let less = self.node(cond, "Less").ok_or_else(unsupported)?;
        let bound = self.scalar(&less.input[1]).ok_or_else(unsupported)?;
        let mut counter = less.input[0].as_str();
        if let Some(c) = self.node(counter, "Cast") {
            counter = c.input[0].as_str();
        }
        let counter = match self.value(counter) {
            Value::BodyInput(0) => Counter::Iteration,
            _ if self.increment_of(counter, time_in).is_ok() => Counter::NextTime,
            _ => return Err(unsupported()),
        };
        Ok(vec![StopTerm { counter, bound }])
    }
}

/// Keras kernels (`[I, G·H]`, `[H, G·H]`, biases `[G·H]`) to ONNX W `[1, G·H, I]`,
/// R `[1, G·H, H]`, B `[1, 2·G·H]`. `orders` gives, for each ONNX gate, the part of the input
/// and of the recurrent pre-activation it is (they differ only for a GRU, whose recurrent
/// part is sliced on its own); the recurrent bias is a GRU's `b_R` (zeros otherwise).
fn keras_weights(
    cell: &Cell,
    orders: (&[usize], &[usize]),
    kernel: ArrayD<f32>,
    recurrent: ArrayD<f32>,
    biases: (Option<ArrayD<f32>>, Option<ArrayD<f32>>),
) -> Match<RecurrentWeights> {
    let gates = cell.gates();
    let as2 = |a: ArrayD<f32>, what: &str| -> Match<Array2<f32>> {
        a.into_dimensionality()
            .map_err(|_| format!("{what} is not a matrix"))
    };
    let kernel = as2(kernel, "the input kernel")?;
    let recurrent = as2(recurrent, "the recurrent kernel")?;
    let h = recurrent.nrows();
    let gh = gates * h;
    if recurrent.ncols() != gh || kernel.ncols() != gh {
        return Err(format!(
            "kernels of shape {:?} and {:?} do not fit {gates} gates of {h}",
            kernel.shape(),
            recurrent.shape()
        ));
    }
    let bias = |b: Option<ArrayD<f32>>| -> Match<Array2<f32>> {
        match b {
            None => Ok(Array2::zeros((1, gh))),
            Some(b) if b.len() == gh => {
                Ok(b.into_shape_with_order((1, gh)).expect("length checked"))
            }
            Some(b) => Err(format!("bias of shape {:?} does not fit {gh}", b.shape())),
        }
    };
    let reorder = |m: &Array2<f32>, order: &[usize]| -> Array2<f32> {
        let parts: Vec<_> = order
            .iter()
            .map(|&g| m.slice(s![.., g * h..(g + 1) * h]))
            .collect();
        concatenate(Axis(1), &parts).expect("equal rows")
    };
    let w = reorder(&kernel, orders.0)
        .t()
        .to_owned()
        .insert_axis(Axis(0));
    let r = reorder(&recurrent, orders.1)
        .t()
        .to_owned()
        .insert_axis(Axis(0));
    let wb = reorder(&bias(biases.0)?, orders.0);
    let rb = reorder(&bias(biases.1)?, orders.1);
    let b = concatenate(Axis(1), &[wb.view(), rb.view()]).expect("one row");
    Ok(RecurrentWeights {
        w: w.into_dyn(),
        r: r.into_dyn(),
        b: Some(b.into_dyn()),
        p: None,
    })
}
