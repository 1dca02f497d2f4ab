//! Runs `examples/editor_engine.rs` as a user would: two processes, a streamed chat whose
//! tokens must arrive in order, and a cancel the engine must observe. The example checks
//! both itself and exits non-zero otherwise; this test checks its exit and its output.
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
    for i in 0..20 {
        assert!(
            out.contains(&format!("editor <- {i}:")),
            "token {i} missing:\n{out}"
        );
    }
    assert!(out.contains("engine saw the cancel"), "{out}");
    assert!(out.trim_end().ends_with("done"), "{out}");
}
