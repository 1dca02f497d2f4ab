//! The second process: this binary re-executed with a hidden subcommand, and a line-based
//! control pipe to it (its stdin and stdout). The pipe carries only control messages
//! ("run this case", "done"); everything measured goes through shared memory.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};

/// A running peer process. Dropping it kills the process if it is still running.
pub struct Peer {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    what: String,
}

impl Peer {
    /// Starts this binary with `args`, its stdin and stdout connected to us.
    pub fn spawn(args: &[String]) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("cannot find this executable")?;
        let mut child = Command::new(&exe)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {} {}", exe.display(), args.join(" ")))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().context("child stdout")?;
        let (tx, lines) = mpsc::channel();
        std::thread::Builder::new()
            .name("peer-stdout".into())
            .spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            })
            .context("spawning the pipe reader")?;
        Ok(Self {
            child,
            stdin,
            lines,
            what: args.first().cloned().unwrap_or_default(),
        })
    }

    /// The peer's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends one control line.
    pub fn send(&mut self, line: &str) -> anyhow::Result<()> {
        let stdin = self.stdin.as_mut().context("control pipe already closed")?;
        writeln!(stdin, "{line}")
            .and_then(|()| stdin.flush())
            .with_context(|| format!("writing to the {} process (did it die?)", self.what))
    }

    /// Closes the control pipe (the peer sees end of input).
    pub fn close_input(&mut self) {
        self.stdin = None;
    }

    /// Receives one control line, waiting at most `timeout`.
    pub fn recv(&mut self, timeout: Duration) -> anyhow::Result<String> {
        match self.lines.recv_timeout(timeout) {
            Ok(line) => Ok(line),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                bail!(
                    "the {} process did not answer within {timeout:?}",
                    self.what
                )
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = self.wait_exit(Duration::from_secs(2)).ok();
                Err(anyhow!(
                    "the {} process closed its output (exit status: {})",
                    self.what,
                    status.map_or("still running".to_owned(), |s| s.to_string())
                ))
            }
        }
    }

    /// Receives one line and checks that it starts with `word`; returns the rest.
    pub fn expect(&mut self, word: &str, timeout: Duration) -> anyhow::Result<String> {
        let line = self.recv(timeout)?;
        match line.strip_prefix(word) {
            Some(rest) => Ok(rest.trim().to_owned()),
            None => bail!("the {} process said {line:?}, expected {word:?}", self.what),
        }
    }

    /// Waits at most `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().context("waiting for the peer")? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!("the {} process did not exit within {timeout:?}", self.what);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.stdin = None;
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The peer's side of the control pipe: lines on stdin, answers on stdout.
pub struct Control {
    lines: std::io::Lines<std::io::StdinLock<'static>>,
    out: std::io::Stdout,
}

impl Default for Control {
    fn default() -> Self {
        Self::new()
    }
}

impl Control {
    /// The control pipe of this (peer) process.
    pub fn new() -> Self {
        Self {
            lines: std::io::stdin().lock().lines(),
            out: std::io::stdout(),
        }
    }

    /// The next command, or `None` at end-of-file (the parent is gone or done).
    pub fn next_line(&mut self) -> anyhow::Result<Option<String>> {
        match self.lines.next() {
            None => Ok(None),
            Some(line) => Ok(Some(line.context("reading the control pipe")?)),
        }
    }

    /// Sends one answer line.
    pub fn send(&mut self, line: &str) -> anyhow::Result<()> {
        let mut out = self.out.lock();
        writeln!(out, "{line}")
            .and_then(|()| out.flush())
            .context("writing the control pipe")
    }
}
