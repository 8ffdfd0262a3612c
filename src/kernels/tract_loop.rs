//! Keras recurrent layers that tf2onnx wrote as ONNX `Loop`s, run in tract by recur's kernels.
//!
//! tract 0.23.9 has no `Loop` operator. The importer registered here recognises the bodies of
//! Keras SimpleRNN and LSTM (masked or not, `crate::onnx::keras_loop`) and wires one
//! [`KerasLoopOp`] that computes every output of the Loop exactly as ONNX Runtime runs the
//! body; any other body stays an error naming the node.

use std::sync::Arc;

use tract_onnx::model::{OnnxOpRegister, ParsingContext};
use tract_onnx::pb::{NodeProto, TensorProto};
use tract_onnx::tract_hir::internal::*;

use super::{run_layer, run_layer_masked, KerasMask, LayerSpec, LayerWeights};
use crate::ir::Direction;
use crate::onnx::keras_loop::{recognise, Carried, Counter, KerasLoop, ScanOf};

/// Registers the `Loop` importer.
pub fn register(ops: &mut OnnxOpRegister) {
    ops.insert("Loop", import);
}

fn outer_constant(ctx: &ParsingContext, name: &str) -> Option<TensorProto> {
    let graphs = ctx
        .parent_graphs
        .iter()
        .rev()
        .copied()
        .chain(ctx.model.graph.as_ref());
    for graph in graphs {
        if let Some(t) = graph.initializer.iter().find(|t| t.name == name) {
            return Some(t.clone());
        }
        for node in &graph.node {
            if node.op_type == "Constant" && node.output.first().is_some_and(|o| o == name) {
                return node
                    .attribute
                    .iter()
                    .find(|a| a.name == "value")
                    .and_then(|a| a.t.clone());
            }
        }
    }
    None
}

fn import(
    ctx: &ParsingContext,
    pb: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let display = if pb.name.is_empty() {
        "Loop"
    } else {
        pb.name.as_str()
    };
    let lookup = |name: &str| outer_constant(ctx, name);
    let keras = recognise(pb, &lookup).map_err(|why| {
        anyhow!("node '{display}' (Loop): not a recurrent body recur recognises: {why}")
    })?;
    if pb.output.iter().any(|o| o.is_empty()) || pb.input.len() < 2 + keras.carried.len() {
        bail!("node '{display}' (Loop): unnamed outputs or missing loop-carried inputs");
    }
    let present = |i: usize| pb.input.get(i).is_some_and(|n| !n.is_empty());
    let slot = |i: usize| pb.input[..i].iter().filter(|n| !n.is_empty()).count();
    let n_present = pb.input.iter().filter(|n| !n.is_empty()).count();
    if (2..2 + keras.carried.len()).any(|i| !present(i)) {
        bail!("node '{display}' (Loop): a loop-carried input is absent");
    }
    let spec = LayerSpec {
        cell: keras.cell.clone(),
        direction: Direction::Forward,
        hidden: keras.hidden,
        activations: vec![keras.activations.clone()],
        clip: None,
    };
    let w = &keras.weights;
    fn view3(
        a: &ndarray::ArrayD<f32>,
    ) -> Result<ndarray::ArrayView3<'_, f32>, ndarray::ShapeError> {
        a.view().into_dimensionality()
    }
    let weights = LayerWeights::prepare(
        &spec,
        view3(&w.w)?,
        view3(&w.r)?,
        w.b.as_ref()
            .map(|b| b.view().into_dimensionality())
            .transpose()?,
        None,
    )
    .map_err(|e| anyhow!("node '{display}' (Loop): {e}"))?;
    let mut closures = vec![keras.x.clone()];
    closures.extend(keras.mask.clone());
    let op = KerasLoopOp {
        node: display.to_string(),
        trip_count: present(0).then(|| slot(0)),
        condition: present(1).then(|| slot(1)),
        first_carried: slot(2),
        x: n_present,
        mask: keras.mask.as_ref().map(|_| n_present + 1),
        spec,
        weights: Arc::new(weights),
        keras: Arc::new(keras),
    };
    Ok((expand(KerasLoopExpansion(op)), closures))
}

#[derive(Debug, Clone)]
struct KerasLoopExpansion(KerasLoopOp);

impl Expansion for KerasLoopExpansion {
    fn name(&self) -> StaticName {
        "recur.KerasLoop".into()
    }

