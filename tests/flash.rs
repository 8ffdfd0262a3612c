//! The microcontroller firmware end to end: `recur convert --target mcu` writes a blob,
//! `recur flash --qemu` streams every test sequence through `recur-firmware` on an emulated
//! Cortex-M4F (QEMU mps2-an386, the blob in its own flash region), and everything it computes
//! must equal `recur sim` (the same kernel on the host, over whole windows) bit for bit.
//! Needs `qemu-system-arm` and the thumbv7em-none-eabihf target (scripts/test.sh installs
//! both).

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use assert_cmd::Command;
use ndarray::{ArrayD, Axis};
use recur::flash::{firmware, qemu};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models/real")
        .join(name)
}

/// The firmware ELF, built once for all tests.
fn elf() -> &'static Path {
    static ELF: OnceLock<PathBuf> = OnceLock::new();
    ELF.get_or_init(|| firmware::build(firmware::Board::Mps2An386).expect("firmware builds"))
}

fn recur(args: &[&std::ffi::OsStr]) -> std::process::Output {
    Command::cargo_bin("recur")
        .unwrap()
        .args(args)
        .output()
        .unwrap()
}

fn ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "status {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn convert(name: &str, weights: &str, dir: &Path) -> PathBuf {
    let fx = fixture(name);
    let blob = dir.join(format!("{name}_{weights}.rcm"));
    ok(&recur(&[
        "convert".as_ref(),
        fx.join("model.onnx").as_os_str(),
        "--target".as_ref(),
        "mcu".as_ref(),
        "--weights".as_ref(),
        weights.as_ref(),
        "--calib".as_ref(),
        fx.join("in_0.npy").as_os_str(),
        "-o".as_ref(),
        blob.as_os_str(),
    ]));
    blob
}

fn sim(blob: &Path, input: &Path, out: &Path) {
    ok(&recur(&[
        "sim".as_ref(),
        blob.as_os_str(),
        "--input".as_ref(),
        input.as_os_str(),
        "--out".as_ref(),
        out.as_os_str(),
    ]));
}

fn flash(blob: &Path, input: &Path, out: &Path) -> std::process::Output {
    recur(&[
        "flash".as_ref(),
        blob.as_os_str(),
        "--qemu".as_ref(),
        "--input".as_ref(),
        input.as_os_str(),
        "--out".as_ref(),
        out.as_os_str(),
        "--firmware".as_ref(),
        elf().as_os_str(),
    ])
}

fn raw(dir: &Path, name: &str) -> ArrayD<i16> {
    ndarray_npy::read_npy(dir.join(name)).unwrap()
}

/// Asserts `got` equals `want` value for value (same shape), saying how many differ.
fn assert_bit_equal(got: &ArrayD<i16>, want: &ArrayD<i16>, what: &str) {
    assert_eq!(got.shape(), want.shape(), "{what}");
    let differ = got.iter().zip(want.iter()).filter(|(a, b)| a != b).count();
    assert_eq!(differ, 0, "{what}: {differ} values differ");
}

/// The blob's output after every sample of `input` (`[N, T, F]` f32), stepped on the host
/// through recur-kernel on its general path (no row tables, no fast path: int64
/// accumulators and requantisation throughout) from a zero state per sequence: `[N, T, O]`.
fn host_stepped(blob: &Path, input: &Path) -> ArrayD<i16> {
    let x: ArrayD<f32> = ndarray_npy::read_npy(input).unwrap();
    common::host_stepped(
        &std::fs::read(blob).unwrap(),
        &x,
        common::Tables::GeneralPath,
    )
}

