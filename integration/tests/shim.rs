//! The shim under a real containerd and runc: lifecycle, IO, cgroups, pods and recovery.
//! Each test owns a private containerd and ends by asserting nothing of ours is left.

use std::time::Duration;

/// Needle matching the init process's events of container `id` (not its execs').
fn init_id(id: &str) -> String {
    format!("\"id\":\"{id}\"")
}

use anyhow::{ensure, Result};
use integration::{stderr, stdout, wait_pid_gone, wait_until, Containerd};

fn run_rm_reports_exit_codes_and_stdout(mut c: Containerd) -> Result<()> {
    let out = c.run(&["--rm"], "ok", &["sh", "-c", "echo hello from busybox"])?;
    ensure!(out.status.code() == Some(0), "exit 0 expected: {out:?}");
    ensure!(
        stdout(&out).contains("hello from busybox"),
        "stdout: {out:?}"
    );

    let out = c.run(&["--rm"], "three", &["sh", "-c", "echo err >&2; exit 3"])?;
    ensure!(out.status.code() == Some(3), "exit 3 expected: {out:?}");
    ensure!(stderr(&out).contains("err"), "stderr: {out:?}");

    // The container's init ignores signals sent from inside its namespace: kill it from outside.
    let events = c.events()?;
    let fg = c.spawn_run(&["--rm"], "killed", &["sleep", "1000"])?;
    events.wait_for(&["/tasks/start", "killed"], Duration::from_secs(20))?;
    c.ctr_ok(&["task", "kill", "-s", "SIGKILL", "killed"])?;
    let out = fg.wait_with_output()?;
    ensure!(out.status.code() == Some(137), "exit 137 expected: {out:?}");
    c.assert_clean()
}

fn detached_container_with_exec_then_kill_and_delete(mut c: Containerd) -> Result<()> {
    let out = c.run(&["-d"], "det", &["sleep", "1000"])?;
    ensure!(out.status.success(), "run -d: {out:?}");

    let out = c.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "e1",
        "det",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 5",
    ])?;
    ensure!(out.status.code() == Some(5), "exec exit 5: {out:?}");
    ensure!(
        stdout(&out).contains("out") && stderr(&out).contains("err"),
        "{out:?}"
    );

    let out = c.ctr_stdin(
        &[
            "task",
            "exec",
            "--exec-id",
            "e2",
            "det",
            "sh",
            "-c",
            "tr a-z A-Z",
        ],
        b"piped stdin\n",
    )?;
    ensure!(stdout(&out).contains("PIPED STDIN"), "stdin exec: {out:?}");

    let out = c.ctr_tty(&[
        "task",
        "exec",
        "-t",
        "--exec-id",
        "e3",
        "det",
        "sh",
        "-c",
        "tty; stty size",
    ])?;
    let text = stdout(&out);
    ensure!(text.contains("/dev/pts/"), "tty exec saw no pty: {text:?}");

    let ps = c.ctr_ok(&["task", "ps", "det"])?;
    ensure!(ps.lines().count() >= 2, "task ps lists the init: {ps}");

    let events = c.events()?;
    c.ctr_ok(&["task", "kill", "-s", "SIGKILL", "det"])?;
    events.wait_for(&["/tasks/exit", &init_id("det")], Duration::from_secs(20))?;
    c.ctr_ok(&["task", "delete", "det"])?;
    c.ctr_ok(&["containers", "rm", "det"])?;
    events.wait_for(&["/containers/delete"], Duration::from_secs(20))?;
    c.assert_clean()
}

