//! The microcontroller path end to end: convert real fixtures with `recur::quant`, run the
//! blobs through `recur-kernel`, and compare with the committed ONNX Runtime reference
//! outputs (`out_0.npy`). Also the step/run equivalence, the RAM budget, and malformed blobs.

mod common;

use std::path::Path;

use ndarray::{ArrayD, Axis};
use recur::model::Model;
use recur::quant::{self, sim, WeightBits};
use recur::tensor::read_npy;
use recur_kernel::{BlobError, Model as Blob, Session};

fn fixture(name: &str) -> std::path::PathBuf {
    common::repo_root().join("models/real").join(name)
}

fn convert(name: &str, bits: WeightBits) -> recur::Result<quant::Converted> {
    let dir = fixture(name);
    let model = Model::load(&dir.join("model.onnx"))?;
    let calib = read_npy(&dir.join("in_0.npy"))?;
    quant::convert(&model, ("in_0.npy", &calib), None, bits, false)
}

/// Agreement of argmax and max abs error of the simulated blob against `out_0.npy`.
fn against_reference(name: &str, blob: &[u8]) -> (usize, usize, f32) {
    let dir = fixture(name);
    let words = sim::aligned(blob);
    let model = sim::parse(&words, blob.len(), name).expect("blob parses");
    let input = read_npy(&dir.join("in_0.npy")).unwrap();
    let got = sim::simulate(&model, &input, "in_0.npy").unwrap().values;
    let want: ArrayD<f32> = read_npy(&dir.join("out_0.npy")).unwrap().to_f32();
    assert_eq!(got.shape(), want.shape(), "{name}");
    let err = got
        .iter()
        .zip(&want)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    let argmax = |r: ndarray::ArrayViewD<f32>| {
        r.iter()
            .enumerate()
            .fold(
                (0, f32::MIN),
                |(bi, bv), (i, &v)| if v > bv { (i, v) } else { (bi, bv) },
            )
            .0
    };
    let agree = got
        .axis_iter(Axis(0))
        .zip(want.axis_iter(Axis(0)))
        .filter(|(a, b)| argmax(a.view()) == argmax(b.view()))
        .count();
    (agree, want.shape()[0], err)
}

#[test]
fn basicmotions_int16_meets_acceptance() {
    for name in ["basicmotions_lstm", "basicmotions_gru"] {
        let c = convert(name, WeightBits::Int16).expect("converts");
        let (agree, total, err) = against_reference(name, &c.blob);
        println!("{name} int16: argmax agreement {agree}/{total}, max abs error {err:.3e}, flash {} B, RAM {} B",
            c.report.memory.flash_bytes, c.report.memory.ram_bytes);
        assert_eq!(agree, total, "{name}: argmax agreement");
        assert!(err <= 1e-2, "{name}: max abs error {err}");
    }
}

#[test]
fn basicmotions_int8_meets_acceptance() {
    for name in ["basicmotions_lstm", "basicmotions_gru"] {
        let c = convert(name, WeightBits::Int8).expect("converts");
        let (agree, total, err) = against_reference(name, &c.blob);
        println!("{name} int8: argmax agreement {agree}/{total}, max abs error {err:.3e}, flash {} B, RAM {} B",
            c.report.memory.flash_bytes, c.report.memory.ram_bytes);
        assert!(
            agree as f64 / total as f64 >= 0.975,
            "{name}: {agree}/{total}"
        );
    }
}

#[test]
fn lstm32_with_6_inputs_fits_1_kib_of_ram() {
    let c = convert("basicmotions_lstm", WeightBits::Int16).unwrap();
    let l = &c.report.layers[0];
    assert_eq!((l.kind.as_str(), l.input, l.output), ("LSTM", 6, 32));
    println!(
        "LSTM(32), 6 inputs (+ Dense(4), softmax): RAM {} B",
        c.report.memory.ram_bytes
    );
    assert!(c.report.memory.ram_bytes <= 1024, "{:?}", c.report.memory);
}

