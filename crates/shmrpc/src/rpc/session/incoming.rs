//! The calls the other end started on one connection: a request is refused if its id is
//! in flight, started if a permit is free, else queued; cancels and credit reach their
//! calls; a drain refuses the queue; the end cancels what still runs.
//!
//! Concurrency is bounded per connection: at most `max_in_flight` calls run at once, and
//! up to `max_in_flight` more requests wait, in arrival order, for a permit. While more
//! than that wait (only a caller with over `2 × max_in_flight` calls open sends so many)
//! the connection is not read at all ([`Incoming::can_read`]), so the ring
//! fills and the caller's sends wait (backpressure); only padding records are still
//! consumed (`FrameRx::recv_if`), since the peer's next large message may wait for their
//! space. Until then, cancels, credit, answers
//! and heartbeats keep being read even when every permit is taken (a cancel reaches a
//! waiting request too).
//!
//! Nothing here waits on a send: answers and refusals go by `ConnState::reply`, which
//! never makes the reader wait for room in the ring (see there why).

use std::collections::VecDeque;
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::dispatch::ConnState;
use super::items::{Arrived, ItemQueue, QueueError};
use super::sink::STREAM_WINDOW;
use crate::frame::FrameHeader;
use crate::rpc::{Code, RpcError};

struct Waiting {
    h: FrameHeader,
    payload: Vec<u8>,
    items: Option<Arc<ItemQueue>>,
}

pub(super) struct Incoming {
    pub(super) st: ConnState,
    /// Permits for calls running at once.
    limit: Arc<Semaphore>,
    /// Requests read but not yet started, oldest first, each with the queue of the items
    /// its caller streams meanwhile (if its method takes items).
    waiting: VecDeque<Waiting>,
    max_waiting: usize,
    /// This end drains: new requests are refused.
    draining: bool,
}

impl Incoming {
    pub(super) fn new(st: ConnState) -> Self {
        let max = st.host.max_in_flight.max(1);
        Self {
            st,
            limit: Arc::new(Semaphore::new(max)),
            waiting: VecDeque::new(),
            max_waiting: max,
            draining: false,
        }
    }

    /// Whether the connection may be read: not while more requests wait than the queue
    /// holds, nor while no spare permit is free for a refusal the next frame may need
    /// (`ConnState::reply`).
    ///
    /// A full queue alone does not stop the reading: a caller configured like this end
    /// keeps at most `2 × max_in_flight` calls open, which fill the running slots and the
    /// queue exactly, so it never makes this end stop. Were it to stop there, two such ends
    /// calling each other could both stop at once, each with answers for the other in a
    /// ring that only the other reads: for ever. Only a caller with more calls open (one
    /// configured for more, or misbehaving) is held back.
    pub(super) fn can_read(&self) -> bool {
        self.waiting.len() <= self.max_waiting && self.has_spare()
    }

    /// Whether a spare permit is free.
    pub(super) fn has_spare(&self) -> bool {
        self.st.spare.available_permits() > 0
    }

    /// Returns once a spare permit is free (at once if one is).
    pub(super) async fn spare_free(&self) {
        drop(self.st.spare.acquire().await);
    }

    /// A permit for the oldest waiting request, once one is free (pending for ever while
    /// nothing waits).
    pub(super) async fn next_permit(&self) -> OwnedSemaphorePermit {
        if self.waiting.is_empty() {
            return std::future::pending().await;
        }
        self.limit
            .clone()
            .acquire_owned()
            .await
            .expect("never closed")
    }

    /// Starts the oldest waiting request with `permit`.
    pub(super) fn start_waiting(&mut self, permit: OwnedSemaphorePermit) {
        if let Some(w) = self.waiting.pop_front() {
            self.st.start(w.h, w.payload, permit, w.items);
        }
    }

    /// A request: refused if its id is already in flight on this connection; started at
    /// once if a permit is free and nothing waits before it; else queued.
    pub(super) fn on_request(&mut self, h: FrameHeader, payload: Vec<u8>) {
        let id = h.call_id;
        let running = self.st.calls.lock().expect("poisoned").contains_key(&id);
        if running || self.waiting.iter().any(|w| w.h.call_id == id) {
            // Answering would mix two calls' frames; the earlier call goes on untouched.
            let e = RpcError::new(
                Code::Protocol,
                format!("call id {id} is already in flight on this connection"),
            );
            self.st.host.obs.rejected(e.code);
            self.st.reply_error(h.method, id, &e, None);
            return;
        }
        if self.draining {
            let e = RpcError::new(Code::ShuttingDown, "server is shutting down");
            self.st.host.obs.rejected(e.code);
            self.st.reply_error(h.method, id, &e, None);
            return;
        }
        match self.limit.clone().try_acquire_owned() {
            Ok(permit) if self.waiting.is_empty() => self.st.start(h, payload, permit, None),
            // Keep arrival order: the oldest waiting request goes first.
            _ => {
                self.st.tx.obs.backpressure();
                // The caller may stream its items before the call starts: keep them (within
                // the window) until it does.
                let takes_items =
                    (self.st.host.methods.get(h.method)).is_some_and(|r| r.shape.takes_items());
                self.waiting.push_back(Waiting {
                    h,
                    payload,
                    items: takes_items.then(|| Arc::new(ItemQueue::new())),
                });
            }
        }
    }

