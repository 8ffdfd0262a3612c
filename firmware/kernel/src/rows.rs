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

/// Words of packed scratch a vector of `n` int16 values takes (pairs, the last one
/// zero-padded): [`pack16`] and [`pack8`] both fill `words(n)` words.
pub const fn words(n: usize) -> usize {
    n.div_ceil(2)
}

/// A recurrent layer's `acc` as the fast path lays it out ([`crate::Layer::acc_len`]): `rows`
/// preactivation words, then its input and its state packed two values to a word
/// (`words(in_dim)` and `words(out_dim)` words). `None` when `acc` is shorter.
#[inline(always)]
pub fn fast_layout<'a>(
    layer: &crate::blob::Layer,
    rows: usize,
    acc: &'a mut [i32],
) -> Option<(&'a mut [i32], &'a mut [u32], &'a mut [u32])> {
    let (wx, wh) = (words(layer.in_dim), words(layer.out_dim));
    let need = rows.checked_add(wx)?.checked_add(wh)?;
    let (pre, scratch) = acc.get_mut(..need)?.split_at_mut(rows);
    let (xs, hs) = bytemuck::cast_slice_mut::<i32, u32>(scratch).split_at_mut(wx);
    Some((pre, xs, hs))
}

/// The packing that matches a matrix's weights: [`pack8`] for int8, [`pack16`] for int16.
#[inline(always)]
pub fn packing(w: &Weights) -> fn(&[i16], &mut [u32]) {
    match w {
        Weights::I8(_) => pack8,
        Weights::I16(_) => pack16,
    }
}

/// Packs `x` two values to a word (`x[2k]` in the low half, as int16 weights pair in memory),
/// zero-padded to the end of `out`: the layout [`dot16`] multiplies with int16 rows.
#[inline(always)]
pub fn pack16(x: &[i16], out: &mut [u32]) {
    #[cfg(recur_dsp)]
    let mut k = crate::arm::copy_pairs(x, out);
    #[cfg(not(recur_dsp))]
    let mut k = {
        let mut k = 0;
        for (o, p) in out.iter_mut().zip(x.chunks_exact(2)) {
            *o = p[0] as u16 as u32 | (p[1] as u16 as u32) << 16;
            k += 1;
        }
        k
    };
    // An odd last value, when every pair found its word and a word is left.
    if let (Some(o), [last]) = (out.get_mut(k), x.chunks_exact(2).remainder()) {
        *o = *last as u16 as u32;
        k += 1;
    }
    out.iter_mut().skip(k).for_each(|o| *o = 0);
}

/// Packs `x` for [`dot8`]: each group of four values as the two words `(x0, x2)` and
/// `(x1, x3)` (the halves SXTB16 takes from four int8 weights), a last group of two as
/// `(x0, x1)`, zero-padded like [`pack16`].
#[inline(always)]
pub fn pack8(x: &[i16], out: &mut [u32]) {
    let pair = |a: i16, b: i16| a as u16 as u32 | (b as u16 as u32) << 16;
    let at = |i: usize| x.get(i).copied().unwrap_or(0);
    let n = out.len();
    // Whole groups of four values first (no per-value range test), then the same loop as
    // before over what is left: the values at and past the end of `x` read as 0 there.
    let mut full = 0;
    for (o, g) in out.chunks_exact_mut(2).zip(x.chunks_exact(4)) {
        o[0] = pair(g[0], g[2]);
        o[1] = pair(g[1], g[3]);
        full += 1;
    }
    let mut k = 2 * full;
    while k + 1 < n {
        let i = 2 * k;
        out[k] = pair(at(i), at(i + 2));
        out[k + 1] = pair(at(i + 1), at(i + 3));
        k += 2;
    }
    if k < n {
        out[k] = pair(at(2 * k), at(2 * k + 1));
    }
}

