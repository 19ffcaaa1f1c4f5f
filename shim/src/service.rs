//! The task service: the 17 RPCs of `containerd.task.v2.Task` over runc.
//!
//! Ordering rules kept here:
//! - `event_lock` is held across `runc start`/`runc exec` and the publication of TaskStart /
//!   TaskExecStarted, and the exit handler takes it before handling any exit, so no TaskExit can
//!   overtake the start event of its process;
//! - an init exit is published only once no started exec of that container is still running, so the
//!   init's TaskExit is always the container's last;
//! - the container map lock is never held across a runc call.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use containerd_shim_protos::api;
use containerd_shim_protos::events::task::*;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::protobuf::{Message, MessageField};
use containerd_shim_protos::shim::oci::ProcessDetails;
use containerd_shim_protos::shim_async::Task;
use containerd_shim_protos::ttrpc::r#async::TtrpcContext;
use containerd_shim_protos::ttrpc::Result as TtrpcResult;
use nvidia_shim_proto::ShimOptions;
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;

use crate::cgroup::Cgroup;
use crate::errors::{
    exists, invalid, kill_error, not_found, precondition, unimplemented, unknown, ShimError,
};
use crate::io::{self, ProcessIo, StdioUris};
use crate::publisher::{now, Publisher};
use crate::reaper::Exit;
use crate::runc::{CreateOpts, Runc};
use crate::settings::{load_config, write_atomic, Settings};

type Status = api::Status;
type ExitInfo = Option<(u32, Timestamp)>;

struct Process {
    exec_id: String,
    pid: i32,
    status: Status,
    exit: watch::Sender<ExitInfo>,
    io: ProcessIo,
    uris: StdioUris,
    spec: Vec<u8>,
}

impl Process {
    fn new(exec_id: &str, uris: StdioUris) -> Self {
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
    fn exit_info(&self) -> ExitInfo {
        self.exit.borrow().clone()
    }
}

struct Container {
    bundle: PathBuf,
    settings: Settings,
    runc: Runc,
    init: Process,
    execs: HashMap<String, Process>,
    cgroup: Option<Cgroup>,
    host_pid_ns: bool,
    pending_init_exit: Option<i32>,
    mounted_rootfs: bool,
    oom: Option<JoinHandle<()>>,
    /// The cgroup's OOM-kill count as of the last TaskOOM published (shared with the watcher).
    ooms_reported: Arc<AtomicU64>,
}

impl Container {
    fn running_execs(&self) -> usize {
        self.execs
            .values()
            .filter(|p| p.pid != 0 && p.exit_info().is_none())
            .count()
    }
    fn process(&mut self, exec_id: &str) -> Option<&mut Process> {
        if exec_id.is_empty() {
            Some(&mut self.init)
        } else {
            self.execs.get_mut(exec_id)
        }
    }
}

/// The shim's task service; one per shim process, serving every container of a pod.
pub struct Service {
    namespace: String,
    containers: Mutex<HashMap<String, Container>>,
    event_lock: tokio::sync::Mutex<()>,
    publisher: Publisher,
    shutdown: Arc<Notify>,
}

fn ts_to_exit(code: i32) -> (u32, Timestamp) {
    (code as u32, now())
}

fn container_mut<'a>(
    map: &'a mut HashMap<String, Container>,
    id: &str,
) -> TtrpcResult<&'a mut Container> {
    map.get_mut(id)
        .ok_or_else(|| not_found(format!("container {id:?} not created")))
}

fn container<'a>(map: &'a HashMap<String, Container>, id: &str) -> TtrpcResult<&'a Container> {
    map.get(id)
        .ok_or_else(|| not_found(format!("container {id:?} not created")))
}

fn process_of<'a>(c: &'a mut Container, exec_id: &str) -> TtrpcResult<&'a mut Process> {
    c.process(exec_id)
        .ok_or_else(|| not_found(format!("exec {exec_id:?} not found")))
}

fn publish_oom(publisher: &Publisher, id: &str) {
    let mut ev = TaskOOM::new();
    ev.container_id = id.to_string();
    publisher.publish("/tasks/oom", &ev);
}

