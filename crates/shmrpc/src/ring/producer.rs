//! The producing end of a ring.

use std::ops::{Deref, DerefMut};

use thiserror::Error;

use super::claim::Claim;
use super::layout::{
    record_size, RingMem, CLOSED_BY_CONSUMER, CLOSED_BY_PRODUCER, PAD_FLAG, RECORD_HEADER,
};
use super::wait;
use super::{Attached, CorruptError};
use crate::sync::{AtomicU32, Ordering};
use crate::sys::Doorbell;

/// Why a record could not be reserved.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ReserveError {
    /// Not enough free space now; retry after the consumer has read.
    #[error("ring is full")]
    Full,
    /// The record can never fit in this ring.
    #[error("record of {len} bytes can never fit; the largest is {max}")]
    TooLarge {
        /// Length asked for.
        len: usize,
        /// Largest payload this ring carries.
        max: usize,
    },
    /// The consumer closed its end.
    #[error("ring closed by the consumer")]
    Closed,
    /// The consumer wrote an impossible `read_pos`.
    #[error("ring corrupt")]
    Corrupt(#[from] CorruptError),
}

/// The producing end of an SPSC ring. Exactly one per ring: attaching a second one is
/// refused ([`AttachError::AlreadyAttached`](super::AttachError::AlreadyAttached)).
///
/// Dropping it closes the ring: the consumer drains what was sent, then sees `Closed`.
/// Use [`detach`](Self::detach) to leave the ring open for a later producer instead.
pub struct Producer {
    mem: RingMem,
    cap: u64,
    mask: u64,
    key: u64,
    /// Next position to write (local truth; published as `write_pos`).
    write: u64,
    /// Last `read_pos` we loaded and validated.
    read_cache: u64,
    /// Rung when the consumer waits as an async task.
    consumer_bell: Option<Doorbell>,
    closed: bool,
    /// How many times we had to wake the consumer (each is a system call).
    wakes: u64,
    /// This end's claim on the ring; released when the handle drops (or detaches).
    _claim: Box<Claim>,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("capacity", &self.cap)
            .field("write", &self.write)
            .field("read_cache", &self.read_cache)
            .finish()
    }
}

impl Producer {
    pub(crate) fn new(a: Attached) -> Self {
        let cap = a.mem.capacity() as u64;
        Self {
            mem: a.mem,
            cap,
            mask: cap - 1,
            key: a.key,
            write: a.write,
            read_cache: a.read,
            consumer_bell: None,
            closed: false,
            wakes: 0,
            _claim: a.claim,
        }
    }

    /// The data area's size in bytes.
    pub fn capacity(&self) -> usize {
        self.cap as usize
    }

    /// The largest payload a record can carry: the data area less one record header.
    pub fn max_payload(&self) -> usize {
        self.cap as usize - RECORD_HEADER
    }

    /// Total bytes written so far (the position of the next record).
    pub fn position(&self) -> u64 {
        self.write
    }

    /// Sets the doorbell rung when the consumer waits as an async task.
    pub fn set_consumer_bell(&mut self, bell: Doorbell) {
        self.consumer_bell = Some(bell);
    }

    /// Whether the consumer has closed its end.
    pub fn is_closed(&self) -> bool {
        // Relaxed: a hint; the flag only ever goes from clear to set.
        self.mem.header().wait.0.closed.load(Ordering::Relaxed) & CLOSED_BY_CONSUMER != 0
    }

