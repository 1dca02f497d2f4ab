//! The RPC systems: a server in the child, clients in the lead.
//!
//! - **shmrpc**: `Server::builder().unary_raw("echo")/.streaming_raw("items")` (its items
//!   made on the stack and appended straight to their frame with `send_all_with`, several
//!   to a frame, as tonic's come from one
//!   `stream::iter`), `bind(name)`; `Client::connect(name, ClientConfig::default())`,
//!   `call_raw`, `call_stream_raw` (its items read in place with `next_items`). One `Client` per connection, cloned into every caller task.
//! - **shmrpc-blocking**: the same server; `BlockingClient::call_raw` from the lead's main
//!   thread (unary cases only: it is a blocking client, its own runtime inside).
//! - **tarpc**: a `#[tarpc::service]` with `echo(ByteBuf) -> Result<ByteBuf, String>` over
//!   `serde_transport` with tokio-serde's bincode codec, framed by `LengthDelimitedCodec`
//!   over a tokio `UnixStream`; `BaseChannel::with_defaults(..).execute(..)` with every
//!   request spawned. One client (`EchoClient::new(Config::default(), ..).spawn()`) per
//!   connection. tarpc has no streaming calls.
//! - **tonic**: a gRPC service written the way tonic-build writes it (prost messages with a
//!   `bytes` field, `tonic_prost::ProstCodec`, `tonic::server::Grpc`) served by
//!   `Server::builder().add_service(..).serve_with_incoming(UnixListenerStream)`; the client
//!   a `Channel` from `Endpoint::connect_with_connector` dialling the Unix socket, one per
//!   connection, and `tonic::client::Grpc` over it.
//! - **shmrpc-channel**: not an RPC system but the stream's floor, the layer below shmrpc's
//!   RPC with nothing on top: one `shmrpc::channel` connection (a 64 KiB ring each way, as
//!   the RPC client's), the child writing each frame of up to 512 items (16 KiB, as the RPC
//!   stream's frames) straight into the ring (`Sender::reserve`, the items filled in place,
//!   `commit`), the lead checking them in place (`recv`). Same item code as every system,
//!   no copy and no framing beyond the ring's record: what any stream over this transport,
//!   between these two processes, could reach.

use std::convert::Infallible;
use std::path::PathBuf;
use std::task::{Context as TaskCx, Poll};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use serde_bytes::ByteBuf;
use shmrpc::{CallOptions, ClientConfig, Code, RpcError};
use tokio::task::JoinHandle;
use tonic::codegen::http;

use super::{
    check_item, check_reply, check_request, fill_request, parse_stream_request, reply, request,
    stream_request, RpcWork, ITEM_SIZE, PIPE_SIZE,
};
use crate::sys::RunEnv;

/// Connections the lead opens per system (the most any case uses).
const CONNS: usize = 16;

/// One RPC system.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RpcSys {
    /// shmrpc's async client.
    Shmrpc,
    /// shmrpc's blocking client.
    ShmrpcBlocking,
    /// tarpc over a Unix socket, bincode.
    Tarpc,
    /// tonic (gRPC, HTTP/2) over a Unix socket, protobuf.
    Tonic,
    /// shmrpc's bare channel, no RPC: the stream's floor.
    Channel,
}

impl RpcSys {
    /// Every system, in table order.
    pub const ALL: [RpcSys; 5] = [
        RpcSys::Shmrpc,
        RpcSys::ShmrpcBlocking,
        RpcSys::Tarpc,
        RpcSys::Tonic,
        RpcSys::Channel,
    ];

