//! The blocking client's streaming shapes (client stream, bidi, server stream read item by
//! item) and its notifications, against an in-process server running on its own runtime
//! threads.
#![cfg(not(shmrpc_loom))]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shmrpc::{BlockingClient, ClientConfig, Code, RpcError, Server, ServerHandle};

mod support;
use support::server_runtime;

/// Bounds every wait on the server's reports; never reached when things work.
const BOUND: Duration = Duration::from_secs(60);
const TIMEOUT: Option<Duration> = Some(Duration::from_secs(60));

fn name(what: &str) -> String {
    format!("blocking-{what}-{}", std::process::id())
}

/// Order-sensitive: a lost, repeated or reordered item changes it.
fn fold(acc: u64, x: u64) -> u64 {
    (acc ^ x).wrapping_mul(0x0000_0100_0000_01b3)
}

fn checksum(items: impl IntoIterator<Item = u64>) -> u64 {
    items.into_iter().fold(0xcbf2_9ce4_8422_2325, fold)
}

/// What the server's handlers report to the test.
#[derive(Debug, PartialEq)]
enum Report {
    Started(&'static str),
    Cancelled(&'static str),
    /// The `seq` notification handler ran with this number.
    Note(u64),
}

struct Fixture {
    rt: tokio::runtime::Runtime,
    handle: ServerHandle,
    serving: tokio::task::JoinHandle<()>,
    reports: mpsc::Receiver<Report>,
    /// Shared with the test's threads.
    client: Arc<BlockingClient>,
}

fn start(what: &str) -> Fixture {
    let name = name(what);
    let rt = server_runtime();
    let (tx, reports) = mpsc::channel();
    let tx = Arc::new(Mutex::new(tx));
    let report = move |r: Report| {
        let _ = tx.lock().unwrap().send(r);
    };
    let (r1, r2, r3) = (report.clone(), report.clone(), report);
    let server = rt
        .block_on(async {
            Server::builder()
                .on_notify("seq", move |_ctx, n: u64| {
                    r3(Report::Note(n));
                    async {}
                })
                // Never returns: it holds the notification credit it was given.
                .on_notify("stuck", |_ctx, _n: u64| std::future::pending::<()>())
                .client_streaming("sum", |_ctx, mut items: shmrpc::Items<u64>| async move {
                    let mut acc = checksum([]);
                    let mut n = 0u64;
                    while let Some(x) = items.next().await {
                        acc = fold(acc, x?);
                        n += 1;
                    }
                    Ok((n, acc))
                })
                .bidi(
                    "echo",
                    |_ctx, mut items: shmrpc::Items<u64>, sink| async move {
                        while let Some(x) = items.next().await {
                            sink.send(&x?).await?;
                        }
                        Ok(())
                    },
                )
                .client_streaming("hold", move |ctx, mut items: shmrpc::Items<u64>| {
                    let report = r1.clone();
                    async move {
                        let _first = items.next().await;
                        report(Report::Started("hold"));
                        ctx.cancelled().await;
                        report(Report::Cancelled("hold"));
                        Err::<u64, _>(RpcError::new(Code::Cancelled, "cancelled"))
                    }
                })
                .bidi(
                    "hold-bidi",
                    move |ctx, mut items: shmrpc::Items<u64>, sink| {
                        let report = r2.clone();
                        async move {
                            let first = items.next().await.transpose()?.unwrap_or(0);
                            sink.send(&first).await?;
                            report(Report::Started("hold-bidi"));
                            ctx.cancelled().await;
                            report(Report::Cancelled("hold-bidi"));
                            Err(RpcError::new(Code::Cancelled, "cancelled"))
                        }
                    },
                )
                .streaming("range", |_ctx, n: u64, sink| async move {
                    for i in 0..n {
                        sink.send(&i).await?;
                    }
                    Ok(())
                })
                // 0..n in runs of `run` items, each run sent together.
                .streaming("runs", |_ctx, (n, run): (u64, u64), sink| async move {
                    for start in (0..n).step_by(run as usize) {
                        sink.send_all(start..(start + run).min(n)).await?;
                    }
                    Ok(())
                })
                .bind(&name)
        })
        .unwrap();
    let handle = server.handle();
    let serving = rt.spawn(async move {
        let _ = server.serve().await;
    });
    let client = Arc::new(BlockingClient::connect(&name, ClientConfig::default()).unwrap());
    Fixture {
        rt,
        handle,
        serving,
        reports,
        client,
    }
}

impl Fixture {
    fn stop(self) {
        drop(self.client);
        self.handle.shutdown();
        self.rt.block_on(self.serving).unwrap();
    }

    fn expect(&self, want: Report) {
        let got = self.reports.recv_timeout(BOUND).expect("server report");
        assert_eq!(got, want);
    }
}

#[test]
fn blocking_client_stream_checksum_matches_the_servers() {
    let f = start("cstream");
    let items: Vec<u64> = (0..1000u64).map(|i| i.wrapping_mul(0x9e37_79b9)).collect();
    let mut call = f.client.call_client_stream("sum", TIMEOUT).unwrap();
    for x in &items {
        call.send(x).unwrap();
    }
    let (n, sum): (u64, u64) = call.finish().unwrap();
    assert_eq!(
        (n, sum),
        (items.len() as u64, checksum(items.iter().copied()))
    );

    // No items at all: the server still answers once the stream ends.
    let call = f.client.call_client_stream("sum", TIMEOUT).unwrap();
    let (n, sum): (u64, u64) = call.finish().unwrap();
    assert_eq!((n, sum), (0, checksum([])));
    f.stop();
}

#[test]
fn blocking_bidi_echo_with_sender_and_receiver_on_two_threads() {
    let f = start("bidi");
    let items: Vec<u64> = (0..5000u64).map(|i| i ^ (i << 17)).collect();
    let (mut sender, receiver) = f.client.call_bidi("echo", TIMEOUT).unwrap();
    let to_send = items.clone();
    let writer = std::thread::spawn(move || -> Result<(), RpcError> {
        for x in &to_send {
            sender.send(x)?;
        }
        sender.finish()
    });
    let reader = std::thread::spawn(move || -> Result<Vec<u64>, RpcError> {
        receiver
            .map(|b| b.and_then(|b| shmrpc::decode::<u64>(&b)))
            .collect()
    });
    writer.join().unwrap().unwrap();
    let got = reader.join().unwrap().unwrap();
    assert_eq!(got.len(), items.len());
    assert_eq!(checksum(got), checksum(items));
    f.stop();
}

#[test]
fn blocking_server_stream_reads_item_by_item() {
    let f = start("sstream");
    let body = shmrpc::encode(&100u64).unwrap();
    let mut stream = f.client.call_stream_raw("range", &body, TIMEOUT).unwrap();
    let mut got = Vec::new();
    while let Some(x) = stream.next_item::<u64>() {
        got.push(x.unwrap());
    }
    assert_eq!(got, (0..100).collect::<Vec<_>>());
    assert!(stream.next_raw().is_none(), "the stream stays over");
    drop(stream);
    f.stop();
}

#[test]
fn blocking_server_stream_lends_the_items_that_came_together() {
    let f = start("sstream-lent");
    // 100 runs of 7: each run is sent as one frame, and lent as one.
    let body = shmrpc::encode(&(700u64, 7u64)).unwrap();
    let mut stream = f.client.call_stream_raw("runs", &body, TIMEOUT).unwrap();
    let (mut got, mut lent) = (Vec::new(), Vec::new());
    while let Some(items) = stream.next_items() {
        let items = items.unwrap();
        lent.push(items.len());
        for item in items {
            got.push(shmrpc::decode::<u64>(item).unwrap());
        }
    }
    assert_eq!(got, (0..700).collect::<Vec<_>>());
    assert_eq!(lent, [7; 100]);
    assert!(stream.next_items().is_none(), "the stream stays over");
    drop(stream);
    f.stop();
}

#[test]
fn dropping_a_blocking_client_stream_cancels_its_handler() {
    let f = start("cstream-cancel");
    let mut call = f.client.call_client_stream("hold", None).unwrap();
    call.send(&1u64).unwrap();
    f.expect(Report::Started("hold"));
    drop(call);
    f.expect(Report::Cancelled("hold"));
    // The connection is fine afterwards.
    let mut call = f.client.call_client_stream("sum", TIMEOUT).unwrap();
    call.send(&5u64).unwrap();
    assert_eq!(call.finish::<(u64, u64)>().unwrap().0, 1);
    f.stop();
}

#[test]
fn dropping_both_halves_of_a_blocking_bidi_cancels_its_handler() {
    let f = start("bidi-cancel");
    let (mut sender, mut receiver) = f.client.call_bidi("hold-bidi", None).unwrap();
    sender.send(&7u64).unwrap();
    assert_eq!(receiver.next_item::<u64>().unwrap().unwrap(), 7);
    f.expect(Report::Started("hold-bidi"));
    // From two other threads, as a thread-based user would.
    std::thread::spawn(move || drop(sender)).join().unwrap();
    std::thread::spawn(move || drop(receiver)).join().unwrap();
    f.expect(Report::Cancelled("hold-bidi"));
    f.stop();
}

/// The notification window of a connection (documented: 64 notifications a sender may
/// have sent and not yet had handled).
const NOTIFY_WINDOW: u64 = 64;

#[test]
fn blocking_notifications_reach_the_servers_handler_in_order_and_complete() {
    const N: u64 = 1000;
    const SEQ: shmrpc::Notification<u64> = shmrpc::Notification::new("seq");
    let f = start("notify");
    // Typed, raw and by descriptor: one sequence, many windows long.
    for n in 0..N {
        match n % 3 {
            0 => f.client.notify("seq", &n).unwrap(),
            1 => f
                .client
                .notify_raw("seq", &shmrpc::encode(&n).unwrap())
                .unwrap(),
            _ => f.client.send_notification(SEQ, &n).unwrap(),
        }
    }
    let mut got = Vec::new();
    while (got.len() as u64) < N {
        match f.reports.recv_timeout(BOUND) {
            Ok(Report::Note(n)) => got.push(n),
            Ok(other) => panic!("unexpected report {other:?}"),
            Err(e) => panic!("{} of {N} notifications handled: {e}", got.len()),
        }
    }
    assert_eq!(got, (0..N).collect::<Vec<_>>(), "all, once each, in order");
    assert_eq!(checksum(got), checksum(0..N));
    // Nothing more was handled than was sent.
    assert!(f.reports.try_recv().is_err());
    f.stop();
}

/// A blocking notify waiting for credit (the server's handler never finishes, so the
/// window is spent) fails with `PeerGone` when the server goes; a notify after that fails
/// too (there is no server to dial) instead of hanging.
#[test]
fn a_blocking_notify_fails_when_the_server_is_gone() {
    let f = start("notify-gone");
    let sent = Arc::new(AtomicU64::new(0));
    let (client, count) = (f.client.clone(), sent.clone());
    let notifier = std::thread::spawn(move || -> RpcError {
        for n in 0.. {
            if let Err(e) = client.notify("stuck", &n) {
                return e;
            }
            count.fetch_add(1, Ordering::Relaxed);
        }
        unreachable!("the window ends the loop")
    });
    // The window is spent and the next notify waits for credit that never comes.
    let until = Instant::now() + BOUND;
    while sent.load(Ordering::Relaxed) < NOTIFY_WINDOW {
        assert!(Instant::now() < until, "the window was never spent");
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(
        !notifier.is_finished(),
        "a notify beyond the window waits for credit"
    );

    // The server goes: its connection ends, and with it the waiting notify.
    f.handle.shutdown();
    f.rt.block_on(async {
        tokio::time::timeout(BOUND, f.serving)
            .await
            .expect("serve returns")
    })
    .unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(notifier.join());
    });
    let e = rx
        .recv_timeout(BOUND)
        .expect("the waiting notify returns once the server is gone")
        .expect("notifier thread");
    assert_eq!(e.code, Code::PeerGone, "{e}");
    assert_eq!(
        sent.load(Ordering::Relaxed),
        NOTIFY_WINDOW,
        "no notification beyond the window was sent"
    );

    // A new notify: nothing to dial, so an error (bounded by the client's reconnect time).
    let (tx, rx) = mpsc::channel();
    let client = f.client.clone();
    std::thread::spawn(move || {
        let _ = tx.send(client.notify("seq", &1u64));
    });
    let e = rx
        .recv_timeout(BOUND)
        .expect("a notify to a gone server returns")
        .expect_err("no server to notify");
    assert!(matches!(e.code, Code::Unavailable | Code::PeerGone), "{e}");
}

/// The calling thread drives the client's runtime during a call; between calls a
/// background thread does. Without it nobody would answer the server's heartbeats while
/// the client sits idle: the server gives up on a client silent for three periods, and the
/// next call would go out on a new connection.
#[test]
fn an_idle_blocking_client_answers_heartbeats_and_keeps_its_connection() {
    let hb = Duration::from_millis(300);
    let (rt, handle, name) = support::echo_server(&name("idle-hb"), hb);
    let cfg = ClientConfig::default().with_heartbeat(hb);
    let client = BlockingClient::connect(&name, cfg).unwrap();
    assert_eq!(client.call_raw("echo", b"one", TIMEOUT).unwrap(), b"one");
    let before: Vec<u64> = handle.peers().iter().map(|p| p.conn_id()).collect();
    assert_eq!(before.len(), 1, "one connection");
    // Ten heartbeat periods with no call: a client that did not answer would be dropped
    // after three.
    std::thread::sleep(hb * 10);
    assert_eq!(client.call_raw("echo", b"two", TIMEOUT).unwrap(), b"two");
    let after: Vec<u64> = handle.peers().iter().map(|p| p.conn_id()).collect();
    assert_eq!(after, before, "the same connection served both calls");
    drop(client);
    handle.shutdown();
    drop(rt);
}

/// Many threads calling through one blocking client at once: one drives the runtime, the
/// others wait for their own answers, and the driving passes from call to call (and to the
/// background thread between them) without losing or mixing up an answer. Half the
/// threads call an inline handler with `call_raw_into`, each reusing one answer buffer.
#[test]
fn blocking_calls_from_many_threads_each_get_their_own_answer() {
    let (rt, handle, name) = support::echo_server(&name("many-threads"), Duration::from_secs(5));
    let client = Arc::new(BlockingClient::connect(&name, ClientConfig::default()).unwrap());
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let client = client.clone();
            std::thread::spawn(move || {
                let mut answer = Vec::new();
                for i in 0..500u64 {
                    let body = [t.to_le_bytes(), i.to_le_bytes()].concat();
                    if t % 2 == 0 {
                        answer = client.call_raw("echo", &body, TIMEOUT).unwrap();
                    } else {
                        client
                            .call_raw_into("echo_inline", &body, &mut answer, TIMEOUT)
                            .unwrap();
                    }
                    assert_eq!(answer, body, "thread {t} call {i}");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    drop(client);
    handle.shutdown();
    drop(rt);
}
