//! recur-firmware: streams samples from the host through the `.rcm` model in the MODEL flash
//! region ([`recur_firmware::model_region`]), one `recur-kernel` time step per sample, and
//! writes the model's output at every step.
//!
//! Command line (semihosting; `recur flash --qemu` or `qemu-run.sh ELF ...`):
//! `in=SAMPLES.rcs out=OUTPUTS.rcs [reset=T] [state=STATE.rcs]`
//! - `SAMPLES.rcs`: f32 samples of the model's input width, quantised on the chip with the
//!   blob's input affine; for a model that starts with an embedding, i16 token ids, one
//!   channel.
//! - `OUTPUTS.rcs`: i16, one row of the model's raw outputs per sample.
//! - `reset=T`: zero the state before every T-th sample (back-to-back sequences of T steps);
//!   without it the state is never reset.
//! - `state=STATE.rcs`: after the last sample, the session's state (every layer's carried
//!   memory) as one i16 row, to compare with the host's.
//!
//! A missing or corrupted blob (bad magic, CRC mismatch, inconsistent fields) is reported
//! with the region's address and the parser's reason, and the firmware stops with status 2
//! before it touches a sample.
//! Exit status: 0 done, 2 bad usage, bad model or bad input (one line on stderr names the
//! file or the model and the reason), 1 internal failure (panics included).
#![no_std]
#![no_main]

use core::fmt;
use cortex_m_rt::{entry, exception, ExceptionFrame};
use panic_semihosting as _;
use recur_firmware::host::{self, eprint, print};
use recur_firmware::io::{FileSamples, FileSink, IoError};
use recur_firmware::marker::{recur_mark_section, recur_mark_step};
use recur_firmware::model_region;
use recur_firmware::{EXIT_BAD_INPUT, EXIT_FAILURE, EXIT_OK};
use recur_kernel::{BlobError, Model, Session, StepError};

/// int16 words of session memory (states, layer outputs, scratch): 8 KiB.
const MEM_WORDS: usize = 4096;
/// int32 words of gate accumulators, and the row tables in front of them when they fit
/// (`Session::new` builds them then): 16 KiB.
const ACC_WORDS: usize = 4096;
/// Widest input sample: one 512-byte I/O chunk of f32.
const MAX_INPUT: usize = 128;

const USAGE: &str = "usage: in=SAMPLES.rcs out=OUTPUTS.rcs [reset=T] [state=STATE.rcs]";

enum Failure<'a> {
    Usage(&'a str),
    UnknownArgument(&'a str),
    Model(BlobError),
    NotCausal,
    TooWide(usize),
    Memory(StepError),
    Step(u32, StepError),
    Input(&'a str, IoError),
    Output(&'a str, IoError),
}

impl fmt::Display for Failure<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = model_region::address();
        match self {
            Failure::Usage(why) => write!(f, "{why}; {USAGE}"),
            Failure::UnknownArgument(word) => write!(f, "unknown argument '{word}'; {USAGE}"),
            Failure::Model(e) => write!(f, "model blob at {at:#010x}: {e}"),
            Failure::NotCausal => write!(
                f,
                "model blob at {at:#010x}: a bidirectional or reverse layer needs the whole \
                 sequence, and this firmware streams one sample at a time"
            ),
            Failure::TooWide(n) => write!(
                f,
                "model blob at {at:#010x}: {n} input features, this firmware reads at most \
                 {MAX_INPUT}"
            ),
            Failure::Memory(e) => write!(
                f,
                "model blob at {at:#010x}: needs more session memory than this firmware \
                 reserves ({MEM_WORDS} int16 + {ACC_WORDS} int32 words): {e:?}"
            ),
            Failure::Step(i, StepError::TokenOutOfRange(t)) => {
                write!(f, "sample {i}: token id {t} is past the vocabulary")
            }
            Failure::Step(i, e) => write!(f, "sample {i}: {e:?}"),
            Failure::Input(path, e) => write!(f, "input {path}: {e}"),
            Failure::Output(path, e) => write!(f, "output {path}: {e}"),
        }
    }
}

impl Failure<'_> {
    fn status(&self) -> u32 {
        match self {
            Failure::Input(_, IoError::Host)
            | Failure::Output(_, IoError::Host | IoError::Format(_)) => EXIT_FAILURE,
            _ => EXIT_BAD_INPUT,
        }
    }
}

struct Args<'a> {
    input: &'a str,
    output: &'a str,
    reset: Option<u32>,
    state: Option<&'a str>,
}

