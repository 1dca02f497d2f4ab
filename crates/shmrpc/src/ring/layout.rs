//! The ring's shared-memory layout and the memory it lives in.

#[cfg(not(shmrpc_loom))]
use std::ptr::NonNull;
use std::sync::Arc;

use crate::sync::{AtomicU32, AtomicU64, Ordering};

/// "RING", little-endian.
pub const RING_MAGIC: u32 = u32::from_le_bytes(*b"RING");
/// Bumped whenever the ring's layout or record format changes (2: attach claim words).
pub const RING_VERSION: u32 = 2;
/// Bytes taken by the ring header before the data area.
pub const RING_HEADER_SIZE: usize = 512;
/// Bytes of every record's header: stamp (8), length and flags (4), tag (4).
pub const RECORD_HEADER: usize = 16;
/// Records start at multiples of this, so a header never straddles the end.
pub const RECORD_ALIGN: usize = 16;
/// Smallest data area accepted.
pub const MIN_CAPACITY: usize = 128;
/// The largest position a ring header may hold when a side attaches. Positions count bytes
/// from 0, and passing 2^62 would take decades at memory speed, so a larger one is a
/// peer's lie; refusing it keeps every position sum far from overflowing `u64`.
pub const MAX_POSITION: u64 = 1 << 62;
/// Largest data area accepted: lengths are 31-bit.
pub const MAX_CAPACITY: usize = 1 << 31;
/// Bit 31 of a record's length word marks a padding record (skip to the end of the area).
pub(crate) const PAD_FLAG: u32 = 1 << 31;

/// Flags in [`WaitWords::closed`].
pub(crate) const CLOSED_BY_PRODUCER: u32 = 1;
pub(crate) const CLOSED_BY_CONSUMER: u32 = 2;

/// Aligns and pads a value to 128 bytes: two cache lines, because x86's adjacent-line
/// prefetcher pulls lines in pairs, and a neighbour's writes would otherwise bounce ours.
#[repr(C, align(128))]
pub(crate) struct CachePadded<T>(pub T);

/// Written once by the creator, then read-only.
#[repr(C)]
pub(crate) struct Meta {
    pub magic: AtomicU32,
    pub version: AtomicU32,
    pub capacity: AtomicU64,
    /// Random per ring, odd. A record's stamp is `position ^ key`: zeroed memory and intact
    /// stamps of earlier laps cannot pass for a new record, and the producer clears the
    /// next record's slot before publishing (`Producer::clear_stamp`), so neither can a
    /// stale stamp partly overwritten by payload.
    pub key: AtomicU64,
}

/// The futex words, the close flags and the attach claims.
#[repr(C)]
pub(crate) struct WaitWords {
    /// Non-zero while the consumer sleeps or is about to: how to wake it (`WAIT_*`).
    pub consumer_waiting: AtomicU32,
    /// Non-zero while the producer sleeps on a full ring.
    pub producer_waiting: AtomicU32,
    /// `CLOSED_BY_*` bits.
    pub closed: AtomicU32,
    pub _pad: AtomicU32,
    /// The attached producer's token (pid << 32 | per-process counter), 0 when free. Only
    /// written on attach and detach, so it can share this line: it costs nothing per record.
    pub producer_claim: AtomicU64,
    /// The attached consumer's token, as above.
    pub consumer_claim: AtomicU64,
}

/// The ring header: one pair of cache lines per independently written field group.
#[repr(C)]
pub(crate) struct RingHeader {
    pub meta: CachePadded<Meta>,
    /// Total bytes ever published by the producer (a position, not an offset). Written by
    /// the producer only; read by attaching consumers and inspectors, never on the
    /// consumer's hot path (records carry their own stamps).
    pub write_pos: CachePadded<AtomicU64>,
    /// Total bytes released by the consumer. Written by the consumer only.
    pub read_pos: CachePadded<AtomicU64>,
    pub wait: CachePadded<WaitWords>,
}

