//! The node installer as a DaemonSet runs it: the installer image (built here, no Docker) runs
//! under one private containerd with the node's root mounted at /host and the host PID
//! namespace, against a node whose containerd (a second private one, CRI on, under a test
//! supervisor) reads its config from a temp node root. Then a CRI pod with handler `nvidia` gets
//! a GPU of a fake driver host through the installed shim; a second install changes nothing and
//! restarts nothing; uninstall puts the config back byte for byte.
//! Also by hand (no container): upgrade keeps the previous binary, a config someone else changed
//! loses only the nvidia entries, bad input fails before anything is written.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use gpu_core::fixture::{FakeHost, Layout};
use integration::cri::{Cri, HANDLER};
use integration::image::GLIBC_IMAGE;
use integration::{bin_dir, installer, processes_matching, stderr, stdout, Containerd, Version};

/// The installer image, from debug binaries stripped of debug info (a smaller import).
fn installer_image(work: &Path) -> Result<PathBuf> {
    let bins = work.join("bins");
    fs::create_dir_all(&bins)?;
    for b in installer::BINARIES {
        fs::copy(bin_dir().join(b), bins.join(b))?;
        let st = Command::new("strip")
            .arg("--strip-debug")
            .arg(bins.join(b))
            .status()?;
        ensure!(st.success(), "strip {b}");
    }
    let out = work.join("installer.tar");
    installer::build(&bins, &out)?;
    Ok(out)
}

struct Node {
    /// The node's root (what the DaemonSet sees at /host).
    root: tempfile::TempDir,
    /// The node's containerd.
    cri: Cri,
    /// The cluster side: runs the installer image.
    runner: Containerd,
    _driver: FakeHost,
}

impl Node {
    fn path(&self, p: &str) -> PathBuf {
        self.root.path().join(p.trim_start_matches('/'))
    }

    fn config(&self) -> PathBuf {
        self.path("etc/containerd/config.toml")
    }

    /// Runs `nvidia-shim <args>` in the installer image as the DaemonSet does; when the config
    /// is to change, acts as containerd's supervisor for the restart the installer causes.
    fn run_installer(&mut self, id: &str, args: &[String], expect_restart: bool) -> Result<Output> {
        let host_mount = |p: &Path| {
            format!(
                "type=bind,src={0},dst=/host{0},options=rbind:rw",
                p.display()
            )
        };
        let mut cmd = vec![
            "run".to_string(),
            "--rm".into(),
            "--runtime".into(),
            "io.containerd.runc.v2".into(),
            "--with-ns".into(),
            // hostPID: this machine hides PID 1's namespace link, the test's own is the host's.
            format!("pid:/proc/{}/ns/pid", std::process::id()),
            "--mount".into(),
            host_mount(self.root.path()),
            "--mount".into(),
            host_mount(self.cri.c.dir()),
            installer::IMAGE.into(),
            id.into(),
            "/usr/local/bin/nvidia-shim".into(),
        ];
        cmd.extend(args.iter().cloned());
        let child = self
            .runner
            .ctr_command(&cmd.iter().map(String::as_str).collect::<Vec<_>>())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        if expect_restart {
            if let Err(e) = self.cri.c.relaunch_after_exit(Duration::from_secs(60)) {
                let out = child.wait_with_output()?;
                return Err(e.context(format!("installer: {}", lines(&out))));
            }
            self.cri.reconnect()?;
        }
        Ok(child.wait_with_output()?)
    }

    fn common(&self, sub: &str) -> Vec<String> {
        let mut v = vec![
            sub.to_string(),
            "--host-root".into(),
            "/host".into(),
            "--bin-dir".into(),
            self.path("/usr/local/nvidia-shim/bin")
                .display()
                .to_string(),
            "--containerd-socket".into(),
            self.cri.c.address().display().to_string(),
        ];
        if sub == "install" {
            for (flag, p) in [
                ("--shim-config", "/etc/nvidia-shim/config.toml"),
                ("--containerd-config", "/etc/containerd/config.toml"),
                ("--cdi-spec", "/etc/cdi/nvidia.yaml"),
            ] {
                v.push(flag.into());
                v.push(self.path(p).display().to_string());
            }
        }
        v
    }
}

