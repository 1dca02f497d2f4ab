//! The calls this end started on one connection: their table (answers matched by call id),
//! cancel on drop, and the reading side of streams with its credit. Works over a [`Link`]
//! whatever the transport; dialling and redialling are the client's business.

use std::any::Any;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use serde::{de::DeserializeOwned, Serialize};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore, TryAcquireError};

use super::batching::{send_batched, ItemOut, ItemWriter};
use super::drive::Drive;
use super::{Link, STREAM_WINDOW};
use crate::frame::{batch_items, split_item, BatchItems, Kind, BATCH_ITEM_HEADER};
use crate::rpc::transport::Dir;
use crate::rpc::{decode, encode, method_id, Code, IdMap, RpcError, DEADLINE_PREFIX};

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
    /// A batch's payload, checked (`frame::batch_items`): its items, one frame's worth.
    Items(Vec<u8>),
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

/// A frame of a stream's items, as it arrived ([`CallStream::next_frame`]).
enum Arrived {
    /// An item sent alone.
    One(Vec<u8>),
    /// A batch's payload, checked on arrival.
    Batch(Vec<u8>),
}

/// A call in the table: what it waits for, its credit if it streams items to the callee,
/// and its slot (freed with the entry).
struct Entry {
    waiter: Waiter,
    credit: Option<Arc<SendCredit>>,
    /// Frames of items the callee may still send this end (a streaming call): a window,
    /// plus what its reader granted since. A frame beyond it is the callee breaking flow
    /// control, which ends the connection: the stream's queue is unbounded only because
    /// this keeps it within a window.
    allowed: usize,
    _slot: OwnedSemaphorePermit,
}

/// The credit of a call that streams items to its callee: how many more it may send (the
/// callee grants more as its handler reads), and why no more can go once the call is over.
pub(crate) struct SendCredit {
    credit: Semaphore,
    ended: std::sync::OnceLock<RpcError>,
}

impl SendCredit {
    fn new() -> Self {
        Self {
            credit: Semaphore::new(STREAM_WINDOW),
            ended: std::sync::OnceLock::new(),
        }
    }

    /// The call is over (`why`): a send waiting for credit fails with it.
    fn end(&self, why: RpcError) {
        let _ = self.ended.set(why);
        self.credit.close();
    }

    /// Why no more items can go.
    fn why(&self) -> RpcError {
        self.ended
            .get()
            .cloned()
            .unwrap_or_else(|| RpcError::new(Code::Cancelled, "the call is over"))
    }
}

/// The calls this end started on one connection.
pub(crate) struct Outgoing {
    pub(crate) link: Arc<Link>,
    /// Who polls the connection's read loop: a caller alone in flight polls it itself.
    drive: Arc<Drive>,
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
    /// Notifications this end may still send before the peer handles some
    /// ([`notify`](super::notify)). Closed when the connection ends.
    pub(super) notify_credit: Semaphore,
    /// The server closed the connection as idle ([`GOODBYE_IDLE`]): it read nothing after
    /// its goodbye, so a unary call that fails with the connection was never run, and goes
    /// out again on the next connection.
    unread: AtomicBool,
}

/// The payload of the `Goodbye` a server sends when it closes an idle connection: it had
/// no call open and reads nothing more, so no request still unanswered was run. (A drain's
/// `Goodbye` is empty: the server answers the calls it read.)
pub(crate) const GOODBYE_IDLE: u8 = 1;

/// How many times a call waiting alone polls the connection's read loop itself per
/// wake-up before it waits to be woken ([`Outgoing::answer`]). A poll of a loop that
/// spins on the ring lasts one spin round (200 ns) and of one that parked far less: a
/// caller spins here for some microseconds at most.
const ASSISTS: u32 = 16;

impl Outgoing {
    /// How many answers a caller read by polling the read loop itself.
    #[cfg(test)]
    pub(crate) fn assisted(&self) -> u64 {
        self.drive.assisted()
    }

    /// A count that moves whenever a call starts here (the next call id): the reader's
    /// cue that a caller it woke has run and called again.
    pub(crate) fn started(&self) -> u64 {
        // Relaxed: a hint, nothing is read through it (its partner is the Relaxed
        // `fetch_add` in `register`).
        self.next_id.load(Ordering::Relaxed)
    }

    /// `max_open`: the calls this end may have open at once on the connection.
    pub(crate) fn new(
        link: Arc<Link>,
        drive: Arc<Drive>,
        max_message: usize,
        max_open: usize,
    ) -> Self {
        Self {
            link,
            drive,
            pending: Mutex::default(),
            slots: Arc::new(Semaphore::new(max_open.max(1))),
            alive: AtomicBool::new(true),
            next_id: AtomicU64::new(1),
            max_message,
            notify_credit: Semaphore::new(super::NOTIFY_WINDOW),
            unread: AtomicBool::new(false),
        }
    }

