//! Discovery: everything gpu-core reads from the host, behind one seam ([`Discovery`]) that tests
//! replace with a fixed [`Inventory`].
//!
//! A full discovery (file scan, ELF headers, NVML) runs once per driver version: its result is
//! cached as JSON in `[driver] cache_dir`, keyed by the roots, and reused while
//! `<proc_root>/driver/nvidia/version` reports the same version. The hot path of a Create is then
//! one small procfs read and one JSON parse.

pub mod classes;
pub mod files;
pub mod nvml;
pub mod procfs;
pub mod usage;

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::config::DriverConfig;
use crate::error::GpuError;
use crate::inventory::{GpuSource, Inventory};

/// Bumped whenever [`Inventory`]'s shape changes, so stale cache files are ignored.
const CACHE_FORMAT: u32 = 4;

/// The seam between gpu-core and the host.
pub trait Discovery: Send + Sync {
    /// The host's inventory (possibly cached).
    fn inventory(&self) -> Result<Arc<Inventory>, GpuError>;

    /// The CDI specs under `dirs` (possibly cached, while no spec file or directory changed).
    fn cdi_registry(&self, dirs: &[PathBuf]) -> Arc<crate::cdi::Registry> {
        Arc::new(crate::cdi::Registry::load(dirs))
    }

    /// A host character device: `(major, minor, mode, gid)`, for CDI device nodes whose spec
    /// leaves the numbers out.
    fn host_char_device(&self, path: &Path) -> Result<(i64, i64, u32, u32), String> {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let m = std::fs::metadata(path).map_err(|e| e.to_string())?;
        if !m.file_type().is_char_device() {
            return Err("not a character device".into());
        }
        Ok((
            libc::major(m.rdev()) as i64,
            libc::minor(m.rdev()) as i64,
            m.mode() & 0o7777,
            m.gid(),
        ))
    }

    /// A host shared library's soname and whether it is 64-bit, for CDI-mounted libraries'
    /// loader entries.
    fn library_soname(&self, path: &Path) -> Option<(String, bool)> {
        let info = crate::elf::read(path)?;
        Some((info.soname?, info.is_64bit))
    }
}

/// What identifies the CDI specs on disk: each directory's and each spec file's path,
/// modification time and size. A spec written in place or renamed into place changes it.
type CdiStamp = Vec<(PathBuf, Option<std::time::SystemTime>, u64)>;

fn cdi_stamp(dirs: &[PathBuf]) -> CdiStamp {
    let stamp = |p: &Path| {
        let m = std::fs::metadata(p).ok();
        (
            p.to_path_buf(),
            m.as_ref().and_then(|m| m.modified().ok()),
            m.map_or(0, |m| m.len()),
        )
    };
    let mut out = Vec::new();
    for d in dirs {
        out.push(stamp(d));
        let mut files: Vec<PathBuf> = std::fs::read_dir(d)
            .map(|r| r.filter_map(|e| Some(e.ok()?.path())).collect())
            .unwrap_or_default();
        files.sort();
        out.extend(files.iter().map(|f| stamp(f)));
    }
    out
}

/// A fixed inventory, for tests and for `nvidia-shim list` against a saved inventory.
pub struct Fixed(pub Arc<Inventory>);

impl Discovery for Fixed {
    fn inventory(&self) -> Result<Arc<Inventory>, GpuError> {
        Ok(self.0.clone())
    }
}

/// Reads the real host under the configured roots.
pub struct Host {
    cfg: DriverConfig,
    memo: Mutex<Option<Arc<Inventory>>>,
    cdi_memo: Mutex<Option<(CdiStamp, Arc<crate::cdi::Registry>)>>,
}

impl Host {
    /// A discovery over `cfg`'s roots; nothing is read until asked.
    pub fn new(cfg: DriverConfig) -> Self {
        Self {
            cfg,
            memo: Mutex::new(None),
            cdi_memo: Mutex::new(None),
        }
    }

    fn cache_file(&self) -> PathBuf {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (
            CACHE_FORMAT,
            &self.cfg.root,
            &self.cfg.dev_root,
            &self.cfg.proc_root,
            &self.cfg.nvml_library,
        )
            .hash(&mut h);
        self.cfg
            .cache_dir
            .join(format!("inventory-{:016x}.json", h.finish()))
    }

    /// Discovers without reading the cache and rewrites it (what `nvidia-shim info --refresh` runs).
    pub fn discover_now(&self) -> Result<Inventory, GpuError> {
        let version = driver_version(&self.cfg.proc_root)?;
        let inv = discover(&self.cfg, &version)?;
        let path = self.cache_file();
        if let Err(e) = write_cache(&path, &inv) {
            tracing::debug!("not caching inventory at {}: {e}", path.display());
        }
        Ok(inv)
    }
}

