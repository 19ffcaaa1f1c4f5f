//! The GPU host's CRI check, run by `scripts/gpu-acceptance.sh`: a private containerd with CRI on
//! (the `nvidia` handler from `deploy/`), a pod through RunPodSandbox, then one container asking
//! by the device plugin's env route and one by its CDI route, each running nvidia-smi and a CUDA
//! kernel through ExecSync. Prints what it saw and `CRI PASS` or `CRI FAIL: …`.
//!
//! With NVIDIA_SPEC (an `nvidia-ctk cdi generate` spec, hooks included) and containerd 2.x in
//! `NVIDIA_SHIM_CONTAINERD2_DIR`, a second check: containerd applies that spec itself for the CRI
//! `CDIDevices` field, and a container asking for `nvidia.com/gpu=0` runs nvidia-smi and a CUDA
//! kernel through our shim on a host without `nvidia-cdi-hook`. Prints `HOOKLESS PASS` or
//! `HOOKLESS FAIL: …`.
//!
//! Usage: gpu-cri SHIM_CONFIG CDI_DIR IMAGE_TAR IMAGE_NAME [NVIDIA_SPEC]
//! (our binaries from `NVIDIA_SHIM_BIN_DIR`; `NVIDIA_SHIM_BUSYBOX`, `NVIDIA_SHIM_PAUSE` where the
//! host has no busybox or static libc).

use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use integration::cri::{Cri, HANDLER};
use integration::{wait_pid_gone, Version};

fn check(shim_config: &str, cdi_dir: &Path, tar: &str, image: &str) -> Result<()> {
    let mut cri = Cri::start(Version::V1_6, shim_config, cdi_dir)?;
    cri.c.ctr_ok(&["images", "import", tar])?;
    let pod_config = cri.pod_config("gpu-pod");
    let pod = cri.run_pod(&pod_config, HANDLER)?;
    let sandbox = cri.spec_of(&pod)?;
    let sandbox_devices = sandbox["linux"]["devices"].to_string();
    ensure!(
        !sandbox_devices.contains("/dev/nvidia"),
        "the pod sandbox got GPU devices: {sandbox_devices}"
    );
    println!("sandbox: no GPU devices");
    let routes = [
        (
            "env",
            Cri::container(
                "env",
                image,
                "sleep 1000",
                &[("NVIDIA_VISIBLE_DEVICES", "all")],
                &[],
            ),
        ),
        (
            "cdi",
            Cri::container(
                "cdi",
                image,
                "sleep 1000",
                &[],
                &[("cdi.k8s.io/gpu", "nvidia.com/gpu=all")],
            ),
        ),
    ];
    for (route, config) in routes {
        let id = cri.start_container(&pod, &pod_config, config)?;
        let (code, out, err) = cri.exec(&id, "nvidia-smi -L; cudacheck")?;
        println!("{route}: exit {code}: {}", out.trim().replace('\n', " / "));
        ensure!(
            code == 0 && out.contains("GPU 0:") && out.contains("CUDA PASS"),
            "{route}: exit {code}: {out} {err}"
        );
    }
    let shims = cri.c.shim_pids();
    cri.remove_pod(&pod)?;
    for s in shims {
        wait_pid_gone(s, Duration::from_secs(30)).context("the pod's shim exits with the pod")?;
    }
    cri.c.assert_clean()
}

/// NVIDIA's own spec, applied by containerd 2.x, hooks and all, on a host without their program.
fn hookless(shim_config: &str, spec: &Path, tar: &str, image: &str) -> Result<()> {
    let hook_programs: Vec<String> = std::fs::read_to_string(spec)?
        .lines()
        .filter_map(|l| l.trim().strip_prefix("path: "))
        .filter(|p| p.ends_with("nvidia-cdi-hook"))
        .map(str::to_string)
        .collect();
    ensure!(!hook_programs.is_empty(), "{} has no hooks", spec.display());
    for p in &hook_programs {
        ensure!(!Path::new(p).exists(), "{p} exists on this host");
    }
    println!(
        "spec {} with {} hooks; {} absent from the host",
        spec.display(),
        hook_programs.len(),
        hook_programs[0]
    );
    let cdi = tempfile::tempdir()?;
    std::fs::copy(spec, cdi.path().join("nvidia.yaml"))?;
    let mut cri = Cri::start(Version::V2, shim_config, cdi.path())?;
    cri.c.ctr_ok(&["images", "import", tar])?;
    let pod_config = cri.pod_config("cdi-pod");
    let pod = cri.run_pod(&pod_config, HANDLER)?;
    let mut config = Cri::container("hookless", image, "sleep 1000", &[], &[]);
    config.cdi_devices.push(k8s_cri::v1::CdiDevice {
        name: "nvidia.com/gpu=0".into(),
    });
    let id = cri.start_container(&pod, &pod_config, config)?;
    let (code, out, err) = cri.exec(
        &id,
        "nvidia-smi -L; cudacheck; ls -l /lib64/libcuda.so.1 /lib64/libcuda.so; \
         ldconfig -p | grep 'libcuda.so.1 '",
    )?;
    println!("hookless: exit {code}: {}", out.trim().replace('\n', " / "));
    let spec = cri.spec_of(&id)?;
    ensure!(
        code == 0 && out.contains("GPU 0:") && out.contains("CUDA PASS") && spec["hooks"].is_null(),
        "hookless: exit {code}: {out} {err}; hooks left: {}",
        spec["hooks"]
    );
    let shims = cri.c.shim_pids();
    cri.remove_pod(&pod)?;
    for s in shims {
        wait_pid_gone(s, Duration::from_secs(30)).context("the pod's shim exits with the pod")?;
    }
    cri.c.assert_clean()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (shim_config, cdi_dir, tar, image, nvidia_spec) = match args.as_slice() {
        [_, c, d, t, i] => (c, d, t, i, None),
        [_, c, d, t, i, s] => (c, d, t, i, Some(s)),
        _ => {
            eprintln!("usage: gpu-cri SHIM_CONFIG CDI_DIR IMAGE_TAR IMAGE_NAME [NVIDIA_SPEC]");
            std::process::exit(2);
        }
    };
    let mut failed = false;
    match check(shim_config, Path::new(cdi_dir), tar, image) {
        Ok(()) => println!("CRI PASS"),
        Err(e) => {
            println!("CRI FAIL: {e:#}");
            failed = true;
        }
    }
    if let Some(spec) = nvidia_spec {
        match hookless(shim_config, Path::new(spec), tar, image) {
            Ok(()) => println!("HOOKLESS PASS"),
            Err(e) => {
                println!("HOOKLESS FAIL: {e:#}");
                failed = true;
            }
        }
    }
    if failed {
        std::process::exit(1);
    }
}
