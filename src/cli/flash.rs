//! `recur flash OUT.rcm --qemu --input FILE.npy --out DIR` (the firmware in QEMU, writing
//! what `recur sim` writes) and `recur flash OUT.rcm --probe CHIP` (a real board through
//! probe-rs); also `recur bench OUT.rcm --qemu`'s instruction counts.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;

use super::CliError;
use crate::error::{RecurError, Result};
use crate::flash::{firmware, probe, qemu, rcs};
use crate::quant::sim;
use crate::tensor::{read_npy, HostTensor};

/// Arguments of `recur flash`.
#[derive(Debug, Args)]
pub struct FlashArgs {
    /// The .rcm blob written by `recur convert --target mcu`.
    pub blob: PathBuf,
    /// Run the firmware in QEMU (mps2-an386, Cortex-M4F) on --input and write --out.
    #[arg(long, conflicts_with = "probe", requires_all = ["input", "out"])]
    pub qemu: bool,
    /// Flash a real board through probe-rs (e.g. STM32F411CEUx, nRF52840_xxAA).
    #[arg(long, value_name = "CHIP", required_unless_present = "qemu")]
    pub probe: Option<String>,
    /// Input (.npy): float32 [N, T, F], or int64/int32 [N, T] token ids; the firmware
    /// streams every sequence one sample at a time, from a zero state each.
    #[arg(long, short = 'i', value_name = "FILE.npy")]
    pub input: Option<PathBuf>,
    /// Directory for output.npy, output_raw.npy and state_raw.npy (as `recur sim` writes),
    /// and steps_raw.npy: the firmware's int16 output after every sample, [N, T, O].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// A recur-firmware ELF built before (default: build it from the checkout's
    /// firmware/board).
    #[arg(long, value_name = "ELF")]
    pub firmware: Option<PathBuf>,
    /// Seconds QEMU may run before it is stopped.
    #[arg(long, value_name = "SECS", default_value_t = 600)]
    pub timeout: u64,
}

/// Flashes (QEMU or probe) and, for QEMU, writes the outputs.
pub fn exec(args: FlashArgs) -> std::result::Result<(), CliError> {
    let blob = Blob::read(&args.blob)?;
    let model = blob.model()?;
    if let Some(chip) = &args.probe {
        return flash_probe(&args, chip, &blob, &model).map_err(Into::into);
    }
    let (input, out) = match (&args.input, &args.out) {
        (Some(i), Some(o)) => (i, o),
        _ => {
            return Err(RecurError::Usage("--qemu needs --input and --out".into()).into());
        }
    };
    let elf = firmware_elf(args.firmware.as_deref(), firmware::Board::Mps2An386)?;
    let layout = report_layout(&elf, &blob, &model)?;
    let result = run_in_qemu(
        &blob,
        &model,
        input,
        &elf,
        &layout,
        args.timeout,
        Count::Nothing,
    )?;
    std::fs::create_dir_all(out).map_err(|e| RecurError::file(out, e))?;
    let values = result.raw.mapv(|v| v as f32 * model.output_scale);
    let files = [
        out.join("output.npy"),
        out.join("output_raw.npy"),
        out.join("state_raw.npy"),
        out.join("steps_raw.npy"),
    ];
    HostTensor::F32(values).write_npy(&files[0])?;
    write_i16(&files[1], &result.raw)?;
    let state =
        ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&[result.state.len()]), result.state)
            .expect("one row");
    write_i16(&files[2], &state)?;
    write_i16(&files[3], &result.steps_raw)?;
    println!(
        "QEMU mps2-an386: {} samples streamed; output {:?} (int16 raw, scale {:e})",
        result.samples,
        result.raw.shape(),
        model.output_scale
    );
    for f in &files {
        println!("wrote {}", f.display());
    }
    Ok(())
}

/// An `.rcm` file read once: its bytes, and a word-aligned copy for the zero-copy parser.
struct Blob {
    path: PathBuf,
    bytes: Vec<u8>,
    words: Vec<u32>,
}

impl Blob {
    fn read(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| RecurError::file(path, e))?;
        let words = sim::aligned(&bytes);
        Ok(Blob {
            path: path.to_path_buf(),
            bytes,
            words,
        })
    }

    /// Parses and checks the blob on the host (once per command), so a corrupted file is
    /// refused here with the parser's reason (the firmware would refuse it too), and so is
    /// a model the firmware cannot stream.
    fn model(&self) -> Result<recur_kernel::Model<'_>> {
        let model = sim::parse(
            &self.words,
            self.bytes.len(),
            &self.path.display().to_string(),
        )?;
        if !model.is_causal() {
            return Err(RecurError::file(
                &self.path,
                "has a bidirectional or reverse layer, which needs the whole sequence; the \
                 firmware streams one sample at a time (use `recur sim` for windows)",
            ));
        }
        Ok(model)
    }
}

