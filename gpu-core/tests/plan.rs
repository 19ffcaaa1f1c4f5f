//! Discovery on fake driver hosts (standard and GKE layouts) and planning for every request form.

use std::sync::Arc;

use gpu_core::discover::{Discovery, Fixed, Host};
use gpu_core::fixture::{FakeHost, Layout, VERSION};
use gpu_core::inventory::GpuSource;
use gpu_core::plan::ImageLayout;
use gpu_core::{CoreConfig, Injector, Plan};
use oci_spec::runtime::Spec;

fn spec(env: &[&str], annotations: &[(&str, &str)], privileged: bool) -> Spec {
    let caps: Vec<&str> = if privileged {
        vec!["CAP_SYS_ADMIN", "CAP_CHOWN"]
    } else {
        vec!["CAP_CHOWN"]
    };
    let ann: serde_json::Map<String, serde_json::Value> = annotations
        .iter()
        .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.to_string())))
        .collect();
    let v = serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {"cwd": "/", "args": ["sh"], "env": env, "user": {"uid": 0, "gid": 0},
                    "capabilities": {"bounding": caps, "effective": caps, "permitted": caps}},
        "root": {"path": "rootfs"},
        "annotations": ann,
        "linux": {"namespaces": [{"type": "mount"}]},
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
    });
    serde_json::from_value(v).expect("valid spec")
}

fn debian() -> ImageLayout {
    ImageLayout {
        libdir: "/usr/lib/x86_64-linux-gnu".into(),
        libdir32: "/usr/lib/i386-linux-gnu".into(),
        ..Default::default()
    }
}

struct Env {
    _dir: tempfile::TempDir,
    host: FakeHost,
    injector: Injector,
}

fn env(layout: Layout, gpus: usize) -> Env {
    env_with(layout, gpus, |_| {})
}

fn env_with(layout: Layout, gpus: usize, tweak: impl FnOnce(&mut CoreConfig)) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let host = FakeHost::build(dir.path(), layout, gpus).unwrap();
    let mut cfg = host.config();
    tweak(&mut cfg);
    let injector = Injector::new(cfg);
    Env {
        _dir: dir,
        host,
        injector,
    }
}

fn plan(e: &Env, env: &[&str]) -> Result<Option<Plan>, String> {
    e.injector
        .plan(&spec(env, &[], false), &debian())
        .map_err(|e| e.to_string())
}

fn dests(p: &Plan) -> Vec<&str> {
    p.mounts.iter().map(|m| m.destination.as_str()).collect()
}

fn nodes(p: &Plan) -> Vec<&str> {
    p.devices.iter().map(|d| d.path.as_str()).collect()
}

#[test]
fn discovers_both_layouts() {
    for layout in [Layout::Standard, Layout::Gke] {
        let e = env(layout, 2);
        let inv = Host::new(e.host.config().driver).inventory().unwrap();
        assert_eq!(inv.driver_version, VERSION);
        assert_eq!(
            inv.gpu_source,
            GpuSource::Procfs,
            "fake NVML path does not load"
        );
        assert_eq!(inv.cuda_version.as_deref(), Some("13.0"));
        assert_eq!(inv.gpus.len(), 2);
        assert_eq!(inv.gpus[1].uuid, e.host.uuids[1]);
        assert_eq!(inv.gpus[1].node.minor, 1);
        let cuda = inv
            .libraries
            .iter()
            .find(|l| l.prefix == "libcuda.so")
            .unwrap_or_else(|| panic!("{layout:?}: libcuda not found: {:?}", inv.libraries));
        assert_eq!(cuda.soname.as_deref(), Some("libcuda.so.1"));
        assert_eq!(cuda.file_name, format!("libcuda.so.{VERSION}"));
        assert_eq!(
            inv.libraries.len(),
            gpu_core::fixture::LIBS.len(),
            "{layout:?}"
        );
        assert!(inv.binaries.iter().any(|b| b.name == "nvidia-smi"));
        assert_eq!(inv.firmware.len(), 1);
        assert!(inv.firmware[0].1.ends_with("/gsp_ga10x.bin"));
        let uvm = inv.control("/dev/nvidia-uvm").unwrap();
        assert_eq!(uvm.major, 236);
        // The second call is served from the per-version cache file.
        assert!(std::fs::read_dir(e.host.dir.join("cache")).unwrap().count() == 1);
        let again = Host::new(e.host.config().driver).inventory().unwrap();
        assert_eq!(*again, *inv);
    }
}

#[test]
fn no_request_means_no_edits() {
    let e = env(Layout::Standard, 2);
    for env in [
        &[][..],
        &["NVIDIA_VISIBLE_DEVICES="][..],
        &["NVIDIA_VISIBLE_DEVICES=void"][..],
        &["NVIDIA_VISIBLE_DEVICES=0,void"][..],
        &["CUDA_VERSION=12.2"][..],
    ] {
        assert!(plan(&e, env).unwrap().is_none(), "{env:?}");
    }
    // A pod sandbox never gets GPUs, whatever its env says.
    let s = spec(
        &["NVIDIA_VISIBLE_DEVICES=all"],
        &[("io.kubernetes.cri.container-type", "sandbox")],
        true,
    );
    assert!(e.injector.plan(&s, &debian()).unwrap().is_none());
}