fn rootfs_of(bundle: &Path) -> PathBuf {
    bundle.join("rootfs")
}

fn unmount_rootfs(bundle: &Path) {
    let rootfs = rootfs_of(bundle);
    if let Err(e) = containerd_shim::mount::umount_recursive(rootfs.to_str(), libc::MNT_DETACH) {
        tracing::warn!("unmounting {}: {e}", rootfs.display());
    }
}

impl Service {
    /// Creates the service; `shutdown` is notified when the last container is gone and containerd
    /// asked the shim to exit.
    pub fn new(namespace: String, publisher: Publisher, shutdown: Arc<Notify>) -> Self {
        Self {
            namespace,
            containers: Mutex::new(HashMap::new()),
            event_lock: tokio::sync::Mutex::new(()),
            publisher,
            shutdown,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Container>> {
        self.containers.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn runc_of(&self, id: &str) -> TtrpcResult<Runc> {
        container(&self.lock(), id).map(|c| c.runc.clone())
    }

    /// Handles exits fanned out by the reaper, in order, forever.
    pub async fn handle_exits(self: Arc<Self>, mut exits: mpsc::UnboundedReceiver<Exit>) {
        while let Some(e) = exits.recv().await {
            let _g = self.event_lock.lock().await;
            self.on_exit(e).await;
        }
    }

    async fn on_exit(&self, e: Exit) {
        let mut kill_all: Option<(String, Runc)> = None;
        {
            let mut map = self.lock();
            let Some((cid, c)) = map
                .iter_mut()
                .find(|(_, c)| c.init.pid == e.pid || c.execs.values().any(|p| p.pid == e.pid))
            else {
                return;
            };
            let cid = cid.clone();
            if c.init.pid == e.pid {
                if c.init.exit_info().is_some() || c.pending_init_exit.is_some() {
                    return;
                }
                if c.init.status == Status::CREATED {
                    // Killed before it was started (Delete of a created task): no TaskExit without TaskStart.
                    c.init.status = Status::STOPPED;
                    c.init.exit.send_replace(Some(ts_to_exit(e.status)));
                    return;
                }
                if c.host_pid_ns {
                    kill_all = Some((cid.clone(), c.runc.clone()));
                }
                c.pending_init_exit = Some(e.status);
            } else if let Some(p) = c.execs.values_mut().find(|p| p.pid == e.pid) {
                let info = ts_to_exit(e.status);
                p.status = Status::STOPPED;
                let mut ev = TaskExit::new();
                ev.container_id = cid.clone();
                ev.id = p.exec_id.clone();
                ev.pid = e.pid as u32;
                ev.exit_status = info.0;
                ev.exited_at = MessageField::some(info.1.clone());
                p.exit.send_replace(Some(info));
                self.publisher.publish("/tasks/exit", &ev);
            }
        }
        if let Some((cid, runc)) = kill_all {
            // The init shared the host PID namespace: nothing else kills what it left behind.
            if let Err(err) = runc.kill(&cid, 9, true).await {
                tracing::debug!("kill --all after init exit of {cid}: {err}");
            }
        }
        self.finish_init_exits();
    }

    fn finish_init_exits(&self) {
        let mut map = self.lock();
        for (cid, c) in map.iter_mut() {
            if c.pending_init_exit.is_none() || c.running_execs() > 0 {
                continue;
            }
            let status = c.pending_init_exit.take().unwrap_or(0);
            // An OOM kill usually ends the init too, and its exit can reach us before the
            // watcher has read the cgroup's event: report the kill first, as the watcher would have.
            if let Some(n) = c.cgroup.as_ref().and_then(|cg| cg.oom_kill_count()) {
                if n > c.ooms_reported.swap(n, Ordering::Relaxed) {
                    tracing::info!(id = cid.as_str(), "oom");
                    publish_oom(&self.publisher, cid);
                }
            }
            let info = ts_to_exit(status);
            c.init.status = Status::STOPPED;
            let mut ev = TaskExit::new();
            ev.container_id = cid.clone();
            ev.id = cid.clone();
            ev.pid = c.init.pid as u32;
            ev.exit_status = info.0;
            ev.exited_at = MessageField::some(info.1.clone());
            c.init.exit.send_replace(Some(info));
            self.publisher.publish("/tasks/exit", &ev);
            tracing::debug!(id = cid.as_str(), "init exit published");
            if let Some(h) = c.oom.take() {
                h.abort();
            }
        }
    }

    #[tracing::instrument(name = "create", level = "debug", skip_all, fields(id = %req.id))]
    async fn do_create(
        &self,
        req: &api::CreateTaskRequest,
    ) -> Result<api::CreateTaskResponse, ShimError> {
        let bundle = PathBuf::from(&req.bundle);
        let opts = match req.options.as_ref() {
            Some(a) => ShimOptions::decode(&a.type_url, &a.value)
                .map_err(|e| ShimError::Invalid(e.to_string()))?,
            None => ShimOptions::None,
        };
        let (cfg, source) = load_config(&opts).map_err(|e| ShimError::Invalid(e.to_string()))?;
        let spec_path = bundle.join("config.json");
        let spec = oci_spec::runtime::Spec::load(&spec_path)
            .map_err(|e| ShimError::Invalid(format!("reading {}: {e}", spec_path.display())))?;
        let cgroups_path = spec
            .linux()
            .as_ref()
            .and_then(|l| l.cgroups_path().clone())
            .map(|p| p.display().to_string());
        let settings = Settings::resolve(
            &cfg,
            source,
            &opts,
            &self.namespace,
            cgroups_path.as_deref(),
        );
        settings
            .persist(&bundle)
            .map_err(|e| ShimError::Failed(format!("persisting settings: {e}")))?;
        let runc = settings.runc(&bundle);

        let mut mounted = false;
        if !req.rootfs.is_empty() {
            let rootfs = rootfs_of(&bundle);
            std::fs::create_dir_all(&rootfs)
                .map_err(|e| ShimError::Failed(format!("creating {}: {e}", rootfs.display())))?;
            let _ = std::fs::set_permissions(
                &rootfs,
                std::os::unix::fs::PermissionsExt::from_mode(0o711),
            );
            for m in &req.rootfs {
                mounted = true;
                if let Err(e) = containerd_shim::mount::mount_rootfs(
                    Some(&m.type_),
                    Some(&m.source),
                    &m.options,
                    &rootfs,
                ) {
                    unmount_rootfs(&bundle);
                    return Err(ShimError::Failed(format!(
                        "mounting rootfs ({} {}): {e}",
                        m.type_, m.source
                    )));
                }
            }
        }
        let cleanup = |e: ShimError| {
            if mounted {
                unmount_rootfs(&bundle);
            }
            e
        };

        let root_path = spec
            .root()
            .as_ref()
            .map(|r| r.path().clone())
            .unwrap_or_else(|| "rootfs".into());
        let root_path = if root_path.is_absolute() {
            root_path
        } else {
            bundle.join(root_path)
        };
        let spec = match crate::gpu_stage::run(&req.id, cfg, spec, root_path).await {
            Ok(crate::gpu_stage::Outcome::Untouched(spec)) => spec,
            Ok(crate::gpu_stage::Outcome::Injected(spec, done)) => {
                let data = serde_json::to_vec(&spec)
                    .map_err(|e| cleanup(ShimError::Failed(format!("encoding spec: {e}"))))?;
                write_atomic(&spec_path, &data)
                    .map_err(|e| cleanup(ShimError::Failed(format!("writing spec: {e}"))))?;
                for w in &done.warnings {
                    tracing::warn!(id = req.id.as_str(), "gpu: {w}");
                }
                tracing::info!(id = req.id.as_str(), "gpu: {}", done.summary);
                spec
            }
            Err(e) => return Err(cleanup(e)),
        };
        let host_pid_ns = !spec
            .linux()
            .as_ref()
            .and_then(|l| l.namespaces().as_ref())
            .is_some_and(|ns| {
                ns.iter().any(|n| {
                    n.typ() == oci_spec::runtime::LinuxNamespaceType::Pid && n.path().is_none()
                })
            });

        let uris = StdioUris {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let mut pending = io::prepare(
            &uris,
            &req.id,
            &self.namespace,
            settings.io_uid,
            settings.io_gid,
        )
        .map_err(|e| cleanup(ShimError::Failed(format!("setting up IO: {e}"))))?;
        let pid_file = bundle.join("init.pid");
        let console = pending.console_socket.clone();
        let copts = CreateOpts {
            pid_file: &pid_file,
            console_socket: console.as_deref(),
            no_pivot: settings.no_pivot_root,
            no_new_keyring: settings.no_new_keyring,
        };
        let runc_io = std::mem::take(&mut pending.runc);
        if let Err(e) = runc.create(&req.id, &bundle, copts, runc_io).await {
            let _ = runc.delete(&req.id, true).await;
            return Err(cleanup(e.into()));
        }
        let pid = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
            .unwrap_or(0);
        let pio = match pending.finish().await {
            Ok(io) => io,
            Err(e) => {
                let _ = runc.delete(&req.id, true).await;
                return Err(cleanup(ShimError::Failed(format!("setting up IO: {e}"))));
            }
        };
        let cgroup = crate::cgroup::of_pid(pid);
        let ooms_reported = Arc::new(AtomicU64::new(
            cgroup
                .as_ref()
                .and_then(|cg| cg.oom_kill_count())
                .unwrap_or(0),
        ));
        let oom = cgroup
            .as_ref()
            .and_then(|cg| cg.oom_watcher().map(|w| (w, cg.clone())))
            .map(|(mut w, cg)| {
                let publisher = self.publisher.clone();
                let id = req.id.clone();
                let reported = ooms_reported.clone();
                tokio::spawn(async move {
                    while w.next().await {
                        tracing::info!(id = id.as_str(), "oom");
                        if let Some(n) = cg.oom_kill_count() {
                            reported.store(n, Ordering::Relaxed);
                        }
                        publish_oom(&publisher, &id);
                    }
                })
            });
        let mut init = Process::new("", uris);
        init.pid = pid;
        init.io = pio;
        let container = Container {
            bundle: bundle.clone(),
            settings,
            runc,
            init,
            execs: HashMap::new(),
            cgroup,
            host_pid_ns,
            pending_init_exit: None,
            mounted_rootfs: mounted,
            oom,
            ooms_reported,
        };
        self.lock().insert(req.id.clone(), container);

        let mut ev = TaskCreate::new();
        ev.container_id = req.id.clone();
        ev.bundle = req.bundle.clone();
        ev.rootfs = req.rootfs.clone();
        let mut tio = TaskIO::new();
        tio.stdin = req.stdin.clone();
        tio.stdout = req.stdout.clone();
        tio.stderr = req.stderr.clone();
        tio.terminal = req.terminal;
        ev.io = MessageField::some(tio);
        ev.checkpoint = req.checkpoint.clone();
        ev.pid = pid as u32;
        self.publisher.publish("/tasks/create", &ev);
        let mut resp = api::CreateTaskResponse::new();
        resp.pid = pid as u32;
        Ok(resp)
    }

    async fn start_exec(&self, id: &str, exec_id: &str) -> TtrpcResult<u32> {
        let (runc, bundle, uris, spec, uid, gid) = {
            let mut map = self.lock();
            let c = container_mut(&mut map, id)?;
            if c.init.exit_info().is_some() || c.pending_init_exit.is_some() {
                return Err(precondition(format!(
                    "container {id:?} has exited; cannot start exec {exec_id:?}"
                )));
            }
            let p = c
                .execs
                .get(exec_id)
                .ok_or_else(|| not_found(format!("exec {exec_id:?} not found in {id:?}")))?;
            if p.status != Status::CREATED {
                return Err(precondition(format!("exec {exec_id:?} already started")));
            }
            (
                c.runc.clone(),
                c.bundle.clone(),
                p.uris.clone(),
                p.spec.clone(),
                c.settings.io_uid,
                c.settings.io_gid,
            )
        };
        let process_file = bundle.join(format!("exec-{exec_id}.json"));
        std::fs::write(&process_file, &spec)
            .map_err(|e| unknown(format!("writing exec spec: {e}")))?;
        let pid_file = bundle.join(format!("{exec_id}.pid"));
        let mut pending = io::prepare(&uris, id, &self.namespace, uid, gid)
            .map_err(|e| unknown(format!("setting up exec IO: {e}")))?;
        let runc_io = std::mem::take(&mut pending.runc);
        let console = pending.console_socket.clone();
        let copts = CreateOpts {
            pid_file: &pid_file,
            console_socket: console.as_deref(),
            no_pivot: false,
            no_new_keyring: false,
        };
        let res = runc.exec(id, &process_file, copts, runc_io).await;
        let _ = std::fs::remove_file(&process_file);
        res.map_err(|e| unknown(e.to_string()))?;
        let pid = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
            .unwrap_or(0);
        let pio = pending
            .finish()
            .await
            .map_err(|e| unknown(format!("exec IO: {e}")))?;
        let mut map = self.lock();
        let p = map
            .get_mut(id)
            .and_then(|c| c.execs.get_mut(exec_id))
            .ok_or_else(|| not_found("exec deleted while starting"))?;
        p.pid = pid;
        p.io = pio;
        p.status = Status::RUNNING;
        Ok(pid as u32)
    }
}

#[async_trait]
impl Task for Service {
    async fn state(
        &self,
        _: &TtrpcContext,
        req: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        let mut map = self.lock();
        let c = container_mut(&mut map, &req.id)?;
        let bundle = c.bundle.display().to_string();
        let p = process_of(c, &req.exec_id)?;
        let mut r = api::StateResponse::new();
        r.id = if req.exec_id.is_empty() {
            req.id.clone()
        } else {
            req.exec_id.clone()
        };
        r.bundle = bundle;
        r.pid = p.pid as u32;
        r.status = p.status.into();
        r.stdin = p.uris.stdin.clone();
        r.stdout = p.uris.stdout.clone();
        r.stderr = p.uris.stderr.clone();
        r.terminal = p.uris.terminal;
        r.exec_id = req.exec_id.clone();
        if let Some((code, at)) = p.exit_info() {
            r.exit_status = code;
            r.exited_at = MessageField::some(at);
        }
        Ok(r)
    }

    async fn create(
        &self,
        _: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        if self.lock().contains_key(&req.id) {
            return Err(exists(format!("container {:?} already exists", req.id)));
        }
        if !req.checkpoint.is_empty() {
            return Err(unimplemented("Create from a checkpoint"));
        }
        tracing::info!(id = req.id.as_str(), "create");
        self.do_create(&req).await.map_err(|e| {
            tracing::error!(
                id = req.id.as_str(),
                "create failed: {}",
                gpu_core::echo::clipped(&e.to_string(), crate::errors::MAX_MESSAGE)
            );
            e.into()
        })
    }

    async fn start(
        &self,
        _: &TtrpcContext,
        req: api::StartRequest,
    ) -> TtrpcResult<api::StartResponse> {
        let _g = self.event_lock.lock().await;
        let mut resp = api::StartResponse::new();
        if req.exec_id.is_empty() {
            let (runc, pid, status) = {
                let map = self.lock();
                let c = container(&map, &req.id)?;
                (c.runc.clone(), c.init.pid, c.init.status)
            };
            if status != Status::CREATED {
                return Err(precondition(format!(
                    "container {:?} is not in created state",
                    req.id
                )));
            }
            runc.start(&req.id)
                .await
                .map_err(|e| unknown(e.to_string()))?;
            if let Some(c) = self.lock().get_mut(&req.id) {
                c.init.status = Status::RUNNING;
            }
            let mut ev = TaskStart::new();
            ev.container_id = req.id.clone();
            ev.pid = pid as u32;
            self.publisher.publish("/tasks/start", &ev);
            resp.pid = pid as u32;
        } else {
            let pid = self.start_exec(&req.id, &req.exec_id).await?;
            let mut ev = TaskExecStarted::new();
            ev.container_id = req.id.clone();
            ev.exec_id = req.exec_id.clone();
            ev.pid = pid;
            self.publisher.publish("/tasks/exec-started", &ev);
            resp.pid = pid;
        }
        Ok(resp)
    }

    async fn delete(
        &self,
        _: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TtrpcResult<api::DeleteResponse> {
        let mut resp = api::DeleteResponse::new();
        if !req.exec_id.is_empty() {
            let mut p = {
                let mut map = self.lock();
                let c = container_mut(&mut map, &req.id)?;
                let p = c
                    .execs
                    .get(&req.exec_id)
                    .ok_or_else(|| not_found(format!("exec {:?} not found", req.exec_id)))?;
                if p.status == Status::RUNNING && p.exit_info().is_none() {
                    return Err(precondition(format!(
                        "exec {:?} is still running",
                        req.exec_id
                    )));
                }
                let bundle = c.bundle.clone();
                let p = c
                    .execs
                    .remove(&req.exec_id)
                    .ok_or_else(|| not_found("exec vanished"))?;
                let _ = std::fs::remove_file(bundle.join(format!("{}.pid", req.exec_id)));
                p
            };
            p.io.shutdown(Duration::from_secs(2)).await;
            resp.pid = p.pid as u32;
            if let Some((code, at)) = p.exit_info() {
                resp.exit_status = code;
                resp.exited_at = MessageField::some(at);
            }
            return Ok(resp);
        }
        let (runc, status, mut exit_rx) = {
            let mut map = self.lock();
            let c = container_mut(&mut map, &req.id)?;
            let running = matches!(
                c.init.status,
                Status::RUNNING | Status::PAUSED | Status::PAUSING
            ) && c.init.exit_info().is_none();
            if running {
                return Err(precondition(format!(
                    "container {:?} is still running; kill it first",
                    req.id
                )));
            }
            // The OOM watcher keeps the cgroup's memory.events open: stop it before runc
            // removes the cgroup.
            if let Some(h) = c.oom.take() {
                h.abort();
            }
            (c.runc.clone(), c.init.status, c.init.exit.subscribe())
        };
        // A stopped container needs no --force (which first tries to kill what is left).
        let gone =
            |e: &crate::runc::RuncError| matches!(e, crate::runc::RuncError::NotExist { .. });
        let mut result = runc.delete(&req.id, status != Status::STOPPED).await;
        if matches!(&result, Err(e) if !gone(e)) && status == Status::STOPPED {
            result = runc.delete(&req.id, true).await;
        }
        if let Err(e) = result {
            if !gone(&e) {
                tracing::warn!(id = req.id.as_str(), "{e}");
            }
        }
        if status == Status::CREATED {
            let _ = tokio::time::timeout(Duration::from_secs(2), exit_rx.wait_for(|e| e.is_some()))
                .await;
        }
        let mut c = self
            .lock()
            .remove(&req.id)
            .ok_or_else(|| not_found(format!("container {:?} not created", req.id)))?;
        c.init.io.shutdown(Duration::from_secs(2)).await;
        for (_, mut p) in c.execs.drain() {
            p.io.shutdown(Duration::from_millis(100)).await;
        }
        if let Some(h) = c.oom.take() {
            h.abort();
        }
        if c.mounted_rootfs {
            unmount_rootfs(&c.bundle);
        }
        let (code, at) = c.init.exit_info().unwrap_or_else(|| (137, now()));
        let mut ev = TaskDelete::new();
        ev.container_id = req.id.clone();
        ev.id = req.id.clone();
        ev.pid = c.init.pid as u32;
        ev.exit_status = code;
        ev.exited_at = MessageField::some(at.clone());
        self.publisher.publish("/tasks/delete", &ev);
        tracing::info!(id = req.id.as_str(), "deleted");
        resp.pid = c.init.pid as u32;
        resp.exit_status = code;
        resp.exited_at = MessageField::some(at);
        Ok(resp)
    }

    async fn pids(
        &self,
        _: &TtrpcContext,
        req: api::PidsRequest,
    ) -> TtrpcResult<api::PidsResponse> {
        let runc = self.runc_of(&req.id)?;
        let pids = runc.ps(&req.id).await.map_err(|e| unknown(e.to_string()))?;
        let execs: HashMap<u32, String> = self
            .lock()
            .get(&req.id)
            .map(|c| {
                c.execs
                    .values()
                    .map(|p| (p.pid as u32, p.exec_id.clone()))
                    .collect()
            })
            .unwrap_or_default();
        let mut resp = api::PidsResponse::new();
        for pid in pids {
            let mut info = api::ProcessInfo::new();
            info.pid = pid;
            if let Some(exec_id) = execs.get(&pid) {
                let mut d = ProcessDetails::new();
                d.exec_id = exec_id.clone();
                let mut any = Any::new();
                any.type_url = "containerd.runc.v1.ProcessDetails".into();
                any.value = d.write_to_bytes().unwrap_or_default();
                info.info = MessageField::some(any);
            }
            resp.processes.push(info);
        }
        Ok(resp)
    }

    async fn pause(&self, _: &TtrpcContext, req: api::PauseRequest) -> TtrpcResult<api::Empty> {
        let runc = self.runc_of(&req.id)?;
        if let Some(c) = self.lock().get_mut(&req.id) {
            c.init.status = Status::PAUSING;
        }
        let res = runc.pause(&req.id).await;
        let mut map = self.lock();
        if let Some(c) = map.get_mut(&req.id) {
            c.init.status = if res.is_ok() {
                Status::PAUSED
            } else {
                Status::RUNNING
            };
        }
        res.map_err(|e| unknown(e.to_string()))?;
        let mut ev = TaskPaused::new();
        ev.container_id = req.id.clone();
        self.publisher.publish("/tasks/paused", &ev);
        Ok(api::Empty::new())
    }

    async fn resume(&self, _: &TtrpcContext, req: api::ResumeRequest) -> TtrpcResult<api::Empty> {
        let runc = self.runc_of(&req.id)?;
        runc.resume(&req.id)
            .await
            .map_err(|e| unknown(e.to_string()))?;
        if let Some(c) = self.lock().get_mut(&req.id) {
            c.init.status = Status::RUNNING;
        }
        let mut ev = TaskResumed::new();
        ev.container_id = req.id.clone();
        self.publisher.publish("/tasks/resumed", &ev);
        Ok(api::Empty::new())
    }

    async fn checkpoint(
        &self,
        _: &TtrpcContext,
        _: api::CheckpointTaskRequest,
    ) -> TtrpcResult<api::Empty> {
        Err(unimplemented("Checkpoint"))
    }

    async fn kill(&self, _: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        if req.exec_id.is_empty() {
            let runc = self.runc_of(&req.id)?;
            runc.kill(&req.id, req.signal, req.all)
                .await
                .map_err(kill_error)?;
            return Ok(api::Empty::new());
        }
        let pid = {
            let mut map = self.lock();
            let c = container_mut(&mut map, &req.id)?;
            let p = c
                .execs
                .get(&req.exec_id)
                .ok_or_else(|| not_found(format!("exec {:?} not found", req.exec_id)))?;
            if p.pid == 0 {
                return Err(precondition(format!(
                    "exec {:?} has not been started",
                    req.exec_id
                )));
            }
            if p.exit_info().is_some() {
                return Err(not_found(format!(
                    "process already finished: exec {:?}",
                    req.exec_id
                )));
            }
            p.pid
        };
        // SAFETY: kill(2) on the pid of a live exec we have not reaped yet.
        if unsafe { libc::kill(pid, req.signal as i32) } != 0 {
            let e = std::io::Error::last_os_error();
            return Err(not_found(format!("process already finished: {e}")));
        }
        Ok(api::Empty::new())
    }

    async fn exec(
        &self,
        _: &TtrpcContext,
        req: api::ExecProcessRequest,
    ) -> TtrpcResult<api::Empty> {
        {
            let mut map = self.lock();
            let c = container_mut(&mut map, &req.id)?;
            if c.execs.contains_key(&req.exec_id) {
                return Err(exists(format!("exec {:?} already exists", req.exec_id)));
            }
            if c.init.exit_info().is_some() {
                return Err(precondition(format!("container {:?} has exited", req.id)));
            }
            let uris = StdioUris {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
            };
            let mut p = Process::new(&req.exec_id, uris);
            p.spec = req
                .spec
                .as_ref()
                .map(|a| a.value.clone())
                .unwrap_or_default();
            if serde_json::from_slice::<serde_json::Value>(&p.spec).is_err() {
                return Err(invalid("exec spec is not a JSON OCI process"));
            }
            c.execs.insert(req.exec_id.clone(), p);
        }
        let mut ev = TaskExecAdded::new();
        ev.container_id = req.id.clone();
        ev.exec_id = req.exec_id.clone();
        self.publisher.publish("/tasks/exec-added", &ev);
        Ok(api::Empty::new())
    }

    async fn resize_pty(
        &self,
        _: &TtrpcContext,
        req: api::ResizePtyRequest,
    ) -> TtrpcResult<api::Empty> {
        let mut map = self.lock();
        let c = container_mut(&mut map, &req.id)?;
        let p = process_of(c, &req.exec_id)?;
        p.io.resize(req.width, req.height)
            .map_err(|e| unknown(format!("resizing pty: {e}")))?;
        Ok(api::Empty::new())
    }

    async fn close_io(
        &self,
        _: &TtrpcContext,
        req: api::CloseIORequest,
    ) -> TtrpcResult<api::Empty> {
        let mut map = self.lock();
        let c = container_mut(&mut map, &req.id)?;
        let p = process_of(c, &req.exec_id)?;
        if req.stdin {
            p.io.close_stdin();
        }
        Ok(api::Empty::new())
    }

    async fn update(
        &self,
        _: &TtrpcContext,
        req: api::UpdateTaskRequest,
    ) -> TtrpcResult<api::Empty> {
        let runc = self.runc_of(&req.id)?;
        let json = req
            .resources
            .as_ref()
            .map(|a| a.value.clone())
            .unwrap_or_default();
        if serde_json::from_slice::<oci_spec::runtime::LinuxResources>(&json).is_err() {
            return Err(invalid("update resources are not JSON LinuxResources"));
        }
        runc.update(&req.id, json)
            .await
            .map_err(|e| unknown(e.to_string()))?;
        Ok(api::Empty::new())
    }

    async fn wait(
        &self,
        _: &TtrpcContext,
        req: api::WaitRequest,
    ) -> TtrpcResult<api::WaitResponse> {
        let mut rx = {
            let mut map = self.lock();
            let c = container_mut(&mut map, &req.id)?;
            let p = process_of(c, &req.exec_id)?;
            p.exit.subscribe()
        };
        let info = rx
            .wait_for(|e| e.is_some())
            .await
            .map_err(|_| unknown("shim shutting down"))?
            .clone();
        tracing::debug!(id = req.id.as_str(), "wait returns");
        let mut resp = api::WaitResponse::new();
        if let Some((code, at)) = info {
            resp.exit_status = code;
            resp.exited_at = MessageField::some(at);
        }
        Ok(resp)
    }

    async fn stats(
        &self,
        _: &TtrpcContext,
        req: api::StatsRequest,
    ) -> TtrpcResult<api::StatsResponse> {
        let cg = {
            let map = self.lock();
            let c = container(&map, &req.id)?;
            c.cgroup
                .clone()
                .ok_or_else(|| not_found(format!("container {:?} has no cgroup", req.id)))?
        };
        if !cg.exists() {
            return Err(not_found(format!("cgroup of {:?} is gone", req.id)));
        }
        let mut resp = api::StatsResponse::new();
        resp.stats = MessageField::some(cg.metrics());
        Ok(resp)
    }

    async fn connect(
        &self,
        _: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        let mut resp = api::ConnectResponse::new();
        resp.shim_pid = std::process::id();
        resp.task_pid = self
            .lock()
            .get(&req.id)
            .map(|c| c.init.pid as u32)
            .unwrap_or(0);
        resp.version = env!("CARGO_PKG_VERSION").into();
        Ok(resp)
    }

    async fn shutdown(&self, _: &TtrpcContext, _: api::ShutdownRequest) -> TtrpcResult<api::Empty> {
        if self.lock().is_empty() {
            self.shutdown.notify_one();
        }
        Ok(api::Empty::new())
    }
}
