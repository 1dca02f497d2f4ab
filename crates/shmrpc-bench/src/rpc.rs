//! The RPC cases: unary calls and pipelined calls through `shmrpc::rpc`, beside
//! a tokio Unix-socket baseline that moves the same frames (a 32-byte shmrpc frame header,
//! CRC32C checked, plus the payload), and the time a client takes to reach a restarted
//! server.
//!
//! The servers run in the peer process on a current-thread tokio runtime of their own
//! thread (the peer's main thread keeps reading the control pipe); the clients run in the
//! lead on its current-thread runtime. One server per case: it is bound when the case
//! starts and shut down when it ends.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use shmrpc::channel::{ChannelConfig, WaitStrategy};
use shmrpc::lowlevel::frame::{self, FrameHeader, Kind, FLAG_TO_CALLEE, FRAME_HEADER_LEN};
use shmrpc::method_id;
use shmrpc::{
    CallOptions, Client, ClientBuilder, ClientConfig, Peer, RpcError, Server, ServerBuilder,
    ServerConfig, TcpServerConfig,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

use super::raw::{stamp, stamped};
use super::remote::{self, Payload, Pki};
use crate::error::{BenchError, Result};

/// The echo method every RPC case calls.
pub const METHOD: &str = "bench.echo";
/// Payload bytes of every call and of its answer.
pub const SIZE: usize = 64;
/// Calls (or requests) outstanding per connection when pipelining.
pub const PIPELINE: usize = 64;
/// Connections of the many-connection pipelined cases.
pub const MANY: usize = 16;
/// Connections of the most-connections pipelined cases.
pub const MANY_MORE: usize = 256;
/// How long the restarted server stays down before it binds again.
pub const RESTART_GAP: Duration = Duration::from_millis(50);
/// Bytes the RPC client puts before a request's body (its deadline); the Unix-socket
/// baseline sends the same so that both requests have the same length.
const DEADLINE_PREFIX: usize = 4;
/// Bound on one case's work on the lead side (a hung peer is an error, not a hang).
const CASE_LIMIT: Duration = Duration::from_secs(90);
/// The method whose handler calls its caller back ([`METHOD`] on the client) a number of
/// times, one after another, and answers with the time of each callback.
pub const CALLBACK_METHOD: &str = "bench.callback";
/// Callbacks per call of [`CALLBACK_METHOD`] (its answer: 8 bytes per callback).
pub const CALLBACK_BATCH: u64 = 1000;
/// The bidirectional echo method: every item comes back as it is.
pub const BIDI_METHOD: &str = "bench.bidi";
/// The client-streaming sink method: it reads every item and answers with their bytes.
pub const SINK_METHOD: &str = "bench.sink";
/// Payload bytes of the unary calls of the head-of-line cases.
pub const HOL_SIZE: usize = 100;
/// Item size of the client stream in flight during the loaded head-of-line case.
pub const HOL_ITEM: usize = 64 << 10;
/// Items per client stream (10 MiB), streamed again and again while the calls run.
pub const HOL_ITEMS: usize = 160;
/// Bound on one call (or item) of the new RPC cases, so that a hung peer is an error.
const CALL_LIMIT: Duration = Duration::from_secs(10);

/// Which server the peer runs for a case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerKind {
    /// shmrpc server, both sides spin-then-park.
    SpinThenPark,
    /// shmrpc server, both sides park.
    Park,
    /// The Unix-socket echo server.
    Uds,
    /// shmrpc server on TCP loopback, plaintext.
    Tcp,
    /// shmrpc server on TCP loopback, plaintext, lz4 accepted.
    TcpLz4,
    /// shmrpc server on TCP loopback, TLS with client certificates and a token.
    Tls,
}

/// Every server kind.
const KINDS: [ServerKind; 6] = [
    ServerKind::SpinThenPark,
    ServerKind::Park,
    ServerKind::Uds,
    ServerKind::Tcp,
    ServerKind::TcpLz4,
    ServerKind::Tls,
];

