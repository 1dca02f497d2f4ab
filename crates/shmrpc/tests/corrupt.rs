//! A hostile peer writes bad positions, lengths, padding records and stamps into a live
//! ring: the victim gets `Corrupt` (or `Empty` for a record that never became valid) —
//! never a panic, a hang, or a read or write outside the data area.
//!
//! Rings live in NAMED segments (`Segment::create_with` + `ring::init`); a second handle to
//! the same name (`Segment::open`) plays the peer and writes the documented offsets. The
//! channel-level cases reach the anonymous segment of a `channel::pair` the way another
//! process could: by opening its memfd through `/proc/self/fd`.
//!
//! Run under the default test profile: the library is built with debug assertions, which
//! check every offset the ring derives against the data area.
#![cfg(not(shmrpc_loom))]
// Raw access to ring memory (playing the hostile peer) and the take-over are `unsafe`: each
// use is allowed where it happens, with what makes it sound.
#![deny(unsafe_code)]

use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use shmrpc::channel::{self, ChannelConfig, RecvError, SendError, WaitStrategy};
use shmrpc::lowlevel::ring::{
    self, ring_size, AttachError, Consumer, CorruptError, PeekError, Producer, ReserveError,
    MAX_POSITION, RING_HEADER_SIZE, RING_MAGIC, RING_VERSION,
};
use shmrpc::lowlevel::sys::Segment;

// Offsets in a ring (from the ring's start), as documented in `ring`.
const MAGIC: usize = 0;
const VERSION: usize = 4;
const CAPACITY: usize = 8;
const KEY: usize = 16;
const WRITE_POS: usize = 128;
const READ_POS: usize = 256;
const CONSUMER_WAITING: usize = 384;
const CLOSED: usize = 392;
const PRODUCER_CLAIM: usize = 400;
const CONSUMER_CLAIM: usize = 408;
const DATA: usize = RING_HEADER_SIZE;
const PAD_FLAG: u32 = 1 << 31;

/// A ring in a named segment, both ends attached, and a second handle for the peer.
struct Fixture {
    seg: Arc<Segment>,
    hostile: Segment,
    cap: usize,
}

impl Fixture {
    fn new(case: &str, cap: usize) -> Self {
        let name = format!("corrupt-{}-{case}", std::process::id());
        let seg = Segment::create_with(&name, ring_size(cap), 0, |s| {
            ring::init(s, 0, cap).map_err(|e| e.to_string())
        })
        .expect("create segment");
        let hostile = Segment::open(&name).expect("open the same segment again");
        Self {
            seg: Arc::new(seg),
            hostile,
            cap,
        }
    }

    fn ends(&self) -> (Producer, Consumer) {
        (
            ring::producer(&self.seg, 0, self.cap).expect("producer"),
            ring::consumer(&self.seg, 0, self.cap).expect("consumer"),
        )
    }

    #[allow(unsafe_code)]
    fn u64_at(&self, off: usize) -> &std::sync::atomic::AtomicU64 {
        // SAFETY: the tests point this at ring header words and record-header words (stamp,
        // length/tag), which the ring only ever accesses atomically, never lends out.
        unsafe { self.hostile.atomic_u64(off) }.expect("in bounds")
    }

    #[allow(unsafe_code)]
    fn u32_at(&self, off: usize) -> &std::sync::atomic::AtomicU32 {
        // SAFETY: as in `u64_at`.
        unsafe { self.hostile.atomic_u32(off) }.expect("in bounds")
    }

    /// Writes `bytes` at ring offset `off`, anywhere, as the peer could.
    #[allow(unsafe_code)]
    fn scribble(&self, off: usize, bytes: &[u8]) {
        // SAFETY: the tests are single-threaded and call this while no read or write grant
        // is alive (each grant is dropped before the next attack), so no slice of this
        // process covers the bytes; the ring's atomic words are not accessed meanwhile.
        unsafe { self.hostile.write_bytes(off, bytes) }.expect("in bounds");
    }

    fn set_read_pos(&self, v: u64) {
        self.u64_at(READ_POS).store(v, Ordering::Release);
    }

    /// The length word of the record at data offset `off`.
    fn set_len(&self, off: usize, len: u32) {
        self.u32_at(DATA + off + 8).store(len, Ordering::Release);
    }

    fn set_stamp(&self, off: usize, stamp: u64) {
        self.u64_at(DATA + off).store(stamp, Ordering::Release);
    }

    fn key(&self) -> u64 {
        self.u64_at(KEY).load(Ordering::Acquire)
    }
}

