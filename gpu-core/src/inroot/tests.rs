//! In-root access against symlinks, FIFOs, device nodes and directories in the way.

use super::*;
use std::os::unix::fs::symlink;

#[test]
fn writes_stay_inside_and_refuse_symlinks() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    let outside = t.path().join("outside");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    let r = Root::open(&root).unwrap();

    r.write_atomic("/etc", "ld.so.cache", b"x", 0o644).unwrap();
    assert_eq!(std::fs::read(root.join("etc/ld.so.cache")).unwrap(), b"x");
    assert_eq!(r.read("/etc/ld.so.cache", 10).unwrap(), b"x");

    // A directory symlink pointing out of the root is refused, nothing is written outside.
    symlink(&outside, root.join("lib")).unwrap();
    assert!(r.write_atomic("/lib", "f", b"y", 0o644).is_err());
    assert!(std::fs::read_dir(&outside).unwrap().next().is_none());

    // A symlinked file is not read through.
    symlink("/etc/hostname", root.join("etc/host")).unwrap();
    assert!(r.read("/etc/host", 10).is_err());

    // The target being a symlink is replaced, not followed.
    std::fs::write(outside.join("victim"), b"keep").unwrap();
    symlink(outside.join("victim"), root.join("etc/ld.so.cache")).ok();
    std::fs::remove_file(root.join("etc/ld.so.cache")).unwrap();
    symlink(outside.join("victim"), root.join("etc/ld.so.cache")).unwrap();
    r.write_atomic("/etc", "ld.so.cache", b"new", 0o644)
        .unwrap();
    assert_eq!(std::fs::read(outside.join("victim")).unwrap(), b"keep");
    assert_eq!(std::fs::read(root.join("etc/ld.so.cache")).unwrap(), b"new");

    // Missing directories are created inside; `..` is refused.
    r.write_atomic("/a/b", "c", b"z", 0o644).unwrap();
    assert!(root.join("a/b/c").exists());
    assert!(r.write_atomic("/a/../..", "c", b"z", 0o644).is_err());
    // Absolute symlinks resolve inside the root for existence checks.
    symlink("/etc", root.join("etc2")).unwrap();
    assert!(r.exists("/etc2/ld.so.cache"));
    assert!(!r.exists("/etc2/../../outside/victim"));
}

