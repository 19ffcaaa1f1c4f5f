//! `just bench`: containerd-shim-nvidia-v2 against containerd's Go runc shim under one private
//! containerd, side by side in one run. Prints Markdown tables:
//! - start latency (median `ctr run --rm … true`, interleaved): Go, ours, ours with one GPU and
//!   with all GPUs of a simulated 8-GPU host;
//! - per-pod memory: N pods (one shim and one container each), each shim's RSS, PSS and USS from
//!   `smaps_rollup`, ours and Go's, with the sums;
//! - scaling: GPU start latency with 1, 8 and 64 GPUs and with 10 and 200 driver libraries; exec
//!   latency in a pod shim holding 1, 10 and 100 containers; 50 concurrent starts (p50/p99,
//!   failures), ours with a GPU against Go without.
//!
//! Usage: bench [ITERATIONS] [PODS] (defaults 30 and 50).

use std::time::Instant;

use anyhow::{bail, Context, Result};
use gpu_core::fixture::{FakeHost, Layout};
use integration::Containerd;

use integration::measure::{
    median, percentile, pod_memory, remove_all, start_sleepers, sum, timed_run, PodMemory,
    GO_RUNTIME, OUR_RUNTIME,
};
/// Median start latency of a GPU container on a fake host of `gpus` GPUs: all of them by env, or,
/// with `libs`, a CDI device mounting that many driver libraries.
fn gpu_start(c: &Containerd, gpus: usize, libs: Option<usize>, iterations: usize) -> Result<f64> {
    let dir = tempfile::Builder::new()
        .prefix("nvbench-")
        .tempdir_in("/tmp")?;
    let host = FakeHost::build(dir.path(), Layout::Gke, gpus)?;
    let cfg = host.write_config()?;
    let mut extra = vec!["--runtime-config-path".to_string(), cfg];
    match libs {
        Some(n) => {
            let name = host.write_many_libs_cdi(n)?;
            extra.extend(["--annotation".into(), format!("cdi.k8s.io/bench={name}")]);
        }
        None => extra.extend(["--env".into(), "NVIDIA_VISIBLE_DEVICES=all".into()]),
    }
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    timed_run(c, OUR_RUNTIME, &extra, "warm-scale")?;
    let mut v = Vec::new();
    for i in 0..iterations {
        v.push(timed_run(c, OUR_RUNTIME, &extra, &format!("scale-{i}"))?);
    }
    Ok(median(&mut v))
}

/// Median `ctr task exec … true` latency into a pod of `n` containers.
fn exec_latency(c: &Containerd, runtime: &str, n: usize, iterations: usize) -> Result<f64> {
    let tag = if runtime == GO_RUNTIME { "go" } else { "our" };
    let ids: Vec<String> = (0..n).map(|i| format!("ex-{tag}-{n}-{i}")).collect();
    let pod = format!("io.kubernetes.cri.sandbox-id=exec-{tag}-{n}");
    start_sleepers(c, runtime, &ids, Some(&pod), &[])?;
    let mut v = Vec::new();
    for i in 0..iterations {
        let t = Instant::now();
        let out = c.ctr(&[
            "task",
            "exec",
            "--exec-id",
            &format!("e{i}"),
            &ids[0],
            "true",
        ])?;
        v.push(t.elapsed().as_secs_f64() * 1000.0);
        if !out.status.success() {
            bail!("exec: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
    remove_all(c, &ids)?;
    Ok(median(&mut v))
}

/// `n` concurrent `ctr run --rm`: (p50, p99, failures).
fn concurrent(c: &Containerd, runtime: &str, extra: &[&str], n: usize) -> (f64, f64, usize) {
    let tag = if runtime == GO_RUNTIME { "go" } else { "our" };
    let results: Vec<Result<f64>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|i| s.spawn(move || timed_run(c, runtime, extra, &format!("cc-{tag}-{i}"))))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("panicked")))
            })
            .collect()
    });
    let failures = results.iter().filter(|r| r.is_err()).count();
    let mut ok: Vec<f64> = results.into_iter().filter_map(Result::ok).collect();
    (
        percentile(&mut ok, 50.0),
        percentile(&mut ok, 99.0),
        failures,
    )
}

