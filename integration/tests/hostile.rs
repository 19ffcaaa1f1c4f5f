//! Hostile images and requests under a real containerd and runc, on a fake driver host: each
//! case an adversarial run found (a FIFO or device node as the image's loader cache, a crafted
//! cache, a malformed requirement, megabyte-sized env values, a symlinked /etc, a read-only
//! root, a slow driver) must neither hang, crash nor steer the pod's shim, and must leave nothing
//! behind. The pod's healthy container, served by the same shim, keeps answering throughout.

use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use gpu_core::fixture::{crafted_ld_cache, FakeHost, Layout, VERSION};
use integration::image::{import_glibc, import_glibc_variant, GLIBC_IMAGE};
use integration::{stderr, stdout, wait_until, Containerd};

const POD: &str = "io.kubernetes.cri.sandbox-id=hostile-pod";

struct Lab {
    c: Containerd,
    _host_dir: tempfile::TempDir,
    host: FakeHost,
    config: String,
}

fn lab() -> Result<Lab> {
    let c = Containerd::start()?;
    import_glibc(&c)?;
    let host_dir = tempfile::Builder::new()
        .prefix("nvhostile-")
        .tempdir_in("/tmp")?;
    let host = FakeHost::build_with_nvml(host_dir.path(), Layout::Gke, 2, false)?;
    let config = host.write_config()?;
    Ok(Lab {
        c,
        _host_dir: host_dir,
        host,
        config,
    })
}

impl Lab {
    /// `ctr run --rm` of `image` in the hostile pod, asking for GPU 0 (plus `env`).
    fn run_gpu(
        &mut self,
        image: &str,
        id: &str,
        env: &[&str],
        script: &str,
    ) -> Result<std::process::Output> {
        let mut opts = vec![
            "--rm".to_string(),
            "--annotation".into(),
            POD.into(),
            "--runtime-config-path".into(),
            self.config.clone(),
            "--env".into(),
            "NVIDIA_VISIBLE_DEVICES=0".into(),
        ];
        for e in env {
            opts.push("--env".into());
            opts.push(e.to_string());
        }
        let opts: Vec<&str> = opts.iter().map(|s| s.as_str()).collect();
        self.c.run_image(image, &opts, id, &["sh", "-c", script])
    }

    /// Starts the pod's healthy container (no GPU), which must keep answering.
    fn start_healthy(&mut self) -> Result<i32> {
        let out = self.c.run_image(
            GLIBC_IMAGE,
            &[
                "-d",
                "--annotation",
                POD,
                "--runtime-config-path",
                &self.config.clone(),
            ],
            "healthy",
            &["sleep", "1000"],
        )?;
        ensure!(out.status.success(), "healthy container: {out:?}");
        let shims = self.c.shim_pids();
        ensure!(shims.len() == 1, "one shim for the pod: {shims:?}");
        Ok(shims[0])
    }

    /// The healthy container answers an exec (through the pod's shim) and is still running.
    fn healthy_answers(&self, exec_id: &str) -> Result<Duration> {
        let t = Instant::now();
        let out = self.c.ctr(&[
            "task",
            "exec",
            "--exec-id",
            exec_id,
            "healthy",
            "echo",
            "alive",
        ])?;
        let took = t.elapsed();
        ensure!(
            out.status.success() && stdout(&out).contains("alive"),
            "healthy container's exec failed: {out:?}"
        );
        let ls = self.c.ctr_ok(&["task", "ls"])?;
        ensure!(
            ls.lines()
                .any(|l| l.starts_with("healthy") && l.contains("RUNNING")),
            "healthy container not RUNNING: {ls}"
        );
        Ok(took)
    }

    fn stop_healthy(&mut self) -> Result<()> {
        let events = self.c.events()?;
        self.c
            .ctr_ok(&["task", "kill", "-s", "SIGKILL", "healthy"])?;
        events.wait_for(&["/tasks/exit", "healthy"], Duration::from_secs(20))?;
        self.c.ctr_ok(&["task", "delete", "healthy"])?;
        self.c.ctr_ok(&["containers", "rm", "healthy"])?;
        Ok(())
    }
}

/// The shim's peak resident memory in KiB.
fn peak_rss_kib(pid: i32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("VmHWM")
}