    /// The server closed the connection as idle (its `Goodbye` said [`GOODBYE_IDLE`]): no
    /// new calls here, and the unary calls still waiting were never read.
    pub(crate) fn closed_idle(&self) {
        // Release: pairs with the Acquire load in `never_read`, though the `pending` lock
        // that `fail_all` takes later on the same task orders it already.
        self.unread.store(true, Ordering::Release);
        self.stop_new_calls();
    }

    /// Whether the server closed the connection as idle, so that a unary call that fails
    /// with it was never read and may go to the next connection.
    fn never_read(&self) -> bool {
        // Acquire: pairs with the Release store in `closed_idle`.
        self.unread.load(Ordering::Acquire)
    }

    /// Whether no call of this end is open.
    pub(super) fn is_idle(&self) -> bool {
        self.pending.lock().expect("poisoned").is_empty()
    }

    /// The largest message this end sends.
    pub(super) fn max_message(&self) -> usize {
        self.max_message
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
        self.notify_credit.close();
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
        pending.retain(|_, entry| {
            // A send waiting for credit fails too.
            if let Some(c) = &entry.credit {
                c.end(e.clone());
            }
            match &mut entry.waiter {
                Waiter::Unary { answer, waker } => {
                    answer.get_or_insert_with(|| Err(e.clone()));
                    wake.extend(waker.take());
                    true // its caller takes the error and removes the entry
                }
                Waiter::Stream(tx) => {
                    let _ = tx.send(Event::Error(e.clone()));
                    false
                }
            }
        });
        drop(pending);
        wake.into_iter().for_each(Waker::wake);
    }

