//! `recur bench MODEL --input NAME=FILE.npy ... [--backend] [--device] [--iters N] [--json]`:
//! warm-up runs, then N timed runs in one process; the median and p90 of one run.

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use serde::Serialize;

use super::run::{check_device, parse_inputs};
use super::CliError;
use crate::backend::{self, BackendKind};
use crate::error::RecurError;
use crate::model::Model;
use crate::tensor::check_inputs;

/// Arguments of `recur bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// The ONNX model.
    pub model: PathBuf,
    /// An input as NAME=FILE.npy (repeat for each input); a single-input model also takes FILE.npy.
    #[arg(
        long = "input",
        short = 'i',
        value_name = "NAME=FILE.npy",
        required = true
    )]
    pub inputs: Vec<String>,
    /// Engine: tract (CPU) or ort (ONNX Runtime).
    #[arg(long, default_value = "tract")]
    pub backend: String,
    /// Device: cpu or cuda[:N].
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Timed runs.
    #[arg(long, default_value_t = 100)]
    pub iters: usize,
    /// Untimed runs first (plans built, caches warm).
    #[arg(long, default_value_t = 10)]
    pub warmup: usize,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// What `recur bench --json` prints.
#[derive(Debug, Serialize)]
pub struct BenchReport {
    /// The model file.
    pub model: String,
    /// Backend name.
    pub backend: String,
    /// Device.
    pub device: String,
    /// Timed runs.
    pub iters: usize,
    /// Median time of one run, microseconds.
    pub median_us: f64,
    /// 90th percentile, microseconds.
    pub p90_us: f64,
    /// Fastest run, microseconds.
    pub min_us: f64,
}

/// Times the model and prints the report.
pub fn exec(args: BenchArgs) -> std::result::Result<(), CliError> {
    if args.iters == 0 {
        return Err(RecurError::Usage("--iters must be at least 1".into()).into());
    }
    let kind: BackendKind = args.backend.parse()?;
    check_device(kind, &args.device)?;
    let model = Model::load(&args.model)?;
    let given = parse_inputs(&model.ir, &args.inputs)?;
    let inputs = check_inputs(&model.ir.inputs, given)?;
    let mut engine = backend::build(kind, &model, &args.model)?;
    for _ in 0..args.warmup.max(1) {
        engine.run(&inputs)?;
    }
    let mut times: Vec<f64> = Vec::with_capacity(args.iters);
    for _ in 0..args.iters {
        let start = Instant::now();
        engine.run(&inputs)?;
        times.push(start.elapsed().as_secs_f64() * 1e6);
    }
    times.sort_by(f64::total_cmp);
    let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    let report = BenchReport {
        model: args.model.display().to_string(),
        backend: engine.name().to_string(),
        device: args.device.clone(),
        iters: args.iters,
        median_us: at(0.5),
        p90_us: at(0.9),
        min_us: times[0],
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&report).map_err(anyhow::Error::from)?
        );
    } else {
        println!(
            "{} on {} ({}): median {:.1} us, p90 {:.1} us, min {:.1} us over {} runs",
            report.model,
            report.backend,
            report.device,
            report.median_us,
            report.p90_us,
            report.min_us,
            report.iters
        );
    }
    Ok(())
}
