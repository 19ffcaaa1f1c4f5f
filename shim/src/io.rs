//! Process stdio: FIFOs, `file://`, `binary://` loggers, no stdio, and terminals through a console
//! socket. Every fd the shim copies between is non-blocking and driven by one copy loop, so no thread
//! ever sits in a blocking `open(2)` or `read(2)` that would keep the shim alive after its last task.
//!
//! stdout/stderr FIFOs are opened read-write: the shim then holds a reader too, so writes never fail
//! with EPIPE while containerd restarts, and containerd finds the output waiting when it reconnects.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::task::JoinHandle;

use crate::reaper;
use crate::runc::RuncIo;

mod uri;
use uri::{parse_target, Target};

/// The stdio a process was created with, as containerd sent it.
#[derive(Clone, Debug, Default)]
pub struct StdioUris {
    /// stdin FIFO path (or empty).
    pub stdin: String,
    /// stdout URI.
    pub stdout: String,
    /// stderr URI.
    pub stderr: String,
    /// Allocate a terminal.
    pub terminal: bool,
}

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(std::io::Error::from)
}

fn set_nonblocking(fd: RawFd) {
    // SAFETY: fcntl on an fd owned by the caller.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
    }
}

/// Registers an owned fd with the reactor. The fd is owned by the `AsyncFd`, so it stays open for
/// exactly as long as it is registered.
pub fn register(fd: OwnedFd) -> std::io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: the AsyncFd owns the fd; it cannot be closed while registered.
    unsafe { AsyncFd::register(fd) }.map_err(std::io::Error::from)
}

fn async_fd(fd: OwnedFd) -> std::io::Result<Arc<AsyncFd<OwnedFd>>> {
    set_nonblocking(fd.as_raw_fd());
    Ok(Arc::new(register(fd)?))
}

fn open_fifo(path: &Path, write: bool) -> std::io::Result<OwnedFd> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| {
            std::io::Error::new(e.kind(), format!("opening fifo {}: {e}", path.display()))
        })?;
    Ok(f.into())
}

/// A destination of copied output.
#[derive(Clone)]
enum Sink {
    Fd(Arc<AsyncFd<OwnedFd>>),
    File(Arc<std::fs::File>),
}

async fn write_all(sink: &Sink, mut data: &[u8]) -> std::io::Result<()> {
    match sink {
        Sink::File(f) => {
            use std::io::Write;
            (&**f).write_all(data)
        }
        Sink::Fd(fd) => {
            while !data.is_empty() {
                let mut guard = fd.writable().await?;
                match guard.try_io(|inner| {
                    // SAFETY: write from a valid buffer to an fd we own.
                    let n =
                        unsafe { libc::write(inner.as_raw_fd(), data.as_ptr().cast(), data.len()) };
                    if n < 0 {
                        Err(std::io::Error::last_os_error())
                    } else {
                        Ok(n as usize)
                    }
                }) {
                    Ok(Ok(n)) => data = &data[n..],
                    Ok(Err(e)) => return Err(e),
                    Err(_) => continue,
                }
            }
            Ok(())
        }
    }
}

/// Copies until EOF (or EIO, which is how a pty master reports that the last slave closed).
async fn copy(src: Arc<AsyncFd<OwnedFd>>, dst: Sink) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let Ok(mut guard) = src.readable().await else {
            return;
        };
        match guard.try_io(|inner| {
            // SAFETY: read into a valid buffer from an fd we own.
            let n = unsafe { libc::read(inner.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(n as usize)
            }
        }) {
            Ok(Ok(0)) | Ok(Err(_)) => {
                tracing::debug!("output EOF");
                return;
            }
            Ok(Ok(n)) => {
                if write_all(&dst, &buf[..n]).await.is_err() {
                    return;
                }
            }
            Err(_) => continue,
        }
    }
}

/// A logging binary started for `binary://` stdio.
struct Logger {
    pid: i32,
    exit: Option<tokio::sync::oneshot::Receiver<i32>>,
}

