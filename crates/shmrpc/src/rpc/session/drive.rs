//! A connection's read loop, polled by its own task or, while one call alone is in flight,
//! by that call's caller as it waits: the caller then reads its own answer from the ring,
//! on its own thread and in its own task. No wake-up of the reader task, no task switch
//! back to the caller, and for the [`BlockingClient`](crate::rpc::BlockingClient) no pass
//! through the runtime's I/O driver (an `epoll_wait` per call: a current-thread runtime
//! polls its `block_on` future again only after it polled the driver).
//!
//! The loop is one future behind a lock. Its own task (the *home* task) polls it as a task
//! would. A caller alone in flight claims it instead ([`Drive::assist`]) and polls it with
//! the home task's waker, so every wake-up the loop arranges (its ring's doorbell, its
//! timers, a yield) still reaches the home task, whoever polled it last: the caller can
//! stop assisting at any moment and the home task goes on.
//!
//! Nobody waits for the claim. A home task that finds the loop claimed says so (`wanted`)
//! and returns; whoever lets go of the claim then wakes it. The claim and `wanted` are
//! `SeqCst`: a home task's store of `wanted` and its second look at the claim, against
//! the releaser's store of the claim and its swap of `wanted`, cannot both miss (either
//! the home task's second look finds the claim free, or the releaser sees `wanted`).

use std::future::Future;
use std::pin::Pin;
#[cfg(test)]
use std::sync::atomic::AtomicU64;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll, Waker};

/// The read loop's future.
type Loop = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A connection's read loop and who polls it.
pub(crate) struct Drive {
    /// Whoever holds it polls the loop.
    claimed: AtomicBool,
    /// The home task found the loop claimed and returned without polling it.
    wanted: AtomicBool,
    /// The loop; locked only by the holder of the claim, so never waited for.
    run: Mutex<Option<Loop>>,
    /// The home task's waker, stored at each of its polls before it claims the loop (a
    /// caller assists only once it is there).
    home: Mutex<Option<Waker>>,
    /// Whether a caller may assist: the loop reads a ring (on TCP a poll would only find
    /// the socket not ready, so a caller would spin for nothing).
    ring: bool,
    /// The runtime of the home task: a caller on another runtime does not assist (the loop
    /// spawns its handlers' tasks on the runtime that polls it).
    runtime: OnceLock<tokio::runtime::Id>,
    /// Answers a caller read by polling the loop itself (for tests).
    #[cfg(test)]
    assisted: AtomicU64,
}

impl std::fmt::Debug for Drive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Drive")
            .field("ring", &self.ring)
            .finish_non_exhaustive()
    }
}

impl Drive {
    /// A drive with no loop yet ([`start`](Self::start) gives it one). `ring`: whether the
    /// connection reads a ring, which a caller may then poll while it waits.
    pub(crate) fn new(ring: bool) -> Self {
        Self {
            claimed: AtomicBool::new(false),
            wanted: AtomicBool::new(false),
            run: Mutex::new(None),
            home: Mutex::new(None),
            ring,
            runtime: OnceLock::new(),
            #[cfg(test)]
            assisted: AtomicU64::new(0),
        }
    }

    /// Gives the drive its loop; returns the home task's future, which polls the loop
    /// until it ends (spawn it). Dropped before (its runtime shuts down), it drops the
    /// loop: the loop holds the connection's handles, and they hold the drive.
    pub(crate) fn start(self: Arc<Self>, run: impl Future<Output = ()> + Send + 'static) -> Home {
        *self.lock() = Some(Box::pin(run));
        Home(self)
    }

    /// How many answers a caller read by polling the loop itself.
    #[cfg(test)]
    pub(crate) fn assisted(&self) -> u64 {
        // Relaxed: a count, read after the calls it counts returned on this thread.
        self.assisted.load(Ordering::Relaxed)
    }

    /// A caller that polled the loop found its answer (counted for tests only).
    #[inline]
    pub(crate) fn count_assisted(&self) {
        // Relaxed: see `assisted`.
        #[cfg(test)]
        self.assisted.fetch_add(1, Ordering::Relaxed);
    }

