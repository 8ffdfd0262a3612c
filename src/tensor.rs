//! Host tensors and `.npy` files: what users feed recur and what it writes back.
//!
//! Inputs are checked against the model's declared inputs before any engine sees them (name,
//! element type, rank, fixed and symbolic dimensions, NaN/inf), so a bad input is one clear
//! line naming it rather than an engine's stack of errors.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read};
use std::path::Path;

use ndarray::ArrayD;
use ndarray_npy::{ReadNpyExt, WriteNpyExt};

use crate::error::{RecurError, Result};
use crate::ir::{Dim, ElemType, IndexLimit, ValueInfo};

/// A tensor on the host in one of the element types recurrent models take or give.
#[derive(Debug, Clone, PartialEq)]
pub enum HostTensor {
    /// float32: samples, states, probabilities.
    F32(ArrayD<f32>),
    /// int64: token ids.
    I64(ArrayD<i64>),
    /// int32: token ids, sequence lengths.
    I32(ArrayD<i32>),
}

impl HostTensor {
    /// Moves the tensor out, leaving an empty float tensor (no allocation) in its place: for
    /// outputs read by value out of a list that is still borrowed.
    pub fn take(&mut self) -> HostTensor {
        std::mem::replace(
            self,
            HostTensor::F32(ndarray::ArrayD::zeros(ndarray::IxDyn(&[0]))),
        )
    }

    /// The tensor's shape.
    pub fn shape(&self) -> &[usize] {
        match self {
            HostTensor::F32(a) => a.shape(),
            HostTensor::I64(a) => a.shape(),
            HostTensor::I32(a) => a.shape(),
        }
    }

    /// The element type.
    pub fn elem_type(&self) -> ElemType {
        match self {
            HostTensor::F32(_) => ElemType::F32,
            HostTensor::I64(_) => ElemType::I64,
            HostTensor::I32(_) => ElemType::I32,
        }
    }

    /// The values as f32 (integers converted), for comparisons and summaries.
    pub fn to_f32(&self) -> ArrayD<f32> {
        match self {
            HostTensor::F32(a) => a.clone(),
            HostTensor::I64(a) => a.mapv(|v| v as f32),
            HostTensor::I32(a) => a.mapv(|v| v as f32),
        }
    }

    /// Writes the tensor as `.npy`, keeping its element type.
    pub fn write_npy(&self, path: &Path) -> Result<()> {
        let file = File::create(path).map_err(|e| RecurError::file(path, e))?;
        let writer = BufWriter::new(file);
        match self {
            HostTensor::F32(a) => a.write_npy(writer),
            HostTensor::I64(a) => a.write_npy(writer),
            HostTensor::I32(a) => a.write_npy(writer),
        }
        .map_err(|e| RecurError::file(path, e))
    }
}

/// Reads the `descr` (dtype) of a `.npy` file from its header, e.g. `<f4`.
fn npy_descr(path: &Path) -> Result<String> {
    let mut file = File::open(path).map_err(|e| RecurError::file(path, e))?;
    let mut head = [0u8; 10];
    file.read_exact(&mut head)
        .map_err(|_| RecurError::file(path, "not a .npy file (too short)"))?;
    if &head[..6] != b"\x93NUMPY" {
        return Err(RecurError::file(path, "not a .npy file (bad magic)"));
    }
    let header_len = match head[6] {
        1 => u16::from_le_bytes([head[8], head[9]]) as usize,
        2 | 3 => {
            let mut more = [0u8; 2];
            file.read_exact(&mut more)
                .map_err(|_| RecurError::file(path, "truncated .npy header"))?;
            u32::from_le_bytes([head[8], head[9], more[0], more[1]]) as usize
        }
        v => return Err(RecurError::file(path, format!("unknown .npy version {v}"))),
    };
    if header_len > 1 << 20 {
        return Err(RecurError::file(path, "implausible .npy header length"));
    }
    let mut header = vec![0u8; header_len];
    file.read_exact(&mut header)
        .map_err(|_| RecurError::file(path, "truncated .npy header"))?;
    let header = String::from_utf8_lossy(&header);
    let start = header
        .find("'descr'")
        .ok_or_else(|| RecurError::file(path, "no dtype in .npy header"))?;
    let rest = &header[start + 7..];
    let value = rest
        .split('\'')
        .nth(1)
        .ok_or_else(|| RecurError::file(path, "malformed dtype in .npy header"))?;
    Ok(value.to_string())
}

