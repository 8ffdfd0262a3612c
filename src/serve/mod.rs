//! `recur serve`: a long-lived streaming service. Sensors stream samples in over TCP (JSON
//! lines, see [`protocol`]), one stream per sensor id; each stream keeps its own recurrent
//! state while one shared, built model ([`crate::stream::StreamModel`]) computes every step
//! ([`worker`]). Beside it, an HTTP endpoint answers `GET /health`, `GET /metrics`
//! (Prometheus text) and `POST /reload`; SIGHUP reloads too, SIGTERM (or SIGINT) drains and
//! exits 0.
//!
//! A reload re-reads the configured model path, builds it and streams a probe sequence
//! through it before it swaps it in; a model that fails any of that is reported and the old
//! one keeps serving.

pub mod config;
mod connection;
mod http;
pub mod metrics;
pub mod protocol;
pub mod worker;

use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use config::ServeConfig;
use metrics::Metrics;
use worker::{Job, Limits};

use crate::error::{RecurError, Result};

/// What the connection threads, the HTTP thread and the signal thread share.
pub(crate) struct Shared {
    /// The service's configuration.
    pub config: ServeConfig,
    /// Counters for `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Set when the service is to drain and stop.
    pub shutdown: AtomicBool,
    /// The worker's queue.
    pub jobs: Mutex<Sender<Job>>,
    /// Milliseconds since `epoch` at the worker's last beat.
    pub heartbeat: Arc<AtomicU64>,
    /// When the service started.
    pub epoch: Instant,
    /// Held while a reload builds its model, so reloads do not overlap.
    pub reloading: Mutex<()>,
    /// The last reload's error, if it failed.
    pub last_reload_error: Mutex<Option<String>>,
    /// The shape of one sample of the serving model: a reload must keep it, since the
    /// sensors send samples of this size.
    pub sample_shape: Vec<usize>,
}

impl Shared {
    /// Whether the worker has beaten in the last five seconds.
    pub fn worker_alive(&self) -> bool {
        let beat = self.heartbeat.load(Ordering::Relaxed);
        (self.epoch.elapsed().as_millis() as u64).saturating_sub(beat) < 5_000
    }

    /// Loads, builds and probes the configured model; swaps it in when all of that works.
    /// On an error the old model keeps serving and the error is returned (and remembered
    /// for `/health`).
    pub fn reload(&self) -> Result<()> {
        let _one_at_a_time = self.reloading.lock().unwrap_or_else(|e| e.into_inner());
        let (kind, options) = self.config.engine()?;
        let result = worker::load(&self.config.model, kind, &options).and_then(|loaded| {
            if loaded.sample_shape == self.sample_shape {
                Ok(loaded)
            } else {
                Err(RecurError::file(
                    &self.config.model,
                    format!(
                        "takes samples of shape {:?} on input '{}', the serving model {:?}; restart the service to change the sample shape",
                        loaded.sample_shape, loaded.input, self.sample_shape
                    ),
                ))
            }
        });
        let mut last = self
            .last_reload_error
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match result {
            Ok(loaded) => {
                self.jobs
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .send(Job::Swap(Box::new(loaded)))
                    .map_err(|_| RecurError::Usage("the model worker has stopped".into()))?;
                self.metrics.reloads_ok.fetch_add(1, Ordering::Relaxed);
                *last = None;
                tracing::warn!("reloaded {}", self.config.model.display());
                Ok(())
            }
            Err(e) => {
                self.metrics.reloads_error.fetch_add(1, Ordering::Relaxed);
                let line = crate::error::one_line(&e.to_string());
                tracing::error!("reload refused, the old model keeps serving: {line}");
                *last = Some(line);
                Err(e)
            }
        }
    }
}