    /// The loop (`None` once it ended).
    fn lock(&self) -> MutexGuard<'_, Option<Loop>> {
        match self.run.lock() {
            Ok(run) => run,
            Err(poisoned) => {
                // The loop panicked while polled: it cannot be polled again, and ends as
                // the panic of its own task would have ended it.
                let mut run = poisoned.into_inner();
                *run = None;
                self.run.clear_poison();
                run
            }
        }
    }

    /// The home task's waker.
    fn home(&self) -> MutexGuard<'_, Option<Waker>> {
        // Poisoned only by a panic in `Waker::clone`: the waker is still whole.
        self.home.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Claims the loop, if nobody else holds it; the claim is let go when dropped (also
    /// when the loop panics in a caller's poll).
    fn try_claim(&self) -> Option<Claim<'_>> {
        // SeqCst: see the module's comment (with the store in `release`).
        self.claimed
            .compare_exchange(false, true, Ordering::SeqCst, Ordering::Relaxed)
            .is_ok()
            .then(|| Claim(self)) // (not `then_some`: a claim not taken must not be dropped)
    }

    /// Lets go of the claim; wakes the home task if it found the loop claimed meanwhile.
    fn release(&self) {
        // SeqCst, both: see the module's comment (with the store of `wanted` and the second
        // `try_claim` in `poll_home`).
        self.claimed.store(false, Ordering::SeqCst);
        if self.wanted.swap(false, Ordering::SeqCst) {
            if let Some(home) = self.home().clone() {
                home.wake();
            }
        }
    }

    /// The home task: polls the loop until it ends.
    fn poll_home(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.runtime.get().is_none() {
            if let Ok(h) = tokio::runtime::Handle::try_current() {
                let _ = self.runtime.set(h.id());
            }
        }
        {
            let mut home = self.home();
            if !home.as_ref().is_some_and(|h| h.will_wake(cx.waker())) {
                *home = Some(cx.waker().clone());
            }
        }
        let claim = match self.try_claim() {
            Some(claim) => claim,
            None => {
                // SeqCst: see the module's comment.
                self.wanted.store(true, Ordering::SeqCst);
                match self.try_claim() {
                    Some(claim) => claim,
                    None => return Poll::Pending, // the holder wakes this task when it lets go
                }
            }
        };
        let done = poll_loop(&mut self.lock(), cx);
        drop(claim);
        if done {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// For a caller waiting alone: polls the loop once in its place, if the loop reads a
    /// ring, its home task polled it before, this caller runs on the home task's runtime,
    /// and nobody polls it right now. Returns whether it polled.
    pub(crate) fn assist(&self) -> bool {
        if !self.ring {
            return false;
        }
        let Some(home_rt) = self.runtime.get() else {
            return false;
        };
        if !tokio::runtime::Handle::try_current().is_ok_and(|h| h.id() == *home_rt) {
            return false;
        }
        let Some(home) = self.home().clone() else {
            return false;
        };
        let Some(_claim) = self.try_claim() else {
            return false;
        };
        // The loop's wake-ups go to its home task: polled here, it asks for them as if
        // that task polled it.
        let mut cx = Context::from_waker(&home);
        if poll_loop(&mut self.lock(), &mut cx) {
            // It ended here: the home task ends at its next poll.
            home.wake();
        }
        true
    }
}

/// The home task of a [`Drive`]: polls its loop until it ends.
pub(crate) struct Home(Arc<Drive>);

impl Future for Home {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.0.poll_home(cx)
    }
}

impl Drop for Home {
    fn drop(&mut self) {
        // Waits only for a caller polling the loop right now.
        let run = self.0.lock().take();
        drop(run); // outside the lock: the loop's handles may reach the drive
    }
}

/// A claim on the loop ([`Drive::try_claim`]).
struct Claim<'a>(&'a Drive);

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.0.release();
    }
}

/// Polls the loop if it still runs; returns whether it has ended.
fn poll_loop(run: &mut Option<Loop>, cx: &mut Context<'_>) -> bool {
    let Some(f) = run.as_mut() else {
        return true;
    };
    if f.as_mut().poll(cx).is_ready() {
        *run = None;
        return true;
    }
    false
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::{Context, Poll, Wake, Waker};

    use super::Drive;

    /// Counts its wake-ups.
    #[derive(Default)]
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// A home task that finds the loop claimed does not wait: it is woken when the claim
    /// is let go, and then polls the loop; a caller finds the loop claimed while the home
    /// task polls it.
    #[test]
    fn a_home_task_that_finds_the_loop_claimed_is_woken_when_it_is_let_go() {
        let polls = Arc::new(AtomicUsize::new(0));
        let drive = Arc::new(Drive::new(true));
        let mut home = Box::pin(drive.clone().start({
            let polls = polls.clone();
            std::future::poll_fn(move |_| {
                let n = polls.fetch_add(1, Ordering::SeqCst) + 1;
                if n == 3 {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            })
        }));
        let count = Arc::new(Count::default());
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        assert!(home.as_mut().poll(&mut cx).is_pending());
        assert_eq!(polls.load(Ordering::SeqCst), 1);

        let claim = drive.try_claim().expect("nobody holds the loop");
        assert!(drive.try_claim().is_none(), "one holder at a time");
        assert!(home.as_mut().poll(&mut cx).is_pending());
        assert_eq!(
            polls.load(Ordering::SeqCst),
            1,
            "the home task did not poll it"
        );
        assert_eq!(count.0.load(Ordering::SeqCst), 0);
        drop(claim);
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "woken when let go");

        assert!(home.as_mut().poll(&mut cx).is_pending());
        assert_eq!(polls.load(Ordering::SeqCst), 2);
        assert!(home.as_mut().poll(&mut cx).is_ready(), "the loop ended");
        // Released with nothing wanted: no more wake-ups.
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
    }

    /// Dropping the home task (its runtime shuts down) drops the loop, and what it holds.
    #[test]
    fn dropping_the_home_task_drops_the_loop() {
        let held = Arc::new(());
        let drive = Arc::new(Drive::new(true));
        let home = drive.clone().start({
            let held = held.clone();
            async move {
                let _held = held;
                std::future::pending::<()>().await;
            }
        });
        assert_eq!(Arc::strong_count(&held), 2);
        drop(home);
        assert_eq!(Arc::strong_count(&held), 1);
    }
}
