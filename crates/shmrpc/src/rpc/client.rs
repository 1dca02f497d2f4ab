//! The client: one connection shared by many tasks, calls matched by id, cancel on drop,
//! reconnect with backoff.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use serde::{de::DeserializeOwned, Serialize};
use tokio::sync::mpsc;

use super::transport::{FrameRx, FrameTx};
use super::{decode, encode, method_id, Code, ConnectError, IdMap, RpcError, DEADLINE_PREFIX};
use crate::channel::{self, ChannelConfig};
use crate::frame::Kind;

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
}

/// Per-call options. Built from [`CallOptions::default`] or [`CallOptions::timeout`] and
/// the `with_*` setters, so that new options do not break callers.
#[derive(Debug, Clone, Copy, Default)]
#[non_exhaustive]
pub struct CallOptions {
    /// Give up (and cancel the call on the server) after this long.
    pub timeout: Option<Duration>,
}

impl CallOptions {
    /// Options with a timeout.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use shmrpc::CallOptions;
    ///
    /// let opts = CallOptions::timeout(Duration::from_secs(2));
    /// assert_eq!(opts.timeout, Some(Duration::from_secs(2)));
    /// assert_eq!(CallOptions::default().timeout, None); // wait as long as it takes
    /// ```
    pub fn timeout(d: Duration) -> Self {
        Self { timeout: Some(d) }
    }

    /// These options with another timeout (`None`: wait as long as it takes).
    #[must_use]
    pub fn with_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.timeout = timeout;
        self
    }
}

#[derive(Debug)]
enum Event {
    Response(Vec<u8>),
    Item(Vec<u8>),
    End,
    Error(RpcError),
}

#[derive(Debug, Clone)]
enum Target {
    Shm(String),
    Tcp(SocketAddr),
    /// An in-memory transport handed in by a unit test (it cannot be redialled).
    #[cfg(test)]
    Mem,
}

/// What a call in flight waits for.
enum Waiter {
    /// A unary call: its answer once it came, and the task to wake then. Kept in the map
    /// (no channel per call): the caller takes the answer out and removes the entry.
    Unary {
        answer: Option<Result<Vec<u8>, RpcError>>,
        waker: Option<Waker>,
    },
    /// A streaming call: its events, in order.
    Stream(mpsc::UnboundedSender<Event>),
}

impl Waiter {
    fn unary() -> Self {
        Waiter::Unary {
            answer: None,
            waker: None,
        }
    }
}

/// One live connection.
struct Conn {
    tx: tokio::sync::Mutex<FrameTx>,
    pending: Mutex<IdMap<Waiter>>,
    alive: AtomicBool,
    /// Cancelled when the last `Client` handle is gone: the reader says goodbye and ends,
    /// which frees the connection on both sides.
    shut: tokio_util::sync::CancellationToken,
}

impl Conn {
    /// Marks the connection dead and fails every registered call. Done under the `pending`
    /// lock, so a call is either registered before (and failed here) or sees "dead" in
    /// [`register`](Self::register): none can slip in between and wait forever.
    fn fail_all(&self, e: &RpcError) {
        let mut wake = Vec::new();
        let mut pending = self.pending.lock().expect("poisoned");
        self.alive.store(false, Ordering::Release);
        pending.retain(|_, w| match w {
            Waiter::Unary { answer, waker } => {
                answer.get_or_insert_with(|| Err(e.clone()));
                wake.extend(waker.take());
                true // its caller takes the error and removes the entry
            }
            Waiter::Stream(tx) => {
                let _ = tx.send(Event::Error(e.clone()));
                false
            }
        });
        drop(pending);
        wake.into_iter().for_each(Waker::wake);
    }

    /// Registers a call if the connection still takes calls.
    fn register(&self, id: u64, waiter: Waiter) -> bool {
        let mut pending = self.pending.lock().expect("poisoned");
        if !self.alive.load(Ordering::Acquire) {
            return false;
        }
        pending.insert(id, waiter);
        true
    }

