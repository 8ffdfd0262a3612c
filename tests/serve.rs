//! `recur serve` through the binary on loopback: each stream's outputs equal the streaming
//! session's step by step and, after a whole recording, `recur run --stream` and the committed
//! ONNX Runtime reference; bad requests get one error reply and harm nothing; the stream
//! limit, idle expiry, health, metrics, reload (bad model refused, good one swapped in) and
//! the SIGTERM drain. And the load test: N concurrent streams x M samples.

mod common;
#[path = "common/service.rs"]
mod service;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::repo_root;
use recur::tensor::read_npy;
use service::{
    first_output, max_diff, per_step_reference, recording, row, run_stream_binary, Client, Server,
};

const TOLERANCE: f32 = 1e-5;

fn lstm() -> PathBuf {
    repo_root().join("models/real/basicmotions_lstm/model.onnx")
}

fn lstm_input() -> PathBuf {
    repo_root().join("models/real/basicmotions_lstm/in_0.npy")
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("{name} not in metrics:\n{text}"))
        .parse()
        .unwrap()
}

#[test]
fn a_stream_gives_the_streaming_session_outputs_and_bad_requests_harm_nothing() {
    let x = read_npy(&lstm_input()).unwrap().to_f32();
    let samples = recording(&x, 3);
    let reference = per_step_reference(&lstm(), &samples);
    let whole = run_stream_binary(&lstm(), &lstm_input());
    let ort = read_npy(&repo_root().join("models/real/basicmotions_lstm/out_0.npy"))
        .unwrap()
        .to_f32();
    let server = Server::start(&["--model", lstm().to_str().unwrap()]);
    let mut c = Client::connect(server.listen);
    let mut last = Vec::new();
    for (t, x) in samples.iter().enumerate() {
        if t == 10 {
            // A short sample, a line that is not JSON, and a request with two commands: one
            // error reply each, naming the stream where there is one.
            let r = c.step("imu-3", &x[..4]);
            let e = r.error.expect("an error reply");
            assert_eq!(r.stream.as_deref(), Some("imu-3"));
            assert!(e.contains("6 values") && e.contains("got 4"), "{e}");
            c.send_line("this is not json");
            let r = c.recv();
            assert!(r.error.unwrap().starts_with("bad request"));
            c.send_line(r#"{"stream":"imu-3","x":[1,2,3,4,5,6],"reset":true}"#);
            let r = c.recv();
            assert_eq!(r.stream.as_deref(), Some("imu-3"));
            assert!(r.error.unwrap().contains("exactly one"));
            // A NaN cannot be written in JSON; a value beyond f32 becomes infinity: refused.
            c.send_line(r#"{"stream":"imu-3","x":[1e39,0,0,0,0,0]}"#);
            let r = c.recv();
            assert!(r.error.is_some(), "{r:?}");
            // Another stream on the same connection works meanwhile.
            let other = c.step("imu-other", &samples[0]);
            assert!(max_diff(&first_output(&other), &reference[0]) <= TOLERANCE);
        }
        let r = c.step("imu-3", x);
        assert_eq!(r.step, Some(t + 1), "{r:?}");
        let got = first_output(&r);
        let d = max_diff(&got, &reference[t]);
        assert!(
            d <= TOLERANCE,
            "step {t}: {got:?} vs {:?} ({d})",
            reference[t]
        );
        last = got;
    }
    assert!(
        max_diff(&last, &row(&whole, 3)) <= TOLERANCE,
        "vs recur run --stream"
    );
    assert!(
        max_diff(&last, &row(&ort, 3)) <= 1e-4,
        "vs ONNX Runtime's reference"
    );

    // reset starts afresh; end drops the stream.
    c.send_line(r#"{"stream":"imu-3","reset":true}"#);
    assert_eq!(c.recv().ok, Some(true));
    let r = c.step("imu-3", &samples[0]);
    assert_eq!(r.step, Some(1));
    assert!(max_diff(&first_output(&r), &reference[0]) <= TOLERANCE);

    let (status, body) = server.get("/health");
    assert_eq!(status, 200, "{body}");
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["active_streams"], 2);
    let (status, text) = server.get("/metrics");
    assert_eq!(status, 200);
    // 100 + 1 + 1 good steps, a reset; 4 refused.
    assert_eq!(metric(&text, "recur_requests_total{result=\"ok\"}"), 103.0);
    assert_eq!(metric(&text, "recur_requests_total{result=\"error\"}"), 4.0);
    assert_eq!(metric(&text, "recur_request_latency_seconds_count"), 107.0);
    assert_eq!(metric(&text, "recur_active_streams"), 2.0);
    assert_eq!(server.get("/nothing").0, 404);
}

#[test]
fn streams_are_bounded_and_idle_ones_expire() {
    let x = read_npy(&lstm_input()).unwrap().to_f32();
    let samples = recording(&x, 0);
    let reference = per_step_reference(&lstm(), &samples[..2]);
    let server = Server::start(&[
        "--model",
        lstm().to_str().unwrap(),
        "--max-streams",
        "2",
        "--idle-timeout",
        "0.5",
    ]);
    let mut c = Client::connect(server.listen);
    assert!(c.step("a", &samples[0]).error.is_none());
    // Connections are bounded by the same number: a third one is told why and closed.
    let mut second = Client::connect(server.listen);
    assert!(second.step("b", &samples[0]).error.is_none());
    let mut third = Client::connect(server.listen);
    let r = third.recv();
    assert!(
        r.error
            .as_deref()
            .unwrap_or("")
            .contains("too many connections"),
        "{r:?}"
    );
    drop((second, third));
    assert!(c.step("b", &samples[1]).error.is_none());
    let r = c.step("c", &samples[0]);
    assert!(r.error.unwrap().contains("too many streams"));
    c.send_line(r#"{"stream":"b","end":true}"#);
    assert_eq!(c.recv().ok, Some(true));
    assert!(c.step("c", &samples[0]).error.is_none());
    // "a" goes on where it was.
    let r = c.step("a", &samples[1]);
    assert_eq!(r.step, Some(2));
    assert!(max_diff(&first_output(&r), &reference[1]) <= TOLERANCE);
    // Unused for well past the idle timeout, both streams are gone: "a" starts afresh.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = server.get("/metrics").1;
        if metric(&text, "recur_active_streams") == 0.0 {
            assert_eq!(metric(&text, "recur_expired_streams_total"), 2.0);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "idle streams never expired:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let r = c.step("a", &samples[0]);
    assert_eq!(r.step, Some(1));
    assert!(max_diff(&first_output(&r), &reference[0]) <= TOLERANCE);
}

fn copy(from: &Path, to: &Path) {
    std::fs::copy(from, to).unwrap();
}

#[test]
fn a_bad_model_on_reload_leaves_the_old_one_serving_and_a_good_one_is_swapped_in() {
    let dir = tempfile::tempdir().unwrap();
    let served = dir.path().join("model.onnx");
    copy(&lstm(), &served);
    let x = read_npy(&lstm_input()).unwrap().to_f32();
    let samples = recording(&x, 5);
    let reference = per_step_reference(&lstm(), &samples[..3]);
    let gru = repo_root().join("models/real/basicmotions_gru/model.onnx");
    let gru_reference = per_step_reference(&gru, &samples[..1]);

    let server = Server::start(&["--model", served.to_str().unwrap()]);
    let mut c = Client::connect(server.listen);
    assert!(max_diff(&first_output(&c.step("s", &samples[0])), &reference[0]) <= TOLERANCE);

    // Not ONNX: refused over HTTP, reported by /health, the old model and state go on.
    std::fs::write(&served, b"not a model").unwrap();
    let (status, body) = post(&server, "/reload");
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("model.onnx"), "{body}");
    let health: serde_json::Value = serde_json::from_str(&server.get("/health").1).unwrap();
    assert!(health["last_reload_error"]
        .as_str()
        .unwrap()
        .contains("model.onnx"));
    assert_eq!(health["generation"], 1);
    let r = c.step("s", &samples[1]);
    assert_eq!(r.step, Some(2));
    assert!(max_diff(&first_output(&r), &reference[1]) <= TOLERANCE);

    // A model that takes samples of another size (1 value, not 6) is refused.
    copy(
        &repo_root().join("models/real/gru_forecaster/model.onnx"),
        &served,
    );
    server.signal("HUP");
    wait_for(&server, "recur_reloads_total{result=\"error\"}", 2.0);
    let health: serde_json::Value = serde_json::from_str(&server.get("/health").1).unwrap();
    let why = health["last_reload_error"].as_str().unwrap();
    assert!(
        why.contains("shape [1, 1, 1]") && why.contains("[1, 1, 6]"),
        "{why}"
    );
    let r = c.step("s", &samples[2]);
    assert_eq!(r.step, Some(3));
    assert!(max_diff(&first_output(&r), &reference[2]) <= TOLERANCE);

    // A good model (the GRU on the same sensors), by SIGHUP: swapped in, streams start afresh.
    copy(&gru, &served);
    server.signal("HUP");
    wait_for(&server, "recur_model_generation", 2.0);
    let r = c.step("s", &samples[0]);
    assert_eq!(r.step, Some(1));
    assert!(max_diff(&first_output(&r), &gru_reference[0]) <= TOLERANCE);
    let health: serde_json::Value = serde_json::from_str(&server.get("/health").1).unwrap();
    assert!(health["last_reload_error"].is_null());
}

fn post(server: &Server, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(server.http).unwrap();
    s.set_read_timeout(Some(service::PATIENCE)).unwrap();
    write!(s, "POST {path} HTTP/1.0\r\nContent-Length: 0\r\n\r\n").unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    (
        head.split_whitespace().nth(1).unwrap().parse().unwrap(),
        body.to_string(),
    )
}

fn wait_for(server: &Server, name: &str, value: f64) {
    let deadline = Instant::now() + service::PATIENCE;
    loop {
        let text = server.get("/metrics").1;
        if metric(&text, name) == value {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} never reached {value}:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn sigterm_answers_every_request_already_sent_then_exits_0() {
    let x = read_npy(&lstm_input()).unwrap().to_f32();
    let samples = recording(&x, 7);
    let reference = per_step_reference(&lstm(), &samples);
    let mut server = Server::start(&["--model", lstm().to_str().unwrap()]);
    let mut c = Client::connect(server.listen);
    // Make sure the connection is being served, then pipeline every sample and stop it.
    assert!(c.step("s", &samples[0]).error.is_none());
    for x in &samples[1..] {
        c.send_sample("s", x);
    }
    std::thread::sleep(Duration::from_millis(300));
    server.signal("TERM");
    for (t, want) in reference.iter().enumerate().skip(1) {
        let r = c.recv();
        assert_eq!(r.step, Some(t + 1));
        assert!(max_diff(&first_output(&r), want) <= TOLERANCE);
    }
    assert_eq!(server.wait_exit(), Some(0));
}

#[test]
fn a_model_that_cannot_serve_is_exit_2_naming_the_file() {
    // `recur serve` on a model it must refuse: exit 2, and its stderr.
    let refused = |model: &std::path::Path| -> String {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_recur"))
            .args(["serve", "--model", model.to_str().unwrap()])
            .args(["--listen", "127.0.0.1:0"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("broken.onnx");
    std::fs::write(&bad, b"\x08\x07garbage").unwrap();
    let err = refused(&bad);
    assert!(
        err.contains("broken.onnx") && err.lines().count() == 1,
        "{err}"
    );
    // Two inputs: the samples alone cannot feed it.
    let err = refused(&repo_root().join("models/real/lstm_state_io/model.onnx"));
    assert!(err.contains("lstm_state_io"), "{err}");
}

/// The load test: STREAMS concurrent connections, one stream each, SAMPLES samples per stream
/// (two recordings, with a reset between), each sample sent when the previous reply came.
/// Every reply is checked (none lost, none out of order, outputs equal the streaming session
/// step by step, and `recur run --stream` at the end of each recording); the figures are
/// printed for docs/PERFORMANCE.md.
#[test]
fn load_test_concurrent_streams() {
    const STREAMS: usize = 16;
    const STEPS: usize = 100; // one recording
    let x = read_npy(&lstm_input()).unwrap().to_f32();
    let whole = run_stream_binary(&lstm(), &lstm_input());
    let rows: Vec<[usize; 2]> = (0..STREAMS).map(|i| [i, i + STREAMS]).collect();
    let references: Vec<Vec<Vec<Vec<f32>>>> = rows
        .iter()
        .map(|r| {
            r.iter()
                .map(|&row| per_step_reference(&lstm(), &recording(&x, row)))
                .collect()
        })
        .collect();
    let server = Server::start(&["--model", lstm().to_str().unwrap()]);
    let started = Instant::now();
    let handles: Vec<_> = rows
        .iter()
        .cloned()
        .zip(references)
        .map(|(pair, refs)| {
            let x = x.clone();
            let whole = whole.clone();
            let addr = server.listen;
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                let id = format!("sensor-{}", pair[0]);
                let mut latencies = Vec::with_capacity(2 * STEPS);
                for (k, &rec) in pair.iter().enumerate() {
                    if k > 0 {
                        c.send_line(&format!(r#"{{"stream":"{id}","reset":true}}"#));
                        assert_eq!(c.recv().ok, Some(true));
                    }
                    let mut last = Vec::new();
                    for (t, sample) in recording(&x, rec).iter().enumerate() {
                        let sent = Instant::now();
                        let r = c.step(&id, sample);
                        latencies.push(sent.elapsed());
                        assert_eq!(r.stream.as_deref(), Some(id.as_str()));
                        assert_eq!(r.step, Some(t + 1), "{id}: lost or reordered: {r:?}");
                        last = first_output(&r);
                        let d = max_diff(&last, &refs[k][t]);
                        assert!(d <= TOLERANCE, "{id} recording {rec} step {t}: {d}");
                    }
                    let d = max_diff(&last, &row(&whole, rec));
                    assert!(
                        d <= TOLERANCE,
                        "{id} recording {rec} vs recur run --stream: {d}"
                    );
                }
                latencies
            })
        })
        .collect();
    let mut latencies: Vec<Duration> = handles
        .into_iter()
        .flat_map(|h| h.join().expect("a stream thread passed"))
        .collect();
    let elapsed = started.elapsed();
    assert_eq!(latencies.len(), STREAMS * 2 * STEPS);
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    let text = server.get("/metrics").1;
    assert_eq!(
        metric(&text, "recur_requests_total{result=\"ok\"}"),
        (STREAMS * (2 * STEPS + 1)) as f64
    );
    assert_eq!(metric(&text, "recur_requests_total{result=\"error\"}"), 0.0);
    println!(
        "load test: {STREAMS} streams x {} samples = {} samples in {:.2} s: {:.0} samples/s; latency p50 {:.0} us, p99 {:.0} us; server peak RSS {} MiB",
        2 * STEPS,
        latencies.len(),
        elapsed.as_secs_f64(),
        latencies.len() as f64 / elapsed.as_secs_f64(),
        pct(0.50).as_secs_f64() * 1e6,
        pct(0.99).as_secs_f64() * 1e6,
        server.peak_rss_kib() / 1024
    );
}

/// The same service on ONNX Runtime (CPU provider here; `--device cuda` on a Jetson): the
/// carried state stays in ONNX Runtime values between steps, owned by the model worker.
#[test]
fn the_ort_backend_serves_the_same_outputs() {
    let x = read_npy(&lstm_input()).unwrap().to_f32();
    let samples = recording(&x, 11);
    let reference = per_step_reference(&lstm(), &samples);
    let ort = read_npy(&repo_root().join("models/real/basicmotions_lstm/out_0.npy"))
        .unwrap()
        .to_f32();
    let server = Server::start(&["--model", lstm().to_str().unwrap(), "--backend", "ort"]);
    let health: serde_json::Value = serde_json::from_str(&server.get("/health").1).unwrap();
    assert_eq!(health["backend"], "ort");
    let mut c = Client::connect(server.listen);
    let mut last = Vec::new();
    for (t, s) in samples.iter().enumerate() {
        let r = c.step("imu-11", s);
        assert_eq!(r.step, Some(t + 1), "{r:?}");
        last = first_output(&r);
        let d = max_diff(&last, &reference[t]);
        assert!(d <= TOLERANCE, "step {t}: {d}");
    }
    assert!(max_diff(&last, &row(&ort, 11)) <= 1e-4);
}
