//! Cortex-M4 (ARMv7E-M with the DSP extension) inner loops in `asm!`: the dual
//! multiply-accumulate products and the int32 requantisation. Each function computes exactly
//! what its portable counterpart computes ([`crate::rows::dot16`], [`crate::rows::dot8`],
//! [`crate::fixed::requant32`]); the host builds only those, and the QEMU tests compare
//! the firmware's outputs with the host's bit for bit.
//!
//! Register lists of LDM must be ascending, so the data registers are named (r2-r5, r12, lr);
//! pointers, counters and accumulators are left to the compiler. The repeated instruction
//! sequences (a pair of rows' products, the table interpolation of tanh and sigmoid) are
//! `asm!` template macros whose registers are named where they are used. No function here
//! touches the stack; each writes only the slices it is given and its own locals.

#![allow(unsafe_code)]

use core::arch::asm;

use crate::rowtab::{Form, PairRows, ROW_WORDS};

/// `Σ lo·lo + hi·hi` over the int16 halves of `min(w.len(), x.len())` word pairs (SMLALD).
#[inline(always)]
pub fn dot16(w: &[u32], x: &[u32]) -> i64 {
    let n = w.len().min(x.len());
    let (mut lo, mut hi) = (0u32, 0u32);
    // SAFETY: reads exactly `n` words from `w` and from `x` (`n` is at most either length),
    // with LDM/LDR on `&[u32]` data, hence word-aligned as LDM requires. The four-word loop
    // runs n / 4 times, then bit 1 and bit 0 of `n` (the low bits of n - 4·(n/4) - 4, which
    // `n` holds on leaving the loop) select a two-word and a one-word tail. Only the declared
    // registers are written; no memory is written and the stack is not used.
    unsafe {
        asm!(
            "subs {n}, {n}, #4",
            "blt 3f",
            "2:",
            "ldm {pw}!, {{r2, r3, r4, r5}}",
            "ldm {px}!, {{r12, lr}}",
            "smlald {lo}, {hi}, r2, r12",
            "smlald {lo}, {hi}, r3, lr",
            "ldm {px}!, {{r12, lr}}",
            "smlald {lo}, {hi}, r4, r12",
            "smlald {lo}, {hi}, r5, lr",
            "subs {n}, {n}, #4",
            "bge 2b",
            "3:",
            "lsls {n}, {n}, #31", // C = bit 1 (two words left), N = bit 0 (one word left)
            "bcc 4f",
            "ldm {pw}!, {{r2, r3}}",
            "ldm {px}!, {{r12, lr}}",
            "smlald {lo}, {hi}, r2, r12",
            "smlald {lo}, {hi}, r3, lr",
            "4:",
            "bpl 5f",
            "ldr r2, [{pw}]",
            "ldr r12, [{px}]",
            "smlald {lo}, {hi}, r2, r12",
            "5:",
            n = inout(reg) n => _,
            pw = inout(reg) w.as_ptr() => _,
            px = inout(reg) x.as_ptr() => _,
            lo = inout(reg) lo,
            hi = inout(reg) hi,
            out("r2") _, out("r3") _, out("r4") _, out("r5") _, out("r12") _, out("lr") _,
            options(pure, readonly, nostack),
        );
    }
    ((hi as u64) << 32 | lo as u64) as i64
}

/// The exact product of an int8 row with a [`crate::rows::pack8`] vector: per four weights
/// one LDR, two SXTB16 (bytes 0, 2 and 1, 3 as int16 pairs) and two SMLALD; a last pair of
/// weights (rows of 4k + 2) with two LDRSB and PKHBT.
#[inline(always)]
pub fn dot8(w: &[i8], x: &[u32]) -> i64 {
    // Same extent as the portable form: whole groups while `x` has their two words, then the
    // last pair only if every group was taken and `x` has one more word.
    let groups = (w.len() / 4).min(x.len() / 2);
    let tail = groups == w.len() / 4 && w.len() % 4 == 2 && x.len() > 2 * groups;
    let (mut lo, mut hi) = (0u32, 0u32);
    // SAFETY: reads `4 * groups` bytes of `w` and `2 * groups` words of `x` in the loop, then,
    // when `tail`, two more bytes of `w` and one more word of `x`: all within the slices by
    // the computation above. The weight LDR may be unaligned (rows of 4k + 2 bytes), which
    // ARMv7-M allows for LDR on normal memory (flash, RAM) unless CCR.UNALIGN_TRP is set,
    // which nothing here sets; LDM on `x` (`&[u32]`) is word-aligned. Only the declared
    // registers are written; no memory is written and the stack is not used.
    unsafe {
        asm!(
            "cmp {g}, #0",
            "beq 3f",
            "2:",
            "ldr r2, [{pw}], #4",
            "ldm {px}!, {{r12, lr}}",
            "sxtb16 r3, r2",
            "sxtb16 r2, r2, ror #8",
            "smlald {lo}, {hi}, r3, r12",
            "smlald {lo}, {hi}, r2, lr",
            "subs {g}, {g}, #1",
            "bne 2b",
            "3:",
            "cmp {t}, #0",
            "beq 4f",
            "ldrsb r2, [{pw}]",
            "ldrsb r3, [{pw}, #1]",
            "pkhbt r2, r2, r3, lsl #16",
            "ldr r12, [{px}]",
            "smlald {lo}, {hi}, r2, r12",
            "4:",
            g = inout(reg) groups => _,
            t = in(reg) tail as u32,
            pw = inout(reg) w.as_ptr() => _,
            px = inout(reg) x.as_ptr() => _,
            lo = inout(reg) lo,
            hi = inout(reg) hi,
            out("r2") _, out("r3") _, out("r12") _, out("lr") _,
            options(pure, readonly, nostack),
        );
    }
    ((hi as u64) << 32 | lo as u64) as i64
}

/// The end of [`requant32`] and [`requant32_i32`] as `asm!` template text: `{pl}` =
/// `(floor(p / 2^(s-1)) + 1) >> 1` for the 64-bit product `p` in `{ph}:{pl}` and the shift
/// `s` (1..=62) in `{s}`, with `{t}` as scratch. When `s - 1 >= 32` the quotient is the high
/// word shifted; otherwise the bits of both words around bit `s - 1` (register-specified
/// LSL/LSR by 32 give 0, as `s = 1` needs).
macro_rules! shift_round {
    () => {
        concat!(
            "rsbs {t}, {s}, #33\n", // 32 - (s - 1)
            "bgt 2f\n",
            "negs {t}, {t}\n", // (s - 1) - 32 >= 0: floor(p / 2^(s-1)) = ph >> that
            "asr {pl}, {ph}, {t}\n",
            "b 3f\n",
            "2:\n",
            "lsl {ph}, {ph}, {t}\n",
            "sub {t}, {s}, #1\n",
            "lsr {pl}, {pl}, {t}\n",
            "orr {pl}, {pl}, {ph}\n",
            "3:\n",
            "adds {pl}, {pl}, #1\n",
            "asrs {pl}, {pl}, #1\n",
        )
    };
}

/// [`crate::fixed::requant32`]: `(floor(acc·m / 2^(s-1)) + 1) >> 1` with `s` in 1..=62.
#[inline(always)]
pub fn requant32(acc: i64, m: i32, s: u8) -> i32 {
    let (lo, hi) = (acc as u32, (acc >> 32) as u32);
    let r: u32;
    // SAFETY: register arithmetic only (no memory, no stack). acc = H·2^32 + (lo as i32) with
    // H = hi + lo[31]; |acc| < 2^40 gives |H·m| < 2^31, so SMULL + MLA form p = acc·m exactly
    // (|p| < 2^62). Register-specified LSL/LSR by 32 give 0 (s = 1), as the formula needs.
    unsafe {
        asm!(
            "add {t}, {hi}, {lo}, lsr #31",
            "smull {pl}, {ph}, {lo}, {m}",
            "mla {ph}, {t}, {m}, {ph}",
            shift_round!(),
            lo = in(reg) lo,
            hi = in(reg) hi,
            m = in(reg) m,
            s = in(reg) s as u32,
            t = out(reg) _,
            pl = out(reg) r,
            ph = out(reg) _,
            options(pure, nomem, nostack),
        );
    }
    r as i32
}

