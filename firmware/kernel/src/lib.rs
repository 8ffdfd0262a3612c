//! `recur-kernel`: the fixed-point side of recur's microcontroller path.
//!
//! A model converted by `recur convert --target mcu` is one `.rcm` blob. [`Model::parse`]
//! checks it and reads it in place (zero copy, straight from flash); a [`Session`] then runs it
//! one time step at a time ([`Session::step`]) or over a whole window ([`Session::run`],
//! which also serves bidirectional layers), in memory the caller provides.
//!
//! Numbers: int16 activations and states, int8 or int16 weights with one scale per output
//! row, int64 accumulators (int32 where the parser proves the bounds: [`blob::Params::fast`],
//! [`blob::Params::acc32`]), requantisation by an integer multiplier and a rounding shift,
//! sigmoid/tanh/exp from 513-entry int16 tables with linear interpolation ([`lut`]), and
//! saturation wherever a value could leave its range. Nothing in the step path uses floats,
//! allocates or can panic: every blob is validated once by the parser, so the arithmetic can
//! rely on its bounds. The host simulator (`recur sim`) and firmware run this same code, so
//! they agree bit for bit.

#![no_std]
// `unsafe` only in `arm` (the Cortex-M4 `asm!` loops), each block with its SAFETY comment.
#![deny(unsafe_code)]
#![warn(missing_docs)]
// Gate loops index several parallel arrays by row; index loops read like the math.
#![allow(clippy::needless_range_loop)]

#[cfg(target_endian = "big")]
compile_error!(
    "the .rcm blob is little-endian and read in place: big-endian targets are not supported"
);

#[cfg(recur_dsp)]
mod arm;
pub mod blob;
pub mod dense;
pub mod fixed;
pub mod gru;
pub mod lstm;
pub mod lut;
#[allow(missing_docs)]
mod lut_table;
pub mod model;
pub mod rnn;
pub mod rows;
pub mod rowtab;
#[cfg(test)]
mod test_rng;

pub use blob::{BlobError, Layer, LayerKind, Model, Reduce, Weights, FORMAT_VERSION, MAGIC};
pub use model::{Session, StepError};
