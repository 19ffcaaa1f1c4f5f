//! The real-GPU acceptance checks that moved out of `scripts/gpu-acceptance.sh`: how
//! `NVIDIA_VISIBLE_DEVICES`, capabilities and requirements behave on a real driver, through the
//! same harness as every other test (a private containerd, the tests' image packer, the
//! nothing-left-behind check). Skipped unless `NVIDIA_SHIM_GPU_HOST=1`; the acceptance script
//! sets it and gives the GPU image and shim config:
//! `NVIDIA_SHIM_GPU_IMAGE` (an OCI archive with busybox, `nvidia-smi`'s libraries and
//! `cudacheck`), `NVIDIA_SHIM_GPU_IMAGE_REF` (its name), `NVIDIA_SHIM_GPU_CONFIG` (the shim
//! config), `NVIDIA_SHIM_GPU_ROOTFS` (the image's root, for variants), `NVIDIA_SHIM_HOST_SMI` (the
//! host's nvidia-smi), and for the real-image checks `NVIDIA_SHIM_DEBIAN_ROOTFS`,
//! `NVIDIA_SHIM_LIB64_ROOTFS` and `NVIDIA_SHIM_COMPAT_DIR` (each optional); `NVIDIA_SHIM_GPU_OUT`
//! receives `nvidia-shim top`'s tables. Each check prints one line
//! `ACCEPTANCE|<n>|<name>|PASS or FAIL|<what it saw>` for the script's report.

use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use integration::{bin_dir, image, stderr, stdout, wait_pid_gone, Containerd, RUNTIME};

struct Host {
    c: Containerd,
    image: String,
    config: String,
    uuids: Vec<String>,
    minors: Vec<String>,
    smi: String,
    failed: usize,
}

fn env(k: &str) -> Result<String> {
    std::env::var(k).with_context(|| format!("{k} is not set (the acceptance script sets it)"))
}

fn one_line(s: &str) -> String {
    let s: String = s
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "/");
    s.chars().take(300).collect()
}

impl Host {
    fn run(&mut self, id: &str, env: &[&str], script: &str) -> Result<(bool, String)> {
        let image = self.image.clone();
        self.run_in(&image, id, env, script)
    }

    /// Runs `sh -c script` in `image` with our runtime; (started and exited 0, its output).
    fn run_in(
        &mut self,
        image: &str,
        id: &str,
        env: &[&str],
        script: &str,
    ) -> Result<(bool, String)> {
        let mut opts = vec!["--rm", "--runtime-config-path", self.config.as_str()];
        for e in env {
            opts.extend(["--env", e]);
        }
        let out = self.c.run_image(image, &opts, id, &["sh", "-c", script])?;
        Ok((
            out.status.success(),
            format!("{}{}", stdout(&out), stderr(&out)),
        ))
    }

    /// Starts `ctr run --rm` of `image` with our runtime, the GPU config and all GPUs, in the
    /// background with its output piped.
    fn spawn_all_gpus(
        &mut self,
        image: &str,
        id: &str,
        cmd: &[&str],
    ) -> Result<std::process::Child> {
        let config = self.config.clone();
        let opts = [
            "--rm",
            "--runtime-config-path",
            &config,
            "--env",
            "NVIDIA_VISIBLE_DEVICES=all",
        ];
        self.c.spawn_run_image(image, &opts, id, cmd)
    }

    /// Packs `root` as image `name` with the tests' packer and imports it.
    fn import(&self, root: &std::path::Path, name: &str) -> Result<()> {
        image::import_rootfs(&self.c, root, name)
    }

    fn record(&mut self, n: u32, name: &str, ok: bool, saw: &str) {
        self.failed += usize::from(!ok);
        let verdict = if ok { "PASS" } else { "FAIL" };
        println!("ACCEPTANCE|{n}|{name}|{verdict}|{}", one_line(saw));
    }
}

fn uuids_in(text: &str) -> Vec<String> {
    let mut u: Vec<String> = text
        .split(|c: char| c.is_whitespace() || c == ')' || c == '(')
        .filter(|w| w.starts_with("GPU-"))
        .map(str::to_string)
        .collect();
    u.sort();
    u
}

fn nvidia_nodes(text: &str) -> Vec<&str> {
    text.lines()
        .map(str::trim)
        .filter(|l| {
            l.strip_prefix("nvidia")
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        })
        .collect()
}

