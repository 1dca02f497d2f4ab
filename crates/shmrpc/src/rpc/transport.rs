//! Frames over a connection: a shared-memory channel or a TCP stream.

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use super::{Code, RpcError};
use crate::channel::{self, RecvError, SendError};
use crate::frame::{self, FrameHeader, Kind, Reassembler, FRAME_HEADER_LEN};

/// Largest frame on a TCP connection (larger messages are fragmented).
const TCP_MAX_FRAGMENT: usize = 1 << 20;

/// Why a connection cannot carry frames any more.
#[derive(Debug)]
pub(crate) enum TransportError {
    /// The peer closed or died.
    Gone(String),
    /// The peer sent something that is not a valid frame.
    Protocol(String),
    /// One message was over the size limit and was skipped; the connection goes on.
    TooLarge {
        /// Its call.
        call_id: u64,
        /// Its method.
        method: u32,
        /// What it said.
        message: String,
    },
}

fn reassembly(e: crate::frame::ReassemblyError) -> TransportError {
    match e {
        crate::frame::ReassemblyError::TooLarge {
            call_id, method, ..
        } => TransportError::TooLarge {
            call_id,
            method,
            message: e.to_string(),
        },
        other => TransportError::Protocol(other.to_string()),
    }
}

impl From<TransportError> for RpcError {
    fn from(e: TransportError) -> Self {
        match e {
            TransportError::Gone(m) => RpcError::new(Code::PeerGone, m),
            TransportError::Protocol(m) => RpcError::new(Code::Protocol, m),
            TransportError::TooLarge { message, .. } => RpcError::new(Code::TooLarge, message),
        }
    }
}

/// The sending half.
#[derive(Debug)]
pub(crate) enum FrameTx {
    Shm(channel::Sender, Vec<u8>),
    Tcp(OwnedWriteHalf, Vec<u8>),
}

impl FrameTx {
    fn max_fragment(&self) -> usize {
        match self {
            FrameTx::Shm(s, _) => s.max_message() - FRAME_HEADER_LEN,
            FrameTx::Tcp(..) => TCP_MAX_FRAGMENT,
        }
    }

    /// Sends one message, fragmented to fit, as consecutive frames (callers serialise
    /// whole messages, so fragments of two messages never interleave).
    pub(crate) async fn send(
        &mut self,
        kind: Kind,
        method: u32,
        call_id: u64,
        payload: &[u8],
    ) -> Result<(), TransportError> {
        self.send_parts(kind, method, call_id, &[payload]).await
    }

    /// [`send`](Self::send) for a payload in pieces (a request's deadline prefix and its
    /// body). A message that fits one frame and finds room in the ring is written straight
    /// into it, with no intermediate buffer.
    pub(crate) async fn send_parts(
        &mut self,
        kind: Kind,
        method: u32,
        call_id: u64,
        parts: &[&[u8]],
    ) -> Result<(), TransportError> {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        let max = self.max_fragment();
        let header = |flags, len| FrameHeader {
            kind,
            flags,
            method,
            call_id,
            len,
        };
        if let FrameTx::Shm(s, _) = self {
            if total <= max {
                if let Ok(mut grant) = s.producer().try_reserve(FRAME_HEADER_LEN + total) {
                    frame::encode_parts_into(&mut grant, &header(0, total as u32), parts)
                        .map_err(|e| TransportError::Protocol(e.to_string()))?;
                    grant.commit(0);
                    return Ok(());
                }
                // Full (or closed, or broken): the general path waits, or reports why.
            }
        }
        let joined;
        let payload = match parts {
            [one] => *one,
            _ => {
                joined = parts.concat();
                &joined
            }
        };
        for (flags, part) in frame::fragments(payload, max) {
            let h = header(flags, part.len() as u32);
            match self {
                FrameTx::Shm(s, buf) => {
                    buf.resize(FRAME_HEADER_LEN + part.len(), 0);
                    frame::encode_into(buf, &h, part)
                        .map_err(|e| TransportError::Protocol(e.to_string()))?;
                    s.send_tagged_async(0, buf, None)
                        .await
                        .map_err(|e| match e {
                            SendError::Corrupt(c) => TransportError::Protocol(c.to_string()),
                            other => TransportError::Gone(other.to_string()),
                        })?;
                }
                FrameTx::Tcp(w, buf) => {
                    buf.resize(FRAME_HEADER_LEN + part.len(), 0);
                    frame::encode_into(buf, &h, part)
                        .map_err(|e| TransportError::Protocol(e.to_string()))?;
                    w.write_all(buf)
                        .await
                        .map_err(|e| TransportError::Gone(e.to_string()))?;
                }
            }
        }
        Ok(())
    }
}

