//! File access strictly inside a container's root: every path is resolved with openat2
//! `RESOLVE_IN_ROOT` (so `..` and absolute symlinks cannot leave the root) and, for anything we
//! read or write, `RESOLVE_NO_SYMLINKS` (so the image cannot redirect us at all).
//!
//! Image content is hostile: a file is first opened `O_PATH` (which has no side effect on any
//! file type) and `fstat`ed, and only a regular file is then reopened for reading, non-blocking.
//! A FIFO cannot hang us and a device node is never opened.

use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Why an in-root access was refused or failed, worded for the person reading containerd's log.
#[derive(Debug, thiserror::Error)]
pub enum InRootError {
    /// A path component is a symlink; the image does not get to steer us.
    #[error("{0} is a symlink in the image; refusing to follow it")]
    Symlink(String),
    /// The entry exists but is not the kind of file we work with.
    #[error("{path} in the image is {kind}, not a {want}; refusing to open it")]
    WrongType {
        /// Path inside the root.
        path: String,
        /// What it is (`a FIFO`, `a character device`, …).
        kind: &'static str,
        /// What was expected (`regular file`, `directory`).
        want: &'static str,
    },
    /// Larger than the caller's bound.
    #[error("{path} in the image is {size} bytes, over the {limit}-byte limit")]
    TooLarge {
        /// Path inside the root.
        path: String,
        /// Its size.
        size: u64,
        /// The bound.
        limit: u64,
    },
    /// The root is mounted read-only.
    #[error("the container's root filesystem is read-only")]
    ReadOnly,
    /// Any other system error.
    #[error("{path}: {source}")]
    Io {
        /// Path inside the root.
        path: String,
        /// The error.
        source: std::io::Error,
    },
}

impl InRootError {
    /// Whether the path does not exist at all.
    pub fn is_not_found(&self) -> bool {
        matches!(self, InRootError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    }

    fn io(path: &str, source: std::io::Error) -> Self {
        if source.raw_os_error() == Some(libc::EROFS) {
            return InRootError::ReadOnly;
        }
        InRootError::Io {
            path: path.to_string(),
            source,
        }
    }
}

/// The kind of file a mode describes, in words.
fn kind_of(mode: libc::mode_t) -> &'static str {
    match mode & libc::S_IFMT {
        libc::S_IFREG => "a regular file",
        libc::S_IFDIR => "a directory",
        libc::S_IFLNK => "a symlink",
        libc::S_IFIFO => "a FIFO",
        libc::S_IFCHR => "a character device",
        libc::S_IFBLK => "a block device",
        libc::S_IFSOCK => "a socket",
        _ => "of unknown type",
    }
}

fn fstat(fd: &OwnedFd) -> std::io::Result<libc::stat> {
    // SAFETY: stat is plain data; fstat fills it or fails.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid fd and pointer.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st)
}

