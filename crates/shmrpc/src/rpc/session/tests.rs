//! The engine with both ends in one process over the in-memory transport: calls in both
//! directions at once on one connection (the two ends' call ids overlap, told apart by the
//! direction flag), a missing method, frames sent the wrong way, and the end of the
//! connection failing open calls in both directions.

use std::sync::Arc;
use std::time::Duration;

use super::{open, CallOptions, Ends, Host, Methods, Peer, Role};
use crate::frame::Kind;
use crate::rpc::inspect::{ConnInfo, Registry};
use crate::rpc::obs::ServerObs;
use crate::rpc::transport::{mem_pair, Dir, FrameRx, FrameTx};
use crate::rpc::{method_id, Code, RpcError};

/// Settings of both ends (no heartbeats: the paused clock would reach one).
fn host(methods: Methods) -> Arc<Host> {
    Arc::new(Host {
        methods,
        max_in_flight: 8,
        max_message: 1 << 20,
        heartbeat: Duration::from_secs(3600),
        cancel_grace: Duration::from_millis(100),
        obs: Arc::new(ServerObs::new(false)),
        registry: Registry::default(),
    })
}

/// Methods that answer `(tag, n)` with `(tag, n * 2)`; `hang` waits for its cancel and
/// reports it.
fn methods(
    tag: &'static str,
    cancelled: Option<tokio::sync::mpsc::UnboundedSender<()>>,
) -> Methods {
    let mut m = Methods::new(false);
    m.unary("double", move |_ctx, n: u64| async move {
        tokio::task::yield_now().await; // answer later, not on the first poll
        Ok((tag.to_string(), n * 2))
    });
    m.unary_raw("hang", move |ctx, _req| {
        let cancelled = cancelled.clone();
        async move {
            ctx.cancelled().await;
            if let Some(c) = cancelled {
                let _ = c.send(());
            }
            Err(RpcError::new(Code::Cancelled, "saw the cancel"))
        }
    });
    m
}

/// A server end and a client end connected in memory: the handle each has on the other.
fn pair(server: Methods, client: Methods) -> (Peer, Peer) {
    let ((stx, srx), (ctx, crx)) = mem_pair(64, 1 << 20);
    let (to_client, run) = open(
        host(server),
        Role::Server,
        stx,
        srx,
        Arc::new(ConnInfo::new(1, None, "mem", None)),
        Ends::default(),
    );
    tokio::spawn(run);
    let (to_server, run) = open(
        host(client),
        Role::Client,
        ctx,
        crx,
        Arc::new(ConnInfo::new(1, None, "mem", None)),
        Ends::default(),
    );
    tokio::spawn(run);
    (to_client, to_server)
}

#[tokio::test(start_paused = true)]
async fn both_ends_call_each_other_at_once_and_every_answer_is_its_own() {
    let (to_client, to_server) = pair(methods("server", None), methods("client", None));
    let mut calls = tokio::task::JoinSet::new();
    for n in 0..200u64 {
        // Interleaved: even numbers from the server, odd from the client; both ends number
        // their calls from 1, so the same ids are in flight both ways.
        let (who, peer) = if n % 2 == 0 {
            ("client", to_client.clone())
        } else {
            ("server", to_server.clone())
        };
        calls.spawn(async move {
            let got: (String, u64) = peer
                .call("double", &n, CallOptions::default())
                .await
                .expect("answered");
            assert_eq!(got, (who.to_string(), n * 2), "call {n}");
        });
    }
    let mut done = 0;
    while let Some(r) = calls.join_next().await {
        r.expect("call task");
        done += 1;
    }
    assert_eq!(done, 200);
}

#[tokio::test(start_paused = true)]
async fn a_callback_to_a_method_the_client_lacks_is_unknown_method() {
    let (to_client, to_server) = pair(methods("server", None), Methods::new(false));
    let e = to_client
        .call_raw("double", b"", CallOptions::default())
        .await
        .unwrap_err();
    assert_eq!(e.code, Code::UnknownMethod, "{e}");
    // The connection goes on, in both directions.
    let got: (String, u64) = to_server
        .call("double", &4u64, CallOptions::default())
        .await
        .unwrap();
    assert_eq!(got, ("server".to_string(), 8));
}

