//! Min-of-N timings of one streamed step and of a whole sequence (robust to a busy machine):
//! raw kernels vs the tract backend and a streaming session, and the whole sequence on ONNX
//! Runtime's CPU provider next to it, and the whole sequence's arithmetic floor: its
//! multiply-adds at this core's measured multiply-add peak. `cargo run --release --example
//! step_floor` (ONNX Runtime from `bash scripts/fetch-ort.sh`).
use std::path::Path;
use std::time::Instant;

use ndarray::{Array3, ArrayD, IxDyn};
use recur::backend::tract::TractBackend;
use recur::backend::{build_with, Backend, BackendKind, BackendOptions};
use recur::ir::LayerKind;
use recur::kernels::{run_layer, LayerSpec, LayerWeights};
use recur::model::Model;
use recur::tensor::{check_inputs, HostTensor};

/// `v` in increasing order.
fn sorted(v: &[f64]) -> Vec<f64> {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v
}

fn stats(v: Vec<f64>) -> String {
    let v = sorted(&v);
    format!(
        "min {:.2} us  p10 {:.2} us  median {:.2} us",
        v[0],
        v[v.len() / 10],
        v[v.len() / 2]
    )
}

fn median(v: &[f64]) -> f64 {
    sorted(v)[v.len() / 2]
}

/// The multiply-adds of one run of `model` (its recurrent layers' products: every step's
/// input and recurrent product, each direction) for an input of `steps` steps, batch 1.
fn recurrent_multiply_adds(model: &Model, steps: usize) -> f64 {
    let mut input = None;
    let mut total = 0.0;
    for l in &model.ir.layers {
        if let LayerKind::Recurrent(r) = &l.kind {
            let w = r.weights.as_ref().unwrap();
            let (dirs, gates_hidden, input_size) = (w.w.shape()[0], w.w.shape()[1], w.w.shape()[2]);
            let hidden = r.hidden_size;
            // A layer's input is the previous layer's output (both directions'), except
            // for the first.
            let input_size = input.unwrap_or(input_size);
            total += (steps * dirs * gates_hidden * (input_size + hidden)) as f64;
            input = Some(dirs * hidden);
        }
    }
    total
}

/// The whole sequence's floor: its multiply-adds at the core's peak, against half of ONNX
/// Runtime's median (the goal), and what share of the peak each engine reaches.
fn print_arithmetic_floor(model: &Model, recur_us: f64, ort_us: Option<f64>) {
    let Some(peak) = peak::multiply_adds_per_ns() else {
        println!("arithmetic floor: no AVX2/AVX-512 peak measured on this CPU");
        return;
    };
    let fmas = recurrent_multiply_adds(model, 100);
    let floor_us = fmas / peak / 1e3;
    println!(
        "this core's f32 multiply-add peak: {peak:.1} per ns; the sequence's {:.2} million \
         multiply-adds take {floor_us:.1} us at that peak",
        fmas / 1e6
    );
    print!(
        "share of that peak (floor / median): recur {:.0}%",
        100.0 * floor_us / recur_us
    );
    match ort_us {
        Some(ort_us) => println!(
            ", ONNX Runtime {:.0}%; half of ONNX Runtime's median is {:.1} us, {:.0}% of the \
             peak",
            100.0 * floor_us / ort_us,
            ort_us / 2.0,
            200.0 * floor_us / ort_us
        ),
        None => println!(),
    }
}

