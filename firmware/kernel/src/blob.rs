//! The `.rcm` model blob: format, CRC check and the zero-copy parser.
//!
//! Layout (little-endian; every array starts on a 4-byte boundary, zero padding between):
//!
//! ```text
//! 0   header (16 B): magic "RCMB", version u16, header_len u16 (=16), total_len u32,
//!                    crc32 u32 (CRC-32/ISO-HDLC of bytes 16..total_len)
//! 16  model record (32 B): input_kind u8 (0 features, 1 token ids), out_act u8 (0 none,
//!                    1 softmax, 2 sigmoid), n_layers u8, 0 u8, input_dim u16, output_dim u16,
//!                    act_m i32, act_s u8, 0 u8 x3, output_scale f32, input_affine_offset u32,
//!                    0 u8 x8
//! 48  layer table: n_layers x 32 B: kind u8 (1 LSTM, 2 GRU, 3 RNN, 4 Dense, 5 Embedding),
//!                    flags u8, reduce u8, weight_bits u8 (8|16), in_dim u16, out_dim u16,
//!                    frac_h u8, frac_c u8, 0 u16, clip_q20 i32, params_offset u32,
//!                    params_len u32, 0 u8 x8
//! ..  input affine (features only): input_dim x (a f32, b f32): q = round(x*a + b)
//! ..  each layer's parameters in table order, at params_offset (see [`Layer`])
//! ```
//!
//! Weight rows are padded to an even number of elements so that int16 weights can be read
//! two at a time (SMLAD/SMLALD) on Cortex-M. The host writer (`recur::quant::blob`) is the
//! only producer of this format and [`Model::parse`] its only reader. Every malformed blob is a
//! [`BlobError`]: the parser checks lengths, CRC, version, alignment, every field's range and
//! the consistency of the layer chain, so the arithmetic in the step path can rely on them.

use core::fmt;

use crc::{Crc, CRC_32_ISO_HDLC};

/// First four bytes of every blob.
pub const MAGIC: [u8; 4] = *b"RCMB";
/// The format version this kernel reads.
pub const FORMAT_VERSION: u16 = 1;
/// Bytes in the header.
pub const HEADER_LEN: usize = 16;
/// Bytes in the model record.
pub const MODEL_LEN: usize = 32;
/// Bytes in one layer-table entry.
pub const LAYER_LEN: usize = 32;
/// Most layers one blob may hold.
pub const MAX_LAYERS: usize = 8;
/// Largest input, hidden or output width (bounds accumulators below 2^40).
pub const MAX_DIM: usize = 1024;
/// Multipliers are below this in magnitude (keeps `acc * m` below 2^62).
pub const MAX_MULTIPLIER: i32 = 1 << 22;
/// Largest requantisation shift.
pub const MAX_SHIFT: u8 = 62;

/// The CRC used in the header: CRC-32/ISO-HDLC (zlib's crc32).
pub const CRC32: Crc<u32> = Crc::<u32>::new(&CRC_32_ISO_HDLC);

/// Flag bits of a layer-table entry.
pub mod flags {
    /// Bidirectional recurrent layer (two parameter sets, outputs concatenated).
    pub const BIDIRECTIONAL: u8 = 1;
    /// Reverse-direction recurrent layer.
    pub const REVERSE: u8 = 2;
    /// LSTM with peepholes.
    pub const PEEPHOLES: u8 = 4;
    /// LSTM with input_forget (f = 1 - i).
    pub const INPUT_FORGET: u8 = 8;
    /// GRU with linear_before_reset=1.
    pub const LINEAR_BEFORE_RESET: u8 = 16;
    /// SimpleRNN with relu instead of tanh.
    pub const RELU: u8 = 32;
    /// All defined bits.
    pub const ALL: u8 = 63;
}

/// Why a blob was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobError {
    /// Fewer bytes than the format needs.
    Truncated {
        /// Bytes needed.
        need: usize,
        /// Bytes available.
        have: usize,
    },
    /// The first four bytes are not "RCMB".
    BadMagic,
    /// A format version this kernel does not read.
    Version(u16),
    /// Header fields (header length, total length) do not make sense.
    BadHeader,
    /// The CRC does not match the contents.
    Crc {
        /// CRC stored in the header.
        stored: u32,
        /// CRC of the bytes.
        computed: u32,
    },
    /// The blob or one of its arrays does not start on a 4-byte boundary.
    Misaligned,
    /// The model record is invalid.
    BadModel(&'static str),
    /// A layer-table entry or its parameters are invalid.
    BadLayer {
        /// Index in the layer table.
        index: usize,
        /// What is wrong.
        reason: &'static str,
    },
}

