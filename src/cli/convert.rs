//! `recur convert MODEL --streamable -o OUT.onnx`: writes the streamable form of a model.

use std::path::PathBuf;

use clap::Args;
use prost::Message;

use super::CliError;
use crate::error::RecurError;
use crate::model::Model;
use crate::onnx::streamable::make_streamable;

/// Arguments of `recur convert`.
#[derive(Debug, Args)]
pub struct ConvertArgs {
    /// The ONNX model.
    pub model: PathBuf,
    /// Expose every recurrent node's state: initial_h/initial_c become graph inputs and
    /// Y_h/Y_c graph outputs, so a sequence can be fed chunk by chunk.
    #[arg(long)]
    pub streamable: bool,
    /// Where to write the converted model.
    #[arg(short = 'o', long = "output", value_name = "OUT")]
    pub output: PathBuf,
}

/// Converts the model and writes it; prints the state inputs and outputs.
pub fn exec(args: ConvertArgs) -> Result<(), CliError> {
    if !args.streamable {
        return Err(
            RecurError::Usage("convert: say what to convert to (--streamable)".into()).into(),
        );
    }
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
