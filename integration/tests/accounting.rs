//! Per-container GPU accounting on a fake driver host under a real containerd and runc: two
//! containers share one fake GPU and a third asked for nothing; the fake NVML reports a process
//! of each GPU container (by its host PID) and one of the host. `nvidia-shim top` and `metrics`
//! attribute each process to its container, list the host's as unattributed, and show nothing
//! for the container without GPUs; the record leaves with the bundle.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use anyhow::{ensure, Context, Result};
use gpu_core::fixture::{gpu_uuid, FakeHost, FakeProcess, Layout};
use integration::image::{import_glibc, GLIBC_IMAGE};
use integration::{bin_dir, stdout, Containerd};
use serde_json::Value;

const GIB: u64 = 1 << 30;

struct Lab {
    c: Containerd,
    host: FakeHost,
    config: String,
    _dir: tempfile::TempDir,
}

impl Lab {
    fn start_detached(&mut self, id: &str, env: &[&str]) -> Result<u32> {
        let mut args = vec!["-d", "--runtime-config-path", &self.config];
        for e in env {
            args.extend(["--env", e]);
        }
        self.c
            .run_image(GLIBC_IMAGE, &args, id, &["sleep", "1000"])?;
        let pid = std::fs::read_to_string(self.c.bundle(id).join("init.pid"))?;
        Ok(pid.trim().parse()?)
    }

    fn state_dir(&self) -> Result<PathBuf> {
        Ok(self
            .c
            .bundle("x")
            .parent()
            .context("bundle parent")?
            .parent()
            .context("state")?
            .to_path_buf())
    }

    fn cli(&self, args: &[&str]) -> Result<std::process::Output> {
        let state = self.state_dir()?.display().to_string();
        let mut all = vec!["--config", &self.config];
        all.extend_from_slice(args);
        all.extend(["--state-dir", &state]);
        Ok(Command::new(bin_dir().join("nvidia-shim"))
            .args(&all)
            .output()?)
    }

    fn remove(&mut self, id: &str) -> Result<()> {
        self.c.ctr_ok(&["task", "delete", "-f", id])?;
        self.c.ctr_ok(&["container", "delete", id])?;
        Ok(())
    }
}

struct Stranger(Child);

impl Drop for Stranger {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn container<'a>(top: &'a Value, id: &str) -> Option<&'a Value> {
    top["containers"].as_array()?.iter().find(|c| c["id"] == id)
}

/// A private containerd and a fake host of `gpus` GPUs with a fake NVML.
fn lab(gpus: usize) -> Result<Lab> {
    lab_with(gpus, true)
}

/// [`lab`], with or without the fake NVML.
fn lab_with(gpus: usize, nvml: bool) -> Result<Lab> {
    let dir = tempfile::Builder::new()
        .prefix("nvacct-")
        .tempdir_in("/tmp")?;
    let host = if nvml {
        FakeHost::build_with_nvml(dir.path(), Layout::Gke, gpus, false)?
    } else {
        FakeHost::build(dir.path(), Layout::Gke, gpus)?
    };
    let config = host.write_config()?;
    let c = Containerd::start()?;
    import_glibc(&c)?;
    Ok(Lab {
        c,
        host,
        config,
        _dir: dir,
    })
}

