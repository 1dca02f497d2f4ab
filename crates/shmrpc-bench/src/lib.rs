//! The shmrpc benchmark: the channel and the RPC layer between two processes, beside the
//! floors and the baselines measured in the same run, interleaved. `shmrpc bench` parses
//! its flags into [`BenchOptions`], calls [`run`] and prints or writes the [`Report`].
//!
//! The lead (the calling process) drives every case; the peer (the same binary re-executed
//! with the hidden subcommand [`PEER_SUBCOMMAND`], which must call [`peer`]) runs the other
//! side. They share one named baseline segment (its name is removed as soon as the peer
//! has opened it), one shmrpc channel per wait mode and ring size (both are fixed when a
//! channel is made), and one connection of each byte-stream baseline (Unix socket, tokio
//! Unix socket, pipe pair, TCP loopback). A line-based control pipe says which case to run
//! next; nothing measured goes through it.
//!
//! A case is a workload (round trip or one-way stream, RPC call) at a message size over a
//! transport (the channel in some mode, a floor, or a baseline). Cases run in rounds: one
//! warm-up round that is discarded, then `reps` rounds, each in a rotated order so that
//! every channel case runs between baselines measured moments apart. Figures are medians
//! over rounds, and every ratio is the median of the per-round ratios: the ratios are the
//! result; absolute figures on a shared 2-vCPU guest swing by 5–30 % between runs.
// `deny`, not `forbid`: the raw baselines (raw.rs) allow it for their shared-memory
// accesses.
#![deny(unsafe_code)]
#![warn(missing_docs)]

mod chan;
pub mod child;
mod error;
mod idle;
mod link;
pub mod machine;
mod peers;
pub mod pin;
mod protocol;
mod raw;
mod remote;
mod report;
mod rpc;
pub mod stats;
mod svg;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use shmrpc::channel::{self, ChannelConfig, Endpoint, Listener};
use shmrpc::lowlevel::sys::{names, Segment};

use child::{rest, spawn_self, ChildProcess, Control};
use error::Result;
use link::Link;
use machine::Machine;
use protocol::{Chan, Cmd, Mode, RingKind};
use remote::{Net, Payload, Pki, PkiDir};
use stats::{fmt_size, Latency};

pub use error::{BenchError, OptionsError, PeersFileError, ShmrpcError};
pub use report::Report;

/// The hidden subcommand of the calling binary that runs the peer process: the binary
/// re-executes itself as `EXE bench-peer ARGS…` and must then call [`peer`] with the
/// arguments parsed into [`PeerOptions`].
pub const PEER_SUBCOMMAND: &str = "bench-peer";

/// Default ring capacity of the channel for 64 B and 1 KiB streams.
pub const DEFAULT_SMALL_RING: usize = 256 << 10;
/// Default ring capacity of the channel for 64 KiB and 1 MiB streams.
pub const DEFAULT_BIG_RING: usize = 8 << 20;
/// Default ring capacity of the channel for 64 KiB and 1 MiB round trips.
pub const DEFAULT_RTT_BIG_RING: usize = 2 << 20;
/// Default bound on the bytes the channel's consumer takes per `recv_batch`.
pub const DEFAULT_READ_BYTES: usize = chan::STREAM_READ_BYTES;

/// What to measure and how (the flags of `shmrpc bench`).
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// A short run: 1/10 of the messages, 3 repetitions and a 1 s idle interval.
    pub quick: bool,
    /// The peer-comparison crate's JSON (`"kind": "shmrpc-peers"`), merged into the
    /// table, the JSON and the chart.
    pub peers: Option<PathBuf>,
    /// Where the chart will be written, if anywhere (recorded in the JSON).
    pub svg: Option<PathBuf>,
    /// Measured repetitions; `None`: 7, or 3 when quick.
    pub reps: Option<usize>,
    /// Only the cases whose id has one of these texts at the start of one of its `.`- or
    /// `_`-separated words; empty: every case.
    pub only: Vec<String>,
    /// Ring capacity of the channel for 64 B and 1 KiB streams (and the data area of the
    /// batched SPSC baseline).
    pub small_ring: usize,
    /// Ring capacity of the channel for 64 KiB and 1 MiB streams.
    pub big_ring: usize,
    /// Ring capacity of the channel for 64 KiB and 1 MiB round trips.
    pub rtt_big_ring: usize,
    /// Bound on the bytes the channel's consumer takes per `recv_batch`.
    pub read_bytes: usize,
    /// Buffers of 64 KiB of the copy floor; `None`: as many as fill the big ring.
    pub copy_slots: Option<usize>,
    /// Seconds of the idle interval of the idle-connections case; `None`: 5, or 1 when
    /// quick.
    pub idle_secs: Option<f64>,
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self {
            quick: false,
            peers: None,
            svg: None,
            reps: None,
            only: Vec::new(),
            small_ring: DEFAULT_SMALL_RING,
            big_ring: DEFAULT_BIG_RING,
            rtt_big_ring: DEFAULT_RTT_BIG_RING,
            read_bytes: DEFAULT_READ_BYTES,
            copy_slots: None,
            idle_secs: None,
        }
    }
}

/// The peer process's settings (the arguments of [`PEER_SUBCOMMAND`]).
#[derive(Debug, Clone, Default)]
pub struct PeerOptions {
    /// The baseline segment to open.
    pub seg: String,
    /// Prefix of the channel listeners' names.
    pub prefix: String,
    /// The Unix socket of the byte-stream baselines.
    pub sock: Option<PathBuf>,
    /// The TCP port (on 127.0.0.1) of the TCP baseline.
    pub tcp_port: Option<u16>,
    /// Run only an idle RPC server of this name (the idle-connections case).
    pub idle_server: Option<String>,
    /// The directory of the run's TLS certificates and token (read at the start; the lead
    /// removes it once the peer is ready).
    pub tls_dir: Option<PathBuf>,
    /// CPU to pin to.
    pub cpu: Option<usize>,
}

/// Size of the big streamed messages (the copy floor's buffers).
const BIG: usize = 64 << 10;
/// The message sizes of every workload.
pub(crate) const SIZES: [usize; 4] = [64, 1 << 10, 64 << 10, 1 << 20];
/// Ring capacity of the round-trip channels for 64 B and 1 KiB.
const RTT_RING: usize = 64 << 10;
/// What failed when the peer cannot read or write its side of the control pipe.
pub(crate) const CONTROL_PIPE: &str = "the control pipe";
/// How long the peer may take to set up or to finish a case.
const PEER_TIMEOUT: Duration = Duration::from_secs(90);
/// How long one case may take before the lead kills the peer (which turns a hang in a
/// blocking read into an error).
const CASE_LIMIT: Duration = Duration::from_secs(120);

/// What a case measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Workload {
    /// Request and echo of the same size; latency per round trip.
    RoundTrip,
    /// One way, as fast as possible; messages and bytes per second.
    Stream,
    /// RPC unary calls one after another; latency per call.
    Call,
    /// RPC calls with many outstanding; calls per second.
    Pipelined,
    /// A server restart: from its bind to a client's first successful call.
    Reconnect,
    /// A client stream of large items, one way; items and bytes per second.
    Bulk,
}

/// Over what a case moves its messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    /// A shmrpc channel (blocking or async, as its mode says).
    Channel { chan: Chan },
    /// One cache line ping-ponged (floor of spinning round trips).
    CacheLine,
    /// A bare futex ping-pong (floor of sleeping round trips).
    Futex,
    /// Two buffers with a flag each, ping-ponged: the floor of a round trip of a message.
    CopyRtt,
    /// The channel's record layout and publish/release protocol and nothing else.
    RecordRing { fence: bool },
    /// A bare SPSC of fixed slots, index published once per batch.
    Spsc { slots: usize },
    /// Buffers with a flag each: the cross-core copy floor.
    Copy { slots: usize },
    /// A byte-stream baseline with length-prefixed frames.
    Link { link: Link },
    /// `shmrpc::rpc` over `conns` connections, both sides parking or spin-then-park.
    Rpc { park: bool, conns: usize },
    /// tokio Unix sockets with the same frames, `conns` connections.
    Uds { conns: usize },
    /// An RPC server that restarts; the client calls as soon as the server is down
    /// (`early`: its reconnect back-off is part of the figure) or once it is up again.
    RpcRestart { early: bool },
    /// One spin-then-park shmrpc connection whose client serves the echo too (the RPC
    /// cases that use the symmetric and streaming calls, and their baselines).
    RpcSym { what: Sym },
    /// One shmrpc connection over shared memory or TCP (plain, lz4 or TLS); `bulk`: the
    /// payload of a bulk stream.
    Remote { net: Net, bulk: Option<Payload> },
}

/// What an [`Transport::RpcSym`] case does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sym {
    /// The server calls the client back, one call after another.
    Callback,
    /// The client calls the server, one call after another (the callbacks' baseline).
    Forward,
    /// A bidirectional echo stream.
    Bidi,
    /// Pipelined unary calls (the bidi echo's baseline).
    Pipelined,
    /// Unary calls of [`rpc::HOL_SIZE`] while a client stream is in flight.
    HolLoaded,
    /// The same calls on an idle connection.
    HolIdle,
}

