//! recur's executor with its recurrent layers on an NVIDIA GPU (the cuDNN backend).
//!
//! The same compiled graph as the CPU path ([`NativePlan`]), run op by op, except that each
//! recurrent node cuDNN computes exactly runs there, and a chain of them joined by the
//! Squeeze that ONNX exporters put between stacked layers runs as one cuDNN stack (cuDNN
//! overlaps the layers' steps). Their outputs stay on the device: the next layer, and the
//! shape-only ops between, read them there, and other ops and the graph's outputs copy them
//! back. A bidirectional layer's Y stays in the order cuDNN writes it (each step's two
//! directions side by side), which is the order the Transpose exporters put after it asks
//! for, so the next layer reads it where it is. Recurrent nodes cuDNN does not compute as
//! ONNX defines them (clip, peepholes, `input_forget`, other activations, a GRU with
//! `linear_before_reset=0`, reverse layers, batch-first layout, `sequence_lens`) run on the
//! CPU kernels, and [`DevicePlan::placements`] says so, node by node.

mod plan;

use std::collections::HashMap;
use std::sync::Arc;

use ndarray::{ArrayD, Axis, Ix2};

use super::{eval, reads, reshape_target, take_output, NativePlan, Op, Value};
use crate::cuda::rnn::{CellMode, LayerParams, RnnStack};
use crate::cuda::{DeviceBuffer, Gpu};
use crate::ir::{LayerKind, RecurrentModel};
use crate::tensor::{CheckedInputs, HostTensor};
pub use plan::{plan_placements, Placement};
use plan::{plan_units, Planned};

/// A device-resident value: a window of a device buffer with an ONNX shape.
#[derive(Clone)]
struct DeviceValue {
    buffer: Arc<DeviceBuffer>,
    offset: usize,
    /// The ONNX shape.
    shape: Vec<usize>,
    /// A bidirectional layer's Y as cuDNN writes it: ONNX shape `[T, 2, B, H]` with the
    /// memory in `[T, B, 2, H]` order (each step's directions side by side). Otherwise the
    /// memory is in the shape's standard order.
    directions_inner: bool,
}

impl DeviceValue {
    fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// The value on the host, in its ONNX shape.
    fn download(&self) -> Result<ArrayD<f32>, String> {
        let mut data = vec![0f32; self.len()];
        self.buffer
            .read(self.offset, &mut data)
            .map_err(|e| e.to_string())?;
        if self.directions_inner {
            let [t, d, b, h] = self.shape[..] else {
                return Err(format!("a bidirectional Y of shape {:?}", self.shape));
            };
            let memory =
                ArrayD::from_shape_vec(vec![t, b, d, h], data).map_err(|e| e.to_string())?;
            return Ok(memory
                .permuted_axes(vec![0, 2, 1, 3])
                .as_standard_layout()
                .into_owned());
        }
        ArrayD::from_shape_vec(self.shape.clone(), data).map_err(|e| e.to_string())
    }
}

/// One cuDNN stack and the value slots it reads and writes.
struct Stack {
    rnn: RnnStack,
    input: usize,
    hidden: usize,
    x: usize,
    /// Per layer: the slots of initial_h and initial_c, when given.
    h0: Vec<Option<usize>>,
    c0: Vec<Option<usize>>,
    /// The top layer's Y slot.
    y: Option<usize>,
    /// Per layer: the slots of Y_h and Y_c, when used.
    y_h: Vec<Option<usize>>,
    y_c: Vec<Option<usize>>,
    /// Initial states gathered for cuDNN (`[layers * directions, batch, hidden]`), kept
    /// between runs.
    h0_buffer: Option<DeviceBuffer>,
    c0_buffer: Option<DeviceBuffer>,
}

enum Unit {
    Host(usize),
    Stack(Box<Stack>),
}

/// A compiled graph's run plan on a GPU: which ops run where, the cuDNN stacks with their
/// weights on the device, and the buffers the graph's inputs are copied into.
pub struct DevicePlan {
    gpu: Arc<Gpu>,
    units: Vec<Unit>,
    placements: Vec<Placement>,
    /// Device copies of graph inputs, per slot, reused between runs.
    staged: HashMap<usize, Arc<DeviceBuffer>>,
}

