//! Which recurrent nodes of a compiled graph the cuDNN backend runs on the GPU, and which
//! of them run together as one cuDNN stack: decided from the graph alone, so that `inspect`
//! and the tests can ask on a machine without a GPU.

use super::super::{outputs_of, reads, NativePlan, Op, ShapeRule};
use crate::cuda::rnn::CellMode;
use crate::ir::{Activation, ActivationKind, Cell, Direction, RecurrentModel};
use crate::kernels::LayerSpec;

/// Where one recurrent node runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// The node's name (or `#index` when it has none).
    pub node: String,
    /// Its op type.
    pub op: String,
    /// `None`: on the GPU through cuDNN; else why it runs on the CPU.
    pub cpu_because: Option<String>,
    /// For a node on the GPU, the index of the cuDNN stack it belongs to (nodes that share
    /// one run as a multi-layer network).
    pub stack: Option<usize>,
}

/// What the planner decided, before any GPU object exists (so that it can be checked on a
/// machine without one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Planned {
    /// `plan.ops[i]` on the host.
    Host(usize),
    /// Recurrent ops (indices into `plan.ops`, bottom layer first) as one cuDNN stack; the
    /// ops between them are the squeezes that join them.
    Stack {
        /// The recurrent ops.
        layers: Vec<usize>,
        /// The squeezes between them.
        joins: Vec<usize>,
        /// The cell every layer asks cuDNN for.
        cell: CellMode,
    },
}

/// Whether cuDNN computes this recurrent op exactly as ONNX defines it: the cell to ask
/// cuDNN for, or why not.
pub(super) fn cudnn_cell(
    spec: &LayerSpec,
    batch_first: bool,
    lens: Option<usize>,
) -> Result<CellMode, String> {
    if lens.is_some() {
        return Err("sequence_lens (ragged batches) is not sent to cuDNN".into());
    }
    if batch_first {
        return Err("layout=1 (batch first) is not sent to cuDNN".into());
    }
    if spec.direction == Direction::Reverse {
        return Err("direction reverse: cuDNN runs forward and bidirectional layers only".into());
    }
    if spec.clip.is_some() {
        return Err("clip: cuDNN clips the cell state, ONNX each gate's input".into());
    }
    let defaults = spec.cell.default_activations();
    // An RNN may use relu as well (cuDNN's RNN_RELU); everything else only the defaults.
    let relu = [Activation::plain(ActivationKind::Relu)];
    let every = |wanted: &[Activation]| spec.activations.iter().all(|d| d[..] == *wanted);
    let cell = match spec.cell {
        Cell::Lstm {
            input_forget: true, ..
        } => return Err("input_forget: cuDNN has no coupled gates".into()),
        Cell::Lstm {
            peepholes: true, ..
        } => return Err("peepholes: cuDNN has none".into()),
        Cell::Gru {
            linear_before_reset: false,
        } => return Err(
            "linear_before_reset=0: cuDNN's GRU applies the reset gate after the recurrent product"
                .into(),
        ),
        _ if every(&defaults) => match spec.cell {
            Cell::Lstm { .. } => CellMode::Lstm,
            Cell::Gru { .. } => CellMode::Gru,
            Cell::Rnn => CellMode::RnnTanh,
        },
        Cell::Rnn if every(&relu) => CellMode::RnnRelu,
        _ => {
            let kinds: Vec<ActivationKind> = spec.activations[0].iter().map(|a| a.kind).collect();
            return Err(format!(
                "activations {kinds:?}: cuDNN computes only the ONNX defaults (and relu for RNN)"
            ));
        }
    };
    Ok(cell)
}

/// Where each recurrent node of `plan` would run on the GPU (graph order), decided without
/// one: what [`super::DevicePlan::placements`] reports once built.
pub fn plan_placements(plan: &NativePlan, ir: &RecurrentModel) -> Vec<Placement> {
    plan_units(plan, ir).1
}