/// `Σ` over the words of `w` and `x` of `lo·lo + hi·hi` (int16 halves): the exact product of
/// an int16 row (as words) with a [`pack16`] vector.
#[inline(always)]
pub fn dot16(w: &[u32], x: &[u32]) -> i64 {
    #[cfg(recur_dsp)]
    {
        crate::arm::dot16(w, x)
    }
    #[cfg(not(recur_dsp))]
    {
        let mut acc = 0i64;
        for (&a, &b) in w.iter().zip(x) {
            let lo = a as i16 as i32 * b as i16 as i32;
            let hi = (a >> 16) as i16 as i32 * (b >> 16) as i16 as i32;
            acc += lo as i64 + hi as i64;
        }
        acc
    }
}

/// The exact product of an int8 row (its even length in bytes) with a [`pack8`] vector.
#[inline(always)]
pub fn dot8(w: &[i8], x: &[u32]) -> i64 {
    #[cfg(recur_dsp)]
    {
        crate::arm::dot8(w, x)
    }
    #[cfg(not(recur_dsp))]
    {
        let mut acc = 0i64;
        let mut xs = x.iter();
        let mut groups = w.chunks_exact(4);
        for g in &mut groups {
            let (Some(&x02), Some(&x13)) = (xs.next(), xs.next()) else {
                return acc;
            };
            let h = |v: u32, hi: bool| (if hi { v >> 16 } else { v }) as i16 as i32;
            let s = g[0] as i32 * h(x02, false)
                + g[2] as i32 * h(x02, true)
                + (g[1] as i32 * h(x13, false) + g[3] as i32 * h(x13, true));
            acc += s as i64;
        }
        if let ([a, b], Some(&x01)) = (groups.remainder(), xs.next()) {
            acc += (*a as i32 * x01 as i16 as i32 + *b as i32 * (x01 >> 16) as i16 as i32) as i64;
        }
        acc
    }
}

/// [`dot8`] accumulated in int32 (wrapping, which never happens where it is used: rows the
/// parser proved below 2^31, [`crate::blob::Params::acc32`]).
#[inline(always)]
pub fn dot8_32(w: &[i8], x: &[u32]) -> i32 {
    #[cfg(recur_dsp)]
    {
        crate::arm::dot8_32(w, x)
    }
    #[cfg(not(recur_dsp))]
    {
        dot8(w, x) as i32
    }
}

/// `f(j, W[j]·x)` for `j` in `rows`, the products on a packed copy `xs` of `x` ([`pack16`]
/// or [`pack8`], matching the weights; rows of `stride` elements, `xs` of `stride / 2`
/// words): the same exact sums as [`each`] gives on an `x` of the matrix's input width.
/// `false` (no call made) when the matrix or `xs` is not laid out so.
#[inline(always)]
pub fn each_packed(
    w: &Weights,
    stride: usize,
    xs: &[u32],
    rows: Range<usize>,
    mut f: impl FnMut(usize, i64),
) -> bool {
    if stride == 0 || !stride.is_multiple_of(2) || xs.len() != stride / 2 {
        return false;
    }
    match w {
        Weights::I16(m) => {
            let Ok(m) = bytemuck::try_cast_slice::<i16, u32>(m) else {
                return false;
            };
            let sw = stride / 2;
            if m.len() / sw < rows.end {
                return false;
            }
            for (j, row) in rows.clone().zip(m.chunks_exact(sw).skip(rows.start)) {
                f(j, dot16(row, xs));
            }
        }
        Weights::I8(m) => {
            if m.len() / stride < rows.end {
                return false;
            }
            for (j, row) in rows.clone().zip(m.chunks_exact(stride).skip(rows.start)) {
                f(j, dot8(row, xs));
            }
        }
    }
    true
}

