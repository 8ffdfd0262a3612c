//! The guard in front of tract: every model feature that tract 0.23.9 computes wrongly
//! (without any error) or refuses is turned into a refusal that names the node and the reason,
//! before tract sees the model.
//!
//! Each rule was measured against ONNX Runtime on the fixtures under `models/`, and
//! `tests/fixtures.rs` re-checks that every refused fixture really is wrong or failing on
//! plain tract, so a rule that becomes unnecessary shows up there.

use std::collections::HashMap;

use crate::ir::{Cell, Direction, Layout, RecurrentModel, SequenceLens};

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
/// `input_shapes` are the shapes of the fed inputs when known: they give the number of steps of
/// a recurrent node whose X is a graph input. With them, constant uniform `sequence_lens` that
/// cannot be shown to equal that number are refused; without them (before a run) that check
/// is left for run time.
pub fn tract_refusals(
    model: &RecurrentModel,
    input_shapes: Option<&HashMap<String, Vec<usize>>>,
) -> Vec<Refusal> {
    let registry = tract_onnx::onnx().op_register;
    let mut refusals = Vec::new();
    for layer in &model.layers {
        let mut refuse = |reason: String| {
            refusals.push(Refusal {
                node: layer.node.clone(),
                op: layer.op.clone(),
                reason,
            })
        };
        if let crate::ir::LayerKind::Loop { .. } = layer.kind {
            refuse("ONNX Loop (tf2onnx's form of a Keras SimpleRNN, masked or Keras 3 GRU layer): tract 0.23.9 has no Loop operator".into());
            continue;
        }
        if !registry.0.contains_key(&layer.op) {
            refuse(format!(
                "op {} is not implemented by tract 0.23.9",
                layer.op
            ));
            continue;
        }
        let crate::ir::LayerKind::Recurrent(rec) = &layer.kind else {
            continue;
        };
        if rec.direction == Direction::Reverse {
            refuse("direction=reverse: tract 0.23.9 ignores the attribute and runs the sequence forward".into());
        }
        if rec.custom_activations {
            let names: Vec<String> = rec.activations[0].iter().map(|a| a.to_string()).collect();
            refuse(format!(
                "activations=[{}]: tract 0.23.9 ignores the attribute and uses the default functions",
                names.join(", ")
            ));
        }
        if let Some(clip) = rec.clip {
            refuse(format!(
                "clip={clip}: tract 0.23.9 ignores the attribute and never clips"
            ));
        }
        if let Cell::Lstm {
            input_forget: true, ..
        } = rec.cell
        {
            refuse("input_forget=1: tract 0.23.9 ignores the attribute".into());
        }
        if rec.cell
            == (Cell::Gru {
                linear_before_reset: true,
            })
            && rec.input_size == Some(1)
        {
            refuse("linear_before_reset=1 with input size 1: tract 0.23.9's fused GRU fails on it ('xw not contiguous')".into());
        }
        // Measured: only tract's fused forward path fails here; bidirectional, layout=1 and
        // peephole LSTMs take another path and compute it right.
        if matches!(
            rec.cell,
            Cell::Lstm {
                peepholes: false,
                ..
            }
        ) && rec.direction == Direction::Forward
            && rec.layout == Layout::SequenceFirst
            && rec.outputs.y_h
            && rec.outputs.y_c
            && !rec.initial_h.is_present()
            && !rec.initial_c.is_present()
        {
            let batch = input_shapes
                .and_then(|shapes| shapes.get(rec.input_names.first()?))
                .and_then(|shape| shape.get(1).copied());
            if batch.is_none_or(|b| b > 1) {
                refuse("forward LSTM using Y_h and Y_c without initial states: tract 0.23.9's fused path fails on it for batch sizes above 1 ('Clashing resolution for expression')".into());
            }
        }
        if rec.layout == Layout::BatchFirst && rec.direction == Direction::Bidirectional {
            refuse("layout=1 with direction=bidirectional: tract 0.23.9 fails on it".into());
        }
        match &rec.sequence_lens {
            SequenceLens::Absent => {}
            SequenceLens::GraphInput { name } | SequenceLens::Computed { name } => refuse(format!(
                "sequence_lens '{name}' is known only at run time: tract 0.23.9 needs constant, uniform lengths"
            )),
            SequenceLens::Constant { uniform: false, values } => refuse(format!(
                "sequence_lens {values:?} are ragged: tract 0.23.9 needs uniform lengths"
            )),
            // Checked once the input shapes are known (at run time).
            SequenceLens::Constant { uniform: true, .. } if input_shapes.is_none() => {}
            SequenceLens::Constant {
                uniform: true,
                values,
            } => {
                let steps = input_shapes
                    .and_then(|shapes| shapes.get(rec.input_names.first()?))
                    .and_then(|shape| match rec.layout {
                        Layout::SequenceFirst => shape.first().copied(),
                        Layout::BatchFirst => shape.get(1).copied(),
                    });
                let full = match (steps, values.first()) {
                    (Some(t), Some(&v)) => v == t as i64,
                    _ => false,
                };
                if !full {
                    refuse(format!(
                        "sequence_lens {values:?} cannot be shown to cover every step: tract 0.23.9 ignores lengths shorter than the sequence"
                    ));
                }
            }
        }
    }
    refusals
}
