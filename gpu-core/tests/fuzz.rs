//! Property-based fuzzing, on the stable toolchain, of every parser that sees input a container
//! or its image controls: the ld.so.cache reader, the ELF soname reader, the requirement grammar,
//! the request parser with planning and the CDI spec loader (the config file: shim/config).
//!
//! Each case must not panic, must stay within a memory bound (counted by the allocator below) and
//! a time bound. The seed is fixed so `just test` is repeatable; `FUZZ_CASES` raises the case
//! count for a longer run. Inputs a run found are kept at the end as plain regression tests.

use std::alloc::{GlobalAlloc, Layout as AllocLayout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use gpu_core::discover::{Discovery, Fixed, Host};
use gpu_core::fixture::{build_lib, crafted_ld_cache, FakeHost, Layout};
use gpu_core::ldcache::{self, Entry, Limits};
use gpu_core::plan::ImageLayout;
use gpu_core::{CoreConfig, Injector};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestRunner};

/// Counts live heap bytes and their high-water mark.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator; only the counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: AllocLayout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            let now = LIVE.fetch_add(l.size(), Relaxed) + l.size();
            PEAK.fetch_max(now, Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: AllocLayout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(p, l) };
        LIVE.fetch_sub(l.size(), Relaxed);
    }
    unsafe fn realloc(&self, p: *mut u8, l: AllocLayout, new: usize) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let q = unsafe { System.realloc(p, l, new) };
        if !q.is_null() {
            if new > l.size() {
                let now = LIVE.fetch_add(new - l.size(), Relaxed) + new - l.size();
                PEAK.fetch_max(now, Relaxed);
            } else {
                LIVE.fetch_sub(l.size() - new, Relaxed);
            }
        }
        q
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// One harness at a time: the counters are process-wide.
static SERIAL: Mutex<()> = Mutex::new(());

/// Runs `f`, failing when it allocates more than `bytes` above what was live before, or runs
/// longer than `time`.
fn bounded<T>(what: &str, bytes: usize, time: Duration, f: impl FnOnce() -> T) -> T {
    let base = LIVE.load(Relaxed);
    PEAK.store(base, Relaxed);
    let t = Instant::now();
    let out = f();
    let took = t.elapsed();
    let grew = PEAK.load(Relaxed).saturating_sub(base);
    assert!(
        grew <= bytes,
        "{what}: allocated {grew} bytes (bound {bytes})"
    );
    assert!(took <= time, "{what}: took {took:?} (bound {time:?})");
    out
}

fn runner(cases: u32) -> TestRunner {
    let cases = std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(cases);
    TestRunner::new(Config {
        cases,
        failure_persistence: None,
        rng_seed: RngSeed::Fixed(0x6e76_7368_696d),
        ..Config::default()
    })
}

/// Byte-level mutations of a valid input: flips, truncation, splices of random bytes.
fn mutated(base: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let len = base.len().max(1);
    (
        prop::collection::vec((0..len, any::<u8>()), 0..16),
        prop::option::of(0..len),
        prop::collection::vec(any::<u8>(), 0..32),
    )
        .prop_map(move |(flips, cut, splice)| {
            let mut b = base.clone();
            for (i, v) in flips {
                if let Some(x) = b.get_mut(i) {
                    *x = v;
                }
            }
            if let Some(c) = cut {
                b.truncate(c);
            }
            b.extend_from_slice(&splice);
            b
        })
}

const MIB: usize = 1 << 20;

