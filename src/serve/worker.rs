//! The model worker: one thread owns the built model (a [`StreamModel`], both of its engines)
//! and every stream's carried state, and answers jobs in the order they arrive. Connection
//! threads only parse and write lines; per stream the service holds nothing but its
//! [`StreamState`]. One worker runs one step at a time, which is what a small CPU or one GPU
//! does anyway, and keeps each connection's replies in order without any locking.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ndarray::{ArrayD, IxDyn};

use super::metrics::Metrics;
use super::protocol::{Command, Output, Reply};
use crate::backend::{BackendKind, BackendOptions};
use crate::error::{RecurError, Result};
use crate::ir::{Dim, ElemType};
use crate::model::Model;
use crate::stream::{Session, StreamModel, StreamState};
use crate::tensor::HostTensor;

/// Steps of the probe sequence a model must stream correctly before it serves.
const PROBE_STEPS: usize = 4;

/// A model built, validated and ready to serve.
pub struct Loaded {
    /// The shared engines.
    pub model: StreamModel,
    /// The model file.
    pub path: PathBuf,
    /// The sequence input's name.
    pub input: String,
    /// The shape of one sample (batch 1, one time step).
    pub sample_shape: Vec<usize>,
}

impl Loaded {
    /// Values in one sample.
    pub fn sample_len(&self) -> usize {
        self.sample_shape.iter().product()
    }
}

/// Loads `path`, builds it for streaming on the chosen backend and runs a probe sequence
/// through it (streamed one step at a time against the whole probe run). Anything wrong is an
/// error naming the file, input or node; nothing is swapped in on an error.
pub fn load(path: &Path, kind: BackendKind, options: &BackendOptions) -> Result<Loaded> {
    let model = Model::load(path)?;
    let mut session = Session::new(&model, kind, options)?;
    let (input, time_axis) = session.sequence_input();
    let input = input.to_string();
    let declared = model
        .ir
        .inputs
        .iter()
        .find(|i| i.name == input)
        .ok_or_else(|| {
            RecurError::file(
                path,
                format!("sequence input '{input}' is not a graph input"),
            )
        })?;
    if model.ir.inputs.len() != 1 {
        let names: Vec<&str> = model.ir.inputs.iter().map(|i| i.name.as_str()).collect();
        return Err(RecurError::file(
            path,
            format!(
                "recur serve takes models with one input (the samples); this one has {}: {}",
                names.len(),
                names.join(", ")
            ),
        ));
    }
    if declared.elem_type != ElemType::F32 {
        return Err(RecurError::input(
            &input,
            format!(
                "recur serve feeds float32 samples; this input is {}",
                declared.elem_type.numpy_name()
            ),
        ));
    }
    let dims = declared.dims.as_ref().ok_or_else(|| {
        RecurError::input(
            &input,
            "declares no shape, so the size of a sample is unknown",
        )
    })?;
    // One step of one sequence: the time axis and every non-fixed (batch) axis are 1.
    let sample_shape: Vec<usize> = dims
        .iter()
        .enumerate()
        .map(|(i, d)| match d {
            Dim::Fixed(n) if i != time_axis => *n,
            _ => 1,
        })
        .collect();
    // The probe: PROBE_STEPS steps of a fixed, varied signal.
    let mut probe_shape = sample_shape.clone();
    probe_shape[time_axis] = PROBE_STEPS;
    let n: usize = probe_shape.iter().product();
    let values: Vec<f32> = (0..n).map(|i| ((i as f32) * 0.37).sin()).collect();
    let probe = ArrayD::from_shape_vec(IxDyn(&probe_shape), values)
        .expect("probe shape matches its values");
    session
        .check_streaming(&[(input.clone(), HostTensor::F32(probe))])
        .map_err(|e| match e {
            RecurError::Usage(m) => RecurError::file(path, m),
            other => other,
        })?;
    Ok(Loaded {
        model: session.into_model(),
        path: path.to_path_buf(),
        input,
        sample_shape,
    })
}

/// Work for the model worker.
pub enum Job {
    /// A request from a client; the reply goes to `reply`.
    Request {
        /// The stream id.
        stream: String,
        /// What to do.
        command: Command,
        /// When the connection read it (for the latency histogram).
        received: Instant,
        /// The connection's reply queue.
        reply: Sender<String>,
    },
    /// Serve this newly validated model from now on (every stream starts afresh).
    Swap(Box<Loaded>),
    /// Finish: every job queued before this one has been answered.
    Shutdown,
}

