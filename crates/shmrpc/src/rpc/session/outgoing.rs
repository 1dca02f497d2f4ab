//! The calls this end started on one connection: their table (answers matched by call id),
//! cancel on drop, and the reading side of streams with its credit. Works over a [`Link`]
//! whatever the transport; dialling and redialling are the client's business.

use std::any::Any;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore, TryAcquireError};

use super::{Link, STREAM_WINDOW};
use crate::frame::Kind;
use crate::rpc::transport::Dir;
use crate::rpc::{decode, method_id, Code, IdMap, RpcError, DEADLINE_PREFIX};

/// Per-call options. Built from [`CallOptions::default`] or [`CallOptions::timeout`] and
/// the `with_*` setters, so that new options do not break callers.
#[derive(Debug, Clone, Copy, Default)]
#[non_exhaustive]
pub struct CallOptions {
    /// Give up (and cancel the call on the callee) after this long.
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

/// What arrived for a call.
#[derive(Debug)]
pub(crate) enum Event {
    Response(Vec<u8>),
    Item(Vec<u8>),
    End,
    Error(RpcError),
}

/// What a call in flight waits for.
pub(crate) enum Waiter {
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
    pub(crate) fn unary() -> Self {
        Waiter::Unary {
            answer: None,
            waker: None,
        }
    }
}

/// A call in the table: what it waits for, and its slot (freed with the entry).
struct Entry {
    waiter: Waiter,
    _slot: OwnedSemaphorePermit,
}

/// The calls this end started on one connection.
pub(crate) struct Outgoing {
    pub(crate) link: Arc<Link>,
    pending: Mutex<IdMap<Entry>>,
    /// Bounds the calls this end has open on the connection, so that it never sends more
    /// requests than the peer runs and queues (if configured like this end). A peer past
    /// its queue stops reading; were both ends past theirs at once, neither would read
    /// the other's answers again. Closed when no new calls may start.
    slots: Arc<Semaphore>,
    /// Whether new calls may start here: false once the connection ended, or the server
    /// said goodbye (it drains).
    alive: AtomicBool,
    /// This end's call ids on this connection (the peer numbers its own calls apart: the
    /// direction flag tells which end a call id belongs to).
    next_id: AtomicU64,
    max_message: usize,
}

impl Outgoing {
    /// `max_open`: the calls this end may have open at once on the connection.
    pub(crate) fn new(link: Arc<Link>, max_message: usize, max_open: usize) -> Self {
        Self {
            link,
            pending: Mutex::default(),
            slots: Arc::new(Semaphore::new(max_open.max(1))),
            alive: AtomicBool::new(true),
            next_id: AtomicU64::new(1),
            max_message,
        }
    }

    /// Whether new calls may start on this connection.
    pub(crate) fn is_alive(&self) -> bool {
        // Acquire: pairs with the Release stores in `fail_all` and `stop_new_calls`.
        self.alive.load(Ordering::Acquire)
    }

    /// No new calls here (the server drains); calls in flight still get their answers.
    pub(crate) fn stop_new_calls(&self) {
        let _pending = self.pending.lock().expect("poisoned");
        // Release: pairs with the Acquire loads in `is_alive` and `register`.
        self.alive.store(false, Ordering::Release);
        // Calls waiting for a slot go to the next connection.
        self.slots.close();
    }