#[test]
fn ld_cache_reader_is_bounded() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let valid = ldcache::write(&[
        Entry::new(
            ldcache::FLAGS_LIB64,
            "libc.so.6",
            "/lib/x86_64-linux-gnu/libc.so.6",
        ),
        Entry::new(
            ldcache::FLAGS_LIB64,
            "libcuda.so.1",
            "/usr/local/stubs/libcuda.so.1",
        ),
        Entry::new(
            ldcache::FLAGS_LIB32,
            "libm.so.6",
            "/lib/i386-linux-gnu/libm.so.6",
        ),
    ]);
    let input = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..512),
        mutated(valid),
        (1usize..60_000, 1usize..30_000).prop_map(|(n, len)| crafted_ld_cache(n, len)),
    ];
    let ours = [Entry::new(
        ldcache::FLAGS_LIB64,
        "libcuda.so.1",
        "/usr/lib64/libcuda.so.580",
    )];
    runner(300)
        .run(&input, |bytes| {
            // Input size plus the bounded strings plus the entry table, twice over for the merge.
            let limit = bytes.len() + 4 * (Limits::IMAGE.max_total_strings + 32 * 1024 * 96);
            bounded("ld.so.cache", limit, Duration::from_secs(2), || {
                if let Ok(entries) = ldcache::parse_bounded(&bytes, Limits::IMAGE) {
                    assert!(entries.len() <= Limits::IMAGE.max_entries);
                    let out = ldcache::write(&ldcache::merge(entries, &ours));
                    assert!(
                        out.len()
                            <= 48
                                + 24 * (Limits::IMAGE.max_entries + 1)
                                + Limits::IMAGE.max_total_strings
                                + 64
                    );
                }
            });
            Ok(())
        })
        .unwrap();
}

fn real_elf() -> Vec<u8> {
    static ELF: OnceLock<Vec<u8>> = OnceLock::new();
    ELF.get_or_init(|| {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("libx.so.1");
        build_lib(&p, "libx.so.1", "fuzz").unwrap();
        std::fs::read(p).unwrap()
    })
    .clone()
}

#[test]
fn elf_soname_reader_is_bounded() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let valid = real_elf();
    assert_eq!(
        gpu_core::elf::parse(&valid)
            .and_then(|i| i.soname)
            .as_deref(),
        Some("libx.so.1")
    );
    let input = prop_oneof![prop::collection::vec(any::<u8>(), 0..256), mutated(valid)];
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("lib.so");
    runner(300)
        .run(&input, |bytes| {
            std::fs::write(&file, &bytes).unwrap();
            bounded("elf", 8 * MIB, Duration::from_secs(1), || {
                let a = gpu_core::elf::parse(&bytes);
                let b = gpu_core::elf::read(&file);
                assert_eq!(a, b, "the buffer and file readers agree");
                if let Some(s) = a.and_then(|i| i.soname) {
                    assert!(s.len() <= 256);
                }
            });
            Ok(())
        })
        .unwrap();
}

#[test]
fn requirement_grammar_is_bounded() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let input = prop_oneof![
        "[a-z<>=!., 0-9]{0,64}",
        "(cuda|driver|arch|brand|CUDA|gpu)(>=|<=|=|!=|<|>|=>|)[0-9.]{0,12}([, ](cuda|driver|brand)[<>=!]{1,2}[0-9a-z.]{0,8}){0,4}[ ,]{0,2}",
        any::<String>(),
    ];
    let facts = gpu_core::require::Facts {
        cuda: Some("13.0".into()),
        driver: Some("580.95.05".into()),
        arch: Some("9.0".into()),
        brand: Some("Tesla".into()),
        no_gpu: false,
    };
    runner(2000)
        .run(&input, |text| {
            bounded(
                "require",
                MIB,
                Duration::from_millis(200),
                || match gpu_core::require::parse(&text) {
                    Ok(expr) => {
                        assert!(!expr.is_empty() && expr.iter().all(|t| !t.is_empty()));
                        for f in expr.iter().flatten() {
                            assert!(!f.value.is_empty(), "{text:?}");
                        }
                        let _ = gpu_core::require::satisfied(&expr, &facts);
                    }
                    Err(e) => assert!(e.len() <= 1024, "{} bytes", e.len()),
                },
            );
            Ok(())
        })
        .unwrap();
}

