//! `recur deploy --host user@device BUNDLE`: upload the bundle as a new release, switch the
//! `current` link to it atomically, restart the service, check its health, and roll back to
//! the previous release when the check fails.
//!
//! On the device, under the root of the bundle's `[deploy]` table:
//!
//! ```text
//! ROOT/releases/VERSION/   one folder per release (the bundle, unpacked)
//! ROOT/current             -> releases/VERSION, switched with `ln -sfn` + `mv -T` (rename(2))
//! ROOT/run/                the plain supervisor's pid file and log
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use super::bundle::BundleConfig;
use super::health::wait_healthy;
use super::ssh::{shell_quote, Target};
use crate::error::{RecurError, Result};

/// How the device runs the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceManager {
    /// systemd: the bundle's unit is installed into /etc/systemd/system and restarted.
    Systemd,
    /// The bundle's `bin/supervise` script (devices without systemd).
    Supervisor,
}

impl std::str::FromStr for ServiceManager {
    type Err = RecurError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "systemd" => Ok(ServiceManager::Systemd),
            "supervisor" => Ok(ServiceManager::Supervisor),
            other => Err(RecurError::Usage(format!(
                "--service-manager '{other}': choose systemd or supervisor"
            ))),
        }
    }
}

/// A deploy, as asked for.
#[derive(Debug, Clone)]
pub struct DeploySpec {
    /// The bundle folder.
    pub bundle: PathBuf,
    /// The device.
    pub target: Target,
    /// Overrides the bundle's `[deploy] root`.
    pub root: Option<PathBuf>,
    /// How the device runs the service.
    pub manager: ServiceManager,
    /// The health URL; default `http://HOST:PORT/health`, the port from `[serve] http`.
    pub health_url: Option<String>,
    /// How long the new release has to become healthy.
    pub health_timeout: Duration,
    /// Print the plan and do nothing.
    pub dry_run: bool,
    /// Releases kept on the device after a successful deploy, newest first (the current
    /// and the previous one are always kept).
    pub keep: usize,
}

/// What a deploy did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The new release is current and healthy.
    Deployed {
        /// Its version.
        version: String,
    },
    /// `--dry-run`: nothing was done.
    Planned,
}

/// One step of the plan: what it does and the command it runs on the device.
struct Step {
    title: String,
    remote: String,
}

/// The remote commands of a deploy.
struct Plan {
    root: String,
    version: String,
    health_url: String,
    manager: ServiceManager,
    unit: String,
}

impl Plan {
    fn upload(&self) -> Step {
        let (root, v) = (&self.root, shell_quote(&self.version));
        Step {
            title: format!("upload the bundle into {}/releases/{}", self.root, self.version),
            remote: format!(
                "set -e; cd {root}/releases 2>/dev/null || {{ mkdir -p {root}/releases; cd {root}/releases; }}; \
                 if [ \"$(readlink {root}/current 2>/dev/null)\" = releases/{v} ]; then echo 'release {v} is current already' >&2; exit 9; fi; \
                 rm -rf .incoming-{v} {v}; mkdir .incoming-{v}; tar -C .incoming-{v} -xf -; mv .incoming-{v} {v}; touch {v}"
            ),
        }
    }

    fn previous(&self) -> Step {
        Step {
            title: "note the release that is current now".into(),
            remote: format!("readlink {}/current || true", self.root),
        }
    }

    fn switch(&self, release: &str) -> Step {
        let root = &self.root;
        let rel = shell_quote(release);
        Step {
            title: format!("switch {root}/current -> {release} (atomic rename)"),
            remote: format!(
                "set -e; ln -sfn {rel} {root}/.current-next; mv -T {root}/.current-next {root}/current"
            ),
        }
    }

