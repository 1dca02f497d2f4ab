//! A connection's read loop, polled by its own task or, while one call alone is in flight,
//! by that call's caller as it waits: the caller then reads its own answer from the ring,
//! on its own thread and in its own task. No wake-up of the reader task, no task switch
//! back to the caller, and for the [`BlockingClient`](crate::rpc::BlockingClient) no pass
//! through the runtime's I/O driver (an `epoll_wait` per call: a current-thread runtime
//! polls its `block_on` future again only after it polled the driver).
//!
//! The loop is one future behind a lock. Its own task (the *home* task) polls it as a task
//! would. A caller alone in flight takes the lock instead ([`Helper::assist`]) and polls it
//! with the home task's waker, so every wake-up the loop arranges (its ring's doorbell,
//! its timers, a yield) still reaches the home task, whoever polled it last: the caller
//! can stop at any moment and the home task goes on.
//!
//! Nobody waits for the lock (`try_lock` only). A home task that finds it taken says so
//! (`wanted`) and returns; the caller that lets go of it then wakes the home task. Each
//! side puts a `SeqCst` fence between its write and its read (the home task: its store of
//! `wanted`, then its second `try_lock`; the caller: its unlock, then its load of
//! `wanted`), so the two cannot both miss: either the second `try_lock` finds the lock
//! free, or the caller sees `wanted`. The home task's own unlock needs neither: only the
//! home task ever waits for the loop.

use std::future::Future;
use std::pin::Pin;
#[cfg(test)]
use std::sync::atomic::AtomicU64;
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, TryLockError};
use std::task::{Context, Poll, Waker};

/// The read loop's future.
type Loop = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A connection's read loop and who polls it.
pub(crate) struct Drive {
    /// The loop (`None` once it ended); whoever holds the lock polls it.
    run: Mutex<Option<Loop>>,
    /// The home task found the loop taken and returned without polling it.
    wanted: AtomicBool,
    /// The home task's waker, stored when it first polls and whenever it changes (a caller
    /// assists only once it is there).
    home: Mutex<Option<Waker>>,
    /// Whether a caller may assist (else the home task owns the loop outright).
    shared: bool,
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
            .field("shared", &self.shared)
            .finish_non_exhaustive()
    }
}

impl Drive {
    /// A drive with no loop yet ([`start`](Self::start) gives it one). `shared`: whether a
    /// caller may poll the loop while it waits. Not on TCP, where a poll would only find the
    /// socket not ready (a caller would spin for nothing); not at a server, whose calls to
    /// its clients are rare, and whose loops (one per client on its runtime) then take no
    /// lock on each of their polls.
    pub(crate) fn new(shared: bool) -> Self {
        Self {
            run: Mutex::new(None),
            wanted: AtomicBool::new(false),
            home: Mutex::new(None),
            shared,
            runtime: OnceLock::new(),
            #[cfg(test)]
            assisted: AtomicU64::new(0),
        }
    }

    /// Gives the drive its loop; returns the home task's future, which polls the loop
    /// until it ends (spawn it). Dropped before (its runtime shuts down), it drops the
    /// loop: the loop holds the connection's handles, and they hold the drive.
    pub(crate) fn start(self: Arc<Self>, run: impl Future<Output = ()> + Send + 'static) -> Home {
        let run: Loop = Box::pin(run);
        let own = if self.shared {
            *self.lock() = Some(run);
            None
        } else {
            Some(run)
        };
        Home {
            drive: self,
            waker: None,
            own,
        }
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

    /// The loop, waited for (only when it is dropped).
    fn lock(&self) -> MutexGuard<'_, Option<Loop>> {
        self.run
            .lock()
            .unwrap_or_else(|p| self.unpoison(p.into_inner()))
    }

    /// A loop that panicked while polled cannot be polled again: it ends, as the panic of
    /// its own task would have ended it.
    fn unpoison<'a>(&self, mut run: MutexGuard<'a, Option<Loop>>) -> MutexGuard<'a, Option<Loop>> {
        *run = None;
        self.run.clear_poison();
        run
    }

    /// Takes the loop if nobody holds it; the holder lets go by dropping it (also when the
    /// loop panics in a caller's poll).
    fn try_hold(&self, by_caller: bool) -> Option<Held<'_>> {
        let run = match self.run.try_lock() {
            Ok(run) => run,
            Err(TryLockError::Poisoned(p)) => self.unpoison(p.into_inner()),
            Err(TryLockError::WouldBlock) => return None,
        };
        Some(Held {
            drive: self,
            run: Some(run),
            by_caller,
        })
    }

    /// The home task's waker.
    fn home(&self) -> MutexGuard<'_, Option<Waker>> {
        // Poisoned only by a panic in `Waker::clone`: the waker is still whole.
        self.home.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// For a caller waiting alone: a helper that polls the loop in its place, if callers
    /// may (`shared`), its home task polled it before, and this caller runs on the home
    /// task's runtime.
    pub(crate) fn helper(&self) -> Option<Helper<'_>> {
        if !self.shared {
            return None;
        }
        let home_rt = self.runtime.get()?;
        if !tokio::runtime::Handle::try_current().is_ok_and(|h| h.id() == *home_rt) {
            return None;
        }
        let home = self.home().clone()?;
        Some(Helper { drive: self, home })
    }
}

