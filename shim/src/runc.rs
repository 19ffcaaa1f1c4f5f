//! A small runc client. Every call goes through the reaper, reads runc's output concurrently (a runc
//! writing more than a pipe's worth must not block), and turns a failure into the message of the
//! last `"level":"error"` line runc wrote to its JSON log during that call.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::delegate::Delegate;
use crate::reaper;

/// How to call runc for one container.
#[derive(Clone, Debug)]
pub struct Runc {
    /// Binary name or path.
    pub binary: String,
    /// State root, namespace included.
    pub root: PathBuf,
    /// `--systemd-cgroup`.
    pub systemd_cgroup: bool,
    /// JSON log file (`<bundle>/log.json`).
    pub log: PathBuf,
}

/// A runc failure, classified once here from runc's own words (its last log error or stderr) so
/// callers match on the kind, never on the text.
#[derive(Debug, thiserror::Error)]
pub enum RuncError {
    /// runc does not know the container (never created, or already deleted).
    #[error("{op}: {msg}")]
    NotExist {
        /// The delegate and its command, e.g. `crun create`.
        op: String,
        /// runc's message.
        msg: String,
    },
    /// The container's process is not running (already exited).
    #[error("{op}: {msg}")]
    NotRunning {
        /// The delegate and its command, e.g. `crun create`.
        op: String,
        /// runc's message.
        msg: String,
    },
    /// Any other failure runc reported.
    #[error("{op}: {msg}")]
    Failed {
        /// The delegate and its command, e.g. `crun create`.
        op: String,
        /// runc's message.
        msg: String,
    },
    /// runc could not be run, or its output not read.
    #[error("{0}")]
    Spawn(String),
}

impl RuncError {
    /// Sorts runc's message for command `op` into a kind.
    pub fn classify(op: &str, msg: String) -> Self {
        let lower = msg.to_ascii_lowercase();
        let op = op.to_string();
        if lower.contains("does not exist") || lower.contains("not exist") {
            RuncError::NotExist { op, msg }
        } else if [
            "not running",
            "process already finished",
            "no such process",
            "container not running",
        ]
        .iter()
        .any(|g| lower.contains(g))
        {
            RuncError::NotRunning { op, msg }
        } else {
            RuncError::Failed { op, msg }
        }
    }

    /// Whether the container or its process is already gone.
    pub fn is_gone(&self) -> bool {
        matches!(
            self,
            RuncError::NotExist { .. } | RuncError::NotRunning { .. }
        )
    }
}

/// The stdio runc (and through it the container process) gets.
#[derive(Default)]
pub struct RuncIo {
    /// stdin; `None` is /dev/null.
    pub stdin: Option<OwnedFd>,
    /// stdout; `None` is /dev/null.
    pub stdout: Option<OwnedFd>,
    /// stderr; `None` is /dev/null.
    pub stderr: Option<OwnedFd>,
}

/// Options of `runc create` and `runc exec`.
pub struct CreateOpts<'a> {
    /// `--pid-file`.
    pub pid_file: &'a Path,
    /// `--console-socket`.
    pub console_socket: Option<&'a Path>,
    /// `--no-pivot`.
    pub no_pivot: bool,
    /// `--no-new-keyring`.
    pub no_new_keyring: bool,
}

fn to_stdio(fd: Option<OwnedFd>) -> Stdio {
    fd.map(Stdio::from).unwrap_or_else(Stdio::null)
}

impl Runc {
    /// The delegate's name for messages: `runc`, `crun`, … (the binary's file name).
    pub fn name(&self) -> &str {
        std::path::Path::new(&self.binary)
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or(&self.binary)
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--root")
            .arg(&self.root)
            .arg("--log")
            .arg(&self.log)
            .arg("--log-format")
            .arg("json");
        if self.systemd_cgroup {
            cmd.arg("--systemd-cgroup");
        }
        // runc must not talk to systemd's notify socket of whoever started containerd.
        cmd.env_remove("NOTIFY_SOCKET");
        cmd
    }

