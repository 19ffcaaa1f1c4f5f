//! Turning a [`Plan`] into OCI spec edits, and writing the container's loader cache in-root.

use oci_spec::runtime::{
    LinuxBuilder, LinuxDeviceBuilder, LinuxDeviceCgroupBuilder, LinuxDeviceType,
    LinuxResourcesBuilder, MountBuilder, Spec,
};

use crate::error::GpuError;
use crate::inroot::{InRootError, Root};
use crate::ldcache;
use crate::plan::{CudaCompat, ImageLayout, Plan, CUDA_COMPAT_DIR};

/// Decides where the image keeps its libraries, as libnvidia-container does: Debian-family
/// images use the multiarch dir, others `/usr/lib64` (or the multiarch dir when only it exists).
#[tracing::instrument(level = "debug", skip_all)]
pub fn image_layout(root: &Root) -> ImageLayout {
    let triple = format!("{}-linux-gnu", std::env::consts::ARCH);
    let multiarch = format!("/usr/lib/{triple}");
    let debian = root.exists("/etc/debian_version");
    let libdir = if debian || (!root.exists("/usr/lib64") && root.exists(&multiarch)) {
        multiarch
    } else {
        "/usr/lib64".to_string()
    };
    let libdir32 = if debian {
        "/usr/lib/i386-linux-gnu".to_string()
    } else if root.exists("/usr/lib32") {
        "/usr/lib32".to_string()
    } else {
        "/usr/lib".to_string()
    };
    ImageLayout {
        libdir,
        libdir32,
        cuda_compat: cuda_compat(root),
    }
}

/// The image's CUDA forward-compatibility libraries: exactly one regular `libcuda.so.<version>`
/// in [`CUDA_COMPAT_DIR`], and the other regular libraries of that version beside it.
fn cuda_compat(root: &Root) -> Option<CudaCompat> {
    // Only shared libraries matter; a directory crowded with other files must not hide them.
    let files = root
        .list_files_matching(CUDA_COMPAT_DIR, 1 << 16, 256, |f| {
            f.starts_with("lib") && f.contains(".so.")
        })
        .ok()?;
    let versions: Vec<&str> = files
        .iter()
        .filter_map(|f| f.strip_prefix("libcuda.so."))
        .filter(|v| v.contains('.') && v.bytes().all(|b| b.is_ascii_digit() || b == b'.'))
        .collect();
    let [version] = versions.as_slice() else {
        return None;
    };
    let suffix = format!(".so.{version}");
    Some(CudaCompat {
        dir: CUDA_COMPAT_DIR.to_string(),
        version: version.to_string(),
        files: files
            .iter()
            .filter(|f| f.starts_with("lib") && f.ends_with(&suffix))
            .cloned()
            .collect(),
    })
}

fn build_err(e: impl std::fmt::Display) -> GpuError {
    GpuError::Refused(format!("building spec edits: {e}"))
}

