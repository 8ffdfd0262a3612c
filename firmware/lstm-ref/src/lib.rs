//! An f32 LSTM step for microcontrollers, one time step per call, streaming: the
//! reference and baseline the fixed-point `recur-kernel` is compared against (it must
//! reach at most 0.6x these instruction counts).
//!
//! The cell is ONNX's default LSTM (gate order i, o, f, c; sigmoid, tanh, tanh; no
//! peepholes, no clip), batch 1:
//!
//! ```text
//! z_g = W_g x + R_g h + b_g            g in {i, o, f, c}
//! c'  = sigmoid(z_f) * c + sigmoid(z_i) * tanh(z_c)
//! h'  = sigmoid(z_o) * tanh(c')
//! ```
//!
//! The activations are a type parameter: [`Libm`] (`libm::expf`, `libm::tanhf`) or
//! [`Rational`] (a clamped 13/6 rational approximation of tanh, sigmoid from tanh).
//! Weights come from [`LstmWeights::generate`], a deterministic `const fn`, so a firmware
//! keeps them in flash and the host recomputes the very same model.
//!
//! `#![no_std]`, no allocation, no panics: every index is a const-generic bound.
#![no_std]
#![deny(missing_docs)]

use core::marker::PhantomData;

/// Seeds of the models the firmware carries, shared with the host tests that recompute them.
pub mod seeds {
    /// The streaming demo and test model: LSTM(32), 6 inputs (an IMU's accel + gyro).
    pub const IMU_6_32: u32 = 0x5eed_0632;
    /// The larger benchmark model: LSTM(64), 8 inputs.
    pub const BENCH_8_64: u32 = 0x5eed_0864;
}

/// The sigmoid and tanh a cell uses.
pub trait Activations {
    /// Short name for reports (`"libm"`, `"rational"`).
    const NAME: &'static str;
    /// Logistic sigmoid, 1 / (1 + e^-x).
    fn sigmoid(x: f32) -> f32;
    /// Hyperbolic tangent.
    fn tanh(x: f32) -> f32;
}

/// Activations from the `libm` crate: `1 / (1 + expf(-x))` and `tanhf(x)`.
pub struct Libm;

impl Activations for Libm {
    const NAME: &'static str = "libm";

    #[inline]
    fn sigmoid(x: f32) -> f32 {
        1.0 / (1.0 + libm::expf(-x))
    }

    #[inline]
    fn tanh(x: f32) -> f32 {
        libm::tanhf(x)
    }
}

/// Rational approximations: tanh(x) = x P(x²) / Q(x²) with x clamped to ±7.905, the
/// degree-13/6 fit Eigen and XNNPACK use (error a few ulp over the clamped range, exactly
/// ±1 beyond); sigmoid(x) = 0.5 tanh(x / 2) + 0.5. No library calls, one division each.
pub struct Rational;

impl Rational {
    const CLAMP: f32 = 7.905_311;
    const A1: f32 = 4.893_524_6e-3;
    const A3: f32 = 6.372_619_3e-4;
    const A5: f32 = 1.485_722_4e-5;
    const A7: f32 = 5.122_297e-8;
    const A9: f32 = -8.604_672e-11;
    const A11: f32 = 2.000_188e-13;
    const A13: f32 = -2.760_768_5e-16;
    const B0: f32 = 4.893_525e-3;
    const B2: f32 = 2.268_434_6e-3;
    const B4: f32 = 1.185_347_1e-4;
    const B6: f32 = 1.198_258_4e-6;
}

impl Activations for Rational {
    const NAME: &'static str = "rational";

    #[inline]
    fn sigmoid(x: f32) -> f32 {
        0.5 * Self::tanh(0.5 * x) + 0.5
    }

    #[inline]
    fn tanh(x: f32) -> f32 {
        let x = x.clamp(-Self::CLAMP, Self::CLAMP);
        let x2 = x * x;
        let p = ((((((Self::A13 * x2 + Self::A11) * x2 + Self::A9) * x2 + Self::A7) * x2
            + Self::A5)
            * x2
            + Self::A3)
            * x2
            + Self::A1)
            * x;
        let q = ((Self::B6 * x2 + Self::B4) * x2 + Self::B2) * x2 + Self::B0;
        p / q
    }
}

/// Weights of an LSTM with `I` inputs and `H` hidden units, gates in ONNX order
/// (0 = input, 1 = output, 2 = forget, 3 = cell).
#[derive(Clone, Debug, PartialEq)]
pub struct LstmWeights<const I: usize, const H: usize> {
    /// Input weights `W[gate][unit][input]`.
    pub w: [[[f32; I]; H]; 4],
    /// Recurrent weights `R[gate][unit][hidden]`.
    pub r: [[[f32; H]; H]; 4],
    /// Bias `Wb + Rb` per gate and unit.
    pub b: [[f32; H]; 4],
}

