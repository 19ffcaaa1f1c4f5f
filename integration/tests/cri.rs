//! Kubernetes through CRI on containerd 1.6, 1.7 and 2.x, on a fake driver host: the pod sandbox
//! gets no GPU; each route the device plugin uses (env, volume mounts, CDI annotation, the CRI
//! `CDIDevices` field) gets exactly its GPU; a sibling that asked for nothing gets nothing; exec,
//! stats, OOM, update and restarts behave as under runc; removing the pod ends its shim and
//! leaves nothing behind.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use gpu_core::fixture::{FakeHost, Layout, VERSION};
use integration::cri::{Cri, HANDLER};
use integration::image::GLIBC_IMAGE;
use integration::{wait_pid_gone, wait_until, Version};
use k8s_cri::v1 as cri;

struct Lab {
    cri: Cri,
    _host_dir: tempfile::TempDir,
}

fn lab(version: Version) -> Result<Lab> {
    let host_dir = tempfile::Builder::new()
        .prefix("nvcri-")
        .tempdir_in("/tmp")?;
    let host = FakeHost::build(host_dir.path(), Layout::Gke, 2)?;
    let config = host.write_config()?;
    let cdi = host.dir.join("cdi");
    std::fs::create_dir_all(&cdi)?;
    let out = std::process::Command::new(integration::bin_dir().join("nvidia-shim"))
        .args(["--config", &config, "cdi", "generate", "--output"])
        .arg(cdi.join("nvidia.yaml"))
        .output()?;
    ensure!(out.status.success(), "cdi generate: {out:?}");
    let cri = Cri::start(version, &config, &cdi)?;
    integration::image::import_glibc(&cri.c)?;
    Ok(Lab {
        cri,
        _host_dir: host_dir,
    })
}

