//! The client: one connection shared by many tasks, dialled and redialled with back-off;
//! the calls on it (and the methods it serves, if any) run in the connection engine of
//! [`session`](super::session).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{de::DeserializeOwned, Serialize};
use tokio_util::sync::CancellationToken;

use super::inspect::{ConnInfo, Registry};
use super::net::hello::{self, ClientSide, Conn, HandshakeError};
use super::net::{check_connect, TcpClientConfig};
use super::obs::ServerObs;
use super::session::outgoing::{check_size, within};
use super::session::{
    self, BidiCall, CallContext, ClientStreamCall, Ends, Host, InlineContext, ItemSender, ItemSink,
    ItemStream, Items, Methods, NotifyContext, Peer, Role,
};
use super::transport::{FrameRx, FrameTx, NetRx, NetTx};
use super::{decode, encode, CallOptions, CallStream, ConnectError, RpcError};
use crate::channel::{self, ChannelConfig};

/// Client settings.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use shmrpc::ClientConfig;
///
/// // Give up on a missing server after one second instead of five.
/// let cfg = ClientConfig::default().with_reconnect_for(Duration::from_secs(1));
/// assert_eq!(cfg.reconnect_for, Duration::from_secs(1));
/// assert_eq!(cfg.max_backoff, Duration::from_millis(100));
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ClientConfig {
    /// Wait strategy of the channel (ring sizes are the server's).
    pub channel: ChannelConfig,
    /// Largest message sent or accepted (default 16 MiB).
    pub max_message: usize,
    /// Ping after this much silence; three silent periods mean the server is gone.
    pub heartbeat: Duration,
    /// How long a call keeps trying to (re)connect before failing `Unavailable`.
    pub reconnect_for: Duration,
    /// First reconnect back-off; doubles up to `max_backoff`.
    pub backoff: Duration,
    /// Longest pause between reconnect attempts (default 100 ms), so a restarted server is
    /// found within about this long whatever the length of the outage.
    pub max_backoff: Duration,
    /// Calls from the server (to methods this client registered) running at once; as many
    /// more wait in a queue, past which the client stops reading the connection, as a
    /// server does (see [`ServerConfig::max_in_flight`](super::ServerConfig::max_in_flight)).
    /// Default 256.
    pub max_in_flight: usize,
    /// How long a cancelled handler of this client may run on before it is dropped
    /// (default 200 ms).
    pub cancel_grace: Duration,
    /// How [`connect_tcp`](Client::connect_tcp) connects: TLS, token, compression. The
    /// default is plaintext, to loopback addresses only.
    pub tcp: TcpClientConfig,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            channel: ChannelConfig::default(),
            max_message: 16 << 20,
            heartbeat: Duration::from_secs(2),
            reconnect_for: Duration::from_secs(5),
            backoff: Duration::from_millis(5),
            max_backoff: Duration::from_millis(100),
            max_in_flight: 256,
            cancel_grace: Duration::from_millis(200),
            tcp: TcpClientConfig::default(),
        }
    }
}

/// Setters, one per field (the struct is `#[non_exhaustive]`: build it from
/// [`ClientConfig::default`] with these).
impl ClientConfig {
    /// This config with another `channel` (the wait strategy).
    #[must_use]
    pub fn with_channel(mut self, channel: ChannelConfig) -> Self {
        self.channel = channel;
        self
    }

    /// This config with another `max_message` (largest message).
    #[must_use]
    pub fn with_max_message(mut self, max_message: usize) -> Self {
        self.max_message = max_message;
        self
    }

    /// This config with another `heartbeat` (ping period).
    #[must_use]
    pub fn with_heartbeat(mut self, heartbeat: Duration) -> Self {
        self.heartbeat = heartbeat;
        self
    }

    /// This config with another `reconnect_for` (how long a call keeps trying to connect).
    #[must_use]
    pub fn with_reconnect_for(mut self, reconnect_for: Duration) -> Self {
        self.reconnect_for = reconnect_for;
        self
    }

    /// This config with another `backoff` (first reconnect back-off).
    #[must_use]
    pub fn with_backoff(mut self, backoff: Duration) -> Self {
        self.backoff = backoff;
        self
    }

