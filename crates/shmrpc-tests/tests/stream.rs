//! A peer process streams sequence-numbered, checksummed messages of random sizes through a
//! 64 KiB ring; this process checks every one: nothing lost, duplicated, reordered or
//! corrupted, and the stream ends with the producer's close.
//!
//! Sizes run from 8 bytes to just under half the ring, so records wrap the ring with
//! padding records all the time. Records larger than half the ring have their own test
//! (`records_larger_than_half_the_ring_...`).
#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use shmrpc::channel::{self, ChannelConfig, Receiver, RecvError, TryRecvError};
use shmrpc_tests::{
    heavy, parse_wait, spawn_peer, with_watchdog, PeerCommand, SizeProfile, StreamChecker,
    TestNames,
};

const CAP: usize = 64 * 1024;
/// The largest payload whose record (header + padding) is at most half the ring.
const HALF: usize = CAP / 2 - 16;
/// The ring's largest payload.
const MAX: usize = CAP - 16;
/// How long the consumer waits for the next message before calling the stream stalled.
const STALL: Duration = Duration::from_secs(3);

#[derive(Clone, Copy)]
enum Reader {
    /// `recv_batch` (blocking).
    Batch,
    /// `try_recv_batch`, and `recv_timeout` when the ring is empty.
    TryBatch,
    /// `recv_async`, one message at a time.
    Async,
}

/// Runs one stream of `count` messages from a `peer stream` process; returns what the
/// checker saw.
fn stream(count: u64, wait: &str, profile: SizeProfile, reader: Reader) -> StreamChecker {
    let mut names = TestNames::new();
    let name = names.name("stream");
    let seed = 0x5eed ^ count;
    let mut peer = spawn_peer!(PeerCommand::Stream {
        name: name.clone(),
        wait: parse_wait(wait).unwrap(),
        cap: CAP,
        count,
        seed,
        profile,
    });
    peer.expect("ready", Duration::from_secs(10));
    let cfg = ChannelConfig::default().with_wait(parse_wait(wait).unwrap());
    let (tx, mut rx) = channel::connect(&name, &cfg).expect("connect").split();
    let mut check = StreamChecker::new(seed, profile);
    let start = Instant::now();
    match reader {
        Reader::Batch => read_batch(&mut rx, &mut check),
        Reader::TryBatch => read_try_batch(&mut rx, &mut check, count),
        Reader::Async => read_async(&mut rx, &mut check),
    }
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "{count} messages, {:.0} MB, {wait}: {secs:.2} s ({:.2} M msg/s, {:.2} GB/s)",
        check.bytes as f64 / 1e6,
        check.next as f64 / secs / 1e6,
        check.bytes as f64 / secs / 1e9,
    );
    assert_eq!(check.error, None, "after {} good messages", check.next);
    assert_eq!(check.next, count, "stream closed early");
    // The framing the ring documents (16-byte header, 16-byte alignment, a padding record
    // where a record would cross the end) predicts exactly where the stream ends.
    let (end, paddings) = expected_end(seed, profile, count);
    eprintln!("  {paddings} wrap-arounds with a padding record");
    assert_eq!(
        rx.consumer().position(),
        end,
        "consumer position after the stream"
    );
    if profile == (SizeProfile::Mixed { max: MAX }) {
        assert!(
            paddings > count / 1000,
            "only {paddings} wrap-arounds with padding"
        );
    }
    peer.expect("done", Duration::from_secs(10));
    drop((tx, rx));
    peer.assert_exits_ok(Duration::from_secs(10));
    names.assert_clean();
    check
}

/// Where a ring of `CAP` bytes stands after the stream, and how many padding records it
/// took, per the ring's documented framing.
fn expected_end(seed: u64, profile: SizeProfile, count: u64) -> (u64, u64) {
    let (mut pos, mut paddings) = (0u64, 0u64);
    for seq in 0..count {
        let rec = (16 + profile.len(seed, seq) as u64).next_multiple_of(16);
        let to_end = CAP as u64 - pos % CAP as u64;
        if rec > to_end {
            pos += to_end;
            paddings += 1;
        }
        pos += rec;
    }
    (pos, paddings)
}

fn read_batch(rx: &mut Receiver, check: &mut StreamChecker) {
    loop {
        match rx.recv_batch(256, |tag, p| check.accept(tag, p)) {
            Ok(_) if check.error.is_none() => {}
            Ok(_) => return,
            Err(RecvError::Closed) => return,
            Err(e) => panic!("recv_batch after {} messages: {e}", check.next),
        }
    }
}

