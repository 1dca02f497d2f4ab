//! Target `ring_reader`: both ends of a ring over memory the fuzzer writes, as a hostile
//! peer would — before attaching (positions, flags, meta, a data-area image) and between
//! operations (header words, data bytes, forged record headers).
//!
//! One anonymous memfd segment (no name, nothing in /dev/shm) is made once per process
//! and reused: each input starts by filling it with a guard pattern and writing a fresh
//! ring header at offset 128, so the bytes before the ring and after its data area must
//! still hold the pattern after every operation.
//!
//! Checked always (whatever the memory holds): attaching succeeds exactly when the header
//! is valid; a record read is at most `capacity - 16` bytes and lies inside the data area;
//! a reservation lies inside the data area and is `TooLarge` exactly above
//! `capacity - 16`; the consumer never writes the data area, `write_pos` or the meta
//! words; the producer never writes `read_pos` or the meta words; nobody writes outside
//! the ring; positions stay on the 16-byte grid; `read_pos`/`write_pos` are published as
//! the ends move. Every loop is bounded, so a hang is a libFuzzer timeout.
//!
//! Checked while the memory is *clean* (no hostile write since attaching, or only to
//! words the attached ends must not re-read: the meta words and the waiting flags):
//! records come out exactly as committed (a model queue), `Empty`/`Closed`/`Full` agree
//! with the positions, and `Corrupt` never happens.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use shmrpc::lowlevel::ring::{
    self, record_size, AttachError, Consumer, CorruptError, PeekError, Producer, ReserveError,
    Spinner, WaitError, WaitStrategy, MAX_POSITION, RECORD_HEADER, RING_HEADER_SIZE, RING_MAGIC,
    RING_VERSION,
};
use shmrpc::lowlevel::sys::Segment;

use crate::{Cursor, Writer};

/// Ring offset in the segment payload (the bytes before it are a guard).
pub const RING_OFF: usize = 128;
/// Largest data area used.
pub const MAX_CAP: usize = 1024;
const GUARD_AFTER: usize = 128;
const SEG_SIZE: usize = RING_OFF + RING_HEADER_SIZE + MAX_CAP + GUARD_AFTER;
const FILL: u8 = 0xa5;
const META_LEN: usize = 128;

/// Ring header word offsets (docs and `ring/layout.rs`).
const MAGIC: usize = 0;
const VERSION: usize = 4;
const CAPACITY: usize = 8;
const KEY: usize = 16;
const WRITE_POS: usize = 128;
const READ_POS: usize = 256;
const CONSUMER_WAITING: usize = 384;
const PRODUCER_WAITING: usize = 388;
const CLOSED: usize = 392;
const CLOSED_BY_PRODUCER: u32 = 1;
const CLOSED_BY_CONSUMER: u32 = 2;

/// What the fuzzer sets before the ends attach.
#[derive(Debug, Clone, Default)]
pub struct Pre {
    /// Both positions (rounded down to 16): a ring that has carried this many bytes.
    pub start: Option<u64>,
    /// Raw `write_pos`.
    pub write_pos: Option<u64>,
    /// Raw `read_pos`.
    pub read_pos: Option<u64>,
    /// consumer_waiting, producer_waiting, closed.
    pub waits: Option<(u32, u32, u32)>,
    /// A meta word (0 magic, 1 version, 2 capacity, 3 key) and its value.
    pub meta: Option<(u8, u64)>,
    /// Bytes copied to the start of the data area.
    pub image: Vec<u8>,
}

/// One operation.
#[derive(Debug, Clone)]
pub enum Op {
    /// Up to `n % 16 + 1` `try_peek`s (each record consumed), stopping at the first error.
    Peek(u8),
    /// `try_read_batch(max % 64)`.
    Batch(u8),
    /// `try_reserve(len)`, fill with `fill`, then drop (0), commit (1) or commit_deferred (2).
    Reserve {
        /// Length asked for.
        len: u64,
        /// 0 abandon, 1 commit, 2 commit_deferred.
        action: u8,
        /// Record tag.
        tag: u32,
        /// Payload byte.
        fill: u8,
    },
    /// `try_push(tag, [fill; len])`.
    Push {
        /// Record tag.
        tag: u32,
        /// Length.
        len: u16,
        /// Payload byte.
        fill: u8,
    },
    /// Hostile store to a header word: 0 write_pos, 1 read_pos, 2 consumer_waiting,
    /// 3 producer_waiting, 4 closed, 5 magic, 6 capacity, 7 key.
    Word {
        /// Which word (mod 8).
        which: u8,
        /// Value (truncated for u32 words).
        value: u64,
    },
    /// Hostile bytes at data offset `off` (mod capacity, cut at the end).
    Data {
        /// Offset.
        off: u16,
        /// Bytes.
        bytes: Vec<u8>,
    },
    /// A forged record header at position `base + 16 * delta`, base being the consumer's
    /// position (0), the producer's (1) or `abs` (2); stamp `pos ^ key ^ stamp_xor`.
    Record {
        /// 0 consumer, 1 producer, 2 absolute.
        base: u8,
        /// Records (16 bytes) from the base.
        delta: i16,
        /// Absolute position (base 2).
        abs: u64,
        /// Length word (bit 31 = padding).
        len: u32,
        /// Tag.
        tag: u32,
        /// 0 = a correct stamp.
        stamp_xor: u64,
    },
    /// `Producer::notify`.
    Notify,
    /// `Producer::close`.
    CloseProducer,
    /// `Consumer::close`.
    CloseConsumer,
    /// Detach the consumer and attach a new one from what memory says.
    ReattachConsumer,
    /// Detach the producer and attach a new one from what memory says.
    ReattachProducer,
    /// `Consumer::wait` (`producer: false`) or `Producer::wait_for_space(len)` with the
    /// `Park` strategy and a deadline already passed: one readiness check over the shared
    /// words, then `TimedOut` without sleeping.
    Wait {
        /// Which end waits.
        producer: bool,
        /// Record length the producer waits room for.
        len: u16,
    },
}

