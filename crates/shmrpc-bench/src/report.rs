//! The table, the JSON and the chart of a run: figures (medians over repetitions) and
//! ratios (medians of the per-repetition ratios), with the targets of issues 2, 3 and 4.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};

use super::idle::IdleResult;
use super::peers::{self, PeersFile};
use super::svg::{chart, Kind, Panel, Series, Unit};
use super::{Case, Measurement, Plan, Transport, Workload, SIZES};
use crate::machine::Machine;
use crate::stats::{fmt_gbps, fmt_size, fmt_us, median, Latency};

/// Which figure of a case a ratio compares.
#[derive(Debug, Clone, Copy)]
enum Metric {
    P50,
    P99,
    MsgRate,
}

impl Metric {
    fn of(self, m: &Measurement) -> Option<f64> {
        match self {
            Metric::P50 => m.p50(),
            Metric::P99 => m.p99(),
            Metric::MsgRate => m.msgs_per_s(),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Metric::P50 => "p50",
            Metric::P99 => "p99",
            Metric::MsgRate => "msg/s",
        }
    }
}

/// A bound on a ratio.
#[derive(Debug, Clone, Copy)]
enum Bound {
    AtMost(f64),
    AtLeast(f64),
}

impl Bound {
    fn holds(self, r: f64) -> bool {
        match self {
            Bound::AtMost(b) => r <= b,
            Bound::AtLeast(b) => r >= b,
        }
    }

    fn text(self) -> String {
        match self {
            Bound::AtMost(b) => format!("≤ {b}×"),
            Bound::AtLeast(b) => format!("≥ {b}×"),
        }
    }
}

/// A ratio of one case's figure to another's; a target if it has a bound.
struct RatioSpec {
    id: &'static str,
    what: &'static str,
    num: &'static str,
    den: &'static str,
    metric: Metric,
    bound: Option<Bound>,
}

const RATIOS: &[RatioSpec] = &[
    RatioSpec {
        id: "spin_rtt_vs_cache_line",
        what: "spin round trip / cache-line ping-pong",
        num: "rtt.shmrpc.spin",
        den: "rtt.floor.cache_line",
        metric: Metric::P50,
        bound: Some(Bound::AtMost(2.0)),
    },
    RatioSpec {
        id: "park_rtt_vs_futex",
        what: "park round trip / bare futex ping-pong",
        num: "rtt.shmrpc.park",
        den: "rtt.floor.futex",
        metric: Metric::P50,
        bound: Some(Bound::AtMost(1.1)),
    },
    RatioSpec {
        id: "stream_64_vs_batched_spsc",
        what: "64 B stream / batched SPSC baseline",
        num: "stream.shmrpc.64",
        den: "stream.baseline.spsc.64",
        metric: Metric::MsgRate,
        bound: Some(Bound::AtLeast(0.5)),
    },
    RatioSpec {
        id: "stream_64k_vs_copy_floor",
        what: "64 KiB stream / bare copy floor",
        num: "stream.shmrpc.65536",
        den: "stream.floor.copy.65536",
        metric: Metric::MsgRate,
        bound: Some(Bound::AtLeast(0.8)),
    },
    RatioSpec {
        id: "spin_rtt_vs_cache_line_p99",
        what: "spin round trip / cache-line ping-pong",
        num: "rtt.shmrpc.spin",
        den: "rtt.floor.cache_line",
        metric: Metric::P99,
        bound: None,
    },
    RatioSpec {
        id: "record_ring_vs_cache_line",
        what: "record-ring baseline / cache-line ping-pong (layout cost)",
        num: "rtt.baseline.record_ring",
        den: "rtt.floor.cache_line",
        metric: Metric::P50,
        bound: None,
    },
    RatioSpec {
        id: "spin_rtt_vs_record_ring",
        what: "spin round trip / record-ring baseline (library cost)",
        num: "rtt.shmrpc.spin",
        den: "rtt.baseline.record_ring",
        metric: Metric::P50,
        bound: None,
    },
    RatioSpec {
        id: "record_ring_fence_vs_record_ring",
        what: "record ring with fences / without (fence cost)",
        num: "rtt.baseline.record_ring_fence",
        den: "rtt.baseline.record_ring",
        metric: Metric::P50,
        bound: None,
    },
    RatioSpec {
        id: "spin_then_park_rtt_vs_cache_line",
        what: "spin-then-park round trip / cache-line ping-pong",
        num: "rtt.shmrpc.spin_then_park",
        den: "rtt.floor.cache_line",
        metric: Metric::P50,
        bound: None,
    },
    RatioSpec {
        id: "async_rtt_vs_cache_line",
        what: "async (spin-then-park) round trip / cache-line ping-pong",
        num: "rtt.shmrpc.async",
        den: "rtt.floor.cache_line",
        metric: Metric::P50,
        bound: None,
    },
    RatioSpec {
        id: "park_rtt_vs_futex_p99",
        what: "park round trip / bare futex ping-pong",
        num: "rtt.shmrpc.park",
        den: "rtt.floor.futex",
        metric: Metric::P99,
        bound: None,
    },
    RatioSpec {
        id: "async_park_rtt_vs_futex",
        what: "async park round trip / bare futex ping-pong",
        num: "rtt.shmrpc.async_park",
        den: "rtt.floor.futex",
        metric: Metric::P50,
        bound: None,
    },
    RatioSpec {
        id: "stream_1k_vs_batched_spsc",
        what: "1 KiB stream / batched SPSC baseline",
        num: "stream.shmrpc.1024",
        den: "stream.baseline.spsc.1024",
        metric: Metric::MsgRate,
        bound: None,
    },
];

/// The RPC ratios of issue 3, kept apart from issue 2's list (their own section of the
/// table and their own JSON key), each against a Unix-socket baseline of the same run.
const RPC_RATIOS: &[RatioSpec] = &[
    RatioSpec {
        id: "rpc_unary_stp_vs_uds",
        what: "RPC unary call, spin-then-park / Unix socket",
        num: "rpc.unary.shmrpc.spin_then_park",
        den: "rpc.unary.baseline.uds",
        metric: Metric::P50,
        bound: Some(Bound::AtMost(0.1)),
    },
    RatioSpec {
        id: "rpc_unary_park_vs_uds",
        what: "RPC unary call, park / Unix socket",
        num: "rpc.unary.shmrpc.park",
        den: "rpc.unary.baseline.uds",
        metric: Metric::P50,
        bound: Some(Bound::AtMost(1.1)),
    },
    RatioSpec {
        id: "rpc_pipelined_1_vs_uds",
        what: "RPC pipelined, 1 connection / Unix socket",
        num: "rpc.pipelined.shmrpc.1",
        den: "rpc.pipelined.baseline.uds.1",
        metric: Metric::MsgRate,
        bound: Some(Bound::AtLeast(10.0)),
    },
    RatioSpec {
        id: "rpc_pipelined_16_vs_uds",
        what: "RPC pipelined, 16 connections / Unix socket",
        num: "rpc.pipelined.shmrpc.16",
        den: "rpc.pipelined.baseline.uds.16",
        metric: Metric::MsgRate,
        bound: Some(Bound::AtLeast(10.0)),
    },
    RatioSpec {
        id: "rpc_unary_stp_vs_uds_p99",
        what: "RPC unary call, spin-then-park / Unix socket",
        num: "rpc.unary.shmrpc.spin_then_park",
        den: "rpc.unary.baseline.uds",
        metric: Metric::P99,
        bound: None,
    },
    RatioSpec {
        id: "rpc_unary_park_vs_uds_p99",
        what: "RPC unary call, park / Unix socket",
        num: "rpc.unary.shmrpc.park",
        den: "rpc.unary.baseline.uds",
        metric: Metric::P99,
        bound: None,
    },
];