#[test]
fn top_and_metrics_attribute_shared_gpu_memory_to_containers() -> Result<()> {
    let mut lab = lab(2)?;
    let a = lab.start_detached("acct-a", &["NVIDIA_VISIBLE_DEVICES=0"])?;
    let b = lab.start_detached("acct-b", &["NVIDIA_VISIBLE_DEVICES=0"])?;
    lab.start_detached("acct-c", &[])?;
    ensure!(
        lab.c.bundle("acct-a").join("nvidia-gpus.json").exists(),
        "no record in a GPU container's bundle"
    );
    ensure!(
        !lab.c.bundle("acct-c").join("nvidia-gpus.json").exists(),
        "a container without GPUs has a record"
    );
    let stranger = Stranger(
        Command::new("sleep")
            .arg("1000")
            .stdin(Stdio::null())
            .spawn()?,
    );
    let s = stranger.0.id();
    let gpu0 = gpu_uuid(0);
    let proc = |pid, gib: u64, sm| FakeProcess {
        uuid: gpu0.clone(),
        pid,
        used_bytes: gib * GIB,
        sm,
        mem: sm / 2,
        graphics: false,
    };
    lab.host.set_nvml_processes(&[
        proc(a, 1, 30),
        proc(b, 3, 50),
        FakeProcess {
            used_bytes: GIB / 2,
            ..proc(s, 0, 5)
        },
    ])?;

    let out = lab.cli(&["top", "--json"])?;
    ensure!(out.status.success(), "top: {out:?}");
    let top: Value = serde_json::from_str(&stdout(&out))?;
    for (id, pid, gib, sm) in [("acct-a", a, 1, 30), ("acct-b", b, 3, 50)] {
        let c = container(&top, id).with_context(|| format!("{id} missing: {top}"))?;
        ensure!(c["gpus"] == serde_json::json!([gpu0]), "{id} GPUs: {c}");
        ensure!(c["used_memory_bytes"] == gib * GIB, "{id} memory: {c}");
        ensure!(
            c["processes"][0]["pid"] == pid && c["processes"][0]["sm_util"] == sm,
            "{id} process: {c}"
        );
        ensure!(
            c["requested_by"] == "env" && c["namespace"] == lab.c.namespace.as_str(),
            "{id}: {c}"
        );
    }
    ensure!(
        container(&top, "acct-c").is_none(),
        "a container without GPUs is listed: {top}"
    );
    let un = top["unattributed"].as_array().context("unattributed")?;
    ensure!(
        un.len() == 1 && un[0]["pid"] == s && un[0]["used_memory_bytes"] == GIB / 2,
        "unattributed: {un:?}"
    );

    let other = lab.cli(&["top", "--json", "--namespace", "elsewhere"])?;
    let other: Value = serde_json::from_str(&stdout(&other))?;
    ensure!(
        other["containers"].as_array().is_some_and(Vec::is_empty),
        "namespace filter: {other}"
    );
    ensure!(
        other["unattributed"].as_array().map(Vec::len) == Some(1),
        "a filter must not turn containers into strangers: {other}"
    );

    let table = lab.cli(&["top"])?;
    let table = stdout(&table);
    ensure!(
        table.contains("acct-a")
            && table.contains("3072 MiB")
            && table.contains("not in a GPU container"),
        "{table}"
    );

    let out = lab.cli(&["metrics"])?;
    ensure!(out.status.success(), "metrics: {out:?}");
    let text = stdout(&out);
    let parsed = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))?;
    let value = |metric: &str, id: &str| {
        parsed
            .samples
            .iter()
            .find(|s| s.metric == metric && s.labels.get("container_id") == Some(id))
            .map(|s| s.value.clone())
    };
    ensure!(
        matches!(value("nvidia_shim_container_gpu_memory_used_bytes", "acct-b"), Some(prometheus_parse::Value::Gauge(v)) if v == (3 * GIB) as f64),
        "metrics for acct-b:\n{text}"
    );
    ensure!(
        value("nvidia_shim_container_gpu_assigned", "acct-a").is_some(),
        "{text}"
    );
    ensure!(
        value("nvidia_shim_container_gpu_assigned", "acct-c").is_none(),
        "{text}"
    );
    let stranger_pid = s.to_string();
    ensure!(
        parsed.samples.iter().any(
            |x| x.metric == "nvidia_shim_unattributed_gpu_memory_used_bytes"
                && x.labels.get("pid") == Some(stranger_pid.as_str())
        ),
        "{text}"
    );

    for id in ["acct-a", "acct-b", "acct-c"] {
        lab.remove(id)?;
    }
    ensure!(
        !lab.c.bundle("acct-a").exists(),
        "the bundle (and its record) outlived the container"
    );
    let out = lab.cli(&["top", "--json"])?;
    let top: Value = serde_json::from_str(&stdout(&out))?;
    ensure!(
        top["containers"].as_array().is_some_and(Vec::is_empty),
        "{top}"
    );
    lab.c.assert_clean()
}

