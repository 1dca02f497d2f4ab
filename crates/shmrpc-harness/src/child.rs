//! A child process with a line protocol on its stdout, killed on drop, under one watchdog.

use std::fmt;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How many of the child's last lines an error message quotes.
const QUOTED_LINES: usize = 20;

/// How long a wait that saw the child's output end gives it to exit (to report its status).
const EXIT_GRACE: Duration = Duration::from_secs(1);

/// The child and what the watchdog did to it, shared with the watchdog thread and
/// [`KillHandle`]s.
#[derive(Debug)]
struct Shared {
    child: Child,
    /// The watchdog killed the child (its limit).
    fired: Option<Duration>,
}

fn lock(m: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Options for [`ChildProcess`]; start with [`ChildProcess::builder`].
#[derive(Debug)]
pub struct Builder {
    cmd: Command,
    label: Option<String>,
    marker: Option<String>,
    error_prefix: Option<String>,
    watchdog: Option<Duration>,
}

impl Builder {
    /// A name for the child in error messages (default: the program's file name, its first
    /// argument and its pid, e.g. `peer stream (pid 4242)`).
    pub fn label(mut self, label: impl Into<String>) -> Self {
        self.label = Some(label.into());
        self
    }

    /// Only stdout lines starting with `marker` are protocol lines (seen without the
    /// marker); the others (a library's log output, say) are copied to stderr. Default:
    /// every line is a protocol line.
    pub fn marker(mut self, marker: impl Into<String>) -> Self {
        self.marker = Some(marker.into());
        self
    }

    /// A protocol line starting with `prefix` is the child reporting a failure:
    /// [`ChildProcess::expect`] returns it as [`RecvError::Reported`] (unless the expected
    /// prefix itself matches the line). Default: none.
    pub fn error_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.error_prefix = Some(prefix.into());
        self
    }

    /// Bounds the child's life: `limit` after the spawn, the child is SIGKILLed (unless it
    /// ended already) and every later or ongoing wait on the handle fails with a watchdog
    /// error. Default: no bound beyond each call's own timeout.
    pub fn watchdog(mut self, limit: Duration) -> Self {
        self.watchdog = Some(limit);
        self
    }

    /// Starts the child, stdin and stdout piped, stderr inherited.
    ///
    /// # Errors
    /// The program could not be started, or the stdout reader thread could not be spawned
    /// (the child is then killed).
    pub fn spawn(mut self) -> Result<ChildProcess, SpawnError> {
        let program = self.cmd.get_program().to_string_lossy().into_owned();
        let first = self
            .cmd
            .get_args()
            .next()
            .map(|a| a.to_string_lossy().into_owned());
        let spawn_error = |source| SpawnError {
            program: program.clone(),
            source,
        };
        let mut child = self
            .cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(spawn_error)?;
        let pid = child.id();
        let label = self.label.unwrap_or_else(|| {
            let name = std::path::Path::new(&program)
                .file_name()
                .map_or(program.clone(), |n| n.to_string_lossy().into_owned());
            match &first {
                Some(a) => format!("{name} {a} (pid {pid})"),
                None => format!("{name} (pid {pid})"),
            }
        });
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let shared = Arc::new(Mutex::new(Shared { child, fired: None }));
        let kill_now = |e| {
            let mut s = lock(&shared);
            let _ = s.child.kill();
            let _ = s.child.wait();
            spawn_error(e)
        };
        let (tx, lines) = mpsc::channel();
        if let Some(stdout) = stdout {
            let marker = self.marker;
            let who = label.clone();
            std::thread::Builder::new()
                .name("child-stdout".into())
                .spawn(move || read_lines(stdout, marker.as_deref(), &who, &tx))
                .map_err(kill_now)?;
        }
        let stop_watchdog = match self.watchdog {
            None => None,
            Some(limit) => {
                let (stop, stopped) = mpsc::channel::<()>();
                let shared = shared.clone();
                std::thread::Builder::new()
                    .name("child-watchdog".into())
                    .spawn(move || {
                        if stopped.recv_timeout(limit) == Err(mpsc::RecvTimeoutError::Timeout) {
                            let mut s = lock(&shared);
                            if let Ok(None) = s.child.try_wait() {
                                s.fired = Some(limit);
                                let _ = s.child.kill();
                            }
                        }
                    })
                    .map_err(kill_now)?;
                Some(stop)
            }
        };
        Ok(ChildProcess {
            shared,
            stdin,
            lines,
            seen: Vec::new(),
            pid,
            label,
            error_prefix: self.error_prefix,
            _stop_watchdog: stop_watchdog,
        })
    }
}