/// IO set up before runc runs; finished once runc has created the process.
pub struct PendingIo {
    /// What runc gets.
    pub runc: RuncIo,
    /// The console socket path, for terminals.
    pub console_socket: Option<PathBuf>,
    console_listener: Option<std::os::unix::net::UnixListener>,
    console_dir: Option<PathBuf>,
    stdin_src: Option<OwnedFd>,
    stdin_dst: Option<OwnedFd>,
    out: Vec<(OwnedFd, Sink)>,
    logger: Option<Logger>,
    uris: StdioUris,
}

/// Running IO of one process.
#[derive(Default)]
pub struct ProcessIo {
    copiers: Vec<JoinHandle<()>>,
    stdin: Option<JoinHandle<()>>,
    console: Option<Arc<AsyncFd<OwnedFd>>>,
    logger: Option<Logger>,
}

fn chown(fd: &OwnedFd, uid: u32, gid: u32) {
    if uid != 0 || gid != 0 {
        // SAFETY: fchown on an fd we own.
        unsafe { libc::fchown(fd.as_raw_fd(), uid, gid) };
    }
}

fn bad_input(e: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, e)
}

/// A terminal: runc hands the pty's master over a console socket in a private directory.
fn prepare_terminal(p: &mut PendingIo) -> std::io::Result<()> {
    let dir = std::env::temp_dir().join(format!("nvshim-pty-{}-{}", std::process::id(), unique()));
    std::fs::create_dir(&dir)?;
    let path = dir.join("s");
    let listener = std::os::unix::net::UnixListener::bind(&path)?;
    p.console_socket = Some(path);
    p.console_listener = Some(listener);
    p.console_dir = Some(dir);
    Ok(())
}

/// A logging binary (`binary://`): started with the process's stdout, stderr and a readiness
/// pipe on fds 3, 4 and 5, as containerd's logging contract says.
fn start_logger(
    p: &mut PendingIo,
    path: &Path,
    args: &[String],
    (id, namespace): (&str, &str),
    (uid, gid): (u32, u32),
) -> std::io::Result<()> {
    let (or, ow) = pipe()?;
    let (er, ew) = pipe()?;
    let (rr, rw) = pipe()?;
    chown(&ow, uid, gid);
    chown(&ew, uid, gid);
    let mut cmd = std::process::Command::new(path);
    cmd.args(args)
        .env("CONTAINER_ID", id)
        .env("CONTAINER_NAMESPACE", namespace)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let fds = [or.as_raw_fd(), er.as_raw_fd(), rw.as_raw_fd()];
    // SAFETY: dup2 between fork and exec; the targets are 3, 4, 5 as the logging contract says.
    unsafe {
        cmd.pre_exec(move || {
            for (i, fd) in fds.iter().enumerate() {
                if libc::dup2(*fd, 3 + i as i32) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let (child, exit) = reaper::spawn(&mut cmd).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("starting logging binary {}: {e}", path.display()),
        )
    })?;
    drop((or, er, rw, cmd));
    p.logger = Some(Logger {
        pid: child.id() as i32,
        exit: Some(exit),
    });
    p.runc.stdout = Some(ow);
    p.runc.stderr = Some(ew);
    // The binary signals readiness by writing to or closing fd 5.
    wait_ready(rr)
}

/// Where stdout or stderr goes: a FIFO (one writer when both name the same), a file, nothing.
fn sink(t: &Target, shared_fifo: &mut Option<(PathBuf, Sink)>) -> std::io::Result<Option<Sink>> {
    Ok(Some(match t {
        Target::Null => return Ok(None),
        Target::Fifo(path) => match shared_fifo {
            Some((p0, s)) if p0 == path => s.clone(),
            _ => {
                let s = Sink::Fd(async_fd(open_fifo(path, true)?)?);
                *shared_fifo = Some((path.clone(), s.clone()));
                s
            }
        },
        Target::File(path) => {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            let f = std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .mode(0o644)
                .open(path)?;
            Sink::File(Arc::new(f))
        }
        Target::Binary { .. } => {
            return Err(bad_input(
                "stderr may be binary:// only together with stdout".into(),
            ))
        }
    }))
}

/// Prepares stdio for a process about to be created by runc.
pub fn prepare(
    uris: &StdioUris,
    id: &str,
    namespace: &str,
    uid: u32,
    gid: u32,
) -> std::io::Result<PendingIo> {
    let stdout = parse_target(&uris.stdout).map_err(bad_input)?;
    let stderr = parse_target(&uris.stderr).map_err(bad_input)?;
    let mut p = PendingIo {
        runc: RuncIo::default(),
        console_socket: None,
        console_listener: None,
        console_dir: None,
        stdin_src: None,
        stdin_dst: None,
        out: Vec::new(),
        logger: None,
        uris: uris.clone(),
    };
    if uris.terminal {
        if matches!(stdout, Target::File(_) | Target::Binary { .. }) {
            return Err(bad_input("terminal output can only go to a fifo".into()));
        }
        prepare_terminal(&mut p)?;
        return Ok(p);
    }
    if !uris.stdin.is_empty() {
        let (r, w) = pipe()?;
        chown(&r, uid, gid);
        p.stdin_src = Some(open_fifo(Path::new(&uris.stdin), false)?);
        p.stdin_dst = Some(w);
        p.runc.stdin = Some(r);
    }
    if let Target::Binary { path, args } = &stdout {
        start_logger(&mut p, path, args, (id, namespace), (uid, gid))?;
        return Ok(p);
    }
    let mut shared_fifo = None;
    for (i, t) in [&stdout, &stderr].into_iter().enumerate() {
        let Some(sink) = sink(t, &mut shared_fifo)? else {
            continue;
        };
        let (r, w) = pipe()?;
        chown(&w, uid, gid);
        if i == 0 {
            p.runc.stdout = Some(w)
        } else {
            p.runc.stderr = Some(w)
        }
        p.out.push((r, sink));
    }
    Ok(p)
}

fn wait_ready(r: OwnedFd) -> std::io::Result<()> {
    let mut pfd = libc::pollfd {
        fd: r.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll on one valid pollfd.
    let n = unsafe { libc::poll(&mut pfd, 1, 10_000) };
    if n <= 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "logging binary did not signal readiness",
        ));
    }
    Ok(())
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