/// Checks 1–5: `all`, one GPU by index and by UUID, `none`/`void`/unset, `utility` only, and an
/// unmet requirement that leaves nothing behind.
fn visible_devices(h: &mut Host) -> Result<()> {
    let (_, o) = h.run(
        "c1",
        &["NVIDIA_VISIBLE_DEVICES=all"],
        "nvidia-smi -L; cudacheck",
    )?;
    let mut host = h.uuids.clone();
    host.sort();
    let ok = !host.is_empty() && uuids_in(&o) == host && o.contains("CUDA PASS");
    h.record(1, "NVIDIA_VISIBLE_DEVICES=all", ok, &o);

    let last = h.uuids.len().saturating_sub(1);
    let picks = [("0".to_string(), 0), (h.uuids[last].clone(), last)];
    for (sel, i) in picks {
        let var = format!("NVIDIA_VISIBLE_DEVICES={sel}");
        let (_, o) = h.run("c2", &[&var], "nvidia-smi -L; ls /dev/; cudacheck")?;
        let want_node = format!("nvidia{}", h.minors[i]);
        let listed = o.lines().filter(|l| l.starts_with("GPU ")).count();
        let ok = listed == 1
            && o.contains(&h.uuids[i])
            && nvidia_nodes(&o) == [want_node.as_str()]
            && o.contains("CUDA PASS");
        let saw = format!(
            "{listed} GPU listed ({}), nodes: {:?}; {}",
            h.uuids[i],
            nvidia_nodes(&o),
            o
        );
        h.record(2, &var, ok, &saw);
    }

    let (_, o) = h.run(
        "c3",
        &["NVIDIA_VISIBLE_DEVICES=none"],
        "ls /dev/ | grep nvidia; nvidia-smi; echo rc=$?",
    )?;
    let ok = nvidia_nodes(&o).is_empty()
        && o.contains("nvidiactl")
        && o.to_lowercase().contains("no devices were found");
    h.record(3, "NVIDIA_VISIBLE_DEVICES=none", ok, &o);
    for (name, env) in [
        ("void", vec!["NVIDIA_VISIBLE_DEVICES=void"]),
        ("unset", vec![]),
    ] {
        let (_, o) = h.run(
            &format!("c3{name}"),
            &env,
            "ls /dev/ | grep -c nvidia; ls /usr/bin/nvidia-smi 2>&1; cudacheck",
        )?;
        let ok =
            o.lines().next() == Some("0") && o.contains("No such file") && o.contains("CUDA FAIL");
        h.record(3, &format!("NVIDIA_VISIBLE_DEVICES {name}"), ok, &o);
    }

    let (_, o) = h.run(
        "c4",
        &[
            "NVIDIA_VISIBLE_DEVICES=all",
            "NVIDIA_DRIVER_CAPABILITIES=utility",
        ],
        "nvidia-smi -L; ls /usr/lib/*-linux-gnu/ | grep -c '^libcuda.so'",
    )?;
    let ok = o.lines().any(|l| l.starts_with("GPU ")) && o.lines().last() == Some("0");
    h.record(4, "NVIDIA_DRIVER_CAPABILITIES=utility", ok, &o);

    let (started, o) = h.run(
        "c5",
        &[
            "NVIDIA_VISIBLE_DEVICES=all",
            "NVIDIA_REQUIRE_CUDA=cuda>=99.0",
        ],
        "true",
    )?;
    let _ = h.c.ctr(&["containers", "rm", "c5"]);
    let clean = h.c.assert_clean();
    let ok = !started && o.contains("cuda>=99.0") && clean.is_ok();
    let saw = match &clean {
        Ok(()) => format!("refused: {o}; no task, shim, runc state or mount left"),
        Err(e) => format!("{o}; left behind: {e}"),
    };
    h.record(5, "NVIDIA_REQUIRE_CUDA=cuda>=99.0", ok, &saw);
    Ok(())
}

/// NVML's `00000000:00:04.0` as procfs writes it, `0000:00:04.0`.
fn proc_bus(id: &str) -> String {
    let id = id.trim().to_ascii_lowercase();
    match id.split_once(':') {
        Some((dom, rest)) if dom.len() > 4 => format!("{}:{rest}", &dom[dom.len() - 4..]),
        _ => id,
    }
}

/// Checks 6–8: a stale libcuda stub in the image's cache (also after an in-container
/// ldconfig), a container without a request beside a GPU one, eight GPU containers at once.
fn neighbours_and_caches(h: &mut Host) -> Result<()> {
    let (_, o) = h.run(
        "c6",
        &["NVIDIA_VISIBLE_DEVICES=all"],
        "ldconfig -p | grep 'libcuda.so.1 '; cudacheck; ldconfig; cudacheck",
    )?;
    // The loader resolves libcuda.so.1 to the driver's file in /usr/lib, not the image's stub
    // (which lives in /usr/local/stubs).
    let mapped = o.lines().any(|l| {
        l.contains("libcuda.so.1 ")
            && l.split("=> ").nth(1).is_some_and(|p| {
                p.starts_with("/usr/lib/")
                    && p.rsplit('/')
                        .next()
                        .and_then(|f| f.strip_prefix("libcuda.so."))
                        .is_some_and(|v| v.contains('.'))
            })
    });
    let ok = mapped && o.matches("CUDA PASS").count() == 2;
    h.record(6, "stale libcuda stub in the image cache", ok, &o);

    let image = h.image.clone();
    let config = h.config.clone();
    h.c.run_image(
        &image,
        &[
            "-d",
            "--runtime-config-path",
            &config,
            "--env",
            "NVIDIA_VISIBLE_DEVICES=all",
        ],
        "c7gpu",
        &["sleep", "60"],
    )?;
    let (_, plain) = h.run("c7plain", &[], "ls /dev/ | grep -c nvidia; cudacheck")?;
    let g =
        h.c.ctr(&["task", "exec", "--exec-id", "x", "c7gpu", "cudacheck"])?;
    let g = format!("{}{}", stdout(&g), stderr(&g));
    let _ = h.c.ctr(&["task", "delete", "-f", "c7gpu"]);
    let _ = h.c.ctr(&["containers", "rm", "c7gpu"]);
    let ok =
        plain.lines().next() == Some("0") && plain.contains("CUDA FAIL") && g.contains("CUDA PASS");
    h.record(
        7,
        "no request next to a GPU container",
        ok,
        &format!("plain: {plain}; GPU neighbour: {g}"),
    );

    let mut children = Vec::new();
    for i in 0..8 {
        children.push(h.spawn_all_gpus(&image, &format!("p{i}"), &["cudacheck"])?);
    }
    let mut passed = 0;
    let mut seen = String::new();
    for c in children {
        let out = c.wait_with_output()?;
        let text = format!("{}{}", stdout(&out), stderr(&out));
        passed += usize::from(text.contains("CUDA PASS"));
        seen.push_str(&text);
    }
    let saw = if passed == 8 {
        "8/8 CUDA PASS".to_string()
    } else {
        format!("{passed}/8: {seen}")
    };
    h.record(8, "8 GPU containers at once", passed == 8, &saw);
    Ok(())
}

