//! The `delete` action: clean up after a shim that died, from the bundle alone. Every missing file
//! is tolerated; warnings go to stderr (containerd logs them), the DeleteResponse to stdout.

use std::path::Path;

use containerd_shim_protos::api::DeleteResponse;
use containerd_shim_protos::protobuf::{Message, MessageField};
use nvidia_shim_config::ShimConfig;

use crate::publisher::now;
use crate::runc::RuncError;
use crate::settings::Settings;

/// Runs `delete` in `bundle`; returns the encoded DeleteResponse.
pub fn run(bundle: &Path, namespace: &str, id: &str) -> Vec<u8> {
    let settings = Settings::load(bundle).unwrap_or_else(|| {
        eprintln!(
            "warning: {} missing; using default runc settings",
            crate::settings::SETTINGS_FILE
        );
        let cfg = crate::settings::load_config(&nvidia_shim_proto::ShimOptions::None)
            .map(|(c, _)| c)
            .unwrap_or_else(|_| ShimConfig::default());
        Settings::resolve(
            &cfg,
            String::new(),
            &nvidia_shim_proto::ShimOptions::None,
            namespace,
            None,
        )
    });
    match settings.runc(bundle).delete_now(id) {
        Ok(()) | Err(RuncError::NotExist { .. }) => {}
        Err(e) => eprintln!("warning: {e}"),
    }
    let rootfs = bundle.join("rootfs");
    if let Err(e) = containerd_shim::mount::umount_recursive(rootfs.to_str(), libc::MNT_DETACH) {
        eprintln!("warning: unmounting {}: {e}", rootfs.display());
    }
    remove_dead_socket(bundle);
    let pid = std::fs::read_to_string(bundle.join("init.pid"))
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(0);
    let mut resp = DeleteResponse::new();
    resp.pid = pid;
    resp.exit_status = 137;
    resp.exited_at = MessageField::some(now());
    resp.write_to_bytes().unwrap_or_default()
}

/// Removes the shim socket named in the bundle's `address` file when nothing listens on it any
/// more. A live shim of the same pod still answers, so its socket is kept.
fn remove_dead_socket(bundle: &Path) {
    let Ok(address) = std::fs::read_to_string(bundle.join("address")) else {
        return;
    };
    let path = address.trim().trim_start_matches("unix://");
    if path.is_empty() {
        return;
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            if let Err(e) = std::fs::remove_file(path) {
                eprintln!("warning: removing dead shim socket {path}: {e}");
            }
        }
        _ => {}
    }
}