#[test]
fn visible_devices_forms() {
    let e = env(Layout::Standard, 2);
    let all = plan(&e, &["NVIDIA_VISIBLE_DEVICES=all"]).unwrap().unwrap();
    assert!(nodes(&all).contains(&"/dev/nvidia0") && nodes(&all).contains(&"/dev/nvidia1"));
    assert!(nodes(&all).contains(&"/dev/nvidiactl"));
    assert_eq!(all.selected.len(), 2);

    let one = plan(&e, &["NVIDIA_VISIBLE_DEVICES=1"]).unwrap().unwrap();
    assert!(nodes(&one).contains(&"/dev/nvidia1") && !nodes(&one).contains(&"/dev/nvidia0"));

    let lower = e.host.uuids[0].to_ascii_lowercase();
    let by_uuid = plan(&e, &[&format!("NVIDIA_VISIBLE_DEVICES= {lower} ")])
        .unwrap()
        .unwrap();
    assert_eq!(by_uuid.selected, vec![e.host.uuids[0].clone()]);

    let by_bus = plan(&e, &["NVIDIA_VISIBLE_DEVICES=0000:11:00.0"])
        .unwrap()
        .unwrap();
    assert_eq!(by_bus.selected, vec![e.host.uuids[1].clone()]);

    let none = plan(&e, &["NVIDIA_VISIBLE_DEVICES=none"]).unwrap().unwrap();
    // nvidia-uvm-tools has no host node yet: its number comes from /proc/devices.
    assert_eq!(
        nodes(&none),
        vec!["/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools"]
    );
    assert!(
        dests(&none).contains(&"/usr/bin/nvidia-smi"),
        "driver without GPUs"
    );

    let err = plan(&e, &["NVIDIA_VISIBLE_DEVICES=0,7"]).unwrap_err();
    assert!(err.contains("unknown device \"7\""), "{err}");
    assert!(err.contains("this host has: 0, 1, GPU-"), "{err}");
    let err = plan(&e, &["NVIDIA_VISIBLE_DEVICES=0:1"]).unwrap_err();
    assert!(err.contains("unknown device \"0:1\""), "{err}");
}

#[test]
fn capabilities_select_files() {
    let e = env(Layout::Gke, 1);
    let lib = |n: &str| format!("/usr/lib/x86_64-linux-gnu/{n}.{VERSION}");
    let dflt = plan(&e, &["NVIDIA_VISIBLE_DEVICES=0"]).unwrap().unwrap();
    let d = dests(&dflt);
    assert!(
        d.contains(&lib("libcuda.so").as_str()) && d.contains(&lib("libnvidia-ml.so").as_str())
    );
    assert!(!d.contains(&lib("libnvidia-encode.so").as_str()));
    assert!(d.contains(&"/usr/bin/nvidia-smi") && d.contains(&"/usr/bin/nvidia-cuda-mps-control"));
    assert!(d.contains(&format!("/lib/firmware/nvidia/{VERSION}/gsp_ga10x.bin").as_str()));
    for m in &dflt.mounts {
        for o in ["ro", "nosuid", "nodev"] {
            assert!(m.options.iter().any(|x| x == o), "{m:?} lacks {o}");
        }
    }
    assert_eq!(dflt.masked_paths, vec!["/proc/driver/nvidia/params"]);

    let util = plan(
        &e,
        &[
            "NVIDIA_VISIBLE_DEVICES=0",
            "NVIDIA_DRIVER_CAPABILITIES=utility",
        ],
    )
    .unwrap()
    .unwrap();
    let d = dests(&util);
    assert!(d.contains(&lib("libnvidia-ml.so").as_str()));
    assert!(
        !d.contains(&lib("libcuda.so").as_str()),
        "utility has no libcuda"
    );
    assert!(!nodes(&util).contains(&"/dev/nvidia-uvm"));

    let video = plan(
        &e,
        &[
            "NVIDIA_VISIBLE_DEVICES=0",
            "NVIDIA_DRIVER_CAPABILITIES=video",
        ],
    )
    .unwrap()
    .unwrap();
    let d = dests(&video);
    assert!(
        d.contains(&lib("libnvidia-encode.so").as_str()) && d.contains(&lib("libcuda.so").as_str())
    );

    let err = plan(
        &e,
        &[
            "NVIDIA_VISIBLE_DEVICES=0",
            "NVIDIA_DRIVER_CAPABILITIES=compute,gpu",
        ],
    )
    .unwrap_err();
    assert!(
        err.contains("NVIDIA_DRIVER_CAPABILITIES") && err.contains("\"gpu\""),
        "{err}"
    );
}

#[test]
fn loader_entries_map_sonames_to_the_injected_files() {
    let e = env(Layout::Standard, 1);
    let p = plan(&e, &["NVIDIA_VISIBLE_DEVICES=all"]).unwrap().unwrap();
    let target = format!("/usr/lib/x86_64-linux-gnu/libcuda.so.{VERSION}");
    for key in ["libcuda.so.1", "libcuda.so"] {
        assert!(
            p.ld_entries
                .iter()
                .any(|x| x.key == key && x.value == target),
            "{key} → {target} missing: {:?}",
            p.ld_entries
        );
    }
    let rpm = e
        .injector
        .plan(
            &spec(&["NVIDIA_VISIBLE_DEVICES=all"], &[], false),
            &ImageLayout {
                libdir: "/usr/lib64".into(),
                libdir32: "/usr/lib".into(),
                ..Default::default()
            },
        )
        .unwrap()
        .unwrap();
    assert!(dests(&rpm).contains(&format!("/usr/lib64/libcuda.so.{VERSION}").as_str()));
}

