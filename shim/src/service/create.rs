//! The Create pipeline (options → config → settings → rootfs → GPU stage → IO → runc create →
//! cgroup and OOM watcher) and the start of an exec.

use super::*;

impl Service {
    #[tracing::instrument(name = "create", level = "debug", skip_all, fields(id = %req.id))]
    pub(super) async fn do_create(
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
        let runc = (self.delegates)(&settings, &bundle);

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
        let spec = match crate::gpu_stage::run(&req.id, &self.injectors, cfg, spec, root_path).await
        {
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
