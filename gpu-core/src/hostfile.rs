//! Reading host configuration files (CDI specs, the shim config) defensively: a FIFO or device
//! node dropped into a config directory must not hang or steer the shim, and no file is read
//! past a size bound. Symlinks are followed: these are the administrator's paths, not the image's.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

/// Reads `path` if it is a regular file of at most `limit` bytes.
pub fn read_regular(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    // O_PATH has no side effect on any file type; the type is checked before a real open.
    let p = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH)
        .open(path)?;
    let meta = p.metadata()?;
    if !meta.file_type().is_file() {
        return Err(std::io::Error::other(
            "not a regular file; refusing to open it",
        ));
    }
    if meta.size() > limit {
        return Err(std::io::Error::other(format!(
            "{} bytes, over the {limit}-byte limit",
            meta.size()
        )));
    }
    let out = read_reopened(&p, meta.size(), limit)?;
    if out.len() as u64 > limit {
        return Err(std::io::Error::other(format!(
            "over the {limit}-byte limit"
        )));
    }
    Ok(out)
}

/// Reads the file an `O_PATH` descriptor holds: reopened through `/proc/self/fd` (the very inode,
/// no second lookup anyone could race), non-blocking and without taking a controlling tty, at
/// most `limit` + 1 bytes so a caller sees a file that grew past its bound. `size` is a capacity
/// hint.
pub(crate) fn read_reopened(
    path_fd: &impl AsRawFd,
    size: u64,
    limit: u64,
) -> std::io::Result<Vec<u8>> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(format!("/proc/self/fd/{}", path_fd.as_raw_fd()))?;
    let mut out = Vec::with_capacity(size.min(limit) as usize);
    f.take(limit.saturating_add(1)).read_to_end(&mut out)?;
    Ok(out)
}

/// [`read_regular`] as UTF-8 text.
pub fn read_text(path: &Path, limit: u64) -> std::io::Result<String> {
    String::from_utf8(read_regular(path, limit)?)
        .map_err(|_| std::io::Error::other("not UTF-8 text"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifos_and_big_files_are_refused_at_once() {
        let t = tempfile::tempdir().unwrap();
        let fifo = t.path().join("spec.yaml");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        let e = read_regular(&fifo, 100).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
        let big = t.path().join("big");
        std::fs::write(&big, vec![b'a'; 200]).unwrap();
        assert!(read_regular(&big, 100).is_err());
        assert_eq!(read_text(&big, 200).unwrap().len(), 200);
        let link = t.path().join("link");
        std::os::unix::fs::symlink(&big, &link).unwrap();
        assert_eq!(
            read_regular(&link, 200).unwrap().len(),
            200,
            "host symlinks are followed"
        );
    }
}
