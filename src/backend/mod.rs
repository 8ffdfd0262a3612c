//! Engines that run a model: the `Backend` trait and its implementations.
//!
//! A backend is built from a model file, refuses at build time what it cannot compute exactly
//! (naming the node), and then runs checked inputs as many times as asked.

pub mod native;
pub mod options;
#[cfg(feature = "ort")]
pub mod ort;
pub mod tract;
pub mod tract_guard;

pub use options::{BackendOptions, Device, OptLevel};

use std::path::Path;
use std::str::FromStr;

use crate::error::{RecurError, Result};
use crate::model::Model;
use crate::tensor::{CheckedInputs, HostTensor};

/// An engine that runs a whole model on checked inputs. `Send`, so that a service can build a
/// new model on one thread and hand it to the thread that serves (see `recur serve`).
pub trait Backend: Send {
    /// Short name used in messages and reports ("tract", "ort").
    fn name(&self) -> &'static str;
    /// Runs the model once; outputs come back named, in graph-output order.
    fn run(&mut self, inputs: &CheckedInputs) -> Result<Vec<(String, HostTensor)>>;
}

/// The backends a user can choose on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// tract on the CPU, behind recur's guard.
    #[default]
    Tract,
    /// ONNX Runtime (CPU or CUDA).
    Ort,
}

impl FromStr for BackendKind {
    type Err = RecurError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "tract" => Ok(BackendKind::Tract),
            "ort" => Ok(BackendKind::Ort),
            other => Err(RecurError::Usage(format!(
                "unknown backend '{other}' (choose tract or ort)"
            ))),
        }
    }
}

/// Builds the chosen backend for a loaded model with default options (ort: CPU, library
/// found as [`BackendOptions`] describes). `_path` is kept for existing callers; the model
/// knows its file.
pub fn build(kind: BackendKind, model: &Model, _path: &Path) -> Result<Box<dyn Backend>> {
    build_with(kind, model, &BackendOptions::default())
}

/// Builds the chosen backend for a loaded model with the given options; the tract backend
/// refuses any device other than the CPU.
pub fn build_with(
    kind: BackendKind,
    model: &Model,
    options: &BackendOptions,
) -> Result<Box<dyn Backend>> {
    match kind {
        BackendKind::Tract => {
            if options.device != Device::Cpu {
                return Err(RecurError::Usage(format!(
                    "the tract backend runs on the CPU only, not on '{}'; use --backend ort --device {}",
                    options.device, options.device
                )));
            }
            Ok(Box::new(tract::TractBackend::new(model, &model.path)?))
        }
        #[cfg(feature = "ort")]
        BackendKind::Ort => Ok(Box::new(ort::OrtBackend::new(model, options)?)),
        #[cfg(not(feature = "ort"))]
        BackendKind::Ort => Err(RecurError::Usage(
            "this recur was built without the 'ort' feature; rebuild with it or use --backend tract"
                .into(),
        )),
    }
}
