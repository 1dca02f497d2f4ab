//! Notifications: one-way messages either end sends the other, answered by nothing.
//!
//! Bounded both ways by a per-connection credit of [`NOTIFY_WINDOW`] notifications. The
//! sender spends one per notification and waits (only the notifying task) while it has
//! none; the receiver returns credit (`NotifyCredit`) as its handlers finish, so a slow
//! handler holds back only the peer's notifications, never its calls. A peer that sends
//! beyond its credit broke the protocol: the connection ends.
//!
//! The receiver handles a connection's notifications in arrival order, one at a time, in
//! one task per connection, from a queue that never holds more than the credit it
//! granted. The reader never waits here: it queues (room is guaranteed by the credit) and
//! reads on.

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::{mpsc, Semaphore};

use super::methods::{BoxFuture, NotifyHandler};
use super::outgoing::Outgoing;
use super::reader::Flow;
use super::{Host, Link, Peer};
use crate::frame::{FrameHeader, Kind};
use crate::rpc::transport::Dir;
use crate::rpc::{method_id, Code, RpcError};

/// Notifications a sender may have sent and not yet had handled, per connection and
/// direction.
pub(crate) const NOTIFY_WINDOW: usize = 64;

/// The receiver returns credit once this many notifications were handled (or its queue
/// ran empty, so that a sender waiting for credit always gets it).
const NOTIFY_GRANT: u32 = (NOTIFY_WINDOW / 2) as u32;

/// What a notification handler knows: who sent it.
#[derive(Debug, Clone)]
pub struct NotifyContext {
    pub(super) peer: Peer,
}

impl NotifyContext {
    /// The sending process's pid (for shared-memory connections).
    pub fn peer_pid(&self) -> Option<u32> {
        self.peer.pid()
    }

    /// The sender, to call or notify it back on the same connection: see [`Peer`].
    pub fn peer(&self) -> &Peer {
        &self.peer
    }
}

/// The receiving side of one connection's notifications, owned by its reader.
pub(super) struct Inbox {
    host: Arc<Host>,
    link: Arc<Link>,
    peer: Peer,
    /// The credit the peer still has (the reader takes one per notification, the handling
    /// task gives them back just before granting them to the peer).
    credit: Arc<Semaphore>,
    /// The handling task's queue, started with the first notification.
    queue: Option<mpsc::Sender<(NotifyHandler, Vec<u8>)>>,
}

impl Inbox {
    pub(super) fn new(host: Arc<Host>, link: Arc<Link>, peer: Peer) -> Self {
        Self {
            host,
            link,
            peer,
            credit: Arc::new(Semaphore::new(NOTIFY_WINDOW)),
            queue: None,
        }
    }

    /// A notification from the peer: queued for its handler, or dropped (credit returned)
    /// if this end has none. Never waits.
    pub(super) fn on_notify(&mut self, h: FrameHeader, payload: Vec<u8>) -> Flow {
        match self.credit.try_acquire() {
            Ok(p) => p.forget(),
            Err(_) => {
                return Flow::Stop(RpcError::new(
                    Code::Protocol,
                    "the peer sent notifications beyond its credit",
                ))
            }
        }
        let Some(handler) = self.host.methods.notification(h.method) else {
            self.host.obs.rejected(Code::UnknownMethod);
            self.give_back(1);
            return Flow::Continue;
        };
        let queue = self.queue.get_or_insert_with(|| {
            // Room for the whole window: each queued entry holds one credit.
            let (tx, rx) = mpsc::channel(NOTIFY_WINDOW);
            let ctx = NotifyContext {
                peer: self.peer.clone(),
            };
            let (credit, link) = (self.credit.clone(), self.link.clone());
            tokio::spawn(handle(rx, ctx, credit, link, self.host.cancel_grace));
            tx
        });
        // Never full (see above); a closed queue means the connection is ending.
        let _ = queue.try_send((handler, payload));
        Flow::Continue
    }