fn write_cache(root: &Path, bytes: &[u8]) -> Result<()> {
    let p = root.join("etc/ld.so.cache");
    std::fs::remove_file(&p)?;
    std::fs::write(p, bytes)?;
    Ok(())
}

/// Findings 1–3: a FIFO, a device node and crafted caches at `/etc/ld.so.cache`.
#[test]
fn hostile_loader_caches_neither_hang_nor_blow_up_the_pod_shim() -> Result<()> {
    let mut l = lab()?;
    type Tweak = fn(&Path) -> Result<()>;
    let variants: [(&str, Tweak); 5] = [
        ("fifo", |r| {
            std::fs::remove_file(r.join("etc/ld.so.cache"))?;
            nix::unistd::mkfifo(
                &r.join("etc/ld.so.cache"),
                nix::sys::stat::Mode::from_bits_truncate(0o644),
            )?;
            Ok(())
        }),
        ("chardev", |r| {
            std::fs::remove_file(r.join("etc/ld.so.cache"))?;
            // /dev/null's numbers: harmless if opened, but it must not be opened at all.
            nix::sys::stat::mknod(
                &r.join("etc/ld.so.cache"),
                nix::sys::stat::SFlag::S_IFCHR,
                nix::sys::stat::Mode::from_bits_truncate(0o644),
                nix::sys::stat::makedev(1, 3),
            )?;
            Ok(())
        }),
        // 200k entries sharing an 11 MB string: grew the shim until the OOM killer took it.
        ("crafted-16m", |r| {
            write_cache(r, &crafted_ld_cache(200_000, 11 << 20))
        }),
        // A 500 KB cache that made the shim write an 800 MB /etc/ld.so.cache.
        ("crafted-800m-out", |r| {
            write_cache(r, &crafted_ld_cache(20_000, 20_000))
        }),
        // Path-sized strings, many entries: the total bound trips.
        ("crafted-total", |r| {
            write_cache(r, &crafted_ld_cache(30_000, 4000))
        }),
    ];
    for (name, tweak) in variants {
        import_glibc_variant(
            &l.c,
            &format!("docker.io/library/hostile:{name}"),
            &[],
            tweak,
        )?;
    }
    let shim = l.start_healthy()?;
    let before = peak_rss_kib(shim)?;
    for (i, (name, _)) in variants.iter().enumerate() {
        let image = format!("docker.io/library/hostile:{name}");
        let out = l.run_gpu(
            &image,
            &format!("gpu-{name}"),
            &[],
            "dlcheck libcuda.so.1; ls -ln /etc/ld.so.cache",
        )?;
        let text = stdout(&out);
        ensure!(
            out.status.success(),
            "{name}: the GPU container must start: {out:?}\n{}",
            l.c.log_tail()
        );
        ensure!(
            text.contains(&format!("libcuda.so.1 -> real libcuda.so {VERSION}")),
            "{name}: the injected libcuda is found through the new cache: {text}"
        );
        // A regular file of a sane size replaced whatever the image had there.
        let line = text
            .lines()
            .find(|l| l.contains("/etc/ld.so.cache"))
            .context("ls line")?;
        ensure!(
            line.starts_with("-"),
            "{name}: cache is a regular file: {line}"
        );
        let size: u64 = line
            .split_whitespace()
            .nth(4)
            .and_then(|s| s.parse().ok())
            .context("size")?;
        ensure!(size < 64 << 10, "{name}: cache written is {size} bytes");
        l.healthy_answers(&format!("x{i}"))?;
    }
    let after = peak_rss_kib(shim)?;
    ensure!(
        after < before + 32 * 1024,
        "the shim's peak RSS grew from {before} to {after} KiB"
    );
    let log = l.c.log_tail();
    ensure!(
        log.contains("was dropped") || log.contains("was not read"),
        "the dropped image cache is named in the log: {log}"
    );
    l.stop_healthy()?;
    l.c.assert_clean()
}