impl fmt::Display for BlobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BlobError::Truncated { need, have } => {
                write!(f, "truncated blob: {need} bytes needed, {have} present")
            }
            BlobError::BadMagic => write!(f, "not an .rcm blob (bad magic)"),
            BlobError::Version(v) => write!(
                f,
                "blob format version {v}, this kernel reads version {FORMAT_VERSION}"
            ),
            BlobError::BadHeader => write!(f, "inconsistent blob header"),
            BlobError::Crc { stored, computed } => write!(
                f,
                "CRC mismatch: header says {stored:#010x}, contents give {computed:#010x}"
            ),
            BlobError::Misaligned => write!(f, "blob data not aligned to 4 bytes"),
            BlobError::BadModel(r) => write!(f, "bad model record: {r}"),
            BlobError::BadLayer { index, reason } => write!(f, "bad layer {index}: {reason}"),
        }
    }
}

/// What the model takes at each time step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputKind {
    /// `input_dim` int16 features.
    Features,
    /// One token id (the model starts with an embedding).
    Tokens,
}

/// The function applied to the last layer's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputAct {
    /// None: the last layer's int16 values are the output.
    None,
    /// Softmax over the output vector, Q15 probabilities.
    Softmax,
    /// Element-wise logistic sigmoid, Q15.
    Sigmoid,
}

/// A layer's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerKind {
    /// LSTM (gates i, o, f, c as in ONNX).
    Lstm,
    /// GRU (gates z, r, h as in ONNX).
    Gru,
    /// SimpleRNN (Elman), tanh or relu.
    Rnn,
    /// Fully connected layer applied at every step.
    Dense,
    /// Token embedding lookup.
    Embedding,
}

/// What a recurrent layer passes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reduce {
    /// Every step's hidden state (ONNX `Y`).
    Sequence,
    /// Only the output at the window's last time step (`Y[-1]`).
    Last,
    /// Only each direction's final state (`Y_h`; the backward one ends at step 0).
    Final,
}

/// A weight matrix, row-major, rows padded to an even length.
#[derive(Debug, Clone, Copy)]
pub enum Weights<'a> {
    /// int8 weights.
    I8(&'a [i8]),
    /// int16 weights.
    I16(&'a [i16]),
}

impl Default for Weights<'_> {
    fn default() -> Self {
        Weights::I16(&[])
    }
}

impl Weights<'_> {
    /// `Σ_k w[row, k] · x[k]` over `x.len()` columns, rows `stride` elements apart.
    #[inline(always)]
    pub fn dot(&self, row: usize, stride: usize, x: &[i16]) -> i64 {
        let start = row * stride;
        match self {
            Weights::I8(w) => dot(w.get(start..start + x.len()).unwrap_or(&[]), x),
            Weights::I16(w) => dot(w.get(start..start + x.len()).unwrap_or(&[]), x),
        }
    }

    /// Element `i` widened to int16 (0 when out of range).
    #[inline(always)]
    pub fn get(&self, i: usize) -> i16 {
        match self {
            Weights::I8(w) => w.get(i).map_or(0, |&v| v as i16),
            Weights::I16(w) => w.get(i).copied().unwrap_or(0),
        }
    }

    /// Bytes the weights occupy.
    pub fn bytes(&self) -> usize {
        match self {
            Weights::I8(w) => w.len(),
            Weights::I16(w) => w.len() * 2,
        }
    }
}

#[inline(always)]
fn dot<W: Copy + Into<i32>>(w: &[W], x: &[i16]) -> i64 {
    let mut acc = 0i64;
    for (&a, &b) in w.iter().zip(x) {
        acc += (a.into() * b as i32) as i64;
    }
    acc
}

