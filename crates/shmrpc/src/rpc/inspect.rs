//! What a live server reports about its connections: the built-in method
//! [`INSPECT_METHOD`], answered by every server (`shmrpc inspect NAME` calls it).
//!
//! ```no_run
//! # async fn f() -> Result<(), shmrpc::RpcError> {
//! use shmrpc::{CallOptions, Client, ClientConfig};
//! use shmrpc::inspect::{ServerReport, INSPECT_METHOD};
//!
//! let client = Client::connect("engine", ClientConfig::default()).await?;
//! let report: ServerReport = client.call(INSPECT_METHOD, &(), CallOptions::default()).await?;
//! for c in &report.connections {
//!     println!("{:?} moved {} bytes in", c.peer_pid, c.bytes_in);
//! }
//! # Ok(()) }
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::IdMap;
use crate::ring::{RingProbe, RingState};

/// The name of the built-in inspection method (typed: `()` → [`ServerReport`]).
pub const INSPECT_METHOD: &str = "shmrpc.inspect";

/// A server's answer to [`INSPECT_METHOD`].
///
/// # Examples
///
/// ```
/// use shmrpc::inspect::ServerReport;
/// use shmrpc::{CallOptions, Client, ClientConfig, Server};
/// use shmrpc::inspect::INSPECT_METHOD;
///
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let name = format!("doc-inspect-{}", std::process::id());
/// let server = Server::builder().bind(&name)?; // every server answers INSPECT_METHOD
/// let handle = server.handle();
/// let serving = tokio::spawn(server.serve());
///
/// let client = Client::connect(&name, ClientConfig::default()).await?;
/// let report: ServerReport = client.call(INSPECT_METHOD, &(), CallOptions::default()).await?;
/// assert_eq!(report.pid, std::process::id());
/// assert_eq!(report.connections.len(), 1); // this client's
/// let conn = &report.connections[0];
/// assert_eq!(conn.transport, "shm");
/// assert!(conn.to_client.is_some());
///
/// drop(client);
/// handle.shutdown();
/// serving.await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServerReport {
    /// The server's pid.
    pub pid: u32,
    /// Every connection being served (the inspecting one included).
    pub connections: Vec<ConnReport>,
    /// Shared-memory handshakes running now (clients connected, not yet acknowledged).
    pub handshakes_running: u64,
    /// Handshakes that failed since the server started: the client did not acknowledge in
    /// time, hung up, answered wrongly, or was refused (another user).
    pub handshake_failures: u64,
}

/// One connection.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConnReport {
    /// The server's number for it (in accept order).
    pub id: u64,
    /// The client's pid (shared-memory connections: from `SO_PEERCRED`).
    pub peer_pid: Option<u32>,
    /// `"shm"` or `"tcp"`.
    pub transport: String,
    /// Milliseconds since it was accepted.
    pub age_ms: u64,
    /// Messages and bytes received from the client (requests, cancels, credit, pings).
    pub frames_in: u64,
    /// Payload bytes received.
    pub bytes_in: u64,
    /// Messages sent to the client.
    pub frames_out: u64,
    /// Payload bytes sent.
    pub bytes_out: u64,
    /// Calls whose handlers are running in tasks now (answered-at-once calls never are).
    pub calls_running: u64,
    /// The ring towards the client (shared memory only).
    pub to_client: Option<RingState>,
    /// The ring from the client (shared memory only).
    pub from_client: Option<RingState>,
}

/// A connection's live counters and ring views, kept in the server's registry.
pub(crate) struct ConnInfo {
    pub(crate) id: u64,
    pub(crate) peer_pid: Option<u32>,
    pub(crate) transport: &'static str,
    pub(crate) since: Instant,
    pub(crate) frames_in: AtomicU64,
    pub(crate) bytes_in: AtomicU64,
    pub(crate) frames_out: AtomicU64,
    pub(crate) bytes_out: AtomicU64,
    pub(crate) running: AtomicU64,
    pub(crate) rings: Option<(RingProbe, RingProbe)>,
}

