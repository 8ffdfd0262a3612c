//! Running a parsed model: a [`Session`] over caller-provided memory.
//!
//! Memory (sizes from the model): `mem` int16 of [`Model::session_len`] words holds, layer by
//! layer, each recurrent direction's state (h, then c for LSTM) or a dense/embedding layer's
//! output, then the output vector, then int16 scratch; `acc` int32 of [`Model::acc_len`] words
//! holds gate pre-activations, after the gate rows' tables when the caller gave room for them
//! ([`Model::tables_len`] more words, with gate rows repacked in pairs, or
//! [`Model::row_tables_len`] for the tables alone; see [`crate::rowtab`]). [`Session::step`]
//! advances every layer by one sample (causal models); [`Session::run`] processes a whole
//! window layer by layer, which is also how bidirectional layers run, in a caller-provided
//! window buffer of [`Model::window_len`] words. A step on the same samples gives exactly what
//! `run` gives at the window's last step.

use crate::blob::{flags, InputKind, Layer, LayerKind, Model, OutputAct, Reduce};
use crate::{dense, gru, lstm, rnn};

/// Why a step or run could not be carried out (never a panic).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepError {
    /// A memory buffer is smaller than the model needs.
    BufferTooSmall {
        /// Words needed.
        need: usize,
        /// Words given.
        have: usize,
    },
    /// The sample has the wrong number of features.
    InputWidth {
        /// Features the model takes.
        expected: usize,
        /// Features given.
        got: usize,
    },
    /// A token id at or past the vocabulary size.
    TokenOutOfRange(usize),
    /// The model has a bidirectional or reverse layer: use [`Session::run`] over a window.
    NotCausal,
    /// `run` was given no time steps.
    EmptyWindow,
    /// A layer's row table ([`crate::rowtab`]) could not be built from parameters the parser
    /// accepted for it (an internal inconsistency; the session is not created).
    RowTable {
        /// Index of the layer.
        layer: usize,
    },
}

/// A model with its state, ready to stream.
pub struct Session<'m, 'a, 'b> {
    model: &'m Model<'a>,
    mem: &'b mut [i16],
    acc: &'b mut [i32],
    /// Words at the start of `acc` holding row tables (0: the session runs without them).
    tables_len: usize,
    /// Where each layer direction's block of those words lies (start, end; empty when it
    /// has none), worked out once here rather than on every step.
    blocks: [[(u32, u32); 2]; crate::blob::MAX_LAYERS],
}

impl<'m, 'a, 'b> Session<'m, 'a, 'b> {
    /// Binds the model to caller memory (checked against the model's needs) and zeroes the
    /// state. With `acc` of at least [`Model::tables_len`] + [`Model::acc_len`] words, the
    /// session also builds the gate rows' tables and their weights repacked in pairs
    /// ([`crate::rowtab`]) there; with [`Model::row_tables_len`] + [`Model::acc_len`], the
    /// tables alone: the same results either way, in fewer instructions per step.
    pub fn new(
        model: &'m Model<'a>,
        mem: &'b mut [i16],
        acc: &'b mut [i32],
    ) -> Result<Self, StepError> {
        let (need_mem, need_acc) = (model.session_len(), model.acc_len());
        if mem.len() < need_mem {
            return Err(StepError::BufferTooSmall {
                need: need_mem,
                have: mem.len(),
            });
        }
        if acc.len() < need_acc {
            return Err(StepError::BufferTooSmall {
                need: need_acc,
                have: acc.len(),
            });
        }
        // Row tables when the caller gave room for them (then at the start of `acc`), laid
        // out as `dir_table_range` says; with room for all of `tables_len`, the gate rows
        // repacked in pairs after each direction's table too.
        let spare = acc.len() - need_acc;
        let (tables_len, pairs) = if spare >= model.tables_len() {
            (model.tables_len(), true)
        } else if spare >= model.row_tables_len() {
            (model.row_tables_len(), false)
        } else {
            (0, false)
        };
        let mut blocks = [[(0u32, 0u32); 2]; crate::blob::MAX_LAYERS];
        let mut start = 0;
        for ((i, layer), at) in model.layers.iter().enumerate().zip(&mut blocks) {
            let layer_start = start;
            start += layer_tables_len(layer, pairs);
            for (d, p) in layer.params[..layer.dirs].iter().enumerate() {
                let (Some(form), Some(r)) = (p.table, dir_table_range(layer, d, pairs)) else {
                    continue;
                };
                let block = layer_start + r.start..layer_start + r.end;
                if tables_len == 0 {
                    continue;
                }
                let built = acc[..tables_len]
                    .get_mut(block.clone())
                    .is_some_and(|b| build_dir(layer, p, form, b));
                if !built {
                    return Err(StepError::RowTable { layer: i });
                }
                at[d] = (block.start as u32, block.end as u32);
            }
        }
        let mut s = Session {
            model,
            mem,
            acc,
            tables_len,
            blocks,
        };
        s.reset();
        Ok(s)
    }

