//! A client for code without an async runtime.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use serde::{de::DeserializeOwned, Serialize};
use tokio::runtime::{EnterGuard, Runtime};

use super::{decode, encode, CallStream, ClientStreamCall, ItemBatch, ItemSender};
use super::{CallOptions, Client, ClientConfig};
use super::{ConnectError, RpcError};

/// A blocking RPC client. It runs the async client on a private one-thread runtime,
/// driven by the calling thread during a call (so the answer is read on that thread, with
/// no thread wake-up), and by a background thread between calls (so heartbeats and the
/// server's calls are answered then too).
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
    /// Shared with the handles of open calls, which run their steps on it too.
    rt: Arc<Exec>,
    client: Client,
}

impl BlockingClient {
    /// Connects to the shared-memory server `name`.
    ///
    /// # Errors
    /// [`ConnectError::Runtime`] if the runtime cannot start; otherwise as
    /// [`Client::connect`].
    pub fn connect(name: &str, cfg: ClientConfig) -> Result<Self, ConnectError> {
        Self::start(Client::connect(name, cfg))
    }

    /// Connects to a server over TCP (TLS, token and compression as `cfg.tcp` says).
    ///
    /// # Errors
    /// [`ConnectError::Runtime`] if the runtime cannot start; otherwise as
    /// [`Client::connect_tcp`].
    pub fn connect_tcp(
        addr: std::net::SocketAddr,
        cfg: ClientConfig,
    ) -> Result<Self, ConnectError> {
        Self::start(Client::connect_tcp(addr, cfg))
    }

    /// Runs `connect` on the client's own runtime.
    fn start(
        connect: impl std::future::Future<Output = Result<Client, ConnectError>>,
    ) -> Result<Self, ConnectError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(ConnectError::Runtime)?;
        let client = rt.block_on(connect)?;
        Ok(Self {
            rt: Arc::new(Exec::start(rt).map_err(ConnectError::Runtime)?),
            client,
        })
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