    /// Reserves room for a record with `len` payload bytes and returns a grant to write it
    /// in place. Nothing is visible to the consumer until the grant is committed.
    ///
    /// # Errors
    /// [`ReserveError::Full`] (retry later), [`TooLarge`](ReserveError::TooLarge) (never
    /// fits), [`Closed`](ReserveError::Closed), or [`Corrupt`](ReserveError::Corrupt).
    ///
    /// # Examples
    ///
    /// ```
    /// use shmrpc::lowlevel::ring::{self, ReserveError};
    ///
    /// let (mut tx, mut rx) = ring::channel(4096).unwrap();
    /// let mut grant = tx.try_reserve(5).unwrap();
    /// grant.copy_from_slice(b"hello"); // written in place, in the ring
    /// grant.commit(1);
    /// assert_eq!(&*rx.try_peek().unwrap(), b"hello");
    ///
    /// let too_big = tx.max_payload() + 1;
    /// assert!(matches!(tx.try_reserve(too_big), Err(ReserveError::TooLarge { .. })));
    /// ```
    #[inline]
    pub fn try_reserve(&mut self, len: usize) -> Result<WriteGrant<'_>, ReserveError> {
        if len > self.max_payload() {
            return Err(ReserveError::TooLarge {
                len,
                max: self.max_payload(),
            });
        }
        if self.closed || self.is_closed() {
            return Err(ReserveError::Closed);
        }
        let rec = record_size(len) as u64;
        let off = self.write & self.mask;
        let to_end = self.cap - off;
        if rec > to_end {
            // The record would cross the end: pad to the end first, on its own. Asking for
            // room for padding and record at once would refuse, forever, any record larger
            // than both halves around the current offset (up to half the ring).
            if !self.has_room(to_end)? {
                return Err(ReserveError::Full);
            }
            self.write_padding(off, to_end);
        }
        if !self.has_room(rec)? {
            return Err(ReserveError::Full);
        }
        // Now rather than at the commit: the store's cache miss overlaps the payload's
        // writes instead of holding back the stamp's. An abandoned grant leaves a cleared
        // slot in free space, which is harmless.
        self.clear_stamp(self.write + rec);
        Ok(WriteGrant {
            off: (self.write & self.mask) as usize,
            len,
            rec,
            producer: self,
        })
    }

    /// Copies `payload` into a new record tagged `tag` and publishes it.
    ///
    /// # Errors
    /// As [`try_reserve`](Self::try_reserve).
    ///
    /// # Examples
    ///
    /// ```
    /// use shmrpc::lowlevel::ring::{self, ReserveError};
    ///
    /// let (mut tx, mut rx) = ring::channel(128).unwrap();
    /// tx.try_push(7, &[1u8; 48]).unwrap();
    /// tx.try_push(7, &[2u8; 48]).unwrap();
    /// // 128 data bytes hold two 64-byte records: the third must wait for the consumer.
    /// assert!(matches!(tx.try_push(7, &[3u8; 48]), Err(ReserveError::Full)));
    /// drop(rx.try_peek().unwrap()); // consumes the first record, freeing its space
    /// tx.try_push(7, &[3u8; 48]).unwrap();
    /// ```
    #[inline]
    pub fn try_push(&mut self, tag: u32, payload: &[u8]) -> Result<(), ReserveError> {
        let mut g = self.try_reserve(payload.len())?;
        g.copy_from_slice(payload);
        g.commit(tag);
        Ok(())
    }

    /// Whether `need` bytes are free, reloading `read_pos` if the cached copy says no.
    #[inline]
    fn has_room(&mut self, need: u64) -> Result<bool, CorruptError> {
        if self.write + need - self.read_cache <= self.cap {
            return Ok(true);
        }
        // Acquire: pairs with the consumer's Release store of `read_pos` in `release`, so
        // the consumer's reads of the space we are about to reuse happened before.
        let read = self.mem.header().read_pos.0.load(Ordering::Acquire);
        // Validate once: it may only move forward, never past what we wrote, and stays on
        // the record grid.
        if read < self.read_cache || read > self.write || read % 16 != 0 {
            return Err(CorruptError::ReadPosition {
                read,
                released: self.read_cache,
                written: self.write,
            });
        }
        self.read_cache = read;
        Ok(self.write + need - read <= self.cap)
    }

    /// Whether a record of `len` payload bytes would fit now, or the ring was closed: the
    /// waiters' condition. Loads `read_pos` without validating or caching it; the retried
    /// reserve does both.
    pub(crate) fn space_or_closed(&self, len: usize) -> bool {
        let rec = record_size(len) as u64;
        let to_end = self.cap - (self.write & self.mask);
        // As in `try_reserve`: padding first (the retry writes it), then the record.
        let need = if rec <= to_end { rec } else { to_end };
        // Acquire: pairs with the consumer's Release store in `release_to`.
        let read = self.mem.header().read_pos.0.load(Ordering::Acquire);
        // Wrapping: a corrupt value counts as "ready" one way or the other, and the retried
        // reserve reports it.
        self.write.wrapping_add(need).wrapping_sub(read) <= self.cap || self.is_closed()
    }

    /// Whether a record of `len` payload bytes, and the padding before it if it does not
    /// fit before the ring's end, would both fit now, or the ring was closed. (Unlike
    /// [`space_or_closed`](Self::space_or_closed), which is ready once the padding fits.)
    /// Loads `read_pos` without validating or caching it: a corrupt value counts as
    /// "ready" one way or the other, and the reserve that follows reports it.
    pub(crate) fn record_fits_or_closed(&self, len: usize) -> bool {
        let rec = record_size(len) as u64;
        let to_end = self.cap - (self.write & self.mask);
        let need = if rec <= to_end { rec } else { to_end + rec };
        // Acquire: pairs with the consumer's Release store in `release_to`.
        let read = self.mem.header().read_pos.0.load(Ordering::Acquire);
        self.write.wrapping_add(need).wrapping_sub(read) <= self.cap || self.is_closed()
    }

    #[cold]
    fn write_padding(&mut self, off: u64, to_end: u64) {
        let off = off as usize;
        let len = (to_end as usize - RECORD_HEADER) as u32;
        self.mem
            .word(off + 8)
            .store(u64::from(len | PAD_FLAG), Ordering::Relaxed);
        // Release: pairs with the consumer's Acquire load of the stamp in `try_peek`.
        self.mem
            .word(off)
            .store(self.write ^ self.key, Ordering::Release);
        self.write += to_end;
        // Release: as in `publish`; a producer re-attaching after a detach must not start
        // before this padding record, which the consumer may already have skipped.
        self.mem
            .header()
            .write_pos
            .0
            .store(self.write, Ordering::Release);
        // The record that follows may not fit yet, and the consumer may be asleep: it
        // must see the padding, skip it and release the space we are about to wait for.
        self.notify();
    }

    /// Overwrites the header slot at position `next` (where the record after the one being
    /// reserved will start) with `!(next ^ key)`, which differs from its stamp in every
    /// byte. Called when the record is reserved, so it precedes the Release store of the
    /// stamp of the record that ends at `next`: the consumer looks at `next` only after its
    /// Acquire load of that stamp, so it sees this store (or the real stamp written later),
    /// never what was in the slot before. The grant's payload ends before `next`, so
    /// nothing the caller writes into it can undo the clearing.
    ///
    /// What was there may be anything: a stamp of an earlier lap with its low bytes
    /// overwritten by a later record's payload (or by an abandoned reservation) matches
    /// `next ^ key` as soon as those few bytes happen to, because the high bytes of two
    /// positions a lap or two apart agree. Only a slot in released space is written: when
    /// `next` is a full ring away from the cached `read_pos`, the slot is that position's:
    /// a header the producer wrote and has not overwritten since (or, for a record that
    /// fills the ring, this record's own header), which never holds `next ^ key`.
    #[inline]
    fn clear_stamp(&self, next: u64) {
        if next - self.read_cache < self.cap {
            // Relaxed: made visible by the Release store of the stamp of the record that
            // ends at `next` (in `publish`), which the consumer loads with Acquire.
            self.mem
                .word((next & self.mask) as usize)
                .store(!(next ^ self.key), Ordering::Relaxed);
        }
    }

    /// A read-only view of this ring's header, for monitoring.
    ///
    /// # Examples
    ///
    /// ```
    /// use shmrpc::lowlevel::ring;
    ///
    /// let (mut tx, rx) = ring::channel(4096).unwrap();
    /// let probe = tx.inspector();
    /// tx.try_push(0, b"abc").unwrap();
    /// let s = probe.state();
    /// assert_eq!((s.capacity, s.write_pos, s.read_pos, s.queued), (4096, 32, 0, 32));
    /// drop(rx);
    /// assert_eq!(probe.state().closed, 2); // closed by the consumer
    /// ```
    pub fn inspector(&self) -> super::RingProbe {
        super::RingProbe::new(&self.mem)
    }

    /// Bytes written and not yet released by the consumer (for monitoring). The consumer's
    /// `read_pos` is untrusted: a value outside `[0, written]` counts as "all of it".
    pub fn queued(&self) -> u64 {
        // Acquire: pairs with the consumer's Release store of `read_pos`.
        let read = self.mem.header().read_pos.0.load(Ordering::Acquire);
        self.write.saturating_sub(read).min(self.cap)
    }

    /// Wakes the consumer if it sleeps. Needed only after [`WriteGrant::commit_deferred`];
    /// [`WriteGrant::commit`] does it itself.
    ///
    /// # Examples
    ///
    /// ```
    /// use shmrpc::lowlevel::ring;
    ///
    /// let (mut tx, mut rx) = ring::channel(4096).unwrap();
    /// for i in 0..3u32 {
    ///     let mut g = tx.try_reserve(4).unwrap();
    ///     g.copy_from_slice(&i.to_le_bytes());
    ///     g.commit_deferred(i);
    /// }
    /// tx.notify(); // one wake check for the whole batch
    /// assert_eq!(rx.try_read_batch(10, |_, _| {}).unwrap(), 3);
    /// ```
    #[inline]
    pub fn notify(&mut self) {
        if wait::notify(
            &self.mem.header().wait.0.consumer_waiting,
            self.consumer_bell.as_ref(),
        ) {
            self.wakes += 1;
        }
    }

    /// How many times this producer found the consumer asleep and woke it (a system call
    /// each). Zero for a stream whose consumer keeps up without sleeping.
    pub fn wakes(&self) -> u64 {
        self.wakes
    }

    /// Blocks until a record of `len` payload bytes fits (or the ring is closed), per
    /// `spinner`'s strategy, until `deadline`; `alive` is asked every
    /// [`LIVENESS_INTERVAL`](wait::LIVENESS_INTERVAL) while asleep.
    ///
    /// # Errors
    /// [`WaitError::TimedOut`](wait::WaitError::TimedOut) or
    /// [`WaitError::PeerGone`](wait::WaitError::PeerGone).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    /// use shmrpc::lowlevel::ring::{self, ReserveError, Spinner, WaitError, WaitStrategy};
    ///
    /// let (mut tx, mut rx) = ring::channel(128).unwrap();
    /// tx.try_push(0, &[0u8; 100]).unwrap();
    /// assert!(matches!(tx.try_push(0, &[1u8; 100]), Err(ReserveError::Full)));
    /// let mut spinner = Spinner::new(WaitStrategy::Park);
    /// let soon = Some(Instant::now() + Duration::from_millis(5));
    /// assert_eq!(tx.wait_for_space(100, &mut spinner, soon, || true), Err(WaitError::TimedOut));
    ///
    /// let reader = std::thread::spawn(move || {
    ///     drop(rx.try_peek().unwrap()); // frees the space
    ///     rx
    /// });
    /// let watchdog = Some(Instant::now() + Duration::from_secs(10));
    /// tx.wait_for_space(100, &mut spinner, watchdog, || true).unwrap();
    /// tx.try_push(0, &[1u8; 100]).unwrap();
    /// drop(reader.join().unwrap());
    /// ```
    pub fn wait_for_space(
        &mut self,
        len: usize,
        spinner: &mut wait::Spinner,
        deadline: Option<std::time::Instant>,
        alive: impl FnMut() -> bool,
    ) -> Result<(), wait::WaitError> {
        let me = &*self;
        wait::block_until(
            me.wait_word(),
            spinner,
            deadline,
            || me.space_or_closed(len),
            alive,
        )
    }

    /// The word this producer sleeps on when the ring is full.
    pub(crate) fn wait_word(&self) -> &AtomicU32 {
        &self.mem.header().wait.0.producer_waiting
    }

    /// Closes the ring: the consumer reads what was sent, then sees `Closed`.
    pub fn close(&mut self) {
        if !self.closed {
            self.closed = true;
            // Release: pairs with the consumer's Acquire load of `closed`, so it sees every
            // record published before the close.
            self.mem
                .header()
                .wait
                .0
                .closed
                .fetch_or(CLOSED_BY_PRODUCER, Ordering::Release);
            self.notify();
        }
    }

    /// Leaves the ring open (positions and records intact) for a producer that attaches
    /// later, e.g. after this process restarts.
    pub fn detach(mut self) {
        self.closed = true; // suppress the close in Drop
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        self.close();
    }
}

