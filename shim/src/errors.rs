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

/// Maps a runc kill failure the way containerd's `checkKillError` does: a process that is already
/// gone is NotFound, not a failure.
pub fn kill_error(msg: &str) -> ttrpc::Error {
    let lower = msg.to_ascii_lowercase();
    let gone = [
        "process already finished",
        "container not running",
        "no such process",
        "does not exist",
        "not found",
    ];
    if gone.iter().any(|g| lower.contains(g)) {
        not_found(format!("process already finished: {msg}"))
    } else {
        unknown(msg)
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
        assert_eq!(code(kill_error("container not running")), Code::NOT_FOUND);
        assert_eq!(
            code(kill_error("container \"x\" does not exist")),
            Code::NOT_FOUND
        );
        assert_eq!(code(kill_error("permission denied")), Code::UNKNOWN);
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
}
