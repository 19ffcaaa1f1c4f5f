//! `nvidia-shim install` / `uninstall`: puts the shim on a node (binaries, shim config, CDI spec,
//! containerd config) and takes it off again, as the DaemonSet's entrypoint or by hand.
//!
//! Every step says what it did in one line. Nothing is rewritten that already holds the right
//! bytes, and containerd is restarted only when its config changed, so a second install is a
//! no-op. What install added is recorded next to the binaries; uninstall removes exactly that and
//! puts containerd's config back byte for byte when nobody else changed it since.

mod containerd;
mod files;
mod host;
mod restart;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nvidia_shim_config::DEFAULT_CONFIG_PATH;

use crate::configure::DEFAULT_CONTAINERD_CONFIG;
use crate::{CliError, CliResult};
use files::{ensure_dir, install_binaries, install_cdi, install_shim_config, parent};
use host::{read_optional, remove, replace, ConfigRecord, HostRoot, Record};
pub use restart::Method;

const SHIM_BIN: &str = "containerd-shim-nvidia-v2";
const CLI_BIN: &str = "nvidia-shim";

/// Options shared by install and uninstall.
#[derive(clap::Args)]
pub struct Common {
    /// Where the host's `/` is mounted (the DaemonSet mounts it at /host).
    #[arg(long, value_name = "DIR", default_value = "/")]
    host_root: PathBuf,
    /// Host directory for the binaries (the install record lives there too).
    #[arg(long, value_name = "DIR", default_value = "/usr/local/nvidia-shim/bin")]
    bin_dir: PathBuf,
    /// How to restart containerd when its config changed.
    #[arg(long, value_enum, default_value = "signal")]
    restart: Method,
    /// containerd's socket (host path), to find and watch the daemon.
    #[arg(
        long,
        value_name = "PATH",
        default_value = "/run/containerd/containerd.sock"
    )]
    containerd_socket: PathBuf,
    /// Seconds to wait for containerd to stop and to answer again.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    restart_timeout: u64,
}

/// `install` options. Paths are as the host sees them.
#[derive(clap::Args)]
pub struct InstallArgs {
    #[command(flatten)]
    common: Common,
    /// Where the binaries to install are; by default this executable's directory.
    #[arg(long, value_name = "DIR")]
    source_dir: Option<PathBuf>,
    /// The driver root written into a new shim config ("/", "/usr/local/nvidia" on GKE,
    /// "/run/nvidia/driver" for a driver container).
    #[arg(long, value_name = "DIR", default_value = "/")]
    driver_root: PathBuf,
    /// The shim config; written unless a file install did not write is already there.
    #[arg(long, value_name = "FILE", default_value = DEFAULT_CONFIG_PATH)]
    shim_config: PathBuf,
    /// containerd's main config.
    #[arg(long, value_name = "FILE", default_value = DEFAULT_CONTAINERD_CONFIG)]
    containerd_config: PathBuf,
    /// Drop-in directory for config version 3 (default: the one `imports` already names, else
    /// conf.d next to the main config).
    #[arg(long, value_name = "DIR")]
    drop_in_dir: Option<PathBuf>,
    /// Where to write the CDI spec.
    #[arg(long, value_name = "FILE", default_value = "/etc/cdi/nvidia.yaml")]
    cdi_spec: PathBuf,
    /// Do not write a CDI spec.
    #[arg(long)]
    no_cdi: bool,
    /// Make `nvidia` containerd's default runtime (never done unasked).
    #[arg(long)]
    set_default: bool,
    /// After installing, wait for SIGTERM (a DaemonSet's container must keep running).
    #[arg(long)]
    wait: bool,
    /// With --wait: uninstall when SIGTERM comes.
    #[arg(long, requires = "wait")]
    uninstall_on_exit: bool,
}

/// `uninstall` options.
#[derive(clap::Args)]
pub struct UninstallArgs {
    #[command(flatten)]
    common: Common,
}

fn step(name: &str, what: impl std::fmt::Display) {
    println!("{name}: {what}");
}

fn utf8(b: Option<Vec<u8>>, p: &Path) -> Result<Option<String>, CliError> {
    b.map(|b| {
        String::from_utf8(b).map_err(|_| {
            CliError::failed(format!("{} is not UTF-8 text; left as it is", p.display()))
        })
    })
    .transpose()
}

fn runtime(a: &InstallArgs) -> containerd::Runtime {
    containerd::Runtime {
        shim_config: a.shim_config.display().to_string(),
        runtime_path: a.common.bin_dir.join(SHIM_BIN).display().to_string(),
        set_default: a.set_default,
    }
}

