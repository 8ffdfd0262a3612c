//! The engine options shared by `run` and `bench`: backend, device, and ONNX Runtime's
//! library, threads and optimisation level.

use std::path::PathBuf;

use clap::Args;

use crate::backend::{BackendKind, BackendOptions};
use crate::error::Result;

/// Which engine runs the model, where, and how.
#[derive(Debug, Clone, Args)]
pub struct EngineArgs {
    /// Engine: tract (CPU), ort (ONNX Runtime, CPU or CUDA) or cudnn (recur's executor with
    /// the recurrent layers on a CUDA GPU through cuDNN 9; needs --device cuda).
    #[arg(long, default_value = "tract")]
    pub backend: String,
    /// Device: cpu or cuda[:N] (cuda needs --backend ort with ONNX Runtime's CUDA build, or
    /// --backend cudnn).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// ONNX Runtime library to load (default: ORT_DYLIB_PATH, then the copy
    /// scripts/fetch-ort.sh puts in .ort/).
    #[arg(long, value_name = "PATH")]
    pub ort_lib: Option<PathBuf>,
    /// ONNX Runtime intra-op threads (default: one per core).
    #[arg(long, value_name = "N")]
    pub ort_threads: Option<usize>,
    /// ONNX Runtime graph optimisation level: disable, basic, extended or all.
    #[arg(long, value_name = "LEVEL", default_value = "all")]
    pub ort_opt_level: String,
    /// Let CUDA's matrix products use TensorFloat-32: faster on Ampere and later GPUs, about
    /// 1e-3 relative error (default: f32).
    #[arg(long)]
    pub cuda_tf32: bool,
}

impl EngineArgs {
    /// Parses the arguments into a backend kind and its options (exit 2 on a bad value).
    pub fn resolve(&self) -> Result<(BackendKind, BackendOptions)> {
        let kind: BackendKind = self.backend.parse()?;
        let options = BackendOptions {
            device: self.device.parse()?,
            ort_lib: self.ort_lib.clone(),
            ort_threads: self.ort_threads,
            ort_opt_level: self.ort_opt_level.parse()?,
            cuda_tf32: self.cuda_tf32,
        };
        if kind == BackendKind::Tract && options.device != crate::backend::Device::Cpu {
            return Err(crate::error::RecurError::Usage(format!(
                "the tract backend runs on the CPU only, not on '{}'; use --backend ort --device {}",
                self.device, self.device
            )));
        }
        Ok((kind, options))
    }
}
