//! One producer and one consumer per ring.
//!
//! A [`WriteGrant`](super::WriteGrant) hands out `&mut [u8]` over ring memory and a
//! [`ReadGrant`](super::ReadGrant) `&[u8]`; both are sound only if no other handle of the
//! same end exists. Two guards make sure of that:
//!
//! - a **claim word** per end in the ring header, set from 0 to the attaching handle's token
//!   (pid in the high 32 bits, a per-process counter in the low 32) by compare-and-swap and
//!   cleared on drop or detach. It refuses a second end in another process that follows
//!   the protocol.
//! - a **registry** in this process of every attached end, keyed by the segment file's
//!   device and inode and the ring's offset. The peer is untrusted and can clear our claim
//!   word; the registry does not live in shared memory, so this process's own handles can
//!   never alias, even through a second mapping of the same file.
//!
//! A claim left by a process that died is cleared only by an explicit, `unsafe`
//! take-over (`ring::take_over_producer` / `take_over_consumer`).

use super::layout::RingMem;
use super::AttachError;
use crate::sync::{AtomicU64, Ordering};

/// Which end of a ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum End {
    /// The producing (writing) end.
    Producer,
    /// The consuming (reading) end.
    Consumer,
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            End::Producer => "producer",
            End::Consumer => "consumer",
        })
    }
}

/// How to treat a claim word that is already set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Refuse: [`AttachError::AlreadyAttached`].
    Exclusive,
    /// Overwrite it (the caller vouches that the holder is gone).
    #[cfg_attr(shmrpc_loom, allow(dead_code))]
    TakeOver,
}

/// The process id a token names.
fn holder_pid(token: u64) -> u32 {
    (token >> 32) as u32
}

/// A token for a new claim: never 0, unique within this process, and naming it.
fn new_token() -> u64 {
    // A plain std atomic, not the `sync` shim's: a counter private to this process, not
    // part of the shared-memory protocol. Relaxed: only uniqueness matters.
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
    let n = loop {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if n != 0 {
            break n;
        }
    };
    (u64::from(std::process::id()) << 32) | u64::from(n)
}

fn word(mem: &RingMem, end: End) -> &AtomicU64 {
    let w = &mem.header().wait.0;
    match end {
        End::Producer => &w.producer_claim,
        End::Consumer => &w.consumer_claim,
    }
}

/// An attached end's claim: the shared word (and, outside loom, the registry entry).
/// Dropping it releases both.
pub(crate) struct Claim {
    mem: RingMem,
    end: End,
    token: u64,
    #[cfg(not(shmrpc_loom))]
    _local: registry::Local,
}

impl Claim {
    /// Claims `end` of the ring in `mem`. Outside loom, `local` (this process's registry
    /// entry for the same end) must already be held: it is kept until the claim drops.
    pub(crate) fn acquire(
        mem: RingMem,
        end: End,
        mode: Mode,
        #[cfg(not(shmrpc_loom))] local: registry::Local,
    ) -> Result<Self, AttachError> {
        let token = new_token();
        let w = word(&mem, end);
        match mode {
            Mode::Exclusive => {
                // Acquire: pairs with the Release CAS in `Claim::drop` of the previous
                // holder, so everything it did to the ring happens before what we do. (No
                // Release needed: nobody learns anything from our token but its pid.)
                // Relaxed on failure: only the holder's pid is reported.
                w.compare_exchange(0, token, Ordering::Acquire, Ordering::Relaxed)
                    .map_err(|held| AttachError::AlreadyAttached {
                        end,
                        holder_pid: holder_pid(held),
                    })?;
            }
            Mode::TakeOver => {
                // Acquire: pairs with the Release CAS of a holder that did detach in time;
                // for one that died, the caller's `# Safety` obligation covers it.
                w.swap(token, Ordering::Acquire);
            }
        }
        Ok(Self {
            mem,
            end,
            token,
            #[cfg(not(shmrpc_loom))]
            _local: local,
        })
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        // Release: pairs with the Acquire CAS of the next attach (`Claim::acquire`), so
        // every access of this handle to the ring happens before the next holder's. If
        // the word no longer holds our token (a peer overwrote it), it is not ours to
        // clear. The registry entry goes after this, when the fields drop.
        let _ = word(&self.mem, self.end).compare_exchange(
            self.token,
            0,
            Ordering::Release,
            Ordering::Relaxed,
        );
    }
}

