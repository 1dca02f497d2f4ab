//! The server: routes, per-connection dispatch, concurrency limits, shutdown.

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{de::DeserializeOwned, Serialize};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use super::inspect::{ConnInfo, Registry};
use super::obs::{MethodObs, ServerObs};
use super::transport::{FrameRx, FrameTx, TransportError};
use super::{decode, encode, method_id, split_deadline, Code, IdMap, RpcError, DEADLINE_PREFIX};
use crate::channel::{self, ChannelConfig, Listener};
use crate::frame::{FrameHeader, Kind};

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;
type Handler = Arc<
    dyn Fn(CallContext, Vec<u8>, ItemSink) -> BoxFuture<Result<Option<Vec<u8>>, RpcError>>
        + Send
        + Sync,
>;

/// Server settings. The defaults suit an editor talking to a local engine.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use shmrpc::channel::WaitStrategy;
/// use shmrpc::rpc::ServerConfig;
///
/// let mut cfg = ServerConfig {
///     max_in_flight: 32,
///     heartbeat: Duration::from_millis(500),
///     ..ServerConfig::default()
/// };
/// cfg.channel = cfg.channel.with_capacity(1 << 20).with_wait(WaitStrategy::Park);
/// assert_eq!(cfg.max_message, 16 << 20);
/// ```
///
/// Or from a file: [`ServerConfig::from_toml_file`].
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Ring sizes and wait strategy of each accepted connection.
    pub channel: ChannelConfig,
    /// Calls in flight per connection before the server stops reading it (backpressure).
    pub max_in_flight: usize,
    /// Largest message accepted or sent (default 16 MiB).
    pub max_message: usize,
    /// A ping is sent after this much silence; a peer silent for three of these is gone.
    pub heartbeat: Duration,
    /// How long a cancelled handler may run on before it is aborted.
    pub cancel_grace: Duration,
    /// Record metrics (`rpc::obs`) for this server. Needs the library's `metrics` feature
    /// and a recorder installed by the application; off by default, and then a call costs
    /// nothing for them.
    pub metrics: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            channel: ChannelConfig::default().with_capacity(64 * 1024),
            max_in_flight: 256,
            max_message: 16 << 20,
            heartbeat: Duration::from_secs(2),
            cancel_grace: Duration::from_millis(200),
            metrics: false,
        }
    }
}

/// A call's cancellation: set once (by the client's `Cancel`, its death, or the deadline)
/// and seen by the handler. One allocation per waiting call and a plain reference count
/// per clone (a `tokio_util` token takes a lock for each clone and drop).
#[derive(Clone, Default)]
struct CallToken(Arc<TokenState>);

#[derive(Default)]
struct TokenState {
    cancelled: AtomicBool,
    notify: tokio::sync::Notify,
}

impl std::fmt::Debug for CallToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallToken")
            .field("cancelled", &self.is_cancelled())
            .finish()
    }
}

impl CallToken {
    fn cancel(&self) {
        // Release: pairs with the Acquire load in `is_cancelled`.
        if !self.0.cancelled.swap(true, Ordering::AcqRel) {
            self.0.notify.notify_waiters();
        }
    }

    fn is_cancelled(&self) -> bool {
        // Acquire: pairs with the swap in `cancel`.
        self.0.cancelled.load(Ordering::Acquire)
    }

    async fn cancelled(&self) {
        loop {
            // A `Notified` receives `notify_waiters` from the moment it exists, so creating
            // it before looking at the flag loses no cancel.
            let notified = self.0.notify.notified();
            if self.is_cancelled() {
                return;
            }
            notified.await;
        }
    }
}

