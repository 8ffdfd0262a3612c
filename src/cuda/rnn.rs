//! One cuDNN recurrent network: a stack of LSTM, GRU or RNN layers (forward or
//! bidirectional) of one hidden size, its ONNX weights laid out once in cuDNN's weight space, run on device
//! tensors with `cudnnRNNForward`.
//!
//! ONNX and cuDNN compute the same cells when the ONNX node keeps the default activations
//! and has no clip, peepholes or `input_forget`, and a GRU has `linear_before_reset=1`
//! (cuDNN applies the reset gate after the recurrent product); the caller checks that
//! ([`super::super::backend::native`]'s device plan). What differs is only the order of the
//! gates, which [`lin_layer_id`] maps.

use std::ffi::c_int;
use std::sync::Arc;

use ndarray::{ArrayView1, ArrayView2};

use super::ffi::{self, Opaque};
use super::{DeviceBuffer, Gpu};
use crate::error::{RecurError, Result};

/// The recurrent cell cuDNN runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CellMode {
    /// LSTM (ONNX gates i, o, f, c).
    Lstm,
    /// GRU with `linear_before_reset=1` (ONNX gates z, r, h).
    Gru,
    /// Elman RNN with tanh.
    RnnTanh,
    /// Elman RNN with relu.
    RnnRelu,
}

impl CellMode {
    /// Gates stacked in ONNX's W and R.
    pub fn gates(self) -> usize {
        match self {
            CellMode::Lstm => 4,
            CellMode::Gru => 3,
            CellMode::RnnTanh | CellMode::RnnRelu => 1,
        }
    }

    fn raw(self) -> c_int {
        match self {
            CellMode::Lstm => ffi::LSTM,
            CellMode::Gru => ffi::GRU,
            CellMode::RnnTanh => ffi::RNN_TANH,
            CellMode::RnnRelu => ffi::RNN_RELU,
        }
    }
}

/// cuDNN's `linLayerID` for ONNX gate `gate` (its index in W's or R's gate stack) of a
/// weight matrix (`recurrent`: R rather than W). cuDNN numbers LSTM gates i, f, c, o and GRU
/// gates r, z, h, the input matrices first, then the recurrent ones.
pub fn lin_layer_id(cell: CellMode, gate: usize, recurrent: bool) -> i32 {
    let id = match cell {
        // ONNX i, o, f, c.
        CellMode::Lstm => [0, 3, 1, 2][gate],
        // ONNX z, r, h.
        CellMode::Gru => [1, 0, 2][gate],
        CellMode::RnnTanh | CellMode::RnnRelu => 0,
    };
    id + if recurrent { cell.gates() as i32 } else { 0 }
}

/// One layer's ONNX weights (one direction): W `[gates*hidden, input]`, R
/// `[gates*hidden, hidden]`, B `[2*gates*hidden]` (input biases, then recurrent).
pub struct LayerParams<'a> {
    /// W.
    pub w: ArrayView2<'a, f32>,
    /// R.
    pub r: ArrayView2<'a, f32>,
    /// B, when the node has one.
    pub b: Option<ArrayView1<'a, f32>>,
}

/// Host copies of one layer's W, R and B (as [`LayerParams`], flattened).
type OwnedParams = (Vec<f32>, Vec<f32>, Option<Vec<f32>>);

/// The device memory a forward run writes: Y `[steps, batch, directions * hidden]` (each
/// step's directions side by side) and the last states `[layers * directions, batch,
/// hidden]` (cell state for an LSTM only).
pub struct Outputs {
    /// Y of the top layer.
    pub y: Arc<DeviceBuffer>,
    /// Last hidden state of each layer.
    pub h: Arc<DeviceBuffer>,
    /// Last cell state of each layer (LSTM).
    pub c: Option<Arc<DeviceBuffer>>,
}

/// Descriptors and scratch for one (steps, batch).
struct Shaped {
    gpu: Arc<Gpu>,
    steps: usize,
    batch: usize,
    x_desc: Opaque,
    y_desc: Opaque,
    h_desc: Opaque,
    work: Option<DeviceBuffer>,
    work_bytes: usize,
}

