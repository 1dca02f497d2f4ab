//! A lock-free single-producer single-consumer ring of variable-length records in shared
//! memory.
//!
//! # Layout
//!
//! ```text
//! +0    meta        magic "RING", version, capacity (power of two), key   (read-only)
//! +128  write_pos   total bytes published; producer writes, nobody polls it
//! +256  read_pos    total bytes released; consumer writes, producer reads when "full"
//! +384  wait words  consumer_waiting, producer_waiting (futex words), closed flags,
//!                   producer_claim and consumer_claim (@400, @408)
//! +512  data        capacity bytes of records
//! ```
//!
//! # One producer and one consumer
//!
//! Each end is attached at most once at a time: a claim word per end, set by
//! compare-and-swap on attach and cleared on drop or detach, refuses a second producer or
//! consumer (in any process following the protocol), and a registry in this process refuses
//! one even if the peer cleared the word. [`AttachError::AlreadyAttached`] names the holder's
//! pid. After the holder died, [`take_over_producer`] / [`take_over_consumer`] (`unsafe`:
//! the caller vouches that the holder is gone) attach anyway. A producer starts after every
//! record published from where `write_pos` says (a dead producer may have stored a
//! record's stamp but not yet `write_pos`), not on top of them.
//!
//! A record is a 16-byte header — `stamp: u64`, `len: u32` (bit 31 = padding), `tag: u32` —
//! followed by the payload, padded to 16 bytes. A record never crosses the end of the data
//! area: when it would, the producer first writes a padding record that fills the rest.
//!
//! # Publishing without a shared index per message
//!
//! The producer writes the payload and the length word, then stores the record's stamp,
//! `position ^ key`, with Release. The consumer polls the stamp at its own position with
//! Acquire: a match means the record is complete. So the consumer never reads the
//! producer's index on its hot path, and the only cache lines that move per message are the
//! ones holding the message itself — this is what makes small-message streaming run at tens
//! of millions of records per second instead of one cache-line round trip per record.
//!
//! Whatever the slot at the consumer's position held before must not match. An intact stamp
//! of an earlier lap encodes another position, and zeroed memory another value (the key is
//! odd). But a stale stamp whose low bytes a later payload overwrote would match once
//! those few bytes happen to (two positions a lap apart share their high bytes): one
//! chance in 65,536 for two bytes, a bug the property test found. So when it reserves a
//! record, the producer also overwrites the next record's slot with a value that is not its
//! stamp, when that slot lies in released space as far as the producer knows. Otherwise it
//! is the slot of the producer's cached `read_pos`: a header the producer wrote and has not
//! overwritten since (or, for a record that fills the ring, this record's own header),
//! which never holds `next ^ key`. The consumer reaches that slot only after its Acquire
//! load of the stamp published after the clearing, so it never sees the old contents.
//!
//! The consumer releases space by storing `read_pos` with Release; the producer reads it
//! with Acquire only when its cached copy says the ring is full.
//!
//! # The peer is untrusted
//!
//! Everything read from shared memory — stamps, length words, `read_pos` — is loaded once
//! into a local, validated, and only then used: a record must lie inside the data area, a
//! padding record must end exactly at the end, and `read_pos` must lie between the last
//! position we know was released and the one we wrote. A violation is a
//! [`CorruptError`]: never a panic, an out-of-bounds access, or a hang. A peer can still
//! scribble over payload bytes it has handed to us (it shares the memory), but it can never
//! move our reads or writes outside the data area.
//!
//! # Waking
//!
//! See [`wait`] for the park/wake protocol (futex for threads, eventfd for async tasks).

mod claim;
mod consumer;
mod layout;
mod probe;
mod producer;
pub mod wait;

use thiserror::Error;

pub use claim::End;
pub use consumer::{Consumer, PeekError, ReadGrant};
pub use layout::{
    record_size, ring_size, MAX_CAPACITY, MAX_POSITION, MIN_CAPACITY, RECORD_ALIGN, RECORD_HEADER,
    RING_HEADER_SIZE, RING_MAGIC, RING_VERSION,
};
pub use probe::{RingProbe, RingState};
pub use producer::{Producer, ReserveError, WriteGrant};
pub use wait::{Spinner, WaitError, WaitStrategy};

