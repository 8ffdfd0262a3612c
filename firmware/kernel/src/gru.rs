//! One GRU time step, one direction, in fixed point (both `linear_before_reset` forms).
//!
//! Formats: x int16, h Q15, pre-activations Q20 in `acc` (gate order z, r, h as in ONNX).
//! linear_before_reset=1: `n = tanh(Wn·x + Wbn + r ⊙ (Rn·h + Rbn))`;
//! linear_before_reset=0: `n = tanh(Wn·x + Wbn + Rbn + Rn·(r ⊙ h))`, with `r ⊙ h` (Q15) in
//! `tmp`. Then `h = n + z·(h - n)`. `acc` holds `4H` int32, `tmp` `H` int16.

use crate::blob::{flags, Layer, Params};
use crate::fixed::{mul_q15, requant, requant32, sat32};
use crate::lut::{sigmoid_q20_i32, tanh_q20_i32};
use crate::rows::{self, Side};
use crate::rowtab::ROW_WORDS;

/// Advances `h` (`[H]`) by one step on input `x`; `table` is this direction's block of the
/// session's tables (its row table, then maybe its int8 rows repacked in pairs:
/// [`crate::rowtab::split`]) or empty.
pub fn step(
    layer: &Layer,
    p: &Params,
    table: &[i32],
    x: &[i16],
    h: &mut [i16],
    acc: &mut [i32],
    tmp: &mut [i16],
) {
    let n = layer.out_dim;
    let (ws, rs) = (layer.w_stride(), layer.r_stride());
    let lbr = layer.has(flags::LINEAR_BEFORE_RESET);
    let clip = |v: i32| -> i32 {
        if layer.clip_q20 > 0 {
            v.clamp(-layer.clip_q20, layer.clip_q20)
        } else {
            v
        }
    };
    // z and r: input and recurrent products; the h gate's input product alone (its
    // recurrent product comes after the reset gate, or into acc[3n..] with lbr).
    if !(p.fast && products_fast(layer, p, table, x, h, acc)) {
        rows::each2(&p.w, ws, x, &p.r, rs, h, 0..2 * n, |j, dx, dh| {
            let ax = requant(dx, p.mx[j], p.sx[j]);
            let ah = requant(dh, p.mh[j], p.sh[j]);
            acc[j] = sat32(ax + ah + p.bias[j] as i64);
        });
        rows::each(&p.w, ws, x, 2 * n..3 * n, |j, dx| {
            acc[j] = sat32(requant(dx, p.mx[j], p.sx[j]) + p.bias[j] as i64);
        });
        if lbr {
            rows::each(&p.r, rs, h, 2 * n..3 * n, |j, dh| {
                let ah = requant(dh, p.mh[j], p.sh[j]);
                acc[j + n] = sat32(ah + p.rbn[j - 2 * n] as i64);
            });
        }
    }
    // With linear_before_reset and no clip, on Cortex-M4: the rest in one asm pass per unit.
    #[cfg(recur_dsp)]
    if lbr && layer.clip_q20 == 0 && crate::arm::gru_cells(acc, n, h) {
        return;
    }
    // Without linear_before_reset and clip, on Cortex-M4: z activated in place and r ⊙ h into
    // `tmp` in one asm pass per unit.
    let gated = !lbr && layer.clip_q20 == 0 && gates_asm(acc, n, h, tmp);
    // z and r, activated in place (Q15 values held in int32); the clip test once, not per
    // value.
    if !gated {
        if layer.clip_q20 > 0 {
            for a in acc.iter_mut().take(2 * n) {
                *a = sigmoid_q20_i32(clip(*a));
            }
        } else {
            for a in acc.iter_mut().take(2 * n) {
                *a = sigmoid_q20_i32(*a);
            }
        }
    }
    if lbr {
        let (_, rest) = acc.split_at_mut(n.min(acc.len()));
        let (r, rest) = rest.split_at_mut(n.min(rest.len()));
        let (gn, gh) = rest.split_at_mut(n.min(rest.len()));
        for ((g, &r), &gh) in gn.iter_mut().zip(r.iter()).zip(gh.iter()) {
            *g = reset_combine(*g, r, gh);
        }
    } else {
        if !gated {
            for k in 0..n {
                tmp[k] = mul_q15(acc[n + k] as i16, h[k]);
            }
        }
        if !(p.fast && reset_product_fast(layer, p, table, &tmp[..n], acc)) {
            rows::each(&p.r, rs, &tmp[..n], 2 * n..3 * n, |j, dh| {
                let ah = requant(dh, p.mh[j], p.sh[j]);
                acc[j] = sat32(acc[j] as i64 + ah);
            });
        }
    }
    // h = n + z·(h - n) in int32: z in 0..=32767 and |h - n| <= 65534, so the product plus
    // the rounding constant is below 32767·65534 + 2^14 < 2^31, and the sum fits as well.
    // The clip test once, not per unit; without clip, on Cortex-M4, one asm pass per unit.
    #[cfg(recur_dsp)]
    if layer.clip_q20 == 0 && crate::arm::gru_update(acc, n, h) {
        return;
    }
    let (z, rest) = acc.split_at(n.min(acc.len()));
    let gn = rest.get(n..2 * n).unwrap_or(&[]);
    let units = h.iter_mut().zip(z).zip(gn);
    if layer.clip_q20 > 0 {
        for ((hk, &z), &g) in units {
            *hk = update(*hk, z, tanh_q20_i32(clip(g)));
        }
    } else {
        for ((hk, &z), &g) in units {
            *hk = update(*hk, z, tanh_q20_i32(g));
        }
    }
}