/// Checks 9–10: `nvidia-shim info` against nvidia-smi; /proc/driver/nvidia shows a container only
/// its own GPU's entry, and params masked.
fn host_views(h: &mut Host) -> Result<()> {
    let info = Command::new(bin_dir().join("nvidia-shim"))
        .args(["--config", &h.config, "info", "--json"])
        .output()?;
    let info = stdout(&info);
    let smi = Command::new(&h.smi)
        .args([
            "--query-gpu=driver_version,uuid,pci.bus_id",
            "--format=csv,noheader",
        ])
        .output()?;
    let smi = stdout(&smi);
    let ok = !smi.trim().is_empty()
        && smi.lines().all(|l| {
            let f: Vec<&str> = l.split(',').map(str::trim).collect();
            f.len() == 3
                && info.contains(&format!("\"driver_version\": \"{}\"", f[0]))
                && info.contains(&format!("\"uuid\": \"{}\"", f[1]))
                && info.contains(&format!("\"pci_bus_id\": \"{}\"", proc_bus(f[2])))
        });
    h.record(
        9,
        "nvidia-shim info vs nvidia-smi",
        ok,
        &format!("smi: {smi}"),
    );

    let bus0 = proc_bus(
        smi.lines()
            .next()
            .and_then(|l| l.split(',').nth(2))
            .unwrap_or_default(),
    );
    let (_, given) = h.run(
        "c10a",
        &["NVIDIA_VISIBLE_DEVICES=0"],
        &format!("ls /proc/driver/nvidia/gpus/; grep -c Model /proc/driver/nvidia/gpus/{bus0}/information; wc -c </proc/driver/nvidia/params"),
    )?;
    let (_, none) = h.run(
        "c10n",
        &["NVIDIA_VISIBLE_DEVICES=none"],
        &format!("ls /proc/driver/nvidia/gpus/; ls /proc/driver/nvidia/gpus/{bus0}/ | wc -l; cat /proc/driver/nvidia/gpus/{bus0}/information 2>&1 | head -1"),
    )?;
    let g: Vec<&str> = given.lines().map(str::trim).collect();
    let n: Vec<&str> = none.lines().map(str::trim).collect();
    let ok = given.contains(&bus0)
        && g.len() >= 2
        && g[g.len() - 2] == "1"
        && g[g.len() - 1] == "0"
        && n.get(1) == Some(&"0")
        && n.last().is_some_and(|l| l.contains("No such file"));
    h.record(
        10,
        "/proc/driver/nvidia/gpus: own GPU only, params masked",
        ok,
        &format!("GPU 0 given: {given}; none given: {none}"),
    );
    Ok(())
}

/// Check 11: a FIFO at the image's /etc/ld.so.cache neither hangs the shim nor stops the
/// container (the image: the GPU image's root with the cache replaced, packed by the tests'
/// packer).
fn fifo_cache(h: &mut Host) -> Result<()> {
    let work = tempfile::tempdir()?;
    let root = work.path().join("rootfs");
    let st = Command::new("cp")
        .arg("-a")
        .arg(env("NVIDIA_SHIM_GPU_ROOTFS")?)
        .arg(&root)
        .status()?;
    anyhow::ensure!(st.success(), "copying the GPU image's root");
    let cache = root.join("etc/ld.so.cache");
    let _ = std::fs::remove_file(&cache);
    nix::unistd::mkfifo(&cache, nix::sys::stat::Mode::from_bits_truncate(0o644))?;
    let name = "docker.io/library/gpu-acceptance:fifo";
    h.import(&root, name)?;
    let child = h.spawn_all_gpus(
        name,
        "c11",
        &["sh", "-c", "ls -l /etc/ld.so.cache; cudacheck"],
    )?;
    let pid = child.id() as i32;
    let o = if wait_pid_gone(pid, Duration::from_secs(60)).is_ok() {
        let out = child.wait_with_output()?;
        format!("{}{}", stdout(&out), stderr(&out))
    } else {
        let mut child = child;
        let _ = child.kill();
        let _ = child.wait();
        "hung for 60 s".to_string()
    };
    let ok = o
        .lines()
        .any(|l| l.starts_with('-') && l.contains("/etc/ld.so.cache"))
        && o.contains("CUDA PASS");
    h.record(11, "FIFO at the image's /etc/ld.so.cache", ok, &o);
    Ok(())
}

fn count(o: &str, needle: &str) -> usize {
    o.matches(needle).count()
}

