//! The fast path's row table: each gate row's two multipliers, bias and shifts side by side
//! in RAM, in a form whose requantisation needs no branch.
//!
//! Why: the blob keeps `mx`, `sx`, `mh`, `sh` and `bias` as five arrays in flash, so a gate
//! row spends more instructions fetching its parameters and choosing between the two shift
//! cases of [`crate::fixed::requant32`] than on its dual multiply-accumulates. A
//! [`crate::Session`] builds this table once (in its `acc` memory, [`crate::Layer::table_len`]
//! words per layer); a row then loads its four words with one LDM.
//!
//! Two forms, chosen per direction by the parser ([`crate::blob::Params::table`]), each equal
//! to `requant32` on every row where the fast path applies (tested below):
//! - [`Form::HighWord`] (int16 weights, int64 accumulators): `t = (acc·m') >> 32 >> c`, with
//!   `m' = m·2^(33-s)` when `s <= 33` (the parser checks that it fits int32) and `c = s - 33`
//!   otherwise: both are `floor(acc·m / 2^(s-1))`.
//! - [`Form::TwoWord`] (int8 weights, int32 accumulators, every `s <= 33`): `t = (lo >> (s-1))
//!   | (hi << (33-s))` over the two words of `acc·m`, shifts of 32 giving 0 as ARM's
//!   register-specified shifts do.
//!
//! Then `(t + 1) >> 1` as in `requant32`. Row `j` is `[mx', mh', bias, shifts]`; `shifts` is
//! `cx | ch << 8` (HighWord) or `(sx-1) | (33-sx) << 8 | (sh-1) << 16 | (33-sh) << 24`
//! (TwoWord).
//!
//! Which rows a table holds is [`crate::Layer::table_rows`]: an LSTM's four gates; a GRU's
//! three, then the h gate's rows again for its recurrent product on its own, with `rbn` as
//! bias (linear_before_reset) or 0.
//!
//! With int8 weights ([`Form::TwoWord`]) and room for them, a session also keeps the gate rows
//! of the dual-product kernel ([`crate::Layer::pair_rows`]) repacked two by two after each
//! direction's table ([`pack_pairs`]): int8 rows spend two SXTB16 per four weights that int16
//! rows do not, and processing two rows per pass over the vector pays the vector loads, the
//! loop and the pointer upkeep once per two rows instead, which wins those instructions back.

use crate::blob::{Layer, Params, Weights};

/// int32 words per gate row.
pub const ROW_WORDS: usize = 4;

/// How a direction's table requantises (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// int16 weights: the high word of `acc·m'`, shifted right by `c`.
    HighWord,
    /// int8 weights accumulated in int32: the two words of `acc·m` shifted together.
    TwoWord,
}

/// The form every one of the first `rows` gate rows of `p` fits, if any. Only for
/// directions on the fast path (`p.fast`; with int8 weights also `p.acc32`).
pub fn form(p: &Params, rows: usize) -> Option<Form> {
    let candidate = match (p.w, p.r) {
        (Weights::I16(_), Weights::I16(_)) if p.fast => Form::HighWord,
        (Weights::I8(_), Weights::I8(_)) if p.fast && p.acc32 => Form::TwoWord,
        _ => return None,
    };
    (0..rows)
        .all(|j| entry(p, j, candidate).is_some())
        .then_some(candidate)
}

/// Writes the first `rows` gate rows of `p` in `form` into `out` (`rows * ROW_WORDS` words);
/// `false` when `out` is short or a row does not fit `form` (which [`form`] rules out).
pub fn build(p: &Params, rows: usize, form: Form, out: &mut [i32]) -> bool {
    if out.len() < rows * ROW_WORDS {
        return false;
    }
    for (j, row) in out.chunks_exact_mut(ROW_WORDS).take(rows).enumerate() {
        let Some(e) = entry(p, j, form) else {
            return false;
        };
        row.copy_from_slice(&e);
    }
    true
}

