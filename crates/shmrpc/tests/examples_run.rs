//! Runs the small examples (`hello`, `chat_cancel`, `blocking_client`, `tcp_remote`, and
//! `editor_engine` over shared memory and over mutual TLS) as a user would: each starts its
//! own server process, must exit 0 by itself, print what it demonstrates, and leave no
//! segment or socket file behind.
#![cfg(not(shmrpc_loom))]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use shmrpc::lowlevel::sys::names;

/// Runs `examples/<name>` with a 60 s watchdog; returns its stdout (which also holds its
/// server child's output) and the pid it ran as (its names include it).
fn run(name: &str) -> (String, u32) {
    run_with(name, &[])
}

/// [`run`] with arguments.
fn run_with(name: &str, args: &[&str]) -> (String, u32) {
    // Integration tests live in target/<profile>/deps; examples in target/<profile>/examples.
    let exe = std::env::current_exe().unwrap();
    let example = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|profile| profile.join("examples").join(name))
        .unwrap();
    assert!(
        example.exists(),
        "{} not built: plain `cargo test` builds examples, a filtered one (`--test \
         examples_run`) does not, so run `cargo build -p shmrpc --examples` first",
        example.display()
    );
    let mut child = std::process::Command::new(&example)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("example {name} hung");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut out = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut out).unwrap();
    assert!(status.success(), "example {name} failed: {status}\n{out}");
    (out, pid)
}

/// No segment and no socket or lock file of the server `server_name` is left.
fn assert_clean(server_name: &str) {
    let leftovers: Vec<String> = names::list_segments()
        .into_iter()
        .filter(|s| s.contains(server_name))
        .collect();
    assert!(leftovers.is_empty(), "segments left: {leftovers:?}");
    let dir: PathBuf = names::runtime_dir().unwrap();
    let files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|f| f.contains(server_name))
        .collect();
    assert!(
        files.is_empty(),
        "files left in {}: {files:?}",
        dir.display()
    );
}

#[test]
fn hello_gets_its_greeting() {
    let (out, pid) = run("hello");
    assert!(out.contains("server said: hello, world!"), "{out}");
    assert_clean(&format!("hello-{pid}"));
}

#[test]
fn chat_cancel_server_sees_the_cancel() {
    let (out, pid) = run("chat_cancel");
    let tokens = out.lines().filter(|l| l.starts_with("client <- ")).count();
    assert_eq!(tokens, 5, "{out}");
    let dropped = out.find("client: enough, dropping the stream").expect(&out);
    let saw = out.find("server: saw the cancel after").expect(&out);
    assert!(dropped < saw, "the cancel was seen before the drop:\n{out}");
    assert!(out.trim_end().ends_with("done"), "{out}");
    assert_clean(&format!("chat-cancel-{pid}"));
}

#[test]
fn blocking_client_threads_get_every_answer() {
    let (out, pid) = run("blocking_client");
    // Thread t adds t*100 + i for i in 0..100.
    for t in 0..4u64 {
        let sum = t * 100 * 100 + 4950;
        assert!(out.contains(&format!("thread {t}: sum = {sum}\n")), "{out}");
    }
    assert!(out.contains("countdown: [5, 4, 3, 2, 1, 0]"), "{out}");
    assert!(out.trim_end().ends_with("done"), "{out}");
    assert_clean(&format!("blocking-client-{pid}"));
}

#[test]
fn tcp_remote_answers_the_same_over_both_transports() {
    let (out, pid) = run("tcp_remote");
    let expect = r#"upper = OVER THE WIRE, words = ["one", "two", "three"]"#;
    assert!(out.contains(&format!("shm: {expect}")), "{out}");
    assert!(out.contains(&format!("tcp: {expect}")), "{out}");
    assert!(out.trim_end().ends_with("done"), "{out}");
    assert_clean(&format!("tcp-remote-{pid}"));
}

#[test]
fn editor_engine_answers_language_server_requests_during_the_chat() {
    // The chat and the cancel are checked by tests/example_editor_engine.rs.
    let (out, pid) = run("editor_engine");
    assert!(
        out.contains(r#"editor: the engine serves this connection over ["shm"]"#),
        "{out}"
    );
    assert!(
        out.contains(
            r#"editor: completion at 3:7 -> ["println!", "print!", "panic!"] (macro, 3:7)"#
        ),
        "{out}"
    );
    assert!(
        out.contains("editor: hover at 3:7 -> file:///src/main.rs:3:7: fn main()"),
        "{out}"
    );
    assert_clean(&format!("editor-engine-{pid}"));
}

#[test]
fn editor_engine_runs_over_mutual_tls_between_two_processes() {
    let (out, pid) = run_with("editor_engine", &["--tls"]);
    assert!(
        out.contains("over TLS (mutual, with a token)"),
        "not over TLS:\n{out}"
    );
    // The engine's own report of the connection: the only one, over TLS.
    assert!(
        out.contains(r#"editor: the engine serves this connection over ["tls"]"#),
        "{out}"
    );
    assert!(
        out.contains(
            r#"editor: completion at 3:7 -> ["println!", "print!", "panic!"] (macro, 3:7)"#
        ),
        "{out}"
    );
    assert!(
        out.contains("editor: the engine asks to run `cargo test` (risk Low): approved"),
        "{out}"
    );
    assert!(out.contains("engine saw the cancel after"), "{out}");
    assert!(out.trim_end().ends_with("done"), "{out}");
    // Over TCP the engine makes no segment or socket file at all.
    assert_clean(&format!("editor-engine-{pid}"));
}
