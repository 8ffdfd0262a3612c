//! Markers for instruction counting.
//!
//! Each is a never-inlined, unmangled function with one instruction of its own that the
//! optimiser cannot remove (an `asm!` nop is a side effect). The QEMU plugin in
//! `firmware/qemu-plugin/` is given their addresses (from the ELF's symbol table) and
//! records the running instruction count each time one executes; the difference between
//! two consecutive [`recur_mark_step`] snapshots is the cost of one time step, plus the
//! few instructions of the call itself.

/// Marks the end of one time step.
#[inline(never)]
#[no_mangle]
pub extern "C" fn recur_mark_step() {
    // SAFETY: an empty instruction with no operands, no memory, no stack.
    unsafe { core::arch::asm!("nop", options(nomem, nostack, preserves_flags)) }
}

/// Marks the start of a benchmark section (before its first step).
#[inline(never)]
#[no_mangle]
pub extern "C" fn recur_mark_section() {
    // SAFETY: as above; two nops keep the two markers from being folded into one.
    unsafe { core::arch::asm!("nop", "nop", options(nomem, nostack, preserves_flags)) }
}
