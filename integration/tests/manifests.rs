//! The Kubernetes manifests, checked offline (no cluster exists here): each object against the
//! Kubernetes 1.31 OpenAPI schemas with unknown fields refused (PyPI's kubernetes-validate, its
//! schemas packaged, installed by `just setup`); the kustomization lists every object; the
//! DaemonSet runs the image `just image` builds with flags `nvidia-shim install` accepts, and
//! mounts writable exactly the host paths install writes.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{ensure, Context, Result};
use integration::{bin_dir, installer, stderr, stdout};
use serde_yaml_ng::Value;

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn validate(file: &Path) -> Result<std::process::Output> {
    let tool =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../.cache/pytools/bin/kubernetes-validate");
    ensure!(
        tool.exists(),
        "{} is missing: run `just setup`",
        tool.display()
    );
    Ok(Command::new(tool)
        .args(["--strict", "-k", "1.31.0"])
        .arg(file)
        .output()?)
}

fn load(p: &Path) -> Result<Value> {
    serde_yaml_ng::from_str(&std::fs::read_to_string(p)?).with_context(|| p.display().to_string())
}

#[test]
fn every_object_validates_strictly_and_a_typo_is_caught() -> Result<()> {
    let dir = deploy().join("kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.retain(|f| f.file_name().is_some_and(|n| n != "kustomization.yaml"));
    files.push(deploy().join("runtimeclass-crun.yaml"));
    for f in &files {
        let out = validate(f)?;
        ensure!(
            out.status.success(),
            "{}: {}{}",
            f.display(),
            stdout(&out),
            stderr(&out)
        );
    }
    let bad = tempfile::Builder::new().suffix(".yaml").tempfile()?;
    let text = std::fs::read_to_string(dir.join("daemonset.yaml"))?.replace("hostPID", "hostPid");
    std::fs::write(bad.path(), text)?;
    let out = validate(bad.path())?;
    ensure!(
        !out.status.success() && stdout(&out).contains("hostPid"),
        "the validator missed a typo: {out:?}"
    );
    Ok(())
}

#[test]
fn kustomization_lists_every_object() -> Result<()> {
    let dir = deploy().join("kubernetes");
    let k = load(&dir.join("kustomization.yaml"))?;
    let listed: BTreeSet<String> = k["resources"]
        .as_sequence()
        .context("resources")?
        .iter()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    let present: BTreeSet<String> = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    ensure!(
        listed == present,
        "kustomization lists {listed:?}, the directory holds {present:?}"
    );
    Ok(())
}

#[test]
fn daemonset_runs_the_installer_with_flags_it_accepts() -> Result<()> {
    let ds = load(&deploy().join("kubernetes/daemonset.yaml"))?;
    let pod = &ds["spec"]["template"]["spec"];
    ensure!(
        pod["hostPID"].as_bool() == Some(true),
        "the signal restart needs hostPID"
    );
    let c = &pod["containers"][0];
    ensure!(
        c["image"].as_str() == Some(installer::IMAGE),
        "image {:?} is not {}",
        c["image"],
        installer::IMAGE
    );
    let words: Vec<&str> = c["command"]
        .as_sequence()
        .into_iter()
        .chain(c["args"].as_sequence())
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    ensure!(words.get(1) == Some(&"install"), "{words:?}");
    let help = Command::new(bin_dir().join("nvidia-shim"))
        .args(["install", "--help"])
        .output()?;
    let help = stdout(&help);
    for flag in words.iter().filter(|w| w.starts_with("--")) {
        let known = help
            .lines()
            .any(|l| l.trim_start().split([' ', ',']).any(|w| w == *flag));
        ensure!(known, "install has no flag {flag}:\n{help}");
    }
    ensure!(
        words.contains(&"--wait"),
        "the container must keep running after install"
    );
    // Writable mounts: exactly the host paths install writes (all under /host).
    let rw: BTreeSet<&str> = c["volumeMounts"]
        .as_sequence()
        .context("volumeMounts")?
        .iter()
        .filter(|m| m["readOnly"].as_bool() != Some(true))
        .filter_map(|m| m["mountPath"].as_str())
        .filter(|p| p.starts_with("/host"))
        .collect();
    let want: BTreeSet<&str> = [
        "/host/etc/containerd",
        "/host/etc/nvidia-shim",
        "/host/etc/cdi",
        "/host/usr/local/nvidia-shim",
        "/host/run/containerd",
    ]
    .into();
    ensure!(rw == want, "writable host mounts {rw:?}, want {want:?}");
    let requests = &c["resources"]["requests"];
    ensure!(
        requests["cpu"].is_string() && requests["memory"].is_string(),
        "resource requests"
    );
    ensure!(
        pod["nodeSelector"]["nvidia.com/gpu.present"].as_str() == Some("true"),
        "GPU node selector"
    );
    Ok(())
}