/// A cuDNN recurrent stack with its weights on the device.
pub struct RnnStack {
    gpu: Arc<Gpu>,
    desc: Opaque,
    cell: CellMode,
    layers: usize,
    directions: usize,
    input: usize,
    hidden: usize,
    tf32: bool,
    /// The (algorithm, layout) settings to try, best first, and the one in use: cuDNN turns
    /// a persistent kernel down for some shapes and layouts, and the next setting computes
    /// the same thing.
    configs: Vec<Config>,
    config: usize,
    /// Host copies of the weights, laid out again if the algorithm has to change.
    params: Vec<OwnedParams>,
    weights: DeviceBuffer,
    shaped: Option<Shaped>,
    outputs: Option<Outputs>,
}

// SAFETY: the descriptors are plain host objects of cuDNN, used by one thread at a time.
unsafe impl Send for RnnStack {}

impl RnnStack {
    /// Builds the stack: layer 0 reads `input` features, every later layer the one below's
    /// `directions * hidden`. `params` holds each layer's directions in turn (forward, then
    /// backward). `tf32` lets cuDNN use TensorFloat-32 (off: f32 multiply-adds only).
    pub fn new(
        gpu: &Arc<Gpu>,
        cell: CellMode,
        (input, hidden, directions): (usize, usize, usize),
        params: &[LayerParams<'_>],
        tf32: bool,
    ) -> Result<Self> {
        gpu.bind()?;
        let g = cell.gates();
        if !(directions == 1 || directions == 2)
            || params.is_empty()
            || !params.len().is_multiple_of(directions)
        {
            return Err(RecurError::Usage(format!(
                "cuDNN: {} weight sets for {directions} directions",
                params.len()
            )));
        }
        let layers = params;
        let mut params = Vec::with_capacity(layers.len());
        for (k, l) in layers.iter().enumerate() {
            let inp = pseudo_layer_input(k, (input, hidden, directions));
            if l.w.dim() != (g * hidden, inp) || l.r.dim() != (g * hidden, hidden) {
                return Err(RecurError::Usage(format!(
                    "cuDNN layer {k}: W {:?} and R {:?} do not fit hidden {hidden}, input {inp}",
                    l.w.dim(),
                    l.r.dim()
                )));
            }
            if l.b.as_ref().is_some_and(|b| b.len() != 2 * g * hidden) {
                return Err(RecurError::Usage(format!(
                    "cuDNN layer {k}: B has {} values, expected {}",
                    l.b.as_ref().map_or(0, |b| b.len()),
                    2 * g * hidden
                )));
            }
            params.push((
                l.w.iter().copied().collect(),
                l.r.iter().copied().collect(),
                l.b.as_ref().map(|b| b.iter().copied().collect()),
            ));
        }
        let mut desc = std::ptr::null_mut();
        // SAFETY: writes the descriptor on success.
        gpu.dnn.check("cudnnCreateRNNDescriptor", unsafe {
            (gpu.dnn.create_rnn_descriptor)(&mut desc)
        })?;
        let mut stack = RnnStack {
            gpu: Arc::clone(gpu),
            desc,
            cell,
            layers: layers.len() / directions,
            directions,
            input,
            hidden,
            tf32,
            configs: configs(cell, hidden),
            config: 0,
            params,
            weights: gpu.alloc(0)?,
            shaped: None,
            outputs: None,
        };
        stack.lay_out()?;
        Ok(stack)
    }

    /// The cuDNN algorithm and data layout in use, for reports.
    pub fn algo_name(&self) -> &'static str {
        let c = self.configs[self.config];
        match (c.algo, c.padded) {
            (ffi::ALGO_PERSIST_STATIC_SMALL_H, false) => "persist_static_small_h",
            (ffi::ALGO_PERSIST_STATIC_SMALL_H, true) => "persist_static_small_h, padded",
            (ffi::ALGO_PERSIST_STATIC, false) => "persist_static",
            (ffi::ALGO_PERSIST_STATIC, true) => "persist_static, padded",
            (_, false) => "standard",
            (_, true) => "standard, padded",
        }
    }

    /// Number of layers.
    pub fn layers(&self) -> usize {
        self.layers
    }

