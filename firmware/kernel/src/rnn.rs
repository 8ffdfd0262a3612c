//! One SimpleRNN time step, one direction: `h = tanh(W·x + R·h + b)` (h in Q15) or
//! `h = relu(...)` (h with `frac_h` fractional bits, saturated). `acc` holds `H` int32, then
//! `x` and `h` packed for the fast path.

use crate::blob::{flags, Layer, Params};
use crate::fixed::{requant, sat16, sat32, shr_round};
use crate::lut::tanh_q20;
use crate::rows;

/// Advances `h` (`[H]`) by one step on input `x`; `table` is this direction's block of the
/// session's tables (its row table, then maybe its rows repacked in pairs:
/// [`crate::rowtab::split`]) or empty.
pub fn step(layer: &Layer, p: &Params, table: &[i32], x: &[i16], h: &mut [i16], acc: &mut [i32]) {
    let n = layer.out_dim;
    let (ws, rs) = (layer.w_stride(), layer.r_stride());
    if !(p.fast && products_fast(layer, p, table, x, h, acc)) {
        rows::each2(&p.w, ws, x, &p.r, rs, h, 0..n, |j, dx, dh| {
            let ax = requant(dx, p.mx[j], p.sx[j]);
            let ah = requant(dh, p.mh[j], p.sh[j]);
            acc[j] = sat32(ax + ah + p.bias[j] as i64);
        });
    }
    if layer.clip_q20 > 0 {
        for v in acc.iter_mut().take(n) {
            *v = (*v).clamp(-layer.clip_q20, layer.clip_q20);
        }
    }
    let relu = layer.has(flags::RELU);
    #[cfg(recur_dsp)]
    if !relu && crate::arm::tanh_units(acc, n, h) {
        return;
    }
    for k in 0..n {
        h[k] = if relu {
            sat16(shr_round(acc[k].max(0) as i64, 20 - layer.frac_h))
        } else {
            tanh_q20(acc[k])
        };
    }
}

/// The rows' preactivations on the fast path, as the LSTM's: `x` and `h` packed into
/// `acc[H..]`, then [`rows::preact_fast`] (with the row table and the pairs when the session
/// keeps them) into `acc[..H]`. Same values as the general path (`Params::fast`); `false`
/// when a buffer or matrix is not laid out as expected (then the general path computes
/// them).
fn products_fast(
    layer: &Layer,
    p: &Params,
    table: &[i32],
    x: &[i16],
    h: &[i16],
    acc: &mut [i32],
) -> bool {
    let n = layer.out_dim;
    if h.len() < n || x.len() != layer.in_dim {
        return false;
    }
    let Some((pre, xs, hs)) = rows::fast_layout(layer, n, acc) else {
        return false;
    };
    let pack = rows::packing(&p.w);
    pack(x, xs);
    pack(&h[..n], hs);
    let (table, pairs) = crate::rowtab::split(table, layer, p);
    let (ws, rs) = (layer.w_stride(), layer.r_stride());
    rows::preact_fast(p, table, pairs.as_ref(), ws, rs, xs, hs, pre)
}
