//! One LSTM time step, one direction, in fixed point.
//!
//! Formats: x int16 (the previous layer's scale), h Q15, c int16 with `frac_c` fractional bits,
//! gate pre-activations Q20 int32 in `acc` (`[4H]`, gate order i, o, f, c as in ONNX).
//! Per row j: `acc[j] = rq(W[j]·x, mx[j], sx[j]) + rq(R[j]·h, mh[j], sh[j]) + bias[j]`;
//! then i, f, o = σ, g = tanh (lookup tables), `c = f·c + i·g`, `h = o·tanh(c)`; peepholes add
//! `rq(P·c)` to i and f (old c) and o (new c); `clip_q20` clamps every pre-activation;
//! input_forget sets f = 1 - i. Every intermediate is saturated to its type.

use crate::blob::{flags, Layer, Params};
use crate::fixed::{requant, sat16, sat32, shr_round};
use crate::lut::{sigmoid_q20, sigmoid_q20_i32, tanh_q20, tanh_q20_i32};
use crate::rows;

/// Advances `h` and `c` (each `[H]`) by one step on input `x`; `acc` holds
/// [`Layer::acc_len`] int32 (`4H` preactivations, then the packed copies of `x` and `h`);
/// `table` is this direction's block of the session's tables (its row table, then maybe its
/// int8 rows repacked in pairs: [`crate::rowtab::split`]) or empty.
pub fn step(
    layer: &Layer,
    p: &Params,
    table: &[i32],
    x: &[i16],
    h: &mut [i16],
    c: &mut [i16],
    acc: &mut [i32],
) {
    if p.fast && !layer.has(flags::PEEPHOLES) && step_fast(layer, p, table, x, h, c, acc) {
        return;
    }
    step_i64(layer, p, x, h, c, acc);
}

/// The fast path: the products on word-packed copies of `x` and `h` (dual MACs on Cortex-M4),
/// requantised in int32 ([`crate::fixed::requant32`], bounds proven by the parser), gates in
/// int32. Every value equals [`step_i64`]'s (the argument at each step below). `false` when
/// `acc` or a matrix is not as the parser and [`Layer::acc_len`] guarantee (nothing changed).
#[inline(always)]
fn step_fast(
    layer: &Layer,
    p: &Params,
    table: &[i32],
    x: &[i16],
    h: &mut [i16],
    c: &mut [i16],
    acc: &mut [i32],
) -> bool {
    let n = layer.out_dim;
    if h.len() < n || c.len() < n || x.len() < layer.in_dim {
        return false;
    }
    let Some((gates, xs, hs)) = rows::fast_layout(layer, 4 * n, acc) else {
        return false;
    };
    let pack = rows::packing(&p.w);
    pack(&x[..layer.in_dim], xs);
    pack(&h[..n], hs);
    let (table, pairs) = crate::rowtab::split(table, layer, p);
    let (ws, rs) = (layer.w_stride(), layer.r_stride());
    if !rows::preact_fast(p, table, pairs.as_ref(), ws, rs, xs, hs, gates) {
        return false;
    }
    // The common case (no clip, no input_forget, `c << (20 - frac_c)` within int32) without
    // any per-unit test: on Cortex-M4 one asm pass, elsewhere its own copy of the loop.
    let plain = layer.clip_q20 == 0 && !layer.has(flags::INPUT_FORGET) && layer.frac_c >= 4;
    #[cfg(recur_dsp)]
    if plain && crate::arm::lstm_cells(gates, n, h, c, layer.frac_c) {
        return true;
    }
    #[cfg(not(recur_dsp))]
    if plain {
        cell_update::<true>(layer, gates, h, c);
        return true;
    }
    cell_update::<false>(layer, gates, h, c);
    true
}

