//! Zero heap allocations per message on the channel's send and receive paths, once warmed
//! up: counted (not timed) by a counting global allocator.
//!
//! The allocator is `allocation-counter`'s `#[global_allocator]` (linked into this test
//! binary only, because only this file uses the crate). It counts per thread, so the test
//! harness and tests running in parallel never pollute a measurement; each side of a
//! channel measures its own section on its own thread, and both counts must be zero.
//!
//! Every mode sends and receives `N` messages after a warm-up that wraps the rings several
//! times and makes each side sleep at least once: non-blocking `try_*`, blocking (spin then
//! park, and pure park), batched, and async on a tokio current-thread runtime.
#![cfg(not(shmrpc_loom))]
#![forbid(unsafe_code)]

use std::sync::mpsc;
use std::time::Duration;

use allocation_counter::{measure, AllocationInfo};
use shmrpc::channel::{
    self, ChannelConfig, Endpoint, Receiver, Sender, TryRecvError, TrySendError, WaitStrategy,
};
use shmrpc::lowlevel::ring::Spinner;

/// Messages per measured section.
const N: u64 = 10_000;
/// Messages before measuring: several laps of the small rings used here.
const WARMUP: u64 = 2_000;
/// Watchdog for every blocking wait: a bug fails the test instead of hanging it.
const TIMEOUT: Duration = Duration::from_secs(20);
/// Bytes per message (the payload carries the sequence number, checked on receipt).
const LEN: usize = 64;

fn msg(i: u64) -> [u8; LEN] {
    let mut m = [0u8; LEN];
    for (k, chunk) in m.chunks_exact_mut(8).enumerate() {
        chunk.copy_from_slice(&(i ^ k as u64).to_le_bytes());
    }
    m
}

fn check(i: u64, got: &[u8]) {
    assert!(got == msg(i), "message {i} garbled or out of order");
}

/// The allocator must really be counting, or a zero would prove nothing.
#[test]
fn counter_is_active() {
    let info = measure(|| {
        std::hint::black_box(Box::new(7u64));
    });
    assert_eq!(info.count_total, 1, "counting allocator not installed");
}

fn assert_zero(what: &str, info: AllocationInfo) {
    assert_eq!(
        info.count_total, 0,
        "{what}: {} allocations ({} bytes) in the measured section of {N} messages",
        info.count_total, info.bytes_total
    );
}

/// Ends the process (failing the test run) if the guarded section outlives its limit: the
/// watchdog for waits that take no timeout of their own (`recv_batch`, the async calls,
/// which are measured without a `tokio::time::timeout` around them so that only the
/// library's own path is counted).
struct Watchdog(Option<mpsc::Sender<()>>);

impl Watchdog {
    fn new(what: &'static str) -> Self {
        let (tx, rx) = mpsc::channel::<()>();
        std::thread::spawn(move || {
            if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(TIMEOUT * 2) {
                eprintln!("watchdog: {what} hung for {:?}", TIMEOUT * 2);
                std::process::exit(101);
            }
        });
        Watchdog(Some(tx))
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        drop(self.0.take()); // disconnects: the watchdog thread returns
    }
}

fn pair(capacity: usize, wait: WaitStrategy) -> (Endpoint, Endpoint) {
    let cfg = ChannelConfig::default()
        .with_capacity(capacity)
        .with_wait(wait);
    channel::pair(&cfg).expect("channel pair")
}

/// One thread, alternating `try_send` and `try_recv` in both directions.
#[test]
fn try_send_try_recv_allocate_nothing() {
    let (mut a, mut b) = pair(1024, WaitStrategy::default());
    let mut round = |i: u64| {
        a.try_send(&msg(i)).expect("room for one message");
        check(i, &b.try_recv().expect("the message just sent"));
        b.try_send(&msg(!i)).expect("room for one message");
        check(!i, &a.try_recv().expect("the reply just sent"));
        assert!(matches!(a.try_recv(), Err(TryRecvError::Empty)));
    };
    for i in 0..WARMUP {
        round(i);
    }
    let info = measure(|| {
        for i in WARMUP..WARMUP + N {
            round(i);
        }
    });
    assert_zero("try_send/try_recv", info);
    // Filling the ring and getting Full must not allocate either.
    let info = measure(|| {
        let mut i = 0;
        while a.try_send(&msg(i)).is_ok() {
            i += 1;
        }
        assert!(matches!(a.try_send(&msg(i)), Err(TrySendError::Full)));
    });
    assert_zero("try_send until Full", info);
}