/// The targets of issue 4 that are ratios of two cases of this run (some are the same
/// ratios as issue 2's and 3's, listed again with issue 4's bound), then a few for
/// information.
const I4_RATIOS: &[RatioSpec] = &[
    RatioSpec {
        id: "stp_rtt_vs_cache_line",
        what: "64 B round trip, channel, spin-then-park / cache-line floor",
        num: "rtt.shmrpc.spin_then_park",
        den: "rtt.floor.cache_line",
        metric: Metric::P50,
        bound: Some(Bound::AtMost(2.0)),
    },
    RatioSpec {
        id: "rpc_unary_stp_vs_cache_line",
        what: "64 B RPC call, spin-then-park / cache-line floor",
        num: "rpc.unary.shmrpc.spin_then_park",
        den: "rtt.floor.cache_line",
        metric: Metric::P50,
        bound: Some(Bound::AtMost(3.0)),
    },
    RatioSpec {
        id: "park_rtt_vs_futex",
        what: "64 B round trip, channel, park / bare futex floor",
        num: "rtt.shmrpc.park",
        den: "rtt.floor.futex",
        metric: Metric::P50,
        bound: Some(Bound::AtMost(1.1)),
    },
    RatioSpec {
        id: "park_rtt_vs_uds",
        what: "64 B round trip, channel, park / Unix socket",
        num: "rtt.shmrpc.park",
        den: "rtt.baseline.uds.64",
        metric: Metric::P50,
        bound: Some(Bound::AtMost(1.1)),
    },
    RatioSpec {
        id: "rpc_unary_park_vs_uds",
        what: "64 B RPC call, park / tokio Unix socket, same frames",
        num: "rpc.unary.shmrpc.park",
        den: "rpc.unary.baseline.uds",
        metric: Metric::P50,
        bound: Some(Bound::AtMost(1.1)),
    },
    RatioSpec {
        id: "stream_64_vs_uds",
        what: "64 B stream / Unix socket",
        num: "stream.shmrpc.64",
        den: "stream.baseline.uds.64",
        metric: Metric::MsgRate,
        bound: Some(Bound::AtLeast(30.0)),
    },
    RatioSpec {
        id: "stream_64k_vs_copy_floor",
        what: "64 KiB stream / bare copy floor",
        num: "stream.shmrpc.65536",
        den: "stream.floor.copy.65536",
        metric: Metric::MsgRate,
        bound: Some(Bound::AtLeast(0.8)),
    },
    RatioSpec {
        id: "stream_64k_vs_uds",
        what: "64 KiB stream / Unix socket",
        num: "stream.shmrpc.65536",
        den: "stream.baseline.uds.65536",
        metric: Metric::MsgRate,
        bound: Some(Bound::AtLeast(2.5)),
    },
    RatioSpec {
        id: "stream_1m_vs_copy_floor",
        what: "1 MiB stream / bare copy floor",
        num: "stream.shmrpc.1048576",
        den: "stream.floor.copy.1048576",
        metric: Metric::MsgRate,
        bound: Some(Bound::AtLeast(0.8)),
    },
    RatioSpec {
        id: "stream_1m_vs_uds",
        what: "1 MiB stream / Unix socket",
        num: "stream.shmrpc.1048576",
        den: "stream.baseline.uds.1048576",
        metric: Metric::MsgRate,
        bound: Some(Bound::AtLeast(2.5)),
    },
    RatioSpec {
        id: "rpc_pipelined_1_vs_uds",
        what: "RPC pipelined, 1 connection / tokio Unix socket",
        num: "rpc.pipelined.shmrpc.1",
        den: "rpc.pipelined.baseline.uds.1",
        metric: Metric::MsgRate,
        bound: Some(Bound::AtLeast(10.0)),
    },
    RatioSpec {
        id: "rpc_pipelined_16_vs_uds",
        what: "RPC pipelined, 16 connections / tokio Unix socket",
        num: "rpc.pipelined.shmrpc.16",
        den: "rpc.pipelined.baseline.uds.16",
        metric: Metric::MsgRate,
        bound: Some(Bound::AtLeast(10.0)),
    },
    RatioSpec {
        id: "rpc_pipelined_256_vs_uds",
        what: "RPC pipelined, 256 connections / tokio Unix socket",
        num: "rpc.pipelined.shmrpc.256",
        den: "rpc.pipelined.baseline.uds.256",
        metric: Metric::MsgRate,
        bound: Some(Bound::AtLeast(10.0)),
    },
    RatioSpec {
        id: "stp_rtt_vs_cache_line_p99",
        what: "64 B round trip, channel, spin-then-park / cache-line floor",
        num: "rtt.shmrpc.spin_then_park",
        den: "rtt.floor.cache_line",
        metric: Metric::P99,
        bound: None,
    },
    RatioSpec {
        id: "spin_rtt_vs_copy_floor_1m",
        what: "1 MiB round trip, channel, spin / copy ping-pong floor",
        num: "rtt.shmrpc.spin.1048576",
        den: "rtt.floor.copy.1048576",
        metric: Metric::P50,
        bound: None,
    },
    RatioSpec {
        id: "async_park_rtt_vs_uds_tokio",
        what: "64 B round trip, channel, async park / tokio Unix socket",
        num: "rtt.shmrpc.async_park",
        den: "rtt.baseline.uds_tokio.64",
        metric: Metric::P50,
        bound: None,
    },
    RatioSpec {
        id: "park_rtt_vs_uds_p99",
        what: "64 B round trip, channel, park / Unix socket",
        num: "rtt.shmrpc.park",
        den: "rtt.baseline.uds.64",
        metric: Metric::P99,
        bound: None,
    },
];

/// Target of issue 3 for the restart case: the slowest reconnect, in milliseconds.
const RECONNECT_TARGET_MS: f64 = 100.0;
/// Target of issue 4 for an idle server: resident bytes below this (3 MB).
const IDLE_RSS_TARGET_BYTES: f64 = 3e6;
/// Target of issue 4 for an idle server, "no CPU": below this % of one core over the
/// idle interval (heartbeats are the only work; 1 % leaves room for the measurement's
/// own resolution and the guest's accounting).
const IDLE_CPU_TARGET_PERCENT: f64 = 1.0;

/// A computed ratio.
struct Ratio {
    spec: &'static RatioSpec,
    /// Median of the per-repetition ratios.
    value: f64,
    per_rep: Vec<f64>,
}

