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

/// The device nodes, and their `/dev/char` links (created with `fix`).
fn node_checks(
    cfg: &nvidia_shim_config::ShimConfig,
    inv: &gpu_core::Inventory,
    fix: bool,
) -> Vec<Check> {
    let mut checks = Vec::new();
    let mut nodes: Vec<DeviceNode> = inv.control_nodes.clone();
    nodes.extend(inv.gpus.iter().map(|g| g.node.clone()));
    let present = |n: &&DeviceNode| {
        cfg.driver
            .dev_root
            .join(n.path.trim_start_matches('/'))
            .exists()
    };
    let missing: Vec<&str> = nodes
        .iter()
        .filter(|n| !present(n))
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
    for n in nodes.iter().filter(present) {
        let (link, target) = char_link(&cfg.driver.dev_root, n);
        if std::fs::symlink_metadata(&link).is_ok() {
            continue;
        }
        if !fix {
            absent.push(link.display().to_string());
            continue;
        }
        if let Some(d) = link.parent() {
            let _ = std::fs::create_dir_all(d);
        }
        if let Err(e) = std::os::unix::fs::symlink(&target, &link) {
            absent.push(format!("{} ({e})", link.display()));
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
            "run `nvidia-shim doctor --fix` (systemd's device cgroup rules need them)".into()
        }),
    });
    checks
}

/// The driver, its device nodes and their `/dev/char` links (created with `fix`).
fn driver_checks(cfg: &nvidia_shim_config::ShimConfig, fix: bool) -> Vec<Check> {
    let inv = match Host::new(cfg.driver.clone()).inventory() {
        Err(e) => {
            return vec![Check {
                name: "driver".into(),
                ok: false,
                detail: e.to_string(),
                fix: Some(format!(
                    "load the NVIDIA kernel module, or set [driver] root/proc_root (now {} / {})",
                    cfg.driver.root.display(),
                    cfg.driver.proc_root.display()
                )),
            }]
        }
        Ok(inv) => inv,
    };
    let has = |p: &str| inv.libraries.iter().any(|l| l.prefix == p);
    let libs_ok = has("libcuda.so") && has("libnvidia-ml.so");
    let mut checks = vec![Check {
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
    }];
    checks.extend(node_checks(cfg, &inv, fix));
    checks
}

/// The delegate: found, and able to run on this host's cgroup hierarchy.
fn runc_checks(cfg: &nvidia_shim_config::ShimConfig) -> Vec<Check> {
    let runc = if Path::new(&cfg.runc.binary).is_absolute() {
        Some(PathBuf::from(&cfg.runc.binary)).filter(|p| p.is_file())
    } else {
        on_path(&cfg.runc.binary)
    };
    vec![
        Check {
            name: "runc".into(),
            ok: runc.is_some(),
            detail: runc
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| format!("{:?} not found", cfg.runc.binary)),
            fix: runc
                .is_none()
                .then(|| "install runc or set [runc] binary".into()),
        },
        delegate_check(&cfg.runc.binary, runc.as_deref(), cgroup_v2_only()),
    ]
}

/// The `nvidia` runtime entry in containerd's config or in a file it imports: the file, and the
/// binary it names (`runtime_path`, or an absolute `runtime_type` as `nvidia-shim install`
/// writes for containerd 1.6).
fn runtime_entry(config: &Path) -> Option<(PathBuf, Option<PathBuf>)> {
    let main: toml_edit::DocumentMut = std::fs::read_to_string(config).ok()?.parse().ok()?;
    let mut files = vec![(config.to_path_buf(), main.clone())];
    for glob in main
        .get("imports")
        .and_then(|v| v.as_array())
        .into_iter()
        .flatten()
    {
        let Some(dir) = glob.as_str().and_then(|g| g.strip_suffix("/*.toml")) else {
            continue;
        };
        let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
            .map(|r| r.filter_map(|e| Some(e.ok()?.path())).collect())
            .unwrap_or_default();
        found.sort();
        for f in found
            .into_iter()
            .filter(|f| f.extension().is_some_and(|e| e == "toml"))
        {
            if let Some(doc) = std::fs::read_to_string(&f)
                .ok()
                .and_then(|t| t.parse().ok())
            {
                files.push((f, doc));
            }
        }
    }
    files.into_iter().find_map(|(file, doc)| {
        let rt = ["io.containerd.grpc.v1.cri", "io.containerd.cri.v1.runtime"]
            .iter()
            .find_map(|p| {
                doc.get("plugins")?
                    .get(p)?
                    .get("containerd")?
                    .get("runtimes")?
                    .get(RUNTIME_NAME)
            })?;
        let ty = rt
            .get("runtime_type")
            .and_then(|v| v.as_str())
            .unwrap_or_default();
        let ours = ty == RUNTIME_TYPE || ty.ends_with("/containerd-shim-nvidia-v2");
        let path = rt
            .get("runtime_path")
            .and_then(|v| v.as_str())
            .or(ty.starts_with('/').then_some(ty));
        ours.then(|| (file, path.map(PathBuf::from)))
    })
}

