//! `recur convert MODEL --streamable -o OUT.onnx`: the streamable form of a model, and
//! `recur convert MODEL --target mcu --calib FILE.npy [--weights int8|int16] -o OUT.rcm
//! [--eval FILE.npy] [--report FILE.json]`: the fixed-point blob for a microcontroller.

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::Args;
use prost::Message;

use super::CliError;
use crate::error::RecurError;
use crate::model::Model;
use crate::onnx::streamable::make_streamable;
use crate::quant::{self, WeightBits};
use crate::tensor::read_npy;

/// Arguments of `recur convert`.
#[derive(Debug, Args)]
pub struct ConvertArgs {
    /// The ONNX model.
    pub model: PathBuf,
    /// Expose every recurrent node's state: initial_h/initial_c become graph inputs and
    /// Y_h/Y_c graph outputs, so a sequence can be fed chunk by chunk.
    #[arg(long, conflicts_with = "target")]
    pub streamable: bool,
    /// Conversion target: `mcu` (the fixed-point recur-kernel).
    #[arg(long, requires = "calib")]
    pub target: Option<String>,
    /// Calibration data (.npy): float32 [N, T, F] batch-first, or int64 [N, T] token ids.
    #[arg(long, value_name = "FILE.npy")]
    pub calib: Option<PathBuf>,
    /// Weight precision for --target mcu: int8 or int16.
    #[arg(long, default_value = "int16")]
    pub weights: String,
    /// Where to write the converted model (.onnx) or blob (.rcm).
    #[arg(short = 'o', long = "output", value_name = "OUT")]
    pub output: PathBuf,
    /// Extra evaluation data for --target mcu (.npy, same form as --calib).
    #[arg(long, value_name = "FILE.npy")]
    pub eval: Option<PathBuf>,
    /// Also write the --target mcu report as JSON here.
    #[arg(long, value_name = "FILE.json")]
    pub report: Option<PathBuf>,
}

/// Converts the model and writes the result.
pub fn exec(args: ConvertArgs) -> Result<(), CliError> {
    match (&args.target, args.streamable) {
        (Some(_), _) => to_mcu(&args),
        (None, true) => to_streamable(&args),
        (None, false) => Err(RecurError::Usage(
            "convert: say what to convert to (--streamable, or --target mcu --calib FILE.npy)"
                .into(),
        )
        .into()),
    }
}

fn to_streamable(args: &ConvertArgs) -> Result<(), CliError> {
    let model = Model::load(&args.model)?;
    let plan = make_streamable(&model.proto, &model.ir)?;
    std::fs::write(&args.output, plan.carry.encode_to_vec())
        .map_err(|e| RecurError::file(&args.output, e))?;
    println!(
        "sequence input '{}' (time axis {})",
        plan.sequence_input, plan.time_axis
    );
    for w in &plan.states {
        println!(
            "state of '{}' {}: input '{}' <- output '{}'",
            w.node, w.which, w.input, w.output
        );
    }
    println!("wrote {}", args.output.display());
    Ok(())
}

fn to_mcu(args: &ConvertArgs) -> Result<(), CliError> {
    let target = args.target.as_deref().unwrap_or_default();
    if target != "mcu" {
        return Err(RecurError::Usage(format!(
            "unknown target '{target}' (the only conversion target is mcu)"
        ))
        .into());
    }
    let calib_path = args
        .calib
        .as_ref()
        .ok_or_else(|| RecurError::Usage("--target mcu needs --calib FILE.npy".into()))?;
    let bits = match args.weights.as_str() {
        "int8" => WeightBits::Int8,
        "int16" => WeightBits::Int16,
        w => return Err(RecurError::Usage(format!("--weights {w}: choose int8 or int16")).into()),
    };
    let model = Model::load(&args.model)?;
    let calib = read_npy(calib_path)?;
    let eval = args.eval.as_ref().map(|p| read_npy(p)).transpose()?;
    let calib_name = calib_path.display().to_string();
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
