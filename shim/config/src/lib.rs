//! The shim's TOML configuration file and where it is found.
//!
//! Order: runtime options `ConfigPath`, else `ConfigBody`, else the file named by `NVIDIA_SHIM_CONFIG`,
//! else `/etc/nvidia-shim/config.toml`, else defaults. Unknown keys are errors that name the key, so a
//! typo never silently falls back to a default.

#![warn(missing_docs)]

use std::path::{Path, PathBuf};

pub use gpu_core::config::{CoreConfig, DriverConfig, GpuConfig};
use serde::{Deserialize, Serialize};

/// Largest configuration file read (a full one with comments is about 2 KiB).
pub const CONFIG_LIMIT: u64 = 1 << 20;
/// Default location of the configuration file.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/nvidia-shim/config.toml";
/// Environment variable naming a configuration file (containerd passes its environment to shims).
pub const CONFIG_ENV: &str = "NVIDIA_SHIM_CONFIG";

/// The whole configuration.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShimConfig {
    /// How runc is called.
    pub runc: RuncConfig,
    /// Where the NVIDIA driver lives on the host.
    pub driver: DriverConfig,
    /// Which GPU requests are honoured.
    pub gpu: GpuConfig,
    /// Logging.
    pub log: LogConfig,
}

/// `[runc]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuncConfig {
    /// runc binary, a name looked up in PATH or an absolute path.
    pub binary: String,
    /// runc state root; the containerd namespace is appended.
    pub root: String,
    /// Force runc's systemd cgroup driver. Unset: use it when `linux.cgroupsPath` is systemd-style.
    pub systemd_cgroup: Option<bool>,
}

impl Default for RuncConfig {
    fn default() -> Self {
        Self {
            binary: "runc".into(),
            root: "/run/containerd/runc".into(),
            systemd_cgroup: None,
        }
    }
}

/// `[log]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `error`, `warn`, `info`, `debug` or `trace`.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
        }
    }
}

/// Where a configuration came from, for logs and `nvidia-shim` output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConfigSource {
    /// A file.
    File(PathBuf),
    /// The `config_body` of runtime options.
    Body,
    /// Nothing was found.
    Defaults,
}

impl std::fmt::Display for ConfigSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File(p) => write!(f, "{}", p.display()),
            Self::Body => f.write_str("runtime options config_body"),
            Self::Defaults => f.write_str("built-in defaults"),
        }
    }
}

/// A configuration that could not be read or parsed.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML is malformed or has an unknown key.
    #[error("config {source_name}: {message}")]
    Parse {
        /// Where the text came from.
        source_name: String,
        /// The parser's message, naming the key.
        message: String,
    },
}

impl ShimConfig {
    /// The sections gpu-core reads.
    pub fn core(&self) -> CoreConfig {
        CoreConfig {
            driver: self.driver.clone(),
            gpu: self.gpu.clone(),
        }
    }

