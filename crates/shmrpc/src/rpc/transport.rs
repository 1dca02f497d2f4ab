//! Frames over a connection: a shared-memory channel, a TCP stream, or (for unit tests of
//! the server and the client) a pair of in-memory queues.

use std::time::Duration;
use thiserror::Error;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::net::hello::{BoxRead, BoxWrite};
use super::{Code, RpcError};
use crate::channel::{self, RecvError, SendError};
use crate::frame::{self, FrameError, FrameHeader, Kind, Reassembler, ReassemblyError};
use crate::frame::{FLAG_COMPRESSED, FLAG_TO_CALLEE, FLAG_UNCHECKED, FRAME_HEADER_LEN};
use crate::ring::RECORD_HEADER;

/// Largest frame on a TCP connection (larger messages are fragmented).
const TCP_MAX_FRAGMENT: usize = 1 << 20;

/// Which way a frame travels: within a call (from its caller to its callee, or back), or
/// between the two ends of the connection (heartbeats, goodbye), belonging to no call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dir {
    /// From the call's caller to its callee: `Request`, `Cancel`, `Credit` for the callee's
    /// stream.
    ToCallee,
    /// From the callee back to the caller: `Response`, `StreamItem`, `StreamEnd`, `Error`.
    ToCaller,
    /// A connection frame: `Ping`, `Pong`, `Goodbye`.
    Conn,
}

impl Dir {
    /// The frame flags that say so.
    pub(crate) fn flags(self) -> u16 {
        match self {
            Dir::ToCallee => FLAG_TO_CALLEE,
            Dir::ToCaller | Dir::Conn => 0,
        }
    }

    /// Whether a received frame's flags say it travels to its callee.
    pub(crate) fn to_callee(flags: u16) -> bool {
        flags & FLAG_TO_CALLEE != 0
    }
}

