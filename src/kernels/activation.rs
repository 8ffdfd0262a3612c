//! Activation functions applied in place to a gate's pre-activations.
//!
//! Sigmoid and tanh, which every default cell uses, go through vectorisable rational
//! approximations (`fast_tanh`, `fast_sigmoid`) accurate to 5e-7 absolute, the same
//! approach ONNX Runtime's own kernels take; the other ONNX activations use their definitions.

use crate::ir::{Activation, ActivationKind};

/// An activation ready to apply to slices.
#[derive(Debug, Clone, Copy)]
pub struct Act(Activation);

impl Act {
    /// Wraps a resolved activation.
    pub fn new(a: Activation) -> Self {
        Act(a)
    }

    /// Applies the function to every value.
    #[inline(always)]
    pub fn apply(&self, values: &mut [f32]) {
        match self.0.kind {
            ActivationKind::Sigmoid => tanh_family(values, true),
            ActivationKind::Tanh => tanh_family(values, false),
            _ => values.iter_mut().for_each(|v| *v = self.0.apply(*v)),
        }
    }
}

/// `fast_tanh` (or, with `sigmoid`, `fast_sigmoid`) of every value: eight at a time with
/// fused multiply-adds on x86-64 with AVX2 + FMA (sixteen with AVX-512; chosen at run time),
/// which makes the activations of a streamed step about twice as fast as the compiler's
/// vectorisation of the scalar function; four at a time with NEON on aarch64; the scalar
/// function elsewhere and for the last few values.
#[inline(always)]
fn tanh_family(values: &mut [f32], sigmoid: bool) {
    #[cfg(target_arch = "x86_64")]
    {
        if super::avx512() {
            // SAFETY: the CPU supports the features the function is compiled for.
            unsafe { avx512::tanh_family(values, sigmoid) };
            return;
        }
        if super::avx2_fma() {
            // SAFETY: the CPU supports the features the function is compiled for.
            unsafe { avx2::tanh_family(values, sigmoid) };
            return;
        }
    }
    #[cfg(target_arch = "aarch64")]
    neon::tanh_family(values, sigmoid);
    #[cfg(not(target_arch = "aarch64"))]
    tanh_family_scalar(values, sigmoid);
}

#[inline(always)]
fn tanh_family_scalar(values: &mut [f32], sigmoid: bool) {
    if sigmoid {
        values.iter_mut().for_each(|v| *v = fast_sigmoid(*v));
    } else {
        values.iter_mut().for_each(|v| *v = fast_tanh(*v));
    }
}

/// [`fast_tanh`]'s input range: it clamps outside, where tanh is ±1 within 5e-7.
const TANH_CLAMP: f32 = 7.905_311;

/// [`fast_tanh`]'s numerator `x · p(x²)`: the coefficients of p, highest power first.
#[allow(clippy::excessive_precision)] // coefficients kept as fitted
const TANH_P: [f32; 7] = [
    -2.760_768_5e-16,
    2.000_187_9e-13,
    -8.604_671_5e-11,
    5.122_297e-8,
    1.485_722_4e-5,
    6.372_619_3e-4,
    4.893_524_6e-3,
];

/// [`fast_tanh`]'s denominator `q(x²)`, highest power first.
#[allow(clippy::excessive_precision)]
const TANH_Q: [f32; 4] = [
    1.198_258_4e-6,
    1.185_347_1e-4,
    2.268_434_6e-3,
    4.893_525_2e-3,
];

/// tanh(x) as a rational function of degree 13/6 on [-7.9, 7.9] (clamped outside), absolute error
/// below 5e-7 against f64 tanh (checked by a test).
#[inline(always)]
pub fn fast_tanh(x: f32) -> f32 {
    let x = x.clamp(-TANH_CLAMP, TANH_CLAMP);
    let x2 = x * x;
    let p = TANH_P[1..].iter().fold(TANH_P[0], |p, &k| p * x2 + k);
    let q = TANH_Q[1..].iter().fold(TANH_Q[0], |q, &k| q * x2 + k);
    (x * p) / q
}

