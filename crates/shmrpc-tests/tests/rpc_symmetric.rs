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
//! Over shared memory, notifications both ways: the server pushes 10,000 to the client
//! while the client sends as many to the server; each side checks their count, order and
//! checksum.
//!
//! Over shared memory and over TCP alike, streams both ways: the server streams 100,000
//! items to the client's client-streaming and bidirectional methods through its `Peer`,
//! while the client streams as many to the server's; each stream is checked by its count
//! and checksum. A reader that stops reading stalls only its own stream: other calls and
//! streams on the same connection complete meanwhile, both ways.
//!
//! Over shared memory and over TCP alike, cancels and kills with calls of every shape
//! open: dropping a client-streaming or bidirectional call cancels its handler in the
//! other process, both ways; a serving client killed with SIGKILL fails each of the
//! server's open calls into it (unary, server stream, client stream, both halves of a
//! bidi) with `PeerGone` and cancels each handler of its own open calls on the server.
#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
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
const ITEMS: u64 = 100_000;

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

/// What the test server's held handlers report: `(shape, event)`, event `started` or
/// `cancelled`.
type Reports = std::sync::mpsc::Receiver<(&'static str, &'static str)>;

/// The stream server plus handlers held open until cancelled, each reporting when it runs
/// (after its first item, for those that take items) and when its call is cancelled:
/// `server_hang` (unary), `server_hang_stream`, `server_hold_sum` (client-streaming) and
/// `server_hold_echo` (bidirectional, its first item echoed).
fn hold_server() -> (shmrpc::ServerBuilder, Reports) {
    use std::sync::Mutex;
    let (tx, rx) = std::sync::mpsc::channel();
    let tx = Arc::new(Mutex::new(tx));
    let report = move |shape: &'static str, event: &'static str| {
        let _ = tx.lock().expect("reports").send((shape, event));
    };
    let (r1, r2, r3, r4) = (report.clone(), report.clone(), report.clone(), report);
    let builder = stream_server()
        .unary_raw("server_hang", move |ctx, _body| {
            let report = r1.clone();
            async move {
                report("unary", "started");
                ctx.cancelled().await;
                report("unary", "cancelled");
                Ok(Vec::new())
            }
        })
        .streaming("server_hang_stream", move |ctx, (): (), sink| {
            let report = r2.clone();
            async move {
                sink.send(&0u64).await?;
                report("server_stream", "started");
                ctx.cancelled().await;
                report("server_stream", "cancelled");
                Ok(())
            }
        })
        .client_streaming("server_hold_sum", move |ctx, mut items| {
            let report = r3.clone();
            async move {
                let _first: Option<u64> = items.next().await.transpose()?;
                report("client_stream", "started");
                ctx.cancelled().await;
                report("client_stream", "cancelled");
                Ok(0u64)
            }
        })
        .bidi("server_hold_echo", move |ctx, mut items, sink| {
            let report = r4.clone();
            async move {
                let first: u64 = items.next().await.transpose()?.unwrap_or(0);
                sink.send(&first).await?;
                report("bidi", "started");
                ctx.cancelled().await;
                report("bidi", "cancelled");
                Ok(())
            }
        });
    (builder, rx)
}

/// Waits (bounded) until the server's handlers reported exactly `want`, in any order.
fn expect_reports(reports: &Reports, want: &[(&'static str, &'static str)]) {
    let mut got = Vec::new();
    while got.len() < want.len() {
        match reports.recv_timeout(WAIT) {
            Ok(r) => got.push(r),
            Err(e) => panic!("server reports {got:?}, still waiting for {want:?}: {e}"),
        }
    }
    let mut want = want.to_vec();
    got.sort_unstable();
    want.sort_unstable();
    assert_eq!(got, want, "server reports");
}

/// The transport a test's connection runs over.
#[derive(Debug, Clone, Copy)]
enum Transport {
    /// Shared memory, the server bound to a fresh name.
    Shm,
    /// TCP on loopback, the server bound to port 0.
    Tcp,
}

/// Binds `builder` over `transport` (a fresh name from `names` for shared memory) and
/// returns the server and how a client reaches it.
fn bind(
    rt: &tokio::runtime::Runtime,
    builder: shmrpc::ServerBuilder,
    transport: Transport,
    names: &mut TestNames,
    word: &str,
) -> (Server, RpcDial) {
    match transport {
        Transport::Shm => {
            let name = names.name(word);
            let server = rt.block_on(async { builder.bind(&name) }).expect("bind");
            (server, RpcDial::Shm(name))
        }
        Transport::Tcp => {
            let server = rt
                .block_on(builder.bind_tcp("127.0.0.1:0".parse().unwrap()))
                .expect("bind_tcp");
            let addr = server.local_addr().expect("a TCP server has an address");
            (server, RpcDial::Tcp(addr))
        }
    }
}

