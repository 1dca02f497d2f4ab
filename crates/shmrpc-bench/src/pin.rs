//! Pinning the two processes of a measurement to two distinct cores.
//!
//! With two cores and two spinning processes, letting the scheduler move them around
//! makes figures swing by orders of magnitude (a spinner can land on the core its peer
//! needs). So each side is pinned, and the output says so.

use rustix::thread::{sched_getaffinity, sched_setaffinity, CpuSet};

use crate::BenchError;

/// The first two CPUs this process may run on (the parent takes the first, the child the
/// second), or `None` when fewer than two are available.
pub fn two_cpus() -> Option<(usize, usize)> {
    let set = sched_getaffinity(None).ok()?;
    let mut allowed = (0..CpuSet::MAX_CPU).filter(|&c| set.is_set(c));
    let a = allowed.next()?;
    let b = allowed.next()?;
    Some((a, b))
}

/// Pins the calling thread (the whole process, when called before any other thread
/// exists) to `cpu`.
///
/// # Errors
///
/// [`BenchError::Pin`]: the CPU does not exist or this process may not run on it.
pub fn pin_to(cpu: usize) -> Result<(), BenchError> {
    let mut set = CpuSet::new();
    set.set(cpu);
    sched_setaffinity(None, &set).map_err(|e| BenchError::Pin {
        cpu,
        source: e.into(),
    })
}

/// A line for the output: which CPUs the two processes run on.
pub fn describe(cpus: Option<(usize, usize)>) -> String {
    match cpus {
        Some((a, b)) => format!("pinned: this process to CPU {a}, the peer to CPU {b}"),
        None => "not pinned (fewer than 2 CPUs available): figures will be noisy".to_owned(),
    }
}
