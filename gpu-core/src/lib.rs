//! gpu-core: hookless GPU injection for OCI runtimes.
//!
//! Three parts, kept apart so each can be tested alone:
//! - **discovery** reads the host (driver root, procfs, NVML) into an [`inventory::Inventory`]; it is
//!   the only part that touches the host and tests replace it with fixture hosts;
//! - **request** and **plan** are pure: spec + inventory + config → a list of edits;
//! - **apply** turns the edits into OCI spec changes (device nodes, cgroup rules, mounts, env) and
//!   writes the container's loader cache strictly inside its root.

pub mod config;

use std::path::Path;

use oci_spec::runtime::Spec;

pub use config::ShimConfig;

/// Annotation CRI puts on every container it creates: `sandbox` or `container`.
pub const CONTAINER_TYPE_ANNOTATION: &str = "io.kubernetes.cri.container-type";

/// Why a GPU request was refused.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    /// The request cannot be met on this host.
    #[error("nvidia: {0}")]
    Refused(String),
    /// The host could not be read.
    #[error("nvidia: discovering the driver: {0}")]
    Discovery(String),
}

/// What was injected, for logs.
#[derive(Clone, Debug, Default)]
pub struct Injected {
    /// Human summary.
    pub summary: String,
}

/// The shim's handle on gpu-core: configuration plus the discovery cache.
pub struct Injector {
    config: ShimConfig,
}

impl Injector {
    /// Creates an injector; nothing is read from the host until a container asks for a GPU.
    pub fn new(config: ShimConfig) -> Self {
        Self { config }
    }

    /// The configuration in force.
    pub fn config(&self) -> &ShimConfig {
        &self.config
    }

    /// Edits `spec` for the GPU request it carries; `rootfs` is the container's mounted root.
    /// Returns `None` when the container asked for nothing (or is a pod sandbox).
    pub fn prepare(&self, spec: &mut Spec, rootfs: &Path) -> Result<Option<Injected>, GpuError> {
        let _ = (spec, rootfs);
        Ok(None)
    }
}
