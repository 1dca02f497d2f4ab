//! Waiting for data or space without losing a wake-up, and without a system call on a
//! busy stream.
//!
//! # The protocol (a Dekker handshake)
//!
//! Waiter (say, the consumer on an empty ring):
//! 1. store its kind (`WAIT_FUTEX` or `WAIT_BELL`) into its waiting word;
//! 2. `fence(SeqCst)`;
//! 3. re-check the ring; if something arrived, clear the word and return;
//! 4. sleep: `futex_wait(word, kind)` (returns at once if the word changed), or await the
//!    eventfd.
//!
//! Notifier (the producer, right after publishing a record):
//! 1. `fence(SeqCst)`;
//! 2. load the waiting word; only if it is non-zero, swap it to zero and wake the kind it
//!    held (futex wake, or ring the eventfd).
//!
//! The two SeqCst fences order "publish; load word" against "store word; re-check": at
//! least one side sees the other's store, so either the waiter finds the record in step 3,
//! or the notifier finds the flag and wakes it. A busy stream never finds the flag set and
//! makes no system call; the cost is one fence per publish. Sleeps carry a timeout so a
//! dead peer is noticed (see `alive` below). `tests/loom_ring.rs` model-checks this with the
//! real ring code.

use std::time::{Duration, Instant};

use thiserror::Error;

use crate::sync::{fence, spin_hint, AtomicU32, Ordering};
use crate::sys::Doorbell;

/// The waiting word is clear: nobody sleeps.
pub(crate) const WAIT_NONE: u32 = 0;
/// A thread sleeps in `futex_wait` on the word.
pub(crate) const WAIT_FUTEX: u32 = 1;
/// A task awaits the side's eventfd doorbell.
pub(crate) const WAIT_BELL: u32 = 2;

/// How often a sleeper wakes to check that its peer is still alive.
pub const LIVENESS_INTERVAL: Duration = Duration::from_millis(100);

/// How a blocking or async operation waits when the ring is empty (or full).
///
/// # Examples
///
/// ```
/// use std::time::{Duration, Instant};
/// use shmrpc::lowlevel::ring::{self, Spinner, WaitError, WaitStrategy};
///
/// assert_eq!(
///     WaitStrategy::default(),
///     WaitStrategy::SpinThenPark { spin: Duration::from_micros(50) }
/// );
/// let (_tx, mut rx) = ring::channel(4096).unwrap();
/// let mut spinner = Spinner::new(WaitStrategy::Park);
/// let deadline = Instant::now() + Duration::from_millis(10);
/// assert_eq!(rx.wait(&mut spinner, Some(deadline), || true), Err(WaitError::TimedOut));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum WaitStrategy {
    /// Busy-poll and never sleep: lowest latency, one core fully used while waiting.
    Spin,
    /// Busy-poll up to `spin`, then sleep. The budget adapts: it shrinks while spins keep
    /// failing (an idle peer) and grows back when they succeed.
    SpinThenPark {
        /// The longest spin.
        spin: Duration,
    },
    /// Sleep at once: no CPU while idle, a wake-up (~10 µs) per message.
    Park,
}

impl Default for WaitStrategy {
    fn default() -> Self {
        WaitStrategy::SpinThenPark {
            spin: Duration::from_micros(50),
        }
    }
}

/// Why a wait ended without its condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum WaitError {
    /// The deadline passed.
    #[error("timed out")]
    TimedOut,
    /// The peer process died (or hung up) while we waited.
    #[error("peer is gone")]
    PeerGone,
}

/// A wait strategy plus its adaptive spin budget: keep one per waiting end.
///
/// # Examples
///
/// Blocking on an empty ring until another thread publishes:
///
/// ```
/// use std::time::{Duration, Instant};
/// use shmrpc::lowlevel::ring::{self, Spinner, WaitStrategy};
///
/// let (mut tx, mut rx) = ring::channel(4096).unwrap();
/// let mut spinner = Spinner::new(WaitStrategy::SpinThenPark { spin: Duration::from_micros(20) });
/// let t = std::thread::spawn(move || tx.try_push(9, b"wake").unwrap());
/// let deadline = Instant::now() + Duration::from_secs(10); // watchdog
/// loop {
///     rx.wait(&mut spinner, Some(deadline), || true).unwrap();
///     if let Ok(r) = rx.try_peek() {
///         assert_eq!((r.tag(), &*r), (9, &b"wake"[..]));
///         break;
///     }
/// }
/// t.join().unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct Spinner {
    strategy: WaitStrategy,
    /// Current budget in nanoseconds (for `SpinThenPark`).
    budget_ns: u64,
    /// Spin added to the next wait only, for the copies a long message just received
    /// announces ([`saw`](Self::saw)).
    extra_ns: u64,
}

