//! Frames: the versioned, checksummed unit the RPC layer sends over a channel (one frame per
//! ring record) or a byte stream (TCP), and the fragmentation of large messages.
//!
//! # Header (32 bytes, little-endian)
//!
//! ```text
//! 0   magic      "SRPC"
//! 4   version    u8  (FRAME_VERSION)
//! 5   kind       u8  (Kind)
//! 6   flags      u16 (bit 0: more fragments follow; bit 1: from the call's caller to its
//!                     callee; bit 2: continues the message in progress; bit 3: the
//!                     payload is compressed, on a TCP connection that negotiated it;
//!                     bit 4: no CRC, on shared memory)
//! 8   method     u32 (method id, per connection)
//! 12  len        u32 payload bytes after the header
//! 16  call_id    u64
//! 24  crc        u32 CRC32C of the header (with this field zero) and the payload; zero
//!                     with bit 4 (FLAG_UNCHECKED)
//! 28  reserved   u32 zero
//! ```
//!
//! Everything is checked on decode, in order: length, magic, version, kind, flags,
//! reserved, payload length, CRC (or, without one, that its field is zero). A frame that
//! fails any check is a [`FrameError`] naming what differs; the connection it came from is
//! not to be trusted further.
#![forbid(unsafe_code)]

use thiserror::Error;

mod batch;
pub use batch::{
    batch_items, push_batch_item, split_item, BatchError, BatchItems, BATCH_ITEM_HEADER,
    BATCH_MAX_ITEMS,
};

/// First four bytes of every frame.
pub const FRAME_MAGIC: [u8; 4] = *b"SRPC";
/// Version of the frame format. Version 2 added [`FLAG_TO_CALLEE`]: either end of a
/// connection may call the other. Version 3 added [`FLAG_CONTINUES`]: whole messages may
/// travel between the fragments of a long one. Version 4 added [`FLAG_UNCHECKED`]: frames
/// on shared memory carry no CRC. Version 5 added [`Kind::StreamItems`]: several items of
/// a stream in one frame.
pub const FRAME_VERSION: u8 = 5;
/// Bytes in a frame header.
pub const FRAME_HEADER_LEN: usize = 32;
/// Flag: more fragments of this message follow.
pub const FLAG_MORE: u16 = 1;
/// Flag: the frame travels from its call's caller to the callee (`Request`, `Cancel`, and
/// `Credit` for the callee's stream); without it, from the callee to the caller
/// (`Response`, `StreamItem`, `StreamEnd`, `Error`). Either end may call the other, and
/// each numbers its own calls, so a call is named by this bit and its id together.
/// Connection frames (`Ping`, `Pong`, `Goodbye`) belong to no call and never carry it.
pub const FLAG_TO_CALLEE: u16 = 2;
/// Flag: the frame continues the fragmented message in progress (set on every fragment
/// but the first). A frame without it starts a message: a whole one (without
/// [`FLAG_MORE`]) may come between two fragments of another, so that a long message
/// never holds up a short one for longer than one fragment.
pub const FLAG_CONTINUES: u16 = 4;
/// Flag: the payload is compressed (lz4 block, prefixed by its expanded length as `u32`).
/// Only on a TCP connection whose handshake negotiated it; the transport expands the
/// payload, within the fragment limit, before reassembly, and refuses it anywhere else.
pub const FLAG_COMPRESSED: u16 = 8;
/// Flag: the frame carries no CRC (its CRC field is zero and is not checked). Only on
/// shared memory, where the CRC detected nothing a peer could not forge (it can write a
/// valid CRC over any bytes it likes) and nothing the hardware does not already guarantee
/// (the ring publishes a record only once it is written), and cost more than anything else
/// a message's bytes go through: four passes over them per round trip, with the CRC32C
/// instruction at ~6 GB/s. The header is still checked field by field, as for any frame:
/// that is what keeps a hostile peer out, not the checksum. A TCP transport refuses the
/// flag.
pub const FLAG_UNCHECKED: u16 = 16;
const KNOWN_FLAGS: u16 =
    FLAG_MORE | FLAG_TO_CALLEE | FLAG_CONTINUES | FLAG_COMPRESSED | FLAG_UNCHECKED;
