//! The executor's fast path for a streamed step: the compiled graph specialised to one set of
//! input shapes in which every recurrent node runs exactly one time step (`T = 1`).
//!
//! A streamed step does a few microseconds of arithmetic, so the general executor's per-run
//! costs (a fresh array for every value, constants copied into the value slots, a layer's
//! buffers allocated per call) dominate it. Here every value's shape is known when the
//! program is built, each value has a buffer that lives as long as the program, shape-only
//! ops (Reshape, Squeeze, Unsqueeze, Flatten, order-keeping Transpose) share their input's
//! buffer, and recurrent nodes step through [`crate::kernels::step_layer`] with their state
//! buffers kept. A run allocates only the output tensors it returns.
//!
//! Data movement (Gather with constant indices, Slice, Transpose, Concat) and broadcasting
//! become maps from output element to input element, computed once.
//!
//! Built for the input shapes of the last run; a graph with an op or a shape outside this set
//! (integer values computed at run time, Shape, ConstantOfShape, a sequence longer than one
//! step) keeps to the general executor. The two agree to float rounding, not bit for bit:
//! Softmax sums a lane and Gemm adds its bias in another order here (`tests/stream.rs`
//! compares them, and ONNX Runtime, within 1e-5).

use ndarray::{ArrayD, IxDyn};

use super::{axis, broadcast_shape, concat, gather, reshape_target, slice_view, Op, Value};
use crate::ir::ActivationKind;
use crate::kernels::linalg::{matmul_packed, matvec_packed};
use crate::kernels::{step_layer, StepBuffers};
use crate::tensor::HostTensor;

/// One op of a [`StepProgram`]; `op` indexes the plan's op (weights, attributes).
#[derive(Debug)]
enum StepOp {
    Recurrent {
        op: usize,
        x: usize,
        h0: Option<usize>,
        c0: Option<usize>,
        /// Buffers of the new hidden state (Y_h, and Y, which holds the same values after one
        /// step) and cell state (Y_c), when the graph uses them.
        h_out: Option<usize>,
        c_out: Option<usize>,
        buffers: Box<StepBuffers>,
        /// Y_h and Y_c when the graph does not use them.
        spare: [Vec<f32>; 2],
    },
    Dense {
        op: usize,
        x: usize,
        out: usize,
        /// The bias broadcast to the output (`[rows, n]`), when there is one.
        bias: Option<Vec<f32>>,
    },
    Binary {
        kind: char,
        a: usize,
        b: usize,
        out: usize,
        /// For each output element, the element of a and of b it takes (None: the same
        /// index, the operand having the output's shape).
        a_map: Option<Vec<u32>>,
        b_map: Option<Vec<u32>>,
    },
    Unary {
        kind: ActivationKind,
        x: usize,
        out: usize,
    },
    Softmax {
        x: usize,
        out: usize,
        /// The shape as `[outer, axis, inner]`: each lane is `axis` values `inner` apart.
        lanes: [usize; 3],
    },
    /// Values picked from one or more buffers by a map fixed when the program is built
    /// (Gather with constant indices, Slice, a Transpose that moves data, Concat), kept as
    /// runs of consecutive values: the output is the runs one after another, each
    /// `buffers[sources[run.source]][run.from..run.from + run.len]`. In a one-step program
    /// most such ops move a size-1 time axis, so their map is one run: a single copy.
    Pick {
        sources: Vec<usize>,
        runs: Vec<PickRun>,
        out: usize,
    },
}

/// Consecutive values of one source buffer that a [`StepOp::Pick`] copies together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PickRun {
    source: u32,
    from: u32,
    len: u32,
}

/// A pick's map (`(source, index)` per output value, in output order) as runs of consecutive
/// values.
fn pick_runs(map: impl IntoIterator<Item = (u32, u32)>) -> Vec<PickRun> {
    let mut runs: Vec<PickRun> = Vec::new();
    for (source, index) in map {
        match runs.last_mut() {
            Some(run) if run.source == source && run.from + run.len == index => run.len += 1,
            _ => runs.push(PickRun {
                source,
                from: index,
                len: 1,
            }),
        }
    }
    runs
}

