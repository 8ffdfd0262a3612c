//! Dense layer, embedding lookup and the output functions (softmax, sigmoid, argmax).
//!
//! Dense: `y[j] = sat16(round((rq(W[j]·x, m[j], s[j]) + bias[j]) / 256))`, the product
//! requantised to 1/256 of an output unit so the bias keeps 8 more bits. Softmax: logits minus
//! their maximum, taken to Q20 by one multiplier, exp from the table, then integer division:
//! `p_i = round(e_i · 2^15 / Σe)` (Q15). The maximum's exp is 32767, so the sum is never 0.

use crate::blob::{Layer, Params};
use crate::fixed::{requant, requant32, requant32_i32, sat16, sat32, shr_round};
use crate::lut::{exp_q20, sigmoid_q20};
use crate::rows;

/// Applies a dense layer to `x`, writing `layer.out_dim` values to `out`. `scratch` (int32
/// words, the session's accumulators) takes `x` packed two to a word when it has room, so
/// that the products run on the packed dot products (dual MACs on Cortex-M4).
pub fn dense(layer: &Layer, p: &Params, x: &[i16], out: &mut [i16], scratch: &mut [i32]) {
    let rows = layer.out_dim.min(out.len());
    if dense_packed(layer, p, x, &mut out[..rows], scratch) {
        return;
    }
    let ws = layer.w_stride();
    rows::each(&p.w, ws, x, 0..layer.out_dim.min(out.len()), |j, d| {
        let v = requant(d, p.mx[j], p.sx[j]) + p.bias[j] as i64;
        out[j] = sat16(shr_round(v, 8));
    });
}

/// [`dense`] on a packed copy of `x` ([`rows::pack16`] or [`rows::pack8`]): the same exact
/// int64 sums (padding columns meet the zero padding of the packed vector, as in [`rows::dot`]
/// they meet nothing), then the same requantisation. `false` (nothing written) when `x` is
/// not `in_dim` wide, `scratch` is too small or a matrix is not laid out as parsed.
fn dense_packed(
    layer: &Layer,
    p: &Params,
    x: &[i16],
    out: &mut [i16],
    scratch: &mut [i32],
) -> bool {
    let rows = out.len();
    let wx = rows::words(layer.in_dim);
    if x.len() != layer.in_dim || scratch.len() < wx {
        return false;
    }
    if p.mx.len() < rows || p.sx.len() < rows || p.bias.len() < rows {
        return false;
    }
    let xs: &mut [u32] = bytemuck::cast_slice_mut(&mut scratch[..wx]);
    let ws = layer.w_stride();
    let per_row = p.mx.iter().zip(p.sx).zip(p.bias);
    let fast = p.fast;
    let fin = |d: i64, (&m, &s): (&i32, &u8), b: i32| {
        if fast {
            finish_fast(requant32(d, m, s), b)
        } else {
            sat16(shr_round(requant(d, m, s) + b as i64, 8))
        }
    };
    match p.w {
        crate::blob::Weights::I16(w) => {
            let Ok(w) = bytemuck::try_cast_slice::<i16, u32>(w) else {
                return false;
            };
            let wsw = ws / 2;
            if wsw == 0 || w.len() < rows * wsw {
                return false;
            }
            rows::pack16(x, xs);
            for ((o, wr), (ms, &b)) in out.iter_mut().zip(w.chunks_exact(wsw)).zip(per_row) {
                *o = fin(rows::dot16(wr, xs), ms, b);
            }
        }
        crate::blob::Weights::I8(w) => {
            if ws == 0 || w.len() < rows * ws {
                return false;
            }
            rows::pack8(x, xs);
            for ((o, wr), (ms, &b)) in out.iter_mut().zip(w.chunks_exact(ws)).zip(per_row) {
                *o = fin(rows::dot8(wr, xs), ms, b);
            }
        }
    }
    true
}

/// A Dense row's output from its requantised product `r` (`|r| <= 2^29`, `Params::fast`) and
/// bias `b`: `sat16(shr_round(r + b, 8))` in int32. `r +sat b` differs from `r + b` only when
/// that leaves int32, and then both give the same saturated int16;
/// `floor((v + 128) / 256) = floor((floor(v / 128) + 1) / 2)` needs no wider type.
#[inline(always)]
fn finish_fast(r: i32, b: i32) -> i16 {
    let v = r.saturating_add(b);
    (((v >> 7) + 1) >> 1).clamp(-32768, 32767) as i16
}

/// Copies embedding row `token` to `out`; `false` when the token is out of range.
pub fn embed(layer: &Layer, p: &Params, token: usize, out: &mut [i16]) -> bool {
    if token >= layer.in_dim {
        return false;
    }
    let stride = layer.w_stride_embedding();
    for (k, o) in out.iter_mut().enumerate().take(layer.out_dim) {
        *o = p.w.get(token * stride + k);
    }
    true
}