impl DevicePlan {
    /// Plans `plan` (compiled from `ir`'s graph) for `gpu`:
    /// builds a cuDNN stack per chain of recurrent nodes it computes exactly, with the
    /// weights laid out on the device once. `tf32` lets cuDNN use TensorFloat-32.
    pub fn build(
        plan: &NativePlan,
        ir: &RecurrentModel,
        gpu: Arc<Gpu>,
        tf32: bool,
    ) -> crate::Result<Self> {
        let (planned, placements) = plan_units(plan, ir);
        let mut units = Vec::with_capacity(planned.len());
        for unit in planned {
            units.push(match unit {
                Planned::Host(i) => Unit::Host(i),
                Planned::Stack { layers, cell, .. } => {
                    Unit::Stack(Box::new(build_stack(plan, ir, &layers, cell, &gpu, tf32)?))
                }
            });
        }
        Ok(DevicePlan {
            gpu,
            units,
            placements,
            staged: HashMap::new(),
        })
    }

    /// Where each recurrent node runs, in graph order.
    pub fn placements(&self) -> &[Placement] {
        &self.placements
    }

    /// The cuDNN algorithm of each stack, in order (for reports).
    pub fn algorithms(&self) -> Vec<&'static str> {
        self.units
            .iter()
            .filter_map(|u| match u {
                Unit::Stack(s) => Some(s.rnn.algo_name()),
                Unit::Host(_) => None,
            })
            .collect()
    }

    /// Runs `plan` on checked inputs; outputs come back named, in graph order.
    pub fn run(
        &mut self,
        plan: &NativePlan,
        given: &CheckedInputs,
    ) -> Result<Vec<(String, HostTensor)>, String> {
        self.gpu.bind().map_err(|e| e.to_string())?;
        let mut host: Vec<Option<Value>> = vec![None; plan.slots];
        for (slot, v) in &plan.constants {
            host[*slot] = Some(v.clone());
        }
        let mut fed: Vec<Option<&HostTensor>> = vec![None; plan.slots];
        for ((name, slot), (given_name, tensor)) in plan.inputs.iter().zip(&given.tensors) {
            if name != given_name {
                return Err(format!("input '{given_name}' where '{name}' was expected"));
            }
            fed[*slot] = Some(tensor);
        }
        let mut device: Vec<Option<DeviceValue>> = vec![None; plan.slots];
        for unit in &mut self.units {
            match unit {
                Unit::Host(i) => run_host_op(&plan.ops[*i], &mut host, &fed, &mut device)?,
                Unit::Stack(stack) => {
                    let reader = Reader {
                        gpu: &self.gpu,
                        staged: &mut self.staged,
                        host: &host,
                        fed: &fed,
                        device: &device,
                    };
                    for (slot, value) in run_stack(stack, reader)? {
                        device[slot] = Some(value);
                    }
                }
            }
        }
        plan.outputs
            .iter()
            .enumerate()
            .map(|(k, (name, slot))| {
                let value = match (
                    take_output(&mut host, &plan.outputs, k),
                    &device[*slot],
                    fed[*slot],
                ) {
                    (Some(v), _, _) => v.into_host(),
                    (None, Some(d), _) => HostTensor::F32(d.download()?),
                    (None, None, Some(t)) => t.clone(),
                    (None, None, None) => return Err(format!("output '{name}' not computed")),
                };
                Ok((name.clone(), value))
            })
            .collect()
    }
}

/// Builds the cuDNN stack of `layers` (indices into `plan.ops`; the planner found that cuDNN
/// computes them as `cell`) with their ONNX weights.
fn build_stack(
    plan: &NativePlan,
    ir: &RecurrentModel,
    layers: &[usize],
    cell: CellMode,
    gpu: &Arc<Gpu>,
    tf32: bool,
) -> crate::Result<Stack> {
    let mut params = Vec::with_capacity(layers.len());
    let (mut h0, mut c0, mut y_h, mut y_c) = (vec![], vec![], vec![], vec![]);
    let mut first_x = None;
    let mut top_y = None;
    let mut input = 0;
    let mut hidden = 0;
    let mut directions = 1;
    for (k, &op) in layers.iter().enumerate() {
        let Op::Recurrent {
            node,
            spec,
            x,
            h0: h,
            c0: c,
            outs,
            ..
        } = &plan.ops[op]
        else {
            unreachable!("stacks hold recurrent ops")
        };
        let LayerKind::Recurrent(layer) = &ir.layers[*node].kind else {
            unreachable!("recurrent ops come from recurrent layers")
        };
        let w = layer
            .weights
            .as_ref()
            .ok_or_else(|| crate::RecurError::Usage("weights are not constant".into()))?;
        fn two(a: &ArrayD<f32>, d: usize) -> crate::Result<ndarray::ArrayView2<'_, f32>> {
            a.index_axis(Axis(0), d)
                .into_dimensionality::<Ix2>()
                .map_err(|e| crate::RecurError::Usage(e.to_string()))
        }
        // One weight set per direction, forward first (ONNX's order and cuDNN's).
        for d in 0..spec.direction.count() {
            let b =
                w.b.as_ref()
                    .map(|b| {
                        b.index_axis(Axis(0), d)
                            .into_dimensionality::<ndarray::Ix1>()
                            .map_err(|e| crate::RecurError::Usage(e.to_string()))
                    })
                    .transpose()?;
            params.push(LayerParams {
                w: two(&w.w, d)?,
                r: two(&w.r, d)?,
                b,
            });
        }
        if k == 0 {
            first_x = Some(*x);
            input = w.w.shape()[2];
            hidden = spec.hidden;
            directions = spec.direction.count();
        }
        h0.push(*h);
        c0.push(*c);
        y_h.push(outs[1]);
        y_c.push(outs[2]);
        top_y = outs[0];
    }
    let rnn = RnnStack::new(gpu, cell, (input, hidden, directions), &params, tf32)?;
    Ok(Stack {
        rnn,
        input,
        hidden,
        x: first_x.expect("a stack has a layer"),
        h0,
        c0,
        y: top_y,
        y_h,
        y_c,
        h0_buffer: None,
        c0_buffer: None,
    })
}