/// [`crate::rows::dot8_32`]: the product of an int8 row with a [`crate::rows::pack8`] vector
/// accumulated in int32 with SMLAD, two groups of four weights per loop pass (two LDR, one
/// four-register LDM, four SXTB16, four SMLAD), then an odd group and a last pair.
#[inline(always)]
pub fn dot8_32(w: &[i8], x: &[u32]) -> i32 {
    let groups = (w.len() / 4).min(x.len() / 2);
    let tail = groups == w.len() / 4 && w.len() % 4 == 2 && x.len() > 2 * groups;
    // bit 0: one group after the pairs of groups; bit 1: the last pair of weights.
    let rest = (groups & 1) as u32 | (tail as u32) << 1;
    let mut acc = 0i32;
    // SAFETY: reads `4 * groups` bytes of `w` and `2 * groups` words of `x` (`groups / 2`
    // passes of eight bytes and four words, then one more group when `groups` is odd), then,
    // when `tail`, two more bytes of `w` and one more word of `x`: all within the slices by
    // the computation above. The weight LDRs may be unaligned, which ARMv7-M allows for LDR
    // on normal memory unless CCR.UNALIGN_TRP is set, which nothing here sets; LDM on `x`
    // (`&[u32]`) is word-aligned. `lsls #31` puts bit 0 of `rest` in N and bit 1 in C; no
    // instruction after it sets the flags (SMLAD sets only Q). SMLAD wraps modulo 2^32; the
    // callers use it only where the parser proved every partial sum below 2^31
    // ([`crate::blob::Params::acc32`]), so the sum is exact. Only the declared registers are
    // written; no memory is written and the stack is not used.
    unsafe {
        asm!(
            "lsrs {g}, {g}, #1",
            "beq 3f",
            "2:",
            "ldr r2, [{pw}], #4",
            "ldr r3, [{pw}], #4",
            "ldm {px}!, {{r4, r5, r12, lr}}",
            "sxtb16 {t}, r2",
            "sxtb16 r2, r2, ror #8",
            "smlad {acc}, {t}, r4, {acc}",
            "smlad {acc}, r2, r5, {acc}",
            "sxtb16 {t}, r3",
            "sxtb16 r3, r3, ror #8",
            "smlad {acc}, {t}, r12, {acc}",
            "smlad {acc}, r3, lr, {acc}",
            "subs {g}, {g}, #1",
            "bne 2b",
            "3:",
            "lsls {r}, {r}, #31",
            "bpl 4f",
            "ldr r2, [{pw}], #4",
            "ldm {px}!, {{r4, r5}}",
            "sxtb16 {t}, r2",
            "sxtb16 r2, r2, ror #8",
            "smlad {acc}, {t}, r4, {acc}",
            "smlad {acc}, r2, r5, {acc}",
            "4:",
            "bcc 5f",
            "ldrsb r2, [{pw}]",
            "ldrsb r3, [{pw}, #1]",
            "pkhbt r2, r2, r3, lsl #16",
            "ldr r4, [{px}]",
            "smlad {acc}, r2, r4, {acc}",
            "5:",
            g = inout(reg) groups => _,
            r = inout(reg) rest => _,
            pw = inout(reg) w.as_ptr() => _,
            px = inout(reg) x.as_ptr() => _,
            acc = inout(reg) acc,
            t = out(reg) _,
            out("r2") _, out("r3") _, out("r4") _, out("r5") _, out("r12") _, out("lr") _,
            options(pure, readonly, nostack),
        );
    }
    acc
}

/// [`crate::fixed::requant32_i32`]: [`requant32`] of an int32 accumulator, the product by
/// one SMULL.
#[inline(always)]
pub fn requant32_i32(acc: i32, m: i32, s: u8) -> i32 {
    let r: u32;
    // SAFETY: register arithmetic only (no memory, no stack). SMULL forms p = acc·m exactly
    // (|p| < 2^53); the shift is requant32's (register-specified LSL/LSR by 32 give 0).
    unsafe {
        asm!(
            "smull {pl}, {ph}, {a}, {m}",
            shift_round!(),
            a = in(reg) acc,
            m = in(reg) m,
            s = in(reg) s as u32,
            t = out(reg) _,
            pl = out(reg) r,
            ph = out(reg) _,
            options(pure, nomem, nostack),
        );
    }
    r as i32
}

/// The int16 fast path's whole gate-row loop in one block, parameters from a
/// [`crate::rowtab::Form::HighWord`] row table: for every row `j` of `out`, `out[j] =
/// (rq(W[j]·xs, e.mx', e.cx) + rq(R[j]·hs, e.mh', e.ch)).saturating_add(e.bias)` with `rq` =
/// [`crate::rowtab::requant_high_word`] and `e` = row `j` of `table`: [`dot16`]'s products
/// (the recurrent one eight words per pass), then one LDM for the row's four table words and
/// two branch-free requantisations. `w` and `r` hold rows of `wsw` and `rsw` words back to
/// back. `false` (and nothing written) when a slice is shorter than that needs.
#[allow(clippy::too_many_arguments)]
pub fn gate_rows16(
    w: &[u32],
    wsw: usize,
    r: &[u32],
    rsw: usize,
    xs: &[u32],
    hs: &[u32],
    table: &[i32],
    out: &mut [i32],
) -> bool {
    let rows = out.len();
    if rows == 0 || rows > (u32::MAX as usize) / 16 || xs.len() < wsw || hs.len() < rsw {
        return rows == 0;
    }
    if table.len() / ROW_WORDS < rows || w.len() / rows < wsw || r.len() / rows < rsw {
        return false;
    }
    // The loop's state, read and advanced in memory (the dot products need every register):
    // vectors and their word counts, the advancing matrix, table and output pointers, where
    // the table ends, and two words for the input product while the recurrent one runs.
    let mut ctx: [u32; 11] = [
        xs.as_ptr() as u32,
        wsw as u32,
        hs.as_ptr() as u32,
        rsw as u32,
        w.as_ptr() as u32,
        r.as_ptr() as u32,
        table.as_ptr() as u32,
        out.as_mut_ptr() as u32,
        table[rows * ROW_WORDS..].as_ptr() as u32,
        0,
        0,
    ];
    // SAFETY: `rows >= 1` passes; each reads `wsw` words of `w` and of `xs` and `rsw` words of
    // `r` and of `hs` (four- and eight-word passes, then a two-word and a one-word tail, the
    // latter post-indexed so that the matrix pointer ends at the next row; no word of a
    // product zero wide, whose loop and tails are all skipped), one four-word table row,
    // and writes one element of `out`: all in bounds by the checks above (row `j` reads words
    // `j·wsw..(j+1)·wsw` of `w`, which `w.len() >= rows·wsw` covers; likewise `r`,
    // and `table` holds `rows` rows). The loop ends when the table pointer reaches the end
    // of row `rows - 1`. All loads are word loads of `&[u32]`/`&[i32]` data, aligned as LDM
    // and LDRD need. `ctx` (11 words, a local) is the only other memory read or written.
    // Labels are local to this block. SMULL + MLA form the high word of `acc·m'` exactly
    // (the product fits int64 by the fast path's bound; see `requant`), the shift amounts
    // are table bytes (ASR reads the low byte of its register); `ax + ah` cannot overflow
    // (each at most 2^29 in magnitude) and QADD saturates the bias addition. Only the
    // declared registers are written; the stack is not used.
    unsafe {
        asm!(
            "20:",
            // input product
            "ldr {pm}, [{ctx}, #16]",
            "ldrd {px}, {n}, [{ctx}, #0]",
            "movs {lo}, #0",
            "movs {hi}, #0",
            "subs {n}, {n}, #4",
            "blt 3f",
            "2:",
            "ldm {pm}!, {{r2, r3, r4, r5}}",
            "ldm {px}!, {{r12, lr}}",
            "smlald {lo}, {hi}, r2, r12",
            "smlald {lo}, {hi}, r3, lr",
            "ldm {px}!, {{r12, lr}}",
            "smlald {lo}, {hi}, r4, r12",
            "smlald {lo}, {hi}, r5, lr",
            "subs {n}, {n}, #4",
            "bge 2b",
            "3:",
            "lsls {n}, {n}, #31", // C = bit 1 (two words left), N = bit 0 (one word left)
            "bcc 4f",
            "ldm {pm}!, {{r2, r3}}",
            "ldm {px}!, {{r12, lr}}",
            "smlald {lo}, {hi}, r2, r12",
            "smlald {lo}, {hi}, r3, lr",
            "4:",
            "bpl 5f",
            "ldr r2, [{pm}], #4",
            "ldr r12, [{px}]",
            "smlald {lo}, {hi}, r2, r12",
            "5:",
            "str {pm}, [{ctx}, #16]",
            "strd {lo}, {hi}, [{ctx}, #36]",
            // recurrent product, eight words per pass
            "ldr {pm}, [{ctx}, #20]",
            "ldrd {px}, {n}, [{ctx}, #8]",
            "movs {lo}, #0",
            "movs {hi}, #0",
            "subs {n}, {n}, #8",
            "blt 7f",
            "6:",
            "ldm {pm}!, {{r2, r3, r4, r5}}",
            "ldm {px}!, {{r12, lr}}",
            "smlald {lo}, {hi}, r2, r12",
            "smlald {lo}, {hi}, r3, lr",
            "ldm {px}!, {{r12, lr}}",
            "smlald {lo}, {hi}, r4, r12",
            "smlald {lo}, {hi}, r5, lr",
            "ldm {pm}!, {{r2, r3, r4, r5}}",
            "ldm {px}!, {{r12, lr}}",
            "smlald {lo}, {hi}, r2, r12",
            "smlald {lo}, {hi}, r3, lr",
            "ldm {px}!, {{r12, lr}}",
            "smlald {lo}, {hi}, r4, r12",
            "smlald {lo}, {hi}, r5, lr",
            "subs {n}, {n}, #8",
            "bge 6b",
            "7:",
            // n = words left - 8: its low three bits are the words left (0 ends the row)
            "adds {n}, {n}, #8",
            "beq 10f",
            "lsls {n}, {n}, #30", // C = bit 2 (four words), N = bit 1 (two words)
            "bcc 8f",
            "ldm {pm}!, {{r2, r3, r4, r5}}",
            "ldm {px}!, {{r12, lr}}",
            "smlald {lo}, {hi}, r2, r12",
            "smlald {lo}, {hi}, r3, lr",
            "ldm {px}!, {{r12, lr}}",
            "smlald {lo}, {hi}, r4, r12",
            "smlald {lo}, {hi}, r5, lr",
            "8:",
            "bpl 9f",
            "ldm {pm}!, {{r2, r3}}",
            "ldm {px}!, {{r12, lr}}",
            "smlald {lo}, {hi}, r2, r12",
            "smlald {lo}, {hi}, r3, lr",
            "9:",
            "lsls {n}, {n}, #2", // C = bit 0 of the words left (one word)
            "bcc 10f",
            "ldr r2, [{pm}], #4",
            "ldr r12, [{px}]",
            "smlald {lo}, {hi}, r2, r12",
            "10:",
            "str {pm}, [{ctx}, #20]",
            // the row's table words: mx', mh', bias, cx | ch << 8
            "ldr {pm}, [{ctx}, #24]",
            "ldm {pm}!, {{r2, r3, r4, r5}}",
            "str {pm}, [{ctx}, #24]",
            // ah = requant_high_word(lo:hi, mh', ch)
            "add r12, {hi}, {lo}, lsr #31",
            "smull {px}, {n}, {lo}, r3",
            "mla {n}, r12, r3, {n}",
            "lsr r12, r5, #8",
            "asr {n}, {n}, r12",
            "adds {n}, {n}, #1",
            "asrs {n}, {n}, #1",
            // ax = requant_high_word(input product, mx', cx)
            "ldrd {lo}, {hi}, [{ctx}, #36]",
            "add r12, {hi}, {lo}, lsr #31",
            "smull {px}, r3, {lo}, r2",
            "mla r3, r12, r2, r3",
            "asr r3, r3, r5",
            "adds r3, r3, #1",
            "asrs r3, r3, #1",
            // out[j] = (ax + ah) +sat bias
            "add r3, r3, {n}",
            "qadd r3, r3, r4",
            "ldr {px}, [{ctx}, #28]",
            "str r3, [{px}], #4",
            "str {px}, [{ctx}, #28]",
            "ldr {n}, [{ctx}, #32]",
            "cmp {pm}, {n}",
            "bne 20b",
            ctx = in(reg) ctx.as_mut_ptr(),
            pm = out(reg) _,
            px = out(reg) _,
            n = out(reg) _,
            lo = out(reg) _,
            hi = out(reg) _,
            out("r2") _, out("r3") _, out("r4") _, out("r5") _, out("r12") _, out("lr") _,
            options(nostack),
        );
    }
    true
}

