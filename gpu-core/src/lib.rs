//! gpu-core: hookless GPU injection for OCI runtimes.
//!
//! Three parts, kept apart so each can be tested alone:
//! - **discovery** reads the host (driver root, procfs, NVML) into an [`inventory::Inventory`]; it is
//!   the only part that touches the host and tests replace it with fixture hosts;
//! - **request** and **plan** are pure: spec + inventory + config → a list of edits;
//! - **apply** turns the edits into OCI spec changes (device nodes, cgroup rules, mounts, env) and
//!   writes the container's loader cache strictly inside its root.

#![warn(missing_docs)]

pub mod apply;
pub mod assignment;
pub mod cdi;
pub mod cdi_hooks;
pub mod config;
pub mod discover;
pub mod echo;
pub mod elf;
pub mod error;
#[cfg(any(test, feature = "fixture"))]
pub mod fixture;
pub mod hostfile;
pub mod inroot;
pub mod inventory;
pub mod ldcache;
pub mod plan;
pub mod request;
pub mod require;

use std::path::Path;
use std::sync::Arc;

use oci_spec::runtime::Spec;

pub use config::CoreConfig;
use discover::Discovery;
pub use error::GpuError;
pub use inventory::Inventory;
pub use plan::Plan;

/// Annotation CRI puts on every container it creates: `sandbox` or `container`.
pub const CONTAINER_TYPE_ANNOTATION: &str = "io.kubernetes.cri.container-type";

/// What was injected, for logs.
#[derive(Clone, Debug, Default)]
pub struct Injected {
    /// Human summary.
    pub summary: String,
    /// Things that went differently than asked but did not stop the container (an image cache
    /// that was dropped, a read-only root), worded for the log.
    pub warnings: Vec<String>,
    /// What the container was given, for the bundle's record (None when the host could not
    /// be read and nothing was planned).
    pub assignment: Option<assignment::Assignment>,
    /// One line per NVIDIA CDI hook taken out of the spec, saying what replaced it.
    pub replaced_hooks: Vec<String>,
}

/// The shim's handle on gpu-core: configuration plus the discovery seam.
pub struct Injector {
    config: CoreConfig,
    discovery: Arc<dyn Discovery>,
}

impl Injector {
    /// An injector over the real host; nothing is read until a container asks for a GPU.
    pub fn new(config: CoreConfig) -> Self {
        let discovery = Arc::new(discover::Host::new(config.driver.clone()));
        Self { config, discovery }
    }

    /// An injector over another discovery (tests use [`discover::Fixed`]).
    pub fn with_discovery(config: CoreConfig, discovery: Arc<dyn Discovery>) -> Self {
        Self { config, discovery }
    }

    /// The configuration in force.
    pub fn config(&self) -> &CoreConfig {
        &self.config
    }

    /// Gives driver libraries that are already mounted in `spec` (by containerd's own CDI
    /// handling) their loader cache entries and links; adds no device and no mount.
    fn prepare_mounted(
        &self,
        spec: &mut Spec,
        root: &inroot::Root,
        hooks: &[cdi_hooks::NvidiaHook],
    ) -> Result<Injected, GpuError> {
        let mounts: Vec<(std::path::PathBuf, String)> = spec
            .mounts()
            .iter()
            .flatten()
            .filter_map(|m| {
                Some((
                    m.source().clone()?,
                    m.destination().to_string_lossy().into_owned(),
                ))
            })
            .collect();
        // This container asked the shim for nothing (a privileged one may list every host device):
        // a host the shim cannot read is a warning here, not a failed Create.
        let inventory = match self.discovery.inventory() {
            Ok(inv) => inv,
            Err(e) => {
                // The hooks' links and masks need no host: they are still done.
                let mut p = Plan::default();
                let replaced_hooks = replace_hooks(hooks, &mut p);
                apply::apply_to_spec(&p, spec)?;
                let mut warnings = vec![e.to_string()];
                warnings.extend(apply::write_links_beside_mounts(&p, root));
                return Ok(Injected {
                    summary: "NVIDIA devices in the spec; driver libraries left as they are".into(),
                    warnings,
                    assignment: None,
                    replaced_hooks,
                });
            }
        };
        let mut p = plan::plan_for_mounted_libraries(&mounts, &inventory);
        let replaced_hooks = replace_hooks(hooks, &mut p);
        if self.config.gpu.cuda_forward_compat
            && hooks.contains(&cdi_hooks::NvidiaHook::EnableCudaCompat)
        {
            if let Some(compat) = apply::image_layout(root).cuda_compat {
                plan::forward_compat_for_mounted(&mut p, &inventory, &compat, &gpu_nodes(spec));
            }
        }
        apply::apply_to_spec(&p, spec)?;
        let mut warnings = apply::write_links_beside_mounts(&p, root);
        warnings.extend(apply::write_ld_cache(&p, root)?);
        Ok(Injected {
            summary: format!(
                "devices injected before the shim (CDI): {} mounted driver libraries given loader entries, {} links{}",
                p.ld_entries.len(),
                p.links.len(),
                match &p.cuda_compat {
                    Some(v) => format!(", the image's CUDA forward-compat libraries {v}"),
                    None => String::new(),
                }
            ),
            warnings,
            assignment: Some(assignment::Assignment {
                requested_by: "containerd-cdi".into(),
                devices: assignment::gpu_devices(gpu_nodes(spec).iter().map(String::as_str)),
                pod: assignment::pod_of(spec),
                ..Default::default()
            }),
            replaced_hooks,
        })
    }