/// One gate row's preactivation on the fast path: `(rq(W[j]·x) + rq(R[j]·h))` saturating-plus
/// `bias`, for rows `out.len()` rows from the start of the matrices (see
/// [`crate::blob::Params::fast`] for why this equals `sat32(ax + ah + bias)`). `xs`/`hs` are
/// the packed input and state ([`pack16`] or [`pack8`], matching the weights); `table` is the
/// direction's row table ([`crate::rowtab`], built for `p.table`) or empty, `pairs` its gate
/// rows repacked in pairs ([`crate::rowtab::split`]; at least `out.len()` rows) if the
/// session keeps them. Returns `false` (and computes nothing) when a matrix is not laid out as the
/// parser guarantees.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub fn preact_fast(
    p: &crate::blob::Params,
    table: &[i32],
    pairs: Option<&crate::rowtab::PairRows>,
    ws: usize,
    rs: usize,
    xs: &[u32],
    hs: &[u32],
    out: &mut [i32],
) -> bool {
    use crate::fixed::requant32;
    use crate::rowtab::{Form, ROW_WORDS};
    let rows = out.len();
    let (mx, sx, mh, sh, bias) = (p.mx, p.sx, p.mh, p.sh, p.bias);
    if mx.len() < rows || sx.len() < rows || mh.len() < rows || sh.len() < rows {
        return false;
    }
    if bias.len() < rows {
        return false;
    }
    let form = p.table.filter(|_| table.len() >= rows * ROW_WORDS);
    // The rows two by two when the session keeps them repacked (an even count).
    if let Some(pr) = pairs.filter(|pr| form == Some(pr.form) && (pr.ws, pr.rs) == (ws, rs)) {
        if gate_pairs(pr, xs, hs, table, out) {
            return true;
        }
    }
    match (&p.w, &p.r) {
        (Weights::I16(w), Weights::I16(r)) => {
            let (Ok(w), Ok(r)) = (
                bytemuck::try_cast_slice::<i16, u32>(w),
                bytemuck::try_cast_slice::<i16, u32>(r),
            ) else {
                return false;
            };
            let (wsw, rsw) = (ws / 2, rs / 2);
            if wsw == 0 || rsw == 0 || w.len() < rows * wsw || r.len() < rows * rsw {
                return false;
            }
            if form == Some(Form::HighWord) {
                #[cfg(recur_dsp)]
                if crate::arm::gate_rows16(w, wsw, r, rsw, xs, hs, table, out) {
                    return true;
                }
                #[cfg(not(recur_dsp))]
                {
                    gate_rows_table(w, wsw, r, rsw, table, out, |wr, rr, e| {
                        use crate::rowtab::{requant_high_word as rq, shift};
                        rq(dot16(wr, xs), e[0], shift(e, 0)) + rq(dot16(rr, hs), e[1], shift(e, 1))
                    });
                    return true;
                }
            }
            gate_rows(w, wsw, r, rsw, p, out, |wr, rr, (mx, sx), (mh, sh)| {
                requant32(dot16(wr, xs), mx, sx) + requant32(dot16(rr, hs), mh, sh)
            });
        }
        (Weights::I8(w), Weights::I8(r)) => {
            if ws == 0 || rs == 0 || w.len() < rows * ws || r.len() < rows * rs {
                return false;
            }
            // `rowtab::form` gives TwoWord only with `p.acc32`.
            if form == Some(Form::TwoWord) {
                #[cfg(recur_dsp)]
                if crate::arm::gate_rows8(w, ws, r, rs, xs, hs, table, out) {
                    return true;
                }
                #[cfg(not(recur_dsp))]
                {
                    gate_rows_table(w, ws, r, rs, table, out, |wr, rr, e| {
                        use crate::rowtab::{requant_two_word as rq, shift};
                        let (dx, dh) = (dot8_32(wr, xs), dot8_32(rr, hs));
                        rq(dx, e[0], shift(e, 0), shift(e, 1))
                            + rq(dh, e[1], shift(e, 2), shift(e, 3))
                    });
                    return true;
                }
            }
            if p.acc32 {
                gate_rows(w, ws, r, rs, p, out, |wr, rr, (mx, sx), (mh, sh)| {
                    crate::fixed::requant32_i32(dot8_32(wr, xs), mx, sx)
                        + crate::fixed::requant32_i32(dot8_32(rr, hs), mh, sh)
                });
            } else {
                gate_rows(w, ws, r, rs, p, out, |wr, rr, (mx, sx), (mh, sh)| {
                    requant32(dot8(wr, xs), mx, sx) + requant32(dot8(rr, hs), mh, sh)
                });
            }
        }
        _ => return false,
    }
    true
}

