//! `recur deploy --bundle DIR`: everything one release needs on a device, in one folder.
//!
//! ```text
//! DIR/bin/recur          the recur binary for the device (the aarch64 cross build for Jetson)
//! DIR/bin/supervise      a plain start/stop script for devices without systemd
//! DIR/models/NAME.onnx   the model
//! DIR/recur.toml         [serve]: what `recur serve --config` runs; [deploy]: where it lives
//! DIR/recur.service      the systemd unit (ONNX Runtime found through ORT_DYLIB_PATH)
//! ```
//!
//! The bundle's version (`[serve] version`) names its release directory on the device, and
//! `/health` reports it, so that a deploy knows the new release is the one answering.

use std::hash::Hasher;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{RecurError, Result};
use crate::serve::ServeConfig;

/// Where JetPack's onnxruntime-gpu usually puts its library (the Python wheel's copy); the
/// unit's `ORT_DYLIB_PATH` points here unless `--device-ort-lib` says otherwise.
pub const JETPACK_ORT_LIB: &str =
    "/usr/local/lib/python3.10/dist-packages/onnxruntime/capi/libonnxruntime.so.1.31.1";

/// The supervisor script for devices without systemd (see [`super`]).
pub const SUPERVISE_SH: &str = include_str!("supervise.sh");

/// The `[deploy]` table of a bundle's recur.toml.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DeployTable {
    /// The folder on the device that holds `releases/` and the `current` link.
    pub root: PathBuf,
    /// The systemd unit's name.
    pub unit: String,
    /// The ONNX Runtime library the unit loads (`ORT_DYLIB_PATH`), for the ort backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ort_lib: Option<PathBuf>,
}

/// A bundle's recur.toml.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BundleConfig {
    /// What the service runs (paths relative to the bundle).
    pub serve: ServeConfig,
    /// Where the release goes on the device.
    pub deploy: DeployTable,
}

impl BundleConfig {
    /// Reads `BUNDLE/recur.toml` as written (paths left relative).
    pub fn read(bundle: &Path) -> Result<Self> {
        let path = bundle.join("recur.toml");
        let text = std::fs::read_to_string(&path).map_err(|e| RecurError::file(&path, e))?;
        toml::from_str(&text).map_err(|e| RecurError::file(&path, e))
    }

    /// The release version (the `[serve] version`).
    pub fn version(&self) -> Result<&str> {
        self.serve
            .version
            .as_deref()
            .filter(|v| is_safe_name(v))
            .ok_or_else(|| {
                RecurError::Usage(
                    "recur.toml: [serve] version is missing or not a plain name ([A-Za-z0-9._-])"
                        .into(),
                )
            })
    }
}

/// What goes into a bundle.
#[derive(Debug, Clone)]
pub struct BundleSpec {
    /// The folder to write (created; must not exist or be empty).
    pub out: PathBuf,
    /// The recur binary for the device.
    pub binary: PathBuf,
    /// The model to serve.
    pub model: PathBuf,
    /// The service settings (its `model` is replaced by the bundled copy).
    pub serve: ServeConfig,
    /// Where the release lives on the device, the unit name and the ORT library.
    pub deploy: DeployTable,
    /// The release version; by default the time and a hash of the contents.
    pub version: Option<String>,
}

