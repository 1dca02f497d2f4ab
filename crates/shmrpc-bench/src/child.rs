//! The second process: this binary re-executed with a hidden subcommand, run through
//! `shmrpc_harness` (a line protocol on its stdin and stdout, killed and reaped on drop).
//! The pipe carries only control messages ("run this case", "done"); everything measured
//! goes through shared memory.

use std::process::Command;

pub use shmrpc_harness::{ChildProcess, Control};

use crate::BenchError;

/// Starts this binary with `args` (the first is the hidden subcommand), its stdin and
/// stdout connected to us.
///
/// # Errors
///
/// [`BenchError::Io`] if this executable cannot be found, [`BenchError::Spawn`] if it
/// cannot be started.
pub fn spawn_self(args: &[String]) -> Result<ChildProcess, BenchError> {
    let exe = std::env::current_exe().map_err(BenchError::io("cannot find this executable"))?;
    let mut cmd = Command::new(&exe);
    cmd.args(args);
    let what = args.first().map_or("second", String::as_str);
    ChildProcess::builder(cmd)
        .label(format!("the {what} process"))
        .spawn()
        .map_err(|source| BenchError::Spawn {
            command: format!("{} {}", exe.display(), args.join(" ")),
            source,
        })
}

/// The rest of `line` after its first word `word` (the answer's arguments), trimmed.
pub fn rest(line: &str, word: &str) -> String {
    line.strip_prefix(word).unwrap_or(line).trim().to_owned()
}