/// What a handler knows about its call.
///
/// # Examples
///
/// A handler that waits for its caller to give up, and reports that it noticed:
///
/// ```
/// use std::time::Duration;
/// use shmrpc::rpc::{CallOptions, Client, ClientConfig, Code, Server};
///
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let name = format!("doc-ctx-{}", std::process::id());
/// let (seen_tx, seen_rx) = tokio::sync::oneshot::channel();
/// let seen_tx = std::sync::Mutex::new(Some(seen_tx));
/// let server = Server::builder()
///     .unary_raw("slow", move |ctx, _body| {
///         let seen = seen_tx.lock().unwrap().take();
///         async move {
///             assert!(ctx.deadline().is_some()); // the caller set a timeout
///             ctx.cancelled().await; // completes when the deadline passes
///             if let Some(seen) = seen {
///                 let _ = seen.send(ctx.is_cancelled());
///             }
///             Ok(Vec::new())
///         }
///     })
///     .bind(&name)?;
/// let handle = server.handle();
/// let serving = tokio::spawn(server.serve());
///
/// let client = Client::connect(&name, ClientConfig::default()).await?;
/// let opts = CallOptions::timeout(Duration::from_millis(50));
/// let err = client.call_raw("slow", b"", opts).await.unwrap_err();
/// assert_eq!(err.code, Code::DeadlineExceeded);
/// // Watchdog: a handler that never learns of the cancel fails the example.
/// assert!(tokio::time::timeout(Duration::from_secs(10), seen_rx).await??);
///
/// drop(client);
/// handle.shutdown();
/// serving.await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct CallContext {
    call_id: u64,
    deadline: Option<Instant>,
    token: CallToken,
    peer_pid: Option<u32>,
}

impl CallContext {
    /// The call's id on its connection.
    pub fn call_id(&self) -> u64 {
        self.call_id
    }

    /// When the caller stops waiting, if it set a deadline.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Completes when the caller cancelled, died, or the deadline passed.
    pub async fn cancelled(&self) {
        self.token.cancelled().await;
    }

    /// Whether the call has been cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.token.is_cancelled()
    }

    /// The calling process's pid (for shared-memory connections).
    pub fn peer_pid(&self) -> Option<u32> {
        self.peer_pid
    }
}

/// How many stream items a server may send ahead of what the caller has read. The caller
/// returns credit as it reads (`Credit` frames), so a caller that stops reading holds back
/// only its own stream, not the connection.
pub(crate) const STREAM_WINDOW: usize = 64;

/// Where a streaming handler sends its items.
#[derive(Clone)]
pub struct ItemSink {
    tx: Arc<ConnTx>,
    method: u32,
    call_id: u64,
    max_message: usize,
    token: CallToken,
    /// The caller's stream credit; `None` for a unary call, which has no stream.
    credit: Option<Arc<Semaphore>>,
}

impl std::fmt::Debug for ItemSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ItemSink")
            .field("call_id", &self.call_id)
            .finish()
    }
}

impl ItemSink {
    /// Sends one raw item to the caller.
    ///
    /// # Errors
    /// `Cancelled` once the call is cancelled, `TooLarge`, or `PeerGone`.
    pub async fn send_raw(&self, item: &[u8]) -> Result<(), RpcError> {
        if self.token.is_cancelled() {
            return Err(RpcError::new(Code::Cancelled, "call cancelled"));
        }
        if item.len() > self.max_message {
            return Err(RpcError::new(
                Code::TooLarge,
                format!("item of {} bytes", item.len()),
            ));
        }
        let Some(credit) = &self.credit else {
            return Err(RpcError::new(Code::Protocol, "items sent for a unary call"));
        };
        // Wait for the caller's credit (it reads slowly, or not at all), or the cancel.
        tokio::select! {
            p = credit.acquire() => {
                p.map_err(|_| RpcError::new(Code::Cancelled, "call over"))?.forget();
            }
            _ = self.token.cancelled() => {
                return Err(RpcError::new(Code::Cancelled, "call cancelled"));
            }
        }
        self.tx
            .send(Kind::StreamItem, self.method, self.call_id, item)
            .await
            .map_err(RpcError::from)
    }

    /// Sends one item encoded with the default codec.
    ///
    /// # Errors
    /// As [`send_raw`](Self::send_raw), or `BadRequest` if it cannot be encoded.
    ///
    /// # Examples
    ///
    /// ```
    /// use shmrpc::rpc::{CallOptions, Client, ClientConfig, Server};
    ///
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let name = format!("doc-sink-{}", std::process::id());
    /// let server = Server::builder()
    ///     .streaming("words", |_ctx, text: String, sink| async move {
    ///         for word in text.split_whitespace() {
    ///             sink.send(&word.to_uppercase()).await?; // waits for the caller's credit
    ///         }
    ///         Ok(())
    ///     })
    ///     .bind(&name)?;
    /// let handle = server.handle();
    /// let serving = tokio::spawn(server.serve());
    ///
    /// let client = Client::connect(&name, ClientConfig::default()).await?;
    /// let mut stream = client
    ///     .call_stream("words", &"to be or".to_string(), CallOptions::default())
    ///     .await?;
    /// let mut words = Vec::new();
    /// while let Some(w) = stream.next::<String>().await {
    ///     words.push(w?);
    /// }
    /// assert_eq!(words, ["TO", "BE", "OR"]);
    ///
    /// drop((stream, client));
    /// handle.shutdown();
    /// serving.await?;
    /// # Ok(()) }
    /// ```
    pub async fn send<T: Serialize>(&self, item: &T) -> Result<(), RpcError> {
        self.send_raw(&encode(item)?).await
    }
}

