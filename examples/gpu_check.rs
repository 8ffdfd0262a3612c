//! GPU check: every fixture under models/ on ONNX Runtime's CUDA provider against its CPU
//! provider (same library, same process), with the largest absolute difference per fixture
//! (tolerance 1e-4) and the median latency of each. `scripts/gpu-check.sh` builds and runs it
//! on a GPU machine; the library comes from ORT_DYLIB_PATH (ONNX Runtime's CUDA build).
//!
//! Then the latency table of issue 4: a 2-layer LSTM at the three sizes (input, hidden, steps,
//! batch) = (8, 64, 100, 1), (8, 64, 100, 256), (32, 256, 200, 1024) on ONNX Runtime's CUDA
//! and CPU providers through recur; the same models go to `.gpu/latency/` so that
//! `scripts/gpu_cudnn_lstm.py` times PyTorch's cuDNN LSTM on the same shapes.
//!
//!   gpu_check [--backend ort|cudnn] [--device cuda:N] [--iters N] [--filter SUBSTRING]
//!             [--latency-only] [--tf32]
//!             [--sizes "I,H,T,B;I,H,T,B;..."]   (the latency table's sizes; default issue 4's)
//!
//! `--backend cudnn` checks recur's cuDNN backend instead (`--backend cudnn --device cuda`),
//! against recur's CPU path (tract backend) in the same process: every fixture it compiles
//! (the others are listed as refused, with the reason), the same streaming models, and the
//! latency table; it needs no ONNX Runtime.
//!
//! `--tf32` lets CUDA's matrix products use TensorFloat-32 (`--cuda-tf32`); by default they
//! are f32.

use std::path::{Path, PathBuf};

#[path = "../tests/common/onnx_builder.rs"]
mod onnx_builder;
use std::time::Instant;

use recur::backend::{build_with, BackendKind, BackendOptions, Device};
use recur::model::Model;
use recur::tensor::{check_inputs, read_npy, CheckedInputs, HostTensor};

const TOLERANCE: f32 = 1e-4;

fn cases(root: &Path) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for group in ["node", "matrix", "real"] {
        if let Ok(entries) = std::fs::read_dir(root.join("models").join(group)) {
            dirs.extend(
                entries
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| p.join("case.json").is_file()),
            );
        }
    }
    dirs.sort();
    dirs
}

fn inputs(dir: &Path, model: &Model) -> recur::Result<CheckedInputs> {
    let text = std::fs::read_to_string(dir.join("case.json")).expect("case.json");
    let json: serde_json::Value = serde_json::from_str(&text).expect("case.json parses");
    let given = json["inputs"]
        .as_array()
        .expect("inputs")
        .iter()
        .map(|e| {
            let name = e["name"].as_str().expect("name").to_string();
            Ok((
                name,
                read_npy(&dir.join(e["file"].as_str().expect("file")))?,
            ))
        })
        .collect::<recur::Result<Vec<_>>>()?;
    check_inputs(&model.ir.inputs, given)
}

/// The largest absolute difference between two runs' outputs, output by output (infinite
/// when an output's shape differs).
fn max_abs_diff(a: &[(String, HostTensor)], b: &[(String, HostTensor)]) -> f32 {
    let mut worst = 0f32;
    for ((_, a), (_, b)) in a.iter().zip(b) {
        let (a, b) = (a.to_f32(), b.to_f32());
        if a.shape() != b.shape() {
            return f32::INFINITY;
        }
        for (p, q) in a.iter().zip(b.iter()) {
            worst = worst.max((p - q).abs());
        }
    }
    worst
}