/// The receiving half, with reassembly bounded by the maximum message size.
#[derive(Debug)]
pub(crate) enum FrameRx {
    Shm(channel::Receiver, Reassembler),
    /// Read half, reassembler, frame buffer, bytes of the current frame already read.
    Tcp(OwnedReadHalf, Reassembler, Vec<u8>, usize),
}

impl FrameRx {
    pub(crate) fn shm(rx: channel::Receiver, max_message: usize) -> Self {
        FrameRx::Shm(rx, Reassembler::new(max_message))
    }

    pub(crate) fn tcp(r: OwnedReadHalf, max_message: usize) -> Self {
        FrameRx::Tcp(r, Reassembler::new(max_message), Vec::new(), 0)
    }

    /// Whether a frame is there to be read now (always `false` for TCP, which would need
    /// a system call to tell).
    pub(crate) fn has_frame(&mut self) -> bool {
        match self {
            FrameRx::Shm(rx, _) => rx.consumer().has_event(),
            FrameRx::Tcp(..) => false,
        }
    }

    /// The next whole message. Garbage is a protocol error: the connection is done.
    pub(crate) async fn recv(&mut self) -> Result<(FrameHeader, Vec<u8>), TransportError> {
        loop {
            let whole = match self {
                FrameRx::Shm(rx, re) => {
                    let msg = rx.recv_async().await.map_err(|e| match e {
                        RecvError::Corrupt(c) => TransportError::Protocol(c.to_string()),
                        other => TransportError::Gone(other.to_string()),
                    })?;
                    let (h, payload) =
                        frame::decode(&msg).map_err(|e| TransportError::Protocol(e.to_string()))?;
                    re.push(&h, payload)
                        .map_err(reassembly)?
                        .map(|(h, p)| (h, p.into_owned()))
                }
                FrameRx::Tcp(r, re, buf, filled) => {
                    // Cancel-safe: callers race `recv` against timers, so the bytes of a
                    // frame read so far stay in `buf` (and `filled`) until it is complete;
                    // each `read` either completes or takes nothing.
                    let total = loop {
                        if *filled >= FRAME_HEADER_LEN {
                            let h = frame::decode_header(&buf[..FRAME_HEADER_LEN])
                                .map_err(|e| TransportError::Protocol(e.to_string()))?;
                            if h.len as usize > TCP_MAX_FRAGMENT {
                                return Err(TransportError::Protocol(format!(
                                    "frame of {} bytes exceeds {TCP_MAX_FRAGMENT}",
                                    h.len
                                )));
                            }
                            let total = FRAME_HEADER_LEN + h.len as usize;
                            if *filled == total {
                                break total;
                            }
                            buf.resize(total, 0);
                        } else {
                            buf.resize(FRAME_HEADER_LEN, 0);
                        }
                        let end = buf.len();
                        let n = r
                            .read(&mut buf[*filled..end])
                            .await
                            .map_err(|e| TransportError::Gone(e.to_string()))?;
                        if n == 0 {
                            return Err(TransportError::Gone("connection closed".into()));
                        }
                        *filled += n;
                    };
                    *filled = 0;
                    let (h, payload) = frame::decode(&buf[..total])
                        .map_err(|e| TransportError::Protocol(e.to_string()))?;
                    re.push(&h, payload)
                        .map_err(reassembly)?
                        .map(|(h, p)| (h, p.into_owned()))
                }
            };
            if let Some(w) = whole {
                return Ok(w);
            }
        }
    }
}