/// [`gate_rows16`] for int8 rows that accumulate in int32 ([`crate::blob::Params::acc32`]),
/// parameters from a [`crate::rowtab::Form::TwoWord`] row table: [`dot8_32`]'s products (the
/// recurrent one 16 bytes per pass), then [`crate::rowtab::requant_two_word`] twice. Rows of
/// `ws` and `rs` bytes (even) back to back. `false` (and nothing written) when a slice is
/// shorter than that needs, or when the recurrent rows do not start on words (`r` not on a
/// word, or `rs` not a multiple of 4).
#[allow(clippy::too_many_arguments)]
pub fn gate_rows8(
    w: &[i8],
    ws: usize,
    r: &[i8],
    rs: usize,
    xs: &[u32],
    hs: &[u32],
    table: &[i32],
    out: &mut [i32],
) -> bool {
    let rows = out.len();
    if rows == 0 || rows > (u32::MAX as usize) / 16 || !ws.is_multiple_of(2) {
        return rows == 0;
    }
    if !rs.is_multiple_of(2) || xs.len() < ws / 2 || hs.len() < rs / 2 {
        return false;
    }
    if table.len() / ROW_WORDS < rows || w.len() / rows < ws || r.len() / rows < rs {
        return false;
    }
    // The recurrent rows are loaded with LDM, which needs whole words (none are loaded when
    // they are zero wide).
    if rs > 0 && (!rs.is_multiple_of(4) || !(r.as_ptr() as usize).is_multiple_of(4)) {
        return false;
    }
    // Per row: `ws / 4` groups of four weights (taken two groups per pass), then bit 0 of
    // `rest`: one more group, bit 1: a last pair (rows of 4k + 2 bytes). As in `dot8_32`, whose
    // `groups` and `tail` these equal since `xs` has `ws / 2` words (likewise `hs`).
    let rest = |s: usize| ((s / 4) & 1) as u32 | ((s % 4 == 2) as u32) << 1;
    // Recurrent rows (whole words): `rs / 16` passes of 16 bytes, then bit 1 of `rest_r`: 8
    // more bytes, bit 0: 4 more.
    let rest_r = ((rs / 4) & 1) as u32 | (((rs / 8) & 1) as u32) << 1;
    let mut ctx: [u32; 12] = [
        xs.as_ptr() as u32,
        (ws / 8) as u32,
        hs.as_ptr() as u32,
        (rs / 16) as u32,
        w.as_ptr() as u32,
        r.as_ptr() as u32,
        table.as_ptr() as u32,
        out.as_mut_ptr() as u32,
        table[rows * ROW_WORDS..].as_ptr() as u32,
        0,
        rest(ws),
        rest_r,
    ];
    // SAFETY: `rows >= 1` passes; each reads `ws` bytes of `w` (8 per pair of groups, 4 for an
    // odd group, 2 post-indexed for the last pair, so the pointer ends at the next row) and
    // `ws / 2` words of `xs`, then `rs` bytes of `r` (16 per pass, then 8 and 4 as `rest_r`
    // says) and `rs / 2` words of `hs`, one four-word table row, and writes one element of
    // `out`: all in bounds by the checks above; the loop ends when the table pointer reaches
    // the end of row `rows - 1`. Input-weight LDRs may be unaligned, which ARMv7-M allows for
    // LDR on normal memory unless CCR.UNALIGN_TRP is set, which nothing here sets; the
    // recurrent rows start on words (checked above: `r` on a word, `rs` a multiple of 4), as
    // LDM needs, or are zero wide (`rest_r` 0 and no pass: `r` is never read); LDM/LDR on
    // `&[u32]`/`&[i32]` data and the `ctx` local are aligned. `ctx` (12 words) is the only
    // other memory read or written.
    // SMLAD is exact (the parser's `acc32` bound), SMULL forms `acc·m` exactly, the shift
    // amounts are table bytes (LSR/LSL read the low byte of their register and give 0 for
    // 32), `ax + ah` cannot overflow (each at most 2^29) and QADD saturates the bias
    // addition. Flags after `lsls #31` are only read by the next two branches (no instruction
    // between sets them). Only the declared registers are written; the stack is not used.
    unsafe {
        asm!(
            "20:",
            // input product
            "ldr {pm}, [{ctx}, #16]",
            "ldrd {px}, {g}, [{ctx}, #0]",
            "movs {acc}, #0",
            "cmp {g}, #0",
            "beq 3f",
            "2:",
            "ldr r2, [{pm}], #4",
            "ldr r3, [{pm}], #4",
            "ldm {px}!, {{r4, r5, r12, lr}}",
            "sxtb16 {t}, r2",
            "sxtb16 r2, r2, ror #8",
            "smlad {acc}, {t}, r4, {acc}",
            "smlad {acc}, r2, r5, {acc}",
            "sxtb16 {t}, r3",
            "sxtb16 r3, r3, ror #8",
            "smlad {acc}, {t}, r12, {acc}",
            "smlad {acc}, r3, lr, {acc}",
            "subs {g}, {g}, #1",
            "bne 2b",
            "3:",
            "ldr {g}, [{ctx}, #40]",
            "lsls {g}, {g}, #31",
            "bpl 4f",
            "ldr r2, [{pm}], #4",
            "ldm {px}!, {{r4, r5}}",
            "sxtb16 {t}, r2",
            "sxtb16 r2, r2, ror #8",
            "smlad {acc}, {t}, r4, {acc}",
            "smlad {acc}, r2, r5, {acc}",
            "4:",
            "bcc 5f",
            "ldrsb r2, [{pm}], #1",
            "ldrsb r3, [{pm}], #1",
            "pkhbt r2, r2, r3, lsl #16",
            "ldr r4, [{px}]",
            "smlad {acc}, r2, r4, {acc}",
            "5:",
            "str {pm}, [{ctx}, #16]",
            "str {acc}, [{ctx}, #36]",
            // recurrent product, 16 bytes per pass
            "ldr {pm}, [{ctx}, #20]",
            "ldrd {px}, {g}, [{ctx}, #8]",
            "movs {acc}, #0",
            "cmp {g}, #0",
            "beq 7f",
            "6:",
            "ldm {pm}!, {{r2, r3}}",
            "ldm {px}!, {{r4, r5, r12, lr}}",
            "sxtb16 {t}, r2",
            "sxtb16 r2, r2, ror #8",
            "smlad {acc}, {t}, r4, {acc}",
            "smlad {acc}, r2, r5, {acc}",
            "sxtb16 {t}, r3",
            "sxtb16 r3, r3, ror #8",
            "smlad {acc}, {t}, r12, {acc}",
            "smlad {acc}, r3, lr, {acc}",
            "ldm {pm}!, {{r2, r3}}",
            "ldm {px}!, {{r4, r5, r12, lr}}",
            "sxtb16 {t}, r2",
            "sxtb16 r2, r2, ror #8",
            "smlad {acc}, {t}, r4, {acc}",
            "smlad {acc}, r2, r5, {acc}",
            "sxtb16 {t}, r3",
            "sxtb16 r3, r3, ror #8",
            "smlad {acc}, {t}, r12, {acc}",
            "smlad {acc}, r3, lr, {acc}",
            "subs {g}, {g}, #1",
            "bne 6b",
            "7:",
            "ldr {g}, [{ctx}, #44]",
            "lsls {g}, {g}, #31", // C = bit 1 (8 bytes left), N = bit 0 (4 more)
            "bcc 8f",
            "ldm {pm}!, {{r2, r3}}",
            "ldm {px}!, {{r4, r5, r12, lr}}",
            "sxtb16 {t}, r2",
            "sxtb16 r2, r2, ror #8",
            "smlad {acc}, {t}, r4, {acc}",
            "smlad {acc}, r2, r5, {acc}",
            "sxtb16 {t}, r3",
            "sxtb16 r3, r3, ror #8",
            "smlad {acc}, {t}, r12, {acc}",
            "smlad {acc}, r3, lr, {acc}",
            "8:",
            "bpl 9f",
            "ldr r2, [{pm}], #4",
            "ldm {px}!, {{r4, r5}}",
            "sxtb16 {t}, r2",
            "sxtb16 r2, r2, ror #8",
            "smlad {acc}, {t}, r4, {acc}",
            "smlad {acc}, r2, r5, {acc}",
            "9:",
            "str {pm}, [{ctx}, #20]",
            // the row's table words: mx, mh, bias, (sx-1) | (33-sx) << 8 | (sh-1) << 16 | (33-sh) << 24
            "ldr {pm}, [{ctx}, #24]",
            "ldm {pm}!, {{r2, r3, r4, r5}}",
            "str {pm}, [{ctx}, #24]",
            // ah = requant_two_word(acc, mh, sh - 1, 33 - sh)
            "smull {px}, {g}, {acc}, r3",
            "lsr r12, r5, #16",
            "lsr {px}, {px}, r12",
            "lsr r12, r5, #24",
            "lsl {g}, {g}, r12",
            "orr {px}, {px}, {g}",
            "adds {px}, {px}, #1",
            "asrs {px}, {px}, #1",
            // ax = requant_two_word(input product, mx, sx - 1, 33 - sx)
            "ldr {acc}, [{ctx}, #36]",
            "smull {g}, r3, {acc}, r2",
            "lsr {g}, {g}, r5",
            "lsr r12, r5, #8",
            "lsl r3, r3, r12",
            "orr {g}, {g}, r3",
            "adds {g}, {g}, #1",
            "asrs {g}, {g}, #1",
            // out[j] = (ax + ah) +sat bias
            "add {g}, {g}, {px}",
            "qadd {g}, {g}, r4",
            "ldr {px}, [{ctx}, #28]",
            "str {g}, [{px}], #4",
            "str {px}, [{ctx}, #28]",
            "ldr {t}, [{ctx}, #32]",
            "cmp {pm}, {t}",
            "bne 20b",
            ctx = in(reg) ctx.as_mut_ptr(),
            pm = out(reg) _,
            px = out(reg) _,
            g = out(reg) _,
            acc = out(reg) _,
            t = out(reg) _,
            out("r2") _, out("r3") _, out("r4") _, out("r5") _, out("r12") _, out("lr") _,
            options(nostack),
        );
    }
    true
}

