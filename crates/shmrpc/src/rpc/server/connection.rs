//! One connection's life: reading its frames, answering heartbeats, ending its calls.

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
use crate::rpc::{Code, RpcError};

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
///
/// Concurrency is bounded per connection. Requests beyond the limit wait in a queue of at
/// most `max_in_flight` entries; while it is full the connection is not read at all, so
/// the ring fills and the client's sends wait (backpressure). Until then, cancels and
/// heartbeats keep being read even when every permit is taken.
pub(super) async fn serve_conn(
    shared: Arc<Shared>,
    tx: FrameTx,
    mut rx: FrameRx,
    info: Arc<ConnInfo>,
) {
    let peer_pid = info.peer_pid;
    shared.registry.add(info.clone());
    let limit = Arc::new(Semaphore::new(shared.cfg.max_in_flight));
    let max_waiting = shared.cfg.max_in_flight;
    let mut draining = shared.draining.subscribe();
    let hb = shared.cfg.heartbeat;
    let obs = shared.obs.clone();
    let st = ConnState {
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
    };
    st.tx.obs.connection(1.0, peer_pid);
    let mut waiting: VecDeque<(FrameHeader, Vec<u8>)> = VecDeque::new();
    let mut silence = crate::rpc::Silence::default();
    // One timer for the connection's life, re-armed when it fires: re-creating a sleep for
    // every frame cost a clock read and a timer-wheel insert and removal per message.
    let heartbeat = tokio::time::sleep(hb);
    tokio::pin!(heartbeat);
    loop {
        if *draining.borrow() {
            // Tell the client, let its calls in flight finish, then close.
            for (h, _) in waiting.drain(..) {
                let e = RpcError::new(Code::ShuttingDown, "server is shutting down");
                reply_error(&st.tx, h.method, h.call_id, e).await;
            }
            let _ = st.tx.send(Kind::Goodbye, 0, 0, &[]).await;
            break;
        }
        let can_read = waiting.len() < max_waiting;
        let frame = tokio::select! {
            p = limit.clone().acquire_owned(), if !waiting.is_empty() => {
                let (h, payload) = waiting.pop_front().expect("not empty");
                st.start(h, payload, p.expect("never closed")).await;
                continue;
            }
            f = rx.recv(), if can_read => f,
            () = &mut heartbeat => {
                heartbeat.as_mut().reset(tokio::time::Instant::now() + hb);
                let silent = silence.tick();
                if st.tx.obs.wants_occupancy() {
                    // The ring probe reads the shared header: no need for the sender's lock.
                    if let Some((to_client, _)) = &st.tx.info.rings {
                        st.tx.obs.occupancy(to_client.state().queued);
                    }
                }
                if silent >= 3 {
                    break; // silent peer (stopped, or hung): treat as gone
                }
                if silent >= 1 && st.tx.send(Kind::Ping, 0, 0, &[]).await.is_err() {
                    break;
                }
                continue;
            }
            _ = draining.changed() => continue,
            // A send failed: the peer is gone or broke the ring.
            () = st.tx.broken.cancelled() => break,
        };
        let (h, payload) = match frame {
            Ok(f) => f,
            Err(TransportError::TooLarge {
                call_id,
                method,
                message,
            }) => {
                silence.heard();
                reply_error(
                    &st.tx,
                    method,
                    call_id,
                    RpcError::new(Code::TooLarge, message),
                )
                .await;
                continue;
            }
            Err(TransportError::Gone(_)) | Err(TransportError::Protocol(_)) => break,
        };
        silence.heard();
        st.tx.info.received(payload.len());
        match h.kind {
            Kind::Request => match limit.clone().try_acquire_owned() {
                Ok(permit) if waiting.is_empty() => st.start(h, payload, permit).await,
                Ok(permit) => {
                    // Keep arrival order: the oldest waiting request goes first.
                    drop(permit);
                    st.tx.obs.backpressure();
                    waiting.push_back((h, payload));
                }
                Err(_) => {
                    st.tx.obs.backpressure();
                    waiting.push_back((h, payload));
                }
            },
            Kind::Cancel => {
                if let Some((t, _)) = st.calls.lock().expect("poisoned").get(&h.call_id) {
                    t.cancel();
                }
                if let Some(i) = waiting.iter().position(|(w, _)| w.call_id == h.call_id) {
                    waiting.remove(i);
                    let e = RpcError::new(Code::Cancelled, "call cancelled");
                    reply_error(&st.tx, h.method, h.call_id, e).await;
                }
            }
            Kind::Credit => {
                let n = payload
                    .get(..4)
                    .map_or(0, |b| u32::from_le_bytes(b.try_into().expect("4 bytes")));
                if let Some((_, Some(c))) = st.calls.lock().expect("poisoned").get(&h.call_id) {
                    // Bounded: a client cannot grant more than a window's worth at once.
                    let room = STREAM_WINDOW.saturating_sub(c.available_permits());
                    c.add_permits((n as usize).min(room));
                }
            }
            Kind::Ping => {
                if st.tx.send(Kind::Pong, 0, 0, &[]).await.is_err() {
                    break;
                }
            }
            Kind::Pong => {}
            Kind::Goodbye => break,
            // A client does not send responses: protocol violation.
            _ => break,
        }
    }
    // The client is gone or we are done: cancel whatever still runs, let it wind down.
    st.in_flight.close();
    if !*draining.borrow() || st.tx.broken.is_cancelled() {
        st.cancel_all();
    }
    st.in_flight.wait().await;
    st.tx.obs.connection(-1.0, peer_pid);
    st.shared.registry.remove(st.tx.info.id);
}