/// Pushes `len`-byte records until `Full`; returns how many went in.
fn fill(p: &mut Producer, len: usize) -> usize {
    let mut n = 0;
    loop {
        match p.try_push(n as u32, &vec![n as u8; len]) {
            Ok(()) => n += 1,
            Err(ReserveError::Full) => return n,
            Err(e) => panic!("fill: {e}"),
        }
    }
}

fn corrupt_reserve(p: &mut Producer) -> CorruptError {
    match p.try_reserve(32) {
        Err(ReserveError::Corrupt(c)) => c,
        Err(e) => panic!("expected Corrupt, got {e:?}"),
        Ok(_) => panic!("expected Corrupt, got a grant"),
    }
}

fn corrupt_peek(c: &mut Consumer) -> CorruptError {
    match c.try_peek() {
        Err(PeekError::Corrupt(e)) => e,
        Err(e) => panic!("expected Corrupt, got {e:?}"),
        Ok(g) => panic!("expected Corrupt, got a record of {} bytes", g.len()),
    }
}

// ---------------------------------------------------------------------------------------
// The producer validates read_pos.

#[test]
fn read_pos_beyond_write_pos_is_corrupt() {
    let f = Fixture::new("rp-beyond", 256);
    let (mut p, _c) = f.ends();
    assert_eq!(fill(&mut p, 32), 5); // 5 * 48 = 240 bytes; the 6th would need to wrap
    let written = p.position(); // 240, or 256 with the padding the 6th attempt left
    assert!(written == 240 || written == 256, "{written}");
    f.set_read_pos(written + 16);
    assert_eq!(
        corrupt_reserve(&mut p),
        CorruptError::ReadPosition {
            read: written + 16,
            released: 0,
            written
        }
    );
    // Sticky: the bad value is never adopted.
    assert!(matches!(p.try_reserve(32), Err(ReserveError::Corrupt(_))));
}

#[test]
fn read_pos_moving_backwards_is_corrupt() {
    let f = Fixture::new("rp-back", 256);
    let (mut p, mut c) = f.ends();
    fill(&mut p, 32);
    drop(c.try_peek().unwrap());
    drop(c.try_peek().unwrap()); // read_pos = 96
    fill(&mut p, 32); // reloads read_pos (96) when full
    f.set_read_pos(48);
    assert_eq!(
        corrupt_reserve(&mut p),
        CorruptError::ReadPosition {
            read: 48,
            released: 96,
            written: p.position()
        }
    );
}

#[test]
fn misaligned_read_pos_is_corrupt() {
    let f = Fixture::new("rp-misaligned", 256);
    let (mut p, mut c) = f.ends();
    fill(&mut p, 32);
    drop(c.try_peek().unwrap()); // read_pos = 48
    fill(&mut p, 32);
    f.set_read_pos(56); // between released and written, but off the 16-byte grid
    assert!(matches!(
        corrupt_reserve(&mut p),
        CorruptError::ReadPosition { read: 56, .. }
    ));
}

#[test]
fn a_valid_read_pos_is_adopted() {
    // Control for the three cases above: the same manipulation with a legal value works.
    let f = Fixture::new("rp-valid", 256);
    let (mut p, _c) = f.ends();
    fill(&mut p, 32);
    f.set_read_pos(96); // "consumed" two records (a lie the producer cannot detect)
    p.try_push(9, &[9; 32]).expect("room after the release");
}

// ---------------------------------------------------------------------------------------
// The consumer validates record headers.

#[test]
fn record_length_past_the_end_is_corrupt() {
    let f = Fixture::new("len-past-end", 256);
    let (mut p, mut c) = f.ends();
    p.try_push(1, &[1; 10]).unwrap();
    f.set_len(0, 250); // 16 + 256 bytes: past the end of a 256-byte area
    assert_eq!(
        corrupt_peek(&mut c),
        CorruptError::RecordLength { pos: 0, len: 250 }
    );
    // Also through the batch reader, and repeatedly: no state was advanced.
    assert!(matches!(
        c.try_read_batch(8, |_, _| panic!("no record may be delivered")),
        Err(PeekError::Corrupt(_))
    ));
    assert_eq!(c.position(), 0);
}

#[test]
fn record_length_crossing_the_end_at_an_offset_is_corrupt() {
    let f = Fixture::new("len-cross", 256);
    let (mut p, mut c) = f.ends();
    for i in 0..3 {
        p.try_push(i, &[i as u8; 32]).unwrap(); // records at 0, 48, 96
    }
    drop(c.try_peek().unwrap());
    drop(c.try_peek().unwrap());
    // The record at data offset 96 has 160 bytes to the end: a payload of 144 ends exactly
    // there (legal), 145 would cross it.
    f.set_len(96, 145);
    assert_eq!(
        corrupt_peek(&mut c),
        CorruptError::RecordLength { pos: 96, len: 145 }
    );
    f.set_len(96, 144);
    let g = c
        .try_peek()
        .expect("a record that ends exactly at the end is legal");
    assert_eq!(g.len(), 144);
}