    /// Hands a frame's event to its call. Frames for calls no longer waiting (cancelled,
    /// timed out) are dropped. Returns whether a waiting task was woken.
    fn deliver(&self, call_id: u64, ev: Event) -> bool {
        let mut pending = self.pending.lock().expect("poisoned");
        let waker = match pending.get_mut(&call_id) {
            None => None,
            Some(Waiter::Unary { answer, waker }) => {
                let a = match ev {
                    Event::Response(b) => Ok(b),
                    Event::Error(e) => Err(e),
                    Event::Item(_) | Event::End => Err(RpcError::new(
                        Code::Protocol,
                        "stream frames for a unary call",
                    )),
                };
                answer.get_or_insert(a);
                waker.take()
            }
            Some(Waiter::Stream(tx)) => {
                let last = matches!(ev, Event::Response(_) | Event::End | Event::Error(_));
                let _ = tx.send(ev);
                if last {
                    pending.remove(&call_id);
                }
                None
            }
        };
        drop(pending);
        let woke = waker.is_some();
        if let Some(w) = waker {
            w.wake();
        }
        woke
    }

    /// Waits for a unary call's answer.
    async fn answer(&self, id: u64) -> Result<Vec<u8>, RpcError> {
        std::future::poll_fn(|cx| {
            let mut pending = self.pending.lock().expect("poisoned");
            match pending.get_mut(&id) {
                Some(Waiter::Unary { answer, waker }) => match answer.take() {
                    Some(a) => {
                        pending.remove(&id);
                        Poll::Ready(a)
                    }
                    None => {
                        if !waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                            *waker = Some(cx.waker().clone());
                        }
                        Poll::Pending
                    }
                },
                _ => Poll::Ready(Err(RpcError::new(Code::PeerGone, "connection closed"))),
            }
        })
        .await
    }
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
    /// The connection calls use; replaced when it dies.
    current: Mutex<Option<Arc<Conn>>>,
    /// Held while (re)connecting, so one caller dials and the others wait for its result.
    dialing: tokio::sync::Mutex<()>,
    next_id: AtomicU64,
}