impl ServerKind {
    /// Short name, used in commands.
    pub fn as_str(self) -> &'static str {
        match self {
            ServerKind::SpinThenPark => "stp",
            ServerKind::Park => "park",
            ServerKind::Uds => "uds",
            ServerKind::Tcp => "tcp",
            ServerKind::TcpLz4 => "tcp-lz4",
            ServerKind::Tls => "tls",
        }
    }
}

impl FromStr for ServerKind {
    type Err = BenchError;
    fn from_str(s: &str) -> Result<Self> {
        KINDS
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| BenchError::protocol("a server kind", Some(s)))
    }
}

/// Wait strategy of both sides of an shmrpc case: `Park`, or the default spin-then-park
/// (its spin budget can be set with the environment variable `SHMRPC_BENCH_RPC_SPIN_US`,
/// which the peer inherits, to see how the adaptive budget behaves).
pub fn wait_of(park: bool) -> WaitStrategy {
    if park {
        WaitStrategy::Park
    } else {
        match std::env::var("SHMRPC_BENCH_RPC_SPIN_US") {
            Ok(v) => WaitStrategy::SpinThenPark {
                spin: Duration::from_micros(v.parse().unwrap_or(50)),
            },
            Err(_) => WaitStrategy::default(),
        }
    }
}

/// CLOCK_MONOTONIC in nanoseconds: the same clock in both processes.
pub fn mono_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// The socket file of the Unix-socket baseline.
pub fn uds_path(prefix: &str) -> PathBuf {
    std::env::temp_dir().join(format!("shmrpc-{prefix}-uds.sock"))
}

// ---------------------------------------------------------------------------------------
// Peer side
// ---------------------------------------------------------------------------------------

/// A server running on its own thread.
pub struct Running {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<()>>>,
    /// CLOCK_MONOTONIC when the server was bound (listening).
    pub bound_at: u64,
    /// The port of a TCP server (on 127.0.0.1).
    pub port: Option<u16>,
}

