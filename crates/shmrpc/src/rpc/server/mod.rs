//! The server: routes, per-connection dispatch, concurrency limits, shutdown.
//!
//! - [`builder`]: routes and binding ([`ServerBuilder`]).
//! - [`accept`]: taking connections (shared-memory handshake or TCP).
//! - [`connection`]: one connection's read loop: requests, cancels, credit, heartbeats.
//! - [`dispatch`]: starting a call, running its handler, sending its outcome.
//! - [`context`]: what a handler knows about its call ([`CallContext`]).
//! - [`sink`]: where a streaming handler sends its items ([`ItemSink`]).

mod accept;
mod builder;
mod connection;
mod context;
mod dispatch;
mod sink;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::{watch, Semaphore};

use super::inspect::Registry;
use super::obs::{MethodObs, ServerObs};
use super::{method_id, IdMap, RpcError, ServerConfig};
use accept::Acceptor;

pub use builder::ServerBuilder;
pub use context::CallContext;
pub use sink::ItemSink;
pub(crate) use sink::STREAM_WINDOW;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;
type Handler = Arc<
    dyn Fn(CallContext, Vec<u8>, ItemSink) -> BoxFuture<Result<Option<Vec<u8>>, RpcError>>
        + Send
        + Sync,
>;

/// The id of the built-in [`INSPECT_METHOD`](crate::rpc::inspect::INSPECT_METHOD).
const INSPECT_ID: u32 = method_id(crate::rpc::inspect::INSPECT_METHOD);

/// A method: its name, whether it streams, and its handler.
struct Route {
    name: String,
    streaming: bool,
    handler: Handler,
    obs: MethodObs,
}

struct Shared {
    cfg: ServerConfig,
    routes: IdMap<Route, u32>,
    /// Set once shutdown starts: no new calls.
    draining: watch::Sender<bool>,
    /// Live connections, to wait for at shutdown.
    conns: tokio_util::task::TaskTracker,
    /// Metrics handles (empty without the `metrics` feature).
    obs: Arc<ServerObs>,
    /// Bounds the handshakes running at once (`max_handshakes`).
    handshakes: Arc<Semaphore>,
    /// Live connections, for [`INSPECT_METHOD`](crate::rpc::inspect::INSPECT_METHOD).
    registry: Registry,
}

impl Shared {
    fn new(b: ServerBuilder) -> Arc<Self> {
        let (draining, _) = watch::channel(false);
        let obs = Arc::new(ServerObs::new(b.cfg.metrics));
        let handshakes = Arc::new(Semaphore::new(b.cfg.max_handshakes.max(1)));
        Arc::new(Shared {
            cfg: b.cfg,
            routes: b.routes,
            draining,
            conns: tokio_util::task::TaskTracker::new(),
            obs,
            handshakes,
            registry: Registry::default(),
        })
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

/// Stops a running server gracefully.
#[derive(Debug, Clone)]
pub struct ServerHandle {
    draining: watch::Sender<bool>,
}

impl ServerHandle {
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
        Self {
            shared: Shared::new(b),
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
        }
    }

    /// The local TCP address, for a TCP server.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        match &self.acceptor {
            Acceptor::Tcp(l) => l.local_addr().ok(),
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
