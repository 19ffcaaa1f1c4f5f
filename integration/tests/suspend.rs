//! GPU-aware Pause/Resume on a fake driver host under a real containerd and runc: the host's
//! libcuda is a fake with the checkpoint API that records calls and fails or hangs on demand,
//! the fake NVML lists a container's process on its GPU. Covered: the order of calls, the
//! released memory in `nvidia-shim top`, rollback when a checkpoint fails (the container keeps
//! running), a failed restore (the container stays paused, state intact, a second Resume
//! finishes), the time limit, and plain pauses for a container with no CUDA process and for one
//! that did not opt in.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{ensure, Context, Result};
use gpu_core::fixture::{fake_cuda, gpu_uuid, FakeHost, FakeProcess, Layout};
use integration::image::{import_glibc, GLIBC_IMAGE};
use integration::{bin_dir, stderr, stdout, Containerd};

const GIB: u64 = 1 << 30;

struct Lab {
    c: Containerd,
    host: FakeHost,
    lib: PathBuf,
    config: String,
    _dir: tempfile::TempDir,
}

impl Lab {
    fn start(&mut self, id: &str, opt_in: bool) -> Result<u32> {
        let mut args = vec![
            "-d",
            "--runtime-config-path",
            &self.config,
            "--env",
            "NVIDIA_VISIBLE_DEVICES=0",
        ];
        if opt_in {
            args.extend(["--annotation", "nvidia.com/gpu-suspend-on-pause=true"]);
        }
        self.c
            .run_image(GLIBC_IMAGE, &args, id, &["sleep", "1000"])?;
        let pid = std::fs::read_to_string(self.c.bundle(id).join("init.pid"))?;
        Ok(pid.trim().parse()?)
    }

    fn status(&self, id: &str) -> Result<String> {
        let out = self.c.ctr_ok(&["task", "ls"])?;
        out.lines()
            .find(|l| l.split_whitespace().next() == Some(id))
            .and_then(|l| l.split_whitespace().nth(2))
            .map(str::to_string)
            .with_context(|| format!("{id} not in {out}"))
    }

    fn calls(&self) -> Vec<String> {
        fake_cuda::calls(&self.lib)
    }

    fn top(&self) -> Result<serde_json::Value> {
        let state = self
            .c
            .bundle("x")
            .parent()
            .and_then(Path::parent)
            .context("state")?
            .to_path_buf();
        let out = Command::new(bin_dir().join("nvidia-shim"))
            .args(["--config", &self.config, "top", "--json", "--state-dir"])
            .arg(state)
            .output()?;
        ensure!(out.status.success(), "top: {out:?}");
        Ok(serde_json::from_str(&stdout(&out))?)
    }
}

fn lab() -> Result<Lab> {
    let dir = tempfile::Builder::new()
        .prefix("nvsus-")
        .tempdir_in("/tmp")?;
    let host = FakeHost::build_with_nvml(dir.path(), Layout::Gke, 2, false)?;
    let lib = host.install_fake_cuda()?;
    let config = host.write_config()?;
    // The config's last section is [gpu]: a short limit for the hang case.
    std::fs::write(
        &config,
        std::fs::read_to_string(&config)? + "suspend_timeout_ms = 2000\n",
    )?;
    let c = Containerd::start()?;
    import_glibc(&c)?;
    Ok(Lab {
        c,
        host,
        lib,
        config,
        _dir: dir,
    })
}

