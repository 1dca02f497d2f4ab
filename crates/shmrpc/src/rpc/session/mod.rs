//! One connection's engine, the same at both ends: either end calls the other and serves
//! the other's calls, over any [`FrameTx`]/[`FrameRx`] pair. The server runs one per
//! accepted connection; the client one per connection it dials (and redials on top).
//!
//! - [`methods`]: the method table an end serves ([`Methods`]), shared by both builders.
//! - [`outgoing`]: the calls this end started: their table, answers, cancel on drop,
//!   stream credit both ways ([`CallStream`], [`ItemSender`]).
//! - [`peer`]: the handle that calls the other end ([`Peer`]).
//! - [`incoming`]: the calls the other end started: concurrency limit, queue, cancels,
//!   credit.
//! - [`dispatch`]: starting an incoming call, running its handler, sending its outcome.
//! - [`context`]: what a handler knows about its call ([`CallContext`]).
//! - [`sink`]: where a streaming handler sends its items ([`ItemSink`]).
//! - [`items`]: where a handler reads the items its caller streams ([`ItemStream`]).
//! - [`drive`]: who polls the read loop: its own task, or a caller waiting alone for its
//!   answer ([`Drive`]).
//! - [`reader`]: the connection's read loop, which routes each frame by its direction
//!   (to this end as callee: incoming; to this end as caller: outgoing), heartbeats, and
//!   the end of the connection.

mod batching;
mod context;
mod dispatch;
mod drive;
mod incoming;
mod items;
pub(crate) mod methods;
mod notify;
pub(crate) mod outgoing;
mod peer;
mod reader;
mod sink;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Mutex, MutexGuard, Notify, OwnedMutexGuard};
use tokio_util::sync::CancellationToken;

use self::drive::Drive;
use super::inspect::{ConnInfo, Registry};
use super::obs::ServerObs;
use super::transport::{self, Cause, Dir, FrameRx, FrameTx, TransportError};
use crate::frame::{Kind, FLAG_CONTINUES, FLAG_MORE};

pub use batching::ItemWriter;
pub(crate) use context::CallToken;
pub use context::{CallContext, InlineContext};
pub use items::{ItemStream, Items};
pub(crate) use methods::Methods;
pub use notify::NotifyContext;
pub(crate) use notify::NOTIFY_WINDOW;
pub use outgoing::{BidiCall, CallOptions, CallStream, ClientStreamCall, ItemBatch, ItemSender};
pub use peer::Peer;
pub use sink::ItemSink;
pub(crate) use sink::STREAM_WINDOW;

/// What one end brings to each of its connections: the methods it serves and its limits.
/// A server has one for all its connections; a client one for all its (re)connections.
pub(crate) struct Host {
    pub(crate) methods: Methods,
    /// Incoming calls running at once per connection (as many more wait in a queue).
    pub(crate) max_in_flight: usize,
    /// Largest message sent or accepted.
    pub(crate) max_message: usize,
    /// Ping after this much silence; three silent periods end the connection.
    pub(crate) heartbeat: Duration,
    /// How long a cancelled handler may run on before it is dropped.
    pub(crate) cancel_grace: Duration,
    /// A server's connection with no call open either way and nothing but heartbeats
    /// from the peer for this long is closed (TCP servers only; `None`: never).
    pub(crate) idle_timeout: Option<Duration>,
    /// Metrics (inert unless enabled).
    pub(crate) obs: Arc<ServerObs>,
    /// Live connections, for the built-in inspection method.
    pub(crate) registry: Registry,
}

/// Which end of the connection this is: it decides what a `Goodbye` means, and whether a
/// caller may read its own answer from the ring (a client's may: [`drive`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// The accepting end: a `Goodbye` from the client means it leaves (the connection
    /// ends).
    Server,
    /// The dialling end: a `Goodbye` from the server means it drains (answers still come,
    /// but new calls go to a new connection).
    Client,
}

