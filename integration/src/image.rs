//! Test images built locally (no registry is reachable): a busybox rootfs packed as an OCI image
//! layout tar and imported with `ctr images import`.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::json;

use crate::{Containerd, IMAGE};

/// Where Debian's busybox-static installs its binary (`NVIDIA_SHIM_BUSYBOX` overrides it, for
/// hosts that carry one in a bundle).
fn busybox() -> PathBuf {
    std::env::var_os("NVIDIA_SHIM_BUSYBOX")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/bin/busybox"))
}

/// Fills `root` with a busybox userland: `/bin/busybox`, one link per applet, and the usual dirs.
pub fn busybox_rootfs(root: &Path) -> Result<()> {
    for d in ["bin", "etc", "tmp", "proc", "sys", "dev", "run", "root"] {
        fs::create_dir_all(root.join(d))?;
    }
    let bb = busybox();
    fs::copy(&bb, root.join("bin/busybox"))
        .with_context(|| format!("copying {} (install busybox-static)", bb.display()))?;
    let list = Command::new(&bb).arg("--list").output()?;
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
    pack_with_env(rootfs, name, work, &[])
}

/// Like [`pack`], with `env` (`K=V`) added to the image config's environment.
pub fn pack_with_env(rootfs: &Path, name: &str, work: &Path, env: &[String]) -> Result<PathBuf> {
    pack_image(rootfs, name, work, env, &["sh"])
}

/// GNU tar options that make an archive depend only on the files' names, content and modes.
const REPRODUCIBLE: &[&str] = &[
    "--sort=name",
    "--mtime=@0",
    "--owner=0",
    "--group=0",
    "--numeric-owner",
    "--format=gnu",
];

/// Packs `rootfs` as image `name` whose config has `env` added and `cmd` as its command.
pub fn pack_image(
    rootfs: &Path,
    name: &str,
    work: &Path,
    env: &[String],
    cmd: &[&str],
) -> Result<PathBuf> {
    let layout = work.join("layout");
    fs::create_dir_all(layout.join("blobs/sha256"))?;
    let layer = work.join("layer.tar");
    let st = Command::new("tar")
        .args(REPRODUCIBLE)
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
    let mut image_env =
        vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string()];
    image_env.extend(env.iter().cloned());
    let config = json!({
        "architecture": oci_arch(),
        "os": "linux",
        "config": {"Env": image_env, "Cmd": cmd},
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
        .args(REPRODUCIBLE)
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

/// Reference of the glibc test image (busybox + the host's glibc + `dlcheck` + `ldconfig`, and a
/// loader cache that maps `libcuda.so.1` to a stale stub).
pub const GLIBC_IMAGE: &str = "docker.io/library/glibc-stub:nvidia-shim-test";

const DLCHECK_C: &str = r#"
#include <dlfcn.h>
#include <stdio.h>
int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        void *h = dlopen(argv[i], RTLD_NOW);
        if (!h) { printf("dlopen %s failed: %s\n", argv[i], dlerror()); return 1; }
        const char *(*id)(void) = (const char *(*)(void))dlsym(h, "fake_driver_id");
        printf("%s -> %s\n", argv[i], id ? id() : "(no fake_driver_id)");
    }
    return 0;
}
"#;

fn run_ok(cmd: &mut Command) -> Result<()> {
    let st = cmd.status()?;
    if !st.success() {
        bail!("{cmd:?} failed: {st}");
    }
    Ok(())
}

/// Fills `root` with a Debian-like glibc userland: busybox, the host's libc and loader, `dlcheck`
/// (dlopens its arguments and prints their `fake_driver_id()`), `ldconfig`, and an image loader
/// cache built while a stub dir was configured, so `libcuda.so.1` points at a stale stub.
pub fn glibc_rootfs(root: &Path) -> Result<()> {
    busybox_rootfs(root)?;
    let triple = format!("{}-linux-gnu", std::env::consts::ARCH);
    let libdir = root.join(format!("lib/{triple}"));
    fs::create_dir_all(&libdir)?;
    fs::create_dir_all(root.join("lib64"))?;
    fs::create_dir_all(root.join("usr/bin"))?;
    fs::create_dir_all(root.join("sbin"))?;
    fs::create_dir_all(root.join("usr/local/stubs"))?;
    fs::create_dir_all(root.join(format!("usr/lib/{triple}")))?;
    let host_lib = Path::new("/lib").join(&triple);
    // libc and the loader for dlcheck; libm, libpthread, libdl and librt for a real nvidia-smi.
    for f in [
        "libc.so.6",
        "libm.so.6",
        "libpthread.so.0",
        "libdl.so.2",
        "librt.so.1",
        "ld-linux-x86-64.so.2",
        "ld-linux-aarch64.so.1",
    ] {
        if host_lib.join(f).exists() {
            fs::copy(host_lib.join(f), libdir.join(f))?;
            if f.starts_with("ld-linux") {
                let lib_dir = if f.contains("x86-64") { "lib64" } else { "lib" };
                let link = root.join(lib_dir).join(f);
                if !link.exists() {
                    symlink(format!("/lib/{triple}/{f}"), link)?;
                }
            }
        }
    }
    // Ubuntu's /sbin/ldconfig is a script around ldconfig.real: the image needs the binary.
    let ldconfig = ["/sbin/ldconfig.real", "/sbin/ldconfig"]
        .into_iter()
        .find(|p| Path::new(p).is_file())
        .context("no ldconfig on this host")?;
    fs::copy(ldconfig, root.join("sbin/ldconfig"))?;
    let work = tempfile::tempdir()?;
    let src = work.path().join("dlcheck.c");
    fs::write(&src, DLCHECK_C)?;
    run_ok(
        Command::new("cc")
            .arg("-o")
            .arg(root.join("usr/bin/dlcheck"))
            .arg(&src),
    )?;
    gpu_core::fixture::build_lib(
        &root.join("usr/local/stubs/libcuda.so.1"),
        "libcuda.so.1",
        "stale stub",
    )
    .context("building the stub libcuda")?;
    fs::write(
        root.join("etc/debian_version"),
        "12.0
",
    )?;
    // Build the image's cache with the stub dir configured, then drop it from the config: the
    // cache is stale, as in images built against a CUDA stub.
    fs::write(
        root.join("etc/ld.so.conf"),
        format!(
            "/usr/local/stubs
/lib/{triple}
/usr/lib/{triple}
"
        ),
    )?;
    run_ok(Command::new(ldconfig).arg("-r").arg(root))?;
    fs::write(
        root.join("etc/ld.so.conf"),
        format!(
            "/lib/{triple}
/usr/lib/{triple}
"
        ),
    )?;
    Ok(())
}

