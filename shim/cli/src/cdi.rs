//! `nvidia-shim cdi generate`: a CDI spec (kind `nvidia.com/gpu`) for this host, with devices by
//! index, UUID, MIG (`<gpu>:<mig>` and `MIG-…`) and `all`, carrying no hooks; and one spec per
//! device class beyond GPUs the host has (IMEX channels, RDMA, GDS, NVSwitch, GDRCopy).
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
        // The GPU's DRM nodes go with it, as in NVIDIA's specs.
        let mut own = vec![node(&g.node)];
        if let Some((_, drm)) = inv.classes.drm.iter().find(|(b, _)| *b == g.pci_bus_id) {
            own.extend(drm.iter().map(node));
            nodes.extend(drm.iter().map(node));
        }
        for name in [g.index.to_string(), g.uuid.clone()] {
            devices.push(json!({"name": name, "containerEdits": {"deviceNodes": own}}));
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

/// Specs for the device classes beyond GPUs the host has, each under its own kind as nvidia-ctk's
/// modes write them: `nvidia.com/imex-channel` (one device per channel), and `nvidia.com/mofed`,
/// `gds`, `nvswitch`, `gdrcopy` (one device, `all`). Returns (file-name suffix, spec).
pub fn class_specs(inv: &Inventory) -> Vec<(&'static str, Value)> {
    let spec = |kind: &str, devices: Vec<Value>| json!({"cdiVersion": "0.5.0", "kind": kind, "devices": devices});
    let all = |nodes: &[DeviceNode]| {
        vec![
            json!({"name": "all", "containerEdits": {"deviceNodes": nodes.iter().map(node).collect::<Vec<_>>()}}),
        ]
    };
    let c = &inv.classes;
    let mut out = Vec::new();
    if !c.imex_channels.is_empty() {
        let devices = c
            .imex_channels
            .iter()
            .map(|(id, n)| json!({"name": id.to_string(), "containerEdits": {"deviceNodes": [node(n)]}}))
            .collect();
        out.push(("imex-channel", spec("nvidia.com/imex-channel", devices)));
    }
    for (suffix, nodes) in [
        ("mofed", &c.mofed),
        ("gds", &c.gds),
        ("nvswitch", &c.nvswitch),
        ("gdrcopy", &c.gdrcopy),
    ] {
        if !nodes.is_empty() {
            out.push((suffix, spec(&format!("nvidia.com/{suffix}"), all(nodes))));
        }
    }
    out
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
        classes: Default::default(),
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
    let encode = |spec: &Value| -> Result<String, CliError> {
        match format.as_str() {
            "json" => Ok(serde_json::to_string_pretty(spec)
                .map_err(|e| CliError::failed(e.to_string()))?
                + "\n"),
            "yaml" => serde_yaml_ng::to_string(spec).map_err(|e| CliError::failed(e.to_string())),
            other => Err(CliError::usage(format!(
                "--format {other:?}: expected yaml or json"
            ))),
        }
    };
    let mut specs = vec![("", generate(&inv))];
    specs.extend(class_specs(&inv));
    for (suffix, spec) in &specs {
        let text = encode(spec)?;
        match &output {
            Some(path) => {
                // One spec per file, as CDI wants: the classes beside the GPUs' file.
                let path = beside(path, suffix);
                let tmp = path.with_extension("nvidia-shim.tmp");
                std::fs::write(&tmp, &text)
                    .and_then(|_| std::fs::rename(&tmp, &path))
                    .map_err(|e| CliError::failed(format!("writing {}: {e}", path.display())))?;
                eprintln!(
                    "wrote {} ({}, {} devices)",
                    path.display(),
                    spec["kind"].as_str().unwrap_or_default(),
                    spec["devices"].as_array().map_or(0, Vec::len)
                );
            }
            None if format == "yaml" => print!("---\n{text}"),
            None => print!("{text}"),
        }
    }
    Ok(())
}

/// `dir/stem-suffix.ext` beside `path` (the path itself for no suffix).
fn beside(path: &Path, suffix: &str) -> PathBuf {
    if suffix.is_empty() {
        return path.to_path_buf();
    }
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("nvidia");
    let name = match path.extension().and_then(|e| e.to_str()) {
        Some(ext) => format!("{stem}-{suffix}.{ext}"),
        None => format!("{stem}-{suffix}"),
    };
    path.with_file_name(name)
}