    /// A notification too large to accept: dropped, its credit returned.
    pub(super) fn on_too_large(&mut self) -> Flow {
        match self.credit.try_acquire() {
            Ok(p) => p.forget(),
            Err(_) => {
                return Flow::Stop(RpcError::new(
                    Code::Protocol,
                    "the peer sent notifications beyond its credit",
                ))
            }
        }
        self.host.obs.rejected(Code::TooLarge);
        self.give_back(1);
        Flow::Continue
    }

    fn give_back(&self, n: u32) {
        give_back(&self.credit, &self.link, n);
    }
}

/// Returns `n` credits: first to this end's count, then to the peer (so this end never
/// counts the peer as having less credit than it has).
fn give_back(credit: &Semaphore, link: &Arc<Link>, n: u32) {
    credit.add_permits(n as usize);
    link.grant_kind(Kind::NotifyCredit, Dir::Conn, 0, 0, n);
}

/// The handling task of one connection: each notification in turn, credit returned as
/// they finish. When the connection ends (a drain, the peer leaving or dying), what it
/// delivered is still handled, in order (the sender counted it delivered), within one
/// `grace` period, as a cancelled call's handler gets: a handler that never returns holds
/// nothing for long beyond the connection. The task ends after the last notification,
/// once the reader dropped its queue (which never holds more than the window).
async fn handle(
    mut rx: mpsc::Receiver<(NotifyHandler, Vec<u8>)>,
    ctx: NotifyContext,
    credit: Arc<Semaphore>,
    link: Arc<Link>,
    grace: Duration,
) {
    let ended = link.ended.clone();
    let work = async {
        let mut done = 0u32;
        while let Some((handler, body)) = rx.recv().await {
            CatchPanic(handler(ctx.clone(), body)).await;
            done += 1;
            // Credit matters only while the peer may still send.
            if !link.ended.is_cancelled() && (done >= NOTIFY_GRANT || rx.is_empty()) {
                give_back(&credit, &link, std::mem::take(&mut done));
            }
        }
    };
    tokio::pin!(work);
    tokio::select! {
        biased;
        () = &mut work => return,
        () = ended.cancelled() => {}
    }
    let _ = tokio::time::timeout(grace, work).await;
}

/// A notification handler with its panics caught: a panic drops only that notification.
struct CatchPanic(BoxFuture<()>);

impl Future for CatchPanic {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        catch_unwind(AssertUnwindSafe(|| self.0.as_mut().poll(cx))).unwrap_or(Poll::Ready(()))
    }
}

impl Outgoing {
    /// Sends a notification once this end has credit for it (waits while it has none).
    pub(crate) async fn notify_raw(&self, name: &str, body: &[u8]) -> Result<(), RpcError> {
        if body.len() > self.max_message() {
            return Err(RpcError::new(
                Code::TooLarge,
                format!(
                    "notification of {} bytes exceeds the maximum message size {}",
                    body.len(),
                    self.max_message()
                ),
            ));
        }
        let gone = || RpcError::new(Code::PeerGone, "the connection has ended");
        let permit = tokio::select! {
            biased;
            p = self.notify_credit.acquire() => p.map_err(|_| gone())?,
            () = self.link.ended.cancelled() => return Err(gone()),
            () = self.link.broken.cancelled() => return Err(gone()),
        };
        // Spent: it comes back only with the peer's `NotifyCredit`.
        permit.forget();
        self.link
            .send(Dir::ToCallee, Kind::Notify, method_id(name), 0, body)
            .await
            .map_err(|_| gone())
    }

    /// The peer handled notifications of this end: send as many more. A grant beyond what
    /// this end sent breaks the protocol.
    pub(super) fn on_notify_credit(&self, payload: &[u8]) -> Flow {
        let n = payload
            .get(..4)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u32::from_le_bytes) as usize;
        // Takers only lower the count meanwhile: this check never refuses a valid grant.
        if self.notify_credit.available_permits() + n > NOTIFY_WINDOW {
            return Flow::Stop(RpcError::new(
                Code::Protocol,
                "the peer returned more notification credit than it was given",
            ));
        }
        self.notify_credit.add_permits(n);
        Flow::Continue
    }
}
