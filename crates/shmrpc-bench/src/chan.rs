//! The shmrpc channel's side of each workload: round trips (blocking and async) and
//! batched one-way streams, through the library's public API only.

use std::hint::spin_loop;
use std::time::{Duration, Instant};

use crate::error::{BenchError, Result};
use shmrpc::channel::{Endpoint, TryRecvError, TrySendError};

use super::raw::{stamp, stamped};
use shmrpc_harness::Deadline;

/// Records the producer commits (deferred) before one `notify`.
pub const STREAM_BATCH: usize = 32;
/// Most records the consumer takes per `recv_batch`.
pub const STREAM_READ_MAX: usize = 256;
/// Default bound on the bytes of one `recv_batch`. Space is released once per batch, so a
/// batch of many big records keeps the producer waiting until all are copied out (a
/// batch of 256 × 64 KiB records would hold the whole 8 MiB ring); a bound in bytes
/// keeps both sides copying at the same time.
pub const STREAM_READ_BYTES: usize = 32 << 10;

/// Records per `recv_batch` for messages of `size` bytes, at most `bytes` per batch.
pub fn read_max(size: usize, bytes: usize) -> usize {
    (bytes / shmrpc::lowlevel::ring::record_size(size)).clamp(1, STREAM_READ_MAX)
}

/// Size of the smallest round-trip messages (the 64 B cases).
pub const RTT_SIZE: usize = 64;

/// Buffers of the round trips: a fixed array for the 64 B cases, so the copies compile to
/// a few moves as in the record-ring baseline (a `Vec` of
/// run-time length costs a `memcpy` call per copy, ~15 % of a 64 B round trip).
trait Buf: AsRef<[u8]> + AsMut<[u8]> {}
impl<B: AsRef<[u8]> + AsMut<[u8]>> Buf for B {}

/// The lead side of blocking round trips: send `size` bytes, wait for the echo, copy it
/// out. Returns the round-trip time of each of the last `total - warm`.
pub fn rtt_lead(ep: &mut Endpoint, size: usize, total: u64, warm: u64) -> Result<Vec<u64>> {
    if size == RTT_SIZE {
        rtt_lead_in(ep, [0x11u8; RTT_SIZE], [0u8; RTT_SIZE], total, warm)
    } else {
        rtt_lead_in(ep, vec![0x11u8; size], vec![0u8; size], total, warm)
    }
}

fn rtt_lead_in(
    ep: &mut Endpoint,
    mut msg: impl Buf,
    mut back: impl Buf,
    total: u64,
    warm: u64,
) -> Result<Vec<u64>> {
    let size = msg.as_ref().len();
    let mut samples = Vec::with_capacity(total.saturating_sub(warm) as usize);
    for i in 0..total {
        stamp(msg.as_mut(), i);
        let t0 = Instant::now();
        ep.send(msg.as_ref()).map_err(BenchError::shmrpc("send"))?;
        {
            let m = ep.recv().map_err(BenchError::shmrpc("recv"))?;
            if m.len() != size {
                return Err(BenchError::WrongData(format!(
                    "echo of {} bytes, expected {size}",
                    m.len()
                )));
            }
            back.as_mut().copy_from_slice(&m);
        }
        let dt = t0.elapsed();
        if !stamped(back.as_ref(), i) {
            return Err(BenchError::WrongData(format!("echo {i} came back wrong")));
        }
        if i >= warm {
            samples.push(dt.as_nanos() as u64);
        }
    }
    Ok(samples)
}

/// The peer side of blocking round trips: receive, copy out, send the copy back.
pub fn rtt_echo(ep: &mut Endpoint, size: usize, total: u64) -> Result<()> {
    if size == RTT_SIZE {
        rtt_echo_in(ep, [0u8; RTT_SIZE], total)
    } else {
        rtt_echo_in(ep, vec![0u8; size], total)
    }
}

fn rtt_echo_in(ep: &mut Endpoint, mut buf: impl Buf, total: u64) -> Result<()> {
    let size = buf.as_ref().len();
    for _ in 0..total {
        {
            let m = ep.recv().map_err(BenchError::shmrpc("recv"))?;
            if m.len() != size {
                return Err(BenchError::WrongData(format!(
                    "request of {} bytes, expected {size}",
                    m.len()
                )));
            }
            buf.as_mut().copy_from_slice(&m);
        }
        ep.send(buf.as_ref()).map_err(BenchError::shmrpc("send"))?;
    }
    Ok(())
}

