//! Starting a call: routing it, running its handler (inline if it answers at once, else in
//! a task raced against cancellation and deadline), and sending its outcome.

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::context::{CallContext, CallToken, InlineContext};
use super::items::{ItemQueue, ItemStream};
use super::methods::{BoxFuture, InlineHandler, Run, INSPECT_ID};
use super::sink::{ItemSink, STREAM_WINDOW};
use super::{Host, Link, Peer};
use crate::frame::{FrameHeader, Kind};
use crate::rpc::transport::Dir;
use crate::rpc::{encode, split_deadline, Code, IdMap, RpcError, DEADLINE_PREFIX};

/// A call that waits (its handler runs in a task): its cancellation token, its credit if
/// the callee streams, and the queue of the caller's items if the caller streams. Calls
/// answered on their first poll never get an entry. Keyed by the caller's call id: at most
/// one entry per concurrency permit, and a request whose id is already in flight is
/// refused (`Incoming::on_request`), never overwrites one.
pub(super) struct Running {
    pub(super) token: CallToken,
    pub(super) credit: Option<Arc<Semaphore>>,
    pub(super) items: Option<Arc<ItemQueue>>,
}

/// What one connection's incoming calls share.
pub(super) struct ConnState {
    pub(super) host: Arc<Host>,
    pub(super) tx: Arc<Link>,
    pub(super) calls: Arc<Mutex<IdMap<Running>>>,
    pub(super) in_flight: tokio_util::task::TaskTracker,
    /// The caller, for handlers to call back.
    pub(super) peer: Peer,
    /// Bounds the reader's sends that had to be deferred and hold no call's permit
    /// (refusals, heartbeats): see [`reply`](Self::reply).
    pub(super) spare: Arc<Semaphore>,
}

/// How many of the reader's deferred sends may hold no call's permit, for a connection
/// whose ends run `max_in_flight` calls at once: a peer configured like this end has at
/// most twice that many calls open here (`Outgoing`), each refused at most once, plus a
/// heartbeat or two.
pub(super) fn spare_sends(max_in_flight: usize) -> usize {
    max_in_flight.max(1) * 2 + 2
}

impl ConnState {
    /// Sends a message the reader produced (an answer, a refusal, a heartbeat) without the
    /// reader ever waiting for room in the ring.
    ///
    /// Why: the peer drains that ring only while its own reader runs. If both readers
    /// waited on a send at once, each into a full ring the other no longer reads (large
    /// messages or many calls flowing both ways), neither would read again: a deadlock. So
    /// the message goes at once if it can ([`Link::try_send`]); if it would wait, a task
    /// sends it (through the link's lock, so its fragments never interleave with another
    /// message's) and the reader reads on. A call's answer is its only frame from here, so
    /// deferring it keeps each call's frames in order.
    ///
    /// Deferred sends are bounded per connection: one that answers a call holds the call's
    /// concurrency `permit` until it is sent, so the calls' limit bounds them; any other
    /// takes a `spare` permit, and the reader reads no frame while none is free
    /// ([`Connection::run`](super::reader::Connection::run)). Only a peer that stops
    /// reading gets there, and it holds back only its own connection.
    pub(super) fn reply(
        &self,
        dir: Dir,
        kind: Kind,
        method: u32,
        call_id: u64,
        body: Vec<u8>,
        permit: Option<OwnedSemaphorePermit>,
    ) {
        // A failed send marks the connection broken (`Link`); nothing else to do here.
        if !matches!(
            self.tx.try_send(dir, kind, method, call_id, &body),
            Ok(false)
        ) {
            // Sent (or never will be): the reader reads the next message into it.
            self.tx.recycle(body);
            return;
        }
        // At most one per frame read, and frames are read only while a spare permit is
        // free; past the bound (refusing a drained queue) the task goes without one.
        let spare = match permit {
            Some(_) => None,
            None => self.spare.clone().try_acquire_owned().ok(),
        };
        let tx = self.tx.clone();
        self.in_flight.spawn(async move {
            let _ = tx.send(dir, kind, method, call_id, &body).await;
            drop((permit, spare));
        });
    }

    /// Refuses a call with `e`, without waiting ([`reply`](Self::reply)).
    pub(super) fn reply_error(
        &self,
        method: u32,
        call_id: u64,
        e: &RpcError,
        permit: Option<OwnedSemaphorePermit>,
    ) {
        self.reply(
            Dir::ToCaller,
            Kind::Error,
            method,
            call_id,
            e.encode(),
            permit,
        );
    }

