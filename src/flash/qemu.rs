//! One run of `recur-firmware` in QEMU (`qemu-system-arm -M mps2-an386`, Cortex-M4F), with a
//! blob placed in its model region, always under a timeout.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use wait_timeout::ChildExt;

use crate::error::{RecurError, Result};

/// The instruction-counting plugin to load, and the marker addresses it watches.
#[derive(Debug, Clone)]
pub struct Counting {
    /// `libinsn_marker.so`.
    pub plugin: PathBuf,
    /// Address of `recur_mark_step`.
    pub step: u64,
    /// Address of `recur_mark_section`.
    pub section: u64,
    /// Also count every instruction of the steps by address ([`Run::profile`]).
    pub profile: bool,
}

/// What one run gave back.
#[derive(Debug)]
pub struct Run {
    /// The firmware's exit status (QEMU passes the semihosting exit status on).
    pub status: i32,
    /// What the firmware printed on semihosting stdout.
    pub stdout: String,
    /// Its semihosting stderr and QEMU's own messages.
    pub stderr: String,
    /// The plugin's snapshot lines, when counting.
    pub counts: Option<String>,
    /// The plugin's per-address counts of the steps' instructions, when profiling.
    pub profile: Option<String>,
}

/// Runs `elf` in QEMU in the directory `work` (semihosting file names in `args` are
/// relative to it), with `blob` loaded at `model_addr`. `args` become the firmware's command
/// line after its name; none may hold a comma or a space (the semihosting command line
/// cannot carry them). Killed after `timeout`.
pub fn run(
    elf: &Path,
    blob: &[u8],
    model_addr: u64,
    args: &[String],
    work: &Path,
    timeout: Duration,
    counting: Option<&Counting>,
) -> Result<Run> {
    if let Some(a) = args.iter().find(|a| a.contains([',', ' '])) {
        return Err(RecurError::Usage(format!(
            "internal: firmware argument '{a}' holds a comma or a space"
        )));
    }
    // QEMU runs in `work`: a relative ELF path must not be read from there.
    let elf = elf
        .canonicalize()
        .map_err(|e| RecurError::file(elf, format!("firmware ELF: {e}")))?;
    let blob_file = work.join("model.rcm");
    std::fs::write(&blob_file, blob).map_err(|e| RecurError::file(&blob_file, e))?;
    let mut semihosting = String::from("enable=on,target=native,arg=recur-firmware");
    for a in args {
        semihosting.push_str(",arg=");
        semihosting.push_str(a);
    }
    let mut cmd = Command::new("qemu-system-arm");
    cmd.current_dir(work)
        .args(["-M", "mps2-an386", "-cpu", "cortex-m4", "-display", "none"])
        .args(["-monitor", "none", "-serial", "none", "-semihosting-config"])
        .arg(semihosting)
        .arg("-device")
        .arg(format!("loader,file=model.rcm,addr={model_addr:#x}"))
        .arg("-kernel")
        .arg(&elf);
    let counts_file = work.join("counts.txt");
    let hist_file = work.join("hist.txt");
    if let Some(c) = counting {
        cmd.arg("-plugin").arg(format!(
            "{},step={:#x},section={:#x},out=counts.txt{}",
            c.plugin.display(),
            c.step,
            c.section,
            if c.profile { ",hist=hist.txt" } else { "" }
        ));
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            RecurError::Usage(format!(
                "cannot start qemu-system-arm ({e}); install it: apt-get install qemu-system-arm"
            ))
        })?;
    // Drain both pipes on threads so that a chatty firmware cannot block on a full pipe.
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("piped")));
    let err = drain(Box::new(child.stderr.take().expect("piped")));
    let status = match child
        .wait_timeout(timeout)
        .map_err(|e| RecurError::Usage(format!("waiting for QEMU: {e}")))?
    {
        Some(s) => s,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(RecurError::Usage(format!(
                "the firmware did not finish within {} s in QEMU (raise --timeout)",
                timeout.as_secs()
            )));
        }
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    let counts = match counting {
        Some(_) => Some(
            std::fs::read_to_string(&counts_file).map_err(|e| RecurError::file(&counts_file, e))?,
        ),
        None => None,
    };
    let profile = match counting {
        Some(c) if c.profile => {
            Some(std::fs::read_to_string(&hist_file).map_err(|e| RecurError::file(&hist_file, e))?)
        }
        _ => None,
    };
    Ok(Run {
        status: status.code().unwrap_or(-1),
        stdout,
        stderr,
        counts,
        profile,
    })
}

/// Instructions of each step from the plugin's snapshots: the firmware calls the section
/// marker just before each step and the step marker just after it, so each `S`/`M` pair
/// brackets one step. The markers' own instructions (the section marker's body and the
/// call to the step marker, 4 in all) are taken off.
pub fn steps_from_counts(counts: &str) -> Result<Vec<u64>> {
    let mut steps = Vec::new();
    let mut open = None;
    for line in counts.lines() {
        let bad = || RecurError::Usage(format!("internal: bad plugin line '{line}'"));
        let (tag, n) = line.split_once(' ').ok_or_else(bad)?;
        let n: u64 = n.parse().map_err(|_| bad())?;
        match tag {
            "S" => open = Some(n),
            "M" => {
                if let Some(s) = open.take() {
                    steps.push(n.saturating_sub(s).saturating_sub(MARKER_OVERHEAD));
                }
            }
            _ => {}
        }
    }
    Ok(steps)
}

/// Instructions of marking counted between the two snapshots: the section marker's `nop`,
/// `nop`, `bx lr`, and the `bl` to the step marker.
pub const MARKER_OVERHEAD: u64 = 4;
