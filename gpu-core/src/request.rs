//! What a container asks for, read from its OCI spec: `NVIDIA_*` env, the device plugin's
//! volume-mount list and CDI annotations. Pure: no host access.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use oci_spec::runtime::Spec;

use crate::config::GpuConfig;
use crate::echo::{clipped, quoted, ECHO_LIMIT};
use crate::error::GpuError;
use crate::inventory::Capability;
use crate::{require, CONTAINER_TYPE_ANNOTATION};

/// Directory under which the device plugin's `volume-mounts` strategy lists device ids.
pub const DEVICE_LIST_DIR: &str = "/var/run/nvidia-container-devices";

/// Which GPUs were asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Devices {
    /// `none`: the driver (libraries, utilities, control nodes) but no GPU.
    NoGpus,
    /// `all`.
    All,
    /// Explicit ids: indexes, UUIDs, MIG forms, PCI bus ids.
    List(Vec<String>),
}

/// A parsed requirement: the variable it came from, its text and its expression.
#[derive(Clone, Debug)]
pub struct Requirement {
    /// e.g. `NVIDIA_REQUIRE_CUDA`.
    pub var: String,
    /// The expression as written.
    pub text: String,
    /// Parsed.
    pub expr: require::Expr,
}

/// A container's GPU request.
#[derive(Clone, Debug)]
pub struct Request {
    /// GPUs from env or volume mounts; `None` when only CDI devices were asked for.
    pub devices: Option<Devices>,
    /// Driver capabilities.
    pub capabilities: BTreeSet<Capability>,
    /// `NVIDIA_REQUIRE_*` (empty when disabled).
    pub requirements: Vec<Requirement>,
    /// `NVIDIA_MIG_CONFIG_DEVICES=all` (privileged only).
    pub mig_config: bool,
    /// `NVIDIA_MIG_MONITOR_DEVICES=all` (privileged only).
    pub mig_monitor: bool,
    /// Fully-qualified CDI device names from annotations and volume mounts.
    pub cdi_devices: Vec<String>,
    /// Where the device list came from, for logs.
    pub source: &'static str,
    /// Whether the image's CUDA forward-compat libraries may be used (config
    /// `gpu.cuda_forward_compat`, turned off per container by `NVIDIA_DISABLE_CUDA_COMPAT=true`).
    pub cuda_compat: bool,
    /// Device classes beyond GPUs that were asked for.
    pub classes: Classes,
}

/// IMEX channels asked for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Imex {
    /// None (`none`, unset).
    #[default]
    None,
    /// Every channel the host has.
    All,
    /// These channel numbers.
    List(Vec<u32>),
}

/// The device classes NVIDIA's toolkit serves by environment, asked for with a GPU.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Classes {
    /// `NVIDIA_IMEX_CHANNELS` and the volume-mount list's `imex/<id>` entries.
    pub imex: Imex,
    /// `NVIDIA_MOFED=enabled`: the InfiniBand verbs nodes.
    pub mofed: bool,
    /// `NVIDIA_GDS=enabled`: the nvidia-fs nodes.
    pub gds: bool,
    /// `NVIDIA_NVSWITCH=enabled`: the NVSwitch nodes.
    pub nvswitch: bool,
    /// `NVIDIA_GDRCOPY=enabled`: `/dev/gdrdrv`.
    pub gdrcopy: bool,
}

/// An IMEX channel number as written in a request.
fn channel(what: &str, id: &str) -> Result<u32, GpuError> {
    id.parse().map_err(|_| {
        GpuError::Refused(format!(
            "{what}: {} is not an IMEX channel number",
            quoted(id)
        ))
    })
}

