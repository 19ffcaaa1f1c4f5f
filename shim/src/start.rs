//! The `start` action: find or create the pod's socket, spawn the server with the listener as fd 3,
//! and print the address — nothing else may reach stdout or stderr, because containerd 1.6 reads both
//! as the address.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use nvidia_shim_proto::ShimOptions;

use crate::settings::{load_config, write_atomic};

/// Annotations that group containers into one shim, in order of preference.
pub const GROUP_ANNOTATIONS: [&str; 2] = [
    "io.containerd.runc.v2.group",
    "io.kubernetes.cri.sandbox-id",
];

/// Env var passing the configured log level from `start` to the server.
pub const LOG_LEVEL_ENV: &str = "NVIDIA_SHIM_LOG_LEVEL";

/// The grouping id of a container: its pod's sandbox id under CRI, else itself.
pub fn grouping_id(spec_json: &[u8], id: &str) -> String {
    let v: serde_json::Value = serde_json::from_slice(spec_json).unwrap_or_default();
    GROUP_ANNOTATIONS
        .iter()
        .find_map(|k| {
            v.pointer(&format!("/annotations/{}", k.replace('/', "~1")))
                .and_then(|s| s.as_str())
        })
        .filter(|s| !s.is_empty())
        .unwrap_or(id)
        .to_string()
}

fn socket_path(address: &str) -> &str {
    address.strip_prefix("unix://").unwrap_or(address)
}

/// What `start` prints: the plain address (the one reply containerd 1.6, 1.7 and 2.x all accept),
/// or, when the containerd that started us is 2.x, the bootstrap JSON that tells it to speak task
/// API v3 to us.
pub fn reply(address: &str, speaks_v3: bool) -> String {
    if speaks_v3 {
        format!(r#"{{"version":3,"address":"{address}","protocol":"ttrpc"}}"#)
    } else {
        address.to_string()
    }
}

/// Whether the process that started us is containerd 2.x. containerd passes no version (its
/// `MAX_SHIM_VERSION` is 2 on every release), so the parent's binary says it: Go records the main
/// module in `.go.buildinfo`, and 2.x's is `github.com/containerd/containerd/v2`. Anything
/// unreadable or unknown means "not 2.x": the plain reply works everywhere.
pub fn parent_speaks_v3() -> bool {
    let exe = format!("/proc/{}/exe", std::os::unix::process::parent_id());
    gpu_core::elf::section(Path::new(&exe), ".go.buildinfo", 16 << 10)
        .is_some_and(|info| info.windows(V2_MODULE.len()).any(|w| w == V2_MODULE))
}

const V2_MODULE: &[u8] = b"\tgithub.com/containerd/containerd/v2/";

/// Starts the server process: this binary again, with the listening socket as fd 3, in a
/// process group of its own.
fn spawn_server(
    flags: &containerd_shim::Flags,
    path: &str,
    level: String,
    listener: &impl AsRawFd,
) -> Result<std::process::Child, String> {
    let exe = std::env::current_exe().map_err(|e| format!("locating own binary: {e}"))?;
    let mut cmd = Command::new(exe);
    cmd.args([
        "-namespace",
        &flags.namespace,
        "-id",
        &flags.id,
        "-address",
        &flags.address,
        "-socket",
        path,
    ]);
    if flags.debug {
        cmd.arg("-debug");
    }
    cmd.env(LOG_LEVEL_ENV, level)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let fd = listener.as_raw_fd();
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setpgid(0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if fd == 3 {
                let flags = libc::fcntl(3, libc::F_GETFD);
                libc::fcntl(3, libc::F_SETFD, flags & !libc::FD_CLOEXEC);
            } else if libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn()
        .map_err(|e| format!("starting shim server: {e}"))
}

/// Runs `start`; returns the address to print.
pub fn run(flags: &containerd_shim::Flags) -> Result<String, String> {
    let mut stdin = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut stdin);
    // Options reach Create again; at start only the shim cgroup and the config matter, so an
    // undecodable stdin (e.g. a newer bootstrap message) is not fatal here.
    let opts = ShimOptions::decode_any(&stdin).unwrap_or(ShimOptions::None);
    let level = load_config(&opts)
        .map(|(c, _)| c.log.level)
        .unwrap_or_else(|_| "info".into());

    let spec = std::fs::read("config.json").unwrap_or_default();
    let group = grouping_id(&spec, &flags.id);
    let address = containerd_shim::socket_address(&flags.address, &flags.namespace, &group);
    let path = socket_path(&address).to_string();

    let listener = match bind(&path)? {
        Some(l) => l,
        None => {
            // This pod already has a shim: reuse it.
            write_atomic(Path::new("address"), address.as_bytes())
                .map_err(|e| format!("writing address: {e}"))?;
            return Ok(address);
        }
    };
    let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));

    let child = match spawn_server(flags, &path, level, &listener) {
        Ok(c) => c,
        Err(e) => {
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
    };
    let fail = |msg: String| {
        // SAFETY: killing the server we just started.
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        let _ = std::fs::remove_file(&path);
        msg
    };
    if let Err(e) = write_atomic(Path::new("address"), address.as_bytes()) {
        return Err(fail(format!("writing address: {e}")));
    }
    let shim_cgroup = match &opts {
        ShimOptions::Runc(o) => o.shim_cgroup.clone(),
        ShimOptions::Create(o) => o.shim_cgroup.clone(),
        _ => String::new(),
    };
    if !shim_cgroup.is_empty() {
        if let Err(e) = move_to_cgroup(&shim_cgroup, child.id()) {
            return Err(fail(format!("moving shim to cgroup {shim_cgroup}: {e}")));
        }
    }
    adjust_oom_score(child.id());
    Ok(address)
}

