//! Real hardware through probe-rs: the model region written on its own, then the firmware
//! flashed and run.

use std::path::Path;
use std::process::Command;

use crate::error::{RecurError, Result};

/// The command that installs probe-rs, named in the error when it is missing.
pub const INSTALL: &str = "cargo install probe-rs-tools --locked";

/// Checks that the `probe-rs` command is there.
pub fn available() -> Result<()> {
    match Command::new("probe-rs").arg("--version").output() {
        Ok(o) if o.status.success() => Ok(()),
        _ => Err(RecurError::Usage(format!(
            "probe-rs is not installed (needed for --probe); install it with `{INSTALL}`"
        ))),
    }
}

/// Writes `blob_file` at `model_addr` of `chip`'s flash, then flashes and runs `elf`
/// (probe-rs streams the firmware's semihosting and RTT output).
pub fn flash(chip: &str, elf: &Path, blob_file: &Path, model_addr: u64) -> Result<()> {
    available()?;
    let step = |what: &str, cmd: &mut Command| -> Result<()> {
        let status = cmd
            .status()
            .map_err(|e| RecurError::Usage(format!("cannot run probe-rs {what}: {e}")))?;
        if status.success() {
            Ok(())
        } else {
            Err(RecurError::Usage(format!(
                "probe-rs {what} on {chip} failed ({status})"
            )))
        }
    };
    step(
        "download",
        Command::new("probe-rs")
            .args(["download", "--chip", chip, "--binary-format", "bin"])
            .arg("--base-address")
            .arg(format!("{model_addr:#x}"))
            .arg(blob_file),
    )?;
    step(
        "run",
        Command::new("probe-rs")
            .args(["run", "--chip", chip])
            .arg(elf),
    )
}