/// One measured combination.
#[derive(Debug, Clone)]
pub(crate) struct Case {
    /// Stable id (JSON key, `--only` filter).
    pub id: String,
    /// Row label.
    pub label: String,
    /// Mode name for the JSON.
    pub mode: &'static str,
    /// What it is, for the JSON and the chart: `shmrpc`, `shmrpc-rpc`, `floor`,
    /// `baseline`, `uds`, `uds-tokio`, `pipe`, `tcp`.
    pub system: &'static str,
    /// Its line in the chart (cases of one series differ only by size), if charted.
    pub series: Option<String>,
    /// Round trip or stream.
    pub workload: Workload,
    /// Message size in bytes.
    pub size: usize,
    /// Over what.
    pub transport: Transport,
    /// Messages per repetition, warm-up included.
    pub total: u64,
    /// Leading round trips not recorded.
    pub warm: u64,
}

/// CPU time both processes spent over one measured interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Cpu {
    /// The lead process (all threads), ns.
    pub lead_ns: u64,
    /// The peer process (all threads), ns.
    pub peer_ns: u64,
}

/// One repetition's result for one case.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Measurement {
    /// Round-trip percentiles.
    Latency(Latency),
    /// Stream throughput.
    Rate {
        /// Wall time.
        secs: f64,
        /// Messages moved.
        msgs: u64,
        /// Payload bytes moved.
        bytes: u64,
        /// CPU time of both processes over the interval, if measured.
        cpu: Option<Cpu>,
    },
}

impl Measurement {
    fn p50(&self) -> Option<f64> {
        match self {
            Measurement::Latency(l) => Some(l.p50),
            Measurement::Rate { .. } => None,
        }
    }

    fn p99(&self) -> Option<f64> {
        match self {
            Measurement::Latency(l) => Some(l.p99),
            Measurement::Rate { .. } => None,
        }
    }

    fn msgs_per_s(&self) -> Option<f64> {
        match self {
            Measurement::Rate { secs, msgs, .. } => Some(*msgs as f64 / secs),
            Measurement::Latency(_) => None,
        }
    }

    fn bytes_per_s(&self) -> Option<f64> {
        match self {
            Measurement::Rate { secs, bytes, .. } => Some(*bytes as f64 / secs),
            Measurement::Latency(_) => None,
        }
    }

    /// CPU time of both processes per message, ns.
    fn cpu_per_msg(&self) -> Option<f64> {
        self.cpu_parts().map(|(l, p)| l + p)
    }

    /// CPU time per message of the lead and of the peer, ns.
    fn cpu_parts(&self) -> Option<(f64, f64)> {
        match self {
            Measurement::Rate {
                msgs, cpu: Some(c), ..
            } if *msgs > 0 => Some((
                c.lead_ns as f64 / *msgs as f64,
                c.peer_ns as f64 / *msgs as f64,
            )),
            _ => None,
        }
    }
}

/// The plan of one run: its cases and settings.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    /// Cases in their base order.
    pub cases: Vec<Case>,
    /// Measured repetitions.
    pub reps: usize,
    /// Whether this is a quick run.
    pub quick: bool,
    /// Ring capacity for small streams.
    pub small_ring: usize,
    /// Ring capacity for 64 KiB and 1 MiB streams.
    pub big_ring: usize,
    /// Ring capacity for 64 KiB and 1 MiB round trips.
    pub rtt_big_ring: usize,
    /// Copy-floor buffers of 64 KiB.
    pub copy_slots: usize,
    /// Bound on the bytes of one `recv_batch`.
    pub read_bytes: usize,
    /// Whether the 1000-idle-connections case runs (after the rounds).
    pub idle: bool,
    /// Its idle interval.
    pub idle_interval: Duration,
}

/// Message counts per repetition of a round-trip case, by class and size.
fn rtt_count(class: RttClass, size: usize) -> u64 {
    let i = SIZES.iter().position(|&s| s == size).unwrap_or(0);
    match class {
        RttClass::Fast => [200_000, 100_000, 10_000, 1_000][i],
        RttClass::Slow => [10_000, 5_000, 2_000, 300][i],
        RttClass::Link => [5_000, 5_000, 2_000, 300][i],
    }
}

/// Message counts per repetition of a stream case.
fn stream_count(class: StreamClass, size: usize) -> u64 {
    let i = SIZES.iter().position(|&s| s == size).unwrap_or(0);
    match class {
        StreamClass::Spin => [10_000_000, 2_000_000, 50_000, 3_000][i],
        StreamClass::Mode => [4_000_000, 1_000_000, 50_000, 3_000][i],
        StreamClass::Link => [100_000, 100_000, 5_000, 300][i],
    }
}

#[derive(Clone, Copy)]
enum RttClass {
    /// Both sides spin: many samples.
    Fast,
    /// Both sides sleep: each round trip is two wake-ups.
    Slow,
    /// System calls per message.
    Link,
}

#[derive(Clone, Copy)]
enum StreamClass {
    Spin,
    Mode,
    Link,
}

impl Plan {
    /// Every case, or those `--only` selects, with their message counts.
    pub(crate) fn new(args: &BenchOptions) -> Result<Self, OptionsError> {
        for (option, value) in [
            ("--small-ring", args.small_ring),
            ("--big-ring", args.big_ring),
            ("--rtt-big-ring", args.rtt_big_ring),
        ] {
            if !shmrpc::lowlevel::ring::valid_capacity(value as u64) {
                return Err(OptionsError::RingCapacity { option, value });
            }
        }
        let copy_slots = args.copy_slots.unwrap_or(args.big_ring / BIG);
        if copy_slots == 0 || copy_slots > raw::MAX_COPY_SLOTS {
            return Err(OptionsError::CopySlots(copy_slots));
        }
        let div = if args.quick { 10 } else { 1 };
        let mut cases = Vec::new();
        rtt_cases(&mut cases, div, args.rtt_big_ring);
        stream_cases(&mut cases, div, args, copy_slots);
        rpc_cases(&mut cases, args.quick);
        remote_cases(&mut cases, args.quick);
        let mut idle = true;
        if !args.only.is_empty() {
            cases.retain(|c| args.only.iter().any(|o| selects(&c.id, o)));
            idle = args.only.iter().any(|o| selects(idle::ID, o));
            if cases.is_empty() && !idle {
                return Err(OptionsError::NothingSelected(args.only.clone()));
            }
        }
        let plan = Self {
            cases,
            reps: args.reps.unwrap_or(if args.quick { 3 } else { 7 }).max(1),
            quick: args.quick,
            small_ring: args.small_ring,
            big_ring: args.big_ring,
            rtt_big_ring: args.rtt_big_ring,
            copy_slots,
            read_bytes: args.read_bytes,
            idle,
            idle_interval: Duration::from_secs_f64(
                args.idle_secs
                    .unwrap_or(if args.quick { 1.0 } else { 5.0 })
                    .clamp(0.1, 600.0),
            ),
        };
        for c in &plan.cases {
            if let Transport::Channel { chan } = c.transport {
                let cap = plan.capacity(chan.ring);
                let need = shmrpc::lowlevel::ring::record_size(c.size)
                    * if c.workload == Workload::Stream { 2 } else { 1 };
                if need > cap {
                    return Err(OptionsError::RingTooSmall {
                        case: c.id.clone(),
                        ring: cap,
                        size: c.size,
                        two_at_a_time: c.workload == Workload::Stream,
                    });
                }
            }
        }
        Ok(plan)
    }

    fn capacity(&self, ring: RingKind) -> usize {
        match ring {
            RingKind::Rtt => RTT_RING,
            RingKind::RttBig => self.rtt_big_ring,
            RingKind::Stream => self.small_ring,
            RingKind::StreamBig => self.big_ring,
        }
    }

    fn channel_config(&self, c: Chan) -> ChannelConfig {
        ChannelConfig::default()
            .with_capacity(self.capacity(c.ring))
            .with_wait(c.mode.wait())
    }

    /// Copy-floor buffers for streams of `size` bytes: the same memory as the 64 KiB floor.
    fn copy_slots_for(&self, size: usize) -> usize {
        (self.copy_slots * BIG / size).clamp(1, raw::MAX_COPY_SLOTS)
    }

    /// Data bytes the baseline segment needs.
    fn data_bytes(&self) -> usize {
        let copy = SIZES
            .iter()
            .filter(|&&s| s >= BIG)
            .map(|&s| self.copy_slots_for(s) * s)
            .max()
            .unwrap_or(0);
        self.small_ring
            .max(copy)
            .max(2 * raw::REC_RING)
            .max(raw::copy_rtt_area(*SIZES.last().expect("sizes")))
    }

    /// The same plan with every count divided by `by` (the warm-up round).
    fn scaled_down(&self, by: u64) -> Vec<Case> {
        self.cases
            .iter()
            .map(|c| Case {
                total: (c.total / by).max(2),
                warm: c.warm / by,
                ..c.clone()
            })
            .collect()
    }
}

