//! Roles that exercise segments, rings and channels directly.

use std::sync::Arc;

use shmrpc::channel::{ChannelConfig, Endpoint, RecvError, SendError};
use shmrpc::lowlevel::ring::{self, End};
use shmrpc::lowlevel::sys::Segment;
use shmrpc_tests::{
    fill_stream_message, transform, ServeMode, SizeProfile, RING_SEGMENT_KIND, RING_WRITER_PROFILE,
};

use crate::{accept, bind, fail, say, serve_stdin, wait_for_exit};

/// Binds a listener, prints `ready path=<socket path>` and holds it.
pub(crate) fn listen(name: &str) {
    let l = bind(name, ChannelConfig::default());
    say(format!("ready path={}", l.path().display()));
    wait_for_exit();
}

/// Accepts one client (`accepted`) and never reads from it, until told to exit.
pub(crate) fn sink(name: &str, cfg: ChannelConfig) {
    let l = bind(name, cfg);
    say("ready");
    let ep = accept(&l);
    drop(l); // one client only: the socket file goes now, even if we are killed later
    say("accepted");
    wait_for_exit();
    drop(ep);
}

/// Answers each request with `transform(request)` until the client closes; serves `conns`
/// connections one after the other, then prints `done served=<total>`.
pub(crate) fn echo_server(name: &str, mode: ServeMode, cfg: ChannelConfig, conns: usize) {
    let l = bind(name, cfg);
    say("ready");
    let rt = (mode == ServeMode::Async).then(|| {
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
pub(crate) fn ring_writer(name: &str, cap: usize, n: u64, seed: u64) {
    let seg = Segment::create_with(name, ring::ring_size(cap), RING_SEGMENT_KIND, |s| {
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
pub(crate) fn ring_claim(name: &str, cap: usize, held: End) {
    let seg = Arc::new(Segment::open(name).unwrap_or_else(|e| fail(format!("open: {e}"))));
    let attach = |end: &str| match end {
        "producer" => ring::producer(&seg, 0, cap).map(drop),
        "consumer" => ring::consumer(&seg, 0, cap).map(drop),
        _ => fail(format!("bad end {end:?}")),
    };
    let _held: Box<dyn Send> = match held {
        End::Producer => ring::producer(&seg, 0, cap).map(|p| Box::new(p) as _),
        End::Consumer => ring::consumer(&seg, 0, cap).map(|c| Box::new(c) as _),
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
pub(crate) fn race_open(name: &str, size: usize) {
    say("ready");
    serve_stdin(|line| line != "go");
    let me = u64::from(std::process::id());
    let (seg, created) = Segment::open_or_create_with(name, size, RING_SEGMENT_KIND, |s| {
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
pub(crate) fn hold_segment(name: &str, size: usize) {
    let seg = Segment::create(name, size).unwrap_or_else(|e| fail(format!("create: {e}")));
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
pub(crate) fn stream(name: &str, cfg: ChannelConfig, count: u64, seed: u64, profile: SizeProfile) {
    let l = bind(name, cfg);
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
pub(crate) fn flood(name: &str, cfg: ChannelConfig) {
    let l = bind(name, cfg);
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
