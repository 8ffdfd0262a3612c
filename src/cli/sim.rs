//! `recur sim OUT.rcm --input FILE.npy --out DIR`: the fixed-point kernel on the host.

use std::path::PathBuf;

use clap::Args;

use super::CliError;
use crate::error::RecurError;
use crate::quant::sim;
use crate::tensor::{read_npy, HostTensor};

/// Arguments of `recur sim`.
#[derive(Debug, Args)]
pub struct SimArgs {
    /// The .rcm blob written by `recur convert --target mcu`.
    pub blob: PathBuf,
    /// Input (.npy): float32 [N, T, F] batch-first, or int64/int32 [N, T] token ids.
    #[arg(long, short = 'i', value_name = "FILE.npy")]
    pub input: PathBuf,
    /// Directory for output.npy (float32, dequantised), output_raw.npy (int16) and
    /// state_raw.npy (int16: every layer's state after the last sequence).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

/// Runs the blob on every sequence and writes both outputs.
pub fn exec(args: SimArgs) -> Result<(), CliError> {
    let bytes = std::fs::read(&args.blob).map_err(|e| RecurError::file(&args.blob, e))?;
    let words = sim::aligned(&bytes);
    let model = sim::parse(&words, bytes.len(), &args.blob.display().to_string())?;
    let input = read_npy(&args.input)?;
    let out = sim::simulate(&model, &input, &args.input.display().to_string())?;
    std::fs::create_dir_all(&args.out).map_err(|e| RecurError::file(&args.out, e))?;
    let values = args.out.join("output.npy");
    HostTensor::F32(out.values.clone()).write_npy(&values)?;
    let raw = args.out.join("output_raw.npy");
    let file = std::fs::File::create(&raw).map_err(|e| RecurError::file(&raw, e))?;
    ndarray_npy::WriteNpyExt::write_npy(&out.raw, std::io::BufWriter::new(file))
        .map_err(|e| RecurError::file(&raw, e))?;
    let state = args.out.join("state_raw.npy");
    let state_array = ndarray::Array1::from(out.state.clone());
    let file = std::fs::File::create(&state).map_err(|e| RecurError::file(&state, e))?;
    ndarray_npy::WriteNpyExt::write_npy(&state_array, std::io::BufWriter::new(file))
        .map_err(|e| RecurError::file(&state, e))?;
    println!(
        "output {:?} (int16 raw, scale {:e})",
        out.raw.shape(),
        model.output_scale
    );
    for f in [&values, &raw, &state] {
        println!("wrote {}", f.display());
    }
    Ok(())
}
