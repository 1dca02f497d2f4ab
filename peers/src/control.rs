//! The child process (this binary re-executed with the hidden `__child` subcommand) and the
//! line-based control pipe to it (its stdin and stdout). The pipe says which case to run and
//! when it is done; nothing measured goes through it, except that a stream's clock stops
//! when the child reports having checked the last message.
//!
//! Control lines from the child start with `@`; anything else it prints (a library's log
//! line, say) is passed on to stderr.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

/// The child reported that a command failed (and is ready for the next one).
#[derive(Debug)]
pub struct ChildError(pub String);

impl std::fmt::Display for ChildError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "child: {}", self.0)
    }
}

impl std::error::Error for ChildError {}

/// The child process, seen from the lead. Dropping it kills the child if it still runs.
pub struct Peer {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
}

impl Peer {
    /// Starts this executable with `args`.
    pub fn spawn(args: &[String]) -> Result<Self> {
        let exe = std::env::current_exe().context("finding this executable")?;
        let mut child = Command::new(&exe)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {}", exe.display()))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().context("child stdout")?;
        let (tx, lines) = mpsc::channel();
        std::thread::Builder::new()
            .name("child-stdout".into())
            .spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if let Some(ctl) = line.strip_prefix('@') {
                        if let Some(e) = ctl.strip_prefix("err ") {
                            eprintln!("child: error: {e}");
                        }
                        if tx.send(ctl.to_owned()).is_err() {
                            break;
                        }
                    } else {
                        eprintln!("child: {line}");
                    }
                }
            })
            .context("spawning the pipe reader")?;
        Ok(Self {
            child,
            stdin,
            lines,
        })
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends one command line.
    pub fn send(&mut self, line: &str) -> Result<()> {
        let stdin = self.stdin.as_mut().context("control pipe closed")?;
        writeln!(stdin, "{line}")
            .and_then(|()| stdin.flush())
            .context("writing to the child (did it die?)")
    }

    /// Waits at most `timeout` for the child's next control line.
    pub fn recv(&mut self, timeout: Duration) -> Result<String> {
        match self.lines.recv_timeout(timeout) {
            Ok(line) => Ok(line),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                bail!("the child did not answer within {timeout:?}")
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = self.wait_exit(Duration::from_secs(2)).ok();
                Err(anyhow!(
                    "the child closed its output (exit status: {})",
                    status.map_or("still running".to_owned(), |s| s.to_string())
                ))
            }
        }
    }

    /// Waits for a line starting with `word` (an `err ...` line becomes the error).
    pub fn expect(&mut self, word: &str, timeout: Duration) -> Result<String> {
        let line = self.recv(timeout)?;
        if let Some(rest) = line.strip_prefix(word) {
            return Ok(rest.trim().to_owned());
        }
        match line.strip_prefix("err ") {
            Some(e) => Err(ChildError(e.to_owned()).into()),
            None => bail!("the child said {line:?}, expected {word:?}"),
        }
    }

    /// Kills the child at once and reaps it.
    pub fn kill(&mut self) {
        self.stdin = None;
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Closes the control pipe and waits at most `timeout` for the child to exit.
    pub fn finish(&mut self, timeout: Duration) -> Result<ExitStatus> {
        self.stdin = None;
        self.wait_exit(timeout)
    }

    fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().context("waiting for the child")? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!("the child did not exit within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.stdin = None;
        if let Ok(None) = self.child.try_wait() {
            // Give it a moment to exit on its own (end of its input), then kill it.
            let _ = self.wait_exit(Duration::from_secs(2));
            if let Ok(None) = self.child.try_wait() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
    }
}

/// The child's side of the pipe.
pub struct Control {
    lines: std::io::Lines<std::io::StdinLock<'static>>,
}

impl Control {
    /// The pipe of this (child) process.
    pub fn new() -> Self {
        Self {
            lines: std::io::stdin().lock().lines(),
        }
    }

    /// The next command, or `None` when the lead closed the pipe.
    pub fn next(&mut self) -> Result<Option<String>> {
        match self.lines.next() {
            None => Ok(None),
            Some(line) => Ok(Some(line.context("reading the control pipe")?)),
        }
    }

    /// Sends one control line.
    pub fn say(&self, line: &str) -> Result<()> {
        let mut out = std::io::stdout().lock();
        writeln!(out, "@{line}")
            .and_then(|()| out.flush())
            .context("writing the control pipe")
    }
}
