//! File access strictly inside a container's root: every path is resolved with openat2
//! `RESOLVE_IN_ROOT` (so `..` and absolute symlinks cannot leave the root) and, for anything we
//! write, `RESOLVE_NO_SYMLINKS` (so the image cannot redirect the write at all).

use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

/// An open container root.
pub struct Root {
    fd: OwnedFd,
}

fn cstr(p: &str) -> std::io::Result<CString> {
    CString::new(p).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))
}

fn openat2(dir: i32, path: &str, flags: i32, mode: u32, resolve: u64) -> std::io::Result<OwnedFd> {
    let c = cstr(path)?;
    // SAFETY: open_how is plain data; zeroed is a valid initial value.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.mode = u64::from(mode);
    how.resolve = resolve | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: valid pointers for the duration of the call; the result is checked.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir,
            c.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

impl Root {
    /// Opens a root directory (a host path the runtime controls, e.g. the bundle's rootfs).
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let f = std::fs::File::open(path)?;
        if !f.metadata()?.is_dir() {
            return Err(std::io::Error::other(format!(
                "{} is not a directory",
                path.display()
            )));
        }
        Ok(Self { fd: f.into() })
    }

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

    /// Reads a regular file, refusing any symlink on the way.
    pub fn read(&self, rel: &str, limit: u64) -> std::io::Result<Vec<u8>> {
        let fd = openat2(
            self.fd.as_raw_fd(),
            rel.trim_start_matches('/'),
            libc::O_RDONLY | libc::O_NOFOLLOW,
            0,
            libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_SYMLINKS,
        )?;
        let mut f = std::fs::File::from(fd);
        let meta = f.metadata()?;
        if !meta.is_file() {
            return Err(std::io::Error::other(format!(
                "{rel} is not a regular file"
            )));
        }
        if meta.len() > limit {
            return Err(std::io::Error::other(format!(
                "{rel} is larger than {limit} bytes"
            )));
        }
        let mut out = Vec::with_capacity(meta.len() as usize);
        f.read_to_end(&mut out)?;
        Ok(out)
    }

    /// Opens (creating as needed) directory `rel`, one component at a time, refusing symlinks.
    fn dir(&self, rel: &str) -> std::io::Result<OwnedFd> {
        let mut cur = openat2(
            self.fd.as_raw_fd(),
            ".",
            libc::O_PATH | libc::O_DIRECTORY,
            0,
            libc::RESOLVE_IN_ROOT,
        )?;
        for part in rel.split('/').filter(|p| !p.is_empty() && *p != ".") {
            if part == ".." {
                return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
            }
            let c = cstr(part)?;
            // SAFETY: valid dirfd and NUL-terminated name.
            let r = unsafe { libc::mkdirat(cur.as_raw_fd(), c.as_ptr(), 0o755) };
            if r != 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::EEXIST) {
                    return Err(e);
                }
            }
            cur = openat2(
                cur.as_raw_fd(),
                part,
                libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                0,
                libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_SYMLINKS,
            )?;
        }
        Ok(cur)
    }

    /// Writes `data` to `dir/name` atomically (temp file + rename in the same directory). Neither
    /// the directory path nor the temp file may be a symlink; the final rename replaces whatever
    /// entry was there (a symlink included) without following it.
    pub fn write_atomic(
        &self,
        dir: &str,
        name: &str,
        data: &[u8],
        mode: u32,
    ) -> std::io::Result<()> {
        let d = self.dir(dir)?;
        let tmp = format!(".{name}.nvidia-shim.{}", std::process::id());
        let ctmp = cstr(&tmp)?;
        let cname = cstr(name)?;
        // SAFETY: valid dirfd and NUL-terminated name; O_EXCL|O_NOFOLLOW refuse existing entries.
        let fd = unsafe {
            libc::openat(
                d.as_raw_fd(),
                ctmp.as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                mode,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
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
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn writes_stay_inside_and_refuse_symlinks() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        let outside = t.path().join("outside");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        let r = Root::open(&root).unwrap();

        r.write_atomic("/etc", "ld.so.cache", b"x", 0o644).unwrap();
        assert_eq!(std::fs::read(root.join("etc/ld.so.cache")).unwrap(), b"x");
        assert_eq!(r.read("/etc/ld.so.cache", 10).unwrap(), b"x");

        // A directory symlink pointing out of the root is refused, nothing is written outside.
        symlink(&outside, root.join("lib")).unwrap();
        assert!(r.write_atomic("/lib", "f", b"y", 0o644).is_err());
        assert!(std::fs::read_dir(&outside).unwrap().next().is_none());

        // A symlinked file is not read through.
        symlink("/etc/hostname", root.join("etc/host")).unwrap();
        assert!(r.read("/etc/host", 10).is_err());

        // The target being a symlink is replaced, not followed.
        std::fs::write(outside.join("victim"), b"keep").unwrap();
        symlink(outside.join("victim"), root.join("etc/ld.so.cache")).ok();
        std::fs::remove_file(root.join("etc/ld.so.cache")).unwrap();
        symlink(outside.join("victim"), root.join("etc/ld.so.cache")).unwrap();
        r.write_atomic("/etc", "ld.so.cache", b"new", 0o644)
            .unwrap();
        assert_eq!(std::fs::read(outside.join("victim")).unwrap(), b"keep");
        assert_eq!(std::fs::read(root.join("etc/ld.so.cache")).unwrap(), b"new");

        // Missing directories are created inside; `..` is refused.
        r.write_atomic("/a/b", "c", b"z", 0o644).unwrap();
        assert!(root.join("a/b/c").exists());
        assert!(r.write_atomic("/a/../..", "c", b"z", 0o644).is_err());
        // Absolute symlinks resolve inside the root for existence checks.
        symlink("/etc", root.join("etc2")).unwrap();
        assert!(r.exists("/etc2/ld.so.cache"));
        assert!(!r.exists("/etc2/../../outside/victim"));
    }
}
