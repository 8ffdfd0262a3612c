//! Deploying to Jetson (and other Linux) devices: [`bundle`] writes a release folder (the
//! device's recur binary, the model, recur.toml, a systemd unit, a plain supervisor script);
//! [`release`] uploads it over ssh ([`ssh`]), switches the `current` link atomically,
//! restarts the service, checks its health ([`health`]) and rolls back when the check fails.
//! docs/DEPLOY.md describes the layout and the steps.

pub mod bundle;
pub mod health;
pub mod release;
pub mod ssh;
