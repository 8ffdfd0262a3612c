//! recur-firmware's lstm-f32 in QEMU against the same f32 LSTM computed on the host, and its refusals
//! of missing and corrupted inputs (clean exit, status 2, one line naming the file).

use recur_firmware_tests::{build_firmware, decode_rcs, encode_rcs, run_qemu};
use recur_lstm_ref::{seeds, Activations, Libm, Lstm, LstmWeights, Rational, XorShift32};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

const TIMEOUT_S: u32 = 120;
const STEPS: usize = 2000;

fn firmware() -> &'static Path {
    static ELF: OnceLock<PathBuf> = OnceLock::new();
    ELF.get_or_init(|| build_firmware("lstm-f32").expect("firmware build"))
}

/// A smart-watch-like stream: gravity plus slow rotation on the accelerometer, a few
/// oscillations on the gyroscope, and noise, in g and rad/s.
fn imu_samples(steps: usize) -> Vec<f32> {
    let mut rng = XorShift32::new(0x1a2b_3c4d);
    let mut v = Vec::with_capacity(steps * 6);
    for t in 0..steps {
        let s = t as f32 * 0.02;
        let noise = |r: &mut XorShift32| 0.05 * r.next_f32();
        v.push(sin(0.7 * s) * 0.3 + noise(&mut rng));
        v.push(cos(0.7 * s) * 0.3 + noise(&mut rng));
        v.push(0.98 + noise(&mut rng));
        v.push(1.5 * sin(2.1 * s) + noise(&mut rng));
        v.push(0.8 * sin(3.3 * s + 1.0) + noise(&mut rng));
        v.push(0.4 * cos(1.3 * s) + noise(&mut rng));
    }
    v
}

fn sin(x: f32) -> f32 {
    (x as f64).sin() as f32
}

fn cos(x: f32) -> f32 {
    (x as f64).cos() as f32
}

fn host_outputs<A: Activations>(samples: &[f32]) -> Vec<f32> {
    let weights = LstmWeights::<6, 32>::generate(seeds::IMU_6_32);
    let mut cell = Lstm::<6, 32, A>::new(&weights);
    let mut out = Vec::new();
    for x in samples.chunks_exact(6) {
        let x: [f32; 6] = x.try_into().expect("6 channels");
        out.extend_from_slice(cell.step(&x));
    }
    out
}

fn check_against_host<A: Activations>(steps: usize) {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("imu.rcs");
    let output = dir.path().join("hidden.rcs");
    let samples = imu_samples(steps);
    std::fs::write(&input, encode_rcs(6, &samples)).unwrap();
    let arg_in = format!("in={}", input.display());
    let arg_out = format!("out={}", output.display());
    let arg_act = format!("act={}", A::NAME);
    let run = run_qemu(firmware(), &[&arg_in, &arg_out, &arg_act], TIMEOUT_S).unwrap();
    assert_eq!(run.status, Some(0), "{run:?}");
    assert!(run.stdout.contains(&format!("{steps} samples")), "{run:?}");
    let (header, got) = decode_rcs(&std::fs::read(&output).unwrap()).unwrap();
    assert_eq!((header.channels, header.count as usize), (32, steps));
    let want = host_outputs::<A>(&samples);
    assert_eq!(got.len(), want.len());
    let mut worst = 0f32;
    let mut exact = 0usize;
    for (g, w) in got.iter().zip(&want) {
        worst = worst.max((g - w).abs());
        exact += usize::from(g.to_bits() == w.to_bits());
    }
    println!(
        "f32 {}: {steps} steps x 32 units, QEMU vs host max abs diff {worst:e}, {exact}/{} bit-identical",
        A::NAME,
        got.len()
    );
    // f32 state: same IEEE operations in the same order on both sides, but the tolerance
    // allows for libm's target-specific paths.
    assert!(worst <= 1e-5, "max abs diff {worst}");
    // The stream is not trivial: the hidden state moves.
    let spread = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    assert!(spread > 0.05, "hidden state barely moves: {spread}");
}

#[test]
fn firmware_matches_host_lstm_libm() {
    check_against_host::<Libm>(STEPS);
}

#[test]
fn firmware_matches_host_lstm_rational() {
    check_against_host::<Rational>(STEPS);
}

/// The soak: 100,000 samples streamed in and 100,000 hidden states out through
/// semihosting (about 13 s in QEMU), still equal to the host.
#[test]
fn soak_100k_samples_match_host() {
    check_against_host::<Libm>(100_000);
}

/// Runs the firmware on `bytes` and expects a clean refusal whose message contains `why`.
fn expect_refusal(name: &str, bytes: Option<Vec<u8>>, why: &str) {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join(name);
    if let Some(b) = bytes {
        std::fs::write(&input, b).unwrap();
    }
    let arg_in = format!("in={}", input.display());
    let arg_out = format!("out={}", dir.path().join("out.rcs").display());
    let run = run_qemu(firmware(), &[&arg_in, &arg_out], TIMEOUT_S).unwrap();
    assert_eq!(run.status, Some(2), "{name}: {run:?}");
    let line = run.stderr.trim();
    assert!(
        line.contains(&input.display().to_string()) && line.contains(why),
        "{name}: expected the path and '{why}' in: {line}"
    );
    println!("{name}: status 2, {line}");
}

#[test]
fn missing_and_corrupted_inputs_exit_with_status_2() {
    let good = encode_rcs(6, &imu_samples(100));
    expect_refusal("missing.rcs", None, "cannot open");
    let mut b = good.clone();
    b.truncate(good.len() - 3);
    expect_refusal("truncated.rcs", Some(b), "truncated or corrupted");
    let mut b = good.clone();
    b.extend_from_slice(&[0; 24]);
    expect_refusal("padded.rcs", Some(b), "truncated or corrupted");
    let mut b = good.clone();
    b[0..4].copy_from_slice(b"PK\x03\x04");
    expect_refusal("not-a-stream.rcs", Some(b), "magic");
    expect_refusal(
        "eight-channels.rcs",
        Some(encode_rcs(8, &[0.5; 80])),
        "8 channels",
    );
    expect_refusal("short.rcs", Some(b"RCS1".to_vec()), "header");
    let mut b = encode_rcs(6, &[0.0; 6 * 4]);
    b[6] = 1; // i16 elements: 4 samples of 6 x i16 = 48 bytes, the header now says I16
    b.truncate(16 + 48);
    expect_refusal("i16.rcs", Some(b), "holds I16 samples, the model needs F32");
    let mut b = good.clone();
    let at = 16 + (57 * 6 + 4) * 4;
    b[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    expect_refusal("nan.rcs", Some(b), "sample 57 channel 4");
}

#[test]
fn missing_arguments_exit_with_status_2() {
    let run = run_qemu(firmware(), &["in=x.rcs"], TIMEOUT_S).unwrap();
    assert_eq!(run.status, Some(2), "{run:?}");
    assert!(run.stderr.contains("missing out=FILE"), "{run:?}");
    let run = run_qemu(
        firmware(),
        &["in=x.rcs", "out=y.rcs", "act=fast"],
        TIMEOUT_S,
    )
    .unwrap();
    assert_eq!(run.status, Some(2), "{run:?}");
    assert!(
        run.stderr.contains("unknown argument 'act=fast'"),
        "{run:?}"
    );
}