fn pause_resume_metrics_and_update(mut c: Containerd) -> Result<()> {
    ensure!(c.run(&["-d"], "pr", &["sleep", "1000"])?.status.success());
    let events = c.events()?;
    c.ctr_ok(&["task", "pause", "pr"])?;
    events.wait_for(&["/tasks/paused", "pr"], Duration::from_secs(10))?;
    let ls = c.ctr_ok(&["task", "ls"])?;
    ensure!(ls.contains("PAUSED"), "task ls after pause: {ls}");
    c.ctr_ok(&["task", "resume", "pr"])?;
    events.wait_for(&["/tasks/resumed", "pr"], Duration::from_secs(10))?;
    let ls = c.ctr_ok(&["task", "ls"])?;
    ensure!(ls.contains("RUNNING"), "task ls after resume: {ls}");

    let metrics = c.ctr_ok(&["task", "metrics", "pr"])?;
    ensure!(
        metrics.contains("memory"),
        "metrics carry memory figures: {metrics}"
    );
    ensure!(metrics.contains("pids"), "metrics carry pids: {metrics}");

    // ctr 1.6 has no `task update`: call the shim's Update RPC as containerd would.
    c.shim_update("pr", br#"{"memory":{"limit":67108864}}"#)?;
    // ctr places the task in cgroup /<namespace>/<id>; read the limit on the host side.
    let v1 = format!(
        "/sys/fs/cgroup/memory/{}/pr/memory.limit_in_bytes",
        c.namespace
    );
    let v2 = format!("/sys/fs/cgroup/{}/pr/memory.max", c.namespace);
    let limit = std::fs::read_to_string(&v1).or_else(|_| std::fs::read_to_string(&v2))?;
    ensure!(
        limit.trim() == "67108864",
        "memory limit after update: {limit:?}"
    );

    c.ctr_ok(&["task", "kill", "-s", "SIGKILL", "pr"])?;
    events.wait_for(&["/tasks/exit", &init_id("pr")], Duration::from_secs(20))?;
    c.ctr_ok(&["task", "delete", "pr"])?;
    c.ctr_ok(&["containers", "rm", "pr"])?;
    c.assert_clean()
}

fn memory_limit_hit_publishes_task_oom(mut c: Containerd) -> Result<()> {
    let events = c.events()?;
    // `tail` buffers an endless line from /dev/zero until the cgroup's limit kills it.
    let out = c.run(
        &["--rm", "--memory-limit", "33554432"],
        "oom",
        &["sh", "-c", "tail /dev/zero"],
    )?;
    ensure!(
        out.status.code() == Some(137),
        "OOM-killed task exits 137: {out:?}"
    );
    events.wait_for(&["/tasks/oom"], Duration::from_secs(20))?;
    c.assert_clean()
}

fn containers_of_one_pod_share_one_shim_which_exits_after_the_last(
    mut c: Containerd,
) -> Result<()> {
    let pod = "io.kubernetes.cri.sandbox-id=pod-a";
    ensure!(c
        .run(&["-d", "--annotation", pod], "pod-a", &["sleep", "1000"])?
        .status
        .success());
    ensure!(c
        .run(
            &["-d", "--annotation", pod],
            "pod-a-app",
            &["sleep", "1000"]
        )?
        .status
        .success());
    let shims = c.shim_pids();
    ensure!(shims.len() == 1, "one shim per pod, found {shims:?}");

    // A non-tty exec must not keep the shim alive after the last delete.
    let out = c.ctr(&["task", "exec", "--exec-id", "x", "pod-a-app", "true"])?;
    ensure!(out.status.success(), "exec: {out:?}");

    let events = c.events()?;
    for id in ["pod-a-app", "pod-a"] {
        c.ctr_ok(&["task", "kill", "-s", "SIGKILL", id])?;
        events.wait_for(&["/tasks/exit", &init_id(id)], Duration::from_secs(20))?;
        c.ctr_ok(&["task", "delete", id])?;
        c.ctr_ok(&["containers", "rm", id])?;
        if id == "pod-a-app" {
            ensure!(
                c.shim_pids() == shims,
                "shim stays while a container remains"
            );
        }
    }
    wait_pid_gone(shims[0], Duration::from_secs(20))?;
    c.assert_clean()
}

fn killed_shim_is_cleaned_up_through_delete(mut c: Containerd) -> Result<()> {
    ensure!(c
        .run(&["-d"], "orphan", &["sleep", "1000"])?
        .status
        .success());
    let shims = c.shim_pids();
    ensure!(shims.len() == 1, "one shim: {shims:?}");
    let events = c.events()?;
    // SAFETY: killing the shim this test started.
    unsafe { libc::kill(shims[0], libc::SIGKILL) };
    let exit = events.wait_for(&["/tasks/exit"], Duration::from_secs(30))?;
    ensure!(exit.contains("137"), "dead shim reported as 137: {exit}");
    wait_until(Duration::from_secs(20), "the task to disappear", || {
        Ok(!c.ctr_ok(&["task", "ls"])?.contains("orphan"))
    })?;
    let sleeping = integration::processes_matching(|argv| argv == ["sleep", "1000"]);
    ensure!(
        sleeping.is_empty(),
        "container process survived: {sleeping:?}"
    );
    c.ctr_ok(&["containers", "rm", "orphan"])?;
    c.assert_clean()
}

fn container_survives_a_containerd_restart(mut c: Containerd) -> Result<()> {
    let log = c.dir().join("restart.log");
    let uri = format!("file://{}", log.display());
    let out = c.run(
        &["-d", "--log-uri", &uri],
        "survivor",
        &[
            "sh",
            "-c",
            "echo before; while [ ! -e /tmp/go ]; do sleep 0.1; done; echo after; exec sleep 1000",
        ],
    )?;
    ensure!(out.status.success(), "run: {out:?}");
    wait_until(Duration::from_secs(10), "first line", || {
        Ok(std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("before"))
    })?;
    let shims = c.shim_pids();

    c.restart_daemon()?;
    let ls = c.ctr_ok(&["task", "ls"])?;
    ensure!(
        ls.contains("survivor") && ls.contains("RUNNING"),
        "after restart: {ls}"
    );
    ensure!(c.shim_pids() == shims, "same shim after restart");

    c.ctr_ok(&[
        "task",
        "exec",
        "--exec-id",
        "go",
        "survivor",
        "touch",
        "/tmp/go",
    ])?;
    wait_until(Duration::from_secs(10), "output after restart", || {
        Ok(std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("after"))
    })?;

    let events = c.events()?;
    c.ctr_ok(&["task", "kill", "-s", "SIGKILL", "survivor"])?;
    let exit = events.wait_for(
        &["/tasks/exit", &init_id("survivor")],
        Duration::from_secs(20),
    )?;
    ensure!(exit.contains("137"), "exit status after restart: {exit}");
    c.ctr_ok(&["task", "delete", "survivor"])?;
    c.ctr_ok(&["containers", "rm", "survivor"])?;
    c.assert_clean()
}

fn bad_runtime_config_fails_create_and_leaves_nothing(mut c: Containerd) -> Result<()> {
    let cfg = c.dir().join("bad.toml");
    std::fs::write(&cfg, "[runc]\nbinary = \"runc\"\nfrobnicate = true\n")?;
    let path = cfg.display().to_string();
    let out = c.run(
        &["--rm", "--runtime-config-path", &path],
        "badcfg",
        &["true"],
    )?;
    ensure!(!out.status.success(), "create must fail: {out:?}");
    ensure!(
        stderr(&out).contains("frobnicate"),
        "error names the key: {}",
        stderr(&out)
    );
    let _ = c.ctr(&["containers", "rm", "badcfg"]);
    c.assert_clean()
}

/// Kills container `id`, waits for its init's TaskExit, then deletes the task and the container.
fn kill_and_remove(c: &Containerd, id: &str) -> Result<()> {
    let events = c.events()?;
    c.ctr_ok(&["task", "kill", "-s", "SIGKILL", id])?;
    events.wait_for(&["/tasks/exit", &init_id(id)], Duration::from_secs(20))?;
    c.ctr_ok(&["task", "delete", id])?;
    c.ctr_ok(&["containers", "rm", id])?;
    Ok(())
}

fn task_api_v3_answers_beside_v2(mut c: Containerd) -> Result<()> {
    use containerd_shim_protos::api;
    ensure!(c.run(&["-d"], "v3", &["sleep", "1000"])?.status.success());
    for service in ["containerd.task.v2.Task", "containerd.task.v3.Task"] {
        let mut req = api::StateRequest::new();
        req.id = "v3".into();
        let st: api::StateResponse = c.shim_call("v3", service, "State", &req)?;
        ensure!(
            st.status == api::Status::RUNNING.into() && st.pid > 0,
            "{service} State: {st:?}"
        );
        let mut req = api::PidsRequest::new();
        req.id = "v3".into();
        let pids: api::PidsResponse = c.shim_call("v3", service, "Pids", &req)?;
        ensure!(
            pids.processes.iter().any(|p| p.pid == st.pid),
            "{service} Pids: {pids:?}"
        );
        let mut req = api::StatsRequest::new();
        req.id = "v3".into();
        let stats: api::StatsResponse = c.shim_call("v3", service, "Stats", &req)?;
        ensure!(stats.stats.is_some(), "{service} Stats");
    }
    if c.is_v2() {
        // containerd 2.x's own v3 client.
        let out = c.ctr(&["shim", "--id", "v3", "state"])?;
        ensure!(
            out.status.success() && stdout(&out).contains("\"status\": 2"),
            "ctr shim state (task API v3): {out:?}"
        );
    }
    kill_and_remove(&c, "v3")?;
    c.assert_clean()
}

fn start_replies_in_the_form_each_containerd_understands(mut c: Containerd) -> Result<()> {
    ensure!(c.run(&["-d"], "boot", &["sleep", "1000"])?.status.success());
    let bootstrap = std::fs::read_to_string(c.bundle("boot").join("bootstrap.json")).ok();
    if c.is_v2() {
        // containerd 2.x records the JSON reply: task API v3 over ttrpc.
        let b = bootstrap.unwrap_or_default();
        ensure!(
            b.contains("\"version\":3") && b.contains("ttrpc"),
            "containerd 2.x was told v3: {b:?}"
        );
    } else {
        ensure!(bootstrap.is_none(), "containerd 1.x gets the plain address");
    }
    // Either way the task answers through containerd, and a restart reconnects.
    c.restart_daemon()?;
    let ls = c.ctr_ok(&["task", "ls"])?;
    ensure!(ls.contains("RUNNING"), "{ls}");
    kill_and_remove(&c, "boot")?;
    c.assert_clean()
}

fn exit_after_a_containerd_restart_reaches_subscribers(mut c: Containerd) -> Result<()> {
    ensure!(c
        .run(&["-d"], "restarted", &["sleep", "1000"])?
        .status
        .success());
    // Publish something before the restart so the shim holds a connection that will die.
    c.ctr_ok(&["task", "pause", "restarted"])?;
    c.ctr_ok(&["task", "resume", "restarted"])?;
    c.restart_daemon()?;
    let events = c.events()?;
    c.ctr_ok(&["task", "kill", "-s", "SIGKILL", "restarted"])?;
    events.wait_for(
        &["/tasks/exit", &init_id("restarted")],
        Duration::from_secs(20),
    )?;
    c.ctr_ok(&["task", "delete", "restarted"])?;
    c.ctr_ok(&["containers", "rm", "restarted"])?;
    c.assert_clean()
}

/// Runs every scenario under containerd 1.6 (Debian bookworm) and 2.x (Debian sid).
macro_rules! versions {
    ($($name:ident),* $(,)?) => {
        mod containerd_1_6 {
            $(#[test]
            fn $name() -> anyhow::Result<()> {
                super::$name(integration::Containerd::start()?)
            })*
        }
        mod containerd_2 {
            $(#[test]
            fn $name() -> anyhow::Result<()> {
                super::$name(integration::Containerd::start_v2()?)
            })*
        }
    };
}

versions!(
    run_rm_reports_exit_codes_and_stdout,
    detached_container_with_exec_then_kill_and_delete,
    pause_resume_metrics_and_update,
    memory_limit_hit_publishes_task_oom,
    containers_of_one_pod_share_one_shim_which_exits_after_the_last,
    killed_shim_is_cleaned_up_through_delete,
    container_survives_a_containerd_restart,
    bad_runtime_config_fails_create_and_leaves_nothing,
    task_api_v3_answers_beside_v2,
    exit_after_a_containerd_restart_reaches_subscribers,
    start_replies_in_the_form_each_containerd_understands,
);
