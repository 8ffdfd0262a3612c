//! `.rcs` sample streams (the format of `recur_sensors::stream`) to and from host arrays.

use ndarray::{ArrayD, IxDyn};
use recur_kernel::Model as Blob;
use recur_sensors::stream::{Element, Header, HEADER_LEN};

use crate::error::{RecurError, Result};
use crate::tensor::HostTensor;

/// The firmware's input for a whole `.npy` batch: every sequence's samples back to back.
#[derive(Debug, Clone)]
pub struct Samples {
    /// The `.rcs` bytes.
    pub bytes: Vec<u8>,
    /// Sequences in the batch.
    pub sequences: usize,
    /// Steps per sequence.
    pub steps: usize,
}

/// Encodes `input` (float32 `[N, T, F]`, or integer `[N, T]` token ids for a token model) as
/// the stream the firmware reads, checking it against the blob as `recur sim` does.
pub fn encode_input(model: &Blob, input: &HostTensor, name: &str) -> Result<Samples> {
    let bad = |r: String| RecurError::input(name, r);
    let (n, t) = crate::quant::sim::input_dims(model, input, name)?;
    let count = u32::try_from(n * t)
        .map_err(|_| bad(format!("{} samples, a stream holds at most 2^32-1", n * t)))?;
    let (element, channels) = if model.takes_tokens() {
        (Element::I16, 1u16)
    } else {
        (Element::F32, model.input_dim as u16)
    };
    let header = Header {
        channels,
        element,
        count,
    };
    let mut bytes = Vec::with_capacity(header.stream_len() as usize);
    bytes.extend_from_slice(&header.encode());
    match input {
        HostTensor::F32(a) => {
            for v in a.iter() {
                bytes.extend_from_slice(&v.to_le_bytes());
            }
        }
        _ => {
            for id in input.to_f32().iter() {
                let id = *id as i64;
                if !(0..=u16::MAX as i64).contains(&id) {
                    return Err(bad(format!("token id {id} out of range")));
                }
                bytes.extend_from_slice(&(id as u16).to_le_bytes());
            }
        }
    }
    Ok(Samples {
        bytes,
        sequences: n,
        steps: t,
    })
}

/// Decodes an i16 stream of `channels` channels, checking its header and length; `what`
/// names it in errors.
pub fn decode_i16(bytes: &[u8], channels: usize, what: &str) -> Result<(Header, Vec<i16>)> {
    let bad = |r: String| RecurError::file(what, r);
    let header = Header::parse(bytes).map_err(|e| bad(e.to_string()))?;
    header
        .check_len(bytes.len() as u64)
        .map_err(|e| bad(e.to_string()))?;
    header
        .check_element(Element::I16)
        .map_err(|e| bad(e.to_string()))?;
    if header.channels as usize != channels {
        return Err(bad(format!(
            "{} channels, expected {channels}",
            header.channels
        )));
    }
    let values = bytes[HEADER_LEN..]
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect();
    Ok((header, values))
}

/// The firmware's per-step outputs (`sequences * steps` rows of the model's outputs) as the
/// arrays `recur sim` writes: `[N, T, O]` when the model emits every step, else each
/// sequence's last row, `[N, O]`.
pub fn outputs_like_sim(model: &Blob, rows: &[i16], sequences: usize, steps: usize) -> ArrayD<i16> {
    let o = model.output_dim;
    if crate::quant::sim::emits_every_step(model) {
        ArrayD::from_shape_vec(IxDyn(&[sequences, steps, o]), rows.to_vec())
            .expect("caller checked the row count")
    } else {
        let mut last = Vec::with_capacity(sequences * o);
        for s in 0..sequences {
            let r = (s * steps + steps - 1) * o;
            last.extend_from_slice(&rows[r..r + o]);
        }
        ArrayD::from_shape_vec(IxDyn(&[sequences, o]), last).expect("rows counted")
    }
}
