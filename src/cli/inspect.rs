//! `recur inspect MODEL [--json]`.

use std::path::PathBuf;

use clap::Args;

use super::CliError;
use crate::model::Model;

/// Arguments of `recur inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The ONNX model.
    pub model: PathBuf,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Prints the report.
pub fn exec(args: InspectArgs) -> Result<(), CliError> {
    let model = Model::load(&args.model)?;
    let report = crate::inspect::inspect(&model);
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).map_err(anyhow::Error::from)?
        );
    } else {
        print!("{}", report.to_text());
    }
    Ok(())
}
