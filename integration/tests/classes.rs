//! Device classes beyond GPUs under a real containerd and runc, on a fake host that has IMEX
//! channels 0–2, uverbs0 and rdma_cm, nvidia-fs0/1, the NVSwitch nodes, gdrdrv and DRM nodes for
//! two GPUs: each variable gives exactly its nodes in the container (which it can open), channel 7
//! is refused naming the host's channels, DRM nodes follow the selected GPU, a container without
//! a GPU request gets none of it; `nvidia-shim list` and `cdi generate` show the classes.

use anyhow::{ensure, Context, Result};
use gpu_core::fixture::{FakeHost, Layout};
use integration::image::{import_glibc, GLIBC_IMAGE};
use integration::{bin_dir, stderr, stdout, Containerd};

/// Every class node the container has, sorted, one line; then each node the device cgroup
/// refuses to open (the fake nodes have no driver behind them, so an open that gets past the
/// cgroup fails with ENXIO/ENODEV instead of EPERM).
const LIST: &str = "for f in $(ls -d /dev/nvidia-caps-imex-channels/* /dev/infiniband/* \
    /dev/nvidia-fs* /dev/nvidia-nvswitch* /dev/gdrdrv /dev/dri/* 2>/dev/null | sort); do \
    printf '%s ' $f; done; echo; \
    for f in $(ls -d /dev/nvidia-caps-imex-channels/* /dev/infiniband/* /dev/nvidia-fs* \
    /dev/nvidia-nvswitch* /dev/gdrdrv /dev/dri/* 2>/dev/null); do \
    { true < $f; } 2>&1 | grep -q 'not permitted' && echo denied $f; done; echo end";

#[test]
fn device_classes_reach_exactly_the_containers_that_ask() -> Result<()> {
    let mut c = Containerd::start()?;
    import_glibc(&c)?;
    let dir = tempfile::Builder::new()
        .prefix("nvclass-")
        .tempdir_in("/tmp")?;
    let host = FakeHost::build(dir.path(), Layout::Gke, 2)?;
    host.add_device_classes()?;
    let config = host.write_config()?;
    let mut run = |id: &str, env: &[&str]| {
        let mut opts = vec!["--rm", "--runtime-config-path", &config];
        for e in env {
            opts.extend(["--env", e]);
        }
        c.run_image(GLIBC_IMAGE, &opts, id, &["sh", "-c", LIST])
    };
    for (id, env, want) in [
        (
            "imex-mofed",
            vec![
                "NVIDIA_VISIBLE_DEVICES=1",
                "NVIDIA_IMEX_CHANNELS=0,2",
                "NVIDIA_MOFED=enabled",
            ],
            "/dev/infiniband/rdma_cm /dev/infiniband/uverbs0 \
             /dev/nvidia-caps-imex-channels/channel0 /dev/nvidia-caps-imex-channels/channel2 ",
        ),
        (
            "gds-switch-gdr",
            vec![
                "NVIDIA_VISIBLE_DEVICES=0",
                "NVIDIA_GDS=enabled",
                "NVIDIA_NVSWITCH=enabled",
                "NVIDIA_GDRCOPY=enabled",
            ],
            "/dev/gdrdrv /dev/nvidia-fs0 /dev/nvidia-fs1 /dev/nvidia-nvswitch0 \
             /dev/nvidia-nvswitchctl ",
        ),
        (
            "drm-gpu1",
            vec![
                "NVIDIA_VISIBLE_DEVICES=1",
                "NVIDIA_DRIVER_CAPABILITIES=graphics,utility",
            ],
            "/dev/dri/card0 /dev/dri/renderD128 ",
        ),
        (
            "no-gpu",
            vec!["NVIDIA_IMEX_CHANNELS=all", "NVIDIA_MOFED=enabled"],
            "",
        ),
    ] {
        let out = run(id, &env)?;
        let text = stdout(&out);
        let first = text.lines().next().unwrap_or_default();
        let want = want.split_whitespace().collect::<Vec<_>>().join(" ");
        ensure!(
            out.status.success() && first.trim() == want,
            "{id}: wanted [{want}], got [{first}]: {out:?}"
        );
        ensure!(
            !text.contains("denied"),
            "{id}: the device cgroup refused a node: {text}"
        );
    }
    let out = run(
        "imex-7",
        &["NVIDIA_VISIBLE_DEVICES=0", "NVIDIA_IMEX_CHANNELS=7"],
    )?;
    ensure!(
        !out.status.success()
            && stderr(&out).contains("IMEX channel 7 is not on this host (it has: 0, 1, 2)"),
        "{out:?}"
    );
    let _ = c.ctr(&["containers", "rm", "imex-7"]);

    let cli = |args: &[&str]| -> Result<String> {
        let out = std::process::Command::new(bin_dir().join("nvidia-shim"))
            .args(["--config", &config])
            .args(args)
            .output()?;
        ensure!(out.status.success(), "nvidia-shim {args:?}: {out:?}");
        Ok(stdout(&out))
    };
    let list = cli(&[
        "list",
        "--env",
        "NVIDIA_VISIBLE_DEVICES=0",
        "--env",
        "NVIDIA_IMEX_CHANNELS=1",
        "--env",
        "NVIDIA_GDS=enabled",
    ])?;
    ensure!(
        list.contains("/dev/nvidia-caps-imex-channels/channel1")
            && list.contains("/dev/nvidia-fs1"),
        "list: {list}"
    );
    let out = dir.path().join("spec/nvidia.yaml");
    std::fs::create_dir_all(out.parent().context("dir")?)?;
    cli(&["cdi", "generate", "--output", &out.display().to_string()])?;
    for (file, kind, device) in [
        (
            "nvidia-imex-channel.yaml",
            "nvidia.com/imex-channel",
            "name: '2'",
        ),
        (
            "nvidia-mofed.yaml",
            "nvidia.com/mofed",
            "/dev/infiniband/uverbs0",
        ),
        ("nvidia-gds.yaml", "nvidia.com/gds", "/dev/nvidia-fs1"),
        (
            "nvidia-nvswitch.yaml",
            "nvidia.com/nvswitch",
            "/dev/nvidia-nvswitchctl",
        ),
        ("nvidia-gdrcopy.yaml", "nvidia.com/gdrcopy", "/dev/gdrdrv"),
    ] {
        let text =
            std::fs::read_to_string(out.with_file_name(file)).with_context(|| file.to_string())?;
        ensure!(
            text.contains(&format!("kind: {kind}")) && text.contains(device),
            "{file}: {text}"
        );
    }
    let gpus = std::fs::read_to_string(&out)?;
    ensure!(
        gpus.contains("/dev/dri/renderD129"),
        "GPU spec without DRM: {gpus}"
    );
    c.assert_clean()
}