/// The logistic function through `fast_tanh`: σ(x) = (1 + tanh(x/2)) / 2.
#[inline(always)]
pub fn fast_sigmoid(x: f32) -> f32 {
    0.5 + 0.5 * fast_tanh(0.5 * x)
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    /// [`super::fast_tanh`] of eight lanes, with fused multiply-adds (so lanes may differ
    /// from the scalar function in the last bit).
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub unsafe fn tanh8(x: __m256) -> __m256 {
        use super::{TANH_CLAMP, TANH_P, TANH_Q};
        let c = |x: f32| _mm256_set1_ps(x);
        // min/max return the second operand for NaN: keep NaN by putting x second.
        let x = _mm256_max_ps(c(-TANH_CLAMP), _mm256_min_ps(c(TANH_CLAMP), x));
        let x2 = _mm256_mul_ps(x, x);
        let mut p = c(TANH_P[0]);
        for &k in &TANH_P[1..] {
            p = _mm256_fmadd_ps(p, x2, c(k));
        }
        let mut q = c(TANH_Q[0]);
        for &k in &TANH_Q[1..] {
            q = _mm256_fmadd_ps(q, x2, c(k));
        }
        _mm256_div_ps(_mm256_mul_ps(x, p), q)
    }

    /// [`super::fast_sigmoid`] of eight lanes: (1 + tanh(x/2)) / 2.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub unsafe fn sigmoid8(x: __m256) -> __m256 {
        let half = _mm256_set1_ps(0.5);
        _mm256_fmadd_ps(tanh8(_mm256_mul_ps(x, half)), half, half)
    }

    /// The slice form of [`tanh8`] / [`sigmoid8`], the last few values scalar.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn tanh_family(values: &mut [f32], sigmoid: bool) {
        let mut chunks = values.chunks_exact_mut(8);
        for chunk in &mut chunks {
            let p = chunk.as_mut_ptr();
            let x = _mm256_loadu_ps(p);
            _mm256_storeu_ps(p, if sigmoid { sigmoid8(x) } else { tanh8(x) });
        }
        super::tanh_family_scalar(chunks.into_remainder(), sigmoid);
    }

    /// [`super::lstm_default_cell`], eight units at a time.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn lstm_default_cell(gates: &[f32], c: &mut [f32], h: &mut [f32]) {
        lstm_default_cell_from(gates, 0, c, h)
    }

    /// Units `from..` of [`super::lstm_default_cell`], eight at a time, the last few scalar.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn lstm_default_cell_from(gates: &[f32], from: usize, c: &mut [f32], h: &mut [f32]) {
        let n = h.len();
        let (i_g, rest) = gates.split_at(n);
        let (o_g, rest) = rest.split_at(n);
        let (f_g, g_g) = rest.split_at(n);
        let mut k = from;
        while k + 8 <= n {
            let load = |s: &[f32]| _mm256_loadu_ps(s.as_ptr().add(k));
            let i = sigmoid8(load(i_g));
            let f = sigmoid8(load(f_g));
            let g = tanh8(load(g_g));
            let c_new = _mm256_fmadd_ps(f, load(c), _mm256_mul_ps(i, g));
            _mm256_storeu_ps(c.as_mut_ptr().add(k), c_new);
            let o = sigmoid8(load(o_g));
            _mm256_storeu_ps(h.as_mut_ptr().add(k), _mm256_mul_ps(o, tanh8(c_new)));
            k += 8;
        }
        super::lstm_default_cell_scalar(gates, k, c, h);
    }
}

