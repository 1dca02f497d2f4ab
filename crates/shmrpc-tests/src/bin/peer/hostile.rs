//! A hostile client: holds the real segment of its RPC connection and writes into it.

use std::sync::atomic::Ordering;
use std::time::Duration;

use shmrpc::channel::{self, ChannelConfig, Endpoint, RecvError};
use shmrpc::lowlevel::frame::{self, Kind};
use shmrpc::lowlevel::ring;
use shmrpc::lowlevel::sys::Segment;

use crate::bad_input::echo_request;
use crate::{fail, say};

/// This process's view of a connection's shared memory, as any peer holding the fds has it:
/// the memfd found through `/proc/self/fd`, and the rings at their offsets.
struct RawView {
    seg: Segment,
    /// The ring this client produces into (the server consumes it).
    tx_ring: usize,
    /// The ring this client consumes (the server produces into it).
    rx_ring: usize,
    cap: u64,
}

impl RawView {
    /// Finds the (only) shmrpc memfd this process holds.
    fn find() -> Self {
        for entry in std::fs::read_dir("/proc/self/fd").unwrap_or_else(|e| fail(e)) {
            let Ok(entry) = entry else { continue };
            let Ok(link) = std::fs::read_link(entry.path()) else {
                continue;
            };
            if !link.to_string_lossy().starts_with("/memfd:shmrpc") {
                continue;
            }
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(entry.path())
                .unwrap_or_else(|e| fail(format!("open memfd: {e}")));
            let seg = Segment::from_fd(file.into()).unwrap_or_else(|e| fail(e));
            let cap = seg
                .param(0)
                .unwrap_or_else(|| fail("no param 0"))
                .load(Ordering::Relaxed);
            // Ring 0 (server -> client) at 0, ring 1 (client -> server) after it.
            return Self {
                seg,
                tx_ring: ring::ring_size(cap as usize),
                rx_ring: 0,
                cap,
            };
        }
        fail("no shmrpc memfd among this process's fds")
    }

    #[allow(unsafe_code)]
    fn u64_at(&self, off: usize) -> &std::sync::atomic::AtomicU64 {
        // SAFETY: used for ring header and record-header words only, which the rings
        // access atomically.
        unsafe { self.seg.atomic_u64(off) }
            .unwrap_or_else(|| fail(format!("offset {off} out of the segment")))
    }

    #[allow(unsafe_code)]
    fn u32_at(&self, off: usize) -> &std::sync::atomic::AtomicU32 {
        // SAFETY: as in `u64_at`.
        unsafe { self.seg.atomic_u32(off) }
            .unwrap_or_else(|| fail(format!("offset {off} out of the segment")))
    }

    /// Offset of the record at `pos` of the ring at `ring`.
    fn record(&self, ring: usize, pos: u64) -> usize {
        ring + ring::RING_HEADER_SIZE + (pos & (self.cap - 1)) as usize
    }

    /// Publishes a record at the producer's next position by hand: `len` word, tag 0,
    /// `payload`, then the stamp the server's consumer waits for.
    #[allow(unsafe_code)]
    fn forge(&self, ep: &mut Endpoint, len_word: u32, payload: &[u8]) -> usize {
        let pos = ep.sender().producer().position();
        let key = self.u64_at(self.tx_ring + 16).load(Ordering::Relaxed);
        let rec = self.record(self.tx_ring, pos);
        // SAFETY: the bytes after our producer's position are not lent out (we hold the
        // endpoint mutably and no grant is alive) and the consumer does not read them before
        // the stamp below; this process is single-threaded here.
        unsafe { self.seg.write_bytes(rec + 16, payload) }
            .unwrap_or_else(|| fail("record out of the segment"));
        self.u32_at(rec + 8).store(len_word, Ordering::Relaxed);
        self.u32_at(rec + 12).store(0, Ordering::Relaxed);
        self.u64_at(rec).store(pos ^ key, Ordering::Release);
        ep.sender().producer().notify();
        rec
    }
}

/// What became of a hostile connection: `closed` (the server hung up on it), `answered`
/// (it answered the control request that followed), or what else happened.
fn hostile_end(ep: &mut Endpoint, control_id: u64) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return "timeout".into();
        }
        match ep.recv_timeout(left) {
            Ok(m) => match frame::decode(&m) {
                Ok((h, _)) if h.kind == Kind::Response && h.call_id == control_id => {
                    return "answered".into()
                }
                Ok(_) => continue, // a ping, or an answer to an earlier request
                Err(_) => return "undecodable".into(),
            },
            Err(RecvError::Closed) | Err(RecvError::PeerGone) => return "closed".into(),
            Err(RecvError::TimedOut) => return "timeout".into(),
            Err(e) => return format!("error-{e}").replace(' ', "_"),
        }
    }
}

