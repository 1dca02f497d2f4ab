//! Loom models of the ring's publish/consume, park/wake and close protocols, run against
//! the real ring code (the crate swaps its atomics for loom's under `--cfg shmrpc_loom`).
//!
//! Run with:
//!
//! ```text
//! RUSTFLAGS="--cfg shmrpc_loom" CARGO_TARGET_DIR=target/loom \
//!     cargo test -p shmrpc --test loom_ring --release
//! ```
//!
//! What each model would catch:
//! - `publish_consume_*`: the record header word (length, tag) is stored Relaxed before the
//!   Release store of the stamp and loaded Relaxed after the Acquire load of the stamp.
//!   Weaken either side and loom lets the consumer see the new stamp with the old header
//!   word (zero, or the previous lap's record), so the length/tag assertions fail.
//! - `park_wake_*`: the Dekker handshake of `ring::wait` (flag store; SeqCst fence; re-check
//!   vs. publish; SeqCst fence; flag load). Drop either fence and loom finds the schedule
//!   where the waiter misses the record and the notifier misses the flag: the waiter then
//!   "sleeps" forever and loom reports the livelock (or a deadlock) as a failure.
//! - `park_wake_wrap_*`: a record that must wrap needs the consumer to skip (and release)
//!   the padding first: the padding must wake a sleeping consumer, skipping it must release
//!   its space and wake the sleeping producer, and the producer's wait condition must not
//!   ask for room the consumer cannot free before the padding exists.
//! - `close_*`: the Release `fetch_or` of the close flag against the consumer's Acquire
//!   load and its re-check of the stamp: `Closed` must never be reported while a record
//!   published before the close is unread.
//!
//! - `claim_*`: the attach claim's compare-and-swap: two threads racing to attach the
//!   producer are never both attached, a refused one is told `AlreadyAttached`, and a
//!   detached producer's claim is free again for the next one.
//!
//! Each of those weakenings was applied to a scratch copy of the library and made the
//! models named above fail. What loom cannot see here: payload bytes are a plain buffer
//! (not `loom::cell::UnsafeCell`), and loom does not model a load reading a later store, so
//! weakening the `read_pos` Release/Acquire pair (which keeps the consumer's reads of a
//! record before the producer's reuse of its space) goes unnoticed by these models.
#![cfg(shmrpc_loom)]

use loom::thread;
use shmrpc::lowlevel::ring::{
    self, AttachError, Consumer, End, PeekError, Producer, ReserveError, Spinner, WaitStrategy,
};

/// Capacity of every model ring: the smallest allowed, so that three records wrap.
const CAP: usize = 128;

/// Payload lengths of the publish/consume models. Records take 16 + round_up(len, 16)
/// bytes: 48, 48, then 48 again, which does not fit in the 32 bytes left before the end
/// of a 128-byte area, so the producer writes a 32-byte padding record and wraps.
const LENS: [usize; 3] = [32, 20, 25];

/// Runs `f` under loom, exhaustively (`bound: None`) or with a preemption bound, and checks
/// that loom really explored more than one interleaving. Each model finishes in seconds.
fn model(bound: Option<usize>, f: impl Fn() + Sync + Send + 'static) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let runs = Arc::new(AtomicUsize::new(0));
    let counter = runs.clone();
    let mut b = loom::model::Builder::new();
    b.preemption_bound = bound;
    b.check(move || {
        counter.fetch_add(1, Ordering::Relaxed);
        f();
    });
    let n = runs.load(Ordering::Relaxed);
    eprintln!("explored {n} interleavings (preemption bound {bound:?})");
    assert!(n > 1, "loom explored only {n} interleaving(s)");
}

fn payload(seq: u32, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (seq as u8).wrapping_mul(31) ^ i as u8)
        .collect()
}