/// One stream's state and when it was last used.
struct Entry {
    state: StreamState,
    last_used: Instant,
}

/// Limits the worker enforces.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Streams that may hold state at once.
    pub max_streams: usize,
    /// A stream unused for this long is dropped.
    pub idle_timeout: Duration,
}

/// Runs the worker until it gets [`Job::Shutdown`] or every sender is gone. `heartbeat` is
/// set to the seconds since `epoch` at least every quarter second, for the health check.
pub fn run(
    mut loaded: Loaded,
    jobs: Receiver<Job>,
    limits: Limits,
    metrics: Arc<Metrics>,
    heartbeat: Arc<AtomicU64>,
    epoch: Instant,
) {
    let mut streams: HashMap<String, Entry> = HashMap::new();
    let mut last_sweep = Instant::now();
    loop {
        heartbeat.store(epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
        match jobs.recv_timeout(Duration::from_millis(250)) {
            Ok(Job::Request {
                stream,
                command,
                received,
                reply,
            }) => {
                let answer = handle(&mut loaded, &mut streams, limits, stream, command);
                metrics.observe(answer.error.is_none(), received.elapsed());
                metrics
                    .active_streams
                    .store(streams.len() as u64, Ordering::Relaxed);
                // A client that went away no longer reads its replies; nothing to do.
                let _ = reply.send(answer.to_line());
            }
            Ok(Job::Swap(new)) => {
                tracing::info!(
                    "serving {} (was {}); {} streams start afresh",
                    new.path.display(),
                    loaded.path.display(),
                    streams.len()
                );
                loaded = *new;
                streams.clear();
                metrics.active_streams.store(0, Ordering::Relaxed);
                metrics.generation.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Job::Shutdown) | Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => {}
        }
        if last_sweep.elapsed() >= Duration::from_millis(500) {
            last_sweep = Instant::now();
            let before = streams.len();
            streams.retain(|_, e| e.last_used.elapsed() < limits.idle_timeout);
            let expired = before - streams.len();
            if expired > 0 {
                metrics
                    .expired_streams
                    .fetch_add(expired as u64, Ordering::Relaxed);
                metrics
                    .active_streams
                    .store(streams.len() as u64, Ordering::Relaxed);
            }
        }
    }
}

/// Answers one request.
fn handle(
    loaded: &mut Loaded,
    streams: &mut HashMap<String, Entry>,
    limits: Limits,
    stream: String,
    command: Command,
) -> Reply {
    match command {
        Command::Refuse(reason) => Reply::error(Some(stream).filter(|s| !s.is_empty()), reason),
        Command::Reset => {
            if let Some(e) = streams.get_mut(&stream) {
                e.state.reset();
                e.last_used = Instant::now();
            }
            Reply::ok(stream)
        }
        Command::End => {
            streams.remove(&stream);
            Reply::ok(stream)
        }
        Command::Step(x) => {
            if x.len() != loaded.sample_len() {
                let reason = format!(
                    "a sample of input '{}' has {} values (shape {:?}); got {}",
                    loaded.input,
                    loaded.sample_len(),
                    loaded.sample_shape,
                    x.len()
                );
                return Reply::error(Some(stream), reason);
            }
            if !streams.contains_key(&stream) && streams.len() >= limits.max_streams {
                let reason = format!(
                    "too many streams: {} hold state (--max-streams); end one or wait for idle ones to expire",
                    streams.len()
                );
                return Reply::error(Some(stream), reason);
            }
            let tensor = HostTensor::F32(
                ArrayD::from_shape_vec(IxDyn(&loaded.sample_shape), x)
                    .expect("length checked above"),
            );
            let entry = streams.entry(stream.clone()).or_insert_with(|| Entry {
                state: StreamState::new(),
                last_used: Instant::now(),
            });
            entry.last_used = Instant::now();
            match loaded
                .model
                .feed(&mut entry.state, &[(loaded.input.clone(), tensor)])
            {
                Ok(outputs) => Reply {
                    step: Some(entry.state.steps_seen()),
                    outputs: Some(outputs.iter().map(|(n, t)| Output::of(n, t)).collect()),
                    stream: Some(stream),
                    ok: None,
                    error: None,
                },
                Err(e) => {
                    if entry.state.steps_seen() == 0 {
                        streams.remove(&stream);
                    }
                    Reply::error(Some(stream), crate::error::one_line(&e.to_string()))
                }
            }
        }
    }
}
