//! One connection's read loop, the same at both ends: each frame goes by its direction
//! flag to the incoming calls (frames to this end as callee) or the outgoing calls (frames
//! to this end as caller); heartbeats are answered and kept; at the end, every call still
//! open fails, in both directions.
//!
//! The reader never waits for room to send: the frames it produces itself (fast answers,
//! refusals, `Pong`, `Ping`) go by `ConnState::reply`, which hands a send that would wait
//! to a task. Otherwise two readers, each sending into a full ring that only the other
//! drains, would wait for each other for ever.
//!
//! A drain (the server shuts down) refuses new calls and says `Goodbye`, but reads on
//! until the calls in flight are done: their cancels, stream credit and the answers to
//! their callbacks still arrive. When the connection ends otherwise, whatever still runs
//! is cancelled and sends still waiting give up ([`Link`]'s `ended`).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::dispatch::{spare_sends, ConnState};
use super::incoming::Incoming;
use super::items::Arrived;
use super::notify::Inbox;
use super::outgoing::{Event, Handed, GOODBYE_IDLE};
use super::{Ends, Host, Link, Peer, Role};
use crate::frame::{batch_items, BatchItems, FrameHeader, Kind};
use crate::rpc::transport::{Dir, FrameRx, TransportError};
use crate::rpc::{Code, RpcError, Silence};

/// The most frames handled one after the other, as they are found in the ring, before
/// the read loop looks at its other events again ([`Connection::burst`]).
const BURST: usize = 64;

/// After a send failed, how long the reader reads on for frames the peer sent before its end
/// ([`Connection::read_what_is_left`]), and how many at most.
const LEFT_WAIT: Duration = Duration::from_secs(1);
const LEFT_MAX: usize = 1 << 16;

/// Gives way once to the tasks already queued on this runtime worker, by waking itself:
/// the task goes to the back of the run queue, behind a caller the reader just woke,
/// without the trip to the I/O driver that `tokio::task::yield_now` makes (it defers its
/// wake-up until the driver was polled: an `epoll_wait` and a timer check per round trip,
/// ≈ 0.2 µs of a 2 µs call). Only on a runtime with one worker: with more, a self-wake
/// also wakes an idle worker to steal the task, which cost more than it saved (a 64 B
/// call on two workers, `examples/rpc_pingpong`: p50 13–16 → 18–19 µs).
fn requeue() -> impl std::future::Future<Output = ()> {
    let mut done = false;
    std::future::poll_fn(move |cx| {
        if done {
            return std::task::Poll::Ready(());
        }
        done = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    })
}

/// Whether the reader gives way to a caller it woke by [`requeue`] or by tokio's yield:
/// by requeueing while that lets the caller run first; after a requeue that did not (the
/// caller waits in a `block_on`, which the runtime polls only once its queue is empty,
/// or runs on another thread), by the yield, trying a requeue again every
/// [`RETRY`](Self::RETRY) times. A requeue that does not help costs one more poll of the
/// read loop (a blocking client's 64 B call: +0.05–0.08 µs when it was tried each time).
#[derive(Debug)]
struct GiveWay {
    /// Yields left before the next requeue is tried (0: requeue).
    wait: u32,
}

impl GiveWay {
    const RETRY: u32 = 64;

    fn new() -> Self {
        Self { wait: 0 }
    }

    /// Whether to requeue this time.
    fn requeue(&mut self) -> bool {
        if self.wait == 0 {
            return true;
        }
        self.wait -= 1;
        false
    }

    /// After a requeue: whether the woken caller ran behind it.
    fn outcome(&mut self, ran: bool) {
        self.wait = if ran { 0 } else { Self::RETRY };
    }
}

/// Whether the connection goes on after a frame or an event, or why it ends.
#[derive(Debug)]
pub(super) enum Flow {
    Continue,
    Stop(RpcError),
}

/// How long an end that found a violation waits to tell the peer why, if the reason
/// cannot go at once.
const REASON_WAIT: Duration = Duration::from_secs(1);