/// A reserved, not yet published record. Write the payload through `DerefMut`, then
/// [`commit`](Self::commit). Dropping it without committing abandons the record.
///
/// # Examples
///
/// ```
/// use shmrpc::lowlevel::ring::{self, PeekError};
///
/// let (mut tx, mut rx) = ring::channel(4096).unwrap();
/// let mut g = tx.try_reserve(3).unwrap();
/// assert_eq!(g.len(), 3);
/// g.copy_from_slice(b"abc");
/// drop(g); // abandoned: the consumer never sees it
/// assert!(matches!(rx.try_peek(), Err(PeekError::Empty)));
/// ```
pub struct WriteGrant<'a> {
    producer: &'a mut Producer,
    off: usize,
    len: usize,
    rec: u64,
}

impl<'a> WriteGrant<'a> {
    /// Publishes the record with `tag` and wakes the consumer if it sleeps.
    ///
    /// # Examples
    ///
    /// ```
    /// use shmrpc::lowlevel::ring;
    ///
    /// let (mut tx, mut rx) = ring::channel(4096).unwrap();
    /// let mut g = tx.try_reserve(2).unwrap();
    /// g.copy_from_slice(b"hi");
    /// g.commit(42);
    /// let r = rx.try_peek().unwrap();
    /// assert_eq!((r.tag(), &*r), (42, &b"hi"[..]));
    /// ```
    #[inline]
    pub fn commit(self, tag: u32) {
        let p = self.publish(tag);
        p.notify();
    }

