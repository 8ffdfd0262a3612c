//! Scale choice and the `.rcm` writer: the only producer of the format `recur_kernel::blob`
//! reads (see that module for the byte layout).
//!
//! Scales: inputs symmetric int16 at 1.25x the calibrated maximum; weights symmetric per output
//! row (int8 ±127 or int16 ±32767); tanh-bounded hidden states Q15; LSTM cell state and relu
//! states a power of two covering 1.5x (cell) or 1.25x (relu) the calibrated maximum; gate
//! pre-activations Q20; dense outputs int16 at 1.25x their calibrated maximum; softmax and
//! sigmoid outputs Q15. Every real multiplier becomes an integer `m` in [2^21, 2^22) and a
//! shift.

use ndarray::{s, ArrayView2, Ix2, Ix3};
use recur_kernel::blob::{flags, CRC32, FORMAT_VERSION, HEADER_LEN, LAYER_LEN, MAGIC, MODEL_LEN};

use super::chain::{Chain, OutputAct, Reduce, Stage};
use super::reference::Ranges;
use crate::ir::{ActivationKind, Cell, Direction};

/// Weight precision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WeightBits {
    /// int8 weights.
    Int8,
    /// int16 weights.
    Int16,
}

impl WeightBits {
    fn qmax(self) -> f32 {
        match self {
            WeightBits::Int8 => 127.0,
            WeightBits::Int16 => 32767.0,
        }
    }
    fn bits(self) -> u8 {
        match self {
            WeightBits::Int8 => 8,
            WeightBits::Int16 => 16,
        }
    }
}

/// A real multiplier as an integer multiplier and right shift: r ≈ m / 2^s.
pub fn multiplier(r: f64) -> (i32, u8) {
    if r == 0.0 || !r.is_finite() {
        return (0, 0);
    }
    let mut s: i32 = 21 - r.abs().log2().floor() as i32;
    s = s.clamp(0, 62);
    let mut m = (r * (1u64 << s) as f64).round();
    if m.abs() >= (1 << 22) as f64 && s > 0 {
        s -= 1;
        m = (r * (1u64 << s) as f64).round();
    }
    let m = m.clamp(-((1 << 22) - 1) as f64, ((1 << 22) - 1) as f64) as i32;
    (m, s as u8)
}

/// Fractional bits so that `max * headroom` fits in int16.
fn frac_bits(max: f32, headroom: f32) -> u8 {
    let need = (max * headroom).max(1e-6).log2().ceil() as i32;
    (15 - need).clamp(0, 15) as u8
}

/// Growable byte buffer that pads every array to 4 bytes.
#[derive(Default)]
struct Bytes(Vec<u8>);

impl Bytes {
    fn pad(&mut self) {
        while !self.0.len().is_multiple_of(4) {
            self.0.push(0);
        }
    }
    fn i32s(&mut self, v: &[i32]) {
        v.iter().for_each(|x| self.0.extend(x.to_le_bytes()));
        self.pad();
    }
    fn u8s(&mut self, v: &[u8]) {
        self.0.extend(v);
        self.pad();
    }
    fn i16s(&mut self, v: &[i16]) {
        v.iter().for_each(|x| self.0.extend(x.to_le_bytes()));
        self.pad();
    }
    fn weights(&mut self, q: &[i32], bits: WeightBits) {
        match bits {
            WeightBits::Int8 => q.iter().for_each(|&x| self.0.push(x as i8 as u8)),
            WeightBits::Int16 => q
                .iter()
                .for_each(|&x| self.0.extend((x as i16).to_le_bytes())),
        }
        self.pad();
    }
    fn multipliers(&mut self, v: &[(i32, u8)]) {
        let m: Vec<i32> = v.iter().map(|p| p.0).collect();
        let s: Vec<u8> = v.iter().map(|p| p.1).collect();
        self.i32s(&m);
        self.u8s(&s);
    }
}

