//! The device classes beyond GPUs that NVIDIA's toolkit serves by environment, as the host has
//! them: IMEX channels, the InfiniBand verbs nodes (GPUDirect RDMA), the nvidia-fs nodes
//! (GPUDirect Storage), NVSwitch nodes, GDRCopy's node, and each GPU's DRM nodes (found through
//! `/dev/dri/by-path`, which names them by the GPU's PCI bus). Only nodes that exist are listed.

use std::path::Path;

use super::files::{char_node, under};
use crate::inventory::{ClassNodes, DeviceNode, Gpu};

/// Most entries read from one device directory.
const MAX_ENTRIES: usize = 4096;

/// Names in `dir` (below `dev_root`) that `keep` accepts, sorted, at most [`MAX_ENTRIES`] read.
fn names(dev_root: &Path, dir: &str, keep: impl Fn(&str) -> bool) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(under(dev_root, dir))
        .map(|rd| {
            rd.take(MAX_ENTRIES)
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| keep(n))
                .collect()
        })
        .unwrap_or_default();
    out.sort_by_key(|n| natural(n));
    out
}

/// Sort key putting `nvidia-fs2` before `nvidia-fs10`.
fn natural(name: &str) -> (String, u64) {
    let digits = name.len() - name.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    let (stem, num) = name.split_at(name.len() - digits);
    (stem.to_string(), num.parse().unwrap_or(0))
}

fn nodes(dev_root: &Path, dir: &str, keep: impl Fn(&str) -> bool) -> Vec<DeviceNode> {
    names(dev_root, dir, keep)
        .iter()
        .filter_map(|n| char_node(dev_root, &format!("{}/{n}", dir.trim_end_matches('/'))))
        .collect()
}

fn numbered(name: &str, prefix: &str) -> bool {
    name.strip_prefix(prefix)
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// The GPU's DRM nodes, from `/dev/dri/by-path/pci-<bus>-card` and `-render`.
fn drm_of(dev_root: &Path, bus: &str) -> Vec<DeviceNode> {
    ["card", "render"]
        .iter()
        .filter_map(|kind| {
            let link = under(dev_root, &format!("/dev/dri/by-path/pci-{bus}-{kind}"));
            let target = std::fs::read_link(link).ok()?;
            let name = target.file_name()?.to_str()?.to_string();
            char_node(dev_root, &format!("/dev/dri/{name}"))
        })
        .collect()
}

/// Every class's nodes on the host under `dev_root`, and the DRM nodes of `gpus`.
pub fn discover(dev_root: &Path, gpus: &[Gpu]) -> ClassNodes {
    let imex_channels = names(dev_root, "/dev/nvidia-caps-imex-channels", |n| {
        numbered(n, "channel")
    })
    .iter()
    .filter_map(|n| {
        let id: u32 = n.strip_prefix("channel")?.parse().ok()?;
        let node = char_node(dev_root, &format!("/dev/nvidia-caps-imex-channels/{n}"))?;
        Some((id, node))
    })
    .collect();
    ClassNodes {
        imex_channels,
        mofed: nodes(dev_root, "/dev/infiniband", |n| {
            n == "rdma_cm" || numbered(n, "uverbs") || numbered(n, "umad")
        }),
        gds: nodes(dev_root, "/dev", |n| numbered(n, "nvidia-fs")),
        nvswitch: nodes(dev_root, "/dev", |n| {
            n == "nvidia-nvswitchctl" || numbered(n, "nvidia-nvswitch")
        }),
        gdrcopy: nodes(dev_root, "/dev", |n| n == "gdrdrv"),
        drm: gpus
            .iter()
            .map(|g| (g.pci_bus_id.clone(), drm_of(dev_root, &g.pci_bus_id)))
            .filter(|(_, n)| !n.is_empty())
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbered_names_sort_naturally() {
        let mut v = vec!["nvidia-fs10", "nvidia-fs2", "nvidia-fs1"];
        v.sort_by_key(|n| natural(n));
        assert_eq!(v, ["nvidia-fs1", "nvidia-fs2", "nvidia-fs10"]);
        assert!(numbered("channel12", "channel") && !numbered("channel", "channel"));
        assert!(!numbered("uverbsX", "uverbs"));
    }
}