    /// The host driver's 64-bit library named `prefix` (e.g. `libcuda.so`), from the cached
    /// inventory; `libnvidia-ml.so` honours `[driver] nvml_library`.
    pub fn driver_library(&self, prefix: &str) -> Option<std::path::PathBuf> {
        if prefix == "libnvidia-ml.so" {
            if let Some(p) = &self.config.driver.nvml_library {
                return Some(p.clone());
            }
        }
        let inv = self.discovery.inventory().ok()?;
        inv.libraries
            .iter()
            .find(|l| l.prefix == prefix && !l.is_32bit)
            .map(|l| l.path.clone())
    }

    /// The plan for `spec` against the image layout given, without touching a rootfs.
    /// `Ok(None)` when the container asked for nothing.
    pub fn plan(&self, spec: &Spec, layout: &plan::ImageLayout) -> Result<Option<Plan>, GpuError> {
        let Some(req) = request::parse(spec, &self.config.gpu)? else {
            return Ok(None);
        };
        self.plan_request(&req, layout).map(Some)
    }

    #[tracing::instrument(name = "plan", level = "debug", skip_all)]
    fn plan_request(
        &self,
        req: &request::Request,
        layout: &plan::ImageLayout,
    ) -> Result<Plan, GpuError> {
        let mut p = match &req.devices {
            Some(_) => plan::plan(req, &*self.discovery.inventory()?, layout)?,
            None => Plan::default(),
        };
        if !req.cdi_devices.is_empty() {
            self.discovery
                .cdi_registry(&self.config.gpu.cdi_spec_dirs)
                .apply_with(
                    &req.cdi_devices,
                    &mut p,
                    &*self.discovery,
                    self.config.gpu.cdi_hooks,
                )?;
        }
        Ok(p)
    }

    /// Edits `spec` for the GPU request it carries; `rootfs` is the container's mounted root,
    /// where only the loader cache is written (in-root, refusing symlinks).
    /// Returns `None` when the container asked for nothing (or is a pod sandbox).
    pub fn prepare(&self, spec: &mut Spec, rootfs: &Path) -> Result<Option<Injected>, GpuError> {
        let req = request::parse(spec, &self.config.gpu)?;
        let root = open_root(rootfs)?;
        self.prepare_parsed(req, spec, &root)
    }

    /// [`Injector::prepare`] for a request the caller already parsed from `spec` (the shim parses
    /// it on its serving thread to decide whether any GPU work is needed at all), writing through
    /// `root` (which the caller may have [gated](inroot::Root::gated)).
    pub fn prepare_parsed(
        &self,
        req: Option<request::Request>,
        spec: &mut Spec,
        root: &inroot::Root,
    ) -> Result<Option<Injected>, GpuError> {
        let hooks = cdi_hooks::take(spec, self.config.gpu.cdi_hooks)?;
        let Some(req) = req else {
            if request::has_nvidia_devices(spec) || !hooks.is_empty() {
                return self.prepare_mounted(spec, root, &hooks).map(Some);
            }
            return Ok(None);
        };
        let layout = apply::image_layout(root);
        let mut p = self.plan_request(&req, &layout)?;
        let replaced_hooks = replace_hooks(&hooks, &mut p);
        apply::apply_to_spec(&p, spec)?;
        let mut warnings = p.warnings.clone();
        warnings.extend(apply::write_links(&p, root));
        warnings.extend(apply::write_ld_cache(&p, root)?);
        let assignment = assignment::Assignment {
            requested_by: if req.devices.is_some() {
                req.source
            } else {
                "cdi"
            }
            .into(),
            selected: p.selected.clone(),
            devices: assignment::gpu_devices(p.devices.iter().map(|d| d.path.as_str())),
            capabilities: req
                .capabilities
                .iter()
                .map(|c| c.name().to_string())
                .collect(),
            pod: assignment::pod_of(spec),
            ..Default::default()
        };
        Ok(Some(Injected {
            summary: p.summary(),
            warnings,
            assignment: Some(assignment),
            replaced_hooks,
        }))
    }
}

/// Opens a container's root for [`Injector::prepare_parsed`].
pub fn open_root(rootfs: &Path) -> Result<inroot::Root, GpuError> {
    inroot::Root::open(rootfs)
        .map_err(|e| GpuError::Refused(format!("opening rootfs {}: {e}", rootfs.display())))
}

/// Plans the effect of each of NVIDIA's hooks taken out of a spec; one line per hook for the log.
fn replace_hooks(hooks: &[cdi_hooks::NvidiaHook], p: &mut Plan) -> Vec<String> {
    for h in hooks {
        h.plan(p);
    }
    std::mem::take(&mut p.replaced_hooks)
}

/// The NVIDIA device nodes the spec holds.
fn gpu_nodes(spec: &Spec) -> Vec<String> {
    spec.linux()
        .iter()
        .flat_map(|l| l.devices().iter().flatten())
        .filter_map(|d| d.path().to_str())
        .filter(|p| p.starts_with("/dev/nvidia"))
        .map(str::to_string)
        .collect()
}