/// Device nodes and their cgroup allow rules, and the masked paths, into `linux`.
fn apply_linux(plan: &Plan, linux: &mut oci_spec::runtime::Linux) -> Result<(), GpuError> {
    let mut devices = linux.devices().clone().unwrap_or_default();
    let mut resources = linux
        .resources()
        .clone()
        .unwrap_or_else(|| LinuxResourcesBuilder::default().build().unwrap_or_default());
    let mut rules = resources.devices().clone().unwrap_or_default();
    for n in &plan.devices {
        devices.retain(|d| d.path().to_string_lossy() != n.path);
        devices.push(
            LinuxDeviceBuilder::default()
                .path(&n.path)
                .typ(LinuxDeviceType::C)
                .major(n.major)
                .minor(n.minor)
                .file_mode(n.mode)
                .uid(n.uid)
                .gid(n.gid)
                .build()
                .map_err(build_err)?,
        );
        // containerd may have applied a CDI spec for the same node: one rule each.
        let present = rules.iter().any(|r| {
            r.allow()
                && r.major() == Some(n.major)
                && r.minor() == Some(n.minor)
                && r.access().as_deref() == Some("rwm")
                && matches!(r.typ(), Some(LinuxDeviceType::C))
        });
        if !plan.no_cgroup_rule.contains(&n.path) && !present {
            rules.push(
                LinuxDeviceCgroupBuilder::default()
                    .allow(true)
                    .typ(LinuxDeviceType::C)
                    .major(n.major)
                    .minor(n.minor)
                    .access("rwm")
                    .build()
                    .map_err(build_err)?,
            );
        }
    }
    linux.set_devices(Some(devices));
    resources.set_devices(Some(rules));
    linux.set_resources(Some(resources));
    let mut masked = linux.masked_paths().clone().unwrap_or_default();
    for m in &plan.masked_paths {
        if !masked.contains(m) {
            masked.push(m.clone());
        }
    }
    linux.set_masked_paths(Some(masked));
    Ok(())
}

/// The plan's env (replacing a variable of the same name) and supplementary groups.
fn apply_process(plan: &Plan, process: &mut oci_spec::runtime::Process) {
    let mut env = process.env().clone().unwrap_or_default();
    for kv in &plan.env {
        let key = kv.split('=').next().unwrap_or_default();
        env.retain(|e| e.split('=').next() != Some(key));
        env.push(kv.clone());
    }
    process.set_env(Some(env));
    if !plan.additional_gids.is_empty() {
        let mut user = process.user().clone();
        let mut gids = user.additional_gids().clone().unwrap_or_default();
        let new: Vec<u32> = plan
            .additional_gids
            .iter()
            .filter(|g| !gids.contains(g))
            .copied()
            .collect();
        gids.extend(new);
        user.set_additional_gids(Some(gids));
        process.set_user(user);
    }
}

/// Applies the plan's device nodes, cgroup rules, mounts, masked paths and env to `spec`.
#[tracing::instrument(level = "debug", skip_all)]
pub fn apply_to_spec(plan: &Plan, spec: &mut Spec) -> Result<(), GpuError> {
    if plan.devices.is_empty()
        && plan.mounts.is_empty()
        && plan.env.is_empty()
        && plan.masked_paths.is_empty()
        && plan.additional_gids.is_empty()
    {
        return Ok(());
    }
    let mut linux = spec
        .linux()
        .clone()
        .unwrap_or_else(|| LinuxBuilder::default().build().unwrap_or_default());
    apply_linux(plan, &mut linux)?;
    spec.set_linux(Some(linux));
    let mut mounts = spec.mounts().clone().unwrap_or_default();
    for m in &plan.mounts {
        mounts.retain(|x| x.destination().to_string_lossy() != m.destination);
        mounts.push(
            MountBuilder::default()
                .destination(&m.destination)
                .typ("bind")
                .source(&m.source)
                .options(m.options.clone())
                .build()
                .map_err(build_err)?,
        );
    }
    spec.set_mounts(Some(mounts));
    if let Some(mut process) = spec.process().clone() {
        apply_process(plan, &mut process);
        spec.set_process(Some(process));
    }
    Ok(())
}

/// Largest image loader cache read back before merging.
const CACHE_LIMIT: u64 = 16 << 20;

