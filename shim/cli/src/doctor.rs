//! `nvidia-shim doctor`: checks a host end to end and says how to fix what is wrong; `--fix`
//! creates the `/dev/char/<major>:<minor>` links that systemd-managed device cgroups need.

use std::path::{Path, PathBuf};

use gpu_core::discover::{Discovery, Host};
use gpu_core::inventory::DeviceNode;
use serde_json::json;

use super::configure::{DEFAULT_CONTAINERD_CONFIG, RUNTIME_NAME, RUNTIME_TYPE};
use super::{load_config, CliError, CliResult};

/// `doctor` options.
#[derive(clap::Args)]
pub struct DoctorArgs {
    /// Create the /dev/char links that systemd-managed device cgroups need.
    #[arg(long)]
    fix: bool,
    /// Print the checks as JSON.
    #[arg(long)]
    json: bool,
    /// containerd's config file.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_CONTAINERD_CONFIG)]
    containerd_config: PathBuf,
}

struct Check {
    name: String,
    ok: bool,
    detail: String,
    fix: Option<String>,
}

fn on_path(bin: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(bin))
        .find(|p| p.is_file())
}

fn char_link(dev_root: &Path, n: &DeviceNode) -> (PathBuf, PathBuf) {
    let link = dev_root.join(format!("dev/char/{}:{}", n.major, n.minor));
    let target = PathBuf::from(format!("..{}", n.path.trim_start_matches("/dev")));
    (link, target)
}

/// Whether `/sys/fs/cgroup` is the unified hierarchy alone (cgroup v2), not v1 or hybrid.
fn cgroup_v2_only() -> bool {
    nix::sys::statfs::statfs("/sys/fs/cgroup")
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
}

/// The OCI runtime the shim delegates to, and whether it can run here: crun refuses cgroup v1
/// and hybrid hosts ("cgroups in hybrid mode not supported"), where runc is the choice; on a
/// cgroup v2 host crun starts containers about a third faster than runc.
fn delegate_check(binary: &str, found: Option<&Path>, v2: bool) -> Check {
    let name = Path::new(binary)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or(binary);
    let hierarchy = if v2 { "cgroup v2" } else { "cgroup v1/hybrid" };
    match (name, v2) {
        ("crun", false) => Check {
            name: "delegate".into(),
            ok: false,
            detail: format!("crun on a {hierarchy} host: crun runs only on cgroup v2"),
            fix: Some("set [runc] binary = \"runc\" (or move the node to cgroup v2)".into()),
        },
        ("crun", true) => Check {
            name: "delegate".into(),
            ok: found.is_some(),
            detail: format!("crun on a {hierarchy} host"),
            fix: found.is_none().then(|| "install crun".into()),
        },
        (_, true) => Check {
            name: "delegate".into(),
            ok: true,
            detail: format!(
                "{name} on a {hierarchy} host; crun would start containers faster here \
                 ([runc] binary = \"crun\", e.g. for a second runtime handler)"
            ),
            fix: None,
        },
        (_, false) => Check {
            name: "delegate".into(),
            ok: true,
            detail: format!("{name} on a {hierarchy} host (crun cannot run here)"),
            fix: None,
        },
    }
}

