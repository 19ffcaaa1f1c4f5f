//! Fake driver hosts for tests and the simulated demo: a driver root in the standard or GKE
//! layout with real tiny ELF libraries carrying the driver's sonames (built with the system C
//! compiler), a fake procfs, device nodes, utilities and firmware.
//!
//! Not used by the shim itself; public so the integration tests and `just demo` can build hosts.

pub mod fake_cuda;
mod fake_nvml;

pub use fake_nvml::{build_fake_nvml, delay_file, processes_file, started_file, FakeProcess};
use std::io;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::config::{CoreConfig, DriverConfig};
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
    build_lib_with(out, soname, id, &[])
}

fn build_lib_with(out: &Path, soname: &str, id: &str, extra: &[&str]) -> io::Result<()> {
    let src = out.with_extension("c");
    std::fs::write(
        &src,
        format!("const char *fake_driver_id(void) {{ return \"{id}\"; }}\n"),
    )?;
    let st = Command::new("cc")
        .args(["-shared", "-fPIC", "-O1", "-nostdlib"])
        .args(extra)
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

/// UUID of fake GPU `i`.
pub fn gpu_uuid(i: usize) -> String {
    format!("GPU-{i:08x}-1111-2222-3333-444455556666")
}

/// UUID of MIG device `m` of fake GPU `i`.
pub fn mig_uuid(i: usize, m: usize) -> String {
    format!("MIG-{i:04x}{m:04x}-aaaa-bbbb-cccc-ddddeeeeffff")
}

/// An ld.so.cache crafted as an attacker would: `n` entries whose keys and values all point at
/// one `len`-byte string, so a reader that copies each entry's strings allocates `2·n·len` bytes.
pub fn crafted_ld_cache(n: usize, len: usize) -> Vec<u8> {
    let one = ldcache::write(&[Entry::new(ldcache::FLAGS_LIB64, "a", "b")]);
    // Header of the writer's own output: magic (20), count, string size, flags, padding (48).
    let header = &one[..48];
    let strings_at = 48 + n * 24;
    let mut b = Vec::with_capacity(strings_at + len + 1);
    b.extend_from_slice(&header[..20]);
    b.extend_from_slice(&(n as u32).to_ne_bytes());
    b.extend_from_slice(&((len + 1) as u32).to_ne_bytes());
    b.extend_from_slice(&header[28..48]);
    for _ in 0..n {
        b.extend_from_slice(&ldcache::FLAGS_LIB64.to_ne_bytes());
        b.extend_from_slice(&(strings_at as u32).to_ne_bytes());
        b.extend_from_slice(&(strings_at as u32).to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes());
        b.extend_from_slice(&0u64.to_ne_bytes());
    }
    b.resize(strings_at + len, b'a');
    b.push(0);
    b
}

impl FakeHost {
    /// Like [`FakeHost::build`], plus a fake NVML the config points at; with `mig`, GPU 0 is in
    /// MIG mode with two MIG devices whose capability minors are in the fake procfs.
    pub fn build_with_nvml(dir: &Path, layout: Layout, gpus: usize, mig: bool) -> io::Result<Self> {
        let host = Self::build(dir, layout, gpus)?;
        build_fake_nvml(&dir.join("fake-nvml.so"), gpus, mig)?;
        if mig {
            std::fs::create_dir_all(host.proc_root.join("driver/nvidia-caps"))?;
            std::fs::write(
                host.proc_root.join("driver/nvidia-caps/mig-minors"),
                "config 1\nmonitor 2\ngpu0/gi1/access 12\ngpu0/gi1/ci0/access 13\ngpu0/gi2/access 21\ngpu0/gi2/ci0/access 22\n",
            )?;
        }
        Ok(host)
    }

    /// Replaces the host's libcuda with [`fake_cuda`]'s (checkpoint API that records calls);
    /// returns its path.
    pub fn install_fake_cuda(&self) -> io::Result<PathBuf> {
        let lib = self
            .config()
            .driver
            .root
            .join("lib64")
            .join(format!("libcuda.so.{VERSION}"));
        if !lib.is_file() {
            return Err(io::Error::other(format!("no {} to replace", lib.display())));
        }
        fake_cuda::build(&lib)?;
        Ok(lib)
    }

    /// Makes the fake NVML report `procs` as the GPUs' running processes.
    pub fn set_nvml_processes(&self, procs: &[FakeProcess]) -> io::Result<()> {
        let text: String = procs
            .iter()
            .map(|p| {
                format!(
                    "{} {} {} {} {} {}\n",
                    p.uuid,
                    p.pid,
                    p.used_bytes,
                    p.sm,
                    p.mem,
                    if p.graphics { 'g' } else { 'c' }
                )
            })
            .collect();
        std::fs::write(processes_file(&self.dir.join("fake-nvml.so")), text)
    }

    /// Makes the fake NVML take `ms` milliseconds to initialise (0: no delay); returns the file
    /// that appears once an initialisation has begun.
    pub fn set_nvml_delay(&self, ms: u64) -> io::Result<PathBuf> {
        let nvml = self.dir.join("fake-nvml.so");
        std::fs::write(delay_file(&nvml), ms.to_string())?;
        Ok(started_file(&nvml))
    }

    fn nvml_path(&self) -> PathBuf {
        let fake = self.dir.join("fake-nvml.so");
        if fake.exists() {
            fake
        } else {
            self.dir.join("no-nvml.so")
        }
    }

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
            let uuid = gpu_uuid(i);
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

    /// Adds the device classes beyond GPUs (needs root, for mknod): IMEX channels 0–2, the
    /// InfiniBand `uverbs0` and `rdma_cm`, `nvidia-fs0`/`1`, `nvidia-nvswitchctl` and
    /// `nvidia-nvswitch0`, `gdrdrv`, and DRM card and render nodes for GPUs 0 and 1, linked by
    /// PCI bus under `dev/dri/by-path` (GPU 0's are `card1`/`renderD129`, GPU 1's
    /// `card0`/`renderD128`: the numbering need not follow the GPUs').
    pub fn add_device_classes(&self) -> io::Result<()> {
        let dev = self.dev_root.join("dev");
        for d in ["nvidia-caps-imex-channels", "infiniband", "dri/by-path"] {
            std::fs::create_dir_all(dev.join(d))?;
        }
        for i in 0..3 {
            mknod_char(
                &dev.join(format!("nvidia-caps-imex-channels/channel{i}")),
                234,
                i,
            )?;
        }
        mknod_char(&dev.join("infiniband/uverbs0"), 231, 192)?;
        mknod_char(&dev.join("infiniband/rdma_cm"), 10, 58)?;
        mknod_char(&dev.join("nvidia-fs0"), 243, 0)?;
        mknod_char(&dev.join("nvidia-fs1"), 243, 1)?;
        mknod_char(&dev.join("nvidia-nvswitchctl"), 241, 255)?;
        mknod_char(&dev.join("nvidia-nvswitch0"), 241, 0)?;
        mknod_char(&dev.join("gdrdrv"), 240, 0)?;
        for (gpu, card, render) in [(0u64, 1u64, 129u64), (1, 0, 128)] {
            mknod_char(&dev.join(format!("dri/card{card}")), 226, card)?;
            mknod_char(&dev.join(format!("dri/renderD{render}")), 226, render)?;
            let bus = format!("0000:{:02x}:00.0", 0x10 + gpu);
            symlink(
                format!("../card{card}"),
                dev.join(format!("dri/by-path/pci-{bus}-card")),
            )?;
            symlink(
                format!("../renderD{render}"),
                dev.join(format!("dri/by-path/pci-{bus}-render")),
            )?;
        }
        Ok(())
    }

    /// Adds a 32-bit (i386) build of a driver library in the root's 32-bit library directory, for
    /// `compat32`. Needs only the compiler's `-m32` code generation (no 32-bit libc).
    pub fn add_32bit_lib(&self, prefix: &str, soname: &str) -> io::Result<PathBuf> {
        let dir = match self.layout {
            Layout::Standard => self.root.join("usr/lib/i386-linux-gnu"),
            Layout::Gke => self.root.join("lib"),
        };
        std::fs::create_dir_all(&dir)?;
        let file = dir.join(format!("{prefix}.{VERSION}"));
        build_lib_with(
            &file,
            soname,
            &format!("real32 {prefix} {VERSION}"),
            &["-m32"],
        )?;
        Ok(file)
    }

    /// Writes a CDI spec (kind `bench.example/lib`, device `many`) mounting `n` distinct driver
    /// libraries (tiny ELFs, each with its own soname) into the multiarch dir; returns the
    /// device's qualified name. For measuring how Create scales with
    /// the number of libraries.
    pub fn write_many_libs_cdi(&self, n: usize) -> io::Result<String> {
        let libs = self.dir.join("bench-libs");
        std::fs::create_dir_all(&libs)?;
        let triple = format!("{}-linux-gnu", std::env::consts::ARCH);
        let mut mounts = String::new();
        for i in 0..n {
            let name = format!("libbench{i}.so.1");
            let f = libs.join(&name);
            if !f.exists() {
                build_lib(&f, &name, "bench")?;
            }
            mounts.push_str(&format!(
                "        - hostPath: {}\n          containerPath: /usr/lib/{triple}/libbench{i}.so.1\n          options: [ro, nosuid, nodev, rbind, rprivate]\n",
                f.display()
            ));
        }
        let cdi = self.dir.join("cdi");
        std::fs::create_dir_all(&cdi)?;
        std::fs::write(
            cdi.join("bench.yaml"),
            format!(
                "cdiVersion: 0.6.0\nkind: bench.example/lib\ndevices:\n  - name: many\n    containerEdits:\n      mounts:\n{mounts}"
            ),
        )?;
        Ok("bench.example/lib=many".into())
    }

    /// The config sections gpu-core reads, pointing at this host (cache and CDI dirs inside `dir`).
    pub fn config(&self) -> CoreConfig {
        let mut c = CoreConfig {
            driver: DriverConfig {
                root: self.root.clone(),
                dev_root: self.dev_root.clone(),
                proc_root: self.proc_root.clone(),
                nvml_library: Some(self.nvml_path()),
                cache_dir: self.dir.join("cache"),
            },
            ..Default::default()
        };
        c.gpu.cdi_spec_dirs = vec![self.dir.join("cdi")];
        c
    }

    /// Writes [`FakeHost::config`] as TOML to `<dir>/shim.toml` (for `--runtime-config-path` and
    /// `nvidia-shim --config`); returns its path.
    pub fn write_config(&self) -> io::Result<String> {
        let path = self.dir.join("shim.toml");
        std::fs::write(&path, self.config_toml())?;
        Ok(path.display().to_string())
    }

    fn config_toml(&self) -> String {
        let c = self.config();
        format!(
            "[driver]\nroot = {:?}\ndev_root = {:?}\nproc_root = {:?}\nnvml_library = {:?}\ncache_dir = {:?}\n[gpu]\ncdi_spec_dirs = [{:?}]\n",
            c.driver.root,
            c.driver.dev_root,
            c.driver.proc_root,
            self.nvml_path(),
            c.driver.cache_dir,
            self.dir.join("cdi"),
        )
    }
}
