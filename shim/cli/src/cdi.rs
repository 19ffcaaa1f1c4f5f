//! `nvidia-shim cdi generate`: a CDI spec (kind `nvidia.com/gpu`) for this host, with devices by
//! index, UUID, MIG (`<gpu>:<mig>` and `MIG-…`) and `all`, carrying no hooks.
//!
//! Without hooks nothing can rebuild a container's loader cache, so driver libraries are mounted
//! into the Debian-family multiarch directory under both their versioned file name and their
//! soname, where the loader's directory search finds them. (containerd-shim-nvidia-v2 itself does
//! better for env requests: it also writes the container's ld.so.cache.)

use std::path::{Path, PathBuf};

use gpu_core::discover::{Discovery, Host};
use gpu_core::inventory::{Capability, DeviceNode, Inventory};
use serde_json::{json, Value};

use super::{load_config, CliError, CliResult};

/// `cdi` subcommands.
#[derive(clap::Subcommand)]
pub enum CdiCommand {
    /// Write a CDI spec (kind nvidia.com/gpu) for this host's GPUs.
    Generate {
        /// Where to write it (atomically); standard output when absent.
        #[arg(long, value_name = "FILE")]
        output: Option<PathBuf>,
        /// yaml or json; by default from the output's extension, else yaml.
        #[arg(long, value_parser = ["yaml", "json"])]
        format: Option<String>,
    },
}

fn node(n: &DeviceNode) -> Value {
    json!({"path": n.path, "type": "c", "major": n.major, "minor": n.minor, "fileMode": n.mode, "permissions": "rw"})
}

fn ro(src: &std::path::Path, dst: &str) -> Value {
    json!({"hostPath": src, "containerPath": dst, "options": ["ro", "nosuid", "nodev", "rbind", "rprivate"]})
}

/// Builds the spec as a JSON value.
pub fn generate(inv: &Inventory) -> Value {
    let mut devices = Vec::new();
    let mut all_nodes: Vec<Value> = Vec::new();
    for g in &inv.gpus {
        let mut nodes = vec![node(&g.node)];
        for m in &g.migs {
            let mut mn = vec![node(&g.node)];
            mn.extend(m.caps.iter().map(node));
            for name in [format!("{}:{}", g.index, m.index), m.uuid.clone()] {
                devices.push(json!({"name": name, "containerEdits": {"deviceNodes": mn}}));
            }
            nodes.extend(m.caps.iter().map(node));
        }
        for name in [g.index.to_string(), g.uuid.clone()] {
            devices.push(json!({"name": name, "containerEdits": {"deviceNodes": [node(&g.node)]}}));
        }
        all_nodes.extend(nodes);
    }
    if !all_nodes.is_empty() {
        devices.push(json!({"name": "all", "containerEdits": {"deviceNodes": all_nodes}}));
    }
    let libdir = format!("/usr/lib/{}-linux-gnu", std::env::consts::ARCH);
    let caps = [Capability::Utility, Capability::Compute];
    let mut mounts = Vec::new();
    for lib in inv.libraries.iter().filter(|l| {
        !l.is_32bit
            && caps
                .iter()
                .any(|c| c.libraries().contains(&l.prefix.as_str()))
    }) {
        mounts.push(ro(&lib.path, &format!("{libdir}/{}", lib.file_name)));
        if let Some(so) = lib.soname.as_ref().filter(|s| **s != lib.file_name) {
            mounts.push(ro(&lib.path, &format!("{libdir}/{so}")));
        }
    }
    for b in &inv.binaries {
        if caps.iter().any(|c| c.binaries().contains(&b.name.as_str())) {
            mounts.push(ro(&b.path, &format!("/usr/bin/{}", b.name)));
        }
    }
    for (src, dst) in &inv.firmware {
        mounts.push(ro(src, dst));
    }
    for (src, dst) in &inv.sockets {
        mounts.push(json!({"hostPath": src, "containerPath": dst, "options": ["nosuid", "nodev", "noexec", "rbind", "rprivate"]}));
    }
    json!({
        "cdiVersion": "0.5.0",
        "kind": "nvidia.com/gpu",
        "devices": devices,
        "containerEdits": {
            "env": ["NVIDIA_VISIBLE_DEVICES=void"],
            "deviceNodes": inv.control_nodes.iter().filter(|n| n.path != "/dev/nvidia-modeset").map(node).collect::<Vec<_>>(),
            "mounts": mounts,
        },
    })
}

/// Runs `cdi generate`.
pub fn run(config: Option<&Path>, cmd: CdiCommand) -> CliResult {
    let CdiCommand::Generate { output, format } = cmd;
    let format = format.unwrap_or_else(|| {
        match output
            .as_ref()
            .and_then(|o| o.extension())
            .and_then(|e| e.to_str())
        {
            Some("json") => "json".into(),
            _ => "yaml".into(),
        }
    });
    let (cfg, _) = load_config(config)?;
    let inv = Host::new(cfg.driver.clone())
        .inventory()
        .map_err(|e| CliError::failed(e.to_string()))?;
    let spec = generate(&inv);
    let text = match format.as_str() {
        "json" => {
            serde_json::to_string_pretty(&spec).map_err(|e| CliError::failed(e.to_string()))? + "\n"
        }
        "yaml" => serde_yaml::to_string(&spec).map_err(|e| CliError::failed(e.to_string()))?,
        other => {
            return Err(CliError::usage(format!(
                "--format {other:?}: expected yaml or json"
            )))
        }
    };
    match output {
        Some(path) => {
            let tmp = path.with_extension("nvidia-shim.tmp");
            std::fs::write(&tmp, &text)
                .and_then(|_| std::fs::rename(&tmp, &path))
                .map_err(|e| CliError::failed(format!("writing {}: {e}", path.display())))?;
            eprintln!(
                "wrote {} ({} devices)",
                path.display(),
                spec["devices"].as_array().map_or(0, Vec::len)
            );
        }
        None => print!("{text}"),
    }
    Ok(())
}