/// Medians of the interleaved start latencies (ms): (a) Go, (b) ours, (c) one GPU, (d) all
/// GPUs, (e) all GPUs without the assignment record.
fn start_latency(c: &Containerd, cfg: &str, iterations: usize) -> Result<[f64; 5]> {
    // The same host with the assignment record (for `nvidia-shim top`) turned off: what
    // recording costs a Create.
    let unrecorded = format!("{cfg}.unrecorded.toml");
    std::fs::write(
        &unrecorded,
        std::fs::read_to_string(cfg)? + "record_assignments = false\n",
    )?;
    let opts = |config: &str, devices: &str| {
        [
            "--runtime-config-path".to_string(),
            config.to_string(),
            "--env".into(),
            format!("NVIDIA_VISIBLE_DEVICES={devices}"),
        ]
    };
    let (one, all, all_unrecorded) = (opts(cfg, "0"), opts(cfg, "all"), opts(&unrecorded, "all"));
    let variants: [(&str, Vec<&str>); 5] = [
        (GO_RUNTIME, vec![]),
        (OUR_RUNTIME, vec![]),
        (OUR_RUNTIME, one.iter().map(String::as_str).collect()),
        (OUR_RUNTIME, all.iter().map(String::as_str).collect()),
        (
            OUR_RUNTIME,
            all_unrecorded.iter().map(String::as_str).collect(),
        ),
    ];
    let tags = ["a", "b", "c", "d", "e"];
    // One warm-up each (page cache, the inventory cache), then interleaved.
    for ((runtime, o), tag) in variants.iter().zip(tags) {
        timed_run(c, runtime, o, &format!("warm-{tag}"))?;
    }
    let mut times: [Vec<f64>; 5] = Default::default();
    for i in 0..iterations {
        for (k, ((runtime, o), tag)) in variants.iter().zip(tags).enumerate() {
            times[k].push(timed_run(c, runtime, o, &format!("{tag}{i}"))?);
        }
    }
    Ok(times.map(|mut t| median(&mut t)))
}

fn print_latency(m: [f64; 5], iterations: usize) {
    let [ma, mb, m1, mall, mu] = m;
    let shim = integration::bin_dir().join(integration::SHIM_BIN);
    let size = std::fs::metadata(&shim).map(|m| m.len()).unwrap_or(0);
    println!("## Benchmark: containerd-shim-nvidia-v2 vs containerd-shim-runc-v2 (Go)");
    println!();
    println!(
        "containerd 1.6 (private), runc, busybox image; {iterations} interleaved iterations; shim binary {} ({} KiB)",
        shim.display(),
        size / 1024
    );
    println!();
    println!(
        "| start latency, median `ctr run --rm … true` | ms | vs Go shim | vs ours without GPU |"
    );
    println!("|---|---|---|---|");
    println!("| (a) Go runc shim, no GPU | {ma:.1} | 1.000 | |");
    let rows = [
        ("(b) our shim, no GPU", mb),
        (
            "(c) our shim, `NVIDIA_VISIBLE_DEVICES=0`, simulated 8-GPU host",
            m1,
        ),
        (
            "(d) our shim, `NVIDIA_VISIBLE_DEVICES=all`, simulated 8-GPU host",
            mall,
        ),
        ("(e) as (d), `[gpu] record_assignments = false`", mu),
    ];
    for (name, v) in rows {
        println!("| {name} | {v:.1} | {:.3} | {:.3} |", v / ma, v / mb);
    }
    println!();
    println!(
        "Recording the assignment for `nvidia-shim top` ((d) − (e)): {:+.2} ms per GPU Create.",
        mall - mu
    );
    println!();
}

fn print_memory(pods: usize, mut g: PodMemory, mut o: PodMemory) {
    println!(
        "Per-pod memory: {pods} pods, one container and one shim each (Go: {} shims, ours: {} shims), KiB:",
        g.shims, o.shims
    );
    println!();
    println!("| per shim | Go RSS | Go PSS | Go USS | our RSS | our PSS | our USS |");
    println!("|---|---|---|---|---|---|---|");
    println!(
        "| median | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} |",
        median(&mut g.rss),
        median(&mut g.pss),
        median(&mut g.uss),
        median(&mut o.rss),
        median(&mut o.pss),
        median(&mut o.uss)
    );
    println!(
        "| sum over all shims | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} |",
        sum(&g.rss),
        sum(&g.pss),
        sum(&g.uss),
        sum(&o.rss),
        sum(&o.pss),
        sum(&o.uss)
    );
    println!();
    println!(
        "Summed PSS, ours / Go: {:.2}; threads per shim: Go {}, ours {}.",
        sum(&o.pss) / sum(&g.pss).max(1.0),
        g.threads,
        o.threads
    );
    println!();
}