/// One direction's parameters (or a dense/embedding layer's, which use `w`, `bias`, `mx`,
/// `sx`). Bias and `rbn` are Q20 for recurrent layers; for Dense, `bias` is in 1/256 output
/// units. `mx`/`sx` requantise the input product, `mh`/`sh` the recurrent product (to Q20).
#[derive(Debug, Clone, Copy, Default)]
pub struct Params<'a> {
    /// Input weights `[gates*H, in_pad]` (Dense `[out, in_pad]`, Embedding `[vocab, dim_pad]`).
    pub w: Weights<'a>,
    /// Recurrent weights `[gates*H, H_pad]`.
    pub r: Weights<'a>,
    /// Bias per output row.
    pub bias: &'a [i32],
    /// GRU linear_before_reset: the recurrent bias of the h gate, Q20, `[H]`.
    pub rbn: &'a [i32],
    /// Multiplier per row for the input product.
    pub mx: &'a [i32],
    /// Shift per row for the input product.
    pub sx: &'a [u8],
    /// Multiplier per row for the recurrent product.
    pub mh: &'a [i32],
    /// Shift per row for the recurrent product.
    pub sh: &'a [u8],
    /// LSTM peepholes `[3*H]` (i, o, f).
    pub p: &'a [i16],
    /// Multiplier per peephole gate (i, o, f) for `p * c` to Q20.
    pub mp: &'a [i32],
    /// Shift per peephole gate.
    pub sp: &'a [u8],
    /// Set by the parser when every gate row's requantised products provably fit the
    /// int32 fast path ([`crate::fixed::requant32`]): for each row `j`, with `|x|, |h| <=
    /// 2^15`, `|rq(W[j]·x)| <= 2^29` and `|rq(R[j]·h)| <= 2^29`, and both shifts >= 1. Then
    /// `ax + ah` is exact in int32 and `sat32(ax + ah + bias)` equals
    /// `(ax + ah).saturating_add(bias)`. For a Dense layer, the same bound on `rq(W[j]·x)`
    /// alone (its `requant` then equals `requant32`).
    pub fast: bool,
    /// Set by the parser, with `fast`, when `w` and `r` are int8 and every row's `Σ|w|` in
    /// each is below 2^16: then with `|x|, |h| <= 2^15` every partial sum of a row's products
    /// is below 2^31 in magnitude, so the products accumulate exactly in int32
    /// ([`crate::rows::dot8_32`], SMLAD on Cortex-M4).
    pub acc32: bool,
    /// Set by the parser when the fast path's gate rows fit a [`crate::rowtab`] form: then
    /// a session keeps them as a row table in RAM ([`Layer::table_len`]).
    pub table: Option<crate::rowtab::Form>,
}

/// One entry of the layer chain, its parameters read in place.
#[derive(Debug, Clone, Copy)]
pub struct Layer<'a> {
    /// Layer type.
    pub kind: LayerKind,
    /// Flag bits ([`flags`]).
    pub flags: u8,
    /// What a recurrent layer passes on.
    pub reduce: Reduce,
    /// Input width (Embedding: vocabulary size).
    pub in_dim: usize,
    /// Hidden size (recurrent), output width (Dense) or embedding width.
    pub out_dim: usize,
    /// Fractional bits of the hidden output (15 for tanh-bounded cells).
    pub frac_h: u8,
    /// Fractional bits of the LSTM cell state.
    pub frac_c: u8,
    /// Clip threshold in Q20 (0: none).
    pub clip_q20: i32,
    /// Number of directions (2 for bidirectional).
    pub dirs: usize,
    /// Parameters per direction (only `[0]` for non-recurrent layers).
    pub params: [Params<'a>; 2],
}