/// The xorshift32 generator behind [`LstmWeights::generate`] and the test inputs.
#[derive(Clone, Copy, Debug)]
pub struct XorShift32(u32);

impl XorShift32 {
    /// A generator from a seed (0 is replaced by 1: xorshift never leaves 0).
    pub const fn new(seed: u32) -> Self {
        XorShift32(if seed == 0 { 1 } else { seed })
    }

    /// The next 32 random bits.
    pub const fn next_u32(&mut self) -> u32 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.0 = x;
        x
    }

    /// A value uniform in [-1, 1) on a 2^-23 grid: exact in f32, the same on every machine.
    pub const fn next_f32(&mut self) -> f32 {
        (self.next_u32() >> 8) as f32 * (1.0 / 8_388_608.0) - 1.0
    }
}

/// 1 / sqrt(n) by Newton's iteration in f32 (a `const fn`, so weights can be generated at
/// compile time; deterministic, within an ulp or two of the true value).
pub const fn inv_sqrt(n: usize) -> f32 {
    let n = n as f32;
    let mut y = 1.0f32;
    // Start below the root so the iteration converges monotonically.
    while y * y * n > 1.0 {
        y *= 0.5;
    }
    let mut k = 0;
    while k < 40 {
        y = y * (1.5 - 0.5 * n * y * y);
        k += 1;
    }
    y
}

/// Fills `m` row by row, element by element, with `rng` draws times `scale` (const: the
/// weights are computed at compile time).
const fn fill<const R: usize, const C: usize>(
    rng: &mut XorShift32,
    m: &mut [[f32; C]; R],
    scale: f32,
) {
    let mut j = 0;
    while j < R {
        let mut k = 0;
        while k < C {
            m[j][k] = rng.next_f32() * scale;
            k += 1;
        }
        j += 1;
    }
}

impl<const I: usize, const H: usize> LstmWeights<I, H> {
    /// Deterministic weights: every value uniform in ±1/sqrt(H) (PyTorch's LSTM
    /// initialisation range) from [`XorShift32`] seeded with `seed`, in the order
    /// W, R, b, gate by gate, unit by unit.
    pub const fn generate(seed: u32) -> Self {
        let scale = inv_sqrt(H);
        let mut rng = XorShift32::new(seed);
        let mut w = [[[0f32; I]; H]; 4];
        let mut r = [[[0f32; H]; H]; 4];
        let mut b = [[0f32; H]; 4];
        let mut g = 0;
        while g < 4 {
            fill(&mut rng, &mut w[g], scale);
            g += 1;
        }
        let mut g = 0;
        while g < 4 {
            fill(&mut rng, &mut r[g], scale);
            g += 1;
        }
        fill(&mut rng, &mut b, scale);
        LstmWeights { w, r, b }
    }
}

/// The recurrent state carried from one step to the next.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LstmState<const H: usize> {
    /// Hidden state (also the step's output).
    pub h: [f32; H],
    /// Cell state.
    pub c: [f32; H],
}

impl<const H: usize> LstmState<H> {
    /// The zero state ONNX starts from when no initial state is given.
    pub const ZERO: Self = LstmState {
        h: [0.0; H],
        c: [0.0; H],
    };
}

/// A streaming LSTM: borrowed weights, owned state, activations `A`.
pub struct Lstm<'w, const I: usize, const H: usize, A: Activations> {
    weights: &'w LstmWeights<I, H>,
    /// The current state.
    pub state: LstmState<H>,
    act: PhantomData<A>,
}

impl<'w, const I: usize, const H: usize, A: Activations> Lstm<'w, I, H, A> {
    /// A cell at the zero state.
    pub const fn new(weights: &'w LstmWeights<I, H>) -> Self {
        Lstm {
            weights,
            state: LstmState::ZERO,
            act: PhantomData,
        }
    }

    /// Advances one time step with input `x` and returns the new hidden state.
    #[allow(clippy::needless_range_loop)] // j indexes five arrays in step
    pub fn step(&mut self, x: &[f32; I]) -> &[f32; H] {
        let wt = self.weights;
        let mut z = [[0f32; H]; 4];
        for (g, zg) in z.iter_mut().enumerate() {
            for (j, zj) in zg.iter_mut().enumerate() {
                let mut acc = wt.b[g][j];
                for (w, xv) in wt.w[g][j].iter().zip(x) {
                    acc += w * xv;
                }
                for (r, hv) in wt.r[g][j].iter().zip(&self.state.h) {
                    acc += r * hv;
                }
                *zj = acc;
            }
        }
        let s = &mut self.state;
        for j in 0..H {
            let i = A::sigmoid(z[0][j]);
            let o = A::sigmoid(z[1][j]);
            let f = A::sigmoid(z[2][j]);
            let c = f * s.c[j] + i * A::tanh(z[3][j]);
            s.c[j] = c;
            s.h[j] = o * A::tanh(c);
        }
        &self.state.h
    }
}