    fn restart(&self) -> Step {
        let root = &self.root;
        match self.manager {
            ServiceManager::Systemd => {
                let unit = shell_quote(&self.unit);
                Step {
                    title: format!("install the unit and restart {} (systemd)", self.unit),
                    remote: format!(
                        "set -e; if [ \"$(id -u)\" = 0 ]; then S=; else S='sudo -n'; fi; \
                         $S cp {root}/current/recur.service /etc/systemd/system/{unit}.service; \
                         $S systemctl daemon-reload; $S systemctl enable {unit} >/dev/null 2>&1 || true; \
                         $S systemctl restart {unit}"
                    ),
                }
            }
            ServiceManager::Supervisor => Step {
                title: "restart the service (plain supervisor)".into(),
                remote: format!("sh {root}/current/bin/supervise {root} restart"),
            },
        }
    }

    /// Removes all but the `keep` most recently uploaded releases, never the current one or
    /// `previous`; prints the names removed.
    fn prune(&self, keep: usize, previous: Option<&str>) -> Step {
        let root = &self.root;
        let previous = shell_quote(previous.unwrap_or(""));
        Step {
            title: format!("remove all but the {keep} newest releases (current and previous stay)"),
            remote: format!(
                "set -e; cd {root}/releases; cur=$(readlink {root}/current); n=0; \
                 for r in $(ls -1t); do n=$((n + 1)); \
                 if [ $n -gt {keep} ] && [ releases/$r != \"$cur\" ] && [ releases/$r != {previous} ]; \
                 then rm -rf -- \"$r\"; echo \"$r\"; fi; done"
            ),
        }
    }

    fn health(&self, version: &str) -> Step {
        Step {
            title: format!(
                "check {} answers 200 for release {version}",
                self.health_url
            ),
            remote: String::new(),
        }
    }
}

/// Runs (or with `dry_run`, prints) a deploy; progress on stderr, the steps on stdout.
pub fn deploy(spec: &DeploySpec) -> Result<Outcome> {
    let config = BundleConfig::read(&spec.bundle)?;
    let version = config.version()?.to_string();
    for f in ["bin/recur", "bin/supervise", "recur.service"] {
        let p = spec.bundle.join(f);
        if !p.is_file() {
            return Err(RecurError::file(&p, "missing from the bundle"));
        }
    }
    if !spec.bundle.join(&config.serve.model).is_file() {
        return Err(RecurError::file(
            spec.bundle.join(&config.serve.model),
            "missing from the bundle",
        ));
    }
    let root = spec.root.clone().unwrap_or(config.deploy.root.clone());
    let root = shell_path(&root)?;
    let health_url = match &spec.health_url {
        Some(u) => u.clone(),
        None => {
            let http = config.serve.http.as_deref().ok_or_else(|| {
                RecurError::Usage(
                    "recur.toml has no [serve] http address, so there is no health check; add one or give --health-url"
                        .into(),
                )
            })?;
            let port = http.rsplit_once(':').map(|(_, p)| p).unwrap_or(http);
            let host = spec.target.host();
            if host.contains(':') {
                format!("http://[{host}]:{port}/health")
            } else {
                format!("http://{host}:{port}/health")
            }
        }
    };
    let plan = Plan {
        root,
        version: version.clone(),
        health_url,
        manager: spec.manager,
        unit: config.deploy.unit.clone(),
    };
    let new_release = format!("releases/{version}");

    if spec.dry_run {
        println!(
            "deploy plan for release {version} to {} (nothing is done):",
            spec.target.destination
        );
        let steps = [
            plan.previous(),
            plan.upload(),
            plan.switch(&new_release),
            plan.restart(),
            plan.health(&version),
        ];
        for (i, s) in steps.iter().enumerate() {
            println!("  {}. {}", i + 1, s.title);
            if !s.remote.is_empty() {
                println!("     $ {}", spec.target.describe(&s.remote));
            }
        }
        let s = plan.prune(spec.keep, None);
        println!("  then: {}", s.title);
        println!("     $ {}", spec.target.describe(&s.remote));
        println!("  on a failed check: switch current back to the previous release, restart it, check it");
        return Ok(Outcome::Planned);
    }

    let progress = ProgressBar::new(5).with_style(
        ProgressStyle::with_template("{prefix} [{pos}/{len}] {wide_msg}")
            .expect("a valid template"),
    );
    progress.set_prefix(format!("deploy {version}"));
    let step = |s: &Step| {
        progress.inc(1);
        progress.set_message(s.title.clone());
        // (position() outside suspend(): both take the bar's lock)
        let n = progress.position();
        progress.suspend(|| println!("[{n}/5] {}", s.title));
    };

    let s = plan.previous();
    step(&s);
    let previous = spec.target.check(&s.remote)?.trim().to_string();
    let previous = (!previous.is_empty()).then_some(previous);
    let s = plan.upload();
    step(&s);
    spec.target.upload(&spec.bundle, &s.remote)?;
    let s = plan.switch(&new_release);
    step(&s);
    spec.target.check(&s.remote)?;
    let s = plan.restart();
    step(&s);
    let restarted = spec.target.check(&s.remote);
    let s = plan.health(&version);
    step(&s);
    let healthy = restarted.and_then(|_| check_health(spec, &plan, &version));
    match healthy {
        Ok(_) => {
            progress.finish_and_clear();
            println!("release {version} is live on {}", spec.target.destination);
            let s = plan.prune(spec.keep, previous.as_deref());
            println!("{}", s.title);
            // The release is live; a failed clean-up is reported, not fatal.
            match spec.target.check(&s.remote) {
                Ok(removed) => {
                    for r in removed.lines() {
                        println!("  removed releases/{r}");
                    }
                }
                Err(e) => println!("  clean-up failed: {e}"),
            }
            Ok(Outcome::Deployed { version })
        }
        Err(why) => {
            progress.finish_and_clear();
            let why = crate::error::one_line(&why.to_string());
            println!("release {version} failed its check: {why}");
            let Some(previous) = previous else {
                return Err(RecurError::Usage(format!(
                    "release {version} failed its health check ({why}); there is no previous release to roll back to"
                )));
            };
            let back = rollback(spec, &plan, &previous);
            match back {
                Ok(()) => Err(RecurError::Usage(format!(
                    "release {version} failed its health check ({why}); rolled back to {previous}, which is healthy"
                ))),
                Err(e) => Err(RecurError::Usage(format!(
                    "release {version} failed its health check ({why}); rolling back to {previous} failed too: {}",
                    crate::error::one_line(&e.to_string())
                ))),
            }
        }
    }
}