fn recv_fd(stream: &std::os::unix::net::UnixStream) -> std::io::Result<OwnedFd> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let mut buf = [0u8; 4096];
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let mut cmsg = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(
        stream.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(std::io::Error::from)?;
    for c in msg.cmsgs().map_err(std::io::Error::from)? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            if let Some(fd) = fds.first() {
                // SAFETY: the kernel just installed this fd for us.
                return Ok(unsafe { OwnedFd::from_raw_fd(*fd) });
            }
        }
    }
    Err(std::io::Error::other(
        "console socket carried no file descriptor",
    ))
}

impl PendingIo {
    /// Starts copying once runc has created the process.
    pub async fn finish(mut self) -> std::io::Result<ProcessIo> {
        let mut io = ProcessIo {
            logger: self.logger.take(),
            ..Default::default()
        };
        if let Some(listener) = self.console_listener.take() {
            listener.set_nonblocking(true)?;
            let listener = tokio::net::UnixListener::from_std(listener)?;
            let (stream, _) = tokio::time::timeout(Duration::from_secs(30), listener.accept())
                .await
                .map_err(|_| {
                    std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the OCI runtime did not send the console",
                    )
                })??;
            let stream = stream.into_std()?;
            stream.set_nonblocking(false)?;
            let master = async_fd(recv_fd(&stream)?)?;
            if !self.uris.stdin.is_empty() {
                let src = async_fd(open_fifo(Path::new(&self.uris.stdin), false)?)?;
                io.stdin = Some(tokio::spawn(copy_stdin(src, Sink::Fd(master.clone()))));
            }
            if !self.uris.stdout.is_empty() {
                let Target::Fifo(path) =
                    parse_target(&self.uris.stdout).map_err(std::io::Error::other)?
                else {
                    return Err(std::io::Error::other("terminal output must be a fifo"));
                };
                let dst = Sink::Fd(async_fd(open_fifo(&path, true)?)?);
                io.copiers.push(tokio::spawn(copy(master.clone(), dst)));
            }
            io.console = Some(master);
            return Ok(io);
        }
        if let (Some(src), Some(dst)) = (self.stdin_src.take(), self.stdin_dst.take()) {
            io.stdin = Some(tokio::spawn(copy_stdin(
                async_fd(src)?,
                Sink::Fd(async_fd(dst)?),
            )));
        }
        for (r, sink) in self.out.drain(..) {
            io.copiers.push(tokio::spawn(copy(async_fd(r)?, sink)));
        }
        Ok(io)
    }
}

