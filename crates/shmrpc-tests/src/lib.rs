//! Shared helpers for the cross-process tests: spawning the `peer` helper binary under a
//! guard that always kills and reaps it, a whole-test watchdog, unique names with a leak
//! check, a deterministic PRNG, a checksum, and the message formats both sides agree on.
//!
//! The `peer` binary (`src/bin/peer.rs`) and the integration tests (`tests/*.rs`) both use
//! this library, so a message built by one process is checked by the same code in the other.
#![forbid(unsafe_code)]

pub mod certs;
mod command;
mod install;
pub use command::{
    ArgsError, BadServerMode, PeerCommand, Probe, RpcDial, RpcTarget, ServeMode, USAGE,
};
pub use install::install_peer_exe;
use shmrpc_harness::{ChildProcess, KillHandle};
use std::cell::RefCell;
use std::path::PathBuf;
use std::process::{Command, ExitStatus};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------
// The TCP connection handshake, by hand
// ---------------------------------------------------------------------------------------

/// The client's side of the hello of a plaintext TCP server that asks for no token (see
/// `docs/protocol.md` §1a), on a raw socket: after it, the socket carries frames. Panics
/// if the server refuses.
pub fn plain_tcp_hello(s: &mut std::net::TcpStream) {
    use std::io::{Read, Write};
    let mut hello = b"SRPCTCP\0\x01\x00".to_vec();
    hello.extend_from_slice(&[9u8; 32]);
    s.write_all(&hello).expect("send the hello");
    // Magic, version, status 0, flags, server nonce; then the final status.
    let mut reply = [0u8; 8 + 1 + 1 + 1 + 32 + 1];
    s.read_exact(&mut reply).expect("the server's hello");
    assert_eq!(&reply[..10], b"SRPCTCP\0\x01\x00", "hello refused");
    assert_eq!(reply[10] & 2, 0, "the server asks for a token");
    assert_eq!(reply[43], 0, "hello refused");
}

// ---------------------------------------------------------------------------------------
// Deterministic randomness and checksums
// ---------------------------------------------------------------------------------------

const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// The SplitMix64 finaliser: a bijective 64-bit mix.
#[inline]
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A checksum of a sequence of numbers that depends on their order (streams checked end
/// to end: every item there, none twice, in order).
pub fn sequence_checksum(items: impl IntoIterator<Item = u64>) -> u64 {
    items
        .into_iter()
        .fold(0xcbf2_9ce4_8422_2325, |h, n| mix64(h ^ n))
}

/// SplitMix64: a tiny deterministic PRNG, the same in every process for the same seed.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator starting from `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    #[inline]
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(GOLDEN);
        mix64(self.0)
    }

    /// A value in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

/// A 64-bit checksum of `data`, eight bytes at a time. Every step is a bijection of the
/// running state for a given input word, so any single changed word (or byte) changes the
/// result; the length is mixed in, so truncation does too.
#[inline]
pub fn checksum64(data: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ (data.len() as u64).wrapping_mul(GOLDEN);
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_le_bytes(c.try_into().expect("8 bytes"));
        h = (h ^ w).wrapping_mul(0x0000_0100_0000_01b3).rotate_left(29);
    }
    let mut tail = [0u8; 8];
    tail[..chunks.remainder().len()].copy_from_slice(chunks.remainder());
    h = (h ^ u64::from_le_bytes(tail)).wrapping_mul(0x0000_0100_0000_01b3);
    mix64(h)
}

/// FNV-1a, byte by byte (for short strings where speed does not matter).
pub fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Fills `buf` with the pseudo-random bytes of stream `base`, starting at word `first`.
#[inline]
fn fill_prng(buf: &mut [u8], base: u64) {
    let mut chunks = buf.chunks_exact_mut(8);
    let mut k = 0u64;
    for c in &mut chunks {
        k += 1;
        c.copy_from_slice(&mix64(base.wrapping_add(k.wrapping_mul(GOLDEN))).to_le_bytes());
    }
    let rest = chunks.into_remainder();
    if !rest.is_empty() {
        k += 1;
        let w = mix64(base.wrapping_add(k.wrapping_mul(GOLDEN))).to_le_bytes();
        let n = rest.len();
        rest.copy_from_slice(&w[..n]);
    }
}

