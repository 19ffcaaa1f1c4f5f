//! Test images built locally (no registry is reachable): a busybox rootfs packed as an OCI image
//! layout tar and imported with `ctr images import`.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::json;

use crate::{Containerd, IMAGE};

/// Where Debian's busybox-static installs its binary.
const BUSYBOX: &str = "/bin/busybox";

/// Fills `root` with a busybox userland: `/bin/busybox`, one link per applet, and the usual dirs.
pub fn busybox_rootfs(root: &Path) -> Result<()> {
    for d in ["bin", "etc", "tmp", "proc", "sys", "dev", "run", "root"] {
        fs::create_dir_all(root.join(d))?;
    }
    fs::copy(BUSYBOX, root.join("bin/busybox"))
        .with_context(|| format!("copying {BUSYBOX} (install busybox-static)"))?;
    let list = Command::new(BUSYBOX).arg("--list").output()?;
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let link = root.join("bin").join(applet);
        if applet != "busybox" && !link.exists() {
            symlink("busybox", link)?;
        }
    }
    fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
    fs::write(root.join("etc/group"), "root:x:0:\n")?;
    Ok(())
}

fn digest(path: &Path) -> Result<(String, u64)> {
    let out = Command::new("sha256sum").arg(path).output()?;
    if !out.status.success() {
        bail!("sha256sum {} failed", path.display());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let hex = text.split_whitespace().next().context("sha256sum output")?;
    Ok((hex.to_string(), fs::metadata(path)?.len()))
}

fn add_blob(layout: &Path, file: &Path) -> Result<(String, u64)> {
    let (hex, size) = digest(file)?;
    fs::rename(file, layout.join("blobs/sha256").join(&hex))?;
    Ok((format!("sha256:{hex}"), size))
}

fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// Packs `rootfs` as a one-layer OCI image named `name`; returns the archive's path.
pub fn pack(rootfs: &Path, name: &str, work: &Path) -> Result<PathBuf> {
    let layout = work.join("layout");
    fs::create_dir_all(layout.join("blobs/sha256"))?;
    let layer = work.join("layer.tar");
    let st = Command::new("tar")
        .arg("--numeric-owner")
        .arg("-C")
        .arg(rootfs)
        .arg("-cf")
        .arg(&layer)
        .arg(".")
        .status()?;
    if !st.success() {
        bail!("tar of {} failed", rootfs.display());
    }
    let (layer_digest, layer_size) = add_blob(&layout, &layer)?;
    let config = json!({
        "architecture": oci_arch(),
        "os": "linux",
        "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"], "Cmd": ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    });
    let cfg_file = work.join("config.json");
    fs::write(&cfg_file, serde_json::to_vec(&config)?)?;
    let (cfg_digest, cfg_size) = add_blob(&layout, &cfg_file)?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cfg_digest, "size": cfg_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer_size}],
    });
    let man_file = work.join("manifest.json");
    fs::write(&man_file, serde_json::to_vec(&manifest)?)?;
    let (man_digest, man_size) = add_blob(&layout, &man_file)?;
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": man_digest,
            "size": man_size,
            "annotations": {"io.containerd.image.name": name},
        }],
    });
    fs::write(layout.join("index.json"), serde_json::to_vec(&index)?)?;
    fs::write(
        layout.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    let archive = work.join("image.tar");
    let st = Command::new("tar")
        .arg("-C")
        .arg(&layout)
        .arg("-cf")
        .arg(&archive)
        .arg(".")
        .status()?;
    if !st.success() {
        bail!("tar of the image layout failed");
    }
    Ok(archive)
}

/// Builds and imports an image named `name` from `rootfs` into `ctd`.
pub fn import_rootfs(ctd: &Containerd, rootfs: &Path, name: &str) -> Result<()> {
    let work = tempfile::tempdir()?;
    let archive = pack(rootfs, name, work.path())?;
    let path = archive.display().to_string();
    ctd.ctr_ok(&["images", "import", &path])?;
    Ok(())
}

/// Imports the busybox test image ([`IMAGE`]).
pub fn import(ctd: &Containerd) -> Result<()> {
    let work = tempfile::tempdir()?;
    let root = work.path().join("rootfs");
    busybox_rootfs(&root)?;
    import_rootfs(ctd, &root, IMAGE)
}
