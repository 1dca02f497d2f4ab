//! A peer killed with SIGKILL in the middle of calls.
//!
//! - A client process dies with four calls in flight: the server's handlers see their calls
//!   cancelled (the server counts it, a second client reads the counts), none is left
//!   running, and the connection's descriptors are freed.
//! - The server process dies with calls pending on the client: every one fails with
//!   `PeerGone` within a watchdog. A server restarted on the same name is reconnected to by
//!   the same `Client` without the caller doing anything: a call started while no server
//!   was there succeeds once one is, and so does the first call after the next restart.
//!   The times from the restarted server's `ready` to the successful calls are printed.
//! - No call hangs when the server dies under load; a call's deadline bounds its wait for a
//!   reconnect; calls waiting for a reconnect give up within the reconnect period.
//! - A stopped (SIGSTOP) client or server is given up by the other side's heartbeats.
//! - A `BlockingClient` notify waiting for credit (the server's handler holds the window)
//!   fails with `PeerGone` when the server is killed, and a notify after that fails too.
#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use shmrpc::{BlockingClient, CallOptions, Client, ClientConfig, Code, RpcError};
use shmrpc_tests::{
    field_parse, rpc_runtime, rpc_stats, rpc_wait_stats, spawn_peer, with_watchdog, within,
    ChatRequest, PeerCommand, PeerProcess, RpcTarget, TestNames,
};

const WAIT: Duration = Duration::from_secs(10);
/// A pending call must fail within this after its server is killed.
const PROMPT: Duration = Duration::from_secs(5);

fn start_server(name: &str) -> PeerProcess {
    let mut p = spawn_peer!(PeerCommand::rpc_server(RpcTarget::Shm(name.to_owned())));
    p.expect("ready", WAIT);
    p
}

fn stop_server(mut p: PeerProcess) {
    p.send("exit");
    p.expect("done", WAIT);
    p.assert_exits_ok(WAIT);
}

#[test]
fn a_killed_client_has_its_calls_cancelled_and_its_connection_freed() {
    with_watchdog(Duration::from_secs(60), || {
        let mut names = TestNames::new();
        let name = names.name("rpc-kill-client");
        let server = start_server(&name);
        let rt = rpc_runtime();
        let observer = rt
            .block_on(Client::connect(&name, ClientConfig::default()))
            .expect("connect");
        let before = rt.block_on(rpc_stats(&observer));

        let mut caller = spawn_peer!(PeerCommand::RpcCaller {
            name: name.clone(),
            calls: 4,
        });
        caller.expect("calling n=4", WAIT);
        rt.block_on(rpc_wait_stats(
            &observer,
            "four slow handlers running",
            WAIT,
            |s| field_parse::<i64>(s, "slow_in_flight") == 4,
        ));
        assert!(
            field_parse::<u64>(&rt.block_on(rpc_stats(&observer)), "fds")
                > field_parse::<u64>(&before, "fds"),
            "the caller's connection holds descriptors"
        );
        let killed = Instant::now();
        caller.kill();
        let st = rt.block_on(rpc_wait_stats(
            &observer,
            "the handlers of the killed client's calls cancelled and finished",
            WAIT,
            |s| {
                field_parse::<u64>(s, "slow_cancels") == 4
                    && field_parse::<i64>(s, "slow_in_flight") == 0
            },
        ));
        let cancelled_after = killed.elapsed();
        assert_eq!(field_parse::<u64>(&st, "slow_started"), 4, "{st}");
        rt.block_on(rpc_wait_stats(
            &observer,
            "the killed client's descriptors closed",
            WAIT,
            |s| field_parse::<u64>(s, "fds") == field_parse::<u64>(&before, "fds"),
        ));
        println!(
            "server saw the 4 calls of the killed client cancelled after {cancelled_after:.1?}"
        );
        // The server serves on.
        let r = rt
            .block_on(observer.call_raw("echo", b"still here", CallOptions::default()))
            .unwrap();
        assert_eq!(r, b"still here");
        drop(observer);
        drop(rt);
        stop_server(server);
        names.assert_clean_with_locks();
    });
}

