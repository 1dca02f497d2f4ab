//! The child process (this binary re-executed with the hidden `__child` subcommand) and the
//! line-based control pipe to it (its stdin and stdout), on top of `shmrpc-harness`. The
//! pipe says which case to run and when it is done; nothing measured goes through it, except
//! that a stream's clock stops when the child reports having checked the last message.
//!
//! Control lines from the child start with `@` (anything else it prints, a library's log
//! line say, is passed on to stderr); `@err <message>` reports a failed command, after which
//! the child is ready for the next one.

use std::process::{Command, ExitStatus};
use std::time::Duration;

use anyhow::{Context, Result};
use shmrpc_harness::{ChildProcess, KillHandle, RecvError};

/// The marker in front of the child's control lines.
const MARKER: &str = "@";

/// The child's side of the pipe.
pub fn control() -> shmrpc_harness::Control {
    shmrpc_harness::Control::new(MARKER)
}

/// Whether `e` is the child reporting a failed command (it is ready for the next one).
pub fn reported_by_child(e: &anyhow::Error) -> bool {
    matches!(
        e.downcast_ref::<RecvError>(),
        Some(RecvError::Reported { .. })
    )
}

/// The child process, seen from the lead. Dropping it kills the child if it still runs.
pub struct Peer(ChildProcess);

impl Peer {
    /// Starts this executable with `args`.
    pub fn spawn(args: &[String]) -> Result<Self> {
        let exe = std::env::current_exe().context("finding this executable")?;
        let mut cmd = Command::new(&exe);
        cmd.args(args);
        let child = ChildProcess::builder(cmd)
            .label("the child")
            .marker(MARKER)
            .error_prefix("err ")
            .spawn()?;
        Ok(Self(child))
    }

    /// Kills the child from anywhere (the watchdog's cleanup hook).
    pub fn kill_handle(&self) -> KillHandle {
        self.0.kill_handle()
    }

    /// Sends one command line.
    pub fn send(&mut self, line: &str) -> Result<()> {
        Ok(self.0.send(line)?)
    }

    /// Waits at most `timeout` for the child's next control line (an error line included).
    pub fn recv(&mut self, timeout: Duration) -> Result<String> {
        Ok(self.0.recv(timeout)?)
    }

    /// Waits for a line starting with `word` and returns the rest of it. An `err ...` line
    /// is an error for which [`reported_by_child`] holds.
    pub fn expect(&mut self, word: &str, timeout: Duration) -> Result<String> {
        let line = self.0.expect(word, timeout)?;
        Ok(line[word.len()..].trim().to_owned())
    }

    /// Kills the child at once and reaps it.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
    }

    /// Closes the control pipe and waits at most `timeout` for the child to exit.
    pub fn finish(&mut self, timeout: Duration) -> Result<ExitStatus> {
        Ok(self.0.finish(timeout)?)
    }
}