    /// Number of directions (1 or 2).
    pub fn directions(&self) -> usize {
        self.directions
    }

    /// Sets the descriptor for the current algorithm and writes the weights into a fresh
    /// weight space.
    fn lay_out(&mut self) -> Result<()> {
        let dnn = &self.gpu.dnn;
        let math = if self.tf32 {
            ffi::DEFAULT_MATH
        } else {
            ffi::FMA_MATH
        };
        let size = |n: usize| i32::try_from(n).map_err(|_| RecurError::Usage("size".into()));
        let config = self.configs[self.config];
        // SAFETY: the descriptor is live; a null dropout descriptor means no dropout.
        dnn.check("cudnnSetRNNDescriptor_v8", unsafe {
            (dnn.set_rnn_descriptor_v8)(
                self.desc,
                config.algo,
                self.cell.raw(),
                ffi::DOUBLE_BIAS,
                if self.directions == 2 {
                    ffi::BIDIRECTIONAL
                } else {
                    ffi::UNIDIRECTIONAL
                },
                ffi::LINEAR_INPUT,
                ffi::DATA_FLOAT,
                ffi::DATA_FLOAT,
                math,
                size(self.input)?,
                size(self.hidden)?,
                size(self.hidden)?,
                size(self.layers)?,
                std::ptr::null_mut(),
                if config.padded {
                    ffi::PADDED_IO_ENABLED
                } else {
                    ffi::PADDED_IO_DISABLED
                },
            )
        })?;
        let mut bytes = 0usize;
        // SAFETY: writes one size_t.
        dnn.check("cudnnGetRNNWeightSpaceSize", unsafe {
            (dnn.get_rnn_weight_space_size)(self.gpu.handle.0, self.desc, &mut bytes)
        })?;
        let weights = self.gpu.alloc(bytes.div_ceil(4))?;
        weights.zero(0, weights.len())?;
        let (m_desc, b_desc) = (TensorDesc::new(&self.gpu)?, TensorDesc::new(&self.gpu)?);
        let (g, h) = (self.cell.gates(), self.hidden);
        // cuDNN's pseudo-layers: each layer's directions in turn, as `params` holds them.
        for (layer, (w, r, b)) in self.params.iter().enumerate() {
            let inp = pseudo_layer_input(layer, (self.input, h, self.directions));
            for gate in 0..g {
                for recurrent in [false, true] {
                    let id = lin_layer_id(self.cell, gate, recurrent);
                    let (mut m_addr, mut b_addr) = (std::ptr::null_mut(), std::ptr::null_mut());
                    // SAFETY: the weight space holds `bytes`; cuDNN writes two addresses
                    // inside it and fills the two descriptors.
                    dnn.check("cudnnGetRNNWeightParams", unsafe {
                        (dnn.get_rnn_weight_params)(
                            self.gpu.handle.0,
                            self.desc,
                            layer as i32,
                            bytes,
                            weights.at(0),
                            id,
                            m_desc.0,
                            &mut m_addr,
                            b_desc.0,
                            &mut b_addr,
                        )
                    })?;
                    let cols = if recurrent { h } else { inp };
                    let matrix = if recurrent { r } else { w };
                    let rows = &matrix[gate * h * cols..(gate + 1) * h * cols];
                    place(&weights, &m_desc, m_addr, rows)?;
                    if let Some(b) = b {
                        let half = if recurrent { g * h } else { 0 };
                        let bias = &b[half + gate * h..half + (gate + 1) * h];
                        place(&weights, &b_desc, b_addr, bias)?;
                    }
                }
            }
        }
        self.weights = weights;
        self.shaped = None;
        Ok(())
    }