#[test]
fn non_regular_files_are_never_opened_and_refusals_say_why() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    let r = Root::open(&root).unwrap();

    // A FIFO: an open for reading would block forever; we must return at once.
    nix::unistd::mkfifo(
        &root.join("etc/fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .unwrap();
    let e = r.read("/etc/fifo", 100).unwrap_err().to_string();
    assert!(e.contains("/etc/fifo in the image is a FIFO"), "{e}");

    // A character device node (/dev/null's numbers): refused by type, before any open.
    nix::sys::stat::mknod(
        &root.join("etc/dev"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o644),
        nix::sys::stat::makedev(1, 3),
    )
    .unwrap();
    use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
    let watch = Inotify::init(InitFlags::IN_NONBLOCK).unwrap();
    watch
        .add_watch(&root.join("etc/dev"), AddWatchFlags::IN_OPEN)
        .unwrap();
    let e = r.read("/etc/dev", 100).unwrap_err().to_string();
    assert!(e.contains("is a character device"), "{e}");
    // The kernel reports every real open of the node; an O_PATH lookup is not one.
    assert!(watch.read_events().is_err(), "the device node was opened");
    // The check itself is live: a real open is reported.
    drop(std::fs::File::open(root.join("etc/dev")).unwrap());
    assert_eq!(watch.read_events().unwrap().len(), 1);

    // A directory where a file is expected, for reading and for replacing.
    std::fs::create_dir(root.join("etc/ld.so.cache")).unwrap();
    let e = r.read("/etc/ld.so.cache", 100).unwrap_err().to_string();
    assert!(
        e.contains("/etc/ld.so.cache in the image is a directory"),
        "{e}"
    );
    let e = r
        .write_atomic("/etc", "ld.so.cache", b"x", 0o644)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("/etc/ld.so.cache in the image is a directory"),
        "{e}"
    );

    // Over the bound.
    std::fs::write(root.join("etc/big"), vec![0u8; 64]).unwrap();
    assert!(matches!(
        r.read("/etc/big", 10),
        Err(InRootError::TooLarge { size: 64, .. })
    ));

    // A FIFO or device node at the write target is replaced, never opened.
    r.write_atomic("/etc", "fifo", b"ok", 0o644).unwrap();
    assert_eq!(std::fs::read(root.join("etc/fifo")).unwrap(), b"ok");
    r.write_atomic("/etc", "dev", b"ok", 0o644).unwrap();
    assert_eq!(std::fs::read(root.join("etc/dev")).unwrap(), b"ok");

    // /etc itself a symlink: named as such, for reads and writes.
    let root2 = t.path().join("root2");
    std::fs::create_dir_all(root2.join("real")).unwrap();
    symlink("/real", root2.join("etc")).unwrap();
    let r2 = Root::open(&root2).unwrap();
    let e = r2.read("/etc/ld.so.cache", 100).unwrap_err().to_string();
    assert_eq!(e, "/etc is a symlink in the image; refusing to follow it");
    let e = r2
        .write_atomic("/etc", "ld.so.cache", b"x", 0o644)
        .unwrap_err()
        .to_string();
    assert_eq!(e, "/etc is a symlink in the image; refusing to follow it");
    assert!(!root2.join("real/ld.so.cache").exists());

    // A regular file where a directory is expected.
    std::fs::write(root.join("lib"), b"").unwrap();
    let e = r.read("/lib/x/y", 100).unwrap_err().to_string();
    assert!(
        e.contains("/lib in the image is a regular file, not a directory"),
        "{e}"
    );
    assert!(r.read("/nope", 10).unwrap_err().is_not_found());
}

#[test]
fn squatted_temp_names_do_not_stop_a_write() {
    let t = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(t.path().join("etc")).unwrap();
    // What the image could place where the name a writer picks would be (the old name was
    // `.<name>.nvidia-shim.<pid>`): a symlink out of the root and a plain file.
    let pid = std::process::id();
    symlink(
        "/etc/passwd",
        t.path().join(format!("etc/.ld.so.cache.nvidia-shim.{pid}")),
    )
    .unwrap();
    std::fs::write(t.path().join(format!("etc/.libx.nvidia-shim.{pid}")), b"").unwrap();
    let r = Root::open(t.path()).unwrap();
    r.write_atomic("/etc", "ld.so.cache", b"new", 0o644)
        .unwrap();
    assert_eq!(
        std::fs::read(t.path().join("etc/ld.so.cache")).unwrap(),
        b"new"
    );
    r.symlink_atomic("/etc", "libx", "target").unwrap();
    assert_eq!(
        std::fs::read_link(t.path().join("etc/libx")).unwrap(),
        std::path::Path::new("target")
    );
}

#[test]
fn a_closed_gate_stops_every_write() {
    let t = tempfile::tempdir().unwrap();
    let gate = WriteGate::new();
    let r = Root::open(t.path()).unwrap().gated(gate.clone());
    let dir = r.link_dir("/lib").unwrap();
    r.write_atomic("/etc", "a", b"1", 0o644).unwrap();
    gate.close();
    for e in [
        r.write_atomic("/etc", "b", b"2", 0o644).unwrap_err(),
        r.link_dir("/usr").unwrap_err(),
        dir.symlink("x", "y").unwrap_err(),
    ] {
        assert!(matches!(e, InRootError::Abandoned), "{e}");
    }
    assert!(!t.path().join("etc/b").exists() && !t.path().join("usr").exists());
    assert!(std::fs::symlink_metadata(t.path().join("lib/x")).is_err());
}