/// Whether `buf` holds exactly the bytes [`fill_prng`] writes for `base`.
#[inline]
fn check_prng(buf: &[u8], base: u64) -> bool {
    let mut chunks = buf.chunks_exact(8);
    let mut k = 0u64;
    for c in &mut chunks {
        k += 1;
        let want = mix64(base.wrapping_add(k.wrapping_mul(GOLDEN)));
        if u64::from_le_bytes(c.try_into().expect("8 bytes")) != want {
            return false;
        }
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        k += 1;
        let w = mix64(base.wrapping_add(k.wrapping_mul(GOLDEN))).to_le_bytes();
        return rest == &w[..rest.len()];
    }
    true
}

// ---------------------------------------------------------------------------------------
// Request/response: numbered requests and the answer a correct server gives
// ---------------------------------------------------------------------------------------

/// Payload size of a request in the request/response scenarios.
pub const REQUEST_LEN: usize = 45;

/// Request number `seq`: 45 bytes, the sequence number then bytes derived from it.
pub fn make_request(seq: u64) -> [u8; REQUEST_LEN] {
    let mut r = [0u8; REQUEST_LEN];
    r[..8].copy_from_slice(&seq.to_le_bytes());
    fill_prng(&mut r[8..], mix64(seq ^ 0x5151_5151));
    r
}

/// What the server answers to `request`: its bytes reversed, then the request's sequence
/// number plus one and its checksum. A server that echoed, lost, mixed up or garbled
/// requests produces a different answer.
pub fn transform(request: &[u8]) -> Vec<u8> {
    let mut out: Vec<u8> = request.iter().rev().copied().collect();
    let seq = request
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
        .unwrap_or(u64::MAX);
    out.extend_from_slice(&seq.wrapping_add(1).to_le_bytes());
    out.extend_from_slice(&checksum64(request).to_le_bytes());
    out
}

// ---------------------------------------------------------------------------------------
// Stream messages: sequence-numbered, checksummed, of random sizes
// ---------------------------------------------------------------------------------------

/// How the sizes of a stream's messages are drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeProfile {
    /// Mostly small (8..=64 bytes), some up to 4 KiB, a few up to 16 KiB, and one in five
    /// hundred within 64 bytes of `max` (all capped at `max`).
    Mixed {
        /// The largest size.
        max: usize,
    },
    /// Alternating small (8..=256) and large (`lo..=max`) messages.
    Large {
        /// Smallest large size.
        lo: usize,
        /// Largest size.
        max: usize,
    },
}

impl SizeProfile {
    /// Parses `mixed:<max>` or `large:<lo>:<max>`.
    pub fn parse(s: &str) -> Option<Self> {
        let mut it = s.split(':');
        match (it.next()?, it.next(), it.next()) {
            ("mixed", Some(m), None) => Some(Self::Mixed {
                max: m.parse().ok()?,
            }),
            ("large", Some(lo), Some(m)) => Some(Self::Large {
                lo: lo.parse().ok()?,
                max: m.parse().ok()?,
            }),
            _ => None,
        }
    }

    /// The form [`parse`](Self::parse) reads.
    pub fn to_arg(&self) -> String {
        match self {
            Self::Mixed { max } => format!("mixed:{max}"),
            Self::Large { lo, max } => format!("large:{lo}:{max}"),
        }
    }

    /// The size of message `seq` of the stream seeded with `seed`.
    #[inline]
    pub fn len(&self, seed: u64, seq: u64) -> usize {
        let r = mix64(seed ^ seq.wrapping_mul(GOLDEN));
        let pick = |lo: usize, hi: usize| lo + ((r >> 32) as usize) % (hi - lo + 1);
        match *self {
            Self::Mixed { max } => {
                let n = match r % 1000 {
                    0..=879 => pick(8, 64),
                    880..=979 => pick(65, 4096),
                    980..=997 => pick(4097, 16384),
                    _ => max - ((r >> 32) as usize) % 64,
                };
                n.min(max)
            }
            Self::Large { lo, max } => {
                if seq % 2 == 0 {
                    pick(8, 256)
                } else {
                    pick(lo, max)
                }
            }
        }
    }
}