    /// A unary call with raw bytes, its answer put in `out` without a copy or, once warm,
    /// an allocation: see [`Client::call_raw_into`].
    ///
    /// # Errors
    /// As [`Client::call_raw`]; `out` is left as it was.
    pub fn call_raw_into(
        &self,
        method: &str,
        body: &[u8],
        out: &mut Vec<u8>,
        timeout: Option<Duration>,
    ) -> Result<(), RpcError> {
        self.rt.block_on(
            self.client
                .call_raw_into(method, body, out, CallOptions { timeout }),
        )
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

    /// Sends the notification `name` with raw bytes to the server: a one-way message,
    /// answered by nothing, handled by the server's [`on_notify`](super::ServerBuilder::on_notify)
    /// handlers in the order this client sent them. As [`Client::notify_raw`]: it blocks
    /// only while this end has no notification credit (the server's handlers are a window
    /// of 64 behind on this connection), and never resends on another connection.
    ///
    /// # Errors
    /// As [`Client::notify_raw`]: `TooLarge` (nothing sent); `PeerGone` if the
    /// connection ends, also while this call waits for credit; `Unavailable` if no
    /// connection can be dialled (the server is gone).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # fn f(client: shmrpc::BlockingClient) -> Result<(), shmrpc::RpcError> {
    /// client.notify_raw("log", b"started")?;
    /// # Ok(()) }
    /// ```
    pub fn notify_raw(&self, name: &str, body: &[u8]) -> Result<(), RpcError> {
        self.rt.block_on(self.client.notify_raw(name, body))
    }

    /// Sends a typed notification (default codec): see [`notify_raw`](Self::notify_raw).
    ///
    /// # Errors
    /// As [`notify_raw`](Self::notify_raw), or `BadRequest` if `body` does not encode.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # fn f(client: shmrpc::BlockingClient) -> Result<(), shmrpc::RpcError> {
    /// for line in 0..100u64 {
    ///     client.notify("progress", &line)?; // blocks only while the server is 64 behind
    /// }
    /// # Ok(()) }
    /// ```
    pub fn notify<T: Serialize>(&self, name: &str, body: &T) -> Result<(), RpcError> {
        self.notify_raw(name, &encode(body)?)
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
    /// A streaming call whose items are read one at a time as they come, from this thread
    /// or another: the returned [`BlockingCallStream`] is an [`Iterator`] of raw items.
    /// Dropping it before the end cancels the call on the server.
    ///
    /// # Errors
    /// As [`Client::call_stream_raw`] for starting the call.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # fn f(client: shmrpc::BlockingClient) -> Result<(), shmrpc::RpcError> {
    /// let stream = client.call_stream_raw("range", &shmrpc::encode(&3u32)?, None)?;
    /// for item in stream {
    ///     let n: u32 = shmrpc::decode(&item?)?;
    ///     println!("{n}");
    /// }
    /// # Ok(()) }
    /// ```
    pub fn call_stream_raw(
        &self,
        method: &str,
        body: &[u8],
        timeout: Option<Duration>,
    ) -> Result<BlockingCallStream, RpcError> {
        let stream = self.rt.block_on(self.client.call_stream_raw(
            method,
            body,
            CallOptions { timeout },
        ))?;
        Ok(BlockingCallStream::new(self.rt.clone(), stream))
    }

    /// Calls a client-streaming method: send items with
    /// [`BlockingClientStream::send`], then [`finish`](BlockingClientStream::finish) for
    /// the one response. Dropping the handle before the response cancels the call on the
    /// server. The deadline covers the whole call.
    ///
    /// # Errors
    /// As [`Client::call_client_stream`] for starting the call.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # fn f(client: shmrpc::BlockingClient) -> Result<(), shmrpc::RpcError> {
    /// let mut call = client.call_client_stream("sum", None)?;
    /// for n in 1..=10u64 {
    ///     call.send(&n)?; // blocks only while the server is a window behind
    /// }
    /// let total: u64 = call.finish()?;
    /// assert_eq!(total, 55);
    /// # Ok(()) }
    /// ```
    pub fn call_client_stream(
        &self,
        method: &str,
        timeout: Option<Duration>,
    ) -> Result<BlockingClientStream, RpcError> {
        let call = self.rt.block_on(
            self.client
                .call_client_stream(method, CallOptions { timeout }),
        )?;
        Ok(BlockingClientStream {
            rt: self.rt.clone(),
            call: Some(call),
        })
    }

    /// Calls a bidirectional method: items go both ways at once, through the sending half
    /// ([`BlockingItemSender`]) and the receiving half ([`BlockingCallStream`]), which can
    /// be used from two threads. Dropping both halves before the end cancels the call on
    /// the server; dropping only the sender ends its stream. The deadline covers the whole
    /// call.
    ///
    /// # Errors
    /// As [`Client::call_bidi`] for starting the call.
    ///
    /// # Examples
    ///
    /// An echo: one thread sends, this one reads the answers.
    ///
    /// ```no_run
    /// # fn f(client: shmrpc::BlockingClient) -> Result<(), shmrpc::RpcError> {
    /// let (mut sender, receiver) = client.call_bidi("echo", None)?;
    /// let writer = std::thread::spawn(move || -> Result<(), shmrpc::RpcError> {
    ///     for n in 0..100u32 {
    ///         sender.send(&n)?;
    ///     }
    ///     sender.finish()
    /// });
    /// let mut got = Vec::new();
    /// for item in receiver {
    ///     got.push(shmrpc::decode::<u32>(&item?)?);
    /// }
    /// writer.join().expect("writer panicked")?;
    /// assert_eq!(got, (0..100).collect::<Vec<_>>());
    /// # Ok(()) }
    /// ```
    pub fn call_bidi(
        &self,
        method: &str,
        timeout: Option<Duration>,
    ) -> Result<(BlockingItemSender, BlockingCallStream), RpcError> {
        let (sender, receiver) = self
            .rt
            .block_on(self.client.call_bidi(method, CallOptions { timeout }))?
            .split();
        Ok((
            BlockingItemSender {
                rt: self.rt.clone(),
                sender: Some(sender),
            },
            BlockingCallStream::new(self.rt.clone(), receiver),
        ))
    }
}

/// The handles' drops run inside the runtime: a call dropped unfinished sends its
/// `Cancel` (or its stream's end) from a task spawned there.
fn drop_within<T>(rt: &Exec, value: &mut Option<T>) {
    let _entered = rt.enter();
    drop(value.take());
}

/// A blocking client-streaming call (from [`BlockingClient::call_client_stream`]).
/// Dropping it before [`finish`](Self::finish) cancels the call on the server.
#[derive(Debug)]
pub struct BlockingClientStream {
    rt: Arc<Exec>,
    /// `None` only while dropping or finishing.
    call: Option<ClientStreamCall>,
}

impl BlockingClientStream {
    fn call(&mut self) -> &mut ClientStreamCall {
        self.call
            .as_mut()
            .expect("a client stream is open until finished")
    }

    /// Sends one raw item, blocking while the server has no room for it.
    ///
    /// # Errors
    /// As [`ClientStreamCall::send_raw`]: after an error that ended the call,
    /// [`finish_raw`](Self::finish_raw) gives the server's outcome.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # fn f(client: shmrpc::BlockingClient) -> Result<(), shmrpc::RpcError> {
    /// let mut call = client.call_client_stream("store", None)?;
    /// call.send_raw(b"chunk")?;
    /// let _receipt = call.finish_raw()?;
    /// # Ok(()) }
    /// ```
    pub fn send_raw(&mut self, item: &[u8]) -> Result<(), RpcError> {
        let rt = self.rt.clone();
        rt.block_on(self.call().send_raw(item))
    }

    /// Sends one item encoded with the default codec.
    ///
    /// # Errors
    /// As [`send_raw`](Self::send_raw), or `BadRequest` if it cannot be encoded.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # fn f(client: shmrpc::BlockingClient) -> Result<(), shmrpc::RpcError> {
    /// let mut call = client.call_client_stream("sum", None)?;
    /// call.send(&7u64)?;
    /// assert_eq!(call.finish::<u64>()?, 7);
    /// # Ok(()) }
    /// ```
    pub fn send<T: Serialize>(&mut self, item: &T) -> Result<(), RpcError> {
        self.send_raw(&encode(item)?)
    }

    /// Ends the stream and blocks for the server's raw response.
    ///
    /// # Errors
    /// As [`ClientStreamCall::finish_raw`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # fn f(client: shmrpc::BlockingClient) -> Result<(), shmrpc::RpcError> {
    /// let call = client.call_client_stream("store", None)?;
    /// let receipt: Vec<u8> = call.finish_raw()?; // no items at all
    /// # Ok(()) }
    /// ```
    pub fn finish_raw(mut self) -> Result<Vec<u8>, RpcError> {
        let call = self.call.take().expect("a client stream is finished once");
        // The call is dropped inside `block_on` (at the end of `finish_raw`), so a
        // deadline that ends it still sends its `Cancel`.
        self.rt.block_on(call.finish_raw())
    }

    /// Ends the stream and blocks for the server's response, decoded with the default
    /// codec.
    ///
    /// # Errors
    /// As [`finish_raw`](Self::finish_raw), or `BadRequest` for an undecodable response.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # fn f(client: shmrpc::BlockingClient) -> Result<(), shmrpc::RpcError> {
    /// let mut call = client.call_client_stream("sum", None)?;
    /// call.send(&1u64)?;
    /// call.send(&2u64)?;
    /// assert_eq!(call.finish::<u64>()?, 3);
    /// # Ok(()) }
    /// ```
    pub fn finish<T: DeserializeOwned>(self) -> Result<T, RpcError> {
        decode(&self.finish_raw()?)
    }

    /// Cancels the call now (same as dropping it).
    pub fn cancel(self) {}
}

impl Drop for BlockingClientStream {
    fn drop(&mut self) {
        drop_within(&self.rt, &mut self.call);
    }
}

/// The sending half of a blocking bidirectional call (from
/// [`BlockingClient::call_bidi`]). Dropping it unfinished ends its stream, as
/// [`finish`](Self::finish).
#[derive(Debug)]
pub struct BlockingItemSender {
    rt: Arc<Exec>,
    /// `None` only while dropping.
    sender: Option<ItemSender>,
}

impl BlockingItemSender {
    fn sender(&mut self) -> &mut ItemSender {
        self.sender
            .as_mut()
            .expect("a sender is open until dropped")
    }

    /// Sends one raw item, blocking while the server has no room for it.
    ///
    /// # Errors
    /// As [`ItemSender::send_raw`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # fn f(client: shmrpc::BlockingClient) -> Result<(), shmrpc::RpcError> {
    /// let (mut sender, _receiver) = client.call_bidi("echo", None)?;
    /// sender.send_raw(b"ping")?;
    /// # Ok(()) }
    /// ```
    pub fn send_raw(&mut self, item: &[u8]) -> Result<(), RpcError> {
        let rt = self.rt.clone();
        rt.block_on(self.sender().send_raw(item))
    }

    /// Sends one item encoded with the default codec.
    ///
    /// # Errors
    /// As [`send_raw`](Self::send_raw), or `BadRequest` if it cannot be encoded.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # fn f(client: shmrpc::BlockingClient) -> Result<(), shmrpc::RpcError> {
    /// let (mut sender, _receiver) = client.call_bidi("echo", None)?;
    /// sender.send(&42u32)?;
    /// # Ok(()) }
    /// ```
    pub fn send<T: Serialize>(&mut self, item: &T) -> Result<(), RpcError> {
        self.send_raw(&encode(item)?)
    }

    /// Ends the stream: the server reads the end after the last item; its items still
    /// come through the receiving half.
    ///
    /// # Errors
    /// As [`ItemSender::finish`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # fn f(client: shmrpc::BlockingClient) -> Result<(), shmrpc::RpcError> {
    /// let (mut sender, receiver) = client.call_bidi("echo", None)?;
    /// sender.send(&1u32)?;
    /// sender.finish()?;
    /// assert_eq!(receiver.count(), 1);
    /// # Ok(()) }
    /// ```
    pub fn finish(&mut self) -> Result<(), RpcError> {
        let rt = self.rt.clone();
        rt.block_on(self.sender().finish())
    }
}

impl Drop for BlockingItemSender {
    fn drop(&mut self) {
        drop_within(&self.rt, &mut self.sender);
    }
}

/// The items of a blocking streaming call, read as they come: an [`Iterator`] of raw
/// items that ends at the end of the stream (after an error, if one came). Dropping it
/// before the end cancels the call (for a bidirectional call: once the sender is dropped
/// too).
#[derive(Debug)]
pub struct BlockingCallStream {
    rt: Arc<Exec>,
    /// `None` only while dropping.
    stream: Option<CallStream>,
}

impl BlockingCallStream {
    fn new(rt: Arc<Exec>, stream: CallStream) -> Self {
        Self {
            rt,
            stream: Some(stream),
        }
    }

    /// Blocks for the next raw item; `None` at the end of the stream.
    ///
    /// # Errors
    /// As [`CallStream::next_raw`]: the server's error, `DeadlineExceeded` or `PeerGone`;
    /// the stream is over after one.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # fn f(client: shmrpc::BlockingClient) -> Result<(), shmrpc::RpcError> {
    /// let mut stream = client.call_stream_raw("range", &shmrpc::encode(&3u32)?, None)?;
    /// while let Some(item) = stream.next_raw() {
    ///     println!("{} bytes", item?.len());
    /// }
    /// # Ok(()) }
    /// ```
    pub fn next_raw(&mut self) -> Option<Result<Vec<u8>, RpcError>> {
        let stream = self.stream.as_mut()?;
        self.rt.block_on(stream.next_raw())
    }

    /// Blocks for the items that arrived together, lent in place; `None` at the end of
    /// the stream.
    ///
    /// # Errors
    /// As [`CallStream::next_items`].
    pub fn next_items(&mut self) -> Option<Result<ItemBatch<'_>, RpcError>> {
        let stream = self.stream.as_mut()?;
        self.rt.block_on(stream.next_items())
    }

    /// Blocks for the next item decoded with the default codec.
    ///
    /// # Errors
    /// As [`next_raw`](Self::next_raw), or `BadRequest` for an undecodable item.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # fn f(client: shmrpc::BlockingClient) -> Result<(), shmrpc::RpcError> {
    /// let mut stream = client.call_stream_raw("range", &shmrpc::encode(&3u32)?, None)?;
    /// while let Some(n) = stream.next_item::<u32>().transpose()? {
    ///     println!("{n}");
    /// }
    /// # Ok(()) }
    /// ```
    pub fn next_item<T: DeserializeOwned>(&mut self) -> Option<Result<T, RpcError>> {
        Some(self.next_raw()?.and_then(|b| decode(&b)))
    }

    /// Cancels the call now (same as dropping the stream).
    pub fn cancel(self) {}
}

impl Iterator for BlockingCallStream {
    type Item = Result<Vec<u8>, RpcError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_raw()
    }
}

