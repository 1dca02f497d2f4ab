//! The raw baselines: the least code that can move the same data between the same two
//! processes through shared memory. Each is measured in the same run as the channel, so
//! the ratio between them is what the benchmark reports.
//!
//! Layout of the baseline segment (payload offsets; each control word on its own pair of
//! cache lines so that no two of them share a line):
//!
//! ```text
//! 0      PING    u64  cache-line ping-pong
//! 128    FUTEX   u32  futex ping-pong
//! 256    HEAD    u64  batched SPSC: records published (producer writes)
//! 384    TAIL    u64  batched SPSC: records consumed (consumer writes)
//! 512    DONE    u64  a sink's "all received" word
//! 640    RTT_A   u64  copy ping-pong: buffers sent by the lead
//! 768    RTT_B   u64  copy ping-pong: buffers sent back by the peer
//! 1024   FLAGS   one u64 per copy-floor buffer, 128 bytes apart
//! 64 Ki  DATA    SPSC slots or copy-floor buffers
//! ```
//!
//! Raw access to the segment is `unsafe` ([`Segment::atomic_u64`], `write_bytes`, ...): the
//! private helpers below wrap it, and are sound only because every use in this module
//! follows the baselines' hand-off protocol (see `write`).
// The one module of the CLI that touches shared memory directly.
#![allow(unsafe_code)]

use std::hint::spin_loop;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use shmrpc::lowlevel::sys::{futex, Segment};

use crate::error::{BenchError, Result};
use shmrpc_harness::Deadline;

const OFF_PING: usize = 0;
const OFF_FUTEX: usize = 128;
const OFF_HEAD: usize = 256;
const OFF_TAIL: usize = 384;
const OFF_DONE: usize = 512;
const OFF_RTT_A: usize = 640;
const OFF_RTT_B: usize = 768;
const OFF_FLAGS: usize = 1024;
const FLAG_STRIDE: usize = 128;
/// Most copy-floor buffers (their flags must fit below `OFF_DATA`).
pub const MAX_COPY_SLOTS: usize = (OFF_DATA - OFF_FLAGS) / FLAG_STRIDE;
const OFF_DATA: usize = 64 << 10;
// Every flag fits below the data area, and there can be as many buffers as 8 MiB holds.
const _: () = assert!(OFF_FLAGS + MAX_COPY_SLOTS * FLAG_STRIDE <= OFF_DATA);
const _: () = assert!(MAX_COPY_SLOTS >= 128);

/// Records the batched SPSC producer writes before publishing its index.
pub const SPSC_BATCH: usize = 32;
/// Most records the batched SPSC consumer reads before publishing its index.
pub const SPSC_READ_MAX: u64 = 256;

/// How long a futex sleeper sleeps before re-checking its watchdog.
const NAP: Duration = Duration::from_millis(100);

/// Payload bytes of a baseline segment with `data` bytes of slots or buffers.
pub fn segment_size(data: usize) -> usize {
    OFF_DATA + data
}

fn u64_at(seg: &Segment, off: usize) -> Result<&AtomicU64> {
    // SAFETY: the baseline segment holds no ring, and this module accesses its control
    // and stamp words only atomically (data bytes go through `write`/`read`, never
    // overlapping a word used here).
    unsafe { seg.atomic_u64(off) }.ok_or_else(|| outside(&format!("baseline word at {off}")))
}

fn u32_at(seg: &Segment, off: usize) -> Result<&AtomicU32> {
    // SAFETY: as in `u64_at`.
    unsafe { seg.atomic_u32(off) }.ok_or_else(|| outside(&format!("baseline word at {off}")))
}

/// An access past the end of the baseline segment (sized from the plan, so a bug).
fn outside(what: &str) -> BenchError {
    BenchError::Inconsistent(format!("{what}: outside the baseline segment"))
}

