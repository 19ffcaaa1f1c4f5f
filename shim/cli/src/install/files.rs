//! The install steps that put files on the node: the binaries (the running version kept for
//! rollback), the shim config (only one install wrote), the CDI spec (with the host's paths).

use std::fs;
use std::path::Path;

use gpu_core::discover::Host;
use nvidia_shim_config::ShimConfig;

use super::host::{remove, replace, same_content, HostRoot, Record};
use super::{step, InstallArgs, CLI_BIN, SHIM_BIN};
use crate::{CliError, CliResult};

/// Creates host directory `dir` and its missing ancestors, recording each one made.
pub(super) fn ensure_dir(root: &HostRoot, dir: &Path, rec: &mut Record) -> Result<(), CliError> {
    let missing: Vec<&Path> = dir
        .ancestors()
        .take_while(|d| !root.local(d).exists())
        .collect();
    for d in missing.into_iter().rev() {
        fs::create_dir(root.local(d))
            .map_err(|e| CliError::failed(format!("creating {}: {e}", d.display())))?;
        rec.dirs.push(d.display().to_string());
    }
    Ok(())
}

pub(super) fn parent(p: &Path) -> &Path {
    p.parent().unwrap_or(Path::new("/"))
}

pub(super) fn install_binaries(a: &InstallArgs, root: &HostRoot, rec: &mut Record) -> CliResult {
    let src_dir = match &a.source_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .ok_or_else(|| {
                CliError::failed("cannot tell this executable's directory; pass --source-dir")
            })?,
    };
    ensure_dir(root, &a.common.bin_dir, rec)?;
    let mut done = Vec::new();
    for name in [SHIM_BIN, CLI_BIN] {
        let src = src_dir.join(name);
        let bytes = fs::read(&src).map_err(|e| {
            CliError::failed(format!(
                "reading {} ({e}); pass --source-dir DIR holding {SHIM_BIN} and {CLI_BIN}",
                src.display()
            ))
        })?;
        let host_dst = a.common.bin_dir.join(name);
        let dst = root.local(&host_dst);
        if same_content(&dst, &bytes) {
            continue;
        }
        if dst.exists() {
            // The running version stays reachable for rollback; running shims keep their inode.
            let prev = dst.with_extension("previous");
            remove(&prev)?;
            fs::hard_link(&dst, &prev).map_err(|e| {
                CliError::failed(format!(
                    "keeping {} as {}: {e}",
                    dst.display(),
                    prev.display()
                ))
            })?;
            rec.own(&host_dst.with_extension("previous"));
        }
        replace(&dst, &bytes, 0o755)?;
        rec.own(&host_dst);
        done.push(name);
    }
    if done.is_empty() {
        step(
            "binaries",
            format!("unchanged in {}", a.common.bin_dir.display()),
        );
    } else {
        step(
            "binaries",
            format!(
                "installed {} into {} (a replaced one is kept as <name>.previous)",
                done.join(", "),
                a.common.bin_dir.display()
            ),
        );
    }
    Ok(())
}

fn shim_config_text(a: &InstallArgs) -> String {
    format!(
        "# Written by `nvidia-shim install`, which rewrites it on upgrade and removes it on uninstall.\n\
         # Replace it with a file of your own to keep your settings (install then leaves it alone);\n\
         # every key is listed in deploy/nvidia-shim.toml.\n\
         [driver]\nroot = {:?}\n",
        a.driver_root.display().to_string()
    )
}

pub(super) fn install_shim_config(a: &InstallArgs, root: &HostRoot, rec: &mut Record) -> CliResult {
    let local = root.local(&a.shim_config);
    if local.exists() && !rec.owns(&a.shim_config) {
        step(
            "shim config",
            format!("kept {} (not written by install)", a.shim_config.display()),
        );
        return Ok(());
    }
    let text = shim_config_text(a);
    ShimConfig::parse(&text, "the generated shim config")
        .map_err(|e| CliError::failed(format!("shim config: {e}")))?;
    ensure_dir(root, parent(&a.shim_config), rec)?;
    let changed = replace(&local, text.as_bytes(), 0o644)?;
    rec.own(&a.shim_config);
    step(
        "shim config",
        format!(
            "{} {}",
            if changed { "wrote" } else { "unchanged" },
            a.shim_config.display()
        ),
    );
    Ok(())
}

/// Replaces every string in `v` that names a path under the host root by the host's path.
fn rebase(v: &mut serde_json::Value, root: &HostRoot) {
    match v {
        serde_json::Value::String(s) => {
            if let Some(h) = root.host_path(s) {
                *s = h;
            }
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(|x| rebase(x, root)),
        serde_json::Value::Object(o) => o.values_mut().for_each(|x| rebase(x, root)),
        _ => {}
    }
}

pub(super) fn install_cdi(a: &InstallArgs, root: &HostRoot, rec: &mut Record) -> CliResult {
    if a.no_cdi {
        step("cdi spec", "skipped (--no-cdi)");
        return Ok(());
    }
    let local_cfg = root.local(&a.shim_config);
    let cfg = ShimConfig::from_file(&local_cfg)
        .map_err(|e| CliError::failed(format!("cdi spec: {e}")))?;
    let mut d = cfg.driver.clone();
    for p in [&mut d.root, &mut d.dev_root, &mut d.proc_root] {
        *p = root.local(p);
    }
    d.nvml_library = d.nvml_library.map(|p| root.local(&p));
    // Discovery here sees host paths under the host root; its cache must not land on the host,
    // nor stay anywhere after this run.
    let cache = std::env::temp_dir().join(format!("nvidia-shim-install-{}", std::process::id()));
    d.cache_dir = cache.clone();
    let found = Host::new(d).discover_now();
    let _ = fs::remove_dir_all(&cache);
    let inv = found.map_err(|e| {
        CliError::failed(format!(
            "cdi spec: no driver under {} (driver root from {}): {e}; fix [driver] root there \
             (or --driver-root), or pass --no-cdi",
            cfg.driver.root.display(),
            a.shim_config.display()
        ))
    })?;
    let mut spec = crate::cdi::generate(&inv);
    rebase(&mut spec, root);
    let text =
        serde_yaml_ng::to_string(&spec).map_err(|e| CliError::failed(format!("cdi spec: {e}")))?;
    ensure_dir(root, parent(&a.cdi_spec), rec)?;
    let changed = replace(&root.local(&a.cdi_spec), text.as_bytes(), 0o644)?;
    rec.own(&a.cdi_spec);
    step(
        "cdi spec",
        format!(
            "{} {} ({} GPUs, driver {})",
            if changed { "wrote" } else { "unchanged" },
            a.cdi_spec.display(),
            inv.gpus.len(),
            inv.driver_version
        ),
    );
    Ok(())
}