/// What distinguishes one round-trip case.
struct RttSpec {
    id: String,
    label: String,
    mode: &'static str,
    system: &'static str,
    series: Option<String>,
    size: usize,
    transport: Transport,
    class: RttClass,
}

/// Adds a round-trip case with the counts of its class (divided by `div`).
fn push_rtt(cases: &mut Vec<Case>, div: u64, r: RttSpec) {
    let n = (rtt_count(r.class, r.size) / div).max(20);
    let warm = n / 10;
    cases.push(Case {
        id: format!("rtt.{}", r.id),
        label: r.label,
        mode: r.mode,
        system: r.system,
        series: r.series,
        workload: Workload::RoundTrip,
        size: r.size,
        transport: r.transport,
        total: n + warm,
        warm,
    });
}

/// The round trip of the channel in mode `m` at `size` (`id` is its id after `rtt.`).
fn shmrpc_rtt(id: String, m: Mode, size: usize, ring: &str) -> RttSpec {
    let label = match m {
        Mode::Spin => "spin",
        Mode::SpinThenPark => "spin-then-park",
        Mode::Park => "park",
        Mode::Async => "async (tokio, spin-then-park)",
        Mode::AsyncPark => "async (tokio, park)",
    };
    RttSpec {
        id,
        label: format!("shmrpc channel, {label}{ring}"),
        mode: m.name(),
        system: "shmrpc",
        series: Some(format!("shmrpc {}", m.name())),
        size,
        transport: Transport::Channel {
            chan: Chan::new(m, RingKind::for_size(false, size)),
        },
        class: match m {
            Mode::Park | Mode::AsyncPark => RttClass::Slow,
            _ => RttClass::Fast,
        },
    }
}

/// The copy ping-pong floor at `size`.
fn copy_floor_rtt(size: usize) -> RttSpec {
    RttSpec {
        id: format!("floor.copy.{size}"),
        label: format!(
            "floor: copy ping-pong, a {} buffer and a flag each way",
            fmt_size(size)
        ),
        mode: "copy-floor",
        system: "floor",
        series: Some("floor: copy ping-pong".to_owned()),
        size,
        transport: Transport::CopyRtt,
        class: RttClass::Fast,
    }
}

/// The byte-stream baselines' round trips at `size`.
fn link_rtts(cases: &mut Vec<Case>, div: u64, size: usize) {
    for link in Link::ALL {
        push_rtt(
            cases,
            div,
            RttSpec {
                id: format!("baseline.{}.{size}", link.as_str()),
                label: format!(
                    "baseline: {}, 4-byte length prefix, one write per message",
                    link.label()
                ),
                mode: link.as_str(),
                system: link_system(link),
                series: Some(link.label().to_owned()),
                size,
                transport: Transport::Link { link },
                class: RttClass::Link,
            },
        );
    }
}

/// Round trips: the 64 B cases against the cache-line, futex and record-ring floors, then
/// every mode, the copy floor and the byte-stream baselines at each size.
fn rtt_cases(cases: &mut Vec<Case>, div: u64, rtt_big_ring: usize) {
    let s = chan::RTT_SIZE;
    let floor = |id: &str, label: &str, mode, series: &str, transport, class| RttSpec {
        id: id.to_owned(),
        label: label.to_owned(),
        mode,
        system: if id.starts_with("floor") {
            "floor"
        } else {
            "baseline"
        },
        series: (!series.is_empty()).then(|| series.to_owned()),
        size: s,
        transport,
        class,
    };
    // 64 B: the channel beside the floors it is measured against, then the other modes.
    let first = [
        shmrpc_rtt("shmrpc.spin".into(), Mode::Spin, s, ""),
        floor(
            "floor.cache_line",
            "floor: one cache line ping-pong (spin)",
            "cache-line",
            "floor: one cache line",
            Transport::CacheLine,
            RttClass::Fast,
        ),
        floor(
            "baseline.record_ring",
            "baseline: ring of 80 B records, a stamp in each (shmrpc's layout)",
            "record-ring",
            "",
            Transport::RecordRing { fence: false },
            RttClass::Fast,
        ),
        floor(
            "baseline.record_ring_fence",
            "baseline: the same + a SeqCst fence per publish and release",
            "record-ring-fence",
            "",
            Transport::RecordRing { fence: true },
            RttClass::Fast,
        ),
        shmrpc_rtt("shmrpc.spin_then_park".into(), Mode::SpinThenPark, s, ""),
        shmrpc_rtt("shmrpc.async".into(), Mode::Async, s, ""),
        shmrpc_rtt("shmrpc.park".into(), Mode::Park, s, ""),
        floor(
            "floor.futex",
            "floor: bare futex ping-pong (no spin)",
            "futex",
            "floor: bare futex",
            Transport::Futex,
            RttClass::Slow,
        ),
        shmrpc_rtt("shmrpc.async_park".into(), Mode::AsyncPark, s, ""),
        copy_floor_rtt(s),
    ];
    for r in first {
        push_rtt(cases, div, r);
    }
    link_rtts(cases, div, s);
    for &size in &SIZES[1..] {
        let ring = if size > 4096 {
            format!(", ring {}", fmt_size(rtt_big_ring))
        } else {
            String::new()
        };
        for (k, m) in Mode::ALL.into_iter().enumerate() {
            push_rtt(
                cases,
                div,
                shmrpc_rtt(format!("shmrpc.{}.{size}", m.id()), m, size, &ring),
            );
            if k == 0 {
                push_rtt(cases, div, copy_floor_rtt(size));
            }
        }
        link_rtts(cases, div, size);
    }
}

fn link_system(link: Link) -> &'static str {
    match link {
        Link::Uds => "uds",
        Link::UdsTokio => "uds-tokio",
        Link::Pipe => "pipe",
        Link::Tcp => "tcp",
    }
}

/// One-way streams at each size: the channel in spin mode beside its floor, then spin-then-park, park and async, then the byte-stream
/// baselines.
fn stream_cases(cases: &mut Vec<Case>, div: u64, args: &BenchOptions, copy_slots: usize) {
    let mut add = |id: String,
                   label: String,
                   mode: &'static str,
                   system: &'static str,
                   series: &str,
                   size: usize,
                   transport: Transport,
                   class: StreamClass| {
        cases.push(Case {
            id: format!("stream.{id}"),
            label,
            mode,
            system,
            series: Some(series.to_owned()),
            workload: Workload::Stream,
            size,
            transport,
            total: (stream_count(class, size) / div).max(20),
            warm: 0,
        });
    };
    for size in SIZES {
        let big = size > 4096;
        let ring = if big { args.big_ring } else { args.small_ring };
        let rk = RingKind::for_size(true, size);
        let read_max = chan::read_max(size, args.read_bytes);
        add(
            format!("shmrpc.{size}"),
            format!(
                "shmrpc channel, spin, ring {}, notify per {}, read ≤ {}",
                fmt_size(ring),
                chan::STREAM_BATCH,
                read_max
            ),
            "spin",
            "shmrpc",
            "shmrpc spin",
            size,
            Transport::Channel {
                chan: Chan::new(Mode::Spin, rk),
            },
            StreamClass::Spin,
        );
        if big {
            let slots = (copy_slots * BIG / size).clamp(1, raw::MAX_COPY_SLOTS);
            add(
                format!("floor.copy.{size}"),
                format!(
                    "floor: bare copy, {slots} × {} buffers with a flag each",
                    fmt_size(size)
                ),
                "copy-floor",
                "floor",
                "floor: bare copy / batched SPSC",
                size,
                Transport::Copy { slots },
                StreamClass::Spin,
            );
        } else {
            let slots = args.small_ring / size;
            add(
                format!("baseline.spsc.{size}"),
                format!(
                    "baseline: batched SPSC, {slots} slots, index per {}",
                    raw::SPSC_BATCH
                ),
                "spsc-batched",
                "baseline",
                "floor: bare copy / batched SPSC",
                size,
                Transport::Spsc { slots },
                StreamClass::Spin,
            );
        }
        for m in [Mode::SpinThenPark, Mode::Park, Mode::Async] {
            let label = if m == Mode::Async {
                format!(
                    "shmrpc channel, async (tokio), send_async per message, ring {}, recv_async + batch ≤ {read_max}",
                    fmt_size(ring)
                )
            } else {
                format!(
                    "shmrpc channel, {}, ring {}, notify per {}, read ≤ {read_max}",
                    m.name(),
                    fmt_size(ring),
                    chan::STREAM_BATCH
                )
            };
            add(
                format!("shmrpc.{}.{size}", m.id()),
                label,
                m.name(),
                "shmrpc",
                &format!("shmrpc {}", m.name()),
                size,
                Transport::Channel {
                    chan: Chan::new(m, rk),
                },
                StreamClass::Mode,
            );
        }
        for link in Link::ALL {
            add(
                format!("baseline.{}.{size}", link.as_str()),
                format!(
                    "baseline: {}, 4-byte length prefix, one write per message",
                    link.label()
                ),
                link.as_str(),
                link_system(link),
                link.label(),
                size,
                Transport::Link { link },
                StreamClass::Link,
            );
        }
    }
}

