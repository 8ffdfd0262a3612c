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
use crate::lut::{sigmoid_q20, tanh_q20};
use crate::rows;

/// Advances `h` and `c` (each `[H]`) by one step on input `x`; `acc` holds `4H` int32.
pub fn step(layer: &Layer, p: &Params, x: &[i16], h: &mut [i16], c: &mut [i16], acc: &mut [i32]) {
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
