//! End-to-end harness: a private containerd (own root, state and sockets in a temp dir, CRI off)
//! with this workspace's shim first on its PATH, driven through `ctr`.
//!
//! Every [`Containerd`] checks on drop-free demand ([`Containerd::assert_clean`]) that no shim
//! process, shim socket, runc state or mount of its own is left behind.

#![warn(missing_docs)]

pub mod cri;
mod events;
pub mod image;
pub mod installer;
pub mod measure;
mod procs;
mod shim_calls;
mod version;

pub use events::Events;
pub use procs::{processes_matching, wait_pid_gone, wait_until};
pub use version::Version;

use std::fs;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// The runtime name containerd resolves to our binary.
pub const RUNTIME: &str = "io.containerd.nvidia.v2";
/// The shim binary's file name.
pub const SHIM_BIN: &str = "containerd-shim-nvidia-v2";
/// Reference under which the test image is imported.
pub const IMAGE: &str = "docker.io/library/busybox:nvidia-shim-test";

/// Directory holding the built shim binaries (`NVIDIA_SHIM_BIN_DIR`, else `target/debug`).
pub fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("NVIDIA_SHIM_BIN_DIR") {
        return PathBuf::from(d);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug")
}

/// A private containerd daemon.
pub struct Containerd {
    dir: tempfile::TempDir,
    /// Namespace the tests use; unique per daemon so runc state never collides.
    pub namespace: String,
    child: Option<Child>,
    ids: Vec<String>,
    extra_path: Vec<PathBuf>,
    /// Directory of a non-default containerd + ctr.
    tools: Option<PathBuf>,
    /// The config file the daemon reads.
    config: PathBuf,
    version: Version,
}

static SEQ: AtomicU32 = AtomicU32::new(0);

impl Containerd {
    /// Starts containerd with our shim on its PATH and the busybox test image imported.
    pub fn start() -> Result<Self> {
        Self::start_with(&[])
    }

    /// Starts Debian's containerd 2.x extracted by `just setup` into `.cache/containerd2`.
    pub fn start_v2() -> Result<Self> {
        Self::start_version(Version::V2)
    }

    /// Starts containerd of `version` (Debian's bookworm package, or the trixie/sid ones extracted
    /// by `just setup` into `.cache/`).
    pub fn start_version(version: Version) -> Result<Self> {
        Self::start_opts(version.tools()?.as_slice(), None, None)
    }

    /// Like [`Containerd::start`], with directories holding another containerd and ctr (and
    /// their runc shim) ahead on PATH.
    pub fn start_with(extra_path: &[PathBuf]) -> Result<Self> {
        Self::start_opts(extra_path, None, None)
    }

    /// Starts containerd with its CRI plugin on, configured by `cri` (a TOML fragment in the
    /// daemon's config version, appended to the base config), in namespace `k8s.io`.
    pub fn start_cri(version: Version, cri: &str) -> Result<Self> {
        Self::start_opts(version.tools()?.as_slice(), Some(cri), None)
    }

    /// Like [`Containerd::start_cri`], with the config written to `config` (a node's
    /// /etc/containerd/config.toml under a test host root) instead of the daemon's temp dir.
    pub fn start_cri_at(version: Version, cri: &str, config: &Path) -> Result<Self> {
        Self::start_opts(version.tools()?.as_slice(), Some(cri), Some(config))
    }