#[test]
fn requirements() {
    let e = env(Layout::Standard, 1);
    let ok = plan(
        &e,
        &["NVIDIA_VISIBLE_DEVICES=0", "NVIDIA_REQUIRE_CUDA=cuda>=12.0"],
    );
    assert!(ok.unwrap().is_some());
    let err = plan(
        &e,
        &["NVIDIA_VISIBLE_DEVICES=0", "NVIDIA_REQUIRE_CUDA=cuda>=99.0"],
    )
    .unwrap_err();
    assert!(
        err.contains("NVIDIA_REQUIRE_CUDA") && err.contains("cuda>=99.0"),
        "{err}"
    );
    assert!(err.contains("CUDA 13.0") && err.contains(VERSION), "{err}");
    assert!(plan(
        &e,
        &[
            "NVIDIA_VISIBLE_DEVICES=0",
            "NVIDIA_REQUIRE_CUDA=cuda>=99.0",
            "NVIDIA_DISABLE_REQUIRE=true"
        ]
    )
    .unwrap()
    .is_some());
    let err = plan(
        &e,
        &["NVIDIA_VISIBLE_DEVICES=0", "NVIDIA_REQUIRE_ARCH=arch=>8"],
    )
    .unwrap_err();
    assert!(err.contains("NVIDIA_REQUIRE_ARCH"), "{err}");
    let err = plan(
        &e,
        &["NVIDIA_VISIBLE_DEVICES=0", "NVIDIA_DISABLE_REQUIRE=maybe"],
    )
    .unwrap_err();
    assert!(err.contains("NVIDIA_DISABLE_REQUIRE"), "{err}");
    // A legacy CUDA image (CUDA_VERSION, no NVIDIA_REQUIRE_CUDA) requires its own CUDA version.
    let err = plan(&e, &["NVIDIA_VISIBLE_DEVICES=0", "CUDA_VERSION=99.1.0"]).unwrap_err();
    assert!(err.contains("cuda>=99.1"), "{err}");
}

#[test]
fn privilege_and_volume_mounts() {
    let e = env_with(Layout::Standard, 2, |c| {
        c.gpu.accept_env_unprivileged = false
    });
    let s = spec(&["NVIDIA_VISIBLE_DEVICES=all"], &[], false);
    assert!(
        e.injector.plan(&s, &debian()).unwrap().is_none(),
        "unprivileged env refused"
    );
    let s = spec(&["NVIDIA_VISIBLE_DEVICES=all"], &[], true);
    assert!(
        e.injector.plan(&s, &debian()).unwrap().is_some(),
        "privileged env honoured"
    );

    let mut s = spec(
        &["NVIDIA_VISIBLE_DEVICES=/var/run/nvidia-container-devices"],
        &[],
        false,
    );
    let mut mounts = s.mounts().clone().unwrap_or_default();
    mounts.push(
        serde_json::from_value(serde_json::json!({
            "destination": format!("/var/run/nvidia-container-devices/{}", e.host.uuids[1]),
            "type": "bind", "source": "/dev/null", "options": ["bind", "ro"]
        }))
        .unwrap(),
    );
    s.set_mounts(Some(mounts));
    let p = e.injector.plan(&s, &debian()).unwrap().unwrap();
    assert_eq!(p.selected, vec![e.host.uuids[1].clone()]);

    let dflt = env(Layout::Standard, 1);
    let err = dflt
        .injector
        .plan(
            &spec(
                &["NVIDIA_VISIBLE_DEVICES=0", "NVIDIA_MIG_CONFIG_DEVICES=all"],
                &[],
                false,
            ),
            &debian(),
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("NVIDIA_MIG_CONFIG_DEVICES"), "{err}");
}

#[test]
fn cdi_devices_resolve_and_hooks_are_refused() {
    let e = env(Layout::Standard, 1);
    let cdi = e.host.dir.join("cdi");
    std::fs::create_dir_all(&cdi).unwrap();
    std::fs::write(
        cdi.join("vendor.yaml"),
        "cdiVersion: 0.5.0\nkind: example.com/dev\ndevices:\n- name: \"0\"\n  containerEdits:\n    deviceNodes:\n    - path: /dev/example0\n      type: c\n      major: 10\n      minor: 200\n      uid: 1000\n    env: [EXAMPLE=1]\ncontainerEdits:\n  mounts:\n  - hostPath: /etc/hostname\n    containerPath: /etc/example-host\n    options: [ro, bind]\n",
    )
    .unwrap();
    std::fs::write(cdi.join("broken.json"), "{ not json").unwrap();
    std::fs::write(
        cdi.join("hooky.yaml"),
        "cdiVersion: 0.5.0\nkind: evil.com/gpu\ndevices:\n- name: all\n  containerEdits:\n    hooks:\n    - hookName: createContainer\n      path: /usr/bin/evil\n",
    )
    .unwrap();
    let s = spec(&[], &[("cdi.k8s.io/test_0", "example.com/dev=0")], false);
    let p = e.injector.plan(&s, &debian()).unwrap().unwrap();
    assert_eq!(nodes(&p), vec!["/dev/example0"]);
    assert_eq!((p.devices[0].major, p.devices[0].uid), (10, 1000));
    assert!(p.env.contains(&"EXAMPLE=1".to_string()));
    assert!(dests(&p).contains(&"/etc/example-host"));

    std::fs::write(
        cdi.join("net.yaml"),
        "cdiVersion: 1.1.0\nkind: net.example.com/nic\ndevices:\n- name: a\n  containerEdits:\n    netDevices:\n    - hostInterfaceName: eth9\n      name: eth0\n",
    )
    .unwrap();
    let s = spec(&[], &[("cdi.k8s.io/n", "net.example.com/nic=a")], false);
    let err = e.injector.plan(&s, &debian()).unwrap_err().to_string();
    assert!(err.contains("netDevices"), "{err}");

    let s = spec(&[], &[("cdi.k8s.io/x", "evil.com/gpu=all")], false);
    let err = e.injector.plan(&s, &debian()).unwrap_err().to_string();
    assert!(
        err.contains("hook") && err.contains("/usr/bin/evil"),
        "{err}"
    );

    let s = spec(&[], &[("cdi.k8s.io/x", "example.com/dev=9")], false);
    let err = e.injector.plan(&s, &debian()).unwrap_err().to_string();
    assert!(
        err.contains("example.com/dev=9")
            && err.contains("known: evil.com/gpu=all, example.com/dev=0"),
        "{err}"
    );
    assert!(
        err.contains("broken.json"),
        "per-file errors are reported: {err}"
    );

    let s = spec(&[], &[("cdi.k8s.io/x", "not-qualified")], false);
    let err = e.injector.plan(&s, &debian()).unwrap_err().to_string();
    assert!(err.contains("cdi.k8s.io/x"), "{err}");
}