/// Binds the socket; `None` when a live shim already serves it. A socket nobody answers is stale
/// (a shim that died) and is replaced.
fn bind(path: &str) -> Result<Option<UnixListener>, String> {
    if let Some(dir) = Path::new(path).parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    match UnixListener::bind(path) {
        Ok(l) => Ok(Some(l)),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            if UnixStream::connect(path).is_ok() {
                return Ok(None);
            }
            let _ = std::fs::remove_file(path);
            UnixListener::bind(path)
                .map(Some)
                .map_err(|e| format!("binding {path}: {e}"))
        }
        Err(e) => Err(format!("binding {path}: {e}")),
    }
}

fn move_to_cgroup(path: &str, pid: u32) -> std::io::Result<()> {
    let root = Path::new("/sys/fs/cgroup");
    let rel = path.trim_start_matches('/');
    if crate::cgroup::is_v2() {
        let dir = root.join(rel);
        std::fs::create_dir_all(&dir)?;
        return std::fs::write(dir.join("cgroup.procs"), pid.to_string());
    }
    for entry in std::fs::read_dir(root)?.flatten() {
        let dir = entry.path().join(rel);
        if entry.path().join("cgroup.procs").exists() && std::fs::create_dir_all(&dir).is_ok() {
            let _ = std::fs::write(dir.join("cgroup.procs"), pid.to_string());
        }
    }
    Ok(())
}

/// The shim should be killed before containerd under memory pressure: containerd's score + 1.
fn adjust_oom_score(pid: u32) {
    // SAFETY: getppid has no preconditions.
    let parent = unsafe { libc::getppid() };
    let score = std::fs::read_to_string(format!("/proc/{parent}/oom_score_adj"))
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .unwrap_or(0);
    let _ = std::fs::write(
        format!("/proc/{pid}/oom_score_adj"),
        (score + 1).min(1000).to_string(),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grouping() {
        let spec = br#"{"annotations":{"io.kubernetes.cri.sandbox-id":"pod1","io.kubernetes.cri.container-type":"container"}}"#;
        assert_eq!(grouping_id(spec, "c1"), "pod1");
        let spec = br#"{"annotations":{"io.containerd.runc.v2.group":"g","io.kubernetes.cri.sandbox-id":"pod1"}}"#;
        assert_eq!(grouping_id(spec, "c1"), "g");
        assert_eq!(grouping_id(b"{}", "c1"), "c1");
        assert_eq!(grouping_id(b"not json", "c1"), "c1");
    }

    #[test]
    fn stale_socket_is_replaced_live_one_reused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s");
        let path = p.to_str().unwrap();
        let l = bind(path).unwrap().unwrap();
        assert!(bind(path).unwrap().is_none(), "live socket must be reused");
        drop(l);
        assert!(
            bind(path).unwrap().is_some(),
            "stale socket must be replaced"
        );
    }
}