/// Row `j`'s table entry in `form`, if the row fits it. Rows past the gates' own (`j >=
/// bias.len()`, only a GRU's table has them: its fourth block of `H`) repeat the h gate's
/// rows for that gate's recurrent product on its own, with `rbn` as their bias under
/// linear_before_reset and 0 without (`rbn` empty).
fn entry(p: &Params, j: usize, form: Form) -> Option<[i32; ROW_WORDS]> {
    let gates = p.bias.len();
    let (row, bias) = match j.checked_sub(gates) {
        None => (j, *p.bias.get(j)?),
        Some(k) => {
            let h = gates / 3;
            let bias = if p.rbn.is_empty() { 0 } else { *p.rbn.get(k)? };
            ((k < h).then_some(2 * h + k)?, bias)
        }
    };
    let (mx, sx) = (*p.mx.get(row)?, *p.sx.get(row)?);
    let (mh, sh) = (*p.mh.get(row)?, *p.sh.get(row)?);
    match form {
        Form::HighWord => {
            let part = |m: i32, s: u8| match s {
                0 => None,
                34.. => Some((m, s as u32 - 33)),
                _ => high_word_multiplier(m, s).map(|m| (m, 0)),
            };
            let ((mx, cx), (mh, ch)) = (part(mx, sx)?, part(mh, sh)?);
            Some([mx, mh, bias, (cx | ch << 8) as i32])
        }
        Form::TwoWord => {
            let ok = |s: u8| (1..=33).contains(&s).then_some(s as u32);
            let (sx, sh) = (ok(sx)?, ok(sh)?);
            let shifts = (sx - 1) | (33 - sx) << 8 | (sh - 1) << 16 | (33 - sh) << 24;
            Some([mx, mh, bias, shifts as i32])
        }
    }
}

/// Words one pair of gate rows of `stride` weights (even) takes in [`pack_pairs`]' layout:
/// int16 ([`Form::HighWord`]) one word per two weights of each row; int8
/// ([`Form::TwoWord`]) two words per group of four weights, one more for a last pair.
pub const fn pair_words(form: Form, stride: usize) -> usize {
    match form {
        Form::HighWord => stride,
        Form::TwoWord => 2 * (stride / 4) + (stride % 4) / 2,
    }
}

/// Words [`pack_pairs`] writes for `rows` rows of `stride` weights (an odd last row paired
/// with a row of zeros).
pub const fn pairs_len(form: Form, rows: usize, stride: usize) -> usize {
    rows.div_ceil(2) * pair_words(form, stride)
}

/// A direction's gate rows repacked two by two in RAM, so that one pass over the pairs
/// computes two rows' products on each load of the vector (the Cortex-M4 kernels
/// `arm::gate_pairs16` and `arm::gate_pairs8`). The words of a pair `(a, b)` are, for int16
/// rows, row `a`'s word `k` then row `b`'s, for each `k`; for int8 rows, per group of four
/// weights, row `a`'s four bytes then row `b`'s, and for rows of `4k + 2` bytes a last word
/// `[a[s-2], b[s-2], a[s-1], b[s-1]]` (whose SXTB16 halves are row `a`'s last pair, and
/// rotated by 8 row `b`'s). Writes the first `rows` rows of `m` (rows of `stride` weights,
/// `stride` even) in the layout of `m`'s type; `false` when `m` or `out` is short or
/// `stride` odd.
pub fn pack_pairs(m: &Weights, stride: usize, rows: usize, out: &mut [u32]) -> bool {
    if !stride.is_multiple_of(2) {
        return false;
    }
    match m {
        Weights::I16(m) => {
            let len = pairs_len(Form::HighWord, rows, stride);
            let Ok(m) = bytemuck::try_cast_slice::<i16, u32>(m) else {
                return false;
            };
            let sw = stride / 2;
            if m.len() / sw.max(1) < rows || out.len() < len {
                return false;
            }
            let word = |row: usize, k: usize| if row < rows { m[row * sw + k] } else { 0 };
            let pairs = out[..len].chunks_exact_mut(2 * sw.max(1));
            for (a, pair) in (0..rows).step_by(2).zip(pairs) {
                for (k, two) in pair.chunks_exact_mut(2).enumerate() {
                    two.copy_from_slice(&[word(a, k), word(a + 1, k)]);
                }
            }
            true
        }
        Weights::I8(m) => pack_pairs8(m, stride, rows, &mut out[..]),
    }
}

