//! Streaming sessions: feed a sequence chunk by chunk (any size, down to one step) on either
//! backend, with every recurrent node's state carried between chunks.
//!
//! A [`Session`] is built from the two models of [`crate::onnx::streamable`]: the first chunk
//! runs the original graph (plus state outputs), so it starts from exactly the state the model
//! itself starts from; every later chunk runs the carry model, fed the previous chunk's state.
//! [`Session::feed`] gives each chunk's outputs; [`Session::run_chunked`] runs a whole sequence
//! in chunks and puts the outputs back together: per-step outputs concatenated along their time
//! axis, other outputs (last-step ones such as a classifier's scores or `Y_h`) taken from the
//! last chunk. Before it does, it checks on the first steps of the input that streaming gives
//! what the whole-sequence run gives, and refuses the model otherwise (a graph that looks
//! ahead, e.g. a mean over time, is not causal).

use ndarray::{Axis, Slice};

use crate::backend::{build_with, Backend, BackendKind, BackendOptions, Carried};
use crate::error::{RecurError, Result};
use crate::ir::RecurrentModel;
use crate::model::Model;
use crate::onnx::streamable::{make_streamable, StateWire, Streamable};
use crate::tensor::{check_inputs_into, CheckedInputs, HostTensor};

/// Tolerance of the causality check: streamed and whole-sequence runs of a causal model differ
/// only by float rounding.
const CAUSAL_ATOL: f32 = 1e-4;
const CAUSAL_RTOL: f32 = 1e-3;

/// One of the session's two models on its engine. ONNX Runtime runs with IO binding, so the
/// carried state stays where the session computes it (GPU memory under `--device cuda`).
enum Engine {
    Generic(Box<dyn Backend>),
    #[cfg(feature = "ort")]
    Ort(Box<crate::backend::ort::OrtBackend>),
}

/// The state a sequence carries between chunks, one value per [`StateWire`].
enum Carry {
    /// On the host (a host engine's state): the engine reads and writes it in place.
    Host(Vec<HostTensor>),
    /// On ONNX Runtime: values left on its device.
    #[cfg(feature = "ort")]
    Ort(Vec<StateValue>),
}

/// A piece of ONNX Runtime's carried state: a value left on its device, or on the host (a
/// state that is also a user output comes back with the outputs).
#[cfg(feature = "ort")]
enum StateValue {
    Host(HostTensor),
    Ort(ort::value::DynValue),
}

/// The shared, expensive part of streaming: the two models of [`crate::onnx::streamable`] built
/// on their engine. One `StreamModel` serves any number of sequences, each of which keeps only
/// its carried [`StreamState`]; `recur serve` holds one per model for all its sensor streams.
pub struct StreamModel {
    plan: Streamable,
    first_ir: RecurrentModel,
    /// The inputs the user gives each model (its graph inputs less the carried state).
    first_user_inputs: Vec<crate::ir::ValueInfo>,
    carry_user_inputs: Vec<crate::ir::ValueInfo>,
    first: Engine,
    carry: Engine,
    /// The last chunk's checked inputs for each model, kept so that the next chunk's are
    /// copied over them rather than allocated (see [`check_inputs_into`]).
    first_checked: CheckedInputs,
    carry_checked: CheckedInputs,
}

/// The per-sequence part of streaming: the recurrent state carried between chunks (on the host,
/// or left on the engine's device) and the steps fed so far. Small: its size is the model's
/// state, whatever the length of the sequence.
#[derive(Default)]
pub struct StreamState {
    state: Option<Carry>,
    steps: usize,
}

impl StreamState {
    /// A fresh sequence: the next chunk starts from the model's own initial state.
    pub fn new() -> Self {
        Self::default()
    }

    /// Steps fed since the sequence started or was reset.
    pub fn steps_seen(&self) -> usize {
        self.steps
    }

    /// Forgets the carried state: the next chunk starts a new sequence.
    pub fn reset(&mut self) {
        self.state = None;
        self.steps = 0;
    }