/// Quantises a `[rows, cols]` matrix per row; returns padded rows (even length) and scales.
fn quant_rows(w: ArrayView2<f32>, bits: WeightBits) -> (Vec<i32>, Vec<f32>) {
    let cols = w.ncols();
    let stride = cols + (cols & 1);
    let mut q = Vec::with_capacity(w.nrows() * stride);
    let mut scales = Vec::with_capacity(w.nrows());
    for row in w.rows() {
        let m = row.iter().fold(0f32, |a, v| a.max(v.abs()));
        let sc = if m > 0.0 { m / bits.qmax() } else { 1.0 };
        for v in row {
            q.push((v / sc).round().clamp(-bits.qmax(), bits.qmax()) as i32);
        }
        if cols & 1 == 1 {
            q.push(0);
        }
        scales.push(sc);
    }
    (q, scales)
}

fn q20(v: f32) -> i32 {
    (v as f64 * (1u64 << 20) as f64)
        .round()
        .clamp(i32::MIN as f64, i32::MAX as f64) as i32
}

/// Per-layer facts the report shows.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LayerInfo {
    /// ONNX node.
    pub node: String,
    /// Kind, e.g. "LSTM".
    pub kind: String,
    /// Input width.
    pub input: usize,
    /// Output width.
    pub output: usize,
    /// Parameter bytes in the blob.
    pub param_bytes: usize,
    /// Input scale (real value of one input unit).
    pub input_scale: f32,
    /// Output scale.
    pub output_scale: f32,
    /// LSTM cell-state fractional bits.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cell_frac_bits: Option<u8>,
}