/// Copies `src` to payload offset `off`. Private to this module, whose every call follows
/// the hand-off protocol: a side writes a slot or buffer only while it owns it (before the
/// Release store of the stamp/flag/index that hands it over, or while the peer waits for
/// its command), and reads one only after the Acquire load that hands it back; so no two
/// accesses to the same bytes from two threads are ever concurrent.
fn write(seg: &Segment, off: usize, src: &[u8]) -> Option<()> {
    // SAFETY: the hand-off protocol above excludes concurrent access to these bytes.
    unsafe { seg.write_bytes(off, src) }
}

/// Copies payload bytes at `off` into `dst`; see `write` for why this is sound.
fn read(seg: &Segment, off: usize, dst: &mut [u8]) -> Option<()> {
    // SAFETY: as in `write`.
    unsafe { seg.read_bytes(off, dst) }
}

/// Clears every control word (the lead does this before each case, while the peer waits
/// for its command) and touches the data area so that page faults are not measured.
pub fn reset(seg: &Segment, copy_slots: usize) -> Result<()> {
    u64_at(seg, OFF_PING)?.store(0, Ordering::Relaxed);
    u32_at(seg, OFF_FUTEX)?.store(0, Ordering::Relaxed);
    for off in [OFF_HEAD, OFF_TAIL, OFF_DONE, OFF_RTT_A, OFF_RTT_B] {
        u64_at(seg, off)?.store(0, Ordering::Relaxed);
    }
    for s in 0..copy_slots.min(MAX_COPY_SLOTS) {
        u64_at(seg, OFF_FLAGS + s * FLAG_STRIDE)?.store(0, Ordering::Relaxed);
    }
    // Record-ring stamps from an earlier case must not match this case's positions.
    if seg.len() >= OFF_DATA + 2 * REC_RING {
        write(seg, OFF_DATA, &vec![0u8; 2 * REC_RING])
            .ok_or_else(|| outside("clearing the record rings"))?;
    }
    // Release: the peer's first Acquire load of any word then sees all of the above.
    std::sync::atomic::fence(Ordering::Release);
    Ok(())
}

/// Writes zeros over the whole data area once, so its pages exist before any timing.
pub fn prefault(seg: &Segment) -> Result<()> {
    let zeros = vec![0u8; 1 << 20];
    let mut off = OFF_DATA;
    while off < seg.len() {
        let n = zeros.len().min(seg.len() - off);
        write(seg, off, &zeros[..n]).ok_or_else(|| outside("prefault"))?;
        off += n;
    }
    Ok(())
}

/// Stamps `seq` into the first and last 8 bytes of a message (one word if it is shorter
/// than 16 bytes), so the receiver can check order and a torn copy.
#[inline]
pub fn stamp(buf: &mut [u8], seq: u64) {
    let b = seq.to_le_bytes();
    buf[..8].copy_from_slice(&b);
    let n = buf.len();
    if n >= 16 {
        buf[n - 8..].copy_from_slice(&b);
    }
}

/// Whether `buf` carries the stamp `seq` at both ends.
#[inline]
pub fn stamped(buf: &[u8], seq: u64) -> bool {
    let n = buf.len();
    let b = seq.to_le_bytes();
    n >= 8 && buf[..8] == b && (n < 16 || buf[n - 8..] == b)
}

/// The lead side of the cache-line ping-pong: one u64, odd values from us, even ones from
/// the peer. Returns the round-trip time of each of the last `total - warm` pings.
pub fn line_lead(seg: &Segment, total: u64, warm: u64) -> Result<Vec<u64>> {
    let w = u64_at(seg, OFF_PING)?;
    let mut wd = Deadline::new("cache-line ping-pong", Duration::from_secs(60));
    let mut samples = Vec::with_capacity(total.saturating_sub(warm) as usize);
    for i in 0..total {
        let t0 = Instant::now();
        w.store(2 * i + 1, Ordering::Release);
        let want = 2 * i + 2;
        while w.load(Ordering::Acquire) != want {
            spin_loop();
            wd.tick()?;
        }
        if i >= warm {
            samples.push(t0.elapsed().as_nanos() as u64);
        }
    }
    Ok(samples)
}

