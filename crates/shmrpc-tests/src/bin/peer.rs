//! The helper process the cross-process tests spawn. One binary, one subcommand per role:
//!
//! ```text
//! peer echo-server <name> <blocking|async> <wait> <conns> <cap>
//! peer ring-writer <name> <cap> <n> <seed>        (stdin: "more <k>", "exit")
//! peer race-open <name> <size>                    (stdin: "go", then "exit")
//! peer ring-claim <name> <cap> <producer|consumer> (stdin: "try <end>", "exit")
//! peer hold-segment <name> <size>
//! peer listen <name>
//! peer stream <name> <wait> <cap> <count> <seed> <profile>
//! peer flood <name> <wait> <cap>
//! peer sink <name> <wait> <cap>
//! peer rpc-server <name|tcp> <cap> <heartbeat-ms> <max-message> [<max-in-flight> [<handshake-timeout-ms>]]
//! peer rpc-clients <name> <clients> <calls>       (stdin: "check", "exit")
//! peer rpc-caller <name> <calls>
//! peer rpc-garbage <name>
//! peer rpc-foreign <name> <server-socket-path>    (run as another user)
//! peer rpc-bad-server <name> <frame-version|hello-version>
//! ```
//!
//! Each prints `ready ...` on stdout once set up, then does its job. The one-client
//! listeners (`stream`, `flood`, `sink`) drop their `Listener` right after accepting, so a
//! peer killed later leaves no socket file behind. Peers that stay around wait for `exit`
//! (or end of file) on stdin, so they also go away when the test process dies. A lifetime
//! limit ends a forgotten peer.
// Raw segment access (stamps, forged records) is `unsafe`; each use is allowed where it
// happens, with what makes it sound.
#![deny(unsafe_code)]

use std::io::BufRead;
use std::process::exit;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use shmrpc::channel::{self, ChannelConfig, Endpoint, Listener, RecvError, SendError};
use shmrpc::lowlevel::frame::{
    self, FrameHeader, Kind, FLAG_MORE, FRAME_HEADER_LEN, FRAME_VERSION,
};
use shmrpc::lowlevel::ring;
use shmrpc::lowlevel::sys::Segment;
use shmrpc::rpc::method_id;
use shmrpc::{CallOptions, Client, ClientConfig, Code, RpcError, ServerBuilder, ServerConfig};
use shmrpc_tests::{
    chat_token, fill_stream_message, make_request, parse_wait, transform, ChatRequest, SizeProfile,
    RING_SEGMENT_KIND, RING_WRITER_PROFILE,
};

/// A peer that outlives this is forgotten: end it.
const LIFETIME: Duration = Duration::from_secs(120);

fn fail(msg: impl std::fmt::Display) -> ! {
    eprintln!("peer {}: {msg}", std::process::id());
    exit(2)
}

fn say(line: impl std::fmt::Display) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Reads stdin lines, handing each to `on_line` until it returns false, "exit" or EOF.
fn serve_stdin(mut on_line: impl FnMut(&str) -> bool) {
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { return };
        let line = line.trim();
        if line == "exit" || !on_line(line) {
            return;
        }
    }
}

fn wait_for_exit() {
    serve_stdin(|_| true);
}

fn arg<T: std::str::FromStr>(args: &[String], i: usize, what: &str) -> T {
    args.get(i).and_then(|a| a.parse().ok()).unwrap_or_else(|| {
        fail(format!(
            "argument {i} ({what}) missing or invalid: {args:?}"
        ))
    })
}

fn config(wait: &str, cap: usize) -> ChannelConfig {
    let wait = parse_wait(wait).unwrap_or_else(|| fail(format!("bad wait strategy {wait}")));
    ChannelConfig::default().with_capacity(cap).with_wait(wait)
}

fn bind(name: &str, cfg: ChannelConfig) -> Listener {
    Listener::bind(name, cfg).unwrap_or_else(|e| fail(format!("bind {name}: {e}")))
}

fn accept(l: &Listener) -> Endpoint {
    l.accept().unwrap_or_else(|e| fail(format!("accept: {e}")))
}

fn main() {
    std::thread::spawn(|| {
        std::thread::sleep(LIFETIME);
        fail("lifetime exceeded");
    });
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cmd = args.first().map(String::as_str).unwrap_or("");
    match cmd {
        "echo-server" => echo_server(&args),
        "ring-writer" => ring_writer(&args),
        "race-open" => race_open(&args),
        "ring-claim" => ring_claim(&args),
        "hold-segment" => hold_segment(&args),
        "listen" => {
            let name: String = arg(&args, 1, "name");
            let l = bind(&name, ChannelConfig::default());
            say(format!("ready path={}", l.path().display()));
            wait_for_exit();
        }
        "stream" => stream(&args),
        "flood" => flood(&args),
        "sink" => {
            let name: String = arg(&args, 1, "name");
            let l = bind(&name, config(&args[2], arg(&args, 3, "cap")));
            say("ready");
            let ep = accept(&l);
            drop(l); // one client only: the socket file goes now, even if we are killed later
            say("accepted");
            wait_for_exit();
            drop(ep);
        }
        "rpc-server" => rpc_server(&args),
        "rpc-clients" => rpc_clients(&args),
        "rpc-caller" => rpc_caller(&args),
        "rpc-garbage" => rpc_garbage(&args),
        "rpc-foreign" => rpc_foreign(&args),
        "rpc-bad-server" => rpc_bad_server(&args),
        "rpc-hostile" => rpc_hostile(&args),
        "perm-probe" => perm_probe(&args),
        "chaos-client" => chaos_client(&args),
        _ => fail(format!("unknown subcommand {cmd:?}")),
    }
}

