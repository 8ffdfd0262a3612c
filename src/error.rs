//! Errors a user can act on: each names the file, input or node at fault in one line.
//!
//! Every `RecurError` maps to exit status 2 (bad usage, bad input, or a model a path cannot
//! compute exactly). Anything else that escapes is an internal failure (exit 1).

use std::path::PathBuf;

/// The errors recur reports to users.
#[derive(Debug, thiserror::Error)]
pub enum RecurError {
    /// A file could not be read or written.
    #[error("{}: {reason}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong, in words.
        reason: String,
    },
    /// The bytes are not a usable ONNX model.
    #[error("{}: not a valid ONNX model: {reason}", path.display())]
    NotOnnx {
        /// The model file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// An input given on the command line (or through the API) has a problem.
    #[error("input '{name}': {reason}")]
    Input {
        /// Graph input name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// A path cannot compute a node exactly, so it refuses the model.
    #[error("{backend} backend cannot run node '{node}' ({op}): {reason}")]
    Unsupported {
        /// Backend that refuses (tract, ort, mcu).
        backend: String,
        /// Node name.
        node: String,
        /// Its op type.
        op: String,
        /// Attribute or input at fault, and why.
        reason: String,
    },
    /// The engine failed on a model that passed recur's checks.
    #[error("{backend} failed on {}: {message}", path.display())]
    Engine {
        /// Engine name.
        backend: String,
        /// Model file.
        path: PathBuf,
        /// The engine's message, on one line.
        message: String,
    },
    /// Command-line usage that cannot be honoured.
    #[error("{0}")]
    Usage(String),
}

impl RecurError {
    /// Shorthand for an input error.
    pub fn input(name: impl Into<String>, reason: impl Into<String>) -> Self {
        RecurError::Input {
            name: name.into(),
            reason: reason.into(),
        }
    }

    /// Shorthand for a file error.
    pub fn file(path: impl Into<PathBuf>, reason: impl std::fmt::Display) -> Self {
        RecurError::File {
            path: path.into(),
            reason: one_line(&reason.to_string()),
        }
    }
}

/// Result alias used across the library.
pub type Result<T> = std::result::Result<T, RecurError>;

/// The message a caught panic carried (`panic!` with a literal or a formatted string), for
/// the one-line errors and warnings that replace it.
pub fn panic_message(panic: Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown panic".into())
}

/// Folds a multi-line message (tract's error chains) onto one line.
pub fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}
