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
pub mod linalg;
mod tract_loop;
pub mod tract_op;

use ndarray::{s, Array2, Array3, ArrayView2, ArrayView3, Axis};

pub use activation::{fast_sigmoid, fast_tanh};
pub use tract_loop::register as register_loop;

use crate::ir::{Activation, Cell, Direction, RecurrentLayer, RecurrentWeights};

/// Whether this CPU runs the kernels compiled for AVX2 + FMA (x86-64, detected at run time
/// once and cached by the standard library).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn avx2_fma() -> bool {
    std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
}

/// Whether this CPU also runs the kernels compiled for AVX-512F (on top of AVX2 + FMA):
/// sixteen lanes where eight lanes are FMA-bound (the input projections, the cells).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn avx512() -> bool {
    avx2_fma() && std::is_x86_feature_detected!("avx512f")
}

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

impl LayerSpec {
    /// What a lifted recurrent layer computes.
    pub fn of(layer: &RecurrentLayer) -> Self {
        LayerSpec {
            cell: layer.cell.clone(),
            direction: layer.direction,
            hidden: layer.hidden_size,
            activations: layer.activations.clone(),
            clip: layer.clip,
        }
    }
}

/// One direction's weights, laid out for the kernels.
#[derive(Debug, Clone)]
pub struct DirectionWeights {
    /// Wᵀ: `[input, gates*hidden]`.
    w_t: Array2<f32>,
    /// Wᵀ packed for one-row projections.
    w_packed: linalg::Packed,
    /// Rᵀ packed: all gates, or for a GRU the z and r gates then the h gate (the reset gate
    /// is applied between them).
    r_packed: Vec<linalg::Packed>,
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
                let w_t = w
                    .index_axis(Axis(0), d)
                    .t()
                    .as_standard_layout()
                    .into_owned();
                let r_t = r
                    .index_axis(Axis(0), d)
                    .t()
                    .as_standard_layout()
                    .into_owned();
                let r_packed = if matches!(spec.cell, Cell::Gru { .. }) {
                    vec![
                        linalg::Packed::new(r_t.slice(s![.., ..2 * h])),
                        linalg::Packed::new(r_t.slice(s![.., 2 * h..])),
                    ]
                } else {
                    vec![linalg::Packed::new(r_t.view())]
                };
                DirectionWeights {
                    w_packed: linalg::Packed::new(w_t.view()),
                    w_t,
                    r_packed,
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

    /// Lays out the IR's constant weights (ONNX layout), checking their ranks.
    pub fn from_ir(spec: &LayerSpec, w: &RecurrentWeights) -> Result<Self, String> {
        fn view<'a, D: ndarray::Dimension>(
            a: &'a ndarray::ArrayD<f32>,
            what: &str,
        ) -> Result<ndarray::ArrayView<'a, f32, D>, String> {
            a.view()
                .into_dimensionality::<D>()
                .map_err(|_| format!("{what} has rank {}", a.ndim()))
        }
        Self::prepare(
            spec,
            view(&w.w, "W")?,
            view(&w.r, "R")?,
            w.b.as_ref().map(|b| view(b, "B")).transpose()?,
            w.p.as_ref().map(|p| view(p, "P")).transpose()?,
        )
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
    run(spec, weights, x, lengths, initial_h, initial_c, None).0
}

/// [`run_layer`] for a batch-first model (ONNX `layout = 1`): `x` is `[B, T, I]` and Y comes
/// back as `[B, T*D, H]` (reshape to ONNX's `[B, T, D, H]`); Y_h and Y_c as in [`run_layer`].
/// The same values, without transposing the input and the output through memory: the
/// input projection and the time loop read and write the batch-first rows where they are.
pub fn run_layer_batch_first(
    spec: &LayerSpec,
    weights: &LayerWeights,
    x: ArrayView3<f32>,
    lengths: Option<&[usize]>,
    initial_h: Option<ArrayView3<f32>>,
    initial_c: Option<ArrayView3<f32>>,
) -> LayerOutputs {
    let x = x.permuted_axes([1, 0, 2]);
    run_ordered(spec, weights, x, lengths, initial_h, initial_c, None, true).0
}