/// Sends each protocol line of `out` to `tx` until end of output (or the handle is gone).
fn read_lines(out: impl std::io::Read, marker: Option<&str>, who: &str, tx: &mpsc::Sender<String>) {
    let mut out = BufReader::new(out);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match out.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let text = String::from_utf8_lossy(&buf);
        let line = text.trim_end_matches(['\n', '\r']);
        let line = match marker {
            None => line,
            Some(m) => match line.strip_prefix(m) {
                Some(l) => l,
                None => {
                    eprintln!("{who}: {line}");
                    continue;
                }
            },
        };
        if tx.send(line.to_owned()).is_err() {
            return;
        }
    }
}

/// A running child process whose stdout is a line protocol. Dropping it SIGKILLs the child
/// (if it still runs) and reaps it, so nothing is left behind even when the caller fails.
#[derive(Debug)]
pub struct ChildProcess {
    shared: Arc<Mutex<Shared>>,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    /// Every protocol line received so far.
    seen: Vec<String>,
    pid: u32,
    label: String,
    error_prefix: Option<String>,
    /// Dropping this stops the watchdog thread.
    _stop_watchdog: Option<mpsc::Sender<()>>,
}

impl ChildProcess {
    /// Options for running `cmd` (its stdio is replaced by pipes).
    pub fn builder(cmd: Command) -> Builder {
        Builder {
            cmd,
            label: None,
            marker: None,
            error_prefix: None,
            watchdog: None,
        }
    }