/// Findings 4 and 5: malformed requirements are refused naming the variable; megabyte-sized
/// values come back as short errors; nothing is left behind.
#[test]
fn malformed_and_oversized_requests_are_refused_briefly() -> Result<()> {
    let mut l = lab()?;
    for (id, req) in [
        ("req-comma", "cuda>=99.0 ,"),
        ("req-overflow", "cuda>=100000000000000000000"),
        ("req-dots", "cuda>=...."),
    ] {
        let out = l.run_gpu(
            GLIBC_IMAGE,
            id,
            &[&format!("NVIDIA_REQUIRE_CUDA={req}")],
            "true",
        )?;
        ensure!(!out.status.success(), "{req} must be refused: {out:?}");
        let err = stderr(&out);
        ensure!(
            err.contains("NVIDIA_REQUIRE_CUDA=") && err.contains("is invalid"),
            "{req}: {err}"
        );
        let _ = l.c.ctr(&["containers", "rm", id]);
    }
    // Through the image config: a single argv string cannot hold megabytes.
    for (tag, len) in [("env1m", 1usize << 20), ("env5m", 5 << 20)] {
        let image = format!("docker.io/library/hostile:{tag}");
        let value = format!("NVIDIA_VISIBLE_DEVICES={}", "7".repeat(len));
        import_glibc_variant(&l.c, &image, &[value], |_| Ok(()))?;
        let id = format!("big-{tag}");
        let out = l.c.run_image(
            &image,
            &["--rm", "--runtime-config-path", &l.config.clone()],
            &id,
            &["true"],
        )?;
        ensure!(!out.status.success(), "{tag}: {out:?}");
        let err = stderr(&out);
        ensure!(err.len() < 4096, "{tag}: the error is {} bytes", err.len());
        ensure!(
            err.contains(&format!("({len} bytes)")) && err.contains("over the 65536-byte limit"),
            "{tag}: {err}"
        );
        let _ = l.c.ctr(&["containers", "rm", &id]);
    }
    let log = std::fs::read_to_string(l.c.dir().join("containerd.log"))?;
    let longest = log.lines().map(str::len).max().unwrap_or(0);
    ensure!(
        longest < 16 << 10,
        "a containerd log line is {longest} bytes"
    );
    l.c.assert_clean()
}

/// Finding 6: refusals say what was refused and why.
#[test]
fn symlinked_etc_and_directory_cache_are_refused_by_name() -> Result<()> {
    let mut l = lab()?;
    import_glibc_variant(&l.c, "docker.io/library/hostile:etc-link", &[], |r| {
        std::fs::rename(r.join("etc"), r.join("etc.real"))?;
        symlink("/etc.real", r.join("etc"))?;
        Ok(())
    })?;
    import_glibc_variant(&l.c, "docker.io/library/hostile:cache-dir", &[], |r| {
        std::fs::remove_file(r.join("etc/ld.so.cache"))?;
        std::fs::create_dir(r.join("etc/ld.so.cache"))?;
        Ok(())
    })?;
    for (tag, want) in [
        (
            "etc-link",
            "/etc is a symlink in the image; refusing to follow it",
        ),
        (
            "cache-dir",
            "/etc/ld.so.cache in the image is a directory, not a regular file",
        ),
    ] {
        let id = format!("refused-{tag}");
        let out = l.run_gpu(
            &format!("docker.io/library/hostile:{tag}"),
            &id,
            &[],
            "true",
        )?;
        ensure!(!out.status.success(), "{tag}: {out:?}");
        ensure!(stderr(&out).contains(want), "{tag}: {}", stderr(&out));
        let _ = l.c.ctr(&["containers", "rm", &id]);
    }
    l.c.assert_clean()
}

