//! Why an in-root access was refused or failed.

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
    /// The work that was writing here was abandoned (it ran past its time limit).
    #[error("the GPU stage was abandoned; nothing more is written into the container's root")]
    Abandoned,
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

    pub(super) fn io(path: &str, source: std::io::Error) -> Self {
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
pub(super) fn kind_of(mode: libc::mode_t) -> &'static str {
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