    /// Whether this session runs with row tables (see [`Session::new`]).
    pub fn has_row_tables(&self) -> bool {
        self.tables_len > 0
    }

    /// The model this session runs.
    pub fn model(&self) -> &Model<'a> {
        self.model
    }

    /// Every layer's carried memory, in layer order: each recurrent direction's state (h,
    /// then c for LSTM) and each dense or embedding layer's last output. Two sessions that
    /// saw the same samples hold the same words here, whether they ran step by step or over
    /// windows; firmware and `recur sim` write it out so that their ends can be compared.
    pub fn state(&self) -> &[i16] {
        let regions: usize = self.model.layers.iter().map(Self::region_len).sum();
        &self.mem[..regions]
    }

    /// Zeroes every state (the start of a new sequence).
    pub fn reset(&mut self) {
        self.mem.iter_mut().for_each(|v| *v = 0);
    }

    fn region_len(layer: &Layer) -> usize {
        if layer.is_recurrent() {
            layer.dirs * layer.state_per_dir()
        } else {
            layer.out_dim
        }
    }

    /// Advances the model by one time step. `x` holds `input_dim` int16 features, or for a
    /// token model one id (read as unsigned 16-bit). Returns the output vector (Q15 after
    /// softmax/sigmoid; otherwise the last layer's int16 values).
    pub fn step(&mut self, x: &[i16]) -> Result<&[i16], StepError> {
        let model = self.model;
        if !model.is_causal() {
            return Err(StepError::NotCausal);
        }
        if x.len() != model.input_dim {
            return Err(StepError::InputWidth {
                expected: model.input_dim,
                got: x.len(),
            });
        }
        let regions: usize = model.layers.iter().map(Self::region_len).sum();
        let (layers_mem, rest) = self.mem.split_at_mut(regions);
        let (out, tmp) = rest.split_at_mut(model.output_dim);
        let (tables, acc) = self.acc.split_at_mut(self.tables_len);
        let tables: &[i32] = tables;
        let mut start = 0;
        let mut in_range: Option<(usize, usize)> = None; // previous output within layers_mem
        for (layer, blocks) in model.layers.iter().zip(&self.blocks) {
            let len = Self::region_len(layer);
            let (before, after) = layers_mem.split_at_mut(start);
            let own = &mut after[..len];
            let input: &[i16] = match in_range {
                None => x,
                Some((a, b)) => &before[a..b],
            };
            let table = block(tables, blocks[0]);
            step_layer(layer, 0, input, own, acc, table, tmp)?;
            in_range = Some((start, start + layer.out_dim));
            start += len;
        }
        let last = match in_range {
            Some((a, b)) => &layers_mem[a..b],
            None => x,
        };
        finish(model, last, out, acc);
        Ok(out)
    }

    /// Runs a whole window of `steps` samples (`x` holds `steps * input_dim` values, time
    /// major), layer by layer, starting from the current state; bidirectional and reverse
    /// layers see the whole window. `window` needs [`Model::window_len`]`(steps)` words.
    /// Returns `steps` output rows when the last recurrent layer passes on every step, else
    /// one row.
    pub fn run<'w>(
        &mut self,
        x: &[i16],
        steps: usize,
        window: &'w mut [i16],
    ) -> Result<&'w [i16], StepError> {
        let model = self.model;
        if steps == 0 {
            return Err(StepError::EmptyWindow);
        }
        let need = model.window_len(steps);
        if window.len() < need {
            return Err(StepError::BufferTooSmall {
                need,
                have: window.len(),
            });
        }
        if x.len() != steps * model.input_dim {
            return Err(StepError::InputWidth {
                expected: steps * model.input_dim,
                got: x.len(),
            });
        }
        let (mut cur, mut next) = window[..need].split_at_mut(need / 2);
        cur[..x.len()].copy_from_slice(x);
        let mut rows = steps;
        let mut width = model.input_dim;
        let regions: usize = model.layers.iter().map(Self::region_len).sum();
        let (layers_mem, rest) = self.mem.split_at_mut(regions);
        let (out_tmp, tmp) = rest.split_at_mut(model.output_dim);
        let _ = out_tmp;
        let (tables, acc) = self.acc.split_at_mut(self.tables_len);
        let tables: &[i32] = tables;
        let mut start = 0;
        for (layer, blocks) in model.layers.iter().zip(&self.blocks) {
            let len = Self::region_len(layer);
            let own = &mut layers_mem[start..start + len];
            start += len;
            let w = layer.width();
            if layer.is_recurrent() {
                let per = layer.state_per_dir();
                let out_rows = if layer.reduce == Reduce::Sequence {
                    rows
                } else {
                    1
                };
                for d in 0..layer.dirs {
                    let reverse = d == 1 || layer.has(flags::REVERSE);
                    let st = &mut own[d * per..(d + 1) * per];
                    let table = block(tables, blocks[d]);
                    for s in 0..rows {
                        let t = if reverse { rows - 1 - s } else { s };
                        let xin = &cur[t * width..(t + 1) * width];
                        recurrent_dir(layer, d, xin, st, acc, table, tmp);
                        let h = &st[..layer.out_dim];
                        let dst = match layer.reduce {
                            Reduce::Sequence => Some(t),
                            Reduce::Last if t == rows - 1 => Some(0),
                            _ => None,
                        };
                        if let Some(r) = dst {
                            let o = r * w + d * layer.out_dim;
                            next[o..o + layer.out_dim].copy_from_slice(h);
                        }
                    }
                    if layer.reduce == Reduce::Final {
                        let o = d * layer.out_dim;
                        next[o..o + layer.out_dim].copy_from_slice(&st[..layer.out_dim]);
                    }
                }
                rows = out_rows;
            } else {
                for t in 0..rows {
                    let xin = &cur[t * width..(t + 1) * width];
                    let dst = &mut next[t * w..(t + 1) * w];
                    step_layer(layer, 0, xin, dst, acc, &[], tmp)?;
                }
                own.copy_from_slice(&next[(rows - 1) * w..rows * w]);
            }
            width = w;
            core::mem::swap(&mut cur, &mut next);
        }
        for t in 0..rows {
            let (src, dst) = (
                &cur[t * width..(t + 1) * width],
                &mut next[t * width..(t + 1) * width],
            );
            finish(model, src, dst, acc);
        }
        Ok(&next[..rows * width])
    }
}

