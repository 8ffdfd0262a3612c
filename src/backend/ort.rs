//! The ONNX Runtime backend (`--backend ort`): CPU or CUDA, through the `ort` crate with its
//! `load-dynamic` feature, so recur builds and runs without the library and loads it at run
//! time.
//!
//! The library is looked for, in order, at `--ort-lib PATH` ([`BackendOptions::ort_lib`]),
//! at `ORT_DYLIB_PATH`, and at the copy `scripts/fetch-ort.sh` unpacks:
//! `<dir of the executable>/libonnxruntime.so.1.31.1`, `<dir of the executable>/.ort/…`, then
//! `<source checkout the binary was built from>/.ort/libonnxruntime.so.1.31.1`. The first two
//! are taken as given (a path that is not there is an error, not a reason to look further).
//! A missing library, or one older than ONNX Runtime 1.31 (the API `ort` 2.0.0-rc.15 needs),
//! is one error naming the places looked in. One library is loaded per process.
//!
//! Recurrent nodes with `layout=1`, which ONNX Runtime refuses, are rewritten to `layout=0`
//! with Transposes ([`crate::onnx::relayout`]) before the session is built. A user who asks
//! for CUDA gets CUDA or an error with the provider's reason, never the CPU silently.

use std::borrow::Cow;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use ort::environment::Environment;
use ort::logging::LogLevel;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::{Session, SessionInputValue};
use ort::value::{DynValue, Tensor, TensorElementType};
use prost::Message;

use super::{Backend, BackendOptions, Device, OptLevel};
use crate::error::{one_line, panic_message, RecurError, Result};
use crate::model::Model;
use crate::tensor::{CheckedInputs, HostTensor};

/// The ONNX Runtime version recur is built and tested against.
pub const ORT_VERSION: &str = "1.31.1";

/// The newest ONNX IR version ONNX Runtime 1.31 reads (onnx >= 1.23 writes 14 by default).
pub const MAX_IR_VERSION: i64 = 13;

/// The library file name the fetch script unpacks.
pub const ORT_LIB_NAME: &str = "libonnxruntime.so.1.31.1";

/// The loaded library and the process's one ONNX Runtime environment.
struct Runtime {
    library: PathBuf,
    environment: Environment,
}

static RUNTIME: OnceLock<Runtime> = OnceLock::new();
static LOADING: Mutex<()> = Mutex::new(());

/// The places recur looks for the library when neither `--ort-lib` nor `ORT_DYLIB_PATH` names
/// one, in order.
pub fn default_library_candidates() -> Vec<PathBuf> {
    let mut places = Vec::new();
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        places.push(dir.join(ORT_LIB_NAME));
        places.push(dir.join(".ort").join(ORT_LIB_NAME));
    }
    places.push(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(".ort")
            .join(ORT_LIB_NAME),
    );
    places
}

/// Decides which library file to load: `explicit` (from `--ort-lib`), else `ORT_DYLIB_PATH`,
/// else the first default candidate that exists. The error names every place looked in.
pub fn locate_library(explicit: Option<&Path>) -> Result<PathBuf> {
    let env = std::env::var_os("ORT_DYLIB_PATH").filter(|v| !v.is_empty());
    let (given, origin) = match (explicit, &env) {
        (Some(p), _) => (Some(p.to_path_buf()), "--ort-lib"),
        (None, Some(v)) => (Some(PathBuf::from(v)), "ORT_DYLIB_PATH"),
        (None, None) => (None, ""),
    };
    if let Some(path) = given {
        if path.is_file() {
            return Ok(absolute(&path));
        }
        return Err(RecurError::Usage(format!(
            "ONNX Runtime library not found: {origin} names {}, which is not a file",
            path.display()
        )));
    }
    let candidates = default_library_candidates();
    if let Some(found) = candidates.iter().find(|p| p.is_file()) {
        return Ok(found.clone());
    }
    let looked: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
    Err(RecurError::Usage(format!(
        "ONNX Runtime library not found: no --ort-lib, ORT_DYLIB_PATH unset, and no {ORT_LIB_NAME} in {}; run scripts/fetch-ort.sh or point ORT_DYLIB_PATH at an ONNX Runtime >= 1.31 library",
        looked.join(", ")
    )))
}