/// Every element of a value of this shape, tagged with its source number: what a data
/// movement op applied to it gives is that op's map.
fn iota(source: u32, shape: &[usize]) -> Result<ArrayD<(u32, u32)>, Why> {
    let n: usize = shape.iter().product();
    let n32 = u32::try_from(n).map_err(|_| "a value too large to map".to_string())?;
    ArrayD::from_shape_vec(IxDyn(shape), (0..n32).map(|i| (source, i)).collect())
        .map_err(|e| e.to_string())
}

/// A graph compiled for one set of input shapes with one time step per recurrent node.
#[derive(Debug)]
pub(super) struct StepProgram {
    /// The input shapes it was built for.
    key: Vec<Vec<usize>>,
    /// One buffer per value, except that a value with the data of another (a reshape, or Y
    /// next to Y_h) shares its buffer: ops refer to buffers by index.
    buffers: Vec<Vec<f32>>,
    ops: Vec<StepOp>,
    /// The input buffers, in the plan's input order.
    inputs: Vec<usize>,
    /// Buffer and shape of each graph output, in graph order.
    outputs: Vec<(usize, IxDyn)>,
}

/// Why a graph keeps to the general executor for these shapes (for logs).
type Why = String;

impl StepProgram {
    /// Builds the program for these input shapes (the plan's inputs, in order), or says why
    /// the general executor keeps them.
    pub(super) fn build(plan: &super::NativePlan, key: Vec<Vec<usize>>) -> Result<Self, Why> {
        // Per slot: its shape once known, and the buffer that holds its data.
        let mut shapes: Vec<Option<Vec<usize>>> = vec![None; plan.slots];
        let mut storage: Vec<usize> = (0..plan.slots).collect();
        let mut buffers: Vec<Vec<f32>> = vec![vec![]; plan.slots];
        for (slot, value) in &plan.constants {
            if let Value::F32(a) = value {
                shapes[*slot] = Some(a.shape().to_vec());
                buffers[*slot] = a.iter().copied().collect();
            }
        }
        for ((_, slot), shape) in plan.inputs.iter().zip(&key) {
            shapes[*slot] = Some(shape.clone());
            buffers[*slot] = vec![0.0; shape.iter().product()];
        }
        let shape_of = |shapes: &[Option<Vec<usize>>], s: usize| -> Result<Vec<usize>, Why> {
            shapes[s]
                .clone()
                .ok_or_else(|| "an integer or uncomputed value".to_string())
        };
        let int_constant = |slot: usize| {
            plan.constants.iter().find_map(|(s, v)| match v {
                Value::I64(a) if *s == slot => Some(a),
                _ => None,
            })
        };
        let pick = |map: ArrayD<(u32, u32)>, sources: Vec<usize>, out: usize| {
            let shape = map.shape().to_vec();
            let op = StepOp::Pick {
                sources,
                runs: pick_runs(map.iter().copied()),
                out,
            };
            (Some(op), shape)
        };
        let mut ops = Vec::with_capacity(plan.ops.len());
        for (index, op) in plan.ops.iter().enumerate() {
            // The op (None: a shape-only op, whose output shares its input's buffer), and
            // the shapes of the values it makes.
            let (step_op, made): (Option<StepOp>, Vec<(usize, Vec<usize>)>) = match op {
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
                    let xs = shape_of(&shapes, *x)?;
                    if xs.len() != 3 {
                        return Err(format!("X of rank {}", xs.len()));
                    }
                    let (t_len, batch) = if *batch_first {
                        (xs[1], xs[0])
                    } else {
                        (xs[0], xs[1])
                    };
                    if t_len != 1 {
                        return Err(format!("{t_len} time steps"));
                    }
                    if lens.is_some() {
                        return Err("sequence_lens".into());
                    }
                    if xs[2] != weights.input_size() {
                        return Err("X does not fit W".into());
                    }
                    let (d, h) = (spec.direction.count(), spec.hidden);
                    if *batch_first && d > 1 && batch > 1 {
                        return Err("batch-first bidirectional batch".into());
                    }
                    let state_shape = if *batch_first {
                        vec![batch, d, h]
                    } else {
                        vec![d, batch, h]
                    };
                    for s in [h0, c0].into_iter().flatten() {
                        if shape_of(&shapes, *s)? != state_shape {
                            return Err("an initial state of another shape".into());
                        }
                    }
                    let y_shape = if *batch_first {
                        vec![batch, 1, d, h]
                    } else {
                        vec![1, d, batch, h]
                    };
                    let [y, y_h, y_c] = *outs;
                    // After one step Y holds Y_h's values: one buffer for both.
                    let h_out = y_h.or(y);
                    if let (Some(y), Some(y_h)) = (y, y_h) {
                        storage[y] = storage[y_h];
                    }
                    let mut made = vec![];
                    for (slot, shape) in [(y, &y_shape), (y_h, &state_shape), (y_c, &state_shape)] {
                        if let Some(slot) = slot {
                            made.push((slot, shape.clone()));
                        }
                    }
                    let size = d * batch * h;
                    let op = StepOp::Recurrent {
                        op: index,
                        x: storage[*x],
                        h0: h0.map(|s| storage[s]),
                        c0: c0.map(|s| storage[s]),
                        h_out: h_out.map(|s| storage[s]),
                        c_out: y_c.map(|s| storage[s]),
                        buffers: Box::new(StepBuffers::new(spec, batch)),
                        spare: [vec![0.0; size], vec![0.0; size]],
                    };
                    (Some(op), made)
                }
                Op::Dense {
                    x, w, bias, out, ..
                } => {
                    let xs = shape_of(&shapes, *x)?;
                    let (k, n) = w.dim();
                    if xs.last() != Some(&k) {
                        return Err("input does not fit the matrix".into());
                    }
                    let rows: usize = xs[..xs.len() - 1].iter().product();
                    let bias = match bias {
                        Some(b) if b.ndim() <= 2 => Some(
                            b.broadcast(IxDyn(&[rows, n]))
                                .ok_or("a bias that widens the product")?
                                .iter()
                                .copied()
                                .collect(),
                        ),
                        Some(_) => return Err("a bias that widens the product".into()),
                        None => None,
                    };
                    let mut ys = xs[..xs.len() - 1].to_vec();
                    ys.push(n);
                    let op = StepOp::Dense {
                        op: index,
                        x: storage[*x],
                        out: storage[*out],
                        bias,
                    };
                    (Some(op), vec![(*out, ys)])
                }
                Op::Binary { kind, a, b, out } => {
                    let (sa, sb) = (shape_of(&shapes, *a)?, shape_of(&shapes, *b)?);
                    let so = broadcast_shape(&sa, &sb)?;
                    let op = StepOp::Binary {
                        kind: *kind,
                        a: storage[*a],
                        b: storage[*b],
                        out: storage[*out],
                        a_map: broadcast_map(&sa, &so)?,
                        b_map: broadcast_map(&sb, &so)?,
                    };
                    (Some(op), vec![(*out, so)])
                }
                Op::Unary { kind, x, out } => {
                    let op = StepOp::Unary {
                        kind: *kind,
                        x: storage[*x],
                        out: storage[*out],
                    };
                    (Some(op), vec![(*out, shape_of(&shapes, *x)?)])
                }
                Op::Softmax { axis: ax, x, out } => {
                    let s = shape_of(&shapes, *x)?;
                    let ax = axis(*ax, s.len())?;
                    let op = StepOp::Softmax {
                        x: storage[*x],
                        out: storage[*out],
                        lanes: [
                            s[..ax].iter().product(),
                            s[ax],
                            s[ax + 1..].iter().product(),
                        ],
                    };
                    (Some(op), vec![(*out, s)])
                }
                Op::Reshape { x, rule, out } => {
                    let s = shape_of(&shapes, *x)?;
                    let target = reshape_target(&s, rule)?;
                    if target.iter().product::<usize>() != s.iter().product::<usize>() {
                        return Err(format!("cannot reshape {s:?} to {target:?}"));
                    }
                    storage[*out] = storage[*x];
                    (None, vec![(*out, target)])
                }
                Op::Transpose { x, perm, out } => {
                    let s = shape_of(&shapes, *x)?;
                    if perm.len() != s.len() || (0..perm.len()).any(|i| !perm.contains(&i)) {
                        return Err("perm does not fit the rank".into());
                    }
                    // The data keeps its order when the axes longer than one keep theirs:
                    // the output shares the input's buffer.
                    let moved: Vec<usize> = perm.iter().copied().filter(|&p| s[p] > 1).collect();
                    if moved.windows(2).any(|w| w[0] > w[1]) {
                        let map = iota(0, &s)?
                            .permuted_axes(IxDyn(perm))
                            .as_standard_layout()
                            .into_owned();
                        let (op, shape) = pick(map, vec![storage[*x]], storage[*out]);
                        (op, vec![(*out, shape)])
                    } else {
                        storage[*out] = storage[*x];
                        (None, vec![(*out, perm.iter().map(|&p| s[p]).collect())])
                    }
                }
                Op::Slice { x, ranges, out } => {
                    let whole = iota(0, &shape_of(&shapes, *x)?)?;
                    let map = slice_view(whole.view(), ranges)?.to_owned();
                    let (op, shape) = pick(map, vec![storage[*x]], storage[*out]);
                    (op, vec![(*out, shape)])
                }
                Op::Gather {
                    data,
                    indices,
                    axis: ax,
                    out,
                } => {
                    let idx = int_constant(*indices).ok_or("indices computed at run time")?;
                    let map = gather(&iota(0, &shape_of(&shapes, *data)?)?, idx, *ax)?;
                    let (op, shape) = pick(map, vec![storage[*data]], storage[*out]);
                    (op, vec![(*out, shape)])
                }
                Op::Concat {
                    inputs,
                    axis: ax,
                    out,
                } => {
                    let mut parts = vec![];
                    for (k, &input) in inputs.iter().enumerate() {
                        parts.push(iota(k as u32, &shape_of(&shapes, input)?)?);
                    }
                    let map = concat(&parts.iter().collect::<Vec<_>>(), *ax)?;
                    let sources = inputs.iter().map(|&i| storage[i]).collect();
                    let (op, shape) = pick(map, sources, storage[*out]);
                    (op, vec![(*out, shape)])
                }
                _ => return Err("an op outside the step path".into()),
            };
            for (slot, shape) in made {
                let buffer = &mut buffers[storage[slot]];
                if buffer.is_empty() {
                    *buffer = vec![0.0; shape.iter().product()];
                }
                shapes[slot] = Some(shape);
            }
            ops.extend(step_op);
        }
        let mut outputs = vec![];
        for (_, slot) in &plan.outputs {
            let shape = shapes[*slot]
                .as_deref()
                .ok_or("an output that is not a float tensor")?;
            outputs.push((storage[*slot], IxDyn(shape)));
        }
        Ok(StepProgram {
            key,
            buffers,
            ops,
            inputs: plan.inputs.iter().map(|(_, s)| storage[*s]).collect(),
            outputs,
        })
    }

    /// The input shapes it was built for.
    pub(super) fn key(&self) -> &[Vec<usize>] {
        &self.key
    }

    /// Whether the program was built for these inputs' shapes (the plan's inputs, in order).
    pub(super) fn fits(&self, given: &[(&str, &HostTensor)]) -> bool {
        super::same_shapes(&self.key, given)
    }

    /// Runs the graph on inputs that [`Self::fits`] (the plan's inputs, in order); the
    /// outputs are then read with [`Self::output`].
    pub(super) fn execute(
        &mut self,
        plan_ops: &[Op],
        given: &[(&str, &HostTensor)],
    ) -> Result<(), String> {
        for (&buffer, (_, tensor)) in self.inputs.iter().zip(given) {
            let HostTensor::F32(a) = tensor else {
                return Err("a non-float input".into());
            };
            let buffer = &mut self.buffers[buffer];
            match a.as_slice() {
                Some(data) => buffer.copy_from_slice(data),
                None => buffer.iter_mut().zip(a.iter()).for_each(|(b, &v)| *b = v),
            }
        }
        for op in &mut self.ops {
            run_op(op, plan_ops, &mut self.buffers)?;
        }
        Ok(())
    }

    /// Graph output `k` (graph order) of the last [`Self::execute`]: its data and shape.
    pub(super) fn output(&self, k: usize) -> (&[f32], &IxDyn) {
        let (buffer, shape) = &self.outputs[k];
        (&self.buffers[*buffer], shape)
    }
}

