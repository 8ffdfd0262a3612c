//! Quantisation for the microcontroller path: trace the model into a layer chain
//! ([`chain`]), calibrate ranges by running it in f32 ([`mod@reference`]), choose scales and write
//! the `.rcm` blob ([`writer`]), then measure the fixed-point result against the f32 model
//! through the same kernel firmware runs ([`sim`]) and report accuracy and memory.

pub mod chain;
pub mod reference;
pub mod sim;
pub mod writer;

use indicatif::{ProgressBar, ProgressStyle};
use ndarray::{ArrayD, Axis, Ix2, Ix3};
use serde::Serialize;

use crate::backend::{self, BackendKind};
use crate::error::{RecurError, Result};
use crate::model::Model;
use crate::tensor::{check_inputs, HostTensor};
pub use chain::{Chain, OutputAct};
pub use reference::ChainInput;
pub use writer::{LayerInfo, WeightBits};

/// Accuracy of the fixed-point model against the f32 model on one data set.
#[derive(Debug, Clone, Serialize)]
pub struct Accuracy {
    /// The data file.
    pub file: String,
    /// Sequences in it.
    pub sequences: usize,
    /// Time steps per sequence.
    pub steps: usize,
    /// Largest |fixed - f32| over all outputs.
    pub max_abs_error: f32,
    /// The same per output channel.
    pub max_abs_error_per_output: Vec<f32>,
    /// Classifiers: fraction of rows whose argmax (sigmoid: side of 0.5) agrees.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub argmax_agreement: Option<f64>,
    /// Classifiers: rows that agree, of all rows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agreeing_rows: Option<[usize; 2]>,
}

/// Flash and RAM the model needs on the microcontroller (kernel code not included).
#[derive(Debug, Clone, Serialize)]
pub struct Memory {
    /// Bytes of the blob (header, tables of layers, scales, weights).
    pub blob_bytes: usize,
    /// Of which layer parameters (weights, biases, multipliers).
    pub parameter_bytes: usize,
    /// The kernel's sigmoid/tanh/exp lookup tables.
    pub lut_bytes: usize,
    /// Flash: blob plus tables.
    pub flash_bytes: usize,
    /// RAM: recurrent state and layer outputs.
    pub state_bytes: usize,
    /// RAM: accumulators, output vector and scratch.
    pub scratch_bytes: usize,
    /// RAM: one input sample.
    pub input_bytes: usize,
    /// RAM for streaming (`step`): state + scratch + input.
    pub ram_bytes: usize,
    /// RAM a session may add for the gate rows' tables, which make each step cheaper
    /// (recur-firmware does; `recur sim` too), `pair_bytes` included.
    pub row_table_bytes: usize,
    /// The part of `row_table_bytes` that holds gate rows repacked two by two (a session with
    /// room for the tables alone runs without them, a little slower).
    pub pair_bytes: usize,
    /// Models with bidirectional layers: window buffer for `run` over the calibration length.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_bytes: Option<usize>,
}

