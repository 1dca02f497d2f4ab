//! Every spin loop of the benchmark has a watchdog, so a bug fails instead of hanging.

use std::time::{Duration, Instant};

use anyhow::bail;

/// A deadline for one case, plus (in the peer process) a check that the parent is alive.
pub struct Watchdog {
    deadline: Instant,
    what: &'static str,
    /// The parent's pid, for the peer process: reparenting means the parent died.
    parent: Option<u32>,
    ticks: u32,
    last_parent_check: Instant,
}

impl Watchdog {
    /// A watchdog for one case of the lead (parent) process.
    pub fn new(what: &'static str, limit: Duration) -> Self {
        let now = Instant::now();
        Self {
            deadline: now + limit,
            what,
            parent: None,
            ticks: 0,
            last_parent_check: now,
        }
    }

    /// A watchdog for the peer process, which also gives up when its parent is gone.
    pub fn for_peer(what: &'static str, limit: Duration) -> Self {
        let mut w = Self::new(what, limit);
        w.parent = Some(std::os::unix::process::parent_id());
        w
    }

    /// Call in every iteration of a busy wait: checks the clock every 1024 calls.
    #[inline]
    pub fn tick(&mut self) -> anyhow::Result<()> {
        self.ticks = self.ticks.wrapping_add(1);
        if self.ticks & 1023 == 0 {
            self.check()?;
        }
        Ok(())
    }

    /// Fails if the deadline passed (or the parent died).
    pub fn check(&mut self) -> anyhow::Result<()> {
        let now = Instant::now();
        if now >= self.deadline {
            bail!("watchdog: {} did not finish in time", self.what);
        }
        if let Some(parent) = self.parent {
            if now.duration_since(self.last_parent_check) >= Duration::from_millis(20) {
                self.last_parent_check = now;
                if std::os::unix::process::parent_id() != parent {
                    bail!("watchdog: the parent process is gone during {}", self.what);
                }
            }
        }
        Ok(())
    }
}
