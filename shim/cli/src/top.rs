//! `nvidia-shim top`: every running GPU container on the node, its pod, its GPUs, and what its
//! processes use of them; GPU processes outside any GPU container are listed as such.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::accounting::{self, Report, DEFAULT_STATE_DIR};
use crate::printable::escaped;
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

/// One line of the containers table.
fn row(s: &mut String, cols: [&str; 8]) {
    let [ns, id, pod, gpus, pid, mem, sm, mu] = cols;
    let _ = writeln!(
        s,
        "{ns:<10} {id:<14} {pod:<36} {gpus:<6} {pid:>7} {mem:>11} {sm:>4} {mu:>4}"
    );
}

/// The report as a table for people.
pub fn render(r: &Report) -> String {
    let mut s = String::new();
    if let Some(why) = &r.usage_unavailable {
        let _ = writeln!(s, "GPU usage unavailable: {}", escaped(why));
    }
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
            g.index,
            escaped(&g.uuid),
            escaped(&g.name),
            mem
        );
    }
    let _ = writeln!(s);
    row(
        &mut s,
        [
            "NAMESPACE",
            "CONTAINER",
            "POD (CONTAINER)",
            "GPUS",
            "PID",
            "GPU MEMORY",
            "SM%",
            "MEM%",
        ],
    );
    let index_of = |uuid: &str| {
        r.gpus
            .iter()
            .find(|g| g.uuid == uuid)
            .map_or("?".to_string(), |g| g.index.to_string())
    };
    let proc_row = |s: &mut String, ns: &str, id: &str, pod: &str, p: &crate::accounting::Proc| {
        let (gpu, pid) = (index_of(&p.gpu), p.pid.to_string());
        let (mem, sm, mu) = (mib(p.used_memory_bytes), pct(p.sm_util), pct(p.mem_util));
        row(s, [ns, id, pod, &gpu, &pid, &mem, &sm, &mu]);
    };
    for c in &r.containers {
        let mut pod = c.pod.as_ref().map_or("-".into(), |p| {
            escaped(&format!("{}/{} ({})", p.namespace, p.name, p.container))
        });
        if let Some(su) = &c.suspended {
            pod = format!("{pod} PAUSED, {} released", mib(Some(su.released_bytes)));
        }
        let gpus = c
            .gpus
            .iter()
            .map(|u| index_of(u))
            .collect::<Vec<_>>()
            .join(",");
        let gpus = if gpus.is_empty() {
            "-".to_string()
        } else {
            gpus
        };
        let id = escaped(&c.id.chars().take(12).collect::<String>());
        let mem = mib(Some(c.used_memory_bytes));
        let ns = escaped(&c.namespace);
        row(&mut s, [&ns, &id, &pod, &gpus, "", &mem, "", ""]);
        for p in &c.processes {
            proc_row(&mut s, "", "", "", p);
        }
    }
    for p in &r.unattributed {
        proc_row(&mut s, "-", "(none)", "not in a GPU container", p);
    }
    for u in &r.unreadable {
        let _ = writeln!(
            s,
            "{}/{}: assignment record not used ({}); its processes show as unattributed",
            escaped(&u.namespace),
            escaped(&u.id),
            escaped(&u.reason)
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
