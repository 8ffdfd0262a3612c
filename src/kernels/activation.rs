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
            ActivationKind::Sigmoid => values.iter_mut().for_each(|v| *v = fast_sigmoid(*v)),
            ActivationKind::Tanh => values.iter_mut().for_each(|v| *v = fast_tanh(*v)),
            _ => values.iter_mut().for_each(|v| *v = self.0.apply(*v)),
        }
    }
}

/// tanh(x) as a rational function of degree 13/6 on [-7.9, 7.9] (clamped outside), absolute error
/// below 5e-7 against f64 tanh (checked by a test).
#[inline(always)]
#[allow(clippy::excessive_precision)] // coefficients kept as fitted
pub fn fast_tanh(x: f32) -> f32 {
    const CLAMP: f32 = 7.905_311;
    const A1: f32 = 4.893_524_6e-3;
    const A3: f32 = 6.372_619_3e-4;
    const A5: f32 = 1.485_722_4e-5;
    const A7: f32 = 5.122_297e-8;
    const A9: f32 = -8.604_671_5e-11;
    const A11: f32 = 2.000_187_9e-13;
    const A13: f32 = -2.760_768_5e-16;
    const B0: f32 = 4.893_525_2e-3;
    const B2: f32 = 2.268_434_6e-3;
    const B4: f32 = 1.185_347_1e-4;
    const B6: f32 = 1.198_258_4e-6;
    let x = x.clamp(-CLAMP, CLAMP);
    let x2 = x * x;
    let p = x2 * (x2 * (x2 * (x2 * (x2 * (x2 * A13 + A11) + A9) + A7) + A5) + A3) + A1;
    let q = x2 * (x2 * (x2 * B6 + B4) + B2) + B0;
    (x * p) / q
}

/// The logistic function through `fast_tanh`: σ(x) = (1 + tanh(x/2)) / 2.
#[inline(always)]
pub fn fast_sigmoid(x: f32) -> f32 {
    0.5 + 0.5 * fast_tanh(0.5 * x)
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
}