/// The same functions sixteen lanes at a time, for CPUs with AVX-512F. The division becomes
/// a reciprocal estimate refined by one Newton step, so lanes may differ from the eight-lane
/// forms in the last bits (the 5e-7 bound against f64 holds for both; tests check each).
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// [`super::avx2::tanh8`] of sixteen lanes, with a refined reciprocal for the division.
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub unsafe fn tanh16(x: __m512) -> __m512 {
        use super::{TANH_CLAMP, TANH_P, TANH_Q};
        let c = |x: f32| _mm512_set1_ps(x);
        let x = _mm512_max_ps(c(-TANH_CLAMP), _mm512_min_ps(c(TANH_CLAMP), x));
        let x2 = _mm512_mul_ps(x, x);
        let mut p = c(TANH_P[0]);
        for &k in &TANH_P[1..] {
            p = _mm512_fmadd_ps(p, x2, c(k));
        }
        let mut q = c(TANH_Q[0]);
        for &k in &TANH_Q[1..] {
            q = _mm512_fmadd_ps(q, x2, c(k));
        }
        // 1/q from the 14-bit estimate and one Newton step (about 2^-23 relative): the
        // division's throughput bounded the cells (five per unit), this is three cheap
        // instructions. q >= 4.9e-3 here, far from the estimate's edge cases.
        let r = _mm512_rcp14_ps(q);
        let r = _mm512_fmadd_ps(r, _mm512_fnmadd_ps(q, r, c(1.0)), r);
        _mm512_mul_ps(_mm512_mul_ps(x, p), r)
    }

    /// [`super::avx2::sigmoid8`] of sixteen lanes.
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub unsafe fn sigmoid16(x: __m512) -> __m512 {
        let half = _mm512_set1_ps(0.5);
        _mm512_fmadd_ps(tanh16(_mm512_mul_ps(x, half)), half, half)
    }

    /// The slice form of [`tanh16`] / [`sigmoid16`]; the rest eight lanes, then scalar.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub unsafe fn tanh_family(values: &mut [f32], sigmoid: bool) {
        let mut chunks = values.chunks_exact_mut(16);
        for chunk in &mut chunks {
            let p = chunk.as_mut_ptr();
            let x = _mm512_loadu_ps(p);
            _mm512_storeu_ps(p, if sigmoid { sigmoid16(x) } else { tanh16(x) });
        }
        super::avx2::tanh_family(chunks.into_remainder(), sigmoid);
    }

    /// [`super::lstm_default_cell`], sixteen units at a time; the rest eight at a time, then
    /// scalar.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub unsafe fn lstm_default_cell(gates: &[f32], c: &mut [f32], h: &mut [f32]) {
        let n = h.len();
        let (i_g, rest) = gates.split_at(n);
        let (o_g, rest) = rest.split_at(n);
        let (f_g, g_g) = rest.split_at(n);
        let mut k = 0;
        while k + 16 <= n {
            let load = |s: &[f32]| _mm512_loadu_ps(s.as_ptr().add(k));
            let i = sigmoid16(load(i_g));
            let f = sigmoid16(load(f_g));
            let g = tanh16(load(g_g));
            let c_new = _mm512_fmadd_ps(f, load(c), _mm512_mul_ps(i, g));
            _mm512_storeu_ps(c.as_mut_ptr().add(k), c_new);
            let o = sigmoid16(load(o_g));
            _mm512_storeu_ps(h.as_mut_ptr().add(k), _mm512_mul_ps(o, tanh16(c_new)));
            k += 16;
        }
        super::avx2::lstm_default_cell_from(gates, k, c, h);
    }
}

/// The same functions four lanes at a time on aarch64 with NEON (always there on aarch64),
/// with fused multiply-adds and an exact division, like the eight-lane form.
#[cfg(target_arch = "aarch64")]
mod neon {
    use std::arch::aarch64::*;

    /// [`super::fast_tanh`] of four lanes, with fused multiply-adds (so lanes may differ from
    /// the scalar function in the last bit).
    #[inline]
    pub unsafe fn tanh4(x: float32x4_t) -> float32x4_t {
        use super::{TANH_CLAMP, TANH_P, TANH_Q};
        // FMIN and FMAX return NaN when either operand is NaN: NaN stays NaN.
        let x = vmaxq_f32(
            vdupq_n_f32(-TANH_CLAMP),
            vminq_f32(vdupq_n_f32(TANH_CLAMP), x),
        );
        let x2 = vmulq_f32(x, x);
        let mut p = vdupq_n_f32(TANH_P[0]);
        for &k in &TANH_P[1..] {
            p = vfmaq_f32(vdupq_n_f32(k), p, x2);
        }
        let mut q = vdupq_n_f32(TANH_Q[0]);
        for &k in &TANH_Q[1..] {
            q = vfmaq_f32(vdupq_n_f32(k), q, x2);
        }
        vdivq_f32(vmulq_f32(x, p), q)
    }

    /// [`super::fast_sigmoid`] of four lanes: (1 + tanh(x/2)) / 2.
    #[inline]
    pub unsafe fn sigmoid4(x: float32x4_t) -> float32x4_t {
        let half = vdupq_n_f32(0.5);
        vfmaq_f32(half, tanh4(vmulq_f32(x, half)), half)
    }

    /// The slice form of [`tanh4`] / [`sigmoid4`], the last few values scalar.
    pub fn tanh_family(values: &mut [f32], sigmoid: bool) {
        let mut chunks = values.chunks_exact_mut(4);
        for chunk in &mut chunks {
            let p = chunk.as_mut_ptr();
            // SAFETY: the chunk holds four floats.
            unsafe {
                let x = vld1q_f32(p);
                vst1q_f32(p, if sigmoid { sigmoid4(x) } else { tanh4(x) });
            }
        }
        super::tanh_family_scalar(chunks.into_remainder(), sigmoid);
    }