impl Layer<'_> {
    /// Whether this is an LSTM, GRU or RNN.
    pub fn is_recurrent(&self) -> bool {
        matches!(self.kind, LayerKind::Lstm | LayerKind::Gru | LayerKind::Rnn)
    }

    /// Number of gates (4 LSTM, 3 GRU, 1 RNN, else 1).
    pub fn gates(&self) -> usize {
        match self.kind {
            LayerKind::Lstm => 4,
            LayerKind::Gru => 3,
            _ => 1,
        }
    }

    /// Width of what the layer passes on per step.
    pub fn width(&self) -> usize {
        self.dirs * self.out_dim
    }

    /// Whether a flag bit is set.
    pub fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }

    /// Row stride of `w` (input width rounded up to even).
    pub fn w_stride(&self) -> usize {
        even(self.in_dim)
    }

    /// Row stride of `r` (hidden size rounded up to even).
    pub fn r_stride(&self) -> usize {
        even(self.out_dim)
    }

    /// int16 state per direction (h, plus c for LSTM).
    pub fn state_per_dir(&self) -> usize {
        match self.kind {
            LayerKind::Lstm => 2 * self.out_dim,
            LayerKind::Gru | LayerKind::Rnn => self.out_dim,
            _ => self.out_dim,
        }
    }

    /// int32 accumulators a step needs.
    pub fn acc_len(&self) -> usize {
        match self.kind {
            // 4H preactivations, then x and h packed two to a word for the fast path.
            LayerKind::Lstm => {
                4 * self.out_dim
                    + crate::rows::words(self.in_dim)
                    + crate::rows::words(self.out_dim)
            }
            // 4H preactivations (z, r, the h gate's input and recurrent parts), then x and h
            // packed for the fast path.
            LayerKind::Gru => {
                4 * self.out_dim
                    + crate::rows::words(self.in_dim)
                    + crate::rows::words(self.out_dim)
            }
            // H preactivations, then x and h packed for the fast path.
            LayerKind::Rnn => {
                self.out_dim + crate::rows::words(self.in_dim) + crate::rows::words(self.out_dim)
            }
            _ => 0,
        }
    }

    /// Gate rows a direction's row table holds: a SimpleRNN's rows; an LSTM's four gates; a
    /// GRU's z, r and h gates, then the h gate's rows again for its recurrent product, which is requantised on
    /// its own (bias `rbn` with linear_before_reset; without, 0: that product, of `r ⊙ h`,
    /// is added to the gate's input product).
    pub fn table_rows(&self) -> usize {
        table_rows(self.kind, self.out_dim)
    }

    /// int32 words of row tables ([`crate::rowtab`]) this layer keeps in a session's `acc`
    /// memory: one table per direction whose parameters have a [`Params::table`] form.
    pub fn table_len(&self) -> usize {
        let tables = self.params[..self.dirs]
            .iter()
            .filter(|p| p.table.is_some());
        tables.count() * self.table_rows() * crate::rowtab::ROW_WORDS
    }

    /// Gate rows whose weights a session may keep repacked in pairs
    /// ([`crate::rowtab::pack_pairs`]): a SimpleRNN's rows, an LSTM's four gates, a GRU's
    /// three (z and r on the dual-product kernel, the h gate's input and recurrent products
    /// apart).
    pub fn pair_rows(&self) -> usize {
        match self.kind {
            LayerKind::Rnn => self.out_dim,
            LayerKind::Lstm => 4 * self.out_dim,
            LayerKind::Gru => 3 * self.out_dim,
            _ => 0,
        }
    }

    /// int32 words of repacked weight pairs direction `p` of this layer takes: its
    /// [`Layer::pair_rows`] of `w` and of `r`, for directions with a row table.
    pub fn dir_pair_len(&self, p: &Params) -> usize {
        use crate::rowtab::pairs_len;
        let Some(form) = p.table else {
            return 0;
        };
        let rows = self.pair_rows();
        pairs_len(form, rows, self.w_stride()) + pairs_len(form, rows, self.r_stride())
    }

    /// int32 words of repacked weight pairs this layer's directions take (see
    /// [`Layer::dir_pair_len`]).
    pub fn pair_len(&self) -> usize {
        let dirs = self.params[..self.dirs].iter();
        dirs.map(|p| self.dir_pair_len(p)).sum()
    }

    /// Bytes of parameters (flash).
    pub fn param_bytes(&self) -> usize {
        let mut n = 0;
        for p in &self.params[..self.dirs] {
            n += p.w.bytes() + p.r.bytes() + p.p.len() * 2;
            n += 4 * (p.bias.len() + p.rbn.len() + p.mx.len() + p.mh.len() + p.mp.len());
            n += p.sx.len() + p.sh.len() + p.sp.len();
        }
        n
    }
}

/// Largest `|requant(acc, m, s)|` over `|acc| <= a` (`a < 2^40`, `|m| < 2^22`: the product
/// is below 2^62).
fn requant_bound(a: u64, m: i32, s: u8) -> u64 {
    (a * m.unsigned_abs() as u64 + ((1u64 << s) >> 1)) >> s
}

/// `Σ|w|` over row `j` of a matrix of rows of `stride` weights.
fn row_abs_sum(w: &Weights, j: usize, stride: usize) -> u64 {
    (j * stride..(j + 1) * stride)
        .map(|i| w.get(i).unsigned_abs() as u64)
        .sum()
}

/// Whether every gate row of `p` passes the int32 fast path's bounds (see [`Params::fast`]).
/// `|dot| <= 2^15 · Σ|w|` over the whole padded row: with int16 operands bounded by 2^15
/// in magnitude, that holds whatever the inputs and state are.
fn fits_fast_path(p: &Params, ws: usize, rs: usize) -> bool {
    const LIMIT: u64 = 1 << 29;
    let rows = p.mx.len();
    if ws == 0 || rs == 0 || p.mh.len() != rows || p.bias.len() != rows {
        return false;
    }
    (0..rows).all(|j| {
        let (sx, sh) = (p.sx[j], p.sh[j]);
        let bx = requant_bound(row_abs_sum(&p.w, j, ws) << 15, p.mx[j], sx);
        let bh = requant_bound(row_abs_sum(&p.r, j, rs) << 15, p.mh[j], sh);
        sx >= 1 && sh >= 1 && bx <= LIMIT && bh <= LIMIT
    })
}

/// Whether every row of a Dense layer's `p` passes the int32 fast path's bound on its one
/// product (see [`Params::fast`]), as [`fits_fast_path`] for the input side.
fn fits_dense_fast_path(p: &Params, ws: usize) -> bool {
    const LIMIT: u64 = 1 << 29;
    let rows = p.mx.len();
    if ws == 0 || p.sx.len() != rows || p.bias.len() != rows {
        return false;
    }
    (0..rows).all(|j| {
        let bx = requant_bound(row_abs_sum(&p.w, j, ws) << 15, p.mx[j], p.sx[j]);
        p.sx[j] >= 1 && bx <= LIMIT
    })
}