/// Keras's masking of a forward layer: where `mask[t, b]` is false the step is skipped, the
/// state carried over and the output is the last output (Keras `mask_zero` semantics).
pub struct KerasMask<'a> {
    /// `[T, B]`: which steps are real.
    pub mask: ArrayView2<'a, bool>,
    /// `[B, H]`: the output before the first real step (Keras starts it at zeros).
    pub initial_output: Option<ArrayView2<'a, f32>>,
}

/// Runs a forward layer with Keras's masking. Returns the outputs (Y holds each step's output,
/// the last output at masked steps) and the last output after the final step, `[B, H]`.
pub fn run_layer_masked(
    spec: &LayerSpec,
    weights: &LayerWeights,
    x: ArrayView3<f32>,
    mask: KerasMask,
    initial_h: Option<ArrayView3<f32>>,
    initial_c: Option<ArrayView3<f32>>,
) -> (LayerOutputs, Array2<f32>) {
    let (outputs, last) = run(spec, weights, x, None, initial_h, initial_c, Some(mask));
    (outputs, last.expect("masked runs keep the last output"))
}

fn run(
    spec: &LayerSpec,
    weights: &LayerWeights,
    x: ArrayView3<f32>,
    lengths: Option<&[usize]>,
    initial_h: Option<ArrayView3<f32>>,
    initial_c: Option<ArrayView3<f32>>,
    keras: Option<KerasMask>,
) -> (LayerOutputs, Option<Array2<f32>>) {
    run_ordered(
        spec, weights, x, lengths, initial_h, initial_c, keras, false,
    )
}

/// The layer over `x` (`[T, B, I]`, any strides), Y time-major (`[T, D*B, H]`) or, with
/// `batch_major_y`, batch-major (`[B, T*D, H]`).
#[allow(clippy::too_many_arguments)]
fn run_ordered(
    spec: &LayerSpec,
    weights: &LayerWeights,
    x: ArrayView3<f32>,
    lengths: Option<&[usize]>,
    initial_h: Option<ArrayView3<f32>>,
    initial_c: Option<ArrayView3<f32>>,
    keras: Option<KerasMask>,
    batch_major_y: bool,
) -> (LayerOutputs, Option<Array2<f32>>) {
    let (t_len, batch, input) = x.dim();
    let h = spec.hidden;
    let dirs = spec.direction.count();
    debug_assert_eq!(input, weights.input);
    // A batch-first input (the transpose of a standard [B, T, I] array) is read in place, its
    // rows in (b, t) order; anything else is laid out time-major first.
    let batch_major_x = !x.is_standard_layout() && x.permuted_axes([1, 0, 2]).is_standard_layout();
    let x = if batch_major_x {
        ndarray::CowArray::from(x.permuted_axes([1, 0, 2]))
    } else {
        x.as_standard_layout()
    };
    let x_rows = x.as_slice().expect("standard layout");
    let mut y = if batch_major_y {
        Array3::<f32>::zeros((batch, t_len * dirs, h))
    } else {
        Array3::<f32>::zeros((t_len, dirs * batch, h))
    };
    let mut y_h = Array3::<f32>::zeros((dirs, batch, h));
    let mut y_c = Array3::<f32>::zeros((dirs, batch, h));
    let full: Vec<usize> = vec![t_len; batch];
    let lengths = lengths.unwrap_or(&full);
    let gh = spec.cell.gates() * h;
    let mut xproj = vec![0f32; t_len * batch * gh];
    let mut last_of_forward = None;
    for (d, dw) in weights.dirs.iter().enumerate() {
        let reverse = spec.direction == Direction::Reverse || d == 1;
        input_projection(&mut xproj, x_rows, (t_len, batch, input), batch_major_x, dw);
        let mut state = cell::State::new(batch, h);
        if let Some(h0) = &initial_h {
            state.h.assign(&h0.index_axis(Axis(0), d));
        }
        if let Some(c0) = &initial_c {
            state.c.assign(&c0.index_axis(Axis(0), d));
        }
        let step = cell::Step::new(spec, dw, &spec.activations[d]);
        let mut scratch = cell::Scratch::new(h);
        let mask = keras.as_ref().map(|k| {
            assert_eq!(k.mask.dim(), (t_len, batch), "mask is [T, B]");
            let mut last = Array2::zeros((batch, h));
            match &k.initial_output {
                Some(o) => last.assign(o),
                None => last.assign(&state.h),
            }
            (k.mask.as_standard_layout().into_owned(), last)
        });
        let (mask, mut last_output) = match mask {
            Some((m, l)) => (Some(m), Some(l)),
            None => (None, None),
        };
        let steps = Steps {
            mask: mask
                .as_ref()
                .map(|m| m.as_slice().expect("standard layout")),
            step: &step,
            gates_width: gh,
            lengths,
            reverse,
            t_len,
            direction: d,
            dirs,
            batch_major_y,
        };
        steps.run_dispatched(
            &mut xproj,
            &mut state,
            &mut scratch,
            &mut y,
            last_output.as_mut(),
        );
        y_h.index_axis_mut(Axis(0), d).assign(&state.h);
        y_c.index_axis_mut(Axis(0), d).assign(&state.c);
        if d == 0 {
            last_of_forward = last_output;
        }
    }
    (LayerOutputs { y, y_h, y_c }, last_of_forward)
}

