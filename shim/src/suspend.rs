//! GPU-aware Pause and Resume. Freezing a cgroup stops a container's CPU, not its GPU memory.
//! For a container that opted in, Pause first has the driver lock and checkpoint its CUDA
//! processes (their device memory moves to host memory and the GPU is free for others), then
//! freezes; Resume thaws, then restores and unlocks. The driver's libcuda is loaded by a
//! short-lived helper (`nvidia-shim cuda …`), never in this process, so the per-pod shim stays
//! small and out of reach of driver faults.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use oci_spec::runtime::Spec;
use serde::{Deserialize, Serialize};

use crate::errors::ShimError;
use crate::reaper;

/// The per-container opt-in (`"true"` or `"false"`, over the config's default).
pub const ANNOTATION: &str = "nvidia.com/gpu-suspend-on-pause";
/// What a Pause suspended, kept in the bundle for `nvidia-shim top`.
pub const RECORD: &str = "nvidia-suspended.json";

/// How one container's CUDA processes are suspended; decided at Create.
#[derive(Clone, Debug)]
pub struct Plan {
    /// `nvidia-shim`.
    pub helper: PathBuf,
    /// The host driver's libcuda.
    pub libcuda: PathBuf,
    /// The host driver's libnvidia-ml.
    pub nvml: PathBuf,
    /// The container's cgroup.
    pub cgroup: String,
    /// Limit for each suspend or resume.
    pub timeout: Duration,
}

/// A process a Pause suspended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Suspended {
    /// Host PID.
    pub pid: u32,
    /// GPU memory it released.
    pub released_bytes: u64,
}

#[derive(Deserialize)]
struct SuspendOutput {
    processes: Vec<Suspended>,
}

/// Whether the container asked (its annotation wins over the config's `default`).
pub fn wanted(spec: &Spec, default: bool) -> bool {
    match spec.annotations().as_ref().and_then(|a| a.get(ANNOTATION)) {
        Some(v) => v.eq_ignore_ascii_case("true"),
        None => default,
    }
}

/// The helper: `nvidia-shim` next to this binary (they are installed together), else on PATH.
pub fn helper() -> Option<PathBuf> {
    let beside = std::env::current_exe()
        .ok()?
        .parent()
        .map(|d| d.join("nvidia-shim"))
        .filter(|p| p.is_file());
    beside.or_else(|| {
        std::env::split_paths(&std::env::var_os("PATH")?)
            .map(|d| d.join("nvidia-shim"))
            .find(|p| p.is_file())
    })
}

/// Runs the helper with `args` under the plan's limit (plus a margin for loading the driver);
/// returns its stdout, or its one-line error.
async fn run(p: &Plan, args: &[&str]) -> Result<Vec<u8>, ShimError> {
    let mut cmd = Command::new(&p.helper);
    cmd.arg("cuda")
        .args(args)
        .arg("--libcuda")
        .arg(&p.libcuda)
        .arg("--timeout-ms")
        .arg(p.timeout.as_millis().to_string())
        .stdin(Stdio::null());
    let limit = p.timeout + Duration::from_secs(10);
    match reaper::output(cmd, limit).await {
        Err(e) => Err(ShimError::Failed(format!(
            "nvidia: running {}: {e}",
            p.helper.display()
        ))),
        Ok(None) => Err(ShimError::Failed(format!(
            "nvidia: the CUDA suspend helper did not finish within {} s and was killed",
            limit.as_secs()
        ))),
        Ok(Some((0, out, _))) => Ok(out),
        Ok(Some((_, _, err))) => {
            let msg = String::from_utf8_lossy(&err);
            let line = msg
                .lines()
                .last()
                .unwrap_or("failed")
                .trim_start_matches("nvidia-shim: ");
            Err(ShimError::Failed(format!(
                "nvidia: {}",
                gpu_core::echo::clipped(line, 1024)
            )))
        }
    }
}

/// Locks and checkpoints the container's CUDA processes (all or none).
pub async fn suspend(p: &Plan) -> Result<Vec<Suspended>, ShimError> {
    let nvml = p.nvml.display().to_string();
    let out = run(p, &["suspend", "--nvml", &nvml, "--cgroup", &p.cgroup]).await?;
    serde_json::from_slice::<SuspendOutput>(&out)
        .map(|o| o.processes)
        .map_err(|e| ShimError::Failed(format!("nvidia: the CUDA suspend helper's answer: {e}")))
}

/// Restores and unlocks `procs`.
pub async fn resume(p: &Plan, procs: &[Suspended]) -> Result<(), ShimError> {
    let pids: Vec<String> = procs.iter().map(|s| s.pid.to_string()).collect();
    let mut args = vec!["resume"];
    for pid in &pids {
        args.extend(["--pid", pid.as_str()]);
    }
    run(p, &args).await.map(|_| ())
}

/// Keeps what was suspended in the bundle (removed on Resume), for `nvidia-shim top`.
pub fn record(bundle: &Path, procs: &[Suspended]) {
    let path = bundle.join(RECORD);
    let r = if procs.is_empty() {
        std::fs::remove_file(&path).or_else(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Ok(()),
            _ => Err(e),
        })
    } else {
        serde_json::to_vec(procs)
            .map_err(std::io::Error::other)
            .and_then(|b| std::fs::write(&path, b))
    };
    if let Err(e) = r {
        tracing::warn!("recording suspended processes in {}: {e}", path.display());
    }
}