/// Why a connection cannot carry frames any more (or, `TooLarge`, one message).
#[derive(Debug, Error)]
pub(crate) enum TransportError {
    /// The peer closed or died.
    #[error("the peer is gone")]
    Gone(#[source] Cause),
    /// The peer sent something that is not a valid frame, or broke the ring.
    #[error("the peer broke the protocol")]
    Protocol(#[source] Cause),
    /// One message was over the size limit and was skipped; the connection goes on.
    #[error("message too large")]
    TooLarge {
        /// Its call.
        call_id: u64,
        /// Its method.
        method: u32,
        /// Whether it travelled to its callee (a request) or to its caller (an answer).
        to_callee: bool,
        /// Its kind (a notification's refusal answers nothing: it returns its credit).
        kind: Kind,
        /// The reassembler's refusal.
        #[source]
        source: ReassemblyError,
    },
}

/// What failed underneath a [`TransportError`].
#[derive(Debug, Error)]
pub(crate) enum Cause {
    /// Sending on the shared-memory channel.
    #[error("channel send failed")]
    Send(#[source] SendError),
    /// Receiving from the shared-memory channel.
    #[error("channel receive failed")]
    Recv(#[source] RecvError),
    /// Reading or writing the TCP stream.
    #[error("socket i/o failed")]
    Io(#[source] std::io::Error),
    /// Encoding or decoding a frame.
    #[error("bad frame")]
    Frame(#[source] FrameError),
    /// Fragments that do not make a message.
    #[error("bad fragments")]
    Reassembly(#[source] ReassemblyError),
    /// A TCP frame header announcing more than a fragment may hold.
    #[error("frame of {0} bytes exceeds the {TCP_MAX_FRAGMENT}-byte fragment limit")]
    Oversized(u32),
    /// A frame began and did not arrive whole in time (a slow or stalled sender).
    #[error("a frame begun was not complete within {0:?}")]
    SlowFrame(Duration),
    /// A compressed frame that does not decompress, claims to expand past the fragment
    /// limit, or came on a connection that did not negotiate compression.
    #[error("bad compressed frame: {0}")]
    Compression(&'static str),
    /// A frame without a CRC ([`FLAG_UNCHECKED`]) on a TCP connection.
    #[error("a frame without a CRC came over TCP (only shared memory may send one)")]
    Unchecked,
    /// The peer closed its end (TCP end of stream, or the in-memory peer dropped).
    #[error("connection closed")]
    Closed,
}

fn reassembly(e: ReassemblyError) -> TransportError {
    match e {
        ReassemblyError::TooLarge {
            call_id,
            method,
            flags,
            kind,
            ..
        } => TransportError::TooLarge {
            call_id,
            method,
            to_callee: Dir::to_callee(flags),
            kind,
            source: e,
        },
        other => TransportError::Protocol(Cause::Reassembly(other)),
    }
}

fn frame_error(e: FrameError) -> TransportError {
    TransportError::Protocol(Cause::Frame(e))
}

/// The error and its sources, as one line (`RpcError` carries a message, not a source).
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        next = cause.source();
    }
    s
}

impl From<TransportError> for RpcError {
    fn from(e: TransportError) -> Self {
        let code = match e {
            TransportError::Gone(_) => Code::PeerGone,
            TransportError::Protocol(_) => Code::Protocol,
            TransportError::TooLarge { .. } => Code::TooLarge,
        };
        RpcError::new(code, chain(&e))
    }
}

/// One whole message on an in-memory transport.
pub(crate) type MemFrame = (FrameHeader, Vec<u8>);

/// Two connected in-memory transports (`(tx, rx)` of each end), each direction a queue of
/// `depth` whole messages (a full queue makes the sender wait, as a full ring does). For
/// unit tests of the server and the client without shared memory or sockets.
#[cfg(test)]
pub(crate) fn mem_pair(
    depth: usize,
    max_message: usize,
) -> ((FrameTx, FrameRx), (FrameTx, FrameRx)) {
    let (a_tx, b_rx) = mpsc::channel(depth);
    let (b_tx, a_rx) = mpsc::channel(depth);
    (
        (FrameTx::Mem(a_tx), FrameRx::Mem(a_rx, max_message)),
        (FrameTx::Mem(b_tx), FrameRx::Mem(b_rx, max_message)),
    )
}

/// The sending half.
#[derive(Debug)]
pub(crate) enum FrameTx {
    Shm(channel::Sender, Vec<u8>),
    Tcp(NetTx),
    /// Whole messages into an in-memory queue (no fragments, no encoding).
    #[cfg_attr(not(test), allow(dead_code))]
    Mem(mpsc::Sender<MemFrame>),
}

/// Longest message sent as one frame on TCP: a longer one goes as fragments of this size,
/// and other messages may go between them.
const TCP_SHORT: usize = 64 << 10;

/// Longest message sent as one frame on a shared-memory ring of `capacity` bytes: half the
/// ring, less the ring's record header and the frame header. (Smaller fragments leave
/// less of a long message in the ring ahead of a short one, but cost more per byte in
/// wake-ups than they save: with an eighth of the ring, a 100-byte call beside a bulk
/// stream waited ~15x its idle time at p50 in `shmrpc bench --only rpc.hol`, with half
/// the ring ~8x.)
fn shm_short(capacity: usize) -> usize {
    (capacity / 2).saturating_sub(RECORD_HEADER + FRAME_HEADER_LEN)
}

fn send_error(e: SendError) -> TransportError {
    match e {
        SendError::Corrupt(_) => TransportError::Protocol(Cause::Send(e)),
        e => TransportError::Gone(Cause::Send(e)),
    }
}

impl FrameTx {
    /// The longest message sent as one frame. A longer one goes as fragments of at most
    /// this size, and whole messages may go between them (frame version 3), so that a
    /// short message waits behind at most one fragment of a long one, not all of it.
    pub(crate) fn short_limit(&self) -> usize {
        match self {
            FrameTx::Shm(s, _) => shm_short(s.capacity()),
            FrameTx::Tcp(..) => TCP_SHORT,
            FrameTx::Mem(_) => usize::MAX,
        }
    }

    /// Sends one message, fragmented to fit, as consecutive frames. (The connection's
    /// [`Link`](super::session::Link) sends long messages a fragment at a time instead,
    /// letting short ones go between.)
    #[cfg(test)]
    pub(crate) async fn send(
        &mut self,
        dir: Dir,
        kind: Kind,
        method: u32,
        call_id: u64,
        payload: &[u8],
    ) -> Result<(), TransportError> {
        self.send_parts(dir, kind, method, call_id, &[payload])
            .await
    }

    /// [`send`](Self::send) for a payload in pieces.
    #[cfg(test)]
    pub(crate) async fn send_parts(
        &mut self,
        dir: Dir,
        kind: Kind,
        method: u32,
        call_id: u64,
        parts: &[&[u8]],
    ) -> Result<(), TransportError> {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        if total <= self.short_limit() {
            let h = header(dir, kind, method, call_id, 0);
            return self.send_frame(h, parts).await;
        }
        let payload = parts.concat();
        for (flags, part) in frame::fragments(&payload, self.short_limit()) {
            let h = header(dir, kind, method, call_id, flags);
            self.send_frame(h, &[part]).await?;
        }
        Ok(())
    }

    /// Sends one short message (at most [`short_limit`](Self::short_limit) bytes) only if
    /// it can go at once, without waiting: `Ok(true)` if it was sent, `Ok(false)` if it
    /// would have to wait (full ring or queue, or a TCP stream), in which case nothing was
    /// sent. Errors are left to the waiting [`send_frame`](Self::send_frame), which
    /// reports them.
    pub(crate) fn try_send_parts(
        &mut self,
        dir: Dir,
        kind: Kind,
        method: u32,
        call_id: u64,
        parts: &[&[u8]],
    ) -> Result<bool, TransportError> {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        let mut header = header(dir, kind, method, call_id, 0);
        header.len = total as u32;
        match self {
            FrameTx::Mem(q) => match q.try_send((header, parts.concat())) {
                Ok(()) => Ok(true),
                Err(mpsc::error::TrySendError::Full(_)) => Ok(false),
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    Err(TransportError::Gone(Cause::Closed))
                }
            },
            FrameTx::Shm(s, _) if total <= shm_short(s.capacity()) => {
                match s.producer().try_reserve(FRAME_HEADER_LEN + total) {
                    Ok(mut grant) => {
                        encode_shm(&mut grant, header, parts)?;
                        grant.commit(0);
                        Ok(true)
                    }
                    Err(_) => Ok(false),
                }
            }
            // A long message goes a fragment at a time, and a TCP write may go out in
            // part: both wait.
            FrameTx::Shm(..) | FrameTx::Tcp(..) => Ok(false),
        }
    }

    /// Waits until one fragment of a long message, of `len` payload bytes, fits (on TCP
    /// the kernel's buffer decides: at once). Cancel-safe, nothing is sent: the sender of
    /// a long message waits here, not in [`send_frame`](Self::send_frame), so that it can
    /// give way to a short message meanwhile.
    pub(crate) async fn wait_room_for_fragment(
        &mut self,
        len: usize,
    ) -> Result<(), TransportError> {
        if let FrameTx::Shm(s, _) = self {
            s.wait_room_async(FRAME_HEADER_LEN + len)
                .await
                .map_err(send_error)?;
        }
        Ok(())
    }

    /// Sends one frame with header `h` (its `len` is taken from `parts`): a whole short
    /// message, or one fragment of a long one, waiting for room. Written straight into
    /// the ring when it has room, with no intermediate buffer.
    pub(crate) async fn send_frame(
        &mut self,
        mut h: FrameHeader,
        parts: &[&[u8]],
    ) -> Result<(), TransportError> {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        h.len = total as u32;
        match self {
            FrameTx::Mem(q) => q
                .send((h, parts.concat()))
                .await
                .map_err(|_| TransportError::Gone(Cause::Closed)),
            FrameTx::Shm(s, buf) => {
                if let Ok(mut grant) = s.producer().try_reserve(FRAME_HEADER_LEN + total) {
                    encode_shm(&mut grant, h, parts)?;
                    grant.commit(0);
                    return Ok(());
                }
                // Full (or closed, or broken): wait, or report why.
                buf.resize(FRAME_HEADER_LEN + total, 0);
                encode_shm(buf, h, parts)?;
                s.send_tagged_async(0, buf, None).await.map_err(send_error)
            }
            FrameTx::Tcp(net) => net.send_frame(h, parts).await,
        }
    }
}

/// Writes a frame for a shared-memory ring: without a CRC (why: [`FLAG_UNCHECKED`]).
fn encode_shm(out: &mut [u8], mut h: FrameHeader, parts: &[&[u8]]) -> Result<(), TransportError> {
    h.flags |= FLAG_UNCHECKED;
    frame::encode_parts_into(out, &h, parts).map_err(frame_error)
}

/// The header of a frame of a message (its `len` is set when the frame is encoded).
pub(crate) fn header(
    dir: Dir,
    kind: Kind,
    method: u32,
    call_id: u64,
    fragment: u16,
) -> FrameHeader {
    FrameHeader {
        kind,
        flags: fragment | dir.flags(),
        method,
        call_id,
        len: 0,
    }
}

/// How many spare buffers a connection keeps for the messages it reads, and the largest
/// it keeps: at most 128 KiB per connection, whatever the traffic; a buffer larger than
/// that is freed.
const POOL_BUFS: usize = 8;
const POOL_KEEP: usize = 16 << 10;

/// The buffers one connection reads its messages into, given back when the engine or the
/// caller is done with them: a unary call whose answer is copied or swapped out
/// ([`Client::call_raw_into`](crate::Client::call_raw_into)), a handler's request or
/// response once sent. A warm connection then reads without allocating. Shared by the
/// reader (which takes) and the callers and handlers (which give), through a bounded
/// lock-free queue.
#[derive(Debug)]
pub(crate) struct BufPool {
    /// Lock-free: a mutex here cost more than the allocation it saves (two lock round
    /// trips per message against malloc's thread cache).
    bufs: crossbeam_queue::ArrayQueue<Vec<u8>>,
}

impl Default for BufPool {
    fn default() -> Self {
        Self {
            bufs: crossbeam_queue::ArrayQueue::new(POOL_BUFS),
        }
    }
}

impl BufPool {
    /// An empty buffer for a message of `len` bytes: a spare one if there is one.
    pub(crate) fn take(&self, len: usize) -> Vec<u8> {
        if len > POOL_KEEP {
            // No spare is large enough, and the buffer will not come back.
            return Vec::with_capacity(len);
        }
        let mut v = self.bufs.pop().unwrap_or_default();
        v.reserve(len);
        v
    }

    /// Keeps `v` for a later message, if it is not too large and there is room.
    pub(crate) fn give(&self, mut v: Vec<u8>) {
        if v.capacity() == 0 || v.capacity() > POOL_KEEP {
            return;
        }
        v.clear();
        // Full: `v` is freed.
        let _ = self.bufs.push(v);
    }

    /// How many spare buffers there are (for tests).
    #[cfg(test)]
    pub(crate) fn spare(&self) -> usize {
        self.bufs.len()
    }
}

/// The receiving half, with reassembly bounded by the maximum message size.
#[derive(Debug)]
pub(crate) enum FrameRx {
    /// A ring, with the buffers its messages are copied into.
    Shm(channel::Receiver, Reassembler, std::sync::Arc<BufPool>),
    Tcp(NetRx),
    /// Whole messages from an in-memory queue, and the largest accepted.
    #[cfg_attr(not(test), allow(dead_code))]
    Mem(mpsc::Receiver<MemFrame>, usize),
}

impl FrameRx {
    pub(crate) fn shm(rx: channel::Receiver, max_message: usize) -> Self {
        FrameRx::Shm(rx, Reassembler::new(max_message), std::sync::Arc::default())
    }

    /// The buffers this half reads into, for whoever ends up with its messages to give
    /// back: only a ring's messages are copied into pooled buffers.
    pub(crate) fn pool(&self) -> Option<std::sync::Arc<BufPool>> {
        match self {
            FrameRx::Shm(_, _, pool) => Some(pool.clone()),
            FrameRx::Tcp(..) | FrameRx::Mem(..) => None,
        }
    }

    /// Whether a frame is there to be read now (always `false` for TCP, which would need
    /// a system call to tell).
    pub(crate) fn has_frame(&mut self) -> bool {
        match self {
            FrameRx::Shm(rx, ..) => rx.consumer().has_event(),
            FrameRx::Tcp(..) => false,
            FrameRx::Mem(q, _) => !q.is_empty(),
        }
    }

    /// For a reader that does not read for now (its queue is full): never returns, but
    /// meanwhile gives back the space of padding records the peer writes (a record that
    /// does not fit before the ring's end is preceded by padding, which only the reader
    /// consumes). Without that, the peer's next large message could not fit until this
    /// end read again, and this end may be waiting for the peer to read its own answers:
    /// both would stop for good. Cancel-safe; reads no message.
    async fn release_padding(&mut self) -> std::convert::Infallible {
        if let FrameRx::Shm(rx, ..) = self {
            // Returns once a message (or the close, or an error) waits: the next `recv`
            // reads or reports it.
            let _ = rx.ready_async().await;
        }
        std::future::pending().await
    }

    /// [`recv`](Self::recv) if `read`, else [`release_padding`](Self::release_padding)
    /// (which never returns). Cancel-safe.
    pub(crate) async fn recv_if(
        &mut self,
        read: bool,
    ) -> Result<(FrameHeader, Vec<u8>), TransportError> {
        if !read {
            match self.release_padding().await {}
        }
        self.recv().await
    }

    /// The next whole message if it is in the ring now, without waiting; `Ok(None)` if
    /// it is not (always for TCP and the in-memory queue, where telling would need a
    /// system call or is for tests only). For the reader, which drains a burst of frames
    /// before it looks at its other events again. Fragments of a long message that are
    /// there are taken in, and `Ok(None)` returned if its last one is not there yet.
    ///
    /// # Errors
    /// As [`recv`](Self::recv).
    pub(crate) fn try_recv(&mut self) -> Result<Option<(FrameHeader, Vec<u8>)>, TransportError> {
        let FrameRx::Shm(rx, re, pool) = self else {
            return Ok(None);
        };
        loop {
            let msg = match rx.try_recv() {
                Ok(msg) => msg,
                Err(channel::TryRecvError::Empty) => return Ok(None),
                Err(channel::TryRecvError::Closed) => {
                    return Err(TransportError::Gone(Cause::Recv(RecvError::Closed)))
                }
                Err(channel::TryRecvError::Corrupt(c)) => {
                    return Err(recv_error(RecvError::Corrupt(c)))
                }
            };
            if let Some(whole) = shm_frame(&msg, re, pool)? {
                return Ok(Some(whole));
            }
        }
    }

    /// The next whole message. Garbage is a protocol error: the connection is done.
    pub(crate) async fn recv(&mut self) -> Result<(FrameHeader, Vec<u8>), TransportError> {
        loop {
            let whole = match self {
                FrameRx::Shm(rx, re, pool) => {
                    let msg = rx.recv_async().await.map_err(recv_error)?;
                    shm_frame(&msg, re, pool)?
                }
                FrameRx::Tcp(net) => net.recv().await?,
                FrameRx::Mem(q, max) => {
                    let (h, payload) = q.recv().await.ok_or(TransportError::Gone(Cause::Closed))?;
                    if payload.len() > *max {
                        return Err(TransportError::TooLarge {
                            call_id: h.call_id,
                            method: h.method,
                            to_callee: Dir::to_callee(h.flags),
                            kind: h.kind,
                            source: ReassemblyError::TooLarge {
                                max: *max,
                                call_id: h.call_id,
                                method: h.method,
                                kind: h.kind,
                                flags: h.flags,
                            },
                        });
                    }
                    Some((h, payload))
                }
            };
            if let Some(w) = whole {
                return Ok(w);
            }
        }
    }
}

/// A failed receive from a ring: corruption is the peer's fault (a protocol error), the
/// rest means it is gone.
fn recv_error(e: RecvError) -> TransportError {
    match e {
        RecvError::Corrupt(_) => TransportError::Protocol(Cause::Recv(e)),
        e => TransportError::Gone(Cause::Recv(e)),
    }
}

/// One record of a ring, a frame: its message if the frame completes one (a whole message
/// or the last fragment of a long one). Garbage is a protocol error.
fn shm_frame(
    msg: &[u8],
    re: &mut Reassembler,
    pool: &BufPool,
) -> Result<Option<(FrameHeader, Vec<u8>)>, TransportError> {
    let (mut h, payload) = frame::decode(msg).map_err(frame_error)?;
    // Checked or not (the sender chooses), the frame is the same message from here on.
    h.flags &= !FLAG_UNCHECKED;
    if h.flags & FLAG_COMPRESSED != 0 {
        return Err(TransportError::Protocol(Cause::Compression(
            "compressed frame on shared memory",
        )));
    }
    Ok(re.push(&h, payload).map_err(reassembly)?.map(|(h, p)| {
        let p = match p {
            std::borrow::Cow::Borrowed(p) => {
                let mut v = pool.take(p.len());
                v.extend_from_slice(p);
                v
            }
            // Reassembled from fragments: already a buffer of its own.
            std::borrow::Cow::Owned(v) => v,
        };
        (h, p)
    }))
}

/// The sending half of a TCP connection (plain or TLS) after its handshake.
pub(crate) struct NetTx {
    w: BoxWrite,
    buf: Vec<u8>,
    /// Compress payloads above this many bytes (when the connection negotiated it).
    compress_above: Option<usize>,
    /// After a payload that did not shrink, the next `skip` go as they are, and `backoff`
    /// doubles (up to [`MAX_SKIP`]); one that shrinks resets it. Incompressible data
    /// (media, encrypted, already compressed) then costs an attempt only now and then.
    skip: u32,
    backoff: u32,
}

/// The most frames sent uncompressed, untried, after failed attempts.
const MAX_SKIP: u32 = 64;

impl std::fmt::Debug for NetTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetTx")
            .field("compress_above", &self.compress_above)
            .finish_non_exhaustive()
    }
}

impl NetTx {
    pub(crate) fn new(w: BoxWrite, compress_above: Option<usize>) -> Self {
        Self {
            w,
            buf: Vec::new(),
            compress_above,
            skip: 0,
            backoff: 1,
        }
    }

    async fn send_frame(
        &mut self,
        mut h: FrameHeader,
        parts: &[&[u8]],
    ) -> Result<(), TransportError> {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        let packed = match self.compress_above {
            Some(above) if total > above => self.try_compress(parts, total),
            _ => None,
        };
        let buf = &mut self.buf;
        match &packed {
            Some(p) => {
                h.flags |= FLAG_COMPRESSED;
                h.len = p.len() as u32;
                buf.resize(FRAME_HEADER_LEN + p.len(), 0);
                frame::encode_parts_into(buf, &h, &[p]).map_err(frame_error)?;
            }
            None => {
                h.len = total as u32;
                buf.resize(FRAME_HEADER_LEN + total, 0);
                frame::encode_parts_into(buf, &h, parts).map_err(frame_error)?;
            }
        }
        let gone = |e| TransportError::Gone(Cause::Io(e));
        self.w.write_all(buf).await.map_err(gone)?;
        // TLS holds written records until flushed; for plain TCP this is a no-op.
        self.w.flush().await.map_err(gone)
    }
}

impl NetTx {
    /// [`compress`], unless recent attempts failed (see `skip`).
    fn try_compress(&mut self, parts: &[&[u8]], total: usize) -> Option<Vec<u8>> {
        if self.skip > 0 {
            self.skip -= 1;
            return None;
        }
        let packed = compress(parts, total);
        if packed.is_some() {
            self.backoff = 1;
        } else {
            self.skip = self.backoff;
            self.backoff = (self.backoff * 2).min(MAX_SKIP);
        }
        packed
    }
}

/// The payload lz4-compressed, prefixed by its length (u32 LE), if that is smaller.
fn compress(parts: &[&[u8]], total: usize) -> Option<Vec<u8>> {
    let raw = parts.concat();
    let packed = lz4_flex::block::compress(&raw);
    (packed.len() + 4 < total).then(|| {
        let mut out = Vec::with_capacity(4 + packed.len());
        out.extend_from_slice(&(total as u32).to_le_bytes());
        out.extend_from_slice(&packed);
        out
    })
}

/// A compressed frame's payload, expanded: at most [`TCP_MAX_FRAGMENT`] bytes whatever it
/// claims, so a small frame cannot expand into gigabytes.
fn decompress(payload: &[u8]) -> Result<Vec<u8>, TransportError> {
    let bad = |why| TransportError::Protocol(Cause::Compression(why));
    let (len, packed) = payload
        .split_first_chunk::<4>()
        .ok_or(bad("shorter than its length prefix"))?;
    let len = u32::from_le_bytes(*len) as usize;
    if len > TCP_MAX_FRAGMENT {
        return Err(bad("claims to expand past the fragment limit"));
    }
    let mut out = vec![0u8; len];
    match lz4_flex::block::decompress_into(packed, &mut out) {
        Ok(n) if n == len => Ok(out),
        Ok(_) => Err(bad("expands to another length than it claims")),
        Err(_) => Err(bad("not valid lz4, or larger than it claims")),
    }
}

/// The receiving half of a TCP connection (plain or TLS) after its handshake.
///
/// Reads in chunks of up to [`NET_READ`] bytes into `buf` and takes frames from it, so
/// that a burst of small frames costs one read, not two per frame (header, payload).
pub(crate) struct NetRx {
    r: BoxRead,
    re: Reassembler,
    /// Bytes read and not yet taken: `buf[start..end]`.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Whether the connection negotiated compression.
    lz4: bool,
    /// How long a frame may take once begun, and when the current one began.
    frame_timeout: Duration,
    began: Option<Instant>,
}

/// The most a single read asks for (more when one frame is larger).
const NET_READ: usize = 64 << 10;

impl std::fmt::Debug for NetRx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetRx")
            .field("buffered", &(self.end - self.start))
            .field("lz4", &self.lz4)
            .finish_non_exhaustive()
    }
}

impl NetRx {
    pub(crate) fn new(r: BoxRead, max_message: usize, lz4: bool, frame_timeout: Duration) -> Self {
        Self {
            r,
            re: Reassembler::new(max_message),
            buf: Vec::new(),
            start: 0,
            end: 0,
            lz4,
            frame_timeout,
            began: None,
        }
    }

