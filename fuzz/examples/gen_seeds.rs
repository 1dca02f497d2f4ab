//! Writes the seed corpus: `cargo run --example gen_seeds` (in fuzz/; stable Rust).
//! Every seed is run through its target's checks first, so a seed never starts a fuzz run
//! with a crash. The files are committed under corpus/<target>/.

use std::path::Path;

use shmrpc::channel::HANDSHAKE_VERSION;
use shmrpc::lowlevel::frame::{
    encode, push_batch_item, FrameHeader, Kind, FLAG_CONTINUES, FLAG_MORE,
};
use shmrpc_fuzz::frame::{encode_reassemble, Step};
use shmrpc_fuzz::hello::hello_bytes;
use shmrpc_fuzz::ring::{Op, Pre, RingInput};
use shmrpc_fuzz::{Check, Writer};

fn frame(kind: Kind, flags: u16, method: u32, call_id: u64, payload: &[u8]) -> Vec<u8> {
    let h = FrameHeader {
        kind,
        flags,
        method,
        call_id,
        len: 0,
    };
    encode(&h, payload).unwrap()
}

fn push(tag: u32, len: u16, fill: u8) -> Op {
    Op::Push { tag, len, fill }
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let mut seeds: Vec<(&str, String, Vec<u8>, Check)> = Vec::new();
    let mut add = |target: &'static str, name: &str, bytes: Vec<u8>, check: Check| {
        seeds.push((target, name.to_string(), bytes, check));
    };

    // frame_decode: mode byte, then a frame.
    let fd = shmrpc_fuzz::frame::frame_decode;
    let mut batch = Vec::new();
    for item in [&b"first"[..], b"", &[0x5a; 32]] {
        push_batch_item(&mut batch, item).unwrap();
    }
    let frames = [
        ("request", frame(Kind::Request, 0, 3, 42, b"hello")),
        ("response_empty", frame(Kind::Response, 0, 3, 42, b"")),
        (
            "stream_item_more",
            frame(Kind::StreamItem, FLAG_MORE, 9, 7, &[0xab; 40]),
        ),
        ("credit", frame(Kind::Credit, 0, 9, 7, &16u32.to_le_bytes())),
        ("ping", frame(Kind::Ping, 0, 0, 1, b"")),
        ("error", frame(Kind::Error, 0, 2, 5, b"\x03\x00not found")),
        ("stream_items", frame(Kind::StreamItems, 0, 9, 7, &batch)),
    ];
    for (name, f) in &frames {
        add(
            "frame_decode",
            &format!("raw_{name}"),
            [&[0u8][..], f].concat(),
            fd,
        );
    }
    let mut w = Writer::default();
    w.u8(1).u16(20).u8(0x10).bytes(&frames[0].1);
    add("frame_decode", "flip_request_call_id", w.0, fd);
    let mut w = Writer::default();
    w.u8(1).u16(37).u8(0x01).bytes(&frames[2].1);
    add("frame_decode", "flip_stream_item_payload", w.0, fd);
    let mut bad_crc = frames[0].1.clone();
    bad_crc[24] ^= 0xff;
    add(
        "frame_decode",
        "bad_crc",
        [&[0u8][..], &bad_crc].concat(),
        fd,
    );
    add(
        "frame_decode",
        "truncated",
        [&[0u8][..], &frames[0].1[..10]].concat(),
        fd,
    );

    // frame_reassemble: max, then steps.
    let fr = shmrpc_fuzz::frame::frame_reassemble;
    let msg = |kind, method, call_id, len, frag| Step::Message {
        kind,
        method,
        call_id,
        len,
        frag,
    };
    let one = |kind, flags, method, call_id, payload: &[u8]| Step::Frame {
        kind,
        flags,
        method,
        call_id,
        payload: payload.to_vec(),
    };
    add(
        "frame_reassemble",
        "fragmented_messages",
        encode_reassemble(
            4096,
            &[
                msg(0, 1, 1, 1000, 300),
                msg(1, 1, 1, 0, 300),
                msg(2, 2, 3, 3000, 1024),
            ],
        ),
        fr,
    );
    add(
        "frame_reassemble",
        "too_large_then_skip",
        encode_reassemble(
            500,
            &[
                msg(0, 1, 5, 2000, 300),
                one(0, 0, 1, 6, b"after"),
                msg(0, 1, 6, 400, 100),
            ],
        ),
        fr,
    );
    add(
        "frame_reassemble",
        "interleaved",
        encode_reassemble(
            1000,
            &[
                one(0, FLAG_MORE, 1, 1, b"first half "),
                one(0, 0, 1, 2, b"whole, between the fragments"),
                one(0, FLAG_CONTINUES, 1, 1, b"second half"),
                one(3, FLAG_MORE, 4, 9, b"a"),
                one(4, FLAG_CONTINUES, 4, 9, b"another kind"),
                one(0, FLAG_CONTINUES, 1, 5, b"stray"),
            ],
        ),
        fr,
    );
    add(
        "frame_reassemble",
        "unknown_flags",
        encode_reassemble(100, &[one(0, 0x8001, 1, 1, b"x"), one(6, 0, 1, 1, b"")]),
        fr,
    );

    // hello_parse: the 32-byte hello.
    // The version this build speaks (the "valid" seeds once said 1, which stopped being
    // valid at version 2).
    let v = HANDSHAKE_VERSION;
    let hp = shmrpc_fuzz::hello::hello_parse;
    add(
        "hello_parse",
        "valid_16k",
        hello_bytes(v, 1, 16384, 16384),
        hp,
    );
    add(
        "hello_parse",
        "valid_min_max",
        hello_bytes(v, 1, 128, 1 << 31),
        hp,
    );
    add(
        "hello_parse",
        "bad_version",
        hello_bytes(v + 1, 1, 16384, 16384),
        hp,
    );
    add(
        "hello_parse",
        "bad_side",
        hello_bytes(v, 0, 16384, 16384),
        hp,
    );
    add(
        "hello_parse",
        "bad_capacity",
        hello_bytes(v, 1, 3000, 16384),
        hp,
    );

    // ring_reader: a valid ring image, honest traffic, and some hostile writes.
    let rr = shmrpc_fuzz::ring::ring_reader;
    let ring = |cap_sel, pre: Pre, ops: Vec<Op>| {
        RingInput {
            cap_sel,
            key: 0x5eed_0000_1234_5679,
            pre,
            ops,
        }
        .encode()
    };
    add(
        "ring_reader",
        "push_peek",
        ring(
            0,
            Pre::default(),
            vec![
                push(1, 5, 2),
                Op::Wait {
                    producer: false,
                    len: 0,
                },
                push(2, 0, 4),
                Op::Peek(3),
                Op::Wait {
                    producer: false,
                    len: 0,
                },
                push(3, 100, 6),
                Op::Wait {
                    producer: true,
                    len: 90,
                },
                Op::Peek(0),
            ],
        ),
        rr,
    );
    let mut wrap = Vec::new();
    for i in 0..12u32 {
        wrap.push(push(i, 40 + 8 * i as u16, i as u8 * 2));
        wrap.push(Op::Batch(2));
    }
    add(
        "ring_reader",
        "wrap_with_padding",
        ring(1, Pre::default(), wrap),
        rr,
    );
    add(
        "ring_reader",
        "reserve_large_and_too_large",
        ring(
            2,
            Pre::default(),
            vec![
                Op::Reserve {
                    len: 300,
                    action: 1,
                    tag: 7,
                    fill: 8,
                },
                Op::Reserve {
                    len: 496,
                    action: 2,
                    tag: 8,
                    fill: 10,
                },
                Op::Notify,
                Op::Reserve {
                    len: 497,
                    action: 1,
                    tag: 9,
                    fill: 12,
                },
                Op::Reserve {
                    len: u64::MAX,
                    action: 1,
                    tag: 9,
                    fill: 12,
                },
                Op::Batch(10),
                Op::Reserve {
                    len: 200,
                    action: 0,
                    tag: 1,
                    fill: 2,
                },
                Op::CloseProducer,
                Op::Peek(4),
            ],
        ),
        rr,
    );
    add(
        "ring_reader",
        "reattach_and_close",
        ring(
            3,
            Pre {
                start: Some(1 << 20),
                ..Pre::default()
            },
            vec![
                push(1, 600, 2),
                Op::ReattachConsumer,
                Op::Peek(1),
                Op::ReattachProducer,
                push(2, 900, 4),
                Op::CloseConsumer,
                push(3, 1, 6),
                Op::Peek(1),
            ],
        ),
        rr,
    );
    // A ring image written before attaching: positions 64/64 and a record at 64.
    let mut image = vec![0u8; 256];
    let key = 0x5eed_0000_1234_5679u64;
    image[64..72].copy_from_slice(&(64 ^ key).to_le_bytes());
    image[72..80].copy_from_slice(&(3u64 | 77 << 32).to_le_bytes());
    image[80..83].copy_from_slice(b"abc");
    add(
        "ring_reader",
        "image_with_record",
        ring(
            1,
            Pre {
                start: Some(64),
                image,
                ..Pre::default()
            },
            vec![Op::Peek(2), push(1, 10, 0), Op::Batch(5)],
        ),
        rr,
    );
    add(
        "ring_reader",
        "hostile_writes",
        ring(
            0,
            Pre::default(),
            vec![
                push(1, 16, 2),
                Op::Record {
                    base: 0,
                    delta: 0,
                    abs: 0,
                    len: 5000,
                    tag: 0,
                    stamp_xor: 0,
                },
                Op::Peek(0),
                Op::Record {
                    base: 0,
                    delta: 0,
                    abs: 0,
                    len: (1 << 31) | 16,
                    tag: 0,
                    stamp_xor: 0,
                },
                Op::Peek(0),
                Op::Word {
                    which: 1,
                    value: 4096,
                },
                push(2, 100, 4),
                Op::Word { which: 1, value: 8 },
                Op::Data {
                    off: 0,
                    bytes: vec![0xff; 40],
                },
                Op::Batch(3),
                Op::Word { which: 7, value: 0 },
                Op::Word { which: 4, value: 1 },
                Op::Peek(2),
            ],
        ),
        rr,
    );
    add(
        "ring_reader",
        "bad_header",
        ring(
            0,
            Pre {
                write_pos: Some(512),
                read_pos: Some(16),
                ..Pre::default()
            },
            vec![Op::Peek(0), Op::ReattachProducer],
        ),
        rr,
    );

    for (target, name, bytes, check) in seeds {
        check(&bytes);
        let dir = root.join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("seed_{name}")), &bytes).unwrap();
        println!("{target}/seed_{name}: {} bytes", bytes.len());
    }
}
