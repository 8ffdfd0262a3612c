//! Options that pick where and how a backend runs: the device, and ONNX Runtime's library,
//! threads, graph optimisation level and CUDA arithmetic.

use std::path::PathBuf;
use std::str::FromStr;

use crate::error::{RecurError, Result};

/// Where a model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Device {
    /// The host CPU.
    #[default]
    Cpu,
    /// An NVIDIA GPU through ONNX Runtime's CUDA execution provider, by device index.
    Cuda(u32),
}

impl FromStr for Device {
    type Err = RecurError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse::<u32>().ok())
                .map(Device::Cuda)
                .ok_or_else(|| {
                    RecurError::Usage(format!("unknown device '{s}' (choose cpu, cuda or cuda:N)"))
                }),
        }
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// ONNX Runtime's graph optimisation level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OptLevel {
    /// No graph optimisation.
    Disable,
    /// Constant folding and redundant-node elimination.
    Basic,
    /// Basic plus node fusions.
    Extended,
    /// Everything, layout optimisations included (ONNX Runtime's default).
    #[default]
    All,
}

impl FromStr for OptLevel {
    type Err = RecurError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "0" | "disable" | "none" => Ok(OptLevel::Disable),
            "1" | "basic" => Ok(OptLevel::Basic),
            "2" | "extended" => Ok(OptLevel::Extended),
            "3" | "all" => Ok(OptLevel::All),
            other => Err(RecurError::Usage(format!(
                "unknown ONNX Runtime optimisation level '{other}' (choose disable, basic, extended or all)"
            ))),
        }
    }
}

/// How to build a backend. Only the ort backend reads the `ort_*` fields.
#[derive(Debug, Clone, Default)]
pub struct BackendOptions {
    /// The device to run on (`cpu` for tract).
    pub device: Device,
    /// The ONNX Runtime library to load; when `None`, `ORT_DYLIB_PATH`, then the copy
    /// `scripts/fetch-ort.sh` puts in `.ort/` (next to the executable, or in the source
    /// checkout the binary was built from).
    pub ort_lib: Option<PathBuf>,
    /// ONNX Runtime intra-op threads (`None`: its default, one per core).
    pub ort_threads: Option<usize>,
    /// ONNX Runtime graph optimisation level.
    pub ort_opt_level: OptLevel,
    /// Let CUDA's matrix products use TensorFloat-32 (faster on Ampere and later GPUs, about
    /// 1e-3 relative error). Off by default, so `--device cuda` gives f32 answers: ONNX
    /// Runtime's own default is on, which put 60 of the 134 fixtures 2e-4 to 1.5e-3 away
    /// from the CPU on an H200.
    pub cuda_tf32: bool,
}
