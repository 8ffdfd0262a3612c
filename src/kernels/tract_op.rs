//! recur's kernels inside tract: the ONNX importer's LSTM, GRU and RNN entries are replaced
//! by an expansion that keeps tract's shape rules (its `CommonRec`) but wires a single
//! [`RecurrentOp`] running [`super::run_layer`], so every attribute is computed exactly.

use std::sync::Arc;

use tract_onnx::model::{OnnxOpRegister, ParsingContext};
use tract_onnx::ops::rec::common::{CommonRec, WireBody};
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;
use tract_onnx::tract_hir::ops as hir_ops;

use super::{run_layer, LayerSpec, LayerWeights};
use crate::ir::{Cell, Layout};

/// Replaces tract's LSTM, GRU and RNN importers with recur's.
pub fn register(ops: &mut OnnxOpRegister) {
    ops.insert("LSTM", import);
    ops.insert("GRU", import);
    ops.insert("RNN", import);
}

/// tract's body for the op, used only for its shape rules (gate multipliers).
fn rules_body(pb: &NodeProto, cell: &Cell) -> Box<dyn WireBody> {
    use tract_onnx::ops::rec::{gru::GRU, lstm::LSTM, rnn::RNN};
    match cell {
        Cell::Lstm { .. } => Box::new(LSTM {
            f: Box::new(hir_ops::nn::sigmoid()),
            g: Box::new(hir_ops::math::tanh()),
            h: Box::new(hir_ops::math::tanh()),
        }),
        Cell::Gru {
            linear_before_reset,
        } => Box::new(GRU {
            f: Box::new(hir_ops::nn::sigmoid()),
            g: Box::new(hir_ops::math::tanh()),
            linear_before_reset: *linear_before_reset,
        }),
        Cell::Rnn => {
            let _ = pb;
            Box::new(RNN {
                fore: Box::new(hir_ops::math::tanh()),
                back: Box::new(hir_ops::math::tanh()),
            })
        }
    }
}

fn import(
    _ctx: &ParsingContext,
    pb: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let display = if pb.name.is_empty() {
        pb.op_type.clone()
    } else {
        pb.name.clone()
    };
    let attrs = crate::onnx::recurrent_attributes(pb, &display).map_err(|e| anyhow!("{e}"))?;
    let common = CommonRec::from_node_and_options(pb, 3, 0, rules_body(pb, &attrs.cell))?;
    let op = RecurrentOp {
        spec: LayerSpec {
            cell: attrs.cell,
            direction: attrs.direction,
            hidden: attrs.hidden_size.unwrap_or(0),
            activations: attrs.activations,
            clip: attrs.clip,
        },
        batch_first: attrs.layout == Layout::BatchFirst,
        slots: Slots {
            bias: common.optional_bias_input,
            sequence_lens: common.optional_sequence_lens_input,
            initial_h: common.optional_initial_h_input,
            initial_c: common.optional_initial_c_input,
            peepholes: common.optional_p_input,
            y: common.optional_y_output,
            y_h: common.optional_y_h_output,
            y_c: common.optional_y_c_output,
        },
        prepared: None,
    };
    Ok((expand(RecurrentExpansion { common, op }), vec![]))
}

/// Positions of the optional inputs and outputs among the node's present ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Slots {
    bias: Option<usize>,
    sequence_lens: Option<usize>,
    initial_h: Option<usize>,
    initial_c: Option<usize>,
    peepholes: Option<usize>,
    y: Option<usize>,
    y_h: Option<usize>,
    y_c: Option<usize>,
}

#[derive(Debug, Clone)]
struct RecurrentExpansion {
    common: CommonRec,
    op: RecurrentOp,
}

impl Expansion for RecurrentExpansion {
    fn name(&self) -> StaticName {
        format!("recur.{}", self.op.spec.cell.op_name()).into()
    }

    fn validation(&self) -> Validation {
        Validation::Rounding
    }

