//! The host as the installer sees it: host paths under a host root (`/host` in the DaemonSet, `/`
//! by hand), files replaced atomically, and the record of what install added so uninstall can
//! take exactly that away.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::CliError;

/// Maps host paths (what containerd and the shim will read) to paths this process can open.
#[derive(Clone, Debug)]
pub struct HostRoot(PathBuf);

impl HostRoot {
    /// The host's `/` is at `root` here.
    pub fn new(root: &Path) -> Self {
        Self(root.to_path_buf())
    }

    /// Where host path `p` is reachable from here.
    pub fn local(&self, p: &Path) -> PathBuf {
        self.0.join(p.strip_prefix("/").unwrap_or(p))
    }

    /// Host path of a local path under the root (as written into files the host reads).
    pub fn host_path(&self, local: &str) -> Option<String> {
        if self.0 == Path::new("/") {
            return Some(local.to_string());
        }
        let root = self.0.to_str()?.trim_end_matches('/');
        let rest = local.strip_prefix(root)?;
        rest.starts_with('/').then(|| rest.to_string())
    }

    /// Whether this is the real root (no prefix).
    pub fn is_slash(&self) -> bool {
        self.0 == Path::new("/")
    }
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> CliError {
    CliError::failed(format!("{what} {}: {e}", path.display()))
}

/// Whether `path` holds exactly `bytes`.
pub fn same_content(path: &Path, bytes: &[u8]) -> bool {
    fs::read(path).is_ok_and(|b| b == bytes)
}

/// Writes `bytes` to `path` through a temporary file in the same directory, synced, then
/// renamed over it: readers see the old file or the new one, never half of either. Returns
/// false (and writes nothing) when the file already holds `bytes`.
pub fn replace(path: &Path, bytes: &[u8], mode: u32) -> Result<bool, CliError> {
    if same_content(path, bytes) {
        return Ok(false);
    }
    let dir = path
        .parent()
        .ok_or_else(|| CliError::failed(format!("{} has no parent directory", path.display())))?;
    fs::create_dir_all(dir).map_err(|e| io_err("creating", dir, e))?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.nvidia-shim-tmp"));
    let write = || -> std::io::Result<()> {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        io_err("writing", path, e)
    })?;
    Ok(true)
}

/// Removes `path`; true when it was there.
pub fn remove(path: &Path) -> Result<bool, CliError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_err("removing", path, e)),
    }
}

/// Reads `path`; None when it does not exist.
pub fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, CliError> {
    match fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err("reading", path, e)),
    }
}

/// What install changed in containerd's config, so uninstall can restore it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ConfigRecord {
    /// The main config (host path).
    pub main: String,
    /// The main config's bytes before the first install; None when there was no file.
    pub original: Option<String>,
    /// The main config as install last wrote it (uninstall restores `original` only if the file
    /// still reads this; otherwise it takes out just its own entries).
    pub written: Option<String>,
    /// The `imports` entry install added to the main config, if any.
    pub import_added: Option<String>,
    /// The drop-in file install wrote (config version 3).
    pub drop_in: Option<String>,
}

/// What install added, kept next to the binaries.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Record {
    /// Files install created or owns (host paths), removed by uninstall.
    pub files: Vec<String>,
    /// Directories install created (host paths, outermost first), removed when empty.
    #[serde(default)]
    pub dirs: Vec<String>,
    /// containerd config edits.
    pub containerd: Option<ConfigRecord>,
}

impl Record {
    /// The record's file for binaries in `bin_dir` (local path).
    pub fn path(bin_dir: &Path) -> PathBuf {
        bin_dir.join(".nvidia-shim-install.json")
    }

    /// Loads the record, or an empty one when none exists.
    pub fn load(bin_dir: &Path) -> Result<Self, CliError> {
        let path = Self::path(bin_dir);
        match read_optional(&path)? {
            None => Ok(Self::default()),
            Some(b) => serde_json::from_slice(&b).map_err(|e| {
                CliError::failed(format!(
                    "{} is not an install record ({e}); remove it to start over",
                    path.display()
                ))
            }),
        }
    }

    /// Saves the record atomically.
    pub fn save(&self, bin_dir: &Path) -> Result<(), CliError> {
        let text = serde_json::to_vec_pretty(self)
            .map_err(|e| CliError::failed(format!("install record: {e}")))?;
        replace(&Self::path(bin_dir), &text, 0o644).map(|_| ())
    }

    /// Notes that install owns host path `p`.
    pub fn own(&mut self, p: &Path) {
        let s = p.display().to_string();
        if !self.files.contains(&s) {
            self.files.push(s);
        }
    }

    /// Whether install owns host path `p`.
    pub fn owns(&self, p: &Path) -> bool {
        self.files.iter().any(|f| Path::new(f) == p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_paths_map_both_ways() {
        let r = HostRoot::new(Path::new("/host"));
        assert_eq!(
            r.local(Path::new("/etc/containerd/config.toml")),
            Path::new("/host/etc/containerd/config.toml")
        );
        assert_eq!(
            r.host_path("/host/usr/lib/libcuda.so.1").as_deref(),
            Some("/usr/lib/libcuda.so.1")
        );
        assert_eq!(r.host_path("/hostile/x"), None);
        assert_eq!(r.host_path("/usr/lib/x"), None);
        let slash = HostRoot::new(Path::new("/"));
        assert_eq!(slash.local(Path::new("/etc/x")), Path::new("/etc/x"));
        assert_eq!(slash.host_path("/etc/x").as_deref(), Some("/etc/x"));
    }

    #[test]
    fn replace_writes_only_changes_and_leaves_no_temp() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a/b.toml");
        assert!(replace(&p, b"one", 0o600).unwrap());
        assert!(!replace(&p, b"one", 0o600).unwrap());
        assert!(replace(&p, b"two", 0o600).unwrap());
        assert_eq!(fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(d.path().join("a"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("b.toml")]);
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
}