/// Blocking ping-pong between two threads: every message is a request answered by `b`.
fn blocking_ping_pong(wait: WaitStrategy) {
    let (mut a, mut b) = pair(1024, wait);
    let server = std::thread::spawn(move || {
        let mut serve = |i: u64| {
            let m = b.recv_timeout(TIMEOUT).expect("request");
            check(i, &m);
            drop(m);
            b.sender()
                .send_timeout(&msg(!i), TIMEOUT)
                .expect("send reply");
        };
        for i in 0..WARMUP {
            serve(i);
        }
        let info = measure(|| {
            for i in WARMUP..WARMUP + N {
                serve(i);
            }
        });
        (info, b.sender().producer().wakes())
    });
    let mut call = |i: u64| {
        a.sender()
            .send_timeout(&msg(i), TIMEOUT)
            .expect("send request");
        check(!i, &a.recv_timeout(TIMEOUT).expect("reply"));
    };
    for i in 0..WARMUP {
        call(i);
    }
    let client = measure(|| {
        for i in WARMUP..WARMUP + N {
            call(i);
        }
    });
    let (server, server_wakes) = server.join().expect("server thread");
    assert_zero(&format!("blocking client ({wait:?})"), client);
    assert_zero(&format!("blocking server ({wait:?})"), server);
    let client_wakes = a.sender().producer().wakes();
    if wait == WaitStrategy::Park {
        // Each side sent WARMUP + N messages: more wakes than WARMUP means the measured
        // section went through the futex sleep/wake path.
        assert!(
            client_wakes > WARMUP && server_wakes > WARMUP,
            "park path not exercised: {client_wakes} / {server_wakes} wakes"
        );
    }
}

#[test]
fn blocking_ping_pong_spin_then_park_allocates_nothing() {
    blocking_ping_pong(WaitStrategy::default());
}

#[test]
fn blocking_ping_pong_park_allocates_nothing() {
    blocking_ping_pong(WaitStrategy::Park);
}

/// Blocking one-way stream through a small ring, so the sender keeps waiting for space and
/// the receiver for data (both wait paths, with futex sleeps under `Park`).
fn blocking_stream(wait: WaitStrategy) {
    let (a, b) = pair(512, wait);
    let (mut tx, _a_rx) = a.split();
    let (_b_tx, mut rx) = b.split();
    let receiver = std::thread::spawn(move || {
        let mut take = |i: u64| check(i, &rx.recv_timeout(TIMEOUT).expect("message"));
        for i in 0..WARMUP {
            take(i);
        }
        measure(|| {
            for i in WARMUP..WARMUP + N {
                take(i);
            }
        })
    });
    for i in 0..WARMUP {
        tx.send_timeout(&msg(i), TIMEOUT).expect("send");
    }
    let sender = measure(|| {
        for i in WARMUP..WARMUP + N {
            tx.send_timeout(&msg(i), TIMEOUT).expect("send");
        }
    });
    let receiver = receiver.join().expect("receiver thread");
    assert_zero(&format!("blocking sender ({wait:?})"), sender);
    assert_zero(&format!("blocking receiver ({wait:?})"), receiver);
}

#[test]
fn blocking_stream_spin_then_park_allocates_nothing() {
    blocking_stream(WaitStrategy::default());
}

#[test]
fn blocking_stream_park_allocates_nothing() {
    blocking_stream(WaitStrategy::Park);
}