/// The peer side of the cache-line ping-pong.
pub fn line_echo(seg: &Segment, total: u64) -> Result<()> {
    let w = u64_at(seg, OFF_PING)?;
    let mut wd = Deadline::new("cache-line ping-pong", Duration::from_secs(120)).watch_parent();
    for i in 0..total {
        let want = 2 * i + 1;
        while w.load(Ordering::Acquire) != want {
            spin_loop();
            wd.tick()?;
        }
        w.store(2 * i + 2, Ordering::Release);
    }
    Ok(())
}

/// Sleeps on the futex word until it holds `want` (no spinning at all).
fn futex_await(w: &AtomicU32, want: u32, wd: &mut Deadline) -> Result<()> {
    loop {
        let v = w.load(Ordering::Acquire);
        if v == want {
            return Ok(());
        }
        futex::wait(w, v, Some(NAP));
        wd.check()?;
    }
}

/// The lead side of the bare futex ping-pong: store, wake, sleep until answered.
pub fn futex_lead(seg: &Segment, total: u64, warm: u64) -> Result<Vec<u64>> {
    let w = u32_at(seg, OFF_FUTEX)?;
    let mut wd = Deadline::new("futex ping-pong", Duration::from_secs(60));
    let mut samples = Vec::with_capacity(total.saturating_sub(warm) as usize);
    for i in 0..total as u32 {
        let t0 = Instant::now();
        w.store(2 * i + 1, Ordering::Release);
        futex::wake(w, 1);
        futex_await(w, 2 * i + 2, &mut wd)?;
        if u64::from(i) >= warm {
            samples.push(t0.elapsed().as_nanos() as u64);
        }
    }
    Ok(samples)
}

/// The peer side of the bare futex ping-pong.
pub fn futex_echo(seg: &Segment, total: u64) -> Result<()> {
    let w = u32_at(seg, OFF_FUTEX)?;
    let mut wd = Deadline::new("futex ping-pong", Duration::from_secs(120)).watch_parent();
    for i in 0..total as u32 {
        futex_await(w, 2 * i + 1, &mut wd)?;
        w.store(2 * i + 2, Ordering::Release);
        futex::wake(w, 1);
    }
    Ok(())
}

/// Bytes of one record of the record-ring baseline: the channel's layout for a 64-byte
/// message (16-byte header: stamp, length and tag; then the payload).
const REC: usize = 80;
/// Records per direction of the record-ring baseline (a lap of about 64 KiB, like the
/// channel's round-trip rings; a multiple of the record size, so no wrap padding).
const REC_SLOTS: u64 = 819;
/// Bytes of one direction of the record-ring baseline, rounded up to 128 so that both
/// directions start on a cache-line pair, as the channel's rings do.
pub const REC_RING: usize = (REC * REC_SLOTS as usize + 127) & !127;

/// One direction of the record-ring baseline.
struct RecRing<'a> {
    seg: &'a Segment,
    base: usize,
    /// Consumer's released count; the producer reads it only when the ring looks full.
    tail: &'a AtomicU64,
    fence: bool,
}

impl<'a> RecRing<'a> {
    fn new(seg: &'a Segment, dir: usize, fence: bool) -> Result<Self> {
        check_area(seg, 2 * REC_RING)?;
        Ok(Self {
            seg,
            base: OFF_DATA + dir * REC_RING,
            tail: u64_at(seg, if dir == 0 { OFF_HEAD } else { OFF_TAIL })?,
            fence,
        })
    }

