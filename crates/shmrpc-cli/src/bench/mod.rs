//! `shmrpc bench`: the channel between two processes, beside raw baselines measured in the
//! same run, interleaved.
//!
//! The lead (this process) drives every case; the peer (this binary re-executed as
//! `bench-peer`) runs the other side. They share one named baseline segment (its name is
//! removed as soon as the peer has opened it) and one shmrpc channel per wait strategy
//! (the strategy of a channel is fixed when it is made). A line-based control pipe says
//! which case to run next; nothing measured goes through it.
//!
//! A case is a workload (round trip or one-way stream) at a message size over a
//! transport (the channel in some mode, or a raw baseline). Cases run in rounds: one
//! warm-up round that is discarded, then `reps` rounds, each in a rotated order so that
//! every channel case runs between baselines measured moments apart. Figures are medians
//! over rounds, and every ratio is the median of the per-round ratios: the ratios are the
//! result; absolute figures on a shared 2-vCPU guest swing by 5–30 % between runs.

mod chan;
mod protocol;
mod raw;
mod report;
mod rpc;
mod watchdog;

use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use shmrpc::channel::{self, ChannelConfig, Endpoint, Listener, WaitStrategy};
use shmrpc::sys::{names, Segment};

use crate::child::{Control, Peer};
use crate::machine::Machine;
use crate::pin;
use crate::stats::Latency;
use protocol::{Chan, Cmd};

/// Options of `shmrpc bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// A short run (a few seconds): fewer messages and 3 repetitions. For checking that
    /// the command works, not for figures.
    #[arg(long)]
    pub quick: bool,
    /// Also write the results as JSON to this file.
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
    /// Measured repetitions (rounds of all cases); default 7, or 3 with --quick.
    #[arg(long, value_name = "N")]
    pub reps: Option<usize>,
    /// Only run cases whose id contains one of these comma-separated texts at the start of
    /// one of its `.`- or `_`-separated words (`rpc.` selects the RPC cases of issue 3,
    /// `rtt.` the channel round trips; a ratio is shown only if both of its cases ran).
    #[arg(long, value_name = "TEXT,...", value_delimiter = ',')]
    pub only: Vec<String>,
    /// Ring capacity of the channel for 64 B and 1 KiB streams (and the data area of the
    /// batched SPSC baseline).
    #[arg(long, value_name = "BYTES", default_value_t = 256 << 10)]
    pub small_ring: usize,
    /// Ring capacity of the channel for 64 KiB streams.
    #[arg(long, value_name = "BYTES", default_value_t = 8 << 20)]
    pub big_ring: usize,
    /// Bound on the bytes the channel's consumer takes per `recv_batch` (it releases the
    /// ring space once per batch).
    #[arg(long, value_name = "BYTES", default_value_t = chan::STREAM_READ_BYTES)]
    pub read_bytes: usize,
    /// Buffers of the copy floor, each 64 KiB with its own flag (default: as many as fill
    /// the big ring, so that both use the same memory).
    #[arg(long, value_name = "N")]
    pub copy_slots: Option<usize>,
}

/// Options of the hidden `bench-peer` subcommand.
#[derive(Debug, Clone, clap::Args)]
pub struct PeerArgs {
    /// The baseline segment to open.
    #[arg(long)]
    pub seg: String,
    /// Prefix of the channel listeners' names.
    #[arg(long)]
    pub prefix: String,
    /// CPU to pin to.
    #[arg(long)]
    pub cpu: Option<usize>,
}

/// Size of the big streamed messages.
const BIG: usize = 64 << 10;
/// Ring capacity of the round-trip channels.
const RTT_RING: usize = 64 << 10;
/// How long the peer may take to set up or to finish a case.
const PEER_TIMEOUT: Duration = Duration::from_secs(90);

/// How each channel waits (both ends use the same strategy).
fn wait_of(c: Chan) -> WaitStrategy {
    match c {
        Chan::Spin | Chan::Stream | Chan::StreamBig => WaitStrategy::Spin,
        Chan::SpinThenPark | Chan::Async => WaitStrategy::default(),
        Chan::Park | Chan::AsyncPark => WaitStrategy::Park,
    }
}

/// What a case measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
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
}