fn absolute(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

/// Loads ONNX Runtime (once per process) and returns the path it was loaded from. Asking for
/// a different library after one is loaded is an error.
pub fn load_runtime(explicit: Option<&Path>) -> Result<PathBuf> {
    Ok(runtime(explicit)?.library.clone())
}

fn runtime(explicit: Option<&Path>) -> Result<&'static Runtime> {
    let _guard = LOADING.lock().unwrap_or_else(|e| e.into_inner());
    let wanted = locate_library(explicit);
    if let Some(rt) = RUNTIME.get() {
        return match wanted {
            Ok(path) if path != rt.library && explicit.is_some() => {
                Err(RecurError::Usage(format!(
                    "ONNX Runtime is already loaded from {} in this process; cannot also load {}",
                    rt.library.display(),
                    path.display()
                )))
            }
            _ => Ok(rt),
        };
    }
    let library = wanted?;
    let failed = |reason: String| {
        RecurError::Usage(format!(
            "cannot load ONNX Runtime from {}: {}",
            library.display(),
            one_line(&reason)
        ))
    };
    let built = catch_unwind(AssertUnwindSafe(|| {
        let builder = ort::init_from(&library).map_err(|e| e.to_string())?;
        let environment = builder
            .with_name("recur")
            .with_telemetry(false)
            .with_logger(Arc::new(forward_log))
            .build()
            .map_err(|e| e.to_string())?;
        // Warnings and up reach the logger (ORT_LOG=info or verbose asks for more).
        environment.set_log_level(match std::env::var("ORT_LOG").as_deref() {
            Ok("verbose") => LogLevel::Verbose,
            Ok("info") => LogLevel::Info,
            _ => LogLevel::Warning,
        });
        Ok(environment)
    }))
    .map_err(|p| failed(panic_message(p)))?
    .map_err(failed)?;
    Ok(RUNTIME.get_or_init(|| Runtime {
        library,
        environment: built,
    }))
}

/// ONNX Runtime's own log messages, into recur's log (target `onnxruntime`). A failed run
/// comes back to recur as an error, which recur reports in its one line, so ONNX Runtime's
/// errors and warnings are debug messages (`RECUR_LOG=onnxruntime=debug` shows them) rather
/// than a second, differently formatted line on stderr. Only a fatal one is an error here.
fn forward_log(level: LogLevel, category: &str, _id: &str, location: &str, message: &str) {
    match level {
        LogLevel::Fatal => {
            tracing::error!(target: "onnxruntime", "{category}: {message} ({location})")
        }
        LogLevel::Error | LogLevel::Warning => {
            tracing::debug!(target: "onnxruntime", "{category}: {message} ({location})")
        }
        LogLevel::Info | LogLevel::Verbose => {
            tracing::trace!(target: "onnxruntime", "{category}: {message} ({location})")
        }
    }
}

/// ONNX Runtime running one model on the CPU or a CUDA device.
pub struct OrtBackend {
    path: PathBuf,
    device: Device,
    session: Session,
    input_names: Vec<String>,
    output_names: Vec<String>,
}

/// The recurrent nodes of `ir` that ONNX Runtime's CUDA provider leaves to its CPU provider
/// inside a CUDA session, each with the variant cuDNN's recurrent layers lack: a GRU with
/// `linear_before_reset=0`, `clip`, activations other than the defaults, an LSTM's
/// `input_forget` or peepholes. This is what a run of every fixture on an H200 showed
/// (ONNX Runtime 1.31.1: those nodes ran at the CPU's speed and gave the CPU's exact bits;
/// `docs/gpu/h200-2026-12-04.txt`), so that `--device cuda` says so rather than run them
/// on the CPU in silence.
pub fn cuda_leaves_to_cpu(ir: &crate::ir::RecurrentModel) -> Vec<(String, &'static str)> {
    use crate::ir::Cell;
    ir.recurrent_layers()
        .filter(|(_, r)| r.keras_loop.is_none())
        .filter_map(|(layer, r)| {
            let defaults = r.cell.default_activations();
            let why = match &r.cell {
                Cell::Gru {
                    linear_before_reset: false,
                } => Some("GRU with linear_before_reset=0"),
                Cell::Lstm {
                    input_forget: true, ..
                } => Some("input_forget"),
                Cell::Lstm {
                    peepholes: true, ..
                } => Some("peepholes"),
                _ if r.clip.is_some() => Some("clip"),
                _ if r.activations.iter().any(|a| *a != defaults) => {
                    Some("activations other than the defaults")
                }
                _ => None,
            };
            why.map(|why| (layer.node.clone(), why))
        })
        .collect()
}

