//! `recur deploy --bundle DIR --model M.onnx --binary PATH ...` writes a release bundle;
//! `recur deploy --host user@device [--ssh-key K] [--dry-run] BUNDLE` ships it (see
//! `recur::deploy` and docs/DEPLOY.md).

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::CliError;
use crate::deploy::bundle::{self, BundleSpec, DeployTable};
use crate::deploy::release::{self, DeploySpec, Outcome};
use crate::deploy::ssh::Target;
use crate::error::RecurError;
use crate::serve::ServeConfig;

/// Arguments of `recur deploy`.
#[derive(Debug, Args)]
pub struct DeployArgs {
    /// The bundle to ship (with --host).
    #[arg(
        value_name = "BUNDLE",
        required_unless_present = "bundle",
        conflicts_with = "bundle"
    )]
    pub source: Option<PathBuf>,
    /// Write a bundle into this folder instead of shipping one.
    #[arg(long, value_name = "DIR", requires_all = ["model", "binary"])]
    pub bundle: Option<PathBuf>,
    /// The model to bundle.
    #[arg(long, value_name = "M.onnx")]
    pub model: Option<PathBuf>,
    /// The recur binary for the device (for Jetson, the aarch64-unknown-linux-gnu build).
    #[arg(long, value_name = "PATH")]
    pub binary: Option<PathBuf>,
    /// The release version (default: v<unix time>-<hash of the contents>).
    #[arg(long = "release", value_name = "NAME")]
    pub release: Option<String>,
    /// The service's engine: tract, ort or cudnn.
    #[arg(long, default_value = "tract")]
    pub backend: String,
    /// The service's device: cpu or cuda[:N] (cuda with --backend ort or cudnn).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// The ONNX Runtime library on the device, set as ORT_DYLIB_PATH in the unit (default:
    /// JetPack's onnxruntime-gpu wheel).
    #[arg(long, value_name = "PATH")]
    pub device_ort_lib: Option<PathBuf>,
    /// The service's sample address on the device.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:7878")]
    pub listen: String,
    /// The service's HTTP (health, metrics) address on the device.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:7879")]
    pub http: String,
    /// The service's stream limit.
    #[arg(long, value_name = "N", default_value_t = 1024)]
    pub max_streams: usize,
    /// The service's idle timeout in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 300.0)]
    pub idle_timeout: f64,
    /// The systemd unit's name.
    #[arg(long, default_value = "recur")]
    pub unit: String,

    /// The device, as user@host.
    #[arg(long, value_name = "USER@HOST", conflicts_with = "bundle")]
    pub host: Option<String>,
    /// The device's ssh port.
    #[arg(long, value_name = "N")]
    pub port: Option<u16>,
    /// The ssh private key.
    #[arg(long, value_name = "KEY")]
    pub ssh_key: Option<PathBuf>,
    /// More ssh options (-o), e.g. UserKnownHostsFile=FILE; repeat for each.
    #[arg(long = "ssh-option", value_name = "KEY=VALUE")]
    pub ssh_options: Vec<String>,
    /// The root folder on the device (bundle: written into recur.toml; ship: overrides it).
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// How the device runs the service: systemd or supervisor (the bundle's bin/supervise).
    #[arg(long, default_value = "systemd")]
    pub service_manager: String,
    /// The health URL (default http://HOST:PORT/health, the port of the bundle's http address).
    #[arg(long, value_name = "URL")]
    pub health_url: Option<String>,
    /// Seconds the new release has to become healthy.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    pub health_timeout: u64,
    /// Seconds any one ssh command may take.
    #[arg(long, value_name = "SECONDS", default_value_t = 300)]
    pub ssh_timeout: u64,
    /// Print the plan and do nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Releases kept on the device after a successful deploy (current and previous always).
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub keep: usize,
}

/// Writes a bundle or ships one.
pub fn exec(args: DeployArgs) -> std::result::Result<(), CliError> {
    if let Some(out) = &args.bundle {
        let model = args.model.clone().expect("clap requires --model");
        let mut serve = ServeConfig::for_model(model.clone());
        serve.backend = args.backend.clone();
        serve.device = args.device.clone();
        serve.listen = args.listen.clone();
        serve.http = Some(args.http.clone());
        serve.max_streams = args.max_streams;
        serve.idle_timeout_s = args.idle_timeout;
        serve.engine()?; // refuse a bad engine choice now, not on the device
        let spec = BundleSpec {
            out: out.clone(),
            binary: args.binary.clone().expect("clap requires --binary"),
            model,
            serve,
            deploy: DeployTable {
                root: args.root.clone().unwrap_or_else(|| "/opt/recur".into()),
                unit: args.unit.clone(),
                ort_lib: args.device_ort_lib.clone(),
            },
            version: args.release.clone(),
        };
        let version = bundle::write(&spec)?;
        println!("wrote bundle {} (release {version})", out.display());
        return Ok(());
    }
    let host = args.host.clone().ok_or_else(|| {
        RecurError::Usage(
            "recur deploy BUNDLE needs --host USER@HOST (or --bundle DIR to write one)".into(),
        )
    })?;
    let spec = DeploySpec {
        bundle: args.source.clone().expect("clap requires BUNDLE"),
        target: Target {
            destination: host,
            port: args.port,
            key: args.ssh_key.clone(),
            options: args.ssh_options.clone(),
            timeout: Duration::from_secs(args.ssh_timeout),
        },
        root: args.root.clone(),
        manager: args.service_manager.parse()?,
        health_url: args.health_url.clone(),
        health_timeout: Duration::from_secs(args.health_timeout),
        dry_run: args.dry_run,
        keep: args.keep,
    };
    match release::deploy(&spec)? {
        Outcome::Deployed { .. } | Outcome::Planned => Ok(()),
    }
}
