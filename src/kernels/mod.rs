//! recur's f32 recurrent kernels: LSTM, GRU and RNN exactly as the ONNX specification defines
//! them, every attribute and optional input included (direction, activations with alpha/beta,
//! clip, input_forget, peepholes, linear_before_reset, sequence_lens, initial states).
//!
//! A layer runs in two parts. The input projection of every step is one matrix product
//! (`X · Wᵀ + biases`, done once for the whole sequence); then each step adds the recurrent
//! product `H · Rᵀ` and applies the cell. Weights are transposed and biases folded once, when
//! a layer is prepared, so a model whose weights are constants pays for that at load time
//! only. `tract_op` plugs the kernels into tract in place of tract's own expansion.

mod activation;
mod cell;
mod linalg;
pub mod tract_op;

use ndarray::{s, Array2, Array3, ArrayView2, ArrayView3, Axis};

pub use activation::{fast_sigmoid, fast_tanh};

use crate::ir::{Activation, Cell, Direction};

/// What a recurrent layer computes, independent of its weights' values.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerSpec {
    /// Cell and cell options.
    pub cell: Cell,
    /// Direction.
    pub direction: Direction,
    /// Hidden size.
    pub hidden: usize,
    /// Activations per direction (forward first).
    pub activations: Vec<Vec<Activation>>,
    /// Clip threshold applied to every activation's input.
    pub clip: Option<f32>,
}

/// One direction's weights, laid out for the kernels.
#[derive(Debug, Clone)]
pub struct DirectionWeights {
    /// Wᵀ: `[input, gates*hidden]`.
    w_t: Array2<f32>,
    /// Rᵀ: `[hidden, gates*hidden]`.
    r_t: Array2<f32>,
    /// Bias added to the input projection: Wb + Rb, except GRU's Rbh when
    /// linear_before_reset=1 (that one goes inside the reset gate's product).
    bias: Vec<f32>,
    /// GRU with linear_before_reset=1: Rbh, `[hidden]`.
    rb_h: Vec<f32>,
    /// LSTM peepholes P (i, o, f), `[3*hidden]`.
    peepholes: Option<Vec<f32>>,
}

/// A layer's weights for every direction, prepared once.
#[derive(Debug, Clone)]
pub struct LayerWeights {
    dirs: Vec<DirectionWeights>,
    input: usize,
}

impl LayerWeights {
    /// Lays out ONNX W `[D, G*H, I]`, R `[D, G*H, H]`, B `[D, 2*G*H]` and P `[D, 3*H]`.
    pub fn prepare(
        spec: &LayerSpec,
        w: ArrayView3<f32>,
        r: ArrayView3<f32>,
        b: Option<ArrayView2<f32>>,
        p: Option<ArrayView2<f32>>,
    ) -> Result<Self, String> {
        let (gates, h) = (spec.cell.gates(), spec.hidden);
        let dirs = spec.direction.count();
        let gh = gates * h;
        if w.shape()[0] != dirs || w.shape()[1] != gh {
            return Err(format!(
                "W has shape {:?}, expected [{dirs}, {gh}, input]",
                w.shape()
            ));
        }
        if r.shape() != [dirs, gh, h] {
            return Err(format!(
                "R has shape {:?}, expected [{dirs}, {gh}, {h}]",
                r.shape()
            ));
        }
        if let Some(b) = &b {
            if b.shape() != [dirs, 2 * gh] {
                return Err(format!(
                    "B has shape {:?}, expected [{dirs}, {}]",
                    b.shape(),
                    2 * gh
                ));
            }
        }
        if let Some(p) = &p {
            if p.shape() != [dirs, 3 * h] {
                return Err(format!(
                    "P has shape {:?}, expected [{dirs}, {}]",
                    p.shape(),
                    3 * h
                ));
            }
        }
        let lbr = matches!(
            spec.cell,
            Cell::Gru {
                linear_before_reset: true
            }
        );
        let dirs = (0..dirs)
            .map(|d| {
                let mut bias = vec![0f32; gh];
                let mut rb_h = vec![0f32; if lbr { h } else { 0 }];
                if let Some(b) = &b {
                    let wb = b.slice(s![d, ..gh]);
                    let rb = b.slice(s![d, gh..]);
                    for (j, out) in bias.iter_mut().enumerate() {
                        let recurrent_inside_reset = lbr && j >= 2 * h;
                        *out = wb[j] + if recurrent_inside_reset { 0.0 } else { rb[j] };
                    }
                    if lbr {
                        for (j, out) in rb_h.iter_mut().enumerate() {
                            *out = rb[2 * h + j];
                        }
                    }
                }
                DirectionWeights {
                    w_t: w
                        .index_axis(Axis(0), d)
                        .t()
                        .as_standard_layout()
                        .into_owned(),
                    r_t: r
                        .index_axis(Axis(0), d)
                        .t()
                        .as_standard_layout()
                        .into_owned(),
                    bias,
                    rb_h,
                    peepholes: p.as_ref().map(|p| p.row(d).to_vec()),
                }
            })
            .collect();
        Ok(LayerWeights {
            dirs,
            input: w.shape()[2],
        })
    }