/// Words a layer's block of the session's tables takes: its row tables, and with `pairs` its
/// gate rows repacked in pairs.
fn layer_tables_len(layer: &Layer, pairs: bool) -> usize {
    layer.table_len() + if pairs { layer.pair_len() } else { 0 }
}

/// Fills direction `p`'s block ([`dir_table_range`]): its row table in `form`, then, when the
/// block has room for them, its [`Layer::pair_rows`] of `w` and of `r` repacked in pairs.
fn build_dir(
    layer: &Layer,
    p: &crate::blob::Params,
    form: crate::rowtab::Form,
    block: &mut [i32],
) -> bool {
    use crate::rowtab::{build, pack_pairs, pairs_len, ROW_WORDS};
    let rows = layer.table_rows();
    let (table, pairs) = block.split_at_mut((rows * ROW_WORDS).min(block.len()));
    if !build(p, rows, form, table) {
        return false;
    }
    if pairs.is_empty() {
        return true;
    }
    let (n, ws, rs) = (layer.pair_rows(), layer.w_stride(), layer.r_stride());
    let pairs: &mut [u32] = bytemuck::cast_slice_mut(pairs);
    let (wp, rp) = pairs.split_at_mut(pairs_len(form, n, ws).min(pairs.len()));
    pack_pairs(&p.w, ws, n, wp) && pack_pairs(&p.r, rs, n, rp)
}