/// Whether `p`'s int8 rows accumulate exactly in int32 (see [`Params::acc32`]).
fn fits_acc32(p: &Params, ws: usize, rs: usize) -> bool {
    const LIMIT: u64 = 1 << 16;
    let (Weights::I8(w), Weights::I8(r)) = (p.w, p.r) else {
        return false;
    };
    let ok = |m: &[i8], stride: usize| {
        stride > 0
            && m.chunks(stride)
                .all(|row| row.iter().map(|v| v.unsigned_abs() as u64).sum::<u64>() < LIMIT)
    };
    ok(w, ws) && ok(r, rs)
}

/// Gate rows of a row table for a layer of `kind` with hidden size `h`
/// ([`Layer::table_rows`]).
const fn table_rows(kind: LayerKind, h: usize) -> usize {
    match kind {
        LayerKind::Rnn => h,
        LayerKind::Lstm | LayerKind::Gru => 4 * h,
        _ => 0,
    }
}

/// Rounds up to an even count.
pub const fn even(n: usize) -> usize {
    n + (n & 1)
}

/// A parsed blob: a view into the caller's bytes, nothing copied.
#[derive(Debug, Clone)]
pub struct Model<'a> {
    /// Features or token ids.
    pub input_kind: InputKind,
    /// Features per step (1 for token models).
    pub input_dim: usize,
    /// Output width.
    pub output_dim: usize,
    /// Function on the last layer's output.
    pub output_act: OutputAct,
    /// Multiplier taking output-layer values to Q20 for softmax/sigmoid.
    pub act_m: i32,
    /// Shift for `act_m`.
    pub act_s: u8,
    /// Real value of one output unit (dequantisation; host side only).
    pub output_scale: f32,
    /// Input quantisation (features): q = round(x*a + b) per feature, as (a, b) pairs.
    pub input_affine: &'a [f32],
    /// The layer chain.
    pub layers: heapless::Vec<Layer<'a>, MAX_LAYERS>,
    /// The blob's total length in bytes.
    pub blob_len: usize,
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn slice(&self, at: usize, len: usize) -> Result<&'a [u8], BlobError> {
        let end = at.checked_add(len).ok_or(BlobError::BadHeader)?;
        self.bytes.get(at..end).ok_or(BlobError::Truncated {
            need: end,
            have: self.bytes.len(),
        })
    }
    fn u8(&self, at: usize) -> Result<u8, BlobError> {
        Ok(self.slice(at, 1)?[0])
    }
    fn u16(&self, at: usize) -> Result<u16, BlobError> {
        let b = self.slice(at, 2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&self, at: usize) -> Result<u32, BlobError> {
        let b = self.slice(at, 4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
}

/// Reads consecutive 4-byte-aligned arrays from one layer's parameter region.
struct Cursor<'a> {
    region: &'a [u8],
    pos: usize,
    index: usize,
}

impl<'a> Cursor<'a> {
    fn bad(&self, reason: &'static str) -> BlobError {
        BlobError::BadLayer {
            index: self.index,
            reason,
        }
    }
    fn take(&mut self, bytes: usize) -> Result<&'a [u8], BlobError> {
        let end = self
            .pos
            .checked_add(bytes)
            .filter(|&e| e <= self.region.len())
            .ok_or(self.bad("parameters larger than their region"))?;
        let out = &self.region[self.pos..end];
        self.pos = (end + 3) & !3;
        Ok(out)
    }
    fn i8s(&mut self, n: usize) -> Result<&'a [i8], BlobError> {
        Ok(bytemuck::cast_slice(self.take(n)?))
    }
    fn u8s(&mut self, n: usize) -> Result<&'a [u8], BlobError> {
        self.take(n)
    }
    fn i16s(&mut self, n: usize) -> Result<&'a [i16], BlobError> {
        let b = self.take(n * 2)?;
        bytemuck::try_cast_slice(b).map_err(|_| BlobError::Misaligned)
    }
    fn i32s(&mut self, n: usize) -> Result<&'a [i32], BlobError> {
        let b = self.take(n * 4)?;
        bytemuck::try_cast_slice(b).map_err(|_| BlobError::Misaligned)
    }
    fn weights(&mut self, n: usize, bits: u8) -> Result<Weights<'a>, BlobError> {
        Ok(if bits == 8 {
            Weights::I8(self.i8s(n)?)
        } else {
            Weights::I16(self.i16s(n)?)
        })
    }
    fn multipliers(&mut self, n: usize) -> Result<(&'a [i32], &'a [u8]), BlobError> {
        let m = self.i32s(n)?;
        let s = self.u8s(n)?;
        if m.iter()
            .any(|&m| m <= -MAX_MULTIPLIER || m >= MAX_MULTIPLIER)
        {
            return Err(self.bad("multiplier out of range"));
        }
        if s.iter().any(|&s| s > MAX_SHIFT) {
            return Err(self.bad("shift out of range"));
        }
        Ok((m, s))
    }
}