    /// Bytes of carried state held on the host (state left on an ONNX Runtime device is not
    /// counted): what one stream costs in memory beyond its bookkeeping.
    pub fn host_bytes(&self) -> usize {
        let bytes = |t: &HostTensor| t.shape().iter().product::<usize>() * 4;
        match &self.state {
            None => 0,
            Some(Carry::Host(values)) => values.iter().map(bytes).sum(),
            #[cfg(feature = "ort")]
            Some(Carry::Ort(values)) => values
                .iter()
                .map(|v| match v {
                    StateValue::Host(t) => bytes(t),
                    StateValue::Ort(_) => 0,
                })
                .sum(),
        }
    }
}

/// A streaming session over one model on one backend: a [`StreamModel`] with one
/// [`StreamState`].
pub struct Session {
    model: StreamModel,
    state: StreamState,
}

fn engine(kind: BackendKind, model: &Model, options: &BackendOptions) -> Result<Engine> {
    #[cfg(feature = "ort")]
    if kind == BackendKind::Ort {
        return Ok(Engine::Ort(Box::new(crate::backend::ort::OrtBackend::new(
            model, options,
        )?)));
    }
    Ok(Engine::Generic(build_with(kind, model, options)?))
}

impl StreamModel {
    /// Prepares the model for streaming (or refuses it, naming the node and the reason) and
    /// builds both of its models on the chosen backend.
    pub fn new(model: &Model, kind: BackendKind, options: &BackendOptions) -> Result<Self> {
        let plan = make_streamable(&model.proto, &model.ir)?;
        let first_model = Model {
            path: model.path.clone(),
            ir: crate::onnx::lift(&plan.first)?,
            proto: plan.first.clone(),
        };
        let carry_model = Model {
            path: model.path.clone(),
            ir: crate::onnx::lift(&plan.carry)?,
            proto: plan.carry.clone(),
        };
        let first = engine(kind, &first_model, options)?;
        let carry = engine(kind, &carry_model, options)?;
        let user_inputs = |ir: &RecurrentModel| -> Vec<crate::ir::ValueInfo> {
            ir.inputs
                .iter()
                .filter(|i| plan.states.iter().all(|w| w.input != i.name))
                .cloned()
                .collect()
        };
        Ok(StreamModel {
            first_user_inputs: user_inputs(&first_model.ir),
            carry_user_inputs: user_inputs(&carry_model.ir),
            first_ir: first_model.ir,
            plan,
            first,
            carry,
            first_checked: CheckedInputs::default(),
            carry_checked: CheckedInputs::default(),
        })
    }

    /// The graph input that holds the sequence, and its time axis.
    pub fn sequence_input(&self) -> (&str, usize) {
        (&self.plan.sequence_input, self.plan.time_axis)
    }

    /// The state carried between chunks.
    pub fn states(&self) -> &[StateWire] {
        &self.plan.states
    }

    /// The streaming models (first-chunk and carry).
    pub fn models(&self) -> &Streamable {
        &self.plan
    }

    /// The model's graph inputs (the sequence input among them), as the first chunk takes
    /// them: the inputs a caller feeds.
    pub fn inputs(&self) -> &[crate::ir::ValueInfo] {
        &self.first_ir.inputs
    }

    /// The model's outputs, in graph order: what each chunk gives back.
    pub fn output_names(&self) -> &[String] {
        &self.plan.user_outputs
    }

    /// Feeds one chunk of the sequence whose carried state is `state`: the model's inputs,
    /// with the sequence input holding the chunk's steps (any number, at least one). Returns
    /// the model's outputs for this chunk, in graph order, and moves `state` on. On an error
    /// `state` is left as it was.
    pub fn feed(
        &mut self,
        state: &mut StreamState,
        inputs: &[(String, HostTensor)],
    ) -> Result<Vec<(String, HostTensor)>> {
        let (seq, axis) = (&self.plan.sequence_input, self.plan.time_axis);
        let steps = inputs
            .iter()
            .find(|(n, _)| n == seq)
            .and_then(|(_, t)| t.shape().get(axis).copied())
            .ok_or_else(|| {
                RecurError::input(seq, format!("not given, or has no axis {axis} (time)"))
            })?;
        let user = self.run_once(inputs, &mut state.state)?;
        state.steps += steps;
        Ok(user)
    }