impl Running {
    /// Binds `kind` on `name` (shmrpc), `uds` (baseline) or 127.0.0.1:0 (TCP; `pki` has
    /// the TLS server's certificates) and serves until stopped.
    pub fn start(kind: ServerKind, name: &str, uds: &Path, pki: Option<&Pki>) -> Result<Self> {
        let tcp = remote::server_tcp(kind, pki)?;
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = mpsc::channel::<(u64, Option<u16>)>();
        let (name, uds) = (name.to_owned(), uds.to_owned());
        let thread = std::thread::spawn(move || -> Result<()> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(BenchError::io("tokio runtime"))?;
            let r = rt.block_on(serve(kind, &name, &uds, tcp, ready_tx, stop_rx));
            rt.shutdown_timeout(Duration::from_secs(1));
            if kind == ServerKind::Uds {
                let _ = std::fs::remove_file(&uds);
            }
            r
        });
        let mut me = Self {
            stop: Some(stop),
            thread: Some(thread),
            bound_at: 0,
            port: None,
        };
        match ready_rx.recv_timeout(Duration::from_secs(10)) {
            Ok((t, port)) => {
                me.bound_at = t;
                me.port = port;
                Ok(me)
            }
            Err(_) => Err(me.stop().err().unwrap_or_else(|| BenchError::TimedOut {
                what: format!("starting the {} server", kind.as_str()),
                limit: Duration::from_secs(10),
            })),
        }
    }

    /// Shuts the server down (gracefully: connections are told goodbye) and waits for it.
    pub fn stop(&mut self) -> Result<()> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        match self.thread.take() {
            Some(t) => t.join().map_err(|_| BenchError::Task {
                what: "the server thread",
                source: None,
            })?,
            None => Ok(()),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// The echo server's methods: every case's, on every kind of connection.
fn methods(cfg: ServerConfig) -> ServerBuilder {
    ServerBuilder::new(cfg)
        .unary_raw(METHOD, |_ctx, req| async move { Ok(req) })
        .unary_raw(CALLBACK_METHOD, |ctx, req| async move {
            callbacks(ctx.peer(), &req).await
        })
        .bidi_raw(BIDI_METHOD, |_ctx, mut items, sink| async move {
            while let Some(item) = items.next_raw().await {
                sink.send_raw(&item?).await?;
            }
            Ok(())
        })
        .client_streaming_raw(SINK_METHOD, |_ctx, mut items| async move {
            let mut bytes = 0u64;
            while let Some(item) = items.next_raw().await {
                bytes += item?.len() as u64;
            }
            Ok(bytes.to_le_bytes().to_vec())
        })
        .client_streaming_raw(remote::CHECK_TEXT_METHOD, |_ctx, items| {
            remote::check_items(Payload::Text, items)
        })
        .client_streaming_raw(remote::CHECK_RANDOM_METHOD, |_ctx, items| {
            remote::check_items(Payload::Random, items)
        })
}

async fn serve(
    kind: ServerKind,
    name: &str,
    uds: &Path,
    tcp: Option<TcpServerConfig>,
    ready: mpsc::Sender<(u64, Option<u16>)>,
    stop: tokio::sync::oneshot::Receiver<()>,
) -> Result<()> {
    if let Some(tcp) = tcp {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let server = methods(ServerConfig::default().with_tcp(tcp))
            .bind_tcp(addr)
            .await
            .map_err(BenchError::shmrpc(format!(
                "binding the {} server",
                kind.as_str()
            )))?;
        let _ = ready.send((mono_ns(), server.local_addr().map(|a| a.port())));
        return run_until(server, stop).await;
    }
    match kind {
        ServerKind::Uds => {
            let _ = std::fs::remove_file(uds);
            let l = UnixListener::bind(uds)
                .map_err(BenchError::io(format!("binding {}", uds.display())))?;
            let _ = ready.send((mono_ns(), None));
            let mut conns = tokio::task::JoinSet::new();
            tokio::pin!(stop);
            loop {
                tokio::select! {
                    _ = &mut stop => break,
                    c = l.accept() => {
                        if let Ok((s, _)) = c {
                            conns.spawn(uds_echo(s));
                        }
                    }
                }
            }
            conns.abort_all();
            Ok(())
        }
        _ => {
            let wait = wait_of(kind == ServerKind::Park);
            let cfg = ServerConfig::default().with_channel(
                ChannelConfig::default()
                    .with_capacity(64 << 10)
                    .with_wait(wait),
            );
            let server = methods(cfg)
                .bind(name)
                .map_err(BenchError::shmrpc(format!("binding the RPC server {name}")))?;
            let _ = ready.send((mono_ns(), None));
            run_until(server, stop).await
        }
    }
}

/// Serves until `stop`, then shuts the server down gracefully.
async fn run_until(server: Server, stop: tokio::sync::oneshot::Receiver<()>) -> Result<()> {
    let handle = server.handle();
    let serving = tokio::spawn(server.serve());
    let _ = stop.await;
    handle.shutdown();
    if tokio::time::timeout(Duration::from_secs(5), serving)
        .await
        .is_err()
    {
        return Err(BenchError::TimedOut {
            what: "shutting the RPC server down".to_owned(),
            limit: Duration::from_secs(5),
        });
    }
    Ok(())
}

/// The server's side of a callback call: `req` is the number of callbacks (u64 LE, at
/// most [`CALLBACK_BATCH`]); each is a [`METHOD`] echo of [`SIZE`] bytes through `peer`,
/// checked; the answer is the time of each (u64 LE nanoseconds).
async fn callbacks(peer: &Peer, req: &[u8]) -> std::result::Result<Vec<u8>, RpcError> {
    let n = req
        .try_into()
        .map(u64::from_le_bytes)
        .ok()
        .filter(|&n| n <= CALLBACK_BATCH)
        .ok_or_else(|| RpcError::handler("the request is not a callback count"))?;
    let mut out = Vec::with_capacity(n as usize * 8);
    let mut msg = [0x33u8; SIZE];
    for i in 0..n {
        stamp(&mut msg, i);
        let t0 = Instant::now();
        let r = peer
            .call_raw(METHOD, &msg, CallOptions::timeout(CALL_LIMIT))
            .await?;
        let dt = t0.elapsed();
        if r.len() != SIZE || !stamped(&r, i) {
            return Err(RpcError::handler(format!("callback {i} came back wrong")));
        }
        out.extend_from_slice(&(dt.as_nanos() as u64).to_le_bytes());
    }
    Ok(out)
}

/// The length of the first frame in `b`, if all of it is there.
fn frame_len(b: &[u8]) -> Result<Option<usize>> {
    if b.len() < FRAME_HEADER_LEN {
        return Ok(None);
    }
    let h = frame::decode_header(b).map_err(BenchError::shmrpc("decoding a frame header"))?;
    let total = FRAME_HEADER_LEN + h.len as usize;
    Ok((b.len() >= total).then_some(total))
}

/// The baseline server's side of one connection: reads what is there, answers every
/// complete request (CRC checked, the deadline prefix dropped, as the RPC server does)
/// with one write.
async fn uds_echo(mut s: UnixStream) -> Result<()> {
    let mut inb: Vec<u8> = Vec::with_capacity(64 << 10);
    let mut out: Vec<u8> = Vec::with_capacity(64 << 10);
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = s.read(&mut buf).await.map_err(BenchError::io("read"))?;
        if n == 0 {
            return Ok(());
        }
        inb.extend_from_slice(&buf[..n]);
        let mut off = 0;
        while let Some(len) = frame_len(&inb[off..])? {
            let (h, payload) = frame::decode(&inb[off..off + len])
                .map_err(BenchError::shmrpc("decoding a request"))?;
            if h.kind != Kind::Request || payload.len() < DEADLINE_PREFIX {
                return Err(BenchError::WrongData("not a request".to_owned()));
            }
            let body = &payload[DEADLINE_PREFIX..];
            let at = out.len();
            out.resize(at + FRAME_HEADER_LEN + body.len(), 0);
            frame::encode_into(&mut out[at..], &header(Kind::Response, h.call_id), body)
                .map_err(BenchError::shmrpc("encoding a response"))?;
            off += len;
        }
        inb.drain(..off);
        if !out.is_empty() {
            s.write_all(&out).await.map_err(BenchError::io("write"))?;
            out.clear();
        }
    }
}