    /// This config with another `max_backoff` (longest pause between reconnect attempts).
    #[must_use]
    pub fn with_max_backoff(mut self, max_backoff: Duration) -> Self {
        self.max_backoff = max_backoff;
        self
    }

    /// This config with another `max_in_flight` (calls from the server running at once).
    #[must_use]
    pub fn with_max_in_flight(mut self, max_in_flight: usize) -> Self {
        self.max_in_flight = max_in_flight;
        self
    }

    /// This config with another `cancel_grace` (how long a cancelled handler may run on).
    #[must_use]
    pub fn with_cancel_grace(mut self, cancel_grace: Duration) -> Self {
        self.cancel_grace = cancel_grace;
        self
    }

    /// This config with another `tcp` (how TCP connections are made).
    #[must_use]
    pub fn with_tcp(mut self, tcp: TcpClientConfig) -> Self {
        self.tcp = tcp;
        self
    }
}

#[derive(Debug, Clone)]
enum Target {
    Shm(String),
    Tcp(SocketAddr),
    /// An in-memory transport handed in by a unit test (it cannot be redialled).
    #[cfg(test)]
    Mem,
}

/// One live connection: the handle that calls on it, and what ends it.
struct Live {
    peer: Peer,
    /// Cancelled when the last `Client` handle is gone: the reader says goodbye and ends,
    /// which frees the connection on both sides.
    shut: CancellationToken,
}

/// Closes the connection when the last handle (a `Client` clone or a `CallStream`) is
/// gone; without this its reader task would keep it open, and the server's resources
/// with it, for as long as the process lives.
impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(c) = self.current.get_mut().ok().and_then(Option::take) {
            c.shut.cancel();
        }
    }
}

struct Inner {
    target: Target,
    cfg: ClientConfig,
    /// The methods this client serves, and its limits, for each of its connections.
    host: Arc<Host>,
    /// The connection calls use; replaced when it dies.
    current: Mutex<Option<Arc<Live>>>,
    /// Held while (re)connecting, so one caller dials and the others wait for its result.
    dialing: tokio::sync::Mutex<()>,
}

/// Builds a [`Client`] that serves methods too: the server (its handlers, through
/// [`CallContext::peer`], or [`ServerHandle::peers`](super::ServerHandle::peers)) calls
/// them on the client's connection. Registration is as on a
/// [`ServerBuilder`](super::ServerBuilder); a call from the server to a method the client
/// lacks fails with `UnknownMethod`. Each reconnection serves the same methods.
///
/// # Examples
///
/// ```no_run
/// use shmrpc::{ClientBuilder, ClientConfig, RpcError};
///
/// # async fn f() -> Result<(), shmrpc::ConnectError> {
/// // An editor: the engine asks it for the text of an open file.
/// let client = ClientBuilder::new(ClientConfig::default())
///     .unary("file_text", |_ctx, path: String| async move {
///         std::fs::read_to_string(&path).map_err(|e| RpcError::with_source(
///             shmrpc::Code::HandlerFailed, format!("reading {path}"), e))
///     })
///     .connect("engine")
///     .await?;
/// # drop(client); Ok(()) }
/// ```
pub struct ClientBuilder {
    cfg: ClientConfig,
    methods: Methods,
}

impl std::fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("methods", &self.methods)
            .finish()
    }
}

impl Default for ClientBuilder {
    fn default() -> Self {
        Self::new(ClientConfig::default())
    }
}

impl ClientBuilder {
    /// A builder with `cfg` and no methods.
    pub fn new(cfg: ClientConfig) -> Self {
        Self {
            cfg,
            methods: Methods::new(false),
        }
    }

    /// Handles the notification `name` (raw bytes): each arrives once, in the order the
    /// peer sent them, handled one at a time per connection (the next waits for this
    /// handler to finish). Notifications and methods have separate names.
    ///
    /// # Panics
    /// If another notification name has the same [`method_id`](crate::method_id).
    pub fn on_notify_raw<F, Fut>(mut self, name: &str, f: F) -> Self
    where
        F: Fn(NotifyContext, Vec<u8>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.methods.on_notify_raw(name, f);
        self
    }