/// Runs one op: reads its operands' buffers, writes its output's (taken out of the list
/// while the operands are read; no op writes a buffer it reads).
fn run_op(op: &mut StepOp, plan_ops: &[Op], buffers: &mut [Vec<f32>]) -> Result<(), String> {
    let out_of_step = || "the step program is out of step with its plan".to_string();
    match op {
        StepOp::Recurrent {
            op,
            x,
            h0,
            c0,
            h_out,
            c_out,
            buffers: state,
            spare,
        } => {
            let Op::Recurrent { spec, weights, .. } = &plan_ops[*op] else {
                return Err(out_of_step());
            };
            let [spare_h, spare_c] = spare;
            let mut out_h = match h_out {
                Some(b) => std::mem::take(&mut buffers[*b]),
                None => std::mem::take(spare_h),
            };
            let mut out_c = match c_out {
                Some(b) => std::mem::take(&mut buffers[*b]),
                None => std::mem::take(spare_c),
            };
            step_layer(
                spec,
                weights,
                &buffers[*x],
                [
                    h0.map(|b| buffers[b].as_slice()),
                    c0.map(|b| buffers[b].as_slice()),
                ],
                state,
                &mut out_h,
                &mut out_c,
            );
            match h_out {
                Some(b) => buffers[*b] = out_h,
                None => *spare_h = out_h,
            }
            match c_out {
                Some(b) => buffers[*b] = out_c,
                None => *spare_c = out_c,
            }
        }
        StepOp::Dense { op, x, out, bias } => {
            let Op::Dense { w, packed, .. } = &plan_ops[*op] else {
                return Err(out_of_step());
            };
            let (k, n) = w.dim();
            let mut y = std::mem::take(&mut buffers[*out]);
            let x = &buffers[*x];
            match bias {
                Some(b) => y.copy_from_slice(b),
                None => y.fill(0.0),
            }
            // Every row in one blocked product where the CPU has it (a few rows' sums in
            // flight at once, not one row's chain of multiply-adds after another).
            if !matmul_packed(&mut y, x, packed) {
                for (y_row, x_row) in y.chunks_exact_mut(n).zip(x.chunks_exact(k)) {
                    matvec_packed(y_row, x_row, packed);
                }
            }
            buffers[*out] = y;
        }
        StepOp::Binary {
            kind,
            a,
            b,
            out,
            a_map,
            b_map,
        } => {
            let mut o = std::mem::take(&mut buffers[*out]);
            let (av, bv) = (&buffers[*a][..], &buffers[*b][..]);
            let (am, bm) = (a_map.as_deref(), b_map.as_deref());
            // One loop per operation, inlined (not a call through a pointer per value).
            match kind {
                '+' => binary(&mut o, (av, am), (bv, bm), |a, b| a + b),
                '-' => binary(&mut o, (av, am), (bv, bm), |a, b| a - b),
                '*' => binary(&mut o, (av, am), (bv, bm), |a, b| a * b),
                _ => binary(&mut o, (av, am), (bv, bm), |a, b| a / b),
            }
            buffers[*out] = o;
        }
        StepOp::Unary { kind, x, out } => {
            let mut o = std::mem::take(&mut buffers[*out]);
            let f = super::unary_fn(*kind);
            for (o, &x) in o.iter_mut().zip(&buffers[*x]) {
                *o = f(x);
            }
            buffers[*out] = o;
        }
        StepOp::Pick { sources, runs, out } => {
            let mut o = std::mem::take(&mut buffers[*out]);
            let mut at = 0;
            for run in runs {
                let (from, len) = (run.from as usize, run.len as usize);
                let source = &buffers[sources[run.source as usize]];
                if len == 1 {
                    o[at] = source[from];
                } else {
                    o[at..at + len].copy_from_slice(&source[from..from + len]);
                }
                at += len;
            }
            buffers[*out] = o;
        }
        StepOp::Softmax { x, out, lanes } => {
            let [outer, len, inner] = *lanes;
            let mut o = std::mem::take(&mut buffers[*out]);
            o.copy_from_slice(&buffers[*x]);
            for first in (0..outer).flat_map(|a| (0..inner).map(move |b| a * len * inner + b)) {
                let lane = (0..len).map(|j| first + j * inner);
                let m = lane.clone().fold(f32::NEG_INFINITY, |m, i| m.max(o[i]));
                let mut sum = 0.0;
                for i in lane.clone() {
                    o[i] = (o[i] - m).exp();
                    sum += o[i];
                }
                for i in lane {
                    o[i] /= sum;
                }
            }
            buffers[*out] = o;
        }
    }
    Ok(())
}

