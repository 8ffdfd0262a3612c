//! `recur run MODEL --input NAME=FILE.npy ... [--backend] [--device] [--out DIR]`.

use std::path::{Path, PathBuf};

use clap::Args;

use super::CliError;
use crate::backend;
use crate::error::{RecurError, Result};
use crate::ir::RecurrentModel;
use crate::model::Model;
use crate::tensor::{check_inputs, read_npy, sanitize_file_stem, HostTensor};

/// Arguments of `recur run`.
#[derive(Debug, Args)]
pub struct RunArgs {
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
    /// Run through a streaming session, feeding the sequence --chunk steps at a time.
    #[arg(long)]
    pub stream: bool,
    /// Steps per chunk when streaming.
    #[arg(long, value_name = "N", default_value_t = 1, requires = "stream")]
    pub chunk: usize,
    /// Write one .npy per output into this directory.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Class names, one per line: print the predicted class of each row of the first output.
    #[arg(long, value_name = "FILE")]
    pub classes: Option<PathBuf>,
    /// True class indices (.npy, one per row): print the accuracy of the predictions.
    #[arg(long, value_name = "FILE.npy", requires = "classes")]
    pub labels: Option<PathBuf>,
}

/// Runs the model once and reports or writes its outputs.
pub fn exec(args: RunArgs) -> std::result::Result<(), CliError> {
    let (kind, options) = args.engine.resolve()?;
    let model = Model::load(&args.model)?;
    let given = parse_inputs(&model.ir, &args.inputs)?;
    let inputs = check_inputs(&model.ir.inputs, given)?;
    let outputs = if args.stream {
        let mut session = crate::stream::Session::new(&model, kind, &options)?;
        session.run_chunked(&inputs.tensors, args.chunk)?
    } else {
        backend::build_with(kind, &model, &options)?.run(&inputs)?
    };

    for (name, tensor) in &outputs {
        println!("{}", summarize(name, tensor));
    }
    if let Some(dir) = &args.out {
        for path in write_outputs(dir, &outputs)? {
            println!("wrote {}", path.display());
        }
    }
    if let Some(classes) = &args.classes {
        report_classes(classes, args.labels.as_deref(), &outputs)?;
    }
    Ok(())
}

/// Reads `NAME=FILE` input arguments (or a bare `FILE` for a single-input model).
pub fn parse_inputs(ir: &RecurrentModel, specs: &[String]) -> Result<Vec<(String, HostTensor)>> {
    let names: Vec<&str> = ir.inputs.iter().map(|i| i.name.as_str()).collect();
    let mut given = Vec::with_capacity(specs.len());
    for spec in specs {
        let (name, file) = match spec.split_once('=') {
            Some((name, file)) if names.contains(&name) || !Path::new(spec).exists() => {
                (name.to_string(), file)
            }
            _ if names.len() == 1 => (names[0].to_string(), spec.as_str()),
            _ => {
                return Err(RecurError::Usage(format!(
                    "--input {spec}: name the input as NAME=FILE.npy (the model's inputs: {})",
                    names.join(", ")
                )))
            }
        };
        given.push((name, read_npy(Path::new(file))?));
    }
    Ok(given)
}

fn summarize(name: &str, tensor: &HostTensor) -> String {
    let values = tensor.to_f32();
    let (min, max) = values
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        });
    format!(
        "{name}: {} {:?} min {min:.6} max {max:.6}",
        tensor.elem_type().numpy_name(),
        tensor.shape()
    )
}

/// Writes each output as `<name>.npy` (name sanitised per the command-line contract).
pub fn write_outputs(dir: &Path, outputs: &[(String, HostTensor)]) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).map_err(|e| RecurError::file(dir, e))?;
    let mut written: Vec<PathBuf> = Vec::with_capacity(outputs.len());
    for (name, tensor) in outputs {
        let mut path = dir.join(format!("{}.npy", sanitize_file_stem(name)));
        let mut k = 1;
        while written.contains(&path) {
            path = dir.join(format!("{}_{k}.npy", sanitize_file_stem(name)));
            k += 1;
        }
        tensor.write_npy(&path)?;
        written.push(path);
    }
    Ok(written)
}

fn report_classes(
    classes_file: &Path,
    labels_file: Option<&Path>,
    outputs: &[(String, HostTensor)],
) -> Result<()> {
    let text =
        std::fs::read_to_string(classes_file).map_err(|e| RecurError::file(classes_file, e))?;
    let classes: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let (name, first) = outputs
        .first()
        .ok_or_else(|| RecurError::Usage("the model has no outputs".into()))?;
    let scores = first.to_f32();
    if scores.ndim() != 2 || scores.shape()[1] != classes.len() {
        return Err(RecurError::Usage(format!(
            "--classes: output '{name}' has shape {:?}, expected [rows, {}] for {} classes in {}",
            scores.shape(),
            classes.len(),
            classes.len(),
            classes_file.display()
        )));
    }
    let predicted: Vec<usize> = scores
        .outer_iter()
        .map(|row| {
            row.iter()
                .enumerate()
                .fold((0, f32::NEG_INFINITY), |best, (i, &v)| {
                    if v > best.1 {
                        (i, v)
                    } else {
                        best
                    }
                })
                .0
        })
        .collect();
    let labels: Option<Vec<i64>> = match labels_file {
        None => None,
        Some(path) => {
            let labels = read_npy(path)?.to_f32();
            if labels.len() != predicted.len() {
                return Err(RecurError::file(
                    path,
                    format!("holds {} labels for {} rows", labels.len(), predicted.len()),
                ));
            }
            Some(labels.iter().map(|&v| v as i64).collect())
        }
    };
    for (row, &p) in predicted.iter().enumerate() {
        match &labels {
            Some(l) => {
                let truth = usize::try_from(l[row])
                    .ok()
                    .and_then(|t| classes.get(t))
                    .copied()
                    .unwrap_or("?");
                let mark = if truth == classes[p] { "ok" } else { "WRONG" };
                println!("row {row:>3}: {:<12} (true: {truth}) {mark}", classes[p]);
            }
            None => println!("row {row:>3}: {}", classes[p]),
        }
    }
    if let Some(l) = &labels {
        let correct = predicted
            .iter()
            .zip(l)
            .filter(|(&p, &t)| p as i64 == t)
            .count();
        println!(
            "accuracy: {correct}/{} = {:.1}%",
            predicted.len(),
            100.0 * correct as f64 / predicted.len() as f64
        );
    }
    Ok(())
}
