//! The one place atomics come from.
//!
//! Under `--cfg loom` the ring's atomics are loom's model-checked ones, so the loom tests
//! in `tests/loom_ring.rs` exercise exactly the code that runs in production. Everything
//! that touches the ring's shared words imports them from here, never from `std` directly.

#[cfg(shmrpc_loom)]
pub(crate) use loom::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
#[cfg(not(shmrpc_loom))]
pub(crate) use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

/// One step of a busy wait: a CPU pause hint, or a yield to loom's scheduler under loom
/// (loom must see every spin as a yield point or it reports a livelock).
#[inline]
pub(crate) fn spin_hint() {
    #[cfg(shmrpc_loom)]
    loom::thread::yield_now();
    #[cfg(not(shmrpc_loom))]
    std::hint::spin_loop();
}