/// What a byte of a message is taken to cost in the spin budget, in nanoseconds per KiB:
/// the peer's next message after a long one follows at least one copy of that length out
/// of a ring and one into it (a request read, its answer written). 256 ns/KiB (4 GB/s)
/// covers both copies at the 8–12 GB/s these machines copy at, with room for the work
/// between them.
const COPY_NS_PER_KIB: u64 = 256;

/// The most spin a message's length adds to a wait: 1 ms, a 4 MiB message's two copies.
/// Beyond that a wake-up (~10–50 µs) is small against the copies anyway.
const MAX_COPY_SPIN_NS: u64 = 1_000_000;

impl Spinner {
    /// A spinner for `strategy`, starting at its full budget.
    pub fn new(strategy: WaitStrategy) -> Self {
        let budget_ns = match strategy {
            WaitStrategy::SpinThenPark { spin } => spin.as_nanos() as u64,
            _ => 0,
        };
        Self {
            strategy,
            budget_ns,
            extra_ns: 0,
        }
    }

    /// A message of `len` bytes was just received: the next wait spins longer, for as long
    /// as copying that many bytes out of a ring and back in takes (up to 1 ms), so that a
    /// waiter after a long message does not go to sleep while its peer is still copying
    /// the next one. Without it, a 1 MiB round trip parked mid-copy on every message and
    /// paid a wake-up each way (the budget is sized for small messages, 50 µs).
    ///
    /// Only [`SpinThenPark`](WaitStrategy::SpinThenPark) spins for it; the extra is for
    /// the next wait only, and a short message adds next to nothing.
    #[inline]
    pub fn saw(&mut self, len: usize) {
        if let WaitStrategy::SpinThenPark { .. } = self.strategy {
            self.extra_ns = copy_spin_ns(len);
        }
    }

    /// The strategy.
    pub fn strategy(&self) -> WaitStrategy {
        self.strategy
    }

    /// How long to spin now, or `None` for "forever" (pure spin).
    pub(crate) fn budget(&self) -> Option<Duration> {
        match self.strategy {
            WaitStrategy::Spin => None,
            WaitStrategy::Park => Some(Duration::ZERO),
            WaitStrategy::SpinThenPark { .. } => {
                Some(Duration::from_nanos(self.budget_ns + self.extra_ns))
            }
        }
    }

    /// When a park begins: the start of the sleep, for [`after_park`](Self::after_park)
    /// (only `SpinThenPark` adapts, so only it reads the clock).
    pub(crate) fn park_started(&self) -> Option<Instant> {
        matches!(self.strategy, WaitStrategy::SpinThenPark { .. }).then(Instant::now)
    }

    /// Records how long a park lasted. If the event came within the configured spin budget,
    /// a full spin would have caught it: restore the full budget. Without this, one miss
    /// against a peer that answers in a few microseconds shrinks the budget below its
    /// answer time, every later spin misses too, and the connection is stuck paying a
    /// wake-up per message.
    pub(crate) fn after_park(&mut self, started: Option<Instant>) {
        self.extra_ns = 0;
        if let (WaitStrategy::SpinThenPark { spin }, Some(t)) = (self.strategy, started) {
            if t.elapsed() <= spin {
                self.budget_ns = spin.as_nanos() as u64;
            }
        }
    }

    /// Records the outcome of a spin phase. A failed spin halves the budget (down to 1/16 of
    /// the configured one), a successful one doubles it back: an idle peer does not cost a
    /// core, a busy one keeps the fast path.
    pub(crate) fn record(&mut self, spin_succeeded: bool) {
        self.extra_ns = 0;
        if let WaitStrategy::SpinThenPark { spin } = self.strategy {
            let max = spin.as_nanos() as u64;
            self.budget_ns = if spin_succeeded {
                (self.budget_ns * 2).clamp(1, max)
            } else {
                (self.budget_ns / 2).max(max / 16)
            };
        }
    }
}

