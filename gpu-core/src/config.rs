//! The parts of the shim's configuration gpu-core reads: `[driver]` (where the driver lives)
//! and `[gpu]` (which requests are honoured). The file as a whole — with the shim's own
//! `[runc]` and `[log]`, and where it is found — belongs to the shim (`nvidia-shim-config`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// What gpu-core is configured with.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CoreConfig {
    /// Where the NVIDIA driver lives on the host.
    pub driver: DriverConfig,
    /// Which GPU requests are honoured.
    pub gpu: GpuConfig,
}

/// `[driver]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DriverConfig {
    /// Root of the driver installation: `/`, a GKE-style `/usr/local/nvidia` (bin/, lib64/,
    /// firmware/) or a driver container's `/run/nvidia/driver`.
    pub root: PathBuf,
    /// Root under which `dev/nvidia*` device nodes are found.
    pub dev_root: PathBuf,
    /// The host's procfs (reads `driver/nvidia/...` and `devices` below it).
    pub proc_root: PathBuf,
    /// libnvidia-ml to load instead of the one found under `root` (tests point this at a fake).
    pub nvml_library: Option<PathBuf>,
    /// Where discovered inventories are cached, one file per driver version and root.
    pub cache_dir: PathBuf,
}

impl Default for DriverConfig {
    fn default() -> Self {
        Self {
            root: "/".into(),
            dev_root: "/".into(),
            proc_root: "/proc".into(),
            nvml_library: None,
            cache_dir: "/run/nvidia-shim".into(),
        }
    }
}

/// `[gpu]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GpuConfig {
    /// Honour `NVIDIA_VISIBLE_DEVICES` from containers without CAP_SYS_ADMIN. Turn off on Kubernetes
    /// nodes where device grants must come from the device plugin (volume mounts or CDI).
    pub accept_env_unprivileged: bool,
    /// Honour the device plugin's `/dev/null` mounts under `/var/run/nvidia-container-devices/`.
    pub accept_volume_mounts: bool,
    /// Skip every `NVIDIA_REQUIRE_*` check.
    pub disable_require: bool,
    /// Directories holding CDI specs; later directories override earlier ones.
    pub cdi_spec_dirs: Vec<PathBuf>,
    /// Annotation key prefixes that carry CDI device names.
    pub cdi_annotation_prefixes: Vec<String>,
    /// Time limit, in milliseconds, on a Create's GPU work (driver discovery, reading and writing
    /// the image's loader cache, CDI specs). Past it the Create fails and leaves nothing behind;
    /// the pod's other containers are served meanwhile either way. The default leaves room for a
    /// first NVML discovery on a many-GPU node without persistence mode (seconds per GPU); a
    /// discovery that overruns still completes and caches its result for the retry.
    pub prepare_timeout_ms: u64,
    /// Let a container use its image's CUDA forward-compatibility libraries
    /// (`/usr/local/cuda/compat`) when they are of a newer driver branch than the host's.
    pub cuda_forward_compat: bool,
    /// Record each GPU container's assignment (GPUs, capabilities, cgroup, pod) in its bundle,
    /// for `nvidia-shim top` and `metrics`.
    pub record_assignments: bool,
    /// Pause releases a GPU container's GPU: its CUDA processes are checkpointed by the driver
    /// before the freeze (per container: annotation `nvidia.com/gpu-suspend-on-pause`).
    pub suspend_on_pause: bool,
    /// Time limit, in milliseconds, for suspending (or resuming) a container's CUDA processes.
    pub suspend_timeout_ms: u64,
    /// What to do with NVIDIA's CDI hooks (`nvidia-cdi-hook`, `nvidia-ctk hook`) that containerd
    /// put into a spec: do their work in the shim and drop them (`replace`), leave them for runc
    /// to run (`keep`), or refuse the container (`refuse`).
    pub cdi_hooks: HookPolicy,
    /// Ignore `NVIDIA_IMEX_CHANNELS` in containers' environment, so that only the orchestrator
    /// (the device plugin's volume mounts, CDI, DRA) grants IMEX channels.
    pub ignore_imex_channel_requests: bool,
}

/// See [`GpuConfig::cdi_hooks`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HookPolicy {
    /// Do each hook's work in the shim, with its guarantees, and drop the hook.
    #[default]
    Replace,
    /// Leave NVIDIA's hooks in the spec (runc runs them on the host).
    Keep,
    /// Refuse a container whose spec carries one, naming it.
    Refuse,
}

impl Default for GpuConfig {
    fn default() -> Self {
        Self {
            accept_env_unprivileged: true,
            accept_volume_mounts: true,
            disable_require: false,
            cdi_spec_dirs: vec!["/etc/cdi".into(), "/var/run/cdi".into()],
            cdi_annotation_prefixes: vec!["cdi.k8s.io/".into()],
            prepare_timeout_ms: 30_000,
            cuda_forward_compat: true,
            record_assignments: true,
            suspend_on_pause: false,
            suspend_timeout_ms: 30_000,
            cdi_hooks: HookPolicy::Replace,
            ignore_imex_channel_requests: false,
        }
    }
}
