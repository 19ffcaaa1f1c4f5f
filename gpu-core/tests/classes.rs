//! Device classes beyond GPUs on a fake host that has them all: IMEX channels 0–2, uverbs and
//! rdma_cm, nvidia-fs0/1, the NVSwitch nodes, gdrdrv, and DRM nodes for two GPUs. Each request
//! gives exactly its class's nodes (with cgroup rules), only next to a GPU; a channel the host
//! lacks is refused naming what it has; DRM nodes follow the selected GPU.

use gpu_core::fixture::{FakeHost, Layout};
use gpu_core::plan::ImageLayout;
use gpu_core::{Injector, Plan};
use oci_spec::runtime::Spec;

fn spec(env: &[&str], mounts: &[&str]) -> Spec {
    let mounts: Vec<serde_json::Value> = mounts
        .iter()
        .map(|d| serde_json::json!({"destination": d, "type": "bind", "source": "/dev/null"}))
        .collect();
    serde_json::from_value(serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {"cwd": "/", "args": ["sh"], "env": env, "user": {"uid": 0, "gid": 0}},
        "root": {"path": "rootfs"},
        "mounts": mounts,
    }))
    .expect("spec")
}

struct Host {
    _dir: tempfile::TempDir,
    injector: Injector,
}

fn host(tweak: impl FnOnce(&mut gpu_core::CoreConfig)) -> Option<Host> {
    // SAFETY: plain getter.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: making device nodes needs root");
        return None;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let h = FakeHost::build(dir.path(), Layout::Gke, 2).expect("host");
    h.add_device_classes().expect("class nodes");
    let mut cfg = h.config();
    tweak(&mut cfg);
    Some(Host {
        _dir: dir,
        injector: Injector::new(cfg),
    })
}

fn plan(h: &Host, env: &[&str], mounts: &[&str]) -> Result<Option<Plan>, String> {
    let layout = ImageLayout {
        libdir: "/usr/lib/x86_64-linux-gnu".into(),
        libdir32: "/usr/lib/i386-linux-gnu".into(),
        ..Default::default()
    };
    h.injector
        .plan(&spec(env, mounts), &layout)
        .map_err(|e| e.to_string())
}

/// The plan's device nodes outside the GPU set every container gets.
fn extra(p: &Plan) -> Vec<String> {
    p.devices
        .iter()
        .map(|d| d.path.clone())
        .filter(|d| !d.starts_with("/dev/nvidia-uvm") && d != "/dev/nvidiactl")
        .filter(|d| {
            d.strip_prefix("/dev/nvidia")
                .is_none_or(|n| n.parse::<u32>().is_err())
        })
        .collect()
}

#[test]
fn each_variable_gives_exactly_its_nodes() {
    let Some(h) = host(|_| {}) else { return };
    let gpu = "NVIDIA_VISIBLE_DEVICES=0";
    for (var, want) in [
        (
            "NVIDIA_IMEX_CHANNELS=0,2",
            vec![
                "/dev/nvidia-caps-imex-channels/channel0",
                "/dev/nvidia-caps-imex-channels/channel2",
            ],
        ),
        (
            "NVIDIA_IMEX_CHANNELS=all",
            vec![
                "/dev/nvidia-caps-imex-channels/channel0",
                "/dev/nvidia-caps-imex-channels/channel1",
                "/dev/nvidia-caps-imex-channels/channel2",
            ],
        ),
        ("NVIDIA_IMEX_CHANNELS=none", vec![]),
        (
            "NVIDIA_MOFED=enabled",
            vec!["/dev/infiniband/rdma_cm", "/dev/infiniband/uverbs0"],
        ),
        (
            "NVIDIA_GDS=enabled",
            vec!["/dev/nvidia-fs0", "/dev/nvidia-fs1"],
        ),
        (
            "NVIDIA_NVSWITCH=enabled",
            vec!["/dev/nvidia-nvswitch0", "/dev/nvidia-nvswitchctl"],
        ),
        ("NVIDIA_GDRCOPY=enabled", vec!["/dev/gdrdrv"]),
        ("NVIDIA_GDRCOPY=disabled", vec![]),
        ("NVIDIA_DRIVER_CAPABILITIES=compute", vec![]),
    ] {
        let p = plan(&h, &[gpu, var], &[]).expect(var).expect("a request");
        let mut got = extra(&p);
        got.sort();
        assert_eq!(got, want, "{var}");
        // Each node has its cgroup rule: the plan lists no node that apply skips.
        assert!(p.no_cgroup_rule.is_empty(), "{var}");
    }
    // The volume-mount list's imex/<id> entries, as the device plugin writes them.
    let p = plan(
        &h,
        &[],
        &[
            "/var/run/nvidia-container-devices/1",
            "/var/run/nvidia-container-devices/imex/1",
        ],
    )
    .expect("mounts")
    .expect("a request");
    assert_eq!(extra(&p), ["/dev/nvidia-caps-imex-channels/channel1"]);
}

#[test]
fn a_missing_channel_is_refused_naming_what_the_host_has() {
    let Some(h) = host(|_| {}) else { return };
    let e = plan(
        &h,
        &["NVIDIA_VISIBLE_DEVICES=0", "NVIDIA_IMEX_CHANNELS=7"],
        &[],
    )
    .unwrap_err();
    assert!(
        e.contains("IMEX channel 7 is not on this host (it has: 0, 1, 2)"),
        "{e}"
    );
    let e = plan(
        &h,
        &["NVIDIA_VISIBLE_DEVICES=0", "NVIDIA_IMEX_CHANNELS=x"],
        &[],
    )
    .unwrap_err();
    assert!(e.contains("not an IMEX channel number"), "{e}");
    // With env requests turned off, only the orchestrator's mounts grant channels.
    let Some(h) = host(|c| c.gpu.ignore_imex_channel_requests = true) else {
        return;
    };
    let p = plan(
        &h,
        &["NVIDIA_VISIBLE_DEVICES=0", "NVIDIA_IMEX_CHANNELS=7"],
        &[],
    )
    .expect("ignored")
    .expect("a request");
    assert!(extra(&p).is_empty(), "{:?}", extra(&p));
}

#[test]
fn drm_nodes_follow_the_selected_gpu_and_nothing_comes_without_a_gpu() {
    let Some(h) = host(|_| {}) else { return };
    let graphics = "NVIDIA_DRIVER_CAPABILITIES=graphics,compute";
    for (gpu, want) in [
        ("0", vec!["/dev/dri/card1", "/dev/dri/renderD129"]),
        ("1", vec!["/dev/dri/card0", "/dev/dri/renderD128"]),
    ] {
        let p = plan(
            &h,
            &[&format!("NVIDIA_VISIBLE_DEVICES={gpu}"), graphics],
            &[],
        )
        .expect("plan")
        .expect("a request");
        let mut got = extra(&p);
        got.sort();
        assert_eq!(got, want, "GPU {gpu}");
    }
    // No request at all, or a request for no GPU: no class node, a warning for the latter.
    assert!(plan(
        &h,
        &["NVIDIA_MOFED=enabled", "NVIDIA_IMEX_CHANNELS=all"],
        &[]
    )
    .expect("no request")
    .is_none());
    let p = plan(
        &h,
        &["NVIDIA_VISIBLE_DEVICES=none", "NVIDIA_MOFED=enabled"],
        &[],
    )
    .expect("none")
    .expect("a request");
    assert!(extra(&p).is_empty(), "{:?}", extra(&p));
    assert!(
        p.warnings
            .iter()
            .any(|w| w.contains("NVIDIA_MOFED ignored")),
        "{:?}",
        p.warnings
    );
}