/// The core's multiply-add throughput, measured: twelve independent chains of fused
/// multiply-adds on registers (no memory), the widest vectors the CPU has, best of five.
mod peak {
    /// f32 multiply-adds per nanosecond, or `None` without AVX2 + FMA.
    pub fn multiply_adds_per_ns() -> Option<f64> {
        #[cfg(target_arch = "x86_64")]
        {
            let rounds = 20_000_000u64;
            let time = |run: &dyn Fn()| {
                (0..5)
                    .map(|_| {
                        let t = std::time::Instant::now();
                        run();
                        t.elapsed().as_secs_f64()
                    })
                    .fold(f64::MAX, f64::min)
            };
            if is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU has the feature the function is compiled for.
                let secs = time(&|| unsafe { x86::chains_avx512(rounds) });
                return Some((rounds * 12 * 16) as f64 / secs / 1e9);
            }
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                // SAFETY: as above.
                let secs = time(&|| unsafe { x86::chains_avx2(rounds) });
                return Some((rounds * 12 * 8) as f64 / secs / 1e9);
            }
        }
        None
    }

    #[cfg(target_arch = "x86_64")]
    mod x86 {
        use std::arch::x86_64::*;

        /// Twelve chains of `rounds` 16-lane multiply-adds each.
        #[target_feature(enable = "avx512f")]
        pub unsafe fn chains_avx512(rounds: u64) {
            let (b, c) = (_mm512_set1_ps(0.999_999), _mm512_set1_ps(1e-7));
            let mut acc = [_mm512_set1_ps(1.0); 12];
            for _ in 0..rounds {
                for a in acc.iter_mut() {
                    *a = _mm512_fmadd_ps(*a, b, c);
                }
            }
            std::hint::black_box(acc);
        }

        /// Twelve chains of `rounds` 8-lane multiply-adds each.
        #[target_feature(enable = "avx2,fma")]
        pub unsafe fn chains_avx2(rounds: u64) {
            let (b, c) = (_mm256_set1_ps(0.999_999), _mm256_set1_ps(1e-7));
            let mut acc = [_mm256_set1_ps(1.0); 12];
            for _ in 0..rounds {
                for a in acc.iter_mut() {
                    *a = _mm256_fmadd_ps(*a, b, c);
                }
            }
            std::hint::black_box(acc);
        }
    }
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let model = Model::load(&root.join("models/bench/lstm2x64_step.onnx")).unwrap();
    // Raw kernels: the two LSTM layers of the model, one step each.
    let mut layers = vec![];
    for l in &model.ir.layers {
        if let LayerKind::Recurrent(r) = &l.kind {
            let spec = LayerSpec::of(r);
            let lw = LayerWeights::from_ir(&spec, r.weights.as_ref().unwrap()).unwrap();
            layers.push((spec, lw));
        }
    }
    // 64x256 is a recurrent matrix (64 KiB: from L2 on CPUs with a 32 or 48 KiB L1); 16x256
    // stays in L1, so four of it give the in-L1 rate of the same work.
    for (rows, cols) in [(64usize, 256usize), (16, 256), (8, 256)] {
        let m = ndarray::Array2::<f32>::from_elem((rows, cols), 0.01);
        let packed = recur::kernels::linalg::Packed::new(m.view());
        let v = vec![0.5f32; rows];
        let mut out = vec![0f32; cols];
        let mut times = vec![];
        for _ in 0..2000 {
            let t = Instant::now();
            for _ in 0..100 {
                recur::kernels::linalg::matvec_packed(&mut out, &v, &packed);
            }
            times.push(t.elapsed().as_secs_f64() * 1e4);
        }
        println!("matvec {rows}x{cols}: {} (per call)", stats(times));
        let mut times = vec![];
        for _ in 0..2000 {
            let t = Instant::now();
            for i in 0..100 {
                recur::kernels::linalg::matvec_packed_ordered(&mut out, &v, &packed, i % 2 == 1);
            }
            times.push(t.elapsed().as_secs_f64() * 1e4);
        }
        println!(
            "matvec {rows}x{cols}, panel order alternating: {} (per call)",
            stats(times)
        );
    }
    // The four products of one step of the 2-layer model (W1 8x256, R1, W2, R2 64x256 each),
    // on distinct matrices as in a real step: 200 KiB that cannot stay in L1 between steps,
    // so this is the step's memory floor on this machine.
    {
        let mats: Vec<(Vec<f32>, recur::kernels::linalg::Packed)> = [8usize, 64, 64, 64]
            .iter()
            .enumerate()
            .map(|(i, &rows)| {
                let m = ndarray::Array2::<f32>::from_elem((rows, 256), 0.01 * (i + 1) as f32);
                (
                    vec![0.5f32; rows],
                    recur::kernels::linalg::Packed::new(m.view()),
                )
            })
            .collect();
        let mut out = vec![0f32; 256];
        let mut times = vec![];
        for i in 0..20000 {
            let t = Instant::now();
            for (v, packed) in &mats {
                recur::kernels::linalg::matvec_packed_ordered(&mut out, v, packed, i % 2 == 1);
            }
            times.push(t.elapsed().as_secs_f64() * 1e6);
        }
        println!(
            "the four products of one step, distinct matrices: {}",
            stats(times)
        );
    }
    // The input projection of a 100-step layer: the packed blocked product against ndarray's
    // general product (matrixmultiply), 100 x 64 times 64 x 256.
    {
        let m = ndarray::Array2::<f32>::from_elem((64, 256), 0.01);
        let packed = recur::kernels::linalg::Packed::new(m.view());
        let x = ndarray::Array2::<f32>::from_elem((100, 64), 0.5);
        let mut out = ndarray::Array2::<f32>::zeros((100, 256));
        let (mut blocked, mut general) = (vec![], vec![]);
        for _ in 0..2000 {
            let t = Instant::now();
            let ran = recur::kernels::linalg::matmul_packed(
                out.as_slice_mut().unwrap(),
                x.as_slice().unwrap(),
                &packed,
            );
            blocked.push(t.elapsed().as_secs_f64() * 1e6);
            assert!(ran, "no blocked kernel on this CPU");
            let t = Instant::now();
            ndarray::linalg::general_mat_mul(1.0, &x, &m, 1.0, &mut out);
            general.push(t.elapsed().as_secs_f64() * 1e6);
        }
        println!("matmul 100x64x256 packed:  {}", stats(blocked));
        println!("matmul 100x64x256 general: {}", stats(general));
    }
    // The whole 100-step sequence of the 2-layer model on the CPU path, and on ONNX Runtime's
    // CPU provider (one thread) when its library is found: the two interleaved run by run,
    // so that a busy spell of the machine hits both.
    {
        let seq = Model::load(&root.join("models/bench/lstm2x64_seq.onnx")).unwrap();
        let x = recur::tensor::read_npy(&root.join("models/bench/x_100x1x8.npy")).unwrap();
        let inputs = check_inputs(&seq.ir.inputs, vec![("X".to_string(), x)]).unwrap();
        let mut backend = TractBackend::new(&seq, &seq.path).unwrap();
        let ort_options = BackendOptions {
            ort_threads: Some(1),
            ..Default::default()
        };
        let mut ort = match build_with(BackendKind::Ort, &seq, &ort_options) {
            Ok(ort) => Some(ort),
            Err(e) => {
                println!("ONNX Runtime left out: {e}");
                None
            }
        };
        let (mut times, mut ort_times) = (vec![], vec![]);
        for _ in 0..2000 {
            let t = Instant::now();
            backend.run(&inputs).unwrap();
            times.push(t.elapsed().as_secs_f64() * 1e6);
            if let Some(ort) = ort.as_mut() {
                let t = Instant::now();
                ort.run(&inputs).unwrap();
                ort_times.push(t.elapsed().as_secs_f64() * 1e6);
            }
        }
        let recur_median = median(&times);
        println!(
            "whole sequence, 2 LSTM layers x 100 steps: {}",
            stats(times)
        );
        let ort_median = (!ort_times.is_empty()).then(|| median(&ort_times));
        if !ort_times.is_empty() {
            println!(
                "same on ONNX Runtime CPU, one thread:      {}",
                stats(ort_times)
            );
        }
        print_arithmetic_floor(&seq, recur_median, ort_median);
    }
    let mut x = Array3::<f32>::from_elem((1, 1, 8), 0.1);
    let mut h = vec![Array3::<f32>::zeros((1, 1, 64)); 2];
    let mut c = vec![Array3::<f32>::zeros((1, 1, 64)); 2];
    let mut times = vec![];
    for i in 0..20000 {
        x[[0, 0, 0]] = (i % 7) as f32 * 0.1;
        let t = Instant::now();
        let mut input = x.clone();
        for (k, (spec, lw)) in layers.iter().enumerate() {
            let out = run_layer(
                spec,
                lw,
                input.view(),
                None,
                Some(h[k].view()),
                Some(c[k].view()),
            );
            h[k] = out.y_h;
            c[k] = out.y_c;
            input = out.y.into_shape_with_order((1, 1, 64)).unwrap();
        }
        times.push(t.elapsed().as_secs_f64() * 1e6);
    }
    println!("raw kernels, 2 LSTM layers, one step: {}", stats(times));

    let mut backend = TractBackend::new(&model, &model.path).unwrap();
    println!("native: {}", backend.runs_natively());
    let zeros = || HostTensor::F32(ArrayD::zeros(IxDyn(&[1, 1, 64])));
    let mut state = [zeros(), zeros(), zeros(), zeros()];
    let mut times = vec![];
    let mut times_run = vec![];
    for i in 0..20000 {
        let t = Instant::now();
        let sample = ArrayD::from_elem(IxDyn(&[1, 1, 8]), (i % 7) as f32 * 0.1);
        let mut given = vec![("X".to_string(), HostTensor::F32(sample))];
        for (name, s) in ["h1", "c1", "h2", "c2"].iter().zip(&state) {
            given.push((name.to_string(), s.clone()));
        }
        let inputs = check_inputs(&model.ir.inputs, given).unwrap();
        let t_run = Instant::now();
        let out = backend.run(&inputs).unwrap();
        times_run.push(t_run.elapsed().as_secs_f64() * 1e6);
        for (slot, (_, value)) in state.iter_mut().zip(out.into_iter().skip(1)) {
            *slot = value;
        }
        times.push(t.elapsed().as_secs_f64() * 1e6);
    }
    println!("tract backend run only:               {}", stats(times_run));
    println!("tract backend step incl. checks:      {}", stats(times));

    // The same model through a streaming session: the state stays in the session, the caller
    // feeds the sample (the whole-sequence model, as `benches/cpu.rs` streams it).
    let seq_model = Model::load(&root.join("models/bench/lstm2x64_seq.onnx")).unwrap();
    let xs = recur::tensor::read_npy(&root.join("models/bench/x_100x1x8.npy")).unwrap();
    let mut session =
        recur::stream::Session::new(&seq_model, BackendKind::Tract, &BackendOptions::default())
            .unwrap();
    let steps: Vec<Vec<(String, HostTensor)>> = (0..100)
        .map(|t| vec![("X".to_string(), recur::stream::slice(&xs, 0, t, t + 1))])
        .collect();
    let mut times = vec![];
    for i in 0..20000 {
        let t = Instant::now();
        std::hint::black_box(session.feed(&steps[i % 100]).unwrap());
        times.push(t.elapsed().as_secs_f64() * 1e6);
    }
    println!("one step through a streaming session: {}", stats(times));
}