/// What else ends a connection, besides the peer leaving or breaking it.
#[derive(Default)]
pub(crate) struct Ends {
    /// The server's shutdown: refuse waiting calls, say goodbye, let running calls finish.
    pub(crate) draining: Option<watch::Receiver<bool>>,
    /// The client's last handle is gone: say goodbye and end.
    pub(crate) shut: Option<CancellationToken>,
}

/// A connection's sending half, shared by its reader, its incoming calls and its outgoing
/// calls. A failed send (the peer is gone, or broke the ring: a `read_pos` that lies) marks
/// the connection broken, which ends it: its reader stops, its calls fail.
///
/// A short message (at most [`FrameTx::short_limit`] bytes, half the ring) goes as one
/// frame. A long one goes a fragment at a time, each waiting for room
/// ([`FrameTx::wait_room_for_fragment`]) while giving way to short messages that wait
/// meanwhile. So a bulk transfer holds a short call back by at most what is already in the
/// ring (two fragments), however long its messages: a file upload does not hold a
/// completion request on the same connection behind the rest of the upload.
pub(crate) struct Link {
    tx: Mutex<FrameTx>,
    /// Held by a long message from its first fragment to its last: fragments of two long
    /// messages never interleave (the receiver has one reassembly buffer per direction).
    long: Arc<Mutex<()>>,
    /// A short message waits for `tx`: a long message waiting for room between two of its
    /// fragments lets go of `tx` so that the short one goes first.
    short_waiting: Notify,
    /// [`FrameTx::short_limit`].
    short_limit: usize,
    /// Long messages abandoned half sent whose rest a task is sending ([`LongSend`]): a
    /// later short message of the same call waits for it (a `Cancel` must not overtake the
    /// request it cancels, nor an item the one before it). Almost always empty.
    tails: std::sync::Mutex<Vec<Tail>>,
    /// How many `tails` there are, so that a send looks at the list (a lock) only when it
    /// is not empty: every message asks.
    tail_count: AtomicUsize,
    pub(crate) broken: CallToken,
    /// The connection is over: sends still waiting (for room in a ring the peer no longer
    /// reads, say) give up, so that winding the connection down never waits on the peer.
    pub(crate) ended: CallToken,
    pub(crate) obs: Arc<ServerObs>,
    pub(crate) info: Arc<ConnInfo>,
    /// The buffers this connection's reader copies messages into, if it pools them
    /// ([`FrameRx::pool`]): a message done with goes back by [`recycle`](Self::recycle).
    bufs: Option<Arc<transport::BufPool>>,
}

/// The rest of an abandoned long message, in flight: its call, and the token cancelled
/// once it is out (or the connection ended).
struct Tail {
    dir: Dir,
    call_id: u64,
    done: CancellationToken,
}

/// Who a long message's frames belong to (each fragment's header but its flags).
#[derive(Clone, Copy)]
struct Route {
    dir: Dir,
    kind: Kind,
    method: u32,
    call_id: u64,
}

impl Link {
    fn new(tx: FrameTx, obs: Arc<ServerObs>, info: Arc<ConnInfo>) -> Self {
        Self {
            short_limit: tx.short_limit(),
            tx: Mutex::new(tx),
            long: Arc::new(Mutex::new(())),
            short_waiting: Notify::new(),
            tails: std::sync::Mutex::new(Vec::new()),
            tail_count: AtomicUsize::new(0),
            broken: CallToken::default(),
            ended: CallToken::default(),
            obs,
            info,
            bufs: None,
        }
    }

    /// The longest message that goes as one frame ([`FrameTx::short_limit`]).
    pub(crate) fn short_limit(&self) -> usize {
        self.short_limit
    }

    /// An empty buffer for a message this end writes (an inline handler's response): a
    /// spare one of the reader's if there is one.
    pub(crate) fn buffer(&self) -> Vec<u8> {
        self.bufs.as_ref().map(|b| b.take(0)).unwrap_or_default()
    }

