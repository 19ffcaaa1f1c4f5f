//! Pause and Resume: a cgroup freeze, with the GPU released first for containers that opted in
//! (see [`crate::suspend`]). Either step that fails leaves the container as it was: a failed
//! suspend runs on unfrozen, a failed restore stays paused with its GPU state held in host
//! memory, for a Resume to retry.

use super::*;
use crate::suspend;

impl Service {
    pub(super) async fn do_pause(&self, id: &str) -> TtrpcResult<()> {
        let (runc, plan, bundle) = {
            let mut map = self.lock();
            let c = container_mut(&mut map, id)?;
            if c.init.status == Status::PAUSED {
                return Ok(());
            }
            if c.init.status != Status::RUNNING {
                return Err(precondition(format!(
                    "container {id:?} is {:?}, not running",
                    c.init.status
                )));
            }
            c.init.status = Status::PAUSING;
            (c.runc.clone(), c.gpu_suspend.clone(), c.bundle.clone())
        };
        // The init may exit while the driver or runc is busy; its exit handler then marks it
        // STOPPED, and nothing here may put it back.
        let leave_pausing = |s: Status| {
            if let Some(c) = self.lock().get_mut(id) {
                if c.init.status == Status::PAUSING {
                    c.init.status = s;
                }
            }
        };
        let suspended = match &plan {
            Some(p) => match suspend::suspend(p).await {
                Ok(s) => s,
                Err(e) => {
                    leave_pausing(Status::RUNNING);
                    return Err(e.into());
                }
            },
            None => Vec::new(),
        };
        if let Err(e) = runc.pause(id).await {
            if let (Some(p), false) = (&plan, suspended.is_empty()) {
                if let Err(undo) = suspend::resume(p, &suspended).await {
                    tracing::warn!(
                        id,
                        "gpu: resuming CUDA processes after a failed freeze: {undo}"
                    );
                }
            }
            leave_pausing(Status::RUNNING);
            return Err(unknown(e.to_string()));
        }
        if !suspended.is_empty() {
            let released: u64 = suspended.iter().map(|s| s.released_bytes).sum();
            tracing::info!(
                id,
                processes = suspended.len(),
                released_mib = released >> 20,
                "gpu: suspended on pause"
            );
        }
        suspend::record(&bundle, &suspended);
        leave_pausing(Status::PAUSED);
        if let Some(c) = self.lock().get_mut(id) {
            c.suspended = suspended;
        }
        let mut ev = TaskPaused::new();
        ev.container_id = id.to_string();
        self.publisher.publish("/tasks/paused", &ev);
        Ok(())
    }

    pub(super) async fn do_resume(&self, id: &str) -> TtrpcResult<()> {
        let (runc, plan, suspended, bundle) = {
            let map = self.lock();
            let c = container(&map, id)?;
            (
                c.runc.clone(),
                c.gpu_suspend.clone(),
                c.suspended.clone(),
                c.bundle.clone(),
            )
        };
        runc.resume(id).await.map_err(|e| unknown(e.to_string()))?;
        if let (Some(p), false) = (&plan, suspended.is_empty()) {
            if let Err(e) = suspend::resume(p, &suspended).await {
                // Half-resumed is worse than paused: freeze again, keep the record, say so.
                let refrozen = runc.pause(id).await.is_ok();
                let state = if refrozen {
                    "it was left paused with its GPU state held in host memory; Resume again to retry"
                } else {
                    "freezing it again failed too: it runs with its CUDA processes locked"
                };
                return Err(unknown(format!("{e}; {state}")));
            }
            suspend::record(&bundle, &[]);
        }
        if let Some(c) = self.lock().get_mut(id) {
            if c.init.status == Status::PAUSED {
                c.init.status = Status::RUNNING;
            }
            c.suspended.clear();
        }
        let mut ev = TaskResumed::new();
        ev.container_id = id.to_string();
        self.publisher.publish("/tasks/resumed", &ev);
        Ok(())
    }
}
