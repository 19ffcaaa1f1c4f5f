//! Fake driver hosts for tests and the simulated demo: a driver root in the standard or GKE
//! layout with real tiny ELF libraries carrying the driver's sonames (built with the system C
//! compiler), a fake procfs, device nodes, utilities and firmware.
//!
//! Not used by the shim itself; public so the integration tests and `just demo` can build hosts.

use std::io;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::config::{DriverConfig, ShimConfig};
use crate::ldcache::{self, Entry};

/// Driver version of every fake host.
pub const VERSION: &str = "580.95.05";

/// Where the driver's files live under its root.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// A distribution install: `/usr/lib/<triple>`, `/usr/bin`, `/lib/firmware`, an ld.so.cache.
    Standard,
    /// GKE's `/usr/local/nvidia`: `lib64/`, `bin/`, `firmware/`, no loader cache.
    Gke,
}

/// Libraries a fake host carries: (prefix, soname).
pub const LIBS: [(&str, &str); 8] = [
    ("libcuda.so", "libcuda.so.1"),
    ("libnvidia-ml.so", "libnvidia-ml.so.1"),
    (
        "libnvidia-ptxjitcompiler.so",
        "libnvidia-ptxjitcompiler.so.1",
    ),
    ("libnvidia-nvvm.so", "libnvidia-nvvm.so.4"),
    ("libnvidia-cfg.so", "libnvidia-cfg.so.1"),
    ("libnvidia-encode.so", "libnvidia-encode.so.1"),
    ("libnvcuvid.so", "libnvcuvid.so.1"),
    ("libnvidia-glcore.so", "libnvidia-glcore.so.1"),
];

/// A fake host on disk.
pub struct FakeHost {
    /// Top directory (owned by the caller).
    pub dir: PathBuf,
    /// The driver root.
    pub root: PathBuf,
    /// Root holding `dev/nvidia*`.
    pub dev_root: PathBuf,
    /// Fake procfs.
    pub proc_root: PathBuf,
    /// Layout used.
    pub layout: Layout,
    /// UUIDs of the GPUs, index order.
    pub uuids: Vec<String>,
}

/// Builds a shared library with `soname` exporting `fake_driver_id()` returning `id`.
pub fn build_lib(out: &Path, soname: &str, id: &str) -> io::Result<()> {
    let src = out.with_extension("c");
    std::fs::write(
        &src,
        format!("const char *fake_driver_id(void) {{ return \"{id}\"; }}\n"),
    )?;
    let st = Command::new("cc")
        .args(["-shared", "-fPIC", "-O1", "-nostdlib"])
        .arg(format!("-Wl,-soname,{soname}"))
        .arg("-o")
        .arg(out)
        .arg(&src)
        .status()?;
    std::fs::remove_file(&src)?;
    if !st.success() {
        return Err(io::Error::other(format!(
            "cc failed building {}",
            out.display()
        )));
    }
    Ok(())
}