/// [`rtt_lead`] from a tokio task (`send_async`/`recv_async`).
pub async fn rtt_lead_async(
    ep: &mut Endpoint,
    size: usize,
    total: u64,
    warm: u64,
) -> Result<Vec<u64>> {
    if size == RTT_SIZE {
        rtt_lead_async_in(ep, [0x11u8; RTT_SIZE], [0u8; RTT_SIZE], total, warm).await
    } else {
        rtt_lead_async_in(ep, vec![0x11u8; size], vec![0u8; size], total, warm).await
    }
}

async fn rtt_lead_async_in(
    ep: &mut Endpoint,
    mut msg: impl Buf,
    mut back: impl Buf,
    total: u64,
    warm: u64,
) -> Result<Vec<u64>> {
    let size = msg.as_ref().len();
    let mut samples = Vec::with_capacity(total.saturating_sub(warm) as usize);
    for i in 0..total {
        stamp(msg.as_mut(), i);
        let t0 = Instant::now();
        ep.send_async(msg.as_ref())
            .await
            .map_err(BenchError::shmrpc("send_async"))?;
        {
            let m = ep
                .recv_async()
                .await
                .map_err(BenchError::shmrpc("recv_async"))?;
            if m.len() != size {
                return Err(BenchError::WrongData(format!(
                    "echo of {} bytes, expected {size}",
                    m.len()
                )));
            }
            back.as_mut().copy_from_slice(&m);
        }
        let dt = t0.elapsed();
        if !stamped(back.as_ref(), i) {
            return Err(BenchError::WrongData(format!("echo {i} came back wrong")));
        }
        if i >= warm {
            samples.push(dt.as_nanos() as u64);
        }
    }
    Ok(samples)
}

/// [`rtt_echo`] from a tokio task.
pub async fn rtt_echo_async(ep: &mut Endpoint, size: usize, total: u64) -> Result<()> {
    if size == RTT_SIZE {
        rtt_echo_async_in(ep, [0u8; RTT_SIZE], total).await
    } else {
        rtt_echo_async_in(ep, vec![0u8; size], total).await
    }
}

async fn rtt_echo_async_in(ep: &mut Endpoint, mut buf: impl Buf, total: u64) -> Result<()> {
    let size = buf.as_ref().len();
    for _ in 0..total {
        {
            let m = ep
                .recv_async()
                .await
                .map_err(BenchError::shmrpc("recv_async"))?;
            if m.len() != size {
                return Err(BenchError::WrongData(format!(
                    "request of {} bytes, expected {size}",
                    m.len()
                )));
            }
            buf.as_mut().copy_from_slice(&m);
        }
        ep.send_async(buf.as_ref())
            .await
            .map_err(BenchError::shmrpc("send_async"))?;
    }
    Ok(())
}

/// The producer of a one-way stream: writes each message in place (`try_reserve`),
/// commits it without a wake check (`commit_deferred`), and checks once per
/// [`STREAM_BATCH`] whether the consumer sleeps (`notify`). Spins while the ring is full.
/// Returns the time until the consumer reported that it had everything.
pub fn stream_lead(ep: &mut Endpoint, size: usize, total: u64) -> Result<Duration> {
    let mut wd = Deadline::new("channel stream", Duration::from_secs(60));
    let mut src = vec![0xA5u8; size];
    let mut i = 0u64;
    let t0 = Instant::now();
    while i < total {
        let p = ep.sender().producer();
        let mut k = 0;
        while k < STREAM_BATCH && i < total {
            match p.try_reserve(size) {
                Ok(mut g) => {
                    stamp(&mut src, i);
                    g.copy_from_slice(&src);
                    g.commit_deferred(0);
                    i += 1;
                    k += 1;
                }
                Err(TrySendError::Full) => break,
                Err(e) => return Err(BenchError::shmrpc("try_reserve")(e)),
            }
        }
        if k == 0 {
            spin_loop();
            wd.tick()?;
        } else {
            p.notify();
        }
    }
    let (got, errors) = read_report(ep)?;
    let dt = t0.elapsed();
    if got != total || errors != 0 {
        return Err(BenchError::WrongData(format!(
            "stream: the consumer got {got} of {total} messages, {errors} bad"
        )));
    }
    Ok(dt)
}