/// The lookup tables' sizes and error bounds (measured by recur-kernel's tests).
#[derive(Debug, Clone, Serialize)]
pub struct LutInfo {
    /// Entries per table.
    pub entries: usize,
    /// Tables and their domains.
    pub tables: Vec<&'static str>,
    /// Bound on |LUT - f64| for tanh, sigmoid, exp.
    pub max_abs_error: [(&'static str, f64); 3],
}

/// What `recur convert --target mcu` reports.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The model file.
    pub model: String,
    /// Weight precision.
    pub weights: WeightBits,
    /// What the f32 reference is.
    pub f32_reference: String,
    /// Largest |traced chain in f32 - tract| on the calibration data (when tract runs it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chain_vs_tract: Option<f32>,
    /// The layer chain with scales.
    pub layers: Vec<LayerInfo>,
    /// On the calibration data.
    pub calibration: Accuracy,
    /// On `--eval` data.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval: Option<Accuracy>,
    /// Flash and RAM.
    pub memory: Memory,
    /// Lookup tables.
    pub lut: LutInfo,
}

/// A converted model: the blob and its report.
#[derive(Debug, Clone)]
pub struct Converted {
    /// The `.rcm` bytes.
    pub blob: Vec<u8>,
    /// The report.
    pub report: Report,
    /// The traced chain.
    pub chain: Chain,
}

/// Checks a data file against the chain's input and converts it (batch-first).
pub fn chain_input(chain: &Chain, data: &HostTensor, what: &str) -> Result<ChainInput> {
    let shape = data.shape().to_vec();
    let bad = |r: String| RecurError::input(what, r);
    match data {
        HostTensor::F32(a) if !chain.tokens => {
            if shape.len() != 3 || shape[2] != chain.input_dim || shape[0] == 0 || shape[1] == 0 {
                return Err(bad(format!(
                    "shape {shape:?}, the model takes float32 [N, T, {}] (batch first)",
                    chain.input_dim
                )));
            }
            if a.iter().any(|v| !v.is_finite()) {
                return Err(bad("contains NaN or infinity".into()));
            }
            Ok(ChainInput::Features(
                a.clone().into_dimensionality::<Ix3>().expect("rank 3"),
            ))
        }
        HostTensor::I64(_) | HostTensor::I32(_) if chain.tokens => {
            if shape.len() != 2 || shape[0] == 0 || shape[1] == 0 {
                return Err(bad(format!(
                    "shape {shape:?}, the model takes token ids [N, T]"
                )));
            }
            let ids = match data {
                HostTensor::I64(a) => a.clone(),
                HostTensor::I32(a) => a.mapv(i64::from),
                _ => unreachable!(),
            };
            Ok(ChainInput::Tokens(
                ids.into_dimensionality::<Ix2>().expect("rank 2"),
            ))
        }
        _ => Err(bad(format!(
            "element type {}, the model takes {}",
            data.elem_type().numpy_name(),
            if chain.tokens {
                "int64 token ids"
            } else {
                "float32 samples"
            }
        ))),
    }
}

/// The f32 model's output on `input` as `[N, (T,) O]`: tract when its path runs the model
/// (checked against the traced chain), else the chain on recur's f32 kernels.
fn f32_reference(
    model: &Model,
    chain: &Chain,
    input: &ChainInput,
    chain_out: &ArrayD<f32>,
) -> Result<(ArrayD<f32>, Option<f32>, String)> {
    let tract_ok = crate::backend::tract_guard::tract_refusals(&model.ir).is_empty();
    if !tract_ok {
        return Ok((
            chain_out.clone(),
            None,
            "recur f32 kernels (tract path refuses the model)".into(),
        ));
    }
    let tensor = match input {
        ChainInput::Features(a) => {
            let a = if chain.input_time_first {
                a.view().permuted_axes([1, 0, 2]).to_owned()
            } else {
                a.clone()
            };
            HostTensor::F32(a.into_dyn())
        }
        ChainInput::Tokens(t) => {
            let t = if chain.input_time_first {
                t.t().to_owned()
            } else {
                t.clone()
            };
            HostTensor::I64(t.into_dyn())
        }
    };
    let checked = check_inputs(&model.ir.inputs, vec![(chain.input_name.clone(), tensor)])?;
    let mut engine = backend::build(BackendKind::Tract, model, &model.path)?;
    let outputs = engine.run(&checked)?;
    let y = chain.canonical_output(&outputs[0].1.to_f32());
    if y.shape() != chain_out.shape() {
        return Err(RecurError::Unsupported {
            backend: "mcu".into(),
            node: chain.output_name.clone(),
            op: "graph output".into(),
            reason: format!(
                "the traced layer chain gives shape {:?}, the model {:?}",
                chain_out.shape(),
                y.shape()
            ),
        });
    }
    let diff = max_abs_diff(&y, chain_out);
    if diff.is_nan() || diff > 1e-3 {
        return Err(RecurError::Unsupported {
            backend: "mcu".into(),
            node: chain.output_name.clone(),
            op: "graph output".into(),
            reason: format!(
                "the traced layer chain differs from the model by {diff:.2e} in f32; refusing rather than guessing"
            ),
        });
    }
    Ok((
        y,
        Some(diff),
        "tract (recur f32 kernels), cross-checked with the traced chain".into(),
    ))
}

fn max_abs_diff(a: &ArrayD<f32>, b: &ArrayD<f32>) -> f32 {
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()))
}