/// One product of both rows of a pair ([`gate_pairs16`], [`gate_pairs8`]) as `asm!` template
/// text: the matrix pointer from context word `$pm`, the vector pointer and its pass mark
/// from words `$px` and `$px + 4` (`$lp` says how the passes are counted: `count8!` or
/// `end16!`), the accumulators zeroed (`$zero`), the passes of `$pass`, then the remainder
/// word at `$rest` (bit 2: `$half`, bit 1: `$one`, bit 0: `$last`), with local labels `$l`.
/// The flags set by each `lsls` are read only by the branches after it (the bodies are
/// loads, SXTB16 and dual MACs, which leave them).
macro_rules! pair_product {
    ($lp:ident, $zero:ident, $pass:ident, $half:ident, $one:ident, $last:ident, $pm:literal,
     $px:literal, $pe:literal, $rest:literal,
     [$l0:literal, $l1:literal, $l2:literal, $l3:literal, $l4:literal]) => {
        concat!(
            "ldr {pm}, [{ctx}, #",
            $pm,
            "]\n",
            $lp!(open $px),
            $zero!(),
            $lp!(test),
            "beq ",
            $l1,
            "f\n",
            $l0,
            ":\n",
            $pass!(),
            $lp!(again $pe),
            "bne ",
            $l0,
            "b\n",
            $l1,
            ":\n",
            $lp!(rest $rest),
            "lsls ",
            $lp!(reg),
            ", ",
            $lp!(reg),
            ", #29\n", // Z: nothing left; N = bit 2
            "beq ",
            $l4,
            "f\n",
            "bpl ",
            $l2,
            "f\n",
            $half!(),
            $lp!(keep $rest),
            $l2,
            ":\n",
            "lsls ",
            $lp!(reg),
            ", ",
            $lp!(reg),
            ", #2\n", // C = bit 1, N = bit 0
            "bcc ",
            $l3,
            "f\n",
            $one!(),
            $l3,
            ":\n",
            "bpl ",
            $l4,
            "f\n",
            $last!(),
            $l4,
            ":\n",
        )
    };
}

/// [`gate_pairs8`]'s passes, counted down in `{g}` (context word `$px + 4` holds their
/// number); `{g}` also keeps the remainder bits, which no body touches.
macro_rules! count8 {
    (open $px:literal) => {
        concat!("ldrd {px}, {g}, [{ctx}, #", $px, "]\n")
    };
    (test) => {
        "cmp {g}, #0\n"
    };
    (again $pe:literal) => {
        "subs {g}, {g}, #1\n"
    };
    (rest $rest:literal) => {
        concat!("ldr {g}, [{ctx}, #", $rest, "]\n")
    };
    (keep $rest:literal) => {
        ""
    };
    (reg) => {
        "{g}"
    };
}

/// [`gate_pairs16`]'s passes, run until the vector pointer reaches where they end (context
/// word `$pe`): its passes load two vector words per LDM into r12 and lr, so no register is
/// left for a count, and r2 (free between passes) holds the mark and then the remainder
/// bits, reloaded after the four-word step that overwrites it.
macro_rules! end16 {
    (open $px:literal) => {
        concat!("ldrd {px}, r2, [{ctx}, #", $px, "]\n")
    };
    (test) => {
        "cmp {px}, r2\n"
    };
    (again $pe:literal) => {
        concat!("ldr r2, [{ctx}, #", $pe, "]\ncmp {px}, r2\n")
    };
    (rest $rest:literal) => {
        concat!("ldr r2, [{ctx}, #", $rest, "]\n")
    };
    (keep $rest:literal) => {
        concat!("ldr r2, [{ctx}, #", $rest, "]\nlsls r2, r2, #29\n")
    };
    (reg) => {
        "r2"
    };
}

/// [`gate_pairs16`]: its four 64-bit accumulators zeroed.
macro_rules! zero16 {
    () => {
        "movs {a0l}, #0\nmovs {a0h}, #0\nmovs {a1l}, #0\nmovs {a1h}, #0\n"
    };
}

/// [`gate_pairs16`]: two words of each row of the pair (8 MACs in 6 instructions).
macro_rules! two16 {
    () => {
        concat!(
            "ldm {pm}!, {{r2, r3, r4, r5}}\n",
            "ldm {px}!, {{r12, lr}}\n",
            "smlald {a0l}, {a0h}, r2, r12\n",
            "smlald {a1l}, {a1h}, r3, r12\n",
            "smlald {a0l}, {a0h}, r4, lr\n",
            "smlald {a1l}, {a1h}, r5, lr\n",
        )
    };
}

/// [`gate_pairs16`]: four words of each row.
macro_rules! four16 {
    () => {
        concat!(two16!(), two16!())
    };
}

/// [`gate_pairs16`]: a pass, eight words of each row.
macro_rules! pass16 {
    () => {
        concat!(four16!(), four16!())
    };
}

/// [`gate_pairs16`]: the last word of each row (the vector pointer is not advanced).
macro_rules! one16 {
    () => {
        concat!(
            "ldm {pm}!, {{r2, r3}}\n",
            "ldr r12, [{px}]\n",
            "smlald {a0l}, {a0h}, r2, r12\n",
            "smlald {a1l}, {a1h}, r3, r12\n",
        )
    };
}

