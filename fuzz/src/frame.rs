//! Targets `frame_decode` (bytes into the decoder) and `frame_reassemble` (sequences of
//! frames through encode → decode → `Reassembler`).

use std::collections::VecDeque;

use shmrpc::lowlevel::frame::{
    batch_items, decode, decode_header, encode, encode_into, encode_parts_into, fragments,
    push_batch_item, BatchError, FrameError, FrameHeader, Kind, Reassembler, ReassemblyError,
    BATCH_MAX_ITEMS, FLAG_COMPRESSED, FLAG_CONTINUES, FLAG_MORE, FLAG_TO_CALLEE, FLAG_UNCHECKED,
    FRAME_HEADER_LEN, FRAME_MAGIC, FRAME_VERSION,
};

use crate::{Cursor, Writer};

/// Every kind, in wire order (wire value = index + 1).
pub const KINDS: [Kind; 13] = [
    Kind::Request,
    Kind::Response,
    Kind::StreamItem,
    Kind::StreamEnd,
    Kind::Error,
    Kind::Cancel,
    Kind::Ping,
    Kind::Pong,
    Kind::Goodbye,
    Kind::Credit,
    Kind::Notify,
    Kind::NotifyCredit,
    Kind::StreamItems,
];

/// The flags the format defines: more fragments follow; travels to the call's callee;
/// continues the message in progress.
const KNOWN_FLAGS: u16 =
    FLAG_MORE | FLAG_TO_CALLEE | FLAG_CONTINUES | FLAG_COMPRESSED | FLAG_UNCHECKED;
/// The flags that place a frame among its message's fragments.
const FRAGMENT: u16 = FLAG_MORE | FLAG_CONTINUES;