use crate::sync::Ordering;
use claim::{Claim, Mode};
use layout::RingMem;

/// Shared memory broke the ring's invariants: the peer is buggy or hostile. The connection
/// must be closed; nothing read from it can be trusted any more.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum CorruptError {
    /// `read_pos` moved backwards or beyond what was written.
    #[error("read position {read} outside [{released}, {written}]")]
    ReadPosition {
        /// Value read.
        read: u64,
        /// Last value seen before.
        released: u64,
        /// Producer's position.
        written: u64,
    },
    /// A record's length runs past the end of the data area or above the maximum.
    #[error("record at position {pos} claims {len} bytes, past the end of the data area")]
    RecordLength {
        /// Record position.
        pos: u64,
        /// Length claimed.
        len: u32,
    },
    /// A padding record that does not end exactly at the end of the data area.
    #[error("padding record at position {pos} claims {len} bytes; {expected} expected")]
    Padding {
        /// Record position.
        pos: u64,
        /// Length claimed.
        len: u32,
        /// The length that would end at the data area's end.
        expected: u64,
    },
    /// Positions recorded in the header are inconsistent (seen when attaching).
    #[error("header positions inconsistent: read {read}, write {write}, capacity {capacity}")]
    Positions {
        /// read_pos.
        read: u64,
        /// write_pos.
        write: u64,
        /// capacity.
        capacity: u64,
    },
}

/// Errors of attaching to (or initialising) a ring in a segment.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum AttachError {
    /// The ring would not fit in the segment at that offset, or is misaligned.
    #[error("ring of {size} bytes at offset {offset} does not fit a {segment}-byte segment (or is not 128-aligned)")]
    OutOfBounds {
        /// Offset requested.
        offset: usize,
        /// Ring size (header + data).
        size: usize,
        /// Segment payload size.
        segment: usize,
    },
    /// Not a ring.
    #[error("bad ring magic {0:#010x}")]
    BadMagic(u32),
    /// Incompatible ring version.
    #[error("ring version {found}, this library speaks {expected}")]
    VersionMismatch {
        /// Found.
        found: u32,
        /// Expected.
        expected: u32,
    },
    /// Capacity not a power of two in range, or different from what was expected.
    #[error("ring capacity {0} is not a power of two in [{MIN_CAPACITY}, {MAX_CAPACITY}]")]
    BadCapacity(u64),
    /// The header's positions are inconsistent.
    #[error(transparent)]
    Corrupt(#[from] CorruptError),
    /// That end of the ring is attached already, by this process or another one.
    #[error("the ring's {end} end is already attached by process {holder_pid}")]
    AlreadyAttached {
        /// The end asked for.
        end: End,
        /// The process holding it, as its claim records (a peer could have forged it).
        holder_pid: u32,
    },
    /// The ring overlaps another ring attached in this process in the same segment file.
    #[error(
        "ring at offset {offset} ({size} bytes) overlaps the ring at offset {other_offset} \
         ({other_size} bytes) attached in this process"
    )]
    Overlap {
        /// Offset requested.
        offset: usize,
        /// Ring size (header + data).
        size: usize,
        /// Offset of the attached ring it overlaps.
        other_offset: usize,
        /// Size of that ring.
        other_size: usize,
    },
    /// A system call on the segment failed.
    #[error("{op} of the segment failed")]
    Io {
        /// The operation that failed.
        op: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// Whether `cap` is a valid data-area size.
pub fn valid_capacity(cap: u64) -> bool {
    cap.is_power_of_two() && cap >= MIN_CAPACITY as u64 && cap <= MAX_CAPACITY as u64
}

/// A random 64-bit key for a new ring.
fn new_key() -> u64 {
    #[cfg(not(shmrpc_loom))]
    {
        let mut b = [0u8; 8];
        if rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::empty()).is_ok() {
            return u64::from_ne_bytes(b) | 1;
        }
        // No entropy: any key works for correctness; it only guards against coincidences.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        (t ^ u64::from(std::process::id()).rotate_left(32)) | 1
    }
    #[cfg(shmrpc_loom)]
    0x9e37_79b9_7f4a_7c15
}