/// Batched: zero-copy reserve + `commit_deferred` + one `notify` per batch on the sending
/// side, `recv_batch` (one release per batch) on the receiving side.
#[test]
fn batched_stream_allocates_nothing() {
    const BATCH: u64 = 16;
    let _watchdog = Watchdog::new("batched stream");
    let (a, b) = pair(1024, WaitStrategy::default());
    let (mut tx, _a_rx) = a.split();
    let (_b_tx, mut rx) = b.split();
    let receiver = std::thread::spawn(move || {
        let mut next = 0u64;
        let mut take_until = |end: u64| {
            while next < end {
                let n = rx
                    .recv_batch(64, |tag, data| {
                        assert_eq!(u64::from(tag), next % 1000);
                        check(next, data);
                        next += 1;
                    })
                    .expect("recv_batch");
                assert!(n >= 1);
            }
        };
        take_until(WARMUP);
        measure(|| take_until(WARMUP + N))
    });
    let mut spinner = Spinner::new(WaitStrategy::default());
    let mut send_batch = |first: u64| {
        let p = tx.producer();
        for i in first..first + BATCH {
            loop {
                match p.try_reserve(LEN) {
                    Ok(mut g) => {
                        g.copy_from_slice(&msg(i));
                        g.commit_deferred((i % 1000) as u32);
                        break;
                    }
                    Err(TrySendError::Full) => {
                        p.notify();
                        let deadline = std::time::Instant::now() + TIMEOUT;
                        p.wait_for_space(LEN, &mut spinner, Some(deadline), || true)
                            .expect("space");
                    }
                    Err(e) => panic!("reserve: {e}"),
                }
            }
        }
        p.notify();
    };
    for first in (0..WARMUP).step_by(BATCH as usize) {
        send_batch(first);
    }
    let sender = measure(|| {
        for first in (WARMUP..WARMUP + N).step_by(BATCH as usize) {
            send_batch(first);
        }
    });
    let receiver = receiver.join().expect("receiver thread");
    assert_zero("batched sender", sender);
    assert_zero("batched receiver", receiver);
}

// Async.
//
// Two tasks of one current-thread tokio runtime (`tokio::join!` of a client and a server
// future, so everything runs on the measuring thread). What tokio itself allocates once per
// `Runtime::block_on` call is not per message, and is kept out of the measured section:
//
// - `Runtime::block_on` boxes a future larger than tokio's `BOX_FUTURE_THRESHOLD` (2 KiB
//   when tokio is built with debug assertions, 16 KiB otherwise): the futures are boxed
//   here before the count starts;
// - every `block_on` starts with an empty deferred-waker list (`scheduler::defer::Defer`, a
//   `Vec<Waker>`), and the first `tokio::task::yield_now` of that call — the spin phase of
//   the async wait yields between rounds — grows it once (64 bytes). Each measured section
//   therefore runs inside a `block_on` that has already moved `WARMUP` messages.
//
// Two counts are then asserted: (1) zero allocations in every poll of the send/receive
// section of `N` messages (the library's async path: spin, arm, eventfd, `AsyncFd`,
// `tokio::time::timeout`); (2) the whole `block_on` of `WARMUP + N` messages allocates
// exactly as much as one of `WARMUP` messages: the `N` messages cost nothing anywhere on the
// thread, tokio's scheduler, I/O driver and timer included.

use std::future::Future;
use std::task::Poll;

/// The three counts of [`measure_async`]: a `block_on` of `WARMUP` messages, one of
/// `WARMUP + N`, and the polls of the `N`-message section within the latter.
struct AsyncCounts {
    baseline: AllocationInfo,
    whole: AllocationInfo,
    section: AllocationInfo,
}

impl AsyncCounts {
    fn assert_zero_per_message(&self, what: &str) {
        eprintln!(
            "{what}: per block_on (tokio, not per message) {} allocations / {} bytes",
            self.baseline.count_total, self.baseline.bytes_total
        );
        assert_zero(&format!("{what}, send/receive polls"), self.section);
        assert_eq!(
            (self.whole.count_total, self.whole.bytes_total),
            (self.baseline.count_total, self.baseline.bytes_total),
            "{what}: {N} more messages in one block_on allocated (runtime included)"
        );
    }
}