    /// Descriptors and workspace for `steps` x `batch`, kept until the shape changes.
    fn shape_for(&mut self, steps: usize, batch: usize) -> Result<()> {
        if self
            .shaped
            .as_ref()
            .is_some_and(|s| s.steps == steps && s.batch == batch)
        {
            return Ok(());
        }
        self.shaped = None;
        let gpu = Arc::clone(&self.gpu);
        let dnn = &gpu.dnn;
        let int = |n: usize| c_int::try_from(n).map_err(|_| RecurError::Usage("size".into()));
        let lengths = vec![int(steps)?; batch];
        let layout = if self.configs[self.config].padded {
            ffi::LAYOUT_SEQ_MAJOR_UNPACKED
        } else {
            ffi::LAYOUT_SEQ_MAJOR_PACKED
        };
        let data = |vector: usize| -> Result<Opaque> {
            let mut d = std::ptr::null_mut();
            // SAFETY: writes the descriptor on success.
            dnn.check("cudnnCreateRNNDataDescriptor", unsafe {
                (dnn.create_rnn_data_descriptor)(&mut d)
            })?;
            // SAFETY: `lengths` holds `batch` ints.
            let set = unsafe {
                (dnn.set_rnn_data_descriptor)(
                    d,
                    ffi::DATA_FLOAT,
                    layout,
                    int(steps)?,
                    int(batch)?,
                    int(vector)?,
                    lengths.as_ptr(),
                    std::ptr::null_mut(),
                )
            };
            if let Err(e) = dnn.check("cudnnSetRNNDataDescriptor", set) {
                // SAFETY: created above.
                unsafe { (dnn.destroy_rnn_data_descriptor)(d) };
                return Err(e);
            }
            Ok(d)
        };
        let mut shaped = Shaped {
            gpu: Arc::clone(&gpu),
            steps,
            batch,
            x_desc: std::ptr::null_mut(),
            y_desc: std::ptr::null_mut(),
            h_desc: std::ptr::null_mut(),
            work: None,
            work_bytes: 0,
        };
        shaped.x_desc = data(self.input)?;
        shaped.y_desc = data(self.directions * self.hidden)?;
        let h_desc = TensorDesc::new(&gpu)?;
        let dims = [
            int(self.layers * self.directions)?,
            int(batch)?,
            int(self.hidden)?,
        ];
        let strides = [int(batch * self.hidden)?, int(self.hidden)?, 1];
        // SAFETY: three dims and strides.
        dnn.check("cudnnSetTensorNdDescriptor", unsafe {
            (dnn.set_tensor_nd_descriptor)(
                h_desc.0,
                ffi::DATA_FLOAT,
                3,
                dims.as_ptr(),
                strides.as_ptr(),
            )
        })?;
        shaped.h_desc = h_desc.into_raw();
        let (mut work, mut reserve) = (0usize, 0usize);
        // SAFETY: writes two sizes.
        let status = unsafe {
            (dnn.get_rnn_temp_space_sizes)(
                gpu.handle.0,
                self.desc,
                ffi::FWD_MODE_INFERENCE,
                shaped.x_desc,
                &mut work,
                &mut reserve,
            )
        };
        dnn.check("cudnnGetRNNTempSpaceSizes", status)?;
        shaped.work_bytes = work;
        shaped.work = if work > 0 {
            Some(gpu.alloc(work.div_ceil(4))?)
        } else {
            None
        };
        self.shaped = Some(shaped);
        Ok(())
    }

