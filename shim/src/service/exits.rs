//! Process exits, in order: exec exits at once, an init's exit only once its execs are done, an
//! unreported OOM kill before the exit it caused.

use super::*;

impl Service {
    /// Handles exits fanned out by the reaper, in order, forever.
    pub async fn handle_exits(self: Arc<Self>, mut exits: mpsc::UnboundedReceiver<Exit>) {
        while let Some(e) = exits.recv().await {
            let _g = self.event_lock.lock().await;
            self.on_exit(e).await;
        }
    }

    pub(super) async fn on_exit(&self, e: Exit) {
        let mut kill_all: Option<(String, Arc<dyn Delegate>)> = None;
        {
            let mut map = self.lock();
            let Some((cid, c)) = map
                .iter_mut()
                .find(|(_, c)| c.init.pid == e.pid || c.execs.values().any(|p| p.pid == e.pid))
            else {
                return;
            };
            let cid = cid.clone();
            if c.init.pid == e.pid {
                if c.init.exit_info().is_some() || c.pending_init_exit.is_some() {
                    return;
                }
                if c.init.status == Status::CREATED {
                    // Killed before it was started (Delete of a created task): no TaskExit without TaskStart.
                    c.init.status = Status::STOPPED;
                    c.init.exit.send_replace(Some(ts_to_exit(e.status)));
                    return;
                }
                if c.host_pid_ns {
                    kill_all = Some((cid.clone(), c.runc.clone()));
                }
                c.pending_init_exit = Some(e.status);
            } else if let Some(p) = c.execs.values_mut().find(|p| p.pid == e.pid) {
                let info = ts_to_exit(e.status);
                p.status = Status::STOPPED;
                let mut ev = TaskExit::new();
                ev.container_id = cid.clone();
                ev.id = p.exec_id.clone();
                ev.pid = e.pid as u32;
                ev.exit_status = info.0;
                ev.exited_at = MessageField::some(info.1.clone());
                p.exit.send_replace(Some(info));
                self.publisher.publish("/tasks/exit", &ev);
            }
        }
        if let Some((cid, runc)) = kill_all {
            // The init shared the host PID namespace: nothing else kills what it left behind.
            if let Err(err) = runc.kill(&cid, 9, true).await {
                tracing::debug!("kill --all after init exit of {cid}: {err}");
            }
        }
        self.finish_init_exits();
    }

    pub(super) fn finish_init_exits(&self) {
        let mut map = self.lock();
        for (cid, c) in map.iter_mut() {
            if c.pending_init_exit.is_none() || c.running_execs() > 0 {
                continue;
            }
            let status = c.pending_init_exit.take().unwrap_or(0);
            // An OOM kill usually ends the init too, and its exit can reach us before the
            // watcher has read the cgroup's event: report the kill first, as the watcher would have.
            if let Some(n) = c.cgroup.as_ref().and_then(|cg| cg.oom_kill_count()) {
                if n > c.ooms_reported.swap(n, Ordering::Relaxed) {
                    tracing::info!(id = cid.as_str(), "oom");
                    publish_oom(&self.publisher, cid);
                }
            }
            let info = ts_to_exit(status);
            c.init.status = Status::STOPPED;
            let mut ev = TaskExit::new();
            ev.container_id = cid.clone();
            ev.id = cid.clone();
            ev.pid = c.init.pid as u32;
            ev.exit_status = info.0;
            ev.exited_at = MessageField::some(info.1.clone());
            c.init.exit.send_replace(Some(info));
            self.publisher.publish("/tasks/exit", &ev);
            tracing::debug!(id = cid.as_str(), "init exit published");
            if let Some(h) = c.oom.take() {
                h.abort();
            }
        }
    }
}