    /// Gives a message buffer that is no longer needed to the reader of this connection,
    /// which reads its next message into it instead of allocating one.
    pub(crate) fn recycle(&self, buf: Vec<u8>) {
        if let Some(bufs) = &self.bufs {
            bufs.give(buf);
        }
    }

    /// Sends one message.
    pub(crate) async fn send(
        self: &Arc<Self>,
        dir: Dir,
        kind: Kind,
        method: u32,
        call_id: u64,
        payload: &[u8],
    ) -> Result<(), TransportError> {
        self.send_parts(dir, kind, method, call_id, &[payload])
            .await
    }

    /// Sends one message only if it can go at once (it is short, no other message is
    /// being sent and the ring has room): `Ok(true)` if it was sent, `Ok(false)` if it
    /// would wait (then nothing was sent). For the reader, which must never wait on a send
    /// ([`dispatch::ConnState::reply`]).
    pub(crate) fn try_send(
        &self,
        dir: Dir,
        kind: Kind,
        method: u32,
        call_id: u64,
        payload: &[u8],
    ) -> Result<bool, TransportError> {
        self.try_send_parts(dir, kind, method, call_id, &[payload])
    }

    /// [`try_send`](Self::try_send) for a message given in pieces. Also the fast path of a
    /// call's request: a send that goes at once needs no future (the waiting
    /// [`send_parts`](Self::send_parts) is kept for when it would wait).
    pub(crate) fn try_send_parts(
        &self,
        dir: Dir,
        kind: Kind,
        method: u32,
        call_id: u64,
        parts: &[&[u8]],
    ) -> Result<bool, TransportError> {
        if self.tail_of(dir, call_id).is_some() {
            return Ok(false); // it must wait for the rest of its call's long message
        }
        let Ok(mut tx) = self.tx.try_lock() else {
            return Ok(false);
        };
        let r = tx.try_send_parts(dir, kind, method, call_id, parts);
        match &r {
            Err(_) => self.broken.cancel(),
            // With `tx` held: see `ConnInfo::sent`.
            Ok(true) => self.count(parts.iter().map(|p| p.len()).sum()),
            Ok(false) => {}
        }
        r
    }

    /// Grants the writer of a stream `n` more items (a `Credit` frame) without waiting: at
    /// once if it can go, else from a task. A stream's reader may be dropped at any
    /// `.await` (in a `select!`, say): waiting here, it would lose the grant, and the
    /// writer would wait for it for ever. Grants add up in any order; one that arrives
    /// after its call ended is ignored.
    pub(crate) fn grant(self: &Arc<Self>, dir: Dir, method: u32, call_id: u64, n: u32) {
        self.grant_kind(Kind::Credit, dir, method, call_id, n);
    }

    /// As [`grant`](Self::grant), with a credit frame of `kind` (`Credit` for a stream,
    /// `NotifyCredit` for the connection's notifications).
    pub(crate) fn grant_kind(
        self: &Arc<Self>,
        kind: Kind,
        dir: Dir,
        method: u32,
        call_id: u64,
        n: u32,
    ) {
        let body = n.to_le_bytes();
        // A failed send marks the connection broken (`try_send`); nothing else to do here.
        if !matches!(self.try_send(dir, kind, method, call_id, &body), Ok(false)) {
            return;
        }
        let link = self.clone();
        // Bounded: a reader grants at most twice per window it reads; and the connection's
        // end makes a send still waiting give up (`ended`).
        tokio::spawn(async move {
            let _ = link.send(dir, kind, method, call_id, &body).await;
        });
    }

