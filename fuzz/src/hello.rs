//! Target `hello_parse`: bytes into `channel::Hello::parse`, the client's validation of
//! the server's 32-byte hello.

use shmrpc::channel::{ConnectError, Hello, HANDSHAKE_VERSION};
use shmrpc::lowlevel::ring::{MAX_CAPACITY, MIN_CAPACITY};

/// The hello a server sends for rings of `cap0` and `cap1` bytes (for seeds and tests).
pub fn hello_bytes(version: u32, side: u32, cap0: u64, cap1: u64) -> Vec<u8> {
    let mut v = b"SHMRPCH1".to_vec();
    v.extend_from_slice(&version.to_le_bytes());
    v.extend_from_slice(&side.to_le_bytes());
    v.extend_from_slice(&cap0.to_le_bytes());
    v.extend_from_slice(&cap1.to_le_bytes());
    v
}

fn ring_capacity_ok(c: u64) -> bool {
    // Written out rather than calling ring::valid_capacity: a power of two in range.
    c != 0 && c & (c - 1) == 0 && c >= MIN_CAPACITY as u64 && c <= MAX_CAPACITY as u64
}

/// Target `hello_parse`: `Hello::parse` accepts exactly the well-formed hellos (the
/// documented format, checked here independently), returns their fields, and refuses
/// everything else with `BadHello` — never another error, never a panic.
pub fn hello_parse(data: &[u8]) {
    let got = Hello::parse(data);
    let u32_at = |i: usize| u32::from_le_bytes(data[i..i + 4].try_into().unwrap());
    let u64_at = |i: usize| u64::from_le_bytes(data[i..i + 8].try_into().unwrap());
    let valid = data.len() == 32
        && &data[..8] == b"SHMRPCH1"
        && u32_at(8) == HANDSHAKE_VERSION
        && u32_at(12) == 1
        && ring_capacity_ok(u64_at(16))
        && ring_capacity_ok(u64_at(24));
    match got {
        Ok(h) => {
            assert!(valid, "accepted a bad hello {data:02x?}: {h:?}");
            assert_eq!(h.version, HANDSHAKE_VERSION);
            assert_eq!(h.side, 1);
            assert_eq!(h.capacities, [u64_at(16), u64_at(24)]);
            for c in h.capacities {
                assert!(ring_capacity_ok(c));
                // The capacity must be usable as a ring size on this machine.
                assert!(usize::try_from(c).is_ok());
                assert!(shmrpc::lowlevel::ring::valid_capacity(c));
            }
        }
        Err(ConnectError::BadHello(msg)) => {
            assert!(!valid, "refused a good hello {data:02x?}: {msg}");
            assert!(!msg.is_empty());
        }
        Err(e) => panic!("Hello::parse returned a non-BadHello error: {e:?}"),
    }
}
