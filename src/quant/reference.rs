//! The chain in f32, with the ranges calibration needs: recur's own f32 kernels
//! ([`crate::kernels::run_layer`]) run one step at a time per direction, so the cell state of
//! every step is seen, not only the last.

use indicatif::ProgressBar;
use ndarray::{s, Array2, Array3, ArrayD, Axis, Ix2, Ix3};

use super::chain::{Chain, OutputAct, Reduce, Stage};
use crate::error::{RecurError, Result};
use crate::ir::Direction;
use crate::kernels::{run_layer, LayerSpec, LayerWeights};

/// Calibration input: batch-first samples or token ids.
#[derive(Debug, Clone)]
pub enum ChainInput {
    /// `[N, T, F]` float samples.
    Features(Array3<f32>),
    /// `[N, T]` token ids.
    Tokens(Array2<i64>),
}

impl ChainInput {
    /// Number of sequences.
    pub fn batch(&self) -> usize {
        match self {
            ChainInput::Features(a) => a.shape()[0],
            ChainInput::Tokens(a) => a.shape()[0],
        }
    }

    /// Number of time steps.
    pub fn steps(&self) -> usize {
        match self {
            ChainInput::Features(a) => a.shape()[1],
            ChainInput::Tokens(a) => a.shape()[1],
        }
    }
}

/// Largest magnitudes seen by one stage.
#[derive(Debug, Clone, Default)]
pub struct StageRange {
    /// Largest |input|.
    pub in_max: f32,
    /// Largest |output| (hidden state for recurrent stages).
    pub out_max: f32,
    /// Largest |cell state| (LSTM).
    pub c_max: f32,
}

/// Everything calibration measured.
#[derive(Debug, Clone, Default)]
pub struct Ranges {
    /// Largest |x*a + b| over the input features.
    pub input_max: f32,
    /// One per stage.
    pub stages: Vec<StageRange>,
}

fn max_abs<'a>(it: impl IntoIterator<Item = &'a f32>) -> f32 {
    it.into_iter().fold(0f32, |m, v| m.max(v.abs()))
}

/// Runs the chain in f32 over `input`; returns the output as `[N, O]` or `[N, T, O]` and the
/// ranges. `progress` advances by one per recurrent step.
pub fn run(
    chain: &Chain,
    input: &ChainInput,
    progress: Option<&ProgressBar>,
) -> Result<(ArrayD<f32>, Ranges)> {
    let mut ranges = Ranges::default();
    let mut x: Array3<f32> = match input {
        ChainInput::Features(a) => {
            let mut a = a.clone();
            for mut row in a.lanes_mut(Axis(2)) {
                for (v, (sa, sb)) in row.iter_mut().zip(&chain.affine) {
                    *v = *v * sa + sb;
                }
            }
            ranges.input_max = max_abs(a.iter());
            a
        }
        ChainInput::Tokens(t) => t.mapv(|v| v as f32).insert_axis(Axis(2)),
    };
    for stage in &chain.stages {
        let mut r = StageRange {
            in_max: max_abs(x.iter()),
            ..Default::default()
        };
        x = match stage {
            Stage::Embedding { node, table } => {
                let (n, t, _) = x.dim();
                let mut out = Array3::<f32>::zeros((n, t, table.ncols()));
                for ((i, j), v) in x.index_axis(Axis(2), 0).indexed_iter() {
                    let tok = *v as i64;
                    if tok < 0 || tok as usize >= table.nrows() {
                        return Err(RecurError::input(
                            node.clone(),
                            format!("token id {tok} outside the vocabulary 0..{}", table.nrows()),
                        ));
                    }
                    out.slice_mut(s![i, j, ..]).assign(&table.row(tok as usize));
                }
                out
            }
            Stage::Dense { w, b, .. } => {
                let (n, t, i) = x.dim();
                let flat = x
                    .as_standard_layout()
                    .into_owned()
                    .into_shape_with_order((n * t, i))
                    .expect("contiguous");
                let mut y = flat.dot(&w.t());
                y += b;
                y.as_standard_layout()
                    .into_owned()
                    .into_shape_with_order((n, t, w.nrows()))
                    .expect("contiguous")
            }
            Stage::Recurrent { layer, reduce, .. } => {
                recurrent(layer, *reduce, &x, &mut r, progress)?
            }
        };
        r.out_max = r.out_max.max(max_abs(x.iter()));
        ranges.stages.push(r);
    }
    match chain.output_act {
        OutputAct::None => {}
        OutputAct::Sigmoid => x.mapv_inplace(|v| 1.0 / (1.0 + (-v).exp())),
        OutputAct::Softmax => {
            for mut row in x.lanes_mut(Axis(2)) {
                let m = row.fold(f32::NEG_INFINITY, |a, &b| a.max(b));
                row.mapv_inplace(|v| (v - m).exp());
                let sum = row.sum();
                row.mapv_inplace(|v| v / sum);
            }
        }
    }
    let out = if chain.per_step_output() {
        x.into_dyn()
    } else {
        x.index_axis(Axis(1), x.shape()[1] - 1)
            .to_owned()
            .into_dyn()
    };
    Ok((out, ranges))
}

