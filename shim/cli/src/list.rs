//! `nvidia-shim list`: what a container with a given request would receive, without running one.

use gpu_core::plan::ImageLayout;
use gpu_core::{Injector, Plan};
use serde_json::json;

use std::path::Path;

use super::{load_config, CliError, CliResult};

/// `list` options: the request, as a container would carry it.
#[derive(clap::Args)]
pub struct ListArgs {
    /// A container environment variable (repeatable); NVIDIA_VISIBLE_DEVICES=all when none
    /// and no annotation is given.
    #[arg(long, value_name = "K=V")]
    env: Vec<String>,
    /// A container annotation (repeatable), e.g. cdi.k8s.io/x=nvidia.com/gpu=0.
    #[arg(long, value_name = "K=V")]
    annotation: Vec<String>,
    /// Print the plan as JSON.
    #[arg(long)]
    json: bool,
    /// An image's unpacked root filesystem: plan for its library layout (as the shim reads it at
    /// Create) instead of a Debian-family one.
    #[arg(long, value_name = "DIR")]
    rootfs: Option<std::path::PathBuf>,
}

fn spec_for(env: &[String], annotations: &[String]) -> Result<oci_spec::runtime::Spec, CliError> {
    let mut ann = serde_json::Map::new();
    for a in annotations {
        let (k, v) = a
            .split_once('=')
            .ok_or_else(|| CliError::usage(format!("--annotation {a:?} is not K=V")))?;
        ann.insert(k.into(), v.into());
    }
    for e in env {
        if !e.contains('=') {
            return Err(CliError::usage(format!("--env {e:?} is not K=V")));
        }
    }
    serde_json::from_value(json!({
        "ociVersion": "1.0.2",
        "process": {"cwd": "/", "args": ["sh"], "env": env, "user": {"uid": 0, "gid": 0}},
        "root": {"path": "rootfs"},
        "annotations": ann,
    }))
    .map_err(|e| CliError::failed(e.to_string()))
}

/// The plan as JSON.
pub fn to_json(p: &Plan) -> serde_json::Value {
    json!({
        "selected": p.selected,
        "devices": p.devices.iter().map(|d| json!({"path": d.path, "major": d.major, "minor": d.minor, "mode": format!("{:o}", d.mode)})).collect::<Vec<_>>(),
        "mounts": p.mounts.iter().map(|m| json!({"source": m.source, "destination": m.destination, "options": m.options})).collect::<Vec<_>>(),
        "env": p.env,
        "maskedPaths": p.masked_paths,
        "ldCache": p.ld_entries.iter().map(|e| json!({"name": e.key, "path": e.value})).collect::<Vec<_>>(),
        "links": p.links.iter().map(|l| json!({"path": format!("{}/{}", l.dir, l.name), "target": l.target})).collect::<Vec<_>>(),
    })
}

/// The image layout to plan for: a real image root's, read as the shim reads it, else a
/// Debian-family one.
fn layout(rootfs: Option<&Path>) -> Result<ImageLayout, CliError> {
    match rootfs {
        Some(dir) => {
            let root = gpu_core::inroot::Root::open(dir)
                .map_err(|e| CliError::failed(format!("opening {}: {e}", dir.display())))?;
            Ok(gpu_core::apply::image_layout(&root))
        }
        None => Ok(ImageLayout {
            libdir: format!("/usr/lib/{}-linux-gnu", std::env::consts::ARCH),
            libdir32: "/usr/lib/i386-linux-gnu".into(),
            ..Default::default()
        }),
    }
}

/// Runs `list`.
pub fn run(config: Option<&Path>, args: ListArgs) -> CliResult {
    let ListArgs {
        mut env,
        annotation: annotations,
        json,
        rootfs,
    } = args;
    if !env.iter().any(|e| e.starts_with("NVIDIA_VISIBLE_DEVICES=")) && annotations.is_empty() {
        env.push("NVIDIA_VISIBLE_DEVICES=all".into());
    }
    let (cfg, _) = load_config(config)?;
    let injector = Injector::new(cfg.core());
    let layout = layout(rootfs.as_deref())?;
    let plan = injector
        .plan(&spec_for(&env, &annotations)?, &layout)
        .map_err(|e| CliError::failed(e.to_string()))?;
    let Some(plan) = plan else {
        if json {
            println!("null");
        } else {
            println!("no GPU request: the container gets nothing");
        }
        return Ok(());
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&to_json(&plan)).unwrap_or_default()
        );
        return Ok(());
    }
    println!(
        "Selected: {}",
        if plan.selected.is_empty() {
            "(no GPUs)".into()
        } else {
            plan.selected.join(", ")
        }
    );
    println!("Device nodes:");
    for d in &plan.devices {
        println!(
            "  {} (c {}:{}, mode {:o})",
            d.path, d.major, d.minor, d.mode
        );
    }
    println!("Mounts (read-only binds unless noted):");
    for m in &plan.mounts {
        println!(
            "  {} <- {} [{}]",
            m.destination,
            m.source.display(),
            m.options.join(",")
        );
    }
    if !plan.env.is_empty() {
        println!("Env:");
        for e in &plan.env {
            println!("  {e}");
        }
    }
    println!("Masked: {}", plan.masked_paths.join(", "));
    println!("Links (created in the container's root):");
    for l in &plan.links {
        println!("  {}/{} -> {}", l.dir, l.name, l.target);
    }
    println!("Loader cache entries (written to the container's /etc/ld.so.cache):");
    for e in &plan.ld_entries {
        println!("  {} => {}", e.key, e.value);
    }
    Ok(())
}
