//! Semihosting: the host's files, the command line, the console and the exit status.
//!
//! Every call is an ARM semihosting operation (`bkpt 0xab`); under QEMU it needs
//! `-semihosting-config enable=on,target=native`. Paths are passed NUL-terminated, at most
//! [`MAX_PATH`] bytes.

use core::fmt::{self, Write};
use cortex_m_semihosting::{hio, nr, syscall};

/// Longest path [`File::open`] accepts.
pub const MAX_PATH: usize = 255;

/// SYS_EXIT_EXTENDED: exit with any status (QEMU passes it on as its own exit status).
const SYS_EXIT_EXTENDED: usize = 0x20;
/// ADP_Stopped_ApplicationExit.
const ADP_STOPPED_APPLICATION_EXIT: usize = 0x20026;

/// Ends the program with `status` as the emulator's exit status.
pub fn exit(status: u32) -> ! {
    let block = [ADP_STOPPED_APPLICATION_EXIT, status as usize];
    // SAFETY: SYS_EXIT_EXTENDED reads a two-word block, which lives on this stack frame.
    unsafe {
        cortex_m_semihosting::syscall(SYS_EXIT_EXTENDED, &block);
    }
    // Only reached without a debugger/emulator that handles the exit.
    loop {
        cortex_m::asm::bkpt();
    }
}

/// Writes formatted text to the host's stdout; output failures are ignored (there is
/// nowhere else to report them).
pub fn print(args: fmt::Arguments) {
    if let Ok(mut out) = hio::hstdout() {
        let _ = out.write_fmt(args);
    }
}

/// Writes formatted text to the host's stderr; failures are ignored.
pub fn eprint(args: fmt::Arguments) {
    if let Ok(mut out) = hio::hstderr() {
        let _ = out.write_fmt(args);
    }
}

/// The body of every firmware binary's entry point: reads the semihosting command line, hands
/// it to `run` and exits with the status `run` returns (a missing command line is reported
/// and gives [`crate::EXIT_BAD_INPUT`]).
pub fn main_with(run: impl FnOnce(&str) -> u32) -> ! {
    let mut buf = [0u8; 1024];
    let status = match cmdline(&mut buf) {
        None => {
            eprint(format_args!(
                "recur-firmware: error: no semihosting command line\n"
            ));
            crate::EXIT_BAD_INPUT
        }
        Some(line) => run(line),
    };
    exit(status)
}

/// Reads the semihosting command line (SYS_GET_CMDLINE) into `buf` and returns it.
///
/// Under QEMU it is the `arg=` values of `-semihosting-config` joined by spaces, the first
/// one being the program's name. `None` when the host gives none or it is not UTF-8.
pub fn cmdline(buf: &mut [u8]) -> Option<&str> {
    let mut block = [buf.as_mut_ptr() as usize, buf.len()];
    // SAFETY: r1 points at a two-word block {buffer, length}; the host writes at most
    // `length` bytes into `buf` and stores the length it wrote in the block's second word.
    // The asm has no `nomem` option, so the compiler re-reads `block` afterwards.
    let r = unsafe { cortex_m_semihosting::syscall1(nr::GET_CMDLINE, block.as_mut_ptr() as usize) };
    let n = block[1];
    if r != 0 || n > buf.len() {
        return None;
    }
    let text = core::str::from_utf8(&buf[..n]).ok()?;
    Some(text.trim_end_matches('\0'))
}

/// A host file opened through semihosting.
pub struct File {
    handle: usize,
}

/// The semihosting call failed (the host's errno is not carried).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostError;

/// How [`File::open`] opens a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Read, binary (`"rb"`).
    Read,
    /// Write, truncate or create, binary (`"wb"`).
    Write,
}

impl File {
    /// Opens `path` on the host.
    pub fn open(path: &str, mode: Mode) -> Result<File, HostError> {
        let bytes = path.as_bytes();
        if bytes.is_empty() || bytes.len() > MAX_PATH || bytes.contains(&0) {
            return Err(HostError);
        }
        let mut z = [0u8; MAX_PATH + 1];
        z[..bytes.len()].copy_from_slice(bytes);
        let m = match mode {
            Mode::Read => nr::open::R_BINARY,
            Mode::Write => nr::open::W_TRUNC_BINARY,
        };
        // SAFETY: `z` is NUL-terminated and outlives the call; the length excludes the NUL.
        let r = unsafe { syscall!(OPEN, z.as_ptr(), m, bytes.len()) } as isize;
        if r < 0 {
            Err(HostError)
        } else {
            Ok(File { handle: r as usize })
        }
    }

    /// Length of the file in bytes (SYS_FLEN).
    pub fn length(&self) -> Result<u64, HostError> {
        // SAFETY: a plain handle argument.
        let r = unsafe { syscall!(FLEN, self.handle) } as isize;
        if r < 0 {
            Err(HostError)
        } else {
            Ok(r as u64)
        }
    }

    /// Reads up to `buf.len()` bytes; returns how many were read (0 at the end).
    pub fn read(&mut self, buf: &mut [u8]) -> Result<usize, HostError> {
        // SAFETY: the host writes at most `buf.len()` bytes into `buf`.
        let left = unsafe { syscall!(READ, self.handle, buf.as_mut_ptr(), buf.len()) };
        // SYS_READ returns the number of bytes NOT read.
        buf.len().checked_sub(left).ok_or(HostError)
    }

    /// Fills `buf` completely, or fails (end of file included).
    pub fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), HostError> {
        let mut at = 0;
        while at < buf.len() {
            match self.read(&mut buf[at..])? {
                0 => return Err(HostError),
                n => at += n,
            }
        }
        Ok(())
    }

    /// Writes all of `buf`.
    pub fn write_all(&mut self, buf: &[u8]) -> Result<(), HostError> {
        // SAFETY: the host reads `buf.len()` bytes from `buf`.
        let left = unsafe { syscall!(WRITE, self.handle, buf.as_ptr(), buf.len()) };
        if left == 0 {
            Ok(())
        } else {
            Err(HostError)
        }
    }

    /// Closes the file, reporting a failure.
    pub fn close(self) -> Result<(), HostError> {
        let handle = self.handle;
        core::mem::forget(self);
        // SAFETY: a plain handle argument.
        if unsafe { syscall!(CLOSE, handle) } == 0 {
            Ok(())
        } else {
            Err(HostError)
        }
    }
}

impl Drop for File {
    fn drop(&mut self) {
        // SAFETY: a plain handle argument; errors on this path have no one to go to.
        unsafe {
            syscall!(CLOSE, self.handle);
        }
    }
}

/// What the binaries' HardFault handlers call: one line with the faulting PC on stderr,
/// then exit with [`crate::EXIT_FAILURE`], so a fault ends the emulator instead of hanging.
pub fn hard_fault(ef: &cortex_m_rt::ExceptionFrame) -> ! {
    eprint(format_args!(
        "recur-firmware: error: HardFault at pc {:#010x}\n",
        ef.pc()
    ));
    exit(crate::EXIT_FAILURE)
}
