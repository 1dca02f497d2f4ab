//! A client for code without an async runtime.

use std::time::Duration;

use serde::{de::DeserializeOwned, Serialize};

use super::{CallOptions, Client, ClientConfig};
use super::{ConnectError, RpcError};

/// A blocking RPC client. It runs the async client on a private one-thread runtime, so
/// heartbeats are answered between calls too.
///
/// # Examples
///
/// From plain threads, with no runtime of their own (the server `engine` runs elsewhere):
///
/// ```no_run
/// use std::sync::Arc;
/// use std::time::Duration;
/// use shmrpc::{BlockingClient, ClientConfig};
/// use shmrpc::{decode, encode};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let client = Arc::new(BlockingClient::connect("engine", ClientConfig::default())?);
/// let timeout = Some(Duration::from_secs(5));
///
/// let c = client.clone();
/// let worker = std::thread::spawn(move || c.call::<_, u64>("add", &(1u64, 2u64), timeout));
/// assert_eq!(worker.join().unwrap()?, 3);
///
/// // A streaming call, all items collected (raw bytes in and out).
/// let items = client.call_stream_collect("range", &encode(&3u32)?, timeout)?;
/// let numbers: Vec<u32> = items.iter().map(|b| decode(b)).collect::<Result<_, _>>()?;
/// assert_eq!(numbers, [0, 1, 2]);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct BlockingClient {
    rt: tokio::runtime::Runtime,
    client: Client,
}

impl BlockingClient {
    /// Connects to the shared-memory server `name`.
    ///
    /// # Errors
    /// [`ConnectError::Runtime`] if the runtime cannot start; otherwise as
    /// [`Client::connect`].
    pub fn connect(name: &str, cfg: ClientConfig) -> Result<Self, ConnectError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(ConnectError::Runtime)?;
        let client = rt.block_on(Client::connect(name, cfg))?;
        Ok(Self { rt, client })
    }

    /// A unary call with raw bytes.
    ///
    /// # Errors
    /// As [`Client::call_raw`].
    pub fn call_raw(
        &self,
        method: &str,
        body: &[u8],
        timeout: Option<Duration>,
    ) -> Result<Vec<u8>, RpcError> {
        self.rt
            .block_on(self.client.call_raw(method, body, CallOptions { timeout }))
    }

    /// A unary call with typed request and response.
    ///
    /// # Errors
    /// As [`Client::call`].
    pub fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        method: &str,
        req: &Req,
        timeout: Option<Duration>,
    ) -> Result<Resp, RpcError> {
        self.rt
            .block_on(self.client.call(method, req, CallOptions { timeout }))
    }

    /// A streaming call, collected: every item, in order.
    ///
    /// # Errors
    /// As [`Client::call_stream`], or the first error in the stream.
    pub fn call_stream_collect(
        &self,
        method: &str,
        body: &[u8],
        timeout: Option<Duration>,
    ) -> Result<Vec<Vec<u8>>, RpcError> {
        self.rt.block_on(async {
            let mut s = self
                .client
                .call_stream_raw(method, body, CallOptions { timeout })
                .await?;
            let mut items = Vec::new();
            while let Some(item) = s.next_raw().await {
                items.push(item?);
            }
            Ok(items)
        })
    }
}