/// Converts, simulates on the host, runs in QEMU, and asserts the two agree exactly.
fn firmware_equals_sim(name: &str, weights: &str) {
    let dir = tempfile::tempdir().unwrap();
    let blob = convert(name, weights, dir.path());
    let input = fixture(name).join("in_0.npy");
    let (host, chip) = (dir.path().join("sim"), dir.path().join("qemu"));
    sim(&blob, &input, &host);
    let out = flash(&blob, &input, &chip);
    let text = ok(&out);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("flash") && log.contains("static RAM") && log.contains("model region"),
        "sizes are printed: {log}"
    );
    for file in ["output_raw.npy", "state_raw.npy"] {
        let what = format!("{name} {weights} {file}");
        assert_bit_equal(&raw(&chip, file), &raw(&host, file), &what);
    }
    assert_eq!(
        std::fs::read(host.join("output.npy")).unwrap(),
        std::fs::read(chip.join("output.npy")).unwrap()
    );
    // Every step's output against recur-kernel stepped on the host on its general path (no
    // tables, no fast path), sequence by sequence.
    let steps = raw(&chip, "steps_raw.npy");
    let host_steps = host_stepped(&blob, &input);
    assert_bit_equal(&steps, &host_steps, &format!("{name} {weights} per step"));
    let rows = raw(&chip, "output_raw.npy");
    println!(
        "{name} {weights}: firmware == recur sim on all {} outputs of {} sequences, and == the \
         host's step-by-step session on all {} per-step outputs; {}",
        rows.len(),
        rows.len_of(Axis(0)),
        steps.len(),
        text.lines().next().unwrap_or("")
    );
}

#[test]
fn basicmotions_lstm_firmware_equals_sim_bit_for_bit() {
    firmware_equals_sim("basicmotions_lstm", "int16");
    firmware_equals_sim("basicmotions_lstm", "int8");
}

#[test]
fn basicmotions_gru_firmware_equals_sim_bit_for_bit() {
    firmware_equals_sim("basicmotions_gru", "int16");
    firmware_equals_sim("basicmotions_gru", "int8");
}

#[test]
fn simple_rnn_firmware_equals_sim_bit_for_bit() {
    firmware_equals_sim("digits_rnn", "int16");
    firmware_equals_sim("digits_rnn", "int8");
}

/// 100,000 real sensor samples (the 40 BasicMotions recordings, 25 times over) streamed with
/// no reset: the firmware's final state and output equal the host's, and the host's
/// step-by-step session agrees with its window run.
#[test]
fn soak_100k_samples_end_in_the_host_state() {
    let dir = tempfile::tempdir().unwrap();
    let blob = convert("basicmotions_lstm", "int16", dir.path());
    let series: ArrayD<f32> =
        ndarray_npy::read_npy(fixture("basicmotions_lstm").join("in_0.npy")).unwrap();
    let flat: Vec<f32> = series.iter().copied().collect();
    let per_pass = flat.len() / 6;
    let passes = 100_000usize.div_ceil(per_pass);
    let samples: Vec<f32> = flat.iter().copied().cycle().take(100_000 * 6).collect();
    assert_eq!(passes, 25);
    let long = ArrayD::from_shape_vec(vec![1, 100_000, 6], samples.clone()).unwrap();
    let input = dir.path().join("soak.npy");
    ndarray_npy::write_npy(&input, &long).unwrap();
    let (host, chip) = (dir.path().join("sim"), dir.path().join("qemu"));
    sim(&blob, &input, &host);
    ok(&flash(&blob, &input, &chip));
    for file in ["output_raw.npy", "state_raw.npy"] {
        assert_eq!(raw(&host, file), raw(&chip, file), "{file}");
    }

    // The same samples stepped one by one on the host through recur-kernel.
    let bytes = std::fs::read(&blob).unwrap();
    let words = recur::quant::sim::aligned(&bytes);
    let model = recur::quant::sim::parse(&words, bytes.len(), "blob").unwrap();
    let mut mem = vec![0i16; model.session_len()];
    let mut acc = vec![0i32; model.acc_len()];
    let mut session = recur_kernel::Session::new(&model, &mut mem, &mut acc).unwrap();
    let mut last = Vec::new();
    for x in samples.chunks_exact(6) {
        let q: Vec<i16> = x
            .iter()
            .enumerate()
            .map(|(f, v)| model.quantize_feature(f, *v))
            .collect();
        last = session.step(&q).unwrap().to_vec();
    }
    assert_eq!(
        session.state(),
        raw(&chip, "state_raw.npy").as_slice().unwrap()
    );
    assert_eq!(
        last,
        raw(&chip, "output_raw.npy")
            .iter()
            .copied()
            .collect::<Vec<_>>()
    );
    println!(
        "soak: 100,000 samples, final state ({} words) and output equal on host and firmware",
        session.state().len()
    );
}