/// A frame header as the shmrpc runtime writes it: a request travels to its callee
/// ([`FLAG_TO_CALLEE`]), an answer back without the flag.
fn header(kind: Kind, call_id: u64) -> FrameHeader {
    FrameHeader {
        kind,
        flags: if kind == Kind::Request {
            FLAG_TO_CALLEE
        } else {
            0
        },
        method: method_id(METHOD),
        call_id,
        len: 0,
    }
}

// ---------------------------------------------------------------------------------------
// Lead side
// ---------------------------------------------------------------------------------------

/// Client settings of an shmrpc case.
pub fn client_config(park: bool) -> ClientConfig {
    ClientConfig::default().with_channel(ChannelConfig::default().with_wait(wait_of(park)))
}

/// Connects `n` clients to `name`.
pub async fn connect(name: &str, park: bool, n: usize) -> Result<Vec<Client>> {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        v.push(
            Client::connect(name, client_config(park))
                .await
                .map_err(BenchError::shmrpc(format!("connecting to {name}")))?,
        );
    }
    Ok(v)
}

pub(crate) async fn limited<T>(
    what: &str,
    f: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    tokio::time::timeout(CASE_LIMIT, f)
        .await
        .map_err(|_| BenchError::TimedOut {
            what: what.to_owned(),
            limit: CASE_LIMIT,
        })?
}

/// Unary calls one after another; the time of each of the last `total - warm`.
pub async fn rpc_unary(client: &Client, total: u64, warm: u64) -> Result<Vec<u64>> {
    limited("rpc unary", async {
        let mut samples = Vec::with_capacity(total.saturating_sub(warm) as usize);
        let mut msg = [0x22u8; SIZE];
        for i in 0..total {
            stamp(&mut msg, i);
            let t0 = Instant::now();
            let r = client
                .call_raw(METHOD, &msg, CallOptions::default())
                .await
                .map_err(|source| BenchError::Rpc {
                    what: format!("call {i}"),
                    source,
                })?;
            let dt = t0.elapsed();
            if r.len() != SIZE || !stamped(&r, i) {
                return Err(BenchError::WrongData(format!("answer {i} came back wrong")));
            }
            if i >= warm {
                samples.push(dt.as_nanos() as u64);
            }
        }
        Ok(samples)
    })
    .await
}

