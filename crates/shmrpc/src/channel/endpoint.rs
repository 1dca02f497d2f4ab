//! The two halves of an endpoint and their blocking and async waits.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering as StdOrdering};
use std::sync::Arc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;

/// How often an idle async waiter re-checks its peer when the reactor watches the hang-up.
const ASYNC_RECHECK: Duration = Duration::from_secs(5);

use super::{RecvError, SendError, TryRecvError, TrySendError};
use crate::ring::wait::{self, Spinner, WaitStrategy, LIVENESS_INTERVAL, WAIT_BELL};
use crate::ring::{Consumer, PeekError, Producer, ReadGrant, ReserveError, WaitError};
use crate::sync::AtomicU32;
use crate::sys::Doorbell;

/// Who is at the other end, and how to tell that it is gone.
#[derive(Debug)]
pub(crate) enum Peer {
    /// Another thread or task of this process: alive as long as we are.
    SameProcess,
    /// Another process, connected by this socket: its hang-up means the peer died. The
    /// second field is a duplicate of the socket registered with the async runtime on first
    /// use, so async waiters learn of the hang-up from the reactor instead of polling.
    Socket(UnixStream, OnceLock<Option<AsyncFd<OwnedFd>>>),
}

impl Peer {
    pub(crate) fn is_alive(&self) -> bool {
        match self {
            Peer::SameProcess => true,
            Peer::Socket(s, _) => {
                use rustix::event::{poll, PollFd, PollFlags};
                let mut fds = [PollFd::new(s, PollFlags::RDHUP)];
                let zero = rustix::time::Timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                };
                match poll(&mut fds, Some(&zero)) {
                    Ok(0) => true,
                    Ok(_) => !fds[0]
                        .revents()
                        .intersects(PollFlags::RDHUP | PollFlags::HUP | PollFlags::ERR),
                    Err(_) => true,
                }
            }
        }
    }

    /// A peer in another process, connected by `sock`.
    ///
    /// Inside a tokio runtime the hang-up watch is registered at once, so a connection holds
    /// all its descriptors from the start (its fd count does not change when it first goes
    /// idle); elsewhere it is registered by the first async wait.
    pub(crate) fn socket(sock: UnixStream) -> Self {
        let watch = OnceLock::new();
        if tokio::runtime::Handle::try_current().is_ok() {
            let _ = watch.set(register_watch(&sock));
        }
        Peer::Socket(sock, watch)
    }

    /// Completes when the peer has hung up (never, for a peer in this process, or if the
    /// socket cannot be registered: then the periodic check in the waits still applies).
    async fn hung_up(&self) {
        let Peer::Socket(sock, watch) = self else {
            return std::future::pending().await;
        };
        let registered = watch.get_or_init(|| register_watch(sock));
        let Some(afd) = registered else {
            return std::future::pending().await;
        };
        loop {
            let Ok(mut guard) = afd.readable().await else {
                return std::future::pending().await;
            };
            if !self.is_alive() {
                return;
            }
            // Readable but alive: nothing is ever sent on this socket after the handshake,
            // so this is stale readiness; wait for the next event.
            guard.clear_ready();
        }
    }

    pub(crate) fn pid(&self) -> Option<u32> {
        match self {
            Peer::SameProcess => Some(std::process::id()),
            Peer::Socket(s, _) => crate::sys::fdpass::peer_credentials(s.as_fd())
                .ok()
                .map(|(pid, _)| pid),
        }
    }
}

/// A duplicate of the connection socket registered with the current runtime's reactor,
/// whose read readiness reports the peer's hang-up.
fn register_watch(sock: &UnixStream) -> Option<AsyncFd<OwnedFd>> {
    let dup = sock.try_clone().ok()?;
    crate::sys::doorbell::register_owned(OwnedFd::from(dup)).ok()
}

/// The doorbell this half waits on: plain until the first async wait registers it with
/// the runtime.
#[derive(Debug)]
enum Bell {
    Plain(Doorbell),
    Async(AsyncFd<Doorbell>),
    /// Only while switching from `Plain` to `Async`.
    Gone,
}