#[tokio::test(start_paused = true)]
async fn a_dropped_callback_cancels_the_handler_on_the_client() {
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let (to_client, _to_server) = pair(methods("server", None), methods("client", Some(seen_tx)));
    let opts = CallOptions::timeout(Duration::from_secs(5));
    let e = to_client.call_raw("hang", b"", opts).await.unwrap_err();
    assert_eq!(e.code, Code::DeadlineExceeded, "{e}");
    seen.recv()
        .await
        .expect("the client's handler saw the cancel");
}

/// The server's end alone, driven by a scripted client: returns the server's handle on
/// the client, and the client's end of the transport.
fn scripted(server: Methods) -> (Peer, FrameTx, FrameRx) {
    let ((stx, srx), (ctx, crx)) = mem_pair(64, 1 << 20);
    let info = Arc::new(ConnInfo::new(1, None, "mem", None));
    let (to_client, run) = open(host(server), Role::Server, stx, srx, info, Ends::default());
    tokio::spawn(run);
    (to_client, ctx, crx)
}

#[tokio::test(start_paused = true)]
async fn an_answer_sent_towards_the_callee_is_a_protocol_error() {
    let (to_client, mut tx, mut rx) = scripted(methods("server", None));
    let call = tokio::spawn(async move {
        to_client
            .call_raw("anything", b"", CallOptions::default())
            .await
    });
    let (h, _) = rx.recv().await.expect("the server's request");
    assert_eq!((h.kind, Dir::to_callee(h.flags)), (Kind::Request, true));
    // The answer, but flagged as travelling to a callee: nobody's answer.
    tx.send(Dir::ToCallee, Kind::Response, h.method, h.call_id, b"x")
        .await
        .unwrap();
    let e = call.await.unwrap().unwrap_err();
    assert_eq!(e.code, Code::Protocol, "{e}");
}

#[tokio::test(start_paused = true)]
async fn the_end_of_the_connection_fails_open_calls_both_ways() {
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let (to_client, mut tx, mut rx) = scripted(methods("server", Some(seen_tx)));
    // The scripted client calls `hang` on the server ...
    tx.send_parts(
        Dir::ToCallee,
        Kind::Request,
        method_id("hang"),
        1,
        &[&0u32.to_le_bytes()],
    )
    .await
    .unwrap();
    // ... and the server calls the client (call id 1 too: the other direction).
    let callback = tokio::spawn({
        let p = to_client.clone();
        async move { p.call_raw("anything", b"", CallOptions::default()).await }
    });
    let (h, _) = rx.recv().await.expect("the server's request");
    assert_eq!((h.kind, h.call_id), (Kind::Request, 1));
    // The client goes away.
    drop((tx, rx));
    let e = callback.await.unwrap().unwrap_err();
    assert_eq!(e.code, Code::PeerGone, "{e}");
    seen.recv()
        .await
        .expect("the server's handler was cancelled");
    let e = to_client
        .call_raw("anything", b"", CallOptions::default())
        .await
        .unwrap_err();
    assert_eq!(e.code, Code::PeerGone, "{e}");
    assert!(!to_client.is_connected());
}

