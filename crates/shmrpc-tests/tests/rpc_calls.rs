//! Request/response through the RPC API, between processes:
//! the server is a `peer rpc-server` process, the client lives in the test. Each request is
//! unique (sequence number and bytes derived from it) and the server answers with
//! `transform(request)`, so a lost, duplicated, mixed-up or garbled answer is caught.
//!
//! - 100 of 100 calls correct, typed and raw;
//! - 64 tasks calling concurrently on one connection, every response matched to its call;
//! - a streamed response in order (one item per frame, and a burst sent several to a frame),
//!   an unknown method, a bad request;
//! - the server counted exactly the calls made;
//! - the same suite over TCP on 127.0.0.1;
//! - over TCP, a frame whose bytes arrive with pauses longer than the server's heartbeat
//!   period is still one frame (the read must not lose bytes it already consumed);
//! - inline handlers (`unary_inline_raw`, `unary_inline`) answered into one reused buffer
//!   (`call_raw_into`) for sizes from empty through fragmented, from 64 tasks at once,
//!   and their errors and panics answered as errors on a connection that goes on; over
//!   shared memory (pooled buffers) and TCP;
//! - a shutdown requested before `serve` runs is not lost (in-process: an API property).
#![forbid(unsafe_code)]

use std::io::Write;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use shmrpc::lowlevel::frame::{self, FrameHeader, Kind, FRAME_HEADER_LEN};
use shmrpc::method_id;
use shmrpc::{CallOptions, Client, ClientConfig, Code};
use shmrpc_tests::{
    chat_token, field, field_parse, heavy, make_request, rpc_runtime, rpc_stats, spawn_peer,
    transform, with_watchdog, within, ChatRequest, PeerCommand, PeerProcess, RpcTarget, TestNames,
};

const WAIT: Duration = Duration::from_secs(10);
const CAP: usize = 65536;
const HEARTBEAT_MS: u64 = 2000;
const MAX_MESSAGE: usize = 16 << 20;

enum Target {
    Shm(String),
    Tcp(SocketAddr),
}

/// Starts `peer rpc-server` on a new name (or TCP) and waits until it serves.
fn start_server(names: &mut TestNames, tcp: bool, heartbeat_ms: u64) -> (PeerProcess, Target) {
    if tcp {
        let mut p = spawn_peer!(PeerCommand::RpcServer {
            target: RpcTarget::Tcp,
            cap: CAP,
            heartbeat_ms,
            max_message: MAX_MESSAGE,
            max_in_flight: None,
            handshake_timeout_ms: None,
        });
        let ready = p.expect("ready", WAIT);
        let addr = field(&ready, "addr")
            .expect("addr=")
            .parse()
            .expect("address");
        (p, Target::Tcp(addr))
    } else {
        let name = names.name("rpc-calls");
        let mut p = spawn_peer!(PeerCommand::RpcServer {
            target: RpcTarget::Shm(name.clone()),
            cap: CAP,
            heartbeat_ms,
            max_message: MAX_MESSAGE,
            max_in_flight: None,
            handshake_timeout_ms: None,
        });
        p.expect("ready", WAIT);
        (p, Target::Shm(name))
    }
}

/// Tells the server process to exit, checks that it shut down cleanly, and that nothing
/// of its names is left behind.
fn stop_server(mut server: PeerProcess, names: &TestNames) {
    server.send("exit");
    server.expect("done", WAIT);
    server.assert_exits_ok(WAIT);
    names.assert_clean_with_locks();
}

async fn connect(target: &Target) -> Client {
    let cfg = ClientConfig::default();
    let c = match target {
        Target::Shm(name) => Client::connect(name, cfg).await,
        Target::Tcp(addr) => Client::connect_tcp(*addr, cfg).await,
    };
    c.unwrap_or_else(|e| panic!("connect: {e}"))
}

/// One call of `transform` on request `seq`, checked; `Err` says what was wrong.
async fn checked(client: &Client, seq: u64) -> Result<(), String> {
    let req = make_request(seq);
    let opts = CallOptions::timeout(Duration::from_secs(30));
    match client.call_raw("transform", &req, opts).await {
        Ok(r) if r == transform(&req) => Ok(()),
        Ok(r) => Err(format!(
            "call {seq:#x}: answer of {} bytes is not the transform of its request",
            r.len()
        )),
        Err(e) => Err(format!("call {seq:#x}: {e}")),
    }
}