fn firmware_elf(given: Option<&Path>, board: firmware::Board) -> Result<PathBuf> {
    match given {
        Some(p) => Ok(p.to_path_buf()),
        None => {
            eprintln!(
                "building recur-firmware for {board:?} (cargo build --release in firmware/board)"
            );
            firmware::build(board)
        }
    }
}

/// Reads the ELF's layout, checks that the blob fits its model region, and prints flash and
/// RAM use.
fn report_layout(elf: &Path, blob: &Blob, model: &recur_kernel::Model) -> Result<firmware::Layout> {
    let layout = firmware::layout(elf)?;
    if blob.bytes.len() as u64 > layout.model_len {
        return Err(RecurError::file(
            &blob.path,
            format!(
                "{} B, the firmware's model region holds {} B",
                blob.bytes.len(),
                layout.model_len
            ),
        ));
    }
    eprintln!(
        "firmware {}: flash {} B (code, constants, .data image), static RAM {} B (.data + .bss, \
         session buffers included; the stack comes on top)",
        elf.display(),
        layout.flash_bytes,
        layout.ram_bytes
    );
    eprintln!(
        "model {}: {} B in the model region at {:#010x} ({} B); its session uses {} B of RAM, \
         plus {} B for the row tables{} the firmware keeps to step faster",
        blob.path.display(),
        blob.bytes.len(),
        layout.model_addr,
        layout.model_len,
        model.ram_bytes(),
        4 * model.tables_len(),
        match model.tables_len() - model.row_tables_len() {
            0 => String::new(),
            p => format!(" and gate rows repacked in pairs ({} B of them)", 4 * p),
        }
    );
    Ok(layout)
}

/// What the firmware computed for a whole input batch.
struct QemuResult {
    raw: ndarray::ArrayD<i16>,
    steps_raw: ndarray::ArrayD<i16>,
    state: Vec<i16>,
    samples: usize,
    steps: Vec<u64>,
    /// The plugin's per-address counts of the steps' instructions.
    profile: Option<String>,
}

/// What to count while the firmware runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Count {
    /// Nothing (no plugin).
    Nothing,
    /// The instructions of every step.
    Steps,
    /// Those and every step instruction by address.
    Profile,
}

/// Streams `input` through the firmware in QEMU (state reset between sequences) and reads
/// back its outputs, its final state and what `count` asks for.
fn run_in_qemu(
    blob: &Blob,
    model: &recur_kernel::Model,
    input: &Path,
    elf: &Path,
    layout: &firmware::Layout,
    timeout: u64,
    count: Count,
) -> std::result::Result<QemuResult, CliError> {
    let tensor = read_npy(input)?;
    let samples = rcs::encode_input(model, &tensor, &input.display().to_string())?;
    let work =
        tempfile::tempdir().map_err(|e| RecurError::Usage(format!("temporary directory: {e}")))?;
    let in_file = work.path().join("in.rcs");
    std::fs::write(&in_file, &samples.bytes).map_err(|e| RecurError::file(&in_file, e))?;
    let args = vec![
        "in=in.rcs".to_string(),
        "out=out.rcs".to_string(),
        format!("reset={}", samples.steps),
        "state=state.rcs".to_string(),
    ];
    let counting = if count != Count::Nothing {
        Some(qemu::Counting {
            profile: count == Count::Profile,
            plugin: plugin()?,
            step: layout
                .mark_step
                .ok_or_else(|| RecurError::file(elf, "no recur_mark_step symbol"))?,
            section: layout
                .mark_section
                .ok_or_else(|| RecurError::file(elf, "no recur_mark_section symbol"))?,
        })
    } else {
        None
    };
    let run = qemu::run(
        elf,
        &blob.bytes,
        layout.model_addr,
        &args,
        work.path(),
        Duration::from_secs(timeout),
        counting.as_ref(),
    )?;
    if run.status != 0 {
        let line = run
            .stderr
            .lines()
            .find(|l| l.contains("error"))
            .unwrap_or(run.stderr.trim())
            .to_string();
        let why = format!("firmware exited with status {}: {line}", run.status);
        // Status 2 is the firmware refusing its input or model; anything else is a failure
        // of the firmware itself (a panic or HardFault exits 1).
        return Err(if run.status == 2 {
            RecurError::file(elf, why).into()
        } else {
            anyhow::anyhow!("{}: {why}", elf.display()).into()
        });
    }
    let read = |name: &str| {
        let p = work.path().join(name);
        std::fs::read(&p).map_err(|e| RecurError::file(&p, e))
    };
    let (header, rows) = rcs::decode_i16(&read("out.rcs")?, model.output_dim, "firmware output")?;
    let total = samples.sequences * samples.steps;
    if header.count as usize != total {
        return Err(anyhow::anyhow!(
            "the firmware wrote {} rows for {total} samples",
            header.count
        )
        .into());
    }
    let state_bytes = read("state.rcs")?;
    let state_len = recur_sensors::stream::Header::parse(&state_bytes)
        .map(|h| h.channels as usize)
        .unwrap_or(0);
    let (_, state) = rcs::decode_i16(&state_bytes, state_len, "firmware state")?;
    let steps = match &run.counts {
        Some(c) => qemu::steps_from_counts(c)?,
        None => Vec::new(),
    };
    let steps_raw = ndarray::ArrayD::from_shape_vec(
        ndarray::IxDyn(&[samples.sequences, samples.steps, model.output_dim]),
        rows.clone(),
    )
    .expect("row count checked");
    Ok(QemuResult {
        raw: rcs::outputs_like_sim(model, &rows, samples.sequences, samples.steps),
        steps_raw,
        state,
        samples: total,
        steps,
        profile: run.profile,
    })
}