/// The most bytes of a peer's reason for ending the connection that this end keeps.
const REASON_MAX: usize = 256;

fn violation(what: &str) -> Flow {
    Flow::Stop(RpcError::new(Code::Protocol, what))
}

/// The items of a `StreamItems` frame, checked whole before any is handed on: a malformed
/// batch (or one of more than `BATCH_MAX_ITEMS`) ends the connection.
fn checked_batch(call_id: u64, payload: &[u8]) -> Result<BatchItems<'_>, Flow> {
    batch_items(payload).map_err(|e| violation(&format!("call {call_id}: {e}")))
}

/// One connection being served.
pub(super) struct Connection {
    host: Arc<Host>,
    role: Role,
    link: Arc<Link>,
    peer: Peer,
    incoming: Incoming,
    /// The peer's notifications.
    inbox: Inbox,
    silence: Silence,
    /// Frames from the peer other than heartbeats (for the idle timeout), and their count
    /// when the current idle stretch began.
    busy: u64,
    idle_since: (u64, tokio::time::Instant),
    /// An answer just went to a unary caller: woken, or polling this loop itself (then the
    /// loop gives way at once, and the caller returns with it).
    woke: bool,
    /// Frames just went to a stream's reader (a caller's, or a running handler's). Given
    /// way to once the ring is empty, before the loop waits for the next frame, it reads
    /// (and returns credit) while the peer writes the next frame; otherwise it ran only
    /// once the loop's wait let it, and the peer's next frame found the loop waiting.
    fed: bool,
    /// How the reader gives way to a caller it woke ([`GiveWay`]).
    give_way: GiveWay,
    /// The peer ended the connection and said why (an `Error` frame of call 0).
    peer_said: bool,
}

impl Connection {
    pub(super) fn new(host: Arc<Host>, role: Role, link: Arc<Link>, peer: Peer) -> Self {
        let peer_pid = link.info.peer_pid;
        host.registry.add(link.info.clone());
        host.obs.connection(1.0, peer_pid);
        let st = ConnState {
            host: host.clone(),
            tx: link.clone(),
            calls: Arc::default(),
            in_flight: tokio_util::task::TaskTracker::new(),
            peer: peer.clone(),
            spare: Arc::new(tokio::sync::Semaphore::new(spare_sends(host.max_in_flight))),
        };
        let inbox = Inbox::new(host.clone(), link.clone(), peer.clone());
        Self {
            host,
            role,
            link,
            peer,
            incoming: Incoming::new(st),
            inbox,
            silence: Silence::default(),
            busy: 0,
            idle_since: (0, tokio::time::Instant::now()),
            woke: false,
            fed: false,
            give_way: GiveWay::new(),
            peer_said: false,
        }
    }