    /// [`super::lstm_default_cell`], four units at a time, the last few scalar.
    pub fn lstm_default_cell(gates: &[f32], c: &mut [f32], h: &mut [f32]) {
        let n = h.len();
        assert!(gates.len() == 4 * n && c.len() == n, "LSTM cell sizes");
        let (i_g, rest) = gates.split_at(n);
        let (o_g, rest) = rest.split_at(n);
        let (f_g, g_g) = rest.split_at(n);
        let mut k = 0;
        while k + 4 <= n {
            // SAFETY: k + 4 <= n, the length of every slice here.
            unsafe {
                let load = |s: &[f32]| vld1q_f32(s.as_ptr().add(k));
                let i = sigmoid4(load(i_g));
                let f = sigmoid4(load(f_g));
                let g = tanh4(load(g_g));
                let c_new = vfmaq_f32(vmulq_f32(i, g), f, load(c));
                vst1q_f32(c.as_mut_ptr().add(k), c_new);
                let o = sigmoid4(load(o_g));
                vst1q_f32(h.as_mut_ptr().add(k), vmulq_f32(o, tanh4(c_new)));
            }
            k += 4;
        }
        super::lstm_default_cell_scalar(gates, k, c, h);
    }
}

/// The LSTM cell with ONNX's default activations (σ, tanh, tanh) and no clip, peepholes or
/// input_forget, in one pass: from the pre-activations `gates` (`[4H]`, order i, o, f, c)
/// to the new cell state `c` and hidden state `h` (`[H]` each, `c` holding the previous cell
/// state on entry). The same arithmetic as the general cell; on x86-64 with AVX2 + FMA eight
/// units at a time (sixteen with AVX-512), on aarch64 four with NEON.
#[inline(always)]
pub fn lstm_default_cell(gates: &[f32], c: &mut [f32], h: &mut [f32]) {
    assert!(
        gates.len() == 4 * h.len() && c.len() == h.len(),
        "LSTM cell sizes"
    );
    #[cfg(target_arch = "x86_64")]
    {
        if super::avx512() {
            // SAFETY: the CPU supports the features the function is compiled for; the sizes
            // were checked above.
            unsafe { avx512::lstm_default_cell(gates, c, h) };
            return;
        }
        if super::avx2_fma() {
            // SAFETY: as above.
            unsafe { avx2::lstm_default_cell(gates, c, h) };
            return;
        }
    }
    #[cfg(target_arch = "aarch64")]
    neon::lstm_default_cell(gates, c, h);
    #[cfg(not(target_arch = "aarch64"))]
    lstm_default_cell_scalar(gates, 0, c, h);
}