/// Start time against GPUs and libraries, exec latency against pod size, and concurrency.
fn scaling(c: &Containerd, cfg: &str, scale_iter: usize) -> Result<()> {
    let by_gpus: Vec<(usize, f64)> = [1, 8, 64]
        .iter()
        .map(|&n| gpu_start(c, n, None, scale_iter).map(|ms| (n, ms)))
        .collect::<Result<_>>()?;
    let by_libs: Vec<(usize, f64)> = [10, 200]
        .iter()
        .map(|&n| gpu_start(c, 1, Some(n), scale_iter).map(|ms| (n, ms)))
        .collect::<Result<_>>()?;
    let mut by_pod = Vec::new();
    for n in [1, 10, 100] {
        by_pod.push((
            n,
            exec_latency(c, GO_RUNTIME, n, scale_iter)?,
            exec_latency(c, OUR_RUNTIME, n, scale_iter)?,
        ));
    }
    let all = [
        "--runtime-config-path",
        cfg,
        "--env",
        "NVIDIA_VISIBLE_DEVICES=all",
    ];
    let conc_go = concurrent(c, GO_RUNTIME, &[], 50);
    let conc_our = concurrent(c, OUR_RUNTIME, &all, 50);
    println!("Scaling ({scale_iter} iterations each, median ms):");
    println!();
    println!("| GPU start, fake host | ms |");
    println!("|---|---|");
    for (n, ms) in &by_gpus {
        println!("| {n} GPUs, `all` | {ms:.1} |");
    }
    for (n, ms) in &by_libs {
        println!("| {n} driver libraries (CDI) | {ms:.1} |");
    }
    println!();
    println!("| exec into a pod shim holding | Go ms | our ms |");
    println!("|---|---|---|");
    for (n, go_ms, our_ms) in &by_pod {
        println!("| {n} containers | {go_ms:.1} | {our_ms:.1} |");
    }
    println!();
    println!("| 50 concurrent `ctr run --rm` | p50 ms | p99 ms | failures |");
    println!("|---|---|---|---|");
    println!(
        "| Go runc shim, no GPU | {:.1} | {:.1} | {} |",
        conc_go.0, conc_go.1, conc_go.2
    );
    println!(
        "| our shim, `NVIDIA_VISIBLE_DEVICES=all` | {:.1} | {:.1} | {} |",
        conc_our.0, conc_our.1, conc_our.2
    );
    println!();
    Ok(())
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let iterations: usize = args
        .next()
        .map(|s| s.parse())
        .transpose()
        .context("ITERATIONS must be a number")?
        .unwrap_or(30);
    let pods: usize = args
        .next()
        .map(|s| s.parse())
        .transpose()
        .context("PODS must be a number")?
        .unwrap_or(50);
    let c = Containerd::start()?;
    let host_dir = tempfile::Builder::new()
        .prefix("nvbench-")
        .tempdir_in("/tmp")?;
    let host = FakeHost::build(host_dir.path(), Layout::Gke, 8)?;
    let cfg = host.write_config()?;
    let latency = start_latency(&c, &cfg, iterations)?;
    let go = pod_memory(&c, GO_RUNTIME, "go", pods)?;
    let ours = pod_memory(&c, OUR_RUNTIME, "our", pods)?;
    print_latency(latency, iterations);
    print_memory(pods, go, ours);
    scaling(&c, &cfg, iterations.min(10))?;
    if cgroup_v2_only() {
        println!(
            "crun as the delegate: run `scripts/gpu-acceptance.sh` for its rows (cgroup v2 host)."
        );
    } else {
        println!("crun as the delegate: not measured here — crun runs only on cgroup v2 hosts and this one is v1/hybrid (see docs/gpu-acceptance.md for the GPU host's crun rows).");
    }
    c.assert_clean()?;
    Ok(())
}

/// Whether `/sys/fs/cgroup` is the unified hierarchy alone.
fn cgroup_v2_only() -> bool {
    std::fs::read_to_string("/proc/self/mountinfo").is_ok_and(|m| {
        m.lines()
            .any(|l| l.split(' ').nth(4) == Some("/sys/fs/cgroup") && l.contains(" - cgroup2 "))
    })
}
