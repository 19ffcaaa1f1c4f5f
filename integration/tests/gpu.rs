//! GPU injection under a real containerd and runc, on a fake driver host (GKE layout): device
//! nodes, files at the right paths, the loader resolving them past a stale stub, and refusals.

use anyhow::{ensure, Result};
use gpu_core::fixture::{FakeHost, Layout, VERSION};
use integration::image::{import_glibc, GLIBC_IMAGE};
use integration::{stderr, stdout, Containerd};

struct Gpu {
    c: Containerd,
    _host_dir: tempfile::TempDir,
    host: FakeHost,
    config: String,
}

fn setup() -> Result<Gpu> {
    let c = Containerd::start()?;
    import_glibc(&c)?;
    let host_dir = tempfile::Builder::new()
        .prefix("nvfake-")
        .tempdir_in("/tmp")?;
    let host = FakeHost::build(host_dir.path(), Layout::Gke, 2)?;
    let config = host.write_config()?;
    Ok(Gpu {
        c,
        _host_dir: host_dir,
        host,
        config,
    })
}

impl Gpu {
    fn run(
        &mut self,
        id: &str,
        env: &[&str],
        extra: &[&str],
        script: &str,
    ) -> Result<std::process::Output> {
        let mut opts: Vec<String> = vec![
            "--rm".into(),
            "--runtime-config-path".into(),
            self.config.clone(),
        ];
        for e in env {
            opts.push("--env".into());
            opts.push(e.to_string());
        }
        opts.extend(extra.iter().map(|s| s.to_string()));
        let opts: Vec<&str> = opts.iter().map(|s| s.as_str()).collect();
        self.c
            .run_image(GLIBC_IMAGE, &opts, id, &["sh", "-c", script])
    }
}

#[test]
fn gpu_container_gets_nodes_files_and_a_working_loader() -> Result<()> {
    let mut g = setup()?;
    let out = g.run(
        "gpu1",
        &["NVIDIA_VISIBLE_DEVICES=1"],
        &[],
        "ls -l /dev/nvidia*; ls /usr/lib/x86_64-linux-gnu/; dlcheck libcuda.so.1 libnvidia-ml.so.1 libcuda.so; \
         ldconfig -p | grep -E 'libcuda|libnvidia-ml'; nvidia-smi; ls /lib/firmware/nvidia/*/; \
         grep -E ' /usr/(lib|bin)/' /proc/self/mountinfo | head -3; \
         d=$(ldconfig -p | grep 'libcuda.so.1 ' | sed 's/.*=> //' | xargs dirname); \
         [ -e $d/libcuda.so.1 ] && [ -e $d/libcuda.so ] && echo triton-check-ok; \
         dlcheck $d/libcuda.so $d/libnvidia-ml.so.1; \
         ldconfig && echo relinked && dlcheck libcuda.so.1",
    )?;
    let text = stdout(&out);
    if std::env::var_os("SHOW").is_some() {
        println!("{text}");
    }
    ensure!(
        out.status.success(),
        "run failed: {out:?}\n{}",
        g.c.log_tail()
    );
    ensure!(
        text.contains("/dev/nvidia1") && text.contains("195,   1"),
        "GPU 1 node: {text}"
    );
    ensure!(
        !text.contains("/dev/nvidia0"),
        "GPU 0 must not be visible: {text}"
    );
    ensure!(text.contains("/dev/nvidiactl"), "control node: {text}");
    ensure!(
        text.contains(&format!("libcuda.so.1 -> real libcuda.so {VERSION}")),
        "the real libcuda wins over the image's stale stub: {text}"
    );
    ensure!(
        text.contains(&format!(
            "libnvidia-ml.so.1 -> real libnvidia-ml.so {VERSION}"
        )),
        "{text}"
    );
    ensure!(
        text.contains(&format!("libcuda.so -> real libcuda.so {VERSION}")),
        "{text}"
    );
    ensure!(
        text.contains(&format!(
            "libcuda.so.1 (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/libcuda.so.{VERSION}"
        )),
        "ldconfig -p lists the injected library: {text}"
    );
    ensure!(
        text.contains(&format!("fake nvidia-smi {VERSION}")),
        "{text}"
    );
    ensure!(text.contains("gsp_ga10x.bin"), "firmware: {text}");
    ensure!(
        text.contains(" ro,nosuid,nodev"),
        "read-only, nosuid, nodev binds: {text}"
    );
    ensure!(
        text.contains("triton-check-ok"),
        "the soname and development name are files in the cache's directory: {text}"
    );
    ensure!(
        text.contains(&format!(
            "/usr/lib/x86_64-linux-gnu/libcuda.so -> real libcuda.so {VERSION}"
        )) && text.contains(&format!(
            "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1 -> real libnvidia-ml.so {VERSION}"
        )),
        "dlopen of the full path works for both names: {text}"
    );
    let after = text.split("relinked").nth(1).unwrap_or_default();
    ensure!(
        after.contains(&format!("libcuda.so.1 -> real libcuda.so {VERSION}")),
        "a later ldconfig in the container keeps the driver: {text}"
    );
    g.c.assert_clean()
}