/// Runs one host op, copying back from the device the values it reads, except for the
/// shape-only ops, which read a device value's shape and pass its buffer on.
fn run_host_op(
    op: &Op,
    host: &mut [Option<Value>],
    fed: &[Option<&HostTensor>],
    device: &mut [Option<DeviceValue>],
) -> Result<(), String> {
    match op {
        Op::Reshape { x, rule, out }
            if host[*x].is_none() && device[*x].as_ref().is_some_and(|d| !d.directions_inner) =>
        {
            let d = device[*x].clone().expect("checked");
            let shape = reshape_target(&d.shape, rule)?;
            if shape.iter().product::<usize>() != d.len() {
                return Err(format!("cannot reshape {:?} to {shape:?}", d.shape));
            }
            device[*out] = Some(DeviceValue { shape, ..d });
            return Ok(());
        }
        // A bidirectional Y transposed to [T, B, 2, H], as exporters do before flattening the
        // directions: that is the order cuDNN wrote it in.
        Op::Transpose { x, perm, out }
            if host[*x].is_none()
                && perm[..] == [0, 2, 1, 3]
                && device[*x].as_ref().is_some_and(|d| d.directions_inner) =>
        {
            let d = device[*x].clone().expect("checked");
            let shape = vec![d.shape[0], d.shape[2], d.shape[1], d.shape[3]];
            device[*out] = Some(DeviceValue {
                shape,
                directions_inner: false,
                ..d
            });
            return Ok(());
        }
        Op::Shape { x, out } if host[*x].is_none() && device[*x].is_some() => {
            let shape = &device[*x].as_ref().expect("checked").shape;
            let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
            host[*out] = Some(Value::I64(
                ArrayD::from_shape_vec(vec![dims.len()], dims).map_err(|e| e.to_string())?,
            ));
            return Ok(());
        }
        _ => {}
    }
    for s in reads(op) {
        if host[s].is_some() {
            continue;
        }
        host[s] = Some(match (&device[s], fed[s]) {
            (Some(d), _) => Value::F32(d.download()?),
            (None, Some(tensor)) => Value::from_host(tensor),
            (None, None) => return Err(format!("value slot {s} read before it is computed")),
        });
    }
    eval(op, host, &[])
}

/// Where a cuDNN stack finds its inputs during a run: the values computed so far (on the
/// host or the device), the fed inputs, and the per-slot buffers inputs are copied into.
struct Reader<'a, 'g> {
    gpu: &'a Arc<Gpu>,
    staged: &'a mut HashMap<usize, Arc<DeviceBuffer>>,
    host: &'a [Option<Value>],
    fed: &'a [Option<&'g HostTensor>],
    device: &'a [Option<DeviceValue>],
}

