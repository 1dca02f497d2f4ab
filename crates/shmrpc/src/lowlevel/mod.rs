//! The layers under [`channel`](crate::channel), each using only the ones below it.
//! Most programs need none of them; they are public for tools (inspecting segments,
//! benchmarking the ring alone) and for tests.
//!
//! - [`sys`]: segments (`/dev/shm` and sealed memfd), futexes, eventfd doorbells,
//!   process liveness, fd passing.
//! - [`ring`]: a lock-free SPSC ring of variable-length records, validated against a
//!   hostile peer, with the park/wake protocol.
//! - [`frame`]: the versioned, checksummed unit the RPC layer sends over a channel or TCP.

// The files stay where they are (`src/sys`, `src/ring`, `src/frame`); the paths are
// relative to `src/lowlevel/`.
#[cfg(not(shmrpc_loom))]
#[path = "../frame/mod.rs"]
pub mod frame;
#[path = "../ring/mod.rs"]
pub mod ring;
#[cfg(not(shmrpc_loom))]
#[path = "../sys/mod.rs"]
pub mod sys;
#[cfg(shmrpc_loom)]
pub mod sys {
    //! Under loom only the doorbell type is needed (never rung: loom models the futex).
    /// Stand-in doorbell.
    #[derive(Debug)]
    pub struct Doorbell;
    impl Doorbell {
        /// Does nothing.
        pub fn ring(&self) {}
    }
}
