//! The server: binding, accepting connections, shutdown, and its connected peers. Each
//! connection runs the engine of [`session`](super::session), which serves the methods
//! and carries the server's calls back to the client.
//!
//! - [`builder`]: methods and binding ([`ServerBuilder`]).
//! - [`accept`]: taking connections (shared-memory handshake or TCP).

mod accept;
mod builder;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::{watch, Semaphore};

use super::inspect::Registry;
use super::obs::ServerObs;
use super::session::{Host, Peer};
use super::{IdMap, ServerConfig};
use accept::Acceptor;

pub use builder::ServerBuilder;

/// The connected clients, by connection id.
type Peers = Arc<Mutex<IdMap<Peer>>>;

struct Shared {
    cfg: ServerConfig,
    /// Methods and limits, shared by every connection.
    host: Arc<Host>,
    /// Set once shutdown starts: no new calls.
    draining: watch::Sender<bool>,
    /// Live connections, to wait for at shutdown.
    conns: tokio_util::task::TaskTracker,
    /// Bounds the handshakes running at once (`max_handshakes`).
    handshakes: Arc<Semaphore>,
    /// The clients connected now, to call them ([`ServerHandle::peers`]).
    peers: Peers,
}

impl Shared {
    /// `idle_timeout`: of each connection (`None`: never closed for idling).
    fn new(b: ServerBuilder, idle_timeout: Option<std::time::Duration>) -> Arc<Self> {
        let (draining, _) = watch::channel(false);
        let obs = Arc::new(ServerObs::new(b.cfg.metrics));
        let handshakes = Arc::new(Semaphore::new(b.cfg.max_handshakes.max(1)));
        let host = Arc::new(Host {
            methods: b.methods,
            max_in_flight: b.cfg.max_in_flight,
            max_message: b.cfg.max_message,
            heartbeat: b.cfg.heartbeat,
            cancel_grace: b.cfg.cancel_grace,
            idle_timeout,
            obs,
            registry: Registry::default(),
        });
        Arc::new(Shared {
            cfg: b.cfg,
            host,
            draining,
            conns: tokio_util::task::TaskTracker::new(),
            handshakes,
            peers: Peers::default(),
        })
    }

    fn registry(&self) -> &Registry {
        &self.host.registry
    }

    fn obs(&self) -> &ServerObs {
        &self.host.obs
    }
}

/// A bound server. Run it with [`serve`](Self::serve); stop it with a [`ServerHandle`].
///
/// # Examples
///
/// A server and a client in one process (usually they are two processes; the code is the
/// same):
///
/// ```
/// use shmrpc::{CallOptions, Client, ClientConfig, Server};
///
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let name = format!("doc-server-{}", std::process::id());
/// let server = Server::builder()
///     .unary("add", |_ctx, (a, b): (i32, i32)| async move { Ok(a + b) })
///     .streaming("count", |_ctx, n: u32, sink| async move {
///         for i in 0..n {
///             sink.send(&i).await?;
///         }
///         Ok(())
///     })
///     .bind(&name)?;
/// let handle = server.handle();
/// let serving = tokio::spawn(server.serve());
///
/// let client = Client::connect(&name, ClientConfig::default()).await?;
/// let sum: i32 = client.call("add", &(2, 3), CallOptions::default()).await?;
/// assert_eq!(sum, 5);
/// let mut stream = client.call_stream("count", &3u32, CallOptions::default()).await?;
/// let mut items = Vec::new();
/// while let Some(item) = stream.next::<u32>().await {
///     items.push(item?);
/// }
/// assert_eq!(items, [0, 1, 2]);
///
/// // Graceful shutdown: calls in flight finish, then `serve` returns.
/// drop(client);
/// handle.shutdown();
/// serving.await?;
/// # Ok(()) }
/// ```
pub struct Server {
    shared: Arc<Shared>,
    acceptor: Acceptor,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").finish_non_exhaustive()
    }
}

/// Stops a running server gracefully, and reaches its connected clients.
#[derive(Clone)]
pub struct ServerHandle {
    draining: watch::Sender<bool>,
    peers: Peers,
}

impl std::fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerHandle")
            .field("draining", &*self.draining.borrow())
            .finish_non_exhaustive()
    }
}

