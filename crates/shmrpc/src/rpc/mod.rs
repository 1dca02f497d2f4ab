//! The RPC runtime: servers that route calls by method name to typed or raw handlers,
//! clients that call them, over a shared-memory channel (same host) or TCP (another host),
//! with the same frames either way.
//!
//! - Unary calls ([`Client::call`]), server-streaming calls ([`Client::call_stream`]),
//!   client-streaming calls ([`Client::call_client_stream`]) and bidirectional calls
//!   ([`Client::call_bidi`]), each stream paced by its reader's credit; many calls in
//!   flight per connection, from many tasks.
//! - Either end serves: a client may register methods too ([`ClientBuilder`]), and a
//!   server's handlers call their caller back ([`CallContext::peer`]), or the server calls
//!   any connected client ([`ServerHandle::peers`]), on the same connection.
//! - Cancellation: dropping a call (or its stream) sends `Cancel`; the handler sees it on
//!   [`CallContext::cancelled`]. A client's death cancels all its calls.
//! - Deadlines per call, enforced on both sides.
//! - Bounded concurrency per connection: past the limit requests wait in a queue of the
//!   same length; when that is full too the server stops reading that connection, so the
//!   ring fills and the client waits (backpressure).
//! - Heartbeats; graceful shutdown that finishes in-flight calls.
//! - Errors carry a [`Code`].
//!
//! Wire format: see `docs/protocol.md`.
#![forbid(unsafe_code)]

mod blocking;
mod client;
mod config;
mod error;
pub mod inspect;
mod method;
pub(crate) mod net;
pub(crate) mod obs;
mod server;
mod session;
mod transport;

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use serde::{de::DeserializeOwned, Serialize};

pub use blocking::{BlockingCallStream, BlockingClient, BlockingClientStream, BlockingItemSender};
pub use client::{Client, ClientBuilder, ClientConfig};
pub use config::{ConfigError, ServerConfig};
pub use error::{BindError, ConnectError};
pub use method::{
    Bidi, ClientStreaming, Notification, Sink, Streaming, TypedClientStream, TypedSender,
    TypedStream, Unary,
};
pub use net::hello::HandshakeError;
pub use net::{
    check_connect, check_listen, is_loopback, ClientTls, Compression, InsecureError, ServerTls,
    TcpClientConfig, TcpServerConfig, TlsError, Token, TokenError,
};
pub use server::{Server, ServerBuilder, ServerHandle};
pub use session::{
    BidiCall, CallContext, CallOptions, CallStream, ClientStreamCall, InlineContext, ItemBatch,
    ItemSender, ItemSink, ItemStream, ItemWriter, Items, NotifyContext, Peer,
};

/// Why a call failed. The numeric values are part of the wire format.
///
/// New codes may be added: match with a wildcard arm. A value this version does not know
/// (from a newer peer, or a broken one) decodes as [`Code::Protocol`], so decoding never
/// fails.
///
/// # Examples
///
/// ```
/// use shmrpc::Code;
///
/// assert_eq!(Code::DeadlineExceeded as u16, 4);
/// assert_ne!(Code::Cancelled, Code::PeerGone);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
#[non_exhaustive]
pub enum Code {
    /// No handler for the method.
    UnknownMethod = 1,
    /// The request could not be decoded.
    BadRequest = 2,
    /// The handler returned an error or panicked.
    HandlerFailed = 3,
    /// The deadline passed.
    DeadlineExceeded = 4,
    /// The call was cancelled.
    Cancelled = 5,
    /// A message is larger than the configured maximum.
    TooLarge = 6,
    /// The connection to the peer is gone.
    PeerGone = 7,
    /// The server is shutting down and takes no new calls.
    ShuttingDown = 8,
    /// The peer broke the protocol (garbage frames, wrong version).
    Protocol = 9,
    /// Could not connect.
    Unavailable = 10,
}

impl Code {
    fn from_u16(v: u16) -> Code {
        match v {
            1 => Code::UnknownMethod,
            2 => Code::BadRequest,
            3 => Code::HandlerFailed,
            4 => Code::DeadlineExceeded,
            5 => Code::Cancelled,
            6 => Code::TooLarge,
            7 => Code::PeerGone,
            8 => Code::ShuttingDown,
            10 => Code::Unavailable,
            _ => Code::Protocol,
        }
    }
}