/// Softmax of int16 logits; `m`/`s` take a logit difference to Q20. Writes Q15 to `out`,
/// using `exps` (`[len]` int32) as scratch.
pub fn softmax(x: &[i16], m: i32, s: u8, exps: &mut [i32], out: &mut [i16]) {
    let max = x.iter().copied().max().unwrap_or(0) as i32;
    // The differences `v - max` lie in -65535..=0. When `m` and `s` take every one of them to
    // at most 2^29 in magnitude (checked once per call), `requant32_i32` equals `requant` and
    // `sat32` is the identity: one SMULL per logit instead of the int64 form.
    let fast = (1..=62).contains(&s)
        && (65_535 * m.unsigned_abs() as u64 + (1u64 << s.saturating_sub(1))) >> s <= 1 << 29;
    let mut sum = 0i64;
    for (e, &v) in exps.iter_mut().zip(x) {
        let d = v as i32 - max;
        let q = if fast {
            requant32_i32(d, m, s)
        } else {
            sat32(requant(d as i64, m, s))
        };
        *e = exp_q20(q) as i32;
        sum += *e as i64;
    }
    let sum = sum.max(1);
    if sum <= 1 << 31 {
        // Every e is in 0..=32767 (the exp table's entries are, and so is every interpolation
        // between two of them; the clamp only restates it), so (e << 15) + sum / 2 <= 2^30 +
        // 2^30: the same quotient in u32 (one UDIV instead of a 64-bit division call).
        let sum = sum as u32;
        for (o, &e) in out.iter_mut().zip(exps.iter()) {
            let e = e.clamp(0, 32767) as u32;
            *o = sat16((((e << 15) + sum / 2) / sum) as i64);
        }
        return;
    }
    for (o, &e) in out.iter_mut().zip(exps.iter()) {
        *o = sat16(((e as i64) << 15).saturating_add(sum / 2) / sum);
    }
}

/// Element-wise sigmoid of int16 values taken to Q20 by `m`/`s`; Q15 out.
pub fn sigmoid(x: &[i16], m: i32, s: u8, out: &mut [i16]) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = sigmoid_q20(sat32(requant(v as i64, m, s)));
    }
}

/// Index of the largest value (the first one on ties); 0 for an empty slice.
pub fn argmax(x: &[i16]) -> usize {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best
}

impl Layer<'_> {
    /// Row stride of an embedding table (width rounded up to even).
    pub fn w_stride_embedding(&self) -> usize {
        crate::blob::even(self.out_dim)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_rng::xorshift;

    /// `softmax` equals its int64 form (every logit difference through `requant` and
    /// `sat32`) for multipliers on both sides of its fast path's bound, on extreme and random
    /// logits.
    #[test]
    fn softmax_equals_the_int64_form() {
        let int64_form = |x: &[i16], m: i32, s: u8| {
            let max = x.iter().copied().max().unwrap() as i64;
            let e: [i64; 6] =
                core::array::from_fn(|k| exp_q20(sat32(requant(x[k] as i64 - max, m, s))) as i64);
            let sum: i64 = e.iter().sum::<i64>().max(1);
            e.map(|e| sat16(((e << 15) + sum / 2) / sum))
        };
        let mut next = xorshift(0x50f7_4a11);
        let scales = [
            (1 << 30, 20),
            (i32::MAX, 18),
            (i32::MIN + 1, 20),
            (1 << 20, 4),
            (3, 1),
        ];
        for (m, s) in scales {
            for round in 0..20_000 {
                let x: [i16; 6] = if round == 0 {
                    [i16::MIN, i16::MAX, 0, -1, 1, i16::MIN]
                } else {
                    core::array::from_fn(|_| next() as i16)
                };
                let (mut exps, mut out) = ([0i32; 6], [0i16; 6]);
                softmax(&x, m, s, &mut exps, &mut out);
                assert_eq!(out, int64_form(&x, m, s), "x {x:?} m {m} s {s}");
            }
        }
    }

    /// `finish_fast` equals the int64 form `sat16(shr_round(r + b, 8))` on the extremes of
    /// both operands (r within the fast path's ±2^29) and on a million random cases.
    #[test]
    fn finish_fast_equals_the_int64_form() {
        let int64_form = |r: i32, b: i32| sat16(shr_round(r as i64 + b as i64, 8));
        let rs = [
            -(1 << 29),
            -(1 << 29) + 1,
            -129,
            -128,
            -127,
            -1,
            0,
            1,
            127,
            128,
            1 << 29,
        ];
        let bs = [
            i32::MIN,
            i32::MIN + 1,
            -(1 << 30),
            -128,
            -1,
            0,
            1,
            127,
            1 << 30,
            i32::MAX,
        ];
        for &r in &rs {
            for &b in &bs {
                assert_eq!(finish_fast(r, b), int64_form(r, b), "r {r} b {b}");
            }
        }
        let mut next = xorshift(0x5eed_d3a5);
        for _ in 0..1_000_000 {
            let r = (next() as i32) >> 2; // within ±2^29
            let b = next() as i32;
            assert_eq!(finish_fast(r, b), int64_form(r, b), "r {r} b {b}");
        }
    }
}