/// The flags that name a message's place among fragments, not the message.
const FRAGMENT_FLAGS: u16 = FLAG_MORE | FLAG_CONTINUES;

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
#[non_exhaustive]
pub enum Kind {
    /// A call's request.
    Request = 1,
    /// A unary call's response.
    Response = 2,
    /// One item of a streamed response.
    StreamItem = 3,
    /// The end of a streamed response.
    StreamEnd = 4,
    /// A call failed (payload: error code and message).
    Error = 5,
    /// The caller abandoned the call.
    Cancel = 6,
    /// Heartbeat request.
    Ping = 7,
    /// Heartbeat answer.
    Pong = 8,
    /// The sender is shutting the connection down.
    Goodbye = 9,
    /// The caller grants a streaming call credit for more items (payload: `u32` count).
    Credit = 10,
    /// A notification: a one-way message, answered by nothing (payload: its body; method
    /// id: its name's).
    Notify = 11,
    /// The receiver of notifications handled `count` more (payload: `u32` count): the
    /// notifier may send as many more.
    NotifyCredit = 12,
    /// Several items of a streamed response (or of a caller's stream) in one frame, each
    /// behind its length ([`batch_items`]): sent where items are ready together, so that
    /// they share one record, one publish, one wake-up and one unit of credit.
    StreamItems = 13,
}

impl Kind {
    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Kind::Request,
            2 => Kind::Response,
            3 => Kind::StreamItem,
            4 => Kind::StreamEnd,
            5 => Kind::Error,
            6 => Kind::Cancel,
            7 => Kind::Ping,
            8 => Kind::Pong,
            9 => Kind::Goodbye,
            10 => Kind::Credit,
            11 => Kind::Notify,
            12 => Kind::NotifyCredit,
            13 => Kind::StreamItems,
            _ => return None,
        })
    }
}

/// A decoded (or to-be-encoded) frame header.
///
/// # Examples
///
/// ```
/// use shmrpc::lowlevel::frame::{decode_header, encode, FrameHeader, Kind};
///
/// let h = FrameHeader { kind: Kind::Ping, flags: 0, method: 0, call_id: 1, len: 0 };
/// let bytes = encode(&h, b"").unwrap();
/// assert_eq!(decode_header(&bytes).unwrap(), h);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// What the frame carries.
    pub kind: Kind,
    /// `FLAG_*` bits.
    pub flags: u16,
    /// Method id.
    pub method: u32,
    /// Call id.
    pub call_id: u64,
    /// Payload length.
    pub len: u32,
}

/// Why bytes are not a valid frame.
///
/// # Examples
///
/// ```
/// use shmrpc::lowlevel::frame::{decode, encode, FrameError, FrameHeader, Kind};
///
/// let h = FrameHeader { kind: Kind::Pong, flags: 0, method: 0, call_id: 1, len: 0 };
/// let mut bytes = encode(&h, b"").unwrap();
/// bytes[4] = 6; // a future version
/// let err = decode(&bytes).unwrap_err();
/// assert_eq!(err, FrameError::Version { found: 6 });
/// assert_eq!(err.to_string(), "the peer speaks protocol version 6, this end speaks version 5");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum FrameError {
    /// Fewer bytes than a header.
    #[error("frame of {0} bytes is shorter than its {FRAME_HEADER_LEN}-byte header")]
    Truncated(usize),
    /// Not a frame.
    #[error("bad frame magic {0:02x?}")]
    BadMagic([u8; 4]),
    /// A frame version we do not speak.
    #[error("the peer speaks protocol version {found}, this end speaks version {FRAME_VERSION}")]
    Version {
        /// Version found.
        found: u8,
    },
    /// Unknown kind byte.
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    /// Unknown flag bits.
    #[error("unknown frame flags {0:#06x}")]
    UnknownFlags(u16),
    /// Reserved bytes not zero.
    #[error("reserved frame bytes are not zero")]
    Reserved,
    /// The header's length differs from the bytes that follow it.
    #[error("frame header says {header} payload bytes, {actual} follow")]
    Length {
        /// Length in the header.
        header: u32,
        /// Bytes present.
        actual: usize,
    },
    /// Checksum mismatch (for a frame with [`FLAG_UNCHECKED`]: a CRC field not zero,
    /// `computed` being 0).
    #[error("frame CRC32C {found:#010x}, computed {computed:#010x}")]
    Crc {
        /// CRC in the header.
        found: u32,
        /// CRC computed.
        computed: u32,
    },
    /// The payload does not fit in a frame (more than `u32::MAX` bytes).
    #[error("payload of {0} bytes does not fit a frame")]
    PayloadTooLong(usize),
}

fn crc(header: &[u8; FRAME_HEADER_LEN], payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(header), payload)
}

