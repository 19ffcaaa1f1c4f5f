//! The OCI runtime the task service delegates to, as a trait: runc or crun through
//! [`crate::runc::Runc`] (which implements it) in the product, a fake in the service's in-process
//! tests (event order, state rules) — the seam that lets those run without root, containerd or
//! runc.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;

use crate::runc::{CreateOpts, RuncError, RuncIo};
use crate::settings::Settings;

/// What the service asks of its OCI runtime, for one container.
#[async_trait]
pub trait Delegate: Send + Sync {
    /// `create`: the init exists, stopped before the user's process; its pid is in the pid file.
    async fn create(
        &self,
        id: &str,
        bundle: &Path,
        opts: CreateOpts<'_>,
        io: RuncIo,
    ) -> Result<(), RuncError>;
    /// `exec --detach`: a process from the JSON at `process`; its pid is in the pid file.
    async fn exec(
        &self,
        id: &str,
        process: &Path,
        opts: CreateOpts<'_>,
        io: RuncIo,
    ) -> Result<(), RuncError>;
    /// `start` the created init.
    async fn start(&self, id: &str) -> Result<(), RuncError>;
    /// `kill` the init (or, with `all`, every process).
    async fn kill(&self, id: &str, signal: u32, all: bool) -> Result<(), RuncError>;
    /// `delete` the container.
    async fn delete(&self, id: &str, force: bool) -> Result<(), RuncError>;
    /// `pause` (freeze).
    async fn pause(&self, id: &str) -> Result<(), RuncError>;
    /// `resume` (thaw).
    async fn resume(&self, id: &str) -> Result<(), RuncError>;
    /// `update` resources (OCI `LinuxResources` JSON).
    async fn update(&self, id: &str, resources_json: Vec<u8>) -> Result<(), RuncError>;
    /// `ps`: the container's pids.
    async fn ps(&self, id: &str) -> Result<Vec<u32>, RuncError>;
}

/// Makes the delegate of one container from its settings and bundle.
pub type DelegateFactory = Arc<dyn Fn(&Settings, &Path) -> Arc<dyn Delegate> + Send + Sync>;

/// The product's factory: the configured runc-compatible binary.
pub fn runc_factory() -> DelegateFactory {
    Arc::new(|settings: &Settings, bundle: &Path| -> Arc<dyn Delegate> {
        Arc::new(settings.runc(bundle))
    })
}