/// 100 calls, one after the other: 50 raw (`transform`), 50 typed (`add`). Returns the
/// number of correct answers.
async fn hundred_calls(client: &Client) -> usize {
    let mut ok = 0;
    for seq in 0..50u64 {
        checked(client, seq).await.unwrap();
        ok += 1;
    }
    for i in 0..50u64 {
        let s: u64 = client
            .call("add", &(i << 32, i * 7 + 1), CallOptions::default())
            .await
            .unwrap();
        assert_eq!(s, (i << 32) + i * 7 + 1, "add {i}");
        ok += 1;
    }
    ok
}

/// `tasks` tasks, each making `per_task` calls on the same client (one connection), every
/// request unique to (task, call). Returns the time taken.
async fn concurrent_calls(client: &Client, tasks: u64, per_task: u64) -> Duration {
    let t0 = Instant::now();
    let mut handles = Vec::new();
    for t in 0..tasks {
        let c = client.clone();
        handles.push(tokio::spawn(async move {
            for i in 0..per_task {
                checked(&c, (t + 1) << 32 | i).await?;
            }
            Ok::<(), String>(())
        }));
    }
    let mut errors = Vec::new();
    for h in handles {
        if let Err(e) = h.await.expect("caller task panicked") {
            errors.push(e);
        }
    }
    assert!(
        errors.is_empty(),
        "{} of {tasks} callers failed; first: {}",
        errors.len(),
        errors[0]
    );
    t0.elapsed()
}

/// A chat stream of `n` tokens: every token, in order, then the end.
async fn chat_in_order(client: &Client, seed: u64, n: u32) {
    let req: ChatRequest = (seed, n, 1);
    let s = client
        .call_stream("chat", &req, CallOptions::timeout(WAIT))
        .await
        .unwrap();
    tokens_in_order(s, seed, n).await;
}

/// A burst of `n` chat tokens, sent with `send_all` (several to a frame): every token,
/// in order, then the end.
async fn burst_in_order(client: &Client, seed: u64, n: u32) {
    let s = client
        .call_stream("chat_burst", &(seed, n), CallOptions::timeout(WAIT))
        .await
        .unwrap();
    tokens_in_order(s, seed, n).await;
}

/// [`burst_in_order`], the tokens read as they came, several lent at a time
/// (`next_items`): every token checked, and at least one read lending more than one.
async fn burst_lent_in_order(client: &Client, seed: u64, n: u32) {
    let mut s = client
        .call_stream("chat_burst", &(seed, n), CallOptions::timeout(WAIT))
        .await
        .unwrap();
    let (mut i, mut most) = (0u32, 0usize);
    while let Some(items) = s.next_items().await {
        let items = items.unwrap();
        most = most.max(items.len());
        for item in items {
            let token: (u32, String) = shmrpc::decode(item).unwrap();
            assert_eq!(token, (i, chat_token(seed, i)), "token {i}");
            i += 1;
        }
    }
    assert_eq!(i, n, "tokens");
    assert!(most > 1, "each token came alone: {n} tokens sent together");
}

/// Reads the `n` tokens of a chat seeded `seed`, checking each, then the end.
async fn tokens_in_order(mut s: shmrpc::CallStream, seed: u64, n: u32) {
    for i in 0..n {
        let item: (u32, String) = s
            .next()
            .await
            .unwrap_or_else(|| panic!("stream ended after {i} tokens"))
            .unwrap();
        assert_eq!(item, (i, chat_token(seed, i)), "token {i}");
    }
    assert!(
        s.next::<(u32, String)>().await.is_none(),
        "more than {n} tokens"
    );
}

