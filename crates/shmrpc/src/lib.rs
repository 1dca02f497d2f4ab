//! # shmrpc
//!
//! Fast, trustworthy communication between processes on one host: lock-free rings in
//! shared memory with blocking and async (tokio) APIs.
//!
//! Layers, each using only the ones below it:
//!
//! - [`sys`]: segments (`/dev/shm` and sealed memfd), futexes, eventfd doorbells, process
//!   liveness, fd passing.
//! - [`ring`]: a lock-free SPSC ring of variable-length records, validated against a
//!   hostile peer, with the park/wake protocol.
//! - [`channel`]: a duplex connection (two rings in one segment) used blocking or async,
//!   by threads, tasks or processes through one code path, and the Unix-socket handshake
//!   that hands it to another process.
//!
//! ```
//! use shmrpc::channel::{self, ChannelConfig};
//!
//! let (mut a, mut b) = channel::pair(&ChannelConfig::default())?;
//! std::thread::spawn(move || {
//!     let msg = b.recv().unwrap();
//!     let reply = [&b"re: "[..], &msg[..]].concat();
//!     drop(msg);
//!     b.send(&reply).unwrap();
//! });
//! a.send(b"hello")?;
//! assert_eq!(&*a.recv()?, b"re: hello");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

#[cfg(not(shmrpc_loom))]
pub mod channel;
#[cfg(not(shmrpc_loom))]
pub mod frame;
pub mod ring;
#[cfg(not(shmrpc_loom))]
pub mod rpc;
mod sync;
#[cfg(not(shmrpc_loom))]
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