/// Every pending call fails with `PeerGone`, promptly.
async fn all_fail_peer_gone(
    pending: Vec<tokio::task::JoinHandle<Result<Vec<u8>, RpcError>>>,
    killed: Instant,
) -> Duration {
    let n = pending.len();
    for (i, h) in pending.into_iter().enumerate() {
        let r = within("a pending call failing after its server died", PROMPT, h)
            .await
            .expect("call task");
        let e = r.expect_err("a call to a killed server cannot succeed");
        assert_eq!(e.code, Code::PeerGone, "pending call {i} of {n}: {e}");
    }
    killed.elapsed()
}

#[test]
fn a_killed_server_fails_pending_calls_with_peer_gone_and_a_restarted_one_is_reconnected() {
    with_watchdog(Duration::from_secs(60), || {
        let mut names = TestNames::new();
        let name = names.name("rpc-kill-server");
        let mut server = start_server(&name);
        let rt = rpc_runtime();
        let client = rt
            .block_on(Client::connect(&name, ClientConfig::default()))
            .expect("connect");

        // Eight unary calls and one stream pending.
        let mut pending = Vec::new();
        for i in 0..8u8 {
            let c = client.clone();
            pending.push(
                rt.spawn(async move { c.call_raw("slow", &[i], CallOptions::default()).await }),
            );
        }
        let c = client.clone();
        pending.push(rt.spawn(async move {
            let req: ChatRequest = (0xdead, 1_000_000, 5);
            let mut s = c.call_stream("chat", &req, CallOptions::default()).await?;
            loop {
                match s.next::<(u32, String)>().await {
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(e),
                    None => return Ok(Vec::new()),
                }
            }
        }));
        rt.block_on(rpc_wait_stats(
            &client,
            "8 slow calls and a chat running",
            WAIT,
            |s| {
                field_parse::<i64>(s, "slow_in_flight") == 8
                    && field_parse::<u64>(s, "chat_tokens") > 0
            },
        ));
        let killed = Instant::now();
        server.kill();
        let took = rt.block_on(all_fail_peer_gone(pending, killed));
        println!("all 9 pending calls failed with PeerGone within {took:.1?} of the kill");

        // A call made while no server is there keeps trying (reconnect with back-off) and
        // succeeds once a server is restarted on the same name.
        let c = client.clone();
        let waiting = rt.spawn(async move {
            let r = c
                .call_raw("echo", b"are you back?", CallOptions::default())
                .await;
            (r, Instant::now())
        });
        std::thread::sleep(Duration::from_millis(300));
        assert!(!waiting.is_finished(), "a call succeeded with no server");
        let mut server = spawn_peer!(PeerCommand::rpc_server(RpcTarget::Shm(name.clone())));
        server.expect("ready", WAIT);
        let ready = Instant::now();
        let (r, at) = rt
            .block_on(within("the waiting call", WAIT, waiting))
            .expect("task");
        assert_eq!(r.expect("the call waiting for a server"), b"are you back?");
        println!(
            "a call started while the server was down succeeded {:.1?} after the restarted \
             server's ready (reconnect back-off)",
            at.saturating_duration_since(ready)
        );

        // Kill it again with a call pending; once that failed, the client knows. The first
        // call after the next restart reconnects at once.
        let c = client.clone();
        let slow = rt.spawn(async move { c.call_raw("slow", b"", CallOptions::default()).await });
        rt.block_on(rpc_wait_stats(&client, "a slow call running", WAIT, |s| {
            field_parse::<i64>(s, "slow_in_flight") == 1
        }));
        server.kill();
        rt.block_on(all_fail_peer_gone(vec![slow], Instant::now()));
        let server = start_server(&name);
        let ready = Instant::now();
        let r = rt
            .block_on(within(
                "the first call after the restart",
                WAIT,
                client.call_raw("echo", b"again", CallOptions::default()),
            ))
            .expect("the first call after the restart");
        let took = ready.elapsed();
        assert_eq!(r, b"again");
        println!("restarted server ready -> first successful call: {took:.2?}");
        drop(client);
        drop(rt);
        stop_server(server);
        names.assert_clean_with_locks();
    });
}

