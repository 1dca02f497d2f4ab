//! The child's side of the line protocol: commands on stdin, answers on stdout.

use std::io::{BufRead, Write};

/// The control pipe of this (child) process. Answers are written with the builder's marker
/// (see [`Builder::marker`](crate::Builder::marker)) in front and flushed at once.
pub struct Control {
    lines: std::io::Lines<std::io::StdinLock<'static>>,
    marker: String,
}

impl Control {
    /// This process's stdin and stdout; `marker` goes in front of every answer (`""` for
    /// none).
    pub fn new(marker: &str) -> Self {
        Self {
            lines: std::io::stdin().lock().lines(),
            marker: marker.to_owned(),
        }
    }

    /// The next command, or `None` at end of input (the parent closed the pipe or died).
    ///
    /// # Errors
    /// Reading stdin failed (or it is not UTF-8).
    pub fn next_command(&mut self) -> std::io::Result<Option<String>> {
        self.lines.next().transpose()
    }

    /// Sends one answer line.
    ///
    /// # Errors
    /// Writing stdout failed (the parent is gone).
    pub fn say(&self, line: &str) -> std::io::Result<()> {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}{line}", self.marker).and_then(|()| out.flush())
    }
}
