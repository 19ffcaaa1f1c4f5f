//! Which containerd a test runs under, and where its binaries are.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// The containerd versions the tests run under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    /// 1.6 (Debian bookworm, installed).
    V1_6,
    /// 1.7 (Debian trixie, extracted into `.cache/containerd17`).
    V1_7,
    /// 2.x (Debian sid, extracted into `.cache/containerd2`).
    V2,
}

impl Version {
    /// Directories to put ahead on PATH for this version's containerd and ctr: the checkout's
    /// `.cache`, or where `NVIDIA_SHIM_CONTAINERD17_DIR` / `NVIDIA_SHIM_CONTAINERD2_DIR` say (a
    /// GPU host has only the bundle).
    pub(crate) fn tools(self) -> Result<Vec<PathBuf>> {
        let (sub, var) = match self {
            Version::V1_6 => return Ok(Vec::new()),
            Version::V1_7 => ("containerd17", "NVIDIA_SHIM_CONTAINERD17_DIR"),
            Version::V2 => ("containerd2", "NVIDIA_SHIM_CONTAINERD2_DIR"),
        };
        let dir = match std::env::var_os(var) {
            Some(d) => PathBuf::from(d),
            None => Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../.cache")
                .join(sub)
                .join("usr/bin"),
        };
        if !dir.join("containerd").exists() {
            bail!("{} missing: run `just setup`", dir.display());
        }
        Ok(vec![dir])
    }

    /// Asks a containerd binary (empty path: the one on PATH) which version it is.
    pub(crate) fn of(binary: &Path) -> Result<Self> {
        let bin = if binary.as_os_str().is_empty() || !binary.exists() {
            PathBuf::from("containerd")
        } else {
            binary.to_path_buf()
        };
        let out = Command::new(&bin)
            .arg("--version")
            .output()
            .with_context(|| format!("running {} --version", bin.display()))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let v = text.split_whitespace().nth(2).unwrap_or_default();
        Ok(if v.starts_with("2.") {
            Version::V2
        } else if v.starts_with("1.7") {
            Version::V1_7
        } else {
            Version::V1_6
        })
    }
}