/// A call's deadline bounds the whole call, including waiting for a connection: with the
/// server gone (and known to be gone), a call with a 100 ms deadline fails within a second,
/// instead of after the client's reconnect period (`ClientConfig::reconnect_for`, 5 s).
#[test]
fn a_call_deadline_bounds_the_wait_for_a_reconnect() {
    with_watchdog(Duration::from_secs(60), || {
        let mut names = TestNames::new();
        let name = names.name("rpc-deadline");
        let mut server = start_server(&name);
        let rt = rpc_runtime();
        let client = rt
            .block_on(Client::connect(&name, ClientConfig::default()))
            .expect("connect");
        let c = client.clone();
        let slow = rt.spawn(async move { c.call_raw("slow", b"", CallOptions::default()).await });
        rt.block_on(rpc_wait_stats(&client, "a slow call running", WAIT, |s| {
            field_parse::<i64>(s, "slow_in_flight") == 1
        }));
        server.kill();
        rt.block_on(all_fail_peer_gone(vec![slow], Instant::now()));
        let t = Instant::now();
        let r = rt.block_on(within(
            "a call with a 100 ms deadline and no server",
            Duration::from_secs(30),
            client.call_raw(
                "echo",
                b"?",
                CallOptions::timeout(Duration::from_millis(100)),
            ),
        ));
        let took = t.elapsed();
        let e = r.expect_err("no server: the call cannot succeed");
        println!("a call with a 100 ms deadline and no server failed after {took:.2?}: {e}");
        assert!(
            took < Duration::from_secs(1),
            "a call with a 100 ms deadline took {took:.2?} to fail ({e})"
        );
        assert!(
            matches!(e.code, Code::DeadlineExceeded | Code::Unavailable),
            "{e}"
        );
        drop(client);
        drop(rt);
        // The killed server left its socket and lock files: a new server on the name
        // replaces them and removes them when it stops.
        stop_server(start_server(&name));
        names.assert_clean_with_locks();
    });
}

/// 64 tasks calling without deadlines as fast as they can when the server is killed: every
/// call ends (with `PeerGone`, or `Unavailable` for calls started after the death was
/// noticed) within the watchdog; none waits forever. Three rounds.
///
/// A call that registers itself on the connection just after the connection's reader
/// failed every pending call is never failed, and waits forever: this test catches that
/// race only now and then (about one run in 15 to 30 on a loaded machine).
#[test]
fn no_call_hangs_when_the_server_is_killed_under_load() {
    with_watchdog(Duration::from_secs(90), || {
        let _cpu = shmrpc_tests::heavy();
        let mut names = TestNames::new();
        let rt = rpc_runtime();
        for round in 0..3 {
            let name = names.name("rpc-kill-load");
            let mut server = start_server(&name);
            let cfg = ClientConfig::default().with_reconnect_for(Duration::from_millis(20));
            let client = rt.block_on(Client::connect(&name, cfg)).expect("connect");
            let done = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
            let mut tasks = Vec::new();
            for t in 0..64u64 {
                let (c, done) = (client.clone(), done.clone());
                tasks.push(rt.spawn(async move {
                    for i in 0u64.. {
                        let req = shmrpc_tests::make_request(t << 32 | i);
                        match c.call_raw("transform", &req, CallOptions::default()).await {
                            Ok(r) => {
                                assert_eq!(r, shmrpc_tests::transform(&req));
                                done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            }
                            Err(e) => return e,
                        }
                    }
                    unreachable!()
                }));
            }
            while done.load(std::sync::atomic::Ordering::Relaxed) < 20_000 {
                std::thread::sleep(Duration::from_millis(1));
            }
            server.kill();
            let killed = Instant::now();
            let mut codes = std::collections::BTreeMap::new();
            for (t, h) in tasks.into_iter().enumerate() {
                let e = rt
                    .block_on(within(
                        &format!("caller {t} of round {round} ending after the kill"),
                        PROMPT,
                        h,
                    ))
                    .expect("caller task");
                assert!(
                    matches!(e.code, Code::PeerGone | Code::Unavailable),
                    "caller {t}: {e}"
                );
                *codes.entry(format!("{:?}", e.code)).or_insert(0) += 1;
            }
            println!(
                "round {round}: every caller ended within {:.1?} of the kill: {codes:?}",
                killed.elapsed()
            );
            drop(client);
            // Replace the killed server's files, then remove them.
            stop_server(start_server(&name));
        }
        drop(rt);
        names.assert_clean_with_locks();
    });
}

