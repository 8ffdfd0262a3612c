//! `recur inspect`: what a model holds and which path can run it, as text or JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::backend::tract_guard::{tract_refusals, Refusal};
use crate::ir::{
    format_dims, Cell, Layer, LayerKind, RecurrentLayer, SequenceLens, Source, ValueInfo,
};
use crate::model::Model;

/// Everything `inspect` reports about a model.
#[derive(Debug, Clone, Serialize)]
pub struct InspectReport {
    /// The model file.
    pub model: String,
    /// Exporter that wrote it.
    pub producer: String,
    /// Default-domain opset.
    pub opset: i64,
    /// ONNX IR version.
    pub ir_version: i64,
    /// Scalar parameters held in constants.
    pub parameter_count: usize,
    /// Inputs fed at run time.
    pub inputs: Vec<ValueInfo>,
    /// Graph outputs.
    pub outputs: Vec<ValueInfo>,
    /// Op histogram of the main graph.
    pub op_histogram: BTreeMap<String, usize>,
    /// Every node, classified; recurrent ones with all their attributes.
    pub layers: Vec<Layer>,
    /// Per path (tract, ort, stream, mcu, cudnn): whether it can run the model and, if not,
    /// why.
    pub paths: BTreeMap<String, PathSupport>,
}

/// Whether one path can run the model.
#[derive(Debug, Clone, Serialize)]
pub struct PathSupport {
    /// True when the path runs the model exactly.
    pub runs: bool,
    /// Why not, node by node (empty when it runs).
    pub reasons: Vec<Refusal>,
    /// A remark that applies to the whole path (e.g. not part of this build).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Builds the report for a loaded model.
pub fn inspect(model: &Model) -> InspectReport {
    let ir = &model.ir;
    let tract = tract_refusals(ir);
    let mut paths = BTreeMap::new();
    paths.insert(
        "tract".to_string(),
        PathSupport {
            runs: tract.is_empty(),
            note: None,
            reasons: tract,
        },
    );
    paths.insert("ort".to_string(), ort_support(model));
    paths.insert("stream".to_string(), stream_support(model));
    paths.insert("mcu".to_string(), mcu_support(model));
    paths.insert("cudnn".to_string(), cudnn_support(model));
    InspectReport {
        model: model.path.display().to_string(),
        producer: ir.producer.clone(),
        opset: ir.opset,
        ir_version: ir.ir_version,
        parameter_count: ir.parameter_count,
        inputs: ir.inputs.clone(),
        outputs: ir.outputs.clone(),
        op_histogram: ir.op_histogram.clone(),
        layers: ir.layers.clone(),
        paths,
    }
}

/// Whether the ONNX Runtime path runs the model. ONNX Runtime 1.31 runs every attribute case
/// of the recurrent ops recur has fixtures for, and `Loop`; `layout=1` recurrent nodes (which it
/// refuses) are rewritten to layout 0 before the session is built, which the note says.
fn ort_support(model: &Model) -> PathSupport {
    if !cfg!(feature = "ort") {
        return PathSupport {
            runs: false,
            reasons: vec![],
            note: Some("this recur was built without the 'ort' feature".into()),
        };
    }
    #[cfg(feature = "ort")]
    if model.proto.ir_version > crate::backend::ort::MAX_IR_VERSION {
        return PathSupport {
            runs: false,
            reasons: vec![],
            note: Some(format!(
                "ONNX IR version {} is newer than ONNX Runtime {} reads (at most {})",
                model.proto.ir_version,
                crate::backend::ort::ORT_VERSION,
                crate::backend::ort::MAX_IR_VERSION
            )),
        };
    }
    let batch_first: Vec<&str> = model
        .ir
        .recurrent_layers()
        .filter(|(_, r)| r.layout == crate::ir::Layout::BatchFirst)
        .map(|(l, _)| l.node.as_str())
        .collect();
    PathSupport {
        runs: true,
        reasons: vec![],
        note: (!batch_first.is_empty()).then(|| {
            format!(
                "layout=1 node(s) {} rewritten to layout 0 with Transposes for ONNX Runtime",
                batch_first.join(", ")
            )
        }),
    }
}

/// Whether a streaming session can take the model (the static checks of
/// [`crate::onnx::streamable`]; `recur run --stream` also checks causality on the input).
fn stream_support(model: &Model) -> PathSupport {
    match crate::onnx::streamable::make_streamable(&model.proto, &model.ir) {
        Ok(plan) => PathSupport {
            runs: true,
            reasons: vec![],
            note: Some(format!(
                "sequence input '{}' (time axis {}), {} state tensor(s) carried",
                plan.sequence_input,
                plan.time_axis,
                plan.states.len()
            )),
        },
        Err(e) => refused(e),
    }
}

/// Whether `--backend cudnn` takes the model, and which recurrent nodes it would run on the
/// GPU (decided without one; the others run on the CPU kernels, each named with its reason).
fn cudnn_support(model: &Model) -> PathSupport {
    match crate::backend::cudnn::placements(model) {
        Ok(placements) => {
            let on_gpu = placements
                .iter()
                .filter(|p| p.cpu_because.is_none())
                .count();
            let mut note = format!(
                "{on_gpu} of {} recurrent node(s) on the GPU",
                placements.len()
            );
            for p in placements.iter().filter(|p| p.cpu_because.is_some()) {
                let why = p.cpu_because.as_deref().unwrap_or_default();
                note.push_str(&format!("; '{}' on the CPU: {why}", p.node));
            }
            PathSupport {
                runs: true,
                reasons: vec![],
                note: Some(note),
            }
        }
        Err(e) => PathSupport {
            runs: false,
            reasons: vec![],
            note: Some(crate::error::one_line(&e.to_string())),
        },
    }
}

/// Whether `recur convert --target mcu` can trace the model into the fixed-point layer chain
/// (the f32 cross-check and calibration still run at conversion time).
fn mcu_support(model: &Model) -> PathSupport {
    match crate::quant::chain::trace(model) {
        Ok(_) => PathSupport {
            runs: true,
            reasons: vec![],
            note: None,
        },
        Err(e) => refused(e),
    }
}

/// A path that does not take the model: the node and reason when the error names one.
fn refused(e: crate::error::RecurError) -> PathSupport {
    match e {
        crate::error::RecurError::Unsupported {
            node, op, reason, ..
        } => PathSupport {
            runs: false,
            reasons: vec![Refusal { node, op, reason }],
            note: None,
        },
        e => PathSupport {
            runs: false,
            reasons: vec![],
            note: Some(crate::error::one_line(&e.to_string())),
        },
    }
}

impl InspectReport {
    /// The human-readable form.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let producer = if self.producer.is_empty() {
            "unknown"
        } else {
            &self.producer
        };
        let _ = writeln!(s, "model       {}", self.model);
        let _ = writeln!(
            s,
            "producer    {producer}  (opset {}, IR version {})",
            self.opset, self.ir_version
        );
        let _ = writeln!(s, "parameters  {}", self.parameter_count);
        let _ = writeln!(s, "inputs");
        for v in &self.inputs {
            // An embedding's ids: the range the input is checked against.
            let ids = v.index_limit.as_ref().map_or(String::new(), |l| {
                format!(
                    "  ids {}..={} ('{}')",
                    -(l.rows as i64),
                    l.rows as i64 - 1,
                    l.node
                )
            });
            let _ = writeln!(
                s,
                "  {:<24} {:<8} {}{ids}",
                v.name,
                v.elem_type.numpy_name(),
                format_dims(&v.dims)
            );
        }
        let _ = writeln!(s, "outputs");
        for v in &self.outputs {
            let _ = writeln!(
                s,
                "  {:<24} {:<8} {}",
                v.name,
                v.elem_type.numpy_name(),
                format_dims(&v.dims)
            );
        }
        let ops: Vec<String> = self
            .op_histogram
            .iter()
            .map(|(op, n)| format!("{op} x{n}"))
            .collect();
        let _ = writeln!(s, "ops         {}", ops.join(", "));
        let _ = writeln!(s, "layers");
        for layer in &self.layers {
            if let Some(line) = describe_layer(layer) {
                let _ = writeln!(s, "  {line}");
            }
        }
        let _ = writeln!(s, "paths");
        for (name, support) in &self.paths {
            if support.runs {
                match &support.note {
                    Some(note) => {
                        let _ = writeln!(s, "  {name:<6} yes ({note})");
                    }
                    None => {
                        let _ = writeln!(s, "  {name:<6} yes");
                    }
                }
            } else if support.reasons.is_empty() {
                let _ = writeln!(
                    s,
                    "  {name:<6} no: {}",
                    support.note.as_deref().unwrap_or("unsupported")
                );
            } else {
                let _ = writeln!(s, "  {name:<6} no");
                for r in &support.reasons {
                    let _ = writeln!(s, "         node '{}' ({}): {}", r.node, r.op, r.reason);
                }
                if let Some(note) = &support.note {
                    let _ = writeln!(s, "         note: {note}");
                }
            }
        }
        s
    }
}

