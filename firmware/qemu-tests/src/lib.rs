//! Host-side helpers for running recur-firmware in QEMU: build the ELF, write and read
//! `.rcs` streams, run QEMU (always under a timeout) and collect its status and output.
//! `recur flash --qemu` will do the same through these steps.
#![deny(missing_docs)]

use recur_sensors::stream::{Element, Header, HEADER_LEN};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The firmware crate's directory.
pub fn board_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../board")
}

/// Builds recur-firmware (release, thumbv7em-none-eabihf) and returns the path of the ELF
/// named `bin`.
pub fn build_firmware(bin: &str) -> Result<PathBuf, String> {
    let dir = board_dir();
    let target_dir = dir.join("target");
    let status = Command::new(env!("CARGO"))
        .current_dir(&dir)
        .args([
            "build",
            "--release",
            "--quiet",
            "--bin",
            bin,
            "--target-dir",
        ])
        .arg(&target_dir)
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !status.success() {
        return Err(format!("building the firmware failed: {status}"));
    }
    Ok(target_dir.join("thumbv7em-none-eabihf/release").join(bin))
}

/// What one QEMU run gave back.
#[derive(Debug)]
pub struct Run {
    /// QEMU's exit status (the firmware's semihosting exit status); `None` if killed.
    pub status: Option<i32>,
    /// Semihosting stdout.
    pub stdout: String,
    /// Semihosting stderr and QEMU's own messages.
    pub stderr: String,
}

/// Runs `elf` in QEMU mps2-an386 with semihosting arguments `args`, under a timeout of
/// `timeout_s` seconds (`firmware/board/qemu-run.sh`; status 124 when it ran out).
pub fn run_qemu(elf: &Path, args: &[&str], timeout_s: u32) -> Result<Run, String> {
    let out = Command::new("sh")
        .arg(board_dir().join("qemu-run.sh"))
        .arg(elf)
        .args(args)
        .env("RECUR_QEMU_TIMEOUT", timeout_s.to_string())
        .output()
        .map_err(|e| format!("cannot run qemu-run.sh: {e}"))?;
    Ok(Run {
        status: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// Encodes f32 samples of `channels` channels as a `.rcs` stream.
pub fn encode_rcs(channels: u16, samples: &[f32]) -> Vec<u8> {
    let count = samples.len() / channels as usize;
    let header = Header {
        channels,
        element: Element::F32,
        count: count as u32,
    };
    let mut bytes = header.encode().to_vec();
    for v in &samples[..count * channels as usize] {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    bytes
}

/// Decodes a `.rcs` f32 stream into its header and values, checking its length.
pub fn decode_rcs(bytes: &[u8]) -> Result<(Header, Vec<f32>), String> {
    let header = Header::parse(bytes).map_err(|e| e.to_string())?;
    header
        .check_len(bytes.len() as u64)
        .map_err(|e| e.to_string())?;
    if header.element != Element::F32 {
        return Err("not an f32 stream".into());
    }
    let values = bytes[HEADER_LEN..]
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Ok((header, values))
}