/// Runs `$section` (an expression of the message range `$range`, giving a future) on `$rt`:
/// a warm-up, then the three measurements of [`AsyncCounts`].
macro_rules! measure_async {
    ($rt:expr, |$range:ident| $section:expr) => {{
        let rt = &$rt;
        let _watchdog = Watchdog::new("async section");
        {
            let $range = 0..WARMUP;
            rt.block_on(Box::pin(async { $section.await }));
        }
        let baseline = {
            let $range = WARMUP..2 * WARMUP;
            let fut = Box::pin(async { $section.await });
            measure(|| rt.block_on(fut))
        };
        let mut section = AllocationInfo::default();
        let whole = {
            let counted = &mut section;
            let fut = Box::pin(async {
                {
                    let $range = 2 * WARMUP..3 * WARMUP;
                    $section.await;
                }
                let $range = 3 * WARMUP..3 * WARMUP + N;
                let mut fut = std::pin::pin!($section);
                std::future::poll_fn(|cx| {
                    let mut r = Poll::Pending;
                    *counted += measure(|| r = fut.as_mut().poll(cx));
                    r
                })
                .await
            });
            measure(|| rt.block_on(fut))
        };
        AsyncCounts {
            baseline,
            whole,
            section,
        }
    }};
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Ping-pong: `a` sends request `i` and awaits the reply `!i` that `b` sends back.
fn ping_pong<'a>(
    a: &'a mut Endpoint,
    b: &'a mut Endpoint,
    range: std::ops::Range<u64>,
) -> impl Future<Output = ()> + 'a {
    let r = range.clone();
    let client = async move {
        for i in r {
            a.send_async(&msg(i)).await.expect("send request");
            check(!i, &a.recv_async().await.expect("reply"));
        }
    };
    let server = async move {
        for i in range {
            check(i, &b.recv_async().await.expect("request"));
            b.send_async(&msg(!i)).await.expect("send reply");
        }
    };
    async move {
        tokio::join!(client, server);
    }
}

/// One-way stream from `tx` to `rx`.
fn stream<'a>(
    tx: &'a mut Sender,
    rx: &'a mut Receiver,
    range: std::ops::Range<u64>,
) -> impl Future<Output = ()> + 'a {
    let r = range.clone();
    let sender = async move {
        for i in r {
            tx.send_async(&msg(i)).await.expect("send");
        }
    };
    let receiver = async move {
        for i in range {
            check(i, &rx.recv_async().await.expect("message"));
        }
    };
    async move {
        tokio::join!(sender, receiver);
    }
}

fn async_ping_pong(wait: WaitStrategy) -> AsyncCounts {
    let rt = runtime();
    let (mut a, mut b) = pair(1024, wait);
    let counts = measure_async!(rt, |range| ping_pong(&mut a, &mut b, range));
    if wait == WaitStrategy::Park {
        // 3 * WARMUP messages before the measured section: more wakes than that means the
        // measured section went through the eventfd sleep/wake path.
        let wakes = a.sender().producer().wakes();
        assert!(wakes > 3 * WARMUP, "park path not exercised: {wakes} wakes");
    }
    counts
}

/// A small ring, so the sender keeps awaiting space and the receiver data.
fn async_stream(wait: WaitStrategy) -> AsyncCounts {
    let rt = runtime();
    let (a, b) = pair(512, wait);
    let (mut tx, _a_rx) = a.split();
    let (_b_tx, mut rx) = b.split();
    measure_async!(rt, |range| stream(&mut tx, &mut rx, range))
}

#[test]
fn async_ping_pong_spin_then_park_allocates_nothing() {
    async_ping_pong(WaitStrategy::default())
        .assert_zero_per_message("async ping-pong (spin then park)");
}

#[test]
fn async_ping_pong_park_allocates_nothing() {
    async_ping_pong(WaitStrategy::Park).assert_zero_per_message("async ping-pong (park)");
}

#[test]
fn async_stream_spin_then_park_allocates_nothing() {
    async_stream(WaitStrategy::default()).assert_zero_per_message("async stream (spin then park)");
}

#[test]
fn async_stream_park_allocates_nothing() {
    async_stream(WaitStrategy::Park).assert_zero_per_message("async stream (park)");
}

/// How a unary echo is served and called, for [`rpc_unary_allocations`].
#[derive(Clone, Copy)]
enum Echo {
    /// An async handler that answers at once, called with `call_raw`.
    Async,
    /// An inline handler (`unary_inline_raw`), called with `call_raw_into` and one answer
    /// buffer for all calls: the fast path.
    Inline,
}

