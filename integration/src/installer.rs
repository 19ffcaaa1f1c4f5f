//! The installer image: `nvidia-shim` and the shim binary on a base of nothing but the C
//! library they load (and the loader), so the DaemonSet's container runs `nvidia-shim install`
//! and the NVML it loads from the host finds its libc. Built without Docker, byte for byte the
//! same from the same binaries.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::image;

/// The image's reference (DaemonSets name it; kustomize's `images:` renames it).
pub const IMAGE: &str = "docker.io/nvidia-shim/installer:0.1.0";

/// The binaries the image carries, from the build's output directory.
pub const BINARIES: [&str; 2] = ["nvidia-shim", "containerd-shim-nvidia-v2"];

/// Libraries libnvidia-ml (built against an older glibc) needs beyond what the binaries link.
const DRIVER_NEEDS: [&str; 5] = [
    "libm.so.6",
    "librt.so.1",
    "libgcc_s.so.1",
    "libpthread.so.0",
    "libdl.so.2",
];

/// The shared objects `bin` loads, by the paths `ldd` resolves them to.
fn needed(bin: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(bin)
        .output()
        .context("running ldd")?;
    if !out.status.success() {
        bail!(
            "ldd {}: {}",
            bin.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with('/')))
        .map(PathBuf::from)
        .collect())
}

/// Where the loader finds `name` on this machine.
fn system_lib(name: &str) -> Option<PathBuf> {
    let dir = format!("/usr/lib/{}-linux-gnu", std::env::consts::ARCH);
    [
        Path::new(&dir),
        Path::new("/lib64"),
        Path::new("/usr/lib64"),
    ]
    .iter()
    .map(|d| d.join(name))
    .find(|p| p.exists())
}

fn copy_to(root: &Path, src: &Path, dst: &Path) -> Result<()> {
    let to = root.join(dst.strip_prefix("/").unwrap_or(dst));
    if let Some(d) = to.parent() {
        fs::create_dir_all(d)?;
    }
    // Copies the file a symlink names: the image holds plain files only.
    fs::copy(src, &to).with_context(|| format!("copying {}", src.display()))?;
    Ok(())
}

/// Lays out the installer's root filesystem under `root` from the binaries in `bin_dir`.
pub fn rootfs(bin_dir: &Path, root: &Path) -> Result<()> {
    let mut libs = Vec::new();
    for b in BINARIES {
        let src = bin_dir.join(b);
        copy_to(root, &src, &Path::new("/usr/local/bin").join(b))?;
        libs.extend(needed(&src)?);
    }
    libs.sort();
    libs.dedup();
    for n in DRIVER_NEEDS {
        if !libs.iter().any(|l| l.file_name() == Some(n.as_ref())) {
            libs.extend(system_lib(n));
        }
    }
    for l in &libs {
        copy_to(root, l, l)?;
    }
    let tmp = root.join("tmp");
    fs::create_dir_all(&tmp)?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o1777))?;
    // Directories get one mode whatever the umask was, for a reproducible archive.
    for e in walk(root)? {
        if e.is_dir() && e != tmp {
            fs::set_permissions(&e, fs::Permissions::from_mode(0o755))?;
        }
    }
    Ok(())
}

fn walk(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = vec![dir.to_path_buf()];
    for e in fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() && !p.is_symlink() {
            out.extend(walk(&p)?);
        }
    }
    Ok(out)
}

/// Builds the installer image archive at `out` from the binaries in `bin_dir`.
pub fn build(bin_dir: &Path, out: &Path) -> Result<()> {
    let work = tempfile::tempdir()?;
    let root = work.path().join("rootfs");
    fs::create_dir(&root)?;
    rootfs(bin_dir, &root)?;
    let archive = image::pack_image(
        &root,
        IMAGE,
        work.path(),
        &[],
        &[
            "/usr/local/bin/nvidia-shim",
            "install",
            "--host-root",
            "/host",
            "--wait",
        ],
    )?;
    fs::copy(&archive, out).with_context(|| format!("writing {}", out.display()))?;
    Ok(())
}
