//! [`Peer`]: calling the other end of one connection, whichever end this is.

use std::sync::Arc;

use serde::{de::DeserializeOwned, Serialize};

use super::outgoing::{within, Outgoing};
use super::{BidiCall, CallOptions, CallStream, ClientStreamCall, ItemSender};
use crate::rpc::{decode, encode, Code, RpcError};

/// The other end of one connection, to call it: a server's handle on a connected client
/// ([`CallContext::peer`](super::CallContext::peer), [`ServerHandle::peers`]), or a
/// client handler's handle on its server. Same calling API as [`Client`], but bound to
/// one connection: no reconnecting. Cheap to clone.
///
/// Calls fail with [`Code::PeerGone`] once the connection has ended (and calls open when
/// it ends fail so at once).
///
/// [`Client`]: crate::Client
/// [`ServerHandle::peers`]: crate::ServerHandle::peers
///
/// # Examples
///
/// A server handler calls its caller back while answering it:
///
/// ```
/// use shmrpc::{CallOptions, Client, ClientConfig, Server};
///
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let name = format!("doc-peer-{}", std::process::id());
/// let server = Server::builder()
///     .unary("greet", |ctx, who: String| async move {
///         // Ask the caller how it wants to be greeted.
///         let peer = ctx.peer();
///         let title: String = peer.call("title", &who, CallOptions::default()).await?;
///         Ok(format!("hello, {title} {who}"))
///     })
///     .bind(&name)?;
/// let handle = server.handle();
/// let serving = tokio::spawn(server.serve());
///
/// let client = Client::builder()
///     .unary("title", |_ctx, _who: String| async move { Ok("dear".to_string()) })
///     .connect(&name)
///     .await?;
/// let greeting: String = client.call("greet", &"Ada".to_string(), CallOptions::default()).await?;
/// assert_eq!(greeting, "hello, dear Ada");
///
/// drop(client);
/// handle.shutdown();
/// serving.await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Peer {
    pub(crate) out: Arc<Outgoing>,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer")
            .field("conn_id", &self.conn_id())
            .field("pid", &self.pid())
            .finish()
    }
}

impl Peer {
    pub(crate) fn new(out: Arc<Outgoing>) -> Self {
        Self { out }
    }

    /// The connection's number at this end (a server numbers its connections in accept
    /// order, as in its inspection report).
    pub fn conn_id(&self) -> u64 {
        self.out.link.info.id
    }

    /// The other process's pid (shared-memory connections).
    pub fn pid(&self) -> Option<u32> {
        self.out.link.info.peer_pid
    }

    /// Whether the connection still takes new calls (false once it ended, or once the
    /// server said it drains).
    pub fn is_connected(&self) -> bool {
        self.out.is_alive()
    }

    fn gone() -> RpcError {
        RpcError::new(Code::PeerGone, "the connection has ended")
    }

    /// Calls a unary method with raw bytes.
    ///
    /// # Errors
    /// The peer's error, or `DeadlineExceeded`, `PeerGone`, `TooLarge`.
    pub async fn call_raw(
        &self,
        method: &str,
        body: &[u8],
        opts: CallOptions,
    ) -> Result<Vec<u8>, RpcError> {
        self.out.check_size(body)?;
        within(opts.timeout, || async move {
            self.out
                .call_raw(method, body, opts.timeout)
                .await?
                .ok_or_else(Self::gone)
        })
        .await
    }

    /// Calls a unary method with typed request and response.
    ///
    /// # Errors
    /// As [`call_raw`](Self::call_raw), or `BadRequest` for codec failures.
    pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        method: &str,
        req: &Req,
        opts: CallOptions,
    ) -> Result<Resp, RpcError> {
        decode(&self.call_raw(method, &encode(req)?, opts).await?)
    }

    /// Calls a server-streaming method with raw bytes (the peer's handler streams).
    /// Dropping the stream before its end cancels the call.
    ///
    /// # Errors
    /// As [`call_raw`](Self::call_raw) for starting the call.
    pub async fn call_stream_raw(
        &self,
        method: &str,
        body: &[u8],
        opts: CallOptions,
    ) -> Result<CallStream, RpcError> {
        self.out.check_size(body)?;
        within(opts.timeout, || async move {
            self.out
                .call_stream_raw(method, body, opts.timeout, None)
                .await?
                .ok_or_else(Self::gone)
        })
        .await
    }

    /// Calls a streaming method with a typed request.
    ///
    /// # Errors
    /// As [`call_stream_raw`](Self::call_stream_raw).
    pub async fn call_stream<Req: Serialize>(
        &self,
        method: &str,
        req: &Req,
        opts: CallOptions,
    ) -> Result<CallStream, RpcError> {
        self.call_stream_raw(method, &encode(req)?, opts).await
    }

    /// Calls a client-streaming method: send its items, then
    /// [`finish`](ClientStreamCall::finish) for the one response. Dropping the call before
    /// its response cancels it.
    ///
    /// # Errors
    /// As [`call_raw`](Self::call_raw) for starting the call.
    pub async fn call_client_stream(
        &self,
        method: &str,
        opts: CallOptions,
    ) -> Result<ClientStreamCall, RpcError> {
        Ok(ClientStreamCall::new(
            self.call_sending(method, opts).await?,
        ))
    }

    /// Calls a bidirectional method: items go both ways at once, through the call's
    /// sending and receiving halves. Dropping both halves before the end cancels the call.
    ///
    /// # Errors
    /// As [`call_raw`](Self::call_raw) for starting the call.
    pub async fn call_bidi(&self, method: &str, opts: CallOptions) -> Result<BidiCall, RpcError> {
        Ok(BidiCall::new(self.call_sending(method, opts).await?))
    }

    async fn call_sending(
        &self,
        method: &str,
        opts: CallOptions,
    ) -> Result<(ItemSender, CallStream), RpcError> {
        within(opts.timeout, || async move {
            self.out
                .call_sending(method, opts.timeout, None)
                .await?
                .ok_or_else(Self::gone)
        })
        .await
    }
}