fn write_i16(path: &Path, a: &ndarray::ArrayD<i16>) -> Result<()> {
    let file = std::fs::File::create(path).map_err(|e| RecurError::file(path, e))?;
    ndarray_npy::WriteNpyExt::write_npy(a, std::io::BufWriter::new(file))
        .map_err(|e| RecurError::file(path, e))
}

/// The instruction-counting plugin of the checkout, built with `make` when missing.
fn plugin() -> Result<PathBuf> {
    let dir = firmware::board_dir()?.join("../qemu-plugin");
    let so = dir.join("libinsn_marker.so");
    let status = std::process::Command::new("make")
        .args(["-s", "-C"])
        .arg(&dir)
        .status()
        .map_err(|e| RecurError::Usage(format!("cannot run make for the QEMU plugin: {e}")))?;
    if !status.success() || !so.is_file() {
        return Err(RecurError::file(
            &dir,
            "building the QEMU instruction-counting plugin failed",
        ));
    }
    Ok(so)
}

fn flash_probe(
    args: &FlashArgs,
    chip: &str,
    blob: &Blob,
    model: &recur_kernel::Model,
) -> Result<()> {
    probe::available()?;
    let board = firmware::Board::for_chip(chip).ok_or_else(|| {
        RecurError::Usage(format!(
            "no memory map for chip '{chip}': the firmware has STM32F411* and nRF52840* \
             (firmware/board/boards/)"
        ))
    })?;
    let elf = firmware_elf(args.firmware.as_deref(), board)?;
    let layout = report_layout(&elf, blob, model)?;
    probe::flash(chip, &elf, &args.blob, layout.model_addr)
}

/// `recur bench OUT.rcm --qemu --input FILE.npy [--profile]`: instructions per time step of
/// the firmware in QEMU, counted by the TCG plugin; prints mean, median, min and max, and
/// with `profile` the step's instructions by function.
pub fn bench(
    blob_path: &Path,
    input: &Path,
    firmware_given: Option<&Path>,
    json: bool,
    profile: bool,
) -> std::result::Result<(), CliError> {
    let blob = Blob::read(blob_path)?;
    let model = blob.model()?;
    let elf = firmware_elf(firmware_given, firmware::Board::Mps2An386)?;
    let layout = report_layout(&elf, &blob, &model)?;
    let count = if profile {
        Count::Profile
    } else {
        Count::Steps
    };
    let result = run_in_qemu(&blob, &model, input, &elf, &layout, 1800, count)?;
    let functions = match &result.profile {
        Some(hist) => crate::flash::profile::by_function(&elf, hist)?,
        None => Vec::new(),
    };
    let mut steps = result.steps.clone();
    if steps.is_empty() {
        return Err(anyhow::anyhow!("the instruction-counting plugin counted no steps").into());
    }
    steps.sort_unstable();
    let mean = steps.iter().sum::<u64>() as f64 / steps.len() as f64;
    let median = steps[steps.len() / 2];
    let (min, max) = (steps[0], steps[steps.len() - 1]);
    let n = steps.len() as f64;
    if json {
        let mut v = serde_json::json!({
            "blob": blob_path.display().to_string(),
            "board": "mps2-an386",
            "steps": steps.len(),
            "instructions_per_step": { "mean": mean, "median": median, "min": min, "max": max },
            "flash_bytes": layout.flash_bytes,
            "ram_bytes": layout.ram_bytes,
            "blob_bytes": blob.bytes.len(),
        });
        if profile {
            v["profile"] = functions
                .iter()
                .map(|f| {
                    serde_json::json!({
                        "function": f.function,
                        "instructions": f.instructions,
                        "per_step": f.instructions as f64 / n,
                    })
                })
                .collect();
        }
        println!("{v}");
    } else {
        println!(
            "{} on QEMU mps2-an386 (Cortex-M4F), {} steps: instructions per step mean {mean:.0}, \
             median {median}, min {min}, max {max}",
            blob_path.display(),
            steps.len()
        );
        if profile {
            println!(
                "by function, per step (the {} marker instructions around each step included):",
                qemu::MARKER_OVERHEAD
            );
            for f in &functions {
                println!("{:>10.1}  {}", f.instructions as f64 / n, f.function);
            }
        }
    }
    Ok(())
}