/// The whole suite against one server process; `per_task` calls for each of 64 callers.
fn call_suite(tcp: bool, per_task: u64) {
    let mut names = TestNames::new();
    let (server, target) = start_server(&mut names, tcp, HEARTBEAT_MS);
    let rt = rpc_runtime();
    let transport = if tcp { "tcp" } else { "shm" };
    rt.block_on(within("the call suite", Duration::from_secs(150), async {
        let client = connect(&target).await;
        assert_eq!(
            hundred_calls(&client).await,
            100,
            "100 of 100 calls correct"
        );
        let took = concurrent_calls(&client, 64, per_task).await;
        let calls = 64 * per_task;
        println!(
            "{transport}: 64 callers x {per_task} calls on one connection: {calls} calls in \
             {took:.2?} ({:.0} calls/s)",
            calls as f64 / took.as_secs_f64()
        );
        chat_in_order(&client, 0xc4a7, 40).await;
        burst_in_order(&client, 0xb0257, 5_000).await;
        burst_lent_in_order(&client, 0x1e27, 5_000).await;
        let e = client
            .call_raw("no-such-method", b"x", CallOptions::default())
            .await
            .unwrap_err();
        assert_eq!(e.code, Code::UnknownMethod, "{e}");
        let e = client
            .call_raw("add", b"\xff\xff", CallOptions::default())
            .await
            .unwrap_err();
        assert_eq!(e.code, Code::BadRequest, "{e}");
        // The server's handlers ran once per call: 100 + the concurrent ones (the
        // undecodable `add` never reached its handler; the chat is not counted).
        let stats = rpc_stats(&client).await;
        assert_eq!(
            field_parse::<u64>(&stats, "calls"),
            100 + calls,
            "server-side call count: {stats}"
        );
    }));
    drop(rt);
    stop_server(server, &names);
}

/// The full count: 64 callers x 10,000 calls on one connection (about 8 s on two
/// cores in the test build).
#[test]
fn rpc_calls_between_processes_over_shared_memory() {
    with_watchdog(Duration::from_secs(180), || {
        let _cpu = heavy();
        call_suite(false, 10_000)
    });
}

/// The same suite over TCP on 127.0.0.1, with 64 x 1,000 calls.
#[test]
fn rpc_calls_between_processes_over_tcp() {
    with_watchdog(Duration::from_secs(180), || {
        let _cpu = heavy();
        call_suite(true, 1_000)
    });
}

/// Inline handlers in a server process: every answer checked, with one answer buffer per
/// caller reused through all sizes (empty, small, past the pool's 16 KiB, past a frame:
/// reassembled from fragments), from 64 tasks at once; their failures and panics reach
/// the caller as errors, and the connection goes on answering. The server counts every
/// handler run, so a lost or doubled one shows.
fn inline_suite(tcp: bool) {
    let mut names = TestNames::new();
    let (server, target) = start_server(&mut names, tcp, HEARTBEAT_MS);
    let rt = rpc_runtime();
    rt.block_on(within(
        "the inline suite",
        Duration::from_secs(120),
        async {
            let client = connect(&target).await;
            let opts = || CallOptions::timeout(Duration::from_secs(30));
            let sizes = [0usize, 1, 8, 64, 4096, 20_000, 64, 200_000, 0, 100];
            let mut answer = vec![0xee; 3]; // replaced by the first answer
            for (seq, &len) in sizes.iter().enumerate() {
                let mut req = make_request(seq as u64).to_vec();
                req.resize(len, 0x5a);
                client
                    .call_raw_into("inline_transform", &req, &mut answer, opts())
                    .await
                    .unwrap_or_else(|e| panic!("inline call of {len} bytes: {e}"));
                assert!(
                    answer == transform(&req),
                    "inline answer of a {len}-byte request"
                );
            }
            let tasks: Vec<_> = (0..64u64)
                .map(|t| {
                    let c = client.clone();
                    tokio::spawn(async move {
                        let mut answer = Vec::new();
                        for i in 0..200u64 {
                            let req = make_request((t + 1) << 32 | i);
                            c.call_raw_into("inline_transform", &req, &mut answer, opts())
                                .await
                                .map_err(|e| format!("task {t} call {i}: {e}"))?;
                            if answer != transform(&req) {
                                return Err(format!("task {t} call {i}: wrong answer"));
                            }
                        }
                        Ok::<(), String>(())
                    })
                })
                .collect();
            for t in tasks {
                t.await.expect("caller task panicked").unwrap();
            }
            for i in 0..20u64 {
                let s: u64 = client
                    .call("inline_add", &(i << 40, i + 3), opts())
                    .await
                    .unwrap();
                assert_eq!(s, (i << 40) + i + 3, "inline_add {i}");
            }
            let e = client
                .call_raw("inline_fail", b"abcde", opts())
                .await
                .unwrap_err();
            assert_eq!(
                (e.code, e.message.as_str()),
                (Code::HandlerFailed, "refused 5 bytes")
            );
            let e = client
                .call_raw("inline_panic", b"", opts())
                .await
                .unwrap_err();
            assert_eq!(e.code, Code::HandlerFailed, "{e}");
            assert!(e.message.contains("panicked"), "{e}");
            // The connection goes on, and an unchanged `out` after a failed call.
            let before = answer.clone();
            assert!(client
                .call_raw_into("inline_fail", b"x", &mut answer, opts())
                .await
                .is_err());
            assert_eq!(answer, before, "a failed call left `out` as it was");
            let req = make_request(7);
            client
                .call_raw_into("inline_transform", &req, &mut answer, opts())
                .await
                .unwrap();
            assert!(answer == transform(&req));
            let stats = rpc_stats(&client).await;
            let runs = sizes.len() as u64 + 64 * 200 + 20 + 1;
            assert_eq!(
                field_parse::<u64>(&stats, "calls"),
                runs,
                "handler runs: {stats}"
            );
        },
    ));
    drop(rt);
    stop_server(server, &names);
}