/// Whether `--only` text `o` selects case `id`: `o` occurs in `id` at its start or right
/// after a `.` or `_`.
fn selects(id: &str, o: &str) -> bool {
    id.match_indices(o)
        .any(|(i, _)| i == 0 || matches!(id.as_bytes()[i - 1], b'.' | b'_'))
}

/// The RPC cases, each beside its Unix-socket baseline.
fn rpc_cases(cases: &mut Vec<Case>, quick: bool) {
    let div = if quick { 10 } else { 1 };
    let mut add = |id: &str, label: String, mode, workload, transport, (n, warm): (u64, u64)| {
        let baseline = matches!(transport, Transport::Uds { .. });
        cases.push(Case {
            id: format!("rpc.{id}"),
            label,
            mode,
            system: if baseline { "uds-tokio" } else { "shmrpc-rpc" },
            series: None,
            workload,
            size: rpc::SIZE,
            transport,
            total: n + warm,
            warm,
        });
    };
    let (fast, slow) = ((20_000 / div, 2_000 / div), (5_000 / div, 500 / div));
    add(
        "unary.shmrpc.spin_then_park",
        "shmrpc RPC unary call, spin-then-park".to_owned(),
        "spin-then-park",
        Workload::Call,
        Transport::Rpc {
            park: false,
            conns: 1,
        },
        fast,
    );
    add(
        "unary.baseline.uds",
        "baseline: tokio Unix socket, same frames, echo".to_owned(),
        "uds",
        Workload::Call,
        Transport::Uds { conns: 1 },
        fast,
    );
    add(
        "unary.shmrpc.park",
        "shmrpc RPC unary call, park".to_owned(),
        "park",
        Workload::Call,
        Transport::Rpc {
            park: true,
            conns: 1,
        },
        slow,
    );
    let n = 200_000 / div;
    for conns in [1, rpc::MANY, rpc::MANY_MORE] {
        let c = if conns == 1 {
            "1 connection".to_owned()
        } else {
            format!("{conns} connections")
        };
        add(
            &format!("pipelined.shmrpc.{conns}"),
            format!(
                "shmrpc RPC, {c}, {} caller tasks each, spin-then-park",
                rpc::PIPELINE
            ),
            "spin-then-park",
            Workload::Pipelined,
            Transport::Rpc { park: false, conns },
            (n, 0),
        );
        add(
            &format!("pipelined.baseline.uds.{conns}"),
            format!(
                "baseline: tokio Unix socket, {c}, {} requests outstanding each",
                rpc::PIPELINE
            ),
            "uds",
            Workload::Pipelined,
            Transport::Uds { conns },
            (n, 0),
        );
    }
    let restarts = if quick { 3 } else { 10 };
    add(
        "reconnect.shmrpc",
        format!(
            "server restart (down {} ms), client calling throughout: bind → first call done",
            rpc::RESTART_GAP.as_millis()
        ),
        "spin-then-park",
        Workload::Reconnect,
        Transport::RpcRestart { early: true },
        (restarts, 0),
    );
    add(
        "reconnect.shmrpc.after_bind",
        format!(
            "server restart (down {} ms), client calling once it is up: bind → first call done",
            rpc::RESTART_GAP.as_millis()
        ),
        "spin-then-park",
        Workload::Reconnect,
        Transport::RpcRestart { early: false },
        (restarts, 0),
    );
    let sym = |id: &str, label: &str, workload, what, size, (n, warm): (u64, u64)| Case {
        id: format!("rpc.{id}"),
        label: label.to_owned(),
        mode: "spin-then-park",
        system: "shmrpc-rpc",
        series: None,
        workload,
        size,
        transport: Transport::RpcSym { what },
        total: n + warm,
        warm,
    };
    cases.extend([
        sym(
            "callback.shmrpc",
            "shmrpc RPC callback: server calls client, 64 B echo",
            Workload::Call,
            Sym::Callback,
            rpc::SIZE,
            fast,
        ),
        sym(
            "callback.baseline.forward",
            "baseline: client calls server, same connection kind, 64 B echo",
            Workload::Call,
            Sym::Forward,
            rpc::SIZE,
            fast,
        ),
        sym(
            "bidi.shmrpc",
            "shmrpc RPC bidi echo, 64 B items, sender and reader tasks",
            Workload::Pipelined,
            Sym::Bidi,
            rpc::SIZE,
            (n, 0),
        ),
        sym(
            "bidi.baseline.pipelined",
            "baseline: pipelined unary calls, 1 connection, 64 B",
            Workload::Pipelined,
            Sym::Pipelined,
            rpc::SIZE,
            (n, 0),
        ),
        sym(
            "hol.shmrpc.loaded",
            "shmrpc RPC 100 B calls while a 10 MiB client stream is in flight",
            Workload::Call,
            Sym::HolLoaded,
            rpc::HOL_SIZE,
            slow,
        ),
        sym(
            "hol.baseline.idle",
            "baseline: the same calls on an idle connection",
            Workload::Call,
            Sym::HolIdle,
            rpc::HOL_SIZE,
            slow,
        ),
    ]);
}

/// The remote-transport cases: 64 B unary and pipelined calls over shared memory, TCP
/// and TLS, then 1 MiB client streams over TCP with and without lz4.
fn remote_cases(cases: &mut Vec<Case>, quick: bool) {
    let div = if quick { 10 } else { 1 };
    let mut add = |id: String,
                   label: String,
                   workload,
                   net: Net,
                   bulk: Option<Payload>,
                   (n, warm): (u64, u64)| {
        cases.push(Case {
            id: format!("rpc.remote.{id}"),
            label,
            mode: match net {
                Net::Shm => "shm-spin-then-park",
                Net::Tcp => "tcp",
                Net::TcpLz4 => "tcp-lz4",
                Net::Tls => "tls",
            },
            system: "shmrpc-rpc",
            series: None,
            workload,
            size: if bulk.is_some() {
                remote::BULK_ITEM
            } else {
                rpc::SIZE
            },
            transport: Transport::Remote { net, bulk },
            total: n + warm,
            warm,
        });
    };
    let over = |net: Net| match net {
        Net::Shm => "shared memory (spin-then-park)",
        Net::Tcp => "TCP loopback",
        Net::TcpLz4 => "TCP loopback, lz4",
        Net::Tls => "TLS 1.3 loopback, client certificate + token",
    };
    let nets = [Net::Shm, Net::Tcp, Net::Tls];
    for net in nets {
        add(
            format!("unary.{}", net.id()),
            format!("unary call, {}", over(net)),
            Workload::Call,
            net,
            None,
            (10_000 / div, 1_000 / div),
        );
    }
    for net in nets {
        add(
            format!("pipelined.{}", net.id()),
            format!(
                "pipelined calls, 1 connection, {} caller tasks, {}",
                rpc::PIPELINE,
                over(net)
            ),
            Workload::Pipelined,
            net,
            None,
            (100_000 / div, 0),
        );
    }
    for p in [Payload::Text, Payload::Random] {
        for net in [Net::Tcp, Net::TcpLz4] {
            add(
                format!("bulk.{}.{}", p.id(), net.id()),
                format!(
                    "1 MiB items, client stream, {} payload, {}",
                    match p {
                        Payload::Text => "JSON-like",
                        Payload::Random => "random",
                    },
                    over(net)
                ),
                Workload::Bulk,
                net,
                Some(p),
                (128 / div, 0),
            );
        }
    }
}

/// Everything the lead process holds during a run.
struct Lead {
    seg: Segment,
    eps: Vec<(Chan, Endpoint)>,
    links: link::Links,
    peer: ChildProcess,
    rt: tokio::runtime::Runtime,
    copy_slots: usize,
    read_bytes: usize,
    /// Name of the RPC servers the peer binds.
    rpc_name: String,
    /// Socket file of the Unix-socket baseline of the RPC cases.
    uds: PathBuf,
    /// The TLS client's certificates and token, if a TLS case runs.
    pki: Option<Pki>,
}

/// Kills the peer if a case takes longer than [`CASE_LIMIT`], so that a lead blocked in
/// a read (a socket, a pipe) gets an end-of-file instead of hanging. Dropping it disarms it.
struct CaseGuard {
    _disarm: mpsc::Sender<()>,
}

impl CaseGuard {
    fn arm(peer: shmrpc_harness::KillHandle) -> Self {
        let (tx, rx) = mpsc::channel::<()>();
        std::thread::spawn(move || {
            if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(CASE_LIMIT) {
                eprintln!("shmrpc bench: a case took over {CASE_LIMIT:?}; killing the peer");
                peer.kill();
            }
        });
        Self { _disarm: tx }
    }
}

/// The peer's "done <bad> <cpu ns>" answer.
fn parse_done(case: &str, answer: &str) -> Result<u64> {
    let mut w = answer.split_whitespace();
    let bad = w.next().unwrap_or("?");
    if bad != "0" {
        return Err(BenchError::WrongData(format!(
            "{case}: the peer counted {bad} bad messages ({answer:?})"
        )));
    }
    w.next().and_then(|c| c.parse().ok()).ok_or_else(|| {
        BenchError::protocol("\"done <bad> <CPU ns>\"", Some(&format!("done {answer}")))
    })
}

