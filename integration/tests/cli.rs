//! `nvidia-shim` against fake driver hosts and real containerd configs (1.6 here for version 2,
//! Debian's 2.x extracted by `just setup` for version 3).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{ensure, Result};
use gpu_core::fixture::{FakeHost, Layout, VERSION};
use integration::{bin_dir, stderr, stdout};

fn cli(args: &[&str]) -> Result<Output> {
    Ok(Command::new(bin_dir().join("nvidia-shim"))
        .args(args)
        .output()?)
}

fn fake(gpus: usize) -> Result<(tempfile::TempDir, FakeHost, String)> {
    let dir = tempfile::tempdir()?;
    let host = FakeHost::build(dir.path(), Layout::Standard, gpus)?;
    let cfg = host.write_config()?;
    Ok((dir, host, cfg))
}

/// Runs `cdi generate --output <dir>/cdi/<file>` and loads the result with our strict loader.
fn generate_cdi(dir: &Path, cfg: &str, file: &str) -> Result<gpu_core::cdi::Registry> {
    let cdi = dir.join("cdi");
    std::fs::create_dir_all(&cdi)?;
    let path = cdi.join(file).display().to_string();
    let out = cli(&["--config", cfg, "cdi", "generate", "--output", &path])?;
    ensure!(out.status.success(), "{out:?}");
    let reg = gpu_core::cdi::Registry::load(std::slice::from_ref(&cdi));
    ensure!(reg.errors().is_empty(), "{:?}", reg.errors());
    Ok(reg)
}

#[test]
fn info_and_list_on_a_fake_host() -> Result<()> {
    let (_d, host, cfg) = fake(2)?;
    let out = cli(&["--config", &cfg, "info"])?;
    let text = stdout(&out);
    ensure!(out.status.success(), "{out:?}");
    ensure!(
        text.contains(&format!("Driver version: {VERSION}")),
        "{text}"
    );
    ensure!(
        text.contains(&host.uuids[1]) && text.contains("0000:11:00.0"),
        "{text}"
    );

    let out = cli(&["--config", &cfg, "info", "--json"])?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    ensure!(v["gpus"].as_array().map(Vec::len) == Some(2), "{v}");
    ensure!(v["driver_version"] == VERSION);

    let out = cli(&[
        "--config",
        &cfg,
        "list",
        "--env",
        "NVIDIA_VISIBLE_DEVICES=1",
    ])?;
    let text = stdout(&out);
    ensure!(
        text.contains("/dev/nvidia1 (c 195:1") && !text.contains("/dev/nvidia0 "),
        "{text}"
    );
    ensure!(
        text.contains(&format!(
            "libcuda.so.1 => /usr/lib/x86_64-linux-gnu/libcuda.so.{VERSION}"
        )),
        "{text}"
    );

    let out = cli(&[
        "--config",
        &cfg,
        "list",
        "--env",
        "NVIDIA_VISIBLE_DEVICES=9",
        "--json",
    ])?;
    ensure!(
        out.status.code() == Some(1),
        "operation failure exits 1: {out:?}"
    );
    ensure!(stderr(&out).contains("unknown device \"9\""), "{out:?}");
    let out = cli(&["--config", &cfg, "list", "--bogus"])?;
    ensure!(out.status.code() == Some(2), "bad usage exits 2: {out:?}");
    // --rootfs: the layout of a real image root, as the shim reads it (a /usr/lib64 one here).
    let image = tempfile::tempdir()?;
    std::fs::create_dir_all(image.path().join("usr/lib64"))?;
    std::fs::write(image.path().join("usr/lib64/libc.so.6"), b"")?;
    let rootfs = image.path().display().to_string();
    let out = cli(&["--config", &cfg, "list", "--rootfs", &rootfs, "--json"])?;
    let v: serde_json::Value = serde_json::from_str(&stdout(&out))?;
    ensure!(
        v["links"]
            .as_array()
            .is_some_and(|l| l.iter().any(|x| x["path"] == "/usr/lib64/libcuda.so.1")),
        "list --rootfs did not follow the image's layout: {v}"
    );
    let out = cli(&["--config", "/nonexistent/shim.toml", "info"])?;
    ensure!(
        out.status.code() == Some(1) && stderr(&out).contains("/nonexistent/shim.toml"),
        "{out:?}"
    );
    Ok(())
}

#[test]
fn cdi_generate_is_valid_and_hookless() -> Result<()> {
    let (d, host, cfg) = fake(2)?;
    // Our own strict CDI loader accepts it and resolves every naming form.
    let reg = generate_cdi(d.path(), &cfg, "nvidia.yaml")?;
    let text = std::fs::read_to_string(d.path().join("cdi/nvidia.yaml"))?;
    ensure!(!text.contains("hook"), "no hooks: {text}");
    let names = reg.names();
    for n in ["nvidia.com/gpu=0", "nvidia.com/gpu=1", "nvidia.com/gpu=all"] {
        ensure!(names.contains(&n.to_string()), "{n} missing from {names:?}");
    }
    ensure!(
        names.contains(&format!("nvidia.com/gpu={}", host.uuids[1])),
        "{names:?}"
    );
    let out = cli(&["--config", &cfg, "cdi", "generate", "--format", "json"])?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    ensure!(
        v["kind"] == "nvidia.com/gpu" && v["cdiVersion"] == "0.5.0",
        "{v}"
    );
    Ok(())
}