    /// The read loop: waits for a frame, a free permit for the oldest waiting request, a
    /// heartbeat tick, the end of the server (drain) or of the client (its last handle
    /// dropped), or a failed send, and hands it on.
    pub(super) async fn run(mut self, mut rx: FrameRx, ends: Ends) {
        // Without a drain signal, one that never fires (its sender lives as long as the
        // loop: a dropped sender would make `changed` return at once, for ever).
        // Each end waits only for its own signal: an idle branch costs nothing per frame.
        let (has_drain, has_shut) = (ends.draining.is_some(), ends.shut.is_some());
        let (_never, no_drain) = watch::channel(false);
        let mut draining = ends.draining.unwrap_or(no_drain);
        let shut = ends.shut.unwrap_or_default();
        let hb = self.host.heartbeat;
        // One timer for the connection's life, re-armed when it fires: re-creating a sleep
        // for every frame cost a clock read and a timer-wheel insert and removal per message.
        let heartbeat = tokio::time::sleep(hb);
        tokio::pin!(heartbeat);
        let broken = self.link.broken.clone();
        // Both waits live as long as the loop: made afresh for each frame, each would join
        // and leave its notifier's waiter list (a lock each way) on every frame.
        let shut_wait = shut.cancelled();
        let broken_wait = broken.cancelled();
        tokio::pin!(shut_wait, broken_wait);
        // One worker thread (a current-thread runtime, or a multi-thread one with one
        // worker): a woken caller runs on this thread, next in the queue (`requeue`).
        let single_worker =
            tokio::runtime::Handle::try_current().is_ok_and(|h| h.metrics().num_workers() == 1);
        // The drain began (the goodbye is sent), and whether it ran every call to its end.
        let (mut drained, mut graceful) = (false, false);
        // A send failed.
        let mut broke = false;
        let end = loop {
            if !drained && *draining.borrow() {
                // Refuse what waits and whatever comes, tell the client, and read on until
                // the calls in flight are done.
                drained = true;
                self.incoming.on_drain();
                self.incoming
                    .st
                    .reply(Dir::Conn, Kind::Goodbye, 0, 0, Vec::new(), None);
            }
            let can_read = self.incoming.can_read();
            let no_spare = !self.incoming.has_spare();
            let flow = tokio::select! {
                p = self.incoming.next_permit() => {
                    self.incoming.start_waiting(p);
                    Flow::Continue
                }
                // Every spare permit is held by a deferred send: read on once one is sent.
                () = self.incoming.spare_free(), if no_spare => Flow::Continue,
                // Not reading (`can_read` false): it still gives back the padding the peer
                // writes, and never returns.
                f = rx.recv_if(can_read) => match f {
                    Ok((h, payload)) => self.on_frame(h, payload),
                    Err(e) => self.on_recv_error(e),
                },
                () = &mut heartbeat => {
                    heartbeat.as_mut().reset(tokio::time::Instant::now() + hb);
                    self.on_tick()
                }
                _ = draining.changed(), if has_drain && !drained => Flow::Continue,
                () = self.incoming.idle(), if drained => {
                    graceful = true;
                    Flow::Stop(RpcError::new(Code::ShuttingDown, "this end is shutting down"))
                }
                () = &mut shut_wait, if has_shut => {
                    // Every handle of the client is gone: tell the server (if the ring has
                    // room: the end of the connection tells it anyway), and end.
                    let _ = self.link.try_send(Dir::Conn, Kind::Goodbye, 0, 0, &[]);
                    Flow::Stop(RpcError::new(Code::PeerGone, "the client was dropped"))
                }
                // A send failed: the peer is gone or broke the ring, or ended the connection
                // (a drain) after its last frames, which are still read (below).
                () = &mut broken_wait => {
                    broke = true;
                    Flow::Stop(RpcError::new(
                        Code::PeerGone,
                        "the connection broke (a send failed)",
                    ))
                }
            };
            if let Flow::Stop(e) = flow {
                if broke {
                    self.read_what_is_left(&mut rx).await;
                }
                break e;
            }
            if let Flow::Stop(e) = self.burst(&mut rx) {
                break e;
            }
            let (woke, fed) = (
                std::mem::take(&mut self.woke),
                std::mem::take(&mut self.fed),
            );
            if (woke || fed) && !rx.has_frame() {
                // Let the woken caller (or stream reader) run now, before this task starts
                // waiting (and spinning) for the next frame: with a single caller that is
                // the whole round trip. Behind it in the run queue if the caller is a task
                // of this worker; if it did not run meanwhile (it waits in a `block_on`,
                // which the runtime polls only once its queue is empty, or runs elsewhere),
                // by the runtime's own yield, which lets the queue empty. A stream's reader
                // starts no call, so whether a requeue helped is told only for a unary
                // caller (`GiveWay`): frames for a stream's reader alone get the yield.
                let mut ran = false;
                if woke && single_worker && self.give_way.requeue() {
                    let started = self.peer.out.started();
                    requeue().await;
                    ran = self.peer.out.started() != started;
                    self.give_way.outcome(ran);
                }
                if !ran {
                    tokio::task::yield_now().await;
                }
            }
        };
        if end.code == Code::Protocol && !self.peer_said {
            // This end found the peer breaking the protocol: it is told why, so that its
            // calls fail with the reason, not a bare `PeerGone`. At once if it can go (on
            // shared memory, with room in the ring); else (TCP, or a full ring) waited for,
            // but not for long: a peer that does not read is not waited for.
            let why = end.encode();
            if !matches!(
                self.link.try_send(Dir::Conn, Kind::Error, 0, 0, &why),
                Ok(true)
            ) {
                let send = self.link.send(Dir::Conn, Kind::Error, 0, 0, &why);
                let _ = tokio::time::timeout(REASON_WAIT, send).await;
            }
        }
        self.finish(graceful, &end).await;
    }

