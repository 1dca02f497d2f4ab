//! Where a streaming handler sends its items, paced by the caller's credit.

use std::sync::Arc;

use serde::Serialize;
use tokio::sync::{Semaphore, TryAcquireError};

use super::batching::{send_batched, ItemOut, ItemWriter};
use super::context::CallToken;
use super::Link;
use crate::frame::Kind;
use crate::rpc::transport::Dir;
use crate::rpc::{encode, Code, RpcError};

/// How many frames of stream items (a plain item, or a batch of up to `BATCH_MAX_ITEMS`)
/// a callee may send ahead of what the caller has read. The caller returns credit as it
/// reads (`Credit` frames), so a caller that stops reading holds back only its own stream,
/// not the connection.
pub(crate) const STREAM_WINDOW: usize = 64;

/// Where a streaming handler sends its items.
#[derive(Clone)]
pub struct ItemSink {
    pub(super) tx: Arc<Link>,
    pub(super) method: u32,
    pub(super) call_id: u64,
    pub(super) max_message: usize,
    pub(super) token: CallToken,
    /// The caller's stream credit; `None` for a unary call, which has no stream.
    pub(super) credit: Option<Arc<Semaphore>>,
}

impl std::fmt::Debug for ItemSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ItemSink")
            .field("call_id", &self.call_id)
            .finish()
    }
}

impl ItemSink {
    /// Sends one raw item to the caller.
    ///
    /// # Errors
    /// `Cancelled` once the call is cancelled, `TooLarge`, or `PeerGone`.
    pub async fn send_raw(&self, item: &[u8]) -> Result<(), RpcError> {
        if self.token.is_cancelled() {
            return Err(RpcError::new(Code::Cancelled, "call cancelled"));
        }
        if item.len() > self.max_message {
            return Err(RpcError::new(
                Code::TooLarge,
                format!("item of {} bytes", item.len()),
            ));
        }
        let Some(credit) = &self.credit else {
            return Err(RpcError::new(Code::Protocol, "items sent for a unary call"));
        };
        match credit.try_acquire() {
            // The common case, a caller that keeps up: credit at hand, and an item that
            // goes into the ring at once needs no future at all (no wait on the credit,
            // the cancel or the sending half's lock).
            Ok(p) => {
                p.forget();
                match self.tx.try_send(
                    Dir::ToCaller,
                    Kind::StreamItem,
                    self.method,
                    self.call_id,
                    item,
                ) {
                    Ok(true) => return Ok(()),
                    Ok(false) => {} // it waits below, its credit taken
                    Err(e) => return Err(e.into()),
                }
            }
            // Wait for the caller's credit (it reads slowly, or not at all), or the cancel.
            Err(_) => self.take_credit().await?,
        }
        self.tx
            .send(
                Dir::ToCaller,
                Kind::StreamItem,
                self.method,
                self.call_id,
                item,
            )
            .await
            .map_err(RpcError::from)
    }

    /// Sends raw items to the caller, in order, several to a frame: the same items and
    /// errors as [`send_raw`](Self::send_raw) for each in turn, at a fraction of the cost
    /// per item when the items are small. A frame holds up to 16 KiB of items (and at most
    /// 512; an item too long to share a frame goes alone) and takes one unit of the
    /// caller's credit, as one item sent alone does; it goes as soon as it is full, so
    /// the caller reads one batch while the handler fills the next.
    ///
    /// Use it where items are ready together (a page of results, a burst of tokens, the
    /// lines of a file): the items are taken from `items` as the frames fill, so a lazy
    /// iterator is never collected whole. Items that come one at a time go out at once
    /// with [`send_raw`](Self::send_raw).
    ///
    /// # Errors
    /// As [`send_raw`](Self::send_raw). The items before the one that failed have been
    /// sent. Dropped before it returns, it sent the frames before the one it was filling;
    /// that frame's credit goes back to the stream.
    pub async fn send_all_raw<I>(&self, items: I) -> Result<(), RpcError>
    where
        I: IntoIterator,
        I::Item: AsRef<[u8]>,
    {
        send_batched(self, items, |item, out| {
            out.extend_from_slice(item.as_ref());
            Ok(())
        })
        .await
    }

    /// [`send_all_raw`](Self::send_all_raw) for items encoded with the default codec,
    /// each written straight into its batch.
    ///
    /// # Errors
    /// As [`send_all_raw`](Self::send_all_raw), or `BadRequest` for an item that cannot be
    /// encoded (the items before it have been sent).
    ///
    /// # Examples
    ///
    /// ```
    /// use shmrpc::{CallOptions, Client, ClientConfig, Server};
    ///
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let name = format!("doc-send-all-{}", std::process::id());
    /// let server = Server::builder()
    ///     .streaming("squares", |_ctx, n: u64, sink| async move {
    ///         // Items ready together go several to a frame.
    ///         sink.send_all((0..n).map(|i| i * i)).await
    ///     })
    ///     .bind(&name)?;
    /// let handle = server.handle();
    /// let serving = tokio::spawn(server.serve());
    ///
    /// let client = Client::connect(&name, ClientConfig::default()).await?;
    /// let mut stream = client.call_stream("squares", &1000u64, CallOptions::default()).await?;
    /// let mut got = Vec::new();
    /// while let Some(sq) = stream.next::<u64>().await {
    ///     got.push(sq?);
    /// }
    /// assert_eq!(got, (0..1000u64).map(|i| i * i).collect::<Vec<_>>());
    ///
    /// drop((stream, client));
    /// handle.shutdown();
    /// serving.await?;
    /// # Ok(()) }
    /// ```
    pub async fn send_all<I>(&self, items: I) -> Result<(), RpcError>
    where
        I: IntoIterator,
        I::Item: Serialize,
    {
        send_batched(self, items, |item, out| out.encode(&item)).await
    }

