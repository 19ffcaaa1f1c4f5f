//! `nvidia-shim`: the operator's CLI, built on the same gpu-core discovery and planning as the
//! shim and reading the same configuration. It is its own crate so that the per-pod shim links
//! none of its dependencies (argument parsing, TOML editing).
//!
//! Exit codes: 0 success, 1 the operation failed (or `doctor` found a problem), 2 bad usage.

mod accounting;
mod cdi;
mod configure;
mod cuda;
mod doctor;
mod info;
mod install;
mod list;
mod metrics;
mod printable;
mod suspend;
mod top;

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};
use nvidia_shim_config::ShimConfig;

/// Exit code for an operation that failed.
const EXIT_FAILED: i32 = 1;
/// Exit code for bad usage.
const EXIT_USAGE: i32 = 2;

/// An error with the exit code it maps to.
#[derive(Debug)]
pub struct CliError {
    /// Process exit code.
    pub code: i32,
    /// Message for stderr.
    pub message: String,
}

impl CliError {
    /// A failed operation.
    pub fn failed(m: impl Into<String>) -> Self {
        Self {
            code: EXIT_FAILED,
            message: m.into(),
        }
    }
    /// Bad usage.
    pub fn usage(m: impl Into<String>) -> Self {
        Self {
            code: EXIT_USAGE,
            message: m.into(),
        }
    }
}

/// Result of a command.
pub type CliResult = Result<(), CliError>;

/// Operator CLI for containerd-shim-nvidia-v2.
///
/// The shim config is --config FILE, else $NVIDIA_SHIM_CONFIG, else /etc/nvidia-shim/config.toml,
/// else defaults. Exit codes: 0 ok, 1 failed (doctor: a problem was found), 2 bad usage.
#[derive(Parser)]
#[command(name = "nvidia-shim", version)]
struct Cli {
    /// The shim config file (as the shim's ConfigPath option).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The driver, its libraries and the GPUs, as the shim sees them.
    Info(info::InfoArgs),
    /// What a container with this request would get.
    List(list::ListArgs),
    /// CDI specs for runtimes other than this shim.
    #[command(subcommand)]
    Cdi(cdi::CdiCommand),
    /// Add or remove the `nvidia` runtime in a containerd config.
    #[command(subcommand)]
    Containerd(configure::ContainerdCommand),
    /// Check the host end to end and say how to fix what is wrong.
    Doctor(doctor::DoctorArgs),
    /// Install on this node: binaries, shim config, CDI spec, containerd config (restarted
    /// only if it changed). The DaemonSet's entrypoint.
    Install(install::InstallArgs),
    /// Take off what install added and restore containerd's config.
    Uninstall(install::UninstallArgs),
    /// Running GPU containers, their pods and GPUs, and their processes' GPU memory and use.
    Top(top::TopArgs),
    /// The `top` figures in the Prometheus text format (for a textfile collector).
    Metrics(metrics::MetricsArgs),
    /// Suspend or resume a container's CUDA processes (the shim runs this around Pause/Resume).
    #[command(subcommand)]
    Cuda(suspend::CudaCommand),
}

/// Loads the shim config the way the shim does, with `--config` in place of ConfigPath.
fn load_config(path: Option<&Path>) -> Result<(ShimConfig, String), CliError> {
    let env = std::env::var_os(nvidia_shim_config::CONFIG_ENV).map(PathBuf::from);
    ShimConfig::load(path, None, env.as_deref())
        .map(|(c, s)| (c, s.to_string()))
        .map_err(|e| CliError::failed(e.to_string()))
}

fn main() {
    let cli = Cli::parse();
    let config = cli.config.as_deref();
    let r = match cli.command {
        Command::Info(a) => info::run(config, a),
        Command::List(a) => list::run(config, a),
        Command::Cdi(c) => cdi::run(config, c),
        Command::Containerd(c) => configure::run(c),
        Command::Doctor(a) => doctor::run(config, a),
        Command::Install(a) => install::install(a),
        Command::Uninstall(a) => install::uninstall(a),
        Command::Top(a) => top::run(config, a),
        Command::Metrics(a) => metrics::run(config, a),
        Command::Cuda(c) => suspend::run(c),
    };
    if let Err(e) = r {
        eprintln!("nvidia-shim: {}", e.message);
        std::process::exit(e.code);
    }
}