impl Bell {
    fn registered(&mut self) -> std::io::Result<&AsyncFd<Doorbell>> {
        if let Bell::Plain(_) = self {
            let Bell::Plain(b) = std::mem::replace(self, Bell::Gone) else {
                unreachable!("checked above")
            };
            // On failure the doorbell is lost, and so is the ability to wait: callers turn
            // the error into a failed operation, and the endpoint stays usable with try_*.
            *self = Bell::Async(b.into_async()?);
        }
        match self {
            Bell::Async(a) => Ok(a),
            _ => Err(std::io::Error::other("doorbell lost")),
        }
    }
}

/// Waits asynchronously until `ready()`: spin in the task up to the spinner's budget
/// (yielding to the runtime between rounds, so a peer task on the same thread can run),
/// then arm the waiting word as `WAIT_BELL` and await the doorbell.
///
/// A round is short (200 ns): a server's runtime may hold many connections, each with a
/// task spinning here, and every round a task spins while others have work is lost to
/// them (16 connections with 2 µs rounds served 0.56 M calls/s, with 200 ns 0.97 M); and
/// while another wait spins on the same thread, a round is a single look ([`Spinning`]).
async fn wait_async(
    word: &AtomicU32,
    bell: &mut Bell,
    spinner: &mut Spinner,
    deadline: Option<Instant>,
    mut ready: impl FnMut() -> bool,
    peer: &Peer,
) -> Result<(), WaitError> {
    if spinner.strategy() != WaitStrategy::Park {
        let budget = spinner.budget();
        let start = Instant::now();
        let mut last_check = start;
        let mut spun = false;
        let spinning = Spinning::enter();
        loop {
            let round = if spinning.shared() {
                Duration::ZERO
            } else {
                Duration::from_nanos(200)
            };
            if wait::spin_until(Some(round), deadline, &mut ready) {
                spun = true;
                break;
            }
            let elapsed = start.elapsed();
            if budget.is_some_and(|b| elapsed >= b) || deadline.is_some_and(|d| Instant::now() >= d)
            {
                break;
            }
            if budget.is_none() && last_check.elapsed() >= LIVENESS_INTERVAL {
                // Pure spin: still notice a dead peer now and then.
                last_check = Instant::now();
                if !peer.is_alive() {
                    return Err(WaitError::PeerGone);
                }
            }
            tokio::task::yield_now().await;
        }
        spinner.record(spun);
        if spun {
            return Ok(());
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(WaitError::TimedOut);
        }
    }
    let afd = bell.registered().map_err(|_| WaitError::PeerGone)?;
    let parked = spinner.park_started();
    loop {
        wait::arm(word, WAIT_BELL);
        if ready() {
            wait::disarm(word);
            spinner.after_park(parked);
            return Ok(());
        }
        // The reactor reports the peer's hang-up, so an idle waiter needs no periodic
        // wake-up; the long re-check is only a safety net.
        let nap = match deadline {
            None => ASYNC_RECHECK,
            Some(d) => {
                let now = Instant::now();
                if now >= d {
                    wait::disarm(word);
                    return Err(WaitError::TimedOut);
                }
                (d - now).min(ASYNC_RECHECK)
            }
        };
        tokio::select! {
            r = afd.readable() => {
                if let Ok(mut guard) = r {
                    // Drain the eventfd; if it was already empty, the readiness was stale.
                    if !matches!(afd.get_ref().drain(), Ok(true)) {
                        guard.clear_ready();
                    }
                }
            }
            () = peer.hung_up() => {}
            () = tokio::time::sleep(nap) => {}
            // Whenever this wait is polled, it looks at the ring too: the doorbell reaches
            // the task only once the runtime polled its I/O driver, and a poll before that
            // (by another task, on the task's behalf: an RPC caller waiting alone polls
            // its connection's read loop itself) would not see the message otherwise.
            () = std::future::poll_fn(|_| if ready() {
                std::task::Poll::Ready(())
            } else {
                std::task::Poll::Pending
            }) => {}
        }
        wait::disarm(word);
        if ready() {
            spinner.after_park(parked);
            return Ok(());
        }
        if !peer.is_alive() {
            return Err(WaitError::PeerGone);
        }
    }
}

