//! `nvidia-shim info`: the driver and GPUs as the shim sees them.

use gpu_core::discover::{Discovery, Host};
use gpu_core::Inventory;

use std::path::Path;

use super::{load_config, CliError, CliResult};

/// `info` options.
#[derive(clap::Args)]
pub struct InfoArgs {
    /// Print the inventory as JSON.
    #[arg(long)]
    json: bool,
    /// Discover again instead of using the cached inventory.
    #[arg(long)]
    refresh: bool,
}

/// Human-readable inventory.
pub fn render(inv: &Inventory) -> String {
    let mut s = format!(
        "Driver version: {}\nCUDA version:   {} (from {})\nGPUs ({}, from {}):\n",
        inv.driver_version,
        inv.cuda_version.as_deref().unwrap_or("unknown"),
        inv.cuda_version_source,
        inv.gpus.len(),
        match inv.gpu_source {
            gpu_core::inventory::GpuSource::Nvml => "NVML",
            gpu_core::inventory::GpuSource::Procfs => "procfs",
        }
    );
    for g in &inv.gpus {
        s.push_str(&format!(
            "  {}: {}  {}  bus {}  minor {}  memory {}  MIG {}\n",
            g.index,
            g.model,
            g.uuid,
            g.pci_bus_id,
            g.minor,
            g.memory_mib
                .map(|m| format!("{m} MiB"))
                .unwrap_or_else(|| "unknown".into()),
            if g.mig_enabled { "on" } else { "off" }
        ));
        for m in &g.migs {
            s.push_str(&format!(
                "     {}:{} {} {} (gi {}, ci {})\n",
                g.index, m.index, m.profile, m.uuid, m.gi, m.ci
            ));
        }
    }
    s.push_str(&format!(
        "Driver files:   {} libraries, {} utilities, {} firmware files, {} sockets\n",
        inv.libraries.len(),
        inv.binaries.len(),
        inv.firmware.len(),
        inv.sockets.len()
    ));
    s
}

/// Runs `info`.
pub fn run(config: Option<&Path>, args: InfoArgs) -> CliResult {
    let InfoArgs { json, refresh } = args;
    let (cfg, _) = load_config(config)?;
    let host = Host::new(cfg.driver.clone());
    let inv = if refresh {
        std::sync::Arc::new(
            host.discover_now()
                .map_err(|e| CliError::failed(e.to_string()))?,
        )
    } else {
        host.inventory()
            .map_err(|e| CliError::failed(e.to_string()))?
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&*inv).map_err(|e| CliError::failed(e.to_string()))?
        );
    } else {
        print!("{}", render(&inv));
    }
    Ok(())
}
