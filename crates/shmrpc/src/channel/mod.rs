//! Duplex channels: two rings in one anonymous segment, plus doorbells and liveness.
//!
//! An [`Endpoint`] sends on one ring and receives on the other. Both ends are made the
//! same way whether they end up in two threads, two tokio tasks, or two processes: the
//! creator builds a sealed memfd segment holding both rings and four eventfd doorbells,
//! and each end maps the segment from its fd ([`pair`] does both in one process; a
//! [`Listener`] hands the fds to another process over a Unix socket). Atomics in a
//! `MAP_SHARED` mapping are coherent across cores, threads and processes alike, so there is
//! no separate "in-process" path to get wrong.
//!
//! Every operation comes in three forms: `try_*` (never waits), blocking (spin, then futex,
//! per the [`WaitStrategy`]), and `*_async` (spin briefly in the task, then await the
//! eventfd through tokio's `AsyncFd`). Async waits need a tokio runtime with its I/O and time
//! drivers enabled (`enable_all`).
//!
//! Waits re-check the peer's liveness every [`LIVENESS_INTERVAL`](crate::ring::wait::LIVENESS_INTERVAL):
//! for a peer in another process, the kernel's hang-up on the connection socket; so a
//! blocked call on a dead peer fails with `PeerGone` instead of hanging.
#![forbid(unsafe_code)]

mod endpoint;
mod handshake;
#[cfg(test)]
mod tests;

use std::io;
use std::sync::Arc;

use thiserror::Error;

pub use endpoint::{Endpoint, Message, Receiver, Sender};
pub use handshake::{
    connect, AcceptError, BindError, ConnectError, Hello, Listener, PendingClient,
    HANDSHAKE_TIMEOUT, HANDSHAKE_VERSION,
};

pub use crate::ring::{CorruptError, PeekError as TryRecvError, ReserveError as TrySendError};
pub use crate::ring::{WaitError, WaitStrategy};

use crate::ring::{self, ring_size};
use crate::sys::{Doorbell, Segment};

/// Recorded in the segment header of a duplex channel ("DPLX").
pub const SEGMENT_KIND_DUPLEX: u32 = u32::from_le_bytes(*b"DPLX");

/// How a channel is built and how it waits.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use shmrpc::channel::{ChannelConfig, WaitStrategy};
///
/// let cfg = ChannelConfig::default()
///     .with_capacity(1 << 20)
///     .with_wait(WaitStrategy::SpinThenPark { spin: Duration::from_micros(20) })
///     .with_allowed_uids(vec![1000]);
/// assert_eq!(cfg.capacity, 1 << 20);
/// assert_eq!(cfg.allowed_uids, [1000]);
/// assert_eq!(ChannelConfig::default().capacity, 256 * 1024);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ChannelConfig {
    /// Data bytes of each ring (a power of two, at least 128). The largest message is this
    /// less 16 bytes of record header.
    pub capacity: usize,
    /// How blocking and async operations wait.
    pub wait: WaitStrategy,
    /// Servers only: uids accepted besides the server's own (checked with `SO_PEERCRED`).
    /// Empty by default: only the same user may connect. (Other users also need access to
    /// the runtime directory, which is 0700.)
    pub allowed_uids: Vec<u32>,
}

impl Default for ChannelConfig {
    fn default() -> Self {
        Self {
            capacity: 256 * 1024,
            wait: WaitStrategy::default(),
            allowed_uids: Vec::new(),
        }
    }
}

impl ChannelConfig {
    /// This config with another ring capacity.
    ///
    /// # Examples
    ///
    /// ```
    /// use shmrpc::channel::{self, ChannelConfig, ChannelError};
    ///
    /// let (mut a, _b) = channel::pair(&ChannelConfig::default().with_capacity(4096))?;
    /// assert_eq!(a.sender().max_message(), 4096 - 16);
    /// // Not a power of two: refused.
    /// let bad = ChannelConfig::default().with_capacity(5000);
    /// assert!(matches!(channel::pair(&bad), Err(ChannelError::BadCapacity(5000))));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn with_capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity;
        self
    }

    /// This config with extra uids a server accepts.
    pub fn with_allowed_uids(mut self, uids: Vec<u32>) -> Self {
        self.allowed_uids = uids;
        self
    }

    /// This config with another wait strategy.
    ///
    /// # Examples
    ///
    /// ```
    /// use shmrpc::channel::{ChannelConfig, WaitStrategy};
    ///
    /// // Lowest latency, at the cost of a core busy-polling while waiting.
    /// let cfg = ChannelConfig::default().with_wait(WaitStrategy::Spin);
    /// assert_eq!(cfg.wait, WaitStrategy::Spin);
    /// ```
    pub fn with_wait(mut self, wait: WaitStrategy) -> Self {
        self.wait = wait;
        self
    }
}