    /// Runs the stack on `x` `[steps, batch, input]` (device floats at `x_offset`) from the
    /// initial states `h0`, `c0` (`[layers * directions, batch, hidden]`; `None`: zeros). The outputs'
    /// buffers are reused between runs when nothing else holds them.
    pub fn forward(
        &mut self,
        x: (&DeviceBuffer, usize),
        steps: usize,
        batch: usize,
        h0: Option<&DeviceBuffer>,
        c0: Option<&DeviceBuffer>,
    ) -> Result<&Outputs> {
        self.gpu.bind()?;
        loop {
            match self.try_forward(x, steps, batch, h0, c0) {
                Ok(()) => break,
                Err(e) if self.config + 1 < self.configs.len() => {
                    // A setting cuDNN turns down for this shape: the next one computes the
                    // same thing.
                    tracing::info!(
                        "cuDNN refused the {} setting for steps {steps}, batch {batch} ({e}); trying the next",
                        self.algo_name()
                    );
                    self.config += 1;
                    self.lay_out()?;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(self.outputs.as_ref().expect("a forward run leaves outputs"))
    }

    fn try_forward(
        &mut self,
        (x, x_offset): (&DeviceBuffer, usize),
        steps: usize,
        batch: usize,
        h0: Option<&DeviceBuffer>,
        c0: Option<&DeviceBuffer>,
    ) -> Result<()> {
        let state_len = self.layers * self.directions * batch * self.hidden;
        if x_offset + steps * batch * self.input > x.len()
            || h0.is_some_and(|b| b.len() < state_len)
            || c0.is_some_and(|b| b.len() < state_len)
        {
            return Err(RecurError::Usage(
                "cuDNN: input or state smaller than the stack's shapes".into(),
            ));
        }
        self.shape_for(steps, batch)?;
        let lstm = self.cell == CellMode::Lstm;
        let y_len = steps * batch * self.directions * self.hidden;
        let (old_y, old_h, old_c) = match self.outputs.take() {
            Some(o) => (Some(o.y), Some(o.h), o.c),
            None => (None, None, None),
        };
        // The last run's buffers, when no value of that run is still held.
        let reuse = |slot: Option<Arc<DeviceBuffer>>, len: usize| -> Result<Arc<DeviceBuffer>> {
            match slot {
                Some(b) if Arc::strong_count(&b) == 1 && b.len() == len => Ok(b),
                _ => Ok(Arc::new(self.gpu.alloc(len)?)),
            }
        };
        let y = reuse(old_y, y_len)?;
        let h = reuse(old_h, state_len)?;
        let c = if lstm {
            Some(reuse(old_c, state_len)?)
        } else {
            None
        };
        let shaped = self.shaped.as_ref().expect("shape_for set it");
        let null = std::ptr::null_mut();
        let dnn = &self.gpu.dnn;
        // SAFETY: every pointer is device memory of the sizes the descriptors give (checked
        // above); a null initial state means zeros; devSeqLengths may be null in inference.
        let status = unsafe {
            (dnn.rnn_forward)(
                self.gpu.handle.0,
                self.desc,
                ffi::FWD_MODE_INFERENCE,
                std::ptr::null(),
                shaped.x_desc,
                x.at(x_offset),
                shaped.y_desc,
                y.at(0),
                shaped.h_desc,
                h0.map_or(null, |b| b.at(0)),
                h.at(0),
                if lstm { shaped.h_desc } else { null },
                if lstm {
                    c0.map_or(null, |b| b.at(0))
                } else {
                    null
                },
                c.as_ref().map_or(null, |b| b.at(0)),
                self.weights.len() * 4,
                self.weights.at(0),
                shaped.work_bytes,
                shaped.work.as_ref().map_or(null, |w| w.at(0)),
                0,
                null,
            )
        };
        dnn.check("cudnnRNNForward", status)?;
        self.outputs = Some(Outputs { y, h, c });
        Ok(())
    }
}

impl Drop for RnnStack {
    fn drop(&mut self) {
        self.shaped = None;
        // SAFETY: created in `new`, destroyed once.
        unsafe { (self.gpu.dnn.destroy_rnn_descriptor)(self.desc) };
    }
}

impl Drop for Shaped {
    fn drop(&mut self) {
        let dnn = &self.gpu.dnn;
        // SAFETY: created in `shape_for` (null when that failed first), destroyed once.
        unsafe {
            for d in [self.x_desc, self.y_desc] {
                if !d.is_null() {
                    (dnn.destroy_rnn_data_descriptor)(d);
                }
            }
            if !self.h_desc.is_null() {
                (dnn.destroy_tensor_descriptor)(self.h_desc);
            }
        }
    }
}

/// The features pseudo-layer `k` (layer `k / directions`, one direction of it) reads: the
/// input for the first layer, every direction of the layer below for the others.
fn pseudo_layer_input(k: usize, (input, hidden, directions): (usize, usize, usize)) -> usize {
    if k < directions {
        input
    } else {
        directions * hidden
    }
}

/// One way to ask cuDNN for the recurrence.
#[derive(Debug, Clone, Copy)]
struct Config {
    /// `CUDNN_RNN_ALGO_*`.
    algo: c_int,
    /// The unpacked (padded) layout rather than the packed one (same memory when every
    /// sequence has the full length, as here).
    padded: bool,
}

/// The settings to try, best first. The algorithm is the one PyTorch picks for f32
/// inference: cuDNN's persistent kernel for small hidden sizes (the whole recurrence in
/// one launch), the standard one otherwise; `RECUR_CUDNN_ALGO` (standard,
/// persist_static_small_h, persist_static) overrides it, for measurements. The standard
/// algorithm comes last as the fallback.
fn configs(cell: CellMode, hidden: usize) -> Vec<Config> {
    let algo = match std::env::var("RECUR_CUDNN_ALGO").as_deref() {
        Ok("standard") => ffi::ALGO_STANDARD,
        Ok("persist_static_small_h") => ffi::ALGO_PERSIST_STATIC_SMALL_H,
        Ok("persist_static") => ffi::ALGO_PERSIST_STATIC,
        _ => {
            let small = match cell {
                CellMode::Lstm | CellMode::Gru => hidden <= 192,
                CellMode::RnnTanh | CellMode::RnnRelu => hidden <= 384,
            };
            if small {
                ffi::ALGO_PERSIST_STATIC_SMALL_H
            } else {
                ffi::ALGO_STANDARD
            }
        }
    };
    let mut configs = vec![
        Config {
            algo,
            padded: false,
        },
        Config { algo, padded: true },
    ];
    if algo != ffi::ALGO_STANDARD {
        configs.push(Config {
            algo: ffi::ALGO_STANDARD,
            padded: false,
        });
    }
    configs
}

/// A cuDNN tensor descriptor, destroyed on drop.
struct TensorDesc(Opaque, Arc<Gpu>);

impl TensorDesc {
    fn new(gpu: &Arc<Gpu>) -> Result<Self> {
        let mut d = std::ptr::null_mut();
        // SAFETY: writes the descriptor on success.
        gpu.dnn.check("cudnnCreateTensorDescriptor", unsafe {
            (gpu.dnn.create_tensor_descriptor)(&mut d)
        })?;
        Ok(TensorDesc(d, Arc::clone(gpu)))
    }

    /// Hands the descriptor over (the caller destroys it).
    fn into_raw(self) -> Opaque {
        let d = self.0;
        std::mem::forget(self);
        d
    }

    /// How many floats the descriptor spans.
    fn elements(&self) -> Result<usize> {
        let (mut dtype, mut rank) = (0, 0);
        let (mut dims, mut strides) = ([0 as c_int; 8], [0 as c_int; 8]);
        // SAFETY: room for 8 dims and strides.
        self.1.dnn.check("cudnnGetTensorNdDescriptor", unsafe {
            (self.1.dnn.get_tensor_nd_descriptor)(
                self.0,
                8,
                &mut dtype,
                &mut rank,
                dims.as_mut_ptr(),
                strides.as_mut_ptr(),
            )
        })?;
        let rank = usize::try_from(rank).unwrap_or(0).min(8);
        Ok(dims[..rank]
            .iter()
            .map(|&d| usize::try_from(d).unwrap_or(0))
            .product())
    }
}

impl Drop for TensorDesc {
    fn drop(&mut self) {
        // SAFETY: created in `new`, destroyed once.
        unsafe { (self.1.dnn.destroy_tensor_descriptor)(self.0) };
    }
}

/// Writes `values` at `addr`, an address cuDNN gave inside `weights`, after checking that
/// the descriptor cuDNN filled spans exactly that many floats.
fn place(
    weights: &DeviceBuffer,
    desc: &TensorDesc,
    addr: *mut std::ffi::c_void,
    values: &[f32],
) -> Result<()> {
    if addr.is_null() {
        return Err(RecurError::Usage(
            "cuDNN gave no address for a weight matrix".into(),
        ));
    }
    let span = desc.elements()?;
    if span != values.len() {
        return Err(RecurError::Usage(format!(
            "cuDNN lays out {span} weights where ONNX has {}",
            values.len()
        )));
    }
    let bytes = (addr as usize).wrapping_sub(weights.at(0) as usize);
    if !bytes.is_multiple_of(4) {
        return Err(RecurError::Usage(
            "cuDNN weight address not float-aligned".into(),
        ));
    }
    weights.write(bytes / 4, values)
}
