//! `accounting-check TOP.json SMI.csv METRICS.prom A B C`: the GPU host's accounting check.
//! `nvidia-shim top --json` must attribute A's and B's GPU memory within 5 % of nvidia-smi's
//! per-process figures (`--query-compute-apps=pid,used_memory --format=csv,noheader,nounits`),
//! show A's utilization (it runs kernels), list nothing for C, and `metrics` must parse as
//! Prometheus text. Prints one line starting ACCOUNTING PASS or ACCOUNTING FAIL.

use std::collections::BTreeMap;

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

fn check(args: &[String]) -> Result<String> {
    let [top, smi, metrics, a, b, c] = args else {
        bail!("usage: accounting-check TOP.json SMI.csv METRICS.prom A B C");
    };
    let top: Value = serde_json::from_str(&std::fs::read_to_string(top)?)?;
    let smi: BTreeMap<u64, f64> = std::fs::read_to_string(smi)?
        .lines()
        .filter_map(|l| {
            let (pid, mib) = l.split_once(',')?;
            Some((pid.trim().parse().ok()?, mib.trim().parse().ok()?))
        })
        .collect();
    let find = |id: &str| {
        top["containers"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["id"] == id))
    };
    ensure!(find(c).is_none(), "{c} asked for nothing but is listed");
    let mut seen = Vec::new();
    for id in [a, b] {
        let cont = find(id).with_context(|| format!("{id} is not listed: {top}"))?;
        let procs = cont["processes"].as_array().context("processes")?;
        ensure!(!procs.is_empty(), "{id} has no GPU process: {cont}");
        for p in procs {
            let pid = p["pid"].as_u64().context("pid")?;
            let ours = p["used_memory_bytes"].as_f64().context("memory")? / 1048576.0;
            let theirs = *smi
                .get(&pid)
                .with_context(|| format!("nvidia-smi does not list pid {pid}: {smi:?}"))?;
            let off = (ours - theirs).abs() / theirs;
            ensure!(
                off <= 0.05,
                "{id} pid {pid}: top {ours:.0} MiB, nvidia-smi {theirs:.0} MiB"
            );
            seen.push(format!(
                "{id} pid {pid}: top {ours:.0} MiB / smi {theirs:.0} MiB, SM {}%",
                p["sm_util"]
            ));
        }
    }
    let busy = find(a)
        .and_then(|c| c["processes"][0]["sm_util"].as_u64())
        .unwrap_or(0);
    ensure!(
        busy > 0,
        "{a} runs kernels but shows no SM utilization: {top}"
    );
    let text = std::fs::read_to_string(metrics)?;
    let parsed = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))?;
    let mem = parsed
        .samples
        .iter()
        .filter(|s| s.metric == "nvidia_shim_container_gpu_memory_used_bytes")
        .count();
    ensure!(
        mem == 2,
        "metrics: {mem} container memory samples, want 2:\n{text}"
    );
    Ok(format!(
        "{}; metrics: {} samples parsed",
        seen.join("; "),
        parsed.samples.len()
    ))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match check(&args) {
        Ok(s) => println!("ACCOUNTING PASS: {s}"),
        Err(e) => {
            println!("ACCOUNTING FAIL: {e:#}");
            std::process::exit(1);
        }
    }
}