/// Heap allocations per unary RPC call of 64 bytes, server and client as tasks of one
/// current-thread runtime, so that every allocation of both sides lands on this thread.
/// Each answer is checked. As for the async channel above, what tokio allocates once per
/// `block_on` is kept out: the count is that of a `block_on` of `WARMUP + CALLS` calls
/// less that of one of `WARMUP` calls. Returns (allocations, bytes) per call, both sides
/// together.
fn rpc_unary_allocations(echo: Echo) -> (f64, f64) {
    use shmrpc::{CallOptions, Client, ClientConfig, Server};
    const CALLS: u64 = 2_000;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let name = format!("alloc-rpc-{}-{}", std::process::id(), echo as u8);
    let (client, handle, serving) = rt.block_on(async {
        let server = match echo {
            Echo::Async => Server::builder().unary_raw("echo", |_ctx, req| async move { Ok(req) }),
            Echo::Inline => Server::builder().unary_inline_raw("echo", |_ctx, req, out| {
                out.extend_from_slice(req);
                Ok(())
            }),
        }
        .bind(&name)
        .unwrap();
        let handle = server.handle();
        let serving = tokio::spawn(server.serve());
        let client = Client::connect(&name, ClientConfig::default())
            .await
            .unwrap();
        (client, handle, serving)
    });
    let mut answer = Vec::new();
    let mut call_all = |from: u64, n: u64| {
        rt.block_on(async {
            for i in from..from + n {
                match echo {
                    Echo::Async => {
                        answer = client
                            .call_raw("echo", &msg(i), CallOptions::default())
                            .await
                            .unwrap()
                    }
                    Echo::Inline => client
                        .call_raw_into("echo", &msg(i), &mut answer, CallOptions::default())
                        .await
                        .unwrap(),
                }
                check(i, &answer);
            }
        })
    };
    call_all(0, WARMUP);
    let baseline = measure(|| call_all(WARMUP, WARMUP));
    let whole = measure(|| call_all(2 * WARMUP, WARMUP + CALLS));
    handle.shutdown();
    rt.block_on(async { tokio::time::timeout(TIMEOUT, serving).await })
        .expect("server shut down")
        .unwrap();
    let more = |f: fn(&AllocationInfo) -> u64| f(&whole) as f64 - f(&baseline) as f64;
    (
        more(|i| i.count_total) / CALLS as f64,
        more(|i| i.bytes_total) / CALLS as f64,
    )
}

/// The RPC layer's general path is not allocation-free: the server's handler future and
/// its call's token, and the answer the caller owns. This test reports the count and fails
/// if it grows past a guard, so that a regression cannot slip in.
#[test]
fn rpc_unary_call_allocations_are_counted_and_bounded() {
    /// Measured: 3.0 allocations (~200 bytes) per call, both sides together: the
    /// handler's boxed future, its token, and the answer `call_raw` hands over. (It was
    /// 4.0 before the connection's reader reused buffers, and 10 while each call had its
    /// own channel and cancel-token node.) The guard leaves room for noise (a hash map
    /// growing) but not for one more allocation per call.
    const GUARD_PER_CALL: f64 = 4.0;
    let (per_call, bytes) = rpc_unary_allocations(Echo::Async);
    println!("rpc unary call, both sides in one thread: {per_call:.2} allocations, {bytes:.0} bytes per call");
    assert!(
        per_call <= GUARD_PER_CALL,
        "{per_call:.2} allocations per call, guard {GUARD_PER_CALL}"
    );
}

/// The fast path allocates nothing on either side once warm: an inline handler writes
/// into the connection's reused buffer, the request and answer buffers go back to the
/// readers' pools, and `call_raw_into` swaps the answer into the caller's buffer.
#[test]
fn rpc_inline_unary_call_into_allocates_nothing() {
    let (per_call, bytes) = rpc_unary_allocations(Echo::Inline);
    assert_eq!(
        per_call, 0.0,
        "inline unary call with call_raw_into: {per_call} allocations, {bytes} bytes per call"
    );
}