#[tokio::test(start_paused = true)]
async fn a_caller_keeps_at_most_twice_max_in_flight_calls_open() {
    // The server end (max_in_flight 8) calls a scripted client that reads but never
    // answers, until told to.
    let (to_client, mut tx, mut rx) = scripted(Methods::new(false));
    let mut open = Vec::new();
    for _ in 0..16 {
        let p = to_client.clone();
        open.push(tokio::spawn(async move {
            p.call_raw("x", b"", CallOptions::default()).await
        }));
    }
    let mut ids = Vec::new();
    for _ in 0..16 {
        let (h, _) = rx.recv().await.expect("a request");
        ids.push(h.call_id);
    }
    // A 17th call waits for a slot: nothing is sent, and its deadline passes.
    let e = to_client
        .call_raw("x", b"", CallOptions::timeout(Duration::from_secs(1)))
        .await
        .unwrap_err();
    assert_eq!(e.code, Code::DeadlineExceeded, "{e}");
    let nothing = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
    assert!(nothing.is_err(), "no request beyond the slots: {nothing:?}");
    // One answer frees a slot: the next call goes out.
    tx.send(
        Dir::ToCaller,
        Kind::Response,
        method_id("x"),
        ids[0],
        b"done",
    )
    .await
    .unwrap();
    let next = tokio::spawn({
        let p = to_client.clone();
        async move { p.call_raw("x", b"", CallOptions::default()).await }
    });
    let (h, _) = rx.recv().await.expect("the next request");
    assert_eq!(h.kind, Kind::Request);
    assert!(!ids.contains(&h.call_id), "a new call id");
    drop((tx, rx));
    assert_eq!(next.await.unwrap().unwrap_err().code, Code::PeerGone);
    // The answered call got its answer; the others fail with the connection.
    let (mut answered, mut gone) = (0, 0);
    for call in open {
        match call.await.unwrap() {
            Ok(b) => {
                assert_eq!(b, b"done");
                answered += 1;
            }
            Err(e) => {
                assert_eq!(e.code, Code::PeerGone, "{e}");
                gone += 1;
            }
        }
    }
    assert_eq!((answered, gone), (1, 15));
}

#[tokio::test(start_paused = true)]
async fn a_drain_fails_the_servers_own_open_calls_and_the_client_stops_calling() {
    let (drain, draining) = tokio::sync::watch::channel(false);
    let ((stx, srx), (ctx, crx)) = mem_pair(64, 1 << 20);
    let info = || Arc::new(ConnInfo::new(1, None, "mem", None));
    let ends = Ends {
        draining: Some(draining),
        shut: None,
    };
    let server = host(methods("server", None));
    let (to_client, run) = open(server, Role::Server, stx, srx, info(), ends);
    let serving = tokio::spawn(run);
    let client = host(methods("client", None));
    let (to_server, run) = open(client, Role::Client, ctx, crx, info(), Ends::default());
    tokio::spawn(run);
    let open_call = tokio::spawn({
        let p = to_client.clone();
        async move { p.call_raw("hang", b"", CallOptions::default()).await }
    });
    // Paused clock: this returns once every task is idle, the call waiting on the client.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!open_call.is_finished());
    drain.send_replace(true);
    let e = open_call.await.unwrap().unwrap_err();
    assert_eq!(e.code, Code::ShuttingDown, "{e}");
    serving.await.expect("the server's end finishes");
    // The client got the goodbye: no new calls on this connection.
    assert!(!to_server.is_connected());
    let e = to_server
        .call_raw("double", b"", CallOptions::default())
        .await
        .unwrap_err();
    assert_eq!(e.code, Code::PeerGone, "{e}");
}