    fn stamp_word(&self, i: u64) -> Result<&'a AtomicU64> {
        u64_at(self.seg, self.base + (i % REC_SLOTS) as usize * REC)
    }

    /// Publishes record `i` (waiting while the ring is full).
    fn push(&self, i: u64, msg: &[u8], tail: &mut u64, wd: &mut Deadline) -> Result<()> {
        while i - *tail >= REC_SLOTS {
            *tail = self.tail.load(Ordering::Acquire);
            spin_loop();
            wd.tick()?;
        }
        let off = self.base + (i % REC_SLOTS) as usize * REC;
        write(self.seg, off + 16, msg).ok_or_else(|| outside("record"))?;
        u64_at(self.seg, off + 8)?.store(msg.len() as u64, Ordering::Relaxed);
        // Release: the payload and length are visible before the stamp.
        u64_at(self.seg, off)?.store(i + 1, Ordering::Release);
        if self.fence {
            std::sync::atomic::fence(Ordering::SeqCst);
        }
        Ok(())
    }

    /// Waits for record `i`, copies it out and releases it.
    fn pop(&self, i: u64, out: &mut [u8], wd: &mut Deadline) -> Result<()> {
        let stamp = self.stamp_word(i)?;
        while stamp.load(Ordering::Acquire) != i + 1 {
            spin_loop();
            wd.tick()?;
        }
        let off = self.base + (i % REC_SLOTS) as usize * REC;
        let len = u64_at(self.seg, off + 8)?.load(Ordering::Relaxed) as usize;
        if len != out.len() {
            return Err(BenchError::WrongData(format!(
                "record ring: length {len}, expected {}",
                out.len()
            )));
        }
        read(self.seg, off + 16, out).ok_or_else(|| outside("record"))?;
        // Release: our copy is done before the producer reuses the slot.
        self.tail.store(i + 1, Ordering::Release);
        if self.fence {
            std::sync::atomic::fence(Ordering::SeqCst);
        }
        Ok(())
    }
}

/// The lead side of the record-ring round trip: the channel's record layout and
/// publish/release protocol (a stamp per record, the consumer's position stored per
/// message), with nothing else: no validation, no wake-up protocol (unless `fence`, which
/// adds the SeqCst fence per publish and per release that the wake-up check costs).
pub fn rec_lead(seg: &Segment, total: u64, warm: u64, fence: bool) -> Result<Vec<u64>> {
    let (out, back) = (RecRing::new(seg, 0, fence)?, RecRing::new(seg, 1, fence)?);
    let mut wd = Deadline::new("record-ring round trip", Duration::from_secs(60));
    let mut samples = Vec::with_capacity(total.saturating_sub(warm) as usize);
    let mut msg = [0x11u8; 64];
    let mut got = [0u8; 64];
    let mut tail = 0;
    for i in 0..total {
        stamp(&mut msg, i);
        let t0 = Instant::now();
        out.push(i, &msg, &mut tail, &mut wd)?;
        back.pop(i, &mut got, &mut wd)?;
        let dt = t0.elapsed();
        if !stamped(&got, i) {
            return Err(BenchError::WrongData(format!(
                "record ring: echo {i} came back wrong"
            )));
        }
        if i >= warm {
            samples.push(dt.as_nanos() as u64);
        }
    }
    Ok(samples)
}

/// The peer side of the record-ring round trip.
pub fn rec_echo(seg: &Segment, total: u64, fence: bool) -> Result<()> {
    let (inp, back) = (RecRing::new(seg, 0, fence)?, RecRing::new(seg, 1, fence)?);
    let mut wd = Deadline::new("record-ring round trip", Duration::from_secs(120)).watch_parent();
    let mut buf = [0u8; 64];
    let mut tail = 0;
    for i in 0..total {
        inp.pop(i, &mut buf, &mut wd)?;
        back.push(i, &buf, &mut tail, &mut wd)?;
    }
    Ok(())
}

/// Where the copy ping-pong's two buffers of `size` bytes start (page-aligned, apart).
fn copy_rtt_bufs(size: usize) -> (usize, usize) {
    let stride = size.div_ceil(4096) * 4096;
    (OFF_DATA, OFF_DATA + stride)
}

/// Data bytes the copy ping-pong needs for messages of `size` bytes.
pub fn copy_rtt_area(size: usize) -> usize {
    2 * size.div_ceil(4096) * 4096
}