    fn log_len(&self) -> u64 {
        std::fs::metadata(&self.log).map(|m| m.len()).unwrap_or(0)
    }

    /// The message of the last error line written to the log after `from`.
    fn last_error(&self, from: u64) -> Option<String> {
        let mut f = File::open(&self.log).ok()?;
        f.seek(SeekFrom::Start(from)).ok()?;
        let mut text = String::new();
        f.read_to_string(&mut text).ok()?;
        text.lines().rev().find_map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).ok()?;
            if v.get("level")?.as_str()? == "error" {
                Some(v.get("msg")?.as_str()?.to_string())
            } else {
                None
            }
        })
    }

    /// Runs the delegate with `args`; returns stdout. `io` replaces the default stdio (null
    /// stdin, piped stdout and stderr).
    #[tracing::instrument(name = "runc", level = "debug", skip_all, fields(op = args.first().copied().unwrap_or_default(), arg = args.last().copied().unwrap_or_default()))]
    async fn run(&self, args: &[&str], io: Option<RuncIo>) -> Result<Vec<u8>, RuncError> {
        let from = self.log_len();
        let mut cmd = self.command();
        cmd.args(args);
        let (out_r, err_r) = match io {
            Some(io) => {
                cmd.stdin(to_stdio(io.stdin))
                    .stdout(to_stdio(io.stdout))
                    .stderr(to_stdio(io.stderr));
                (None, None)
            }
            None => {
                let (or, ow) = pipe()?;
                let (er, ew) = pipe()?;
                cmd.stdin(Stdio::null())
                    .stdout(Stdio::from(ow))
                    .stderr(Stdio::from(ew));
                (Some(or), Some(er))
            }
        };
        let (child, exit) = reaper::spawn(&mut cmd)
            .map_err(|e| RuncError::Spawn(format!("running {}: {e}", self.binary)))?;
        drop(cmd);
        let (stdout, stderr) = tokio::join!(reaper::read_all(out_r), reaper::read_all(err_r));
        let code = reaper::wait(exit).await;
        drop(child);
        if code != 0 {
            let msg = self
                .last_error(from)
                .or_else(|| {
                    Some(String::from_utf8_lossy(&stderr).trim().to_string())
                        .filter(|s| !s.is_empty())
                })
                .unwrap_or_else(|| format!("exit status {code}"));
            return Err(RuncError::classify(
                &format!("{} {}", self.name(), args.first().copied().unwrap_or("")),
                msg,
            ));
        }
        Ok(stdout)
    }

    /// `runc delete --force`, blocking: for the `delete` action, which runs without a runtime or
    /// reaper after the shim that owned the container died.
    pub fn delete_now(&self, id: &str) -> Result<(), RuncError> {
        let from = self.log_len();
        let out = self
            .command()
            .args(["delete", "--force", id])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| RuncError::Spawn(format!("running {}: {e}", self.binary)))?;
        if out.status.success() {
            return Ok(());
        }
        let msg = self
            .last_error(from)
            .unwrap_or_else(|| String::from_utf8_lossy(&out.stderr).trim().to_string());
        Err(RuncError::classify(&format!("{} delete", self.name()), msg))
    }

    /// `runc features` (JSON), for `-info`.
    pub async fn features(&self) -> Result<Vec<u8>, RuncError> {
        self.run(&["features"], None).await
    }
}

/// runc's command line (crun speaks the same one).
#[async_trait::async_trait]
impl Delegate for Runc {
    /// `runc create`.
    async fn create(
        &self,
        id: &str,
        bundle: &Path,
        opts: CreateOpts<'_>,
        io: RuncIo,
    ) -> Result<(), RuncError> {
        let bundle = bundle.to_string_lossy();
        let pid_file = opts.pid_file.to_string_lossy();
        let mut args = vec!["create", "--bundle", &bundle, "--pid-file", &pid_file];
        let console;
        if let Some(s) = opts.console_socket {
            console = s.to_string_lossy();
            args.extend(["--console-socket", &console]);
        }
        if opts.no_pivot {
            args.push("--no-pivot");
        }
        if opts.no_new_keyring {
            args.push("--no-new-keyring");
        }
        args.push(id);
        self.run(&args, Some(io)).await.map(drop)
    }