fn init_header(mem: &RingMem, capacity: usize) {
    let h = mem.header();
    // Relaxed: the ring is published to others by whatever publishes the memory it lives
    // in (the segment's READY store, or handing the pair to another thread).
    h.meta.0.magic.store(RING_MAGIC, Ordering::Relaxed);
    h.meta.0.version.store(RING_VERSION, Ordering::Relaxed);
    h.meta.0.capacity.store(capacity as u64, Ordering::Relaxed);
    h.meta.0.key.store(new_key(), Ordering::Relaxed);
    h.write_pos.0.store(0, Ordering::Relaxed);
    h.read_pos.0.store(0, Ordering::Relaxed);
    h.wait.0.consumer_waiting.store(0, Ordering::Relaxed);
    h.wait.0.producer_waiting.store(0, Ordering::Relaxed);
    h.wait.0.closed.store(0, Ordering::Relaxed);
    h.wait.0.producer_claim.store(0, Ordering::Relaxed);
    h.wait.0.consumer_claim.store(0, Ordering::Relaxed);
}

/// What both ends learn when attaching: validated once, then kept in locals.
pub(crate) struct Attached {
    mem: RingMem,
    key: u64,
    read: u64,
    write: u64,
    /// Boxed: held for the handle's life but never touched on its hot path, so it should
    /// not make every `Producer`/`Consumer` (and what embeds them) larger.
    claim: Box<Claim>,
}

/// Checks the read-only words (magic, version, capacity): that the memory is a ring of
/// this version, and so has claim words, before anything is written to it.
fn validate_meta(mem: &RingMem, expected_capacity: usize) -> Result<(), AttachError> {
    let h = mem.header();
    let magic = h.meta.0.magic.load(Ordering::Acquire);
    if magic != RING_MAGIC {
        return Err(AttachError::BadMagic(magic));
    }
    let version = h.meta.0.version.load(Ordering::Relaxed);
    if version != RING_VERSION {
        return Err(AttachError::VersionMismatch {
            found: version,
            expected: RING_VERSION,
        });
    }
    let cap = mem.load_capacity_checked();
    if !valid_capacity(cap) || cap != expected_capacity as u64 {
        return Err(AttachError::BadCapacity(cap));
    }
    Ok(())
}

/// Loads and validates the positions, once the end is claimed (so they are the last
/// holder's final ones). On error the claim is dropped, releasing the end again.
fn validate_positions(mem: RingMem, claim: Claim, end: End) -> Result<Attached, AttachError> {
    let h = mem.header();
    let cap = mem.capacity() as u64;
    let key = h.meta.0.key.load(Ordering::Relaxed);
    // Acquire: pairs with the Release stores of the last producer/consumer attached, so a
    // re-attaching side sees the records and space they published.
    let read = h.read_pos.0.load(Ordering::Acquire);
    let recorded = h.write_pos.0.load(Ordering::Acquire);
    let align = RECORD_ALIGN as u64;
    // Both ends: a consumer attaching after it read such a record has `read_pos` past
    // `write_pos` too. Only the producer records the result (below).
    let write = if recorded <= MAX_POSITION && recorded % align == 0 {
        published_end(&mem, key, recorded)
    } else {
        recorded
    };
    if read > write
        || write > MAX_POSITION
        || write - read > cap
        || read % align != 0
        || write % align != 0
    {
        return Err(CorruptError::Positions {
            read,
            write: recorded,
            capacity: cap,
        }
        .into());
    }
    if end == End::Producer && write != recorded {
        // Release: as in `publish` (pairs with a later attach's Acquire load above and with
        // inspectors); the records themselves were published by their stamps.
        h.write_pos.0.store(write, Ordering::Release);
    }
    Ok(Attached {
        mem,
        key,
        read,
        write,
        claim: Box::new(claim),
    })
}

