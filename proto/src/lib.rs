//! Protobuf messages that containerd hands to a shim but `containerd-shim-protos` does not ship.
//!
//! The structs are written by hand with `prost` derives so the build needs no `protoc`. Field numbers
//! follow containerd's `.proto` files; they are the wire contract and must never be renumbered.

#![warn(missing_docs)]

use prost::Message;

/// `runtimeoptions.v1.Options`: what CRI sends for every `runtime_type` that is not runc
/// (`pkg/cri/runtimeoptions/v1/api.proto`). `config_body` only arrives from containerd 1.7 on.
#[derive(Clone, PartialEq, Message)]
pub struct RuntimeOptions {
    /// Free-form type URL copied from the CRI `options.TypeUrl` key.
    #[prost(string, tag = "1")]
    pub type_url: String,
    /// Path of the shim's configuration file (`options.ConfigPath`).
    #[prost(string, tag = "2")]
    pub config_path: String,
    /// The whole CRI `options` table as TOML text (1.7+, only when `config_path` is empty).
    #[prost(bytes = "vec", tag = "3")]
    pub config_body: Vec<u8>,
}

/// `containerd.runc.v1.Options`: runc options (`api/types/runc/options/oci.proto`).
#[derive(Clone, PartialEq, Message)]
pub struct RuncOptions {
    /// Do not use pivot_root to jail the process.
    #[prost(bool, tag = "1")]
    pub no_pivot_root: bool,
    /// Do not create a new session keyring.
    #[prost(bool, tag = "2")]
    pub no_new_keyring: bool,
    /// Cgroup the shim places itself in.
    #[prost(string, tag = "3")]
    pub shim_cgroup: String,
    /// Owner uid of the IO pipes.
    #[prost(uint32, tag = "4")]
    pub io_uid: u32,
    /// Owner gid of the IO pipes.
    #[prost(uint32, tag = "5")]
    pub io_gid: u32,
    /// runc binary to call.
    #[prost(string, tag = "6")]
    pub binary_name: String,
    /// runc state root.
    #[prost(string, tag = "7")]
    pub root: String,
    /// Use runc's systemd cgroup driver.
    #[prost(bool, tag = "9")]
    pub systemd_cgroup: bool,
    /// CRIU image path.
    #[prost(string, tag = "10")]
    pub criu_image_path: String,
    /// CRIU work path.
    #[prost(string, tag = "11")]
    pub criu_work_path: String,
}

/// `containerd.linux.runc.CreateOptions`: what containerd's client option functions send for a
/// runtime whose name does not start with `io.containerd.runc` (`runtime/linux/runctypes/runc.proto`).
#[derive(Clone, PartialEq, Message)]
pub struct CreateOptions {
    /// Do not use pivot_root.
    #[prost(bool, tag = "1")]
    pub no_pivot_root: bool,
    /// CRIU: allow open TCP connections.
    #[prost(bool, tag = "2")]
    pub open_tcp: bool,
    /// CRIU: allow external unix sockets.
    #[prost(bool, tag = "3")]
    pub external_unix_sockets: bool,
    /// CRIU: allow terminals.
    #[prost(bool, tag = "4")]
    pub terminal: bool,
    /// CRIU: allow file locks.
    #[prost(bool, tag = "5")]
    pub file_locks: bool,
    /// CRIU: namespaces to leave empty.
    #[prost(string, repeated, tag = "6")]
    pub empty_namespaces: Vec<String>,
    /// CRIU cgroups mode.
    #[prost(string, tag = "7")]
    pub cgroups_mode: String,
    /// Do not create a new session keyring.
    #[prost(bool, tag = "8")]
    pub no_new_keyring: bool,
    /// Cgroup the shim places itself in.
    #[prost(string, tag = "9")]
    pub shim_cgroup: String,
    /// Owner uid of the IO pipes.
    #[prost(uint32, tag = "10")]
    pub io_uid: u32,
    /// Owner gid of the IO pipes.
    #[prost(uint32, tag = "11")]
    pub io_gid: u32,
    /// CRIU work path.
    #[prost(string, tag = "12")]
    pub criu_work_path: String,
    /// CRIU image path.
    #[prost(string, tag = "13")]
    pub criu_image_path: String,
}

/// `google.protobuf.Any` as prost sees it, for classifying the bytes a shim reads on stdin.
#[derive(Clone, PartialEq, Message)]
pub struct AnyMsg {
    /// Type URL, e.g. `containerd.runc.v1.Options` or `type.googleapis.com/...`.
    #[prost(string, tag = "1")]
    pub type_url: String,
    /// The encoded message.
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
}