impl Discovery for Host {
    #[tracing::instrument(name = "inventory", level = "debug", skip_all)]
    fn inventory(&self) -> Result<Arc<Inventory>, GpuError> {
        let version = driver_version(&self.cfg.proc_root)?;
        let state = host_state(&self.cfg.proc_root, &version);
        let mut memo = self.memo.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(inv) = memo.as_ref().filter(|i| i.host_state == state) {
            return Ok(inv.clone());
        }
        let path = self.cache_file();
        let cached = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<Inventory>(&b).ok())
            .filter(|i| i.host_state == state);
        let inv = match cached {
            Some(i) => i,
            None => {
                let inv = discover(&self.cfg, &version)?;
                if let Err(e) = write_cache(&path, &inv) {
                    tracing::debug!("not caching inventory at {}: {e}", path.display());
                }
                inv
            }
        };
        let inv = Arc::new(inv);
        *memo = Some(inv.clone());
        Ok(inv)
    }

    #[tracing::instrument(name = "cdi_registry", level = "debug", skip_all)]
    fn cdi_registry(&self, dirs: &[PathBuf]) -> Arc<crate::cdi::Registry> {
        let stamp = cdi_stamp(dirs);
        let mut memo = self.cdi_memo.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((s, reg)) = memo.as_ref() {
            if *s == stamp {
                return reg.clone();
            }
        }
        let reg = Arc::new(crate::cdi::Registry::load(dirs));
        *memo = Some((stamp, reg.clone()));
        reg
    }
}

fn write_cache(path: &Path, inv: &Inventory) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(dir)?;
    let tmp = tempfile_in(dir)?;
    std::fs::write(&tmp, serde_json::to_vec(inv)?)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

fn tempfile_in(dir: &Path) -> std::io::Result<PathBuf> {
    Ok(dir.join(format!(
        ".inventory.{}.{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0)
    )))
}

fn sorted_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// What a cached inventory must still match: the driver version, the GPUs' bus ids and the MIG
/// layout (GPU and compute instances appear under `driver/nvidia/capabilities/gpuN/mig`). A few
/// directory reads on each Create, so a MIG reconfiguration is never served from a stale cache.
pub fn host_state(proc_root: &Path, version: &str) -> String {
    let mut s = format!(
        "{version};{}",
        sorted_names(&proc_root.join("driver/nvidia/gpus")).join(",")
    );
    let caps = proc_root.join("driver/nvidia/capabilities");
    for gpu in sorted_names(&caps).iter().filter(|g| g.starts_with("gpu")) {
        let mig = caps.join(gpu).join("mig");
        for gi in sorted_names(&mig).iter().filter(|g| g.starts_with("gi")) {
            s.push_str(&format!(";{gpu}/{gi}"));
            for ci in sorted_names(&mig.join(gi))
                .iter()
                .filter(|c| c.starts_with("ci"))
            {
                s.push_str(&format!(",{ci}"));
            }
        }
    }
    s
}

/// The loaded kernel module's version.
pub fn driver_version(proc_root: &Path) -> Result<String, GpuError> {
    let path = proc_root.join("driver/nvidia/version");
    let text = std::fs::read_to_string(&path).map_err(|e| {
        GpuError::Discovery(format!(
            "no NVIDIA driver is loaded ({}: {e})",
            path.display()
        ))
    })?;
    procfs::parse_version(&text)
        .ok_or_else(|| GpuError::Discovery(format!("no NVRM version in {}", path.display())))
}

/// The CUDA version a driver branch supports, for when NVML cannot be loaded. From NVIDIA's CUDA
/// release notes (minimum driver per CUDA toolkit, Linux x86_64).
pub fn cuda_for_driver(driver_version: &str) -> Option<&'static str> {
    let major: u32 = driver_version.split('.').next()?.parse().ok()?;
    const TABLE: [(u32, &str); 16] = [
        (580, "13.0"),
        (575, "12.9"),
        (570, "12.8"),
        (565, "12.7"),
        (560, "12.6"),
        (555, "12.5"),
        (550, "12.4"),
        (545, "12.3"),
        (535, "12.2"),
        (530, "12.1"),
        (525, "12.0"),
        (520, "11.8"),
        (515, "11.7"),
        (510, "11.6"),
        (495, "11.5"),
        (470, "11.4"),
    ];
    TABLE.iter().find(|(d, _)| major >= *d).map(|(_, c)| *c)
}

/// The control device nodes (from `/dev`, else from procfs's majors).
fn control_nodes(
    cfg: &DriverConfig,
    majors: &std::collections::BTreeMap<String, i64>,
) -> Vec<crate::inventory::DeviceNode> {
    let mut out = Vec::new();
    for (path, module, minor) in [
        ("/dev/nvidiactl", None, 255),
        ("/dev/nvidia-uvm", Some("nvidia-uvm"), 0),
        ("/dev/nvidia-uvm-tools", Some("nvidia-uvm"), 1),
        ("/dev/nvidia-modeset", None, 254),
    ] {
        let node = files::char_node(&cfg.dev_root, path).or_else(|| {
            module
                .and_then(|m| majors.get(m))
                .map(|maj| files::node_from_major(path, *maj, minor))
        });
        out.extend(node);
    }
    out
}