/// Runs the service until SIGTERM or SIGINT, then drains: stops accepting, answers every
/// request already read, closes the connections and returns. `ready` is called once with the
/// addresses bound (samples, HTTP), which may differ from the configured ones when those ask
/// for port 0.
pub fn serve(
    config: ServeConfig,
    ready: impl FnOnce(std::net::SocketAddr, Option<std::net::SocketAddr>),
) -> Result<()> {
    let (kind, options) = config.engine()?;
    let loaded = worker::load(&config.model, kind, &options)?;
    let sample_shape = loaded.sample_shape.clone();
    let listener = TcpListener::bind(&config.listen)
        .map_err(|e| RecurError::Usage(format!("--listen {}: {e}", config.listen)))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| RecurError::Usage(format!("--listen {}: {e}", config.listen)))?;
    let http_server = match &config.http {
        Some(addr) => Some(
            tiny_http::Server::http(addr.as_str())
                .map_err(|e| RecurError::Usage(format!("--http {addr}: {e}")))?,
        ),
        None => None,
    };
    let listen_addr = listener
        .local_addr()
        .map_err(|e| RecurError::Usage(format!("--listen {}: {e}", config.listen)))?;
    let http_addr = http_server.as_ref().and_then(|s| s.server_addr().to_ip());

    let metrics = Arc::new(Metrics::default());
    metrics.generation.store(1, Ordering::Relaxed);
    let epoch = Instant::now();
    let heartbeat = Arc::new(AtomicU64::new(0));
    let (jobs_tx, jobs_rx) = mpsc::channel::<Job>();
    let limits = Limits {
        max_streams: config.max_streams,
        idle_timeout: Duration::from_secs_f64(config.idle_timeout_s),
    };
    let worker = {
        let (metrics, heartbeat) = (metrics.clone(), heartbeat.clone());
        std::thread::Builder::new()
            .name("recur-model".into())
            .spawn(move || worker::run(loaded, jobs_rx, limits, metrics, heartbeat, epoch))
            .map_err(|e| RecurError::Usage(format!("cannot start the model worker: {e}")))?
    };
    let shared = Arc::new(Shared {
        config,
        metrics,
        shutdown: AtomicBool::new(false),
        jobs: Mutex::new(jobs_tx),
        heartbeat,
        epoch,
        reloading: Mutex::new(()),
        last_reload_error: Mutex::new(None),
        sample_shape,
    });

    // Signals: TERM and INT drain and stop; HUP reloads.
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
    ])
    .map_err(|e| RecurError::Usage(format!("cannot install signal handlers: {e}")))?;
    let signal_handle = signals.handle();
    let signal_thread = {
        let shared = shared.clone();
        std::thread::spawn(move || {
            for signal in signals.forever() {
                if signal == signal_hook::consts::SIGHUP {
                    // The outcome is logged and counted; the service goes on either way.
                    let _ = shared.reload();
                } else {
                    tracing::warn!("signal {signal}: draining and stopping");
                    shared.shutdown.store(true, Ordering::SeqCst);
                }
            }
        })
    };
    let http_thread = http_server.map(|server| {
        let shared = shared.clone();
        std::thread::spawn(move || http::run(server, &shared))
    });

    ready(listen_addr, http_addr);

    let mut connections: Vec<JoinHandle<()>> = Vec::new();
    while !shared.shutdown.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((mut socket, peer)) => {
                connections.retain(|c| !c.is_finished());
                // Connections are bounded like streams: each costs two threads.
                if connections.len() >= shared.config.max_streams {
                    let reason = format!(
                        "too many connections: {} open (--max-streams); closing",
                        connections.len()
                    );
                    let line = protocol::Reply::error(None, reason).to_line();
                    let _ = std::io::Write::write_all(&mut socket, format!("{line}\n").as_bytes());
                    continue;
                }
                let shared = shared.clone();
                connections.push(std::thread::spawn(move || {
                    connection::run(socket, peer, &shared)
                }));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => tracing::warn!("accept: {e}"),
        }
    }
    // Drain: connections stop reading and wait for their replies; then the worker stops.
    drop(listener);
    for c in connections {
        let _ = c.join();
    }
    let _ = shared
        .jobs
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send(Job::Shutdown);
    let _ = worker.join();
    signal_handle.close();
    let _ = signal_thread.join();
    if let Some(h) = http_thread {
        let _ = h.join();
    }
    Ok(())
}