/// The async waits spinning on one thread, counted so that each can tell whether it
/// spins alone. Several spinning at once (a runtime serving many connections, or a client
/// with many) take turns on the thread, and a 200 ns round that one spins in vain is lost
/// to the others and to the tasks with work: then a round is a single look. (16
/// connections × 16 calls in flight, two processes, `shmrpc-peers --only
/// peer.rpc.conns16.shmrpc`: the client's readers spun 15 % of its CPU; with single looks,
/// six alternating pairs, 1.27–1.38 → 1.44–1.50 M calls/s.) One wait alone on its thread,
/// the latency case, spins as before.
struct Spinning(Arc<AtomicUsize>);

thread_local! {
    static SPINNING: Arc<AtomicUsize> = Arc::new(AtomicUsize::new(0));
}

impl Spinning {
    /// Counts a wait that starts spinning on this thread until the guard drops. A task
    /// that moves to another thread meanwhile stays counted on the first one, where it
    /// began (a count it took is always given back to the same counter).
    fn enter() -> Self {
        // During the thread's teardown its counter may be gone: count on one of our own.
        let count = SPINNING
            .try_with(Arc::clone)
            .unwrap_or_else(|_| Arc::new(AtomicUsize::new(0)));
        // Relaxed: a hint for how long to spin; nothing is read through it.
        count.fetch_add(1, StdOrdering::Relaxed);
        Spinning(count)
    }

    /// Whether another wait spins on the thread where this one began.
    fn shared(&self) -> bool {
        // Relaxed: see `enter`.
        self.0.load(StdOrdering::Relaxed) > 1
    }
}

impl Drop for Spinning {
    fn drop(&mut self) {
        // Relaxed: see `enter`.
        self.0.fetch_sub(1, StdOrdering::Relaxed);
    }
}

/// The sending half of an endpoint.
#[derive(Debug)]
pub struct Sender {
    producer: Producer,
    bell: Bell,
    spinner: Spinner,
    peer: Arc<Peer>,
}

impl Sender {
    pub(crate) fn new(
        producer: Producer,
        bell: Doorbell,
        wait: WaitStrategy,
        peer: Arc<Peer>,
    ) -> Self {
        Self {
            producer,
            bell: Bell::Plain(bell),
            spinner: Spinner::new(wait),
            peer,
        }
    }

    /// The largest message this channel carries.
    pub fn max_message(&self) -> usize {
        self.producer.max_payload()
    }

    /// Sends `msg` if there is room now.
    ///
    /// # Errors
    /// [`TrySendError::Full`] when there is no room now; otherwise as [`send`](Self::send).
    ///
    /// # Examples
    ///
    /// ```
    /// use shmrpc::channel::{self, ChannelConfig, TrySendError};
    ///
    /// let (a, _b) = channel::pair(&ChannelConfig::default().with_capacity(128))?;
    /// let (mut tx, _rx) = a.split();
    /// tx.try_send(&[0u8; 100])?;
    /// // The 128-byte ring is full until the other end reads.
    /// assert!(matches!(tx.try_send(&[0u8; 100]), Err(TrySendError::Full)));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[inline]
    pub fn try_send(&mut self, msg: &[u8]) -> Result<(), TrySendError> {
        self.producer.try_push(0, msg)
    }

    /// Sends `msg` with a caller-defined `tag`, waiting for room per the wait strategy.
    ///
    /// # Errors
    /// See [`SendError`].
    #[inline]
    pub fn send_tagged(&mut self, tag: u32, msg: &[u8]) -> Result<(), SendError> {
        self.send_until(tag, msg, None)
    }

    /// Sends `msg`, waiting for room per the wait strategy.
    ///
    /// # Errors
    /// See [`SendError`].
    ///
    /// # Examples
    ///
    /// ```
    /// use shmrpc::channel::{self, ChannelConfig, SendError};
    ///
    /// let (a, mut b) = channel::pair(&ChannelConfig::default())?;
    /// let (mut tx, _rx) = a.split();
    /// tx.send(b"hello")?;
    /// assert_eq!(&*b.recv()?, b"hello");
    /// let too_big = vec![0u8; tx.max_message() + 1];
    /// assert!(matches!(tx.send(&too_big), Err(SendError::TooLarge { .. })));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[inline]
    pub fn send(&mut self, msg: &[u8]) -> Result<(), SendError> {
        self.send_until(0, msg, None)
    }

