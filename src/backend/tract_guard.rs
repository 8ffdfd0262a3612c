//! The guard in front of the CPU path: what neither tract nor recur's kernels compute is
//! refused before tract sees the model, naming the node and the reason.
//!
//! LSTM, GRU and RNN nodes are computed by recur's kernels with every ONNX attribute
//! (`crate::kernels`), so no recurrent attribute is refused any more. Stock tract 0.23.9 got
//! several of them wrong without an error (reverse direction, clip, input_forget, activations,
//! sequence_lens) or failed on them; `tests/fixtures.rs` keeps measuring stock tract on every
//! fixture so that record stays current.

use crate::ir::RecurrentModel;

/// Why the tract path refuses one node.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Refusal {
    /// Node name.
    pub node: String,
    /// Op type.
    pub op: String,
    /// The attribute or input at fault, and what tract would do with it.
    pub reason: String,
}

/// The reasons tract cannot run a model exactly; empty when it can.
///
/// The reasons the CPU path cannot run a model exactly; empty when it can.
pub fn tract_refusals(model: &RecurrentModel) -> Vec<Refusal> {
    let registry = super::tract::recur_onnx().op_register;
    let mut refusals = Vec::new();
    for layer in &model.layers {
        let mut refuse = |reason: String| {
            refusals.push(Refusal {
                node: layer.node.clone(),
                op: layer.op.clone(),
                reason,
            })
        };
        if let crate::ir::LayerKind::Loop { why, .. } = &layer.kind {
            refuse(format!(
                "ONNX Loop whose body is not a recurrence recur recognises ({why}); tract 0.23.9 has no Loop operator"
            ));
            continue;
        }
        if !registry.0.contains_key(&layer.op) {
            refuse(format!(
                "op {} is not implemented by tract 0.23.9",
                layer.op
            ));
            continue;
        }
    }
    refusals
}
