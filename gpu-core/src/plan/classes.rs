//! Device classes beyond GPUs, for a container that was given a GPU and asked for them: IMEX
//! channels (exactly those named, or all), the RDMA, GDS, NVSwitch and GDRCopy nodes (all the
//! host has of the class), and for graphics the DRM nodes of exactly its GPUs. A channel the host
//! lacks is refused, naming the ones it has; a class the host has no node of is a warning.

use std::collections::BTreeSet;

use super::{Plan, Selected};
use crate::error::GpuError;
use crate::inventory::{Capability, DeviceNode, Inventory};
use crate::request::{Imex, Request};

pub(super) fn add(
    p: &mut Plan,
    req: &Request,
    inv: &Inventory,
    selected: &[Selected<'_>],
    caps: &BTreeSet<Capability>,
) -> Result<(), GpuError> {
    let c = &req.classes;
    let flags = [
        (
            "NVIDIA_MOFED",
            c.mofed,
            &inv.classes.mofed,
            "/dev/infiniband/*",
        ),
        ("NVIDIA_GDS", c.gds, &inv.classes.gds, "/dev/nvidia-fs*"),
        (
            "NVIDIA_NVSWITCH",
            c.nvswitch,
            &inv.classes.nvswitch,
            "/dev/nvidia-nvswitch*",
        ),
        (
            "NVIDIA_GDRCOPY",
            c.gdrcopy,
            &inv.classes.gdrcopy,
            "/dev/gdrdrv",
        ),
    ];
    if selected.is_empty() {
        let asked: Vec<&str> = flags.iter().filter(|f| f.1).map(|f| f.0).collect();
        if !asked.is_empty() || c.imex != Imex::None {
            p.warnings.push(format!(
                "{} ignored: the container was given no GPU",
                if asked.is_empty() {
                    "NVIDIA_IMEX_CHANNELS".to_string()
                } else {
                    asked.join(", ")
                }
            ));
        }
        return Ok(());
    }
    add_imex(p, &c.imex, inv)?;
    for (var, asked, nodes, what) in flags {
        if !asked {
            continue;
        }
        if nodes.is_empty() {
            p.warnings.push(format!(
                "{var}=enabled: this host has no {what} nodes; nothing added"
            ));
        }
        add_all(p, nodes);
    }
    if caps.contains(&Capability::Graphics) {
        for s in selected {
            if let Selected::Gpu(g) = s {
                if let Some((_, nodes)) = inv.classes.drm.iter().find(|(b, _)| *b == g.pci_bus_id) {
                    add_all(p, nodes);
                }
            }
        }
        if let Some(m) = inv.control("/dev/nvidia-modeset") {
            p.add_device(m);
        }
    }
    Ok(())
}

fn add_all(p: &mut Plan, nodes: &[DeviceNode]) {
    for n in nodes {
        p.add_device(n);
    }
}

fn add_imex(p: &mut Plan, imex: &Imex, inv: &Inventory) -> Result<(), GpuError> {
    let have = &inv.classes.imex_channels;
    match imex {
        Imex::None => {}
        Imex::All if have.is_empty() => p
            .warnings
            .push("NVIDIA_IMEX_CHANNELS=all: this host has no IMEX channels".into()),
        Imex::All => {
            for (_, n) in have {
                p.add_device(n);
            }
        }
        Imex::List(ids) => {
            for id in ids {
                let Some((_, n)) = have.iter().find(|(c, _)| c == id) else {
                    let list: Vec<String> = have.iter().map(|(c, _)| c.to_string()).collect();
                    return Err(GpuError::Refused(format!(
                        "IMEX channel {id} is not on this host (it has: {})",
                        if list.is_empty() {
                            "none".to_string()
                        } else {
                            crate::echo::clipped(&list.join(", "), crate::echo::ECHO_LIMIT)
                        }
                    )));
                };
                p.add_device(n);
            }
        }
    }
    Ok(())
}
