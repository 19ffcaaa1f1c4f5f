//! The real-GPU acceptance checks that moved out of `scripts/gpu-acceptance.sh`: how
//! `NVIDIA_VISIBLE_DEVICES`, capabilities and requirements behave on a real driver, through the
//! same harness as every other test (a private containerd, the tests' image packer, the
//! nothing-left-behind check). Skipped unless `NVIDIA_SHIM_GPU_HOST=1`; the acceptance script
//! sets it and gives the GPU image and shim config:
//! `NVIDIA_SHIM_GPU_IMAGE` (an OCI archive with busybox, `nvidia-smi`'s libraries and
//! `cudacheck`), `NVIDIA_SHIM_GPU_IMAGE_REF` (its name), `NVIDIA_SHIM_GPU_CONFIG` (the shim
//! config), `NVIDIA_SHIM_HOST_SMI` (the host's nvidia-smi). Each check prints one line
//! `ACCEPTANCE|<n>|<name>|PASS or FAIL|<what it saw>` for the script's report.

use std::process::Command;

use anyhow::{Context, Result};
use integration::{stderr, stdout, Containerd};

struct Host {
    c: Containerd,
    image: String,
    config: String,
    uuids: Vec<String>,
    minors: Vec<String>,
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
        let mut opts = vec!["--rm", "--runtime-config-path", self.config.as_str()];
        for e in env {
            opts.extend(["--env", e]);
        }
        let image = self.image.clone();
        let out = self.c.run_image(&image, &opts, id, &["sh", "-c", script])?;
        Ok((
            out.status.success(),
            format!("{}{}", stdout(&out), stderr(&out)),
        ))
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
        failed: 0,
    };
    visible_devices(&mut h)?;
    h.c.assert_clean()?;
    anyhow::ensure!(h.failed == 0, "{} acceptance check(s) failed", h.failed);
    Ok(())
}
