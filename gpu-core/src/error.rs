//! Why gpu-core refused or failed: one type every module returns, so no module imports upward.

/// Why a GPU request was refused.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    /// The request cannot be met on this host (or is malformed): the caller's input is at fault.
    #[error("nvidia: {0}")]
    Refused(String),
    /// The host could not be read.
    #[error("nvidia: discovering the driver: {0}")]
    Discovery(String),
}