    fn start_opts(
        extra_path: &[PathBuf],
        cri: Option<&str>,
        config_at: Option<&Path>,
    ) -> Result<Self> {
        let shim = bin_dir().join(SHIM_BIN);
        if !shim.exists() {
            bail!(
                "{} is missing: run `cargo build --workspace` first",
                shim.display()
            );
        }
        // Short path: containerd's socket path must fit in sun_path.
        let dir = tempfile::Builder::new().prefix("nvs-").tempdir_in("/tmp")?;
        let n = SEQ.fetch_add(1, Ordering::SeqCst);
        let namespace = match cri {
            Some(_) => "k8s.io".to_string(),
            None => format!("it{}-{n}", std::process::id()),
        };
        let tools = extra_path
            .first()
            .filter(|t| t.join("containerd").exists())
            .cloned();
        let version = Version::of(&tools.clone().unwrap_or_default().join("containerd"))?;
        // containerd 2.x reads version 3 configs, where CRI is three plugins.
        let (config_version, cri_plugins) = if version == Version::V2 {
            (
                3,
                r#""io.containerd.grpc.v1.cri", "io.containerd.cri.v1.images", "io.containerd.cri.v1.runtime""#,
            )
        } else {
            (2, r#""io.containerd.grpc.v1.cri""#)
        };
        let disabled = if cri.is_some() { "" } else { cri_plugins };
        let config = format!(
            r#"version = {config_version}
root = "{d}/root"
state = "{d}/state"
disabled_plugins = [{disabled}]
[grpc]
  address = "{d}/containerd.sock"
  max_recv_message_size = 67108864
[ttrpc]
  address = "{d}/containerd.sock.ttrpc"
{extra}
"#,
            d = dir.path().display(),
            extra = cri.unwrap_or_default(),
        );
        let config_path = config_at
            .map(Path::to_path_buf)
            .unwrap_or_else(|| dir.path().join("config.toml"));
        fs::write(&config_path, config)?;
        let mut me = Self {
            dir,
            namespace,
            child: None,
            ids: Vec::new(),
            extra_path: extra_path.to_vec(),
            tools,
            config: config_path,
            version,
        };
        me.launch()?;
        image::import(&me)?;
        Ok(me)
    }

    /// Which containerd this is.
    pub fn version(&self) -> Version {
        self.version
    }

    /// `name` from this version's tools directory, else from PATH (a GPU bundle carries only
    /// containerd 2.x's daemon; its `ctr` calls work against the older `ctr` on PATH).
    fn tool(&self, name: &str) -> PathBuf {
        match &self.tools {
            Some(d) if d.join(name).exists() => d.join(name),
            _ => PathBuf::from(name),
        }
    }

    /// The daemon's temp dir.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// containerd's gRPC address.
    pub fn address(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }

    fn launch(&mut self) -> Result<()> {
        let mut path: Vec<PathBuf> = self.extra_path.clone();
        path.push(bin_dir());
        path.extend(std::env::split_paths(
            &std::env::var_os("PATH").unwrap_or_default(),
        ));
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("containerd.log"))?;
        let child = Command::new(self.tool("containerd"))
            .arg("--config")
            .arg(&self.config)
            .env("PATH", std::env::join_paths(path)?)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting containerd (is it installed?)")?;
        self.child = Some(child);
        wait_until(Duration::from_secs(30), "containerd to answer", || {
            Ok(self.ctr(&["version"])?.status.success())
        })
        .map_err(|e| e.context(self.log_tail()))
    }