/// A caller's way to poll the loop in its place ([`Drive::helper`]).
pub(crate) struct Helper<'a> {
    drive: &'a Drive,
    home: Waker,
}

impl Helper<'_> {
    /// Polls the loop once, unless somebody polls it right now. Returns whether it polled.
    pub(crate) fn assist(&self) -> bool {
        let Some(mut held) = self.drive.try_hold(true) else {
            return false;
        };
        // The loop's wake-ups go to its home task: polled here, it asks for them as if
        // that task polled it.
        if held.poll(&mut Context::from_waker(&self.home)) {
            // It ended here: the home task ends at its next poll.
            self.home.wake_by_ref();
        }
        true
    }
}

/// The loop, held by whoever polls it ([`Drive::try_hold`]).
struct Held<'a> {
    drive: &'a Drive,
    /// `None` only while dropped.
    run: Option<MutexGuard<'a, Option<Loop>>>,
    /// Held by a caller, not the home task: only then may the home task wait for it.
    by_caller: bool,
}

impl Held<'_> {
    /// Polls the loop if it still runs; returns whether it has ended.
    fn poll(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(run) = self.run.as_deref_mut() else {
            return true;
        };
        let Some(f) = run.as_mut() else {
            return true;
        };
        if f.as_mut().poll(cx).is_ready() {
            *run = None;
            return true;
        }
        false
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        drop(self.run.take());
        if !self.by_caller {
            return; // the home task lets go: nobody else waits for the loop
        }
        // SeqCst: between the unlock and the load of `wanted` (see the module's comment;
        // its partner is the fence in `Home::poll`).
        fence(Ordering::SeqCst);
        // Relaxed, both: ordered by the fences.
        if self.drive.wanted.load(Ordering::Relaxed)
            && self.drive.wanted.swap(false, Ordering::Relaxed)
        {
            if let Some(home) = self.drive.home().clone() {
                home.wake();
            }
        }
    }
}

/// The home task of a [`Drive`]: polls its loop until it ends.
pub(crate) struct Home {
    drive: Arc<Drive>,
    /// The waker last stored in the drive, kept here to compare with each poll's waker
    /// without taking the drive's lock on it.
    waker: Option<Waker>,
    /// The loop, when no caller may poll it ([`Drive::new`]).
    own: Option<Loop>,
}

impl Future for Home {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        if let Some(run) = this.own.as_mut() {
            return run.as_mut().poll(cx);
        }
        if !this.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            if this.drive.runtime.get().is_none() {
                if let Ok(h) = tokio::runtime::Handle::try_current() {
                    let _ = this.drive.runtime.set(h.id());
                }
            }
            this.waker = Some(cx.waker().clone());
            *this.drive.home() = Some(cx.waker().clone());
        }
        let drive = &*this.drive;
        let mut held = match drive.try_hold(false) {
            Some(held) => held,
            None => {
                // Relaxed: ordered by the fence.
                drive.wanted.store(true, Ordering::Relaxed);
                // SeqCst: between the store of `wanted` and the second look (see the
                // module's comment; its partner is the fence in `Held::drop`).
                fence(Ordering::SeqCst);
                match drive.try_hold(false) {
                    Some(held) => held,
                    None => return Poll::Pending, // the holder wakes this task when it lets go
                }
            }
        };
        if held.poll(cx) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

impl Drop for Home {
    fn drop(&mut self) {
        // Waits only for a caller polling the loop right now.
        let run = self.drive.lock().take();
        drop(run); // outside the lock: the loop's handles may reach the drive
    }
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

    /// A home task that finds the loop held by a caller does not wait: it is woken when
    /// the caller lets go, and then polls the loop; only one holds the loop at a time.
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

        let claim = drive.try_hold(true).expect("nobody holds the loop");
        assert!(drive.try_hold(true).is_none(), "one holder at a time");
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