#[test]
fn huge_record_length_is_corrupt() {
    let f = Fixture::new("len-huge", 256);
    let (mut p, mut c) = f.ends();
    p.try_push(1, &[1; 10]).unwrap();
    f.set_len(0, 0x7fff_ffff);
    assert_eq!(
        corrupt_peek(&mut c),
        CorruptError::RecordLength {
            pos: 0,
            len: 0x7fff_ffff
        }
    );
    f.set_len(0, u32::MAX); // padding flag plus a huge length
    assert!(matches!(
        corrupt_peek(&mut c),
        CorruptError::Padding { pos: 0, .. }
    ));
}

#[test]
fn padding_that_does_not_reach_the_end_is_corrupt() {
    let f = Fixture::new("pad-short", 256);
    let (mut p, mut c) = f.ends();
    p.try_push(1, &[1; 10]).unwrap();
    f.set_len(0, PAD_FLAG | 16);
    assert_eq!(
        corrupt_peek(&mut c),
        CorruptError::Padding {
            pos: 0,
            len: PAD_FLAG | 16,
            expected: 240
        }
    );
    f.set_len(0, PAD_FLAG | 241); // one byte too far
    assert!(matches!(
        corrupt_peek(&mut c),
        CorruptError::Padding { pos: 0, .. }
    ));
    // Exactly to the end is a legal padding record: skipped, then nothing more.
    f.set_len(0, PAD_FLAG | 240);
    assert_eq!(c.try_peek().unwrap_err(), PeekError::Empty);
    assert_eq!(c.position(), 256);
}

#[test]
fn changed_length_word_with_matching_stamp() {
    let f = Fixture::new("len-changed", 256);
    let (mut p, mut c) = f.ends();
    p.try_push(7, &[7; 10]).unwrap();
    p.try_push(8, &[8; 10]).unwrap();
    let stamp = f.u64_at(DATA).load(Ordering::Acquire);
    assert_eq!(
        stamp,
        f.key(),
        "stamp of the record at position 0 is 0 ^ key"
    );
    // A length that still fits cannot be told from a real one (the peer owns its bytes):
    // the record is delivered with it, inside the data area.
    f.set_len(0, 100);
    let g = c.try_peek().expect("an in-bounds length is accepted");
    assert_eq!((g.tag(), g.len()), (7, 100));
    assert_eq!(&g[..10], &[7; 10]);
    drop(g);
    // The next record is looked for at 16 + 112 = 128, where nothing was stamped: Empty,
    // not a hang and not a misread of record 8.
    assert_eq!(c.try_peek().unwrap_err(), PeekError::Empty);
    // A length that no longer fits is Corrupt, whatever the stamp says.
    let f = Fixture::new("len-changed2", 256);
    let (mut p, mut c) = f.ends();
    p.try_push(7, &[7; 10]).unwrap();
    f.set_len(0, 241);
    assert!(matches!(
        corrupt_peek(&mut c),
        CorruptError::RecordLength { pos: 0, len: 241 }
    ));
}

#[test]
fn garbage_stamps_read_as_empty_not_corrupt() {
    let f = Fixture::new("stamps", 256);
    let (mut p, mut c) = f.ends();
    let key = f.key();
    // A record whose stamp is wrong by any amount was never published: Empty.
    p.try_push(1, &[1; 10]).unwrap();
    for bad in [
        0,
        !key,
        key ^ 256,
        key ^ 16,
        0xdead_beef_dead_beef,
        u64::MAX,
    ] {
        f.set_stamp(0, bad);
        assert_eq!(
            c.try_peek().unwrap_err(),
            PeekError::Empty,
            "stamp {bad:#x}"
        );
        assert_eq!(c.position(), 0);
    }
    // The whole data area full of garbage: still Empty, still returns.
    let mut rng = Rng(0x5eed_0001);
    let garbage: Vec<u8> = (0..256).map(|_| rng.next() as u8).collect();
    f.scribble(DATA, &garbage);
    assert_eq!(c.try_peek().unwrap_err(), PeekError::Empty);
    assert_eq!(
        c.try_read_batch(16, |_, _| panic!("nothing valid")),
        Err(PeekError::Empty)
    );
    // Restoring the right stamp (and a sane length) makes the record readable again.
    f.set_stamp(0, key);
    f.set_len(0, 10);
    assert_eq!(c.try_peek().unwrap().len(), 10);
    // With the producer gone, garbage reads as Closed.
    drop(p);
    assert_eq!(c.try_peek().unwrap_err(), PeekError::Closed);
}