    /// Sends `msg`, waiting at most `timeout` for room.
    ///
    /// # Errors
    /// See [`SendError`]; [`SendError::TimedOut`] when the time ran out.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use shmrpc::channel::{self, ChannelConfig, SendError};
    ///
    /// let (a, _b) = channel::pair(&ChannelConfig::default().with_capacity(128))?;
    /// let (mut tx, _rx) = a.split();
    /// tx.send_timeout(&[0u8; 100], Duration::from_millis(5))?;
    /// // Nobody reads: the ring stays full.
    /// let r = tx.send_timeout(&[0u8; 100], Duration::from_millis(5));
    /// assert!(matches!(r, Err(SendError::TimedOut)));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn send_timeout(&mut self, msg: &[u8], timeout: Duration) -> Result<(), SendError> {
        self.send_until(0, msg, Some(Instant::now() + timeout))
    }

    fn send_until(
        &mut self,
        tag: u32,
        msg: &[u8],
        deadline: Option<Instant>,
    ) -> Result<(), SendError> {
        loop {
            match self.producer.try_push(tag, msg) {
                Ok(()) => return Ok(()),
                Err(ReserveError::Full) => {}
                Err(e) => return Err(convert_reserve(e)),
            }
            let peer = &self.peer;
            self.producer
                .wait_for_space(msg.len(), &mut self.spinner, deadline, || peer.is_alive())?;
        }
    }

    /// Sends `msg` from an async task, awaiting room per the wait strategy.
    ///
    /// # Errors
    /// See [`SendError`].
    ///
    /// # Examples
    ///
    /// ```
    /// use shmrpc::channel::{self, ChannelConfig};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let (a, b) = channel::pair(&ChannelConfig::default())?;
    /// let ((mut tx, _), (_, mut rx)) = (a.split(), b.split());
    /// tx.send_async(b"from a task").await?;
    /// assert_eq!(&*rx.recv_async().await?, b"from a task");
    /// # Ok(())
    /// # }
    /// ```
    pub async fn send_async(&mut self, msg: &[u8]) -> Result<(), SendError> {
        self.send_async_until(0, msg, None).await
    }

    /// [`send_async`](Self::send_async) with a tag and an optional deadline.
    ///
    /// # Errors
    /// See [`SendError`].
    pub async fn send_tagged_async(
        &mut self,
        tag: u32,
        msg: &[u8],
        deadline: Option<Instant>,
    ) -> Result<(), SendError> {
        self.send_async_until(tag, msg, deadline).await
    }

    async fn send_async_until(
        &mut self,
        tag: u32,
        msg: &[u8],
        deadline: Option<Instant>,
    ) -> Result<(), SendError> {
        loop {
            match self.producer.try_push(tag, msg) {
                Ok(()) => return Ok(()),
                Err(ReserveError::Full) => {}
                Err(e) => return Err(convert_reserve(e)),
            }
            self.sleep_until(deadline, |p| p.space_or_closed(msg.len()))
                .await?;
        }
    }

    /// Waits, per the wait strategy, until `ready` holds for the producer (the consumer
    /// wakes it as it frees room), `deadline` passes, or the peer dies. Cancel-safe.
    async fn sleep_until(
        &mut self,
        deadline: Option<Instant>,
        ready: impl Fn(&Producer) -> bool,
    ) -> Result<(), SendError> {
        if let Bell::Plain(_) = self.bell {
            self.bell.registered().map_err(SendError::Io)?;
        }
        let (p, peer) = (&self.producer, &self.peer);
        let ready = || ready(p);
        wait_async(
            p.wait_word(),
            &mut self.bell,
            &mut self.spinner,
            deadline,
            ready,
            peer,
        )
        .await?;
        Ok(())
    }

    /// Waits until a `len`-byte message would fit (with the padding before it, if any),
    /// or the ring was closed, without sending anything (the next send reports a close).
    /// Cancel-safe: a sender of bulk data waits here, free to give way to others' short
    /// messages, rather than in a send it must finish.
    ///
    /// # Errors
    /// [`SendError::PeerGone`] if the peer died meanwhile.
    pub(crate) async fn wait_room_async(&mut self, len: usize) -> Result<(), SendError> {
        loop {
            if self.producer.record_fits_or_closed(len) {
                return Ok(());
            }
            self.sleep_until(None, |p| p.record_fits_or_closed(len))
                .await?;
        }
    }

    /// The ring's capacity in bytes.
    pub(crate) fn capacity(&self) -> usize {
        self.producer.capacity()
    }

    /// Reserves room for a `len`-byte message to be written in place (zero-copy), waiting
    /// per the wait strategy. Commit the grant with a tag to send it.
    ///
    /// # Errors
    /// See [`SendError`].
    ///
    /// # Examples
    ///
    /// ```
    /// use shmrpc::channel::{self, ChannelConfig};
    ///
    /// let (a, mut b) = channel::pair(&ChannelConfig::default())?;
    /// let (mut tx, _rx) = a.split();
    /// let mut grant = tx.reserve(4)?;
    /// grant.copy_from_slice(&7u32.to_le_bytes()); // written straight into shared memory
    /// grant.commit(99);
    /// let msg = b.recv()?;
    /// assert_eq!((msg.tag(), &msg[..]), (99, &7u32.to_le_bytes()[..]));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn reserve(&mut self, len: usize) -> Result<crate::ring::WriteGrant<'_>, SendError> {
        loop {
            match self.producer.try_reserve(len) {
                Ok(_) => break,
                Err(ReserveError::Full) => {}
                Err(e) => return Err(convert_reserve(e)),
            }
            let peer = &self.peer;
            self.producer
                .wait_for_space(len, &mut self.spinner, None, || peer.is_alive())?;
        }
        // Room was there a moment ago and only we consume it: this cannot fail with Full.
        self.producer.try_reserve(len).map_err(convert_reserve)
    }

    /// Direct access to the ring's producer (zero-copy `try_reserve`, batched commits).
    pub fn producer(&mut self) -> &mut Producer {
        &mut self.producer
    }

    /// Whether the peer process is still there.
    pub fn peer_alive(&self) -> bool {
        self.peer.is_alive()
    }

    /// Closes the sending direction: the receiver drains what was sent, then sees `Closed`.
    pub fn close(&mut self) {
        self.producer.close();
    }
}