/// containerd's config has the runtime, and the binary it runs is there.
fn containerd_checks(containerd_config: &Path) -> Vec<Check> {
    let entry = runtime_entry(containerd_config);
    let shim = entry
        .as_ref()
        .and_then(|(_, p)| p.clone())
        .filter(|p| p.is_file())
        .or_else(|| on_path("containerd-shim-nvidia-v2"));
    vec![
        Check {
            name: "shim binary".into(),
            ok: shim.is_some(),
            detail: shim.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| {
                "containerd-shim-nvidia-v2 is neither on PATH nor at the runtime's runtime_path".into()
            }),
            fix: shim.is_none().then(|| {
                "nvidia-shim install (or install -m 755 containerd-shim-nvidia-v2 /usr/local/bin/)".into()
            }),
        },
        Check {
            name: "containerd config".into(),
            ok: entry.is_some(),
            detail: match &entry {
                Some((file, _)) => format!("runtime {RUNTIME_NAME:?} configured in {}", file.display()),
                None => format!("{}: runtime {RUNTIME_NAME:?} not configured", containerd_config.display()),
            },
            fix: entry.is_none().then(|| {
                format!("nvidia-shim containerd configure --config {}", containerd_config.display())
            }),
        },
    ]
}

fn report(checks: &[Check], json_out: bool) {
    if json_out {
        let v: Vec<_> = checks
            .iter()
            .map(|c| json!({"check": c.name, "ok": c.ok, "detail": c.detail, "fix": c.fix}))
            .collect();
        let failed = checks.iter().any(|c| !c.ok);
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({"ok": !failed, "checks": v})).unwrap_or_default()
        );
        return;
    }
    for c in checks {
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

/// Runs `doctor`.
pub fn run(config: Option<&Path>, args: DoctorArgs) -> CliResult {
    let (cfg, source) = load_config(config)?;
    let mut checks = vec![Check {
        name: "shim config".into(),
        ok: true,
        detail: source,
        fix: None,
    }];
    checks.extend(driver_checks(&cfg, args.fix));
    checks.extend(runc_checks(&cfg));
    checks.extend(containerd_checks(&args.containerd_config));
    report(&checks, args.json);
    let failed = checks.iter().filter(|c| !c.ok).count();
    if failed > 0 {
        return Err(CliError::failed(format!("{failed} check(s) failed")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_entries_are_found_in_place_and_in_drop_ins() {
        let d = tempfile::tempdir().unwrap();
        let main = d.path().join("config.toml");
        let conf = d.path().join("conf.d");
        std::fs::create_dir(&conf).unwrap();
        std::fs::write(
            &main,
            format!("version = 3\nimports = [\"{}/*.toml\"]\n", conf.display()),
        )
        .unwrap();
        assert_eq!(runtime_entry(&main), None);
        let drop_in = conf.join("99-nvidia-shim.toml");
        std::fs::write(
            &drop_in,
            "version = 3\n[plugins.\"io.containerd.cri.v1.runtime\".containerd.runtimes.nvidia]\n  runtime_type = \"io.containerd.nvidia.v2\"\n  runtime_path = \"/opt/x/containerd-shim-nvidia-v2\"\n",
        )
        .unwrap();
        assert_eq!(
            runtime_entry(&main),
            Some((
                drop_in,
                Some(PathBuf::from("/opt/x/containerd-shim-nvidia-v2"))
            ))
        );
        std::fs::write(
            &main,
            "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.nvidia]\n  runtime_type = \"/usr/local/nvidia-shim/bin/containerd-shim-nvidia-v2\"\n",
        )
        .unwrap();
        assert_eq!(
            runtime_entry(&main),
            Some((
                main.clone(),
                Some(PathBuf::from(
                    "/usr/local/nvidia-shim/bin/containerd-shim-nvidia-v2"
                ))
            ))
        );
    }

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
