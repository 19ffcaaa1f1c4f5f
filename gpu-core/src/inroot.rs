//! File access strictly inside a container's root: every path is resolved with openat2
//! `RESOLVE_IN_ROOT` (so `..` and absolute symlinks cannot leave the root) and, for anything we
//! read or write, `RESOLVE_NO_SYMLINKS` (so the image cannot redirect us at all).
//!
//! Image content is hostile: a file is first opened `O_PATH` (which has no side effect on any
//! file type) and `fstat`ed, and only a regular file is then reopened for reading, non-blocking.
//! A FIFO cannot hang us and a device node is never opened.

mod error;
mod read;
mod sys;
#[cfg(test)]
mod tests;
mod write;

pub use error::InRootError;
pub use write::LinkDir;

use std::os::fd::OwnedFd;
use std::path::Path;

/// An open container root.
pub struct Root {
    fd: OwnedFd,
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
}