/// `o[i] = f(a[i], b[i])`, each operand read through its broadcast map when it has one.
#[inline(always)]
fn binary(
    o: &mut [f32],
    (a, a_map): (&[f32], Option<&[u32]>),
    (b, b_map): (&[f32], Option<&[u32]>),
    f: impl Fn(f32, f32) -> f32,
) {
    match (a_map, b_map) {
        (None, None) => {
            for ((o, &a), &b) in o.iter_mut().zip(a).zip(b) {
                *o = f(a, b);
            }
        }
        (None, Some(mb)) => {
            for ((o, &a), &j) in o.iter_mut().zip(a).zip(mb) {
                *o = f(a, b[j as usize]);
            }
        }
        (Some(ma), None) => {
            for ((o, &i), &b) in o.iter_mut().zip(ma).zip(b) {
                *o = f(a[i as usize], b);
            }
        }
        (Some(ma), Some(mb)) => {
            for ((o, &i), &j) in o.iter_mut().zip(ma).zip(mb) {
                *o = f(a[i as usize], b[j as usize]);
            }
        }
    }
}

/// Where each element of a value broadcast to `to` comes from in the value of shape `from`,
/// or None when the shapes are the same.
fn broadcast_map(from: &[usize], to: &[usize]) -> Result<Option<Vec<u32>>, Why> {
    if from == to {
        return Ok(None);
    }
    let source = iota(0, from)?;
    let broadcast = source
        .broadcast(IxDyn(to))
        .ok_or_else(|| format!("{from:?} does not broadcast to {to:?}"))?;
    Ok(Some(broadcast.iter().map(|&(_, i)| i).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pick's runs: consecutive values of one source join a run; a new source, a gap or a
    /// step back starts a new one. Laid end to end, the runs give back the map.
    #[test]
    fn pick_runs_cover_the_map_in_order() {
        let map = [
            (0, 4),
            (0, 5),
            (0, 6),
            (1, 0),
            (1, 2),
            (1, 3),
            (0, 0),
            (0, 0),
        ];
        let runs = pick_runs(map);
        let run = |source, from, len| PickRun { source, from, len };
        assert_eq!(
            runs,
            [
                run(0, 4, 3),
                run(1, 0, 1),
                run(1, 2, 2),
                run(0, 0, 1),
                run(0, 0, 1)
            ]
        );
        let back: Vec<(u32, u32)> = runs
            .iter()
            .flat_map(|r| (r.from..r.from + r.len).map(move |i| (r.source, i)))
            .collect();
        assert_eq!(back, map);
    }

    /// A pick op copies what its map names, single values and runs alike.
    #[test]
    fn a_pick_copies_its_map() {
        let mut buffers = vec![
            (0..8).map(|v| v as f32).collect(),
            vec![10.0, 11.0, 12.0],
            vec![f32::NAN; 6],
        ];
        let map = [(0, 4), (0, 5), (1, 2), (0, 0), (1, 0), (1, 1)];
        let mut op = StepOp::Pick {
            sources: vec![0, 1],
            runs: pick_runs(map),
            out: 2,
        };
        run_op(&mut op, &[], &mut buffers).unwrap();
        assert_eq!(buffers[2], [4.0, 5.0, 12.0, 0.0, 10.0, 11.0]);
    }
}
