//! Who uses which GPU: the assignments the shim recorded in running containers' bundles, joined
//! with NVML's per-process memory and utilization through each process's cgroup. Shared by
//! `top` and `metrics`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use gpu_core::assignment::{cgroup_key, gpu_minor, in_cgroup, Assignment, PodRef};
use gpu_core::discover::usage::{self, GpuUsage};
use gpu_core::discover::{Discovery, Host};
use nvidia_shim_config::ShimConfig;
use serde::Serialize;

use crate::CliError;

/// containerd's task state directory (bundles are `<dir>/<namespace>/<id>`).
pub const DEFAULT_STATE_DIR: &str = "/run/containerd/io.containerd.runtime.v2.task";

/// A GPU process, as attributed.
#[derive(Clone, Debug, Serialize)]
pub struct Proc {
    /// Host PID.
    pub pid: u32,
    /// GPU UUID.
    pub gpu: String,
    /// GPU memory held, bytes.
    pub used_memory_bytes: Option<u64>,
    /// SM utilization, percent.
    pub sm_util: Option<u32>,
    /// Memory-controller utilization, percent.
    pub mem_util: Option<u32>,
}

/// A running GPU container.
#[derive(Clone, Debug, Serialize)]
pub struct Container {
    /// containerd namespace.
    pub namespace: String,
    /// Container id.
    pub id: String,
    /// The pod, when CRI made it.
    pub pod: Option<PodRef>,
    /// How it asked.
    pub requested_by: String,
    /// Driver capabilities.
    pub capabilities: Vec<String>,
    /// UUIDs of the GPUs it was given.
    pub gpus: Vec<String>,
    /// Its cgroup.
    pub cgroup: Option<String>,
    /// Its processes on GPUs.
    pub processes: Vec<Proc>,
    /// GPU memory summed over its processes, bytes.
    pub used_memory_bytes: u64,
    /// Paused with its CUDA processes checkpointed: the GPU memory that released.
    pub suspended: Option<Suspension>,
}

/// A paused container's suspended CUDA processes (`nvidia-suspended.json` in its bundle).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Suspension {
    /// Processes checkpointed.
    pub processes: usize,
    /// GPU memory they held, released while paused.
    pub released_bytes: u64,
}

#[derive(serde::Deserialize)]
struct SuspendedProc {
    released_bytes: u64,
}

fn suspension(bundle: &Path) -> Option<Suspension> {
    let text =
        gpu_core::hostfile::read_text(&bundle.join("nvidia-suspended.json"), 1 << 20).ok()?;
    let procs: Vec<SuspendedProc> = serde_json::from_str(&text).ok()?;
    Some(Suspension {
        processes: procs.len(),
        released_bytes: procs.iter().map(|p| p.released_bytes).sum(),
    })
}

/// The node's GPUs and who uses them.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Every GPU (processes are listed under containers and `unattributed`).
    pub gpus: Vec<GpuSummary>,
    /// Running GPU containers.
    pub containers: Vec<Container>,
    /// GPU processes of no known GPU container (host processes, other runtimes).
    pub unattributed: Vec<Proc>,
    /// Containers whose assignment record could not be used, and why: their processes show
    /// as unattributed.
    pub unreadable: Vec<Unreadable>,
    /// Why per-GPU usage is missing, when NVML could not be read (containers and GPUs are still
    /// listed, from the records and the driver's procfs).
    pub usage_unavailable: Option<String>,
}

/// A container whose assignment record could not be read.
#[derive(Clone, Debug, Serialize)]
pub struct Unreadable {
    /// containerd namespace (the bundle's parent directory).
    pub namespace: String,
    /// Container id (the bundle's directory).
    pub id: String,
    /// Why.
    pub reason: String,
}

/// One GPU.
#[derive(Clone, Debug, Serialize)]
pub struct GpuSummary {
    /// NVML index.
    pub index: u32,
    /// UUID.
    pub uuid: String,
    /// Model.
    pub name: String,
    /// Total memory, bytes.
    pub memory_total_bytes: Option<u64>,
    /// Used memory, bytes.
    pub memory_used_bytes: Option<u64>,
}