/// [`crate::arm::gru_gates`] on Cortex-M4 (`false` elsewhere: the portable loops run).
#[inline(always)]
fn gates_asm(acc: &mut [i32], n: usize, h: &[i16], rh: &mut [i16]) -> bool {
    #[cfg(recur_dsp)]
    {
        crate::arm::gru_gates(acc, n, h, rh)
    }
    #[cfg(not(recur_dsp))]
    {
        let _ = (acc, n, h, rh);
        false
    }
}

/// `h = n + z·(h - n)` for one unit (`z` Q15 in 0..=32767, `n` Q15).
#[inline(always)]
fn update(h: i16, z: i32, n: i32) -> i16 {
    let d = h as i32 - n;
    (n + ((z * d + (1 << 14)) >> 15)).clamp(-32768, 32767) as i16
}

/// The h gate's pre-activation with linear_before_reset: `gn +sat round(r·gh / 2^15)`, the
/// reset gate `r` in Q15 (0..=32767, a sigmoid's output). Equal to the int64 form
/// `sat32(gn + shr_round(r·gh, 15))`: `|r·gh| < 2^15·2^31`, so the rounded quotient lies
/// strictly inside int32 and only the final addition can saturate.
#[inline(always)]
fn reset_combine(gn: i32, r: i32, gh: i32) -> i32 {
    let t = ((r as i64 * gh as i64 + (1 << 14)) >> 15) as i32;
    gn.saturating_add(t)
}

/// The products of [`step`] before the reset gate on the fast path: `x` and `h` packed into
/// `acc[4H..]`, z and r rows by [`rows::preact_fast`] (int32, the parser's bound), the h
/// gate's input product (and with linear_before_reset its recurrent one) on the packed
/// vectors: with a row table by [`rows::single_rows_fast`], else with `requant32`. Same values in
/// `acc[..4H]` as the general path; `false` when a buffer or matrix is not laid out as
/// expected (then the general path recomputes everything; `h` is not touched here).
fn products_fast(
    layer: &Layer,
    p: &Params,
    table: &[i32],
    x: &[i16],
    h: &[i16],
    acc: &mut [i32],
) -> bool {
    let n = layer.out_dim;
    let (ws, rs) = (layer.w_stride(), layer.r_stride());
    if h.len() < n || x.len() != layer.in_dim {
        return false;
    }
    if p.mx.len() < 3 * n || p.sx.len() < 3 * n || p.bias.len() < 3 * n {
        return false;
    }
    let lbr = layer.has(flags::LINEAR_BEFORE_RESET);
    if lbr && (p.mh.len() < 3 * n || p.sh.len() < 3 * n || p.rbn.len() < n) {
        return false;
    }
    let Some((gates, xs, hs)) = rows::fast_layout(layer, 4 * n, acc) else {
        return false;
    };
    let pack = rows::packing(&p.w);
    pack(x, xs);
    pack(&h[..n], hs);
    let (table, pairs) = crate::rowtab::split(table, layer, p);
    if !rows::preact_fast(
        p,
        table,
        pairs.as_ref(),
        ws,
        rs,
        xs,
        hs,
        &mut gates[..2 * n],
    ) {
        return false;
    }
    let (gn, gh) = gates[2 * n..].split_at_mut(n);
    // With the row table: the h gate's rows on the rows kernel too, its input product (rows
    // 2H..3H of the table) and with lbr its recurrent one (rows 3H..4H, `rbn` as bias) apart;
    // two by two from the pairs (rows 2H..3H of each matrix) when the session keeps them.
    if let Some(form) = p.table {
        let rows_of = |g: usize| {
            table
                .get(g * n * ROW_WORDS..(g + 1) * n * ROW_WORDS)
                .unwrap_or(&[])
        };
        if let Some(h_rows) = pairs.and_then(|pr| pr.from_row(2 * n)) {
            let (input, recurrent) = (h_rows.one_side(false), h_rows.one_side(true));
            let done = rows::gate_pairs(&input, xs, &[], rows_of(2), gn)
                && (!lbr || rows::gate_pairs(&recurrent, &[], hs, rows_of(3), gh));
            if done {
                return true;
            }
        }
        let (w, r) = (&p.w, &p.r);
        let done = rows::single_rows_fast(w, ws, 2 * n, xs, Side::Input, form, rows_of(2), gn)
            && (!lbr
                || rows::single_rows_fast(r, rs, 2 * n, hs, Side::Recurrent, form, rows_of(3), gh));
        if done {
            return true;
        }
    }
    // `Params::fast` covers every row of the three gates: |rq(W[j]·x)|, |rq(R[j]·h)| <= 2^29
    // and both shifts >= 1, so requant32 equals requant and sat32(a + b) is a.saturating_add(b).
    let ok = rows::each_packed(&p.w, ws, xs, 2 * n..3 * n, |j, dx| {
        gn[j - 2 * n] = requant32(dx, p.mx[j], p.sx[j]).saturating_add(p.bias[j]);
    });
    if !ok {
        return false;
    }
    if lbr {
        let ok = rows::each_packed(&p.r, rs, hs, 2 * n..3 * n, |j, dh| {
            let ah = requant32(dh, p.mh[j], p.sh[j]);
            gh[j - 2 * n] = ah.saturating_add(p.rbn[j - 2 * n]);
        });
        if !ok {
            return false;
        }
    }
    true
}