impl<'a> Model<'a> {
    /// Checks and reads a blob in place. `bytes` must start on a 4-byte boundary (flash
    /// sections and `recur sim` ensure it); trailing bytes past `total_len` are ignored.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, BlobError> {
        if bytes.len() < HEADER_LEN {
            return Err(BlobError::Truncated {
                need: HEADER_LEN,
                have: bytes.len(),
            });
        }
        if bytes[..4] != MAGIC {
            return Err(BlobError::BadMagic);
        }
        let rd = Reader { bytes };
        let version = rd.u16(4)?;
        if version != FORMAT_VERSION {
            return Err(BlobError::Version(version));
        }
        if rd.u16(6)? as usize != HEADER_LEN {
            return Err(BlobError::BadHeader);
        }
        let total = rd.u32(8)? as usize;
        if total < HEADER_LEN + MODEL_LEN || !total.is_multiple_of(4) {
            return Err(BlobError::BadHeader);
        }
        if total > bytes.len() {
            return Err(BlobError::Truncated {
                need: total,
                have: bytes.len(),
            });
        }
        let bytes = &bytes[..total];
        let stored = rd.u32(12)?;
        let computed = CRC32.checksum(&bytes[HEADER_LEN..]);
        if stored != computed {
            return Err(BlobError::Crc { stored, computed });
        }
        if bytemuck::try_cast_slice::<u8, u32>(bytes).is_err() {
            return Err(BlobError::Misaligned);
        }
        let rd = Reader { bytes };

        let m = HEADER_LEN;
        let input_kind = match rd.u8(m)? {
            0 => InputKind::Features,
            1 => InputKind::Tokens,
            _ => return Err(BlobError::BadModel("unknown input kind")),
        };
        let output_act = match rd.u8(m + 1)? {
            0 => OutputAct::None,
            1 => OutputAct::Softmax,
            2 => OutputAct::Sigmoid,
            _ => return Err(BlobError::BadModel("unknown output function")),
        };
        let n_layers = rd.u8(m + 2)? as usize;
        if n_layers == 0 || n_layers > MAX_LAYERS {
            return Err(BlobError::BadModel("layer count not in 1..=8"));
        }
        let input_dim = rd.u16(m + 4)? as usize;
        let output_dim = rd.u16(m + 6)? as usize;
        let act_m = rd.u32(m + 8)? as i32;
        let act_s = rd.u8(m + 12)?;
        if act_m <= -MAX_MULTIPLIER || act_m >= MAX_MULTIPLIER || act_s > MAX_SHIFT {
            return Err(BlobError::BadModel("output multiplier out of range"));
        }
        let output_scale = f32::from_bits(rd.u32(m + 16)?);
        let affine_at = rd.u32(m + 20)? as usize;
        if input_dim == 0 || input_dim > MAX_DIM || output_dim == 0 || output_dim > MAX_DIM {
            return Err(BlobError::BadModel("input or output width not in 1..=1024"));
        }
        if input_kind == InputKind::Tokens && input_dim != 1 {
            return Err(BlobError::BadModel("token models take one id per step"));
        }
        let input_affine: &[f32] = match input_kind {
            InputKind::Tokens => &[],
            InputKind::Features => {
                if !affine_at.is_multiple_of(4) {
                    return Err(BlobError::Misaligned);
                }
                let raw = rd.slice(affine_at, input_dim * 8)?;
                bytemuck::try_cast_slice(raw).map_err(|_| BlobError::Misaligned)?
            }
        };