#[test]
fn prepare_edits_the_spec_and_writes_the_loader_cache_in_root() {
    let e = env(Layout::Gke, 2);
    let rootfs = e.host.dir.join("rootfs");
    std::fs::create_dir_all(rootfs.join("etc")).unwrap();
    std::fs::write(rootfs.join("etc/debian_version"), "12.0\n").unwrap();
    // The image's cache points libcuda.so.1 at a stale stub.
    std::fs::write(
        rootfs.join("etc/ld.so.cache"),
        gpu_core::ldcache::write(&[gpu_core::ldcache::Entry::new(
            gpu_core::ldcache::FLAGS_LIB64,
            "libcuda.so.1",
            "/usr/local/cuda/stubs/libcuda.so.1",
        )]),
    )
    .unwrap();
    let mut s = spec(&["NVIDIA_VISIBLE_DEVICES=1"], &[], false);
    let done = e.injector.prepare(&mut s, &rootfs).unwrap().unwrap();
    assert!(done.summary.contains("1 GPU"), "{}", done.summary);

    let linux = s.linux().as_ref().unwrap();
    let devs = linux.devices().as_ref().unwrap();
    assert!(devs
        .iter()
        .any(|d| d.path().to_str() == Some("/dev/nvidia1") && d.minor() == 1));
    let rules = linux
        .resources()
        .as_ref()
        .unwrap()
        .devices()
        .as_ref()
        .unwrap();
    assert!(rules.iter().any(|r| r.allow()
        && r.major() == Some(195)
        && r.minor() == Some(1)
        && r.access().as_deref() == Some("rwm")));
    assert!(!rules
        .iter()
        .any(|r| r.minor() == Some(0) && r.major() == Some(195)));
    assert!(linux
        .masked_paths()
        .as_ref()
        .unwrap()
        .contains(&"/proc/driver/nvidia/params".to_string()));

    let cache =
        gpu_core::ldcache::parse(&std::fs::read(rootfs.join("etc/ld.so.cache")).unwrap()).unwrap();
    let cuda: Vec<_> = cache.iter().filter(|x| x.key == "libcuda.so.1").collect();
    assert_eq!(cuda.len(), 1);
    assert_eq!(
        cuda[0].value,
        format!("/usr/lib/x86_64-linux-gnu/libcuda.so.{VERSION}")
    );

    // A rootfs whose /etc is a symlink out of the root is refused, nothing written outside.
    let evil = e.host.dir.join("evil-rootfs");
    let outside = e.host.dir.join("outside");
    std::fs::create_dir_all(&evil).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, evil.join("etc")).unwrap();
    let mut s = spec(&["NVIDIA_VISIBLE_DEVICES=0"], &[], false);
    let err = e.injector.prepare(&mut s, &evil).unwrap_err().to_string();
    assert!(err.contains("ld.so.cache"), "{err}");
    assert!(std::fs::read_dir(&outside).unwrap().next().is_none());
}

#[test]
fn fixed_inventory_seam() {
    let e = env(Layout::Standard, 3);
    let inv = Host::new(e.host.config().driver).inventory().unwrap();
    let fixed = Injector::with_discovery(e.host.config(), Arc::new(Fixed(inv)));
    let p = fixed
        .plan(&spec(&["NVIDIA_VISIBLE_DEVICES=2"], &[], false), &debian())
        .unwrap()
        .unwrap();
    assert_eq!(p.selected, vec![e.host.uuids[2].clone()]);
}

fn nvml_env(gpus: usize, mig: bool) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let host = FakeHost::build_with_nvml(dir.path(), Layout::Gke, gpus, mig).unwrap();
    let injector = Injector::new(host.config());
    Env {
        _dir: dir,
        host,
        injector,
    }
}

