//! The host simulator: runs a blob through `recur-kernel` exactly as firmware does.

use ndarray::{ArrayD, IxDyn};
use recur_kernel::{Model as Blob, Session};

use crate::error::{RecurError, Result};
use crate::tensor::HostTensor;

/// Integer outputs and their dequantised values, `[N, T, O]` or `[N, O]`.
#[derive(Debug, Clone)]
pub struct SimOutput {
    /// The kernel's int16 outputs.
    pub raw: ArrayD<i16>,
    /// `raw` times the blob's output scale.
    pub values: ArrayD<f32>,
    /// The session's state after the last sequence ([`recur_kernel::Session::state`]).
    pub state: Vec<i16>,
}

/// Copies blob bytes into 4-byte-aligned memory (as flash is) for the zero-copy parser.
pub fn aligned(bytes: &[u8]) -> Vec<u32> {
    let mut words = vec![0u32; bytes.len().div_ceil(4)];
    bytemuck::cast_slice_mut::<u32, u8>(&mut words)[..bytes.len()].copy_from_slice(bytes);
    words
}

/// Parses a blob, naming `what` (a file) in the error.
pub fn parse<'a>(words: &'a [u32], len: usize, what: &str) -> Result<Blob<'a>> {
    let bytes = &bytemuck::cast_slice::<u32, u8>(words)[..len];
    Blob::parse(bytes).map_err(|e| RecurError::file(what, format!("not a valid .rcm blob: {e}")))
}

/// Checks `input` against the blob (float32 `[N, T, F]` with the blob's feature count, or
/// integer `[N, T]` token ids for a token model; finite, not empty) and returns `(N, T)`.
pub fn input_dims(model: &Blob, input: &HostTensor, name: &str) -> Result<(usize, usize)> {
    let shape = input.shape().to_vec();
    let bad = |r: String| RecurError::input(name, r);
    let (n, t) = match (model.takes_tokens(), input) {
        (false, HostTensor::F32(a)) => {
            if shape.len() != 3 || shape[2] != model.input_dim {
                return Err(bad(format!(
                    "shape {shape:?}, the model takes float32 [N, T, {}]",
                    model.input_dim
                )));
            }
            if a.iter().any(|v| !v.is_finite()) {
                return Err(bad("contains NaN or infinity".into()));
            }
            (shape[0], shape[1])
        }
        (true, HostTensor::I64(_) | HostTensor::I32(_)) => {
            if shape.len() != 2 {
                return Err(bad(format!(
                    "shape {shape:?}, the model takes token ids [N, T]"
                )));
            }
            (shape[0], shape[1])
        }
        (tokens, _) => {
            return Err(bad(format!(
                "element type {}, the model takes {}",
                input.elem_type().numpy_name(),
                if tokens {
                    "int64 or int32 token ids"
                } else {
                    "float32 samples"
                }
            )))
        }
    };
    if t == 0 || n == 0 {
        return Err(bad(format!("shape {shape:?} has no samples")));
    }
    Ok((n, t))
}

/// Whether the blob's output has a row per time step (`[N, T, O]`) rather than one per
/// sequence (`[N, O]`).
pub fn emits_every_step(model: &Blob) -> bool {
    model
        .layers
        .iter()
        .filter(|l| l.is_recurrent())
        .all(|l| l.reduce == recur_kernel::Reduce::Sequence)
}

/// Runs the blob over every sequence of `input` (float32 `[N, T, F]` or integer `[N, T]`
/// token ids), each from a zero state, as one window.
pub fn simulate(model: &Blob, input: &HostTensor, name: &str) -> Result<SimOutput> {
    let bad = |r: String| RecurError::input(name, r);
    let (n, t) = input_dims(model, input, name)?;
    let mut mem = vec![0i16; model.session_len()];
    // Room for the row tables, as the firmware gives: the same path as on the chip.
    let mut acc = vec![0i32; model.tables_len() + model.acc_len()];
    let mut window = vec![0i16; model.window_len(t)];
    let mut x = vec![0i16; t * model.input_dim];
    let o = model.output_dim;
    let mut raw: Vec<i16> = Vec::new();
    let ids = match input {
        HostTensor::F32(_) => None,
        _ => Some(input.to_f32()),
    };
    let mut rows = 0;
    let mut state = Vec::new();
    for b in 0..n {
        match input {
            HostTensor::F32(a) => {
                for (i, v) in x.iter_mut().enumerate() {
                    let (tt, f) = (i / model.input_dim, i % model.input_dim);
                    *v = model.quantize_feature(f, a[[b, tt, f]]);
                }
            }
            _ => {
                let ids = ids.as_ref().expect("token input");
                for (tt, v) in x.iter_mut().enumerate() {
                    let id = ids[[b, tt]] as i64;
                    if !(0..=u16::MAX as i64).contains(&id) {
                        return Err(bad(format!("token id {id} out of range")));
                    }
                    *v = id as u16 as i16;
                }
            }
        }
        let mut session = Session::new(model, &mut mem, &mut acc)
            .map_err(|e| RecurError::Usage(format!("internal: {e:?}")))?;
        let out = session
            .run(&x, t, &mut window)
            .map_err(|e| bad(format!("sequence {b}: {e:?}")))?;
        rows = out.len() / o;
        raw.extend_from_slice(out);
        state.clear();
        state.extend_from_slice(session.state());
    }
    let dims: Vec<usize> = if emits_every_step(model) {
        vec![n, rows, o]
    } else {
        vec![n, o]
    };
    let raw = ArrayD::from_shape_vec(IxDyn(&dims), raw).expect("rows counted");
    let values = raw.mapv(|v| v as f32 * model.output_scale);
    Ok(SimOutput { raw, values, state })
}
