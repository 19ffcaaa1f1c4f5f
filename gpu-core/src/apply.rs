//! Turning a [`Plan`] into OCI spec edits, and writing the container's loader cache in-root.

use oci_spec::runtime::{
    LinuxBuilder, LinuxDeviceBuilder, LinuxDeviceCgroupBuilder, LinuxDeviceType,
    LinuxResourcesBuilder, MountBuilder, Spec,
};

use crate::inroot::Root;
use crate::ldcache;
use crate::plan::{ImageLayout, Plan};
use crate::GpuError;

/// Decides where the image keeps its libraries, as libnvidia-container does: Debian-family
/// images use the multiarch dir, others `/usr/lib64` (or the multiarch dir when only it exists).
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
    ImageLayout { libdir, libdir32 }
}

fn build_err(e: impl std::fmt::Display) -> GpuError {
    GpuError::Refused(format!("building spec edits: {e}"))
}

/// Applies the plan's device nodes, cgroup rules, mounts, masked paths and env to `spec`.
pub fn apply_to_spec(plan: &Plan, spec: &mut Spec) -> Result<(), GpuError> {
    let mut linux = spec
        .linux()
        .clone()
        .unwrap_or_else(|| LinuxBuilder::default().build().unwrap_or_default());
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
        if !plan.no_cgroup_rule.contains(&n.path) {
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
            gids.extend(
                plan.additional_gids
                    .iter()
                    .filter(|g| !gids.contains(g))
                    .copied()
                    .collect::<Vec<_>>(),
            );
            user.set_additional_gids(Some(gids));
            process.set_user(user);
        }
        spec.set_process(Some(process));
    }
    Ok(())
}

/// Largest image loader cache we read back before merging.
const CACHE_LIMIT: u64 = 16 << 20;

/// Merges the plan's loader entries into the image's `/etc/ld.so.cache`, in-root. An unreadable
/// or symlinked cache is replaced rather than followed.
pub fn write_ld_cache(plan: &Plan, root: &Root) -> Result<(), GpuError> {
    if plan.ld_entries.is_empty() {
        return Ok(());
    }
    let existing = root
        .read("/etc/ld.so.cache", CACHE_LIMIT)
        .ok()
        .and_then(|b| ldcache::parse(&b).ok())
        .unwrap_or_default();
    let bytes = ldcache::write(&ldcache::merge(existing, &plan.ld_entries));
    root.write_atomic("/etc", "ld.so.cache", &bytes, 0o644)
        .map_err(|e| GpuError::Refused(format!("writing the container's /etc/ld.so.cache: {e}")))
}