/// One line for a layer worth listing (glue is left out of the text form).
fn describe_layer(layer: &Layer) -> Option<String> {
    let what = match &layer.kind {
        LayerKind::Recurrent(r) => describe_recurrent(r),
        LayerKind::Embedding { vocab, dim } => format!("embedding {vocab} tokens x {dim}"),
        LayerKind::Dense {
            in_features,
            out_features,
            bias,
        } => format!(
            "dense {in_features} -> {out_features}{}",
            if *bias { " + bias" } else { "" }
        ),
        LayerKind::Activation => "activation".into(),
        LayerKind::Loop { body_ops, .. } => {
            let ops: Vec<String> = body_ops
                .iter()
                .map(|(op, n)| format!("{op} x{n}"))
                .collect();
            format!("loop, body: {}", ops.join(", "))
        }
        LayerKind::Glue => return None,
        LayerKind::Other => "other".into(),
    };
    Some(format!("{:<10} {:<28} {what}", layer.op, layer.node))
}

fn describe_recurrent(r: &RecurrentLayer) -> String {
    let mut parts = vec![];
    if let Some(k) = &r.keras_loop {
        parts.push(match &k.mask {
            Some(m) => format!("keras loop, masked by '{m}':"),
            None => "keras loop:".to_string(),
        });
    }
    parts.extend([
        format!("{:?}", r.direction).to_lowercase(),
        format!("hidden={}", r.hidden_size),
    ]);
    if let Some(i) = r.input_size {
        parts.push(format!("input={i}"));
    }
    parts.push(format!(
        "layout={}",
        match r.layout {
            crate::ir::Layout::SequenceFirst => 0,
            crate::ir::Layout::BatchFirst => 1,
        }
    ));
    let acts: Vec<String> = r
        .activations
        .iter()
        .map(|d| {
            d.iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(",")
        })
        .collect();
    parts.push(format!("activations=[{}]", acts.join(" | ")));
    if let Some(c) = r.clip {
        parts.push(format!("clip={c}"));
    }
    match r.cell {
        Cell::Lstm {
            input_forget,
            peepholes,
        } => {
            parts.push(format!("input_forget={}", input_forget as u8));
            parts.push(format!(
                "peepholes={}",
                if peepholes { "yes" } else { "no" }
            ));
        }
        Cell::Gru {
            linear_before_reset,
        } => parts.push(format!("linear_before_reset={}", linear_before_reset as u8)),
        Cell::Rnn => {}
    }
    parts.push(format!("bias={}", describe_source(&r.bias)));
    parts.push(format!(
        "sequence_lens={}",
        match &r.sequence_lens {
            SequenceLens::Absent => "absent".to_string(),
            SequenceLens::Constant { values, uniform } => format!(
                "constant {values:?}{}",
                if *uniform { "" } else { " (ragged)" }
            ),
            SequenceLens::GraphInput { name } => format!("input '{name}'"),
            SequenceLens::Computed { name } => format!("computed '{name}'"),
        }
    ));
    parts.push(format!("initial_h={}", describe_source(&r.initial_h)));
    if matches!(r.cell, Cell::Lstm { .. }) {
        parts.push(format!("initial_c={}", describe_source(&r.initial_c)));
    }
    let outs: Vec<&str> = [
        (r.outputs.y, "Y"),
        (r.outputs.y_h, "Y_h"),
        (r.outputs.y_c, "Y_c"),
    ]
    .iter()
    .filter(|(used, _)| *used)
    .map(|(_, n)| *n)
    .collect();
    parts.push(format!("outputs={}", outs.join(",")));
    parts.join(" ")
}

fn describe_source(s: &Source) -> String {
    match s {
        Source::Absent => "absent".into(),
        Source::Constant => "constant".into(),
        Source::GraphInput(n) => format!("input '{n}'"),
        Source::Computed(n) => format!("computed '{n}'"),
    }
}