    /// Sends one message given in pieces: a short one as one frame, a long one a fragment
    /// at a time, letting short messages go between its fragments.
    ///
    /// Dropped while a long message is half sent, it sends the rest from a task (a copy of
    /// it): the receiver must see every fragment of a message it began to read, or it could
    /// not tell the next long message from the rest of this one.
    pub(crate) async fn send_parts(
        self: &Arc<Self>,
        dir: Dir,
        kind: Kind,
        method: u32,
        call_id: u64,
        parts: &[&[u8]],
    ) -> Result<(), TransportError> {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        let route = Route {
            dir,
            kind,
            method,
            call_id,
        };
        let send = async {
            if let Some(tail) = self.tail_of(dir, call_id) {
                tail.cancelled().await;
            }
            if total <= self.short_limit {
                let h = transport::header(dir, kind, method, call_id, 0);
                let mut tx = self.lock_for_short().await;
                tx.send_frame(h, parts).await?;
                self.count(total); // with `tx` held: see `ConnInfo::sent`
                Ok(())
            } else {
                let joined;
                let payload = match parts {
                    [one] => *one,
                    _ => {
                        joined = parts.concat();
                        &joined
                    }
                };
                self.send_long(route, payload).await
            }
        };
        // Biased: a send that goes at once (the common case) never looks at `ended`.
        let r = tokio::select! {
            biased;
            r = send => r,
            () = self.ended.cancelled() => return Err(TransportError::Gone(Cause::Closed)),
        };
        if r.is_err() {
            self.broken.cancel();
        }
        r
    }

    /// Counts a message of `n` bytes sent; only with `tx` held (see `ConnInfo::sent`).
    fn count(&self, n: usize) {
        self.obs.sent(n);
        self.info.sent(n);
    }

    /// The token of the abandoned long message of this call still being sent, if any.
    fn tail_of(&self, dir: Dir, call_id: u64) -> Option<CancellationToken> {
        // Acquire: pairs with the Release increment in `LongSend::drop`, which comes
        // before any later send of the same call (the dropping task sends it, or wakes
        // whoever does); a tail pushed concurrently by another call is none of ours.
        if self.tail_count.load(Ordering::Acquire) == 0 {
            return None;
        }
        let tails = self.tails.lock().unwrap_or_else(|e| e.into_inner());
        tails
            .iter()
            .find(|t| t.dir == dir && t.call_id == call_id)
            .map(|t| t.done.clone())
    }

    /// The sending half, for one short message. A long message may hold it while it waits
    /// for room between two fragments: it is told to let this one go first.
    async fn lock_for_short(&self) -> MutexGuard<'_, FrameTx> {
        if let Ok(tx) = self.tx.try_lock() {
            return tx;
        }
        self.short_waiting.notify_one();
        self.tx.lock().await
    }

    /// Sends a long message a fragment at a time (see [`Link`]).
    async fn send_long(
        self: &Arc<Self>,
        route: Route,
        payload: &[u8],
    ) -> Result<(), TransportError> {
        let mut sending = LongSend {
            link: self,
            long: Some(self.long.clone().lock_owned().await),
            route,
            payload,
            sent: 0,
        };
        let r = self.send_fragments(route, payload, &mut sending.sent).await;
        // Sent whole, or failed (the connection is broken: nothing more will be read).
        sending.sent = payload.len();
        r
    }

    /// Sends `payload[*sent..]` as fragments of a long message whose first `*sent` bytes
    /// are out, advancing `*sent` as each fragment goes.
    async fn send_fragments(
        &self,
        route: Route,
        payload: &[u8],
        sent: &mut usize,
    ) -> Result<(), TransportError> {
        while *sent < payload.len() {
            let part = &payload[*sent..payload.len().min(*sent + self.short_limit)];
            let more = if *sent + part.len() < payload.len() {
                FLAG_MORE
            } else {
                0
            };
            let continues = if *sent > 0 { FLAG_CONTINUES } else { 0 };
            let Route {
                dir,
                kind,
                method,
                call_id,
            } = route;
            let h = transport::header(dir, kind, method, call_id, more | continues);
            loop {
                let mut tx = self.tx.lock().await;
                // Biased: a short message that waits goes first, also when there is room.
                let room = tokio::select! {
                    biased;
                    () = self.short_waiting.notified() => false,
                    r = tx.wait_room_for_fragment(part.len()) => { r?; true }
                };
                if room {
                    tx.send_frame(h, &[part]).await?;
                    if more == 0 {
                        self.count(payload.len()); // with `tx` held: see `ConnInfo::sent`
                    }
                    break;
                }
                // Let go of `tx`: the short message, queued on it before this end asks
                // again, takes it first (the lock is fair).
            }
            *sent += part.len();
        }
        Ok(())
    }
}

