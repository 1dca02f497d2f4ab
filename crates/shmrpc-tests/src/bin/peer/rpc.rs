//! RPC servers and clients that follow the protocol: the test server with its routes, many
//! checked clients, callers left hanging, and the chaos client.

use std::process::exit;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use shmrpc::channel::ChannelConfig;
use shmrpc::{
    CallOptions, Client, ClientBuilder, ClientConfig, Code, RpcError, ServerBuilder, ServerConfig,
};
use shmrpc_tests::{chat_token, make_request, transform, ChatRequest, RpcDial, RpcTarget};

use crate::{fail, say, serve_stdin};

pub(crate) fn rpc_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| fail(format!("runtime: {e}")))
}

/// Stdin lines, forwarded to async code; the channel ends at "exit" or end of file.
fn stdin_lines() -> tokio::sync::mpsc::UnboundedReceiver<String> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        serve_stdin(|line| tx.send(line.to_owned()).is_ok());
    });
    rx
}

/// What the `rpc-server` counts, reported by its `stats` method.
#[derive(Default)]
struct RpcCounters {
    /// `slow` handlers running now.
    slow_in_flight: AtomicI64,
    /// `slow` handlers started.
    slow_started: AtomicU64,
    /// `slow` handlers that observed their call's cancellation.
    slow_cancels: AtomicU64,
    /// `chat` handlers that observed their call's cancellation.
    chat_cancels: AtomicU64,
    /// `chat` tokens sent.
    chat_tokens: AtomicU64,
    /// `chat` streams that ran to their end.
    chat_done: AtomicU64,
    /// Calls of `echo`, `transform` and `add`.
    calls: AtomicU64,
    /// `once` calls executed, and the tokens seen (a token twice is a call run twice).
    once: AtomicU64,
    once_seen: std::sync::Mutex<std::collections::HashSet<u128>>,
    /// `once` calls whose token was seen before.
    dupes: AtomicU64,
    /// `once` requests whose checksum did not match (a torn or mixed-up message).
    torn: AtomicU64,
}