    /// Handles the frames already in the ring, up to [`BURST`], without a pass through the
    /// read loop's other events for each: most of them are idle, and polling each of
    /// them costs more than a small frame's own work. A stream's items, or the answers
    /// to many pipelined calls, are handed on together, and their callers woken once the
    /// burst is done. Bounded, so that permits, heartbeats and the end signals are still
    /// looked at between bursts; and it stops where the loop would not read.
    fn burst(&mut self, rx: &mut FrameRx) -> Flow {
        for _ in 0..BURST {
            if !self.incoming.can_read() {
                break;
            }
            let flow = match rx.try_recv() {
                Ok(Some((h, payload))) => self.on_frame(h, payload),
                Ok(None) => break,
                Err(e) => self.on_recv_error(e),
            };
            if let Flow::Stop(_) = flow {
                return flow;
            }
        }
        Flow::Continue
    }

    /// After a send failed, hands on the frames the peer sent before its end. A peer that
    /// ended the connection after its last frames (a drain, once its calls were done)
    /// fails this end's next send (a stream's credit grant, say), while those frames (that
    /// stream's last items, its end) may still be unread: they must reach their calls.
    /// Reads until the peer's side ends, which it does at once after them when the peer
    /// closed; a peer that is still there (it stopped reading, or broke the ring) gets
    /// [`LEFT_WAIT`] and [`LEFT_MAX`] frames at most.
    async fn read_what_is_left(&mut self, rx: &mut FrameRx) {
        let left = async {
            for _ in 0..LEFT_MAX {
                match rx.recv().await {
                    Ok((h, payload)) => {
                        if let Flow::Stop(_) = self.on_frame(h, payload) {
                            return;
                        }
                    }
                    Err(_) => return,
                }
            }
        };
        let _ = tokio::time::timeout(LEFT_WAIT, left).await;
    }

    /// A receive failed: a message over the size limit fails its call only; anything else
    /// ends the connection.
    fn on_recv_error(&mut self, e: TransportError) -> Flow {
        match e {
            TransportError::TooLarge {
                call_id,
                method,
                to_callee,
                kind,
                ..
            } => {
                self.silence.heard();
                if kind == Kind::Notify && to_callee {
                    return self.inbox.on_too_large();
                }
                let e = RpcError::from(e);
                if to_callee {
                    self.incoming.on_too_large(method, call_id, e);
                } else {
                    return self.deliver(call_id, Event::Error(e));
                }
                Flow::Continue
            }
            e @ (TransportError::Protocol(_) | TransportError::Gone(_)) => Flow::Stop(e.into()),
        }
    }

