//! `nvidia-shim cuda suspend|resume`: the helper the shim runs around Pause and Resume of a
//! container that opted in. Suspend finds the container's processes holding a CUDA context
//! (NVML's processes on the GPUs, by cgroup), locks and checkpoints them in parallel under a time
//! limit — their device memory goes to host memory and the GPU is free — and undoes everything
//! if any step fails. Resume restores and unlocks. Prints JSON on success; on failure one line
//! on stderr naming the process and the driver's error, and exit status 1.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use gpu_core::assignment::{cgroup_key, in_cgroup};
use gpu_core::discover::usage;
use serde::Serialize;

use crate::cuda::{Driver, State};
use crate::{CliError, CliResult};

/// `cuda` subcommands.
#[derive(clap::Subcommand)]
pub enum CudaCommand {
    /// Lock and checkpoint every CUDA process of the container in cgroup KEY.
    Suspend {
        /// The host driver's libcuda.
        #[arg(long, value_name = "PATH")]
        libcuda: PathBuf,
        /// The host driver's libnvidia-ml.
        #[arg(long, value_name = "PATH")]
        nvml: PathBuf,
        /// The container's cgroup (as recorded in its bundle).
        #[arg(long, value_name = "KEY")]
        cgroup: String,
        /// Time limit for the whole step, milliseconds.
        #[arg(long, value_name = "MS", default_value_t = 30_000)]
        timeout_ms: u64,
    },
    /// Restore and unlock processes a suspend left checkpointed.
    Resume {
        /// The host driver's libcuda.
        #[arg(long, value_name = "PATH")]
        libcuda: PathBuf,
        /// A process to resume (repeatable).
        #[arg(long = "pid", value_name = "PID", required = true)]
        pids: Vec<u32>,
        /// Time limit for the whole step, milliseconds.
        #[arg(long, value_name = "MS", default_value_t = 30_000)]
        timeout_ms: u64,
    },
}

/// One suspended process.
#[derive(Serialize)]
struct Suspended {
    pid: u32,
    /// GPU memory it held before, now released.
    released_bytes: u64,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Step {
    Locked,
    Checkpointed,
}

/// Runs `f(pid)` for every pid on its own thread; collects what came back before `deadline`.
/// A thread still running at the deadline is reported as such (it cannot be cancelled; the
/// helper's exit ends it).
fn parallel<T: Send + 'static>(
    pids: &[u32],
    deadline: Instant,
    f: impl Fn(u32) -> T + Send + Sync + 'static,
) -> BTreeMap<u32, Option<T>> {
    let f = Arc::new(f);
    let (tx, rx) = mpsc::channel();
    for &pid in pids {
        let (tx, f) = (tx.clone(), f.clone());
        std::thread::spawn(move || {
            let _ = tx.send((pid, f(pid)));
        });
    }
    drop(tx);
    let mut out: BTreeMap<u32, Option<T>> = pids.iter().map(|p| (*p, None)).collect();
    for _ in pids {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((pid, r)) => {
                out.insert(pid, Some(r));
            }
            Err(_) => break,
        }
    }
    out
}

/// The container's processes on GPUs, with the memory each holds.
fn cuda_processes(nvml: &std::path::Path, cgroup: &str) -> Result<BTreeMap<u32, u64>, CliError> {
    let gpus = usage::read(nvml).map_err(CliError::failed)?;
    let mut out = BTreeMap::new();
    for p in gpus.iter().flat_map(|g| &g.processes) {
        let cg = std::fs::read_to_string(format!("/proc/{}/cgroup", p.pid))
            .ok()
            .and_then(|t| cgroup_key(&t));
        if cg.is_some_and(|c| in_cgroup(&c, cgroup)) {
            *out.entry(p.pid).or_insert(0) += p.used_memory_bytes.unwrap_or(0);
        }
    }
    Ok(out)
}

/// Puts back what a failed suspend did: restore what was checkpointed, unlock what was locked.
fn roll_back(driver: &Driver, done: &BTreeMap<u32, Step>) -> Vec<String> {
    let mut problems = Vec::new();
    for (&pid, &step) in done {
        if step == Step::Checkpointed {
            if let Err(e) = driver.restore(pid as i32) {
                problems.push(format!("restoring pid {pid}: {e}"));
                continue;
            }
        }
        if let Err(e) = driver.unlock(pid as i32) {
            problems.push(format!("unlocking pid {pid}: {e}"));
        }
    }
    problems
}