/// [`gate_pairs8`]: its two accumulators zeroed.
macro_rules! zero8 {
    () => {
        "movs {a0}, #0\nmovs {a1}, #0\n"
    };
}

/// [`gate_pairs8`]: one group of four weights of each row (8 MACs).
macro_rules! group8 {
    () => {
        concat!(
            "ldm {pm}!, {{r2, r3}}\n",
            "ldm {px}!, {{r4, r5}}\n",
            "sxtb16 {t}, r2\n",
            "smlad {a0}, {t}, r4, {a0}\n",
            "sxtb16 r2, r2, ror #8\n",
            "smlad {a0}, r2, r5, {a0}\n",
            "sxtb16 {t}, r3\n",
            "smlad {a1}, {t}, r4, {a1}\n",
            "sxtb16 r3, r3, ror #8\n",
            "smlad {a1}, r3, r5, {a1}\n",
        )
    };
}

/// [`gate_pairs8`]: two groups of each row, both rows' words in one LDM (16 MACs in 19
/// instructions).
macro_rules! two_groups8 {
    () => {
        concat!(
            "ldm {pm}!, {{r2, r3, r12, lr}}\n",
            "ldm {px}!, {{r4, r5}}\n",
            "sxtb16 {t}, r2\n",
            "smlad {a0}, {t}, r4, {a0}\n",
            "sxtb16 r2, r2, ror #8\n",
            "smlad {a0}, r2, r5, {a0}\n",
            "sxtb16 {t}, r3\n",
            "smlad {a1}, {t}, r4, {a1}\n",
            "sxtb16 r3, r3, ror #8\n",
            "smlad {a1}, r3, r5, {a1}\n",
            "ldm {px}!, {{r4, r5}}\n",
            "sxtb16 {t}, r12\n",
            "smlad {a0}, {t}, r4, {a0}\n",
            "sxtb16 r12, r12, ror #8\n",
            "smlad {a0}, r12, r5, {a0}\n",
            "sxtb16 {t}, lr\n",
            "smlad {a1}, {t}, r4, {a1}\n",
            "sxtb16 lr, lr, ror #8\n",
            "smlad {a1}, lr, r5, {a1}\n",
        )
    };
}

/// [`gate_pairs8`]: a pass, four groups of each row.
macro_rules! pass8 {
    () => {
        concat!(two_groups8!(), two_groups8!())
    };
}

/// [`gate_pairs8`]: the last pair of weights of each row, from one word `[a, b, a', b']` and
/// the vector's last word (not advanced).
macro_rules! tail8 {
    () => {
        concat!(
            "ldr r2, [{pm}], #4\n",
            "ldr r4, [{px}]\n",
            "sxtb16 {t}, r2\n",
            "smlad {a0}, {t}, r4, {a0}\n",
            "sxtb16 r2, r2, ror #8\n",
            "smlad {a1}, r2, r4, {a1}\n",
        )
    };
}

/// How a pair kernel's context marks where a product's passes stop (the word after each
/// vector pointer).
#[derive(Clone, Copy)]
enum PassMark {
    /// Their number ([`gate_pairs8`], which counts them down).
    Count,
    /// The vector word they end at ([`gate_pairs16`], which has no register for a count).
    End,
}

/// The context both pair kernels keep in memory: vector pointers and their pass marks (eight
/// vector words per pass), the advancing matrix, table and output pointers, where the table
/// ends, each product's remainder bits, then four words for the input products while the
/// recurrent ones run.
fn pair_context(
    p: &PairRows,
    mark: PassMark,
    rest: fn(usize) -> u32,
    xs: &[u32],
    hs: &[u32],
    table: &[i32],
    out: &mut [i32],
) -> [u32; 15] {
    let pass_mark = |v: &[u32], s: usize| match mark {
        PassMark::Count => (s / 16) as u32,
        // `8 * (s / 16) <= s / 2 <= v.len()` words (`PairRows::fit`): in bounds or one past.
        PassMark::End => v[8 * (s / 16)..].as_ptr() as u32,
    };
    [
        xs.as_ptr() as u32,
        pass_mark(xs, p.ws),
        hs.as_ptr() as u32,
        pass_mark(hs, p.rs),
        p.w.as_ptr() as u32,
        p.r.as_ptr() as u32,
        table.as_ptr() as u32,
        out.as_mut_ptr() as u32,
        table[out.len() * ROW_WORDS..].as_ptr() as u32,
        rest(p.ws),
        rest(p.rs),
        0,
        0,
        0,
        0,
    ]
}

/// [`gate_rows16`] on rows repacked two by two ([`crate::rowtab::pack_pairs`]; `wp` and `rp`
/// hold `out.len() / 2` pairs of rows of `ws` and `rs` int16 weights, both even): each pass
/// over a pair's words computes both rows' products on one load of each vector word, so the
/// vectors' loads, the loop and pointer upkeep and the output store are paid once per two
/// rows. Same results as [`gate_rows16`] on the rows before repacking. `false` (and nothing
/// written) when `out.len()` is odd or a slice is shorter than that needs.
pub fn gate_pairs16(p: &PairRows, xs: &[u32], hs: &[u32], table: &[i32], out: &mut [i32]) -> bool {
    if p.form != Form::HighWord || !p.fit(xs, hs, table, out.len()) {
        return out.is_empty();
    }
    // Per product (`n = s / 2` words per row): `n / 8` passes, then the remainder's bits: bit 2
    // four more words, bit 1 two more, bit 0 one.
    let rest = |s: usize| ((s / 2) % 8) as u32;
    let mut ctx = pair_context(p, PassMark::End, rest, xs, hs, table, out);
    // SAFETY: `rows / 2 >= 1` passes of the outer loop (`PairRows::fit`); each reads `ws`
    // words of `p.w` (two per word of a row: sixteen per pass, eight, four and two for bits
    // 2, 1 and 0 of `rest`, post-indexed so that the pointer ends at the next pair) and
    // `ws / 2` words of `xs` (eight per pass, the passes running until the pointer equals the
    // context's end mark, `8 * (ws / 16)` words in; the last word without advancing), then
    // likewise `rs` words of `rp` and `rs / 2` of `hs`, two
    // four-word table rows, and writes two elements of `out` (one STRD): all in bounds by
    // `pairs_fit`, since the loop ends when the table pointer reaches the end of row
    // `rows - 1`. All loads are of `&[u32]`/`&[i32]` data or the `ctx` local, word-aligned as
    // LDM, LDRD and STRD need; `ctx` (15 words) is the only other memory read or written.
    // SMLALD accumulates exactly in 64 bits; SMULL + MLA form the high word of `acc·m'`
    // exactly (the product fits int64 by the fast path's bound; see `gate_rows16`), the shift
    // amounts are table bytes (ASR reads the low byte of its register), `ax + ah` cannot
    // overflow (each at most 2^29 in magnitude) and QADD saturates the bias addition. Flags
    // set by each `lsls` are read only by the branches after it (LDM, LDR and SMLALD leave
    // them). Only the declared registers are written; the stack is not used.
    unsafe {
        asm!(
            "20:",
            pair_product!(end16, zero16, pass16, four16, two16, one16, 16, 0, 4, 36, [2, 3, 4, 5, 6]),
            "str {pm}, [{ctx}, #16]",
            "strd {a0l}, {a0h}, [{ctx}, #44]",
            "strd {a1l}, {a1h}, [{ctx}, #52]",
            pair_product!(end16, zero16, pass16, four16, two16, one16, 20, 8, 12, 40, [7, 8, 9, 10, 11]),
            "str {pm}, [{ctx}, #20]",
            // row a: table words mx', mh', bias, cx | ch << 8
            "ldr {pm}, [{ctx}, #24]",
            "ldm {pm}!, {{r2, r3, r4, r5}}",
            // ah = requant_high_word(recurrent product, mh', ch)
            "add r12, {a0h}, {a0l}, lsr #31",
            "smull {px}, lr, {a0l}, r3",
            "mla lr, r12, r3, lr",
            "lsr r12, r5, #8",
            "asr lr, lr, r12",
            "adds lr, lr, #1",
            "asrs lr, lr, #1",
            // ax = requant_high_word(input product, mx', cx)
            "ldrd {a0l}, {a0h}, [{ctx}, #44]",
            "add r12, {a0h}, {a0l}, lsr #31",
            "smull {px}, r3, {a0l}, r2",
            "mla r3, r12, r2, r3",
            "asr r3, r3, r5",
            "adds r3, r3, #1",
            "asrs r3, r3, #1",
            "add r3, r3, lr",
            "qadd {a0l}, r3, r4",
            // row b
            "ldm {pm}!, {{r2, r3, r4, r5}}",
            // ah = requant_high_word(recurrent product, mh', ch)
            "add r12, {a1h}, {a1l}, lsr #31",
            "smull {px}, lr, {a1l}, r3",
            "mla lr, r12, r3, lr",
            "lsr r12, r5, #8",
            "asr lr, lr, r12",
            "adds lr, lr, #1",
            "asrs lr, lr, #1",
            // ax = requant_high_word(input product, mx', cx)
            "ldrd {a1l}, {a1h}, [{ctx}, #52]",
            "add r12, {a1h}, {a1l}, lsr #31",
            "smull {px}, r3, {a1l}, r2",
            "mla r3, r12, r2, r3",
            "asr r3, r3, r5",
            "adds r3, r3, #1",
            "asrs r3, r3, #1",
            "add r3, r3, lr",
            "qadd r3, r3, r4",
            // out[2p], out[2p + 1]
            "ldr {px}, [{ctx}, #28]",
            "strd {a0l}, r3, [{px}], #8",
            "str {px}, [{ctx}, #28]",
            "str {pm}, [{ctx}, #24]",
            "ldr lr, [{ctx}, #32]",
            "cmp {pm}, lr",
            "bne 20b",
            ctx = in(reg) ctx.as_mut_ptr(),
            pm = out(reg) _,
            px = out(reg) _,
            a0l = out(reg) _,
            a0h = out(reg) _,
            a1l = out(reg) _,
            a1h = out(reg) _,
            out("r2") _, out("r3") _, out("r4") _, out("r5") _, out("r12") _, out("lr") _,
            options(nostack),
        );
    }
    true
}

