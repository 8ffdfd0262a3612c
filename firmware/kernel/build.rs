//! Sets `cfg(recur_dsp)` for targets whose every CPU has the ARMv7E-M DSP extension
//! (SMLALD, SXTB16): `thumbv7em-*` (Cortex-M4, M7). Stable Rust does not expose ARM target
//! features to `cfg`, so the target name decides; everywhere else the portable Rust runs.
fn main() {
    println!("cargo:rustc-check-cfg=cfg(recur_dsp)");
    println!("cargo:rerun-if-changed=build.rs");
    let target = std::env::var("TARGET").unwrap_or_default();
    if target.starts_with("thumbv7em-") {
        println!("cargo:rustc-cfg=recur_dsp");
    }
}
