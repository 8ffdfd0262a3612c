//! The microcontroller firmware from the host: build `recur-firmware`, put an `.rcm` blob in
//! its model region, run it in QEMU (or on a board through probe-rs), and read back what it
//! computed.
//!
//! - [`firmware`]: where the firmware's sources are, building the ELF, its flash and RAM
//!   sizes and model region (read from the ELF).
//! - [`rcs`]: `.npy` inputs to the `.rcs` sample streams the firmware reads, and its `.rcs`
//!   outputs back to arrays.
//! - [`qemu`]: one run of the firmware in `qemu-system-arm -M mps2-an386`, always under a
//!   timeout, optionally under the instruction-counting plugin.
//! - [`profile`]: a step's instructions by function, from the plugin's per-address counts.
//! - [`probe`]: real hardware through `probe-rs`.
//!
//! `recur flash --qemu` writes the same files as `recur sim`, computed by the firmware.

pub mod firmware;
pub mod probe;
pub mod profile;
pub mod qemu;
pub mod rcs;