/// Decides, for every op of `plan`, whether it runs on the host or in a cuDNN stack, and
/// where each recurrent node runs (graph order).
pub(super) fn plan_units(plan: &NativePlan, ir: &RecurrentModel) -> (Vec<Planned>, Vec<Placement>) {
    // How many ops (and graph outputs) read each slot.
    let mut readers = vec![0usize; plan.slots];
    for op in &plan.ops {
        for s in reads(op) {
            readers[s] += 1;
        }
    }
    for (_, s) in &plan.outputs {
        readers[*s] += 1;
    }
    let mut placements = Vec::new();
    let mut planned = Vec::new();
    let mut i = 0;
    while i < plan.ops.len() {
        let Op::Recurrent {
            node,
            spec,
            batch_first,
            lens,
            ..
        } = &plan.ops[i]
        else {
            planned.push(Planned::Host(i));
            i += 1;
            continue;
        };
        let place = |cpu_because: Option<String>| Placement {
            node: ir.layers[*node].node.clone(),
            op: spec.cell.op_name().to_string(),
            cpu_because,
            stack: None,
        };
        let cell = match cudnn_cell(spec, *batch_first, *lens) {
            Ok(cell) => cell,
            Err(why) => {
                placements.push(place(Some(why)));
                planned.push(Planned::Host(i));
                i += 1;
                continue;
            }
        };
        let stack = Some(
            planned
                .iter()
                .filter(|u| matches!(u, Planned::Stack { .. }))
                .count(),
        );
        placements.push(Placement {
            stack,
            ..place(None)
        });
        let mut layers = vec![i];
        let mut joins = vec![];
        let mut hoisted = vec![];
        // Values the stack makes: nothing it hoists may read them.
        let mut made: Vec<usize> = outputs_of(&plan.ops[i]);
        while let Some(next) = stacked_on(plan, &readers, *layers.last().unwrap(), cell, &made) {
            let Op::Recurrent { node, spec, .. } = &plan.ops[next.layer] else {
                unreachable!("stacked_on returns recurrent ops")
            };
            placements.push(Placement {
                node: ir.layers[*node].node.clone(),
                op: spec.cell.op_name().to_string(),
                cpu_because: None,
                stack,
            });
            made.extend(outputs_of(&plan.ops[next.join]));
            made.extend(outputs_of(&plan.ops[next.layer]));
            joins.push(next.join);
            hoisted.extend(next.between);
            layers.push(next.layer);
        }
        // Ops that lay between the layers (a slice of the initial states, say) read nothing
        // the stack makes, so they run before it.
        planned.extend(hoisted.into_iter().map(Planned::Host));
        i = *layers.last().unwrap() + 1;
        planned.push(Planned::Stack {
            layers,
            joins,
            cell,
        });
    }
    (planned, placements)
}

/// A layer that continues a cuDNN stack, found by [`stacked_on`].
struct NextLayer {
    /// The squeeze between the stack's top and this layer.
    join: usize,
    /// The recurrent op.
    layer: usize,
    /// Other ops between the top and this layer (none reads what the stack makes).
    between: Vec<usize>,
}

