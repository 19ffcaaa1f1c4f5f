//! What discovery found on the host: the driver, its files and the GPUs. Plain data, serialisable
//! so it can be cached per driver version and built by hand in tests.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// A driver capability a container can ask for in `NVIDIA_DRIVER_CAPABILITIES`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Capability {
    /// CUDA and OpenCL.
    Compute,
    /// nvidia-smi and NVML.
    Utility,
    /// Video encode/decode (implies the compute libraries).
    Video,
    /// OpenGL, Vulkan, EGL.
    Graphics,
    /// X11 display.
    Display,
    /// NGX (DLSS).
    Ngx,
    /// 32-bit variants of the selected libraries.
    Compat32,
}

impl Capability {
    /// Every capability, in the order `all` expands to.
    pub const ALL: [Capability; 7] = [
        Capability::Compute,
        Capability::Utility,
        Capability::Video,
        Capability::Graphics,
        Capability::Display,
        Capability::Ngx,
        Capability::Compat32,
    ];

    /// The name used in `NVIDIA_DRIVER_CAPABILITIES`.
    pub fn name(self) -> &'static str {
        match self {
            Capability::Compute => "compute",
            Capability::Utility => "utility",
            Capability::Video => "video",
            Capability::Graphics => "graphics",
            Capability::Display => "display",
            Capability::Ngx => "ngx",
            Capability::Compat32 => "compat32",
        }
    }

    /// Parses a capability name (case-insensitive).
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|c| c.name().eq_ignore_ascii_case(s))
    }

    /// Library name prefixes (up to `.so`) this capability injects, matched against files named
    /// `<prefix>.<driver version>`.
    pub fn libraries(self) -> &'static [&'static str] {
        match self {
            Capability::Utility => &["libnvidia-ml.so", "libnvidia-cfg.so", "libnvidia-nscq.so"],
            Capability::Compute => &[
                "libcuda.so",
                "libcudadebugger.so",
                "libnvidia-opencl.so",
                "libnvidia-gpucomp.so",
                "libnvidia-ptxjitcompiler.so",
                "libnvidia-fatbinaryloader.so",
                "libnvidia-allocator.so",
                "libnvidia-compiler.so",
                "libnvidia-pkcs11.so",
                "libnvidia-pkcs11-openssl3.so",
                "libnvidia-nvvm.so",
                "libnvidia-tileiras.so",
            ],
            Capability::Video => &[
                "libvdpau_nvidia.so",
                "libnvidia-encode.so",
                "libnvidia-opticalflow.so",
                "libnvcuvid.so",
            ],
            Capability::Graphics | Capability::Display => &[
                "libnvidia-eglcore.so",
                "libnvidia-glcore.so",
                "libnvidia-tls.so",
                "libnvidia-glsi.so",
                "libnvidia-fbc.so",
                "libnvidia-ifr.so",
                "libnvidia-rtcore.so",
                "libnvoptix.so",
                "libGLX_nvidia.so",
                "libEGL_nvidia.so",
                "libGLESv2_nvidia.so",
                "libGLESv1_CM_nvidia.so",
                "libnvidia-glvkspirv.so",
                "libnvidia-cbl.so",
            ],
            Capability::Ngx => &["libnvidia-ngx.so"],
            Capability::Compat32 => &[],
        }
    }

    /// Utilities this capability injects into `/usr/bin`.
    pub fn binaries(self) -> &'static [&'static str] {
        match self {
            Capability::Utility => &[
                "nvidia-smi",
                "nvidia-debugdump",
                "nvidia-persistenced",
                "nv-fabricmanager",
            ],
            Capability::Compute => &["nvidia-cuda-mps-control", "nvidia-cuda-mps-server"],
            Capability::Display => &["nvidia-xconfig"],
            _ => &[],
        }
    }
}

/// A driver library on the host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Library {
    /// Host path of the real (versioned) file, inside the driver root.
    pub path: PathBuf,
    /// Its file name, e.g. `libcuda.so.580.95.05`.
    pub file_name: String,
    /// `DT_SONAME`, e.g. `libcuda.so.1`, when the ELF has one.
    pub soname: Option<String>,
    /// The prefix it matched, e.g. `libcuda.so`.
    pub prefix: String,
    /// 32-bit (goes to the container's 32-bit library dir).
    pub is_32bit: bool,
}

impl Library {
    /// Its loader-cache flags (ELF class and architecture).
    pub fn cache_flags(&self) -> i32 {
        if self.is_32bit {
            crate::ldcache::FLAGS_LIB32
        } else {
            crate::ldcache::FLAGS_LIB64
        }
    }
}

/// A utility binary on the host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binary {
    /// Host path.
    pub path: PathBuf,
    /// File name (also its name in the container's `/usr/bin`).
    pub name: String,
}

/// A character device node on the host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceNode {
    /// Path in the container (also below `dev_root` on the host), e.g. `/dev/nvidiactl`.
    pub path: String,
    /// Major number.
    pub major: i64,
    /// Minor number.
    pub minor: i64,
    /// Permission bits of the host node.
    pub mode: u32,
    /// Owner of the node in the container.
    #[serde(default)]
    pub uid: u32,
    /// Group owning the host node.
    pub gid: u32,
}

/// A MIG device (a compute instance inside a GPU instance).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigDevice {
    /// Index under its parent GPU (NVML order), as in `<gpu>:<mig>`.
    pub index: u32,
    /// `MIG-…` UUID.
    pub uuid: String,
    /// GPU instance id.
    pub gi: u32,
    /// Compute instance id.
    pub ci: u32,
    /// Profile name, e.g. `1g.10gb`.
    pub profile: String,
    /// Memory in MiB.
    pub memory_mib: Option<u64>,
    /// Capability nodes granting access (`gi` access, then `ci` access).
    pub caps: Vec<DeviceNode>,
}

