//! An editor and its AI engine as two processes: the engine (`peer rpc-server`) streams
//! "chat" tokens over time; the editor (the test) reads them in order and abandons a
//! request halfway by dropping its stream. The engine's handler must observe the cancel
//! (it counts cancellations; the test reads the count through the engine's `stats` method)
//! and stop producing tokens. Also: a cancel must get through when the connection is at
//! its concurrency limit, and an editor that stops reading must hold the engine back.
#![forbid(unsafe_code)]

use std::time::Duration;

use shmrpc::{CallOptions, Client, ClientConfig, Code};
use shmrpc_tests::{
    chat_token, field_parse, rpc_runtime, rpc_stats, rpc_wait_stats, spawn_peer, with_watchdog,
    within, ChatRequest, PeerCommand, RpcTarget, TestNames,
};

const WAIT: Duration = Duration::from_secs(10);

async fn next_token(s: &mut shmrpc::CallStream, seed: u64, i: u32) {
    let item: (u32, String) = within("a chat token", WAIT, s.next())
        .await
        .unwrap_or_else(|| panic!("stream {seed:#x} ended before token {i}"))
        .unwrap_or_else(|e| panic!("stream {seed:#x} token {i}: {e}"));
    assert_eq!(item, (i, chat_token(seed, i)), "stream {seed:#x} token {i}");
}

#[test]
fn chat_tokens_arrive_in_order_and_a_dropped_stream_cancels_the_engines_handler() {
    with_watchdog(Duration::from_secs(60), || {
        let mut names = TestNames::new();
        let name = names.name("rpc-chat");
        let mut engine = spawn_peer!(PeerCommand::rpc_server(RpcTarget::Shm(name.clone())));
        engine.expect("ready", WAIT);
        let rt = rpc_runtime();
        rt.block_on(async {
            let editor = Client::connect(&name, ClientConfig::default())
                .await
                .expect("connect");

            // A whole answer: 30 tokens, 2 ms apart, in order, then the end.
            let req: ChatRequest = (0xa1, 30, 2);
            let mut s = editor
                .call_stream("chat", &req, CallOptions::default())
                .await
                .unwrap();
            for i in 0..30 {
                next_token(&mut s, 0xa1, i).await;
            }
            let end = within("the end of the stream", WAIT, s.next::<(u32, String)>()).await;
            assert!(end.is_none(), "expected the end, got {end:?}");
            let st = rpc_stats(&editor).await;
            assert_eq!(field_parse::<u64>(&st, "chat_done"), 1, "{st}");
            assert_eq!(field_parse::<u64>(&st, "chat_cancels"), 0, "{st}");

            // Eight answers streamed at once on the one connection, each in order.
            let mut streams = Vec::new();
            for k in 0..8u64 {
                let req: ChatRequest = (0xb0 + k, 25, 1);
                streams.push(
                    editor
                        .call_stream("chat", &req, CallOptions::default())
                        .await
                        .unwrap(),
                );
            }
            for i in 0..25 {
                for (k, s) in streams.iter_mut().enumerate() {
                    next_token(s, 0xb0 + k as u64, i).await;
                }
            }
            for s in &mut streams {
                assert!(within("stream end", WAIT, s.next::<(u32, String)>())
                    .await
                    .is_none());
            }
            drop(streams);

            // The user moves on: a long answer (a million tokens, 5 ms apart) abandoned after
            // ten tokens.
            let req: ChatRequest = (0xc0, 1_000_000, 5);
            let mut s = editor
                .call_stream("chat", &req, CallOptions::default())
                .await
                .unwrap();
            for i in 0..10 {
                next_token(&mut s, 0xc0, i).await;
            }
            drop(s);
            let st = rpc_wait_stats(&editor, "the engine observing the cancel", WAIT, |s| {
                field_parse::<u64>(s, "chat_cancels") == 1
            })
            .await;
            // The handler stopped: it returned, so no more tokens are produced.
            let sent = field_parse::<u64>(&st, "chat_tokens");
            tokio::time::sleep(Duration::from_millis(100)).await;
            let later = rpc_stats(&editor).await;
            assert_eq!(
                field_parse::<u64>(&later, "chat_tokens"),
                sent,
                "tokens still produced after the cancel: {st} / {later}"
            );
            assert_eq!(field_parse::<u64>(&later, "chat_done"), 9, "{later}");
            println!(
                "engine produced {} tokens of the abandoned answer (10 read)",
                sent - 30 - 8 * 25
            );

            // A deadline cancels too: the client gets DeadlineExceeded, the engine's
            // handler sees its call cancelled.
            let req: ChatRequest = (0xd0, 1_000_000, 5);
            let mut s = editor
                .call_stream(
                    "chat",
                    &req,
                    CallOptions::timeout(Duration::from_millis(100)),
                )
                .await
                .unwrap();
            let mut i = 0;
            let err = loop {
                match within("the deadline", WAIT, s.next::<(u32, String)>()).await {
                    Some(Ok(item)) => {
                        assert_eq!(item, (i, chat_token(0xd0, i)));
                        i += 1;
                    }
                    Some(Err(e)) => break e,
                    None => panic!("a million tokens in 100 ms?"),
                }
            };
            assert_eq!(err.code, Code::DeadlineExceeded, "{err}");
            rpc_wait_stats(&editor, "the engine observing the deadline", WAIT, |s| {
                field_parse::<u64>(s, "chat_cancels") == 2
            })
            .await;

            // The connection still works.
            let r = editor
                .call_raw("echo", b"after", CallOptions::default())
                .await
                .unwrap();
            assert_eq!(r, b"after");
        });
        drop(rt);
        engine.send("exit");
        engine.expect("done", WAIT);
        engine.assert_exits_ok(WAIT);
        names.assert_clean_with_locks();
    });
}