    /// A whole message from the peer, routed by its direction.
    fn on_frame(&mut self, h: FrameHeader, payload: Vec<u8>) -> Flow {
        self.silence.heard();
        if !matches!(h.kind, Kind::Ping | Kind::Pong) {
            self.busy += 1;
        }
        self.link.info.received(payload.len());
        let to_callee = Dir::to_callee(h.flags);
        match (h.kind, to_callee) {
            // The peer calls this end.
            (Kind::Request, true) => {
                self.incoming.on_request(h, payload);
                Flow::Continue
            }
            (Kind::Cancel, true) => {
                self.incoming.on_cancel(h);
                Flow::Continue
            }
            (Kind::Credit, true) => {
                self.incoming.on_credit(h, &payload);
                Flow::Continue
            }
            (Kind::StreamItem, true) => self.queue_for_handler(h, Arrived::One(payload)),
            (Kind::StreamItems, true) => match checked_batch(h.call_id, &payload) {
                Ok(items) => {
                    let items = items.map(<[u8]>::to_vec).collect();
                    self.queue_for_handler(h, Arrived::Batch(items))
                }
                Err(flow) => flow,
            },
            // A notification from the peer; credit for this end's notifications.
            (Kind::Notify, true) => self.inbox.on_notify(h, payload),
            (Kind::NotifyCredit, false) => self.peer.out.on_notify_credit(&payload),
            (Kind::StreamEnd, true) => self.queue_for_handler(h, Arrived::End),
            // The peer grants credit for this end's stream to it.
            (Kind::Credit, false) => {
                self.peer.out.on_credit(h.call_id, &payload);
                Flow::Continue
            }
            // The peer ends the connection, and says why: this end broke the protocol. Its
            // words are cut short (they go to every open call) and its code is not taken:
            // such an end is a violation, whatever the peer says it is.
            (Kind::Error, false) if h.call_id == 0 => {
                self.peer_said = true;
                let why = RpcError::decode(&payload).message;
                // (`str::floor_char_boundary` does this from Rust 1.91; the MSRV is 1.85.)
                let mut cut = why.len().min(REASON_MAX);
                while !why.is_char_boundary(cut) {
                    cut -= 1;
                }
                Flow::Stop(RpcError::new(
                    Code::Protocol,
                    format!("the peer ended the connection: {}", &why[..cut]),
                ))
            }
            // The peer answers a call of this end.
            (Kind::Response | Kind::StreamItem | Kind::StreamEnd | Kind::Error, false) => {
                let ev = match h.kind {
                    Kind::Response => Event::Response(payload),
                    Kind::StreamItem => Event::Item(payload),
                    Kind::StreamEnd => Event::End,
                    _ => Event::Error(RpcError::decode(&payload)),
                };
                self.deliver(h.call_id, ev)
            }
            (Kind::StreamItems, false) => match checked_batch(h.call_id, &payload) {
                // Handed on whole: the stream's reader takes the items out one by one.
                Ok(_) => self.deliver(h.call_id, Event::Items(payload)),
                Err(flow) => flow,
            },
            // The connection itself.
            (Kind::Ping, false) => {
                // A failed send marks the link broken, which ends the loop.
                self.incoming
                    .st
                    .reply(Dir::Conn, Kind::Pong, 0, 0, Vec::new(), None);
                Flow::Continue
            }
            (Kind::Pong, false) => Flow::Continue,
            (Kind::Goodbye, false) => match self.role {
                Role::Server => Flow::Stop(RpcError::new(Code::PeerGone, "the client left")),
                Role::Client if payload.first() == Some(&GOODBYE_IDLE) => {
                    // The server closes the connection as idle: it read nothing after this,
                    // so unary calls still waiting go out again on a new connection.
                    self.peer.out.closed_idle();
                    Flow::Continue
                }
                Role::Client => {
                    // The server drains: calls in flight still get their answers, but new
                    // calls must go to a new connection.
                    self.peer.out.stop_new_calls();
                    Flow::Continue
                }
            },
            (kind, true) => violation(&format!("{kind:?} frame sent towards a callee")),
            (kind, false) => violation(&format!("{kind:?} frame sent towards a caller")),
        }
    }

    /// Hands a frame of the caller's stream to the handler of a call this end serves; a
    /// caller past its stream's credit ends the connection.
    fn queue_for_handler(&mut self, h: FrameHeader, arrived: Arrived) -> Flow {
        match self.incoming.on_item(h, arrived) {
            Ok(queued) => {
                self.fed |= queued;
                Flow::Continue
            }
            Err(e) => Flow::Stop(e),
        }
    }