    /// Registers a call under a new id if the connection still takes calls, once a slot
    /// is free.
    async fn register(&self, waiter: Waiter, credit: Option<Arc<SendCredit>>) -> Option<u64> {
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
                credit,
                allowed: STREAM_WINDOW,
                _slot: slot,
            },
        );
        Some(id)
    }

    /// Removes a call's entry (freeing its slot).
    fn forget(&self, id: u64) {
        let entry = self.pending.lock().expect("poisoned").remove(&id);
        if let Some(c) = entry.and_then(|e| e.credit) {
            c.end(RpcError::new(Code::Cancelled, "call cancelled"));
        }
    }

    /// The callee read items of a call that streams to it: it may send as many more.
    /// Credit for a call that is over (or never was) is ignored.
    pub(crate) fn on_credit(&self, call_id: u64, payload: &[u8]) {
        let n = payload
            .get(..4)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u32::from_le_bytes);
        let pending = self.pending.lock().expect("poisoned");
        if let Some(c) = pending.get(&call_id).and_then(|e| e.credit.as_ref()) {
            // Bounded: a callee cannot grant more than a window's worth at once.
            let room = STREAM_WINDOW.saturating_sub(c.credit.available_permits());
            c.credit.add_permits((n as usize).min(room));
        }
    }

    /// This end's reader of call `call_id`'s stream granted the callee `n` more frames
    /// (counted before the grant goes out: the callee may use it at once).
    pub(crate) fn granted(&self, call_id: u64, n: u32) {
        if let Some(e) = self.pending.lock().expect("poisoned").get_mut(&call_id) {
            e.allowed = e.allowed.saturating_add(n as usize);
        }
    }

    /// Hands an answer frame's event to its call. Frames for calls not waiting (cancelled,
    /// timed out, or never started) are dropped. Returns what the call was handed: a unary
    /// call its answer (its task woken, or, polling the loop itself, about to see it), a
    /// stream still read its frame (its reader woken by the channel if it waited), or
    /// nothing.
    ///
    /// # Errors
    /// A frame of items beyond the credit this end granted: the callee broke flow
    /// control, and the connection is to end (`Protocol`).
    pub(crate) fn deliver(&self, call_id: u64, ev: Event) -> Result<Handed, RpcError> {
        let mut pending = self.pending.lock().expect("poisoned");
        let entry = pending
            .get_mut(&call_id)
            .map(|e| (&mut e.waiter, &mut e.allowed));
        let waker = match entry {
            None => None,
            Some((Waiter::Unary { answer, waker }, _)) => {
                let a = match ev {
                    Event::Response(b) => Ok(b),
                    Event::Error(e) => Err(e),
                    Event::Item(_) | Event::Items(_) | Event::End => Err(RpcError::new(
                        Code::Protocol,
                        "stream frames for a unary call",
                    )),
                };
                answer.get_or_insert(a);
                // A caller that polls the loop itself has no waker here, and is told too:
                // the loop then gives way, and the caller returns with its answer.
                Some(waker.take())
            }
            Some((Waiter::Stream(tx), allowed)) => {
                if matches!(ev, Event::Item(_) | Event::Items(_)) {
                    *allowed = allowed.checked_sub(1).ok_or_else(|| {
                        RpcError::new(
                            Code::Protocol,
                            format!("call {call_id}: stream items beyond the credit granted"),
                        )
                    })?;
                }
                // After the callee's last frame, items the caller still sends go nowhere:
                // its sends fail with the callee's error, or as over.
                let last = match &ev {
                    Event::Item(_) | Event::Items(_) => None,
                    Event::Error(e) => Some(e.clone()),
                    Event::Response(_) | Event::End => Some(RpcError::new(
                        Code::Cancelled,
                        "the callee ended the call: it takes no more items",
                    )),
                };
                // Fails only if the stream was dropped: nobody to give way to then.
                let handed = tx.send(ev).is_ok();
                if let Some(why) = last {
                    if let Some(c) = pending.remove(&call_id).and_then(|e| e.credit) {
                        c.end(why);
                    }
                }
                // The channel woke the stream's reader: no waker of ours to call.
                return Ok(if handed {
                    Handed::Frames
                } else {
                    Handed::Nothing
                });
            }
        };
        drop(pending);
        let answered = waker.is_some();
        if let Some(Some(w)) = waker {
            w.wake();
        }
        Ok(if answered {
            Handed::Answer
        } else {
            Handed::Nothing
        })
    }

    /// Checks a request's size before anything is sent.
    pub(crate) fn check_size(&self, body: &[u8]) -> Result<(), RpcError> {
        check_size(body, self.max_message)
    }

    /// Registers a call (with `waiter`) and sends its request; returns its guard, which
    /// cancels the call if dropped before it is done (also while the request is being
    /// sent, so a call abandoned then frees its entry and its slot). `Ok(None)` if this
    /// connection takes no new calls, or its send failed after the server closed it as
    /// idle (the client then tries its next connection).
    ///
    /// # Errors
    /// The send failed: the connection is broken (and every call on it fails).
    async fn start(
        self: &Arc<Self>,
        method: u32,
        body: &[u8],
        timeout: Option<Duration>,
        waiter: Waiter,
        credit: Option<Arc<SendCredit>>,
    ) -> Result<Option<CancelOnDrop>, RpcError> {
        let Some(id) = self.register(waiter, credit).await else {
            return Ok(None);
        };
        let guard = CancelOnDrop::new(self.clone(), id, method);
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
            if self.never_read() {
                return Ok(None);
            }
            return Err(e);
        }
        Ok(Some(guard))
    }

    /// Waits for the answer of the unary call of `guard`, which was started. Dropped
    /// before the answer (its deadline passed), it cancels the call. `Ok(None)`: the server
    /// closed the connection as idle before it read the request (the call was not run).
    ///
    /// A call alone in flight on its connection polls the connection's read loop itself
    /// while it waits ([`Drive::helper`]), up to [`ASSISTS`] times per wake-up: the loop
    /// spins on the ring (then parks), and the answer is read on this task. Only then,
    /// or when another call is open, does it wait to be woken by the loop's own task.
    async fn answer(&self, guard: CancelOnDrop) -> Result<Option<Vec<u8>>, RpcError> {
        let id = guard.id;
        let r = std::future::poll_fn(|cx| {
            let mut assists = ASSISTS;
            let mut assisted = false;
            let mut helper = None;
            loop {
                let mut pending = self.pending.lock().expect("poisoned");
                let alone = pending.len() == 1;
                let Some(Waiter::Unary { answer, waker }) =
                    pending.get_mut(&id).map(|e| &mut e.waiter)
                else {
                    return Poll::Ready(Err(RpcError::new(Code::PeerGone, "connection closed")));
                };
                if let Some(a) = answer.take() {
                    pending.remove(&id);
                    if assisted {
                        self.drive.count_assisted();
                    }
                    return Poll::Ready(a);
                }
                if alone && assists > 0 {
                    drop(pending);
                    assists -= 1;
                    let helper = helper.get_or_insert_with(|| self.drive.helper());
                    if helper.as_ref().is_some_and(|h| h.assist()) {
                        assisted = true;
                    } else {
                        assists = 0; // the loop's own task has it: wait for its wake-up
                    }
                    continue;
                }
                if !waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    *waker = Some(cx.waker().clone());
                }
                return Poll::Pending;
            }
        })
        .await;
        // The callee answered (or the connection is gone): nothing to cancel, and the entry
        // is gone already.
        guard.answered();
        match r {
            Err(e) if e.code == Code::PeerGone && self.never_read() => Ok(None),
            r => r.map(Some),
        }
    }

    /// A unary call on this connection: `Ok(None)` if it takes no new calls.
    pub(crate) async fn call_raw(
        self: &Arc<Self>,
        method: &str,
        body: &[u8],
        timeout: Option<Duration>,
    ) -> Result<Option<Vec<u8>>, RpcError> {
        match self
            .start(method_id(method), body, timeout, Waiter::unary(), None)
            .await?
        {
            Some(guard) => self.answer(guard).await,
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
        let Some(guard) = self
            .start(m, body, timeout, Waiter::Stream(etx), None)
            .await?
        else {
            return Ok(None);
        };
        Ok(Some(CallStream {
            _keep: keep,
            events,
            guard: Arc::new(guard),
            deadline: timeout.map(|d| Instant::now() + d),
            finished: false,
            unacked: 0,
            batch: Vec::new(),
            at: 0,
        }))
    }

    /// A call that streams items to the callee (client-streaming or bidirectional; the
    /// request has an empty body) on this connection: its sending half and the half that
    /// reads what the callee sends. `Ok(None)` if it takes no new calls. `keep` as for
    /// [`call_stream_raw`](Self::call_stream_raw).
    pub(crate) async fn call_sending(
        self: &Arc<Self>,
        method: &str,
        timeout: Option<Duration>,
        keep: Option<Arc<dyn Any + Send + Sync>>,
    ) -> Result<Option<(ItemSender, CallStream)>, RpcError> {
        let (etx, events) = mpsc::unbounded_channel();
        let credit = Arc::new(SendCredit::new());
        let m = method_id(method);
        let started = self
            .start(m, &[], timeout, Waiter::Stream(etx), Some(credit.clone()))
            .await?;
        let Some(guard) = started else {
            return Ok(None);
        };
        let guard = Arc::new(guard);
        let deadline = timeout.map(|d| Instant::now() + d);
        let sender = ItemSender {
            _keep: keep.clone(),
            guard: guard.clone(),
            credit,
            deadline,
            max_message: self.max_message,
            finished: false,
            end_on_drop: false,
        };
        let stream = CallStream {
            _keep: keep,
            events,
            guard,
            deadline,
            finished: false,
            unacked: 0,
            batch: Vec::new(),
            at: 0,
        };
        Ok(Some((sender, stream)))
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
    /// Cleared once the call is done (no `Cancel` then). Shared by a call's two halves.
    armed: AtomicBool,
    /// The call's entry may still be in the table.
    listed: AtomicBool,
}

impl CancelOnDrop {
    fn new(out: Arc<Outgoing>, id: u64, method: u32) -> Self {
        Self {
            out,
            id,
            method,
            armed: AtomicBool::new(true),
            listed: AtomicBool::new(true),
        }
    }

    /// The call is over: nothing to cancel.
    fn done(&self) {
        // Relaxed: read only when the guard is dropped, by whoever holds it last (the
        // `Arc`'s drop orders it after this store).
        self.armed.store(false, Ordering::Relaxed);
    }

    fn is_armed(&self) -> bool {
        self.armed.load(Ordering::Relaxed)
    }

    /// The call is over and its entry was removed with its answer: nothing to cancel or
    /// remove (which spares the table's lock).
    fn answered(&self) {
        // Relaxed: as in `done`.
        self.armed.store(false, Ordering::Relaxed);
        self.listed.store(false, Ordering::Relaxed);
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        // Relaxed: as in `done`.
        if self.listed.load(Ordering::Relaxed) {
            self.out.forget(self.id);
        }
        if self.is_armed() && !self.out.link.broken.is_cancelled() {
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

/// What [`Outgoing::deliver`] handed to a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Handed {
    /// Nothing: the call is over, or never was.
    Nothing,
    /// A unary call's answer.
    Answer,
    /// A frame to a stream still read.
    Frames,
}

/// The items of a streaming call, in order.
pub struct CallStream {
    /// Keeps the client's connection open while the stream is read, even if every other
    /// handle of the client is dropped.
    _keep: Option<Arc<dyn Any + Send + Sync>>,
    events: mpsc::UnboundedReceiver<Event>,
    /// Shared with the sending half of a call that streams both ways.
    guard: Arc<CancelOnDrop>,
    deadline: Option<Instant>,
    finished: bool,
    /// Frames read (items, and batches read to their end) since credit was last returned
    /// to the callee.
    unacked: u32,
    /// The batch being read: its items from `at` on are returned before the next event
    /// is taken. Read to its end (or an item lent whole by `next_items`), it is kept
    /// until the next batch, whose buffer replaces it.
    batch: Vec<u8>,
    /// Where the batch's next item starts.
    at: usize,
}

impl std::fmt::Debug for CallStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallStream")
            .field("call_id", &self.guard.id)
            .finish()
    }
}

impl CallStream {
    /// The next raw item; `None` at the end of the stream. Cancel-safe: dropped before it
    /// returns (in a `select!`, say), it took no item.
    ///
    /// # Errors
    /// The callee's error, `DeadlineExceeded` or `PeerGone`; the stream is over after one.
    pub async fn next_raw(&mut self) -> Option<Result<Vec<u8>, RpcError>> {
        if self.finished {
            return None;
        }
        if let Some(item) = self.next_in_batch() {
            return Some(item);
        }
        match self.next_frame().await {
            Ok(Arrived::One(b)) => Some(Ok(b)),
            Ok(Arrived::Batch(batch)) => {
                // Never empty (checked on arrival): its first item is returned now.
                self.take_batch(batch);
                match self.next_in_batch() {
                    Some(item) => Some(item),
                    None => self.end_with(Some(Event::Items(Vec::new()))).map(Err),
                }
            }
            Err(e) => e.map(Err),
        }
    }

    /// The items that arrived together, lent in place: the rest of a batch the callee
    /// sent with `send_all` (all of it, unless [`next_raw`](Self::next_raw) took some),
    /// or an item it sent alone. `None` at the end of the stream.
    ///
    /// Reading a stream of small items this way copies nothing and allocates nothing per
    /// item. The items are read (and the callee may send more) once this returns; they
    /// stay lent until the next read of the stream. Cancel-safe, as
    /// [`next_raw`](Self::next_raw) is.
    ///
    /// # Errors
    /// As [`next_raw`](Self::next_raw); the stream is over after one.
    ///
    /// # Examples
    ///
    /// See [`ItemSink::send_all_with`](super::ItemSink::send_all_with).
    pub async fn next_items(&mut self) -> Option<Result<ItemBatch<'_>, RpcError>> {
        if self.finished {
            return None;
        }
        if self.at >= self.batch.len() {
            match self.next_frame().await {
                Ok(Arrived::One(b)) => {
                    // Lent whole; nothing is left of it to read.
                    self.take_batch(b);
                    self.at = self.batch.len();
                    return Some(Ok(ItemBatch(Lent::One(Some(&self.batch)))));
                }
                Ok(Arrived::Batch(batch)) => self.take_batch(batch),
                Err(e) => return e.map(Err),
            }
        }
        let at = std::mem::replace(&mut self.at, self.batch.len());
        self.frame_read();
        // Checked on arrival; a batch that did not split would end the stream.
        match batch_items(self.batch.get(at..).unwrap_or_default()) {
            Ok(items) => Some(Ok(ItemBatch(Lent::Batch(items)))),
            Err(_) => {
                // (Not `end_with`: the batch stays borrowed on the other arm.)
                self.finished = true;
                self.guard.done();
                Some(Err(RpcError::new(
                    Code::Protocol,
                    "a malformed batch of items",
                )))
            }
        }
    }

    /// Waits for the stream's next frame of items. An item sent alone is counted as read
    /// here; a batch is counted by whoever reads it to its end. `Err` when the stream is
    /// over: `None` at its end, else its error.
    async fn next_frame(&mut self) -> Result<Arrived, Option<RpcError>> {
        match self.next_event().await.map_err(Some)? {
            Some(Event::Item(b)) => {
                self.frame_read();
                Ok(Arrived::One(b))
            }
            Some(Event::Items(batch)) => Ok(Arrived::Batch(batch)),
            ev => Err(self.end_with(ev)),
        }
    }

    /// Makes `buf` the batch being read, its first item next; the one before goes back
    /// to the connection's reader, which reads a later message into it.
    fn take_batch(&mut self, buf: Vec<u8>) {
        let old = std::mem::replace(&mut self.batch, buf);
        self.at = 0;
        if old.capacity() > 0 {
            self.guard.out.link.recycle(old);
        }
    }

    /// Ends the stream on an event that is not an item: `None` for its end, else the
    /// error to return.
    fn end_with(&mut self, ev: Option<Event>) -> Option<RpcError> {
        self.finished = true;
        self.guard.done();
        match ev {
            Some(Event::End) => None,
            Some(Event::Error(e)) => Some(e),
            Some(Event::Response(_)) => Some(RpcError::new(
                Code::Protocol,
                "unary response to a streaming call",
            )),
            Some(Event::Item(_) | Event::Items(_)) => {
                Some(RpcError::new(Code::Protocol, "an empty batch of items"))
            }
            None => Some(RpcError::new(Code::PeerGone, "connection closed")),
        }
    }

    /// The next item of the batch being read, if there is one. The batch was checked on
    /// arrival, so its items split cleanly; one that did not would end the stream.
    fn next_in_batch(&mut self) -> Option<Result<Vec<u8>, RpcError>> {
        let rest = self.batch.get(self.at..).filter(|r| !r.is_empty())?;
        let Some((item, _)) = split_item(rest) else {
            self.batch.clear();
            self.finished = true;
            self.guard.done();
            return Some(Err(RpcError::new(
                Code::Protocol,
                "a malformed batch of items",
            )));
        };
        let item = item.to_vec();
        self.at += BATCH_ITEM_HEADER + item.len();
        if self.at == self.batch.len() {
            self.frame_read();
        }
        Some(Ok(item))
    }

    /// A frame of items was read to its end: it is one unit of the callee's credit.
    /// Credit goes back in halves of the window, so the callee never stalls on a reader
    /// that keeps up, and never runs more than a window ahead of one that does not.
    fn frame_read(&mut self) {
        self.unacked += 1;
        if self.unacked as usize >= STREAM_WINDOW / 2 {
            let n = std::mem::take(&mut self.unacked);
            let g = &self.guard;
            g.out.granted(g.id, n);
            // Never awaited: dropping the caller's future after the item came loses
            // neither the item's credit nor (being past the last await) the item.
            g.out.link.grant(Dir::ToCallee, g.method, g.id, n);
        }
    }

    /// The response of a client-streaming call (after its items).
    async fn response(&mut self) -> Result<Vec<u8>, RpcError> {
        if self.finished {
            return Err(RpcError::new(Code::Cancelled, "the call is over"));
        }
        let ev = self.next_event().await?;
        self.finished = true;
        self.guard.done();
        match ev {
            Some(Event::Response(b)) => Ok(b),
            Some(Event::Error(e)) => Err(e),
            Some(Event::Item(_) | Event::Items(_) | Event::End) => Err(RpcError::new(
                Code::Protocol,
                "stream frames for a client-streaming call",
            )),
            None => Err(RpcError::new(Code::PeerGone, "connection closed")),
        }
    }

    /// The next event of the call, within its deadline (`None`: the connection ended).
    ///
    /// # Errors
    /// `DeadlineExceeded`; the call is over then (dropping it cancels it on the callee).
    async fn next_event(&mut self) -> Result<Option<Event>, RpcError> {
        match self.deadline {
            Some(d) => match tokio::time::timeout_at(d.into(), self.events.recv()).await {
                Ok(ev) => Ok(ev),
                Err(_) => {
                    self.finished = true;
                    Err(RpcError::new(Code::DeadlineExceeded, "deadline exceeded"))
                }
            },
            None => Ok(self.events.recv().await),
        }
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

/// The items of a stream that arrived together, lent in place by
/// [`CallStream::next_items`]: an iterator of each item's bytes, in order.
#[derive(Debug)]
pub struct ItemBatch<'a>(Lent<'a>);

#[derive(Debug)]
enum Lent<'a> {
    /// An item sent alone (until it is taken).
    One(Option<&'a [u8]>),
    /// The rest of a batch.
    Batch(BatchItems<'a>),
}

impl<'a> Iterator for ItemBatch<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        match &mut self.0 {
            Lent::One(item) => item.take(),
            Lent::Batch(items) => items.next(),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = match &self.0 {
            Lent::One(item) => usize::from(item.is_some()),
            Lent::Batch(items) => items.len(),
        };
        (n, Some(n))
    }
}