/// The spin [`Spinner::saw`] adds for a message of `len` bytes.
fn copy_spin_ns(len: usize) -> u64 {
    ((len as u64).saturating_mul(COPY_NS_PER_KIB) >> 10).min(MAX_COPY_SPIN_NS)
}

/// Spins until `ready()` or until `budget` has passed (forever if `None`, but then still
/// returning on `deadline`). Returns whether `ready()` became true.
pub(crate) fn spin_until(
    budget: Option<Duration>,
    deadline: Option<Instant>,
    mut ready: impl FnMut() -> bool,
) -> bool {
    if ready() {
        return true;
    }
    if budget == Some(Duration::ZERO) {
        return false;
    }
    // A quick reply usually lands within the first few dozen polls: look before reading
    // the clock, which costs as much as a poll and would tax every round trip.
    for _ in 0..64 {
        spin_hint();
        if ready() {
            return true;
        }
    }
    let start = Instant::now();
    let end = match (budget, deadline) {
        (Some(b), Some(d)) => Some((start + b).min(d)),
        (Some(b), None) => Some(start + b),
        (None, d) => d,
    };
    loop {
        // Check the clock only every few dozen polls: reading it costs more than a poll.
        for _ in 0..32 {
            spin_hint();
            if ready() {
                return true;
            }
        }
        if end.is_some_and(|e| Instant::now() >= e) {
            return false;
        }
    }
}

/// Announces that this side is about to sleep as `kind` (step 1–2 of the protocol). The
/// caller must re-check its condition afterwards.
#[inline]
pub(crate) fn arm(word: &AtomicU32, kind: u32) {
    word.store(kind, Ordering::Relaxed);
    // Pairs with the fence in `notify`: orders our flag store before the caller's re-check.
    fence(Ordering::SeqCst);
}

/// Clears the waiting word after waking (so the peer stops paying for wake-ups).
#[inline]
pub(crate) fn disarm(word: &AtomicU32) {
    word.store(WAIT_NONE, Ordering::Relaxed);
}

/// The notifier's half: call after publishing. No system call unless the peer sleeps.
/// Returns whether the peer was waiting (and so was woken).
#[inline]
pub(crate) fn notify(word: &AtomicU32, bell: Option<&Doorbell>) -> bool {
    // Pairs with the fence in `arm`: orders the caller's publish before our flag load.
    fence(Ordering::SeqCst);
    if word.load(Ordering::Relaxed) != WAIT_NONE {
        wake(word, bell);
        return true;
    }
    false
}

#[cold]
fn wake(word: &AtomicU32, bell: Option<&Doorbell>) {
    // The value is untrusted: anything unknown gets both kinds of wake (both are harmless).
    match word.swap(WAIT_NONE, Ordering::Relaxed) {
        WAIT_NONE => {}
        WAIT_FUTEX => futex_wake(word),
        WAIT_BELL => {
            if let Some(b) = bell {
                b.ring();
            }
        }
        _ => {
            futex_wake(word);
            if let Some(b) = bell {
                b.ring();
            }
        }
    }
}

#[cfg(not(shmrpc_loom))]
fn futex_wake(word: &AtomicU32) {
    crate::sys::futex::wake(word, 1);
}

#[cfg(shmrpc_loom)]
fn futex_wake(_word: &AtomicU32) {
    // The loom sleeper polls the word itself; the swap above is the wake.
}

/// Sleeps while the word still holds `kind`, for at most `timeout`.
#[cfg(not(shmrpc_loom))]
pub(crate) fn futex_sleep(word: &AtomicU32, kind: u32, timeout: Option<Duration>) {
    crate::sys::futex::wait(word, kind, timeout);
}

#[cfg(shmrpc_loom)]
pub(crate) fn futex_sleep(word: &AtomicU32, kind: u32, _timeout: Option<Duration>) {
    // A futex is "sleep while *word == kind"; loom models the sleep as yielding until then.
    while word.load(Ordering::Acquire) == kind {
        loom::thread::yield_now();
    }
}