/// [`pack_pairs`] for int8 rows.
fn pack_pairs8(m: &[i8], stride: usize, rows: usize, out: &mut [u32]) -> bool {
    let len = pairs_len(Form::TwoWord, rows, stride);
    if m.len() / stride.max(1) < rows || out.len() < len {
        return false;
    }
    let byte = |row: usize, k: usize| -> u8 {
        if row < rows {
            m[row * stride + k] as u8
        } else {
            0
        }
    };
    let mut words = out[..len].iter_mut();
    let mut put = |bytes: [u8; 4]| {
        if let Some(w) = words.next() {
            *w = u32::from_le_bytes(bytes);
        }
    };
    for a in (0..rows).step_by(2) {
        let b = a + 1;
        for g in (0..stride / 4).map(|g| 4 * g) {
            put([byte(a, g), byte(a, g + 1), byte(a, g + 2), byte(a, g + 3)]);
            put([byte(b, g), byte(b, g + 1), byte(b, g + 2), byte(b, g + 3)]);
        }
        if stride % 4 == 2 {
            let k = stride - 2;
            put([byte(a, k), byte(b, k), byte(a, k + 1), byte(b, k + 1)]);
        }
    }
    true
}

/// The products of one pair of int16 rows from its [`pack_pairs`] words and a
/// [`crate::rows::pack16`] vector `x`: `(W[a]·x, W[b]·x)`, exact. The portable twin of the
/// products of the Cortex-M4 kernel `arm::gate_pairs16`.
pub fn pair_products16(words: &[u32], x: &[u32]) -> (i64, i64) {
    let dual = |w: u32, v: u32| {
        (w as i16 as i64) * (v as i16 as i64)
            + ((w >> 16) as i16 as i64) * ((v >> 16) as i16 as i64)
    };
    let (mut a, mut b) = (0i64, 0i64);
    for (two, &v) in words.chunks_exact(2).zip(x) {
        a += dual(two[0], v);
        b += dual(two[1], v);
    }
    (a, b)
}

/// The products of one pair of int8 rows from its [`pack_pairs`] words and a
/// [`crate::rows::pack8`] vector `x` of `stride / 2` words: `(W[a]·x, W[b]·x)`, wrapping in
/// int32 as SMLAD does (exact where used: [`crate::blob::Params::acc32`]). The portable twin
/// of the products of the Cortex-M4 kernel `arm::gate_pairs8`.
pub fn pair_products8(words: &[u32], stride: usize, x: &[u32]) -> (i32, i32) {
    // SXTB16: bytes 0 and 2 (or, rotated by 8, bytes 1 and 3) as two int16 halves.
    let lanes = |w: u32, rot: u32| {
        let w = w.rotate_right(rot);
        (w as u8 as i8 as i32, (w >> 16) as u8 as i8 as i32)
    };
    let half = |v: u32| (v as i16 as i32, (v >> 16) as i16 as i32);
    let dual = |w: (i32, i32), v: (i32, i32)| (w.0 * v.0).wrapping_add(w.1 * v.1);
    let (mut a, mut b) = (0i32, 0i32);
    let groups = stride / 4;
    for g in 0..groups.min(words.len() / 2).min(x.len() / 2) {
        let (wa, wb) = (words[2 * g], words[2 * g + 1]);
        let (x02, x13) = (half(x[2 * g]), half(x[2 * g + 1]));
        a = a
            .wrapping_add(dual(lanes(wa, 0), x02))
            .wrapping_add(dual(lanes(wa, 8), x13));
        b = b
            .wrapping_add(dual(lanes(wb, 0), x02))
            .wrapping_add(dual(lanes(wb, 8), x13));
    }
    if stride % 4 == 2 {
        if let (Some(&t), Some(&xt)) = (words.get(2 * groups), x.get(2 * groups)) {
            a = a.wrapping_add(dual(lanes(t, 0), half(xt)));
            b = b.wrapping_add(dual(lanes(t, 8), half(xt)));
        }
    }
    (a, b)
}

