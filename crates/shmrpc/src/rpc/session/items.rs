//! Where a handler reads the items its caller streams to it (client-streaming and
//! bidirectional calls), paced by credit this end grants as the handler reads.
//!
//! The reader puts each frame's items in the call's queue ([`ItemQueue::push`]) without
//! waiting: the queue never holds more than the window's frames, because the caller may
//! send only as many frames (a plain item, or a batch of up to `BATCH_MAX_ITEMS`) as it
//! has credit for. It starts with [`STREAM_WINDOW`] and gets credit back in halves of the
//! window as the handler reads ([`ItemStream::next_raw`]: a frame counts once its last
//! item is read). A frame beyond the credit is the caller breaking flow control, which
//! ends the connection.

use std::collections::VecDeque;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};

use serde::de::DeserializeOwned;
use tokio::sync::Notify;

use super::context::CallToken;
use super::sink::STREAM_WINDOW;
use super::Link;
use crate::rpc::transport::Dir;
use crate::rpc::{decode, RpcError};

/// The items a caller sent and the handler has not read yet, shared by the reader (which
/// fills it) and the handler (which empties it).
#[derive(Debug)]
pub(super) struct ItemQueue {
    state: Mutex<QueueState>,
    /// Wakes the handler (the queue's only reader) when an item or the end arrives.
    arrived: Notify,
}

#[derive(Debug)]
struct QueueState {
    /// The items, each with whether it is the last of its frame (the frame's credit comes
    /// back once it is read).
    items: VecDeque<(Vec<u8>, bool)>,
    /// The caller sent `StreamEnd`.
    ended: bool,
    /// Frames the caller may still send: its credit as this end counts it.
    credit: usize,
}

/// What a frame brought for a call's item stream.
#[derive(Debug)]
pub(super) enum Arrived {
    /// One item (`StreamItem`).
    One(Vec<u8>),
    /// A batch's items (`StreamItems`, checked: at least one).
    Batch(Vec<Vec<u8>>),
    /// The end of the stream (`StreamEnd`).
    End,
}

/// Why the reader refused an item: the caller broke the protocol.
#[derive(Debug)]
pub(super) enum QueueError {
    /// More items than the credit granted.
    NoCredit,
    /// An item or a second end after the end.
    AfterEnd,
}

impl ItemQueue {
    pub(super) fn new() -> Self {
        Self {
            state: Mutex::new(QueueState {
                items: VecDeque::new(),
                ended: false,
                credit: STREAM_WINDOW,
            }),
            arrived: Notify::new(),
        }
    }

    /// A frame from the caller: its items, or its end. Never waits.
    ///
    /// # Errors
    /// The caller sent past its credit or after its end.
    pub(super) fn push(&self, arrived: Arrived) -> Result<(), QueueError> {
        let mut st = self.state.lock().expect("poisoned");
        if st.ended {
            return Err(QueueError::AfterEnd);
        }
        if !matches!(arrived, Arrived::End) {
            st.credit = st.credit.checked_sub(1).ok_or(QueueError::NoCredit)?;
        }
        match arrived {
            Arrived::One(item) => st.items.push_back((item, true)),
            Arrived::Batch(items) => {
                let last = items.len().saturating_sub(1);
                st.items
                    .extend(items.into_iter().enumerate().map(|(i, it)| (it, i == last)));
            }
            Arrived::End => st.ended = true,
        }
        drop(st);
        // A stored permit if the handler is not waiting yet: no wake-up is lost.
        self.arrived.notify_one();
        Ok(())
    }
}