/// A whole `ring_reader` input.
#[derive(Debug, Clone, Default)]
pub struct RingInput {
    /// Capacity 128 << (cap_sel % 4).
    pub cap_sel: u8,
    /// The ring's key (written over the random one, so inputs replay).
    pub key: u64,
    /// Memory before attaching.
    pub pre: Pre,
    /// Operations (at most 128 are read).
    pub ops: Vec<Op>,
}

impl RingInput {
    /// The input's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        let p = &self.pre;
        let flags = u8::from(p.start.is_some())
            | u8::from(p.write_pos.is_some()) << 1
            | u8::from(p.read_pos.is_some()) << 2
            | u8::from(p.waits.is_some()) << 3
            | u8::from(p.meta.is_some()) << 4
            | u8::from(!p.image.is_empty()) << 5;
        w.u8(self.cap_sel).u64(self.key).u8(flags);
        if let Some(v) = p.start {
            w.u64(v);
        }
        if let Some(v) = p.write_pos {
            w.u64(v);
        }
        if let Some(v) = p.read_pos {
            w.u64(v);
        }
        if let Some((a, b, c)) = p.waits {
            w.u32(a).u32(b).u32(c);
        }
        if let Some((which, v)) = p.meta {
            w.u8(which).u64(v);
        }
        if !p.image.is_empty() {
            w.u16(p.image.len() as u16).bytes(&p.image);
        }
        for op in &self.ops {
            match op {
                Op::Peek(n) => w.u8(0).u8(*n),
                Op::Batch(n) => w.u8(1).u8(*n),
                Op::Reserve {
                    len,
                    action,
                    tag,
                    fill,
                } => {
                    match u16::try_from(*len) {
                        Ok(l) => w.u8(2).u16(l),
                        Err(_) => w.u8(3).u64(*len),
                    };
                    w.u8(*action).u32(*tag).u8(*fill)
                }
                Op::Push { tag, len, fill } => w.u8(4).u32(*tag).u16(*len).u8(*fill),
                Op::Word { which, value } => w.u8(5).u8(*which).u64(*value),
                Op::Data { off, bytes } => w.u8(6).u16(*off).u8(bytes.len() as u8).bytes(bytes),
                Op::Record {
                    base,
                    delta,
                    abs,
                    len,
                    tag,
                    stamp_xor,
                } => {
                    w.u8(7).u8(*base).u16(*delta as u16);
                    if base % 3 == 2 {
                        w.u64(*abs);
                    }
                    w.u32(*len).u32(*tag).u64(*stamp_xor)
                }
                Op::Notify => w.u8(8),
                Op::CloseProducer => w.u8(9),
                Op::CloseConsumer => w.u8(10),
                Op::ReattachConsumer => w.u8(11),
                Op::ReattachProducer => w.u8(12),
                Op::Wait { producer, len } => w.u8(13).u8((*producer).into()).u16(*len),
            };
        }
        w.0
    }

    /// Reads an input (any bytes are one).
    pub fn decode(data: &[u8]) -> Self {
        let mut c = Cursor::new(data);
        let cap_sel = c.u8();
        let key = c.u64();
        let flags = c.u8();
        let mut pre = Pre::default();
        if flags & 1 != 0 {
            pre.start = Some(c.u64());
        }
        if flags & 2 != 0 {
            pre.write_pos = Some(c.u64());
        }
        if flags & 4 != 0 {
            pre.read_pos = Some(c.u64());
        }
        if flags & 8 != 0 {
            pre.waits = Some((c.u32(), c.u32(), c.u32()));
        }
        if flags & 16 != 0 {
            pre.meta = Some((c.u8(), c.u64()));
        }
        if flags & 32 != 0 {
            let n = c.u16();
            pre.image = c.bytes(n.into()).to_vec();
        }
        let mut ops = Vec::new();
        while !c.is_empty() && ops.len() < 128 {
            let op = match c.u8() % 14 {
                0 => Op::Peek(c.u8()),
                1 => Op::Batch(c.u8()),
                code @ (2 | 3) => {
                    let len = if code == 2 { c.u16().into() } else { c.u64() };
                    Op::Reserve {
                        len,
                        action: c.u8(),
                        tag: c.u32(),
                        fill: c.u8(),
                    }
                }
                4 => Op::Push {
                    tag: c.u32(),
                    len: c.u16(),
                    fill: c.u8(),
                },
                5 => Op::Word {
                    which: c.u8(),
                    value: c.u64(),
                },
                6 => {
                    let off = c.u16();
                    let n = c.u8();
                    Op::Data {
                        off,
                        bytes: c.bytes(n.into()).to_vec(),
                    }
                }
                7 => {
                    let base = c.u8();
                    let delta = c.u16() as i16;
                    let abs = if base % 3 == 2 { c.u64() } else { 0 };
                    Op::Record {
                        base,
                        delta,
                        abs,
                        len: c.u32(),
                        tag: c.u32(),
                        stamp_xor: c.u64(),
                    }
                }
                8 => Op::Notify,
                9 => Op::CloseProducer,
                10 => Op::CloseConsumer,
                11 => Op::ReattachConsumer,
                12 => Op::ReattachProducer,
                _ => Op::Wait {
                    producer: c.u8() & 1 != 0,
                    len: c.u16(),
                },
            };
            ops.push(op);
        }
        Self {
            cap_sel,
            key,
            pre,
            ops,
        }
    }
}