fn convert_reserve(e: ReserveError) -> SendError {
    match e {
        // Callers handle Full themselves; it can only get here through a lost race, which
        // for a single producer means the ring shrank under us: report it as corrupt-free
        // timeout rather than panic.
        ReserveError::Full => SendError::TimedOut,
        ReserveError::TooLarge { len, max } => SendError::TooLarge { len, max },
        ReserveError::Closed => SendError::Closed,
        ReserveError::Corrupt(c) => SendError::Corrupt(c),
    }
}

fn convert_peek(e: PeekError) -> RecvError {
    match e {
        PeekError::Empty => RecvError::TimedOut,
        PeekError::Closed => RecvError::Closed,
        PeekError::Corrupt(c) => RecvError::Corrupt(c),
    }
}

/// A received message, read in place from shared memory. Dereferences to its bytes;
/// dropping it frees its space in the ring.
pub type Message<'a> = ReadGrant<'a>;

/// The receiving half of an endpoint.
#[derive(Debug)]
pub struct Receiver {
    consumer: Consumer,
    bell: Bell,
    spinner: Spinner,
    peer: Arc<Peer>,
}

impl Receiver {
    pub(crate) fn new(
        consumer: Consumer,
        bell: Doorbell,
        wait: WaitStrategy,
        peer: Arc<Peer>,
    ) -> Self {
        Self {
            consumer,
            bell: Bell::Plain(bell),
            spinner: Spinner::new(wait),
            peer,
        }
    }