    /// Name in case ids and the table.
    pub fn name(self) -> &'static str {
        match self {
            RpcSys::Shmrpc => "shmrpc",
            RpcSys::ShmrpcBlocking => "shmrpc-blocking",
            RpcSys::Tarpc => "tarpc",
            RpcSys::Tonic => "tonic",
            RpcSys::Channel => "shmrpc-channel",
        }
    }

    /// Index in [`RpcSys::ALL`] (how the control pipe names it).
    pub fn index(self) -> usize {
        Self::ALL.iter().position(|&s| s == self).expect("listed")
    }

    /// Why this system does not run a workload, if it does not.
    pub fn na(self, work: RpcWork) -> Option<&'static str> {
        match (self, work) {
            (RpcSys::ShmrpcBlocking, RpcWork::Unary(_)) => None,
            (RpcSys::ShmrpcBlocking, _) => Some("unary round trips only (a blocking client)"),
            (RpcSys::Tarpc, RpcWork::Stream) => Some("tarpc has no streaming calls"),
            (RpcSys::Channel, RpcWork::Stream) => None,
            (RpcSys::Channel, _) => Some("the stream's floor only (a bare channel, no RPC)"),
            _ => None,
        }
    }
}

fn shm_name(env: &RunEnv, s: RpcSys) -> String {
    format!("{}rpc-{}", crate::sys::shm::name_prefix(env), s.name())
}

fn sock_path(env: &RunEnv, s: RpcSys) -> PathBuf {
    env.path(&format!("rpc-{}.sock", s.name()))
}

/// Items per record of the stream's floor (16 KiB, as shmrpc's RPC stream frames).
const FLOOR_FRAME: u64 = 512;

/// The floor's channel: a 64 KiB ring each way, as `ClientConfig::default()`'s.
fn floor_config() -> shmrpc::channel::ChannelConfig {
    shmrpc::channel::ChannelConfig::default().with_capacity(64 << 10)
}

/// The floor's server: accepts the lead's one connection, then answers each stream request
/// (as shmrpc's `items` handler would) until the lead closes.
fn serve_floor(listener: shmrpc::channel::Listener) -> Result<()> {
    let ep = listener.accept().context("channel accept")?;
    // Only one connection: the socket file goes now.
    drop(listener);
    let (mut tx, mut rx) = ep.split();
    loop {
        let (seed0, n) = match rx.recv() {
            Ok(m) => parse_stream_request(&m)?,
            Err(shmrpc::channel::RecvError::Closed | shmrpc::channel::RecvError::PeerGone) => {
                return Ok(())
            }
            Err(e) => return Err(e).context("channel recv"),
        };
        let mut at = 0;
        while at < n {
            let k = (n - at).min(FLOOR_FRAME);
            let mut frame = tx
                .reserve(k as usize * ITEM_SIZE)
                .context("channel reserve")?;
            for (j, item) in frame.chunks_exact_mut(ITEM_SIZE).enumerate() {
                fill_request(item, seed0 + at + j as u64);
            }
            frame.commit(0);
            at += k;
        }
    }
}

fn bad(e: anyhow::Error) -> RpcError {
    RpcError::new(Code::BadRequest, format!("{e:#}"))
}

// ---------------------------------------------------------------------------------------
// tarpc

/// The tarpc service.
#[tarpc::service]
pub trait Echo {
    /// Checks the request and answers with the reply.
    async fn echo(req: ByteBuf) -> Result<ByteBuf, String>;
}

#[derive(Clone)]
struct TarpcServer;

impl Echo for TarpcServer {
    async fn echo(self, _: tarpc::context::Context, req: ByteBuf) -> Result<ByteBuf, String> {
        let seed = check_request("tarpc request", &req).map_err(|e| format!("{e:#}"))?;
        Ok(ByteBuf::from(reply(req.len(), seed)))
    }
}

// ---------------------------------------------------------------------------------------
// tonic

/// The one protobuf message: `message Msg { bytes data = 1; }`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Msg {
    /// Request, reply or stream item.
    #[prost(bytes = "vec", tag = "1")]
    pub data: Vec<u8>,
}

const TONIC_ECHO: &str = "/peers.Echo/Echo";
const TONIC_ITEMS: &str = "/peers.Echo/Items";

/// `service Echo { rpc Echo(Msg) returns (Msg); rpc Items(Msg) returns (stream Msg); }`,
/// the server side as tonic-build generates it.
#[derive(Clone)]
struct TonicEcho;

type ItemStream = tonic::codegen::BoxStream<Msg>;

