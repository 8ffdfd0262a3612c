//! Reading ONNX files: decoding the protobuf (through tract's checked-in prost types, so no
//! protoc and no second copy of the schema), reading attributes and constant tensors, and
//! lifting the graph into [`crate::ir::RecurrentModel`].

mod attrs;
mod constants;
pub mod keras_loop;
mod lift;
pub mod relayout;
pub mod streamable;

pub use attrs::NodeAttrs;
pub use constants::{constant_f32, constant_i64};
pub use lift::{lift, recurrent_attributes, RecurrentAttributes};

use std::path::Path;

use prost::Message;
use tract_onnx::pb::ModelProto;

use crate::error::{RecurError, Result};

/// Reads and decodes an ONNX file, checking that it holds a graph.
pub fn load_proto(path: &Path) -> Result<ModelProto> {
    let bytes = std::fs::read(path).map_err(|e| RecurError::file(path, e))?;
    decode_proto(path, &bytes)
}

/// Decodes ONNX bytes read from `path` (named in errors).
pub fn decode_proto(path: &Path, bytes: &[u8]) -> Result<ModelProto> {
    let not_onnx = |reason: String| RecurError::NotOnnx {
        path: path.to_path_buf(),
        reason,
    };
    if bytes.is_empty() {
        return Err(not_onnx("the file is empty".into()));
    }
    let proto = ModelProto::decode(bytes)
        .map_err(|e| not_onnx(format!("protobuf decoding failed ({e})")))?;
    let graph = proto
        .graph
        .as_ref()
        .ok_or_else(|| not_onnx("it holds no graph".into()))?;
    if graph.node.is_empty() {
        return Err(not_onnx("its graph has no nodes".into()));
    }
    if graph.output.is_empty() {
        return Err(not_onnx("its graph has no outputs".into()));
    }
    if proto.opset_import.is_empty() {
        return Err(not_onnx("it declares no opset".into()));
    }
    Ok(proto)
}

/// A node's display name: its own name, or `<op>#<index>` when the file leaves it empty.
pub fn node_display_name(node: &tract_onnx::pb::NodeProto, index: usize) -> String {
    if node.name.is_empty() {
        format!("{}#{index}", node.op_type)
    } else {
        node.name.clone()
    }
}
