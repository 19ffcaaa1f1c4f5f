//! Planning: a pure function from a request, the host inventory, the config and two facts about
//! the image (its library directories) to the edits that give the container its GPUs.

use std::collections::BTreeSet;
use std::path::PathBuf;

use crate::error::GpuError;
use crate::inventory::{Capability, DeviceNode, Gpu, Inventory};
use crate::ldcache::Entry;
use crate::request::Request;

mod classes;
mod select;
use select::{check_requirements, select, Selected};

/// Mount options of every injected file: read-only, no devices, no setuid.
pub const RO_BIND: [&str; 5] = ["ro", "nosuid", "nodev", "rbind", "rprivate"];
/// Mount options of IPC sockets and the MPS pipe dir (written to, never executed).
pub const RW_BIND: [&str; 5] = ["nosuid", "nodev", "noexec", "rbind", "rprivate"];
/// Driver file the container must not be able to rewrite: with it, the driver could be told to
/// create device nodes for GPUs the container was not given.
pub const MASKED_PARAMS: &str = "/proc/driver/nvidia/params";
/// The driver's per-GPU directories, one per PCI bus id.
pub const PROC_GPUS: &str = "/proc/driver/nvidia/gpus";

/// What planning needs to know about the image (read from its rootfs by the caller).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageLayout {
    /// 64-bit library directory, e.g. `/usr/lib/x86_64-linux-gnu` or `/usr/lib64`.
    pub libdir: String,
    /// 32-bit library directory.
    pub libdir32: String,
    /// The CUDA forward-compatibility libraries the image ships, if any.
    pub cuda_compat: Option<CudaCompat>,
}

/// The image's `/usr/local/cuda/compat`: a newer CUDA driver's user-space libraries, for hosts
/// whose kernel driver is of an older branch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CudaCompat {
    /// Directory in the container.
    pub dir: String,
    /// Version of its `libcuda.so.<version>`, e.g. `590.48.01`.
    pub version: String,
    /// File names of the regular `lib*.so.<version>` files there.
    pub files: Vec<String>,
}

/// Where CUDA images keep their forward-compatibility libraries.
pub const CUDA_COMPAT_DIR: &str = "/usr/local/cuda/compat";

fn major(version: &str) -> Option<u64> {
    version.split('.').next()?.parse().ok()
}

/// Points the loader at the image's compat libraries when they are of a newer driver branch
/// than the host's (the rule NVIDIA's own hook applies without an ELF note): the libraries stay
/// in the image, nothing of them is mounted, only the container's loader cache names them.
/// Consumer GPUs do not support forward compatibility and keep the host's libraries.
fn apply_cuda_compat(
    p: &mut Plan,
    inv: &Inventory,
    compat: &CudaCompat,
    selected: &[Selected<'_>],
) {
    let gpus: Vec<&Gpu> = selected
        .iter()
        .map(|s| {
            let (Selected::Gpu(g) | Selected::Mig(g, _)) = s;
            *g
        })
        .collect();
    compat_for(p, inv, compat, &gpus);
}

/// [`apply_cuda_compat`] for a container whose GPUs someone else injected (containerd applying
/// NVIDIA's CDI spec, whose `enable-cuda-compat` hook the shim replaces): its GPUs are known by
/// the device nodes in its spec.
pub fn forward_compat_for_mounted(
    p: &mut Plan,
    inv: &Inventory,
    compat: &CudaCompat,
    nodes: &[String],
) {
    let gpus: Vec<&Gpu> = inv
        .gpus
        .iter()
        .filter(|g| nodes.contains(&g.node.path))
        .collect();
    compat_for(p, inv, compat, &gpus);
}

fn compat_for(p: &mut Plan, inv: &Inventory, compat: &CudaCompat, gpus: &[&Gpu]) {
    let (Some(theirs), Some(ours)) = (major(&compat.version), major(&inv.driver_version)) else {
        return;
    };
    let consumer = gpus.iter().any(|g| {
        g.brand
            .as_deref()
            .is_some_and(|b| b.eq_ignore_ascii_case("GeForce") || b.eq_ignore_ascii_case("Titan"))
    });
    if theirs <= ours || consumer {
        return;
    }
    for file in &compat.files {
        let Some(prefix) = file.strip_suffix(&format!(".{}", compat.version)) else {
            continue;
        };
        // The compat library answers to the soname the host's library of that name has.
        let Some(soname) = inv
            .libraries
            .iter()
            .find(|l| !l.is_32bit && l.prefix == prefix)
            .and_then(|l| l.soname.clone())
        else {
            continue;
        };
        let path = format!("{}/{file}", compat.dir.trim_end_matches('/'));
        for e in p
            .ld_entries
            .iter_mut()
            .filter(|e| e.is_lib64() && e.key == soname)
        {
            e.value = path.clone();
        }
    }
    p.cuda_compat = Some(compat.version.clone());
}

/// A bind mount to add.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BindMount {
    /// Host path.
    pub source: PathBuf,
    /// Container path.
    pub destination: String,
    /// Mount options.
    pub options: Vec<String>,
}

