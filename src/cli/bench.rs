//! `recur bench MODEL --input ... [--backend] [--device] [--stream [--chunk N]] [--iters N]
//! [--json]`: warm-up, then N timed runs in one process; median and p90 per run, and per step
//! when streaming.

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;

use super::run::parse_inputs;
use super::CliError;
use crate::backend;
use crate::error::RecurError;
use crate::model::Model;
use crate::stream::{slice, Session};
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
    /// Backend, device and ONNX Runtime options.
    #[command(flatten)]
    pub engine: super::engine::EngineArgs,
    /// Time a streaming session fed --chunk steps per call (state carried) instead of whole runs.
    #[arg(long)]
    pub stream: bool,
    /// Steps per chunk when streaming.
    #[arg(long, value_name = "N", default_value_t = 1, requires = "stream")]
    pub chunk: usize,
    /// Timed runs (chunks, when streaming) after the warm-up.
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub iters: usize,
    /// Print one JSON object: median_us, p90_us and, when streaming, per_step_us.
    #[arg(long)]
    pub json: bool,
    /// MODEL is an .rcm blob: count the firmware's instructions per time step in QEMU
    /// (mps2-an386, Cortex-M4F) over every sample of the input.
    #[arg(long, conflicts_with = "stream")]
    pub qemu: bool,
    /// With --qemu: a recur-firmware ELF built before (default: build it from the checkout).
    #[arg(long, value_name = "ELF", requires = "qemu")]
    pub firmware: Option<PathBuf>,
    /// With --qemu: also print where a step's instructions go, by firmware function.
    #[arg(long, requires = "qemu")]
    pub profile: bool,
}

/// Times the model and prints the summary.
pub fn exec(args: BenchArgs) -> Result<(), CliError> {
    if args.iters == 0 || args.chunk == 0 {
        return Err(RecurError::Usage("--iters and --chunk must be at least 1".into()).into());
    }
    if args.qemu {
        let input = match args.inputs.as_slice() {
            [one] => PathBuf::from(one.rsplit_once('=').map_or(one.as_str(), |(_, f)| f)),
            _ => return Err(RecurError::Usage("--qemu takes one --input FILE.npy".into()).into()),
        };
        return super::flash::bench(
            &args.model,
            &input,
            args.firmware.as_deref(),
            args.json,
            args.profile,
        );
    }
    let (kind, options) = args.engine.resolve()?;
    let model = Model::load(&args.model)?;
    let given = parse_inputs(&model.ir, &args.inputs)?;
    let inputs = check_inputs(&model.ir.inputs, given)?;
    let mut times = Vec::with_capacity(args.iters);
    let steps_per_call;
    if args.stream {
        let mut session = Session::new(&model, kind, &options)?;
        let (seq, axis) = session.sequence_input();
        let (seq, axis) = (seq.to_string(), axis);
        let x = inputs
            .tensors
            .iter()
            .find(|(n, _)| *n == seq)
            .map(|(_, t)| t.clone())
            .ok_or_else(|| RecurError::input(&seq, "not given"))?;
        let total = x.shape()[axis];
        let chunk = args.chunk.min(total);
        steps_per_call = chunk;
        let chunks: Vec<Vec<_>> = (0..total / chunk)
            .map(|k| {
                inputs
                    .tensors
                    .iter()
                    .map(|(n, t)| {
                        if *n == seq {
                            (n.clone(), slice(t, axis, k * chunk, (k + 1) * chunk))
                        } else {
                            (n.clone(), t.clone())
                        }
                    })
                    .collect()
            })
            .collect();
        for c in chunks.iter().take(3) {
            session.feed(c)?;
        }
        for i in 0..args.iters {
            let c = &chunks[i % chunks.len()];
            let start = Instant::now();
            session.feed(c)?;
            times.push(start.elapsed().as_secs_f64() * 1e6);
        }
    } else {
        let mut engine = backend::build_with(kind, &model, &options)?;
        steps_per_call = 0;
        for _ in 0..3 {
            engine.run(&inputs)?;
        }
        for _ in 0..args.iters {
            let start = Instant::now();
            engine.run(&inputs)?;
            times.push(start.elapsed().as_secs_f64() * 1e6);
        }
    }
    times.sort_by(f64::total_cmp);
    let pick = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    let (median, p90) = (pick(0.5), pick(0.9));
    if args.json {
        let mut v = serde_json::json!({
            "model": args.model.display().to_string(),
            "backend": args.engine.backend,
            "device": options.device.to_string(),
            "iters": args.iters,
            "median_us": median,
            "p90_us": p90,
        });
        if args.stream {
            v["chunk"] = steps_per_call.into();
            v["per_step_us"] = (median / steps_per_call as f64).into();
        }
        println!("{v}");
    } else {
        println!(
            "{} on {} ({}), {} runs: median {median:.1} us, p90 {p90:.1} us",
            args.model.display(),
            args.engine.backend,
            options.device,
            args.iters
        );
        if args.stream {
            println!(
                "streaming {steps_per_call} step(s) per call: {:.1} us per step (median)",
                median / steps_per_call as f64
            );
        }
    }
    Ok(())
}