/// The fast path's element-wise part: gates and cell update in int32. `PLAIN`: the layer has
/// no clip and no input_forget and `frac_c >= 4` (the caller checked), so none of those is
/// tested per unit.
///
/// sigmoid/tanh take the int32 preactivation (sat32 was the identity). |f·c|, |i·g| < 2^30
/// and the rounding constants are at most 2^29 (30 - frac_c >= 15), so both shr_round terms
/// fit; their sum is below 2^17. tanh(c·2^sh), sh = 20 - frac_c: tanh_q20 holds its end
/// values from ±2^23 on (8.0 in Q20) and clamps its input to [-2^23, 2^23 - 1] itself, so
/// the int64 shift and sat32 give what `c << sh` gives in int32 when that cannot overflow
/// (`sh <= 16`: |c| <= 2^15); for wider shifts c is first clamped to ±2^(23 - sh), which
/// changes nothing either (the clamped value fits int32). |o·tc| < 2^30.
#[inline(always)]
fn cell_update<const PLAIN: bool>(layer: &Layer, gates: &[i32], h: &mut [i16], c: &mut [i16]) {
    let n = layer.out_dim;
    let lim_clip = layer.clip_q20;
    let clipped = !PLAIN && lim_clip > 0;
    let clip = |v: i32| -> i32 {
        if clipped {
            v.max(-lim_clip).min(lim_clip)
        } else {
            v
        }
    };
    let fc = layer.frac_c as u32;
    let sh = 20 - fc;
    let wide = !PLAIN && sh > 16;
    let lim = 1i32 << (23 - sh);
    let input_forget = !PLAIN && layer.has(flags::INPUT_FORGET);
    let r32 = |v: i32, s: u32| (v + (1 << (s - 1))) >> s;
    if gates.len() < 4 * n {
        return;
    }
    let (gi, rest) = gates.split_at(n);
    let (go, rest) = rest.split_at(n);
    let (gf, gg) = rest.split_at(n);
    let units = gi
        .iter()
        .zip(go)
        .zip(gf)
        .zip(gg)
        .zip(h.iter_mut().zip(c.iter_mut()));
    for ((((&ip, &op), &fp), &gp), (hk, ck)) in units {
        let i = sigmoid_q20_i32(clip(ip));
        let f = if input_forget {
            32767 - i
        } else {
            sigmoid_q20_i32(clip(fp))
        };
        let g = tanh_q20_i32(clip(gp));
        let c_prev = *ck as i32;
        let c_new = (r32(f * c_prev, 15) + r32(i * g, 30 - fc)).clamp(-32768, 32767);
        let o = sigmoid_q20_i32(clip(op));
        let c_in = if wide {
            c_new.max(-lim).min(lim)
        } else {
            c_new
        };
        let tc = tanh_q20_i32(c_in << sh);
        *hk = r32(o * tc, 15).clamp(-32768, 32767) as i16;
        *ck = c_new as i16;
    }
}

/// The general path (peepholes, or rows whose bounds the parser could not prove for int32):
/// int64 throughout.
fn step_i64(layer: &Layer, p: &Params, x: &[i16], h: &mut [i16], c: &mut [i16], acc: &mut [i32]) {
    let n = layer.out_dim;
    let (ws, rs) = (layer.w_stride(), layer.r_stride());
    rows::each2(&p.w, ws, x, &p.r, rs, h, 0..4 * n, |j, dx, dh| {
        let ax = requant(dx, p.mx[j], p.sx[j]);
        let ah = requant(dh, p.mh[j], p.sh[j]);
        acc[j] = sat32(ax + ah + p.bias[j] as i64);
    });
    let clip = |v: i64| -> i32 {
        let v = sat32(v);
        if layer.clip_q20 > 0 {
            v.clamp(-layer.clip_q20, layer.clip_q20)
        } else {
            v
        }
    };
    let peep = layer.has(flags::PEEPHOLES);
    let fc = layer.frac_c;
    for k in 0..n {
        let c_prev = c[k] as i64;
        let mut i_pre = acc[k] as i64;
        let mut o_pre = acc[n + k] as i64;
        let mut f_pre = acc[2 * n + k] as i64;
        let g_pre = acc[3 * n + k] as i64;
        if peep {
            i_pre += requant(p.p[k] as i64 * c_prev, p.mp[0], p.sp[0]);
            f_pre += requant(p.p[2 * n + k] as i64 * c_prev, p.mp[2], p.sp[2]);
        }
        let i = sigmoid_q20(clip(i_pre)) as i64;
        let f = if layer.has(flags::INPUT_FORGET) {
            32767 - i
        } else {
            sigmoid_q20(clip(f_pre)) as i64
        };
        let g = tanh_q20(clip(g_pre)) as i64;
        let c_new = sat16(shr_round(f * c_prev, 15) + shr_round(i * g, 30 - fc));
        if peep {
            o_pre += requant(p.p[n + k] as i64 * c_new as i64, p.mp[1], p.sp[1]);
        }
        let o = sigmoid_q20(clip(o_pre)) as i64;
        let tc = tanh_q20(sat32((c_new as i64) << (20 - fc))) as i64;
        h[k] = sat16(shr_round(o * tc, 15));
        c[k] = c_new;
    }
}