/// Writes the frame (header, then `payload`) into `out`, which must hold exactly
/// `FRAME_HEADER_LEN + payload.len()` bytes (e.g. a ring write grant). `h.len` is ignored
/// and taken from `payload`. With [`FLAG_UNCHECKED`] in `h.flags` the CRC field is left
/// zero, and not computed.
///
/// # Errors
/// [`FrameError::PayloadTooLong`] above `u32::MAX` bytes; [`FrameError::Length`] if `out`
/// has the wrong size.
///
/// # Examples
///
/// ```
/// use shmrpc::lowlevel::frame::{decode, encode_into, FrameError, FrameHeader, Kind, FRAME_HEADER_LEN};
///
/// let h = FrameHeader { kind: Kind::Request, flags: 0, method: 3, call_id: 9, len: 0 };
/// let mut out = [0u8; FRAME_HEADER_LEN + 5];
/// encode_into(&mut out, &h, b"hello").unwrap();
/// assert_eq!(decode(&out).unwrap().1, b"hello");
///
/// // The buffer must fit exactly.
/// let mut short = [0u8; FRAME_HEADER_LEN + 4];
/// assert!(matches!(encode_into(&mut short, &h, b"hello"), Err(FrameError::Length { .. })));
/// ```
pub fn encode_into(out: &mut [u8], h: &FrameHeader, payload: &[u8]) -> Result<(), FrameError> {
    encode_parts_into(out, h, &[payload])
}

/// [`encode_into`] for a payload given in pieces (e.g. a small prefix and a body), written
/// one after another without first joining them in a buffer of their own.
///
/// # Errors
/// As [`encode_into`].
///
/// # Examples
///
/// ```
/// use shmrpc::lowlevel::frame::{decode, encode_parts_into, FrameHeader, Kind, FRAME_HEADER_LEN};
///
/// let h = FrameHeader { kind: Kind::Response, flags: 0, method: 1, call_id: 2, len: 0 };
/// let mut out = vec![0u8; FRAME_HEADER_LEN + 6];
/// encode_parts_into(&mut out, &h, &[b"ab", b"cdef"]).unwrap();
/// let (hdr, payload) = decode(&out).unwrap();
/// assert_eq!((hdr.len, payload), (6, &b"abcdef"[..]));
/// ```
pub fn encode_parts_into(
    out: &mut [u8],
    h: &FrameHeader,
    parts: &[&[u8]],
) -> Result<(), FrameError> {
    let total: usize = parts.iter().map(|p| p.len()).sum();
    let len = u32::try_from(total).map_err(|_| FrameError::PayloadTooLong(total))?;
    if out.len() != FRAME_HEADER_LEN + total {
        return Err(FrameError::Length {
            header: len,
            actual: out.len().saturating_sub(FRAME_HEADER_LEN),
        });
    }
    let mut hdr = [0u8; FRAME_HEADER_LEN];
    hdr[0..4].copy_from_slice(&FRAME_MAGIC);
    hdr[4] = FRAME_VERSION;
    hdr[5] = h.kind as u8;
    hdr[6..8].copy_from_slice(&h.flags.to_le_bytes());
    hdr[8..12].copy_from_slice(&h.method.to_le_bytes());
    hdr[12..16].copy_from_slice(&len.to_le_bytes());
    hdr[16..24].copy_from_slice(&h.call_id.to_le_bytes());
    let checked = h.flags & FLAG_UNCHECKED == 0;
    let mut c = if checked { crc32c::crc32c(&hdr) } else { 0 };
    let mut at = FRAME_HEADER_LEN;
    for part in parts {
        if checked {
            c = crc32c::crc32c_append(c, part);
        }
        out[at..at + part.len()].copy_from_slice(part);
        at += part.len();
    }
    hdr[24..28].copy_from_slice(&c.to_le_bytes());
    out[..FRAME_HEADER_LEN].copy_from_slice(&hdr);
    Ok(())
}

/// Encodes a frame into a new vector.
///
/// # Errors
/// As [`encode_into`].
///
/// # Examples
///
/// ```
/// use shmrpc::lowlevel::frame::{encode, FrameHeader, Kind, FRAME_HEADER_LEN, FRAME_MAGIC};
///
/// let h = FrameHeader { kind: Kind::Request, flags: 0, method: 1, call_id: 7, len: 0 };
/// let bytes = encode(&h, b"abc").unwrap();
/// assert_eq!(bytes.len(), FRAME_HEADER_LEN + 3);
/// assert_eq!(bytes[..4], FRAME_MAGIC);
/// ```
pub fn encode(h: &FrameHeader, payload: &[u8]) -> Result<Vec<u8>, FrameError> {
    let mut v = vec![0u8; FRAME_HEADER_LEN + payload.len()];
    encode_into(&mut v, h, payload)?;
    Ok(v)
}

