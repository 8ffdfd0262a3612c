//! Typed, checked access to a node's attributes, with errors that name the node.

use tract_onnx::pb::{AttributeProto, NodeProto};

use crate::error::{RecurError, Result};

/// A node's attributes, looked up by name, with errors naming the node and the attribute.
pub struct NodeAttrs<'a> {
    node: &'a NodeProto,
    display: &'a str,
}

impl<'a> NodeAttrs<'a> {
    /// Wraps a node; `display` is the name errors use.
    pub fn new(node: &'a NodeProto, display: &'a str) -> Self {
        NodeAttrs { node, display }
    }

    fn find(&self, name: &str) -> Option<&'a AttributeProto> {
        self.node.attribute.iter().find(|a| a.name == name)
    }

    fn bad(&self, attr: &str, reason: impl Into<String>) -> RecurError {
        RecurError::Unsupported {
            backend: "recur".into(),
            node: self.display.to_string(),
            op: self.node.op_type.clone(),
            reason: format!("attribute {attr}: {}", reason.into()),
        }
    }

    /// Names of all attributes set on the node.
    pub fn names(&self) -> impl Iterator<Item = &'a str> {
        self.node.attribute.iter().map(|a| a.name.as_str())
    }

    /// An integer attribute.
    pub fn int(&self, name: &str) -> Option<i64> {
        self.find(name).map(|a| a.i)
    }

    /// A float attribute.
    pub fn float(&self, name: &str) -> Option<f32> {
        self.find(name).map(|a| a.f)
    }

    /// A string attribute, which must be UTF-8.
    pub fn string(&self, name: &str) -> Result<Option<String>> {
        match self.find(name) {
            None => Ok(None),
            Some(a) => String::from_utf8(a.s.clone())
                .map(Some)
                .map_err(|_| self.bad(name, "not UTF-8")),
        }
    }

    /// A list-of-floats attribute.
    pub fn floats(&self, name: &str) -> Option<&'a [f32]> {
        self.find(name).map(|a| a.floats.as_slice())
    }

    /// A list-of-ints attribute.
    pub fn ints(&self, name: &str) -> Option<&'a [i64]> {
        self.find(name).map(|a| a.ints.as_slice())
    }

    /// A list-of-strings attribute, each UTF-8.
    pub fn strings(&self, name: &str) -> Result<Option<Vec<String>>> {
        match self.find(name) {
            None => Ok(None),
            Some(a) => a
                .strings
                .iter()
                .map(|s| String::from_utf8(s.clone()).map_err(|_| self.bad(name, "not UTF-8")))
                .collect::<Result<Vec<_>>>()
                .map(Some),
        }
    }

    /// Error for an attribute whose value recur does not accept.
    pub fn invalid(&self, attr: &str, reason: impl Into<String>) -> RecurError {
        self.bad(attr, reason)
    }
}
