//! NVIDIA's CDI specs, hooks included, applied by containerd itself (1.7 and 2.x, CRI
//! `CDIDevices`; 2.x also `ctr run --device`), reaching the shim on a fake driver host. Specs have
//! the shape `nvidia-ctk cdi generate` writes (libraries mounted at `/lib64/…`, the control
//! nodes, `NVIDIA_VISIBLE_DEVICES=void`, six `createContainer` hooks calling `nvidia-cdi-hook`)
//! under the DRA driver's and the device plugin's kinds. Covered: no hook program on the node and
//! the container still looks installed; a stand-in hook that records its calls is never called
//! through our shim while containerd's Go shim calls it; a request by volume mount plus CDI for
//! the same GPU gives one of everything; the `keep` and `refuse` policies; hostile hook arguments.

use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use gpu_core::fixture::{FakeHost, Layout, LIBS, VERSION};
use integration::cri::{Cri, HANDLER};
use integration::image::{import_glibc_variant, GLIBC_IMAGE};
use integration::Version;
use k8s_cri::v1 as cri;

const DRA: &str = "k8s.gpu.nvidia.com/claim";
const PLUGIN: &str = "k8s.device-plugin.nvidia.com/gpu";
const MERGED_USR: &str = "docker.io/library/merged-usr:nvidia-shim-test";

/// Inside the container: its GPU nodes, libcuda by soname, the soname and development names as
/// files in `/lib64`, the loader cache's entry.
const CHECK: &str = "ls /dev/ | grep -E '^nvidia[0-9]+$' | tr '\\n' ' '; echo; \
    dlcheck libcuda.so.1; \
    test -f /lib64/libcuda.so.1 && echo soname-file; \
    test -f /lib64/libcuda.so && echo devname-file; \
    ldconfig -p | grep -q 'libcuda.so.1 .*/lib64/libcuda.so' && echo in-cache";

struct Lab {
    cri: Cri,
    cdi: PathBuf,
    config: String,
    base_config: String,
    hook: PathBuf,
    calls: PathBuf,
    _dir: tempfile::TempDir,
}

/// One device edit of NVIDIA's shape for GPU `index` of the fake host.
fn device(host: &FakeHost, name: &str, index: usize, hooks: &str) -> String {
    format!(
        "  - name: \"{name}\"\n    containerEdits:\n      deviceNodes:\n        - path: /dev/nvidia{index}\n          hostPath: {}\n          major: 195\n          minor: {index}\n          fileMode: 438\n          permissions: rwm\n{hooks}",
        host.dev_root.join(format!("dev/nvidia{index}")).display()
    )
}

/// A hook entry in NVIDIA's shape, `indent` spaces deep.
fn hook(indent: usize, program: &Path, args: &[String]) -> String {
    let pad = " ".repeat(indent);
    let mut s = format!(
        "{pad}- hookName: createContainer\n{pad}  path: {}\n{pad}  args:\n{pad}    - nvidia-cdi-hook\n",
        program.display()
    );
    for a in args {
        s.push_str(&format!("{pad}    - {a:?}\n"));
    }
    s.push_str(&format!("{pad}  env:\n{pad}    - NVIDIA_CTK_DEBUG=false\n"));
    s
}

/// A spec of `kind` as nvidia-ctk writes it, pointing at the fake host; `devices` in full.
fn nvidia_spec(host: &FakeHost, kind: &str, program: &Path, devices: &str) -> String {
    let mut links = vec!["create-symlinks".to_string()];
    for (prefix, soname) in LIBS {
        links.push("--link".into());
        links.push(format!("{prefix}.{VERSION}::/lib64/{soname}"));
        links.push("--link".into());
        links.push(format!("{soname}::/lib64/{prefix}"));
    }
    let hooks = [
        links,
        vec![
            "enable-cuda-compat".into(),
            format!("--host-driver-version={VERSION}"),
        ],
        vec!["update-ldcache".into(), "--folder".into(), "/lib64".into()],
        vec!["disable-device-node-modification".into()],
        vec!["update-application-profile".into()],
    ]
    .iter()
    .map(|a| hook(8, program, a))
    .collect::<String>();
    let mut mounts = String::new();
    for (prefix, _) in LIBS {
        let file = format!("{prefix}.{VERSION}");
        mounts.push_str(&format!(
            "        - hostPath: {}\n          containerPath: /lib64/{file}\n          options: [ro, nosuid, nodev, rbind, rprivate]\n",
            host.root.join("lib64").join(&file).display()
        ));
    }
    format!(
        "---\ncdiVersion: 0.5.0\nkind: {kind}\ndevices:\n{devices}containerEdits:\n    env:\n        - NVIDIA_CTK_LIBCUDA_DIR=/lib64\n        - NVIDIA_VISIBLE_DEVICES=void\n    deviceNodes:\n        - path: /dev/nvidiactl\n          hostPath: {ctl}\n          major: 195\n          minor: 255\n          fileMode: 438\n          permissions: rwm\n    hooks:\n{hooks}    mounts:\n{mounts}",
        ctl = host.dev_root.join("dev/nvidiactl").display()
    )
}

