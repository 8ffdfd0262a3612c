//! Sigmoid, tanh and exp from lookup tables with linear interpolation.
//!
//! Inputs are Q20 int32 (value = v / 2^20, so ±2048 is representable); outputs are Q15 int16.
//! Two tables of 513 int16 entries each (1,026 bytes each, in flash): tanh on [-8, 8] and exp
//! on [-16, 0], both with step 1/32. Sigmoid reuses the tanh table through
//! σ(x) = (1 + tanh(x/2)) / 2. Outside the tables' ranges the end values are held.
//!
//! Error bounds against f64, measured by `error_bounds` below on a Q20 grid that visits every
//! phase of the interpolation interval: tanh 1.16e-4 (bound 1.2e-4), sigmoid 7.3e-5 (bound
//! 8e-5), exp 1.39e-4 (bound 1.5e-4) absolute. Linear interpolation at step h = 1/32 costs at
//! most h²/8·max|f''| (9.4e-5 for tanh, 1.2e-4 for exp near 0); table and output rounding add
//! 2^-16 each.

pub use crate::lut_table::{EXP_Q15, TANH_Q15};

/// Number of entries in each table.
pub const TABLE_LEN: usize = 513;
/// Size in bytes of all tables the kernel carries (counted as flash in memory reports).
pub const TABLE_BYTES: usize = 2 * TABLE_LEN * 2;

/// Interpolates `table` (step 1/32) at the Q20 point `v`, the table starting at `lo_q20`.
///
/// All in int32: the two comparisons leave `0 < v - lo_q20 < 512 * 2^15 = 2^24` (no
/// overflow: `lo_q20 + 2^24` is 2^23 for tanh and 0 for exp), and `(b - a) * frac` is at most
/// 65534 * 32767 + 2^14 < 2^31. Same values as the int64 form `tanh_q20` was first written in
/// (`interp_i64` in the tests checks every phase).
#[inline(always)]
fn interp(table: &[i16; TABLE_LEN], lo_q20: i32, v: i32) -> i16 {
    if v <= lo_q20 {
        return table[0];
    }
    let pos = v.wrapping_sub(lo_q20) as u32; // v > lo_q20: exact, positive
    let idx = (pos >> 15) as usize; // 1/32 = 2^15 in Q20
    if idx >= TABLE_LEN - 1 {
        return table[TABLE_LEN - 1];
    }
    let frac = (pos & 0x7fff) as i32;
    let a = table[idx] as i32;
    let b = table[idx + 1] as i32;
    (a + (((b - a) * frac + (1 << 14)) >> 15)) as i16
}

/// tanh of a Q20 value, in Q15.
///
/// Branch-free form of `interp(&TANH_Q15, -8 << 20, v)`: `v` clamped to `[-2^23, 2^23 - 1]`
/// (one SSAT on Cortex-M4) puts `pos = v + 2^23` in `0..2^24`, so `idx <= 511` always has a
/// next entry. Same values: below the table `pos = 0` gives `TANH_Q15[0]` (frac 0); above
/// it the clamped point interpolates between `TANH_Q15[511]` and `TANH_Q15[512]`, which are
/// equal (tanh saturates to 32767 there), so it gives `TANH_Q15[512]` as `interp` does
/// (`int32_interpolation_equals_int64` checks every boundary).
#[inline(always)]
pub fn tanh_q20(v: i32) -> i16 {
    tanh_q20_i32(v) as i16
}

/// [`tanh_q20`] as int32 (its value lies between two int16 table entries, so the cast to
/// int16 changes nothing; int32 callers skip the sign extension).
#[inline(always)]
pub fn tanh_q20_i32(v: i32) -> i32 {
    const _: () = assert!(TANH_Q15[TABLE_LEN - 1] == TANH_Q15[TABLE_LEN - 2]);
    let pos = (v.clamp(-(1 << 23), (1 << 23) - 1) + (1 << 23)) as u32;
    let idx = (pos >> 15) as usize & (TABLE_LEN - 2); // 0..=511 (the mask is a no-op)
    let frac = (pos & 0x7fff) as i32;
    let (a, b) = (TANH_Q15[idx] as i32, TANH_Q15[idx + 1] as i32);
    a + (((b - a) * frac + (1 << 14)) >> 15)
}

/// Logistic sigmoid of a Q20 value, in Q15 (0..=32767).
#[inline(always)]
pub fn sigmoid_q20(v: i32) -> i16 {
    sigmoid_q20_i32(v) as i16
}