#[test]
fn streaming_steps_equal_the_window_run() {
    for name in ["basicmotions_lstm", "basicmotions_gru"] {
        let c = convert(name, WeightBits::Int8).unwrap();
        let words = sim::aligned(&c.blob);
        let model = sim::parse(&words, c.blob.len(), name).unwrap();
        let input = read_npy(&fixture(name).join("in_0.npy")).unwrap().to_f32();
        let (t, f) = (input.shape()[1], input.shape()[2]);
        let mut mem = vec![0i16; model.session_len()];
        let mut acc = vec![0i32; model.acc_len()];
        let mut window = vec![0i16; model.window_len(t)];
        for b in [0, 13, 39] {
            let x: Vec<i16> = (0..t * f)
                .map(|i| model.quantize_feature(i % f, input[[b, i / f, i % f]]))
                .collect();
            let mut s = Session::new(&model, &mut mem, &mut acc).unwrap();
            let run = s.run(&x, t, &mut window).unwrap().to_vec();
            s.reset();
            let mut last = vec![];
            for step in x.chunks(f) {
                last = s.step(step).unwrap().to_vec();
            }
            assert_eq!(last, run, "{name} sequence {b}");
            // After reset the same sequence gives the same answer again.
            s.reset();
            let again = s.run(&x, t, &mut window).unwrap().to_vec();
            assert_eq!(again, run);
        }
    }
}

fn fix_crc(blob: &mut [u8]) {
    let crc = recur_kernel::blob::CRC32.checksum(&blob[16..]);
    blob[12..16].copy_from_slice(&crc.to_le_bytes());
}

fn parse_owned(bytes: &[u8]) -> Result<(), BlobError> {
    let words = sim::aligned(bytes);
    let b = &bytemuck::cast_slice::<u32, u8>(&words)[..bytes.len()];
    Blob::parse(b).map(|_| ())
}

#[test]
fn malformed_blobs_are_errors() {
    let blob = convert("basicmotions_gru", WeightBits::Int8).unwrap().blob;
    assert!(parse_owned(&blob).is_ok());
    for len in 0..blob.len() {
        assert!(parse_owned(&blob[..len]).is_err(), "truncated to {len}");
    }
    let mut bad = blob.clone();
    bad[100] ^= 1;
    assert!(matches!(parse_owned(&bad), Err(BlobError::Crc { .. })));
    let mut bad = blob.clone();
    bad[4] = 2;
    assert_eq!(parse_owned(&bad), Err(BlobError::Version(2)));
    let mut bad = blob.clone();
    bad[0] = b'X';
    assert_eq!(parse_owned(&bad), Err(BlobError::BadMagic));
    // Impossible shapes, with a valid CRC: hidden size 0, hidden size 2000, wrong input width.
    for (at, value) in [
        (48 + 6, 0u16),
        (48 + 6, 2000),
        (48 + 4, 7),
        (48 + 32 + 4, 5),
    ] {
        let mut bad = blob.clone();
        bad[at..at + 2].copy_from_slice(&value.to_le_bytes());
        fix_crc(&mut bad);
        assert!(
            matches!(
                parse_owned(&bad),
                Err(BlobError::BadLayer { .. } | BlobError::BadModel(_))
            ),
            "field at {at} = {value}: {:?}",
            parse_owned(&bad)
        );
    }
    // Misaligned: the same bytes one byte into an aligned buffer.
    let words = sim::aligned(&[&[0u8][..], &blob].concat());
    let shifted = &bytemuck::cast_slice::<u32, u8>(&words)[1..blob.len() + 1];
    assert_eq!(Blob::parse(shifted).unwrap_err(), BlobError::Misaligned);
    // A parameter offset that is not 4-aligned, and one past the end.
    for off in [1u32, 1 << 30] {
        let mut bad = blob.clone();
        bad[48 + 16..48 + 20].copy_from_slice(&off.to_le_bytes());
        fix_crc(&mut bad);
        assert!(parse_owned(&bad).is_err());
    }
}

#[test]
fn every_real_fixture_converts_or_is_refused_by_node() {
    let mut lines = vec![];
    for case in common::all_cases()
        .into_iter()
        .filter(|c| c.group == "real")
    {
        for bits in [WeightBits::Int16, WeightBits::Int8] {
            match convert(&case.name, bits) {
                Ok(c) => {
                    let (agree, total, err) = against_reference(&case.name, &c.blob);
                    let m = &c.report.memory;
                    lines.push(format!(
                        "{:<24} {:?}: max abs error vs ORT {err:.3e}, argmax {agree}/{total}, flash {} B, RAM {} B",
                        case.name, bits, m.flash_bytes, m.ram_bytes
                    ));
                    assert!(err.is_finite());
                }
                Err(e) => {
                    let msg = e.to_string();
                    assert!(
                        matches!(e, recur::RecurError::Unsupported { .. }),
                        "{}: {msg}",
                        case.name
                    );
                    lines.push(format!("{:<24} {:?}: refused: {msg}", case.name, bits));
                }
            }
        }
    }
    println!("{}", lines.join("\n"));
}

