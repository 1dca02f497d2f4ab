//! What a handler knows about its call: its id, deadline, cancellation, and its caller.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use super::Peer;
use crate::rpc::{Code, RpcError};

/// A call's cancellation: set once (by the client's `Cancel`, its death, or the deadline)
/// and seen by the handler. One allocation per waiting call and a plain reference count
/// per clone (a `tokio_util` token takes a lock for each clone and drop).
#[derive(Clone, Default)]
pub(crate) struct CallToken(Arc<TokenState>);

#[derive(Default)]
struct TokenState {
    cancelled: AtomicBool,
    notify: tokio::sync::Notify,
    /// Why the call ends, if not a plain cancel (set before `cancelled`).
    reason: std::sync::OnceLock<RpcError>,
}

impl std::fmt::Debug for CallToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallToken")
            .field("cancelled", &self.is_cancelled())
            .finish()
    }
}

impl CallToken {
    pub(crate) fn cancel(&self) {
        // Release: pairs with the Acquire load in `is_cancelled`. Only the first canceller
        // notifies; the swap needs no Acquire, as nothing else is published by the flag.
        if !self.0.cancelled.swap(true, Ordering::Release) {
            self.0.notify.notify_waiters();
        }
    }

    /// Cancels the call for `why`, which its caller is told (instead of `Cancelled`) if
    /// nothing ended the call before.
    pub(crate) fn cancel_with(&self, why: RpcError) {
        if !self.is_cancelled() {
            let _ = self.0.reason.set(why);
            self.cancel();
        }
    }

    /// Why the call was cancelled: the reason given to [`cancel_with`](Self::cancel_with),
    /// else `Cancelled`.
    pub(crate) fn reason(&self) -> RpcError {
        self.0
            .reason
            .get()
            .cloned()
            .unwrap_or_else(|| RpcError::new(Code::Cancelled, "call cancelled"))
    }

    pub(crate) fn is_cancelled(&self) -> bool {
        // Acquire: pairs with the swap in `cancel`.
        self.0.cancelled.load(Ordering::Acquire)
    }

    pub(crate) async fn cancelled(&self) {
        loop {
            // A `Notified` receives `notify_waiters` from the moment it exists, so creating
            // it before looking at the flag loses no cancel.
            let notified = self.0.notify.notified();
            if self.is_cancelled() {
                return;
            }
            notified.await;
        }
    }
}

/// What a handler knows about its call.
///
/// # Examples
///
/// A handler that waits for its caller to give up, and reports that it noticed:
///
/// ```
/// use std::time::Duration;
/// use shmrpc::{CallOptions, Client, ClientConfig, Code, Server};
///
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let name = format!("doc-ctx-{}", std::process::id());
/// let (seen_tx, seen_rx) = tokio::sync::oneshot::channel();
/// let seen_tx = std::sync::Mutex::new(Some(seen_tx));
/// let server = Server::builder()
///     .unary_raw("slow", move |ctx, _body| {
///         let seen = seen_tx.lock().unwrap().take();
///         async move {
///             assert!(ctx.deadline().is_some()); // the caller set a timeout
///             ctx.cancelled().await; // completes when the deadline passes
///             if let Some(seen) = seen {
///                 let _ = seen.send(ctx.is_cancelled());
///             }
///             Ok(Vec::new())
///         }
///     })
///     .bind(&name)?;
/// let handle = server.handle();
/// let serving = tokio::spawn(server.serve());
///
/// let client = Client::connect(&name, ClientConfig::default()).await?;
/// let opts = CallOptions::timeout(Duration::from_millis(50));
/// let err = client.call_raw("slow", b"", opts).await.unwrap_err();
/// assert_eq!(err.code, Code::DeadlineExceeded);
/// // Watchdog: a handler that never learns of the cancel fails the example.
/// assert!(tokio::time::timeout(Duration::from_secs(10), seen_rx).await??);
///
/// drop(client);
/// handle.shutdown();
/// serving.await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct CallContext {
    pub(super) call_id: u64,
    pub(super) deadline: Option<Instant>,
    pub(super) token: CallToken,
    pub(super) peer: Peer,
}

impl CallContext {
    /// The call's id on its connection.
    pub fn call_id(&self) -> u64 {
        self.call_id
    }

    /// When the caller stops waiting, if it set a deadline.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Completes when the caller cancelled, died, or the deadline passed.
    pub async fn cancelled(&self) {
        self.token.cancelled().await;
    }

    /// Whether the call has been cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.token.is_cancelled()
    }

    /// The calling process's pid (for shared-memory connections).
    pub fn peer_pid(&self) -> Option<u32> {
        self.peer.pid()
    }

    /// The caller, to call it back (on the same connection) while answering it: see
    /// [`Peer`]. A callback to a caller that is gone fails with `PeerGone`.
    pub fn peer(&self) -> &Peer {
        &self.peer
    }
}

/// What an inline handler knows of its call: see
/// [`ServerBuilder::unary_inline_raw`](crate::ServerBuilder::unary_inline_raw). An inline
/// handler runs to its end on the connection's reader, so it has no cancellation to watch
/// and no task to call the peer back from.
#[derive(Debug, Clone)]
pub struct InlineContext {
    pub(super) call_id: u64,
    pub(super) deadline: Option<Instant>,
    pub(super) peer_pid: Option<u32>,
}

impl InlineContext {
    /// The call's id on its connection.
    pub fn call_id(&self) -> u64 {
        self.call_id
    }

    /// When the caller stops waiting, if it set a deadline.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// The calling process's pid (for shared-memory connections).
    pub fn peer_pid(&self) -> Option<u32> {
        self.peer_pid
    }
}
