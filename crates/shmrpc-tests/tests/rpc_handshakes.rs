//! A client that never finishes its handshake must not stall the others. The server is a
//! `peer rpc-server` process; the test opens 50 raw connections to its socket that never
//! answer the server's hello, and while all 50 are still waiting an honest client
//! connects and completes a call. The silent connections are then still open (the
//! server has not given up on them: its handshake timeout is long), and once they close
//! the server counts 50 handshake failures (seen through `shmrpc.inspect`).
#![forbid(unsafe_code)]

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use shmrpc::inspect::ServerReport;
use shmrpc::inspect::INSPECT_METHOD;
use shmrpc::{CallOptions, Client, ClientConfig};
use shmrpc_tests::{
    rpc_runtime, socket_file, spawn_peer, with_watchdog, within, PeerCommand, RpcTarget, TestNames,
};

const WAIT: Duration = Duration::from_secs(30);
const SILENT: usize = 50;
/// The server's handshake timeout: far longer than the test, so the silent connections
/// are still in their handshake when the test looks.
const HANDSHAKE_TIMEOUT_MS: u64 = 600_000;

async fn report(client: &Client) -> ServerReport {
    client
        .call(
            INSPECT_METHOD,
            &(),
            CallOptions::timeout(Duration::from_secs(10)),
        )
        .await
        .unwrap_or_else(|e| panic!("inspect: {e}"))
}

/// Polls the server's report until `pred` holds, for at most `WAIT`.
async fn wait_report(client: &Client, what: &str, pred: impl Fn(&ServerReport) -> bool) {
    let deadline = Instant::now() + WAIT;
    loop {
        let r = report(client).await;
        if pred(&r) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "watchdog: {what} not seen within {WAIT:?}; last report: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Whether the server has closed its end of `s` (a read sees end-of-file). The silent
/// side never reads the hello, so anything else (data waiting, or nothing yet) means the
/// server still holds the connection.
fn closed_by_server(s: &UnixStream) -> bool {
    s.set_nonblocking(true).expect("nonblocking");
    let mut buf = [0u8; 64];
    let mut total = 0;
    loop {
        match (&*s).read(&mut buf) {
            Ok(0) => return true,
            Ok(n) => total += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
        // The hello is 32 bytes; more than that would be something else entirely.
        assert!(
            total <= 32,
            "the server sent {total} bytes, more than a hello"
        );
    }
}

#[test]
fn fifty_silent_handshakes_do_not_stall_an_honest_client() {
    with_watchdog(Duration::from_secs(120), || {
        let mut names = TestNames::new();
        let name = names.name("rpc-handshakes");
        let mut server = spawn_peer!(PeerCommand::RpcServer {
            target: RpcTarget::Shm(name.clone()),
            cap: 65536,
            heartbeat_ms: 2000,
            max_message: 16 << 20,
            max_in_flight: Some(256),
            handshake_timeout_ms: Some(HANDSHAKE_TIMEOUT_MS),
        });
        server.expect("ready", WAIT);
        let rt = rpc_runtime();
        let cfg = ClientConfig::default().with_reconnect_for(WAIT);
        // An observer connected before the silent ones, to watch the server's counts.
        let observer = rt.block_on(async {
            within(
                "observer connect",
                WAIT,
                Client::connect(&name, cfg.clone()),
            )
            .await
            .expect("observer connects")
        });

        let path = socket_file(&name);
        let silent: Vec<UnixStream> = (0..SILENT)
            .map(|i| UnixStream::connect(&path).unwrap_or_else(|e| panic!("silent {i}: {e}")))
            .collect();
        rt.block_on(wait_report(&observer, "50 handshakes running", |r| {
            r.handshakes_running == SILENT as u64
        }));

        // The honest client: connects and completes a call while all 50 are still silent.
        let sum: u64 = rt.block_on(within("honest client's connect and call", WAIT, async {
            let c = Client::connect(&name, cfg.clone())
                .await
                .expect("honest client connects");
            c.call("add", &(40u64, 2u64), CallOptions::timeout(WAIT))
                .await
                .expect("honest call")
        }));
        assert_eq!(sum, 42);

        // The 50 are still unanswered: the server holds every one in its handshake.
        let r = rt.block_on(report(&observer));
        assert_eq!(r.handshakes_running, SILENT as u64, "{r:?}");
        assert_eq!(r.handshake_failures, 0, "{r:?}");
        for (i, s) in silent.iter().enumerate() {
            assert!(!closed_by_server(s), "silent connection {i} was closed");
        }

        // They hang up: each is a failed handshake, counted.
        drop(silent);
        rt.block_on(wait_report(&observer, "50 handshake failures", |r| {
            r.handshake_failures == SILENT as u64 && r.handshakes_running == 0
        }));

        drop(observer);
        drop(rt);
        server.assert_exits_ok(WAIT);
        names.assert_clean();
    });
}