/// Without linear_before_reset, on the fast path with a row table: the h gate's recurrent
/// product of `rh = r ⊙ h` on the row kernels (from the pairs when the session keeps them),
/// requantised by the table's fourth block (bias 0) into `acc[3H..4H]`, then added with
/// saturation to the gate's input product in `acc[2H..3H]`: the values of the general path,
/// since `Params::fast` bounds every recurrent row for any vector of int16 values (`|r ⊙ h|
/// <= |h|`), so requant32 equals requant and `sat32(a + b)` is `a.saturating_add(b)`. `false`
/// (nothing changed in `acc[..3H]`) when the session has no table or a buffer is not laid out
/// for it.
fn reset_product_fast(
    layer: &Layer,
    p: &Params,
    table: &[i32],
    rh: &[i16],
    acc: &mut [i32],
) -> bool {
    let n = layer.out_dim;
    let Some(form) = p.table else {
        return false;
    };
    if rh.len() != n {
        return false;
    }
    let Some((gates, _, hs)) = rows::fast_layout(layer, 4 * n, acc) else {
        return false;
    };
    rows::packing(&p.r)(rh, hs);
    let (table, pairs) = crate::rowtab::split(table, layer, p);
    let recurrent_rows = table
        .get(3 * n * ROW_WORDS..4 * n * ROW_WORDS)
        .unwrap_or(&[]);
    let (gn, gh) = gates[2 * n..].split_at_mut(n);
    let on_pairs = pairs
        .and_then(|pr| pr.from_row(2 * n))
        .is_some_and(|h_rows| {
            rows::gate_pairs(&h_rows.one_side(true), &[], hs, recurrent_rows, gh)
        });
    let done = on_pairs || {
        let rs = layer.r_stride();
        rows::single_rows_fast(
            &p.r,
            rs,
            2 * n,
            hs,
            Side::Recurrent,
            form,
            recurrent_rows,
            gh,
        )
    };
    if !done {
        return false;
    }
    for (g, &a) in gn.iter_mut().zip(gh.iter()) {
        *g = g.saturating_add(a);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixed::shr_round;
    use crate::test_rng::xorshift;

    /// `reset_combine` equals the int64 form on the whole reset-gate range: the extremes of
    /// all three operands, then a million random cases.
    #[test]
    fn reset_combine_equals_the_int64_form() {
        let int64 =
            |gn: i32, r: i32, gh: i32| sat32(gn as i64 + shr_round(r as i64 * gh as i64, 15));
        let edges = [
            i32::MIN,
            i32::MIN + 1,
            -(1 << 29),
            -1,
            0,
            1,
            1 << 29,
            i32::MAX - 1,
            i32::MAX,
        ];
        for &gn in &edges {
            for r in [0, 1, 16383, 16384, 32766, 32767] {
                for &gh in &edges {
                    assert_eq!(reset_combine(gn, r, gh), int64(gn, r, gh), "{gn} {r} {gh}");
                }
            }
        }
        let mut next = xorshift(0x5eed_9a7e);
        for _ in 0..1_000_000 {
            let (gn, gh) = (next() as i32, next() as i32);
            let r = (next() % 32768) as i32;
            assert_eq!(reset_combine(gn, r, gh), int64(gn, r, gh), "{gn} {r} {gh}");
        }
    }
}
