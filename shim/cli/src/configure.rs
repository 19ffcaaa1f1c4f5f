//! `nvidia-shim containerd configure|unconfigure`: adds or removes the `nvidia` runtime in a
//! containerd config of version 2 (containerd 1.6/1.7) or 3 (2.x), keeping everything else —
//! comments and formatting included — and a backup of the previous file.

use std::path::{Path, PathBuf};

use toml_edit::{value, Array, DocumentMut, Item, Table};

use super::{CliError, CliResult};

/// `containerd` subcommands.
#[derive(clap::Subcommand)]
pub enum ContainerdCommand {
    /// Add (or update) the `nvidia` runtime; keeps a backup of the previous file.
    Configure {
        #[command(flatten)]
        common: Common,
        /// The shim config the runtime's ConfigPath option names.
        #[arg(long, value_name = "FILE", default_value = nvidia_shim_config::DEFAULT_CONFIG_PATH)]
        shim_config: String,
        /// Also make `nvidia` containerd's default runtime.
        #[arg(long)]
        set_default: bool,
    },
    /// Remove the `nvidia` runtime (and a default pointing at it).
    Unconfigure {
        #[command(flatten)]
        common: Common,
    },
}

/// Options of both `containerd` subcommands.
#[derive(clap::Args)]
pub struct Common {
    /// containerd's config file.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_CONTAINERD_CONFIG)]
    config: PathBuf,
    /// Print the resulting file instead of writing it.
    #[arg(long)]
    dry_run: bool,
}

/// containerd's default config file.
pub const DEFAULT_CONTAINERD_CONFIG: &str = "/etc/containerd/config.toml";
/// Runtime name (and RuntimeClass handler).
pub const RUNTIME_NAME: &str = "nvidia";
/// Our runtime type.
pub const RUNTIME_TYPE: &str = "io.containerd.nvidia.v2";

/// The CRI plugin's key for a config version.
pub fn cri_plugin(version: i64) -> Result<&'static str, CliError> {
    match version {
        2 => Ok("io.containerd.grpc.v1.cri"),
        3 => Ok("io.containerd.cri.v1.runtime"),
        v => Err(CliError::failed(format!(
            "containerd config version {v} is not supported (2 for containerd 1.6/1.7, 3 for 2.x); \
             run `containerd config migrate` first"
        ))),
    }
}

fn table<'a>(parent: &'a mut Table, key: &str) -> &'a mut Table {
    let item = parent.entry(key).or_insert_with(|| {
        let mut t = Table::new();
        t.set_implicit(true);
        Item::Table(t)
    });
    if !item.is_table() {
        *item = Item::Table(Table::new());
    }
    item.as_table_mut().expect("just made a table")
}

/// The config's version (`version = N`; containerd treats a missing key as 1).
pub fn config_version(doc: &DocumentMut) -> i64 {
    doc.get("version").and_then(|v| v.as_integer()).unwrap_or(1)
}

/// Adds (or updates) the runtime. Returns whether anything changed.
pub fn add_runtime(
    doc: &mut DocumentMut,
    shim_config: &str,
    runtime_path: Option<&str>,
    set_default: bool,
) -> Result<bool, CliError> {
    add_runtime_as(doc, RUNTIME_TYPE, shim_config, runtime_path, set_default)
}

/// Like [`add_runtime`], with `runtime_type` in place of ours (an absolute binary path works as
/// a type on containerd 1.6 and 1.7).
pub fn add_runtime_as(
    doc: &mut DocumentMut,
    runtime_type: &str,
    shim_config: &str,
    runtime_path: Option<&str>,
    set_default: bool,
) -> Result<bool, CliError> {
    let before = doc.to_string();
    let plugin = cri_plugin(config_version(doc))?;
    let plugins = table(doc.as_table_mut(), "plugins");
    let cri = table(plugins, plugin);
    let ctd = table(cri, "containerd");
    if set_default {
        ctd["default_runtime_name"] = value(RUNTIME_NAME);
    }
    let runtimes = table(ctd, "runtimes");
    let rt = table(runtimes, RUNTIME_NAME);
    rt.set_implicit(false);
    rt["runtime_type"] = value(runtime_type);
    if let Some(p) = runtime_path {
        rt["runtime_path"] = value(p);
    }
    let mut ann = Array::new();
    ann.push("cdi.k8s.io/*");
    rt["container_annotations"] = value(ann);
    // Pods opt in to GPU-aware pause by annotation; CRI passes pod annotations on by glob.
    let mut pod_ann = Array::new();
    pod_ann.push("nvidia.com/gpu-suspend-on-pause");
    rt["pod_annotations"] = value(pod_ann);
    let opts = table(rt, "options");
    opts.set_implicit(false);
    opts["ConfigPath"] = value(shim_config);
    Ok(doc.to_string() != before)
}

/// Removes the runtime (and the default pointing at it). Returns whether anything changed.
pub fn remove_runtime(doc: &mut DocumentMut) -> Result<bool, CliError> {
    let plugin = cri_plugin(config_version(doc))?;
    let Some(ctd) = doc
        .get_mut("plugins")
        .and_then(|p| p.get_mut(plugin))
        .and_then(|c| c.get_mut("containerd"))
        .and_then(|c| c.as_table_mut())
    else {
        return Ok(false);
    };
    let mut changed = false;
    if ctd.get("default_runtime_name").and_then(|v| v.as_str()) == Some(RUNTIME_NAME) {
        ctd.remove("default_runtime_name");
        changed = true;
    }
    if let Some(r) = ctd.get_mut("runtimes").and_then(|r| r.as_table_mut()) {
        changed |= r.remove(RUNTIME_NAME).is_some();
    }
    Ok(changed)
}