/// Answers each request with `transform(request)` until the client closes; serves `conns`
/// connections one after the other, then prints `done served=<total>`.
fn echo_server(args: &[String]) {
    let name: String = arg(args, 1, "name");
    let mode: String = arg(args, 2, "mode");
    let conns: usize = arg(args, 4, "conns");
    let cfg = config(&args[3], arg(args, 5, "cap"));
    let l = bind(&name, cfg);
    say("ready");
    let rt = (mode == "async").then(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| fail(format!("runtime: {e}")))
    });
    let mut served = 0u64;
    for _ in 0..conns {
        let mut ep = accept(&l);
        served += match &rt {
            Some(rt) => rt.block_on(serve_async(&mut ep)),
            None => serve_blocking(&mut ep),
        };
    }
    say(format!("done served={served}"));
}

fn serve_blocking(ep: &mut Endpoint) -> u64 {
    let mut n = 0;
    loop {
        let reply = match ep.recv() {
            Ok(m) => transform(&m),
            Err(RecvError::Closed) => return n,
            Err(e) => fail(format!("server recv: {e}")),
        };
        match ep.send(&reply) {
            Ok(()) => n += 1,
            Err(SendError::Closed) => return n,
            Err(e) => fail(format!("server send: {e}")),
        }
    }
}

async fn serve_async(ep: &mut Endpoint) -> u64 {
    let mut n = 0;
    loop {
        let reply = match ep.recv_async().await {
            Ok(m) => transform(&m),
            Err(RecvError::Closed) => return n,
            Err(e) => fail(format!("server recv_async: {e}")),
        };
        match ep.send_async(&reply).await {
            Ok(()) => n += 1,
            Err(SendError::Closed) => return n,
            Err(e) => fail(format!("server send_async: {e}")),
        }
    }
}

/// Creates a named segment holding a ring, writes `n` records, detaches the producer
/// (leaving the ring open) and stays alive. `more <k>` re-attaches a producer, which must
/// continue from the recorded position, and appends `k` records.
fn ring_writer(args: &[String]) {
    let name: String = arg(args, 1, "name");
    let cap: usize = arg(args, 2, "cap");
    let n: u64 = arg(args, 3, "n");
    let seed: u64 = arg(args, 4, "seed");
    let seg = Segment::create_with(&name, ring::ring_size(cap), RING_SEGMENT_KIND, |s| {
        ring::init(s, 0, cap).map_err(|e| e.to_string())
    })
    .unwrap_or_else(|e| fail(format!("create {name}: {e}")));
    let seg = Arc::new(seg);
    let write = |from: u64, to: u64| {
        let mut p = ring::producer(&seg, 0, cap).unwrap_or_else(|e| fail(format!("attach: {e}")));
        let mut buf = Vec::new();
        for seq in from..to {
            buf.resize(RING_WRITER_PROFILE.len(seed, seq), 0);
            let tag = fill_stream_message(seed, seq, &mut buf);
            p.try_push(tag, &buf)
                .unwrap_or_else(|e| fail(format!("push {seq}: {e}")));
        }
        let pos = p.position();
        p.detach();
        pos
    };
    let pos = write(0, n);
    say(format!("ready write_pos={pos} n={n}"));
    let mut total = n;
    serve_stdin(|line| {
        if let Some(k) = line
            .strip_prefix("more ")
            .and_then(|k| k.parse::<u64>().ok())
        {
            let pos = write(total, total + k);
            total += k;
            say(format!("wrote write_pos={pos} n={total}"));
        }
        true
    });
}