#[test]
fn nvml_path_reads_brand_arch_memory_and_mig() {
    let e = nvml_env(2, true);
    let inv = Host::new(e.host.config().driver).inventory().unwrap();
    assert_eq!(inv.gpu_source, GpuSource::Nvml);
    assert_eq!(
        (
            inv.cuda_version.as_deref(),
            inv.cuda_version_source.as_str()
        ),
        (Some("13.0"), "nvml")
    );
    let g0 = &inv.gpus[0];
    assert_eq!(g0.uuid, gpu_core::fixture::gpu_uuid(0));
    assert_eq!(g0.pci_bus_id, "0000:10:00.0");
    assert_eq!(
        (g0.brand.as_deref(), g0.arch.as_deref()),
        (Some("Tesla"), Some("9.0"))
    );
    assert_eq!(g0.memory_mib, Some(80 * 1024));
    assert!(g0.mig_enabled && !inv.gpus[1].mig_enabled);
    assert_eq!(g0.migs.len(), 2);
    assert_eq!((g0.migs[1].gi, g0.migs[1].ci), (2, 0));
    let caps: Vec<&str> = g0.migs[1].caps.iter().map(|c| c.path.as_str()).collect();
    assert_eq!(
        caps,
        [
            "/dev/nvidia-caps/nvidia-cap21",
            "/dev/nvidia-caps/nvidia-cap22"
        ]
    );
    assert_eq!(
        g0.migs[1].caps[0].major, 237,
        "nvidia-caps major from /proc/devices"
    );
    assert_eq!(inv.mig_admin_caps.len(), 2);
}

#[test]
fn mig_selection_forms() {
    let e = nvml_env(2, true);
    let by_index = plan(&e, &["NVIDIA_VISIBLE_DEVICES=0:1"]).unwrap().unwrap();
    assert_eq!(by_index.selected, vec![gpu_core::fixture::mig_uuid(0, 1)]);
    assert_eq!(
        nodes(&by_index),
        vec![
            "/dev/nvidiactl",
            "/dev/nvidia0",
            "/dev/nvidia-caps/nvidia-cap21",
            "/dev/nvidia-caps/nvidia-cap22",
            "/dev/nvidia-uvm",
            "/dev/nvidia-uvm-tools"
        ]
    );
    let mig = gpu_core::fixture::mig_uuid(0, 0);
    let by_uuid = plan(&e, &[&format!("NVIDIA_VISIBLE_DEVICES={mig}")])
        .unwrap()
        .unwrap();
    assert!(nodes(&by_uuid).contains(&"/dev/nvidia-caps/nvidia-cap13"));
    // `all`: the MIG devices of a MIG-mode GPU, other GPUs whole.
    let all = plan(&e, &["NVIDIA_VISIBLE_DEVICES=all"]).unwrap().unwrap();
    assert_eq!(all.selected.len(), 3, "{:?}", all.selected);
    assert!(all.selected.contains(&gpu_core::fixture::gpu_uuid(1)));
    let err = plan(&e, &["NVIDIA_VISIBLE_DEVICES=0:5"]).unwrap_err();
    assert!(err.contains("0:0, MIG-") && err.contains("0:1"), "{err}");
    // Requirements see NVML's brand and arch.
    assert!(plan(
        &e,
        &[
            "NVIDIA_VISIBLE_DEVICES=1",
            "NVIDIA_REQUIRE_ARCH=brand=tesla,arch>=9.0"
        ]
    )
    .unwrap()
    .is_some());
    let err = plan(
        &e,
        &["NVIDIA_VISIBLE_DEVICES=1", "NVIDIA_REQUIRE_ARCH=arch>=10.0"],
    )
    .unwrap_err();
    assert!(
        err.contains("arch 9.0") && err.contains("GPU brand Tesla"),
        "{err}"
    );
    // MIG management for privileged containers.
    let s = spec(
        &["NVIDIA_VISIBLE_DEVICES=0", "NVIDIA_MIG_CONFIG_DEVICES=all"],
        &[],
        true,
    );
    let p = e.injector.plan(&s, &debian()).unwrap().unwrap();
    assert!(
        nodes(&p).contains(&"/dev/nvidia-caps/nvidia-cap1"),
        "{:?}",
        nodes(&p)
    );
}

#[test]
fn containerized_driver_root_resolves_absolute_links_inside_the_root() {
    // A driver container's root (/run/nvidia/driver) holds absolute links meant for that root:
    // `<root>/usr/lib/x86_64-linux-gnu/libcuda.so.V -> /opt/nvidia/libcuda.so.V`.
    let e = env(Layout::Standard, 1);
    let libdir = e.host.root.join("usr/lib/x86_64-linux-gnu");
    let name = format!("libcuda.so.{VERSION}");
    let real_dir = e.host.root.join("opt/nvidia");
    std::fs::create_dir_all(&real_dir).unwrap();
    std::fs::rename(libdir.join(&name), real_dir.join(&name)).unwrap();
    std::os::unix::fs::symlink(format!("/opt/nvidia/{name}"), libdir.join(&name)).unwrap();
    let inv = gpu_core::discover::discover(&e.host.config().driver, VERSION).unwrap();
    let cuda = inv
        .libraries
        .iter()
        .find(|l| l.prefix == "libcuda.so")
        .unwrap();
    assert_eq!(cuda.path, real_dir.join(&name).canonicalize().unwrap());
    assert_eq!(cuda.soname.as_deref(), Some("libcuda.so.1"));
}