/// Decrements `slow_in_flight` however the handler ends (returns, or is aborted).
struct InFlight(Arc<RpcCounters>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.slow_in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

fn stats_line(c: &RpcCounters) -> String {
    let st = |k| shmrpc_tests::proc_status("self", k).unwrap_or(0);
    format!(
        "pid={} rss_kb={} rss_anon_kb={} rss_shmem_kb={} threads={} fds={} cpu_us={} \
         slow_in_flight={} slow_started={} slow_cancels={} chat_cancels={} chat_tokens={} \
         chat_done={} calls={} once={} dupes={} torn={} tasks={}",
        std::process::id(),
        st("VmRSS"),
        st("RssAnon"),
        st("RssShmem"),
        st("Threads"),
        shmrpc_tests::open_fds("self"),
        shmrpc_tests::cpu_time("self").map_or(0, |d| d.as_micros()),
        c.slow_in_flight.load(Ordering::SeqCst),
        c.slow_started.load(Ordering::SeqCst),
        c.slow_cancels.load(Ordering::SeqCst),
        c.chat_cancels.load(Ordering::SeqCst),
        c.chat_tokens.load(Ordering::SeqCst),
        c.chat_done.load(Ordering::SeqCst),
        c.calls.load(Ordering::SeqCst),
        c.once.load(Ordering::SeqCst),
        c.dupes.load(Ordering::SeqCst),
        c.torn.load(Ordering::SeqCst),
        // Tasks of this runtime (connections, handlers): a leaked one stays counted.
        tokio::runtime::Handle::try_current().map_or(0, |h| h.metrics().num_alive_tasks()),
    )
}

/// The routes of `rpc-server`:
/// - `echo` (raw): the request;
/// - `transform` (raw): [`transform`] of the request;
/// - `add` ((u64, u64) -> u64);
/// - `slow` (raw): waits (up to a minute) for its call to be cancelled, counting it;
/// - `chat` ([`ChatRequest`] -> stream of (u32, String)): tokens over time, counting a
///   cancellation it observes;
/// - `blob` (u32 -> raw): that many bytes;
/// - `stats` (() -> String): counters, memory and descriptors of this process;
/// - `once` (raw): a [`once_request`]; checks its checksum (a mismatch counts as `torn`)
///   and that its token was never seen before (else `dupes`), answers [`transform`];
/// - `stuck` (notification): its handler never returns, so the notification credit of
///   the connection, once spent, stays spent;
/// - `inline_transform` (raw, inline): as `transform`, written into the buffer it is
///   given, which must come empty;
/// - `inline_add` ((u64, u64) -> u64, inline);
/// - `inline_fail` (raw, inline): fails `HandlerFailed` with "refused N bytes";
/// - `inline_panic` (raw, inline): panics.
fn rpc_routes(cfg: ServerConfig, c: Arc<RpcCounters>) -> ServerBuilder {
    let (c8, c9) = (c.clone(), c.clone());
    let (c1, c2, c3, c4, c5, c6, c7) = (
        c.clone(),
        c.clone(),
        c.clone(),
        c.clone(),
        c.clone(),
        c.clone(),
        c.clone(),
    );
    ServerBuilder::new(cfg)
        .unary_inline_raw("inline_transform", move |_ctx, req, out| {
            c8.calls.fetch_add(1, Ordering::Relaxed);
            if !out.is_empty() {
                return Err(RpcError::new(
                    Code::HandlerFailed,
                    "response buffer not empty",
                ));
            }
            out.extend_from_slice(&transform(req));
            Ok(())
        })
        .unary_inline("inline_add", move |_ctx, (a, b): (u64, u64)| {
            c9.calls.fetch_add(1, Ordering::Relaxed);
            Ok::<_, RpcError>(a.wrapping_add(b))
        })
        .unary_inline_raw("inline_fail", |_ctx, req, _out| {
            Err(RpcError::new(
                Code::HandlerFailed,
                format!("refused {} bytes", req.len()),
            ))
        })
        .unary_inline_raw("inline_panic", |_ctx, _req, _out| {
            panic!("inline_panic was called")
        })
        .on_notify_raw("stuck", |_ctx, _body| std::future::pending::<()>())
        .unary_raw("echo", move |_ctx, req| {
            c1.calls.fetch_add(1, Ordering::Relaxed);
            async move { Ok(req) }
        })
        .unary_raw("transform", move |_ctx, req| {
            c2.calls.fetch_add(1, Ordering::Relaxed);
            async move { Ok(transform(&req)) }
        })
        .unary("add", move |_ctx, (a, b): (u64, u64)| {
            c3.calls.fetch_add(1, Ordering::Relaxed);
            async move { Ok(a.wrapping_add(b)) }
        })
        .unary_raw("slow", move |ctx, req| {
            let c = c4.clone();
            async move {
                c.slow_started.fetch_add(1, Ordering::SeqCst);
                c.slow_in_flight.fetch_add(1, Ordering::SeqCst);
                let _guard = InFlight(c.clone());
                tokio::select! {
                    _ = ctx.cancelled() => {
                        c.slow_cancels.fetch_add(1, Ordering::SeqCst);
                        Err(RpcError::new(Code::Cancelled, "slow: saw the cancel"))
                    }
                    _ = tokio::time::sleep(Duration::from_secs(60)) => Ok(req),
                }
            }
        })
        .streaming("chat", move |ctx, (seed, n, pause): ChatRequest, sink| {
            let c = c5.clone();
            async move {
                for i in 0..n {
                    let think = async {
                        if pause == 0 {
                            tokio::task::yield_now().await;
                        } else {
                            tokio::time::sleep(Duration::from_millis(u64::from(pause))).await;
                        }
                    };
                    tokio::select! {
                        _ = ctx.cancelled() => {
                            c.chat_cancels.fetch_add(1, Ordering::SeqCst);
                            return Err(RpcError::new(Code::Cancelled, "chat: saw the cancel"));
                        }
                        _ = think => {}
                    }
                    if let Err(e) = sink.send(&(i, chat_token(seed, i))).await {
                        if ctx.is_cancelled() {
                            c.chat_cancels.fetch_add(1, Ordering::SeqCst);
                        }
                        return Err(e);
                    }
                    c.chat_tokens.fetch_add(1, Ordering::SeqCst);
                }
                c.chat_done.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        })
        // The chat's tokens all ready at once: sent several to a frame.
        .streaming(
            "chat_burst",
            |_ctx, (seed, n): (u64, u32), sink| async move {
                sink.send_all((0..n).map(|i| (i, chat_token(seed, i))))
                    .await
            },
        )
        .unary("blob", |_ctx, n: u32| async move {
            Ok::<_, RpcError>(vec![0xb1u8; n as usize])
        })
        .unary("stats", move |_ctx, (): ()| {
            let line = stats_line(&c6);
            async move { Ok(line) }
        })
        .unary_raw("once", move |_ctx, req| {
            let c = &c7;
            c.once.fetch_add(1, Ordering::SeqCst);
            match check_once_request(&req) {
                None => {
                    c.torn.fetch_add(1, Ordering::SeqCst);
                }
                Some(token) => {
                    if !c.once_seen.lock().expect("poisoned").insert(token) {
                        c.dupes.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
            async move { Ok(transform(&req)) }
        })
}

/// Serves the routes above on a shared-memory name (or `tcp`: 127.0.0.1, any port) until
/// "exit" or end of stdin, then shuts down gracefully and prints `done`.
pub(crate) fn rpc_server(
    target: RpcTarget,
    cap: usize,
    heartbeat_ms: u64,
    max_message: usize,
    max_in_flight: Option<usize>,
    handshake_timeout_ms: Option<u64>,
) {
    let mut cfg = ServerConfig::default()
        .with_channel(ChannelConfig::default().with_capacity(cap))
        .with_heartbeat(Duration::from_millis(heartbeat_ms))
        .with_max_message(max_message);
    if let Some(m) = max_in_flight {
        cfg.max_in_flight = m;
    }
    if let Some(t) = handshake_timeout_ms {
        cfg.handshake_timeout = Duration::from_millis(t);
    }
    let rt = rpc_runtime();
    rt.block_on(async move {
        let counters = Arc::new(RpcCounters::default());
        let builder = rpc_routes(cfg, counters);
        let (server, ready) = match target {
            RpcTarget::Tcp => {
                let s = builder
                    .bind_tcp("127.0.0.1:0".parse().expect("address"))
                    .await
                    .unwrap_or_else(|e| fail(format!("bind_tcp: {e}")));
                let addr = s.local_addr().expect("tcp address");
                (s, format!("ready addr={addr}"))
            }
            RpcTarget::Shm(name) => {
                let s = builder
                    .bind(&name)
                    .unwrap_or_else(|e| fail(format!("bind {name}: {e}")));
                (s, "ready".to_owned())
            }
        };
        let handle = server.handle();
        let serving = tokio::spawn(server.serve());
        say(ready);
        let mut lines = stdin_lines();
        while lines.recv().await.is_some() {}
        // A shutdown requested before `serve` has started is lost (see the test
        // `a_shutdown_requested_before_serve_runs_is_not_lost`): ask again until it ends.
        let mut serving = serving;
        let finished = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                handle.shutdown();
                if tokio::time::timeout(Duration::from_millis(100), &mut serving)
                    .await
                    .is_ok()
                {
                    break;
                }
            }
        })
        .await;
        match finished {
            Ok(()) => say("done"),
            Err(_) => say("done shutdown-timed-out"),
        }
    });
}

fn client_config() -> ClientConfig {
    ClientConfig::default().with_reconnect_for(Duration::from_secs(10))
}

/// One call of `transform` with a request unique to (`who`, `k`), checked.
async fn checked_transform(c: &Client, who: u64, k: u64) -> Result<(), String> {
    let req = make_request((who << 20) | k);
    let opts = CallOptions::timeout(Duration::from_secs(20));
    match c.call_raw("transform", &req, opts).await {
        Ok(r) if r == transform(&req) => Ok(()),
        Ok(_) => Err(format!("wrong answer to request {k} of client {who}")),
        Err(e) => Err(format!("client {who} call {k}: {e}")),
    }
}

/// Connects `clients` clients to the server and makes `calls` checked calls on each; prints
/// `ready connected=<n> calls=<n>` and keeps every connection open. `check`: one more call
/// on every client (`checked ok=<n>`); `exit` or end of stdin: disconnect and leave.
pub(crate) fn rpc_clients(name: &str, n: usize, calls: u64) {
    // Each shared-memory connection holds about seven descriptors on this side.
    let limit = shmrpc_tests::raise_nofile(64 + 8 * n as u64);
    let me = u64::from(std::process::id()) << 12;
    let rt = rpc_runtime();
    rt.block_on(async move {
        let mut clients = Vec::with_capacity(n);
        for i in 0..n {
            let c = Client::connect(name, client_config())
                .await
                .unwrap_or_else(|e| fail(format!("connect {i} (fd limit {limit}): {e}")));
            clients.push(c);
        }
        let mut tasks = Vec::new();
        for (i, c) in clients.iter().enumerate() {
            let c = c.clone();
            let who = me | i as u64;
            tasks.push(tokio::spawn(async move {
                for k in 0..calls {
                    checked_transform(&c, who, k).await?;
                    let s: u64 = c
                        .call("add", &(who, k), CallOptions::default())
                        .await
                        .map_err(|e| e.to_string())?;
                    if s != who + k {
                        return Err(format!("add({who}, {k}) = {s}"));
                    }
                }
                Ok::<u64, String>(calls * 2)
            }));
        }
        let mut done = 0;
        for t in tasks {
            match t.await {
                Ok(Ok(k)) => done += k,
                Ok(Err(e)) => fail(e),
                Err(e) => fail(format!("task: {e}")),
            }
        }
        say(format!("ready connected={} calls={done}", clients.len()));
        let mut lines = stdin_lines();
        let mut round = calls;
        while let Some(line) = lines.recv().await {
            if line == "check" {
                let mut ok = 0;
                for (i, c) in clients.iter().enumerate() {
                    match checked_transform(c, me | i as u64, round).await {
                        Ok(()) => ok += 1,
                        Err(e) => eprintln!("peer {}: {e}", std::process::id()),
                    }
                }
                round += 1;
                say(format!("checked ok={ok}"));
            }
        }
        drop(clients);
        say("done");
    });
}

/// Connects and starts `calls` calls of `slow` (which never answer unless cancelled);
/// prints `calling n=<calls>`, then waits to be killed.
pub(crate) fn rpc_caller(name: &str, n: usize) {
    let rt = rpc_runtime();
    rt.block_on(async move {
        let c = Client::connect(name, client_config())
            .await
            .unwrap_or_else(|e| fail(format!("connect: {e}")));
        let mut tasks = Vec::new();
        for i in 0..n {
            let c = c.clone();
            tasks.push(tokio::spawn(async move {
                let r = c.call_raw("slow", b"zzz", CallOptions::default()).await;
                say(format!("returned call={i} result={r:?}"));
            }));
        }
        say(format!("calling n={n}"));
        for t in tasks {
            let _ = t.await;
        }
    });
}

/// A client that serves methods to its server while it calls it (see
/// [`PeerCommand::RpcServingClient`](shmrpc_tests::PeerCommand::RpcServingClient)).
pub(crate) fn rpc_serving_client(dial: &RpcDial, calls: u64) {
    let rt = rpc_runtime();
    rt.block_on(async move {
        // The server's notifications, in the order they were handled.
        let (note_tx, mut notes) = tokio::sync::mpsc::unbounded_channel::<u64>();
        let builder = ClientBuilder::new(client_config())
            .on_notify("client_note", move |_ctx, n: u64| {
                let _ = note_tx.send(n);
                async {}
            })
            .unary("client_double", |_ctx, n: u64| async move {
                Ok(("client".to_string(), 2 * n + 1))
            })
            .unary_raw("hang", |_ctx, _body| async move {
                say("hanging");
                std::future::pending::<()>().await;
                Ok(Vec::new())
            })
            // Streams to this client: the count and checksum of what it read; and an
            // echo of `3n + 1` for each `n`.
            .client_streaming("client_sum", |_ctx, mut items| async move {
                let mut seen = Vec::new();
                while let Some(n) = items.next().await {
                    seen.push(n?);
                }
                Ok((seen.len() as u64, shmrpc_tests::sequence_checksum(seen)))
            })
            .bidi("client_echo", |_ctx, mut items, sink| async move {
                while let Some(n) = items.next().await {
                    let n: u64 = n?;
                    sink.send(&(3 * n + 1)).await?;
                }
                Ok(())
            })
            // Streams held open until cancelled, each saying `holding what=..` once it
            // runs (after its first item, echoed for the bidirectional one) and
            // `cancelled what=..` when its caller cancels it.
            .streaming("client_hang_stream", |ctx, (): (), sink| async move {
                sink.send(&0u64).await?;
                say("holding what=server_stream");
                ctx.cancelled().await;
                say("cancelled what=server_stream");
                Ok(())
            })
            .client_streaming("client_hold_sum", |ctx, mut items| async move {
                let first: Option<u64> = items.next().await.transpose()?;
                say(format!("holding what=client_stream first={first:?}"));
                ctx.cancelled().await;
                say("cancelled what=client_stream");
                Ok(0u64)
            })
            .bidi("client_hold_echo", |ctx, mut items, sink| async move {
                let first: u64 = items.next().await.transpose()?.unwrap_or(0);
                sink.send(&first).await?;
                say("holding what=bidi");
                ctx.cancelled().await;
                say("cancelled what=bidi");
                Ok(())
            });
        let client = match dial {
            RpcDial::Shm(name) => builder.connect(name).await,
            RpcDial::Tcp(addr) => builder.connect_tcp(*addr).await,
        }
        .unwrap_or_else(|e| fail(format!("connect: {e}")));
        say(format!("ready pid={}", std::process::id()));
        let mut lines = stdin_lines();
        while let Some(line) = lines.recv().await {
            if line == "streams" {
                streams_to_server(&client, calls).await;
                continue;
            }
            if line == "notes" {
                // Notify the server `calls` times while reading as many of its
                // notifications.
                let c = client.clone();
                let sending = tokio::spawn(async move {
                    for n in 0..calls {
                        c.notify("server_note", &n).await?;
                    }
                    Ok::<(), RpcError>(())
                });
                let mut seen = Vec::new();
                while (seen.len() as u64) < calls {
                    match notes.recv().await {
                        Some(n) => seen.push(n),
                        None => break,
                    }
                }
                match sending.await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => fail(format!("notify: {e}")),
                    Err(e) => fail(format!("notifying task: {e}")),
                }
                let in_order = seen.iter().copied().eq(0..seen.len() as u64);
                say(format!(
                    "notes count={} sum={} in_order={in_order}",
                    seen.len(),
                    shmrpc_tests::sequence_checksum(seen)
                ));
                continue;
            }
            if line == "hold-calls" {
                // A client stream and a bidirectional call on the server, held until
                // "drop" (then dropped, which cancels them).
                let held = hold_streams(&client).await;
                say("holding-calls");
                while let Some(line) = lines.recv().await {
                    if line == "drop" {
                        break;
                    }
                }
                drop(held);
                say("dropped");
                continue;
            }
            if line == "open-all" {
                // One call of each shape on the server, left open (this end is to be
                // killed with them).
                open_all(&client).await;
                say("opened");
                continue;
            }
            if line != "go" {
                continue;
            }
            let mut tasks = tokio::task::JoinSet::new();
            for n in 0..calls {
                let c = client.clone();
                tasks.spawn(async move {
                    let opts = CallOptions::timeout(Duration::from_secs(60));
                    let r: Result<(String, u64), RpcError> =
                        c.call("server_triple", &n, opts).await;
                    matches!(r, Ok((ref who, v)) if who == "server" && v == 3 * n)
                });
            }
            let (mut ok, mut bad) = (0, 0);
            while let Some(r) = tasks.join_next().await {
                if r.unwrap_or(false) {
                    ok += 1;
                } else {
                    bad += 1;
                }
            }
            say(format!("calls ok={ok} bad={bad}"));
        }
    });
}

/// Opens `server_hold_sum` and `server_hold_echo` on the server with one item each (the
/// echo read back, so that handler is known to run) and returns them open.
async fn hold_streams(client: &Client) -> (shmrpc::ClientStreamCall, shmrpc::BidiCall) {
    let opts = CallOptions::default();
    let mut sum = client
        .call_client_stream("server_hold_sum", opts)
        .await
        .unwrap_or_else(|e| fail(format!("client stream: {e}")));
    sum.send(&1u64)
        .await
        .unwrap_or_else(|e| fail(format!("client stream item: {e}")));
    let mut bidi = client
        .call_bidi("server_hold_echo", opts)
        .await
        .unwrap_or_else(|e| fail(format!("bidi call: {e}")));
    bidi.sender
        .send(&2u64)
        .await
        .unwrap_or_else(|e| fail(format!("bidi item: {e}")));
    match bidi.receiver.next::<u64>().await {
        Some(Ok(2)) => {}
        other => fail(format!("bidi echo: {other:?}")),
    }
    (sum, bidi)
}

/// Opens one call of each shape on the server and leaves them open in tasks: a unary
/// `server_hang`, a `server_hang_stream` (its first item read), and the two of
/// [`hold_streams`].
async fn open_all(client: &Client) {
    let c = client.clone();
    tokio::spawn(async move { c.call_raw("server_hang", b"", CallOptions::default()).await });
    let mut stream = client
        .call_stream::<()>("server_hang_stream", &(), CallOptions::default())
        .await
        .unwrap_or_else(|e| fail(format!("server stream: {e}")));
    match stream.next::<u64>().await {
        Some(Ok(0)) => {}
        other => fail(format!("server stream item: {other:?}")),
    }
    let held = hold_streams(client).await;
    tokio::spawn(async move {
        let _held = held;
        let _ = stream.next_raw().await;
        std::future::pending::<()>().await;
    });
}

/// The serving client's streams to its server: `n` items in a client stream to
/// `server_sum` (which answers their count and checksum), and `n` items through the
/// `server_echo` bidirectional call (sent and read by two tasks at once). Prints
/// `streams sum_count=.. sum_ok=.. echo_count=.. echo_ok=..`.
async fn streams_to_server(client: &Client, n: u64) {
    let opts = CallOptions::timeout(Duration::from_secs(60));
    let want = shmrpc_tests::sequence_checksum(0..n);
    let sum = async {
        let mut call = client.call_client_stream("server_sum", opts).await?;
        for i in 0..n {
            call.send(&i).await?;
        }
        call.finish::<(u64, u64)>().await
    };
    let (sum_count, sum_ok) = match sum.await {
        Ok((count, sum)) => (count, sum == want),
        Err(e) => fail(format!("client stream: {e}")),
    };
    let (mut tx, mut rx) = match client.call_bidi("server_echo", opts).await {
        Ok(call) => call.split(),
        Err(e) => fail(format!("bidi call: {e}")),
    };
    let sending = tokio::spawn(async move {
        for i in 0..n {
            tx.send(&i).await?;
        }
        tx.finish().await
    });
    let mut back = Vec::new();
    while let Some(item) = rx.next::<u64>().await {
        match item {
            Ok(b) => back.push(b),
            Err(e) => fail(format!("bidi echo: {e}")),
        }
    }
    match sending.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => fail(format!("bidi send: {e}")),
        Err(e) => fail(format!("bidi sender task: {e}")),
    }
    let echo_ok = shmrpc_tests::sequence_checksum(back.iter().map(|b| b.wrapping_sub(1) / 3))
        == want
        && back.iter().all(|b| b % 3 == 1);
    say(format!(
        "streams sum_count={sum_count} sum_ok={sum_ok} echo_count={} echo_ok={echo_ok}",
        back.len()
    ));
}

