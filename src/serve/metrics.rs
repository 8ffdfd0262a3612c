//! The service's counters and their Prometheus text: requests by result, the latency
//! histogram, active streams and connections, reloads. Atomics only, so every connection
//! thread and the model worker update them without a lock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the latency histogram's buckets, in seconds (receipt of a request to its
/// reply being queued for the client: waiting for the model included).
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0,
];

/// What `GET /metrics` reports.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Requests answered with outputs (or an acknowledgement).
    pub requests_ok: AtomicU64,
    /// Requests answered with an error reply.
    pub requests_error: AtomicU64,
    /// Requests per latency bucket (not cumulative; the last one is above every bound).
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    /// Sum of all latencies, in nanoseconds.
    latency_sum_ns: AtomicU64,
    /// Streams holding state now.
    pub active_streams: AtomicU64,
    /// Streams dropped because they were idle for longer than the idle timeout.
    pub expired_streams: AtomicU64,
    /// Client connections open now.
    pub connections: AtomicU64,
    /// Reloads that swapped in a new model.
    pub reloads_ok: AtomicU64,
    /// Reloads refused (the old model kept serving).
    pub reloads_error: AtomicU64,
    /// The model generation serving now (1 for the model the service started with).
    pub generation: AtomicU64,
}

impl Metrics {
    /// Records one answered request and how long it took.
    pub fn observe(&self, ok: bool, latency: Duration) {
        if ok {
            self.requests_ok.fetch_add(1, Ordering::Relaxed);
        } else {
            self.requests_error.fetch_add(1, Ordering::Relaxed);
        }
        let secs = latency.as_secs_f64();
        let i = LATENCY_BUCKETS
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.latency_sum_ns.fetch_add(
            u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// The Prometheus text exposition of every counter.
    pub fn render(&self) -> String {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut s = String::new();
        s.push_str("# HELP recur_requests_total Requests answered, by result.\n");
        s.push_str("# TYPE recur_requests_total counter\n");
        s.push_str(&format!(
            "recur_requests_total{{result=\"ok\"}} {}\n",
            get(&self.requests_ok)
        ));
        s.push_str(&format!(
            "recur_requests_total{{result=\"error\"}} {}\n",
            get(&self.requests_error)
        ));
        s.push_str(
            "# HELP recur_request_latency_seconds From receipt of a request to its reply.\n",
        );
        s.push_str("# TYPE recur_request_latency_seconds histogram\n");
        let mut cumulative = 0;
        for (bound, bucket) in LATENCY_BUCKETS.iter().zip(&self.buckets) {
            cumulative += get(bucket);
            s.push_str(&format!(
                "recur_request_latency_seconds_bucket{{le=\"{bound}\"}} {cumulative}\n"
            ));
        }
        cumulative += get(&self.buckets[LATENCY_BUCKETS.len()]);
        s.push_str(&format!(
            "recur_request_latency_seconds_bucket{{le=\"+Inf\"}} {cumulative}\n"
        ));
        s.push_str(&format!(
            "recur_request_latency_seconds_sum {}\n",
            get(&self.latency_sum_ns) as f64 / 1e9
        ));
        s.push_str(&format!(
            "recur_request_latency_seconds_count {cumulative}\n"
        ));
        for (name, help, kind, value) in [
            (
                "recur_active_streams",
                "Streams holding recurrent state.",
                "gauge",
                &self.active_streams,
            ),
            (
                "recur_expired_streams_total",
                "Streams dropped after the idle timeout.",
                "counter",
                &self.expired_streams,
            ),
            (
                "recur_connections",
                "Client connections open.",
                "gauge",
                &self.connections,
            ),
            (
                "recur_model_generation",
                "Model generation serving (1 = the first).",
                "gauge",
                &self.generation,
            ),
        ] {
            s.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}\n",
                get(value)
            ));
        }
        s.push_str("# HELP recur_reloads_total Model reloads, by result.\n");
        s.push_str("# TYPE recur_reloads_total counter\n");
        s.push_str(&format!(
            "recur_reloads_total{{result=\"ok\"}} {}\n",
            get(&self.reloads_ok)
        ));
        s.push_str(&format!(
            "recur_reloads_total{{result=\"error\"}} {}\n",
            get(&self.reloads_error)
        ));
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative_and_counts_every_request() {
        let m = Metrics::default();
        m.observe(true, Duration::from_micros(30));
        m.observe(true, Duration::from_micros(700));
        m.observe(false, Duration::from_secs(3));
        let text = m.render();
        assert!(text.contains("recur_request_latency_seconds_bucket{le=\"0.00005\"} 1\n"));
        assert!(text.contains("recur_request_latency_seconds_bucket{le=\"0.001\"} 2\n"));
        assert!(text.contains("recur_request_latency_seconds_bucket{le=\"1\"} 2\n"));
        assert!(text.contains("recur_request_latency_seconds_bucket{le=\"+Inf\"} 3\n"));
        assert!(text.contains("recur_requests_total{result=\"ok\"} 2\n"));
        assert!(text.contains("recur_requests_total{result=\"error\"} 1\n"));
        assert!(text.contains("recur_request_latency_seconds_count 3\n"));
    }
}