/// Both ends flood each other with large calls over queues of two messages each way: both
/// queues are full at once, while each end's reader has fast answers (handlers that finish
/// on their first poll) and refusals (a missing method) to send. A reader that waited for room to send them would wait for
/// the other reader, which waits for it: every call must complete instead.
#[tokio::test(start_paused = true)]
async fn both_ends_flooding_each_other_with_large_calls_never_deadlock() {
    const BIG: usize = 64 * 1024;
    const CALLS: u64 = 200;
    // Answers on the first poll: the reader sends the answer itself.
    let echo = |tag: u8| {
        let mut m = Methods::new(false);
        m.unary_raw("echo", move |_ctx, mut req: Vec<u8>| async move {
            req.push(tag);
            Ok(req)
        });
        m
    };
    let ((stx, srx), (ctx, crx)) = mem_pair(2, 1 << 20);
    let info = || Arc::new(ConnInfo::new(1, None, "mem", None));
    let (to_client, run) = open(
        host(echo(b's')),
        Role::Server,
        stx,
        srx,
        info(),
        Ends::default(),
    );
    tokio::spawn(run);
    let (to_server, run) = open(
        host(echo(b'c')),
        Role::Client,
        ctx,
        crx,
        info(),
        Ends::default(),
    );
    tokio::spawn(run);
    let mut calls = tokio::task::JoinSet::new();
    for n in 0..CALLS {
        let (peer, tag) = if n % 2 == 0 {
            (to_client.clone(), b'c')
        } else {
            (to_server.clone(), b's')
        };
        calls.spawn(async move {
            let req = vec![n as u8; BIG];
            if n % 5 == 0 {
                // Refused by the reader (sent from a spare permit when it must wait).
                let e = peer
                    .call_raw("missing", &req, CallOptions::default())
                    .await
                    .unwrap_err();
                assert_eq!(e.code, Code::UnknownMethod, "call {n}: {e}");
                return;
            }
            let got = peer
                .call_raw("echo", &req, CallOptions::default())
                .await
                .expect("answered");
            assert_eq!(got.len(), BIG + 1, "call {n}");
            assert!(
                got[..BIG].iter().all(|&b| b == n as u8),
                "call {n}'s own bytes"
            );
            assert_eq!(got[BIG], tag, "call {n} answered by the other end");
        });
    }
    // A bound on a paused clock: it passes only if every task is stuck (a deadlock).
    let all = async {
        let mut done = 0;
        while let Some(r) = calls.join_next().await {
            r.expect("call task");
            done += 1;
        }
        done
    };
    let done = tokio::time::timeout(Duration::from_secs(600), all)
        .await
        .expect("deadlock: both readers stuck sending into full queues");
    assert_eq!(done, CALLS);
}

/// The same flood over a small shared-memory ring each way, with messages close to the
/// ring's size, some in one frame (sent at once when there is room) and some in several
/// fragments (always left to a task): every call completes with its own answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_ends_flooding_each_other_over_small_rings_never_deadlock() {
    use crate::channel::{self, ChannelConfig};
    const CALLS: u64 = 120;
    let echo = |tag: u8| {
        let mut m = Methods::new(false);
        m.unary_raw("echo", move |_ctx, mut req: Vec<u8>| async move {
            req.push(tag);
            Ok(req)
        });
        m
    };
    let (a, b) = channel::pair(&ChannelConfig::default().with_capacity(16 * 1024)).unwrap();
    let (atx, arx) = a.split();
    let frame = atx.max_message() - crate::frame::FRAME_HEADER_LEN;
    let (btx, brx) = b.split();
    let max = 1 << 20;
    let info = || Arc::new(ConnInfo::new(1, None, "shm", None));
    // End a serves with tag `a` and calls b through `to_b`; end b the other way round.
    let (to_b, run) = open(
        host(echo(b'a')),
        Role::Server,
        FrameTx::Shm(atx, Vec::new()),
        FrameRx::shm(arx, max),
        info(),
        Ends::default(),
    );
    tokio::spawn(run);
    let (to_a, run) = open(
        host(echo(b'b')),
        Role::Client,
        FrameTx::Shm(btx, Vec::new()),
        FrameRx::shm(brx, max),
        info(),
        Ends::default(),
    );
    tokio::spawn(run);
    let mut calls = tokio::task::JoinSet::new();
    for n in 0..CALLS {
        let (peer, tag) = if n % 2 == 0 {
            (to_b.clone(), b'b')
        } else {
            (to_a.clone(), b'a')
        };
        // Requests and answers of nearly one frame (the answer is one byte longer than
        // the request), or of two and a half.
        let len = if n % 3 == 0 {
            frame * 5 / 2
        } else {
            frame - 64
        };
        calls.spawn(async move {
            let req = vec![n as u8; len];
            let got = peer
                .call_raw("echo", &req, CallOptions::default())
                .await
                .expect("answered");
            assert_eq!(got.len(), len + 1, "call {n}");
            assert!(
                got[..len].iter().all(|&b| b == n as u8),
                "call {n}'s own bytes"
            );
            assert_eq!(got[len], tag, "call {n} answered by the other end");
        });
    }
    // Only a bound against hanging for ever: it fails the test only on a deadlock.
    let all = async {
        let mut done = 0;
        while let Some(r) = calls.join_next().await {
            r.expect("call task");
            done += 1;
        }
        done
    };
    let done = tokio::time::timeout(Duration::from_secs(120), all)
        .await
        .expect("deadlock: both readers stuck sending into full rings");
    assert_eq!(done, CALLS);
}

