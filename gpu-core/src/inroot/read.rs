//! Looking and reading inside the root: existence, host paths, listings, and bounded reads of
//! regular files only, never following the image's symlinks.

use std::os::fd::{AsRawFd, OwnedFd};

use super::error::kind_of;
use super::sys::{fstat, openat2, shown, STRICT};
use super::{InRootError, Root};

impl Root {
    /// Whether `rel` exists inside the root (symlinks followed, but only within it).
    pub fn exists(&self, rel: &str) -> bool {
        openat2(
            self.fd.as_raw_fd(),
            rel.trim_start_matches('/'),
            libc::O_PATH,
            0,
            libc::RESOLVE_IN_ROOT,
        )
        .is_ok()
    }

    /// The host path `rel` resolves to when every symlink is resolved relative to the root (an
    /// absolute link inside a driver container's root points into that root, not the host).
    pub fn real_path(&self, rel: &str) -> std::io::Result<std::path::PathBuf> {
        let fd = openat2(
            self.fd.as_raw_fd(),
            rel.trim_start_matches('/'),
            libc::O_PATH,
            0,
            libc::RESOLVE_IN_ROOT,
        )?;
        std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
    }

    /// Names of the regular files in directory `rel` (at most `limit` entries are looked at).
    /// The directory is resolved inside the root, where the image's own symlinks may take part
    /// (CUDA images make `/usr/local/cuda` one) but can never lead out of it; nothing in it is
    /// opened, entries are told apart by the type the directory records.
    pub fn list_files(&self, rel: &str, limit: usize) -> Result<Vec<String>, InRootError> {
        self.list_files_matching(rel, limit, limit, |_| true)
    }

    /// Like [`Root::list_files`], keeping only names `wanted` accepts: up to `scan` entries are
    /// looked at (a crowded directory does not hide what is wanted among the first few), and
    /// at most `keep` names are kept.
    pub fn list_files_matching(
        &self,
        rel: &str,
        scan: usize,
        keep: usize,
        wanted: impl Fn(&str) -> bool,
    ) -> Result<Vec<String>, InRootError> {
        let path = rel.trim_start_matches('/');
        let fd = openat2(
            self.fd.as_raw_fd(),
            path,
            libc::O_PATH | libc::O_DIRECTORY,
            0,
            libc::RESOLVE_IN_ROOT,
        )
        .map_err(|e| InRootError::io(&shown(path), e))?;
        let rd = std::fs::read_dir(format!("/proc/self/fd/{}", fd.as_raw_fd()))
            .map_err(|e| InRootError::io(&shown(path), e))?;
        let mut out = Vec::new();
        for entry in rd.take(scan).flatten() {
            if out.len() >= keep {
                break;
            }
            if entry.file_type().is_ok_and(|t| t.is_file()) {
                if let Ok(name) = entry.file_name().into_string() {
                    if wanted(&name) {
                        out.push(name);
                    }
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// Opens `rel` as `O_PATH` without following any symlink: no side effect, whatever the entry
    /// is. A failure is explained by naming the component that stopped the walk.
    fn open_path(&self, rel: &str) -> Result<(OwnedFd, libc::stat), InRootError> {
        let path = rel.trim_start_matches('/');
        match openat2(
            self.fd.as_raw_fd(),
            path,
            libc::O_PATH | libc::O_NOFOLLOW,
            0,
            STRICT,
        ) {
            Ok(fd) => {
                let st = fstat(&fd).map_err(|e| InRootError::io(&shown(path), e))?;
                if st.st_mode & libc::S_IFMT == libc::S_IFLNK {
                    return Err(InRootError::Symlink(shown(path)));
                }
                Ok((fd, st))
            }
            Err(e) => Err(self.explain(path, e)),
        }
    }

    /// Turns ELOOP/ENOTDIR from a strict walk into "which component, and what it is".
    fn explain(&self, path: &str, err: std::io::Error) -> InRootError {
        if !matches!(err.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)) {
            return InRootError::io(&shown(path), err);
        }
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        for n in 1..parts.len() {
            let prefix = parts[..n].join("/");
            let Ok(fd) = openat2(
                self.fd.as_raw_fd(),
                &prefix,
                libc::O_PATH | libc::O_NOFOLLOW,
                0,
                STRICT,
            ) else {
                break;
            };
            let Ok(st) = fstat(&fd) else { break };
            match st.st_mode & libc::S_IFMT {
                libc::S_IFDIR => continue,
                libc::S_IFLNK => return InRootError::Symlink(shown(&prefix)),
                other => {
                    return InRootError::WrongType {
                        path: shown(&prefix),
                        kind: kind_of(other),
                        want: "directory",
                    }
                }
            }
        }
        InRootError::io(&shown(path), err)
    }

    /// Reads a regular file of at most `limit` bytes. Nothing but a regular file is ever opened
    /// for reading (a FIFO would block, a device node has side effects on open), and no symlink
    /// is followed on the way.
    pub fn read(&self, rel: &str, limit: u64) -> Result<Vec<u8>, InRootError> {
        let name = shown(rel);
        let (pfd, st) = self.open_path(rel)?;
        let kind = st.st_mode & libc::S_IFMT;
        if kind != libc::S_IFREG {
            return Err(InRootError::WrongType {
                path: name,
                kind: kind_of(kind),
                want: "regular file",
            });
        }
        let size = st.st_size as u64;
        if size > limit {
            return Err(InRootError::TooLarge {
                path: name,
                size,
                limit,
            });
        }
        let out = crate::hostfile::read_reopened(&pfd, size, limit)
            .map_err(|e| InRootError::io(&name, e))?;
        // The file may have grown after the fstat.
        if out.len() as u64 > limit {
            return Err(InRootError::TooLarge {
                path: name,
                size: out.len() as u64,
                limit,
            });
        }
        Ok(out)
    }
}