/// What a run knows besides its cases and their results.
pub struct RunInfo {
    /// The machine.
    pub machine: Machine,
    /// Pinning.
    pub cpus: Option<(usize, usize)>,
    /// Wall time of the rounds (and the idle case).
    pub elapsed: Duration,
    /// The 1000-idle-connections case, if it ran.
    pub idle: Option<IdleResult>,
    /// The peers file, if one was given.
    pub peers: Option<PeersFile>,
    /// Where the chart goes, if anywhere.
    pub svg: Option<PathBuf>,
    /// Socket files removed at the end (besides the baseline segment).
    pub sockets_removed: usize,
}

/// A verdict on one target of issue 4.
struct Verdict {
    id: String,
    target: String,
    value: String,
    /// `None`: not measured in this run.
    met: Option<bool>,
    detail: String,
}

/// The results of a run, ready to print or serialise.
pub struct Report {
    plan: Plan,
    results: Vec<Vec<Measurement>>,
    info: RunInfo,
    date: String,
    ratios: Vec<Ratio>,
    rpc_ratios: Vec<Ratio>,
    i4_ratios: Vec<Ratio>,
}

/// The ratios of `specs` whose two cases both ran.
fn ratios_of(specs: &'static [RatioSpec], plan: &Plan, results: &[Vec<Measurement>]) -> Vec<Ratio> {
    specs
        .iter()
        .filter_map(|spec| {
            let per_rep = per_rep_ratios(plan, results, spec.num, spec.den, spec.metric)?;
            Some(Ratio {
                spec,
                value: median(per_rep.iter().copied()),
                per_rep,
            })
        })
        .collect()
}

/// The per-round ratios of case `num` to case `den`, if both ran.
fn per_rep_ratios(
    plan: &Plan,
    results: &[Vec<Measurement>],
    num: &str,
    den: &str,
    metric: Metric,
) -> Option<Vec<f64>> {
    let find = |id: &str| plan.cases.iter().position(|c| c.id == id);
    let (n, d) = (find(num)?, find(den)?);
    Some(
        results[n]
            .iter()
            .zip(&results[d])
            .filter_map(|(a, b)| Some(metric.of(a)? / metric.of(b)?))
            .filter(|r| r.is_finite())
            .collect(),
    )
}

/// The case id of shmrpc's round trip in `mode` (as named in the JSON) at `size`.
fn shmrpc_rtt_id(mode: &str, size: usize) -> String {
    let word = mode.replace('-', "_");
    if size == 64 {
        format!("rtt.shmrpc.{word}")
    } else {
        format!("rtt.shmrpc.{word}.{size}")
    }
}

/// The floor a round trip of `size` is compared with in the table.
fn rtt_floor_id(size: usize) -> String {
    if size == 64 {
        "rtt.floor.cache_line".to_owned()
    } else {
        format!("rtt.floor.copy.{size}")
    }
}

/// The floor a stream of `size` is compared with in the table.
fn stream_floor_id(size: usize) -> String {
    if size >= 64 << 10 {
        format!("stream.floor.copy.{size}")
    } else {
        format!("stream.baseline.spsc.{size}")
    }
}

fn fmt_ratio(r: Option<f64>) -> String {
    match r {
        Some(r) if r >= 100.0 => format!("{r:.0}×"),
        Some(r) if r >= 10.0 => format!("{r:.1}×"),
        Some(r) => format!("{r:.2}×"),
        None => "—".to_owned(),
    }
}

/// Messages (or calls) per second, 3 significant digits.
fn fmt_rate(per_s: f64, unit: &str) -> String {
    let (v, p) = if per_s >= 1e6 {
        (per_s / 1e6, "M")
    } else if per_s >= 1e3 {
        (per_s / 1e3, "k")
    } else {
        (per_s, "")
    };
    let digits = if v >= 100.0 {
        0
    } else if v >= 10.0 {
        1
    } else {
        2
    };
    if p.is_empty() {
        format!("{v:.digits$} {unit}")
    } else {
        format!("{v:.digits$} {p} {unit}")
    }
}

fn fmt_ns(ns: Option<f64>) -> String {
    match ns {
        Some(v) if v >= 1e6 => format!("{:.2} ms", v / 1e6),
        Some(v) if v >= 10_000.0 => format!("{:.1} µs", v / 1000.0),
        Some(v) if v >= 1000.0 => format!("{:.2} µs", v / 1000.0),
        Some(v) => format!("{v:.0} ns"),
        None => "—".to_owned(),
    }
}

fn opt_json(v: Option<f64>) -> Value {
    v.filter(|x| x.is_finite())
        .map_or(Value::Null, |x| json!(x))
}

impl Report {
    /// Computes the ratios.
    pub(crate) fn new(plan: Plan, results: Vec<Vec<Measurement>>, info: RunInfo) -> Self {
        Self {
            ratios: ratios_of(RATIOS, &plan, &results),
            rpc_ratios: ratios_of(RPC_RATIOS, &plan, &results),
            i4_ratios: ratios_of(I4_RATIOS, &plan, &results),
            plan,
            results,
            info,
            date: utc_now(),
        }
    }

    fn cases(&self, w: Workload) -> impl Iterator<Item = (&Case, &[Measurement])> {
        self.plan
            .cases
            .iter()
            .zip(&self.results)
            .filter(move |(c, _)| c.workload == w)
            .map(|(c, r)| (c, r.as_slice()))
    }

    fn find(&self, id: &str) -> Option<(&Case, &[Measurement])> {
        let i = self.plan.cases.iter().position(|c| c.id == id)?;
        Some((&self.plan.cases[i], self.results[i].as_slice()))
    }

    /// The median of the per-round ratios of two cases, if both ran (and differ).
    fn ratio(&self, num: &str, den: &str, metric: Metric) -> Option<f64> {
        if num == den {
            return None;
        }
        let r = per_rep_ratios(&self.plan, &self.results, num, den, metric)?;
        (!r.is_empty()).then(|| median(r))
    }

    /// Prints the table and the cleanup summary on stdout.
    pub fn print_table(&self) {
        print!("{}", self.table());
        println!(
            "cleanup: peer exited 0; baseline segment and {} socket files removed; total {:.1} s",
            self.info.sockets_removed,
            self.info.elapsed.as_secs_f64()
        );
    }

    /// The human-readable table.
    pub fn table(&self) -> String {
        let mut s = String::new();
        for size in SIZES {
            self.rtt_table(&mut s, size);
        }
        self.stream_table(&mut s);
        if !self.ratios.is_empty() {
            let _ = writeln!(
                s,
                "Ratios (median of the per-repetition ratios; the ratios are the result)"
            );
            write_ratios(&mut s, &self.ratios);
            s.push('\n');
        }
        let w = self
            .plan
            .cases
            .iter()
            .filter(|c| {
                matches!(
                    c.workload,
                    Workload::Call | Workload::Pipelined | Workload::Reconnect
                )
            })
            .map(|c| c.label.chars().count())
            .max()
            .unwrap_or(0);
        self.rpc_table(&mut s, w);
        self.idle_table(&mut s);
        self.peers_table(&mut s);
        self.verdict_table(&mut s);
        s
    }

