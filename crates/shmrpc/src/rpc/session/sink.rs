//! Where a streaming handler sends its items, paced by the caller's credit.

use std::sync::Arc;

use serde::Serialize;
use tokio::sync::{Semaphore, TryAcquireError};

use super::context::CallToken;
use super::Link;
use crate::frame::Kind;
use crate::rpc::transport::Dir;
use crate::rpc::{encode, Code, RpcError};

/// How many stream items a callee may send ahead of what the caller has read. The caller
/// returns credit as it reads (`Credit` frames), so a caller that stops reading holds back
/// only its own stream, not the connection.
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
            Err(TryAcquireError::Closed) => {
                return Err(RpcError::new(Code::Cancelled, "call over"));
            }
            // Wait for the caller's credit (it reads slowly, or not at all), or the cancel.
            Err(TryAcquireError::NoPermits) => tokio::select! {
                p = credit.acquire() => {
                    p.map_err(|_| RpcError::new(Code::Cancelled, "call over"))?.forget();
                }
                _ = self.token.cancelled() => {
                    return Err(RpcError::new(Code::Cancelled, "call cancelled"));
                }
            },
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
