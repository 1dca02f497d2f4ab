//! The systems compared, each with a lead side (sends requests, times round trips, produces
//! streams) and a child side (echoes, consumes streams), in two separate processes.
//!
//! Every side handles messages the same way so that only the transport differs:
//! - the sender produces each message in a private buffer ([`crate::pattern::fill`], outside
//!   the timed path for round trips) and hands it to the library's send call, which copies it
//!   into the library's shared memory (zero-copy libraries: one copy into the loaned or
//!   reserved slot) or into the kernel (sockets);
//! - the receiver checks every byte ([`crate::pattern::verify`]) where the library lends it
//!   (in shared memory for shmrpc, iceoryx2 and shmipc; in its own buffer for the sockets and
//!   ipc-channel, which return owned bytes);
//! - the echo prepares its reply before the request arrives, and sends it after checking
//!   the request.

pub mod iox2;
pub mod ipcch;
pub mod shm;
pub mod shmipc_sys;
pub mod unix;

use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::pattern;

/// The lead's side of one system in one mode.
pub trait Lead {
    /// `n` round trips of `size` bytes; request `i` is message `seed0 + i`, its reply
    /// message `(seed0 + i) ^ REPLY`. Pushes one sample (ns) per round trip.
    fn rtt(&mut self, size: usize, n: u64, seed0: u64, samples: &mut Vec<u64>) -> Result<()>;
    /// Sends `n` messages of `size` bytes, message `i` being `seed0 + i`.
    fn stream(&mut self, size: usize, n: u64, seed0: u64) -> Result<()>;
    /// Orderly teardown (the child closes its side at the same time).
    fn close(self: Box<Self>) -> Result<()>;
    /// Messages this side has sent so far through another path than the one measured
    /// (shmipc's silent fallback to its Unix socket).
    fn fallbacks(&self) -> u64 {
        0
    }
}

/// The child's side of one system in one mode.
pub trait Child {
    /// Answers `n` round trips (see [`Lead::rtt`]).
    fn echo(&mut self, size: usize, n: u64, seed0: u64) -> Result<()>;
    /// Receives and checks `n` messages (see [`Lead::stream`]).
    fn sink(&mut self, size: usize, n: u64, seed0: u64) -> Result<()>;
    /// Orderly teardown.
    fn close(self: Box<Self>) -> Result<()>;
    /// See [`Lead::fallbacks`].
    fn fallbacks(&self) -> u64 {
        0
    }
}

/// What the two processes share about a run: where files go and how names are made unique.
#[derive(Debug, Clone)]
pub struct RunEnv {
    /// A private directory for this run's socket files (removed at the end).
    pub dir: PathBuf,
    /// Unique per run (the lead's pid): names of shmrpc listeners, iceoryx2 services.
    pub tag: String,
    /// Ring capacity of shmrpc's channel for 64 KiB and 1 MiB messages (lead only).
    pub big_ring: usize,
}

impl RunEnv {
    /// A path in the run directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The iceoryx2 root directory of this run.
    pub fn iox_root(&self) -> PathBuf {
        self.dir.join("iceoryx2")
    }

    /// The prefix of every file iceoryx2 creates in this run (also in /dev/shm).
    pub fn iox_prefix(&self) -> String {
        format!("iox2pp{}_", self.tag)
    }
}

/// One system in one mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// shmrpc's raw channel, adaptive spin then futex park (the default wait strategy).
    ShmrpcSpinThenPark,
    /// shmrpc's raw channel, parking at once (no spin).
    ShmrpcPark,
    /// shmrpc's raw channel, busy-polling without ever parking (the counterpart of
    /// iceoryx2's busy-poll).
    ShmrpcSpin,
    /// Blocking std Unix stream socket, 4-byte length prefix.
    UnixSocket,
    /// iceoryx2 request/response and publish/subscribe, both sides busy-polling.
    Iox2BusyPoll,
    /// iceoryx2 with an event service per direction for wake-ups.
    Iox2Event,
    /// shmipc with `Config::default()` (legacy V3 protocol on memfd, wake-ups through the
    /// Unix socket).
    ShmipcDefault,
    /// shmipc with `Config::default().with_v4_eventfd()`.
    ShmipcEventfd,
    /// ipc-channel's `bytes_channel` (raw bytes, no serialisation).
    IpcChannel,
}

impl Variant {
    /// Every variant, in table order.
    pub const ALL: [Variant; 9] = [
        Variant::ShmrpcSpinThenPark,
        Variant::ShmrpcPark,
        Variant::ShmrpcSpin,
        Variant::UnixSocket,
        Variant::Iox2BusyPoll,
        Variant::Iox2Event,
        Variant::ShmipcDefault,
        Variant::ShmipcEventfd,
        Variant::IpcChannel,
    ];

