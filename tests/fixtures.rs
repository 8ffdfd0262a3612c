//! Every fixture under models/ through the library API on the CPU path (tract with recur's
//! kernels): it matches the ONNX Runtime reference, or the guard refuses it naming the node and
//! the reason. And a standing record of stock tract 0.23.9 on the same fixtures, checking that
//! every case it gets wrong is explained by a known defect.

mod common;

use common::{all_cases, Case};
use recur::backend::tract::TractBackend;
use recur::backend::Backend;
use recur::error::RecurError;
use recur::ir::{Cell, Direction, Layout, RecurrentLayer, SequenceLens};
use recur::model::Model;
use recur::tensor::check_inputs;

enum Outcome {
    Matched(f32),
    Refused(String),
    Failed(String),
}

#[derive(Clone, Copy, PartialEq)]
enum Engine {
    /// The CPU path as users get it: recur's executor when it takes the graph, else tract.
    Recur,
    /// The CPU path through tract only (recur's kernels inside tract).
    TractOnly,
    /// Stock tract 0.23.9.
    Stock,
}

fn run(case: &Case, engine: Engine) -> Outcome {
    run_counting(case, engine).0
}

/// The outcome, and whether recur's own executor produced it.
fn run_counting(case: &Case, engine: Engine) -> (Outcome, bool) {
    let model = Model::load(&case.model_path()).unwrap_or_else(|e| panic!("{}: {e}", case.id()));
    let inputs = check_inputs(&model.ir.inputs, case.read_inputs())
        .unwrap_or_else(|e| panic!("{}: fixture inputs rejected: {e}", case.id()));
    let backend = match engine {
        Engine::Stock => TractBackend::plain_tract(&model),
        Engine::TractOnly => TractBackend::tract_only(&model),
        Engine::Recur => TractBackend::new(&model, &case.model_path()),
    };
    let mut native = false;
    let result = backend.and_then(|mut b| {
        let out = b.run(&inputs);
        native = b.runs_natively();
        out
    });
    let outcome = match result {
        Ok(outputs) => match case.check(&outputs) {
            Ok(err) => Outcome::Matched(err),
            Err(e) => Outcome::Failed(format!("WRONG ANSWER: {e}")),
        },
        Err(RecurError::Unsupported { node, reason, .. }) => {
            assert!(
                model.ir.layers.iter().any(|l| l.node == node),
                "{}: refusal names node '{node}', which the model does not have",
                case.id()
            );
            assert!(
                !reason.is_empty(),
                "{}: refusal without a reason",
                case.id()
            );
            Outcome::Refused(format!("{node}: {reason}"))
        }
        Err(e) => Outcome::Failed(format!("error: {e}")),
    };
    (outcome, native)
}

#[test]
fn every_fixture_matches_on_the_cpu_path_or_is_refused_by_the_guard() {
    let cases = all_cases();
    assert!(
        cases.len() >= 100,
        "expected the fixture set under models/, found {} cases",
        cases.len()
    );
    let (mut matched, mut refused, mut failed) = (vec![], vec![], vec![]);
    let mut native = 0;
    for case in &cases {
        // Both executors of the CPU path must match the reference on their own.
        if let Outcome::Failed(why) = run(case, Engine::TractOnly) {
            failed.push(format!("{:<48} (tract only) {why}", case.id()));
        }
        let (outcome, ran_natively) = run_counting(case, Engine::Recur);
        native += ran_natively as usize;
        match outcome {
            Outcome::Matched(err) => {
                matched.push(format!("{:<48} max abs err {err:.2e}", case.id()))
            }
            Outcome::Refused(why) => refused.push(format!("{:<48} {why}", case.id())),
            Outcome::Failed(why) => failed.push(format!("{:<48} {why}", case.id())),
        }
    }
    println!(
        "matched on the CPU path ({}):\n  {}",
        matched.len(),
        matched.join("\n  ")
    );
    println!(
        "refused by the guard ({}):\n  {}",
        refused.len(),
        refused.join("\n  ")
    );
    println!(
        "summary: {} fixtures, {} matched, {} refused, {} failed; {native} ran on recur's own executor, the rest on tract",
        cases.len(),
        matched.len(),
        refused.len(),
        failed.len()
    );
    assert!(
        native >= 100,
        "recur's executor took only {native} fixtures"
    );
    assert!(
        failed.is_empty(),
        "{} fixtures failed:\n{}",
        failed.len(),
        failed.join("\n")
    );
    for r in &refused {
        assert!(
            r.contains("Loop") || r.contains("not implemented by tract"),
            "refused for a recurrent attribute: {r}"
        );
    }
}

