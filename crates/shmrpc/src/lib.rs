//! # shmrpc
//!
//! Fast, trustworthy communication between processes on one host: lock-free rings in
//! shared memory with blocking and async (tokio) APIs.
//!
//! What most programs need is at the crate root: an RPC [`Server`] (built with a
//! [`ServerBuilder`]) and a [`Client`] (or a [`BlockingClient`] for code without an async
//! runtime), agreeing on methods through typed descriptors ([`Unary`], [`Streaming`]), and
//! errors with a wire [`Code`] ([`RpcError`]).
//!
//! The modules:
//!
//! - [`channel`]: messages without RPC: a duplex connection (two rings in one segment)
//!   used blocking or async, by threads, tasks or processes through one code path, and the
//!   Unix-socket handshake that hands it to another process.
//! - [`inspect`]: what a running server reports about itself (`shmrpc inspect`).
//! - [`lowlevel`]: the layers under the channel, for tools and tests that need them:
//!   segments, futexes and doorbells ([`lowlevel::sys`]), the SPSC ring
//!   ([`lowlevel::ring`]) and the frame format ([`lowlevel::frame`]).
//!
//! ```
//! use shmrpc::channel::{self, ChannelConfig};
//!
//! let (mut a, mut b) = channel::pair(&ChannelConfig::default())?;
//! std::thread::spawn(move || {
//!     let msg = b.recv().unwrap();
//!     let reply = [&b"re: "[..], &msg[..]].concat();
//!     drop(msg);
//!     b.send(&reply).unwrap();
//! });
//! a.send(b"hello")?;
//! assert_eq!(&*a.recv()?, b"re: hello");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Observability
//!
//! With the cargo feature `metrics`, a server whose [`ServerConfig::with_metrics`] is set
//! records series through the `metrics` facade; with `tracing`, each call runs in a span.
//! Without the features the hooks compile to nothing.
//!
//! Series (all prefixed `shmrpc_`):
//!
//! | name | kind | labels | what |
//! |---|---|---|---|
//! | `calls_total` | counter | `method` | calls started |
//! | `call_seconds` | histogram | `method` | from the request read to the answer sent |
//! | `errors_total` | counter | `code` | calls that ended with an error, by [`Code`] |
//! | `bytes_received_total` | counter | | request bytes |
//! | `bytes_sent_total` | counter | | response and stream-item bytes |
//! | `backpressure_waits_total` | counter | | requests that waited for a concurrency permit |
//! | `connections` | gauge | | connections being served |
//! | `handshake_failures_total` | counter | | shared-memory handshakes that failed |
//! | `ring_occupancy_bytes` | histogram | | bytes queued towards a client, sampled per heartbeat |
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

#[cfg(not(shmrpc_loom))]
pub mod channel;
#[cfg(not(shmrpc_loom))]
mod rpc;
mod sync;

pub mod lowlevel;

// Inside the crate the layers keep their short paths (`crate::sys`, `crate::ring`, ...).
pub(crate) use lowlevel::sys;
#[cfg(not(shmrpc_loom))]
pub(crate) use lowlevel::{frame, ring};

#[cfg(not(shmrpc_loom))]
pub use rpc::{
    Bidi, BidiCall, BindError, BlockingCallStream, BlockingClient, BlockingClientStream,
    BlockingItemSender, CallContext, CallOptions, CallStream, Client, ClientBuilder, ClientConfig,
    ClientStreamCall, ClientStreaming, Code, ConfigError, ConnectError, InlineContext, ItemBatch,
    ItemSender, ItemSink, ItemStream, ItemWriter, Items, Notification, NotifyContext, Peer,
    RpcError, Server, ServerBuilder, ServerConfig, ServerHandle, Sink, Streaming,
    TypedClientStream, TypedSender, TypedStream, Unary,
};
// The remote transport: TLS, tokens, compression, and where plaintext is allowed.
#[cfg(not(shmrpc_loom))]
pub use rpc::{
    check_connect, check_listen, is_loopback, ClientTls, Compression, HandshakeError,
    InsecureError, ServerTls, TcpClientConfig, TcpServerConfig, TlsError, Token, TokenError,
};
// The codec both ends use for typed calls, and the method id carried in frames.
#[cfg(not(shmrpc_loom))]
pub use rpc::inspect;
#[cfg(not(shmrpc_loom))]
pub use rpc::{decode, encode, method_id};