/// A direction's gate rows repacked in pairs ([`pack_pairs`]) as the pair kernels read them:
/// `w` holds pairs of rows of `ws` weights, `r` pairs of rows of `rs` weights, in `form`'s
/// layout.
#[derive(Debug, Clone, Copy)]
pub struct PairRows<'p> {
    /// The direction's table form, which fixes the weights' type and layout.
    pub form: Form,
    /// The input matrix's pairs.
    pub w: &'p [u32],
    /// Input weights per row (even).
    pub ws: usize,
    /// The recurrent matrix's pairs.
    pub r: &'p [u32],
    /// Recurrent weights per row (even).
    pub rs: usize,
}

impl PairRows<'_> {
    /// Whether a pair kernel may compute `rows` gate rows from these pairs, vectors `xs` and
    /// `hs` and `table`: an even, non-zero row count (below 2^28), even row widths, vectors
    /// of `ws / 2` and `rs / 2` words, `rows` table rows and `rows / 2` pairs in `w` and `r`.
    pub fn fit(&self, xs: &[u32], hs: &[u32], table: &[i32], rows: usize) -> bool {
        let (ws, rs) = (self.ws, self.rs);
        if rows == 0 || !rows.is_multiple_of(2) || rows > (u32::MAX as usize) / 16 {
            return false;
        }
        if !ws.is_multiple_of(2) || !rs.is_multiple_of(2) || xs.len() < ws / 2 || hs.len() < rs / 2
        {
            return false;
        }
        let (wpw, rpw) = (pair_words(self.form, ws), pair_words(self.form, rs));
        let pairs = rows / 2;
        table.len() / ROW_WORDS >= rows
            && pairs.checked_mul(wpw).is_some_and(|n| self.w.len() >= n)
            && pairs.checked_mul(rpw).is_some_and(|n| self.r.len() >= n)
    }
}

/// A direction's RAM block (its row table, then maybe [`crate::Layer::dir_pair_len`] words)
/// split into its row table and, when the block holds them, its gate rows in pairs
/// ([`crate::Layer::pair_rows`] rows of `w`, then of `r`).
pub fn split<'b>(block: &'b [i32], layer: &Layer, p: &Params) -> (&'b [i32], Option<PairRows<'b>>) {
    let (table, rest) = block.split_at((layer.table_rows() * ROW_WORDS).min(block.len()));
    let pairs: &[u32] = bytemuck::cast_slice(rest);
    let (rows, ws, rs) = (layer.pair_rows(), layer.w_stride(), layer.r_stride());
    let found = p.table.and_then(|form| {
        let wn = pairs_len(form, rows, ws);
        (!pairs.is_empty() && pairs.len() == wn + pairs_len(form, rows, rs)).then(|| {
            let (w, r) = pairs.split_at(wn);
            PairRows { form, w, ws, r, rs }
        })
    });
    (table, found)
}

impl<'p> PairRows<'p> {
    /// These pairs from row `first` on (`first` even: a pair boundary; `None` when odd or
    /// past the end).
    pub fn from_row(&self, first: usize) -> Option<PairRows<'p>> {
        if !first.is_multiple_of(2) {
            return None;
        }
        let (wpw, rpw) = (
            pair_words(self.form, self.ws),
            pair_words(self.form, self.rs),
        );
        Some(PairRows {
            w: self.w.get(first / 2 * wpw..)?,
            r: self.r.get(first / 2 * rpw..)?,
            ..*self
        })
    }

    /// Only the input product's rows (the recurrent side zero wide), or with `recurrent` only
    /// the recurrent product's: the kernels requantise the zero-wide product to 0, so a row is
    /// its one product, requantised, plus its bias.
    pub fn one_side(&self, recurrent: bool) -> PairRows<'p> {
        match recurrent {
            false => PairRows {
                r: &[],
                rs: 0,
                ..*self
            },
            true => PairRows {
                w: &[],
                ws: 0,
                ..*self
            },
        }
    }
}