/// One fake host for the planning harnesses (building it compiles the fake libraries).
fn host() -> &'static (tempfile::TempDir, CoreConfig, Arc<gpu_core::Inventory>) {
    static HOST: OnceLock<(tempfile::TempDir, CoreConfig, Arc<gpu_core::Inventory>)> =
        OnceLock::new();
    HOST.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let h = FakeHost::build_with_nvml(dir.path(), Layout::Gke, 2, true).unwrap();
        let cfg = h.config();
        let inv = Host::new(cfg.driver.clone()).inventory().unwrap();
        (dir, cfg, inv)
    })
}

fn spec_json(
    env: &[String],
    ann: &[(String, String)],
    mounts: &[String],
    privileged: bool,
) -> serde_json::Value {
    let caps: Vec<&str> = if privileged {
        vec!["CAP_SYS_ADMIN"]
    } else {
        vec!["CAP_CHOWN"]
    };
    let ann: serde_json::Map<String, serde_json::Value> = ann
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
        .collect();
    let mut ms =
        vec![serde_json::json!({"destination": "/proc", "type": "proc", "source": "proc"})];
    for m in mounts {
        ms.push(serde_json::json!({"destination": m, "type": "bind", "source": "/dev/null"}));
    }
    serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {"cwd": "/", "args": ["sh"], "env": env, "user": {"uid": 0, "gid": 0},
                    "capabilities": {"bounding": caps}},
        "root": {"path": "rootfs"},
        "annotations": ann,
        "mounts": ms,
    })
}

#[test]
fn request_parser_and_planner_are_bounded() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let (_, cfg, inv) = host();
    let injector = Injector::with_discovery(cfg.clone(), Arc::new(Fixed(inv.clone())));
    let layout = ImageLayout {
        libdir: "/usr/lib/x86_64-linux-gnu".into(),
        libdir32: "/usr/lib/i386-linux-gnu".into(),
        ..Default::default()
    };
    let var = prop_oneof![
        Just("NVIDIA_VISIBLE_DEVICES"),
        Just("NVIDIA_DRIVER_CAPABILITIES"),
        Just("NVIDIA_REQUIRE_CUDA"),
        Just("NVIDIA_REQUIRE_ARCH"),
        Just("NVIDIA_DISABLE_REQUIRE"),
        Just("NVIDIA_MIG_CONFIG_DEVICES"),
        Just("CUDA_VERSION"),
    ];
    let value = prop_oneof![
        "(all|none|void|0|1|0:0|0:1|GPU-[0-9a-f-]{0,12}|MIG-[0-9a-f-]{0,8}|0000:10:00.0|utility|compute|graphics|cuda>=1[0-9]\\.[0-9]|[,: ]){0,8}",
        any::<String>(),
        (1usize..200_000).prop_map(|n| "0,".repeat(n)),
    ];
    let env = prop::collection::vec((var, value).prop_map(|(k, v)| format!("{k}={v}")), 0..6);
    let ann = prop::collection::vec(
        (
            "cdi.k8s.io/[a-z]{0,6}",
            "(nvidia.com/gpu=(0|1|all|[a-z0-9:]{0,6})|[a-z/=.,]{0,20})",
        ),
        0..3,
    );
    let mounts = prop::collection::vec(
        "/var/run/nvidia-container-devices/(0|1|all|cdi/nvidia.com/gpu/0|imex/1|[a-zA-Z0-9/=-]{0,12})",
        0..4,
    );
    let input = (env, ann, mounts, any::<bool>());
    runner(600)
        .run(&input, |(env, ann, mounts, privileged)| {
            let spec: oci_spec::runtime::Spec =
                serde_json::from_value(spec_json(&env, &ann, &mounts, privileged)).unwrap();
            bounded(
                "request+plan",
                16 * MIB,
                Duration::from_secs(1),
                || match injector.plan(&spec, &layout) {
                    Ok(Some(p)) => {
                        assert!(p.devices.len() <= 64, "{} devices", p.devices.len());
                    }
                    Ok(None) => {}
                    Err(e) => {
                        let msg = e.to_string();
                        assert!(msg.len() <= 4096, "{} bytes: {}", msg.len(), &msg[..200]);
                    }
                },
            );
            Ok(())
        })
        .unwrap();
}