impl Lead {
    fn ep(&mut self, c: Chan) -> Result<&mut Endpoint> {
        find(&mut self.eps, c)
    }

    /// Runs one case: resets the baseline words, tells the peer, leads, collects.
    fn run_case(&mut self, case: &Case) -> Result<Measurement> {
        let _guard = CaseGuard::arm(self.peer.kill_handle());
        if let Transport::Remote { net, bulk } = case.transport {
            return self.run_remote_case(case, net, bulk);
        }
        if matches!(
            case.workload,
            Workload::Call | Workload::Pipelined | Workload::Reconnect
        ) {
            return self.run_rpc_case(case);
        }
        raw::reset(&self.seg, self.copy_slots)?;
        let (total, warm, size) = (case.total, case.warm, case.size);
        let stream = case.workload == Workload::Stream;
        let cmd = match case.transport {
            Transport::Channel { chan } if stream => Cmd::ChanSink {
                chan,
                size,
                total,
                read_max: chan::read_max(size, self.read_bytes),
            },
            Transport::Channel { chan } => Cmd::ChanEcho { chan, size, total },
            Transport::CacheLine => Cmd::LineEcho { total },
            Transport::Futex => Cmd::FutexEcho { total },
            Transport::CopyRtt => Cmd::CopyEcho { size, total },
            Transport::RecordRing { fence } => Cmd::RecEcho { fence, total },
            Transport::Spsc { slots } => Cmd::SpscSink { size, slots, total },
            Transport::Copy { slots } => Cmd::CopySink { size, slots, total },
            Transport::Link { link } if stream => Cmd::LinkSink { link, size, total },
            Transport::Link { link } => Cmd::LinkEcho { link, size, total },
            Transport::Rpc { .. }
            | Transport::Uds { .. }
            | Transport::RpcRestart { .. }
            | Transport::RpcSym { .. }
            | Transport::Remote { .. } => {
                return Err(BenchError::Inconsistent(format!(
                    "{}: an RPC transport in a channel workload",
                    case.id
                )))
            }
        };
        let cpu0 = idle::process_cpu_ns();
        self.peer.send(&cmd.to_string())?;
        let lat = |mut s: Vec<u64>| Measurement::Latency(Latency::from_nanos(&mut s));
        let mut m = match (case.transport, stream) {
            (Transport::Channel { chan }, false) => {
                if chan.mode.is_async() {
                    let ep = find(&mut self.eps, chan)?;
                    lat(self
                        .rt
                        .block_on(chan::rtt_lead_async(ep, size, total, warm))?)
                } else {
                    lat(chan::rtt_lead(self.ep(chan)?, size, total, warm)?)
                }
            }
            (Transport::Channel { chan }, true) => {
                let dt = match chan.mode {
                    Mode::Spin => chan::stream_lead(self.ep(chan)?, size, total)?,
                    Mode::SpinThenPark | Mode::Park => {
                        chan::stream_lead_waiting(self.ep(chan)?, size, total)?
                    }
                    Mode::Async | Mode::AsyncPark => {
                        let ep = find(&mut self.eps, chan)?;
                        self.rt.block_on(chan::stream_lead_async(ep, size, total))?
                    }
                };
                rate(dt, total, size)
            }
            (Transport::CacheLine, _) => lat(raw::line_lead(&self.seg, total, warm)?),
            (Transport::RecordRing { fence }, _) => {
                lat(raw::rec_lead(&self.seg, total, warm, fence)?)
            }
            (Transport::Futex, _) => lat(raw::futex_lead(&self.seg, total, warm)?),
            (Transport::CopyRtt, _) => lat(raw::copy_rtt_lead(&self.seg, size, total, warm)?),
            (Transport::Spsc { slots }, _) => {
                rate(raw::spsc_lead(&self.seg, size, slots, total)?, total, size)
            }
            (Transport::Copy { slots }, _) => {
                rate(raw::copy_lead(&self.seg, size, slots, total)?, total, size)
            }
            (Transport::Link { link }, false) => {
                lat(self.links.rtt_lead(&self.rt, link, size, total, warm)?)
            }
            (Transport::Link { link }, true) => rate(
                self.links.stream_lead(&self.rt, link, size, total)?,
                total,
                size,
            ),
            (
                Transport::Rpc { .. }
                | Transport::Uds { .. }
                | Transport::RpcRestart { .. }
                | Transport::RpcSym { .. }
                | Transport::Remote { .. },
                _,
            ) => {
                return Err(BenchError::Inconsistent(format!(
                    "{}: an RPC transport in a channel workload",
                    case.id
                )))
            }
        };
        let lead_ns = idle::process_cpu_ns().saturating_sub(cpu0);
        let answer = rest(&self.peer.expect("done", PEER_TIMEOUT)?, "done");
        let peer_ns = parse_done(&case.id, &answer)?;
        if let Measurement::Rate { cpu, .. } = &mut m {
            *cpu = Some(Cpu { lead_ns, peer_ns });
        }
        Ok(m)
    }

    /// The peer's CPU time so far (during an RPC case), ns.
    fn peer_cpu(&mut self) -> Result<u64> {
        self.peer.send("cpu")?;
        let a = rest(&self.peer.expect("cpu", PEER_TIMEOUT)?, "cpu");
        a.parse()
            .map_err(|_| BenchError::protocol("\"cpu <ns>\"", Some(&format!("cpu {a}"))))
    }

    /// Runs one RPC case: the peer binds a server for it, the lead's clients call it, the
    /// peer stops it.
    fn run_rpc_case(&mut self, case: &Case) -> Result<Measurement> {
        let (total, warm) = (case.total, case.warm);
        let cmd = match case.transport {
            Transport::Rpc { park, .. } => Cmd::RpcServe {
                kind: if park {
                    rpc::ServerKind::Park
                } else {
                    rpc::ServerKind::SpinThenPark
                },
            },
            Transport::Uds { .. } => Cmd::RpcServe {
                kind: rpc::ServerKind::Uds,
            },
            Transport::RpcRestart { .. } => Cmd::RpcRestart { count: total },
            Transport::RpcSym { .. } => Cmd::RpcServe {
                kind: rpc::ServerKind::SpinThenPark,
            },
            _ => {
                return Err(BenchError::Inconsistent(format!(
                    "{}: not an RPC transport",
                    case.id
                )))
            }
        };
        self.peer.send(&cmd.to_string())?;
        rest(&self.peer.expect("ready", PEER_TIMEOUT)?, "ready");
        let (name, uds) = (self.rpc_name.clone(), self.uds.clone());
        let m = match (case.transport, case.workload) {
            (Transport::Rpc { park, conns }, w) => {
                let clients = self.rt.block_on(rpc::connect(&name, park, conns))?;
                let m = if w == Workload::Call {
                    let mut s = self.rt.block_on(rpc::rpc_unary(&clients[0], total, warm))?;
                    Measurement::Latency(Latency::from_nanos(&mut s))
                } else {
                    let (p0, l0) = (self.peer_cpu()?, idle::process_cpu_ns());
                    let (dt, n) = self.rt.block_on(rpc::rpc_pipelined(&clients, total))?;
                    let lead_ns = idle::process_cpu_ns().saturating_sub(l0);
                    let peer_ns = self.peer_cpu()?.saturating_sub(p0);
                    with_cpu(rate(dt, n, rpc::SIZE), lead_ns, peer_ns)
                };
                // Drop the clients inside the runtime (their tasks end with them).
                self.rt.block_on(async move { drop(clients) });
                m
            }
            (Transport::Uds { conns }, w) => {
                if w == Workload::Call {
                    let mut s = self.rt.block_on(rpc::uds_unary(&uds, total, warm))?;
                    Measurement::Latency(Latency::from_nanos(&mut s))
                } else {
                    let streams = self.rt.block_on(rpc::uds_connect(&uds, conns))?;
                    let (p0, l0) = (self.peer_cpu()?, idle::process_cpu_ns());
                    let (dt, n) = self.rt.block_on(rpc::uds_pipelined(streams, total))?;
                    let lead_ns = idle::process_cpu_ns().saturating_sub(l0);
                    let peer_ns = self.peer_cpu()?.saturating_sub(p0);
                    with_cpu(rate(dt, n, rpc::SIZE), lead_ns, peer_ns)
                }
            }
            (Transport::RpcRestart { early }, _) => {
                let client = self.rt.block_on(async {
                    let c = rpc::connect(&name, false, 1).await?.remove(0);
                    rpc::call_until_ok(&c).await?;
                    Ok::<_, BenchError>(c)
                })?;
                let mut samples = Vec::new();
                for _ in 0..total {
                    self.peer.send("restart")?;
                    rest(&self.peer.expect("down", PEER_TIMEOUT)?, "down");
                    let (done, bound) = if early {
                        let done = self.rt.block_on(rpc::call_until_ok(&client))?;
                        (done, rest(&self.peer.expect("up", PEER_TIMEOUT)?, "up"))
                    } else {
                        let bound = rest(&self.peer.expect("up", PEER_TIMEOUT)?, "up");
                        (self.rt.block_on(rpc::call_until_ok(&client))?, bound)
                    };
                    let bound: u64 = bound.parse().map_err(|_| {
                        BenchError::protocol("\"up <ns>\"", Some(&format!("up {bound}")))
                    })?;
                    samples.push(done.saturating_sub(bound));
                }
                self.rt.block_on(async move { drop(client) });
                Measurement::Latency(Latency::from_nanos(&mut samples))
            }
            (Transport::RpcSym { what }, _) => {
                let client = self.rt.block_on(rpc::connect_symmetric(&name))?;
                let lat = |mut s: Vec<u64>| Measurement::Latency(Latency::from_nanos(&mut s));
                let m = match what {
                    Sym::Callback => {
                        lat(self.rt.block_on(rpc::rpc_callback(&client, total, warm))?)
                    }
                    Sym::Forward => lat(self.rt.block_on(rpc::rpc_unary(&client, total, warm))?),
                    Sym::HolLoaded | Sym::HolIdle => lat(self.rt.block_on(rpc::rpc_hol(
                        &client,
                        total,
                        warm,
                        what == Sym::HolLoaded,
                    ))?),
                    Sym::Bidi | Sym::Pipelined => {
                        let (p0, l0) = (self.peer_cpu()?, idle::process_cpu_ns());
                        let (dt, n) = self.rt.block_on(async {
                            if what == Sym::Bidi {
                                rpc::rpc_bidi(&client, total).await
                            } else {
                                rpc::rpc_pipelined(std::slice::from_ref(&client), total).await
                            }
                        })?;
                        let lead_ns = idle::process_cpu_ns().saturating_sub(l0);
                        let peer_ns = self.peer_cpu()?.saturating_sub(p0);
                        with_cpu(rate(dt, n, rpc::SIZE), lead_ns, peer_ns)
                    }
                };
                self.rt.block_on(async move { drop(client) });
                m
            }
            _ => {
                return Err(BenchError::Inconsistent(format!(
                    "{}: not an RPC transport",
                    case.id
                )))
            }
        };
        self.peer.send("rpc-stop")?;
        let answer = rest(&self.peer.expect("done", PEER_TIMEOUT)?, "done");
        parse_done(&case.id, &answer)?;
        Ok(m)
    }