fn lab(version: Version) -> Result<Lab> {
    let dir = tempfile::Builder::new()
        .prefix("nvcdihook-")
        .tempdir_in("/tmp")?;
    let host = FakeHost::build(dir.path(), Layout::Gke, 2)?;
    let config = host.write_config()?;
    let base_config = std::fs::read_to_string(&config)?;
    let cdi = dir.path().join("cdi-containerd");
    std::fs::create_dir_all(&cdi)?;
    // Where the node would have NVIDIA's hook program; absent until a test puts a stand-in there.
    let hook_program = dir.path().join("toolkit/nvidia-cdi-hook");
    let calls = dir.path().join("hook-calls");
    let dra_devices = device(&host, "claim-0b1c-gpu0", 0, "");
    std::fs::write(
        cdi.join("dra.yaml"),
        nvidia_spec(&host, DRA, &hook_program, &dra_devices),
    )?;
    let evil = |args: Vec<String>| format!("      hooks:\n{}", hook(8, &hook_program, &args));
    let many: Vec<String> = std::iter::once("create-symlinks".to_string())
        .chain((0..10_000).flat_map(|i| ["--link".to_string(), format!("t::/l/{i}")]))
        .collect();
    let plugin_devices = [
        device(&host, "0", 0, ""),
        device(&host, "1", 1, ""),
        device(
            &host,
            "evil-dotdot",
            1,
            &evil(vec![
                "create-symlinks".into(),
                "--link".into(),
                "x::/lib64/../../../etc/cron.d/evil".into(),
            ]),
        ),
        device(&host, "evil-many", 1, &evil(many)),
        device(
            &host,
            "evil-long",
            1,
            &evil(vec![
                "create-symlinks".into(),
                "--link".into(),
                format!("t::/{}", "a".repeat(1 << 20)),
            ]),
        ),
    ]
    .concat();
    std::fs::write(
        cdi.join("plugin.yaml"),
        nvidia_spec(&host, PLUGIN, &hook_program, &plugin_devices),
    )?;
    let cri = Cri::start(version, &config, &cdi)?;
    integration::image::import_glibc(&cri.c)?;
    // A merged-/usr image: /lib64 is a link to usr/lib64, where runc puts the /lib64 mounts.
    import_glibc_variant(&cri.c, MERGED_USR, &[], |r| {
        std::fs::rename(r.join("lib64"), r.join("usr/lib64"))?;
        std::os::unix::fs::symlink("usr/lib64", r.join("lib64"))?;
        Ok(())
    })?;
    Ok(Lab {
        cri,
        cdi,
        config,
        base_config,
        hook: hook_program,
        calls,
        _dir: dir,
    })
}

impl Lab {
    fn cdi_dir(&self) -> &Path {
        &self.cdi
    }

    fn policy(&self, policy: &str) -> Result<()> {
        // The config's last section is [gpu]; the shim reads the file at each Create.
        std::fs::write(
            &self.config,
            format!("{}cdi_hooks = \"{policy}\"\n", self.base_config),
        )?;
        Ok(())
    }

    /// Puts a stand-in `nvidia-cdi-hook` on the node that records each call.
    fn install_stand_in(&self) -> Result<()> {
        std::fs::create_dir_all(self.hook.parent().context("hook dir")?)?;
        std::fs::write(
            &self.hook,
            format!(
                "#!/bin/sh\necho \"$*\" >> {}\ncat >/dev/null\nexit 0\n",
                self.calls.display()
            ),
        )?;
        std::fs::set_permissions(
            &self.hook,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )?;
        Ok(())
    }

    fn calls(&self) -> usize {
        std::fs::read_to_string(&self.calls)
            .map(|t| t.lines().count())
            .unwrap_or(0)
    }

    fn gpu_container(name: &str, image: &str, cdi: &[&str]) -> cri::ContainerConfig {
        let mut c = Cri::container(name, image, "sleep 1000", &[], &[]);
        for d in cdi {
            c.cdi_devices.push(cri::CdiDevice {
                name: d.to_string(),
            });
        }
        c
    }
}

fn names<'a>(v: &'a serde_json::Value, list: &str, key: &str) -> Vec<&'a str> {
    v[list]
        .as_array()
        .map(|a| a.iter().filter_map(|x| x[key].as_str()).collect())
        .unwrap_or_default()
}