/// The edits for one container.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Device nodes (created by runc, each with a cgroup allow rule).
    pub devices: Vec<DeviceNode>,
    /// Bind mounts.
    pub mounts: Vec<BindMount>,
    /// `K=V` env entries to set.
    pub env: Vec<String>,
    /// Paths to mask.
    pub masked_paths: Vec<String>,
    /// Loader cache entries for the injected libraries.
    pub ld_entries: Vec<Entry>,
    /// Selected GPUs (UUIDs, MIG UUIDs, CDI names), for logs.
    pub selected: Vec<String>,
    /// Device paths that get no cgroup rule (CDI `permissions: none`).
    pub no_cgroup_rule: Vec<String>,
    /// Extra supplementary groups (CDI `additionalGids`).
    pub additional_gids: Vec<u32>,
    /// Symlinks to create in the container's root (soname and development names).
    pub links: Vec<Link>,
    /// The image's CUDA forward-compatibility version the loader was pointed at, if any.
    pub cuda_compat: Option<String>,
    /// One line per NVIDIA CDI hook whose effect this plan carries instead (for the log).
    pub replaced_hooks: Vec<String>,
    /// Things asked for that were not given, worded for the log (a device class the host lacks).
    pub warnings: Vec<String>,
}

/// A symlink created in the container's root, next to the library it names: what makes the
/// library a file under every name programs look for (`<dir>/libcuda.so.1` for Triton's check,
/// `<dir>/libcuda.so` for `ld -lcuda`), not only an entry in the loader cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    /// Directory in the container, e.g. `/usr/lib/x86_64-linux-gnu`.
    pub dir: String,
    /// Link name, e.g. `libcuda.so.1`.
    pub name: String,
    /// What it points at, relative to `dir`, e.g. `libcuda.so.580.95.05`.
    pub target: String,
}

impl Plan {
    /// One line for logs.
    pub fn summary(&self) -> String {
        format!(
            "{} GPU(s) [{}], {} device nodes, {} mounts, {} links{}",
            self.selected.len(),
            self.selected.join(", "),
            self.devices.len(),
            self.mounts.len(),
            self.links.len(),
            match &self.cuda_compat {
                Some(v) => format!(", the image's CUDA forward-compat libraries {v}"),
                None => String::new(),
            }
        )
    }

    fn add_device(&mut self, n: &DeviceNode) {
        if !self.devices.iter().any(|d| d.path == n.path) {
            self.devices.push(n.clone());
        }
    }

    pub(crate) fn add_link(&mut self, dir: &str, name: &str, target: &str) {
        let dir = dir.trim_end_matches('/');
        if name == target
            || name.contains('/')
            || self.links.iter().any(|l| l.dir == dir && l.name == name)
        {
            return;
        }
        self.links.push(Link {
            dir: dir.to_string(),
            name: name.to_string(),
            target: target.to_string(),
        });
    }

