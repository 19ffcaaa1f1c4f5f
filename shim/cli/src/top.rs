//! `nvidia-shim top`: every running GPU container on the node, its pod, its GPUs, and what its
//! processes use of them; GPU processes outside any GPU container are listed as such.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::accounting::{self, Report, DEFAULT_STATE_DIR};
use crate::{load_config, CliError, CliResult};

/// `top` options.
#[derive(clap::Args)]
pub struct TopArgs {
    /// Print JSON (one document per refresh with --watch).
    #[arg(long)]
    json: bool,
    /// Only containers of this containerd namespace (e.g. k8s.io).
    #[arg(long, value_name = "NS")]
    namespace: Option<String>,
    /// Refresh every SECS seconds until interrupted.
    #[arg(long, value_name = "SECS")]
    watch: Option<u64>,
    /// containerd's task state directory.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
}

fn mib(b: Option<u64>) -> String {
    b.map_or("-".into(), |b| format!("{} MiB", b >> 20))
}

fn pct(v: Option<u32>) -> String {
    v.map_or("-".into(), |v| v.to_string())
}

/// The report as a table for people.
pub fn render(r: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<4} {:<42} {:<28} {:>22}",
        "GPU", "UUID", "MODEL", "MEMORY USED / TOTAL"
    );
    for g in &r.gpus {
        let mem = format!(
            "{} / {}",
            mib(g.memory_used_bytes),
            mib(g.memory_total_bytes)
        );
        let _ = writeln!(
            s,
            "{:<4} {:<42} {:<28} {:>22}",
            g.index, g.uuid, g.name, mem
        );
    }
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "{:<10} {:<14} {:<36} {:<6} {:>7} {:>11} {:>4} {:>4}",
        "NAMESPACE", "CONTAINER", "POD (CONTAINER)", "GPUS", "PID", "GPU MEMORY", "SM%", "MEM%"
    );
    let index_of = |uuid: &str| {
        r.gpus
            .iter()
            .find(|g| g.uuid == uuid)
            .map_or("?".to_string(), |g| g.index.to_string())
    };
    for c in &r.containers {
        let pod = c.pod.as_ref().map_or("-".into(), |p| {
            format!("{}/{} ({})", p.namespace, p.name, p.container)
        });
        let gpus = c
            .gpus
            .iter()
            .map(|u| index_of(u))
            .collect::<Vec<_>>()
            .join(",");
        let id: String = c.id.chars().take(12).collect();
        let pod = match &c.suspended {
            Some(su) => format!("{pod} PAUSED, {} released", mib(Some(su.released_bytes))),
            None => pod,
        };
        let _ = writeln!(
            s,
            "{:<10} {:<14} {:<36} {:<6} {:>7} {:>11} {:>4} {:>4}",
            c.namespace,
            id,
            pod,
            if gpus.is_empty() { "-".into() } else { gpus },
            "",
            mib(Some(c.used_memory_bytes)),
            "",
            ""
        );
        for p in &c.processes {
            let _ = writeln!(
                s,
                "{:<10} {:<14} {:<36} {:<6} {:>7} {:>11} {:>4} {:>4}",
                "",
                "",
                "",
                index_of(&p.gpu),
                p.pid,
                mib(p.used_memory_bytes),
                pct(p.sm_util),
                pct(p.mem_util)
            );
        }
    }
    for p in &r.unattributed {
        let _ = writeln!(
            s,
            "{:<10} {:<14} {:<36} {:<6} {:>7} {:>11} {:>4} {:>4}",
            "-",
            "(none)",
            "not in a GPU container",
            index_of(&p.gpu),
            p.pid,
            mib(p.used_memory_bytes),
            pct(p.sm_util),
            pct(p.mem_util)
        );
    }
    s
}

/// Runs `top`.
pub fn run(config: Option<&Path>, a: TopArgs) -> CliResult {
    let (cfg, _) = load_config(config)?;
    loop {
        let r = accounting::report(&cfg, &a.state_dir, a.namespace.as_deref())?;
        if a.json {
            let text = serde_json::to_string(&r).map_err(|e| CliError::failed(e.to_string()))?;
            println!("{text}");
        } else {
            if a.watch.is_some() {
                // Clear the screen and home the cursor between refreshes.
                print!("\x1b[2J\x1b[H");
            }
            print!("{}", render(&r));
        }
        match a.watch {
            Some(secs) => std::thread::sleep(Duration::from_secs(secs.max(1))),
            None => return Ok(()),
        }
    }
}