/// Writes message `seq` of the stream seeded with `seed` into `buf` (whose length is the
/// message's size, at least 8) and returns the tag to send it with.
///
/// Layout: `seq: u64`; if the size is at least 24: `len: u32`, pseudo-random bytes derived
/// from `seed` and `seq`, and the checksum of everything before it in the last 8 bytes;
/// shorter messages carry only pseudo-random bytes after `seq`. The tag is the low 32 bits
/// of the checksum of the whole payload, so even the shortest message is checksummed.
#[inline]
pub fn fill_stream_message(seed: u64, seq: u64, buf: &mut [u8]) -> u32 {
    let n = buf.len();
    assert!(n >= 8, "stream messages are at least 8 bytes");
    buf[..8].copy_from_slice(&seq.to_le_bytes());
    let base = mix64(seed.wrapping_add(seq));
    if n >= 24 {
        buf[8..12].copy_from_slice(&(n as u32).to_le_bytes());
        fill_prng(&mut buf[12..n - 8], base);
        let sum = checksum64(&buf[..n - 8]);
        buf[n - 8..].copy_from_slice(&sum.to_le_bytes());
    } else {
        fill_prng(&mut buf[8..], base);
    }
    checksum64(buf) as u32
}

/// Checks that `(tag, payload)` is exactly message `seq` of the stream seeded with `seed`,
/// whose size is `len`. The error says what is wrong: a sequence number ahead of the
/// expected one means messages were lost, one behind means duplicated or reordered.
#[inline]
pub fn check_stream_message(
    seed: u64,
    seq: u64,
    len: usize,
    tag: u32,
    payload: &[u8],
) -> Result<(), String> {
    if payload.len() >= 8 {
        let got = u64::from_le_bytes(payload[..8].try_into().expect("8 bytes"));
        if got != seq {
            let what = if got > seq {
                "lost"
            } else {
                "duplicated or reordered"
            };
            return Err(format!(
                "expected message {seq}, got {got} ({what}; {} bytes)",
                payload.len()
            ));
        }
    }
    if payload.len() != len {
        return Err(format!(
            "message {seq} has {} bytes, expected {len}",
            payload.len()
        ));
    }
    if checksum64(payload) as u32 != tag {
        return Err(format!(
            "message {seq}: tag {tag:#x} is not the payload's checksum"
        ));
    }
    let base = mix64(seed.wrapping_add(seq));
    if len >= 24 {
        let field = u32::from_le_bytes(payload[8..12].try_into().expect("4 bytes"));
        if field as usize != len {
            return Err(format!(
                "message {seq}: length field {field}, expected {len}"
            ));
        }
        let sum = u64::from_le_bytes(payload[len - 8..].try_into().expect("8 bytes"));
        if sum != checksum64(&payload[..len - 8]) {
            return Err(format!("message {seq}: embedded checksum mismatch"));
        }
        if !check_prng(&payload[12..len - 8], base) {
            return Err(format!("message {seq}: payload bytes differ"));
        }
    } else if !check_prng(&payload[8..], base) {
        return Err(format!("message {seq}: payload bytes differ"));
    }
    Ok(())
}

/// Checks a stream of messages arriving in order, remembering the first error.
#[derive(Debug)]
pub struct StreamChecker {
    seed: u64,
    profile: SizeProfile,
    /// The next expected sequence number (= messages accepted so far).
    pub next: u64,
    /// Payload bytes accepted so far.
    pub bytes: u64,
    /// The first problem seen; later messages are not checked.
    pub error: Option<String>,
}

impl StreamChecker {
    /// A checker for the stream `(seed, profile)`, expecting message 0 first.
    pub fn new(seed: u64, profile: SizeProfile) -> Self {
        Self {
            seed,
            profile,
            next: 0,
            bytes: 0,
            error: None,
        }
    }

    /// Checks the next message.
    #[inline]
    pub fn accept(&mut self, tag: u32, payload: &[u8]) {
        if self.error.is_some() {
            return;
        }
        let len = self.profile.len(self.seed, self.next);
        match check_stream_message(self.seed, self.next, len, tag, payload) {
            Ok(()) => {
                self.next += 1;
                self.bytes += payload.len() as u64;
            }
            Err(e) => self.error = Some(e),
        }
    }