fn containerd_major() -> Option<u32> {
    let out = std::process::Command::new("containerd")
        .arg("--version")
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let v = text.split_whitespace().find(|w| {
        w.trim_start_matches('v')
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_digit())
            && w.contains('.')
    })?;
    v.trim_start_matches('v').split('.').next()?.parse().ok()
}

fn load(path: &Path) -> Result<DocumentMut, CliError> {
    match std::fs::read_to_string(path) {
        Ok(text) => text
            .parse::<DocumentMut>()
            .map_err(|e| CliError::failed(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // A new file in the format of the installed containerd (3 for 2.x, else 2).
            let v = if containerd_major().unwrap_or(1) >= 2 {
                3
            } else {
                2
            };
            Ok(format!("version = {v}\n").parse().expect("valid TOML"))
        }
        Err(e) => Err(CliError::failed(format!("reading {}: {e}", path.display()))),
    }
}

fn save(path: &Path, text: &str) -> Result<PathBuf, CliError> {
    let fail = |e: std::io::Error| CliError::failed(format!("writing {}: {e}", path.display()));
    let backup = path.with_extension("toml.nvidia-shim.bak");
    if path.exists() {
        std::fs::copy(path, &backup).map_err(fail)?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(fail)?;
    }
    let tmp = path.with_extension("toml.nvidia-shim.tmp");
    std::fs::write(&tmp, text).map_err(fail)?;
    std::fs::rename(&tmp, path).map_err(fail)?;
    Ok(backup)
}

/// Runs `containerd configure|unconfigure`.
pub fn run(cmd: ContainerdCommand) -> CliResult {
    let (
        sub,
        Common {
            config: path,
            dry_run,
        },
    ) = match &cmd {
        ContainerdCommand::Configure { common, .. } => ("configure", common),
        ContainerdCommand::Unconfigure { common } => ("unconfigure", common),
    };
    let mut doc = load(path)?;
    let changed = match &cmd {
        ContainerdCommand::Configure {
            shim_config,
            set_default,
            ..
        } => add_runtime(&mut doc, shim_config, None, *set_default)?,
        ContainerdCommand::Unconfigure { .. } => remove_runtime(&mut doc)?,
    };
    if *dry_run {
        print!("{doc}");
        return Ok(());
    }
    if !changed {
        println!("{}: already {sub}d; nothing written", path.display());
        return Ok(());
    }
    let backup = save(path, &doc.to_string())?;
    println!(
        "{}: {sub}d runtime {RUNTIME_NAME:?} (config version {}); previous file kept as {}; restart containerd to apply",
        path.display(),
        config_version(&doc),
        backup.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const V2: &str = "# my containerd\nversion = 2\n\n[plugins]\n  [plugins.\"io.containerd.grpc.v1.cri\"]\n    sandbox_image = \"pause:3.6\" # pinned\n    [plugins.\"io.containerd.grpc.v1.cri\".containerd]\n      default_runtime_name = \"runc\"\n      [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]\n        runtime_type = \"io.containerd.runc.v2\"\n";

    #[test]
    fn configure_keeps_everything_else_and_is_idempotent() {
        let mut doc: DocumentMut = V2.parse().unwrap();
        assert!(add_runtime(&mut doc, "/etc/nvidia-shim/config.toml", None, false).unwrap());
        let text = doc.to_string();
        assert!(text.starts_with("# my containerd\n"), "{text}");
        assert!(
            text.contains("sandbox_image = \"pause:3.6\" # pinned"),
            "{text}"
        );
        assert!(
            text.contains("runtime_type = \"io.containerd.nvidia.v2\""),
            "{text}"
        );
        assert!(
            text.contains("ConfigPath = \"/etc/nvidia-shim/config.toml\""),
            "{text}"
        );
        assert!(text.contains("default_runtime_name = \"runc\""));
        let mut again: DocumentMut = text.parse().unwrap();
        assert!(!add_runtime(&mut again, "/etc/nvidia-shim/config.toml", None, false).unwrap());
        assert!(add_runtime(&mut again, "/etc/nvidia-shim/config.toml", None, true).unwrap());
        assert!(again
            .to_string()
            .contains("default_runtime_name = \"nvidia\""));
        assert!(remove_runtime(&mut again).unwrap());
        let back = again.to_string();
        assert!(
            !back.contains("nvidia.v2") && !back.contains("default_runtime_name = \"nvidia\""),
            "{back}"
        );
        assert!(back.contains("runtimes.runc"), "{back}");
        assert!(!remove_runtime(&mut again).unwrap());
    }

    #[test]
    fn version_3_uses_the_cri_runtime_plugin() {
        let mut doc: DocumentMut = "version = 3\n".parse().unwrap();
        add_runtime(&mut doc, "/x.toml", None, true).unwrap();
        let t = doc.to_string();
        assert!(
            t.contains("[plugins.\"io.containerd.cri.v1.runtime\".containerd.runtimes.nvidia]"),
            "{t}"
        );
        let mut v1: DocumentMut = "[plugins.cri]\n".parse().unwrap();
        let err = add_runtime(&mut v1, "/x", None, false).unwrap_err();
        assert!(err.message.contains("version 1"), "{}", err.message);
    }
}