impl Reader<'_, '_> {
    /// The device copy of slot `s`: already there, or copied from the host value or the fed
    /// input (into a buffer kept per slot between runs).
    fn on_device(&mut self, s: usize) -> Result<DeviceValue, String> {
        let reordered;
        let array = match (&self.device[s], &self.host[s], self.fed[s]) {
            (Some(d), _, _) if !d.directions_inner => return Ok(d.clone()),
            // A bidirectional Y read as is: through the host, in ONNX order.
            (Some(d), _, _) => {
                reordered = d.download()?;
                &reordered
            }
            (None, Some(Value::F32(a)), _) => a,
            (None, None, Some(HostTensor::F32(a))) => a,
            _ => return Err(format!("value slot {s} is not a float tensor on the host")),
        };
        let standard;
        let data = match array.as_slice() {
            Some(d) => d,
            None => {
                standard = array.as_standard_layout().into_owned();
                standard.as_slice().expect("standard layout")
            }
        };
        let buffer = match self.staged.remove(&s) {
            Some(b) if Arc::strong_count(&b) == 1 && b.len() == data.len() => b,
            _ => Arc::new(self.gpu.alloc(data.len()).map_err(|e| e.to_string())?),
        };
        buffer.write(0, data).map_err(|e| e.to_string())?;
        self.staged.insert(s, Arc::clone(&buffer));
        Ok(DeviceValue {
            buffer,
            offset: 0,
            shape: array.shape().to_vec(),
            directions_inner: false,
        })
    }

    /// Gathers the layers' initial states (`[directions, batch, hidden]` each, where given)
    /// into one `[layers * directions, batch, hidden]` device buffer, zeros for the layers
    /// without one. False when no layer has one (cuDNN starts from zeros).
    fn gather_states(
        &mut self,
        slots: &[Option<usize>],
        buffer: &mut Option<DeviceBuffer>,
        (directions, batch, hidden): (usize, usize, usize),
    ) -> Result<bool, String> {
        if slots.iter().all(Option::is_none) {
            return Ok(false);
        }
        let each = directions * batch * hidden;
        let len = slots.len() * each;
        if buffer.as_ref().is_none_or(|b| b.len() != len) {
            *buffer = Some(self.gpu.alloc(len).map_err(|e| e.to_string())?);
        }
        let target = buffer.as_ref().expect("set above");
        for (k, slot) in slots.iter().enumerate() {
            match slot {
                None => target.zero(k * each, each).map_err(|e| e.to_string())?,
                Some(s) => {
                    let v = self.on_device(*s)?;
                    if v.shape != [directions, batch, hidden] {
                        return Err(format!(
                            "initial state of shape {:?}, expected [{directions}, {batch}, {hidden}]",
                            v.shape
                        ));
                    }
                    target
                        .copy_from(k * each, &v.buffer, v.offset, each)
                        .map_err(|e| e.to_string())?;
                }
            }
        }
        Ok(true)
    }
}

/// Runs a cuDNN stack: X and the initial states to the device (where they are not
/// already), then the outputs, left there as views of cuDNN's buffers, for their slots.
fn run_stack(
    stack: &mut Stack,
    mut reader: Reader<'_, '_>,
) -> Result<Vec<(usize, DeviceValue)>, String> {
    let x = reader.on_device(stack.x)?;
    let [steps, batch, features] = x.shape[..] else {
        return Err(format!(
            "X of shape {:?}, expected [steps, batch, features]",
            x.shape
        ));
    };
    if features != stack.input {
        return Err(format!(
            "X has {features} features, W expects {}",
            stack.input
        ));
    }
    let (hidden, layers, dirs) = (stack.hidden, stack.rnn.layers(), stack.rnn.directions());
    let dims = (dirs, batch, hidden);
    let has_h = reader.gather_states(&stack.h0, &mut stack.h0_buffer, dims)?;
    let has_c = reader.gather_states(&stack.c0, &mut stack.c0_buffer, dims)?;
    let out = stack
        .rnn
        .forward(
            (&x.buffer, x.offset),
            steps,
            batch,
            stack.h0_buffer.as_ref().filter(|_| has_h),
            stack.c0_buffer.as_ref().filter(|_| has_c),
        )
        .map_err(|e| e.to_string())?;
    let mut made = Vec::new();
    if let Some(y) = stack.y {
        made.push((
            y,
            DeviceValue {
                buffer: Arc::clone(&out.y),
                offset: 0,
                shape: vec![steps, dirs, batch, hidden],
                directions_inner: dirs > 1,
            },
        ));
    }
    let each = dirs * batch * hidden;
    let state = |buffer: &Arc<DeviceBuffer>, k: usize| DeviceValue {
        buffer: Arc::clone(buffer),
        offset: k * each,
        shape: vec![dirs, batch, hidden],
        directions_inner: false,
    };
    for k in 0..layers {
        if let Some(s) = stack.y_h[k] {
            made.push((s, state(&out.h, k)));
        }
        if let (Some(s), Some(c)) = (stack.y_c[k], &out.c) {
            made.push((s, state(c, k)));
        }
    }
    Ok(made)
}