/// A client process that stops (SIGSTOP) with calls in flight: the server's heartbeats
/// (200 ms) go unanswered, and after three silent periods the server gives the connection
/// up and cancels its calls.
#[test]
fn a_stopped_client_is_given_up_by_the_servers_heartbeat() {
    with_watchdog(Duration::from_secs(60), || {
        let mut names = TestNames::new();
        let name = names.name("rpc-stop-client");
        let mut server = spawn_peer!(PeerCommand::RpcServer {
            target: RpcTarget::Shm(name.clone()),
            cap: 65536,
            heartbeat_ms: 200,
            max_message: 16 << 20,
            max_in_flight: None,
            handshake_timeout_ms: None,
        });
        server.expect("ready", WAIT);
        let rt = rpc_runtime();
        let observer = rt
            .block_on(Client::connect(&name, ClientConfig::default()))
            .expect("connect");
        let mut caller = spawn_peer!(PeerCommand::RpcCaller {
            name: name.clone(),
            calls: 2,
        });
        caller.expect("calling n=2", WAIT);
        rt.block_on(rpc_wait_stats(
            &observer,
            "two slow calls running",
            WAIT,
            |s| field_parse::<i64>(s, "slow_in_flight") == 2,
        ));
        let pid = rustix::process::Pid::from_raw(caller.pid() as i32).expect("pid");
        rustix::process::kill_process(pid, rustix::process::Signal::STOP).expect("SIGSTOP");
        let stopped = Instant::now();
        rt.block_on(rpc_wait_stats(
            &observer,
            "the server giving up the stopped client",
            WAIT,
            |s| {
                field_parse::<u64>(s, "slow_cancels") == 2
                    && field_parse::<i64>(s, "slow_in_flight") == 0
            },
        ));
        println!(
            "server gave up a stopped client (heartbeat 200 ms) after {:.1?}",
            stopped.elapsed()
        );
        caller.kill();
        drop(observer);
        drop(rt);
        stop_server(server);
        names.assert_clean_with_locks();
    });
}

/// A server process that stops (SIGSTOP) with a call pending: the client's heartbeats
/// (200 ms) go unanswered, and after three silent periods the pending call fails with
/// `PeerGone`.
#[test]
fn a_stopped_server_is_given_up_by_the_clients_heartbeat() {
    with_watchdog(Duration::from_secs(60), || {
        let mut names = TestNames::new();
        let name = names.name("rpc-stop-server");
        let mut server = start_server(&name);
        let rt = rpc_runtime();
        let cfg = ClientConfig::default().with_heartbeat(Duration::from_millis(200));
        let client = rt.block_on(Client::connect(&name, cfg)).expect("connect");
        let c = client.clone();
        let pending =
            rt.spawn(async move { c.call_raw("slow", b"", CallOptions::default()).await });
        rt.block_on(rpc_wait_stats(&client, "a slow call running", WAIT, |s| {
            field_parse::<i64>(s, "slow_in_flight") == 1
        }));
        let pid = rustix::process::Pid::from_raw(server.pid() as i32).expect("pid");
        rustix::process::kill_process(pid, rustix::process::Signal::STOP).expect("SIGSTOP");
        let stopped = Instant::now();
        let r = rt
            .block_on(within("the pending call failing", PROMPT, pending))
            .expect("task");
        let e = r.expect_err("a stopped server cannot answer");
        assert_eq!(e.code, Code::PeerGone, "{e}");
        println!(
            "client gave up a stopped server (heartbeat 200 ms) after {:.1?}: {e}",
            stopped.elapsed()
        );
        server.kill();
        drop(client);
        drop(rt);
        stop_server(start_server(&name));
        names.assert_clean_with_locks();
    });
}