impl Drop for BlockingCallStream {
    fn drop(&mut self) {
        drop_within(&self.rt, &mut self.stream);
    }
}

/// The client's runtime (one thread's), and who drives it: the thread of a call while a
/// call runs, else a background thread, so that heartbeats and the peer's calls are
/// answered between calls too.
///
/// A caller that drives the runtime itself reads its answer on its own thread: the
/// connection's reader runs there and wakes the call without a thread wake-up. On a
/// runtime with a worker thread of its own the answer came through a futex wake-up of the
/// caller, which was most of a call: 6.0 µs for a 64 B call where the async client took
/// 2.0 µs (`examples/blocking_latency.rs`), and 2.7 µs this way. (Spinning the caller for
/// that wake-up instead was far worse on two cores: three spinning threads for two cores,
/// 87 µs.)
#[derive(Debug)]
struct Exec {
    rt: Arc<Runtime>,
    idle: Arc<Idle>,
    driver: Option<std::thread::JoinHandle<()>>,
}

/// What the driver thread and the callers agree on.
#[derive(Debug, Default)]
struct Idle {
    /// Calls running (each drives the runtime, or waits for the one that does), and how
    /// many ever began.
    callers: Mutex<Callers>,
    /// Signalled when the client is dropped. Not when a call returns: the driver looks
    /// again every [`QUIET`] instead. Woken at the end of every call, it was a futex
    /// wake-up and a thread switched in per call, which on a busy machine now and then
    /// ran in the caller's place (p99 ≈ 30 µs against a p50 of 2.5 µs).
    stop_signal: Condvar,
    /// A call wants the runtime: the driver lets go of it.
    wanted: tokio::sync::Notify,
    /// The client is gone: the driver ends.
    stop: AtomicBool,
}

