//! Picks the board's memory map and links the binaries with cortex-m-rt's `link.x`.
//!
//! The board files are named `boards/<board>.x`, never `memory.x`: a `memory.x` in the
//! package root would shadow the one written here (the linker looks in its working
//! directory first). The selected file is copied to `$OUT_DIR/memory.x`, which
//! `link.x` includes.

use std::{env, fs, path::PathBuf};

fn main() {
    let board = if env::var_os("CARGO_FEATURE_STM32F411").is_some() {
        "stm32f411"
    } else if env::var_os("CARGO_FEATURE_NRF52840").is_some() {
        "nrf52840"
    } else {
        "mps2-an386"
    };
    let src = PathBuf::from("boards").join(format!("{board}.x"));
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let text = fs::read(&src).unwrap_or_else(|e| panic!("cannot read {}: {e}", src.display()));
    fs::write(out.join("memory.x"), text).expect("cannot write memory.x to OUT_DIR");
    println!("cargo:rustc-link-search={}", out.display());
    println!("cargo:rustc-link-arg-bins=-Tlink.x");
    println!("cargo:rustc-env=RECUR_BOARD={board}");
    println!("cargo:rerun-if-changed=boards");
    println!("cargo:rerun-if-changed=build.rs");
}
