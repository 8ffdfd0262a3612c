//! The ONNX Runtime path against real ONNX Runtime 1.31.1 (CPU build, fetched by
//! `scripts/fetch-ort.sh` into `.ort/`): every fixture matches its reference and agrees with
//! the CPU path (tract with recur's kernels) within 1e-5, through the library and through the
//! binary; CUDA asked of the CPU-only library and a missing library are exit 2, one line.

#![cfg(feature = "ort")]

mod common;

use std::path::Path;
use std::process::Output;

use assert_cmd::Command;
use common::{all_cases, compare, Case};
use ndarray_npy::WriteNpyExt;
use recur::backend::{build_with, BackendKind, BackendOptions};
use recur::error::RecurError;
use recur::model::Model;
use recur::tensor::{check_inputs, read_npy, HostTensor};

/// Agreement required between ONNX Runtime and the CPU path.
const AGREEMENT: f32 = 1e-5;

fn library_present() {
    if let Err(e) = recur::backend::ort::locate_library(None) {
        panic!("{e}\n(the test suite's set-up, scripts/test.sh, runs scripts/fetch-ort.sh)");
    }
}

fn run(case: &Case, kind: BackendKind) -> recur::Result<Vec<(String, HostTensor)>> {
    let model = Model::load(&case.model_path())?;
    let inputs = check_inputs(&model.ir.inputs, case.read_inputs())?;
    let options = BackendOptions {
        ort_threads: Some(1),
        ..Default::default()
    };
    build_with(kind, &model, &options)?.run(&inputs)
}

#[test]
fn every_fixture_matches_on_ort_cpu_and_agrees_with_the_cpu_path() {
    library_present();
    let cases = all_cases();
    assert!(cases.len() >= 100, "fixtures missing: {}", cases.len());
    let (mut agreed, mut ort_only, mut failed) = (vec![], vec![], vec![]);
    for case in &cases {
        let ort = match run(case, BackendKind::Ort) {
            Ok(out) => out,
            Err(e) => {
                failed.push(format!("{}: ort failed: {e}", case.id()));
                continue;
            }
        };
        let err_ref = match case.check(&ort) {
            Ok(err) => err,
            Err(e) => {
                failed.push(format!("{}: ort vs reference: {e}", case.id()));
                continue;
            }
        };
        match run(case, BackendKind::Tract) {
            Ok(tract) => {
                let mut worst = 0f32;
                for ((name, a), (_, b)) in ort.iter().zip(&tract) {
                    match compare(&a.to_f32(), &b.to_f32(), AGREEMENT, 0.0) {
                        Ok(e) => worst = worst.max(e),
                        Err(e) => {
                            failed.push(format!("{}: ort vs tract, '{name}': {e}", case.id()))
                        }
                    }
                }
                agreed.push(format!(
                    "{:<48} vs reference {err_ref:.1e}, vs tract {worst:.1e}",
                    case.id()
                ));
            }
            // The CPU path refuses only unrecognised Loops and unknown ops (tests/fixtures.rs
            // holds it to that); such cases are checked against the reference alone.
            Err(RecurError::Unsupported { node, reason, .. }) => ort_only.push(format!(
                "{:<48} vs reference {err_ref:.1e} (tract refuses '{node}': {reason})",
                case.id()
            )),
            Err(e) => failed.push(format!("{}: tract failed: {e}", case.id())),
        }
    }
    println!(
        "ort CPU agrees with reference and tract ({}):\n  {}",
        agreed.len(),
        agreed.join("\n  ")
    );
    println!(
        "ort CPU only (tract refuses) ({}):\n  {}",
        ort_only.len(),
        ort_only.join("\n  ")
    );
    assert!(failed.is_empty(), "{}", failed.join("\n"));
    for keras_loop in [
        "masked_lstm",
        "simplernn_forecaster",
        "keras_gru_forecaster",
    ] {
        assert!(
            agreed.iter().any(|l| l.contains(keras_loop)),
            "the Keras Loop fixture {keras_loop} should run on both paths and agree"
        );
    }
}

fn recur(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::cargo_bin("recur").expect("binary built");
    cmd.env_remove("ORT_DYLIB_PATH");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.args(args).output().expect("runs")
}