/// An RPC error: a code and a human-readable message, and for an error raised on this side
/// the error that caused it ([`source`](std::error::Error::source)).
///
/// Only the code and the text cross the wire: an error sent to the peer carries its message
/// followed by the messages of its sources, so the peer sees the whole story as text.
///
/// # Examples
///
/// ```
/// use shmrpc::{Code, RpcError};
///
/// let e = RpcError::new(Code::BadRequest, "missing field `id`");
/// assert_eq!(e.to_string(), "BadRequest: missing field `id`");
/// assert_eq!(RpcError::handler("disk full").code, Code::HandlerFailed);
/// // Handlers return it; callers match on the code.
/// let retry = matches!(e.code, Code::Unavailable | Code::PeerGone);
/// assert!(!retry);
///
/// // A cause is kept as the source, not pasted into the message.
/// let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
/// let e = RpcError::with_source(Code::HandlerFailed, "loading the model", io);
/// assert_eq!(e.to_string(), "HandlerFailed: loading the model");
/// let source = std::error::Error::source(&e).unwrap();
/// assert_eq!(source.to_string(), "no such file");
/// ```
#[derive(Debug, Clone)]
pub struct RpcError {
    /// What kind of failure.
    pub code: Code,
    /// Details.
    pub message: String,
    /// The local cause, if any (never sent as such: see [`RpcError`]).
    source: Option<Arc<dyn std::error::Error + Send + Sync + 'static>>,
}

/// Equal if code and message are: the source is a local detail.
impl PartialEq for RpcError {
    fn eq(&self, other: &Self) -> bool {
        self.code == other.code && self.message == other.message
    }
}

impl Eq for RpcError {}

impl RpcError {
    /// An error with `code` and `message`.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            source: None,
        }
    }

    /// An error with `code` and `message` (what was being done), caused by `source`.
    pub fn with_source(
        code: Code,
        message: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        Self {
            code,
            message: message.into(),
            source: Some(Arc::from(source.into())),
        }
    }

    /// A handler failure with `message`.
    pub fn handler(message: impl Into<String>) -> Self {
        Self::new(Code::HandlerFailed, message)
    }

    /// The message and those of every source, joined by `": "`: the text the peer gets.
    fn full_message(&self) -> String {
        let mut m = self.message.clone();
        let mut next = std::error::Error::source(self);
        while let Some(e) = next {
            m.push_str(": ");
            m.push_str(&e.to_string());
            next = e.source();
        }
        m
    }

    fn encode(&self) -> Vec<u8> {
        let message = self.full_message();
        let mut v = Vec::with_capacity(2 + message.len());
        v.extend_from_slice(&(self.code as u16).to_le_bytes());
        v.extend_from_slice(message.as_bytes());
        v
    }

    fn decode(b: &[u8]) -> Self {
        if b.len() < 2 {
            return Self::new(Code::Protocol, "error frame without a code");
        }
        Self::new(
            Code::from_u16(u16::from_le_bytes([b[0], b[1]])),
            String::from_utf8_lossy(&b[2..]).into_owned(),
        )
    }
}

impl fmt::Display for RpcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.code, self.message)
    }
}

impl std::error::Error for RpcError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// The method id carried in frames: FNV-1a of the method name. Servers refuse to register
/// two names with one id.
///
/// # Examples
///
/// ```
/// use shmrpc::method_id;
///
/// const ECHO: u32 = method_id("echo"); // usable in constants
/// assert_eq!(ECHO, method_id("echo"));
/// assert_ne!(ECHO, method_id("Echo"));
/// assert_eq!(method_id(""), 0x811c_9dc5); // the FNV-1a offset basis
/// ```
pub const fn method_id(name: &str) -> u32 {
    let bytes = name.as_bytes();
    let mut h: u32 = 0x811c_9dc5;
    let mut i = 0;
    while i < bytes.len() {
        h ^= bytes[i] as u32;
        h = h.wrapping_mul(0x0100_0193);
        i += 1;
    }
    h
}

