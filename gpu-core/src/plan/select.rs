//! Which GPUs a request names: `all`, indexes, UUIDs, MIG devices, each resolved against the
//! inventory (an unknown one is refused, naming what exists), then the request's requirements
//! checked against what was selected.

use crate::error::GpuError;
use crate::inventory::{Gpu, Inventory, MigDevice};
use crate::request::{Devices, Request};
use crate::require;

pub(super) enum Selected<'a> {
    Gpu(&'a Gpu),
    Mig(&'a Gpu, &'a MigDevice),
}

fn unknown_device(id: &str, inv: &Inventory) -> GpuError {
    let known = inv.known_ids();
    let have = if known.is_empty() {
        "no GPUs".to_string()
    } else {
        known.join(", ")
    };
    GpuError::Refused(format!(
        "unknown device {} (this host has: {})",
        crate::echo::quoted(id),
        crate::echo::clipped(&have, 4 * crate::echo::ECHO_LIMIT)
    ))
}

fn resolve<'a>(id: &str, inv: &'a Inventory) -> Result<Selected<'a>, GpuError> {
    if let Ok(i) = id.parse::<u32>() {
        return inv
            .gpus
            .iter()
            .find(|g| g.index == i)
            .map(Selected::Gpu)
            .ok_or_else(|| unknown_device(id, inv));
    }
    if let Some((g, m)) = id.split_once(':').filter(|(g, _)| g.parse::<u32>().is_ok()) {
        if let (Ok(g), Ok(m)) = (g.parse::<u32>(), m.parse::<u32>()) {
            if let Some(gpu) = inv.gpus.iter().find(|x| x.index == g) {
                if let Some(mig) = gpu.migs.iter().find(|y| y.index == m) {
                    return Ok(Selected::Mig(gpu, mig));
                }
            }
            return Err(unknown_device(id, inv));
        }
    }
    for g in &inv.gpus {
        if g.uuid.eq_ignore_ascii_case(id) {
            return Ok(Selected::Gpu(g));
        }
        if g.pci_bus_id.eq_ignore_ascii_case(id)
            || crate::inventory::normalise_bus_id(id) == g.pci_bus_id
        {
            return Ok(Selected::Gpu(g));
        }
        for m in &g.migs {
            if m.uuid.eq_ignore_ascii_case(id) {
                return Ok(Selected::Mig(g, m));
            }
        }
    }
    Err(unknown_device(id, inv))
}

pub(super) fn check_requirements(
    req: &Request,
    inv: &Inventory,
    selected: &[Selected<'_>],
) -> Result<(), GpuError> {
    let host = require::Facts {
        cuda: inv.cuda_version.clone(),
        driver: Some(inv.driver_version.clone()),
        ..Default::default()
    };
    let mut checks: Vec<require::Facts> = selected
        .iter()
        .map(|s| {
            let g = match s {
                Selected::Gpu(g) | Selected::Mig(g, _) => g,
            };
            require::Facts {
                arch: g.arch.clone(),
                brand: g.brand.clone(),
                ..host.clone()
            }
        })
        .collect();
    if checks.is_empty() {
        checks.push(require::Facts {
            no_gpu: true,
            ..host
        });
    }
    for r in &req.requirements {
        if let Some(f) = checks.iter().find(|f| !require::satisfied(&r.expr, f)) {
            let hint = if require::wants_newer_cuda(&r.expr) {
                "; please update your driver to a newer version, or use an earlier cuda container"
            } else {
                ""
            };
            return Err(GpuError::Refused(format!(
                "unsatisfied requirement {}={}: this host has CUDA {}, driver {}{}{}",
                crate::echo::clipped(&r.var, crate::echo::ECHO_LIMIT),
                crate::echo::quoted(&r.text),
                inv.cuda_version.as_deref().unwrap_or("unknown"),
                inv.driver_version,
                match (&f.brand, &f.arch) {
                    (Some(b), Some(a)) => format!(", GPU brand {b}, arch {a}"),
                    _ if !f.no_gpu => " (GPU brand/arch unknown: NVML unavailable)".into(),
                    _ => String::new(),
                },
                hint
            )));
        }
    }
    Ok(())
}

/// Video needs the compute libraries and display the graphics ones.
/// The GPUs (or MIG devices) a device request names.
pub(super) fn select<'a>(
    devices: &Devices,
    inv: &'a Inventory,
) -> Result<Vec<Selected<'a>>, GpuError> {
    Ok(match devices {
        Devices::NoGpus => Vec::new(),
        Devices::All => inv
            .gpus
            .iter()
            .flat_map(|g| {
                if g.mig_enabled && !g.migs.is_empty() {
                    g.migs.iter().map(|m| Selected::Mig(g, m)).collect()
                } else {
                    vec![Selected::Gpu(g)]
                }
            })
            .collect(),
        Devices::List(ids) => ids
            .iter()
            .map(|id| resolve(id, inv))
            .collect::<Result<_, _>>()?,
    })
}