    fn add_mount(&mut self, source: PathBuf, destination: String, opts: &[&str]) {
        if self.mounts.iter().any(|m| m.destination == destination) {
            return;
        }
        self.mounts.push(BindMount {
            source,
            destination,
            options: opts.iter().map(|s| s.to_string()).collect(),
        });
    }
}

fn effective_caps(req: &Request) -> BTreeSet<Capability> {
    let mut caps = req.capabilities.clone();
    if caps.contains(&Capability::Video) {
        caps.insert(Capability::Compute);
    }
    if caps.contains(&Capability::Display) {
        caps.insert(Capability::Graphics);
    }
    caps
}

/// The loader's part of a GPU container whose driver libraries someone else already mounted
/// (containerd applying a CDI spec for the CRI `CDIDevices` field, say): for every mount of a
/// library of this driver, the loader cache entry and the soname/development-name links in the
/// directory it was mounted into. Grants nothing: no device node and no mount is added.
pub fn plan_for_mounted_libraries(mounts: &[(PathBuf, String)], inv: &Inventory) -> Plan {
    let mut p = Plan::default();
    let destinations: BTreeSet<&str> = mounts.iter().map(|(_, d)| d.as_str()).collect();
    for (source, dest) in mounts {
        let Some(lib) = inv.libraries.iter().find(|l| &l.path == source) else {
            continue;
        };
        let Some((dir, file)) = dest.rsplit_once('/') else {
            continue;
        };
        let flags = lib.cache_flags();
        let soname = lib.soname.as_deref().unwrap_or(&lib.file_name);
        if file == lib.file_name {
            p.ld_entries.push(Entry::new(flags, soname, dest.clone()));
        }
        for (name, target) in [(soname, file), (lib.prefix.as_str(), soname)] {
            if !destinations.contains(format!("{dir}/{name}").as_str()) {
                p.add_link(dir, name, target);
            }
        }
    }
    p
}

