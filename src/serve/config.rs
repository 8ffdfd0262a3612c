//! The service's configuration: the `[serve]` table of a TOML file (the `recur.toml` of a
//! deploy bundle), overridden by command-line flags. Relative paths in the file are taken
//! from the file's folder, so a bundle can live anywhere.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::backend::{BackendKind, BackendOptions};
use crate::error::{RecurError, Result};

/// Everything `recur serve` needs to run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    /// The ONNX model to serve (re-read from here on reload).
    pub model: PathBuf,
    /// Engine: tract, ort or cudnn.
    #[serde(default = "default_backend")]
    pub backend: String,
    /// Device: cpu or `cuda[:N]` (cuda with the ort or cudnn backend).
    #[serde(default = "default_device")]
    pub device: String,
    /// ONNX Runtime library (default: ORT_DYLIB_PATH, then recur's usual places).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ort_lib: Option<PathBuf>,
    /// Address for the sample streams (JSON lines over TCP).
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Address of the HTTP endpoint (health, metrics, reload); none when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
    /// Streams that may hold state at once.
    #[serde(default = "default_max_streams")]
    pub max_streams: usize,
    /// Seconds after which an unused stream is dropped.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_s: f64,
    /// The release this configuration belongs to (reported by `/health`; deploy checks it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

fn default_backend() -> String {
    "tract".into()
}
fn default_device() -> String {
    "cpu".into()
}
fn default_listen() -> String {
    "127.0.0.1:7878".into()
}
fn default_max_streams() -> usize {
    1024
}
fn default_idle_timeout() -> f64 {
    300.0
}

/// A TOML file holding a `[serve]` table (other tables, such as a bundle's, are ignored).
#[derive(Debug, Deserialize)]
struct File {
    serve: ServeConfig,
}

impl ServeConfig {
    /// The defaults for a model.
    pub fn for_model(model: PathBuf) -> Self {
        ServeConfig {
            model,
            backend: default_backend(),
            device: default_device(),
            ort_lib: None,
            listen: default_listen(),
            http: None,
            max_streams: default_max_streams(),
            idle_timeout_s: default_idle_timeout(),
            version: None,
        }
    }

    /// Reads the `[serve]` table of a TOML file; relative paths are taken from its folder.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| RecurError::file(path, e))?;
        let file: File = toml::from_str(&text).map_err(|e| RecurError::file(path, e))?;
        let mut config = file.serve;
        let base = path.parent().unwrap_or(Path::new("."));
        config.model = base.join(&config.model);
        config.ort_lib = config.ort_lib.map(|p| base.join(p));
        Ok(config)
    }

    /// Checks the limits and parses the engine choice (exit 2 on a bad value).
    pub fn engine(&self) -> Result<(BackendKind, BackendOptions)> {
        if self.max_streams == 0 {
            return Err(RecurError::Usage("--max-streams must be at least 1".into()));
        }
        if !(self.idle_timeout_s.is_finite() && self.idle_timeout_s > 0.0) {
            return Err(RecurError::Usage(
                "--idle-timeout must be a positive number of seconds".into(),
            ));
        }
        let kind: BackendKind = self.backend.parse()?;
        let options = BackendOptions {
            device: self.device.parse()?,
            ort_lib: self.ort_lib.clone(),
            ..BackendOptions::default()
        };
        if kind == BackendKind::Tract && options.device != crate::backend::Device::Cpu {
            return Err(RecurError::Usage(format!(
                "the tract backend runs on the CPU only, not on '{}'; use --backend ort --device {}",
                self.device, self.device
            )));
        }
        Ok((kind, options))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_come_from_the_file_folder_and_defaults_fill_in() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("recur.toml");
        std::fs::write(
            &path,
            "version = \"v1\"\n[serve]\nmodel = \"models/m.onnx\"\nhttp = \"0.0.0.0:9\"\n",
        )
        .unwrap();
        let c = ServeConfig::read(&path).unwrap();
        assert_eq!(c.model, dir.path().join("models/m.onnx"));
        assert_eq!(c.backend, "tract");
        assert_eq!(c.max_streams, 1024);
        assert_eq!(c.http.as_deref(), Some("0.0.0.0:9"));
        std::fs::write(&path, "[serve]\nmodel = \"m.onnx\"\nmax_stream = 3\n").unwrap();
        let e = ServeConfig::read(&path).unwrap_err().to_string();
        assert!(e.contains("recur.toml") && e.contains("max_stream"), "{e}");
    }
}