impl ExactSizeIterator for ItemBatch<'_> {}

/// The sending half of a call that streams items to its callee: the items go in order,
/// each once the callee has room for it (credit), so a callee that reads slowly holds back
/// only this call. [`finish`](Self::finish) ends the stream.
pub struct ItemSender {
    /// As in [`CallStream`].
    _keep: Option<Arc<dyn Any + Send + Sync>>,
    guard: Arc<CancelOnDrop>,
    credit: Arc<SendCredit>,
    deadline: Option<Instant>,
    max_message: usize,
    /// `finish` was called (or failed).
    finished: bool,
    /// Dropped unfinished, it ends the stream (the sending half of a bidirectional call,
    /// whose receiving half may still read).
    end_on_drop: bool,
}

impl std::fmt::Debug for ItemSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ItemSender")
            .field("call_id", &self.guard.id)
            .finish()
    }
}

impl ItemSender {
    /// Sends one raw item, once the callee has room for it (never holding back other
    /// calls).
    ///
    /// # Errors
    /// `TooLarge` (nothing is sent; the call goes on); the callee's error if it ended the
    /// call (its handler failed), or `Cancelled` if it ended it otherwise or the stream
    /// was finished; `DeadlineExceeded`; `PeerGone`.
    pub async fn send_raw(&mut self, item: &[u8]) -> Result<(), RpcError> {
        if self.finished {
            return Err(RpcError::new(Code::Cancelled, "the stream was finished"));
        }
        if item.len() > self.max_message {
            return Err(RpcError::new(
                Code::TooLarge,
                format!(
                    "item of {} bytes exceeds the maximum message size {}",
                    item.len(),
                    self.max_message
                ),
            ));
        }
        self.take_credit().await?;
        let g = &self.guard;
        g.out
            .link
            .send(Dir::ToCallee, Kind::StreamItem, g.method, g.id, item)
            .await
            .map_err(RpcError::from)
    }

