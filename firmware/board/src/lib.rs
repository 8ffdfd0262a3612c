//! recur-firmware: the Cortex-M4F side of recur.
//!
//! - [`host`]: semihosting file I/O, the command line and exit statuses (QEMU, or a debug
//!   probe on real hardware).
//! - [`io`]: samples in from a host `.rcs` file as a [`recur_sensors::Sensor`], outputs
//!   out to another `.rcs` file, both in 512-byte chunks.
//! - [`model_region`]: the flash region that holds the `.rcm` blob, apart from the code.
//! - [`marker`]: the never-inlined functions whose execution the QEMU instruction-counting
//!   plugin snapshots (one per time step, one per benchmark section).
//!
//! Binaries: `recur-firmware` streams samples through `recur-kernel` and the blob in the
//! model region; `lstm-f32` runs `recur-lstm-ref`'s f32 LSTM the same way (the f32
//! reference); `bench` counts instructions per step of the f32 reference (docs/FIRMWARE.md).
#![no_std]
#![deny(missing_docs)]

#[cfg(all(feature = "stm32f411", feature = "nrf52840"))]
compile_error!("select at most one board feature: stm32f411 or nrf52840");

pub mod host;
pub mod io;
pub mod marker;
pub mod model_region;

/// The board this build's memory map is for (`mps2-an386`, `stm32f411` or `nrf52840`).
pub const BOARD: &str = env!("RECUR_BOARD");

/// Exit status for success.
pub const EXIT_OK: u32 = 0;
/// Exit status for an internal failure (also what a panic exits with).
pub const EXIT_FAILURE: u32 = 1;
/// Exit status for bad usage or bad input (missing file, corrupted stream), as the `recur`
/// command line uses.
pub const EXIT_BAD_INPUT: u32 = 2;