/// Connects one client that serves [`METHOD`] itself (the echo the server calls back).
pub async fn connect_symmetric(name: &str) -> Result<Client> {
    ClientBuilder::new(client_config(false))
        .unary_raw(METHOD, |_ctx, req| async move { Ok(req) })
        .connect(name)
        .await
        .map_err(BenchError::shmrpc(format!("connecting to {name}")))
}

/// Server-to-client callbacks: the server's handler calls the client's [`METHOD`] one
/// after another ([`CALLBACK_BATCH`] per call) and times each; the last `total - warm`.
pub async fn rpc_callback(client: &Client, total: u64, warm: u64) -> Result<Vec<u64>> {
    limited("rpc callback", async {
        let mut samples = Vec::with_capacity(total.saturating_sub(warm) as usize);
        let mut done = 0u64;
        while done < total {
            let n = CALLBACK_BATCH.min(total - done);
            let r = client
                .call_raw(
                    CALLBACK_METHOD,
                    &n.to_le_bytes(),
                    CallOptions::timeout(CASE_LIMIT),
                )
                .await
                .map_err(BenchError::rpc(format!("callbacks {done}..{}", done + n)))?;
            if r.len() != n as usize * 8 {
                return Err(BenchError::WrongData(format!(
                    "{} bytes of callback times for {n} callbacks",
                    r.len()
                )));
            }
            for (i, t) in r.chunks_exact(8).enumerate() {
                if done + i as u64 >= warm {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(t);
                    samples.push(u64::from_le_bytes(b));
                }
            }
            done += n;
        }
        Ok(samples)
    })
    .await
}

/// A bidirectional echo of `total` items of [`SIZE`] bytes: a sender task sends them
/// all (as fast as the call's credit lets it), this task reads the echoes and checks
/// them; the time from the call's start to the last echo.
pub async fn rpc_bidi(client: &Client, total: u64) -> Result<(Duration, u64)> {
    limited("rpc bidi echo", async {
        let t0 = Instant::now();
        let call = client
            .call_bidi(BIDI_METHOD, CallOptions::timeout(CASE_LIMIT))
            .await
            .map_err(BenchError::rpc("starting the bidi call"))?;
        let (mut tx, mut rx) = call.split();
        let sender = tokio::spawn(async move {
            let mut msg = [0x44u8; SIZE];
            for i in 0..total {
                stamp(&mut msg, i);
                tx.send_raw(&msg)
                    .await
                    .map_err(BenchError::rpc(format!("sending item {i}")))?;
            }
            tx.finish().await.map_err(BenchError::rpc("finishing"))
        });
        let mut got = 0u64;
        while let Some(item) = rx.next_raw().await {
            let item = item.map_err(BenchError::rpc(format!("echo {got}")))?;
            if item.len() != SIZE || !stamped(&item, got) {
                return Err(BenchError::WrongData(format!("echo {got} came back wrong")));
            }
            got += 1;
        }
        let dt = t0.elapsed();
        sender.await.map_err(|e| BenchError::Task {
            what: "the bidi sender task",
            source: Some(e),
        })??;
        if got != total {
            return Err(BenchError::WrongData(format!(
                "{got} echoes of {total} items"
            )));
        }
        Ok((dt, got))
    })
    .await
}

