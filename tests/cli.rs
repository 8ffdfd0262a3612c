//! The `recur` binary: inspect and run on every fixture, and the bad-input contract (exit
//! status 2 with one line naming the file, input or node).

mod common;
#[path = "common/onnx_builder.rs"]
mod onnx_builder;

use std::path::{Path, PathBuf};
use std::process::Output;

use assert_cmd::Command;
use ndarray::{ArrayD, IxDyn};
use ndarray_npy::WriteNpyExt;

use common::{all_cases, compare};
use onnx_builder::{attr_string, embedding_lstm_model, lstm_model, write_model};

fn recur(args: &[&str]) -> Output {
    Command::cargo_bin("recur")
        .expect("binary built")
        .args(args)
        .output()
        .expect("runs")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Exit status 2 and exactly one line on stderr containing every `needle`.
fn assert_user_error(out: &Output, needles: &[&str]) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(2), "expected exit 2, stderr: {err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {err:?}");
    assert!(lines[0].starts_with("error: "), "{err}");
    for n in needles {
        assert!(lines[0].contains(n), "'{n}' missing from: {err}");
    }
}

fn npy<T: ndarray_npy::WritableElement>(
    dir: &Path,
    name: &str,
    shape: &[usize],
    values: Vec<T>,
) -> PathBuf {
    let path = dir.join(name);
    let a = ArrayD::from_shape_vec(IxDyn(shape), values).unwrap();
    a.write_npy(std::fs::File::create(&path).unwrap()).unwrap();
    path
}

fn sanitized(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_.-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[test]
fn inspect_reports_every_fixture_as_text_and_json() {
    let cases = all_cases();
    assert!(!cases.is_empty());
    for case in &cases {
        let model = case.model_path();
        let model = model.to_str().unwrap();
        let text = recur(&["inspect", model]);
        assert!(text.status.success(), "{}: {}", case.id(), stderr(&text));
        let text = String::from_utf8(text.stdout).unwrap();
        for heading in ["inputs", "outputs", "layers", "paths", "tract"] {
            assert!(
                text.contains(heading),
                "{}: no '{heading}' in:\n{text}",
                case.id()
            );
        }
        let json = recur(&["inspect", model, "--json"]);
        assert!(json.status.success(), "{}: {}", case.id(), stderr(&json));
        let v: serde_json::Value = serde_json::from_slice(&json.stdout)
            .unwrap_or_else(|e| panic!("{}: --json is not JSON: {e}", case.id()));
        assert_eq!(
            v["inputs"].as_array().unwrap().len(),
            case.inputs.len(),
            "{}",
            case.id()
        );
        assert_eq!(
            v["outputs"].as_array().unwrap().len(),
            case.outputs.len(),
            "{}",
            case.id()
        );
        assert!(v["paths"]["tract"]["runs"].is_boolean(), "{}", case.id());
        assert!(v["paths"]["cudnn"]["runs"].is_boolean(), "{}", case.id());
        let recurrent: Vec<&serde_json::Value> = v["layers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|l| l["kind"] == "recurrent")
            .collect();
        for layer in recurrent {
            for key in [
                "cell",
                "direction",
                "hidden_size",
                "activations",
                "layout",
                "sequence_lens",
            ] {
                assert!(
                    !layer[key].is_null(),
                    "{}: recurrent layer without '{key}': {layer}",
                    case.id()
                );
            }
        }
    }
}

#[test]
fn run_through_the_binary_matches_every_fixture_or_refuses_naming_the_node() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut matched, mut refused) = (0, 0);
    for (i, case) in all_cases().iter().enumerate() {
        let out_dir = tmp.path().join(i.to_string());
        let mut args: Vec<String> = vec!["run".into(), case.model_path().display().to_string()];
        for (name, file) in &case.inputs {
            args.push("--input".into());
            args.push(format!("{name}={}", file.display()));
        }
        args.push("--out".into());
        args.push(out_dir.display().to_string());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = recur(&args);
        match out.status.code() {
            Some(0) => {
                for ((name, _), (_, want)) in case.outputs.iter().zip(case.read_expected()) {
                    let file = out_dir.join(format!("{}.npy", sanitized(name)));
                    let got = recur::tensor::read_npy(&file)
                        .unwrap_or_else(|e| panic!("{}: {e}", case.id()))
                        .to_f32();
                    compare(&got, &want, case.atol, case.rtol)
                        .unwrap_or_else(|e| panic!("{}: output '{name}': {e}", case.id()));
                }
                matched += 1;
            }
            Some(2) => {
                assert_user_error(&out, &["tract backend cannot run node '"]);
                refused += 1;
            }
            other => panic!("{}: exit {other:?}: {}", case.id(), stderr(&out)),
        }
    }
    println!("binary: {matched} matched, {refused} refused");
    assert!(matched > 0);
}