#[test]
fn compat32_injects_32bit_libraries_into_the_32bit_dir() {
    let e = env(Layout::Standard, 1);
    e.host.add_32bit_lib("libcuda.so", "libcuda.so.1").unwrap();
    let name = format!("libcuda.so.{VERSION}");
    let dest32 = format!("/usr/lib/i386-linux-gnu/{name}");
    let dflt = plan(&e, &["NVIDIA_VISIBLE_DEVICES=0"]).unwrap().unwrap();
    assert!(
        !dests(&dflt).contains(&dest32.as_str()),
        "32-bit libs only with compat32"
    );
    let p = plan(
        &e,
        &[
            "NVIDIA_VISIBLE_DEVICES=0",
            "NVIDIA_DRIVER_CAPABILITIES=compute,compat32",
        ],
    )
    .unwrap()
    .unwrap();
    assert!(dests(&p).contains(&dest32.as_str()), "{:?}", dests(&p));
    assert!(dests(&p).contains(&format!("/usr/lib/x86_64-linux-gnu/{name}").as_str()));
    let e32 = p
        .ld_entries
        .iter()
        .find(|x| x.value == dest32)
        .expect("loader entry for the 32-bit library");
    assert_eq!(
        (e32.key.as_str(), e32.flags),
        ("libcuda.so.1", gpu_core::ldcache::FLAGS_LIB32)
    );
}

#[test]
fn graphics_brings_its_libraries_and_config_files() {
    let dir = tempfile::tempdir().unwrap();
    let host = FakeHost::build(dir.path(), Layout::Standard, 1).unwrap();
    let icd = host.root.join("usr/share/glvnd/egl_vendor.d");
    std::fs::create_dir_all(&icd).unwrap();
    std::fs::write(icd.join("10_nvidia.json"), "{}").unwrap();
    let e = Env {
        injector: Injector::new(host.config()),
        host,
        _dir: dir,
    };
    let glcore = format!("/usr/lib/x86_64-linux-gnu/libnvidia-glcore.so.{VERSION}");
    let p = plan(
        &e,
        &[
            "NVIDIA_VISIBLE_DEVICES=0",
            "NVIDIA_DRIVER_CAPABILITIES=graphics",
        ],
    )
    .unwrap()
    .unwrap();
    let d = dests(&p);
    assert!(d.contains(&glcore.as_str()), "{d:?}");
    assert!(
        d.contains(&"/usr/share/glvnd/egl_vendor.d/10_nvidia.json"),
        "{d:?}"
    );
    let compute = plan(&e, &["NVIDIA_VISIBLE_DEVICES=0"]).unwrap().unwrap();
    assert!(!dests(&compute).contains(&glcore.as_str()));
    assert!(!dests(&compute).contains(&"/usr/share/glvnd/egl_vendor.d/10_nvidia.json"));
}

#[test]
fn cached_inventory_is_rediscovered_when_the_mig_layout_changes() {
    let e = env(Layout::Standard, 1);
    let host = || Host::new(e.host.config().driver);
    let first = host().inventory().unwrap();
    assert!(first
        .libraries
        .iter()
        .any(|l| l.prefix == "libnvidia-cfg.so"));
    // Remove a library: a cache hit still lists it, a rediscovery does not.
    let libdir = e.host.root.join("usr/lib/x86_64-linux-gnu");
    std::fs::remove_file(libdir.join(format!("libnvidia-cfg.so.{VERSION}"))).unwrap();
    let cached = host().inventory().unwrap();
    assert!(
        cached
            .libraries
            .iter()
            .any(|l| l.prefix == "libnvidia-cfg.so"),
        "served from cache"
    );
    // A new GPU instance appears under procfs: the cache no longer matches.
    std::fs::create_dir_all(
        e.host
            .proc_root
            .join("driver/nvidia/capabilities/gpu0/mig/gi3/ci0"),
    )
    .unwrap();
    let fresh = host().inventory().unwrap();
    assert!(
        !fresh
            .libraries
            .iter()
            .any(|l| l.prefix == "libnvidia-cfg.so"),
        "rediscovered"
    );
    assert!(
        fresh.host_state.ends_with(";gpu0/gi3,ci0"),
        "{}",
        fresh.host_state
    );
}

#[test]
fn proc_entries_of_gpus_not_given_are_masked() {
    let e = env(Layout::Gke, 2);
    let gpus = |p: &Plan| -> Vec<String> {
        p.masked_paths
            .iter()
            .filter(|m| m.starts_with("/proc/driver/nvidia/gpus/"))
            .cloned()
            .collect()
    };
    let one = plan(&e, &["NVIDIA_VISIBLE_DEVICES=1"]).unwrap().unwrap();
    assert_eq!(gpus(&one), ["/proc/driver/nvidia/gpus/0000:10:00.0"]);
    assert!(one
        .masked_paths
        .contains(&"/proc/driver/nvidia/params".to_string()));
    let all = plan(&e, &["NVIDIA_VISIBLE_DEVICES=all"]).unwrap().unwrap();
    assert!(gpus(&all).is_empty(), "{:?}", all.masked_paths);
    let none = plan(&e, &["NVIDIA_VISIBLE_DEVICES=none"]).unwrap().unwrap();
    assert_eq!(
        gpus(&none),
        [
            "/proc/driver/nvidia/gpus/0000:10:00.0",
            "/proc/driver/nvidia/gpus/0000:11:00.0"
        ]
    );
}