/// An RPC client. Cheap to clone; all clones share one connection.
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
        Self::start(Target::Shm(name.to_owned()), cfg).await
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
        Self::start(Target::Tcp(addr), cfg).await
    }

    async fn start(target: Target, cfg: ClientConfig) -> Result<Self, ConnectError> {
        let c = Self {
            inner: Arc::new(Inner {
                target,
                cfg,
                current: Mutex::new(None),
                dialing: tokio::sync::Mutex::new(()),
                next_id: AtomicU64::new(1),
            }),
        };
        c.conn(None).await?;
        Ok(c)
    }

    /// A client over an in-memory transport (unit tests).
    #[cfg(test)]
    pub(crate) fn over(tx: FrameTx, rx: FrameRx, cfg: ClientConfig) -> Self {
        let conn = Arc::new(Conn {
            tx: tokio::sync::Mutex::new(tx),
            pending: Mutex::default(),
            alive: AtomicBool::new(true),
            shut: tokio_util::sync::CancellationToken::new(),
        });
        tokio::spawn(read_loop(conn.clone(), rx, cfg.heartbeat));
        Self {
            inner: Arc::new(Inner {
                target: Target::Mem,
                cfg,
                current: Mutex::new(Some(conn)),
                dialing: tokio::sync::Mutex::new(()),
                next_id: AtomicU64::new(1),
            }),
        }
    }

    /// The current connection if it is alive.
    fn live(&self) -> Option<Arc<Conn>> {
        let current = self.inner.current.lock().expect("poisoned");
        current
            .as_ref()
            .filter(|c| c.alive.load(Ordering::Acquire))
            .cloned()
    }

    /// The live connection, reconnecting (with back-off) if it is gone, until `until` or
    /// `reconnect_for` from now, whichever is first. Each caller measures its own give-up
    /// time from when it asked, not from when it got the lock.
    async fn conn(&self, until: Option<Instant>) -> Result<Arc<Conn>, ConnectError> {
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
                    *self.inner.current.lock().expect("poisoned") = Some(c.clone());
                    return Ok(c);
                }
                Err(e) if Instant::now() + backoff >= give_up => return Err(e),
                Err(_) => {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.inner.cfg.max_backoff);
                }
            }
        }
    }

    async fn dial(&self) -> Result<Arc<Conn>, ConnectError> {
        let cfg = &self.inner.cfg;
        let (tx, rx) = match &self.inner.target {
            #[cfg(test)]
            Target::Mem => {
                return Err(ConnectError::Runtime(std::io::Error::other(
                    "an in-memory connection cannot be redialled",
                )))
            }
            Target::Shm(name) => {
                let (n, ch) = (name.clone(), cfg.channel.clone());
                let ep = tokio::task::spawn_blocking(move || channel::connect(&n, &ch))
                    .await
                    .map_err(|e| ConnectError::Runtime(std::io::Error::other(e)))?
                    .map_err(|source| ConnectError::Shm {
                        name: name.clone(),
                        source,
                    })?;
                let (tx, rx) = ep.split();
                (
                    FrameTx::Shm(tx, Vec::new()),
                    FrameRx::shm(rx, cfg.max_message),
                )
            }
            Target::Tcp(addr) => {
                let s = tokio::net::TcpStream::connect(addr)
                    .await
                    .map_err(|source| ConnectError::Tcp {
                        addr: *addr,
                        source,
                    })?;
                let _ = s.set_nodelay(true);
                let (r, w) = s.into_split();
                (
                    FrameTx::Tcp(w, Vec::new()),
                    FrameRx::tcp(r, cfg.max_message),
                )
            }
        };
        let conn = Arc::new(Conn {
            tx: tokio::sync::Mutex::new(tx),
            pending: Mutex::default(),
            alive: AtomicBool::new(true),
            shut: tokio_util::sync::CancellationToken::new(),
        });
        tokio::spawn(read_loop(conn.clone(), rx, cfg.heartbeat));
        Ok(conn)
    }

    /// Registers a call (with `waiter`) and sends its request; returns the connection and
    /// the call id.
    async fn start_call(
        &self,
        method: &str,
        body: &[u8],
        timeout: Option<Duration>,
        waiter: impl Fn() -> Waiter,
    ) -> Result<(Arc<Conn>, u64), RpcError> {
        if body.len() + DEADLINE_PREFIX > self.inner.cfg.max_message {
            return Err(RpcError::new(
                Code::TooLarge,
                format!(
                    "request of {} bytes exceeds the maximum message size {}",
                    body.len(),
                    self.inner.cfg.max_message - DEADLINE_PREFIX
                ),
            ));
        }
        let until = timeout.map(|d| Instant::now() + d);
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        // A connection can die (or start draining) between `conn` and `register`: then
        // take the next one.
        let conn = loop {
            let conn = self.conn(until).await.map_err(RpcError::from)?;
            if conn.register(id, waiter()) {
                break conn;
            }
        };
        let ms = timeout.map_or(0, |d| d.as_millis().clamp(1, u128::from(u32::MAX)) as u32);
        let sent = conn
            .tx
            .lock()
            .await
            .send_parts(
                Kind::Request,
                method_id(method),
                id,
                &[&ms.to_le_bytes(), body],
            )
            .await;
        if let Err(e) = sent {
            conn.pending.lock().expect("poisoned").remove(&id);
            let e = RpcError::from(e);
            conn.fail_all(&e);
            return Err(e);
        }
        Ok((conn, id))
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
        match opts.timeout {
            // The deadline covers the whole call: (re)connecting and sending too.
            Some(d) => tokio::time::timeout(d, self.call_raw_inner(method, body, opts))
                .await
                .unwrap_or_else(|_| {
                    Err(RpcError::new(Code::DeadlineExceeded, "deadline exceeded"))
                }),
            None => self.call_raw_inner(method, body, opts).await,
        }
    }

    async fn call_raw_inner(
        &self,
        method: &str,
        body: &[u8],
        opts: CallOptions,
    ) -> Result<Vec<u8>, RpcError> {
        let (conn, id) = self
            .start_call(method, body, opts.timeout, Waiter::unary)
            .await?;
        // The caller's deadline is enforced around the whole call (`call_raw`): if it fires,
        // this future is dropped with the guard armed, which sends `Cancel`.
        let mut guard = CancelOnDrop::new(conn, id, method_id(method));
        let r = guard.conn.answer(id).await;
        // The server answered (or the connection is gone): nothing to cancel.
        guard.done();
        r
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
        decode(&self.call_raw(method, &encode(req)?, opts).await?)
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
        let (etx, events) = mpsc::unbounded_channel();
        let waiter = || Waiter::Stream(etx.clone());
        let (conn, id) = self.start_call(method, body, opts.timeout, waiter).await?;
        Ok(CallStream {
            _client: self.clone(),
            events,
            guard: CancelOnDrop::new(conn, id, method_id(method)),
            deadline: opts.timeout.map(|d| Instant::now() + d),
            finished: false,
            unacked: 0,
        })
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
}

