//! Instruction-count benchmark of the f32 reference LSTM step, for the QEMU plugin.
//!
//! For each configuration (I=6,H=32 and I=8,H=64) and each activation set (libm,
//! rational) it prints one `section NAME` line, calls `recur_mark_section`, then runs
//! `STEPS` steps on deterministic inputs, calling `recur_mark_step` after each. The plugin's
//! snapshots, matched to the section lines in order, give the instructions per step
//! (`scripts/firmware.sh` does this). A first `calibration` section has a known count.
#![no_std]
#![no_main]

use cortex_m_rt::{entry, exception, ExceptionFrame};
use panic_semihosting as _;
use recur_firmware::host::{self, print};
use recur_firmware::marker::{recur_mark_section, recur_mark_step};
use recur_lstm_ref::{seeds, Activations, Libm, Lstm, LstmWeights, Rational, XorShift32};

/// Steps per section.
const STEPS: usize = 32;

static W_6_32: LstmWeights<6, 32> = LstmWeights::generate(seeds::IMU_6_32);
static W_8_64: LstmWeights<8, 64> = LstmWeights::generate(seeds::BENCH_8_64);

fn section<A: Activations, const I: usize, const H: usize>(weights: &LstmWeights<I, H>) {
    let mut rng = XorShift32::new(0xda7a);
    let mut xs = [[0f32; I]; STEPS];
    for x in xs.iter_mut().flatten() {
        *x = 2.0 * rng.next_f32();
    }
    let mut cell = Lstm::<I, H, A>::new(weights);
    print(format_args!("section f32-{} I={I} H={H}\n", A::NAME));
    recur_mark_section();
    for x in &xs {
        cell.step(x);
        recur_mark_step();
    }
    core::hint::black_box(&cell.state);
}

/// Markers back to back: each step is exactly `bl`, `nop`, `bx lr` = 3 instructions,
/// which checks the plugin's count (the QEMU tests assert it).
fn calibration() {
    print(format_args!("section calibration - -\n"));
    recur_mark_section();
    for _ in 0..4 {
        recur_mark_step();
    }
}

#[exception]
unsafe fn HardFault(ef: &ExceptionFrame) -> ! {
    host::hard_fault(ef)
}

#[entry]
fn main() -> ! {
    calibration();
    section::<Libm, 6, 32>(&W_6_32);
    section::<Rational, 6, 32>(&W_6_32);
    section::<Libm, 8, 64>(&W_8_64);
    section::<Rational, 8, 64>(&W_8_64);
    print(format_args!("end\n"));
    host::exit(recur_firmware::EXIT_OK)
}