fn parse(cmdline: &str) -> Result<Args<'_>, Failure<'_>> {
    let (mut input, mut output, mut reset, mut state) = (None, None, None, None);
    // The first word is the program's name.
    for word in cmdline.split_ascii_whitespace().skip(1) {
        match word.split_once('=') {
            Some(("in", v)) => input = Some(v),
            Some(("out", v)) => output = Some(v),
            Some(("state", v)) => state = Some(v),
            Some(("reset", v)) => match v.parse::<u32>() {
                Ok(n) if n > 0 => reset = Some(n),
                _ => {
                    return Err(Failure::Usage(
                        "reset=T needs a whole number of steps above 0",
                    ))
                }
            },
            _ => return Err(Failure::UnknownArgument(word)),
        }
    }
    Ok(Args {
        input: input.ok_or(Failure::Usage("missing in=FILE"))?,
        output: output.ok_or(Failure::Usage("missing out=FILE"))?,
        reset,
        state,
    })
}

/// The model's input for one sample: f32 features quantised on the chip, or token ids.
enum Samples {
    Features(FileSamples<f32>),
    Tokens(FileSamples<i16>),
}

impl Samples {
    fn open(model: &Model, path: &str) -> Result<Self, IoError> {
        Ok(if model.takes_tokens() {
            Samples::Tokens(FileSamples::open(path, 1)?)
        } else {
            Samples::Features(FileSamples::open(path, model.input_dim)?)
        })
    }

    fn count(&self) -> u32 {
        match self {
            Samples::Features(s) => s.header().count,
            Samples::Tokens(s) => s.header().count,
        }
    }

    /// Reads the next sample into `x` as the kernel takes it; `false` after the last.
    fn next_into(&mut self, model: &Model, x: &mut [i16]) -> Result<bool, IoError> {
        match self {
            Samples::Features(s) => {
                let mut raw = [0f32; MAX_INPUT];
                let raw = &mut raw[..x.len()];
                if !s.next_into(raw)? {
                    return Ok(false);
                }
                for (f, (q, v)) in x.iter_mut().zip(raw.iter()).enumerate() {
                    *q = model.quantize_feature(f, *v);
                }
                Ok(true)
            }
            Samples::Tokens(s) => s.next_into(x),
        }
    }
}

fn stream<'a>(args: &Args<'a>, model: &Model) -> Result<u32, Failure<'a>> {
    let width = model.input_dim;
    if width > MAX_INPUT {
        return Err(Failure::TooWide(width));
    }
    let mem = cortex_m::singleton!(: [i16; MEM_WORDS] = [0; MEM_WORDS])
        .ok_or(Failure::Usage("internal: memory taken twice"))?;
    let acc = cortex_m::singleton!(: [i32; ACC_WORDS] = [0; ACC_WORDS])
        .ok_or(Failure::Usage("internal: memory taken twice"))?;
    let mut session = Session::new(model, mem, acc).map_err(Failure::Memory)?;
    let mut samples =
        Samples::open(model, args.input).map_err(|e| Failure::Input(args.input, e))?;
    let count = samples.count();
    let mut sink = FileSink::<i16>::create_dyn(args.output, model.output_dim as u16, count)
        .map_err(|e| Failure::Output(args.output, e))?;
    let mut x = [0i16; MAX_INPUT];
    let x = &mut x[..width];
    let mut n = 0u32;
    while samples
        .next_into(model, x)
        .map_err(|e| Failure::Input(args.input, e))?
    {
        if args.reset.is_some_and(|t| n > 0 && n.is_multiple_of(t)) {
            session.reset();
        }
        // The two markers bracket exactly one step for the instruction-counting plugin
        // (`recur bench OUT.rcm --qemu`); elsewhere they cost 6 instructions a step.
        recur_mark_section();
        let y = session.step(x).map_err(|e| Failure::Step(n, e))?;
        recur_mark_step();
        sink.push_slice(y)
            .map_err(|e| Failure::Output(args.output, e))?;
        n += 1;
    }
    sink.finish().map_err(|e| Failure::Output(args.output, e))?;
    if let Some(path) = args.state {
        let state = session.state();
        let mut out = FileSink::<i16>::create_dyn(path, state.len() as u16, 1)
            .map_err(|e| Failure::Output(path, e))?;
        out.push_slice(state)
            .map_err(|e| Failure::Output(path, e))?;
        out.finish().map_err(|e| Failure::Output(path, e))?;
    }
    Ok(n)
}

fn run(cmdline: &str) -> Result<(), Failure<'_>> {
    let args = parse(cmdline)?;
    let model = Model::parse(model_region::bytes()).map_err(Failure::Model)?;
    if !model.is_causal() {
        return Err(Failure::NotCausal);
    }
    let n = stream(&args, &model)?;
    print(format_args!(
        "recur-firmware: {n} samples through the {}-layer model at {:#010x} ({} B) on {}\n",
        model.layers.len(),
        model_region::address(),
        model.blob_len,
        recur_firmware::BOARD
    ));
    Ok(())
}

#[exception]
unsafe fn HardFault(ef: &ExceptionFrame) -> ! {
    host::hard_fault(ef)
}

#[entry]
fn main() -> ! {
    host::main_with(|line| match run(line) {
        Ok(()) => EXIT_OK,
        Err(e) => {
            eprint(format_args!("recur-firmware: error: {e}\n"));
            e.status()
        }
    })
}
