//! Restarting containerd after its config changed, and knowing when it answers again.
//!
//! `signal`: containerd has no config reload; SIGHUP ends it (Go's default action) and its
//! supervisor (systemd's `Restart=always`, or whatever runs it) starts it again from the new
//! config. Its PID comes from the socket's peer credentials, so nothing is matched by name.
//! `systemd`: `systemctl restart containerd` in the host root. `none`: the caller restarts.

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};

use super::host::HostRoot;
use crate::CliError;

/// How containerd is restarted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Method {
    /// SIGHUP to the PID behind containerd's socket; its supervisor starts it again.
    Signal,
    /// `systemctl restart containerd` (in the host root).
    Systemd,
    /// Do not restart; the new config applies at containerd's next start.
    None,
}

/// The HTTP/2 client preface and an empty SETTINGS frame: a gRPC server answers with its own
/// SETTINGS frame, which shows it is serving, not just holding a socket.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";

/// The PID of the process serving `sock`, when it answers as a gRPC server.
fn serving_pid(sock: &Path) -> Option<i32> {
    let mut s = UnixStream::connect(sock).ok()?;
    let pid = getsockopt(&s.as_fd(), PeerCredentials).ok()?.pid();
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.set_write_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(PREFACE).ok()?;
    let mut head = [0u8; 9];
    s.read_exact(&mut head).ok()?;
    (head[3] == 0x4).then_some(pid)
}

/// Waits for `pid` to exit, through a pidfd (an event, not polling), up to `limit`.
fn wait_exit(pid: i32, limit: Duration) -> Result<bool, CliError> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        // Already gone (ESRCH) counts as exited.
        return Ok(std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH));
    }
    // SAFETY: fd is a new descriptor this function owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = i32::try_from(limit.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut p, 1, ms) };
    Ok(n > 0)
}

/// Waits until something other than `old` serves `sock`.
fn wait_serving(sock: &Path, old: Option<i32>, limit: Duration) -> Result<i32, CliError> {
    let start = Instant::now();
    let mut step = Duration::from_millis(50);
    loop {
        if let Some(pid) = serving_pid(sock).filter(|p| Some(*p) != old) {
            return Ok(pid);
        }
        if start.elapsed() > limit {
            return Err(CliError::failed(format!(
                "containerd did not answer on {} within {} s after the restart; check its log \
                 (journalctl -u containerd) — the new config may be the cause, and \
                 `nvidia-shim uninstall` restores the previous one",
                sock.display(),
                limit.as_secs()
            )));
        }
        // Nothing signals that a socket started serving: back off while polling it.
        std::thread::sleep(step);
        step = (step * 2).min(Duration::from_millis(500));
    }
}

/// Restarts containerd whose socket is host path `socket`; returns what was done, for the log.
pub fn restart(
    method: Method,
    root: &HostRoot,
    socket: &Path,
    limit: Duration,
) -> Result<String, CliError> {
    let sock = root.local(socket);
    match method {
        Method::None => Ok("not restarted (--restart none): restart containerd to apply".into()),
        Method::Signal => {
            let Some(pid) = serving_pid(&sock) else {
                return Ok(format!(
                    "containerd is not running (nothing answers on {}); the config applies when it starts",
                    socket.display()
                ));
            };
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGHUP)
                .map_err(|e| {
                    CliError::failed(format!(
                        "signalling containerd (pid {pid}, found through {}): {e}; the installer \
                         needs the host PID namespace (hostPID) and CAP_KILL, or use --restart systemd",
                        socket.display()
                    ))
                })?;
            if !wait_exit(pid, limit)? {
                return Err(CliError::failed(format!(
                    "containerd (pid {pid}) did not exit on SIGHUP within {} s; use --restart systemd",
                    limit.as_secs()
                )));
            }
            let new = wait_serving(&sock, Some(pid), limit)?;
            Ok(format!("restarted by SIGHUP: pid {pid} → {new}"))
        }
        Method::Systemd => {
            let mut cmd = if root.is_slash() {
                Command::new("systemctl")
            } else {
                let mut c = Command::new("chroot");
                c.arg(root.local(Path::new("/"))).arg("systemctl");
                c
            };
            let old = serving_pid(&sock);
            let out = cmd
                .args(["restart", "containerd"])
                .output()
                .map_err(|e| CliError::failed(format!("running systemctl: {e}")))?;
            if !out.status.success() {
                return Err(CliError::failed(format!(
                    "systemctl restart containerd failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
            let new = wait_serving(&sock, old, limit)?;
            Ok(format!("restarted by systemd: now pid {new}"))
        }
    }
}