    /// The size of the next expected message (for failure messages).
    pub fn next_len(&self) -> usize {
        self.profile.len(self.seed, self.next)
    }
}

// ---------------------------------------------------------------------------------------
// Names and leak checks
// ---------------------------------------------------------------------------------------

static NAME_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A name no other test (or test run) uses: `xp-<word>-<pid>-<n>`.
pub fn unique_name(word: &str) -> String {
    let n = NAME_COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("xp-{word}-{}-{n}", std::process::id())
}

/// The `/dev/shm` file of the named segment `name`.
pub fn segment_file(name: &str) -> PathBuf {
    shmrpc::lowlevel::sys::names::segment_path(name).expect("valid name")
}

/// The socket file a `Listener` bound to `name` uses.
pub fn socket_file(name: &str) -> PathBuf {
    shmrpc::lowlevel::sys::names::runtime_dir()
        .expect("runtime dir")
        .join(format!("{name}.sock"))
}

/// The lock file a `Listener` bound to `name` holds (`flock`) while it lives.
pub fn lock_file(name: &str) -> PathBuf {
    shmrpc::lowlevel::sys::names::runtime_dir()
        .expect("runtime dir")
        .join(format!("{name}.lock"))
}

/// The names one test uses. [`assert_clean`](Self::assert_clean) checks that none of them
/// is left in `/dev/shm` or the runtime directory; dropping the set removes leftovers (so a
/// failed test does not leave files behind for the next run).
#[derive(Debug, Default)]
pub struct TestNames {
    names: Vec<String>,
}

impl TestNames {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// A new unique name (for a segment, a socket, or both), remembered for the check.
    pub fn name(&mut self, word: &str) -> String {
        let n = unique_name(word);
        self.names.push(n.clone());
        n
    }

    /// Files of ours that still exist.
    pub fn leftovers(&self) -> Vec<PathBuf> {
        self.names
            .iter()
            .flat_map(|n| [segment_file(n), socket_file(n)])
            .filter(|p| std::fs::symlink_metadata(p).is_ok())
            .collect()
    }

    /// Panics if any of our segment or socket files still exists.
    pub fn assert_clean(&self) {
        let left = self.leftovers();
        assert!(left.is_empty(), "leaked files: {left:?}");
    }

    /// Files of ours that still exist, counting the listeners' lock files too.
    pub fn leftovers_with_locks(&self) -> Vec<PathBuf> {
        let mut left = self.leftovers();
        left.extend(
            self.names
                .iter()
                .map(|n| lock_file(n))
                .filter(|p| std::fs::symlink_metadata(p).is_ok()),
        );
        left
    }

    /// Panics if any of our segment, socket or lock files still exists.
    pub fn assert_clean_with_locks(&self) {
        let left = self.leftovers_with_locks();
        assert!(left.is_empty(), "leaked files: {left:?}");
    }
}

impl Drop for TestNames {
    fn drop(&mut self) {
        for p in self.leftovers_with_locks() {
            let _ = std::fs::remove_file(p);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Watchdog and peer processes
// ---------------------------------------------------------------------------------------

/// The peers a watchdog's test body spawned, by pid (to forget them once reaped).
type Registry = Arc<Mutex<Vec<(u32, KillHandle)>>>;

thread_local! {
    /// Pids of the live peers spawned by the current watchdog's test body.
    static REGISTRY: RefCell<Option<Registry>> = const { RefCell::new(None) };
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `body` on its own thread and fails the test if it takes longer than `limit`: the
/// peers it spawned are then SIGKILLed (which also unblocks a body stuck waiting on them)
/// and the test panics instead of hanging. A panic in `body` is passed on unchanged.
pub fn with_watchdog<T: Send + 'static>(
    limit: Duration,
    body: impl FnOnce() -> T + Send + 'static,
) -> T {
    let registry: Registry = Arc::default();
    let reg = registry.clone();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let name = std::thread::current().name().unwrap_or("test").to_owned();
    let handle = std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            REGISTRY.with(|r| *r.borrow_mut() = Some(reg));
            let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body));
            let _ = done_tx.send(());
            out
        })
        .expect("spawn test body");
    let timed_out = matches!(
        done_rx.recv_timeout(limit),
        Err(mpsc::RecvTimeoutError::Timeout)
    );
    if timed_out {
        for (_, peer) in lock(&registry).drain(..) {
            peer.kill();
        }
        // Give the body a moment to unwind (its guards reap the peers and remove files).
        let _ = done_rx.recv_timeout(Duration::from_secs(5));
        panic!("watchdog: {name} did not finish within {limit:?}; its peers were killed");
    }
    match handle.join() {
        Ok(Ok(v)) => v,
        Ok(Err(p)) | Err(p) => std::panic::resume_unwind(p),
    }
}

