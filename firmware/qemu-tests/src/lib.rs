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

/// Builds the instruction-counting plugin (`make` in `firmware/qemu-plugin`) and returns
/// the path of the shared object.
pub fn build_plugin() -> Result<PathBuf, String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../qemu-plugin");
    let status = Command::new("make")
        .args(["-s", "-C"])
        .arg(&dir)
        .status()
        .map_err(|e| format!("cannot run make: {e}"))?;
    if !status.success() {
        return Err(format!("building the QEMU plugin failed: {status}"));
    }
    Ok(dir.join("libinsn_marker.so"))
}

/// The address of symbol `name` in `elf` (read with the host's `nm`).
pub fn symbol_address(elf: &Path, name: &str) -> Result<u64, String> {
    let out = Command::new("nm")
        .arg(elf)
        .output()
        .map_err(|e| format!("cannot run nm: {e}"))?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| {
            let mut w = l.split_whitespace();
            let (addr, _, sym) = (w.next()?, w.next()?, w.next()?);
            (sym == name).then(|| u64::from_str_radix(addr, 16).ok())?
        })
        .ok_or(format!("symbol {name} not found in {}", elf.display()))
}

/// One benchmark section: its name (from the firmware's `section NAME` line) and the
/// instructions between consecutive step markers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Section {
    /// Name, e.g. `f32-libm I=6 H=32`.
    pub name: String,
    /// Instructions per step, one per pair of consecutive step markers.
    pub steps: Vec<u64>,
}

/// Runs a bench ELF in QEMU under the counting plugin and returns its sections.
pub fn count_instructions(
    elf: &Path,
    plugin: &Path,
    timeout_s: u32,
) -> Result<Vec<Section>, String> {
    let dir = tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?;
    let counts = dir.path().join("counts.txt");
    let step = symbol_address(elf, "recur_mark_step")?;
    let section = symbol_address(elf, "recur_mark_section")?;
    let out = Command::new("sh")
        .arg(board_dir().join("qemu-run.sh"))
        .arg(elf)
        .env("RECUR_QEMU_TIMEOUT", timeout_s.to_string())
        .env(
            "RECUR_QEMU_EXTRA",
            format!(
                "-plugin {},step={step:#x},section={section:#x},out={}",
                plugin.display(),
                counts.display()
            ),
        )
        .output()
        .map_err(|e| format!("cannot run qemu-run.sh: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "bench exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("section ").map(str::to_owned))
        .collect();
    let text = std::fs::read_to_string(&counts).map_err(|e| format!("plugin output: {e}"))?;
    let mut sections: Vec<Section> = Vec::new();
    let mut prev = None;
    for line in text.lines() {
        let (tag, n) = line
            .split_once(' ')
            .ok_or(format!("bad plugin line {line}"))?;
        let n: u64 = n.parse().map_err(|_| format!("bad plugin line {line}"))?;
        match tag {
            "S" => {
                let name = names
                    .get(sections.len())
                    .ok_or("more sections counted than announced")?;
                sections.push(Section {
                    name: name.clone(),
                    steps: Vec::new(),
                });
                prev = None;
            }
            "M" => {
                if let (Some(p), Some(s)) = (prev, sections.last_mut()) {
                    s.steps.push(n - p);
                }
                prev = Some(n);
            }
            "T" => {}
            _ => return Err(format!("bad plugin line {line}")),
        }
    }
    if sections.len() != names.len() {
        return Err(format!(
            "{} sections announced, {} counted",
            names.len(),
            sections.len()
        ));
    }
    Ok(sections)
}
