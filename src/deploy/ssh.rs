//! Talking to the device with the system's OpenSSH client (`ssh`, key authentication, batch
//! mode: never a password prompt), every command under a time limit.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{RecurError, Result};

/// How to reach the device.
#[derive(Debug, Clone)]
pub struct Target {
    /// `user@host` (or just `host`).
    pub destination: String,
    /// The ssh port, when not 22.
    pub port: Option<u16>,
    /// The private key (`ssh -i`).
    pub key: Option<PathBuf>,
    /// More `ssh -o` options, e.g. `UserKnownHostsFile=...`.
    pub options: Vec<String>,
    /// The limit on any one command.
    pub timeout: Duration,
}

/// What a finished remote command gave.
#[derive(Debug)]
pub struct Output {
    /// Exit status (`None` when it was killed).
    pub status: Option<i32>,
    /// Its standard output.
    pub stdout: String,
    /// Its standard error.
    pub stderr: String,
}

impl Target {
    /// The host part of the destination.
    pub fn host(&self) -> &str {
        let host = self
            .destination
            .rsplit_once('@')
            .map_or(self.destination.as_str(), |(_, h)| h);
        host.trim_start_matches('[').trim_end_matches(']')
    }

    /// The `ssh ... destination -- command` line as a Command (not started).
    pub fn command(&self, remote: &str) -> Command {
        let mut c = Command::new("ssh");
        c.args(["-o", "BatchMode=yes", "-o", "ConnectTimeout=15"]);
        if let Some(p) = self.port {
            c.args(["-p", &p.to_string()]);
        }
        if let Some(k) = &self.key {
            c.arg("-i").arg(k);
            c.args(["-o", "IdentitiesOnly=yes"]);
        }
        for o in &self.options {
            c.args(["-o", o]);
        }
        c.arg(&self.destination).arg("--").arg(remote);
        c
    }

    /// The command line, for `--dry-run` and messages.
    pub fn describe(&self, remote: &str) -> String {
        let c = self.command(remote);
        let mut words = vec![c.get_program().to_string_lossy().into_owned()];
        words.extend(c.get_args().map(|a| shell_quote(&a.to_string_lossy())));
        words.join(" ")
    }

    /// Runs `remote` on the device; its output, or an error when ssh cannot be started or the
    /// command runs past the time limit.
    pub fn run(&self, remote: &str) -> Result<Output> {
        let child = self
            .command(remote)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| RecurError::Usage(format!("cannot run ssh: {e}")))?;
        wait(child, self.timeout, "ssh")
    }

    /// Runs `remote` on the device and fails (with its stderr) unless it exits 0.
    pub fn check(&self, remote: &str) -> Result<String> {
        let out = self.run(remote)?;
        if out.status == Some(0) {
            Ok(out.stdout)
        } else {
            Err(RecurError::Usage(format!(
                "on {}: `{remote}` failed ({}): {}",
                self.destination,
                out.status
                    .map_or("killed".to_string(), |s| format!("exit {s}")),
                crate::error::one_line(&out.stderr)
            )))
        }
    }

    /// Streams the contents of the local folder `dir` as a tar archive into `remote`'s
    /// standard input (which unpacks it).
    pub fn upload(&self, dir: &Path, remote: &str) -> Result<()> {
        let mut tar = Command::new("tar")
            .arg("-C")
            .arg(dir)
            .args(["-cf", "-", "."])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| RecurError::Usage(format!("cannot run tar: {e}")))?;
        let archive = tar.stdout.take().expect("piped");
        let ssh = self
            .command(remote)
            .stdin(Stdio::from(archive))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| RecurError::Usage(format!("cannot run ssh: {e}")))?;
        let out = wait(ssh, self.timeout, "ssh")?;
        let tar_out = wait(tar, self.timeout, "tar")?;
        if tar_out.status != Some(0) {
            return Err(RecurError::file(
                dir,
                format!("tar: {}", tar_out.stderr.trim()),
            ));
        }
        if out.status != Some(0) {
            return Err(RecurError::Usage(format!(
                "upload to {} failed: {}",
                self.destination,
                crate::error::one_line(&out.stderr)
            )));
        }
        Ok(())
    }
}

/// Waits for a child under a time limit, collecting its output; kills it past the limit.
fn wait(mut child: Child, timeout: Duration, what: &str) -> Result<Output> {
    let pipe = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(mut r) = r {
                let mut bytes = Vec::new();
                let _ = r.read_to_end(&mut bytes);
                s = String::from_utf8_lossy(&bytes).into_owned();
            }
            s
        })
    };
    let out = pipe(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = pipe(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s.code(),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(RecurError::Usage(format!(
                    "{what} ran past its limit of {} s and was stopped",
                    timeout.as_secs()
                )));
            }
            Err(e) => return Err(RecurError::Usage(format!("{what}: {e}"))),
        }
    };
    Ok(Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

/// Quotes a word for a POSIX shell (single quotes), unless it is plainly safe.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "@%+=:,./_-".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_and_hosts() {
        assert_eq!(shell_quote("/opt/recur"), "/opt/recur");
        assert_eq!(shell_quote("a b'c"), "'a b'\\''c'");
        let t = Target {
            destination: "root@10.0.0.7".into(),
            port: Some(2222),
            key: None,
            options: vec![],
            timeout: Duration::from_secs(1),
        };
        assert_eq!(t.host(), "10.0.0.7");
        assert!(t.describe("true").contains("-p 2222 root@10.0.0.7 -- true"));
    }
}