    /// The length of the whole frame at `buf[start..]`, once its header is in.
    fn next_frame_len(&self) -> Result<Option<usize>, TransportError> {
        if self.end - self.start < FRAME_HEADER_LEN {
            return Ok(None);
        }
        let h = frame::decode_header(&self.buf[self.start..self.start + FRAME_HEADER_LEN])
            .map_err(frame_error)?;
        if h.len as usize > TCP_MAX_FRAGMENT {
            return Err(TransportError::Protocol(Cause::Oversized(h.len)));
        }
        Ok(Some(FRAME_HEADER_LEN + h.len as usize))
    }

    /// Reads one frame and passes it to the reassembler: a whole message, or `None` for
    /// a fragment that does not complete one. Cancel-safe: callers race it against
    /// timers, so bytes read stay in `buf` until taken; each `read` either completes or
    /// takes nothing.
    async fn recv(&mut self) -> Result<Option<(FrameHeader, Vec<u8>)>, TransportError> {
        let total = loop {
            let want = match self.next_frame_len()? {
                Some(total) if self.end - self.start >= total => break total,
                Some(total) => total,
                None => FRAME_HEADER_LEN,
            };
            // Room for the rest of this frame, and a chunk more: move what is buffered to
            // the front, grow if one frame needs it.
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            let size = want.max(NET_READ);
            if self.buf.len() < size {
                self.buf.resize(size, 0);
            }
            let read = self.r.read(&mut self.buf[self.end..]);
            // Between frames a connection may be quiet as long as it likes (heartbeats
            // find a dead peer); inside one, only for `frame_timeout`.
            let n = match self.began {
                None => read.await,
                Some(t) => match tokio::time::timeout_at(t + self.frame_timeout, read).await {
                    Ok(r) => r,
                    Err(_) => {
                        return Err(TransportError::Protocol(Cause::SlowFrame(
                            self.frame_timeout,
                        )))
                    }
                },
            }
            .map_err(|e| TransportError::Gone(Cause::Io(e)))?;
            if n == 0 {
                return Err(TransportError::Gone(Cause::Closed));
            }
            if self.end == self.start {
                self.began = Some(Instant::now());
            }
            self.end += n;
        };
        let at = self.start;
        self.start += total;
        // A frame that began in the same read as this one began no earlier than now.
        self.began = (self.start < self.end).then(Instant::now);
        let (mut h, payload) = frame::decode(&self.buf[at..at + total]).map_err(frame_error)?;
        if h.flags & FLAG_UNCHECKED != 0 {
            // A network is not shared memory: every frame carries its CRC.
            return Err(TransportError::Protocol(Cause::Unchecked));
        }
        if h.flags & FLAG_COMPRESSED == 0 {
            return Ok(self
                .re
                .push(&h, payload)
                .map_err(reassembly)?
                .map(|(h, p)| (h, p.into_owned())));
        }
        if !self.lz4 {
            return Err(TransportError::Protocol(Cause::Compression(
                "compression was not negotiated",
            )));
        }
        let raw = decompress(payload)?;
        h.flags &= !FLAG_COMPRESSED;
        h.len = raw.len() as u32;
        Ok(self
            .re
            .push(&h, &raw)
            .map_err(reassembly)?
            .map(|(h, p)| (h, p.into_owned())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_compression_error(r: Result<Vec<u8>, TransportError>) -> bool {
        matches!(r, Err(TransportError::Protocol(Cause::Compression(_))))
    }

    #[test]
    fn compressed_payloads_expand_only_within_the_fragment_limit() {
        let text = b"diagnostic: unused variable `x`\n".repeat(2000);
        let packed = compress(&[&text[..10], &text[10..]], text.len()).expect("it shrinks");
        assert!(packed.len() < text.len() / 10);
        assert_eq!(decompress(&packed).unwrap(), text);

        // Incompressible bytes are not sent compressed.
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        assert!(compress(&[&noise], noise.len()).is_none());

        // A bomb: a few bytes that claim a gigabyte are refused before any allocation.
        let mut bomb = (1u32 << 30).to_le_bytes().to_vec();
        bomb.extend_from_slice(&packed[4..]);
        assert!(is_compression_error(decompress(&bomb)));
        // Just over the limit, just as much.
        let mut over = ((TCP_MAX_FRAGMENT + 1) as u32).to_le_bytes().to_vec();
        over.extend_from_slice(&packed[4..]);
        assert!(is_compression_error(decompress(&over)));
        // A claim smaller than what the block expands to: refused, no overrun.
        let mut short = ((text.len() / 2) as u32).to_le_bytes().to_vec();
        short.extend_from_slice(&packed[4..]);
        assert!(is_compression_error(decompress(&short)));
        // A claim larger than what it expands to.
        let mut long = ((text.len() + 1) as u32).to_le_bytes().to_vec();
        long.extend_from_slice(&packed[4..]);
        assert!(is_compression_error(decompress(&long)));
        // Truncated, or no prefix at all.
        assert!(is_compression_error(decompress(
            &packed[..packed.len() / 2]
        )));
        assert!(is_compression_error(decompress(&[1, 2])));
    }

    #[test]
    fn after_payloads_that_do_not_shrink_attempts_back_off_and_resume_on_success() {
        let mut tx = NetTx::new(Box::new(tokio::io::sink()), Some(0));
        let text = b"progress: 42% of the index built\n".repeat(100);
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        let noise: Vec<u8> = (0..text.len())
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let mut attempts = 0;
        for _ in 0..200 {
            let skipping = tx.skip > 0;
            assert!(tx.try_compress(&[&noise], noise.len()).is_none());
            attempts += usize::from(!skipping);
        }
        // 1 + 1 + 2 + 4 + ... + 64, then one per 65: far fewer than 200.
        assert!(
            (5..=12).contains(&attempts),
            "{attempts} attempts for 200 frames"
        );
        // Compressible data is compressed again once the current skip runs out.
        let mut sent_plain = 0;
        while tx.try_compress(&[&text], text.len()).is_none() {
            sent_plain += 1;
            assert!(sent_plain <= MAX_SKIP, "compression never resumed");
        }
        assert!(
            tx.try_compress(&[&text], text.len()).is_some(),
            "backoff not reset"
        );
    }

    /// The pool reuses what it is given, and bounds what it keeps: no empty buffer, none
    /// over `POOL_KEEP`, at most `POOL_BUFS`.
    #[test]
    fn the_buffer_pool_reuses_buffers_and_keeps_a_bounded_few() {
        let pool = BufPool::default();
        let mut v = pool.take(100);
        assert!(v.capacity() >= 100);
        v.extend_from_slice(b"old contents");
        let ptr = v.as_ptr();
        pool.give(v);
        let again = pool.take(10);
        assert_eq!(
            again.as_ptr(),
            ptr,
            "the buffer given back is the one taken"
        );
        assert!(again.is_empty(), "a reused buffer comes empty");
        pool.give(Vec::new());
        pool.give(Vec::with_capacity(POOL_KEEP + 1));
        assert_eq!(pool.spare(), 0, "empty and oversized buffers are not kept");
        for _ in 0..POOL_BUFS + 5 {
            pool.give(Vec::with_capacity(64));
        }
        assert_eq!(pool.spare(), POOL_BUFS);
        // A spare buffer too small for the message grows to fit it.
        assert!(pool.take(POOL_KEEP).capacity() >= POOL_KEEP);
        assert_eq!(pool.spare(), POOL_BUFS - 1);
        // A message larger than any spare takes none.
        assert!(pool.take(POOL_KEEP + 1).capacity() > POOL_KEEP);
        assert_eq!(pool.spare(), POOL_BUFS - 1);
    }
}