impl<B> tower::Service<http::Request<B>> for TonicEcho
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = tonic::codegen::BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut TaskCx<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        match req.uri().path() {
            TONIC_ECHO => Box::pin(async move {
                let svc = tower::service_fn(|r: tonic::Request<Msg>| async move {
                    let data = r.into_inner().data;
                    let seed = check_request("tonic request", &data)
                        .map_err(|e| tonic::Status::invalid_argument(format!("{e:#}")))?;
                    Ok::<_, tonic::Status>(tonic::Response::new(Msg {
                        data: reply(data.len(), seed),
                    }))
                });
                let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
                Ok(grpc.unary(svc, req).await)
            }),
            TONIC_ITEMS => Box::pin(async move {
                let svc = tower::service_fn(|r: tonic::Request<Msg>| async move {
                    let (seed0, n) = parse_stream_request(&r.into_inner().data)
                        .map_err(|e| tonic::Status::invalid_argument(format!("{e:#}")))?;
                    let items = futures::stream::iter((0..n).map(move |i| {
                        Ok(Msg {
                            data: request(ITEM_SIZE, seed0 + i),
                        })
                    }));
                    Ok::<_, tonic::Status>(tonic::Response::new(Box::pin(items) as ItemStream))
                });
                let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
                Ok(grpc.server_streaming(svc, req).await)
            }),
            _ => Box::pin(
                async move { Ok(tonic::Status::unimplemented("no such method").into_http()) },
            ),
        }
    }
}

impl tonic::server::NamedService for TonicEcho {
    const NAME: &'static str = "peers.Echo";
}

// ---------------------------------------------------------------------------------------
// The child's servers

/// A running server in the child.
pub struct RpcServer {
    task: JoinHandle<()>,
    stop: Option<Box<dyn FnOnce() + Send>>,
    path: Option<PathBuf>,
}

impl RpcServer {
    /// Stops the server and waits (bounded) for it.
    pub fn close(mut self, rt: &tokio::runtime::Runtime) -> Result<()> {
        if let Some(stop) = self.stop.take() {
            stop();
        } else {
            self.task.abort();
        }
        let task = self.task;
        let _ = rt.block_on(async { tokio::time::timeout(Duration::from_secs(5), task).await });
        if let Some(p) = self.path {
            let _ = std::fs::remove_file(p);
        }
        Ok(())
    }
}

