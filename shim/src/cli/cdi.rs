//! `nvidia-shim cdi` (not yet implemented).

use super::{Args, CliError, CliResult};

/// Runs `cdi`.
pub fn run(_args: &mut Args) -> CliResult {
    Err(CliError::failed("cdi is not implemented yet"))
}
