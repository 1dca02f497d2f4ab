//! Per-message payloads: every byte written by the sender, every byte checked by the receiver.
//!
//! Message `seed` is the sequence of 64-bit words `base(seed) + i * STEP` (little endian), cut
//! to the message length, where `base` mixes the seed. A stale, torn, shifted or foreign
//! message fails [`verify`]; filling and verifying both touch every byte once.

/// Distance between consecutive words of a message.
const STEP: u64 = 0x9E37_79B9_7F4A_7C15;

/// The replies of a round trip use the request's seed with this bit flipped.
pub const REPLY: u64 = 1 << 63;

#[inline]
fn base(seed: u64) -> u64 {
    // splitmix64 finaliser: neighbouring seeds give unrelated messages.
    let mut z = seed.wrapping_add(0x6A09_E667_F3BC_C909);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Writes message `seed` into `buf` (its whole length).
#[inline]
pub fn fill(buf: &mut [u8], seed: u64) {
    let b = base(seed);
    let mut chunks = buf.chunks_exact_mut(8);
    let mut i = 0u64;
    for c in &mut chunks {
        c.copy_from_slice(&b.wrapping_add(i.wrapping_mul(STEP)).to_le_bytes());
        i += 1;
    }
    let tail = chunks.into_remainder();
    let n = tail.len();
    tail.copy_from_slice(&b.wrapping_add(i.wrapping_mul(STEP)).to_le_bytes()[..n]);
}

/// Whether `buf` is exactly message `seed` of length `len`.
#[inline]
pub fn verify(buf: &[u8], len: usize, seed: u64) -> bool {
    if buf.len() != len {
        return false;
    }
    let b = base(seed);
    let mut diff = 0u64;
    let mut chunks = buf.chunks_exact(8);
    let mut i = 0u64;
    for c in &mut chunks {
        let w = u64::from_le_bytes(c.try_into().expect("8 bytes"));
        diff |= w ^ b.wrapping_add(i.wrapping_mul(STEP));
        i += 1;
    }
    let tail = chunks.remainder();
    let want = b.wrapping_add(i.wrapping_mul(STEP)).to_le_bytes();
    diff == 0 && tail == &want[..tail.len()]
}

/// For a message that failed [`verify`]: which message each stretch of it came from, as
/// byte ranges and offsets from `seed` among the messages `seed - 1024 ..= seed + 1024`
/// (a torn or overwritten message shows several; `?` marks bytes of no such message).
pub fn explain(buf: &[u8], seed: u64) -> String {
    let mut bases = std::collections::HashMap::new();
    for s in seed.saturating_sub(1024)..=seed.saturating_add(1024) {
        bases.insert(base(s), s);
    }
    let mut runs: Vec<(usize, usize, Option<u64>)> = Vec::new();
    for (i, c) in buf.chunks_exact(8).enumerate() {
        let w = u64::from_le_bytes(c.try_into().expect("8 bytes"));
        let who = bases
            .get(&w.wrapping_sub((i as u64).wrapping_mul(STEP)))
            .copied();
        match runs.last_mut() {
            Some(r) if r.2 == who && r.1 == i * 8 => r.1 += 8,
            _ => runs.push((i * 8, i * 8 + 8, who)),
        }
    }
    let shown: Vec<String> = runs
        .iter()
        .take(12)
        .map(|&(a, b, who)| match who {
            Some(s) => format!("[{a}..{b}) msg {:+}", s as i64 - seed as i64),
            None => format!("[{a}..{b}) ?"),
        })
        .collect();
    let more = if runs.len() > 12 {
        format!(" … ({} stretches)", runs.len())
    } else {
        String::new()
    };
    format!("{}{more}", shown.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_catches_damage() {
        for len in [0, 1, 7, 8, 9, 64, 1000, 1024, 65536] {
            let mut buf = vec![0u8; len];
            fill(&mut buf, 42);
            assert!(verify(&buf, len, 42), "len {len}");
            if len > 0 {
                assert!(!verify(&buf, len, 43), "another seed, len {len}");
                let last = len - 1;
                buf[last] ^= 1;
                assert!(!verify(&buf, len, 42), "flipped last byte, len {len}");
                buf[last] ^= 1;
                buf[0] ^= 0x80;
                assert!(!verify(&buf, len, 42), "flipped first byte, len {len}");
            }
            assert!(!verify(&buf, len + 1, 42), "wrong length");
        }
    }

    #[test]
    fn explains_a_torn_message() {
        let mut buf = vec![0u8; 64];
        fill(&mut buf, 100);
        let mut other = vec![0u8; 64];
        fill(&mut other, 97);
        buf[32..48].copy_from_slice(&other[32..48]);
        buf[56..].fill(0);
        assert_eq!(
            explain(&buf, 100),
            "[0..32) msg +0, [32..48) msg -3, [48..56) msg +0, [56..64) ?"
        );
    }
}