/// Quantises the chain and writes the blob; also returns per-layer facts.
pub fn write(chain: &Chain, ranges: &Ranges, bits: WeightBits) -> (Vec<u8>, Vec<LayerInfo>) {
    let mut infos = Vec::new();
    let mut table = Bytes::default();
    let mut params: Vec<Vec<u8>> = Vec::new();
    // Input scale.
    let mut s_in: f32 = if chain.tokens {
        1.0
    } else {
        (ranges.input_max * 1.25 / 32767.0).max(1e-12)
    };
    let affine: Vec<f32> = chain
        .affine
        .iter()
        .flat_map(|(a, b)| [a / s_in, b / s_in])
        .collect();
    let mut last_scale = s_in;
    for (si, stage) in chain.stages.iter().enumerate() {
        let range = &ranges.stages[si];
        let mut p = Bytes::default();
        let mut rec = [0u8; LAYER_LEN];
        let (kind, fl, reduce, in_dim, out_dim, frac_h, frac_c, clip): (
            u8,
            u8,
            u8,
            usize,
            usize,
            u8,
            u8,
            i32,
        );
        let mut info = LayerInfo {
            node: stage.node().to_string(),
            kind: String::new(),
            input: 0,
            output: 0,
            param_bytes: 0,
            input_scale: s_in,
            output_scale: 0.0,
            cell_frac_bits: None,
        };
        match stage {
            Stage::Embedding { table: t, .. } => {
                let m = t.iter().fold(0f32, |a, v| a.max(v.abs()));
                let sc = if m > 0.0 { m / bits.qmax() } else { 1.0 };
                let cols = t.ncols();
                let mut q = Vec::new();
                for row in t.rows() {
                    for v in row {
                        q.push((v / sc).round().clamp(-bits.qmax(), bits.qmax()) as i32);
                    }
                    if cols & 1 == 1 {
                        q.push(0);
                    }
                }
                p.weights(&q, bits);
                (kind, fl, reduce, in_dim, out_dim, frac_h, frac_c, clip) =
                    (5, 0, 0, t.nrows(), cols, 0, 0, 0);
                info.kind = "Embedding".into();
                last_scale = sc;
            }
            Stage::Dense { w, b, .. } => {
                let s_o = (range.out_max * 1.25 / 32767.0).max(1e-12);
                let (q, sw) = quant_rows(w.view(), bits);
                p.weights(&q, bits);
                let unit = s_o / 256.0;
                let bias: Vec<i32> = b
                    .iter()
                    .map(|v| (v / unit).round().clamp(i32::MIN as f32, i32::MAX as f32) as i32)
                    .collect();
                p.i32s(&bias);
                let mults: Vec<(i32, u8)> = sw
                    .iter()
                    .map(|&swj| multiplier(swj as f64 * s_in as f64 / unit as f64))
                    .collect();
                p.multipliers(&mults);
                (kind, fl, reduce, in_dim, out_dim, frac_h, frac_c, clip) =
                    (4, 0, 0, w.ncols(), w.nrows(), 0, 0, 0);
                info.kind = "Dense".into();
                last_scale = s_o;
            }
            Stage::Recurrent {
                layer, reduce: red, ..
            } => {
                let wts = layer.weights.as_ref().expect("checked");
                let w3 = wts.w.view().into_dimensionality::<Ix3>().expect("lifted");
                let r3 = wts.r.view().into_dimensionality::<Ix3>().expect("lifted");
                let b2 = wts
                    .b
                    .as_ref()
                    .map(|b| b.view().into_dimensionality::<Ix2>().expect("lifted"));
                let p2 = wts
                    .p
                    .as_ref()
                    .map(|p| p.view().into_dimensionality::<Ix2>().expect("lifted"));
                let h = layer.hidden_size;
                let g = layer.cell.gates();
                let relu = layer.activations[0][0].kind == ActivationKind::Relu;
                let fh = if relu {
                    frac_bits(range.out_max, 1.25)
                } else {
                    15
                };
                let fc = frac_bits(range.c_max, 1.5);
                let s_h = 2f32.powi(-(fh as i32));
                let mut f = 0u8;
                match layer.direction {
                    Direction::Bidirectional => f |= flags::BIDIRECTIONAL,
                    Direction::Reverse => f |= flags::REVERSE,
                    Direction::Forward => {}
                }
                let lbr = matches!(
                    layer.cell,
                    Cell::Gru {
                        linear_before_reset: true
                    }
                );
                match layer.cell {
                    Cell::Lstm {
                        input_forget,
                        peepholes,
                    } => {
                        if peepholes && wts.p.is_some() {
                            f |= flags::PEEPHOLES;
                        }
                        if input_forget {
                            f |= flags::INPUT_FORGET;
                        }
                        info.kind = "LSTM".into();
                        info.cell_frac_bits = Some(fc);
                    }
                    Cell::Gru { .. } => {
                        if lbr {
                            f |= flags::LINEAR_BEFORE_RESET;
                        }
                        info.kind = "GRU".into();
                    }
                    Cell::Rnn => {
                        if relu {
                            f |= flags::RELU;
                        }
                        info.kind = "RNN".into();
                    }
                }
                for d in 0..layer.direction.count() {
                    let (qw, sw) = quant_rows(w3.index_axis(ndarray::Axis(0), d), bits);
                    let (qr, sr) = quant_rows(r3.index_axis(ndarray::Axis(0), d), bits);
                    p.weights(&qw, bits);
                    p.weights(&qr, bits);
                    let gh = g * h;
                    let mut bias = vec![0i32; gh];
                    let mut rbn = vec![0i32; h];
                    if let Some(b2) = &b2 {
                        let wb = b2.slice(s![d, ..gh]);
                        let rb = b2.slice(s![d, gh..]);
                        for j in 0..gh {
                            let inside = lbr && j >= 2 * h;
                            bias[j] = q20(wb[j] + if inside { 0.0 } else { rb[j] });
                        }
                        if lbr {
                            for k in 0..h {
                                rbn[k] = q20(rb[2 * h + k]);
                            }
                        }
                    }
                    p.i32s(&bias);
                    if lbr {
                        p.i32s(&rbn);
                    }
                    let two20 = (1u64 << 20) as f64;
                    let mx: Vec<(i32, u8)> = sw
                        .iter()
                        .map(|&v| multiplier(v as f64 * s_in as f64 * two20))
                        .collect();
                    let mh: Vec<(i32, u8)> = sr
                        .iter()
                        .map(|&v| multiplier(v as f64 * s_h as f64 * two20))
                        .collect();
                    p.multipliers(&mx);
                    p.multipliers(&mh);
                    if f & flags::PEEPHOLES != 0 {
                        let pd = p2.as_ref().expect("peepholes").row(d).to_owned();
                        let mut qp = Vec::with_capacity(3 * h);
                        let mut mp = Vec::new();
                        for gate in 0..3 {
                            let part = pd.slice(s![gate * h..(gate + 1) * h]);
                            let m = part.iter().fold(0f32, |a, v| a.max(v.abs()));
                            let sc = if m > 0.0 { m / 32767.0 } else { 1.0 };
                            qp.extend(part.iter().map(|v| (v / sc).round() as i16));
                            mp.push(multiplier(sc as f64 * 2f64.powi(-(fc as i32)) * two20));
                        }
                        p.i16s(&qp);
                        p.multipliers(&mp);
                    }
                }
                (kind, fl, reduce, in_dim, out_dim, frac_h, frac_c, clip) = (
                    match layer.cell {
                        Cell::Lstm { .. } => 1,
                        Cell::Gru { .. } => 2,
                        Cell::Rnn => 3,
                    },
                    f,
                    match red {
                        Reduce::Sequence => 0,
                        Reduce::Last => 1,
                        Reduce::Final => 2,
                    },
                    w3.shape()[2],
                    h,
                    fh,
                    fc,
                    layer.clip.map_or(0, q20),
                );
                last_scale = s_h;
            }
        }
        rec[0] = kind;
        rec[1] = fl;
        rec[2] = reduce;
        rec[3] = bits.bits();
        rec[4..6].copy_from_slice(&(in_dim as u16).to_le_bytes());
        rec[6..8].copy_from_slice(&(out_dim as u16).to_le_bytes());
        rec[8] = frac_h;
        rec[9] = frac_c;
        rec[12..16].copy_from_slice(&clip.to_le_bytes());
        info.input = in_dim;
        info.output = out_dim * if fl & flags::BIDIRECTIONAL != 0 { 2 } else { 1 };
        info.param_bytes = p.0.len();
        info.output_scale = last_scale;
        infos.push(info);
        table.0.extend(rec);
        params.push(p.0);
        s_in = last_scale;
    }

    // Output function.
    let (out_act, act, output_scale) = match chain.output_act {
        OutputAct::None => (0u8, (0, 0), last_scale),
        OutputAct::Softmax => (
            1,
            multiplier(last_scale as f64 * (1u64 << 20) as f64),
            1.0 / 32768.0,
        ),
        OutputAct::Sigmoid => (
            2,
            multiplier(last_scale as f64 * (1u64 << 20) as f64),
            1.0 / 32768.0,
        ),
    };
    let n_layers = chain.stages.len();
    let affine_at = HEADER_LEN + MODEL_LEN + n_layers * LAYER_LEN;
    let mut body = Bytes::default();
    let mut model = [0u8; MODEL_LEN];
    model[0] = chain.tokens as u8;
    model[1] = out_act;
    model[2] = n_layers as u8;
    model[4..6].copy_from_slice(&(chain.input_dim as u16).to_le_bytes());
    model[6..8].copy_from_slice(&(chain.output_dim() as u16).to_le_bytes());
    model[8..12].copy_from_slice(&act.0.to_le_bytes());
    model[12] = act.1;
    model[16..20].copy_from_slice(&output_scale.to_le_bytes());
    model[20..24].copy_from_slice(&(if chain.tokens { 0 } else { affine_at as u32 }).to_le_bytes());
    body.0.extend(model);
    // Parameter offsets go into the table once the affine block's size is known.
    let mut at = affine_at + if chain.tokens { 0 } else { affine.len() * 4 };
    for (i, prm) in params.iter().enumerate() {
        let rec = &mut table.0[i * LAYER_LEN..(i + 1) * LAYER_LEN];
        rec[16..20].copy_from_slice(&(at as u32).to_le_bytes());
        rec[20..24].copy_from_slice(&(prm.len() as u32).to_le_bytes());
        at += prm.len();
    }
    body.0.extend(&table.0);
    if !chain.tokens {
        affine.iter().for_each(|v| body.0.extend(v.to_le_bytes()));
    }
    for prm in &params {
        body.0.extend(prm);
    }
    body.pad();
    let total = HEADER_LEN + body.0.len();
    let mut blob = Vec::with_capacity(total);
    blob.extend(MAGIC);
    blob.extend(FORMAT_VERSION.to_le_bytes());
    blob.extend((HEADER_LEN as u16).to_le_bytes());
    blob.extend((total as u32).to_le_bytes());
    blob.extend(CRC32.checksum(&body.0).to_le_bytes());
    blob.extend(body.0);
    (blob, infos)
}