fn segment() -> &'static Arc<Segment> {
    static SEG: OnceLock<Arc<Segment>> = OnceLock::new();
    SEG.get_or_init(|| {
        Arc::new(Segment::anonymous(SEG_SIZE, 0, |_| Ok(())).expect("memfd segment"))
    })
}

/// Whether an end may attach to a ring whose header says this, and with which error:
/// the documented checks (magic, version, capacity, positions), written out here.
/// What attaching an end returns: `recorded` is the header's `write_pos`, `write` where the
/// records published from it end ([`Harness::published_end`]).
fn expected_attach(
    magic: u32,
    version: u32,
    capacity: u64,
    cap: usize,
    read: u64,
    (recorded, write): (u64, u64),
) -> Result<(), String> {
    if magic != RING_MAGIC {
        return Err(format!("{:?}", AttachError::BadMagic(magic)));
    }
    if version != RING_VERSION {
        return Err(format!(
            "{:?}",
            AttachError::VersionMismatch {
                found: version,
                expected: RING_VERSION
            }
        ));
    }
    if capacity != cap as u64 {
        return Err(format!("{:?}", AttachError::BadCapacity(capacity)));
    }
    if read > write
        || write > MAX_POSITION
        || write - read > capacity
        || !read.is_multiple_of(16)
        || !write.is_multiple_of(16)
    {
        return Err(format!(
            "{:?}",
            AttachError::Corrupt(CorruptError::Positions {
                read,
                write: recorded,
                capacity
            })
        ));
    }
    Ok(())
}

struct Harness {
    seg: &'static Arc<Segment>,
    cap: usize,
    mask: u64,
    /// Address of the data area's first byte.
    base: usize,
    /// The key the ends attached with.
    key: u64,
    prod: Option<Producer>,
    cons: Option<Consumer>,
    /// Our producer's own close (the consumer only sees the flag).
    prod_closed: bool,
    /// See the module docs.
    clean: bool,
    /// A hostile write happened (a re-attach then reads untrusted words).
    tampered: bool,
    /// Records committed and not yet read, while clean.
    model: VecDeque<(u32, Vec<u8>)>,
    /// The meta words as they must stay (only the fuzzer changes them).
    meta: [u8; META_LEN],
}