fn recurrent(
    layer: &crate::ir::RecurrentLayer,
    reduce: Reduce,
    x: &Array3<f32>,
    r: &mut StageRange,
    progress: Option<&ProgressBar>,
) -> Result<Array3<f32>> {
    let weights = layer.weights.as_ref().expect("chain checked weights");
    let internal = |e: String| RecurError::Usage(format!("internal: {e}"));
    let w = weights
        .w
        .view()
        .into_dimensionality::<Ix3>()
        .map_err(|e| internal(e.to_string()))?;
    let rr = weights
        .r
        .view()
        .into_dimensionality::<Ix3>()
        .map_err(|e| internal(e.to_string()))?;
    let b = match &weights.b {
        Some(b) => Some(
            b.view()
                .into_dimensionality::<Ix2>()
                .map_err(|e| internal(e.to_string()))?,
        ),
        None => None,
    };
    let p = match &weights.p {
        Some(p) => Some(
            p.view()
                .into_dimensionality::<Ix2>()
                .map_err(|e| internal(e.to_string()))?,
        ),
        None => None,
    };
    let (n, t_len, _) = x.dim();
    let h = layer.hidden_size;
    let dirs = layer.direction.count();
    let mut y = Array3::<f32>::zeros((n, t_len, dirs * h));
    let mut finals = Array3::<f32>::zeros((n, 1, dirs * h));
    for d in 0..dirs {
        let spec = LayerSpec {
            cell: layer.cell.clone(),
            direction: Direction::Forward,
            hidden: h,
            activations: vec![layer.activations[d].clone()],
            clip: layer.clip,
        };
        let lw = LayerWeights::prepare(
            &spec,
            w.slice(s![d..d + 1, .., ..]),
            rr.slice(s![d..d + 1, .., ..]),
            b.as_ref().map(|b| b.slice(s![d..d + 1, ..])),
            p.as_ref().map(|p| p.slice(s![d..d + 1, ..])),
        )
        .map_err(internal)?;
        let reverse = d == 1 || layer.direction == Direction::Reverse;
        let mut hs = Array3::<f32>::zeros((1, n, h));
        let mut cs = Array3::<f32>::zeros((1, n, h));
        for s_ in 0..t_len {
            let t = if reverse { t_len - 1 - s_ } else { s_ };
            let xt = x
                .slice(s![.., t..t + 1, ..])
                .permuted_axes([1, 0, 2])
                .to_owned();
            let out = run_layer(
                &spec,
                &lw,
                xt.view(),
                None,
                Some(hs.view()),
                Some(cs.view()),
            );
            hs = out.y_h;
            cs = out.y_c;
            r.c_max = r.c_max.max(max_abs(cs.iter()));
            y.slice_mut(s![.., t, d * h..(d + 1) * h])
                .assign(&hs.index_axis(Axis(0), 0));
            if let Some(pb) = progress {
                pb.inc(1);
            }
        }
        finals
            .slice_mut(s![.., 0, d * h..(d + 1) * h])
            .assign(&hs.index_axis(Axis(0), 0));
    }
    r.out_max = max_abs(y.iter());
    Ok(match reduce {
        Reduce::Sequence => y,
        Reduce::Last => y.slice(s![.., t_len - 1..t_len, ..]).to_owned(),
        Reduce::Final => finals,
    })
}
