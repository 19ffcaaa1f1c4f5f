//! cgroup v1 and v2: the container's cgroup found from its init pid, metrics for Stats, and OOM
//! watchers (v1: eventfd on `memory.oom_control`; v2: inotify on `memory.events`).

use std::fs;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use containerd_shim_protos::cgroups::metrics as v1;
use containerd_shim_protos::cgroups_v2::metrics as v2;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::MessageFull;
use tokio::io::unix::AsyncFd;

const ROOT: &str = "/sys/fs/cgroup";

/// The cgroup of a container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cgroup {
    /// Unified hierarchy: one directory.
    V2(PathBuf),
    /// Per-controller directories.
    V1 {
        /// The memory controller's directory.
        memory: Option<PathBuf>,
        /// The cpuacct controller's directory.
        cpuacct: Option<PathBuf>,
        /// The pids controller's directory.
        pids: Option<PathBuf>,
    },
}

/// Whether this host runs the unified hierarchy.
pub fn is_v2() -> bool {
    Path::new(ROOT).join("cgroup.controllers").exists()
}

/// Parses `/proc/<pid>/cgroup` text into the container's cgroup.
pub fn parse_proc_cgroup(text: &str, v2: bool, root: &Path) -> Option<Cgroup> {
    if v2 {
        let rel = text.lines().find_map(|l| l.strip_prefix("0::"))?;
        return Some(Cgroup::V2(root.join(rel.trim_start_matches('/'))));
    }
    let (mut memory, mut cpuacct, mut pids) = (None, None, None);
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
        let rel = path.trim_start_matches('/');
        for c in ctrls.split(',') {
            let dir = root.join(ctrls).join(rel);
            match c {
                "memory" => memory = Some(dir),
                "cpuacct" => cpuacct = Some(dir),
                "pids" => pids = Some(dir),
                _ => {}
            }
        }
    }
    Some(Cgroup::V1 {
        memory,
        cpuacct,
        pids,
    })
}

/// The cgroup `/proc/<pid>/cgroup` text names, on this host's hierarchy.
pub fn of_text(text: &str) -> Option<Cgroup> {
    parse_proc_cgroup(text, is_v2(), Path::new(ROOT))
}

fn read_u64(p: &Path) -> u64 {
    fs::read_to_string(p)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

fn read_max(p: &Path) -> u64 {
    match fs::read_to_string(p) {
        Ok(s) if s.trim() == "max" => u64::MAX,
        Ok(s) => s.trim().parse().unwrap_or(0),
        Err(_) => 0,
    }
}

fn kv(p: &Path) -> Vec<(String, u64)> {
    fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            Some((it.next()?.to_string(), it.next()?.parse().ok()?))
        })
        .collect()
}

fn pack<M: MessageFull>(m: &M) -> Any {
    let mut any = Any::new();
    any.type_url = M::descriptor().full_name().to_string();
    any.value = m.write_to_bytes().unwrap_or_default();
    any
}