/// Checks 12–15, on real images whose roots the script prepares: Debian bookworm (nvidia-smi,
/// Triton's libcuda check, a PTX kernel JIT-compiled by the driver, `ld -lcuda`, again after an
/// in-container ldconfig), a /usr/lib64 (RHEL-style) image, graphics (Vulkan, EGL), and an image
/// with older CUDA forward-compat libraries than the host's.
fn real_images(h: &mut Host) -> Result<()> {
    let debian = std::env::var("NVIDIA_SHIM_DEBIAN_ROOTFS").ok();
    if let Some(d) = &debian {
        h.import(
            std::path::Path::new(d),
            "docker.io/library/gpu-acceptance:debian",
        )?;
        let script = r#"nvidia-smi -L; python3 /realimage.py; d=$(ldconfig -p | grep "libcuda.so.1 " | sed "s/.*=> //" | xargs dirname);
            ls -l $d/libcuda.so* $d/libnvidia-ptxjitcompiler.so*; ld -shared -o /tmp/t.so -L$d -lcuda && echo LD OK;
            ldconfig; echo AFTER-LDCONFIG; python3 /realimage.py; ld -shared -o /tmp/t2.so -L$d -lcuda && echo LD OK"#;
        let (_, o) = h.run_in(
            "docker.io/library/gpu-acceptance:debian",
            "c12",
            &["NVIDIA_VISIBLE_DEVICES=all"],
            script,
        )?;
        let ok = o.lines().any(|l| l.starts_with("GPU "))
            && count(&o, "TRITON OK") == 2
            && count(&o, "PTXJIT PASS") == 2
            && count(&o, "LD OK") == 2
            && o.lines()
                .any(|l| l.contains("MAPPED") && l.contains("ptxjitcompiler"));
        let keys = ["TRITON", "PTXJIT", "LD OK", "MAPPED"];
        let saw: Vec<&str> = o
            .lines()
            .filter(|l| keys.iter().any(|k| l.contains(k)))
            .collect();
        let saw = if ok { saw.join(" ") } else { o.clone() };
        h.record(
            12,
            "Debian bookworm: nvidia-smi, Triton check, PTX JIT, ld -lcuda, after ldconfig too",
            ok,
            &saw,
        );
    }

    if let Ok(l64) = std::env::var("NVIDIA_SHIM_LIB64_ROOTFS") {
        h.import(
            std::path::Path::new(&l64),
            "docker.io/library/gpu-acceptance:lib64",
        )?;
        let script = r#"d=$(ldconfig -p | grep "libcuda.so.1 " | sed "s/.*=> //" | xargs dirname); echo dir=$d;
            [ -e $d/libcuda.so.1 ] && [ -e $d/libcuda.so ] && echo TRITON OK; ls /usr/lib/ 2>&1 | grep -c linux-gnu; nvidia-smi -L; cudacheck"#;
        let (_, o) = h.run_in(
            "docker.io/library/gpu-acceptance:lib64",
            "c13",
            &["NVIDIA_VISIBLE_DEVICES=all"],
            script,
        )?;
        let ok = o.contains("dir=/usr/lib64")
            && o.contains("TRITON OK")
            && o.lines().any(|l| l.starts_with("GPU "))
            && o.contains("CUDA PASS");
        h.record(
            13,
            "/usr/lib64 image: names in /usr/lib64, Triton check, CUDA",
            ok,
            &o,
        );
    }

    let Some(d) = debian else {
        return Ok(());
    };
    let name = Command::new(&h.smi)
        .args(["--query-gpu=name", "--format=csv,noheader"])
        .output()?;
    let gpu_name = stdout(&name)
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_string();
    let script = r#"ls /usr/share/vulkan/icd.d/ /usr/share/glvnd/egl_vendor.d/; ls /dev/dri 2>&1;
        vulkaninfo --summary 2>&1 | grep -E "deviceName|driverName|driverInfo|ERROR"; python3 /egl.py"#;
    let (_, o) = h.run_in(
        "docker.io/library/gpu-acceptance:debian",
        "c14",
        &[
            "NVIDIA_VISIBLE_DEVICES=all",
            "NVIDIA_DRIVER_CAPABILITIES=all",
        ],
        script,
    )?;
    let ok = !gpu_name.is_empty()
        && o.lines()
            .any(|l| l.contains("deviceName") && l.contains(&gpu_name))
        && o.contains("EGL VENDOR NVIDIA");
    h.record(
        14,
        "graphics: vulkaninfo lists the GPU, EGL device platform finds NVIDIA",
        ok,
        &o,
    );

    let Ok(compat) = std::env::var("NVIDIA_SHIM_COMPAT_DIR") else {
        return Ok(());
    };
    let work = tempfile::tempdir()?;
    let root = work.path().join("rootfs");
    let cp = |from: &str, to: &std::path::Path| -> Result<()> {
        let st = Command::new("cp").arg("-a").arg(from).arg(to).status()?;
        anyhow::ensure!(st.success(), "copying {from}");
        Ok(())
    };
    cp(&d, &root)?;
    std::fs::create_dir_all(root.join("usr/local/cuda-x"))?;
    cp(&compat, &root.join("usr/local/cuda-x/compat"))?;
    std::os::unix::fs::symlink("cuda-x", root.join("usr/local/cuda"))?;
    h.import(&root, "docker.io/library/gpu-acceptance:compat")?;
    let version = Command::new(&h.smi)
        .args(["--query-gpu=driver_version", "--format=csv,noheader"])
        .output()?;
    let version = stdout(&version)
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_string();
    let (_, o) = h.run_in(
        "docker.io/library/gpu-acceptance:compat",
        "c15",
        &["NVIDIA_VISIBLE_DEVICES=all"],
        r#"ls /usr/local/cuda/compat/; ldconfig -p | grep "libcuda.so.1 "; python3 /realimage.py"#,
    )?;
    let ok = !version.is_empty()
        && o.lines()
            .any(|l| l.contains("MAPPED") && l.contains(&format!("libcuda.so.{version}")))
        && o.contains("PTXJIT PASS");
    h.record(
        15,
        "older /usr/local/cuda/compat in the image: host libcuda used",
        ok,
        &o,
    );
    Ok(())
}