/// Serialises the CPU-heavy tests of one test binary, so two of them do not fight over the
/// two cores of the CI machine (they would still pass, only slower).
pub fn heavy() -> MutexGuard<'static, ()> {
    static HEAVY: Mutex<()> = Mutex::new(());
    lock(&HEAVY)
}

/// Spawns the `peer` helper binary running a [`PeerCommand`] (a macro so that
/// `CARGO_BIN_EXE_peer` is read in the integration test that calls it).
#[macro_export]
macro_rules! spawn_peer {
    ($cmd:expr $(,)?) => {
        $crate::PeerProcess::spawn_command($crate::PeerCommand::command(
            &$cmd,
            env!("CARGO_BIN_EXE_peer"),
        ))
    };
}

/// A running peer process: a [`ChildProcess`] whose failures panic (failing the test) with
/// the harness's message. Dropping it kills (SIGKILL) and reaps it if it is still there, so
/// no test leaves a process behind, even when it fails. Under [`with_watchdog`] the
/// watchdog can kill it too.
#[derive(Debug)]
pub struct PeerProcess {
    child: ChildProcess,
    registry: Option<Registry>,
}

impl PeerProcess {
    /// Starts `exe` with `args`, stdin and stdout piped (stderr is inherited).
    pub fn spawn(exe: &str, args: &[&str]) -> Self {
        let mut cmd = Command::new(exe);
        cmd.args(args);
        Self::spawn_command(cmd)
    }

    /// Starts a prepared command (e.g. with another uid or environment), stdin and stdout
    /// piped (stderr is inherited), under the same guard as [`spawn`](Self::spawn).
    pub fn spawn_command(cmd: Command) -> Self {
        let child = ChildProcess::spawn(cmd).unwrap_or_else(|e| panic!("{e}: {}", e.source));
        let pid = child.pid();
        let registry = REGISTRY.with(|r| r.borrow().clone());
        if let Some(r) = &registry {
            lock(r).push((pid, child.kill_handle()));
        }
        Self { child, registry }
    }

    /// The peer's pid.
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// Waits up to `timeout` for a line starting with `prefix` and returns it; earlier
    /// lines are skipped. Panics (killing the peer via `Drop`) on timeout or if the peer
    /// closed its stdout.
    pub fn expect(&mut self, prefix: &str, timeout: Duration) -> String {
        self.child
            .expect(prefix, timeout)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Sends one line to the peer's stdin.
    pub fn send(&mut self, line: &str) {
        self.child
            .send(line)
            .unwrap_or_else(|e| panic!("{e} (sending {line:?}): {}", source_of(&e)));
    }

    /// SIGKILLs the peer and reaps it (so that its pid is really gone, not a zombie).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        self.unregister();
    }

    /// SIGKILLs the peer, reaps it and returns how it ended: killed by signal 9 if it was
    /// still running, or its own exit status if it had already ended.
    pub fn kill_status(&mut self) -> ExitStatus {
        let status = self
            .child
            .kill()
            .unwrap_or_else(|e| panic!("{}: wait: {e}", self.child.label()));
        self.unregister();
        status
    }

    /// Every line the peer printed so far (without waiting), including those already seen.
    pub fn lines_so_far(&mut self) -> &[String] {
        self.child.lines()
    }

