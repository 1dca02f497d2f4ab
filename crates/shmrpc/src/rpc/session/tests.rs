//! The engine with both ends in one process over the in-memory transport: calls in both
//! directions at once on one connection (the two ends' call ids overlap, told apart by the
//! direction flag), a missing method, frames sent the wrong way, and the end of the
//! connection failing open calls in both directions.

use std::sync::Arc;
use std::time::Duration;

use super::{open, CallOptions, Ends, Host, Items, Methods, Peer, Role, STREAM_WINDOW};
use crate::frame::Kind;
use crate::rpc::inspect::{ConnInfo, Registry};
use crate::rpc::obs::ServerObs;
use crate::rpc::transport::{mem_pair, Dir, FrameRx, FrameTx};
use crate::rpc::{method_id, Code, RpcError};

/// Settings of both ends (no heartbeats: the paused clock would reach one).
fn host(methods: Methods) -> Arc<Host> {
    host_graced(methods, Duration::from_millis(100))
}

/// [`host`] with another grace period for handlers after a cancel or the connection's end.
fn host_graced(methods: Methods, cancel_grace: Duration) -> Arc<Host> {
    Arc::new(Host {
        methods,
        max_in_flight: 8,
        max_message: 1 << 20,
        heartbeat: Duration::from_secs(3600),
        cancel_grace,
        idle_timeout: None,
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

/// A call the server end makes to its scripted client, whose request is read off the
/// transport and never answered: it ends with the connection's end, and its reason.
async fn server_calls_the_client(
    to_client: &Peer,
    rx: &mut FrameRx,
) -> tokio::task::JoinHandle<Result<Vec<u8>, RpcError>> {
    let callback = tokio::spawn({
        let p = to_client.clone();
        async move { p.call_raw("anything", b"", CallOptions::default()).await }
    });
    let (h, _) = rx.recv().await.expect("the server's request");
    assert_eq!(h.kind, Kind::Request);
    callback
}

/// The client's end alone, driven by a scripted server: returns the client's handle on
/// the server, and the server's end of the transport.
fn scripted_server() -> (Peer, FrameTx, FrameRx) {
    let ((stx, srx), (ctx, crx)) = mem_pair(64, 1 << 20);
    let info = Arc::new(ConnInfo::new(1, None, "mem", None));
    let client = host(methods("client", None));
    let (to_server, run) = open(client, Role::Client, ctx, crx, info, Ends::default());
    tokio::spawn(run);
    (to_server, stx, srx)
}

/// A server that closes a connection as idle says so in its goodbye: it read nothing
/// after it, so a unary call still unanswered was never run and goes out again on the
/// next connection (`Ok(None)` here, which the client's call loop takes as "next
/// connection"). After a drain's goodbye the server may have run it: it fails.
#[tokio::test(start_paused = true)]
async fn unanswered_calls_go_out_again_after_an_idle_goodbye_but_not_after_a_drain() {
    for (goodbye, sent_again) in [
        (&[super::outgoing::GOODBYE_IDLE][..], true),
        (&[][..], false),
    ] {
        let (to_server, mut tx, mut rx) = scripted_server();
        let out = to_server.out.clone();
        let call = tokio::spawn(async move { out.call_raw("echo", b"x", None).await });
        let (h, _) = rx.recv().await.expect("the client's request");
        assert_eq!(h.kind, Kind::Request);
        tx.send(Dir::Conn, Kind::Goodbye, 0, 0, goodbye)
            .await
            .unwrap();
        drop((tx, rx));
        match call.await.unwrap() {
            Ok(None) => assert!(sent_again, "a call read before a drain was sent again"),
            Err(e) => {
                assert!(!sent_again, "an unread call failed: {e}");
                assert_eq!(e.code, Code::PeerGone, "{e}");
            }
            Ok(Some(r)) => panic!("an answer nobody sent: {r:?}"),
        }
    }
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

/// The client's end alone on a shared-memory channel, its loop's task started; returns the
/// client's handle and the raw halves of the server's end, which the test drives.
async fn scripted_server_over_a_ring() -> (Peer, FrameTx, FrameRx) {
    let config = crate::channel::ChannelConfig::default();
    one_end_over_a_ring(methods("client", None), Role::Client, config).await
}

/// A channel whose waits park at once: a wait shows in the ring's waiting word (a spinning
/// wait yields to other tasks between its rounds, unseen).
fn parking() -> crate::channel::ChannelConfig {
    crate::channel::ChannelConfig {
        wait: crate::ring::WaitStrategy::Park,
        ..Default::default()
    }
}

/// One end (`role`, serving `methods`) on a shared-memory channel configured by
/// `config`, its loop's task started; returns its handle on the peer, and the raw halves
/// of the other end, which the test drives.
async fn one_end_over_a_ring(
    methods: Methods,
    role: Role,
    config: crate::channel::ChannelConfig,
) -> (Peer, FrameTx, FrameRx) {
    use crate::channel;
    let (a, b) = channel::pair(&config).unwrap();
    let ((peer_tx, peer_rx), (tx, rx)) = (a.split(), b.split());
    let (to_peer, run) = open(
        host(methods),
        role,
        FrameTx::Shm(tx, Vec::new()),
        FrameRx::shm(rx, 1 << 20),
        Arc::new(ConnInfo::new(1, None, "shm", None)),
        Ends::default(),
    );
    tokio::spawn(run);
    // The loop's own task polls it once: a caller polls it in its place only after.
    tokio::task::yield_now().await;
    (
        to_peer,
        FrameTx::Shm(peer_tx, Vec::new()),
        FrameRx::shm(peer_rx, 1 << 20),
    )
}

/// Polls `f` once, with this task's context, and does not yield to the runtime: the
/// connection's read loop cannot run in its own task meanwhile.
async fn poll_once<F: std::future::Future + Unpin>(f: &mut F) -> std::task::Poll<F::Output> {
    std::future::poll_fn(|cx| std::task::Poll::Ready(std::pin::Pin::new(&mut *f).poll(cx))).await
}

/// Answers the next request on the server's raw end with `body`.
async fn answer_next(stx: &mut FrameTx, srx: &mut FrameRx, body: &[u8]) {
    let (h, _) = srx.recv().await.expect("a request");
    assert_eq!(h.kind, Kind::Request);
    let sent = stx
        .try_send_parts(Dir::ToCaller, Kind::Response, h.method, h.call_id, &[body])
        .expect("the ring takes the answer");
    assert!(sent, "room for the answer");
}

/// A call alone in flight reads its own answer from the ring: polled once the answer is
/// there, with no chance for the read loop's own task to run, it returns with it, having
/// polled the loop itself. Called again and again, each call does.
#[tokio::test]
async fn a_call_alone_in_flight_reads_its_own_answer_from_the_ring() {
    let (to_server, mut stx, mut srx) = scripted_server_over_a_ring().await;
    for n in 0..20u8 {
        let body = [n];
        let mut call = Box::pin(to_server.call_raw("m", &body, CallOptions::default()));
        // The request goes out; no answer yet (the caller polls the loop, finds none).
        assert!(poll_once(&mut call).await.is_pending());
        answer_next(&mut stx, &mut srx, &[n, n]).await;
        let before = to_server.out.assisted();
        match poll_once(&mut call).await {
            std::task::Poll::Ready(Ok(got)) => assert_eq!(got, [n, n], "call {n}'s own answer"),
            other => panic!("call {n}: its answer was in the ring, and it got {other:?}"),
        }
        assert_eq!(
            to_server.out.assisted(),
            before + 1,
            "call {n} read it itself"
        );
    }
}

/// With another call open, a caller does not poll the loop: its answer waits for the
/// loop's own task (here: until this task lets the runtime run it), and nothing is lost.
#[tokio::test]
async fn a_call_with_another_open_leaves_the_reading_to_the_loops_task() {
    let (to_server, mut stx, mut srx) = scripted_server_over_a_ring().await;
    let mut first = Box::pin(to_server.call_raw("m", b"1", CallOptions::default()));
    let mut second = Box::pin(to_server.call_raw("m", b"2", CallOptions::default()));
    assert!(poll_once(&mut first).await.is_pending());
    assert!(poll_once(&mut second).await.is_pending());
    answer_next(&mut stx, &mut srx, b"one").await;
    assert!(
        poll_once(&mut first).await.is_pending(),
        "two calls open: the first does not read the ring itself"
    );
    assert_eq!(first.await.expect("answered"), b"one");
    // The second is alone now, and reads its own answer.
    answer_next(&mut stx, &mut srx, b"two").await;
    let before = to_server.out.assisted();
    assert!(matches!(poll_once(&mut second).await, std::task::Poll::Ready(Ok(v)) if v == b"two"));
    assert_eq!(to_server.out.assisted(), before + 1);
}

/// Writes three stream items of call `call_id`, `[round, 0]` to `[round, 2]`, a frame each,
/// into the ring at once.
fn three_items(tx: &mut FrameTx, dir: Dir, method: u32, call_id: u64, round: u8) {
    for i in 0..3u8 {
        let sent = tx
            .try_send_parts(dir, Kind::StreamItem, method, call_id, &[&[round, i]])
            .expect("the ring takes the item");
        assert!(sent, "room for the item");
    }
}

/// Frames of a stream go to its reader before the connection's loop waits for more: on
/// one worker, once the ring is empty, the loop gives way to the stream's reader (as to a
/// unary caller it answered) before it waits for the next frame. Otherwise the reader ran
/// only once the loop was waiting, and the callee's next frame found the loop spinning in
/// the reader's place or asleep. The ring's waiting word tells which: still 0 when the
/// stream's reader gets its items (the loop's waits park at once here: [`parking`]).
#[tokio::test]
async fn a_streams_reader_gets_its_frames_before_the_loop_waits_for_more() {
    let client = methods("client", None);
    let (to_server, mut stx, mut srx) = one_end_over_a_ring(client, Role::Client, parking()).await;
    let FrameTx::Shm(tx, _) = &mut stx else {
        unreachable!("a ring")
    };
    let probe = tx.producer().inspector();
    let (mut stream, (h, _)) = tokio::join!(
        async {
            to_server
                .call_stream_raw("m", b"", CallOptions::default())
                .await
                .expect("started")
        },
        async { srx.recv().await.expect("the request") }
    );
    assert_eq!(h.kind, Kind::Request);
    for round in 0..10u8 {
        three_items(&mut stx, Dir::ToCaller, h.method, h.call_id, round);
        assert_eq!(
            stream.next_raw().await.expect("an item").expect("ok"),
            [round, 0]
        );
        let st = probe.state();
        assert_eq!(
            (st.queued, st.consumer_waiting),
            (0, 0),
            "round {round}: the loop read the frames, then gave way before it waited"
        );
        for i in 1..3u8 {
            let item = stream.next_raw().await.expect("an item").expect("ok");
            assert_eq!(item, [round, i]);
        }
    }
}

/// The same on the callee's side: the items of a caller's stream go to the running
/// handler before the server's loop waits for more. The handler notes the ring's waiting
/// word as it gets each round's first item.
#[tokio::test]
async fn a_handlers_items_reach_it_before_the_loop_waits_for_more() {
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    // The client's ring towards the server, known once the channel is made.
    let probe = Arc::new(std::sync::OnceLock::new());
    let mut m = Methods::new(false);
    m.client_streaming_raw("m", {
        let probe = probe.clone();
        move |_ctx, mut items| {
            let (seen, probe) = (seen_tx.clone(), probe.clone());
            async move {
                while let Some(item) = items.next_raw().await {
                    let item = item?;
                    if item[1] == 0 {
                        let st = probe.get().map(crate::ring::RingProbe::state);
                        let st = st.expect("the ring is known");
                        let _ = seen.send((item[0], st.queued, st.consumer_waiting));
                    }
                }
                Ok(Vec::new())
            }
        }
    });
    let (_to_client, mut ctx, _crx) = one_end_over_a_ring(m, Role::Server, parking()).await;
    let FrameTx::Shm(tx, _) = &mut ctx else {
        unreachable!("a ring")
    };
    assert!(probe.set(tx.producer().inspector()).is_ok());
    raw_request(&mut ctx, "m", b"").await;
    for round in 0..10u8 {
        three_items(&mut ctx, Dir::ToCallee, method_id("m"), 1, round);
        assert_eq!(
            seen.recv().await.expect("the handler runs"),
            (round, 0, 0),
            "round {round}: the loop read the items, then gave way before it waited"
        );
    }
}

/// A server that ends the connection right after its last frames (a drain does, once its
/// calls are done) fails the client's next send, here the stream's credit grant after 32
/// frames read; the frames it sent before (the last eight items and the end) are still
/// read and reach the stream. (Before, the failed send stopped the reader at once, and
/// whatever it had not read yet was lost: the stream failed with `PeerGone`.)
#[tokio::test(start_paused = true)]
async fn frames_sent_before_the_peers_end_reach_their_stream_after_a_send_fails() {
    let (to_server, mut stx, mut srx) = scripted_server();
    let (mut stream, (h, _)) = tokio::join!(
        async {
            to_server
                .call_stream_raw("m", b"", CallOptions::default())
                .await
                .expect("started")
        },
        async { srx.recv().await.expect("the request") }
    );
    // The server reads no more: the client's next send fails.
    drop(srx);
    let send = |stx: &mut FrameTx, n: u8, kind| {
        let sent = stx.try_send_parts(Dir::ToCaller, kind, h.method, h.call_id, &[&[n]]);
        assert!(sent.expect("the client reads"), "room for frame {n}");
    };
    for n in 0..32u8 {
        send(&mut stx, n, Kind::StreamItem);
        assert_eq!(stream.next_raw().await.expect("an item").expect("ok"), [n]);
    }
    // Reading the 32nd item sent the grant, which failed. The last frames come after.
    for n in 32..40u8 {
        send(&mut stx, n, Kind::StreamItem);
    }
    send(&mut stx, 0, Kind::StreamEnd);
    for n in 32..40u8 {
        let item = stream.next_raw().await.expect("an item");
        assert_eq!(item.expect("sent before the server's end"), [n]);
    }
    assert!(stream.next_raw().await.is_none(), "the stream's end");
}

/// A checksum of a sequence of numbers that depends on their order.
fn checksum(items: impl IntoIterator<Item = u64>) -> u64 {
    items.into_iter().fold(0xcbf2_9ce4_8422_2325, |h, n| {
        (h ^ n).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Streaming methods of both new shapes: `sum` answers the count and checksum of the items
/// it read; `echo` sends back `3n + 1` for each item `n`; `fail_after_one` reads one item
/// and fails; `wait_cancel` (both shapes) waits for its cancel and reports it.
fn stream_methods(cancelled: Option<tokio::sync::mpsc::UnboundedSender<&'static str>>) -> Methods {
    let mut m = Methods::new(false);
    m.client_streaming("sum", |_ctx, mut items| async move {
        let mut seen = Vec::new();
        while let Some(n) = items.next().await {
            seen.push(n?);
        }
        Ok((seen.len() as u64, checksum(seen)))
    });
    m.bidi("echo", |_ctx, mut items, sink| async move {
        while let Some(n) = items.next().await {
            let n: u64 = n?;
            sink.send(&(3 * n + 1)).await?;
        }
        Ok(())
    });
    m.client_streaming("fail_after_one", |_ctx, mut items| async move {
        let _: Option<Result<u64, _>> = items.next().await;
        Err::<u64, _>(RpcError::handler("enough"))
    });
    m.bidi("bidi_fail_after_one", |_ctx, mut items, _sink| async move {
        let _: Option<Result<u64, _>> = items.next().await;
        Err(RpcError::handler("enough"))
    });
    let c = cancelled.clone();
    m.client_streaming_raw("wait_cancel", move |ctx, _items| {
        let c = c.clone();
        async move {
            ctx.cancelled().await;
            if let Some(c) = c {
                let _ = c.send("client stream");
            }
            Ok(Vec::new())
        }
    });
    m.bidi_raw("bidi_wait_cancel", move |ctx, _items, _sink| {
        let c = cancelled.clone();
        async move {
            ctx.cancelled().await;
            if let Some(c) = c {
                let _ = c.send("bidi");
            }
            Ok(())
        }
    });
    m.unary("double", |_ctx, n: u64| async move {
        tokio::task::yield_now().await;
        Ok(n * 2)
    });
    m
}

/// A client-streaming method that reads until its item stream fails, and reports how:
/// `Ok(code)` if it failed with a cancelled context, `Err` with what happened otherwise.
fn reading_until_cancelled(
    seen: tokio::sync::mpsc::UnboundedSender<Result<Code, String>>,
) -> Methods {
    let mut m = Methods::new(false);
    m.client_streaming_raw("read_until_cancelled", move |ctx, mut items| {
        let seen = seen.clone();
        async move {
            let outcome = loop {
                match items.next_raw().await {
                    Some(Ok(_)) => continue,
                    Some(Err(e)) if ctx.is_cancelled() => break Ok(e.code),
                    other => break Err(format!("{other:?}")),
                }
            };
            let _ = seen.send(outcome);
            Ok(Vec::new())
        }
    });
    m
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_callers_item_stream_fails_in_the_handler() {
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let (_to_client, to_server) = pair(reading_until_cancelled(seen_tx), Methods::new(false));
    let mut call = to_server
        .call_client_stream("read_until_cancelled", CallOptions::default())
        .await
        .unwrap();
    for i in 0..100u64 {
        call.send(&i).await.unwrap();
    }
    call.cancel();
    assert_eq!(seen.recv().await, Some(Ok(Code::Cancelled)));
}

#[tokio::test(start_paused = true)]
async fn a_client_stream_of_100000_items_reaches_the_handler_in_order() {
    const N: u64 = 100_000;
    let (to_client, to_server) = pair(stream_methods(None), stream_methods(None));
    let items = || (0..N).map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut call = to_server
        .call_client_stream("sum", CallOptions::default())
        .await
        .unwrap();
    for n in items() {
        call.send(&n).await.expect("sent");
    }
    let got: (u64, u64) = call.finish().await.expect("answered");
    assert_eq!(got, (N, checksum(items())));
    // The same items in runs of 1,000 (`send_all`): many frames, more than a window.
    let mut call = to_server
        .call_client_stream("sum", CallOptions::default())
        .await
        .unwrap();
    let all: Vec<u64> = items().collect();
    for run in all.chunks(1000) {
        call.send_all(run).await.expect("sent");
    }
    let got: (u64, u64) = call.finish().await.expect("answered");
    assert_eq!(got, (N, checksum(items())));
    // The other way: the server calls the client's method.
    let mut call = to_client
        .call_client_stream("sum", CallOptions::default())
        .await
        .unwrap();
    for n in 0..1000u64 {
        call.send(&n).await.expect("sent");
    }
    let got: (u64, u64) = call.finish().await.expect("answered");
    assert_eq!(got, (1000, checksum(0..1000)));
}

/// A bidirectional echo of `n` items from two tasks (sender and receiver): checksums of
/// what was sent and what came back.
async fn bidi_echo(peer: &Peer, n: u64) {
    let (mut tx, mut rx) = peer
        .call_bidi("echo", CallOptions::default())
        .await
        .unwrap()
        .split();
    let sending = tokio::spawn(async move {
        for i in 0..n {
            tx.send(&i).await.expect("sent");
        }
        tx.finish().await.expect("finished");
        checksum(0..n)
    });
    let mut back = Vec::new();
    while let Some(item) = rx.next::<u64>().await {
        back.push(item.expect("an echo"));
    }
    let sent = sending.await.unwrap();
    assert_eq!(back.len() as u64, n);
    assert_eq!(checksum(back.iter().map(|b| (b - 1) / 3)), sent);
    assert_eq!(checksum(back), checksum((0..n).map(|i| 3 * i + 1)));
}

#[tokio::test(start_paused = true)]
async fn a_bidi_echo_returns_every_item_both_ways_at_once() {
    let (to_client, to_server) = pair(stream_methods(None), stream_methods(None));
    // Both directions at once on the one connection.
    let other = tokio::spawn(async move { bidi_echo(&to_client, 5_000).await });
    bidi_echo(&to_server, 20_000).await;
    other.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_caller_that_stops_reading_its_bidi_output_stalls_only_that_call() {
    let (_to_client, to_server) = pair(stream_methods(None), Methods::new(false));
    let (mut tx, mut rx) = to_server
        .call_bidi("echo", CallOptions::default())
        .await
        .unwrap()
        .split();
    let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let sending = tokio::spawn({
        let sent = sent.clone();
        async move {
            for i in 0..1_000u64 {
                tx.send(&i).await.expect("sent");
                sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            tx.finish().await.expect("finished");
        }
    });
    // Nothing reads the echoes: the handler sends a window of them, then waits for credit
    // and reads no more items; the sender gets credit for what the handler read (two
    // grants of half a window) and then waits too.
    let got: u64 = to_server
        .call("double", &21u64, CallOptions::default())
        .await
        .expect("another call on the connection goes on");
    assert_eq!(got, 42);
    // Paused clock: this returns once every task waits.
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(!sending.is_finished());
    assert_eq!(sent.load(std::sync::atomic::Ordering::Relaxed), 2 * 64);
    // Reading again lets the whole call through.
    let mut back = Vec::new();
    while let Some(item) = rx.next::<u64>().await {
        back.push(item.expect("an echo"));
    }
    sending.await.unwrap();
    assert_eq!(checksum(back), checksum((0..1_000).map(|i| 3 * i + 1)));
}

#[tokio::test(start_paused = true)]
async fn dropping_a_client_stream_or_bidi_call_cancels_its_handler() {
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let (to_client, to_server) = pair(
        stream_methods(Some(seen_tx.clone())),
        stream_methods(Some(seen_tx)),
    );
    for peer in [&to_server, &to_client] {
        let mut call = peer
            .call_client_stream("wait_cancel", CallOptions::default())
            .await
            .unwrap();
        call.send_raw(b"one").await.unwrap();
        drop(call);
        assert_eq!(seen.recv().await, Some("client stream"));
        let mut call = peer
            .call_bidi("bidi_wait_cancel", CallOptions::default())
            .await
            .unwrap();
        call.sender.send_raw(b"one").await.unwrap();
        drop(call);
        assert_eq!(seen.recv().await, Some("bidi"));
    }
    // A deadline cancels it too, and fails the caller's waiting response.
    let call = to_server
        .call_client_stream("wait_cancel", CallOptions::timeout(Duration::from_secs(1)))
        .await
        .unwrap();
    let e = call.finish_raw().await.unwrap_err();
    assert_eq!(e.code, Code::DeadlineExceeded, "{e}");
    assert_eq!(seen.recv().await, Some("client stream"));
}

#[tokio::test(start_paused = true)]
async fn dropping_only_the_bidi_sender_ends_the_handlers_input() {
    let (_to_client, to_server) = pair(stream_methods(None), Methods::new(false));
    let (mut tx, mut rx) = to_server
        .call_bidi("echo", CallOptions::default())
        .await
        .unwrap()
        .split();
    tx.send(&7u64).await.unwrap();
    drop(tx);
    assert_eq!(rx.next::<u64>().await.transpose().unwrap(), Some(22));
    // The handler saw the end of its input and ended its stream.
    assert!(rx.next::<u64>().await.is_none());
}

#[tokio::test(start_paused = true)]
async fn a_handler_that_ends_early_fails_the_callers_pending_send() {
    let (_to_client, to_server) = pair(stream_methods(None), Methods::new(false));
    // Client stream: the sender runs out of credit (the handler read one item and
    // failed), and its waiting send fails with the handler's error; so does the response.
    let mut call = to_server
        .call_client_stream("fail_after_one", CallOptions::default())
        .await
        .unwrap();
    let mut e = None;
    for i in 0..1_000u64 {
        if let Err(err) = call.send(&i).await {
            e = Some(err);
            break;
        }
    }
    let e = e.expect("a send failed");
    assert_eq!(
        (e.code, e.message.as_str()),
        (Code::HandlerFailed, "enough")
    );
    let e = call.finish_raw().await.unwrap_err();
    assert_eq!(
        (e.code, e.message.as_str()),
        (Code::HandlerFailed, "enough")
    );
    // Bidi: the receiver gets the error, and so does the sender.
    let (mut tx, mut rx) = to_server
        .call_bidi("bidi_fail_after_one", CallOptions::default())
        .await
        .unwrap()
        .split();
    let sending = tokio::spawn(async move {
        for i in 0..1_000u64 {
            if let Err(e) = tx.send(&i).await {
                return e;
            }
        }
        panic!("every send went through");
    });
    let e = rx.next::<u64>().await.expect("an outcome").unwrap_err();
    assert_eq!(
        (e.code, e.message.as_str()),
        (Code::HandlerFailed, "enough")
    );
    let e = sending.await.unwrap();
    assert_eq!(
        (e.code, e.message.as_str()),
        (Code::HandlerFailed, "enough")
    );
}

#[tokio::test(start_paused = true)]
async fn items_beyond_the_credit_end_the_connection() {
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let (to_client, mut tx, mut rx) = scripted(stream_methods(Some(seen_tx)));
    // The server has a call open on the (scripted) client: it fails when the connection
    // ends, with the reason.
    let callback = server_calls_the_client(&to_client, &mut rx).await;
    let m = method_id("wait_cancel");
    tx.send_parts(Dir::ToCallee, Kind::Request, m, 1, &[&0u32.to_le_bytes()])
        .await
        .unwrap();
    // A window of items is fine (the handler reads none) ...
    for _ in 0..64 {
        tx.send(Dir::ToCallee, Kind::StreamItem, m, 1, b"x")
            .await
            .unwrap();
    }
    // ... one more breaks flow control.
    tx.send(Dir::ToCallee, Kind::StreamItem, m, 1, b"x")
        .await
        .unwrap();
    let e = callback.await.unwrap().unwrap_err();
    assert_eq!(e.code, Code::Protocol, "{e}");
    assert!(e.message.contains("credit"), "{e}");
    assert_eq!(
        seen.recv().await,
        Some("client stream"),
        "handler cancelled"
    );
    assert!(!to_client.is_connected());
}

#[tokio::test(start_paused = true)]
async fn items_for_a_method_that_takes_none_fail_that_call_only() {
    let (to_client, mut tx, mut rx) = scripted(methods("server", None));
    let m = method_id("hang");
    tx.send_parts(Dir::ToCallee, Kind::Request, m, 1, &[&0u32.to_le_bytes()])
        .await
        .unwrap();
    tx.send(Dir::ToCallee, Kind::StreamItem, m, 1, b"x")
        .await
        .unwrap();
    let (h, payload) = rx.recv().await.expect("the refusal");
    assert_eq!((h.kind, h.call_id), (Kind::Error, 1));
    let e = RpcError::decode(&payload);
    assert_eq!(e.code, Code::BadRequest, "{e}");
    // Items and credit for calls that are over (or never were) are ignored, and the
    // connection goes on.
    tx.send(Dir::ToCallee, Kind::StreamItem, m, 1, b"x")
        .await
        .unwrap();
    tx.send(Dir::ToCallee, Kind::StreamEnd, m, 99, b"")
        .await
        .unwrap();
    tx.send(Dir::ToCaller, Kind::Credit, m, 99, &32u32.to_le_bytes())
        .await
        .unwrap();
    let d = method_id("double");
    tx.send_parts(
        Dir::ToCallee,
        Kind::Request,
        d,
        2,
        &[&0u32.to_le_bytes(), &crate::rpc::encode(&5u64).unwrap()],
    )
    .await
    .unwrap();
    let (h, payload) = rx.recv().await.expect("the answer");
    assert_eq!((h.kind, h.call_id), (Kind::Response, 2));
    let got: (String, u64) = crate::rpc::decode(&payload).unwrap();
    assert_eq!(got, ("server".to_string(), 10));
    assert!(to_client.is_connected());
}

#[tokio::test(start_paused = true)]
async fn items_sent_while_the_request_waits_for_a_permit_are_kept_within_the_window() {
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let (_to_client, to_server) = pair(stream_methods(Some(seen_tx)), Methods::new(false));
    // Every permit of the server (max_in_flight 8) taken by a call that waits.
    let mut holders = Vec::new();
    for _ in 0..8 {
        holders.push(
            to_server
                .call_client_stream("wait_cancel", CallOptions::default())
                .await
                .unwrap(),
        );
    }
    let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let summing = tokio::spawn({
        let (peer, sent) = (to_server.clone(), sent.clone());
        async move {
            let mut call = peer
                .call_client_stream("sum", CallOptions::default())
                .await
                .unwrap();
            for i in 0..500u64 {
                call.send(&i).await.expect("sent");
                sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            call.finish::<(u64, u64)>().await
        }
    });
    // Paused clock: returns once every task waits. The queued call took a window of items.
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(sent.load(std::sync::atomic::Ordering::Relaxed), 64);
    assert!(!summing.is_finished());
    // A permit frees: the call starts with the items it had sent, then takes the rest.
    holders.pop();
    assert_eq!(seen.recv().await, Some("client stream"));
    let got = summing.await.unwrap().expect("answered");
    assert_eq!(got, (500, checksum(0..500)));
}

/// During a drain the connection is still read: a streaming handler longer than the credit
/// window gets the caller's credit, and its callback to the client gets its answer; a call
/// started after the drain began is refused; the end comes once both handlers are done.
#[tokio::test(start_paused = true)]
async fn a_drain_reads_on_until_the_calls_in_flight_are_done() {
    const ITEMS: u64 = 3 * STREAM_WINDOW as u64;
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

#[tokio::test(start_paused = true)]
async fn an_item_over_the_size_limit_fails_only_its_call() {
    let (to_client, mut tx, mut rx) = scripted(stream_methods(None));
    let m = method_id("sum");
    tx.send_parts(Dir::ToCallee, Kind::Request, m, 1, &[&0u32.to_le_bytes()])
        .await
        .unwrap();
    // Over the 1 MiB limit of the test's ends.
    tx.send(
        Dir::ToCallee,
        Kind::StreamItem,
        m,
        1,
        &vec![0u8; (1 << 20) + 1],
    )
    .await
    .unwrap();
    let (h, payload) = rx.recv().await.expect("the call's outcome");
    assert_eq!((h.kind, h.call_id), (Kind::Error, 1));
    let e = RpcError::decode(&payload);
    assert_eq!(e.code, Code::TooLarge, "{e}");
    // The connection goes on: another client stream is summed.
    tx.send_parts(Dir::ToCallee, Kind::Request, m, 2, &[&0u32.to_le_bytes()])
        .await
        .unwrap();
    for n in [5u64, 6] {
        let item = crate::rpc::encode(&n).unwrap();
        tx.send(Dir::ToCallee, Kind::StreamItem, m, 2, &item)
            .await
            .unwrap();
    }
    tx.send(Dir::ToCallee, Kind::StreamEnd, m, 2, b"")
        .await
        .unwrap();
    let (h, payload) = rx.recv().await.expect("the answer");
    assert_eq!((h.kind, h.call_id), (Kind::Response, 2));
    let got: (u64, u64) = crate::rpc::decode(&payload).unwrap();
    assert_eq!(got, (2, checksum([5, 6])));
    assert!(to_client.is_connected());
}

#[tokio::test(start_paused = true)]
async fn a_send_waiting_for_credit_fails_when_the_connection_ends() {
    // The server streams to a scripted client that reads its items but grants no credit.
    let (to_client, tx, mut rx) = scripted(Methods::new(false));
    let sending = tokio::spawn(async move {
        let mut call = to_client
            .call_client_stream("sink", CallOptions::default())
            .await?;
        for i in 0..1_000u64 {
            call.send(&i).await?;
        }
        Ok::<_, RpcError>(())
    });
    let (h, _) = rx.recv().await.expect("the request");
    assert_eq!((h.kind, Dir::to_callee(h.flags)), (Kind::Request, true));
    for n in 0..64u64 {
        let (h, payload) = rx.recv().await.expect("an item");
        assert_eq!((h.kind, Dir::to_callee(h.flags)), (Kind::StreamItem, true));
        assert_eq!(crate::rpc::decode::<u64>(&payload).unwrap(), n);
    }
    // A window sent: the next send waits for credit. Paused clock: returns once idle.
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(!sending.is_finished());
    drop((tx, rx));
    let e = sending.await.unwrap().unwrap_err();
    assert_eq!(e.code, Code::PeerGone, "{e}");
}

#[tokio::test(start_paused = true)]
async fn stream_readers_dropped_while_waiting_lose_no_item() {
    // Both readers poll `next` once at a time and drop it when it would wait: the handler
    // reading the caller's items, and the caller reading the handler's echoes.
    let mut m = Methods::new(false);
    m.bidi(
        "impatient_echo",
        |_ctx, mut items: Items<u64>, sink| async move {
            loop {
                match tokio::time::timeout(Duration::ZERO, items.next()).await {
                    Err(_) => tokio::task::yield_now().await,
                    Ok(None) => return Ok(()),
                    Ok(Some(n)) => sink.send(&(3 * n? + 1)).await?,
                }
            }
        },
    );
    let (_to_client, to_server) = pair(m, Methods::new(false));
    let (mut tx, mut rx) = to_server
        .call_bidi("impatient_echo", CallOptions::default())
        .await
        .unwrap()
        .split();
    const N: u64 = 5_000;
    let sending = tokio::spawn(async move {
        for i in 0..N {
            tx.send(&i).await.expect("sent");
        }
        tx.finish().await.expect("finished");
    });
    let mut back = Vec::new();
    loop {
        match tokio::time::timeout(Duration::ZERO, rx.next::<u64>()).await {
            Err(_) => tokio::task::yield_now().await,
            Ok(None) => break,
            Ok(Some(item)) => back.push(item.expect("an echo")),
        }
    }
    sending.await.unwrap();
    assert_eq!(checksum(back), checksum((0..N).map(|i| 3 * i + 1)));
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

/// Methods of `methods(tag)`, plus the notification `seq` (each `u64` received is passed
/// on to `seen`) and `gated` (each handler first takes one permit of `gate`, then passes
/// its `u64` on).
fn notify_methods(
    tag: &'static str,
    seen: tokio::sync::mpsc::UnboundedSender<u64>,
    gate: Arc<tokio::sync::Semaphore>,
) -> Methods {
    let mut m = methods(tag, None);
    let seen2 = seen.clone();
    m.on_notify("seq", move |_ctx, n: u64| {
        let seen = seen.clone();
        async move {
            let _ = seen.send(n);
        }
    });
    m.on_notify("gated", move |_ctx, n: u64| {
        let (seen, gate) = (seen2.clone(), gate.clone());
        async move {
            gate.acquire().await.expect("open").forget();
            let _ = seen.send(n);
        }
    });
    m
}

/// Receives `n` values from `seen`; asserts they are 0..n in order, returns their checksum.
async fn in_order(seen: &mut tokio::sync::mpsc::UnboundedReceiver<u64>, n: u64) -> u64 {
    let mut sum = 0u64;
    for want in 0..n {
        let got = seen.recv().await.expect("a notification");
        assert_eq!(got, want, "notifications out of order");
        sum = sum.wrapping_mul(31).wrapping_add(got);
    }
    sum
}

#[tokio::test(start_paused = true)]
async fn ten_thousand_notifications_each_way_arrive_in_order() {
    const N: u64 = 10_000;
    let (s_tx, mut s_seen) = tokio::sync::mpsc::unbounded_channel();
    let (c_tx, mut c_seen) = tokio::sync::mpsc::unbounded_channel();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let (to_client, to_server) = pair(
        notify_methods("server", s_tx, gate.clone()),
        notify_methods("client", c_tx, gate),
    );
    let send = |peer: Peer| {
        tokio::spawn(async move {
            for n in 0..N {
                peer.notify("seq", &n).await.expect("sent");
            }
        })
    };
    let (a, b) = (send(to_client), send(to_server));
    let want = (0..N).fold(0u64, |s, n| s.wrapping_mul(31).wrapping_add(n));
    assert_eq!(in_order(&mut s_seen, N).await, want);
    assert_eq!(in_order(&mut c_seen, N).await, want);
    a.await.unwrap();
    b.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_blocked_notification_handler_holds_the_sender_after_the_window_only() {
    let (s_tx, mut s_seen) = tokio::sync::mpsc::unbounded_channel();
    let (c_tx, _c_seen) = tokio::sync::mpsc::unbounded_channel();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let (_to_client, to_server) = pair(
        notify_methods("server", s_tx, gate.clone()),
        notify_methods("client", c_tx, Arc::new(tokio::sync::Semaphore::new(0))),
    );
    let window = super::NOTIFY_WINDOW as u64;
    // The client notifies `gated` window + 1 times, reporting each send that returned.
    let (sent_tx, mut sent) = tokio::sync::mpsc::unbounded_channel();
    let sender = tokio::spawn({
        let p = to_server.clone();
        async move {
            for n in 0..=window {
                p.notify("gated", &n).await.expect("sent");
                let _ = sent_tx.send(n);
            }
        }
    });
    for n in 0..window {
        assert_eq!(sent.recv().await, Some(n));
    }
    // A call on the same connection completes while the notifier waits ...
    let got: (String, u64) = to_server
        .call("double", &21u64, CallOptions::default())
        .await
        .expect("the call goes on");
    assert_eq!(got, ("server".to_string(), 42));
    // ... and the notifier is still held: its credit is spent, the last send waits.
    assert_eq!(to_server.out.notify_credit.available_permits(), 0);
    assert!(
        sent.try_recv().is_err(),
        "a send beyond the window returned"
    );
    assert!(s_seen.try_recv().is_err(), "a gated handler ran");
    // Released, every notification is handled in order and the last send returns.
    gate.add_permits(window as usize + 1);
    assert_eq!(sent.recv().await, Some(window));
    in_order(&mut s_seen, window + 1).await;
    sender.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn an_unknown_notification_is_dropped_and_its_credit_returned() {
    let (s_tx, _s_seen) = tokio::sync::mpsc::unbounded_channel();
    let (c_tx, _c_seen) = tokio::sync::mpsc::unbounded_channel();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let (_to_client, to_server) = pair(
        notify_methods("server", s_tx, gate.clone()),
        notify_methods("client", c_tx, gate),
    );
    // Well beyond the window: only returned credit lets these go.
    for n in 0..(3 * super::NOTIFY_WINDOW as u64) {
        to_server.notify("nobody", &n).await.expect("sent");
    }
    let got: (String, u64) = to_server
        .call("double", &5u64, CallOptions::default())
        .await
        .expect("the connection goes on");
    assert_eq!(got, ("server".to_string(), 10));
    assert!(to_server.is_connected());
}

#[tokio::test(start_paused = true)]
async fn notifications_beyond_the_credit_end_the_connection() {
    let (s_tx, _s_seen) = tokio::sync::mpsc::unbounded_channel();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let (to_client, mut tx, mut rx) = scripted(notify_methods("server", s_tx, gate));
    let callback = server_calls_the_client(&to_client, &mut rx).await;
    let m = method_id("gated");
    let body = crate::rpc::encode(&7u64).unwrap();
    // A window of notifications is fine (the handler holds them all) ...
    for _ in 0..super::NOTIFY_WINDOW {
        tx.send(Dir::ToCallee, Kind::Notify, m, 0, &body)
            .await
            .unwrap();
    }
    // ... one more breaks flow control.
    tx.send(Dir::ToCallee, Kind::Notify, m, 0, &body)
        .await
        .unwrap();
    let e = callback.await.unwrap().unwrap_err();
    assert_eq!(e.code, Code::Protocol, "{e}");
    assert!(e.message.contains("credit"), "{e}");
    assert!(!to_client.is_connected());
}

#[tokio::test(start_paused = true)]
async fn a_notification_without_the_to_callee_bit_is_a_protocol_error() {
    let (to_client, mut tx, mut rx) = scripted(methods("server", None));
    let callback = server_calls_the_client(&to_client, &mut rx).await;
    tx.send(Dir::ToCaller, Kind::Notify, method_id("x"), 0, b"")
        .await
        .unwrap();
    let e = callback.await.unwrap().unwrap_err();
    assert_eq!(e.code, Code::Protocol, "{e}");
}

/// A server end (serving `methods`, draining when `drain` says so, with `grace` for its
/// handlers after the end) and a client end, in memory; the server's run in a task.
fn draining_pair(
    methods: Methods,
    grace: Duration,
) -> (
    tokio::sync::watch::Sender<bool>,
    tokio::task::JoinHandle<()>,
    Peer,
) {
    let (drain, draining) = tokio::sync::watch::channel(false);
    let ((stx, srx), (ctx, crx)) = mem_pair(64, 1 << 20);
    let info = || Arc::new(ConnInfo::new(1, None, "mem", None));
    let ends = Ends {
        draining: Some(draining),
        shut: None,
    };
    let server = host_graced(methods, grace);
    let (_to_client, run) = open(server, Role::Server, stx, srx, info(), ends);
    let serving = tokio::spawn(run);
    let client = host(Methods::new(false));
    let (to_server, run) = open(client, Role::Client, ctx, crx, info(), Ends::default());
    tokio::spawn(run);
    (drain, serving, to_server)
}

#[tokio::test(start_paused = true)]
async fn notifications_queued_when_the_connection_drains_are_still_handled() {
    const N: u64 = 10;
    let (s_tx, mut s_seen) = tokio::sync::mpsc::unbounded_channel();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let methods = notify_methods("server", s_tx, gate.clone());
    // A grace far beyond anything the paused clock reaches in this test.
    let (drain, serving, to_server) = draining_pair(methods, Duration::from_secs(1 << 20));
    for n in 0..N {
        to_server.notify("gated", &n).await.expect("sent");
    }
    // Paused clock: this returns once every task is idle: the server received all ten,
    // its first handler waits at the gate, nine wait in its queue.
    tokio::time::sleep(Duration::from_secs(1)).await;
    drain.send_replace(true);
    serving.await.expect("the server's end finishes");
    // The connection is over; the notifications it delivered are still handled, in order.
    gate.add_permits(N as usize);
    let want = (0..N).fold(0u64, |s, n| s.wrapping_mul(31).wrapping_add(n));
    assert_eq!(in_order(&mut s_seen, N).await, want);
}

#[tokio::test(start_paused = true)]
async fn a_notification_handler_that_never_returns_is_dropped_a_grace_after_the_end() {
    let (held_tx, held) = tokio::sync::oneshot::channel::<()>();
    let held_tx = Arc::new(std::sync::Mutex::new(Some(held_tx)));
    let mut methods = Methods::new(false);
    methods.on_notify_raw("stuck", move |_ctx, _body| {
        let held = held_tx.lock().unwrap().take();
        async move {
            let _held = held; // dropped with the handler
            std::future::pending::<()>().await;
        }
    });
    let (drain, serving, to_server) = draining_pair(methods, Duration::from_millis(100));
    to_server.notify_raw("stuck", b"").await.expect("sent");
    tokio::time::sleep(Duration::from_secs(1)).await;
    drain.send_replace(true);
    serving.await.expect("the server's end finishes");
    // The clock is paused: the wait below passes the grace at once, not the bound.
    let dropped = tokio::time::timeout(Duration::from_secs(3600), held).await;
    assert!(
        matches!(dropped, Ok(Err(_))),
        "the handler outlived the grace"
    );
}

/// Methods that stream with `send_all`: `count` sends `0..n` (typed, `u32`) in one call;
/// `chunks` sends `0..chunks * per` in calls of `per`; `sized` sends raw items of the
/// lengths given (item `i` filled with byte `i`).
fn batch_methods() -> Methods {
    let mut m = Methods::new(false);
    m.streaming("count", |_ctx, n: u32, sink| async move {
        sink.send_all(0..n).await
    });
    m.streaming(
        "chunks",
        |_ctx, (chunks, per): (u32, u32), sink| async move {
            for c in 0..chunks {
                sink.send_all(c * per..(c + 1) * per).await?;
            }
            Ok(())
        },
    );
    m.streaming("sized", |_ctx, lens: Vec<u32>, sink| async move {
        let items: Vec<Vec<u8>> = lens
            .iter()
            .enumerate()
            .map(|(i, &len)| vec![i as u8; len as usize])
            .collect();
        sink.send_all_raw(&items).await
    });
    // Items 0..n of four bytes each, written in place, until `stop` (which fails).
    m.streaming_raw("written", |_ctx, req, sink| async move {
        let (n, stop): (u32, u32) = crate::rpc::decode(&req)?;
        sink.send_all_with(0..n, |i, item| {
            if i == stop {
                return Err(RpcError::handler(format!("stopped at {i}")));
            }
            std::io::Write::write_all(item, &i.to_le_bytes()[..2]).expect("a frame");
            item.append_zeroed(2).copy_from_slice(&i.to_le_bytes()[2..]);
            assert_eq!(item.len(), 4);
            Ok(())
        })
        .await
    });
    // Items that encode up to the one marked `None`, which cannot be encoded.
    m.streaming(
        "unencodable",
        |_ctx, marks: Vec<Option<u32>>, sink| async move {
            sink.send_all(marks.into_iter().map(Unencodable)).await
        },
    );
    m
}

/// An item that is its `u32`, or fails to encode if there is none.
struct Unencodable(Option<u32>);

impl serde::Serialize for Unencodable {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Some(v) => s.serialize_u32(v),
            None => Err(serde::ser::Error::custom("not encodable")),
        }
    }
}

/// The items of a stream frame: a batch's, or a plain item's one.
fn frame_items(h: &crate::frame::FrameHeader, payload: &[u8]) -> Vec<Vec<u8>> {
    match h.kind {
        Kind::StreamItems => crate::frame::batch_items(payload)
            .expect("a well-formed batch")
            .map(<[u8]>::to_vec)
            .collect(),
        Kind::StreamItem => vec![payload.to_vec()],
        k => panic!("{k:?} where stream items were expected"),
    }
}

/// A raw client's request for `method` (no deadline) as call 1.
async fn raw_request(tx: &mut FrameTx, method: &str, body: &[u8]) {
    tx.send_parts(
        Dir::ToCallee,
        Kind::Request,
        method_id(method),
        1,
        &[&0u32.to_le_bytes(), body],
    )
    .await
    .unwrap();
}

/// Whether the runtime runs out of work before a frame arrives (paused clock).
async fn nothing_more(rx: &mut FrameRx) -> bool {
    tokio::time::timeout(Duration::from_secs(1), rx.recv())
        .await
        .is_err()
}

/// Reads stream frames of call 1 until the stream ends: the items (decoded as `u32`) and
/// how many came in each frame. Grants a window's credit whenever the frames stop.
async fn read_counted(tx: &mut FrameTx, rx: &mut FrameRx, got: &mut Vec<u32>) -> Vec<usize> {
    let mut per_frame = Vec::new();
    loop {
        let frame = match tokio::time::timeout(Duration::from_secs(1), rx.recv()).await {
            Ok(frame) => frame.unwrap(),
            Err(_) => {
                let w = STREAM_WINDOW as u32;
                tx.send(Dir::ToCallee, Kind::Credit, 0, 1, &w.to_le_bytes())
                    .await
                    .unwrap();
                continue;
            }
        };
        let (h, p) = frame;
        assert_eq!((h.call_id, Dir::to_callee(h.flags)), (1, false));
        if !matches!(h.kind, Kind::StreamItem | Kind::StreamItems) {
            assert_eq!(h.kind, Kind::StreamEnd);
            return per_frame;
        }
        let items = frame_items(&h, &p);
        per_frame.push(items.len());
        got.extend(items.iter().map(|i| crate::rpc::decode::<u32>(i).unwrap()));
    }
}

#[tokio::test(start_paused = true)]
async fn send_all_puts_ready_items_in_one_frame_that_takes_one_unit_of_credit() {
    // 200 small items in one call: one frame.
    let (_to_client, mut tx, mut rx) = scripted(batch_methods());
    raw_request(&mut tx, "count", &crate::rpc::encode(&200u32).unwrap()).await;
    let mut got = Vec::new();
    assert_eq!(read_counted(&mut tx, &mut rx, &mut got).await, [200]);
    assert_eq!(got, (0..200).collect::<Vec<_>>());

    // 100 calls of 3 items: a frame each, a unit of credit each.
    let (_to_client, mut tx, mut rx) = scripted(batch_methods());
    raw_request(
        &mut tx,
        "chunks",
        &crate::rpc::encode(&(100u32, 3u32)).unwrap(),
    )
    .await;
    let mut frames = Vec::new();
    let mut got = Vec::new();
    for _ in 0..STREAM_WINDOW {
        let (h, p) = rx.recv().await.unwrap();
        assert_eq!(h.kind, Kind::StreamItems);
        frames.push(frame_items(&h, &p));
    }
    assert!(nothing_more(&mut rx).await, "more frames than the credit");
    // Credit for ten frames: ten frames of three.
    tx.send(Dir::ToCallee, Kind::Credit, 0, 1, &10u32.to_le_bytes())
        .await
        .unwrap();
    for _ in 0..10 {
        let (h, p) = rx.recv().await.unwrap();
        frames.push(frame_items(&h, &p));
    }
    assert!(nothing_more(&mut rx).await, "more frames than the credit");
    assert!(frames.iter().all(|f| f.len() == 3));
    for i in frames.iter().flatten() {
        got.push(crate::rpc::decode::<u32>(i).unwrap());
    }
    let rest = read_counted(&mut tx, &mut rx, &mut got).await;
    assert_eq!(rest, [3; 26]);
    assert_eq!(got, (0..300).collect::<Vec<_>>());
}

#[tokio::test(start_paused = true)]
async fn send_all_keeps_batches_within_16_kib_and_sends_a_longer_item_alone() {
    let (_to_client, mut tx, mut rx) = scripted(batch_methods());
    // 40 items of 1000 bytes (16 fit in 16 KiB with their lengths), one of 20,000 (which
    // fits no batch), then 3 small ones.
    let mut lens = vec![1000u32; 40];
    lens.extend([20_000, 1, 0, 2]);
    raw_request(&mut tx, "sized", &crate::rpc::encode(&lens).unwrap()).await;
    let mut got = Vec::new();
    let mut frames = Vec::new();
    let end = loop {
        let (h, p) = rx.recv().await.unwrap();
        match h.kind {
            Kind::StreamItem | Kind::StreamItems => {
                assert!(
                    p.len() <= 16 << 10 || h.kind == Kind::StreamItem,
                    "{}",
                    p.len()
                );
                let items = frame_items(&h, &p);
                frames.push((h.kind, items.len()));
                got.extend(items);
            }
            k => break k,
        }
    };
    assert_eq!(end, Kind::StreamEnd);
    let (b, s) = (Kind::StreamItems, Kind::StreamItem);
    assert_eq!(frames, [(b, 16), (b, 16), (b, 8), (s, 1), (b, 3)]);
    let want: Vec<Vec<u8>> = lens
        .iter()
        .enumerate()
        .map(|(i, &len)| vec![i as u8; len as usize])
        .collect();
    assert_eq!(got, want);
}

/// A `sized` stream: 3,000 short items, then one too long to share a frame, then an
/// empty one; their lengths, and the stream.
async fn sized_stream(to_server: &Peer) -> (Vec<u32>, super::CallStream) {
    let lens: Vec<u32> = (0..3000u32)
        .map(|i| (i * 7) % 300)
        .chain([70_000, 0])
        .collect();
    let s = to_server
        .call_stream("sized", &lens, CallOptions::default())
        .await
        .unwrap();
    (lens, s)
}

#[tokio::test(start_paused = true)]
async fn batched_items_reach_a_callers_stream_in_order() {
    let (_to_client, to_server) = pair(batch_methods(), Methods::new(false));
    let (lens, mut s) = sized_stream(&to_server).await;
    let mut got = Vec::new();
    while let Some(item) = s.next_raw().await {
        got.push(item.unwrap());
    }
    assert_eq!(got.len(), lens.len());
    for (i, (item, &len)) in got.iter().zip(&lens).enumerate() {
        assert_eq!(item, &vec![i as u8; len as usize], "item {i}");
    }
    // 500 frames of two: the caller returns credit by frames read, or this would stall.
    let mut s = to_server
        .call_stream("chunks", &(500u32, 2u32), CallOptions::default())
        .await
        .unwrap();
    let mut got = Vec::new();
    while let Some(item) = s.next::<u32>().await {
        got.push(item.unwrap());
    }
    assert_eq!(got, (0..1000).collect::<Vec<_>>());
}

#[tokio::test(start_paused = true)]
async fn an_item_that_cannot_be_encoded_ends_the_batch_after_the_items_before_it() {
    let (_to_client, to_server) = pair(batch_methods(), Methods::new(false));
    for marks in [
        vec![Some(7), Some(8), None, Some(9)],
        vec![None, Some(1)],
        vec![Some(7), None],
    ] {
        let mut s = to_server
            .call_stream("unencodable", &marks, CallOptions::default())
            .await
            .unwrap();
        let before: Vec<u32> = marks.iter().map_while(|m| *m).collect();
        for want in &before {
            assert_eq!(s.next::<u32>().await.unwrap().unwrap(), *want, "{marks:?}");
        }
        let err = s.next::<u32>().await.unwrap().unwrap_err();
        assert_eq!(err.code, Code::BadRequest, "{marks:?}: {err}");
        assert!(s.next::<u32>().await.is_none());
    }
}

#[tokio::test(start_paused = true)]
async fn items_written_in_place_arrive_until_the_writer_fails() {
    let (_to_client, to_server) = pair(batch_methods(), Methods::new(false));
    for (n, stop) in [(2000u32, u32::MAX), (2000, 1500), (10, 0)] {
        let req = crate::rpc::encode(&(n, stop)).unwrap();
        let mut s = to_server
            .call_stream_raw("written", &req, CallOptions::default())
            .await
            .unwrap();
        let mut got = Vec::new();
        let end = loop {
            match s.next_raw().await {
                Some(Ok(item)) => got.push(u32::from_le_bytes(item.try_into().unwrap())),
                other => break other,
            }
        };
        assert_eq!(got, (0..n.min(stop)).collect::<Vec<_>>());
        match end {
            None => assert_eq!(stop, u32::MAX),
            Some(Err(e)) => {
                assert_eq!(e.code, Code::HandlerFailed);
                assert_eq!(e.message, format!("stopped at {stop}"));
            }
            Some(Ok(_)) => unreachable!(),
        }
    }
}

/// Reads a stream with `next_items`: its items, and how many each read lent.
async fn read_lent(s: &mut super::CallStream) -> (Vec<Vec<u8>>, Vec<usize>, Option<RpcError>) {
    let (mut items, mut lent) = (Vec::new(), Vec::new());
    while let Some(batch) = s.next_items().await {
        match batch {
            Ok(batch) => {
                let len = batch.len();
                items.extend(batch.map(<[u8]>::to_vec));
                lent.push(len);
            }
            Err(e) => return (items, lent, Some(e)),
        }
    }
    (items, lent, None)
}

#[tokio::test(start_paused = true)]
async fn next_items_lends_each_batch_whole_and_an_item_sent_alone_by_itself() {
    let (_to_client, to_server) = pair(batch_methods(), Methods::new(false));
    let (lens, mut s) = sized_stream(&to_server).await;
    let (items, lent, end) = read_lent(&mut s).await;
    assert!(end.is_none(), "{end:?}");
    assert_eq!(items.len(), lens.len());
    for (i, (item, &len)) in items.iter().zip(&lens).enumerate() {
        assert_eq!(item, &vec![i as u8; len as usize], "item {i}");
    }
    // As the frames came: batches within 16 KiB, the long item alone, the last alone.
    assert!(
        lent.len() < 3000 / 20,
        "{} reads for 3,000 items",
        lent.len()
    );
    assert_eq!(lent[lent.len() - 2..], [1, 1]);
    assert!(s.next_items().await.is_none());

    // 500 frames of two, read a frame at a time: each read returns credit, or this stalls
    // (and fails at the deadline).
    let mut s = to_server
        .call_stream(
            "chunks",
            &(500u32, 2u32),
            CallOptions::timeout(Duration::from_secs(600)),
        )
        .await
        .unwrap();
    let (items, lent, end) = read_lent(&mut s).await;
    assert!(end.is_none(), "{end:?}");
    assert_eq!(lent, [2; 500]);
    let got: Vec<u32> = items
        .iter()
        .map(|i| crate::rpc::decode(i).unwrap())
        .collect();
    assert_eq!(got, (0..1000).collect::<Vec<_>>());
}

#[tokio::test(start_paused = true)]
async fn next_items_lends_what_next_raw_left_of_a_batch_and_then_the_end_or_error() {
    let (_to_client, to_server) = pair(batch_methods(), Methods::new(false));
    let mut s = to_server
        .call_stream("count", &200u32, CallOptions::default())
        .await
        .unwrap();
    let first: u32 = s.next().await.unwrap().unwrap();
    let second: u32 = s.next().await.unwrap().unwrap();
    let (items, lent, end) = read_lent(&mut s).await;
    assert!(end.is_none(), "{end:?}");
    assert_eq!((first, second, lent), (0, 1, vec![198]));
    let rest: Vec<u32> = items
        .iter()
        .map(|i| crate::rpc::decode(i).unwrap())
        .collect();
    assert_eq!(rest, (2..200).collect::<Vec<_>>());

    // The items before an item that failed, then its error, then nothing.
    let marks = vec![Some(7u32), Some(8), None, Some(9)];
    let mut s = to_server
        .call_stream("unencodable", &marks, CallOptions::default())
        .await
        .unwrap();
    let (items, _, end) = read_lent(&mut s).await;
    let got: Vec<u32> = items
        .iter()
        .map(|i| crate::rpc::decode(i).unwrap())
        .collect();
    assert_eq!(got, [7, 8], "{end:?}");
    assert_eq!(end.map(|e| e.code), Some(Code::BadRequest));
    assert!(s.next_items().await.is_none());
    assert!(s.next_raw().await.is_none());
}

#[tokio::test(start_paused = true)]
async fn each_frame_read_returns_one_unit_of_credit_however_it_is_read() {
    // Two windows of frames from a scripted server (each sent once the one before was
    // read): batches of three and single items in turn, read with next_raw and next_items
    // mixed (a batch begun with one, finished with the other). Every frame read is one
    // unit of credit: 128 in all, in grants of 32, and no more.
    let (_to_server, (mut tx, mut rx), mut s, h) = stream_from_a_scripted_server().await;
    for _window in 0..2 {
        for f in 0..STREAM_WINDOW as u32 {
            let (kind, payload) = match f % 2 {
                0 => (Kind::StreamItems, batch_of([[3 * f as u8]; 3])),
                _ => (Kind::StreamItem, vec![f as u8]),
            };
            tx.send(Dir::ToCaller, kind, h.method, h.call_id, &payload)
                .await
                .unwrap();
        }
        for f in 0..STREAM_WINDOW {
            let lent = match f % 4 {
                // A batch: one item by next_raw, the rest lent.
                0 => {
                    s.next_raw().await.unwrap().unwrap();
                    s.next_items().await.unwrap().unwrap().len() + 1
                }
                // A single item by next_raw.
                1 => s.next_raw().await.unwrap().map(|_| 1).unwrap(),
                // A batch or a single item, lent whole.
                _ => s.next_items().await.unwrap().unwrap().len(),
            };
            assert_eq!(lent, if f % 2 == 0 { 3 } else { 1 }, "frame {f}");
        }
    }
    let mut granted = 0;
    while let Ok(Ok((g, payload))) = tokio::time::timeout(Duration::from_secs(1), rx.recv()).await {
        assert_eq!((g.kind, g.call_id), (Kind::Credit, h.call_id));
        granted += u32::from_le_bytes(payload[..4].try_into().unwrap());
    }
    assert_eq!(granted as usize, 2 * STREAM_WINDOW);
}

#[tokio::test(start_paused = true)]
async fn a_batch_towards_a_callee_feeds_its_item_stream() {
    let (_to_client, mut tx, mut rx) = scripted(stream_methods(None));
    raw_request(&mut tx, "sum", &[]).await;
    let m = method_id("sum");
    let batch = batch_of([5u64, 6, 7].map(|n| crate::rpc::encode(&n).unwrap()));
    tx.send(Dir::ToCallee, Kind::StreamItems, m, 1, &batch)
        .await
        .unwrap();
    let eight = crate::rpc::encode(&8u64).unwrap();
    tx.send(Dir::ToCallee, Kind::StreamItem, m, 1, &eight)
        .await
        .unwrap();
    tx.send(Dir::ToCallee, Kind::StreamEnd, m, 1, &[])
        .await
        .unwrap();
    let (h, p) = rx.recv().await.unwrap();
    assert_eq!(h.kind, Kind::Response);
    let (n, sum): (u64, u64) = crate::rpc::decode(&p).unwrap();
    assert_eq!((n, sum), (4, checksum([5, 6, 7, 8])));
}

#[tokio::test(start_paused = true)]
async fn a_batch_takes_one_unit_of_a_callers_credit() {
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let (to_client, mut tx, mut rx) = scripted(stream_methods(Some(seen_tx)));
    let callback = server_calls_the_client(&to_client, &mut rx).await;
    // `wait_cancel` reads nothing: a window of batches of ten is within the credit...
    raw_request(&mut tx, "wait_cancel", &[]).await;
    let m = method_id("wait_cancel");
    let ten = batch_of([b"x"; 10]);
    for _ in 0..STREAM_WINDOW {
        tx.send(Dir::ToCallee, Kind::StreamItems, m, 1, &ten)
            .await
            .unwrap();
    }
    // (Had each item taken a unit, the seventh batch would have ended the connection.)
    assert!(nothing_more(&mut rx).await, "the connection ended");
    assert!(to_client.is_connected());
    // ... one more frame, a single item, is past it.
    tx.send(Dir::ToCallee, Kind::StreamItem, m, 1, b"x")
        .await
        .unwrap();
    let e = callback.await.unwrap().unwrap_err();
    assert!(e.message.contains("credit"), "{e}");
    assert_eq!(seen.recv().await, Some("client stream"));
}

/// A server end whose scripted client sends `batch` for a `sum` call; returns the error
/// the server's own call to the client ends with (the connection's end).
async fn callee_refuses(batch: &[u8]) -> RpcError {
    let (to_client, mut tx, mut rx) = scripted(stream_methods(None));
    let callback = server_calls_the_client(&to_client, &mut rx).await;
    raw_request(&mut tx, "sum", &[]).await;
    tx.send(Dir::ToCallee, Kind::StreamItems, method_id("sum"), 1, batch)
        .await
        .unwrap();
    let e = callback.await.unwrap().unwrap_err();
    assert!(!to_client.is_connected());
    e
}

#[tokio::test(start_paused = true)]
async fn a_malformed_or_oversized_batch_ends_the_connection() {
    // An item whose length runs past the frame's end.
    let mut bad = batch_of([b"12345678"]);
    bad[0] = 9;
    let e = callee_refuses(&bad).await;
    assert_eq!(e.code, Code::Protocol, "{e}");
    assert!(e.message.contains("runs past"), "{e}");
    // A batch with no item.
    let e = callee_refuses(&[]).await;
    assert!(e.message.contains("no item"), "{e}");
    // More items than a batch may hold.
    let many = batch_of(vec![b""; crate::frame::BATCH_MAX_ITEMS + 1]);
    let e = callee_refuses(&many).await;
    assert!(e.message.contains("more than 512"), "{e}");
    // The same bytes as a caller's answer: the call and the connection fail.
    let (to_server, (mut tx, _rx), mut s, h) = stream_from_a_scripted_server().await;
    tx.send(Dir::ToCaller, Kind::StreamItems, h.method, h.call_id, &bad)
        .await
        .unwrap();
    let e = s.next_raw().await.expect("an error").unwrap_err();
    assert_eq!(e.code, Code::Protocol, "{e}");
    assert!(!to_server.is_connected());
}

#[tokio::test(start_paused = true)]
async fn an_end_that_finds_a_violation_tells_the_peer_why() {
    // The server finds a batch running past its frame's end: the client's end of the
    // transport reads an Error of call 0 with the reason, then the end.
    let (_to_client, mut tx, mut rx) = scripted(stream_methods(None));
    raw_request(&mut tx, "sum", &[]).await;
    let mut bad = batch_of([b"12345678"]);
    bad[0] = 9;
    tx.send(Dir::ToCallee, Kind::StreamItems, method_id("sum"), 1, &bad)
        .await
        .unwrap();
    let said = loop {
        let (h, payload) = tokio::time::timeout(Duration::from_secs(60), rx.recv())
            .await
            .expect("an Error frame of call 0 before the end")
            .expect("transport");
        if (h.kind, h.call_id) == (Kind::Error, 0) {
            break RpcError::decode(&payload);
        }
    };
    assert_eq!(said.code, Code::Protocol, "{said}");
    assert!(
        said.message.contains("call 1") && said.message.contains("runs past"),
        "{said}"
    );

    // Told so, the client fails its open calls with the reason, and tells nothing back.
    let (to_server, mut tx, mut rx) = scripted_server();
    let call = tokio::spawn({
        let p = to_server.clone();
        async move { p.call_raw("anything", b"x", CallOptions::default()).await }
    });
    let (h, _) = rx.recv().await.unwrap();
    assert_eq!(h.kind, Kind::Request);
    // A long reason, and a code other than Protocol: kept to 256 bytes (cut at a
    // character's boundary), and the end is a violation whatever the peer calls it.
    let why = RpcError::new(Code::PeerGone, "€".repeat(1000));
    tx.send(Dir::Conn, Kind::Error, 0, 0, &why.encode())
        .await
        .unwrap();
    let e = call.await.unwrap().unwrap_err();
    assert_eq!(e.code, Code::Protocol, "{e}");
    assert_eq!(
        e.message,
        format!("the peer ended the connection: {}", "€".repeat(85))
    );
    assert!(!to_server.is_connected());
    while let Ok(Ok((h, _))) = tokio::time::timeout(Duration::from_secs(1), rx.recv()).await {
        assert_ne!(h.kind, Kind::Error, "the reason sent back");
    }
}

#[tokio::test(start_paused = true)]
async fn a_callers_batched_bidi_items_come_back_in_order() {
    let (_to_client, to_server) = pair(stream_methods(None), stream_methods(None));
    // Both ways at once on a bidi call: items sent in batches (encoded by `send_all`, or
    // written in place by `send_all_with`, in turn), echoes read meanwhile.
    let (mut tx, mut rx) = to_server
        .call_bidi("echo", CallOptions::default())
        .await
        .unwrap()
        .split();
    let sending = tokio::spawn(async move {
        for start in (0..5000u64).step_by(250) {
            let items = start..start + 250;
            if start % 500 == 0 {
                tx.send_all(items).await.expect("sent");
            } else {
                tx.send_all_with(items, |n, item| item.encode(&n))
                    .await
                    .expect("sent");
            }
        }
        tx.finish().await.expect("finished");
    });
    let mut back = Vec::new();
    while let Some(item) = rx.next::<u64>().await {
        back.push(item.expect("an echo"));
    }
    sending.await.unwrap();
    assert_eq!(back, (0..5000u64).map(|n| 3 * n + 1).collect::<Vec<_>>());
}

/// A batch's payload: `items`, each behind its length.
fn batch_of<T: AsRef<[u8]>>(items: impl IntoIterator<Item = T>) -> Vec<u8> {
    let mut batch = Vec::new();
    for item in items {
        crate::frame::push_batch_item(&mut batch, item.as_ref()).unwrap();
    }
    batch
}

/// A server-streaming call from a client end to a scripted server, its request read off
/// the transport: the client's handle, the server's end of the transport, the stream and
/// the request's header (to answer it).
async fn stream_from_a_scripted_server() -> (
    Peer,
    (FrameTx, FrameRx),
    super::CallStream,
    crate::frame::FrameHeader,
) {
    let (to_server, tx, mut rx) = scripted_server();
    let s = to_server
        .call_stream_raw("stream", b"", CallOptions::default())
        .await
        .unwrap();
    let (h, _) = rx.recv().await.expect("the client's request");
    (to_server, (tx, rx), s, h)
}

/// A client-streaming call (`sum`) from a client end to a scripted server, its request
/// read off the transport: the client's handle, the server's end of the transport, and
/// the call.
async fn client_stream_to_a_scripted_server() -> (Peer, (FrameTx, FrameRx), super::ClientStreamCall)
{
    let (to_server, tx, mut rx) = scripted_server();
    let call = to_server
        .call_client_stream("sum", CallOptions::default())
        .await
        .unwrap();
    let (h, _) = rx.recv().await.expect("the client's request");
    assert_eq!(h.kind, Kind::Request);
    (to_server, (tx, rx), call)
}

#[tokio::test(start_paused = true)]
async fn a_caller_sends_its_ready_items_in_frames_that_take_one_unit_of_credit() {
    let (_to_server, (_tx, mut rx), mut call) = client_stream_to_a_scripted_server().await;
    // 100 runs of four, the server granting nothing: a window of frames, then it waits.
    let sending = tokio::spawn(async move {
        for run in 0..100u64 {
            call.send_all(run * 4..run * 4 + 4).await?;
        }
        Ok::<_, RpcError>(call)
    });
    let mut got = Vec::new();
    for _ in 0..STREAM_WINDOW {
        let (h, p) = rx.recv().await.unwrap();
        assert_eq!((h.kind, Dir::to_callee(h.flags)), (Kind::StreamItems, true));
        for item in frame_items(&h, &p) {
            got.push(crate::rpc::decode::<u64>(&item).unwrap());
        }
    }
    assert!(nothing_more(&mut rx).await, "a frame beyond the credit");
    assert!(!sending.is_finished());
    assert_eq!(got, (0..4 * STREAM_WINDOW as u64).collect::<Vec<_>>());
}

#[tokio::test(start_paused = true)]
async fn a_batch_dropped_before_it_went_gives_its_credit_back() {
    // The transport holds 64 frames: 15 unanswered requests (with the stream, as many
    // calls as the client keeps open) and 49 frames of items fill it, and the 50th frame
    // waits for room, holding its unit of credit.
    let (to_server, (_tx, mut rx), mut call) = client_stream_to_a_scripted_server().await;
    for _ in 0..15 {
        let out = to_server.out.clone();
        tokio::spawn(async move { out.call_raw("echo", b"x", None).await });
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Items of 10 KiB: one to a frame.
    let items = vec![vec![7u8; 10 << 10]; 50];
    let sent = tokio::time::timeout(Duration::from_secs(1), call.send_all_raw(&items)).await;
    assert!(sent.is_err(), "the 50th frame found room");
    let mut frames = Vec::new();
    while let Ok(Some((h, _))) = tokio::time::timeout(Duration::from_secs(1), rx.recv())
        .await
        .map(Result::ok)
    {
        frames.push(h.kind);
    }
    let item_frames = frames.iter().filter(|&&k| k == Kind::StreamItem).count();
    assert_eq!((frames.len(), item_frames), (64, 49));
    // 64 - 49 = 15 units are left (14 had the dropped frame kept its own): 15 more items
    // go, the 16th waits.
    let sending = tokio::spawn(async move {
        for n in 0..16u64 {
            call.send(&n).await?;
        }
        Ok::<_, RpcError>(call)
    });
    let mut more = 0;
    while let Ok(Ok((h, _))) = tokio::time::timeout(Duration::from_secs(1), rx.recv()).await {
        assert_eq!(h.kind, Kind::StreamItem);
        more += 1;
    }
    assert_eq!(more, 15);
    assert!(!sending.is_finished());
}

#[tokio::test(start_paused = true)]
async fn a_callee_past_the_credit_granted_ends_the_connection() {
    let (to_server, (mut tx, _rx), mut s, h) = stream_from_a_scripted_server().await;
    // A window of frames (batches and single items) is within the credit, read or not...
    let two = batch_of([b"a", b"b"]);
    for i in 0..STREAM_WINDOW {
        let (kind, payload) = if i % 2 == 0 {
            (Kind::StreamItems, &two[..])
        } else {
            (Kind::StreamItem, &b"c"[..])
        };
        tx.send(Dir::ToCaller, kind, h.method, h.call_id, payload)
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(to_server.is_connected());
    // ... one more frame is not: the callee broke flow control.
    tx.send(Dir::ToCaller, Kind::StreamItem, h.method, h.call_id, b"d")
        .await
        .unwrap();
    // (Read before the client's reader took it, the stream would have granted more.)
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut got = 0;
    let e = loop {
        let next = tokio::time::timeout(Duration::from_secs(60), s.next_raw()).await;
        match next.unwrap_or_else(|_| panic!("the stream did not end after {got} items")) {
            Some(Ok(_)) => got += 1,
            Some(Err(e)) => break e,
            None => panic!("the stream ended without an error"),
        }
    };
    assert_eq!(
        got,
        3 * STREAM_WINDOW / 2,
        "the window's items, and no more"
    );
    assert_eq!(e.code, Code::Protocol, "{e}");
    assert!(e.message.contains("beyond the credit"), "{e}");
    assert!(!to_server.is_connected());
}
