//! The client: one connection shared by many tasks, calls matched by id, cancel on drop,
//! reconnect with backoff.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{de::DeserializeOwned, Serialize};
use tokio::sync::mpsc;

use super::transport::{FrameRx, FrameTx};
use super::{decode, encode, method_id, Code, RpcError, DEADLINE_PREFIX};
use crate::channel::{self, ChannelConfig};
use crate::frame::Kind;

/// Client settings.
#[derive(Debug, Clone)]
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

/// Per-call options.
#[derive(Debug, Clone, Copy, Default)]
pub struct CallOptions {
    /// Give up (and cancel the call on the server) after this long.
    pub timeout: Option<Duration>,
}

impl CallOptions {
    /// Options with a timeout.
    pub fn timeout(d: Duration) -> Self {
        Self { timeout: Some(d) }
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
}

/// One live connection.
struct Conn {
    tx: tokio::sync::Mutex<FrameTx>,
    pending: Mutex<HashMap<u64, mpsc::UnboundedSender<Event>>>,
    alive: AtomicBool,
}

impl Conn {
    /// Marks the connection dead and fails every registered call. Done under the `pending`
    /// lock, so a call is either registered before (and failed here) or sees "dead" in
    /// [`register`](Self::register): none can slip in between and wait forever.
    fn fail_all(&self, e: &RpcError) {
        let mut pending = self.pending.lock().expect("poisoned");
        self.alive.store(false, Ordering::Release);
        for (_, p) in pending.drain() {
            let _ = p.send(Event::Error(e.clone()));
        }
    }

    /// Registers a call if the connection still takes calls.
    fn register(&self, id: u64, events: mpsc::UnboundedSender<Event>) -> bool {
        let mut pending = self.pending.lock().expect("poisoned");
        if !self.alive.load(Ordering::Acquire) {
            return false;
        }
        pending.insert(id, events);
        true
    }
}

struct Inner {
    target: Target,
    cfg: ClientConfig,
    conn: tokio::sync::Mutex<Option<Arc<Conn>>>,
    next_id: AtomicU64,
}

/// An RPC client. Cheap to clone; all clones share one connection.
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
    /// [`Code::Unavailable`] if no server answers within `cfg.reconnect_for`.
    pub async fn connect(name: &str, cfg: ClientConfig) -> Result<Self, RpcError> {
        Self::start(Target::Shm(name.to_owned()), cfg).await
    }

    /// Connects to a server over TCP.
    ///
    /// # Errors
    /// As [`connect`](Self::connect).
    pub async fn connect_tcp(addr: SocketAddr, cfg: ClientConfig) -> Result<Self, RpcError> {
        Self::start(Target::Tcp(addr), cfg).await
    }

    async fn start(target: Target, cfg: ClientConfig) -> Result<Self, RpcError> {
        let c = Self {
            inner: Arc::new(Inner {
                target,
                cfg,
                conn: tokio::sync::Mutex::new(None),
                next_id: AtomicU64::new(1),
            }),
        };
        c.conn(None).await?;
        Ok(c)
    }