fn nvidia_specs_without_nvidias_hooks(version: Version) -> Result<()> {
    let mut l = lab(version)?;
    let pod_config = l.cri.pod_config("cdi-pod");
    let pod = l.cri.run_pod(&pod_config, HANDLER)?;

    // (a), (d): no hook program on the node; DRA and device-plugin kinds, a plain and a
    // merged-/usr image: each starts, sees its GPU, and finds libcuda as a file under each name.
    let mut ids = Vec::new();
    for (name, image, device, node) in [
        (
            "dra",
            GLIBC_IMAGE,
            format!("{DRA}=claim-0b1c-gpu0"),
            "nvidia0 ",
        ),
        ("plugin", GLIBC_IMAGE, format!("{PLUGIN}=1"), "nvidia1 "),
        ("merged", MERGED_USR, format!("{PLUGIN}=0"), "nvidia0 "),
    ] {
        let id = l.cri.start_container(
            &pod,
            &pod_config,
            Lab::gpu_container(name, image, &[&device]),
        )?;
        let (code, out, err) = l.cri.exec(&id, CHECK)?;
        ensure!(
            code == 0
                && out.starts_with(node)
                && out.contains(&format!("libcuda.so.1 -> real libcuda.so {VERSION}"))
                && out.contains("soname-file")
                && out.contains("devname-file")
                && out.contains("in-cache"),
            "{name}: {out} {err}\n{}",
            l.cri.c.log_tail()
        );
        let spec = l.cri.spec_of(&id)?;
        ensure!(
            spec["hooks"].is_null(),
            "{name}: hooks left: {}",
            spec["hooks"]
        );
        ensure!(
            spec["linux"]["maskedPaths"]
                .as_array()
                .is_some_and(|m| m.iter().any(|p| p == "/proc/driver/nvidia/params")),
            "{name}: the driver's params are not masked: {}",
            spec["linux"]["maskedPaths"]
        );
        let record: serde_json::Value = serde_json::from_slice(&std::fs::read(
            l.cri.c.bundle(&id).join("nvidia-gpus.json"),
        )?)?;
        ensure!(
            record["requested_by"] == "containerd-cdi"
                && record["devices"] == serde_json::json!([format!("/dev/{}", node.trim())]),
            "{name}: the assignment record follows the spec's nodes: {record}"
        );
        ids.push(id);
    }
    let log = l.cri.c.log_tail();
    ensure!(
        log.contains("NVIDIA CDI hook create-symlinks replaced")
            && log.contains("NVIDIA CDI hook disable-device-node-modification replaced"),
        "one log line per replaced hook: {log}"
    );

    // (b): a stand-in hook that records its calls is never called through our shim…
    l.install_stand_in()?;
    let id = l.cri.start_container(
        &pod,
        &pod_config,
        Lab::gpu_container(
            "recorded",
            GLIBC_IMAGE,
            &[&format!("{DRA}=claim-0b1c-gpu0")],
        ),
    )?;
    ids.push(id);
    ensure!(
        l.calls() == 0,
        "our shim let runc call the hook {} times",
        l.calls()
    );
    // … while containerd's Go shim runs every one of them (the control).
    let go_config = l.cri.pod_config("go-pod");
    let go_pod = l.cri.run_pod(&go_config, "runc")?;
    let go = l.cri.start_container(
        &go_pod,
        &go_config,
        Lab::gpu_container("go", GLIBC_IMAGE, &[&format!("{DRA}=claim-0b1c-gpu0")]),
    )?;
    ensure!(
        l.calls() == 5,
        "the Go shim's runc called the hook {} times",
        l.calls()
    );
    l.cri.stop_container(&go)?;
    l.cri.remove_container(&go)?;
    l.cri.remove_pod(&go_pod)?;

    // (c): the device plugin's volume mount and CDI for the same GPU: one of everything.
    let mut both = Lab::gpu_container("both", GLIBC_IMAGE, &[&format!("{PLUGIN}=0")]);
    both.mounts.push(cri::Mount {
        container_path: "/var/run/nvidia-container-devices/0".into(),
        host_path: "/dev/null".into(),
        readonly: true,
        ..Default::default()
    });
    let id = l.cri.start_container(&pod, &pod_config, both)?;
    let (_, out, _) = l.cri.exec(&id, CHECK)?;
    ensure!(
        out.starts_with("nvidia0 ")
            && out.contains(&format!("libcuda.so.1 -> real libcuda.so {VERSION}")),
        "both: {out}"
    );
    let spec = l.cri.spec_of(&id)?;
    let own = |list: Vec<&str>| list.into_iter().map(str::to_string).collect::<Vec<_>>();
    integration::no_duplicates(
        "device nodes",
        &own(names(&spec["linux"], "devices", "path")),
    )?;
    integration::no_duplicates(
        "mount destinations",
        &own(names(&spec, "mounts", "destination")),
    )?;
    let rules: Vec<String> = spec["linux"]["resources"]["devices"]
        .as_array()
        .context("cgroup rules")?
        .iter()
        .filter(|r| r["allow"] == true && r["major"] == 195)
        .map(|r| r.to_string())
        .collect();
    integration::no_duplicates("cgroup rules", &rules)?;
    let env: Vec<String> = spec["process"]["env"]
        .as_array()
        .context("env")?
        .iter()
        .filter_map(|e| e.as_str()?.split('=').next().map(str::to_string))
        .collect();
    integration::no_duplicates("env variables", &env)?;
    ids.push(id);

    // (e): `keep` leaves NVIDIA's hooks to runc; `refuse` names the hook and starts nothing.
    l.policy("keep")?;
    let before = l.calls();
    let id = l.cri.start_container(
        &pod,
        &pod_config,
        Lab::gpu_container("kept", GLIBC_IMAGE, &[&format!("{PLUGIN}=0")]),
    )?;
    ensure!(
        l.calls() == before + 5,
        "keep: {} calls",
        l.calls() - before
    );
    ids.push(id);
    l.policy("refuse")?;
    let err = l
        .cri
        .start_container(
            &pod,
            &pod_config,
            Lab::gpu_container("refused", GLIBC_IMAGE, &[&format!("{PLUGIN}=0")]),
        )
        .map(|_| ())
        .unwrap_err()
        .to_string();
    ensure!(
        err.contains("nvidia-cdi-hook") && err.contains("refuse"),
        "refuse: {err}"
    );
    l.policy("replace")?;

    // (f): hostile arguments are refused, naming what was wrong; nothing is followed.
    for (device, want) in [
        ("evil-dotdot", "without `..`"),
        ("evil-many", "10000 links"),
        ("evil-long", "over the 1048576-byte limit"),
    ] {
        let err = l
            .cri
            .start_container(
                &pod,
                &pod_config,
                Lab::gpu_container(device, GLIBC_IMAGE, &[&format!("{PLUGIN}={device}")]),
            )
            .map(|_| ())
            .unwrap_err()
            .to_string();
        ensure!(
            err.contains(want) && err.len() < 16 << 10,
            "{device}: {}",
            gpu_core::echo::clipped(&err, 2048)
        );
    }
    ensure!(
        !Path::new("/etc/cron.d/evil").exists(),
        "a hostile link path reached the host"
    );
    ensure!(l.calls() == before + 5, "a refused container ran a hook");

    if version == Version::V2 {
        ctr_device_route(&l)?;
    }
    l.cri.remove_pod(&pod)?;
    l.cri.assert_clean(&ids)
}