/// Where the last producer really stopped: `write_pos`, plus the records published after
/// it. A producer stores a record's stamp (which publishes it) before `write_pos`; one
/// that died between the two stores left a record the consumer may have read already (its
/// `read_pos` then lies past `write_pos`) or may be reading. A producer starting at
/// `write_pos` would write over that record, under the consumer's feet, and an end
/// attaching after the consumer read it would be refused as corrupt. So the records whose
/// stamps follow on from `write_pos` are skipped.
///
/// A slot holds its own position's stamp only if a record was published there. Stamps of
/// earlier laps encode other positions; and what a payload may have overwritten, the
/// producer cleared when it reserved the record ending at that position
/// (`Producer::clear_stamp`), except where no payload reaches: offset 0 (records never
/// cross the end), and the slot of the producer's cached `read_pos` when the record
/// filled the ring up to it, which holds that older record's own stamp. Each length is
/// loaded once and must keep the record inside the data area. Memory left alone ends the
/// walk within a lap (the slot it started at holds a stamp of the lap before); the bound of
/// a ring's worth is for a hostile peer that re-stamps slots while the walk runs: it then
/// only misplaces its own reading, and the attach's position check still applies.
fn published_end(mem: &RingMem, key: u64, write: u64) -> u64 {
    let cap = mem.capacity() as u64;
    let mut end = write;
    loop {
        let off = end & (cap - 1);
        // Acquire: pairs with the dead producer's Release store of the stamp (`publish`,
        // `write_padding`), so its length word is visible.
        if mem.word(off as usize).load(Ordering::Acquire) != end ^ key {
            return end;
        }
        let len_field = mem.word(off as usize + 8).load(Ordering::Relaxed) as u32;
        let to_end = cap - off;
        let rec = if len_field & layout::PAD_FLAG != 0 {
            to_end
        } else {
            record_size(len_field as usize) as u64
        };
        if rec > to_end || end + rec - write > cap {
            return end;
        }
        end += rec;
    }
}

#[cfg(not(shmrpc_loom))]
mod in_segment {
    use super::*;
    use crate::sys::Segment;
    use std::ptr::NonNull;
    use std::sync::Arc;

    /// Checks that a ring of `capacity` fits at `offset` and returns its base address.
    fn locate(seg: &Segment, offset: usize, capacity: usize) -> Result<NonNull<u8>, AttachError> {
        let (base, len) = seg.payload_raw();
        let size = ring_size(capacity);
        let fits = offset
            .checked_add(size)
            .is_some_and(|end| end <= len && offset % 128 == 0);
        if !fits || !valid_capacity(capacity as u64) {
            return Err(AttachError::OutOfBounds {
                offset,
                size,
                segment: len,
            });
        }
        // SAFETY: offset + size <= len (checked), so the result stays inside the payload.
        Ok(unsafe { base.add(offset) })
    }

    fn view(seg: &Arc<Segment>, offset: usize, capacity: usize) -> Result<RingMem, AttachError> {
        let base = locate(seg, offset, capacity)?;
        let owner: Arc<dyn Send + Sync> = seg.clone();
        // SAFETY: `locate` checked that the ring lies inside the segment's payload; the
        // payload starts SEGMENT_HEADER_SIZE (256) bytes into a page-aligned mapping and
        // the offset is a multiple of 128, so the ring is 128-aligned; the Arc<Segment>
        // clone keeps the mapping alive as long as the view.
        Ok(unsafe { RingMem::new(base, capacity, owner) })
    }

    fn file_id(seg: &Segment) -> Result<claim::registry::FileId, AttachError> {
        seg.file_id().map_err(|source| AttachError::Io {
            op: "fstat",
            source,
        })
    }

    /// Attaches `end`: checks the header's read-only words, registers the end in this
    /// process, claims it in the header, then loads the positions.
    fn attach(
        seg: &Arc<Segment>,
        offset: usize,
        capacity: usize,
        end: End,
        mode: Mode,
    ) -> Result<Attached, AttachError> {
        let mem = view(seg, offset, capacity)?;
        validate_meta(&mem, capacity)?;
        let local = claim::registry::register(file_id(seg)?, offset, ring_size(capacity), end)?;
        let claim = Claim::acquire(mem.clone_view(), end, mode, local)?;
        validate_positions(mem, claim, end)
    }