/// Which product of its gate rows a [`single_rows_fast`] call computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// `W·x`: the entries' input multiplier and shift.
    Input,
    /// `R·h`: the entries' recurrent multiplier and shift.
    Recurrent,
}

impl Side {
    /// Which of a table entry's two multipliers (word 0 or 1) this side's rows use.
    pub fn entry_word(self) -> usize {
        match self {
            Side::Input => 0,
            Side::Recurrent => 1,
        }
    }

    /// The (input, recurrent) widths that give a dual-product row kernel this side's product
    /// alone (the other one zero wide, which the kernels requantise to 0).
    pub fn widths(self, width: usize) -> (usize, usize) {
        match self {
            Side::Input => (width, 0),
            Side::Recurrent => (0, width),
        }
    }
}

/// Gate rows with one product each, on the fast path with a row table: `out[j] =
/// rq(M[first+j]·v) +sat bias` with `rq` and `bias` from `table`'s entry `j` (this call's
/// rows only, in `form`), `rq` the entry's `side` half. The GRU's h gate takes its input and recurrent
/// products apart this way (the reset gate scales the latter). `v` is packed as
/// [`packing`] gives for `m`. Returns `false` (and computes nothing) when a matrix, vector
/// or table is not laid out as expected.
#[allow(clippy::too_many_arguments)]
pub fn single_rows_fast(
    m: &Weights,
    stride: usize,
    first: usize,
    v: &[u32],
    side: Side,
    form: crate::rowtab::Form,
    table: &[i32],
    out: &mut [i32],
) -> bool {
    use crate::rowtab::{requant_high_word, requant_two_word, shift, Form, ROW_WORDS};
    let rows = out.len();
    let k = side.entry_word();
    if stride == 0 || !stride.is_multiple_of(2) || v.len() != stride / 2 {
        return false;
    }
    if table.len() < rows * ROW_WORDS {
        return false;
    }
    let entries = table.chunks_exact(ROW_WORDS);
    match (m, form) {
        (Weights::I16(m), Form::HighWord) => {
            let Ok(m) = bytemuck::try_cast_slice::<i16, u32>(m) else {
                return false;
            };
            let sw = stride / 2;
            let Some(m) = m.get(first * sw..(first + rows) * sw) else {
                return false;
            };
            #[cfg(recur_dsp)]
            {
                let (a, b) = side.widths(sw);
                if crate::arm::gate_rows16(m, a, m, b, v, v, table, out) {
                    return true;
                }
            }
            for ((o, row), e) in out.iter_mut().zip(m.chunks_exact(sw)).zip(entries) {
                let a = requant_high_word(dot16(row, v), e[k], shift(e, k as u32));
                *o = a.saturating_add(e[2]);
            }
        }
        (Weights::I8(m), Form::TwoWord) => {
            let Some(m) = m.get(first * stride..(first + rows) * stride) else {
                return false;
            };
            #[cfg(recur_dsp)]
            {
                let (a, b) = side.widths(stride);
                if crate::arm::gate_rows8(m, a, m, b, v, v, table, out) {
                    return true;
                }
            }
            let (a, b) = (2 * k as u32, 2 * k as u32 + 1);
            for ((o, row), e) in out.iter_mut().zip(m.chunks_exact(stride)).zip(entries) {
                let t = requant_two_word(dot8_32(row, v), e[k], shift(e, a), shift(e, b));
                *o = t.saturating_add(e[2]);
            }
        }
        _ => return false,
    }
    true
}