/// Opens the named segment holding a ring at offset 0, attaches one end and holds it.
/// `try <end>` attempts to attach an end and reports `attached end=..` (then drops it) or
/// `refused end=.. holder=<pid>`.
fn ring_claim(args: &[String]) {
    let name: String = arg(args, 1, "name");
    let cap: usize = arg(args, 2, "cap");
    let seg = Arc::new(Segment::open(&name).unwrap_or_else(|e| fail(format!("open: {e}"))));
    let attach = |end: &str| match end {
        "producer" => ring::producer(&seg, 0, cap).map(drop),
        "consumer" => ring::consumer(&seg, 0, cap).map(drop),
        _ => fail(format!("bad end {end:?}")),
    };
    let held: String = arg(args, 3, "end");
    let _held: Box<dyn Send> = match held.as_str() {
        "producer" => ring::producer(&seg, 0, cap).map(|p| Box::new(p) as _),
        "consumer" => ring::consumer(&seg, 0, cap).map(|c| Box::new(c) as _),
        _ => fail(format!("bad end {held:?}")),
    }
    .unwrap_or_else(|e| fail(format!("attach {held}: {e}")));
    say(format!("ready pid={}", std::process::id()));
    serve_stdin(|line| {
        if let Some(end) = line.strip_prefix("try ") {
            match attach(end) {
                Ok(()) => say(format!("attached end={end}")),
                Err(ring::AttachError::AlreadyAttached { end, holder_pid }) => {
                    say(format!("refused end={end} holder={holder_pid}"))
                }
                Err(e) => fail(format!("attach {end}: {e}")),
            }
        }
        true
    });
}