/// Pushes `tag` with `len` bytes, yielding to the consumer while the ring is full.
fn push_spinning(p: &mut Producer, tag: u32, len: usize) {
    let data = payload(tag, len);
    loop {
        match p.try_push(tag, &data) {
            Ok(()) => return,
            Err(ReserveError::Full) => thread::yield_now(),
            Err(e) => panic!("push {tag}: {e}"),
        }
    }
}

fn producer_thread(mut p: Producer) -> thread::JoinHandle<Producer> {
    thread::spawn(move || {
        for (seq, &len) in LENS.iter().enumerate() {
            push_spinning(&mut p, seq as u32, len);
        }
        p
    })
}

/// Positions after the three records: 48 + 48 + 32 (padding) + 48.
const END_POS: u64 = 176;

#[test]
fn publish_consume_wraps_with_padding() {
    model(None, || {
        let (p, mut c) = ring::channel(CAP);
        let prod = producer_thread(p);
        let mut next = 0u32;
        while (next as usize) < LENS.len() {
            match c.try_peek() {
                Ok(g) => {
                    assert_eq!(g.tag(), next, "records out of order");
                    assert_eq!(g.len(), LENS[next as usize], "length word of record {next}");
                    assert_eq!(&g[..], &payload(next, LENS[next as usize])[..]);
                    next += 1;
                }
                Err(PeekError::Empty) => thread::yield_now(),
                Err(e) => panic!("peek: {e}"),
            }
        }
        assert_eq!(c.position(), END_POS);
        let p = prod.join().unwrap();
        assert_eq!(p.position(), END_POS);
        assert_eq!(c.try_peek().unwrap_err(), PeekError::Empty);
        p.detach();
        c.detach();
    });
}

#[test]
fn publish_consume_batched() {
    model(None, || {
        let (p, mut c) = ring::channel(CAP);
        let prod = producer_thread(p);
        let mut next = 0u32;
        while (next as usize) < LENS.len() {
            let r = c.try_read_batch(8, |tag, data| {
                assert_eq!(tag, next, "records out of order");
                assert_eq!(
                    data.len(),
                    LENS[next as usize],
                    "length word of record {next}"
                );
                assert_eq!(data, &payload(next, LENS[next as usize])[..]);
                next += 1;
            });
            match r {
                Ok(n) => assert!(n >= 1),
                Err(PeekError::Empty) => thread::yield_now(),
                Err(e) => panic!("batch: {e}"),
            }
        }
        assert_eq!(c.position(), END_POS);
        let p = prod.join().unwrap();
        p.detach();
        c.detach();
    });
}

/// The consumer parks on an empty ring; the producer's publish must wake it.
#[test]
fn park_wake_consumer() {
    model(None, || {
        let (mut p, mut c) = ring::channel(CAP);
        let cons = thread::spawn(move || {
            c.wait(&mut Spinner::new(WaitStrategy::Park), None, || true)
                .expect("no deadline, peer alive");
            let g = c.try_peek().expect("woken without a record");
            assert_eq!(g.tag(), 7);
            assert_eq!(&g[..], b"hi");
            drop(g);
            c
        });
        p.try_push(7, b"hi").unwrap();
        let c = cons.join().unwrap();
        p.detach();
        c.detach();
    });
}

/// The producer parks on a full ring; the consumer's release must wake it.
#[test]
fn park_wake_producer() {
    model(None, || {
        let (mut p, mut c) = ring::channel(CAP);
        let max = p.max_payload();
        p.try_push(1, &payload(1, max)).unwrap();
        assert!(matches!(p.try_reserve(max), Err(ReserveError::Full)));
        let prod = thread::spawn(move || {
            p.wait_for_space(max, &mut Spinner::new(WaitStrategy::Park), None, || true)
                .expect("no deadline, peer alive");
            p.try_push(2, &payload(2, max))
                .expect("woken without space");
            p
        });
        let g = c.try_peek().unwrap();
        assert_eq!(g.tag(), 1);
        drop(g); // releases the space and wakes the producer
        let p = prod.join().unwrap();
        let g = c.try_peek().unwrap();
        assert_eq!((g.tag(), g.len()), (2, max));
        drop(g);
        p.detach();
        c.detach();
    });
}

