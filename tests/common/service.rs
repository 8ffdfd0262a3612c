//! Shared by the serve and deploy tests: a `recur serve` child process (killed on drop), a
//! JSON-lines client with time limits, and the per-step reference of a streamed recording.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use ndarray::{s, ArrayD, Axis, IxDyn};
use recur::backend::{BackendKind, BackendOptions};
use recur::model::Model;
use recur::serve::protocol::Reply;
use recur::stream::Session;
use recur::tensor::HostTensor;

/// The longest any test waits for one reply or one start.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// A running `recur serve`, killed when dropped.
pub struct Server {
    pub child: Child,
    pub listen: SocketAddr,
    pub http: SocketAddr,
}

impl Server {
    /// Starts `recur serve ARGS --listen 127.0.0.1:0 --http 127.0.0.1:0` and waits for the
    /// line that says where it listens.
    pub fn start(args: &[&str]) -> Server {
        // RECUR_SERVE_BIN: another build of recur to serve (e.g. a release build, to measure).
        let bin = std::env::var_os("RECUR_SERVE_BIN")
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_recur").into());
        let mut child = Command::new(bin)
            .arg("serve")
            .args(args)
            .args(["--listen", "127.0.0.1:0", "--http", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("recur serve starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let line = match rx.recv_timeout(PATIENCE) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                panic!("recur serve did not say where it listens within {PATIENCE:?}");
            }
        };
        // "recur serve: MODEL on ADDR, http on ADDR"
        let listen = line
            .split(" on ")
            .nth(1)
            .unwrap()
            .split(',')
            .next()
            .unwrap();
        let http = line.rsplit(" on ").next().unwrap();
        Server {
            listen: listen.trim().parse().unwrap_or_else(|_| panic!("{line}")),
            http: http.trim().parse().unwrap_or_else(|_| panic!("{line}")),
            child,
        }
    }

    /// `GET path` on the HTTP endpoint: status and body.
    pub fn get(&self, path: &str) -> (u16, String) {
        recur::deploy::health::get(&format!("http://{}{path}", self.http), PATIENCE).unwrap()
    }

    /// Sends a signal to the service.
    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{name}");
    }

    /// Waits for the service to exit; its status code.
    pub fn wait_exit(&mut self) -> Option<i32> {
        let deadline = std::time::Instant::now() + PATIENCE;
        while std::time::Instant::now() < deadline {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("recur serve did not exit within {PATIENCE:?}");
    }

    /// Peak resident memory of the service, in KiB (VmHWM).
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A JSON-lines connection to `recur serve`.
pub struct Client {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let s = TcpStream::connect_timeout(&addr, PATIENCE).expect("connects");
        s.set_read_timeout(Some(PATIENCE)).unwrap();
        s.set_nodelay(true).unwrap();
        Client {
            writer: s.try_clone().unwrap(),
            reader: BufReader::new(s),
        }
    }

    /// Sends one raw line.
    pub fn send_line(&mut self, line: &str) {
        self.writer.write_all(line.as_bytes()).unwrap();
        self.writer.write_all(b"\n").unwrap();
    }

    /// Sends one sample of a stream.
    pub fn send_sample(&mut self, stream: &str, x: &[f32]) {
        let line = serde_json::json!({"stream": stream, "x": x}).to_string();
        self.send_line(&line);
    }

    /// Reads one reply.
    pub fn recv(&mut self) -> Reply {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .expect("a reply within the limit");
        assert!(n > 0, "the service closed the connection");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line}: {e}"))
    }

    /// Sends a sample and waits for its reply.
    pub fn step(&mut self, stream: &str, x: &[f32]) -> Reply {
        self.send_sample(stream, x);
        self.recv()
    }

    pub fn shutdown_write(&self) {
        self.writer.shutdown(std::net::Shutdown::Write).unwrap();
    }
}

/// The first output's values in a step reply (panics on an error reply, showing it).
pub fn first_output(reply: &Reply) -> Vec<f32> {
    let outs = reply
        .outputs
        .as_ref()
        .unwrap_or_else(|| panic!("not a step reply: {reply:?}"));
    outs[0].data.clone()
}

/// Recording `row` of a batch-first [N, T, F] input, one sample per step.
pub fn recording(x: &ArrayD<f32>, row: usize) -> Vec<Vec<f32>> {
    x.index_axis(Axis(0), row)
        .outer_iter()
        .map(|step| step.iter().copied().collect())
        .collect()
}

/// The first output after every step of `samples`, fed one step at a time through a
/// streaming session in this process (what `recur run --stream --chunk 1` computes).
pub fn per_step_reference(model: &Path, samples: &[Vec<f32>]) -> Vec<Vec<f32>> {
    let model = Model::load(model).unwrap();
    let mut session = Session::new(&model, BackendKind::Tract, &BackendOptions::default()).unwrap();
    let (input, _) = session.sequence_input();
    let input = input.to_string();
    samples
        .iter()
        .map(|x| {
            let t = ArrayD::from_shape_vec(IxDyn(&[1, 1, x.len()]), x.clone()).unwrap();
            let out = session
                .feed(&[(input.clone(), HostTensor::F32(t))])
                .unwrap();
            out[0].1.to_f32().iter().copied().collect()
        })
        .collect()
}

/// `recur run MODEL --input X --stream --out DIR` through the binary; the first output.
pub fn run_stream_binary(model: &Path, input: &Path) -> ArrayD<f32> {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_recur"))
        .arg("run")
        .arg(model)
        .arg("--input")
        .arg(input)
        .args(["--stream", "--out"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let file = std::fs::read_dir(dir.path())
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    recur::tensor::read_npy(&file).unwrap().to_f32()
}

/// Row `row` of a [N, O] output.
pub fn row(a: &ArrayD<f32>, row: usize) -> Vec<f32> {
    a.slice(s![row, ..]).iter().copied().collect()
}

/// Largest absolute difference; panics when the lengths differ.
pub fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}