    /// Stops containerd (SIGTERM, then waits); running shims and containers stay.
    pub fn stop_daemon(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            c.wait()?;
        }
        Ok(())
    }

    /// The daemon's pid.
    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    /// Acts as the daemon's supervisor (systemd's `Restart=always`) for one restart: waits for
    /// it to exit (an installer's SIGHUP), then starts it again from its config file.
    pub fn relaunch_after_exit(&mut self, limit: Duration) -> Result<()> {
        let Some(mut c) = self.child.take() else {
            bail!("containerd is not running");
        };
        if let Err(e) = wait_pid_gone(c.id() as i32, limit) {
            self.child = Some(c);
            return Err(e.context("containerd was not stopped"));
        }
        c.wait()?;
        self.launch()
    }

    /// Starts containerd again on the same root and state.
    pub fn restart_daemon(&mut self) -> Result<()> {
        self.stop_daemon()?;
        self.launch()
    }

    /// containerd's warnings and errors, then the end of its log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(40);
        let problems: Vec<&str> = lines[..from]
            .iter()
            .filter(|l| {
                l.contains("level=error") || l.contains("level=fatal") || l.contains("panic")
            })
            .copied()
            .collect();
        format!(
            "containerd log (errors, then the last lines):\n{}\n…\n{}",
            problems.join("\n"),
            lines[from..].join("\n")
        )
    }

    /// A `ctr` command against this daemon (address and namespace set), to run as the caller likes.
    pub fn ctr_command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("timeout");
        c.arg("120")
            .arg(self.tool("ctr"))
            .arg("--address")
            .arg(self.address())
            .arg("--namespace")
            .arg(&self.namespace)
            .args(args);
        c
    }

    /// Runs `ctr` with these arguments.
    pub fn ctr(&self, args: &[&str]) -> Result<Output> {
        Ok(self.ctr_command(args).stdin(Stdio::null()).output()?)
    }

    /// Runs `ctr`, feeding `input` on stdin.
    pub fn ctr_stdin(&self, args: &[&str], input: &[u8]) -> Result<Output> {
        use std::io::Write;
        let mut child = self
            .ctr_command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let mut stdin = child.stdin.take().context("stdin")?;
        stdin.write_all(input)?;
        drop(stdin);
        Ok(child.wait_with_output()?)
    }

    /// Runs `ctr` under a pseudo-terminal (through `script`), for `-t`.
    pub fn ctr_tty(&self, args: &[&str]) -> Result<Output> {
        let mut line = format!(
            "{} --address {} --namespace {}",
            self.tool("ctr").display(),
            self.address().display(),
            self.namespace
        );
        for a in args {
            line.push(' ');
            line.push_str(&shell_quote(a));
        }
        Ok(Command::new("timeout")
            .args(["120", "script", "-qec", &line, "/dev/null"])
            .stdin(Stdio::null())
            .output()?)
    }

    /// Runs `ctr` and fails unless it exits 0; returns stdout.
    pub fn ctr_ok(&self, args: &[&str]) -> Result<String> {
        let out = self.ctr(args)?;
        if !out.status.success() {
            bail!(
                "ctr {:?} failed ({}): {}{}\n{}",
                args,
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.log_tail()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Remembers a container id so [`Containerd::assert_clean`] checks its socket.
    pub fn track(&mut self, id: &str) -> String {
        self.ids.push(id.to_string());
        id.to_string()
    }

    /// `ctr run` with our runtime: `opts` go before the image, `cmd` after the id.
    pub fn run(&mut self, opts: &[&str], id: &str, cmd: &[&str]) -> Result<Output> {
        self.run_image(IMAGE, opts, id, cmd)
    }

    /// `ctr run` of `image` with our runtime.
    pub fn run_image(
        &mut self,
        image: &str,
        opts: &[&str],
        id: &str,
        cmd: &[&str],
    ) -> Result<Output> {
        self.track(id);
        let mut args = vec!["run", "--runtime", RUNTIME];
        args.extend_from_slice(opts);
        args.push(image);
        args.push(id);
        args.extend_from_slice(cmd);
        self.ctr(&args)
    }

    /// Starts `ctr run` with our runtime in the background (stdout and stderr captured).
    pub fn spawn_run(&mut self, opts: &[&str], id: &str, cmd: &[&str]) -> Result<Child> {
        self.spawn_run_image(IMAGE, opts, id, cmd)
    }

    /// [`Containerd::spawn_run`] of `image`.
    pub fn spawn_run_image(
        &mut self,
        image: &str,
        opts: &[&str],
        id: &str,
        cmd: &[&str],
    ) -> Result<Child> {
        self.track(id);
        let mut args = vec!["run", "--runtime", RUNTIME];
        args.extend_from_slice(opts);
        args.push(image);
        args.push(id);
        args.extend_from_slice(cmd);
        Ok(self
            .ctr_command(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?)
    }

    /// The bundle directory containerd made for container `id`.
    pub fn bundle(&self, id: &str) -> PathBuf {
        self.dir
            .path()
            .join("state/io.containerd.runtime.v2.task")
            .join(&self.namespace)
            .join(id)
    }

    /// The `ctr` of this daemon's containerd version (for subcommands that differ by version).
    pub fn ctr_binary(&self) -> PathBuf {
        self.tool("ctr")
    }

    /// Whether this daemon is containerd 2.x.
    pub fn is_v2(&self) -> bool {
        self.version == Version::V2
    }

    /// Pids of our shim processes serving this daemon.
    pub fn shim_pids(&self) -> Vec<i32> {
        let address = self.address().display().to_string();
        processes_matching(|argv| {
            argv.first().is_some_and(|a| a.ends_with(SHIM_BIN))
                && argv.iter().any(|a| a == &address)
        })
    }

    /// Asserts nothing of ours is left: no shim process, socket, runc state or mount.
    pub fn assert_clean(&self) -> Result<()> {
        for pid in self.shim_pids() {
            wait_pid_gone(pid, Duration::from_secs(20))
                .with_context(|| format!("shim process {pid} is still running"))?;
        }
        let address = self.address().display().to_string();
        for id in &self.ids {
            let sock = containerd_shim::socket_address(&address, &self.namespace, id);
            let path = sock.trim_start_matches("unix://");
            if Path::new(path).exists() {
                bail!("shim socket {path} (container {id}) is left");
            }
        }
        let runc_state = Path::new("/run/containerd/runc").join(&self.namespace);
        if let Ok(rd) = fs::read_dir(&runc_state) {
            let left: Vec<String> = rd
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            if !left.is_empty() {
                bail!("runc state left in {}: {left:?}", runc_state.display());
            }
        }
        let mounts = fs::read_to_string("/proc/self/mountinfo")?;
        let state = self.dir.path().join("state").display().to_string();
        let ours: Vec<&str> = mounts.lines().filter(|l| l.contains(&state)).collect();
        if !ours.is_empty() {
            bail!("mounts left: {ours:?}");
        }
        Ok(())
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // Best effort: tear down whatever a failed test left so later tests start clean.
        if self.child.is_some() {
            if let Ok(out) = self.ctr(&["task", "ls", "-q"]) {
                for id in String::from_utf8_lossy(&out.stdout).lines() {
                    let _ = self.ctr(&["task", "kill", "-s", "SIGKILL", id]);
                    let _ = self.ctr(&["task", "delete", "-f", id]);
                }
            }
            if let Ok(out) = self.ctr(&["containers", "ls", "-q"]) {
                for id in String::from_utf8_lossy(&out.stdout).lines() {
                    let _ = self.ctr(&["containers", "rm", id]);
                }
            }
        }
        for pid in self.shim_pids() {
            // SAFETY: killing a leftover shim of this test.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let _ = self.stop_daemon();
        // Whatever a failed test left mounted under this daemon's dir (rootfs overlays, CRI
        // sandbox shm), deepest first.
        let ours = self
            .dir
            .path()
            .to_str()
            .unwrap_or("/nonexistent")
            .to_string();
        if let Ok(m) = fs::read_to_string("/proc/self/mountinfo") {
            let mut points: Vec<&str> = m
                .lines()
                .filter_map(|l| l.split(' ').nth(4))
                .filter(|mp| mp.starts_with(&ours))
                .collect();
            points.sort_by_key(|p| std::cmp::Reverse(p.len()));
            for mp in points {
                let _ = Command::new("umount").args(["-l", mp]).output();
            }
        }
    }
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Fails naming `what` when `items` holds an entry twice (device nodes, mounts, env of a spec).
pub fn no_duplicates(what: &str, items: &[String]) -> Result<()> {
    let mut sorted = items.to_vec();
    sorted.sort();
    let n = sorted.len();
    sorted.dedup();
    if sorted.len() != n {
        bail!("duplicate {what}: {items:?}");
    }
    Ok(())
}

/// stdout of an output as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// stderr of an output as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