/// The time loop of one direction over every batch entry.
struct Steps<'a> {
    step: &'a cell::Step<'a>,
    /// Keras mask `[T*B]`: a false entry skips the step and repeats the last output.
    mask: Option<&'a [bool]>,
    gates_width: usize,
    lengths: &'a [usize],
    reverse: bool,
    t_len: usize,
    /// This direction, and how many the layer has.
    direction: usize,
    dirs: usize,
    /// Y as `[B, T*D, H]` rather than `[T, D*B, H]`.
    batch_major_y: bool,
}

impl Steps<'_> {
    /// Runs the loop, compiled for AVX2 + FMA when the CPU has them (the cell's element-wise
    /// work then vectorises 8 wide). `xproj` holds every step's input projection, rows of
    /// `gates_width`, and is used up: each row becomes its step's gates in place.
    fn run_dispatched(
        &self,
        xproj: &mut [f32],
        state: &mut cell::State,
        scratch: &mut cell::Scratch,
        y: &mut Array3<f32>,
        last: Option<&mut Array2<f32>>,
    ) {
        #[cfg(target_arch = "x86_64")]
        {
            if avx2_fma() {
                // SAFETY: the CPU supports the features the function is compiled for.
                unsafe { self.run_avx2(xproj, state, scratch, y, last) };
                return;
            }
        }
        self.run(xproj, state, scratch, y, last);
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn run_avx2(
        &self,
        xproj: &mut [f32],
        state: &mut cell::State,
        scratch: &mut cell::Scratch,
        y: &mut Array3<f32>,
        last: Option<&mut Array2<f32>>,
    ) {
        self.run(xproj, state, scratch, y, last)
    }

    #[inline(always)]
    fn run(
        &self,
        xproj: &mut [f32],
        state: &mut cell::State,
        scratch: &mut cell::Scratch,
        y: &mut Array3<f32>,
        mut last: Option<&mut Array2<f32>>,
    ) {
        let h = y.dim().2;
        let batch = self.lengths.len();
        let gh = self.gates_width;
        let y = y.as_slice_mut().expect("standard layout");
        // Several sequences at once: one matrix product per recurrent matrix and step for the
        // whole batch (any cell, no Keras mask).
        let batched = self.mask.is_none() && batch >= BATCHED_STEP && self.step.runs_batched();
        let mut active = vec![false; batch];
        for s in 0..self.t_len {
            let t = if self.reverse { self.t_len - 1 - s } else { s };
            if batched {
                for (on, &len) in active.iter_mut().zip(self.lengths) {
                    *on = t < len;
                }
                // The step's rows lie together (time-major), worked on in place.
                let row = self.xproj_row(t, 0);
                let gates = &mut xproj[row * gh..(row + batch) * gh];
                self.step.run_batch(gates, state, &active, scratch);
                let h_all = state.h.as_slice().expect("standard layout");
                if !self.batch_major_y && active.iter().all(|&on| on) {
                    // Time-major Y: this direction's outputs of the step lie together.
                    let at = self.y_offset(t, 0, h);
                    y[at..at + batch * h].copy_from_slice(h_all);
                } else {
                    for (b, _) in active.iter().enumerate().filter(|(_, on)| **on) {
                        let at = self.y_offset(t, b, h);
                        y[at..at + h].copy_from_slice(&h_all[b * h..(b + 1) * h]);
                    }
                }
                continue;
            }
            for (b, &len) in self.lengths.iter().enumerate() {
                if t >= len {
                    continue;
                }
                // Step (t, b): its input projection row and its place in Y.
                let row = self.xproj_row(t, b);
                let gates = &mut xproj[row * gh..(row + 1) * gh];
                let at = self.y_offset(t, b, h);
                if let (Some(mask), Some(last)) = (self.mask, last.as_deref_mut()) {
                    let last =
                        &mut last.as_slice_mut().expect("standard layout")[b * h..(b + 1) * h];
                    if mask[t * batch + b] {
                        self.step.run(gates, state, b, scratch);
                        last.copy_from_slice(state.h_row(b));
                    }
                    y[at..at + h].copy_from_slice(last);
                    continue;
                }
                self.step.run(gates, state, b, scratch);
                y[at..at + h].copy_from_slice(state.h_row(b));
            }
        }
    }

    /// The row of `xproj` that holds step `t` of sequence `b`.
    #[inline(always)]
    fn xproj_row(&self, t: usize, b: usize) -> usize {
        t * self.lengths.len() + b
    }

    /// Where step `t` of sequence `b` of this direction starts in Y (`h` values long).
    #[inline(always)]
    fn y_offset(&self, t: usize, b: usize, h: usize) -> usize {
        let (dirs, d) = (self.dirs, self.direction);
        if self.batch_major_y {
            ((b * self.t_len + t) * dirs + d) * h
        } else {
            ((t * dirs + d) * self.lengths.len() + b) * h
        }
    }
}