/// Builds a [`Server`]: add routes, then bind.
///
/// # Examples
///
/// Routes of each kind, on a builder with custom settings (bind it with
/// [`bind`](Self::bind) or [`bind_tcp`](Self::bind_tcp)):
///
/// ```
/// use shmrpc::rpc::{Code, RpcError, ServerBuilder, ServerConfig};
///
/// let cfg = ServerConfig {
///     max_in_flight: 64,
///     ..ServerConfig::default()
/// };
/// let builder = ServerBuilder::new(cfg)
///     // Raw bytes in, raw bytes out.
///     .unary_raw("echo", |_ctx, body: Vec<u8>| async move { Ok(body) })
///     // Typed (postcard): a request type and a response type.
///     .unary("div", |_ctx, (a, b): (u32, u32)| async move {
///         a.checked_div(b)
///             .ok_or_else(|| RpcError::new(Code::BadRequest, "division by zero"))
///     })
///     // Server-streaming: send items through the sink, return to end the stream.
///     .streaming("range", |_ctx, n: u32, sink| async move {
///         for i in 0..n {
///             sink.send(&i).await?;
///         }
///         Ok(())
///     })
///     .streaming_raw("chunks", |_ctx, body: Vec<u8>, sink| async move {
///         for chunk in body.chunks(4) {
///             sink.send_raw(chunk).await?;
///         }
///         Ok(())
///     });
/// println!("{builder:?}");
/// ```
pub struct ServerBuilder {
    cfg: ServerConfig,
    routes: IdMap<Route, u32>,
}

impl std::fmt::Debug for ServerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<_> = self.routes.values().map(|r| &r.name).collect();
        f.debug_struct("ServerBuilder")
            .field("routes", &names)
            .finish()
    }
}

impl Default for ServerBuilder {
    fn default() -> Self {
        Self::new(ServerConfig::default())
    }
}

impl ServerBuilder {
    /// A builder with `cfg`.
    pub fn new(cfg: ServerConfig) -> Self {
        Self {
            cfg,
            routes: IdMap::default(),
        }
    }

    fn add(mut self, name: &str, streaming: bool, handler: Handler) -> Self {
        let id = method_id(name);
        assert!(
            id != INSPECT_ID,
            "{name:?} is the built-in inspection method's name (or has its id); rename it"
        );
        if let Some(other) = self.routes.get(&id) {
            assert!(
                other.name == name,
                "method names {:?} and {name:?} have the same id; rename one",
                other.name
            );
        }
        let name = name.to_owned();
        self.routes.insert(
            id,
            Route {
                obs: MethodObs::new(&name, self.cfg.metrics),
                name,
                streaming,
                handler,
            },
        );
        self
    }

    /// A unary method on raw bytes.
    ///
    /// # Panics
    /// If another registered name has the same [`method_id`] (a programming error, found at
    /// start-up).
    pub fn unary_raw<F, Fut>(self, name: &str, f: F) -> Self
    where
        F: Fn(CallContext, Vec<u8>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Vec<u8>, RpcError>> + Send + 'static,
    {
        let f = Arc::new(f);
        self.add(
            name,
            false,
            Arc::new(move |ctx, req, _sink| {
                let fut = f(ctx, req);
                Box::pin(async move { fut.await.map(Some) })
            }),
        )
    }

    /// A unary method with typed request and response (default codec).
    ///
    /// # Panics
    /// As [`unary_raw`](Self::unary_raw).
    pub fn unary<Req, Resp, F, Fut>(self, name: &str, f: F) -> Self
    where
        Req: DeserializeOwned + Send + 'static,
        Resp: Serialize + Send + 'static,
        F: Fn(CallContext, Req) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Resp, RpcError>> + Send + 'static,
    {
        let f = Arc::new(f);
        self.add(
            name,
            false,
            Arc::new(move |ctx, req, _sink| {
                let f = f.clone();
                Box::pin(async move {
                    let req: Req = decode(&req)?;
                    let resp = f(ctx, req).await?;
                    encode(&resp).map(Some)
                })
            }),
        )
    }

    /// A server-streaming method on raw bytes: the handler sends items through the sink;
    /// returning `Ok` ends the stream.
    ///
    /// # Panics
    /// As [`unary_raw`](Self::unary_raw).
    pub fn streaming_raw<F, Fut>(self, name: &str, f: F) -> Self
    where
        F: Fn(CallContext, Vec<u8>, ItemSink) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), RpcError>> + Send + 'static,
    {
        let f = Arc::new(f);
        self.add(
            name,
            true,
            Arc::new(move |ctx, req, sink| {
                let fut = f(ctx, req, sink);
                Box::pin(async move { fut.await.map(|()| None) })
            }),
        )
    }