/// The items the caller streams to a handler, in order: the input of a client-streaming
/// or bidirectional method ([`ServerBuilder::client_streaming_raw`],
/// [`ServerBuilder::bidi_raw`], and the same on [`ClientBuilder`]). Reading an item gives
/// the caller credit for more, so a handler that reads slowly holds back only its own
/// caller.
///
/// [`ServerBuilder::client_streaming_raw`]: crate::ServerBuilder::client_streaming_raw
/// [`ServerBuilder::bidi_raw`]: crate::ServerBuilder::bidi_raw
/// [`ClientBuilder`]: crate::ClientBuilder
pub struct ItemStream {
    pub(super) queue: Arc<ItemQueue>,
    pub(super) tx: Arc<Link>,
    pub(super) method: u32,
    pub(super) call_id: u64,
    pub(super) token: CallToken,
    /// Frames read (to their last item) since credit was last granted.
    pub(super) unacked: u32,
    /// `None` was returned: the stream is over.
    pub(super) done: bool,
}

impl std::fmt::Debug for ItemStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ItemStream")
            .field("call_id", &self.call_id)
            .finish()
    }
}

impl ItemStream {
    /// The next raw item; `None` once the caller finished its stream (and every item
    /// before its end was read). Cancel-safe: dropped before it returns, it took no item.
    ///
    /// # Errors
    /// `Cancelled` (or the reason the call ended, such as `DeadlineExceeded`) once the
    /// call was cancelled: by the caller, its deadline, or the end of the connection.
    /// Items still queued are not returned then.
    pub async fn next_raw(&mut self) -> Option<Result<Vec<u8>, RpcError>> {
        loop {
            if self.token.is_cancelled() {
                return Some(Err(self.token.reason()));
            }
            let item = {
                let mut st = self.queue.state.lock().expect("poisoned");
                match st.items.pop_front() {
                    Some((item, false)) => Some((item, None)),
                    Some((item, true)) => {
                        self.unacked += 1;
                        if self.unacked as usize >= STREAM_WINDOW / 2 {
                            // Counted before the credit goes out: the caller may send the
                            // next items as soon as it has read the grant.
                            let n = std::mem::take(&mut self.unacked);
                            st.credit += n as usize;
                            Some((item, Some(n)))
                        } else {
                            Some((item, None))
                        }
                    }
                    None if st.ended || self.done => {
                        self.done = true;
                        return None;
                    }
                    None => None,
                }
            };
            if let Some((item, grant)) = item {
                // Nothing awaited once the item is taken: dropping this future loses
                // neither the item nor the grant.
                if let Some(n) = grant {
                    self.tx.grant(Dir::ToCaller, self.method, self.call_id, n);
                }
                return Some(Ok(item));
            }
            tokio::select! {
                () = self.queue.arrived.notified() => {}
                () = self.token.cancelled() => {}
            }
        }
    }

    /// The next item decoded with the default codec.
    ///
    /// # Errors
    /// As [`next_raw`](Self::next_raw), or `BadRequest` for an undecodable item.
    pub async fn next<T: DeserializeOwned>(&mut self) -> Option<Result<T, RpcError>> {
        Some(self.next_raw().await?.and_then(|b| decode(&b)))
    }
}

/// The items a caller streams to the handler of a typed client-streaming or bidirectional
/// method ([`ClientStreaming`](crate::ClientStreaming), [`Bidi`](crate::Bidi)), decoded as
/// the method's item type.
pub struct Items<T> {
    pub(crate) inner: ItemStream,
    pub(crate) _item: PhantomData<fn() -> T>,
}

impl<T> std::fmt::Debug for Items<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.inner.fmt(f)
    }
}

impl<T: DeserializeOwned> Items<T> {
    /// Items decoded from a raw item stream.
    pub fn new(inner: ItemStream) -> Self {
        Self {
            inner,
            _item: PhantomData,
        }
    }

    /// The next item; `None` once the caller finished its stream.
    ///
    /// # Errors
    /// As [`ItemStream::next`].
    pub async fn next(&mut self) -> Option<Result<T, RpcError>> {
        self.inner.next::<T>().await
    }

    /// The raw stream underneath.
    pub fn into_untyped(self) -> ItemStream {
        self.inner
    }
}