impl Exec {
    /// Starts the driver thread of `rt`.
    fn start(rt: Runtime) -> std::io::Result<Self> {
        let rt = Arc::new(rt);
        let idle = Arc::new(Idle::default());
        let driver = {
            let (rt, idle) = (rt.clone(), idle.clone());
            std::thread::Builder::new()
                .name("shmrpc-blocking".into())
                .spawn(move || idle.drive(&rt))?
        };
        Ok(Self {
            rt,
            idle,
            driver: Some(driver),
        })
    }

    /// Runs `fut` to its end, driving the runtime on this thread (or, while another call
    /// drives it, waiting for its own wake-up).
    fn block_on<F: Future>(&self, fut: F) -> F::Output {
        let _call = Call::begin(&self.idle);
        self.rt.block_on(fut)
    }

    fn enter(&self) -> EnterGuard<'_> {
        self.rt.enter()
    }
}

impl Drop for Exec {
    fn drop(&mut self) {
        // Relaxed: the driver reads it under the `callers` lock, or after `wanted`, which
        // order it.
        self.idle.stop.store(true, Ordering::Relaxed);
        {
            let _callers = self.idle.lock();
            self.idle.stop_signal.notify_all();
        }
        self.idle.wanted.notify_one();
        if let Some(driver) = self.driver.take() {
            let _ = driver.join();
        }
    }
}