// SAFETY (every raw access below): the harness is single-threaded, and it plays the peer
// only between operations, when no read or write grant of its ends is alive, so no slice
// of this process covers the bytes and no ring access runs meanwhile.
#[allow(unsafe_code)]
impl Harness {
    fn ring_read(&self, off: usize, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        // SAFETY: see above the impl.
        unsafe { self.seg.read_bytes(RING_OFF + off, &mut v) }.expect("in bounds");
        v
    }
    fn ring_write(&self, off: usize, bytes: &[u8]) {
        // SAFETY: see above the impl.
        unsafe { self.seg.write_bytes(RING_OFF + off, bytes) }.expect("in bounds");
    }
    /// The header's `write_pos`, and where an end attaching now takes the records published
    /// from it to end (the ring's `published_end`): on over every slot that holds its own
    /// position's stamp (with the key in the header now) and a length that keeps the record
    /// inside the data area, at most a ring's worth on; nowhere if `write_pos` is out of
    /// range or off the grid.
    fn published_end(&self) -> (u64, u64) {
        let recorded = self.w64(WRITE_POS);
        if recorded > MAX_POSITION || !recorded.is_multiple_of(16) {
            return (recorded, recorded);
        }
        let (key, cap) = (self.w64(KEY), self.cap as u64);
        let mut end = recorded;
        loop {
            let off = (end % cap) as usize;
            let header = self.ring_read(RING_HEADER_SIZE + off, 16);
            let stamp = u64::from_le_bytes(header[..8].try_into().expect("8 bytes"));
            let len = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes"));
            if stamp != end ^ key {
                return (recorded, end);
            }
            let to_end = cap - off as u64;
            let rec = if len & (1 << 31) != 0 {
                to_end
            } else {
                record_size(len as usize) as u64
            };
            if rec > to_end || end + rec - recorded > cap {
                return (recorded, end);
            }
            end += rec;
        }
    }

    fn w64(&self, off: usize) -> u64 {
        // SAFETY: see above the impl.
        unsafe { self.seg.atomic_u64(RING_OFF + off) }
            .expect("aligned")
            .load(Ordering::SeqCst)
    }
    fn w32(&self, off: usize) -> u32 {
        // SAFETY: see above the impl.
        unsafe { self.seg.atomic_u32(RING_OFF + off) }
            .expect("aligned")
            .load(Ordering::SeqCst)
    }
    fn data(&self) -> Vec<u8> {
        self.ring_read(RING_HEADER_SIZE, self.cap)
    }
    fn max_payload(&self) -> usize {
        self.cap - RECORD_HEADER
    }

    /// Nothing outside the ring changed, nor the meta words.
    fn check_memory(&self) {
        let mut before = vec![0u8; RING_OFF];
        // SAFETY: see above the impl.
        unsafe { self.seg.read_bytes(0, &mut before) }.unwrap();
        // Slice comparisons (one memcmp), not a per-byte loop: the fuzzer instruments
        // every comparison, and this runs after every operation.
        const GUARD: [u8; SEG_SIZE] = [FILL; SEG_SIZE];
        assert!(
            before[..] == GUARD[..RING_OFF],
            "bytes before the ring were written"
        );
        let end = RING_OFF + RING_HEADER_SIZE + self.cap;
        let mut after = vec![0u8; SEG_SIZE - end];
        // SAFETY: see above the impl.
        unsafe { self.seg.read_bytes(end, &mut after) }.unwrap();
        assert!(
            after[..] == GUARD[..after.len()],
            "bytes after the data area were written"
        );
        assert_eq!(
            self.ring_read(0, META_LEN),
            self.meta,
            "the meta words were written"
        );
    }

    fn in_data_area(&self, ptr: *const u8, len: usize) {
        let p = ptr as usize;
        assert!(
            p >= self.base + RECORD_HEADER && p + len <= self.base + self.cap,
            "payload [{p:#x}, +{len}) outside the data area [{:#x}, +{}) (after a record header)",
            self.base,
            self.cap
        );
    }

    fn attach_consumer(&mut self) {
        let want = expected_attach(
            self.w32(MAGIC),
            self.w32(VERSION),
            self.w64(CAPACITY),
            self.cap,
            self.w64(READ_POS),
            self.published_end(),
        );
        let read = self.w64(READ_POS);
        match ring::consumer(self.seg, RING_OFF, self.cap) {
            Ok(c) => {
                assert_eq!(want, Ok(()), "consumer attached to a bad header");
                assert_eq!(c.position(), read);
                assert_eq!(c.capacity(), self.cap);
                self.cons = Some(c);
            }
            Err(e) => {
                assert_eq!(Err(format!("{e:?}")), want, "consumer attach");
                self.clean = false;
            }
        }
    }

    fn attach_producer(&mut self) {
        let (recorded, write) = self.published_end();
        // An honest producer always records where it stopped: nothing to walk over.
        if self.clean {
            assert_eq!(write, recorded, "records after write_pos in a clean ring");
        }
        let want = expected_attach(
            self.w32(MAGIC),
            self.w32(VERSION),
            self.w64(CAPACITY),
            self.cap,
            self.w64(READ_POS),
            (recorded, write),
        );
        match ring::producer(self.seg, RING_OFF, self.cap) {
            Ok(p) => {
                assert_eq!(want, Ok(()), "producer attached to a bad header");
                assert_eq!(p.position(), write);
                assert_eq!(self.w64(WRITE_POS), write, "the walk's end recorded");
                assert_eq!(p.capacity(), self.cap);
                assert_eq!(p.max_payload(), self.max_payload());
                self.prod = Some(p);
                self.prod_closed = false;
            }
            Err(e) => {
                assert_eq!(Err(format!("{e:?}")), want, "producer attach");
                self.clean = false;
            }
        }
    }