    /// Runs one chunk on the first-chunk model (nothing carried yet) or the carry model (fed
    /// the carried state); returns the user's outputs (graph order) and moves `carry` on to
    /// the new state. On an error `carry` is left as it was.
    fn run_once(
        &mut self,
        inputs: &[(String, HostTensor)],
        carry: &mut Option<Carry>,
    ) -> Result<Vec<(String, HostTensor)>> {
        let fresh = carry.is_none();
        let (declared, checked) = if fresh {
            (&self.first_user_inputs, &mut self.first_checked)
        } else {
            (&self.carry_user_inputs, &mut self.carry_checked)
        };
        check_inputs_into(declared, inputs, checked)?;
        let checked = &*checked;
        let engine = if fresh {
            &mut self.first
        } else {
            &mut self.carry
        };
        match engine {
            Engine::Generic(backend) => {
                let mut values = match carry.take() {
                    Some(Carry::Host(values)) => values,
                    None => Vec::new(),
                    #[cfg(feature = "ort")]
                    Some(Carry::Ort(_)) => unreachable!("a host engine carries host state"),
                };
                let ran = backend.run_carried(
                    checked,
                    Carried {
                        wires: &self.plan.states,
                        values: &mut values,
                        user_outputs: &self.plan.user_outputs,
                    },
                );
                // On an error `values` is as it was, and a fresh sequence stays fresh.
                if ran.is_ok() || !fresh {
                    *carry = Some(Carry::Host(values));
                }
                ran
            }
            #[cfg(feature = "ort")]
            Engine::Ort(backend) => {
                let previous = match carry.as_ref() {
                    Some(Carry::Ort(values)) => Some(values.as_slice()),
                    None => None,
                    Some(Carry::Host(_)) => unreachable!("host state on ONNX Runtime"),
                };
                // Host-side state (states that are also user outputs) goes back as a value.
                let mut converted: Vec<Option<ort::value::DynValue>> = Vec::new();
                if let Some(state) = previous {
                    for (wire, value) in self.plan.states.iter().zip(state) {
                        converted.push(match value {
                            StateValue::Ort(_) => None,
                            StateValue::Host(t) => {
                                Some(crate::backend::ort::to_value(t).map_err(|e| {
                                    RecurError::Usage(format!(
                                        "streaming: state '{}': {e}",
                                        wire.input
                                    ))
                                })?)
                            }
                        });
                    }
                }
                let mut kept_in: Vec<(&str, &ort::value::DynValue)> = Vec::new();
                if let Some(state) = previous {
                    for ((wire, value), host) in self.plan.states.iter().zip(state).zip(&converted)
                    {
                        match (value, host) {
                            (StateValue::Ort(v), _) => kept_in.push((&wire.input, v)),
                            (_, Some(v)) => kept_in.push((&wire.input, v)),
                            _ => unreachable!("every state converted"),
                        }
                    }
                }
                // States that are also user outputs come back to the host with them.
                let kept_out: Vec<String> = self
                    .plan
                    .states
                    .iter()
                    .map(|w| w.output.clone())
                    .filter(|o| !self.plan.user_outputs.contains(o))
                    .collect();
                let (host, kept) = backend.run_bound(checked, &kept_in, &kept_out)?;
                let find = |name: &str| {
                    host.iter()
                        .find(|(n, _)| n == name)
                        .map(|(_, t)| t.clone())
                        .ok_or_else(|| {
                            RecurError::Usage(format!("streaming: output '{name}' missing"))
                        })
                };
                let user = self
                    .plan
                    .user_outputs
                    .iter()
                    .map(|n| Ok((n.clone(), find(n)?)))
                    .collect::<Result<Vec<_>>>()?;
                let mut kept = kept.into_iter();
                let state = self
                    .plan
                    .states
                    .iter()
                    .map(|w| {
                        if kept_out.contains(&w.output) {
                            Ok(StateValue::Ort(
                                kept.next().expect("one kept value per state"),
                            ))
                        } else {
                            Ok(StateValue::Host(find(&w.output)?))
                        }
                    })
                    .collect::<Result<Vec<_>>>()?;
                *carry = Some(Carry::Ort(state));
                Ok(user)
            }
        }
    }
}

impl Session {
    /// Prepares the model for streaming (or refuses it, naming the node and the reason) and
    /// builds both of its models on the chosen backend.
    pub fn new(model: &Model, kind: BackendKind, options: &BackendOptions) -> Result<Self> {
        Ok(Session {
            model: StreamModel::new(model, kind, options)?,
            state: StreamState::new(),
        })
    }