/// `recur run MODEL --input X --backend ort` with `extra` arguments after them.
fn run_on_ort(model: &str, x: &str, extra: &[&str], env: &[(&str, &str)]) -> Output {
    let mut args = vec!["run", model, "--input", x, "--backend", "ort"];
    args.extend_from_slice(extra);
    recur(&args, env)
}

fn one_error_line(out: &Output, needles: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "expected exit 2, stderr: {err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "expected one line: {err:?}");
    for n in needles {
        assert!(lines[0].contains(n), "'{n}' missing from: {err}");
    }
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

#[test]
fn every_fixture_runs_through_the_binary_on_ort() {
    library_present();
    let tmp = tempfile::tempdir().unwrap();
    for (i, case) in all_cases().iter().enumerate() {
        let out_dir = tmp.path().join(i.to_string());
        let mut args = vec![
            "run".to_string(),
            s(&case.model_path()),
            "--backend".into(),
            "ort".into(),
            "--ort-threads".into(),
            "1".into(),
            "--out".into(),
            s(&out_dir),
        ];
        for (name, file) in &case.inputs {
            args.push("--input".into());
            args.push(format!("{name}={}", file.display()));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = recur(&args, &[]);
        assert!(
            out.status.success(),
            "{}: {}",
            case.id(),
            String::from_utf8_lossy(&out.stderr)
        );
        for (k, (name, want)) in case.read_expected().iter().enumerate() {
            let stem: String = name
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || "_.-".contains(c) {
                        c
                    } else {
                        '_'
                    }
                })
                .collect();
            let mut file = out_dir.join(format!("{stem}.npy"));
            if k > 0 && case.outputs[..k].iter().any(|(n, _)| n == name) {
                file = out_dir.join(format!("{stem}_1.npy"));
            }
            let got = read_npy(&file)
                .unwrap_or_else(|e| panic!("{}: {e}", case.id()))
                .to_f32();
            compare(&got, want, case.atol, case.rtol)
                .unwrap_or_else(|e| panic!("{}: output '{name}': {e}", case.id()));
        }
    }
}

fn basicmotions() -> (String, String) {
    let dir = common::repo_root().join("models/real/basicmotions_lstm");
    (s(&dir.join("model.onnx")), s(&dir.join("in_0.npy")))
}

#[test]
fn cuda_asked_of_the_cpu_only_library_is_exit_2_with_the_providers_reason() {
    library_present();
    let (model, x) = basicmotions();
    // With or without TensorFloat-32 allowed: the option changes CUDA's arithmetic, never
    // whether CUDA is there.
    for extra in [
        &["--device", "cuda"][..],
        &["--device", "cuda:1"],
        &["--device", "cuda", "--cuda-tf32"],
    ] {
        let out = run_on_ort(&model, &x, extra, &[]);
        one_error_line(&out, &["--device cuda", "CUDA execution provider"]);
        assert!(out.stdout.is_empty(), "no output after a refused device");
    }
}

#[test]
fn a_missing_or_unusable_library_is_exit_2_naming_where_it_looked() {
    let (model, x) = basicmotions();
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nowhere/libonnxruntime.so");
    let out = run_on_ort(&model, &x, &["--ort-lib", &s(&missing)], &[]);
    one_error_line(
        &out,
        &["ONNX Runtime library not found", "--ort-lib", &s(&missing)],
    );

    let out = run_on_ort(&model, &x, &[], &[("ORT_DYLIB_PATH", &s(&missing))]);
    one_error_line(&out, &["ORT_DYLIB_PATH", &s(&missing)]);

    let not_a_library = tmp.path().join("libonnxruntime.so.1.31.1");
    std::fs::write(&not_a_library, b"not a shared object").unwrap();
    let out = run_on_ort(&model, &x, &[], &[("ORT_DYLIB_PATH", &s(&not_a_library))]);
    one_error_line(&out, &["cannot load ONNX Runtime", &s(&not_a_library)]);
}

#[test]
fn bad_ort_options_are_exit_2() {
    let (model, x) = basicmotions();
    let out = run_on_ort(&model, &x, &["--ort-opt-level", "max"], &[]);
    one_error_line(&out, &["optimisation level", "max"]);
    let out = run_on_ort(&model, &x, &["--device", "gpu"], &[]);
    one_error_line(&out, &["unknown device 'gpu'"]);
}