    /// Starts a request that holds a concurrency permit. Never waits: a handler that does
    /// not answer on its first poll runs in a task, and answers go by
    /// [`reply`](Self::reply).
    /// `items`: the queue of the caller's items, if its method takes them and some may
    /// have arrived while the request waited (else one is made here).
    pub(super) fn start(
        &self,
        h: FrameHeader,
        mut payload: Vec<u8>,
        permit: OwnedSemaphorePermit,
        items: Option<Arc<ItemQueue>>,
    ) {
        let Some((deadline, _)) = split_deadline(&payload) else {
            let e = RpcError::new(Code::BadRequest, "request without deadline prefix");
            self.host.obs.rejected(e.code);
            self.reply_error(h.method, h.call_id, &e, Some(permit));
            return;
        };
        if h.method == INSPECT_ID {
            // Built in: what this end knows of its connections.
            let outcome = encode(&self.host.registry.report()).map(Some);
            let (kind, body, _) = outcome_frame(outcome, self.host.max_message);
            self.reply(Dir::ToCaller, kind, h.method, h.call_id, body, Some(permit));
            return;
        }
        let Some(route) = self.host.methods.get(h.method) else {
            let e = RpcError::new(
                Code::UnknownMethod,
                format!("no method with id {:#010x}", h.method),
            );
            self.host.obs.rejected(e.code);
            self.reply_error(h.method, h.call_id, &e, Some(permit));
            return;
        };
        let handler = match &route.run {
            Run::Task(handler) => handler,
            Run::Inline(f) => {
                let ctx = InlineContext {
                    call_id: h.call_id,
                    deadline: deadline.map(|d| Instant::now() + d),
                    peer_pid: self.peer.pid(),
                };
                return self.run_inline(f, &ctx, h, &route.obs, payload, permit);
            }
        };
        // The body is the payload after its prefix: shift it down instead of copying it out.
        payload.drain(..DEADLINE_PREFIX);
        let obs = route.obs.start(&self.host.obs, h.call_id, payload.len());
        // A token of its own per call, not a child of a per-connection token: a child costs
        // a lock on the parent at creation and drop. When the connection ends, the calls
        // still running are cancelled one by one from `calls`.
        let token = CallToken::default();
        let credit = route
            .shape
            .sends_items()
            .then(|| Arc::new(Semaphore::new(STREAM_WINDOW)));
        let queue = route
            .shape
            .takes_items()
            .then(|| items.unwrap_or_else(|| Arc::new(ItemQueue::new())));
        let ctx = CallContext {
            call_id: h.call_id,
            deadline: deadline.map(|d| Instant::now() + d),
            token: token.clone(),
            peer: self.peer.clone(),
        };
        let max = self.host.max_message;
        let sink = ItemSink {
            tx: self.tx.clone(),
            method: h.method,
            call_id: h.call_id,
            max_message: max,
            token: token.clone(),
            credit: credit.clone(),
        };
        let stream = queue.clone().map(|queue| ItemStream {
            queue,
            tx: self.tx.clone(),
            method: h.method,
            call_id: h.call_id,
            token: token.clone(),
            unacked: 0,
            done: false,
        });
        let mut fut = handler(ctx, payload, sink, stream);
        // Fast path: most handlers answer without waiting for anything. Poll once here; if
        // the answer is ready, reply at once (if the ring has room; else a task sends it,
        // see `reply`) and skip the task spawn (and its wake-ups) that a handler which
        // waits needs. No frame of this connection is read meanwhile, so a call that
        // finishes here needs no entry in `calls` (a later `Cancel` or `Credit` for it
        // finds nothing, as for any finished call).
        let first = {
            #[cfg(feature = "tracing")]
            let _in_span = obs.span().entered();
            poll_once(&mut fut)
        };
        if let Some(outcome) = first {
            let (kind, body, code) = outcome_frame(outcome, max);
            obs.end(&self.host.obs, code);
            self.reply(Dir::ToCaller, kind, h.method, h.call_id, body, Some(permit));
            return;
        }
        // `on_request` refused an id already in flight, and no frame was read since.
        self.calls
            .lock()
            .expect("poisoned")
            .entry(h.call_id)
            .or_insert(Running {
                token: token.clone(),
                credit,
                items: queue,
            });
        let (tx, calls) = (self.tx.clone(), self.calls.clone());
        let grace = self.host.cancel_grace;
        #[cfg(feature = "tracing")]
        let fut: BoxFuture<_> = Box::pin(tracing::Instrument::instrument(fut, obs.span()));
        let server_obs = self.host.obs.clone();
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

    /// Runs an inline handler on the reader and answers at once. The request's buffer goes
    /// back to the reader's pool, and the response is written into one from it, so a warm
    /// connection answers without allocating. A panic is caught and answered as the
    /// handler's error; the connection goes on.
    fn run_inline(
        &self,
        f: &InlineHandler,
        ctx: &InlineContext,
        h: FrameHeader,
        obs: &crate::rpc::obs::MethodObs,
        payload: Vec<u8>,
        permit: OwnedSemaphorePermit,
    ) {
        let body = &payload[DEADLINE_PREFIX..];
        let obs = obs.start(&self.host.obs, h.call_id, body.len());
        let mut out = self.tx.buffer();
        let ran = {
            #[cfg(feature = "tracing")]
            let _in_span = obs.span().entered();
            catch_unwind(AssertUnwindSafe(|| f(ctx, body, &mut out)))
        };
        self.tx.recycle(payload);
        let outcome = match ran {
            Ok(Ok(())) => Ok(Some(out)),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(RpcError::handler("handler panicked")),
        };
        let (kind, body, code) = outcome_frame(outcome, self.host.max_message);
        obs.end(&self.host.obs, code);
        self.reply(Dir::ToCaller, kind, h.method, h.call_id, body, Some(permit));
    }

    /// Cancels every call still running (the connection ended).
    pub(super) fn cancel_all(&self) {
        for call in self.calls.lock().expect("poisoned").values() {
            call.token.cancel();
        }
    }
}

/// A handler's future with its panics caught: a panic fails only its call. After it has
/// returned `Ready` (a panic included) it is not polled again.
struct CatchPanic(BoxFuture<Result<Option<Vec<u8>>, RpcError>>);

impl Future for CatchPanic {
    type Output = Result<Option<Vec<u8>>, RpcError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match catch_unwind(AssertUnwindSafe(|| self.0.as_mut().poll(cx))) {
            Ok(p) => p,
            Err(_) => Poll::Ready(Err(RpcError::handler("handler panicked"))),
        }
    }
}

