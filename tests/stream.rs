//! Streaming sessions on both backends: for every causal fixture, feeding the sequence in
//! chunks of 1, 7 and the whole length gives the whole-sequence run within 1e-5; every other
//! fixture is refused naming the node and why. And `recur convert --streamable` and
//! `recur run --stream` through the binary.

mod common;
#[path = "common/onnx_builder.rs"]
mod onnx_builder;

use std::path::Path;

use assert_cmd::Command;
use common::{all_cases, compare, Case};
use recur::backend::{build_with, BackendKind, BackendOptions};
use recur::error::RecurError;
use recur::model::Model;
use recur::stream::Session;
use recur::tensor::{check_inputs, read_npy, CheckedInputs};

const TOLERANCE: f32 = 1e-5;

fn backends() -> Vec<BackendKind> {
    let mut kinds = vec![BackendKind::Tract];
    if cfg!(feature = "ort") {
        kinds.push(BackendKind::Ort);
    }
    kinds
}

fn options() -> BackendOptions {
    BackendOptions {
        ort_threads: Some(1),
        ..Default::default()
    }
}

enum Outcome {
    Streamed(String),
    Refused(String),
}

/// Fails the test when recur's executor handed `backend` to tract: tract gives the right
/// numbers too, so a step path that panicked would otherwise go unseen.
fn assert_executor_kept(backend: &recur::backend::tract::TractBackend, case: &Case, what: &str) {
    if let Some(why) = backend.gave_way() {
        panic!(
            "{}: {what}: recur's executor gave way to tract: {why}",
            case.id()
        );
    }
}

fn stream_case(case: &Case, kind: BackendKind) -> Result<Outcome, String> {
    let model = Model::load(&case.model_path()).map_err(|e| e.to_string())?;
    let inputs = check_inputs(&model.ir.inputs, case.read_inputs()).map_err(|e| e.to_string())?;
    let whole = match build_with(kind, &model, &options()).and_then(|mut b| b.run(&inputs)) {
        Ok(out) => out,
        // The CPU path refuses Loop fixtures; streaming refuses those too (checked below).
        Err(RecurError::Unsupported { node, reason, .. }) => {
            return Ok(Outcome::Refused(format!(
                "{kind:?} whole run: '{node}': {reason}"
            )))
        }
        Err(e) => return Err(format!("whole run: {e}")),
    };
    let mut session = match Session::new(&model, kind, &options()) {
        Ok(s) => s,
        Err(RecurError::Unsupported {
            node, op, reason, ..
        }) => {
            assert!(
                model.ir.layers.iter().any(|l| l.node == node),
                "{}: refusal names unknown node '{node}'",
                case.id()
            );
            return Ok(Outcome::Refused(format!("'{node}' ({op}): {reason}")));
        }
        Err(e) => return Err(format!("session: {e}")),
    };
    let (seq, axis) = session.sequence_input();
    let (seq, axis) = (seq.to_string(), axis);
    let total = inputs
        .tensors
        .iter()
        .find(|(n, _)| *n == seq)
        .map(|(_, t)| t.shape()[axis])
        .ok_or("no sequence input")?;
    let mut worst = 0f32;
    for chunk in [1, 7, total] {
        let streamed = match session.run_chunked(&inputs.tensors, chunk) {
            Ok(out) => out,
            Err(RecurError::Usage(why)) if why.contains("not causal") => {
                return Ok(Outcome::Refused(why))
            }
            Err(e) => return Err(format!("chunk {chunk}: {e}")),
        };
        for ((name, a), (_, b)) in streamed.iter().zip(&whole) {
            worst = worst.max(
                compare(&a.to_f32(), &b.to_f32(), TOLERANCE, 0.0)
                    .map_err(|e| format!("chunk {chunk}, output '{name}': {e}"))?,
            );
        }
    }
    Ok(Outcome::Streamed(format!(
        "{} steps, {} state tensors, max abs diff {worst:.1e}",
        total,
        session.states().len()
    )))
}