fn read_try_batch(rx: &mut Receiver, check: &mut StreamChecker, count: u64) {
    while check.error.is_none() {
        match rx.try_recv_batch(256, |tag, p| check.accept(tag, p)) {
            Ok(_) => continue,
            Err(TryRecvError::Empty) => {}
            Err(TryRecvError::Closed) => return,
            Err(e) => panic!("try_recv_batch after {} messages: {e}", check.next),
        }
        let position = rx.consumer().position();
        match rx.recv_timeout(STALL) {
            Ok(m) => check.accept(m.tag(), &m),
            Err(RecvError::Closed) => return,
            Err(RecvError::TimedOut) => panic!(
                "stream stalled: nothing for {STALL:?} after {} of {count} messages \
                 (next one: {} bytes, ring position {})",
                check.next,
                check.next_len(),
                position
            ),
            Err(e) => panic!("recv_timeout after {} messages: {e}", check.next),
        }
    }
}

fn read_async(rx: &mut Receiver, check: &mut StreamChecker) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        while check.error.is_none() {
            match rx.recv_async().await {
                Ok(m) => check.accept(m.tag(), &m),
                Err(RecvError::Closed) => return,
                Err(e) => panic!("recv_async after {} messages: {e}", check.next),
            }
        }
    });
}

#[test]
fn ten_million_messages_spin_then_park() {
    let _g = heavy();
    with_watchdog(Duration::from_secs(120), || {
        stream(
            10_000_000,
            "stp",
            SizeProfile::Mixed { max: MAX },
            Reader::Batch,
        );
    });
}

#[test]
fn two_million_messages_park() {
    let _g = heavy();
    with_watchdog(Duration::from_secs(60), || {
        stream(
            2_000_000,
            "park",
            SizeProfile::Mixed { max: MAX },
            Reader::TryBatch,
        );
    });
}

#[test]
fn one_million_messages_async_consumer() {
    let _g = heavy();
    with_watchdog(Duration::from_secs(60), || {
        stream(
            1_000_000,
            "stp",
            SizeProfile::Mixed { max: MAX },
            Reader::Async,
        );
    });
}

/// Records of more than half the ring, up to `max_payload`, mixed with small ones. The
/// ring promises to carry any payload up to `max_payload` (larger ones are `TooLarge`), so
/// the stream must not stall whatever position the ring is at.
#[test]
fn records_larger_than_half_the_ring_cross_process() {
    let _g = heavy();
    with_watchdog(Duration::from_secs(60), || {
        stream(
            10_000,
            "stp",
            SizeProfile::Large {
                lo: HALF + 1,
                max: CAP - 16,
            },
            Reader::TryBatch,
        );
    });
}

/// The smallest reproduction of the stall above, in one process: on an EMPTY 64 KiB ring
/// whose position is in the middle, a record of more than half the ring used to be refused
/// as `Full` forever. Now the producer pads to the end on its own; the record fits as soon
/// as the consumer has passed the padding (one poll, which returns `Empty`).
#[test]
fn an_empty_ring_accepts_any_record_up_to_max_payload() {
    let (mut p, mut c) = shmrpc::lowlevel::ring::channel(CAP).unwrap();
    let max = p.max_payload();
    for (first, big) in [(HALF, HALF + 1), (HALF, 40_000), (HALF, max), (1000, max)] {
        // Move both ends to some position, leaving the ring empty.
        p.try_push(0, &vec![1u8; first]).unwrap();
        c.try_peek().unwrap().release();
        assert!(matches!(
            c.try_peek(),
            Err(shmrpc::lowlevel::ring::PeekError::Empty)
        ));
        let at = p.position() % CAP as u64;
        let mut r = p.try_push(7, &vec![2u8; big]);
        if r == Err(shmrpc::lowlevel::ring::ReserveError::Full) {
            // Only the padding went in; the consumer skips it and releases its space.
            assert!(matches!(
                c.try_peek(),
                Err(shmrpc::lowlevel::ring::PeekError::Empty)
            ));
            r = p.try_push(7, &vec![2u8; big]);
        }
        assert_eq!(
            r,
            Ok(()),
            "a {big}-byte record (max_payload {max}) on an empty ring at offset {at}"
        );
        let g = c.try_peek().unwrap();
        assert_eq!((g.tag(), g.len()), (7, big));
    }
}