#[test]
fn a_model_newer_than_ort_reads_is_refused_in_one_line() {
    let dir = common::repo_root().join("models/real/gru_forecaster");
    let mut proto = recur::onnx::load_proto(&dir.join("model.onnx")).unwrap();
    proto.ir_version = 14;
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("ir14.onnx");
    std::fs::write(&path, prost::Message::encode_to_vec(&proto)).unwrap();
    let x = s(&dir.join("in_0.npy"));
    let out = run_on_ort(&s(&path), &x, &[], &[]);
    one_error_line(&out, &["IR version 14", "at most 13"]);
    let out = recur(&["inspect", &s(&path), "--json"], &[]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["paths"]["ort"]["runs"], false);
}

/// A run ONNX Runtime fails (sequence_lens past the sequence's end) is one line naming the
/// node and ONNX Runtime's reason; ONNX Runtime's own log line about it only shows when
/// recur's log asks for it.
#[test]
fn a_run_ort_fails_is_one_line_and_its_log_goes_to_recurs() {
    library_present();
    let dir = common::repo_root().join("models/matrix/lstm_seqlens_runtime");
    let tmp = tempfile::tempdir().unwrap();
    let lens = tmp.path().join("lens.npy");
    ndarray::arr1(&[9i32, 99, 2])
        .write_npy(std::fs::File::create(&lens).unwrap())
        .unwrap();
    let (model, x) = (s(&dir.join("model.onnx")), s(&dir.join("in_0.npy")));
    let (x, lens) = (format!("X={x}"), format!("sequence_lens={}", s(&lens)));
    let out = run_on_ort(&model, &x, &["--input", &lens], &[]);
    one_error_line(&out, &["error: ", "'lstm0'", "sequence_lens"]);
    let out = run_on_ort(
        &model,
        &x,
        &["--input", &lens],
        &[("RECUR_LOG", "onnxruntime=debug")],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.lines()
            .any(|l| l.contains("onnxruntime") && l.contains("DEBUG")),
        "ONNX Runtime's message is not in recur's debug log: {err}"
    );
}

/// Which recurrent nodes `--device cuda` reports as left to ONNX Runtime's CPU provider
/// (`cuda_leaves_to_cpu`), against what the H200 run of every fixture showed
/// (`docs/gpu/h200-2026-12-04.txt`, committed raw): a fixture whose CUDA run gave the CPU's
/// exact bits at the CPU's speed (within 1.6x) had its recurrent node on the CPU, so it
/// must be reported; one whose CUDA run differed from the CPU at all ran on CUDA, so none
/// of its nodes may be. (Exact but slow runs, a layout=1 model's Transposes on the GPU
/// around a node on the CPU say, are left out.)
#[test]
fn nodes_reported_as_left_to_the_cpu_are_those_the_h200_ran_on_the_cpu() {
    use recur::backend::ort::cuda_leaves_to_cpu;
    let log =
        std::fs::read_to_string(common::repo_root().join("docs/gpu/h200-2026-12-04.txt")).unwrap();
    let cases = all_cases();
    let (mut on_cpu, mut on_cuda, mut wrong) = (0, 0, vec![]);
    for line in log.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [id, diff, _, cpu_us, cuda_us] = fields[..] else {
            continue;
        };
        let (Ok(diff), Ok(cpu_us), Ok(cuda_us)) = (
            diff.parse::<f64>(),
            cpu_us.parse::<f64>(),
            cuda_us.parse::<f64>(),
        ) else {
            continue;
        };
        let Some(case) = cases.iter().find(|c| c.id() == id) else {
            continue;
        };
        let model = Model::load(&case.model_path()).unwrap();
        let reported = cuda_leaves_to_cpu(&model.ir);
        if diff == 0.0 && cuda_us < 1.6 * cpu_us {
            on_cpu += 1;
            if reported.is_empty() {
                wrong.push(format!("{id}: ran on the CPU, not reported"));
            }
        } else if diff > 0.0 {
            on_cuda += 1;
            if !reported.is_empty() {
                wrong.push(format!("{id}: ran on CUDA, reported {reported:?}"));
            }
        }
    }
    println!("{on_cpu} fixtures ran on the CPU provider, {on_cuda} on CUDA");
    assert!(on_cpu >= 40 && on_cuda >= 60, "the log was not read");
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
