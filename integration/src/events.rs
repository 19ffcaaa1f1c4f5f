//! A `ctr events` stream, read line by line.

use std::process::Child;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

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
        seen.extend(self.rx.try_iter());
        seen.clone()
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
