//! `just demo`: a private containerd runs containers through containerd-shim-nvidia-v2 and the
//! demo prints what happened at each step.

use std::time::Duration;

use anyhow::{ensure, Result};
use gpu_core::fixture::{FakeHost, Layout};
use integration::{stdout, Containerd};

fn step(title: &str) {
    println!("\n== {title}");
}

fn rss_kib(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .map(|l| l.trim_start_matches("VmRSS:").trim().to_string())
        .unwrap_or_else(|| "?".into())
}

fn main() -> Result<()> {
    step("starting a private containerd (CRI off) with the shim on its PATH");
    let mut c = Containerd::start()?;
    println!("containerd at {}", c.address().display());
    println!("busybox test image imported as {}", integration::IMAGE);

    step("ctr run --rm --runtime io.containerd.nvidia.v2 … sh -c 'echo …; exit 3'");
    let out = c.run(
        &["--rm"],
        "demo-once",
        &[
            "sh",
            "-c",
            "echo hello from $(hostname) running $(uname -r); exit 3",
        ],
    )?;
    print!("{}", stdout(&out));
    println!("exit code: {:?}", out.status.code());
    ensure!(out.status.code() == Some(3));

    step("a detached container, then an exec into it");
    let events = c.events()?;
    ensure!(c
        .run(&["-d"], "demo-svc", &["sleep", "1000"])?
        .status
        .success());
    let shims = c.shim_pids();
    for pid in &shims {
        println!("shim process {pid}: RSS {}", rss_kib(*pid));
    }
    print!(
        "{}",
        c.ctr_ok(&[
            "task",
            "exec",
            "--exec-id",
            "look",
            "demo-svc",
            "ps",
            "-o",
            "pid,comm"
        ])?
    );
    print!("{}", c.ctr_ok(&["task", "ls"])?);

    step("kill, delete, and the events containerd received from the shim");
    c.ctr_ok(&["task", "kill", "-s", "SIGKILL", "demo-svc"])?;
    events.wait_for(
        &["/tasks/exit", "\"id\":\"demo-svc\""],
        Duration::from_secs(20),
    )?;
    c.ctr_ok(&["task", "delete", "demo-svc"])?;
    c.ctr_ok(&["containers", "rm", "demo-svc"])?;
    events.wait_for(&["/containers/delete", "demo-svc"], Duration::from_secs(20))?;
    for line in events.history() {
        println!("{line}");
    }

    gpu_demo(&mut c)?;

    step("nothing left behind");
    c.assert_clean()?;
    println!("no shim process, no shim socket, no runc state, no mount");
    Ok(())
}

fn show(out: &std::process::Output) {
    print!("{}", stdout(out));
    let err = String::from_utf8_lossy(&out.stderr);
    if !err.trim().is_empty() {
        println!("stderr: {}", err.trim());
    }
}

/// A GPU container: on the real driver when this machine has one, else on a simulated host.
fn gpu_demo(c: &mut Containerd) -> Result<()> {
    integration::image::import_glibc(c)?;
    let img = integration::image::GLIBC_IMAGE;
    let real = std::path::Path::new("/proc/driver/nvidia/version").exists();
    let _host_dir;
    let config = if real {
        step("GPU container on this machine's real NVIDIA driver");
        None
    } else {
        step("GPU container on a SIMULATED driver host (this machine has no NVIDIA GPU)");
        _host_dir = tempfile::Builder::new()
            .prefix("nvdemo-")
            .tempdir_in("/tmp")?;
        let host = FakeHost::build(_host_dir.path(), Layout::Gke, 2)?;
        println!(
            "fake driver {} in GKE layout at {} (tiny ELF libraries with the real sonames, fake procfs, 2 GPUs)",
            gpu_core::fixture::VERSION,
            host.root.display()
        );
        Some(host.write_config()?)
    };
    let mut opts: Vec<String> = vec!["--rm".into()];
    if let Some(cfg) = &config {
        opts.extend(["--runtime-config-path".into(), cfg.clone()]);
    }
    let with = |extra: &[&str]| -> Vec<String> {
        let mut o = opts.clone();
        o.extend(extra.iter().map(|s| s.to_string()));
        o
    };
    let args = with(&["--env", "NVIDIA_VISIBLE_DEVICES=1"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    println!("$ ctr run --runtime io.containerd.nvidia.v2 --env NVIDIA_VISIBLE_DEVICES=1 … (image with a stale libcuda stub in its ld.so.cache)");
    let out = c.run_image(
        img,
        &args,
        "demo-gpu",
        &[
            "sh",
            "-c",
            "ls -l /dev/nvidia*; nvidia-smi -L 2>/dev/null || nvidia-smi; ldconfig -p | grep -E 'libcuda|libnvidia-ml'; dlcheck libcuda.so.1",
        ],
    )?;
    show(&out);

    let args = with(&[]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    println!("\n$ the same container without a request");
    show(&c.run_image(
        img,
        &args,
        "demo-plain",
        &["sh", "-c", "ls /dev/nvidia* 2>&1; dlcheck libcuda.so.1"],
    )?);

    let args = with(&["--env", "NVIDIA_VISIBLE_DEVICES=7"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    println!("\n$ a request this host cannot meet: NVIDIA_VISIBLE_DEVICES=7");
    show(&c.run_image(img, &args, "demo-bad", &["true"])?);
    let _ = c.ctr(&["containers", "rm", "demo-bad"]);
    Ok(())
}