/// cgroup v2 metrics of `dir`.
fn metrics_v2(dir: &Path) -> v2::Metrics {
    let mut m = v2::Metrics::new();
    let mut pids = v2::PidsStat::new();
    pids.current = read_u64(&dir.join("pids.current"));
    pids.limit = read_max(&dir.join("pids.max"));
    m.pids = Some(pids).into();
    let mut cpu = v2::CPUStat::new();
    for (k, v) in kv(&dir.join("cpu.stat")) {
        match k.as_str() {
            "usage_usec" => cpu.usage_usec = v,
            "user_usec" => cpu.user_usec = v,
            "system_usec" => cpu.system_usec = v,
            "nr_periods" => cpu.nr_periods = v,
            "nr_throttled" => cpu.nr_throttled = v,
            "throttled_usec" => cpu.throttled_usec = v,
            _ => {}
        }
    }
    m.cpu = Some(cpu).into();
    let mut mem = v2::MemoryStat::new();
    mem.usage = read_u64(&dir.join("memory.current"));
    mem.usage_limit = read_max(&dir.join("memory.max"));
    mem.swap_usage = read_u64(&dir.join("memory.swap.current"));
    mem.swap_limit = read_max(&dir.join("memory.swap.max"));
    for (k, v) in kv(&dir.join("memory.stat")) {
        match k.as_str() {
            "anon" => mem.anon = v,
            "file" => mem.file = v,
            "kernel_stack" => mem.kernel_stack = v,
            "slab" => mem.slab = v,
            "sock" => mem.sock = v,
            "shmem" => mem.shmem = v,
            "file_mapped" => mem.file_mapped = v,
            "file_dirty" => mem.file_dirty = v,
            "pgfault" => mem.pgfault = v,
            "pgmajfault" => mem.pgmajfault = v,
            "inactive_file" => mem.inactive_file = v,
            "active_file" => mem.active_file = v,
            "inactive_anon" => mem.inactive_anon = v,
            "active_anon" => mem.active_anon = v,
            _ => {}
        }
    }
    m.memory = Some(mem).into();
    let mut ev = v2::MemoryEvents::new();
    for (k, v) in kv(&dir.join("memory.events")) {
        match k.as_str() {
            "low" => ev.low = v,
            "high" => ev.high = v,
            "max" => ev.max = v,
            "oom" => ev.oom = v,
            "oom_kill" => ev.oom_kill = v,
            _ => {}
        }
    }
    m.memory_events = Some(ev).into();
    m
}