/// [`gate_rows8`] on rows repacked two by two ([`crate::rowtab::pack_pairs`]; `wp` and `rp`
/// hold `out.len() / 2` pairs of rows of `ws` and `rs` bytes, both even): each pass over a
/// pair's words computes both rows' products on one load of the vector words, so the
/// vectors' loads, the loop and pointer upkeep and the output store are paid once per two
/// rows. Same results as [`gate_rows8`] on the rows before repacking. `false` (and nothing
/// written) when `out.len()` is odd or a slice is shorter than that needs.
pub fn gate_pairs8(p: &PairRows, xs: &[u32], hs: &[u32], table: &[i32], out: &mut [i32]) -> bool {
    if p.form != Form::TwoWord || !p.fit(xs, hs, table, out.len()) {
        return out.is_empty();
    }
    // Per product: `s / 16` passes of four groups of four bytes, then the remainder's bits:
    // bit 2 two more groups, bit 1 one more, bit 0 the last pair of bytes (rows of 4k + 2).
    let rest = |s: usize| ((((s / 4) % 4) << 1) | ((s % 4) / 2)) as u32;
    let mut ctx = pair_context(p, PassMark::Count, rest, xs, hs, table, out);
    // SAFETY: `rows / 2 >= 1` passes of the outer loop (`PairRows::fit`); each reads
    // `pair_words(TwoWord, ws)` words of `p.w` (eight per pass, four for bit 2 of `rest`, two
    // for bit 1, one for bit 0, post-indexed so that the pointer ends at the next pair) and
    // `ws / 2` words of `xs` (the same counts; the last-pair word is read without
    // advancing), then likewise `pair_words(TwoWord, rs)` words of
    // `rp` and `rs / 2` of `hs`, two four-word table rows, and writes two elements of `out`
    // (one STRD): all in bounds by `pairs_fit`, since the loop ends when the table
    // pointer reaches the end of row `rows - 1`. All loads are of `&[u32]`/`&[i32]` data or
    // the `ctx` local, word-aligned as LDM, LDRD and STRD need; `ctx` (15 words) is the only
    // other memory read or written. SMLAD is exact (the parser's `acc32` bound on every
    // partial sum, whatever its order), SMULL forms `acc·m` exactly, the shift amounts are
    // table bytes (LSR/LSL read the low byte of their register and give 0 for 32), `ax + ah`
    // cannot overflow (each at most 2^29) and QADD saturates the bias addition. Flags set by
    // each `lsls` are read only by the branches after it (LDM, SXTB16 and SMLAD leave them).
    // Only the declared registers are written; the stack is not used.
    unsafe {
        asm!(
            "20:",
            pair_product!(count8, zero8, pass8, two_groups8, group8, tail8, 16, 0, 4, 36, [2, 3, 4, 5, 6]),
            "str {pm}, [{ctx}, #16]",
            "strd {a0}, {a1}, [{ctx}, #44]",
            pair_product!(count8, zero8, pass8, two_groups8, group8, tail8, 20, 8, 12, 40, [7, 8, 9, 10, 11]),
            "str {pm}, [{ctx}, #20]",
            // row a: table words mx, mh, bias, (sx-1) | (33-sx) << 8 | (sh-1) << 16 | (33-sh) << 24
            "ldr {pm}, [{ctx}, #24]",
            "ldm {pm}!, {{r2, r3, r4, r5}}",
            // ah = requant_two_word(a0, mh, sh - 1, 33 - sh)
            "smull {px}, {g}, {a0}, r3",
            "lsr r12, r5, #16",
            "lsr {px}, {px}, r12",
            "lsr r12, r5, #24",
            "lsl {g}, {g}, r12",
            "orr {px}, {px}, {g}",
            "adds {px}, {px}, #1",
            "asrs {px}, {px}, #1",
            // ax = requant_two_word(input product a, mx, sx - 1, 33 - sx); lr keeps b's
            "ldrd {a0}, lr, [{ctx}, #44]",
            "smull {g}, r3, {a0}, r2",
            "lsr {g}, {g}, r5",
            "lsr r12, r5, #8",
            "lsl r3, r3, r12",
            "orr {g}, {g}, r3",
            "adds {g}, {g}, #1",
            "asrs {g}, {g}, #1",
            "add {a0}, {g}, {px}",
            "qadd {a0}, {a0}, r4",
            // row b
            "ldm {pm}!, {{r2, r3, r4, r5}}",
            "smull {px}, {g}, {a1}, r3",
            "lsr r12, r5, #16",
            "lsr {px}, {px}, r12",
            "lsr r12, r5, #24",
            "lsl {g}, {g}, r12",
            "orr {px}, {px}, {g}",
            "adds {px}, {px}, #1",
            "asrs {px}, {px}, #1",
            "smull {g}, r3, lr, r2",
            "lsr {g}, {g}, r5",
            "lsr r12, r5, #8",
            "lsl r3, r3, r12",
            "orr {g}, {g}, r3",
            "adds {g}, {g}, #1",
            "asrs {g}, {g}, #1",
            "add {g}, {g}, {px}",
            "qadd {g}, {g}, r4",
            // out[2p], out[2p + 1]
            "ldr {px}, [{ctx}, #28]",
            "strd {a0}, {g}, [{px}], #8",
            "str {px}, [{ctx}, #28]",
            "str {pm}, [{ctx}, #24]",
            "ldr {t}, [{ctx}, #32]",
            "cmp {pm}, {t}",
            "bne 20b",
            ctx = in(reg) ctx.as_mut_ptr(),
            pm = out(reg) _,
            px = out(reg) _,
            g = out(reg) _,
            a0 = out(reg) _,
            a1 = out(reg) _,
            t = out(reg) _,
            out("r2") _, out("r3") _, out("r4") _, out("r5") _, out("r12") _, out("lr") _,
            options(nostack),
        );
    }
    true
}

/// Copies `min(x.len() / 2, out.len())` pairs of `x` into words of `out` (`x[2k]` in the low
/// half: the little-endian bytes as they are) and returns that count: [`crate::rows::pack16`]
/// without the library `memcpy` LLVM calls for it.
#[inline(always)]
pub fn copy_pairs(x: &[i16], out: &mut [u32]) -> usize {
    let n = (x.len() / 2).min(out.len());
    // SAFETY: reads `4 * n` bytes from `x` (its first `2 * n` elements, `n <= x.len() / 2`)
    // and writes `n` words of `out` (`n <= out.len()`): `n / 2` passes of two words, then
    // one more word when `n` is odd. The loads may be unaligned (`x` is 2-byte aligned),
    // which ARMv7-M allows for LDR on normal memory unless CCR.UNALIGN_TRP is set, which
    // nothing here sets; the STM writes `&mut [u32]` memory, word-aligned. The two slices
    // cannot overlap (`out` is borrowed mutably). Only the declared registers are written;
    // the stack is not used.
    unsafe {
        asm!(
            "lsrs {c}, {n}, #1",
            "beq 3f",
            "2:",
            "ldr r2, [{px}], #4",
            "ldr r3, [{px}], #4",
            "stm {po}!, {{r2, r3}}",
            "subs {c}, {c}, #1",
            "bne 2b",
            "3:",
            "tst {n}, #1",
            "beq 4f",
            "ldr r2, [{px}]",
            "str r2, [{po}]",
            "4:",
            n = in(reg) n,
            c = out(reg) _,
            px = inout(reg) x.as_ptr() => _,
            po = inout(reg) out.as_mut_ptr() => _,
            out("r2") _, out("r3") _,
            options(nostack),
        );
    }
    n
}