/// Numpy's name for a `descr`, for error messages.
fn numpy_name(descr: &str) -> String {
    let name = match descr.trim_start_matches(['<', '>', '|', '=']) {
        "f4" => "float32",
        "f8" => "float64",
        "f2" => "float16",
        "i8" => "int64",
        "i4" => "int32",
        "i2" => "int16",
        "i1" => "int8",
        "u1" => "uint8",
        "b1" => "bool",
        other => return format!("dtype '{other}'"),
    };
    name.to_string()
}

/// Reads a `.npy` file as float32, int64 or int32; any other dtype is an error naming it.
pub fn read_npy(path: &Path) -> Result<HostTensor> {
    let descr = npy_descr(path)?;
    let open = || {
        File::open(path)
            .map(BufReader::new)
            .map_err(|e| RecurError::file(path, e))
    };
    let bad =
        |e: ndarray_npy::ReadNpyError| RecurError::file(path, format!("unreadable .npy: {e}"));
    match descr.as_str() {
        "<f4" | "=f4" => Ok(HostTensor::F32(
            ArrayD::<f32>::read_npy(open()?).map_err(bad)?,
        )),
        "<i8" | "=i8" => Ok(HostTensor::I64(
            ArrayD::<i64>::read_npy(open()?).map_err(bad)?,
        )),
        "<i4" | "=i4" => Ok(HostTensor::I32(
            ArrayD::<i32>::read_npy(open()?).map_err(bad)?,
        )),
        other => Err(RecurError::file(
            path,
            format!(
                "element type {} is not supported (recur reads float32, int64 and int32)",
                numpy_name(other)
            ),
        )),
    }
}

/// Replaces every character outside `[A-Za-z0-9_.-]` with `_`, so an output name is a safe
/// file name (the command-line contract's rule).
pub fn sanitize_file_stem(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() {
        "_".into()
    } else {
        s
    }
}

/// Inputs matched to the model's declared inputs, checked and converted to the declared type.
#[derive(Debug, Clone, Default)]
pub struct CheckedInputs {
    /// One tensor per declared input, in declaration order.
    pub tensors: Vec<(String, HostTensor)>,
}

/// Matches named inputs to the declared ones and checks each: every declared input given once,
/// no unknown names, the declared element type (int32 ids widen to int64, and int64 ids narrow
/// to int32 when every value fits), the declared rank, fixed dimensions equal, one value per
/// symbolic dimension across inputs, and no NaN or infinity in float inputs.
pub fn check_inputs(
    declared: &[ValueInfo],
    given: Vec<(String, HostTensor)>,
) -> Result<CheckedInputs> {
    // Usually the inputs come in declared order (a streamed step's, say): nothing to sort.
    let in_order = given.len() == declared.len()
        && given
            .iter()
            .zip(declared)
            .all(|((name, _), d)| *name == d.name);
    let given: Vec<Option<(String, HostTensor)>> = if in_order {
        given.into_iter().map(Some).collect()
    } else {
        sort_by_declaration(declared, given)?
    };
    let mut symbols: Vec<(&str, usize, &str)> = Vec::new();
    let mut tensors = Vec::with_capacity(declared.len());
    for (decl, slot) in declared.iter().zip(given) {
        let (name, tensor) = slot.ok_or_else(|| {
            RecurError::input(&decl.name, "not given (every model input is required)")
        })?;
        let tensor = convert_elem_type(&decl.name, tensor, decl.elem_type)?;
        check_dims(decl, tensor.shape(), &mut symbols)?;
        check_finite(&decl.name, &tensor)?;
        check_indices(&decl.name, decl.index_limit.as_ref(), &tensor)?;
        tensors.push((name, tensor));
    }
    Ok(CheckedInputs { tensors })
}

