//! Driver files under the driver root: libraries (through the root's ld.so.cache and the usual
//! library directories), utilities, GSP firmware, IPC sockets, graphics configs and device nodes.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::inventory::{Binary, Capability, DeviceNode, Library};
use crate::{elf, ldcache};

/// Joins an absolute host path below a root (`/` joins to itself).
pub fn under(root: &Path, abs: &str) -> PathBuf {
    root.join(abs.trim_start_matches('/'))
}

/// Library directories relative to the driver root, most specific first. The GKE layout puts the
/// driver in `<root>/lib64`; distributions use the multiarch dirs or `/usr/lib64`.
fn lib_dirs(root: &Path) -> Vec<PathBuf> {
    let triple = format!("{}-linux-gnu", std::env::consts::ARCH);
    let mut dirs: Vec<PathBuf> = Vec::new();
    // Directories the root's own loader cache names for driver libraries come first.
    if let Ok(bytes) = std::fs::read(root.join("etc/ld.so.cache")) {
        if let Ok(entries) = ldcache::parse(&bytes) {
            let prefixes: Vec<&str> = Capability::ALL
                .iter()
                .flat_map(|c| c.libraries().iter().copied())
                .collect();
            for e in entries {
                if prefixes.iter().any(|p| e.key.starts_with(p)) {
                    if let Some(parent) = Path::new(&e.value).parent() {
                        let d = under(root, &parent.to_string_lossy());
                        if !dirs.contains(&d) {
                            dirs.push(d);
                        }
                    }
                }
            }
        }
    }
    for rel in [
        "lib64".to_string(),
        format!("usr/lib/{triple}"),
        format!("usr/lib/{triple}/nvidia/current"),
        format!("lib/{triple}"),
        "usr/lib64".into(),
        "usr/lib".into(),
        "lib".into(),
        "usr/lib32".into(),
        "usr/lib/i386-linux-gnu".into(),
        "lib32".into(),
    ] {
        let d = root.join(rel);
        if !dirs.contains(&d) {
            dirs.push(d);
        }
    }
    dirs
}

/// Finds every driver library carrying `driver_version` in its file name.
pub fn libraries(root: &Path, driver_version: &str) -> Vec<Library> {
    let mut wanted: BTreeMap<String, &str> = BTreeMap::new();
    for cap in Capability::ALL {
        for p in cap.libraries() {
            wanted.insert(format!("{p}.{driver_version}"), p);
        }
    }
    let in_root = crate::inroot::Root::open(root).ok();
    let mut seen: BTreeSet<(String, bool)> = BTreeSet::new();
    let mut out = Vec::new();
    for dir in lib_dirs(root) {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut names: Vec<String> = rd
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| wanted.contains_key(n))
            .collect();
        names.sort();
        for name in names {
            let path = dir.join(&name);
            // The versioned name may itself be a link. Links are resolved inside the driver root
            // first (a driver container's absolute links point into it); a root the operator
            // configured may also link out of itself (e.g. into a package store), which is
            // followed on the host. Either way the result must be a regular file.
            let rel = path
                .strip_prefix(root)
                .unwrap_or(&path)
                .to_string_lossy()
                .into_owned();
            let real = in_root
                .as_ref()
                .and_then(|r| r.real_path(&rel).ok())
                .filter(|p| p.is_file())
                .or_else(|| std::fs::canonicalize(&path).ok());
            let Some(real) = real.filter(|p| p.is_file()) else {
                continue;
            };
            let Some(info) = elf::read(&real) else {
                continue;
            };
            let prefix = wanted[&name].to_string();
            if !seen.insert((prefix.clone(), !info.is_64bit)) {
                continue;
            }
            out.push(Library {
                path: real,
                file_name: name,
                soname: info.soname,
                prefix,
                is_32bit: !info.is_64bit,
            });
        }
    }
    out
}