    /// Closes the peer's stdin and waits up to `timeout` for it to exit; panics on timeout.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let status = self.child.finish(timeout).unwrap_or_else(|e| panic!("{e}"));
        self.unregister();
        status
    }

    /// Waits for the peer to exit and asserts that it succeeded.
    pub fn assert_exits_ok(&mut self, timeout: Duration) {
        let status = self.wait_exit(timeout);
        let label = self.child.label().to_owned();
        assert!(
            status.success(),
            "{label} failed: {status}; it printed {:?}",
            self.child.lines()
        );
    }

    fn unregister(&self) {
        if let Some(r) = &self.registry {
            let pid = self.child.pid();
            lock(r).retain(|(p, _)| *p != pid);
        }
    }
}

impl Drop for PeerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

fn source_of(e: &dyn std::error::Error) -> String {
    e.source().map(|s| s.to_string()).unwrap_or_default()
}

pub use shmrpc_harness::field;

/// [`field`], parsed.
pub fn field_parse<T: std::str::FromStr>(line: &str, key: &str) -> T {
    field(line, key)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no parsable {key}= in {line:?}"))
}

// ---------------------------------------------------------------------------------------
// Shared parameters of peer and tests
// ---------------------------------------------------------------------------------------

/// Segment kind of the ring segments `peer ring-writer` creates ("XPRW").
pub const RING_SEGMENT_KIND: u32 = u32::from_le_bytes(*b"XPRW");

/// Sizes of the records `peer ring-writer` writes.
pub const RING_WRITER_PROFILE: SizeProfile = SizeProfile::Mixed { max: 200 };

/// The command-line form of a wait strategy, which [`parse_wait`] reads back (the spin
/// budget in whole microseconds).
pub fn wait_arg(w: shmrpc::channel::WaitStrategy) -> String {
    use shmrpc::channel::WaitStrategy;
    match w {
        WaitStrategy::Spin => "spin".to_owned(),
        WaitStrategy::Park => "park".to_owned(),
        WaitStrategy::SpinThenPark { spin } => format!("stp:{}", spin.as_micros()),
        // A strategy added later: the peer refuses it by name (exit status 2) until
        // `parse_wait` learns it.
        other => format!("{other:?}"),
    }
}

/// Parses a wait strategy: `spin`, `park`, `stp` (spin-then-park, 50 µs) or `stp:<µs>`.
pub fn parse_wait(s: &str) -> Option<shmrpc::channel::WaitStrategy> {
    use shmrpc::channel::WaitStrategy;
    match s {
        "spin" => Some(WaitStrategy::Spin),
        "park" => Some(WaitStrategy::Park),
        "stp" => Some(WaitStrategy::SpinThenPark {
            spin: Duration::from_micros(50),
        }),
        _ => {
            let us = s.strip_prefix("stp:")?.parse().ok()?;
            Some(WaitStrategy::SpinThenPark {
                spin: Duration::from_micros(us),
            })
        }
    }
}

// ---------------------------------------------------------------------------------------
// RPC: what `peer rpc-server` serves, and helpers for the tests that call it
// ---------------------------------------------------------------------------------------

/// Arguments of `peer rpc-server`'s streaming `chat` method: a seed (the tokens depend on
/// it), the number of tokens, and the pause before each token in milliseconds.
pub type ChatRequest = (u64, u32, u32);

/// Token `i` of the chat stream seeded with `seed`.
pub fn chat_token(seed: u64, i: u32) -> String {
    format!("tok-{seed:x}-{i}-{:x}", mix64(seed ^ u64::from(i)) & 0xffff)
}