fn median_us(
    backend: &mut Box<dyn recur::backend::Backend>,
    x: &CheckedInputs,
    iters: usize,
) -> f64 {
    let _ = backend.run(x);
    let mut t: Vec<f64> = (0..iters)
        .map(|_| {
            let start = Instant::now();
            let _ = backend.run(x);
            start.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

/// Streaming sessions on the device against the CPU provider: chunks of one step give the
/// same outputs (within the tolerance), and the median latency of one step with the state
/// carried. Returns the number of failures.
fn streaming(root: &Path, pair: &Pair, iters: usize) -> usize {
    let (cpu, gpu) = (&pair.cpu, &pair.gpu);
    use recur::stream::{slice, Session};
    println!(
        "\n{:<28} {:>10} {:>6} {:>14} {:>14}",
        "streaming, 1 step per call",
        "max|d|",
        "ok",
        "cpu_us/step",
        format!("{}_us/step", gpu.device)
    );
    let mut failed = 0;
    for name in [
        "basicmotions_lstm",
        "gru_forecaster",
        "lstm_state_io",
        "digits_rnn",
    ] {
        let dir = root.join("models/real").join(name);
        let result = (|| -> recur::Result<(f32, f64, f64)> {
            let model = Model::load(&dir.join("model.onnx"))?;
            let x = inputs(&dir, &model)?;
            let mut per_step = Vec::new();
            let mut outs = Vec::new();
            for (kind, options) in [(pair.cpu_kind, cpu), (pair.gpu_kind, gpu)] {
                let mut session = Session::new(&model, kind, options)?;
                outs.push(session.run_chunked(&x.tensors, 1)?);
                let (seq, axis) = session.sequence_input();
                let (seq, axis) = (seq.to_string(), axis);
                let t = x.tensors.iter().find(|(n, _)| *n == seq).unwrap().1.clone();
                let step: Vec<_> = x
                    .tensors
                    .iter()
                    .map(|(n, v)| {
                        if *n == seq {
                            (n.clone(), slice(&t, axis, 0, 1))
                        } else {
                            (n.clone(), v.clone())
                        }
                    })
                    .collect();
                session.reset();
                session.feed(&step)?;
                let mut times: Vec<f64> = (0..iters)
                    .map(|_| {
                        let start = Instant::now();
                        let _ = session.feed(&step);
                        start.elapsed().as_secs_f64() * 1e6
                    })
                    .collect();
                times.sort_by(f64::total_cmp);
                per_step.push(times[times.len() / 2]);
            }
            Ok((max_abs_diff(&outs[0], &outs[1]), per_step[0], per_step[1]))
        })();
        match result {
            Ok((worst, c, g)) => {
                let ok = worst <= TOLERANCE;
                if !ok {
                    failed += 1;
                }
                println!(
                    "{name:<28} {worst:>10.2e} {:>6} {c:>14.1} {g:>14.1}",
                    if ok { "yes" } else { "NO" }
                );
            }
            Err(e) => {
                failed += 1;
                println!("{name:<28} error: {e}");
            }
        }
    }
    failed
}

/// The backends compared: one on the GPU, its reference on the CPU.
struct Pair {
    cpu_kind: BackendKind,
    gpu_kind: BackendKind,
    cpu: BackendOptions,
    gpu: BackendOptions,
}

/// The backend on the device, with a note of where the recurrent nodes run (cuDNN: how
/// many on the GPU, and the algorithm of each stack).
fn device_backend(
    pair: &Pair,
    model: &Model,
) -> recur::Result<(Box<dyn recur::backend::Backend>, String)> {
    if pair.gpu_kind == BackendKind::Cudnn {
        let b = recur::backend::cudnn::CudnnBackend::new(model, &pair.gpu)?;
        let on = b
            .placements()
            .iter()
            .filter(|p| p.cpu_because.is_none())
            .count();
        let note = format!("{on}/{} {:?}", b.placements().len(), b.algorithms());
        return Ok((Box::new(b), note));
    }
    Ok((build_with(pair.gpu_kind, model, &pair.gpu)?, String::new()))
}

/// The sizes of issue 4's latency table: (input, hidden, steps, batch).
const LATENCY_SIZES: [(i64, i64, i64, i64); 3] =
    [(8, 64, 100, 1), (8, 64, 100, 256), (32, 256, 200, 1024)];

/// A 2-layer LSTM as PyTorch exports one, random constant weights: X `[steps, batch,
/// input]` -> LSTM(hidden) -> Squeeze(1) -> LSTM(hidden) -> Y_h `[1, batch, hidden]`; or,
/// `bidirectional`, both layers bidirectional, joined by Transpose(0, 2, 1, 3) and
/// Reshape(0, 0, -1), giving Y `[steps, 2, batch, hidden]` and Y_h `[2, batch, hidden]`.
fn two_layer_lstm(input: i64, hidden: i64, bidirectional: bool) -> tract_onnx::pb::ModelProto {
    use onnx_builder::{attr_int, attr_string, f32_tensor, value_info, D};
    use tract_onnx::pb::{GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto};
    let dirs = if bidirectional { 2 } else { 1 };
    let lstm = |name: &str, x: &str, layer: &str, outputs: Vec<String>| NodeProto {
        name: name.into(),
        op_type: "LSTM".into(),
        input: vec![
            x.into(),
            format!("W{layer}"),
            format!("R{layer}"),
            format!("B{layer}"),
        ],
        output: outputs,
        attribute: if bidirectional {
            vec![
                attr_int("hidden_size", hidden),
                attr_string("direction", "bidirectional"),
            ]
        } else {
            vec![attr_int("hidden_size", hidden)]
        },
        ..Default::default()
    };
    let node = |name: &str, op: &str, input: Vec<&str>, output: &str, attribute| NodeProto {
        name: name.into(),
        op_type: op.into(),
        input: input.into_iter().map(String::from).collect(),
        output: vec![output.into()],
        attribute,
        ..Default::default()
    };
    let ints = |name: &str, values: Vec<i64>| TensorProto {
        name: name.into(),
        dims: vec![values.len() as i64],
        data_type: 7,
        int64_data: values,
        ..Default::default()
    };
    // Weights in +-0.5/sqrt(hidden) keep the states away from saturation.
    let scale = |mut t: TensorProto| {
        let k = 1.0 / (hidden as f32).sqrt();
        t.float_data.iter_mut().for_each(|v| *v *= k);
        t
    };
    let (join, outputs) = if bidirectional {
        let mut perm = attr_int("perm", 0);
        perm.r#type = 7; // INTS
        perm.ints = vec![0, 2, 1, 3];
        (
            vec![
                node("transpose", "Transpose", vec!["Y1"], "T1", vec![perm]),
                node("flatten", "Reshape", vec!["T1", "flat"], "X2", vec![]),
            ],
            vec![
                value_info(
                    "Y",
                    1,
                    &[D::S("steps"), D::N(2), D::S("batch"), D::N(hidden)],
                ),
                value_info("Y_h", 1, &[D::N(2), D::S("batch"), D::N(hidden)]),
            ],
        )
    } else {
        (
            vec![node("squeeze", "Squeeze", vec!["Y1", "axes"], "X2", vec![])],
            vec![value_info(
                "Y_h",
                1,
                &[D::N(1), D::S("batch"), D::N(hidden)],
            )],
        )
    };
    let top_outputs = if bidirectional {
        vec!["Y".into(), "Y_h".into()]
    } else {
        vec![String::new(), "Y_h".into()]
    };
    let seed = if bidirectional { 20 } else { 0 };
    let mut nodes = vec![lstm("lstm1", "X", "1", vec!["Y1".into()])];
    nodes.extend(join);
    nodes.push(lstm("lstm2", "X2", "2", top_outputs));
    ModelProto {
        ir_version: 8,
        producer_name: "recur-gpu-check".into(),
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: 17,
        }],
        graph: Some(GraphProto {
            name: "lstm2".into(),
            node: nodes,
            initializer: vec![
                scale(f32_tensor("W1", &[dirs, 4 * hidden, input], seed + 11)),
                scale(f32_tensor("R1", &[dirs, 4 * hidden, hidden], seed + 12)),
                scale(f32_tensor("B1", &[dirs, 8 * hidden], seed + 13)),
                scale(f32_tensor(
                    "W2",
                    &[dirs, 4 * hidden, dirs * hidden],
                    seed + 21,
                )),
                scale(f32_tensor("R2", &[dirs, 4 * hidden, hidden], seed + 22)),
                scale(f32_tensor("B2", &[dirs, 8 * hidden], seed + 23)),
                ints("axes", vec![1]),
                ints("flat", vec![0, 0, -1]),
            ],
            input: vec![value_info(
                "X",
                1,
                &[D::S("steps"), D::S("batch"), D::N(input)],
            )],
            output: outputs,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Median latency of the 2-layer LSTMs on the device and on the CPU provider (all cores),
/// device outputs checked against the CPU's. Returns the number of failures.
fn latency(root: &Path, pair: &Pair, iters: usize, sizes: &[(i64, i64, i64, i64)]) -> usize {
    let (cpu, gpu) = (&pair.cpu, &pair.gpu);
    let dir = root.join(".gpu/latency");
    std::fs::create_dir_all(&dir).expect(".gpu/latency");
    println!(
        "\n{:<28} {:>10} {:>6} {:>12} {:>12} {:>12}",
        "2-layer LSTM (I, H, T, B)",
        "max|d|",
        "ok",
        format!("{}_ms", gpu.device),
        "cpu_ms",
        "copy_in_ms"
    );
    let width = 28;
    let mut failed = 0;
    let mut table = serde_json::Map::new();
    // Each size as two stacked LSTMs, then (not in the JSON table) as two stacked
    // bidirectional LSTMs joined the way PyTorch exports them.
    let models = sizes.iter().map(|&size| (size, false)).chain(
        // The CPU reference of the largest size would take a minute.
        sizes
            .iter()
            .filter(|size| size.3 <= 256)
            .map(|&size| (size, true)),
    );
    for ((input, hidden, steps, batch), bidirectional) in models {
        let prefix = if bidirectional { "bilstm2" } else { "lstm2" };
        let name = format!("{prefix}_i{input}_h{hidden}.onnx");
        let proto = two_layer_lstm(input, hidden, bidirectional);
        let path = onnx_builder::write_model(&dir, &name, &proto);
        let result = (|| -> recur::Result<(f32, f64, f64, Option<f64>)> {
            let model = Model::load(&path)?;
            let n = (steps * batch * input) as usize;
            let values: Vec<f32> = (0..n)
                .map(|i| ((i * 7919) % 2001) as f32 / 1000.0 - 1.0)
                .collect();
            let x = ndarray::ArrayD::from_shape_vec(
                vec![steps as usize, batch as usize, input as usize],
                values,
            )
            .expect("shape");
            let given = vec![("X".to_string(), recur::tensor::HostTensor::F32(x))];
            let x = check_inputs(&model.ir.inputs, given)?;
            let mut on_gpu = build_with(pair.gpu_kind, &model, gpu)?;
            let mut on_cpu = build_with(pair.cpu_kind, &model, cpu)?;
            let worst = max_abs_diff(&on_cpu.run(&x)?, &on_gpu.run(&x)?);
            let cpu_iters = if batch >= 256 { 3 } else { iters };
            // What of the cuDNN backend's time is copying X to the device (PyTorch's input
            // is there already).
            let copy_in = match (pair.gpu_kind, gpu.device) {
                (BackendKind::Cudnn, Device::Cuda(ordinal)) => {
                    let device = recur::cuda::Gpu::open(ordinal as usize)?;
                    let data = x.tensors[0].1.to_f32();
                    let data = data.as_slice().expect("standard layout");
                    let buffer = device.alloc(data.len())?;
                    let mut t: Vec<f64> = (0..iters)
                        .map(|_| {
                            let start = Instant::now();
                            buffer.write(0, data).expect("copy to the device");
                            start.elapsed().as_secs_f64() * 1e3
                        })
                        .collect();
                    t.sort_by(f64::total_cmp);
                    Some(t[t.len() / 2])
                }
                _ => None,
            };
            Ok((
                worst,
                median_us(&mut on_gpu, &x, iters) / 1e3,
                median_us(&mut on_cpu, &x, cpu_iters) / 1e3,
                copy_in,
            ))
        })();
        let size = format!("{input}, {hidden}, {steps}, {batch}");
        let label = if bidirectional {
            format!("bi {size}")
        } else {
            size.clone()
        };
        match result {
            Ok((worst, g, c, copy_in)) => {
                let ok = worst <= TOLERANCE;
                if !ok {
                    failed += 1;
                }
                if !bidirectional {
                    table.insert(
                        size,
                        serde_json::json!({ "device_ms": g, "cpu_ms": c, "max_abs_diff": worst }),
                    );
                }
                let copy_in = copy_in.map_or("-".to_string(), |t| format!("{t:.3}"));
                println!(
                    "{label:<width$} {worst:>10.2e} {:>6} {g:>12.3} {c:>12.3} {copy_in:>12}",
                    if ok { "yes" } else { "NO" }
                );
            }
            Err(e) => {
                failed += 1;
                println!("{label:<width$} error: {e}");
            }
        }
    }
    let json = serde_json::json!({ "device": gpu.device.to_string(), "sizes": table });
    // recur.json for ONNX Runtime, recur-cudnn.json for the cuDNN backend.
    let file = match pair.gpu_kind {
        BackendKind::Cudnn => "recur-cudnn.json",
        _ => "recur.json",
    };
    std::fs::write(dir.join(file), json.to_string()).expect("recur.json");
    failed
}

/// `--sizes "I,H,T,B;I,H,T,B;..."`: the latency table's (input, hidden, steps, batch).
fn parse_sizes(arg: &str) -> Vec<(i64, i64, i64, i64)> {
    let size = |text: &str| {
        let n: Vec<i64> = text
            .split(',')
            .map(|v| v.trim().parse().expect("--sizes: I,H,T,B;..."))
            .collect();
        match n[..] {
            [i, h, t, b] => (i, h, t, b),
            _ => panic!("--sizes: four numbers per size, I,H,T,B"),
        }
    };
    arg.split(';').map(size).collect()
}

fn main() {
    let mut device = Device::Cuda(0);
    let mut iters = 20;
    let mut filter = String::new();
    let mut latency_only = false;
    let mut tf32 = false;
    let mut sizes = LATENCY_SIZES.to_vec();
    let mut backend = BackendKind::Ort;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--device" => device = args[i + 1].parse().expect("device"),
            "--backend" => backend = args[i + 1].parse().expect("backend: ort or cudnn"),
            "--iters" => iters = args[i + 1].parse().expect("iters"),
            "--filter" => filter = args[i + 1].clone(),
            "--sizes" => sizes = parse_sizes(&args[i + 1]),
            "--latency-only" => {
                latency_only = true;
                i += 1;
                continue;
            }
            "--tf32" => {
                tf32 = true;
                i += 1;
                continue;
            }
            other => panic!("unknown argument {other}"),
        }
        i += 2;
    }
    // Run from the repository root (scripts/gpu-check.sh does).
    let root = std::env::current_dir().expect("working directory");
    let pair = Pair {
        // The cuDNN backend is held to recur's CPU path; ONNX Runtime's CUDA provider to its
        // CPU provider.
        cpu_kind: match backend {
            BackendKind::Cudnn => BackendKind::Tract,
            other => other,
        },
        gpu_kind: backend,
        cpu: BackendOptions::default(),
        gpu: BackendOptions {
            device,
            cuda_tf32: tf32,
            ..Default::default()
        },
    };
    if latency_only {
        let failed = latency(&root, &pair, iters.max(50), &sizes);
        std::process::exit(i32::from(failed > 0));
    }
    println!(
        "{:<48} {:>10} {:>6} {:>10} {:>10}  {}",
        "fixture",
        "max|d|",
        "ok",
        "cpu_us",
        format!("{device}_us"),
        if backend == BackendKind::Cudnn {
            "recurrent nodes on the GPU (cuDNN algorithm)"
        } else {
            ""
        }
    );
    let (mut passed, mut failed, mut refused) = (0, 0, 0);
    for dir in cases(&root) {
        let id = dir
            .strip_prefix(root.join("models"))
            .unwrap()
            .display()
            .to_string();
        if !id.contains(&filter) {
            continue;
        }
        let model = match Model::load(&dir.join("model.onnx")) {
            Ok(m) => m,
            Err(e) => {
                failed += 1;
                println!("{id:<48} error: {e}");
                continue;
            }
        };
        let (mut on_gpu, placed) = match device_backend(&pair, &model) {
            Ok(built) => built,
            Err(e)
                if backend == BackendKind::Cudnn
                    && e.to_string().contains("does not take this one") =>
            {
                refused += 1;
                println!(
                    "{id:<48} refused: {}",
                    recur::error::one_line(&e.to_string())
                );
                continue;
            }
            Err(e) => {
                failed += 1;
                println!("{id:<48} error: {e}");
                continue;
            }
        };
        let result = (|| -> recur::Result<(f32, f64, f64)> {
            let x = inputs(&dir, &model)?;
            let mut on_cpu = build_with(pair.cpu_kind, &model, &pair.cpu)?;
            let worst = max_abs_diff(&on_cpu.run(&x)?, &on_gpu.run(&x)?);
            Ok((
                worst,
                median_us(&mut on_cpu, &x, iters),
                median_us(&mut on_gpu, &x, iters),
            ))
        })();
        match result {
            Ok((worst, c, g)) => {
                let ok = worst <= TOLERANCE;
                if ok {
                    passed += 1
                } else {
                    failed += 1
                }
                println!(
                    "{id:<48} {worst:>10.2e} {:>6} {c:>10.1} {g:>10.1}  {placed}",
                    if ok { "yes" } else { "NO" }
                );
            }
            Err(e) => {
                failed += 1;
                println!("{id:<48} error: {e}");
            }
        }
    }
    println!(
        "summary: {passed} agree within {TOLERANCE:e}, {failed} do not, {refused} refused (backend {:?}, device {device})",
        pair.gpu_kind
    );
    failed += streaming(&root, &pair, iters.max(50));
    failed += latency(&root, &pair, iters.max(50), &sizes);
    if failed > 0 {
        std::process::exit(1);
    }
}
