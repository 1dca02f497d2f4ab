//! Building a server: its routes and settings, then binding a name or an address.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use serde::{de::DeserializeOwned, Serialize};

use super::accept::{Acceptor, NetAccept};
use super::Server;
use crate::channel::Listener;
use crate::rpc::net::check_listen;
use crate::rpc::net::hello::ServerSide;
use crate::rpc::session::{
    CallContext, InlineContext, ItemSink, ItemStream, Items, Methods, NotifyContext,
};
use crate::rpc::{BindError, RpcError, ServerConfig};

/// Builds a [`Server`]: add methods, then bind.
///
/// # Examples
///
/// Routes of each kind, on a builder with custom settings (bind it with
/// [`bind`](Self::bind) or [`bind_tcp`](Self::bind_tcp)):
///
/// ```
/// use shmrpc::{Code, RpcError, ServerBuilder, ServerConfig};
///
/// let cfg = ServerConfig::default().with_max_in_flight(64);
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
    pub(super) cfg: ServerConfig,
    pub(super) methods: Methods,
}

impl std::fmt::Debug for ServerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerBuilder")
            .field("methods", &self.methods)
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
            methods: Methods::new(cfg.metrics),
            cfg,
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
    /// If another registered name has the same [`method_id`](crate::method_id) (a
    /// programming error, found at start-up), or the name is the built-in
    /// [`INSPECT_METHOD`](crate::inspect::INSPECT_METHOD).
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

    /// A unary method whose handler runs *inline*: synchronously, on the connection's
    /// reader, as soon as the request is read, with the response written into the buffer
    /// it is given. No task is spawned and no future is boxed, and the request and
    /// response buffers are the connection's own, reused: once a connection is warm, such
    /// a call allocates nothing on the server (with
    /// [`Client::call_raw_into`](crate::Client::call_raw_into), nothing on the client
    /// either).
    ///
    /// For small handlers that answer at once (a lookup, a counter, a check). While one
    /// runs, its connection reads nothing else, so it must not block or run long; it
    /// cannot be cancelled (it is over before a cancel could be read), and it has no
    /// [`Peer`](crate::Peer) to call back. A handler that waits belongs in
    /// [`unary_raw`](Self::unary_raw), whose handlers that answer on their first poll run
    /// on the reader too. A panic is caught and answered as the call's error
    /// ([`Code::HandlerFailed`](crate::Code::HandlerFailed)); the connection goes on.
    ///
    /// # Panics
    /// As [`unary_raw`](Self::unary_raw).
    ///
    /// # Examples
    ///
    /// ```
    /// use shmrpc::{CallOptions, Client, ClientConfig, Server};
    ///
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let name = format!("doc-inline-{}", std::process::id());
    /// let server = Server::builder()
    ///     .unary_inline_raw("upper", |_ctx, req, out| {
    ///         out.extend(req.iter().map(u8::to_ascii_uppercase));
    ///         Ok(())
    ///     })
    ///     .bind(&name)?;
    /// let handle = server.handle();
    /// let serving = tokio::spawn(server.serve());
    ///
    /// let client = Client::connect(&name, ClientConfig::default()).await?;
    /// let mut answer = Vec::new(); // reused call after call
    /// client.call_raw_into("upper", b"quiet", &mut answer, CallOptions::default()).await?;
    /// assert_eq!(answer, b"QUIET");
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
    /// (default codec). The response is encoded into the connection's reused buffer; the
    /// request's decoding allocates what its type owns.
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

    /// A server-streaming method on raw bytes: the handler sends items through the sink;
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

    /// A server-streaming method with a typed request.
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

    /// Listens on the shared-memory name `name` (see [`Listener::bind`]).
    ///
    /// # Errors
    /// [`BindError::Shm`], with the channel's bind error as its source (e.g. a live server
    /// has the name).
    ///
    /// # Examples
    ///
    /// ```
    /// use shmrpc::Server;
    ///
    /// # #[tokio::main] async fn main() -> Result<(), shmrpc::BindError> {
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
    pub fn bind(self, name: &str) -> Result<Server, BindError> {
        raise_fd_limit();
        let listener =
            Listener::bind(name, self.cfg.channel.clone()).map_err(|source| BindError::Shm {
                name: name.to_owned(),
                source,
            })?;
        Ok(Server::new(self, Acceptor::Shm(Arc::new(listener))))
    }

    /// Listens on a TCP address (for peers on other hosts); same frames, same handlers.
    /// Each connection is served only after its handshake (TLS, token, see
    /// [`TcpServerConfig`](crate::TcpServerConfig), in [`ServerConfig::tcp`]) succeeds.
    ///
    /// # Errors
    /// [`BindError::Insecure`] for a non-loopback address without authentication, or in
    /// plaintext without the opt-in ([`check_listen`](crate::check_listen));
    /// [`BindError::Tls`] for a TLS configuration that cannot be used; [`BindError::Tcp`],
    /// with the OS error as its source.
    ///
    /// # Examples
    ///
    /// ```
    /// use shmrpc::{CallOptions, Client, ClientConfig, Server};
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
    pub async fn bind_tcp(self, addr: SocketAddr) -> Result<Server, BindError> {
        let tcp = self.cfg.tcp.clone();
        check_listen(&addr, &tcp).map_err(|source| BindError::Insecure { addr, source })?;
        let tls = match &tcp.tls {
            Some(t) => Some(tokio_rustls::TlsAcceptor::from(
                t.build()
                    .map_err(|source| BindError::Tls { addr, source })?,
            )),
            None => None,
        };
        // Nobody authenticates (loopback only, by `check_listen`): serve the uids a
        // shared-memory server would.
        let uids = (!tcp.authenticates()).then(|| {
            let mut u = self.cfg.channel.allowed_uids.clone();
            u.push(rustix::process::geteuid().as_raw());
            u
        });
        let side = ServerSide {
            tls,
            token: tcp.token.clone(),
            compression: tcp.compression,
            uids,
        };
        raise_fd_limit();
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| BindError::Tcp { addr, source })?;
        let net = Arc::new(NetAccept::new(side, tcp));
        Ok(Server::new(self, Acceptor::Tcp(l, net)))
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
