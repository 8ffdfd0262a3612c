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
}
