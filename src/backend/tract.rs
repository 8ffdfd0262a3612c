//! The tract backend: CPU, f32, behind the guard of [`super::tract_guard`].
//!
//! tract wants concrete shapes to optimise a model, so one optimised plan is built per set of
//! input shapes and kept for later runs with the same shapes.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::Arc;

use tract_onnx::prelude::*;

use tract_onnx::pb::ModelProto;

use super::tract_guard::tract_refusals;
use super::Backend;
use crate::error::{one_line, panic_message, RecurError, Result};
use crate::ir::RecurrentModel;
use crate::model::Model;
use crate::tensor::{CheckedInputs, HostTensor};

type Plan = Arc<TypedRunnableModel>;

/// tract running one model, with its optimised plans cached by input shapes.
pub struct TractBackend {
    path: PathBuf,
    ir: RecurrentModel,
    model: InferenceModel,
    plans: HashMap<Vec<Vec<usize>>, Plan>,
    /// recur's own executor, when the whole graph is within its reach (see `native`).
    native: Option<super::native::NativePlan>,
    /// Why `native` was dropped after it had run, if it was (see [`Self::gave_way`]).
    gave_way: Option<String>,
}

/// Why recur's executor did not run a call.
enum NativeMiss {
    /// It does not hold this model.
    Absent,
    /// It refused the call, for this reason.
    Refused(String),
    /// It panicked (and has handed the model to tract).
    Panicked,
}

impl TractBackend {
    /// The CPU path: tract with recur's recurrent kernels, after the guard has accepted the
    /// model.
    pub fn new(model: &Model, _path: &std::path::Path) -> Result<Self> {
        let mut backend = Self::build(model, true)?;
        let graph = model
            .proto
            .graph
            .as_ref()
            .expect("decode_proto checked the graph");
        match super::native::NativePlan::compile(graph, &model.ir, model.ir.opset) {
            Ok(plan) => backend.native = Some(plan),
            Err(why) => tracing::debug!("tract runs the graph: {why}"),
        }
        Ok(backend)
    }

    /// The CPU path through tract only (recur's kernels inside tract, never recur's own
    /// executor): for the tests that hold the two executors to each other.
    pub fn tract_only(model: &Model) -> Result<Self> {
        Self::build(model, true)
    }

    /// Runs `run` on recur's executor when it holds this model, or says why it did not. A
    /// panic is a bug in recur's executor: it is logged as a warning and tract runs this
    /// model from now on. A refusal (inputs it cannot take, an integer shape computation,
    /// say, or values no engine takes) is settled by [`Self::settle`] once tract has tried.
    fn try_native<T>(
        &mut self,
        run: impl FnOnce(&mut super::native::NativePlan) -> std::result::Result<T, String>,
    ) -> std::result::Result<T, NativeMiss> {
        let Some(native) = self.native.as_mut() else {
            return Err(NativeMiss::Absent);
        };
        match catch_unwind(AssertUnwindSafe(|| run(native))) {
            Ok(Ok(outputs)) => Ok(outputs),
            Ok(Err(why)) => {
                tracing::debug!("recur's executor gives way to tract for this run: {why}");
                Err(NativeMiss::Refused(why))
            }
            Err(panic) => {
                let why = format!("recur's executor panicked: {}", panic_message(panic));
                tracing::warn!(
                    "{}: {why}; tract runs this model from now on",
                    self.path.display()
                );
                self.native = None;
                self.gave_way = Some(why);
                Err(NativeMiss::Panicked)
            }
        }
    }

    /// After tract ran a call recur's executor refused: if tract ran it, the executor cannot
    /// take this model and tract runs it from now on ([`Self::gave_way`] keeps the reason);
    /// if tract refused it too, the inputs were at fault (a sequence length past the end,
    /// say) and the executor keeps the model for the calls that follow.
    fn settle<T>(&mut self, miss: NativeMiss, tract_ran: &Result<T>) {
        if let NativeMiss::Refused(why) = miss {
            if tract_ran.is_ok() {
                self.native = None;
                self.gave_way = Some(why);
            }
        }
    }

    /// Why recur's executor handed this model to tract after running it (a panic, or inputs
    /// it could not take), if it did: for the tests that hold the executor to every run.
    pub fn gave_way(&self) -> Option<&str> {
        self.gave_way.as_deref()
    }

