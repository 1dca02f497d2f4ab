//! A bound for a spin loop: the in-process counterpart of the child watchdog, so that a
//! loop waiting on shared memory fails instead of spinning forever.

use std::fmt;
use std::time::{Duration, Instant};

/// A deadline for one step, plus (in a child process) a check that the parent is alive.
#[derive(Debug)]
pub struct Deadline {
    what: String,
    limit: Duration,
    deadline: Instant,
    /// The parent's pid when created, for a child: reparenting means the parent died.
    parent: Option<u32>,
    ticks: u32,
    last_parent_check: Instant,
}

/// A [`Deadline`] passed, or the parent it watches is gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expired {
    /// The step took longer than its limit.
    TimedOut {
        /// What was bounded.
        what: String,
        /// The limit.
        limit: Duration,
    },
    /// The parent process died (this process was reparented).
    ParentGone {
        /// What was running.
        what: String,
    },
}

impl fmt::Display for Expired {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TimedOut { what, limit } => {
                write!(f, "watchdog: {what} did not finish within {limit:?}")
            }
            Self::ParentGone { what } => {
                write!(f, "watchdog: the parent process is gone during {what}")
            }
        }
    }
}

impl std::error::Error for Expired {}

impl Deadline {
    /// `what` must finish within `limit` from now.
    pub fn new(what: impl Into<String>, limit: Duration) -> Self {
        let now = Instant::now();
        Self {
            what: what.into(),
            limit,
            deadline: now + limit,
            parent: None,
            ticks: 0,
            last_parent_check: now,
        }
    }

    /// Also expire when this process's parent dies (for a child process).
    pub fn watch_parent(mut self) -> Self {
        self.parent = Some(std::os::unix::process::parent_id());
        self
    }

    /// Time left before the deadline (zero once passed).
    pub fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// For every iteration of a busy wait: reads the clock only every 1024 calls.
    ///
    /// # Errors
    /// As [`check`](Self::check), on the calls that check.
    #[inline]
    pub fn tick(&mut self) -> Result<(), Expired> {
        self.ticks = self.ticks.wrapping_add(1);
        if self.ticks & 1023 == 0 {
            self.check()?;
        }
        Ok(())
    }

    /// Checks the deadline now (and the parent, at most every 20 ms).
    ///
    /// # Errors
    /// [`Expired::TimedOut`] once the limit has passed; [`Expired::ParentGone`] if the
    /// watched parent died.
    pub fn check(&mut self) -> Result<(), Expired> {
        let now = Instant::now();
        if now >= self.deadline {
            return Err(Expired::TimedOut {
                what: self.what.clone(),
                limit: self.limit,
            });
        }
        if let Some(parent) = self.parent {
            if now.duration_since(self.last_parent_check) >= Duration::from_millis(20) {
                self.last_parent_check = now;
                if std::os::unix::process::parent_id() != parent {
                    return Err(Expired::ParentGone {
                        what: self.what.clone(),
                    });
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_passed_deadline_fails_with_what_and_limit() {
        let mut d = Deadline::new("spinning", Duration::ZERO);
        let e = d.check().unwrap_err();
        assert_eq!(
            e,
            Expired::TimedOut {
                what: "spinning".into(),
                limit: Duration::ZERO
            }
        );
        assert!(e.to_string().starts_with("watchdog: spinning"));
        // tick checks on every 1024th call only.
        let mut d = Deadline::new("spinning", Duration::ZERO);
        let fails = (0..2048).filter(|_| d.tick().is_err()).count();
        assert_eq!(fails, 2);
    }

    #[test]
    fn a_far_deadline_holds_and_the_parent_is_alive() {
        let mut d = Deadline::new("waiting", Duration::from_secs(3600)).watch_parent();
        assert!(d.check().is_ok());
        assert!(d.remaining() > Duration::from_secs(3000));
    }
}