/// Pushes `tag` with `len` bytes, parking (per the wait protocol) while the ring is full.
fn push_parking(p: &mut Producer, tag: u32, len: usize) {
    let mut spinner = Spinner::new(WaitStrategy::Park);
    let data = payload(tag, len);
    loop {
        match p.try_push(tag, &data) {
            Ok(()) => return,
            Err(ReserveError::Full) => p
                .wait_for_space(len, &mut spinner, None, || true)
                .expect("no deadline"),
            Err(e) => panic!("push {tag}: {e}"),
        }
    }
}

/// Receives records, parking while the ring is empty, until `want` (tag, length) pairs
/// have arrived in order.
fn recv_parking(c: &mut Consumer, want: &[(u32, usize)]) {
    let mut spinner = Spinner::new(WaitStrategy::Park);
    let mut got = 0;
    while got < want.len() {
        c.wait(&mut spinner, None, || true).expect("no deadline");
        match c.try_peek() {
            Ok(g) => {
                assert_eq!((g.tag(), g.len()), want[got], "record {got}");
                got += 1;
            }
            Err(PeekError::Empty) => {} // skipped padding: wait again
            Err(e) => panic!("peek: {e}"),
        }
    }
}

/// A record that must wrap on a drained ring: the producer writes the padding, finds the
/// record does not fit yet, and parks; the consumer, parked on the empty ring, must be woken
/// by the padding, skip and release it, and wake the producer, which then publishes.
#[test]
fn park_wake_wrap_on_drained_ring() {
    model(Some(5), || {
        let (mut p, mut c) = ring::channel(CAP);
        p.try_push(0, &payload(0, 48)).unwrap(); // 64 bytes: producer at offset 64
        drop(c.try_peek().unwrap());
        // 80 bytes with its header: more than the 64 before the end and the 64 after the
        // start, so it fits only once the padding has been skipped.
        let prod = thread::spawn(move || {
            push_parking(&mut p, 1, 64);
            p
        });
        recv_parking(&mut c, &[(1, 64)]);
        prod.join().unwrap().detach();
        c.detach();
    });
}

/// A record that must wrap while the previous lap is still unread: even the padding does
/// not fit at first. The producer's wait condition must ask for the padding's room only
/// (asking for padding and record together waits for space the consumer can never free
/// before the padding exists).
#[test]
fn park_wake_wrap_behind_unread_records() {
    model(Some(3), || {
        let (mut p, mut c) = ring::channel(CAP);
        p.try_push(0, &payload(0, 48)).unwrap(); // [0, 64)
        p.try_push(1, &payload(1, 48)).unwrap(); // [64, 128)
        drop(c.try_peek().unwrap()); // read 64
        p.try_push(2, &payload(2, 32)).unwrap(); // [128, 176): offset 0..48
                                                 // 96 bytes with its header; 80 left before the end: padding [176, 256) needs
                                                 // record 1 read, the record [256, 352) needs record 2 and the padding read.
        let prod = thread::spawn(move || {
            push_parking(&mut p, 3, 80);
            p
        });
        recv_parking(&mut c, &[(1, 48), (2, 32), (3, 80)]);
        prod.join().unwrap().detach();
        c.detach();
    });
}

/// Parked consumer and a producer that publishes then closes: the consumer must see the
/// record, then `Closed`, and never sleep through either.
#[test]
fn park_wake_then_close() {
    model(None, || {
        let (mut p, mut c) = ring::channel(CAP);
        let cons = thread::spawn(move || {
            let mut got = Vec::new();
            let mut spinner = Spinner::new(WaitStrategy::Park);
            loop {
                c.wait(&mut spinner, None, || true).expect("no deadline");
                match c.try_peek() {
                    Ok(g) => got.push(g.tag()),
                    Err(PeekError::Closed) => break,
                    Err(PeekError::Empty) => {}
                    Err(e) => panic!("peek: {e}"),
                }
            }
            assert_eq!(got, [5], "Closed before the record was read");
            c
        });
        p.try_push(5, b"last").unwrap();
        drop(p); // closes
        let c = cons.join().unwrap();
        c.detach();
    });
}