/// Compares fixed-point outputs with the f32 reference.
pub fn accuracy(
    file: &str,
    input: &ChainInput,
    values: &ArrayD<f32>,
    reference: &ArrayD<f32>,
    act: OutputAct,
) -> Accuracy {
    let o = *reference.shape().last().unwrap_or(&1);
    let mut per = vec![0f32; o];
    for (i, (a, b)) in values.iter().zip(reference).enumerate() {
        per[i % o] = per[i % o].max((a - b).abs());
    }
    let rows_a = values
        .view()
        .into_shape_with_order((values.len() / o, o))
        .expect("rows");
    let rows_b = reference
        .view()
        .into_shape_with_order((reference.len() / o, o))
        .expect("rows");
    let classify = |r: ndarray::ArrayView1<f32>| -> usize {
        if o == 1 {
            (r[0] > 0.5) as usize
        } else {
            r.iter()
                .enumerate()
                .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| {
                    if v > bv {
                        (i, v)
                    } else {
                        (bi, bv)
                    }
                })
                .0
        }
    };
    let (agree, total) = if act != OutputAct::None {
        let total = rows_a.nrows();
        let agree = rows_a
            .axis_iter(Axis(0))
            .zip(rows_b.axis_iter(Axis(0)))
            .filter(|(a, b)| classify(a.view()) == classify(b.view()))
            .count();
        (Some(agree), total)
    } else {
        (None, 0)
    };
    Accuracy {
        file: file.into(),
        sequences: input.batch(),
        steps: input.steps(),
        max_abs_error: per.iter().fold(0f32, |m, v| m.max(*v)),
        max_abs_error_per_output: per,
        argmax_agreement: agree.map(|a| a as f64 / total.max(1) as f64),
        agreeing_rows: agree.map(|a| [a, total]),
    }
}