fn node(version: Version, work: &Path) -> Result<Node> {
    let root = tempfile::Builder::new()
        .prefix("nvnode-")
        .tempdir_in("/tmp")?;
    let driver = FakeHost::build(&root.path().join("driver"), Layout::Gke, 2)?;
    // The operator's own shim config (pointing at the fake driver): install keeps it.
    let shim_cfg = root.path().join("etc/nvidia-shim/config.toml");
    fs::create_dir_all(shim_cfg.parent().context("parent")?)?;
    let own = fs::read_to_string(driver.write_config()?)?;
    let cdi = root.path().join("etc/cdi");
    let own: String = own
        .lines()
        .map(|l| match l.starts_with("cdi_spec_dirs") {
            true => format!("cdi_spec_dirs = [{:?}]\n", cdi.display().to_string()),
            false => format!("{l}\n"),
        })
        .collect();
    fs::write(&shim_cfg, own)?;
    fs::create_dir_all(&cdi)?;
    fs::create_dir_all(root.path().join("etc/containerd"))?;
    let cri = Cri::start_node(
        version,
        &root.path().join("etc/containerd/config.toml"),
        &cdi,
    )?;
    integration::image::import_glibc(&cri.c)?;
    let runner = Containerd::start()?;
    let image = installer_image(work)?;
    runner.ctr_ok(&["images", "import", &image.display().to_string()])?;
    Ok(Node {
        root,
        cri,
        runner,
        _driver: driver,
    })
}

fn lines(o: &Output) -> String {
    format!("{}{}", stdout(o), stderr(o))
}

/// The pid and executable of the shim serving the node's pods.
fn node_shim_exe(n: &Node) -> Option<PathBuf> {
    let addr = n.cri.c.address().display().to_string();
    processes_matching(|argv| {
        argv.first()
            .is_some_and(|a| a.ends_with("containerd-shim-nvidia-v2"))
            && argv.contains(&addr)
    })
    .first()
    .and_then(|pid| fs::read_link(format!("/proc/{pid}/exe")).ok())
}

fn pod_gets_a_gpu(n: &mut Node, version: Version) -> Result<()> {
    let cfg = n.cri.pod_config("installed");
    let pod = n.cri.run_pod(&cfg, HANDLER)?;
    let env = Cri::container(
        "env",
        GLIBC_IMAGE,
        "sleep 1000",
        &[("NVIDIA_VISIBLE_DEVICES", "1")],
        &[],
    );
    let mut ids = vec![n.cri.start_container(&pod, &cfg, env)?];
    if version == Version::V2 {
        // containerd 2.x applies the CDI spec install wrote, with the node's paths in it.
        let cdi = Cri::container(
            "cdi",
            GLIBC_IMAGE,
            "sleep 1000",
            &[],
            &[("cdi.k8s.io/gpu", "nvidia.com/gpu=0")],
        );
        ids.push(n.cri.start_container(&pod, &cfg, cdi)?);
    }
    for (id, want) in ids.iter().zip(["nvidia1", "nvidia0"]) {
        let (code, out, err) = n.cri.exec(id, "ls /dev | grep -E '^nvidia[0-9]+$'")?;
        ensure!(
            code == 0 && out.trim() == want,
            "{id}: exit {code}, {out:?} {err:?}"
        );
    }
    let exe = node_shim_exe(n).context("no shim process for the node's pod")?;
    let installed = n.path("/usr/local/nvidia-shim/bin/containerd-shim-nvidia-v2");
    ensure!(
        exe == installed,
        "the pod's shim runs {} instead of the installed {}",
        exe.display(),
        installed.display()
    );
    for id in &ids {
        n.cri.stop_container(id)?;
        n.cri.remove_container(id)?;
    }
    n.cri.remove_pod(&pod)
}

fn daemonset_install_upgrade_uninstall(version: Version) -> Result<()> {
    let work = tempfile::tempdir()?;
    let mut n = node(version, work.path())?;
    let original = fs::read(n.config())?;
    let pid0 = n.cri.c.pid();

    let out = n.run_installer("install-1", &n.common("install"), true)?;
    let log = lines(&out);
    ensure!(out.status.success(), "install failed: {log}");
    for want in [
        "binaries: installed",
        "shim config: kept",
        "cdi spec: wrote",
        "containerd: restarted by SIGHUP",
    ] {
        ensure!(log.contains(want), "install log lacks {want:?}: {log}");
    }
    ensure!(n.cri.c.pid() != pid0, "containerd was not restarted");
    let cdi = fs::read_to_string(n.path("/etc/cdi/nvidia.yaml"))?;
    ensure!(
        !cdi.contains("/host/") && cdi.contains(&n.path("/driver").display().to_string()),
        "CDI spec paths are not the node's: {cdi}"
    );
    let drop_in = n.path("/etc/containerd/conf.d/99-nvidia-shim.toml");
    ensure!(
        drop_in.exists() == (version == Version::V2),
        "drop-in {} for {version:?}",
        drop_in.display()
    );
    pod_gets_a_gpu(&mut n, version)?;

    let installed = fs::read(n.config())?;
    let pid1 = n.cri.c.pid();
    let out = n.run_installer("install-2", &n.common("install"), false)?;
    let log = lines(&out);
    ensure!(
        out.status.success()
            && log.contains("binaries: unchanged")
            && log.contains("containerd: not restarted (config unchanged)"),
        "second install: {log}"
    );
    ensure!(
        fs::read(n.config())? == installed && n.cri.c.pid() == pid1,
        "a second install changed the config or restarted containerd"
    );

    let out = n.run_installer("uninstall", &n.common("uninstall"), true)?;
    let log = lines(&out);
    ensure!(
        out.status.success() && log.contains("restored"),
        "uninstall: {log}"
    );
    ensure!(
        fs::read(n.config())? == original,
        "config not restored byte for byte:\n{}",
        fs::read_to_string(n.config())?
    );
    for gone in [
        "/usr/local",
        "/etc/containerd/conf.d",
        "/etc/cdi/nvidia.yaml",
    ] {
        ensure!(!n.path(gone).exists(), "{gone} left behind after uninstall");
    }
    ensure!(
        n.path("/etc/nvidia-shim/config.toml").exists(),
        "uninstall removed the operator's own shim config"
    );
    let cfg = n.cri.pod_config("after");
    let err = n
        .cri
        .run_pod(&cfg, HANDLER)
        .err()
        .context("a pod with handler nvidia ran after uninstall")?;
    ensure!(err.to_string().contains(HANDLER), "{err}");
    n.runner.assert_clean()?;
    n.cri.c.assert_clean()
}