    /// The live connection, reconnecting (with back-off) if it is gone, until `until` or
    /// `reconnect_for` from now, whichever is first. Each caller measures its own give-up
    /// time from when it asked, not from when it got the lock.
    async fn conn(&self, until: Option<Instant>) -> Result<Arc<Conn>, RpcError> {
        let mut give_up = Instant::now() + self.inner.cfg.reconnect_for;
        if let Some(u) = until {
            give_up = give_up.min(u);
        }
        let mut slot = self.inner.conn.lock().await;
        if let Some(c) = slot.as_ref().filter(|c| c.alive.load(Ordering::Acquire)) {
            return Ok(c.clone());
        }
        let mut backoff = self.inner.cfg.backoff;
        loop {
            match self.dial().await {
                Ok(c) => {
                    *slot = Some(c.clone());
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

    async fn dial(&self) -> Result<Arc<Conn>, RpcError> {
        let cfg = &self.inner.cfg;
        let unavailable =
            |e: &dyn std::fmt::Display| RpcError::new(Code::Unavailable, e.to_string());
        let (tx, rx) = match &self.inner.target {
            Target::Shm(name) => {
                let (name, ch) = (name.clone(), cfg.channel.clone());
                let ep = tokio::task::spawn_blocking(move || channel::connect(&name, &ch))
                    .await
                    .map_err(|e| unavailable(&e))?
                    .map_err(|e| unavailable(&e))?;
                let (tx, rx) = ep.split();
                (
                    FrameTx::Shm(tx, Vec::new()),
                    FrameRx::shm(rx, cfg.max_message),
                )
            }
            Target::Tcp(addr) => {
                let s = tokio::net::TcpStream::connect(addr)
                    .await
                    .map_err(|e| unavailable(&e))?;
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
        });
        tokio::spawn(read_loop(conn.clone(), rx, cfg.heartbeat));
        Ok(conn)
    }

    /// Sends a request; returns the connection, the call id and its event queue.
    async fn start_call(
        &self,
        method: &str,
        body: &[u8],
        timeout: Option<Duration>,
    ) -> Result<(Arc<Conn>, u64, mpsc::UnboundedReceiver<Event>), RpcError> {
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
        let (etx, erx) = mpsc::unbounded_channel();
        // A connection can die (or start draining) between `conn` and `register`: then
        // take the next one.
        let conn = loop {
            let conn = self.conn(until).await?;
            if conn.register(id, etx.clone()) {
                break conn;
            }
        };
        let ms = timeout.map_or(0, |d| d.as_millis().clamp(1, u128::from(u32::MAX)) as u32);
        let mut payload = Vec::with_capacity(DEADLINE_PREFIX + body.len());
        payload.extend_from_slice(&ms.to_le_bytes());
        payload.extend_from_slice(body);
        let sent = conn
            .tx
            .lock()
            .await
            .send(Kind::Request, method_id(method), id, &payload)
            .await;
        if let Err(e) = sent {
            conn.pending.lock().expect("poisoned").remove(&id);
            let e = RpcError::from(e);
            conn.fail_all(&e);
            return Err(e);
        }
        Ok((conn, id, erx))
    }

    /// Calls a unary method with raw bytes.
    ///
    /// # Errors
    /// The server's error, or `DeadlineExceeded`, `PeerGone`, `TooLarge`, `Unavailable`.
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
        let (conn, id, mut events) = self.start_call(method, body, opts.timeout).await?;
        // The caller's deadline is enforced around the whole call (`call_raw`): if it fires,
        // this future is dropped with the guard armed, which sends `Cancel`.
        let mut guard = CancelOnDrop::new(conn, id, method_id(method));
        let r = match events.recv().await {
            Some(Event::Response(b)) => Ok(b),
            Some(Event::Error(e)) => Err(e),
            Some(_) => Err(RpcError::new(
                Code::Protocol,
                "stream frames for a unary call",
            )),
            None => Err(RpcError::new(Code::PeerGone, "connection closed")),
        };
        // The server answered (or the connection is gone): nothing to cancel.
        guard.done();
        r
    }

    /// Calls a unary method with typed request and response.
    ///
    /// # Errors
    /// As [`call_raw`](Self::call_raw), or `BadRequest` for codec failures.
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
        let (conn, id, events) = self.start_call(method, body, opts.timeout).await?;
        Ok(CallStream {
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
    pub async fn next<T: DeserializeOwned>(&mut self) -> Option<Result<T, RpcError>> {
        Some(self.next_raw().await?.and_then(|b| decode(&b)))
    }

    /// Cancels the call now (same as dropping the stream).
    pub fn cancel(self) {}
}

/// Dispatches frames from the server to the calls waiting for them; fails every pending
/// call when the connection ends.
async fn read_loop(conn: Arc<Conn>, mut rx: FrameRx, hb: Duration) {
    let mut last_heard = Instant::now();
    // One timer for the connection's life (see the server's read loop).
    let heartbeat = tokio::time::sleep(hb);
    tokio::pin!(heartbeat);
    let end = loop {
        let frame = tokio::select! {
            f = rx.recv() => f,
            () = &mut heartbeat => {
                heartbeat.as_mut().reset(tokio::time::Instant::now() + hb);
                let silent = last_heard.elapsed();
                if silent > hb * 3 {
                    break RpcError::new(Code::PeerGone, "server stopped answering heartbeats");
                }
                if silent >= hb {
                    if let Err(e) = conn.tx.lock().await.send(Kind::Ping, 0, 0, &[]).await {
                        break e.into();
                    }
                }
                continue;
            }
        };
        let (h, payload) = match frame {
            Ok(f) => f,
            Err(super::transport::TransportError::TooLarge {
                call_id, message, ..
            }) => {
                // Only that call fails; the connection goes on.
                last_heard = Instant::now();
                if let Some(p) = conn.pending.lock().expect("poisoned").remove(&call_id) {
                    let _ = p.send(Event::Error(RpcError::new(Code::TooLarge, message)));
                }
                continue;
            }
            Err(e) => break e.into(),
        };
        last_heard = Instant::now();
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
        let pending = conn.pending.lock().expect("poisoned");
        let last = matches!(ev, Event::Response(_) | Event::End | Event::Error(_));
        if let Some(p) = pending.get(&h.call_id) {
            let _ = p.send(ev);
        }
        drop(pending);
        if last {
            conn.pending.lock().expect("poisoned").remove(&h.call_id);
        }
    };
    conn.fail_all(&end);
}