/// Finding 7: a root filesystem that is itself read-only starts without the cache rewrite.
#[test]
fn read_only_rootfs_starts_with_a_warning() -> Result<()> {
    let mut l = lab()?;
    let work = tempfile::tempdir()?;
    let src = work.path().join("src");
    integration::image::glibc_rootfs(&src)?;
    // A read-only root cannot take new mount points: give it every destination the plan has,
    // as an image prepared for a read-only root would.
    let out = Command::new(integration::bin_dir().join("nvidia-shim"))
        .args([
            "--config",
            &l.config,
            "list",
            "--env",
            "NVIDIA_VISIBLE_DEVICES=0",
            "--json",
        ])
        .output()?;
    ensure!(out.status.success(), "{out:?}");
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    for m in plan["mounts"].as_array().context("mounts")? {
        let dest = m["destination"].as_str().context("destination")?;
        let p = src.join(dest.trim_start_matches('/'));
        std::fs::create_dir_all(p.parent().context("parent")?)?;
        std::fs::write(&p, b"")?;
    }
    let ro = work.path().join("ro");
    std::fs::create_dir(&ro)?;
    let mount = |args: &[&str]| -> Result<()> {
        let st = Command::new("mount").args(args).status()?;
        ensure!(st.success(), "mount {args:?}");
        Ok(())
    };
    mount(&[
        "--bind",
        &src.display().to_string(),
        &ro.display().to_string(),
    ])?;
    let res = (|| -> Result<()> {
        mount(&["-o", "remount,bind,ro", &ro.display().to_string()])?;
        let out = l.c.ctr(&[
            "run",
            "--rm",
            "--runtime",
            integration::RUNTIME,
            "--runtime-config-path",
            &l.config,
            "--env",
            "NVIDIA_VISIBLE_DEVICES=0",
            "--env",
            "PATH=/usr/bin:/bin:/sbin",
            "--rootfs",
            &ro.display().to_string(),
            "ro-gpu",
            "sh",
            "-c",
            &format!("nvidia-smi; dlcheck /usr/lib/x86_64-linux-gnu/libcuda.so.{VERSION}"),
        ])?;
        l.c.track("ro-gpu");
        ensure!(
            out.status.success(),
            "a read-only root still starts: {out:?}\n{}",
            l.c.log_tail()
        );
        let text = stdout(&out);
        ensure!(
            text.contains(&format!("fake nvidia-smi {VERSION}"))
                && text.contains(&format!("-> real libcuda.so {VERSION}")),
            "{text}"
        );
        ensure!(
            l.c.log_tail().contains("read-only"),
            "the skipped cache rewrite is a warning in the log"
        );
        Ok(())
    })();
    let _ = Command::new("umount").arg(&ro).status();
    res?;
    l.c.assert_clean()
}

/// A Create stuck in GPU work (here a driver slow to initialise) fails at its time limit, while
/// the pod's other container keeps answering; nothing is left behind, the shim included.
#[test]
fn slow_gpu_work_does_not_hold_the_pod_hostage() -> Result<()> {
    let mut l = lab()?;
    std::fs::write(
        &l.config,
        std::fs::read_to_string(&l.config)? + "prepare_timeout_ms = 3000\n",
    )?;
    let started = l.host.set_nvml_delay(8000)?;
    let shim = l.start_healthy()?;

    let mut slow = l.c.spawn_run(
        &[
            "--rm",
            "--annotation",
            POD,
            "--runtime-config-path",
            &l.config.clone(),
            "--env",
            "NVIDIA_VISIBLE_DEVICES=0",
        ],
        "slow-gpu",
        &["true"],
    )?;
    // The only signal that the Create is inside the GPU stage: the fake driver says so.
    wait_until(Duration::from_secs(20), "the GPU stage to begin", || {
        Ok(started.exists())
    })?;
    let took = l.healthy_answers("during")?;
    ensure!(
        slow.try_wait()?.is_none(),
        "the slow Create was still in flight while the healthy container answered"
    );
    ensure!(took < Duration::from_secs(3), "exec took {took:?}");
    let out = slow.wait_with_output()?;
    ensure!(!out.status.success(), "{out:?}");
    ensure!(
        stderr(&out).contains("took longer than 3000 ms (gpu.prepare_timeout_ms)"),
        "{}",
        stderr(&out)
    );
    let _ = l.c.ctr(&["containers", "rm", "slow-gpu"]);
    l.healthy_answers("after")?;
    ensure!(l.c.shim_pids() == [shim], "the pod's shim is the same one");
    l.stop_healthy()?;

    // Alone in its own shim, a timed-out Create leaves no shim behind.
    std::fs::remove_file(&started)?;
    let out = l.c.run_image(
        GLIBC_IMAGE,
        &[
            "--rm",
            "--runtime-config-path",
            &l.config.clone(),
            "--env",
            "NVIDIA_VISIBLE_DEVICES=0",
        ],
        "slow-alone",
        &["true"],
    )?;
    ensure!(!out.status.success(), "{out:?}");
    let _ = l.c.ctr(&["containers", "rm", "slow-alone"]);
    l.c.assert_clean()
}

