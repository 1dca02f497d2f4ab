//! Runs `shmrpc serve`, `call`, `ls` and `cleanup` as a user would: spawns the binary,
//! checks its output and exit status. A server killed with SIGKILL leaves its socket and
//! lock behind; `ls` must call it stale and `cleanup` must remove it while keeping a live
//! server's files (which then still answers calls).
//!
//! Each test gives its processes a private runtime directory (`XDG_RUNTIME_DIR`), so the
//! tests, which run in parallel, never see each other's servers, and `cleanup` runs with a
//! test-specific `--prefix`, so it never reclaims another test's (or another program's)
//! stale segments. Every wait has a watchdog; processes are killed and files removed by
//! guards even when a test fails. No timing decides a pass or a failure.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use rustix::process::{kill_process, Pid, Signal};
use serde_json::Value;
use shmrpc::lowlevel::sys::{Segment, SegmentStatus};

/// Watchdog on every command and every wait for a line or an exit.
const LIMIT: Duration = Duration::from_secs(30);

const BIN: &str = env!("CARGO_BIN_EXE_shmrpc");

/// A finished command.
struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Run {
    fn ok(&self) -> bool {
        self.status.success()
    }

    fn lines(&self) -> Vec<&str> {
        self.stdout.lines().collect()
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", self.describe()))
    }

    fn describe(&self) -> String {
        format!(
            "status {:?}\n--- stdout\n{}--- stderr\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// A private runtime directory for one test's processes; removed (with everything in it)
/// when the test ends. Declare it first in a test so that it is dropped last, after the
/// guards of the processes using it.
struct RuntimeDir(PathBuf);

impl RuntimeDir {
    fn new(word: &str) -> Self {
        let path = std::env::temp_dir().join(format!("shmrpc-ops-{}-{word}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create runtime dir");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700)).unwrap();
        Self(path)
    }

    /// Where the servers' sockets and locks go.
    fn sockets(&self) -> PathBuf {
        self.0.join("shmrpc")
    }

    /// The file names in the socket directory, sorted.
    fn files(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.sockets())
            .map(|d| {
                d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args(args)
            .env("XDG_RUNTIME_DIR", &self.0)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }

    /// Runs `shmrpc args…` to the end (killed after [`LIMIT`]).
    fn run(&self, args: &[&str]) -> Run {
        self.run_with_input(args, None)
    }

    fn run_with_input(&self, args: &[&str], input: Option<&str>) -> Run {
        let mut cmd = self.command(args);
        cmd.stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        let mut child = cmd.spawn().expect("start shmrpc");
        if let Some(text) = input {
            let mut stdin = child.stdin.take().unwrap();
            stdin.write_all(text.as_bytes()).unwrap();
        }
        let out = drain(child.stdout.take().unwrap());
        let err = drain(child.stderr.take().unwrap());
        let status = wait_or_kill(&mut child, &format!("shmrpc {}", args.join(" ")));
        Run {
            status,
            stdout: out.join().unwrap(),
            stderr: err.join().unwrap(),
        }
    }

    /// Starts `shmrpc args…` in the background; its stdout comes line by line.
    fn spawn(&self, args: &[&str]) -> Spawned {
        let mut child = self
            .command(args)
            .stdin(Stdio::null())
            .spawn()
            .expect("start shmrpc");
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let err = drain(child.stderr.take().unwrap());
        Spawned {
            child: Some(child),
            what: args.join(" "),
            lines,
            err: Some(err),
            stderr: String::new(),
        }
    }

    /// Starts `shmrpc serve args…` and waits for its ready line.
    fn serve(&self, args: &[&str]) -> (Spawned, String) {
        let mut a = vec!["serve"];
        a.extend_from_slice(args);
        let mut s = self.spawn(&a);
        let ready = s.next_line();
        (s, ready)
    }
}

impl Drop for RuntimeDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Reads a pipe to its end on a thread.
fn drain(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = r.read_to_string(&mut s);
        s
    })
}

/// Waits for `child` to exit; kills it and fails the test after [`LIMIT`].
fn wait_or_kill(child: &mut Child, what: &str) -> ExitStatus {
    let deadline = Instant::now() + LIMIT;
    loop {
        if let Some(s) = child.try_wait().expect("wait") {
            return s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish within {LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A background `shmrpc` process; killed (SIGKILL) on drop if still running.
struct Spawned {
    child: Option<Child>,
    what: String,
    lines: Receiver<String>,
    /// The thread reading its stderr, until it is joined (after the exit).
    err: Option<std::thread::JoinHandle<String>>,
    stderr: String,
}

impl Spawned {
    fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Its next line of output (watchdog: [`LIMIT`]).
    fn next_line(&mut self) -> String {
        match self.lines.recv_timeout(LIMIT) {
            Ok(l) => l,
            Err(e) => {
                if let Some(mut c) = self.child.take() {
                    let _ = c.kill();
                    let _ = c.wait();
                }
                let stderr = self.stderr();
                panic!(
                    "no line from `shmrpc {}` ({e:?}); stderr:\n{stderr}",
                    self.what
                )
            }
        }
    }

    fn signal(&self, sig: Signal) {
        let pid = Pid::from_raw(self.pid() as i32).expect("pid");
        kill_process(pid, sig).expect("kill");
    }

    /// Waits for it to exit (watchdog: [`LIMIT`]); returns its status and the rest of its
    /// stdout.
    fn wait(&mut self) -> (ExitStatus, Vec<String>) {
        let mut child = self.child.take().expect("running");
        let status = wait_or_kill(&mut child, &format!("shmrpc {}", self.what));
        // Its stdout is closed now: the reader thread ends, and so does this.
        let rest = std::iter::from_fn(|| self.lines.recv_timeout(LIMIT).ok()).collect();
        (status, rest)
    }

    /// Its stderr, once it has exited.
    fn stderr(&mut self) -> String {
        if self.child.is_some() {
            return "(still running)".into();
        }
        if let Some(t) = self.err.take() {
            self.stderr = t.join().unwrap_or_default();
        }
        self.stderr.clone()
    }

    /// SIGKILL, and wait for it to be gone.
    fn kill9(&mut self) {
        self.signal(Signal::KILL);
        let (status, _) = self.wait();
        assert!(!status.success());
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A unique name for this test process and `word`.
fn name(word: &str) -> String {
    format!("ops-{}-{word}", std::process::id())
}

/// The entry of `ls --format json` with this kind and name.
fn entry<'a>(ls: &'a Value, kind: &str, name: &str) -> Option<&'a Value> {
    ls.as_array()
        .expect("ls --format json prints an array")
        .iter()
        .find(|e| e["kind"] == kind && e["name"] == name)
}

#[test]
fn every_subcommand_has_help() {
    let dir = RuntimeDir::new("help");
    for (sub, needles) in [
        (
            "serve",
            &[
                "--tcp",
                "echo",
                "chat",
                "--format",
                "--cert",
                "--client-ca",
                "--token-file",
            ][..],
        ),
        (
            "call",
            &[
                "--stream",
                "--timeout",
                "--tcp",
                "--format",
                "--ca",
                "--server-name",
            ][..],
        ),
        ("ls", &["--format", "STATE"][..]),
        ("cleanup", &["--dry-run", "--format"][..]),
        ("keygen", &["--out", "--name", "--days", "token"][..]),
    ] {
        let run = dir.run(&[sub, "--help"]);
        assert!(run.ok(), "{sub} --help: {}", run.describe());
        assert!(
            run.stdout.contains(&format!("shmrpc {sub}")),
            "{}",
            run.stdout
        );
        for n in needles {
            assert!(
                run.stdout.contains(n),
                "{sub} --help lacks {n}:\n{}",
                run.stdout
            );
        }
    }
    let top = dir.run(&["--help"]);
    for sub in ["serve", "call", "ls", "cleanup"] {
        assert!(top.stdout.contains(sub), "{}", top.stdout);
    }
}

#[test]
fn calls_from_the_shell() {
    let dir = RuntimeDir::new("calls");
    let n = name("calls");
    let (mut server, ready) = dir.serve(&[&n]);
    let sock = dir.sockets().join(format!("{n}.sock"));
    assert!(ready.contains(&n), "{ready}");
    assert!(ready.contains(&sock.display().to_string()), "{ready}");
    assert!(ready.contains(&format!("pid {}", server.pid())), "{ready}");

    // Unary calls: the answer is printed as JSON.
    let r = dir.run(&["call", &n, "echo", r#"{"x": [1, "two", null]}"#]);
    assert!(r.ok(), "{}", r.describe());
    assert_eq!(r.lines(), [r#"{"x":[1,"two",null]}"#]);
    let r = dir.run(&["call", &n, "add", r#"{"a": 2, "b": 40}"#]);
    assert!(r.ok(), "{}", r.describe());
    assert_eq!(r.lines(), ["42"]);
    let r = dir.run(&["call", &n, "echo"]);
    assert_eq!(r.lines(), ["null"], "the default body is null");
    let r = dir.run_with_input(&["call", &n, "echo", "-"], Some("[1, 2.5]\n"));
    assert_eq!(r.lines(), ["[1,2.5]"], "`-` reads the body from stdin");

    // Failures: non-zero status, the code's name on stderr, nothing on stdout.
    let r = dir.run(&["call", &n, "no_such_method", "{}"]);
    assert!(!r.ok(), "{}", r.describe());
    assert!(r.stderr.contains("UnknownMethod"), "{}", r.describe());
    assert!(r.stdout.is_empty(), "{}", r.describe());
    let r = dir.run(&["call", &n, "add", r#"{"a": 1}"#]);
    assert!(
        !r.ok() && r.stderr.contains("BadRequest"),
        "{}",
        r.describe()
    );
    let r = dir.run(&["call", &n, "echo", "{not json"]);
    assert!(!r.ok() && r.stderr.contains("not JSON"), "{}", r.describe());
    let r = dir.run(&[
        "call",
        &name("nobody-serves-this"),
        "echo",
        "--connect-timeout",
        "100ms",
    ]);
    assert!(
        !r.ok() && r.stderr.contains("Unavailable"),
        "{}",
        r.describe()
    );

    // --format json wraps answers and errors.
    let r = dir.run(&["call", &n, "add", r#"{"a": 1, "b": 2}"#, "--format", "json"]);
    assert!(r.ok(), "{}", r.describe());
    let v = r.json();
    assert_eq!(
        (&v["ok"], &v["value"]),
        (&Value::Bool(true), &Value::from(3))
    );
    let r = dir.run(&["call", &n, "nope", "--format", "json"]);
    assert!(!r.ok());
    let v = r.json();
    assert_eq!(v["ok"], false);
    assert_eq!(v["code"], "UnknownMethod");
    assert!(v["message"].is_string());

    // Streaming: one line per item, in order.
    let words = "the quick brown fox jumps over the lazy dog";
    let body = format!(r#"{{"prompt": "{words}", "delay_ms": 1}}"#);
    let r = dir.run(&["call", &n, "chat", &body, "--stream"]);
    assert!(r.ok(), "{}", r.describe());
    let want: Vec<String> = words.split(' ').map(|w| format!("\"{w}\"")).collect();
    assert_eq!(r.lines(), want);
    let r = dir.run(&["call", &n, "chat", &body, "--stream", "--format", "json"]);
    assert!(r.ok(), "{}", r.describe());
    let got: Vec<Value> = r
        .lines()
        .iter()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .inspect(|v| assert_eq!(v["ok"], true))
        .map(|v| v["value"].clone())
        .collect();
    assert_eq!(got, words.split(' ').map(Value::from).collect::<Vec<_>>());

    // A stream that outlasts --timeout: the first word, then DeadlineExceeded. (The next
    // word is an hour away, so this does not depend on how fast the machine is.)
    let slow = r#"{"prompt": "first second", "delay_ms": 3600000}"#;
    let r = dir.run(&["call", &n, "chat", slow, "--stream", "--timeout", "300ms"]);
    assert!(!r.ok(), "{}", r.describe());
    assert_eq!(r.lines(), ["\"first\""]);
    assert!(r.stderr.contains("DeadlineExceeded"), "{}", r.describe());

    // SIGTERM: a clean exit that leaves nothing behind.
    server.signal(Signal::TERM);
    let (status, _) = server.wait();
    assert!(
        status.success(),
        "serve exited with {status:?}: {}",
        server.stderr()
    );
    assert_eq!(dir.files(), Vec::<String>::new());
}

#[test]
fn ls_and_cleanup_remove_a_killed_servers_files_and_keep_a_live_one() {
    let dir = RuntimeDir::new("cleanup");
    let (live, dead) = (name("live"), name("dead"));
    let prefix = name("");
    let (mut server, _) = dir.serve(&[&live]);
    let (mut victim, _) = dir.serve(&[&dead]);

    // Both alive, with their pids; a streaming caller shows as the live server's client.
    let mut caller = dir.spawn(&[
        "call",
        &live,
        "chat",
        r#"{"prompt": "one two", "delay_ms": 3600000}"#,
        "--stream",
    ]);
    assert_eq!(caller.next_line(), "\"one\"", "the caller is connected");
    let r = dir.run(&["ls", "--format", "json"]);
    assert!(r.ok(), "{}", r.describe());
    let ls = r.json();
    let l = entry(&ls, "server", &live).expect("live server listed");
    assert_eq!(l["state"], "alive");
    assert_eq!(l["pid"], server.pid());
    assert_eq!(l["clients"], 1);
    assert!(l["memory_bytes"].as_u64().unwrap() > 0);
    let sock = dir.sockets().join(format!("{live}.sock"));
    assert_eq!(l["path"], sock.to_str().unwrap());
    assert_eq!(entry(&ls, "server", &dead).unwrap()["state"], "alive");
    drop(caller);

    // kill -9: its socket and lock stay behind, and ls calls them stale.
    victim.kill9();
    let dead_files = [format!("{dead}.lock"), format!("{dead}.sock")];
    let live_files = [format!("{live}.lock"), format!("{live}.sock")];
    let all: Vec<String> = dead_files.iter().chain(&live_files).cloned().collect();
    assert_eq!(dir.files(), all, "the killed server left its files");
    let r = dir.run(&["ls"]);
    assert!(r.ok(), "{}", r.describe());
    let row = |name: &str| {
        r.lines()
            .into_iter()
            .find(|l| l.split_whitespace().nth(1) == Some(name))
            .unwrap_or_else(|| panic!("no row for {name}:\n{}", r.stdout))
            .split_whitespace()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        r.lines()[0].split_whitespace().collect::<Vec<_>>()[..5],
        ["KIND", "NAME", "PID", "STATE", "CLIENTS"]
    );
    let (l, d) = (row(&live), row(&dead));
    assert_eq!(
        (&l[0][..], &l[2], &l[3][..]),
        ("server", &server.pid().to_string(), "alive")
    );
    assert_eq!((&d[0][..], &d[2][..], &d[3][..]), ("server", "-", "stale"));
    let ls = dir.run(&["ls", "--format", "json"]).json();
    assert_eq!(entry(&ls, "server", &dead).unwrap()["state"], "stale");
    assert_eq!(entry(&ls, "server", &live).unwrap()["state"], "alive");

    // A dry run lists the dead server's files, not the live one's, and removes nothing.
    for args in [
        &["cleanup", "--dry-run"][..],
        &["cleanup", "--dry-run", "--prefix", &prefix],
    ] {
        let r = dir.run(args);
        assert!(r.ok(), "{}", r.describe());
        assert!(
            r.stdout
                .contains(&format!("would remove stale server {dead}")),
            "{}",
            r.stdout
        );
        assert!(!r.stdout.contains(&live), "{}", r.stdout);
    }
    let r = dir.run(&[
        "cleanup",
        "--dry-run",
        "--prefix",
        &prefix,
        "--format",
        "json",
    ]);
    let v = r.json();
    assert_eq!(v["dry_run"], true);
    let removed = v["removed"].as_array().unwrap();
    assert_eq!(removed.len(), 1, "{v}");
    assert_eq!(removed[0]["name"], dead.as_str());
    assert_eq!(removed[0]["paths"].as_array().unwrap().len(), 2);
    assert_eq!(dir.files(), all, "a dry run removes nothing");

    // The real thing: the dead server's files go, the live one's stay and it still serves.
    let r = dir.run(&["cleanup", "--prefix", &prefix]);
    assert!(r.ok(), "{}", r.describe());
    assert!(
        r.stdout.contains(&format!("removed stale server {dead}")),
        "{}",
        r.stdout
    );
    assert!(!r.stdout.contains(&live), "{}", r.stdout);
    assert_eq!(
        dir.files(),
        live_files,
        "only the live server's files are left"
    );
    let r = dir.run(&["call", &live, "add", r#"{"a": 20, "b": 22}"#]);
    assert!(r.ok(), "{}", r.describe());
    assert_eq!(r.lines(), ["42"]);
    let r = dir.run(&["cleanup", "--prefix", &prefix, "--format", "json"]);
    assert!(r.ok(), "{}", r.describe());
    assert_eq!(
        r.json()["removed"],
        Value::Array(vec![]),
        "nothing left to remove"
    );

    // SIGTERM: exit 0, nothing left; ls then shows nothing of ours.
    server.signal(Signal::TERM);
    let (status, _) = server.wait();
    assert!(
        status.success(),
        "serve exited with {status:?}: {}",
        server.stderr()
    );
    assert_eq!(dir.files(), Vec::<String>::new());
    let ls = dir.run(&["ls", "--format", "json"]).json();
    assert!(entry(&ls, "server", &live).is_none(), "{ls}");
}

#[test]
fn shutdown_ends_a_stream_in_flight_and_a_taken_name_is_refused() {
    let dir = RuntimeDir::new("shutdown");
    let n = name("shutdown");
    let (mut server, _) = dir.serve(&[&n]);

    // A second server on the same name is refused, and the first is undisturbed.
    let r = dir.run(&["serve", &n]);
    assert!(!r.ok(), "{}", r.describe());
    assert!(r.stderr.contains("already"), "{}", r.describe());
    // The error chain is printed once: each cause says its part, none repeats another.
    assert_eq!(r.stderr.matches("already").count(), 1, "{}", r.describe());

    let mut caller = dir.spawn(&[
        "call",
        &n,
        "chat",
        r#"{"prompt": "one two", "delay_ms": 3600000}"#,
        "--stream",
    ]);
    assert_eq!(caller.next_line(), "\"one\"");
    // SIGINT (Ctrl-C) with a stream in flight: the stream ends with ShuttingDown instead
    // of holding the shutdown up for an hour, and the server exits 0, leaving nothing.
    server.signal(Signal::INT);
    let (status, _) = server.wait();
    assert!(
        status.success(),
        "serve exited with {status:?}: {}",
        server.stderr()
    );
    let (status, rest) = caller.wait();
    assert!(!status.success());
    assert!(rest.is_empty(), "{rest:?}");
    assert!(
        caller.stderr().contains("ShuttingDown"),
        "{}",
        caller.stderr()
    );
    assert_eq!(dir.files(), Vec::<String>::new());
}

#[test]
fn serve_and_call_over_tcp() {
    let dir = RuntimeDir::new("tcp");
    let (mut server, ready) = dir.serve(&["--tcp", "127.0.0.1:0", "--format", "json"]);
    let ready: Value = serde_json::from_str(&ready).expect("the ready line is JSON");
    assert_eq!(ready["event"], "ready");
    assert_eq!(ready["pid"], server.pid());
    let addr = ready["tcp"].as_str().expect("address").to_owned();
    assert!(!addr.ends_with(":0"), "the real port is printed: {addr}");

    let r = dir.run(&["call", "--tcp", &addr, "add", r#"{"a": -5, "b": 0.5}"#]);
    assert!(r.ok(), "{}", r.describe());
    assert_eq!(r.lines(), ["-4.5"]);
    let r = dir.run(&[
        "call",
        "--tcp",
        &addr,
        "chat",
        r#"{"prompt": "over the wire", "delay_ms": 0}"#,
        "--stream",
    ]);
    assert!(r.ok(), "{}", r.describe());
    assert_eq!(r.lines(), ["\"over\"", "\"the\"", "\"wire\""]);

    server.signal(Signal::TERM);
    let (status, _) = server.wait();
    assert!(
        status.success(),
        "serve exited with {status:?}: {}",
        server.stderr()
    );
    assert_eq!(
        dir.files(),
        Vec::<String>::new(),
        "a TCP server makes no files"
    );
}

/// Unlinks a named segment when the test ends, whatever happened.
struct SegmentName(String);

impl Drop for SegmentName {
    fn drop(&mut self) {
        let _ = Segment::unlink(&self.0);
    }
}

const HELPER_ENV: &str = "SHMRPC_OPS_SEGMENT_OWNER";

/// Not a test: the process that creates a named segment and is then killed, so that the
/// segment's recorded owner is dead. Runs only when started by
/// `stale_segments_are_listed_and_reclaimed_and_live_ones_kept`.
#[test]
#[ignore = "helper process, started by another test"]
fn segment_owner_helper() {
    let Ok(name) = std::env::var(HELPER_ENV) else {
        return;
    };
    let _seg = Segment::create(&name, 64 * 1024).expect("create segment");
    println!("segment-ready");
    std::io::stdout().flush().unwrap();
    // Bounded: an orphaned helper exits on its own (and then removes its segment).
    std::thread::sleep(LIMIT * 2);
}

#[test]
fn stale_segments_are_listed_and_reclaimed_and_live_ones_kept() {
    let dir = RuntimeDir::new("segments");
    let prefix = name("seg-");
    let (live, stale) = (name("seg-live"), name("seg-stale"));
    let _guards = (SegmentName(live.clone()), SegmentName(stale.clone()));
    let live_seg = Segment::create(&live, 4096).expect("create live segment");

    // A helper process creates the other one and is killed.
    let mut helper = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "segment_owner_helper",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(HELPER_ENV, &stale)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start helper");
    let helper_pid = helper.id();
    let (tx, rx) = mpsc::channel();
    let out = helper.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut helper = Spawned {
        child: Some(helper),
        what: "segment owner helper".into(),
        lines: rx,
        err: None,
        stderr: String::new(),
    };
    // libtest prints it after its own "test segment_owner_helper ... ".
    while !helper.next_line().ends_with("segment-ready") {}
    helper.kill9();
    assert!(matches!(
        Segment::status(&stale),
        Ok(SegmentStatus::Stale(Some(p))) if p.pid == helper_pid
    ));

    let r = dir.run(&["ls", "--prefix", &prefix, "--format", "json"]);
    assert!(r.ok(), "{}", r.describe());
    let ls = r.json();
    assert_eq!(ls.as_array().unwrap().len(), 2, "{ls}");
    let l = entry(&ls, "segment", &live).expect("live segment listed");
    assert_eq!(l["state"], "alive");
    assert_eq!(l["pid"], std::process::id());
    assert_eq!(l["path"], live_seg.path().unwrap().to_str().unwrap());
    let s = entry(&ls, "segment", &stale).expect("stale segment listed");
    assert_eq!(s["state"], "stale");
    assert_eq!(s["pid"], helper_pid);
    assert!(s["memory_bytes"].as_u64().unwrap() >= 64 * 1024, "{s}");
    let r = dir.run(&["ls", "--prefix", &prefix]);
    assert!(
        r.stdout.contains(&stale) && r.stdout.contains("stale"),
        "{}",
        r.stdout
    );

    let r = dir.run(&["cleanup", "--dry-run", "--prefix", &prefix]);
    assert!(r.ok(), "{}", r.describe());
    assert!(
        r.stdout
            .contains(&format!("would remove stale segment {stale}")),
        "{}",
        r.stdout
    );
    assert!(!r.stdout.contains(&live), "{}", r.stdout);
    assert!(Segment::status(&stale).is_ok(), "a dry run removes nothing");

    let r = dir.run(&["cleanup", "--prefix", &prefix, "--format", "json"]);
    assert!(r.ok(), "{}", r.describe());
    let v = r.json();
    let removed = v["removed"].as_array().unwrap();
    assert_eq!(removed.len(), 1, "{v}");
    assert_eq!(removed[0]["kind"], "segment");
    assert_eq!(removed[0]["name"], stale.as_str());
    assert_eq!(removed[0]["pid"], helper_pid);
    assert!(!Path::new(&format!(
        "/dev/shm/shmrpc.{}.{stale}",
        rustix::process::geteuid().as_raw()
    ))
    .exists());
    assert!(
        matches!(Segment::status(&live), Ok(SegmentStatus::Live(_))),
        "the live one is kept"
    );
    drop(live_seg);
}

/// Scrapes `serve --metrics` over loopback with a plain HTTP GET.
fn scrape(addr: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the metrics endpoint");
    s.set_read_timeout(Some(LIMIT)).unwrap();
    // One write: the request goes out whole.
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read the scrape");
    out
}

/// `serve --metrics ADDR`: the Prometheus endpoint answers over loopback with the
/// expected series, and they move with the calls made.
#[test]
fn the_metrics_endpoint_is_scraped_with_the_expected_series() {
    let dir = RuntimeDir::new("metrics");
    let n = name("metrics");
    let (mut server, ready) = dir.serve(&[&n, "--metrics", "127.0.0.1:0", "--format", "json"]);
    let ready: Value = serde_json::from_str(&ready).expect("the ready line is JSON");
    let addr = ready["metrics"]
        .as_str()
        .expect("the metrics address")
        .to_owned();
    assert!(!addr.ends_with(":0"), "the real port is printed: {addr}");
    for _ in 0..3 {
        let r = dir.run(&["call", &n, "add", r#"{"a": 1, "b": 2}"#]);
        assert!(r.ok(), "{}", r.describe());
    }
    let r = dir.run(&["call", &n, "nope"]);
    assert!(!r.ok());
    let expected = [
        "shmrpc_calls_total{method=\"add\"} 3",
        "shmrpc_errors_total{code=\"UnknownMethod\"} 1",
        "shmrpc_call_seconds{method=\"add\",quantile=\"0.5\"}",
        "shmrpc_bytes_received_total",
        "shmrpc_bytes_sent_total",
        "shmrpc_connections",
        "shmrpc_backpressure_waits_total 0",
    ];
    // The server records a call's duration after its answer has gone out, so the caller
    // can exit (and we can scrape) a moment before the last call is recorded: scrape
    // until every series is there, within a bound.
    let deadline = std::time::Instant::now() + LIMIT;
    loop {
        let body = scrape(&addr);
        assert!(body.starts_with("HTTP/1.1 200 OK"), "{body}");
        let missing: Vec<_> = expected.iter().filter(|s| !body.contains(*s)).collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {missing:?} in the scrape:\n{body}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    server.signal(Signal::TERM);
    let (status, _) = server.wait();
    assert!(status.success(), "{}", server.stderr());
}

/// `serve --config FILE`: a valid file is used; a bad one is refused before serving with
/// a message that names the key and the allowed range.
#[test]
fn a_bad_config_file_is_refused_with_a_clear_message() {
    let dir = RuntimeDir::new("config");
    let bad = dir.0.join("bad.toml");
    std::fs::write(&bad, "max_in_flight = 8\nring_size = 1000\n").unwrap();
    let r = dir.run(&[
        "serve",
        &name("config-bad"),
        "--config",
        bad.to_str().unwrap(),
    ]);
    assert!(!r.ok(), "{}", r.describe());
    assert!(
        r.stderr.contains("ring_size") && r.stderr.contains("power of two"),
        "{}",
        r.describe()
    );
    let unknown = dir.0.join("unknown.toml");
    std::fs::write(&unknown, "rings = 2\n").unwrap();
    let r = dir.run(&[
        "serve",
        &name("config-unknown"),
        "--config",
        unknown.to_str().unwrap(),
    ]);
    assert!(!r.ok(), "{}", r.describe());
    assert!(r.stderr.contains("rings"), "{}", r.describe());
    assert_eq!(dir.files(), Vec::<String>::new(), "nothing was bound");

    let good = dir.0.join("good.toml");
    std::fs::write(
        &good,
        "ring_size = 4096\nmax_in_flight = 4\nwait = \"park\"\n",
    )
    .unwrap();
    let n = name("config-good");
    let (mut server, _) = dir.serve(&[&n, "--config", good.to_str().unwrap()]);
    let r = dir.run(&["call", &n, "add", r#"{"a": 40, "b": 2}"#]);
    assert!(r.ok(), "{}", r.describe());
    assert_eq!(r.lines(), ["42"]);
    server.signal(Signal::TERM);
    let (status, _) = server.wait();
    assert!(status.success(), "{}", server.stderr());
}

/// `serve --trace`: a span per call (with the method) and connection events on stderr.
#[test]
fn serve_trace_logs_a_span_per_call() {
    let dir = RuntimeDir::new("trace");
    let n = name("trace");
    let (mut server, _) = dir.serve(&[&n, "--trace"]);
    let r = dir.run(&["call", &n, "nope"]);
    assert!(!r.ok());
    let r = dir.run(&["call", &n, "add", r#"{"a": 1, "b": 1}"#]);
    assert!(r.ok(), "{}", r.describe());
    server.signal(Signal::TERM);
    let (status, _) = server.wait();
    assert!(status.success());
    let err = server.stderr();
    assert!(err.contains("connection accepted"), "{err}");
    assert!(err.contains("connection closed"), "{err}");
    assert!(
        err.contains("rpc.call") && err.contains("method=add"),
        "{err}"
    );
}

/// `inspect NAME` against a live server with a streaming caller: its connection shows the
/// caller's pid, the handler running, messages moved and the rings' positions; the
/// inspecting connection is listed too.
#[test]
fn inspect_shows_a_live_connection_its_traffic_and_rings() {
    let dir = RuntimeDir::new("inspect");
    let n = name("inspect");
    let (mut server, _) = dir.serve(&[&n]);
    // A slow stream: its first word comes at once, the next ones a second apart.
    let mut caller = dir.spawn(&[
        "call",
        &n,
        "chat",
        r#"{"prompt": "one two three", "delay_ms": 1000}"#,
        "--stream",
    ]);
    assert_eq!(caller.next_line(), "\"one\"");
    let caller_pid = u64::from(caller.pid());
    let r = dir.run(&["inspect", &n, "--format", "json"]);
    assert!(r.ok(), "{}", r.describe());
    let v = r.json();
    assert_eq!(v["pid"], server.pid());
    let conns = v["connections"].as_array().expect("connections");
    assert_eq!(conns.len(), 2, "the caller and the inspector: {v}");
    assert_eq!(v["handshakes_running"], 0, "{v}");
    assert_eq!(v["handshake_failures"], 0, "{v}");
    let c = conns
        .iter()
        .find(|c| c["peer_pid"] == caller_pid)
        .unwrap_or_else(|| panic!("no connection of the caller {caller_pid}: {v}"));
    assert_eq!(c["transport"], "shm");
    assert_eq!(c["calls_running"], 1, "{c}");
    assert_eq!(c["frames_in"], 1, "{c}");
    assert!(c["frames_out"].as_u64().unwrap() >= 1, "{c}");
    let to = &c["to_client"];
    assert_eq!(to["capacity"], 65536);
    assert!(to["write_pos"].as_u64().unwrap() > 0, "{to}");
    assert!(to["read_pos"].as_u64().unwrap() <= to["write_pos"].as_u64().unwrap());
    assert!(c["from_client"]["write_pos"].as_u64().unwrap() > 0, "{c}");
    // The same as a table.
    let r = dir.run(&["inspect", &n]);
    assert!(r.ok(), "{}", r.describe());
    assert!(r.stdout.contains("2 connection(s)"), "{}", r.stdout);
    assert!(
        r.stdout.contains("handshakes: 0 running, 0 failed"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("TO CLIENT") && r.stdout.contains(&caller_pid.to_string()));
    // A name nobody serves: a clear error.
    let r = dir.run(&["inspect", &name("nobody"), "--timeout", "100ms"]);
    assert!(!r.ok());
    assert!(r.stderr.contains("cannot reach"), "{}", r.describe());
    caller.signal(Signal::KILL);
    let _ = caller.wait();
    server.signal(Signal::TERM);
    let (status, _) = server.wait();
    assert!(status.success(), "{}", server.stderr());
}

/// The mode bits of a file.
fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).expect("stat").permissions().mode() & 0o777
}

/// `shmrpc keygen --out DIR/sub`, checked to succeed; the directory written.
fn keygen(dir: &RuntimeDir, sub: &str) -> PathBuf {
    let out = dir.0.join(sub);
    let r = dir.run(&["keygen", "--out", out.to_str().unwrap()]);
    assert!(r.ok(), "{}", r.describe());
    out
}

fn arg(dir: &Path, file: &str) -> String {
    dir.join(file).to_str().unwrap().to_owned()
}

/// `keygen`, then a server over mutual TLS with a token, and calls with the right and
/// the wrong credentials.
#[test]
fn keygen_then_serve_and_call_over_mutual_tls_with_a_token() {
    let dir = RuntimeDir::new("tls");
    let keys = dir.0.join("keys");
    let r = dir.run(&["keygen", "--out", keys.to_str().unwrap()]);
    assert!(r.ok(), "{}", r.describe());
    // It says how to use what it wrote.
    assert!(
        r.stdout
            .contains(&format!("--client-ca {}", arg(&keys, "ca.pem")))
            && r.stdout.contains("shmrpc serve --tcp")
            && r.stdout.contains("shmrpc call --tcp")
            && r.stdout.contains("--server-name localhost"),
        "{}",
        r.stdout
    );
    assert_eq!(mode(&keys), 0o700);
    for secret in ["token", "ca.key", "server.key", "client.key"] {
        assert_eq!(mode(&keys.join(secret)), 0o600, "{secret}");
    }
    let token_before = std::fs::read(keys.join("token")).unwrap();

    // A second run into the same directory is refused and changes nothing.
    let again = dir.run(&["keygen", "--out", keys.to_str().unwrap()]);
    assert!(!again.ok(), "{}", again.describe());
    assert!(
        again.stderr.contains("refusing to overwrite") && again.stderr.contains("token"),
        "{}",
        again.describe()
    );
    assert_eq!(std::fs::read(keys.join("token")).unwrap(), token_before);

    let other = keygen(&dir, "other");
    let (mut server, ready) = dir.serve(&[
        "--tcp",
        "127.0.0.1:0",
        "--cert",
        &arg(&keys, "server.pem"),
        "--key",
        &arg(&keys, "server.key"),
        "--client-ca",
        &arg(&keys, "ca.pem"),
        "--token-file",
        &arg(&keys, "token"),
        "--compress",
        "lz4",
        "--format",
        "json",
    ]);
    let ready: Value = serde_json::from_str(&ready).expect("the ready line is JSON");
    assert_eq!(
        (&ready["tls"], &ready["token"]),
        (&Value::Bool(true), &Value::Bool(true))
    );
    let addr = ready["tcp"].as_str().expect("address").to_owned();

    let call = |ca: &Path, cert: Option<&Path>, token: Option<&Path>| {
        let mut a = vec![
            "call".to_owned(),
            "--tcp".into(),
            addr.clone(),
            "--ca".into(),
            arg(ca, "ca.pem"),
            "--server-name".into(),
            "localhost".into(),
            "--compress".into(),
            "lz4".into(),
        ];
        if let Some(c) = cert {
            a.extend([
                "--cert".into(),
                arg(c, "client.pem"),
                "--key".into(),
                arg(c, "client.key"),
            ]);
        }
        if let Some(t) = token {
            a.extend(["--token-file".into(), arg(t, "token")]);
        }
        a.extend(["add".into(), r#"{"a": 40, "b": 2}"#.into()]);
        dir.run(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };

    let r = call(&keys, Some(&keys), Some(&keys));
    assert!(r.ok(), "{}", r.describe());
    assert_eq!(r.lines(), ["42"]);

    // Another token: refused, and the message names the flag and the reason.
    let r = call(&keys, Some(&keys), Some(&other));
    assert!(!r.ok(), "{}", r.describe());
    assert!(
        r.stderr.contains("--token-file") && r.stderr.contains("wrong token"),
        "{}",
        r.describe()
    );
    // No token at all.
    let r = call(&keys, Some(&keys), None);
    assert!(!r.ok(), "{}", r.describe());
    assert!(
        r.stderr.contains("requires a token") && r.stderr.contains("--token-file"),
        "{}",
        r.describe()
    );
    // No client certificate for a server with a client CA.
    let r = call(&keys, None, Some(&keys));
    assert!(!r.ok(), "{}", r.describe());
    assert!(
        r.stderr.contains("client certificate") && r.stderr.contains("--cert"),
        "{}",
        r.describe()
    );
    // A client certificate from another CA.
    let r = call(&keys, Some(&other), Some(&keys));
    assert!(!r.ok(), "{}", r.describe());
    // A CA that did not sign the server's certificate.
    let r = call(&other, Some(&keys), Some(&keys));
    assert!(!r.ok(), "{}", r.describe());
    assert!(
        r.stderr.contains("TLS handshake failed"),
        "{}",
        r.describe()
    );
    // Plaintext against the TLS server.
    let r = dir.run(&["call", "--tcp", &addr, "add", r#"{"a": 1, "b": 2}"#]);
    assert!(!r.ok(), "{}", r.describe());
    assert!(r.stderr.contains("--ca"), "{}", r.describe());

    server.signal(Signal::TERM);
    let (status, _) = server.wait();
    assert!(status.success(), "{status:?}: {}", server.stderr());
}

/// `serve --config` with a `[tcp]` table (paths relative to the file); errors name the
/// key or the flag to fix.
#[test]
fn serve_takes_tcp_settings_from_its_config_and_flags_and_names_what_is_wrong() {
    let dir = RuntimeDir::new("tcp-config");
    let keys = keygen(&dir, "keys");
    let cfg = dir.0.join("server.toml");
    std::fs::write(
        &cfg,
        "[tcp]\ncert = \"keys/server.pem\"\nkey = \"keys/server.key\"\ntoken_file = \"keys/token\"\n",
    )
    .unwrap();
    let (mut server, ready) = dir.serve(&[
        "--tcp",
        "127.0.0.1:0",
        "--config",
        cfg.to_str().unwrap(),
        "--format",
        "json",
    ]);
    let ready: Value = serde_json::from_str(&ready).expect("the ready line is JSON");
    assert_eq!(
        (&ready["tls"], &ready["token"]),
        (&Value::Bool(true), &Value::Bool(true))
    );
    let addr = ready["tcp"].as_str().expect("address").to_owned();
    // No client CA in the file: no client certificate needed.
    let r = dir.run(&[
        "call",
        "--tcp",
        &addr,
        "--ca",
        &arg(&keys, "ca.pem"),
        "--server-name",
        "127.0.0.1",
        "--token-file",
        &arg(&keys, "token"),
        "echo",
        "\"remote\"",
    ]);
    assert!(r.ok(), "{}", r.describe());
    assert_eq!(r.lines(), ["\"remote\""]);
    server.signal(Signal::TERM);
    let (status, _) = server.wait();
    assert!(status.success(), "{status:?}: {}", server.stderr());

    // A file the configuration names that is not there.
    std::fs::write(
        &cfg,
        "[tcp]\ncert = \"keys/nope.pem\"\nkey = \"keys/server.key\"\n",
    )
    .unwrap();
    let r = dir.run(&[
        "serve",
        "--tcp",
        "127.0.0.1:0",
        "--config",
        cfg.to_str().unwrap(),
    ]);
    assert!(!r.ok(), "{}", r.describe());
    assert!(
        r.stderr.contains("`tcp.cert`") && r.stderr.contains("nope.pem"),
        "{}",
        r.describe()
    );
    // Flags: a key that is no key, a missing token file, a flag without --tcp.
    let r = dir.run(&[
        "serve",
        "--tcp",
        "127.0.0.1:0",
        "--cert",
        &arg(&keys, "server.pem"),
        "--key",
        &arg(&keys, "server.pem"),
    ]);
    assert!(!r.ok(), "{}", r.describe());
    assert!(r.stderr.contains("check --key"), "{}", r.describe());
    let r = dir.run(&[
        "serve",
        "--tcp",
        "127.0.0.1:0",
        "--token-file",
        &arg(&keys, "nope"),
    ]);
    assert!(!r.ok(), "{}", r.describe());
    assert!(r.stderr.contains("--token-file"), "{}", r.describe());
    let r = dir.run(&[
        "serve",
        &name("no-tcp"),
        "--token-file",
        &arg(&keys, "token"),
    ]);
    assert!(!r.ok(), "{}", r.describe());
    assert!(
        r.stderr.contains("--token-file applies only with --tcp"),
        "{}",
        r.describe()
    );
    // A non-loopback address without authentication is refused before listening.
    let r = dir.run(&["serve", "--tcp", "0.0.0.0:0"]);
    assert!(!r.ok(), "{}", r.describe());
    assert!(
        r.stderr.contains("without authentication"),
        "{}",
        r.describe()
    );
}