/// Returns whether containerd's config changed.
fn install_containerd(
    a: &InstallArgs,
    root: &HostRoot,
    rec: &mut Record,
    bin_local: &Path,
) -> Result<bool, CliError> {
    let main = &a.containerd_config;
    let main_local = root.local(main);
    let current = utf8(read_optional(&main_local)?, main)?;
    let edit = containerd::plan(
        main,
        current.as_deref(),
        &runtime(a),
        a.drop_in_dir.as_deref(),
    )?;
    let mut cr = match rec.containerd.take() {
        Some(cr) if Path::new(&cr.main) == main => cr,
        Some(cr) => {
            return Err(CliError::failed(format!(
                "install configured {} before, not {}; run `nvidia-shim uninstall` first",
                cr.main,
                main.display()
            )))
        }
        None => ConfigRecord {
            main: main.display().to_string(),
            original: current.clone(),
            ..Default::default()
        },
    };
    if edit.import_added.is_some() {
        cr.import_added = edit.import_added.clone();
    }
    cr.written = Some(edit.main.clone());
    if let Some((p, _)) = &edit.drop_in {
        cr.drop_in = Some(p.display().to_string());
    }
    // The record (with the original bytes) is on disk before the first byte of the config changes.
    rec.containerd = Some(cr);
    rec.save(bin_local)?;
    let mut changed = false;
    if let Some((p, text)) = &edit.drop_in {
        ensure_dir(root, parent(p), rec)?;
        changed |= replace(&root.local(p), text.as_bytes(), 0o644)?;
    }
    if current.as_deref() != Some(edit.main.as_str()) {
        ensure_dir(root, parent(main), rec)?;
        changed |= replace(&main_local, edit.main.as_bytes(), 0o644)?;
    }
    let how = match &edit.drop_in {
        Some((p, _)) => format!(
            "version {}: runtime in drop-in {}",
            edit.version,
            p.display()
        ),
        None => format!("version {}: runtime added in place", edit.version),
    };
    step(
        "containerd config",
        format!(
            "{} {} ({how}{})",
            if changed { "updated" } else { "unchanged" },
            main.display(),
            if a.set_default {
                "; default runtime"
            } else {
                ""
            }
        ),
    );
    Ok(changed)
}

fn restart_if(changed: bool, c: &Common, root: &HostRoot) -> CliResult {
    if !changed {
        step("containerd", "not restarted (config unchanged)");
        return Ok(());
    }
    let msg = restart::restart(
        c.restart,
        root,
        &c.containerd_socket,
        Duration::from_secs(c.restart_timeout),
    )?;
    step("containerd", msg);
    Ok(())
}

/// Blocks until SIGTERM or SIGINT.
fn wait_for_termination() -> CliResult {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set.thread_block()
        .map_err(|e| CliError::failed(format!("blocking signals: {e}")))?;
    step("waiting", "for SIGTERM");
    let sig = set
        .wait()
        .map_err(|e| CliError::failed(format!("waiting for signals: {e}")))?;
    step("signal", sig);
    Ok(())
}

/// Runs `install`.
pub fn install(a: InstallArgs) -> CliResult {
    let root = HostRoot::new(&a.common.host_root);
    let bin_local = root.local(&a.common.bin_dir);
    let mut rec = Record::load(&bin_local)?;
    // A containerd config this cannot edit fails the install before anything is written.
    let main = &a.containerd_config;
    let current = utf8(read_optional(&root.local(main))?, main)?;
    containerd::plan(
        main,
        current.as_deref(),
        &runtime(&a),
        a.drop_in_dir.as_deref(),
    )?;
    install_binaries(&a, &root, &mut rec)?;
    rec.save(&bin_local)?;
    install_shim_config(&a, &root, &mut rec)?;
    install_cdi(&a, &root, &mut rec)?;
    rec.save(&bin_local)?;
    let changed = install_containerd(&a, &root, &mut rec, &bin_local)?;
    rec.save(&bin_local)?;
    restart_if(changed, &a.common, &root)?;
    step("install", "done");
    if a.wait {
        wait_for_termination()?;
        if a.uninstall_on_exit {
            return uninstall(UninstallArgs { common: a.common });
        }
    }
    Ok(())
}

/// Puts containerd's config back; returns whether it changed.
fn uninstall_containerd(cr: &ConfigRecord, root: &HostRoot) -> Result<bool, CliError> {
    let mut changed = false;
    if let Some(p) = &cr.drop_in {
        changed |= remove(&root.local(Path::new(p)))?;
    }
    let main = Path::new(&cr.main);
    let local = root.local(main);
    let current = utf8(read_optional(&local)?, main)?;
    if current.is_some() && current == cr.written {
        match &cr.original {
            Some(t) => changed |= replace(&local, t.as_bytes(), 0o644)?,
            None => changed |= remove(&local)?,
        }
        step(
            "containerd config",
            format!("restored {} as it was before install", main.display()),
        );
    } else if let Some(text) = current {
        match containerd::strip(main, &text, cr.import_added.as_deref())? {
            Some(new) => {
                changed |= replace(&local, new.as_bytes(), 0o644)?;
                step(
                    "containerd config",
                    format!(
                        "{} changed since install: took out only the nvidia runtime",
                        main.display()
                    ),
                );
            }
            None => step(
                "containerd config",
                format!("{} holds no nvidia runtime", main.display()),
            ),
        }
    }
    Ok(changed)
}

/// Runs `uninstall`.
pub fn uninstall(a: UninstallArgs) -> CliResult {
    let c = &a.common;
    let root = HostRoot::new(&c.host_root);
    let bin_local = root.local(&c.bin_dir);
    if !Record::path(&bin_local).exists() {
        step(
            "uninstall",
            format!(
                "nothing to do: no install record in {}",
                c.bin_dir.display()
            ),
        );
        return Ok(());
    }
    let rec = Record::load(&bin_local)?;
    let changed = match &rec.containerd {
        Some(cr) => uninstall_containerd(cr, &root)?,
        None => false,
    };
    restart_if(changed, c, &root)?;
    let mut removed = 0;
    for f in &rec.files {
        removed += usize::from(remove(&root.local(Path::new(f)))?);
    }
    remove(&Record::path(&bin_local))?;
    for d in rec.dirs.iter().rev() {
        // Only directories install made, and only when empty.
        let _ = fs::remove_dir(root.local(Path::new(d)));
    }
    step("files", format!("removed {removed} file(s) install added"));
    step("uninstall", "done");
    Ok(())
}
