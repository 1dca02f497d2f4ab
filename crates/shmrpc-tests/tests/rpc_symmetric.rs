//! Calls in both directions on one connection, with a real client process that serves
//! methods (`peer rpc-serving-client`) and a server in this test that calls it back.
//!
//! Over shared memory and over TCP alike:
//! - 1,000 calls each way at once, interleaved on the one connection: the client calls
//!   the server's `server_triple` while the server calls the client's `client_double`;
//!   every answer is checked against its request (none lost, none mixed up);
//! - a call from the server to a method the client lacks fails with `UnknownMethod`, and
//!   the connection goes on;
//! - the client is killed with SIGKILL while a call from the server is open on it: that
//!   call fails with `PeerGone` within a bounded wait, the server forgets the peer, and
//!   nothing is left in /dev/shm or the socket directory.
//!
//! Over shared memory and over TCP alike, streams both ways: the server streams items to the client's
//! client-streaming and bidirectional methods through its `Peer`, while the client streams
//! to the server's; each stream is checked by its count and checksum.
#![forbid(unsafe_code)]

use std::time::Duration;

use shmrpc::{CallOptions, Code, Peer, Server, ServerHandle};
use shmrpc_tests::{
    field_parse, rpc_runtime, sequence_checksum, spawn_peer, with_watchdog, within, PeerCommand,
    PeerProcess, RpcDial, TestNames,
};

const WAIT: Duration = Duration::from_secs(10);
/// Calls each way.
const CALLS: u64 = 1000;
/// Bound on the 2 × 1,000 calls (a watchdog, not a measure).
const CALLS_WAIT: Duration = Duration::from_secs(120);

/// The test's server: one method, for the client to call.
fn server() -> shmrpc::ServerBuilder {
    Server::builder().unary("server_triple", |_ctx, n: u64| async move {
        Ok(("server".to_string(), 3 * n))
    })
}

