//! Futex wait and wake on a word in shared memory.
//!
//! The words live in `MAP_SHARED` mappings used by several processes, so these are the
//! non-private futex operations: the kernel keys them by the physical page, not by the
//! address space.

use std::sync::atomic::AtomicU32;
use std::time::Duration;

use rustix::thread::futex;

/// Sleeps while `*word == expected`, for at most `timeout` (forever with `None`).
///
/// Returns when woken, when the word no longer holds `expected` (checked atomically by the
/// kernel, which is what makes the caller's protocol free of lost wake-ups), on a signal,
/// or on timeout. Callers re-check their condition in every case; the outcome is only a
/// hint.
pub fn wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) {
    let ts = timeout.map(|d| rustix::time::Timespec {
        tv_sec: d.as_secs().min(i64::MAX as u64) as i64,
        tv_nsec: i64::from(d.subsec_nanos()),
    });
    // EAGAIN (value changed), ETIMEDOUT and EINTR all mean "re-check"; nothing else is
    // possible for a valid, aligned address.
    let _ = futex::wait(word, futex::Flags::empty(), expected, ts.as_ref());
}

/// Wakes up to `n` threads sleeping in [`wait`] on `word`, in any process.
pub fn wake(word: &AtomicU32, n: u32) {
    let _ = futex::wake(word, futex::Flags::empty(), n);
}
