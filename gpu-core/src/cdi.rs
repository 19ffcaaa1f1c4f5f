//! Container Device Interface: specs from the configured directories, resolved by fully-qualified
//! name into the same edits a plan carries. One malformed file does not hide the others' devices,
//! and a spec that asks for an OCI hook is refused: hooks are never run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::cdi_hooks;
use crate::config::HookPolicy;
use crate::error::GpuError;
use crate::inventory::DeviceNode;
use crate::plan::{BindMount, Plan};

/// CDI versions accepted.
const VERSIONS: [&str; 11] = [
    "0.3.0", "0.4.0", "0.5.0", "0.6.0", "0.7.0", "0.8.0", "1.0.0", "1.1.0", "0.2.0", "0.1.0", "1.1",
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct SpecFile {
    cdi_version: String,
    kind: String,
    #[serde(default)]
    #[allow(dead_code)]
    annotations: BTreeMap<String, String>,
    devices: Vec<Device>,
    #[serde(default)]
    container_edits: Edits,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Device {
    name: String,
    #[serde(default)]
    #[allow(dead_code)]
    annotations: BTreeMap<String, String>,
    #[serde(default)]
    container_edits: Edits,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Edits {
    #[serde(default)]
    env: Vec<String>,
    #[serde(default)]
    device_nodes: Vec<Node>,
    #[serde(default)]
    mounts: Vec<Mount>,
    #[serde(default)]
    hooks: Vec<Hook>,
    #[serde(default)]
    additional_gids: Vec<u32>,
    #[serde(default)]
    intel_rdt: Option<serde_yaml_ng::Value>,
    #[serde(default)]
    net_devices: Vec<serde_yaml_ng::Value>,
}

impl Edits {
    fn is_empty(&self) -> bool {
        self.env.is_empty()
            && self.device_nodes.is_empty()
            && self.mounts.is_empty()
            && self.hooks.is_empty()
            && self.additional_gids.is_empty()
            && self.intel_rdt.is_none()
            && self.net_devices.is_empty()
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Node {
    path: String,
    host_path: Option<String>,
    #[serde(rename = "type")]
    typ: Option<String>,
    major: Option<i64>,
    minor: Option<i64>,
    file_mode: Option<u32>,
    permissions: Option<String>,
    uid: Option<u32>,
    gid: Option<u32>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Mount {
    host_path: String,
    container_path: String,
    #[serde(rename = "type")]
    typ: Option<String>,
    #[serde(default)]
    options: Vec<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Hook {
    hook_name: String,
    path: String,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    #[allow(dead_code)]
    env: Vec<String>,
    #[allow(dead_code)]
    timeout: Option<i64>,
}

struct Entry {
    file: PathBuf,
    priority: usize,
    spec_edits: Edits,
    edits: Edits,
}

/// Every spec found in the directories.
pub struct Registry {
    devices: BTreeMap<String, Entry>,
    errors: Vec<String>,
}

/// Largest CDI spec file read (a generated spec for eight MIG-partitioned GPUs is about 100 KiB).
pub const SPEC_LIMIT: u64 = 8 << 20;

fn load_file(path: &Path) -> Result<SpecFile, String> {
    let text = crate::hostfile::read_text(path, SPEC_LIMIT).map_err(|e| e.to_string())?;
    let spec: SpecFile = serde_yaml_ng::from_str(&text).map_err(|e| e.to_string())?;
    let v = spec.cdi_version.trim_start_matches('v');
    if !VERSIONS.contains(&v) {
        return Err(format!("unsupported cdiVersion {:?}", spec.cdi_version));
    }
    crate::request::check_cdi_name(&format!("{}=x", spec.kind))
        .map_err(|_| format!("invalid kind {:?}", spec.kind))?;
    if spec.devices.is_empty() {
        return Err("no devices".into());
    }
    for d in &spec.devices {
        if d.container_edits.is_empty() {
            return Err(format!("device {:?} has empty containerEdits", d.name));
        }
    }
    Ok(spec)
}

impl Registry {
    /// Loads `*.json`, `*.yaml` and `*.yml` from each directory; later directories win.
    pub fn load(dirs: &[PathBuf]) -> Self {
        let mut reg = Registry {
            devices: BTreeMap::new(),
            errors: Vec::new(),
        };
        let mut conflicts = Vec::new();
        for (priority, dir) in dirs.iter().enumerate() {
            let Ok(rd) = std::fs::read_dir(dir) else {
                continue;
            };
            let mut files: Vec<PathBuf> = rd
                .filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| {
                    p.extension()
                        .is_some_and(|e| e == "json" || e == "yaml" || e == "yml")
                })
                .collect();
            files.sort();
            for file in files {
                let spec = match load_file(&file) {
                    Ok(s) => s,
                    Err(e) => {
                        reg.errors.push(format!("{}: {e}", file.display()));
                        continue;
                    }
                };
                for d in spec.devices {
                    let name = format!("{}={}", spec.kind, d.name);
                    if let Some(old) = reg.devices.get(&name) {
                        if old.priority == priority {
                            conflicts.push(name.clone());
                        }
                    }
                    reg.devices.insert(
                        name,
                        Entry {
                            file: file.clone(),
                            priority,
                            spec_edits: spec.container_edits.clone(),
                            edits: d.container_edits,
                        },
                    );
                }
            }
        }
        for name in conflicts {
            if let Some(e) = reg.devices.remove(&name) {
                reg.errors.push(format!(
                    "{}: device {name} is defined twice at the same priority; removed",
                    e.file.display()
                ));
            }
        }
        reg
    }

    /// Names of every resolvable device.
    pub fn names(&self) -> Vec<String> {
        self.devices.keys().cloned().collect()
    }

    /// Files that failed to load, with why.
    pub fn errors(&self) -> &[String] {
        &self.errors
    }

    /// Resolves `names` into edits added to `plan` (spec-level edits once per spec file);
    /// NVIDIA's hooks in the specs are replaced by their effect (see [`crate::cdi_hooks`]).
    pub fn apply(
        &self,
        names: &[String],
        plan: &mut Plan,
        host: &dyn crate::discover::Discovery,
    ) -> Result<(), GpuError> {
        self.apply_with(names, plan, host, HookPolicy::Replace)
    }

    /// [`CdiRegistry::apply`] under a hook policy. This runtime applies the specs itself and
    /// never adds a hook, so under `keep` or `refuse` a spec with NVIDIA's hooks is refused;
    /// any other hook always is.
    pub fn apply_with(
        &self,
        names: &[String],
        plan: &mut Plan,
        host: &dyn crate::discover::Discovery,
        policy: HookPolicy,
    ) -> Result<(), GpuError> {
        let missing: Vec<&String> = names
            .iter()
            .filter(|n| !self.devices.contains_key(*n))
            .collect();
        if !missing.is_empty() {
            let mut msg = format!(
                "unresolvable CDI devices {} (known: {})",
                crate::echo::clipped(
                    &missing
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    crate::echo::ECHO_LIMIT
                ),
                if self.devices.is_empty() {
                    "none".to_string()
                } else {
                    self.names().join(", ")
                }
            );
            if !self.errors.is_empty() {
                msg.push_str(&format!("; spec errors: {}", self.errors.join("; ")));
            }
            return Err(GpuError::Refused(msg));
        }
        let mut seen_files: Vec<&Path> = Vec::new();
        for n in names {
            let e = &self.devices[n];
            let mut sets = vec![&e.edits];
            if !seen_files.contains(&e.file.as_path()) {
                seen_files.push(&e.file);
                sets.insert(0, &e.spec_edits);
            }
            for edits in sets {
                for h in &edits.hooks {
                    let nvidia = (policy == HookPolicy::Replace)
                        .then(|| cdi_hooks::recognise(&h.path, &h.args))
                        .flatten();
                    let Some((sub, args)) = nvidia else {
                        return Err(GpuError::Refused(format!(
                            "CDI device {n} ({}) asks for a {} hook {}: this runtime never runs hooks",
                            e.file.display(),
                            crate::echo::quoted(&h.hook_name),
                            crate::echo::quoted(&h.path)
                        )));
                    };
                    cdi_hooks::parse(sub, args)?.plan(plan);
                }
                if edits.intel_rdt.is_some() || !edits.net_devices.is_empty() {
                    return Err(GpuError::Refused(format!(
                        "CDI device {n} ({}) asks for intelRdt or netDevices, which this runtime does not apply",
                        e.file.display()
                    )));
                }
                add_edits(n, edits, plan, host)?;
            }
            plan.selected.push(n.clone());
        }
        Ok(())
    }
}

/// A CDI device node: numbers from the spec, or from the host node when the spec leaves them out.
fn device_node(
    name: &str,
    n: &Node,
    host: &dyn crate::discover::Discovery,
) -> Result<DeviceNode, GpuError> {
    let (major, minor, mode, gid) = match (n.typ.as_deref(), n.major, n.minor) {
        (Some("c") | None, Some(ma), mi) => (
            ma,
            mi.unwrap_or(0),
            n.file_mode.unwrap_or(0o666),
            n.gid.unwrap_or(0),
        ),
        _ => {
            let path = n.host_path.as_deref().unwrap_or(&n.path);
            let (ma, mi, mode, gid) = host.host_char_device(Path::new(path)).map_err(|e| {
                GpuError::Refused(format!("CDI device {name}: device node {path}: {e}"))
            })?;
            (ma, mi, n.file_mode.unwrap_or(mode), n.gid.unwrap_or(gid))
        }
    };
    Ok(DeviceNode {
        path: n.path.clone(),
        major,
        minor,
        mode,
        uid: n.uid.unwrap_or(0),
        gid,
    })
}

/// A CDI mount; a shared library mounted this way resolves like an injected one: its soname goes
/// into the container's loader cache (specs from hook-based generators expect a hook to run
/// ldconfig; we never run one).
fn add_mount(m: &Mount, plan: &mut Plan, host: &dyn crate::discover::Discovery) {
    plan.mounts.retain(|x| x.destination != m.container_path);
    let mut options = m.options.clone();
    if m.typ.as_deref().is_none_or(|t| t == "bind")
        && !options.iter().any(|o| o == "bind" || o == "rbind")
    {
        options.push("rbind".into());
    }
    plan.mounts.push(BindMount {
        source: PathBuf::from(&m.host_path),
        destination: m.container_path.clone(),
        options,
    });
    let base = Path::new(&m.container_path)
        .file_name()
        .map(|b| b.to_string_lossy().into_owned())
        .unwrap_or_default();
    if !(base.starts_with("lib") && base.contains(".so")) {
        return;
    }
    if let Some((so, is_64bit)) = host.library_soname(Path::new(&m.host_path)) {
        let flags = if is_64bit {
            crate::ldcache::FLAGS_LIB64
        } else {
            crate::ldcache::FLAGS_LIB32
        };
        plan.ld_entries.push(crate::ldcache::Entry::new(
            flags,
            so,
            m.container_path.clone(),
        ));
    }
}

fn add_edits(
    name: &str,
    e: &Edits,
    plan: &mut Plan,
    host: &dyn crate::discover::Discovery,
) -> Result<(), GpuError> {
    for kv in &e.env {
        if kv.find('=').is_none_or(|i| i == 0) {
            return Err(GpuError::Refused(format!(
                "CDI device {name}: bad env {kv:?}"
            )));
        }
        plan.env.push(kv.clone());
    }
    for n in &e.device_nodes {
        let node = device_node(name, n, host)?;
        plan.devices.retain(|d| d.path != n.path);
        plan.devices.push(node);
        if n.permissions.as_deref() == Some("none") {
            plan.no_cgroup_rule.push(n.path.clone());
        }
    }
    for m in &e.mounts {
        add_mount(m, plan, host);
    }
    plan.additional_gids
        .extend(e.additional_gids.iter().filter(|g| **g != 0));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discover::Discovery;
    use crate::inventory::Inventory;
    use std::sync::Arc;

    /// A host that exists only in answers: planning CDI edits asks it, never the filesystem.
    struct Answers;

    impl Discovery for Answers {
        fn inventory(&self) -> Result<Arc<Inventory>, GpuError> {
            Err(GpuError::Refused("not needed".into()))
        }
        fn host_char_device(&self, path: &Path) -> Result<(i64, i64, u32, u32), String> {
            (path == Path::new("/nowhere/dev/gpu9"))
                .then_some((195, 9, 0o660, 44))
                .ok_or_else(|| "no such node".into())
        }
        fn library_soname(&self, path: &Path) -> Option<(String, bool)> {
            (path == Path::new("/nowhere/libfoo.so.1.2.3")).then(|| ("libfoo.so.1".into(), true))
        }
    }

    #[test]
    fn host_facts_of_cdi_edits_come_through_the_seam() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("x.yaml"),
            "cdiVersion: \"0.5.0\"\nkind: \"example.com/gpu\"\ndevices:\n  - name: \"9\"\n    containerEdits:\n      deviceNodes:\n        - path: \"/dev/gpu9\"\n          hostPath: \"/nowhere/dev/gpu9\"\n      mounts:\n        - hostPath: \"/nowhere/libfoo.so.1.2.3\"\n          containerPath: \"/usr/lib/libfoo.so.1.2.3\"\n",
        )
        .unwrap();
        let reg = Registry::load(&[d.path().to_path_buf()]);
        let mut plan = Plan::default();
        reg.apply(&["example.com/gpu=9".into()], &mut plan, &Answers)
            .unwrap();
        let n = &plan.devices[0];
        assert_eq!((n.major, n.minor, n.mode, n.gid), (195, 9, 0o660, 44));
        assert_eq!(plan.ld_entries.len(), 1, "{:?}", plan.ld_entries);
    }
}
