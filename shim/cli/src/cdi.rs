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
use gpu_core::plan::{ImageLayout, Plan};
use gpu_core::request::{Devices, Request};
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
    let (common, env) = common_edits(inv);
    json!({
        "cdiVersion": "0.5.0",
        "kind": "nvidia.com/gpu",
        "devices": devices,
        "containerEdits": {
            "env": env,
            "deviceNodes": common.devices.iter().map(node).collect::<Vec<_>>(),
            "mounts": mounts(&common),
        },
    })
}

/// The edits every device shares, from the same planner the shim uses: a request for no GPU
/// with the `utility` and `compute` capabilities, for a Debian-family image.
fn common_edits(inv: &Inventory) -> (Plan, Vec<String>) {
    let req = Request {
        devices: Some(Devices::NoGpus),
        capabilities: [Capability::Utility, Capability::Compute].into(),
        requirements: Vec::new(),
        mig_config: false,
        mig_monitor: false,
        cdi_devices: Vec::new(),
        source: "cdi",
        cuda_compat: false,
    };
    let layout = ImageLayout {
        libdir: format!("/usr/lib/{}-linux-gnu", std::env::consts::ARCH),
        libdir32: "/usr/lib/i386-linux-gnu".into(),
        ..Default::default()
    };
    // A request for no GPU has no requirement to fail.
    let p = gpu_core::plan::plan(&req, inv, &layout).unwrap_or_default();
    let mut env = vec!["NVIDIA_VISIBLE_DEVICES=void".to_string()];
    env.extend(p.env.iter().cloned());
    (p, env)
}

/// The plan's binds, plus one at each soname: without hooks nothing creates the plan's soname
/// links or loader cache in a container that another runtime starts from this spec.
fn mounts(p: &Plan) -> Vec<Value> {
    let mut out: Vec<Value> = p
        .mounts
        .iter()
        .map(
            |m| json!({"hostPath": m.source, "containerPath": m.destination, "options": m.options}),
        )
        .collect();
    for l in &p.links {
        let target = format!("{}/{}", l.dir.trim_end_matches('/'), l.target);
        if let Some(m) = p.mounts.iter().find(|m| m.destination == target) {
            out.push(json!({"hostPath": m.source, "containerPath": format!("{}/{}", l.dir.trim_end_matches('/'), l.name), "options": m.options}));
        }
    }
    out
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