    fn nboutputs(&self) -> TractResult<usize> {
        self.common.nboutputs()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        self.common.rules(s, inputs, outputs)
    }

    fn wire(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        let mut op = self.op.clone();
        let r_fact = model.outlet_fact(inputs[2])?;
        if op.spec.hidden == 0 {
            op.spec.hidden = r_fact.shape[2].to_usize().context("hidden_size unknown")?;
        }
        let konst = |slot: Option<usize>| -> TractResult<Option<Arc<Tensor>>> {
            Ok(match slot {
                None => None,
                Some(i) => model.outlet_fact(inputs[i])?.konst.clone(),
            })
        };
        let (w, r) = (konst(Some(1))?, konst(Some(2))?);
        let (b, p) = (konst(op.slots.bias)?, konst(op.slots.peepholes)?);
        let weights_constant = w.is_some()
            && r.is_some()
            && (op.slots.bias.is_none() || b.is_some())
            && (op.slots.peepholes.is_none() || p.is_some());
        if weights_constant {
            op.prepared = Some(Arc::new(prepare(
                &op.spec,
                w.as_deref().expect("checked"),
                r.as_deref().expect("checked"),
                b.as_deref(),
                p.as_deref(),
            )?));
        }
        model.wire_node(prefix, op, inputs)
    }
}

fn prepare(
    spec: &LayerSpec,
    w: &Tensor,
    r: &Tensor,
    b: Option<&Tensor>,
    p: Option<&Tensor>,
) -> TractResult<LayerWeights> {
    fn view3(t: &Tensor) -> TractResult<tract_ndarray::ArrayView3<'_, f32>> {
        Ok(t.to_plain_array_view::<f32>()?
            .into_dimensionality::<tract_ndarray::Ix3>()?)
    }
    fn view2(t: &Tensor) -> TractResult<tract_ndarray::ArrayView2<'_, f32>> {
        Ok(t.to_plain_array_view::<f32>()?
            .into_dimensionality::<tract_ndarray::Ix2>()?)
    }
    let (w, r) = (view3(w)?, view3(r)?);
    let b = b.map(view2).transpose()?;
    let p = p.map(view2).transpose()?;
    LayerWeights::prepare(spec, w, r, b, p).map_err(|e| anyhow!("{e}"))
}

/// One recurrent layer as a single tract op, computed by recur's kernels.
#[derive(Debug, Clone)]
pub struct RecurrentOp {
    spec: LayerSpec,
    batch_first: bool,
    slots: Slots,
    prepared: Option<Arc<LayerWeights>>,
}

impl PartialEq for RecurrentOp {
    fn eq(&self, other: &Self) -> bool {
        self.spec == other.spec
            && self.batch_first == other.batch_first
            && self.slots == other.slots
            && match (&self.prepared, &other.prepared) {
                (None, None) => true,
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                _ => false,
            }
    }
}

impl Eq for RecurrentOp {}

impl Op for RecurrentOp {
    fn name(&self) -> StaticName {
        format!("recur.{}", self.spec.cell.op_name()).into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "{:?} hidden={} batch_first={} weights {}",
            self.spec.direction,
            self.spec.hidden,
            self.batch_first,
            if self.prepared.is_some() {
                "prepared at load"
            } else {
                "read at run time"
            }
        )])
    }

    fn validation(&self) -> Validation {
        Validation::Rounding
    }

    op_as_typed_op!();
}

impl EvalOp for RecurrentOp {
    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        self.compute(&inputs)
    }

    op_out_of_plan!();
}