/// The lead side of the copy ping-pong floor: write the message into buffer A, flip A's
/// flag; wait for B's flag, copy buffer B out. The least a round trip of `size` bytes
/// through shared memory can cost: two copies in, two copies out, two flag transfers.
/// Returns the round-trip time of each of the last `total - warm`.
pub fn copy_rtt_lead(seg: &Segment, size: usize, total: u64, warm: u64) -> Result<Vec<u64>> {
    check_area(seg, copy_rtt_area(size))?;
    let (a, b) = copy_rtt_bufs(size);
    let (fa, fb) = (u64_at(seg, OFF_RTT_A)?, u64_at(seg, OFF_RTT_B)?);
    let mut wd = Deadline::new("copy ping-pong", Duration::from_secs(60));
    let mut samples = Vec::with_capacity(total.saturating_sub(warm) as usize);
    let mut msg = vec![0x11u8; size];
    let mut back = vec![0u8; size];
    for i in 0..total {
        stamp(&mut msg, i);
        let t0 = Instant::now();
        write(seg, a, &msg).ok_or_else(|| outside("buffer A"))?;
        // Release: the buffer is written before the flag says so.
        fa.store(i + 1, Ordering::Release);
        while fb.load(Ordering::Acquire) != i + 1 {
            spin_loop();
            wd.tick()?;
        }
        read(seg, b, &mut back).ok_or_else(|| outside("buffer B"))?;
        let dt = t0.elapsed();
        if !stamped(&back, i) {
            return Err(BenchError::WrongData(format!(
                "copy ping-pong: echo {i} came back wrong"
            )));
        }
        if i >= warm {
            samples.push(dt.as_nanos() as u64);
        }
    }
    Ok(samples)
}

/// The peer side of the copy ping-pong floor: copy buffer A out, write the copy into
/// buffer B, flip B's flag.
pub fn copy_rtt_echo(seg: &Segment, size: usize, total: u64) -> Result<()> {
    check_area(seg, copy_rtt_area(size))?;
    let (a, b) = copy_rtt_bufs(size);
    let (fa, fb) = (u64_at(seg, OFF_RTT_A)?, u64_at(seg, OFF_RTT_B)?);
    let mut wd = Deadline::new("copy ping-pong", Duration::from_secs(120)).watch_parent();
    let mut buf = vec![0u8; size];
    for i in 0..total {
        // Acquire: pairs with the lead's Release store; buffer A is complete.
        while fa.load(Ordering::Acquire) != i + 1 {
            spin_loop();
            wd.tick()?;
        }
        read(seg, a, &mut buf).ok_or_else(|| outside("buffer A"))?;
        write(seg, b, &buf).ok_or_else(|| outside("buffer B"))?;
        fb.store(i + 1, Ordering::Release);
    }
    Ok(())
}

/// Waits (spinning) until the sink reports `total` received; the end of a stream's timing.
fn await_done(seg: &Segment, total: u64, wd: &mut Deadline) -> Result<()> {
    let done = u64_at(seg, OFF_DONE)?;
    while done.load(Ordering::Acquire) != total {
        spin_loop();
        wd.tick()?;
    }
    Ok(())
}

