//! The tests' pseudo-random numbers: xorshift64, so that randomised checks repeat exactly.

/// A xorshift64 generator from `seed` (non-zero).
pub fn xorshift(mut seed: u64) -> impl FnMut() -> u64 {
    move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    }
}

/// Random `(acc, m, s)` of the int32 fast path's domain: `|acc| < 2^40` at every scale,
/// `|m| < 2^22`, `s` in 1..=62, kept when `requant(acc, m, s)` is at most 2^29 in magnitude
/// (the parser's bound, [`crate::blob::Params::fast`]).
pub fn fast_requant_cases(seed: u64) -> impl Iterator<Item = (i64, i32, u8)> {
    let mut next = xorshift(seed);
    core::iter::repeat_with(move || {
        let s = 1 + (next() % 62) as u8;
        let m = (next() % (1 << 23)) as i32 - (1 << 22) + 1;
        let acc = ((next() as i64) >> (next() % 64)) >> 24;
        (acc, m, s)
    })
    .filter(|&(acc, m, s)| crate::fixed::requant(acc, m, s).abs() <= 1 << 29)
}