    /// Round trips of one size, with their ratios to the floor and the Unix socket.
    fn rtt_table(&self, s: &mut String, size: usize) {
        let cases: Vec<_> = self
            .cases(Workload::RoundTrip)
            .filter(|(c, _)| c.size == size)
            .collect();
        if cases.is_empty() {
            return;
        }
        let w = cases
            .iter()
            .map(|(c, _)| c.label.chars().count())
            .max()
            .unwrap_or(0);
        let floor = rtt_floor_id(size);
        let uds = format!("rtt.baseline.uds.{size}");
        let _ = writeln!(
            s,
            "{:<w2$} {:>10} {:>10} {:>10} {:>10} {:>8} {:>8}",
            format!("Round trip, {}, two processes", fmt_size(size)),
            "p50",
            "p99",
            "p99.9",
            "max",
            "÷floor",
            "÷UDS",
            w2 = w + 2
        );
        for (c, reps) in cases {
            let l = latency_of(reps);
            let _ = writeln!(
                s,
                "  {:<w$} {:>10} {:>10} {:>10} {:>10} {:>8} {:>8}",
                c.label,
                fmt_us(l.p50),
                fmt_us(l.p99),
                fmt_us(l.p999),
                fmt_us(l.max),
                fmt_ratio(self.ratio(&c.id, &floor, Metric::P50)),
                fmt_ratio(self.ratio(&c.id, &uds, Metric::P50)),
            );
        }
        let _ = writeln!(
            s,
            "  (÷: p50 over the p50 of {} and of the blocking Unix socket, median of the per-round ratios)",
            if size == 64 {
                "the cache-line floor"
            } else {
                "the copy ping-pong floor"
            }
        );
        s.push('\n');
    }

    fn stream_table(&self, s: &mut String) {
        let streams: Vec<_> = self.cases(Workload::Stream).collect();
        if streams.is_empty() {
            return;
        }
        let w = streams
            .iter()
            .map(|(c, _)| c.label.chars().count())
            .max()
            .unwrap_or(0);
        let _ = writeln!(
            s,
            "{:<w2$} {:>7} {:>14} {:>10} {:>9} {:>8} {:>8}",
            "One-way stream, two processes",
            "size",
            "msg/s",
            "GB/s",
            "CPU/msg",
            "÷floor",
            "÷UDS",
            w2 = w + 2
        );
        let mut last = 0;
        for (c, reps) in streams {
            if last != 0 && c.size != last {
                s.push('\n');
            }
            last = c.size;
            let mps = median(reps.iter().filter_map(Measurement::msgs_per_s));
            let bps = median(reps.iter().filter_map(Measurement::bytes_per_s));
            let cpu: Vec<f64> = reps.iter().filter_map(Measurement::cpu_per_msg).collect();
            let _ = writeln!(
                s,
                "  {:<w$} {:>7} {:>14} {:>10} {:>9} {:>8} {:>8}",
                c.label,
                fmt_size(c.size),
                fmt_rate(mps, "msg/s"),
                fmt_gbps(bps),
                fmt_ns((!cpu.is_empty()).then(|| median(cpu))),
                fmt_ratio(self.ratio(&c.id, &stream_floor_id(c.size), Metric::MsgRate)),
                fmt_ratio(self.ratio(
                    &c.id,
                    &format!("stream.baseline.uds.{}", c.size),
                    Metric::MsgRate
                )),
            );
        }
        let _ = writeln!(
            s,
            "  (CPU/msg: CPU time of both processes over the interval, per message; ÷: msg/s over the batched SPSC (64 B, 1 KiB) or bare copy (64 KiB, 1 MiB) floor and over the blocking Unix socket)"
        );
        s.push('\n');
    }

    /// A table of latency percentiles for the cases of one workload.
    fn latency_table(&self, s: &mut String, w: usize, workload: Workload, title: &str) {
        let cases: Vec<_> = self.cases(workload).collect();
        if cases.is_empty() {
            return;
        }
        let _ = writeln!(
            s,
            "{:<w2$} {:>10} {:>10} {:>10} {:>10}",
            title,
            "p50",
            "p99",
            "p99.9",
            "max",
            w2 = w + 2
        );
        for (c, reps) in cases {
            let l = latency_of(reps);
            let _ = writeln!(
                s,
                "  {:<w$} {:>10} {:>10} {:>10} {:>10}",
                c.label,
                fmt_us(l.p50),
                fmt_us(l.p99),
                fmt_us(l.p999),
                fmt_us(l.max)
            );
        }
        s.push('\n');
    }

    /// The section of the RPC cases (issues 3 and 4).
    fn rpc_table(&self, s: &mut String, w: usize) {
        self.latency_table(
            s,
            w,
            Workload::Call,
            "RPC (issue 3): unary call, 64 B, two processes",
        );
        let piped: Vec<_> = self.cases(Workload::Pipelined).collect();
        if !piped.is_empty() {
            let _ = writeln!(
                s,
                "{:<w2$} {:>16} {:>10} {:>8}",
                "RPC (issue 3): pipelined 64 B calls, two processes",
                "calls/s",
                "CPU/call",
                "÷UDS",
                w2 = w + 2
            );
            for (c, reps) in piped {
                let cps = median(reps.iter().filter_map(Measurement::msgs_per_s));
                let cpu: Vec<f64> = reps.iter().filter_map(Measurement::cpu_per_msg).collect();
                let conns = match c.transport {
                    Transport::Rpc { conns, .. } | Transport::Uds { conns } => conns,
                    _ => 0,
                };
                let _ = writeln!(
                    s,
                    "  {:<w$} {:>16} {:>10} {:>8}",
                    c.label,
                    fmt_rate(cps, "calls/s"),
                    fmt_ns((!cpu.is_empty()).then(|| median(cpu))),
                    fmt_ratio(self.ratio(
                        &c.id,
                        &format!("rpc.pipelined.baseline.uds.{conns}"),
                        Metric::MsgRate
                    )),
                );
            }
            s.push('\n');
        }
        let restarts: Vec<_> = self.cases(Workload::Reconnect).collect();
        if !restarts.is_empty() {
            let _ = writeln!(s, "RPC (issue 3): a server restart");
        }
        for (c, reps) in &restarts {
            let l = latency_of(reps);
            let worst = worst_ms(reps);
            let _ = writeln!(
                s,
                "  {}\n    median {:.1} ms, slowest {:.1} ms over {} restarts; target < {} ms (slowest) {}",
                c.label,
                l.p50 / 1000.0,
                worst,
                l.samples,
                RECONNECT_TARGET_MS,
                if worst < RECONNECT_TARGET_MS { "MET" } else { "NOT MET" }
            );
        }
        if !restarts.is_empty() {
            s.push('\n');
        }
        if !self.rpc_ratios.is_empty() {
            let _ = writeln!(
                s,
                "RPC ratios, issue 3 (median of the per-repetition ratios)"
            );
            write_ratios(s, &self.rpc_ratios);
            s.push('\n');
        }
    }