    /// The graph input that holds the sequence, and its time axis.
    pub fn sequence_input(&self) -> (&str, usize) {
        self.model.sequence_input()
    }

    /// The state carried between chunks.
    pub fn states(&self) -> &[StateWire] {
        self.model.states()
    }

    /// The streaming models (first-chunk and carry).
    pub fn models(&self) -> &Streamable {
        self.model.models()
    }

    /// Steps fed since the session started or was reset.
    pub fn steps_seen(&self) -> usize {
        self.state.steps_seen()
    }

    /// Forgets the carried state: the next chunk starts a new sequence.
    pub fn reset(&mut self) {
        self.state.reset();
    }

    /// Feeds one chunk: the model's inputs, with the sequence input holding the chunk's steps
    /// (any number, at least one). Returns the model's outputs for this chunk, in graph order.
    pub fn feed(&mut self, inputs: &[(String, HostTensor)]) -> Result<Vec<(String, HostTensor)>> {
        self.model.feed(&mut self.state, inputs)
    }

    /// Checks on the first (up to four) steps of `inputs` that streaming gives what the
    /// whole-sequence run gives, and refuses the model otherwise (naming the output). Leaves
    /// the session reset. `recur serve` runs this on a probe sequence before it takes a model.
    pub fn check_streaming(&mut self, inputs: &[(String, HostTensor)]) -> Result<()> {
        let (seq, _) = self.model.sequence_input();
        let seq = seq.to_string();
        let x = inputs
            .iter()
            .find(|(n, _)| *n == seq)
            .map(|(_, t)| t.clone())
            .ok_or_else(|| RecurError::input(&seq, "not given"))?;
        self.check_causal(inputs, &x).map(|_| ())
    }

    /// The shared part of the session, for serving many sequences (its state is dropped).
    pub fn into_model(self) -> StreamModel {
        self.model
    }

    /// Runs a whole sequence `chunk` steps at a time from a fresh state and returns the
    /// outputs as the whole-sequence run would: per-step outputs concatenated, the others
    /// from the last chunk. Refuses the model when streaming would change its outputs.
    pub fn run_chunked(
        &mut self,
        inputs: &[(String, HostTensor)],
        chunk: usize,
    ) -> Result<Vec<(String, HostTensor)>> {
        if chunk == 0 {
            return Err(RecurError::Usage("--chunk must be at least 1".into()));
        }
        let (seq, axis) = (
            self.model.plan.sequence_input.clone(),
            self.model.plan.time_axis,
        );
        let x = inputs
            .iter()
            .find(|(n, _)| *n == seq)
            .map(|(_, t)| t.clone())
            .ok_or_else(|| RecurError::input(&seq, "not given"))?;
        let total = x.shape()[axis];
        let time_axes = self.check_causal(inputs, &x)?;
        self.reset();
        let mut pieces: Vec<Vec<(String, HostTensor)>> = Vec::new();
        let mut start = 0;
        while start < total {
            let end = (start + chunk).min(total);
            let fed = with_input(inputs, &seq, slice(&x, axis, start, end));
            pieces.push(self.feed(&fed)?);
            start = end;
        }
        assemble(&pieces, &time_axes)
    }