#[test]
fn daemonset_on_containerd_1_6_version_2_config() -> Result<()> {
    daemonset_install_upgrade_uninstall(Version::V1_6)
}

#[test]
fn daemonset_on_containerd_1_7_version_2_config() -> Result<()> {
    daemonset_install_upgrade_uninstall(Version::V1_7)
}

#[test]
fn daemonset_on_containerd_2_version_3_config() -> Result<()> {
    daemonset_install_upgrade_uninstall(Version::V2)
}

fn cli(args: &[&str]) -> Result<Output> {
    Ok(Command::new(bin_dir().join("nvidia-shim"))
        .args(args)
        .output()?)
}

/// `nvidia-shim install` by hand with node paths under `d` and no restart.
fn by_hand(d: &Path, src: &Path, sub: &str, extra: &[&str]) -> Result<Output> {
    let mut args = by_hand_args(d, src, sub);
    args.extend(["--restart".to_string(), "none".into()]);
    args.extend(extra.iter().map(|s| s.to_string()));
    cli(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

fn by_hand_args(d: &Path, src: &Path, sub: &str) -> Vec<String> {
    let p = |s: &str| d.join(s).display().to_string();
    let mut args = vec![sub.to_string(), "--bin-dir".into(), p("bin")];
    if sub == "install" {
        for (f, v) in [
            ("--source-dir", src.display().to_string()),
            ("--shim-config", p("etc/shim.toml")),
            ("--containerd-config", p("etc/containerd/config.toml")),
            ("--driver-root", "/usr/local/nvidia".into()),
        ] {
            args.push(f.into());
            args.push(v);
        }
        args.push("--no-cdi".into());
    }
    args
}

/// A node for installing by hand: a temp root, the binaries to install in `src`, and the path
/// of containerd's config (its directory made).
fn by_hand_node() -> Result<(tempfile::TempDir, PathBuf, PathBuf)> {
    let d = tempfile::tempdir()?;
    let src = d.path().join("src");
    fs::create_dir_all(&src)?;
    for b in installer::BINARIES {
        fs::copy(bin_dir().join(b), src.join(b))?;
    }
    let cfg = d.path().join("etc/containerd/config.toml");
    fs::create_dir_all(cfg.parent().context("parent")?)?;
    Ok((d, src, cfg))
}

/// `--restart systemd` by hand: `systemctl restart containerd` runs (a stand-in `systemctl`
/// first on PATH records its arguments and stops the daemon, which this test's supervisor then
/// starts again, as systemd would), and install waits for the new daemon to answer.
#[test]
fn restart_through_systemctl() -> Result<()> {
    let (d, src, cfg) = by_hand_node()?;
    fs::write(&cfg, "version = 2\n")?;
    let mut node = Containerd::start()?;
    let old = node.pid().context("containerd pid")?;
    let fake = d.path().join("fakebin");
    fs::create_dir_all(&fake)?;
    let calls = d.path().join("systemctl.calls");
    fs::write(
        fake.join("systemctl"),
        format!(
            "#!/bin/sh\necho \"$@\" >>{}\nkill -HUP {old}\n",
            calls.display()
        ),
    )?;
    Command::new("chmod")
        .arg("755")
        .arg(fake.join("systemctl"))
        .status()?;
    let mut args = by_hand_args(d.path(), &src, "install");
    let sock = node.address().display().to_string();
    args.extend(["--restart", "systemd", "--containerd-socket", &sock].map(String::from));
    let path = format!(
        "{}:{}",
        fake.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let child = Command::new(bin_dir().join("nvidia-shim"))
        .args(&args)
        .env("PATH", path)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    node.relaunch_after_exit(std::time::Duration::from_secs(60))?;
    let out = child.wait_with_output()?;
    let new = node.pid().context("containerd pid")?;
    ensure!(out.status.success(), "{out:?}");
    ensure!(
        fs::read_to_string(&calls)?.trim() == "restart containerd",
        "systemctl was called with {:?}",
        fs::read_to_string(&calls)?
    );
    ensure!(
        stdout(&out).contains(&format!("restarted by systemd: now pid {new}")),
        "{out:?}"
    );
    let out = by_hand(d.path(), &src, "uninstall", &[])?;
    ensure!(out.status.success(), "{out:?}");
    node.assert_clean()
}

#[test]
fn by_hand_upgrade_foreign_edits_and_bad_input() -> Result<()> {
    let (d, src, cfg) = by_hand_node()?;

    // Bad input: nothing is written.
    fs::write(&cfg, "version = 2\n[plugins\n")?;
    let out = by_hand(d.path(), &src, "install", &[])?;
    ensure!(
        out.status.code() == Some(1)
            && stderr(&out).contains(&format!("{} is not valid TOML", cfg.display())),
        "{out:?}"
    );
    ensure!(
        !d.path().join("bin").exists() && !d.path().join("etc/shim.toml").exists(),
        "a failed install left files"
    );

    let original = "# node config\nversion = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd]\n  default_runtime_name = \"runc\"\n";
    fs::write(&cfg, original)?;
    let out = by_hand(d.path(), &src, "install", &[])?;
    ensure!(out.status.success(), "{out:?}");
    let shim_cfg = fs::read_to_string(d.path().join("etc/shim.toml"))?;
    ensure!(
        shim_cfg.contains("root = \"/usr/local/nvidia\""),
        "{shim_cfg}"
    );
    let text = fs::read_to_string(&cfg)?;
    ensure!(
        text.contains("default_runtime_name = \"runc\"") && text.contains("runtime_path = "),
        "{text}"
    );
    ensure!(
        stdout(&out).contains("not restarted (--restart none)"),
        "{out:?}"
    );
    // doctor finds what install configured: the entry, and the binary it names (off PATH).
    let out = cli(&[
        "doctor",
        "--json",
        "--containerd-config",
        &cfg.display().to_string(),
    ])?;
    let report: serde_json::Value = serde_json::from_str(&stdout(&out))?;
    let check = |name: &str| {
        report["checks"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["check"] == name))
            .cloned()
    };
    let installed = d
        .path()
        .join("bin/containerd-shim-nvidia-v2")
        .display()
        .to_string();
    ensure!(
        check("containerd config").is_some_and(|c| c["ok"] == true)
            && check("shim binary").is_some_and(|c| c["detail"] == installed.as_str()),
        "doctor after install: {report}"
    );

    // Upgrade: a new shim binary; the running one is kept for rollback.
    let old = fs::read(src.join("containerd-shim-nvidia-v2"))?;
    let mut new = old.clone();
    new.extend_from_slice(b"upgrade");
    fs::write(src.join("containerd-shim-nvidia-v2"), &new)?;
    let out = by_hand(d.path(), &src, "install", &[])?;
    ensure!(
        out.status.success()
            && stdout(&out).contains("installed containerd-shim-nvidia-v2 into")
            && stdout(&out).contains("containerd: not restarted (config unchanged)"),
        "{out:?}"
    );
    ensure!(
        fs::read(d.path().join("bin/containerd-shim-nvidia-v2.previous"))? == old,
        "previous binary not kept"
    );

    // Someone else edits the config: uninstall takes out only the nvidia runtime.
    fs::write(&cfg, format!("{text}\n[debug]\n  level = \"debug\"\n"))?;
    let out = by_hand(d.path(), &src, "uninstall", &[])?;
    ensure!(
        out.status.success() && stdout(&out).contains("took out only the nvidia runtime"),
        "{out:?}"
    );
    let after = fs::read_to_string(&cfg)?;
    ensure!(
        !after.contains("nvidia")
            && after.contains("level = \"debug\"")
            && after.contains("default_runtime_name = \"runc\""),
        "{after}"
    );
    ensure!(
        !d.path().join("bin").exists() && !d.path().join("etc/shim.toml").exists(),
        "uninstall left files"
    );
    let out = by_hand(d.path(), &src, "uninstall", &[])?;
    ensure!(
        out.status.success() && stdout(&out).contains("nothing to do"),
        "{out:?}"
    );
    Ok(())
}