/// Starts the server of `s` on `rt`.
pub fn serve(s: RpcSys, env: &RunEnv, rt: &tokio::runtime::Runtime) -> Result<RpcServer> {
    let _g = rt.enter();
    match s {
        RpcSys::Shmrpc | RpcSys::ShmrpcBlocking => {
            let server = shmrpc::Server::builder()
                .unary_raw("echo", |_ctx, req| async move {
                    let seed = check_request("shmrpc request", &req).map_err(bad)?;
                    Ok(reply(req.len(), seed))
                })
                .streaming_raw("items", |_ctx, req, sink| async move {
                    let (seed0, n) = parse_stream_request(&req).map_err(bad)?;
                    // All ready at once, as tonic's `stream::iter` below: several to a
                    // frame, each made on the stack and appended to its frame as the frames
                    // fill (faster than `append_zeroed` and filling that: a fixed-size copy
                    // instead of two calls of `memset`'s size).
                    sink.send_all_with(0..n, |i, item| {
                        let mut bytes = [0u8; ITEM_SIZE];
                        fill_request(&mut bytes, seed0 + i);
                        item.extend_from_slice(&bytes);
                        Ok(())
                    })
                    .await
                })
                .bind(&shm_name(env, s))
                .context("shmrpc bind")?;
            let handle = server.handle();
            let task = tokio::spawn(server.serve());
            Ok(RpcServer {
                task,
                stop: Some(Box::new(move || handle.shutdown())),
                path: None,
            })
        }
        RpcSys::Tarpc => {
            use tarpc::server::{BaseChannel, Channel};
            let path = sock_path(env, s);
            let listener = tokio::net::UnixListener::bind(&path)
                .with_context(|| format!("bind {}", path.display()))?;
            let task = tokio::spawn(async move {
                while let Ok((conn, _)) = listener.accept().await {
                    let framed =
                        tokio_util::codec::LengthDelimitedCodec::builder().new_framed(conn);
                    let transport = tarpc::serde_transport::new(
                        framed,
                        tarpc::tokio_serde::formats::Bincode::default(),
                    );
                    tokio::spawn(
                        BaseChannel::with_defaults(transport)
                            .execute(TarpcServer.serve())
                            .for_each(|f| async move {
                                tokio::spawn(f);
                            }),
                    );
                }
            });
            Ok(RpcServer {
                task,
                stop: None,
                path: Some(path),
            })
        }
        RpcSys::Channel => {
            let listener = shmrpc::channel::Listener::bind(&shm_name(env, s), floor_config())
                .context("channel bind")?;
            // A thread of its own, not the runtime's (its waits block); the task only
            // reports the thread's end, so that `close` waits for it.
            let (done, ended) = tokio::sync::oneshot::channel::<()>();
            std::thread::Builder::new()
                .name("channel-floor".into())
                .spawn(move || {
                    if let Err(e) = serve_floor(listener) {
                        eprintln!("channel floor server: {e:#}");
                    }
                    let _ = done.send(());
                })
                .context("spawning the floor's thread")?;
            let task = tokio::spawn(async move {
                let _ = ended.await;
            });
            Ok(RpcServer {
                task,
                // Nothing to tell it: it ends when the lead's connection closes.
                stop: Some(Box::new(|| {})),
                path: None,
            })
        }
        RpcSys::Tonic => {
            let path = sock_path(env, s);
            let listener = tokio::net::UnixListener::bind(&path)
                .with_context(|| format!("bind {}", path.display()))?;
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            let task = tokio::spawn(async move {
                let r = tonic::transport::Server::builder()
                    .add_service(TonicEcho)
                    .serve_with_incoming_shutdown(
                        tokio_stream::wrappers::UnixListenerStream::new(listener),
                        async move {
                            let _ = rx.await;
                        },
                    )
                    .await;
                if let Err(e) = r {
                    eprintln!("tonic server: {e}");
                }
            });
            Ok(RpcServer {
                task,
                stop: Some(Box::new(move || {
                    let _ = tx.send(());
                })),
                path: Some(path),
            })
        }
    }
}

// ---------------------------------------------------------------------------------------
// The lead's clients

/// One connection's client, cloned into each caller task.
#[derive(Clone)]
pub enum Caller {
    /// shmrpc's async client.
    Shmrpc(shmrpc::Client),
    /// tarpc's generated client.
    Tarpc(EchoClient),
    /// tonic's gRPC client over a channel.
    Tonic(tonic::client::Grpc<tonic::transport::Channel>),
}

impl Caller {
    /// One unary call; returns the reply's bytes.
    async fn call(&mut self, req: Vec<u8>) -> Result<Vec<u8>> {
        match self {
            Caller::Shmrpc(c) => Ok(c.call_raw("echo", &req, CallOptions::default()).await?),
            Caller::Tarpc(c) => match c
                .echo(tarpc::context::current(), ByteBuf::from(req))
                .await?
            {
                Ok(r) => Ok(r.into_vec()),
                Err(e) => bail!("tarpc server: {e}"),
            },
            Caller::Tonic(g) => {
                g.ready().await.context("tonic channel")?;
                let r = g
                    .unary(
                        tonic::Request::new(Msg { data: req }),
                        http::uri::PathAndQuery::from_static(TONIC_ECHO),
                        tonic_prost::ProstCodec::<Msg, Msg>::default(),
                    )
                    .await?;
                Ok(r.into_inner().data)
            }
        }
    }
}

/// The lead's side of one system: its connections.
pub enum RpcLead {
    /// Async clients (one per connection).
    Async(Vec<Caller>),
    /// shmrpc's blocking client.
    Blocking(shmrpc::BlockingClient),
    /// The stream's floor: one bare channel endpoint.
    Channel(Box<shmrpc::channel::Endpoint>),
}

