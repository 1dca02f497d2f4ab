//! The RPC layer in one process (server and client as tasks), over shared memory and TCP.
#![cfg(not(shmrpc_loom))]

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use shmrpc::{CallOptions, Client, ClientConfig, Code, RpcError, Server, ServerHandle};

fn name(what: &str) -> String {
    format!("rpc-{what}-{}", std::process::id())
}

struct Observed {
    cancelled: AtomicBool,
    streamed: AtomicUsize,
}

fn build(obs: Arc<Observed>) -> shmrpc::ServerBuilder {
    let o2 = obs.clone();
    Server::builder()
        .unary_raw("echo", |_ctx, req| async move { Ok(req) })
        .unary("add", |_ctx, (a, b): (u64, u64)| async move { Ok(a + b) })
        .unary_raw("panic", |_ctx, _req| async move {
            if true {
                panic!("handler bug");
            }
            Ok(Vec::new())
        })
        .unary_raw("fail", |_ctx, _req| async move {
            Err(RpcError::handler("nope"))
        })
        .unary_raw("slow", |ctx, _req| async move {
            ctx.cancelled().await;
            Err(RpcError::new(Code::Cancelled, "saw cancel"))
        })
        .streaming("chat", move |ctx, n: u32, sink| {
            let obs = o2.clone();
            async move {
                for i in 0..n {
                    tokio::select! {
                        _ = ctx.cancelled() => {
                            obs.cancelled.store(true, Ordering::SeqCst);
                            return Err(RpcError::new(Code::Cancelled, "cancelled"));
                        }
                        _ = tokio::time::sleep(Duration::from_millis(2)) => {}
                    }
                    // The cancel may also come between the wait above and this send,
                    // which then fails with it: the handler saw it there.
                    if let Err(e) = sink.send(&format!("token-{i}")).await {
                        if e.code == Code::Cancelled {
                            obs.cancelled.store(true, Ordering::SeqCst);
                        }
                        return Err(e);
                    }
                    obs.streamed.fetch_add(1, Ordering::SeqCst);
                }
                Ok(())
            }
        })
}

