//! The consuming end of a ring.

use std::ops::Deref;

use thiserror::Error;

use super::claim::Claim;
use super::layout::{
    record_size, RingMem, CLOSED_BY_CONSUMER, CLOSED_BY_PRODUCER, PAD_FLAG, RECORD_HEADER,
};
use super::wait;
use super::{Attached, CorruptError};
use crate::sync::{AtomicU32, Ordering};
use crate::sys::Doorbell;

/// Why no record could be read.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum PeekError {
    /// Nothing to read now.
    #[error("ring is empty")]
    Empty,
    /// The producer closed the ring and everything it sent has been read.
    #[error("ring closed by the producer")]
    Closed,
    /// The producer wrote an impossible record.
    #[error("ring corrupt")]
    Corrupt(#[from] CorruptError),
}

/// The consuming end of an SPSC ring. Exactly one per ring: attaching a second one is
/// refused ([`AttachError::AlreadyAttached`](super::AttachError::AlreadyAttached)).
pub struct Consumer {
    mem: RingMem,
    cap: u64,
    mask: u64,
    key: u64,
    /// Position of the next record to look at (local truth).
    read: u64,
    /// Last position published as `read_pos`.
    released: u64,
    /// Rung when the producer waits for space as an async task.
    producer_bell: Option<Doorbell>,
    closed: bool,
    /// How many times we had to wake the producer (each is a system call).
    wakes: u64,
    /// This end's claim on the ring; released when the handle drops (or detaches).
    _claim: Box<Claim>,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("capacity", &self.cap)
            .field("read", &self.read)
            .finish()
    }
}

/// A record located and validated by [`Consumer::locate`].
#[derive(Clone, Copy)]
struct Located {
    off: usize,
    len: usize,
    tag: u32,
    next: u64,
}

impl Consumer {
    pub(crate) fn new(a: Attached) -> Self {
        let cap = a.mem.capacity() as u64;
        Self {
            mem: a.mem,
            cap,
            mask: cap - 1,
            key: a.key,
            read: a.read,
            released: a.read,
            producer_bell: None,
            closed: false,
            wakes: 0,
            _claim: a.claim,
        }
    }

    /// The data area's size in bytes.
    pub fn capacity(&self) -> usize {
        self.cap as usize
    }

    /// A read-only view of this ring's header, for monitoring.
    pub fn inspector(&self) -> super::RingProbe {
        super::RingProbe::new(&self.mem)
    }

    /// Total bytes consumed so far (the position of the next record).
    pub fn position(&self) -> u64 {
        self.read
    }

    /// Sets the doorbell rung when the producer waits for space as an async task.
    pub fn set_producer_bell(&mut self, bell: Doorbell) {
        self.producer_bell = Some(bell);
    }