impl RecurrentOp {
    fn compute(&self, inputs: &[TValue]) -> TractResult<TVec<TValue>> {
        use tract_ndarray::Ix3;
        let x = inputs[0]
            .to_plain_array_view::<f32>()?
            .into_dimensionality::<Ix3>()?;
        let x = if self.batch_first {
            x.permuted_axes([1, 0, 2])
        } else {
            x
        };
        let (t_len, batch, _) = x.dim();
        let owned;
        let weights = match &self.prepared {
            Some(w) => w.as_ref(),
            None => {
                let slot = |s: Option<usize>| s.map(|i| &*inputs[i]);
                owned = prepare(
                    &self.spec,
                    &inputs[1],
                    &inputs[2],
                    slot(self.slots.bias),
                    slot(self.slots.peepholes),
                )?;
                &owned
            }
        };
        if x.dim().2 != weights.input_size() {
            bail!(
                "X has {} features, W expects {}",
                x.dim().2,
                weights.input_size()
            );
        }
        let lengths = match self.slots.sequence_lens {
            None => None,
            Some(i) => {
                let lens = inputs[i].cast_to::<i64>()?;
                let lens = lens.to_plain_array_view::<i64>()?;
                if lens.len() != batch {
                    bail!("sequence_lens has {} entries for batch {batch}", lens.len());
                }
                let mut out = Vec::with_capacity(batch);
                for &l in lens.iter() {
                    if l < 0 || l as usize > t_len {
                        bail!("sequence_lens value {l} is outside 0..={t_len}");
                    }
                    out.push(l as usize);
                }
                Some(out)
            }
        };
        let state = |slot: Option<usize>| -> TractResult<Option<_>> {
            match slot {
                None => Ok(None),
                Some(i) => {
                    let v = inputs[i]
                        .to_plain_array_view::<f32>()?
                        .into_dimensionality::<Ix3>()?;
                    Ok(Some(if self.batch_first {
                        v.permuted_axes([1, 0, 2])
                    } else {
                        v
                    }))
                }
            }
        };
        let (h0, c0) = (state(self.slots.initial_h)?, state(self.slots.initial_c)?);
        let out = run_layer(&self.spec, weights, x, lengths.as_deref(), h0, c0);

        let dirs = self.spec.direction.count();
        let h = self.spec.hidden;
        let mut results: Vec<(usize, Tensor)> = vec![];
        if let Some(slot) = self.slots.y {
            let y = out.y.into_shape_with_order((t_len, dirs, batch, h))?;
            let y = if self.batch_first {
                y.permuted_axes([2, 0, 1, 3])
                    .as_standard_layout()
                    .into_owned()
            } else {
                y
            };
            results.push((slot, y.into_tensor()));
        }
        for (slot, value) in [(self.slots.y_h, out.y_h), (self.slots.y_c, out.y_c)] {
            if let Some(slot) = slot {
                let value = if self.batch_first {
                    value
                        .permuted_axes([1, 0, 2])
                        .as_standard_layout()
                        .into_owned()
                } else {
                    value
                };
                results.push((slot, value.into_tensor()));
            }
        }
        results.sort_by_key(|(slot, _)| *slot);
        Ok(results.into_iter().map(|(_, t)| t.into_tvalue()).collect())
    }
}

impl TypedOp for RecurrentOp {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let x = &inputs[0].shape;
        let (t, b) = if self.batch_first {
            (x[1].clone(), x[0].clone())
        } else {
            (x[0].clone(), x[1].clone())
        };
        let d = self.spec.direction.count().to_dim();
        let h = self.spec.hidden.to_dim();
        let mut facts: Vec<(usize, TypedFact)> = vec![];
        if let Some(slot) = self.slots.y {
            let shape = if self.batch_first {
                tvec![b.clone(), t.clone(), d.clone(), h.clone()]
            } else {
                tvec![t.clone(), d.clone(), b.clone(), h.clone()]
            };
            facts.push((slot, f32::fact(shape)));
        }
        for slot in [self.slots.y_h, self.slots.y_c].into_iter().flatten() {
            let shape = if self.batch_first {
                tvec![b.clone(), d.clone(), h.clone()]
            } else {
                tvec![d.clone(), b.clone(), h.clone()]
            };
            facts.push((slot, f32::fact(shape)));
        }
        facts.sort_by_key(|(slot, _)| *slot);
        Ok(facts.into_iter().map(|(_, f)| f).collect())
    }

    as_op!();
}
