//! `nvidia-shim doctor` (not yet implemented).

use super::{Args, CliError, CliResult};

/// Runs `doctor`.
pub fn run(_args: &mut Args) -> CliResult {
    Err(CliError::failed("doctor is not implemented yet"))
}
