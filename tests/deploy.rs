//! `recur deploy` against a real device stand-in: an OpenSSH server started by the test on a
//! loopback port (its own host key, key authentication only), with the aarch64 cross build of
//! recur running under qemu-user through the bundle's plain supervisor. A good release goes
//! live and serves the streaming session's outputs; a release with a broken model fails its
//! health check and is rolled back, and the old release keeps serving; the next good release
//! replaces it. `--dry-run` touches nothing.
//!
//! Needs (scripts/cross-aarch64.sh installs and builds them): sshd, ssh, ssh-keygen,
//! qemu-aarch64, the aarch64 libc under /usr/aarch64-linux-gnu, and the aarch64 recur at
//! `<target>/aarch64-unknown-linux-gnu/<profile>/recur` (or `RECUR_AARCH64_BIN`).

mod common;
#[path = "common/service.rs"]
mod service;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::repo_root;
use recur::tensor::read_npy;
use service::{first_output, max_diff, per_step_reference, recording, row, Client};

/// The aarch64 recur: RECUR_AARCH64_BIN, or the cross build beside this test's target dir.
fn aarch64_recur() -> PathBuf {
    if let Some(p) = std::env::var_os("RECUR_AARCH64_BIN") {
        return PathBuf::from(p);
    }
    // .../target/debug/deps/deploy-HASH -> .../target
    let exe = std::env::current_exe().unwrap();
    let target = exe.ancestors().nth(3).unwrap().to_path_buf();
    let profile = exe
        .ancestors()
        .nth(2)
        .unwrap()
        .file_name()
        .unwrap()
        .to_owned();
    for p in [profile.to_str().unwrap(), "release", "debug"] {
        let bin = target
            .join("aarch64-unknown-linux-gnu")
            .join(p)
            .join("recur");
        if bin.is_file() {
            return bin;
        }
    }
    panic!(
        "no aarch64 recur under {}/aarch64-unknown-linux-gnu: run scripts/cross-aarch64.sh (scripts/test.sh does)",
        target.display()
    );
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An sshd on a loopback port, configured and keyed inside a temporary folder; killed on drop.
struct Sshd {
    child: Child,
    port: u16,
    client_key: PathBuf,
    known_hosts: PathBuf,
}

impl Sshd {
    fn start(dir: &Path) -> Sshd {
        let keygen = |path: &Path| {
            let ok = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(path)
                .status()
                .expect("ssh-keygen runs")
                .success();
            assert!(ok, "ssh-keygen");
        };
        let (host_key, client_key) = (dir.join("host_ed25519"), dir.join("client_ed25519"));
        keygen(&host_key);
        keygen(&client_key);
        let authorized = dir.join("authorized_keys");
        std::fs::copy(dir.join("client_ed25519.pub"), &authorized).unwrap();
        let port = free_port();
        let config = dir.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nAuthorizedKeysFile {}\n\
                 PidFile {}\nPubkeyAuthentication yes\nPasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n\
                 StrictModes no\nUsePAM no\nPrintMotd no\n",
                host_key.display(),
                authorized.display(),
                dir.join("sshd.pid").display()
            ),
        )
        .unwrap();
        // sshd's privilege-separation folder.
        std::fs::create_dir_all("/run/sshd").unwrap();
        let child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("sshd.log")).unwrap())
            .spawn()
            .expect("sshd starts (apt-get install openssh-server)");
        let sshd = Sshd {
            child,
            port,
            client_key,
            known_hosts: dir.join("known_hosts"),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            assert!(Instant::now() < deadline, "sshd did not listen on {port}");
            std::thread::sleep(Duration::from_millis(100));
        }
        sshd
    }

    /// The ssh arguments of `recur deploy` for this server.
    fn args(&self) -> Vec<String> {
        vec![
            "--host".into(),
            format!("{}@127.0.0.1", whoami()),
            "--port".into(),
            self.port.to_string(),
            "--ssh-key".into(),
            self.client_key.display().to_string(),
            "--ssh-option".into(),
            "StrictHostKeyChecking=no".into(),
            "--ssh-option".into(),
            format!("UserKnownHostsFile={}", self.known_hosts.display()),
        ]
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn whoami() -> String {
    let out = Command::new("id").arg("-un").output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Stops the service on the device stand-in when the test ends, however it ends.
struct Device {
    root: PathBuf,
}

impl Drop for Device {
    fn drop(&mut self) {
        let script = self.root.join("current/bin/supervise");
        if script.exists() {
            let _ = Command::new("timeout")
                .args(["30", "sh"])
                .arg(&script)
                .arg(&self.root)
                .arg("stop")
                .status();
        }
    }
}

/// Runs recur (the host build) under a time limit.
fn recur(args: &[String]) -> Output {
    let out = Command::new("timeout")
        .arg("600")
        .arg(env!("CARGO_BIN_EXE_recur"))
        .args(args)
        .output()
        .unwrap();
    println!(
        "$ recur {}\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn bundle(
    binary: &Path,
    out: &Path,
    model: &Path,
    release: &str,
    root: &Path,
    listen: u16,
    http: u16,
) -> Vec<String> {
    vec![
        "deploy".into(),
        "--bundle".into(),
        out.display().to_string(),
        "--model".into(),
        model.display().to_string(),
        "--binary".into(),
        binary.display().to_string(),
        "--release".into(),
        release.into(),
        "--root".into(),
        root.display().to_string(),
        "--listen".into(),
        format!("127.0.0.1:{listen}"),
        "--http".into(),
        format!("127.0.0.1:{http}"),
    ]
}

/// The service's `/health` answer.
fn health(http: u16) -> serde_json::Value {
    let (_, body) = recur::deploy::health::get(
        &format!("http://127.0.0.1:{http}/health"),
        Duration::from_secs(10),
    )
    .unwrap();
    serde_json::from_str(&body).unwrap()
}

fn current(root: &Path) -> String {
    std::fs::read_link(root.join("current"))
        .unwrap()
        .display()
        .to_string()
}

/// Streams recording `rec` to the device; the last reply's output must equal the streaming
/// session's (and, at the end, the committed ONNX Runtime reference).
fn check_serving(listen: u16, id: &str, rec: usize) {
    let lstm = repo_root().join("models/real/basicmotions_lstm/model.onnx");
    let x = read_npy(&repo_root().join("models/real/basicmotions_lstm/in_0.npy"))
        .unwrap()
        .to_f32();
    let samples = recording(&x, rec);
    let reference = per_step_reference(&lstm, &samples);
    let ort = read_npy(&repo_root().join("models/real/basicmotions_lstm/out_0.npy"))
        .unwrap()
        .to_f32();
    let mut c = Client::connect(format!("127.0.0.1:{listen}").parse().unwrap());
    let mut last = Vec::new();
    for (t, s) in samples.iter().enumerate() {
        let r = c.step(id, s);
        assert_eq!(r.step, Some(t + 1), "{r:?}");
        last = first_output(&r);
        assert!(max_diff(&last, &reference[t]) <= 1e-5, "step {t}");
    }
    assert!(max_diff(&last, &row(&ort, rec)) <= 1e-4);
}

#[test]
fn deploy_serves_and_a_broken_release_is_rolled_back() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let sshd = Sshd::start(&dir.join("sshd").tap_create());
    let root = dir.join("device");
    std::fs::create_dir_all(&root).unwrap();
    // The device has no systemd and runs aarch64 binaries through qemu-user.
    std::fs::write(
        root.join("supervise.env"),
        "RECUR_LAUNCHER=\"qemu-aarch64 -L /usr/aarch64-linux-gnu\"\n",
    )
    .unwrap();
    let device = Device { root: root.clone() };
    let (listen, http) = (free_port(), free_port());
    let lstm = repo_root().join("models/real/basicmotions_lstm/model.onnx");
    let broken = dir.join("model.onnx");
    std::fs::write(&broken, b"\x0a\x03not an onnx model").unwrap();

    // Without its debug information (386 MB -> 29 MB for the debug build): less to copy.
    let binary = dir.join("recur-aarch64");
    let ok = Command::new("aarch64-linux-gnu-strip")
        .arg("-o")
        .arg(&binary)
        .arg(aarch64_recur())
        .status()
        .expect("aarch64-linux-gnu-strip runs (binutils-aarch64-linux-gnu)")
        .success();
    assert!(ok, "aarch64-linux-gnu-strip");
    let good = dir.join("bundle-r1");
    assert!(
        recur(&bundle(&binary, &good, &lstm, "r1", &root, listen, http))
            .status
            .success()
    );
    let bad = dir.join("bundle-r2");
    assert!(
        recur(&bundle(&binary, &bad, &broken, "r2", &root, listen, http))
            .status
            .success()
    );
    let ship = |b: &Path, extra: &[&str]| {
        let mut args: Vec<String> = vec!["deploy".into(), b.display().to_string()];
        args.extend(sshd.args());
        args.extend(
            ["--service-manager", "supervisor", "--health-timeout", "120"]
                .iter()
                .chain(extra)
                .map(|s| s.to_string()),
        );
        recur(&args)
    };

    // The plan, and nothing done.
    let out = ship(&good, &["--dry-run"]);
    assert!(out.status.success());
    let plan = String::from_utf8_lossy(&out.stdout);
    assert!(
        plan.contains("mv -T") && plan.contains("supervise"),
        "{plan}"
    );
    assert!(!root.join("releases").exists());

    // The good release goes live and serves.
    let out = ship(&good, &[]);
    assert!(out.status.success(), "deploy r1 failed");
    assert_eq!(current(&root), "releases/r1");
    check_serving(listen, "imu-1", 1);

    // The broken release fails its health check; r1 is current and serving again.
    let out = ship(&bad, &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("rolled back to releases/r1"), "{err}");
    assert!(root.join("releases/r2/models/model.onnx").exists());
    assert_eq!(current(&root), "releases/r1");
    assert_eq!(health(http)["version"], "r1");
    check_serving(listen, "imu-2", 2);
    // The broken release's own log says why it did not start.
    let log = std::fs::read_to_string(root.join("run/recur.log")).unwrap();
    assert!(log.contains("not a valid ONNX model"), "{log}");

    // A good release after that: r1 is stopped (it drains), r3 answers.
    let next = dir.join("bundle-r3");
    assert!(
        recur(&bundle(&binary, &next, &lstm, "r3", &root, listen, http))
            .status
            .success()
    );
    let out = ship(&next, &["--keep", "1"]);
    assert!(out.status.success(), "deploy r3 failed");
    assert_eq!(current(&root), "releases/r3");
    // --keep 1: the failed r2 is removed; r1, the previous release, stays.
    let mut kept: Vec<String> = std::fs::read_dir(root.join("releases"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    kept.sort();
    assert_eq!(kept, ["r1", "r3"]);
    assert_eq!(health(http)["version"], "r3");
    check_serving(listen, "imu-3", 3);
    let log = std::fs::read_to_string(root.join("run/recur.log")).unwrap();
    assert!(log.contains("recur serve: drained, stopped"), "{log}");
    drop(device);
}

/// Creates a folder and gives it back.
trait TapCreate {
    fn tap_create(self) -> PathBuf;
}

impl TapCreate for PathBuf {
    fn tap_create(self) -> PathBuf {
        std::fs::create_dir_all(&self).unwrap();
        self
    }
}

#[test]
fn bad_deploy_usage_is_exit_2_with_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let not_a_bundle = tmp.path().join("empty");
    std::fs::create_dir_all(&not_a_bundle).unwrap();
    let b = not_a_bundle.display().to_string();
    let cases: [(Vec<String>, &str); 3] = [
        (vec!["deploy".into(), b.clone()], "--host"),
        (
            vec![
                "deploy".into(),
                b.clone(),
                "--host".into(),
                "root@127.0.0.1".into(),
            ],
            "recur.toml",
        ),
        (
            vec![
                "deploy".into(),
                "--bundle".into(),
                tmp.path().join("out").display().to_string(),
                "--model".into(),
                "missing.onnx".into(),
                "--binary".into(),
                env!("CARGO_BIN_EXE_recur").into(),
            ],
            "missing.onnx",
        ),
    ];
    for (args, names) in cases {
        let out = recur(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(names) && err.lines().count() == 1, "{err}");
    }
}