    /// A server-streaming method with a typed request.
    ///
    /// # Panics
    /// As [`unary_raw`](Self::unary_raw).
    pub fn streaming<Req, F, Fut>(self, name: &str, f: F) -> Self
    where
        Req: DeserializeOwned + Send + 'static,
        F: Fn(CallContext, Req, ItemSink) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), RpcError>> + Send + 'static,
    {
        let f = Arc::new(f);
        self.add(
            name,
            true,
            Arc::new(move |ctx, req, sink| {
                let f = f.clone();
                Box::pin(async move {
                    let req: Req = decode(&req)?;
                    f(ctx, req, sink).await.map(|()| None)
                })
            }),
        )
    }

    /// Listens on the shared-memory name `name` (see [`channel::Listener::bind`]).
    ///
    /// # Errors
    /// [`Code::Unavailable`] with the bind error (e.g. a live server has the name).
    ///
    /// # Examples
    ///
    /// ```
    /// use shmrpc::rpc::Server;
    ///
    /// # #[tokio::main] async fn main() -> Result<(), shmrpc::rpc::RpcError> {
    /// let name = format!("doc-bind-{}", std::process::id());
    /// let server = Server::builder()
    ///     .unary("ping", |_ctx, (): ()| async { Ok(()) })
    ///     .bind(&name)?;
    /// // A second server cannot take a live server's name.
    /// assert!(Server::builder().bind(&name).is_err());
    /// let handle = server.handle();
    /// handle.shutdown(); // here at once: `serve` returns, and the socket file goes
    /// server.serve().await;
    /// # Ok(()) }
    /// ```
    pub fn bind(self, name: &str) -> Result<Server, RpcError> {
        raise_fd_limit();
        let listener = Listener::bind(name, self.cfg.channel.clone())
            .map_err(|e| RpcError::new(Code::Unavailable, e.to_string()))?;
        Ok(Server::new(self, Acceptor::Shm(Arc::new(listener))))
    }

    /// Listens on a TCP address (for peers on other hosts); same frames, same handlers.
    ///
    /// # Errors
    /// [`Code::Unavailable`] with the bind error.
    ///
    /// # Examples
    ///
    /// ```
    /// use shmrpc::rpc::{CallOptions, Client, ClientConfig, Server};
    ///
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// // Port 0: the OS picks a free port; `local_addr` tells which.
    /// let server = Server::builder()
    ///     .unary("len", |_ctx, s: String| async move { Ok(s.len() as u64) })
    ///     .bind_tcp("127.0.0.1:0".parse()?)
    ///     .await?;
    /// let addr = server.local_addr().expect("a TCP server has an address");
    /// let handle = server.handle();
    /// let serving = tokio::spawn(server.serve());
    ///
    /// let client = Client::connect_tcp(addr, ClientConfig::default()).await?;
    /// let n: u64 = client.call("len", &"four".to_string(), CallOptions::default()).await?;
    /// assert_eq!(n, 4);
    ///
    /// drop(client);
    /// handle.shutdown();
    /// serving.await?;
    /// # Ok(()) }
    /// ```
    pub async fn bind_tcp(self, addr: SocketAddr) -> Result<Server, RpcError> {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| RpcError::new(Code::Unavailable, e.to_string()))?;
        Ok(Server::new(self, Acceptor::Tcp(l)))
    }
}

/// Raises the soft limit on open files to the hard limit: each shared-memory connection
/// holds seven descriptors, and a server should hold a thousand connections and more.
fn raise_fd_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut lim = getrlimit(Resource::Nofile);
    if lim.current < lim.maximum {
        lim.current = lim.maximum;
        let _ = setrlimit(Resource::Nofile, lim);
    }
}