/// Unary calls of [`HOL_SIZE`] bytes one after another, the time of each of the last
/// `total - warm`; with `loaded`, while another task streams [`HOL_ITEMS`] items of
/// [`HOL_ITEM`] bytes to [`SINK_METHOD`] again and again on the same connection.
pub async fn rpc_hol(client: &Client, total: u64, warm: u64, loaded: bool) -> Result<Vec<u64>> {
    limited("rpc head-of-line", async {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let loader = loaded.then(|| {
            let client = client.clone();
            tokio::spawn(async move {
                let item = vec![0x55u8; HOL_ITEM];
                // At least one whole stream, then until the calls are done.
                loop {
                    let mut call = client
                        .call_client_stream(SINK_METHOD, CallOptions::timeout(CASE_LIMIT))
                        .await
                        .map_err(BenchError::rpc("starting a client stream"))?;
                    for i in 0..HOL_ITEMS {
                        call.send_raw(&item)
                            .await
                            .map_err(BenchError::rpc(format!("streaming item {i}")))?;
                    }
                    let r = call
                        .finish_raw()
                        .await
                        .map_err(BenchError::rpc("finishing a client stream"))?;
                    if r != ((HOL_ITEMS * HOL_ITEM) as u64).to_le_bytes() {
                        return Err(BenchError::WrongData(
                            "the sink counted other bytes".to_owned(),
                        ));
                    }
                    if *stopped.borrow() {
                        break;
                    }
                }
                Ok::<(), BenchError>(())
            })
        });
        let mut samples = Vec::with_capacity(total.saturating_sub(warm) as usize);
        let mut msg = [0x66u8; HOL_SIZE];
        let r = async {
            for i in 0..total {
                stamp(&mut msg, i);
                let t0 = Instant::now();
                let r = client
                    .call_raw(METHOD, &msg, CallOptions::timeout(CALL_LIMIT))
                    .await
                    .map_err(BenchError::rpc(format!("call {i}")))?;
                let dt = t0.elapsed();
                if r.len() != HOL_SIZE || !stamped(&r, i) {
                    return Err(BenchError::WrongData(format!("answer {i} came back wrong")));
                }
                if i >= warm {
                    samples.push(dt.as_nanos() as u64);
                }
            }
            Ok::<(), BenchError>(())
        }
        .await;
        let _ = stop.send(true);
        if let Some(l) = loader {
            l.await.map_err(|e| BenchError::Task {
                what: "the client-stream task",
                source: Some(e),
            })??;
        }
        r?;
        Ok(samples)
    })
    .await
}

/// The same over a Unix socket: encode, write, read the header, read the payload, decode.
pub async fn uds_unary(path: &Path, total: u64, warm: u64) -> Result<Vec<u64>> {
    let mut s = UnixStream::connect(path)
        .await
        .map_err(BenchError::io(format!("connecting to {}", path.display())))?;
    limited("unix-socket unary", async {
        let mut samples = Vec::with_capacity(total.saturating_sub(warm) as usize);
        let mut body = [0u8; DEADLINE_PREFIX + SIZE];
        body[DEADLINE_PREFIX..].fill(0x22);
        let mut req = vec![0u8; FRAME_HEADER_LEN + body.len()];
        let mut resp = vec![0u8; FRAME_HEADER_LEN + SIZE];
        for i in 0..total {
            stamp(&mut body[DEADLINE_PREFIX..], i);
            let t0 = Instant::now();
            frame::encode_into(&mut req, &header(Kind::Request, i), &body)
                .map_err(BenchError::shmrpc("encoding a request"))?;
            s.write_all(&req).await.map_err(BenchError::io("write"))?;
            s.read_exact(&mut resp[..FRAME_HEADER_LEN])
                .await
                .map_err(BenchError::io("read"))?;
            let h = frame::decode_header(&resp)
                .map_err(BenchError::shmrpc("decoding an answer's header"))?;
            if h.len as usize != SIZE {
                return Err(BenchError::WrongData(format!(
                    "answer {i} of {} bytes",
                    h.len
                )));
            }
            s.read_exact(&mut resp[FRAME_HEADER_LEN..])
                .await
                .map_err(BenchError::io("read"))?;
            let (h, p) = frame::decode(&resp).map_err(BenchError::shmrpc("decoding an answer"))?;
            let dt = t0.elapsed();
            if h.call_id != i || !stamped(p, i) {
                return Err(BenchError::WrongData(format!("answer {i} came back wrong")));
            }
            if i >= warm {
                samples.push(dt.as_nanos() as u64);
            }
        }
        Ok(samples)
    })
    .await
}