    fn producer_closed_flag(&self) -> bool {
        self.w32(CLOSED) & CLOSED_BY_PRODUCER != 0
    }

    /// A consumer error, checked against the model while clean.
    fn check_peek_error(&self, e: &PeekError) {
        if let PeekError::Corrupt(c) = e {
            // Only record-level corruption can be seen by a reader.
            assert!(
                matches!(
                    c,
                    CorruptError::RecordLength { .. } | CorruptError::Padding { .. }
                ),
                "{c:?}"
            );
        }
        if self.clean {
            assert!(
                self.model.is_empty(),
                "{e:?} with {} committed records unread",
                self.model.len()
            );
            let want = if self.producer_closed_flag() {
                PeekError::Closed
            } else {
                PeekError::Empty
            };
            assert_eq!(*e, want);
        }
    }

    /// After a consumer operation: it wrote no data, no write_pos, kept its positions on
    /// the grid and published read_pos if it moved.
    fn after_consumer(&self, data: &[u8], write_pos: u64, pos0: u64) {
        assert_eq!(self.data(), data, "the consumer wrote into the data area");
        assert_eq!(
            self.w64(WRITE_POS),
            write_pos,
            "the consumer wrote write_pos"
        );
        let c = self.cons.as_ref().unwrap();
        let pos = c.position();
        assert_eq!(pos % 16, 0);
        // Moves forward by at most one lap per record (plus one padding).
        assert!(pos.wrapping_sub(pos0) <= 2 * self.cap as u64 * 256);
        if pos != pos0 {
            assert_eq!(self.w64(READ_POS), pos, "read_pos not published");
        }
        if self.clean {
            if let Some(p) = &self.prod {
                assert!(p.position().wrapping_sub(pos) <= self.cap as u64);
            }
        }
        self.check_memory();
    }

    fn peek(&mut self, n: u8) {
        if self.cons.is_none() {
            return;
        }
        let data = self.data();
        let write_pos = self.w64(WRITE_POS);
        let pos0 = self.cons.as_ref().unwrap().position();
        for _ in 0..=(n % 16) {
            let before = self.cons.as_ref().unwrap().position();
            let got = {
                let c = self.cons.as_mut().unwrap();
                match c.try_peek() {
                    Ok(g) => {
                        let r = (g.tag(), g.to_vec(), g.as_ptr());
                        drop(g);
                        Ok(r)
                    }
                    Err(e) => Err(e),
                }
            };
            let after = self.cons.as_ref().unwrap().position();
            match got {
                Ok((tag, payload, ptr)) => {
                    assert!(payload.len() <= self.max_payload());
                    self.in_data_area(ptr, payload.len());
                    // Consumed: at least the record, at most a padding record before it.
                    let moved = after.wrapping_sub(before);
                    let rec = record_size(payload.len()) as u64;
                    assert!(
                        moved >= rec && moved < rec + self.cap as u64,
                        "moved {moved}"
                    );
                    if self.clean {
                        let want = self.model.pop_front().expect("a record nobody committed");
                        assert_eq!(
                            (tag, payload),
                            want,
                            "record differs from the one committed"
                        );
                    }
                }
                Err(e) => {
                    self.check_peek_error(&e);
                    break;
                }
            }
        }
        self.after_consumer(&data, write_pos, pos0);
    }

    fn batch(&mut self, max: u8) {
        if self.cons.is_none() {
            return;
        }
        let max = usize::from(max % 64);
        let data = self.data();
        let write_pos = self.w64(WRITE_POS);
        let pos0 = self.cons.as_ref().unwrap().position();
        let (base, cap) = (self.base, self.cap);
        let mut seen = Vec::new();
        let got = self.cons.as_mut().unwrap().try_read_batch(max, |tag, p| {
            let a = p.as_ptr() as usize;
            assert!(
                a >= base + RECORD_HEADER && a + p.len() <= base + cap,
                "batch payload outside the data area"
            );
            seen.push((tag, p.to_vec()));
        });
        match got {
            Ok(n) => {
                assert_eq!(n, seen.len());
                assert!(n <= max && (n > 0 || max == 0));
                for (tag, p) in seen {
                    assert!(p.len() <= self.max_payload());
                    if self.clean {
                        let want = self.model.pop_front().expect("a record nobody committed");
                        assert_eq!((tag, p), want, "batch record differs");
                    }
                }
                if self.clean && n < max {
                    assert!(self.model.is_empty(), "batch stopped early while clean");
                }
            }
            Err(e) => {
                assert!(seen.is_empty());
                assert!(max > 0);
                self.check_peek_error(&e);
            }
        }
        self.after_consumer(&data, write_pos, pos0);
    }