    /// Sends one item encoded with the default codec.
    ///
    /// # Errors
    /// As [`send_raw`](Self::send_raw), or `BadRequest` if it cannot be encoded.
    pub async fn send<T: Serialize>(&mut self, item: &T) -> Result<(), RpcError> {
        self.send_raw(&encode(item)?).await
    }

    /// Sends raw items that are ready together, in order, several to a frame: the same
    /// items and errors as [`send_raw`](Self::send_raw) for each in turn, at a fraction of
    /// the cost per item when they are small. A frame holds up to 16 KiB of items (at most
    /// 512; an item too long to share one goes alone) and takes one unit of the callee's
    /// credit; it goes as soon as it is full or the items run out. The items are taken
    /// from `items` as the frames fill.
    ///
    /// # Errors
    /// As [`send_raw`](Self::send_raw); the items before the one that failed have been
    /// sent. Dropped before it returns, it sent the frames before the one it was filling;
    /// that frame's credit goes back to the stream.
    pub async fn send_all_raw<I>(&mut self, items: I) -> Result<(), RpcError>
    where
        I: IntoIterator,
        I::Item: AsRef<[u8]>,
    {
        send_batched(&*self, items, |item, out| {
            out.extend_from_slice(item.as_ref());
            Ok(())
        })
        .await
    }

