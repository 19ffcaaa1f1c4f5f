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
use crate::delegate::{runc_factory, Delegate, DelegateFactory};
use crate::errors::{
    exists, invalid, kill_error, not_found, precondition, unimplemented, unknown, ShimError,
};
use crate::io::{self, ProcessIo, StdioUris};
use crate::publisher::{now, Publisher};
use crate::reaper::Exit;
use crate::runc::CreateOpts;
use crate::settings::{load_config, write_atomic, Settings};

mod create;
mod delete;
mod exits;
mod model;
mod pause;
#[cfg(test)]
mod tests;

use model::*;

/// The shim's task service; one per shim process, serving every container of a pod.
pub struct Service {
    namespace: String,
    containers: Mutex<HashMap<String, Container>>,
    event_lock: tokio::sync::Mutex<()>,
    publisher: Publisher,
    shutdown: Arc<Notify>,
    delegates: DelegateFactory,
    injectors: crate::gpu_stage::Injectors,
}

impl Service {
    /// Creates the service; `shutdown` is notified when the last container is gone and containerd
    /// asked the shim to exit.
    pub fn new(namespace: String, publisher: Publisher, shutdown: Arc<Notify>) -> Self {
        Self::with_delegates(namespace, publisher, shutdown, runc_factory())
    }

    /// Like [`Service::new`], with the OCI runtime made by `delegates` (tests pass a fake).
    pub fn with_delegates(
        namespace: String,
        publisher: Publisher,
        shutdown: Arc<Notify>,
        delegates: DelegateFactory,
    ) -> Self {
        Self {
            namespace,
            containers: Mutex::new(HashMap::new()),
            event_lock: tokio::sync::Mutex::new(()),
            publisher,
            shutdown,
            delegates,
            injectors: Default::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Container>> {
        self.containers.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn runc_of(&self, id: &str) -> TtrpcResult<Arc<dyn Delegate>> {
        container(&self.lock(), id).map(|c| c.runc.clone())
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
        let res = self.do_create(&req).await.map_err(|e| {
            tracing::error!(
                id = req.id.as_str(),
                "create failed: {}",
                gpu_core::echo::clipped(&e.to_string(), crate::errors::MAX_MESSAGE)
            );
            e.into()
        });
        crate::memory::give_back();
        res
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
        if req.exec_id.is_empty() {
            self.delete_init(&req.id).await
        } else {
            self.delete_exec(&req.id, &req.exec_id).await
        }
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
        self.do_pause(&req.id).await.map(|_| api::Empty::new())
    }

    async fn resume(&self, _: &TtrpcContext, req: api::ResumeRequest) -> TtrpcResult<api::Empty> {
        self.do_resume(&req.id).await.map(|_| api::Empty::new())
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
