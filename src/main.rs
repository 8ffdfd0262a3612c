//! The `recur` command-line tool; the work is done by the library (`recur::cli`).

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Engines may panic on malformed models; those panics are caught and reported as one
    // line, so the default hook's multi-line message is silenced.
    std::panic::set_hook(Box::new(|_| {}));
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RECUR_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .without_time()
        .init();
    let cli = recur::cli::Cli::parse();
    match recur::cli::exec(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", recur::error::one_line(&e.to_string()));
            ExitCode::from(e.exit_code())
        }
    }
}