/// Resident and peak memory of a process, in KiB.
fn rss_kib(pid: i32) -> Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .with_context(|| name.to_string())
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// Hardening round 2, finding 2: the pod's shim does not keep a large spec's memory. A GPU
/// container whose spec is 17 MB (1.3 M env entries and annotations) is created in the pod's shim
/// — straight over ttrpc, as containerd would, since its own clients stop at 16 MiB messages —
/// and the shim's RSS afterwards stays within 16 MiB of what it was before.
#[test]
fn a_large_spec_leaves_the_pod_shim_near_its_idle_memory() -> Result<()> {
    use containerd_shim_protos::api;
    const V2: &str = "containerd.task.v2.Task";
    let mut l = lab()?;
    let shim = l.start_healthy()?;
    // Idle means a shim that has served a GPU container: discovery cached, its code paged in.
    let out = l.run_gpu(GLIBC_IMAGE, "mem-warm", &[], "true")?;
    ensure!(out.status.success(), "{out:?}");
    let (idle, _) = rss_kib(shim)?;

    // The big container's bundle: the healthy one's spec, 1.3 M more env entries, a GPU, and a
    // root of its own (a plain directory, as `ctr run --rootfs` gives).
    let work = tempfile::Builder::new()
        .prefix("nvmem-")
        .tempdir_in("/tmp")?;
    let bundle = work.path().join("bundle");
    let rootfs = work.path().join("rootfs");
    integration::image::glibc_rootfs(&rootfs)?;
    std::fs::create_dir_all(&bundle)?;
    let mut spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(l.c.bundle("healthy").join("config.json"))?)?;
    spec["root"] = serde_json::json!({"path": rootfs.display().to_string()});
    spec["linux"]["cgroupsPath"] = serde_json::json!(format!("/{}/mem-large", l.c.namespace));
    // runc's init sets the environment one variable at a time (quadratic in their number), so
    // most of the bulk is annotations, which the shim parses and keeps just the same.
    let env = spec["process"]["env"].as_array_mut().context("env")?;
    env.push("NVIDIA_VISIBLE_DEVICES=0".into());
    env.extend((0..100_000u32).map(|i| serde_json::Value::from(format!("E{i:07}=12"))));
    let notes = spec["annotations"].as_object_mut().context("annotations")?;
    notes.extend((0..1_200_000u32).map(|i| (format!("n{i:07}"), "1".into())));
    let data = serde_json::to_vec(&spec)?;
    drop(spec);
    ensure!(data.len() > 17_000_000, "the spec is {} bytes", data.len());
    std::fs::write(bundle.join("config.json"), &data)?;

    let mut req = api::CreateTaskRequest::new();
    req.id = "mem-large".into();
    req.bundle = bundle.display().to_string();
    // runtimeoptions.v1.Options { config_path } (field 2), as `--runtime-config-path` sends it.
    let path = l.config.as_bytes();
    ensure!(path.len() < 128, "a one-byte length");
    let mut options = containerd_shim_protos::protobuf::well_known_types::any::Any::new();
    options.type_url = "runtimeoptions.v1.Options".into();
    options.value = [&[0x12, path.len() as u8][..], path].concat();
    req.options = Some(options).into();
    let created: api::CreateTaskResponse =
        l.c.shim_call("healthy", V2, "Create", &req)
            .with_context(|| l.c.log_tail())?;
    ensure!(created.pid > 0, "no init pid");
    let (after, peak) = rss_kib(shim)?;
    eprintln!(
        "spec {} MB: pod shim {} KiB before, {} KiB after the Create, peak {} KiB",
        data.len() / 1_000_000,
        idle,
        after,
        peak
    );
    let mut kill = api::KillRequest::new();
    kill.id = "mem-large".into();
    kill.signal = 9;
    let _: api::Empty = l.c.shim_call("healthy", V2, "Kill", &kill)?;
    let mut wait = api::WaitRequest::new();
    wait.id = "mem-large".into();
    let _: api::WaitResponse = l.c.shim_call("healthy", V2, "Wait", &wait)?;
    let mut del = api::DeleteRequest::new();
    del.id = "mem-large".into();
    let _: api::DeleteResponse = l.c.shim_call("healthy", V2, "Delete", &del)?;
    ensure!(
        after <= idle + 16 * 1024,
        "the pod's shim keeps {} MiB more after a {} MB spec (idle {} MiB)",
        (after.saturating_sub(idle)) >> 10,
        data.len() / 1_000_000,
        idle >> 10
    );
    l.healthy_answers("after-large")?;
    l.stop_healthy()?;
    l.c.assert_clean()
}

