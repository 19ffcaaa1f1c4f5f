//! `nvidia-shim install` / `uninstall`: puts the shim on a node (binaries, shim config, CDI spec,
//! containerd config) and takes it off again, as the DaemonSet's entrypoint or by hand.
//!
//! Every step says what it did in one line. Nothing is rewritten that already holds the right
//! bytes, and containerd is restarted only when its config changed, so a second install is a
//! no-op. What install added is recorded next to the binaries; uninstall removes exactly that and
//! puts containerd's config back byte for byte when nobody else changed it since.

mod containerd;
mod host;
mod restart;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use gpu_core::config::DEFAULT_CONFIG_PATH;
use gpu_core::discover::Host;
use gpu_core::ShimConfig;

use crate::configure::DEFAULT_CONTAINERD_CONFIG;
use crate::{CliError, CliResult};
use host::{read_optional, remove, replace, same_content, ConfigRecord, HostRoot, Record};
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

/// Creates host directory `dir` and its missing ancestors, recording each one made.
fn ensure_dir(root: &HostRoot, dir: &Path, rec: &mut Record) -> Result<(), CliError> {
    let missing: Vec<&Path> = dir
        .ancestors()
        .take_while(|d| !root.local(d).exists())
        .collect();
    for d in missing.into_iter().rev() {
        fs::create_dir(root.local(d))
            .map_err(|e| CliError::failed(format!("creating {}: {e}", d.display())))?;
        rec.dirs.push(d.display().to_string());
    }
    Ok(())
}

fn parent(p: &Path) -> &Path {
    p.parent().unwrap_or(Path::new("/"))
}

fn install_binaries(a: &InstallArgs, root: &HostRoot, rec: &mut Record) -> CliResult {
    let src_dir = match &a.source_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .ok_or_else(|| {
                CliError::failed("cannot tell this executable's directory; pass --source-dir")
            })?,
    };
    ensure_dir(root, &a.common.bin_dir, rec)?;
    let mut done = Vec::new();
    for name in [SHIM_BIN, CLI_BIN] {
        let src = src_dir.join(name);
        let bytes = fs::read(&src).map_err(|e| {
            CliError::failed(format!(
                "reading {} ({e}); pass --source-dir DIR holding {SHIM_BIN} and {CLI_BIN}",
                src.display()
            ))
        })?;
        let host_dst = a.common.bin_dir.join(name);
        let dst = root.local(&host_dst);
        if same_content(&dst, &bytes) {
            continue;
        }
        if dst.exists() {
            // The running version stays reachable for rollback; running shims keep their inode.
            let prev = dst.with_extension("previous");
            remove(&prev)?;
            fs::hard_link(&dst, &prev).map_err(|e| {
                CliError::failed(format!(
                    "keeping {} as {}: {e}",
                    dst.display(),
                    prev.display()
                ))
            })?;
            rec.own(&host_dst.with_extension("previous"));
        }
        replace(&dst, &bytes, 0o755)?;
        rec.own(&host_dst);
        done.push(name);
    }
    if done.is_empty() {
        step(
            "binaries",
            format!("unchanged in {}", a.common.bin_dir.display()),
        );
    } else {
        step(
            "binaries",
            format!(
                "installed {} into {} (a replaced one is kept as <name>.previous)",
                done.join(", "),
                a.common.bin_dir.display()
            ),
        );
    }
    Ok(())
}

fn shim_config_text(a: &InstallArgs) -> String {
    format!(
        "# Written by `nvidia-shim install`, which rewrites it on upgrade and removes it on uninstall.\n\
         # Replace it with a file of your own to keep your settings (install then leaves it alone);\n\
         # every key is listed in deploy/nvidia-shim.toml.\n\
         [driver]\nroot = {:?}\n",
        a.driver_root.display().to_string()
    )
}

fn install_shim_config(a: &InstallArgs, root: &HostRoot, rec: &mut Record) -> CliResult {
    let local = root.local(&a.shim_config);
    if local.exists() && !rec.owns(&a.shim_config) {
        step(
            "shim config",
            format!("kept {} (not written by install)", a.shim_config.display()),
        );
        return Ok(());
    }
    let text = shim_config_text(a);
    ShimConfig::parse(&text, "the generated shim config")
        .map_err(|e| CliError::failed(format!("shim config: {e}")))?;
    ensure_dir(root, parent(&a.shim_config), rec)?;
    let changed = replace(&local, text.as_bytes(), 0o644)?;
    rec.own(&a.shim_config);
    step(
        "shim config",
        format!(
            "{} {}",
            if changed { "wrote" } else { "unchanged" },
            a.shim_config.display()
        ),
    );
    Ok(())
}

/// Replaces every string in `v` that names a path under the host root by the host's path.
fn rebase(v: &mut serde_json::Value, root: &HostRoot) {
    match v {
        serde_json::Value::String(s) => {
            if let Some(h) = root.host_path(s) {
                *s = h;
            }
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(|x| rebase(x, root)),
        serde_json::Value::Object(o) => o.values_mut().for_each(|x| rebase(x, root)),
        _ => {}
    }
}

fn install_cdi(a: &InstallArgs, root: &HostRoot, rec: &mut Record) -> CliResult {
    if a.no_cdi {
        step("cdi spec", "skipped (--no-cdi)");
        return Ok(());
    }
    let local_cfg = root.local(&a.shim_config);
    let cfg = ShimConfig::from_file(&local_cfg)
        .map_err(|e| CliError::failed(format!("cdi spec: {e}")))?;
    let mut d = cfg.driver.clone();
    for p in [&mut d.root, &mut d.dev_root, &mut d.proc_root] {
        *p = root.local(p);
    }
    d.nvml_library = d.nvml_library.map(|p| root.local(&p));
    // Discovery here sees host paths under the host root; its cache must not land on the host,
    // nor stay anywhere after this run.
    let cache = std::env::temp_dir().join(format!("nvidia-shim-install-{}", std::process::id()));
    d.cache_dir = cache.clone();
    let found = Host::new(d).discover_now();
    let _ = fs::remove_dir_all(&cache);
    let inv = found.map_err(|e| {
        CliError::failed(format!(
            "cdi spec: no driver under {} (driver root from {}): {e}; fix [driver] root there \
             (or --driver-root), or pass --no-cdi",
            cfg.driver.root.display(),
            a.shim_config.display()
        ))
    })?;
    let mut spec = crate::cdi::generate(&inv);
    rebase(&mut spec, root);
    let text =
        serde_yaml::to_string(&spec).map_err(|e| CliError::failed(format!("cdi spec: {e}")))?;
    ensure_dir(root, parent(&a.cdi_spec), rec)?;
    let changed = replace(&root.local(&a.cdi_spec), text.as_bytes(), 0o644)?;
    rec.own(&a.cdi_spec);
    step(
        "cdi spec",
        format!(
            "{} {} ({} GPUs, driver {})",
            if changed { "wrote" } else { "unchanged" },
            a.cdi_spec.display(),
            inv.gpus.len(),
            inv.driver_version
        ),
    );
    Ok(())
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