/// From this many rows on, an input projection takes a blocked matrix product (which reuses
/// each weight across rows) rather than one vector product per row.
const GEMM_ROWS: usize = 16;

/// From this many sequences on, a step (of a whole sequence or streamed) takes one blocked
/// product per recurrent matrix for the whole batch, reading each weight once per step
/// rather than once per sequence.
const BATCHED_STEP: usize = 4;

/// `X · Wᵀ + biases` for every step of every sequence, into `out` time-major
/// (`[T*B, gates*hidden]`, step `t` of sequence `b` in row `t*B + b`), the order the time
/// loop works in. `x` holds the rows in (t, b) order, or with `batch_major` in (b, t) order
/// (a batch-first input read in place): then each sequence's projections are written `B` rows
/// apart, so the loop finds a step's rows together without gathering them.
fn input_projection(
    out: &mut [f32],
    x: &[f32],
    (t_len, batch, input): (usize, usize, usize),
    batch_major: bool,
    dw: &DirectionWeights,
) {
    let gh = dw.bias.len();
    if !batch_major || batch == 1 || t_len == 0 || input == 0 {
        return rows_projection(out, x, input, dw);
    }
    if t_len * batch >= GEMM_ROWS {
        let ldo = batch * gh;
        let span = (t_len - 1) * ldo + gh;
        let ran = (0..batch).all(|b| {
            let x_b = &x[b * t_len * input..(b + 1) * t_len * input];
            let out_b = &mut out[b * gh..b * gh + span];
            linalg::matmul_packed_onto_bias(out_b, ldo, x_b, &dw.w_packed, &dw.bias)
        });
        if ran {
            return;
        }
    }
    // Few rows, or no blocked kernel on this CPU: project in the input's order, then move
    // each row to its place.
    let mut by_sequence = vec![0f32; out.len()];
    rows_projection(&mut by_sequence, x, input, dw);
    for (k, row) in by_sequence.chunks_exact(gh).enumerate() {
        let (b, t) = (k / t_len, k % t_len);
        out[(t * batch + b) * gh..(t * batch + b + 1) * gh].copy_from_slice(row);
    }
}

/// `X · Wᵀ + biases` for every row of `x` (`[rows, input]`), into the same rows of `out`
/// (`[rows, gates*hidden]`).
fn rows_projection(out: &mut [f32], x: &[f32], input: usize, dw: &DirectionWeights) {
    let gh = dw.bias.len();
    if input == 0 {
        out.chunks_exact_mut(gh)
            .for_each(|row| row.copy_from_slice(&dw.bias));
        return;
    }
    let rows = x.len() / input;
    if rows >= GEMM_ROWS {
        if linalg::matmul_packed_onto_bias(out, gh, x, &dw.w_packed, &dw.bias) {
            return;
        }
        out.chunks_exact_mut(gh)
            .for_each(|row| row.copy_from_slice(&dw.bias));
        let x = ArrayView2::from_shape((rows, input), x).expect("rows of x");
        let mut out2 = ndarray::ArrayViewMut2::from_shape((rows, gh), out).expect("rows of out");
        ndarray::linalg::general_mat_mul(1.0, &x, &dw.w_t, 1.0, &mut out2);
        return;
    }
    for (row_out, row_x) in out.chunks_exact_mut(gh).zip(x.chunks_exact(input)) {
        row_out.copy_from_slice(&dw.bias);
        linalg::matvec_packed(row_out, row_x, &dw.w_packed);
    }
}

