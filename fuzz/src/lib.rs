//! Fuzz targets for shmrpc: what each target checks lives here, so the same checks run
//! under libFuzzer (`fuzz_targets/*.rs`, one line each), over the seed corpus in plain
//! `cargo test`, and in the seed generator (`examples/gen_seeds.rs`).
//!
//! Every target asserts invariants (a failed `assert!` is a crash to libFuzzer), not only
//! "does not panic". Inputs are plain byte strings read by [`Cursor`] (little-endian,
//! zeros once the input runs out), so seeds can be written by hand or by the generator.
// The ring target plays the peer through raw segment access, which is `unsafe`; it is
// allowed only there (see `ring::Harness`).
#![deny(unsafe_code)]

pub mod frame;
pub mod hello;
pub mod ring;

/// Reads fixed-width little-endian fields from fuzz input; past the end it yields zeros.
#[derive(Debug)]
pub struct Cursor<'a> {
    data: &'a [u8],
}

impl<'a> Cursor<'a> {
    /// A cursor over `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    /// Whether input is left.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Up to `n` bytes (fewer at the end).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        let (head, tail) = self.data.split_at(n);
        self.data = tail;
        head
    }

    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        self.bytes(self.data.len())
    }

    fn fixed<const N: usize>(&mut self) -> [u8; N] {
        let mut b = [0u8; N];
        let src = self.bytes(N);
        b[..src.len()].copy_from_slice(src);
        b
    }

    /// One byte.
    pub fn u8(&mut self) -> u8 {
        self.fixed::<1>()[0]
    }
    /// A little-endian u16.
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.fixed())
    }
    /// A little-endian u32.
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.fixed())
    }
    /// A little-endian u64.
    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.fixed())
    }
}

/// Builds inputs in the byte format [`Cursor`] reads (for seeds and tests).
#[derive(Debug, Default, Clone)]
pub struct Writer(pub Vec<u8>);

impl Writer {
    /// One byte.
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    /// A little-endian u16.
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// A little-endian u32.
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// A little-endian u64.
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// Raw bytes.
    pub fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.0.extend_from_slice(v);
        self
    }
}

/// A target's check: runs one input, panics on a violated invariant.
pub type Check = fn(&[u8]);

/// The check function of each target, by name.
pub const TARGETS: [(&str, Check); 4] = [
    ("frame_decode", frame::frame_decode),
    ("frame_reassemble", frame::frame_reassemble),
    ("hello_parse", hello::hello_parse),
    ("ring_reader", ring::ring_reader),
];

#[cfg(test)]
mod tests {
    /// The committed corpus passes every target's checks (plain `cargo test`, stable).
    #[test]
    fn corpus_replays() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
        for (name, check) in super::TARGETS {
            let mut n = 0;
            for entry in std::fs::read_dir(root.join(name)).unwrap() {
                let path = entry.unwrap().path();
                check(&std::fs::read(&path).unwrap());
                n += 1;
            }
            assert!(n > 0, "no seeds for {name}");
        }
    }
}