    /// Finds each output's time axis (`None` for last-step outputs) from runs on the first one
    /// and two steps, then checks on the first (up to) four steps that one step followed by the
    /// rest gives what the whole run gives. Leaves the session reset.
    fn check_causal(
        &mut self,
        inputs: &[(String, HostTensor)],
        x: &HostTensor,
    ) -> Result<Vec<Option<usize>>> {
        let (seq, axis) = (
            self.model.plan.sequence_input.clone(),
            self.model.plan.time_axis,
        );
        let total = x.shape()[axis];
        let n_out = self.model.plan.user_outputs.len();
        if total < 2 {
            return Ok(vec![None; n_out]);
        }
        self.reset();
        let one = self.feed(&with_input(inputs, &seq, slice(x, axis, 0, 1)))?;
        self.reset();
        let two = self.feed(&with_input(inputs, &seq, slice(x, axis, 0, 2)))?;
        let mut axes = Vec::with_capacity(n_out);
        for ((name, a), (_, b)) in one.iter().zip(&two) {
            let differ: Vec<usize> = (0..a.shape().len().min(b.shape().len()))
                .filter(|&i| a.shape()[i] != b.shape()[i])
                .collect();
            axes.push(match differ.as_slice() {
                [] if a.shape() == b.shape() => None,
                [i] if a.shape()[*i] == 1 && b.shape()[*i] == 2 => Some(*i),
                _ => {
                    return Err(RecurError::Usage(format!(
                        "cannot stream: output '{name}' has shape {:?} after one step and {:?} after two, not one step per step",
                        a.shape(),
                        b.shape()
                    )))
                }
            });
        }
        let n = total.min(4);
        self.reset();
        let whole = self.feed(&with_input(inputs, &seq, slice(x, axis, 0, n)))?;
        self.reset();
        let head = self.feed(&with_input(inputs, &seq, slice(x, axis, 0, 1)))?;
        let tail = self.feed(&with_input(inputs, &seq, slice(x, axis, 1, n)))?;
        self.reset();
        let streamed = assemble(&[head, tail], &axes)?;
        for ((name, w), (_, s)) in whole.iter().zip(&streamed) {
            let (w, s) = (w.to_f32(), s.to_f32());
            let off = w.shape() != s.shape()
                || w.iter()
                    .zip(s.iter())
                    .any(|(a, b)| (a - b).abs() > CAUSAL_ATOL + CAUSAL_RTOL * a.abs());
            if off {
                return Err(RecurError::Usage(format!(
                    "cannot stream this model: output '{name}' over the first {n} steps differs when the steps come one chunk at a time, so the graph after its recurrent layers looks at later steps (not causal)"
                )));
            }
        }
        Ok(axes)
    }
}

/// The inputs with `name` replaced by `value`.
fn with_input(
    inputs: &[(String, HostTensor)],
    name: &str,
    value: HostTensor,
) -> Vec<(String, HostTensor)> {
    inputs
        .iter()
        .map(|(n, t)| {
            if n == name {
                (n.clone(), value.clone())
            } else {
                (n.clone(), t.clone())
            }
        })
        .collect()
}

/// Steps `start..end` of `t` along `axis`.
pub fn slice(t: &HostTensor, axis: usize, start: usize, end: usize) -> HostTensor {
    let s = Slice::from(start..end);
    match t {
        HostTensor::F32(a) => HostTensor::F32(a.slice_axis(Axis(axis), s).to_owned()),
        HostTensor::I64(a) => HostTensor::I64(a.slice_axis(Axis(axis), s).to_owned()),
        HostTensor::I32(a) => HostTensor::I32(a.slice_axis(Axis(axis), s).to_owned()),
    }
}

/// Puts chunk outputs together: concatenated along the time axis, or the last chunk's.
fn assemble(
    pieces: &[Vec<(String, HostTensor)>],
    time_axes: &[Option<usize>],
) -> Result<Vec<(String, HostTensor)>> {
    let last = pieces
        .last()
        .ok_or_else(|| RecurError::Usage("empty sequence".into()))?;
    let mut out = Vec::with_capacity(last.len());
    for (i, (name, last_value)) in last.iter().enumerate() {
        let value = match time_axes.get(i).copied().flatten() {
            None => last_value.clone(),
            Some(axis) => {
                let parts: Vec<&HostTensor> = pieces.iter().map(|p| &p[i].1).collect();
                concat(name, axis, &parts)?
            }
        };
        out.push((name.clone(), value));
    }
    Ok(out)
}

fn concat(name: &str, axis: usize, parts: &[&HostTensor]) -> Result<HostTensor> {
    let err = |e: ndarray::ShapeError| {
        RecurError::Usage(format!(
            "streaming: cannot join chunks of output '{name}': {e}"
        ))
    };
    macro_rules! join {
        ($variant:ident) => {{
            let views: Vec<_> = parts
                .iter()
                .map(|p| match p {
                    HostTensor::$variant(a) => Ok(a.view()),
                    _ => Err(RecurError::Usage(format!(
                        "streaming: output '{name}' changes type between chunks"
                    ))),
                })
                .collect::<Result<_>>()?;
            HostTensor::$variant(ndarray::concatenate(Axis(axis), &views).map_err(err)?)
        }};
    }
    Ok(match parts[0] {
        HostTensor::F32(_) => join!(F32),
        HostTensor::I64(_) => join!(I64),
        HostTensor::I32(_) => join!(I32),
    })
}