    /// Whether recur's own executor runs this model (rather than tract's plan).
    pub fn runs_natively(&self) -> bool {
        self.native.is_some()
    }

    /// How many runs took recur's step path (one time step, every buffer kept between runs;
    /// see `native`): for the tests that check streamed steps use it.
    pub fn step_path_runs(&self) -> usize {
        self.native.as_ref().map_or(0, |n| n.step_runs())
    }

    /// How many step programs recur's executor built: one per step shape, however many
    /// runs on other shapes come between the steps.
    pub fn step_path_builds(&self) -> usize {
        self.native.as_ref().map_or(0, |n| n.step_builds())
    }

    /// Stock tract 0.23.9, with its own recurrent ops and no guard: tract's answers, right or
    /// wrong. For the tests and benches that compare recur with plain tract.
    pub fn plain_tract(model: &Model) -> Result<Self> {
        Self::build(model, false)
    }

    fn build(model: &Model, recur_kernels: bool) -> Result<Self> {
        if recur_kernels {
            refuse_first(&model.ir)?;
        }
        let parsed = parse(&model.path, &model.proto, recur_kernels)?;
        Ok(TractBackend {
            path: model.path.clone(),
            ir: model.ir.clone(),
            model: parsed,
            plans: HashMap::new(),
            native: None,
            gave_way: None,
        })
    }

    fn plan_for(&mut self, inputs: &CheckedInputs) -> Result<Plan> {
        let shapes: Vec<Vec<usize>> = inputs
            .tensors
            .iter()
            .map(|(_, t)| t.shape().to_vec())
            .collect();
        if let Some(plan) = self.plans.get(&shapes) {
            return Ok(plan.clone());
        }
        let mut model = self.model.clone();
        let outlets = model
            .input_outlets()
            .map_err(|e| self.engine_error(e))?
            .to_vec();
        for (i, outlet) in outlets.iter().enumerate() {
            let name = model.node(outlet.node).name.clone();
            let (_, tensor) = inputs
                .tensors
                .iter()
                .find(|(n, _)| *n == name)
                .ok_or_else(|| RecurError::input(&name, "not given"))?;
            let dt = match tensor {
                HostTensor::F32(_) => f32::datum_type(),
                HostTensor::I64(_) => i64::datum_type(),
                HostTensor::I32(_) => i32::datum_type(),
            };
            model
                .set_input_fact(i, InferenceFact::dt_shape(dt, tensor.shape()))
                .map_err(|e| self.engine_error(e))?;
        }
        let plan = guard_engine(&self.path, move || model.into_optimized()?.into_runnable())
            .map_err(|e| self.blame_node(e))?;
        self.plans.insert(shapes, plan.clone());
        Ok(plan)
    }

    /// tract reports a failing node as `Evaluating #N "name"`: such a failure becomes a
    /// refusal of that node, so the user learns which layer the CPU path cannot run.
    fn blame_node(&self, error: RecurError) -> RecurError {
        let RecurError::Engine { message, .. } = &error else {
            return error;
        };
        let named = message
            .split('"')
            .skip(1)
            .step_by(2)
            .find_map(|name| self.ir.layers.iter().find(|l| l.node == name));
        match named {
            Some(layer) => RecurError::Unsupported {
                backend: "tract".into(),
                node: layer.node.clone(),
                op: layer.op.clone(),
                reason: format!("tract 0.23.9 fails on it: {message}"),
            },
            None => error,
        }
    }

    fn engine_error(&self, e: impl std::fmt::Display) -> RecurError {
        RecurError::Engine {
            backend: "tract".into(),
            path: self.path.clone(),
            message: one_line(&format!("{e:#}")),
        }
    }
}