/// Connects the lead's clients to the child's server of `s`.
pub fn connect(s: RpcSys, env: &RunEnv, rt: &tokio::runtime::Runtime) -> Result<RpcLead> {
    if s == RpcSys::ShmrpcBlocking {
        let c = shmrpc::BlockingClient::connect(&shm_name(env, s), ClientConfig::default())
            .context("shmrpc BlockingClient::connect")?;
        return Ok(RpcLead::Blocking(c));
    }
    if s == RpcSys::Channel {
        let ep = shmrpc::channel::connect(&shm_name(env, s), &floor_config())
            .context("shmrpc::channel::connect")?;
        return Ok(RpcLead::Channel(Box::new(ep)));
    }
    let name = shm_name(env, s);
    let path = sock_path(env, s);
    let callers = rt.block_on(async move {
        let mut v = Vec::with_capacity(CONNS);
        for _ in 0..CONNS {
            v.push(match s {
                RpcSys::Channel => bail!("not an RPC system"),
                RpcSys::Shmrpc | RpcSys::ShmrpcBlocking => Caller::Shmrpc(
                    shmrpc::Client::connect(&name, ClientConfig::default())
                        .await
                        .context("shmrpc Client::connect")?,
                ),
                RpcSys::Tarpc => {
                    let conn = tokio::net::UnixStream::connect(&path)
                        .await
                        .with_context(|| format!("connect {}", path.display()))?;
                    let framed =
                        tokio_util::codec::LengthDelimitedCodec::builder().new_framed(conn);
                    let transport = tarpc::serde_transport::new(
                        framed,
                        tarpc::tokio_serde::formats::Bincode::default(),
                    );
                    Caller::Tarpc(
                        EchoClient::new(tarpc::client::Config::default(), transport).spawn(),
                    )
                }
                RpcSys::Tonic => {
                    let p = path.clone();
                    let ch = tonic::transport::Endpoint::try_from("http://[::]:50051")?
                        .connect_with_connector(tower::service_fn(move |_: http::Uri| {
                            let p = p.clone();
                            async move {
                                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                                    tokio::net::UnixStream::connect(p).await?,
                                ))
                            }
                        }))
                        .await
                        .context("tonic connect")?;
                    Caller::Tonic(tonic::client::Grpc::new(ch))
                }
            });
        }
        anyhow::Ok(v)
    })?;
    Ok(RpcLead::Async(callers))
}

impl RpcLead {
    /// `n` sequential unary calls of `size` bytes; one sample (ns) per call.
    pub fn unary(
        &mut self,
        rt: &tokio::runtime::Runtime,
        size: usize,
        n: u64,
        seed0: u64,
    ) -> Result<Vec<u64>> {
        match self {
            RpcLead::Blocking(c) => {
                let mut samples = Vec::with_capacity(n as usize);
                for i in 0..n {
                    let seed = seed0 + i;
                    let req = request(size, seed);
                    let t0 = Instant::now();
                    let r = c.call_raw("echo", &req, None)?;
                    check_reply("shmrpc-blocking reply", &r, size, seed)?;
                    samples.push(t0.elapsed().as_nanos() as u64);
                }
                Ok(samples)
            }
            RpcLead::Channel(_) => bail!("the channel floor runs the stream only"),
            RpcLead::Async(callers) => {
                let mut c = callers[0].clone();
                rt.block_on(async move {
                    tokio::spawn(async move {
                        let mut samples = Vec::with_capacity(n as usize);
                        for i in 0..n {
                            let seed = seed0 + i;
                            let req = request(size, seed);
                            let t0 = Instant::now();
                            let r = c.call(req).await?;
                            check_reply("reply", &r, size, seed)?;
                            samples.push(t0.elapsed().as_nanos() as u64);
                        }
                        anyhow::Ok(samples)
                    })
                    .await?
                })
            }
        }
    }

