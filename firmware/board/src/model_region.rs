//! The MODEL flash region: where the `.rcm` blob lives, apart from the code.
//!
//! The board's linker script (`boards/<board>.x`) reserves the region and names its bounds
//! `__recur_model_start` and `__recur_model_end`. Nothing is linked into it: the blob is
//! written there on its own (`recur flash`: a QEMU `-device loader`, or `probe-rs download`
//! at the region's address), so a new model needs no new build of the code. The blob starts
//! at the region's first byte; the bytes after it are ignored.

unsafe extern "C" {
    static __recur_model_start: u8;
    static __recur_model_end: u8;
}

/// The region's first address (where the blob starts).
pub fn address() -> usize {
    (&raw const __recur_model_start).expose_provenance()
}

/// The whole region, as bytes.
pub fn bytes() -> &'static [u8] {
    let start = address();
    let end = (&raw const __recur_model_end).expose_provenance();
    // SAFETY: the linker script defines the two symbols as the bounds of the MODEL memory
    // region: readable, 4-byte aligned (region origins are), and never written by the code.
    unsafe {
        core::slice::from_raw_parts(
            core::ptr::with_exposed_provenance::<u8>(start),
            end.saturating_sub(start),
        )
    }
}
