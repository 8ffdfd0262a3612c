//! Engines that run a model: the `Backend` trait and its implementations.
//!
//! A backend is built from a model file, refuses at build time what it cannot compute exactly
//! (naming the node), and then runs checked inputs as many times as asked.

pub mod cudnn;
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
use crate::onnx::streamable::StateWire;
use crate::tensor::{CheckedInputs, HostTensor};

/// An engine that runs a whole model on checked inputs. `Send`, so that a service can build a
/// new model on one thread and hand it to the thread that serves (see `recur serve`).
pub trait Backend: Send {
    /// Short name used in messages and reports ("tract", "ort").
    fn name(&self) -> &'static str;
    /// Runs the model once; outputs come back named, in graph-output order.
    fn run(&mut self, inputs: &CheckedInputs) -> Result<Vec<(String, HostTensor)>>;

    /// Runs one chunk of a stream (see [`crate::stream`]): `user` holds the model's own
    /// inputs, `carried` the state the chunk starts from, which the run replaces by the
    /// state it ends in. Returns the outputs named in `carried.user_outputs`, in that order.
    /// On an error the state is left as it was. A backend whose executor can read and write
    /// the state where it lies overrides this; the default feeds it as ordinary inputs.
    fn run_carried(
        &mut self,
        user: &CheckedInputs,
        carried: Carried<'_>,
    ) -> Result<Vec<(String, HostTensor)>> {
        run_carried_as_inputs(self, user, carried)
    }
}

/// A stream's carried state as [`Backend::run_carried`] takes it.
pub struct Carried<'a> {
    /// Which graph input takes each piece of state, and which output gives it back.
    pub wires: &'a [StateWire],
    /// One tensor per wire: fed as the wires' inputs and replaced by their outputs. Empty on
    /// a sequence's first chunk, whose model starts from its own initial state (it has no
    /// state inputs): the run fills it.
    pub values: &'a mut Vec<HostTensor>,
    /// The outputs the caller wants back, in this order (an output may also be state).
    pub user_outputs: &'a [String],
}

impl Carried<'_> {
    /// The same state, borrowed again (to try one executor, then another).
    pub fn reborrow(&mut self) -> Carried<'_> {
        Carried {
            wires: self.wires,
            values: self.values,
            user_outputs: self.user_outputs,
        }
    }
}

/// [`Backend::run_carried`] for any backend: the state is copied in as ordinary inputs
/// (after the user's, in wire order, as the carry model declares them) and taken back out
/// of the outputs.
pub fn run_carried_as_inputs<B: Backend + ?Sized>(
    backend: &mut B,
    user: &CheckedInputs,
    carried: Carried<'_>,
) -> Result<Vec<(String, HostTensor)>> {
    let Carried {
        wires,
        values,
        user_outputs,
    } = carried;
    let mut user = user.clone();
    if !values.is_empty() {
        for (wire, value) in wires.iter().zip(values.iter()) {
            user.tensors.push((wire.input.clone(), value.clone()));
        }
    }
    let mut outputs = backend.run(&user)?;
    // Each output moves out once; one that is both a user output and state is copied for
    // the user.
    let mut take = |name: &str, copy: bool| -> Result<HostTensor> {
        let (_, t) = outputs
            .iter_mut()
            .find(|(n, _)| n == name)
            .ok_or_else(|| RecurError::Usage(format!("streaming: output '{name}' missing")))?;
        Ok(if copy { t.clone() } else { t.take() })
    };
    let returned = user_outputs
        .iter()
        .map(|n| Ok((n.clone(), take(n, wires.iter().any(|w| w.output == *n))?)))
        .collect::<Result<Vec<_>>>()?;
    *values = wires
        .iter()
        .map(|w| take(&w.output, false))
        .collect::<Result<Vec<_>>>()?;
    Ok(returned)
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
    /// recur's executor with the recurrent layers on a CUDA GPU through cuDNN.
    Cudnn,
}

impl FromStr for BackendKind {
    type Err = RecurError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "tract" => Ok(BackendKind::Tract),
            "ort" => Ok(BackendKind::Ort),
            "cudnn" => Ok(BackendKind::Cudnn),
            other => Err(RecurError::Usage(format!(
                "unknown backend '{other}' (choose tract, ort or cudnn)"
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
        BackendKind::Cudnn => Ok(Box::new(cudnn::CudnnBackend::new(model, options)?)),
    }
}