#[test]
fn no_request_no_gpu_and_sandbox_never() -> Result<()> {
    let mut g = setup()?;
    let script = "ls /dev/nvidia* 2>&1; dlcheck libcuda.so.1";
    let out = g.run("plain", &[], &[], script)?;
    let text = stdout(&out);
    ensure!(
        text.contains("No such file"),
        "no device nodes without a request: {text}"
    );
    ensure!(
        text.contains("libcuda.so.1 -> stale stub"),
        "image untouched: {text}"
    );

    let out = g.run(
        "pause",
        &["NVIDIA_VISIBLE_DEVICES=all"],
        &["--annotation", "io.kubernetes.cri.container-type=sandbox"],
        script,
    )?;
    ensure!(
        stdout(&out).contains("No such file"),
        "sandbox gets nothing: {out:?}"
    );

    for v in ["void", "", "none"] {
        let out = g.run(
            &format!("v-{}", if v.is_empty() { "empty" } else { v }),
            &[&format!("NVIDIA_VISIBLE_DEVICES={v}")],
            &[],
            "ls /dev/ | grep nvidia | tr '\\n' ' '",
        )?;
        let text = stdout(&out);
        if v == "none" {
            ensure!(
                text.contains("nvidiactl")
                    && !text.contains("nvidia0")
                    && !text.contains("nvidia1"),
                "none: driver, no GPU: {text}"
            );
        } else {
            ensure!(!text.contains("nvidia"), "{v:?}: no injection: {text}");
        }
    }
    g.c.assert_clean()
}

#[test]
fn capabilities_and_uuid_selection() -> Result<()> {
    let mut g = setup()?;
    let uuid = g.host.uuids[0].clone();
    let out = g.run(
        "util",
        &[&format!("NVIDIA_VISIBLE_DEVICES={uuid}"), "NVIDIA_DRIVER_CAPABILITIES=utility"],
        &[],
        "ls /dev/nvidia*; ls /usr/lib/x86_64-linux-gnu/ | tr '\\n' ' '; echo; dlcheck libnvidia-ml.so.1",
    )?;
    let text = stdout(&out);
    ensure!(out.status.success(), "{out:?}");
    ensure!(
        text.contains("/dev/nvidia0") && !text.contains("/dev/nvidia1"),
        "{text}"
    );
    ensure!(
        text.contains("libnvidia-ml.so.") && !text.contains("libcuda.so."),
        "utility only: {text}"
    );
    g.c.assert_clean()
}

#[test]
fn refusals_name_the_problem_and_leave_nothing() -> Result<()> {
    let mut g = setup()?;
    let out = g.run("bad-dev", &["NVIDIA_VISIBLE_DEVICES=7"], &[], "true")?;
    ensure!(!out.status.success(), "{out:?}");
    let err = stderr(&out);
    ensure!(
        err.contains("nvidia: unknown device \"7\" (this host has: 0, 1, GPU-"),
        "{err}"
    );
    let _ = g.c.ctr(&["containers", "rm", "bad-dev"]);

    let out = g.run(
        "bad-req",
        &[
            "NVIDIA_VISIBLE_DEVICES=all",
            "NVIDIA_REQUIRE_CUDA=cuda>=99.0",
        ],
        &[],
        "true",
    )?;
    ensure!(!out.status.success(), "{out:?}");
    let err = stderr(&out);
    ensure!(
        err.contains("cuda>=99.0") && err.contains("CUDA 13.0"),
        "{err}"
    );
    let _ = g.c.ctr(&["containers", "rm", "bad-req"]);

    let out = g.run(
        "bad-cap",
        &[
            "NVIDIA_VISIBLE_DEVICES=0",
            "NVIDIA_DRIVER_CAPABILITIES=compute,warp",
        ],
        &[],
        "true",
    )?;
    ensure!(
        stderr(&out).contains("NVIDIA_DRIVER_CAPABILITIES"),
        "{out:?}"
    );
    let _ = g.c.ctr(&["containers", "rm", "bad-cap"]);
    g.c.assert_clean()
}