/// The producer of the batched SPSC baseline: fixed slots of `size` bytes, the shared
/// head index stored once per [`SPSC_BATCH`] records, the consumer's tail read only when
/// the ring looks full. Returns the time until the consumer had everything.
pub fn spsc_lead(seg: &Segment, size: usize, slots: usize, total: u64) -> Result<Duration> {
    check_area(seg, size * slots)?;
    let (head_w, tail_w) = (u64_at(seg, OFF_HEAD)?, u64_at(seg, OFF_TAIL)?);
    let mut wd = Deadline::new("batched SPSC stream", Duration::from_secs(60));
    let mut src = vec![0xA5u8; size];
    let n_slots = slots as u64;
    let (mut head, mut tail) = (0u64, 0u64);
    let t0 = Instant::now();
    while head < total {
        let mut k = 0;
        while k < SPSC_BATCH && head < total {
            if head - tail == n_slots {
                // Acquire: the consumer's reads of the slots it released happened before.
                tail = tail_w.load(Ordering::Acquire);
                if head - tail == n_slots {
                    break;
                }
            }
            stamp(&mut src, head);
            let off = OFF_DATA + (head % n_slots) as usize * size;
            write(seg, off, &src).ok_or_else(|| outside("slot"))?;
            head += 1;
            k += 1;
        }
        if k == 0 {
            spin_loop();
            wd.tick()?;
        } else {
            // Release: publishes the slots written above.
            head_w.store(head, Ordering::Release);
        }
    }
    await_done(seg, total, &mut wd)?;
    Ok(t0.elapsed())
}

/// The consumer of the batched SPSC baseline. Returns the number of bad records.
pub fn spsc_sink(seg: &Segment, size: usize, slots: usize, total: u64) -> Result<u64> {
    check_area(seg, size * slots)?;
    let (head_w, tail_w) = (u64_at(seg, OFF_HEAD)?, u64_at(seg, OFF_TAIL)?);
    let mut wd = Deadline::new("batched SPSC stream", Duration::from_secs(120)).watch_parent();
    let mut dst = vec![0u8; size];
    let n_slots = slots as u64;
    let mut tail = 0u64;
    let mut errors = 0u64;
    while tail < total {
        // Acquire: pairs with the producer's Release store of head.
        let head = head_w.load(Ordering::Acquire);
        if head == tail {
            spin_loop();
            wd.tick()?;
            continue;
        }
        if head < tail || head - tail > n_slots {
            return Err(BenchError::WrongData(format!(
                "SPSC baseline: head {head} impossible with tail {tail}"
            )));
        }
        let end = head.min(tail + SPSC_READ_MAX);
        while tail < end {
            let off = OFF_DATA + (tail % n_slots) as usize * size;
            read(seg, off, &mut dst).ok_or_else(|| outside("slot"))?;
            errors += u64::from(!stamped(&dst, tail));
            tail += 1;
        }
        // Release: our reads of the slots happen before the producer reuses them.
        tail_w.store(tail, Ordering::Release);
    }
    u64_at(seg, OFF_DONE)?.store(total, Ordering::Release);
    Ok(errors)
}

/// The writer of the copy floor: `slots` buffers of `size` bytes, each with a flag; fill
/// a free buffer, flip its flag, move on. Returns the time until the reader had all.
pub fn copy_lead(seg: &Segment, size: usize, slots: usize, total: u64) -> Result<Duration> {
    check_area(seg, size * slots)?;
    if slots == 0 || slots > MAX_COPY_SLOTS {
        return Err(BenchError::Inconsistent(format!(
            "copy floor: {slots} buffers (1..={MAX_COPY_SLOTS})"
        )));
    }
    let mut wd = Deadline::new("copy floor", Duration::from_secs(60));
    let mut src = vec![0x5Au8; size];
    let t0 = Instant::now();
    for i in 0..total {
        let s = (i % slots as u64) as usize;
        let flag = u64_at(seg, OFF_FLAGS + s * FLAG_STRIDE)?;
        // Acquire: the reader's copy out of this buffer happened before we overwrite it.
        while flag.load(Ordering::Acquire) != 0 {
            spin_loop();
            wd.tick()?;
        }
        stamp(&mut src, i);
        write(seg, OFF_DATA + s * size, &src).ok_or_else(|| outside("buffer"))?;
        // Release: publishes the buffer.
        flag.store(i + 1, Ordering::Release);
    }
    await_done(seg, total, &mut wd)?;
    Ok(t0.elapsed())
}

