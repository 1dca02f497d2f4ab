//! The `peer` binary's command line: every [`PeerCommand`] it is given runs as that role,
//! and a command line it does not understand ends it at once with status 2 and a message
//! that says what is wrong, followed by the usage.
#![forbid(unsafe_code)]

use std::process::{Command, Stdio};
use std::time::Duration;

use shmrpc_tests::{spawn_peer, with_watchdog, PeerCommand, TestNames, USAGE};

const WAIT: Duration = Duration::from_secs(10);

/// Runs the peer with `args` (and no input) and returns its exit code and stderr.
fn run(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_peer"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running peer");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_bad_command_line_exits_2_saying_what_is_wrong() {
    with_watchdog(Duration::from_secs(30), || {
        let cases: [(&[&str], &str); 5] = [
            (&[], "no role given"),
            (&["fly"], "unknown role \"fly\""),
            (&["flood", "n", "stp"], "flood: missing <cap>"),
            (
                &["flood", "n", "slow", "4096"],
                "flood: <wait> cannot be \"slow\"",
            ),
            (
                &["listen", "n", "more"],
                "listen: unexpected arguments [\"more\"]",
            ),
        ];
        for (args, says) in cases {
            let (code, stderr) = run(args);
            assert_eq!(code, Some(2), "{args:?}: {stderr}");
            assert!(stderr.contains(says), "{args:?}: {stderr}");
            assert!(stderr.contains(USAGE), "{args:?}: {stderr}");
        }
    });
}

#[test]
fn a_command_built_by_the_test_runs_as_its_role() {
    with_watchdog(Duration::from_secs(30), || {
        let mut names = TestNames::new();
        let name = names.name("cmdline");
        let mut peer = spawn_peer!(PeerCommand::Listen { name: name.clone() });
        let ready = peer.expect("ready", WAIT);
        let path = shmrpc_tests::socket_file(&name);
        assert_eq!(
            shmrpc_tests::field(&ready, "path"),
            Some(path.to_str().unwrap())
        );
        peer.send("exit");
        peer.assert_exits_ok(WAIT);
        names.assert_clean();
    });
}
