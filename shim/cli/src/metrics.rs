//! `nvidia-shim metrics`: the `top` figures in the Prometheus text exposition format, one shot,
//! for node-exporter's textfile collector (`--output /var/lib/node_exporter/nvidia-shim.prom`,
//! written atomically, run from a timer) or any scraper that runs a command. A one-shot adds no
//! listening socket to the node.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::accounting::{self, Container, Report, DEFAULT_STATE_DIR};
use crate::{load_config, CliError, CliResult};

/// `metrics` options.
#[derive(clap::Args)]
pub struct MetricsArgs {
    /// Write to FILE (atomically) instead of standard output.
    #[arg(long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// containerd's task state directory.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
}

/// A label value escaped for the exposition format.
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn labels(pairs: &[(&str, &str)]) -> String {
    let inner: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", esc(v)))
        .collect();
    format!("{{{}}}", inner.join(","))
}

fn container_labels(c: &Container, gpu: &str) -> String {
    let pod = c.pod.clone().unwrap_or_default();
    labels(&[
        ("namespace", &c.namespace),
        ("container_id", &c.id),
        ("pod", &pod.name),
        ("pod_namespace", &pod.namespace),
        ("container", &pod.container),
        ("gpu", gpu),
    ])
}

struct Family<'a> {
    name: &'a str,
    help: &'a str,
    samples: Vec<(String, f64)>,
}

/// The report in the exposition format.
pub fn render(r: &Report) -> String {
    let mut fams = vec![
        Family { name: "nvidia_shim_gpu_memory_total_bytes", help: "Total memory of the GPU.", samples: vec![] },
        Family { name: "nvidia_shim_gpu_memory_used_bytes", help: "Memory in use on the GPU.", samples: vec![] },
        Family { name: "nvidia_shim_container_gpu_assigned", help: "1 for each GPU the shim gave a running container.", samples: vec![] },
        Family { name: "nvidia_shim_container_gpu_memory_used_bytes", help: "GPU memory held by the container's processes.", samples: vec![] },
        Family { name: "nvidia_shim_container_gpu_processes", help: "The container's processes with a context on the GPU.", samples: vec![] },
        Family { name: "nvidia_shim_container_gpu_sm_utilization_percent", help: "SM utilization of the container's processes on the GPU, summed, latest sample.", samples: vec![] },
        Family { name: "nvidia_shim_container_gpu_memory_utilization_percent", help: "Memory-controller utilization of the container's processes on the GPU, summed, latest sample.", samples: vec![] },
        Family { name: "nvidia_shim_unattributed_gpu_memory_used_bytes", help: "GPU memory held by a process outside any GPU container.", samples: vec![] },
        Family { name: "nvidia_shim_unreadable_assignment_records", help: "Containers whose assignment record could not be used (their processes count as unattributed).", samples: vec![] },
        Family { name: "nvidia_shim_gpu_usage_available", help: "1 when NVML answered; 0 when per-GPU usage is missing (see nvidia-shim top).", samples: vec![] },
    ];
    for g in &r.gpus {
        let l = labels(&[
            ("gpu", &g.uuid),
            ("index", &g.index.to_string()),
            ("model", &g.name),
        ]);
        if let Some(t) = g.memory_total_bytes {
            fams[0].samples.push((l.clone(), t as f64));
        }
        if let Some(u) = g.memory_used_bytes {
            fams[1].samples.push((l, u as f64));
        }
    }
    for c in &r.containers {
        for g in &c.gpus {
            fams[2].samples.push((container_labels(c, g), 1.0));
        }
        let mut on: Vec<&str> = c.processes.iter().map(|p| p.gpu.as_str()).collect();
        on.sort_unstable();
        on.dedup();
        for g in on {
            let ps: Vec<_> = c.processes.iter().filter(|p| p.gpu == g).collect();
            let l = container_labels(c, g);
            let sum = |f: &dyn Fn(&&accounting::Proc) -> Option<u64>| {
                ps.iter().filter_map(f).sum::<u64>() as f64
            };
            fams[3]
                .samples
                .push((l.clone(), sum(&|p| p.used_memory_bytes)));
            fams[4].samples.push((l.clone(), ps.len() as f64));
            fams[5]
                .samples
                .push((l.clone(), sum(&|p| p.sm_util.map(u64::from))));
            fams[6]
                .samples
                .push((l, sum(&|p| p.mem_util.map(u64::from))));
        }
    }
    for p in &r.unattributed {
        let l = labels(&[("gpu", &p.gpu), ("pid", &p.pid.to_string())]);
        fams[7]
            .samples
            .push((l, p.used_memory_bytes.unwrap_or(0) as f64));
    }
    fams[8]
        .samples
        .push((String::new(), r.unreadable.len() as f64));
    fams[9].samples.push((
        String::new(),
        if r.usage_unavailable.is_some() {
            0.0
        } else {
            1.0
        },
    ));
    let mut s = String::new();
    for f in fams {
        let _ = writeln!(s, "# HELP {} {}", f.name, f.help);
        let _ = writeln!(s, "# TYPE {} gauge", f.name);
        for (l, v) in f.samples {
            let _ = writeln!(s, "{}{l} {v}", f.name);
        }
    }
    s
}

/// Runs `metrics`.
pub fn run(config: Option<&Path>, a: MetricsArgs) -> CliResult {
    let (cfg, _) = load_config(config)?;
    let r = accounting::report(&cfg, &a.state_dir, None)?;
    let text = render(&r);
    match a.output {
        None => print!("{text}"),
        Some(path) => {
            let tmp = path.with_extension("prom.tmp");
            std::fs::write(&tmp, &text)
                .and_then(|_| std::fs::rename(&tmp, &path))
                .map_err(|e| CliError::failed(format!("writing {}: {e}", path.display())))?;
        }
    }
    Ok(())
}
