//! `nvidia-shim`: the operator's CLI, built on the same gpu-core discovery and planning as the
//! shim and reading the same configuration.
//!
//! Exit codes: 0 success, 1 the operation failed (or `doctor` found a problem), 2 bad usage.

pub mod cdi;
pub mod configure;
pub mod doctor;
pub mod info;
pub mod list;

use std::path::PathBuf;

use gpu_core::ShimConfig;

/// Exit code for an operation that failed.
pub const EXIT_FAILED: i32 = 1;
/// Exit code for bad usage.
pub const EXIT_USAGE: i32 = 2;

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

/// Usage text.
pub const USAGE: &str = "\
nvidia-shim — operator CLI for containerd-shim-nvidia-v2

USAGE:
  nvidia-shim [--config FILE] info [--json] [--refresh]
  nvidia-shim [--config FILE] list [--env K=V]... [--annotation K=V]... [--json]
  nvidia-shim [--config FILE] cdi generate [--output FILE] [--format yaml|json]
  nvidia-shim containerd configure [--config PATH] [--shim-config FILE] [--set-default] [--dry-run]
  nvidia-shim containerd unconfigure [--config PATH] [--dry-run]
  nvidia-shim [--config FILE] doctor [--fix] [--json] [--containerd-config PATH]

The shim config is FILE, else $NVIDIA_SHIM_CONFIG, else /etc/nvidia-shim/config.toml, else defaults.
Exit codes: 0 ok, 1 failed (doctor: a problem was found), 2 bad usage.
";

/// Parsed command line: global options and the rest.
pub struct Args {
    /// `--config`.
    pub config: Option<PathBuf>,
    /// Remaining words.
    pub rest: Vec<String>,
}

impl Args {
    /// Takes the value of `--flag V` or `--flag=V` out of the rest, repeatable.
    pub fn take_values(&mut self, flag: &str) -> Result<Vec<String>, CliError> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < self.rest.len() {
            if self.rest[i] == flag {
                let v = self
                    .rest
                    .get(i + 1)
                    .cloned()
                    .ok_or_else(|| CliError::usage(format!("{flag} needs a value")))?;
                out.push(v);
                self.rest.drain(i..i + 2);
            } else if let Some(v) = self.rest[i].strip_prefix(&format!("{flag}=")) {
                out.push(v.to_string());
                self.rest.remove(i);
            } else {
                i += 1;
            }
        }
        Ok(out)
    }

    /// Takes one optional value.
    pub fn take_value(&mut self, flag: &str) -> Result<Option<String>, CliError> {
        let mut v = self.take_values(flag)?;
        if v.len() > 1 {
            return Err(CliError::usage(format!("{flag} given more than once")));
        }
        Ok(v.pop())
    }

    /// Takes a boolean flag.
    pub fn take_flag(&mut self, flag: &str) -> bool {
        let before = self.rest.len();
        self.rest.retain(|a| a != flag);
        before != self.rest.len()
    }

    /// Fails on anything left over.
    pub fn done(&self) -> CliResult {
        match self.rest.first() {
            Some(a) => Err(CliError::usage(format!("unexpected argument {a:?}"))),
            None => Ok(()),
        }
    }
}

/// Loads the shim config the way the shim does, with `--config` in place of ConfigPath.
pub fn load_config(path: Option<&PathBuf>) -> Result<(ShimConfig, String), CliError> {
    let env = std::env::var_os(gpu_core::config::CONFIG_ENV).map(PathBuf::from);
    ShimConfig::load(path.map(|p| p.as_path()), None, env.as_deref())
        .map(|(c, s)| (c, s.to_string()))
        .map_err(|e| CliError::failed(e.to_string()))
}

/// Runs the CLI on `argv` (without the program name); returns the exit code.
pub fn main(argv: Vec<String>) -> i32 {
    let mut args = Args {
        config: None,
        rest: argv,
    };
    let r = (|| -> CliResult {
        // `--config` before the command is the shim config; after `containerd` it names
        // containerd's own config file, elsewhere it is the shim config again.
        while args.rest.first().is_some_and(|a| a.starts_with("--config")) {
            let mut head = Args {
                config: None,
                rest: args.rest.drain(..1).collect(),
            };
            if head.rest[0] == "--config" && !args.rest.is_empty() {
                head.rest.push(args.rest.remove(0));
            }
            args.config = head.take_value("--config")?.map(PathBuf::from);
        }
        if args.take_flag("--help") || args.take_flag("-h") || args.rest.is_empty() {
            print!("{USAGE}");
            return Ok(());
        }
        let cmd = args.rest.remove(0);
        if cmd != "containerd" {
            if let Some(c) = args.take_value("--config")? {
                args.config = Some(PathBuf::from(c));
            }
        }
        match cmd.as_str() {
            "info" => info::run(&mut args),
            "list" => list::run(&mut args),
            "cdi" => cdi::run(&mut args),
            "containerd" => configure::run(&mut args),
            "doctor" => doctor::run(&mut args),
            "version" | "--version" | "-v" => {
                println!("nvidia-shim {}", env!("CARGO_PKG_VERSION"));
                Ok(())
            }
            other => Err(CliError::usage(format!(
                "unknown command {other:?} (expected info, list, cdi, containerd or doctor)"
            ))),
        }
    })();
    match r {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("nvidia-shim: {}", e.message);
            if e.code == EXIT_USAGE {
                eprint!("\n{USAGE}");
            }
            e.code
        }
    }
}
