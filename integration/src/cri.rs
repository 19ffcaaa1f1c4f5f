//! Kubernetes' view of the shim: a private containerd with its CRI plugin on, the `nvidia`
//! runtime handler configured from `deploy/containerd-v{2,3}.toml` exactly as the README tells
//! users, and a CRI client (the `k8s-cri` crate over the daemon's gRPC socket) doing what the
//! kubelet does. Pods use the host network, so no CNI is needed; images are the local test images.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use hyper_util::rt::TokioIo;
use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::{image, Containerd, Version};

/// The handler pods name in `runtimeClassName`'s RuntimeClass.
pub const HANDLER: &str = "nvidia";

/// containerd with CRI on, and a CRI client.
pub struct Cri {
    /// The daemon (namespace `k8s.io`).
    pub c: Containerd,
    rt: tokio::runtime::Runtime,
    client: RuntimeServiceClient<Channel>,
    logs: tempfile::TempDir,
    /// The (empty) CNI config dir: containerd 2.x watches it and stops CRI if it vanishes.
    _cni: tempfile::TempDir,
}

/// The CRI part of the daemon config for `version`: sandbox image, no OOM score writes (this
/// machine withholds CAP_SYS_RESOURCE), CDI from `cdi_dir`, an empty CNI setup, the default
/// `runc` runtime, and the shipped `nvidia` runtime snippet with its `ConfigPath` pointed at
/// `shim_config`.
fn cri_config(
    version: Version,
    shim_config: Option<&str>,
    cdi_dir: &Path,
    cni_dir: &Path,
) -> Result<String> {
    // The shipped snippets, built in: a GPU host running the bundle has no checkout.
    let (snippet, base) = if version == Version::V2 {
        (
            include_str!("../../deploy/containerd-v3.toml"),
            format!(
                r#"[plugins."io.containerd.cri.v1.images".pinned_images]
  sandbox = "{pause}"
[plugins."io.containerd.cri.v1.runtime"]
  restrict_oom_score_adj = true
  enable_cdi = true
  cdi_spec_dirs = ["{cdi}"]
[plugins."io.containerd.cri.v1.runtime".cni]
  bin_dirs = ["{cni}"]
  conf_dir = "{cni}"
[plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
"#,
                pause = image::PAUSE_IMAGE,
                cdi = cdi_dir.display(),
                cni = cni_dir.display(),
            ),
        )
    } else {
        let cdi = if version == Version::V1_7 {
            format!(
                "  enable_cdi = true\n  cdi_spec_dirs = [\"{}\"]\n",
                cdi_dir.display()
            )
        } else {
            String::new()
        };
        (
            include_str!("../../deploy/containerd-v2.toml"),
            format!(
                r#"[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  restrict_oom_score_adj = true
{cdi}[plugins."io.containerd.grpc.v1.cri".cni]
  bin_dir = "{cni}"
  conf_dir = "{cni}"
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
"#,
                pause = image::PAUSE_IMAGE,
                cni = cni_dir.display(),
            ),
        )
    };
    let Some(shim_config) = shim_config else {
        return Ok(base);
    };
    let runtime: String = snippet
        .lines()
        .filter(|l| !l.starts_with("version"))
        .map(|l| {
            if l.trim_start().starts_with("ConfigPath") {
                format!("    ConfigPath = \"{shim_config}\"")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    if !runtime.contains(shim_config) {
        bail!("the deploy snippet has no ConfigPath line to point at the test's shim config");
    }
    Ok(format!("{base}\n{runtime}\n"))
}

/// A CRI client over the daemon's gRPC socket. The channel is lazy: it dials on the first call
/// and again after the daemon restarts.
fn connect(rt: &tokio::runtime::Runtime, c: &Containerd) -> Result<RuntimeServiceClient<Channel>> {
    let sock = c.address();
    let _guard = rt.enter();
    let channel = Endpoint::try_from("http://[::]:50051")?.connect_with_connector_lazy(
        tower::service_fn(move |_: Uri| {
            let sock = sock.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(sock).await?))
            }
        }),
    );
    Ok(RuntimeServiceClient::new(channel))
}

impl Cri {
    /// Starts containerd `version` with CRI on; our shim reads `shim_config`, CDI specs live in
    /// `cdi_dir`. The busybox and pause images are imported.
    pub fn start(version: Version, shim_config: &str, cdi_dir: &Path) -> Result<Self> {
        Self::start_opts(version, Some(shim_config), cdi_dir, None)
    }

    /// A node before installation: CRI with only the `runc` runtime, its config written to
    /// `config` (where an installer will edit it), CDI specs read from `cdi_dir`.
    pub fn start_node(version: Version, config: &Path, cdi_dir: &Path) -> Result<Self> {
        Self::start_opts(version, None, cdi_dir, Some(config))
    }

    fn start_opts(
        version: Version,
        shim_config: Option<&str>,
        cdi_dir: &Path,
        config: Option<&Path>,
    ) -> Result<Self> {
        let cni = tempfile::Builder::new()
            .prefix("nvcni-")
            .tempdir_in("/tmp")?;
        let cfg = cri_config(version, shim_config, cdi_dir, cni.path())?;
        let c = match config {
            Some(p) => Containerd::start_cri_at(version, &cfg, p)?,
            None => Containerd::start_cri(version, &cfg)?,
        };
        image::import_pause(&c)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let client = connect(&rt, &c)?;
        let logs = tempfile::Builder::new()
            .prefix("nvlogs-")
            .tempdir_in("/tmp")?;
        let mut me = Self {
            c,
            rt,
            client,
            logs,
            _cni: cni,
        };
        me.wait_ready()?;
        Ok(me)
    }

    /// Waits until the CRI plugin reports the runtime ready: it initialises after the daemon
    /// answers (and recovers its pods after a restart). A broken config shows here.
    fn wait_ready(&mut self) -> Result<()> {
        let mut last = String::new();
        let up = crate::wait_until(
            Duration::from_secs(30),
            "the CRI runtime to be ready",
            || {
                let req = cri::StatusRequest { verbose: false };
                match self.call("Status", |c| Box::pin(c.status(req))) {
                    Ok(st) => {
                        let ready = st.status.is_some_and(|s| {
                            s.conditions
                                .iter()
                                .any(|c| c.r#type == "RuntimeReady" && c.status)
                        });
                        last = "RuntimeReady is false".into();
                        Ok(ready)
                    }
                    Err(e) => {
                        last = e.to_string();
                        Ok(false)
                    }
                }
            },
        );
        if let Err(e) = up {
            bail!("{e}: {last}\n{}", self.c.log_tail());
        }
        Ok(())
    }

    /// Restarts containerd (pods and containers keep running) and reconnects the client.
    pub fn restart_daemon(&mut self) -> Result<()> {
        self.c.restart_daemon()?;
        self.reconnect()
    }

    /// Reconnects the client after the daemon was started again, and waits until CRI is ready.
    pub fn reconnect(&mut self) -> Result<()> {
        self.client = connect(&self.rt, &self.c)?;
        self.wait_ready()
    }

    fn call<T>(
        &mut self,
        what: &str,
        f: impl for<'a> FnOnce(
            &'a mut RuntimeServiceClient<Channel>,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>> + 'a>,
        >,
    ) -> Result<T> {
        let client = &mut self.client;
        self.rt
            .block_on(async { tokio::time::timeout(Duration::from_secs(120), f(client)).await })
            .with_context(|| format!("CRI {what} timed out"))?
            .map(tonic::Response::into_inner)
            .map_err(|s| anyhow::anyhow!("CRI {what}: {:?}: {}", s.code(), s.message()))
    }

    /// The sandbox config of pod `name` (host network, handler-independent).
    pub fn pod_config(&self, name: &str) -> cri::PodSandboxConfig {
        cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: name.into(),
                uid: format!("uid-{name}"),
                namespace: "default".into(),
                attempt: 0,
            }),
            log_directory: self.logs.path().join(name).display().to_string(),
            linux: Some(cri::LinuxPodSandboxConfig {
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    namespace_options: Some(cri::NamespaceOption {
                        network: cri::NamespaceMode::Node as i32,
                        pid: cri::NamespaceMode::Pod as i32,
                        ipc: cri::NamespaceMode::Pod as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// RunPodSandbox with `handler`; returns the sandbox id.
    pub fn run_pod(&mut self, config: &cri::PodSandboxConfig, handler: &str) -> Result<String> {
        let req = cri::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: handler.into(),
        };
        Ok(self
            .call("RunPodSandbox", |c| Box::pin(c.run_pod_sandbox(req)))?
            .pod_sandbox_id)
    }

    /// A container config: `image`, `sh -c script`, env and annotations.
    pub fn container(
        name: &str,
        image: &str,
        script: &str,
        env: &[(&str, &str)],
        annotations: &[(&str, &str)],
    ) -> cri::ContainerConfig {
        cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: name.into(),
                attempt: 0,
            }),
            image: Some(cri::ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            command: vec!["sh".into(), "-c".into(), script.into()],
            envs: env
                .iter()
                .map(|(k, v)| cri::KeyValue {
                    key: k.to_string(),
                    value: v.to_string(),
                })
                .collect(),
            annotations: annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            log_path: format!("{name}.log"),
            ..Default::default()
        }
    }

    /// CreateContainer + StartContainer in pod `pod`; returns the container id.
    pub fn start_container(
        &mut self,
        pod: &str,
        pod_config: &cri::PodSandboxConfig,
        config: cri::ContainerConfig,
    ) -> Result<String> {
        let id = self.create_container(pod, pod_config, config)?;
        let req = cri::StartContainerRequest {
            container_id: id.clone(),
        };
        self.call("StartContainer", |c| Box::pin(c.start_container(req)))?;
        Ok(id)
    }

    /// CreateContainer in pod `pod`; returns the container id.
    pub fn create_container(
        &mut self,
        pod: &str,
        pod_config: &cri::PodSandboxConfig,
        config: cri::ContainerConfig,
    ) -> Result<String> {
        let req = cri::CreateContainerRequest {
            pod_sandbox_id: pod.into(),
            config: Some(config),
            sandbox_config: Some(pod_config.clone()),
        };
        Ok(self
            .call("CreateContainer", |c| Box::pin(c.create_container(req)))?
            .container_id)
    }

    /// ExecSync of `sh -c script`; returns (exit code, stdout, stderr).
    pub fn exec(&mut self, id: &str, script: &str) -> Result<(i32, String, String)> {
        let req = cri::ExecSyncRequest {
            container_id: id.into(),
            cmd: vec!["sh".into(), "-c".into(), script.into()],
            timeout: 60,
        };
        let r = self.call("ExecSync", |c| Box::pin(c.exec_sync(req)))?;
        Ok((
            r.exit_code,
            String::from_utf8_lossy(&r.stdout).into_owned(),
            String::from_utf8_lossy(&r.stderr).into_owned(),
        ))
    }

    /// ContainerStatus.
    pub fn status(&mut self, id: &str) -> Result<cri::ContainerStatus> {
        let req = cri::ContainerStatusRequest {
            container_id: id.into(),
            verbose: false,
        };
        self.call("ContainerStatus", |c| Box::pin(c.container_status(req)))?
            .status
            .context("no status")
    }

    /// ContainerStats.
    pub fn stats(&mut self, id: &str) -> Result<cri::ContainerStats> {
        let req = cri::ContainerStatsRequest {
            container_id: id.into(),
        };
        self.call("ContainerStats", |c| Box::pin(c.container_stats(req)))?
            .stats
            .context("no stats")
    }

    /// ListContainerStats of every container.
    pub fn list_stats(&mut self) -> Result<Vec<cri::ContainerStats>> {
        let req = cri::ListContainerStatsRequest { filter: None };
        Ok(self
            .call("ListContainerStats", |c| {
                Box::pin(c.list_container_stats(req))
            })?
            .stats)
    }

    /// UpdateContainerResources with a memory limit.
    pub fn update_memory(&mut self, id: &str, bytes: i64) -> Result<()> {
        let req = cri::UpdateContainerResourcesRequest {
            container_id: id.into(),
            linux: Some(cri::LinuxContainerResources {
                memory_limit_in_bytes: bytes,
                ..Default::default()
            }),
            ..Default::default()
        };
        self.call("UpdateContainerResources", |c| {
            Box::pin(c.update_container_resources(req))
        })?;
        Ok(())
    }

    /// StopContainer with a 2 s grace period.
    pub fn stop_container(&mut self, id: &str) -> Result<()> {
        let req = cri::StopContainerRequest {
            container_id: id.into(),
            timeout: 2,
        };
        self.call("StopContainer", |c| Box::pin(c.stop_container(req)))?;
        Ok(())
    }

    /// The memory cgroup directory of container `id` (cgroup v1 or v2 layout), if it exists.
    pub fn cgroup_of(id: &str) -> Option<std::path::PathBuf> {
        ["/sys/fs/cgroup/memory/k8s.io", "/sys/fs/cgroup/k8s.io"]
            .iter()
            .map(|base| Path::new(base).join(id))
            .find(|d| d.exists())
    }

    /// Nothing of the daemon's is left ([`Containerd::assert_clean`]) and no container cgroup
    /// of `ids` remains.
    pub fn assert_clean(&self, ids: &[String]) -> Result<()> {
        self.c.assert_clean()?;
        for id in ids {
            if let Some(dir) = Self::cgroup_of(id) {
                bail!("cgroup {} is left", dir.display());
            }
        }
        Ok(())
    }

    /// StopContainer then RemoveContainer.
    pub fn remove_container(&mut self, id: &str) -> Result<()> {
        self.stop_container(id)?;
        let req = cri::RemoveContainerRequest {
            container_id: id.into(),
        };
        self.call("RemoveContainer", |c| Box::pin(c.remove_container(req)))?;
        Ok(())
    }

    /// StopPodSandbox then RemovePodSandbox.
    pub fn remove_pod(&mut self, pod: &str) -> Result<()> {
        let req = cri::StopPodSandboxRequest {
            pod_sandbox_id: pod.into(),
        };
        self.call("StopPodSandbox", |c| Box::pin(c.stop_pod_sandbox(req)))?;
        let req = cri::RemovePodSandboxRequest {
            pod_sandbox_id: pod.into(),
        };
        self.call("RemovePodSandbox", |c| Box::pin(c.remove_pod_sandbox(req)))?;
        Ok(())
    }

    /// The OCI spec the runtime got for task `id` (its bundle's config.json).
    pub fn spec_of(&self, id: &str) -> Result<serde_json::Value> {
        let path = self.c.bundle(id).join("config.json");
        Ok(serde_json::from_slice(
            &std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?,
        )?)
    }
}
