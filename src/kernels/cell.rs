//! One time step of each cell, for one batch entry, given that step's input projection.

use ndarray::Array2;

use super::activation::{lstm_default_cell, Act};
use super::linalg::matvec_packed_ordered;
use super::{DirectionWeights, LayerSpec};
use crate::ir::{Activation, ActivationKind, Cell};

/// Hidden and cell state of every batch entry, `[B, H]` each.
pub struct State {
    /// Hidden state.
    pub h: Array2<f32>,
    /// Cell state (LSTM; unused otherwise).
    pub c: Array2<f32>,
}

impl State {
    /// Batch entry `b`'s hidden state.
    #[inline(always)]
    pub fn h_row(&self, b: usize) -> &[f32] {
        let h = self.h.ncols();
        &self.h.as_slice().expect("standard layout")[b * h..(b + 1) * h]
    }

    /// Zero state.
    pub fn new(batch: usize, hidden: usize) -> Self {
        State {
            h: Array2::zeros((batch, hidden)),
            c: Array2::zeros((batch, hidden)),
        }
    }
}

/// Per-step working memory, allocated once per layer run.
pub struct Scratch {
    gates: Vec<f32>,
    extra: Vec<f32>,
    /// Flips every step: the recurrent products read their panels in alternating order, so
    /// a step starts on the panels the previous one left in the L1 cache.
    backwards: bool,
}

impl Scratch {
    /// Room for `gates` pre-activations and one hidden-sized vector.
    pub fn new(gates: usize, hidden: usize) -> Self {
        Scratch {
            gates: vec![0.0; gates],
            extra: vec![0.0; hidden],
            backwards: false,
        }
    }
}

/// A direction's cell, ready to step.
pub struct Step<'a> {
    cell: Cell,
    hidden: usize,
    weights: &'a DirectionWeights,
    /// The direction's activations (a cell uses 1 to 3; unused entries repeat the first).
    acts: [Act; 3],
    clip: Option<f32>,
    /// An LSTM with the default activations and no clip, peepholes or input_forget: its cell
    /// runs in one fused pass.
    default_lstm: bool,
}

impl<'a> Step<'a> {
    /// Binds a layer's options, one direction's weights and that direction's activations.
    pub fn new(
        spec: &LayerSpec,
        weights: &'a DirectionWeights,
        activations: &[Activation],
    ) -> Self {
        Step {
            cell: spec.cell.clone(),
            hidden: spec.hidden,
            weights,
            acts: std::array::from_fn(|k| Act::new(*activations.get(k).unwrap_or(&activations[0]))),
            clip: spec.clip,
            default_lstm: matches!(
                spec.cell,
                Cell::Lstm {
                    input_forget: false,
                    ..
                }
            ) && weights.peepholes.is_none()
                && spec.clip.is_none()
                && activations.len() == 3
                && activations[0].kind == ActivationKind::Sigmoid
                && activations[1].kind == ActivationKind::Tanh
                && activations[2].kind == ActivationKind::Tanh,
        }
    }

