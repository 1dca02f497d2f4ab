//! Child processes for shmrpc's tests and benchmarks.
//!
//! - [`ChildProcess`]: a spawned child whose stdout is a line protocol. [`expect`] waits
//!   for the next line starting with a prefix (other lines are skipped but kept for error
//!   messages), fails on an error line, on end of output or when the child exits. The child
//!   is SIGKILLed and reaped when the handle is dropped.
//! - One watchdog: [`Builder::watchdog`] bounds the child's whole life. When the bound
//!   passes the child is killed (which also unblocks a parent stuck waiting on it in another
//!   channel), and every wait on the handle fails with a "watchdog" error instead of hanging.
//!   [`KillHandle`] lets another thread (a test's own watchdog) kill the child the same way.
//! - [`Control`]: the child's side of the protocol (stdin commands, stdout answers).
//! - [`Deadline`]: the same kind of bound for a spin loop in either process.
//! - [`median`] and [`quantile`]: `None` for no samples, never a made-up 0 or NaN.
//!
//! ```
//! use std::process::Command;
//! use std::time::Duration;
//! use shmrpc_harness::{ChildProcess, RecvError};
//!
//! // `sh` plays the child: it answers on stdout, one line per event.
//! let mut cmd = Command::new("sh");
//! cmd.args(["-c", "echo progress 1; echo ready port=7; read cmd; echo \"err no $cmd\""]);
//! let mut child = ChildProcess::builder(cmd)
//!     .error_prefix("err ")
//!     .watchdog(Duration::from_secs(30))
//!     .spawn()?;
//! // "progress 1" is skipped; the matching line comes back whole.
//! let line = child.expect("ready", Duration::from_secs(10))?;
//! assert_eq!(shmrpc_harness::field(&line, "port"), Some("7"));
//! child.send("jump")?;
//! // An error line ends the wait with the child's message.
//! match child.expect("ok", Duration::from_secs(10)) {
//!     Err(RecvError::Reported { message, .. }) => assert_eq!(message, "no jump"),
//!     other => panic!("{other:?}"),
//! }
//! assert!(child.finish(Duration::from_secs(10))?.success());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! [`expect`]: ChildProcess::expect
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod child;
mod control;
mod deadline;
mod stats;

pub use child::{
    Builder, ChildProcess, Context, KillHandle, RecvError, SendError, SpawnError, WaitError,
};
pub use control::Control;
pub use deadline::{Deadline, Expired};
pub use stats::{median, quantile, rank};

/// The value of `key=value` in a whitespace-separated line.
pub fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_ascii_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

#[cfg(test)]
mod tests {
    #[test]
    fn field_finds_keys_exactly() {
        assert_eq!(super::field("ready a=1 ab=xy", "ab"), Some("xy"));
        assert_eq!(super::field("ready a=1 ab=xy", "a"), Some("1"));
        assert_eq!(super::field("ready a=1", "b"), None);
    }
}