/// `nvidia-shim` with the GPU config, against the harness's containerd; its stdout.
fn nvidia_shim(h: &Host, args: &[&str]) -> Result<String> {
    let state =
        h.c.bundle("x")
            .parent()
            .and_then(|p| p.parent())
            .context("state dir")?
            .display()
            .to_string();
    let mut all = vec!["--config", h.config.as_str()];
    all.extend_from_slice(args);
    all.extend(["--state-dir", &state]);
    let out = Command::new(bin_dir().join("nvidia-shim"))
        .args(&all)
        .output()?;
    Ok(stdout(&out))
}

fn smi_lines(h: &Host, args: &[&str]) -> Result<String> {
    Ok(stdout(&Command::new(&h.smi).args(args).output()?))
}

/// Writes `text` to `name` in `$NVIDIA_SHIM_GPU_OUT` (the acceptance run's output dir), if set.
fn keep(name: &str, text: &str) {
    if let Ok(dir) = std::env::var("NVIDIA_SHIM_GPU_OUT") {
        let _ = std::fs::write(std::path::Path::new(&dir).join(name), text);
    }
}

/// `top --json` against nvidia-smi's per-process figures (within 5 %), A's utilization, nothing
/// for C, and `metrics` parsed as Prometheus text.
fn accounting_verdict(top: &str, smi: &str, metrics: &str) -> Result<String> {
    let top: serde_json::Value = serde_json::from_str(top)?;
    let smi: std::collections::BTreeMap<u64, f64> = smi
        .lines()
        .filter_map(|l| {
            let (pid, mib) = l.split_once(',')?;
            Some((pid.trim().parse().ok()?, mib.trim().parse().ok()?))
        })
        .collect();
    let find = |id: &str| {
        top["containers"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["id"] == id))
    };
    anyhow::ensure!(
        find("acct-c").is_none(),
        "acct-c asked for nothing but is listed"
    );
    let mut seen = Vec::new();
    for id in ["acct-a", "acct-b"] {
        let cont = find(id).with_context(|| format!("{id} is not listed: {top}"))?;
        let procs = cont["processes"].as_array().context("processes")?;
        anyhow::ensure!(!procs.is_empty(), "{id} has no GPU process: {cont}");
        for p in procs {
            let pid = p["pid"].as_u64().context("pid")?;
            let ours = p["used_memory_bytes"].as_f64().context("memory")? / 1048576.0;
            let theirs = *smi
                .get(&pid)
                .with_context(|| format!("nvidia-smi does not list pid {pid}: {smi:?}"))?;
            anyhow::ensure!(
                (ours - theirs).abs() / theirs <= 0.05,
                "{id} pid {pid}: top {ours:.0} MiB, nvidia-smi {theirs:.0} MiB"
            );
            seen.push(format!(
                "{id} pid {pid}: top {ours:.0} MiB / smi {theirs:.0} MiB, SM {}%",
                p["sm_util"]
            ));
        }
    }
    let busy = find("acct-a")
        .and_then(|c| c["processes"][0]["sm_util"].as_u64())
        .unwrap_or(0);
    anyhow::ensure!(
        busy > 0,
        "acct-a runs kernels but shows no SM utilization: {top}"
    );
    let parsed = prometheus_parse::Scrape::parse(metrics.lines().map(|l| Ok(l.to_string())))?;
    let mem = parsed
        .samples
        .iter()
        .filter(|s| s.metric == "nvidia_shim_container_gpu_memory_used_bytes")
        .count();
    anyhow::ensure!(
        mem == 2,
        "metrics: {mem} container memory samples, want 2:\n{metrics}"
    );
    Ok(format!(
        "{}; metrics: {} samples parsed",
        seen.join("; "),
        parsed.samples.len()
    ))
}

/// Check 18: A (all) holds 1 GiB and runs kernels, B (all) holds 3 GiB, C asks for nothing.
fn accounting(h: &mut Host) -> Result<()> {
    let (image, config) = (h.image.clone(), h.config.clone());
    let detached = |h: &mut Host, id: &str, env: &[&str], cmd: &[&str]| -> Result<()> {
        let mut opts = vec!["-d", "--runtime-config-path", config.as_str()];
        for e in env {
            opts.extend(["--env", e]);
        }
        h.c.run_image(&image, &opts, id, cmd)?;
        Ok(())
    };
    detached(
        h,
        "acct-a",
        &["NVIDIA_VISIBLE_DEVICES=all"],
        &["gpuhold", "1024", "90", "busy"],
    )?;
    detached(
        h,
        "acct-b",
        &["NVIDIA_VISIBLE_DEVICES=all"],
        &["gpuhold", "3072", "90"],
    )?;
    detached(h, "acct-c", &[], &["sleep", "90"])?;
    let apps = [
        "--query-compute-apps=pid,used_memory",
        "--format=csv,noheader,nounits",
    ];
    integration::wait_until(Duration::from_secs(60), "both GPU processes", || {
        Ok(smi_lines(h, &apps)?.lines().count() >= 2)
    })?;
    // The driver's utilization samples cover the last seconds.
    std::thread::sleep(Duration::from_secs(3));
    let ns = h.c.namespace.clone();
    let top = nvidia_shim(h, &["top", "--json", "--namespace", &ns])?;
    let smi = smi_lines(h, &apps)?;
    let metrics = nvidia_shim(h, &["metrics"])?;
    let table = nvidia_shim(h, &["top"])?;
    keep("top.txt", &table);
    for id in ["acct-a", "acct-b", "acct-c"] {
        let _ = h.c.ctr(&["task", "delete", "-f", id]);
        let _ = h.c.ctr(&["containers", "rm", id]);
    }
    let verdict = accounting_verdict(&top, &smi, &metrics);
    let saw = match &verdict {
        Ok(s) => s.clone(),
        Err(e) => format!("{e:#}; top: {top}; smi: {smi}"),
    };
    h.record(
        18,
        "accounting: top attributes A's and B's GPU memory (vs nvidia-smi), nothing for C",
        verdict.is_ok(),
        &saw,
    );
    Ok(())
}