/// Copies `bin` into `root`'s /usr/bin (unless `libs_only`) and every library it loads (as
/// `ldd` resolves them on this host) to the same path in `root`, keeping what is there.
pub fn add_binary(root: &Path, bin: &Path, libs_only: bool) -> Result<()> {
    if !libs_only {
        let name = bin.file_name().context("binary name")?;
        fs::copy(bin, root.join("usr/bin").join(name))
            .with_context(|| format!("copying {}", bin.display()))?;
    }
    let out = Command::new("ldd").arg(bin).output()?;
    for lib in String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with('/')))
    {
        let to = root.join(lib.trim_start_matches('/'));
        if to.exists() || fs::symlink_metadata(&to).is_ok() {
            continue;
        }
        if let Some(d) = to.parent() {
            fs::create_dir_all(d)?;
        }
        fs::copy(lib, &to).with_context(|| format!("copying {lib}"))?;
    }
    Ok(())
}

/// Builds the glibc test rootfs, lets `tweak` change it (make it hostile, say), and imports it
/// as `name` with `env` added to the image config.
pub fn import_glibc_variant(
    ctd: &Containerd,
    name: &str,
    env: &[String],
    tweak: impl FnOnce(&Path) -> Result<()>,
) -> Result<()> {
    let work = tempfile::tempdir()?;
    let root = work.path().join("rootfs");
    glibc_rootfs(&root)?;
    tweak(&root)?;
    let archive = pack_with_env(&root, name, work.path(), env)?;
    ctd.ctr_ok(&["images", "import", &archive.display().to_string()])?;
    Ok(())
}

/// Imports the glibc test image ([`GLIBC_IMAGE`]).
pub fn import_glibc(ctd: &Containerd) -> Result<()> {
    let work = tempfile::tempdir()?;
    let root = work.path().join("rootfs");
    glibc_rootfs(&root)?;
    import_rootfs(ctd, &root, GLIBC_IMAGE)
}

/// Imports the busybox test image ([`IMAGE`]).
pub fn import(ctd: &Containerd) -> Result<()> {
    let work = tempfile::tempdir()?;
    let root = work.path().join("rootfs");
    busybox_rootfs(&root)?;
    import_rootfs(ctd, &root, IMAGE)
}

/// Reference of the pod sandbox image built here: a static `/pause` that sleeps until signalled.
pub const PAUSE_IMAGE: &str = "registry.k8s.io/pause:nvidia-shim-test";

const PAUSE_C: &str = r#"
#include <signal.h>
#include <unistd.h>
static void bye(int s) { (void)s; _exit(0); }
int main(void) {
    signal(SIGINT, bye);
    signal(SIGTERM, bye);
    for (;;) pause();
}
"#;

/// Compiles the static pause program to `out`.
pub fn build_pause(out: &Path) -> Result<()> {
    let work = tempfile::tempdir()?;
    let src = work.path().join("pause.c");
    fs::write(&src, PAUSE_C)?;
    run_ok(
        Command::new("cc")
            .args(["-static", "-O2", "-o"])
            .arg(out)
            .arg(&src),
    )
}

/// Builds and imports the pod sandbox image ([`PAUSE_IMAGE`]).
pub fn import_pause(ctd: &Containerd) -> Result<()> {
    let work = tempfile::tempdir()?;
    let root = work.path().join("rootfs");
    fs::create_dir_all(&root)?;
    // A GPU host may have no static libc: it carries a pause built here (NVIDIA_SHIM_PAUSE).
    if let Some(prebuilt) = std::env::var_os("NVIDIA_SHIM_PAUSE") {
        fs::copy(prebuilt, root.join("pause"))?;
    } else {
        build_pause(&root.join("pause"))?;
    }
    let archive = pack_image(&root, PAUSE_IMAGE, work.path(), &[], &["/pause"])?;
    ctd.ctr_ok(&["images", "import", &archive.display().to_string()])?;
    Ok(())
}
