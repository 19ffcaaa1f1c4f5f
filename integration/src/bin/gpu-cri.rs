//! The GPU host's CRI check, run by `scripts/gpu-acceptance.sh`: a private containerd with CRI on
//! (the `nvidia` handler from `deploy/`), a pod through RunPodSandbox, then one container asking
//! by the device plugin's env route and one by its CDI route, each running nvidia-smi and a CUDA
//! kernel through ExecSync. Prints what it saw and `CRI PASS` or `CRI FAIL: …`.
//!
//! Usage: gpu-cri SHIM_CONFIG CDI_DIR IMAGE_TAR IMAGE_NAME
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

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, shim_config, cdi_dir, tar, image] = args.as_slice() else {
        eprintln!("usage: gpu-cri SHIM_CONFIG CDI_DIR IMAGE_TAR IMAGE_NAME");
        std::process::exit(2);
    };
    match check(shim_config, Path::new(cdi_dir), tar, image) {
        Ok(()) => println!("CRI PASS"),
        Err(e) => {
            println!("CRI FAIL: {e:#}");
            std::process::exit(1);
        }
    }
}