/// The blocking wait: spin per `spinner`, then park on `word` with the futex until
/// `ready()`, the `deadline`, or `alive()` says the peer is gone (checked every
/// [`LIVENESS_INTERVAL`] while asleep).
pub(crate) fn block_until(
    word: &AtomicU32,
    spinner: &mut Spinner,
    deadline: Option<Instant>,
    mut ready: impl FnMut() -> bool,
    mut alive: impl FnMut() -> bool,
) -> Result<(), WaitError> {
    if spinner.strategy() == WaitStrategy::Spin {
        // A pure spin never sleeps, but still checks the deadline and the peer's life.
        loop {
            if spin_until(Some(LIVENESS_INTERVAL), deadline, &mut ready) {
                return Ok(());
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(WaitError::TimedOut);
            }
            if !alive() {
                return Err(WaitError::PeerGone);
            }
        }
    }
    let budget = spinner.budget();
    let spun = spin_until(budget, deadline, &mut ready);
    if budget != Some(Duration::ZERO) {
        spinner.record(spun);
    }
    if spun {
        return Ok(());
    }
    let parked = spinner.park_started();
    loop {
        arm(word, WAIT_FUTEX);
        if ready() {
            disarm(word);
            spinner.after_park(parked);
            return Ok(());
        }
        let timeout = match deadline {
            None => LIVENESS_INTERVAL,
            Some(d) => {
                let now = Instant::now();
                if now >= d {
                    disarm(word);
                    return Err(WaitError::TimedOut);
                }
                (d - now).min(LIVENESS_INTERVAL)
            }
        };
        futex_sleep(word, WAIT_FUTEX, Some(timeout));
        disarm(word);
        if ready() {
            spinner.after_park(parked);
            return Ok(());
        }
        if !alive() {
            return Err(WaitError::PeerGone);
        }
    }
}

#[cfg(all(test, not(shmrpc_loom)))]
mod tests {
    use super::*;

    fn budget(s: &Spinner) -> Duration {
        s.budget().expect("spin-then-park has a budget")
    }

    #[test]
    fn failed_spins_shrink_the_budget_to_a_floor_and_a_short_park_restores_it() {
        let full = Duration::from_secs(1);
        let mut s = Spinner::new(WaitStrategy::SpinThenPark { spin: full });
        for _ in 0..10 {
            s.record(false);
        }
        assert_eq!(
            budget(&s),
            full / 16,
            "an idle peer shrinks the spin to the floor"
        );
        // A long park (the peer really was idle) leaves the budget small.
        s.after_park(Some(Instant::now() - Duration::from_secs(5)));
        assert_eq!(budget(&s), full / 16);
        // A park that ended within the full budget: a full spin would have caught it.
        s.after_park(Some(Instant::now()));
        assert_eq!(budget(&s), full);
        // Successful spins keep it; the other strategies have nothing to adapt.
        s.record(true);
        assert_eq!(budget(&s), full);
        assert_eq!(Spinner::new(WaitStrategy::Park).park_started(), None);
    }

    #[test]
    fn a_long_message_lengthens_the_next_spin_only_and_within_a_bound() {
        let base = Duration::from_micros(50);
        let mut s = Spinner::new(WaitStrategy::SpinThenPark { spin: base });
        // 1 MiB at 256 ns/KiB: 262 µs on top of the budget.
        s.saw(1 << 20);
        assert_eq!(budget(&s), base + Duration::from_nanos(262_144));
        // For the next wait only: a spin (caught or not) or a park uses it up.
        s.record(true);
        assert_eq!(budget(&s), base);
        s.saw(1 << 20);
        s.after_park(None);
        assert_eq!(budget(&s), base);
        // A later, shorter message replaces it; a small one adds next to nothing.
        s.saw(1 << 20);
        s.saw(64);
        assert_eq!(budget(&s), base + Duration::from_nanos(16));
        // Whatever the length (a peer's lie included), at most 1 ms more.
        s.saw(usize::MAX);
        assert_eq!(budget(&s), base + Duration::from_millis(1));
        // Only spin-then-park spins for it.
        let mut park = Spinner::new(WaitStrategy::Park);
        park.saw(1 << 20);
        assert_eq!(park.budget(), Some(Duration::ZERO));
        let mut spin = Spinner::new(WaitStrategy::Spin);
        spin.saw(1 << 20);
        assert_eq!(spin.budget(), None);
    }
}