/// `PIPELINE` caller tasks per client, each making calls one after another, `total` calls
/// in all (rounded down to a multiple of the tasks). Returns the wall time and the calls.
pub async fn rpc_pipelined(clients: &[Client], total: u64) -> Result<(Duration, u64)> {
    let tasks = (clients.len() * PIPELINE) as u64;
    let per = (total / tasks).max(1);
    limited("rpc pipelined", async {
        let mut set = tokio::task::JoinSet::new();
        let t0 = Instant::now();
        for (c, client) in clients.iter().enumerate() {
            for t in 0..PIPELINE {
                let client = client.clone();
                let base = ((c * PIPELINE + t) as u64) << 32;
                set.spawn(async move {
                    let mut msg = [0x33u8; SIZE];
                    for j in 0..per {
                        stamp(&mut msg, base + j);
                        let r = client
                            .call_raw(METHOD, &msg, CallOptions::default())
                            .await
                            .map_err(BenchError::rpc("pipelined call"))?;
                        if r.len() != SIZE || !stamped(&r, base + j) {
                            return Err(BenchError::WrongData(
                                "a pipelined answer came back wrong".to_owned(),
                            ));
                        }
                    }
                    Ok(())
                });
            }
        }
        while let Some(r) = set.join_next().await {
            r.map_err(|e| BenchError::Task {
                what: "a caller task",
                source: Some(e),
            })??;
        }
        Ok((t0.elapsed(), per * tasks))
    })
    .await
}

/// Opens `conns` Unix-socket connections to the baseline server.
pub async fn uds_connect(path: &Path, conns: usize) -> Result<Vec<UnixStream>> {
    let mut streams = Vec::with_capacity(conns);
    for _ in 0..conns {
        streams.push(
            UnixStream::connect(path)
                .await
                .map_err(BenchError::io(format!("connecting to {}", path.display())))?,
        );
    }
    Ok(streams)
}

/// Unix-socket connections (from [`uds_connect`]), each with `PIPELINE` requests
/// outstanding: a task per connection writes a window of requests, then answers every
/// batch of responses it reads with as many new requests (one write). `total` requests in
/// all.
pub async fn uds_pipelined(streams: Vec<UnixStream>, total: u64) -> Result<(Duration, u64)> {
    let conns = streams.len().max(1);
    let per = (total / conns as u64).max(PIPELINE as u64);
    limited("unix-socket pipelined", async {
        let mut set = tokio::task::JoinSet::new();
        let t0 = Instant::now();
        for s in streams {
            set.spawn(uds_pipe_conn(s, per));
        }
        while let Some(r) = set.join_next().await {
            r.map_err(|e| BenchError::Task {
                what: "a connection task",
                source: Some(e),
            })??;
        }
        Ok((t0.elapsed(), per * conns as u64))
    })
    .await
}

