//! `nvidia-shim configure` (not yet implemented).

use super::{Args, CliError, CliResult};

/// Runs `configure`.
pub fn run(_args: &mut Args) -> CliResult {
    Err(CliError::failed("configure is not implemented yet"))
}