/// Converts a model: trace, calibrate on `calib`, write the blob, measure on `calib` and
/// `eval`. `progress` shows a bar on stderr during calibration.
pub fn convert(
    model: &Model,
    calib: (&str, &HostTensor),
    eval: Option<(&str, &HostTensor)>,
    bits: WeightBits,
    progress: bool,
) -> Result<Converted> {
    let chain = chain::trace(model)?;
    let cal_in = chain_input(&chain, calib.1, calib.0)?;
    let rec_steps: usize = chain
        .stages
        .iter()
        .map(|s| match s {
            chain::Stage::Recurrent { layer, .. } => layer.direction.count(),
            _ => 0,
        })
        .sum::<usize>()
        * cal_in.steps();
    let pb = if progress {
        let pb = ProgressBar::new(rec_steps as u64);
        pb.set_style(
            ProgressStyle::with_template("calibrating {bar:40} {pos}/{len} steps {elapsed}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        Some(pb)
    } else {
        None
    };
    let (chain_out, ranges) = reference::run(&chain, &cal_in, pb.as_ref())?;
    if let Some(pb) = &pb {
        pb.finish_and_clear();
    }
    let (cal_ref, chain_vs_tract, f32_desc) = f32_reference(model, &chain, &cal_in, &chain_out)?;
    let (blob, layers) = writer::write(&chain, &ranges, bits);

    let words = sim::aligned(&blob);
    let parsed = sim::parse(&words, blob.len(), "converted blob")?;
    let cal_sim = sim::simulate(&parsed, calib.1, calib.0)?;
    let calibration = accuracy(
        calib.0,
        &cal_in,
        &cal_sim.values,
        &cal_ref,
        chain.output_act,
    );
    let eval = match eval {
        None => None,
        Some((name, data)) => {
            let ev_in = chain_input(&chain, data, name)?;
            let (ev_chain, _) = reference::run(&chain, &ev_in, None)?;
            let (ev_ref, _, _) = f32_reference(model, &chain, &ev_in, &ev_chain)?;
            let ev_sim = sim::simulate(&parsed, data, name)?;
            Some(accuracy(
                name,
                &ev_in,
                &ev_sim.values,
                &ev_ref,
                chain.output_act,
            ))
        }
    };
    let state: usize = parsed
        .layers
        .iter()
        .map(|l| {
            if l.is_recurrent() {
                l.dirs * l.state_per_dir()
            } else {
                l.out_dim
            }
        })
        .sum::<usize>()
        * 2;
    let parameter_bytes = parsed.layers.iter().map(|l| l.param_bytes()).sum();
    let memory = Memory {
        blob_bytes: blob.len(),
        parameter_bytes,
        lut_bytes: recur_kernel::lut::TABLE_BYTES,
        flash_bytes: blob.len() + recur_kernel::lut::TABLE_BYTES,
        state_bytes: state,
        scratch_bytes: 2 * parsed.session_len() - state + 4 * parsed.acc_len(),
        input_bytes: 2 * parsed.input_dim,
        ram_bytes: parsed.ram_bytes(),
        row_table_bytes: 4 * parsed.tables_len(),
        pair_bytes: 4 * (parsed.tables_len() - parsed.row_tables_len()),
        window_bytes: (!parsed.is_causal()).then(|| 2 * parsed.window_len(cal_in.steps())),
    };
    let report = Report {
        model: model.path.display().to_string(),
        weights: bits,
        f32_reference: f32_desc,
        chain_vs_tract,
        layers,
        calibration,
        eval,
        memory,
        lut: LutInfo {
            entries: recur_kernel::lut::TABLE_LEN,
            tables: vec![
                "tanh on [-8, 8], step 1/32 (sigmoid via tanh(x/2))",
                "exp on [-16, 0], step 1/32",
            ],
            max_abs_error: [("tanh", 1.2e-4), ("sigmoid", 8e-5), ("exp", 1.5e-4)],
        },
    };
    Ok(Converted {
        blob,
        report,
        chain,
    })
}

impl Report {
    /// The report as text lines.
    pub fn to_text(&self) -> String {
        let mut s = format!(
            "model {}\nweights {:?}, f32 reference: {}\n",
            self.model, self.weights, self.f32_reference
        );
        for l in &self.layers {
            s += &format!(
                "  {:<10} {:<24} {:>4} -> {:<4} params {:>6} B  in scale {:.3e}  out scale {:.3e}{}\n",
                l.kind,
                l.node,
                l.input,
                l.output,
                l.param_bytes,
                l.input_scale,
                l.output_scale,
                l.cell_frac_bits.map_or(String::new(), |f| format!("  cell Q{f}"))
            );
        }
        for a in std::iter::once(&self.calibration).chain(self.eval.as_ref()) {
            s += &format!(
                "accuracy on {} ({} x {} steps): max abs error {:.3e}{}\n",
                a.file,
                a.sequences,
                a.steps,
                a.max_abs_error,
                a.agreeing_rows.map_or(String::new(), |[g, t]| format!(
                    ", argmax agreement {g}/{t} ({:.1}%)",
                    100.0 * g as f64 / t.max(1) as f64
                ))
            );
        }
        let m = &self.memory;
        s += &format!(
            "flash {} B (blob {} B, of which parameters {} B; lookup tables {} B)\nRAM {} B (state {} B, scratch {} B, input {} B; {} B more for row tables{}, which make a step cheaper){}\n",
            m.flash_bytes, m.blob_bytes, m.parameter_bytes, m.lut_bytes, m.ram_bytes, m.state_bytes,
            m.scratch_bytes, m.input_bytes, m.row_table_bytes,
            match m.pair_bytes {
                0 => String::new(),
                p => format!(" and gate rows repacked in pairs ({p} B of them)"),
            },
            m.window_bytes.map_or(String::new(), |w| format!(", plus a {w} B window for bidirectional layers"))
        );
        s
    }
}