/// `m·2^(33-s)` when it fits int32 (`s <= 33`).
fn high_word_multiplier(m: i32, s: u8) -> Option<i32> {
    let k = 33u32.checked_sub(s as u32)?;
    let v = (m as i64).checked_shl(k)?;
    i32::try_from(v).ok()
}

/// Shift byte `k` of a table row `e` (its fourth word).
#[inline(always)]
pub fn shift(e: &[i32], k: u32) -> u32 {
    (e[3] as u32 >> (8 * k)) & 0xff
}

/// [`crate::fixed::requant32`] through a [`Form::HighWord`] entry (`m'`, `c`).
#[inline(always)]
pub fn requant_high_word(acc: i64, m: i32, c: u32) -> i32 {
    // The fast path's bound makes |acc·m'| < 2^63 (see the module tests), so the product is
    // exact; the high word is what SMULL + MLA leave in their upper register.
    let t = ((acc.wrapping_mul(m as i64) >> 32) as i32) >> (c & 31);
    (t.wrapping_add(1)) >> 1
}

/// [`crate::fixed::requant32_i32`] through a [`Form::TwoWord`] entry (`m`, `a = s - 1`,
/// `b = 33 - s`).
#[inline(always)]
pub fn requant_two_word(acc: i32, m: i32, a: u32, b: u32) -> i32 {
    let p = acc as i64 * m as i64;
    let (lo, hi) = (p as u32, (p >> 32) as u32);
    let shr = |v: u32, n: u32| v.checked_shr(n).unwrap_or(0);
    let shl = |v: u32, n: u32| v.checked_shl(n).unwrap_or(0);
    let t = (shr(lo, a) | shl(hi, b)) as i32;
    (t.wrapping_add(1)) >> 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixed::{requant, requant32, requant32_i32};

    /// Checks both forms against `requant` on one case of the fast path's domain, each where
    /// it accepts the shift; which of the two did.
    fn check(acc: i64, m: i32, s: u8) -> (bool, bool) {
        let want = requant(acc, m, s);
        assert!(want.abs() <= 1 << 29, "case outside the fast bound");
        assert_eq!(requant32(acc, m, s) as i64, want);
        let high_entry = match s {
            34.. => Some((m, s as u32 - 33)),
            _ => high_word_multiplier(m, s).map(|m| (m, 0)),
        };
        if let Some((m2, c)) = high_entry {
            let got = requant_high_word(acc, m2, c);
            assert_eq!(got as i64, want, "high word: acc {acc} m {m} s {s}");
        }
        let two = i32::try_from(acc).ok().filter(|_| s <= 33);
        if let Some(a32) = two {
            let got = requant_two_word(a32, m, s as u32 - 1, 33 - s as u32);
            assert_eq!(got as i64, want, "two word: acc {acc} m {m} s {s}");
            assert_eq!(requant32_i32(a32, m, s), got);
        }
        (high_entry.is_some(), two.is_some())
    }

    /// Both forms equal `requant32` (hence `requant`) on every accumulator, multiplier and
    /// shift the fast path allows (result at most 2^29 in magnitude), whenever the form
    /// accepts the shift: random cases across the whole range, and the edges.
    #[test]
    fn both_forms_equal_requant32_within_the_fast_bound() {
        let (mut high, mut two) = (0, 0);
        for (acc, m, s) in crate::test_rng::fast_requant_cases(0x9e37_79b9_7f4a_7c15) {
            if high >= 200_000 && two >= 200_000 {
                break;
            }
            let (h, t) = check(acc, m, s);
            (high, two) = (high + h as u32, two + t as u32);
        }
        let edges = [
            (1i64, 1, 1u8),
            (-1, 1, 1),
            (-3, 1, 1),
            (-2, 1, 2),
            (3, -1, 2),
            (-(1 << 39), (1 << 22) - 1, 42),
            ((1 << 39) - 1, -(1 << 22) + 1, 42),
            (-(1 << 30), (1 << 22) - 1, 33),
            (-(1 << 30), (1 << 22) - 1, 34),
            ((1 << 31) - 1, (1 << 22) - 1, 24),
            (-(1 << 31), -(1 << 22) + 1, 24),
        ];
        for (acc, m, s) in edges {
            check(acc, m, s);
        }
        assert_eq!(high_word_multiplier(1 << 21, 24), Some(1 << 30));
        assert_eq!(high_word_multiplier(1 << 21, 23), None);
        assert_eq!(high_word_multiplier(-(1 << 21), 23), Some(i32::MIN));
    }

    /// Rows repacked in pairs give each row's own product: `pair_products8`/`16` on
    /// `pack_pairs`' words equal `dot8`/`dot16` on the rows as the blob holds them, for every
    /// even row width up to 42 weights (each group count and both int8 tails), odd and even
    /// row counts (an odd last row's partner reads as zeros), and extreme as well as random
    /// weights and vectors.
    #[test]
    fn pairs_give_each_rows_own_product() {
        use crate::rows::{dot16, dot8, pack16, pack8};
        let mut next = crate::test_rng::xorshift(0x05ee_d0f9_a1e5);
        for stride in (2..=42).step_by(2) {
            let sw = stride / 2;
            for rows in 1..=5 {
                for case in 0..8 {
                    let pick = |v: u64, lo: i64, hi: i64| match case {
                        0 => lo,
                        1 => hi,
                        _ => v as i64,
                    };
                    let m8: [i8; 5 * 42] = core::array::from_fn(|_| pick(next(), -128, 127) as i8);
                    // int16 rows on words, as the parser has them.
                    let mut m16 = [0u32; 5 * 21];
                    for v in bytemuck::cast_slice_mut::<u32, i16>(&mut m16) {
                        *v = pick(next(), -32768, 32767) as i16;
                    }
                    let m16: &[i16] = bytemuck::cast_slice(&m16);
                    let x: [i16; 42] = core::array::from_fn(|i| match case {
                        0 | 1 => i16::MIN + (i % 2) as i16,
                        _ => next() as i16,
                    });
                    let (mut xs8, mut xs16) = ([0u32; 21], [0u32; 21]);
                    pack8(&x[..stride], &mut xs8[..sw]);
                    pack16(&x[..stride], &mut xs16[..sw]);
                    let mut words = [0u32; 3 * 42];
                    for form in [Form::TwoWord, Form::HighWord] {
                        let m = match form {
                            Form::TwoWord => Weights::I8(&m8),
                            Form::HighWord => Weights::I16(m16),
                        };
                        let len = pairs_len(form, rows, stride);
                        assert!(pack_pairs(&m, stride, rows, &mut words[..len]));
                        assert!(!pack_pairs(&m, stride, rows, &mut words[..len - 1]));
                        let pw = pair_words(form, stride);
                        for (p, pair) in words[..len].chunks_exact(pw).enumerate() {
                            let (a, b) = match form {
                                Form::TwoWord => {
                                    let (a, b) = pair_products8(pair, stride, &xs8[..sw]);
                                    (a as i64, b as i64)
                                }
                                Form::HighWord => pair_products16(pair, &xs16[..sw]),
                            };
                            for (row, got) in [(2 * p, a), (2 * p + 1, b)] {
                                let want = match (row < rows, &m) {
                                    (false, _) => 0,
                                    (true, Weights::I8(m)) => {
                                        dot8(&m[row * stride..(row + 1) * stride], &xs8[..sw])
                                    }
                                    (true, Weights::I16(m)) => {
                                        let w: &[u32] = bytemuck::cast_slice(m);
                                        dot16(&w[row * sw..(row + 1) * sw], &xs16[..sw])
                                    }
                                };
                                assert_eq!(
                                    got, want,
                                    "{form:?} stride {stride} rows {rows} row {row}"
                                );
                            }
                        }
                    }
                }
            }
        }
        assert!(
            !pack_pairs(&Weights::I8(&[0; 9]), 3, 3, &mut [0; 8]),
            "odd stride"
        );
    }
}
