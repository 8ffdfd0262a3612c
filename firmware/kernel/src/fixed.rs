//! Saturating fixed-point primitives shared by every layer.
//!
//! Requantisation multiplies an int64 accumulator by an integer multiplier `m` (|m| < 2^22)
//! and shifts right by `s` with round-half-up. The blob parser bounds every dimension to
//! [`crate::blob::MAX_DIM`] and every multiplier to [`crate::blob::MAX_MULTIPLIER`], so a
//! dot product of int16 values is below 2^40 and `acc * m` below 2^62: no step of this module
//! can overflow, and results are clamped into the range of their destination type.

/// Clamps to the int16 range.
#[inline(always)]
pub fn sat16(v: i64) -> i16 {
    v.clamp(i16::MIN as i64, i16::MAX as i64) as i16
}

/// Clamps to the int32 range.
#[inline(always)]
pub fn sat32(v: i64) -> i32 {
    v.clamp(i32::MIN as i64, i32::MAX as i64) as i32
}

/// `v / 2^s` rounded half up (`s` in 0..=62).
#[inline(always)]
pub fn shr_round(v: i64, s: u8) -> i64 {
    if s == 0 {
        v
    } else {
        (v + (1i64 << (s - 1))) >> s
    }
}

/// Requantises an accumulator: `acc * m / 2^s`, rounded half up.
#[inline(always)]
pub fn requant(acc: i64, m: i32, s: u8) -> i64 {
    shr_round(acc * m as i64, s)
}

/// [`requant`] in int32, for rows the parser proved small ([`crate::blob::Params::fast`]):
/// equal to `requant(acc, m, s)` whenever `s >= 1` and that result is at most 2^29 in
/// magnitude.
///
/// Why: `shr_round(p, s) = floor((p + 2^(s-1)) / 2^s) = floor((floor(p / 2^(s-1)) + 1) / 2)`
/// (halving the floor of a real number's double commutes with taking floors). With `|r| <=
/// 2^29`, `t = floor(p / 2^(s-1))` is at most 2^30 + 1 in magnitude, so it is exact as int32
/// and `t + 1` cannot overflow.
#[inline(always)]
pub fn requant32(acc: i64, m: i32, s: u8) -> i32 {
    #[cfg(recur_dsp)]
    {
        crate::arm::requant32(acc, m, s)
    }
    #[cfg(not(recur_dsp))]
    {
        let t = ((acc * m as i64) >> (s - 1)) as i32;
        (t + 1) >> 1
    }
}

/// [`requant32`] of an int32 accumulator (same value as `requant32(acc as i64, m, s)`): one
/// 32×32 multiply on Cortex-M4.
#[inline(always)]
pub fn requant32_i32(acc: i32, m: i32, s: u8) -> i32 {
    #[cfg(recur_dsp)]
    {
        crate::arm::requant32_i32(acc, m, s)
    }
    #[cfg(not(recur_dsp))]
    {
        requant32(acc as i64, m, s)
    }
}

/// Product of two Q15 numbers (or a Q15 gate and any int16 value), back to the second
/// operand's format, rounded half up and saturated.
#[inline(always)]
pub fn mul_q15(a: i16, b: i16) -> i16 {
    sat16(shr_round(a as i64 * b as i64, 15))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_and_saturation() {
        assert_eq!(shr_round(3, 1), 2);
        assert_eq!(shr_round(-3, 1), -1);
        assert_eq!(sat16(1 << 20), i16::MAX);
        assert_eq!(sat16(-(1 << 20)), i16::MIN);
        assert_eq!(mul_q15(i16::MIN, i16::MIN), i16::MAX);
        assert_eq!(requant(1 << 40, (1 << 22) - 1, 62), 1);
    }

    #[test]
    fn requant32_equals_requant_within_its_bound() {
        for (acc, m, s) in crate::test_rng::fast_requant_cases(0x1234_5678_9abc_def0).take(200_000)
        {
            let want = requant(acc, m, s);
            assert_eq!(requant32(acc, m, s) as i64, want, "acc {acc} m {m} s {s}");
        }
        for (acc, m, s) in [
            (0, 5, 1),
            (-1, 1, 1),
            (1, 1, 1),
            (-3, 1, 1),
            ((1i64 << 39) - 1, 1, 10),
            (-(1i64 << 39), 1, 10),
            (-(1i64 << 39), -(1 << 22) + 1, 62),
            (3, -1, 2),
            (-2, 1, 2),
        ] {
            assert_eq!(
                requant32(acc, m, s) as i64,
                requant(acc, m, s),
                "acc {acc} m {m} s {s}"
            );
        }
    }
}
