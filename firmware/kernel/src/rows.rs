//! Matrix-vector products row by row, with the weight type (int8 or int16) resolved once
//! per matrix instead of once per row.
//!
//! Each function calls `f(j, dot)` for every row `j` of a range, `dot` being the exact int64
//! sum of the row's products with `x` (the row's first `x.len()` elements; padding columns
//! are never read). Rows come from `chunks_exact(stride)` zipped with the range, so a matrix
//! shorter than the range (which the parser rules out) ends the loop early instead of
//! panicking.

use core::ops::Range;

use crate::blob::Weights;

/// `f(j, W[j]·x)` for `j` in `rows`.
#[inline(always)]
pub fn each(w: &Weights, stride: usize, x: &[i16], rows: Range<usize>, f: impl FnMut(usize, i64)) {
    match w {
        Weights::I8(m) => each_in(m, stride, x, rows, f),
        Weights::I16(m) => each_in(m, stride, x, rows, f),
    }
}

/// `f(j, W[j]·x, R[j]·h)` for `j` in `rows`: the input and recurrent products of one gate
/// row together.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub fn each2(
    w: &Weights,
    ws: usize,
    x: &[i16],
    r: &Weights,
    rs: usize,
    h: &[i16],
    rows: Range<usize>,
    f: impl FnMut(usize, i64, i64),
) {
    match (w, r) {
        (Weights::I8(a), Weights::I8(b)) => each2_in(a, ws, x, b, rs, h, rows, f),
        (Weights::I8(a), Weights::I16(b)) => each2_in(a, ws, x, b, rs, h, rows, f),
        (Weights::I16(a), Weights::I8(b)) => each2_in(a, ws, x, b, rs, h, rows, f),
        (Weights::I16(a), Weights::I16(b)) => each2_in(a, ws, x, b, rs, h, rows, f),
    }
}

#[inline(always)]
fn each_in<W: Copy + Into<i32>>(
    m: &[W],
    stride: usize,
    x: &[i16],
    rows: Range<usize>,
    mut f: impl FnMut(usize, i64),
) {
    if stride == 0 {
        return;
    }
    let start = rows.start;
    for (j, row) in rows.zip(m.chunks_exact(stride).skip(start)) {
        f(j, dot(row, x));
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn each2_in<A: Copy + Into<i32>, B: Copy + Into<i32>>(
    w: &[A],
    ws: usize,
    x: &[i16],
    r: &[B],
    rs: usize,
    h: &[i16],
    rows: Range<usize>,
    mut f: impl FnMut(usize, i64, i64),
) {
    if ws == 0 || rs == 0 {
        return;
    }
    let start = rows.start;
    let pairs = w
        .chunks_exact(ws)
        .skip(start)
        .zip(r.chunks_exact(rs).skip(start));
    for (j, (wr, rr)) in rows.zip(pairs) {
        f(j, dot(wr, x), dot(rr, h));
    }
}

/// `Σ w[k]·x[k]` over the shorter of the two, each product exact in int32, summed in int64
/// (on Cortex-M4, LLVM pairs int16 products into SMLALD).
#[inline(always)]
pub fn dot<W: Copy + Into<i32>>(w: &[W], x: &[i16]) -> i64 {
    let mut acc = 0i64;
    for (&a, &b) in w.iter().zip(x) {
        acc += (a.into() * b as i32) as i64;
    }
    acc
}