/// Starts the hold server over `transport` and the serving client against it.
fn hold_setup(
    names: &mut TestNames,
    word: &str,
    transport: Transport,
) -> (
    tokio::runtime::Runtime,
    ServerHandle,
    tokio::task::JoinHandle<()>,
    Reports,
    PeerProcess,
    Peer,
) {
    let rt = rpc_runtime();
    let (builder, reports) = hold_server();
    let (server, dial) = bind(&rt, builder, transport, names, word);
    let handle = server.handle();
    let serving = rt.spawn(server.serve());
    let mut client: PeerProcess = spawn_peer!(PeerCommand::RpcServingClient { dial, calls: 1 });
    client.expect("ready", WAIT);
    let peer = rt.block_on(the_peer(&handle));
    // The connection runs over the transport asked for (only shared memory knows the pid).
    assert_eq!(
        peer.pid().is_some(),
        matches!(transport, Transport::Shm),
        "{transport:?}"
    );
    (rt, handle, serving, reports, client, peer)
}

/// Dropping a client-streaming call or a bidirectional call cancels its handler on the
/// other process, both ways: the server's calls into the client's methods (through its
/// `Peer`), and the client's into the server's. Over `transport`.
fn dropped_calls_cancel_the_other_sides_handler(transport: Transport) {
    with_watchdog(Duration::from_secs(300), move || {
        let mut names = TestNames::new();
        let (rt, handle, serving, reports, mut client, peer) =
            hold_setup(&mut names, "rpc-cancel", transport);

        // Server -> client: a client stream, held after one item, then dropped.
        let call = rt.block_on(async {
            let mut call = peer
                .call_client_stream("client_hold_sum", CallOptions::default())
                .await
                .expect("client stream");
            call.send(&9u64).await.expect("item");
            call
        });
        client.expect("holding what=client_stream first=Some(9)", WAIT);
        rt.block_on(async { drop(call) });
        client.expect("cancelled what=client_stream", WAIT);

        // Server -> client: a bidirectional call, its first item echoed, then both halves
        // dropped.
        let call = rt.block_on(async {
            let (mut tx, mut rx) = peer
                .call_bidi("client_hold_echo", CallOptions::default())
                .await
                .expect("bidi call")
                .split();
            tx.send(&5u64).await.expect("item");
            assert_eq!(rx.next::<u64>().await.expect("echo").expect("echo"), 5);
            (tx, rx)
        });
        client.expect("holding what=bidi", WAIT);
        rt.block_on(async { drop(call) });
        client.expect("cancelled what=bidi", WAIT);

        // Client -> server: both shapes held, then dropped by the client.
        client.send("hold-calls");
        expect_reports(
            &reports,
            &[("client_stream", "started"), ("bidi", "started")],
        );
        client.expect("holding-calls", WAIT);
        client.send("drop");
        client.expect("dropped", WAIT);
        expect_reports(
            &reports,
            &[("client_stream", "cancelled"), ("bidi", "cancelled")],
        );

        // The connection is still good both ways.
        let sum: (u64, u64) = rt.block_on(async {
            let mut call = peer
                .call_client_stream("client_sum", CallOptions::timeout(WAIT))
                .await
                .expect("client stream");
            call.send(&3u64).await.expect("item");
            call.finish().await.expect("sum")
        });
        assert_eq!(sum, (1, sequence_checksum([3])));

        client.send("exit");
        assert!(
            client.wait_exit(WAIT).success(),
            "the client leaves cleanly"
        );
        handle.shutdown();
        rt.block_on(within("serve returns", WAIT, serving))
            .expect("serve");
        drop(rt);
        names.assert_clean_with_locks();
    });
}

#[test]
fn dropped_client_streams_and_bidi_calls_cancel_the_other_sides_handler_over_shared_memory() {
    dropped_calls_cancel_the_other_sides_handler(Transport::Shm);
}

#[test]
fn dropped_client_streams_and_bidi_calls_cancel_the_other_sides_handler_over_tcp() {
    dropped_calls_cancel_the_other_sides_handler(Transport::Tcp);
}