    /// Hands an event to a call this end made; a callee past its stream's credit ends the
    /// connection.
    fn deliver(&mut self, call_id: u64, ev: Event) -> Flow {
        match self.peer.out.deliver(call_id, ev) {
            Ok(handed) => {
                self.woke |= handed == Handed::Answer;
                self.fed |= handed == Handed::Frames;
                Flow::Continue
            }
            Err(e) => Flow::Stop(e),
        }
    }

    /// A heartbeat period passed: sample the ring, ping a quiet peer, give up on a silent
    /// one.
    fn on_tick(&mut self) -> Flow {
        let silent = self.silence.tick();
        if self.link.obs.wants_occupancy() {
            // The ring probe reads the shared header: no need for the sender's lock.
            if let Some((to_peer, _)) = &self.link.info.rings {
                self.link.obs.occupancy(to_peer.state().queued);
            }
        }
        if silent >= 3 {
            // A silent peer (stopped, or hung): treat as gone.
            return Flow::Stop(RpcError::new(
                Code::PeerGone,
                "the peer stopped answering heartbeats",
            ));
        }
        if silent >= 1 {
            // A failed send marks the link broken, which ends the loop.
            self.incoming
                .st
                .reply(Dir::Conn, Kind::Ping, 0, 0, Vec::new(), None);
        }
        if let Some(limit) = self.host.idle_timeout {
            return self.check_idle(limit);
        }
        Flow::Continue
    }

    /// Ends the connection if it has been idle for `limit`: no call open either way, and
    /// nothing but heartbeats from the peer since the last check that found it busy. The
    /// peer is told with a `Goodbye` (a client then takes a new connection for its next
    /// call). Checked once per heartbeat period, so it ends within one period after.
    fn check_idle(&mut self, limit: std::time::Duration) -> Flow {
        let now = tokio::time::Instant::now();
        let quiet =
            self.busy == self.idle_since.0 && self.incoming.is_idle() && self.peer.out.is_idle();
        if !quiet {
            self.idle_since = (self.busy, now);
            return Flow::Continue;
        }
        if now.duration_since(self.idle_since.1) < limit {
            return Flow::Continue;
        }
        // Nothing is read after this: the client may send its unanswered calls again.
        self.incoming
            .st
            .reply(Dir::Conn, Kind::Goodbye, 0, 0, vec![GOODBYE_IDLE], None);
        Flow::Stop(RpcError::new(
            Code::PeerGone,
            format!("the connection was idle for {limit:?}"),
        ))
    }

    /// The connection ended (`end` says why): fail the calls this end started, then end
    /// the peer's (cancelled, unless a drain ran them all to their end), and let them wind
    /// down.
    async fn finish(self, graceful: bool, end: &RpcError) {
        // First the outgoing calls: a handler waiting for a callback's answer then ends
        // at once instead of holding the end up.
        self.peer.out.fail_all(end);
        self.incoming.finish(graceful).await;
        // Over for good (also after a drain): the notification task stops, even inside a
        // handler that never returns, and queued notifications are dropped.
        self.link.ended.cancel();
        self.host.obs.connection(-1.0, self.link.info.peer_pid);
        self.host.registry.remove(self.link.info.id);
    }
}

#[cfg(test)]
mod tests {
    use super::GiveWay;

    #[test]
    fn giving_way_requeues_while_it_helps_and_retries_after_a_miss() {
        let mut g = GiveWay::new();
        // Requeue while the woken caller runs behind it.
        for _ in 0..3 {
            assert!(g.requeue());
            g.outcome(true);
        }
        // A requeue that did not help: the runtime's yield for the next RETRY times...
        assert!(g.requeue());
        g.outcome(false);
        for _ in 0..GiveWay::RETRY {
            assert!(!g.requeue());
        }
        // ...then a requeue is tried again, and kept once it helps.
        assert!(g.requeue());
        g.outcome(true);
        assert!(g.requeue());
    }
}