/// `KINDS` has at most 256 entries: a wire byte picks one.
fn kind_of(wire: u8) -> Kind {
    KINDS[usize::from(wire) % KINDS.len()]
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

/// The decoder's verdict on `bytes`, checked against an independent reading of the
/// format (docs/protocol.md): never a panic, every accepted frame re-encodes to exactly
/// the same bytes, and every refusal names the first check that fails.
pub fn check_decode(bytes: &[u8]) {
    let hdr = decode_header(bytes);
    let full = decode(bytes);
    if bytes.len() < FRAME_HEADER_LEN {
        assert_eq!(hdr, Err(FrameError::Truncated(bytes.len())));
        assert_eq!(full, Err(FrameError::Truncated(bytes.len())));
        return;
    }
    let b = &bytes[..FRAME_HEADER_LEN];
    // The checks in their documented order: magic, version, kind, flags, reserved.
    let expected_hdr = if b[0..4] != FRAME_MAGIC {
        Err(FrameError::BadMagic(b[0..4].try_into().unwrap()))
    } else if b[4] != FRAME_VERSION {
        Err(FrameError::Version { found: b[4] })
    } else if !(1..=KINDS.len()).contains(&usize::from(b[5])) {
        Err(FrameError::UnknownKind(b[5]))
    } else if u16::from_le_bytes([b[6], b[7]]) & !KNOWN_FLAGS != 0 {
        Err(FrameError::UnknownFlags(u16::from_le_bytes([b[6], b[7]])))
    } else if b[28..32] != [0; 4] {
        Err(FrameError::Reserved)
    } else {
        Ok(FrameHeader {
            kind: KINDS[usize::from(b[5]) - 1],
            flags: u16::from_le_bytes([b[6], b[7]]),
            method: le32(b, 8),
            len: le32(b, 12),
            call_id: u64::from_le_bytes(b[16..24].try_into().unwrap()),
        })
    };
    assert_eq!(hdr, expected_hdr, "decode_header of {bytes:02x?}");
    let h = match hdr {
        Err(e) => {
            // decode checks the header first, with the same verdict.
            assert_eq!(full, Err(e));
            return;
        }
        Ok(h) => h,
    };
    let payload = &bytes[FRAME_HEADER_LEN..];
    if payload.len() != h.len as usize {
        assert_eq!(
            full,
            Err(FrameError::Length {
                header: h.len,
                actual: payload.len()
            })
        );
        return;
    }
    // Header and length are right: only the CRC decides, and the canonical encoding of
    // this header and payload is the one frame that passes (with `FLAG_UNCHECKED`: the
    // one whose CRC field is zero).
    let canonical = encode(&h, payload).expect("encodable");
    match full {
        Ok((h2, p2)) => {
            assert_eq!(h2, h);
            assert_eq!(p2, payload);
            assert_eq!(p2.as_ptr(), payload.as_ptr(), "payload borrowed in place");
            assert_eq!(canonical, bytes, "an accepted frame re-encodes to itself");
            // Any accepted payload may be a batch of stream items (`StreamItems`).
            check_batch(p2);
        }
        Err(FrameError::Crc { found, computed }) => {
            assert_eq!(found, le32(bytes, 24));
            assert_ne!(found, computed);
            assert_ne!(canonical, bytes, "the canonical frame was refused");
            assert_eq!(computed, le32(&canonical, 24));
        }
        Err(e) => panic!("unexpected {e:?} for a frame with a good header and length"),
    }
}

/// `batch_items` against an independent reading of the batch format (docs/protocol.md):
/// items as a little-endian `u32` length and that many bytes, at least one, filling the
/// payload exactly, at most `BATCH_MAX_ITEMS`; a refusal names the first item that runs
/// past the end, or comes once item `BATCH_MAX_ITEMS + 1` is whole. An accepted
/// batch re-encodes (`push_batch_item`) to exactly its own bytes.
pub fn check_batch(payload: &[u8]) {
    let mut want = Vec::new();
    let mut refused = payload.is_empty().then_some(BatchError::Empty);
    let mut at = 0;
    while refused.is_none() && at < payload.len() {
        let left = payload.len() - at;
        let len = if left >= 4 {
            le32(payload, at) as usize
        } else {
            usize::MAX
        };
        if left < 4 || left - 4 < len {
            refused = Some(BatchError::Truncated {
                item: want.len(),
                at,
            });
            break;
        }
        want.push(&payload[at + 4..at + 4 + len]);
        at += 4 + len;
        if want.len() > BATCH_MAX_ITEMS {
            refused = Some(BatchError::TooManyItems);
        }
    }
    match (batch_items(payload), refused) {
        (Ok(items), None) => {
            assert_eq!(items.len(), want.len());
            let got: Vec<&[u8]> = items.collect();
            assert_eq!(got, want);
            let mut again = Vec::new();
            for item in got {
                push_batch_item(&mut again, item).expect("short item");
            }
            assert_eq!(again, payload, "a batch re-encodes to itself");
        }
        (Err(e), Some(r)) => assert_eq!(e, r, "batch {payload:02x?}"),
        (got, want) => panic!("batch {payload:02x?}: got {got:?}, the format says {want:?}"),
    }
}

/// Target `frame_decode`. Input: a mode byte, then a frame.
///
/// - mode bit 0 clear: the rest is handed to the decoder as it is ([`check_decode`]);
/// - mode bit 0 set: `pos: u16, xor: u8`, then a frame whose header is repaired into a
///   valid frame (its length and CRC recomputed) that must decode, and then must be
///   refused once any one byte of it is changed (CRC32C catches every burst of up to 32
///   bits, and the other fields are checked directly). That holds for a frame with a CRC,
///   so the repair clears [`FLAG_UNCHECKED`]; a frame without one is checked as it came.
pub fn frame_decode(data: &[u8]) {
    let mut c = Cursor::new(data);
    let mode = c.u8();
    if mode & 1 == 0 {
        check_decode(c.rest());
        return;
    }
    let pos = c.u16();
    let xor = c.u8().max(1);
    let rest = c.rest();
    check_decode(rest);
    let Ok(mut h) = decode_header(rest) else {
        return;
    };
    h.flags &= !FLAG_UNCHECKED;
    let payload = &rest[FRAME_HEADER_LEN..];
    let frame = encode(&h, payload).expect("encodable");
    check_decode(&frame);
    let (h2, p2) = decode(&frame).expect("a freshly encoded frame decodes");
    assert_eq!(
        h2,
        FrameHeader {
            len: payload.len() as u32,
            ..h
        }
    );
    assert_eq!(p2, payload);
    let mut bad = frame.clone();
    let at = usize::from(pos) % bad.len();
    bad[at] ^= xor;
    check_decode(&bad);
    assert!(
        decode(&bad).is_err(),
        "byte {at} ^ {xor:#04x} of a valid frame went unnoticed"
    );
}

/// One step of a `frame_reassemble` input.
#[derive(Debug, Clone)]
pub enum Step {
    /// One frame, pushed as it is.
    Frame {
        /// Wire kind (taken modulo the number of kinds).
        kind: u8,
        /// Flags (unknown bits allowed: the decoder must refuse them).
        flags: u16,
        /// Method id.
        method: u8,
        /// Call id.
        call_id: u8,
        /// Payload.
        payload: Vec<u8>,
    },
    /// A whole message, cut by `fragments` into pieces of `frag` bytes (raised if that
    /// would make more than 64), pushed in order.
    Message {
        /// Wire kind (taken modulo the number of kinds).
        kind: u8,
        /// Method id.
        method: u8,
        /// Call id.
        call_id: u8,
        /// Payload length, modulo 4 KiB (bytes are a pattern).
        len: u16,
        /// Fragment size.
        frag: u16,
    },
}

/// Encodes a `frame_reassemble` input.
pub fn encode_reassemble(max: u16, steps: &[Step]) -> Vec<u8> {
    let mut w = Writer::default();
    w.u16(max);
    for s in steps {
        match s {
            Step::Frame {
                kind,
                flags,
                method,
                call_id,
                payload,
            } => {
                w.u8(0).u8(*kind).u16(*flags).u8(*method).u8(*call_id);
                w.u8(payload.len() as u8).bytes(payload);
            }
            Step::Message {
                kind,
                method,
                call_id,
                len,
                frag,
            } => {
                w.u8(1)
                    .u8(*kind)
                    .u8(*method)
                    .u8(*call_id)
                    .u16(*len)
                    .u16(*frag);
            }
        }
    }
    w.0
}

/// Reads a `frame_reassemble` input: `max` and the steps.
pub fn decode_reassemble(data: &[u8]) -> (u16, Vec<Step>) {
    let mut c = Cursor::new(data);
    let max = c.u16();
    let mut steps = Vec::new();
    while !c.is_empty() && steps.len() < 32 {
        let step = match c.u8() % 2 {
            0 => {
                let (kind, flags, method, call_id) = (c.u8(), c.u16(), c.u8(), c.u8());
                let n = c.u8();
                Step::Frame {
                    kind,
                    flags,
                    method,
                    call_id,
                    payload: c.bytes(n.into()).to_vec(),
                }
            }
            _ => Step::Message {
                kind: c.u8(),
                method: c.u8(),
                call_id: c.u8(),
                len: c.u16(),
                frag: c.u16(),
            },
        };
        steps.push(step);
    }
    (max, steps)
}

/// The documented reassembly rules (`frame::Reassembler`, docs/protocol.md), written out
/// independently: a frame with neither fragment flag is a whole message, delivered at once
/// even between the fragments of another; a fragmented message starts with "more" alone,
/// goes on with "more" and "continues", ends with "continues" alone, and is the
/// concatenation of its fragments. A message above `max` fails with `TooLarge` and its
/// remaining fragments are skipped. A second fragmented message starting, or a fragment
/// continuing another call, kind, method or direction, while one is in progress (or being
/// skipped) fails with `Interleaved` and drops it; a continuation with nothing in progress
/// fails with `Stray`.
#[derive(Debug)]
struct Model {
    max: usize,
    /// The message being joined: its key, and its bytes so far.
    current: Option<(Key, Vec<u8>)>,
    /// A refused message whose fragments are being skipped.
    discarding: Option<Key>,
}

/// Call, kind, method, and the flags but the fragment ones.
type Key = (u64, Kind, u32, u16);

type ModelResult = Result<Option<(FrameHeader, Vec<u8>)>, ReassemblyError>;

impl Model {
    fn push(&mut self, h: &FrameHeader, p: &[u8]) -> ModelResult {
        let more = h.flags & FLAG_MORE != 0;
        let cont = h.flags & FLAG_CONTINUES != 0;
        let key: Key = (h.call_id, h.kind, h.method, h.flags & !FRAGMENT);
        let too_large = ReassemblyError::TooLarge {
            max: self.max,
            call_id: h.call_id,
            method: h.method,
            kind: h.kind,
            flags: h.flags & !FRAGMENT,
        };
        if !more && !cont {
            if p.len() > self.max {
                return Err(too_large);
            }
            let whole = FrameHeader {
                len: p.len() as u32,
                ..*h
            };
            return Ok(Some((whole, p.to_vec())));
        }
        if cont && self.discarding == Some(key) {
            if !more {
                self.discarding = None;
            }
            return Ok(None);
        }
        let in_progress = self.current.as_ref().map(|(k, _)| *k).or(self.discarding);
        match in_progress {
            None if cont => return Err(ReassemblyError::Stray { got: h.call_id }),
            Some(other) if !cont || other != key => {
                self.current = None;
                self.discarding = None;
                return Err(ReassemblyError::Interleaved {
                    expected: other.0,
                    got: h.call_id,
                });
            }
            _ => {}
        }
        let mut buf = self.current.take().map(|(_, b)| b).unwrap_or_default();
        if buf.len() + p.len() > self.max {
            if more {
                self.discarding = Some(key);
            }
            return Err(too_large);
        }
        buf.extend_from_slice(p);
        if more {
            self.current = Some((key, buf));
            return Ok(None);
        }
        Ok(Some((
            FrameHeader {
                len: buf.len() as u32,
                flags: h.flags & !FRAGMENT,
                ..*h
            },
            buf,
        )))
    }
}

/// Encodes `h` + `payload` three ways (encode_into, encode_parts_into split at `split`,
/// encode), checks they agree and that decoding gives back the header and payload.
/// Returns the frame if it is valid (known flags).
fn round_trip(h: &FrameHeader, payload: &[u8], split: usize) -> Option<Vec<u8>> {
    let mut out = vec![0u8; FRAME_HEADER_LEN + payload.len()];
    encode_into(&mut out, h, payload).expect("right-sized buffer");
    let split = split.min(payload.len());
    let mut parts = vec![0xeeu8; out.len()];
    encode_parts_into(&mut parts, h, &[&payload[..split], &payload[split..]]).unwrap();
    assert_eq!(parts, out, "encode_parts_into differs from encode_into");
    assert_eq!(encode(h, payload).unwrap(), out);
    // A wrong-sized buffer is refused, not half-written.
    let mut short = vec![0u8; out.len() - 1];
    assert!(matches!(
        encode_into(&mut short, h, payload),
        Err(FrameError::Length { .. })
    ));
    check_decode(&out);
    let want = FrameHeader {
        len: payload.len() as u32,
        ..*h
    };
    if h.flags & !KNOWN_FLAGS != 0 {
        // encode_into writes any flags; the decoder refuses unknown ones.
        assert_eq!(decode(&out), Err(FrameError::UnknownFlags(h.flags)));
        return None;
    }
    let (h2, p2) = decode(&out).expect("a freshly encoded frame decodes");
    assert_eq!(h2, want);
    assert_eq!(p2, payload);
    assert_eq!(decode_header(&out), Ok(want));
    Some(out)
}

/// Target `frame_reassemble`. Input: `max: u16`, then steps (see [`Step`] and
/// [`encode_reassemble`]). Each frame goes encode → decode (round trip checked) →
/// `Reassembler::push`, whose every answer is compared with [`Model`]: no panic, no
/// message above `max`, every message the exact concatenation of its fragments.
pub fn frame_reassemble(data: &[u8]) {
    let (max, steps) = decode_reassemble(data);
    let max = usize::from(max);
    let mut r = Reassembler::new(max);
    let mut model = Model {
        max,
        current: None,
        discarding: None,
    };
    let mut frames: VecDeque<(FrameHeader, Vec<u8>)> = VecDeque::new();
    for step in steps {
        match step {
            Step::Frame {
                kind,
                flags,
                method,
                call_id,
                payload,
            } => {
                let h = FrameHeader {
                    kind: kind_of(kind),
                    flags,
                    method: method.into(),
                    call_id: call_id.into(),
                    // Ignored by the encoder (taken from the payload).
                    len: u32::from(kind) * 1000,
                };
                frames.push_back((h, payload));
            }
            Step::Message {
                kind,
                method,
                call_id,
                len,
                frag,
            } => {
                // At most 4 KiB in at most 64 fragments, so an input stays fast.
                let len = usize::from(len) % (4 << 10);
                let msg: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
                let mut frag = usize::from(frag);
                if len.div_ceil(frag.max(1)) > 64 {
                    frag = len.div_ceil(64);
                }
                let mut joined = Vec::new();
                let n = msg.len().div_ceil(frag.max(1)).max(1);
                let mut count = 0;
                for (i, (flags, part)) in fragments(&msg, frag).enumerate() {
                    assert!(part.len() <= frag.max(1));
                    let more = if i + 1 < n { FLAG_MORE } else { 0 };
                    let cont = if i > 0 { FLAG_CONTINUES } else { 0 };
                    assert_eq!(flags, more | cont);
                    joined.extend_from_slice(part);
                    count += 1;
                    let h = FrameHeader {
                        kind: kind_of(kind),
                        flags,
                        method: method.into(),
                        call_id: call_id.into(),
                        len: 0,
                    };
                    frames.push_back((h, part.to_vec()));
                }
                assert_eq!(count, n);
                assert_eq!(joined, msg, "fragments do not cover the message");
            }
        }
        while let Some((h, payload)) = frames.pop_front() {
            let Some(frame) = round_trip(&h, &payload, usize::from(h.method as u8)) else {
                continue;
            };
            let (dh, dp) = decode(&frame).unwrap();
            let want = model.push(&dh, dp);
            let got = r.push(&dh, dp).map(|o| o.map(|(h, m)| (h, m.into_owned())));
            assert_eq!(got, want, "Reassembler differs from the documented rules");
            if let Ok(Some((h, m))) = &got {
                assert!(
                    m.len() <= max,
                    "message of {} bytes above max {max}",
                    m.len()
                );
                assert_eq!(h.len as usize, m.len());
            }
        }
    }
}
