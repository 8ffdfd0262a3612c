//! One SimpleRNN time step, one direction: `h = tanh(W·x + R·h + b)` (h in Q15) or
//! `h = relu(...)` (h with `frac_h` fractional bits, saturated). `acc` holds `H` int32.

use crate::blob::{flags, Layer, Params};
use crate::fixed::{requant, sat16, sat32, shr_round};
use crate::lut::tanh_q20;
use crate::rows;

/// Advances `h` (`[H]`) by one step on input `x`.
pub fn step(layer: &Layer, p: &Params, x: &[i16], h: &mut [i16], acc: &mut [i32]) {
    let n = layer.out_dim;
    let (ws, rs) = (layer.w_stride(), layer.r_stride());
    rows::each2(&p.w, ws, x, &p.r, rs, h, 0..n, |j, dx, dh| {
        let ax = requant(dx, p.mx[j], p.sx[j]);
        let ah = requant(dh, p.mh[j], p.sh[j]);
        let mut v = sat32(ax + ah + p.bias[j] as i64);
        if layer.clip_q20 > 0 {
            v = v.clamp(-layer.clip_q20, layer.clip_q20);
        }
        acc[j] = v;
    });
    let relu = layer.has(flags::RELU);
    for k in 0..n {
        h[k] = if relu {
            sat16(shr_round(acc[k].max(0) as i64, 20 - layer.frac_h))
        } else {
            tanh_q20(acc[k])
        };
    }
}