        let mut layers = heapless::Vec::new();
        let mut width = input_dim;
        let mut sequence = true;
        for index in 0..n_layers {
            let at = HEADER_LEN + MODEL_LEN + index * LAYER_LEN;
            let layer = parse_layer(&rd, at, index, width, sequence, input_kind)?;
            if layer.is_recurrent() && layer.reduce != Reduce::Sequence {
                sequence = false;
            }
            width = layer.width();
            // Capacity is MAX_LAYERS and n_layers <= MAX_LAYERS.
            let _ = layers.push(layer);
        }
        if width != output_dim {
            return Err(BlobError::BadModel(
                "output width differs from the last layer's",
            ));
        }
        Ok(Model {
            input_kind,
            input_dim,
            output_dim,
            output_act,
            act_m,
            act_s,
            output_scale,
            input_affine,
            layers,
            blob_len: total,
        })
    }

    /// Whether every layer is causal (no bidirectional layer), so [`crate::Session::step`]
    /// can run it one sample at a time.
    pub fn is_causal(&self) -> bool {
        self.layers
            .iter()
            .all(|l| !l.has(flags::BIDIRECTIONAL) && !l.has(flags::REVERSE))
    }

    /// int16 words of session memory: states, layer outputs, the output vector, scratch.
    pub fn session_len(&self) -> usize {
        let mut n = 0;
        let mut tmp = 0;
        for l in &self.layers {
            n += if l.is_recurrent() {
                l.dirs * l.state_per_dir()
            } else {
                l.out_dim
            };
            if l.kind == LayerKind::Gru {
                tmp = tmp.max(l.out_dim);
            }
        }
        n + self.output_dim + tmp
    }

    /// int32 words of accumulator scratch a session needs at least.
    pub fn acc_len(&self) -> usize {
        let mut n = self.output_dim;
        for l in &self.layers {
            n = n.max(l.acc_len());
        }
        n
    }

    /// int32 words of row tables ([`Layer::table_len`] summed) and of gate rows repacked in
    /// pairs ([`Layer::pair_len`]): a session given this many `acc` words beyond
    /// [`Model::acc_len`] keeps its gate rows' parameters, and its gate rows two by two, in
    /// them, which makes a step cheaper (see [`crate::rowtab`]).
    pub fn tables_len(&self) -> usize {
        self.row_tables_len() + self.layers.iter().map(Layer::pair_len).sum::<usize>()
    }

    /// The part of [`Model::tables_len`] that is row tables alone, without the gate rows
    /// repacked in pairs: a session given room for this much but not for all of it runs with
    /// the tables and the weights where they are.
    pub fn row_tables_len(&self) -> usize {
        self.layers.iter().map(Layer::table_len).sum()
    }

    /// int16 words of window memory [`crate::Session::run`] needs for `steps` time steps.
    pub fn window_len(&self, steps: usize) -> usize {
        let mut w = self.input_dim;
        for l in &self.layers {
            w = w.max(l.width());
        }
        2 * steps * w
    }

    /// RAM in bytes a streaming session needs besides the blob (state, scratch, one input
    /// sample).
    pub fn ram_bytes(&self) -> usize {
        2 * self.session_len() + 4 * self.acc_len() + 2 * self.input_dim
    }

    /// Quantises one input feature as the converter chose: round(x*a + b), saturated.
    /// (Host and sensor-side helper; the step path itself is integer only.)
    pub fn quantize_feature(&self, feature: usize, x: f32) -> i16 {
        let (a, b) = match (
            self.input_affine.get(2 * feature),
            self.input_affine.get(2 * feature + 1),
        ) {
            (Some(&a), Some(&b)) => (a, b),
            _ => return 0,
        };
        let v = x * a + b;
        if v.is_nan() {
            0
        } else if v >= 32767.0 {
            32767
        } else if v <= -32768.0 {
            -32768
        } else if v >= 0.0 {
            (v + 0.5) as i16
        } else {
            (v - 0.5) as i16
        }
    }
}

