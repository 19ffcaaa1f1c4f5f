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
use std::sync::{Arc, Mutex, MutexGuard};

/// An open container root.
pub struct Root {
    fd: OwnedFd,
    gate: Option<Arc<WriteGate>>,
}

/// Lets whoever started work on a root take back its right to write there: once
/// [`WriteGate::close`] returns, no write through a root holding this gate is in progress and none
/// will start. The shim closes it when it abandons a GPU stage that ran past its time limit, so
/// work it no longer waits for cannot change a rootfs afterwards.
#[derive(Debug, Default)]
pub struct WriteGate {
    open: Mutex<bool>,
}

impl WriteGate {
    /// A gate that lets writes through until closed.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            open: Mutex::new(true),
        })
    }

    /// Refuses every later write; waits for one in progress to end.
    pub fn close(&self) {
        *self.open.lock().unwrap_or_else(|p| p.into_inner()) = false;
    }

    /// Held for the length of one write.
    fn enter(&self) -> Result<MutexGuard<'_, bool>, InRootError> {
        let g = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if *g {
            Ok(g)
        } else {
            Err(InRootError::Abandoned)
        }
    }
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
        Ok(Self {
            fd: f.into(),
            gate: None,
        })
    }

    /// The same root, whose writes pass `gate` first.
    pub fn gated(mut self, gate: Arc<WriteGate>) -> Self {
        self.gate = Some(gate);
        self
    }

    /// Held across one write: `None` when ungated, an error once the gate is closed.
    fn may_write(&self) -> Result<Option<MutexGuard<'_, bool>>, InRootError> {
        self.gate.as_deref().map(WriteGate::enter).transpose()
    }
}