enum Acceptor {
    Shm(Arc<Listener>),
    Tcp(tokio::net::TcpListener),
}

/// The id of the built-in [`INSPECT_METHOD`](super::INSPECT_METHOD).
const INSPECT_ID: u32 = method_id(super::INSPECT_METHOD);

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
    /// Live connections, for [`INSPECT_METHOD`](super::INSPECT_METHOD).
    registry: Registry,
}

/// A bound server. Run it with [`serve`](Self::serve); stop it with a [`ServerHandle`].
///
/// # Examples
///
/// A server and a client in one process (usually they are two processes; the code is the
/// same):
///
/// ```
/// use shmrpc::rpc::{CallOptions, Client, ClientConfig, Server};
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
    /// use shmrpc::rpc::Server;
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
        let (draining, _) = watch::channel(false);
        let obs = Arc::new(ServerObs::new(b.cfg.metrics));
        Self {
            shared: Arc::new(Shared {
                cfg: b.cfg,
                routes: b.routes,
                draining,
                conns: tokio_util::task::TaskTracker::new(),
                obs,
                registry: Registry::default(),
            }),
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
                conn = self.accept() => {
                    if let Some((tx, rx, info)) = conn {
                        let shared = self.shared.clone();
                        self.shared.conns.spawn(serve_conn(shared, tx, rx, info));
                    }
                }
            }
        }
        self.shared.conns.close();
        self.shared.conns.wait().await;
    }

    /// The next connection, handshake done; `None` if this client failed (keep going).
    async fn accept(&self) -> Option<(FrameTx, FrameRx, Arc<ConnInfo>)> {
        let max = self.shared.cfg.max_message;
        match &self.acceptor {
            Acceptor::Shm(l) => {
                let sock = match l.accept_socket_async().await {
                    Ok(s) => s,
                    Err(_) => {
                        // Out of fds or similar: back off instead of spinning.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        return None;
                    }
                };
                let l = l.clone();
                // The handshake blocks (up to its timeout): keep it off the accept loop.
                let endpoint = tokio::task::spawn_blocking(move || {
                    channel::server_handshake(sock, l.config())
                })
                .await
                .ok()?
                .ok()?;
                let mut endpoint = endpoint;
                let pid = endpoint.peer_pid();
                let rings = (
                    endpoint.sender().producer().inspector(),
                    endpoint.receiver().consumer().inspector(),
                );
                let id = self.shared.registry.next_id();
                let info = Arc::new(ConnInfo::new(id, pid, "shm", Some(rings)));
                let (tx, rx) = endpoint.split();
                Some((FrameTx::Shm(tx, Vec::new()), FrameRx::shm(rx, max), info))
            }
            Acceptor::Tcp(l) => {
                let (s, _) = l.accept().await.ok()?;
                let _ = s.set_nodelay(true);
                let (r, w) = s.into_split();
                let id = self.shared.registry.next_id();
                let info = Arc::new(ConnInfo::new(id, None, "tcp", None));
                Some((FrameTx::Tcp(w, Vec::new()), FrameRx::tcp(r, max), info))
            }
        }
    }
}

/// A connection's sending half, shared by its reader and its calls. A failed send (the
/// peer is gone, or broke the ring: a `read_pos` that lies) marks the connection broken,
/// which ends it: its reader stops, its calls are cancelled.
struct ConnTx {
    tx: tokio::sync::Mutex<FrameTx>,
    broken: CallToken,
    obs: Arc<ServerObs>,
    info: Arc<ConnInfo>,
}

impl ConnTx {
    async fn send(
        &self,
        kind: Kind,
        method: u32,
        call_id: u64,
        payload: &[u8],
    ) -> Result<(), TransportError> {
        let r = self
            .tx
            .lock()
            .await
            .send(kind, method, call_id, payload)
            .await;
        match &r {
            Err(_) => self.broken.cancel(),
            Ok(()) => {
                self.obs.sent(payload.len());
                self.info.sent(payload.len());
            }
        }
        r
    }
}

/// A call that waits (its handler runs in a task): its cancellation token and, if it
/// streams, its credit. Calls answered on their first poll never get an entry.
type Running = (CallToken, Option<Arc<Semaphore>>);