#[cfg(not(shmrpc_loom))]
const _: () = {
    use std::mem::{offset_of, size_of};
    assert!(size_of::<RingHeader>() == RING_HEADER_SIZE);
    assert!(offset_of!(RingHeader, write_pos) == 128);
    assert!(offset_of!(RingHeader, read_pos) == 256);
    assert!(offset_of!(RingHeader, wait) == 384);
    assert!(offset_of!(Meta, capacity) == 8);
    assert!(offset_of!(Meta, key) == 16);
    assert!(offset_of!(WaitWords, producer_waiting) == 4);
    assert!(offset_of!(WaitWords, closed) == 8);
    assert!(offset_of!(WaitWords, producer_claim) == 16);
    assert!(offset_of!(WaitWords, consumer_claim) == 24);
    assert!(size_of::<CachePadded<WaitWords>>() == 128);
};

/// Bytes a ring with `capacity` data bytes occupies.
pub const fn ring_size(capacity: usize) -> usize {
    RING_HEADER_SIZE + capacity
}

/// Space a record with `len` payload bytes takes in the data area.
#[inline]
pub const fn record_size(len: usize) -> usize {
    RECORD_HEADER + ((len + RECORD_ALIGN - 1) & !(RECORD_ALIGN - 1))
}

/// The memory of one ring: its header and data area, kept alive by `owner`.
///
/// In production it is a range of a shared-memory segment. Under loom the header and the
/// record-header words are loom atomics on the heap, and payload bytes are a plain buffer,
/// so the model checker sees every access that carries the protocol.
pub(crate) struct RingMem {
    #[cfg(not(shmrpc_loom))]
    header: NonNull<RingHeader>,
    #[cfg(not(shmrpc_loom))]
    data: NonNull<u8>,
    #[cfg(shmrpc_loom)]
    heap: Arc<loom_mem::LoomMem>,
    capacity: usize,
    #[cfg(not(shmrpc_loom))]
    _owner: Arc<dyn Send + Sync>,
}

// SAFETY: `RingMem` is a view of memory designed for concurrent access by two parties
// (atomics for everything shared, and the SPSC protocol for payload bytes); moving the
// view to another thread is no different from the peer being another process.
unsafe impl Send for RingMem {}
// SAFETY: as above; shared references only reach atomics or protocol-owned ranges.
unsafe impl Sync for RingMem {}

impl RingMem {
    /// A view of `capacity` data bytes at `base`, owned by `owner`.
    ///
    /// # Safety
    /// `base` must point to `ring_size(capacity)` bytes, 128-aligned, that stay mapped and
    /// writable as long as `owner` lives, and are only accessed through ring views (or by
    /// a peer process following the same protocol, or a hostile one we validate against).
    #[cfg(not(shmrpc_loom))]
    pub(crate) unsafe fn new(
        base: NonNull<u8>,
        capacity: usize,
        owner: Arc<dyn Send + Sync>,
    ) -> Self {
        // SAFETY: the caller guarantees `ring_size(capacity)` bytes at `base`, so the data
        // area starting RING_HEADER_SIZE bytes in is inside the same allocation.
        let data = unsafe { base.add(RING_HEADER_SIZE) };
        Self {
            header: base.cast(),
            data,
            capacity,
            _owner: owner,
        }
    }

    #[cfg(shmrpc_loom)]
    // loom's atomics are not Send/Sync to clippy's eye; `RingMem` vouches for them above.
    #[allow(clippy::arc_with_non_send_sync)]
    pub(crate) fn new_heap(capacity: usize) -> Self {
        Self {
            heap: Arc::new(loom_mem::LoomMem::new(capacity)),
            capacity,
        }
    }

    /// Another view of the same memory, kept alive by the same owner (for inspection).
    #[cfg(not(shmrpc_loom))]
    pub(crate) fn clone_view(&self) -> Self {
        Self {
            header: self.header,
            data: self.data,
            capacity: self.capacity,
            _owner: self._owner.clone(),
        }
    }