/// [`check_inputs`] for a caller that checks inputs of the same names, types and shapes call
/// after call (a stream's chunks), on borrowed inputs: when they match the ones `into` already
/// holds, their values are checked and copied over `into`'s, so a call allocates nothing.
/// Otherwise `into` becomes [`check_inputs`] of copies. Given inputs the model does not
/// declare are left out (a stream's later chunks take fewer inputs than its first). On an
/// error `into` is left as it was.
pub fn check_inputs_into(
    declared: &[ValueInfo],
    given: &[(String, HostTensor)],
    into: &mut CheckedInputs,
) -> Result<()> {
    let wanted = || {
        given
            .iter()
            .filter(|(name, _)| declared.iter().any(|d| d.name == *name))
    };
    // The same inputs in the same order as last time, of the same types and shapes: the
    // shapes have passed `check_dims` already, so only the values are new.
    let mut fed = wanted();
    let same = into.tensors.len() == declared.len()
        && into.tensors.iter().all(|(name, held)| {
            fed.next()
                .is_some_and(|(n, t)| n == name && same_layout(t, held))
        })
        && fed.next().is_none();
    if !same {
        *into = check_inputs(declared, wanted().cloned().collect())?;
        return Ok(());
    }
    // In declared order, as `into` holds them.
    for (decl, (name, tensor)) in declared.iter().zip(wanted()) {
        check_finite(name, tensor)?;
        check_indices(name, decl.index_limit.as_ref(), tensor)?;
    }
    for ((_, from), (_, to)) in wanted().zip(&mut into.tensors) {
        copy_values(from, to);
    }
    Ok(())
}

/// Whether two tensors have the same element type and shape.
fn same_layout(a: &HostTensor, b: &HostTensor) -> bool {
    a.elem_type() == b.elem_type() && a.shape() == b.shape()
}

/// Copies `from`'s values over `to`'s, which has the same element type and shape.
fn copy_values(from: &HostTensor, to: &mut HostTensor) {
    fn copy<T: Copy>(from: &ArrayD<T>, to: &mut ArrayD<T>) {
        match (from.as_slice(), to.as_slice_mut()) {
            (Some(from), Some(to)) => to.copy_from_slice(from),
            _ => to.assign(from),
        }
    }
    match (from, to) {
        (HostTensor::F32(a), HostTensor::F32(b)) => copy(a, b),
        (HostTensor::I64(a), HostTensor::I64(b)) => copy(a, b),
        (HostTensor::I32(a), HostTensor::I32(b)) => copy(a, b),
        _ => unreachable!("copy_values: element types differ"),
    }
}

/// The given inputs in declaration order (None where one is missing); refuses unknown and
/// repeated names.
fn sort_by_declaration(
    declared: &[ValueInfo],
    given: Vec<(String, HostTensor)>,
) -> Result<Vec<Option<(String, HostTensor)>>> {
    // Models have a handful of inputs: a slot per declared input, found by a linear scan.
    let mut by_decl: Vec<Option<(String, HostTensor)>> = vec![None; declared.len()];
    for (name, tensor) in given {
        let Some(index) = declared.iter().position(|d| d.name == name) else {
            let known: Vec<&str> = declared.iter().map(|d| d.name.as_str()).collect();
            return Err(RecurError::input(
                &name,
                format!(
                    "the model has no such input (its inputs: {})",
                    known.join(", ")
                ),
            ));
        };
        if by_decl[index].is_some() {
            return Err(RecurError::input(&name, "given twice"));
        }
        by_decl[index] = Some((name, tensor));
    }
    Ok(by_decl)
}

