//! The HTTP side of `recur serve` (tiny_http): `GET /health` (JSON; 200 when the model worker
//! is alive, 503 otherwise), `GET /metrics` (Prometheus text) and `POST /reload` (200 when the
//! new model serves, 422 with the reason when it was refused and the old one still serves).

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::Shared;

/// Answers HTTP requests until the service drains.
pub fn run(server: tiny_http::Server, shared: &Shared) {
    while !shared.shutdown.load(Ordering::SeqCst) {
        let request = match server.recv_timeout(Duration::from_millis(100)) {
            Ok(Some(r)) => r,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!("http: {e}");
                continue;
            }
        };
        let (status, content_type, body) = answer(request.method(), request.url(), shared);
        let header =
            tiny_http::Header::from_bytes("Content-Type", content_type).expect("a valid header");
        let response = tiny_http::Response::from_string(body)
            .with_status_code(status)
            .with_header(header);
        // A client that went away misses its answer; nothing else to do.
        let _ = request.respond(response);
    }
}

fn answer(method: &tiny_http::Method, url: &str, shared: &Shared) -> (u16, &'static str, String) {
    use tiny_http::Method::{Get, Post};
    const JSON: &str = "application/json";
    match (method, url) {
        (Get, "/health") => {
            let alive = shared.worker_alive();
            let last_error = shared
                .last_reload_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            let body = serde_json::json!({
                "status": if alive { "ok" } else { "stalled" },
                "version": shared.config.version,
                "model": shared.config.model,
                "backend": shared.config.backend,
                "device": shared.config.device,
                "generation": shared.metrics.generation.load(Ordering::Relaxed),
                "active_streams": shared.metrics.active_streams.load(Ordering::Relaxed),
                "uptime_s": shared.epoch.elapsed().as_secs_f64(),
                "last_reload_error": last_error,
            });
            (if alive { 200 } else { 503 }, JSON, body.to_string())
        }
        (Get, "/metrics") => (
            200,
            "text/plain; version=0.0.4",
            shared.metrics.render(),
        ),
        (Post, "/reload") => match shared.reload() {
            Ok(()) => (
                200,
                JSON,
                serde_json::json!({"reloaded": true, "model": shared.config.model}).to_string(),
            ),
            Err(e) => (
                422,
                JSON,
                serde_json::json!({"reloaded": false, "error": crate::error::one_line(&e.to_string())})
                    .to_string(),
            ),
        },
        _ => (404, "text/plain", "not found: GET /health, GET /metrics, POST /reload\n".into()),
    }
}