impl ServerHandle {
    /// The clients connected now, in connection order, to call them (a client serves the
    /// methods it registered with [`ClientBuilder`](crate::ClientBuilder)).
    ///
    /// # Examples
    ///
    /// ```
    /// use shmrpc::{CallOptions, Client, Server};
    ///
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let name = format!("doc-peers-{}", std::process::id());
    /// let server = Server::builder().bind(&name)?;
    /// let handle = server.handle();
    /// let serving = tokio::spawn(server.serve());
    ///
    /// let client = Client::builder()
    ///     .unary("version", |_ctx, (): ()| async { Ok("editor 1.0".to_string()) })
    ///     .connect(&name)
    ///     .await?;
    /// // The connection is served once the handshake is done; wait for it to show.
    /// let peer = loop {
    ///     if let Some(p) = handle.peers().pop() {
    ///         break p;
    ///     }
    ///     tokio::task::yield_now().await;
    /// };
    /// assert_eq!(peer.pid(), Some(std::process::id()));
    /// let v: String = peer.call("version", &(), CallOptions::default()).await?;
    /// assert_eq!(v, "editor 1.0");
    /// assert_eq!(handle.peer(peer.conn_id()).map(|p| p.conn_id()), Some(peer.conn_id()));
    ///
    /// drop(client);
    /// handle.shutdown();
    /// serving.await?;
    /// # Ok(()) }
    /// ```
    pub fn peers(&self) -> Vec<Peer> {
        let mut v: Vec<Peer> = self
            .peers
            .lock()
            .expect("poisoned")
            .values()
            .cloned()
            .collect();
        v.sort_by_key(Peer::conn_id);
        v
    }

    /// The client on connection `conn_id` ([`Peer::conn_id`]), if still connected.
    pub fn peer(&self, conn_id: u64) -> Option<Peer> {
        self.peers.lock().expect("poisoned").get(&conn_id).cloned()
    }

    /// Starts a graceful shutdown: no new connections or calls (they get
    /// `ShuttingDown`); calls in flight finish; then `serve` returns.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use shmrpc::Server;
    ///
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let name = format!("doc-shutdown-{}", std::process::id());
    /// let server = Server::builder()
    ///     .unary_raw("echo", |_ctx, body: Vec<u8>| async move { Ok(body) })
    ///     .bind(&name)?;
    /// let handle = server.handle(); // cheap to clone; e.g. for a signal handler
    /// let serving = tokio::spawn(server.serve());
    /// handle.shutdown();
    /// // Watchdog: `serve` must return once nothing is in flight.
    /// tokio::time::timeout(Duration::from_secs(10), serving).await??;
    /// # Ok(()) }
    /// ```
    pub fn shutdown(&self) {
        // `send_replace` stores the value even if `serve` has not subscribed yet.
        self.draining.send_replace(true);
    }
}

impl Server {
    fn new(b: ServerBuilder, acceptor: Acceptor) -> Self {
        let idle = match acceptor {
            Acceptor::Tcp(..) => b.cfg.tcp.idle_timeout,
            Acceptor::Shm(_) => None,
        };
        Self {
            shared: Shared::new(b, idle),
            acceptor,
        }
    }

    /// A builder with default settings.
    pub fn builder() -> ServerBuilder {
        ServerBuilder::default()
    }

    /// A handle to stop the server.
    pub fn handle(&self) -> ServerHandle {
        ServerHandle {
            draining: self.shared.draining.clone(),
            peers: self.shared.peers.clone(),
        }
    }

    /// The local TCP address, for a TCP server.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        match &self.acceptor {
            Acceptor::Tcp(l, _) => l.local_addr().ok(),
            Acceptor::Shm(_) => None,
        }
    }

    /// Accepts and serves connections until [`ServerHandle::shutdown`], then waits for the
    /// calls in flight to finish.
    pub async fn serve(self) {
        let mut draining = self.shared.draining.subscribe();
        loop {
            if *draining.borrow() {
                break;
            }
            tokio::select! {
                _ = draining.changed() => {}
                () = self.accept_one() => {}
            }
        }
        self.shared.conns.close();
        self.shared.conns.wait().await;
    }
}

#[cfg(test)]
mod tests;