/// Drains `c` with `try_peek`, yielding on `Empty`, until `Closed`; returns the tags seen.
fn drain_until_closed(c: &mut Consumer) -> Vec<u32> {
    let mut got = Vec::new();
    loop {
        match c.try_peek() {
            Ok(g) => {
                assert_eq!(g.len(), LENS[g.tag() as usize]);
                got.push(g.tag());
            }
            Err(PeekError::Empty) => thread::yield_now(),
            Err(PeekError::Closed) => return got,
            Err(e) => panic!("peek: {e}"),
        }
    }
}

#[test]
fn close_after_records_drains_first() {
    model(None, || {
        let (mut p, mut c) = ring::channel(CAP);
        let prod = thread::spawn(move || {
            push_spinning(&mut p, 0, LENS[0]);
            push_spinning(&mut p, 1, LENS[1]);
            drop(p); // closes the ring
        });
        let got = drain_until_closed(&mut c);
        assert_eq!(got, [0, 1], "Closed seen before every record was read");
        prod.join().unwrap();
        // Closed is sticky.
        assert_eq!(c.try_peek().unwrap_err(), PeekError::Closed);
        c.detach();
    });
}

/// Close when the last record needed a wrap (padding record, then the record, then close).
#[test]
fn close_after_wrap_drains_first() {
    model(Some(4), || {
        let (p, mut c) = ring::channel(CAP);
        let prod = producer_thread(p);
        let closer = thread::spawn(move || {
            let p = prod.join().unwrap();
            drop(p);
        });
        let got = drain_until_closed(&mut c);
        assert_eq!(got, [0, 1, 2], "Closed seen before every record was read");
        closer.join().unwrap();
        c.detach();
    });
}

/// Two threads race to attach the producer (each pushes one record, then detaches): they
/// are never attached at once, a loser is refused with `AlreadyAttached`, and every
/// winner's record arrives.
#[test]
fn claim_one_producer_at_a_time() {
    use loom::sync::atomic::{AtomicUsize, Ordering};
    use loom::sync::Arc;
    model(None, || {
        let ring = Arc::new(ring::HeapRing::new(CAP));
        let inside = Arc::new(AtomicUsize::new(0));
        let attempt = |ring: &ring::HeapRing, inside: &AtomicUsize, tag: u32| match ring.producer()
        {
            Ok(mut p) => {
                assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0, "two producers");
                p.try_push(tag, &[tag as u8; 8]).expect("room");
                inside.fetch_sub(1, Ordering::SeqCst);
                p.detach();
                true
            }
            Err(AttachError::AlreadyAttached {
                end: End::Producer, ..
            }) => false,
            Err(e) => panic!("attach: {e}"),
        };
        let (r2, i2) = (ring.clone(), inside.clone());
        let t = thread::spawn(move || attempt(&r2, &i2, 2));
        let mine = attempt(&ring, &inside, 1);
        let theirs = t.join().unwrap();
        assert!(mine || theirs, "both refused: a claim was never released");
        let mut c = ring.consumer().expect("consumer");
        let mut tags = Vec::new();
        let _ = c.try_read_batch(4, |tag, _| tags.push(tag));
        tags.sort_unstable();
        let want: Vec<u32> = [(mine, 1), (theirs, 2)]
            .iter()
            .filter(|w| w.0)
            .map(|w| w.1)
            .collect();
        assert_eq!(tags, want);
        ring.producer().expect("free after both detached").detach();
        c.detach();
    });
}