/// Sends `Cancel` for a call that is dropped before it finished.
struct CancelOnDrop {
    conn: Arc<Conn>,
    id: u64,
    method: u32,
    armed: bool,
}

impl CancelOnDrop {
    fn new(conn: Arc<Conn>, id: u64, method: u32) -> Self {
        Self {
            conn,
            id,
            method,
            armed: true,
        }
    }

    fn done(&mut self) {
        self.armed = false;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.conn.pending.lock().expect("poisoned").remove(&self.id);
        if self.armed && self.conn.alive.load(Ordering::Acquire) {
            let (conn, id, method) = (self.conn.clone(), self.id, self.method);
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let _ = conn
                        .tx
                        .lock()
                        .await
                        .send(Kind::Cancel, method, id, &[])
                        .await;
                });
            }
        }
    }
}

/// The items of a streaming call, in order.
pub struct CallStream {
    /// Keeps the connection open while the stream is read, even if every other handle of
    /// the client is dropped.
    _client: Client,
    events: mpsc::UnboundedReceiver<Event>,
    guard: CancelOnDrop,
    deadline: Option<Instant>,
    finished: bool,
    /// Items read since credit was last returned to the server.
    unacked: u32,
}

impl std::fmt::Debug for CallStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallStream")
            .field("call_id", &self.guard.id)
            .finish()
    }
}

impl CallStream {
    /// The next raw item; `None` at the end of the stream.
    ///
    /// # Errors
    /// The server's error, `DeadlineExceeded` or `PeerGone`; the stream is over after one.
    pub async fn next_raw(&mut self) -> Option<Result<Vec<u8>, RpcError>> {
        if self.finished {
            return None;
        }
        let ev = match self.deadline {
            Some(d) => match tokio::time::timeout_at(d.into(), self.events.recv()).await {
                Ok(ev) => ev,
                Err(_) => {
                    self.finished = true;
                    return Some(Err(RpcError::new(
                        Code::DeadlineExceeded,
                        "deadline exceeded",
                    )));
                }
            },
            None => self.events.recv().await,
        };
        let out = match ev {
            Some(Event::Item(b)) => {
                // Return credit in halves of the window, so the server never stalls on a
                // reader that keeps up, and never runs more than a window ahead of one that
                // does not.
                self.unacked += 1;
                if self.unacked as usize >= super::server::STREAM_WINDOW / 2 {
                    let n = std::mem::take(&mut self.unacked);
                    let g = &self.guard;
                    let _ = g
                        .conn
                        .tx
                        .lock()
                        .await
                        .send(Kind::Credit, g.method, g.id, &n.to_le_bytes())
                        .await;
                }
                return Some(Ok(b));
            }
            Some(Event::End) => None,
            Some(Event::Error(e)) => Some(Err(e)),
            Some(Event::Response(_)) => Some(Err(RpcError::new(
                Code::Protocol,
                "unary response to a streaming call",
            ))),
            None => Some(Err(RpcError::new(Code::PeerGone, "connection closed"))),
        };
        self.finished = true;
        self.guard.done();
        out
    }