fn convert_elem_type(name: &str, tensor: HostTensor, want: ElemType) -> Result<HostTensor> {
    let got = tensor.elem_type();
    if got == want {
        return Ok(tensor);
    }
    match (tensor, want) {
        (HostTensor::I32(a), ElemType::I64) => Ok(HostTensor::I64(a.mapv(i64::from))),
        (HostTensor::I64(a), ElemType::I32) => {
            if let Some(v) = a.iter().find(|v| i32::try_from(**v).is_err()) {
                return Err(RecurError::input(
                    name,
                    format!("expects int32, and value {v} does not fit"),
                ));
            }
            Ok(HostTensor::I32(a.mapv(|v| v as i32)))
        }
        _ => Err(RecurError::input(
            name,
            format!(
                "expects {}, the file holds {}",
                want.numpy_name(),
                got.numpy_name()
            ),
        )),
    }
}

/// Checks one input's shape against its declaration; `symbols` holds each symbolic dimension
/// already bound (its name, value and the input that bound it).
fn check_dims<'a>(
    decl: &'a ValueInfo,
    shape: &[usize],
    symbols: &mut Vec<(&'a str, usize, &'a str)>,
) -> Result<()> {
    let Some(dims) = &decl.dims else {
        return Ok(());
    };
    let expected = || crate::ir::format_dims(&decl.dims);
    if dims.len() != shape.len() {
        return Err(RecurError::input(
            &decl.name,
            format!(
                "expects rank {} {}, got rank {} {shape:?}",
                dims.len(),
                expected(),
                shape.len()
            ),
        ));
    }
    for (axis, (dim, &got)) in dims.iter().zip(shape).enumerate() {
        match dim {
            Dim::Fixed(n) if *n != got => {
                return Err(RecurError::input(
                    &decl.name,
                    format!(
                        "expects shape {}, got {shape:?} (axis {axis} must be {n})",
                        expected()
                    ),
                ))
            }
            Dim::Symbolic(sym) => match symbols.iter().find(|(s, _, _)| s == sym) {
                Some((_, value, owner)) if *value != got => {
                    return Err(RecurError::input(
                        &decl.name,
                        format!(
                            "axis {axis} ('{sym}') is {got}, but input '{owner}' set '{sym}' to {value}"
                        ),
                    ))
                }
                Some(_) => {}
                None => symbols.push((sym, got, &decl.name)),
            },
            _ => {}
        }
        if got == 0 {
            return Err(RecurError::input(
                &decl.name,
                format!("axis {axis} is empty (shape {shape:?})"),
            ));
        }
    }
    Ok(())
}

fn check_finite(name: &str, tensor: &HostTensor) -> Result<()> {
    if let HostTensor::F32(a) = tensor {
        // The common case, a standard-layout array, as one vectorisable pass. (`as_slice`
        // first: on a dynamic-rank array it costs a fifth of `as_slice_memory_order`, which
        // mattered to a streamed step's 3 us.)
        let all_finite = match a.as_slice().or_else(|| a.as_slice_memory_order()) {
            Some(data) => data.iter().fold(true, |ok, v| ok & v.is_finite()),
            None => a.iter().all(|v| v.is_finite()),
        };
        if all_finite {
            return Ok(());
        }
        if let Some((index, value)) = a.indexed_iter().find(|(_, v)| !v.is_finite()) {
            return Err(RecurError::input(
                name,
                format!(
                    "holds {value} at index {:?}; recur refuses non-finite inputs",
                    ndarray::Dimension::slice(&index).to_vec()
                ),
            ));
        }
    }
    Ok(())
}