    /// Runs `cmd` with the default options (every line a protocol line, no error prefix, no
    /// watchdog).
    ///
    /// # Errors
    /// As [`Builder::spawn`].
    pub fn spawn(cmd: Command) -> Result<Self, SpawnError> {
        Self::builder(cmd).spawn()
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The child's name in error messages.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// A handle that can kill the child from another thread.
    pub fn kill_handle(&self) -> KillHandle {
        KillHandle {
            shared: Arc::downgrade(&self.shared),
        }
    }

    /// Sends one line to the child's stdin.
    ///
    /// # Errors
    /// The input was closed by [`close_input`](Self::close_input), or writing failed (the
    /// child is gone).
    pub fn send(&mut self, line: &str) -> Result<(), SendError> {
        let stdin = self.stdin.as_mut().ok_or_else(|| SendError::Closed {
            child: self.label.clone(),
        })?;
        writeln!(stdin, "{line}")
            .and_then(|()| stdin.flush())
            .map_err(|source| SendError::Write {
                child: self.label.clone(),
                source,
            })
    }

    /// Closes the child's stdin (it reads end of input).
    pub fn close_input(&mut self) {
        self.stdin = None;
    }

    /// The next protocol line, waiting at most `timeout`. Error lines are returned like any
    /// other line.
    ///
    /// # Errors
    /// [`RecvError::TimedOut`], [`RecvError::Exited`] (its output ended) or
    /// [`RecvError::Watchdog`].
    pub fn recv(&mut self, timeout: Duration) -> Result<String, RecvError> {
        self.next_line(timeout, None)
    }

    /// Waits at most `timeout` for a protocol line starting with `prefix` and returns it
    /// (whole). Lines before it are skipped (they stay in [`lines`](Self::lines) and are
    /// quoted in errors).
    ///
    /// # Errors
    /// [`RecvError::Reported`] for an error line (see [`Builder::error_prefix`]), or as
    /// [`recv`](Self::recv).
    pub fn expect(&mut self, prefix: &str, timeout: Duration) -> Result<String, RecvError> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.next_line(left, Some((prefix, timeout)))?;
            if line.starts_with(prefix) {
                return Ok(line);
            }
            let reported = self
                .error_prefix
                .as_deref()
                .and_then(|e| line.strip_prefix(e));
            if let Some(message) = reported {
                return Err(RecvError::Reported {
                    child: self.label.clone(),
                    expected: prefix.to_owned(),
                    message: message.to_owned(),
                });
            }
        }
    }

    fn next_line(
        &mut self,
        timeout: Duration,
        expected: Option<(&str, Duration)>,
    ) -> Result<String, RecvError> {
        let received = self.lines.recv_timeout(timeout);
        let context = || Context {
            child: self.label.clone(),
            expected: expected.map(|(p, _)| p.to_owned()),
            last_lines: self.seen[self.seen.len().saturating_sub(QUOTED_LINES)..].to_vec(),
        };
        let err = match received {
            Ok(line) => {
                self.seen.push(line.clone());
                return Ok(line);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => match self.fired() {
                Some(limit) => RecvError::Watchdog {
                    limit,
                    context: context(),
                },
                None => RecvError::TimedOut {
                    waited: expected.map_or(timeout, |(_, t)| t),
                    context: context(),
                },
            },
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = self.poll_exit(EXIT_GRACE);
                match self.fired() {
                    Some(limit) => RecvError::Watchdog {
                        limit,
                        context: context(),
                    },
                    None => RecvError::Exited {
                        status,
                        context: context(),
                    },
                }
            }
        };
        Err(err)
    }

    fn fired(&self) -> Option<Duration> {
        lock(&self.shared).fired
    }

    /// The exit status if the child ends within `timeout` (polling; never blocks longer).
    fn poll_exit(&self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = lock(&self.shared).child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Every protocol line received so far, after taking in those already waiting (without
    /// blocking).
    pub fn lines(&mut self) -> &[String] {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
        &self.seen
    }

    /// Closes the child's stdin and waits at most `timeout` for it to exit. A child still
    /// running after that is left running (dropping the handle kills it).
    ///
    /// # Errors
    /// [`WaitError::TimedOut`]; [`WaitError::Watchdog`] if the watchdog killed it;
    /// [`WaitError::Wait`] if waiting failed.
    pub fn finish(&mut self, timeout: Duration) -> Result<ExitStatus, WaitError> {
        self.stdin = None;
        let deadline = Instant::now() + timeout;
        loop {
            let mut s = lock(&self.shared);
            match s.child.try_wait() {
                Ok(Some(status)) => {
                    return match s.fired {
                        Some(limit) => Err(WaitError::Watchdog {
                            child: self.label.clone(),
                            limit,
                            status,
                        }),
                        None => Ok(status),
                    }
                }
                Ok(None) if Instant::now() < deadline => {}
                Ok(None) => {
                    return Err(WaitError::TimedOut {
                        child: self.label.clone(),
                        waited: timeout,
                    })
                }
                Err(source) => {
                    return Err(WaitError::Wait {
                        child: self.label.clone(),
                        source,
                    })
                }
            }
            drop(s);
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// SIGKILLs the child (unless it ended already), reaps it and returns how it ended:
    /// killed by signal 9, or its own exit status if it had exited before.
    ///
    /// # Errors
    /// Waiting for the child failed.
    pub fn kill(&mut self) -> std::io::Result<ExitStatus> {
        let mut s = lock(&self.shared);
        // Kill on an already reaped child is a no-op in std (it never signals a reused pid).
        let _ = s.child.kill();
        let status = s.child.wait();
        // Only now: a child that sees end of input may exit on its own, in an orderly way
        // (removing its files), which is not what a kill is meant to test.
        self.stdin = None;
        status
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

/// Kills a [`ChildProcess`] from another thread (e.g. a test's watchdog). Holding one does
/// not keep the child's handle alive; once the handle is dropped, this does nothing.
#[derive(Debug, Clone)]
pub struct KillHandle {
    shared: std::sync::Weak<Mutex<Shared>>,
}

impl KillHandle {
    /// SIGKILLs the child if its handle still exists and it has not been reaped (the owner
    /// reaps it). Never signals a reused pid.
    pub fn kill(&self) {
        if let Some(shared) = self.shared.upgrade() {
            let _ = lock(&shared).child.kill();
        }
    }
}

/// Where a wait for a line stood when it failed (for the error message).
#[derive(Debug, Clone)]
pub struct Context {
    /// The child's label.
    pub child: String,
    /// The prefix awaited, if any.
    pub expected: Option<String>,
    /// The last protocol lines received (at most 20).
    pub last_lines: Vec<String>,
}

impl fmt::Display for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.child)?;
        if let Some(p) = &self.expected {
            write!(f, "waiting for a line starting with {p:?}: ")?;
        }
        Ok(())
    }
}

/// The child could not be started.
#[derive(Debug)]
pub struct SpawnError {
    /// The program.
    pub program: String,
    /// Why.
    pub source: std::io::Error,
}

impl fmt::Display for SpawnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "could not start {}", self.program)
    }
}

