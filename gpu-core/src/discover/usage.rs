//! What the GPUs are doing now, from NVML: each GPU's memory and the processes holding a
//! context on it, with their memory and their latest utilization sample. Host PIDs; the caller
//! maps them to containers.

use std::collections::BTreeMap;
use std::path::Path;

use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::Nvml;
use serde::Serialize;

/// One process on a GPU.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ProcessUsage {
    /// Host PID.
    pub pid: u32,
    /// GPU memory it holds, when the driver reports it.
    pub used_memory_bytes: Option<u64>,
    /// SM (compute) utilization, percent, from the latest sample.
    pub sm_util: Option<u32>,
    /// Memory-controller utilization, percent, from the latest sample.
    pub mem_util: Option<u32>,
    /// Holds a graphics context (else compute).
    pub graphics: bool,
}

/// One GPU.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GpuUsage {
    /// NVML index.
    pub index: u32,
    /// UUID.
    pub uuid: String,
    /// Model.
    pub name: String,
    /// Device minor (`/dev/nvidia<minor>`).
    pub minor: Option<u32>,
    /// Total memory, bytes.
    pub memory_total_bytes: Option<u64>,
    /// Used memory, bytes.
    pub memory_used_bytes: Option<u64>,
    /// Processes with a context on it.
    pub processes: Vec<ProcessUsage>,
}

fn used(m: &UsedGpuMemory) -> Option<u64> {
    match m {
        UsedGpuMemory::Used(b) => Some(*b),
        UsedGpuMemory::Unavailable => None,
    }
}

/// Reads every GPU's use through the NVML library at `lib`.
pub fn read(lib: &Path) -> Result<Vec<GpuUsage>, String> {
    let nvml = Nvml::builder()
        .lib_path(lib.as_os_str())
        .init()
        .map_err(|e| format!("loading {}: {e}", lib.display()))?;
    let count = nvml.device_count().map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for index in 0..count {
        let d = nvml.device_by_index(index).map_err(|e| e.to_string())?;
        // Latest sample per process; "no samples" (NotFound) means idle, not an error.
        let mut samples: BTreeMap<u32, (u64, u32, u32)> = BTreeMap::new();
        match d.process_utilization_stats(None) {
            Ok(list) => {
                for s in list {
                    let e = samples.entry(s.pid).or_insert((0, 0, 0));
                    if s.timestamp >= e.0 {
                        *e = (s.timestamp, s.sm_util, s.mem_util);
                    }
                }
            }
            Err(NvmlError::NotFound | NvmlError::NotSupported) => {}
            Err(e) => tracing::debug!("process utilization of GPU {index}: {e}"),
        }
        let mut processes: Vec<ProcessUsage> = Vec::new();
        let lists = [
            (d.running_compute_processes(), false),
            (d.running_graphics_processes(), true),
        ];
        for (list, graphics) in lists {
            for p in list.unwrap_or_default() {
                if processes.iter().any(|q| q.pid == p.pid) {
                    continue;
                }
                let s = samples.get(&p.pid);
                processes.push(ProcessUsage {
                    pid: p.pid,
                    used_memory_bytes: used(&p.used_gpu_memory),
                    sm_util: s.map(|s| s.1),
                    mem_util: s.map(|s| s.2),
                    graphics,
                });
            }
        }
        let mem = d.memory_info().ok();
        out.push(GpuUsage {
            index,
            uuid: d.uuid().map_err(|e| e.to_string())?,
            name: d.name().unwrap_or_default(),
            minor: d.minor_number().ok(),
            memory_total_bytes: mem.as_ref().map(|m| m.total),
            memory_used_bytes: mem.as_ref().map(|m| m.used),
            processes,
        });
    }
    Ok(out)
}
