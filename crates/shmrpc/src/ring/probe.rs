//! A read-only look at a ring's shared header, for monitoring (`shmrpc inspect`).

use super::layout::RingMem;
use crate::sync::Ordering;

/// What a ring's header says now. Every value comes from shared memory that the peer can
/// write, so it is reported, never trusted: `queued` is clamped to `[0, capacity]`.
///
/// # Examples
///
/// ```
/// use shmrpc::lowlevel::ring;
///
/// let (mut tx, mut rx) = ring::channel(4096).unwrap();
/// tx.try_push(0, &[0u8; 16]).unwrap();
/// let before = rx.inspector().state();
/// assert_eq!((before.write_pos, before.queued), (32, 32));
/// drop(rx.try_peek().unwrap());
/// let after = tx.inspector().state();
/// assert_eq!((after.read_pos, after.queued, after.closed), (32, 0, 0));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RingState {
    /// Data bytes of the ring.
    pub capacity: u64,
    /// Bytes ever published by the producer.
    pub write_pos: u64,
    /// Bytes ever released by the consumer.
    pub read_pos: u64,
    /// Bytes published and not yet released (`write_pos − read_pos`, clamped).
    pub queued: u64,
    /// The consumer's waiting word: 0 awake, 1 asleep on the futex, 2 on its eventfd.
    pub consumer_waiting: u32,
    /// The producer's waiting word (it waits for room), as above.
    pub producer_waiting: u32,
    /// Close bits: 1 closed by the producer, 2 by the consumer.
    pub closed: u32,
}

/// A read-only view of one ring's header, from
/// [`Producer::inspector`](super::Producer::inspector) or
/// [`Consumer::inspector`](super::Consumer::inspector). It keeps the ring's memory mapped,
/// so it can outlive both ends.
///
/// # Examples
///
/// ```
/// use shmrpc::lowlevel::ring;
///
/// let (tx, rx) = ring::channel(4096).unwrap();
/// let probe = rx.inspector();
/// drop((tx, rx));
/// assert_eq!(probe.state().closed, 1 | 2); // closed by both ends
/// ```
pub struct RingProbe {
    mem: RingMem,
}

impl std::fmt::Debug for RingProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RingProbe")
            .field("state", &self.state())
            .finish()
    }
}

impl RingProbe {
    pub(crate) fn new(mem: &RingMem) -> Self {
        Self {
            mem: mem.clone_view(),
        }
    }

    /// Reads the header now (each word once, with Acquire: pairs with the owners' Release
    /// stores of `write_pos`/`read_pos`; the waiting words are hints).
    pub fn state(&self) -> RingState {
        let h = self.mem.header();
        let capacity = self.mem.capacity() as u64;
        let write_pos = h.write_pos.0.load(Ordering::Acquire);
        let read_pos = h.read_pos.0.load(Ordering::Acquire);
        RingState {
            capacity,
            write_pos,
            read_pos,
            queued: write_pos.saturating_sub(read_pos).min(capacity),
            consumer_waiting: h.wait.0.consumer_waiting.load(Ordering::Relaxed),
            producer_waiting: h.wait.0.producer_waiting.load(Ordering::Relaxed),
            closed: h.wait.0.closed.load(Ordering::Relaxed),
        }
    }
}
