//! `just bench`: containerd-shim-nvidia-v2 against containerd's Go runc shim under one private
//! containerd, interleaved. Start latency (median `ctr run --rm … true`) without GPU, with a GPU
//! request on a simulated driver host, and shim RSS with 1 and 10 running containers of one pod.
//!
//! Usage: bench [ITERATIONS] (default 30). Prints a Markdown table.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use gpu_core::fixture::{FakeHost, Layout};
use integration::{processes_matching, Containerd, IMAGE};

const GO_RUNTIME: &str = "io.containerd.runc.v2";
const OUR_RUNTIME: &str = "io.containerd.nvidia.v2";

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn timed_run(c: &Containerd, runtime: &str, extra: &[&str], id: &str) -> Result<f64> {
    let mut args = vec!["run", "--rm", "--runtime", runtime];
    args.extend_from_slice(extra);
    args.extend_from_slice(&[IMAGE, id, "true"]);
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

fn rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn threads(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Starts `n` containers of one pod with `runtime`; returns (RSS KiB, threads) of its shim.
fn pod_rss(c: &mut Containerd, runtime: &str, tag: &str, n: usize) -> Result<(u64, u64)> {
    let pod = format!("io.kubernetes.cri.sandbox-id=bench-{tag}");
    let ids: Vec<String> = (0..n).map(|i| format!("rss-{tag}-{i}")).collect();
    for id in &ids {
        let out = c.ctr(&[
            "run",
            "-d",
            "--runtime",
            runtime,
            "--annotation",
            &pod,
            IMAGE,
            id,
            "sleep",
            "600",
        ])?;
        if !out.status.success() {
            bail!("{runtime}: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
    let bin = if runtime == GO_RUNTIME {
        "containerd-shim-runc-v2"
    } else {
        "containerd-shim-nvidia-v2"
    };
    let address = c.address().display().to_string();
    let pids = processes_matching(|argv| {
        argv.first().is_some_and(|a| a.ends_with(bin)) && argv.iter().any(|a| a == &address)
    });
    if pids.len() != 1 {
        bail!("{runtime}: expected one shim for the pod, found {pids:?}");
    }
    let r = (rss_kib(pids[0]), threads(pids[0]));
    for id in &ids {
        c.ctr(&["task", "kill", "-s", "SIGKILL", id])?;
    }
    for id in &ids {
        integration::wait_until(Duration::from_secs(20), "task exit", || {
            Ok(c.ctr(&["task", "delete", id])?.status.success())
        })?;
        c.ctr(&["containers", "rm", id])?;
    }
    Ok(r)
}

fn main() -> Result<()> {
    let iterations: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()
        .context("ITERATIONS must be a number")?
        .unwrap_or(30);
    let mut c = Containerd::start()?;
    let host_dir = tempfile::Builder::new()
        .prefix("nvbench-")
        .tempdir_in("/tmp")?;
    let host = FakeHost::build(host_dir.path(), Layout::Gke, 8)?;
    let cfg = host.write_config()?;
    let gpu = [
        "--runtime-config-path",
        cfg.as_str(),
        "--env",
        "NVIDIA_VISIBLE_DEVICES=all",
    ];

    // Warm up caches (page cache, the inventory cache) once per variant.
    timed_run(&c, GO_RUNTIME, &[], "warm-a")?;
    timed_run(&c, OUR_RUNTIME, &[], "warm-b")?;
    timed_run(&c, OUR_RUNTIME, &gpu, "warm-c")?;
    let (mut a, mut b, mut g) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..iterations {
        a.push(timed_run(&c, GO_RUNTIME, &[], &format!("a{i}"))?);
        b.push(timed_run(&c, OUR_RUNTIME, &[], &format!("b{i}"))?);
        g.push(timed_run(&c, OUR_RUNTIME, &gpu, &format!("c{i}"))?);
    }
    let (ma, mb, mg) = (median(&mut a), median(&mut b), median(&mut g));

    let (go1, go1t) = pod_rss(&mut c, GO_RUNTIME, "go1", 1)?;
    let (our1, our1t) = pod_rss(&mut c, OUR_RUNTIME, "our1", 1)?;
    let (go10, go10t) = pod_rss(&mut c, GO_RUNTIME, "go10", 10)?;
    let (our10, our10t) = pod_rss(&mut c, OUR_RUNTIME, "our10", 10)?;

    let shim = integration::bin_dir().join(integration::SHIM_BIN);
    println!("## Benchmark: containerd-shim-nvidia-v2 vs containerd-shim-runc-v2 (Go)");
    println!();
    println!(
        "containerd 1.6 (private), runc, busybox image; {iterations} interleaved iterations; shim binary {}",
        shim.display()
    );
    println!();
    println!("| start latency, median `ctr run --rm … true` | ms | vs Go shim |");
    println!("|---|---|---|");
    println!("| (a) Go runc shim, no GPU | {ma:.1} | 1.000 |");
    println!("| (b) our shim, no GPU | {mb:.1} | {:.3} |", mb / ma);
    println!(
        "| (c) our shim, `NVIDIA_VISIBLE_DEVICES=all`, simulated 8-GPU driver host | {mg:.1} | {:.3} |",
        mg / ma
    );
    println!();
    println!("| shim memory | Go runc shim | our shim |");
    println!("|---|---|---|");
    println!(
        "| RSS, 1 running container | {go1} KiB ({go1t} threads) | {our1} KiB ({our1t} threads) |"
    );
    println!(
        "| RSS, 10 running containers of one pod | {go10} KiB ({go10t} threads) | {our10} KiB ({our10t} threads) |"
    );
    c.assert_clean()?;
    Ok(())
}