/// Decodes a frame: the header, and the payload that follows it (borrowed).
///
/// # Errors
/// See [`FrameError`]; every field is checked, the CRC last (for a frame with
/// [`FLAG_UNCHECKED`]: that the CRC field is zero).
///
/// # Examples
///
/// ```
/// use shmrpc::lowlevel::frame::{decode, encode, FrameError, FrameHeader, Kind};
///
/// let h = FrameHeader { kind: Kind::Request, flags: 0, method: 4, call_id: 11, len: 0 };
/// let mut bytes = encode(&h, b"data").unwrap();
/// let (got, payload) = decode(&bytes).unwrap();
/// assert_eq!((got.call_id, got.len, payload), (11, 4, &b"data"[..]));
///
/// // A flipped payload bit fails the checksum.
/// *bytes.last_mut().unwrap() ^= 1;
/// assert!(matches!(decode(&bytes), Err(FrameError::Crc { .. })));
///
/// // A frame without a CRC (shared memory) leaves the field zero, and must.
/// use shmrpc::lowlevel::frame::FLAG_UNCHECKED;
/// let u = FrameHeader { flags: FLAG_UNCHECKED, ..h };
/// let mut bytes = encode(&u, b"data").unwrap();
/// assert_eq!(bytes[24..28], [0; 4]);
/// assert_eq!(decode(&bytes).unwrap().1, b"data");
/// bytes[24] = 1;
/// assert!(matches!(decode(&bytes), Err(FrameError::Crc { computed: 0, .. })));
/// ```
pub fn decode(bytes: &[u8]) -> Result<(FrameHeader, &[u8]), FrameError> {
    let h = decode_header(bytes)?;
    let payload = &bytes[FRAME_HEADER_LEN..];
    if payload.len() != h.len as usize {
        return Err(FrameError::Length {
            header: h.len,
            actual: payload.len(),
        });
    }
    let mut hdr: [u8; FRAME_HEADER_LEN] = bytes[..FRAME_HEADER_LEN].try_into().expect("checked");
    let found = u32::from_le_bytes(hdr[24..28].try_into().expect("4 bytes"));
    hdr[24..28].fill(0);
    // The flags were read with the rest of the header (`h`), not again from `bytes`.
    let computed = if h.flags & FLAG_UNCHECKED == 0 {
        crc(&hdr, payload)
    } else {
        0
    };
    if found != computed {
        return Err(FrameError::Crc { found, computed });
    }
    Ok((h, payload))
}

/// Decodes and checks a header alone (for byte streams, to learn how much payload to read).
/// The CRC can only be checked with the payload, by [`decode`].
///
/// # Errors
/// See [`FrameError`].
///
/// # Examples
///
/// ```
/// use shmrpc::lowlevel::frame::{decode_header, encode, FrameError, FrameHeader, Kind, FRAME_HEADER_LEN};
///
/// let h = FrameHeader { kind: Kind::StreamItem, flags: 0, method: 2, call_id: 5, len: 0 };
/// let bytes = encode(&h, &[0u8; 100]).unwrap();
/// // The header alone tells a stream reader how many payload bytes follow.
/// assert_eq!(decode_header(&bytes[..FRAME_HEADER_LEN]).unwrap().len, 100);
/// assert_eq!(decode_header(&bytes[..10]), Err(FrameError::Truncated(10)));
/// ```
pub fn decode_header(bytes: &[u8]) -> Result<FrameHeader, FrameError> {
    if bytes.len() < FRAME_HEADER_LEN {
        return Err(FrameError::Truncated(bytes.len()));
    }
    let b = &bytes[..FRAME_HEADER_LEN];
    let magic: [u8; 4] = b[0..4].try_into().expect("4 bytes");
    if magic != FRAME_MAGIC {
        return Err(FrameError::BadMagic(magic));
    }
    if b[4] != FRAME_VERSION {
        return Err(FrameError::Version { found: b[4] });
    }
    let kind = Kind::from_u8(b[5]).ok_or(FrameError::UnknownKind(b[5]))?;
    let flags = u16::from_le_bytes([b[6], b[7]]);
    if flags & !KNOWN_FLAGS != 0 {
        return Err(FrameError::UnknownFlags(flags));
    }
    if b[28..32] != [0; 4] {
        return Err(FrameError::Reserved);
    }
    Ok(FrameHeader {
        kind,
        flags,
        method: u32::from_le_bytes(b[8..12].try_into().expect("4 bytes")),
        len: u32::from_le_bytes(b[12..16].try_into().expect("4 bytes")),
        call_id: u64::from_le_bytes(b[16..24].try_into().expect("8 bytes")),
    })
}