    /// The next item decoded with the default codec.
    ///
    /// # Errors
    /// As [`next_raw`](Self::next_raw), or `BadRequest` for an undecodable item.
    ///
    /// # Examples
    ///
    /// A stream whose handler fails after two items: the items arrive, then the error, then
    /// the end.
    ///
    /// ```
    /// use shmrpc::{CallOptions, Client, ClientConfig, Code, RpcError, Server};
    ///
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let name = format!("doc-next-{}", std::process::id());
    /// let server = Server::builder()
    ///     .streaming("two-then-fail", |_ctx, (): (), sink| async move {
    ///         sink.send(&1u8).await?;
    ///         sink.send(&2u8).await?;
    ///         Err(RpcError::handler("out of items"))
    ///     })
    ///     .bind(&name)?;
    /// let handle = server.handle();
    /// let serving = tokio::spawn(server.serve());
    ///
    /// let client = Client::connect(&name, ClientConfig::default()).await?;
    /// let mut stream = client.call_stream("two-then-fail", &(), CallOptions::default()).await?;
    /// assert_eq!(stream.next::<u8>().await.transpose()?, Some(1));
    /// assert_eq!(stream.next::<u8>().await.transpose()?, Some(2));
    /// let err = stream.next::<u8>().await.unwrap().unwrap_err();
    /// assert_eq!((err.code, err.message.as_str()), (Code::HandlerFailed, "out of items"));
    /// assert!(stream.next::<u8>().await.is_none());
    ///
    /// drop((stream, client));
    /// handle.shutdown();
    /// serving.await?;
    /// # Ok(()) }
    /// ```
    pub async fn next<T: DeserializeOwned>(&mut self) -> Option<Result<T, RpcError>> {
        Some(self.next_raw().await?.and_then(|b| decode(&b)))
    }

    /// Cancels the call now (same as dropping the stream).
    pub fn cancel(self) {}
}

/// Dispatches frames from the server to the calls waiting for them; fails every pending
/// call when the connection ends.
async fn read_loop(conn: Arc<Conn>, mut rx: FrameRx, hb: Duration) {
    let mut silence = super::Silence::default();
    // One timer for the connection's life (see the server's read loop).
    let heartbeat = tokio::time::sleep(hb);
    tokio::pin!(heartbeat);
    let end = loop {
        let frame = tokio::select! {
            f = rx.recv() => f,
            () = &mut heartbeat => {
                heartbeat.as_mut().reset(tokio::time::Instant::now() + hb);
                let silent = silence.tick();
                if silent >= 3 {
                    break RpcError::new(Code::PeerGone, "server stopped answering heartbeats");
                }
                if silent >= 1 {
                    if let Err(e) = conn.tx.lock().await.send(Kind::Ping, 0, 0, &[]).await {
                        break e.into();
                    }
                }
                continue;
            }
            () = conn.shut.cancelled() => {
                // Every handle is gone: tell the server, and end.
                let _ = conn.tx.lock().await.send(Kind::Goodbye, 0, 0, &[]).await;
                break RpcError::new(Code::PeerGone, "the client was dropped");
            }
        };
        let (h, payload) = match frame {
            Ok(f) => f,
            Err(e @ super::transport::TransportError::TooLarge { call_id, .. }) => {
                // Only that call fails; the connection goes on.
                silence.heard();
                conn.deliver(call_id, Event::Error(RpcError::from(e)));
                continue;
            }
            Err(e) => break e.into(),
        };
        silence.heard();
        let ev = match h.kind {
            Kind::Response => Event::Response(payload),
            Kind::StreamItem => Event::Item(payload),
            Kind::StreamEnd => Event::End,
            Kind::Error => Event::Error(RpcError::decode(&payload)),
            Kind::Ping => {
                if let Err(e) = conn.tx.lock().await.send(Kind::Pong, 0, 0, &[]).await {
                    break e.into();
                }
                continue;
            }
            Kind::Pong => continue,
            Kind::Goodbye => {
                // The server drains: calls in flight still get their answers, but new calls
                // must go to a new connection.
                conn.alive.store(false, Ordering::Release);
                continue;
            }
            Kind::Request | Kind::Cancel | Kind::Credit => {
                break RpcError::new(Code::Protocol, "server sent a client frame");
            }
        };
        if conn.deliver(h.call_id, ev) && !rx.has_frame() {
            // Let the woken caller run now, before this task starts waiting (and spinning)
            // for the next frame: with a single caller that is the whole round trip.
            tokio::task::yield_now().await;
        }
    };
    conn.fail_all(&end);
}

#[cfg(test)]
#[path = "client_tests.rs"]
mod tests;