/// This process's attached ring ends, keyed by segment file and offset.
#[cfg(not(shmrpc_loom))]
pub(crate) mod registry {
    use super::{AttachError, End};
    use std::sync::{Mutex, PoisonError};

    /// A segment file: (device, inode), as `fstat` reports it. Two mappings of one file
    /// (two opens of a name, or a memfd received twice) have the same id.
    pub(crate) type FileId = (u64, u64);

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    struct Entry {
        file: FileId,
        /// Payload offset of the ring (the file offset less the fixed segment header).
        offset: usize,
        /// Ring size, header included.
        size: usize,
        end: End,
    }

    /// Few rings per process, attached rarely: a list scanned under a lock is plenty.
    static ATTACHED: Mutex<Vec<Entry>> = Mutex::new(Vec::new());

    fn attached() -> std::sync::MutexGuard<'static, Vec<Entry>> {
        // Nothing panics while the lock is held; a poisoned list is still consistent.
        ATTACHED.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Another ring of `file` that `[offset, offset + size)` overlaps without being the
    /// same ring.
    fn overlap(list: &[Entry], file: FileId, offset: usize, size: usize) -> Option<Entry> {
        list.iter()
            .find(|e| {
                e.file == file
                    && e.offset < offset + size
                    && offset < e.offset + e.size
                    && (e.offset != offset || e.size != size)
            })
            .copied()
    }

    fn overlap_error(offset: usize, size: usize, other: Entry) -> AttachError {
        AttachError::Overlap {
            offset,
            size,
            other_offset: other.offset,
            other_size: other.size,
        }
    }

    /// Whether a ring header may be written at `[offset, offset + size)` of `file`: not
    /// over another attached ring's memory.
    pub(crate) fn check_init(file: FileId, offset: usize, size: usize) -> Result<(), AttachError> {
        match overlap(&attached(), file, offset, size) {
            Some(other) => Err(overlap_error(offset, size, other)),
            None => Ok(()),
        }
    }

    /// Records `end` of the ring at `offset` of `file` as attached in this process, or
    /// says why it cannot be.
    pub(crate) fn register(
        file: FileId,
        offset: usize,
        size: usize,
        end: End,
    ) -> Result<Local, AttachError> {
        let entry = Entry {
            file,
            offset,
            size,
            end,
        };
        let mut list = attached();
        if list.contains(&entry) {
            return Err(AttachError::AlreadyAttached {
                end,
                holder_pid: std::process::id(),
            });
        }
        if let Some(other) = overlap(&list, file, offset, size) {
            return Err(overlap_error(offset, size, other));
        }
        list.push(entry);
        Ok(Local(entry))
    }

    /// A registry entry; dropping it removes the entry.
    #[derive(Debug)]
    pub(crate) struct Local(Entry);

    impl Drop for Local {
        fn drop(&mut self) {
            let mut list = attached();
            if let Some(i) = list.iter().position(|e| *e == self.0) {
                list.swap_remove(i);
            }
        }
    }
}