impl ConnInfo {
    pub(crate) fn new(
        id: u64,
        peer_pid: Option<u32>,
        transport: &'static str,
        rings: Option<(RingProbe, RingProbe)>,
    ) -> Self {
        Self {
            id,
            peer_pid,
            transport,
            since: Instant::now(),
            frames_in: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            frames_out: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            running: AtomicU64::new(0),
            rings,
        }
    }

    /// Counts a message received. Only the connection's reader calls it (one task), so
    /// each count is a load and a store, not a locked read-modify-write, which would
    /// first wait for every store still pending (the record just written into the shared
    /// ring among them). With client and server in one process, pipelined calls went
    /// ~20 % faster without the locked adds; between two processes the difference was
    /// within the noise. Relaxed: statistics, read by an inspector at any moment.
    #[inline]
    pub(crate) fn received(&self, bytes: usize) {
        add_alone(&self.frames_in, 1);
        add_alone(&self.bytes_in, bytes as u64);
    }

    /// Counts a message sent. Called only with the connection's sending half locked,
    /// which orders the counts one after another (see [`received`](Self::received)).
    #[inline]
    pub(crate) fn sent(&self, bytes: usize) {
        add_alone(&self.frames_out, 1);
        add_alone(&self.bytes_out, bytes as u64);
    }

    fn report(&self) -> ConnReport {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ConnReport {
            id: self.id,
            peer_pid: self.peer_pid,
            transport: self.transport.to_owned(),
            age_ms: self.since.elapsed().as_millis() as u64,
            frames_in: load(&self.frames_in),
            bytes_in: load(&self.bytes_in),
            frames_out: load(&self.frames_out),
            bytes_out: load(&self.bytes_out),
            calls_running: load(&self.running),
            to_client: self.rings.as_ref().map(|(to, _)| to.state()),
            from_client: self.rings.as_ref().map(|(_, from)| from.state()),
        }
    }
}

/// Adds to a counter that only one writer at a time changes (the caller makes sure):
/// no lost update, and no locked instruction.
#[inline]
fn add_alone(counter: &AtomicU64, n: u64) {
    // Relaxed: the writers are ordered by the caller (one task, or a lock); readers only
    // report the figure.
    counter.store(
        counter.load(Ordering::Relaxed).wrapping_add(n),
        Ordering::Relaxed,
    );
}

/// The server's live connections.
#[derive(Default)]
pub(crate) struct Registry {
    conns: Mutex<IdMap<std::sync::Arc<ConnInfo>>>,
    next: AtomicU64,
    handshakes_running: AtomicU64,
    handshake_failures: AtomicU64,
}

impl Registry {
    pub(crate) fn next_id(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// A handshake starts (Relaxed, as every counter here: statistics only).
    pub(crate) fn handshake_started(&self) {
        self.handshakes_running.fetch_add(1, Ordering::Relaxed);
    }

    /// A handshake ended, well or not.
    pub(crate) fn handshake_ended(&self, ok: bool) {
        self.handshakes_running.fetch_sub(1, Ordering::Relaxed);
        if !ok {
            self.handshake_failures.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn add(&self, c: std::sync::Arc<ConnInfo>) {
        self.conns.lock().expect("poisoned").insert(c.id, c);
    }

    pub(crate) fn remove(&self, id: u64) {
        self.conns.lock().expect("poisoned").remove(&id);
    }

    pub(crate) fn report(&self) -> ServerReport {
        let mut connections: Vec<ConnReport> = self
            .conns
            .lock()
            .expect("poisoned")
            .values()
            .map(|c| c.report())
            .collect();
        connections.sort_by_key(|c| c.id);
        ServerReport {
            pid: std::process::id(),
            connections,
            handshakes_running: self.handshakes_running.load(Ordering::Relaxed),
            handshake_failures: self.handshake_failures.load(Ordering::Relaxed),
        }
    }
}