    /// [`send_all_raw`](Self::send_all_raw) for items encoded with the default codec, each
    /// written straight into its frame.
    ///
    /// # Errors
    /// As [`send_all_raw`](Self::send_all_raw), or `BadRequest` for an item that cannot be
    /// encoded (the items before it have been sent).
    pub async fn send_all<I>(&mut self, items: I) -> Result<(), RpcError>
    where
        I: IntoIterator,
        I::Item: Serialize,
    {
        send_batched(&*self, items, |item, out| out.encode(&item)).await
    }

    /// [`send_all_raw`](Self::send_all_raw) with each item written in place, as
    /// [`ItemSink::send_all_with`](super::ItemSink::send_all_with) does.
    ///
    /// # Errors
    /// As [`send_all_raw`](Self::send_all_raw), or the error `write` returned (the items
    /// before it have been sent).
    pub async fn send_all_with<I, W>(&mut self, items: I, write: W) -> Result<(), RpcError>
    where
        I: IntoIterator,
        W: FnMut(I::Item, &mut ItemWriter<'_>) -> Result<(), RpcError>,
    {
        send_batched(&*self, items, write).await
    }

    /// Ends the stream: the callee's handler reads the end after the last item. The call
    /// goes on (its response or the callee's items are still to come).
    ///
    /// # Errors
    /// `PeerGone` if the connection broke. Finishing twice does nothing.
    pub async fn finish(&mut self) -> Result<(), RpcError> {
        if std::mem::replace(&mut self.finished, true) {
            return Ok(());
        }
        let g = &self.guard;
        g.out
            .link
            .send(Dir::ToCallee, Kind::StreamEnd, g.method, g.id, &[])
            .await
            .map_err(RpcError::from)
    }
}

impl Drop for ItemSender {
    fn drop(&mut self) {
        let g = &self.guard;
        // The receiving half still reads: end the stream instead of leaving the callee
        // waiting for items that will not come.
        if self.end_on_drop
            && !self.finished
            && g.is_armed()
            && Arc::strong_count(g) > 1
            && !g.out.link.broken.is_cancelled()
        {
            let (out, id, method) = (g.out.clone(), g.id, g.method);
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let _ = out
                        .link
                        .send(Dir::ToCallee, Kind::StreamEnd, method, id, &[])
                        .await;
                });
            }
        }
    }
}

