//! Times one cold `Injector::prepare` (as a fresh shim process does) on a fake host.
use std::time::Instant;

fn main() {
    let dir = std::path::PathBuf::from(std::env::args().nth(1).expect("dir"));
    let first = !dir.join("root").exists();
    let host = if first {
        gpu_core::fixture::FakeHost::build(&dir, gpu_core::fixture::Layout::Gke, 1).unwrap()
    } else {
        // Reuse: rebuild paths only.
        gpu_core::fixture::FakeHost {
            dir: dir.clone(),
            root: dir.join("root/usr/local/nvidia"),
            dev_root: dir.join("devroot"),
            proc_root: dir.join("proc"),
            layout: gpu_core::fixture::Layout::Gke,
            uuids: vec![],
        }
    };
    let rootfs = dir.join("rootfs");
    std::fs::create_dir_all(rootfs.join("etc")).unwrap();
    std::fs::copy("/etc/ld.so.cache", rootfs.join("etc/ld.so.cache")).unwrap();
    let mut spec: oci_spec::runtime::Spec = serde_json::from_value(serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {"cwd": "/", "args": ["sh"], "user": {"uid": 0, "gid": 0}, "env": ["NVIDIA_VISIBLE_DEVICES=all"]},
        "root": {"path": "rootfs"},
    }))
    .unwrap();
    let t = Instant::now();
    let inj = gpu_core::Injector::new(host.config());
    let t1 = t.elapsed();
    let r = inj.prepare(&mut spec, &rootfs).unwrap();
    let t2 = t.elapsed();
    let data = serde_json::to_vec(&spec).unwrap();
    let t3 = t.elapsed();
    println!(
        "new {t1:?} prepare {:?} serialize {:?} ({} bytes) {:?}",
        t2 - t1,
        t3 - t2,
        data.len(),
        r.map(|x| x.summary)
    );
}