/// [`Idle::callers`].
#[derive(Debug, Default)]
struct Callers {
    running: usize,
    began: u64,
}

/// How long no call must run or begin before the driver takes the runtime back. It looks
/// this often, and the first time it finds quiet the last call's request to let go of
/// the runtime (`wanted`) is still pending and sends it round once more: it takes the
/// runtime back two to three of these after the last call. Calls
/// that follow each other closely then never wait for the driver to let go of it (a thread
/// wake-up each way); heartbeats, a second apart, do not notice the delay.
const QUIET: Duration = Duration::from_millis(2);

impl Idle {
    fn lock(&self) -> std::sync::MutexGuard<'_, Callers> {
        self.callers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The driver thread: drives the runtime whenever no call has run for [`QUIET`]
    /// (it looks every `QUIET`; see there how long after the last call).
    fn drive(&self, rt: &Runtime) {
        loop {
            {
                let mut callers = self.lock();
                loop {
                    if self.stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let began = callers.began;
                    callers = self
                        .stop_signal
                        .wait_timeout(callers, QUIET)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                    if callers.running == 0 && callers.began == began {
                        break; // quiet: none runs, and none began meanwhile
                    }
                }
            }
            if self.stop.load(Ordering::Relaxed) {
                return;
            }
            // Until a call wants the runtime (a call that began since the driver last held
            // it left a permit: this returns at once, and the loop looks again).
            rt.block_on(self.wanted.notified());
        }
    }
}

/// One call in [`Exec::block_on`]: counted while it runs, also if it panics.
struct Call<'a>(&'a Idle);

impl<'a> Call<'a> {
    fn begin(idle: &'a Idle) -> Self {
        {
            let mut callers = idle.lock();
            callers.running += 1;
            callers.began += 1;
        }
        idle.wanted.notify_one();
        Call(idle)
    }
}

impl Drop for Call<'_> {
    fn drop(&mut self) {
        self.0.lock().running -= 1;
    }
}