impl OrtBackend {
    /// Loads the library (first use only), rewrites `layout=1` recurrent nodes, and builds a
    /// session on the requested device with the requested options.
    pub fn new(model: &Model, options: &BackendOptions) -> Result<Self> {
        if model.proto.ir_version > MAX_IR_VERSION {
            return Err(RecurError::Usage(format!(
                "{}: ONNX IR version {} is newer than ONNX Runtime {ORT_VERSION} reads (at most {MAX_IR_VERSION}); re-export it with an older IR version (onnx: model.ir_version = 10)",
                model.path.display(),
                model.proto.ir_version
            )));
        }
        let rt = runtime(options.ort_lib.as_deref())?;
        let mut proto = model.proto.clone();
        crate::onnx::relayout::relayout_to_sequence_first(&mut proto);
        let bytes = proto.encode_to_vec();
        let path = model.path.clone();
        let engine = |e: String| RecurError::Engine {
            backend: "ort".into(),
            path: path.clone(),
            message: one_line(&e),
        };

        let level = match options.ort_opt_level {
            OptLevel::Disable => GraphOptimizationLevel::Disable,
            OptLevel::Basic => GraphOptimizationLevel::Level1,
            OptLevel::Extended => GraphOptimizationLevel::Level2,
            OptLevel::All => GraphOptimizationLevel::All,
        };
        let mut builder = Session::builder(&rt.environment)
            .map_err(|e| engine(e.to_string()))?
            .with_optimization_level(level)
            .map_err(|e| engine(e.to_string()))?;
        if let Some(n) = options.ort_threads {
            builder = builder
                .with_intra_threads(n)
                .map_err(|e| engine(e.to_string()))?;
        }
        if let Device::Cuda(id) = options.device {
            // error_on_failure: a user who asked for CUDA gets it or an error, never the CPU.
            // CUDA graphs are not offered: ONNX Runtime replays them on the buffers bound at
            // capture, which needs IO binding with fixed device buffers (not done yet).
            // TF32 is set either way: ONNX Runtime's default is on, which is not f32.
            let cuda = ort::ep::CUDA::default()
                .with_device_id(id as i32)
                .with_tf32(options.cuda_tf32)
                .build()
                .error_on_failure();
            builder = builder.with_execution_providers([cuda]).map_err(|e| {
                RecurError::Usage(format!(
                    "--device {}: ONNX Runtime's CUDA execution provider is not available ({}): {}",
                    options.device,
                    rt.library.display(),
                    one_line(&e.to_string())
                ))
            })?;
        }
        let session = builder
            .commit_from_memory(&bytes)
            .map_err(|e| engine(e.to_string()))?;
        let input_names = session
            .inputs()
            .iter()
            .map(|o| o.name().to_string())
            .collect();
        let output_names = session
            .outputs()
            .iter()
            .map(|o| o.name().to_string())
            .collect();
        if let Device::Cuda(_) = options.device {
            for (node, why) in cuda_leaves_to_cpu(&model.ir) {
                tracing::warn!(
                "{}: node '{node}' runs on ONNX Runtime's CPU provider, not on {}: its CUDA provider has no {why}",
                model.path.display(),
                options.device
            );
            }
        }
        Ok(OrtBackend {
            path: model.path.clone(),
            device: options.device,
            session,
            input_names,
            output_names,
        })
    }

    /// The library this process loaded ONNX Runtime from.
    pub fn library(&self) -> PathBuf {
        RUNTIME.get().map(|r| r.library.clone()).unwrap_or_default()
    }