// ---------------------------------------------------------------------------------------
// Attach-time validation.

#[test]
fn attach_rejects_inconsistent_positions() {
    let cap = 256u64;
    for (case, read, write) in [
        ("att-rw", 64u64, 32u64),    // read beyond write
        ("att-lap", 0, cap + 16),    // more than a lap written but unread
        ("att-misw", 0, 40),         // write off the grid
        ("att-misr", 8, 48),         // read off the grid
        ("att-huge", 0, u64::MAX),   // absurd
        ("att-huge2", u64::MAX, 16), // absurd
        // Equal, aligned, but so large that position sums would overflow (found by the
        // ring_reader fuzz target: a panic with overflow checks, a false `Corrupt` later
        // without).
        ("att-near-max", u64::MAX - 15, u64::MAX - 15),
        ("att-past-max", MAX_POSITION + 16, MAX_POSITION + 16),
    ] {
        let f = Fixture::new(case, cap as usize);
        f.u64_at(READ_POS).store(read, Ordering::Release);
        f.u64_at(WRITE_POS).store(write, Ordering::Release);
        let want = CorruptError::Positions {
            read,
            write,
            capacity: cap,
        };
        match ring::consumer(&f.seg, 0, cap as usize) {
            Err(AttachError::Corrupt(e)) => assert_eq!(e, want, "{case}"),
            other => panic!("{case}: consumer attach gave {other:?}"),
        }
        match ring::producer(&f.seg, 0, cap as usize) {
            Err(AttachError::Corrupt(e)) => assert_eq!(e, want, "{case}"),
            other => panic!("{case}: producer attach gave {other:?}"),
        }
    }
    // Control: consistent positions attach, and the ends continue from them.
    let f = Fixture::new("att-ok", 256);
    f.u64_at(READ_POS).store(512, Ordering::Release);
    f.u64_at(WRITE_POS).store(512 + 256, Ordering::Release);
    let c = ring::consumer(&f.seg, 0, 256).expect("consistent positions");
    assert_eq!(c.position(), 512);
    c.detach();
    let p = ring::producer(&f.seg, 0, 256).expect("consistent positions");
    assert_eq!(p.position(), 768);
    p.detach();
    // The largest position accepted still works for laps beyond it.
    let f = Fixture::new("att-max", 256);
    f.u64_at(READ_POS).store(MAX_POSITION, Ordering::Release);
    f.u64_at(WRITE_POS).store(MAX_POSITION, Ordering::Release);
    let mut p = ring::producer(&f.seg, 0, 256).expect("MAX_POSITION attaches");
    let mut c = ring::consumer(&f.seg, 0, 256).expect("MAX_POSITION attaches");
    for i in 0..32u32 {
        p.try_push(i, &[i as u8; 40]).expect("room");
        let g = c.try_peek().expect("the record just pushed");
        assert_eq!((g.tag(), &*g), (i, &[i as u8; 40][..]));
    }
}

#[test]
fn attach_rejects_bad_magic_version_capacity() {
    let f = Fixture::new("att-meta", 256);
    let check = |what: &str, ok: fn(&AttachError) -> bool| {
        for r in [
            ring::consumer(&f.seg, 0, 256).map(Consumer::detach),
            ring::producer(&f.seg, 0, 256).map(Producer::detach),
        ] {
            match r {
                Err(e) if ok(&e) => {}
                other => panic!("{what}: got {other:?}"),
            }
        }
    };
    assert_eq!(RING_MAGIC, 0x474e_4952);
    f.u32_at(MAGIC).store(0x5249_4e47, Ordering::Release); // "RING" byte-swapped
    check("magic", |e| matches!(e, AttachError::BadMagic(0x5249_4e47)));
    f.u32_at(MAGIC).store(RING_MAGIC, Ordering::Release);

    f.u32_at(VERSION).store(RING_VERSION + 1, Ordering::Release);
    check("version", |e| {
        matches!(e, AttachError::VersionMismatch { found, expected }
            if *found == RING_VERSION + 1 && *expected == RING_VERSION)
    });
    f.u32_at(VERSION).store(RING_VERSION, Ordering::Release);

    for bad in [0u64, 100, 255, 64, 512, 1 << 40, u64::MAX] {
        f.u64_at(CAPACITY).store(bad, Ordering::Release);
        match ring::consumer(&f.seg, 0, 256) {
            Err(AttachError::BadCapacity(c)) => assert_eq!(c, bad),
            other => panic!("capacity {bad}: got {other:?}"),
        }
    }
    f.u64_at(CAPACITY).store(256, Ordering::Release);
    // The caller expecting another capacity than the header's is refused too.
    assert!(matches!(
        ring::consumer(&f.seg, 0, 128),
        Err(AttachError::BadCapacity(256) | AttachError::OutOfBounds { .. })
    ));
    // A ring that would not fit the segment, or misaligned.
    assert!(matches!(
        ring::consumer(&f.seg, 0, 512),
        Err(AttachError::OutOfBounds { .. })
    ));
    assert!(matches!(
        ring::consumer(&f.seg, 64, 128),
        Err(AttachError::OutOfBounds { .. })
    ));
    // Everything restored: attaches again.
    ring::consumer(&f.seg, 0, 256).expect("restored").detach();
}

