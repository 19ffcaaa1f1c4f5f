//! The one reaper. The shim is a child subreaper, so container inits and detached execs become its
//! children; a single `waitpid(-1)` loop collects every exit and fans it out. Children the shim
//! spawns itself (runc, logging binaries) are registered as waiters under the same lock that the
//! loop takes before dispatching, so an exit that races the registration is never lost or stolen.

use std::collections::HashMap;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, oneshot};

/// A process that exited: pid and containerd-style status (128 + signal when killed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exit {
    /// The pid.
    pub pid: i32,
    /// Exit code, or 128 + signal number.
    pub status: i32,
}

struct Inner {
    waiters: HashMap<i32, oneshot::Sender<i32>>,
    others: Option<mpsc::UnboundedSender<Exit>>,
}

static REAPER: OnceLock<Mutex<Inner>> = OnceLock::new();

fn inner() -> &'static Mutex<Inner> {
    REAPER.get_or_init(|| {
        Mutex::new(Inner {
            waiters: HashMap::new(),
            others: None,
        })
    })
}

/// Makes this process a child subreaper and starts the SIGCHLD loop. Exits of processes nobody
/// spawned through [`spawn`] (container inits, execs) arrive on the returned channel.
pub fn start() -> io::Result<mpsc::UnboundedReceiver<Exit>> {
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let (tx, rx) = mpsc::unbounded_channel();
    if let Ok(mut g) = inner().lock() {
        g.others = Some(tx);
    }
    let mut sig = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())?;
    tokio::spawn(async move {
        loop {
            reap_all();
            if sig.recv().await.is_none() {
                break;
            }
        }
    });
    Ok(rx)
}

/// Converts a wait status to containerd's exit status.
pub fn exit_status(ws: WaitStatus) -> Option<(i32, i32)> {
    match ws {
        WaitStatus::Exited(pid, code) => Some((pid.as_raw(), code)),
        WaitStatus::Signaled(pid, sig, _) => Some((pid.as_raw(), 128 + sig as i32)),
        _ => None,
    }
}

fn reap_all() {
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => break,
            Ok(ws) => {
                let Some((pid, status)) = exit_status(ws) else {
                    continue;
                };
                let Ok(mut g) = inner().lock() else { break };
                if let Some(w) = g.waiters.remove(&pid) {
                    let _ = w.send(status);
                } else if let Some(tx) = &g.others {
                    let _ = tx.send(Exit { pid, status });
                }
            }
        }
    }
}

/// Spawns `cmd` and returns the child with a receiver for its exit status. The child also gets
/// SIGKILL when the shim dies, so an in-flight runc never outlives it.
pub fn spawn(cmd: &mut Command) -> io::Result<(Child, oneshot::Receiver<i32>)> {
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
            Ok(())
        });
    }
    let mut g = inner()
        .lock()
        .map_err(|_| io::Error::other("reaper lock poisoned"))?;
    let child = cmd.spawn()?;
    let (tx, rx) = oneshot::channel();
    g.waiters.insert(child.id() as i32, tx);
    Ok((child, rx))
}

/// Waits for an exit registered by [`spawn`]; a dropped sender (shim shutting down) reads as 255.
pub async fn wait(rx: oneshot::Receiver<i32>) -> i32 {
    rx.await.unwrap_or(255)
}

/// A close-on-exec pipe (read end, write end).
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io::Error::from)
}

/// Everything readable from `fd` until end of file.
pub async fn read_all(fd: Option<OwnedFd>) -> Vec<u8> {
    let mut buf = Vec::new();
    if let Some(fd) = fd {
        if let Ok(mut r) = tokio::net::unix::pipe::Receiver::from_owned_fd(fd) {
            let _ = r.read_to_end(&mut buf).await;
        }
    }
    buf
}

/// Runs `cmd` with stdout and stderr captured, under `limit`: `(status, stdout, stderr)`, or
/// None when it ran past the limit (it is then killed).
pub async fn output(
    mut cmd: Command,
    limit: Duration,
) -> io::Result<Option<(i32, Vec<u8>, Vec<u8>)>> {
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    cmd.stdout(Stdio::from(out_w)).stderr(Stdio::from(err_w));
    let (mut child, exit) = spawn(&mut cmd)?;
    // Our copies of the write ends go, so the reads end when the child's do.
    drop(cmd);
    let work = async {
        let (o, e) = tokio::join!(read_all(Some(out_r)), read_all(Some(err_r)));
        (wait(exit).await, o, e)
    };
    match tokio::time::timeout(limit, work).await {
        Ok(r) => Ok(Some(r)),
        Err(_) => {
            let _ = child.kill();
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::signal::Signal;

    #[test]
    fn statuses_follow_containerd() {
        let p = Pid::from_raw(7);
        assert_eq!(exit_status(WaitStatus::Exited(p, 3)), Some((7, 3)));
        assert_eq!(
            exit_status(WaitStatus::Signaled(p, Signal::SIGKILL, false)),
            Some((7, 137))
        );
        assert_eq!(exit_status(WaitStatus::StillAlive), None);
    }
}