    /// Writes a fresh ring header of `capacity` data bytes at `offset` in `seg`. Call it
    /// from the segment's initialiser (before the segment is published to anyone else),
    /// never on a live ring: it resets the positions and the attach claims.
    ///
    /// # Errors
    /// [`AttachError::OutOfBounds`] if it does not fit or the capacity is invalid;
    /// [`AttachError::Overlap`] if it would write over another ring attached in this
    /// process (whose data area may be lent out as a slice right now).
    ///
    /// # Examples
    ///
    /// Two rings (one per direction) in one anonymous segment:
    ///
    /// ```
    /// use std::sync::Arc;
    /// use shmrpc::lowlevel::ring::{self, ring_size};
    /// use shmrpc::lowlevel::sys::Segment;
    ///
    /// let cap = 4096;
    /// let seg = Arc::new(Segment::anonymous(2 * ring_size(cap), 0, |s| {
    ///     ring::init(s, 0, cap).map_err(|e| e.to_string())?;
    ///     ring::init(s, ring_size(cap), cap).map_err(|e| e.to_string())
    /// })?);
    /// let mut tx = ring::producer(&seg, ring_size(cap), cap)?;
    /// let mut rx = ring::consumer(&seg, ring_size(cap), cap)?;
    /// tx.try_push(1, b"ping")?;
    /// assert_eq!(&*rx.try_peek().unwrap(), b"ping");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn init(seg: &Segment, offset: usize, capacity: usize) -> Result<(), AttachError> {
        let base = locate(seg, offset, capacity)?;
        claim::registry::check_init(file_id(seg)?, offset, ring_size(capacity))?;
        // The view only lives inside this function, while the borrow of `seg` keeps the
        // mapping alive, so it needs no owner of its own.
        let owner: Arc<dyn Send + Sync> = Arc::new(());
        // SAFETY: bounds and alignment checked by `locate` (see `view`); the mapping
        // outlives the view as explained above.
        let mem = unsafe { RingMem::new(base, capacity, owner) };
        init_header(&mem, capacity);
        Ok(())
    }

    /// Attaches the producing end to the ring at `offset` in `seg`, continuing from the
    /// positions recorded there. A ring has one producer at a time: until this one is
    /// dropped or detached, attaching another (here or in another process) is refused.
    ///
    /// # Errors
    /// [`AttachError::AlreadyAttached`] if a producer is attached (or its process died
    /// without detaching: see [`take_over_producer`]); otherwise see [`AttachError`].
    ///
    /// # Examples
    ///
    /// A detached producer leaves the ring open; a new one continues where it stopped:
    ///
    /// ```
    /// use std::sync::Arc;
    /// use shmrpc::lowlevel::ring::{self, ring_size};
    /// use shmrpc::lowlevel::sys::Segment;
    ///
    /// let cap = 4096;
    /// let seg = Arc::new(Segment::anonymous(ring_size(cap), 0, |s| {
    ///     ring::init(s, 0, cap).map_err(|e| e.to_string())
    /// })?);
    /// let mut rx = ring::consumer(&seg, 0, cap)?;
    /// let mut tx = ring::producer(&seg, 0, cap)?;
    /// tx.try_push(1, b"first")?;
    /// tx.detach();
    /// let mut tx = ring::producer(&seg, 0, cap)?;
    /// assert_eq!(tx.position(), 32);
    /// tx.try_push(2, b"second")?;
    /// assert_eq!(rx.try_read_batch(10, |_, _| {})?, 2);
    /// // One producer at a time.
    /// assert!(matches!(
    ///     ring::producer(&seg, 0, cap),
    ///     Err(ring::AttachError::AlreadyAttached { end: ring::End::Producer, .. })
    /// ));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn producer(
        seg: &Arc<Segment>,
        offset: usize,
        capacity: usize,
    ) -> Result<Producer, AttachError> {
        attach(seg, offset, capacity, End::Producer, Mode::Exclusive).map(Producer::new)
    }

    /// Attaches the consuming end to the ring at `offset` in `seg`, continuing from the
    /// positions recorded there. One consumer at a time, as for [`producer`].
    ///
    /// # Errors
    /// [`AttachError::AlreadyAttached`] if a consumer is attached (see
    /// [`take_over_consumer`]); otherwise see [`AttachError`].
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    /// use shmrpc::lowlevel::ring::{self, ring_size, AttachError};
    /// use shmrpc::lowlevel::sys::Segment;
    ///
    /// let cap = 4096;
    /// let seg = Arc::new(Segment::anonymous(ring_size(cap), 0, |s| {
    ///     ring::init(s, 0, cap).map_err(|e| e.to_string())
    /// })?);
    /// assert_eq!(ring::consumer(&seg, 0, cap)?.capacity(), cap);
    /// // Attaching with a different capacity than the header records is refused.
    /// assert!(matches!(ring::consumer(&seg, 0, 2048), Err(AttachError::BadCapacity(4096))));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn consumer(
        seg: &Arc<Segment>,
        offset: usize,
        capacity: usize,
    ) -> Result<Consumer, AttachError> {
        attach(seg, offset, capacity, End::Consumer, Mode::Exclusive).map(Consumer::new)
    }

    /// Attaches the producing end even though the ring's header records another holder:
    /// recovery after the process that held it died without detaching. A producer
    /// attached in this process is still refused ([`AttachError::AlreadyAttached`]).
    ///
    /// # Safety
    /// The holder recorded in the ring (the `holder_pid` of the refused
    /// [`producer`] call) must never access this ring again: its process has exited, and
    /// this process has observed that (e.g. `waitpid`, a pidfd, or the peer's end of a
    /// socket closing), so that the dead holder's writes happen before ours. If it is
    /// still alive, two producers write the same ring memory while this process lends it
    /// out as `&mut [u8]`.
    ///
    /// # Errors
    /// As [`producer`], but never for a claim held by another process.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::atomic::Ordering;
    /// use std::sync::Arc;
    /// use shmrpc::lowlevel::ring::{self, ring_size, AttachError};
    /// use shmrpc::lowlevel::sys::Segment;
    ///
    /// let cap = 4096;
    /// let seg = Arc::new(Segment::anonymous(ring_size(cap), 0, |s| {
    ///     ring::init(s, 0, cap).map_err(|e| e.to_string())
    /// })?);
    /// // The header names a producer of process 4242, which died without detaching.
    /// // SAFETY: the claim word is only ever accessed atomically.
    /// let claim = unsafe { seg.atomic_u64(400) }.unwrap();
    /// claim.store(4242 << 32 | 1, Ordering::Relaxed);
    /// let e = ring::producer(&seg, 0, cap).unwrap_err();
    /// assert!(matches!(e, AttachError::AlreadyAttached { holder_pid: 4242, .. }));
    /// // SAFETY: process 4242 is gone (here it never existed) and never touches the ring.
    /// let mut tx = unsafe { ring::take_over_producer(&seg, 0, cap)? };
    /// tx.try_push(1, b"recovered")?;
    /// // Our own producer is never taken over, not even by this function.
    /// // SAFETY: as above (the call is refused anyway).
    /// let again = unsafe { ring::take_over_producer(&seg, 0, cap) };
    /// assert!(matches!(again, Err(AttachError::AlreadyAttached { .. })));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub unsafe fn take_over_producer(
        seg: &Arc<Segment>,
        offset: usize,
        capacity: usize,
    ) -> Result<Producer, AttachError> {
        attach(seg, offset, capacity, End::Producer, Mode::TakeOver).map(Producer::new)
    }

    /// Attaches the consuming end even though the ring's header records another holder;
    /// see [`take_over_producer`].
    ///
    /// # Safety
    /// As for [`take_over_producer`]: the recorded consumer must never access this ring
    /// again (its process exited, and this process observed the exit).
    ///
    /// # Errors
    /// As [`consumer`], but never for a claim held by another process.
    pub unsafe fn take_over_consumer(
        seg: &Arc<Segment>,
        offset: usize,
        capacity: usize,
    ) -> Result<Consumer, AttachError> {
        attach(seg, offset, capacity, End::Consumer, Mode::TakeOver).map(Consumer::new)
    }

    /// Errors of [`channel`].
    #[derive(Debug, Error)]
    pub enum ChannelError {
        /// Invalid capacity.
        #[error("ring capacity {0} is not a power of two in [{MIN_CAPACITY}, {MAX_CAPACITY}]")]
        BadCapacity(usize),
        /// Creating the anonymous segment failed.
        #[error(transparent)]
        Segment(#[from] crate::sys::CreateError),
    }

    /// A ring in a fresh anonymous segment, and both of its ends (for two threads or
    /// tasks of this process; the same code serves two processes).
    ///
    /// # Errors
    /// See [`ChannelError`].
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    /// use shmrpc::lowlevel::ring::{self, Spinner, WaitStrategy};
    ///
    /// let (mut tx, mut rx) = ring::channel(1 << 16)?;
    /// let t = std::thread::spawn(move || {
    ///     for i in 0..100u32 {
    ///         while tx.try_push(i, &i.to_le_bytes()).is_err() {
    ///             std::thread::yield_now();
    ///         }
    ///     }
    /// });
    /// let mut spinner = Spinner::new(WaitStrategy::default());
    /// let mut sum = 0;
    /// let mut n = 0;
    /// while n < 100 {
    ///     let deadline = Instant::now() + Duration::from_secs(10); // watchdog
    ///     rx.wait(&mut spinner, Some(deadline), || true)?;
    ///     n += rx.try_read_batch(64, |tag, _| sum += tag).unwrap_or(0);
    /// }
    /// t.join().unwrap();
    /// assert_eq!(sum, (0..100).sum::<u32>());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn channel(capacity: usize) -> Result<(Producer, Consumer), ChannelError> {
        if !valid_capacity(capacity as u64) {
            return Err(ChannelError::BadCapacity(capacity));
        }
        let seg = Arc::new(Segment::anonymous(ring_size(capacity), 0, |s| {
            init(s, 0, capacity).map_err(|e| e.to_string())
        })?);
        let p = producer(&seg, 0, capacity).map_err(|_| ChannelError::BadCapacity(capacity))?;
        let c = consumer(&seg, 0, capacity).map_err(|_| ChannelError::BadCapacity(capacity))?;
        Ok((p, c))
    }
}