impl std::error::Error for SpawnError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// A line could not be sent to the child.
#[derive(Debug)]
pub enum SendError {
    /// Its input was closed by [`ChildProcess::close_input`].
    Closed {
        /// The child's label.
        child: String,
    },
    /// Writing failed (the child is gone or closed its stdin).
    Write {
        /// The child's label.
        child: String,
        /// Why.
        source: std::io::Error,
    },
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Closed { child } => write!(f, "{child}: its input is already closed"),
            Self::Write { child, .. } => write!(f, "{child}: writing to its input (did it die?)"),
        }
    }
}

impl std::error::Error for SendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Closed { .. } => None,
            Self::Write { source, .. } => Some(source),
        }
    }
}

/// No (matching) line came from the child.
#[derive(Debug)]
pub enum RecvError {
    /// Nothing (matching) arrived in time; the child may still run.
    TimedOut {
        /// How long the call waited.
        waited: Duration,
        /// Where it stood.
        context: Context,
    },
    /// The child's output ended: it exited (with `status`) or closed its stdout (`None`:
    /// still running a moment later).
    Exited {
        /// How it ended, if it did.
        status: Option<ExitStatus>,
        /// Where it stood.
        context: Context,
    },
    /// The child printed an error line (see [`Builder::error_prefix`]).
    Reported {
        /// The child's label.
        child: String,
        /// The prefix awaited.
        expected: String,
        /// The error line after the error prefix.
        message: String,
    },
    /// The watchdog killed the child.
    Watchdog {
        /// The child's lifetime limit.
        limit: Duration,
        /// Where it stood.
        context: Context,
    },
}

fn quote(f: &mut fmt::Formatter<'_>, lines: &[String]) -> fmt::Result {
    if lines.is_empty() {
        write!(f, "; it printed nothing")
    } else {
        write!(f, "; its last lines: {lines:?}")
    }
}

impl fmt::Display for RecvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TimedOut { waited, context } => {
                write!(f, "{context}nothing within {waited:?}")?;
                quote(f, &context.last_lines)
            }
            Self::Exited { status, context } => {
                match status {
                    Some(s) => write!(f, "{context}it exited ({s})")?,
                    None => write!(f, "{context}it closed its output (still running)")?,
                }
                quote(f, &context.last_lines)
            }
            Self::Reported {
                child,
                expected,
                message,
            } => write!(
                f,
                "{child}: waiting for a line starting with {expected:?}: it reported an error: {message}"
            ),
            Self::Watchdog { limit, context } => {
                write!(f, "watchdog: {context}killed after {limit:?}")?;
                quote(f, &context.last_lines)
            }
        }
    }
}

impl std::error::Error for RecvError {}

