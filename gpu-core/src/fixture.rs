//! Fake driver hosts for tests and the simulated demo: a driver root in the standard or GKE
//! layout with real tiny ELF libraries carrying the driver's sonames (built with the system C
//! compiler), a fake procfs, device nodes, utilities and firmware.
//!
//! Not used by the shim itself; public so the integration tests and `just demo` can build hosts.

pub mod fake_cuda;
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

/// The file listing the GPU processes the fake NVML at `nvml` reports.
pub fn processes_file(nvml: &Path) -> PathBuf {
    let mut p = nvml.as_os_str().to_owned();
    p.push(".processes");
    PathBuf::from(p)
}

/// A process the fake NVML reports on a GPU.
#[derive(Clone, Debug)]
pub struct FakeProcess {
    /// GPU UUID.
    pub uuid: String,
    /// Host PID.
    pub pid: u32,
    /// GPU memory used, bytes.
    pub used_bytes: u64,
    /// SM utilization, percent.
    pub sm: u32,
    /// Memory-controller utilization, percent.
    pub mem: u32,
    /// A graphics (rather than compute) context.
    pub graphics: bool,
}

/// The file whose number (milliseconds) makes the fake NVML at `nvml` slow to initialise.
pub fn delay_file(nvml: &Path) -> PathBuf {
    let mut p = nvml.as_os_str().to_owned();
    p.push(".delay-ms");
    PathBuf::from(p)
}

