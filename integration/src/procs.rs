//! Waiting on conditions and processes, and finding processes by their argv.

use std::fs;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

/// Polls `cond` until it holds, for conditions that offer no event to wait on.
pub fn wait_until(
    limit: Duration,
    what: &str,
    mut cond: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        if cond()? {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits for a process to exit, through a pidfd (an event, not polling).
pub fn wait_pid_gone(pid: i32, limit: Duration) -> Result<()> {
    // SAFETY: plain syscall; the result is checked.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Ok(()); // already gone
    }
    // SAFETY: pidfd_open returned a new descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut pfd, 1, limit.as_millis() as i32) };
    if n == 1 {
        Ok(())
    } else {
        bail!("process {pid} did not exit within {limit:?}")
    }
}

/// Pids of processes whose argv satisfies `pred`.
pub fn processes_matching(pred: impl Fn(&[String]) -> bool) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.filter_map(|e| e.ok()) {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(raw) = fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let argv: Vec<String> = raw
            .split(|b| *b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect();
        if pred(&argv) {
            out.push(pid);
        }
    }
    out
}
