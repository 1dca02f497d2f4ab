//! One connection's life: a [`Connection`] reads its frames and hands each to a handler
//! (`on_request`, `on_cancel`, `on_credit`, ...), answers heartbeats (`on_tick`), drains
//! at shutdown, and ends its calls when it ends.

use std::collections::VecDeque;
use std::sync::Arc;

use tokio::sync::Semaphore;

use super::context::CallToken;
use super::dispatch::{reply_error, ConnState};
use super::sink::STREAM_WINDOW;
use super::Shared;
use crate::frame::{FrameHeader, Kind};
use crate::rpc::inspect::ConnInfo;
use crate::rpc::obs::ServerObs;
use crate::rpc::transport::{FrameRx, FrameTx, TransportError};
use crate::rpc::{Code, RpcError, Silence};

/// A connection's sending half, shared by its reader and its calls. A failed send (the
/// peer is gone, or broke the ring: a `read_pos` that lies) marks the connection broken,
/// which ends it: its reader stops, its calls are cancelled.
pub(super) struct ConnTx {
    pub(super) tx: tokio::sync::Mutex<FrameTx>,
    pub(super) broken: CallToken,
    pub(super) obs: Arc<ServerObs>,
    pub(super) info: Arc<ConnInfo>,
}

impl ConnTx {
    pub(super) async fn send(
        &self,
        kind: Kind,
        method: u32,
        call_id: u64,
        payload: &[u8],
    ) -> Result<(), TransportError> {
        let r = self
            .tx
            .lock()
            .await
            .send(kind, method, call_id, payload)
            .await;
        match &r {
            Err(_) => self.broken.cancel(),
            Ok(()) => {
                self.obs.sent(payload.len());
                self.info.sent(payload.len());
            }
        }
        r
    }
}

/// Serves one connection until the peer leaves, dies, breaks the protocol, or the server
/// has drained.
pub(super) async fn serve_conn(shared: Arc<Shared>, tx: FrameTx, rx: FrameRx, info: Arc<ConnInfo>) {
    Connection::new(shared, tx, info).run(rx).await;
}

/// Whether the connection goes on after a frame or an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Flow {
    Continue,
    Stop,
}

/// One connection being served.
///
/// Concurrency is bounded per connection: at most `max_in_flight` calls run at once, and
/// up to `max_in_flight` more requests wait, in arrival order, for a permit. While that
/// queue is full the connection is not read at all, so the ring fills and the client's
/// sends wait (backpressure). Until then, cancels, credit and heartbeats keep being read
/// even when every permit is taken (a cancel reaches a waiting request too).
pub(super) struct Connection {
    st: ConnState,
    /// Permits for calls running at once.
    limit: Arc<Semaphore>,
    /// Requests read but not yet started, oldest first.
    waiting: VecDeque<(FrameHeader, Vec<u8>)>,
    max_waiting: usize,
    silence: Silence,
}

impl Connection {
    pub(super) fn new(shared: Arc<Shared>, tx: FrameTx, info: Arc<ConnInfo>) -> Self {
        let peer_pid = info.peer_pid;
        shared.registry.add(info.clone());
        let max = shared.cfg.max_in_flight.max(1);
        let obs = shared.obs.clone();
        obs.connection(1.0, peer_pid);
        Self {
            st: ConnState {
                shared,
                tx: Arc::new(ConnTx {
                    tx: tokio::sync::Mutex::new(tx),
                    broken: CallToken::default(),
                    obs,
                    info,
                }),
                calls: Arc::default(),
                in_flight: tokio_util::task::TaskTracker::new(),
                peer_pid,
            },
            limit: Arc::new(Semaphore::new(max)),
            waiting: VecDeque::new(),
            max_waiting: max,
            silence: Silence::default(),
        }
    }

    /// The read loop: waits for a frame, a free permit for the oldest waiting request, a
    /// heartbeat tick, the server's drain, or a failed send, and hands it on.
    pub(super) async fn run(mut self, mut rx: FrameRx) {
        let mut draining = self.st.shared.draining.subscribe();
        let hb = self.st.shared.cfg.heartbeat;
        // One timer for the connection's life, re-armed when it fires: re-creating a sleep
        // for every frame cost a clock read and a timer-wheel insert and removal per message.
        let heartbeat = tokio::time::sleep(hb);
        tokio::pin!(heartbeat);
        loop {
            let drain = *draining.borrow();
            if drain {
                self.on_drain().await;
                break;
            }
            let can_read = self.waiting.len() < self.max_waiting;
            let flow = tokio::select! {
                p = self.limit.clone().acquire_owned(), if !self.waiting.is_empty() => {
                    let (h, payload) = self.waiting.pop_front().expect("not empty");
                    self.st.start(h, payload, p.expect("never closed")).await;
                    Flow::Continue
                }
                f = rx.recv(), if can_read => match f {
                    Ok((h, payload)) => self.on_frame(h, payload).await,
                    Err(e @ TransportError::TooLarge { call_id, method, .. }) => {
                        // Only that message is skipped; the connection goes on.
                        self.silence.heard();
                        reply_error(&self.st.tx, method, call_id, RpcError::from(e)).await;
                        Flow::Continue
                    }
                    Err(TransportError::Gone(_) | TransportError::Protocol(_)) => Flow::Stop,
                },
                () = &mut heartbeat => {
                    heartbeat.as_mut().reset(tokio::time::Instant::now() + hb);
                    self.on_tick().await
                }
                _ = draining.changed() => Flow::Continue,
                // A send failed: the peer is gone or broke the ring.
                () = self.st.tx.broken.cancelled() => Flow::Stop,
            };
            if flow == Flow::Stop {
                break;
            }
        }
        let drained = *draining.borrow();
        self.finish(drained).await;
    }