/// Switches back to `previous`, restarts and checks it.
fn rollback(spec: &DeploySpec, plan: &Plan, previous: &str) -> Result<()> {
    let version = Path::new(previous)
        .file_name()
        .and_then(|v| v.to_str())
        .unwrap_or(previous)
        .to_string();
    for s in [plan.switch(previous), plan.restart()] {
        println!("[rollback] {}", s.title);
        spec.target.check(&s.remote)?;
    }
    println!("[rollback] {}", plan.health(&version).title);
    check_health(spec, plan, &version)?;
    println!("rolled back: release {version} is live again");
    Ok(())
}

/// Waits for the release `version` to answer its health check. Under the plain supervisor
/// a service that has exited (a model it refuses, a binary that does not run) is seen at
/// once, with the end of its log, rather than after the whole timeout.
fn check_health(spec: &DeploySpec, plan: &Plan, version: &str) -> Result<String> {
    let status = format!(
        "sh {root}/current/bin/supervise {root} status >/dev/null || {{ echo stopped; tail -n 3 {root}/run/recur.log; }}",
        root = plan.root
    );
    let mut gone = || -> Option<String> {
        if plan.manager != ServiceManager::Supervisor {
            return None;
        }
        let out = spec.target.run(&status).ok()?;
        out.stdout
            .starts_with("stopped")
            .then(|| crate::error::one_line(out.stdout.trim_start_matches("stopped")))
    };
    wait_healthy(
        &plan.health_url,
        Some(version),
        spec.health_timeout,
        &mut gone,
    )
}

/// The root as a shell word: absolute, and only characters that need no quoting.
fn shell_path(root: &Path) -> Result<String> {
    let s = root.to_string_lossy();
    if root.is_absolute()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+".contains(c))
    {
        Ok(s.trim_end_matches('/').to_string())
    } else {
        Err(RecurError::Usage(format!(
            "--root {s}: give an absolute path of letters, digits and / . _ - +"
        )))
    }
}
