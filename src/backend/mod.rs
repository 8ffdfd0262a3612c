//! Engines that run a model: the `Backend` trait and its implementations.
//!
//! A backend is built from a model file, refuses at build time what it cannot compute exactly
//! (naming the node), and then runs checked inputs as many times as asked.

pub mod native;
pub mod tract;
pub mod tract_guard;

use std::path::Path;
use std::str::FromStr;

use crate::error::{RecurError, Result};
use crate::model::Model;
use crate::tensor::{CheckedInputs, HostTensor};

/// An engine that runs a whole model on checked inputs.
pub trait Backend {
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

/// Builds the chosen backend for a loaded model.
pub fn build(kind: BackendKind, model: &Model, path: &Path) -> Result<Box<dyn Backend>> {
    match kind {
        BackendKind::Tract => Ok(Box::new(tract::TractBackend::new(model, path)?)),
        BackendKind::Ort => Err(RecurError::Usage(
            "the ort backend is not part of this build yet; use --backend tract".into(),
        )),
    }
}