/// A direction's block of the session's `tables` (start, end as [`Session::new`] found it;
/// empty when it has none).
#[inline(always)]
fn block(tables: &[i32], (start, end): (u32, u32)) -> &[i32] {
    tables.get(start as usize..end as usize).unwrap_or(&[])
}

/// Where direction `d`'s block lies within its layer's block: one per direction that has a
/// row table ([`crate::blob::Params::table`]), in direction order, each its table and, with
/// `pairs`, its repacked gate rows ([`Layer::dir_pair_len`]). `None` when that direction has
/// no table.
fn dir_table_range(layer: &Layer, d: usize, pairs: bool) -> Option<core::ops::Range<usize>> {
    let len = |p: &crate::blob::Params| {
        let extra = if pairs { layer.dir_pair_len(p) } else { 0 };
        p.table
            .map(|_| layer.table_rows() * crate::rowtab::ROW_WORDS + extra)
    };
    let own = len(layer.params.get(d)?)?;
    let before: usize = layer.params[..d].iter().filter_map(len).sum();
    Some(before..before + own)
}

/// One direction `d` of a recurrent layer: `st` is that direction's `[h, c]`, `table` its row
/// table (or empty).
fn recurrent_dir(
    layer: &Layer,
    d: usize,
    x: &[i16],
    st: &mut [i16],
    acc: &mut [i32],
    table: &[i32],
    tmp: &mut [i16],
) {
    let p = &layer.params[d];
    match layer.kind {
        LayerKind::Lstm => {
            let (h, c) = st.split_at_mut(layer.out_dim);
            lstm::step(layer, p, table, x, h, c, acc);
        }
        LayerKind::Gru => gru::step(layer, p, table, x, st, acc, tmp),
        LayerKind::Rnn => rnn::step(layer, p, table, x, st, acc),
        _ => {}
    }
}

/// One sample through one layer (direction `d` for recurrent ones); `own` is its memory,
/// `table` that direction's block of the session's tables ([`block`]; empty without).
fn step_layer(
    layer: &Layer,
    d: usize,
    x: &[i16],
    own: &mut [i16],
    acc: &mut [i32],
    table: &[i32],
    tmp: &mut [i16],
) -> Result<(), StepError> {
    match layer.kind {
        LayerKind::Dense => dense::dense(layer, &layer.params[0], x, own, acc),
        LayerKind::Embedding => {
            let token = x.first().map_or(0, |&v| v as u16 as usize);
            if !dense::embed(layer, &layer.params[0], token, own) {
                return Err(StepError::TokenOutOfRange(token));
            }
        }
        _ => recurrent_dir(layer, d, x, own, acc, table, tmp),
    }
    Ok(())
}

/// Applies the output function to the last layer's values.
fn finish(model: &Model, last: &[i16], out: &mut [i16], acc: &mut [i32]) {
    match model.output_act {
        OutputAct::None => out.copy_from_slice(last),
        OutputAct::Softmax => dense::softmax(last, model.act_m, model.act_s, acc, out),
        OutputAct::Sigmoid => dense::sigmoid(last, model.act_m, model.act_s, out),
    }
}

impl Model<'_> {
    /// Whether the model reads token ids.
    pub fn takes_tokens(&self) -> bool {
        self.input_kind == InputKind::Tokens
    }
}