/// The defects of stock tract 0.23.9 that recur measured (and that made its own kernels
/// necessary): a layer showing one of them is expected to come out wrong or fail there.
fn known_stock_tract_defect(r: &RecurrentLayer) -> Option<&'static str> {
    let lstm_plain = matches!(
        r.cell,
        Cell::Lstm {
            peepholes: false,
            ..
        }
    );
    Some(if r.direction == Direction::Reverse {
        "direction=reverse ignored"
    } else if r.custom_activations {
        "activations ignored"
    } else if r.clip.is_some() {
        "clip ignored"
    } else if matches!(
        r.cell,
        Cell::Lstm {
            input_forget: true,
            ..
        }
    ) {
        "input_forget ignored"
    } else if !matches!(r.sequence_lens, SequenceLens::Absent) {
        "sequence_lens: only constant, uniform, full lengths"
    } else if r.layout == Layout::BatchFirst && r.direction == Direction::Bidirectional {
        "layout=1 with bidirectional fails"
    } else if r.cell
        == (Cell::Gru {
            linear_before_reset: true,
        })
        && r.input_size == Some(1)
    {
        "GRU linear_before_reset=1 with input size 1 fails"
    } else if lstm_plain
        && r.direction == Direction::Forward
        && r.layout == Layout::SequenceFirst
        && r.outputs.y_h
        && r.outputs.y_c
        && !r.initial_h.is_present()
    {
        "forward LSTM with Y_h and Y_c, no initial states, batch > 1 fails"
    } else {
        return None;
    })
}

#[test]
fn stock_tract_goes_wrong_only_where_a_known_defect_explains_it() {
    let (mut right, mut wrong, mut unexplained) = (0, vec![], vec![]);
    for case in all_cases() {
        let model = Model::load(&case.model_path()).expect("loads");
        if model.ir.layers.iter().any(|l| l.op == "Loop") {
            continue; // stock tract has no Loop: not a recurrent-attribute defect
        }
        let defects: Vec<&str> = model
            .ir
            .recurrent_layers()
            .filter_map(|(_, r)| known_stock_tract_defect(r))
            .collect();
        match run(&case, Engine::Stock) {
            Outcome::Matched(_) => right += 1,
            Outcome::Refused(why) | Outcome::Failed(why) => {
                if defects.is_empty() {
                    unexplained.push(format!("{}: {why}", case.id()));
                } else {
                    wrong.push(format!("{:<48} {}", case.id(), defects.join(", ")));
                }
            }
        }
    }
    println!(
        "stock tract 0.23.9: {right} right, {} wrong or failing:\n  {}",
        wrong.len(),
        wrong.join("\n  ")
    );
    assert!(
        unexplained.is_empty(),
        "stock tract fails where no known defect explains it:\n{}",
        unexplained.join("\n")
    );
    assert!(
        !wrong.is_empty(),
        "stock tract got every fixture right: recheck the defect list"
    );
}

/// Values no engine takes (a sequence length past the sequence's end) fail the run on recur's
/// executor and on tract alike, and the executor keeps the model: the next run, with good
/// lengths, runs on it and matches the reference. (The executor used to hand a model to
/// tract for good on any run it refused.)
#[test]
fn a_bad_sequence_length_fails_the_run_and_the_executor_keeps_the_model() {
    use recur::tensor::{read_npy, HostTensor};
    let dir = common::repo_root().join("models/matrix/lstm_seqlens_runtime");
    let model = Model::load(&dir.join("model.onnx")).unwrap();
    let mut backend = TractBackend::new(&model, &model.path).unwrap();
    assert!(backend.runs_natively());
    let x = read_npy(&dir.join("in_0.npy")).unwrap();
    let inputs = |lens: HostTensor| {
        let given = vec![("X".to_string(), x.clone()), ("sequence_lens".into(), lens)];
        check_inputs(&model.ir.inputs, given).unwrap()
    };
    let bad = HostTensor::I32(ndarray::arr1(&[9, 99, 2]).into_dyn());
    let err = backend.run(&inputs(bad)).unwrap_err().to_string();
    assert!(err.contains("sequence_lens") && err.contains("99"), "{err}");
    assert!(
        backend.runs_natively(),
        "the executor gave way: {:?}",
        backend.gave_way()
    );
    let good = read_npy(&dir.join("in_1.npy")).unwrap();
    let out = backend.run(&inputs(good)).unwrap();
    assert!(backend.runs_natively());
    let reference = read_npy(&dir.join("out_0.npy")).unwrap().to_f32();
    common::compare(&out[0].1.to_f32(), &reference, 1e-5, 0.0).unwrap();
}