    /// Handles the typed notification `name` (default codec; a body that does not decode
    /// is dropped).
    ///
    /// # Panics
    /// As [`on_notify_raw`](Self::on_notify_raw).
    pub fn on_notify<T, F, Fut>(mut self, name: &str, f: F) -> Self
    where
        T: DeserializeOwned + Send + 'static,
        F: Fn(NotifyContext, T) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.methods.on_notify(name, f);
        self
    }

    /// A unary method on raw bytes.
    ///
    /// # Panics
    /// As [`ServerBuilder::unary_raw`](super::ServerBuilder::unary_raw).
    pub fn unary_raw<F, Fut>(mut self, name: &str, f: F) -> Self
    where
        F: Fn(CallContext, Vec<u8>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Vec<u8>, RpcError>> + Send + 'static,
    {
        self.methods.unary_raw(name, f);
        self
    }

    /// A unary method with typed request and response (default codec).
    ///
    /// # Panics
    /// As [`unary_raw`](Self::unary_raw).
    pub fn unary<Req, Resp, F, Fut>(mut self, name: &str, f: F) -> Self
    where
        Req: DeserializeOwned + Send + 'static,
        Resp: Serialize + Send + 'static,
        F: Fn(CallContext, Req) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Resp, RpcError>> + Send + 'static,
    {
        self.methods.unary(name, f);
        self
    }

    /// A unary method whose handler runs inline, on the connection's reader: see
    /// [`ServerBuilder::unary_inline_raw`](super::ServerBuilder::unary_inline_raw).
    ///
    /// # Panics
    /// As [`unary_raw`](Self::unary_raw).
    ///
    /// # Examples
    ///
    /// The server asks its caller for a setting while answering it:
    ///
    /// ```
    /// use shmrpc::{CallOptions, Client, Server};
    ///
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let name = format!("doc-client-inline-{}", std::process::id());
    /// let server = Server::builder()
    ///     .unary_raw("greet", |ctx, who| async move {
    ///         let title = ctx.peer().call_raw("title", &who, CallOptions::default()).await?;
    ///         Ok([&b"hello, "[..], &title, b" ", &who].concat())
    ///     })
    ///     .bind(&name)?;
    /// let handle = server.handle();
    /// let serving = tokio::spawn(server.serve());
    ///
    /// let client = Client::builder()
    ///     .unary_inline_raw("title", |_ctx, _who, out| {
    ///         out.extend_from_slice(b"dear");
    ///         Ok(())
    ///     })
    ///     .connect(&name)
    ///     .await?;
    /// let greeting = client.call_raw("greet", b"Ada", CallOptions::default()).await?;
    /// assert_eq!(greeting, b"hello, dear Ada");
    ///
    /// drop(client);
    /// handle.shutdown();
    /// serving.await?;
    /// # Ok(()) }
    /// ```
    pub fn unary_inline_raw<F>(mut self, name: &str, f: F) -> Self
    where
        F: Fn(&InlineContext, &[u8], &mut Vec<u8>) -> Result<(), RpcError> + Send + Sync + 'static,
    {
        self.methods.unary_inline_raw(name, f);
        self
    }

    /// [`unary_inline_raw`](Self::unary_inline_raw) with typed request and response
    /// (default codec).
    ///
    /// # Panics
    /// As [`unary_raw`](Self::unary_raw).
    pub fn unary_inline<Req, Resp, F>(mut self, name: &str, f: F) -> Self
    where
        Req: DeserializeOwned,
        Resp: Serialize,
        F: Fn(&InlineContext, Req) -> Result<Resp, RpcError> + Send + Sync + 'static,
    {
        self.methods.unary_inline(name, f);
        self
    }

    /// A streaming method on raw bytes: the handler sends items through the sink;
    /// returning `Ok` ends the stream.
    ///
    /// # Panics
    /// As [`unary_raw`](Self::unary_raw).
    pub fn streaming_raw<F, Fut>(mut self, name: &str, f: F) -> Self
    where
        F: Fn(CallContext, Vec<u8>, ItemSink) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), RpcError>> + Send + 'static,
    {
        self.methods.streaming_raw(name, f);
        self
    }

    /// A streaming method with a typed request.
    ///
    /// # Panics
    /// As [`unary_raw`](Self::unary_raw).
    pub fn streaming<Req, F, Fut>(mut self, name: &str, f: F) -> Self
    where
        Req: DeserializeOwned + Send + 'static,
        F: Fn(CallContext, Req, ItemSink) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), RpcError>> + Send + 'static,
    {
        self.methods.streaming(name, f);
        self
    }

    /// A client-streaming method on raw bytes: the caller streams items (the handler
    /// reads them from its [`ItemStream`] until `None`, the caller's end), then the
    /// handler's `Ok` is the one response.
    ///
    /// # Panics
    /// As [`unary_raw`](Self::unary_raw).
    pub fn client_streaming_raw<F, Fut>(mut self, name: &str, f: F) -> Self
    where
        F: Fn(CallContext, ItemStream) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Vec<u8>, RpcError>> + Send + 'static,
    {
        self.methods.client_streaming_raw(name, f);
        self
    }

    /// A client-streaming method with typed items and response (default codec).
    ///
    /// # Panics
    /// As [`unary_raw`](Self::unary_raw).
    pub fn client_streaming<Item, Resp, F, Fut>(mut self, name: &str, f: F) -> Self
    where
        Item: DeserializeOwned + 'static,
        Resp: Serialize + Send + 'static,
        F: Fn(CallContext, Items<Item>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Resp, RpcError>> + Send + 'static,
    {
        self.methods.client_streaming(name, f);
        self
    }

    /// A bidirectional method on raw bytes: the handler reads the caller's items from its
    /// [`ItemStream`] and sends its own through the sink, at once; returning `Ok` ends its
    /// stream.
    ///
    /// # Panics
    /// As [`unary_raw`](Self::unary_raw).
    pub fn bidi_raw<F, Fut>(mut self, name: &str, f: F) -> Self
    where
        F: Fn(CallContext, ItemStream, ItemSink) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), RpcError>> + Send + 'static,
    {
        self.methods.bidi_raw(name, f);
        self
    }

    /// A bidirectional method with typed incoming items (default codec); its own items go
    /// through the sink.
    ///
    /// # Panics
    /// As [`unary_raw`](Self::unary_raw).
    pub fn bidi<Item, F, Fut>(mut self, name: &str, f: F) -> Self
    where
        Item: DeserializeOwned + 'static,
        F: Fn(CallContext, Items<Item>, ItemSink) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), RpcError>> + Send + 'static,
    {
        self.methods.bidi(name, f);
        self
    }

    /// Connects to the shared-memory server `name`, serving these methods on the
    /// connection.
    ///
    /// # Errors
    /// As [`Client::connect`].
    pub async fn connect(self, name: &str) -> Result<Client, ConnectError> {
        Client::start(Target::Shm(name.to_owned()), self).await
    }

    /// Connects to a server over TCP, serving these methods on the connection.
    ///
    /// # Errors
    /// As [`Client::connect`].
    pub async fn connect_tcp(self, addr: SocketAddr) -> Result<Client, ConnectError> {
        Client::start(Target::Tcp(addr), self).await
    }

    fn host(self) -> (ClientConfig, Arc<Host>) {
        let cfg = self.cfg;
        let host = Arc::new(Host {
            methods: self.methods,
            max_in_flight: cfg.max_in_flight,
            max_message: cfg.max_message,
            heartbeat: cfg.heartbeat,
            cancel_grace: cfg.cancel_grace,
            idle_timeout: None,
            obs: Arc::new(ServerObs::new(false)),
            registry: Registry::default(),
        });
        (cfg, host)
    }
}