    #[cfg(shmrpc_loom)]
    pub(crate) fn clone_view(&self) -> Self {
        Self {
            heap: self.heap.clone(),
            capacity: self.capacity,
        }
    }

    #[inline]
    pub(crate) fn header(&self) -> &RingHeader {
        #[cfg(not(shmrpc_loom))]
        // SAFETY: `new`'s contract: the header is mapped for as long as `self` lives, and
        // 128-aligned; it consists of atomics only.
        return unsafe { self.header.as_ref() };
        #[cfg(shmrpc_loom)]
        return &self.heap.header;
    }

    #[inline]
    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// The 8-byte word at data offset `off`.
    ///
    /// Callers pass offsets that are multiples of 8 and below `capacity` (record starts,
    /// masked by `capacity - 1`, plus 0 or 8). The offset is masked into the area and down
    /// to a multiple of 8 anyway, so even a wrong one stays in bounds in release builds
    /// (the debug assertion catches it in tests).
    #[inline]
    pub(crate) fn word(&self, off: usize) -> &AtomicU64 {
        debug_assert!(off % 8 == 0 && off + 8 <= self.capacity);
        // `capacity` is a power of two >= 128: the mask keeps `off + 8 <= capacity`.
        let off = off & (self.capacity - 1) & !7;
        #[cfg(not(shmrpc_loom))]
        // SAFETY: `off + 8 <= capacity` and `off` is a multiple of 8 (masked just above)
        // in a 128-aligned area, so this is an aligned 8-byte location inside the mapping;
        // AtomicU64 has u64's layout, and all accesses to record-header words are atomic
        // on both sides.
        return unsafe { &*self.data.as_ptr().add(off).cast::<AtomicU64>() };
        #[cfg(shmrpc_loom)]
        return &self.heap.words[off / 8];
    }

    /// Pointer to payload byte `off` of the data area, for `len` bytes.
    ///
    /// # Safety
    /// `off + len <= capacity` (the caller validated the record against the data area).
    #[inline]
    pub(crate) unsafe fn bytes_ptr(&self, off: usize, len: usize) -> *mut u8 {
        debug_assert!(off + len <= self.capacity);
        let _ = len;
        #[cfg(not(shmrpc_loom))]
        // SAFETY: the caller guarantees `off + len <= capacity`, so the pointer stays
        // inside the data area (computing it is all this does).
        return unsafe { self.data.as_ptr().add(off) };
        #[cfg(shmrpc_loom)]
        return self.heap.bytes_ptr(off);
    }

    pub(crate) fn load_capacity_checked(&self) -> u64 {
        self.header().meta.0.capacity.load(Ordering::Relaxed)
    }
}

#[cfg(shmrpc_loom)]
mod loom_mem {
    use super::*;
    use std::cell::UnsafeCell;

    pub(crate) struct LoomMem {
        pub header: RingHeader,
        pub words: Box<[AtomicU64]>,
        bytes: Box<[UnsafeCell<u8>]>,
    }

    impl LoomMem {
        pub fn new(capacity: usize) -> Self {
            let z32 = || AtomicU32::new(0);
            Self {
                header: RingHeader {
                    meta: CachePadded(Meta {
                        magic: z32(),
                        version: z32(),
                        capacity: AtomicU64::new(0),
                        key: AtomicU64::new(0),
                    }),
                    write_pos: CachePadded(AtomicU64::new(0)),
                    read_pos: CachePadded(AtomicU64::new(0)),
                    wait: CachePadded(WaitWords {
                        consumer_waiting: z32(),
                        producer_waiting: z32(),
                        closed: z32(),
                        _pad: z32(),
                        producer_claim: AtomicU64::new(0),
                        consumer_claim: AtomicU64::new(0),
                    }),
                },
                words: (0..capacity / 8).map(|_| AtomicU64::new(0)).collect(),
                bytes: (0..capacity).map(|_| UnsafeCell::new(0)).collect(),
            }
        }

        pub fn bytes_ptr(&self, off: usize) -> *mut u8 {
            self.bytes[off].get()
        }
    }
}