impl Backend for TractBackend {
    fn name(&self) -> &'static str {
        "tract"
    }

    fn run(&mut self, inputs: &CheckedInputs) -> Result<Vec<(String, HostTensor)>> {
        let miss = match self.try_native(|native| native.run(inputs)) {
            Ok(outputs) => return Ok(outputs),
            Err(miss) => miss,
        };
        let ran = self.run_on_tract(inputs);
        self.settle(miss, &ran);
        ran
    }

    /// On recur's executor the state is read and written where it lies (see
    /// [`super::native::NativePlan::run_carried`]); on tract it goes in as inputs.
    fn run_carried(
        &mut self,
        user: &CheckedInputs,
        mut carried: super::Carried<'_>,
    ) -> Result<Vec<(String, HostTensor)>> {
        let miss = match self.try_native(|native| native.run_carried(user, carried.reborrow())) {
            Ok(outputs) => return Ok(outputs),
            Err(miss) => miss,
        };
        // tract alone runs this call: the executor has just refused it.
        let held = self.native.take();
        let ran = super::run_carried_as_inputs(self, user, carried);
        self.native = held;
        self.settle(miss, &ran);
        ran
    }
}

impl TractBackend {
    /// One run on tract's plan for these inputs' shapes.
    fn run_on_tract(&mut self, inputs: &CheckedInputs) -> Result<Vec<(String, HostTensor)>> {
        let plan = self.plan_for(inputs)?;
        let outlets = plan
            .model()
            .input_outlets()
            .map_err(|e| self.engine_error(e))?;
        let mut values: TVec<TValue> = TVec::new();
        for outlet in outlets {
            let name = &plan.model().node(outlet.node).name;
            let (_, tensor) = inputs
                .tensors
                .iter()
                .find(|(n, _)| n == name)
                .ok_or_else(|| RecurError::input(name, "not given"))?;
            let value: Tensor = match tensor {
                HostTensor::F32(a) => a.clone().into(),
                HostTensor::I64(a) => a.clone().into(),
                HostTensor::I32(a) => a.clone().into(),
            };
            values.push(value.into_tvalue());
        }
        let outputs =
            guard_engine(&self.path, || plan.run(values)).map_err(|e| self.blame_node(e))?;
        outputs
            .into_iter()
            .zip(&self.ir.outputs)
            .map(|(value, decl)| {
                Ok((
                    decl.name.clone(),
                    to_host(&value).map_err(|e| self.engine_error(e))?,
                ))
            })
            .collect()
    }
}

/// tract's ONNX importer with recur's kernels in place of its LSTM, GRU and RNN, and recur's
/// Keras `Loop` importer.
pub fn recur_onnx() -> tract_onnx::Onnx {
    let mut onnx = tract_onnx::onnx();
    crate::kernels::tract_op::register(&mut onnx.op_register);
    crate::kernels::register_loop(&mut onnx.op_register);
    onnx
}

fn parse(
    path: &std::path::Path,
    proto: &ModelProto,
    recur_kernels: bool,
) -> Result<InferenceModel> {
    let onnx = if recur_kernels {
        recur_onnx()
    } else {
        tract_onnx::onnx()
    };
    guard_engine(path, || onnx.model_for_proto_model(proto))
}

/// The first refusal of the guard as an error.
fn refuse_first(ir: &RecurrentModel) -> Result<()> {
    match tract_refusals(ir).into_iter().next() {
        None => Ok(()),
        Some(r) => Err(RecurError::Unsupported {
            backend: "tract".into(),
            node: r.node,
            op: r.op,
            reason: r.reason,
        }),
    }
}

/// Runs an engine call, turning its errors and panics into one-line errors naming the model.
fn guard_engine<T>(path: &std::path::Path, f: impl FnOnce() -> TractResult<T>) -> Result<T> {
    let engine = |message: String| RecurError::Engine {
        backend: "tract".into(),
        path: path.to_path_buf(),
        message: one_line(&message),
    };
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(engine(format!("{e:#}"))),
        Err(panic) => Err(engine(format!("tract panicked: {}", panic_message(panic)))),
    }
}

fn to_host(value: &TValue) -> TractResult<HostTensor> {
    let dt = value.datum_type();
    Ok(if dt == i64::datum_type() {
        HostTensor::I64(value.to_plain_array_view::<i64>()?.to_owned())
    } else if dt == i32::datum_type() {
        HostTensor::I32(value.to_plain_array_view::<i32>()?.to_owned())
    } else if dt == f32::datum_type() {
        HostTensor::F32(value.to_plain_array_view::<f32>()?.to_owned())
    } else {
        let cast = value.cast_to::<f32>()?;
        HostTensor::F32(cast.to_plain_array_view::<f32>()?.to_owned())
    })
}