/// The interpolation shared by `tanh_q20!` and `sigmoid_q20!` as `asm!` template text:
/// `$dst = a + round((b - a)·frac / 2^15)` for a value `$v` already saturated to
/// [-2^23, 2^23 - 1], `a`, `b` the table entries at `$v >> 15` and the next (one LDR from
/// `{t}`, the table's middle; `{k}` holds 2^14), `frac = $v & 0x7fff`. `$a`, `$b`, `$c` are
/// scratch registers; `$v` may be `$dst`.
macro_rules! interp_q15 {
    ($v:literal, $a:literal, $b:literal, $c:literal, $dst:literal) => {
        concat!(
            "asr ",
            $a,
            ", ",
            $v,
            ", #15\n",
            "ubfx ",
            $b,
            ", ",
            $v,
            ", #0, #15\n",
            "ldr ",
            $a,
            ", [{t}, ",
            $a,
            ", lsl #1]\n",
            "sxth ",
            $c,
            ", ",
            $a,
            "\n",
            "rsb ",
            $a,
            ", ",
            $c,
            ", ",
            $a,
            ", asr #16\n",
            "mla ",
            $a,
            ", ",
            $a,
            ", ",
            $b,
            ", {k}\n",
            "add ",
            $dst,
            ", ",
            $c,
            ", ",
            $a,
            ", asr #15\n",
        )
    };
}

/// `crate::lut::tanh_q20_i32` of register `$v`, in place, as `asm!` template text (scratch
/// `$a`, `$b`, `$c`; see [`interp_q15`]).
macro_rules! tanh_q20 {
    ($v:literal, $a:literal, $b:literal, $c:literal) => {
        concat!(
            "ssat ",
            $v,
            ", #24, ",
            $v,
            "\n",
            interp_q15!($v, $a, $b, $c, $v),
        )
    };
}

/// `crate::lut::sigmoid_q20_i32` of register `$v` into `$dst`, as `asm!` template text
/// (`$v` and scratch `$a`, `$b`, `$c` overwritten; see [`interp_q15`]).
macro_rules! sigmoid_q20 {
    ($v:literal, $a:literal, $b:literal, $c:literal, $dst:literal) => {
        concat!(
            "ssat ",
            $v,
            ", #24, ",
            $v,
            ", asr #1\n",
            interp_q15!($v, $a, $b, $c, $v),
            "add ",
            $v,
            ", ",
            $v,
            ", #32768\n",
            "asr ",
            $dst,
            ", ",
            $v,
            ", #1\n",
        )
    };
}

/// The fast path's LSTM cell update for layers without clip or input_forget and with
/// `frac_c >= 4`, one unit per pass: for each `k < n`, with gates `i, o, f, g` at `gates[k]`,
/// `gates[n + k]`, `gates[2n + k]`, `gates[3n + k]` (Q20), `c[k]` and `h[k]` become what
/// `lstm::cell_update::<true>` (the plain case) writes: i, f, o = σ, g = tanh ([`crate::lut`]),
/// `c = sat16(r(f·c, 15) + r(i·g, 30 - frac_c))`, `h = sat16(r(o·tanh(c << (20 - frac_c)),
/// 15))` with `r` the round-half-up shift. Each activation loads its two table entries with one
/// LDR. `false` (nothing written) when a slice is shorter than `n` units need or `frac_c` is
/// outside 4..=15.
pub fn lstm_cells(gates: &[i32], n: usize, h: &mut [i16], c: &mut [i16], frac_c: u8) -> bool {
    if !units_fit(n) || !(4..=15).contains(&frac_c) {
        return n == 0;
    }
    if gates.len() / 4 < n || h.len() < n || c.len() < n {
        return false;
    }
    let table = &crate::lut::TANH_Q15;
    let fc = frac_c as u32;
    // Rounding constant and shift of i·g, the shift taking c to Q20, where h ends.
    let ctx: [u32; 4] = [1 << (29 - fc), 30 - fc, 20 - fc, h[n..].as_ptr() as u32];
    // SAFETY: `n >= 1` passes; pass `k` reads `gates[k]`, `gates[n + k]`, `gates[2n + k]`,
    // `gates[3n + k]` (in bounds: `gates.len() >= 4n`), `c[k]`, and writes `c[k]` and `h[k]`
    // (`h`, `c` at least `n` long); the pass ends when the `h` pointer reaches `h[n]`. Table
    // reads: `idx = v >> 15` for a value `v` saturated to [-2^23, 2^23 - 1] is in -256..=255,
    // so the word loaded at byte `2·(idx + 256)` of the 513-entry (1,026-byte) table ends at
    // byte 1,026 at most; that LDR may be unaligned, which ARMv7-M allows on normal memory
    // unless CCR.UNALIGN_TRP is set, which nothing here sets. `ctx` (4 words, a local) is
    // read only. The arithmetic is `tanh_q20_i32`'s and `sigmoid_q20_i32`'s (the halves of
    // the word are `TANH_Q15[idx]` and `TANH_Q15[idx + 1]`; `pos >> 15 = idx + 256` and `pos &
    // 0x7fff = v & 0x7fff` since 2^23 is a multiple of 2^15) and the cell's, whose bounds
    // `lstm::cell_update` states (no product or sum here overflows int32). Labels are local;
    // only the declared registers are written; the stack is not used.
    unsafe {
        asm!(
            "2:",
            // g = tanh(g_pre)
            "add r12, {gp}, {n4}, lsl #1",
            "ldr r2, [r12, {n4}]",
            tanh_q20!("r2", "r3", "r4", "r5"),
            // i = sigmoid(i_pre)
            "ldr r3, [{gp}]",
            sigmoid_q20!("r3", "r4", "r5", "r12", "r3"),
            // ig = r(i·g, 30 - frac_c)
            "ldrd r4, r5, [{ctx}]",
            "mla r2, r3, r2, r4",
            "asr r2, r2, r5",
            // f = sigmoid(f_pre)
            "add r12, {gp}, {n4}, lsl #1",
            "ldr r3, [r12]",
            sigmoid_q20!("r3", "r4", "r5", "r12", "r3"),
            // c = sat16(r(f·c, 15) + ig)
            "ldrsh r4, [{cp}]",
            "mla r3, r3, r4, {k}",
            "add r2, r2, r3, asr #15",
            "ssat r2, #16, r2",
            "strh r2, [{cp}], #2",
            // tc = tanh(c << (20 - frac_c))
            "ldr r3, [{ctx}, #8]",
            "lsl r2, r2, r3",
            tanh_q20!("r2", "r3", "r4", "r5"),
            // o = sigmoid(o_pre)
            "ldr r3, [{gp}, {n4}]",
            sigmoid_q20!("r3", "r4", "r5", "r12", "r3"),
            // h = sat16(r(o·tc, 15))
            "mla r2, r3, r2, {k}",
            "ssat r2, #16, r2, asr #15",
            "strh r2, [{hp}], #2",
            "add {gp}, {gp}, #4",
            "ldr r3, [{ctx}, #12]",
            "cmp {hp}, r3",
            "bne 2b",
            gp = inout(reg) gates.as_ptr() => _,
            n4 = in(reg) 4 * n as u32,
            hp = inout(reg) h.as_mut_ptr() => _,
            cp = inout(reg) c.as_mut_ptr() => _,
            t = in(reg) table.as_ptr().wrapping_add(256),
            k = in(reg) 1u32 << 14,
            ctx = in(reg) ctx.as_ptr(),
            out("r2") _, out("r3") _, out("r4") _, out("r5") _, out("r12") _,
            options(nostack),
        );
    }
    true
}

/// `h[k] = sat16(n + round(z·(h[k] - n) / 2^15))` (`gru::update`) as `asm!` template text:
/// `n` in r3, `z` (Q15, 0..=32767) in register `$z`, `{hp}` at `h[k]` and advanced past it,
/// `{k}` holding 2^14; r4 is scratch. `z·(h - n) + 2^14 < 2^31`, so MLA cannot overflow.
macro_rules! gru_blend {
    ($z:literal) => {
        concat!(
            "ldrsh r4, [{hp}]\n",
            "sub r4, r4, r3\n",
            "mla r4, ",
            $z,
            ", r4, {k}\n",
            "add r3, r3, r4, asr #15\n",
            "ssat r3, #16, r3\n",
            "strh r3, [{hp}], #2\n",
        )
    };
}

/// Whether `n` units suit the element-wise passes below: at least one, and their byte
/// offsets (up to 16 per unit) fit a 32-bit register.
#[inline(always)]
fn units_fit(n: usize) -> bool {
    n >= 1 && n <= (u32::MAX as usize) / 16
}