/// The classes from the environment plus the channels the volume-mount list named.
fn classes(
    env: &BTreeMap<String, String>,
    cfg: &GpuConfig,
    mount_channels: Vec<u32>,
) -> Result<Classes, GpuError> {
    let enabled = |k: &str| {
        env.get(k)
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("enabled"))
    };
    let mut imex = Imex::None;
    match env.get("NVIDIA_IMEX_CHANNELS") {
        Some(_) if cfg.ignore_imex_channel_requests => tracing::info!(
            "ignoring NVIDIA_IMEX_CHANNELS (gpu.ignore_imex_channel_requests = true)"
        ),
        Some(v) => {
            let ids = bounded_list("NVIDIA_IMEX_CHANNELS", v)?;
            if ids.iter().any(|i| i.eq_ignore_ascii_case("all")) {
                imex = Imex::All;
            } else {
                let mut list = Vec::new();
                for id in ids.iter().filter(|i| *i != "none" && *i != "void") {
                    list.push(channel("NVIDIA_IMEX_CHANNELS", id)?);
                }
                if !list.is_empty() {
                    imex = Imex::List(list);
                }
            }
        }
        None => {}
    }
    if !mount_channels.is_empty() {
        imex = match imex {
            Imex::All => Imex::All,
            Imex::None => Imex::List(mount_channels),
            Imex::List(mut l) => {
                l.extend(mount_channels);
                Imex::List(l)
            }
        };
    }
    if let Imex::List(l) = &mut imex {
        l.sort_unstable();
        l.dedup();
    }
    Ok(Classes {
        imex,
        mofed: enabled("NVIDIA_MOFED"),
        gds: enabled("NVIDIA_GDS"),
        nvswitch: enabled("NVIDIA_NVSWITCH"),
        gdrcopy: enabled("NVIDIA_GDRCOPY"),
    })
}

fn env_map(spec: &Spec) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    if let Some(env) = spec.process().as_ref().and_then(|p| p.env().as_ref()) {
        for kv in env {
            if let Some((k, v)) = kv.split_once('=') {
                m.insert(k.to_string(), v.to_string());
            }
        }
    }
    m
}

/// CAP_SYS_ADMIN in the bounding set: what "privileged" means for device requests.
pub fn is_privileged(spec: &Spec) -> bool {
    spec.process()
        .as_ref()
        .and_then(|p| p.capabilities().as_ref())
        .and_then(|c| c.bounding().as_ref())
        .is_some_and(|b| b.contains(&oci_spec::runtime::Capability::SysAdmin))
}

/// Whether the spec already carries NVIDIA device nodes that no request of ours put there
/// (containerd applied a CDI spec itself), so only the loader's part remains to be done.
pub fn has_nvidia_devices(spec: &Spec) -> bool {
    !is_sandbox(spec)
        && spec
            .linux()
            .as_ref()
            .and_then(|l| l.devices().as_ref())
            .is_some_and(|d| {
                d.iter()
                    .any(|n| n.path().to_string_lossy().starts_with("/dev/nvidia"))
            })
}

/// Whether the spec is a CRI pod sandbox (pause) container.
pub fn is_sandbox(spec: &Spec) -> bool {
    spec.annotations()
        .as_ref()
        .and_then(|a| a.get(CONTAINER_TYPE_ANNOTATION))
        .is_some_and(|t| t == "sandbox")
}

fn split_list(v: &str) -> Vec<String> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// Longest device list accepted (env value or annotation), and most ids in it: a node has at
/// most a few hundred GPUs and MIG devices, each id under 64 bytes.
pub const MAX_LIST_BYTES: usize = 64 << 10;
/// Most ids in one device list.
pub const MAX_LIST_IDS: usize = 1024;

/// Splits a device list after checking its size; `what` names where it came from.
fn bounded_list(what: &str, v: &str) -> Result<Vec<String>, GpuError> {
    if v.len() > MAX_LIST_BYTES {
        return Err(GpuError::Refused(format!(
            "{what} is {} bytes long, over the {MAX_LIST_BYTES}-byte limit: {}",
            v.len(),
            quoted(v)
        )));
    }
    let ids = split_list(v);
    if ids.len() > MAX_LIST_IDS {
        return Err(GpuError::Refused(format!(
            "{what} names {} devices, over the limit of {MAX_LIST_IDS}",
            ids.len()
        )));
    }
    Ok(ids)
}