/// The file a slow fake NVML creates when its initialisation begins (so a test knows a Create
/// is inside the GPU stage without guessing at timing).
pub fn started_file(nvml: &Path) -> PathBuf {
    let mut p = nvml.as_os_str().to_owned();
    p.push(".init-started");
    PathBuf::from(p)
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

/// Builds a fake libnvidia-ml at `out` implementing the NVML calls discovery makes, describing
/// `gpus` GPUs; with `mig`, GPU 0 is in MIG mode with two devices (GI 1/CI 0 and GI 2/CI 0).
pub fn build_fake_nvml(out: &Path, gpus: usize, mig: bool) -> io::Result<()> {
    let mut migs = String::new();
    let mut table = String::new();
    for i in 0..gpus {
        let migs_of = if mig && i == 0 {
            for (m, gi) in [(0usize, 1u32), (1, 2)] {
                migs.push_str(&format!(
                    "{{1, \"{}\", \"NVIDIA Fake H100 MIG 1g.10gb\", \"\", 0, 2, 9, 0, 10ULL<<30, 0, 0, 0, {gi}, 0}},\n",
                    mig_uuid(i, m)
                ));
            }
            "2, MIGS0"
        } else {
            "0, 0"
        };
        table.push_str(&format!(
            "{{0, \"{}\", \"NVIDIA Fake H100\", \"00000000:{:02X}:00.0\", {i}, 2, 9, 0, 80ULL<<30, {}, {migs_of}, 0, 0}},\n",
            gpu_uuid(i),
            0x10 + i,
            u8::from(mig && i == 0),
        ));
    }
    let src = format!(
        r#"#include <string.h>
#include <sys/time.h>
#include <stdio.h>
#include <unistd.h>
typedef struct dev {{ int is_mig; const char *uuid, *name, *bus; unsigned minor; int brand, ccmaj, ccmin;
  unsigned long long mem; unsigned mig_mode; unsigned nmig; struct dev *migs; unsigned gi, ci; }} dev;
static dev MIGS0[] = {{ {migs} {{0}} }};
static dev GPUS[] = {{ {table} {{0}} }};
static const unsigned NGPU = {gpus};
typedef struct {{ char busIdLegacy[16]; unsigned domain, bus, device, pciDeviceId, pciSubSystemId; char busId[32]; }} pci;
typedef struct {{ unsigned version; unsigned long long total, reserved, free, used; }} mem2;
static void cp(char *b, const char *s, unsigned n) {{ strncpy(b, s, n); b[n - 1] = 0; }}
/* A slow driver (NVML initialising GPUs without persistence mode) is simulated by writing a
   number of milliseconds to the file next to this library named <library>.delay-ms. */
static void slow_init(void) {{ FILE *f = fopen("{delay}", "r"); int ms = 0;
  if (f) {{ if (fscanf(f, "%d", &ms) == 1 && ms > 0) {{ FILE *m = fopen("{started}", "w"); if (m) fclose(m);
    usleep((unsigned)ms * 1000); }} fclose(f); }} }}
int nvmlInit_v2(void) {{ slow_init(); return 0; }}
int nvmlInitWithFlags(unsigned f) {{ (void)f; slow_init(); return 0; }}
int nvmlShutdown(void) {{ return 0; }}
const char *nvmlErrorString(int r) {{ (void)r; return "fake NVML error"; }}
int nvmlSystemGetCudaDriverVersion_v2(int *v) {{ *v = 13000; return 0; }}
int nvmlSystemGetCudaDriverVersion(int *v) {{ *v = 13000; return 0; }}
int nvmlSystemGetDriverVersion(char *b, unsigned n) {{ cp(b, "{VERSION}", n); return 0; }}
int nvmlDeviceGetCount_v2(unsigned *c) {{ *c = NGPU; return 0; }}
int nvmlDeviceGetHandleByIndex_v2(unsigned i, dev **d) {{ if (i >= NGPU) return 2; *d = &GPUS[i]; return 0; }}
int nvmlDeviceGetUUID(dev *d, char *b, unsigned n) {{ cp(b, d->uuid, n); return 0; }}
int nvmlDeviceGetName(dev *d, char *b, unsigned n) {{ cp(b, d->name, n); return 0; }}
int nvmlDeviceGetPciInfo_v3(dev *d, pci *p) {{ memset(p, 0, sizeof *p); cp(p->busId, d->bus, 32); return 0; }}
int nvmlDeviceGetMinorNumber(dev *d, unsigned *m) {{ if (d->is_mig) return 3; *m = d->minor; return 0; }}
int nvmlDeviceGetBrand(dev *d, int *b) {{ *b = d->brand; return 0; }}
int nvmlDeviceGetCudaComputeCapability(dev *d, int *a, int *b) {{ *a = d->ccmaj; *b = d->ccmin; return 0; }}
int nvmlDeviceGetMemoryInfo_v2(dev *d, mem2 *m) {{ m->total = d->mem; m->free = d->mem; m->used = 0; m->reserved = 0; return 0; }}
int nvmlDeviceGetMigMode(dev *d, unsigned *c, unsigned *p) {{ if (d->is_mig) return 3; *c = d->mig_mode; *p = d->mig_mode; return 0; }}
int nvmlDeviceGetMaxMigDeviceCount(dev *d, unsigned *c) {{ *c = d->mig_mode ? 7 : 0; return 0; }}
int nvmlDeviceGetMigDeviceHandleByIndex(dev *d, unsigned i, dev **m) {{ if (i >= d->nmig) return 6; *m = &d->migs[i]; return 0; }}
int nvmlDeviceGetGpuInstanceId(dev *d, unsigned *id) {{ *id = d->gi; return 0; }}
int nvmlDeviceGetComputeInstanceId(dev *d, unsigned *id) {{ *id = d->ci; return 0; }}
/* GPU processes: lines "<uuid> <pid> <bytes> <sm%> <mem%> <c|g>" in <library>.processes. */
typedef struct {{ unsigned pid; unsigned long long used; unsigned gi, ci; }} procinfo;
typedef struct {{ unsigned pid; unsigned long long ts; unsigned sm, mem, enc, dec; }} usample;
static unsigned procs(dev *d, char kind, procinfo *out, usample *smp, unsigned max) {{
  FILE *f = fopen("{processes}", "r"); unsigned n = 0; char u[128], k; unsigned pid, sm, mem;
  unsigned long long used; struct timeval tv; gettimeofday(&tv, 0);
  if (!f) return 0;
  while (fscanf(f, "%127s %u %llu %u %u %c", u, &pid, &used, &sm, &mem, &k) == 6) {{
    if (strcmp(u, d->uuid) || (kind && k != kind)) continue;
    if (out && n < max) {{ out[n].pid = pid; out[n].used = used; out[n].gi = 0xFFFFFFFF; out[n].ci = 0xFFFFFFFF; }}
    if (smp && n < max) {{ memset(&smp[n], 0, sizeof smp[n]); smp[n].pid = pid; smp[n].sm = sm; smp[n].mem = mem;
      smp[n].ts = (unsigned long long)tv.tv_sec * 1000000ULL + (unsigned long long)tv.tv_usec; }}
    n++;
  }}
  fclose(f); return n;
}}
static int running(dev *d, char kind, unsigned *count, procinfo *p) {{
  unsigned n = procs(d, kind, 0, 0, 0);
  if (!p || *count < n) {{ *count = n; return n ? 7 : 0; }}
  *count = procs(d, kind, p, 0, *count); return 0;
}}
int nvmlDeviceGetComputeRunningProcesses_v3(dev *d, unsigned *c, procinfo *p) {{ return running(d, 'c', c, p); }}
int nvmlDeviceGetGraphicsRunningProcesses_v3(dev *d, unsigned *c, procinfo *p) {{ return running(d, 'g', c, p); }}
int nvmlDeviceGetProcessUtilization(dev *d, usample *s, unsigned *count, unsigned long long last) {{
  unsigned n = procs(d, 0, 0, 0, 0); (void)last;
  if (!n) return 6;
  if (!s || *count < n) {{ *count = n; return 7; }}
  *count = procs(d, 0, 0, s, *count); return 0;
}}
"#,
        delay = delay_file(out).display(),
        started = started_file(out).display(),
        processes = processes_file(out).display()
    );
    let c = out.with_extension("c");
    std::fs::write(&c, src)?;
    let st = Command::new("cc")
        .args([
            "-shared",
            "-fPIC",
            "-O1",
            "-Wl,-soname,libnvidia-ml.so.1",
            "-o",
        ])
        .arg(out)
        .arg(&c)
        .status()?;
    std::fs::remove_file(&c)?;
    if !st.success() {
        return Err(io::Error::other("cc failed building the fake NVML"));
    }
    Ok(())
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

    /// A shim config pointing at this host (cache and CDI dirs inside `dir`).
    pub fn config(&self) -> ShimConfig {
        let mut c = ShimConfig {
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