fn suspend(libcuda: PathBuf, nvml: PathBuf, cgroup: String, timeout: Duration) -> CliResult {
    let deadline = Instant::now() + timeout;
    let procs = cuda_processes(&nvml, &cgroup)?;
    if procs.is_empty() {
        println!("{{\"processes\":[]}}");
        return Ok(());
    }
    let driver = Arc::new(Driver::load(&libcuda).map_err(CliError::failed)?);
    let mut pids = Vec::new();
    for &pid in procs.keys() {
        match driver.state(pid as i32) {
            Ok(State::Running) => pids.push(pid),
            Ok(s) => {
                return Err(CliError::failed(format!(
                    "pid {pid} is already in CUDA checkpoint state {s:?}; nothing was changed"
                )))
            }
            // The driver knows no CUDA context there (it ended meanwhile): nothing to do.
            Err(_) => {}
        }
    }
    let lock_ms = u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX);
    let d = driver.clone();
    let results = parallel(&pids, deadline, move |pid| {
        d.lock(pid as i32, lock_ms)
            .map_err(|e| (Step::Locked, format!("lock: {e}")))?;
        d.checkpoint(pid as i32)
            .map_err(|e| (Step::Checkpointed, format!("checkpoint: {e}")))
    });
    let mut done = BTreeMap::new();
    let mut failures = Vec::new();
    for (pid, r) in &results {
        match r {
            Some(Ok(())) => {
                done.insert(*pid, Step::Checkpointed);
            }
            // A failed checkpoint leaves the process locked; a failed lock leaves nothing.
            Some(Err((Step::Checkpointed, e))) => {
                done.insert(*pid, Step::Locked);
                failures.push(format!("pid {pid}: {e}"));
            }
            Some(Err((Step::Locked, e))) => failures.push(format!("pid {pid}: {e}")),
            None => failures.push(format!(
                "pid {pid}: no answer from the driver within {} ms (it may stay locked)",
                timeout.as_millis()
            )),
        }
    }
    if failures.is_empty() {
        let out: Vec<Suspended> = pids
            .iter()
            .map(|&pid| Suspended {
                pid,
                released_bytes: procs.get(&pid).copied().unwrap_or(0),
            })
            .collect();
        println!("{}", serde_json::json!({ "processes": out }));
        return Ok(());
    }
    let problems = roll_back(&driver, &done);
    let undo = if problems.is_empty() {
        "the others were restored and unlocked".to_string()
    } else {
        format!("undoing the others failed too: {}", problems.join("; "))
    };
    Err(CliError::failed(format!(
        "suspending CUDA processes failed: {}; {undo}",
        failures.join("; ")
    )))
}

fn resume(libcuda: PathBuf, pids: Vec<u32>, timeout: Duration) -> CliResult {
    let deadline = Instant::now() + timeout;
    let driver = Arc::new(Driver::load(&libcuda).map_err(CliError::failed)?);
    let d = driver.clone();
    // Idempotent by state, so a resume retried after a partial failure finishes the job.
    let results = parallel(&pids, deadline, move |pid| -> Result<(), String> {
        let p = pid as i32;
        if d.state(p)? == State::Checkpointed {
            d.restore(p).map_err(|e| format!("restore: {e}"))?;
        }
        if d.state(p)? == State::Locked {
            d.unlock(p).map_err(|e| format!("unlock: {e}"))?;
        }
        Ok(())
    });
    let failures: Vec<String> = results
        .iter()
        .filter_map(|(pid, r)| match r {
            Some(Ok(())) => None,
            Some(Err(e)) => Some(format!("pid {pid}: {e}")),
            None => Some(format!(
                "pid {pid}: no answer from the driver within {} ms",
                timeout.as_millis()
            )),
        })
        .collect();
    if failures.is_empty() {
        println!("{}", serde_json::json!({ "resumed": pids }));
        Ok(())
    } else {
        Err(CliError::failed(format!(
            "resuming CUDA processes failed: {}",
            failures.join("; ")
        )))
    }
}

/// Runs `cuda suspend|resume`.
pub fn run(cmd: CudaCommand) -> CliResult {
    match cmd {
        CudaCommand::Suspend {
            libcuda,
            nvml,
            cgroup,
            timeout_ms,
        } => suspend(libcuda, nvml, cgroup, Duration::from_millis(timeout_ms)),
        CudaCommand::Resume {
            libcuda,
            pids,
            timeout_ms,
        } => resume(libcuda, pids, Duration::from_millis(timeout_ms)),
    }
}
