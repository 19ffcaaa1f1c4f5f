//! `just demo`: a private containerd runs containers through containerd-shim-nvidia-v2 and the
//! demo prints what happened at each step.

use std::time::Duration;

use anyhow::{ensure, Result};
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

    step("nothing left behind");
    c.assert_clean()?;
    println!("no shim process, no shim socket, no runc state, no mount");
    Ok(())
}