/// Errors of reassembling fragments.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ReassemblyError {
    /// The message grew past the configured maximum. Its remaining fragments are skipped,
    /// so the connection can go on: only this call fails.
    #[error("message of call {call_id} exceeds the maximum of {max} bytes")]
    TooLarge {
        /// The maximum.
        max: usize,
        /// The call whose message was refused.
        call_id: u64,
        /// Its method.
        method: u32,
        /// Its kind.
        kind: Kind,
        /// Its flags (which way it travels: [`FLAG_TO_CALLEE`]).
        flags: u16,
    },
    /// A fragment of another message arrived in the middle of a fragmented one: one that
    /// continues a different call, kind or direction, or the first fragment of a second
    /// fragmented message (whole messages may come between fragments, fragmented ones may
    /// not).
    #[error("fragment of call {got} arrived while call {expected} was incomplete")]
    Interleaved {
        /// The call being assembled.
        expected: u64,
        /// The call of the stray fragment.
        got: u64,
    },
    /// A fragment that continues a message arrived with no message in progress.
    #[error("fragment continuing call {got} arrived with no message in progress")]
    Stray {
        /// The call it claims to continue.
        got: u64,
    },
}

/// A reassembled message: the last fragment's header (with the total length) and the
/// payload, borrowed when it came in one frame.
pub type Whole<'a> = (FrameHeader, std::borrow::Cow<'a, [u8]>);

/// Joins fragments (frames with [`FLAG_MORE`] or [`FLAG_CONTINUES`]) of one direction of a
/// connection back into messages, bounded by a maximum size. A sender has at most one
/// fragmented message in progress per direction (whole messages may come between its
/// fragments), so one buffer suffices.
///
/// # Examples
///
/// ```
/// use shmrpc::lowlevel::frame::{decode, encode, fragments, FrameHeader, Kind, Reassembler};
///
/// let message = vec![7u8; 10_000];
/// let mut r = Reassembler::new(64 * 1024);
/// let mut whole = None;
/// for (flags, part) in fragments(&message, 4096) {
///     let h = FrameHeader { kind: Kind::Request, flags, method: 1, call_id: 3, len: 0 };
///     let frame = encode(&h, part).unwrap();
///     let (h, payload) = decode(&frame).unwrap();
///     if let Some((h, body)) = r.push(&h, payload).unwrap() {
///         whole = Some((h.len, body.into_owned()));
///     }
/// }
/// assert_eq!(whole, Some((10_000, message)));
/// ```
#[derive(Debug)]
pub struct Reassembler {
    max: usize,
    buf: Vec<u8>,
    /// The fragmented message being assembled.
    current: Option<MessageKey>,
    /// A refused fragmented message whose remaining fragments are being skipped.
    discarding: Option<MessageKey>,
}

/// What names a fragmented message: every one of its fragments carries the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct MessageKey {
    call_id: u64,
    kind: Kind,
    method: u32,
    /// The flags without the fragment bits (today: the direction).
    flags: u16,
}

impl MessageKey {
    fn of(h: &FrameHeader) -> Self {
        Self {
            call_id: h.call_id,
            kind: h.kind,
            method: h.method,
            flags: h.flags & !FRAGMENT_FLAGS,
        }
    }
}

impl Reassembler {
    /// A reassembler that refuses messages above `max` bytes.
    ///
    /// # Examples
    ///
    /// ```
    /// use shmrpc::lowlevel::frame::{FrameHeader, Kind, ReassemblyError, Reassembler};
    ///
    /// let mut r = Reassembler::new(4);
    /// let h = FrameHeader { kind: Kind::Request, flags: 0, method: 1, call_id: 1, len: 5 };
    /// assert!(matches!(r.push(&h, b"12345"), Err(ReassemblyError::TooLarge { max: 4, .. })));
    /// ```
    pub fn new(max: usize) -> Self {
        Self {
            max,
            buf: Vec::new(),
            current: None,
            discarding: None,
        }
    }