    /// Runs with IO binding: `inputs` come from the host, `kept_in` are values a previous run
    /// left on the session's device (bound as they are, no copy through the host). Outputs in
    /// `kept_out` stay on the device (CUDA memory with `--device cuda`) and come back as
    /// values to bind to a later run; every other output comes back to the host, in graph
    /// order. Streaming sessions carry the recurrent state this way.
    #[allow(clippy::type_complexity)]
    pub fn run_bound(
        &mut self,
        inputs: &CheckedInputs,
        kept_in: &[(&str, &DynValue)],
        kept_out: &[String],
    ) -> Result<(Vec<(String, HostTensor)>, Vec<DynValue>)> {
        use ort::memory::{AllocationDevice, AllocatorType, MemoryInfo, MemoryType};
        let path = self.path.clone();
        let engine = |m: String| RecurError::Engine {
            backend: "ort".into(),
            path: path.clone(),
            message: one_line(&m),
        };
        let host = MemoryInfo::new(
            AllocationDevice::CPU,
            0,
            AllocatorType::Device,
            MemoryType::Default,
        )
        .map_err(|e| engine(e.to_string()))?;
        let device = match self.device {
            Device::Cpu => None,
            Device::Cuda(id) => Some(
                MemoryInfo::new(
                    AllocationDevice::CUDA,
                    id as i32,
                    AllocatorType::Device,
                    MemoryType::Default,
                )
                .map_err(|e| engine(e.to_string()))?,
            ),
        };
        let mut binding = self
            .session
            .create_binding()
            .map_err(|e| engine(e.to_string()))?;
        for name in &self.input_names {
            if let Some((_, value)) = kept_in.iter().find(|(n, _)| *n == name) {
                binding
                    .bind_input(name.clone(), *value)
                    .map_err(|e| engine(e.to_string()))?;
                continue;
            }
            let (_, tensor) = inputs
                .tensors
                .iter()
                .find(|(n, _)| n == name)
                .ok_or_else(|| RecurError::input(name, "not given"))?;
            let value = to_value(tensor).map_err(|e| engine(e.to_string()))?;
            binding
                .bind_input(name.clone(), &value)
                .map_err(|e| engine(e.to_string()))?;
        }
        for name in &self.output_names {
            let place = match &device {
                Some(d) if kept_out.contains(name) => d,
                _ => &host,
            };
            binding
                .bind_output_to_device(name.clone(), place)
                .map_err(|e| engine(e.to_string()))?;
        }
        let mut outputs = self
            .session
            .run_binding(&binding)
            .map_err(|e| engine(e.to_string()))?;
        let mut host_out = Vec::new();
        for name in &self.output_names {
            if kept_out.contains(name) {
                continue;
            }
            let value = outputs
                .get(name)
                .ok_or_else(|| engine(format!("no output '{name}'")))?;
            host_out.push((name.clone(), to_host(value).map_err(&engine)?));
        }
        let kept = kept_out
            .iter()
            .map(|name| {
                outputs
                    .remove(name)
                    .ok_or_else(|| engine(format!("no output '{name}'")))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((host_out, kept))
    }

    fn engine_error(&self, e: impl std::fmt::Display) -> RecurError {
        RecurError::Engine {
            backend: "ort".into(),
            path: self.path.clone(),
            message: one_line(&e.to_string()),
        }
    }
}

/// A host tensor as an ONNX Runtime value (copied into memory ORT owns).
pub fn to_value(tensor: &HostTensor) -> ort::Result<DynValue> {
    Ok(match tensor {
        HostTensor::F32(a) => Tensor::from_array(a.as_standard_layout().into_owned())?.into_dyn(),
        HostTensor::I64(a) => Tensor::from_array(a.as_standard_layout().into_owned())?.into_dyn(),
        HostTensor::I32(a) => Tensor::from_array(a.as_standard_layout().into_owned())?.into_dyn(),
    })
}

fn to_host(value: &DynValue) -> std::result::Result<HostTensor, String> {
    let dtype = value.dtype().tensor_type();
    let err = |e: ort::Error| e.to_string();
    Ok(match dtype {
        Some(TensorElementType::Float32) => {
            HostTensor::F32(value.try_extract_array::<f32>().map_err(err)?.to_owned())
        }
        Some(TensorElementType::Int64) => {
            HostTensor::I64(value.try_extract_array::<i64>().map_err(err)?.to_owned())
        }
        Some(TensorElementType::Int32) => {
            HostTensor::I32(value.try_extract_array::<i32>().map_err(err)?.to_owned())
        }
        other => return Err(format!("output element type {other:?} is not supported")),
    })
}

impl Backend for OrtBackend {
    fn name(&self) -> &'static str {
        "ort"
    }

    fn run(&mut self, inputs: &CheckedInputs) -> Result<Vec<(String, HostTensor)>> {
        let mut feeds: Vec<(Cow<'_, str>, SessionInputValue<'_>)> =
            Vec::with_capacity(self.input_names.len());
        for name in &self.input_names {
            let (_, tensor) = inputs
                .tensors
                .iter()
                .find(|(n, _)| n == name)
                .ok_or_else(|| RecurError::input(name, "not given"))?;
            let value = to_value(tensor).map_err(|e| self.engine_error(e))?;
            feeds.push((Cow::Owned(name.clone()), value.into()));
        }
        let path = self.path.clone();
        let engine = |m: String| RecurError::Engine {
            backend: "ort".into(),
            path: path.clone(),
            message: one_line(&m),
        };
        let outputs = self.session.run(feeds).map_err(|e| engine(e.to_string()))?;
        self.output_names
            .iter()
            .map(|name| {
                let value = outputs
                    .get(name)
                    .ok_or_else(|| engine(format!("no output '{name}'")))?;
                Ok((name.clone(), to_host(value).map_err(&engine)?))
            })
            .collect()
    }
}