/// Check 19: A (opted in to GPU-aware pause) holds 2 GiB with a known pattern and keeps
/// computing; Pause releases its memory, B then allocates more than was free before; Resume, and
/// A verifies every word and checksum.
fn pause_frees_the_gpu(h: &mut Host) -> Result<()> {
    use std::io::{BufRead, BufReader};
    let (image, config) = (h.image.clone(), h.config.clone());
    let id = h.c.track("sus-a");
    let args = [
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--runtime-config-path",
        &config,
        "--env",
        "NVIDIA_VISIBLE_DEVICES=all",
        "--annotation",
        "nvidia.com/gpu-suspend-on-pause=true",
        &image,
        &id,
        "gpuwork",
        "2048",
        "40",
    ];
    let mut a =
        h.c.ctr_command(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
    let (tx, rx) = std::sync::mpsc::channel();
    let out = a.stdout.take().context("stdout")?;
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(|l| l.ok()) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let holding = rx.recv_timeout(Duration::from_secs(60)).unwrap_or_default();
    let free = |h: &Host| -> Result<i64> {
        let t = smi_lines(
            h,
            &["--query-gpu=memory.free", "--format=csv,noheader,nounits"],
        )?;
        Ok(t.lines()
            .next()
            .unwrap_or_default()
            .trim()
            .parse()
            .unwrap_or(0))
    };
    let free_before = free(h)?;
    let t = std::time::Instant::now();
    let paused = h.c.ctr(&["task", "pause", &id])?;
    let pause_ms = t.elapsed().as_millis();
    let free_paused = free(h)?;
    keep("top-paused.txt", &nvidia_shim(h, &["top"])?);
    let want = (free_before + 1024).to_string();
    let (_, b) = h.run(
        "sus-b",
        &["NVIDIA_VISIBLE_DEVICES=all"],
        &format!("gpuhold {want} 1"),
    )?;
    let t = std::time::Instant::now();
    let resumed = h.c.ctr(&["task", "resume", &id])?;
    let resume_ms = t.elapsed().as_millis();
    let mut rest: Vec<String> = Vec::new();
    while let Ok(l) = rx.recv_timeout(Duration::from_secs(120)) {
        rest.push(l);
    }
    let _ = a.wait();
    let verify = rest
        .iter()
        .find(|l| l.starts_with("VERIFY"))
        .cloned()
        .unwrap_or_default();
    let ok = holding.starts_with("HOLDING")
        && paused.status.success()
        && resumed.status.success()
        && b.contains("HOLDING")
        && verify.starts_with("VERIFY PASS")
        && free_paused > free_before + 2000;
    let saw = format!(
        "free {free_before} → {free_paused} MiB while paused (pause {pause_ms} ms, resume {resume_ms} ms); B asked {want} MiB: {}; A: {verify} {} {}",
        b.trim(),
        stderr(&paused),
        stderr(&resumed)
    );
    h.record(
        19,
        "pause frees the GPU: memory released, B allocates it, A resumes intact",
        ok,
        &saw,
    );
    Ok(())
}

/// Check 0: installed as on a node: `nvidia-shim install` (binaries, shim config kept, CDI spec,
/// containerd config), a second install changes nothing, and a GPU container runs through the
/// installed binary (named by path, as `ctr` must after an install).
fn installed(h: &mut Host) -> Result<()> {
    let work = tempfile::tempdir()?;
    let node = work.path();
    let containerd_cfg = node.join("containerd.toml");
    std::fs::write(&containerd_cfg, "version = 2\n")?;
    let shim_cfg = node.join("shim.toml");
    std::fs::copy(&h.config, &shim_cfg)?;
    let p = |x: &std::path::Path| x.display().to_string();
    let args = [
        "install".to_string(),
        "--source-dir".into(),
        p(&bin_dir()),
        "--bin-dir".into(),
        p(&node.join("bin")),
        "--shim-config".into(),
        p(&shim_cfg),
        "--containerd-config".into(),
        p(&containerd_cfg),
        "--cdi-spec".into(),
        p(&node.join("cdi/nvidia.yaml")),
        "--restart".into(),
        "none".into(),
    ];
    let install = || {
        Command::new(bin_dir().join("nvidia-shim"))
            .args(&args)
            .output()
    };
    let (first, again) = (install()?, install()?);
    let (first, again) = (
        format!("{}{}", stdout(&first), stderr(&first)),
        stdout(&again),
    );
    let installed = node.join("bin/containerd-shim-nvidia-v2");
    let id = h.c.track("c0");
    let runtime = p(&installed);
    let config = p(&shim_cfg);
    let image = h.image.clone();
    let run = [
        "run",
        "-d",
        "--runtime",
        &runtime,
        "--runtime-config-path",
        &config,
        "--env",
        "NVIDIA_VISIBLE_DEVICES=all",
        &image,
        &id,
        "sleep",
        "60",
    ];
    h.c.ctr_ok(&run)?;
    let address = p(&h.c.address());
    let exe = integration::processes_matching(|argv| argv.contains(&id) && argv.contains(&address))
        .first()
        .and_then(|pid| std::fs::read_link(format!("/proc/{pid}/exe")).ok());
    let smi =
        h.c.ctr(&["task", "exec", "--exec-id", "smi", &id, "nvidia-smi", "-L"])?;
    let _ = h.c.ctr(&["task", "delete", "-f", &id]);
    let _ = h.c.ctr(&["containers", "rm", &id]);
    let ok = first.contains("binaries: installed")
        && again.contains("binaries: unchanged")
        && again.contains("containerd: not restarted (config unchanged)")
        && exe.as_deref() == Some(installed.as_path())
        && stdout(&smi).starts_with("GPU ");
    let saw = format!(
        "{first}; shim: {exe:?}; {}; again: {}",
        stdout(&smi).trim(),
        again
            .lines()
            .filter(|l| l.starts_with("binaries") || l.starts_with("containerd:"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    h.record(
        0,
        "installed by nvidia-shim install; the running shim is the installed one",
        ok,
        &saw,
    );
    Ok(())
}

/// The tables of the report: start latency (median `ctr run --rm … true`, interleaved) of the Go
/// runc shim and ours, with and without GPUs (and with crun as the delegate when
/// `NVIDIA_SHIM_GPU_CRUN_CONFIG` names its config), and per-pod memory; written to
/// `$NVIDIA_SHIM_GPU_OUT/tables.md`.
fn tables(h: &mut Host) -> Result<()> {
    use integration::measure::{median, pod_memory_of, sum, timed_run_of, GO_RUNTIME, OUR_RUNTIME};
    use std::fmt::Write as _;
    let num = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let (iterations, pods) = (num("ITER", 20), num("PODS", 30));
    let all = "NVIDIA_VISIBLE_DEVICES=all";
    let cfg = h.config.clone();
    let mut variants: Vec<(&str, &str, Vec<String>)> = vec![
        (
            "(a) containerd-shim-runc-v2 (Go), no GPU",
            GO_RUNTIME,
            vec![],
        ),
        (
            "(b) containerd-shim-nvidia-v2, no GPU",
            OUR_RUNTIME,
            vec!["--runtime-config-path".into(), cfg.clone()],
        ),
        (
            "(c) containerd-shim-nvidia-v2, NVIDIA_VISIBLE_DEVICES=all",
            OUR_RUNTIME,
            vec![
                "--runtime-config-path".into(),
                cfg.clone(),
                "--env".into(),
                all.into(),
            ],
        ),
    ];
    if let Ok(crun) = std::env::var("NVIDIA_SHIM_GPU_CRUN_CONFIG") {
        variants.push((
            "(d) containerd-shim-nvidia-v2 + crun, no GPU",
            OUR_RUNTIME,
            vec!["--runtime-config-path".into(), crun.clone()],
        ));
        variants.push((
            "(e) containerd-shim-nvidia-v2 + crun, NVIDIA_VISIBLE_DEVICES=all",
            OUR_RUNTIME,
            vec![
                "--runtime-config-path".into(),
                crun,
                "--env".into(),
                all.into(),
            ],
        ));
    }
    let image = h.image.clone();
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    for i in 0..=iterations {
        for (k, (_, runtime, extra)) in variants.iter().enumerate() {
            let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
            let ms = timed_run_of(&h.c, &image, runtime, &extra, &format!("l{k}-{i}"))?;
            // The first round warms caches (pages, the inventory).
            if i > 0 {
                times[k].push(ms);
            }
        }
    }
    let medians: Vec<f64> = times.iter_mut().map(|t| median(t)).collect();
    let mut t = String::new();
    let _ = writeln!(t, "## Start latency: median `ctr run --rm … true`, {iterations} interleaved iterations each\n");
    let _ = writeln!(
        t,
        "| runtime | median (ms) | vs Go runc shim |\n|---|---|---|"
    );
    for ((name, _, _), m) in variants.iter().zip(&medians) {
        let _ = writeln!(t, "| {name} | {m:.1} | {:.3} |", m / medians[0]);
    }
    let ratio = medians[2] / medians[0];
    let _ = writeln!(
        t,
        "\nTarget (c)/(a) ≤ 1.03: {} ({ratio:.3}). GPU overhead (c)/(b): {:.3} (goal ≤ 1.02).\n",
        if ratio <= 1.03 { "met" } else { "NOT met" },
        medians[2] / medians[1]
    );
    let go = pod_memory_of(&h.c, &image, GO_RUNTIME, "go", pods, &[])?;
    let ours = pod_memory_of(
        &h.c,
        &image,
        OUR_RUNTIME,
        "our",
        pods,
        &["--runtime-config-path", &cfg, "--env", all],
    )?;
    let _ = writeln!(t, "## Per-pod memory: {pods} pods, one container and one shim each (KiB, summed over the shims)\n");
    let _ = writeln!(
        t,
        "| shims | count | RSS | PSS | USS | PSS per shim |\n|---|---|---|---|---|---|"
    );
    for (name, m) in [
        ("containerd-shim-runc-v2 (Go), no GPU", &go),
        (
            "containerd-shim-nvidia-v2, NVIDIA_VISIBLE_DEVICES=all",
            &ours,
        ),
    ] {
        let n = m.shims.max(1) as f64;
        let _ = writeln!(
            t,
            "| {name} | {} | {:.0} | {:.0} | {:.0} | {:.0} |",
            m.shims,
            sum(&m.rss),
            sum(&m.pss),
            sum(&m.uss),
            sum(&m.pss) / n
        );
    }
    let _ = writeln!(
        t,
        "\nSummed PSS, ours / Go: {:.2} (goal ≤ 0.25); one shim's RSS: {:.0} KiB (goal ≤ 4096).",
        sum(&ours.pss) / sum(&go.pss).max(1.0),
        sum(&ours.rss) / ours.shims.max(1) as f64
    );
    keep("tables.md", &t);
    Ok(())
}

/// Check 21: the device classes beyond GPUs on this host. What the host has of a class (the
/// lent hosts have `/dev/infiniband/rdma_cm`) reaches the container that asks; a class it lacks
/// (IMEX, GDS, DRM here) is skipped with a warning in the log, and a named IMEX channel it lacks
/// is refused, naming what it has; CUDA runs beside them.
fn device_classes(h: &mut Host) -> Result<()> {
    let class_names = |dir: &str, keep: &dyn Fn(&str) -> bool| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .filter(|n| keep(n))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    };
    let ib = class_names("/dev/infiniband", &|n| {
        n == "rdma_cm" || n.starts_with("uverbs") || n.starts_with("umad")
    });
    let imex = class_names("/dev/nvidia-caps-imex-channels", &|n| {
        n.starts_with("channel")
    });
    let (ran, out) = h.run(
        "c21",
        &[
            "NVIDIA_VISIBLE_DEVICES=0",
            "NVIDIA_MOFED=enabled",
            "NVIDIA_GDS=enabled",
            "NVIDIA_IMEX_CHANNELS=all",
            "NVIDIA_DRIVER_CAPABILITIES=all",
        ],
        "echo IB $(ls /dev/infiniband 2>/dev/null | sort); \
         echo OTHER $(ls -d /dev/dri /dev/nvidia-caps-imex-channels /dev/nvidia-fs* 2>/dev/null); cudacheck",
    )?;
    let got_ib = out
        .lines()
        .find_map(|l| l.strip_prefix("IB"))
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect::<Vec<_>>();
    let others = out
        .lines()
        .find_map(|l| l.strip_prefix("OTHER"))
        .unwrap_or_default()
        .trim()
        .to_string();
    let log = h.c.log_tail();
    let gds_warned = log.contains("NVIDIA_GDS=enabled: this host has no /dev/nvidia-fs* nodes");
    let (refused_ran, refused) = h.run(
        "c21b",
        &["NVIDIA_VISIBLE_DEVICES=0", "NVIDIA_IMEX_CHANNELS=4095"],
        "true",
    )?;
    let have = if imex.is_empty() {
        "none".to_string()
    } else {
        imex.iter()
            .map(|c| c.trim_start_matches("channel").to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let refused_ok = !refused_ran
        && refused.contains(&format!(
            "IMEX channel 4095 is not on this host (it has: {have})"
        ));
    let ok = ran
        && out.contains("CUDA PASS")
        && got_ib == ib
        && imex.is_empty() != others.contains("imex")
        && gds_warned
        && refused_ok;
    h.record(
        21,
        "device classes: the host's RDMA nodes injected; IMEX/GDS/DRM the host lacks skipped with a warning; a missing IMEX channel refused",
        ok,
        &format!(
            "host /dev/infiniband: {ib:?}; container: {got_ib:?}; other class nodes in the container: [{others}]; GDS warning in the log: {gds_warned}; channel 4095: {}",
            refused.lines().last().unwrap_or_default()
        ),
    );
    Ok(())
}

#[test]
fn gpu_host_acceptance() -> Result<()> {
    if std::env::var_os("NVIDIA_SHIM_GPU_HOST").is_none_or(|v| v != "1") {
        eprintln!(
            "skipped: NVIDIA_SHIM_GPU_HOST=1 is set only on a GPU host (scripts/gpu-acceptance.sh)"
        );
        return Ok(());
    }
    let smi = env("NVIDIA_SHIM_HOST_SMI")?;
    let query = |field: &str| -> Result<Vec<String>> {
        let out = Command::new(&smi)
            .args([&format!("--query-gpu={field}"), "--format=csv,noheader"])
            .output()?;
        Ok(stdout(&out).lines().map(|l| l.trim().to_string()).collect())
    };
    let uuids = query("uuid")?;
    let minors: Vec<String> = uuids
        .iter()
        .map(|u| {
            let out = Command::new(&smi).args(["-q", "-i", u]).output().ok();
            out.map(|o| stdout(&o))
                .and_then(|t| {
                    t.lines()
                        .find(|l| l.contains("Minor Number"))
                        .and_then(|l| l.split(':').nth(1))
                        .map(|m| m.trim().to_string())
                })
                .unwrap_or_default()
        })
        .collect();
    let c = Containerd::start()?;
    c.ctr_ok(&["images", "import", &env("NVIDIA_SHIM_GPU_IMAGE")?])?;
    let mut h = Host {
        c,
        image: env("NVIDIA_SHIM_GPU_IMAGE_REF")?,
        config: env("NVIDIA_SHIM_GPU_CONFIG")?,
        uuids,
        minors,
        smi,
        failed: 0,
    };
    installed(&mut h)?;
    visible_devices(&mut h)?;
    neighbours_and_caches(&mut h)?;
    host_views(&mut h)?;
    fifo_cache(&mut h)?;
    real_images(&mut h)?;
    accounting(&mut h)?;
    pause_frees_the_gpu(&mut h)?;
    device_classes(&mut h)?;
    tables(&mut h)?;
    h.c.assert_clean()?;
    anyhow::ensure!(h.failed == 0, "{} acceptance check(s) failed", h.failed);
    Ok(())
}