    /// Feeds one decoded frame. Returns the whole message once its last fragment arrived
    /// (the header of the last fragment, without the fragment flags, and the joined
    /// payload), `None` while incomplete. A whole message (a frame without fragment flags)
    /// comes back at once, also between two fragments of another message.
    ///
    /// # Errors
    /// See [`ReassemblyError`]. After `TooLarge` the refused message's remaining fragments
    /// are skipped and the connection may go on; after the others the partial message is
    /// dropped (the sender broke the protocol).
    ///
    /// # Examples
    ///
    /// ```
    /// use shmrpc::lowlevel::frame::{FrameHeader, Kind, Reassembler, FLAG_CONTINUES, FLAG_MORE};
    ///
    /// let mut r = Reassembler::new(1024);
    /// let first = FrameHeader { kind: Kind::Request, flags: FLAG_MORE, method: 1, call_id: 8, len: 3 };
    /// let last = FrameHeader { flags: FLAG_CONTINUES, ..first };
    /// assert!(r.push(&first, b"abc").unwrap().is_none());
    /// // A short message of another call between the two fragments comes back at once.
    /// let short = FrameHeader { flags: 0, call_id: 9, ..first };
    /// assert_eq!(&r.push(&short, b"hi").unwrap().unwrap().1[..], b"hi");
    /// let (h, body) = r.push(&last, b"def").unwrap().unwrap();
    /// assert_eq!((h.len, h.flags, &body[..]), (6, 0, &b"abcdef"[..]));
    /// ```
    pub fn push<'a>(
        &'a mut self,
        h: &FrameHeader,
        payload: &'a [u8],
    ) -> Result<Option<Whole<'a>>, ReassemblyError> {
        let more = h.flags & FLAG_MORE != 0;
        let continues = h.flags & FLAG_CONTINUES != 0;
        let key = MessageKey::of(h);
        if !more && !continues {
            // A whole message: it stands alone, and leaves what is in progress alone.
            if payload.len() > self.max {
                return Err(self.refusal(h));
            }
            let mut whole = *h;
            whole.len = payload.len() as u32;
            return Ok(Some((whole, std::borrow::Cow::Borrowed(payload))));
        }
        if continues && self.discarding == Some(key) {
            if !more {
                self.discarding = None;
            }
            return Ok(None);
        }
        match (continues, self.current.or(self.discarding)) {
            // The first fragment of a message while another is in progress (or still
            // being skipped), or a fragment that continues another message.
            (false, Some(other)) => return Err(self.interleaved(other, h)),
            (true, Some(other)) if other != key => return Err(self.interleaved(other, h)),
            (true, None) => return Err(ReassemblyError::Stray { got: h.call_id }),
            _ => {}
        }
        if self.buf.len() + payload.len() > self.max {
            let skip = more.then_some(key);
            return Err(self.too_large(h, skip));
        }
        self.buf.extend_from_slice(payload);
        if more {
            self.current = Some(key);
            return Ok(None);
        }
        self.current = None;
        let mut whole = *h;
        whole.flags &= !FRAGMENT_FLAGS;
        whole.len = self.buf.len() as u32;
        let msg = std::mem::take(&mut self.buf);
        Ok(Some((whole, std::borrow::Cow::Owned(msg))))
    }

    /// Refuses `h`'s fragmented message: drops what was assembled of it, and skips its
    /// remaining fragments (`skip`) so that the connection can go on.
    fn too_large(&mut self, h: &FrameHeader, skip: Option<MessageKey>) -> ReassemblyError {
        self.reset();
        self.discarding = skip;
        self.refusal(h)
    }

    /// The `TooLarge` refusal of `h`'s message.
    fn refusal(&self, h: &FrameHeader) -> ReassemblyError {
        ReassemblyError::TooLarge {
            max: self.max,
            call_id: h.call_id,
            method: h.method,
            kind: h.kind,
            flags: h.flags & !FRAGMENT_FLAGS,
        }
    }

    fn interleaved(&mut self, other: MessageKey, h: &FrameHeader) -> ReassemblyError {
        self.reset();
        self.discarding = None;
        ReassemblyError::Interleaved {
            expected: other.call_id,
            got: h.call_id,
        }
    }

    fn reset(&mut self) {
        self.current = None;
        self.buf.clear();
    }
}