/// Paths of the device nodes in a task's OCI spec.
fn spec_devices(spec: &serde_json::Value) -> Vec<String> {
    spec["linux"]["devices"]
        .as_array()
        .map(|d| {
            d.iter()
                .filter_map(|x| x["path"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn spec_mount_destinations(spec: &serde_json::Value) -> Vec<String> {
    spec["mounts"]
        .as_array()
        .map(|m| {
            m.iter()
                .filter_map(|x| x["destination"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

const CHECK: &str =
    "ls /dev/ | grep -E '^nvidia[0-9]+$' | tr '\\n' ' '; echo; dlcheck libcuda.so.1";

fn pod_gets_gpus_by_every_device_plugin_route(version: Version) -> Result<()> {
    let mut l = lab(version)?;
    let cri = &mut l.cri;
    let mut pod_config = cri.pod_config("gpu-pod");
    // The opt-in for GPU-aware pause is a pod annotation the deploy snippets pass through.
    pod_config
        .annotations
        .insert("nvidia.com/gpu-suspend-on-pause".into(), "true".into());
    let pod = cri.run_pod(&pod_config, HANDLER)?;
    let spec = cri.spec_of(&pod)?;
    ensure!(
        !spec_devices(&spec)
            .iter()
            .any(|d| d.starts_with("/dev/nvidia")),
        "the pod sandbox got GPU devices: {:?}",
        spec_devices(&spec)
    );

    let mut routes: Vec<(&str, cri::ContainerConfig, &str)> = Vec::new();
    routes.push((
        "env",
        Cri::container(
            "env",
            GLIBC_IMAGE,
            "sleep 1000",
            &[("NVIDIA_VISIBLE_DEVICES", "1")],
            &[],
        ),
        "nvidia1 ",
    ));
    let mut mounts = Cri::container("mounts", GLIBC_IMAGE, "sleep 1000", &[], &[]);
    mounts.mounts.push(cri::Mount {
        container_path: "/var/run/nvidia-container-devices/0".into(),
        host_path: "/dev/null".into(),
        readonly: true,
        ..Default::default()
    });
    routes.push(("volume-mounts", mounts, "nvidia0 "));
    routes.push((
        "cdi-annotation",
        Cri::container(
            "cdi",
            GLIBC_IMAGE,
            "sleep 1000",
            &[],
            &[("cdi.k8s.io/gpu", "nvidia.com/gpu=1")],
        ),
        "nvidia1 ",
    ));
    if version != Version::V1_6 {
        let mut field = Cri::container("cdi-field", GLIBC_IMAGE, "sleep 1000", &[], &[]);
        field.cdi_devices.push(cri::CdiDevice {
            name: "nvidia.com/gpu=0".into(),
        });
        routes.push(("CDIDevices field", field, "nvidia0 "));
    }
    let mut ids = Vec::new();
    for (route, config, want) in routes {
        let id = cri.start_container(&pod, &pod_config, config)?;
        let (code, out, err) = cri.exec(&id, CHECK)?;
        ensure!(
            code == 0 && out.starts_with(want),
            "{route}: wanted GPU nodes {want:?}: exit {code}, {out} {err}"
        );
        ensure!(
            out.contains(&format!("libcuda.so.1 -> real libcuda.so {VERSION}")),
            "{route}: the injected libcuda loads: {out}"
        );
        let spec = cri.spec_of(&id)?;
        integration::no_duplicates("device nodes", &spec_devices(&spec))?;
        integration::no_duplicates("mount destinations", &spec_mount_destinations(&spec))?;
        ids.push(id);
    }

    // The first (env) container: the pod annotation reached its spec, and its assignment
    // record names the pod as Kubernetes knows it.
    let spec = cri.spec_of(&ids[0])?;
    ensure!(
        spec["annotations"]["nvidia.com/gpu-suspend-on-pause"] == "true",
        "pod_annotations did not pass the opt-in: {}",
        spec["annotations"]
    );
    let record: serde_json::Value = serde_json::from_slice(&std::fs::read(
        cri.c.bundle(&ids[0]).join("nvidia-gpus.json"),
    )?)?;
    ensure!(
        record["pod"]["name"] == "gpu-pod"
            && record["pod"]["container"] == "env"
            && record["requested_by"] == "env"
            && record["devices"] == serde_json::json!(["/dev/nvidia1"]),
        "assignment record: {record}"
    );

    // A sibling in the same pod that asked for nothing gets nothing.
    let plain = cri.start_container(
        &pod,
        &pod_config,
        Cri::container("plain", GLIBC_IMAGE, "sleep 1000", &[], &[]),
    )?;
    let (_, out, _) = cri.exec(&plain, CHECK)?;
    ensure!(
        out.starts_with('\n') && out.contains("libcuda.so.1 -> stale stub"),
        "the sibling without a request sees no GPU and its own image: {out}"
    );
    ids.push(plain);

    // One shim serves the pod; stats come from the containers' cgroups.
    let shims = cri.c.shim_pids();
    ensure!(shims.len() == 1, "one shim per pod: {shims:?}");
    ensure!(
        Cri::cgroup_of(&ids[0]).is_some(),
        "the container's cgroup exists while it runs (so the cleanup check below means something)"
    );
    let stats = cri.stats(&ids[0])?;
    ensure!(
        stats
            .memory
            .as_ref()
            .and_then(|m| m.working_set_bytes.as_ref())
            .is_some_and(|w| w.value > 0),
        "ContainerStats memory: {stats:?}"
    );
    let all = cri.list_stats()?;
    for id in &ids {
        ensure!(
            all.iter()
                .any(|s| s.attributes.as_ref().is_some_and(|a| &a.id == id)),
            "ListContainerStats lacks {id}"
        );
    }

    cri.remove_pod(&pod)?;
    wait_pid_gone(shims[0], Duration::from_secs(30))
        .context("the pod's shim exits with the pod")?;
    ids.push(pod);
    cri.assert_clean(&ids)
}

fn oom_restart_update_and_a_containerd_restart(version: Version) -> Result<()> {
    let mut l = lab(version)?;
    let cri = &mut l.cri;
    let pod_config = cri.pod_config("oom-pod");
    let pod = cri.run_pod(&pod_config, HANDLER)?;

    // A memory limit hit: the status says OOMKilled.
    let mut hog = Cri::container("hog", GLIBC_IMAGE, "tail /dev/zero", &[], &[]);
    hog.linux = Some(cri::LinuxContainerConfig {
        resources: Some(cri::LinuxContainerResources {
            memory_limit_in_bytes: 32 << 20,
            ..Default::default()
        }),
        ..Default::default()
    });
    let hog = cri.start_container(&pod, &pod_config, hog)?;
    let mut last = None;
    wait_until(Duration::from_secs(60), "the memory hog to exit", || {
        let s = cri.status(&hog)?;
        let done = s.state == cri::ContainerState::ContainerExited as i32;
        last = Some(s);
        Ok(done)
    })?;
    let s = last.context("status")?;
    ensure!(
        s.reason == "OOMKilled",
        "reason {:?} (exit {})",
        s.reason,
        s.exit_code
    );

    // The kubelet's restart: a new attempt of the same container, with a GPU this time.
    let mut again = Cri::container(
        "hog",
        GLIBC_IMAGE,
        "sleep 1000",
        &[("NVIDIA_VISIBLE_DEVICES", "0")],
        &[],
    );
    again.metadata = Some(cri::ContainerMetadata {
        name: "hog".into(),
        attempt: 1,
    });
    let again = cri.start_container(&pod, &pod_config, again)?;
    let (code, out, _) = cri.exec(&again, CHECK)?;
    ensure!(
        code == 0 && out.starts_with("nvidia0 "),
        "restarted attempt: {out}"
    );

    // UpdateContainerResources reaches the cgroup.
    cri.update_memory(&again, 96 << 20)?;
    let (_, limit, _) = cri.exec(
        &again,
        "cat /sys/fs/cgroup/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory/memory.limit_in_bytes",
    )?;
    ensure!(
        limit.trim() == (96u64 << 20).to_string(),
        "memory limit in the cgroup: {limit}"
    );

    // containerd restarts with the pod running: the pod and container are still there, exec
    // works, and a stop is reported as an exit.
    cri.restart_daemon()?;
    let (code, out, _) = cri.exec(&again, "echo still here")?;
    ensure!(
        code == 0 && out.contains("still here"),
        "exec after a containerd restart: {out}"
    );
    let shims = cri.c.shim_pids();
    cri.stop_container(&again)?;
    let st = cri.status(&again)?;
    ensure!(
        st.state == cri::ContainerState::ContainerExited as i32,
        "the stop after the restart is reported as an exit: {st:?}"
    );
    cri.remove_container(&again)?;
    cri.remove_container(&hog)?;
    cri.remove_pod(&pod)?;
    for s in shims {
        wait_pid_gone(s, Duration::from_secs(30)).context("the pod's shim exits with the pod")?;
    }
    cri.assert_clean(&[pod, hog, again])
}

/// Runs every scenario under containerd 1.6 (bookworm), 1.7 (trixie) and 2.x (sid).
macro_rules! versions {
    ($($name:ident),* $(,)?) => {
        mod containerd_1_6 { $(#[test] fn $name() -> anyhow::Result<()> { super::$name(integration::Version::V1_6) })* }
        mod containerd_1_7 { $(#[test] fn $name() -> anyhow::Result<()> { super::$name(integration::Version::V1_7) })* }
        mod containerd_2 { $(#[test] fn $name() -> anyhow::Result<()> { super::$name(integration::Version::V2) })* }
    };
}

versions!(
    pod_gets_gpus_by_every_device_plugin_route,
    oom_restart_update_and_a_containerd_restart,
);