/// GPUs from procfs, when NVML cannot be loaded; the CUDA version from the driver branch.
fn gpus_from_procfs(cfg: &DriverConfig) -> Vec<crate::inventory::Gpu> {
    procfs::gpus(&cfg.proc_root)
        .into_iter()
        .enumerate()
        .map(|(i, g)| crate::inventory::Gpu {
            index: i as u32,
            uuid: g.uuid,
            minor: g.minor,
            pci_bus_id: g.bus,
            model: g.model,
            brand: None,
            arch: None,
            memory_mib: None,
            mig_enabled: false,
            migs: Vec::new(),
            node: files::node_from_major(
                &format!("/dev/nvidia{}", g.minor),
                195,
                i64::from(g.minor),
            ),
        })
        .collect()
}

/// A full, uncached discovery.
pub fn discover(cfg: &DriverConfig, version: &str) -> Result<Inventory, GpuError> {
    // Canonical roots, so a root reached through a symlink (GKE's /usr/local/nvidia) still
    // contains the files it resolves to.
    let root = std::fs::canonicalize(&cfg.root).unwrap_or_else(|_| cfg.root.clone());
    let majors = procfs::char_majors(&cfg.proc_root);
    let mig_minors = procfs::mig_minors(&cfg.proc_root);
    let libraries = files::libraries(&root, version);
    let control_nodes = control_nodes(cfg, &majors);
    let caps_major = majors.get("nvidia-caps").copied();
    let mig_admin_caps = ["config", "monitor"]
        .iter()
        .filter_map(|k| {
            let minor = *mig_minors.get(*k)?;
            let path = format!("/dev/nvidia-caps/nvidia-cap{minor}");
            let node = files::char_node(&cfg.dev_root, &path)
                .or_else(|| Some(files::node_from_major(&path, caps_major?, i64::from(minor))))?;
            Some((k.to_string(), node))
        })
        .collect();

    let nvml_lib = cfg.nvml_library.clone().or_else(|| {
        libraries
            .iter()
            .find(|l| l.prefix == "libnvidia-ml.so" && !l.is_32bit)
            .map(|l| l.path.clone())
    });
    let from_nvml = nvml_lib
        .as_deref()
        .map(|lib| nvml::read(lib, caps_major, &mig_minors));
    let (gpu_source, mut gpus, cuda_version, cuda_version_source) = match from_nvml {
        Some(Ok(f)) => (GpuSource::Nvml, f.gpus, f.cuda_version, "nvml"),
        other => {
            if let Some(Err(e)) = other {
                tracing::warn!("NVML unavailable, reading GPUs from procfs: {e}");
            }
            let cuda = cuda_for_driver(version).map(str::to_string);
            (
                GpuSource::Procfs,
                gpus_from_procfs(cfg),
                cuda,
                "driver-branch table",
            )
        }
    };
    for g in &mut gpus {
        if let Some(n) = files::char_node(&cfg.dev_root, &g.node.path) {
            g.node = n;
        }
    }
    let classes = classes::discover(&cfg.dev_root, &gpus);
    Ok(Inventory {
        host_state: host_state(&cfg.proc_root, version),
        driver_version: version.to_string(),
        cuda_version,
        cuda_version_source: cuda_version_source.to_string(),
        gpu_source,
        gpus,
        control_nodes,
        mig_admin_caps,
        binaries: files::binaries(&root),
        firmware: files::firmware(&root, version),
        sockets: files::sockets(&root),
        mps_pipe_dir: files::mps_pipe_dir(),
        graphics_files: files::graphics_files(&root),
        classes,
        libraries,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cdi_registry_is_cached_until_a_spec_changes() {
        let d = tempfile::tempdir().unwrap();
        let spec = |dev: &str| {
            format!("cdiVersion: \"0.5.0\"\nkind: \"example.com/dev\"\ndevices:\n  - name: \"{dev}\"\n    containerEdits:\n      env: [\"X=1\"]\n")
        };
        std::fs::write(d.path().join("a.yaml"), spec("a")).unwrap();
        let host = Host::new(DriverConfig::default());
        let dirs = [d.path().to_path_buf()];
        let first = host.cdi_registry(&dirs);
        assert!(
            Arc::ptr_eq(&first, &host.cdi_registry(&dirs)),
            "unchanged specs are parsed again"
        );
        let names = ["example.com/dev=b".to_string()];
        assert!(first
            .apply(&names, &mut crate::Plan::default(), &host)
            .is_err());
        std::fs::write(d.path().join("b.yaml"), spec("b")).unwrap();
        let second = host.cdi_registry(&dirs);
        assert!(
            !Arc::ptr_eq(&first, &second),
            "a new spec file was not seen"
        );
        assert!(second
            .apply(&names, &mut crate::Plan::default(), &host)
            .is_ok());
    }

    #[test]
    fn cuda_fallback_table() {
        assert_eq!(cuda_for_driver("580.95.05"), Some("13.0"));
        assert_eq!(cuda_for_driver("535.129.03"), Some("12.2"));
        assert_eq!(cuda_for_driver("537.1"), Some("12.2"));
        assert_eq!(cuda_for_driver("390.1"), None);
    }
}