#[test]
fn blob_round_trips_through_the_parser() {
    let c = convert("basicmotions_lstm", WeightBits::Int16).unwrap();
    let words = sim::aligned(&c.blob);
    let m = sim::parse(&words, c.blob.len(), "x").unwrap();
    assert_eq!(m.layers.len(), c.report.layers.len());
    for (l, info) in m.layers.iter().zip(&c.report.layers) {
        assert_eq!(l.in_dim, info.input);
        assert_eq!(l.width(), info.output);
        assert_eq!(l.param_bytes(), info.param_bytes);
    }
    assert_eq!(m.blob_len, c.blob.len());
    assert!(Path::new(&c.report.model).exists());
}

#[test]
fn cli_convert_then_sim_and_the_exit_2_contract() {
    use assert_cmd::Command;
    let dir = tempfile::tempdir().unwrap();
    let fx = fixture("basicmotions_gru");
    let blob = dir.path().join("gru.rcm");
    let report = dir.path().join("gru.json");
    let out = Command::cargo_bin("recur")
        .unwrap()
        .args(["convert"])
        .arg(fx.join("model.onnx"))
        .args(["--target", "mcu", "--weights", "int8", "--calib"])
        .arg(fx.join("in_0.npy"))
        .arg("--eval")
        .arg(fx.join("in_0.npy"))
        .arg("-o")
        .arg(&blob)
        .arg("--report")
        .arg(&report)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("argmax agreement") && text.contains("RAM"),
        "{text}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert!(json["memory"]["flash_bytes"].as_u64().unwrap() > 0);
    assert!(json["eval"]["argmax_agreement"].as_f64().unwrap() >= 0.975);

    let sim_dir = dir.path().join("sim");
    let out = Command::cargo_bin("recur")
        .unwrap()
        .arg("sim")
        .arg(&blob)
        .arg("--input")
        .arg(fx.join("in_0.npy"))
        .arg("--out")
        .arg(&sim_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let values = read_npy(&sim_dir.join("output.npy")).unwrap();
    assert_eq!(values.shape(), &[40, 4]);
    let raw: ndarray::ArrayD<i16> = ndarray_npy::read_npy(sim_dir.join("output_raw.npy")).unwrap();
    assert_eq!(raw.shape(), &[40, 4]);
    // Same numbers as the library simulator: output = raw * 2^-15.
    for (v, r) in values.to_f32().iter().zip(raw.iter()) {
        assert_eq!(*v, *r as f32 / 32768.0);
    }

    // A model with a Loop (Keras masked LSTM): refused, exit 2, one line naming the node.
    let masked = fixture("masked_lstm");
    let out = Command::cargo_bin("recur")
        .unwrap()
        .arg("convert")
        .arg(masked.join("model.onnx"))
        .args(["--target", "mcu", "--calib"])
        .arg(masked.join("in_0.npy"))
        .arg("-o")
        .arg(dir.path().join("m.rcm"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("mcu backend cannot run node"), "{err}");

    // A corrupt blob: exit 2, one line.
    let mut bytes = std::fs::read(&blob).unwrap();
    bytes[200] ^= 0xff;
    let bad = dir.path().join("bad.rcm");
    std::fs::write(&bad, &bytes).unwrap();
    let out = Command::cargo_bin("recur")
        .unwrap()
        .arg("sim")
        .arg(&bad)
        .arg("--input")
        .arg(fx.join("in_0.npy"))
        .arg("--out")
        .arg(dir.path().join("x"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("CRC mismatch"), "{err}");
}

/// The row tables a session builds when given room (what recur-firmware and `recur sim` do),
/// with or without the gate rows repacked in pairs, change no output bit, and neither does
/// the fast path itself: every test sequence of the BasicMotions LSTM and GRU and of the
/// digits SimpleRNN, int16 and int8, stepped sample by sample on the general path (int64,
/// no fast path), then on the fast path without tables, with row tables alone and with both.
#[test]
fn row_tables_change_no_output_bit() {
    use common::Tables;
    for name in ["basicmotions_lstm", "basicmotions_gru", "digits_rnn"] {
        for bits in [WeightBits::Int16, WeightBits::Int8] {
            let c = convert(name, bits).unwrap();
            let words = sim::aligned(&c.blob);
            let model = sim::parse(&words, c.blob.len(), name).unwrap();
            assert!(model.row_tables_len() > 0, "{name} {bits:?}: no row table");
            let pairs = model.tables_len() - model.row_tables_len();
            assert!(pairs > 0, "{name} {bits:?}: no gate rows in pairs");
            let input = read_npy(&fixture(name).join("in_0.npy")).unwrap().to_f32();
            let without = common::host_stepped(&c.blob, &input, Tables::GeneralPath);
            for tables in [Tables::None, Tables::RowsOnly, Tables::Full] {
                let with = common::host_stepped(&c.blob, &input, tables);
                assert_eq!(without, with, "{name} {bits:?} {tables:?}");
            }
        }
    }
}

/// Bidirectional, reverse, peephole, input_forget, clip and both GRU forms, run by the kernel
/// over a window and compared with ONNX Runtime's `Y` of the single-node matrix fixtures.
/// These graphs output `Y` with its direction axis, which `convert` does not take as a model
/// output, so the chain is built here from the lifted layer: one recurrent stage, every step.
#[test]
fn every_cell_option_over_a_window_matches_onnx_runtime() {
    use ndarray::{Array3, Ix3, Ix4};
    use recur::quant::chain::{Chain, OutputAct, Reduce, Role, Stage};
    let mut lines = vec![];
    for name in [
        "lstm_base",
        "lstm_bidirectional",
        "lstm_reverse",
        "lstm_peepholes",
        "lstm_input_forget",
        "lstm_clip",
        "gru_base",
        "gru_lbr1",
        "gru_bidirectional",
        "gru_reverse",
        "gru_clip",
        "rnn_base",
        "rnn_bidirectional",
    ] {
        let dir = common::repo_root().join("models/matrix").join(name);
        let model = Model::load(&dir.join("model.onnx")).unwrap();
        let (node, layer) = common::first_recurrent_layer(&model);
        let x = read_npy(&dir.join("in_0.npy")).unwrap().to_f32();
        let x: Array3<f32> = x
            .into_dimensionality::<Ix3>()
            .unwrap()
            .permuted_axes([1, 0, 2])
            .as_standard_layout()
            .to_owned();
        let (d, h) = (layer.direction.count(), layer.hidden_size);
        let chain = Chain {
            input_name: "X".into(),
            output_name: "Y".into(),
            tokens: false,
            input_dim: x.shape()[2],
            affine: vec![(1.0, 0.0); x.shape()[2]],
            input_time_first: true,
            stages: vec![Stage::Recurrent {
                node,
                layer: Box::new(layer),
                reduce: Reduce::Sequence,
            }],
            output_act: OutputAct::None,
            output_roles: vec![Role::Batch, Role::Time, Role::Feat(d * h)],
        };
        let input = quant::ChainInput::Features(x.clone());
        let (_, ranges) = quant::reference::run(&chain, &input, None).unwrap();
        // ORT's Y [T, D, B, H] -> [B, T, D*H].
        let y = read_npy(&dir.join("out_0.npy"))
            .unwrap()
            .to_f32()
            .into_dimensionality::<Ix4>()
            .unwrap();
        let (t, _, b, _) = y.dim();
        let want = y
            .permuted_axes([2, 0, 1, 3])
            .as_standard_layout()
            .to_owned()
            .into_shape_with_order((b, t, d * h))
            .unwrap();
        let (blob, _) = quant::writer::write(&chain, &ranges, WeightBits::Int16);
        let words = sim::aligned(&blob);
        let m = sim::parse(&words, blob.len(), name).unwrap();
        assert_eq!(m.is_causal(), d == 1 && !name.contains("reverse"), "{name}");
        let got = sim::simulate(&m, &recur::tensor::HostTensor::F32(x.into_dyn()), "x")
            .unwrap()
            .values;
        assert_eq!(got.shape(), want.shape(), "{name}");
        let err = got
            .iter()
            .zip(want.iter())
            .fold(0f32, |e, (a, b)| e.max((a - b).abs()));
        lines.push(format!(
            "{name:<20} int16 max abs error vs ORT Y: {err:.2e}"
        ));
        assert!(err < 5e-3, "{name}: {err}");
    }
    println!("{}", lines.join("\n"));
}
