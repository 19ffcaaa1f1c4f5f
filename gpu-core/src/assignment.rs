//! What a GPU container was given, recorded in its bundle so that `nvidia-shim top` and
//! `metrics` can say which container and pod uses which GPU. Only the shim knows this exactly:
//! it planned the devices, whatever route the request took (env, volume mounts, CDI).
//!
//! The record goes away with the bundle. It is small (well under a page) and written once per
//! Create, after runc created the container, when its cgroup is known.

use std::io::Write;
use std::path::Path;

use oci_spec::runtime::Spec;
use serde::{Deserialize, Serialize};

/// The record's file name in the bundle.
pub const FILE: &str = "nvidia-gpus.json";
/// The most a reader takes from a record file, and the most the shim writes.
pub const LIMIT: u64 = 64 * 1024;
/// The most kept of each name taken from the spec's annotations (Kubernetes allows 253 bytes
/// for a pod name; direct clients of containerd allow anything).
pub const MAX_NAME: usize = 512;

/// The pod a container belongs to, from the CRI annotations containerd puts in every spec.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRef {
    /// `io.kubernetes.cri.sandbox-name`.
    pub name: String,
    /// `io.kubernetes.cri.sandbox-namespace`.
    pub namespace: String,
    /// `io.kubernetes.cri.sandbox-uid`.
    #[serde(default)]
    pub uid: String,
    /// `io.kubernetes.cri.container-name`.
    pub container: String,
}

/// One GPU container's assignment.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    /// containerd namespace.
    pub namespace: String,
    /// Container id.
    pub id: String,
    /// How the GPUs were asked for: `env`, `volume-mounts`, `cdi`, or `containerd-cdi` when
    /// containerd applied CDI edits before the shim.
    pub requested_by: String,
    /// What was selected (UUIDs, MIG UUIDs, CDI names), as planned.
    pub selected: Vec<String>,
    /// GPU device nodes given (`/dev/nvidia<minor>`, MIG capability nodes).
    pub devices: Vec<String>,
    /// Driver capabilities.
    pub capabilities: Vec<String>,
    /// The container's cgroup, as [`cgroup_key`] reads it from `/proc/<pid>/cgroup`.
    pub cgroup: Option<String>,
    /// The pod, when CRI created the container.
    pub pod: Option<PodRef>,
}

impl Assignment {
    /// Writes the record into `bundle` (temporary file, then rename). A record its readers would
    /// refuse (over [`LIMIT`]) is not written.
    pub fn write(&self, bundle: &Path) -> std::io::Result<()> {
        let data = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        if data.len() as u64 > LIMIT {
            return Err(std::io::Error::other(format!(
                "the record would be {} bytes, over the {LIMIT}-byte limit its readers keep",
                data.len()
            )));
        }
        let tmp = bundle.join(format!(".{FILE}.tmp"));
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&data)?;
        std::fs::rename(&tmp, bundle.join(FILE))
    }

    /// Reads the record of `bundle`: `Ok(None)` when there is none (the container has no GPU),
    /// an error saying why when there is one that cannot be used (too large, not a record).
    pub fn read(bundle: &Path) -> Result<Option<Self>, String> {
        let path = bundle.join(FILE);
        let text = match crate::hostfile::read_text(&path, LIMIT) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| format!("{}: not an assignment record: {e}", path.display()))
    }
}

/// GPU device nodes among `paths`: `/dev/nvidia<N>` and `/dev/nvidia-caps/*`.
pub fn gpu_devices<'a>(paths: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    paths
        .into_iter()
        .filter(|p| gpu_minor(p).is_some() || p.starts_with("/dev/nvidia-caps/"))
        .map(str::to_string)
        .collect()
}

/// The minor number of a `/dev/nvidia<N>` path.
pub fn gpu_minor(path: &str) -> Option<u32> {
    path.strip_prefix("/dev/nvidia")?.parse().ok()
}

/// The pod of a spec made by CRI.
pub fn pod_of(spec: &Spec) -> Option<PodRef> {
    let a = spec.annotations().as_ref()?;
    let get = |k: &str| {
        a.get(&format!("io.kubernetes.cri.{k}"))
            .map(|v| crate::echo::clipped(v, MAX_NAME))
    };
    Some(PodRef {
        name: get("sandbox-name")?,
        namespace: get("sandbox-namespace").unwrap_or_default(),
        uid: get("sandbox-uid").unwrap_or_default(),
        container: get("container-name").unwrap_or_default(),
    })
}

