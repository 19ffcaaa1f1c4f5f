//! The system calls in-root access is built on: openat2 with resolve flags, fstat/lstat, and
//! the names they take.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

pub(super) fn fstat(fd: &OwnedFd) -> std::io::Result<libc::stat> {
    // SAFETY: stat is plain data; fstat fills it or fails.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid fd and pointer.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st)
}

/// `lstat` of `name` in directory `d`: what the entry is, without opening or following it.
pub(super) fn lstat_at(d: &OwnedFd, name: &CString) -> Option<libc::stat> {
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

pub(super) fn cstr(p: &str) -> std::io::Result<CString> {
    CString::new(p).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))
}

pub(super) fn openat2(
    dir: i32,
    path: &str,
    flags: i32,
    mode: u32,
    resolve: u64,
) -> std::io::Result<OwnedFd> {
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
pub(super) const STRICT: u64 = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_SYMLINKS;

/// `/etc/ld.so.cache` style display of a relative path.
pub(super) fn shown(rel: &str) -> String {
    format!("/{}", rel.trim_start_matches('/'))
}

/// Where the symlink `name` in directory `d` points.
pub(super) fn link_target(d: &OwnedFd, name: &CString) -> Option<String> {
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