/// Units `from..` of [`lstm_default_cell`], one at a time.
#[inline(always)]
fn lstm_default_cell_scalar(gates: &[f32], from: usize, c: &mut [f32], h: &mut [f32]) {
    let n = h.len();
    for k in from..n {
        let i = fast_sigmoid(gates[k]);
        let o = fast_sigmoid(gates[n + k]);
        let f = fast_sigmoid(gates[2 * n + k]);
        let g = fast_tanh(gates[3 * n + k]);
        c[k] = f * c[k] + i * g;
        h[k] = o * fast_tanh(c[k]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_tanh_and_sigmoid_match_f64_within_5e_7() {
        let mut worst_tanh = 0f64;
        let mut worst_sigmoid = 0f64;
        for i in -400_000..=400_000 {
            let x = i as f32 * 5e-5;
            worst_tanh = worst_tanh.max((fast_tanh(x) as f64 - (x as f64).tanh()).abs());
            let s = 1.0 / (1.0 + (-(x as f64)).exp());
            worst_sigmoid = worst_sigmoid.max((fast_sigmoid(x) as f64 - s).abs());
        }
        for x in [-100.0f32, -30.0, 30.0, 100.0, f32::MAX, f32::MIN] {
            assert!((fast_tanh(x).abs() - 1.0).abs() < 5e-7, "{x}");
        }
        assert!(worst_tanh < 5e-7, "tanh error {worst_tanh}");
        assert!(worst_sigmoid < 5e-7, "sigmoid error {worst_sigmoid}");
    }

    /// A slice function, by name.
    type SliceForm = (&'static str, fn(&mut [f32], bool));
    /// A fused LSTM cell, by name.
    type CellForm = (&'static str, fn(&[f32], &mut [f32], &mut [f32]));

    /// Every form of the slice functions this CPU has: scalar, and on x86-64 eight lanes
    /// with FMA and sixteen with AVX-512, on aarch64 four with NEON.
    fn slice_forms() -> Vec<SliceForm> {
        let mut forms: Vec<SliceForm> =
            vec![("dispatched", tanh_family), ("scalar", tanh_family_scalar)];
        #[cfg(target_arch = "x86_64")]
        {
            if super::super::avx2_fma() {
                // SAFETY: the CPU has the features (checked just above).
                forms.push(("avx2", |v, s| unsafe { avx2::tanh_family(v, s) }));
            }
            if super::super::avx512() {
                // SAFETY: as above.
                forms.push(("avx512", |v, s| unsafe { avx512::tanh_family(v, s) }));
            }
        }
        #[cfg(target_arch = "aarch64")]
        forms.push(("neon", neon::tanh_family));
        forms
    }

    /// The fused LSTM cell in every form this CPU has (scalar, eight lanes, sixteen lanes,
    /// dispatched) against the cell computed in f64, within 3e-6.
    #[test]
    fn fused_lstm_cell_matches_f64_in_every_form() {
        let mut forms: Vec<CellForm> = vec![
            ("dispatched", lstm_default_cell),
            ("scalar", |g, c, h| lstm_default_cell_scalar(g, 0, c, h)),
        ];
        #[cfg(target_arch = "x86_64")]
        {
            if super::super::avx2_fma() {
                // SAFETY: the CPU has the features (checked just above).
                forms.push(("avx2", |g, c, h| unsafe {
                    avx2::lstm_default_cell(g, c, h)
                }));
            }
            if super::super::avx512() {
                // SAFETY: as above.
                forms.push(("avx512", |g, c, h| unsafe {
                    avx512::lstm_default_cell(g, c, h)
                }));
            }
        }
        #[cfg(target_arch = "aarch64")]
        forms.push(("neon", neon::lstm_default_cell));
        let mut seed = 5u32;
        let mut next = || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            ((seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5) * 12.0
        };
        // Sizes with 16-lane blocks, an 8-lane rest and a scalar tail.
        for n in [1usize, 7, 8, 16, 24, 29, 64] {
            let gates: Vec<f32> = (0..4 * n).map(|_| next()).collect();
            let c0: Vec<f32> = (0..n).map(|_| next() / 4.0).collect();
            let (mut c_want, mut h_want) = (c0.clone(), vec![0f32; n]);
            for k in 0..n {
                let i = 1.0 / (1.0 + (-(gates[k] as f64)).exp());
                let o = 1.0 / (1.0 + (-(gates[n + k] as f64)).exp());
                let f = 1.0 / (1.0 + (-(gates[2 * n + k] as f64)).exp());
                let g = (gates[3 * n + k] as f64).tanh();
                let c = f * c0[k] as f64 + i * g;
                c_want[k] = c as f32;
                h_want[k] = (o * c.tanh()) as f32;
            }
            for (name, form) in &forms {
                let (mut c, mut h) = (c0.clone(), vec![0f32; n]);
                form(&gates, &mut c, &mut h);
                for k in 0..n {
                    assert!(
                        (c[k] - c_want[k]).abs() < 3e-6 && (h[k] - h_want[k]).abs() < 3e-6,
                        "{name}, n {n}, unit {k}: c {} vs {}, h {} vs {}",
                        c[k],
                        c_want[k],
                        h[k],
                        h_want[k]
                    );
                }
            }
        }
    }

    /// The slice functions (each form this CPU has: scalar, eight lanes with FMA, sixteen
    /// with AVX-512, four with NEON) hold the same bound, and keep NaN and the saturated ends.
    #[test]
    fn slice_activations_match_f64_within_5e_7() {
        let xs: Vec<f32> = (-400_003..=400_003).map(|i| i as f32 * 5e-5).collect();
        for (name, tanh_family) in slice_forms() {
            slice_form_matches_f64(name, tanh_family, &xs);
        }
    }

    fn slice_form_matches_f64(name: &str, tanh_family: fn(&mut [f32], bool), xs: &[f32]) {
        for sigmoid in [false, true] {
            let mut v = xs.to_vec();
            tanh_family(&mut v, sigmoid);
            for (&x, &y) in xs.iter().zip(&v) {
                let x = x as f64;
                let want = if sigmoid {
                    1.0 / (1.0 + (-x).exp())
                } else {
                    x.tanh()
                };
                assert!(
                    (y as f64 - want).abs() < 5e-7,
                    "{name}: x {x}: {y} vs {want}"
                );
            }
            let mut ends = vec![
                f32::NAN,
                -1e30,
                1e30,
                f32::MIN,
                f32::MAX,
                0.0,
                -0.0,
                3.0,
                f32::NAN,
            ];
            tanh_family(&mut ends, sigmoid);
            assert!(ends[0].is_nan() && ends[8].is_nan(), "{name}: {ends:?}");
            let (low, high) = if sigmoid { (0.0, 1.0) } else { (-1.0, 1.0) };
            for (&y, want) in ends[1..5].iter().zip([low, high, low, high]) {
                assert!((y - want).abs() < 5e-7, "{name}: {ends:?}");
            }
        }
    }
}
