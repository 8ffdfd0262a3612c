//! A loaded model: the decoded ONNX file together with its IR.

use std::path::{Path, PathBuf};

use tract_onnx::pb::ModelProto;

use crate::error::Result;
use crate::ir::RecurrentModel;

/// An ONNX model read from disk, decoded and lifted.
#[derive(Debug, Clone)]
pub struct Model {
    /// Where it was read from.
    pub path: PathBuf,
    /// The decoded protobuf, as the engines take it.
    pub proto: ModelProto,
    /// The lifted description every path decides from.
    pub ir: RecurrentModel,
}

impl Model {
    /// Reads, decodes and lifts a model; every failure names the file or the node.
    pub fn load(path: &Path) -> Result<Self> {
        let proto = crate::onnx::load_proto(path)?;
        let ir = crate::onnx::lift(&proto)?;
        Ok(Model {
            path: path.to_path_buf(),
            proto,
            ir,
        })
    }
}
