//! lstm-f32: streams samples from a host file through the f32 reference LSTM, one time step per
//! sample, and writes the hidden state of every step to another host file.
//!
//! Command line (semihosting; `cargo run --release --bin lstm-f32 -- ...` or `qemu-run.sh ELF ...`):
//! `in=SAMPLES.rcs out=OUTPUTS.rcs [act=libm|rational]`. The model is the f32 reference
//! LSTM(32) with 6 inputs, weights `LstmWeights::generate(seeds::IMU_6_32)` in flash
//! (the host tests rebuild the same model from the same seed).
//! Exit status: 0 done, 2 bad usage or bad input (one line on stderr names the file and the
//! reason), 1 internal failure (panics included).
#![no_std]
#![no_main]

use core::fmt;
use cortex_m_rt::{entry, exception, ExceptionFrame};
use panic_semihosting as _;
use recur_firmware::host::{self, eprint, print};
use recur_firmware::io::{FileSensor, FileSink, IoError};
use recur_firmware::marker::recur_mark_step;
use recur_firmware::{EXIT_BAD_INPUT, EXIT_FAILURE, EXIT_OK};
use recur_lstm_ref::{seeds, Activations, Libm, Lstm, LstmWeights, Rational};
use recur_sensors::Sensor;

/// Inputs per sample (an IMU: accel + gyro).
const INPUTS: usize = 6;
/// Hidden units.
const HIDDEN: usize = 32;
static WEIGHTS: LstmWeights<INPUTS, HIDDEN> = LstmWeights::generate(seeds::IMU_6_32);

enum Failure<'a> {
    Usage(&'a str),
    UnknownArgument(&'a str),
    Input(&'a str, IoError),
    Output(&'a str, IoError),
}

impl fmt::Display for Failure<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Usage(why) => write!(
                f,
                "{why}; usage: in=SAMPLES.rcs out=OUTPUTS.rcs [act=libm|rational]"
            ),
            Failure::UnknownArgument(word) => write!(
                f,
                "unknown argument '{word}'; usage: in=SAMPLES.rcs out=OUTPUTS.rcs [act=libm|rational]"
            ),
            Failure::Input(path, e) => write!(f, "input {path}: {e}"),
            Failure::Output(path, e) => write!(f, "output {path}: {e}"),
        }
    }
}

impl Failure<'_> {
    fn status(&self) -> u32 {
        match self {
            Failure::Usage(_)
            | Failure::UnknownArgument(_)
            | Failure::Input(_, IoError::Open | IoError::Format(_)) => EXIT_BAD_INPUT,
            Failure::Output(_, IoError::Open) => EXIT_BAD_INPUT,
            _ => EXIT_FAILURE,
        }
    }
}

struct Args<'a> {
    input: &'a str,
    output: &'a str,
    rational: bool,
}

fn parse(cmdline: &str) -> Result<Args<'_>, Failure<'_>> {
    let (mut input, mut output, mut rational) = (None, None, false);
    // The first word is the program's name.
    for word in cmdline.split_ascii_whitespace().skip(1) {
        match word.split_once('=') {
            Some(("in", v)) => input = Some(v),
            Some(("out", v)) => output = Some(v),
            Some(("act", "libm")) => rational = false,
            Some(("act", "rational")) => rational = true,
            _ => return Err(Failure::UnknownArgument(word)),
        }
    }
    Ok(Args {
        input: input.ok_or(Failure::Usage("missing in=FILE"))?,
        output: output.ok_or(Failure::Usage("missing out=FILE"))?,
        rational,
    })
}

fn stream<'a, A: Activations>(args: &Args<'a>) -> Result<u32, Failure<'a>> {
    let mut sensor =
        FileSensor::<f32, INPUTS>::open(args.input).map_err(|e| Failure::Input(args.input, e))?;
    let count = sensor.header().count;
    let mut sink = FileSink::<f32, HIDDEN>::create(args.output, count)
        .map_err(|e| Failure::Output(args.output, e))?;
    let mut cell = Lstm::<INPUTS, HIDDEN, A>::new(&WEIGHTS);
    while let Some(x) = sensor.sample().map_err(|e| Failure::Input(args.input, e))? {
        let h = cell.step(&x);
        recur_mark_step();
        sink.push(h).map_err(|e| Failure::Output(args.output, e))?;
    }
    sink.finish().map_err(|e| Failure::Output(args.output, e))?;
    Ok(count)
}

fn run<'a>(cmdline: &'a str) -> Result<(), Failure<'a>> {
    let args = parse(cmdline)?;
    let (n, act) = if args.rational {
        (stream::<Rational>(&args)?, Rational::NAME)
    } else {
        (stream::<Libm>(&args)?, Libm::NAME)
    };
    print(format_args!(
        "recur-firmware: {n} samples through LSTM({INPUTS}->{HIDDEN}) f32 {act} on {}\n",
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