    /// [`send_all_raw`](Self::send_all_raw) with each item written in place: `write`
    /// appends the bytes of an item of `items` to its frame, so no item is built in a
    /// buffer of its own first. An error from `write` ends the sending there: the items
    /// before it go, that item does not, and the error is returned.
    ///
    /// # Errors
    /// As [`send_all_raw`](Self::send_all_raw), or the error `write` returned.
    ///
    /// # Examples
    ///
    /// ```
    /// use shmrpc::{CallOptions, Client, ClientConfig, Server};
    ///
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let name = format!("doc-send-all-with-{}", std::process::id());
    /// let server = Server::builder()
    ///     .streaming_raw("counters", |_ctx, _req, sink| async move {
    ///         // Each item is 8 bytes, written straight into its frame.
    ///         sink.send_all_with(0..1000u64, |i, item| {
    ///             item.append_zeroed(8).copy_from_slice(&i.to_le_bytes());
    ///             Ok(())
    ///         })
    ///         .await
    ///     })
    ///     .bind(&name)?;
    /// let handle = server.handle();
    /// let serving = tokio::spawn(server.serve());
    ///
    /// let client = Client::connect(&name, ClientConfig::default()).await?;
    /// let mut stream = client.call_stream_raw("counters", &[], CallOptions::default()).await?;
    /// let mut next = 0u64;
    /// // The items that came together, lent in place.
    /// while let Some(items) = stream.next_items().await {
    ///     for item in items? {
    ///         assert_eq!(item, next.to_le_bytes());
    ///         next += 1;
    ///     }
    /// }
    /// assert_eq!(next, 1000);
    ///
    /// drop((stream, client));
    /// handle.shutdown();
    /// serving.await?;
    /// # Ok(()) }
    /// ```
    pub async fn send_all_with<I, W>(&self, items: I, write: W) -> Result<(), RpcError>
    where
        I: IntoIterator,
        W: FnMut(I::Item, &mut ItemWriter<'_>) -> Result<(), RpcError>,
    {
        send_batched(self, items, write).await
    }

    /// Sends one item encoded with the default codec.
    ///
    /// # Errors
    /// As [`send_raw`](Self::send_raw), or `BadRequest` if it cannot be encoded.
    ///
    /// # Examples
    ///
    /// ```
    /// use shmrpc::{CallOptions, Client, ClientConfig, Server};
    ///
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let name = format!("doc-sink-{}", std::process::id());
    /// let server = Server::builder()
    ///     .streaming("words", |_ctx, text: String, sink| async move {
    ///         for word in text.split_whitespace() {
    ///             sink.send(&word.to_uppercase()).await?; // waits for the caller's credit
    ///         }
    ///         Ok(())
    ///     })
    ///     .bind(&name)?;
    /// let handle = server.handle();
    /// let serving = tokio::spawn(server.serve());
    ///
    /// let client = Client::connect(&name, ClientConfig::default()).await?;
    /// let mut stream = client
    ///     .call_stream("words", &"to be or".to_string(), CallOptions::default())
    ///     .await?;
    /// let mut words = Vec::new();
    /// while let Some(w) = stream.next::<String>().await {
    ///     words.push(w?);
    /// }
    /// assert_eq!(words, ["TO", "BE", "OR"]);
    ///
    /// drop((stream, client));
    /// handle.shutdown();
    /// serving.await?;
    /// # Ok(()) }
    /// ```
    pub async fn send<T: Serialize>(&self, item: &T) -> Result<(), RpcError> {
        self.send_raw(&encode(item)?).await
    }
}

impl ItemOut for ItemSink {
    fn link(&self) -> &Arc<Link> {
        &self.tx
    }

    fn max_message(&self) -> usize {
        self.max_message
    }

    fn check_open(&self) -> Result<(), RpcError> {
        match (&self.credit, self.token.is_cancelled()) {
            (None, _) => Err(RpcError::new(Code::Protocol, "items sent for a unary call")),
            (_, true) => Err(RpcError::new(Code::Cancelled, "call cancelled")),
            _ => Ok(()),
        }
    }

    async fn take_credit(&self) -> Result<(), RpcError> {
        let Some(credit) = &self.credit else {
            return Err(RpcError::new(Code::Protocol, "items sent for a unary call"));
        };
        match credit.try_acquire() {
            Ok(p) => {
                p.forget();
                Ok(())
            }
            Err(TryAcquireError::Closed) => Err(RpcError::new(Code::Cancelled, "call over")),
            Err(TryAcquireError::NoPermits) => tokio::select! {
                p = credit.acquire() => {
                    p.map_err(|_| RpcError::new(Code::Cancelled, "call over"))?.forget();
                    Ok(())
                }
                () = self.token.cancelled() => {
                    Err(RpcError::new(Code::Cancelled, "call cancelled"))
                }
            },
        }
    }

    fn give_back(&self) {
        if let Some(credit) = &self.credit {
            credit.add_permits(1);
        }
    }

    fn route(&self) -> (Dir, u32, u64) {
        (Dir::ToCaller, self.method, self.call_id)
    }
}
