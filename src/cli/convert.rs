//! `recur convert MODEL --target mcu --calib FILE.npy [--weights int8|int16] -o OUT.rcm
//! [--eval FILE.npy] [--report FILE.json]`.

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::Args;

use super::CliError;
use crate::error::RecurError;
use crate::model::Model;
use crate::quant::{self, WeightBits};
use crate::tensor::read_npy;

/// Arguments of `recur convert`.
#[derive(Debug, Args)]
pub struct ConvertArgs {
    /// The ONNX model.
    pub model: PathBuf,
    /// Conversion target: `mcu` (the fixed-point recur-kernel).
    #[arg(long)]
    pub target: String,
    /// Calibration data (.npy): float32 [N, T, F] batch-first, or int64 [N, T] token ids.
    #[arg(long, value_name = "FILE.npy")]
    pub calib: PathBuf,
    /// Weight precision: int8 or int16.
    #[arg(long, default_value = "int16")]
    pub weights: String,
    /// Where to write the .rcm blob.
    #[arg(short = 'o', long = "output", value_name = "OUT.rcm")]
    pub output: PathBuf,
    /// Extra evaluation data (.npy, same form as --calib).
    #[arg(long, value_name = "FILE.npy")]
    pub eval: Option<PathBuf>,
    /// Also write the report as JSON here.
    #[arg(long, value_name = "FILE.json")]
    pub report: Option<PathBuf>,
}

/// Converts, writes the blob (and report), prints the report.
pub fn exec(args: ConvertArgs) -> Result<(), CliError> {
    if args.target != "mcu" {
        return Err(RecurError::Usage(format!(
            "unknown target '{}' (the only conversion target is mcu)",
            args.target
        ))
        .into());
    }
    let bits = match args.weights.as_str() {
        "int8" => WeightBits::Int8,
        "int16" => WeightBits::Int16,
        w => return Err(RecurError::Usage(format!("--weights {w}: choose int8 or int16")).into()),
    };
    let model = Model::load(&args.model)?;
    let calib = read_npy(&args.calib)?;
    let eval = args.eval.as_ref().map(|p| read_npy(p)).transpose()?;
    let calib_name = args.calib.display().to_string();
    let eval_name = args.eval.as_ref().map(|p| p.display().to_string());
    let converted = quant::convert(
        &model,
        (&calib_name, &calib),
        eval_name.as_deref().zip(eval.as_ref()),
        bits,
        std::io::stderr().is_terminal(),
    )?;
    std::fs::write(&args.output, &converted.blob).map_err(|e| RecurError::file(&args.output, e))?;
    print!("{}", converted.report.to_text());
    println!("wrote {}", args.output.display());
    if let Some(path) = &args.report {
        let json = serde_json::to_string_pretty(&converted.report).map_err(anyhow::Error::from)?;
        std::fs::write(path, json).map_err(|e| RecurError::file(path, e))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