const CDI_SPEC: &str = r#"cdiVersion: "0.6.0"
kind: nvidia.com/gpu
devices:
  - name: "0"
    containerEdits:
      deviceNodes:
        - path: /dev/null
  - name: all
    containerEdits:
      env: ["A=1"]
containerEdits:
  env: ["NVIDIA_VISIBLE_DEVICES=void"]
  mounts:
    - hostPath: /etc/hostname
      containerPath: /etc/x
      options: [ro, bind]
"#;

#[test]
fn cdi_spec_loader_is_bounded() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("nvidia.yaml");
    let dirs = vec![dir.path().to_path_buf()];
    let input = prop_oneof![
        mutated(CDI_SPEC.as_bytes().to_vec()),
        prop::collection::vec(any::<u8>(), 0..256),
        // YAML's own hazards: deep nesting and aliases.
        (1usize..2000)
            .prop_map(|n| format!("cdiVersion: {}{}", "[".repeat(n), "]".repeat(n)).into_bytes()),
        (1usize..12).prop_map(|n| {
            let mut s = String::from("a0: &a0 [x, x]\n");
            for i in 1..=n {
                s.push_str(&format!("a{i}: &a{i} [*a{}, *a{}]\n", i - 1, i - 1));
            }
            s.into_bytes()
        }),
    ];
    let names = vec![
        "nvidia.com/gpu=0".to_string(),
        "nvidia.com/gpu=all".to_string(),
    ];
    runner(400)
        .run(&input, |bytes| {
            std::fs::write(&file, &bytes).unwrap();
            bounded("cdi", 32 * MIB, Duration::from_secs(1), || {
                let reg = gpu_core::cdi::Registry::load(&dirs);
                let mut plan = gpu_core::Plan::default();
                let host = gpu_core::discover::Host::new(Default::default());
                if let Err(e) = reg.apply(&names, &mut plan, &host) {
                    assert!(e.to_string().len() <= 16 << 10);
                }
            });
            Ok(())
        })
        .unwrap();
}

// Inputs the harnesses found, kept as regression cases.

/// An ELF header claiming 65535 program headers of 65535 bytes each: the file reader allocated
/// the claimed size before reading (133 MB in the run that found it, up to 4 GiB).
#[test]
fn regression_elf_huge_program_header_table() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut h = vec![0u8; 64];
    h[..4].copy_from_slice(b"\x7fELF");
    h[4] = 2;
    h[5] = 1;
    h[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
    h[0x36..0x38].copy_from_slice(&0xffffu16.to_le_bytes());
    h[0x38..0x3a].copy_from_slice(&0xffffu16.to_le_bytes());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("lib.so");
    std::fs::write(&file, &h).unwrap();
    bounded("elf regression", MIB, Duration::from_secs(1), || {
        assert_eq!(gpu_core::elf::read(&file), None);
        assert_eq!(gpu_core::elf::parse(&h), None);
    });
}

/// `NVIDIA_VISIBLE_DEVICES=ΣꧏAa:` sliced a string inside a character while matching bus ids: a
/// panic, which aborts the release shim (and with it the pod's other containers' supervision).
#[test]
fn regression_multibyte_device_id() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let (_, cfg, inv) = host();
    let injector = Injector::with_discovery(cfg.clone(), Arc::new(Fixed(inv.clone())));
    let spec: oci_spec::runtime::Spec = serde_json::from_value(spec_json(
        &["NVIDIA_VISIBLE_DEVICES=ΣꧏAa:".into()],
        &[],
        &[],
        false,
    ))
    .unwrap();
    let layout = ImageLayout {
        libdir: "/usr/lib64".into(),
        libdir32: "/usr/lib".into(),
        ..Default::default()
    };
    let err = injector.plan(&spec, &layout).unwrap_err().to_string();
    assert!(err.contains("unknown device \"ΣꧏAa:\""), "{err}");
}
