//! The driver's procfs files: version, per-GPU information, device majors, MIG capability minors.

use std::collections::BTreeMap;
use std::path::Path;

/// One GPU as `driver/nvidia/gpus/<bus>/information` describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcGpu {
    /// `Model:`.
    pub model: String,
    /// `GPU UUID:`.
    pub uuid: String,
    /// `Bus Location:`, lowercase.
    pub bus: String,
    /// `Device Minor:`.
    pub minor: u32,
}

/// Extracts the NVRM version from `driver/nvidia/version` text.
pub fn parse_version(text: &str) -> Option<String> {
    let line = text.lines().find(|l| l.starts_with("NVRM version:"))?;
    line.split_whitespace()
        .find(|w| {
            w.contains('.')
                && w.chars().all(|c| c.is_ascii_digit() || c == '.')
                && w.starts_with(|c: char| c.is_ascii_digit())
        })
        .map(str::to_string)
}

/// Parses one `information` file; `None` if it lacks a UUID or minor.
pub fn parse_information(text: &str) -> Option<ProcGpu> {
    let mut fields = BTreeMap::new();
    for line in text.lines() {
        if let Some((k, v)) = line.split_once(':') {
            fields.insert(k.trim().to_string(), v.trim().to_string());
        }
    }
    Some(ProcGpu {
        model: fields.get("Model").cloned().unwrap_or_default(),
        uuid: fields
            .get("GPU UUID")
            .filter(|u| u.starts_with("GPU-"))?
            .clone(),
        bus: fields
            .get("Bus Location")
            .map(|b| b.to_ascii_lowercase())
            .unwrap_or_default(),
        minor: fields.get("Device Minor")?.parse().ok()?,
    })
}

/// Reads every GPU under `<proc_root>/driver/nvidia/gpus`, ordered by bus id (NVML's order).
pub fn gpus(proc_root: &Path) -> Vec<ProcGpu> {
    let dir = proc_root.join("driver/nvidia/gpus");
    let mut out: Vec<ProcGpu> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_to_string(e.path().join("information")).ok())
        .filter_map(|t| parse_information(&t))
        .collect();
    out.sort_by(|a, b| a.bus.cmp(&b.bus));
    out
}

/// Character-device majors by driver name from `<proc_root>/devices`.
pub fn char_majors(proc_root: &Path) -> BTreeMap<String, i64> {
    let text = std::fs::read_to_string(proc_root.join("devices")).unwrap_or_default();
    let mut out = BTreeMap::new();
    for line in text.lines() {
        if line.starts_with("Block devices") {
            break;
        }
        let mut it = line.split_whitespace();
        if let (Some(n), Some(name)) = (it.next(), it.next()) {
            if let Ok(n) = n.parse() {
                out.insert(name.to_string(), n);
            }
        }
    }
    out
}

/// `<proc_root>/driver/nvidia-caps/mig-minors`: capability path (`gpu0/gi1/access`, `config`) →
/// minor of `/dev/nvidia-caps/nvidia-cap<minor>`.
pub fn mig_minors(proc_root: &Path) -> BTreeMap<String, u32> {
    let text = std::fs::read_to_string(proc_root.join("driver/nvidia-caps/mig-minors"))
        .unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.trim().rsplit_once(' ')?;
            Some((k.trim().to_string(), v.parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_of_proprietary_and_open_modules() {
        let p = "NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.129.03  Thu Oct 19 18:56:32 UTC 2023\nGCC version:  gcc 12\n";
        assert_eq!(parse_version(p).as_deref(), Some("535.129.03"));
        let o = "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.95.05  Release Build  (dvs-builder@U22)  Tue Sep 23 2025\n";
        assert_eq!(parse_version(o).as_deref(), Some("580.95.05"));
        assert_eq!(parse_version("garbage"), None);
    }

    #[test]
    fn information_file() {
        let t = "Model: \t\t NVIDIA H100 80GB HBM3\nIRQ:   \t\t 35\nGPU UUID: \t GPU-8d2c5c0a-0000-1111-2222-333344445555\nVideo BIOS: \t 96.00.99.00.01\nBus Type: \t PCIe\nDMA Size: \t 52 bits\nBus Location: \t 0000:00:04.0\nDevice Minor: \t 0\nGPU Excluded:\t No\n";
        let g = parse_information(t).unwrap();
        assert_eq!(g.model, "NVIDIA H100 80GB HBM3");
        assert_eq!(g.uuid, "GPU-8d2c5c0a-0000-1111-2222-333344445555");
        assert_eq!((g.bus.as_str(), g.minor), ("0000:00:04.0", 0));
        assert_eq!(parse_information("Model: x\n"), None);
    }

    #[test]
    fn devices_and_mig_minors() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("devices"),
            "Character devices:\n  1 mem\n195 nvidia-frontend\n236 nvidia-uvm\n237 nvidia-caps\n\nBlock devices:\n  8 sd\n",
        )
        .unwrap();
        let m = char_majors(d.path());
        assert_eq!(m.get("nvidia-uvm"), Some(&236));
        assert_eq!(m.get("sd"), None);
        std::fs::create_dir_all(d.path().join("driver/nvidia-caps")).unwrap();
        std::fs::write(
            d.path().join("driver/nvidia-caps/mig-minors"),
            "config 1\nmonitor 2\ngpu0/gi1/access 12\ngpu0/gi1/ci0/access 13\n",
        )
        .unwrap();
        let mm = mig_minors(d.path());
        assert_eq!(mm.get("gpu0/gi1/ci0/access"), Some(&13));
        assert_eq!(mm.get("config"), Some(&1));
    }
}