/// `lstat` of `name` in directory `d`: what the entry is, without opening or following it.
fn lstat_at(d: &OwnedFd, name: &CString) -> Option<libc::stat> {
    // SAFETY: stat is plain data.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid dirfd, name and buffer.
    let r = unsafe {
        libc::fstatat(
            d.as_raw_fd(),
            name.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    (r == 0).then_some(st)
}

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

/// Strict in-root resolution: no symlink anywhere; a trailing symlink comes back as itself.
const STRICT: u64 = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_SYMLINKS;

/// `/etc/ld.so.cache` style display of a relative path.
fn shown(rel: &str) -> String {
    format!("/{}", rel.trim_start_matches('/'))
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

    /// Names of the regular files in directory `rel` (at most `limit` entries are looked at).
    /// The directory is resolved inside the root, where the image's own symlinks may take part
    /// (CUDA images make `/usr/local/cuda` one) but can never lead out of it; nothing in it is
    /// opened, entries are told apart by the type the directory records.
    pub fn list_files(&self, rel: &str, limit: usize) -> Result<Vec<String>, InRootError> {
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
        for entry in rd.take(limit).flatten() {
            if entry.file_type().is_ok_and(|t| t.is_file()) {
                if let Ok(name) = entry.file_name().into_string() {
                    out.push(name);
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
        // Reopen the very inode the O_PATH descriptor holds: no second lookup the image could race.
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(format!("/proc/self/fd/{}", pfd.as_raw_fd()))
            .map_err(|e| InRootError::io(&name, e))?;
        let mut out = Vec::with_capacity(size as usize);
        // The file may grow after the fstat; never read past the bound.
        f.take(limit.saturating_add(1))
            .read_to_end(&mut out)
            .map_err(|e| InRootError::io(&name, e))?;
        if out.len() as u64 > limit {
            return Err(InRootError::TooLarge {
                path: name,
                size: out.len() as u64,
                limit,
            });
        }
        Ok(out)
    }

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
        Ok(LinkDir {
            fd: self.dir(dir)?,
            path: dir.trim_end_matches('/').to_string(),
        })
    }
}

/// A directory inside a container's root, reached without following any symlink.
pub struct LinkDir {
    fd: OwnedFd,
    path: String,
}

impl LinkDir {
    /// Makes `name` a symlink to `target`. Whatever entry was there (the image's own file of that
    /// name, say) is replaced in this root by a temp link renamed over it, without being opened;
    /// a directory there is refused; a link already pointing at `target` is left alone.
    pub fn symlink(&self, name: &str, target: &str) -> Result<(), InRootError> {
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
        let tmp = cstr(&format!(".{name}.nvidia-shim.{}", std::process::id()))
            .map_err(|e| InRootError::io(&path, e))?;
        // SAFETY: valid names and dirfd; symlinkat never follows anything.
        if unsafe { libc::symlinkat(ctarget.as_ptr(), d.as_raw_fd(), tmp.as_ptr()) } != 0 {
            return Err(InRootError::io(&path, std::io::Error::last_os_error()));
        }
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

impl Root {}

/// Where the symlink `name` in directory `d` points.
fn link_target(d: &OwnedFd, name: &CString) -> Option<String> {
    let mut buf = [0u8; 4096];
    // SAFETY: valid dirfd, name and buffer of the given length.
    let n = unsafe {
        libc::readlinkat(
            d.as_raw_fd(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    let n = usize::try_from(n).ok()?;
    String::from_utf8(buf.get(..n)?.to_vec()).ok()
}

impl Root {
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
        let tmp = format!(".{name}.nvidia-shim.{}", std::process::id());
        let ctmp = cstr(&tmp).map_err(|e| InRootError::io(&target, e))?;
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
            return Err(InRootError::io(&target, std::io::Error::last_os_error()));
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
        res.map_err(|e| InRootError::io(&target, e))
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

    #[test]
    fn non_regular_files_are_never_opened_and_refusals_say_why() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        let r = Root::open(&root).unwrap();

        // A FIFO: an open for reading would block forever; we must return at once.
        nix::unistd::mkfifo(
            &root.join("etc/fifo"),
            nix::sys::stat::Mode::from_bits_truncate(0o644),
        )
        .unwrap();
        let e = r.read("/etc/fifo", 100).unwrap_err().to_string();
        assert!(e.contains("/etc/fifo in the image is a FIFO"), "{e}");

        // A character device node (/dev/null's numbers): refused by type, before any open.
        nix::sys::stat::mknod(
            &root.join("etc/dev"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o644),
            nix::sys::stat::makedev(1, 3),
        )
        .unwrap();
        use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
        let watch = Inotify::init(InitFlags::IN_NONBLOCK).unwrap();
        watch
            .add_watch(&root.join("etc/dev"), AddWatchFlags::IN_OPEN)
            .unwrap();
        let e = r.read("/etc/dev", 100).unwrap_err().to_string();
        assert!(e.contains("is a character device"), "{e}");
        // The kernel reports every real open of the node; an O_PATH lookup is not one.
        assert!(watch.read_events().is_err(), "the device node was opened");
        // The check itself is live: a real open is reported.
        drop(std::fs::File::open(root.join("etc/dev")).unwrap());
        assert_eq!(watch.read_events().unwrap().len(), 1);

        // A directory where a file is expected, for reading and for replacing.
        std::fs::create_dir(root.join("etc/ld.so.cache")).unwrap();
        let e = r.read("/etc/ld.so.cache", 100).unwrap_err().to_string();
        assert!(
            e.contains("/etc/ld.so.cache in the image is a directory"),
            "{e}"
        );
        let e = r
            .write_atomic("/etc", "ld.so.cache", b"x", 0o644)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/etc/ld.so.cache in the image is a directory"),
            "{e}"
        );

        // Over the bound.
        std::fs::write(root.join("etc/big"), vec![0u8; 64]).unwrap();
        assert!(matches!(
            r.read("/etc/big", 10),
            Err(InRootError::TooLarge { size: 64, .. })
        ));

        // A FIFO or device node at the write target is replaced, never opened.
        r.write_atomic("/etc", "fifo", b"ok", 0o644).unwrap();
        assert_eq!(std::fs::read(root.join("etc/fifo")).unwrap(), b"ok");
        r.write_atomic("/etc", "dev", b"ok", 0o644).unwrap();
        assert_eq!(std::fs::read(root.join("etc/dev")).unwrap(), b"ok");

        // /etc itself a symlink: named as such, for reads and writes.
        let root2 = t.path().join("root2");
        std::fs::create_dir_all(root2.join("real")).unwrap();
        symlink("/real", root2.join("etc")).unwrap();
        let r2 = Root::open(&root2).unwrap();
        let e = r2.read("/etc/ld.so.cache", 100).unwrap_err().to_string();
        assert_eq!(e, "/etc is a symlink in the image; refusing to follow it");
        let e = r2
            .write_atomic("/etc", "ld.so.cache", b"x", 0o644)
            .unwrap_err()
            .to_string();
        assert_eq!(e, "/etc is a symlink in the image; refusing to follow it");
        assert!(!root2.join("real/ld.so.cache").exists());

        // A regular file where a directory is expected.
        std::fs::write(root.join("lib"), b"").unwrap();
        let e = r.read("/lib/x/y", 100).unwrap_err().to_string();
        assert!(
            e.contains("/lib in the image is a regular file, not a directory"),
            "{e}"
        );
        assert!(r.read("/nope", 10).unwrap_err().is_not_found());
    }
}
