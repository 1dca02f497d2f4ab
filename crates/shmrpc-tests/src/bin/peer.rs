//! The helper process the cross-process tests spawn. One binary, one subcommand per role:
//!
//! ```text
//! peer echo-server <name> <blocking|async> <wait> <conns> <cap>
//! peer ring-writer <name> <cap> <n> <seed>        (stdin: "more <k>", "exit")
//! peer race-open <name> <size>                    (stdin: "go", then "exit")
//! peer hold-segment <name> <size>
//! peer listen <name>
//! peer stream <name> <wait> <cap> <count> <seed> <profile>
//! peer flood <name> <wait> <cap>
//! peer sink <name> <wait> <cap>
//! ```
//!
//! Each prints `ready ...` on stdout once set up, then does its job. The one-client
//! listeners (`stream`, `flood`, `sink`) drop their `Listener` right after accepting, so a
//! peer killed later leaves no socket file behind. Peers that stay around wait for `exit`
//! (or end of file) on stdin, so they also go away when the test process dies. A lifetime
//! limit ends a forgotten peer.
#![forbid(unsafe_code)]

use std::io::BufRead;
use std::process::exit;
use std::sync::Arc;
use std::time::Duration;

use shmrpc::channel::{ChannelConfig, Endpoint, Listener, RecvError, SendError};
use shmrpc::ring;
use shmrpc::sys::Segment;
use shmrpc_tests::{
    fill_stream_message, parse_wait, transform, SizeProfile, RING_SEGMENT_KIND, RING_WRITER_PROFILE,
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

/// Waits for `go`, then races `open_or_create` on `name`. The creator's initialiser stores
/// its pid at offset 0; everyone reports what it finds there.
fn race_open(args: &[String]) {
    let name: String = arg(args, 1, "name");
    let size: usize = arg(args, 2, "size");
    say("ready");
    serve_stdin(|line| line != "go");
    let me = u64::from(std::process::id());
    let (seg, created) = Segment::open_or_create_with(&name, size, RING_SEGMENT_KIND, |s| {
        s.atomic_u64(0)
            .ok_or("segment too small")?
            .store(me, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    })
    .unwrap_or_else(|e| fail(format!("open_or_create {name}: {e}")));
    let stamp = seg
        .atomic_u64(0)
        .map(|a| a.load(std::sync::atomic::Ordering::Acquire))
        .unwrap_or(0);
    say(format!(
        "result created={created} stamp={stamp} unlinks={}",
        seg.unlinks_on_drop()
    ));
    wait_for_exit();
}

/// Creates a named segment, stamps it, and holds it until told to exit (or killed).
fn hold_segment(args: &[String]) {
    let name: String = arg(args, 1, "name");
    let size: usize = arg(args, 2, "size");
    let seg = Segment::create(&name, size).unwrap_or_else(|e| fail(format!("create: {e}")));
    let me = u64::from(std::process::id());
    seg.atomic_u64(0)
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
