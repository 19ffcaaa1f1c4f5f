//! Measuring shims side by side, for `just bench` and the GPU host's acceptance: start latency
//! of `ctr run --rm`, and each shim's memory over N one-container pods.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::{processes_matching, Containerd, IMAGE};

/// containerd's Go runc shim.
pub const GO_RUNTIME: &str = "io.containerd.runc.v2";
/// This shim.
pub const OUR_RUNTIME: &str = "io.containerd.nvidia.v2";

/// The `p`th percentile of `v` (sorted in place).
pub fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
    v[rank.min(v.len() - 1)]
}

/// The median of `v` (sorted in place).
pub fn median(v: &mut [f64]) -> f64 {
    percentile(v, 50.0)
}

/// Milliseconds a `ctr run --rm … true` of the busybox test image takes with `runtime`.
pub fn timed_run(c: &Containerd, runtime: &str, extra: &[&str], id: &str) -> Result<f64> {
    timed_run_of(c, IMAGE, runtime, extra, id)
}

/// Like [`timed_run`], with `image`.
pub fn timed_run_of(
    c: &Containerd,
    image: &str,
    runtime: &str,
    extra: &[&str],
    id: &str,
) -> Result<f64> {
    let mut args = vec!["run", "--rm", "--runtime", runtime];
    args.extend_from_slice(extra);
    args.extend_from_slice(&[image, id, "true"]);
    let t = Instant::now();
    let out = c.ctr(&args)?;
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    if !out.status.success() {
        bail!(
            "{runtime} run failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(ms)
}

/// One line of `/proc/PID/smaps_rollup` in KiB.
pub fn rollup(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// (RSS, PSS, USS) of a process in KiB.
pub fn memory(pid: i32) -> (u64, u64, u64) {
    let t = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let uss = rollup(&t, "Private_Clean:") + rollup(&t, "Private_Dirty:");
    (rollup(&t, "Rss:"), rollup(&t, "Pss:"), uss)
}

/// The shim binary a runtime type starts.
pub fn shim_bin(runtime: &str) -> &'static str {
    if runtime == GO_RUNTIME {
        "containerd-shim-runc-v2"
    } else {
        crate::SHIM_BIN
    }
}

/// Pids of `runtime`'s shims serving `c`.
pub fn shims_of(c: &Containerd, runtime: &str) -> Vec<i32> {
    let bin = shim_bin(runtime);
    let address = c.address().display().to_string();
    processes_matching(|argv| {
        argv.first().is_some_and(|a| a.ends_with(bin)) && argv.iter().any(|a| a == &address)
    })
}

/// Starts detached `sleep` containers; `pod` groups them into one shim when given.
pub fn start_sleepers(
    c: &Containerd,
    runtime: &str,
    ids: &[String],
    pod: Option<&str>,
    extra: &[&str],
) -> Result<()> {
    start_sleepers_of(c, IMAGE, runtime, ids, pod, extra)
}

/// Like [`start_sleepers`], with `image`.
pub fn start_sleepers_of(
    c: &Containerd,
    image: &str,
    runtime: &str,
    ids: &[String],
    pod: Option<&str>,
    extra: &[&str],
) -> Result<()> {
    for (i, id) in ids.iter().enumerate() {
        let own = format!("io.kubernetes.cri.sandbox-id=pod-{id}");
        let ann = pod.map(str::to_string).unwrap_or(own);
        let mut args = vec!["run", "-d", "--runtime", runtime, "--annotation", &ann];
        args.extend_from_slice(extra);
        args.extend_from_slice(&[image, id, "sleep", "600"]);
        let out = c.ctr(&args)?;
        if !out.status.success() {
            bail!("{runtime} #{i}: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
    Ok(())
}

/// Kills and removes containers `ids`.
pub fn remove_all(c: &Containerd, ids: &[String]) -> Result<()> {
    for id in ids {
        c.ctr(&["task", "kill", "-s", "SIGKILL", id])?;
    }
    for id in ids {
        crate::wait_until(Duration::from_secs(30), "task exit", || {
            Ok(c.ctr(&["task", "delete", id])?.status.success())
        })?;
        c.ctr(&["containers", "rm", id])?;
    }
    Ok(())
}

/// Each shim's memory over N one-container pods.
pub struct PodMemory {
    /// Shim processes found.
    pub shims: usize,
    /// RSS per shim, KiB.
    pub rss: Vec<f64>,
    /// PSS per shim, KiB.
    pub pss: Vec<f64>,
    /// USS per shim, KiB.
    pub uss: Vec<f64>,
    /// Most threads of one shim.
    pub threads: u64,
}

/// `n` pods of one container each with `runtime`: every shim's memory.
pub fn pod_memory(c: &Containerd, runtime: &str, tag: &str, n: usize) -> Result<PodMemory> {
    pod_memory_of(c, IMAGE, runtime, tag, n, &[])
}

/// Like [`pod_memory`], with `image` and `extra` `ctr run` options.
pub fn pod_memory_of(
    c: &Containerd,
    image: &str,
    runtime: &str,
    tag: &str,
    n: usize,
    extra: &[&str],
) -> Result<PodMemory> {
    let ids: Vec<String> = (0..n).map(|i| format!("mem-{tag}-{i}")).collect();
    start_sleepers_of(c, image, runtime, &ids, None, extra)?;
    let pids = shims_of(c, runtime);
    let mut m = PodMemory {
        shims: pids.len(),
        rss: Vec::new(),
        pss: Vec::new(),
        uss: Vec::new(),
        threads: 0,
    };
    for pid in &pids {
        let (rss, pss, uss) = memory(*pid);
        m.rss.push(rss as f64);
        m.pss.push(pss as f64);
        m.uss.push(uss as f64);
        m.threads = m.threads.max(threads(*pid));
    }
    remove_all(c, &ids)?;
    Ok(m)
}

/// Threads of process `pid`.
pub fn threads(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// The sum of `v`.
pub fn sum(v: &[f64]) -> f64 {
    v.iter().sum()
}