    /// What a clean ring must answer to a reservation of `len`, and the producer's
    /// position after it (padding included, the record not).
    fn expected_reserve(&self, w: u64, len: usize) -> (Result<(), ReserveError>, u64) {
        let cap = self.cap as u64;
        if len > self.max_payload() {
            return (
                Err(ReserveError::TooLarge {
                    len,
                    max: self.max_payload(),
                }),
                w,
            );
        }
        if self.prod_closed || self.w32(CLOSED) & CLOSED_BY_CONSUMER != 0 {
            return (Err(ReserveError::Closed), w);
        }
        let r = self.w64(READ_POS);
        let used = w.wrapping_sub(r);
        let rec = record_size(len) as u64;
        let to_end = cap - (w & self.mask);
        let (mut w2, mut used2) = (w, used);
        if rec > to_end {
            if used + to_end > cap {
                return (Err(ReserveError::Full), w);
            }
            w2 = w2.wrapping_add(to_end);
            used2 += to_end;
        }
        if used2 + rec > cap {
            return (Err(ReserveError::Full), w2);
        }
        (Ok(()), w2)
    }

    fn reserve(&mut self, len: u64, action: u8, tag: u32, fill: u8, push: bool) {
        if self.prod.is_none() {
            return;
        }
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        let read_pos = self.w64(READ_POS);
        let w0 = self.prod.as_ref().unwrap().position();
        if self.clean {
            let c = self.cons.as_ref().unwrap();
            assert_eq!(
                read_pos,
                c.position(),
                "clean: consumer released all it read"
            );
        }
        let expected = self.clean.then(|| self.expected_reserve(w0, len));
        let max_payload = self.max_payload();
        let (base, cap) = (self.base, self.cap);
        // Even bytes: a stale payload word can never pass for a stamp (keys are odd), so
        // a clean ring's records are exactly the committed ones.
        let fill = fill & !1;
        let p = self.prod.as_mut().unwrap();
        let got: Result<bool, ReserveError> = if push {
            // Push lengths are u16: allocating them is cheap.
            p.try_push(tag, &vec![fill; len]).map(|()| true)
        } else {
            match p.try_reserve(len) {
                Ok(mut g) => {
                    assert_eq!(g.len(), len);
                    assert!(len <= max_payload);
                    let a = g.as_ptr() as usize;
                    assert!(
                        a >= base + RECORD_HEADER && a + len <= base + cap,
                        "grant outside the data area"
                    );
                    g.fill(fill);
                    match action % 3 {
                        // Dropped uncommitted: abandoned.
                        0 => Ok(false),
                        1 => {
                            g.commit(tag);
                            Ok(true)
                        }
                        _ => {
                            g.commit_deferred(tag);
                            Ok(true)
                        }
                    }
                }
                Err(e) => Err(e),
            }
        };
        let w1 = self.prod.as_ref().unwrap().position();
        match &got {
            Err(ReserveError::TooLarge { len: l, max }) => {
                assert_eq!((*l, *max), (len, max_payload));
                assert!(len > max_payload);
            }
            Err(ReserveError::Corrupt(c)) => {
                assert!(len <= max_payload);
                assert!(matches!(c, CorruptError::ReadPosition { .. }), "{c:?}");
            }
            Err(_) => assert!(len <= max_payload),
            Ok(_) => assert!(len <= max_payload),
        }
        if matches!(got, Ok(true)) || w1 != w0 {
            assert_eq!(self.w64(WRITE_POS), w1, "write_pos not published");
        }
        assert_eq!(w1 % 16, 0);
        assert_eq!(self.w64(READ_POS), read_pos, "the producer wrote read_pos");
        if let Some((want, w_after_pad)) = expected {
            let kind =
                |r: &Result<bool, ReserveError>| r.as_ref().map(|_| ()).map_err(|e| e.clone());
            assert_eq!(
                kind(&got),
                want,
                "reserve({len}) at {w0}, read_pos {read_pos}"
            );
            let want_pos = match got {
                Ok(true) => w_after_pad.wrapping_add(record_size(len) as u64),
                _ => w_after_pad,
            };
            assert_eq!(w1, want_pos, "producer position");
            if let Ok(true) = got {
                self.model.push_back((tag, vec![fill; len]));
            }
        }
        self.check_memory();
    }