/// Connects, proves the connection works with one echo, then attacks it in one way
/// (`mode`), and reports `hostile mode=.. echo=.. end=..`.
pub(crate) fn rpc_hostile(name: &str) {
    let modes = [
        "length-past-end",
        "length-huge",
        "bad-padding",
        "read-pos-beyond",
        "read-pos-backwards",
        "read-pos-misaligned",
        "lying-frame-length",
        "length-flip",
        "doorbell-flood",
        "never-consume",
    ];
    for mode in modes {
        let started = std::time::Instant::now();
        let mut ep = channel::connect(name, &ChannelConfig::default())
            .unwrap_or_else(|e| fail(format!("connect: {e}")));
        ep.send(&echo_request(1, b"hello"))
            .unwrap_or_else(|e| fail(format!("{mode}: send echo: {e}")));
        let echo = hostile_end(&mut ep, 1);
        let view = RawView::find();
        let control = 2;
        match mode {
            "length-past-end" => {
                // A length that runs past the end of the ring's data area.
                view.forge(&mut ep, (view.cap as u32) - 8, &[]);
            }
            "length-huge" => {
                view.forge(&mut ep, 0x7fff_fff0, &[]);
            }
            "bad-padding" => {
                // Padding must reach the end of the ring; this one stops short.
                view.forge(&mut ep, 0x8000_0000 | 48, &[]);
            }
            "read-pos-beyond" | "read-pos-backwards" | "read-pos-misaligned" => {
                let body = vec![7u8; 1024];
                let answers = 2 * view.cap / 1024;
                if mode == "read-pos-backwards" {
                    // First honest traffic, more than the ring holds, so the server's
                    // producer has learned a read position above 0.
                    for i in 0..answers {
                        ep.send(&echo_request(10_000 + i, &body))
                            .unwrap_or_else(|e| fail(format!("{mode}: send: {e}")));
                        ep.recv_timeout(Duration::from_secs(10))
                            .unwrap_or_else(|e| fail(format!("{mode}: recv: {e}")));
                    }
                }
                // Our consumer position, which the server's producer trusts for room.
                let rp = view.u64_at(view.rx_ring + 256);
                let now = rp.load(Ordering::Acquire);
                let lie = match mode {
                    "read-pos-beyond" => now + (1 << 40),
                    "read-pos-backwards" => 0,
                    _ => now + 8,
                };
                rp.store(lie, Ordering::Release);
                // The server's producer consults our position only when its cached room
                // runs out, and reading an answer here would overwrite the lie with our
                // true position. So read nothing and keep asking until the server hangs
                // up: with no answer read, its answers fill the ring, and the next one
                // makes it look. (A fixed number of requests raced the server: under load
                // it had answered less than a ring's worth when we stopped and read.)
                let mut sent = 0;
                let until = std::time::Instant::now() + Duration::from_secs(10);
                while ep.sender().peer_alive() && std::time::Instant::now() < until {
                    match ep.try_send(&echo_request(100 + sent, &body)) {
                        Ok(()) => sent += 1,
                        Err(_) => std::thread::sleep(Duration::from_millis(1)),
                    }
                }
                let _ = ep
                    .sender()
                    .send_timeout(&echo_request(control, b"control"), Duration::from_secs(1));
            }
            "lying-frame-length" => {
                // A well-formed record whose frame header claims more payload than follows.
                let mut f = echo_request(control, b"lying");
                f[12..16].copy_from_slice(&1000u32.to_le_bytes());
                view.forge(&mut ep, f.len() as u32, &f);
            }
            "length-flip" => {
                // Publish a valid request, then keep changing its length word while the
                // server may be reading it: whatever it reads must be checked, once.
                let f = echo_request(control, b"flip");
                let rec = view.forge(&mut ep, f.len() as u32, &f);
                let word = view.u32_at(rec + 8);
                for i in 0..200_000u32 {
                    let v = if i % 2 == 0 {
                        0x7fff_fff0
                    } else {
                        f.len() as u32
                    };
                    word.store(v, Ordering::Relaxed);
                }
            }
            "doorbell-flood" => {
                // Ring the server's doorbell (and futex) as fast as we can: claim, in the
                // waiting word of the ring it reads, that it sleeps in an unknown way (so
                // both are woken), and "notify" it, over and over.
                let word = view.u32_at(view.tx_ring + 384);
                let before = ep.sender().producer().wakes();
                let until = std::time::Instant::now() + Duration::from_millis(500);
                while std::time::Instant::now() < until {
                    for _ in 0..64 {
                        word.store(3, Ordering::Relaxed);
                        ep.sender().producer().notify();
                    }
                }
                let rings = ep.sender().producer().wakes() - before;
                say(format!("flooded writes={rings}"));
                let _ = ep.send(&echo_request(control, b"control"));
            }
            "never-consume" => {
                // Requests and more requests, answers never read: the server's ring to us
                // fills and that connection stalls; nobody else may notice.
                let body = vec![7u8; 1024];
                let mut sent = 0u64;
                let until = std::time::Instant::now() + Duration::from_millis(500);
                while std::time::Instant::now() < until {
                    match ep.try_send(&echo_request(100 + sent, &body)) {
                        Ok(()) => sent += 1,
                        Err(_) => std::thread::sleep(Duration::from_millis(1)),
                    }
                }
                say(format!("unread requests={sent}"));
                say(format!("hostile mode={mode} echo={echo} end=stalled"));
                continue;
            }
            _ => unreachable!(),
        }
        let end = hostile_end(&mut ep, control);
        let ms = started.elapsed().as_millis();
        say(format!("hostile mode={mode} echo={echo} end={end} ms={ms}"));
    }
    say("done");
}