/// What one connection's calls share.
struct ConnState {
    shared: Arc<Shared>,
    tx: Arc<ConnTx>,
    calls: Arc<Mutex<IdMap<Running>>>,
    in_flight: tokio_util::task::TaskTracker,
    peer_pid: Option<u32>,
}

impl ConnState {
    /// Starts a request that holds a concurrency permit.
    async fn start(&self, h: FrameHeader, mut payload: Vec<u8>, permit: OwnedSemaphorePermit) {
        let Some((deadline, _)) = split_deadline(&payload) else {
            let e = RpcError::new(Code::BadRequest, "request without deadline prefix");
            self.shared.obs.rejected(e.code);
            reply_error(&self.tx, h.method, h.call_id, e).await;
            return;
        };
        if h.method == INSPECT_ID {
            // Built in: what this server knows of its connections.
            let outcome = encode(&self.shared.registry.report()).map(Some);
            send_outcome(
                &self.tx,
                h.method,
                h.call_id,
                outcome,
                self.shared.cfg.max_message,
            )
            .await;
            return;
        }
        let Some(route) = self.shared.routes.get(&h.method) else {
            let e = RpcError::new(
                Code::UnknownMethod,
                format!("no method with id {:#010x}", h.method),
            );
            self.shared.obs.rejected(e.code);
            reply_error(&self.tx, h.method, h.call_id, e).await;
            return;
        };
        // The body is the payload after its prefix: shift it down instead of copying it out.
        payload.drain(..DEADLINE_PREFIX);
        let obs = route.obs.start(&self.shared.obs, h.call_id, payload.len());
        // A token of its own per call, not a child of a per-connection token: a child costs
        // a lock on the parent at creation and drop. When the connection ends, the calls
        // still running are cancelled one by one from `calls`.
        let token = CallToken::default();
        let credit = route
            .streaming
            .then(|| Arc::new(Semaphore::new(STREAM_WINDOW)));
        let ctx = CallContext {
            call_id: h.call_id,
            deadline: deadline.map(|d| Instant::now() + d),
            token: token.clone(),
            peer_pid: self.peer_pid,
        };
        let max = self.shared.cfg.max_message;
        let sink = ItemSink {
            tx: self.tx.clone(),
            method: h.method,
            call_id: h.call_id,
            max_message: max,
            token: token.clone(),
            credit: credit.clone(),
        };
        let mut fut = (route.handler)(ctx, payload, sink);
        // Fast path: most handlers answer without waiting for anything. Poll once here; if
        // the answer is ready, reply at once and skip the two task spawns (and their
        // wake-ups) that a handler which waits needs. No frame of this connection is read
        // meanwhile, so a call that finishes here needs no entry in `calls` (a later
        // `Cancel` or `Credit` for it finds nothing, as for any finished call).
        let first = {
            #[cfg(feature = "tracing")]
            let _in_span = obs.span().entered();
            poll_once(&mut fut)
        };
        if let Some(outcome) = first {
            let code = send_outcome(&self.tx, h.method, h.call_id, outcome, max).await;
            obs.end(&self.shared.obs, code);
            drop(permit);
            return;
        }
        self.calls
            .lock()
            .expect("poisoned")
            .insert(h.call_id, (token.clone(), credit));
        let (tx, calls) = (self.tx.clone(), self.calls.clone());
        let grace = self.shared.cfg.cancel_grace;
        #[cfg(feature = "tracing")]
        let fut: BoxFuture<_> = Box::pin(tracing::Instrument::instrument(fut, obs.span()));
        let server_obs = self.shared.obs.clone();
        self.tx
            .info
            .running
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.in_flight.spawn(async move {
            let outcome = run_handler(fut, token, deadline, grace).await;
            tx.info
                .running
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            calls.lock().expect("poisoned").remove(&h.call_id);
            let code = send_outcome(&tx, h.method, h.call_id, outcome, max).await;
            obs.end(&server_obs, code);
            drop(permit);
        });
    }

    /// Cancels every call still running (the connection ended).
    fn cancel_all(&self) {
        for (token, _) in self.calls.lock().expect("poisoned").values() {
            token.cancel();
        }
    }
}