/// With the server gone, 16 calls start at once on one client whose reconnect period is
/// 300 ms: each may keep trying for that long, so all of them have failed well within
/// 1.5 s. (Callers that each wait their turn for the connection and then try for the full
/// period on their own fail one after the other: the last after 16 x 300 ms.)
#[test]
fn calls_waiting_for_a_reconnect_give_up_within_the_reconnect_period() {
    with_watchdog(Duration::from_secs(60), || {
        let mut names = TestNames::new();
        let name = names.name("rpc-reconnect-queue");
        let mut server = start_server(&name);
        let rt = rpc_runtime();
        let cfg = ClientConfig::default().with_reconnect_for(Duration::from_millis(300));
        let client = rt.block_on(Client::connect(&name, cfg)).expect("connect");
        let c = client.clone();
        let slow = rt.spawn(async move { c.call_raw("slow", b"", CallOptions::default()).await });
        rt.block_on(rpc_wait_stats(&client, "a slow call running", WAIT, |s| {
            field_parse::<i64>(s, "slow_in_flight") == 1
        }));
        server.kill();
        rt.block_on(all_fail_peer_gone(vec![slow], Instant::now()));
        let t = Instant::now();
        let ends = rt.block_on(within(
            "16 calls without a server",
            Duration::from_secs(30),
            async {
                let mut tasks = Vec::new();
                for i in 0..16u8 {
                    let c = client.clone();
                    tasks.push(tokio::spawn(async move {
                        let r = c.call_raw("echo", &[i], CallOptions::default()).await;
                        (r, t.elapsed())
                    }));
                }
                let mut ends = Vec::new();
                for h in tasks {
                    let (r, at) = h.await.expect("task");
                    let e = r.expect_err("no server: the call cannot succeed");
                    assert_eq!(e.code, Code::Unavailable, "{e}");
                    ends.push(at);
                }
                ends
            },
        ));
        let last = ends.iter().max().copied().unwrap_or_default();
        println!(
            "16 calls without a server (reconnect period 300 ms) failed after {:.2?} .. {last:.2?}",
            ends.iter().min().copied().unwrap_or_default()
        );
        assert!(
            last < Duration::from_millis(1500),
            "the last of 16 calls waiting for a reconnect failed after {last:.2?}"
        );
        drop(client);
        drop(rt);
        stop_server(start_server(&name));
        names.assert_clean_with_locks();
    });
}

/// The notification window of a connection (documented: 64 notifications a sender may
/// have sent and not yet had handled).
const NOTIFY_WINDOW: u64 = 64;

#[test]
fn a_blocking_notify_waiting_for_credit_fails_when_the_server_is_killed() {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{mpsc, Arc};
    with_watchdog(Duration::from_secs(60), || {
        let mut names = TestNames::new();
        let name = names.name("rpc-kill-notified");
        let mut server = start_server(&name);
        // Gives up redialling a dead server after a second.
        let cfg = ClientConfig::default().with_reconnect_for(Duration::from_secs(1));
        let client = Arc::new(BlockingClient::connect(&name, cfg).expect("connect"));
        // Notifies `stuck` (whose handler never returns) until a notify fails.
        let sent = Arc::new(AtomicU64::new(0));
        let (c, count) = (client.clone(), sent.clone());
        let (done_tx, done) = mpsc::channel();
        std::thread::spawn(move || {
            let e = loop {
                if let Err(e) = c.notify_raw("stuck", b"") {
                    break e;
                }
                count.fetch_add(1, Ordering::SeqCst);
            };
            let _ = done_tx.send(e);
        });
        // The window is spent; the next notify waits for credit that never comes.
        let until = Instant::now() + WAIT;
        while sent.load(Ordering::SeqCst) < NOTIFY_WINDOW {
            assert!(Instant::now() < until, "the window was never spent");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(
            done.try_recv().is_err(),
            "a notify beyond the window waits for credit"
        );

        server.kill();
        let e = done
            .recv_timeout(PROMPT)
            .expect("the waiting notify returns once the server is killed");
        assert_eq!(e.code, Code::PeerGone, "{e}");
        assert_eq!(
            sent.load(Ordering::SeqCst),
            NOTIFY_WINDOW,
            "sent within the window"
        );

        // A notify after the death: no server to dial, an error within the reconnect
        // period (not a hang).
        let (tx, rx) = mpsc::channel();
        let c = client.clone();
        std::thread::spawn(move || {
            let _ = tx.send(c.notify_raw("stuck", b""));
        });
        let e = rx
            .recv_timeout(WAIT)
            .expect("a notify to a dead server returns")
            .expect_err("no server to notify");
        assert!(matches!(e.code, Code::Unavailable | Code::PeerGone), "{e}");

        // A server restarted on the name (which clears the killed one's files) is
        // notified again by the same client, with a fresh window.
        let server = start_server(&name);
        for _ in 0..NOTIFY_WINDOW {
            client
                .notify_raw("stuck", b"")
                .expect("notified after the restart");
        }
        drop(client);
        stop_server(server);
        names.assert_clean_with_locks();
    });
}
