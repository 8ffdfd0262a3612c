//! The cuDNN backend (`--backend cudnn --device cuda[:N]`): recur's own executor with the
//! recurrent layers on an NVIDIA GPU through cuDNN, and the rest of the graph on the CPU.
//!
//! ONNX Runtime's CUDA provider runs an LSTM step by step at ~22 us a step for two layers
//! of hidden 64 whatever the batch (docs/PERFORMANCE.md, H200), about 12x what cuDNN takes
//! when it is asked directly; this backend asks cuDNN directly, for the models recur's
//! executor compiles (see [`super::native::DevicePlan`] for what runs where).

use super::native::{plan_placements, DevicePlan, NativePlan, Placement};
use super::{Backend, BackendOptions, Device};
use crate::cuda::Gpu;
use crate::error::{RecurError, Result};
use crate::model::Model;
use crate::tensor::{CheckedInputs, HostTensor};

/// A model on the GPU through cuDNN.
pub struct CudnnBackend {
    plan: NativePlan,
    device: DevicePlan,
    path: std::path::PathBuf,
}

impl CudnnBackend {
    /// Compiles the model for recur's executor (refusing, with the node, what it cannot
    /// take), opens the CUDA device and lays the recurrent weights out there. Each recurrent
    /// node left to the CPU is named in a warning.
    pub fn new(model: &Model, options: &BackendOptions) -> Result<Self> {
        let Device::Cuda(ordinal) = options.device else {
            return Err(RecurError::Usage(
                "the cudnn backend runs on a CUDA device: add --device cuda (or cuda:N)".into(),
            ));
        };
        let plan = compile(model)?;
        let gpu = Gpu::open(ordinal as usize)?;
        let device = DevicePlan::build(&plan, &model.ir, gpu, options.cuda_tf32)?;
        for p in device.placements() {
            if let Some(why) = &p.cpu_because {
                tracing::warn!(
                    "{}: node '{}' ({}) runs on the CPU under --backend cudnn: {why}",
                    model.path.display(),
                    p.node,
                    p.op
                );
            }
        }
        Ok(CudnnBackend {
            plan,
            device,
            path: model.path.clone(),
        })
    }

    /// Where each recurrent node runs.
    pub fn placements(&self) -> &[Placement] {
        self.device.placements()
    }

    /// The cuDNN algorithm of each stack of layers on the GPU.
    pub fn algorithms(&self) -> Vec<&'static str> {
        self.device.algorithms()
    }
}

/// Where each recurrent node of `model` would run under the cuDNN backend (graph order),
/// decided without a GPU; an error when recur's executor does not compile the model.
pub fn placements(model: &Model) -> Result<Vec<Placement>> {
    Ok(plan_placements(&compile(model)?, &model.ir))
}

/// The model compiled for recur's executor.
fn compile(model: &Model) -> Result<NativePlan> {
    let graph = model
        .proto
        .graph
        .as_ref()
        .expect("decode_proto checked the graph");
    NativePlan::compile(graph, &model.ir, model.ir.opset).map_err(|why| {
        RecurError::Usage(format!(
            "{}: the cudnn backend runs the models recur's own executor compiles, and it does not take this one: {why}; use --backend tract or --backend ort",
            model.path.display()
        ))
    })
}

impl Backend for CudnnBackend {
    fn name(&self) -> &'static str {
        "cudnn"
    }

    fn run(&mut self, inputs: &CheckedInputs) -> Result<Vec<(String, HostTensor)>> {
        self.device
            .run(&self.plan, inputs)
            .map_err(|message| RecurError::Engine {
                backend: "cudnn".into(),
                path: self.path.clone(),
                message,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The planner decides today what it decided when `gpu_check --backend cudnn` ran every
    /// fixture on an H200 (raw output committed in docs/gpu/): the same recurrent nodes on the
    /// GPU, all of which agreed with the CPU path, and the same models refused. A change that
    /// sends other nodes to cuDNN fails here until a GPU run records them.
    #[test]
    fn every_fixture_is_placed_as_it_ran_on_the_h200() {
        let log = std::fs::read_to_string("docs/gpu/h200-2026-12-04-cudnn.txt").unwrap();
        let (mut checked, mut on_gpu, mut refused, mut wrong) = (0, 0, 0, vec![]);
        for line in log.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let Some(id) = fields.first().filter(|f| f.contains('/')) else {
                continue;
            };
            let path = format!("models/{id}/model.onnx");
            if !std::path::Path::new(&path).exists() {
                continue;
            }
            let model = Model::load(std::path::Path::new(&path)).unwrap();
            let planned = placements(&model);
            if fields.get(1) == Some(&"refused:") {
                refused += 1;
                if planned.is_ok() {
                    wrong.push(format!("{id}: refused on the H200, compiled now"));
                }
                continue;
            }
            assert_eq!(fields.get(2), Some(&"yes"), "{line}");
            let Some((gpu, all)) = fields.get(5).and_then(|f| f.split_once('/')) else {
                panic!("no placement count in: {line}");
            };
            let planned = planned.unwrap();
            let now = planned.iter().filter(|p| p.cpu_because.is_none()).count();
            if now.to_string() != gpu || planned.len().to_string() != all {
                wrong.push(format!(
                    "{id}: {gpu}/{all} on the GPU on the H200, {now}/{} now",
                    planned.len()
                ));
            }
            checked += 1;
            on_gpu += now;
        }
        println!("{checked} fixtures placed as on the H200 ({on_gpu} recurrent nodes on the GPU), {refused} refused");
        assert!(checked >= 100 && on_gpu >= 20, "the log was not read");
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    #[test]
    fn the_cudnn_backend_wants_a_cuda_device() {
        let model =
            Model::load(std::path::Path::new("models/matrix/lstm_base/model.onnx")).unwrap();
        let err = CudnnBackend::new(&model, &BackendOptions::default())
            .err()
            .expect("refused on the CPU")
            .to_string();
        assert!(err.contains("--device cuda"), "{err}");
    }
}
