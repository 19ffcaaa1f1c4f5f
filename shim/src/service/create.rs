//! The Create pipeline (options → config → settings → rootfs → GPU stage → IO → runc create →
//! cgroup and OOM watcher) and the start of an exec.

use super::*;
use crate::suspend;
use gpu_core::assignment::Assignment;
use nvidia_shim_config::ShimConfig;

impl Service {
    #[tracing::instrument(name = "create", level = "debug", skip_all, fields(id = %req.id))]
    pub(super) async fn do_create(
        &self,
        req: &api::CreateTaskRequest,
    ) -> Result<api::CreateTaskResponse, ShimError> {
        let bundle = PathBuf::from(&req.bundle);
        let (cfg, settings, spec) = self.settings_stage(req, &bundle)?;
        let runc = (self.delegates)(&settings, &bundle);
        // From here on every failure unmounts what was mounted, when the guard drops.
        let rootfs = RootfsGuard::mount(&bundle, &req.rootfs)?;
        let record = cfg.gpu.record_assignments;
        let suspend = (suspend::wanted(&spec, cfg.gpu.suspend_on_pause))
            .then(|| (self.injectors.get(cfg.core()), cfg.gpu.suspend_timeout_ms));
        let (spec, assignment) = self.gpu_stage(&req.id, cfg, spec, &bundle).await?;
        let uris = StdioUris {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let (pid, pio) =
            create_stage(&req.id, &*runc, &bundle, &settings, &uris, &self.namespace).await?;
        // One read of the init's cgroup serves the OOM watcher and, for a GPU container, the
        // assignment record and the suspend plan.
        let proc_cgroup =
            std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        let cgroup = crate::cgroup::of_text(&proc_cgroup);
        let cgroup_key = assignment
            .as_ref()
            .and_then(|_| gpu_core::assignment::cgroup_key(&proc_cgroup));
        let gpu_suspend = match (&assignment, suspend) {
            (Some(_), Some((injector, ms))) => {
                suspend_plan(&req.id, &injector, cgroup_key.clone(), ms)
            }
            _ => None,
        };
        if let Some(a) = assignment.filter(|_| record) {
            self.record_stage(&req.id, a, cgroup_key, &bundle);
        }
        let (oom, ooms_reported) = self.oom_stage(&req.id, cgroup.as_ref());
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
            host_pid_ns: shares_host_pid_ns(&spec),
            pending_init_exit: None,
            mounted_rootfs: rootfs.keep(),
            oom,
            ooms_reported,
            gpu_suspend,
            suspended: Vec::new(),
        };
        self.lock().insert(req.id.clone(), container);
        self.publish_create(req, pid);
        let mut resp = api::CreateTaskResponse::new();
        resp.pid = pid as u32;
        Ok(resp)
    }

    /// Options → shim config → the bundle's spec → effective settings, persisted in the bundle
    /// so `delete` needs nothing else.
    fn settings_stage(
        &self,
        req: &api::CreateTaskRequest,
        bundle: &Path,
    ) -> Result<(ShimConfig, Settings, oci_spec::runtime::Spec), ShimError> {
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
            .persist(bundle)
            .map_err(|e| ShimError::Failed(format!("persisting settings: {e}")))?;
        Ok((cfg, settings, spec))
    }

    /// Records what a GPU container was given in its bundle (`nvidia-shim top` reads it). A
    /// record that cannot be written costs the container nothing but a warning.
    #[tracing::instrument(name = "record", level = "debug", skip_all)]
    fn record_stage(&self, id: &str, mut a: Assignment, cgroup: Option<String>, bundle: &Path) {
        a.namespace = self.namespace.clone();
        a.id = id.to_string();
        a.cgroup = cgroup;
        if let Err(e) = a.write(bundle) {
            tracing::warn!(id, "gpu: recording the assignment in the bundle: {e}");
        }
    }

    /// The GPU edits (see [`crate::gpu_stage`]); an edited spec is written back to the bundle.
    /// Returns the spec and what the container was given.
    async fn gpu_stage(
        &self,
        id: &str,
        cfg: ShimConfig,
        spec: oci_spec::runtime::Spec,
        bundle: &Path,
    ) -> Result<(oci_spec::runtime::Spec, Option<Assignment>), ShimError> {
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
        match crate::gpu_stage::run(id, &self.injectors, cfg.core(), spec, root_path).await? {
            crate::gpu_stage::Outcome::Untouched(spec) => Ok((spec, None)),
            crate::gpu_stage::Outcome::Injected(spec, done) => {
                let data = serde_json::to_vec(&spec)
                    .map_err(|e| ShimError::Failed(format!("encoding spec: {e}")))?;
                write_atomic(&bundle.join("config.json"), &data)
                    .map_err(|e| ShimError::Failed(format!("writing spec: {e}")))?;
                for w in &done.warnings {
                    tracing::warn!(id, "gpu: {w}");
                }
                for h in &done.replaced_hooks {
                    tracing::info!(id, "gpu: {h}");
                }
                tracing::info!(id, "gpu: {}", done.summary);
                Ok((spec, done.assignment))
            }
        }
    }

