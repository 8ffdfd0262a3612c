//! Every fixture under models/ through the library API on the tract path: it matches the
//! ONNX Runtime reference, or the guard refuses it naming the node and the reason. And every
//! refusal is justified: plain tract (no guard) really fails or is wrong on that fixture.

mod common;

use common::{all_cases, Case};
use recur::backend::tract::TractBackend;
use recur::backend::Backend;
use recur::error::RecurError;
use recur::model::Model;
use recur::tensor::check_inputs;

enum Outcome {
    Matched(f32),
    Refused(String),
    Failed(String),
}

fn run_guarded(case: &Case) -> Outcome {
    let model = Model::load(&case.model_path()).unwrap_or_else(|e| panic!("{}: {e}", case.id()));
    let inputs = check_inputs(&model.ir.inputs, case.read_inputs())
        .unwrap_or_else(|e| panic!("{}: fixture inputs rejected: {e}", case.id()));
    let result = TractBackend::new(&model, &case.model_path()).and_then(|mut b| b.run(&inputs));
    match result {
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
        Err(e) => Outcome::Failed(format!("engine error not caught by the guard: {e}")),
    }
}

#[test]
fn every_fixture_matches_on_tract_or_is_refused_by_the_guard() {
    let cases = all_cases();
    assert!(
        cases.len() >= 50,
        "expected the fixture set under models/, found {} cases",
        cases.len()
    );
    let (mut matched, mut refused, mut failed) = (vec![], vec![], vec![]);
    for case in &cases {
        match run_guarded(case) {
            Outcome::Matched(err) => {
                matched.push(format!("{:<48} max abs err {err:.2e}", case.id()))
            }
            Outcome::Refused(why) => refused.push(format!("{:<48} {why}", case.id())),
            Outcome::Failed(why) => failed.push(format!("{:<48} {why}", case.id())),
        }
    }
    println!(
        "matched on tract ({}):\n  {}",
        matched.len(),
        matched.join("\n  ")
    );
    println!(
        "refused by the guard ({}):\n  {}",
        refused.len(),
        refused.join("\n  ")
    );
    println!(
        "summary: {} fixtures, {} matched, {} refused, {} failed",
        cases.len(),
        matched.len(),
        refused.len(),
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "{} fixtures failed:\n{}",
        failed.len(),
        failed.join("\n")
    );
    assert!(!matched.is_empty());
}

/// A guard rule that refuses a model tract computes right would turn users away for nothing;
/// this keeps every rule tied to a measured failure of plain tract.
#[test]
fn every_refusal_is_a_case_plain_tract_gets_wrong_or_fails() {
    let mut needless = vec![];
    let mut justified = 0;
    for case in all_cases() {
        if !matches!(run_guarded(&case), Outcome::Refused(_)) {
            continue;
        }
        let model = Model::load(&case.model_path()).expect("loads");
        let inputs = check_inputs(&model.ir.inputs, case.read_inputs()).expect("inputs");
        let plain = TractBackend::unguarded(&model).and_then(|mut b| b.run(&inputs));
        match plain {
            Ok(outputs) if case.check(&outputs).is_ok() => needless.push(case.id()),
            _ => justified += 1,
        }
    }
    println!("refusals where plain tract is wrong or fails: {justified}");
    assert!(
        needless.is_empty(),
        "the guard refuses fixtures plain tract computes correctly: {needless:?}"
    );
}