/// Over what a case moves its messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// A shmrpc channel (blocking or async).
    Channel { chan: Chan, is_async: bool },
    /// One cache line ping-ponged (floor of spinning round trips).
    CacheLine,
    /// A bare futex ping-pong (floor of sleeping round trips).
    Futex,
    /// The channel's record layout and publish/release protocol and nothing else.
    RecordRing { fence: bool },
    /// A bare SPSC of fixed slots, index published once per batch.
    Spsc { slots: usize },
    /// Buffers with a flag each: the cross-core copy floor.
    Copy { slots: usize },
    /// `shmrpc::rpc` over `conns` connections, both sides parking or spin-then-park.
    Rpc { park: bool, conns: usize },
    /// tokio Unix sockets with the same frames, `conns` connections.
    Uds { conns: usize },
    /// An RPC server that restarts; the client calls as soon as the server is down
    /// (`early`: its reconnect back-off is part of the figure) or once it is up again.
    RpcRestart { early: bool },
}

/// One measured combination.
#[derive(Debug, Clone)]
pub struct Case {
    /// Stable id (JSON key, `--only` filter).
    pub id: String,
    /// Row label.
    pub label: String,
    /// Mode name for the JSON.
    pub mode: &'static str,
    /// Whether this is shmrpc or a baseline.
    pub baseline: bool,
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

/// One repetition's result for one case.
#[derive(Debug, Clone, Copy)]
pub enum Measurement {
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
}

/// The plan of one run: its cases and settings.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Cases in their base order.
    pub cases: Vec<Case>,
    /// Measured repetitions.
    pub reps: usize,
    /// Whether this is a quick run.
    pub quick: bool,
    /// Ring capacity for small streams.
    pub small_ring: usize,
    /// Ring capacity for 64 KiB streams.
    pub big_ring: usize,
    /// Copy-floor buffers.
    pub copy_slots: usize,
    /// Bound on the bytes of one `recv_batch`.
    pub read_bytes: usize,
}