/// Removes a file when dropped.
struct Removed(PathBuf);

impl Drop for Removed {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// (d) for `ctr` 2.x, which applies CDI itself from the system's spec directories: the DRA spec,
/// under a kind of this test's own, through `ctr run --device KIND=NAME`.
fn ctr_device_route(l: &Lab) -> Result<()> {
    let kind = format!("k8s.gpu.nvidia.com/nvidiashimtest{}", std::process::id());
    let text = std::fs::read_to_string(l.cdi_dir().join("dra.yaml"))?
        .replace(&format!("kind: {DRA}"), &format!("kind: {kind}"));
    std::fs::create_dir_all("/var/run/cdi")?;
    let file = Removed(PathBuf::from(format!(
        "/var/run/cdi/nvidia-shim-test-{}.yaml",
        std::process::id()
    )));
    std::fs::write(&file.0, text)?;
    let id = format!("ctr-device-{}", std::process::id());
    let out = l.cri.c.ctr(&[
        "run",
        "--rm",
        "--runtime",
        integration::RUNTIME,
        "--runtime-config-path",
        &l.config,
        "--device",
        &format!("{kind}=claim-0b1c-gpu0"),
        GLIBC_IMAGE,
        &id,
        "sh",
        "-c",
        CHECK,
    ])?;
    let text = integration::stdout(&out);
    ensure!(
        out.status.success()
            && text.starts_with("nvidia0 ")
            && text.contains("soname-file")
            && text.contains("in-cache"),
        "ctr --device: {out:?}"
    );
    ensure!(
        l.calls() == 10,
        "a hook ran through ctr --device: {}",
        l.calls()
    );
    Ok(())
}

#[test]
fn nvidia_specs_without_nvidias_hooks_containerd_1_7() -> Result<()> {
    nvidia_specs_without_nvidias_hooks(Version::V1_7)
}

#[test]
fn nvidia_specs_without_nvidias_hooks_containerd_2() -> Result<()> {
    nvidia_specs_without_nvidias_hooks(Version::V2)
}