    /// `runc exec --detach`.
    async fn exec(
        &self,
        id: &str,
        process: &Path,
        opts: CreateOpts<'_>,
        io: RuncIo,
    ) -> Result<(), RuncError> {
        let process = process.to_string_lossy();
        let pid_file = opts.pid_file.to_string_lossy();
        let mut args = vec![
            "exec",
            "--detach",
            "--process",
            &process,
            "--pid-file",
            &pid_file,
        ];
        let console;
        if let Some(s) = opts.console_socket {
            console = s.to_string_lossy();
            args.extend(["--console-socket", &console]);
        }
        args.push(id);
        self.run(&args, Some(io)).await.map(drop)
    }

    /// `runc start`.
    async fn start(&self, id: &str) -> Result<(), RuncError> {
        self.run(&["start", id], None).await.map(drop)
    }

    /// `runc kill [--all]`.
    async fn kill(&self, id: &str, signal: u32, all: bool) -> Result<(), RuncError> {
        let sig = signal.to_string();
        let mut args = vec!["kill"];
        if all {
            args.push("--all");
        }
        args.extend([id, &sig]);
        self.run(&args, None).await.map(drop)
    }

    /// `runc delete [--force]`.
    async fn delete(&self, id: &str, force: bool) -> Result<(), RuncError> {
        let mut args = vec!["delete"];
        if force {
            args.push("--force");
        }
        args.push(id);
        self.run(&args, None).await.map(drop)
    }

    /// `runc pause`.
    async fn pause(&self, id: &str) -> Result<(), RuncError> {
        self.run(&["pause", id], None).await.map(drop)
    }

    /// `runc resume`.
    async fn resume(&self, id: &str) -> Result<(), RuncError> {
        self.run(&["resume", id], None).await.map(drop)
    }

    /// `runc update --resources -` with JSON `LinuxResources`.
    async fn update(&self, id: &str, resources_json: Vec<u8>) -> Result<(), RuncError> {
        // A file, not stdin: runc and crun both read `--resources FILE`, not both read `-`.
        let file = self.log.with_file_name("update-resources.json");
        std::fs::write(&file, &resources_json)
            .map_err(|e| RuncError::Spawn(format!("writing {}: {e}", file.display())))?;
        let path = file.display().to_string();
        let res = self.run(&["update", "--resources", &path, id], None).await;
        let _ = std::fs::remove_file(&file);
        res.map(drop)
    }

    /// `runc ps --format json`; runc prints `null` for an empty list.
    async fn ps(&self, id: &str) -> Result<Vec<u32>, RuncError> {
        let out = self.run(&["ps", "--format", "json", id], None).await?;
        let pids: Option<Vec<u32>> = serde_json::from_slice(&out)
            .map_err(|e| RuncError::Spawn(format!("{} ps output: {e}", self.name())))?;
        Ok(pids.unwrap_or_default())
    }
}

fn pipe() -> Result<(OwnedFd, OwnedFd), RuncError> {
    reaper::pipe().map_err(|e| RuncError::Spawn(format!("pipe: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_name_the_delegate_and_their_kind() {
        let crun = Runc {
            binary: "/usr/local/bin/crun".into(),
            root: "/run/x".into(),
            systemd_cgroup: false,
            log: "/tmp/log.json".into(),
        };
        assert_eq!(crun.name(), "crun");
        let e = RuncError::classify(
            &format!("{} create", crun.name()),
            "exec format error".into(),
        );
        assert_eq!(e.to_string(), "crun create: exec format error");
        assert!(matches!(
            RuncError::classify("crun delete", "container `x` does not exist".into()),
            RuncError::NotExist { .. }
        ));
        assert!(RuncError::classify("runc kill", "container not running".into()).is_gone());
    }
}
