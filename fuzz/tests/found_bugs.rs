//! Library bugs the fuzzers found, as plain tests of the library API (stable Rust:
//! `cargo test --test found_bugs` in fuzz/). The fuzz input that found each is kept under
//! artifacts-found/ and replayed from corpus/ as a regression entry. See README.md, "Found".

use std::sync::Arc;

use shmrpc::lowlevel::frame::{
    FrameHeader, Kind, Reassembler, ReassemblyError, FLAG_CONTINUES, FLAG_MORE,
};
use shmrpc::lowlevel::ring::{self, ring_size, PeekError, ReserveError};
use shmrpc::lowlevel::sys::Segment;

const CAP: usize = 256;

/// A ring whose header says `read_pos = write_pos = pos`, as a peer that owns the segment
/// can write before we attach (the positions are otherwise valid: equal and 16-aligned).
fn ring_at(pos: u64) -> Arc<Segment> {
    let seg = Arc::new(Segment::anonymous(ring_size(CAP), 0, |_| Ok(())).unwrap());
    ring::init(&seg, 0, CAP).unwrap();
    // SAFETY: nothing is attached to the ring yet and this thread is its only user.
    unsafe {
        seg.write_bytes(128, &pos.to_le_bytes()).unwrap(); // write_pos
        seg.write_bytes(256, &pos.to_le_bytes()).unwrap(); // read_pos
    }
    seg
}

/// Found by `ring_reader` (artifacts-found/ring_reader/positions_near_u64_max): positions
/// near `u64::MAX` made the producer's and consumer's position arithmetic overflow: with
/// overflow checks (debug builds, the workspace's test profile, cargo-fuzz) a panic in the
/// attaching process, without them (release) a wrap and a false `Corrupt` a few records
/// later. Fixed in 3b55c3c: attaching refuses positions above `ring::MAX_POSITION` (2^62).
/// Wanted (and checked here): refused at attach, or the ring works across; never a panic.
#[test]
fn positions_near_u64_max_neither_panic_nor_break_the_ring() {
    let seg = ring_at(u64::MAX - 15);
    let attached =
        ring::producer(&seg, 0, CAP).and_then(|p| Ok((p, ring::consumer(&seg, 0, CAP)?)));
    let Ok((mut p, mut c)) = attached else {
        return; // refused at attach: fine
    };
    // Two laps of the ring across the wrap, records checked.
    for i in 0..(4 * CAP / 64) as u32 {
        let payload = [i as u8; 40];
        match p.try_push(i, &payload) {
            Ok(()) => {}
            Err(ReserveError::Corrupt(e)) => {
                panic!("record {i}: false corruption after the wrap: {e}")
            }
            Err(e) => panic!("record {i}: {e}"),
        }
        let g = c.try_peek().expect("the record just pushed");
        assert_eq!((g.tag(), &*g), (i, &payload[..]));
    }
    assert_eq!(c.try_peek().err(), Some(PeekError::Empty));
}

/// Found by `frame_reassemble`
/// (artifacts-found/frame_reassemble/too_large_whole_between_fragments): a whole message
/// over the maximum, arriving between two fragments of another (which frame version 3
/// allows), reset the reassembler, dropping the message in progress. Wanted: the whole
/// one is refused, the one in progress goes on.
#[test]
fn a_whole_message_too_large_between_fragments_leaves_the_long_one_alone() {
    let mut r = Reassembler::new(8);
    let h = |flags, call_id| FrameHeader {
        kind: Kind::StreamItem,
        flags,
        method: 1,
        call_id,
        len: 0,
    };
    assert_eq!(r.push(&h(FLAG_MORE, 0), b"abc").unwrap(), None);
    assert!(matches!(
        r.push(&h(0, 5), b"far too long"),
        Err(ReassemblyError::TooLarge { call_id: 5, .. })
    ));
    // Another fragmented message may still not start ...
    assert!(matches!(
        r.push(&h(FLAG_MORE, 1), b"x"),
        Err(ReassemblyError::Interleaved {
            expected: 0,
            got: 1
        })
    ));
    // ... and, that refused too, a message in progress is whole when its last part comes.
    assert_eq!(r.push(&h(FLAG_MORE, 0), b"abc").unwrap(), None);
    assert!(r.push(&h(0, 6), b"whole").unwrap().is_some());
    let (got, body) = r.push(&h(FLAG_CONTINUES, 0), b"def").unwrap().unwrap();
    assert_eq!((got.call_id, &body[..]), (0, &b"abcdef"[..]));
}