/// `out[j] = row(W[j], R[j], (mx, sx), (mh, sh)).saturating_add(bias[j])` for every row of
/// `out` (rows zipped with their parameters: no index, no bounds check per row). A function
/// of its own per weight type, so that the row loop gets all the registers.
#[inline(never)]
fn gate_rows<T>(
    w: &[T],
    ws: usize,
    r: &[T],
    rs: usize,
    p: &crate::blob::Params,
    out: &mut [i32],
    row: impl Fn(&[T], &[T], (i32, u8), (i32, u8)) -> i32,
) {
    if ws == 0 || rs == 0 {
        return;
    }
    let mats = w.chunks_exact(ws).zip(r.chunks_exact(rs));
    let per_row = p.mx.iter().zip(p.sx).zip(p.mh.iter().zip(p.sh)).zip(p.bias);
    for ((o, (wr, rr)), (((&mx, &sx), (&mh, &sh)), &b)) in out.iter_mut().zip(mats).zip(per_row) {
        *o = row(wr, rr, (mx, sx), (mh, sh)).saturating_add(b);
    }
}

/// [`gate_rows`] with each row's parameters from a row table ([`crate::rowtab`]): `out[j] =
/// row(W[j], R[j], entry j).saturating_add(bias in entry j)`.
#[cfg(not(recur_dsp))]
#[inline(never)]
fn gate_rows_table<T>(
    w: &[T],
    ws: usize,
    r: &[T],
    rs: usize,
    table: &[i32],
    out: &mut [i32],
    row: impl Fn(&[T], &[T], &[i32]) -> i32,
) {
    if ws == 0 || rs == 0 {
        return;
    }
    let mats = w.chunks_exact(ws).zip(r.chunks_exact(rs));
    let entries = table.chunks_exact(crate::rowtab::ROW_WORDS);
    for ((o, (wr, rr)), e) in out.iter_mut().zip(mats).zip(entries) {
        *o = row(wr, rr, e).saturating_add(e[2]);
    }
}

/// The gate rows of [`preact_fast`] two by two, from rows repacked by
/// [`crate::rowtab::pack_pairs`]: on Cortex-M4 the kernels `arm::gate_pairs16` and
/// `arm::gate_pairs8`, elsewhere their portable twin. `false` (nothing written) when the
/// slices do not fit ([`crate::rowtab::PairRows::fit`]).
#[inline(always)]
pub fn gate_pairs(
    p: &crate::rowtab::PairRows,
    xs: &[u32],
    hs: &[u32],
    table: &[i32],
    out: &mut [i32],
) -> bool {
    #[cfg(recur_dsp)]
    {
        use crate::rowtab::Form;
        match p.form {
            Form::HighWord => crate::arm::gate_pairs16(p, xs, hs, table, out),
            Form::TwoWord => crate::arm::gate_pairs8(p, xs, hs, table, out),
        }
    }
    #[cfg(not(recur_dsp))]
    {
        gate_pairs_table(p, xs, hs, table, out)
    }
}

