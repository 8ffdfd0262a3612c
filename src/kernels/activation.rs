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
/// fused multiply-adds on x86-64 with AVX2 + FMA (chosen at run time), which makes the
/// activations of a streamed step about twice as fast as the compiler's vectorisation of the
/// scalar function; the scalar function elsewhere and for the last few values.
#[inline(always)]
fn tanh_family(values: &mut [f32], sigmoid: bool) {
    #[cfg(target_arch = "x86_64")]
    {
        if super::avx2_fma() {
            // SAFETY: the CPU supports the features the function is compiled for.
            unsafe { avx2::tanh_family(values, sigmoid) };
            return;
        }
    }
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
        let n = h.len();
        let (i_g, rest) = gates.split_at(n);
        let (o_g, rest) = rest.split_at(n);
        let (f_g, g_g) = rest.split_at(n);
        let mut k = 0;
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

/// The LSTM cell with ONNX's default activations (σ, tanh, tanh) and no clip, peepholes or
/// input_forget, in one pass: from the pre-activations `gates` (`[4H]`, order i, o, f, c)
/// to the new cell state `c` and hidden state `h` (`[H]` each, `c` holding the previous cell
/// state on entry). The same arithmetic as the general cell; on x86-64 with AVX2 + FMA eight
/// units at a time.
#[inline(always)]
pub fn lstm_default_cell(gates: &[f32], c: &mut [f32], h: &mut [f32]) {
    assert!(
        gates.len() == 4 * h.len() && c.len() == h.len(),
        "LSTM cell sizes"
    );
    #[cfg(target_arch = "x86_64")]
    {
        if super::avx2_fma() {
            // SAFETY: the CPU supports the features the function is compiled for; the sizes
            // were checked above.
            unsafe { avx2::lstm_default_cell(gates, c, h) };
            return;
        }
    }
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

    /// The slice functions (eight lanes with FMA where the CPU has them, a scalar tail)
    /// hold the same bound, and keep NaN and the saturated ends.
    #[test]
    fn slice_activations_match_f64_within_5e_7() {
        let xs: Vec<f32> = (-400_003..=400_003).map(|i| i as f32 * 5e-5).collect();
        for sigmoid in [false, true] {
            let mut v = xs.clone();
            tanh_family(&mut v, sigmoid);
            for (&x, &y) in xs.iter().zip(&v) {
                let x = x as f64;
                let want = if sigmoid {
                    1.0 / (1.0 + (-x).exp())
                } else {
                    x.tanh()
                };
                assert!((y as f64 - want).abs() < 5e-7, "x {x}: {y} vs {want}");
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
            assert!(ends[0].is_nan() && ends[8].is_nan(), "{ends:?}");
            let (low, high) = if sigmoid { (0.0, 1.0) } else { (-1.0, 1.0) };
            for (&y, want) in ends[1..5].iter().zip([low, high, low, high]) {
                assert!((y - want).abs() < 5e-7, "{ends:?}");
            }
        }
    }
}