    /// Receives a message if one is there now.
    ///
    /// # Errors
    /// [`TryRecvError::Empty`] when nothing is there; `Closed` once the sender closed and
    /// everything was received; `Corrupt` if the peer broke the ring.
    ///
    /// # Examples
    ///
    /// ```
    /// use shmrpc::channel::{self, ChannelConfig, TryRecvError};
    ///
    /// let (mut a, b) = channel::pair(&ChannelConfig::default())?;
    /// let (_tx, mut rx) = b.split();
    /// assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));
    /// a.send(b"x")?;
    /// assert_eq!(&*rx.try_recv()?, b"x");
    /// drop(a); // closes a's sending direction
    /// assert!(matches!(rx.try_recv(), Err(TryRecvError::Closed)));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[inline]
    pub fn try_recv(&mut self) -> Result<Message<'_>, TryRecvError> {
        let r = self.consumer.try_peek();
        if let Ok(m) = &r {
            self.spinner.saw(m.len());
        }
        r
    }

    /// Receives the next message, waiting per the wait strategy. It never returns
    /// "nothing": it waits until a message, the close, the peer's death, or corruption.
    ///
    /// # Errors
    /// See [`RecvError`].
    ///
    /// # Examples
    ///
    /// ```
    /// use shmrpc::channel::{self, ChannelConfig, RecvError};
    ///
    /// let (a, b) = channel::pair(&ChannelConfig::default())?;
    /// let (_tx, mut rx) = b.split();
    /// let t = std::thread::spawn(move || {
    ///     let (mut tx, _rx) = a.split();
    ///     tx.send(b"one").unwrap();
    ///     // Dropping `tx` closes the direction once "one" was sent.
    /// });
    /// assert_eq!(&*rx.recv()?, b"one");
    /// assert!(matches!(rx.recv(), Err(RecvError::Closed)));
    /// t.join().unwrap();
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[inline]
    pub fn recv(&mut self) -> Result<Message<'_>, RecvError> {
        self.wait_blocking(None)?;
        self.take()
    }

    /// [`recv`](Self::recv), waiting at most `timeout`.
    ///
    /// # Errors
    /// See [`RecvError`]; [`RecvError::TimedOut`] when the time ran out.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use shmrpc::channel::{self, ChannelConfig, RecvError};
    ///
    /// let (_a, b) = channel::pair(&ChannelConfig::default())?;
    /// let (_tx, mut rx) = b.split();
    /// assert!(matches!(rx.recv_timeout(Duration::from_millis(5)), Err(RecvError::TimedOut)));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Message<'_>, RecvError> {
        self.wait_blocking(Some(Instant::now() + timeout))?;
        self.take()
    }

    /// Waits (blocking) until up to `max` messages can be read, then hands each to `f` and
    /// frees their space once for the whole batch. Returns how many were read (at least 1).
    ///
    /// # Errors
    /// See [`RecvError`].
    ///
    /// # Examples
    ///
    /// ```
    /// use shmrpc::channel::{self, ChannelConfig};
    ///
    /// let (mut a, b) = channel::pair(&ChannelConfig::default())?;
    /// let (_tx, mut rx) = b.split();
    /// for i in 0..3u32 {
    ///     a.sender().send_tagged(i, b"item")?;
    /// }
    /// let mut tags = Vec::new();
    /// let n = rx.recv_batch(16, |tag, payload| {
    ///     assert_eq!(payload, b"item");
    ///     tags.push(tag);
    /// })?;
    /// assert_eq!((n, tags), (3, vec![0, 1, 2]));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn recv_batch(
        &mut self,
        max: usize,
        f: impl FnMut(u32, &[u8]),
    ) -> Result<usize, RecvError> {
        self.wait_blocking(None)?;
        self.consumer.try_read_batch(max, f).map_err(convert_peek)
    }

    /// Receives up to `max` messages that are there now (see [`recv_batch`](Self::recv_batch)).
    ///
    /// # Errors
    /// As [`try_recv`](Self::try_recv).
    ///
    /// # Examples
    ///
    /// ```
    /// use shmrpc::channel::{self, ChannelConfig, TryRecvError};
    ///
    /// let (mut a, b) = channel::pair(&ChannelConfig::default())?;
    /// let (_tx, mut rx) = b.split();
    /// assert!(matches!(rx.try_recv_batch(8, |_, _| {}), Err(TryRecvError::Empty)));
    /// a.send(b"1")?;
    /// a.send(b"2")?;
    /// let mut got = Vec::new();
    /// assert_eq!(rx.try_recv_batch(8, |_, p| got.extend_from_slice(p))?, 2);
    /// assert_eq!(got, b"12");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn try_recv_batch(
        &mut self,
        max: usize,
        f: impl FnMut(u32, &[u8]),
    ) -> Result<usize, TryRecvError> {
        self.consumer.try_read_batch(max, f)
    }

    /// Blocks until a record (or the close, or corruption) is there to be seen. A padding
    /// record counts as an event; `try_peek` skips it, so loop until it yields something.
    fn wait_blocking(&mut self, deadline: Option<Instant>) -> Result<(), RecvError> {
        loop {
            match self.consumer.probe() {
                Err(PeekError::Empty) => {}
                _ => return Ok(()),
            }
            let peer = &self.peer;
            self.consumer
                .wait(&mut self.spinner, deadline, || peer.is_alive())?;
        }
    }

    /// Receives the next message from an async task, awaiting per the wait strategy.
    ///
    /// # Errors
    /// See [`RecvError`].
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use shmrpc::channel::{self, ChannelConfig};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let (a, b) = channel::pair(&ChannelConfig::default())?;
    /// let (mut tx, _) = a.split();
    /// let (_, mut rx) = b.split();
    /// let sender = tokio::spawn(async move { tx.send_async(b"later").await });
    /// // A watchdog: a lost wake-up fails instead of hanging.
    /// let msg = tokio::time::timeout(Duration::from_secs(10), rx.recv_async()).await??;
    /// assert_eq!(&*msg, b"later");
    /// drop(msg);
    /// sender.await??;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn recv_async(&mut self) -> Result<Message<'_>, RecvError> {
        self.wait_async(None).await?;
        self.take()
    }

    /// [`recv_async`](Self::recv_async) with a timeout.
    ///
    /// # Errors
    /// See [`RecvError`].
    pub async fn recv_async_timeout(
        &mut self,
        timeout: Duration,
    ) -> Result<Message<'_>, RecvError> {
        self.wait_async(Some(Instant::now() + timeout)).await?;
        self.take()
    }

    /// Waits until a message (or the close) is there, without reading it. Padding records
    /// met on the way are consumed, giving their space back: a producer may be waiting for
    /// it to write a record that does not fit before the ring's end.
    ///
    /// # Errors
    /// As [`recv_async`](Self::recv_async).
    pub(crate) async fn ready_async(&mut self) -> Result<(), RecvError> {
        self.wait_async(None).await
    }

    async fn wait_async(&mut self, deadline: Option<Instant>) -> Result<(), RecvError> {
        loop {
            match self.consumer.probe() {
                Err(PeekError::Empty) => {}
                _ => return Ok(()),
            }
            if let Bell::Plain(_) = self.bell {
                self.bell.registered().map_err(RecvError::Io)?;
            }
            let (c, peer) = (&self.consumer, &self.peer);
            wait_async(
                c.wait_word(),
                &mut self.bell,
                &mut self.spinner,
                deadline,
                || c.has_event(),
                peer,
            )
            .await?;
        }
    }

    /// The message a wait found (or why none is there), its length told to the spinner:
    /// after a long message the next wait spins through the peer's copies
    /// ([`Spinner::saw`](crate::ring::Spinner::saw)).
    #[inline]
    fn take(&mut self) -> Result<Message<'_>, RecvError> {
        let r = self.consumer.try_peek().map_err(convert_peek);
        if let Ok(m) = &r {
            self.spinner.saw(m.len());
        }
        r
    }

    /// The spin the next wait starts with (for tests of [`take`](Self::take)).
    #[cfg(test)]
    pub(crate) fn spin_budget(&self) -> Option<Duration> {
        self.spinner.budget()
    }

    /// Direct access to the ring's consumer.
    pub fn consumer(&mut self) -> &mut Consumer {
        &mut self.consumer
    }

    /// Whether the peer process is still there.
    pub fn peer_alive(&self) -> bool {
        self.peer.is_alive()
    }
}