#[test]
fn generated_cdi_spec_injects_through_an_annotation() -> Result<()> {
    let mut g = setup()?;
    let cdi = g.host.dir.join("cdi");
    std::fs::create_dir_all(&cdi)?;
    let out = std::process::Command::new(integration::bin_dir().join("nvidia-shim"))
        .args(["--config", &g.config, "cdi", "generate", "--output"])
        .arg(cdi.join("nvidia.yaml"))
        .output()?;
    ensure!(out.status.success(), "{out:?}");
    let out = g.run(
        "cdi1",
        &[],
        &["--annotation", "cdi.k8s.io/test=nvidia.com/gpu=1"],
        "ls /dev/nvidia*; dlcheck libcuda.so.1",
    )?;
    let text = stdout(&out);
    ensure!(out.status.success(), "{out:?}");
    ensure!(
        text.contains("/dev/nvidia1") && !text.contains("/dev/nvidia0"),
        "{text}"
    );
    ensure!(
        text.contains(&format!("libcuda.so.1 -> real libcuda.so {VERSION}")),
        "{text}"
    );

    let out = g.run(
        "cdi2",
        &[],
        &["--annotation", "cdi.k8s.io/test=nvidia.com/gpu=5"],
        "true",
    )?;
    ensure!(
        stderr(&out).contains("unresolvable CDI devices nvidia.com/gpu=5"),
        "{out:?}"
    );
    let _ = g.c.ctr(&["containers", "rm", "cdi2"]);
    g.c.assert_clean()
}

#[test]
fn lib64_image_and_a_baked_in_driver_get_every_name_in_their_own_dir() -> Result<()> {
    let mut g = setup()?;
    // RHEL/UBI layout: glibc in /usr/lib64 (/lib64 a link to it), no multiarch dir, no
    // /etc/debian_version; and an old driver baked into the image under the soname.
    integration::image::import_glibc_variant(&g.c, "docker.io/library/lib64:test", &[], |r| {
        let triple = format!("{}-linux-gnu", std::env::consts::ARCH);
        std::fs::create_dir_all(r.join("usr/lib64"))?;
        for dir in [format!("lib/{triple}"), format!("usr/lib/{triple}")] {
            for e in std::fs::read_dir(r.join(&dir))? {
                let e = e?;
                std::fs::rename(e.path(), r.join("usr/lib64").join(e.file_name()))?;
            }
            std::fs::remove_dir(r.join(&dir))?;
        }
        std::fs::remove_dir_all(r.join("lib64"))?;
        std::os::unix::fs::symlink("usr/lib64", r.join("lib64"))?;
        std::fs::remove_file(r.join("etc/debian_version"))?;
        gpu_core::fixture::build_lib(
            &r.join("usr/lib64/libcuda.so.1"),
            "libcuda.so.1",
            "baked-in old driver",
        )?;
        std::fs::write(r.join("etc/ld.so.conf"), "/usr/lib64\n")?;
        let st = std::process::Command::new("/sbin/ldconfig")
            .arg("-r")
            .arg(r)
            .status()?;
        ensure!(st.success(), "ldconfig -r");
        Ok(())
    })?;
    let out = g.c.run_image(
        "docker.io/library/lib64:test",
        &["--rm", "--runtime-config-path", &g.config.clone(), "--env", "NVIDIA_VISIBLE_DEVICES=0"],
        "lib64",
        &[
            "sh",
            "-c",
            "ls -l /usr/lib64/ | grep -E 'libcuda|libnvidia-ml'; d=$(ldconfig -p | grep 'libcuda.so.1 ' | sed 's/.*=> //' | xargs dirname); \
             echo dir=$d; dlcheck libcuda.so.1 $d/libcuda.so.1 $d/libcuda.so; ls /usr/lib/ | grep -c linux-gnu; true",
        ],
    )?;
    let text = stdout(&out);
    ensure!(out.status.success(), "{out:?}\n{}", g.c.log_tail());
    ensure!(text.contains("dir=/usr/lib64"), "{text}");
    ensure!(
        text.contains(&format!("libcuda.so.1 -> libcuda.so.{VERSION}"))
            && text.contains("libcuda.so -> libcuda.so.1"),
        "soname and development-name links in /usr/lib64: {text}"
    );
    ensure!(
        !text.contains("baked-in old driver")
            && text
                .matches(&format!("-> real libcuda.so {VERSION}"))
                .count()
                == 3,
        "the image's own libcuda.so.1 is shadowed under every name: {text}"
    );
    ensure!(
        text.trim_end().ends_with("\n0"),
        "no multiarch dir was made: {text}"
    );
    g.c.assert_clean()
}