/// A corrupted blob in the model region: the firmware reports it, naming the region's address
/// and the reason, and stops with status 2 before it reads a sample or writes an output.
#[test]
fn corrupted_blob_in_flash_is_reported_and_the_firmware_halts() {
    let dir = tempfile::tempdir().unwrap();
    let blob = std::fs::read(convert("basicmotions_gru", "int8", dir.path())).unwrap();
    let layout = firmware::layout(elf()).unwrap();
    let input = recur::flash::rcs::encode_input(
        &recur::quant::sim::parse(&recur::quant::sim::aligned(&blob), blob.len(), "b").unwrap(),
        &recur::tensor::read_npy(&fixture("basicmotions_gru").join("in_0.npy")).unwrap(),
        "in",
    )
    .unwrap();
    let mut flipped = blob.clone();
    flipped[blob.len() / 2] ^= 0x10;
    let mut magic = blob.clone();
    magic[0] = b'X';
    let mut version = blob.clone();
    version[4] = 9;
    let cases: [(&str, Vec<u8>, &str); 4] = [
        ("one flipped bit", flipped, "CRC mismatch"),
        ("bad magic", magic, "bad magic"),
        ("newer format", version, "format version 9"),
        ("erased region", Vec::new(), "bad magic"),
    ];
    for (what, bytes, why) in cases {
        let work = tempfile::tempdir().unwrap();
        std::fs::write(work.path().join("in.rcs"), &input.bytes).unwrap();
        let args = ["in=in.rcs".to_string(), "out=out.rcs".to_string()];
        let run = qemu::run(
            elf(),
            &bytes,
            layout.model_addr,
            &args,
            work.path(),
            Duration::from_secs(60),
            None,
        )
        .unwrap();
        assert_eq!(run.status, 2, "{what}: {}", run.stderr);
        let line = format!("model blob at {:#010x}", layout.model_addr);
        assert!(
            run.stderr.contains(&line) && run.stderr.contains(why),
            "{what}: {}",
            run.stderr
        );
        assert_eq!(
            run.stderr.lines().count(),
            1,
            "{what}: one line: {}",
            run.stderr
        );
        assert!(
            !work.path().join("out.rcs").exists(),
            "{what}: nothing written"
        );
    }
}

#[test]
fn flash_refuses_bad_blobs_inputs_and_missing_probe_rs_with_status_2() {
    let dir = tempfile::tempdir().unwrap();
    let blob = convert("basicmotions_lstm", "int8", dir.path());
    let input = fixture("basicmotions_lstm").join("in_0.npy");
    let out = dir.path().join("out");

    let mut bytes = std::fs::read(&blob).unwrap();
    let n = bytes.len();
    bytes[n - 8] ^= 1;
    let bad = dir.path().join("bad.rcm");
    std::fs::write(&bad, &bytes).unwrap();
    let r = flash(&bad, &input, &out);
    let err = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(2), "{err}");
    assert!(err.contains("bad.rcm") && err.contains("CRC"), "{err}");

    let wrong = fixture("digits_rnn").join("in_0.npy");
    let r = flash(&blob, &wrong, &out);
    let err = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(2), "{err}");
    assert!(
        err.contains("in_0.npy") && err.contains("[N, T, 6]"),
        "{err}"
    );
    assert!(!out.exists(), "nothing written for a refused input");

    if std::process::Command::new("probe-rs")
        .arg("--version")
        .output()
        .is_err()
    {
        let r = recur(&[
            "flash".as_ref(),
            blob.as_os_str(),
            "--probe".as_ref(),
            "STM32F411CEUx".as_ref(),
        ]);
        let err = String::from_utf8_lossy(&r.stderr);
        assert_eq!(r.status.code(), Some(2), "{err}");
        assert!(err.contains("cargo install probe-rs-tools"), "{err}");
    }
}