/// A field of `/proc/<pid>/status` in kB (or a plain count, e.g. `Threads`); `pid` may be
/// `"self"`.
pub fn proc_status(pid: &str, key: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines().find_map(|l| {
        let rest = l.strip_prefix(key)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// CPU time (user and system) the process `pid` (or `"self"`) has used so far.
pub fn cpu_time(pid: &str) -> Option<Duration> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command (which may hold spaces) start at the state, field 3.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_ascii_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    let hz = rustix::param::clock_ticks_per_second().max(1);
    Some(Duration::from_nanos(ticks * 1_000_000_000 / hz))
}

/// How many file descriptors the process `pid` (or `"self"`) has open.
pub fn open_fds(pid: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Raises this process's soft limit on open files to at least `want` (up to the hard
/// limit) and returns the soft limit now in force.
pub fn raise_nofile(want: u64) -> u64 {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut lim = getrlimit(Resource::Nofile);
    let hard = lim.maximum.unwrap_or(u64::MAX);
    if lim.current.is_some_and(|c| c < want) {
        lim.current = Some(want.min(hard));
        let _ = setrlimit(Resource::Nofile, lim);
    }
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

/// A tokio runtime for a test's RPC client (two workers, all drivers).
pub fn rpc_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Awaits `f`, failing the test with `what` if it takes longer than `limit`.
pub async fn within<T>(what: &str, limit: Duration, f: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(limit, f).await {
        Ok(v) => v,
        Err(_) => panic!("watchdog: {what} did not finish within {limit:?}"),
    }
}

/// Asks a `peer rpc-server` for its `stats` line (`key=value ...`).
pub async fn rpc_stats(client: &shmrpc::Client) -> String {
    let opts = shmrpc::CallOptions::timeout(Duration::from_secs(10));
    client
        .call::<(), String>("stats", &(), opts)
        .await
        .unwrap_or_else(|e| panic!("stats call failed: {e}"))
}

/// Polls a `peer rpc-server`'s stats until `pred` holds, for at most `limit` (then panics
/// with the last stats line and `what`).
pub async fn rpc_wait_stats(
    client: &shmrpc::Client,
    what: &str,
    limit: Duration,
    pred: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + limit;
    loop {
        let s = rpc_stats(client).await;
        if pred(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "watchdog: {what} not seen within {limit:?}; last stats: {s}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// An error and its sources, `": "`-joined (what `anyhow`'s `{:#}` prints).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut next = e.source();
    while let Some(c) = next {
        s.push_str(": ");
        s.push_str(&c.to_string());
        next = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_messages_round_trip_and_detect_damage() {
        let profile = SizeProfile::Mixed { max: 32752 };
        for seq in 0..2000u64 {
            let len = profile.len(7, seq);
            assert!((8..=32752).contains(&len));
            let mut buf = vec![0u8; len];
            let tag = fill_stream_message(7, seq, &mut buf);
            check_stream_message(7, seq, len, tag, &buf).unwrap();
            assert!(check_stream_message(7, seq + 1, len, tag, &buf).is_err());
            let i = (mix64(seq) as usize) % len;
            buf[i] ^= 0x10;
            assert!(
                check_stream_message(7, seq, len, tag, &buf).is_err(),
                "flip at {i}"
            );
        }
    }

    #[test]
    fn sizes_cover_the_ranges() {
        let p = SizeProfile::Mixed { max: 32752 };
        let lens: Vec<usize> = (0..100_000).map(|s| p.len(1, s)).collect();
        assert!(lens.iter().any(|&l| l < 24));
        assert!(lens.iter().any(|&l| l > 4096));
        assert!(lens.iter().any(|&l| l > 32752 - 64));
        assert_eq!(SizeProfile::parse(&p.to_arg()), Some(p));
        let q = SizeProfile::Large {
            lo: 30000,
            max: 65520,
        };
        assert_eq!(SizeProfile::parse(&q.to_arg()), Some(q));
    }

    #[test]
    fn watchdog_fails_a_hung_test_and_kills_its_peers() {
        let pid = Arc::new(Mutex::new(0u32));
        let p2 = pid.clone();
        let r = std::panic::catch_unwind(|| {
            with_watchdog(Duration::from_millis(300), move || {
                let mut peer = PeerProcess::spawn("sleep", &["30"]);
                *lock(&p2) = peer.pid();
                peer.expect("never printed", Duration::from_secs(60));
            })
        });
        let msg = r.expect_err("a hung body must fail");
        let msg = msg.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(msg.starts_with("watchdog"), "{msg}");
        let pid = *lock(&pid);
        assert_ne!(pid, 0);
        // Killed by the watchdog and reaped by the body's guard while it unwound.
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    }

    #[test]
    fn transform_depends_on_every_byte() {
        let r = make_request(5);
        let mut s = r;
        s[44] ^= 1;
        assert_ne!(transform(&r), transform(&s));
        assert_ne!(transform(&r), transform(&make_request(6)));
        assert_eq!(field("ready a=1 b=xy", "b"), Some("xy"));
    }
}