    fn idle_table(&self, s: &mut String) {
        let Some(r) = self.info.idle.as_ref() else {
            return;
        };
        let mb = |kib: u64| kib as f64 * 1024.0 / 1e6;
        let _ = writeln!(
            s,
            "RPC (issue 4): {} idle connections, the server in a process of its own",
            r.connections
        );
        let _ = writeln!(
            s,
            "  server resident memory   {:.2} MB with {} connections ({:.2} MB with none; {:.1} KiB per connection)",
            mb(r.rss.total),
            r.connections,
            mb(r.rss_empty.total),
            r.per_conn_kib()
        );
        let _ = writeln!(
            s,
            "    of which               anon {:.2} MB, file {:.2} MB, shared memory {:.2} MB",
            mb(r.rss.anon),
            mb(r.rss.file),
            mb(r.rss.shmem)
        );
        let _ = writeln!(
            s,
            "  server CPU, idle         {:.2} % of one core over {:.1} s (schedstat; utime+stime: {:.1} %, {} ticks/s)",
            r.cpu_percent,
            r.interval.as_secs_f64(),
            r.cpu_percent_stat,
            r.ticks_per_s
        );
        let _ = writeln!(
            s,
            "  server descriptors       {} ({} with none); clients' process CPU {:.2} %; connecting took {:.2} s",
            r.fds, r.fds_empty, r.client_cpu_percent, r.connect_s
        );
        s.push('\n');
    }

    fn peers_table(&self, s: &mut String) {
        let Some(p) = self.info.peers.as_ref() else {
            return;
        };
        let _ = writeln!(
            s,
            "Peers (from {}: measured {}, on {}, by `{}`; another run, so compare with care)",
            p.path.display(),
            p.date,
            p.machine,
            p.command
        );
        let w = p
            .cases
            .iter()
            .map(|c| c.system.chars().count() + c.mode.chars().count() + 2)
            .max()
            .unwrap_or(0);
        for c in &p.cases {
            let who = format!("{}, {}", c.system, c.mode);
            let figures = if let Some(na) = &c.na {
                format!("n/a: {na}")
            } else if c.stream {
                format!(
                    "{:>14} {:>10}",
                    c.msgs_per_s
                        .map_or("—".to_owned(), |m| fmt_rate(m, "msg/s")),
                    c.bytes_per_s.map_or("—".to_owned(), fmt_gbps)
                )
            } else {
                format!(
                    "p50 {:>9}  p99 {:>9}  p99.9 {:>9}  max {:>9}",
                    fmt_ns(c.p50_ns),
                    fmt_ns(c.p99_ns),
                    fmt_ns(c.p999_ns),
                    fmt_ns(c.max_ns)
                )
            };
            let _ = writeln!(
                s,
                "  {:<w$} {:<6} {:>7}  {}",
                who,
                if c.stream { "stream" } else { "rtt" },
                fmt_size(c.size),
                figures
            );
        }
        if !p.ratios.is_empty() {
            let _ = writeln!(s, "  ratios in that file (median of its per-round ratios):");
            for r in &p.ratios {
                let _ = writeln!(s, "    {} / {}   {:.2}×", r.case, r.baseline, r.median);
            }
        }
        s.push('\n');
    }

    /// Every target of issue 4: met, not met (with the figures), or not measured.
    fn verdicts(&self) -> Vec<Verdict> {
        let mut v = Vec::new();
        for spec in I4_RATIOS.iter().filter(|s| s.bound.is_some()) {
            let bound = spec.bound.expect("filtered");
            let r = self.i4_ratios.iter().find(|r| r.spec.id == spec.id);
            let figures = |id: &str| -> String {
                let Some((_, reps)) = self.find(id) else {
                    return "—".to_owned();
                };
                match spec.metric {
                    Metric::P50 => fmt_us(latency_of(reps).p50),
                    Metric::P99 => fmt_us(latency_of(reps).p99),
                    Metric::MsgRate => fmt_rate(
                        median(reps.iter().filter_map(Measurement::msgs_per_s)),
                        if id.starts_with("rpc.") {
                            "calls/s"
                        } else {
                            "msg/s"
                        },
                    ),
                }
            };
            v.push(Verdict {
                id: spec.id.to_owned(),
                target: format!("{} {} {}", spec.what, spec.metric.name(), bound.text()),
                value: r.map_or("—".to_owned(), |r| format!("{:.2}×", r.value)),
                met: r.map(|r| bound.holds(r.value)),
                detail: match r {
                    Some(_) => format!("{} vs {}", figures(spec.num), figures(spec.den)),
                    None => "not measured (a case did not run)".to_owned(),
                },
            });
        }
        v.extend(self.peer_verdicts());
        if let Some(r) = self.info.idle.as_ref() {
            // "An idle server" is read as one with no connection: the 1000 connections'
            // figure is reported beside it (their rings alone are ~12 KiB each).
            let bytes = r.rss_empty.total as f64 * 1024.0;
            v.push(Verdict {
                id: "idle_server_rss".into(),
                target: "idle server (no connection) < 3 MB resident".to_owned(),
                value: format!("{:.2} MB", bytes / 1e6),
                met: Some(bytes < IDLE_RSS_TARGET_BYTES),
                detail: format!(
                    "VmRSS of this binary as the server; {:.2} MB with {} idle connections, \
                     {:.1} KiB per connection",
                    r.rss.total as f64 * 1024.0 / 1e6,
                    r.connections,
                    r.per_conn_kib()
                ),
            });
            v.push(Verdict {
                id: "idle_server_cpu".into(),
                target: format!(
                    "idle server: no CPU when no message moves (< {IDLE_CPU_TARGET_PERCENT} % of a core)"
                ),
                value: format!("{:.2} %", r.cpu_percent),
                met: Some(r.cpu_percent < IDLE_CPU_TARGET_PERCENT),
                detail: format!(
                    "over {:.1} s with {} connections (heartbeats only)",
                    r.interval.as_secs_f64(),
                    r.connections
                ),
            });
        } else {
            for (id, target) in [
                ("idle_server_rss", "idle server < 3 MB resident"),
                (
                    "idle_server_cpu",
                    "idle server: no CPU when no message moves",
                ),
            ] {
                v.push(Verdict {
                    id: id.into(),
                    target: target.into(),
                    value: "—".into(),
                    met: None,
                    detail: "the idle case did not run".into(),
                });
            }
        }
        v
    }