struct Tiny {
    _dir: tempfile::TempDir,
    model: PathBuf,
    x: PathBuf,
    dir: PathBuf,
}

fn tiny() -> Tiny {
    let dir = tempfile::tempdir().unwrap();
    let model = write_model(dir.path(), "tiny.onnx", &lstm_model(vec![]));
    let x = npy(
        dir.path(),
        "x.npy",
        &[5, 2, 3],
        (0..30).map(|v| v as f32 / 30.0).collect::<Vec<f32>>(),
    );
    let path = dir.path().to_path_buf();
    Tiny {
        _dir: dir,
        model,
        x,
        dir: path,
    }
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

#[test]
fn a_good_run_writes_one_npy_per_output() {
    let t = tiny();
    let out_dir = t.dir.join("out");
    let out = recur(&[
        "run",
        &s(&t.model),
        "--input",
        &format!("X={}", s(&t.x)),
        "--out",
        &s(&out_dir),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let y = recur::tensor::read_npy(&out_dir.join("Y.npy")).unwrap();
    assert_eq!(y.shape(), &[5, 1, 2, 4]);
    let y_h = recur::tensor::read_npy(&out_dir.join("Y_h.npy"))
        .unwrap()
        .to_f32();
    // Y_h is Y's last step: an internal consistency check of the written files.
    let last = y.to_f32().index_axis(ndarray::Axis(0), 4).to_owned();
    compare(&y_h, &last.into_dyn(), 0.0, 0.0).unwrap();
    // A single-input model also takes a bare FILE.npy.
    let bare = recur(&["run", &s(&t.model), "--input", &s(&t.x)]);
    assert!(bare.status.success(), "{}", stderr(&bare));
}

#[test]
fn missing_model_file() {
    let t = tiny();
    let missing = t.dir.join("nope.onnx");
    assert_user_error(
        &recur(&["run", &s(&missing), "--input", &s(&t.x)]),
        &["nope.onnx"],
    );
    assert_user_error(&recur(&["inspect", &s(&missing)]), &["nope.onnx"]);
}

#[test]
fn missing_input_file() {
    let t = tiny();
    let missing = t.dir.join("absent.npy");
    assert_user_error(
        &recur(&[
            "run",
            &s(&t.model),
            "--input",
            &format!("X={}", s(&missing)),
        ]),
        &["absent.npy"],
    );
}

#[test]
fn bytes_that_are_not_onnx() {
    let t = tiny();
    let bogus = t.dir.join("bogus.onnx");
    std::fs::write(&bogus, b"this is a text file, not a protobuf\n").unwrap();
    assert_user_error(
        &recur(&["inspect", &s(&bogus)]),
        &["bogus.onnx", "not a valid ONNX model"],
    );
    assert_user_error(
        &recur(&["run", &s(&bogus), "--input", &s(&t.x)]),
        &["bogus.onnx", "not a valid ONNX model"],
    );
    let empty = t.dir.join("empty.onnx");
    std::fs::write(&empty, b"").unwrap();
    assert_user_error(&recur(&["inspect", &s(&empty)]), &["empty.onnx", "empty"]);
}

#[test]
fn truncated_onnx() {
    let t = tiny();
    let bytes = std::fs::read(&t.model).unwrap();
    for cut in [bytes.len() / 3, bytes.len() / 2, bytes.len() - 7] {
        let truncated = t.dir.join(format!("cut{cut}.onnx"));
        std::fs::write(&truncated, &bytes[..cut]).unwrap();
        assert_user_error(
            &recur(&["run", &s(&truncated), "--input", &s(&t.x)]),
            &[&format!("cut{cut}.onnx")],
        );
    }
}

#[test]
fn unknown_input_name() {
    let t = tiny();
    assert_user_error(
        &recur(&[
            "run",
            &s(&t.model),
            "--input",
            &format!("sensor={}", s(&t.x)),
        ]),
        &["sensor"],
    );
}

#[test]
fn wrong_rank() {
    let t = tiny();
    let x = npy(&t.dir, "rank2.npy", &[5, 3], vec![0.1f32; 15]);
    assert_user_error(
        &recur(&["run", &s(&t.model), "--input", &format!("X={}", s(&x))]),
        &["input 'X'", "rank 3"],
    );
}

#[test]
fn wrong_shape() {
    let t = tiny();
    let x = npy(&t.dir, "wide.npy", &[5, 2, 5], vec![0.1f32; 50]);
    assert_user_error(
        &recur(&["run", &s(&t.model), "--input", &format!("X={}", s(&x))]),
        &["input 'X'", "axis 2 must be 3"],
    );
}

#[test]
fn wrong_dtype() {
    let t = tiny();
    let x = npy(&t.dir, "f64.npy", &[5, 2, 3], vec![0.1f64; 30]);
    assert_user_error(
        &recur(&["run", &s(&t.model), "--input", &format!("X={}", s(&x))]),
        &["f64.npy", "float64"],
    );
    let ids = npy(&t.dir, "ids.npy", &[5, 2, 3], vec![1i64; 30]);
    assert_user_error(
        &recur(&["run", &s(&t.model), "--input", &format!("X={}", s(&ids))]),
        &["input 'X'", "expects float32", "int64"],
    );
}

#[test]
fn nan_in_the_input() {
    let t = tiny();
    let mut values = vec![0.1f32; 30];
    values[17] = f32::NAN;
    let x = npy(&t.dir, "nan.npy", &[5, 2, 3], values);
    assert_user_error(
        &recur(&["run", &s(&t.model), "--input", &format!("X={}", s(&x))]),
        &["input 'X'", "NaN", "[2, 1, 2]"],
    );
}

#[test]
fn corrupt_npy() {
    let t = tiny();
    let bad = t.dir.join("bad.npy");
    std::fs::write(&bad, b"\x93NUMPY\x01\x00garbage").unwrap();
    assert_user_error(
        &recur(&["run", &s(&t.model), "--input", &format!("X={}", s(&bad))]),
        &["bad.npy"],
    );
}

#[test]
fn reverse_runs_and_its_last_state_is_the_first_step() {
    let t = tiny();
    let reverse = write_model(
        &t.dir,
        "reverse.onnx",
        &lstm_model(vec![attr_string("direction", "reverse")]),
    );
    let out_dir = t.dir.join("rev");
    let out = recur(&[
        "run",
        &s(&reverse),
        "--input",
        &s(&t.x),
        "--out",
        &s(&out_dir),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let y = recur::tensor::read_npy(&out_dir.join("Y.npy"))
        .unwrap()
        .to_f32();
    let y_h = recur::tensor::read_npy(&out_dir.join("Y_h.npy"))
        .unwrap()
        .to_f32();
    // A reverse layer ends its scan at step 0: Y_h is Y[0].
    let first = y.index_axis(ndarray::Axis(0), 0).to_owned();
    compare(&y_h, &first.into_dyn(), 0.0, 0.0).unwrap();
    let last = y.index_axis(ndarray::Axis(0), 4).to_owned();
    assert!(
        compare(&y_h, &last.into_dyn(), 1e-3, 0.0).is_err(),
        "Y_h should differ from the last step"
    );
}

#[test]
fn invalid_attributes_and_unknown_ops_are_refused_naming_the_node() {
    let t = tiny();
    let sideways = write_model(
        &t.dir,
        "sideways.onnx",
        &lstm_model(vec![attr_string("direction", "sideways")]),
    );
    assert_user_error(
        &recur(&["inspect", &s(&sideways)]),
        &["node 'lstm0'", "direction", "sideways"],
    );
    assert_user_error(
        &recur(&["run", &s(&sideways), "--input", &s(&t.x)]),
        &["node 'lstm0'", "direction"],
    );
    let mut model = lstm_model(vec![]);
    model.graph.as_mut().unwrap().node[0].op_type = "Frobnicate".into();
    let unknown = write_model(&t.dir, "unknown.onnx", &model);
    assert_user_error(
        &recur(&["run", &s(&unknown), "--input", &s(&t.x)]),
        &["node 'lstm0'", "Frobnicate"],
    );
}

/// The cuDNN backend on a machine without CUDA (CI's): exit status 2 and one line naming
/// the library it looked for, never a silent run on the CPU. On a machine with CUDA and
/// cuDNN the run must instead match the fixture's reference.
#[test]
fn the_cudnn_backend_without_cuda_is_exit_2_naming_what_it_looked_for() {
    let dir = Path::new("models/matrix/lstm_base");
    let out_dir = tempfile::tempdir().unwrap();
    let args = [
        "run",
        "models/matrix/lstm_base/model.onnx",
        "--input",
        "X=models/matrix/lstm_base/in_0.npy",
        "--backend",
        "cudnn",
        "--device",
        "cuda",
        "--out",
        out_dir.path().to_str().unwrap(),
    ];
    let out = recur(&args);
    if out.status.success() {
        let y: ArrayD<f32> = ndarray_npy::read_npy(out_dir.path().join("Y.npy")).unwrap();
        let reference: ArrayD<f32> = ndarray_npy::read_npy(dir.join("out_0.npy")).unwrap();
        if let Err(e) = compare(&y, &reference, 1e-4, 0.0) {
            panic!("cudnn Y: {e}");
        }
        return;
    }
    let err = stderr(&out);
    assert!(
        err.contains("libcudart") || err.contains("libcudnn") || err.contains("CUDA"),
        "{err}"
    );
    assert_user_error(&out, &[]);
    // Without a CUDA device it refuses before it looks for the libraries.
    assert_user_error(&recur(&args[..6]), &["--device cuda"]);
}

/// `inspect` says, without a GPU, which recurrent nodes the cuDNN backend runs there and why
/// the others stay on the CPU.
#[test]
fn inspect_tells_which_nodes_the_cudnn_backend_sends_to_the_gpu() {
    let line = |model: &str| {
        let out = recur(&["inspect", model]);
        assert!(out.status.success(), "{}", stderr(&out));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.lines()
            .find(|l| l.trim_start().starts_with("cudnn"))
            .unwrap_or_else(|| panic!("no cudnn line in:\n{text}"))
            .to_string()
    };
    let stacked = line("models/real/lstm_state_io/model.onnx");
    assert!(
        stacked.contains("yes (2 of 2 recurrent node(s) on the GPU)"),
        "{stacked}"
    );
    let lbr0 = line("models/matrix/gru_lbr0/model.onnx");
    assert!(
        lbr0.contains("0 of 1") && lbr0.contains("linear_before_reset=0"),
        "{lbr0}"
    );
    let keras = line("models/real/masked_lstm/model.onnx");
    assert!(keras.contains("no:") && keras.contains("Cast"), "{keras}");
}

#[test]
fn asking_tract_for_a_gpu_is_refused() {
    let t = tiny();
    assert_user_error(
        &recur(&["run", &s(&t.model), "--input", &s(&t.x), "--device", "cuda"]),
        &["tract", "CPU"],
    );
}

/// A Keras loop whose body is changed into something that is not a recurrence (the cell's
/// tanh replaced by a sine) is refused on the CPU path, naming the Loop node and why; the
/// unchanged model runs (its agreement with ONNX Runtime is checked with every fixture).
#[test]
fn a_loop_that_is_not_a_recognised_recurrence_is_refused_naming_the_node() {
    use prost::Message;
    let dir = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/real/simplernn_forecaster");
    let bytes = std::fs::read(root.join("model.onnx")).unwrap();
    let mut model = tract_onnx::pb::ModelProto::decode(bytes.as_slice()).unwrap();
    let graph = model.graph.as_mut().unwrap();
    let lp = graph
        .node
        .iter_mut()
        .find(|n| n.op_type == "Loop")
        .expect("the fixture has Loops");
    let loop_name = lp.name.clone();
    let body = lp
        .attribute
        .iter_mut()
        .find_map(|a| a.g.as_mut())
        .expect("a body");
    body.node
        .iter_mut()
        .find(|n| n.op_type == "Tanh")
        .expect("SimpleRNN's tanh")
        .op_type = "Sin".into();
    let path = write_model(dir.path(), "sine_loop.onnx", &model);
    let input = root.join("in_0.npy");
    assert_user_error(
        &recur(&["run", &s(&path), "--input", &s(&input)]),
        &[&format!("node '{loop_name}'"), "Loop", "not a recurrence"],
    );
    let report = recur(&["inspect", &s(&path)]);
    assert!(report.status.success());
    let text = String::from_utf8_lossy(&report.stdout);
    assert!(
        text.contains("tract  no") && text.contains("not a recurrence"),
        "{text}"
    );
}

/// `recur bench --json` prints one object with the median and p90 of real runs.
#[test]
fn bench_reports_median_and_p90_as_json() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/real/basicmotions_lstm");
    let out = recur(&[
        "bench",
        &s(&root.join("model.onnx")),
        "--input",
        &s(&root.join("in_0.npy")),
        "--iters",
        "5",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    let median = report["median_us"].as_f64().expect("median_us");
    let p90 = report["p90_us"].as_f64().expect("p90_us");
    assert!(median > 0.0 && p90 >= median, "{report}");
    assert_eq!(report["iters"], 5);
    assert_user_error(
        &recur(&[
            "bench",
            &s(&root.join("model.onnx")),
            "--input",
            &s(&root.join("missing.npy")),
        ]),
        &["missing.npy"],
    );
}

/// Token ids the embedding has no row for are refused before any engine runs (one line naming
/// the input, the id, where it is and the embedding's node), whether the ids reach the Gather
/// directly or through a Cast; the ids ONNX's Gather takes run, a negative one naming the row
/// it counts from the end.
#[test]
fn token_ids_outside_the_embedding_are_refused_naming_the_node() {
    let tmp = tempfile::tempdir().unwrap();
    for cast in [false, true] {
        let model = write_model(
            tmp.path(),
            &format!("embed_cast{cast}.onnx"),
            &embedding_lstm_model(cast),
        );
        let run_ids = |name: &str, ids: Vec<i64>| {
            let tokens = npy(tmp.path(), &format!("{name}.npy"), &[3, 2], ids);
            let out_dir = tmp.path().join(name);
            let out = recur(&[
                "run",
                &s(&model),
                "--input",
                &format!("tokens={}", s(&tokens)),
                "--out",
                &s(&out_dir),
            ]);
            (out, out_dir)
        };
        let (out, _) = run_ids("high", vec![0, 1, 2, 3, 7, 5]);
        assert_user_error(
            &out,
            &[
                "input 'tokens'",
                "token id 7",
                "[2, 0]",
                "'embed0'",
                "7 rows",
            ],
        );
        let (out, _) = run_ids("low", vec![0, -8, 2, 3, 4, 5]);
        assert_user_error(
            &out,
            &["input 'tokens'", "token id -8", "[0, 1]", "'embed0'"],
        );
        // -7 is row 0 and -1 row 6, as ONNX Runtime takes them.
        let (negative, negative_dir) = run_ids("negative", vec![-7, 1, 2, 3, -1, 5]);
        let (positive, positive_dir) = run_ids("positive", vec![0, 1, 2, 3, 6, 5]);
        assert!(negative.status.success(), "{}", stderr(&negative));
        assert!(positive.status.success(), "{}", stderr(&positive));
        let y = |dir: &Path| {
            recur::tensor::read_npy(&dir.join("Y.npy"))
                .unwrap()
                .to_f32()
        };
        compare(&y(&negative_dir), &y(&positive_dir), 0.0, 0.0).unwrap();
        // inspect says which ids the input takes.
        let text = recur(&["inspect", &s(&model)]);
        let text = String::from_utf8_lossy(&text.stdout);
        assert!(text.contains("ids -7..=6 ('embed0')"), "{text}");
        let json = recur(&["inspect", &s(&model), "--json"]);
        let json: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
        assert_eq!(json["inputs"][0]["index_limit"]["rows"], 7, "{json}");
    }
}