#[cfg(all(test, not(shmrpc_loom)))]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    use crate::ring::{self, ring_size, AttachError, End, RING_HEADER_SIZE};
    use crate::sys::Segment;

    const CAP: usize = 4096;
    /// Ring offsets of the claim words (see the layout assertions).
    const PRODUCER_CLAIM: usize = 400;
    const CONSUMER_CLAIM: usize = 408;

    fn anonymous(rings: usize) -> Arc<Segment> {
        Arc::new(
            Segment::anonymous(rings * ring_size(CAP), 0, |s| {
                (0..rings).try_for_each(|i| {
                    ring::init(s, i * ring_size(CAP), CAP).map_err(|e| e.to_string())
                })
            })
            .expect("segment"),
        )
    }

    fn assert_held_by_us(r: Result<impl std::fmt::Debug, AttachError>, want: End) {
        match r {
            Err(e @ AttachError::AlreadyAttached { end, holder_pid }) => {
                assert_eq!((end, holder_pid), (want, std::process::id()));
                let msg = e.to_string();
                assert!(
                    msg.contains(&want.to_string())
                        && msg.contains(&std::process::id().to_string()),
                    "{msg}"
                );
            }
            other => panic!("a second {want} attached: {other:?}"),
        }
    }

    /// A header word of the ring at offset 0 of `seg`, written as a peer would.
    fn header_word(seg: &Segment, off: usize) -> &AtomicU64 {
        assert!(off < RING_HEADER_SIZE, "header words only");
        // SAFETY: ring header words are only ever accessed atomically (never lent out).
        unsafe { seg.atomic_u64(off) }.expect("in bounds")
    }

    fn claim_word(seg: &Segment, off: usize) -> u64 {
        header_word(seg, off).load(Ordering::Acquire)
    }

    #[test]
    fn a_second_end_is_refused_until_the_first_is_dropped_or_detached() {
        let seg = anonymous(1);
        let p = ring::producer(&seg, 0, CAP).expect("first producer");
        assert_held_by_us(ring::producer(&seg, 0, CAP), End::Producer);
        let c = ring::consumer(&seg, 0, CAP).expect("first consumer (the other end)");
        assert_held_by_us(ring::consumer(&seg, 0, CAP), End::Consumer);
        // The shared words name this process while held.
        assert_eq!(
            claim_word(&seg, PRODUCER_CLAIM) >> 32,
            u64::from(std::process::id())
        );
        assert_eq!(
            claim_word(&seg, CONSUMER_CLAIM) >> 32,
            u64::from(std::process::id())
        );

        drop(p);
        assert_eq!(
            claim_word(&seg, PRODUCER_CLAIM),
            0,
            "drop releases the claim"
        );
        let p = ring::producer(&seg, 0, CAP).expect("attach after drop");
        p.detach();
        let mut p = ring::producer(&seg, 0, CAP).expect("attach after detach");
        c.detach();
        let mut c = ring::consumer(&seg, 0, CAP).expect("attach after detach");
        p.try_push(1, b"still one ring").unwrap();
        assert_eq!(&*c.try_peek().unwrap(), b"still one ring");
    }

    #[test]
    fn a_second_mapping_of_the_same_file_is_refused_too() {
        let name = format!("ring-claim-{}-twice", std::process::id());
        let seg = Arc::new(
            Segment::create_with(&name, ring_size(CAP), 0, |s| {
                ring::init(s, 0, CAP).map_err(|e| e.to_string())
            })
            .expect("create"),
        );
        let again = Arc::new(Segment::open(&name).expect("open"));
        let _p = ring::producer(&seg, 0, CAP).expect("producer");
        assert_held_by_us(ring::producer(&again, 0, CAP), End::Producer);
        // Even with the shared claim cleared (a peer can write it), the registry refuses.
        header_word(&again, PRODUCER_CLAIM).store(0, Ordering::Release);
        assert_held_by_us(ring::producer(&again, 0, CAP), End::Producer);
        // SAFETY: nothing is taken over: a handle of this process holds the end, which
        // the registry refuses before the claim word is touched.
        assert_held_by_us(
            unsafe { ring::take_over_producer(&again, 0, CAP) },
            End::Producer,
        );
        // The other end, through the other mapping, is fine.
        let _c = ring::consumer(&again, 0, CAP).expect("consumer via the second mapping");
    }

    #[test]
    fn overlapping_rings_are_refused() {
        // Ring A at 0 (768 bytes with a 256-byte area); ring B's header at 512 lies in A's
        // data area. Both headers are written before anything attaches.
        const SMALL: usize = 256;
        let seg = Arc::new(
            Segment::anonymous(4096, 0, |s| {
                ring::init(s, 512, 128).map_err(|e| e.to_string())?;
                ring::init(s, 0, SMALL).map_err(|e| e.to_string())
            })
            .expect("segment"),
        );
        let _a = ring::producer(&seg, 0, SMALL).expect("ring A");
        let overlap = |r: Result<(), AttachError>| match r {
            Err(AttachError::Overlap {
                offset: 512,
                size,
                other_offset: 0,
                other_size,
            }) => assert_eq!((size, other_size), (ring_size(128), ring_size(SMALL))),
            other => panic!("overlapping ring accepted: {other:?}"),
        };
        overlap(ring::producer(&seg, 512, 128).map(drop));
        overlap(ring::consumer(&seg, 512, 128).map(drop));
        // Writing a header there would scribble on A's data area: refused as well.
        overlap(ring::init(&seg, 512, 128));
        // A ring after A's end is independent.
        ring::init(&seg, 1024, 128).expect("init after A");
        ring::producer(&seg, 1024, 128)
            .expect("ring after A")
            .detach();
    }

    #[test]
    fn take_over_replaces_a_dead_holders_claim() {
        let seg = anonymous(2);
        let ghost = 4242u64 << 32 | 7;
        header_word(&seg, CONSUMER_CLAIM).store(ghost, Ordering::Release);
        match ring::consumer(&seg, 0, CAP) {
            Err(AttachError::AlreadyAttached {
                end: End::Consumer,
                holder_pid: 4242,
            }) => {}
            other => panic!("attached over a foreign claim: {other:?}"),
        }
        // The other ring of the segment is not affected.
        ring::consumer(&seg, ring_size(CAP), CAP).expect("ring 1");
        // SAFETY: "process 4242" never touches this ring: the claim was forged above.
        let c = unsafe { ring::take_over_consumer(&seg, 0, CAP) }.expect("take over");
        assert_eq!(
            claim_word(&seg, CONSUMER_CLAIM) >> 32,
            u64::from(std::process::id())
        );
        drop(c);
        assert_eq!(claim_word(&seg, CONSUMER_CLAIM), 0);
    }

    /// Ring offsets of `write_pos` and `read_pos`.
    const WRITE_POS: usize = 128;
    const READ_POS: usize = 256;

    /// A producer that died between publishing its last records (their stamps) and
    /// recording them (`write_pos`), then taken over: its records stay, whether the
    /// consumer read them before the take-over (and attached again) or after, and the new
    /// producer continues after them. Without the walk in `published_end`, the first case
    /// is refused as corrupt (`read_pos` past `write_pos`) and in the second the new record
    /// overwrites the dead producer's last one.
    #[test]
    fn take_over_continues_after_records_published_but_not_recorded() {
        // 3,000 bytes first, so that the unrecorded records include a padding record
        // (the second of them does not fit before the end), or not.
        for (filler, read_first) in [(0, false), (0, true), (3000, false), (3000, true)] {
            let seg = anonymous(1);
            let mut c = ring::consumer(&seg, 0, CAP).unwrap();
            let mut p = ring::producer(&seg, 0, CAP).unwrap();
            let mut got = Vec::new();
            let read_all = |c: &mut ring::Consumer, got: &mut Vec<(u32, Vec<u8>)>| {
                c.try_read_batch(100, |tag, b| got.push((tag, b.to_vec())))
                    .unwrap_or(0)
            };
            if filler > 0 {
                p.try_push(9, &vec![9; filler]).unwrap();
                read_all(&mut c, &mut got);
            }
            p.try_push(1, b"recorded").unwrap();
            let recorded = p.position();
            p.try_push(2, &[2; 600]).unwrap();
            p.try_push(3, &[3; 600]).unwrap();
            let end = p.position();
            p.detach();
            // The death: `write_pos` still names the end of record 1, the claim is a dead
            // process's.
            header_word(&seg, WRITE_POS).store(recorded, Ordering::Release);
            header_word(&seg, PRODUCER_CLAIM).store(4242 << 32 | 7, Ordering::Release);
            if read_first {
                read_all(&mut c, &mut got);
                // A consumer attaching now (its `read_pos` past `write_pos`) is no
                // corruption either.
                c.detach();
                c = ring::consumer(&seg, 0, CAP).expect("the consumer attaches again");
            }
            // SAFETY: "process 4242" never touches this ring: the claim was forged above.
            let mut p = unsafe { ring::take_over_producer(&seg, 0, CAP) }
                .unwrap_or_else(|e| panic!("filler {filler}, read first {read_first}: {e}"));
            assert_eq!(p.position(), end, "continues after the published records");
            assert_eq!(header_word(&seg, WRITE_POS).load(Ordering::Acquire), end);
            p.try_push(4, b"after the take-over").unwrap();
            while read_all(&mut c, &mut got) > 0 {}
            let tags: Vec<u32> = got.iter().map(|(t, _)| *t).collect();
            let want: &[u32] = if filler > 0 {
                &[9, 1, 2, 3, 4]
            } else {
                &[1, 2, 3, 4]
            };
            assert_eq!(tags, want, "filler {filler}, read first {read_first}");
            let last = &got[got.len() - 1].1;
            assert_eq!(last, b"after the take-over");
            assert!(got[got.len() - 3].1.iter().all(|&b| b == 2));
            assert!(got[got.len() - 2].1.iter().all(|&b| b == 3));
        }
    }

    /// Stamps forged by the consumer after `write_pos` (it knows the key) cannot move the
    /// new producer outside the data area or past a ring's worth: a record that would
    /// cross the end stops the walk, and a chain of forged stamps ends a lap on, where the
    /// slot it started from holds the stamp of the lap before. (The walk's own bound of a
    /// ring's worth is for a peer that re-stamps slots while it runs; not built here.)
    #[test]
    fn forged_stamps_after_write_pos_stay_bounded() {
        let seg = anonymous(1);
        // SAFETY: the key word is read-only after init and only accessed atomically.
        let key = unsafe { seg.atomic_u64(16) }
            .unwrap()
            .load(Ordering::Relaxed);
        // SAFETY: data words are accessed atomically here, with no handle attached.
        let data =
            |pos: u64| unsafe { seg.atomic_u64(RING_HEADER_SIZE + (pos as usize % CAP)) }.unwrap();
        // Both ends at the last slot, where a forged stamp names a record of 16 bytes:
        // with its header, 16 bytes past the end.
        let last = CAP as u64 - 16;
        header_word(&seg, WRITE_POS).store(last, Ordering::Release);
        header_word(&seg, READ_POS).store(last, Ordering::Release);
        data(last).store(last ^ key, Ordering::Release);
        data(last + 8).store(16, Ordering::Release);
        header_word(&seg, PRODUCER_CLAIM).store(4242 << 32 | 7, Ordering::Release);
        // SAFETY: as above, "process 4242" is a forgery.
        let p = unsafe { ring::take_over_producer(&seg, 0, CAP) }.expect("take over");
        assert_eq!(p.position(), last, "a record past the end is not one");
        p.detach();
        header_word(&seg, WRITE_POS).store(0, Ordering::Release);
        header_word(&seg, READ_POS).store(0, Ordering::Release);
        // Every slot stamped as an empty record of its position: a full ring, no more.
        for pos in (0..CAP as u64).step_by(16) {
            data(pos + 8).store(0, Ordering::Relaxed);
            data(pos).store(pos ^ key, Ordering::Release);
        }
        let p = ring::producer(&seg, 0, CAP).expect("attach");
        assert_eq!(p.position(), CAP as u64, "at most a ring's worth");
        p.detach();
    }

    #[test]
    fn a_refused_attach_leaves_no_claim_behind() {
        let seg = anonymous(1);
        // Inconsistent positions: refused after the end was claimed; the claim must go.
        header_word(&seg, 128).store(16, Ordering::Release); // write_pos
        header_word(&seg, 256).store(32, Ordering::Release); // read_pos
        assert!(matches!(
            ring::producer(&seg, 0, CAP),
            Err(AttachError::Corrupt(_))
        ));
        assert_eq!(claim_word(&seg, PRODUCER_CLAIM), 0);
        header_word(&seg, 256).store(0, Ordering::Release);
        ring::producer(&seg, 0, CAP).expect("nothing registered by the refused attach");
    }
}