/// Finds the utilities of every capability.
pub fn binaries(root: &Path) -> Vec<Binary> {
    let dirs = ["bin", "usr/bin", "usr/local/bin", "sbin", "usr/sbin"];
    let mut out = Vec::new();
    for cap in Capability::ALL {
        for name in cap.binaries() {
            if out.iter().any(|b: &Binary| b.name == *name) {
                continue;
            }
            let found = dirs
                .iter()
                .map(|d| root.join(d).join(name))
                .find(|p| p.metadata().is_ok_and(|m| m.is_file()));
            if let Some(path) = found {
                out.push(Binary {
                    path,
                    name: name.to_string(),
                });
            }
        }
    }
    out
}

/// GSP firmware of this driver version: (host path, container path).
pub fn firmware(root: &Path, driver_version: &str) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    for base in ["lib/firmware", "usr/lib/firmware", "firmware"] {
        let dir = root.join(base).join("nvidia").join(driver_version);
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut names: Vec<String> = rd
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("gsp") && n.ends_with(".bin"))
            .collect();
        names.sort();
        for n in names {
            out.push((
                dir.join(&n),
                format!("/lib/firmware/nvidia/{driver_version}/{n}"),
            ));
        }
        if !out.is_empty() {
            break;
        }
    }
    out
}

/// IPC sockets of the persistence and fabric manager daemons, looked up in the driver root then
/// on the host: (host path, container path).
pub fn sockets(root: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    for rel in [
        "run/nvidia-persistenced/socket",
        "run/nvidia-fabricmanager/socket",
    ] {
        let candidates = [root.join(rel), Path::new("/").join(rel)];
        if let Some(p) = candidates
            .into_iter()
            .find(|p| p.metadata().is_ok_and(|m| m.file_type().is_socket()))
        {
            out.push((p, format!("/{rel}")));
        }
    }
    out
}

/// The MPS pipe directory when a control daemon is running there.
pub fn mps_pipe_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("CUDA_MPS_PIPE_DIRECTORY")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp/nvidia-mps"));
    dir.join("control").exists().then_some(dir)
}

/// Graphics/display config files present in the root: (host path, container path).
pub fn graphics_files(root: &Path) -> Vec<(PathBuf, String)> {
    [
        "/usr/share/glvnd/egl_vendor.d/10_nvidia.json",
        "/etc/vulkan/icd.d/nvidia_icd.json",
        "/usr/share/vulkan/icd.d/nvidia_icd.json",
        "/etc/vulkan/implicit_layer.d/nvidia_layers.json",
        "/usr/share/vulkan/implicit_layer.d/nvidia_layers.json",
        "/usr/share/egl/egl_external_platform.d/15_nvidia_gbm.json",
        "/usr/share/egl/egl_external_platform.d/10_nvidia_wayland.json",
        "/etc/OpenCL/vendors/nvidia.icd",
        "/usr/share/nvidia/nvoptix.bin",
    ]
    .into_iter()
    .filter_map(|c| {
        // A distribution keeps these under `<root>/usr/share` or `<root>/etc`; the GKE layout
        // puts `usr/share` at `<root>/share` (e.g. `/usr/local/nvidia/share/vulkan/icd.d`).
        let gke = c
            .strip_prefix("/usr/share/")
            .map(|rest| root.join("share").join(rest));
        [Some(under(root, c)), gke]
            .into_iter()
            .flatten()
            .find(|p| p.is_file())
            .map(|p| (p, c.to_string()))
    })
    .collect()
}

/// A character device node under `dev_root`, if present.
pub fn char_node(dev_root: &Path, path: &str) -> Option<DeviceNode> {
    let m = std::fs::metadata(under(dev_root, path)).ok()?;
    if !m.file_type().is_char_device() {
        return None;
    }
    let rdev = m.rdev();
    Some(DeviceNode {
        path: path.to_string(),
        major: libc::major(rdev) as i64,
        minor: libc::minor(rdev) as i64,
        mode: m.mode() & 0o7777,
        uid: m.uid(),
        gid: m.gid(),
    })
}

/// A node the container should get even though the host has not created it yet (e.g.
/// `nvidia-uvm` before its first use): numbers from `/proc/devices`.
pub fn node_from_major(path: &str, major: i64, minor: i64) -> DeviceNode {
    DeviceNode {
        path: path.to_string(),
        major,
        minor,
        mode: 0o666,
        uid: 0,
        gid: 0,
    }
}