    /// Looks at the next record without consuming it. Dropping (or
    /// [`release`](ReadGrant::release)-ing) the grant consumes it.
    ///
    /// # Errors
    /// [`PeekError::Empty`] if nothing is there yet, [`Closed`](PeekError::Closed) once the
    /// producer closed and everything was read, [`Corrupt`](PeekError::Corrupt) if the
    /// producer wrote an impossible record.
    ///
    /// # Examples
    ///
    /// ```
    /// use shmrpc::lowlevel::ring::{self, PeekError};
    ///
    /// let (mut tx, mut rx) = ring::channel(4096).unwrap();
    /// assert!(matches!(rx.try_peek(), Err(PeekError::Empty)));
    /// tx.try_push(5, b"one").unwrap();
    /// drop(tx); // closes the ring; what was sent is still read
    /// {
    ///     let r = rx.try_peek().unwrap();
    ///     assert_eq!((r.tag(), &*r), (5, &b"one"[..]));
    /// } // the grant's drop consumes the record
    /// assert!(matches!(rx.try_peek(), Err(PeekError::Closed)));
    /// ```
    #[inline]
    pub fn try_peek(&mut self) -> Result<ReadGrant<'_>, PeekError> {
        let at = self.locate()?;
        Ok(ReadGrant { consumer: self, at })
    }

    /// Finds the next complete record at `self.read`, skipping padding; validates its
    /// header (loaded once into locals).
    #[inline]
    fn locate(&mut self) -> Result<Located, PeekError> {
        loop {
            let off = (self.read & self.mask) as usize;
            // Acquire: pairs with the producer's Release store of the stamp, so the length
            // word and payload written before it are visible.
            let stamp = self.mem.word(off).load(Ordering::Acquire);
            if stamp != self.read ^ self.key {
                return Err(self.empty_or_closed());
            }
            let word = self.mem.word(off + 8).load(Ordering::Relaxed);
            let len_field = word as u32;
            let tag = (word >> 32) as u32;
            let to_end = self.cap - off as u64;
            if len_field & PAD_FLAG != 0 {
                let len = len_field & !PAD_FLAG;
                if u64::from(len) + RECORD_HEADER as u64 != to_end {
                    return Err(CorruptError::Padding {
                        pos: self.read,
                        len: len_field,
                        expected: to_end - RECORD_HEADER as u64,
                    }
                    .into());
                }
                self.read += to_end;
                // Release the padding's space at once: the producer may be waiting for it
                // to write the record that follows.
                self.release_to(self.read);
                continue;
            }
            let len = len_field as usize;
            let rec = record_size(len) as u64;
            if rec > to_end {
                return Err(CorruptError::RecordLength {
                    pos: self.read,
                    len: len_field,
                }
                .into());
            }
            return Ok(Located {
                off,
                len,
                tag,
                next: self.read + rec,
            });
        }
    }

    #[cold]
    fn empty_or_closed(&self) -> PeekError {
        // Acquire: pairs with the Release `fetch_or` in `Producer::close`; if the flag is
        // set, every record published before the close is visible to the re-check below.
        let closed = self.mem.header().wait.0.closed.load(Ordering::Acquire);
        if closed & CLOSED_BY_PRODUCER == 0 {
            return PeekError::Empty;
        }
        let off = (self.read & self.mask) as usize;
        if self.mem.word(off).load(Ordering::Acquire) == self.read ^ self.key {
            PeekError::Empty // a last record slipped in before the close: read it first
        } else {
            PeekError::Closed
        }
    }

    /// Locates the next record (skipping padding) without consuming it: `Ok` if
    /// [`try_peek`](Self::try_peek) would now return one.
    #[cfg_attr(shmrpc_loom, allow(dead_code))]
    pub(crate) fn probe(&mut self) -> Result<(), PeekError> {
        self.locate().map(|_| ())
    }

    /// Whether a record (or the close) is there to be seen: the waiters' condition.
    #[inline]
    pub(crate) fn has_event(&self) -> bool {
        let off = (self.read & self.mask) as usize;
        self.mem.word(off).load(Ordering::Acquire) == self.read ^ self.key
            || self.mem.header().wait.0.closed.load(Ordering::Acquire) & CLOSED_BY_PRODUCER != 0
    }

    /// Reads up to `max` records, calling `f(tag, payload)` for each, and releases their
    /// space once at the end (one shared store and one wake check for the whole batch).
    /// Returns how many were read.
    ///
    /// # Errors
    /// As [`try_peek`](Self::try_peek), only if no record was read; a corrupt record after
    /// some good ones ends the batch early and is reported by the next call.
    ///
    /// # Examples
    ///
    /// ```
    /// use shmrpc::lowlevel::ring::{self, PeekError};
    ///
    /// let (mut tx, mut rx) = ring::channel(4096).unwrap();
    /// for i in 0..5u8 {
    ///     tx.try_push(u32::from(i), &[i]).unwrap();
    /// }
    /// let mut got = Vec::new();
    /// assert_eq!(rx.try_read_batch(3, |tag, p| got.push((tag, p[0]))).unwrap(), 3);
    /// assert_eq!(rx.try_read_batch(3, |tag, p| got.push((tag, p[0]))).unwrap(), 2);
    /// assert_eq!(got, [(0, 0), (1, 1), (2, 2), (3, 3), (4, 4)]);
    /// assert!(matches!(rx.try_read_batch(3, |_, _| {}), Err(PeekError::Empty)));
    /// ```
    pub fn try_read_batch(
        &mut self,
        max: usize,
        mut f: impl FnMut(u32, &[u8]),
    ) -> Result<usize, PeekError> {
        let mut n = 0;
        while n < max {
            match self.locate() {
                Ok(at) => {
                    f(at.tag, self.payload(at));
                    self.read = at.next;
                    n += 1;
                    // Give space back as we go once a good share of the ring is read: a
                    // producer waiting for room should not wait for the whole batch.
                    if self.read - self.released >= self.cap / 8 {
                        self.release_to(self.read);
                    }
                }
                Err(e) if n == 0 => return Err(e),
                Err(_) => break,
            }
        }
        self.release_to(self.read);
        Ok(n)
    }

    #[inline]
    fn payload(&self, at: Located) -> &[u8] {
        // SAFETY: `locate` validated that the record (header + padded payload) lies inside
        // the data area, so `off + RECORD_HEADER + len <= capacity`.
        let ptr = unsafe { self.mem.bytes_ptr(at.off + RECORD_HEADER, at.len) };
        // SAFETY: inside the data area (above); the producer does not touch the record
        // until we release past `at.next`, which cannot happen while this borrow of `self`
        // lives, and it is the ring's only producer in this process (attach claim and
        // registry). (A hostile producer could
        // still write these bytes: they are shared memory it maps. We never derive an index
        // from payload bytes, so that can garble the data but not our memory safety.)
        unsafe { std::slice::from_raw_parts(ptr, at.len) }
    }

    /// Publishes `read_pos = pos` and wakes the producer if it waits for space.
    #[inline]
    fn release_to(&mut self, pos: u64) {
        if pos == self.released {
            return;
        }
        self.released = pos;
        // Release: pairs with the producer's Acquire load of `read_pos` in `has_room`, so
        // our reads of the released records happen before it overwrites them.
        self.mem.header().read_pos.0.store(pos, Ordering::Release);
        if wait::notify(
            &self.mem.header().wait.0.producer_waiting,
            self.producer_bell.as_ref(),
        ) {
            self.wakes += 1;
        }
    }

    /// How many times this consumer found the producer asleep on a full ring and woke it.
    pub fn wakes(&self) -> u64 {
        self.wakes
    }

    /// Blocks until a record (or the close) is there, per `spinner`'s strategy, until
    /// `deadline`; `alive` is asked every [`LIVENESS_INTERVAL`](wait::LIVENESS_INTERVAL)
    /// while asleep. Follow with [`try_peek`](Self::try_peek) (which may still say `Empty`
    /// after a padding record: wait again).
    ///
    /// # Errors
    /// [`WaitError::TimedOut`](wait::WaitError::TimedOut) or
    /// [`WaitError::PeerGone`](wait::WaitError::PeerGone).
    pub fn wait(
        &mut self,
        spinner: &mut wait::Spinner,
        deadline: Option<std::time::Instant>,
        alive: impl FnMut() -> bool,
    ) -> Result<(), wait::WaitError> {
        let me = &*self;
        wait::block_until(me.wait_word(), spinner, deadline, || me.has_event(), alive)
    }

    /// The word this consumer sleeps on when the ring is empty.
    pub(crate) fn wait_word(&self) -> &AtomicU32 {
        &self.mem.header().wait.0.consumer_waiting
    }

    /// Closes the ring from the reading side: the producer's next reserve fails `Closed`.
    pub fn close(&mut self) {
        if !self.closed {
            self.closed = true;
            // Release: pairs with the producer's load of `closed` (a one-way flag).
            self.mem
                .header()
                .wait
                .0
                .closed
                .fetch_or(CLOSED_BY_CONSUMER, Ordering::Release);
            wait::notify(
                &self.mem.header().wait.0.producer_waiting,
                self.producer_bell.as_ref(),
            );
        }
    }

    /// Leaves the ring open for a consumer that attaches later.
    pub fn detach(mut self) {
        self.closed = true;
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        self.close();
    }
}