    fn tamper_word(&mut self, which: u8, value: u64) {
        match which % 8 {
            0 => {
                self.ring_write(WRITE_POS, &value.to_le_bytes());
                self.clean = false;
            }
            1 => {
                self.ring_write(READ_POS, &value.to_le_bytes());
                self.clean = false;
            }
            2 => self.ring_write(CONSUMER_WAITING, &(value as u32).to_le_bytes()),
            3 => self.ring_write(PRODUCER_WAITING, &(value as u32).to_le_bytes()),
            4 => {
                self.ring_write(CLOSED, &(value as u32).to_le_bytes());
                self.clean = false;
            }
            5 => self.ring_write(MAGIC, &(value as u32).to_le_bytes()),
            6 => self.ring_write(CAPACITY, &value.to_le_bytes()),
            _ => self.ring_write(KEY, &value.to_le_bytes()),
        }
        // The attached ends read the meta words once, at attach: a change must not matter.
        let meta = self.ring_read(0, META_LEN);
        self.meta.copy_from_slice(&meta);
        self.tampered = true;
    }

    fn tamper_data(&mut self, off: u16, bytes: &[u8]) {
        let off = usize::from(off) % self.cap;
        let n = bytes.len().min(self.cap - off);
        self.ring_write(RING_HEADER_SIZE + off, &bytes[..n]);
        self.clean = false;
        self.tampered = true;
    }

    fn tamper_record(&mut self, base: u8, delta: i16, abs: u64, len: u32, tag: u32, x: u64) {
        let from = match base % 3 {
            0 => match &self.cons {
                Some(c) => c.position(),
                None => self.w64(READ_POS),
            },
            1 => match &self.prod {
                Some(p) => p.position(),
                None => self.w64(WRITE_POS),
            },
            _ => abs,
        };
        let pos = from.wrapping_add((i64::from(delta) * 16) as u64);
        let off = (pos & self.mask & !15) as usize;
        let stamp = pos ^ self.key ^ x;
        let word = u64::from(len) | u64::from(tag) << 32;
        self.ring_write(RING_HEADER_SIZE + off, &stamp.to_le_bytes());
        self.ring_write(RING_HEADER_SIZE + off + 8, &word.to_le_bytes());
        self.clean = false;
        self.tampered = true;
    }

    fn wait(&mut self, producer: bool, len: u16) {
        let mut spinner = Spinner::new(WaitStrategy::Park);
        let deadline = Some(Instant::now());
        let data = self.data();
        if producer {
            let len = usize::from(len).min(self.max_payload());
            let Some(w) = self.prod.as_ref().map(Producer::position) else {
                return;
            };
            let expected = self.clean.then(|| self.expected_reserve(w, len).0);
            let p = self.prod.as_mut().unwrap();
            let got = p.wait_for_space(len, &mut spinner, deadline, || true);
            assert!(matches!(got, Ok(()) | Err(WaitError::TimedOut)), "{got:?}");
            if let Some(want) = expected {
                // Closed by the consumer counts as ready; our own close does not (the
                // reserve after it fails at once, nobody waits).
                let consumer_closed = self.w32(CLOSED) & CLOSED_BY_CONSUMER != 0;
                if want.is_ok() || consumer_closed {
                    assert_eq!(
                        got,
                        Ok(()),
                        "room for {len} bytes, but wait_for_space timed out"
                    );
                }
            }
        } else {
            let write_pos = self.w64(WRITE_POS);
            let Some(c) = self.cons.as_mut() else { return };
            let got = c.wait(&mut spinner, deadline, || true);
            assert!(matches!(got, Ok(()) | Err(WaitError::TimedOut)), "{got:?}");
            assert_eq!(
                self.w64(WRITE_POS),
                write_pos,
                "the consumer wrote write_pos"
            );
            if self.clean && (!self.model.is_empty() || self.producer_closed_flag()) {
                assert_eq!(
                    got,
                    Ok(()),
                    "a record or the close is there, but wait timed out"
                );
            }
        }
        assert_eq!(self.data(), data, "a waiter wrote into the data area");
    }

    fn run(&mut self, op: &Op) {
        match op {
            Op::Peek(n) => self.peek(*n),
            Op::Batch(n) => self.batch(*n),
            Op::Reserve {
                len,
                action,
                tag,
                fill,
            } => self.reserve(*len, *action, *tag, *fill, false),
            Op::Push { tag, len, fill } => self.reserve((*len).into(), 1, *tag, *fill, true),
            Op::Word { which, value } => self.tamper_word(*which, *value),
            Op::Data { off, bytes } => self.tamper_data(*off, bytes),
            Op::Record {
                base,
                delta,
                abs,
                len,
                tag,
                stamp_xor,
            } => self.tamper_record(*base, *delta, *abs, *len, *tag, *stamp_xor),
            Op::Wait { producer, len } => self.wait(*producer, *len),
            Op::Notify => {
                if let Some(p) = &mut self.prod {
                    p.notify();
                }
            }
            Op::CloseProducer => {
                if let Some(p) = &mut self.prod {
                    p.close();
                    self.prod_closed = true;
                }
            }
            Op::CloseConsumer => {
                if let Some(c) = &mut self.cons {
                    c.close();
                }
            }
            Op::ReattachConsumer => {
                if let Some(c) = self.cons.take() {
                    c.detach();
                }
                if self.tampered {
                    self.clean = false;
                }
                self.attach_consumer();
            }
            Op::ReattachProducer => {
                if let Some(p) = self.prod.take() {
                    p.detach();
                }
                if self.tampered {
                    self.clean = false;
                }
                self.attach_producer();
            }
        }
        if self.cons.is_none() || self.prod.is_none() {
            self.clean = false;
        }
        self.check_memory();
    }
}