/// The peer writes the claim words: a foreign token refuses the end (naming the pid it
/// forged); clearing our claim does not let a second handle of this process in, even
/// through another mapping of the file; and our release never clears a claim not ours.
#[test]
#[allow(unsafe_code)]
fn forged_claim_words() {
    let f = Fixture::new("claims", 256);
    let me = std::process::id();
    let refused = |r: Result<(), AttachError>, end: ring::End, pid: u32| match r {
        Err(AttachError::AlreadyAttached { end: e, holder_pid }) => {
            assert_eq!((e, holder_pid), (end, pid))
        }
        other => panic!("{end} attached over a claim of {pid}: {other:?}"),
    };
    // A foreign token: refused, with the pid it names.
    let forged = 0xdead_beef_u64 << 32 | 5;
    f.u64_at(PRODUCER_CLAIM).store(forged, Ordering::Release);
    f.u64_at(CONSUMER_CLAIM).store(u64::MAX, Ordering::Release);
    refused(
        ring::producer(&f.seg, 0, 256).map(drop),
        ring::End::Producer,
        0xdead_beef,
    );
    refused(
        ring::consumer(&f.seg, 0, 256).map(drop),
        ring::End::Consumer,
        u32::MAX,
    );
    f.u64_at(PRODUCER_CLAIM).store(0, Ordering::Release);
    f.u64_at(CONSUMER_CLAIM).store(0, Ordering::Release);

    // The peer clears our claims while we hold them; a second mapping of the same file
    // (here the hostile handle itself) still cannot attach either end.
    let (mut p, mut c) = f.ends();
    assert_eq!(
        f.u64_at(PRODUCER_CLAIM).load(Ordering::Acquire) >> 32,
        u64::from(me)
    );
    f.u64_at(PRODUCER_CLAIM).store(0, Ordering::Release);
    f.u64_at(CONSUMER_CLAIM).store(0, Ordering::Release);
    let other = Arc::new(Segment::open(&format!("corrupt-{me}-claims")).expect("reopen"));
    for seg in [&f.seg, &other] {
        refused(
            ring::producer(seg, 0, 256).map(drop),
            ring::End::Producer,
            me,
        );
        refused(
            ring::consumer(seg, 0, 256).map(drop),
            ring::End::Consumer,
            me,
        );
    }
    p.try_push(1, b"unaffected").unwrap();
    assert_eq!(&*c.try_peek().unwrap(), b"unaffected");

    // The peer puts its own token in our producer's word; our release leaves it there.
    f.u64_at(PRODUCER_CLAIM).store(forged, Ordering::Release);
    p.detach();
    assert_eq!(f.u64_at(PRODUCER_CLAIM).load(Ordering::Acquire), forged);
    refused(
        ring::producer(&other, 0, 256).map(drop),
        ring::End::Producer,
        0xdead_beef,
    );
    // After the "peer's death", the take-over attaches and continues at our position.
    // SAFETY: the forged holder is no process at all; nothing else writes this ring.
    let p = unsafe { ring::take_over_producer(&other, 0, 256) }.expect("take over");
    assert_eq!(p.position(), 32);
    drop((p, c));
    assert_eq!(f.u64_at(PRODUCER_CLAIM).load(Ordering::Acquire), 0);
    assert_eq!(f.u64_at(CONSUMER_CLAIM).load(Ordering::Acquire), 0);
}

// ---------------------------------------------------------------------------------------
// Through the channel API.