/// The reader of the copy floor. Returns the number of bad buffers.
pub fn copy_sink(seg: &Segment, size: usize, slots: usize, total: u64) -> Result<u64> {
    check_area(seg, size * slots)?;
    if slots == 0 || slots > MAX_COPY_SLOTS {
        return Err(BenchError::Inconsistent(format!(
            "copy floor: {slots} buffers (1..={MAX_COPY_SLOTS})"
        )));
    }
    let mut wd = Deadline::new("copy floor", Duration::from_secs(120)).watch_parent();
    let mut dst = vec![0u8; size];
    let mut errors = 0;
    for i in 0..total {
        let s = (i % slots as u64) as usize;
        let flag = u64_at(seg, OFF_FLAGS + s * FLAG_STRIDE)?;
        // Acquire: pairs with the writer's Release store; the buffer is complete.
        while flag.load(Ordering::Acquire) != i + 1 {
            spin_loop();
            wd.tick()?;
        }
        read(seg, OFF_DATA + s * size, &mut dst).ok_or_else(|| outside("buffer"))?;
        errors += u64::from(!stamped(&dst, i));
        // Release: our copy is done before the writer reuses the buffer.
        flag.store(0, Ordering::Release);
    }
    u64_at(seg, OFF_DONE)?.store(total, Ordering::Release);
    Ok(errors)
}

fn check_area(seg: &Segment, bytes: usize) -> Result<()> {
    if OFF_DATA + bytes > seg.len() {
        return Err(BenchError::Inconsistent(format!(
            "baseline needs {} data bytes; the segment has {}",
            bytes,
            seg.len().saturating_sub(OFF_DATA)
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_check_both_ends() {
        let mut b = vec![0u8; 64];
        stamp(&mut b, 7);
        assert!(stamped(&b, 7));
        assert!(!stamped(&b, 8));
        b[63] ^= 1;
        assert!(!stamped(&b, 7));
        let mut short = [0u8; 8];
        stamp(&mut short, 3);
        assert!(stamped(&short, 3));
    }

    #[test]
    fn baselines_run_between_two_threads() {
        // The same code the two processes run, on two threads of one process, with an
        // anonymous segment: checks the protocols and the stamps (not timings). As in the
        // benchmark, the words are reset before each case, while no peer runs.
        let seg = Segment::anonymous(segment_size(2 * REC_RING), 0, |_| Ok(())).unwrap();
        let seg = &seg;
        let case = |lead: &dyn Fn() -> usize, sink: &(dyn Fn() -> u64 + Sync)| {
            reset(seg, 4).unwrap();
            std::thread::scope(|s| {
                let t = s.spawn(sink);
                let n = lead();
                (n, t.join().unwrap())
            })
        };
        let r = case(&|| line_lead(seg, 100, 10).unwrap().len(), &|| {
            line_echo(seg, 100).unwrap();
            0
        });
        assert_eq!(r, (90, 0));
        for fence in [false, true] {
            let r = case(&|| rec_lead(seg, 2000, 10, fence).unwrap().len(), &|| {
                rec_echo(seg, 2000, fence).unwrap();
                0
            });
            assert_eq!(r, (1990, 0));
        }
        for size in [64, 5000] {
            let r = case(
                &|| copy_rtt_lead(seg, size, 300, 10).unwrap().len(),
                &|| {
                    copy_rtt_echo(seg, size, 300).unwrap();
                    0
                },
            );
            assert_eq!(r, (290, 0));
        }
        let r = case(&|| futex_lead(seg, 50, 0).unwrap().len(), &|| {
            futex_echo(seg, 50).unwrap();
            0
        });
        assert_eq!(r, (50, 0));
        let r = case(
            &|| {
                spsc_lead(seg, 64, 16, 1000).unwrap();
                0
            },
            &|| spsc_sink(seg, 64, 16, 1000).unwrap(),
        );
        assert_eq!(r, (0, 0));
        let r = case(
            &|| {
                copy_lead(seg, 1024, 4, 100).unwrap();
                0
            },
            &|| copy_sink(seg, 1024, 4, 100).unwrap(),
        );
        assert_eq!(r, (0, 0));
    }
}