fn process_cgroup(pid: u32) -> Option<String> {
    cgroup_key(&std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?)
}

/// Running GPU containers under `state_dir`: a record whose init process still lives in the
/// recorded cgroup (a reused PID elsewhere does not count).
fn running(state_dir: &Path) -> (Vec<(Assignment, Option<Suspension>)>, Vec<Unreadable>) {
    let mut out = Vec::new();
    let mut unreadable = Vec::new();
    let dirs = |p: &Path| -> Vec<PathBuf> {
        std::fs::read_dir(p)
            .map(|r| {
                r.filter_map(|e| Some(e.ok()?.path()))
                    .filter(|p| p.is_dir())
                    .collect()
            })
            .unwrap_or_default()
    };
    for ns in dirs(state_dir) {
        for bundle in dirs(&ns) {
            let a = match Assignment::read(&bundle) {
                Ok(Some(a)) => a,
                Ok(None) => continue,
                Err(reason) => {
                    let name = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned());
                    eprintln!(
                        "nvidia-shim: warning: assignment record skipped: {}",
                        crate::printable::escaped(&reason)
                    );
                    unreadable.push(Unreadable {
                        namespace: name(&ns).unwrap_or_default(),
                        id: name(&bundle).unwrap_or_default(),
                        reason,
                    });
                    continue;
                }
            };
            let pid = std::fs::read_to_string(bundle.join("init.pid"))
                .ok()
                .and_then(|t| t.trim().parse::<u32>().ok());
            let alive = pid
                .and_then(process_cgroup)
                .is_some_and(|c| a.cgroup.as_deref().is_none_or(|want| in_cgroup(&c, want)));
            if alive {
                out.push((a, suspension(&bundle)));
            }
        }
    }
    out.sort_by(|(a, _), (b, _)| (&a.namespace, &a.id).cmp(&(&b.namespace, &b.id)));
    unreadable.sort_by(|a, b| (&a.namespace, &a.id).cmp(&(&b.namespace, &b.id)));
    (out, unreadable)
}

/// The host's GPUs as discovery knows them without NVML (the driver's procfs), with no usage.
fn gpus_without_usage(cfg: &ShimConfig) -> Vec<GpuUsage> {
    let Ok(inv) = Host::new(cfg.driver.clone()).inventory() else {
        return Vec::new();
    };
    inv.gpus
        .iter()
        .map(|g| GpuUsage {
            index: g.index,
            uuid: g.uuid.clone(),
            name: g.model.clone(),
            minor: Some(g.minor),
            memory_total_bytes: None,
            memory_used_bytes: None,
            processes: Vec::new(),
        })
        .collect()
}

/// The NVML library the shim's discovery would use.
fn nvml_library(cfg: &ShimConfig) -> Result<PathBuf, CliError> {
    if let Some(p) = &cfg.driver.nvml_library {
        return Ok(p.clone());
    }
    let inv = Host::new(cfg.driver.clone())
        .inventory()
        .map_err(|e| CliError::failed(e.to_string()))?;
    inv.libraries
        .iter()
        .find(|l| l.prefix == "libnvidia-ml.so" && !l.is_32bit)
        .map(|l| l.path.clone())
        .ok_or_else(|| {
            CliError::failed(format!(
                "no libnvidia-ml under the driver root {}",
                cfg.driver.root.display()
            ))
        })
}