/// Waits for `go`, then races `open_or_create` on `name`. The creator's initialiser stores
/// its pid at offset 0; everyone reports what it finds there.
#[allow(unsafe_code)]
fn race_open(args: &[String]) {
    let name: String = arg(args, 1, "name");
    let size: usize = arg(args, 2, "size");
    say("ready");
    serve_stdin(|line| line != "go");
    let me = u64::from(std::process::id());
    let (seg, created) = Segment::open_or_create_with(&name, size, RING_SEGMENT_KIND, |s| {
        // SAFETY: no ring lives in this segment; word 0 is only accessed atomically.
        unsafe { s.atomic_u64(0) }
            .ok_or("segment too small")?
            .store(me, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    })
    .unwrap_or_else(|e| fail(format!("open_or_create {name}: {e}")));
    // SAFETY: as in the initialiser.
    let stamp = unsafe { seg.atomic_u64(0) }
        .map(|a| a.load(std::sync::atomic::Ordering::Acquire))
        .unwrap_or(0);
    say(format!(
        "result created={created} stamp={stamp} unlinks={}",
        seg.unlinks_on_drop()
    ));
    wait_for_exit();
}

/// Creates a named segment, stamps it, and holds it until told to exit (or killed).
#[allow(unsafe_code)]
fn hold_segment(args: &[String]) {
    let name: String = arg(args, 1, "name");
    let size: usize = arg(args, 2, "size");
    let seg = Segment::create(&name, size).unwrap_or_else(|e| fail(format!("create: {e}")));
    let me = u64::from(std::process::id());
    // SAFETY: no ring lives in this segment; word 0 is only accessed atomically.
    unsafe { seg.atomic_u64(0) }
        .expect("8 bytes")
        .store(me, std::sync::atomic::Ordering::Release);
    say(format!("ready pid={me}"));
    wait_for_exit();
}

/// Listens, accepts one client and sends it `count` messages of the stream `(seed,
/// profile)`, written in place; then closes its sending side and prints `done`.
fn stream(args: &[String]) {
    let name: String = arg(args, 1, "name");
    let cfg = config(&args[2], arg(args, 3, "cap"));
    let count: u64 = arg(args, 4, "count");
    let seed: u64 = arg(args, 5, "seed");
    let profile = SizeProfile::parse(&args[6]).unwrap_or_else(|| fail("bad size profile"));
    let l = bind(&name, cfg);
    say("ready");
    let (mut tx, rx) = accept(&l).split();
    drop(l);
    for seq in 0..count {
        let len = profile.len(seed, seq);
        let mut g = tx
            .reserve(len)
            .unwrap_or_else(|e| fail(format!("reserve {len} bytes for message {seq}: {e}")));
        let tag = fill_stream_message(seed, seq, &mut g);
        g.commit(tag);
    }
    tx.close();
    say(format!("done sent={count}"));
    wait_for_exit();
    drop((tx, rx));
}

/// Listens, accepts one client and sends it 16-byte messages (sequence number and its
/// complement) forever: the test kills it mid-stream.
fn flood(args: &[String]) {
    let name: String = arg(args, 1, "name");
    let l = bind(&name, config(&args[2], arg(args, 3, "cap")));
    say("ready");
    let mut ep = accept(&l);
    drop(l);
    let mut msg = [0u8; 16];
    for seq in 0u64.. {
        msg[..8].copy_from_slice(&seq.to_le_bytes());
        msg[8..].copy_from_slice(&(!seq).to_le_bytes());
        if let Err(e) = ep.send(&msg) {
            fail(format!("flood send {seq}: {e}"));
        }
    }
}

// ---------------------------------------------------------------------------------------
// RPC roles
// ---------------------------------------------------------------------------------------

fn rpc_runtime() -> tokio::runtime::Runtime {
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
///   and that its token was never seen before (else `dupes`), answers [`transform`].
fn rpc_routes(cfg: ServerConfig, c: Arc<RpcCounters>) -> ServerBuilder {
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
fn rpc_server(args: &[String]) {
    let target: String = arg(args, 1, "name or tcp");
    let cap: usize = arg(args, 2, "ring capacity");
    let hb: u64 = arg(args, 3, "heartbeat ms");
    let max_message: usize = arg(args, 4, "max message");
    let mut cfg = ServerConfig::default()
        .with_channel(ChannelConfig::default().with_capacity(cap))
        .with_heartbeat(Duration::from_millis(hb))
        .with_max_message(max_message);
    if args.len() > 5 {
        cfg.max_in_flight = arg(args, 5, "max in flight");
    }
    if args.len() > 6 {
        cfg.handshake_timeout = Duration::from_millis(arg(args, 6, "handshake timeout ms"));
    }
    let rt = rpc_runtime();
    rt.block_on(async move {
        let counters = Arc::new(RpcCounters::default());
        let builder = rpc_routes(cfg, counters);
        let (server, ready) = if target == "tcp" {
            let s = builder
                .bind_tcp("127.0.0.1:0".parse().expect("address"))
                .await
                .unwrap_or_else(|e| fail(format!("bind_tcp: {e}")));
            let addr = s.local_addr().expect("tcp address");
            (s, format!("ready addr={addr}"))
        } else {
            let s = builder
                .bind(&target)
                .unwrap_or_else(|e| fail(format!("bind {target}: {e}")));
            (s, "ready".to_owned())
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
fn rpc_clients(args: &[String]) {
    let name: String = arg(args, 1, "name");
    let n: usize = arg(args, 2, "clients");
    let calls: u64 = arg(args, 3, "calls");
    // Each shared-memory connection holds about seven descriptors on this side.
    let limit = shmrpc_tests::raise_nofile(64 + 8 * n as u64);
    let me = u64::from(std::process::id()) << 12;
    let rt = rpc_runtime();
    rt.block_on(async move {
        let mut clients = Vec::with_capacity(n);
        for i in 0..n {
            let c = Client::connect(&name, client_config())
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
fn rpc_caller(args: &[String]) {
    let name: String = arg(args, 1, "name");
    let n: usize = arg(args, 2, "calls");
    let rt = rpc_runtime();
    rt.block_on(async move {
        let c = Client::connect(&name, client_config())
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

/// A frame as a client would send it.
fn frame_bytes(kind: Kind, flags: u16, method: u32, call_id: u64, payload: &[u8]) -> Vec<u8> {
    let h = FrameHeader {
        kind,
        flags,
        method,
        call_id,
        len: 0,
    };
    frame::encode(&h, payload).unwrap_or_else(|e| fail(format!("encode: {e}")))
}

/// Recomputes the CRC of a frame after its header was edited.
fn fix_crc(f: &mut [u8]) {
    f[24..28].fill(0);
    let c = crc32c::crc32c_append(
        crc32c::crc32c(&f[..FRAME_HEADER_LEN]),
        &f[FRAME_HEADER_LEN..],
    );
    f[24..28].copy_from_slice(&c.to_le_bytes());
}

/// A well-formed `echo` request (deadline prefix 0).
fn echo_request(call_id: u64, body: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; 4];
    p.extend_from_slice(body);
    frame_bytes(Kind::Request, 0, method_id("echo"), call_id, &p)
}

/// The messages of one kind of garbage (each sent as one ring record).
fn garbage(kind: &str) -> Vec<Vec<u8>> {
    let mut rng = shmrpc_tests::SplitMix64::new(0x6a7b);
    let good = echo_request(7, b"garbage follows");
    let edited = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut g = good.clone();
        f(&mut g);
        g
    };
    match kind {
        "random" => vec![(0..100).map(|_| rng.next() as u8).collect()],
        "short" => vec![good[..FRAME_HEADER_LEN - 5].to_vec()],
        "magic" => vec![edited(&|g| {
            g[0] = b'X';
            fix_crc(g);
        })],
        "version" => vec![edited(&|g| {
            g[4] = FRAME_VERSION + 1;
            fix_crc(g);
        })],
        "kind" => vec![edited(&|g| {
            g[5] = 200;
            fix_crc(g);
        })],
        "flags" => vec![edited(&|g| {
            g[6] = 0x80;
            fix_crc(g);
        })],
        "reserved" => vec![edited(&|g| {
            g[29] = 1;
            fix_crc(g);
        })],
        // The header claims more payload than follows, and less.
        "length-long" => vec![edited(&|g| {
            let n = (g.len() - FRAME_HEADER_LEN + 1000) as u32;
            g[12..16].copy_from_slice(&n.to_le_bytes());
            fix_crc(g);
        })],
        "length-short" => vec![edited(&|g| {
            g[12..16].copy_from_slice(&3u32.to_le_bytes());
            fix_crc(g);
        })],
        "crc" => vec![edited(&|g| {
            let last = g.len() - 1;
            g[last] ^= 0x20;
        })],
        // Valid frames a client must not send.
        "response" => vec![frame_bytes(Kind::Response, 0, method_id("echo"), 7, b"x")],
        // A fragment of one call, then a frame of another.
        "interleaved" => vec![
            frame_bytes(Kind::Request, FLAG_MORE, method_id("echo"), 8, &[0u8; 64]),
            echo_request(9, b"in the middle"),
        ],
        _ => fail(format!("unknown garbage {kind}")),
    }
}

/// For each kind of garbage: connects a raw channel to the RPC server, checks that a
/// well-formed `echo` works on it, sends the garbage, and reports how the connection ended:
/// `garbage kind=<k> echo=ok end=<closed|peer-gone|timeout|frame>`.
fn rpc_garbage(args: &[String]) {
    let name: String = arg(args, 1, "name");
    for kind in [
        "random",
        "short",
        "magic",
        "version",
        "kind",
        "flags",
        "reserved",
        "length-long",
        "length-short",
        "crc",
        "response",
        "interleaved",
    ] {
        let mut ep = channel::connect(&name, &ChannelConfig::default())
            .unwrap_or_else(|e| fail(format!("connect: {e}")));
        // Control: the same connection answers a well-formed request.
        ep.send(&echo_request(1, b"hello"))
            .unwrap_or_else(|e| fail(format!("{kind}: send echo: {e}")));
        let echo = match ep.recv_timeout(Duration::from_secs(10)) {
            Ok(m) => match frame::decode(&m) {
                Ok((h, p)) if h.kind == Kind::Response && h.call_id == 1 && p == b"hello" => {
                    "ok".to_owned()
                }
                Ok((h, p)) => format!("unexpected-{:?}-{}-{}", h.kind, h.call_id, p.len()),
                Err(e) => format!("undecodable-{e}").replace(' ', "_"),
            },
            Err(e) => format!("{e}").replace(' ', "_"),
        };
        for g in garbage(kind) {
            if let Err(e) = ep.send(&g) {
                let e = e.to_string().replace(' ', "_");
                say(format!(
                    "garbage kind={kind} echo={echo} end=send-failed-{e}"
                ));
            }
        }
        let end = match ep.recv_timeout(Duration::from_secs(5)) {
            Ok(m) => match frame::decode(&m) {
                Ok((h, _)) => format!("frame-{:?}", h.kind),
                Err(_) => "undecodable-frame".to_owned(),
            },
            Err(RecvError::Closed) => "closed".to_owned(),
            Err(RecvError::PeerGone) => "peer-gone".to_owned(),
            Err(RecvError::TimedOut) => "timeout".to_owned(),
            Err(e) => format!("error-{e}").replace(' ', "_"),
        };
        say(format!("garbage kind={kind} echo={echo} end={end}"));
    }
    say("done");
}

/// Run as another user (the test sets uid, gid and `XDG_RUNTIME_DIR`). Tries to reach the
/// server and reports each outcome on its own line:
/// 1. `direct`: connects to the server's socket path itself (in the server user's 0700
///    runtime directory);
/// 2. `rpc`: `Client::connect(name)`, which looks in this user's own runtime directory;
/// 3. on `again` (once the test has linked the server's socket into this user's runtime
///    directory and opened its mode): `rpc-linked`, `Client::connect(name)` again, then
///    `raw`: a plain socket connection, reporting how many bytes of hello the server sends.
fn rpc_foreign(args: &[String]) {
    let name: String = arg(args, 1, "name");
    let path: String = arg(args, 2, "socket path");
    let one_line = |s: String| s.replace(['\n', ' '], "_");
    let direct = match std::os::unix::net::UnixStream::connect(&path) {
        Ok(_) => "connected".to_owned(),
        Err(e) => format!("{:?}", e.kind()),
    };
    say(format!(
        "direct uid={} result={direct}",
        shmrpc::lowlevel::sys::names::uid()
    ));
    let rt = rpc_runtime();
    let cfg = ClientConfig::default().with_reconnect_for(Duration::from_millis(200));
    let attempt = |label: &str| {
        let r = rt.block_on(Client::connect(&name, cfg.clone()));
        match r {
            Ok(_) => say(format!("{label} result=connected")),
            Err(e) => {
                // Reported as a caller sees it through `RpcError`: the code, and the
                // whole chain of causes as the message.
                let e = shmrpc::RpcError::from(e);
                say(format!(
                    "{label} code={:?} message={}",
                    e.code,
                    one_line(shmrpc_tests::error_chain(&e))
                ))
            }
        }
    };
    attempt("rpc");
    serve_stdin(|line| {
        if line != "again" {
            return true;
        }
        attempt("rpc-linked");
        // Raw: connect to the socket and read what the server sends a foreign uid.
        let sock = shmrpc::lowlevel::sys::names::runtime_dir()
            .map(|d| d.join(format!("{name}.sock")))
            .and_then(std::os::unix::net::UnixStream::connect);
        match sock {
            Err(e) => say(format!("raw connect={:?}", e.kind())),
            Ok(mut s) => {
                use std::io::Read;
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                let mut buf = [0u8; 64];
                match s.read(&mut buf) {
                    Ok(n) => say(format!("raw connect=ok read={n}")),
                    Err(e) => say(format!("raw connect=ok read-error={:?}", e.kind())),
                }
            }
        }
        false
    });
    say("done");
}

/// A server that breaks the protocol for a client to notice:
/// - `frame-version`: accepts one client, answers its first request with a frame of the
///   next frame version;
/// - `hello-version`: listens on the name's socket path and sends each client a hello of
///   the next handshake version (no descriptors).
///
/// Prints `ready`; leaves (removing its socket) on "exit" or end of stdin.
fn rpc_bad_server(args: &[String]) {
    let name: String = arg(args, 1, "name");
    let mode: String = arg(args, 2, "mode");
    match mode.as_str() {
        "frame-version" => {
            let l = bind(&name, ChannelConfig::default().with_capacity(64 * 1024));
            say("ready");
            let mut ep = accept(&l);
            drop(l);
            let (h, _) = {
                let m = ep
                    .recv_timeout(Duration::from_secs(10))
                    .unwrap_or_else(|e| fail(format!("recv request: {e}")));
                let (h, p) = frame::decode(&m).unwrap_or_else(|e| fail(format!("decode: {e}")));
                (h, p.to_vec())
            };
            let mut f = frame_bytes(Kind::Response, 0, h.method, h.call_id, b"from the future");
            f[4] = FRAME_VERSION + 1;
            fix_crc(&mut f);
            ep.send(&f)
                .unwrap_or_else(|e| fail(format!("send reply: {e}")));
            say("answered");
            wait_for_exit();
            drop(ep);
        }
        "hello-version" => {
            let path = shmrpc_tests::socket_file(&name);
            let l = std::os::unix::net::UnixListener::bind(&path)
                .unwrap_or_else(|e| fail(format!("bind {}: {e}", path.display())));
            l.set_nonblocking(true)
                .unwrap_or_else(|e| fail(format!("nonblocking: {e}")));
            say("ready");
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let s2 = stop.clone();
            std::thread::spawn(move || {
                wait_for_exit();
                s2.store(true, Ordering::SeqCst);
            });
            let mut hellos = 0;
            while !stop.load(Ordering::SeqCst) {
                match l.accept() {
                    Ok((mut s, _)) => {
                        use std::io::Write;
                        let mut hello = [0u8; 32];
                        hello[..8].copy_from_slice(b"SHMRPCH1");
                        let v = channel::HANDSHAKE_VERSION + 1;
                        hello[8..12].copy_from_slice(&v.to_le_bytes());
                        hello[12..16].copy_from_slice(&1u32.to_le_bytes());
                        hello[16..24].copy_from_slice(&65536u64.to_le_bytes());
                        hello[24..32].copy_from_slice(&65536u64.to_le_bytes());
                        let _ = s.write_all(&hello);
                        hellos += 1;
                        say(format!("sent hellos={hellos}"));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
            let _ = std::fs::remove_file(&path);
        }
        _ => fail(format!("unknown mode {mode}")),
    }
    say("done");
}

// ---------------------------------------------------------------------------------------
// A hostile client: holds the real segment of its RPC connection and writes into it.

/// This process's view of a connection's shared memory, as any peer holding the fds has it:
/// the memfd found through `/proc/self/fd`, and the rings at their offsets.
struct RawView {
    seg: Segment,
    /// The ring this client produces into (the server consumes it).
    tx_ring: usize,
    /// The ring this client consumes (the server produces into it).
    rx_ring: usize,
    cap: u64,
}

impl RawView {
    /// Finds the (only) shmrpc memfd this process holds.
    fn find() -> Self {
        for entry in std::fs::read_dir("/proc/self/fd").unwrap_or_else(|e| fail(e)) {
            let Ok(entry) = entry else { continue };
            let Ok(link) = std::fs::read_link(entry.path()) else {
                continue;
            };
            if !link.to_string_lossy().starts_with("/memfd:shmrpc") {
                continue;
            }
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(entry.path())
                .unwrap_or_else(|e| fail(format!("open memfd: {e}")));
            let seg = Segment::from_fd(file.into()).unwrap_or_else(|e| fail(e));
            let cap = seg
                .param(0)
                .unwrap_or_else(|| fail("no param 0"))
                .load(Ordering::Relaxed);
            // Ring 0 (server -> client) at 0, ring 1 (client -> server) after it.
            return Self {
                seg,
                tx_ring: ring::ring_size(cap as usize),
                rx_ring: 0,
                cap,
            };
        }
        fail("no shmrpc memfd among this process's fds")
    }

    #[allow(unsafe_code)]
    fn u64_at(&self, off: usize) -> &std::sync::atomic::AtomicU64 {
        // SAFETY: used for ring header and record-header words only, which the rings
        // access atomically.
        unsafe { self.seg.atomic_u64(off) }
            .unwrap_or_else(|| fail(format!("offset {off} out of the segment")))
    }

    #[allow(unsafe_code)]
    fn u32_at(&self, off: usize) -> &std::sync::atomic::AtomicU32 {
        // SAFETY: as in `u64_at`.
        unsafe { self.seg.atomic_u32(off) }
            .unwrap_or_else(|| fail(format!("offset {off} out of the segment")))
    }

    /// Offset of the record at `pos` of the ring at `ring`.
    fn record(&self, ring: usize, pos: u64) -> usize {
        ring + ring::RING_HEADER_SIZE + (pos & (self.cap - 1)) as usize
    }

    /// Publishes a record at the producer's next position by hand: `len` word, tag 0,
    /// `payload`, then the stamp the server's consumer waits for.
    #[allow(unsafe_code)]
    fn forge(&self, ep: &mut Endpoint, len_word: u32, payload: &[u8]) -> usize {
        let pos = ep.sender().producer().position();
        let key = self.u64_at(self.tx_ring + 16).load(Ordering::Relaxed);
        let rec = self.record(self.tx_ring, pos);
        // SAFETY: the bytes after our producer's position are not lent out (we hold the
        // endpoint mutably and no grant is alive) and the consumer does not read them before
        // the stamp below; this process is single-threaded here.
        unsafe { self.seg.write_bytes(rec + 16, payload) }
            .unwrap_or_else(|| fail("record out of the segment"));
        self.u32_at(rec + 8).store(len_word, Ordering::Relaxed);
        self.u32_at(rec + 12).store(0, Ordering::Relaxed);
        self.u64_at(rec).store(pos ^ key, Ordering::Release);
        ep.sender().producer().notify();
        rec
    }
}

/// What became of a hostile connection: `closed` (the server hung up on it), `answered`
/// (it answered the control request that followed), or what else happened.
fn hostile_end(ep: &mut Endpoint, control_id: u64) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return "timeout".into();
        }
        match ep.recv_timeout(left) {
            Ok(m) => match frame::decode(&m) {
                Ok((h, _)) if h.kind == Kind::Response && h.call_id == control_id => {
                    return "answered".into()
                }
                Ok(_) => continue, // a ping, or an answer to an earlier request
                Err(_) => return "undecodable".into(),
            },
            Err(RecvError::Closed) | Err(RecvError::PeerGone) => return "closed".into(),
            Err(RecvError::TimedOut) => return "timeout".into(),
            Err(e) => return format!("error-{e}").replace(' ', "_"),
        }
    }
}

/// Connects, proves the connection works with one echo, then attacks it in one way
/// (`mode`), and reports `hostile mode=.. echo=.. end=..`.
fn rpc_hostile(args: &[String]) {
    let name: String = arg(args, 1, "name");
    let modes = [
        "length-past-end",
        "length-huge",
        "bad-padding",
        "read-pos-beyond",
        "read-pos-backwards",
        "read-pos-misaligned",
        "lying-frame-length",
        "length-flip",
        "doorbell-flood",
        "never-consume",
    ];
    for mode in modes {
        let started = std::time::Instant::now();
        let mut ep = channel::connect(&name, &ChannelConfig::default())
            .unwrap_or_else(|e| fail(format!("connect: {e}")));
        ep.send(&echo_request(1, b"hello"))
            .unwrap_or_else(|e| fail(format!("{mode}: send echo: {e}")));
        let echo = hostile_end(&mut ep, 1);
        let view = RawView::find();
        let control = 2;
        match mode {
            "length-past-end" => {
                // A length that runs past the end of the ring's data area.
                view.forge(&mut ep, (view.cap as u32) - 8, &[]);
            }
            "length-huge" => {
                view.forge(&mut ep, 0x7fff_fff0, &[]);
            }
            "bad-padding" => {
                // Padding must reach the end of the ring; this one stops short.
                view.forge(&mut ep, 0x8000_0000 | 48, &[]);
            }
            "read-pos-beyond" | "read-pos-backwards" | "read-pos-misaligned" => {
                let body = vec![7u8; 1024];
                let answers = 2 * view.cap / 1024;
                if mode == "read-pos-backwards" {
                    // First honest traffic, more than the ring holds, so the server's
                    // producer has learned a read position above 0.
                    for i in 0..answers {
                        ep.send(&echo_request(10_000 + i, &body))
                            .unwrap_or_else(|e| fail(format!("{mode}: send: {e}")));
                        ep.recv_timeout(Duration::from_secs(10))
                            .unwrap_or_else(|e| fail(format!("{mode}: recv: {e}")));
                    }
                }
                // Our consumer position, which the server's producer trusts for room.
                let rp = view.u64_at(view.rx_ring + 256);
                let now = rp.load(Ordering::Acquire);
                let lie = match mode {
                    "read-pos-beyond" => now + (1 << 40),
                    "read-pos-backwards" => 0,
                    _ => now + 8,
                };
                rp.store(lie, Ordering::Release);
                // The server's producer consults our position only when its cached room
                // runs out: send more answers' worth than the ring holds, reading none.
                let mut sent = 0;
                let until = std::time::Instant::now() + Duration::from_secs(5);
                while sent < answers && std::time::Instant::now() < until {
                    match ep.try_send(&echo_request(100 + sent, &body)) {
                        Ok(()) => sent += 1,
                        Err(_) if !ep.sender().peer_alive() => break,
                        Err(_) => std::thread::sleep(Duration::from_millis(1)),
                    }
                }
                let _ = ep
                    .sender()
                    .send_timeout(&echo_request(control, b"control"), Duration::from_secs(1));
            }
            "lying-frame-length" => {
                // A well-formed record whose frame header claims more payload than follows.
                let mut f = echo_request(control, b"lying");
                f[12..16].copy_from_slice(&1000u32.to_le_bytes());
                view.forge(&mut ep, f.len() as u32, &f);
            }
            "length-flip" => {
                // Publish a valid request, then keep changing its length word while the
                // server may be reading it: whatever it reads must be checked, once.
                let f = echo_request(control, b"flip");
                let rec = view.forge(&mut ep, f.len() as u32, &f);
                let word = view.u32_at(rec + 8);
                for i in 0..200_000u32 {
                    let v = if i % 2 == 0 {
                        0x7fff_fff0
                    } else {
                        f.len() as u32
                    };
                    word.store(v, Ordering::Relaxed);
                }
            }
            "doorbell-flood" => {
                // Ring the server's doorbell (and futex) as fast as we can: claim, in the
                // waiting word of the ring it reads, that it sleeps in an unknown way (so
                // both are woken), and "notify" it, over and over.
                let word = view.u32_at(view.tx_ring + 384);
                let before = ep.sender().producer().wakes();
                let until = std::time::Instant::now() + Duration::from_millis(500);
                while std::time::Instant::now() < until {
                    for _ in 0..64 {
                        word.store(3, Ordering::Relaxed);
                        ep.sender().producer().notify();
                    }
                }
                let rings = ep.sender().producer().wakes() - before;
                say(format!("flooded writes={rings}"));
                let _ = ep.send(&echo_request(control, b"control"));
            }
            "never-consume" => {
                // Requests and more requests, answers never read: the server's ring to us
                // fills and that connection stalls; nobody else may notice.
                let body = vec![7u8; 1024];
                let mut sent = 0u64;
                let until = std::time::Instant::now() + Duration::from_millis(500);
                while std::time::Instant::now() < until {
                    match ep.try_send(&echo_request(100 + sent, &body)) {
                        Ok(()) => sent += 1,
                        Err(_) => std::thread::sleep(Duration::from_millis(1)),
                    }
                }
                say(format!("unread requests={sent}"));
                say(format!("hostile mode={mode} echo={echo} end=stalled"));
                continue;
            }
            _ => unreachable!(),
        }
        let end = hostile_end(&mut ep, control);
        let ms = started.elapsed().as_millis();
        say(format!("hostile mode={mode} echo={echo} end={end} ms={ms}"));
    }
    say("done");
}

/// What a process (often running as another user) can do to shmrpc's files. Prints one
/// line per probe: `probe what=<probe> result=<ok or the error's kind> message=<..>`.
fn perm_probe(args: &[String]) {
    let what: String = arg(args, 1, "probe");
    let path: String = arg(args, 2, "path or name");
    let report = |r: Result<String, String>| {
        let (result, message) = match r {
            Ok(m) => ("ok".to_owned(), m),
            Err(m) => ("err".to_owned(), m),
        };
        say(format!(
            "probe what={what} result={result} message={}",
            message.replace(' ', "_")
        ));
    };
    let kind = |e: std::io::Error| format!("{:?}:{e}", e.kind());
    match what.as_str() {
        // Open an existing file for reading and writing.
        "open" => report(
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map(|_| "opened".to_owned())
                .map_err(kind),
        ),
        // Put a file of our own where a victim will look for its segment.
        "squat-file" => {
            use std::os::unix::fs::PermissionsExt;
            let r = std::fs::write(&path, b"attacker").and_then(|()| {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666))
            });
            report(r.map(|()| "squatted".to_owned()).map_err(kind));
        }
        // Put a symlink there, to a file of the victim's.
        "squat-symlink" => {
            let target: String = arg(args, 3, "target");
            report(
                std::os::unix::fs::symlink(&target, &path)
                    .map(|()| "squatted".to_owned())
                    .map_err(kind),
            );
        }
        // Bind a listener (the runtime directory comes from the environment).
        "bind" => report(
            Listener::bind(&path, ChannelConfig::default())
                .map(|l| format!("bound_at_{}", l.path().display()))
                .map_err(|e| {
                    // The whole chain: the cause is in the source.
                    let mut m = e.to_string();
                    let mut src = std::error::Error::source(&e);
                    while let Some(s) = src {
                        m = format!("{m}: {s}");
                        src = s.source();
                    }
                    m
                }),
        ),
        other => fail(format!("unknown probe {other:?}")),
    }
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
fn chaos_client(args: &[String]) {
    let name: String = arg(args, 1, "name");
    let seed: u64 = arg(args, 2, "seed");
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
                None => match Client::connect(&name, cfg.clone()).await {
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