/// A long message being sent. Dropped half sent (its send was abandoned), it sends the
/// rest from a task, still holding the long-message lock, so that the receiver's
/// reassembly stays in step; the rest gives up when the connection ends.
struct LongSend<'a> {
    link: &'a Arc<Link>,
    long: Option<OwnedMutexGuard<()>>,
    route: Route,
    payload: &'a [u8],
    /// Bytes of `payload` out.
    sent: usize,
}

impl Drop for LongSend<'_> {
    fn drop(&mut self) {
        if self.sent == 0 || self.sent >= self.payload.len() {
            return; // nothing out yet, or all of it: the next message may go
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            self.link.broken.cancel();
            return;
        };
        let (link, long, route) = (self.link.clone(), self.long.take(), self.route);
        let (rest, sent) = (self.payload.to_vec(), self.sent);
        let done = CancellationToken::new();
        let tail = Tail {
            dir: route.dir,
            call_id: route.call_id,
            done: done.clone(),
        };
        let mut tails = link.tails.lock().unwrap_or_else(|e| e.into_inner());
        tails.push(tail);
        // Release: pairs with the Acquire load in `tail_of`.
        link.tail_count.fetch_add(1, Ordering::Release);
        drop(tails);
        rt.spawn(async move {
            let _long = long;
            let mut sent = sent;
            tokio::select! {
                r = link.send_fragments(route, &rest, &mut sent) => if r.is_err() {
                    link.broken.cancel();
                },
                () = link.ended.cancelled() => {}
            }
            let mut tails = link.tails.lock().unwrap_or_else(|e| e.into_inner());
            tails.retain(|t| !(t.dir == route.dir && t.call_id == route.call_id));
            // Release: pairs with the Acquire load in `tail_of` (the rest is out: a send
            // that sees the count fall may go).
            link.tail_count.fetch_sub(1, Ordering::Release);
            drop(tails);
            done.cancel();
        });
    }
}

/// Starts the engine of one connection: returns the handle that calls the peer, and the
/// future that serves the connection until it ends (run it in a task). When it ends, every
/// call still open on it fails, in both directions.
pub(crate) fn open(
    host: Arc<Host>,
    role: Role,
    tx: FrameTx,
    rx: FrameRx,
    info: Arc<ConnInfo>,
    ends: Ends,
) -> (Peer, impl std::future::Future<Output = ()> + Send + 'static) {
    let mut link = Link::new(tx, host.obs.clone(), info);
    link.bufs = rx.pool();
    let link = Arc::new(link);
    // A client's caller may read its answer from the ring itself (only a ring's messages
    // go into pooled buffers).
    let drive = Arc::new(Drive::new(role == Role::Client && link.bufs.is_some()));
    // As many open calls as the peer runs and queues, if it is configured like this end.
    let max_open = host.max_in_flight.max(1) * 2;
    let peer = Peer::new(Arc::new(outgoing::Outgoing::new(
        link.clone(),
        drive.clone(),
        host.max_message,
        max_open,
    )));
    let conn = reader::Connection::new(host, role, link, peer.clone());
    (peer, drive.start(conn.run(rx, ends)))
}

#[cfg(test)]
mod link_tests;
#[cfg(test)]
mod tests;