#[test]
fn pause_checkpoints_cuda_processes_and_resume_restores_them() -> Result<()> {
    let mut l = lab()?;
    let a = l.start("sus-a", true)?;
    l.start("sus-b", true)?;
    let c = l.start("sus-c", false)?;
    let on_gpu = |pid| FakeProcess {
        uuid: gpu_uuid(0),
        pid,
        used_bytes: 2 * GIB,
        sm: 0,
        mem: 0,
        graphics: false,
    };
    l.host.set_nvml_processes(&[on_gpu(a), on_gpu(c)])?;

    // Pause: state, lock, checkpoint of A's process, then the freeze.
    l.c.ctr_ok(&["task", "pause", "sus-a"])?;
    ensure!(
        l.calls()
            == [
                format!("state {a}"),
                format!("lock {a}"),
                format!("checkpoint {a}")
            ],
        "{:?}",
        l.calls()
    );
    ensure!(
        fake_cuda::state(&l.lib, a) == 2 && l.status("sus-a")? == "PAUSED",
        "not checkpointed and paused"
    );
    let top = l.top()?;
    let row = top["containers"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["id"] == "sus-a"))
        .context("sus-a in top")?;
    ensure!(row["suspended"]["released_bytes"] == 2 * GIB, "top: {row}");

    // Resume: the thaw, then restore and unlock.
    fake_cuda::clear_calls(&l.lib)?;
    l.c.ctr_ok(&["task", "resume", "sus-a"])?;
    ensure!(
        l.calls().iter().any(|c| *c == format!("restore {a}"))
            && l.calls().last() == Some(&format!("unlock {a}")),
        "{:?}",
        l.calls()
    );
    ensure!(
        fake_cuda::state(&l.lib, a) == 0 && l.status("sus-a")? == "RUNNING",
        "not resumed"
    );
    ensure!(
        !l.c.bundle("sus-a").join("nvidia-suspended.json").exists(),
        "suspension record kept after resume"
    );

    // A failed checkpoint: the lock is undone and the container keeps running.
    fake_cuda::clear_calls(&l.lib)?;
    fake_cuda::set_failures(&l.lib, &format!("checkpoint {a}\n"))?;
    let out = l.c.ctr(&["task", "pause", "sus-a"])?;
    let err = stderr(&out);
    ensure!(
        !out.status.success()
            && err.contains(&format!("pid {a}"))
            && err.contains("checkpoint")
            && err.contains("CUDA_ERROR_UNKNOWN"),
        "{out:?}"
    );
    ensure!(
        l.calls().last() == Some(&format!("unlock {a}")),
        "no rollback: {:?}",
        l.calls()
    );
    ensure!(
        fake_cuda::state(&l.lib, a) == 0 && l.status("sus-a")? == "RUNNING",
        "left changed after a failed pause"
    );

    // A failed restore: the container stays paused with its state intact; a retry finishes.
    fake_cuda::set_failures(&l.lib, "")?;
    l.c.ctr_ok(&["task", "pause", "sus-a"])?;
    fake_cuda::set_failures(&l.lib, &format!("restore {a}\n"))?;
    let out = l.c.ctr(&["task", "resume", "sus-a"])?;
    ensure!(
        !out.status.success() && stderr(&out).contains("left paused"),
        "{out:?}"
    );
    ensure!(
        l.status("sus-a")? == "PAUSED" && fake_cuda::state(&l.lib, a) == 2,
        "half-resumed"
    );
    fake_cuda::set_failures(&l.lib, "")?;
    l.c.ctr_ok(&["task", "resume", "sus-a"])?;
    ensure!(
        l.status("sus-a")? == "RUNNING" && fake_cuda::state(&l.lib, a) == 0,
        "retry did not finish"
    );

    // A driver that does not answer: Pause fails at the limit and the container runs on.
    fake_cuda::set_failures(&l.lib, &format!("hang-lock {a}\n"))?;
    let t = std::time::Instant::now();
    let out = l.c.ctr(&["task", "pause", "sus-a"])?;
    ensure!(
        !out.status.success() && stderr(&out).contains("no answer from the driver within 2000 ms"),
        "{out:?}"
    );
    ensure!(
        t.elapsed().as_secs() < 15 && l.status("sus-a")? == "RUNNING",
        "time limit not kept"
    );
    fake_cuda::set_failures(&l.lib, "")?;

    // No CUDA process (B) and no opt-in (C): plain freezes, the driver is not asked.
    fake_cuda::clear_calls(&l.lib)?;
    for id in ["sus-b", "sus-c"] {
        l.c.ctr_ok(&["task", "pause", id])?;
        ensure!(l.status(id)? == "PAUSED", "{id} not paused");
        l.c.ctr_ok(&["task", "resume", id])?;
    }
    ensure!(
        l.calls().is_empty(),
        "the driver was asked about B or C: {:?}",
        l.calls()
    );
    for id in ["sus-a", "sus-b", "sus-c"] {
        l.c.ctr_ok(&["task", "delete", "-f", id])?;
        l.c.ctr_ok(&["container", "delete", id])?;
    }
    l.c.assert_clean()
}

/// Hardening round 2, finding 1: the init dies while a Pause waits on a driver that does not
/// answer. The failed Pause must not revive it: the task shows STOPPED and deletes normally.
#[test]
fn an_init_that_dies_during_a_hung_suspend_is_stopped_not_running() -> Result<()> {
    let mut l = lab()?;
    let pid = l.start("sus-dead", true)?;
    l.host.set_nvml_processes(&[FakeProcess {
        uuid: gpu_uuid(0),
        pid,
        used_bytes: GIB,
        sm: 0,
        mem: 0,
        graphics: false,
    }])?;
    fake_cuda::set_failures(&l.lib, &format!("hang-lock {pid}\n"))?;
    let pause =
        l.c.ctr_command(&["task", "pause", "sus-dead"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
    integration::wait_until(
        std::time::Duration::from_secs(20),
        "the driver's lock call",
        || Ok(l.calls().contains(&format!("lock {pid}"))),
    )?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )?;
    let out = pause.wait_with_output()?;
    ensure!(
        !out.status.success() && stderr(&out).contains("no answer from the driver"),
        "{out:?}"
    );
    ensure!(
        l.status("sus-dead")? == "STOPPED",
        "a dead init shows as {}",
        l.status("sus-dead")?
    );
    fake_cuda::set_failures(&l.lib, "")?;
    l.c.ctr_ok(&["task", "delete", "sus-dead"])?;
    l.c.ctr_ok(&["container", "delete", "sus-dead"])?;
    l.c.assert_clean()
}
