//! `recur serve [--config recur.toml] [--model M.onnx] [--backend ..] [--device ..]
//! [--listen ADDR] [--http ADDR] [--max-streams N] [--idle-timeout S]`: the streaming service
//! (see `recur::serve` and docs/DEPLOY.md).

use std::io::Write;
use std::path::PathBuf;

use clap::Args;

use super::CliError;
use crate::error::RecurError;
use crate::serve::{serve, ServeConfig};

/// Arguments of `recur serve`; each overrides the `[serve]` table of `--config`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// A TOML file with a [serve] table (a deploy bundle's recur.toml).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The ONNX model to serve (re-read from this path on reload).
    #[arg(long, value_name = "M.onnx")]
    pub model: Option<PathBuf>,
    /// Engine: tract (CPU) or ort (ONNX Runtime, CPU or CUDA).
    #[arg(long)]
    pub backend: Option<String>,
    /// Device: cpu or cuda[:N].
    #[arg(long)]
    pub device: Option<String>,
    /// ONNX Runtime library to load (default: ORT_DYLIB_PATH, then recur's usual places).
    #[arg(long, value_name = "PATH")]
    pub ort_lib: Option<PathBuf>,
    /// Address for sample streams, JSON lines over TCP (default 127.0.0.1:7878; port 0 picks one).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Address of the HTTP endpoint: GET /health, GET /metrics, POST /reload.
    #[arg(long, value_name = "ADDR")]
    pub http: Option<String>,
    /// Streams that may hold state at once (default 1024).
    #[arg(long, value_name = "N")]
    pub max_streams: Option<usize>,
    /// Seconds after which an unused stream and its state are dropped (default 300).
    #[arg(long, value_name = "SECONDS")]
    pub idle_timeout: Option<f64>,
}

/// Runs the service until SIGTERM or SIGINT; prints the bound addresses once it serves.
pub fn exec(args: ServeArgs) -> std::result::Result<(), CliError> {
    let mut config = match (&args.config, &args.model) {
        (Some(file), _) => ServeConfig::read(file)?,
        (None, Some(model)) => ServeConfig::for_model(model.clone()),
        (None, None) => {
            return Err(RecurError::Usage(
                "recur serve needs --model M.onnx or --config recur.toml".into(),
            )
            .into())
        }
    };
    if let Some(m) = args.model {
        config.model = m;
    }
    if let Some(b) = args.backend {
        config.backend = b;
    }
    if let Some(d) = args.device {
        config.device = d;
    }
    if let Some(l) = args.ort_lib {
        config.ort_lib = Some(l);
    }
    if let Some(l) = args.listen {
        config.listen = l;
    }
    if let Some(h) = args.http {
        config.http = Some(h);
    }
    if let Some(n) = args.max_streams {
        config.max_streams = n;
    }
    if let Some(t) = args.idle_timeout {
        config.idle_timeout_s = t;
    }
    let model = config.model.clone();
    serve(config, |listen, http| {
        let http = http.map(|a| format!(", http on {a}")).unwrap_or_default();
        println!("recur serve: {} on {listen}{http}", model.display());
        let _ = std::io::stdout().flush();
    })?;
    println!("recur serve: drained, stopped");
    Ok(())
}