    /// "Lower p50 AND p99 than iceoryx2, shmipc and ipc-channel in every mode where they
    /// have a counterpart", one verdict per peer system.
    fn peer_verdicts(&self) -> Vec<Verdict> {
        let target = "round trip: lower p50 and p99 than the peer in every mode with a counterpart";
        let Some(p) = self.info.peers.as_ref() else {
            return vec![Verdict {
                id: "rtt_below_peers".into(),
                target: target.into(),
                value: "—".into(),
                met: None,
                detail: "no --peers file".into(),
            }];
        };
        let mut systems: Vec<&str> = p.cases.iter().map(|c| c.system.as_str()).collect();
        systems.sort_unstable();
        systems.dedup();
        // The peers file measures shmrpc and a Unix socket too, as its own baselines: they
        // are not peers.
        systems.retain(|s| !matches!(*s, "shmrpc" | "unix-socket"));
        let mut out = Vec::new();
        for sys in systems {
            let (mut compared, mut worse) = (0, Vec::new());
            for c in p
                .cases
                .iter()
                .filter(|c| c.system == sys && !c.stream && c.na.is_none())
            {
                // A library's "default" mode that sleeps in the kernel until woken
                // (ipc-channel's, shmipc's) counts as park.
                let Some(mode) =
                    peers::counterpart(&c.mode).or_else(|| (c.mode == "default").then_some("park"))
                else {
                    continue;
                };
                let Some((_, reps)) = self.find(&shmrpc_rtt_id(mode, c.size)) else {
                    continue;
                };
                let (Some(p50), Some(p99)) = (c.p50_ns, c.p99_ns) else {
                    continue;
                };
                let l = latency_of(reps);
                compared += 1;
                if !(l.p50 * 1000.0 < p50 && l.p99 * 1000.0 < p99) {
                    worse.push(format!(
                        "{} {} vs shmrpc {mode}: p50 {} vs {}, p99 {} vs {}",
                        c.mode,
                        fmt_size(c.size),
                        fmt_ns(Some(p50)),
                        fmt_us(l.p50),
                        fmt_ns(Some(p99)),
                        fmt_us(l.p99)
                    ));
                }
            }
            out.push(Verdict {
                id: format!("rtt_below_{}", sys.replace(['-', ' '], "_")),
                target: format!("{target}: {sys}"),
                value: format!("{} of {compared} lower", compared - worse.len()),
                met: (compared > 0).then_some(worse.is_empty()),
                detail: if compared == 0 {
                    "no round trip of it has a counterpart in this run".to_owned()
                } else if worse.is_empty() {
                    format!("peers file of {}", p.date)
                } else {
                    format!("not lower: {}", worse.join("; "))
                },
            });
        }
        out
    }

    fn verdict_table(&self, s: &mut String) {
        let _ = writeln!(
            s,
            "Issue 4 targets (ratios: median of the per-repetition ratios of this run)"
        );
        let v = self.verdicts();
        let w = v
            .iter()
            .map(|x| x.target.chars().count())
            .max()
            .unwrap_or(0);
        for x in &v {
            let verdict = match x.met {
                Some(true) => "MET",
                Some(false) => "NOT MET",
                None => "NOT MEASURED",
            };
            let _ = writeln!(
                s,
                "  {:<w$} {:>10}  {:<12}  {}",
                x.target, x.value, verdict, x.detail
            );
        }
        let info: Vec<&Ratio> = self
            .i4_ratios
            .iter()
            .filter(|r| r.spec.bound.is_none())
            .collect();
        if !info.is_empty() {
            let _ = writeln!(s, "  for information:");
            let rw = info
                .iter()
                .map(|r| r.spec.what.chars().count())
                .max()
                .unwrap_or(0);
            for r in info {
                let _ = writeln!(
                    s,
                    "    {:<rw$} {:>5} {:>7.2}×",
                    r.spec.what,
                    r.spec.metric.name(),
                    r.value
                );
            }
        }
        s.push('\n');
    }

    /// Our round-trip and stream cases in the peers file's schema.
    fn cases_json(&self) -> Vec<Value> {
        self.plan
            .cases
            .iter()
            .zip(&self.results)
            .filter(|(c, _)| matches!(c.workload, Workload::RoundTrip | Workload::Stream))
            .map(|(c, reps)| {
                let rtt = c.workload == Workload::RoundTrip;
                let l = latency_of(reps);
                let ns = |v: f64| if rtt { json!(v * 1000.0) } else { Value::Null };
                let rate = |f: fn(&Measurement) -> Option<f64>| {
                    if rtt {
                        Value::Null
                    } else {
                        json!(median(reps.iter().filter_map(f)))
                    }
                };
                json!({
                    "id": c.id,
                    "system": c.system,
                    "mode": c.mode,
                    "workload": if rtt { "rtt" } else { "stream" },
                    "size": c.size,
                    "p50_ns": ns(l.p50),
                    "p99_ns": ns(l.p99),
                    "p999_ns": ns(l.p999),
                    "max_ns": ns(l.max),
                    "msgs_per_s": rate(Measurement::msgs_per_s),
                    "bytes_per_s": rate(Measurement::bytes_per_s),
                    "rounds": reps.len(),
                    "na": Value::Null,
                })
            })
            .collect()
    }

    /// Ratios of case `c` to the floor and to every byte-stream baseline of its size
    /// (medians of the per-round ratios; `null` where a case did not run).
    fn vs_all(&self, c: &Case, workload: &str, floor: &str, metric: Metric) -> Value {
        let mut m = serde_json::Map::new();
        m.insert("floor".into(), opt_json(self.ratio(&c.id, floor, metric)));
        for l in super::link::Link::ALL {
            let id = format!("{workload}.baseline.{}.{}", l.as_str(), c.size);
            m.insert(l.as_str().into(), opt_json(self.ratio(&c.id, &id, metric)));
        }
        Value::Object(m)
    }

    fn cpu_json(reps: &[Measurement]) -> Value {
        let all: Vec<f64> = reps.iter().filter_map(Measurement::cpu_per_msg).collect();
        if all.is_empty() {
            return json!({"cpu_ns_per_msg": null});
        }
        let parts: Vec<(f64, f64)> = reps.iter().filter_map(Measurement::cpu_parts).collect();
        json!({
            "cpu_ns_per_msg": median(all.iter().copied()),
            "lead_cpu_ns_per_msg": median(parts.iter().map(|p| p.0)),
            "peer_cpu_ns_per_msg": median(parts.iter().map(|p| p.1)),
            "per_rep_cpu_ns_per_msg": all,
        })
    }