/// A client-streaming call: send items ([`send`](Self::send)), then
/// [`finish`](Self::finish) and get the one response. Dropping it before its response
/// cancels the call on the callee.
#[derive(Debug)]
pub struct ClientStreamCall {
    sender: ItemSender,
    answer: CallStream,
}

impl ClientStreamCall {
    pub(crate) fn new((sender, answer): (ItemSender, CallStream)) -> Self {
        Self { sender, answer }
    }

    /// The sending half, for the typed call's batches.
    pub(crate) fn sender_mut(&mut self) -> &mut ItemSender {
        &mut self.sender
    }

    /// Sends one raw item.
    ///
    /// # Errors
    /// As [`ItemSender::send_raw`]. After an error that ended the call,
    /// [`finish_raw`](Self::finish_raw) gives the callee's outcome.
    pub async fn send_raw(&mut self, item: &[u8]) -> Result<(), RpcError> {
        self.sender.send_raw(item).await
    }

    /// Sends one item encoded with the default codec.
    ///
    /// # Errors
    /// As [`ItemSender::send`].
    pub async fn send<T: Serialize>(&mut self, item: &T) -> Result<(), RpcError> {
        self.sender.send(item).await
    }

    /// Sends raw items that are ready together, several to a frame.
    ///
    /// # Errors
    /// As [`ItemSender::send_all_raw`].
    pub async fn send_all_raw<I>(&mut self, items: I) -> Result<(), RpcError>
    where
        I: IntoIterator,
        I::Item: AsRef<[u8]>,
    {
        self.sender.send_all_raw(items).await
    }