#[test]
fn oversized_and_malformed_requests_are_refused_with_bounded_messages() {
    let e = env(Layout::Gke, 2);
    // A 1 MB device id comes back cut short, with its length.
    let big = format!("NVIDIA_VISIBLE_DEVICES={}", "7".repeat(60_000));
    let err = plan(&e, &[&big]).unwrap_err();
    assert!(err.len() < 1024, "{} bytes", err.len());
    assert!(err.contains("(60000 bytes)"), "{err}");
    let huge = format!("NVIDIA_VISIBLE_DEVICES={}", "0,".repeat(1 << 19));
    let err = plan(&e, &[&huge]).unwrap_err();
    assert!(err.contains("over the 65536-byte limit"), "{err}");
    assert!(err.len() < 1024, "{} bytes", err.len());
    // Requirement grammar errors name the variable.
    let err = plan(
        &e,
        &[
            "NVIDIA_VISIBLE_DEVICES=0",
            "NVIDIA_REQUIRE_CUDA=cuda>=99.0 ,",
        ],
    )
    .unwrap_err();
    assert!(
        err.contains("NVIDIA_REQUIRE_CUDA=") && err.contains("stray comma"),
        "{err}"
    );
    let err = plan(
        &e,
        &[
            "NVIDIA_VISIBLE_DEVICES=0",
            "NVIDIA_REQUIRE_CUDA=cuda>=100000000000000000000",
        ],
    )
    .unwrap_err();
    assert!(
        err.contains("NVIDIA_REQUIRE_CUDA=") && err.contains("too large"),
        "{err}"
    );
}

#[test]
fn every_library_is_a_file_under_its_soname_and_development_name() {
    let e = env(Layout::Gke, 1);
    let p = plan(&e, &["NVIDIA_VISIBLE_DEVICES=0"]).unwrap().unwrap();
    let dir = "/usr/lib/x86_64-linux-gnu";
    let link = |name: &str| {
        p.links
            .iter()
            .find(|l| l.dir == dir && l.name == name)
            .map(|l| l.target.clone())
    };
    assert_eq!(link("libcuda.so.1"), Some(format!("libcuda.so.{VERSION}")));
    assert_eq!(link("libcuda.so").as_deref(), Some("libcuda.so.1"));
    assert_eq!(
        link("libnvidia-ml.so.1"),
        Some(format!("libnvidia-ml.so.{VERSION}"))
    );
    assert_eq!(
        link("libnvidia-ml.so").as_deref(),
        Some("libnvidia-ml.so.1")
    );

    // Created in-root: the image's own regular file at a soname (an old driver baked into the
    // image) is shadowed in this root only, its content untouched; the image's symlinked
    // library dir of another layout is refused, with a warning, not followed.
    let t = tempfile::tempdir().unwrap();
    let rootfs = t.path().join("rootfs");
    let libdir = rootfs.join("usr/lib/x86_64-linux-gnu");
    std::fs::create_dir_all(&libdir).unwrap();
    std::fs::create_dir_all(rootfs.join("etc")).unwrap();
    std::fs::write(rootfs.join("etc/debian_version"), "12\n").unwrap();
    let lower = t.path().join("image-layer-copy");
    std::fs::write(&lower, b"old driver").unwrap();
    std::fs::hard_link(&lower, libdir.join("libcuda.so.1")).unwrap();
    let mut s = spec(&["NVIDIA_VISIBLE_DEVICES=0"], &[], false);
    let done = e.injector.prepare(&mut s, &rootfs).unwrap().unwrap();
    assert!(done.warnings.is_empty(), "{:?}", done.warnings);
    assert_eq!(
        std::fs::read_link(libdir.join("libcuda.so.1"))
            .unwrap()
            .to_str(),
        Some(format!("libcuda.so.{VERSION}").as_str())
    );
    assert_eq!(
        std::fs::read_link(libdir.join("libcuda.so"))
            .unwrap()
            .to_str(),
        Some("libcuda.so.1")
    );
    assert_eq!(
        std::fs::read(&lower).unwrap(),
        b"old driver",
        "the image's file is not modified"
    );
    // Idempotent: a second prepare of the same root changes nothing and warns of nothing.
    let mut s = spec(&["NVIDIA_VISIBLE_DEVICES=0"], &[], false);
    assert!(e
        .injector
        .prepare(&mut s, &rootfs)
        .unwrap()
        .unwrap()
        .warnings
        .is_empty());

    let evil = t.path().join("evil");
    let outside = t.path().join("outside");
    std::fs::create_dir_all(evil.join("usr/lib")).unwrap();
    std::fs::create_dir_all(evil.join("etc")).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(evil.join("etc/debian_version"), "12\n").unwrap();
    std::os::unix::fs::symlink(&outside, evil.join("usr/lib/x86_64-linux-gnu")).unwrap();
    let mut s = spec(&["NVIDIA_VISIBLE_DEVICES=0"], &[], false);
    let done = e.injector.prepare(&mut s, &evil).unwrap().unwrap();
    assert!(
        done.warnings
            .iter()
            .any(|w| w.contains("/usr/lib/x86_64-linux-gnu is a symlink in the image")),
        "{:?}",
        done.warnings
    );
    assert!(
        std::fs::read_dir(&outside).unwrap().next().is_none(),
        "nothing written outside"
    );
}