/// A record being read in place. Dereferences to its payload; dropping it (or calling
/// [`release`](Self::release)) gives its space back to the producer.
///
/// # Examples
///
/// ```
/// use shmrpc::lowlevel::ring;
///
/// let (mut tx, mut rx) = ring::channel(4096).unwrap();
/// tx.try_push(3, b"abc").unwrap();
/// let grant = rx.try_peek().unwrap();
/// assert_eq!((grant.tag(), grant.len(), &grant[..]), (3, 3, &b"abc"[..]));
/// assert_eq!(tx.queued(), 32); // still held by the grant
/// grant.release();
/// assert_eq!(tx.queued(), 0);
/// ```
pub struct ReadGrant<'a> {
    consumer: &'a mut Consumer,
    at: Located,
}

impl ReadGrant<'_> {
    /// The record's tag.
    pub fn tag(&self) -> u32 {
        self.at.tag
    }

    /// Consumes the record (same as dropping the grant).
    pub fn release(self) {}
}

impl Deref for ReadGrant<'_> {
    type Target = [u8];
    #[inline]
    fn deref(&self) -> &[u8] {
        self.consumer.payload(self.at)
    }
}

impl Drop for ReadGrant<'_> {
    #[inline]
    fn drop(&mut self) {
        self.consumer.read = self.at.next;
        self.consumer.release_to(self.at.next);
    }
}

impl std::fmt::Debug for ReadGrant<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadGrant")
            .field("tag", &self.at.tag)
            .field("len", &self.at.len)
            .finish()
    }
}