/// Joins `records` with `gpus`: pure, given each process's cgroup.
pub fn join(
    records: Vec<(Assignment, Option<Suspension>)>,
    gpus: &[GpuUsage],
    cgroup_of: impl Fn(u32) -> Option<String>,
) -> Report {
    let by_minor: BTreeMap<u32, &str> = gpus
        .iter()
        .filter_map(|g| Some((g.minor?, g.uuid.as_str())))
        .collect();
    let mut containers: Vec<Container> = records
        .into_iter()
        .map(|(a, suspended)| Container {
            gpus: a
                .devices
                .iter()
                .filter_map(|d| by_minor.get(&gpu_minor(d)?).map(|u| u.to_string()))
                .collect(),
            namespace: a.namespace,
            id: a.id,
            pod: a.pod,
            requested_by: a.requested_by,
            capabilities: a.capabilities,
            cgroup: a.cgroup,
            processes: Vec::new(),
            used_memory_bytes: 0,
            suspended,
        })
        .collect();
    let mut unattributed = Vec::new();
    for g in gpus {
        for p in &g.processes {
            let proc = Proc {
                pid: p.pid,
                gpu: g.uuid.clone(),
                used_memory_bytes: p.used_memory_bytes,
                sm_util: p.sm_util,
                mem_util: p.mem_util,
            };
            let cg = cgroup_of(p.pid);
            let owner = containers
                .iter_mut()
                .find(|c| matches!((&cg, &c.cgroup), (Some(pc), Some(cc)) if in_cgroup(pc, cc)));
            match owner {
                Some(c) => {
                    c.used_memory_bytes += p.used_memory_bytes.unwrap_or(0);
                    c.processes.push(proc);
                }
                None => unattributed.push(proc),
            }
        }
    }
    Report {
        gpus: gpus
            .iter()
            .map(|g| GpuSummary {
                index: g.index,
                uuid: g.uuid.clone(),
                name: g.name.clone(),
                memory_total_bytes: g.memory_total_bytes,
                memory_used_bytes: g.memory_used_bytes,
            })
            .collect(),
        containers,
        unattributed,
        unreadable: Vec::new(),
        usage_unavailable: None,
    }
}

/// The report for this node; `namespace` limits the containers shown (attribution still
/// considers every namespace).
pub fn report(
    cfg: &ShimConfig,
    state_dir: &Path,
    namespace: Option<&str>,
) -> Result<Report, CliError> {
    let (records, unreadable) = running(state_dir);
    let (gpus, unavailable) =
        match nvml_library(cfg).and_then(|lib| usage::read(&lib).map_err(CliError::failed)) {
            Ok(g) => (g, None),
            Err(e) => (gpus_without_usage(cfg), Some(e.message)),
        };
    let mut r = join(records, &gpus, process_cgroup);
    r.unreadable = unreadable;
    r.usage_unavailable = unavailable;
    if let Some(ns) = namespace {
        r.containers.retain(|c| c.namespace == ns);
        r.unreadable.retain(|u| u.namespace == ns);
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpu_core::discover::usage::ProcessUsage;

    fn gpu(index: u32, minor: u32, procs: &[(u32, u64)]) -> GpuUsage {
        GpuUsage {
            index,
            uuid: format!("GPU-{index}"),
            name: "fake".into(),
            minor: Some(minor),
            memory_total_bytes: Some(80 << 30),
            memory_used_bytes: None,
            processes: procs
                .iter()
                .map(|&(pid, b)| ProcessUsage {
                    pid,
                    used_memory_bytes: Some(b),
                    sm_util: Some(10),
                    mem_util: Some(5),
                    graphics: false,
                })
                .collect(),
        }
    }

    #[test]
    fn two_containers_share_a_gpu_and_a_stranger_is_unattributed() {
        let rec = |id: &str, cg: &str| Assignment {
            namespace: "k8s.io".into(),
            id: id.into(),
            devices: vec!["/dev/nvidia3".into()],
            cgroup: Some(cg.into()),
            ..Default::default()
        };
        let gpus = [gpu(
            0,
            3,
            &[(10, 1 << 30), (11, 2 << 30), (12, 3 << 30), (99, 5)],
        )];
        let cg = |pid: u32| match pid {
            10 => Some("/pods/a".to_string()),
            11 => Some("/pods/a/sub".to_string()),
            12 => Some("/pods/b".to_string()),
            _ => Some("/user.slice".to_string()),
        };
        let r = join(
            vec![(rec("a", "/pods/a"), None), (rec("b", "/pods/b"), None)],
            &gpus,
            cg,
        );
        assert_eq!(r.containers[0].gpus, ["GPU-0"]);
        assert_eq!(r.containers[0].used_memory_bytes, 3 << 30);
        assert_eq!(r.containers[0].processes.len(), 2);
        assert_eq!(r.containers[1].used_memory_bytes, 3 << 30);
        assert_eq!(r.unattributed.len(), 1);
        assert_eq!(r.unattributed[0].pid, 99);
    }
}