    /// Marks the connection dead and fails every registered call. Done under the `pending`
    /// lock, so a call is either registered before (and failed here) or sees "dead" in
    /// [`register`](Self::register): none can slip in between and wait forever.
    pub(crate) fn fail_all(&self, e: &RpcError) {
        let mut wake = Vec::new();
        let mut pending = self.pending.lock().expect("poisoned");
        // Release: pairs with the Acquire loads in `is_alive` and `register`.
        self.alive.store(false, Ordering::Release);
        self.slots.close();
        pending.retain(|_, entry| match &mut entry.waiter {
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

    /// Registers a call under a new id if the connection still takes calls, once a slot
    /// is free.
    async fn register(&self, waiter: Waiter) -> Option<u64> {
        // A free slot (the common case) is taken without a future.
        let slot = match self.slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(TryAcquireError::Closed) => return None,
            Err(TryAcquireError::NoPermits) => self.slots.clone().acquire_owned().await.ok()?,
        };
        let mut pending = self.pending.lock().expect("poisoned");
        // Acquire: pairs with the Release stores in `fail_all` and `stop_new_calls`.
        if !self.alive.load(Ordering::Acquire) {
            return None;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        pending.insert(
            id,
            Entry {
                waiter,
                _slot: slot,
            },
        );
        Some(id)
    }

    /// Removes a call's entry (freeing its slot).
    fn forget(&self, id: u64) {
        self.pending.lock().expect("poisoned").remove(&id);
    }

    /// Hands an answer frame's event to its call. Frames for calls not waiting (cancelled,
    /// timed out, or never started) are dropped. Returns whether a waiting task was woken.
    pub(crate) fn deliver(&self, call_id: u64, ev: Event) -> bool {
        let mut pending = self.pending.lock().expect("poisoned");
        let waker = match pending.get_mut(&call_id).map(|e| &mut e.waiter) {
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

    /// Checks a request's size before anything is sent.
    pub(crate) fn check_size(&self, body: &[u8]) -> Result<(), RpcError> {
        check_size(body, self.max_message)
    }

    /// Registers a call (with `waiter`) and sends its request; returns its guard, which
    /// cancels the call if dropped before it is done (also while the request is being
    /// sent, so a call abandoned then frees its entry and its slot). `Ok(None)` if this
    /// connection takes no new calls (the client then tries its next connection).
    ///
    /// # Errors
    /// The send failed: the connection is broken (and every call on it fails).
    async fn start(
        self: &Arc<Self>,
        method: u32,
        body: &[u8],
        timeout: Option<Duration>,
        waiter: Waiter,
    ) -> Result<Option<CancelOnDrop>, RpcError> {
        let Some(id) = self.register(waiter).await else {
            return Ok(None);
        };
        let mut guard = CancelOnDrop::new(self.clone(), id, method);
        let ms = timeout.map_or(0, |d| d.as_millis().clamp(1, u128::from(u32::MAX)) as u32);
        let parts: &[&[u8]] = &[&ms.to_le_bytes(), body];
        let (dir, kind) = (Dir::ToCallee, Kind::Request);
        // A request that goes at once (the common case) is written without a future; one
        // that must wait (for the ring or the sending half) waits in a boxed future, so that
        // every call's future stays small: it is moved on each call, and a large one cost
        // more copying than the rest of the call's work.
        let sent = match self.link.try_send_parts(dir, kind, method, id, parts) {
            Ok(true) => Ok(()),
            Ok(false) => Box::pin(self.link.send_parts(dir, kind, method, id, parts)).await,
            Err(e) => Err(e),
        };
        if let Err(e) = sent {
            guard.done(); // nothing to cancel: the request is not out (dropping forgets it)
            let e = RpcError::from(e);
            self.fail_all(&e);
            return Err(e);
        }
        Ok(Some(guard))
    }

    /// Waits for the answer of the unary call of `guard`, which was started. Dropped
    /// before the answer (its deadline passed), it cancels the call.
    async fn answer(&self, mut guard: CancelOnDrop) -> Result<Vec<u8>, RpcError> {
        let id = guard.id;
        let r = std::future::poll_fn(|cx| {
            let mut pending = self.pending.lock().expect("poisoned");
            match pending.get_mut(&id).map(|e| &mut e.waiter) {
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
        .await;
        // The callee answered (or the connection is gone): nothing to cancel, and the entry
        // is gone already.
        guard.answered();
        r
    }

    /// A unary call on this connection: `Ok(None)` if it takes no new calls.
    pub(crate) async fn call_raw(
        self: &Arc<Self>,
        method: &str,
        body: &[u8],
        timeout: Option<Duration>,
    ) -> Result<Option<Vec<u8>>, RpcError> {
        match self
            .start(method_id(method), body, timeout, Waiter::unary())
            .await?
        {
            Some(guard) => self.answer(guard).await.map(Some),
            None => Ok(None),
        }
    }

    /// A streaming call on this connection: `Ok(None)` if it takes no new calls. `keep`
    /// is held by the stream (the client's handle, which keeps the connection open).
    pub(crate) async fn call_stream_raw(
        self: &Arc<Self>,
        method: &str,
        body: &[u8],
        timeout: Option<Duration>,
        keep: Option<Arc<dyn Any + Send + Sync>>,
    ) -> Result<Option<CallStream>, RpcError> {
        let (etx, events) = mpsc::unbounded_channel();
        let m = method_id(method);
        let Some(guard) = self.start(m, body, timeout, Waiter::Stream(etx)).await? else {
            return Ok(None);
        };
        Ok(Some(CallStream {
            _keep: keep,
            events,
            guard,
            deadline: timeout.map(|d| Instant::now() + d),
            finished: false,
            unacked: 0,
        }))
    }
}

/// Refuses a request body that would make a message over `max_message` bytes, before
/// anything is sent.
pub(crate) fn check_size(body: &[u8], max_message: usize) -> Result<(), RpcError> {
    if body.len() + DEADLINE_PREFIX > max_message {
        return Err(RpcError::new(
            Code::TooLarge,
            format!(
                "request of {} bytes exceeds the maximum message size {}",
                body.len(),
                max_message.saturating_sub(DEADLINE_PREFIX)
            ),
        ));
    }
    Ok(())
}

/// Runs a call within its timeout, if it has one: the deadline covers the whole call
/// ((re)connecting and sending too). When it fires, the call's future is dropped, which
/// cancels it.
///
/// Takes the call as a function that makes its future, made where it is awaited: a future
/// passed in would be held twice in this one's state (as the argument, and where it is
/// awaited), and copied from one to the other on every call.
pub(crate) async fn within<T, F>(
    timeout: Option<Duration>,
    call: impl FnOnce() -> F,
) -> Result<T, RpcError>
where
    F: std::future::Future<Output = Result<T, RpcError>>,
{
    match timeout {
        Some(d) => tokio::time::timeout(d, call())
            .await
            .unwrap_or_else(|_| Err(RpcError::new(Code::DeadlineExceeded, "deadline exceeded"))),
        None => call().await,
    }
}

/// Sends `Cancel` for a call that is dropped before it finished.
/// Also removes the call's entry (freeing its slot), unless it is known to be gone.
struct CancelOnDrop {
    out: Arc<Outgoing>,
    id: u64,
    method: u32,
    armed: bool,
    /// The call's entry may still be in the table.
    listed: bool,
}

impl CancelOnDrop {
    fn new(out: Arc<Outgoing>, id: u64, method: u32) -> Self {
        Self {
            out,
            id,
            method,
            armed: true,
            listed: true,
        }
    }

    /// The call is over: nothing to cancel.
    fn done(&mut self) {
        self.armed = false;
    }

    /// The call is over and its entry was removed with its answer: nothing to cancel or
    /// remove (which spares the table's lock).
    fn answered(&mut self) {
        self.armed = false;
        self.listed = false;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if self.listed {
            self.out.forget(self.id);
        }
        if self.armed && !self.out.link.broken.is_cancelled() {
            let (out, id, method) = (self.out.clone(), self.id, self.method);
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let _ = out
                        .link
                        .send(Dir::ToCallee, Kind::Cancel, method, id, &[])
                        .await;
                });
            }
        }
    }
}

/// The items of a streaming call, in order.
pub struct CallStream {
    /// Keeps the client's connection open while the stream is read, even if every other
    /// handle of the client is dropped.
    _keep: Option<Arc<dyn Any + Send + Sync>>,
    events: mpsc::UnboundedReceiver<Event>,
    guard: CancelOnDrop,
    deadline: Option<Instant>,
    finished: bool,
    /// Items read since credit was last returned to the callee.
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
    /// The callee's error, `DeadlineExceeded` or `PeerGone`; the stream is over after one.
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
                // Return credit in halves of the window, so the callee never stalls on a
                // reader that keeps up, and never runs more than a window ahead of one that
                // does not.
                self.unacked += 1;
                if self.unacked as usize >= STREAM_WINDOW / 2 {
                    let n = std::mem::take(&mut self.unacked);
                    let g = &self.guard;
                    let _ = g
                        .out
                        .link
                        .send(
                            Dir::ToCallee,
                            Kind::Credit,
                            g.method,
                            g.id,
                            &n.to_le_bytes(),
                        )
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