    fn nboutputs(&self) -> TractResult<usize> {
        Ok(self.0.keras.carried.len() + self.0.keras.scans.len())
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        let op = &self.0;
        let carried = op.keras.carried.len();
        check_output_arity(outputs, carried + op.keras.scans.len())?;
        for j in 0..carried {
            let input = &inputs[op.first_carried + j];
            s.equals(&outputs[j].datum_type, &input.datum_type)?;
            s.equals(&outputs[j].shape, &input.shape)?;
        }
        let x = &inputs[op.x];
        s.equals(&x.rank, 3)?;
        for scan in &outputs[carried..] {
            s.equals(&scan.datum_type, f32::datum_type())?;
            s.equals(&scan.rank, 3)?;
            s.equals(&scan.shape[0], &x.shape[0])?;
            s.equals(&scan.shape[1], &x.shape[1])?;
            s.equals(&scan.shape[2], op.keras.hidden.to_dim())?;
        }
        Ok(())
    }

    fn wire(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        model.wire_node(prefix, self.0.clone(), inputs)
    }
}

/// A recognised Keras loop as one tract op: all the Loop's outputs (carried values, then scan
/// outputs), from its inputs followed by the step input and the mask it reads from outside.
#[derive(Debug, Clone)]
pub struct KerasLoopOp {
    node: String,
    trip_count: Option<usize>,
    condition: Option<usize>,
    first_carried: usize,
    x: usize,
    mask: Option<usize>,
    spec: LayerSpec,
    weights: Arc<LayerWeights>,
    keras: Arc<KerasLoop>,
}

impl PartialEq for KerasLoopOp {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.keras, &other.keras) && self.node == other.node
    }
}

impl Eq for KerasLoopOp {}

impl Op for KerasLoopOp {
    fn name(&self) -> StaticName {
        format!("recur.Keras{}Loop", self.spec.cell.op_name()).into()
    }

    op_as_typed_op!();
}

impl TypedOp for KerasLoopOp {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let mut facts: TVec<TypedFact> = (0..self.keras.carried.len())
            .map(|j| inputs[self.first_carried + j].without_value())
            .collect();
        let x = inputs[self.x];
        if x.rank() != 3 {
            bail!(
                "node '{}' (Loop): the step input has rank {}, expected 3",
                self.node,
                x.rank()
            );
        }
        for _ in &self.keras.scans {
            facts.push(f32::fact([
                x.shape[0].clone(),
                x.shape[1].clone(),
                self.keras.hidden.to_dim(),
            ]));
        }
        Ok(facts)
    }

    as_op!();
}

impl EvalOp for KerasLoopOp {
    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        self.compute(&inputs)
            .map_err(|e| anyhow!("node '{}' (Loop): {e}", self.node))
    }

    op_out_of_plan!();
}

fn scalar_i64(t: &Tensor) -> TractResult<i64> {
    let t = t.cast_to::<i64>()?;
    let v = t.to_plain_array_view::<i64>()?;
    if v.len() != 1 {
        bail!("expected a scalar, got shape {:?}", t.shape());
    }
    Ok(*v.iter().next().expect("one value"))
}

impl KerasLoopOp {
    /// How many iterations the Loop runs, from its trip count, initial condition and the
    /// body's continue condition (ONNX Loop semantics).
    fn iterations(&self, inputs: &[TValue], t0: i64, steps: usize) -> TractResult<usize> {
        let max = self
            .trip_count
            .map(|i| scalar_i64(&inputs[i]))
            .transpose()?;
        let mut go = match self.condition {
            Some(i) => inputs[i]
                .cast_to::<bool>()?
                .to_plain_array_view::<bool>()?
                .iter()
                .all(|b| *b),
            None => true,
        };
        let mut n: i64 = 0;
        while go && max.is_none_or(|m| n < m) {
            if n as usize > steps {
                break;
            }
            let (iteration, next_time) = (n as f64, (t0 + n + 1) as f64);
            go = self.keras.stop.iter().all(|term| match term.counter {
                Counter::Iteration => iteration < term.bound,
                Counter::NextTime => next_time < term.bound,
            });
            n += 1;
        }
        Ok(n as usize)
    }