/// Merges the plan's loader entries into the image's `/etc/ld.so.cache`, in-root.
///
/// The image's cache is hostile input: one that is not a regular file, is over the size bound
/// or does not parse within [`ldcache::Limits::IMAGE`] is dropped (the new cache then holds only
/// the injected libraries) and the reason comes back as a warning. A read-only root gets no
/// cache at all, also with a warning: the libraries are still bound into the image's library
/// dir. A symlinked `/etc` or a directory at `/etc/ld.so.cache` is refused.
#[tracing::instrument(level = "debug", skip_all)]
pub fn write_ld_cache(plan: &Plan, root: &Root) -> Result<Vec<String>, GpuError> {
    let mut warnings = Vec::new();
    if plan.ld_entries.is_empty() {
        return Ok(warnings);
    }
    let existing = match root.read("/etc/ld.so.cache", CACHE_LIMIT) {
        Ok(bytes) => match ldcache::parse_bounded(&bytes, ldcache::Limits::IMAGE) {
            Ok(entries) => entries,
            Err(e) => {
                warnings.push(format!(
                    "the image's /etc/ld.so.cache was dropped ({e}); the new cache lists only the driver's libraries"
                ));
                Vec::new()
            }
        },
        Err(e) if e.is_not_found() => Vec::new(),
        // What cannot be read is replaced, never followed or opened; a path that cannot be
        // written either (a symlinked /etc, a directory) is refused by the write below.
        Err(e) => {
            warnings.push(format!(
                "the image's /etc/ld.so.cache was not read ({e}); it is replaced by one listing only the driver's libraries"
            ));
            Vec::new()
        }
    };
    let bytes = ldcache::write(&ldcache::merge(existing, &plan.ld_entries));
    match root.write_atomic("/etc", "ld.so.cache", &bytes, 0o644) {
        Ok(()) => Ok(warnings),
        Err(InRootError::ReadOnly) => {
            warnings.push(
                "the root filesystem is read-only: /etc/ld.so.cache was not updated; the driver's \
                 libraries are bound into the image's library directory"
                    .into(),
            );
            Ok(warnings)
        }
        Err(e) => Err(cache_error(e)),
    }
}

fn cache_error(e: InRootError) -> GpuError {
    GpuError::Refused(format!("writing the container's /etc/ld.so.cache: {e}"))
}

/// Creates the plan's soname and development-name links in the container's root, in-root and
/// refusing symlinks on the way. A link that cannot be made (a read-only root, a symlinked or
/// missing library directory, a directory in the way) is skipped with a warning: the library is
/// still bound under its own name and listed in the loader cache.
#[tracing::instrument(level = "debug", skip_all)]
pub fn write_links(plan: &Plan, root: &Root) -> Vec<String> {
    write_links_where(plan, root, false)
}

/// [`write_links`] for libraries someone else mounted (containerd applying a CDI spec): a
/// library directory the image links elsewhere inside its root is followed there, as runc
/// followed it to mount the libraries (see [`Root::link_dir_in_root`]).
pub fn write_links_beside_mounts(plan: &Plan, root: &Root) -> Vec<String> {
    write_links_where(plan, root, true)
}

fn write_links_where(plan: &Plan, root: &Root, dir_links_in_root: bool) -> Vec<String> {
    let read_only =
        || "the root filesystem is read-only: no soname or development-name links were created";
    let mut warnings = Vec::new();
    // One walk to each directory, however many links go into it.
    let mut dirs: Vec<&str> = plan.links.iter().map(|l| l.dir.as_str()).collect();
    dirs.sort_unstable();
    dirs.dedup();
    for dir in dirs {
        let d = match root.link_dir(dir).or_else(|e| match e {
            InRootError::Symlink(_) if dir_links_in_root => root.link_dir_in_root(dir),
            e => Err(e),
        }) {
            Ok(d) => d,
            Err(InRootError::ReadOnly) => {
                warnings.push(read_only().into());
                break;
            }
            Err(e) => {
                warnings.push(format!("links in {dir} not created: {e}"));
                continue;
            }
        };
        for l in plan.links.iter().filter(|l| l.dir == dir) {
            match d.symlink(&l.name, &l.target) {
                Ok(()) => {}
                Err(InRootError::ReadOnly) => {
                    warnings.push(read_only().into());
                    return warnings;
                }
                Err(e) => warnings.push(format!("link {}/{} not created: {e}", l.dir, l.name)),
            }
        }
    }
    warnings
}