/// An RPC client. Cheap to clone; all clones share one connection.
///
/// A client made by [`Client::builder`] serves methods too, on the same connection.
///
/// # Examples
///
/// Assuming a server named `engine` is running (see [`Server`](super::Server) for one):
///
/// ```no_run
/// use std::time::Duration;
/// use shmrpc::{CallOptions, Client, ClientConfig};
///
/// # async fn f() -> Result<(), shmrpc::RpcError> {
/// let client = Client::connect("engine", ClientConfig::default()).await?;
/// // Clones share the connection; calls from many tasks run concurrently on it.
/// let other = client.clone();
/// let (a, b) = tokio::join!(
///     client.call::<_, u64>("add", &(1u64, 2u64), CallOptions::default()),
///     other.call::<_, u64>("add", &(3u64, 4u64), CallOptions::timeout(Duration::from_secs(1))),
/// );
/// assert_eq!((a?, b?), (3, 7));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("target", &self.inner.target)
            .finish()
    }
}

impl Client {
    /// A builder for a client that serves methods too (see [`ClientBuilder`]).
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    /// Connects to the shared-memory server `name`.
    ///
    /// # Errors
    /// [`ConnectError`] (with the last attempt's error as its source) if no server
    /// answers within `cfg.reconnect_for`.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use shmrpc::{Client, ClientConfig};
    ///
    /// # async fn f() -> Result<(), shmrpc::ConnectError> {
    /// // Wait up to a second for the server to appear (for example, just after starting it).
    /// let cfg = ClientConfig::default().with_reconnect_for(Duration::from_secs(1));
    /// let client = Client::connect("engine", cfg).await?;
    /// # drop(client); Ok(()) }
    /// ```
    pub async fn connect(name: &str, cfg: ClientConfig) -> Result<Self, ConnectError> {
        ClientBuilder::new(cfg).connect(name).await
    }