/// The consumer of a one-way stream: `recv_batch` of at most `read_max` records, copying
/// each message out and checking its sequence stamp, then a 16-byte report (count, bad)
/// back to the producer.
pub fn stream_sink(ep: &mut Endpoint, size: usize, total: u64, read_max: usize) -> Result<u64> {
    let mut dst = vec![0u8; size];
    let mut next = 0u64;
    let mut errors = 0u64;
    while next < total {
        let max = read_max.max(1).min((total - next) as usize);
        ep.receiver()
            .recv_batch(max, |_tag, payload| {
                if payload.len() == size {
                    dst.copy_from_slice(payload);
                    errors += u64::from(!stamped(&dst, next));
                } else {
                    errors += 1;
                }
                next += 1;
            })
            .map_err(BenchError::shmrpc("recv_batch"))?;
    }
    let mut report = [0u8; 16];
    report[..8].copy_from_slice(&next.to_le_bytes());
    report[8..].copy_from_slice(&errors.to_le_bytes());
    ep.send(&report)
        .map_err(BenchError::shmrpc("send report"))?;
    Ok(errors)
}

/// The producer of a one-way stream in a waiting mode (spin-then-park or park): as
/// [`stream_lead`], but when the ring is full it first wakes the consumer for what it
/// committed (`notify`), then waits for room with the channel's strategy
/// (`Sender::reserve`) instead of spinning on its own.
pub fn stream_lead_waiting(ep: &mut Endpoint, size: usize, total: u64) -> Result<Duration> {
    let mut src = vec![0xA5u8; size];
    let mut i = 0u64;
    let t0 = Instant::now();
    while i < total {
        let mut k = 0;
        {
            let p = ep.sender().producer();
            while k < STREAM_BATCH && i < total {
                match p.try_reserve(size) {
                    Ok(mut g) => {
                        stamp(&mut src, i);
                        g.copy_from_slice(&src);
                        g.commit_deferred(0);
                        i += 1;
                        k += 1;
                    }
                    Err(TrySendError::Full) => break,
                    Err(e) => return Err(BenchError::shmrpc("try_reserve")(e)),
                }
            }
            p.notify();
        }
        if k < STREAM_BATCH && i < total {
            // Full: wait for room as the channel's strategy says, then write there.
            let mut g = ep
                .sender()
                .reserve(size)
                .map_err(BenchError::shmrpc("reserve"))?;
            stamp(&mut src, i);
            g.copy_from_slice(&src);
            g.commit(0);
            i += 1;
        }
    }
    let (got, errors) = read_report(ep)?;
    let dt = t0.elapsed();
    if got != total || errors != 0 {
        return Err(BenchError::WrongData(format!(
            "stream: the consumer got {got} of {total} messages, {errors} bad"
        )));
    }
    Ok(dt)
}

/// The producer of a one-way stream from a tokio task: one `send_async` per message (it
/// copies the message into the ring and wakes the consumer if it sleeps).
pub async fn stream_lead_async(ep: &mut Endpoint, size: usize, total: u64) -> Result<Duration> {
    let mut src = vec![0xA5u8; size];
    let t0 = Instant::now();
    for i in 0..total {
        stamp(&mut src, i);
        ep.send_async(&src)
            .await
            .map_err(BenchError::shmrpc("send_async"))?;
    }
    let (got, errors) = {
        let m = ep
            .recv_async()
            .await
            .map_err(BenchError::shmrpc("waiting for the consumer's report"))?;
        parse_report(&m)?
    };
    let dt = t0.elapsed();
    if got != total || errors != 0 {
        return Err(BenchError::WrongData(format!(
            "stream: the consumer got {got} of {total} messages, {errors} bad"
        )));
    }
    Ok(dt)
}