    /// `n` calls of 64 B by `conns × tasks` caller tasks (`n` a multiple of that).
    pub fn pipelined(
        &mut self,
        rt: &tokio::runtime::Runtime,
        conns: usize,
        tasks: usize,
        n: u64,
        seed0: u64,
    ) -> Result<()> {
        let RpcLead::Async(callers) = self else {
            bail!("not an async client");
        };
        let per = n / (conns * tasks) as u64;
        let callers: Vec<Caller> = callers[..conns].to_vec();
        rt.block_on(async move {
            let mut handles = Vec::with_capacity(conns * tasks);
            for (ci, c) in callers.iter().enumerate() {
                for t in 0..tasks {
                    let mut c = c.clone();
                    let base = seed0 + (ci * tasks + t) as u64 * per;
                    handles.push(tokio::spawn(async move {
                        for i in 0..per {
                            let seed = base + i;
                            let r = c.call(request(PIPE_SIZE, seed)).await?;
                            check_reply("reply", &r, PIPE_SIZE, seed)?;
                        }
                        anyhow::Ok(())
                    }));
                }
            }
            for h in handles {
                h.await??;
            }
            anyhow::Ok(())
        })
    }

    /// One server-streaming call of `n` items; the time to the last and to the first item.
    pub fn stream(
        &mut self,
        rt: &tokio::runtime::Runtime,
        n: u64,
        seed0: u64,
    ) -> Result<(Duration, Duration)> {
        let callers = match self {
            RpcLead::Async(callers) => callers,
            RpcLead::Channel(ep) => return stream_floor(ep, n, seed0),
            RpcLead::Blocking(_) => bail!("not an async client"),
        };
        let c = callers[0].clone();
        rt.block_on(async move {
            tokio::spawn(async move {
                let req = stream_request(seed0, n);
                let t0 = Instant::now();
                let mut first = None;
                let mut got = 0u64;
                match c {
                    Caller::Shmrpc(c) => {
                        let mut s = c
                            .call_stream_raw("items", &req, CallOptions::default())
                            .await?;
                        // The items that came together, lent in place.
                        while let Some(items) = s.next_items().await {
                            for item in items? {
                                first.get_or_insert_with(|| t0.elapsed());
                                check_item("shmrpc item", item, seed0 + got)?;
                                got += 1;
                            }
                        }
                    }
                    Caller::Tonic(mut g) => {
                        g.ready().await.context("tonic channel")?;
                        let mut s = g
                            .server_streaming(
                                tonic::Request::new(Msg { data: req }),
                                http::uri::PathAndQuery::from_static(TONIC_ITEMS),
                                tonic_prost::ProstCodec::<Msg, Msg>::default(),
                            )
                            .await?
                            .into_inner();
                        while let Some(m) = s.message().await? {
                            first.get_or_insert_with(|| t0.elapsed());
                            check_item("tonic item", &m.data, seed0 + got)?;
                            got += 1;
                        }
                    }
                    Caller::Tarpc(_) => bail!("tarpc has no streaming calls"),
                }
                let dt = t0.elapsed();
                if got != n {
                    bail!("{got} items of {n}");
                }
                Ok((dt, first.unwrap_or(dt)))
            })
            .await?
        })
    }

    /// Drops the connections (inside the runtime, for the async clients' tasks; the blocking
    /// client's own runtime outside of it).
    pub fn close(self, rt: &tokio::runtime::Runtime) {
        match self {
            RpcLead::Async(callers) => {
                let _g = rt.enter();
                drop(callers);
            }
            RpcLead::Blocking(c) => drop(c),
            RpcLead::Channel(ep) => drop(ep),
        }
    }
}

/// The stream's floor, the lead's side: asks for `n` items and checks each in place in the
/// ring, as they come. The time to the last and to the first item.
fn stream_floor(
    ep: &mut shmrpc::channel::Endpoint,
    n: u64,
    seed0: u64,
) -> Result<(Duration, Duration)> {
    let req = stream_request(seed0, n);
    let t0 = Instant::now();
    ep.send(&req).context("channel send")?;
    let mut first = None;
    let mut got = 0u64;
    while got < n {
        let m = ep.recv().context("channel recv")?;
        if m.is_empty() || m.len() % ITEM_SIZE != 0 {
            bail!("a frame of {} bytes", m.len());
        }
        for item in m.chunks_exact(ITEM_SIZE) {
            first.get_or_insert_with(|| t0.elapsed());
            check_item("channel item", item, seed0 + got)?;
            got += 1;
        }
    }
    let dt = t0.elapsed();
    if got != n {
        bail!("{got} items of {n}");
    }
    Ok((dt, first.unwrap_or(dt)))
}
