//! One time step of each cell, for one batch entry, given that step's input projection.

use ndarray::Array2;

use super::activation::{lstm_default_cell, Act};
use super::linalg::{matvec_packed_ordered, matvec_sum_packed_ordered};
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
    extra: Vec<f32>,
    /// A batched GRU step's vectors for its h gate's recurrent product, the one it takes or
    /// the one it gives (`[B, H]`); sized on first use.
    batch_rh: Vec<f32>,
    /// Flips every step: the recurrent products read their panels in alternating order, so
    /// a step starts on the panels the previous one left in the L1 cache.
    backwards: bool,
}

impl Scratch {
    /// Room for one hidden-sized vector.
    pub fn new(hidden: usize) -> Self {
        Scratch {
            extra: vec![0.0; hidden],
            batch_rh: Vec::new(),
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

    /// Advances batch entry `b` by one step. `gates` holds `X_t · Wᵀ + biases` for it on
    /// entry and is worked on in place (the recurrent products accumulate into it), so the
    /// caller's input projection is read where it lies, never copied.
    #[inline(always)]
    pub fn run(&self, gates: &mut [f32], state: &mut State, b: usize, scratch: &mut Scratch) {
        scratch.backwards = !scratch.backwards;
        let backwards = scratch.backwards;
        match self.cell {
            Cell::Rnn | Cell::Lstm { .. } => {
                let h_prev = state.h_row(b);
                matvec_packed_ordered(gates, h_prev, &self.weights.r_packed[0], backwards);
                self.rnn_or_lstm_cell(gates, state, b, scratch);
            }
            Cell::Gru {
                linear_before_reset,
            } => self.gru_step(linear_before_reset, gates, state, b, scratch),
        }
    }

    /// [`Self::run`] from batch entry `b`'s input `x` (one row, the layer's input size) rather
    /// than its projection: a streamed step's form. An LSTM's or RNN's gates are
    /// `bias + x · Wᵀ + h · Rᵀ` in one pass over both matrices (the sums stay in registers
    /// between them; the same bits as projecting first); a GRU's reset gate sits between its
    /// recurrent products, so it projects `x` first. `gates` is working memory of the
    /// gates' size.
    #[inline(always)]
    pub fn run_from_input(
        &self,
        x: &[f32],
        gates: &mut [f32],
        state: &mut State,
        b: usize,
        scratch: &mut Scratch,
    ) {
        let weights = self.weights;
        if let Cell::Gru { .. } = self.cell {
            super::rows_projection(gates, x, x.len(), weights);
            self.run(gates, state, b, scratch);
            return;
        }
        scratch.backwards = !scratch.backwards;
        let terms = [
            (x, &weights.w_packed),
            (state.h_row(b), &weights.r_packed[0]),
        ];
        matvec_sum_packed_ordered(gates, &weights.bias, &terms, scratch.backwards);
        self.rnn_or_lstm_cell(gates, state, b, scratch);
    }

    /// An RNN's or LSTM's cell from its complete pre-activations `gates`: entry `b`'s new
    /// state in place.
    #[inline(always)]
    fn rnn_or_lstm_cell(
        &self,
        gates: &mut [f32],
        state: &mut State,
        b: usize,
        scratch: &mut Scratch,
    ) {
        let mut h_row = state.h.row_mut(b);
        let h_prev = h_row.as_slice_mut().expect("row-major");
        if self.cell == Cell::Rnn {
            self.rnn_cell(gates, h_prev);
        } else {
            let mut c_row = state.c.row_mut(b);
            let c = c_row.as_slice_mut().expect("row-major");
            self.lstm_cell(gates, c, h_prev, &mut scratch.extra);
        }
    }

    /// A GRU's step from its input projection `gates`: the z and r gates' recurrent product,
    /// the reset gate, the h gate's product, the new state.
    #[inline(always)]
    fn gru_step(
        &self,
        linear_before_reset: bool,
        gates: &mut [f32],
        state: &mut State,
        b: usize,
        scratch: &mut Scratch,
    ) {
        let h = self.hidden;
        let mut h_row = state.h.row_mut(b);
        let h_prev = h_row.as_slice_mut().expect("row-major");
        let r_packed = &self.weights.r_packed;
        let backwards = scratch.backwards;
        let matvec_packed =
            |out: &mut [f32], v: &[f32], m| matvec_packed_ordered(out, v, m, backwards);
        // Gate order in ONNX: z, r, h.
        let (zr, h_g) = gates.split_at_mut(2 * h);
        let rh = &mut scratch.extra;
        if linear_before_reset {
            // h~ = g(X·Whᵀ + Wbh + r ⊙ (H·Rhᵀ + Rbh)). Both products read only H, so a step
            // whose panels run backwards also takes the two matrices in reverse: each step
            // then starts on the matrix the previous one read last, whose panels are still in
            // L1 (together 48 KiB for hidden 64, more than a 32 KiB L1 holds). The same bits
            // in either order.
            rh.copy_from_slice(&self.weights.rb_h);
            if backwards {
                matvec_packed(rh, h_prev, &r_packed[1]);
                matvec_packed(zr, h_prev, &r_packed[0]);
            } else {
                matvec_packed(zr, h_prev, &r_packed[0]);
                matvec_packed(rh, h_prev, &r_packed[1]);
            }
            self.gru_gates(zr);
            self.gru_reset_after(zr, rh, h_g);
        } else {
            // h~ = g(X·Whᵀ + Wbh + Rbh + (r ⊙ H)·Rhᵀ)
            matvec_packed(zr, h_prev, &r_packed[0]);
            self.gru_gates(zr);
            gru_reset_before(zr, h_prev, rh);
            matvec_packed(h_g, rh, &r_packed[1]);
        }
        self.gru_update(zr, h_g, h_prev);
    }

    /// RNN: `h = f(gates)` (`gates` holding all of the pre-activation).
    #[inline(always)]
    fn rnn_cell(&self, gates: &mut [f32], h_prev: &mut [f32]) {
        clip(gates, self.clip);
        self.acts[0].apply(gates);
        h_prev.copy_from_slice(gates);
    }

    /// LSTM from its complete pre-activations `gates` (`[4H]`): the new `c` and `h` in place.
    /// `hc` is `[H]` of working memory.
    #[inline(always)]
    fn lstm_cell(&self, gates: &mut [f32], c: &mut [f32], h_prev: &mut [f32], hc: &mut [f32]) {
        if self.default_lstm {
            lstm_default_cell(gates, c, h_prev);
            return;
        }
        let h = self.hidden;
        let input_forget = matches!(
            self.cell,
            Cell::Lstm {
                input_forget: true,
                ..
            }
        );
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
        hc.copy_from_slice(c);
        self.acts[2].apply(hc);
        for ((h, &o), &t) in h_prev.iter_mut().zip(&*o_g).zip(&*hc) {
            *h = o * t;
        }
    }

    /// GRU: the update and reset gates `zr` (`[2H]`, complete pre-activations) through f.
    #[inline(always)]
    fn gru_gates(&self, zr: &mut [f32]) {
        clip(zr, self.clip);
        self.acts[0].apply(zr);
    }

    /// GRU with linear_before_reset: adds `r ⊙ rh` (`rh = H·Rhᵀ + Rbh`) to the h gate's
    /// input part `h_g`.
    #[inline(always)]
    fn gru_reset_after(&self, zr: &[f32], rh: &[f32], h_g: &mut [f32]) {
        let r = &zr[self.hidden..];
        for ((g, &r), &rh) in h_g.iter_mut().zip(r).zip(rh) {
            *g += r * rh;
        }
    }

    /// GRU: `h~ = g(h_g)` and the new state from z (the first half of `zr`).
    #[inline(always)]
    fn gru_update(&self, zr: &[f32], h_g: &mut [f32], h_prev: &mut [f32]) {
        clip(h_g, self.clip);
        self.acts[1].apply(h_g);
        gru_blend(h_prev, &zr[..self.hidden], h_g);
    }
}

impl Step<'_> {
    /// Whether [`Self::run_batch`] can run: a CPU with the blocked matrix product.
    pub fn runs_batched(&self) -> bool {
        super::linalg::has_blocked_matmul()
    }

    /// Advances every active batch entry by one step with one blocked matrix product per
    /// recurrent matrix for the whole batch (`H · Rᵀ`, R read once instead of once per
    /// entry), when the CPU has the kernel for it. `gates` holds each entry's input
    /// projection (`[B, gates*H]`) and is overwritten. The products sum in the order the
    /// vector product does, so the result is the same bits as stepping entry by entry.
    /// Only for a step where [`Self::runs_batched`] holds (panics otherwise).
    pub fn run_batch(
        &self,
        gates: &mut [f32],
        state: &mut State,
        active: &[bool],
        scratch: &mut Scratch,
    ) {
        let h = self.hidden;
        let gh = gates.len() / active.len();
        let r_packed = &self.weights.r_packed;
        // Products of every entry's vector, into rows `ldo` floats apart.
        let product = |out: &mut [f32], ldo, x: &[f32], m| {
            let ran = super::linalg::matmul_packed_strided(out, ldo, x, m);
            assert!(ran, "runs_batched promised the blocked product");
        };
        let h_all = state.h.as_slice_mut().expect("standard layout");
        let Cell::Gru {
            linear_before_reset,
        } = self.cell
        else {
            product(gates, gh, h_all, &r_packed[0]);
            let c_all = state.c.as_slice_mut().expect("standard layout");
            let entries = gates
                .chunks_exact_mut(gh)
                .zip(h_all.chunks_exact_mut(h))
                .zip(c_all.chunks_exact_mut(h))
                .zip(active);
            let entries = entries.filter(|(_, &on)| on);
            if self.cell == Cell::Rnn {
                entries.for_each(|(((g, hb), _), _)| self.rnn_cell(g, hb));
            } else {
                let hc = &mut scratch.extra;
                entries.for_each(|(((g, hb), cb), _)| self.lstm_cell(g, cb, hb, hc));
            }
            return;
        };
        // GRU: the z and r gates of every entry in one product, written in place in `gates`
        // (rows gh apart), then the h gate's.
        let zr_end = (active.len() - 1) * gh + 2 * h;
        product(&mut gates[..zr_end], gh, h_all, &r_packed[0]);
        let rh_all = &mut scratch.batch_rh;
        rh_all.clear();
        if linear_before_reset {
            for _ in active {
                rh_all.extend_from_slice(&self.weights.rb_h);
            }
            product(rh_all, h, h_all, &r_packed[1]);
            for (g, rh) in gates.chunks_exact_mut(gh).zip(rh_all.chunks_exact(h)) {
                let (zr, hg) = g.split_at_mut(2 * h);
                self.gru_gates(zr);
                self.gru_reset_after(zr, rh, hg);
            }
        } else {
            rh_all.resize(h_all.len(), 0.0);
            for ((g, rh), hb) in gates
                .chunks_exact_mut(gh)
                .zip(rh_all.chunks_exact_mut(h))
                .zip(h_all.chunks_exact(h))
            {
                let zr = &mut g[..2 * h];
                self.gru_gates(zr);
                gru_reset_before(zr, hb, rh);
            }
            product(&mut gates[2 * h..], gh, rh_all, &r_packed[1]);
        }
        let entries = gates
            .chunks_exact_mut(gh)
            .zip(h_all.chunks_exact_mut(h))
            .zip(active);
        for ((g, hb), _) in entries.filter(|(_, &on)| on) {
            let (zr, hg) = g.split_at_mut(2 * h);
            self.gru_update(zr, hg, hb);
        }
    }
}

/// GRU without linear_before_reset: `rh = r ⊙ h` (r the second half of `zr`), the vector the
/// h gate's recurrent product takes.
#[inline(always)]
fn gru_reset_before(zr: &[f32], h_prev: &[f32], rh: &mut [f32]) {
    let r = &zr[h_prev.len()..];
    for ((rh, &r), &hp) in rh.iter_mut().zip(r).zip(h_prev) {
        *rh = r * hp;
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