/// One end of a duplex channel: a [`Sender`] and a [`Receiver`].
#[derive(Debug)]
pub struct Endpoint {
    tx: Sender,
    rx: Receiver,
}

impl Endpoint {
    pub(crate) fn from_halves(tx: Sender, rx: Receiver) -> Self {
        Self { tx, rx }
    }

    /// Splits into halves that can be used by different threads or tasks.
    ///
    /// # Examples
    ///
    /// ```
    /// use shmrpc::channel::{self, ChannelConfig};
    ///
    /// let (a, mut b) = channel::pair(&ChannelConfig::default())?;
    /// let (mut tx, mut rx) = a.split();
    /// // An echo thread owns `b`; this thread sends with `tx` and reads replies with `rx`.
    /// let echo = std::thread::spawn(move || {
    ///     let msg = b.recv().unwrap().to_vec();
    ///     b.send(&msg).unwrap();
    /// });
    /// tx.send(b"echo me")?;
    /// assert_eq!(&*rx.recv()?, b"echo me");
    /// echo.join().unwrap();
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn split(self) -> (Sender, Receiver) {
        (self.tx, self.rx)
    }

    /// The sending half.
    pub fn sender(&mut self) -> &mut Sender {
        &mut self.tx
    }

    /// The receiving half.
    pub fn receiver(&mut self) -> &mut Receiver {
        &mut self.rx
    }

