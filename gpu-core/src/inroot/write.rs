//! Writing inside the root: directories created one component at a time, files replaced
//! atomically, symlinks made — none of it through a symlink the image controls.

use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::error::kind_of;
use super::sys::{cstr, fstat, link_target, lstat_at, openat2, STRICT};
use super::{InRootError, Root, WriteGate};
use std::sync::Arc;

impl Root {
    /// Opens (creating as needed) directory `rel`, one component at a time, refusing symlinks
    /// and anything that is not a directory.
    fn dir(&self, rel: &str) -> Result<OwnedFd, InRootError> {
        let mut cur = openat2(
            self.fd.as_raw_fd(),
            ".",
            libc::O_PATH | libc::O_DIRECTORY,
            0,
            libc::RESOLVE_IN_ROOT,
        )
        .map_err(|e| InRootError::io("/", e))?;
        let mut walked = String::new();
        for part in rel.split('/').filter(|p| !p.is_empty() && *p != ".") {
            walked.push('/');
            walked.push_str(part);
            if part == ".." {
                return Err(InRootError::io(
                    &walked,
                    std::io::Error::from(std::io::ErrorKind::InvalidInput),
                ));
            }
            let c = cstr(part).map_err(|e| InRootError::io(&walked, e))?;
            // SAFETY: valid dirfd and NUL-terminated name.
            let r = unsafe { libc::mkdirat(cur.as_raw_fd(), c.as_ptr(), 0o755) };
            if r != 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::EEXIST) {
                    return Err(InRootError::io(&walked, e));
                }
            }
            let next = openat2(
                cur.as_raw_fd(),
                part,
                libc::O_PATH | libc::O_NOFOLLOW,
                0,
                STRICT,
            )
            .map_err(|e| InRootError::io(&walked, e))?;
            let st = fstat(&next).map_err(|e| InRootError::io(&walked, e))?;
            match st.st_mode & libc::S_IFMT {
                libc::S_IFDIR => cur = next,
                libc::S_IFLNK => return Err(InRootError::Symlink(walked)),
                other => {
                    return Err(InRootError::WrongType {
                        path: walked,
                        kind: kind_of(other),
                        want: "directory",
                    })
                }
            }
        }
        Ok(cur)
    }

    /// Makes `dir/name` a symlink to `target`; see [`LinkDir::symlink`].
    pub fn symlink_atomic(&self, dir: &str, name: &str, target: &str) -> Result<(), InRootError> {
        self.link_dir(dir)?.symlink(name, target)
    }

    /// Opens (creating as needed) directory `dir` for making links in it: the walk to it, which
    /// refuses symlinks, is done once for all the links of that directory.
    pub fn link_dir(&self, dir: &str) -> Result<LinkDir, InRootError> {
        let _writing = self.may_write()?;
        Ok(LinkDir {
            fd: self.dir(dir)?,
            path: dir.trim_end_matches('/').to_string(),
            gate: self.gate.clone(),
        })
    }

    /// Opens the existing directory `dir` for making links in it where the image's own symlinks
    /// lead, within the root (openat2 `RESOLVE_IN_ROOT`: no `..` or absolute link can leave it, no
    /// magic link is followed). For merged-/usr images, whose `/lib64` is a link to `usr/lib64`:
    /// runc resolves mount destinations the same way, so this is where the libraries it mounts at
    /// `/lib64/…` land, and links beside them must go there too. The link itself is still made
    /// without following anything.
    pub fn link_dir_in_root(&self, dir: &str) -> Result<LinkDir, InRootError> {
        let _writing = self.may_write()?;
        let path = dir.trim_start_matches('/');
        let fd = openat2(
            self.fd.as_raw_fd(),
            if path.is_empty() { "." } else { path },
            libc::O_PATH | libc::O_DIRECTORY,
            0,
            libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS,
        )
        .map_err(|e| InRootError::io(dir, e))?;
        Ok(LinkDir {
            fd,
            path: dir.trim_end_matches('/').to_string(),
            gate: self.gate.clone(),
        })
    }

    /// Writes `data` to `dir/name` atomically (temp file + rename in the same directory). Neither
    /// the directory path nor the temp file may be a symlink; the final rename replaces whatever
    /// entry was there (a symlink, FIFO or device node included) without opening or following
    /// it. A directory in the way is refused.
    pub fn write_atomic(
        &self,
        dir: &str,
        name: &str,
        data: &[u8],
        mode: u32,
    ) -> Result<(), InRootError> {
        let _writing = self.may_write()?;
        let target = format!("{}/{name}", dir.trim_end_matches('/'));
        let d = self.dir(dir)?;
        let cname = cstr(name).map_err(|e| InRootError::io(&target, e))?;
        let existing = lstat_at(&d, &cname);
        if existing.is_some_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR) {
            return Err(InRootError::WrongType {
                path: target,
                kind: "a directory",
                want: "regular file",
            });
        }
        let (fd, ctmp) = with_temp_name(dir, name, |ctmp| {
            // SAFETY: valid dirfd and NUL-terminated name; O_EXCL|O_NOFOLLOW refuse existing entries.
            let fd = unsafe {
                libc::openat(
                    d.as_raw_fd(),
                    ctmp.as_ptr(),
                    libc::O_WRONLY
                        | libc::O_CREAT
                        | libc::O_EXCL
                        | libc::O_NOFOLLOW
                        | libc::O_CLOEXEC,
                    mode,
                )
            };
            if fd < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(fd)
            }
        })?;
        // SAFETY: new descriptor from openat.
        let mut f = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        let res = f.write_all(data).and_then(|_| {
            // SAFETY: valid dirfd and names.
            let r = unsafe {
                libc::renameat(d.as_raw_fd(), ctmp.as_ptr(), d.as_raw_fd(), cname.as_ptr())
            };
            if r != 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(())
            }
        });
        if res.is_err() {
            // SAFETY: removing our own temp file.
            unsafe { libc::unlinkat(d.as_raw_fd(), ctmp.as_ptr(), 0) };
        }
        res.map_err(|e| InRootError::io(&target, e))
    }
}

