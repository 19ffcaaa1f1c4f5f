//! Effective settings of one container, resolved from runtime options, the shim's config file and the
//! spec, and persisted in the bundle so that `delete` can clean up with nothing but the bundle.

use std::path::{Path, PathBuf};

use nvidia_shim_config::{ConfigError, ShimConfig, CONFIG_ENV};
use nvidia_shim_proto::ShimOptions;
use serde::{Deserialize, Serialize};

use crate::runc::Runc;

/// File name in the bundle.
pub const SETTINGS_FILE: &str = "nvidia-shim.json";

/// What `delete` and every runc call need.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    /// runc binary.
    pub runc_binary: String,
    /// runc root, namespace included.
    pub runc_root: PathBuf,
    /// `--systemd-cgroup`.
    pub systemd_cgroup: bool,
    /// `--no-pivot`.
    pub no_pivot_root: bool,
    /// `--no-new-keyring`.
    pub no_new_keyring: bool,
    /// Owner of the IO pipes.
    pub io_uid: u32,
    /// Group of the IO pipes.
    pub io_gid: u32,
    /// Where the config came from.
    pub config_source: String,
}

/// CRI writes `linux.cgroupsPath` as `<slice>:<prefix>:<name>` when the pod cgroup parent is a systemd
/// slice, whatever the runtime options say; runc then needs `--systemd-cgroup`.
pub fn is_systemd_cgroups_path(path: &str) -> bool {
    let parts: Vec<&str> = path.split(':').collect();
    parts.len() == 3
        && parts[0].ends_with(".slice")
        && !parts[0].contains('/')
        && !parts[2].is_empty()
}

/// Loads the shim config named by the options (or the fallbacks).
pub fn load_config(opts: &ShimOptions) -> Result<(ShimConfig, String), ConfigError> {
    let (path, body) = match opts {
        ShimOptions::Runtime(r) => (
            Some(PathBuf::from(&r.config_path)),
            Some(r.config_body.clone()),
        ),
        _ => (None, None),
    };
    let env = std::env::var_os(CONFIG_ENV).map(PathBuf::from);
    let (cfg, src) = ShimConfig::load(path.as_deref(), body.as_deref(), env.as_deref())?;
    Ok((cfg, src.to_string()))
}

impl Settings {
    /// Resolves settings: runc options win over the config file, which wins over defaults; systemd
    /// is also switched on by a systemd-style `cgroups_path`.
    pub fn resolve(
        cfg: &ShimConfig,
        source: String,
        opts: &ShimOptions,
        namespace: &str,
        cgroups_path: Option<&str>,
    ) -> Self {
        let mut s = Settings {
            runc_binary: cfg.runc.binary.clone(),
            runc_root: Path::new(&cfg.runc.root).join(namespace),
            systemd_cgroup: cfg.runc.systemd_cgroup.unwrap_or(false),
            no_pivot_root: false,
            no_new_keyring: false,
            io_uid: 0,
            io_gid: 0,
            config_source: source,
        };
        match opts {
            ShimOptions::Runc(o) => {
                if !o.binary_name.is_empty() {
                    s.runc_binary = o.binary_name.clone();
                }
                if !o.root.is_empty() {
                    s.runc_root = Path::new(&o.root).join(namespace);
                }
                s.systemd_cgroup |= o.systemd_cgroup;
                s.no_pivot_root = o.no_pivot_root;
                s.no_new_keyring = o.no_new_keyring;
                s.io_uid = o.io_uid;
                s.io_gid = o.io_gid;
            }
            ShimOptions::Create(o) => {
                s.no_pivot_root = o.no_pivot_root;
                s.no_new_keyring = o.no_new_keyring;
                s.io_uid = o.io_uid;
                s.io_gid = o.io_gid;
            }
            ShimOptions::Runtime(_) | ShimOptions::None => {}
        }
        if cfg.runc.systemd_cgroup.is_none() && cgroups_path.is_some_and(is_systemd_cgroups_path) {
            s.systemd_cgroup = true;
        }
        s
    }

    /// The runc client for a bundle.
    pub fn runc(&self, bundle: &Path) -> Runc {
        Runc {
            binary: self.runc_binary.clone(),
            root: self.runc_root.clone(),
            systemd_cgroup: self.systemd_cgroup,
            log: bundle.join("log.json"),
        }
    }

    /// Writes the settings into the bundle atomically.
    pub fn persist(&self, bundle: &Path) -> std::io::Result<()> {
        let data = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        write_atomic(&bundle.join(SETTINGS_FILE), &data)
    }

    /// Reads persisted settings; `None` when missing or unreadable.
    pub fn load(bundle: &Path) -> Option<Self> {
        let data = std::fs::read(bundle.join(SETTINGS_FILE)).ok()?;
        serde_json::from_slice(&data).ok()
    }
}

/// Writes `data` to a temporary sibling and renames it over `path`, so readers never see half a file.
pub fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, data)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use nvidia_shim_proto::{RuncOptions, RuntimeOptions};

    #[test]
    fn systemd_paths() {
        assert!(is_systemd_cgroups_path(
            "kubepods-besteffort.slice:cri-containerd:abc"
        ));
        assert!(!is_systemd_cgroups_path("/kubepods/besteffort/abc"));
        assert!(!is_systemd_cgroups_path("a:b:c"));
    }

    #[test]
    fn precedence() {
        let cfg = ShimConfig::default();
        let s = Settings::resolve(
            &cfg,
            "d".into(),
            &ShimOptions::None,
            "k8s.io",
            Some("x.slice:cri-containerd:1"),
        );
        assert!(s.systemd_cgroup);
        assert_eq!(s.runc_root, PathBuf::from("/run/containerd/runc/k8s.io"));
        let o = RuncOptions {
            binary_name: "/opt/runc".into(),
            root: "/r".into(),
            ..Default::default()
        };
        let s = Settings::resolve(&cfg, "d".into(), &ShimOptions::Runc(o), "default", None);
        assert_eq!(
            (s.runc_binary.as_str(), s.runc_root),
            ("/opt/runc", PathBuf::from("/r/default"))
        );
        assert!(!s.systemd_cgroup);
        let mut cfg2 = cfg.clone();
        cfg2.runc.systemd_cgroup = Some(false);
        let s = Settings::resolve(
            &cfg2,
            "d".into(),
            &ShimOptions::Runtime(RuntimeOptions::default()),
            "n",
            Some("x.slice:a:b"),
        );
        assert!(!s.systemd_cgroup, "explicit config overrides detection");
    }

    #[test]
    fn roundtrip() {
        let dir = tempfile::tempdir().unwrap();
        let s = Settings::resolve(
            &ShimConfig::default(),
            "d".into(),
            &ShimOptions::None,
            "n",
            None,
        );
        s.persist(dir.path()).unwrap();
        assert_eq!(Settings::load(dir.path()), Some(s));
        assert_eq!(Settings::load(&dir.path().join("nope")), None);
    }
}