    /// Sends items that are ready together, encoded with the default codec, several to a
    /// frame.
    ///
    /// # Errors
    /// As [`ItemSender::send_all`].
    pub async fn send_all<I>(&mut self, items: I) -> Result<(), RpcError>
    where
        I: IntoIterator,
        I::Item: Serialize,
    {
        self.sender.send_all(items).await
    }

    /// Ends the stream and waits for the callee's raw response (which may have come
    /// already, if the handler answered before reading every item).
    ///
    /// # Errors
    /// The callee's error, `DeadlineExceeded`, `PeerGone`.
    pub async fn finish_raw(mut self) -> Result<Vec<u8>, RpcError> {
        // Refused only if the connection broke, which fails the response too.
        let _ = self.sender.finish().await;
        self.answer.response().await
    }

    /// Ends the stream and waits for the callee's response, decoded with the default
    /// codec.
    ///
    /// # Errors
    /// As [`finish_raw`](Self::finish_raw), or `BadRequest` for an undecodable response.
    pub async fn finish<T: DeserializeOwned>(self) -> Result<T, RpcError> {
        decode(&self.finish_raw().await?)
    }

    /// Cancels the call now (same as dropping it).
    pub fn cancel(self) {}
}

/// A bidirectional call: items go both ways at once. [`split`](Self::split) it into its
/// sending half and its receiving half to use them from different tasks. Dropping both
/// halves before the callee ended the call cancels it on the callee; dropping only the
/// sending half ends its stream (as [`ItemSender::finish`]).
#[derive(Debug)]
pub struct BidiCall {
    // The receiver first: dropped whole, the call drops its receiving half first, so the
    // sender sees it gone and sends no `StreamEnd` before the `Cancel`.
    /// Reads the callee's items.
    pub receiver: CallStream,
    /// Sends items to the callee.
    pub sender: ItemSender,
}

impl BidiCall {
    pub(crate) fn new((mut sender, receiver): (ItemSender, CallStream)) -> Self {
        sender.end_on_drop = true;
        Self { sender, receiver }
    }

    /// The sending half and the receiving half.
    pub fn split(self) -> (ItemSender, CallStream) {
        (self.sender, self.receiver)
    }
}

impl ItemOut for ItemSender {
    fn link(&self) -> &Arc<Link> {
        &self.guard.out.link
    }

    fn max_message(&self) -> usize {
        self.max_message
    }

    fn check_open(&self) -> Result<(), RpcError> {
        if self.finished {
            return Err(RpcError::new(Code::Cancelled, "the stream was finished"));
        }
        Ok(())
    }

    async fn take_credit(&self) -> Result<(), RpcError> {
        let credit = match self.deadline {
            Some(d) => tokio::time::timeout_at(d.into(), self.credit.credit.acquire())
                .await
                .map_err(|_| RpcError::new(Code::DeadlineExceeded, "deadline exceeded"))?,
            None => self.credit.credit.acquire().await,
        };
        credit.map_err(|_| self.credit.why())?.forget();
        Ok(())
    }

    fn give_back(&self) {
        self.credit.credit.add_permits(1);
    }

    fn route(&self) -> (Dir, u32, u64) {
        (Dir::ToCallee, self.guard.method, self.guard.id)
    }
}