/// cgroup v1 metrics from the controllers' directories.
fn metrics_v1(memory: Option<&Path>, cpuacct: Option<&Path>, pids: Option<&Path>) -> v1::Metrics {
    let mut m = v1::Metrics::new();
    if let Some(d) = pids {
        let mut p = v1::PidsStat::new();
        p.current = read_u64(&d.join("pids.current"));
        p.limit = match fs::read_to_string(d.join("pids.max")) {
            Ok(s) if s.trim() == "max" => 0,
            Ok(s) => s.trim().parse().unwrap_or(0),
            Err(_) => 0,
        };
        m.pids = Some(p).into();
    }
    if let Some(d) = cpuacct {
        let mut usage = v1::CPUUsage::new();
        usage.total = read_u64(&d.join("cpuacct.usage"));
        usage.user = read_u64(&d.join("cpuacct.usage_user"));
        usage.kernel = read_u64(&d.join("cpuacct.usage_sys"));
        usage.per_cpu = fs::read_to_string(d.join("cpuacct.usage_percpu"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|s| s.parse().ok())
            .collect();
        let mut cpu = v1::CPUStat::new();
        cpu.usage = Some(usage).into();
        m.cpu = Some(cpu).into();
    }
    if let Some(d) = memory {
        let mut mem = v1::MemoryStat::new();
        let entry = |prefix: &str| {
            let mut e = v1::MemoryEntry::new();
            e.usage = read_u64(&d.join(format!("{prefix}usage_in_bytes")));
            e.limit = read_u64(&d.join(format!("{prefix}limit_in_bytes")));
            e.max = read_u64(&d.join(format!("{prefix}max_usage_in_bytes")));
            e.failcnt = read_u64(&d.join(format!("{prefix}failcnt")));
            e
        };
        mem.usage = Some(entry("memory.")).into();
        mem.swap = Some(entry("memory.memsw.")).into();
        mem.kernel = Some(entry("memory.kmem.")).into();
        for (k, v) in kv(&d.join("memory.stat")) {
            match k.as_str() {
                "cache" => mem.cache = v,
                "rss" => mem.rss = v,
                "rss_huge" => mem.rss_huge = v,
                "mapped_file" => mem.mapped_file = v,
                "dirty" => mem.dirty = v,
                "writeback" => mem.writeback = v,
                "pgfault" => mem.pg_fault = v,
                "pgmajfault" => mem.pg_maj_fault = v,
                "inactive_anon" => mem.inactive_anon = v,
                "active_anon" => mem.active_anon = v,
                "inactive_file" => mem.inactive_file = v,
                "active_file" => mem.active_file = v,
                "unevictable" => mem.unevictable = v,
                "total_inactive_file" => mem.total_inactive_file = v,
                "total_rss" => mem.total_rss = v,
                "total_cache" => mem.total_cache = v,
                _ => {}
            }
        }
        m.memory = Some(mem).into();
    }
    m
}

impl Cgroup {
    /// Whether the cgroup still exists.
    pub fn exists(&self) -> bool {
        match self {
            Cgroup::V2(p) => p.exists(),
            Cgroup::V1 {
                memory,
                cpuacct,
                pids,
            } => [memory, cpuacct, pids]
                .iter()
                .any(|d| d.as_ref().is_some_and(|d| d.exists())),
        }
    }

    /// Metrics as `Any`: `io.containerd.cgroups.v1.Metrics` or `io.containerd.cgroups.v2.Metrics`.
    pub fn metrics(&self) -> Any {
        match self {
            Cgroup::V2(dir) => pack(&metrics_v2(dir)),
            Cgroup::V1 {
                memory,
                cpuacct,
                pids,
            } => pack(&metrics_v1(
                memory.as_deref(),
                cpuacct.as_deref(),
                pids.as_deref(),
            )),
        }
    }

    /// Waits for the next OOM kill in this cgroup; returns `false` when the cgroup is gone (or cannot
    /// be watched) and no more OOM events will come.
    pub fn oom_watcher(&self) -> Option<OomWatcher> {
        match self {
            Cgroup::V2(dir) => {
                let ino = nix::sys::inotify::Inotify::init(
                    nix::sys::inotify::InitFlags::IN_NONBLOCK
                        | nix::sys::inotify::InitFlags::IN_CLOEXEC,
                )
                .ok()?;
                ino.add_watch(
                    &dir.join("memory.events"),
                    nix::sys::inotify::AddWatchFlags::IN_MODIFY,
                )
                .ok()?;
                let fd: OwnedFd = ino.into();
                let last = oom_kills(dir);
                Some(OomWatcher {
                    fd: Some(crate::io::register(fd).ok()?),
                    kind: OomKind::V2 {
                        dir: dir.clone(),
                        last,
                    },
                })
            }
            Cgroup::V1 {
                memory: Some(dir), ..
            } => {
                // SAFETY: eventfd with valid flags.
                let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
                if efd < 0 {
                    return None;
                }
                // SAFETY: fd just created and owned here.
                let efd = unsafe { OwnedFd::from_raw_fd(efd) };
                let ctl = fs::File::open(dir.join("memory.oom_control")).ok()?;
                fs::write(
                    dir.join("cgroup.event_control"),
                    format!("{} {}", efd.as_raw_fd(), ctl.as_raw_fd()),
                )
                .ok()?;
                Some(OomWatcher {
                    fd: Some(crate::io::register(efd).ok()?),
                    kind: OomKind::V1 {
                        dir: dir.clone(),
                        _ctl: ctl,
                    },
                })
            }
            Cgroup::V1 { memory: None, .. } => None,
        }
    }
}

impl Cgroup {
    /// How many processes of this cgroup the kernel's OOM killer has killed so far (cgroup v2
    /// `memory.events`, v1 `memory.oom_control` on kernels that count); `None` when unknown.
    pub fn oom_kill_count(&self) -> Option<u64> {
        match self {
            Cgroup::V2(dir) => dir.exists().then(|| oom_kills(dir)),
            Cgroup::V1 {
                memory: Some(dir), ..
            } => kv(&dir.join("memory.oom_control"))
                .into_iter()
                .find(|(k, _)| k == "oom_kill")
                .map(|(_, v)| v),
            Cgroup::V1 { .. } => None,
        }
    }
}

fn oom_kills(dir: &Path) -> u64 {
    kv(&dir.join("memory.events"))
        .into_iter()
        .find(|(k, _)| k == "oom_kill")
        .map(|(_, v)| v)
        .unwrap_or(0)
}

enum OomKind {
    V1 { dir: PathBuf, _ctl: fs::File },
    V2 { dir: PathBuf, last: u64 },
}

/// An armed OOM watcher.
pub struct OomWatcher {
    fd: Option<AsyncFd<OwnedFd>>,
    kind: OomKind,
}

impl Drop for OomWatcher {
    fn drop(&mut self) {
        // Closing an inotify fd waits for an SRCU grace period in the kernel (10–20 ms on a
        // large VM). The shim runs one thread, so a close there would hold back every reply —
        // it delayed Wait on each container exit. Deregister here, close elsewhere.
        if let Some(fd) = self.fd.take() {
            let fd = fd.into_inner();
            if matches!(self.kind, OomKind::V2 { .. }) {
                let _ = std::thread::Builder::new()
                    .name("close-inotify".into())
                    .spawn(move || drop(fd));
            }
        }
    }
}

impl OomWatcher {
    /// Resolves at the next OOM; `false` when the cgroup went away.
    pub async fn next(&mut self) -> bool {
        loop {
            let Some(fd) = self.fd.as_ref() else {
                return false;
            };
            let Ok(mut guard) = fd.readable().await else {
                return false;
            };
            let mut buf = [0u8; 4096];
            let _ = guard.try_io(|inner| {
                // SAFETY: read into a valid buffer from an fd we own.
                let n =
                    unsafe { libc::read(inner.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
                if n < 0 {
                    Err(std::io::Error::last_os_error())
                } else {
                    Ok(n)
                }
            });
            match &mut self.kind {
                // The eventfd also fires when the cgroup is removed.
                OomKind::V1 { dir, .. } => return dir.exists(),
                OomKind::V2 { dir, last } => {
                    if !dir.exists() {
                        return false;
                    }
                    let now = oom_kills(dir);
                    if now > *last {
                        *last = now;
                        return true;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_shim_protos::protobuf::Message;

    #[test]
    fn parses_proc_cgroup() {
        let v2 = parse_proc_cgroup(
            "0::/system.slice/x.scope\n",
            true,
            Path::new("/sys/fs/cgroup"),
        )
        .unwrap();
        assert_eq!(v2, Cgroup::V2("/sys/fs/cgroup/system.slice/x.scope".into()));
        let text = "12:pids:/default/c1\n4:memory:/default/c1\n3:cpu,cpuacct:/default/c1\n1:name=systemd:/x\n";
        let v1 = parse_proc_cgroup(text, false, Path::new("/sys/fs/cgroup")).unwrap();
        assert_eq!(
            v1,
            Cgroup::V1 {
                memory: Some("/sys/fs/cgroup/memory/default/c1".into()),
                cpuacct: Some("/sys/fs/cgroup/cpu,cpuacct/default/c1".into()),
                pids: Some("/sys/fs/cgroup/pids/default/c1".into()),
            }
        );
    }

    #[test]
    fn v2_metrics_from_files() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        fs::write(d.join("pids.current"), "3\n").unwrap();
        fs::write(d.join("pids.max"), "max\n").unwrap();
        fs::write(d.join("memory.current"), "4096\n").unwrap();
        fs::write(d.join("memory.max"), "1048576\n").unwrap();
        fs::write(
            d.join("memory.events"),
            "low 0\nhigh 0\nmax 2\noom 1\noom_kill 1\n",
        )
        .unwrap();
        fs::write(
            d.join("cpu.stat"),
            "usage_usec 10\nuser_usec 6\nsystem_usec 4\n",
        )
        .unwrap();
        let any = Cgroup::V2(d.to_path_buf()).metrics();
        assert_eq!(any.type_url, "io.containerd.cgroups.v2.Metrics");
        let m = v2::Metrics::parse_from_bytes(&any.value).unwrap();
        assert_eq!(
            (m.pids.current, m.memory.usage, m.memory.usage_limit),
            (3, 4096, 1048576)
        );
        assert_eq!((m.memory_events.oom_kill, m.cpu.usage_usec), (1, 10));
    }
}