    /// Publishes the record without checking whether the consumer sleeps; call
    /// [`Producer::notify`] after a batch. Saves one fence per record.
    ///
    /// # Examples
    ///
    /// ```
    /// use shmrpc::lowlevel::ring;
    ///
    /// let (mut tx, mut rx) = ring::channel(4096).unwrap();
    /// tx.try_reserve(0).unwrap().commit_deferred(1);
    /// tx.try_reserve(0).unwrap().commit_deferred(2);
    /// tx.notify();
    /// let mut tags = Vec::new();
    /// rx.try_read_batch(10, |tag, _| tags.push(tag)).unwrap();
    /// assert_eq!(tags, [1, 2]);
    /// ```
    #[inline]
    pub fn commit_deferred(self, tag: u32) {
        self.publish(tag);
    }

    #[inline]
    fn publish(self, tag: u32) -> &'a mut Producer {
        let p = self.producer;
        let word = u64::from(self.len as u32) | (u64::from(tag) << 32);
        p.mem.word(self.off + 8).store(word, Ordering::Relaxed);
        // Release: pairs with the consumer's Acquire load of the stamp, which makes the
        // payload, the length word and the slot cleared after the record (in
        // `try_reserve`) visible before the record is seen.
        p.mem
            .word(self.off)
            .store(p.write ^ p.key, Ordering::Release);
        p.write += self.rec;
        // Release: pairs with the Acquire load in `validate_positions` (a consumer attaching
        // later) and with inspectors. Nobody polls it, so the line stays in our cache.
        p.mem.header().write_pos.0.store(p.write, Ordering::Release);
        p
    }

    /// The payload's length.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Deref for WriteGrant<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `try_reserve` checked that the record (header + payload) lies inside the
        // data area, so `off + RECORD_HEADER + len <= capacity`.
        let ptr = unsafe {
            self.producer
                .mem
                .bytes_ptr(self.off + RECORD_HEADER, self.len)
        };
        // SAFETY: the bytes are in the data area (above) and the consumer has released them
        // (they lie between read_pos + capacity and our write position). No other handle
        // in this process reaches them: this is the ring's only producer (its attach claim
        // and this process's registry refuse a second one), the consumer does not look at
        // them before we publish, and raw `Segment` access is `unsafe` with a contract that
        // excludes them. The slice borrows the grant, which borrows the producer, which
        // keeps the memory alive.
        unsafe { std::slice::from_raw_parts(ptr, self.len) }
    }
}

impl DerefMut for WriteGrant<'_> {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`: the record lies inside the data area.
        let ptr = unsafe {
            self.producer
                .mem
                .bytes_ptr(self.off + RECORD_HEADER, self.len)
        };
        // SAFETY: as in `deref`; the range is exclusively ours until published, and the
        // `&mut self` borrow makes this the only slice.
        unsafe { std::slice::from_raw_parts_mut(ptr, self.len) }
    }
}