fn parse_layer<'a>(
    rd: &Reader<'a>,
    at: usize,
    index: usize,
    in_width: usize,
    sequence_in: bool,
    input_kind: InputKind,
) -> Result<Layer<'a>, BlobError> {
    let bad = |reason| BlobError::BadLayer { index, reason };
    let kind = match rd.u8(at)? {
        1 => LayerKind::Lstm,
        2 => LayerKind::Gru,
        3 => LayerKind::Rnn,
        4 => LayerKind::Dense,
        5 => LayerKind::Embedding,
        _ => return Err(bad("unknown layer kind")),
    };
    let fl = rd.u8(at + 1)?;
    if fl & !flags::ALL != 0 {
        return Err(bad("unknown flag bits"));
    }
    let reduce = match rd.u8(at + 2)? {
        0 => Reduce::Sequence,
        1 => Reduce::Last,
        2 => Reduce::Final,
        _ => return Err(bad("unknown reduce mode")),
    };
    let bits = rd.u8(at + 3)?;
    if bits != 8 && bits != 16 {
        return Err(bad("weights must be 8 or 16 bits"));
    }
    let in_dim = rd.u16(at + 4)? as usize;
    let out_dim = rd.u16(at + 6)? as usize;
    let frac_h = rd.u8(at + 8)?;
    let frac_c = rd.u8(at + 9)?;
    let clip_q20 = rd.u32(at + 12)? as i32;
    let p_off = rd.u32(at + 16)? as usize;
    let p_len = rd.u32(at + 20)? as usize;
    if out_dim == 0 || out_dim > MAX_DIM {
        return Err(bad("output width not in 1..=1024"));
    }
    let max_in = if kind == LayerKind::Embedding {
        u16::MAX as usize
    } else {
        MAX_DIM
    };
    if in_dim == 0 || in_dim > max_in {
        return Err(bad("input width out of range"));
    }
    if frac_h > 15 || frac_c > 15 || clip_q20 < 0 {
        return Err(bad("fractional bits or clip out of range"));
    }
    let recurrent = matches!(kind, LayerKind::Lstm | LayerKind::Gru | LayerKind::Rnn);
    let allowed = match kind {
        LayerKind::Lstm => {
            flags::BIDIRECTIONAL | flags::REVERSE | flags::PEEPHOLES | flags::INPUT_FORGET
        }
        LayerKind::Gru => flags::BIDIRECTIONAL | flags::REVERSE | flags::LINEAR_BEFORE_RESET,
        LayerKind::Rnn => flags::BIDIRECTIONAL | flags::REVERSE | flags::RELU,
        _ => 0,
    };
    if fl & !allowed != 0 {
        return Err(bad("flag not valid for this layer kind"));
    }
    if fl & flags::BIDIRECTIONAL != 0 && fl & flags::REVERSE != 0 {
        return Err(bad("both bidirectional and reverse"));
    }
    if recurrent && fl & flags::RELU == 0 && frac_h != 15 {
        return Err(bad("tanh-bounded hidden states are Q15"));
    }
    if !recurrent && reduce != Reduce::Sequence {
        return Err(bad("only recurrent layers reduce over time"));
    }
    if recurrent && !sequence_in {
        return Err(bad("recurrent layer after the time axis was reduced"));
    }
    match (kind, index, input_kind) {
        (LayerKind::Embedding, 0, InputKind::Tokens) => {}
        (LayerKind::Embedding, _, _) => return Err(bad("embedding must be the first layer")),
        (_, 0, InputKind::Tokens) => return Err(bad("token models start with an embedding")),
        _ => {
            if in_dim != in_width {
                return Err(bad("input width differs from the previous layer's output"));
            }
        }
    }
    if !p_off.is_multiple_of(4) {
        return Err(BlobError::Misaligned);
    }
    let region = rd.slice(p_off, p_len)?;
    let mut cur = Cursor {
        region,
        pos: 0,
        index,
    };
    let dirs = if fl & flags::BIDIRECTIONAL != 0 { 2 } else { 1 };
    let mut params = [Params::default(); 2];
    let h = out_dim;
    match kind {
        LayerKind::Embedding => {
            params[0].w = cur.weights(in_dim * even(out_dim), bits)?;
        }
        LayerKind::Dense => {
            let p = &mut params[0];
            p.w = cur.weights(out_dim * even(in_dim), bits)?;
            p.bias = cur.i32s(out_dim)?;
            (p.mx, p.sx) = cur.multipliers(out_dim)?;
            p.fast = fits_dense_fast_path(p, even(in_dim));
        }
        _ => {
            let g = match kind {
                LayerKind::Lstm => 4,
                LayerKind::Gru => 3,
                _ => 1,
            };
            for p in params.iter_mut().take(dirs) {
                p.w = cur.weights(g * h * even(in_dim), bits)?;
                p.r = cur.weights(g * h * even(h), bits)?;
                p.bias = cur.i32s(g * h)?;
                if fl & flags::LINEAR_BEFORE_RESET != 0 {
                    p.rbn = cur.i32s(h)?;
                }
                (p.mx, p.sx) = cur.multipliers(g * h)?;
                (p.mh, p.sh) = cur.multipliers(g * h)?;
                if fl & flags::PEEPHOLES != 0 {
                    p.p = cur.i16s(3 * h)?;
                    (p.mp, p.sp) = cur.multipliers(3)?;
                }
                p.fast = fits_fast_path(p, even(in_dim), even(h));
                p.acc32 = p.fast && fits_acc32(p, even(in_dim), even(h));
                p.table = match kind {
                    LayerKind::Rnn | LayerKind::Lstm | LayerKind::Gru => {
                        crate::rowtab::form(p, table_rows(kind, h))
                    }
                    _ => None,
                };
            }
        }
    }
    if cur.pos != (region.len() + 3) & !3 {
        return Err(bad("parameter region longer than its parameters"));
    }
    Ok(Layer {
        kind,
        flags: fl,
        reduce,
        in_dim,
        out_dim,
        frac_h,
        frac_c,
        clip_q20,
        dirs,
        params,
    })
}