/// The hostile view of a `channel::pair`'s anonymous segment, found through
/// `/proc/self/fd` by a marker message just sent on it (as another process holding the
/// fd could do). Returns the segment and the payload offset of the marker's record.
#[allow(unsafe_code)]
fn channel_peer_view(marker: &[u8]) -> (Segment, usize) {
    for entry in std::fs::read_dir("/proc/self/fd").expect("/proc/self/fd") {
        let path = entry.expect("fd entry").path();
        let Ok(link) = std::fs::read_link(&path) else {
            continue;
        };
        if !link.to_string_lossy().starts_with("/memfd:shmrpc") {
            continue;
        }
        let Ok(file) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
        else {
            continue;
        };
        let Ok(seg) = Segment::from_fd(file.into()) else {
            continue;
        };
        let mut bytes = vec![0u8; seg.len()];
        // SAFETY: the channel's ends live on this thread, which is here, not in a send
        // (no write grant is alive), so nothing writes the payload during the copy.
        unsafe { seg.read_bytes(0, &mut bytes) }.expect("whole payload");
        if let Some(at) = bytes.windows(marker.len()).position(|w| w == marker) {
            return (seg, at - 16);
        }
    }
    panic!("no memfd segment holds the marker");
}

fn marker(case: &str) -> Vec<u8> {
    format!(
        "marker:{}:{case}:{:?}",
        std::process::id(),
        std::time::Instant::now()
    )
    .into_bytes()
}

const CH_CAP: usize = 1024;

fn channel_pair() -> (channel::Endpoint, channel::Endpoint) {
    let cfg =
        ChannelConfig::default()
            .with_capacity(CH_CAP)
            .with_wait(WaitStrategy::SpinThenPark {
                spin: Duration::from_micros(20),
            });
    channel::pair(&cfg).expect("pair")
}

/// Stores `v` at `off`, which must be a ring header or record-header word.
#[allow(unsafe_code)]
fn set_u32(seg: &Segment, off: usize, v: u32) {
    // SAFETY: callers pass header and record-header words, which the ring only accesses
    // atomically.
    unsafe { seg.atomic_u32(off) }
        .expect("in bounds")
        .store(v, Ordering::Release);
}

/// As [`set_u32`], for a 64-bit word.
#[allow(unsafe_code)]
fn set_u64(seg: &Segment, off: usize, v: u64) {
    // SAFETY: as in `set_u32`.
    unsafe { seg.atomic_u64(off) }
        .expect("in bounds")
        .store(v, Ordering::Release);
}

#[test]
fn channel_recv_reports_corrupt_length() {
    let (mut a, mut b) = channel_pair();
    let m = marker("recv-len");
    a.send(&m).unwrap();
    let (seg, rec) = channel_peer_view(&m);
    set_u32(&seg, rec + 8, 0x7fff_fff0);
    match b.recv_timeout(Duration::from_secs(5)) {
        Err(RecvError::Corrupt(CorruptError::RecordLength { pos: 0, .. })) => {}
        other => panic!("got {:?}", other.map(|g| g.len())),
    }
    // Bad padding through the channel too.
    set_u32(&seg, rec + 8, PAD_FLAG | 48);
    let r = b.recv_timeout(Duration::from_secs(5)).map(|g| g.len());
    assert!(
        matches!(r, Err(RecvError::Corrupt(CorruptError::Padding { .. }))),
        "got {r:?}"
    );
}

#[test]
fn channel_recv_async_reports_corrupt() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (mut a, b) = channel_pair();
    let (_btx, mut brx) = b.split();
    rt.block_on(async {
        // First an honest message, received while the receiver waits in the task.
        let m = marker("recv-async");
        let recv = async {
            let g = brx
                .recv_async_timeout(Duration::from_secs(5))
                .await
                .unwrap();
            g.len()
        };
        let send = async { a.send_async(&m).await.unwrap() };
        let (len, ()) = tokio::join!(recv, send);
        assert_eq!(len, m.len());
        // Then one whose length the peer breaks after publishing it.
        let m2 = marker("recv-async-2");
        a.send_async(&m2).await.unwrap();
        let (seg, rec) = channel_peer_view(&m2);
        set_u32(&seg, rec + 8, (CH_CAP as u32) - 8);
        let r = tokio::time::timeout(Duration::from_secs(10), brx.recv_async())
            .await
            .expect("watchdog: recv_async returned");
        match r {
            Err(RecvError::Corrupt(CorruptError::RecordLength { .. })) => {}
            other => panic!("got {:?}", other.map(|g| g.len())),
        }
    });
}