#[test]
fn chunks_of_1_7_and_all_equal_the_whole_sequence_on_both_backends() {
    for kind in backends() {
        let (mut streamed, mut refused, mut failed) = (vec![], vec![], vec![]);
        for case in all_cases() {
            match stream_case(&case, kind) {
                Ok(Outcome::Streamed(s)) => streamed.push(format!("{:<48} {s}", case.id())),
                Ok(Outcome::Refused(s)) => refused.push(format!("{:<48} {s}", case.id())),
                Err(e) => failed.push(format!("{}: {e}", case.id())),
            }
        }
        println!(
            "{kind:?}: streamed ({}):\n  {}\nrefused ({}):\n  {}",
            streamed.len(),
            streamed.join("\n  "),
            refused.len(),
            refused.join("\n  ")
        );
        assert!(failed.is_empty(), "{kind:?}:\n{}", failed.join("\n"));
        assert!(
            streamed.len() >= 30,
            "{kind:?}: only {} fixtures streamed",
            streamed.len()
        );
        for r in &refused {
            assert!(
                [
                    "bidirectional",
                    "reverse",
                    "sequence_lens",
                    "loop",
                    "Loop",
                    "not causal"
                ]
                .iter()
                .any(|w| r.contains(w)),
                "{kind:?}: unexpected refusal: {r}"
            );
        }
    }
}

#[test]
fn a_state_carrying_model_continues_a_sequence_fed_in_two_calls() {
    let dir = common::repo_root().join("models/real/lstm_state_io");
    let model = Model::load(&dir.join("model.onnx")).unwrap();
    let inputs = vec![
        ("x".to_string(), read_npy(&dir.join("in_0.npy")).unwrap()),
        ("h0".to_string(), read_npy(&dir.join("in_1.npy")).unwrap()),
        ("c0".to_string(), read_npy(&dir.join("in_2.npy")).unwrap()),
    ];
    for kind in backends() {
        let mut session = Session::new(&model, kind, &options()).unwrap();
        assert_eq!(session.states().len(), 4, "2 layers x (h, c)");
        let (seq, axis) = session.sequence_input();
        assert_eq!((seq, axis), ("x", 0));
        let x = &inputs[0].1;
        let t = x.shape()[0];
        let mut ys = Vec::new();
        let mut last = Vec::new();
        for (a, b) in [(0, 3), (3, t)] {
            let mut fed = inputs.clone();
            fed[0].1 = recur::stream::slice(x, 0, a, b);
            last = session.feed(&fed).unwrap();
            ys.push(last[0].1.to_f32());
        }
        assert_eq!(session.steps_seen(), t);
        let views: Vec<_> = ys.iter().map(|a| a.view()).collect();
        let y = ndarray::concatenate(ndarray::Axis(0), &views).unwrap();
        let want = read_npy(&dir.join("out_0.npy")).unwrap().to_f32();
        compare(&y, &want, 1e-5, 0.0).unwrap();
        let hn = read_npy(&dir.join("out_1.npy")).unwrap().to_f32();
        compare(&last[1].1.to_f32(), &hn, 1e-5, 0.0).unwrap();
    }
}

