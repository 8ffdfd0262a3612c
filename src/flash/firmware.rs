//! The `recur-firmware` ELF: where its sources are, building it for a board, and what the
//! ELF says about flash, RAM and the model region.

use std::path::{Path, PathBuf};
use std::process::Command;

use object::{Object, ObjectSection, ObjectSymbol, SectionFlags, SectionKind};

use crate::error::{RecurError, Result};

/// The boards the firmware has memory maps for (`firmware/board/boards/*.x`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Board {
    /// Arm MPS2 AN386 (Cortex-M4F), the board QEMU emulates.
    Mps2An386,
    /// STM32F411CE (Cortex-M4F, 512 KiB flash, 128 KiB RAM).
    Stm32f411,
    /// nRF52840 (Cortex-M4F, 1 MiB flash, 256 KiB RAM).
    Nrf52840,
}

impl Board {
    /// The firmware's cargo feature for this board (none for the QEMU board).
    fn feature(self) -> Option<&'static str> {
        match self {
            Board::Mps2An386 => None,
            Board::Stm32f411 => Some("stm32f411"),
            Board::Nrf52840 => Some("nrf52840"),
        }
    }

    /// The board a probe-rs chip name belongs to, if the firmware has its memory map.
    pub fn for_chip(chip: &str) -> Option<Board> {
        let c = chip.to_ascii_lowercase();
        if c.starts_with("stm32f411") {
            Some(Board::Stm32f411)
        } else if c.starts_with("nrf52840") {
            Some(Board::Nrf52840)
        } else {
            None
        }
    }
}

/// The firmware's sources: `firmware/board` of the checkout this binary was built from, or
/// `RECUR_FIRMWARE_DIR`.
pub fn board_dir() -> Result<PathBuf> {
    let dir = match std::env::var_os("RECUR_FIRMWARE_DIR") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("firmware/board"),
    };
    if dir.join("Cargo.toml").is_file() {
        Ok(dir)
    } else {
        Err(RecurError::file(
            &dir,
            "recur-firmware's sources are not there (set RECUR_FIRMWARE_DIR to firmware/board \
             of a recur checkout, or pass --firmware ELF)",
        ))
    }
}

/// Builds the `recur-firmware` binary (release, thumbv7em-none-eabihf) for `board` and
/// returns the ELF's path. Needs `rustup target add thumbv7em-none-eabihf`.
pub fn build(board: Board) -> Result<PathBuf> {
    let dir = board_dir()?;
    let target_dir = match board.feature() {
        None => dir.join("target"),
        Some(f) => dir.join("target").join(f),
    };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&dir)
        .args(["build", "--release", "--quiet", "--bin", "recur-firmware"])
        .arg("--target-dir")
        .arg(&target_dir);
    if let Some(f) = board.feature() {
        cmd.args(["--features", f]);
    }
    // A `cargo test` of recur sets these for its own target; the firmware has its own.
    cmd.env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("RUSTFLAGS");
    let out = cmd
        .output()
        .map_err(|e| RecurError::Usage(format!("cannot run cargo to build the firmware: {e}")))?;
    if !out.status.success() {
        let why = String::from_utf8_lossy(&out.stderr);
        let first = why
            .lines()
            .find(|l| l.starts_with("error"))
            .unwrap_or("see `cargo build --release` in firmware/board");
        return Err(RecurError::file(
            &dir,
            format!("building recur-firmware failed ({}): {first}", out.status),
        ));
    }
    Ok(target_dir.join("thumbv7em-none-eabihf/release/recur-firmware"))
}

/// What the ELF says about the firmware: memory use and where the model goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// Flash the code occupies: vector table, code, constants and the `.data` image.
    pub flash_bytes: u64,
    /// Static RAM: `.data`, `.bss` and `.uninit` (the session buffers included; the stack
    /// comes on top).
    pub ram_bytes: u64,
    /// First address of the model region.
    pub model_addr: u64,
    /// Bytes in the model region.
    pub model_len: u64,
    /// Address of the per-step instruction-count marker, if the ELF has one.
    pub mark_step: Option<u64>,
    /// Address of the section marker, if the ELF has one.
    pub mark_section: Option<u64>,
}

/// Reads the layout of the firmware ELF at `path`.
pub fn layout(path: &Path) -> Result<Layout> {
    let bytes = std::fs::read(path).map_err(|e| RecurError::file(path, e))?;
    let elf = object::File::parse(&*bytes)
        .map_err(|e| RecurError::file(path, format!("not an ELF file: {e}")))?;
    let ram_origin = 0x2000_0000u64;
    let (mut flash, mut ram) = (0, 0);
    for s in elf.sections() {
        let alloc = matches!(s.flags(), SectionFlags::Elf { sh_flags } if sh_flags & u64::from(object::elf::SHF_ALLOC) != 0);
        if !alloc || s.size() == 0 {
            continue;
        }
        let in_ram = s.address() >= ram_origin;
        let zeroed = matches!(
            s.kind(),
            SectionKind::UninitializedData | SectionKind::UninitializedTls
        );
        if in_ram {
            ram += s.size();
        }
        if !zeroed && (!in_ram || s.name().is_ok_and(|n| n == ".data")) {
            flash += s.size();
        }
    }
    let symbol = |name: &str| {
        elf.symbols()
            .find(|s| s.name().is_ok_and(|n| n == name))
            .map(|s| s.address())
    };
    let missing = |name: &str| {
        RecurError::file(
            path,
            format!("no {name} symbol: not a recur-firmware ELF with a model region"),
        )
    };
    let start = symbol("__recur_model_start").ok_or_else(|| missing("__recur_model_start"))?;
    let end = symbol("__recur_model_end").ok_or_else(|| missing("__recur_model_end"))?;
    // Thumb function symbols carry bit 0 set.
    let marker = |name: &str| symbol(name).map(|a| a & !1);
    Ok(Layout {
        flash_bytes: flash,
        ram_bytes: ram,
        model_addr: start,
        model_len: end.saturating_sub(start),
        mark_step: marker("recur_mark_step"),
        mark_section: marker("recur_mark_section"),
    })
}