#[test]
fn channel_garbage_stamp_times_out_instead_of_hanging() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (mut a, b) = channel_pair();
    let (_btx, mut brx) = b.split();
    let m = marker("stamp");
    a.send(&m).unwrap();
    let (seg, rec) = channel_peer_view(&m);
    set_u64(&seg, rec, 0x0123_4567_89ab_cdef); // the record's stamp
    match brx.recv_timeout(Duration::from_millis(200)) {
        Err(RecvError::TimedOut) => {}
        other => panic!("got {:?}", other.map(|g| g.len())),
    }
    rt.block_on(async {
        match brx.recv_async_timeout(Duration::from_millis(200)).await {
            Err(RecvError::TimedOut) => {}
            other => panic!("got {:?}", other.map(|g| g.len())),
        }
    });
}

#[test]
fn channel_send_reports_corrupt_read_pos() {
    let (mut a, _b) = channel_pair();
    let m = marker("send");
    a.send(&m).unwrap();
    let (seg, _) = channel_peer_view(&m);
    // A sends on ring 0, at the start of the payload: fill it, then lie about read_pos.
    while a.try_send(&[0; 100]).is_ok() {}
    set_u64(&seg, READ_POS, 1 << 40);
    match a.sender().send_timeout(&[0; 100], Duration::from_secs(5)) {
        Err(SendError::Corrupt(CorruptError::ReadPosition { read, .. })) => {
            assert_eq!(read, 1 << 40)
        }
        other => panic!("got {other:?}"),
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let r = rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), a.send_async(&[0; 100]))
            .await
            .expect("watchdog: send_async returned")
    });
    assert!(matches!(r, Err(SendError::Corrupt(_))), "got {r:?}");
}

// ---------------------------------------------------------------------------------------
// Fuzz-ish: random bytes into random places of a live ring.

/// SplitMix64: a deterministic PRNG, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Counts of each outcome seen, to show the fuzz reached them all.
#[derive(Debug, Default)]
struct Tally {
    peek_ok: u64,
    empty: u64,
    peek_closed: u64,
    peek_corrupt: u64,
    reserve_ok: u64,
    full: u64,
    too_large: u64,
    reserve_closed: u64,
    reserve_corrupt: u64,
    attach_err: u64,
}

/// Ends the process if the fuzz loop stops returning (a hang is a failure, not a wait),
/// removing the segment first so nothing leaks.
fn watchdog(name: String, limit: Duration) -> mpsc::Sender<()> {
    let (tx, rx) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
            eprintln!("watchdog: fuzz loop hung for {limit:?}");
            let _ = Segment::unlink(&name);
            std::process::exit(101);
        }
    });
    tx
}