/// The recurrent op that continues a cuDNN stack whose top layer is `plan.ops[top]`: it
/// reads `top`'s Y squeezed on axis 1, nothing else reads that Y or the squeezed value, it
/// has the same cell and hidden size, its initial states are not among `made` (what the
/// stack computes), and the ops between are not recurrent and read nothing of `made`.
fn stacked_on(
    plan: &NativePlan,
    readers: &[usize],
    top: usize,
    cell: CellMode,
    made: &[usize],
) -> Option<NextLayer> {
    let Op::Recurrent { spec, outs, .. } = &plan.ops[top] else {
        return None;
    };
    let y = outs[0]?;
    if readers[y] != 1 {
        return None;
    }
    let join = (top + 1..plan.ops.len()).find(|&j| reads(&plan.ops[j]).contains(&y))?;
    let Op::Reshape {
        rule: ShapeRule::Squeeze(Some(axes)),
        out: squeezed,
        ..
    } = &plan.ops[join]
    else {
        return None;
    };
    if axes[..] != [1] || readers[*squeezed] != 1 {
        return None;
    }
    let layer = (join + 1..plan.ops.len()).find(|&k| reads(&plan.ops[k]).contains(squeezed))?;
    let Op::Recurrent {
        spec: next_spec,
        batch_first,
        lens,
        x: next_x,
        h0,
        c0,
        ..
    } = &plan.ops[layer]
    else {
        return None;
    };
    let made_here = |s: &Option<usize>| s.is_some_and(|s| made.contains(&s) || s == *squeezed);
    if *next_x != *squeezed
        || spec.direction != Direction::Forward
        || next_spec.direction != Direction::Forward
        || next_spec.hidden != spec.hidden
        || cudnn_cell(next_spec, *batch_first, *lens).ok() != Some(cell)
        || made_here(h0)
        || made_here(c0)
    {
        return None;
    }
    let between: Vec<usize> = (top + 1..layer).filter(|&k| k != join).collect();
    let independent = between.iter().all(|&k| {
        !matches!(plan.ops[k], Op::Recurrent { .. })
            && reads(&plan.ops[k])
                .iter()
                .all(|s| !made.contains(s) && s != squeezed)
    });
    independent.then_some(NextLayer {
        join,
        layer,
        between,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The planner on a compiled model: which recurrent nodes go to cuDNN, in which stacks.
    fn planned(path: &str) -> (Vec<Planned>, Vec<Placement>) {
        let model = crate::model::Model::load(std::path::Path::new(path)).expect("model");
        let graph = model.proto.graph.as_ref().expect("graph");
        let plan = NativePlan::compile(graph, &model.ir, model.ir.opset).expect("compiles");
        plan_units(&plan, &model.ir)
    }

    #[test]
    fn gates_map_onto_cudnn_ids_as_a_permutation() {
        use crate::cuda::rnn::lin_layer_id;
        for (cell, gates) in [
            (CellMode::Lstm, 4),
            (CellMode::Gru, 3),
            (CellMode::RnnTanh, 1),
        ] {
            let mut ids: Vec<i32> = (0..gates)
                .flat_map(|g| [lin_layer_id(cell, g, false), lin_layer_id(cell, g, true)])
                .collect();
            ids.sort();
            assert_eq!(ids, (0..2 * gates as i32).collect::<Vec<_>>(), "{cell:?}");
        }
        // ONNX LSTM gates i, o, f, c; cuDNN's i, f, c, o.
        assert_eq!(lin_layer_id(CellMode::Lstm, 1, false), 3);
        assert_eq!(lin_layer_id(CellMode::Lstm, 2, true), 5);
        // ONNX GRU gates z, r, h; cuDNN's r, z, h.
        assert_eq!(lin_layer_id(CellMode::Gru, 0, false), 1);
        assert_eq!(lin_layer_id(CellMode::Gru, 1, true), 3);
    }

    #[test]
    fn stacked_lstms_joined_by_a_squeeze_form_one_cudnn_stack() {
        // PyTorch's 2-layer LSTM export: LSTM -> Squeeze(1) -> LSTM -> Squeeze -> ...
        let (units, placements) = planned("models/real/lstm_state_io/model.onnx");
        let stacks: Vec<&Planned> = units
            .iter()
            .filter(|u| matches!(u, Planned::Stack { .. }))
            .collect();
        assert_eq!(stacks.len(), 1, "{units:?}");
        let Planned::Stack { layers, joins, .. } = stacks[0] else {
            unreachable!()
        };
        assert_eq!(layers.len(), 2, "{units:?}");
        assert_eq!(joins, &vec![layers[0] + 1]);
        assert!(
            placements.iter().all(|p| p.cpu_because.is_none()),
            "{placements:?}"
        );
    }

    #[test]
    fn layers_cudnn_computes_exactly_go_to_the_gpu() {
        for name in [
            "lstm_base",
            "gru_lbr1",
            "rnn_base",
            "lstm_initial_states",
            "lstm_nobias",
            "lstm_only_y_h",
        ] {
            let (units, placements) = planned(&format!("models/matrix/{name}/model.onnx"));
            assert!(
                units
                    .iter()
                    .any(|u| matches!(u, Planned::Stack { layers, .. } if layers.len() == 1)),
                "{name}: {units:?}"
            );
            assert!(
                placements.iter().all(|p| p.cpu_because.is_none()),
                "{name}: {placements:?}"
            );
        }
    }

    #[test]
    fn nodes_cudnn_does_not_compute_exactly_stay_on_the_cpu_with_the_reason() {
        let cases = [
            ("gru_lbr0", "linear_before_reset=0"),
            ("lstm_peepholes", "peepholes"),
            ("lstm_input_forget", "input_forget"),
            ("lstm_clip", "clip"),
            ("lstm_reverse", "reverse"),
            ("gru_reverse", "reverse"),
            ("lstm_bidirectional_clip", "clip"),
            ("lstm_layout1", "layout=1"),
            ("lstm_seqlens_full", "sequence_lens"),
            ("lstm_activations", "activations"),
            ("rnn_leakyrelu", "activations"),
        ];
        for (name, why) in cases {
            let path = format!("models/matrix/{name}/model.onnx");
            let (units, placements) = planned(&path);
            assert!(
                units.iter().all(|u| matches!(u, Planned::Host(_))),
                "{path}: {units:?}"
            );
            assert!(
                placements
                    .iter()
                    .any(|p| p.cpu_because.as_deref().is_some_and(|r| r.contains(why))),
                "{path}: {placements:?}"
            );
        }
    }
}