    /// Input size the weights expect.
    pub fn input_size(&self) -> usize {
        self.input
    }
}

/// A layer's outputs, sequence-first (layout 0).
#[derive(Debug, Clone)]
pub struct LayerOutputs {
    /// Y as `[T, D*B, H]` (reshape to ONNX's `[T, D, B, H]`); zero past each sequence's length.
    pub y: Array3<f32>,
    /// Y_h: `[D, B, H]`, the state after each direction's last step.
    pub y_h: Array3<f32>,
    /// Y_c: `[D, B, H]` (LSTM only; zeros otherwise).
    pub y_c: Array3<f32>,
}

/// Runs a layer over a whole sequence.
///
/// `x` is `[T, B, I]`; `initial_h`/`initial_c` are `[D, B, H]`; `lengths` holds each batch
/// entry's sequence length (absent: all `T`). Steps past a sequence's length produce zeros in
/// Y and leave the state unchanged, as ONNX Runtime does.
pub fn run_layer(
    spec: &LayerSpec,
    weights: &LayerWeights,
    x: ArrayView3<f32>,
    lengths: Option<&[usize]>,
    initial_h: Option<ArrayView3<f32>>,
    initial_c: Option<ArrayView3<f32>>,
) -> LayerOutputs {
    let (t_len, batch, input) = x.dim();
    let h = spec.hidden;
    let dirs = spec.direction.count();
    debug_assert_eq!(input, weights.input);
    let x2d = x
        .as_standard_layout()
        .into_owned()
        .into_shape_with_order((t_len * batch, input))
        .expect("contiguous");
    let mut y = Array3::<f32>::zeros((t_len, dirs * batch, h));
    let mut y_h = Array3::<f32>::zeros((dirs, batch, h));
    let mut y_c = Array3::<f32>::zeros((dirs, batch, h));
    let full: Vec<usize> = vec![t_len; batch];
    let lengths = lengths.unwrap_or(&full);
    for (d, dw) in weights.dirs.iter().enumerate() {
        let reverse = spec.direction == Direction::Reverse || d == 1;
        let mut xproj = x2d.dot(&dw.w_t);
        if !xproj.is_standard_layout() {
            // ndarray may hand back a column-major product (e.g. for one input feature).
            xproj = xproj.as_standard_layout().into_owned();
        }
        for mut row in xproj.rows_mut() {
            for (v, b) in row.iter_mut().zip(&dw.bias) {
                *v += b;
            }
        }
        let mut state = cell::State::new(batch, h);
        if let Some(h0) = &initial_h {
            state.h.assign(&h0.index_axis(Axis(0), d));
        }
        if let Some(c0) = &initial_c {
            state.c.assign(&c0.index_axis(Axis(0), d));
        }
        let step = cell::Step::new(spec, dw, &spec.activations[d]);
        let mut scratch = cell::Scratch::new(spec.cell.gates() * h, h);
        for s in 0..t_len {
            let t = if reverse { t_len - 1 - s } else { s };
            for (b, &len) in lengths.iter().enumerate() {
                if t >= len {
                    continue;
                }
                let pre = xproj.row(t * batch + b);
                step.run(
                    pre.as_slice().expect("row-major"),
                    &mut state,
                    b,
                    &mut scratch,
                );
                y.slice_mut(s![t, d * batch + b, ..])
                    .assign(&state.h.row(b));
            }
        }
        y_h.index_axis_mut(Axis(0), d).assign(&state.h);
        y_c.index_axis_mut(Axis(0), d).assign(&state.c);
    }
    LayerOutputs { y, y_h, y_c }
}