fn devices_from_ids(ids: Vec<String>) -> Option<Devices> {
    if ids.is_empty() || ids.iter().any(|i| i == "void") {
        return None;
    }
    if ids.iter().any(|i| i.eq_ignore_ascii_case("all")) {
        return Some(Devices::All);
    }
    let list: Vec<String> = ids.into_iter().filter(|i| i != "none").collect();
    if list.is_empty() {
        Some(Devices::NoGpus)
    } else {
        Some(Devices::List(list))
    }
}

/// Validates a fully-qualified CDI name `vendor/class=name`.
pub fn check_cdi_name(name: &str) -> Result<(), String> {
    let (kind, dev) = name.split_once('=').ok_or_else(|| {
        format!(
            "{} is not a qualified CDI name (vendor/class=device)",
            quoted(name)
        )
    })?;
    let (vendor, class) = kind.split_once('/').ok_or_else(|| {
        format!(
            "{}: kind {} is not vendor/class",
            quoted(name),
            quoted(kind)
        )
    })?;
    let word = |s: &str, extra: &[char]| {
        !s.is_empty()
            && s.starts_with(|c: char| c.is_ascii_alphanumeric())
            && s.ends_with(|c: char| c.is_ascii_alphanumeric())
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c) || extra.contains(&c))
    };
    if !word(vendor, &[]) || !word(class, &[]) || !word(dev, &[':']) {
        return Err(format!("{} is not a valid CDI device name", quoted(name)));
    }
    Ok(())
}

fn parse_bool(var: &str, v: &str) -> Result<bool, GpuError> {
    match v {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" | "" => Ok(false),
        _ => Err(GpuError::Refused(format!(
            "{var}={} is not a boolean (use true or false)",
            quoted(v)
        ))),
    }
}

/// CDI device names from the annotations whose keys carry a CDI prefix, in key order.
fn cdi_from_annotations(
    spec: &Spec,
    cfg: &GpuConfig,
    out: &mut Vec<String>,
) -> Result<(), GpuError> {
    let Some(ann) = spec.annotations() else {
        return Ok(());
    };
    let mut keys: Vec<&String> = ann
        .keys()
        .filter(|k| cfg.cdi_annotation_prefixes.iter().any(|p| k.starts_with(p)))
        .collect();
    keys.sort();
    for k in keys {
        for name in bounded_list(&format!("annotation {}", clipped(k, ECHO_LIMIT)), &ann[k])? {
            check_cdi_name(&name).map_err(|e| {
                GpuError::Refused(format!("annotation {}: {e}", clipped(k, ECHO_LIMIT)))
            })?;
            out.push(name);
        }
    }
    Ok(())
}