/// Hardening round 2, note 5: a GPU stage abandoned at its time limit goes on in the background
/// (a driver call cannot be interrupted), but it may no longer write into the container's root:
/// the directory given with `--rootfs` is byte for byte as it was once that work has ended.
#[test]
fn an_abandoned_gpu_stage_writes_nothing_into_the_rootfs() -> Result<()> {
    let mut l = lab()?;
    std::fs::write(
        &l.config,
        std::fs::read_to_string(&l.config)? + "prepare_timeout_ms = 2000\n",
    )?;
    l.host.set_nvml_delay(5000)?;
    l.start_healthy()?;
    let work = tempfile::Builder::new()
        .prefix("nvabandon-")
        .tempdir_in("/tmp")?;
    let rootfs = work.path().join("rootfs");
    integration::image::glibc_rootfs(&rootfs)?;
    let cache_before = std::fs::read(rootfs.join("etc/ld.so.cache"))?;
    let listing = |dir: &Path| -> Result<Vec<String>> {
        let mut v: Vec<String> = std::fs::read_dir(dir)?
            .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
            .collect::<Result<_>>()?;
        v.sort();
        Ok(v)
    };
    let libdir = rootfs.join("usr/lib/x86_64-linux-gnu");
    let libs_before = listing(&libdir)?;
    let out = l.c.ctr(&[
        "run",
        "--runtime",
        integration::RUNTIME,
        "--annotation",
        POD,
        "--runtime-config-path",
        &l.config,
        "--env",
        "NVIDIA_VISIBLE_DEVICES=0",
        "--rootfs",
        &rootfs.display().to_string(),
        "abandoned",
        "true",
    ])?;
    l.c.track("abandoned");
    ensure!(
        !out.status.success() && stderr(&out).contains("took longer than 2000 ms"),
        "{out:?}"
    );
    let _ = l.c.ctr(&["containers", "rm", "abandoned"]);
    // The pod's shim lives on, and so does the abandoned work, until the driver answers.
    let changed = || -> Result<bool> {
        Ok(
            std::fs::read(rootfs.join("etc/ld.so.cache"))? != cache_before
                || listing(&libdir)? != libs_before,
        )
    };
    wait_until(
        Duration::from_secs(30),
        "the abandoned GPU stage to end",
        || Ok(l.c.log_tail().contains("the abandoned GPU stage ended") || changed()?),
    )?;
    ensure!(
        std::fs::read(rootfs.join("etc/ld.so.cache"))? == cache_before,
        "the loader cache was rewritten after the Create had failed"
    );
    ensure!(
        listing(&libdir)? == libs_before,
        "links were made in the rootfs after the Create had failed: {:?}",
        listing(&libdir)?
    );
    l.healthy_answers("after-abandon")?;
    l.stop_healthy()?;
    l.c.assert_clean()
}

/// Hardening round 2, note 5: the forward-compat libraries of an image whose compat directory is
/// crowded with other files are still found (the check looked at its first 256 entries only).
#[test]
fn forward_compat_libraries_are_found_in_a_crowded_directory() -> Result<()> {
    let mut l = lab()?;
    import_glibc_variant(&l.c, "docker.io/library/hostile:crowded-compat", &[], |r| {
        let compat = r.join("usr/local/cuda/compat");
        std::fs::create_dir_all(&compat)?;
        for i in 0..20_000 {
            std::fs::write(compat.join(format!("note-{i:05}.txt")), b"")?;
        }
        gpu_core::fixture::build_lib(
            &compat.join("libcuda.so.999.10.01"),
            "libcuda.so.1",
            "compat libcuda",
        )?;
        Ok(())
    })?;
    let out = l.run_gpu(
        "docker.io/library/hostile:crowded-compat",
        "crowded",
        &[],
        "dlcheck libcuda.so.1",
    )?;
    ensure!(
        out.status.success() && stdout(&out).contains("compat libcuda"),
        "the image's newer compat libcuda was not chosen: {out:?}\n{}",
        l.c.log_tail()
    );
    l.c.assert_clean()
}