/// Options decoded by type URL. Anything else is refused rather than guessed at, because decoding
/// one type as another silently scrambles fields.
#[derive(Clone, Debug, PartialEq)]
pub enum ShimOptions {
    /// No options were sent.
    None,
    /// `containerd.runc.v1.Options`.
    Runc(RuncOptions),
    /// `runtimeoptions.v1.Options`.
    Runtime(RuntimeOptions),
    /// `containerd.linux.runc.CreateOptions`.
    Create(CreateOptions),
}

/// Why options could not be decoded.
#[derive(Debug, PartialEq, Eq)]
pub struct OptionsError(pub String);

impl std::fmt::Display for OptionsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for OptionsError {}

/// Type URLs accepted, by their last path segment.
pub const KNOWN_TYPES: [&str; 3] = [
    "containerd.runc.v1.Options",
    "runtimeoptions.v1.Options",
    "containerd.linux.runc.CreateOptions",
];

impl ShimOptions {
    /// Decodes options given as a type URL plus value (the shape of `CreateTaskRequest.options`).
    pub fn decode(type_url: &str, value: &[u8]) -> Result<Self, OptionsError> {
        if type_url.is_empty() && value.is_empty() {
            return Ok(Self::None);
        }
        let name = type_url.rsplit('/').next().unwrap_or(type_url);
        let bad = |e: prost::DecodeError| OptionsError(format!("decoding options {name}: {e}"));
        match name {
            "containerd.runc.v1.Options" => RuncOptions::decode(value).map(Self::Runc).map_err(bad),
            "runtimeoptions.v1.Options" => RuntimeOptions::decode(value)
                .map(Self::Runtime)
                .map_err(bad),
            "containerd.linux.runc.CreateOptions" => {
                CreateOptions::decode(value).map(Self::Create).map_err(bad)
            }
            other => Err(OptionsError(format!(
                "unsupported runtime options type {other:?} (supported: {})",
                KNOWN_TYPES.join(", ")
            ))),
        }
    }

    /// Decodes a marshalled `Any`, as `start` reads it on stdin from containerd 1.6 to 2.2.
    pub fn decode_any(bytes: &[u8]) -> Result<Self, OptionsError> {
        if bytes.is_empty() {
            return Ok(Self::None);
        }
        let any =
            AnyMsg::decode(bytes).map_err(|e| OptionsError(format!("options on stdin: {e}")))?;
        Self::decode(&any.type_url, &any.value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn any(type_url: &str, msg: &impl Message) -> Vec<u8> {
        AnyMsg {
            type_url: type_url.into(),
            value: msg.encode_to_vec(),
        }
        .encode_to_vec()
    }

    #[test]
    fn dispatches_on_type_url_not_on_shape() {
        let ro = RuntimeOptions {
            type_url: "x".into(),
            config_path: "/etc/nvidia-shim/config.toml".into(),
            config_body: b"[log]\nlevel='debug'".to_vec(),
        };
        let decoded = ShimOptions::decode_any(&any("runtimeoptions.v1.Options", &ro)).unwrap();
        assert_eq!(decoded, ShimOptions::Runtime(ro));

        let co = CreateOptions {
            open_tcp: true,
            shim_cgroup: "/shim".into(),
            ..Default::default()
        };
        let decoded =
            ShimOptions::decode_any(&any("containerd.linux.runc.CreateOptions", &co)).unwrap();
        // Decoded as runc Options this would read open_tcp as no_new_keyring.
        assert_eq!(decoded, ShimOptions::Create(co));

        let rc = RuncOptions {
            binary_name: "/usr/sbin/runc".into(),
            systemd_cgroup: true,
            ..Default::default()
        };
        let url = "type.googleapis.com/containerd.runc.v1.Options";
        assert_eq!(
            ShimOptions::decode_any(&any(url, &rc)).unwrap(),
            ShimOptions::Runc(rc)
        );
    }

    #[test]
    fn empty_and_unknown() {
        assert_eq!(ShimOptions::decode_any(&[]).unwrap(), ShimOptions::None);
        let err = ShimOptions::decode_any(&any("foo.Bar", &RuncOptions::default())).unwrap_err();
        assert!(
            err.0.contains("foo.Bar") && err.0.contains("runtimeoptions.v1.Options"),
            "{err}"
        );
    }
}