#[test]
fn gke_graphics_files_under_share_land_where_the_image_loaders_look() {
    let dir = tempfile::tempdir().unwrap();
    let host = FakeHost::build(dir.path(), Layout::Gke, 1).unwrap();
    for (d, f) in [
        ("share/vulkan/icd.d", "nvidia_icd.json"),
        ("share/glvnd/egl_vendor.d", "10_nvidia.json"),
    ] {
        std::fs::create_dir_all(host.root.join(d)).unwrap();
        std::fs::write(host.root.join(d).join(f), "{}").unwrap();
    }
    let e = Env {
        injector: Injector::new(host.config()),
        host,
        _dir: dir,
    };
    let p = plan(
        &e,
        &["NVIDIA_VISIBLE_DEVICES=0", "NVIDIA_DRIVER_CAPABILITIES=all"],
    )
    .unwrap()
    .unwrap();
    let by_dest = |d: &str| {
        p.mounts
            .iter()
            .find(|m| m.destination == d)
            .map(|m| m.source.clone())
    };
    assert_eq!(
        by_dest("/usr/share/vulkan/icd.d/nvidia_icd.json"),
        Some(e.host.root.join("share/vulkan/icd.d/nvidia_icd.json"))
    );
    assert_eq!(
        by_dest("/usr/share/glvnd/egl_vendor.d/10_nvidia.json"),
        Some(e.host.root.join("share/glvnd/egl_vendor.d/10_nvidia.json"))
    );
}

#[test]
fn cuda_forward_compat_newer_is_picked_older_ignored_opt_out_honoured() {
    let e = env(Layout::Gke, 1);
    let t = tempfile::tempdir().unwrap();
    let make = |name: &str, compat_version: &str| {
        let rootfs = t.path().join(name);
        std::fs::create_dir_all(rootfs.join("etc")).unwrap();
        std::fs::write(rootfs.join("etc/debian_version"), "12\n").unwrap();
        // As in CUDA images: /usr/local/cuda is a symlink to the versioned toolkit dir.
        let compat = rootfs.join("usr/local/cuda-13.1/compat");
        std::fs::create_dir_all(&compat).unwrap();
        std::os::unix::fs::symlink("cuda-13.1", rootfs.join("usr/local/cuda")).unwrap();
        for lib in ["libcuda.so", "libnvidia-ptxjitcompiler.so"] {
            std::fs::write(compat.join(format!("{lib}.{compat_version}")), b"").unwrap();
        }
        std::os::unix::fs::symlink(
            format!("libcuda.so.{compat_version}"),
            compat.join("libcuda.so.1"),
        )
        .unwrap();
        rootfs
    };
    let cache_of = |rootfs: &std::path::Path, key: &str| -> String {
        let bytes = std::fs::read(rootfs.join("etc/ld.so.cache")).unwrap();
        gpu_core::ldcache::parse(&bytes)
            .unwrap()
            .into_iter()
            .find(|x| x.key == key)
            .map(|x| x.value)
            .unwrap_or_default()
    };
    let host_libcuda = format!("/usr/lib/x86_64-linux-gnu/libcuda.so.{VERSION}");

    // Newer branch than the host's 580: the loader is pointed at the image's compat libraries.
    let newer = make("newer", "590.48.01");
    let mut s = spec(&["NVIDIA_VISIBLE_DEVICES=0"], &[], false);
    let done = e.injector.prepare(&mut s, &newer).unwrap().unwrap();
    assert!(
        done.summary.contains("forward-compat libraries 590.48.01"),
        "{}",
        done.summary
    );
    assert_eq!(
        cache_of(&newer, "libcuda.so.1"),
        "/usr/local/cuda/compat/libcuda.so.590.48.01"
    );
    assert_eq!(
        cache_of(&newer, "libnvidia-ptxjitcompiler.so.1"),
        "/usr/local/cuda/compat/libnvidia-ptxjitcompiler.so.590.48.01"
    );
    // Nothing of the image is mounted.
    assert!(!s.mounts().as_ref().unwrap().iter().any(|m| m
        .source()
        .as_ref()
        .is_some_and(|p| p.to_string_lossy().contains("compat"))));

    // Same or older branch: the host's libcuda wins.
    for (name, v) in [("older", "575.57.08"), ("same", "580.200.01")] {
        let r = make(name, v);
        let mut s = spec(&["NVIDIA_VISIBLE_DEVICES=0"], &[], false);
        e.injector.prepare(&mut s, &r).unwrap().unwrap();
        assert_eq!(cache_of(&r, "libcuda.so.1"), host_libcuda, "{name}");
    }

    // Opted out per container.
    let out = make("optout", "590.48.01");
    let mut s = spec(
        &[
            "NVIDIA_VISIBLE_DEVICES=0",
            "NVIDIA_DISABLE_CUDA_COMPAT=true",
        ],
        &[],
        false,
    );
    e.injector.prepare(&mut s, &out).unwrap().unwrap();
    assert_eq!(cache_of(&out, "libcuda.so.1"), host_libcuda);
}

#[test]
fn devices_injected_by_someone_else_never_fail_a_create() {
    // A privileged container lists every host device; it asked the shim for nothing, so even a
    // driver root the shim cannot read must not fail its Create.
    let e = env_with(Layout::Gke, 1, |c| {
        c.driver.proc_root = "/nonexistent".into()
    });
    let _ = &e.host;
    let t = tempfile::tempdir().unwrap();
    let mut s = spec(&[], &[], true);
    let mut v = serde_json::to_value(&s).unwrap();
    v["linux"]["devices"] =
        serde_json::json!([{"path": "/dev/nvidia0", "type": "c", "major": 195, "minor": 0}]);
    s = serde_json::from_value(v).unwrap();
    let before = serde_json::to_string(&s).unwrap();
    let done = e.injector.prepare(&mut s, t.path()).unwrap().unwrap();
    assert!(!done.warnings.is_empty(), "{}", done.summary);
    assert_eq!(
        serde_json::to_string(&s).unwrap(),
        before,
        "nothing was added"
    );
}