/// Polls a handler once with a no-op waker. `Some` if it finished (a panic counts as a
/// failed call); `None` if it must wait, in which case it is spawned and polled again with a
/// real waker (futures re-register their waker on every poll, so nothing is lost).
fn poll_once(
    fut: &mut BoxFuture<Result<Option<Vec<u8>>, RpcError>>,
) -> Option<Result<Option<Vec<u8>>, RpcError>> {
    let mut cx = Context::from_waker(Waker::noop());
    match catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(&mut cx))) {
        Ok(Poll::Ready(r)) => Some(r),
        Ok(Poll::Pending) => None,
        Err(_) => Some(Err(RpcError::handler("handler panicked"))),
    }
}

/// A finished call's answer: its response, the end of its stream, or its error; and the
/// error's code if the call failed.
fn outcome_frame(
    outcome: Result<Option<Vec<u8>>, RpcError>,
    max: usize,
) -> (Kind, Vec<u8>, Option<Code>) {
    match outcome {
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
    }
}

/// Sends a finished call's answer from its task (which may wait for room: the reader reads
/// on meanwhile). Returns the error's code if the call failed.
async fn send_outcome(
    tx: &Arc<Link>,
    method: u32,
    call_id: u64,
    outcome: Result<Option<Vec<u8>>, RpcError>,
    max: usize,
) -> Option<Code> {
    let (kind, body, code) = outcome_frame(outcome, max);
    // A failed send marks the connection broken (`Link::send`); nothing else to do here.
    let _ = tx.send(Dir::ToCaller, kind, method, call_id, &body).await;
    tx.recycle(body);
    code
}

/// Runs a waiting handler inside the call's task (one task per waiting call), racing it
/// against cancellation and the deadline. A cancelled handler gets `grace` to notice and
/// return; then it is dropped (it is not polled again, which ends it at its next `.await`).
async fn run_handler(
    fut: BoxFuture<Result<Option<Vec<u8>>, RpcError>>,
    token: CallToken,
    deadline: Option<Duration>,
    grace: Duration,
) -> Result<Option<Vec<u8>>, RpcError> {
    let mut fut = CatchPanic(fut);
    let expired = async {
        match deadline {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    // Biased: a handler that returns because it saw the cancel (both ready in one wake-up)
    // still answers `Cancelled`, the outcome the caller asked for.
    let why = tokio::select! {
        biased;
        _ = token.cancelled() => token.reason(),
        _ = expired => {
            let e = RpcError::new(Code::DeadlineExceeded, "deadline exceeded");
            token.cancel_with(e.clone());
            e
        }
        r = &mut fut => return r,
    };
    // Whatever it returns in its grace period, the caller was told `why`.
    let _ = tokio::time::timeout(grace, &mut fut).await;
    Err(why)
}