/// Encodes a value with the default codec (postcard: compact, varint-based).
///
/// # Errors
/// [`Code::BadRequest`] if the value cannot be serialised.
///
/// # Examples
///
/// ```
/// use shmrpc::{decode, encode};
///
/// let bytes = encode(&(300u32, "hi"))?;
/// assert_eq!(bytes, [0xac, 0x02, 2, b'h', b'i']); // varint 300, then a length-prefixed str
/// let (n, s): (u32, String) = decode(&bytes)?;
/// assert_eq!((n, s.as_str()), (300, "hi"));
/// # Ok::<(), shmrpc::RpcError>(())
/// ```
pub fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, RpcError> {
    let mut out = Vec::new();
    encode_into(v, &mut out)?;
    Ok(out)
}

/// [`encode`], appended to `out` (whose allocation it reuses). What `out` held stays,
/// even when encoding fails part way (the bytes of the failed value may follow it).
pub(crate) fn encode_into<T: Serialize + ?Sized>(v: &T, out: &mut Vec<u8>) -> Result<(), RpcError> {
    postcard::to_extend(v, Append(out))
        .map(drop)
        .map_err(|e| RpcError::with_source(Code::BadRequest, "encoding", e))
}

/// Appends to a borrowed buffer: postcard's writer, which it drops on an error, without
/// the buffer.
struct Append<'a>(&'a mut Vec<u8>);

impl Extend<u8> for Append<'_> {
    fn extend<I: IntoIterator<Item = u8>>(&mut self, bytes: I) {
        self.0.extend(bytes);
    }
}

/// Decodes a value with the default codec.
///
/// # Errors
/// [`Code::BadRequest`] if the bytes are not a `T`.
///
/// # Examples
///
/// ```
/// use shmrpc::Code;
/// use shmrpc::{decode, encode};
///
/// let v: Vec<u16> = decode(&encode(&vec![1u16, 2, 3])?)?;
/// assert_eq!(v, [1, 2, 3]);
/// // Too few bytes for what the header promises.
/// let err = decode::<Vec<u16>>(&[5, 1]).unwrap_err();
/// assert_eq!(err.code, Code::BadRequest);
/// # Ok::<(), shmrpc::RpcError>(())
/// ```
pub fn decode<T: DeserializeOwned>(b: &[u8]) -> Result<T, RpcError> {
    postcard::from_bytes(b).map_err(|e| RpcError::with_source(Code::BadRequest, "decoding", e))
}

/// Request payloads start with the call's remaining time budget in milliseconds
/// (0 = no deadline), so the server enforces the caller's deadline too.
const DEADLINE_PREFIX: usize = 4;

fn split_deadline(payload: &[u8]) -> Option<(Option<std::time::Duration>, &[u8])> {
    let ms = u32::from_le_bytes(payload.get(..DEADLINE_PREFIX)?.try_into().ok()?);
    let d = (ms != 0).then(|| std::time::Duration::from_millis(u64::from(ms)));
    Some((d, &payload[DEADLINE_PREFIX..]))
}

/// Hashes call ids with one multiplication instead of SipHash: a call map is touched several
/// times per call. The map of outgoing calls holds ids this end chose; the map of incoming
/// calls holds the peer's ids, but at most one entry per concurrency permit (`max_in_flight`),
/// and a request reusing an id in flight is refused, so a hostile peer can neither grow it
/// nor overwrite an entry (chosen colliding keys slow only its own connection).
#[derive(Default)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u32(&mut self, v: u32) {
        self.write_u64(u64::from(v));
    }

    fn write_u64(&mut self, v: u64) {
        // Fibonacci hashing: spreads consecutive ids over the high bits hashbrown uses.
        self.0 = v.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// A map keyed by call id (or, with `K = u32`, by method id).
pub(crate) type IdMap<V, K = u64> = HashMap<K, V, BuildHasherDefault<IdHasher>>;

/// Heartbeat periods without a frame from the peer. A frame only sets a flag (reading the
/// clock for every frame cost a `clock_gettime` per message); the heartbeat timer counts.
#[derive(Debug, Default)]
pub(crate) struct Silence {
    heard: bool,
    periods: u32,
}

impl Silence {
    /// A frame arrived.
    pub(crate) fn heard(&mut self) {
        self.heard = true;
    }

    /// At a heartbeat tick: for how many whole periods the peer has been silent (0 if it
    /// was heard since the last tick). Ping at 1; at 3 the peer is gone (silent for more
    /// than three periods, as a frame just after a tick is counted at the next one).
    pub(crate) fn tick(&mut self) -> u32 {
        if std::mem::take(&mut self.heard) {
            self.periods = 0;
        } else {
            self.periods += 1;
        }
        self.periods
    }
}