fn config_dump(containerd: &Path, config: &Path) -> Result<String> {
    let out = Command::new(containerd)
        .args(["--config"])
        .arg(config)
        .args(["config", "dump"])
        .output()?;
    ensure!(
        out.status.success(),
        "{} rejected the config: {}",
        containerd.display(),
        stderr(&out)
    );
    // 2.x prints strings in single quotes.
    Ok(stdout(&out).replace('\'', "\""))
}

fn configure_roundtrip(containerd: &Path, sample: &str, runtimes_key: &str) -> Result<()> {
    let d = tempfile::tempdir()?;
    let path = d.path().join("config.toml");
    std::fs::write(&path, sample)?;
    let p = path.display().to_string();
    let out = cli(&["containerd", "configure", "--config", &p, "--set-default"])?;
    ensure!(out.status.success(), "{out:?}");
    let text = std::fs::read_to_string(&path)?;
    ensure!(text.starts_with("# site config"), "comments kept: {text}");
    ensure!(
        path.with_extension("toml.nvidia-shim.bak").exists(),
        "backup kept"
    );
    let dump = config_dump(containerd, &path)?;
    ensure!(dump.contains(&format!("[{runtimes_key}.nvidia]")), "{dump}");
    ensure!(
        dump.contains("runtime_type = \"io.containerd.nvidia.v2\""),
        "{dump}"
    );
    ensure!(dump.contains("default_runtime_name = \"nvidia\""), "{dump}");
    ensure!(
        dump.contains("ConfigPath = \"/etc/nvidia-shim/config.toml\""),
        "{dump}"
    );
    let again = cli(&["containerd", "configure", "--config", &p, "--set-default"])?;
    ensure!(
        stdout(&again).contains("nothing written"),
        "idempotent: {again:?}"
    );
    let out = cli(&["containerd", "unconfigure", "--config", &p])?;
    ensure!(out.status.success(), "{out:?}");
    let dump = config_dump(containerd, &path)?;
    ensure!(!dump.contains("io.containerd.nvidia.v2"), "{dump}");
    ensure!(dump.contains(&format!("[{runtimes_key}.runc]")), "{dump}");
    Ok(())
}

#[test]
fn containerd_configure_version_2_accepted_by_containerd_1_6() -> Result<()> {
    configure_roundtrip(
        Path::new("containerd"),
        "# site config\nversion = 2\n\n[plugins.\"io.containerd.grpc.v1.cri\"]\n  sandbox_image = \"registry.k8s.io/pause:3.6\" # pinned\n",
        "plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes",
    )
}

#[test]
fn containerd_configure_version_3_accepted_by_containerd_2() -> Result<()> {
    let c2 =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.cache/containerd2/usr/bin/containerd");
    ensure!(c2.exists(), "{} missing: run `just setup`", c2.display());
    configure_roundtrip(
        &c2,
        "# site config\nversion = 3\n\n[plugins.\"io.containerd.cri.v1.images\".pinned_images]\n  sandbox = \"registry.k8s.io/pause:3.10\"\n",
        "plugins.\"io.containerd.cri.v1.runtime\".containerd.runtimes",
    )
}

#[test]
fn doctor_reports_and_fixes_dev_char_links() -> Result<()> {
    let (_d, host, cfg) = fake(1)?;
    let out = cli(&[
        "--config",
        &cfg,
        "doctor",
        "--json",
        "--containerd-config",
        "/nonexistent",
    ])?;
    ensure!(out.status.code() == Some(1), "problems → exit 1: {out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let check = |name: &str| {
        v["checks"]
            .as_array()
            .and_then(|a| a.iter().find(|c| c["check"] == name).cloned())
            .unwrap_or_default()
    };
    ensure!(check("driver")["ok"] == true, "{v}");
    ensure!(check("containerd config")["ok"] == false, "{v}");
    // SAFETY: plain getter.
    if unsafe { libc::geteuid() } == 0 {
        ensure!(check("/dev/char links")["ok"] == false, "{v}");
        let out = cli(&[
            "--config",
            &cfg,
            "doctor",
            "--fix",
            "--containerd-config",
            "/nonexistent",
        ])?;
        ensure!(stdout(&out).contains("[ ok ] /dev/char links"), "{out:?}");
        let link = host.dev_root.join("dev/char/195:0");
        ensure!(
            std::fs::read_link(&link)?.to_string_lossy() == "../nvidia0",
            "{link:?}"
        );
    }
    Ok(())
}

#[test]
fn info_and_cdi_on_a_mig_host_through_the_fake_nvml() -> Result<()> {
    let d = tempfile::tempdir()?;
    let host = FakeHost::build_with_nvml(d.path(), Layout::Gke, 2, true)?;
    let cfg = host.write_config()?;
    let out = cli(&["--config", &cfg, "info"])?;
    let text = stdout(&out);
    ensure!(
        text.contains("from NVML") && text.contains("MIG on"),
        "{text}"
    );
    ensure!(
        text.contains(&gpu_core::fixture::mig_uuid(0, 1)) && text.contains("(gi 2, ci 0)"),
        "{text}"
    );
    let reg = generate_cdi(d.path(), &cfg, "nvidia.json")?;
    for n in [
        "nvidia.com/gpu=0:1".to_string(),
        format!("nvidia.com/gpu={}", gpu_core::fixture::mig_uuid(0, 0)),
    ] {
        ensure!(reg.names().contains(&n), "{n} missing: {:?}", reg.names());
    }
    Ok(())
}