impl Drop for PendingIo {
    fn drop(&mut self) {
        if let Some(dir) = self.console_dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
        if let Some(l) = &self.logger {
            // SAFETY: signalling a child we spawned and have not reaped.
            unsafe { libc::kill(l.pid, libc::SIGKILL) };
        }
    }
}

/// stdin copy: a FIFO read before any writer opened it reads as EOF, so wait for readiness first;
/// epoll reports nothing until a writer appears.
async fn copy_stdin(src: Arc<AsyncFd<OwnedFd>>, dst: Sink) {
    copy(src, dst).await
}

impl ProcessIo {
    /// Closes stdin so the process reads EOF.
    pub fn close_stdin(&mut self) {
        if let Some(h) = self.stdin.take() {
            h.abort();
        }
    }

    /// Sets the terminal size; a no-op without a terminal.
    pub fn resize(&self, width: u32, height: u32) -> std::io::Result<()> {
        if let Some(m) = &self.console {
            let ws = libc::winsize {
                ws_row: height as u16,
                ws_col: width as u16,
                ws_xpixel: 0,
                ws_ypixel: 0,
            };
            // SAFETY: TIOCSWINSZ with a valid winsize on the pty master.
            if unsafe { libc::ioctl(m.as_raw_fd(), libc::TIOCSWINSZ, &ws) } < 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    }

    /// Waits (bounded) for the output to drain after the process exited, then releases everything.
    pub async fn shutdown(&mut self, grace: Duration) {
        let copiers = std::mem::take(&mut self.copiers);
        let aborts: Vec<_> = copiers.iter().map(|h| h.abort_handle()).collect();
        let _ = tokio::time::timeout(grace, futures_join(copiers)).await;
        for a in aborts {
            a.abort();
        }
        self.close_stdin();
        self.console = None;
        if let Some(mut l) = self.logger.take() {
            // SAFETY: signalling our own unreaped child.
            unsafe { libc::kill(l.pid, libc::SIGTERM) };
            if let Some(exit) = l.exit.take() {
                if tokio::time::timeout(Duration::from_secs(12), reaper::wait(exit))
                    .await
                    .is_err()
                {
                    // SAFETY: as above.
                    unsafe { libc::kill(l.pid, libc::SIGKILL) };
                }
            }
        }
    }
}

async fn futures_join(handles: Vec<JoinHandle<()>>) {
    for h in handles {
        let _ = h.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn fifo_output_is_copied_and_closed() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("out");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let reader = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
            .unwrap();
        let uris = StdioUris {
            stdout: fifo.display().to_string(),
            stderr: fifo.display().to_string(),
            ..Default::default()
        };
        let mut p = prepare(&uris, "c", "ns", 0, 0).unwrap();
        let w_out = p.runc.stdout.take().unwrap();
        let w_err = p.runc.stderr.take().unwrap();
        let mut io = p.finish().await.unwrap();
        nix::unistd::write(&w_out, b"hello ").unwrap();
        nix::unistd::write(&w_err, b"world").unwrap();
        drop((w_out, w_err));
        io.shutdown(Duration::from_secs(2)).await;
        let mut got = vec![0u8; 64];
        let n = nix::unistd::read(&reader, &mut got).unwrap();
        let text = String::from_utf8_lossy(&got[..n]).to_string();
        assert!(text.contains("hello") && text.contains("world"), "{text}");
    }
}