/// The device plugin's volume-mount list (`/dev/null` mounted at `<DEVICE_LIST_DIR>/<id>`): device
/// ids returned, CDI names (`cdi/<vendor>/<class>/<dev>`) added to `cdi`, IMEX channels
/// (`imex/<id>`) to `imex`.
fn device_list_mounts(
    spec: &Spec,
    cdi: &mut Vec<String>,
    imex: &mut Vec<u32>,
) -> Result<Vec<String>, GpuError> {
    let mut ids = Vec::new();
    let prefix = format!("{DEVICE_LIST_DIR}/");
    for m in spec.mounts().iter().flatten() {
        if m.source().as_deref() != Some(Path::new("/dev/null")) {
            continue;
        }
        let dest = m.destination().to_string_lossy();
        let Some(id) = dest.strip_prefix(&prefix) else {
            continue;
        };
        if let Some(rest) = id.strip_prefix("cdi/") {
            // cdi/<vendor>/<class>/<dev> or cdi/<vendor>/<class>=<dev>
            let name = match rest.split('/').collect::<Vec<_>>().as_slice() {
                [v, c, d] => format!("{v}/{c}={d}"),
                _ => rest.to_string(),
            };
            if check_cdi_name(&name).is_ok() {
                cdi.push(name);
            } else {
                tracing::warn!(
                    "ignoring device-list mount {}: not a CDI name",
                    clipped(&dest, ECHO_LIMIT)
                );
            }
        } else if let Some(ch) = id.strip_prefix("imex/") {
            if imex.len() == MAX_LIST_IDS {
                return Err(GpuError::Refused(format!(
                    "the device-list mounts name more than {MAX_LIST_IDS} IMEX channels"
                )));
            }
            imex.push(channel("device-list mount", ch)?);
        } else if !id.is_empty() && !ids.contains(&id.to_string()) {
            if ids.len() == MAX_LIST_IDS {
                return Err(GpuError::Refused(format!(
                    "the device-list mounts name more than {MAX_LIST_IDS} devices"
                )));
            }
            ids.push(clipped(id, ECHO_LIMIT));
        }
    }
    Ok(ids)
}

/// GPUs from `NVIDIA_VISIBLE_DEVICES`, unless the config refuses it to unprivileged containers.
fn env_devices(
    env: &BTreeMap<String, String>,
    privileged: bool,
    cfg: &GpuConfig,
) -> Result<Option<Devices>, GpuError> {
    match env.get("NVIDIA_VISIBLE_DEVICES") {
        // The volume-mounts strategy sets the env to the directory itself: not a list.
        Some(v) if v.trim() == DEVICE_LIST_DIR => Ok(None),
        Some(v) => {
            let d = devices_from_ids(bounded_list("NVIDIA_VISIBLE_DEVICES", v)?);
            if d.is_some() && !privileged && !cfg.accept_env_unprivileged {
                tracing::warn!(
                    "ignoring NVIDIA_VISIBLE_DEVICES in an unprivileged container \
                     (gpu.accept_env_unprivileged = false)"
                );
                return Ok(None);
            }
            Ok(d)
        }
        None => Ok(None),
    }
}

/// `NVIDIA_DRIVER_CAPABILITIES` (every capability for a legacy CUDA image without it).
fn capabilities(
    env: &BTreeMap<String, String>,
    legacy: bool,
) -> Result<BTreeSet<Capability>, GpuError> {
    match env.get("NVIDIA_DRIVER_CAPABILITIES").map(|s| s.trim()) {
        None if legacy => Ok(Capability::ALL.into_iter().collect()),
        None | Some("") => Ok([Capability::Utility, Capability::Compute].into()),
        Some(v) => {
            let mut caps = BTreeSet::new();
            for c in split_list(v) {
                if c.eq_ignore_ascii_case("all") {
                    caps.extend(Capability::ALL);
                    continue;
                }
                caps.insert(Capability::parse(&c).ok_or_else(|| {
                    GpuError::Refused(format!(
                        "NVIDIA_DRIVER_CAPABILITIES: unknown capability {} (supported: all, {})",
                        quoted(&c),
                        Capability::ALL.map(|c| c.name()).join(", ")
                    ))
                })?);
            }
            Ok(caps)
        }
    }
}

