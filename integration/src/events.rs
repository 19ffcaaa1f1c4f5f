//! A `ctr events` stream, read line by line.

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// The namespace label whose updates tell that a subscription is live; its events are skipped.
const PROBE: &str = "nvidia-shim-events-probe";

/// A running `ctr events` stream.
pub struct Events {
    pub(crate) child: Child,
    pub(crate) rx: mpsc::Receiver<String>,
    pub(crate) seen: std::cell::RefCell<Vec<String>>,
}

impl Events {
    /// Waits for a line containing every needle; returns it.
    pub fn wait_for(&self, needles: &[&str], limit: Duration) -> Result<String> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) if line.contains(PROBE) => {}
                Ok(line) => {
                    self.seen.borrow_mut().push(line.clone());
                    if needles.iter().all(|n| line.contains(n)) {
                        return Ok(line);
                    }
                }
                Err(_) => bail!("no event with {needles:?}; saw {:#?}", self.seen.borrow()),
            }
        }
    }

    /// Every line received so far, without waiting for more.
    pub fn history(&self) -> Vec<String> {
        let mut seen = self.seen.borrow_mut();
        seen.extend(self.rx.try_iter().filter(|l| !l.contains(PROBE)));
        seen.clone()
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl crate::Containerd {
    /// Starts `ctr events` and returns a receiver of its lines.
    pub fn events(&self) -> Result<Events> {
        let mut child = self
            .ctr_command(&["events"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let out = child.stdout.take().context("events stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(|l| l.ok()) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // `ctr events` subscribes some time after it starts: until an event of our own comes
        // through, one published now could be missed. Relabelling the namespace publishes one.
        let deadline = Instant::now() + Duration::from_secs(20);
        for n in 0.. {
            self.ctr_ok(&[
                "namespaces",
                "label",
                &self.namespace,
                &format!("{PROBE}={n}"),
            ])?;
            match rx.recv_timeout(Duration::from_millis(250)) {
                Ok(line) if line.contains("/namespaces/update") => break,
                Ok(_) | Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < deadline => {}
                _ => bail!("`ctr events` delivered nothing within 20 s"),
            }
        }
        // Later probes' events may still arrive; they name no container and match no needle.
        Ok(Events {
            child,
            rx,
            seen: Default::default(),
        })
    }
}