/// The cgroup a process is in, from `/proc/<pid>/cgroup` text, in a form that is the same for
/// every process of one container and a prefix of its sub-cgroups: the `pids` controller's path
/// on cgroup v1 (also on hybrid hosts, whose unified line does not follow containers), else
/// `memory`'s, else the unified (`0::`) path.
pub fn cgroup_key(text: &str) -> Option<String> {
    let by = |want: &str| {
        text.lines().find_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, ctrl, path) = (f.next()?, f.next()?, f.next()?);
            ctrl.split(',').any(|c| c == want).then(|| path.to_string())
        })
    };
    by("pids").or_else(|| by("memory")).or_else(|| {
        text.lines()
            .find_map(|l| l.strip_prefix("0::"))
            .map(str::to_string)
    })
}

/// Whether a process in cgroup `process` belongs to the container in cgroup `container`.
pub fn in_cgroup(process: &str, container: &str) -> bool {
    container != "/"
        && (process == container
            || process
                .strip_prefix(container)
                .is_some_and(|rest| rest.starts_with('/')))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_keys_on_v1_hybrid_and_v2() {
        let hybrid = "12:pids:/it1/c1\n4:memory:/it1/c1\n1:name=systemd:/x\n0::/user.slice\n";
        assert_eq!(cgroup_key(hybrid).as_deref(), Some("/it1/c1"));
        let v2 = "0::/kubepods/pod1/abc\n";
        assert_eq!(cgroup_key(v2).as_deref(), Some("/kubepods/pod1/abc"));
        assert!(in_cgroup("/kubepods/pod1/abc", "/kubepods/pod1/abc"));
        assert!(in_cgroup("/kubepods/pod1/abc/sub", "/kubepods/pod1/abc"));
        assert!(!in_cgroup("/kubepods/pod1/abcd", "/kubepods/pod1/abc"));
        assert!(
            !in_cgroup("/anything", "/"),
            "a root cgroup attributes nothing"
        );
    }

    #[test]
    fn records_round_trip_and_devices_filter() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(Assignment::read(d.path()), Ok(None));
        let a = Assignment {
            namespace: "k8s.io".into(),
            id: "c1".into(),
            requested_by: "env".into(),
            devices: gpu_devices([
                "/dev/nvidiactl",
                "/dev/nvidia1",
                "/dev/nvidia-uvm",
                "/dev/nvidia-caps/nvidia-cap21",
            ]),
            ..Default::default()
        };
        assert_eq!(a.devices, ["/dev/nvidia1", "/dev/nvidia-caps/nvidia-cap21"]);
        a.write(d.path()).unwrap();
        assert_eq!(Assignment::read(d.path()), Ok(Some(a)));
        assert_eq!(gpu_minor("/dev/nvidia12"), Some(12));
        assert_eq!(gpu_minor("/dev/nvidiactl"), None);
    }

    #[test]
    fn records_stay_within_what_readers_take() {
        let d = tempfile::tempdir().unwrap();
        let huge = "x".repeat(70_000);
        let spec: Spec = serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2",
            "annotations": {
                "io.kubernetes.cri.sandbox-name": huge,
                "io.kubernetes.cri.sandbox-namespace": "ns",
                "io.kubernetes.cri.container-name": huge,
            }
        }))
        .unwrap();
        let pod = pod_of(&spec).unwrap();
        assert!(pod.name.len() <= MAX_NAME + 64, "{}", pod.name.len());
        let a = Assignment {
            pod: Some(pod),
            ..Default::default()
        };
        a.write(d.path()).unwrap();
        assert!(Assignment::read(d.path()).unwrap().is_some());
        // One the shim would refuse to write, made by hand: the reader says why.
        let big = Assignment {
            selected: vec![huge; 2],
            ..Default::default()
        };
        let e = big.write(d.path()).unwrap_err().to_string();
        assert!(e.contains("over the 65536-byte limit"), "{e}");
        std::fs::write(d.path().join(FILE), vec![b' '; 70_000]).unwrap();
        let e = Assignment::read(d.path()).unwrap_err();
        assert!(e.contains(FILE) && e.contains("limit"), "{e}");
    }
}
