//! Planning cost with discovery cached: request parsing + plan for 1 and 8 GPUs (target < 1 ms).

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use gpu_core::discover::{Discovery, Fixed, Host};
use gpu_core::fixture::{FakeHost, Layout};
use gpu_core::plan::ImageLayout;
use gpu_core::Injector;

fn bench(c: &mut Criterion) {
    let layout = ImageLayout {
        libdir: "/usr/lib/x86_64-linux-gnu".into(),
        libdir32: "/usr/lib/i386-linux-gnu".into(),
        ..Default::default()
    };
    for gpus in [1usize, 8] {
        let dir = tempfile::tempdir().expect("tempdir");
        let host = FakeHost::build(dir.path(), Layout::Gke, gpus).expect("fake host");
        let inv = Host::new(host.config().driver)
            .inventory()
            .expect("inventory");
        let injector = Injector::with_discovery(host.config(), Arc::new(Fixed(inv)));
        let spec: oci_spec::runtime::Spec = serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {"cwd": "/", "args": ["sh"], "user": {"uid": 0, "gid": 0},
                        "env": ["PATH=/usr/bin", "NVIDIA_VISIBLE_DEVICES=all",
                                "NVIDIA_DRIVER_CAPABILITIES=compute,utility",
                                "NVIDIA_REQUIRE_CUDA=cuda>=12.0 brand=tesla,driver>=470,driver<471"]},
            "root": {"path": "rootfs"},
        }))
        .expect("spec");
        c.bench_function(&format!("plan/{gpus}-gpu"), |b| {
            b.iter(|| injector.plan(black_box(&spec), &layout).expect("plan"))
        });
        // The cached discovery itself: procfs version read + the per-version cache file.
        c.bench_function(&format!("discovery-cached/{gpus}-gpu"), |b| {
            b.iter(|| {
                // A fresh Host each time: the shim process starts without the in-memory memo.
                let h = Host::new(host.config().driver);
                black_box(h.inventory().expect("inventory"))
            })
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
