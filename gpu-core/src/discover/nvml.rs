//! GPU facts from libnvidia-ml through nvml-wrapper: exact NVML index order, brand, compute
//! capability, memory, MIG mode and MIG devices, and the driver's CUDA version.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::path::Path;

use nvml_wrapper::enum_wrappers::device::Brand;
use nvml_wrapper::Nvml;

use super::files::node_from_major;
use crate::inventory::{normalise_bus_id, DeviceNode, Gpu, MigDevice};

/// What NVML told us.
pub struct NvmlFacts {
    /// `M.m`.
    pub cuda_version: Option<String>,
    /// GPUs (device nodes filled from the minor number).
    pub gpus: Vec<Gpu>,
}

fn brand_name(b: Brand) -> String {
    let s = format!("{b:?}");
    match s.as_str() {
        "Titan" => "TITAN".into(),
        _ => s,
    }
}

type IdFn = unsafe extern "C" fn(*mut libc::c_void, *mut libc::c_uint) -> libc::c_uint;

/// nvml-wrapper does not wrap the GPU/compute instance id getters: look them up in the already
/// loaded library.
fn instance_id_fns(lib: &Path) -> Option<(IdFn, IdFn)> {
    let c = CString::new(lib.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: RTLD_NOLOAD only returns a handle to the library nvml-wrapper already loaded.
    let h = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_NOLOAD) };
    if h.is_null() {
        return None;
    }
    // SAFETY: symbol names are NUL-terminated; the signatures are NVML's.
    unsafe {
        let gi = libc::dlsym(h, c"nvmlDeviceGetGpuInstanceId".as_ptr());
        let ci = libc::dlsym(h, c"nvmlDeviceGetComputeInstanceId".as_ptr());
        if gi.is_null() || ci.is_null() {
            return None;
        }
        Some((
            std::mem::transmute::<*mut libc::c_void, IdFn>(gi),
            std::mem::transmute::<*mut libc::c_void, IdFn>(ci),
        ))
    }
}

/// The MIG devices of GPU `d` (device minor `minor`), with their capability nodes.
fn mig_devices(
    d: &nvml_wrapper::Device<'_>,
    minor: u32,
    ids: Option<(IdFn, IdFn)>,
    caps_major: Option<i64>,
    mig_minors: &BTreeMap<String, u32>,
) -> Vec<MigDevice> {
    let mut migs = Vec::new();
    let max = d.mig_device_count().unwrap_or(0);
    for j in 0..max {
        let Ok(m) = d.mig_device_by_index(j) else {
            continue;
        };
        let (mut gi, mut ci) = (0u32, 0u32);
        if let Some((gf, cf)) = ids {
            // SAFETY: valid handle from NVML; out-params are plain u32s.
            unsafe {
                gf(m.handle().cast(), &mut gi);
                cf(m.handle().cast(), &mut ci);
            }
        }
        let caps = [
            format!("gpu{minor}/gi{gi}/access"),
            format!("gpu{minor}/gi{gi}/ci{ci}/access"),
        ]
        .iter()
        .filter_map(|k| {
            let cap_minor = *mig_minors.get(k)?;
            Some(node_from_major(
                &format!("/dev/nvidia-caps/nvidia-cap{cap_minor}"),
                caps_major?,
                i64::from(cap_minor),
            ))
        })
        .collect::<Vec<DeviceNode>>();
        migs.push(MigDevice {
            index: migs.len() as u32,
            uuid: m.uuid().unwrap_or_default(),
            gi,
            ci,
            profile: m.name().unwrap_or_default(),
            memory_mib: m.memory_info().ok().map(|i| i.total >> 20),
            caps,
        });
    }
    migs
}

/// Loads NVML from `lib` and reads every GPU. `caps_major` and `mig_minors` describe MIG
/// capability nodes (from procfs).
pub fn read(
    lib: &Path,
    caps_major: Option<i64>,
    mig_minors: &BTreeMap<String, u32>,
) -> Result<NvmlFacts, String> {
    let nvml = Nvml::builder()
        .lib_path(lib.as_os_str())
        .init()
        .map_err(|e| format!("loading {}: {e}", lib.display()))?;
    let cuda_version = nvml
        .sys_cuda_driver_version()
        .ok()
        .map(|v| format!("{}.{}", v / 1000, (v % 1000) / 10));
    let ids = instance_id_fns(lib);
    let count = nvml.device_count().map_err(|e| e.to_string())?;
    let mut gpus = Vec::new();
    for index in 0..count {
        let d = nvml.device_by_index(index).map_err(|e| e.to_string())?;
        let minor = d.minor_number().map_err(|e| e.to_string())?;
        let mig_enabled = d.mig_mode().is_ok_and(|m| m.current == 1);
        let migs = if mig_enabled {
            mig_devices(&d, minor, ids, caps_major, mig_minors)
        } else {
            Vec::new()
        };
        gpus.push(Gpu {
            index,
            uuid: d.uuid().map_err(|e| e.to_string())?,
            minor,
            pci_bus_id: d
                .pci_info()
                .map(|p| normalise_bus_id(&p.bus_id))
                .unwrap_or_default(),
            model: d.name().unwrap_or_default(),
            brand: d.brand().ok().map(brand_name),
            arch: d
                .cuda_compute_capability()
                .ok()
                .map(|c| format!("{}.{}", c.major, c.minor)),
            memory_mib: d.memory_info().ok().map(|i| i.total >> 20),
            mig_enabled,
            migs,
            node: node_from_major(&format!("/dev/nvidia{minor}"), 195, i64::from(minor)),
        });
    }
    Ok(NvmlFacts { cuda_version, gpus })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bus_ids_normalise() {
        assert_eq!(normalise_bus_id("00000000:00:04.0"), "0000:00:04.0");
        assert_eq!(normalise_bus_id("0000:AB:00.0"), "0000:ab:00.0");
        // Found by the fuzz harness: a multi-byte request id was sliced inside a character.
        assert_eq!(normalise_bus_id("ΣꧏAa:"), "Σꧏaa:");
    }
}
