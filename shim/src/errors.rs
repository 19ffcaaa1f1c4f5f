//! ttrpc status helpers: containerd reads the gRPC code, so each failure class gets the code the
//! shim v2 contract names (NotFound means "already gone" to CRI, so it is never a default).

use containerd_shim_protos::ttrpc::{self, Code};

/// Longest message a ttrpc error carries. Errors quote their input cut short already; this
/// bound keeps any that slipped through (runc's stderr, say) well under the ttrpc frame limit.
pub const MAX_MESSAGE: usize = 4096;

/// Builds a ttrpc error with an explicit code.
pub fn status(code: Code, msg: impl std::fmt::Display) -> ttrpc::Error {
    let msg = gpu_core::echo::clipped(&msg.to_string(), MAX_MESSAGE);
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, msg))
}

/// Unknown container or exec id.
pub fn not_found(msg: impl std::fmt::Display) -> ttrpc::Error {
    status(Code::NOT_FOUND, msg)
}

/// Wrong state for the request.
pub fn precondition(msg: impl std::fmt::Display) -> ttrpc::Error {
    status(Code::FAILED_PRECONDITION, msg)
}

/// Duplicate id.
pub fn exists(msg: impl std::fmt::Display) -> ttrpc::Error {
    status(Code::ALREADY_EXISTS, msg)
}

/// Bad request contents.
pub fn invalid(msg: impl std::fmt::Display) -> ttrpc::Error {
    status(Code::INVALID_ARGUMENT, msg)
}

/// Anything else.
pub fn unknown(msg: impl std::fmt::Display) -> ttrpc::Error {
    status(Code::UNKNOWN, msg)
}

/// An RPC this shim does not implement.
pub fn unimplemented(what: &str) -> ttrpc::Error {
    status(
        Code::UNIMPLEMENTED,
        format!("{what} is not implemented by containerd-shim-nvidia-v2"),
    )
}

/// Why an RPC failed, by kind; [`From<ShimError> for ttrpc::Error`] is the one place kinds become
/// the codes containerd reads.
#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    /// The request is malformed or cannot be met as asked (bad options or config, a GPU
    /// request this host cannot serve).
    #[error("{0}")]
    Invalid(String),
    /// gpu-core refused or failed.
    #[error(transparent)]
    Gpu(#[from] gpu_core::GpuError),
    /// runc failed.
    #[error(transparent)]
    Runc(#[from] crate::runc::RuncError),
    /// Anything else (the host, IO).
    #[error("{0}")]
    Failed(String),
}

impl From<ShimError> for ttrpc::Error {
    fn from(e: ShimError) -> Self {
        let code = match &e {
            ShimError::Invalid(_) | ShimError::Gpu(_) => Code::INVALID_ARGUMENT,
            ShimError::Runc(r) if r.is_gone() => Code::NOT_FOUND,
            ShimError::Runc(_) | ShimError::Failed(_) => Code::UNKNOWN,
        };
        status(code, e)
    }
}

/// Maps a kill failure the way containerd's `checkKillError` does: a process that is already gone
/// is NotFound, not a failure.
pub fn kill_error(e: crate::runc::RuncError) -> ttrpc::Error {
    if e.is_gone() {
        not_found(format!("process already finished: {e}"))
    } else {
        unknown(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(e: ttrpc::Error) -> Code {
        match e {
            ttrpc::Error::RpcStatus(s) => s.code(),
            _ => Code::OK,
        }
    }

    #[test]
    fn kill_errors_map_like_containerd() {
        use crate::runc::RuncError;
        let k = |m: &str| kill_error(RuncError::classify("kill", m.into()));
        assert_eq!(code(k("container not running")), Code::NOT_FOUND);
        assert_eq!(code(k("container \"x\" does not exist")), Code::NOT_FOUND);
        assert_eq!(code(k("permission denied")), Code::UNKNOWN);
        assert_eq!(code(unimplemented("Checkpoint")), Code::UNIMPLEMENTED);
    }

    #[test]
    fn messages_are_bounded() {
        let ttrpc::Error::RpcStatus(s) = unknown("x".repeat(5 << 20)) else {
            panic!("not a status");
        };
        assert!(s.message.len() < MAX_MESSAGE + 32, "{}", s.message.len());
        assert!(s.message.ends_with("(5242880 bytes)"));
    }

    #[test]
    fn error_kinds_map_to_one_code_each() {
        use crate::runc::RuncError;
        let c = |e: ShimError| code(e.into());
        assert_eq!(
            c(ShimError::Invalid("bad option".into())),
            Code::INVALID_ARGUMENT
        );
        assert_eq!(
            c(gpu_core::GpuError::Refused("unknown device".into()).into()),
            Code::INVALID_ARGUMENT
        );
        assert_eq!(
            c(RuncError::classify("delete", "container does not exist".into()).into()),
            Code::NOT_FOUND
        );
        assert_eq!(
            c(RuncError::classify("create", "exec format error".into()).into()),
            Code::UNKNOWN
        );
        assert_eq!(c(ShimError::Failed("io".into())), Code::UNKNOWN);
    }
}