/// A directory inside a container's root, reached without following any symlink.
#[derive(Debug)]
pub struct LinkDir {
    fd: OwnedFd,
    path: String,
    gate: Option<Arc<WriteGate>>,
}

impl LinkDir {
    /// Makes `name` a symlink to `target`. Whatever entry was there (the image's own file of that
    /// name, say) is replaced in this root by a temp link renamed over it, without being opened;
    /// a directory there is refused; a link already pointing at `target` is left alone.
    pub fn symlink(&self, name: &str, target: &str) -> Result<(), InRootError> {
        let _writing = self.gate.as_deref().map(WriteGate::enter).transpose()?;
        let path = format!("{}/{name}", self.path);
        let d = &self.fd;
        let cname = cstr(name).map_err(|e| InRootError::io(&path, e))?;
        let ctarget = cstr(target).map_err(|e| InRootError::io(&path, e))?;
        match lstat_at(d, &cname) {
            None => {
                // Nothing there: one syscall, which fails rather than follow or replace anything.
                // SAFETY: valid names and dirfd.
                if unsafe { libc::symlinkat(ctarget.as_ptr(), d.as_raw_fd(), cname.as_ptr()) } == 0
                {
                    return Ok(());
                }
            }
            Some(st) => match st.st_mode & libc::S_IFMT {
                libc::S_IFDIR => {
                    return Err(InRootError::WrongType {
                        path,
                        kind: "a directory",
                        want: "file or symlink",
                    })
                }
                libc::S_IFLNK if link_target(d, &cname) == Some(target.to_string()) => {
                    return Ok(());
                }
                _ => {}
            },
        }
        let ((), tmp) = with_temp_name(&self.path, name, |tmp| {
            // SAFETY: valid names and dirfd; symlinkat never follows anything.
            if unsafe { libc::symlinkat(ctarget.as_ptr(), d.as_raw_fd(), tmp.as_ptr()) } != 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(())
            }
        })?;
        // SAFETY: valid dirfd and names; rename replaces the entry without following it.
        if unsafe { libc::renameat(d.as_raw_fd(), tmp.as_ptr(), d.as_raw_fd(), cname.as_ptr()) }
            != 0
        {
            let e = std::io::Error::last_os_error();
            // SAFETY: removing our own temp link.
            unsafe { libc::unlinkat(d.as_raw_fd(), tmp.as_ptr(), 0) };
            return Err(InRootError::io(&path, e));
        }
        Ok(())
    }
}

/// Runs `make` on fresh temp names beside `dir/name` until one is free. The image may have put
/// entries at names we could pick; a few tries with unpredictable suffixes get past that, and
/// the error names the temp entry that was in the way, not the file being written.
fn with_temp_name<T>(
    dir: &str,
    name: &str,
    mut make: impl FnMut(&std::ffi::CStr) -> std::io::Result<T>,
) -> Result<(T, std::ffi::CString), InRootError> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut last = String::new();
    for _ in 0..8 {
        let salt = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = format!(".{name}.nvidia-shim.{}.{n}.{salt:08x}", std::process::id());
        last = format!("{}/{tmp}", dir.trim_end_matches('/'));
        let c = cstr(&tmp).map_err(|e| InRootError::io(&last, e))?;
        match make(&c) {
            Ok(v) => return Ok((v, c)),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => continue,
            Err(e) => return Err(InRootError::io(&last, e)),
        }
    }
    Err(InRootError::io(
        &last,
        std::io::Error::from_raw_os_error(libc::EEXIST),
    ))
}