/// One layer's state and working memory for stepping it one time step per call (a streamed
/// step), kept between calls so that a step allocates nothing.
pub struct StepBuffers {
    /// Each direction's state, `[B, H]`.
    states: Vec<cell::State>,
    scratch: cell::Scratch,
    /// One step's input projection, `[B, gates*H]`.
    xproj: Vec<f32>,
    /// Every sequence steps: what a batched step is told (`[B]`, all true).
    active: Vec<bool>,
    batch: usize,
}

impl std::fmt::Debug for StepBuffers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StepBuffers")
            .field("batch", &self.batch)
            .finish_non_exhaustive()
    }
}

impl StepBuffers {
    /// Buffers for `batch` sequences through a layer of this shape.
    pub fn new(spec: &LayerSpec, batch: usize) -> Self {
        let (h, gh) = (spec.hidden, spec.cell.gates() * spec.hidden);
        StepBuffers {
            states: (0..spec.direction.count())
                .map(|_| cell::State::new(batch, h))
                .collect(),
            scratch: cell::Scratch::new(h),
            xproj: vec![0.0; batch * gh],
            active: vec![true; batch],
            batch,
        }
    }
}

/// Advances a layer by exactly one time step: what [`run_layer`] computes for a one-step
/// sequence with no `sequence_lens`, without its allocations.
///
/// `x` is `[B, I]`; `initial` holds `initial_h` and `initial_c`, `[D, B, H]` each (absent:
/// zeros); the new state goes to `y_h` and `y_c` (`[D, B, H]`; for one step Y holds the same
/// values). A direction's single step
/// is the same whichever way it runs, so reverse and bidirectional layers are exact too.
pub fn step_layer(
    spec: &LayerSpec,
    weights: &LayerWeights,
    x: &[f32],
    initial: [Option<&[f32]>; 2],
    buffers: &mut StepBuffers,
    y_h: &mut [f32],
    y_c: &mut [f32],
) {
    let (b, h) = (buffers.batch, spec.hidden);
    let size = b * h * spec.direction.count();
    let [h0, c0] = initial;
    assert!(
        x.len() == b * weights.input
            && h0.is_none_or(|s| s.len() == size)
            && c0.is_none_or(|s| s.len() == size)
            && y_h.len() == size
            && y_c.len() == size,
        "step_layer: buffers do not fit the layer"
    );
    #[cfg(target_arch = "x86_64")]
    {
        if avx2_fma() {
            // SAFETY: the CPU supports the features the function is compiled for.
            unsafe { step_layer_avx2(spec, weights, x, initial, buffers, y_h, y_c) };
            return;
        }
    }
    step_layer_body(spec, weights, x, initial, buffers, y_h, y_c);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn step_layer_avx2(
    spec: &LayerSpec,
    weights: &LayerWeights,
    x: &[f32],
    initial: [Option<&[f32]>; 2],
    buffers: &mut StepBuffers,
    y_h: &mut [f32],
    y_c: &mut [f32],
) {
    step_layer_body(spec, weights, x, initial, buffers, y_h, y_c)
}

#[inline(always)]
fn step_layer_body(
    spec: &LayerSpec,
    weights: &LayerWeights,
    x: &[f32],
    initial: [Option<&[f32]>; 2],
    buffers: &mut StepBuffers,
    y_h: &mut [f32],
    y_c: &mut [f32],
) {
    let (b, h) = (buffers.batch, spec.hidden);
    let gh = spec.cell.gates() * h;
    let [h0, c0] = initial;
    let block = b * h;
    for (d, dw) in weights.dirs.iter().enumerate() {
        let state = &mut buffers.states[d];
        let range = d * block..(d + 1) * block;
        let h_state = state.h.as_slice_mut().expect("standard layout");
        match h0 {
            Some(h0) => h_state.copy_from_slice(&h0[range.clone()]),
            None => h_state.fill(0.0),
        }
        let c_state = state.c.as_slice_mut().expect("standard layout");
        match c0 {
            Some(c0) => c_state.copy_from_slice(&c0[range.clone()]),
            None => c_state.fill(0.0),
        }
        let step = cell::Step::new(spec, dw, &spec.activations[d]);
        let input = weights.input;
        if b >= BATCHED_STEP && step.runs_batched() {
            // The whole batch at once, as the whole-sequence loop steps it (the same bits).
            rows_projection(&mut buffers.xproj, x, input, dw);
            step.run_batch(
                &mut buffers.xproj,
                state,
                &buffers.active,
                &mut buffers.scratch,
            );
        } else if b < GEMM_ROWS && input > 0 {
            // Row by row, each row's input and recurrent products in one pass.
            let rows = buffers
                .xproj
                .chunks_exact_mut(gh)
                .zip(x.chunks_exact(input));
            for (row, (gates, x_row)) in rows.enumerate() {
                step.run_from_input(x_row, gates, state, row, &mut buffers.scratch);
            }
        } else {
            rows_projection(&mut buffers.xproj, x, input, dw);
            for (row, gates) in buffers.xproj.chunks_exact_mut(gh).enumerate() {
                step.run(gates, state, row, &mut buffers.scratch);
            }
        }
        y_h[range.clone()].copy_from_slice(state.h.as_slice().expect("standard layout"));
        y_c[range].copy_from_slice(state.c.as_slice().expect("standard layout"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array, Array3};

    fn pseudo_random(shape: &[usize], seed: u32) -> ndarray::ArrayD<f32> {
        let mut s = seed;
        Array::from_shape_fn(ndarray::IxDyn(shape), |_| {
            s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        })
    }

    /// A layer of `cell` with its default activations in every direction and no clip.
    fn plain_spec(cell: Cell, direction: Direction, hidden: usize) -> LayerSpec {
        LayerSpec {
            activations: vec![cell.default_activations(); direction.count()],
            direction,
            hidden,
            clip: None,
            cell,
        }
    }

    /// Pseudo-random W, R, B (seeds `seed`, `seed + 10`, `seed + 20`) and, for an LSTM with
    /// peepholes, P (`seed + 30`), laid out for `spec` with `input` features.
    fn random_weights(spec: &LayerSpec, input: usize, seed: u32) -> LayerWeights {
        let (dirs, h) = (spec.direction.count(), spec.hidden);
        let gh = spec.cell.gates() * h;
        let array3 = |shape: [usize; 3], seed| -> Array3<f32> {
            pseudo_random(&shape, seed).into_dimensionality().unwrap()
        };
        let array2 = |shape: [usize; 2], seed| -> Array2<f32> {
            pseudo_random(&shape, seed).into_dimensionality().unwrap()
        };
        let (w, r) = (
            array3([dirs, gh, input], seed),
            array3([dirs, gh, h], seed + 10),
        );
        let bias = array2([dirs, 2 * gh], seed + 20);
        let peepholes = matches!(
            spec.cell,
            Cell::Lstm {
                peepholes: true,
                ..
            }
        )
        .then(|| array2([dirs, 3 * h], seed + 30));
        LayerWeights::prepare(
            spec,
            w.view(),
            r.view(),
            Some(bias.view()),
            peepholes.as_ref().map(|p| p.view()),
        )
        .unwrap()
    }

    /// Runs the layer on the batch-first `x_bt` (`[B, T, I]`, read in place) and on its
    /// time-major copy, asserts that Y, Y_h and Y_c are the same bits, and returns the copy.
    fn assert_batch_first_is_time_major(
        spec: &LayerSpec,
        weights: &LayerWeights,
        x_bt: &Array3<f32>,
        lengths: Option<&[usize]>,
        h0: Option<ArrayView3<f32>>,
    ) -> Array3<f32> {
        let (b, t, _) = x_bt.dim();
        let (d, h) = (spec.direction.count(), spec.hidden);
        let x_tb = x_bt
            .view()
            .permuted_axes([1, 0, 2])
            .as_standard_layout()
            .into_owned();
        let time_major = run_layer(spec, weights, x_tb.view(), lengths, h0, None);
        let batch_first = run_layer_batch_first(spec, weights, x_bt.view(), lengths, h0, None);
        let what = format!("{:?}, batch {b}, {t} steps", spec.cell);
        let y_tm = time_major.y.into_shape_with_order((t, d, b, h)).unwrap();
        let y_bf = batch_first.y.into_shape_with_order((b, t, d, h)).unwrap();
        assert_eq!(y_tm.permuted_axes([2, 0, 1, 3]), y_bf, "{what}: Y");
        assert_eq!(time_major.y_h, batch_first.y_h, "{what}: Y_h");
        assert_eq!(time_major.y_c, batch_first.y_c, "{what}: Y_c");
        x_tb
    }

    /// The batch-first run (input read and Y written in place) gives the time-major run's
    /// values bit for bit, for every cell, both directions and ragged lengths; and one
    /// `step_layer` gives a one-step `run_layer` bit for bit.
    /// A batch-first input's projection is written time-major, by one strided blocked
    /// product per sequence or, for a few rows, projected in the input's order and moved:
    /// both give the time-major run's bits, batched steps (4+ sequences) or not.
    #[test]
    fn batch_first_projection_gives_the_time_major_bits_at_every_size() {
        let (i, h) = (5, 9);
        for (n, (b, t)) in [(2, 3), (3, 5), (2, 8), (6, 2), (4, 40), (7, 1)]
            .into_iter()
            .enumerate()
        {
            for cell in [
                Cell::Lstm {
                    input_forget: false,
                    peepholes: false,
                },
                Cell::Gru {
                    linear_before_reset: false,
                },
            ] {
                let spec = plain_spec(cell, Direction::Forward, h);
                let seed = 60 + n as u32;
                let weights = random_weights(&spec, i, seed);
                let x_bt: Array3<f32> = pseudo_random(&[b, t, i], seed + 3)
                    .into_dimensionality()
                    .unwrap();
                assert_batch_first_is_time_major(&spec, &weights, &x_bt, None, None);
            }
        }
    }

    #[test]
    fn batch_first_and_single_step_runs_equal_the_time_major_run() {
        let (b, t, i, h) = (5, 23, 7, 12);
        let cells = [
            Cell::Lstm {
                input_forget: false,
                peepholes: false,
            },
            Cell::Gru {
                linear_before_reset: true,
            },
            Cell::Rnn,
        ];
        for (n, cell) in cells.into_iter().enumerate() {
            let spec = plain_spec(cell, Direction::Bidirectional, h);
            let seed = 7 + n as u32;
            let weights = random_weights(&spec, i, seed);
            let x_bt: Array3<f32> = pseudo_random(&[b, t, i], seed + 30)
                .into_dimensionality()
                .unwrap();
            let h0: Array3<f32> = pseudo_random(&[2, b, h], seed + 40)
                .into_dimensionality()
                .unwrap();
            let lengths = [23, 1, 17, 23, 9];
            let x_tb = assert_batch_first_is_time_major(
                &spec,
                &weights,
                &x_bt,
                Some(&lengths),
                Some(h0.view()),
            );

            // One step: step_layer against run_layer on the first time step.
            let x1 = x_tb.slice(ndarray::s![0..1, .., ..]);
            let one = run_layer(&spec, &weights, x1, None, Some(h0.view()), None);
            let mut buffers = StepBuffers::new(&spec, b);
            let (mut y_h, mut y_c) = (vec![0.0; 2 * b * h], vec![0.0; 2 * b * h]);
            for _ in 0..2 {
                step_layer(
                    &spec,
                    &weights,
                    x1.as_standard_layout().as_slice().unwrap(),
                    [Some(h0.as_slice().unwrap()), None],
                    &mut buffers,
                    &mut y_h,
                    &mut y_c,
                );
                assert_eq!(
                    one.y_h.as_slice().unwrap(),
                    &y_h[..],
                    "{:?}: step",
                    spec.cell
                );
                assert_eq!(
                    one.y_c.as_slice().unwrap(),
                    &y_c[..],
                    "{:?}: step",
                    spec.cell
                );
            }
            // Each sequence stepped on its own (one row: the gates in one pass) gives the
            // batch step's bits (the batched products where the CPU has them).
            for e in 0..b {
                let x_e = x_tb.slice(ndarray::s![0, e..e + 1, ..]).to_owned();
                let h0_e = h0.slice(ndarray::s![.., e..e + 1, ..]).to_owned();
                let mut alone = StepBuffers::new(&spec, 1);
                let (mut h_e, mut c_e) = (vec![0.0; 2 * h], vec![0.0; 2 * h]);
                step_layer(
                    &spec,
                    &weights,
                    x_e.as_slice().unwrap(),
                    [Some(h0_e.as_slice().unwrap()), None],
                    &mut alone,
                    &mut h_e,
                    &mut c_e,
                );
                for d in 0..2 {
                    let at = (d * b + e) * h;
                    let rows = [(&h_e, &y_h), (&c_e, &y_c)];
                    for (k, (alone, batch)) in rows.into_iter().enumerate() {
                        assert_eq!(
                            &alone[d * h..(d + 1) * h],
                            &batch[at..at + h],
                            "{:?}: sequence {e} alone, direction {d}, {}",
                            spec.cell,
                            ["h", "c"][k]
                        );
                    }
                }
            }
        }
    }

    /// A batch of sequences, which steps with one matrix product per recurrent matrix for
    /// the whole batch, gives each sequence's values bit for bit as that sequence run on its
    /// own (one vector product per step): every cell and option, both directions, ragged
    /// lengths and initial states.
    #[test]
    fn batched_steps_equal_each_sequence_alone() {
        let (b, t, i, h) = (6, 11, 5, 20);
        let lstm = |input_forget, peepholes| Cell::Lstm {
            input_forget,
            peepholes,
        };
        let gru = |linear_before_reset| Cell::Gru {
            linear_before_reset,
        };
        let cases = [
            (lstm(false, false), None),
            (lstm(true, true), Some(1.5)),
            (gru(true), None),
            (gru(false), Some(2.0)),
            (Cell::Rnn, Some(1.0)),
        ];
        for (n, (cell, clip)) in cases.into_iter().enumerate() {
            let spec = LayerSpec {
                direction: Direction::Bidirectional,
                hidden: h,
                activations: vec![cell.default_activations(); 2],
                clip,
                cell,
            };
            let seed = 50 + n as u32;
            let array3 = |shape: [usize; 3], seed| -> Array3<f32> {
                pseudo_random(&shape, seed).into_dimensionality().unwrap()
            };
            let weights = random_weights(&spec, i, seed);
            let x = array3([t, b, i], seed + 40).mapv(|v| 4.0 * v);
            let (h0, c0) = (array3([2, b, h], seed + 50), array3([2, b, h], seed + 60));
            // Ragged (no step has every sequence), and every sequence the whole length.
            for lengths in [[11, 1, 7, 0, 11, 4], [11; 6]] {
                let all = run_layer(
                    &spec,
                    &weights,
                    x.view(),
                    Some(&lengths),
                    Some(h0.view()),
                    Some(c0.view()),
                );
                let y_all = all.y.into_shape_with_order((t, 2, b, h)).unwrap();
                for (k, &len) in lengths.iter().enumerate() {
                    let one = ndarray::s![.., k..k + 1, ..];
                    let alone = run_layer(
                        &spec,
                        &weights,
                        x.slice(one),
                        Some(&[len]),
                        Some(h0.slice(one)),
                        Some(c0.slice(one)),
                    );
                    let y_alone = alone.y.into_shape_with_order((t, 2, 1, h)).unwrap();
                    let pairs = [
                        (
                            y_all.slice(ndarray::s![.., .., k..k + 1, ..]).into_dyn(),
                            y_alone.view().into_dyn(),
                        ),
                        (all.y_h.slice(one).into_dyn(), alone.y_h.view().into_dyn()),
                        (all.y_c.slice(one).into_dyn(), alone.y_c.view().into_dyn()),
                    ];
                    for (what, (batched, single)) in ["Y", "Y_h", "Y_c"].iter().zip(pairs) {
                        if linalg::has_blocked_matmul() {
                            assert_eq!(batched, single, "{:?}, entry {k}: {what}", spec.cell);
                        } else {
                            // Without the blocked kernels the input projections of 6 and of 1
                            // sequences take different general products.
                            for (a, e) in batched.iter().zip(single.iter()) {
                                assert!(
                                    (a - e).abs() <= 1e-5,
                                    "{:?}, entry {k}: {what}",
                                    spec.cell
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}
