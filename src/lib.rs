//! recur runs recurrent neural networks (LSTM, GRU, SimpleRNN) exported to ONNX on edge
//! hardware: CPUs through tract, NVIDIA Jetson GPUs through ONNX Runtime, microcontrollers
//! through the fixed-point `recur-kernel`.
//!
//! The library is what the `recur` command-line tool is built on: load a [`model::Model`]
//! (decoded ONNX plus the [`ir::RecurrentModel`] every path decides from), check inputs with
//! [`tensor::check_inputs`], and run them on a [`backend::Backend`]. Each path refuses what it
//! cannot compute exactly, naming the node and the reason, rather than returning wrong numbers.

pub mod backend;
pub mod cli;
pub mod cuda;
pub mod deploy;
pub mod error;
pub mod flash;
pub mod inspect;
pub mod ir;
pub mod kernels;
pub mod model;
pub mod onnx;
pub mod quant;
pub mod serve;
pub mod stream;
pub mod tensor;

pub use error::{RecurError, Result};