/// The child did not end cleanly within the bound.
#[derive(Debug)]
pub enum WaitError {
    /// Still running after the wait.
    TimedOut {
        /// The child's label.
        child: String,
        /// How long the call waited.
        waited: Duration,
    },
    /// The watchdog killed it.
    Watchdog {
        /// The child's label.
        child: String,
        /// Its lifetime limit.
        limit: Duration,
        /// Its status (killed by SIGKILL).
        status: ExitStatus,
    },
    /// Waiting failed.
    Wait {
        /// The child's label.
        child: String,
        /// Why.
        source: std::io::Error,
    },
}

impl fmt::Display for WaitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TimedOut { child, waited } => {
                write!(f, "{child}: did not exit within {waited:?}")
            }
            Self::Watchdog { child, limit, .. } => {
                write!(f, "watchdog: {child}: killed after {limit:?}")
            }
            Self::Wait { child, .. } => write!(f, "{child}: waiting for it to exit"),
        }
    }
}

impl std::error::Error for WaitError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Wait { source, .. } => Some(source),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    const LONG: Duration = Duration::from_secs(30);

    fn sh(script: &str) -> Builder {
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", script]);
        ChildProcess::builder(cmd)
    }

    #[test]
    fn expect_skips_other_lines_and_returns_the_whole_match() {
        let mut c = sh("echo starting; echo ready port=5; echo done")
            .spawn()
            .unwrap();
        assert_eq!(c.expect("ready", LONG).unwrap(), "ready port=5");
        assert_eq!(c.expect("done", LONG).unwrap(), "done");
        assert_eq!(c.lines(), ["starting", "ready port=5", "done"]);
        assert!(c.finish(LONG).unwrap().success());
    }

    #[test]
    fn end_of_output_fails_with_the_exit_status_and_the_last_lines() {
        let mut c = sh("echo partial; exit 3").spawn().unwrap();
        let e = c.expect("ready", LONG).unwrap_err();
        match &e {
            RecvError::Exited {
                status: Some(s),
                context,
            } => {
                assert_eq!(s.code(), Some(3));
                assert_eq!(context.last_lines, ["partial"]);
                assert_eq!(context.expected.as_deref(), Some("ready"));
            }
            other => panic!("{other:?}"),
        }
        let msg = e.to_string();
        assert!(
            msg.contains("\"ready\"") && msg.contains("partial"),
            "{msg}"
        );
    }

    #[test]
    fn an_error_line_ends_expect_unless_it_is_what_was_expected() {
        let mut c = sh("echo 'err first'; echo 'err second'; echo 'ok'")
            .error_prefix("err ")
            .spawn()
            .unwrap();
        match c.expect("ok", LONG) {
            Err(RecvError::Reported { message, .. }) => assert_eq!(message, "first"),
            other => panic!("{other:?}"),
        }
        assert_eq!(c.expect("err", LONG).unwrap(), "err second");
        assert_eq!(c.expect("ok", LONG).unwrap(), "ok");
        // recv returns error lines like any other.
        let mut c = sh("echo 'err x'").error_prefix("err ").spawn().unwrap();
        assert_eq!(c.recv(LONG).unwrap(), "err x");
    }

    #[test]
    fn send_and_receive_through_cat_and_time_out_on_silence() {
        let mut c = ChildProcess::spawn(Command::new("cat")).unwrap();
        match c.recv(Duration::from_millis(50)) {
            Err(RecvError::TimedOut { waited, .. }) => {
                assert_eq!(waited, Duration::from_millis(50));
            }
            other => panic!("{other:?}"),
        }
        c.send("hello there").unwrap();
        assert_eq!(c.expect("hello", LONG).unwrap(), "hello there");
        c.close_input();
        assert!(matches!(c.send("late"), Err(SendError::Closed { .. })));
        match c.recv(LONG) {
            Err(RecvError::Exited {
                status: Some(s), ..
            }) => assert!(s.success()),
            other => panic!("{other:?}"),
        }
        assert!(c.finish(LONG).unwrap().success());
    }

    #[test]
    fn the_marker_separates_protocol_lines_from_log_lines() {
        let mut c = sh("echo 'a log line'; echo '@ready'; echo '@err bad'")
            .marker("@")
            .error_prefix("err ")
            .spawn()
            .unwrap();
        assert_eq!(c.expect("ready", LONG).unwrap(), "ready");
        assert!(matches!(
            c.expect("done", LONG),
            Err(RecvError::Reported { message, .. }) if message == "bad"
        ));
        assert_eq!(c.lines(), ["ready", "err bad"]);
    }

    #[test]
    fn the_watchdog_kills_a_hung_child_and_every_wait_fails_clearly() {
        let mut c = sh("echo started; exec sleep 60")
            .label("sleeper")
            .watchdog(Duration::from_millis(200))
            .spawn()
            .unwrap();
        let e = c.expect("never", Duration::from_secs(60)).unwrap_err();
        assert!(matches!(e, RecvError::Watchdog { .. }), "{e:?}");
        let msg = e.to_string();
        assert!(msg.starts_with("watchdog: sleeper"), "{msg}");
        assert!(msg.contains("started"), "{msg}");
        match c.finish(Duration::from_secs(60)) {
            Err(WaitError::Watchdog { status, limit, .. }) => {
                assert_eq!(status.signal(), Some(9));
                assert_eq!(limit, Duration::from_millis(200));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_watchdog_leaves_a_child_that_finished_alone() {
        let mut c = sh("echo ok")
            .watchdog(Duration::from_secs(3600))
            .spawn()
            .unwrap();
        assert_eq!(c.expect("ok", LONG).unwrap(), "ok");
        assert!(c.finish(LONG).unwrap().success());
    }

    #[test]
    fn drop_kills_and_reaps() {
        let c = ChildProcess::spawn({
            let mut cmd = Command::new("sleep");
            cmd.arg("60");
            cmd
        })
        .unwrap();
        let proc_dir = format!("/proc/{}", c.pid());
        assert!(std::path::Path::new(&proc_dir).exists());
        drop(c);
        // Reaped, not a zombie: the pid is gone.
        assert!(!std::path::Path::new(&proc_dir).exists());
    }

    #[test]
    fn kill_reports_the_signal_or_the_earlier_exit() {
        let mut c = ChildProcess::spawn(Command::new("cat")).unwrap();
        assert_eq!(c.kill().unwrap().signal(), Some(9));
        // Again: the same status, no second signal.
        assert_eq!(c.kill().unwrap().signal(), Some(9));
        let mut c = sh("exit 4").spawn().unwrap();
        assert!(matches!(c.recv(LONG), Err(RecvError::Exited { .. })));
        assert_eq!(c.kill().unwrap().code(), Some(4));
    }

    #[test]
    fn a_kill_handle_unblocks_a_waiting_owner() {
        let mut c = ChildProcess::spawn(Command::new("cat")).unwrap();
        let handle = c.kill_handle();
        let killer = std::thread::spawn(move || handle.kill());
        match c.recv(Duration::from_secs(60)) {
            Err(RecvError::Exited {
                status: Some(s), ..
            }) => assert_eq!(s.signal(), Some(9)),
            other => panic!("{other:?}"),
        }
        killer.join().unwrap();
        let handle = c.kill_handle();
        drop(c);
        handle.kill(); // the handle is gone: nothing to do
    }

    #[test]
    fn the_default_label_names_program_role_and_pid() {
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", "exit 0"]);
        let c = ChildProcess::spawn(cmd).unwrap();
        assert_eq!(c.label(), format!("sh -c (pid {})", c.pid()));
    }

    #[test]
    fn a_missing_program_is_a_spawn_error() {
        let e = ChildProcess::spawn(Command::new("/nonexistent/program")).unwrap_err();
        assert_eq!(e.program, "/nonexistent/program");
        assert_eq!(e.source.kind(), std::io::ErrorKind::NotFound);
    }
}
