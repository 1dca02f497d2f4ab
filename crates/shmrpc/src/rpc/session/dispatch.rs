//! Starting a call: routing it, running its handler (inline if it answers at once, else in
//! a task raced against cancellation and deadline), and sending its outcome.

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::context::{CallContext, CallToken};
use super::methods::{BoxFuture, INSPECT_ID};
use super::sink::{ItemSink, STREAM_WINDOW};
use super::{Host, Link, Peer};
use crate::frame::{FrameHeader, Kind};
use crate::rpc::transport::Dir;
use crate::rpc::{encode, split_deadline, Code, IdMap, RpcError, DEADLINE_PREFIX};

/// A call that waits (its handler runs in a task): its cancellation token and, if it
/// streams, its credit. Calls answered on their first poll never get an entry. Keyed by
/// the caller's call id: at most one entry per concurrency permit, and a request whose id
/// is already in flight is refused (`Incoming::on_request`), never overwrites one.
type Running = (CallToken, Option<Arc<Semaphore>>);

/// What one connection's incoming calls share.
pub(super) struct ConnState {
    pub(super) host: Arc<Host>,
    pub(super) tx: Arc<Link>,
    pub(super) calls: Arc<Mutex<IdMap<Running>>>,
    pub(super) in_flight: tokio_util::task::TaskTracker,
    /// The caller, for handlers to call back.
    pub(super) peer: Peer,
}

impl ConnState {
    /// Starts a request that holds a concurrency permit.
    pub(super) async fn start(
        &self,
        h: FrameHeader,
        mut payload: Vec<u8>,
        permit: OwnedSemaphorePermit,
    ) {
        let Some((deadline, _)) = split_deadline(&payload) else {
            let e = RpcError::new(Code::BadRequest, "request without deadline prefix");
            self.host.obs.rejected(e.code);
            reply_error(&self.tx, h.method, h.call_id, e).await;
            return;
        };
        if h.method == INSPECT_ID {
            // Built in: what this end knows of its connections.
            let outcome = encode(&self.host.registry.report()).map(Some);
            send_outcome(
                &self.tx,
                h.method,
                h.call_id,
                outcome,
                self.host.max_message,
            )
            .await;
            return;
        }
        let Some(route) = self.host.methods.get(h.method) else {
            let e = RpcError::new(
                Code::UnknownMethod,
                format!("no method with id {:#010x}", h.method),
            );
            self.host.obs.rejected(e.code);
            reply_error(&self.tx, h.method, h.call_id, e).await;
            return;
        };
        // The body is the payload after its prefix: shift it down instead of copying it out.
        payload.drain(..DEADLINE_PREFIX);
        let obs = route.obs.start(&self.host.obs, h.call_id, payload.len());
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
        let mut fut = (route.handler)(ctx, payload, sink);
        // Fast path: most handlers answer without waiting for anything. Poll once here; if
        // the answer is ready, reply at once and skip the task spawn (and its wake-ups)
        // that a handler which waits needs. No frame of this connection is read
        // meanwhile, so a call that finishes here needs no entry in `calls` (a later
        // `Cancel` or `Credit` for it finds nothing, as for any finished call).
        let first = {
            #[cfg(feature = "tracing")]
            let _in_span = obs.span().entered();
            poll_once(&mut fut)
        };
        if let Some(outcome) = first {
            let code = send_outcome(&self.tx, h.method, h.call_id, outcome, max).await;
            obs.end(&self.host.obs, code);
            drop(permit);
            return;
        }
        // `on_request` refused an id already in flight, and no frame was read since.
        self.calls
            .lock()
            .expect("poisoned")
            .entry(h.call_id)
            .or_insert((token.clone(), credit));
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

    /// Cancels every call still running (the connection ended).
    pub(super) fn cancel_all(&self) {
        for (token, _) in self.calls.lock().expect("poisoned").values() {
            token.cancel();
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

/// Sends a finished call's answer: its response, the end of its stream, or its error.
/// Returns the error's code if the call failed.
async fn send_outcome(
    tx: &Link,
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
    // A failed send marks the connection broken (`Link::send`); nothing else to do here.
    let _ = tx.send(Dir::ToCaller, kind, method, call_id, &body).await;
    code
}

pub(super) async fn reply_error(tx: &Link, method: u32, call_id: u64, e: RpcError) {
    let _ = tx
        .send(Dir::ToCaller, Kind::Error, method, call_id, &e.encode())
        .await;
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
        _ = token.cancelled() => RpcError::new(Code::Cancelled, "call cancelled"),
        _ = expired => {
            token.cancel();
            RpcError::new(Code::DeadlineExceeded, "deadline exceeded")
        }
        r = &mut fut => return r,
    };
    // Whatever it returns in its grace period, the caller was told `why`.
    let _ = tokio::time::timeout(grace, &mut fut).await;
    Err(why)
}