    /// Runs one remote-transport case: the peer binds a server for `net` (a TCP one on
    /// 127.0.0.1:0, answering "ready <port>"), one client calls it, the peer stops it.
    fn run_remote_case(
        &mut self,
        case: &Case,
        net: Net,
        bulk: Option<Payload>,
    ) -> Result<Measurement> {
        let (total, warm) = (case.total, case.warm);
        self.peer
            .send(&Cmd::RpcServe { kind: net.server() }.to_string())?;
        let ready = rest(&self.peer.expect("ready", PEER_TIMEOUT)?, "ready");
        let port = match ready.as_str() {
            "" => None,
            p => Some(p.parse::<u16>().map_err(|_| {
                BenchError::protocol("\"ready <port>\"", Some(&format!("ready {ready}")))
            })?),
        };
        let client = self.rt.block_on(remote::connect(
            net,
            &self.rpc_name,
            port,
            self.pki.as_ref(),
        ))?;
        let m = match (case.workload, bulk) {
            (Workload::Call, None) => {
                let mut s = self.rt.block_on(rpc::rpc_unary(&client, total, warm))?;
                Measurement::Latency(Latency::from_nanos(&mut s))
            }
            (Workload::Pipelined, None) | (Workload::Bulk, Some(_)) => {
                let (p0, l0) = (self.peer_cpu()?, idle::process_cpu_ns());
                let (dt, n) = self.rt.block_on(async {
                    match bulk {
                        Some(p) => remote::bulk(&client, p, total).await,
                        None => rpc::rpc_pipelined(std::slice::from_ref(&client), total).await,
                    }
                })?;
                let lead_ns = idle::process_cpu_ns().saturating_sub(l0);
                let peer_ns = self.peer_cpu()?.saturating_sub(p0);
                with_cpu(rate(dt, n, case.size), lead_ns, peer_ns)
            }
            _ => {
                return Err(BenchError::Inconsistent(format!(
                    "{}: not a remote-transport workload",
                    case.id
                )))
            }
        };
        self.rt.block_on(async move { drop(client) });
        self.peer.send("rpc-stop")?;
        let answer = rest(&self.peer.expect("done", PEER_TIMEOUT)?, "done");
        parse_done(&case.id, &answer)?;
        Ok(m)
    }
}

fn with_cpu(m: Measurement, lead_ns: u64, peer_ns: u64) -> Measurement {
    match m {
        Measurement::Rate {
            secs, msgs, bytes, ..
        } => Measurement::Rate {
            secs,
            msgs,
            bytes,
            cpu: Some(Cpu { lead_ns, peer_ns }),
        },
        other => other,
    }
}

/// The peer's side of an RPC case: runs the server until "rpc-stop", restarting it on
/// each "restart" line and answering "cpu" lines with its CPU time.
fn peer_rpc(
    ctl: &mut Control,
    prefix: &str,
    kind: rpc::ServerKind,
    pki: Option<&Pki>,
) -> Result<u64> {
    let (name, uds) = (format!("{prefix}-rpc"), rpc::uds_path(prefix));
    let mut server = rpc::Running::start(kind, &name, &uds, pki)?;
    let ready = match server.port {
        Some(port) => format!("ready {port}"),
        None => "ready".to_owned(),
    };
    ctl.say(&ready).map_err(BenchError::io(CONTROL_PIPE))?;
    loop {
        let line = ctl.next_command().map_err(BenchError::io(CONTROL_PIPE))?;
        let say = |s: &str| ctl.say(s).map_err(BenchError::io(CONTROL_PIPE));
        match line.as_deref() {
            Some("rpc-stop") => break,
            Some("cpu") => say(&format!("cpu {}", idle::process_cpu_ns()))?,
            Some("restart") => {
                server.stop()?;
                say("down")?;
                std::thread::sleep(rpc::RESTART_GAP);
                server = rpc::Running::start(kind, &name, &uds, pki)?;
                say(&format!("up {}", server.bound_at))?;
            }
            other => {
                return Err(BenchError::protocol(
                    "\"rpc-stop\", \"cpu\" or \"restart\" during an RPC case",
                    other,
                ))
            }
        }
    }
    server.stop()?;
    Ok(0)
}

/// The endpoint of channel `c`.
fn find(eps: &mut [(Chan, Endpoint)], c: Chan) -> Result<&mut Endpoint> {
    eps.iter_mut()
        .find(|(k, _)| *k == c)
        .map(|(_, e)| e)
        .ok_or_else(|| BenchError::Inconsistent(format!("no {} channel", c.as_str())))
}

fn rate(dt: Duration, msgs: u64, size: usize) -> Measurement {
    Measurement::Rate {
        secs: dt.as_secs_f64().max(1e-9),
        msgs,
        bytes: msgs * size as u64,
        cpu: None,
    }
}

/// The progress bar on stderr (hidden when stderr is not a terminal), and the lines that
/// go above it.
struct Progress {
    bar: ProgressBar,
}

impl Progress {
    fn new(len: u64) -> Self {
        let target = if std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let bar = ProgressBar::with_draw_target(Some(len), target);
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix:>12} [{bar:32.cyan/blue}] {pos:>4}/{len} {elapsed:>4} {wide_msg}",
            )
            .expect("a valid template")
            .progress_chars("=> "),
        );
        bar.set_prefix("shmrpc bench");
        Self { bar }
    }

    /// A line for stderr, above the bar (or plain, when the bar is hidden).
    fn line(&self, s: &str) {
        if self.bar.is_hidden() {
            eprintln!("shmrpc bench: {s}");
        } else {
            self.bar.println(format!("shmrpc bench: {s}"));
        }
    }
}