/// Hardening round 2, findings 3 and 4: a 70 000-byte sandbox name must not hide the container
/// from `top` (its record is bounded when written), and control characters in names must not
/// reach the operator's terminal. A record too large to read is named, not skipped silently.
#[test]
fn hostile_pod_names_neither_hide_a_container_nor_reach_the_terminal() -> Result<()> {
    let mut lab = lab(1)?;
    let long = format!("io.kubernetes.cri.sandbox-name={}", "p".repeat(70_000));
    let evil = "io.kubernetes.cri.container-name=x\x1b[2J\x1b[Hhidden\r\u{202e}gnp.exe";
    let args = [
        "-d",
        "--runtime-config-path",
        &lab.config,
        "--env",
        "NVIDIA_VISIBLE_DEVICES=0",
        "--annotation",
        &long,
        "--annotation",
        "io.kubernetes.cri.sandbox-namespace=ns\x07",
        "--annotation",
        evil,
    ];
    lab.c
        .run_image(GLIBC_IMAGE, &args, "acct-evil", &["sleep", "1000"])?;
    let pid: u32 = std::fs::read_to_string(lab.c.bundle("acct-evil").join("init.pid"))?
        .trim()
        .parse()?;
    lab.host.set_nvml_processes(&[FakeProcess {
        uuid: gpu_uuid(0),
        pid,
        used_bytes: GIB,
        sm: 10,
        mem: 5,
        graphics: false,
    }])?;
    let out = lab.cli(&["top", "--json"])?;
    let top: Value = serde_json::from_str(&stdout(&out))?;
    let row = container(&top, "acct-evil").with_context(|| format!("hidden: {top}"))?;
    ensure!(row["used_memory_bytes"] == GIB, "{row}");
    ensure!(
        top["unattributed"].as_array().is_some_and(Vec::is_empty),
        "its process became a stranger: {top}"
    );

    let out = lab.cli(&["top"])?;
    let table = stdout(&out);
    ensure!(out.status.success(), "{out:?}");
    ensure!(
        !table
            .chars()
            .any(|ch| (ch.is_control() && ch != '\n') || ch == '\u{202e}'),
        "a control character reached the terminal: {table:?}"
    );
    ensure!(
        table.contains("\\u{1b}[2J") && table.contains("\\u{202e}") && table.contains("\\u{7}"),
        "the escapes are shown, not dropped: {table}"
    );

    // A record larger than readers take (written by hand; the shim no longer writes one) is
    // named on stderr and in both outputs.
    let state = tempfile::tempdir()?;
    let bogus = state.path().join("ns1/bogus");
    std::fs::create_dir_all(&bogus)?;
    std::fs::write(bogus.join("nvidia-gpus.json"), vec![b' '; 70_000])?;
    let run = |args: &[&str]| {
        Command::new(bin_dir().join("nvidia-shim"))
            .args(["--config", &lab.config])
            .args(args)
            .arg("--state-dir")
            .arg(state.path())
            .output()
    };
    let out = run(&["top"])?;
    ensure!(
        stdout(&out).contains("ns1/bogus: assignment record not used")
            && String::from_utf8_lossy(&out.stderr).contains("over the 65536-byte limit"),
        "{out:?}"
    );
    let out = run(&["top", "--json"])?;
    let top: Value = serde_json::from_str(&stdout(&out))?;
    ensure!(top["unreadable"][0]["id"] == "bogus", "json: {top}");
    lab.remove("acct-evil")?;
    lab.c.assert_clean()
}

/// Without NVML (a driver whose libnvidia-ml cannot be loaded), `top` and `metrics` still list the
/// GPU containers and the GPUs (from the records and the driver's procfs) and say why usage is
/// missing, instead of failing.
#[test]
fn top_and_metrics_without_nvml_still_list_the_containers() -> Result<()> {
    let mut lab = lab_with(2, false)?;
    lab.start_detached("acct-nonvml", &["NVIDIA_VISIBLE_DEVICES=1"])?;
    let out = lab.cli(&["top", "--json"])?;
    ensure!(out.status.success(), "top: {out:?}");
    let top: Value = serde_json::from_str(&stdout(&out))?;
    let row = container(&top, "acct-nonvml").with_context(|| format!("missing: {top}"))?;
    ensure!(
        row["gpus"] == serde_json::json!([lab.host.uuids[1]]),
        "GPUs from procfs: {row}"
    );
    ensure!(
        top["usage_unavailable"]
            .as_str()
            .is_some_and(|w| !w.is_empty())
            && top["gpus"].as_array().map(Vec::len) == Some(2),
        "{top}"
    );
    let table = stdout(&lab.cli(&["top"])?);
    ensure!(
        table.contains("GPU usage unavailable") && table.contains("acct-nonvml"),
        "{table}"
    );
    let out = lab.cli(&["metrics"])?;
    ensure!(out.status.success(), "metrics: {out:?}");
    let text = stdout(&out);
    let parsed = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))?;
    ensure!(
        parsed
            .samples
            .iter()
            .any(|s| s.metric == "nvidia_shim_gpu_usage_available"
                && matches!(s.value, prometheus_parse::Value::Gauge(v) if v == 0.0)),
        "{text}"
    );
    lab.remove("acct-nonvml")?;
    lab.c.assert_clean()
}