/// [`gate_pairs`]' portable twin: [`gate_rows_table`]'s values, row by row, from the pairs'
/// products.
#[cfg(not(recur_dsp))]
#[inline(never)]
fn gate_pairs_table(
    p: &crate::rowtab::PairRows,
    xs: &[u32],
    hs: &[u32],
    table: &[i32],
    out: &mut [i32],
) -> bool {
    use crate::rowtab::{pair_products16, pair_products8, pair_words, shift, Form, ROW_WORDS};
    use crate::rowtab::{requant_high_word, requant_two_word};
    if !p.fit(xs, hs, table, out.len()) {
        return false;
    }
    let (ws, rs) = (p.ws, p.rs);
    let (wpw, rpw) = (pair_words(p.form, ws), pair_words(p.form, rs));
    for (pair, o) in out.chunks_exact_mut(2).enumerate() {
        let wq = &p.w[pair * wpw..(pair + 1) * wpw];
        let rq = &p.r[pair * rpw..(pair + 1) * rpw];
        let entry = |k: usize| &table[(2 * pair + k) * ROW_WORDS..(2 * pair + k + 1) * ROW_WORDS];
        let mut v = [0i32; 2];
        match p.form {
            Form::HighWord => {
                let ((xa, xb), (ha, hb)) = (pair_products16(wq, xs), pair_products16(rq, hs));
                for (k, (dx, dh)) in [(xa, ha), (xb, hb)].into_iter().enumerate() {
                    let e = entry(k);
                    v[k] = requant_high_word(dx, e[0], shift(e, 0))
                        + requant_high_word(dh, e[1], shift(e, 1));
                }
            }
            Form::TwoWord => {
                let (xa, xb) = pair_products8(wq, ws, &xs[..ws / 2]);
                let (ha, hb) = pair_products8(rq, rs, &hs[..rs / 2]);
                for (k, (dx, dh)) in [(xa, ha), (xb, hb)].into_iter().enumerate() {
                    let e = entry(k);
                    v[k] = requant_two_word(dx, e[0], shift(e, 0), shift(e, 1))
                        + requant_two_word(dh, e[1], shift(e, 2), shift(e, 3));
                }
            }
        }
        for (k, (o, v)) in o.iter_mut().zip(v).enumerate() {
            *o = v.saturating_add(entry(k)[2]);
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `pack16`/`pack8` against their definitions, value by value, for every length of `x`
    /// and `out` up to 12 (including mismatched ones), and the packed products against `dot`.
    #[test]
    fn packing_and_packed_products() {
        let half = |w: u32, hi: bool| (if hi { w >> 16 } else { w }) as u16 as i16;
        for len in 0..12usize {
            let x: [i16; 12] =
                core::array::from_fn(|i| (i as i16).wrapping_mul(7919).wrapping_sub(20000) | 1);
            let x = &x[..len];
            let at = |i: usize| x.get(i).copied().unwrap_or(0);
            for words in 0..8usize {
                let mut o16 = [0xdead_beefu32; 8];
                pack16(x, &mut o16[..words]);
                let mut o8 = [0xdead_beefu32; 8];
                pack8(x, &mut o8[..words]);
                for k in 0..words {
                    assert_eq!(
                        half(o16[k], false),
                        at(2 * k),
                        "pack16 len {len} words {words}"
                    );
                    assert_eq!(
                        half(o16[k], true),
                        at(2 * k + 1),
                        "pack16 len {len} words {words}"
                    );
                    let (a, b) = if k % 2 == 0 && k + 1 < words {
                        (2 * k, 2 * k + 2)
                    } else if k % 2 == 1 {
                        (2 * k - 1, 2 * k + 1)
                    } else {
                        (2 * k, 2 * k + 1)
                    };
                    assert_eq!(
                        half(o8[k], false),
                        at(a),
                        "pack8 len {len} words {words} k {k}"
                    );
                    assert_eq!(
                        half(o8[k], true),
                        at(b),
                        "pack8 len {len} words {words} k {k}"
                    );
                }
                assert!(o16[words..]
                    .iter()
                    .chain(&o8[words..])
                    .all(|&w| w == 0xdead_beef));
            }
            // Products on an x of the row's width: rows of even(len) weights.
            let ws = len + (len & 1);
            let w16: [i16; 12] =
                core::array::from_fn(|i| (i as i16).wrapping_mul(3001).wrapping_sub(16000) ^ 5);
            let w8: [i8; 12] = core::array::from_fn(|i| (i as i8).wrapping_mul(37) ^ 3);
            let mut xs = [0u32; 6];
            pack16(x, &mut xs[..words(len)]);
            let w16w: [u32; 6] = core::array::from_fn(|k| {
                w16[2 * k] as u16 as u32 | (w16[2 * k + 1] as u16 as u32) << 16
            });
            assert_eq!(
                dot16(&w16w[..ws / 2], &xs[..words(len)]),
                dot(&w16[..ws], x)
            );
            pack8(x, &mut xs[..words(len)]);
            assert_eq!(dot8(&w8[..ws], &xs[..words(len)]), dot(&w8[..ws], x));
            assert_eq!(
                dot8_32(&w8[..ws], &xs[..words(len)]) as i64,
                dot(&w8[..ws], x)
            );
        }
    }
}
