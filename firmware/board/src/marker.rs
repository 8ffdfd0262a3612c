//! Markers for instruction counting.
//!
//! Each is a naked (no prologue), never-inlined, unmangled function with a fixed body the
//! optimiser cannot remove or merge. The QEMU plugin in `firmware/qemu-plugin/` is given
//! their addresses (from the ELF's symbol table) and records the running instruction count
//! each time one starts; the difference between two consecutive [`recur_mark_step`]
//! snapshots is the cost of one time step plus exactly 3 instructions of marking
//! (`bl`, `nop`, `bx lr`), which the `calibration` section of the bench checks.

/// Marks the end of one time step: `nop; bx lr`.
#[unsafe(naked)]
#[no_mangle]
pub extern "C" fn recur_mark_step() {
    core::arch::naked_asm!("nop", "bx lr")
}

/// Marks the start of a benchmark section (before its first step): `nop; nop; bx lr`
/// (a different body, so the linker can never fold the two markers into one).
#[unsafe(naked)]
#[no_mangle]
pub extern "C" fn recur_mark_section() {
    core::arch::naked_asm!("nop", "nop", "bx lr")
}