    /// Advances batch entry `b` by one step; `pre` is `X_t · Wᵀ + biases` for it.
    #[inline(always)]
    pub fn run(&self, pre: &[f32], state: &mut State, b: usize, scratch: &mut Scratch) {
        let h = self.hidden;
        let gates = &mut scratch.gates;
        gates.copy_from_slice(pre);
        let mut h_row = state.h.row_mut(b);
        let h_prev = h_row.as_slice_mut().expect("row-major");
        let r_packed = &self.weights.r_packed;
        scratch.backwards = !scratch.backwards;
        let backwards = scratch.backwards;
        let matvec_packed =
            |out: &mut [f32], v: &[f32], m| matvec_packed_ordered(out, v, m, backwards);
        match self.cell {
            Cell::Rnn => {
                matvec_packed(gates, h_prev, &r_packed[0]);
                clip(gates, self.clip);
                self.acts[0].apply(gates);
                h_prev.copy_from_slice(gates);
            }
            Cell::Lstm { input_forget, .. } => {
                matvec_packed(gates, h_prev, &r_packed[0]);
                let mut c_row = state.c.row_mut(b);
                let c = c_row.as_slice_mut().expect("row-major");
                if self.default_lstm {
                    lstm_default_cell(gates, c, h_prev);
                    return;
                }
                // Gate order in ONNX: i, o, f, c. Peepholes P: i, o, f.
                let (i_g, rest) = gates.split_at_mut(h);
                let (o_g, rest) = rest.split_at_mut(h);
                let (f_g, c_g) = rest.split_at_mut(h);
                if let Some(p) = &self.weights.peepholes {
                    for (((i, f), &c), (&pi, &pf)) in i_g
                        .iter_mut()
                        .zip(f_g.iter_mut())
                        .zip(&*c)
                        .zip(p[..h].iter().zip(&p[2 * h..3 * h]))
                    {
                        *i += pi * c;
                        *f += pf * c;
                    }
                }
                clip(i_g, self.clip);
                self.acts[0].apply(i_g);
                if input_forget {
                    for (f, &i) in f_g.iter_mut().zip(&*i_g) {
                        *f = 1.0 - i;
                    }
                } else {
                    clip(f_g, self.clip);
                    self.acts[0].apply(f_g);
                }
                clip(c_g, self.clip);
                self.acts[1].apply(c_g);
                for ((c, &f), (&i, &g)) in c.iter_mut().zip(&*f_g).zip(i_g.iter().zip(&*c_g)) {
                    *c = f * *c + i * g;
                }
                if let Some(p) = &self.weights.peepholes {
                    for ((o, &po), &c) in o_g.iter_mut().zip(&p[h..2 * h]).zip(&*c) {
                        *o += po * c;
                    }
                }
                clip(o_g, self.clip);
                self.acts[0].apply(o_g);
                // ONNX Runtime clips the gates' pre-activations, not the cell state fed to h.
                let hc = &mut scratch.extra;
                hc.copy_from_slice(c);
                self.acts[2].apply(hc);
                for ((h, &o), &t) in h_prev.iter_mut().zip(&*o_g).zip(&*hc) {
                    *h = o * t;
                }
            }
            Cell::Gru {
                linear_before_reset,
            } => {
                // Gate order in ONNX: z, r, h.
                let (zr, h_g) = gates.split_at_mut(2 * h);
                if linear_before_reset {
                    // h~ = g(X·Whᵀ + Wbh + r ⊙ (H·Rhᵀ + Rbh))
                    let rh = &mut scratch.extra;
                    rh.copy_from_slice(&self.weights.rb_h);
                    matvec_packed(zr, h_prev, &r_packed[0]);
                    matvec_packed(rh, h_prev, &r_packed[1]);
                    clip(zr, self.clip);
                    self.acts[0].apply(zr);
                    let (z, r) = zr.split_at(h);
                    for ((g, &r), &rh) in h_g.iter_mut().zip(r).zip(&*rh) {
                        *g += r * rh;
                    }
                    clip(h_g, self.clip);
                    self.acts[1].apply(h_g);
                    gru_blend(h_prev, z, h_g);
                } else {
                    // h~ = g(X·Whᵀ + Wbh + Rbh + (r ⊙ H)·Rhᵀ)
                    matvec_packed(zr, h_prev, &r_packed[0]);
                    clip(zr, self.clip);
                    self.acts[0].apply(zr);
                    let (z, r) = zr.split_at(h);
                    let rh = &mut scratch.extra;
                    for ((rh, &r), &hp) in rh.iter_mut().zip(r).zip(&*h_prev) {
                        *rh = r * hp;
                    }
                    matvec_packed(h_g, rh, &r_packed[1]);
                    clip(h_g, self.clip);
                    self.acts[1].apply(h_g);
                    gru_blend(h_prev, z, h_g);
                }
            }
        }
    }
}

impl Step<'_> {
    /// Whether [`Self::run_batch`] applies: a default LSTM (see `default_lstm`) on a CPU with
    /// the blocked matrix product.
    pub fn runs_batched(&self) -> bool {
        self.default_lstm && super::linalg::has_blocked_matmul()
    }

    /// Advances every active batch entry of a default LSTM (see `default_lstm`) by one step
    /// with one blocked matrix product for the whole batch (`H · Rᵀ`, R read once instead of
    /// once per entry), when the CPU has the kernel for it. `gates` holds each entry's input
    /// projection (`[B, 4H]`) and is overwritten. Returns false, having changed nothing, when
    /// this path does not apply; the caller then steps entry by entry.
    pub fn run_batch(&self, gates: &mut [f32], state: &mut State, active: &[bool]) -> bool {
        if !self.default_lstm {
            return false;
        }
        let h = self.hidden;
        let h_all = state.h.as_slice().expect("standard layout");
        if !super::linalg::matmul_packed(gates, h_all, &self.weights.r_packed[0]) {
            return false;
        }
        let h_all = state.h.as_slice_mut().expect("standard layout");
        let c_all = state.c.as_slice_mut().expect("standard layout");
        for (((g, hb), cb), &on) in gates
            .chunks_exact(4 * h)
            .zip(h_all.chunks_exact_mut(h))
            .zip(c_all.chunks_exact_mut(h))
            .zip(active)
        {
            if on {
                lstm_default_cell(g, cb, hb);
            }
        }
        true
    }
}

/// GRU's new state: `h = (1 - z) ⊙ h~ + z ⊙ h`.
#[inline(always)]
fn gru_blend(h_prev: &mut [f32], z: &[f32], h_new: &[f32]) {
    for ((h, &z), &n) in h_prev.iter_mut().zip(z).zip(h_new) {
        *h = (1.0 - z) * n + z * *h;
    }
}

#[inline(always)]
fn clip(values: &mut [f32], threshold: Option<f32>) {
    if let Some(t) = threshold {
        for v in values {
            *v = v.clamp(-t, t);
        }
    }
}