/// [`sigmoid_q20`] as int32 (0..=32767).
#[inline(always)]
pub fn sigmoid_q20_i32(v: i32) -> i32 {
    (tanh_q20_i32(v >> 1) + 32768) >> 1
}

/// exp of a Q20 value ≤ 0 (positive values give exp(0)), in Q15.
#[inline(always)]
pub fn exp_q20(v: i32) -> i16 {
    interp(&EXP_Q15, -16 << 20, v.min(0))
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    fn worst(f: fn(i32) -> i16, g: fn(f64) -> f64, lo: f64, hi: f64) -> f64 {
        let mut worst = 0f64;
        let (lo, hi) = ((lo * 1048576.0) as i64, (hi * 1048576.0) as i64);
        let mut v = lo;
        while v <= hi {
            let x = v as f64 / 1048576.0;
            let got = f(v as i32) as f64 / 32768.0;
            worst = worst.max((got - g(x)).abs());
            v += 97; // every phase of the 2^15 interpolation interval is visited
        }
        worst
    }

    #[test]
    fn tables_match_f64() {
        for (k, &t) in TANH_Q15.iter().enumerate() {
            let want = (((-8.0 + k as f64 / 32.0).tanh()) * 32768.0).round();
            assert!(
                (t as f64 - want.clamp(-32767.0, 32767.0)).abs() <= 1.0,
                "tanh {k}"
            );
        }
        for (k, &e) in EXP_Q15.iter().enumerate() {
            let want = ((-16.0 + k as f64 / 32.0).exp() * 32768.0).round();
            assert!((e as f64 - want.min(32767.0)).abs() <= 1.0, "exp {k}");
        }
    }

    /// The int64 interpolation the kernel used before `interp` moved to int32.
    fn interp_i64(table: &[i16; TABLE_LEN], lo_q20: i64, v: i32) -> i16 {
        let pos = v as i64 - lo_q20;
        if pos <= 0 {
            return table[0];
        }
        let idx = (pos >> 15) as usize;
        if idx >= TABLE_LEN - 1 {
            return table[TABLE_LEN - 1];
        }
        let frac = pos & 0x7fff;
        let a = table[idx] as i64;
        let b = table[idx + 1] as i64;
        (a + (((b - a) * frac + (1 << 14)) >> 15)) as i16
    }

    #[test]
    fn int32_interpolation_equals_int64() {
        let mut v = i32::MIN as i64;
        let check = |v: i32| {
            assert_eq!(tanh_q20(v), interp_i64(&TANH_Q15, -8 << 20, v), "tanh {v}");
            assert_eq!(
                exp_q20(v),
                interp_i64(&EXP_Q15, -16 << 20, v.min(0)),
                "exp {v}"
            );
        };
        while v <= i32::MAX as i64 {
            check(v as i32);
            v += 4093;
        }
        for v in (-(17 << 20))..(1 << 20) {
            check(v);
        }
        for v in [
            i32::MIN,
            i32::MAX,
            -(8 << 20),
            8 << 20,
            (8 << 20) - 1,
            -(16 << 20),
            0,
        ] {
            check(v);
        }
    }

    #[test]
    fn int32_variants_equal_int16_ones() {
        let mut v = i32::MIN as i64;
        while v <= i32::MAX as i64 {
            let x = v as i32;
            assert_eq!(tanh_q20_i32(x), tanh_q20(x) as i32, "{x}");
            assert_eq!(sigmoid_q20_i32(x), sigmoid_q20(x) as i32, "{x}");
            assert!((-32767..=32767).contains(&tanh_q20_i32(x)));
            v += 1021;
        }
    }

    #[test]
    fn error_bounds() {
        let t = worst(tanh_q20, f64::tanh, -12.0, 12.0);
        let s = worst(sigmoid_q20, |x| 1.0 / (1.0 + (-x).exp()), -24.0, 24.0);
        let e = worst(exp_q20, f64::exp, -20.0, 0.0);
        std::println!("lut error: tanh {t:.2e} sigmoid {s:.2e} exp {e:.2e}");
        assert!(t <= 1.2e-4, "tanh {t}");
        assert!(s <= 8.0e-5, "sigmoid {s}");
        assert!(e <= 1.5e-4, "exp {e}");
        assert_eq!(tanh_q20(i32::MAX), 32767);
        assert_eq!(tanh_q20(i32::MIN), -32767);
        assert_eq!(sigmoid_q20(i32::MIN), 0);
        assert_eq!(exp_q20(i32::MIN), 0);
    }
}