/// Errors of building a channel (or of attaching to one received from a peer).
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ChannelError {
    /// The capacity is not a power of two in range.
    #[error("ring capacity {0} is not a power of two in [{min}, {max}]", min = ring::MIN_CAPACITY, max = ring::MAX_CAPACITY)]
    BadCapacity(u64),
    /// Creating the segment failed.
    #[error(transparent)]
    Create(#[from] crate::sys::CreateError),
    /// The segment from the peer is invalid.
    #[error(transparent)]
    Open(#[from] crate::sys::OpenError),
    /// The segment is not a duplex channel.
    #[error("segment kind {0:#010x} is not a duplex channel")]
    WrongKind(u32),
    /// A ring in the segment is invalid.
    #[error(transparent)]
    Attach(#[from] ring::AttachError),
    /// Duplicating the segment's fd failed.
    #[error("dup of the segment fd")]
    Dup(#[source] io::Error),
    /// Creating or adopting a doorbell failed.
    #[error("doorbell")]
    Doorbell(#[source] io::Error),
}

/// Errors of blocking and async sends.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SendError {
    /// The message can never fit in the ring.
    #[error("message of {len} bytes is larger than the largest the ring carries ({max})")]
    TooLarge {
        /// Message length.
        len: usize,
        /// Largest payload.
        max: usize,
    },
    /// The receiving end closed the channel.
    #[error("channel closed by the receiver")]
    Closed,
    /// Shared memory is corrupt: close the channel.
    #[error("channel corrupt")]
    Corrupt(#[from] CorruptError),
    /// The deadline passed with the ring still full.
    #[error("send timed out")]
    TimedOut,
    /// The peer process is gone.
    #[error("peer is gone")]
    PeerGone,
    /// Registering with the async runtime failed (no runtime?).
    #[error("async runtime")]
    Io(#[source] io::Error),
}

/// Errors of blocking and async receives.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum RecvError {
    /// The sending end closed the channel and everything it sent has been received.
    #[error("channel closed by the sender")]
    Closed,
    /// Shared memory is corrupt: close the channel.
    #[error("channel corrupt")]
    Corrupt(#[from] CorruptError),
    /// The deadline passed with nothing received.
    #[error("receive timed out")]
    TimedOut,
    /// The peer process is gone.
    #[error("peer is gone")]
    PeerGone,
    /// Registering with the async runtime failed (no runtime?).
    #[error("async runtime")]
    Io(#[source] io::Error),
}

impl From<WaitError> for SendError {
    fn from(e: WaitError) -> Self {
        match e {
            WaitError::TimedOut => SendError::TimedOut,
            WaitError::PeerGone => SendError::PeerGone,
        }
    }
}

impl From<WaitError> for RecvError {
    fn from(e: WaitError) -> Self {
        match e {
            WaitError::TimedOut => RecvError::TimedOut,
            WaitError::PeerGone => RecvError::PeerGone,
        }
    }
}

/// Which end of a duplex channel: `A` sends on ring 0 and receives on ring 1; `B` the
/// opposite. The creator (server) is `A`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The creating end.
    A,
    /// The attaching end.
    B,
}

// The four doorbells, in the order they are created and passed:
//   0: data on ring 0   (B waits, A rings)      1: space on ring 0  (A waits, B rings)
//   2: data on ring 1   (A waits, B rings)      3: space on ring 1  (B waits, A rings)
// One per waiting role, not per side: a task awaiting data and another awaiting space on
// the same side must not steal each other's wake-ups by draining a shared eventfd.

/// Where each ring lives in a duplex segment with rings of `c0` and `c1` data bytes.
fn ring_offsets(c0: usize) -> (usize, usize) {
    (0, ring_size(c0))
}

/// Creates the segment of a duplex channel (both rings initialised) and its four doorbells.
fn create_segment(cfg: &ChannelConfig) -> Result<(Arc<Segment>, [Doorbell; 4]), ChannelError> {
    let cap = cfg.capacity;
    if !ring::valid_capacity(cap as u64) {
        return Err(ChannelError::BadCapacity(cap as u64));
    }
    let (o0, o1) = ring_offsets(cap);
    let seg = Segment::anonymous(o1 + ring_size(cap), SEGMENT_KIND_DUPLEX, |s| {
        s.param(0)
            .expect("param 0")
            .store(cap as u64, std::sync::atomic::Ordering::Relaxed);
        s.param(1)
            .expect("param 1")
            .store(cap as u64, std::sync::atomic::Ordering::Relaxed);
        ring::init(s, o0, cap).map_err(|e| e.to_string())?;
        ring::init(s, o1, cap).map_err(|e| e.to_string())
    })?;
    let bell = || Doorbell::new().map_err(ChannelError::Doorbell);
    Ok((Arc::new(seg), [bell()?, bell()?, bell()?, bell()?]))
}

/// Attaches one end to a duplex segment (ours or a peer's: everything is validated).
fn attach(
    seg: &Arc<Segment>,
    side: Side,
    bells: [Doorbell; 4],
    cfg: &ChannelConfig,
    peer: endpoint::Peer,
) -> Result<Endpoint, ChannelError> {
    if seg.kind() != SEGMENT_KIND_DUPLEX {
        return Err(ChannelError::WrongKind(seg.kind()));
    }
    let load = |i| {
        seg.param(i)
            .map(|p| p.load(std::sync::atomic::Ordering::Relaxed))
            .unwrap_or(0)
    };
    let (c0, c1) = (load(0), load(1));
    for c in [c0, c1] {
        if !ring::valid_capacity(c) {
            return Err(ChannelError::BadCapacity(c));
        }
    }
    let (c0, c1) = (c0 as usize, c1 as usize);
    let (o0, o1) = ring_offsets(c0);
    let [r0_data, r0_space, r1_data, r1_space] = bells;
    let (producer, consumer, wait_space, wait_data) = match side {
        Side::A => {
            let mut p = ring::producer(seg, o0, c0)?;
            let mut c = ring::consumer(seg, o1, c1)?;
            p.set_consumer_bell(r0_data);
            c.set_producer_bell(r1_space);
            (p, c, r0_space, r1_data)
        }
        Side::B => {
            let mut p = ring::producer(seg, o1, c1)?;
            let mut c = ring::consumer(seg, o0, c0)?;
            p.set_consumer_bell(r1_data);
            c.set_producer_bell(r0_space);
            (p, c, r1_space, r0_data)
        }
    };
    let peer = Arc::new(peer);
    Ok(Endpoint::from_halves(
        Sender::new(producer, wait_space, cfg.wait, peer.clone()),
        Receiver::new(consumer, wait_data, cfg.wait, peer),
    ))
}

/// Both ends of a new duplex channel, for two threads or two tasks of this process.
///
/// The second end maps the segment again from a duplicate of its fd, exactly as another
/// process would: the same code path as a cross-process connection.
///
/// # Errors
/// See [`ChannelError`].
///
/// # Examples
///
/// A worker thread that sums the numbers it receives and answers with the total:
///
/// ```
/// use shmrpc::channel::{self, ChannelConfig, WaitStrategy};
///
/// let cfg = ChannelConfig::default()
///     .with_capacity(1 << 16)
///     .with_wait(WaitStrategy::Park);
/// let (mut main_end, mut worker_end) = channel::pair(&cfg)?;
/// let worker = std::thread::spawn(move || {
///     let mut total = 0u64;
///     loop {
///         let msg = worker_end.recv().unwrap();
///         if msg.is_empty() {
///             break; // an empty message means "that was all"
///         }
///         total += u64::from_le_bytes(msg[..8].try_into().unwrap());
///     }
///     worker_end.send(&total.to_le_bytes()).unwrap();
/// });
/// for n in 1..=10u64 {
///     main_end.send(&n.to_le_bytes())?;
/// }
/// main_end.send(b"")?;
/// let total = u64::from_le_bytes(main_end.recv()?[..8].try_into()?);
/// assert_eq!(total, 55);
/// worker.join().unwrap();
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn pair(cfg: &ChannelConfig) -> Result<(Endpoint, Endpoint), ChannelError> {
    let (seg, bells) = create_segment(cfg)?;
    let dup = |b: &Doorbell| b.try_clone().map_err(ChannelError::Doorbell);
    let bells_b = [
        dup(&bells[0])?,
        dup(&bells[1])?,
        dup(&bells[2])?,
        dup(&bells[3])?,
    ];
    let fd = seg.fd().try_clone_to_owned().map_err(ChannelError::Dup)?;
    let seg_b = Arc::new(Segment::from_fd(fd)?);
    let a = attach(&seg, Side::A, bells, cfg, endpoint::Peer::SameProcess)?;
    let b = attach(&seg_b, Side::B, bells_b, cfg, endpoint::Peer::SameProcess)?;
    Ok((a, b))
}