#[test]
fn inline_handlers_between_processes_over_shared_memory() {
    with_watchdog(Duration::from_secs(150), || inline_suite(false));
}

#[test]
fn inline_handlers_between_processes_over_tcp() {
    with_watchdog(Duration::from_secs(150), || inline_suite(true));
}

/// A request frame whose bytes arrive in three parts, with pauses of 1.5 heartbeat periods
/// between them (each pause shorter than the three silent periods after which a peer
/// counts as gone). The server must answer it; a reader that drops a half-read frame
/// when its heartbeat timer fires loses the bytes it already consumed and then misreads
/// the rest of the stream.
#[test]
fn rpc_tcp_frame_arriving_slowly_is_still_one_frame() {
    with_watchdog(Duration::from_secs(30), || {
        let mut names = TestNames::new();
        let (server, target) = start_server(&mut names, true, 200);
        let Target::Tcp(addr) = target else {
            unreachable!()
        };
        let mut s = std::net::TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(WAIT)).unwrap();
        shmrpc_tests::plain_tcp_hello(&mut s);
        let mut payload = vec![0u8; 4];
        payload.extend_from_slice(b"slowly but surely");
        let h = FrameHeader {
            kind: Kind::Request,
            flags: frame::FLAG_TO_CALLEE,
            method: method_id("echo"),
            call_id: 42,
            len: 0,
        };
        let f = frame::encode(&h, &payload).unwrap();
        // Each part goes out after the server has sent a heartbeat Ping, so the server has
        // run at least one tick while holding a partial frame. No sleeps: a pause measured
        // in milliseconds races the server's silence limit (three heartbeats) on a loaded
        // machine, while one Ping per part keeps the gaps at about one heartbeat.
        let await_ping = |s: &mut std::net::TcpStream| loop {
            let mut hdr = [0u8; FRAME_HEADER_LEN];
            std::io::Read::read_exact(s, &mut hdr).expect("a server frame before the answer");
            let h = frame::decode_header(&hdr).expect("server frame header");
            let mut body = vec![0u8; h.len as usize];
            std::io::Read::read_exact(s, &mut body).expect("server frame payload");
            assert!(
                matches!(h.kind, Kind::Ping | Kind::Pong),
                "only heartbeats before the request is complete, got {h:?}"
            );
            if h.kind == Kind::Ping {
                break;
            }
        };
        let parts = [
            &f[..10],
            &f[10..FRAME_HEADER_LEN + 5],
            &f[FRAME_HEADER_LEN + 5..],
        ];
        for (i, part) in parts.iter().enumerate() {
            if i > 0 {
                await_ping(&mut s);
            }
            s.write_all(part).unwrap();
            s.flush().unwrap();
        }
        // Read frames until the response (pings may come first; answer none: the pauses
        // are over).
        let answer = loop {
            let mut hdr = [0u8; FRAME_HEADER_LEN];
            if let Err(e) = std::io::Read::read_exact(&mut s, &mut hdr) {
                break Err(format!("connection ended before the answer: {e}"));
            }
            let h = frame::decode_header(&hdr).expect("server frame header");
            let mut body = vec![0u8; h.len as usize];
            std::io::Read::read_exact(&mut s, &mut body).expect("server frame payload");
            match h.kind {
                Kind::Ping | Kind::Pong => continue,
                _ => break Ok((h, body)),
            }
        };
        let (h, body) = answer.expect("the slowly sent request was answered");
        assert_eq!((h.kind, h.call_id), (Kind::Response, 42), "{h:?} {body:?}");
        assert_eq!(body, b"slowly but surely");
        drop(s);
        stop_server(server, &names);
    });
}