    /// Connects to a server over TCP.
    ///
    /// # Errors
    /// As [`connect`](Self::connect).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use shmrpc::{Client, ClientConfig};
    ///
    /// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
    /// let client = Client::connect_tcp("192.0.2.7:7000".parse()?, ClientConfig::default()).await?;
    /// # drop(client); Ok(()) }
    /// ```
    pub async fn connect_tcp(addr: SocketAddr, cfg: ClientConfig) -> Result<Self, ConnectError> {
        ClientBuilder::new(cfg).connect_tcp(addr).await
    }

    async fn start(target: Target, b: ClientBuilder) -> Result<Self, ConnectError> {
        let (cfg, host) = b.host();
        let c = Self {
            inner: Arc::new(Inner {
                target,
                cfg,
                host,
                current: Mutex::new(None),
                dialing: tokio::sync::Mutex::new(()),
            }),
        };
        c.conn(None).await?;
        Ok(c)
    }

    /// A client over an in-memory transport (unit tests).
    #[cfg(test)]
    pub(crate) fn over(tx: FrameTx, rx: FrameRx, b: ClientBuilder) -> Self {
        let (cfg, host) = b.host();
        let c = Self {
            inner: Arc::new(Inner {
                target: Target::Mem,
                cfg,
                host,
                current: Mutex::new(None),
                dialing: tokio::sync::Mutex::new(()),
            }),
        };
        let live = c.open(tx, rx, ConnInfo::new(1, None, "mem", None));
        *c.inner.current.lock().expect("poisoned") = Some(live);
        c
    }

    /// The current connection if it takes calls.
    fn live(&self) -> Option<Peer> {
        let current = self.inner.current.lock().expect("poisoned");
        current
            .as_ref()
            .map(|c| &c.peer)
            .filter(|p| p.is_connected())
            .cloned()
    }

    /// [`conn`](Self::conn) for a call: the live connection without a future, or the
    /// (re)connection in a boxed one. A call's future is moved on every call, so it is kept
    /// small: dialling's state (a TCP connect, a blocking task) would be most of it.
    async fn conn_now(&self, until: Option<Instant>) -> Result<Peer, RpcError> {
        match self.live() {
            Some(c) => Ok(c),
            None => Ok(Box::pin(self.conn(until)).await?),
        }
    }