    /// The cgroup's OOM watcher, publishing TaskOOM; the count it shares with the exit path.
    fn oom_stage(
        &self,
        id: &str,
        cgroup: Option<&Cgroup>,
    ) -> (Option<JoinHandle<()>>, Arc<AtomicU64>) {
        let reported = Arc::new(AtomicU64::new(
            cgroup.and_then(|cg| cg.oom_kill_count()).unwrap_or(0),
        ));
        let oom = cgroup
            .and_then(|cg| cg.oom_watcher().map(|w| (w, cg.clone())))
            .map(|(mut w, cg)| {
                let publisher = self.publisher.clone();
                let id = id.to_string();
                let reported = reported.clone();
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
        (oom, reported)
    }

    fn publish_create(&self, req: &api::CreateTaskRequest, pid: i32) {
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
    }

    pub(super) async fn start_exec(&self, id: &str, exec_id: &str) -> TtrpcResult<u32> {
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

/// IO, then the delegate's create; on any failure the half-created container is deleted.
async fn create_stage(
    id: &str,
    runc: &dyn Delegate,
    bundle: &Path,
    settings: &Settings,
    uris: &StdioUris,
    namespace: &str,
) -> Result<(i32, ProcessIo), ShimError> {
    let mut pending = io::prepare(uris, id, namespace, settings.io_uid, settings.io_gid)
        .map_err(|e| ShimError::Failed(format!("setting up IO: {e}")))?;
    let pid_file = bundle.join("init.pid");
    let console = pending.console_socket.clone();
    let copts = CreateOpts {
        pid_file: &pid_file,
        console_socket: console.as_deref(),
        no_pivot: settings.no_pivot_root,
        no_new_keyring: settings.no_new_keyring,
    };
    let runc_io = std::mem::take(&mut pending.runc);
    if let Err(e) = runc.create(id, bundle, copts, runc_io).await {
        let _ = runc.delete(id, true).await;
        return Err(e.into());
    }
    let pid = std::fs::read_to_string(&pid_file)
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .unwrap_or(0);
    match pending.finish().await {
        Ok(io) => Ok((pid, io)),
        Err(e) => {
            let _ = runc.delete(id, true).await;
            Err(ShimError::Failed(format!("setting up IO: {e}")))
        }
    }
}

/// Whether the container shares the host's PID namespace (then nothing kills what its init
/// leaves behind but us).
fn shares_host_pid_ns(spec: &oci_spec::runtime::Spec) -> bool {
    !spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .is_some_and(|ns| {
            ns.iter().any(|n| {
                n.typ() == oci_spec::runtime::LinuxNamespaceType::Pid && n.path().is_none()
            })
        })
}

/// The container's root filesystem, mounted for the Create and unmounted again if the Create
/// fails before [`RootfsGuard::keep`].
struct RootfsGuard<'a> {
    bundle: &'a Path,
    mounted: bool,
}

impl<'a> RootfsGuard<'a> {
    fn mount(
        bundle: &'a Path,
        mounts: &[containerd_shim_protos::types::mount::Mount],
    ) -> Result<Self, ShimError> {
        let mut guard = RootfsGuard {
            bundle,
            mounted: false,
        };
        if mounts.is_empty() {
            return Ok(guard);
        }
        let rootfs = rootfs_of(bundle);
        std::fs::create_dir_all(&rootfs)
            .map_err(|e| ShimError::Failed(format!("creating {}: {e}", rootfs.display())))?;
        let _ =
            std::fs::set_permissions(&rootfs, std::os::unix::fs::PermissionsExt::from_mode(0o711));
        for m in mounts {
            guard.mounted = true;
            containerd_shim::mount::mount_rootfs(
                Some(&m.type_),
                Some(&m.source),
                &m.options,
                &rootfs,
            )
            .map_err(|e| {
                ShimError::Failed(format!("mounting rootfs ({} {}): {e}", m.type_, m.source))
            })?;
        }
        Ok(guard)
    }

    /// The Create succeeded: the mounts stay (until Delete). Returns whether there were any.
    fn keep(mut self) -> bool {
        std::mem::replace(&mut self.mounted, false)
    }
}

impl Drop for RootfsGuard<'_> {
    fn drop(&mut self) {
        if self.mounted {
            unmount_rootfs(self.bundle);
        }
    }
}

/// How Pause will suspend a GPU container that opted in: the host driver's libraries, the helper
/// and the container's cgroup. Without any of them Pause stays a plain freeze, with a warning.
fn suspend_plan(
    id: &str,
    injector: &gpu_core::Injector,
    cgroup: Option<String>,
    timeout_ms: u64,
) -> Option<suspend::Plan> {
    let found = (|| {
        Some(suspend::Plan {
            helper: suspend::helper()?,
            libcuda: injector.driver_library("libcuda.so")?,
            nvml: injector.driver_library("libnvidia-ml.so")?,
            cgroup: cgroup?,
            timeout: std::time::Duration::from_millis(timeout_ms),
        })
    })();
    if found.is_none() {
        tracing::warn!(
            id,
            "gpu: suspend on pause asked for, but the helper (nvidia-shim), the driver's libcuda or \
             libnvidia-ml, or the container's cgroup was not found; Pause will only freeze"
        );
    }
    found
}