    /// The caller gave up on a call: cancel it if it runs, answer it if it waits.
    pub(super) fn on_cancel(&mut self, h: FrameHeader) {
        if let Some(call) = self.st.calls.lock().expect("poisoned").get(&h.call_id) {
            call.token.cancel();
        }
        if let Some(i) = self.waiting.iter().position(|w| w.h.call_id == h.call_id) {
            self.waiting.remove(i);
            let e = RpcError::new(Code::Cancelled, "call cancelled");
            self.st.reply_error(h.method, h.call_id, &e, None);
        }
    }

    /// The caller read stream items: let the call's handler send as many more.
    pub(super) fn on_credit(&mut self, h: FrameHeader, payload: &[u8]) {
        let n = payload
            .get(..4)
            .map_or(0, |b| u32::from_le_bytes(b.try_into().expect("4 bytes")));
        let calls = self.st.calls.lock().expect("poisoned");
        if let Some(c) = calls.get(&h.call_id).and_then(|c| c.credit.as_ref()) {
            // Bounded: a caller cannot grant more than a window's worth at once.
            let room = STREAM_WINDOW.saturating_sub(c.available_permits());
            c.add_permits((n as usize).min(room));
        }
    }

    /// A frame of the caller's stream (its items, or its end), for a client-streaming or
    /// bidirectional call: queued for the handler (also while the request waits for a
    /// permit). For a call that is over (or never was) it is ignored: it crossed the
    /// call's end. For a call whose method takes no items, that call fails (`BadRequest`)
    /// and the connection goes on. Returns whether the frame was queued for a handler
    /// (woken if it waited for it).
    ///
    /// # Errors
    /// Past the caller's credit, or after its end, the caller broke the protocol: the
    /// connection ends.
    pub(super) fn on_item(&mut self, h: FrameHeader, item: Arrived) -> Result<bool, RpcError> {
        let refuse = || {
            RpcError::new(
                Code::BadRequest,
                "stream items for a method that takes none",
            )
        };
        let running = {
            let calls = self.st.calls.lock().expect("poisoned");
            calls
                .get(&h.call_id)
                .map(|c| (c.token.clone(), c.items.clone()))
        };
        // A running handler may be waiting for the frame; a request still waiting for
        // its permit has no handler yet.
        let (queue, running) = match running {
            Some((_, Some(q))) => (q, true),
            Some((token, None)) => {
                // The handler's outcome is this error (`run_handler`).
                token.cancel_with(refuse());
                return Ok(false);
            }
            None => match self.waiting.iter().position(|w| w.h.call_id == h.call_id) {
                None => return Ok(false),
                Some(i) => match &self.waiting[i].items {
                    Some(q) => (q.clone(), false),
                    None => {
                        // A missing method is refused as such when its turn comes.
                        if self.st.host.methods.get(h.method).is_some() {
                            let w = self.waiting.remove(i).expect("found above");
                            self.st.host.obs.rejected(Code::BadRequest);
                            self.st
                                .reply_error(w.h.method, w.h.call_id, &refuse(), None);
                        }
                        return Ok(false);
                    }
                },
            },
        };
        match queue.push(item) {
            Ok(()) => Ok(running),
            Err(QueueError::NoCredit) => Err(RpcError::new(
                Code::Protocol,
                format!("call {}: stream items beyond the credit granted", h.call_id),
            )),
            Err(QueueError::AfterEnd) => Err(RpcError::new(
                Code::Protocol,
                format!("call {}: stream frames after the stream's end", h.call_id),
            )),
        }
    }

    /// A message to a call this end serves was too large: that call fails.
    pub(super) fn on_too_large(&mut self, method: u32, call_id: u64, e: RpcError) {
        let running = self
            .st
            .calls
            .lock()
            .expect("poisoned")
            .get(&call_id)
            .map(|c| c.token.clone());
        match running {
            // A running call answers with its handler's outcome: this error.
            Some(token) => token.cancel_with(e),
            None => {
                if let Some(i) = self.waiting.iter().position(|w| w.h.call_id == call_id) {
                    self.waiting.remove(i);
                }
                self.st.reply_error(method, call_id, &e, None);
            }
        }
    }

    /// This end shuts down: refuse the waiting requests and every new one; the calls in
    /// flight run on (the connection is still read: their cancels, credit and callback
    /// answers must arrive) until [`idle`](Self::idle).
    pub(super) fn on_drain(&mut self) {
        self.draining = true;
        for Waiting { h, .. } in self.waiting.drain(..) {
            let e = RpcError::new(Code::ShuttingDown, "server is shutting down");
            self.st.reply_error(h.method, h.call_id, &e, None);
        }
        // From now on `idle` may complete (tasks spawned later are still waited for).
        self.st.in_flight.close();
    }

    /// Whether no call of the peer runs or waits here: every running call holds one of
    /// the `limit` permits until its answer is sent. (Deferred connection frames, a `Pong`
    /// say, are not calls: `in_flight` would count them.)
    pub(super) fn is_idle(&self) -> bool {
        self.waiting.is_empty() && self.limit.available_permits() == self.max_waiting
    }

    /// After [`on_drain`](Self::on_drain): completes once no call runs and nothing waits to
    /// be sent. Cancel-safe.
    pub(super) async fn idle(&self) {
        self.st.in_flight.wait().await;
    }

    /// The connection ended; `graceful`: a drain that ran every call to its end. Otherwise
    /// whatever still runs is cancelled and sends still waiting give up (the peer may be
    /// alive but not reading), so this never waits on the peer, only on handlers' grace.
    pub(super) async fn finish(self, graceful: bool) {
        let st = self.st;
        st.in_flight.close();
        if !graceful {
            st.cancel_all();
            st.tx.ended.cancel();
        }
        st.in_flight.wait().await;
    }
}