/// The engine allows 4 calls in flight per connection. With 4 long answers streaming, the
/// editor abandons one: the engine must still hear the cancel (and stop that handler, which
/// frees a slot for the next request), even though the connection is at its limit.
#[test]
fn a_cancel_reaches_the_engine_when_the_connection_is_at_its_concurrency_limit() {
    with_watchdog(Duration::from_secs(60), || {
        let mut names = TestNames::new();
        let name = names.name("rpc-chat-limit");
        let mut engine = spawn_peer!(PeerCommand::RpcServer {
            target: RpcTarget::Shm(name.clone()),
            cap: 65536,
            heartbeat_ms: 2000,
            max_message: 16 << 20,
            max_in_flight: Some(4),
            handshake_timeout_ms: None,
        });
        engine.expect("ready", WAIT);
        let rt = rpc_runtime();
        rt.block_on(async {
            let editor = Client::connect(&name, ClientConfig::default())
                .await
                .expect("connect");
            // Another connection for watching the engine (the limit is per connection).
            let watcher = Client::connect(&name, ClientConfig::default())
                .await
                .expect("connect");
            let mut streams = Vec::new();
            for k in 0..4u64 {
                let req: ChatRequest = (0xe0 + k, 1_000_000, 5);
                let mut s = editor
                    .call_stream("chat", &req, CallOptions::default())
                    .await
                    .unwrap();
                next_token(&mut s, 0xe0 + k, 0).await;
                streams.push(s);
            }
            drop(streams.remove(0));
            let st = within(
                "the engine observing the cancel of one of 4 calls at the limit",
                Duration::from_secs(5),
                async {
                    loop {
                        let st = rpc_stats(&watcher).await;
                        if field_parse::<u64>(&st, "chat_cancels") == 1 {
                            break st;
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                },
            )
            .await;
            println!("at the concurrency limit, the cancel got through: {st}");
            // The freed slot serves the next request.
            let req: ChatRequest = (0xef, 3, 1);
            let mut s = within(
                "a new call after the cancel",
                WAIT,
                editor.call_stream("chat", &req, CallOptions::default()),
            )
            .await
            .unwrap();
            for i in 0..3 {
                next_token(&mut s, 0xef, i).await;
            }
            drop(streams);
        });
        drop(rt);
        engine.send("exit");
        engine.expect("done", WAIT);
        engine.assert_exits_ok(WAIT);
        names.assert_clean_with_locks();
    });
}

/// An editor that stops reading a fast stream: backpressure must reach the engine (its
/// sends wait) instead of the tokens piling up in the editor's memory. The engine streams
/// 200,000 tokens as fast as it can; while the editor reads none, the engine must not get
/// to the end. Then the editor reads them all, in order.
#[test]
fn an_editor_that_stops_reading_holds_back_the_engine() {
    const N: u32 = 200_000;
    with_watchdog(Duration::from_secs(60), || {
        let mut names = TestNames::new();
        let name = names.name("rpc-chat-slow-reader");
        let mut engine = spawn_peer!(PeerCommand::rpc_server(RpcTarget::Shm(name.clone())));
        engine.expect("ready", WAIT);
        let rt = rpc_runtime();
        rt.block_on(async {
            let editor = Client::connect(&name, ClientConfig::default())
                .await
                .expect("connect");
            let watcher = Client::connect(&name, ClientConfig::default())
                .await
                .expect("connect");
            let req: ChatRequest = (0xf0, N, 0);
            let mut s = editor
                .call_stream("chat", &req, CallOptions::default())
                .await
                .unwrap();
            // Wait until the engine stops making progress (or finishes).
            let mut last = u64::MAX;
            let stalled = within("the engine stalling or finishing", WAIT * 3, async {
                loop {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    let st = rpc_stats(&watcher).await;
                    let now = field_parse::<u64>(&st, "chat_tokens");
                    if now == last || field_parse::<u64>(&st, "chat_done") == 1 {
                        break st;
                    }
                    last = now;
                }
            })
            .await;
            let sent = field_parse::<u64>(&stalled, "chat_tokens");
            println!("engine sent {sent} of {N} tokens to an editor that read none");
            assert!(
                sent < u64::from(N),
                "the engine streamed all {N} tokens to an editor that read none: they are \
                 queued without bound on the editor's side ({stalled})"
            );
            for i in 0..N {
                next_token(&mut s, 0xf0, i).await;
            }
            assert!(within("the end", WAIT, s.next::<(u32, String)>())
                .await
                .is_none());
        });
        drop(rt);
        engine.send("exit");
        engine.expect("done", WAIT);
        engine.assert_exits_ok(WAIT);
        names.assert_clean_with_locks();
    });
}