/// A GRU layer's element-wise part with linear_before_reset and no clip, per unit `k` of `n`:
/// `z = sigmoid(acc[k])`, `r = sigmoid(acc[n + k])`, `g = acc[2n + k] +sat round(r·acc[3n + k]
/// / 2^15)`, then `h[k] = sat16(tanh(g) + round(z·(h[k] - tanh(g)) / 2^15))`: the same `h` as
/// `gru::step`'s portable loops, in one pass (`acc` is read only). `false` (nothing written)
/// when `n` is 0 or a slice is shorter than that needs.
pub fn gru_cells(acc: &[i32], n: usize, h: &mut [i16]) -> bool {
    if !units_fit(n) || acc.len() / 4 < n || h.len() < n {
        return false;
    }
    let table = &crate::lut::TANH_Q15;
    // SAFETY: `n >= 1` passes; pass `k` reads `acc[k]`, `acc[n + k]`, `acc[2n + k]`,
    // `acc[3n + k]` (in bounds: `acc.len() >= 4n`) and `h[k]`, and writes `h[k]` (`h` at least
    // `n` long); the pass ends when the `h` pointer reaches `h[n]`. Table reads as in
    // [`lstm_cells`]: an index `v >> 15` of a value saturated to [-2^23, 2^23 - 1] is in
    // -256..=255, so the (possibly unaligned, which ARMv7-M allows on normal memory) word at
    // byte `2·(idx + 256)` of the 513-entry table ends at byte 1,026 at most. The arithmetic
    // is `sigmoid_q20_i32`'s and `tanh_q20_i32`'s (see [`lstm_cells`]), `gru::reset_combine`'s
    // (SMULL forms `r·gh` exactly; with the rounding constant added in 64 bits, bits 15..46
    // are the quotient, which lies strictly inside int32; QADD saturates the sum) and
    // `gru::update`'s (`z·(h - n) + 2^14 < 2^31`). Labels are local; only the declared
    // registers are written; the stack is not used.
    unsafe {
        asm!(
            "2:",
            // z = sigmoid(acc[k]), kept in lr
            "ldr r3, [{gp}]",
            sigmoid_q20!("r3", "r4", "r5", "r12", "lr"),
            // r = sigmoid(acc[n + k])
            "ldr r3, [{gp}, {n4}]",
            sigmoid_q20!("r3", "r4", "r5", "r12", "r2"),
            // g = gn +sat round(r·gh / 2^15)
            "add r12, {gp}, {n4}, lsl #1",
            "ldr r3, [r12]",
            "ldr r4, [r12, {n4}]",
            "smull r4, r5, r2, r4",
            "adds r4, r4, #16384",
            "adc r5, r5, #0",
            "lsr r4, r4, #15",
            "orr r4, r4, r5, lsl #17",
            "qadd r3, r3, r4",
            // n = tanh(g)
            tanh_q20!("r3", "r4", "r5", "r12"),
            // h = sat16(n + round(z·(h - n) / 2^15))
            gru_blend!("lr"),
            "add {gp}, {gp}, #4",
            "cmp {hp}, {end}",
            "bne 2b",
            gp = inout(reg) acc.as_ptr() => _,
            n4 = in(reg) 4 * n as u32,
            hp = inout(reg) h.as_mut_ptr() => _,
            end = in(reg) h[n..].as_ptr(),
            t = in(reg) table.as_ptr().wrapping_add(256),
            k = in(reg) 1u32 << 14,
            out("r2") _, out("r3") _, out("r4") _, out("r5") _, out("r12") _, out("lr") _,
            options(nostack),
        );
    }
    true
}

/// A GRU layer's gates without linear_before_reset and without clip, per unit `k` of `n`:
/// `acc[k] = sigmoid(acc[k])` (z, Q15 in int32, as `gru::step` leaves it for the update) and
/// `rh[k] = sat16(round(sigmoid(acc[n + k])·h[k] / 2^15))` (`r ⊙ h`, `fixed::mul_q15`), in
/// one pass. `false` (nothing written) when `n` is 0 or a slice is shorter than that needs.
pub fn gru_gates(acc: &mut [i32], n: usize, h: &[i16], rh: &mut [i16]) -> bool {
    if !units_fit(n) || acc.len() / 2 < n || h.len() < n || rh.len() < n {
        return false;
    }
    let table = &crate::lut::TANH_Q15;
    // SAFETY: `n >= 1` passes; pass `k` reads `acc[k]`, `acc[n + k]` (in bounds: `acc.len() >=
    // 2n`) and `h[k]`, and writes `acc[k]` and `rh[k]` (`h`, `rh` at least `n` long); the pass
    // ends when the `h` pointer reaches `h[n]`. Table reads as in [`lstm_cells`]. The
    // arithmetic is `sigmoid_q20_i32`'s (see [`lstm_cells`]) and `mul_q15`'s: `|r·h| < 2^30`,
    // so MLA with the rounding constant cannot overflow and SSAT saturates as `sat16` does.
    // Labels are local; only the declared registers are written; the stack is not used.
    unsafe {
        asm!(
            "2:",
            // z = sigmoid(acc[k]), back into acc[k]
            "ldr r3, [{gp}]",
            sigmoid_q20!("r3", "r4", "r5", "r12", "r3"),
            "str r3, [{gp}], #4",
            // r = sigmoid(acc[n + k]); rh[k] = sat16(round(r·h[k] / 2^15))
            "ldr r3, [{gp}, {n4}]",
            sigmoid_q20!("r3", "r4", "r5", "r12", "r3"),
            "ldrsh r4, [{hp}], #2",
            "mla r3, r3, r4, {k}",
            "ssat r3, #16, r3, asr #15",
            "strh r3, [{rp}], #2",
            "cmp {hp}, {end}",
            "bne 2b",
            gp = inout(reg) acc.as_mut_ptr() => _,
            // acc[n + k] from the advanced pointer &acc[k + 1]
            n4 = in(reg) 4 * n as u32 - 4,
            hp = inout(reg) h.as_ptr() => _,
            end = in(reg) h[n..].as_ptr(),
            rp = inout(reg) rh.as_mut_ptr() => _,
            t = in(reg) table.as_ptr().wrapping_add(256),
            k = in(reg) 1u32 << 14,
            out("r3") _, out("r4") _, out("r5") _, out("r12") _,
            options(nostack),
        );
    }
    true
}

/// A GRU layer's update without clip, per unit `k` of `n`: `h[k] = sat16(tanh(g) +
/// round(z·(h[k] - tanh(g)) / 2^15))` with `z = acc[k]` (already activated, Q15) and `g =
/// acc[2n + k]` (the h gate's pre-activation), as `gru::step`'s portable update loop. `false`
/// (nothing written) when `n` is 0 or a slice is shorter than that needs.
pub fn gru_update(acc: &[i32], n: usize, h: &mut [i16]) -> bool {
    if !units_fit(n) || acc.len() / 3 < n || h.len() < n {
        return false;
    }
    let table = &crate::lut::TANH_Q15;
    // SAFETY: `n >= 1` passes; pass `k` reads `acc[k]`, `acc[2n + k]` (in bounds: `acc.len()
    // >= 3n`) and `h[k]`, and writes `h[k]` (`h` at least `n` long); the pass ends when the
    // `h` pointer reaches `h[n]`. Table reads as in [`lstm_cells`]. The arithmetic is
    // `tanh_q20_i32`'s and `gru::update`'s (`z·(h - n) + 2^14 < 2^31` for `z` in 0..=32767).
    // Labels are local; only the declared registers are written; the stack is not used.
    unsafe {
        asm!(
            "2:",
            // n = tanh(acc[2n + k])
            "ldr r3, [{gp}, {n8}]",
            tanh_q20!("r3", "r4", "r5", "r12"),
            // h = sat16(n + round(z·(h - n) / 2^15))
            "ldr r2, [{gp}], #4",
            gru_blend!("r2"),
            "cmp {hp}, {end}",
            "bne 2b",
            gp = inout(reg) acc.as_ptr() => _,
            n8 = in(reg) 8 * n as u32,
            hp = inout(reg) h.as_mut_ptr() => _,
            end = in(reg) h[n..].as_ptr(),
            t = in(reg) table.as_ptr().wrapping_add(256),
            k = in(reg) 1u32 << 14,
            out("r2") _, out("r3") _, out("r4") _, out("r5") _, out("r12") _,
            options(nostack),
        );
    }
    true
}

/// A tanh SimpleRNN's activation, per unit `k` of `n`: `h[k] = tanh(acc[k])`
/// (`crate::lut::tanh_q20`), in one pass. `false` (nothing written) when `n` is 0 or a slice
/// is shorter than that needs.
pub fn tanh_units(acc: &[i32], n: usize, h: &mut [i16]) -> bool {
    if !units_fit(n) || acc.len() < n || h.len() < n {
        return false;
    }
    let table = &crate::lut::TANH_Q15;
    // SAFETY: `n >= 1` passes; pass `k` reads `acc[k]` and writes `h[k]` (both at least `n`
    // long); the pass ends when the `h` pointer reaches `h[n]`. Table reads as in
    // [`lstm_cells`]; the arithmetic is `tanh_q20_i32`'s, whose value lies between two int16
    // table entries, so the halfword store keeps it whole. Labels are local; only the
    // declared registers are written; the stack is not used.
    unsafe {
        asm!(
            "2:",
            "ldr r3, [{gp}], #4",
            tanh_q20!("r3", "r4", "r5", "r12"),
            "strh r3, [{hp}], #2",
            "cmp {hp}, {end}",
            "bne 2b",
            gp = inout(reg) acc.as_ptr() => _,
            hp = inout(reg) h.as_mut_ptr() => _,
            end = in(reg) h[n..].as_ptr(),
            t = in(reg) table.as_ptr().wrapping_add(256),
            k = in(reg) 1u32 << 14,
            out("r3") _, out("r4") _, out("r5") _, out("r12") _,
            options(nostack),
        );
    }
    true
}
