//! CPU path against stock tract and ONNX Runtime's CPU provider, single thread, in one run: a
//! 2-layer LSTM(64) over 100 steps, one step at a time with the state fed back (as graph
//! inputs, and through a streaming session that keeps it), a bidirectional GRU(64), and the
//! BasicMotions classifiers (LSTM and GRU, 40 sequences). `cargo bench --bench cpu` (ONNX
//! Runtime from `.ort/`, see scripts/fetch-ort.sh); docs/PERFORMANCE.md has the numbers.

use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion};
use recur::backend::tract::TractBackend;
use recur::backend::{build_with, Backend, BackendKind, BackendOptions};
use recur::model::Model;
use recur::tensor::{check_inputs, read_npy, CheckedInputs, HostTensor};

fn load(path: &str) -> Model {
    Model::load(Path::new(env!("CARGO_MANIFEST_DIR")).join(path).as_path())
        .expect("bench model loads")
}

fn engines(model: &Model) -> Vec<(&'static str, Box<dyn Backend>)> {
    let mut engines: Vec<(&'static str, Box<dyn Backend>)> = vec![
        (
            "recur",
            Box::new(TractBackend::new(model, &model.path).expect("recur runs it")),
        ),
        (
            "stock-tract",
            Box::new(TractBackend::plain_tract(model).expect("tract parses it")),
        ),
    ];
    let ort_options = BackendOptions {
        ort_threads: Some(1),
        ..Default::default()
    };
    match build_with(BackendKind::Ort, model, &ort_options) {
        Ok(ort) => engines.push(("onnxruntime-cpu", ort)),
        Err(e) => eprintln!("ONNX Runtime left out: {e}"),
    }
    engines
}

fn whole_sequence(c: &mut Criterion, name: &str, model_path: &str, input: &str, input_name: &str) {
    let model = load(model_path);
    let x = read_npy(&Path::new(env!("CARGO_MANIFEST_DIR")).join(input)).unwrap();
    let inputs = check_inputs(&model.ir.inputs, vec![(input_name.to_string(), x)]).unwrap();
    let mut group = c.benchmark_group(name);
    for (engine, mut backend) in engines(&model) {
        backend.run(&inputs).unwrap();
        group.bench_function(engine, |b| b.iter(|| backend.run(&inputs).unwrap()));
    }
    group.finish();
}

fn streamed_step(c: &mut Criterion) {
    let model = load("models/bench/lstm2x64_step.onnx");
    let x = read_npy(&Path::new(env!("CARGO_MANIFEST_DIR")).join("models/bench/x_100x1x8.npy"))
        .unwrap()
        .to_f32();
    let zeros = || HostTensor::F32(ndarray::ArrayD::zeros(ndarray::IxDyn(&[1, 1, 64])));
    let mut group = c.benchmark_group("lstm2x64_one_step_state_fed_back");
    for (engine, mut backend) in engines(&model) {
        let mut state = [zeros(), zeros(), zeros(), zeros()];
        let mut t = 0;
        let mut step = |backend: &mut Box<dyn Backend>| {
            let sample = x
                .slice(ndarray::s![t % 100..t % 100 + 1, .., ..])
                .to_owned()
                .into_dyn();
            t += 1;
            let mut given = vec![("X".to_string(), HostTensor::F32(sample))];
            for (name, s) in ["h1", "c1", "h2", "c2"].iter().zip(&state) {
                given.push((name.to_string(), s.clone()));
            }
            let inputs: CheckedInputs = check_inputs(&model.ir.inputs, given).unwrap();
            let out = backend.run(&inputs).unwrap();
            for (slot, (_, value)) in state.iter_mut().zip(out.into_iter().skip(1)) {
                *slot = value;
            }
        };
        step(&mut backend);
        group.bench_function(engine, |b| b.iter(|| step(&mut backend)));
    }
    group.finish();
}

/// One step of the same 2-layer LSTM through a streaming session (`recur::stream::Session`):
/// the state stays inside the session between calls (host buffers on the CPU path, IO-bound
/// values on ONNX Runtime), the user feeds only the sample.
fn session_step(c: &mut Criterion) {
    use recur::backend::BackendKind;
    use recur::stream::Session;
    let model = load("models/bench/lstm2x64_seq.onnx");
    let x = read_npy(&Path::new(env!("CARGO_MANIFEST_DIR")).join("models/bench/x_100x1x8.npy"))
        .unwrap();
    let mut kinds = vec![("recur", BackendKind::Tract)];
    if cfg!(feature = "ort") {
        kinds.push(("onnxruntime-cpu", BackendKind::Ort));
    }
    let options = BackendOptions {
        ort_threads: Some(1),
        ..Default::default()
    };
    let mut group = c.benchmark_group("lstm2x64_one_step_session");
    for (engine, kind) in kinds {
        let mut session = match Session::new(&model, kind, &options) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("{engine} left out: {e}");
                continue;
            }
        };
        let steps: Vec<Vec<(String, HostTensor)>> = (0..100)
            .map(|t| vec![("X".to_string(), recur::stream::slice(&x, 0, t, t + 1))])
            .collect();
        let mut t = 0;
        session.feed(&steps[0]).unwrap();
        group.bench_function(engine, |b| {
            b.iter(|| {
                t = (t + 1) % 100;
                session.feed(&steps[t]).unwrap()
            })
        });
    }
    group.finish();
}

fn benches(c: &mut Criterion) {
    whole_sequence(
        c,
        "lstm2x64_seq100",
        "models/bench/lstm2x64_seq.onnx",
        "models/bench/x_100x1x8.npy",
        "X",
    );
    streamed_step(c);
    session_step(c);
    whole_sequence(
        c,
        "bigru64_seq100",
        "models/bench/bigru64_seq.onnx",
        "models/bench/x_100x1x8.npy",
        "X",
    );
    whole_sequence(
        c,
        "basicmotions_lstm_batch40",
        "models/real/basicmotions_lstm/model.onnx",
        "models/real/basicmotions_lstm/in_0.npy",
        "x",
    );
    whole_sequence(
        c,
        "basicmotions_gru_batch40",
        "models/real/basicmotions_gru/model.onnx",
        "models/real/basicmotions_gru/in_0.npy",
        "x",
    );
}

criterion_group! {
    name = cpu;
    config = Criterion::default().sample_size(30).measurement_time(std::time::Duration::from_secs(3));
    targets = benches
}
criterion_main!(cpu);