/// `recur bench OUT.rcm --qemu` counts every step; the count is exact, so two runs agree.
#[test]
fn bench_qemu_counts_instructions_per_step() {
    let dir = tempfile::tempdir().unwrap();
    let blob = convert("basicmotions_lstm", "int16", dir.path());
    let input = fixture("basicmotions_lstm").join("in_0.npy");
    let run = |profile: bool| -> serde_json::Value {
        let mut args = vec![
            "bench".as_ref(),
            blob.as_os_str(),
            "--qemu".as_ref(),
            "--input".as_ref(),
            input.as_os_str(),
            "--json".as_ref(),
            "--firmware".as_ref(),
            elf().as_os_str(),
        ];
        if profile {
            args.push("--profile".as_ref());
        }
        serde_json::from_str(ok(&recur(&args)).trim()).unwrap()
    };
    let (a, b) = (run(false), run(true));
    assert_eq!(a["steps"], 4000);
    assert_eq!(a["instructions_per_step"], b["instructions_per_step"]);
    let per = &a["instructions_per_step"];
    let (min, max) = (per["min"].as_u64().unwrap(), per["max"].as_u64().unwrap());
    assert!(min > 0 && min <= max, "{a}");
    println!("LSTM(32) int16, BasicMotions: {per}");
    // The profile accounts for every counted instruction (each step's plus the markers'
    // around it), and the gate rows lead it.
    let functions = b["profile"].as_array().unwrap();
    let total: u64 = functions
        .iter()
        .map(|f| f["instructions"].as_u64().unwrap())
        .sum();
    let mean = per["mean"].as_f64().unwrap();
    let want = (mean + recur::flash::qemu::MARKER_OVERHEAD as f64) * 4000.0;
    assert!(
        (total as f64 - want).abs() < 0.5,
        "profile total {total}, steps {want}"
    );
    assert_eq!(
        functions[0]["function"], "recur_kernel::arm::gate_pairs16",
        "{b}"
    );
    for f in functions.iter().take(5) {
        println!(
            "{:>10.1}  {}",
            f["per_step"].as_f64().unwrap(),
            f["function"]
        );
    }
}

/// A one-layer chain on the cell of the matrix fixture `template` (`lstm_base`, `gru_base`,
/// `gru_lbr1`, `rnn_base`)
/// with `i` inputs and `h` units, small pseudo-random weights (so that the quantised rows
/// take the row-table forms) and biases of up to ±1 (so that the gates leave their linear
/// range), and `[4, 30, i]` inputs: the blob (`bits`) and the input written to `dir`.
fn sized_layer_blob(
    template: &str,
    i: usize,
    h: usize,
    bits: &str,
    dir: &Path,
) -> (PathBuf, PathBuf) {
    use recur::quant::chain::{Chain, OutputAct, Reduce, Role, Stage};
    use recur::quant::{self, WeightBits};
    let mut seed = (i * 1009 + h * 31 + bits.len()) as u32;
    let mut uniform = |amp: f32| {
        seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        amp * ((seed >> 8) as f32 / (1u32 << 23) as f32 - 1.0)
    };
    let path = common::repo_root()
        .join("models/matrix")
        .join(template)
        .join("model.onnx");
    let model = recur::model::Model::load(&path).unwrap();
    let (node, mut layer) = common::first_recurrent_layer(&model);
    let g = layer.cell.gates();
    let mut array =
        |shape: &[usize], amp: f32| ArrayD::from_shape_fn(ndarray::IxDyn(shape), |_| uniform(amp));
    let weights = recur::ir::RecurrentWeights {
        w: array(&[1, g * h, i], 0.05),
        r: array(&[1, g * h, h], 0.05),
        b: Some(array(&[1, 2 * g * h], 1.0)),
        p: None,
    };
    layer.hidden_size = h;
    layer.input_size = Some(i);
    layer.weights = Some(weights);
    let x = ndarray::Array3::from_shape_fn((4, 30, i), |_| uniform(1.5));
    let chain = Chain {
        input_name: "X".into(),
        output_name: "Y".into(),
        tokens: false,
        input_dim: i,
        affine: vec![(1.0, 0.0); i],
        input_time_first: false,
        stages: vec![Stage::Recurrent {
            node,
            layer: Box::new(layer),
            reduce: Reduce::Sequence,
        }],
        output_act: OutputAct::None,
        output_roles: vec![Role::Batch, Role::Time, Role::Feat(h)],
    };
    let input = quant::ChainInput::Features(x.clone());
    let (_, ranges) = quant::reference::run(&chain, &input, None).unwrap();
    let bits = if bits == "int8" {
        WeightBits::Int8
    } else {
        WeightBits::Int16
    };
    let (blob, _) = quant::writer::write(&chain, &ranges, bits);
    let (blob_file, x_file) = (dir.join("sized.rcm"), dir.join("x.npy"));
    std::fs::write(&blob_file, blob).unwrap();
    ndarray_npy::write_npy(&x_file, &x).unwrap();
    (blob_file, x_file)
}