/// Refuses token ids the embedding that reads `name` has no row for (see [`IndexLimit`]),
/// naming the first one, where it is, and the embedding's node.
fn check_indices(name: &str, limit: Option<&IndexLimit>, tensor: &HostTensor) -> Result<()> {
    let Some(limit) = limit else {
        return Ok(());
    };
    let rows = limit.rows as i64;
    let outside = |id: i64| id < -rows || id >= rows;
    let found = match tensor {
        HostTensor::I64(a) => a
            .indexed_iter()
            .find(|(_, id)| outside(**id))
            .map(|(at, id)| (at, *id)),
        HostTensor::I32(a) => a
            .indexed_iter()
            .find(|(_, id)| outside(i64::from(**id)))
            .map(|(at, id)| (at, i64::from(*id))),
        HostTensor::F32(_) => None,
    };
    match found {
        None => Ok(()),
        Some((at, id)) => Err(RecurError::input(
            name,
            format!(
                "token id {id} at index {:?} has no row in embedding '{}' ({} rows: ids {}..={})",
                ndarray::Dimension::slice(&at).to_vec(),
                limit.node,
                limit.rows,
                -rows,
                rows - 1
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn declared(name: &str, elem_type: ElemType, dims: Vec<Dim>) -> ValueInfo {
        ValueInfo {
            name: name.into(),
            elem_type,
            dims: Some(dims),
            index_limit: None,
        }
    }

    fn floats(shape: &[usize], start: f32) -> HostTensor {
        let n = shape.iter().product::<usize>();
        let values = (0..n).map(|i| start + i as f32).collect();
        HostTensor::F32(ArrayD::from_shape_vec(shape.to_vec(), values).unwrap())
    }

    /// Chunk after chunk, `check_inputs_into` holds what `check_inputs` gives for the same
    /// inputs: the first call and a change of shape or type check copies in full (int32 ids
    /// widened, undeclared inputs left out, bad shapes refused), later calls of the same
    /// layout copy the new values over the held ones; a refused chunk (NaN, wrong rank)
    /// leaves what was held.
    #[test]
    fn checking_into_held_inputs_equals_checking_copies() {
        let decl = vec![
            declared(
                "x",
                ElemType::F32,
                vec![Dim::Symbolic("t".into()), Dim::Fixed(1), Dim::Fixed(3)],
            ),
            declared("ids", ElemType::I64, vec![Dim::Fixed(2)]),
        ];
        let ids =
            |a: i32| HostTensor::I32(ArrayD::from_shape_vec(vec![2], vec![a, a + 1]).unwrap());
        let chunk = |t: usize, start: f32, id: HostTensor| {
            vec![
                ("extra".to_string(), floats(&[4], 0.0)),
                ("x".to_string(), floats(&[t, 1, 3], start)),
                ("ids".to_string(), id),
            ]
        };
        let reference = |given: &[(String, HostTensor)]| {
            let declared_only = given
                .iter()
                .filter(|(n, _)| n != "extra")
                .cloned()
                .collect();
            check_inputs(&decl, declared_only).unwrap().tensors
        };
        let mut held = CheckedInputs::default();
        // The first chunk, then the same layout (int32 ids stay int32 given, so they are
        // converted again each time: a full check), then the ids as int64 (the fast path),
        // then a longer chunk (a new shape: a full check).
        let as_i64 =
            |a: i64| HostTensor::I64(ArrayD::from_shape_vec(vec![2], vec![a, a + 1]).unwrap());
        for given in [
            chunk(1, 0.0, ids(5)),
            chunk(1, 10.0, ids(7)),
            chunk(1, 20.0, as_i64(9)),
            chunk(1, 30.0, as_i64(11)),
            chunk(2, 40.0, as_i64(13)),
            chunk(2, 50.0, as_i64(15)),
        ] {
            check_inputs_into(&decl, &given, &mut held).unwrap();
            assert_eq!(held.tensors, reference(&given));
        }
        let before = held.tensors.clone();
        let mut nan = chunk(2, 60.0, as_i64(17));
        if let HostTensor::F32(a) = &mut nan[1].1 {
            a[[1, 0, 2]] = f32::NAN;
        }
        let refused = check_inputs_into(&decl, &nan, &mut held).unwrap_err();
        assert!(refused.to_string().contains("'x'"), "{refused}");
        assert!(refused.to_string().contains("NaN"), "{refused}");
        let wrong_rank = vec![
            ("x".to_string(), floats(&[2, 3], 0.0)),
            ("ids".to_string(), as_i64(1)),
        ];
        assert!(check_inputs_into(&decl, &wrong_rank, &mut held).is_err());
        let missing = vec![("x".to_string(), floats(&[2, 1, 3], 0.0))];
        assert!(check_inputs_into(&decl, &missing, &mut held).is_err());
        assert_eq!(held.tensors, before, "a refused chunk changes nothing");
    }
}
