//! The second process: this binary re-executed with a hidden subcommand, run through
//! `shmrpc_harness` (a line protocol on its stdin and stdout, killed and reaped on drop).
//! The pipe carries only control messages ("run this case", "done"); everything measured
//! goes through shared memory.

use std::process::Command;

use anyhow::Context;
pub use shmrpc_harness::{ChildProcess, Control};

/// Starts this binary with `args` (the first is the hidden subcommand), its stdin and
/// stdout connected to us.
///
/// # Errors
///
/// This executable cannot be found or started.
pub fn spawn_self(args: &[String]) -> anyhow::Result<ChildProcess> {
    let exe = std::env::current_exe().context("cannot find this executable")?;
    let mut cmd = Command::new(&exe);
    cmd.args(args);
    let what = args.first().map_or("second", String::as_str);
    ChildProcess::builder(cmd)
        .label(format!("the {what} process"))
        .spawn()
        .with_context(|| format!("starting {} {}", exe.display(), args.join(" ")))
}

/// The rest of `line` after its first word `word` (the answer's arguments), trimmed.
pub fn rest(line: &str, word: &str) -> String {
    line.strip_prefix(word).unwrap_or(line).trim().to_owned()
}