/// The client's connection, once the server serves it (the handshake ends on the server
/// after the client's `connect` returns, so poll for it, within a bound).
async fn the_peer(handle: &ServerHandle) -> Peer {
    within("the client's connection is served", WAIT, async {
        loop {
            if let Some(p) = handle.peers().pop() {
                return p;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
}

/// Both ways at once, an unknown method, then the client's death, against a running
/// server reached through `dial`. `shm`: whether the connection is shared memory (the
/// peer's pid is known then).
fn both_ways(rt: &tokio::runtime::Runtime, handle: &ServerHandle, dial: RpcDial, shm: bool) {
    let mut client: PeerProcess = spawn_peer!(PeerCommand::RpcServingClient { dial, calls: CALLS });
    let ready = client.expect("ready", WAIT);
    let pid: u32 = field_parse(&ready, "pid");
    let peer = rt.block_on(the_peer(handle));
    assert_eq!(handle.peers().len(), 1, "one client connected");
    assert_eq!(peer.pid(), shm.then_some(pid), "the peer's pid");
    assert!(peer.is_connected());
    assert_eq!(
        handle.peer(peer.conn_id()).map(|p| p.conn_id()),
        Some(peer.conn_id())
    );

    // The client starts its 1,000 calls, and the server its 1,000 at the same time.
    client.send("go");
    let (ok, bad) = rt.block_on(within("1,000 callbacks", CALLS_WAIT, async {
        let mut calls = tokio::task::JoinSet::new();
        for n in 0..CALLS {
            let p = peer.clone();
            calls.spawn(async move {
                let opts = CallOptions::timeout(CALLS_WAIT);
                let r = p
                    .call::<u64, (String, u64)>("client_double", &n, opts)
                    .await;
                match r {
                    Ok((who, v)) if who == "client" && v == 2 * n + 1 => Ok(()),
                    other => Err(format!("callback {n}: {other:?}")),
                }
            });
        }
        let (mut ok, mut bad) = (0u64, Vec::new());
        while let Some(r) = calls.join_next().await {
            match r.expect("callback task") {
                Ok(()) => ok += 1,
                Err(e) => bad.push(e),
            }
        }
        (ok, bad)
    }));
    assert!(bad.is_empty(), "lost or mismatched callbacks: {bad:?}");
    assert_eq!(ok, CALLS);
    let done = client.expect("calls ", CALLS_WAIT);
    assert_eq!(field_parse::<u64>(&done, "ok"), CALLS, "{done}");
    assert_eq!(field_parse::<u64>(&done, "bad"), 0, "{done}");

    // A method the client does not serve.
    let e = rt
        .block_on(peer.call_raw("no_such_method", b"", CallOptions::timeout(WAIT)))
        .expect_err("the client has no such method");
    assert_eq!(e.code, Code::UnknownMethod, "{e}");

    // A callback left open on the client, which then dies.
    let open = rt.spawn({
        let p = peer.clone();
        async move { p.call_raw("hang", b"", CallOptions::default()).await }
    });
    client.expect("hanging", WAIT);
    client.kill();
    let e = rt
        .block_on(within("the open callback fails", WAIT, open))
        .expect("callback task")
        .expect_err("the client died before answering");
    assert_eq!(e.code, Code::PeerGone, "{e}");
    rt.block_on(within("the server forgets the dead client", WAIT, async {
        while !handle.peers().is_empty() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }));
    assert!(!peer.is_connected());
    let e = rt
        .block_on(peer.call_raw("client_double", b"", CallOptions::default()))
        .expect_err("a call to a dead client");
    assert_eq!(e.code, Code::PeerGone, "{e}");
}

#[test]
fn calls_both_ways_on_one_shared_memory_connection() {
    with_watchdog(Duration::from_secs(300), || {
        let mut names = TestNames::new();
        let name = names.name("rpc-both-ways");
        let rt = rpc_runtime();
        let server = rt.block_on(async { server().bind(&name) }).expect("bind");
        let handle = server.handle();
        let serving = rt.spawn(server.serve());
        both_ways(&rt, &handle, RpcDial::Shm(name.clone()), true);
        handle.shutdown();
        rt.block_on(within("serve returns", WAIT, serving))
            .expect("serve");
        drop(rt);
        names.assert_clean_with_locks();
    });
}

#[test]
fn calls_both_ways_on_one_tcp_connection() {
    with_watchdog(Duration::from_secs(300), || {
        let rt = rpc_runtime();
        let server = rt
            .block_on(server().bind_tcp("127.0.0.1:0".parse().unwrap()))
            .expect("bind_tcp");
        let addr = server.local_addr().expect("a TCP server has an address");
        let handle = server.handle();
        let serving = rt.spawn(server.serve());
        both_ways(&rt, &handle, RpcDial::Tcp(addr), false);
        handle.shutdown();
        rt.block_on(within("serve returns", WAIT, serving))
            .expect("serve");
    });
}

/// The test's server with stream methods too: `server_sum` (a client stream of `u64`
/// answered by its count and checksum) and `server_echo` (bidirectional, `n` -> `3n + 1`).
fn stream_server() -> shmrpc::ServerBuilder {
    server()
        .client_streaming("server_sum", |_ctx, mut items| async move {
            let mut seen = Vec::new();
            while let Some(n) = items.next().await {
                seen.push(n?);
            }
            Ok((seen.len() as u64, sequence_checksum(seen)))
        })
        .bidi("server_echo", |_ctx, mut items, sink| async move {
            while let Some(n) = items.next().await {
                let n: u64 = n?;
                sink.send(&(3 * n + 1)).await?;
            }
            Ok(())
        })
}

/// Items in each stream: many windows of credit.
const ITEMS: u64 = 20_000;

/// Client streams and bidirectional streams between two processes, both ways: the server
/// streams to the client's methods through its `Peer`, the client to the server's; every
/// stream checked by count and checksum. The client reaches the server through `dial`.
fn streams_both_ways(rt: &tokio::runtime::Runtime, handle: &ServerHandle, dial: RpcDial) {
    let mut client: PeerProcess = spawn_peer!(PeerCommand::RpcServingClient { dial, calls: ITEMS });
    client.expect("ready", WAIT);
    let peer = rt.block_on(the_peer(handle));
    let want = sequence_checksum(0..ITEMS);

    // The client streams to the server (while the server streams to the client).
    client.send("streams");
    rt.block_on(within("streams to the client", CALLS_WAIT, async {
        let opts = CallOptions::timeout(CALLS_WAIT);
        let mut call = peer
            .call_client_stream("client_sum", opts)
            .await
            .expect("client stream");
        for i in 0..ITEMS {
            call.send(&i).await.expect("item sent");
        }
        let got: (u64, u64) = call.finish().await.expect("the client's sum");
        assert_eq!(got, (ITEMS, want));

        let (mut tx, mut rx) = peer
            .call_bidi("client_echo", opts)
            .await
            .expect("bidi call")
            .split();
        let sending = tokio::spawn(async move {
            for i in 0..ITEMS {
                tx.send(&i).await.expect("item sent");
            }
            tx.finish().await.expect("finished");
        });
        let mut back = Vec::new();
        while let Some(item) = rx.next::<u64>().await {
            back.push(item.expect("an echo"));
        }
        sending.await.expect("sender task");
        assert_eq!(back.len() as u64, ITEMS);
        assert_eq!(
            sequence_checksum(back),
            sequence_checksum((0..ITEMS).map(|i| 3 * i + 1))
        );
    }));
    let done = client.expect("streams ", CALLS_WAIT);
    assert_eq!(field_parse::<u64>(&done, "sum_count"), ITEMS, "{done}");
    assert!(field_parse::<bool>(&done, "sum_ok"), "{done}");
    assert_eq!(field_parse::<u64>(&done, "echo_count"), ITEMS, "{done}");
    assert!(field_parse::<bool>(&done, "echo_ok"), "{done}");

    client.send("exit");
    assert!(
        client.wait_exit(WAIT).success(),
        "the client leaves cleanly"
    );
}

#[test]
fn client_and_bidi_streams_both_ways_over_shared_memory() {
    with_watchdog(Duration::from_secs(300), || {
        let mut names = TestNames::new();
        let name = names.name("rpc-streams");
        let rt = rpc_runtime();
        let server = rt
            .block_on(async { stream_server().bind(&name) })
            .expect("bind");
        let handle = server.handle();
        let serving = rt.spawn(server.serve());
        streams_both_ways(&rt, &handle, RpcDial::Shm(name.clone()));
        handle.shutdown();
        rt.block_on(within("serve returns", WAIT, serving))
            .expect("serve");
        drop(rt);
        names.assert_clean_with_locks();
    });
}

#[test]
fn client_and_bidi_streams_both_ways_over_tcp() {
    with_watchdog(Duration::from_secs(300), || {
        let rt = rpc_runtime();
        let server = rt
            .block_on(stream_server().bind_tcp("127.0.0.1:0".parse().unwrap()))
            .expect("bind_tcp");
        let addr = server.local_addr().expect("a TCP server has an address");
        let handle = server.handle();
        let serving = rt.spawn(server.serve());
        streams_both_ways(&rt, &handle, RpcDial::Tcp(addr));
        handle.shutdown();
        rt.block_on(within("serve returns", WAIT, serving))
            .expect("serve");
    });
}
