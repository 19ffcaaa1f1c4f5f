//! The Create pipeline's GPU stage: reads the container's request and, when there is one, edits
//! its spec through gpu-core off the runtime thread and under a time limit.
//!
//! The work touches image content (the loader cache) and the driver (discovery, which can take
//! seconds when NVML initialises GPUs without persistence mode). On the shim's single runtime
//! thread it would stall every other container of the pod; on a blocking thread with a deadline
//! the pod keeps being served and a stuck Create fails instead of hanging.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use gpu_core::inroot::WriteGate;
use gpu_core::{CoreConfig, GpuError, Injected, Injector};

use crate::errors::ShimError;
use oci_spec::runtime::Spec;

/// What the GPU stage did to a spec.
pub enum Outcome {
    /// The container asked for no GPU (or is a pod sandbox): the spec is unchanged.
    Untouched(Spec),
    /// The spec now carries the GPU edits.
    Injected(Spec, Box<Injected>),
}

/// The shim's injectors, one per distinct configuration, kept for the shim's lifetime: the pod's
/// containers share one, and with it the inventory it read (a Create then only re-checks the
/// driver version, bus ids and MIG layout before reusing it).
#[derive(Default)]
pub struct Injectors {
    by_config: std::sync::Mutex<Vec<(CoreConfig, Arc<Injector>)>>,
}

impl Injectors {
    /// The injector for `cfg`, made on first use.
    pub fn get(&self, cfg: CoreConfig) -> Arc<Injector> {
        let mut all = self.by_config.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, i)) = all.iter().find(|(c, _)| *c == cfg) {
            return i.clone();
        }
        let i = Arc::new(Injector::new(cfg.clone()));
        all.push((cfg, i.clone()));
        i
    }
}

/// Runs the GPU stage on `spec`, whose root filesystem is mounted at `rootfs`.
#[tracing::instrument(name = "gpu", level = "debug", skip_all, fields(id = id))]
pub async fn run(
    id: &str,
    injectors: &Injectors,
    cfg: CoreConfig,
    spec: Spec,
    rootfs: PathBuf,
) -> Result<Outcome, ShimError> {
    // Parsing the request is pure and bounded: containers without one never leave this thread.
    let req = gpu_core::request::parse(&spec, &cfg.gpu)?;
    if req.is_none()
        && !gpu_core::request::has_nvidia_devices(&spec)
        && !gpu_core::cdi_hooks::has_nvidia_hooks(&spec)
    {
        return Ok(Outcome::Untouched(spec));
    }
    let limit = Duration::from_millis(cfg.gpu.prepare_timeout_ms);
    let injector = injectors.get(cfg);
    let gate = WriteGate::new();
    let writes = gate.clone();
    let mut work = tokio::task::spawn_blocking(move || {
        let mut spec = spec;
        let root = gpu_core::open_root(&rootfs)?.gated(writes);
        let injected = injector.prepare_parsed(req, &mut spec, &root)?;
        Ok::<_, gpu_core::GpuError>((spec, injected))
    });
    match tokio::time::timeout(limit, &mut work).await {
        Err(_) => {
            // The work goes on without us; from here on it cannot touch the rootfs.
            let _ = tokio::task::spawn_blocking(move || gate.close()).await;
            let id = id.to_string();
            tokio::spawn(async move {
                let how = match work.await {
                    Ok(Ok(_)) => "finished".to_string(),
                    Ok(Err(e)) => e.to_string(),
                    Err(e) => e.to_string(),
                };
                tracing::info!(id, "gpu: the abandoned GPU stage ended: {how}");
            });
            Err(GpuError::Refused(format!(
                "preparing the GPU edits took longer than {} ms (gpu.prepare_timeout_ms); \
                 the container was not created",
                limit.as_millis()
            ))
            .into())
        }
        Ok(Err(join)) => Err(ShimError::Failed(format!(
            "nvidia: the GPU stage failed: {join}"
        ))),
        Ok(Ok(Err(e))) => Err(e.into()),
        Ok(Ok(Ok((spec, Some(done))))) => Ok(Outcome::Injected(spec, Box::new(done))),
        Ok(Ok(Ok((spec, None)))) => Ok(Outcome::Untouched(spec)),
    }
}