/// Device nodes: the control device, each selected GPU (and MIG capabilities), UVM for compute,
/// modeset for display, MIG admin capabilities when asked for.
fn add_devices(
    p: &mut Plan,
    req: &Request,
    inv: &Inventory,
    selected: &[Selected<'_>],
    caps: &BTreeSet<Capability>,
) {
    if let Some(ctl) = inv.control("/dev/nvidiactl") {
        p.add_device(ctl);
    }
    for s in selected {
        match s {
            Selected::Gpu(g) => {
                p.add_device(&g.node);
                p.selected.push(g.uuid.clone());
            }
            Selected::Mig(g, m) => {
                p.add_device(&g.node);
                for c in &m.caps {
                    p.add_device(c);
                }
                p.selected.push(m.uuid.clone());
            }
        }
    }
    let mut extra: Vec<&str> = Vec::new();
    if caps.contains(&Capability::Compute) {
        extra.extend(["/dev/nvidia-uvm", "/dev/nvidia-uvm-tools"]);
    }
    if caps.contains(&Capability::Display) {
        extra.push("/dev/nvidia-modeset");
    }
    for n in extra {
        if let Some(node) = inv.control(n) {
            p.add_device(node);
        }
    }
    for (name, node) in &inv.mig_admin_caps {
        if (name == "config" && req.mig_config) || (name == "monitor" && req.mig_monitor) {
            p.add_device(node);
        }
    }
}

/// Libraries: one bind each, under its own file name in the image's library dir; the loader
/// cache maps the soname (and the development name where programs dlopen it) to that file.
fn add_libraries(p: &mut Plan, inv: &Inventory, image: &ImageLayout, caps: &BTreeSet<Capability>) {
    let prefixes: BTreeSet<&str> = caps
        .iter()
        .flat_map(|c| c.libraries().iter().copied())
        .collect();
    let compat32 = caps.contains(&Capability::Compat32);
    for lib in &inv.libraries {
        if !prefixes.contains(lib.prefix.as_str()) || (lib.is_32bit && !compat32) {
            continue;
        }
        let dir = if lib.is_32bit {
            &image.libdir32
        } else {
            &image.libdir
        };
        let dest = format!("{}/{}", dir.trim_end_matches('/'), lib.file_name);
        p.add_mount(lib.path.clone(), dest.clone(), &RO_BIND);
        let flags = lib.cache_flags();
        let mut keys: Vec<String> = lib.soname.iter().cloned().collect();
        if matches!(
            lib.prefix.as_str(),
            "libcuda.so" | "libnvidia-opticalflow.so" | "libnvidia-ml.so"
        ) {
            keys.push(lib.prefix.clone());
        }
        if lib.prefix == "libGLX_nvidia.so" {
            keys.push("libGLX_indirect.so.0".into());
        }
        for k in keys {
            p.ld_entries.push(Entry::new(flags, k, dest.clone()));
        }
        // soname → file, development name → soname, as the driver's installer lays them out.
        let soname = lib.soname.as_deref().unwrap_or(&lib.file_name);
        p.add_link(dir, soname, &lib.file_name);
        p.add_link(dir, &lib.prefix, soname);
    }
}

/// Utilities, firmware the driver's user-space may read, sockets, MPS, graphics configs.
fn add_host_files(p: &mut Plan, inv: &Inventory, caps: &BTreeSet<Capability>) {
    for b in &inv.binaries {
        if caps.iter().any(|c| c.binaries().contains(&b.name.as_str())) {
            p.add_mount(b.path.clone(), format!("/usr/bin/{}", b.name), &RO_BIND);
        }
    }
    for (src, dst) in &inv.firmware {
        p.add_mount(src.clone(), dst.clone(), &RO_BIND);
    }
    if caps.contains(&Capability::Utility) {
        for (src, dst) in &inv.sockets {
            p.add_mount(src.clone(), dst.clone(), &RW_BIND);
        }
    }
    if caps.contains(&Capability::Compute) {
        if let Some(dir) = &inv.mps_pipe_dir {
            let d = dir.to_string_lossy().into_owned();
            p.add_mount(dir.clone(), d.clone(), &RW_BIND);
            p.env.push(format!("CUDA_MPS_PIPE_DIRECTORY={d}"));
        }
    }
    if caps.contains(&Capability::Graphics) {
        for (src, dst) in &inv.graphics_files {
            p.add_mount(src.clone(), dst.clone(), &RO_BIND);
        }
    }
}

/// Masks: the driver's params always; each GPU's /proc entry (model, bus, firmware, power
/// state) is the container's to see only when it was given that GPU, as libnvidia-container
/// shows it. runc refuses mounts inside /proc, so the others are masked: their directories stay
/// listed but are empty.
fn add_masks(p: &mut Plan, inv: &Inventory, selected: &[Selected<'_>]) {
    p.masked_paths.push(MASKED_PARAMS.into());
    let given: BTreeSet<&str> = selected
        .iter()
        .map(|s| match s {
            Selected::Gpu(g) | Selected::Mig(g, _) => g.pci_bus_id.as_str(),
        })
        .collect();
    for g in &inv.gpus {
        if !given.contains(g.pci_bus_id.as_str()) && !g.pci_bus_id.is_empty() {
            p.masked_paths.push(format!("{PROC_GPUS}/{}", g.pci_bus_id));
        }
    }
}

/// Builds the plan for `req` (only its env/volume-mount part; CDI devices are applied
/// separately from their specs).
pub fn plan(req: &Request, inv: &Inventory, image: &ImageLayout) -> Result<Plan, GpuError> {
    let mut p = Plan::default();
    let Some(devices) = &req.devices else {
        return Ok(p);
    };
    let selected = select(devices, inv)?;
    check_requirements(req, inv, &selected)?;
    let caps = effective_caps(req);
    add_devices(&mut p, req, inv, &selected, &caps);
    classes::add(&mut p, req, inv, &selected, &caps)?;
    add_libraries(&mut p, inv, image, &caps);
    if caps.contains(&Capability::Compute) && req.cuda_compat {
        if let Some(c) = &image.cuda_compat {
            apply_cuda_compat(&mut p, inv, c, &selected);
        }
    }
    add_host_files(&mut p, inv, &caps);
    add_masks(&mut p, inv, &selected);
    Ok(p)
}
