//! The command-line interface: one module per subcommand, each an argument struct plus an
//! `exec` that turns arguments into library calls. Nothing below this module prints.

mod bench;
mod convert;
mod deploy;
mod engine;
mod flash;
mod inspect;
mod run;
mod serve;
mod sim;

use clap::{Parser, Subcommand};

use crate::error::RecurError;

/// Run recurrent ONNX models (LSTM, GRU, RNN) on CPUs, Jetson GPUs and microcontrollers.
#[derive(Debug, Parser)]
#[command(name = "recur", version, about)]
pub struct Cli {
    /// The subcommand.
    #[command(subcommand)]
    pub command: Command,
}

/// recur's subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show a model's inputs, outputs, layers and which path can run it.
    Inspect(inspect::InspectArgs),
    /// Run a model once on inputs from .npy files.
    Run(run::RunArgs),
    /// Time a model (or a streaming session) in one process: median and p90.
    Bench(bench::BenchArgs),
    /// Convert a model: --streamable (state exposed for chunked feeding) or --target mcu
    /// (the fixed-point .rcm blob, with its accuracy and memory report).
    Convert(convert::ConvertArgs),
    /// Run an .rcm blob through the fixed-point kernel on the host.
    Sim(sim::SimArgs),
    /// Run an .rcm blob on the microcontroller firmware: in QEMU (--qemu, writing what
    /// `sim` writes) or on a board through probe-rs (--probe CHIP).
    Flash(flash::FlashArgs),
    /// Serve a model to sensor streams (JSON lines over TCP), with health and metrics.
    Serve(serve::ServeArgs),
    /// Write a release bundle (--bundle), or ship one to a device over ssh (--host) with an
    /// atomic switch, a health check and rollback.
    Deploy(Box<deploy::DeployArgs>),
}

/// An error from a subcommand, with its exit status.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad usage or bad input: exit status 2.
    #[error(transparent)]
    User(#[from] RecurError),
    /// Anything else: exit status 1.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl CliError {
    /// The process exit status for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::User(_) => 2,
            CliError::Internal(_) => 1,
        }
    }
}

/// Runs one parsed command line.
pub fn exec(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Inspect(args) => inspect::exec(args),
        Command::Run(args) => run::exec(args),
        Command::Convert(args) => convert::exec(args),
        Command::Bench(args) => bench::exec(args),
        Command::Sim(args) => sim::exec(args),
        Command::Flash(args) => flash::exec(args),
        Command::Serve(args) => serve::exec(args),
        Command::Deploy(args) => deploy::exec(*args),
    }
}