/// Runs `doctor`.
pub fn run(config: Option<&Path>, args: DoctorArgs) -> CliResult {
    let DoctorArgs {
        fix,
        json: json_out,
        containerd_config,
    } = args;
    let mut checks = Vec::new();
    let (cfg, source) = load_config(config)?;
    checks.push(Check {
        name: "shim config".into(),
        ok: true,
        detail: source,
        fix: None,
    });

    match Host::new(cfg.driver.clone()).inventory() {
        Err(e) => checks.push(Check {
            name: "driver".into(),
            ok: false,
            detail: e.to_string(),
            fix: Some(format!(
                "load the NVIDIA kernel module, or set [driver] root/proc_root (now {} / {})",
                cfg.driver.root.display(),
                cfg.driver.proc_root.display()
            )),
        }),
        Ok(inv) => {
            let has = |p: &str| inv.libraries.iter().any(|l| l.prefix == p);
            let libs_ok = has("libcuda.so") && has("libnvidia-ml.so");
            checks.push(Check {
                name: "driver".into(),
                ok: libs_ok,
                detail: format!(
                    "version {}, CUDA {}, {} GPU(s), {} libraries under {}",
                    inv.driver_version,
                    inv.cuda_version.as_deref().unwrap_or("unknown"),
                    inv.gpus.len(),
                    inv.libraries.len(),
                    cfg.driver.root.display()
                ),
                fix: (!libs_ok).then(|| {
                    format!(
                        "libcuda/libnvidia-ml {} not found under {}: set [driver] root to the driver's install root",
                        inv.driver_version,
                        cfg.driver.root.display()
                    )
                }),
            });
            let mut nodes: Vec<DeviceNode> = inv.control_nodes.clone();
            nodes.extend(inv.gpus.iter().map(|g| g.node.clone()));
            let missing: Vec<&str> = nodes
                .iter()
                .filter(|n| {
                    !cfg.driver
                        .dev_root
                        .join(n.path.trim_start_matches('/'))
                        .exists()
                })
                .map(|n| n.path.as_str())
                .collect();
            checks.push(Check {
                name: "device nodes".into(),
                ok: missing.is_empty(),
                detail: if missing.is_empty() {
                    format!("{} present", nodes.len())
                } else {
                    format!("missing: {}", missing.join(", "))
                },
                fix: (!missing.is_empty()).then(|| {
                    "run nvidia-modprobe -u -c=0 (or start nvidia-persistenced) to create them; containers get them from the spec anyway".to_string()
                }),
            });
            let mut absent = Vec::new();
            for n in nodes.iter().filter(|n| {
                cfg.driver
                    .dev_root
                    .join(n.path.trim_start_matches('/'))
                    .exists()
            }) {
                let (link, target) = char_link(&cfg.driver.dev_root, n);
                if std::fs::symlink_metadata(&link).is_err() {
                    if fix {
                        if let Some(d) = link.parent() {
                            let _ = std::fs::create_dir_all(d);
                        }
                        if let Err(e) = std::os::unix::fs::symlink(&target, &link) {
                            absent.push(format!("{} ({e})", link.display()));
                        }
                    } else {
                        absent.push(link.display().to_string());
                    }
                }
            }
            checks.push(Check {
                name: "/dev/char links".into(),
                ok: absent.is_empty(),
                detail: if absent.is_empty() {
                    "present for every NVIDIA node".into()
                } else {
                    format!("missing: {}", absent.join(", "))
                },
                fix: (!absent.is_empty()).then(|| {
                    "run `nvidia-shim doctor --fix` (systemd's device cgroup rules need them)"
                        .into()
                }),
            });
        }
    }

    let runc = if Path::new(&cfg.runc.binary).is_absolute() {
        Some(PathBuf::from(&cfg.runc.binary)).filter(|p| p.is_file())
    } else {
        on_path(&cfg.runc.binary)
    };
    checks.push(Check {
        name: "runc".into(),
        ok: runc.is_some(),
        detail: runc
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| format!("{:?} not found", cfg.runc.binary)),
        fix: runc
            .is_none()
            .then(|| "install runc or set [runc] binary".into()),
    });
    checks.push(delegate_check(
        &cfg.runc.binary,
        runc.as_deref(),
        cgroup_v2_only(),
    ));
    let shim = on_path("containerd-shim-nvidia-v2");
    checks.push(Check {
        name: "shim on PATH".into(),
        ok: shim.is_some(),
        detail: shim
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "containerd-shim-nvidia-v2 not found on PATH".into()),
        fix: shim
            .is_none()
            .then(|| "install -m 755 containerd-shim-nvidia-v2 /usr/local/bin/".into()),
    });
    let text = std::fs::read_to_string(&containerd_config).unwrap_or_default();
    let configured =
        text.contains(RUNTIME_TYPE) && text.contains(&format!("runtimes.{RUNTIME_NAME}"));
    checks.push(Check {
        name: "containerd config".into(),
        ok: configured,
        detail: format!(
            "{}: runtime {RUNTIME_NAME:?} {}",
            containerd_config.display(),
            if configured {
                "configured"
            } else {
                "not configured"
            }
        ),
        fix: (!configured).then(|| {
            format!(
                "nvidia-shim containerd configure --config {}",
                containerd_config.display()
            )
        }),
    });

    let failed = checks.iter().filter(|c| !c.ok).count();
    if json_out {
        let v: Vec<_> = checks
            .iter()
            .map(|c| json!({"check": c.name, "ok": c.ok, "detail": c.detail, "fix": c.fix}))
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({"ok": failed == 0, "checks": v}))
                .unwrap_or_default()
        );
    } else {
        for c in &checks {
            println!(
                "[{}] {}: {}",
                if c.ok { " ok " } else { "FAIL" },
                c.name,
                c.detail
            );
            if let Some(f) = &c.fix {
                println!("       fix: {f}");
            }
        }
    }
    if failed > 0 {
        return Err(CliError::failed(format!("{failed} check(s) failed")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crun_is_recommended_only_where_it_can_run() {
        let crun = Path::new("/usr/bin/crun");
        assert!(
            !delegate_check("crun", Some(crun), false).ok,
            "crun on hybrid fails"
        );
        assert!(delegate_check("/usr/bin/crun", Some(crun), true).ok);
        assert!(!delegate_check("crun", None, true).ok, "crun missing");
        let on_v2 = delegate_check("runc", None, true);
        assert!(on_v2.ok && on_v2.detail.contains("crun would start containers faster"));
        let on_v1 = delegate_check("runc", None, false);
        assert!(on_v1.ok && on_v1.detail.contains("crun cannot run here"));
    }
}