    /// The JSON document.
    pub fn to_json(&self) -> Value {
        let rtt: Vec<Value> = self
            .cases(Workload::RoundTrip)
            .map(|(c, reps)| {
                let l = latency_of(reps);
                let per = |f: fn(&Measurement) -> Option<f64>| -> Vec<f64> {
                    reps.iter().filter_map(f).collect()
                };
                json!({
                    "id": c.id,
                    "label": c.label,
                    "transport": if c.baseline { "baseline" } else { "shmrpc" },
                    "system": c.system,
                    "series": c.series,
                    "mode": c.mode,
                    "size": c.size,
                    "p50_us": l.p50,
                    "p99_us": l.p99,
                    "p999_us": l.p999,
                    "max_us": l.max,
                    "samples": l.samples,
                    "per_rep_p50_us": per(Measurement::p50),
                    "per_rep_p99_us": per(Measurement::p99),
                    "p50_vs_floor": opt_json(self.ratio(&c.id, &rtt_floor_id(c.size), Metric::P50)),
                    "p50_vs_uds": opt_json(self.ratio(&c.id, &format!("rtt.baseline.uds.{}", c.size), Metric::P50)),
                    "p50_vs": self.vs_all(c, "rtt", &rtt_floor_id(c.size), Metric::P50),
                    "p99_vs": self.vs_all(c, "rtt", &rtt_floor_id(c.size), Metric::P99),
                })
            })
            .collect();
        let streams: Vec<Value> = self
            .cases(Workload::Stream)
            .map(|(c, reps)| {
                let mut v = json!({
                    "id": c.id,
                    "label": c.label,
                    "transport": if c.baseline { "baseline" } else { "shmrpc" },
                    "system": c.system,
                    "series": c.series,
                    "mode": c.mode,
                    "size": c.size,
                    "messages_per_rep": c.total,
                    "msgs_per_s": median(reps.iter().filter_map(Measurement::msgs_per_s)),
                    "gb_per_s": median(reps.iter().filter_map(Measurement::bytes_per_s)) / 1e9,
                    "per_rep_msgs_per_s": reps.iter().filter_map(Measurement::msgs_per_s).collect::<Vec<_>>(),
                    "vs_floor": opt_json(self.ratio(&c.id, &stream_floor_id(c.size), Metric::MsgRate)),
                    "vs_uds": opt_json(self.ratio(&c.id, &format!("stream.baseline.uds.{}", c.size), Metric::MsgRate)),
                    "msgs_per_s_vs": self.vs_all(c, "stream", &stream_floor_id(c.size), Metric::MsgRate),
                });
                merge(&mut v, Self::cpu_json(reps));
                v
            })
            .collect();
        let targets: Vec<Value> = self
            .verdicts()
            .into_iter()
            .map(|x| {
                json!({
                    "id": x.id,
                    "target": x.target,
                    "value": x.value,
                    "met": x.met,
                    "verdict": match x.met { Some(true) => "MET", Some(false) => "NOT MET", None => "NOT MEASURED" },
                    "detail": x.detail,
                })
            })
            .collect();
        json!({
            "schema": "shmrpc-bench/1",
            "date_utc": self.date,
            "command": std::env::args().collect::<Vec<_>>().join(" "),
            "quick": self.plan.quick,
            "reps": self.plan.reps,
            "elapsed_s": self.info.elapsed.as_secs_f64(),
            "machine": self.info.machine.to_json(),
            "pinned": self.info.cpus.map(|(a, b)| json!({"lead": a, "peer": b})),
            "config": {
                "small_ring": self.plan.small_ring,
                "big_ring": self.plan.big_ring,
                "rtt_ring": super::RTT_RING,
                "rtt_big_ring": self.plan.rtt_big_ring,
                "copy_slots": self.plan.copy_slots,
                "stream_batch": super::chan::STREAM_BATCH,
                "stream_read_max": super::chan::STREAM_READ_MAX,
                "stream_read_bytes": self.plan.read_bytes,
                "spsc_batch": super::raw::SPSC_BATCH,
                "rpc_spin_then_park": format!("{:?}", super::rpc::wait_of(false)),
                "sizes": SIZES,
                "link_read_buffer": super::link::READ_BUF,
                "idle_interval_s": self.plan.idle_interval.as_secs_f64(),
            },
            "round_trip": rtt,
            "stream": streams,
            "ratios": ratios_json(&self.ratios),
            "rpc": self.rpc_json(),
            "idle_connections": self.info.idle.as_ref().map(IdleResult::to_json),
            "issue4": {
                "ratios": ratios_json(&self.i4_ratios),
                "targets": targets,
            },
            "cases": self.cases_json(),
            "peers": self.info.peers.as_ref().map(PeersFile::to_json),
            "svg": self.info.svg.as_ref().map(|p| p.display().to_string()),
        })
    }

    /// The RPC part of the JSON document (issues 3 and 4).
    fn rpc_json(&self) -> Value {
        let kind = |c: &Case| {
            if c.baseline {
                "baseline-uds"
            } else {
                "shmrpc-rpc"
            }
        };
        let unary: Vec<Value> = self
            .cases(Workload::Call)
            .map(|(c, reps)| {
                let l = latency_of(reps);
                json!({
                    "id": c.id,
                    "label": c.label,
                    "transport": kind(c),
                    "mode": c.mode,
                    "size": c.size,
                    "p50_us": l.p50,
                    "p99_us": l.p99,
                    "p999_us": l.p999,
                    "max_us": l.max,
                    "samples": l.samples,
                    "per_rep_p50_us": reps.iter().filter_map(Measurement::p50).collect::<Vec<_>>(),
                })
            })
            .collect();
        let pipelined: Vec<Value> = self
            .cases(Workload::Pipelined)
            .map(|(c, reps)| {
                let conns = match c.transport {
                    Transport::Rpc { conns, .. } | Transport::Uds { conns } => conns,
                    _ => 0,
                };
                let mut v = json!({
                    "id": c.id,
                    "label": c.label,
                    "transport": kind(c),
                    "mode": c.mode,
                    "size": c.size,
                    "connections": conns,
                    "outstanding_per_connection": super::rpc::PIPELINE,
                    "calls_per_s": median(reps.iter().filter_map(Measurement::msgs_per_s)),
                    "per_rep_calls_per_s": reps.iter().filter_map(Measurement::msgs_per_s).collect::<Vec<_>>(),
                });
                merge(&mut v, Self::cpu_json(reps));
                v
            })
            .collect();
        let reconnect: Vec<Value> = self
            .cases(Workload::Reconnect)
            .map(|(c, reps)| {
                let l = latency_of(reps);
                let worst = worst_ms(reps);
                json!({
                    "id": c.id,
                    "label": c.label,
                    "down_ms": super::rpc::RESTART_GAP.as_millis() as u64,
                    "median_ms": l.p50 / 1000.0,
                    "slowest_ms": worst,
                    "restarts": l.samples,
                    "target_ms": RECONNECT_TARGET_MS,
                    "met": worst < RECONNECT_TARGET_MS,
                })
            })
            .collect();
        json!({
            "unary": unary,
            "pipelined": pipelined,
            "reconnect": reconnect,
            "ratios": ratios_json(&self.rpc_ratios),
        })
    }