impl Plan {
    /// The cases of issue 2's measurements.
    pub fn new(args: &BenchArgs) -> anyhow::Result<Self> {
        for (what, v) in [
            ("--small-ring", args.small_ring),
            ("--big-ring", args.big_ring),
        ] {
            if !shmrpc::ring::valid_capacity(v as u64) {
                bail!("{what} {v}: not a valid ring capacity (a power of two, at least 128)");
            }
        }
        if args.big_ring < 2 * shmrpc::ring::record_size(BIG) {
            bail!(
                "--big-ring {}: must hold at least two 64 KiB records",
                args.big_ring
            );
        }
        let copy_slots = args.copy_slots.unwrap_or(args.big_ring / BIG);
        if copy_slots == 0 || copy_slots > raw::MAX_COPY_SLOTS {
            bail!("--copy-slots must be in 1..={}", raw::MAX_COPY_SLOTS);
        }
        let div = if args.quick { 10 } else { 1 };
        let fast = (200_000 / div, 20_000 / div);
        let slow = (10_000 / div, 1_000 / div);
        let mut cases = Vec::new();
        let mut rtt = |id: &str, label: &str, mode, transport, (n, warm): (u64, u64)| {
            cases.push(Case {
                id: format!("rtt.{id}"),
                label: label.to_owned(),
                mode,
                baseline: !matches!(transport, Transport::Channel { .. }),
                workload: Workload::RoundTrip,
                size: chan::RTT_SIZE,
                transport,
                total: n + warm,
                warm,
            });
        };
        let ch = |chan, is_async| Transport::Channel { chan, is_async };
        rtt(
            "shmrpc.spin",
            "shmrpc channel, spin",
            "spin",
            ch(Chan::Spin, false),
            fast,
        );
        rtt(
            "floor.cache_line",
            "floor: one cache line ping-pong (spin)",
            "cache-line",
            Transport::CacheLine,
            fast,
        );
        rtt(
            "baseline.record_ring",
            "baseline: ring of 80 B records, a stamp in each (shmrpc's layout)",
            "record-ring",
            Transport::RecordRing { fence: false },
            fast,
        );
        rtt(
            "baseline.record_ring_fence",
            "baseline: the same + a SeqCst fence per publish and release",
            "record-ring-fence",
            Transport::RecordRing { fence: true },
            fast,
        );
        rtt(
            "shmrpc.spin_then_park",
            "shmrpc channel, spin-then-park",
            "spin-then-park",
            ch(Chan::SpinThenPark, false),
            fast,
        );
        rtt(
            "shmrpc.async",
            "shmrpc channel, async (tokio, spin-then-park)",
            "async",
            ch(Chan::Async, true),
            fast,
        );
        rtt(
            "shmrpc.park",
            "shmrpc channel, park",
            "park",
            ch(Chan::Park, false),
            slow,
        );
        rtt(
            "floor.futex",
            "floor: bare futex ping-pong (no spin)",
            "futex",
            Transport::Futex,
            slow,
        );
        rtt(
            "shmrpc.async_park",
            "shmrpc channel, async (tokio, park)",
            "async-park",
            ch(Chan::AsyncPark, true),
            slow,
        );
        let spsc_slots = |size: usize| args.small_ring / size;
        let streams: [(usize, u64); 3] = [(64, 10_000_000), (1024, 2_000_000), (BIG, 50_000)];
        for (size, n) in streams {
            let n = n / div;
            let (chan, base, base_label, base_mode, base_id) = if size == BIG {
                (
                    Chan::StreamBig,
                    Transport::Copy { slots: copy_slots },
                    format!(
                        "floor: bare copy, {copy_slots} × {} buffers with a flag each",
                        crate::stats::fmt_size(size)
                    ),
                    "copy-floor",
                    format!("floor.copy.{size}"),
                )
            } else {
                (
                    Chan::Stream,
                    Transport::Spsc {
                        slots: spsc_slots(size),
                    },
                    format!(
                        "baseline: batched SPSC, {} slots, index per {}",
                        spsc_slots(size),
                        raw::SPSC_BATCH
                    ),
                    "spsc-batched",
                    format!("baseline.spsc.{size}"),
                )
            };
            let ring = if size == BIG {
                args.big_ring
            } else {
                args.small_ring
            };
            cases.push(Case {
                id: format!("stream.shmrpc.{size}"),
                label: format!(
                    "shmrpc channel, spin, ring {}, notify per {}, read ≤ {}",
                    crate::stats::fmt_size(ring),
                    chan::STREAM_BATCH,
                    chan::read_max(size, args.read_bytes)
                ),
                mode: "spin",
                baseline: false,
                workload: Workload::Stream,
                size,
                transport: Transport::Channel {
                    chan,
                    is_async: false,
                },
                total: n,
                warm: 0,
            });
            cases.push(Case {
                id: format!("stream.{base_id}"),
                label: base_label,
                mode: base_mode,
                baseline: true,
                workload: Workload::Stream,
                size,
                transport: base,
                total: n,
                warm: 0,
            });
        }
        rpc_cases(&mut cases, args.quick);
        if !args.only.is_empty() {
            cases.retain(|c| args.only.iter().any(|o| selects(&c.id, o)));
            if cases.is_empty() {
                bail!("--only {:?} matches no case", args.only);
            }
        }
        Ok(Self {
            cases,
            reps: args.reps.unwrap_or(if args.quick { 3 } else { 7 }).max(1),
            quick: args.quick,
            small_ring: args.small_ring,
            big_ring: args.big_ring,
            copy_slots,
            read_bytes: args.read_bytes,
        })
    }