/// Serves one connection until the peer leaves, dies, breaks the protocol, or the server
/// has drained.
///
/// Concurrency is bounded per connection. Requests beyond the limit wait in a queue of at
/// most `max_in_flight` entries; while it is full the connection is not read at all, so
/// the ring fills and the client's sends wait (backpressure). Until then, cancels and
/// heartbeats keep being read even when every permit is taken.
async fn serve_conn(shared: Arc<Shared>, tx: FrameTx, mut rx: FrameRx, info: Arc<ConnInfo>) {
    let peer_pid = info.peer_pid;
    shared.registry.add(info.clone());
    let limit = Arc::new(Semaphore::new(shared.cfg.max_in_flight));
    let max_waiting = shared.cfg.max_in_flight;
    let mut draining = shared.draining.subscribe();
    let hb = shared.cfg.heartbeat;
    let obs = shared.obs.clone();
    let st = ConnState {
        shared,
        tx: Arc::new(ConnTx {
            tx: tokio::sync::Mutex::new(tx),
            broken: CallToken::default(),
            obs,
            info,
        }),
        calls: Arc::default(),
        in_flight: tokio_util::task::TaskTracker::new(),
        peer_pid,
    };
    st.tx.obs.connection(1.0, peer_pid);
    let mut waiting: VecDeque<(FrameHeader, Vec<u8>)> = VecDeque::new();
    let mut silence = super::Silence::default();
    // One timer for the connection's life, re-armed when it fires: re-creating a sleep for
    // every frame cost a clock read and a timer-wheel insert and removal per message.
    let heartbeat = tokio::time::sleep(hb);
    tokio::pin!(heartbeat);
    loop {
        if *draining.borrow() {
            // Tell the client, let its calls in flight finish, then close.
            for (h, _) in waiting.drain(..) {
                let e = RpcError::new(Code::ShuttingDown, "server is shutting down");
                reply_error(&st.tx, h.method, h.call_id, e).await;
            }
            let _ = st.tx.send(Kind::Goodbye, 0, 0, &[]).await;
            break;
        }
        let can_read = waiting.len() < max_waiting;
        let frame = tokio::select! {
            p = limit.clone().acquire_owned(), if !waiting.is_empty() => {
                let (h, payload) = waiting.pop_front().expect("not empty");
                st.start(h, payload, p.expect("never closed")).await;
                continue;
            }
            f = rx.recv(), if can_read => f,
            () = &mut heartbeat => {
                heartbeat.as_mut().reset(tokio::time::Instant::now() + hb);
                let silent = silence.tick();
                if st.tx.obs.wants_occupancy() {
                    // The ring probe reads the shared header: no need for the sender's lock.
                    if let Some((to_client, _)) = &st.tx.info.rings {
                        st.tx.obs.occupancy(to_client.state().queued);
                    }
                }
                if silent >= 3 {
                    break; // silent peer (stopped, or hung): treat as gone
                }
                if silent >= 1 && st.tx.send(Kind::Ping, 0, 0, &[]).await.is_err() {
                    break;
                }
                continue;
            }
            _ = draining.changed() => continue,
            // A send failed: the peer is gone or broke the ring.
            () = st.tx.broken.cancelled() => break,
        };
        let (h, payload) = match frame {
            Ok(f) => f,
            Err(TransportError::TooLarge {
                call_id,
                method,
                message,
            }) => {
                silence.heard();
                reply_error(
                    &st.tx,
                    method,
                    call_id,
                    RpcError::new(Code::TooLarge, message),
                )
                .await;
                continue;
            }
            Err(TransportError::Gone(_)) | Err(TransportError::Protocol(_)) => break,
        };
        silence.heard();
        st.tx.info.received(payload.len());
        match h.kind {
            Kind::Request => match limit.clone().try_acquire_owned() {
                Ok(permit) if waiting.is_empty() => st.start(h, payload, permit).await,
                Ok(permit) => {
                    // Keep arrival order: the oldest waiting request goes first.
                    drop(permit);
                    st.tx.obs.backpressure();
                    waiting.push_back((h, payload));
                }
                Err(_) => {
                    st.tx.obs.backpressure();
                    waiting.push_back((h, payload));
                }
            },
            Kind::Cancel => {
                if let Some((t, _)) = st.calls.lock().expect("poisoned").get(&h.call_id) {
                    t.cancel();
                }
                if let Some(i) = waiting.iter().position(|(w, _)| w.call_id == h.call_id) {
                    waiting.remove(i);
                    let e = RpcError::new(Code::Cancelled, "call cancelled");
                    reply_error(&st.tx, h.method, h.call_id, e).await;
                }
            }
            Kind::Credit => {
                let n = payload
                    .get(..4)
                    .map_or(0, |b| u32::from_le_bytes(b.try_into().expect("4 bytes")));
                if let Some((_, Some(c))) = st.calls.lock().expect("poisoned").get(&h.call_id) {
                    // Bounded: a client cannot grant more than a window's worth at once.
                    let room = STREAM_WINDOW.saturating_sub(c.available_permits());
                    c.add_permits((n as usize).min(room));
                }
            }
            Kind::Ping => {
                if st.tx.send(Kind::Pong, 0, 0, &[]).await.is_err() {
                    break;
                }
            }
            Kind::Pong => {}
            Kind::Goodbye => break,
            // A client does not send responses: protocol violation.
            _ => break,
        }
    }
    // The client is gone or we are done: cancel whatever still runs, let it wind down.
    st.in_flight.close();
    if !*draining.borrow() || st.tx.broken.is_cancelled() {
        st.cancel_all();
    }
    st.in_flight.wait().await;
    st.tx.obs.connection(-1.0, peer_pid);
    st.shared.registry.remove(st.tx.info.id);
}