    /// The live connection, reconnecting (with back-off) if it is gone, until `until` or
    /// `reconnect_for` from now, whichever is first. Each caller measures its own give-up
    /// time from when it asked, not from when it got the lock.
    async fn conn(&self, until: Option<Instant>) -> Result<Peer, ConnectError> {
        if let Some(c) = self.live() {
            return Ok(c);
        }
        let mut give_up = Instant::now() + self.inner.cfg.reconnect_for;
        if let Some(u) = until {
            give_up = give_up.min(u);
        }
        let _dialing = self.inner.dialing.lock().await;
        // Another caller may have reconnected while this one waited for the lock.
        if let Some(c) = self.live() {
            return Ok(c);
        }
        let mut backoff = self.inner.cfg.backoff;
        loop {
            match self.dial().await {
                Ok(c) => {
                    let peer = c.peer.clone();
                    // A previous connection that drains (the server said goodbye) stays
                    // open until the server has answered its calls and closes it.
                    *self.inner.current.lock().expect("poisoned") = Some(c);
                    return Ok(peer);
                }
                Err(e) if e.is_final() || Instant::now() + backoff >= give_up => return Err(e),
                Err(_) => {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.inner.cfg.max_backoff);
                }
            }
        }
    }

    async fn dial(&self) -> Result<Arc<Live>, ConnectError> {
        let cfg = &self.inner.cfg;
        let id = self.inner.host.registry.next_id();
        let (tx, rx, info) = match &self.inner.target {
            #[cfg(test)]
            Target::Mem => {
                return Err(ConnectError::Runtime(std::io::Error::other(
                    "an in-memory connection cannot be redialled",
                )))
            }
            Target::Shm(name) => {
                let (n, ch) = (name.clone(), cfg.channel.clone());
                let mut ep = tokio::task::spawn_blocking(move || channel::connect(&n, &ch))
                    .await
                    .map_err(|e| ConnectError::Runtime(std::io::Error::other(e)))?
                    .map_err(|source| ConnectError::Shm {
                        name: name.clone(),
                        source,
                    })?;
                let rings = (
                    ep.sender().producer().inspector(),
                    ep.receiver().consumer().inspector(),
                );
                let info = ConnInfo::new(id, ep.peer_pid(), "shm", Some(rings));
                let (tx, rx) = ep.split();
                (
                    FrameTx::Shm(tx, Vec::new()),
                    FrameRx::shm(rx, cfg.max_message),
                    info,
                )
            }
            Target::Tcp(addr) => {
                let conn = dial_tcp(*addr, &cfg.tcp).await?;
                let above = conn.lz4.then_some(cfg.tcp.compress_above);
                let rx = NetRx::new(conn.read, cfg.max_message, conn.lz4, cfg.tcp.frame_timeout);
                (
                    FrameTx::Tcp(NetTx::new(conn.write, above)),
                    FrameRx::Tcp(rx),
                    ConnInfo::new(id, None, conn.transport, None),
                )
            }
        };
        Ok(self.open(tx, rx, info))
    }

    /// Starts the engine of a new connection.
    fn open(&self, tx: FrameTx, rx: FrameRx, info: ConnInfo) -> Arc<Live> {
        let shut = CancellationToken::new();
        let ends = Ends {
            draining: None,
            shut: Some(shut.clone()),
        };
        let host = self.inner.host.clone();
        let (peer, run) = session::open(host, Role::Client, tx, rx, Arc::new(info), ends);
        tokio::spawn(run);
        Arc::new(Live { peer, shut })
    }

    /// Sends the notification `name` with raw bytes to the server, on the current
    /// connection (dialling one if there is none): a one-way message, answered by nothing.
    /// Waits only while this end has no notification credit (the server's handlers are
    /// behind by 64 on this connection); calls go on meanwhile. A notification is never
    /// resent on another connection: if the connection ends first, it fails `PeerGone`.
    ///
    /// # Errors
    /// `TooLarge` (nothing sent), `PeerGone`, or the dial's failure (`Unavailable`).
    pub async fn notify_raw(&self, name: &str, body: &[u8]) -> Result<(), RpcError> {
        let peer = self.conn(None).await.map_err(RpcError::from)?;
        peer.notify_raw(name, body).await
    }

    /// Sends a typed notification (default codec): see [`notify_raw`](Self::notify_raw).
    ///
    /// # Errors
    /// As [`notify_raw`](Self::notify_raw), or `BadRequest` if `body` does not encode.
    pub async fn notify<T: Serialize>(&self, name: &str, body: &T) -> Result<(), RpcError> {
        self.notify_raw(name, &encode(body)?).await
    }

    /// Calls a unary method with raw bytes.
    ///
    /// # Errors
    /// The server's error, or `DeadlineExceeded`, `PeerGone`, `TooLarge`, `Unavailable`.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn f(client: shmrpc::Client) -> Result<(), shmrpc::RpcError> {
    /// use shmrpc::CallOptions;
    ///
    /// let echoed = client.call_raw("echo", b"bytes as they are", CallOptions::default()).await?;
    /// assert_eq!(echoed, b"bytes as they are");
    /// # Ok(()) }
    /// ```
    pub async fn call_raw(
        &self,
        method: &str,
        body: &[u8],
        opts: CallOptions,
    ) -> Result<Vec<u8>, RpcError> {
        Ok(self.call_raw_on(method, body, opts).await?.0)
    }

    /// Calls a unary method with raw bytes, and puts the answer in `out` (whatever was in
    /// it is dropped). The answer's buffer is swapped in, not copied, and `out`'s old
    /// buffer goes to the connection, which reads a later answer into it: a caller that
    /// keeps one `out` makes no allocation per call once warm (against a server whose
    /// handler does not allocate either, such as an
    /// [inline](crate::ServerBuilder::unary_inline_raw) one). Nothing else differs from
    /// [`call_raw`](Self::call_raw).
    ///
    /// # Errors
    /// As [`call_raw`](Self::call_raw); `out` is left as it was.
    ///
    /// # Examples
    /// See [`ServerBuilder::unary_inline_raw`](crate::ServerBuilder::unary_inline_raw).
    pub async fn call_raw_into(
        &self,
        method: &str,
        body: &[u8],
        out: &mut Vec<u8>,
        opts: CallOptions,
    ) -> Result<(), RpcError> {
        let (answer, peer) = self.call_raw_on(method, body, opts).await?;
        peer.out.link.recycle(std::mem::replace(out, answer));
        Ok(())
    }

    /// [`call_raw`](Self::call_raw), and the connection that answered.
    async fn call_raw_on(
        &self,
        method: &str,
        body: &[u8],
        opts: CallOptions,
    ) -> Result<(Vec<u8>, Peer), RpcError> {
        check_size(body, self.inner.cfg.max_message)?;
        let until = opts.timeout.map(|d| Instant::now() + d);
        within(opts.timeout, || async move {
            // A connection can die (or start draining) between `conn` and the call's
            // registration: then take the next one.
            loop {
                let peer = self.conn_now(until).await?;
                if let Some(r) = peer.out.call_raw(method, body, opts.timeout).await? {
                    return Ok((r, peer));
                }
            }
        })
        .await
    }

    /// Calls a unary method with typed request and response.
    ///
    /// # Errors
    /// As [`call_raw`](Self::call_raw), or `BadRequest` for codec failures.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn f(client: shmrpc::Client) -> Result<(), shmrpc::RpcError> {
    /// use std::time::Duration;
    /// use shmrpc::{CallOptions, Code};
    ///
    /// // Request and response types are any serde types; both sides must agree on them.
    /// let opts = CallOptions::timeout(Duration::from_millis(500));
    /// match client.call::<_, String>("greet", &"world".to_string(), opts).await {
    ///     Ok(greeting) => println!("{greeting}"),
    ///     Err(e) if e.code == Code::DeadlineExceeded => println!("too slow; cancelled"),
    ///     Err(e) => return Err(e),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        method: &str,
        req: &Req,
        opts: CallOptions,
    ) -> Result<Resp, RpcError> {
        let (answer, peer) = self.call_raw_on(method, &encode(req)?, opts).await?;
        let resp = decode(&answer);
        peer.out.link.recycle(answer);
        resp
    }

    /// Calls a server-streaming method with raw bytes. Dropping the stream before its end
    /// cancels the call on the server.
    ///
    /// # Errors
    /// As [`call_raw`](Self::call_raw) for starting the call.
    pub async fn call_stream_raw(
        &self,
        method: &str,
        body: &[u8],
        opts: CallOptions,
    ) -> Result<CallStream, RpcError> {
        check_size(body, self.inner.cfg.max_message)?;
        let until = opts.timeout.map(|d| Instant::now() + d);
        within(opts.timeout, || async move {
            loop {
                let peer = self.conn_now(until).await?;
                let keep: Arc<dyn std::any::Any + Send + Sync> = self.inner.clone();
                let started = peer
                    .out
                    .call_stream_raw(method, body, opts.timeout, Some(keep))
                    .await?;
                if let Some(s) = started {
                    return Ok(s);
                }
            }
        })
        .await
    }

    /// Calls a server-streaming method with a typed request.
    ///
    /// # Errors
    /// As [`call_stream_raw`](Self::call_stream_raw).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn f(client: shmrpc::Client) -> Result<(), shmrpc::RpcError> {
    /// use shmrpc::CallOptions;
    ///
    /// let prompt = "fn main() {".to_string();
    /// let mut stream = client.call_stream("chat", &prompt, CallOptions::default()).await?;
    /// let mut tokens = 0;
    /// while let Some(token) = stream.next::<String>().await {
    ///     print!("{}", token?);
    ///     tokens += 1;
    ///     if tokens == 10 {
    ///         break; // enough: dropping the stream cancels the call on the server
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn call_stream<Req: Serialize>(
        &self,
        method: &str,
        req: &Req,
        opts: CallOptions,
    ) -> Result<CallStream, RpcError> {
        self.call_stream_raw(method, &encode(req)?, opts).await
    }

    /// Calls a client-streaming method: send its items, then
    /// [`finish`](ClientStreamCall::finish) for the one response. Dropping the call before
    /// its response cancels it on the server. The deadline covers the whole call.
    ///
    /// # Errors
    /// As [`call_raw`](Self::call_raw) for starting the call.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn f(client: shmrpc::Client) -> Result<(), shmrpc::RpcError> {
    /// use shmrpc::CallOptions;
    ///
    /// let mut call = client.call_client_stream("sum", CallOptions::default()).await?;
    /// for n in 1..=10u64 {
    ///     call.send(&n).await?; // waits only if the server is a window behind
    /// }
    /// let total: u64 = call.finish().await?;
    /// assert_eq!(total, 55);
    /// # Ok(()) }
    /// ```
    pub async fn call_client_stream(
        &self,
        method: &str,
        opts: CallOptions,
    ) -> Result<ClientStreamCall, RpcError> {
        Ok(ClientStreamCall::new(
            self.call_sending(method, opts).await?,
        ))
    }

    /// Calls a bidirectional method: items go both ways at once, through the call's
    /// sending and receiving halves ([`BidiCall::split`] to use them from two tasks).
    /// Dropping both halves before the end cancels the call on the server. The deadline
    /// covers the whole call.
    ///
    /// # Errors
    /// As [`call_raw`](Self::call_raw) for starting the call.
    pub async fn call_bidi(&self, method: &str, opts: CallOptions) -> Result<BidiCall, RpcError> {
        Ok(BidiCall::new(self.call_sending(method, opts).await?))
    }

    async fn call_sending(
        &self,
        method: &str,
        opts: CallOptions,
    ) -> Result<(ItemSender, CallStream), RpcError> {
        let until = opts.timeout.map(|d| Instant::now() + d);
        within(opts.timeout, || async move {
            loop {
                let peer = self.conn_now(until).await?;
                let keep: Arc<dyn std::any::Any + Send + Sync> = self.inner.clone();
                let started = peer
                    .out
                    .call_sending(method, opts.timeout, Some(keep))
                    .await?;
                if let Some(s) = started {
                    return Ok(s);
                }
            }
        })
        .await
    }
}

#[cfg(test)]
#[path = "client_tests.rs"]
mod tests;

/// Connects to `addr` and runs the connection handshake (TLS, token), within
/// `cfg.handshake_timeout`.
async fn dial_tcp(addr: SocketAddr, cfg: &TcpClientConfig) -> Result<Conn, ConnectError> {
    check_connect(&addr, cfg).map_err(|source| ConnectError::Insecure { addr, source })?;
    let tls = match &cfg.tls {
        Some(t) => {
            let (c, name) = t
                .build()
                .map_err(|source| ConnectError::Tls { addr, source })?;
            Some((tokio_rustls::TlsConnector::from(c), name))
        }
        None => None,
    };
    let side = ClientSide {
        tls,
        token: cfg.token.clone(),
        compression: cfg.compression,
    };
    let limit = cfg.handshake_timeout;
    let handshake = async {
        let s = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|source| ConnectError::Tcp { addr, source })?;
        hello::connect(s, &side)
            .await
            .map_err(|source| ConnectError::Handshake { addr, source })
    };
    match tokio::time::timeout(limit, handshake).await {
        Ok(r) => r,
        Err(_) => Err(ConnectError::Handshake {
            addr,
            source: HandshakeError::Timeout(limit),
        }),
    }
}