/// `ServerHandle::shutdown` called before the spawned `serve` task got to run must still
/// stop the server (a server told to stop right after start, e.g. by a quick "exit").
/// In-process: this is about the API, not about processes.
#[test]
fn a_shutdown_requested_before_serve_runs_is_not_lost() {
    with_watchdog(Duration::from_secs(30), || {
        let mut names = TestNames::new();
        let name = names.name("rpc-early-shutdown");
        let rt = rpc_runtime();
        rt.block_on(async {
            let server = shmrpc::Server::builder()
                .unary_raw("echo", |_ctx, req| async move { Ok(req) })
                .bind(&name)
                .expect("bind");
            let handle = server.handle();
            handle.shutdown();
            let r = tokio::time::timeout(Duration::from_secs(3), server.serve()).await;
            assert!(
                r.is_ok(),
                "serve() ignored the shutdown requested before it ran"
            );
        });
        drop(rt);
        names.assert_clean_with_locks();
    });
}

/// Dropping every handle of a client closes its connection: the server frees it (its
/// descriptors and its task), and a stream still being read keeps it open until it ends.
/// (Before this was fixed, a dropped client's reader task kept the connection open for the
/// life of the process; a soak with reconnecting clients ran the server out of fds.)
#[test]
fn a_dropped_client_closes_its_connection_on_both_sides() {
    with_watchdog(Duration::from_secs(60), || {
        let mut names = TestNames::new();
        let (server, target) = start_server(&mut names, false, HEARTBEAT_MS);
        let rt = rpc_runtime();
        rt.block_on(async {
            let probe = connect(&target).await;
            let base = rpc_stats(&probe).await;
            let stats_of = |s: &str| (field_parse::<u64>(s, "fds"), field_parse::<u64>(s, "tasks"));
            let settle = |want: (u64, u64)| {
                let probe = probe.clone();
                async move {
                    let deadline = Instant::now() + WAIT;
                    loop {
                        let s = rpc_stats(&probe).await;
                        if stats_of(&s) == want {
                            return s;
                        }
                        assert!(
                            Instant::now() < deadline,
                            "server stats stayed {s}, want {want:?}"
                        );
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            };
            for round in 0..5 {
                let c = connect(&target).await;
                checked(&c, round).await.unwrap();
                let clone = c.clone();
                let with = rpc_stats(&probe).await;
                assert!(stats_of(&with).0 > stats_of(&base).0, "{base} / {with}");
                drop(c);
                // One clone left: still open.
                checked(&clone, round + 100).await.unwrap();
                // A stream outlives the last client handle.
                let mut s = clone
                    .call_stream(
                        "chat",
                        &(round, 5u32, 1u32) as &ChatRequest,
                        CallOptions::default(),
                    )
                    .await
                    .unwrap();
                drop(clone);
                for i in 0..5 {
                    let (k, tok): (u32, String) = within("a stream item", WAIT, s.next())
                        .await
                        .expect("an item")
                        .expect("not an error");
                    assert_eq!((k, tok), (i, chat_token(round, i)));
                }
                assert!(
                    within("the end of the stream", WAIT, s.next::<(u32, String)>())
                        .await
                        .is_none()
                );
                drop(s);
                settle(stats_of(&base)).await;
            }
        });
        drop(rt);
        stop_server(server, &names);
    });
}