fn recur(args: &[&str]) -> std::process::Output {
    Command::cargo_bin("recur")
        .unwrap()
        .args(args)
        .output()
        .unwrap()
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

#[test]
fn run_stream_through_the_binary_matches_the_reference() {
    let dir = common::repo_root().join("models/real/gru_forecaster");
    let tmp = tempfile::tempdir().unwrap();
    let model = s(&dir.join("model.onnx"));
    let x = s(&dir.join("in_0.npy"));
    let want = read_npy(&dir.join("out_0.npy")).unwrap().to_f32();
    for backend in backends() {
        let backend = format!("{backend:?}").to_lowercase();
        for chunk in ["1", "7"] {
            let out_dir = tmp.path().join(format!("{backend}{chunk}"));
            let out = recur(&[
                "run",
                &model,
                "--input",
                &x,
                "--backend",
                &backend,
                "--stream",
                "--chunk",
                chunk,
                "--out",
                &s(&out_dir),
            ]);
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let file = std::fs::read_dir(&out_dir)
                .unwrap()
                .next()
                .unwrap()
                .unwrap()
                .path();
            let got = read_npy(&file).unwrap().to_f32();
            compare(&got, &want, 1e-5, 0.0).unwrap();
        }
    }
}

#[test]
fn convert_streamable_writes_a_model_with_state_inputs_and_outputs() {
    let dir = common::repo_root().join("models/real/gru_forecaster");
    let tmp = tempfile::tempdir().unwrap();
    let out_model = tmp.path().join("streamable.onnx");
    let out = recur(&[
        "convert",
        &s(&dir.join("model.onnx")),
        "--streamable",
        "-o",
        &s(&out_model),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let converted = Model::load(&out_model).unwrap();
    let states: Vec<&str> = converted
        .ir
        .inputs
        .iter()
        .map(|i| i.name.as_str())
        .filter(|n| n.starts_with("recur_state."))
        .collect();
    assert!(
        !states.is_empty(),
        "no state inputs in {:?}",
        converted.ir.inputs
    );
    let original = Model::load(&dir.join("model.onnx")).unwrap();
    assert_eq!(
        converted.ir.outputs.len(),
        original.ir.outputs.len() + states.len(),
        "one state output per state input: {:?}",
        converted.ir.outputs
    );
    // Fed zero states (the original starts from zeros), the converted model gives the
    // original's outputs, on both backends.
    let x = read_npy(&dir.join("in_0.npy")).unwrap();
    let want = read_npy(&dir.join("out_0.npy")).unwrap().to_f32();
    let batch = x.shape()[0];
    for kind in backends() {
        let mut given = vec![(original.ir.inputs[0].name.clone(), x.clone())];
        for name in &states {
            given.push((
                name.to_string(),
                recur::tensor::HostTensor::F32(ndarray::ArrayD::zeros(ndarray::IxDyn(&[
                    1, batch, 32,
                ]))),
            ));
        }
        let inputs = check_inputs(&converted.ir.inputs, given).unwrap();
        let out = build_with(kind, &converted, &options())
            .unwrap()
            .run(&inputs)
            .unwrap();
        compare(&out[0].1.to_f32(), &want, 1e-5, 0.0).unwrap();
    }
}

#[test]
fn bidirectional_models_are_refused_for_streaming_naming_the_node() {
    let dir = common::repo_root().join("models/real/bilstm_classifier");
    let x = s(&dir.join("in_0.npy"));
    let out = recur(&[
        "run",
        &s(&dir.join("model.onnx")),
        "--input",
        &x,
        "--stream",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("bidirectional") && err.contains("node '"),
        "{err}"
    );
}

#[test]
fn a_graph_that_looks_ahead_is_refused_for_streaming() {
    // LSTM, then the mean of Y over time: every output depends on the last step.
    let mut model = onnx_builder::lstm_model(vec![]);
    let graph = model.graph.as_mut().unwrap();
    graph.node.push(tract_onnx::pb::NodeProto {
        name: "mean_over_time".into(),
        op_type: "ReduceMean".into(),
        input: vec!["Y".into()],
        output: vec!["M".into()],
        attribute: vec![
            tract_onnx::pb::AttributeProto {
                name: "axes".into(),
                r#type: 7,
                ints: vec![0],
                ..Default::default()
            },
            onnx_builder::attr_int("keepdims", 0),
        ],
        ..Default::default()
    });
    graph.output = vec![graph.output[1].clone()];
    graph.output[0].name = "M".into();
    if let Some(tract_onnx::pb::type_proto::Value::TensorType(t)) = graph.output[0]
        .r#type
        .as_mut()
        .and_then(|t| t.value.as_mut())
    {
        t.shape = None;
    }
    let tmp = tempfile::tempdir().unwrap();
    let path = onnx_builder::write_model(tmp.path(), "lookahead.onnx", &model);
    let model = Model::load(&path).unwrap();
    let x = recur::tensor::HostTensor::F32(ndarray::ArrayD::from_shape_fn(
        ndarray::IxDyn(&[6, 1, 3]),
        |i| (i[0] as f32 * 0.7 + i[2] as f32 * 0.3).sin(),
    ));
    for kind in backends() {
        let mut session = Session::new(&model, kind, &options()).unwrap();
        match session.run_chunked(&[("X".to_string(), x.clone())], 2) {
            Err(RecurError::Usage(why)) => assert!(why.contains("not causal"), "{why}"),
            other => panic!(
                "{kind:?}: expected a refusal, got {:?}",
                other.map(|o| o.len())
            ),
        }
    }
}

#[test]
fn bench_stream_json_reports_per_step_latency_on_both_backends() {
    let dir = common::repo_root().join("models/real/gru_forecaster");
    let model = s(&dir.join("model.onnx"));
    let x = s(&dir.join("in_0.npy"));
    for backend in backends() {
        let backend = format!("{backend:?}").to_lowercase();
        let out = recur(&[
            "bench",
            &model,
            "--input",
            &x,
            "--backend",
            &backend,
            "--ort-threads",
            "1",
            "--stream",
            "--chunk",
            "4",
            "--iters",
            "10",
            "--json",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        for key in ["median_us", "p90_us", "per_step_us"] {
            assert!(v[key].as_f64().is_some_and(|t| t > 0.0), "{key} in {v}");
        }
        assert_eq!(v["chunk"], 4);
    }
}

#[test]
fn inspect_says_whether_a_model_streams() {
    for (case, streams) in [("gru_forecaster", true), ("bilstm_classifier", false)] {
        let model = common::repo_root()
            .join("models/real")
            .join(case)
            .join("model.onnx");
        let out = recur(&["inspect", &s(&model), "--json"]);
        assert!(out.status.success());
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            v["paths"]["stream"]["runs"], streams,
            "{case}: {}",
            v["paths"]
        );
    }
}

/// One time step of every streamable fixture (its sequence input cut to the first step), on
/// the CPU path's step path (every buffer kept between runs): the same outputs as tract with
/// recur's kernels and as ONNX Runtime, within 1e-5; a second run on the kept buffers gives
/// the first run's outputs bit for bit.
#[test]
fn one_time_step_on_the_step_path_matches_tract_and_onnx_runtime() {
    use recur::backend::tract::TractBackend;
    use recur::backend::Backend;
    use recur::tensor::HostTensor;

    let floats = |outputs: &[(String, HostTensor)]| -> Vec<(String, ndarray::ArrayD<f32>)> {
        outputs
            .iter()
            .map(|(n, t)| (n.clone(), t.to_f32()))
            .collect()
    };
    let mut stepped = vec![];
    for case in all_cases() {
        let model = Model::load(&case.model_path()).unwrap();
        let Ok(plan) = recur::onnx::streamable::make_streamable(&model.proto, &model.ir) else {
            continue;
        };
        let given: Vec<(String, HostTensor)> = case
            .read_inputs()
            .into_iter()
            .map(|(name, t)| {
                let t = if name == plan.sequence_input {
                    recur::stream::slice(&t, plan.time_axis, 0, 1)
                } else {
                    t
                };
                (name, t)
            })
            .collect();
        // Models that declare a fixed sequence length take no single step.
        let Ok(inputs) = check_inputs(&model.ir.inputs, given) else {
            continue;
        };
        let Ok(mut recur) = TractBackend::new(&model, &model.path) else {
            continue;
        };
        let first = recur.run(&inputs).unwrap();
        let again = recur.run(&inputs).unwrap();
        assert_executor_kept(&recur, &case, "two steps");
        if recur.step_path_runs() != 2 {
            continue;
        }
        assert_eq!(first, again, "{}: a second step on kept buffers", case.id());
        // A whole sequence between steps runs on the general executor and keeps the step
        // program: the next step takes the step path without a rebuild, on the same answer.
        // (Fixtures whose sequence is one step long have no other shape to try.)
        let whole = check_inputs(&model.ir.inputs, case.read_inputs()).unwrap();
        let shapes = |c: &CheckedInputs| -> Vec<Vec<usize>> {
            c.tensors.iter().map(|(_, t)| t.shape().to_vec()).collect()
        };
        let one_step_long = shapes(&whole) == shapes(&inputs);
        recur.run(&whole).unwrap();
        let after = recur.run(&inputs).unwrap();
        assert_executor_kept(&recur, &case, "a step after a whole sequence");
        assert_eq!(
            (recur.step_path_runs(), recur.step_path_builds()),
            (if one_step_long { 4 } else { 3 }, 1),
            "{}: step runs and builds around a whole sequence",
            case.id()
        );
        assert_eq!(first, after, "{}: a step after a whole sequence", case.id());
        let mut references = vec![(
            "tract",
            TractBackend::tract_only(&model)
                .and_then(|mut b| b.run(&inputs))
                .unwrap(),
        )];
        if cfg!(feature = "ort") {
            let ort = build_with(BackendKind::Ort, &model, &options())
                .and_then(|mut b| b.run(&inputs))
                .unwrap();
            references.push(("onnxruntime", ort));
        }
        for (engine, reference) in references {
            let (got, want) = (floats(&first), floats(&reference));
            assert_eq!(got.len(), want.len(), "{}: outputs", case.id());
            for ((name, a), (_, b)) in got.iter().zip(&want) {
                compare(a, b, TOLERANCE, TOLERANCE)
                    .unwrap_or_else(|e| panic!("{} output '{name}' vs {engine}: {e}", case.id()));
            }
        }
        stepped.push(case.id());
    }
    println!("{} fixtures stepped: {}", stepped.len(), stepped.join(", "));
    assert!(
        stepped.len() >= 20,
        "only {} fixtures took the step path",
        stepped.len()
    );
}

/// The CPU path reads and writes a stream's carried state where it lies
/// (`Backend::run_carried` on recur's executor). For every streamable fixture, it gives what
/// feeding the state as ordinary inputs gives (`run_carried_as_inputs`, the path every other
/// backend takes), bit for bit: outputs and state after a first chunk, then after one-step
/// chunks (the step path) and a three-step chunk (the general executor) in turn. A chunk
/// refused for a bad input leaves the state as it was.
#[test]
fn state_carried_in_place_equals_state_fed_as_inputs_bit_for_bit() {
    use recur::backend::tract::TractBackend;
    use recur::backend::{run_carried_as_inputs, Backend, Carried};
    use recur::tensor::HostTensor;

    let mut checked = vec![];
    for case in all_cases() {
        let model = Model::load(&case.model_path()).unwrap();
        let Ok(plan) = recur::onnx::streamable::make_streamable(&model.proto, &model.ir) else {
            continue;
        };
        let build = |proto: &tract_onnx::pb::ModelProto| -> Option<(Model, TractBackend)> {
            let m = Model {
                path: model.path.clone(),
                ir: recur::onnx::lift(proto).ok()?,
                proto: proto.clone(),
            };
            let b = TractBackend::new(&m, &m.path).ok()?;
            Some((m, b))
        };
        let (Some((first, mut first_a)), Some((carry, mut carry_a))) =
            (build(&plan.first), build(&plan.carry))
        else {
            continue;
        };
        let (_, mut first_b) = build(&plan.first).unwrap();
        let (_, mut carry_b) = build(&plan.carry).unwrap();
        if !carry_a.runs_natively() {
            continue;
        }
        let inputs = case.read_inputs();
        let x = &inputs
            .iter()
            .find(|(n, _)| *n == plan.sequence_input)
            .unwrap()
            .1;
        let total = x.shape()[plan.time_axis];
        let chunk = |m: &Model, start: usize, end: usize| {
            let given: Vec<(String, HostTensor)> = inputs
                .iter()
                .filter(|(n, _)| m.ir.inputs.iter().any(|d| d.name == *n))
                .map(|(n, t)| {
                    let t = if *n == plan.sequence_input {
                        recur::stream::slice(t, plan.time_axis, start, end)
                    } else {
                        t.clone()
                    };
                    (n.clone(), t)
                })
                .collect();
            let declared: Vec<_> =
                m.ir.inputs
                    .iter()
                    .filter(|d| plan.states.iter().all(|w| w.input != d.name))
                    .cloned()
                    .collect();
            check_inputs(&declared, given)
        };
        let Ok(head) = chunk(&first, 0, 1) else {
            continue;
        };
        let (mut state_a, mut state_b) = (Vec::new(), Vec::new());
        fn carried<'a>(
            plan: &'a recur::onnx::streamable::Streamable,
            values: &'a mut Vec<HostTensor>,
        ) -> Carried<'a> {
            Carried {
                wires: &plan.states,
                values,
                user_outputs: &plan.user_outputs,
            }
        }
        // One chunk both ways: in place on `a`, as inputs on `b`; the same outputs and state.
        let both = |a: &mut TractBackend,
                    b: &mut TractBackend,
                    fed: CheckedInputs,
                    state_a: &mut Vec<HostTensor>,
                    state_b: &mut Vec<HostTensor>,
                    what: &str| {
            let out_a = a.run_carried(&fed, carried(&plan, state_a)).unwrap();
            let out_b = run_carried_as_inputs(b, &fed, carried(&plan, state_b)).unwrap();
            assert_eq!(out_a, out_b, "{}: {what}: outputs", case.id());
            assert_eq!(state_a, state_b, "{}: {what}: state", case.id());
        };
        both(
            &mut first_a,
            &mut first_b,
            head,
            &mut state_a,
            &mut state_b,
            "first chunk",
        );
        let runs_before = carry_a.step_path_runs();
        let mut start = 1;
        let mut sizes = [1, 3].into_iter().cycle();
        while start < total {
            let end = (start + sizes.next().unwrap()).min(total);
            let Ok(fed) = chunk(&carry, start, end) else {
                break;
            };
            let what = format!("steps {start}..{end}");
            both(
                &mut carry_a,
                &mut carry_b,
                fed,
                &mut state_a,
                &mut state_b,
                &what,
            );
            start = end;
        }
        assert_executor_kept(&first_a, &case, "first chunk");
        assert_executor_kept(&carry_a, &case, "later chunks");
        if carry_a.step_path_runs() > runs_before {
            checked.push(case.id());
        }
        // A chunk whose state does not fit the model is refused, and the state stays.
        if let (Ok(fed), Some(_)) = (chunk(&carry, 0, 1), state_a.first()) {
            let mut bad = state_a.clone();
            bad[0] = HostTensor::F32(ndarray::ArrayD::zeros(vec![1]));
            let before = bad.clone();
            let refused = carry_a.run_carried(&fed, carried(&plan, &mut bad));
            assert!(
                refused.is_err(),
                "{}: a state of the wrong shape",
                case.id()
            );
            assert_eq!(bad, before, "{}: state after a refused chunk", case.id());
        }
    }
    println!(
        "{} fixtures streamed in place: {}",
        checked.len(),
        checked.join(", ")
    );
    assert!(checked.len() >= 20, "only {} fixtures", checked.len());
}