/// Runs the benchmark: starts the peer process, runs every selected case in interleaved
/// rounds (printing a header on stdout and the progress on stderr), checks that nothing
/// was left behind, and returns the figures.
///
/// # Errors
///
/// A bad option ([`BenchError::Options`]) or peers file ([`BenchError::PeersFile`]),
/// found before anything starts; a resource that cannot be made (segment, sockets, the
/// peer process); a case that fails or finds damaged messages, or a peer that hangs (every
/// case has a time limit): [`BenchError::Case`], with the cause as its source; or files
/// left behind ([`BenchError::LeftBehind`]).
pub fn run(args: &BenchOptions) -> Result<Report> {
    let plan = Plan::new(args)?;
    // Read the peers file first: a bad file is an error before minutes of measuring.
    let peers = match &args.peers {
        Some(p) => Some(peers::PeersFile::load(p)?),
        None => None,
    };
    let machine = Machine::detect();
    let cpus = pin::two_cpus();
    if let Some((mine, _)) = cpus {
        pin::pin_to(mine)?;
    }
    idle::raise_fd_limit();
    let pid = std::process::id();
    let seg_name = format!("bench.{pid}");
    let seg = Segment::create(&seg_name, raw::segment_size(plan.data_bytes())).map_err(
        BenchError::shmrpc(format!("creating the baseline segment {seg_name}")),
    )?;
    raw::prefault(&seg)?;
    let seg_path = names::segment_path(&seg_name).map_err(BenchError::shmrpc("segment name"))?;

    // One listener per channel; the peer connects to each in order.
    let prefix = format!("bench-{pid}");
    let mut listeners = Vec::new();
    for c in Chan::all() {
        let name = format!("{prefix}-{}", c.as_str());
        let l = Listener::bind(&name, plan.channel_config(c))
            .map_err(BenchError::shmrpc(format!("listening on {name}")))?;
        listeners.push((c, l));
    }
    let sockets: Vec<PathBuf> = listeners.iter().map(|(_, l)| l.path().to_owned()).collect();
    let link_path = std::env::temp_dir().join(format!("shmrpc-{prefix}-links.sock"));
    let listening = link::listen(&link_path)?;
    let tcp_port = listening.port;
    let remove_sockets = || {
        for s in &sockets {
            let _ = std::fs::remove_file(s);
        }
        let _ = std::fs::remove_file(&link_path);
    };

    let mut peer_args = vec![
        PEER_SUBCOMMAND.to_owned(),
        "--seg".to_owned(),
        seg_name.clone(),
        "--prefix".to_owned(),
        prefix.clone(),
        "--sock".to_owned(),
        link_path.display().to_string(),
        "--tcp-port".to_owned(),
        tcp_port.to_string(),
    ];
    if let Some((_, theirs)) = cpus {
        peer_args.extend(["--cpu".to_owned(), theirs.to_string()]);
    }
    // The TLS cases' certificates and token: made here, read by the peer at its start
    // from a directory of their own, which is removed (by the guard) once it is ready.
    let tls_dir = std::env::temp_dir().join(format!("shmrpc-{prefix}-tls"));
    let needs_tls = plan
        .cases
        .iter()
        .any(|c| matches!(c.transport, Transport::Remote { net: Net::Tls, .. }));
    let (pki, pki_dir) = if needs_tls {
        let pki = Pki::generate()?;
        let guard = PkiDir(tls_dir.clone());
        if let Err(e) = pki.write(&tls_dir) {
            remove_sockets();
            return Err(e);
        }
        peer_args.extend(["--tls-dir".to_owned(), tls_dir.display().to_string()]);
        (Some(pki), Some(guard))
    } else {
        (None, None)
    };
    let mut peer = match spawn_self(&peer_args) {
        Ok(p) => p,
        Err(e) => {
            drop(listeners);
            remove_sockets();
            return Err(e);
        }
    };
    // accept() blocks; do it on a thread so that a peer that never connects is an error
    // after a timeout, not a hang. Each listener is dropped (its socket file removed) as
    // soon as its one connection is made.
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let r = (|| {
            let eps = listeners
                .into_iter()
                .map(|(c, l)| l.accept().map(|ep| (c, ep)))
                .collect::<Result<Vec<(Chan, Endpoint)>, _>>()
                .map_err(BenchError::shmrpc(
                    "accepting the peer's channel connections",
                ))?;
            let accepted = listening.accept()?;
            Ok::<_, BenchError>((eps, accepted))
        })();
        let _ = tx.send(r);
    });
    let (eps, accepted) = match rx.recv_timeout(PEER_TIMEOUT) {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => {
            remove_sockets();
            return Err(e);
        }
        Err(_) => {
            remove_sockets();
            return Err(BenchError::TimedOut {
                what: "the peer connecting".to_owned(),
                limit: PEER_TIMEOUT,
            });
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(BenchError::io("tokio runtime"))?;
    let links = accepted.finish(&rt)?;
    peer.expect("ready", PEER_TIMEOUT)?;
    // The peer has mapped the segment and read the certificates: neither file is needed.
    Segment::unlink(&seg_name).map_err(BenchError::io("unlinking the baseline segment"))?;
    drop(pki_dir);

    let mut lead = Lead {
        seg,
        eps,
        links,
        peer,
        rt,
        copy_slots: plan.copy_slots,
        read_bytes: plan.read_bytes,
        rpc_name: format!("{prefix}-rpc"),
        uds: rpc::uds_path(&prefix),
        pki,
    };

    println!("shmrpc bench: two processes, the shmrpc channel beside raw baselines");
    println!("machine: {}", machine.describe());
    println!("{}", pin::describe(cpus));
    println!(
        "{} repetitions, interleaved (each round runs every case, in a rotated order), after one discarded warm-up round{}",
        plan.reps,
        if plan.quick { "; --quick: 1/10 of the messages, figures are rough" } else { "" }
    );
    println!();

    let started = Instant::now();
    let warmup = plan.scaled_down(10);
    let n = plan.cases.len();
    let progress = Progress::new((warmup.len() + plan.reps * n + usize::from(plan.idle)) as u64);
    progress.line(&format!("warm-up round ({} cases)", warmup.len()));
    for c in &warmup {
        progress.bar.set_message(format!("warm-up: {}", c.id));
        lead.run_case(c).map_err(|e| e.in_case(&c.id, true))?;
        progress.bar.inc(1);
    }
    let mut results: Vec<Vec<Measurement>> = vec![Vec::new(); n];
    for rep in 0..plan.reps {
        let t = Instant::now();
        for k in 0..n {
            let i = (k + rep * 3) % n;
            let case = &plan.cases[i];
            progress
                .bar
                .set_message(format!("round {}/{}: {}", rep + 1, plan.reps, case.id));
            let m = lead
                .run_case(case)
                .map_err(|e| e.in_case(&case.id, false))?;
            results[i].push(m);
            progress.bar.inc(1);
        }
        progress.line(&format!(
            "repetition {}/{} done in {:.1} s",
            rep + 1,
            plan.reps,
            t.elapsed().as_secs_f64()
        ));
    }

    lead.peer.send(&Cmd::Quit.to_string())?;
    let status = lead.peer.finish(Duration::from_secs(10))?;
    if !status.success() {
        return Err(BenchError::ChildExit {
            child: "the peer process".to_owned(),
            status,
        });
    }
    let idle_name = format!("{prefix}-idle");
    let idle = if plan.idle {
        progress.bar.set_message(format!(
            "{}: {} idle connections, {:.1} s",
            idle::ID,
            idle::CONNECTIONS,
            plan.idle_interval.as_secs_f64()
        ));
        let r = idle::measure(
            &lead.rt,
            &idle_name,
            cpus.map(|(_, theirs)| theirs),
            plan.idle_interval,
        )
        .map_err(|e| e.in_case(idle::ID, false))?;
        progress.bar.inc(1);
        Some(r)
    } else {
        None
    };
    let elapsed = started.elapsed();
    progress.bar.finish_and_clear();
    drop(lead);
    let uds = rpc::uds_path(&prefix);
    // Where the RPC servers' listener sockets were (as `channel::Listener` names them).
    let rpc_socket = names::runtime_dir()
        .map(|d| d.join(format!("{prefix}-rpc.sock")))
        .unwrap_or_default();
    let idle_socket = idle::socket_path(&idle_name);
    let locks: Vec<PathBuf> = [&rpc_socket, &idle_socket]
        .into_iter()
        .chain(&sockets)
        .map(|p| p.with_extension("lock"))
        .collect();
    let leftovers: Vec<PathBuf> = sockets
        .iter()
        .chain([
            &seg_path,
            &uds,
            &rpc_socket,
            &idle_socket,
            &link_path,
            &tls_dir,
        ])
        .chain(&locks)
        .filter(|p| !p.as_os_str().is_empty() && p.exists())
        .cloned()
        .collect();
    if !leftovers.is_empty() {
        return Err(BenchError::LeftBehind(leftovers));
    }

    let info = report::RunInfo {
        machine,
        cpus,
        elapsed,
        idle,
        peers,
        svg: args.svg.clone(),
        sockets_removed: sockets.len() + 1,
    };
    Ok(Report::new(plan, results, info))
}

/// The peer process ([`PEER_SUBCOMMAND`]): the other side of every case, driven by the
/// lead through its stdin and stdout until the lead says "quit".
///
/// # Errors
///
/// The segment, channels or sockets cannot be opened, a case fails or times out, or the
/// control pipe closes before "quit" ([`BenchError::Protocol`]).
pub fn peer(args: &PeerOptions) -> Result<()> {
    if let Some(cpu) = args.cpu {
        pin::pin_to(cpu)?;
    }
    if let Some(name) = &args.idle_server {
        return idle::serve(name);
    }
    let seg =
        Segment::open(&args.seg).map_err(BenchError::shmrpc(format!("opening {}", args.seg)))?;
    let mut eps = Vec::new();
    for c in Chan::all() {
        let name = format!("{}-{}", args.prefix, c.as_str());
        let cfg = ChannelConfig::default().with_wait(c.mode.wait());
        let ep = channel::connect(&name, &cfg)
            .map_err(BenchError::shmrpc(format!("connecting to {name}")))?;
        eps.push((c, ep));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(BenchError::io("tokio runtime"))?;
    let (Some(sock), Some(port)) = (&args.sock, args.tcp_port) else {
        return Err(OptionsError::PeerSockets.into());
    };
    let mut links = link::connect(sock, port, &rt)?;
    let pki = args.tls_dir.as_deref().map(Pki::load).transpose()?;
    idle::raise_fd_limit();
    let mut ctl = Control::new("");
    ctl.say("ready").map_err(BenchError::io(CONTROL_PIPE))?;
    while let Some(line) = ctl.next_command().map_err(BenchError::io(CONTROL_PIPE))? {
        let cmd: Cmd = line.parse()?;
        let cpu0 = idle::process_cpu_ns();
        let bad = match cmd {
            Cmd::Quit => return Ok(()),
            Cmd::ChanEcho { chan, size, total } => {
                let ep = find(&mut eps, chan)?;
                if chan.mode.is_async() {
                    rt.block_on(chan::rtt_echo_async(ep, size, total))?;
                } else {
                    chan::rtt_echo(ep, size, total)?;
                }
                0
            }
            Cmd::LineEcho { total } => raw::line_echo(&seg, total).map(|()| 0)?,
            Cmd::FutexEcho { total } => raw::futex_echo(&seg, total).map(|()| 0)?,
            Cmd::RecEcho { fence, total } => raw::rec_echo(&seg, total, fence).map(|()| 0)?,
            Cmd::CopyEcho { size, total } => raw::copy_rtt_echo(&seg, size, total).map(|()| 0)?,
            Cmd::ChanSink {
                chan,
                size,
                total,
                read_max,
            } => {
                let ep = find(&mut eps, chan)?;
                if chan.mode.is_async() {
                    rt.block_on(chan::stream_sink_async(ep, size, total, read_max))?
                } else {
                    chan::stream_sink(ep, size, total, read_max)?
                }
            }
            Cmd::SpscSink { size, slots, total } => raw::spsc_sink(&seg, size, slots, total)?,
            Cmd::CopySink { size, slots, total } => raw::copy_sink(&seg, size, slots, total)?,
            Cmd::LinkEcho { link, size, total } => {
                links.rtt_echo(&rt, link, size, total).map(|()| 0)?
            }
            Cmd::LinkSink { link, size, total } => links.stream_sink(&rt, link, size, total)?,
            Cmd::RpcServe { kind } => peer_rpc(&mut ctl, &args.prefix, kind, pki.as_ref())?,
            Cmd::RpcRestart { .. } => {
                peer_rpc(&mut ctl, &args.prefix, rpc::ServerKind::SpinThenPark, None)?
            }
        };
        let cpu = idle::process_cpu_ns().saturating_sub(cpu0);
        ctl.say(&format!("done {bad} {cpu}"))
            .map_err(BenchError::io(CONTROL_PIPE))?;
    }
    // End of file without "quit": the lead is gone.
    Err(BenchError::protocol("\"quit\"", None))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(only: &[&str]) -> BenchOptions {
        BenchOptions {
            quick: true,
            only: only.iter().map(|s| (*s).to_owned()).collect(),
            ..BenchOptions::default()
        }
    }

    #[test]
    fn only_matches_at_word_starts() {
        assert!(selects("rpc.unary.shmrpc.park", "rpc."));
        assert!(!selects("rtt.shmrpc.spin", "rpc."));
        assert!(selects("rtt.shmrpc.spin", "shmrpc"));
        assert!(selects("rtt.shmrpc.spin_then_park", "park"));
        assert!(selects("stream.baseline.spsc.64", "spsc.64"));
        assert!(!selects("stream.shmrpc.65536", "536"));
    }

    #[test]
    fn rpc_cases_are_selected_by_their_prefix_alone() {
        let plan = Plan::new(&args(&["rpc."])).unwrap();
        assert_eq!(plan.cases.len(), 27);
        assert!(plan.cases.iter().all(|c| c.id.starts_with("rpc.")));
        // Each measurement of the symmetric and streaming calls comes with its baseline
        // when selected by its own prefix, so that its ratio is of one run.
        for (only, ids) in [
            (
                "rpc.callback",
                ["rpc.callback.shmrpc", "rpc.callback.baseline.forward"],
            ),
            (
                "rpc.bidi",
                ["rpc.bidi.shmrpc", "rpc.bidi.baseline.pipelined"],
            ),
            (
                "rpc.hol",
                ["rpc.hol.shmrpc.loaded", "rpc.hol.baseline.idle"],
            ),
        ] {
            let plan = Plan::new(&args(&[only])).unwrap();
            let got: Vec<&str> = plan.cases.iter().map(|c| c.id.as_str()).collect();
            assert_eq!(got, ids, "--only {only}");
        }
        assert!(plan.idle, "the idle case is an rpc. case too");
        // The remote group comes whole with its own prefix: every row with the rows its
        // ratios divide by, and nothing else.
        let remote = Plan::new(&args(&["rpc.remote"])).unwrap();
        let got: Vec<&str> = remote.cases.iter().map(|c| c.id.as_str()).collect();
        let mut want = Vec::new();
        for w in ["unary", "pipelined"] {
            for n in ["shm", "tcp", "tls"] {
                want.push(format!("rpc.remote.{w}.{n}"));
            }
        }
        for p in ["text", "random"] {
            for n in ["tcp", "tcp_lz4"] {
                want.push(format!("rpc.remote.bulk.{p}.{n}"));
            }
        }
        assert_eq!(got, want);
        assert!(!remote.idle);
        let plan = Plan::new(&args(&["rtt."])).unwrap();
        assert!(!plan.idle);
    }

    #[test]
    fn every_size_has_its_cases_and_ids_are_unique() {
        let plan = Plan::new(&args(&[])).unwrap();
        let ids: Vec<&str> = plan.cases.iter().map(|c| c.id.as_str()).collect();
        let mut sorted = ids.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), ids.len(), "duplicate case ids");
        for size in SIZES {
            let rtt = |w: &str| {
                if size == 64 {
                    format!("rtt.shmrpc.{w}")
                } else {
                    format!("rtt.shmrpc.{w}.{size}")
                }
            };
            for m in Mode::ALL {
                assert!(ids.contains(&rtt(m.id()).as_str()), "{}", rtt(m.id()));
            }
            for l in Link::ALL {
                assert!(ids.contains(&format!("rtt.baseline.{}.{size}", l.as_str()).as_str()));
                assert!(ids.contains(&format!("stream.baseline.{}.{size}", l.as_str()).as_str()));
            }
            assert!(ids.contains(&format!("rtt.floor.copy.{size}").as_str()));
            assert!(ids.contains(&format!("stream.shmrpc.{size}").as_str()));
            for m in ["spin_then_park", "park", "async"] {
                assert!(ids.contains(&format!("stream.shmrpc.{m}.{size}").as_str()));
            }
        }
        assert!(ids.contains(&"stream.floor.copy.1048576"));
        assert!(ids.contains(&"rpc.pipelined.shmrpc.256"));
        assert!(ids.contains(&"rpc.pipelined.baseline.uds.256"));
        for id in [
            "rpc.callback.shmrpc",
            "rpc.callback.baseline.forward",
            "rpc.bidi.shmrpc",
            "rpc.bidi.baseline.pipelined",
            "rpc.hol.shmrpc.loaded",
            "rpc.hol.baseline.idle",
        ] {
            assert!(ids.contains(&id), "{id}");
        }
        // Every channel case has a channel the run opens.
        let all = Chan::all();
        for c in &plan.cases {
            if let Transport::Channel { chan } = c.transport {
                assert!(
                    all.contains(&chan),
                    "{}: no channel {}",
                    c.id,
                    chan.as_str()
                );
            }
        }
    }

    #[test]
    fn a_ring_too_small_for_the_selected_messages_is_refused() {
        let mut a = args(&["stream.shmrpc.1048576"]);
        a.big_ring = 1 << 20;
        assert!(matches!(
            Plan::new(&a),
            Err(OptionsError::RingTooSmall { ring, size, two_at_a_time: true, .. })
                if ring == 1 << 20 && size == 1 << 20
        ));
        let mut a = args(&["stream.shmrpc.65536"]);
        a.big_ring = 1 << 20;
        assert!(Plan::new(&a).is_ok());
    }

    #[test]
    fn bad_options_are_refused_before_anything_starts() {
        let mut a = args(&[]);
        a.small_ring = 100;
        // `run` fails at the plan: no segment, socket or peer process is made.
        match run(&a) {
            Err(BenchError::Options(OptionsError::RingCapacity { option, value })) => {
                assert_eq!((option, value), ("--small-ring", 100));
            }
            Err(other) => panic!("{other:?}"),
            Ok(_) => panic!("a run with --small-ring 100"),
        }
        let mut a = args(&[]);
        a.copy_slots = Some(0);
        assert_eq!(Plan::new(&a).err(), Some(OptionsError::CopySlots(0)));
        assert_eq!(
            Plan::new(&args(&["nothing.like.this"])).err(),
            Some(OptionsError::NothingSelected(vec![
                "nothing.like.this".to_owned()
            ]))
        );
    }
}