/// Splits `payload` into fragment payloads of at most `max_fragment` bytes, each paired
/// with its flags: [`FLAG_MORE`] on all but the last, [`FLAG_CONTINUES`] on all but the
/// first. A payload that fits one fragment is one frame without either flag (an empty
/// payload too).
///
/// # Examples
///
/// ```
/// use shmrpc::lowlevel::frame::{fragments, FLAG_CONTINUES, FLAG_MORE};
///
/// let parts: Vec<_> = fragments(b"abcde", 2).collect();
/// let mid = FLAG_MORE | FLAG_CONTINUES;
/// assert_eq!(parts, [(FLAG_MORE, &b"ab"[..]), (mid, &b"cd"[..]), (FLAG_CONTINUES, &b"e"[..])]);
/// assert_eq!(fragments(b"abc", 3).collect::<Vec<_>>(), [(0, &b"abc"[..])]);
/// assert_eq!(fragments(b"", 2).count(), 1);
/// ```
pub fn fragments(payload: &[u8], max_fragment: usize) -> impl Iterator<Item = (u16, &[u8])> {
    let max_fragment = max_fragment.max(1);
    let n = payload.len().div_ceil(max_fragment).max(1);
    (0..n).map(move |i| {
        let start = i * max_fragment;
        let end = (start + max_fragment).min(payload.len());
        let more = if i + 1 < n { FLAG_MORE } else { 0 };
        let continues = if i > 0 { FLAG_CONTINUES } else { 0 };
        (more | continues, &payload[start..end])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdr(kind: Kind, call_id: u64) -> FrameHeader {
        FrameHeader {
            kind,
            flags: 0,
            method: 7,
            call_id,
            len: 0,
        }
    }

    #[test]
    fn round_trip() {
        let f = encode(&hdr(Kind::Request, 42), b"payload").unwrap();
        let (h, p) = decode(&f).unwrap();
        assert_eq!(
            (h.kind, h.method, h.call_id, h.len),
            (Kind::Request, 7, 42, 7)
        );
        assert_eq!(p, b"payload");
    }

    #[test]
    fn every_field_is_checked() {
        let good = encode(&hdr(Kind::Response, 1), b"abc").unwrap();
        let mut f = good.clone();
        f[0] = b'X';
        assert!(matches!(decode(&f), Err(FrameError::BadMagic(_))));
        let mut f = good.clone();
        f[4] = 9;
        assert_eq!(decode(&f), Err(FrameError::Version { found: 9 }));
        let mut f = good.clone();
        f[5] = 200;
        assert_eq!(decode(&f), Err(FrameError::UnknownKind(200)));
        let mut f = good.clone();
        f[6] = 0x80;
        assert!(matches!(decode(&f), Err(FrameError::UnknownFlags(_))));
        let mut f = good.clone();
        f[30] = 1;
        assert_eq!(decode(&f), Err(FrameError::Reserved));
        let mut f = good.clone();
        f[12] = 200; // lying length
        assert!(matches!(
            decode(&f),
            Err(FrameError::Length { header: 200, .. })
        ));
        let mut f = good.clone();
        *f.last_mut().unwrap() ^= 1; // payload flipped
        assert!(matches!(decode(&f), Err(FrameError::Crc { .. })));
        let mut f = good.clone();
        f[16] ^= 1; // call id flipped: the CRC covers the header too
        assert!(matches!(decode(&f), Err(FrameError::Crc { .. })));
        assert_eq!(decode(&good[..10]), Err(FrameError::Truncated(10)));
    }

    #[test]
    fn fragments_reassemble_and_the_limit_holds() {
        let msg: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let mut r = Reassembler::new(20_000);
        let mut out = None;
        for (flags, part) in fragments(&msg, 3000) {
            let h = FrameHeader {
                flags,
                len: part.len() as u32,
                ..hdr(Kind::Request, 5)
            };
            if let Some((h, m)) = r.push(&h, part).unwrap() {
                out = Some((h, m.into_owned()));
            }
        }
        let (h, m) = out.expect("complete");
        assert_eq!(h.len, 10_000);
        assert_eq!(m, msg);

        let mut small = Reassembler::new(5_000);
        let mut err = None;
        for (flags, part) in fragments(&msg, 3000) {
            let h = FrameHeader {
                flags,
                ..hdr(Kind::Request, 5)
            };
            if let Err(e) = small.push(&h, part) {
                err = Some(e);
                break;
            }
        }
        assert_eq!(
            err,
            Some(ReassemblyError::TooLarge {
                max: 5_000,
                call_id: 5,
                method: 7,
                kind: Kind::Request,
                flags: 0,
            })
        );
        // The refused message's remaining fragments are skipped; the next message is fine.
        let rest: Vec<_> = fragments(&msg, 3000).skip(2).collect();
        for (flags, part) in rest {
            let h = FrameHeader {
                flags,
                ..hdr(Kind::Request, 5)
            };
            assert_eq!(small.push(&h, part).unwrap(), None);
        }
        let next = hdr(Kind::Request, 6);
        assert!(small.push(&next, b"ok").unwrap().is_some());
    }

    #[test]
    fn whole_messages_pass_between_fragments_and_fragmented_ones_never_interleave() {
        let mut r = Reassembler::new(1 << 20);
        let first = FrameHeader {
            flags: FLAG_MORE,
            ..hdr(Kind::StreamItem, 1)
        };
        assert_eq!(r.push(&first, b"a").unwrap(), None);
        // A whole message of another call comes back at once, the long one goes on.
        let short = hdr(Kind::Request, 2);
        let (h, body) = r.push(&short, b"b").unwrap().expect("whole");
        assert_eq!((h.call_id, &body[..]), (2, &b"b"[..]));
        // Even one of the same call and kind (its flags say it stands alone).
        assert_eq!(
            &r.push(&hdr(Kind::StreamItem, 1), b"c").unwrap().unwrap().1[..],
            b"c"
        );
        let last = FrameHeader {
            flags: FLAG_CONTINUES,
            ..first
        };
        let (h, body) = r.push(&last, b"d").unwrap().expect("complete");
        assert_eq!((h.call_id, h.flags, &body[..]), (1, 0, &b"ad"[..]));

        // A second fragmented message may not start before the first ended.
        assert_eq!(r.push(&first, b"a").unwrap(), None);
        let second = FrameHeader {
            flags: FLAG_MORE,
            ..hdr(Kind::StreamItem, 3)
        };
        assert_eq!(
            r.push(&second, b"x"),
            Err(ReassemblyError::Interleaved {
                expected: 1,
                got: 3
            })
        );
        // Nor may a fragment continue another call's message.
        assert_eq!(r.push(&first, b"a").unwrap(), None);
        let stray = FrameHeader {
            flags: FLAG_CONTINUES,
            ..hdr(Kind::StreamItem, 4)
        };
        assert_eq!(
            r.push(&stray, b"x"),
            Err(ReassemblyError::Interleaved {
                expected: 1,
                got: 4
            })
        );
        // Or one in the other direction.
        assert_eq!(r.push(&first, b"a").unwrap(), None);
        let other_way = FrameHeader {
            flags: FLAG_CONTINUES | FLAG_TO_CALLEE,
            ..hdr(Kind::StreamItem, 1)
        };
        assert!(matches!(
            r.push(&other_way, b"x"),
            Err(ReassemblyError::Interleaved { .. })
        ));
        // A continuation with nothing in progress is refused too.
        assert_eq!(r.push(&stray, b"x"), Err(ReassemblyError::Stray { got: 4 }));
    }

    #[test]
    fn a_refused_message_is_skipped_while_whole_ones_pass() {
        let msg = vec![1u8; 10_000];
        let mut r = Reassembler::new(5_000);
        let mut frames = fragments(&msg, 3000).map(|(flags, part)| {
            (
                FrameHeader {
                    flags,
                    ..hdr(Kind::Request, 5)
                },
                part,
            )
        });
        let (h, p) = frames.next().unwrap();
        assert_eq!(r.push(&h, p).unwrap(), None);
        let (h, p) = frames.next().unwrap();
        assert!(matches!(
            r.push(&h, p),
            Err(ReassemblyError::TooLarge { call_id: 5, .. })
        ));
        for (h, p) in frames {
            // A whole message between the skipped fragments still comes through.
            assert!(r.push(&hdr(Kind::Cancel, 6), b"").unwrap().is_some());
            assert_eq!(r.push(&h, p).unwrap(), None, "skipped");
        }
        // Skipping ended with the refused message's last fragment.
        let again = FrameHeader {
            flags: FLAG_MORE,
            ..hdr(Kind::Request, 7)
        };
        assert_eq!(r.push(&again, b"x").unwrap(), None);
    }

    #[test]
    fn empty_payload_is_one_fragment() {
        let v: Vec<_> = fragments(b"", 10).collect();
        assert_eq!(v, vec![(0, &b""[..])]);
    }
}