/// `NVIDIA_REQUIRE_*` (and a legacy image's `CUDA_VERSION`), unless disabled.
fn requirements(
    env: &BTreeMap<String, String>,
    cfg: &GpuConfig,
    legacy: bool,
) -> Result<Vec<Requirement>, GpuError> {
    let disabled = cfg.disable_require
        || parse_bool(
            "NVIDIA_DISABLE_REQUIRE",
            env.get("NVIDIA_DISABLE_REQUIRE")
                .map(|s| s.trim())
                .unwrap_or(""),
        )?;
    let mut out = Vec::new();
    if disabled {
        return Ok(out);
    }
    for (k, v) in env {
        if !k.starts_with("NVIDIA_REQUIRE_")
            || k.starts_with("NVIDIA_REQUIRE_JETPACK")
            || v.trim().is_empty()
        {
            continue;
        }
        let expr = require::parse(v).map_err(|e| {
            GpuError::Refused(format!(
                "{}={} is invalid: {e}",
                clipped(k, ECHO_LIMIT),
                quoted(v)
            ))
        })?;
        out.push(Requirement {
            var: k.clone(),
            text: v.clone(),
            expr,
        });
    }
    if legacy {
        let cuda = &env["CUDA_VERSION"];
        let mm: Vec<&str> = cuda.split('.').take(2).collect();
        let text = format!("cuda>={}", mm.join("."));
        let expr = require::parse(&text).map_err(|_| {
            GpuError::Refused(format!("CUDA_VERSION={} is not a version", quoted(cuda)))
        })?;
        out.push(Requirement {
            var: "CUDA_VERSION".into(),
            text,
            expr,
        });
    }
    Ok(out)
}

/// `NVIDIA_MIG_CONFIG_DEVICES` / `NVIDIA_MIG_MONITOR_DEVICES`: only `all`, only privileged.
fn mig_flag(env: &BTreeMap<String, String>, privileged: bool, var: &str) -> Result<bool, GpuError> {
    match env.get(var).map(|s| s.trim()) {
        None | Some("") => Ok(false),
        Some(_) if !privileged => Err(GpuError::Refused(format!(
            "{var} is only honoured in privileged containers"
        ))),
        Some("all") => Ok(true),
        Some(v) => Err(GpuError::Refused(format!(
            "{var}={}: only \"all\" is supported",
            quoted(v)
        ))),
    }
}

/// Reads the request; `Ok(None)` when the container asked for nothing (or is a pod sandbox).
pub fn parse(spec: &Spec, cfg: &GpuConfig) -> Result<Option<Request>, GpuError> {
    if is_sandbox(spec) {
        return Ok(None);
    }
    let env = env_map(spec);
    let privileged = is_privileged(spec);
    let mut cdi_devices = Vec::new();
    cdi_from_annotations(spec, cfg, &mut cdi_devices)?;
    let mut mount_channels = Vec::new();
    let mount_ids = if cfg.accept_volume_mounts {
        device_list_mounts(spec, &mut cdi_devices, &mut mount_channels)?
    } else {
        Vec::new()
    };
    let (devices, source) = if mount_ids.is_empty() {
        (env_devices(&env, privileged, cfg)?, "env")
    } else {
        (devices_from_ids(mount_ids), "volume-mounts")
    };
    if devices.is_none() && cdi_devices.is_empty() {
        return Ok(None);
    }
    let legacy = env.get("CUDA_VERSION").is_some_and(|v| !v.is_empty())
        && env.get("NVIDIA_REQUIRE_CUDA").is_none_or(|v| v.is_empty());
    let capabilities = capabilities(&env, legacy)?;
    let requirements = requirements(&env, cfg, legacy)?;
    let mig_config = mig_flag(&env, privileged, "NVIDIA_MIG_CONFIG_DEVICES")?;
    let mig_monitor = mig_flag(&env, privileged, "NVIDIA_MIG_MONITOR_DEVICES")?;
    let cuda_compat = cfg.cuda_forward_compat
        && !parse_bool(
            "NVIDIA_DISABLE_CUDA_COMPAT",
            env.get("NVIDIA_DISABLE_CUDA_COMPAT")
                .map(|s| s.trim())
                .unwrap_or(""),
        )?;
    let classes = classes(&env, cfg, mount_channels)?;
    Ok(Some(Request {
        classes,
        cuda_compat,
        devices,
        capabilities,
        requirements,
        mig_config,
        mig_monitor,
        cdi_devices,
        source,
    }))
}
