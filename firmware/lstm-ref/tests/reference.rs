//! The f32 LSTM against an f64 evaluation of the same equations written independently
//! here (std's exp/tanh in f64), and the two activation sets against each other.
#![allow(clippy::needless_range_loop)] // the reference is written index by index, like the spec

use recur_lstm_ref::{inv_sqrt, Activations, Libm, Lstm, LstmWeights, Rational, XorShift32};

/// f64 LSTM step, ONNX gate order i, o, f, c, written out from the ONNX operator spec.
fn step_f64<const I: usize, const H: usize>(
    wt: &LstmWeights<I, H>,
    x: &[f32; I],
    h: &mut [f64; H],
    c: &mut [f64; H],
) {
    let sig = |v: f64| 1.0 / (1.0 + (-v).exp());
    let mut z = [[0f64; H]; 4];
    for g in 0..4 {
        for j in 0..H {
            let mut acc = wt.b[g][j] as f64;
            for k in 0..I {
                acc += wt.w[g][j][k] as f64 * x[k] as f64;
            }
            for k in 0..H {
                acc += wt.r[g][j][k] as f64 * h[k];
            }
            z[g][j] = acc;
        }
    }
    for j in 0..H {
        let ct = sig(z[2][j]) * c[j] + sig(z[0][j]) * z[3][j].tanh();
        c[j] = ct;
        h[j] = sig(z[1][j]) * ct.tanh();
    }
}

fn max_error_over_steps<A: Activations, const I: usize, const H: usize>(steps: usize) -> f64 {
    let wt = LstmWeights::<I, H>::generate(0x5eed);
    let mut cell = Lstm::<I, H, A>::new(&wt);
    let (mut h, mut c) = ([0f64; H], [0f64; H]);
    let mut rng = XorShift32::new(7);
    let mut worst = 0f64;
    for _ in 0..steps {
        let mut x = [0f32; I];
        for v in &mut x {
            *v = 2.0 * rng.next_f32();
        }
        let out = *cell.step(&x);
        step_f64(&wt, &x, &mut h, &mut c);
        for j in 0..H {
            worst = worst.max((out[j] as f64 - h[j]).abs());
            worst = worst.max((cell.state.c[j] as f64 - c[j]).abs());
        }
    }
    worst
}

#[test]
fn libm_cell_follows_the_f64_spec() {
    let e = max_error_over_steps::<Libm, 6, 32>(500);
    println!("f32 libm vs f64, I=6 H=32, 500 steps: max abs error {e:.3e}");
    assert!(e < 2e-6, "{e}");
    let e = max_error_over_steps::<Libm, 8, 64>(200);
    println!("f32 libm vs f64, I=8 H=64, 200 steps: max abs error {e:.3e}");
    assert!(e < 2e-6, "{e}");
}

#[test]
fn rational_cell_follows_the_f64_spec() {
    let e = max_error_over_steps::<Rational, 6, 32>(500);
    println!("f32 rational vs f64, I=6 H=32, 500 steps: max abs error {e:.3e}");
    assert!(e < 2e-6, "{e}");
    let e = max_error_over_steps::<Rational, 8, 64>(200);
    println!("f32 rational vs f64, I=8 H=64, 200 steps: max abs error {e:.3e}");
    assert!(e < 2e-6, "{e}");
}

#[test]
fn rational_activations_track_the_true_functions() {
    let mut worst_t = 0f64;
    let mut worst_s = 0f64;
    for k in -20_000..=20_000 {
        let x = k as f32 * 1e-3;
        worst_t = worst_t.max((Rational::tanh(x) as f64 - (x as f64).tanh()).abs());
        let s = 1.0 / (1.0 + (-(x as f64)).exp());
        worst_s = worst_s.max((Rational::sigmoid(x) as f64 - s).abs());
    }
    println!("rational tanh max abs error {worst_t:.3e}, sigmoid {worst_s:.3e} on [-20, 20]");
    assert!(worst_t < 1e-6 && worst_s < 1e-6);
    assert_eq!(Rational::tanh(100.0), 1.0);
    assert_eq!(Rational::tanh(-100.0), -1.0);
}

#[test]
fn weights_are_deterministic_in_range_and_const() {
    const W: LstmWeights<6, 32> = LstmWeights::generate(1);
    let again = LstmWeights::<6, 32>::generate(1);
    assert_eq!(W, again);
    assert_ne!(W, LstmWeights::<6, 32>::generate(2));
    let s = inv_sqrt(32);
    assert!((s as f64 - 1.0 / 32f64.sqrt()).abs() < 1e-7);
    let all =
        W.w.iter()
            .flatten()
            .flatten()
            .chain(W.r.iter().flatten().flatten());
    assert!(all.clone().all(|v| v.abs() <= s));
    // Not degenerate: both signs, spread over the range.
    assert!(all.clone().any(|v| *v > 0.9 * s) && all.clone().any(|v| *v < -0.9 * s));
}