    fn channel_config(&self, c: Chan) -> ChannelConfig {
        let capacity = match c {
            Chan::Stream => self.small_ring,
            Chan::StreamBig => self.big_ring,
            _ => RTT_RING,
        };
        ChannelConfig::default()
            .with_capacity(capacity)
            .with_wait(wait_of(c))
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

/// Whether `--only` text `o` selects case `id`: `o` occurs in `id` at its start or right
/// after a `.` or `_`.
fn selects(id: &str, o: &str) -> bool {
    id.match_indices(o)
        .any(|(i, _)| i == 0 || matches!(id.as_bytes()[i - 1], b'.' | b'_'))
}

/// The RPC cases of issue 3, each beside its Unix-socket baseline.
fn rpc_cases(cases: &mut Vec<Case>, quick: bool) {
    let div = if quick { 10 } else { 1 };
    let mut add = |id: &str, label: String, mode, workload, transport, (n, warm): (u64, u64)| {
        cases.push(Case {
            id: format!("rpc.{id}"),
            label,
            mode,
            baseline: matches!(transport, Transport::Uds { .. }),
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
    for conns in [1, rpc::MANY] {
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
}

/// Everything the lead process holds during a run.
struct Lead {
    seg: Segment,
    eps: Vec<(Chan, Endpoint)>,
    peer: Peer,
    rt: tokio::runtime::Runtime,
    copy_slots: usize,
    read_bytes: usize,
    /// Name of the RPC servers the peer binds.
    rpc_name: String,
    /// Socket file of the Unix-socket baseline.
    uds: PathBuf,
}

impl Lead {
    fn ep(&mut self, c: Chan) -> anyhow::Result<&mut Endpoint> {
        find(&mut self.eps, c)
    }

    /// Runs one case: resets the baseline words, tells the peer, leads, collects.
    fn run_case(&mut self, case: &Case) -> anyhow::Result<Measurement> {
        if matches!(
            case.workload,
            Workload::Call | Workload::Pipelined | Workload::Reconnect
        ) {
            return self.run_rpc_case(case);
        }
        raw::reset(&self.seg, self.copy_slots)?;
        let (total, warm, size) = (case.total, case.warm, case.size);
        let cmd = match case.transport {
            Transport::Channel { chan, is_async } => match case.workload {
                Workload::RoundTrip => Cmd::ChanEcho {
                    chan,
                    is_async,
                    total,
                },
                Workload::Stream => Cmd::ChanSink {
                    chan,
                    size,
                    total,
                    read_max: chan::read_max(size, self.read_bytes),
                },
                Workload::Call | Workload::Pipelined | Workload::Reconnect => {
                    bail!("{}: an RPC workload on a channel", case.id)
                }
            },
            Transport::CacheLine => Cmd::LineEcho { total },
            Transport::Futex => Cmd::FutexEcho { total },
            Transport::RecordRing { fence } => Cmd::RecEcho { fence, total },
            Transport::Spsc { slots } => Cmd::SpscSink { size, slots, total },
            Transport::Copy { slots } => Cmd::CopySink { size, slots, total },
            Transport::Rpc { .. } | Transport::Uds { .. } | Transport::RpcRestart { .. } => {
                bail!("{}: an RPC transport in a channel workload", case.id)
            }
        };
        self.peer.send(&cmd.to_string())?;
        let m = match (case.transport, case.workload) {
            (Transport::Channel { chan, is_async }, Workload::RoundTrip) => {
                let mut samples = if is_async {
                    let ep = find(&mut self.eps, chan)?;
                    self.rt.block_on(chan::rtt_lead_async(ep, total, warm))?
                } else {
                    chan::rtt_lead(self.ep(chan)?, total, warm)?
                };
                Measurement::Latency(Latency::from_nanos(&mut samples))
            }
            (Transport::Channel { chan, .. }, Workload::Stream) => {
                let dt = chan::stream_lead(self.ep(chan)?, size, total)?;
                rate(dt, total, size)
            }
            (Transport::Channel { .. }, _) => {
                bail!("{}: an RPC workload on a channel", case.id)
            }
            (Transport::CacheLine, _) => Measurement::Latency(Latency::from_nanos(
                &mut raw::line_lead(&self.seg, total, warm)?,
            )),
            (Transport::RecordRing { fence }, _) => Measurement::Latency(Latency::from_nanos(
                &mut raw::rec_lead(&self.seg, total, warm, fence)?,
            )),
            (Transport::Futex, _) => Measurement::Latency(Latency::from_nanos(
                &mut raw::futex_lead(&self.seg, total, warm)?,
            )),
            (Transport::Spsc { slots }, _) => {
                rate(raw::spsc_lead(&self.seg, size, slots, total)?, total, size)
            }
            (Transport::Copy { slots }, _) => {
                rate(raw::copy_lead(&self.seg, size, slots, total)?, total, size)
            }
            (Transport::Rpc { .. } | Transport::Uds { .. } | Transport::RpcRestart { .. }, _) => {
                bail!("{}: an RPC transport in a channel workload", case.id)
            }
        };
        let answer = self.peer.expect("done", PEER_TIMEOUT)?;
        if answer != "0" {
            bail!("{}: the peer counted {answer} bad messages", case.id);
        }
        Ok(m)
    }
}

impl Lead {
    /// Runs one RPC case: the peer binds a server for it, the lead's clients call it, the
    /// peer stops it.
    fn run_rpc_case(&mut self, case: &Case) -> anyhow::Result<Measurement> {
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
            _ => bail!("{}: not an RPC transport", case.id),
        };
        self.peer.send(&cmd.to_string())?;
        self.peer.expect("ready", PEER_TIMEOUT)?;
        let (name, uds) = (self.rpc_name.clone(), self.uds.clone());
        let m = match (case.transport, case.workload) {
            (Transport::Rpc { park, conns }, w) => {
                let clients = self.rt.block_on(rpc::connect(&name, park, conns))?;
                let m = if w == Workload::Call {
                    let mut s = self.rt.block_on(rpc::rpc_unary(&clients[0], total, warm))?;
                    Measurement::Latency(Latency::from_nanos(&mut s))
                } else {
                    let (dt, n) = self.rt.block_on(rpc::rpc_pipelined(&clients, total))?;
                    rate(dt, n, rpc::SIZE)
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
                    let (dt, n) = self.rt.block_on(rpc::uds_pipelined(&uds, conns, total))?;
                    rate(dt, n, rpc::SIZE)
                }
            }
            (Transport::RpcRestart { early }, _) => {
                let client = self.rt.block_on(async {
                    let c = rpc::connect(&name, false, 1).await?.remove(0);
                    rpc::call_until_ok(&c).await?;
                    anyhow::Ok(c)
                })?;
                let mut samples = Vec::new();
                for _ in 0..total {
                    self.peer.send("restart")?;
                    self.peer.expect("down", PEER_TIMEOUT)?;
                    let (done, bound) = if early {
                        let done = self.rt.block_on(rpc::call_until_ok(&client))?;
                        (done, self.peer.expect("up", PEER_TIMEOUT)?)
                    } else {
                        let bound = self.peer.expect("up", PEER_TIMEOUT)?;
                        (self.rt.block_on(rpc::call_until_ok(&client))?, bound)
                    };
                    let bound: u64 = bound.parse().context("the peer's bind time")?;
                    samples.push(done.saturating_sub(bound));
                }
                self.rt.block_on(async move { drop(client) });
                Measurement::Latency(Latency::from_nanos(&mut samples))
            }
            _ => bail!("{}: not an RPC transport", case.id),
        };
        self.peer.send("rpc-stop")?;
        let answer = self.peer.expect("done", PEER_TIMEOUT)?;
        if answer != "0" {
            bail!("{}: the peer said {answer}", case.id);
        }
        Ok(m)
    }
}

/// The peer's side of an RPC case: runs the server until "rpc-stop", restarting it on
/// each "restart" line.
fn peer_rpc(ctl: &mut Control, prefix: &str, kind: rpc::ServerKind) -> anyhow::Result<u64> {
    let (name, uds) = (format!("{prefix}-rpc"), rpc::uds_path(prefix));
    let mut server = rpc::Running::start(kind, &name, &uds)?;
    ctl.send("ready")?;
    loop {
        match ctl.next()?.as_deref() {
            Some("rpc-stop") => break,
            Some("restart") => {
                server.stop()?;
                ctl.send("down")?;
                std::thread::sleep(rpc::RESTART_GAP);
                server = rpc::Running::start(kind, &name, &uds)?;
                ctl.send(&format!("up {}", server.bound_at))?;
            }
            Some(other) => bail!("unexpected {other:?} during an RPC case"),
            None => bail!("the control pipe closed during an RPC case"),
        }
    }
    server.stop()?;
    Ok(0)
}

/// The endpoint of channel `c`.
fn find(eps: &mut [(Chan, Endpoint)], c: Chan) -> anyhow::Result<&mut Endpoint> {
    eps.iter_mut()
        .find(|(k, _)| *k == c)
        .map(|(_, e)| e)
        .with_context(|| format!("no {} channel", c.as_str()))
}

fn rate(dt: Duration, msgs: u64, size: usize) -> Measurement {
    Measurement::Rate {
        secs: dt.as_secs_f64().max(1e-9),
        msgs,
        bytes: msgs * size as u64,
    }
}

/// `shmrpc bench`.
pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let plan = Plan::new(args)?;
    let machine = Machine::detect();
    let cpus = pin::two_cpus();
    if let Some((mine, _)) = cpus {
        pin::pin_to(mine)?;
    }
    let pid = std::process::id();
    let seg_name = format!("bench.{pid}");
    let data = plan
        .small_ring
        .max(plan.copy_slots * BIG)
        .max(2 * raw::REC_RING);
    let seg = Segment::create(&seg_name, raw::segment_size(data))
        .with_context(|| format!("creating the baseline segment {seg_name}"))?;
    raw::prefault(&seg)?;
    let seg_path = names::segment_path(&seg_name)?;

    // One listener per channel; the peer connects to each in order.
    let prefix = format!("bench-{pid}");
    let mut listeners = Vec::new();
    for c in Chan::ALL {
        let name = format!("{prefix}-{}", c.as_str());
        let l = Listener::bind(&name, plan.channel_config(c))
            .with_context(|| format!("listening on {name}"))?;
        listeners.push((c, l));
    }
    let sockets: Vec<PathBuf> = listeners.iter().map(|(_, l)| l.path().to_owned()).collect();
    let remove_sockets = || {
        for s in &sockets {
            let _ = std::fs::remove_file(s);
        }
    };

    let mut peer_args = vec![
        "bench-peer".to_owned(),
        "--seg".to_owned(),
        seg_name.clone(),
        "--prefix".to_owned(),
        prefix.clone(),
    ];
    if let Some((_, theirs)) = cpus {
        peer_args.extend(["--cpu".to_owned(), theirs.to_string()]);
    }
    let mut peer = match Peer::spawn(&peer_args) {
        Ok(p) => p,
        Err(e) => {
            drop(listeners);
            return Err(e);
        }
    };
    // accept() blocks; do it on a thread so that a peer that never connects is an error
    // after a timeout, not a hang. Each listener is dropped (its socket file removed) as
    // soon as its one connection is made.
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let r: Result<Vec<(Chan, Endpoint)>, _> = listeners
            .into_iter()
            .map(|(c, l)| l.accept().map(|ep| (c, ep)))
            .collect();
        let _ = tx.send(r);
    });
    let eps = match rx.recv_timeout(PEER_TIMEOUT) {
        Ok(Ok(eps)) => eps,
        Ok(Err(e)) => {
            remove_sockets();
            return Err(e).context("accepting the peer's connections");
        }
        Err(_) => {
            remove_sockets();
            bail!("the peer did not connect within {PEER_TIMEOUT:?}");
        }
    };
    peer.expect("ready", PEER_TIMEOUT)?;
    // The peer has mapped the segment: its name is no longer needed.
    Segment::unlink(&seg_name).context("unlinking the baseline segment")?;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let mut lead = Lead {
        seg,
        eps,
        peer,
        rt,
        copy_slots: plan.copy_slots,
        read_bytes: plan.read_bytes,
        rpc_name: format!("{prefix}-rpc"),
        uds: rpc::uds_path(&prefix),
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
    eprintln!("shmrpc bench: warm-up round ({} cases)", warmup.len());
    for c in &warmup {
        lead.run_case(c)
            .with_context(|| format!("{} (warm-up)", c.id))?;
    }
    let n = plan.cases.len();
    let mut results: Vec<Vec<Measurement>> = vec![Vec::new(); n];
    for rep in 0..plan.reps {
        let t = Instant::now();
        for k in 0..n {
            let i = (k + rep * 3) % n;
            let case = &plan.cases[i];
            let m = lead.run_case(case).with_context(|| case.id.clone())?;
            results[i].push(m);
        }
        eprintln!(
            "shmrpc bench: repetition {}/{} done in {:.1} s",
            rep + 1,
            plan.reps,
            t.elapsed().as_secs_f64()
        );
    }
    let elapsed = started.elapsed();

    lead.peer.send(&Cmd::Quit.to_string())?;
    let status = lead.peer.wait_exit(Duration::from_secs(10))?;
    if !status.success() {
        bail!("the peer process exited with {status}");
    }
    drop(lead);
    let uds = rpc::uds_path(&prefix);
    // Where the RPC servers' listener sockets were (as `channel::Listener` names them).
    let rpc_socket = names::runtime_dir()
        .map(|d| d.join(format!("{prefix}-rpc.sock")))
        .unwrap_or_default();
    let leftovers: Vec<String> = sockets
        .iter()
        .chain([&seg_path, &uds, &rpc_socket])
        .filter(|p| !p.as_os_str().is_empty() && p.exists())
        .map(|p| p.display().to_string())
        .collect();
    if !leftovers.is_empty() {
        bail!("left behind: {}", leftovers.join(", "));
    }

    let report = report::Report::new(&plan, &results, &machine, cpus, elapsed);
    print!("{}", report.table());
    println!(
        "cleanup: peer exited 0; baseline segment and {} socket files removed; total {:.1} s",
        sockets.len(),
        elapsed.as_secs_f64()
    );
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report.json())? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
        println!("JSON written to {}", path.display());
    }
    Ok(())
}

/// `shmrpc bench-peer`: the other side of every case.
pub fn peer(args: &PeerArgs) -> anyhow::Result<()> {
    if let Some(cpu) = args.cpu {
        pin::pin_to(cpu)?;
    }
    let seg = Segment::open(&args.seg).with_context(|| format!("opening {}", args.seg))?;
    let mut eps = Vec::new();
    for c in Chan::ALL {
        let name = format!("{}-{}", args.prefix, c.as_str());
        let cfg = ChannelConfig::default().with_wait(wait_of(c));
        let ep = channel::connect(&name, &cfg).with_context(|| format!("connecting to {name}"))?;
        eps.push((c, ep));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let mut ctl = Control::new();
    ctl.send("ready")?;
    while let Some(line) = ctl.next()? {
        let cmd: Cmd = line.parse()?;
        let bad = match cmd {
            Cmd::Quit => return Ok(()),
            Cmd::ChanEcho {
                chan,
                is_async: false,
                total,
            } => chan::rtt_echo(find(&mut eps, chan)?, total).map(|()| 0)?,
            Cmd::ChanEcho {
                chan,
                is_async: true,
                total,
            } => rt
                .block_on(chan::rtt_echo_async(find(&mut eps, chan)?, total))
                .map(|()| 0)?,
            Cmd::LineEcho { total } => raw::line_echo(&seg, total).map(|()| 0)?,
            Cmd::FutexEcho { total } => raw::futex_echo(&seg, total).map(|()| 0)?,
            Cmd::RecEcho { fence, total } => raw::rec_echo(&seg, total, fence).map(|()| 0)?,
            Cmd::ChanSink {
                chan,
                size,
                total,
                read_max,
            } => chan::stream_sink(find(&mut eps, chan)?, size, total, read_max)?,
            Cmd::SpscSink { size, slots, total } => raw::spsc_sink(&seg, size, slots, total)?,
            Cmd::CopySink { size, slots, total } => raw::copy_sink(&seg, size, slots, total)?,
            Cmd::RpcServe { kind } => peer_rpc(&mut ctl, &args.prefix, kind)?,
            Cmd::RpcRestart { .. } => {
                peer_rpc(&mut ctl, &args.prefix, rpc::ServerKind::SpinThenPark)?
            }
        };
        ctl.send(&format!("done {bad}"))?;
    }
    // End of file without "quit": the lead is gone.
    bail!("the control pipe closed before \"quit\"")
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let args = BenchArgs {
            quick: true,
            json: None,
            reps: None,
            only: vec!["rpc.".to_owned()],
            small_ring: 256 << 10,
            big_ring: 8 << 20,
            read_bytes: chan::STREAM_READ_BYTES,
            copy_slots: None,
        };
        let plan = Plan::new(&args).unwrap();
        assert_eq!(plan.cases.len(), 9);
        assert!(plan.cases.iter().all(|c| c.id.starts_with("rpc.")));
    }
}