fn mknod_char(path: &Path, major: u64, minor: u64) -> io::Result<()> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: valid C string; result checked.
    let r = unsafe {
        libc::mknod(
            c.as_ptr(),
            libc::S_IFCHR | 0o666,
            libc::makedev(major as u32, minor as u32),
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl FakeHost {
    /// Builds a host with `gpus` GPUs under `dir`. Device nodes are created when running as root;
    /// otherwise the inventory falls back to `/proc/devices` numbers.
    pub fn build(dir: &Path, layout: Layout, gpus: usize) -> io::Result<Self> {
        let root = match layout {
            Layout::Standard => dir.join("root"),
            Layout::Gke => dir.join("root/usr/local/nvidia"),
        };
        let dev_root = dir.join("devroot");
        let proc_root = dir.join("proc");
        let triple = format!("{}-linux-gnu", std::env::consts::ARCH);
        let (libdir, bindir, fwdir) = match layout {
            Layout::Standard => (
                root.join(format!("usr/lib/{triple}")),
                root.join("usr/bin"),
                root.join(format!("lib/firmware/nvidia/{VERSION}")),
            ),
            Layout::Gke => (
                root.join("lib64"),
                root.join("bin"),
                root.join(format!("firmware/nvidia/{VERSION}")),
            ),
        };
        for d in [&libdir, &bindir, &fwdir, &dev_root.join("dev")] {
            std::fs::create_dir_all(d)?;
        }
        let mut cache = Vec::new();
        for (prefix, soname) in LIBS {
            let file = libdir.join(format!("{prefix}.{VERSION}"));
            build_lib(&file, soname, &format!("real {prefix} {VERSION}"))?;
            symlink(file.file_name().unwrap_or_default(), libdir.join(soname))?;
            let inside = Path::new("/").join(file.strip_prefix(&root).unwrap_or(&file));
            cache.push(Entry::new(
                ldcache::FLAGS_LIB64,
                soname,
                inside.to_string_lossy(),
            ));
        }
        if layout == Layout::Standard {
            std::fs::create_dir_all(root.join("etc"))?;
            std::fs::write(root.join("etc/ld.so.cache"), ldcache::write(&cache))?;
        }
        for b in ["nvidia-smi", "nvidia-debugdump", "nvidia-cuda-mps-control"] {
            let p = bindir.join(b);
            std::fs::write(&p, format!("#!/bin/sh\necho fake {b} {VERSION}\n"))?;
            std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        }
        std::fs::write(fwdir.join("gsp_ga10x.bin"), b"fake firmware")?;

        let gpu_dir = proc_root.join("driver/nvidia/gpus");
        std::fs::create_dir_all(&gpu_dir)?;
        std::fs::write(
            proc_root.join("driver/nvidia/version"),
            format!("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  {VERSION}  Release Build  (fake@fixture)\nGCC version:  gcc\n"),
        )?;
        std::fs::write(
            proc_root.join("devices"),
            "Character devices:\n  1 mem\n195 nvidia-frontend\n236 nvidia-uvm\n237 nvidia-caps\n\nBlock devices:\n  8 sd\n",
        )?;
        let mut uuids = Vec::new();
        for i in 0..gpus {
            let bus = format!("0000:{:02x}:00.0", 0x10 + i);
            let uuid = format!("GPU-{i:08x}-1111-2222-3333-444455556666");
            let d = gpu_dir.join(&bus);
            std::fs::create_dir_all(&d)?;
            std::fs::write(
                d.join("information"),
                format!("Model: \t\t NVIDIA Fake H100\nIRQ:   \t\t 35\nGPU UUID: \t {uuid}\nBus Type: \t PCIe\nBus Location: \t {bus}\nDevice Minor: \t {i}\nGPU Excluded:\t No\n"),
            )?;
            uuids.push(uuid);
        }
        // SAFETY: plain getter.
        if unsafe { libc::geteuid() } == 0 {
            let dev = dev_root.join("dev");
            mknod_char(&dev.join("nvidiactl"), 195, 255)?;
            mknod_char(&dev.join("nvidia-uvm"), 236, 0)?;
            for i in 0..gpus {
                mknod_char(&dev.join(format!("nvidia{i}")), 195, i as u64)?;
            }
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            root,
            dev_root,
            proc_root,
            layout,
            uuids,
        })
    }

    /// A shim config pointing at this host (cache and CDI dirs inside `dir`).
    pub fn config(&self) -> ShimConfig {
        let mut c = ShimConfig {
            driver: DriverConfig {
                root: self.root.clone(),
                dev_root: self.dev_root.clone(),
                proc_root: self.proc_root.clone(),
                nvml_library: Some(self.dir.join("no-nvml.so")),
                cache_dir: self.dir.join("cache"),
            },
            ..Default::default()
        };
        c.gpu.cdi_spec_dirs = vec![self.dir.join("cdi")];
        c
    }

    /// The same config as TOML, for `--runtime-config-path`.
    pub fn config_toml(&self) -> String {
        let c = self.config();
        format!(
            "[driver]\nroot = {:?}\ndev_root = {:?}\nproc_root = {:?}\nnvml_library = {:?}\ncache_dir = {:?}\n[gpu]\ncdi_spec_dirs = [{:?}]\n",
            c.driver.root,
            c.driver.dev_root,
            c.driver.proc_root,
            self.dir.join("no-nvml.so"),
            c.driver.cache_dir,
            self.dir.join("cdi"),
        )
    }
}