/// A physical GPU.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gpu {
    /// NVML index.
    pub index: u32,
    /// `GPU-…` UUID.
    pub uuid: String,
    /// Device minor: the node is `/dev/nvidia<minor>`.
    pub minor: u32,
    /// PCI bus id, `dddd:bb:dd.f` (lowercase).
    pub pci_bus_id: String,
    /// Model name.
    pub model: String,
    /// Brand (`Tesla`, `GeForce`, …) when NVML told us.
    pub brand: Option<String>,
    /// CUDA compute capability `M.m` when NVML told us.
    pub arch: Option<String>,
    /// Total memory in MiB when NVML told us.
    pub memory_mib: Option<u64>,
    /// MIG mode enabled.
    pub mig_enabled: bool,
    /// MIG devices (empty unless MIG is on).
    pub migs: Vec<MigDevice>,
    /// The GPU's device node.
    pub node: DeviceNode,
}

/// Where the inventory's GPU facts came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GpuSource {
    /// libnvidia-ml.
    Nvml,
    /// `<proc_root>/driver/nvidia/gpus/*/information`.
    Procfs,
}

/// Everything the planner needs to know about the host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inventory {
    /// Kernel module (NVRM) version, e.g. `580.95.05`.
    pub driver_version: String,
    /// What a cached copy must still match ([`crate::discover::host_state`]).
    #[serde(default)]
    pub host_state: String,
    /// Highest CUDA version the driver supports, `M.m`.
    pub cuda_version: Option<String>,
    /// How `cuda_version` was obtained (`nvml` or `driver-branch table`).
    pub cuda_version_source: String,
    /// Where the GPU list came from.
    pub gpu_source: GpuSource,
    /// GPUs in NVML index order.
    pub gpus: Vec<Gpu>,
    /// Control nodes: nvidiactl, nvidia-uvm, nvidia-uvm-tools, nvidia-modeset (those present).
    pub control_nodes: Vec<DeviceNode>,
    /// MIG `config` and `monitor` capability nodes when present.
    pub mig_admin_caps: Vec<(String, DeviceNode)>,
    /// Driver libraries, per prefix.
    pub libraries: Vec<Library>,
    /// Utilities.
    pub binaries: Vec<Binary>,
    /// GSP firmware files: (host path, container path).
    pub firmware: Vec<(PathBuf, String)>,
    /// IPC sockets: (host path, container path).
    pub sockets: Vec<(PathBuf, String)>,
    /// The MPS pipe directory when an MPS daemon runs.
    pub mps_pipe_dir: Option<PathBuf>,
    /// Graphics config files: (host path, container path).
    pub graphics_files: Vec<(PathBuf, String)>,
    /// Device classes beyond GPUs (IMEX, RDMA, GDS, NVSwitch, GDRCopy, DRM), as present.
    #[serde(default)]
    pub classes: ClassNodes,
}

/// The device nodes of the classes NVIDIA's toolkit serves by environment (`NVIDIA_IMEX_CHANNELS`,
/// `NVIDIA_MOFED`, `NVIDIA_GDS`, `NVIDIA_NVSWITCH`, `NVIDIA_GDRCOPY`) and the GPUs' DRM nodes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassNodes {
    /// `/dev/nvidia-caps-imex-channels/channel<N>`, by channel number.
    pub imex_channels: Vec<(u32, DeviceNode)>,
    /// `/dev/infiniband/uverbs*`, `rdma_cm`, `umad*` (GPUDirect RDMA).
    pub mofed: Vec<DeviceNode>,
    /// `/dev/nvidia-fs*` (GPUDirect Storage).
    pub gds: Vec<DeviceNode>,
    /// `/dev/nvidia-nvswitchctl`, `/dev/nvidia-nvswitch<N>`.
    pub nvswitch: Vec<DeviceNode>,
    /// `/dev/gdrdrv`.
    pub gdrcopy: Vec<DeviceNode>,
    /// `/dev/dri/card<N>` and `renderD<N>` of each GPU, by PCI bus id.
    pub drm: Vec<(String, Vec<DeviceNode>)>,
}

impl Inventory {
    /// A control node by path.
    pub fn control(&self, path: &str) -> Option<&DeviceNode> {
        self.control_nodes.iter().find(|n| n.path == path)
    }

    /// Every id a user may name: indexes, UUIDs, MIG forms; for error messages.
    pub fn known_ids(&self) -> Vec<String> {
        let mut ids = Vec::new();
        for g in &self.gpus {
            ids.push(g.index.to_string());
        }
        for g in &self.gpus {
            ids.push(g.uuid.clone());
            for m in &g.migs {
                ids.push(format!("{}:{}", g.index, m.index));
                ids.push(m.uuid.clone());
            }
        }
        ids
    }
}

/// Normalises NVML's `00000000:00:04.0` to procfs's `0000:00:04.0`.
/// Anything that is not an ASCII hex domain comes back lowercased and otherwise untouched: the
/// id may be a container's request, not NVML's answer.
pub fn normalise_bus_id(id: &str) -> String {
    let id = id.to_ascii_lowercase();
    match id.split_once(':') {
        Some((dom, rest)) if dom.len() > 4 && dom.bytes().all(|b| b.is_ascii_hexdigit()) => {
            format!("{}:{rest}", &dom[dom.len() - 4..])
        }
        _ => id,
    }
}