#[test]
fn fuzz_random_bytes_into_a_live_ring() {
    // Overridable for a longer local soak (CI uses the defaults).
    let env = |k: &str, d: u64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let iterations = env("SHMRPC_FUZZ_ITERATIONS", 20_000);
    let seed = env("SHMRPC_FUZZ_SEED", 0x5eed_cafe_f00d_0001);
    const CAP: usize = 1024;
    let f = Fixture::new("fuzz", CAP);
    let _dog = watchdog(
        format!("corrupt-{}-fuzz", std::process::id()),
        Duration::from_secs(120),
    );
    let mut rng = Rng(seed);
    let mut t = Tally::default();
    let (mut p, mut c) = f.ends();
    // The data area's address, from a grant at data offset 0: every grant must lie inside
    // [base, base + CAP).
    let base = {
        let g = p.try_reserve(0).unwrap();
        g.as_ptr() as usize - 16
    };
    let in_area = |ptr: *const u8, len: usize| {
        let p = ptr as usize;
        p >= base + 16 && p + len <= base + CAP
    };
    let max = CAP - 16;
    for iter in 0..iterations {
        // Honest traffic.
        for _ in 0..rng.below(4) {
            let len = rng.below(max as u64 / 2) as usize;
            let _ = p.try_push(iter as u32, &vec![iter as u8; len]);
        }
        if rng.below(2) == 0 {
            let _ = c.try_peek();
        }
        // The attack: 1-4 writes, some aimed at the record the consumer looks at next (its
        // length word, or stamp), some at read_pos, the rest anywhere in header or data.
        for _ in 0..1 + rng.below(4) {
            let next = (c.position() as usize) & (CAP - 1);
            let kind = rng.below(13);
            let (off, len) = match kind {
                0..=1 => (DATA + next + 8, 4),
                2..=3 => (DATA + next, 8),
                4..=5 => (READ_POS, 8),
                6 => (CONSUMER_WAITING + 4 * rng.below(3) as usize, 4), // wait words, closed
                7 => (
                    rng.below(RING_HEADER_SIZE as u64) as usize,
                    1 + rng.below(16) as usize,
                ),
                _ => (
                    DATA + rng.below(CAP as u64) as usize,
                    1 + rng.below(16) as usize,
                ),
            };
            let len = len.min(ring_size(CAP) - off);
            let mut bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            if kind <= 1 && rng.below(2) == 0 {
                // A plausible length (maybe with the padding flag), not just noise.
                let l = rng.below(2 * CAP as u64) as u32 | (rng.below(2) as u32) << 31;
                bytes.copy_from_slice(&l.to_le_bytes());
            }
            if (4..=5).contains(&kind) && rng.below(2) == 0 {
                // A plausible position near the real ones.
                let v = p.position().wrapping_add(rng.below(96)).wrapping_sub(48);
                bytes.copy_from_slice(&v.to_le_bytes());
            }
            f.scribble(off, &bytes);
        }
        // The victim: peek/reserve/batch cycles. Any outcome but a panic, a hang or an
        // out-of-area slice is acceptable.
        let mut broken = false;
        for _ in 0..6 {
            match c.try_peek() {
                Ok(g) => {
                    assert!(g.len() <= max, "record of {} bytes", g.len());
                    assert!(in_area(g.as_ptr(), g.len()), "read grant outside the area");
                    std::hint::black_box(g.iter().map(|&b| u64::from(b)).sum::<u64>());
                    t.peek_ok += 1;
                }
                Err(PeekError::Empty) => t.empty += 1,
                Err(PeekError::Closed) => t.peek_closed += 1,
                Err(PeekError::Corrupt(_)) => {
                    t.peek_corrupt += 1;
                    broken = true;
                }
                Err(e) => panic!("unexpected peek error: {e}"),
            }
            let len = rng.below(max as u64 + 32) as usize;
            match p.try_reserve(len) {
                Ok(mut g) => {
                    assert_eq!(g.len(), len);
                    assert!(in_area(g.as_ptr(), g.len()), "write grant outside the area");
                    g.fill(0xA5);
                    if rng.below(4) != 0 {
                        g.commit(iter as u32);
                    }
                    t.reserve_ok += 1;
                }
                Err(ReserveError::Full) => t.full += 1,
                Err(ReserveError::TooLarge { len: l, max: m }) => {
                    assert_eq!((l, m), (len, max));
                    assert!(len > max);
                    t.too_large += 1;
                }
                Err(ReserveError::Closed) => t.reserve_closed += 1,
                Err(ReserveError::Corrupt(_)) => {
                    t.reserve_corrupt += 1;
                    broken = true;
                }
                Err(e) => panic!("unexpected reserve error: {e}"),
            }
            let batch = c.try_read_batch(rng.below(8) as usize, |_, data| {
                assert!(data.len() <= max);
                assert!(in_area(data.as_ptr(), data.len()), "batch slice outside");
            });
            if let Err(PeekError::Corrupt(_)) = batch {
                broken = true;
            }
        }
        // Attaching to the damaged ring must fail cleanly or succeed; never panic.
        if rng.below(8) == 0 {
            match ring::consumer(&f.seg, 0, CAP) {
                Ok(extra) => extra.detach(),
                Err(_) => t.attach_err += 1,
            }
        }
        // A broken (or closed, or randomly chosen) ring is reset, as a real connection
        // would be torn down and rebuilt.
        let closed = f.u32_at(CLOSED).load(Ordering::Relaxed) != 0;
        if broken || closed || rng.below(50) == 0 {
            p.detach();
            c.detach();
            ring::init(&f.seg, 0, CAP).expect("re-init");
            (p, c) = f.ends();
        }
    }
    eprintln!("fuzz outcomes after {iterations} iterations (seed {seed:#x}): {t:?}");
    // The loop reached every outcome (a fuzz that never corrupts anything proves nothing).
    assert!(t.peek_ok > 0 && t.empty > 0 && t.peek_corrupt > 0 && t.peek_closed > 0);
    assert!(t.reserve_ok > 0 && t.full > 0 && t.too_large > 0);
    assert!(t.reserve_corrupt > 0 && t.reserve_closed > 0);
    p.detach();
    c.detach();
}

/// Every segment these tests created is gone once its fixture is (the creator unlinks).
#[test]
fn fixtures_leave_nothing_in_dev_shm() {
    let name = {
        let f = Fixture::new("leak-check", 128);
        let (p, c) = f.ends();
        drop((p, c));
        f.seg.path().expect("named").to_owned()
    };
    assert!(!name.exists(), "{} left behind", name.display());
}