/// Polls a handler once with a no-op waker. `Some` if it finished (a panic counts as a
/// failed call); `None` if it must wait, in which case it is spawned and polled again with a
/// real waker (futures re-register their waker on every poll, so nothing is lost).
fn poll_once(
    fut: &mut BoxFuture<Result<Option<Vec<u8>>, RpcError>>,
) -> Option<Result<Option<Vec<u8>>, RpcError>> {
    use std::panic::{catch_unwind, AssertUnwindSafe};
    use std::task::{Context, Poll, Waker};
    let mut cx = Context::from_waker(Waker::noop());
    match catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(&mut cx))) {
        Ok(Poll::Ready(r)) => Some(r),
        Ok(Poll::Pending) => None,
        Err(_) => Some(Err(RpcError::handler("handler panicked"))),
    }
}

/// Sends a finished call's answer: its response, the end of its stream, or its error.
/// Returns the error's code if the call failed.
async fn send_outcome(
    tx: &ConnTx,
    method: u32,
    call_id: u64,
    outcome: Result<Option<Vec<u8>>, RpcError>,
    max: usize,
) -> Option<Code> {
    let (kind, body, code) = match outcome {
        Ok(Some(resp)) if resp.len() > max => {
            let e = RpcError::new(
                Code::TooLarge,
                format!("response of {} bytes exceeds {max}", resp.len()),
            );
            (Kind::Error, e.encode(), Some(e.code))
        }
        Ok(Some(resp)) => (Kind::Response, resp, None),
        Ok(None) => (Kind::StreamEnd, Vec::new(), None),
        Err(e) => (Kind::Error, e.encode(), Some(e.code)),
    };
    // A failed send marks the connection broken (`ConnTx::send`); nothing else to do here.
    let _ = tx.send(kind, method, call_id, &body).await;
    code
}

async fn reply_error(tx: &ConnTx, method: u32, call_id: u64, e: RpcError) {
    let _ = tx.send(Kind::Error, method, call_id, &e.encode()).await;
}

/// Runs a handler in its own task (so a panic fails only this call), racing it against
/// cancellation and the deadline. A cancelled handler gets `grace` to notice and return
/// before it is aborted.
async fn run_handler(
    fut: BoxFuture<Result<Option<Vec<u8>>, RpcError>>,
    token: CallToken,
    deadline: Option<Duration>,
    grace: Duration,
) -> Result<Option<Vec<u8>>, RpcError> {
    let mut task = tokio::spawn(fut);
    let expired = async {
        match deadline {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    let why = tokio::select! {
        r = &mut task => return flatten(r),
        _ = token.cancelled() => RpcError::new(Code::Cancelled, "call cancelled"),
        _ = expired => {
            token.cancel();
            RpcError::new(Code::DeadlineExceeded, "deadline exceeded")
        }
    };
    match tokio::time::timeout(grace, &mut task).await {
        Ok(_) => {}
        Err(_) => task.abort(),
    }
    Err(why)
}

fn flatten(
    r: Result<Result<Option<Vec<u8>>, RpcError>, tokio::task::JoinError>,
) -> Result<Option<Vec<u8>>, RpcError> {
    match r {
        Ok(r) => r,
        Err(e) if e.is_panic() => Err(RpcError::handler("handler panicked")),
        Err(_) => Err(RpcError::new(Code::Cancelled, "handler aborted")),
    }
}