/// A name that is safe as one path component and in a shell word.
pub fn is_safe_name(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// Writes the bundle; returns its version.
pub fn write(spec: &BundleSpec) -> Result<String> {
    let out = &spec.out;
    if out.exists()
        && std::fs::read_dir(out)
            .map_err(|e| RecurError::file(out, e))?
            .next()
            .is_some()
    {
        return Err(RecurError::file(out, "exists and is not empty"));
    }
    let binary = std::fs::read(&spec.binary).map_err(|e| RecurError::file(&spec.binary, e))?;
    let model = std::fs::read(&spec.model).map_err(|e| RecurError::file(&spec.model, e))?;
    let model_name = spec
        .model
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| is_safe_name(n))
        .ok_or_else(|| RecurError::file(&spec.model, "file name must be [A-Za-z0-9._-]"))?;
    let version = match &spec.version {
        Some(v) if is_safe_name(v) => v.clone(),
        Some(v) => {
            return Err(RecurError::Usage(format!(
                "--version '{v}': use letters, digits, '.', '_' and '-'"
            )))
        }
        None => default_version(&[&binary, &model]),
    };
    for p in [out.join("bin"), out.join("models")] {
        std::fs::create_dir_all(&p).map_err(|e| RecurError::file(&p, e))?;
    }
    let write = |rel: &str, bytes: &[u8], mode: u32| -> Result<()> {
        let path = out.join(rel);
        std::fs::write(&path, bytes).map_err(|e| RecurError::file(&path, e))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| RecurError::file(&path, e))
    };
    write("bin/recur", &binary, 0o755)?;
    write("bin/supervise", SUPERVISE_SH.as_bytes(), 0o755)?;
    write(&format!("models/{model_name}"), &model, 0o644)?;
    let mut serve = spec.serve.clone();
    serve.model = PathBuf::from("models").join(model_name);
    serve.version = Some(version.clone());
    serve.ort_lib = None; // the unit gives ORT_DYLIB_PATH
    let config = BundleConfig {
        serve,
        deploy: spec.deploy.clone(),
    };
    let toml = toml::to_string(&config)
        .map_err(|e| RecurError::Usage(format!("cannot write recur.toml: {e}")))?;
    write(
        "recur.toml",
        format!("# recur release {version}: `recur serve --config recur.toml` runs this.\n{toml}")
            .as_bytes(),
        0o644,
    )?;
    write("recur.service", unit(&config, &version).as_bytes(), 0o644)?;
    Ok(version)
}

/// The systemd unit: runs the `current` release, reloads on `systemctl reload` (SIGHUP),
/// drains on stop (SIGTERM), restarts on failure.
pub fn unit(config: &BundleConfig, version: &str) -> String {
    let root = config.deploy.root.display();
    let ort = config
        .deploy
        .ort_lib
        .as_deref()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(JETPACK_ORT_LIB));
    format!(
        "[Unit]
Description=recur streaming service (release {version})
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
ExecStart={root}/current/bin/recur serve --config {root}/current/recur.toml
ExecReload=/bin/kill -HUP $MAINPID
# ONNX Runtime for --backend ort: JetPack's onnxruntime-gpu (CUDA), loaded at run time.
Environment=ORT_DYLIB_PATH={ort}
Environment=RECUR_LOG=info
KillSignal=SIGTERM
TimeoutStopSec=30
Restart=on-failure
RestartSec=2

[Install]
WantedBy=multi-user.target
",
        ort = ort.display()
    )
}

/// `v<unix seconds>-<8 hex digits of a hash of the contents>`: sorts by time, and two
/// bundles of different contents made in the same second still differ.
fn default_version(parts: &[&[u8]]) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for p in parts {
        h.write(p);
    }
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!("v{secs}-{:08x}", h.finish() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bundle_holds_binary_model_config_and_unit() {
        let dir = tempfile::tempdir().unwrap();
        let (bin, model) = (dir.path().join("recur"), dir.path().join("m.onnx"));
        std::fs::write(&bin, b"binary").unwrap();
        std::fs::write(&model, b"model").unwrap();
        let spec = BundleSpec {
            out: dir.path().join("b"),
            binary: bin,
            model: model.clone(),
            serve: ServeConfig::for_model(model),
            deploy: DeployTable {
                root: "/opt/recur".into(),
                unit: "recur".into(),
                ort_lib: None,
            },
            version: Some("r1".into()),
        };
        assert_eq!(write(&spec).unwrap(), "r1");
        let b = dir.path().join("b");
        assert_eq!(std::fs::read(b.join("bin/recur")).unwrap(), b"binary");
        assert_eq!(std::fs::read(b.join("models/m.onnx")).unwrap(), b"model");
        let config = BundleConfig::read(&b).unwrap();
        assert_eq!(config.version().unwrap(), "r1");
        assert_eq!(config.serve.model, PathBuf::from("models/m.onnx"));
        let unit = std::fs::read_to_string(b.join("recur.service")).unwrap();
        assert!(unit.contains(
            "ExecStart=/opt/recur/current/bin/recur serve --config /opt/recur/current/recur.toml"
        ));
        assert!(unit.contains(&format!("Environment=ORT_DYLIB_PATH={JETPACK_ORT_LIB}")));
        // The service reads the same file, paths from the bundle.
        let served = ServeConfig::read(&b.join("recur.toml")).unwrap();
        assert_eq!(served.model, b.join("models/m.onnx"));
        // Not over an existing bundle.
        assert!(write(&spec).unwrap_err().to_string().contains("not empty"));
    }
}