/// Target `ring_reader` (see the module docs). Input: [`RingInput::encode`]'s format.
#[allow(unsafe_code)]
pub fn ring_reader(data: &[u8]) {
    let input = RingInput::decode(data);
    let seg = segment();
    let cap = 128usize << (input.cap_sel % 4);
    // SAFETY: single-threaded, and no ring end of the previous input is still attached
    // (the harness dropped them), so nothing else accesses the segment.
    unsafe { seg.write_bytes(0, &[FILL; SEG_SIZE]) }.unwrap();
    // The data area starts zeroed, as a fresh memfd's.
    // SAFETY: as above.
    unsafe { seg.write_bytes(RING_OFF + RING_HEADER_SIZE, &[0; MAX_CAP][..cap]) }.unwrap();
    ring::init(seg, RING_OFF, cap).expect("ring fits");
    // SAFETY: only the address is taken; the word is not accessed through it.
    let base = unsafe { seg.atomic_u64(RING_OFF + RING_HEADER_SIZE) }
        .map(|a| a as *const _ as usize)
        .unwrap();
    let mut h = Harness {
        seg,
        cap,
        mask: cap as u64 - 1,
        base,
        // Odd, as the library's keys: stamps are odd, zeroed or even-filled words never match.
        key: input.key | 1,
        prod: None,
        cons: None,
        prod_closed: false,
        clean: true,
        tampered: false,
        model: VecDeque::new(),
        meta: [0; META_LEN],
    };
    h.ring_write(KEY, &h.key.to_le_bytes());
    let p = &input.pre;
    if let Some(s) = p.start {
        let s = s & !15;
        h.ring_write(WRITE_POS, &s.to_le_bytes());
        h.ring_write(READ_POS, &s.to_le_bytes());
    }
    if let Some(v) = p.write_pos {
        h.ring_write(WRITE_POS, &v.to_le_bytes());
        h.clean = false;
    }
    if let Some(v) = p.read_pos {
        h.ring_write(READ_POS, &v.to_le_bytes());
        h.clean = false;
    }
    if let Some((a, b, c)) = p.waits {
        h.ring_write(CONSUMER_WAITING, &a.to_le_bytes());
        h.ring_write(PRODUCER_WAITING, &b.to_le_bytes());
        h.ring_write(CLOSED, &c.to_le_bytes());
        h.clean = false;
    }
    if let Some((which, v)) = p.meta {
        match which % 4 {
            0 => h.ring_write(MAGIC, &(v as u32).to_le_bytes()),
            1 => h.ring_write(VERSION, &(v as u32).to_le_bytes()),
            2 => h.ring_write(CAPACITY, &v.to_le_bytes()),
            _ => h.ring_write(KEY, &v.to_le_bytes()),
        }
        h.key = h.w64(KEY);
        h.clean = false;
    }
    if !p.image.is_empty() {
        let n = p.image.len().min(cap);
        h.ring_write(RING_HEADER_SIZE, &p.image[..n]);
        h.clean = false;
    }
    let meta = h.ring_read(0, META_LEN);
    h.meta.copy_from_slice(&meta);
    h.attach_consumer();
    h.attach_producer();
    h.check_memory();
    for op in &input.ops {
        h.run(op);
    }
    // A clean ring drains to exactly what was committed, then reports the close.
    if h.clean {
        let closed = h.producer_closed_flag();
        let c = h.cons.as_mut().unwrap();
        let mut left = Vec::new();
        while left.len() <= h.model.len() {
            match c.try_peek() {
                Ok(g) => left.push((g.tag(), g.to_vec())),
                Err(e) => {
                    let want = if closed {
                        PeekError::Closed
                    } else {
                        PeekError::Empty
                    };
                    assert_eq!(e, want);
                    break;
                }
            }
        }
        assert_eq!(left, Vec::from(std::mem::take(&mut h.model)), "final drain");
        drop(h.prod.take()); // closes
        assert_eq!(
            h.cons.as_mut().unwrap().try_peek().err(),
            Some(PeekError::Closed)
        );
    }
    drop(h.prod.take());
    drop(h.cons.take());
    h.check_memory();
}