    /// The peer's process id, if known.
    pub fn peer_pid(&self) -> Option<u32> {
        self.tx.peer.pid()
    }

    /// See [`Sender::send`].
    ///
    /// # Errors
    /// See [`SendError`].
    pub fn send(&mut self, msg: &[u8]) -> Result<(), SendError> {
        self.tx.send(msg)
    }

    /// See [`Sender::try_send`].
    ///
    /// # Errors
    /// See [`TrySendError`].
    pub fn try_send(&mut self, msg: &[u8]) -> Result<(), TrySendError> {
        self.tx.try_send(msg)
    }

    /// See [`Sender::send_async`].
    ///
    /// # Errors
    /// See [`SendError`].
    pub async fn send_async(&mut self, msg: &[u8]) -> Result<(), SendError> {
        self.tx.send_async(msg).await
    }

    /// See [`Receiver::recv`].
    ///
    /// # Errors
    /// See [`RecvError`].
    pub fn recv(&mut self) -> Result<Message<'_>, RecvError> {
        self.rx.recv()
    }

    /// See [`Receiver::recv_timeout`].
    ///
    /// # Errors
    /// See [`RecvError`].
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Message<'_>, RecvError> {
        self.rx.recv_timeout(timeout)
    }

    /// See [`Receiver::try_recv`].
    ///
    /// # Errors
    /// See [`TryRecvError`].
    pub fn try_recv(&mut self) -> Result<Message<'_>, TryRecvError> {
        self.rx.try_recv()
    }

    /// See [`Receiver::recv_async`].
    ///
    /// # Errors
    /// See [`RecvError`].
    pub async fn recv_async(&mut self) -> Result<Message<'_>, RecvError> {
        self.rx.recv_async().await
    }
}

#[cfg(test)]
mod tests {
    use super::Spinning;

    #[test]
    fn a_spinning_wait_knows_whether_another_spins_on_its_thread() {
        let a = Spinning::enter();
        assert!(!a.shared(), "alone on this thread");
        let b = Spinning::enter();
        assert!(a.shared() && b.shared());
        // Another thread's waits are not counted here, nor ours there.
        std::thread::spawn(|| {
            let c = Spinning::enter();
            assert!(!c.shared(), "alone on its own thread");
        })
        .join()
        .unwrap();
        drop(b);
        assert!(!a.shared(), "the other one stopped spinning");
        // A guard moved to another thread gives its count back to the thread it began on.
        let d = Spinning::enter();
        assert!(a.shared());
        std::thread::spawn(move || drop(d)).join().unwrap();
        assert!(!a.shared());
    }
}
