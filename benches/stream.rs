//! Per-step latency of a streaming session (one step fed per call, state carried), on the CPU
//! path (tract with recur's kernels) and on ONNX Runtime's CPU provider, single thread, for
//! the BasicMotions LSTM(32) classifier, the GRU(32) forecaster and the 2-layer LSTM(16) with
//! state I/O. Also the whole 100-step BasicMotions sequence in one call, for comparison.
//!
//!   cargo bench --bench stream            (needs .ort/, see scripts/fetch-ort.sh)
//!
//! docs/PERFORMANCE.md ("Streaming and ONNX Runtime") has the numbers.

use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion};
use recur::backend::{build_with, BackendKind, BackendOptions};
use recur::model::Model;
use recur::stream::{slice, Session};
use recur::tensor::{check_inputs, read_npy, HostTensor};

fn kinds() -> Vec<(&'static str, BackendKind)> {
    let mut k = vec![("tract", BackendKind::Tract)];
    if cfg!(feature = "ort") {
        k.push(("ort-cpu", BackendKind::Ort));
    }
    k
}

fn options() -> BackendOptions {
    BackendOptions {
        ort_threads: Some(1),
        ..Default::default()
    }
}

fn case(name: &str) -> (Model, Vec<(String, HostTensor)>) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models/real")
        .join(name);
    let model = Model::load(&dir.join("model.onnx")).expect("model loads");
    let text = std::fs::read_to_string(dir.join("case.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let inputs = json["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let t = read_npy(&dir.join(e["file"].as_str().unwrap())).unwrap();
            (e["name"].as_str().unwrap().to_string(), t)
        })
        .collect();
    (model, inputs)
}

/// Keeps only the first `n` rows of the batch axis of the sequence input (one stream).
fn one_stream(
    inputs: &[(String, HostTensor)],
    seq: &str,
    time_axis: usize,
) -> Vec<(String, HostTensor)> {
    let batch_axis = if time_axis == 0 { 1 } else { 0 };
    inputs
        .iter()
        .map(|(n, t)| {
            if n == seq {
                (n.clone(), slice(t, batch_axis, 0, 1))
            } else {
                (n.clone(), t.clone())
            }
        })
        .collect()
}

fn per_step(c: &mut Criterion) {
    for name in ["basicmotions_lstm", "gru_forecaster", "lstm_state_io"] {
        let (model, inputs) = case(name);
        let mut group = c.benchmark_group(format!("stream_step/{name}"));
        for (label, kind) in kinds() {
            let mut session = Session::new(&model, kind, &options()).expect("streamable");
            let (seq, axis) = session.sequence_input();
            let (seq, axis) = (seq.to_string(), axis);
            // lstm_state_io takes h0/c0 for a batch of its own: keep its whole batch.
            let inputs = if name == "lstm_state_io" {
                inputs.clone()
            } else {
                one_stream(&inputs, &seq, axis)
            };
            let x = inputs.iter().find(|(n, _)| *n == seq).unwrap().1.clone();
            let steps: Vec<Vec<(String, HostTensor)>> = (0..x.shape()[axis])
                .map(|t| {
                    inputs
                        .iter()
                        .map(|(n, v)| {
                            if *n == seq {
                                (n.clone(), slice(&x, axis, t, t + 1))
                            } else {
                                (n.clone(), v.clone())
                            }
                        })
                        .collect()
                })
                .collect();
            session.feed(&steps[0]).unwrap();
            let mut i = 1;
            group.bench_function(label, |b| {
                b.iter(|| {
                    let out = session.feed(&steps[i % steps.len()]).unwrap();
                    i += 1;
                    out
                })
            });
        }
        group.finish();
    }
}

fn whole_sequence(c: &mut Criterion) {
    let (model, inputs) = case("basicmotions_lstm");
    let seq = inputs[0].0.clone();
    let inputs = one_stream(&inputs, &seq, 1);
    let checked = check_inputs(&model.ir.inputs, inputs).unwrap();
    let mut group = c.benchmark_group("whole_sequence/basicmotions_lstm_100_steps");
    for (label, kind) in kinds() {
        let mut backend = build_with(kind, &model, &options()).unwrap();
        backend.run(&checked).unwrap();
        group.bench_function(label, |b| b.iter(|| backend.run(&checked).unwrap()));
    }
    group.finish();
}

criterion_group!(benches, per_step, whole_sequence);
criterion_main!(benches);