    /// A whole message from the client.
    pub(super) async fn on_frame(&mut self, h: FrameHeader, payload: Vec<u8>) -> Flow {
        self.silence.heard();
        self.st.tx.info.received(payload.len());
        match h.kind {
            Kind::Request => {
                self.on_request(h, payload).await;
                Flow::Continue
            }
            Kind::Cancel => {
                self.on_cancel(h).await;
                Flow::Continue
            }
            Kind::Credit => {
                self.on_credit(h, &payload);
                Flow::Continue
            }
            Kind::Ping => match self.st.tx.send(Kind::Pong, 0, 0, &[]).await {
                Ok(()) => Flow::Continue,
                Err(_) => Flow::Stop,
            },
            Kind::Pong => Flow::Continue,
            Kind::Goodbye => Flow::Stop,
            // A client does not send responses: protocol violation.
            Kind::Response | Kind::StreamItem | Kind::StreamEnd | Kind::Error => Flow::Stop,
        }
    }

    /// A request: refused if its id is already in flight on this connection; started at
    /// once if a permit is free and nothing waits before it; else queued.
    pub(super) async fn on_request(&mut self, h: FrameHeader, payload: Vec<u8>) {
        let id = h.call_id;
        let running = self.st.calls.lock().expect("poisoned").contains_key(&id);
        if running || self.waiting.iter().any(|(w, _)| w.call_id == id) {
            // Answering would mix two calls' frames; the earlier call goes on untouched.
            let e = RpcError::new(
                Code::Protocol,
                format!("call id {id} is already in flight on this connection"),
            );
            self.st.shared.obs.rejected(e.code);
            reply_error(&self.st.tx, h.method, id, e).await;
            return;
        }
        match self.limit.clone().try_acquire_owned() {
            Ok(permit) if self.waiting.is_empty() => self.st.start(h, payload, permit).await,
            // Keep arrival order: the oldest waiting request goes first.
            _ => {
                self.st.tx.obs.backpressure();
                self.waiting.push_back((h, payload));
            }
        }
    }

    /// The client gave up on a call: cancel it if it runs, answer it if it waits.
    pub(super) async fn on_cancel(&mut self, h: FrameHeader) {
        if let Some((t, _)) = self.st.calls.lock().expect("poisoned").get(&h.call_id) {
            t.cancel();
        }
        if let Some(i) = self
            .waiting
            .iter()
            .position(|(w, _)| w.call_id == h.call_id)
        {
            self.waiting.remove(i);
            let e = RpcError::new(Code::Cancelled, "call cancelled");
            reply_error(&self.st.tx, h.method, h.call_id, e).await;
        }
    }

    /// The client read stream items: let the call's handler send as many more.
    pub(super) fn on_credit(&mut self, h: FrameHeader, payload: &[u8]) {
        let n = payload
            .get(..4)
            .map_or(0, |b| u32::from_le_bytes(b.try_into().expect("4 bytes")));
        if let Some((_, Some(c))) = self.st.calls.lock().expect("poisoned").get(&h.call_id) {
            // Bounded: a client cannot grant more than a window's worth at once.
            let room = STREAM_WINDOW.saturating_sub(c.available_permits());
            c.add_permits((n as usize).min(room));
        }
    }

    /// A heartbeat period passed: sample the ring, ping a quiet client, give up on a
    /// silent one.
    pub(super) async fn on_tick(&mut self) -> Flow {
        let silent = self.silence.tick();
        if self.st.tx.obs.wants_occupancy() {
            // The ring probe reads the shared header: no need for the sender's lock.
            if let Some((to_client, _)) = &self.st.tx.info.rings {
                self.st.tx.obs.occupancy(to_client.state().queued);
            }
        }
        if silent >= 3 {
            return Flow::Stop; // silent peer (stopped, or hung): treat as gone
        }
        if silent >= 1 && self.st.tx.send(Kind::Ping, 0, 0, &[]).await.is_err() {
            return Flow::Stop;
        }
        Flow::Continue
    }

    /// The server shuts down: refuse the waiting requests, say goodbye; the calls in flight
    /// finish (in [`finish`](Self::finish)).
    async fn on_drain(&mut self) {
        for (h, _) in self.waiting.drain(..) {
            let e = RpcError::new(Code::ShuttingDown, "server is shutting down");
            reply_error(&self.st.tx, h.method, h.call_id, e).await;
        }
        let _ = self.st.tx.send(Kind::Goodbye, 0, 0, &[]).await;
    }

    /// The client is gone or we are done: cancel whatever still runs (unless draining
    /// gracefully over a working connection), and let it wind down.
    async fn finish(self, drained: bool) {
        let st = self.st;
        st.in_flight.close();
        if !drained || st.tx.broken.is_cancelled() {
            st.cancel_all();
        }
        st.in_flight.wait().await;
        st.tx.obs.connection(-1.0, st.peer_pid);
        st.shared.registry.remove(st.tx.info.id);
    }
}