/// A serving client killed with SIGKILL while calls of every shape are open both ways:
/// each of the server's calls into it (unary, server stream, client stream, bidi) fails
/// with `PeerGone`, and each of the server's handlers for the client's calls is cancelled,
/// all within a bounded wait. Over `transport`.
fn a_killed_peer_fails_every_open_call(transport: Transport) {
    with_watchdog(Duration::from_secs(300), move || {
        let mut names = TestNames::new();
        let (rt, handle, serving, reports, mut client, peer) =
            hold_setup(&mut names, "rpc-kill", transport);

        // Server -> client, one of each shape, each known to run before the next.
        let unary = rt.spawn({
            let p = peer.clone();
            async move { p.call_raw("hang", b"", CallOptions::default()).await }
        });
        client.expect("hanging", WAIT);
        let mut stream = rt.block_on(async {
            let mut s = peer
                .call_stream("client_hang_stream", &(), CallOptions::default())
                .await
                .expect("server stream");
            assert_eq!(s.next::<u64>().await.expect("item").expect("item"), 0);
            s
        });
        client.expect("holding what=server_stream", WAIT);
        let cstream = rt.block_on(async {
            let mut c = peer
                .call_client_stream("client_hold_sum", CallOptions::default())
                .await
                .expect("client stream");
            c.send(&1u64).await.expect("item");
            c
        });
        client.expect("holding what=client_stream", WAIT);
        let (mut tx, mut rx) = rt.block_on(async {
            let (mut tx, mut rx) = peer
                .call_bidi("client_hold_echo", CallOptions::default())
                .await
                .expect("bidi call")
                .split();
            tx.send(&4u64).await.expect("item");
            assert_eq!(rx.next::<u64>().await.expect("echo").expect("echo"), 4);
            (tx, rx)
        });
        client.expect("holding what=bidi", WAIT);

        // Client -> server, one of each shape.
        client.send("open-all");
        expect_reports(
            &reports,
            &[
                ("unary", "started"),
                ("server_stream", "started"),
                ("client_stream", "started"),
                ("bidi", "started"),
            ],
        );
        client.expect("opened", WAIT);

        client.kill();

        // Every call into the dead client fails with PeerGone.
        let codes = rt.block_on(within("the open calls fail", WAIT, async {
            let unary = unary.await.expect("unary task").map(drop);
            let stream = stream.next_raw().await.expect("an end").map(drop);
            let cstream = cstream.finish::<u64>().await.map(drop);
            let rx = rx.next_raw().await.expect("an end").map(drop);
            // The sending half finds the call over too, once the receiving half did.
            let tx = match tx.send(&5u64).await {
                Ok(()) => tx.finish().await,
                Err(e) => Err(e),
            };
            [unary, stream, cstream, rx]
                .map(|r| r.map_err(|e| e.code))
                .into_iter()
                .chain([tx.map_err(|e| e.code)])
                .collect::<Vec<_>>()
        }));
        let gone = Err(Code::PeerGone);
        assert_eq!(
            codes, [gone; 5],
            "unary, server stream, client stream, bidi receiver, bidi sender"
        );

        // Every handler of the dead client's calls is cancelled.
        expect_reports(
            &reports,
            &[
                ("unary", "cancelled"),
                ("server_stream", "cancelled"),
                ("client_stream", "cancelled"),
                ("bidi", "cancelled"),
            ],
        );
        rt.block_on(within("the server forgets the dead client", WAIT, async {
            while !handle.peers().is_empty() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }));
        assert!(!peer.is_connected());

        handle.shutdown();
        rt.block_on(within("serve returns", WAIT, serving))
            .expect("serve");
        drop(rt);
        names.assert_clean_with_locks();
    });
}

#[test]
fn a_killed_peer_fails_every_open_call_and_stream_both_ways_over_shared_memory() {
    a_killed_peer_fails_every_open_call(Transport::Shm);
}

#[test]
fn a_killed_peer_fails_every_open_call_and_stream_both_ways_over_tcp() {
    a_killed_peer_fails_every_open_call(Transport::Tcp);
}

/// A stream's credit window in items: a sender waits once it is this far ahead of its
/// reader (documented in the README and docs/architecture.md).
const STREAM_WINDOW: u64 = 64;

/// Items streamed beside a stalled stream: many windows, so its credit must flow.
const BESIDE: u64 = 10 * STREAM_WINDOW;