#[cfg(not(shmrpc_loom))]
pub use in_segment::{
    channel, consumer, init, producer, take_over_consumer, take_over_producer, ChannelError,
};

/// Under loom: a ring on the heap with loom atomics, whose ends attach as in a segment
/// (claim words included; there is no file, so no registry).
#[cfg(shmrpc_loom)]
pub struct HeapRing {
    mem: RingMem,
}

#[cfg(shmrpc_loom)]
impl HeapRing {
    /// A fresh ring of `capacity` data bytes.
    pub fn new(capacity: usize) -> Self {
        let mem = RingMem::new_heap(capacity);
        init_header(&mem, capacity);
        Self { mem }
    }

    fn attach(&self, end: End) -> Result<Attached, AttachError> {
        let cap = self.mem.capacity();
        validate_meta(&self.mem, cap)?;
        let claim = Claim::acquire(self.mem.clone_view(), end, Mode::Exclusive)?;
        validate_positions(self.mem.clone_view(), claim, end)
    }

    /// Attaches the producing end.
    ///
    /// # Errors
    /// [`AttachError::AlreadyAttached`] while another producer is attached.
    pub fn producer(&self) -> Result<Producer, AttachError> {
        self.attach(End::Producer).map(Producer::new)
    }

    /// Attaches the consuming end.
    ///
    /// # Errors
    /// [`AttachError::AlreadyAttached`] while another consumer is attached.
    pub fn consumer(&self) -> Result<Consumer, AttachError> {
        self.attach(End::Consumer).map(Consumer::new)
    }
}

/// Under loom: a ring on the heap with loom atomics, and both ends.
#[cfg(shmrpc_loom)]
pub fn channel(capacity: usize) -> (Producer, Consumer) {
    let ring = HeapRing::new(capacity);
    let p = ring.producer().expect("fresh ring");
    let c = ring.consumer().expect("fresh ring");
    (p, c)
}