/// Layer sizes whose products end in every tail of recur-kernel's Cortex-M4 loops (int16:
/// 8-word passes, then 4, 2 and 1 words; int8: 16-byte passes, then 8 and 4 bytes, and rows
/// of 4k + 2 bytes, whose last pair the pairs keep in a word of its own), LSTM, GRU and
/// SimpleRNN, int16 and int8: the firmware's output after every sample equals recur-kernel
/// stepped on the host on its general path (no tables, no fast path: int64 throughout), bit
/// for bit (the firmware runs its asm with tables and pairs), and so does the host stepped
/// with its tables and pairs (the kernels' portable twin).
#[test]
fn odd_layer_sizes_firmware_equals_host_bit_for_bit() {
    let cases = [
        ("lstm_base", 2, 14),
        ("lstm_base", 11, 20),
        ("lstm_base", 8, 28),
        // Without linear_before_reset: the h gate's recurrent product of r ⊙ h on the row
        // kernels too (pairs for even H; an odd H takes the single-row kernel).
        ("gru_base", 5, 22),
        ("gru_base", 6, 24),
        ("gru_base", 3, 13),
        ("lstm_base", 3, 6),
        // SimpleRNN rows on the same kernels (pairs for even H).
        ("rnn_base", 5, 22),
        ("rnn_base", 3, 13),
        // linear_before_reset: the h gate's recurrent rows on their own (int16: 8 + 4 + 1
        // words; 8 + 2 words, and int8 16 + 4 bytes on words).
        ("gru_lbr1", 7, 26),
        ("gru_lbr1", 4, 20),
    ];
    for (template, i, h) in cases {
        for bits in ["int16", "int8"] {
            let dir = tempfile::tempdir().unwrap();
            let (blob, x) = sized_layer_blob(template, i, h, bits, dir.path());
            let bytes = std::fs::read(&blob).unwrap();
            let words = recur::quant::sim::aligned(&bytes);
            let model = recur::quant::sim::parse(&words, bytes.len(), "blob").unwrap();
            let odd_int8_rows = bits == "int8" && h % 4 != 0;
            assert!(
                model.tables_len() > 0,
                "{template} {i}x{h} {bits}: no row table"
            );
            let chip = dir.path().join("qemu");
            ok(&flash(&blob, &x, &chip));
            let (steps, host) = (raw(&chip, "steps_raw.npy"), host_stepped(&blob, &x));
            assert_bit_equal(&steps, &host, &format!("{template} {i}x{h} {bits}"));
            // The host's portable twin of the kernels, with the tables and pairs, too.
            let xs: ArrayD<f32> = ndarray_npy::read_npy(&x).unwrap();
            let twin = common::host_stepped(&bytes, &xs, common::Tables::Full);
            assert_bit_equal(
                &twin,
                &host,
                &format!("{template} {i}x{h} {bits} host tables"),
            );
            println!(
                "{template} I={i} H={h} {bits}: firmware (with row tables) == host general path \
                 on {} outputs{}",
                steps.len(),
                if odd_int8_rows {
                    ", recurrent rows of 4k + 2 bytes: a last pair of its own in the pairs"
                } else {
                    ""
                }
            );
        }
    }
}