    /// Parses TOML text; `source_name` is used in errors.
    pub fn parse(text: &str, source_name: &str) -> Result<Self, ConfigError> {
        let cfg: ShimConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            source_name: source_name.to_string(),
            message: e.to_string().trim().replace('\n', " "),
        })?;
        cfg.validate(source_name)?;
        Ok(cfg)
    }

    fn validate(&self, source_name: &str) -> Result<(), ConfigError> {
        let bad = |message: String| {
            Err(ConfigError::Parse {
                source_name: source_name.to_string(),
                message,
            })
        };
        const LEVELS: [&str; 5] = ["error", "warn", "info", "debug", "trace"];
        if !LEVELS.contains(&self.log.level.as_str()) {
            return bad(format!(
                "log.level {:?} is not one of {}",
                self.log.level,
                LEVELS.join(", ")
            ));
        }
        for (key, p) in [
            ("driver.root", &self.driver.root),
            ("driver.dev_root", &self.driver.dev_root),
            ("driver.proc_root", &self.driver.proc_root),
            ("driver.cache_dir", &self.driver.cache_dir),
        ] {
            if !p.is_absolute() {
                return bad(format!("{key} {:?} must be an absolute path", p.display()));
            }
        }
        if self.runc.binary.is_empty() {
            return bad("runc.binary must not be empty".into());
        }
        if !(1..=600_000).contains(&self.gpu.prepare_timeout_ms) {
            return bad(format!(
                "gpu.prepare_timeout_ms = {} must be between 1 and 600000",
                self.gpu.prepare_timeout_ms
            ));
        }
        Ok(())
    }

    /// Reads a configuration file (a regular file of at most [`CONFIG_LIMIT`] bytes).
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = gpu_core::hostfile::read_text(path, CONFIG_LIMIT).map_err(|source| {
            ConfigError::Read {
                path: path.to_path_buf(),
                source,
            }
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Finds and loads the configuration in the documented order. `env_path` is the value of
    /// `NVIDIA_SHIM_CONFIG` (passed in so callers and tests decide where it comes from).
    pub fn load(
        config_path: Option<&Path>,
        config_body: Option<&[u8]>,
        env_path: Option<&Path>,
    ) -> Result<(Self, ConfigSource), ConfigError> {
        if let Some(p) = config_path.filter(|p| !p.as_os_str().is_empty()) {
            return Ok((Self::from_file(p)?, ConfigSource::File(p.to_path_buf())));
        }
        if let Some(body) = config_body.filter(|b| !b.is_empty()) {
            let text = String::from_utf8_lossy(body);
            return Ok((Self::parse_body(&text)?, ConfigSource::Body));
        }
        if let Some(p) = env_path.filter(|p| !p.as_os_str().is_empty()) {
            return Ok((Self::from_file(p)?, ConfigSource::File(p.to_path_buf())));
        }
        let default = Path::new(DEFAULT_CONFIG_PATH);
        if default.exists() {
            return Ok((
                Self::from_file(default)?,
                ConfigSource::File(default.to_path_buf()),
            ));
        }
        Ok((Self::default(), ConfigSource::Defaults))
    }

    /// containerd 1.7+ sends the whole CRI `options` table as `config_body`; it holds CRI's own keys
    /// (`TypeUrl`, `ConfigPath`, `BinaryName`, ...) beside ours, so those are set aside first.
    fn parse_body(text: &str) -> Result<Self, ConfigError> {
        let mut table: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Parse {
            source_name: "config_body".into(),
            message: e.to_string().trim().replace('\n', " "),
        })?;
        table.retain(|k, _| !k.starts_with(|c: char| c.is_ascii_uppercase()));
        let text = toml::to_string(&table).unwrap_or_default();
        Self::parse(&text, "config_body")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_is_named() {
        let err = ShimConfig::parse("[runc]\nbinray = 'x'\n", "t.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("binray"), "{err}");
        let err = ShimConfig::parse("[gpus]\n", "t.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("gpus"), "{err}");
    }

    #[test]
    fn sections_parse_and_defaults_fill_in() {
        let cfg = ShimConfig::parse(
            "[runc]\nsystemd_cgroup = true\n[driver]\nroot = '/usr/local/nvidia'\n[log]\nlevel = 'debug'\n",
            "t",
        )
        .unwrap();
        assert_eq!(cfg.runc.systemd_cgroup, Some(true));
        assert_eq!(cfg.runc.binary, "runc");
        assert_eq!(cfg.driver.root, PathBuf::from("/usr/local/nvidia"));
        assert_eq!(cfg.driver.dev_root, PathBuf::from("/"));
        assert_eq!(cfg.log.level, "debug");
        assert!(cfg.gpu.accept_env_unprivileged);
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(ShimConfig::parse("[log]\nlevel='loud'", "t")
            .unwrap_err()
            .to_string()
            .contains("loud"));
        assert!(ShimConfig::parse("[driver]\nroot='rel'", "t")
            .unwrap_err()
            .to_string()
            .contains("driver.root"));
    }

    #[test]
    fn shipped_crun_handler_files_parse() {
        let cfg = ShimConfig::parse(
            include_str!("../../../deploy/nvidia-shim-crun.toml"),
            "deploy/nvidia-shim-crun.toml",
        )
        .unwrap();
        assert_eq!(cfg.runc.binary, "crun");
        let snippet: toml::Value =
            toml::from_str(include_str!("../../../deploy/containerd-crun.toml")).unwrap();
        let rt = &snippet["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]
            ["nvidia-crun"];
        assert_eq!(rt["runtime_type"].as_str(), Some("io.containerd.nvidia.v2"));
    }

    #[test]
    fn shipped_example_config_parses_and_spells_out_the_defaults() {
        let text = include_str!("../../../deploy/nvidia-shim.toml");
        let cfg = ShimConfig::parse(text, "deploy/nvidia-shim.toml").unwrap();
        let d = ShimConfig::default();
        assert_eq!(cfg.gpu.accept_volume_mounts, d.gpu.accept_volume_mounts);
        assert_eq!(cfg.gpu.cdi_spec_dirs, d.gpu.cdi_spec_dirs);
        assert_eq!(cfg.gpu.prepare_timeout_ms, d.gpu.prepare_timeout_ms);
        assert_eq!(cfg.runc.root, d.runc.root);
        assert_eq!(cfg.driver.root, d.driver.root);
    }

    #[test]
    fn lookup_order() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.toml");
        let b = dir.path().join("b.toml");
        std::fs::write(&a, "[log]\nlevel='warn'\n").unwrap();
        std::fs::write(&b, "[log]\nlevel='trace'\n").unwrap();
        let body = b"TypeUrl = 'x'\nBinaryName = 'y'\n[log]\nlevel='debug'\n";
        let (c, s) = ShimConfig::load(Some(&a), Some(body), Some(&b)).unwrap();
        assert_eq!(
            (c.log.level.as_str(), s),
            ("warn", ConfigSource::File(a.clone()))
        );
        let (c, s) = ShimConfig::load(None, Some(body), Some(&b)).unwrap();
        assert_eq!((c.log.level.as_str(), s), ("debug", ConfigSource::Body));
        let (c, s) = ShimConfig::load(None, None, Some(&b)).unwrap();
        assert_eq!(
            (c.log.level.as_str(), s),
            ("trace", ConfigSource::File(b.clone()))
        );
        let err = ShimConfig::load(Some(&dir.path().join("missing.toml")), None, None).unwrap_err();
        assert!(err.to_string().contains("missing.toml"));
    }
}