    /// The chart, an SVG document.
    pub fn to_svg(&self) -> String {
        let mut rtt50: Vec<Series> = Vec::new();
        let mut rtt99: Vec<Series> = Vec::new();
        let mut gbps: Vec<Series> = Vec::new();
        let mut mps: Vec<Series> = Vec::new();
        let add = |list: &mut Vec<Series>, name: &str, kind: Kind, x: f64, y: f64| match list
            .iter_mut()
            .find(|s| s.name == name)
        {
            Some(s) => s.points.push((x, y)),
            None => list.push(Series {
                name: name.to_owned(),
                kind,
                points: vec![(x, y)],
            }),
        };
        let kind_of = |c: &Case| match c.system {
            "shmrpc" => Kind::Shmrpc,
            "floor" => Kind::Floor,
            _ if c.series.as_deref().is_some_and(|s| s.starts_with("floor")) => Kind::Floor,
            _ => Kind::Baseline,
        };
        for (c, reps) in self.plan.cases.iter().zip(&self.results) {
            let Some(name) = &c.series else { continue };
            let x = c.size as f64;
            match c.workload {
                Workload::RoundTrip => {
                    let l = latency_of(reps);
                    add(&mut rtt50, name, kind_of(c), x, l.p50);
                    add(&mut rtt99, name, kind_of(c), x, l.p99);
                }
                Workload::Stream => {
                    add(
                        &mut gbps,
                        name,
                        kind_of(c),
                        x,
                        median(reps.iter().filter_map(Measurement::bytes_per_s)) / 1e9,
                    );
                    add(
                        &mut mps,
                        name,
                        kind_of(c),
                        x,
                        median(reps.iter().filter_map(Measurement::msgs_per_s)),
                    );
                }
                _ => {}
            }
        }
        if let Some(p) = self.info.peers.as_ref() {
            for c in p.cases.iter().filter(|c| c.na.is_none()) {
                let name = p.series(c);
                let x = c.size as f64;
                if c.stream {
                    if let Some(b) = c.bytes_per_s {
                        add(&mut gbps, &name, Kind::Peer, x, b / 1e9);
                    }
                    if let Some(m) = c.msgs_per_s {
                        add(&mut mps, &name, Kind::Peer, x, m);
                    }
                } else {
                    if let Some(v) = c.p50_ns {
                        add(&mut rtt50, &name, Kind::Peer, x, v / 1000.0);
                    }
                    if let Some(v) = c.p99_ns {
                        add(&mut rtt99, &name, Kind::Peer, x, v / 1000.0);
                    }
                }
            }
        }
        let panels = vec![
            Panel {
                title: "Round trip, median (p50)".into(),
                y_label: "round-trip time (log scale)".into(),
                unit: Unit::Micros,
                series: rtt50,
            },
            Panel {
                title: "Round trip, 99th percentile (p99)".into(),
                y_label: "round-trip time (log scale)".into(),
                unit: Unit::Micros,
                series: rtt99,
            },
            Panel {
                title: "One-way stream, throughput".into(),
                y_label: "payload GB/s (log scale)".into(),
                unit: Unit::GBps,
                series: gbps,
            },
            Panel {
                title: "One-way stream, messages per second".into(),
                y_label: "messages/s (log scale)".into(),
                unit: Unit::PerSec,
                series: mps,
            },
        ];
        let m = &self.info.machine;
        let title = format!("shmrpc bench — {} UTC", self.date);
        let subtitle = format!(
            "{} CPUs, {}, Linux {}; {}; two processes, medians of {} interleaved rounds{}",
            m.nproc,
            m.cpu_model,
            m.kernel,
            match self.info.cpus {
                Some((a, b)) => format!("pinned to CPUs {a} and {b}"),
                None => "not pinned".to_owned(),
            },
            self.plan.reps,
            if self.plan.quick {
                " (--quick: rough figures)"
            } else {
                ""
            }
        );
        let mut notes = vec![
            format!(
                "Command: {}",
                std::env::args().collect::<Vec<_>>().join(" ")
            ),
            "Round trip: a message sent, echoed and copied out on both sides. Stream: one way, each message written by the producer and copied out and checked by the consumer.".to_owned(),
            "shmrpc: the raw channel in each mode; floors: the least that moves the same bytes through shared memory; baselines: 4-byte length-prefixed frames, one write per message.".to_owned(),
        ];
        if let Some(p) = self.info.peers.as_ref() {
            notes.push(format!(
                "Dotted lines: peers file {} (measured {} on {}), another run than the rest.",
                p.path.display(),
                p.date,
                p.machine
            ));
        }
        chart(&title, &subtitle, &panels, &notes)
    }
}

fn merge(v: &mut Value, extra: Value) {
    if let (Value::Object(a), Value::Object(b)) = (v, extra) {
        a.extend(b);
    }
}

fn ratios_json(ratios: &[Ratio]) -> Vec<Value> {
    ratios
        .iter()
        .map(|r| {
            json!({
                "id": r.spec.id,
                "what": r.spec.what,
                "metric": r.spec.metric.name(),
                "numerator": r.spec.num,
                "denominator": r.spec.den,
                "ratio": r.value,
                "per_rep": r.per_rep,
                "target": r.spec.bound.map(Bound::text),
                "met": r.spec.bound.map(|b| b.holds(r.value)),
            })
        })
        .collect()
}

fn write_ratios(s: &mut String, ratios: &[Ratio]) {
    let rw = ratios
        .iter()
        .map(|r| r.spec.what.chars().count())
        .max()
        .unwrap_or(0);
    for r in ratios {
        let verdict = match r.spec.bound {
            Some(b) => format!(
                "target {:<7} {}",
                b.text(),
                if b.holds(r.value) { "MET" } else { "NOT MET" }
            ),
            None => "(for information)".to_owned(),
        };
        let _ = writeln!(
            s,
            "  {:<rw$} {:>5} {:>6.2}×   {}",
            r.spec.what,
            r.spec.metric.name(),
            r.value,
            verdict
        );
    }
}

/// The slowest sample over every repetition, in milliseconds.
fn worst_ms(reps: &[Measurement]) -> f64 {
    reps.iter()
        .filter_map(|m| match m {
            Measurement::Latency(l) => Some(l.max / 1000.0),
            Measurement::Rate { .. } => None,
        })
        .fold(0.0, f64::max)
}

fn latency_of(reps: &[Measurement]) -> Latency {
    let ls: Vec<Latency> = reps
        .iter()
        .filter_map(|m| match m {
            Measurement::Latency(l) => Some(*l),
            Measurement::Rate { .. } => None,
        })
        .collect();
    Latency::median_of(&ls)
}

/// The current UTC time as `YYYY-MM-DD HH:MM:SS`.
fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
    }

    #[test]
    fn bounds() {
        assert!(Bound::AtMost(2.0).holds(2.0));
        assert!(!Bound::AtMost(2.0).holds(2.01));
        assert!(Bound::AtLeast(0.5).holds(0.6));
        assert!(!Bound::AtLeast(0.8).holds(0.79));
    }

    #[test]
    fn every_ratio_names_cases_the_plan_has() {
        let args = crate::BenchOptions {
            quick: true,
            rtt_big_ring: 4 << 20,
            ..crate::BenchOptions::default()
        };
        let plan = Plan::new(&args).unwrap();
        for spec in RATIOS.iter().chain(RPC_RATIOS).chain(I4_RATIOS) {
            for id in [spec.num, spec.den] {
                assert!(
                    plan.cases.iter().any(|c| c.id == id),
                    "{}: no case {id}",
                    spec.id
                );
            }
        }
        for size in SIZES {
            for id in [rtt_floor_id(size), stream_floor_id(size)] {
                assert!(plan.cases.iter().any(|c| c.id == id), "no case {id}");
            }
            for m in ["spin", "spin-then-park", "park", "async", "async-park"] {
                let id = shmrpc_rtt_id(m, size);
                assert!(plan.cases.iter().any(|c| c.id == id), "no case {id}");
            }
        }
    }
}
