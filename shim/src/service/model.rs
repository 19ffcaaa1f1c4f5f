//! The service's model of a pod: its containers, their processes, how one is found.

use super::*;

pub(super) type Status = api::Status;
pub(super) type ExitInfo = Option<(u32, Timestamp)>;

pub(super) struct Process {
    pub(super) exec_id: String,
    pub(super) pid: i32,
    pub(super) status: Status,
    pub(super) exit: watch::Sender<ExitInfo>,
    pub(super) io: ProcessIo,
    pub(super) uris: StdioUris,
    pub(super) spec: Vec<u8>,
}

impl Process {
    pub(super) fn new(exec_id: &str, uris: StdioUris) -> Self {
        Self {
            exec_id: exec_id.into(),
            pid: 0,
            status: Status::CREATED,
            exit: watch::channel(None).0,
            io: ProcessIo::default(),
            uris,
            spec: Vec::new(),
        }
    }
    pub(super) fn exit_info(&self) -> ExitInfo {
        self.exit.borrow().clone()
    }
}

pub(super) struct Container {
    pub(super) bundle: PathBuf,
    pub(super) settings: Settings,
    pub(super) runc: Arc<dyn Delegate>,
    pub(super) init: Process,
    pub(super) execs: HashMap<String, Process>,
    pub(super) cgroup: Option<Cgroup>,
    pub(super) host_pid_ns: bool,
    pub(super) pending_init_exit: Option<i32>,
    pub(super) mounted_rootfs: bool,
    pub(super) oom: Option<JoinHandle<()>>,
    /// The cgroup's OOM-kill count as of the last TaskOOM published (shared with the watcher).
    pub(super) ooms_reported: Arc<AtomicU64>,
    /// How Pause suspends its CUDA processes, when it opted in (see [`crate::suspend`]).
    pub(super) gpu_suspend: Option<crate::suspend::Plan>,
    /// The CUDA processes the last Pause suspended.
    pub(super) suspended: Vec<crate::suspend::Suspended>,
}

impl Container {
    pub(super) fn running_execs(&self) -> usize {
        self.execs
            .values()
            .filter(|p| p.pid != 0 && p.exit_info().is_none())
            .count()
    }
    pub(super) fn process(&mut self, exec_id: &str) -> Option<&mut Process> {
        if exec_id.is_empty() {
            Some(&mut self.init)
        } else {
            self.execs.get_mut(exec_id)
        }
    }
}

pub(super) fn ts_to_exit(code: i32) -> (u32, Timestamp) {
    (code as u32, now())
}

pub(super) fn container_mut<'a>(
    map: &'a mut HashMap<String, Container>,
    id: &str,
) -> TtrpcResult<&'a mut Container> {
    map.get_mut(id)
        .ok_or_else(|| not_found(format!("container {id:?} not created")))
}

pub(super) fn container<'a>(
    map: &'a HashMap<String, Container>,
    id: &str,
) -> TtrpcResult<&'a Container> {
    map.get(id)
        .ok_or_else(|| not_found(format!("container {id:?} not created")))
}

pub(super) fn process_of<'a>(c: &'a mut Container, exec_id: &str) -> TtrpcResult<&'a mut Process> {
    c.process(exec_id)
        .ok_or_else(|| not_found(format!("exec {exec_id:?} not found")))
}

pub(super) fn publish_oom(publisher: &Publisher, id: &str) {
    let mut ev = TaskOOM::new();
    ev.container_id = id.to_string();
    publisher.publish("/tasks/oom", &ev);
}

pub(super) fn rootfs_of(bundle: &Path) -> PathBuf {
    bundle.join("rootfs")
}

pub(super) fn unmount_rootfs(bundle: &Path) {
    let rootfs = rootfs_of(bundle);
    if let Err(e) = containerd_shim::mount::umount_recursive(rootfs.to_str(), libc::MNT_DETACH) {
        tracing::warn!("unmounting {}: {e}", rootfs.display());
    }
}