/// A reader that stops reading stalls only its own stream. The server streams into the
/// client's `client_hold_sum`, whose handler reads the first item and no more, until the
/// sender has spent its window and waits. Meanwhile, on the same connection, a unary call
/// and a client stream many windows long from the server, and a call from the client, all
/// complete; the stalled stream is still where its window ended. Over `transport`.
fn a_stalled_reader_stalls_only_its_own_stream(transport: Transport) {
    with_watchdog(Duration::from_secs(300), move || {
        let mut names = TestNames::new();
        let (rt, handle, serving, _reports, mut client, peer) =
            hold_setup(&mut names, "rpc-stall", transport);

        // Server -> client: a client stream whose reader stops after its first item; the
        // sender counts the items that went.
        let sent = Arc::new(AtomicU64::new(0));
        let stalled = rt.spawn({
            let (p, sent) = (peer.clone(), sent.clone());
            async move {
                let mut call = p
                    .call_client_stream("client_hold_sum", CallOptions::default())
                    .await
                    .expect("client stream");
                for i in 0..ITEMS {
                    call.send(&i).await.expect("item sent");
                    sent.fetch_add(1, Ordering::Relaxed);
                }
                call
            }
        });
        client.expect("holding what=client_stream first=Some(0)", WAIT);
        rt.block_on(within(
            "the stalled stream spends its window",
            WAIT,
            async {
                while sent.load(Ordering::Relaxed) < STREAM_WINDOW {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            },
        ));

        // Beside it, on the same connection: the server's calls into the client ...
        let (answer, sum) = rt.block_on(within("calls beside a stalled stream", WAIT, async {
            let opts = CallOptions::timeout(WAIT);
            let answer: (String, u64) = peer
                .call("client_double", &20u64, opts)
                .await
                .expect("unary call");
            let mut call = peer
                .call_client_stream("client_sum", opts)
                .await
                .expect("client stream");
            for i in 0..BESIDE {
                call.send(&i).await.expect("item sent");
            }
            let sum: (u64, u64) = call.finish().await.expect("the client's sum");
            (answer, sum)
        }));
        assert_eq!(answer, ("client".to_string(), 41), "unary call");
        assert_eq!(sum, (BESIDE, sequence_checksum(0..BESIDE)), "client stream");
        // ... and the client's call into the server.
        client.send("go");
        let done = client.expect("calls ", WAIT);
        assert_eq!(field_parse::<u64>(&done, "ok"), 1, "{done}");
        assert_eq!(field_parse::<u64>(&done, "bad"), 0, "{done}");

        // The stalled stream went no further than its window: its reader still reads none.
        assert!(!stalled.is_finished(), "the stalled stream's sender waits");
        assert_eq!(
            sent.load(Ordering::Relaxed),
            STREAM_WINDOW,
            "items sent to a reader that read one"
        );

        // Dropped, it is cancelled on the client.
        stalled.abort();
        let aborted = rt.block_on(stalled).expect_err("the sender never finished");
        assert!(aborted.is_cancelled(), "{aborted}");
        client.expect("cancelled what=client_stream", WAIT);

        client.send("exit");
        assert!(
            client.wait_exit(WAIT).success(),
            "the client leaves cleanly"
        );
        handle.shutdown();
        rt.block_on(within("serve returns", WAIT, serving))
            .expect("serve");
        drop(rt);
        names.assert_clean_with_locks();
    });
}

#[test]
fn a_stalled_reader_stalls_only_its_own_stream_over_shared_memory() {
    a_stalled_reader_stalls_only_its_own_stream(Transport::Shm);
}

#[test]
fn a_stalled_reader_stalls_only_its_own_stream_over_tcp() {
    a_stalled_reader_stalls_only_its_own_stream(Transport::Tcp);
}

/// Notifications each way.
const NOTES: u64 = 10_000;

#[test]
fn notifications_both_ways_over_shared_memory() {
    with_watchdog(Duration::from_secs(300), || {
        let mut names = TestNames::new();
        let name = names.name("rpc-notes");
        let rt = rpc_runtime();
        let (note_tx, mut notes) = tokio::sync::mpsc::unbounded_channel::<u64>();
        let server = rt
            .block_on(async {
                server()
                    .on_notify("server_note", move |_ctx, n: u64| {
                        let _ = note_tx.send(n);
                        async {}
                    })
                    .bind(&name)
            })
            .expect("bind");
        let handle = server.handle();
        let serving = rt.spawn(server.serve());
        let mut client: PeerProcess = spawn_peer!(PeerCommand::RpcServingClient {
            dial: RpcDial::Shm(name.clone()),
            calls: NOTES,
        });
        client.expect("ready", WAIT);
        let peer = rt.block_on(the_peer(&handle));

        // The server pushes its notifications while the client sends its own.
        client.send("notes");
        let seen = rt.block_on(within("notifications both ways", CALLS_WAIT, async {
            for n in 0..NOTES {
                peer.notify("client_note", &n).await.expect("notified");
            }
            let mut seen = Vec::new();
            while (seen.len() as u64) < NOTES {
                seen.push(notes.recv().await.expect("a notification"));
            }
            seen
        }));
        assert!(seen.iter().copied().eq(0..NOTES), "the server's in order");
        let done = client.expect("notes ", CALLS_WAIT);
        assert_eq!(field_parse::<u64>(&done, "count"), NOTES, "{done}");
        assert_eq!(
            field_parse::<u64>(&done, "sum"),
            sequence_checksum(0..NOTES),
            "{done}"
        );
        assert!(field_parse::<bool>(&done, "in_order"), "{done}");

        client.send("exit");
        assert!(
            client.wait_exit(WAIT).success(),
            "the client leaves cleanly"
        );
        handle.shutdown();
        rt.block_on(within("serve returns", WAIT, serving))
            .expect("serve");
        drop(rt);
        names.assert_clean_with_locks();
    });
}
