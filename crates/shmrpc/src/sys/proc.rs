//! Process identity and liveness, robust against pid reuse.

use rustix::process::{getpid, test_kill_process, Pid};

/// A process as recorded in a shared header: its pid and its start time (clock ticks since
/// boot, from `/proc/<pid>/stat`), so that a recycled pid is not mistaken for the original.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessId {
    /// The process id.
    pub pid: u32,
    /// Start time in clock ticks after boot; 0 if it could not be read.
    pub start_time: u64,
}

impl ProcessId {
    /// The calling process.
    pub fn current() -> Self {
        let pid = getpid().as_raw_nonzero().get() as u32;
        Self {
            pid,
            start_time: start_time(pid).unwrap_or(0),
        }
    }

    /// Whether this process still exists. A pid that exists but started at another time
    /// than recorded is a different process (the pid was reused): dead.
    pub fn is_alive(&self) -> bool {
        let Some(pid) = i32::try_from(self.pid).ok().and_then(Pid::from_raw) else {
            return false;
        };
        match test_kill_process(pid) {
            // EPERM: it exists but belongs to someone else.
            Ok(()) | Err(rustix::io::Errno::PERM) => {}
            Err(_) => return false,
        }
        match (self.start_time, start_time(self.pid)) {
            (0, _) => true,
            (recorded, Some(now)) => recorded == now,
            // It vanished between the two checks.
            (_, None) => false,
        }
    }
}

/// Field 22 of `/proc/<pid>/stat` (`starttime`). The command name (field 2) may contain
/// spaces and parentheses, so fields are counted from the last `)`.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    // After ')' come fields 3.. ; starttime is field 22, i.e. the 20th of these.
    rest.split_ascii_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn current_process_is_alive_and_has_a_start_time() {
        let me = ProcessId::current();
        assert!(me.start_time > 0);
        assert!(me.is_alive());
    }

    #[test]
    fn a_reused_pid_with_another_start_time_is_dead() {
        let mut me = ProcessId::current();
        me.start_time += 1;
        assert!(!me.is_alive());
    }

    #[test]
    fn an_exited_child_is_dead() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = ProcessId {
            pid: child.id(),
            start_time: 0,
        };
        child.wait().unwrap();
        assert!(!pid.is_alive());
    }
}