async fn uds_pipe_conn(mut s: UnixStream, n: u64) -> Result<()> {
    let mut body = [0x33u8; DEADLINE_PREFIX + SIZE];
    body[..DEADLINE_PREFIX].fill(0);
    let req_len = FRAME_HEADER_LEN + body.len();
    let mut out: Vec<u8> = Vec::with_capacity(PIPELINE * req_len);
    let (mut sent, mut done) = (0u64, 0u64);
    let push = |out: &mut Vec<u8>, body: &mut [u8], id: u64| -> Result<()> {
        stamp(&mut body[DEADLINE_PREFIX..], id);
        let at = out.len();
        out.resize(at + req_len, 0);
        frame::encode_into(&mut out[at..], &header(Kind::Request, id), body)
            .map_err(BenchError::shmrpc("encoding a request"))
    };
    while sent < n.min(PIPELINE as u64) {
        push(&mut out, &mut body, sent)?;
        sent += 1;
    }
    s.write_all(&out).await.map_err(BenchError::io("write"))?;
    out.clear();
    let mut inb: Vec<u8> = Vec::with_capacity(64 << 10);
    let mut buf = vec![0u8; 64 << 10];
    while done < n {
        let k = s.read(&mut buf).await.map_err(BenchError::io("read"))?;
        if k == 0 {
            return Err(BenchError::WrongData(
                "the server closed the connection".to_owned(),
            ));
        }
        inb.extend_from_slice(&buf[..k]);
        let mut off = 0;
        while let Some(len) = frame_len(&inb[off..])? {
            let (h, p) = frame::decode(&inb[off..off + len])
                .map_err(BenchError::shmrpc("decoding an answer"))?;
            if h.kind != Kind::Response || h.call_id >= sent || !stamped(p, h.call_id) {
                return Err(BenchError::WrongData(
                    "a pipelined answer came back wrong".to_owned(),
                ));
            }
            done += 1;
            off += len;
            if sent < n {
                push(&mut out, &mut body, sent)?;
                sent += 1;
            }
        }
        inb.drain(..off);
        if !out.is_empty() {
            s.write_all(&out).await.map_err(BenchError::io("write"))?;
            out.clear();
        }
    }
    Ok(())
}

/// Calls until one succeeds (the first attempts may meet the old, closed connection);
/// returns CLOCK_MONOTONIC when it did.
pub async fn call_until_ok(client: &Client) -> Result<u64> {
    let msg = [0x44u8; SIZE];
    let give_up = Instant::now() + Duration::from_secs(20);
    loop {
        let r = client
            .call_raw(METHOD, &msg, CallOptions::timeout(Duration::from_secs(10)))
            .await;
        match r {
            Ok(b) if b == msg => return Ok(mono_ns()),
            Ok(_) => {
                return Err(BenchError::WrongData(
                    "the answer after the restart came back wrong".to_owned(),
                ))
            }
            Err(source) if Instant::now() > give_up => {
                return Err(BenchError::Rpc {
                    what: "no call succeeded within 20 s after a restart".to_owned(),
                    source,
                })
            }
            Err(_) => tokio::task::yield_now().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unary_and_pipelined_over_rpc_and_unix_socket_in_one_process() {
        let pid = std::process::id();
        let name = format!("benchrpc-test-{pid}");
        let uds = uds_path(&format!("benchrpc-test-{pid}"));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut srv = Running::start(ServerKind::SpinThenPark, &name, &uds, None).unwrap();
        let mut base = Running::start(ServerKind::Uds, &name, &uds, None).unwrap();
        rt.block_on(async {
            let clients = connect(&name, false, 2).await.unwrap();
            assert_eq!(rpc_unary(&clients[0], 50, 10).await.unwrap().len(), 40);
            let (_, n) = rpc_pipelined(&clients, 2 * PIPELINE as u64 * 3)
                .await
                .unwrap();
            assert_eq!(n, 2 * PIPELINE as u64 * 3);
            assert_eq!(uds_unary(&uds, 50, 10).await.unwrap().len(), 40);
            let streams = uds_connect(&uds, 2).await.unwrap();
            let (_, n) = uds_pipelined(streams, 1000).await.unwrap();
            assert_eq!(n, 1000);
            // The symmetric and streaming cases: every sample comes back, every item
            // is echoed, and the loaded calls run beside whole client streams.
            let sym = connect_symmetric(&name).await.unwrap();
            let total = CALLBACK_BATCH + 5;
            let cb = rpc_callback(&sym, total, 3).await.unwrap();
            assert_eq!(cb.len() as u64, total - 3);
            assert!(cb.iter().all(|&t| t > 0));
            assert_eq!(rpc_bidi(&sym, 500).await.unwrap().1, 500);
            assert_eq!(rpc_hol(&sym, 300, 10, true).await.unwrap().len(), 290);
            assert_eq!(rpc_hol(&sym, 50, 10, false).await.unwrap().len(), 40);
        });
        srv.stop().unwrap();
        base.stop().unwrap();
        assert!(!uds.exists(), "the baseline's socket file is removed");
    }
}