    fn compute(&self, inputs: &[TValue]) -> TractResult<TVec<TValue>> {
        use tract_ndarray::{Ix2, Ix3};
        let keras = &self.keras;
        let carried_input = |role: Carried| {
            keras
                .carried_index(role)
                .map(|j| &inputs[self.first_carried + j])
        };
        let x = inputs[self.x]
            .to_plain_array_view::<f32>()?
            .into_dimensionality::<Ix3>()?;
        let (t_len, batch, features) = x.dim();
        if features != keras.input_size {
            bail!(
                "the step input has {features} features, the kernel expects {}",
                keras.input_size
            );
        }
        let t0 = scalar_i64(carried_input(Carried::Time).expect("recognised loops count steps"))?;
        let n = self.iterations(inputs, t0, t_len)?;
        if t0 != 0 || n != t_len {
            bail!("the loop would run steps {t0}..{} of an input with {t_len} steps; recur runs a Keras loop only over the whole input", t0 + n as i64);
        }
        let state = |role: Carried| -> TractResult<Option<tract_ndarray::ArrayView3<f32>>> {
            match carried_input(role) {
                None => Ok(None),
                Some(t) => {
                    let v = t
                        .to_plain_array_view::<f32>()?
                        .into_dimensionality::<Ix2>()?;
                    if v.dim() != (batch, keras.hidden) {
                        bail!(
                            "{role:?} state has shape {:?}, expected [{batch}, {}]",
                            v.shape(),
                            keras.hidden
                        );
                    }
                    Ok(Some(v.insert_axis(tract_ndarray::Axis(0))))
                }
            }
        };
        let (h0, c0) = (state(Carried::Hidden)?, state(Carried::Cell)?);
        let (outputs, last_output) = match self.mask {
            None => (run_layer(&self.spec, &self.weights, x, None, h0, c0), None),
            Some(i) => {
                let m = inputs[i].cast_to::<bool>()?;
                let m = m.to_plain_array_view::<bool>()?;
                let m = match m.ndim() {
                    3 if m.shape()[2] == 1 => m.index_axis_move(tract_ndarray::Axis(2), 0),
                    2 => m,
                    _ => bail!(
                        "mask has shape {:?}, expected [{t_len}, {batch}, 1]",
                        m.shape()
                    ),
                };
                let m = m.into_dimensionality::<Ix2>()?;
                if m.dim() != (t_len, batch) {
                    bail!(
                        "mask has shape {:?}, expected [{t_len}, {batch}]",
                        m.shape()
                    );
                }
                let initial_output = state(Carried::LastOutput)?
                    .map(|v| v.index_axis_move(tract_ndarray::Axis(0), 0));
                // Y stacks the last output; a scan of the hidden state equals it only when both
                // start equal.
                if let (Some(out0), true) = (&initial_output, keras.scans.contains(&ScanOf::Hidden))
                {
                    let same = match &h0 {
                        Some(h0) => h0.index_axis(tract_ndarray::Axis(0), 0) == *out0,
                        None => out0.iter().all(|v| *v == 0.0),
                    };
                    if !same {
                        bail!("a scan of the hidden state with a last output that starts elsewhere is not supported");
                    }
                }
                let (outputs, last) = run_layer_masked(
                    &self.spec,
                    &self.weights,
                    x,
                    KerasMask {
                        mask: m,
                        initial_output,
                    },
                    h0,
                    c0,
                );
                (outputs, Some(last))
            }
        };
        let h = keras.hidden;
        let mut results: TVec<TValue> = TVec::new();
        for (j, role) in keras.carried.iter().enumerate() {
            let input = &inputs[self.first_carried + j];
            let value = match role {
                Carried::PassThrough => input.clone().into_tensor(),
                Carried::Time => tensor0(t0 + n as i64)
                    .cast_to_dt(input.datum_type())?
                    .into_owned()
                    .into_shape(input.shape())?,
                Carried::Hidden => outputs
                    .y_h
                    .index_axis(tract_ndarray::Axis(0), 0)
                    .to_owned()
                    .into_tensor(),
                Carried::Cell => outputs
                    .y_c
                    .index_axis(tract_ndarray::Axis(0), 0)
                    .to_owned()
                    .into_tensor(),
                Carried::LastOutput => last_output
                    .clone()
                    .unwrap_or_else(|| outputs.y_h.index_axis(tract_ndarray::Axis(0), 0).to_owned())
                    .into_tensor(),
            };
            results.push(value.into_tvalue());
        }
        for _ in &keras.scans {
            // Y holds the last output at masked steps, which (checked above) is the hidden state.
            let y = outputs.y.clone().into_shape_with_order((t_len, batch, h))?;
            results.push(y.into_tensor().into_tvalue());
        }
        Ok(results)
    }
}