    /// The system's name in case ids.
    pub fn system(self) -> &'static str {
        match self {
            Variant::ShmrpcSpinThenPark | Variant::ShmrpcPark | Variant::ShmrpcSpin => "shmrpc",
            Variant::UnixSocket => "unix-socket",
            Variant::Iox2BusyPoll | Variant::Iox2Event => "iceoryx2",
            Variant::ShmipcDefault | Variant::ShmipcEventfd => "shmipc",
            Variant::IpcChannel => "ipc-channel",
        }
    }

    /// The mode's name in case ids.
    pub fn mode(self) -> &'static str {
        match self {
            Variant::ShmrpcSpinThenPark => "spin-then-park",
            Variant::ShmrpcPark => "park",
            Variant::ShmrpcSpin => "spin",
            Variant::UnixSocket => "blocking",
            Variant::Iox2BusyPoll => "busy-poll",
            Variant::Iox2Event => "event",
            Variant::ShmipcDefault => "default",
            Variant::ShmipcEventfd => "eventfd",
            Variant::IpcChannel => "default",
        }
    }

    /// Index in [`Variant::ALL`] (how the control pipe names it).
    pub fn index(self) -> usize {
        Self::ALL.iter().position(|&v| v == self).expect("listed")
    }

    /// The variant of an index from the control pipe.
    pub fn from_index(i: usize) -> Option<Self> {
        Self::ALL.get(i).copied()
    }

    /// Why this variant cannot run a workload at a size, if it cannot. (Every system here
    /// does every workload and size; a setup failure or a failed check becomes the `na` of
    /// the cases concerned.)
    pub fn na(self, _rtt: bool, _size: usize) -> Option<&'static str> {
        None
    }
}

/// Sets up the lead's side of `v`; through `ctl` it has the child set up its side (each
/// system decides the order: who binds, who connects, who waits for whom).
pub fn setup_lead(v: Variant, env: &RunEnv, ctl: &mut dyn SetupCtl) -> Result<Box<dyn Lead>> {
    match v {
        Variant::ShmrpcSpinThenPark | Variant::ShmrpcPark | Variant::ShmrpcSpin => {
            shm::lead(v, env, ctl)
        }
        Variant::UnixSocket => unix::lead(env, ctl),
        Variant::Iox2BusyPoll | Variant::Iox2Event => iox2::lead(v, env, ctl),
        Variant::ShmipcDefault | Variant::ShmipcEventfd => shmipc_sys::lead(v, env, ctl),
        Variant::IpcChannel => ipcch::lead(ctl),
    }
}

/// Sets up the child's side of `v`, given the lead's `arg`.
pub fn setup_child(v: Variant, env: &RunEnv, arg: &str) -> Result<Box<dyn Child>> {
    match v {
        Variant::ShmrpcSpinThenPark | Variant::ShmrpcPark | Variant::ShmrpcSpin => {
            shm::child(v, arg)
        }
        Variant::UnixSocket => unix::child(Path::new(arg)),
        Variant::Iox2BusyPoll | Variant::Iox2Event => iox2::child(v, env),
        Variant::ShmipcDefault | Variant::ShmipcEventfd => shmipc_sys::child(v, Path::new(arg)),
        Variant::IpcChannel => ipcch::child(arg),
    }
}

/// The lead's handle on the child during a setup.
pub trait SetupCtl {
    /// Asks the child to set up its side with `arg` (no wait).
    fn start(&mut self, arg: &str) -> Result<()>;
    /// Waits for the child to finish its side of the setup.
    fn finish(&mut self) -> Result<()>;
}

/// Message sizes of every workload.
pub const SIZES: [usize; 4] = [64, 1 << 10, 64 << 10, 1 << 20];

/// A private buffer holding message `seed`.
pub fn message(size: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; size];
    pattern::fill(&mut v, seed);
    v
}

/// Fails with a clear message when a received message is not the expected one (and says
/// which nearby message it is, if it is one: a duplicate, a skip or a reordering).
#[inline]
pub fn check(what: &str, got: &[u8], size: usize, seed: u64) -> Result<()> {
    if pattern::verify(got, size, seed) {
        return Ok(());
    }
    wrong(what, got, size, seed)
}

/// [`check`]'s error: what arrived instead. Out of line, so that the check of a message
/// that is right stays a few instructions in the receiver's loop (for every system alike).
#[cold]
#[inline(never)]
fn wrong(what: &str, got: &[u8], size: usize, seed: u64) -> Result<()> {
    let base = seed & !pattern::REPLY;
    let flip = seed & pattern::REPLY;
    let near = (base.saturating_sub(1024)..base + 1024)
        .find(|&s| pattern::verify(got, got.len(), s | flip))
        .map_or_else(
            || format!("its bytes: {}", pattern::explain(got, seed)),
            |s| format!("it is message {:+} instead", s as i64 - base as i64),
        );
    anyhow::bail!(
        "{what}: message {seed:#x} of {size} bytes arrived wrong ({} bytes, first bytes {:02x?}; {near})",
        got.len(),
        &got[..got.len().min(8)]
    )
}