/// The consumer of a one-way stream from a tokio task: `recv_async` for the first message
/// of a batch, then whatever else is there (`try_recv_batch`, at most `read_max`),
/// copying each message out and checking its stamp; then the report.
pub async fn stream_sink_async(
    ep: &mut Endpoint,
    size: usize,
    total: u64,
    read_max: usize,
) -> Result<u64> {
    let mut dst = vec![0u8; size];
    let mut next = 0u64;
    let mut errors = 0u64;
    while next < total {
        {
            let m = ep
                .recv_async()
                .await
                .map_err(BenchError::shmrpc("recv_async"))?;
            if m.len() == size {
                dst.copy_from_slice(&m);
                errors += u64::from(!stamped(&dst, next));
            } else {
                errors += 1;
            }
            next += 1;
        }
        let max = read_max.saturating_sub(1).min((total - next) as usize);
        if max > 0 {
            match ep.receiver().try_recv_batch(max, |_tag, payload| {
                if payload.len() == size {
                    dst.copy_from_slice(payload);
                    errors += u64::from(!stamped(&dst, next));
                } else {
                    errors += 1;
                }
                next += 1;
            }) {
                Ok(_) | Err(TryRecvError::Empty) => {}
                Err(e) => return Err(BenchError::shmrpc("try_recv_batch")(e)),
            }
        }
    }
    let mut report = [0u8; 16];
    report[..8].copy_from_slice(&next.to_le_bytes());
    report[8..].copy_from_slice(&errors.to_le_bytes());
    ep.send_async(&report)
        .await
        .map_err(BenchError::shmrpc("send report"))?;
    Ok(errors)
}

fn parse_report(m: &[u8]) -> Result<(u64, u64)> {
    if m.len() != 16 {
        return Err(BenchError::WrongData(format!(
            "report of {} bytes, expected 16",
            m.len()
        )));
    }
    let word = |i: usize| u64::from_le_bytes(m[i..i + 8].try_into().expect("8 bytes"));
    Ok((word(0), word(8)))
}

fn read_report(ep: &mut Endpoint) -> Result<(u64, u64)> {
    let m = ep
        .recv()
        .map_err(BenchError::shmrpc("waiting for the consumer's report"))?;
    parse_report(&m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use shmrpc::channel::{pair, ChannelConfig, WaitStrategy};

    #[test]
    fn round_trips_and_streams_between_two_threads() {
        let cfg = ChannelConfig::default()
            .with_capacity(64 << 10)
            .with_wait(WaitStrategy::Park);
        let (mut a, mut b) = pair(&cfg).unwrap();
        let t = std::thread::spawn(move || {
            rtt_echo(&mut b, 64, 100).unwrap();
            rtt_echo(&mut b, 20_000, 10).unwrap();
            stream_sink(&mut b, 64, 10_000, 256).unwrap()
                + stream_sink(&mut b, 30_000, 20, 1).unwrap()
                + stream_sink(&mut b, 64, 10_000, 256).unwrap()
        });
        assert_eq!(rtt_lead(&mut a, 64, 100, 10).unwrap().len(), 90);
        assert_eq!(rtt_lead(&mut a, 20_000, 10, 0).unwrap().len(), 10);
        stream_lead(&mut a, 64, 10_000).unwrap();
        stream_lead(&mut a, 30_000, 20).unwrap();
        stream_lead_waiting(&mut a, 64, 10_000).unwrap();
        assert_eq!(t.join().unwrap(), 0);
    }

    #[test]
    fn async_round_trips_and_streams_between_two_threads() {
        let cfg = ChannelConfig::default().with_capacity(64 << 10);
        let (mut a, mut b) = pair(&cfg).unwrap();
        let rt = || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
        };
        let t = std::thread::spawn(move || {
            rt().block_on(async {
                rtt_echo_async(&mut b, 100, 50).await.unwrap();
                stream_sink_async(&mut b, 64, 5_000, 256).await.unwrap()
                    + stream_sink_async(&mut b, 30_000, 20, 1).await.unwrap()
            })
        });
        rt().block_on(async {
            assert_eq!(rtt_lead_async(&mut a, 100, 50, 5).await.unwrap().len(), 45);
            stream_lead_async(&mut a, 64, 5_000).await.unwrap();
            stream_lead_async(&mut a, 30_000, 20).await.unwrap();
        });
        assert_eq!(t.join().unwrap(), 0);
    }
}