/// During a drain the connection is still read: a streaming handler longer than the credit
/// window gets the caller's credit, and its callback to the client gets its answer; a call
/// started after the drain began is refused; the end comes once both handlers are done.
#[tokio::test(start_paused = true)]
async fn a_drain_reads_on_until_the_calls_in_flight_are_done() {
    const ITEMS: u64 = 3 * super::STREAM_WINDOW as u64;
    let (drain, draining) = tokio::sync::watch::channel(false);
    let ((stx, srx), (ctx, crx)) = mem_pair(64, 1 << 20);
    let info = || Arc::new(ConnInfo::new(1, None, "mem", None));
    let (started_tx, mut started) = tokio::sync::mpsc::unbounded_channel();
    let (go_tx, go) = tokio::sync::watch::channel(false);
    let mut server = methods("server", None);
    server.streaming("count", {
        let (started_tx, go) = (started_tx.clone(), go.clone());
        move |_ctx, n: u64, sink| {
            let (started_tx, mut go) = (started_tx.clone(), go.clone());
            async move {
                let _ = started_tx.send(());
                let _ = go.wait_for(|g| *g).await;
                for i in 0..n {
                    sink.send(&i).await?;
                }
                Ok(())
            }
        }
    });
    server.unary("ask", move |ctx, n: u64| {
        let (started_tx, mut go) = (started_tx.clone(), go.clone());
        async move {
            let _ = started_tx.send(());
            let _ = go.wait_for(|g| *g).await;
            // A callback to the client while this end drains.
            let (_tag, doubled): (String, u64) = ctx
                .peer()
                .call("double", &n, CallOptions::default())
                .await?;
            Ok(doubled + 1)
        }
    });
    let ends = Ends {
        draining: Some(draining),
        shut: None,
    };
    let (_to_client, run) = open(host(server), Role::Server, stx, srx, info(), ends);
    let serving = tokio::spawn(run);
    let client = host(methods("client", None));
    let (to_server, run) = open(client, Role::Client, ctx, crx, info(), Ends::default());
    tokio::spawn(run);
    let mut stream = to_server
        .call_stream("count", &ITEMS, CallOptions::default())
        .await
        .unwrap();
    let ask = tokio::spawn({
        let p = to_server.clone();
        async move {
            p.call::<_, u64>("ask", &20u64, CallOptions::default())
                .await
        }
    });
    started.recv().await.unwrap();
    started.recv().await.unwrap();
    drain.send_replace(true);
    // Paused clock: returns once every task is idle, the goodbye received.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!to_server.is_connected(), "the client got the goodbye");
    assert!(!serving.is_finished(), "two calls still run");
    go_tx.send_replace(true);
    let read_all = async {
        let mut got = 0;
        while let Some(item) = stream.next::<u64>().await {
            assert_eq!(item.unwrap(), got);
            got += 1;
        }
        got
    };
    let got = tokio::time::timeout(Duration::from_secs(60), read_all)
        .await
        .expect("the stream goes on during the drain");
    assert_eq!(got, ITEMS, "every item, past the credit window");
    let answer = tokio::time::timeout(Duration::from_secs(60), ask)
        .await
        .expect("the callback is answered during the drain");
    assert_eq!(answer.unwrap().unwrap(), 41);
    tokio::time::timeout(Duration::from_secs(60), serving)
        .await
        .expect("the drain ends once its calls are done")
        .unwrap();
}

