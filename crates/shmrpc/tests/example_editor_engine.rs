//! Runs `examples/editor_engine.rs` as a user would: two processes on one connection both
//! ways. The editor streams a chat (a bidirectional call) whose tokens must arrive in
//! order; the engine calls the editor back for a tool approval in the middle of its answer
//! and goes on only with the verdict; the editor abandons the chat and the engine must see
//! the cancel. The example checks the order itself and exits non-zero otherwise; this test
//! checks its exit and its output.
#![cfg(not(shmrpc_loom))]

use std::time::{Duration, Instant};

#[test]
fn the_editor_engine_example_streams_in_order_and_the_engine_sees_the_cancel() {
    // Integration tests live in target/<profile>/deps; examples in target/<profile>/examples.
    let exe = std::env::current_exe().unwrap();
    let example = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|profile| profile.join("examples").join("editor_engine"))
        .unwrap();
    assert!(
        example.exists(),
        "{} not built (cargo test builds examples)",
        example.display()
    );
    let mut child = std::process::Command::new(&example)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("example hung");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut out = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut out).unwrap();
    assert!(status.success(), "example failed: {status}\n{out}");
    // Every token of the first two turns, and the first four of the third, in order.
    let tokens: Vec<&str> = out
        .lines()
        .filter_map(|l| l.strip_prefix("editor <- "))
        .filter_map(|t| t.split_once(':').map(|(at, _)| at))
        .collect();
    let mut expect: Vec<String> = (0..7).map(|i| format!("1.{i}")).collect();
    expect.extend((0..6).map(|i| format!("2.{i}")));
    expect.push("2.tool".into());
    expect.extend((0..4).map(|i| format!("3.{i}")));
    assert_eq!(tokens, expect, "{out}");
    // The engine asked in the middle of its answer, and went on with the editor's verdict.
    // (The editor prints the question from its handler, beside the task that prints the
    // tokens: only the verdict's place after it is causal.)
    let asked = out
        .find("editor: the engine asks to run `cargo test` (risk Low): approved")
        .expect(&out);
    let verdict = out
        .find("editor <- 2.tool:cargo test approved")
        .expect(&out);
    assert!(asked < verdict, "{out}");
    assert!(out.contains("editor: approved 1 tool run(s)"), "{out}");
    // The run's diagnostics, pushed as notifications, arrive in order, after the approval.
    let diagnostics: Vec<&str> = out
        .lines()
        .filter_map(|l| l.strip_prefix("editor: diagnostic file:///src/main.rs:"))
        .collect();
    assert_eq!(
        diagnostics,
        [
            "3: unused variable `x`",
            "7: this test has no assertion",
            "9: missing documentation"
        ],
        "{out}"
    );
    let first = out.find("editor: diagnostic ").expect(&out);
    assert!(asked < first, "{out}");
    // 17 tokens were read; the engine may have sent a few more before the cancel arrived.
    let saw = out
        .lines()
        .find_map(|l| l.strip_prefix("engine saw the cancel after "))
        .expect(&out);
    let sent: u64 = saw.trim_end_matches(" tokens").parse().expect(&out);
    assert!(sent >= 17, "{out}");
    assert!(out.trim_end().ends_with("done"), "{out}");
}
