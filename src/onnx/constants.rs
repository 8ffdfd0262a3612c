//! Decoding constant tensors (initializers and `Constant` nodes) into ndarrays.
//!
//! Only the element types recurrent models keep as constants are decoded: float32 weights and
//! integer lengths or indices. Anything else (or external data) is reported as not constant.

use ndarray::{ArrayD, IxDyn};
use tract_onnx::pb::TensorProto;

const FLOAT: i32 = 1;
const INT32: i32 = 6;
const INT64: i32 = 7;
const DOUBLE: i32 = 11;

fn shape(t: &TensorProto) -> Option<Vec<usize>> {
    t.dims.iter().map(|&d| usize::try_from(d).ok()).collect()
}

fn element_count(t: &TensorProto) -> Option<usize> {
    shape(t)?
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

fn little_endian<const N: usize, T>(raw: &[u8], n: usize, f: fn([u8; N]) -> T) -> Option<Vec<T>> {
    if raw.len() != n.checked_mul(N)? {
        return None;
    }
    Some(
        raw.chunks_exact(N)
            .map(|c| f(c.try_into().expect("chunk of N bytes")))
            .collect(),
    )
}

/// A float32 (or float64) constant as f32, or `None` when it is not a decodable float tensor.
pub fn constant_f32(t: &TensorProto) -> Option<ArrayD<f32>> {
    let n = element_count(t)?;
    let values: Vec<f32> = match t.data_type {
        FLOAT if !t.raw_data.is_empty() => little_endian(&t.raw_data, n, f32::from_le_bytes)?,
        FLOAT => t.float_data.clone(),
        DOUBLE if !t.raw_data.is_empty() => little_endian(&t.raw_data, n, f64::from_le_bytes)?
            .into_iter()
            .map(|v| v as f32)
            .collect(),
        DOUBLE => t.double_data.iter().map(|&v| v as f32).collect(),
        _ => return None,
    };
    ArrayD::from_shape_vec(IxDyn(&shape(t)?), values).ok()
}

/// An int32 or int64 constant as i64, or `None` when it is not a decodable integer tensor.
pub fn constant_i64(t: &TensorProto) -> Option<ArrayD<i64>> {
    let n = element_count(t)?;
    let values: Vec<i64> = match t.data_type {
        INT64 if !t.raw_data.is_empty() => little_endian(&t.raw_data, n, i64::from_le_bytes)?,
        INT64 => t.int64_data.clone(),
        INT32 if !t.raw_data.is_empty() => little_endian(&t.raw_data, n, i32::from_le_bytes)?
            .into_iter()
            .map(i64::from)
            .collect(),
        INT32 => t.int32_data.iter().map(|&v| i64::from(v)).collect(),
        _ => return None,
    };
    ArrayD::from_shape_vec(IxDyn(&shape(t)?), values).ok()
}

/// Number of scalars a constant holds (0 when its shape is unusable).
pub fn scalar_count(t: &TensorProto) -> usize {
    element_count(t).unwrap_or(0)
}