/// A peer that is alive but never reads: answers pile up unsent, then the drain begins.
/// The end of the connection (the peer falls silent) must not wait for those sends.
#[tokio::test(start_paused = true)]
async fn a_peer_that_never_reads_does_not_hold_the_end_of_the_connection() {
    let (drain, draining) = tokio::sync::watch::channel(false);
    // Queues of two messages each way.
    let ((stx, srx), (mut ctx, _crx_never_read)) = mem_pair(2, 1 << 20);
    let ends = Ends {
        draining: Some(draining),
        shut: None,
    };
    let mut server = host(methods("server", None));
    Arc::get_mut(&mut server).unwrap().heartbeat = Duration::from_secs(2);
    let info = Arc::new(ConnInfo::new(1, None, "mem", None));
    let (_to_client, run) = open(server, Role::Server, stx, srx, info, ends);
    let serving = tokio::spawn(run);
    // Calls whose answers cannot all go: the client reads nothing.
    for id in 1..=6u64 {
        let body = [&0u32.to_le_bytes()[..], &crate::rpc::encode(&id).unwrap()].concat();
        ctx.send(Dir::ToCallee, Kind::Request, method_id("double"), id, &body)
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    drain.send_replace(true);
    // Three silent heartbeat periods end it; stuck sends give up instead of waiting.
    tokio::time::timeout(Duration::from_secs(3600), serving)
        .await
        .expect("the connection ended although its peer reads nothing")
        .unwrap();
}

/// A caller configured like this end keeps at most `2 × max_in_flight` calls open: as many
/// as this end runs plus as many as it queues. With all of them here, this end must still
/// read: the answer to its own call to that caller arrives. (A reader that stopped at a
/// full queue, while the caller's reader stopped the same way, deadlocked two ends
/// flooding each other: each one's answers waited in a ring only the other would read.)
#[tokio::test(start_paused = true)]
async fn a_full_queue_from_a_like_configured_caller_does_not_stop_the_reading() {
    let (gate_tx, gate) = tokio::sync::watch::channel(false);
    let mut server = Methods::new(false);
    server.unary_raw("block", move |_ctx, req| {
        let mut gate = gate.clone();
        async move {
            let _ = gate.wait_for(|open| *open).await;
            Ok(req)
        }
    });
    let (to_client, mut tx, mut rx) = scripted(server);
    // This end (max_in_flight 8) calls the scripted client.
    let own_call = tokio::spawn({
        let p = to_client.clone();
        async move { p.call_raw("x", b"", CallOptions::default()).await }
    });
    let (h, _) = rx.recv().await.expect("this end's request");
    assert_eq!(h.kind, Kind::Request);
    // The client's 16 calls: 8 run (blocked), 8 wait.
    for id in 1..=16u64 {
        tx.send(
            Dir::ToCallee,
            Kind::Request,
            method_id("block"),
            id,
            &0u32.to_le_bytes(),
        )
        .await
        .unwrap();
    }
    // The answer to this end's call comes after them.
    tx.send(Dir::ToCaller, Kind::Response, h.method, h.call_id, b"mine")
        .await
        .unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(60), own_call)
        .await
        .expect("the answer was read although 8 requests wait");
    assert_eq!(answer.unwrap().unwrap(), b"mine");
    // Then every blocked call is answered.
    gate_tx.send_replace(true);
    let mut answered = std::collections::HashSet::new();
    while answered.len() < 16 {
        let (h, body) = rx.recv().await.expect("an answer");
        assert_eq!((h.kind, body.as_slice()), (Kind::Response, &b""[..]));
        answered.insert(h.call_id);
    }
}