/// A `once` request: a token (client id, sequence number), `len` bytes derived from it,
/// and their checksum last.
fn once_request(client: u64, seq: u64, len: usize) -> Vec<u8> {
    let mut r = vec![0u8; 16 + len];
    r[..8].copy_from_slice(&client.to_le_bytes());
    r[8..16].copy_from_slice(&seq.to_le_bytes());
    let mut x = shmrpc_tests::mix64(client ^ seq.rotate_left(17));
    for chunk in r[16..].chunks_mut(8) {
        x = shmrpc_tests::mix64(x);
        let n = chunk.len();
        chunk.copy_from_slice(&x.to_le_bytes()[..n]);
    }
    let sum = shmrpc_tests::checksum64(&r);
    r.extend_from_slice(&sum.to_le_bytes());
    r
}

/// The token of a well-formed `once` request, `None` if its checksum does not match.
fn check_once_request(r: &[u8]) -> Option<u128> {
    if r.len() < 24 {
        return None;
    }
    let (body, sum) = r.split_at(r.len() - 8);
    if shmrpc_tests::checksum64(body).to_le_bytes() != sum {
        return None;
    }
    Some(u128::from_le_bytes(
        body[..16].try_into().expect("16 bytes"),
    ))
}

/// A client that keeps the server busy in every way a kill can interrupt, until it is
/// killed: (re)connecting, large fragmented calls, small calls, streams read to their end
/// or dropped, calls parked until their deadline. Every answer is checked; a wrong one
/// prints `BAD ...` and exits 3. Errors from a server that dies are expected: it reconnects.
pub(crate) fn chaos_client(name: &str, seed: u64) {
    let id = shmrpc_tests::mix64(seed ^ u64::from(std::process::id()));
    let rt = rpc_runtime();
    rt.block_on(async move {
        let mut rng = shmrpc_tests::SplitMix64::new(seed);
        let cfg = client_config().with_reconnect_for(Duration::from_secs(30));
        let mut seq = 0u64;
        let mut ok = 0u64;
        let mut client = None;
        say("started");
        loop {
            let c = match &client {
                Some(c) => c,
                None => match Client::connect(name, cfg.clone()).await {
                    Ok(c) => client.insert(c),
                    Err(_) => continue,
                },
            };
            seq += 1;
            let pick = rng.range(0, 100);
            let r: Result<(), RpcError> = async {
                match pick {
                    // Large: fragmented over several ring records.
                    0..=19 => {
                        let len = rng.range(100_000, 300_000) as usize;
                        let req = once_request(id, seq, len);
                        let r = c.call_raw("once", &req, CallOptions::default()).await?;
                        if r != transform(&req) {
                            println!("BAD once answer len={len}");
                            exit(3);
                        }
                    }
                    20..=59 => {
                        let req = once_request(id, seq, rng.range(0, 2000) as usize);
                        let r = c.call_raw("once", &req, CallOptions::default()).await?;
                        if r != transform(&req) {
                            println!("BAD once answer");
                            exit(3);
                        }
                    }
                    // Streams, read to the end or dropped midway.
                    60..=79 => {
                        let n = rng.range(1, 40) as u32;
                        let stop = rng.range(0, u64::from(n) + 10) as u32;
                        let mut s = c
                            .call_stream("chat", &(seq, n, 0u32), CallOptions::default())
                            .await?;
                        let mut i = 0;
                        while i < stop {
                            match s.next::<(u32, String)>().await {
                                None => break,
                                Some(item) => {
                                    let (k, tok) = item?;
                                    if k != i || tok != chat_token(seq, i) {
                                        println!("BAD token {k} of stream {seq}");
                                        exit(3);
                                    }
                                    i += 1;
                                }
                            }
                        }
                    }
                    // Parked until the deadline (the handler waits for its cancel).
                    80..=89 => {
                        let d = Duration::from_millis(rng.range(1, 20));
                        match c.call_raw("slow", b"zz", CallOptions::timeout(d)).await {
                            Err(e) if e.code == Code::DeadlineExceeded => {}
                            Err(e) => return Err(e),
                            Ok(_) => {
                                println!("BAD slow call answered");
                                exit(3);
                            }
                        }
                    }
                    // Churn: a new connection.
                    _ => {
                        return Err(RpcError::new(Code::Unavailable, "churn"));
                    }
                }
                Ok(())
            }
            .await;
            match r {
                Ok(()) => ok += 1,
                Err(e) if e.code == Code::Unavailable && e.message == "churn" => client = None,
                // The server died or restarts: carry on (the client reconnects).
                Err(_) => {}
            }
            if ok % 100 == 1 {
                say(format!("progress ok={ok}"));
            }
        }
    });
}
