//! Delete: an exec's record, or a container — the delegate's delete, IO drained, rootfs
//! unmounted, TaskDelete published.

use super::*;

impl Service {
    /// Deletes exec `exec_id` of container `id`, which must have exited.
    pub(super) async fn delete_exec(
        &self,
        id: &str,
        exec_id: &str,
    ) -> TtrpcResult<api::DeleteResponse> {
        let mut resp = api::DeleteResponse::new();
        let mut p = {
            let mut map = self.lock();
            let c = container_mut(&mut map, id)?;
            let p = c
                .execs
                .get(exec_id)
                .ok_or_else(|| not_found(format!("exec {:?} not found", exec_id)))?;
            if p.status == Status::RUNNING && p.exit_info().is_none() {
                return Err(precondition(format!("exec {:?} is still running", exec_id)));
            }
            let bundle = c.bundle.clone();
            let p = c
                .execs
                .remove(exec_id)
                .ok_or_else(|| not_found("exec vanished"))?;
            let _ = std::fs::remove_file(bundle.join(format!("{}.pid", exec_id)));
            p
        };
        p.io.shutdown(Duration::from_secs(2)).await;
        resp.pid = p.pid as u32;
        if let Some((code, at)) = p.exit_info() {
            resp.exit_status = code;
            resp.exited_at = MessageField::some(at);
        }
        Ok(resp)
    }

    /// Deletes container `id`, which must not be running.
    pub(super) async fn delete_init(&self, id: &str) -> TtrpcResult<api::DeleteResponse> {
        let mut resp = api::DeleteResponse::new();
        let (runc, status, mut exit_rx) = {
            let mut map = self.lock();
            let c = container_mut(&mut map, id)?;
            let running = matches!(
                c.init.status,
                Status::RUNNING | Status::PAUSED | Status::PAUSING
            ) && c.init.exit_info().is_none();
            if running {
                return Err(precondition(format!(
                    "container {:?} is still running; kill it first",
                    id
                )));
            }
            // The OOM watcher keeps the cgroup's memory.events open: stop it before runc
            // removes the cgroup.
            if let Some(h) = c.oom.take() {
                h.abort();
            }
            (c.runc.clone(), c.init.status, c.init.exit.subscribe())
        };
        // A stopped container needs no --force (which first tries to kill what is left).
        let gone =
            |e: &crate::runc::RuncError| matches!(e, crate::runc::RuncError::NotExist { .. });
        let mut result = runc.delete(id, status != Status::STOPPED).await;
        if matches!(&result, Err(e) if !gone(e)) && status == Status::STOPPED {
            result = runc.delete(id, true).await;
        }
        if let Err(e) = result {
            if !gone(&e) {
                tracing::warn!(id = id, "{e}");
            }
        }
        if status == Status::CREATED {
            let _ = tokio::time::timeout(Duration::from_secs(2), exit_rx.wait_for(|e| e.is_some()))
                .await;
        }
        let mut c = self
            .lock()
            .remove(id)
            .ok_or_else(|| not_found(format!("container {:?} not created", id)))?;
        c.init.io.shutdown(Duration::from_secs(2)).await;
        for (_, mut p) in c.execs.drain() {
            p.io.shutdown(Duration::from_millis(100)).await;
        }
        if let Some(h) = c.oom.take() {
            h.abort();
        }
        if c.mounted_rootfs {
            unmount_rootfs(&c.bundle);
        }
        let (code, at) = c.init.exit_info().unwrap_or_else(|| (137, now()));
        let mut ev = TaskDelete::new();
        ev.container_id = id.to_string();
        ev.id = id.to_string();
        ev.pid = c.init.pid as u32;
        ev.exit_status = code;
        ev.exited_at = MessageField::some(at.clone());
        self.publisher.publish("/tasks/delete", &ev);
        tracing::info!(id = id, "deleted");
        resp.pid = c.init.pid as u32;
        resp.exit_status = code;
        resp.exited_at = MessageField::some(at);
        Ok(resp)
    }
}