async fn suite(client: Client, obs: Arc<Observed>) {
    // Unary, raw and typed.
    let r = client
        .call_raw("echo", b"hello", CallOptions::default())
        .await
        .unwrap();
    assert_eq!(r, b"hello");
    let s: u64 = client
        .call("add", &(40u64, 2u64), CallOptions::default())
        .await
        .unwrap();
    assert_eq!(s, 42);
    // A large message is fragmented across several ring records and comes back whole.
    let big: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(
        client
            .call_raw("echo", &big, CallOptions::default())
            .await
            .unwrap(),
        big
    );
    // Errors with codes.
    let e = client
        .call_raw("nope", b"", CallOptions::default())
        .await
        .unwrap_err();
    assert_eq!(e.code, Code::UnknownMethod);
    let e = client
        .call_raw("panic", b"", CallOptions::default())
        .await
        .unwrap_err();
    assert_eq!(e.code, Code::HandlerFailed);
    let e = client
        .call_raw("fail", b"", CallOptions::default())
        .await
        .unwrap_err();
    assert_eq!((e.code, e.message.as_str()), (Code::HandlerFailed, "nope"));
    // A truncated varint is not a (u64, u64).
    let e: RpcError = client
        .call_raw("add", b"\xff\xff\xff", CallOptions::default())
        .await
        .unwrap_err();
    assert_eq!(e.code, Code::BadRequest);
    let e = client
        .call_raw("slow", b"", CallOptions::timeout(Duration::from_millis(50)))
        .await
        .unwrap_err();
    assert_eq!(e.code, Code::DeadlineExceeded);
    let e = client
        .call_raw("echo", &vec![0u8; 17 << 20], CallOptions::default())
        .await
        .unwrap_err();
    assert_eq!(e.code, Code::TooLarge);
    // The server survived all of that.
    assert_eq!(
        client
            .call_raw("echo", b"still", CallOptions::default())
            .await
            .unwrap(),
        b"still"
    );

    // Streaming: tokens in order.
    let mut st = client
        .call_stream("chat", &5u32, CallOptions::default())
        .await
        .unwrap();
    for i in 0..5 {
        let t: String = st.next().await.unwrap().unwrap();
        assert_eq!(t, format!("token-{i}"));
    }
    assert!(st.next::<String>().await.is_none());

    // Cancel mid-stream: the handler observes it and stops.
    let mut st = client
        .call_stream("chat", &10_000u32, CallOptions::default())
        .await
        .unwrap();
    for _ in 0..3 {
        st.next::<String>().await.unwrap().unwrap();
    }
    drop(st);
    for _ in 0..500 {
        if obs.cancelled.load(Ordering::SeqCst) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        obs.cancelled.load(Ordering::SeqCst),
        "handler never saw the cancel"
    );
    assert!(
        obs.streamed.load(Ordering::SeqCst) < 5 + 100,
        "the handler kept streaming"
    );

    // Many callers on one connection, responses matched to their calls.
    let mut tasks = Vec::new();
    for t in 0..64u64 {
        let c = client.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..200u64 {
                let s: u64 = c
                    .call("add", &(t * 1_000_000, i), CallOptions::default())
                    .await
                    .unwrap();
                assert_eq!(s, t * 1_000_000 + i);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

async fn with_server<F, Fut>(server: Server, f: F)
where
    F: FnOnce(ServerHandle) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let handle = server.handle();
    let serving = tokio::spawn(server.serve());
    f(handle.clone()).await;
    handle.shutdown();
    tokio::time::timeout(Duration::from_secs(10), serving)
        .await
        .expect("graceful shutdown finished")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_suite_over_shared_memory() {
    let obs = Arc::new(Observed {
        cancelled: false.into(),
        streamed: 0.into(),
    });
    let n = name("shm");
    let server = build(obs.clone()).bind(&n).unwrap();
    tokio::time::timeout(
        Duration::from_secs(60),
        with_server(server, |_| async {
            let client = Client::connect(&n, ClientConfig::default()).await.unwrap();
            suite(client, obs).await;
        }),
    )
    .await
    .expect("watchdog");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_suite_over_tcp() {
    let obs = Arc::new(Observed {
        cancelled: false.into(),
        streamed: 0.into(),
    });
    let server = build(obs.clone())
        .bind_tcp("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = server.local_addr().unwrap();
    tokio::time::timeout(
        Duration::from_secs(60),
        with_server(server, |_| async move {
            let client = Client::connect_tcp(addr, ClientConfig::default())
                .await
                .unwrap();
            suite(client, obs).await;
        }),
    )
    .await
    .expect("watchdog");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_calls_in_flight() {
    let n = name("drain");
    let server = Server::builder()
        .unary_raw("sleepy", |_ctx, req| async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            Ok(req)
        })
        .bind(&n)
        .unwrap();
    let handle = server.handle();
    let serving = tokio::spawn(server.serve());
    let client = Client::connect(&n, ClientConfig::default()).await.unwrap();
    let c2 = client.clone();
    let call =
        tokio::spawn(async move { c2.call_raw("sleepy", b"zz", CallOptions::default()).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    handle.shutdown();
    assert_eq!(call.await.unwrap().unwrap(), b"zz");
    tokio::time::timeout(Duration::from_secs(10), serving)
        .await
        .unwrap()
        .unwrap();
}

/// The built-in inspection method: each connection with its peer, counters and rings.
#[tokio::test(flavor = "current_thread")]
async fn a_server_reports_its_connections_to_the_inspection_method() {
    use shmrpc::inspect::ServerReport;
    use shmrpc::inspect::INSPECT_METHOD;
    use shmrpc::{ServerBuilder, ServerConfig};
    let n = name("inspect");
    let cfg = ServerConfig::default()
        .with_channel(shmrpc::channel::ChannelConfig::default().with_capacity(8192));
    let server = ServerBuilder::new(cfg)
        .unary_raw("echo", |_ctx, req| async move { Ok(req) })
        .bind(&n)
        .unwrap();
    with_server(server, |_handle| async move {
        let a = Client::connect(&n, ClientConfig::default()).await.unwrap();
        let b = Client::connect(&n, ClientConfig::default()).await.unwrap();
        for _ in 0..10 {
            a.call_raw("echo", &[7u8; 100], CallOptions::default())
                .await
                .unwrap();
        }
        // A message longer than half the ring goes in fragments, both ways: it is
        // counted once, whole, when its last fragment is out.
        let c = Client::connect(&n, ClientConfig::default()).await.unwrap();
        let long = vec![3u8; 20_000];
        let back = c
            .call_raw("echo", &long, CallOptions::default())
            .await
            .unwrap();
        assert_eq!(back, long);
        let r: ServerReport = b
            .call(INSPECT_METHOD, &(), CallOptions::default())
            .await
            .unwrap();
        assert_eq!(r.pid, std::process::id());
        assert_eq!(r.connections.len(), 3, "{r:?}");
        let fragmented = r
            .connections
            .iter()
            .find(|c| c.bytes_in == 4 + 20_000)
            .unwrap_or_else(|| panic!("the long call's connection: {r:?}"));
        assert_eq!(fragmented.frames_in, 1, "{fragmented:?}");
        assert_eq!(fragmented.frames_out, 1, "{fragmented:?}");
        assert_eq!(fragmented.bytes_out, 20_000, "{fragmented:?}");
        let me = std::process::id();
        let busy = r.connections.iter().max_by_key(|c| c.frames_in).unwrap();
        assert_eq!(busy.peer_pid, Some(me));
        assert_eq!(busy.transport, "shm");
        assert_eq!(busy.frames_in, 10, "{busy:?}");
        assert_eq!(
            busy.bytes_in,
            10 * (4 + 100),
            "deadline prefix + body: {busy:?}"
        );
        assert_eq!(busy.frames_out, 10);
        assert_eq!(busy.bytes_out, 10 * 100);
        let to = busy.to_client.expect("a shared-memory ring");
        let from = busy.from_client.expect("a shared-memory ring");
        assert_eq!((to.capacity, from.capacity), (8192, 8192));
        // 10 answers of a 32-byte header + 100 bytes, 16-byte records: 144 + 16 each.
        assert_eq!(to.write_pos, 10 * 160, "{to:?}");
        assert!(from.write_pos >= 10 * 160, "{from:?}");
        assert!(to.read_pos <= to.write_pos && to.queued <= to.capacity);
        // The other connection is the inspecting one: its request is counted.
        let other = r
            .connections
            .iter()
            .find(|c| c.id != busy.id && c.id != fragmented.id)
            .unwrap();
        assert_eq!(other.frames_in, 1);
        // Registering the built-in name is refused.
        let refused = std::panic::catch_unwind(|| {
            ServerBuilder::new(ServerConfig::default())
                .unary_raw(INSPECT_METHOD, |_ctx, req| async move { Ok(req) })
        });
        assert!(refused.is_err());
    })
    .await;
}
